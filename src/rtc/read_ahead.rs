//! What the WebRTC stack receives on a data channel, taken from the stack
//! as it arrives and held here, charged to a budget, until its reader
//! takes it: the Listener on a channel another peer opened, a call on a
//! channel this node opened.
//!
//! Why: the stack hands each data channel's messages to a queue of 256
//! (16 MiB at 64 KiB a message), whether or not anyone reads the channel,
//! and only a full queue makes it stop taking data from the peer. That
//! length is fixed in the stack. A peer sending on many channels faster
//! than the node reads them would make the node hold those queues outside
//! every budget; so could a peer this node calls, on the channels the node
//! opened, by sending what nobody asked for. So each channel has a pump
//! that empties the stack's queue at once, charging every message here
//! before keeping it in the channel's inbox. A called peer's channels
//! count under one source of their own (`called ID`).
//!
//! At the budget, the rule of every cap of babble-net applies
//! ([`babble_net_core::places`]): room is made by closing the channel
//! holding the most of the source (the peer's address on the link) that
//! holds the most; its inbox is emptied there and then, so the budget
//! bounds the memory held. A channel that is itself the one to go takes
//! nothing more. The bytes held are the gauge
//! `babble_net_buffer_budget_bytes{transport="webrtc",budget="read_ahead"}`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use babble_net_actors::metrics;
use bytes::BytesMut;
use futures::task::AtomicWaker;

/// See the [module docs](self).
pub struct ReadAhead {
    budget: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    held: usize,
    channels: HashMap<u64, Held>,
    next_id: u64,
}

struct Held {
    source: String,
    bytes: usize,
    inbox: Arc<Inbox>,
}

/// How a channel's stream of messages ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The peer ended it; `closed`: the stack said the channel closed.
    Finished { closed: bool },
    /// The channel failed, or was closed to make room.
    Failed(&'static str),
}

/// What a reader gets next.
pub enum Next {
    Data(BytesMut),
    End(End),
}

/// One channel's messages, taken ahead of its reader.
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    reader: AtomicWaker,
}

#[derive(Default)]
struct InboxState {
    messages: VecDeque<BytesMut>,
    end: Option<End>,
}

impl Inbox {
    /// Ends the inbox with `end` unless it has ended; `discard`: its
    /// messages are dropped now (it is closed to make room).
    fn end(&self, end: End, discard: bool) {
        let mut state = self.state.lock().expect("inbox lock");
        if discard {
            state.messages.clear();
        }
        state.end.get_or_insert(end);
        drop(state);
        self.reader.wake();
    }
}

/// One channel's account and inbox; closed (its bytes given back) when
/// dropped.
pub struct Account {
    read_ahead: Arc<ReadAhead>,
    id: u64,
    inbox: Arc<Inbox>,
}

impl ReadAhead {
    /// A budget of `budget` bytes held ahead of readers.
    pub fn new(budget: usize) -> Arc<ReadAhead> {
        metrics::budget_limit("webrtc", "read_ahead", budget as f64);
        Arc::new(ReadAhead {
            budget,
            state: Mutex::default(),
        })
    }

    /// The bytes held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.state.lock().expect("read-ahead lock").held
    }

    /// An account for a channel from `source`.
    pub fn open(self: &Arc<Self>, source: &str) -> Account {
        let mut state = self.state.lock().expect("read-ahead lock");
        let id = state.next_id;
        state.next_id += 1;
        let inbox = Arc::new(Inbox::default());
        state.channels.insert(
            id,
            Held {
                source: source.to_owned(),
                bytes: 0,
                inbox: inbox.clone(),
            },
        );
        Account {
            read_ahead: self.clone(),
            id,
            inbox,
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        metrics::budget_limit("webrtc", "read_ahead", -(self.budget as f64));
    }
}

impl Account {
    /// Charges `data` and puts it in the inbox, closing the heaviest
    /// channel of the heaviest source while there is no room. `false`:
    /// this channel is that channel (it is closed now), or was closed.
    pub fn push(&self, data: BytesMut) -> bool {
        let bytes = data.len();
        {
            let mut state = self.read_ahead.state.lock().expect("read-ahead lock");
            while state.held + bytes > self.read_ahead.budget {
                match state.heaviest() {
                    Some(victim) if victim != self.id => state.evict(victim),
                    _ => {
                        state.evict(self.id);
                        return false;
                    }
                }
            }
            let Some(channel) = state.channels.get_mut(&self.id) else {
                return false;
            };
            if self.inbox.state.lock().expect("inbox lock").end.is_some() {
                return false;
            }
            channel.bytes += bytes;
            state.held += bytes;
            metrics::budget_held("webrtc", "read_ahead", bytes as f64);
        }
        let mut inbox = self.inbox.state.lock().expect("inbox lock");
        if inbox.end.is_some() {
            // Closed between the charge and now: the charge went with it.
            return false;
        }
        inbox.messages.push_back(data);
        drop(inbox);
        self.inbox.reader.wake();
        true
    }

    /// Ends the stream after what the inbox holds.
    pub fn finish(&self, end: End) {
        self.inbox.end(end, false);
    }

    /// Whether the channel was closed to make room (or failed).
    #[cfg(test)]
    fn failed(&self) -> bool {
        matches!(
            self.inbox.state.lock().expect("inbox lock").end,
            Some(End::Failed(_))
        )
    }

