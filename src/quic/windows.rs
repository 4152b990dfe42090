//! Large flow-control windows, lent to a few sources at a time.
//!
//! Every inbound connection gets the small windows of [`QuicLimits`], so
//! that all of them together stay within half of each buffer budget
//! however many there are. The other half is lent in large windows: once
//! a connection has its place, it gets one if its source holds fewer
//! than [`PER_SOURCE`] and one is free, and gives it back when it
//! closes. A node serving a few
//! peers moves large requests and replies without waiting for a window
//! update every few hundred kilobytes; a flood of connections, from one
//! address or many, can hold at most [`QuicLimits::large_windows`] of
//! them, two per address, and the budgets hold whoever holds them.
//!
//! QUIC cannot take credit back, so the windows are lent for the whole
//! connection and the budgets count them as spent until it ends. A
//! connection that holds one and has completed no RPC for [`IDLE`] loses
//! its place to the next connection that asks for a large window when
//! none is free: it is closed (its peer dials again when it next calls),
//! and its window goes to the newcomer at once. So a peer cannot keep
//! large windows from others by holding them idle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use babble_net_core::places::Activity;
use tokio_util::sync::CancellationToken;

use super::QuicLimits;

/// How long a connection lent a large window may go without completing
/// an RPC before a newcomer can take the window (by closing it).
pub(super) const IDLE: Duration = Duration::from_secs(10);

/// Large windows one source address may hold at once: its connection,
/// and the one that replaces it while the old one waits for its idle
/// timeout (a peer that restarted without a goodbye).
pub(super) const PER_SOURCE: usize = 2;

/// The large windows not lent out, and the sources holding them.
#[derive(Debug)]
pub(super) struct LargeWindows {
    state: Mutex<Lent>,
}

#[derive(Debug)]
struct Lent {
    limit: usize,
    free: usize,
    /// How many each source holds.
    holders: HashMap<String, usize>,
    /// The connections holding them, by loan.
    loans: HashMap<u64, Loan>,
    next_loan: u64,
}

/// A connection holding a large window: how to close it, and when it last
/// completed an RPC.
#[derive(Debug)]
pub(super) struct Holder {
    /// Cancelled to close the connection.
    pub kick: CancellationToken,
    pub activity: Arc<Activity>,
}

#[derive(Debug)]
struct Loan {
    source: String,
    holder: Holder,
}

/// One large window lent to a connection, given back when dropped.
#[derive(Debug)]
pub(super) struct LargeWindow {
    windows: Arc<LargeWindows>,
    loan: u64,
}

impl LargeWindows {
    /// As many as `limits` allow at once.
    pub(super) fn new(limits: &QuicLimits) -> Arc<LargeWindows> {
        Arc::new(LargeWindows {
            state: Mutex::new(Lent {
                limit: limits.large_windows,
                free: limits.large_windows,
                holders: HashMap::new(),
                loans: HashMap::new(),
                next_loan: 0,
            }),
        })
    }

    /// A large window for the connection `holder` from `source`, unless
    /// the source holds [`PER_SOURCE`] already, or none is free and no
    /// holder has been idle for [`IDLE`] at `now` (the one idle longest
    /// is closed for it).
    pub(super) fn lend(
        self: &Arc<Self>,
        source: &str,
        holder: Holder,
        now: Instant,
    ) -> Option<LargeWindow> {
        let mut lent = self.state.lock().expect("large windows lock");
        let held = lent.holders.get(source).copied().unwrap_or(0);
        if lent.limit == 0 || held >= PER_SOURCE {
            return None;
        }
        if lent.free == 0 {
            let idlest = lent
                .loans
                .iter()
                .map(|(id, loan)| (loan.holder.activity.last_completed(), *id))
                .min()
                .filter(|(last, _)| now.saturating_duration_since(*last) >= IDLE)?;
            let taken = lent.give_back(idlest.1).expect("a loan just found");
            taken.holder.kick.cancel();
        }
        lent.free -= 1;
        *lent.holders.entry(source.to_owned()).or_insert(0) += 1;
        let loan = lent.next_loan;
        lent.next_loan += 1;
        let source = source.to_owned();
        lent.loans.insert(loan, Loan { source, holder });
        Some(LargeWindow {
            windows: self.clone(),
            loan,
        })
    }
}

