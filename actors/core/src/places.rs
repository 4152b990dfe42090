//! Who may hold a place under a cap (an inbound connection of the
//! Listener, a session of the signaling router): admission, and which
//! place is evicted for a newcomer. Pure state, no I/O.
//!
//! A newcomer is always admitted. When every place is taken, one place
//! makes room: it is taken from the source (network address, see
//! [`crate::source`]) that holds the most places, and among that source's
//! places it is the one least recently used by a completed RPC (a place
//! that never completed one counts from its opening). When the newcomer's
//! own source is at `max_per_source`, the room is made among that
//! source's places, by the same order.
//!
//! Any connection can be evicted, even one whose request is being
//! answered or whose reply is being written (the node sees the RPC
//! abandoned): a connection held by a peer that never reads its reply
//! looks busy forever, and only its source's weight gives it away. So a
//! flood from one address sheds itself, a flood from many addresses sheds
//! its own idle-longest connections first, and an honest peer with recent
//! traffic outlives both.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

/// When a place last completed an RPC, updated by its holder's task
/// without taking the lock of the [`Places`].
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    /// Microseconds after `base` when the last RPC completed (or the
    /// connection opened).
    done: AtomicU64,
}

impl Activity {
    fn new(base: Instant, now: Instant) -> Activity {
        let activity = Activity {
            base,
            done: AtomicU64::new(0),
        };
        activity.completed(now);
        activity
    }

    /// An RPC completed at `now`.
    pub fn completed(&self, now: Instant) {
        let micros = now.saturating_duration_since(self.base).as_micros() as u64;
        self.done.store(micros, Ordering::Relaxed);
    }

    /// When the last RPC completed (or the place was taken, before any).
    pub fn last_completed(&self) -> Instant {
        self.base + std::time::Duration::from_micros(self.last_done())
    }

    /// When the last RPC completed, in microseconds after `base`.
    fn last_done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}

struct Slot {
    source: String,
    activity: Arc<Activity>,
    kick: CancellationToken,
}

/// Why a place was evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// For a newcomer, with every place taken.
    Cap,
    /// For a newcomer from the same source, at the per-source cap.
    SourceCap,
}

/// A newcomer's place: its ID, the token that evicts it, and where its
/// task says when it last completed an RPC.
pub type Admitted = (u64, CancellationToken, Arc<Activity>);

/// What admitting a newcomer did.
pub struct Admission {
    /// The newcomer's place, or `None` when it is refused (only when there
    /// is no place at all).
    pub slot: Option<Admitted>,
    /// Why a place was evicted to make room, if one was.
    pub shed: Option<Shed>,
}

/// See the [module docs](self).
pub struct Places {
    base: Instant,
    max_total: usize,
    max_per_source: usize,
    slots: HashMap<u64, Slot>,
    per_source: HashMap<String, usize>,
    next_id: u64,
}

impl Places {
    /// Room for `max_total` places, at most `max_per_source` per source.
    pub fn new(max_total: usize, max_per_source: usize) -> Places {
        Places {
            base: Instant::now(),
            max_total,
            max_per_source,
            slots: HashMap::new(),
            per_source: HashMap::new(),
            next_id: 0,
        }
    }

