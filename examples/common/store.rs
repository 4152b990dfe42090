//! The events a toy node keeps: indexed by creator, so that answering a
//! Sync costs the events it returns rather than a scan of everything, and
//! capped in total, so that a long run or a large cluster does not grow
//! without bound (the oldest events go first, as a real node prunes what
//! consensus has settled).

use std::collections::{BTreeMap, HashMap, VecDeque};

use babble_net::wire::WireEvent;

/// One creator's events still kept: consecutive indexes from `first`.
#[derive(Default)]
struct CreatorLog {
    first: i64,
    events: VecDeque<WireEvent>,
}

/// See the module docs.
pub struct EventStore {
    creators: HashMap<u32, CreatorLog>,
    /// The highest index seen of each creator (what a Sync says we know).
    known: BTreeMap<u32, i64>,
    /// Creators in the order their kept events arrived, oldest first: who
    /// loses an event when the store is full.
    arrival: VecDeque<u32>,
    cap: usize,
}

impl EventStore {
    /// A store keeping at most `cap` events.
    pub fn new(cap: usize) -> EventStore {
        EventStore {
            creators: HashMap::new(),
            known: BTreeMap::new(),
            arrival: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// The highest index of every creator seen.
    pub fn known(&self) -> &BTreeMap<u32, i64> {
        &self.known
    }

    /// The highest index of `creator` seen, or -1.
    pub fn last(&self, creator: u32) -> i64 {
        self.known.get(&creator).copied().unwrap_or(-1)
    }

    /// Events kept now.
    pub fn len(&self) -> usize {
        self.arrival.len()
    }

    /// Keeps `event` if it is newer than what we have of its creator. A
    /// gap (older events pruned by whoever sent it) starts that creator's
    /// log again from this event.
    pub fn insert(&mut self, event: WireEvent) {
        let (creator, index) = (event.body.creator_id, event.body.index);
        if index <= self.last(creator) {
            return;
        }
        let log = self.creators.entry(creator).or_default();
        if log.first + log.events.len() as i64 != index {
            if !log.events.is_empty() {
                self.arrival.retain(|c| *c != creator);
            }
            log.events.clear();
            log.first = index;
        }
        log.events.push_back(event);
        self.known.insert(creator, index);
        self.arrival.push_back(creator);
        while self.arrival.len() > self.cap {
            let oldest = self.arrival.pop_front().expect("not empty");
            if let Some(log) = self.creators.get_mut(&oldest) {
                log.events.pop_front();
                log.first += 1;
            }
        }
    }

    /// Up to `limit` events a node that knows `known` is missing: the
    /// oldest missing event of each creator in turn, then the next.
    pub fn missing_for(&self, known: &BTreeMap<u32, i64>, limit: usize) -> Option<Vec<WireEvent>> {
        let mut pending: Vec<(&CreatorLog, usize)> = self
            .creators
            .iter()
            .filter_map(|(creator, log)| {
                let seen = known.get(creator).copied().unwrap_or(-1);
                let from = (seen + 1 - log.first).max(0) as usize;
                (from < log.events.len()).then_some((log, from))
            })
            .collect();
        let mut missing = Vec::new();
        while missing.len() < limit && !pending.is_empty() {
            pending.retain_mut(|(log, next)| {
                if missing.len() >= limit {
                    return false;
                }
                missing.push(log.events[*next].clone());
                *next += 1;
                *next < log.events.len()
            });
        }
        (!missing.is_empty()).then_some(missing)
    }

    /// Every event kept, each creator's in order (a FastForward snapshot).
    pub fn all(&self) -> Vec<WireEvent> {
        self.creators
            .values()
            .flat_map(|log| log.events.iter().cloned())
            .collect()
    }
}
