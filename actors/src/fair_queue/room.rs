//! A source's room in the queue: how many of its RPCs may wait at once.
//!
//! The room is a counter both sides change atomically: a sender (on the
//! connection's thread) takes a place, and the node's thread gives it back
//! when it takes the RPC. Neither side takes a lock while the source has
//! room; only a sender that finds it full registers to be woken, and only
//! then does giving a place back touch the waiters' list.
//!
//! A place is also what the queue's gauges count: an RPC holds one from
//! the moment it may wait until the node takes it (or it is refused), and
//! an address is shown waiting while any of its keys' RPCs holds one.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::metrics::QueueGauges;

/// What an address's rooms share: the number the queue gave the address,
/// its RPCs waiting, all keys together, and the gauges that show them.
pub(super) struct AddressCount {
    id: u64,
    waiting: AtomicUsize,
    gauges: QueueGauges,
}

impl AddressCount {
    pub(super) fn new(id: u64, gauges: QueueGauges) -> AddressCount {
        AddressCount {
            id,
            waiting: AtomicUsize::new(0),
            gauges,
        }
    }
}

/// A source's room, and the numbers the node's thread knows it by.
pub(super) struct Room {
    /// The source itself (address and key), numbered by the queue.
    pub(super) key: u64,
    capacity: usize,
    used: AtomicUsize,
    counted: Arc<AddressCount>,
    /// Senders waiting for a place; a place given back wakes one.
    freed: Notify,
}

impl Room {
    /// An empty room with `capacity` places.
    pub(super) fn new(key: u64, capacity: usize, counted: Arc<AddressCount>) -> Room {
        Room {
            key,
            capacity,
            used: AtomicUsize::new(0),
            counted,
            freed: Notify::new(),
        }
    }

    /// A place in the room, waiting while it is full.
    pub(super) async fn enter(self: &Arc<Self>) -> Place {
        loop {
            if let Some(place) = self.try_enter() {
                return place;
            }
            // Registered before looking again, so a place given back in
            // between still wakes this sender.
            let mut freed = pin!(self.freed.notified());
            freed.as_mut().enable();
            if let Some(place) = self.try_enter() {
                return place;
            }
            freed.await;
        }
    }

    fn try_enter(self: &Arc<Self>) -> Option<Place> {
        let mut used = self.used.load(Ordering::Relaxed);
        while used < self.capacity {
            match self.used.compare_exchange_weak(
                used,
                used + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Place::taken(self.clone())),
                Err(now) => used = now,
            }
        }
        None
    }

    /// The number the queue gave the source's address.
    pub(super) fn address(&self) -> u64 {
        self.counted.id
    }

    /// Whether anybody holds the room: a sender, or an RPC waiting in it.
    pub(super) fn in_use(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > 1
    }
}

/// A place taken in a [`Room`]; given back when dropped.
pub(super) struct Place(Arc<Room>);

impl Place {
    fn taken(room: Arc<Room>) -> Place {
        let counted = &room.counted;
        counted.gauges.requests.increment(1.0);
        if counted.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
            counted.gauges.sources.increment(1.0);
        }
        Place(room)
    }

    /// The room this place is in.
    pub(super) fn room(&self) -> &Room {
        &self.0
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let counted = &self.0.counted;
        counted.gauges.requests.decrement(1.0);
        if counted.waiting.fetch_sub(1, Ordering::Relaxed) == 1 {
            counted.gauges.sources.decrement(1.0);
        }
        self.0.used.fetch_sub(1, Ordering::Release);
        // Without a waiter this only marks the room freed (one atomic
        // operation); a sender then finds the mark and looks again.
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(capacity: usize) -> Arc<Room> {
        let counted = Arc::new(AddressCount::new(0, QueueGauges::none()));
        Arc::new(Room::new(0, capacity, counted))
    }

    #[tokio::test]
    async fn a_full_room_waits_for_a_place_given_back() {
        let room = room(2);
        let first = room.enter().await;
        let _second = room.enter().await;
        let mut third = Box::pin(room.enter());
        assert!(futures::poll!(third.as_mut()).is_pending());
        drop(first);
        let entered = futures::poll!(third.as_mut());
        assert!(entered.is_ready());
        assert!(room.try_enter().is_none());
    }

    #[tokio::test]
    async fn a_waiter_given_up_passes_its_wake_on() {
        let room = room(1);
        let only = room.enter().await;
        let mut gives_up = Box::pin(room.enter());
        let mut stays = Box::pin(room.enter());
        assert!(futures::poll!(gives_up.as_mut()).is_pending());
        assert!(futures::poll!(stays.as_mut()).is_pending());
        drop(only);
        drop(gives_up);
        assert!(futures::poll!(stays.as_mut()).is_ready());
    }
}
