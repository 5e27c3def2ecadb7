//! Progress of long transfers — a download, writing a slot image, reading
//! it back: the average rate, the time left at that rate, and the line the
//! CLI prints. One line per 5 % rather than a redrawn bar: the same output
//! reads well on a terminal, over SSH and in the journal.

use std::time::Duration;

/// Average rate of `new_bytes` moved in `elapsed` (0 before anything
/// moved), and the time `remaining` bytes take at that rate (None until
/// there is a rate).
pub fn rate(new_bytes: u64, remaining: u64, elapsed: Duration) -> (f64, Option<Duration>) {
    let secs = elapsed.as_secs_f64();
    let bytes_per_sec = if secs > 0.0 && new_bytes > 0 {
        new_bytes as f64 / secs
    } else {
        0.0
    };
    let eta =
        (bytes_per_sec > 0.0).then(|| Duration::from_secs_f64(remaining as f64 / bytes_per_sec));
    (bytes_per_sec, eta)
}

/// 0..=100 (100 for an empty transfer).
pub fn percent(done: u64, total: u64) -> f64 {
    if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    }
}

/// Decides when a new line is due: at each 5 % step of each pass.
#[derive(Debug, Default)]
pub struct Steps {
    last: Option<(u32, u64)>,
}

impl Steps {
    /// Whether `percent` of pass number `pass` starts a new 5 % step.
    pub fn due(&mut self, pass: u32, percent: f64) -> bool {
        let key = (pass, (percent.clamp(0.0, 100.0) / 5.0) as u64);
        if self.last == Some(key) {
            return false;
        }
        self.last = Some(key);
        true
    }
}

/// `  writing  45%  78 / 174 MiB  12.3 MiB/s, 8s left`
pub fn line(
    what: &str,
    done: u64,
    total: u64,
    bytes_per_sec: f64,
    eta: Option<Duration>,
) -> String {
    let eta = eta
        .map(|e| format!(", {}s left", e.as_secs()))
        .unwrap_or_default();
    format!(
        "  {what} {:>3.0}%  {} / {} MiB  {:.1} MiB/s{eta}",
        percent(done, total),
        done >> 20,
        total >> 20,
        bytes_per_sec / 1048576.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_time_left() {
        let (r, eta) = rate(100, 300, Duration::from_secs(2));
        assert_eq!((r, eta), (50.0, Some(Duration::from_secs(6))));
        assert_eq!(rate(0, 300, Duration::from_secs(2)), (0.0, None));
        assert_eq!(rate(10, 300, Duration::ZERO), (0.0, None));
        assert_eq!(percent(0, 0), 100.0);
        assert_eq!(percent(50, 200), 25.0);
    }

    #[test]
    fn one_line_per_step_and_pass() {
        let mut s = Steps::default();
        let shown: Vec<bool> = [0.0, 1.0, 4.9, 5.0, 9.0, 100.0]
            .iter()
            .map(|p| s.due(0, *p))
            .collect();
        assert_eq!(shown, [true, false, false, true, false, true]);
        assert!(s.due(1, 0.0), "a new pass starts at 0 %");
        assert!(!s.due(1, 3.0));
    }

    #[test]
    fn the_line() {
        assert_eq!(
            line(
                "writing",
                45 << 20,
                100 << 20,
                2.0 * 1048576.0,
                Some(Duration::from_secs(27))
            ),
            "  writing  45%  45 / 100 MiB  2.0 MiB/s, 27s left"
        );
        assert_eq!(line("x", 0, 0, 0.0, None), "  x 100%  0 / 0 MiB  0.0 MiB/s");
    }
}
