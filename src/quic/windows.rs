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
//! connection and the budgets count them as spent until it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::QuicLimits;

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
}

/// One large window lent to `source`, given back when dropped.
#[derive(Debug)]
pub(super) struct LargeWindow {
    windows: Arc<LargeWindows>,
    source: String,
}

impl LargeWindows {
    /// As many as `limits` allow at once.
    pub(super) fn new(limits: &QuicLimits) -> Arc<LargeWindows> {
        Arc::new(LargeWindows {
            state: Mutex::new(Lent {
                limit: limits.large_windows,
                free: limits.large_windows,
                holders: HashMap::new(),
            }),
        })
    }

    /// A large window for a connection from `source`, unless the source
    /// holds [`PER_SOURCE`] already or none is free.
    pub(super) fn lend(self: &Arc<Self>, source: &str) -> Option<LargeWindow> {
        let mut lent = self.state.lock().expect("large windows lock");
        let held = lent.holders.get(source).copied().unwrap_or(0);
        if lent.free == 0 || held >= PER_SOURCE {
            return None;
        }
        lent.free -= 1;
        lent.holders.insert(source.to_owned(), held + 1);
        Some(LargeWindow {
            windows: self.clone(),
            source: source.to_owned(),
        })
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
        let mut lent = self.windows.state.lock().expect("large windows lock");
        if let Some(held) = lent.holders.get_mut(&self.source) {
            *held -= 1;
            if *held == 0 {
                lent.holders.remove(&self.source);
            }
        }
        lent.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(count: usize) -> Arc<LargeWindows> {
        let limits = QuicLimits {
            large_windows: count,
            ..crate::limits::quic(&crate::Config::default())
        };
        LargeWindows::new(&limits)
    }

    #[test]
    fn two_per_source_as_many_as_the_limit_and_given_back_on_drop() {
        let windows = windows(3);
        let a = windows.lend("10.0.0.1").expect("free");
        let a2 = windows.lend("10.0.0.1").expect("a second for one source");
        assert!(windows.lend("10.0.0.1").is_none(), "a third for one source");
        let b = windows.lend("10.0.0.2").expect("free");
        assert!(windows.lend("10.0.0.3").is_none(), "beyond the limit");
        drop(a);
        let c = windows.lend("10.0.0.3").expect("given back");
        assert!(windows.lend("10.0.0.1").is_none(), "beyond the limit again");
        drop((a2, b));
        assert_eq!(windows.lent(), 1);
        drop(c);
        assert_eq!(windows.lent(), 0);
    }

    #[test]
    fn none_when_the_limit_is_zero() {
        assert!(windows(0).lend("10.0.0.1").is_none());
    }
}
