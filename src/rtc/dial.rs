//! The dialling side of the WebRTC layer: one peer connection per peer we
//! dial, shared by concurrent dials, replaced when it fails.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slog::{debug, Logger};
use tokio_util::sync::CancellationToken;

use super::channel::ChannelStream;
use super::engine::{self, Engine, PeerLink};
use super::read_ahead::ReadAhead;
use crate::signal::{Signal, SignalError};

/// What a dial needs; shared, because a dial outlives the call that
/// started it.
pub(super) struct Dialer {
    pub(super) id: String,
    /// The least time a dial gets, whatever the caller's RPC deadline.
    pub(super) connect_timeout: Duration,
    pub(super) signal: Arc<dyn Signal>,
    pub(super) engine: Arc<Engine>,
    /// What the channels this node opens receive ahead of their reader,
    /// charged with the answering side's (see [`super::read_ahead`]).
    pub(super) read_ahead: Arc<ReadAhead>,
    /// The peer connection to each peer we dial, behind a lock per peer so
    /// that concurrent dials share one connection.
    pub(super) outbound: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<PeerLink>>>>>,
    pub(super) next_label: AtomicU64,
    pub(super) shutdown: CancellationToken,
    pub(super) log: Logger,
}

impl Dialer {
    /// Closes and forgets peer connections that failed, and the entries
    /// of peers with none (a dial in progress holds its entry's lock and
    /// is left alone).
    pub(super) fn prune(&self) {
        self.outbound
            .lock()
            .expect("outbound lock")
            .retain(|_, slot| match slot.try_lock() {
                Ok(mut link) => match link.as_ref() {
                    Some(existing) if existing.is_usable() => true,
                    Some(_) => {
                        let dead = link.take().expect("checked above");
                        tokio::spawn(async move { dead.close().await });
                        false
                    }
                    None => false,
                },
                Err(_) => true,
            });
    }

    /// The slot of `target`'s peer connection, locked, and still the one
    /// in the map (pruning may drop an empty slot between lookup and lock;
    /// a link made in such a slot would be nobody's).
    async fn locked_slot(&self, target: &str) -> tokio::sync::OwnedMutexGuard<Option<PeerLink>> {
        loop {
            let slot = self
                .outbound
                .lock()
                .expect("outbound lock")
                .entry(target.to_owned())
                .or_default()
                .clone();
            let locked = slot.clone().lock_owned().await;
            let current = self.outbound.lock().expect("outbound lock");
            if current
                .get(target)
                .is_some_and(|in_map| Arc::ptr_eq(in_map, &slot))
            {
                return locked;
            }
        }
    }

    /// Opens a data channel to `target` within `budget`: on the peer
    /// connection to it if there is a usable one, else on a new one. A
    /// channel that does not open within a quarter of the budget on an
    /// existing connection means the peer has closed it (a node evicting
    /// us at its cap closes our connection, which our side learns only
    /// when ICE gives up): it is replaced within the same dial.
    pub(super) async fn dial_channel(
        &self,
        target: String,
        budget: Duration,
    ) -> io::Result<ChannelStream> {
        let label = format!("babble-{}", self.next_label.fetch_add(1, Ordering::Relaxed));
        // A called peer's channels count together, apart from any address.
        let source = format!("called {target}");
        // The lock is held until the channel is open, so that concurrent
        // dials to one peer share one peer connection.
        let mut link = self.locked_slot(&target).await;
        if let Some(existing) = link.as_ref() {
            if existing.is_usable() {
                let opening = existing.new_channel(&label, &self.read_ahead, &source);
                let reuse = tokio::time::timeout(budget / 4, opening).await;
                match reuse {
                    Ok(opened) => return opened.map_err(other),
                    Err(_) => debug!(self.log, "no channel opens on the peer connection: \
                        replacing it"; "peer" => &target),
                }
            } else {
                debug!(self.log, "replacing a failed peer connection"; "peer" => &target);
            }
            existing.close().await;
            *link = None;
        }
        // Dropped on any failure below, the new connection closes.
        let peer = self.engine.peer().await.map_err(other)?;
        let pending = peer.open_channel(&label).await.map_err(other)?;
        let offer = peer.offer().await.map_err(other)?;
        let answer = self
            .signal
            .offer(&target, offer)
            .await
            .map_err(signal_error)?;
        peer.accept_answer(&answer).await.map_err(other)?;
        let opened = pending
            .opened(&self.read_ahead, &source)
            .await
            .map_err(other)?;
        *link = Some(peer);
        Ok(opened)
    }
}

fn other(error: engine::Error) -> io::Error {
    io::Error::other(error)
}

/// Signal failures as I/O errors the pool maps back to transport errors.
fn signal_error(error: SignalError) -> io::Error {
    let kind = match &error {
        SignalError::UnknownPeer(_) => io::ErrorKind::NotFound,
        SignalError::Timeout { .. } => io::ErrorKind::TimedOut,
        SignalError::Closed => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::ConnectionRefused,
    };
    io::Error::new(kind, error)
}
