//! Who may hold an inbound connection: admission at the connection cap,
//! and which connection is shed for a newcomer. Pure state, no I/O.
//!
//! A newcomer is always admitted. When the Listener is at `max_inbound`
//! connections, or the newcomer's source (IP address, or peer ID on
//! WebRTC) at `max_per_source`, one connection makes room, chosen in this
//! order among all connections (or the source's own):
//! 1. the one idle longest (no request in progress) for at least
//!    [`IDLE_GRACE`]: an idle connection costs its owner nothing to reopen;
//! 2. else the one reading its request slowest (fewest bytes per second
//!    since the request began): a trickler, not an honest peer;
//! 3. else the one idle longest among those idle for less than
//!    [`IDLE_GRACE`] (a connection just opened, whose request may be on
//!    its way, goes after the tricklers);
//! 4. else nobody: every connection holds a request the node is answering,
//!    and the newcomer is refused instead (those requests end within the
//!    node's own answer time).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How long a connection must have been idle before it is shed ahead of
/// a slow reader: a caller writes its request as soon as it has connected,
/// and that request may not have been read yet.
pub const IDLE_GRACE: Duration = Duration::from_millis(250);

const IDLE: u8 = 0;
const READING: u8 = 1;
const SERVING: u8 = 2;

/// What an inbound connection is doing, updated by its own task without
/// taking the Listener's lock (it changes twice per request).
#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    state: AtomicU8,
    /// Microseconds after `base` when the state began.
    since: AtomicU64,
    /// Bytes of the request being read.
    bytes: AtomicU64,
}

impl Activity {
    fn new(base: Instant, now: Instant) -> Activity {
        let activity = Activity {
            base,
            state: AtomicU8::new(IDLE),
            since: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        };
        activity.enter(IDLE, now);
        activity
    }

    fn enter(&self, state: u8, now: Instant) {
        let since = now.saturating_duration_since(self.base).as_micros() as u64;
        self.since.store(since, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        self.state.store(state, Ordering::Relaxed);
    }

    /// Waiting for a request, from `now`.
    pub(crate) fn idle(&self, now: Instant) {
        self.enter(IDLE, now);
    }

    /// Reading a request that began at `now`.
    pub(crate) fn reading(&self, now: Instant) {
        self.enter(READING, now);
    }

    /// `bytes` of the request being read have arrived.
    pub(crate) fn read(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    /// The node is answering a request.
    pub(crate) fn serving(&self) {
        self.state.store(SERVING, Ordering::Relaxed);
    }

    fn since(&self) -> Instant {
        self.base + std::time::Duration::from_micros(self.since.load(Ordering::Relaxed))
    }
}

struct Slot {
    source: String,
    activity: Arc<Activity>,
    kick: CancellationToken,
}

/// Why a connection was shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shed {
    /// For a newcomer, at the connection cap.
    Cap,
    /// For a newcomer from the same source, at the per-source cap.
    SourceCap,
}

/// A newcomer's slot: its ID, the token that sheds it, and where its task
/// says what it is doing.
pub(crate) type Admitted = (u64, CancellationToken, Arc<Activity>);

/// What admitting a newcomer did.
pub(crate) struct Admission {
    /// The newcomer's slot, or `None` when it is refused.
    pub(crate) slot: Option<Admitted>,
    /// The connection shed to make room, if any.
    pub(crate) shed: Option<Shed>,
}

/// See the [module docs](self).
pub(crate) struct Slots {
    base: Instant,
    max_total: usize,
    max_per_source: usize,
    slots: HashMap<u64, Slot>,
    per_source: HashMap<String, usize>,
    next_id: u64,
}

impl Slots {
    pub(crate) fn new(max_total: usize, max_per_source: usize) -> Slots {
        Slots {
            base: Instant::now(),
            max_total,
            max_per_source,
            slots: HashMap::new(),
            per_source: HashMap::new(),
            next_id: 0,
        }
    }

    /// Connections held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }

    /// Admits a connection from `source` at `now`, shedding another one
    /// when a cap is reached (see the module docs). `kick` is the
    /// newcomer's token (a child of the Listener's shutdown token).
    pub(crate) fn admit(
        &mut self,
        source: &str,
        now: Instant,
        kick: CancellationToken,
    ) -> Admission {
        let from_source = self.per_source.get(source).copied().unwrap_or(0);
        let need = if from_source >= self.max_per_source {
            Some(Shed::SourceCap)
        } else if self.slots.len() >= self.max_total {
            Some(Shed::Cap)
        } else {
            None
        };
        if let Some(reason) = need {
            let only = (reason == Shed::SourceCap).then_some(source);
            match self.victim(only, now) {
                Some(victim) => {
                    let slot = self.remove(victim).expect("the victim is held");
                    slot.kick.cancel();
                }
                None => {
                    return Admission {
                        slot: None,
                        shed: None,
                    }
                }
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let activity = Arc::new(Activity::new(self.base, now));
        self.slots.insert(
            id,
            Slot {
                source: source.to_owned(),
                activity: activity.clone(),
                kick: kick.clone(),
            },
        );
        *self.per_source.entry(source.to_owned()).or_default() += 1;
        Admission {
            slot: Some((id, kick, activity)),
            shed: need,
        }
    }

    /// Frees connection `id`'s slot (it closed, or was shed).
    pub(crate) fn release(&mut self, id: u64) {
        self.remove(id);
    }

    fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        if let Some(count) = self.per_source.get_mut(&slot.source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&slot.source);
            }
        }
        Some(slot)
    }

