//! The dealer: registrations and calls of every realm, as pure state.
//!
//! Sessions hand it the messages they receive; it answers with what to send
//! to whom. Realms are separate maps, so nothing ever crosses them.

use std::collections::HashMap;

use babble_net_actors::wamp::{code, random_id, uri, Message};
use serde_json::{json, Map};

/// Where a message must go.
pub(super) type Outbox = Vec<(u64, Message)>;

#[derive(Default)]
struct Realm {
    /// Procedure URI to (registration ID, callee session).
    procedures: HashMap<String, (u64, u64)>,
}

/// A call in progress, keyed by its INVOCATION request ID.
struct Invocation {
    caller: u64,
    call_request: u64,
    callee: u64,
    /// The task that ends the call when it takes too long.
    timer: Option<tokio::task::AbortHandle>,
}

impl Drop for Invocation {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

/// See the [module docs](self).
#[derive(Default)]
pub(super) struct Dealer {
    realms: HashMap<String, Realm>,
    /// Session to its realm.
    sessions: HashMap<u64, String>,
    invocations: HashMap<u64, Invocation>,
}

fn error(request_type: u64, request: u64, error: &str, message: Option<&str>) -> Message {
    Message::Error {
        request_type,
        request,
        details: Map::new(),
        error: error.to_owned(),
        args: message.map(|m| vec![json!(m)]).unwrap_or_default(),
        kwargs: Map::new(),
    }
}

/// WAMP's loose URI rule: dot-separated, non-empty components without
/// whitespace or `#`.
fn valid_uri(uri: &str) -> bool {
    !uri.is_empty()
        && uri
            .split('.')
            .all(|part| !part.is_empty() && !part.chars().any(|c| c.is_whitespace() || c == '#'))
}

impl Dealer {
    pub(super) fn has_realm(&self, realm: &str) -> bool {
        self.realms.contains_key(realm)
    }

    pub(super) fn add_realm(&mut self, realm: &str) {
        self.realms.entry(realm.to_owned()).or_default();
    }

    /// A new session in `realm`, with a fresh random ID.
    pub(super) fn join(&mut self, realm: &str) -> u64 {
        let mut session = random_id();
        while self.sessions.contains_key(&session) {
            session = random_id();
        }
        self.sessions.insert(session, realm.to_owned());
        session
    }

    /// Handles a message from `session`. `Err` means a protocol violation:
    /// the session must be aborted.
    pub(super) fn handle(&mut self, session: u64, message: Message) -> Result<Outbox, String> {
        let realm_name = self
            .sessions
            .get(&session)
            .cloned()
            .ok_or("unknown session")?;
        let mut out = Outbox::new();
        match message {
            Message::Register {
                request, procedure, ..
            } => {
                let realm = self.realms.get_mut(&realm_name).ok_or("realm gone")?;
                let reply = if !valid_uri(&procedure) {
                    error(
                        code::REGISTER,
                        request,
                        uri::INVALID_URI,
                        Some("not a valid procedure URI"),
                    )
                } else {
                    match realm.procedures.entry(procedure) {
                        std::collections::hash_map::Entry::Occupied(_) => {
                            error(code::REGISTER, request, uri::PROCEDURE_ALREADY_EXISTS, None)
                        }
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            let registration = random_id();
                            slot.insert((registration, session));
                            Message::Registered {
                                request,
                                registration,
                            }
                        }
                    }
                };
                out.push((session, reply));
            }
            Message::Unregister {
                request,
                registration,
            } => {
                let realm = self.realms.get_mut(&realm_name).ok_or("realm gone")?;
                let found = realm
                    .procedures
                    .iter()
                    .find(|(_, (id, owner))| *id == registration && *owner == session)
                    .map(|(procedure, _)| procedure.clone());
                let reply = match found {
                    Some(procedure) => {
                        realm.procedures.remove(&procedure);
                        Message::Unregistered { request }
                    }
                    None => error(code::UNREGISTER, request, uri::NO_SUCH_REGISTRATION, None),
                };
                out.push((session, reply));
            }
            Message::Call {
                request,
                procedure,
                args,
                kwargs,
                ..
            } => {
                let realm = self.realms.get(&realm_name).ok_or("realm gone")?;
                match realm.procedures.get(&procedure) {
                    None => out.push((
                        session,
                        error(
                            code::CALL,
                            request,
                            uri::NO_SUCH_PROCEDURE,
                            Some(&format!("no procedure {procedure}")),
                        ),
                    )),
                    Some(&(registration, callee)) => {
                        let invocation = random_id();
                        self.invocations.insert(
                            invocation,
                            Invocation {
                                caller: session,
                                call_request: request,
                                callee,
                                timer: None,
                            },
                        );
                        out.push((
                            callee,
                            Message::Invocation {
                                request: invocation,
                                registration,
                                details: Map::new(),
                                args,
                                kwargs,
                            },
                        ));
                    }
                }
            }
            Message::Yield {
                request,
                args,
                kwargs,
                ..
            } => {
                if let Some(call) = self.take_invocation(request, session) {
                    out.push((
                        call.caller,
                        Message::Result {
                            request: call.call_request,
                            details: Map::new(),
                            args,
                            kwargs,
                        },
                    ));
                }
            }
            Message::Error {
                request_type: code::INVOCATION,
                request,
                details,
                error,
                args,
                kwargs,
            } => {
                if let Some(call) = self.take_invocation(request, session) {
                    out.push((
                        call.caller,
                        Message::Error {
                            request_type: code::CALL,
                            request: call.call_request,
                            details,
                            error,
                            args,
                            kwargs,
                        },
                    ));
                }
            }
            Message::Cancel { request, options } => {
                let found = self
                    .invocations
                    .iter()
                    .find(|(_, call)| call.caller == session && call.call_request == request)
                    .map(|(id, _)| *id);
                if let Some(invocation) = found {
                    let call = self.invocations.remove(&invocation).expect("found above");
                    out.push((
                        session,
                        error(
                            code::CALL,
                            request,
                            uri::CANCELED,
                            Some("canceled by the caller"),
                        ),
                    ));
                    let mode = options
                        .get("mode")
                        .cloned()
                        .unwrap_or_else(|| json!("killnowait"));
                    let options = [("mode".to_owned(), mode)].into_iter().collect();
                    out.push((
                        call.callee,
                        Message::Interrupt {
                            request: invocation,
                            options,
                        },
                    ));
                }
            }
            other => return Err(format!("a client may not send {}", kind_of(&other))),
        }
        Ok(out)
    }

