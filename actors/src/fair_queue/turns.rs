//! The sources' turns: the part of the queue only the receiver touches.
//!
//! RPCs that arrived wait here, each in its source's line, and are taken
//! address by address, and within an address key by key. The lines are
//! known by the numbers the queue gave the sources' rooms, not by what a
//! peer sent, so they are kept in maps with a fast unkeyed hash.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use super::room::Place;
use crate::rpc::Rpc;

/// Idle lines (nothing waiting) kept beyond twice the busy ones before
/// they are forgotten: a source's next request, often microseconds after
/// its last, finds its line made. Lines, not addresses, are counted: one
/// address minting keys makes a line per key.
const IDLE_LINES_KEPT: usize = 64;

/// An RPC waiting, with the place it takes in its source's room.
pub(super) struct Queued {
    pub(super) rpc: Rpc,
    pub(super) place: Place,
}

#[derive(Default)]
struct AddressLines {
    keys: FxHashMap<u64, VecDeque<Queued>>,
    /// Keys with RPCs waiting, in turn.
    turn: VecDeque<u64>,
}

/// See the [module docs](self).
pub(super) struct Turns {
    addresses: FxHashMap<u64, AddressLines>,
    /// Addresses with RPCs waiting, in turn.
    turn: VecDeque<u64>,
    /// RPCs waiting here, all sources together.
    waiting: usize,
    /// Lines kept, busy or idle.
    lines: usize,
    /// Lines with RPCs waiting.
    busy_lines: usize,
}

impl Turns {
    pub(super) fn new() -> Turns {
        Turns {
            addresses: FxHashMap::default(),
            turn: VecDeque::new(),
            waiting: 0,
            lines: 0,
            busy_lines: 0,
        }
    }

    /// RPCs waiting here.
    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Addresses and lines known, busy or idle.
    #[cfg(test)]
    pub(super) fn known(&self) -> (usize, usize) {
        (self.addresses.len(), self.lines)
    }

    /// Puts `queued` at the end of its source's line.
    pub(super) fn enqueue(&mut self, queued: Queued) {
        if self.lines > 2 * self.busy_lines + IDLE_LINES_KEPT {
            self.prune();
        }
        let (address_id, key_id) = (queued.place.room().address(), queued.place.room().key);
        let address = self.addresses.entry(address_id).or_default();
        let line = address.keys.entry(key_id).or_insert_with(|| {
            self.lines += 1;
            VecDeque::new()
        });
        if line.is_empty() {
            self.busy_lines += 1;
            if address.turn.is_empty() {
                self.turn.push_back(address_id);
            }
            address.turn.push_back(key_id);
        }
        line.push_back(queued);
        self.waiting += 1;
    }

    /// Forgets the lines with nothing waiting.
    fn prune(&mut self) {
        self.addresses.retain(|_, address| {
            address.keys.retain(|_, line| !line.is_empty());
            !address.keys.is_empty()
        });
        self.lines = self.busy_lines;
    }

    /// The next RPC in turn.
    pub(super) fn pop(&mut self) -> Option<Queued> {
        let address_id = self.turn.pop_front()?;
        let address = self
            .addresses
            .get_mut(&address_id)
            .expect("an address in turn is kept");
        let key_id = address
            .turn
            .pop_front()
            .expect("an address in turn has a key in turn");
        let line = address
            .keys
            .get_mut(&key_id)
            .expect("a key in turn is kept");
        let queued = line.pop_front().expect("a key in turn has an RPC");
        if !line.is_empty() {
            address.turn.push_back(key_id);
        } else {
            self.busy_lines -= 1;
        }
        if !address.turn.is_empty() {
            self.turn.push_back(address_id);
        }
        self.waiting -= 1;
        Some(queued)
    }
}
