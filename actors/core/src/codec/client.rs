use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::scanner::{ValueScanner, MAX_BLANK};
use super::{check_size, is_json_whitespace, CodecError, Reply, DEFAULT_MAX_FRAME_SIZE};
use crate::wire::{bounded, go_json, Command, Response, RpcType};

/// Writes `command` as a request frame: type byte, JSON, newline.
///
/// The whole frame is built in `dst` so that it can go out in one write:
/// a Go server that sees the newline arrive in a later segment misreads it
/// as the next request's type and drops the connection.
pub fn encode_request(command: &Command, dst: &mut BytesMut) -> Result<(), CodecError> {
    let json_error = |source| CodecError::Json {
        what: "request",
        source,
    };
    // One allocation for the whole frame, not a doubling per growth.
    let hint = command.size_hint();
    dst.reserve(hint.saturating_add(hint / 8));
    dst.put_u8(command.rpc_type() as u8);
    let mut writer = dst.writer();
    match command {
        Command::Sync(r) => go_json::to_writer(&mut writer, r).map_err(json_error)?,
        Command::EagerSync(r) => go_json::to_writer(&mut writer, r).map_err(json_error)?,
        Command::FastForward(r) => go_json::to_writer(&mut writer, r).map_err(json_error)?,
        Command::Join(r) => go_json::to_writer(&mut writer, r).map_err(json_error)?,
    }
    writer.get_mut().put_u8(b'\n');
    Ok(())
}

/// Client side of a connection: decodes the reply to the request last
/// sent, whose type is given with [`ClientCodec::expect`].
#[derive(Debug)]
pub struct ClientCodec {
    max_frame_size: usize,
    expecting: Option<RpcType>,
    state: ReplyState,
    /// Whitespace since the last reply.
    blank: usize,
}

#[derive(Debug)]
enum ReplyState {
    /// Reading the error string.
    Error(ValueScanner),
    /// The error string ends at `error_end`; reading the response.
    Response {
        error_end: usize,
        scanner: ValueScanner,
    },
}

impl ClientCodec {
    /// A codec refusing replies larger than `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        ClientCodec {
            max_frame_size,
            expecting: None,
            state: ReplyState::Error(ValueScanner::starting_at(0)),
            blank: 0,
        }
    }

    /// Prepares to read the reply to a request of type `rpc_type`.
    pub fn expect(&mut self, rpc_type: RpcType) {
        self.expecting = Some(rpc_type);
        self.state = ReplyState::Error(ValueScanner::starting_at(0));
        self.blank = 0;
    }
}

impl Default for ClientCodec {
    fn default() -> Self {
        ClientCodec::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl ClientCodec {
    /// Cuts the next whole reply from `src` without parsing it (see
    /// [`RawReply`]); `None` while more bytes are needed.
    pub fn decode_raw(&mut self, src: &mut BytesMut) -> Result<Option<RawReply>, CodecError> {
        let Some(rpc_type) = self.expecting else {
            // The newline ending the last reply may arrive late; anything
            // else is a reply nobody asked for.
            let blank = src.iter().take_while(|b| is_json_whitespace(**b)).count();
            src.advance(blank);
            self.blank += blank;
            if self.blank > MAX_BLANK {
                return Err(CodecError::Syntax(format!(
                    "more than {MAX_BLANK} bytes of whitespace after a reply"
                )));
            }
            return match src.is_empty() {
                true => Ok(None),
                false => Err(CodecError::UnexpectedReply),
            };
        };
        if let ReplyState::Error(scanner) = &mut self.state {
            let Some(error_end) = scanner.scan(src)? else {
                check_size(src.len(), self.max_frame_size)?;
                return Ok(None);
            };
            self.state = ReplyState::Response {
                error_end,
                scanner: ValueScanner::starting_at(error_end),
            };
        }
        let ReplyState::Response { error_end, scanner } = &mut self.state else {
            unreachable!("the error string was scanned above");
        };
        let error_end = *error_end;
        let Some(end) = scanner.scan(src)? else {
            check_size(src.len(), self.max_frame_size)?;
            return Ok(None);
        };
        check_size(end, self.max_frame_size)?;
        self.expecting = None;
        self.state = ReplyState::Error(ValueScanner::starting_at(0));
        Ok(Some(RawReply {
            rpc_type,
            frame: src.split_to(end).freeze(),
            error_end,
        }))
    }

    /// [`decode_raw`](Self::decode_raw) at the end of the stream: bytes
    /// of an unfinished reply are an error.
    pub fn decode_raw_eof(&mut self, src: &mut BytesMut) -> Result<Option<RawReply>, CodecError> {
        match self.decode_raw(src)? {
            Some(reply) => Ok(Some(reply)),
            None if src.iter().all(u8::is_ascii_whitespace) => Ok(None),
            None => Err(CodecError::Truncated),
        }
    }
}

impl Decoder for ClientCodec {
    type Item = Reply;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, CodecError> {
        self.decode_raw(src)?.map(RawReply::decode).transpose()
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, CodecError> {
        self.decode_raw_eof(src)?.map(RawReply::decode).transpose()
    }
}

/// A whole reply frame, cut from the stream but not parsed yet: parsing is
/// the costly part, and a large frame's can run on another thread.
#[derive(Debug)]
pub struct RawReply {
    rpc_type: RpcType,
    frame: Bytes,
    /// Where the error string ends and the response begins.
    error_end: usize,
}

impl RawReply {
    /// Bytes of the frame.
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Whether the frame has no bytes (never, for a cut frame).
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }

    /// Parses the frame.
    pub fn decode(self) -> Result<Reply, CodecError> {
        let error = serde_json::from_slice(&self.frame[..self.error_end]).map_err(|source| {
            CodecError::Json {
                what: "reply error",
                source,
            }
        })?;
        let response = decode_response(self.rpc_type, &self.frame[self.error_end..])?;
        Ok(Reply { error, response })
    }
}

fn decode_response(rpc_type: RpcType, json: &[u8]) -> Result<Option<Response>, CodecError> {
    fn parse<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<Option<T>, CodecError> {
        bounded::decode(json).map_err(|source| CodecError::Json {
            what: "response",
            source,
        })
    }
    Ok(match rpc_type {
        RpcType::Sync => parse(json)?.map(Response::Sync),
        RpcType::EagerSync => parse(json)?.map(Response::EagerSync),
        RpcType::FastForward => parse(json)?.map(Response::FastForward),
        RpcType::Join => parse(json)?.map(Response::Join),
    })
}
