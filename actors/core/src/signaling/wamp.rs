//! WAMP v2 messages (basic profile, dealer role), as the signaling router and
//! client exchange them over WebSocket with the `wamp.2.json` subprotocol.
//!
//! Strict in what is sent: arguments and keyword arguments are left out when
//! empty, as the specification asks. Lenient in what is accepted: routers
//! and clients differ, and some send `null` or trailing empty `[]`/`{}`.

use serde_json::{json, Map, Value};

/// The WebSocket subprotocol of WAMP over JSON.
pub const SUBPROTOCOL: &str = "wamp.2.json";

/// The INVOCATION detail in which babble-signal tells a callee its
/// caller's network address (IPv4, or an IPv6 /64), so that offers being
/// answered are counted by address rather than by the ID they claim
/// (custom details are `_` and lowercase, as WAMP asks).
pub const CALLER_ADDRESS: &str = "_babble_caller_address";

/// Largest WAMP ID (2^53): IDs fit in a JavaScript number.
pub const MAX_ID: u64 = 1 << 53;

/// Error and close reasons used by babble-net.
pub mod uri {
    /// The realm does not exist on the router.
    pub const NO_SUCH_REALM: &str = "wamp.error.no_such_realm";
    /// The peer broke the protocol.
    pub const PROTOCOL_VIOLATION: &str = "wamp.error.protocol_violation";
    /// A procedure of that name is already registered in the realm.
    pub const PROCEDURE_ALREADY_EXISTS: &str = "wamp.error.procedure_already_exists";
    /// Nobody registered the called procedure.
    pub const NO_SUCH_PROCEDURE: &str = "wamp.error.no_such_procedure";
    /// Unregistering something that is not registered.
    pub const NO_SUCH_REGISTRATION: &str = "wamp.error.no_such_registration";
    /// The call was canceled (by its caller, or because its callee left).
    pub const CANCELED: &str = "wamp.error.canceled";
    /// The call took longer than its timeout.
    pub const TIMEOUT: &str = "wamp.error.timeout";
    /// An argument was not what the procedure expects.
    pub const INVALID_ARGUMENT: &str = "wamp.error.invalid_argument";
    /// A URI that is not valid.
    pub const INVALID_URI: &str = "wamp.error.invalid_uri";
    /// The router cannot take more sessions.
    pub const SYSTEM_SHUTDOWN: &str = "wamp.close.system_shutdown";
    /// A normal close.
    pub const CLOSE_NORMAL: &str = "wamp.close.close_realm";
    /// Reply to a GOODBYE.
    pub const GOODBYE_AND_OUT: &str = "wamp.close.goodbye_and_out";
    /// The authentication method of babble nodes: a challenge signed with
    /// the node's secp256k1 key.
    pub const AUTH_METHOD: &str = "babble-secp256k1";
    /// The router refused the session's credentials.
    pub const AUTHENTICATION_FAILED: &str = "wamp.error.authentication_failed";
    /// The session may not do that (register another node's ID, or join
    /// anonymously where authentication is required).
    pub const NOT_AUTHORIZED: &str = "wamp.error.not_authorized";
    /// What a babble callee answers when it cannot process an offer.
    pub const PROCESSING_OFFER: &str = "io.babble.processing_offer";
    /// A session asked for more than the router allows one session
    /// (registrations).
    pub const LIMIT_REACHED: &str = "io.babble.limit_reached";
    /// The caller has as many calls in flight as the router allows.
    pub const TOO_MANY_CALLS: &str = "io.babble.too_many_calls";
    /// The callee cannot take another call now (too many waiting for its
    /// answer, or it is not reading); it stays registered.
    pub const CALLEE_BUSY: &str = "io.babble.callee_busy";
}

/// A WAMP message.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Message {
    Hello {
        realm: String,
        details: Map<String, Value>,
    },
    Welcome {
        session: u64,
        details: Map<String, Value>,
    },
    Challenge {
        authmethod: String,
        extra: Map<String, Value>,
    },
    Authenticate {
        signature: String,
        extra: Map<String, Value>,
    },
    Abort {
        details: Map<String, Value>,
        reason: String,
    },
    Goodbye {
        details: Map<String, Value>,
        reason: String,
    },
    Error {
        request_type: u64,
        request: u64,
        details: Map<String, Value>,
        error: String,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    },
    Register {
        request: u64,
        options: Map<String, Value>,
        procedure: String,
    },
    Registered {
        request: u64,
        registration: u64,
    },
    Unregister {
        request: u64,
        registration: u64,
    },
    Unregistered {
        request: u64,
    },
    Call {
        request: u64,
        options: Map<String, Value>,
        procedure: String,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    },
    Cancel {
        request: u64,
        options: Map<String, Value>,
    },
    Result {
        request: u64,
        details: Map<String, Value>,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    },
    Invocation {
        request: u64,
        registration: u64,
        details: Map<String, Value>,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    },
    Interrupt {
        request: u64,
        options: Map<String, Value>,
    },
    Yield {
        request: u64,
        options: Map<String, Value>,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    },
}

