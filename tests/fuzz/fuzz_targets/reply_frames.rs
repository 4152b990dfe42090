//! Reply frames as a caller reads them, for each RPC type: any bytes, cut
//! anywhere, must decode or fail with an error, without panicking.
#![no_main]

use babble_net_core::codec::ClientCodec;
use babble_net_core::wire::RpcType;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let rpc_type = RpcType::from_byte(choice % 4).expect("0 to 3 are RPC types");
    let step = usize::from(choice / 4).max(1);
    let mut codec = ClientCodec::new(64 * 1024);
    codec.expect(rpc_type);
    let mut buf = BytesMut::new();
    for chunk in bytes.chunks(step) {
        buf.extend_from_slice(chunk);
        match codec.decode(&mut buf) {
            Ok(Some(_)) => codec.expect(rpc_type),
            Ok(None) => {}
            Err(_) => return,
        }
    }
    let _ = codec.decode_eof(&mut buf);
});
