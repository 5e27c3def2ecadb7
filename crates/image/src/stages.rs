//! Progress per build stage and the summary table printed at the end.

use std::time::{Duration, Instant};

/// One finished stage.
#[derive(Debug, Clone)]
pub struct StageTime {
    pub name: &'static str,
    pub took: Duration,
    /// "cached" when the stage reused an earlier result.
    pub note: String,
}

/// Runs stages in order, printing `==> [i/n] name: what` as each starts.
pub struct Stages {
    total: usize,
    done: Vec<StageTime>,
}

impl Stages {
    pub fn new(total: usize) -> Self {
        Stages {
            total,
            done: Vec::new(),
        }
    }

    /// Run one stage; `f` returns a note for the summary (e.g. "cached").
    pub fn run<T>(
        &mut self,
        name: &'static str,
        what: &str,
        f: impl FnOnce() -> anyhow::Result<(T, String)>,
    ) -> anyhow::Result<T> {
        eprintln!(
            "==> [{}/{}] {name}: {what}",
            self.done.len() + 1,
            self.total
        );
        let start = Instant::now();
        let (value, note) = f().map_err(|e| e.context(format!("build stage `{name}`")))?;
        let took = start.elapsed();
        eprintln!(
            "    {name} done in {}{}",
            fmt_duration(took),
            if note.is_empty() {
                String::new()
            } else {
                format!(" ({note})")
            }
        );
        self.done.push(StageTime { name, took, note });
        Ok(value)
    }

    pub fn times(&self) -> &[StageTime] {
        &self.done
    }
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s as u64) % 60)
    }
}

pub fn fmt_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(fmt_size(512), "512 B");
        assert_eq!(fmt_size(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(fmt_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(fmt_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn failing_stage_names_itself() {
        let mut s = Stages::new(1);
        let err = s
            .run::<()>("squashfs", "x", || anyhow::bail!("disk full"))
            .unwrap_err();
        assert!(format!("{err:#}").contains("build stage `squashfs`: disk full"));
    }
}