/// Message type codes.
pub mod code {
    #![allow(missing_docs)]
    pub const HELLO: u64 = 1;
    pub const WELCOME: u64 = 2;
    pub const ABORT: u64 = 3;
    pub const CHALLENGE: u64 = 4;
    pub const AUTHENTICATE: u64 = 5;
    pub const GOODBYE: u64 = 6;
    pub const ERROR: u64 = 8;
    pub const CALL: u64 = 48;
    pub const CANCEL: u64 = 49;
    pub const RESULT: u64 = 50;
    pub const REGISTER: u64 = 64;
    pub const REGISTERED: u64 = 65;
    pub const UNREGISTER: u64 = 66;
    pub const UNREGISTERED: u64 = 67;
    pub const INVOCATION: u64 = 68;
    pub const INTERRUPT: u64 = 69;
    pub const YIELD: u64 = 70;
}

/// Why a text is not a WAMP message this crate understands.
#[derive(Debug, thiserror::Error)]
#[error("malformed WAMP message: {0}")]
pub struct ParseError(pub String);

impl Message {
    /// Parses one WAMP message from its JSON text.
    pub fn parse(text: &str) -> Result<Message, ParseError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ParseError(format!("not JSON: {e}")))?;
        let Value::Array(items) = value else {
            return Err(ParseError("not a JSON array".into()));
        };
        let mut fields = Fields { items, next: 0 };
        let kind = fields.id("message type")?;
        use code::*;
        let message = match kind {
            HELLO => Message::Hello {
                realm: fields.uri("realm")?,
                details: fields.dict("details")?,
            },
            WELCOME => Message::Welcome {
                session: fields.id("session")?,
                details: fields.dict("details")?,
            },
            ABORT => Message::Abort {
                details: fields.dict("details")?,
                reason: fields.uri("reason")?,
            },
            CHALLENGE => Message::Challenge {
                authmethod: fields.uri("authmethod")?,
                extra: fields.dict("extra")?,
            },
            AUTHENTICATE => Message::Authenticate {
                signature: fields.uri("signature")?,
                extra: fields.dict("extra")?,
            },
            GOODBYE => Message::Goodbye {
                details: fields.dict("details")?,
                reason: fields.uri("reason")?,
            },
            ERROR => Message::Error {
                request_type: fields.id("request type")?,
                request: fields.id("request")?,
                details: fields.dict("details")?,
                error: fields.uri("error")?,
                args: fields.args()?,
                kwargs: fields.kwargs()?,
            },
            REGISTER => Message::Register {
                request: fields.id("request")?,
                options: fields.dict("options")?,
                procedure: fields.uri("procedure")?,
            },
            REGISTERED => Message::Registered {
                request: fields.id("request")?,
                registration: fields.id("registration")?,
            },
            UNREGISTER => Message::Unregister {
                request: fields.id("request")?,
                registration: fields.id("registration")?,
            },
            UNREGISTERED => Message::Unregistered {
                request: fields.id("request")?,
            },
            CALL => Message::Call {
                request: fields.id("request")?,
                options: fields.dict("options")?,
                procedure: fields.uri("procedure")?,
                args: fields.args()?,
                kwargs: fields.kwargs()?,
            },
            CANCEL => Message::Cancel {
                request: fields.id("request")?,
                options: fields.dict("options")?,
            },
            RESULT => Message::Result {
                request: fields.id("request")?,
                details: fields.dict("details")?,
                args: fields.args()?,
                kwargs: fields.kwargs()?,
            },
            INVOCATION => Message::Invocation {
                request: fields.id("request")?,
                registration: fields.id("registration")?,
                details: fields.dict("details")?,
                args: fields.args()?,
                kwargs: fields.kwargs()?,
            },
            INTERRUPT => Message::Interrupt {
                request: fields.id("request")?,
                options: fields.dict("options")?,
            },
            YIELD => Message::Yield {
                request: fields.id("request")?,
                options: fields.dict("options")?,
                args: fields.args()?,
                kwargs: fields.kwargs()?,
            },
            other => return Err(ParseError(format!("unsupported message type {other}"))),
        };
        Ok(message)
    }

    /// The message as JSON text.
    pub fn to_json(&self) -> String {
        use code::*;
        let value = match self {
            Message::Hello { realm, details } => json!([HELLO, realm, details]),
            Message::Welcome { session, details } => json!([WELCOME, session, details]),
            Message::Abort { details, reason } => json!([ABORT, details, reason]),
            Message::Challenge { authmethod, extra } => json!([CHALLENGE, authmethod, extra]),
            Message::Authenticate { signature, extra } => {
                json!([AUTHENTICATE, signature, extra])
            }
            Message::Goodbye { details, reason } => json!([GOODBYE, details, reason]),
            Message::Error {
                request_type,
                request,
                details,
                error,
                args,
                kwargs,
            } => with_payload(
                json!([ERROR, request_type, request, details, error]),
                args,
                kwargs,
            ),
            Message::Register {
                request,
                options,
                procedure,
            } => json!([REGISTER, request, options, procedure]),
            Message::Registered {
                request,
                registration,
            } => json!([REGISTERED, request, registration]),
            Message::Unregister {
                request,
                registration,
            } => json!([UNREGISTER, request, registration]),
            Message::Unregistered { request } => json!([UNREGISTERED, request]),
            Message::Call {
                request,
                options,
                procedure,
                args,
                kwargs,
            } => with_payload(json!([CALL, request, options, procedure]), args, kwargs),
            Message::Cancel { request, options } => json!([CANCEL, request, options]),
            Message::Result {
                request,
                details,
                args,
                kwargs,
            } => with_payload(json!([RESULT, request, details]), args, kwargs),
            Message::Invocation {
                request,
                registration,
                details,
                args,
                kwargs,
            } => with_payload(
                json!([INVOCATION, request, registration, details]),
                args,
                kwargs,
            ),
            Message::Interrupt { request, options } => json!([INTERRUPT, request, options]),
            Message::Yield {
                request,
                options,
                args,
                kwargs,
            } => with_payload(json!([YIELD, request, options]), args, kwargs),
        };
        value.to_string()
    }
}

