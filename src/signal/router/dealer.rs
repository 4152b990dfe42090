//! The dealer: registrations and calls of every realm, as pure state.
//!
//! Sessions hand it the messages they receive; it answers with what to send
//! to whom. Realms are separate maps, so nothing ever crosses them. Every
//! lookup is by key (procedure, registration, invocation, or a caller's
//! request ID), and every set it keeps is bounded per session by
//! [`DealerLimits`], so one session cannot make the router's work or memory
//! grow beyond its share.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use babble_net_core::identity::PeerKey;
use babble_net_core::signaling::wamp::{code, random_id, uri, Message, CALLER_ADDRESS};
use serde_json::{json, Map};

/// How a message must be handled when its session cannot take more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cause {
    /// An answer to the session's own request: a session that does not
    /// read its answers is too slow and is disconnected.
    Own,
    /// An INVOCATION another session's CALL caused: when the callee cannot
    /// take it, the call fails (`io.babble.callee_busy`); the callee stays.
    Invocation(u64),
    /// A notice the session may miss (INTERRUPT): dropped when full.
    Advisory,
}

/// Where messages must go, and what a full queue means for each.
pub(super) type Outbox = Vec<(u64, Message, Cause)>;

/// What one session may hold at the dealer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DealerLimits {
    /// Procedures one session may register.
    pub max_registrations: usize,
    /// Calls one session may have in flight as caller.
    pub max_calls: usize,
    /// Invocations waiting for one callee's answer.
    pub max_invocations: usize,
}

#[derive(Default)]
struct Realm {
    /// Procedure URI to (registration ID, callee session).
    procedures: HashMap<String, (u64, u64)>,
}

/// What the dealer knows of one session.
struct Session {
    realm: String,
    /// Where it connected from (its network address, see
    /// `babble_net_core::source`): a callee's queue is shared by address.
    address: Arc<str>,
    /// The key the session proved, when the router requires it: the only
    /// procedure it may register.
    authid: Option<PeerKey>,
    /// Registration IDs it owns.
    registrations: HashSet<u64>,
    /// Its calls in flight: its request ID to the invocation.
    calls: HashMap<u64, u64>,
    /// Invocations waiting for its answer.
    invocations: HashSet<u64>,
}

