//! Counts a transport keeps, for tests and operators.

/// Counts of the connections to one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Idle connections now.
    pub idle: usize,
    /// Connections dialled so far.
    pub dials: u64,
    /// Times the pool was emptied because its peer seemed gone.
    pub restarts: u64,
}

/// Counts of RPCs seen by a transport's queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchStats {
    /// Sync requests received.
    pub sync: u64,
    /// EagerSync requests received.
    pub eager_sync: u64,
    /// FastForward requests received.
    pub fast_forward: u64,
    /// Join requests received.
    pub join: u64,
    /// RPCs answered with an error because nobody could take them.
    pub refused: u64,
}

impl DispatchStats {
    /// All RPCs received.
    pub fn total(&self) -> u64 {
        self.sync + self.eager_sync + self.fast_forward + self.join
    }
}