    /// Admits a connection from `source` at `now`, shedding another one
    /// when a cap is reached (see the module docs). `kick` is the
    /// newcomer's token (a child of the Listener's shutdown token).
    pub fn admit(&mut self, source: &str, now: Instant, kick: CancellationToken) -> Admission {
        let need = self.would_shed(source);
        if let Some(reason) = need {
            let only = (reason == Shed::SourceCap).then_some(source);
            match self.victim(only) {
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
        self.count_in(source);
        Admission {
            slot: Some((id, kick, activity)),
            shed: need,
        }
    }

    /// Whether admitting a newcomer from `source` now would evict a place,
    /// and why.
    pub fn would_shed(&self, source: &str) -> Option<Shed> {
        let from_source = self.per_source.get(source).copied().unwrap_or(0);
        if from_source >= self.max_per_source {
            Some(Shed::SourceCap)
        } else if self.slots.len() >= self.max_total {
            Some(Shed::Cap)
        } else {
            None
        }
    }

    /// Frees connection `id`'s slot (it closed, or was shed).
    pub fn release(&mut self, id: u64) {
        self.remove(id);
    }

    /// Counts place `id` under `source` from now on: its source became
    /// known after admission (a WebRTC connection, admitted under the ID
    /// its offer claims, is its peer's address once connected). The
    /// per-source cap is not applied to the move.
    pub fn move_to(&mut self, id: u64, source: &str) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.source == source {
            return;
        }
        let old = std::mem::replace(&mut slot.source, source.to_owned());
        if let Some(count) = self.per_source.get_mut(&old) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(&old);
            }
        }
        self.count_in(source);
    }

    /// One more place held by `source` (its name copied only when it is
    /// new: a transport making a connection per call admits one per call).
    fn count_in(&mut self, source: &str) {
        match self.per_source.get_mut(source) {
            Some(count) => *count += 1,
            None => {
                self.per_source.insert(source.to_owned(), 1);
            }
        }
    }

    /// Places held now.
    pub fn held(&self) -> usize {
        self.slots.len()
    }

    /// Places `source` holds now.
    pub fn held_by(&self, source: &str) -> usize {
        self.per_source.get(source).copied().unwrap_or(0)
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

    /// The connection to evict: among `only`'s, or else among the
    /// connections of the source holding the most, the one least recently
    /// used by a completed RPC (ties between sources go the same way).
    fn victim(&self, only: Option<&str>) -> Option<u64> {
        let heaviest = match only {
            Some(_) => 0,
            None => self.per_source.values().copied().max()?,
        };
        self.slots
            .iter()
            .filter(|(_, slot)| match only {
                Some(source) => slot.source == source,
                None => self.per_source.get(&slot.source) == Some(&heaviest),
            })
            .min_by_key(|(&id, slot)| (slot.activity.last_done(), id))
            .map(|(&id, _)| id)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn admitted(
        slots: &mut Places,
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
        let mut slots = Places::new(3, 2);
        let now = Instant::now();
        admitted(&mut slots, "a", now);
        admitted(&mut slots, "b", now);
        let admission = slots.admit("a", now, CancellationToken::new());
        assert!(admission.slot.is_some() && admission.shed.is_none());
        assert_eq!(slots.held(), 3);
    }

    #[test]
    fn at_the_cap_the_heaviest_source_makes_room() {
        let mut slots = Places::new(4, 10);
        let now = Instant::now();
        // The honest peer's connection is the oldest and idle longest.
        let (_, honest, _) = admitted(&mut slots, "honest", now);
        let later = now + Duration::from_secs(5);
        let (_, first, _) = admitted(&mut slots, "flood", later);
        let (_, second, _) = admitted(&mut slots, "flood", later);
        let (_, third, _) = admitted(&mut slots, "flood", later);
        let admission = slots.admit("newcomer", later, CancellationToken::new());
        assert_eq!(admission.shed, Some(Shed::Cap));
        assert!(!honest.is_cancelled());
        assert_eq!(
            [&first, &second, &third]
                .iter()
                .filter(|kick| kick.is_cancelled())
                .count(),
            1
        );
    }

    #[test]
    fn within_the_source_the_least_recently_used_goes_even_if_busy() {
        let mut slots = Places::new(3, 10);
        let now = Instant::now();
        // Three connections of one source: one answered an RPC a second
        // ago, one never completed one (it holds a request whose reply is
        // not read), one is fresh.
        let (_, used, used_activity) = admitted(&mut slots, "a", now);
        let (_, stuck, _) = admitted(&mut slots, "a", now);
        used_activity.completed(now + Duration::from_secs(9));
        let (_, fresh, _) = admitted(&mut slots, "a", now + Duration::from_secs(10));
        let admission = slots.admit("b", now + Duration::from_secs(10), CancellationToken::new());
        assert!(admission.slot.is_some());
        assert!(stuck.is_cancelled());
        assert!(!used.is_cancelled() && !fresh.is_cancelled());
    }

    #[test]
    fn between_equal_sources_the_least_recently_used_goes() {
        let mut slots = Places::new(2, 10);
        let now = Instant::now();
        let (_, quiet, _) = admitted(&mut slots, "a", now);
        let (_, busy, busy_activity) = admitted(&mut slots, "b", now);
        busy_activity.completed(now + Duration::from_secs(1));
        slots.admit("c", now + Duration::from_secs(2), CancellationToken::new());
        assert!(quiet.is_cancelled() && !busy.is_cancelled());
    }

    #[test]
    fn a_source_at_its_cap_sheds_its_own_connections_first() {
        let mut slots = Places::new(10, 2);
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
    fn a_place_moved_to_its_real_source_counts_there() {
        let mut slots = Places::new(3, 10);
        let now = Instant::now();
        // The honest place comes first: the least recently used of all and
        // the lowest ID, so it would go first if every source held one.
        let (_, honest, _) = admitted(&mut slots, "honest", now);
        // Two places admitted under made-up names, both from one address.
        let later = now + Duration::from_secs(1);
        let (a, made_up_a, _) = admitted(&mut slots, "id-a", later);
        let (b, made_up_b, _) = admitted(&mut slots, "id-b", later);
        slots.move_to(a, "10.0.0.9");
        slots.move_to(b, "10.0.0.9");
        // 10.0.0.9 now holds two places and the honest source one.
        let latest = now + Duration::from_secs(2);
        let admission = slots.admit("newcomer", latest, CancellationToken::new());
        assert_eq!(admission.shed, Some(Shed::Cap));
        assert!(!honest.is_cancelled());
        assert!(made_up_a.is_cancelled() ^ made_up_b.is_cancelled());
    }

    #[test]
    fn released_slots_free_their_source() {
        let mut slots = Places::new(10, 1);
        let now = Instant::now();
        let (id, _, _) = admitted(&mut slots, "a", now);
        slots.release(id);
        let admission = slots.admit("a", now, CancellationToken::new());
        assert!(admission.shed.is_none());
        assert_eq!(slots.held(), 1);
    }
}