/// A call in progress, keyed by its INVOCATION request ID.
struct Invocation {
    caller: u64,
    /// The caller's address.
    address: Arc<str>,
    /// Order of arrival, oldest first.
    seq: u64,
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
pub(super) struct Dealer {
    limits: DealerLimits,
    realms: HashMap<String, Realm>,
    sessions: HashMap<u64, Session>,
    /// Registration ID to (realm, procedure).
    registrations: HashMap<u64, (String, String)>,
    invocations: HashMap<u64, Invocation>,
    next_seq: u64,
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

fn interrupt(invocation: u64) -> Message {
    let options = [("mode".to_owned(), json!("killnowait"))]
        .into_iter()
        .collect();
    Message::Interrupt {
        request: invocation,
        options,
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

/// A fresh random ID not in `taken`.
fn fresh_id<V>(taken: &HashMap<u64, V>) -> u64 {
    loop {
        let id = random_id();
        if !taken.contains_key(&id) {
            return id;
        }
    }
}

impl Dealer {
    pub(super) fn new(limits: DealerLimits) -> Dealer {
        Dealer {
            limits,
            realms: HashMap::new(),
            sessions: HashMap::new(),
            registrations: HashMap::new(),
            invocations: HashMap::new(),
            next_seq: 0,
        }
    }

    pub(super) fn has_realm(&self, realm: &str) -> bool {
        self.realms.contains_key(realm)
    }

    pub(super) fn add_realm(&mut self, realm: &str) {
        self.realms.entry(realm.to_owned()).or_default();
    }

    /// A new session in `realm` from `address`, with a fresh random ID;
    /// `authid` when it proved a key.
    pub(super) fn join(&mut self, realm: &str, authid: Option<PeerKey>, address: &str) -> u64 {
        let session = fresh_id(&self.sessions);
        metrics::gauge!("babble_net_signal_sessions").increment(1.0);
        self.sessions.insert(
            session,
            Session {
                realm: realm.to_owned(),
                address: address.into(),
                authid,
                registrations: HashSet::new(),
                calls: HashMap::new(),
                invocations: HashSet::new(),
            },
        );
        session
    }

    /// Handles a message from `session`. `Err` means a protocol violation:
    /// the session must be aborted.
    pub(super) fn handle(&mut self, session: u64, message: Message) -> Result<Outbox, String> {
        if !self.sessions.contains_key(&session) {
            return Err("unknown session".into());
        }
        let mut out = Outbox::new();
        match message {
            Message::Register {
                request, procedure, ..
            } => {
                let reply = self.register(session, request, procedure);
                out.push((session, reply, Cause::Own));
            }
            Message::Unregister {
                request,
                registration,
            } => {
                let reply = self.unregister(session, request, registration);
                out.push((session, reply, Cause::Own));
            }
            Message::Call {
                request,
                procedure,
                args,
                kwargs,
                ..
            } => self.call(session, request, procedure, args, kwargs, &mut out)?,
            Message::Yield {
                request,
                args,
                kwargs,
                ..
            } => {
                if let Some(call) = self.take_invocation(request, Some(session)) {
                    out.push((
                        call.caller,
                        Message::Result {
                            request: call.call_request,
                            details: Map::new(),
                            args,
                            kwargs,
                        },
                        Cause::Own,
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
                if let Some(call) = self.take_invocation(request, Some(session)) {
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
                        Cause::Own,
                    ));
                }
            }
            Message::Cancel { request, options } => {
                let invocation = self.sessions[&session].calls.get(&request).copied();
                if let Some(call) = invocation.and_then(|i| self.take_invocation(i, None)) {
                    out.push((
                        session,
                        error(
                            code::CALL,
                            request,
                            uri::CANCELED,
                            Some("canceled by the caller"),
                        ),
                        Cause::Own,
                    ));
                    let mode = options
                        .get("mode")
                        .cloned()
                        .unwrap_or_else(|| json!("killnowait"));
                    let options = [("mode".to_owned(), mode)].into_iter().collect();
                    out.push((
                        call.callee,
                        Message::Interrupt {
                            request: invocation.expect("found above"),
                            options,
                        },
                        Cause::Advisory,
                    ));
                }
            }
            other => return Err(format!("a client may not send {}", kind_of(&other))),
        }
        Ok(out)
    }

    fn register(&mut self, session: u64, request: u64, procedure: String) -> Message {
        if !valid_uri(&procedure) {
            return error(
                code::REGISTER,
                request,
                uri::INVALID_URI,
                Some("not a valid procedure URI"),
            );
        }
        let owner = self.sessions.get_mut(&session).expect("checked by handle");
        if let Some(authid) = owner.authid {
            if PeerKey::parse(&procedure).ok() != Some(authid) {
                return error(
                    code::REGISTER,
                    request,
                    uri::NOT_AUTHORIZED,
                    Some("a session may only register its own ID"),
                );
            }
        }
        if owner.registrations.len() >= self.limits.max_registrations {
            return error(
                code::REGISTER,
                request,
                uri::LIMIT_REACHED,
                Some("too many registrations for one session"),
            );
        }
        let realm = self
            .realms
            .get_mut(&owner.realm)
            .expect("joined realms exist");
        if realm.procedures.contains_key(&procedure) {
            return error(code::REGISTER, request, uri::PROCEDURE_ALREADY_EXISTS, None);
        }
        let registration = fresh_id(&self.registrations);
        realm
            .procedures
            .insert(procedure.clone(), (registration, session));
        owner.registrations.insert(registration);
        self.registrations
            .insert(registration, (owner.realm.clone(), procedure));
        Message::Registered {
            request,
            registration,
        }
    }

    fn unregister(&mut self, session: u64, request: u64, registration: u64) -> Message {
        let owner = self.sessions.get_mut(&session).expect("checked by handle");
        if !owner.registrations.remove(&registration) {
            return error(code::UNREGISTER, request, uri::NO_SUCH_REGISTRATION, None);
        }
        if let Some((realm, procedure)) = self.registrations.remove(&registration) {
            if let Some(realm) = self.realms.get_mut(&realm) {
                realm.procedures.remove(&procedure);
            }
        }
        Message::Unregistered { request }
    }

    fn call(
        &mut self,
        caller: u64,
        request: u64,
        procedure: String,
        args: Vec<serde_json::Value>,
        kwargs: Map<String, serde_json::Value>,
        out: &mut Outbox,
    ) -> Result<(), String> {
        let limits = self.limits;
        let session = &self.sessions[&caller];
        if session.calls.contains_key(&request) {
            return Err(format!("request ID {request} is already in use by a call"));
        }
        let mut refuse = |uri: &str, why: &str| {
            metrics::counter!("babble_net_signal_calls_total", "result" => "refused").increment(1);
            out.push((
                caller,
                error(code::CALL, request, uri, Some(why)),
                Cause::Own,
            ));
            Ok(())
        };
        if session.calls.len() >= limits.max_calls {
            return refuse(uri::TOO_MANY_CALLS, "too many calls in flight");
        }
        // An authenticated caller offers as itself: the callee is told
        // who calls by the first argument, and nobody may speak for
        // another key.
        if let Some(authid) = &session.authid {
            let claimed = args.first().and_then(serde_json::Value::as_str);
            if claimed != Some(authid.to_string().as_str()) {
                return refuse(
                    uri::NOT_AUTHORIZED,
                    "the first argument of a call must be the caller's own ID",
                );
            }
        }
        let address = session.address.clone();
        let realm = &self.realms[&session.realm];
        let Some(&(registration, callee)) = realm.procedures.get(&procedure) else {
            return refuse(uri::NO_SUCH_PROCEDURE, &format!("no procedure {procedure}"));
        };
        if self.sessions[&callee].invocations.len() >= limits.max_invocations {
            // The callee's queue is shared by caller address: the address
            // waiting with the most calls gives its oldest up for a caller
            // from another; an address that holds the most is refused.
            match self.heaviest_waiting(callee, &address) {
                Some(oldest) => out.extend(self.displace(oldest)),
                None => {
                    return refuse(uri::CALLEE_BUSY, "the callee has too many calls waiting");
                }
            }
        }
        let invocation = fresh_id(&self.invocations);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.invocations.insert(
            invocation,
            Invocation {
                caller,
                address: address.clone(),
                seq,
                call_request: request,
                callee,
                timer: None,
            },
        );
        let by = self.sessions.get_mut(&caller).expect("checked above");
        by.calls.insert(request, invocation);
        let to = self
            .sessions
            .get_mut(&callee)
            .expect("registered sessions exist");
        to.invocations.insert(invocation);
        metrics::counter!("babble_net_signal_calls_total", "result" => "routed").increment(1);
        out.push((
            callee,
            Message::Invocation {
                request: invocation,
                registration,
                // The callee counts offers being answered by address.
                details: [(CALLER_ADDRESS.to_owned(), json!(&*address))]
                    .into_iter()
                    .collect(),
                args,
                kwargs,
            },
            Cause::Invocation(invocation),
        ));
        Ok(())
    }

    /// Of the calls waiting for `callee`, the oldest of the caller address
    /// waiting with the most, if that address holds more than `newcomer`
    /// would with one more.
    fn heaviest_waiting(&self, callee: u64, newcomer: &str) -> Option<u64> {
        let waiting = &self.sessions[&callee].invocations;
        let mut per_address: HashMap<&str, (usize, u64, u64)> = HashMap::new();
        for id in waiting {
            let call = &self.invocations[id];
            let entry = per_address.entry(&call.address).or_insert((0, u64::MAX, 0));
            entry.0 += 1;
            if call.seq < entry.1 {
                (entry.1, entry.2) = (call.seq, *id);
            }
        }
        let own = per_address.get(newcomer).map_or(0, |(count, _, _)| *count);
        per_address
            .into_iter()
            .filter(|(_, (count, _, _))| *count > own + 1)
            .max_by_key(|(_, (count, oldest, _))| (*count, std::cmp::Reverse(*oldest)))
            .map(|(_, (_, _, id))| id)
    }

    /// Ends `invocation` (answered by `callee` when given) and forgets it
    /// on both sides.
    fn take_invocation(&mut self, invocation: u64, callee: Option<u64>) -> Option<Invocation> {
        let call = self.invocations.get(&invocation)?;
        if callee.is_some_and(|callee| callee != call.callee) {
            return None;
        }
        let call = self.invocations.remove(&invocation)?;
        if let Some(caller) = self.sessions.get_mut(&call.caller) {
            caller.calls.remove(&call.call_request);
        }
        if let Some(callee) = self.sessions.get_mut(&call.callee) {
            callee.invocations.remove(&invocation);
        }
        Some(call)
    }

    /// The call behind `invocation` ran out of time: the caller gets an
    /// error, the callee an INTERRUPT.
    pub(super) fn expire(&mut self, invocation: u64) -> Outbox {
        let Some(mut call) = self.take_invocation(invocation, None) else {
            return Outbox::new();
        };
        // Called from the timer task itself: nothing to abort.
        call.timer = None;
        metrics::counter!("babble_net_signal_calls_total", "result" => "expired").increment(1);
        vec![
            (
                call.caller,
                error(
                    code::CALL,
                    call.call_request,
                    uri::TIMEOUT,
                    Some("the callee did not answer in time"),
                ),
                Cause::Own,
            ),
            (call.callee, interrupt(invocation), Cause::Advisory),
        ]
    }

    /// The callee could not take `invocation` (its queue is full): the
    /// call fails, the callee is left alone.
    pub(super) fn refuse(&mut self, invocation: u64) -> Outbox {
        let Some(call) = self.take_invocation(invocation, None) else {
            return Outbox::new();
        };
        vec![(
            call.caller,
            error(
                code::CALL,
                call.call_request,
                uri::CALLEE_BUSY,
                Some("the callee cannot take more calls now"),
            ),
            Cause::Own,
        )]
    }

    /// `invocation` gives its place in the callee's queue to another
    /// caller's: its caller is told the callee is busy, the callee is
    /// interrupted.
    fn displace(&mut self, invocation: u64) -> Outbox {
        let Some(call) = self.take_invocation(invocation, None) else {
            return Outbox::new();
        };
        metrics::counter!("babble_net_signal_calls_total", "result" => "displaced").increment(1);
        vec![
            (
                call.caller,
                error(
                    code::CALL,
                    call.call_request,
                    uri::CALLEE_BUSY,
                    Some("the callee's queue is shared: a caller from another address took this place"),
                ),
                Cause::Own,
            ),
            (call.callee, interrupt(invocation), Cause::Advisory),
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

    /// The invocation a CALL of `caller` created, to arm its timeout.
    pub(super) fn invocation_of(&self, caller: u64, call_request: u64) -> Option<u64> {
        self.sessions
            .get(&caller)?
            .calls
            .get(&call_request)
            .copied()
    }

    /// `session` is gone: its registrations go, its pending calls end.
    pub(super) fn leave(&mut self, session: u64) -> Outbox {
        let Some(gone) = self.sessions.remove(&session) else {
            return Outbox::new();
        };
        metrics::gauge!("babble_net_signal_sessions").decrement(1.0);
        for registration in gone.registrations {
            if let Some((realm, procedure)) = self.registrations.remove(&registration) {
                if let Some(realm) = self.realms.get_mut(&realm) {
                    realm.procedures.remove(&procedure);
                }
            }
        }
        let mut out = Outbox::new();
        for invocation in gone.calls.into_values() {
            if let Some(call) = self.take_invocation(invocation, None) {
                out.push((call.callee, interrupt(invocation), Cause::Advisory));
            }
        }
        for invocation in gone.invocations {
            if let Some(call) = self.take_invocation(invocation, None) {
                out.push((
                    call.caller,
                    error(
                        code::CALL,
                        call.call_request,
                        uri::CANCELED,
                        Some("the callee left"),
                    ),
                    Cause::Own,
                ));
            }
        }
        out
    }

    /// Number of sessions joined.
    pub(super) fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Whether `session` has registered a procedure.
    pub(super) fn has_registered(&self, session: u64) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| !s.registrations.is_empty())
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

    const LIMITS: DealerLimits = DealerLimits {
        max_registrations: 2,
        max_calls: 3,
        max_invocations: 4,
    };

    fn dealer(realms: &[&str]) -> Dealer {
        let mut dealer = Dealer::new(LIMITS);
        for realm in realms {
            dealer.add_realm(realm);
        }
        dealer
    }

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

    fn call(dealer: &mut Dealer, caller: u64, request: u64, procedure: &str) -> Outbox {
        dealer
            .handle(
                caller,
                Message::Call {
                    request,
                    options: Map::new(),
                    procedure: procedure.into(),
                    args: vec![json!("a")],
                    kwargs: Map::new(),
                },
            )
            .unwrap()
    }

    fn error_uri(out: &Outbox) -> &str {
        match &out[..] {
            [(_, Message::Error { error, .. }, Cause::Own)] => error,
            other => panic!("not one error: {other:?}"),
        }
    }

    #[test]
    fn a_call_reaches_the_callee_and_its_answer_the_caller() {
        let mut dealer = dealer(&["main"]);
        let (callee, caller) = (
            dealer.join("main", None, "10.0.0.1"),
            dealer.join("main", None, "10.0.0.1"),
        );
        let Message::Registered { registration, .. } = register(&mut dealer, callee, 1, "peer.b")
        else {
            panic!("not registered")
        };
        let out = call(&mut dealer, caller, 5, "peer.b");
        let [(
            to,
            Message::Invocation {
                request: invocation,
                registration: reg,
                args,
                ..
            },
            Cause::Invocation(tagged),
        )] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            (*to, *reg, args.clone(), *tagged),
            (callee, registration, vec![json!("a")], *invocation)
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
                },
                Cause::Own
            )]
        );
        assert!(dealer.invocations.is_empty());
        assert!(dealer.sessions[&caller].calls.is_empty());
        assert!(dealer.sessions[&callee].invocations.is_empty());
    }

    #[test]
    fn realms_do_not_see_each_other() {
        let mut dealer = dealer(&["a", "b"]);
        let (in_a, in_b) = (
            dealer.join("a", None, "10.0.0.1"),
            dealer.join("b", None, "10.0.0.1"),
        );
        register(&mut dealer, in_a, 1, "peer");
        // The same name registers fine in the other realm...
        assert!(matches!(
            register(&mut dealer, in_b, 1, "peer"),
            Message::Registered { .. }
        ));
        // ...and a call from another session of b reaches b's callee as
        // an invocation, not a's (nor an error back to the caller).
        let caller = dealer.join("b", None, "10.0.0.1");
        let out = call(&mut dealer, caller, 2, "peer");
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].0, in_b);
        assert!(
            matches!(out[0].1, Message::Invocation { .. }),
            "{:?}",
            out[0].1
        );
    }

