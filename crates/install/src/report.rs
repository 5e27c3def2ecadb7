//! What [`crate::write()`] tells its caller while it works, and the lines
//! the CLI prints for it (one per step, one per 5 % of the long writes).

use std::time::Duration;

/// Which pass over the slot partition a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Copying the slot image from the medium into the partition.
    Write,
    /// Reading it back to compare its sha256 with the manifest's.
    ReadBack,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// A step starts.
    Step {
        number: usize,
        of: usize,
        text: String,
    },
    /// Progress of a pass: after each chunk, the first with `done == 0`.
    Progress {
        pass: Pass,
        done: u64,
        total: u64,
        elapsed: Duration,
    },
}

/// Turns reports into printable lines.
#[derive(Debug, Default)]
pub struct Printer {
    steps: maculaos_progress::Steps,
}

impl Printer {
    /// The line to print for `r`, if one is due.
    pub fn line(&mut self, r: &Report) -> Option<String> {
        match r {
            Report::Step { number, of, text } => Some(format!("[{number}/{of}] {text}")),
            Report::Progress {
                pass,
                done,
                total,
                elapsed,
            } => {
                let (what, n) = match pass {
                    Pass::Write => ("writing ", 0),
                    Pass::ReadBack => ("checking", 1),
                };
                let percent = maculaos_progress::percent(*done, *total);
                if !self.steps.due(n, percent) {
                    return None;
                }
                let (rate, eta) =
                    maculaos_progress::rate(*done, total.saturating_sub(*done), *elapsed);
                Some(maculaos_progress::line(what, *done, *total, rate, eta))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn step_and_progress_lines() {
        let mut p = Printer::default();
        assert_eq!(
            p.line(&Report::Step {
                number: 1,
                of: 7,
                text: "partitioning /dev/vda".into()
            })
            .unwrap(),
            "[1/7] partitioning /dev/vda"
        );
        let prog = |pass, done| Report::Progress {
            pass,
            done,
            total: 100 << 20,
            elapsed: Duration::from_secs(2),
        };
        assert!(p.line(&prog(Pass::Write, 0)).is_some());
        assert!(p.line(&prog(Pass::Write, 1 << 20)).is_none());
        let l = p.line(&prog(Pass::Write, 50 << 20)).unwrap();
        assert_eq!(l, "  writing   50%  50 / 100 MiB  25.0 MiB/s, 2s left");
        assert!(p
            .line(&prog(Pass::ReadBack, 0))
            .unwrap()
            .contains("checking"));
    }
}
