//! Progress of writing a slot image and reading it back.

use std::time::Duration;

/// Which pass over the partition a [`Progress`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
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
        let secs = elapsed.as_secs_f64();
        let bytes_per_sec = if secs > 0.0 && done > 0 {
            done as f64 / secs
        } else {
            0.0
        };
        let eta = (bytes_per_sec > 0.0)
            .then(|| Duration::from_secs_f64(total.saturating_sub(done) as f64 / bytes_per_sec));
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
        if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        }
    }
}