    /// The connection to shed, among `only`'s or all.
    fn victim(&self, only: Option<&str>, now: Instant) -> Option<u64> {
        let candidates = self
            .slots
            .iter()
            .filter(|(_, slot)| only.is_none_or(|source| slot.source == source));
        let mut idle_longest: Option<(Instant, u64)> = None;
        let mut idle_briefly: Option<(Instant, u64)> = None;
        let mut slowest: Option<(f64, u64)> = None;
        for (&id, slot) in candidates {
            let activity = &slot.activity;
            let since = activity.since();
            match activity.state.load(Ordering::Relaxed) {
                IDLE => {
                    let longest = match now.saturating_duration_since(since) >= IDLE_GRACE {
                        true => &mut idle_longest,
                        false => &mut idle_briefly,
                    };
                    if longest.is_none_or(|(oldest, _)| since < oldest) {
                        *longest = Some((since, id));
                    }
                }
                READING => {
                    let secs = now.saturating_duration_since(since).as_secs_f64().max(1e-3);
                    let rate = activity.bytes.load(Ordering::Relaxed) as f64 / secs;
                    if slowest.is_none_or(|(lowest, _)| rate < lowest) {
                        slowest = Some((rate, id));
                    }
                }
                _ => {}
            }
        }
        idle_longest
            .map(|(_, id)| id)
            .or(slowest.map(|(_, id)| id))
            .or(idle_briefly.map(|(_, id)| id))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn admitted(
        slots: &mut Slots,
        source: &str,
        now: Instant,
    ) -> (u64, CancellationToken, Arc<Activity>) {
        slots
            .admit(source, now, CancellationToken::new())
            .slot
            .expect("admitted")
    }

    #[test]
    fn under_the_caps_nobody_is_shed() {
        let mut slots = Slots::new(3, 2);
        let now = Instant::now();
        admitted(&mut slots, "a", now);
        admitted(&mut slots, "b", now);
        let admission = slots.admit("a", now, CancellationToken::new());
        assert!(admission.slot.is_some() && admission.shed.is_none());
        assert_eq!(slots.len(), 3);
    }

    #[test]
    fn at_the_cap_the_connection_idle_longest_makes_room() {
        let mut slots = Slots::new(2, 10);
        let now = Instant::now();
        let (_, old, _) = admitted(&mut slots, "a", now);
        let (_, young, _) = admitted(&mut slots, "b", now + Duration::from_secs(1));
        let admission = slots.admit("c", now + Duration::from_secs(2), CancellationToken::new());
        assert_eq!(admission.shed, Some(Shed::Cap));
        assert!(old.is_cancelled() && !young.is_cancelled());
        assert_eq!(slots.len(), 2);
    }

    #[test]
    fn a_connection_just_opened_goes_after_the_slow_readers() {
        let mut slots = Slots::new(2, 10);
        let now = Instant::now();
        let (_, slow_kick, slow) = admitted(&mut slots, "trickler", now);
        slow.reading(now);
        slow.read(3);
        let later = now + Duration::from_secs(2);
        let (_, fresh_kick, _) = admitted(&mut slots, "honest", later);
        slots.admit("c", later + IDLE_GRACE / 2, CancellationToken::new());
        assert!(slow_kick.is_cancelled() && !fresh_kick.is_cancelled());
    }

    #[test]
    fn with_nobody_idle_the_slowest_reader_makes_room() {
        let mut slots = Slots::new(2, 10);
        let now = Instant::now();
        let (_, fast_kick, fast) = admitted(&mut slots, "honest", now);
        let (_, slow_kick, slow) = admitted(&mut slots, "trickler", now);
        fast.reading(now);
        fast.read(1_000_000);
        slow.reading(now);
        slow.read(3);
        let admission = slots.admit(
            "newcomer",
            now + Duration::from_secs(1),
            CancellationToken::new(),
        );
        assert!(admission.slot.is_some());
        assert!(slow_kick.is_cancelled() && !fast_kick.is_cancelled());
    }

    #[test]
    fn when_every_connection_is_being_answered_the_newcomer_is_refused() {
        let mut slots = Slots::new(1, 10);
        let now = Instant::now();
        let (_, kick, activity) = admitted(&mut slots, "a", now);
        activity.serving();
        let admission = slots.admit("b", now, CancellationToken::new());
        assert!(admission.slot.is_none());
        assert!(!kick.is_cancelled());
    }

    #[test]
    fn a_source_at_its_cap_sheds_its_own_connections_first() {
        let mut slots = Slots::new(10, 2);
        let now = Instant::now();
        let (_, other, _) = admitted(&mut slots, "other", now);
        let (_, own_old, _) = admitted(&mut slots, "flood", now + Duration::from_secs(1));
        let (_, own_new, _) = admitted(&mut slots, "flood", now + Duration::from_secs(2));
        let admission = slots.admit(
            "flood",
            now + Duration::from_secs(3),
            CancellationToken::new(),
        );
        assert_eq!(admission.shed, Some(Shed::SourceCap));
        // The other source's connection is older, but it is not shed.
        assert!(!other.is_cancelled());
        assert!(own_old.is_cancelled() && !own_new.is_cancelled());
    }

    #[test]
    fn released_slots_free_their_source() {
        let mut slots = Slots::new(10, 1);
        let now = Instant::now();
        let (id, _, _) = admitted(&mut slots, "a", now);
        slots.release(id);
        let admission = slots.admit("a", now, CancellationToken::new());
        assert!(admission.shed.is_none());
        assert_eq!(slots.len(), 1);
    }
}
