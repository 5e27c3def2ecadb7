//! Progress of writing a slot image and reading it back.

use std::time::Duration;

/// Which pass over the partition a [`Progress`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Hashing the payload in the bundle before anything is written.
    Verify,
    /// Streaming the payload into the partition.
    Write,
    /// Reading it back to compare its sha256 with the manifest's.
    ReadBack,
}

/// One progress report: reported after each chunk (1 MiB) of a pass, the
/// first with `done == 0`, the last with `done == total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    /// Bytes done in this pass, and the pass's total.
    pub done: u64,
    pub total: u64,
    /// Time since the pass started.
    pub elapsed: Duration,
    /// Average rate of this pass so far (0 before anything is done).
    pub bytes_per_sec: f64,
    /// Time left at that rate; None until there is a rate.
    pub eta: Option<Duration>,
}

impl Progress {
    pub fn new(phase: Phase, done: u64, total: u64, elapsed: Duration) -> Progress {
        let (bytes_per_sec, eta) =
            maculaos_progress::rate(done, total.saturating_sub(done), elapsed);
        Progress {
            phase,
            done,
            total,
            elapsed,
            bytes_per_sec,
            eta,
        }
    }

    /// 0..=100 (100 for an empty pass).
    pub fn percent(&self) -> f64 {
        maculaos_progress::percent(self.done, self.total)
    }
}