    #[test]
    fn duplicate_registration_is_refused_and_a_leaver_frees_its_names() {
        let mut dealer = dealer(&["main"]);
        let (first, second) = (
            dealer.join("main", None, "10.0.0.1"),
            dealer.join("main", None, "10.0.0.1"),
        );
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
        assert_eq!(dealer.registrations.len(), 1);
    }

    #[test]
    fn unregister_frees_the_name_and_only_the_owner_may_do_it() {
        let mut dealer = dealer(&["main"]);
        let (owner, other) = (
            dealer.join("main", None, "10.0.0.1"),
            dealer.join("main", None, "10.0.0.1"),
        );
        let Message::Registered { registration, .. } = register(&mut dealer, owner, 1, "id") else {
            panic!()
        };
        let unregister = |request| Message::Unregister {
            request,
            registration,
        };
        let out = dealer.handle(other, unregister(2)).unwrap();
        assert_eq!(error_uri(&out), uri::NO_SUCH_REGISTRATION);
        let out = dealer.handle(owner, unregister(3)).unwrap();
        assert!(matches!(out[0].1, Message::Unregistered { request: 3 }));
        assert!(matches!(
            register(&mut dealer, other, 4, "id"),
            Message::Registered { .. }
        ));
    }

    #[test]
    fn a_session_may_register_only_so_many_procedures() {
        let mut dealer = dealer(&["main"]);
        let session = dealer.join("main", None, "10.0.0.1");
        register(&mut dealer, session, 1, "a");
        register(&mut dealer, session, 2, "b");
        let Message::Error { error, .. } = register(&mut dealer, session, 3, "c") else {
            panic!()
        };
        assert_eq!(error, uri::LIMIT_REACHED);
    }

