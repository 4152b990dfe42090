//! Frames of Go Babble's `NetworkTransport`, as tokio-util codecs.
//!
//! * Request: one byte, the [`RpcType`](crate::wire::RpcType), then the
//!   request as JSON and `\n`.
//! * Reply: the handler's error as a JSON string (`""` for none) and `\n`,
//!   then the response as JSON (`null` when there is none) and `\n`.
//!
//! There is no length prefix: a frame ends where its JSON ends, so the
//! decoders find value boundaries themselves and never rely on the newline.
//! Every frame is limited to a maximum size given at construction.
//!
//! [`ServerCodec`] decodes requests and encodes replies; [`ClientCodec`]
//! decodes replies, and [`encode_request`] writes requests.

mod client;
mod scanner;
mod server;

use std::io;

pub use client::{encode_request, ClientCodec, RawReply};
pub use server::{reply_capacity, write_reply, RawRequest, ServerCodec};

use crate::wire::Response;

/// Default limit on the size of one frame: 128 MiB, room for a FastForward
/// snapshot of about 90 MiB once base64 encoded.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 128 * 1024 * 1024;

/// What travels back for one request: the handler's error and response.
///
/// Go Babble sends both when its handler returns both; a client treats a
/// non-empty `error` as a failed RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The handler's error, empty when it succeeded.
    pub error: String,
    /// The response; `None` is written as `null`.
    pub response: Option<Response>,
}

impl Reply {
    /// A successful reply.
    pub fn ok(response: Response) -> Reply {
        Reply {
            error: String::new(),
            response: Some(response),
        }
    }

    /// A failed reply with no response.
    pub fn error(message: impl Into<String>) -> Reply {
        Reply {
            error: message.into(),
            response: None,
        }
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The frame grew past the configured limit.
    #[error("frame larger than the {max}-byte limit (at least {size} bytes)")]
    FrameTooLarge {
        /// Bytes of the frame seen so far.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The request started with a byte that names no RPC.
    #[error("unknown RPC type {0}")]
    UnknownRpcType(u8),
    /// The bytes are not JSON.
    #[error("malformed JSON: {0}")]
    Syntax(String),
    /// The JSON does not have the shape of the expected message.
    #[error("malformed {what}: {source}")]
    Json {
        /// Which part of the frame.
        what: &'static str,
        /// What serde_json found.
        source: serde_json::Error,
    },
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// A reply arrived while no request was waiting for one.
    #[error("reply received while no request was outstanding")]
    UnexpectedReply,
    /// Reading or writing the stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

/// Refuses a frame whose bytes so far are already over the limit.
fn check_size(size: usize, max: usize) -> Result<(), CodecError> {
    if size > max {
        Err(CodecError::FrameTooLarge { size, max })
    } else {
        Ok(())
    }
}
