//! Keeps the data channels a link opens apart, in time, from those it
//! closes.
//!
//! The WebRTC stack (webrtc 0.21.1) gives a new channel the lowest SCTP
//! stream ID free. Closing a channel frees its ID at once and sends the
//! peer a stream reset; the peer answers with a reset of its own half,
//! which the stack applies to whatever channel holds that stream ID when it
//! arrives: if the ID was handed out again meanwhile, the new channel is
//! closed, before or just after it opens. So on one link:
//!
//! * a channel opens only while no channel is being closed;
//! * closing one waits while a channel opens, then counts as being closed
//!   for twice the link's round trip (what the last channel took to open),
//!   at least [`MIN_CLOSE_HOLD`] and at most [`CLOSE_SETTLE`], while the
//!   resets cross;
//! * so does a channel the peer closed, from the moment its stream is
//!   dropped: the peer answers our reset with one more of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedRwLockWriteGuard, RwLock};
use webrtc::data_channel::DataChannel;

/// The longest a close counts as in progress.
pub const CLOSE_SETTLE: Duration = Duration::from_secs(1);

/// The shortest a close counts as in progress (a busy machine answers
/// later than the last opening suggests).
pub const MIN_CLOSE_HOLD: Duration = Duration::from_millis(20);

/// See the [module docs](self). Clones share one gate.
#[derive(Clone, Default)]
pub(super) struct ChannelGate(Arc<GateState>);

#[derive(Default)]
struct GateState {
    /// Opens hold it exclusively, closes shared.
    turns: Arc<RwLock<()>>,
    /// How long the last channel took to open, in microseconds.
    last_open_us: AtomicU64,
}

/// An open in progress; other opens and every close wait until it is
/// dropped.
pub(super) struct Opening {
    _turn: OwnedRwLockWriteGuard<()>,
    gate: ChannelGate,
    began: Instant,
}

impl Opening {
    /// The channel opened: its time is the link's round-trip estimate.
    pub(super) fn opened(self) {
        let took = self.began.elapsed().as_micros();
        let took = u64::try_from(took).unwrap_or(u64::MAX);
        self.gate.0.last_open_us.store(took, Ordering::Relaxed);
    }
}

impl ChannelGate {
    /// Waits until no channel of the link is being closed or opened.
    pub(super) async fn open(&self) -> Opening {
        Opening {
            _turn: self.0.turns.clone().write_owned().await,
            gate: self.clone(),
            began: Instant::now(),
        }
    }

    /// How long a close counts as in progress, see the [module docs](self).
    pub(super) fn close_hold(&self) -> Duration {
        let round_trip = Duration::from_micros(self.0.last_open_us.load(Ordering::Relaxed));
        (2 * round_trip).clamp(MIN_CLOSE_HOLD, CLOSE_SETTLE)
    }

    /// Closes `channel` in the background, once no channel is opening, and
    /// holds opens back for [`ChannelGate::close_hold`]. A channel the
    /// stack already reported closed (`closed_by_peer`) is only waited for.
    pub(super) fn close(&self, channel: Arc<dyn DataChannel>, closed_by_peer: bool) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let gate = self.clone();
        runtime.spawn(async move {
            let _turn = gate.0.turns.clone().read_owned().await;
            // After any open in progress: its time counts.
            let hold = gate.close_hold();
            if !closed_by_peer {
                let _ = channel.close().await;
            }
            tokio::time::sleep(hold).await;
        });
    }
}