    fn take_invocation(&mut self, invocation: u64, callee: u64) -> Option<Invocation> {
        match self.invocations.get(&invocation) {
            Some(call) if call.callee == callee => self.invocations.remove(&invocation),
            _ => None,
        }
    }

    /// The call behind `invocation` ran out of time: the caller gets an
    /// error, the callee an INTERRUPT.
    pub(super) fn expire(&mut self, invocation: u64) -> Outbox {
        let Some(mut call) = self.invocations.remove(&invocation) else {
            return Outbox::new();
        };
        // Called from the timer task itself: nothing to abort.
        call.timer = None;
        let options = [("mode".to_owned(), json!("killnowait"))]
            .into_iter()
            .collect();
        vec![
            (
                call.caller,
                error(
                    code::CALL,
                    call.call_request,
                    uri::TIMEOUT,
                    Some("the callee did not answer in time"),
                ),
            ),
            (
                call.callee,
                Message::Interrupt {
                    request: invocation,
                    options,
                },
            ),
        ]
    }

    /// Ties the timeout task of `invocation` to it: the task is aborted as
    /// soon as the call ends another way.
    pub(super) fn set_timer(&mut self, invocation: u64, timer: tokio::task::AbortHandle) {
        match self.invocations.get_mut(&invocation) {
            Some(call) => call.timer = Some(timer),
            None => timer.abort(),
        }
    }

    /// The invocation a CALL just created, to arm its timeout.
    pub(super) fn invocation_of(&self, caller: u64, call_request: u64) -> Option<u64> {
        self.invocations
            .iter()
            .find(|(_, call)| call.caller == caller && call.call_request == call_request)
            .map(|(id, _)| *id)
    }

    /// `session` is gone: its registrations go, its pending calls end.
    pub(super) fn leave(&mut self, session: u64) -> Outbox {
        let Some(realm_name) = self.sessions.remove(&session) else {
            return Outbox::new();
        };
        if let Some(realm) = self.realms.get_mut(&realm_name) {
            realm.procedures.retain(|_, (_, owner)| *owner != session);
        }
        let mut out = Outbox::new();
        let ended: Vec<u64> = self
            .invocations
            .iter()
            .filter(|(_, call)| call.caller == session || call.callee == session)
            .map(|(id, _)| *id)
            .collect();
        for invocation in ended {
            let call = self.invocations.remove(&invocation).expect("listed above");
            if call.callee == session {
                out.push((
                    call.caller,
                    error(
                        code::CALL,
                        call.call_request,
                        uri::CANCELED,
                        Some("the callee left"),
                    ),
                ));
            } else {
                let options = [("mode".to_owned(), json!("killnowait"))]
                    .into_iter()
                    .collect();
                out.push((
                    call.callee,
                    Message::Interrupt {
                        request: invocation,
                        options,
                    },
                ));
            }
        }
        out
    }