/// Appends arguments and keyword arguments, leaving out what is empty.
fn with_payload(mut message: Value, args: &[Value], kwargs: &Map<String, Value>) -> Value {
    let items = message.as_array_mut().expect("built as an array");
    if !args.is_empty() || !kwargs.is_empty() {
        items.push(Value::Array(args.to_vec()));
    }
    if !kwargs.is_empty() {
        items.push(Value::Object(kwargs.clone()));
    }
    message
}

/// Reads the elements of a message in order.
struct Fields {
    items: Vec<Value>,
    next: usize,
}

impl Fields {
    fn take(&mut self) -> Option<Value> {
        let value = self.items.get_mut(self.next).map(Value::take);
        self.next += 1;
        value
    }

    fn id(&mut self, what: &str) -> Result<u64, ParseError> {
        match self.take() {
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|id| *id <= MAX_ID)
                .ok_or_else(|| ParseError(format!("{what} is not an ID"))),
            _ => Err(ParseError(format!("{what} missing or not a number"))),
        }
    }

    fn uri(&mut self, what: &str) -> Result<String, ParseError> {
        match self.take() {
            Some(Value::String(uri)) => Ok(uri),
            _ => Err(ParseError(format!("{what} missing or not a string"))),
        }
    }

    fn dict(&mut self, what: &str) -> Result<Map<String, Value>, ParseError> {
        match self.take() {
            Some(Value::Object(map)) => Ok(map),
            // Some implementations send null for an empty dictionary.
            Some(Value::Null) => Ok(Map::new()),
            _ => Err(ParseError(format!("{what} missing or not an object"))),
        }
    }

    fn args(&mut self) -> Result<Vec<Value>, ParseError> {
        match self.take() {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(args)) => Ok(args),
            Some(_) => Err(ParseError("arguments are not a list".into())),
        }
    }

    fn kwargs(&mut self) -> Result<Map<String, Value>, ParseError> {
        match self.take() {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(kwargs)) => Ok(kwargs),
            Some(_) => Err(ParseError("keyword arguments are not an object".into())),
        }
    }
}

/// 32 random bytes for a `babble-secp256k1` challenge.
pub fn random_challenge() -> [u8; 32] {
    rand::random()
}

/// A random WAMP ID, as session IDs must be (1..=2^53).
pub fn random_id() -> u64 {
    rand::random_range(1..=MAX_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_payloads_are_left_out_and_accepted_in_any_form() {
        let result = Message::Result {
            request: 7,
            details: Map::new(),
            args: vec![],
            kwargs: Map::new(),
        };
        assert_eq!(result.to_json(), "[50,7,{}]");
        for text in [
            "[50,7,{}]",
            "[50,7,{},[]]",
            "[50,7,{},[],{}]",
            "[50,7,null,null,null]",
        ] {
            assert_eq!(Message::parse(text).unwrap(), result, "{text}");
        }
        let with_kwargs = Message::Yield {
            request: 1,
            options: Map::new(),
            args: vec![],
            kwargs: [("a".to_owned(), json!(1))].into_iter().collect(),
        };
        assert_eq!(with_kwargs.to_json(), r#"[70,1,{},[],{"a":1}]"#);
    }

    #[test]
    fn malformed_messages_are_errors() {
        for text in [
            "",
            "{}",
            "[]",
            "[\"1\"]",
            "[1]",
            "[1,5,{}]",
            "[999,1]",
            "[48,-1,{},\"p\"]",
            "[48,9007199254740993,{},\"p\"]",
            "[48,1,{},\"p\",{}]",
        ] {
            assert!(Message::parse(text).is_err(), "{text} parsed");
        }
    }

    #[test]
    fn random_ids_stay_within_2_pow_53() {
        for _ in 0..1000 {
            let id = random_id();
            assert!((1..=MAX_ID).contains(&id));
        }
    }
}
