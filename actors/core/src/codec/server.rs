use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::scanner::{ValueScanner, MAX_BLANK};
use super::{check_size, is_json_whitespace, CodecError, Reply, DEFAULT_MAX_FRAME_SIZE};
use crate::wire::{bounded, go_json, Command, Response, RpcType};

/// Server side of a connection: decodes requests, encodes replies.
///
/// ```
/// use babble_net_core::codec::ServerCodec;
/// use babble_net_core::wire::{Command, SyncRequest};
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

impl ServerCodec {
    /// Cuts the next whole request from `src` without parsing it (see
    /// [`RawRequest`]); `None` while more bytes are needed.
    pub fn decode_raw(&mut self, src: &mut BytesMut) -> Result<Option<RawRequest>, CodecError> {
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
        Ok(Some(RawRequest {
            rpc_type,
            frame: src.split_to(end).freeze(),
        }))
    }

    /// [`decode_raw`](Self::decode_raw) at the end of the stream: bytes
    /// of an unfinished request are an error.
    pub fn decode_raw_eof(&mut self, src: &mut BytesMut) -> Result<Option<RawRequest>, CodecError> {
        match self.decode_raw(src)? {
            Some(request) => Ok(Some(request)),
            None if self.current.is_some() || !src.is_empty() => Err(CodecError::Truncated),
            None => Ok(None),
        }
    }
}

impl Decoder for ServerCodec {
    type Item = Command;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Command>, CodecError> {
        self.decode_raw(src)?.map(RawRequest::decode).transpose()
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Command>, CodecError> {
        self.decode_raw_eof(src)?
            .map(RawRequest::decode)
            .transpose()
    }
}

/// A whole request frame, cut from the stream but not parsed yet: parsing
/// is the costly part, and a large frame's can run on another thread.
#[derive(Debug)]
pub struct RawRequest {
    rpc_type: RpcType,
    /// The type byte, the JSON and what ends it.
    frame: Bytes,
}

impl RawRequest {
    /// Bytes of the frame.
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Whether the frame has no bytes (never, for a cut frame).
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }

    /// The RPC type named by the frame's first byte.
    pub fn rpc_type(&self) -> RpcType {
        self.rpc_type
    }

    /// Parses the frame.
    pub fn decode(self) -> Result<Command, CodecError> {
        self.decode_measured().map(|(command, _)| command)
    }

    /// Parses the frame; also says at most how many bytes of memory the
    /// request holds (see [`bounded::decode_measured`]).
    pub fn decode_measured(self) -> Result<(Command, usize), CodecError> {
        decode_command(self.rpc_type, &self.frame[1..])
    }
}

fn decode_command(rpc_type: RpcType, json: &[u8]) -> Result<(Command, usize), CodecError> {
    fn parse<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<(T, usize), CodecError> {
        bounded::decode_measured(json).map_err(|source| CodecError::Json {
            what: "request",
            source,
        })
    }
    Ok(match rpc_type {
        RpcType::Sync => parse(json).map(|(r, n)| (Command::Sync(r), n))?,
        RpcType::EagerSync => parse(json).map(|(r, n)| (Command::EagerSync(r), n))?,
        RpcType::FastForward => parse(json).map(|(r, n)| (Command::FastForward(r), n))?,
        RpcType::Join => parse(json).map(|(r, n)| (Command::Join(r), n))?,
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

/// The buffer the encoder reserves for `reply`: its estimated size with an
/// eighth to spare, so that the frame takes one allocation (a budget for
/// encoded replies is charged this much before encoding).
pub fn reply_capacity(reply: &Reply) -> usize {
    let hint = reply.response.as_ref().map_or(0, Response::size_hint);
    hint.saturating_add(hint / 8)
        .saturating_add(reply.error.len())
        .saturating_add(8)
}

/// Writes `reply` in Go's form: error string, newline, response, newline.
pub(crate) fn encode_reply(reply: &Reply, dst: &mut BytesMut) -> Result<(), CodecError> {
    // One allocation for the whole frame, not a doubling per growth.
    dst.reserve(reply_capacity(reply));
    write_reply(reply, dst)
}

/// Writes `reply` as [`ServerCodec`] encodes it, into what `dst` has
/// room for (it grows if that is not enough): for a caller that reserved
/// [`reply_capacity`] already.
pub fn write_reply(reply: &Reply, dst: &mut BytesMut) -> Result<(), CodecError> {
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
