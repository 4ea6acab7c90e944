//! What is kept: the resolved `[history]` section and each field's history options.

use std::path::PathBuf;
use std::time::Duration;

/// The gateway's `[history]`: where the store is and how it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryConfig {
    /// The database file (`history.db` in the state directory unless `file` says).
    pub file: PathBuf,
    /// The most bytes the store takes on disk, its journal included.
    pub max_size: u64,
    /// Samples are committed together once per this interval.
    pub commit_interval: Duration,
    /// How often a device that reports only when asked (a `sim` device) is read for the
    /// fields kept with `sample = "change"` or `"every"`.
    pub read_interval: Duration,
}

/// When a field's values are stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// When the value changed by more than the deadband (any change of a non-numeric
    /// value), and the first value after a start.
    Change {
        /// The smallest change of a numeric value that is stored.
        deadband: f64,
    },
    /// Every value received (each poll, each pushed message).
    Every,
    /// The latest value once per interval, changed or not.
    Interval(Duration),
}

/// One field's history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FieldHistory {
    /// How long samples are kept.
    pub keep: Duration,
    /// When values are stored.
    pub sample: Sampling,
}