    #[test]
    fn a_caller_may_have_only_so_many_calls_in_flight() {
        let mut dealer = dealer(&["main"]);
        let (callee, caller) = (
            dealer.join("main", None, "10.0.0.1"),
            dealer.join("main", None, "10.0.0.1"),
        );
        register(&mut dealer, callee, 1, "p");
        for request in 1..=3 {
            assert!(matches!(
                call(&mut dealer, caller, request, "p")[0].1,
                Message::Invocation { .. }
            ));
        }
        let out = call(&mut dealer, caller, 4, "p");
        assert_eq!(error_uri(&out), uri::TOO_MANY_CALLS);
        assert_eq!(out[0].0, caller);
    }

    #[test]
    fn a_flooded_callee_is_protected_and_stays_registered() {
        let mut dealer = dealer(&["main"]);
        let callee = dealer.join("main", None, "10.0.0.1");
        register(&mut dealer, callee, 1, "p");
        let floods: Vec<u64> = (0..3)
            .map(|_| dealer.join("main", None, "10.0.0.1"))
            .collect();
        let mut refused = 0;
        for (i, flood) in floods.iter().enumerate() {
            for request in 1..=2 {
                let out = call(&mut dealer, *flood, request, "p");
                if let [(to, Message::Error { error, .. }, _)] = &out[..] {
                    assert_eq!((*to, error.as_str()), (*flood, uri::CALLEE_BUSY), "{i}");
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, 6 - LIMITS.max_invocations);
        assert_eq!(dealer.sessions[&callee].invocations.len(), 4);
        // The callee still owns its name.
        let other = dealer.join("main", None, "10.0.0.1");
        let Message::Error { error, .. } = register(&mut dealer, other, 1, "p") else {
            panic!()
        };
        assert_eq!(error, uri::PROCEDURE_ALREADY_EXISTS);
    }

    #[test]
    fn a_refused_invocation_fails_the_call_only() {
        let mut dealer = dealer(&["main"]);
        let (callee, caller) = (
            dealer.join("main", None, "10.0.0.1"),
            dealer.join("main", None, "10.0.0.1"),
        );
        register(&mut dealer, callee, 1, "p");
        let out = call(&mut dealer, caller, 7, "p");
        let Cause::Invocation(invocation) = out[0].2 else {
            panic!()
        };
        let out = dealer.refuse(invocation);
        assert_eq!(out[0].0, caller);
        assert_eq!(error_uri(&out), uri::CALLEE_BUSY);
        assert!(dealer.invocations.is_empty());
        assert!(dealer.sessions[&caller].calls.is_empty());
    }

    #[test]
    fn a_reused_call_request_id_is_a_protocol_violation() {
        let mut dealer = dealer(&["main"]);
        let (callee, caller) = (
            dealer.join("main", None, "10.0.0.1"),
            dealer.join("main", None, "10.0.0.1"),
        );
        register(&mut dealer, callee, 1, "p");
        call(&mut dealer, caller, 9, "p");
        let second = Message::Call {
            request: 9,
            options: Map::new(),
            procedure: "p".into(),
            args: vec![],
            kwargs: Map::new(),
        };
        assert!(dealer.handle(caller, second).is_err());
        // The first call is untouched.
        assert_eq!(dealer.invocations.len(), 1);
    }

    #[test]
    fn cancel_answers_the_caller_and_interrupts_the_callee() {
        let mut dealer = dealer(&["main"]);
        let (callee, caller) = (
            dealer.join("main", None, "10.0.0.1"),
            dealer.join("main", None, "10.0.0.1"),
        );
        register(&mut dealer, callee, 1, "p");
        call(&mut dealer, caller, 9, "p");
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
            matches!(&out[0], (to, Message::Error { error, request: 9, .. }, Cause::Own) if *to == caller && error == uri::CANCELED)
        );
        assert!(
            matches!(&out[1], (to, Message::Interrupt { .. }, Cause::Advisory) if *to == callee)
        );
        assert!(dealer.invocations.is_empty());
    }

    #[test]
    fn a_leaving_callee_fails_its_calls_and_a_leaving_caller_interrupts_them() {
        let mut dealer = dealer(&["main"]);
        let (callee, caller) = (
            dealer.join("main", None, "10.0.0.1"),
            dealer.join("main", None, "10.0.0.1"),
        );
        register(&mut dealer, callee, 1, "p");
        register(&mut dealer, caller, 1, "q");
        call(&mut dealer, caller, 1, "p");
        call(&mut dealer, callee, 1, "q");
        let out = dealer.leave(callee);
        assert_eq!(out.len(), 2);
        assert!(out.iter().any(|(to, m, _)| *to == caller
            && matches!(m, Message::Error { error, .. } if error == uri::CANCELED)));
        assert!(out
            .iter()
            .any(|(to, m, _)| *to == caller && matches!(m, Message::Interrupt { .. })));
        assert!(dealer.invocations.is_empty());
        assert!(dealer.sessions[&caller].calls.is_empty());
        assert!(dealer.sessions[&caller].invocations.is_empty());
    }

    #[test]
    fn an_authenticated_session_may_register_only_its_own_id() {
        let mut dealer = dealer(&["main"]);
        let key = crate::secure::NodeKey::generate().public();
        let session = dealer.join("main", Some(key), "10.0.0.1");
        let Message::Error { error, .. } = register(&mut dealer, session, 1, "someone.else") else {
            panic!()
        };
        assert_eq!(error, uri::NOT_AUTHORIZED);
        // Its own key, in any spelling of the hex.
        let own = key.to_string().to_lowercase();
        assert!(matches!(
            register(&mut dealer, session, 2, &own),
            Message::Registered { .. }
        ));
    }

    #[test]
    fn an_authenticated_caller_may_offer_only_as_itself() {
        let mut dealer = dealer(&["main"]);
        let callee = dealer.join("main", None, "10.0.0.1");
        register(&mut dealer, callee, 1, "p");
        let key = crate::secure::NodeKey::generate().public();
        let caller = dealer.join("main", Some(key), "10.0.0.2");
        // `call` sends "a" as the first argument: not the caller's ID.
        let out = call(&mut dealer, caller, 1, "p");
        assert_eq!(error_uri(&out), uri::NOT_AUTHORIZED);
        let own = dealer.handle(
            caller,
            Message::Call {
                request: 2,
                options: Map::new(),
                procedure: "p".into(),
                args: vec![json!(key.to_string()), json!("sdp")],
                kwargs: Map::new(),
            },
        );
        assert!(
            matches!(&own.unwrap()[..], [(to, Message::Invocation { .. }, _)] if *to == callee)
        );
    }

    #[test]
    fn a_callee_queue_full_of_one_address_makes_room_for_another() {
        let mut dealer = dealer(&["main"]);
        let callee = dealer.join("main", None, "10.0.0.1");
        register(&mut dealer, callee, 1, "p");
        let flood = dealer.join("main", None, "10.0.0.66");
        let more = dealer.join("main", None, "10.0.0.66");
        for (session, request) in [(flood, 1), (flood, 2), (more, 1), (more, 2)] {
            assert!(matches!(
                &call(&mut dealer, session, request, "p")[..],
                [(_, Message::Invocation { .. }, _)]
            ));
        }
        // The flood's next call is refused: its address holds the most.
        let out = call(&mut dealer, more, 3, "p");
        assert_eq!(error_uri(&out), uri::CALLEE_BUSY);
        // An honest caller from elsewhere gets in: the flood's oldest call
        // fails (the callee is interrupted), the honest one is invoked.
        let honest = dealer.join("main", None, "10.0.0.7");
        let out = call(&mut dealer, honest, 1, "p");
        let kinds: Vec<(u64, &str)> = out.iter().map(|(to, m, _)| (*to, kind_of(m))).collect();
        assert_eq!(
            kinds,
            vec![
                (flood, "this ERROR"),
                (callee, "INTERRUPT"),
                (callee, "INVOCATION")
            ]
        );
        assert!(
            matches!(&out[0].1, Message::Error { request: 1, error, .. } if error == uri::CALLEE_BUSY)
        );
        assert_eq!(dealer.sessions[&callee].invocations.len(), 4);
    }

    #[test]
    fn clients_may_not_send_router_messages() {
        let mut dealer = dealer(&["main"]);
        let session = dealer.join("main", None, "10.0.0.1");
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
