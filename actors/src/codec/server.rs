use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::scanner::{ValueScanner, MAX_BLANK};
use super::{check_size, is_json_whitespace, CodecError, Reply, DEFAULT_MAX_FRAME_SIZE};
use crate::wire::{bounded, go_json, Command, Response, RpcType};

/// Server side of a connection: decodes requests, encodes replies.
///
/// ```
/// use babble_net_actors::codec::ServerCodec;
/// use babble_net_actors::wire::{Command, SyncRequest};
/// use bytes::BytesMut;
/// use tokio_util::codec::Decoder;
///
/// let mut codec = ServerCodec::new(1024);
/// let mut buf = BytesMut::from(&b"\x01{\"FromID\":3,\"Known\":null,\"SyncLimit\":5}\n"[..]);
/// let command = codec.decode(&mut buf).unwrap().unwrap();
/// assert_eq!(command, Command::Sync(SyncRequest { from_id: 3, known: None, sync_limit: 5 }));
/// ```
#[derive(Debug)]
pub struct ServerCodec {
    max_frame_size: usize,
    /// The request being read, once its type byte has arrived.
    current: Option<(RpcType, ValueScanner)>,
    /// Whitespace since the last request.
    blank: usize,
}

impl ServerCodec {
    /// A codec refusing requests larger than `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        ServerCodec {
            max_frame_size,
            current: None,
            blank: 0,
        }
    }

    /// Whether part of a request has been read and not yet decoded.
    pub fn is_mid_frame(&self) -> bool {
        self.current.is_some()
    }
}

impl Default for ServerCodec {
    fn default() -> Self {
        ServerCodec::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl Decoder for ServerCodec {
    type Item = Command;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Command>, CodecError> {
        if self.current.is_none() {
            // The newline that ends the previous request (or any other
            // whitespace) may come late; no type byte is whitespace.
            let blank = src.iter().take_while(|b| is_json_whitespace(**b)).count();
            src.advance(blank);
            self.blank += blank;
            if self.blank > MAX_BLANK {
                return Err(CodecError::Syntax(format!(
                    "more than {MAX_BLANK} bytes of whitespace between requests"
                )));
            }
            let Some(&byte) = src.first() else {
                return Ok(None);
            };
            self.blank = 0;
            let rpc_type = RpcType::from_byte(byte).ok_or(CodecError::UnknownRpcType(byte))?;
            self.current = Some((rpc_type, ValueScanner::starting_at(1)));
        }
        let (rpc_type, scanner) = self.current.as_mut().expect("set above");
        let rpc_type = *rpc_type;
        let Some(end) = scanner.scan(src)? else {
            check_size(src.len(), self.max_frame_size)?;
            return Ok(None);
        };
        check_size(end, self.max_frame_size)?;
        self.current = None;
        let frame = src.split_to(end);
        decode_command(rpc_type, &frame[1..]).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Command>, CodecError> {
        match self.decode(src)? {
            Some(command) => Ok(Some(command)),
            None if self.current.is_some() || !src.is_empty() => Err(CodecError::Truncated),
            None => Ok(None),
        }
    }
}

fn decode_command(rpc_type: RpcType, json: &[u8]) -> Result<Command, CodecError> {
    fn parse<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, CodecError> {
        bounded::decode(json).map_err(|source| CodecError::Json {
            what: "request",
            source,
        })
    }
    Ok(match rpc_type {
        RpcType::Sync => Command::Sync(parse(json)?),
        RpcType::EagerSync => Command::EagerSync(parse(json)?),
        RpcType::FastForward => Command::FastForward(parse(json)?),
        RpcType::Join => Command::Join(parse(json)?),
    })
}

impl Encoder<&Reply> for ServerCodec {
    type Error = CodecError;

    fn encode(&mut self, reply: &Reply, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_reply(reply, dst)
    }
}

impl Encoder<Reply> for ServerCodec {
    type Error = CodecError;

    fn encode(&mut self, reply: Reply, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_reply(&reply, dst)
    }
}

/// Writes `reply` in Go's form: error string, newline, response, newline.
pub(crate) fn encode_reply(reply: &Reply, dst: &mut BytesMut) -> Result<(), CodecError> {
    let json_error = |source| CodecError::Json {
        what: "reply",
        source,
    };
    let mut writer = dst.writer();
    go_json::to_writer(&mut writer, &reply.error).map_err(json_error)?;
    writer.get_mut().put_u8(b'\n');
    match &reply.response {
        None => writer.get_mut().put_slice(b"null"),
        Some(Response::Sync(r)) => go_json::to_writer(&mut writer, r).map_err(json_error)?,
        Some(Response::EagerSync(r)) => go_json::to_writer(&mut writer, r).map_err(json_error)?,
        Some(Response::FastForward(r)) => go_json::to_writer(&mut writer, r).map_err(json_error)?,
        Some(Response::Join(r)) => go_json::to_writer(&mut writer, r).map_err(json_error)?,
    }
    writer.get_mut().put_u8(b'\n');
    Ok(())
}