    /// Number of sessions joined.
    pub(super) fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

fn kind_of(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "HELLO",
        Message::Welcome { .. } => "WELCOME",
        Message::Abort { .. } => "ABORT",
        Message::Goodbye { .. } => "GOODBYE",
        Message::Error { .. } => "this ERROR",
        Message::Registered { .. } => "REGISTERED",
        Message::Unregistered { .. } => "UNREGISTERED",
        Message::Result { .. } => "RESULT",
        Message::Invocation { .. } => "INVOCATION",
        Message::Interrupt { .. } => "INTERRUPT",
        _ => "this message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(dealer: &mut Dealer, session: u64, request: u64, procedure: &str) -> Message {
        let out = dealer
            .handle(
                session,
                Message::Register {
                    request,
                    options: Map::new(),
                    procedure: procedure.into(),
                },
            )
            .unwrap();
        out.into_iter().next().unwrap().1
    }

    #[test]
    fn a_call_reaches_the_callee_and_its_answer_the_caller() {
        let mut dealer = Dealer::default();
        dealer.add_realm("main");
        let (callee, caller) = (dealer.join("main"), dealer.join("main"));
        let Message::Registered { registration, .. } = register(&mut dealer, callee, 1, "peer.b")
        else {
            panic!("not registered")
        };
        let out = dealer
            .handle(
                caller,
                Message::Call {
                    request: 5,
                    options: Map::new(),
                    procedure: "peer.b".into(),
                    args: vec![json!("a")],
                    kwargs: Map::new(),
                },
            )
            .unwrap();
        let [(
            to,
            Message::Invocation {
                request: invocation,
                registration: reg,
                args,
                ..
            },
        )] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            (*to, *reg, args.clone()),
            (callee, registration, vec![json!("a")])
        );
        let out = dealer
            .handle(
                callee,
                Message::Yield {
                    request: *invocation,
                    options: Map::new(),
                    args: vec![json!("ok")],
                    kwargs: Map::new(),
                },
            )
            .unwrap();
        assert_eq!(
            out,
            vec![(
                caller,
                Message::Result {
                    request: 5,
                    details: Map::new(),
                    args: vec![json!("ok")],
                    kwargs: Map::new()
                }
            )]
        );
    }

    #[test]
    fn realms_do_not_see_each_other() {
        let mut dealer = Dealer::default();
        dealer.add_realm("a");
        dealer.add_realm("b");
        let (in_a, in_b) = (dealer.join("a"), dealer.join("b"));
        register(&mut dealer, in_a, 1, "peer");
        // The same name registers fine in the other realm...
        assert!(matches!(
            register(&mut dealer, in_b, 1, "peer"),
            Message::Registered { .. }
        ));
        // ...and a call from b reaches b's callee, not a's.
        let out = dealer
            .handle(
                in_b,
                Message::Call {
                    request: 2,
                    options: Map::new(),
                    procedure: "peer".into(),
                    args: vec![],
                    kwargs: Map::new(),
                },
            )
            .unwrap();
        assert_eq!(out[0].0, in_b);
    }

    #[test]
    fn duplicate_registration_is_refused_and_a_leaver_frees_its_names() {
        let mut dealer = Dealer::default();
        dealer.add_realm("main");
        let (first, second) = (dealer.join("main"), dealer.join("main"));
        register(&mut dealer, first, 1, "id");
        let Message::Error { error, .. } = register(&mut dealer, second, 1, "id") else {
            panic!()
        };
        assert_eq!(error, uri::PROCEDURE_ALREADY_EXISTS);
        dealer.leave(first);
        assert!(matches!(
            register(&mut dealer, second, 2, "id"),
            Message::Registered { .. }
        ));
    }

    #[test]
    fn cancel_answers_the_caller_and_interrupts_the_callee() {
        let mut dealer = Dealer::default();
        dealer.add_realm("main");
        let (callee, caller) = (dealer.join("main"), dealer.join("main"));
        register(&mut dealer, callee, 1, "p");
        dealer
            .handle(
                caller,
                Message::Call {
                    request: 9,
                    options: Map::new(),
                    procedure: "p".into(),
                    args: vec![],
                    kwargs: Map::new(),
                },
            )
            .unwrap();
        let out = dealer
            .handle(
                caller,
                Message::Cancel {
                    request: 9,
                    options: Map::new(),
                },
            )
            .unwrap();
        assert!(
            matches!(&out[0], (to, Message::Error { error, request: 9, .. }) if *to == caller && error == uri::CANCELED)
        );
        assert!(matches!(&out[1], (to, Message::Interrupt { .. }) if *to == callee));
        assert!(dealer.invocations.is_empty());
    }

    #[test]
    fn clients_may_not_send_router_messages() {
        let mut dealer = Dealer::default();
        dealer.add_realm("main");
        let session = dealer.join("main");
        assert!(dealer
            .handle(
                session,
                Message::Welcome {
                    session: 1,
                    details: Map::new()
                }
            )
            .is_err());
    }
}