impl Lent {
    /// Ends `loan`, if it is still out: its window is free again.
    fn give_back(&mut self, loan: u64) -> Option<Loan> {
        let loan = self.loans.remove(&loan)?;
        if let Some(held) = self.holders.get_mut(&loan.source) {
            *held -= 1;
            if *held == 0 {
                self.holders.remove(&loan.source);
            }
        }
        self.free += 1;
        Some(loan)
    }
}

impl LargeWindows {
    /// Large windows lent out now.
    pub(super) fn lent(&self) -> usize {
        let lent = self.state.lock().expect("large windows lock");
        lent.limit - lent.free
    }
}

impl Drop for LargeWindow {
    fn drop(&mut self) {
        // A window taken for a newcomer was given back then.
        let mut lent = self.windows.state.lock().expect("large windows lock");
        lent.give_back(self.loan);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use babble_net_core::places::Places;

    fn windows(count: usize) -> Arc<LargeWindows> {
        let limits = QuicLimits {
            large_windows: count,
            ..crate::limits::quic(&crate::Config::default())
        };
        LargeWindows::new(&limits)
    }

    /// A connection from `source` that completed its last RPC at `at`.
    fn holder(source: &str, at: Instant) -> Holder {
        let mut places = Places::new(16, 16);
        let (_, kick, activity) = places
            .admit(source, at, CancellationToken::new())
            .slot
            .expect("a place");
        Holder { kick, activity }
    }

    #[test]
    fn two_per_source_as_many_as_the_limit_and_given_back_on_drop() {
        let windows = windows(3);
        let now = Instant::now();
        let lend = |source| windows.lend(source, holder(source, now), now);
        let a = lend("10.0.0.1").expect("free");
        let a2 = lend("10.0.0.1").expect("a second for one source");
        assert!(lend("10.0.0.1").is_none(), "a third for one source");
        let b = lend("10.0.0.2").expect("free");
        assert!(lend("10.0.0.3").is_none(), "beyond the limit");
        drop(a);
        let c = lend("10.0.0.3").expect("given back");
        assert!(lend("10.0.0.1").is_none(), "beyond the limit again");
        drop((a2, b));
        assert_eq!(windows.lent(), 1);
        drop(c);
        assert_eq!(windows.lent(), 0);
    }

    #[test]
    fn none_when_the_limit_is_zero() {
        let now = Instant::now();
        assert!(windows(0)
            .lend("10.0.0.1", holder("10.0.0.1", now), now)
            .is_none());
    }

    #[test]
    fn a_newcomer_takes_the_window_of_the_connection_idle_longest() {
        let windows = windows(2);
        let start = Instant::now();
        let idle = holder("10.0.0.1", start);
        let idle_kick = idle.kick.clone();
        let idle_loan = windows.lend("10.0.0.1", idle, start).expect("free");
        let busy = holder("10.0.0.2", start);
        let (busy_kick, busy_activity) = (busy.kick.clone(), busy.activity.clone());
        let _busy_loan = windows.lend("10.0.0.2", busy, start).expect("free");

        // Both have completed an RPC lately: nothing to take.
        let soon = start + IDLE / 2;
        let newcomer = || holder("10.0.0.3", soon);
        assert!(windows.lend("10.0.0.3", newcomer(), soon).is_none());

        // Later, one kept working and the other did not: the idle one is
        // closed and its window is the newcomer's at once.
        let later = start + IDLE + Duration::from_secs(1);
        busy_activity.completed(later);
        let taken = windows.lend("10.0.0.3", holder("10.0.0.3", later), later);
        assert!(taken.is_some(), "the idle window is taken");
        assert!(idle_kick.is_cancelled(), "the idle holder is closed");
        assert!(
            !busy_kick.is_cancelled(),
            "the busy holder keeps its window"
        );
        assert_eq!(windows.lent(), 2);

        // The closed holder's loan, dropped as its connection ends, gives
        // nothing back twice.
        drop(idle_loan);
        assert_eq!(windows.lent(), 2);
    }
}