    /// The next message for the reader, or how the stream ended (a closed
    /// channel's failure comes first, its messages dropped).
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        self.inbox.reader.register(cx.waker());
        let mut inbox = self.inbox.state.lock().expect("inbox lock");
        if let Some(End::Failed(why)) = inbox.end {
            return Poll::Ready(Next::End(End::Failed(why)));
        }
        if let Some(data) = inbox.messages.pop_front() {
            drop(inbox);
            let mut state = self.read_ahead.state.lock().expect("read-ahead lock");
            state.take(self.id, data.len());
            return Poll::Ready(Next::Data(data));
        }
        match inbox.end {
            Some(end) => Poll::Ready(Next::End(end)),
            None => Poll::Pending,
        }
    }

    /// Gives back every byte and forgets the channel.
    pub fn close(&self) {
        let mut state = self.read_ahead.state.lock().expect("read-ahead lock");
        let bytes = state.channels.get(&self.id).map_or(0, |held| held.bytes);
        state.take(self.id, bytes);
        state.channels.remove(&self.id);
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        self.close();
    }
}

impl State {
    /// Of the channels not closed, the one holding the most of the source
    /// holding the most (ties: the lowest ID, the oldest).
    fn heaviest(&self) -> Option<u64> {
        let mut per_source: HashMap<&str, usize> = HashMap::new();
        for held in self.channels.values().filter(|held| held.bytes > 0) {
            *per_source.entry(&held.source).or_default() += held.bytes;
        }
        let (source, _) = per_source
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))?;
        self.channels
            .iter()
            .filter(|(_, held)| held.source == source && held.bytes > 0)
            .max_by(|a, b| a.1.bytes.cmp(&b.1.bytes).then_with(|| b.0.cmp(a.0)))
            .map(|(id, _)| *id)
    }

    /// Takes `bytes` off channel `id`'s account.
    fn take(&mut self, id: u64, bytes: usize) {
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        let bytes = bytes.min(channel.bytes);
        channel.bytes -= bytes;
        self.held -= bytes;
        metrics::budget_held("webrtc", "read_ahead", -(bytes as f64));
    }

    /// Closes channel `id` to make room: its inbox is emptied now and its
    /// bytes given back.
    fn evict(&mut self, id: u64) {
        let Some(inbox) = self.channels.get(&id).map(|held| held.inbox.clone()) else {
            return;
        };
        inbox.end(
            End::Failed("closed to make room: the read-ahead budget is full"),
            true,
        );
        let bytes = self.channels.get(&id).map_or(0, |held| held.bytes);
        self.take(id, bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn data(len: usize) -> BytesMut {
        BytesMut::zeroed(len)
    }

    fn next(account: &Account) -> Poll<Next> {
        account.poll_next(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn at_the_budget_the_heaviest_channel_of_the_heaviest_source_closes() {
        let read_ahead = ReadAhead::new(100);
        let honest = read_ahead.open("10.0.0.1");
        let flood: Vec<Account> = (0..3).map(|_| read_ahead.open("10.0.0.9")).collect();
        assert!(honest.push(data(30)));
        assert!(flood[0].push(data(20)));
        assert!(flood[1].push(data(40)));
        // 90 held: 10 more fit, 20 do not. The flood's address holds the
        // most (60), its heaviest channel (40) closes, its inbox emptied.
        assert!(flood[2].push(data(10)));
        assert!(honest.push(data(20)));
        assert!(flood[1].failed());
        assert!(!honest.failed() && !flood[0].failed());
        assert_eq!(read_ahead.held(), 80);
        assert!(matches!(
            next(&flood[1]),
            Poll::Ready(Next::End(End::Failed(_)))
        ));
        // The closed channel takes nothing more.
        assert!(!flood[1].push(data(1)));
        assert_eq!(read_ahead.held(), 80);
    }

    #[test]
    fn a_reader_gets_the_messages_in_order_then_the_end_and_gives_them_back() {
        let read_ahead = ReadAhead::new(100);
        let a = read_ahead.open("10.0.0.1");
        assert!(next(&a).is_pending());
        assert!(a.push(data(60)) && a.push(data(30)));
        a.finish(End::Finished { closed: true });
        assert!(matches!(next(&a), Poll::Ready(Next::Data(d)) if d.len() == 60));
        assert_eq!(read_ahead.held(), 30);
        assert!(matches!(next(&a), Poll::Ready(Next::Data(d)) if d.len() == 30));
        assert!(matches!(
            next(&a),
            Poll::Ready(Next::End(End::Finished { closed: true }))
        ));
        assert_eq!(read_ahead.held(), 0);
    }

    #[test]
    fn a_lone_channel_over_the_budget_closes_itself_and_a_closed_account_gives_all_back() {
        let read_ahead = ReadAhead::new(100);
        let only = read_ahead.open("10.0.0.1");
        let other = read_ahead.open("10.0.0.2");
        assert!(other.push(data(5)));
        assert!(only.push(data(90)));
        assert!(!only.push(data(20)));
        assert!(only.failed());
        assert_eq!(read_ahead.held(), 5);
        drop(other);
        assert_eq!(read_ahead.held(), 0);
    }
}
