//! Request frames as a server reads them: any bytes, cut anywhere, must
//! decode, or fail with an error, without panicking; a decoded request
//! re-encodes.
#![no_main]

use babble_net_core::codec::{encode_request, ServerCodec};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses where the input is cut, as reads would.
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut).max(1);
    let mut codec = ServerCodec::new(64 * 1024);
    let mut buf = BytesMut::new();
    for chunk in bytes.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(command)) => {
                    let mut out = BytesMut::new();
                    encode_request(&command, &mut out).expect("a decoded request re-encodes");
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
});
