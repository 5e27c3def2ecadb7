//! Parsers for the /proc files the dashboard reads (proc(5)): CPU times,
//! load averages and memory. Pure functions on the files' text, so they are
//! tested on samples; [`CpuSampler`] keeps the previous CPU sample so a
//! request never has to sleep between two readings.

use std::time::{Duration, Instant};

/// Cumulative CPU time of all CPUs (the `cpu` line of /proc/stat), in clock
/// ticks since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Time spent doing anything but idling or waiting for I/O.
    pub busy: u64,
    /// All the time counted.
    pub total: u64,
}

/// The aggregate `cpu` line of /proc/stat.
///
/// Of its fields (user nice system idle iowait irq softirq steal guest
/// guest_nice), the first eight make up the total: guest and guest_nice
/// are already counted in user and nice. Idle is idle + iowait: a CPU
/// waiting for the disk could run something else.
pub fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // Kernels since 2.6 give at least user, nice, system, idle.
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// How many CPUs /proc/stat lists (`cpu0`, `cpu1`, …): the online ones.
pub fn count_cores(stat: &str) -> u32 {
    let n = stat
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| {
            w.strip_prefix("cpu")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The share of `now - before` the CPUs were busy, in percent (one
/// decimal); `None` when no time passed between the samples or the
/// counters went backwards (they do not, short of a bug; no answer is
/// better than a wrong one).
pub fn busy_percent(before: CpuTimes, now: CpuTimes) -> Option<f64> {
    let total = now.total.checked_sub(before.total)?;
    if total == 0 {
        return None;
    }
    let busy = now.busy.saturating_sub(before.busy).min(total);
    Some(round1(busy as f64 * 100.0 / total as f64))
}

/// Keeps the previous CPU sample: the busy share is measured between two
/// requests (every 5 s while the page is open) instead of sleeping inside
/// one. The first sample has nothing to compare with.
#[derive(Debug, Default, Clone)]
pub struct CpuSampler {
    last: Option<(CpuTimes, Instant)>,
}

impl CpuSampler {
    pub fn new() -> CpuSampler {
        CpuSampler::default()
    }

    /// Take a sample taken at `at`: the busy share since the previous one
    /// and the time between them (the window the share is an average of),
    /// or `None` for the first sample.
    pub fn sample(&mut self, times: CpuTimes, at: Instant) -> Option<(f64, Duration)> {
        let previous = self.last.replace((times, at));
        let (before, then) = previous?;
        let pct = busy_percent(before, times)?;
        Some((pct, at.saturating_duration_since(then)))
    }
}

/// The 1, 5 and 15 minute load averages of /proc/loadavg.
pub fn parse_loadavg(text: &str) -> Option<(f64, f64, f64)> {
    let mut w = text.split_whitespace().map(str::parse::<f64>);
    Some((w.next()?.ok()?, w.next()?.ok()?, w.next()?.ok()?))
}

/// MemTotal and MemAvailable of /proc/meminfo, in bytes. MemAvailable (the
/// kernel's estimate of what can be had without swapping, page cache
/// included) is what "free" means to a user; MemFree is not.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            let (k, rest) = l.split_once(':')?;
            if k.trim() != key {
                return None;
            }
            let mut w = rest.split_whitespace();
            let n: u64 = w.next()?.parse().ok()?;
            // Every size in meminfo is in kB (KiB); the unit is there
            // anyway, and a line without one is a count.
            Some(match w.next() {
                Some("kB") => n.saturating_mul(1024),
                _ => n,
            })
        })
    };
    Some((value("MemTotal")?, value("MemAvailable")?))
}

/// `part` of `whole` in percent, with one decimal (0 for an empty whole).
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    round1((part as f64 * 100.0 / whole as f64).min(100.0))
}

/// One decimal: enough for a bar, and stable to read in JSON.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT1: &str = "\
cpu  100 0 50 800 50 0 0 0 10 0
cpu0 50 0 25 400 25 0 0 0 5 0
cpu1 50 0 25 400 25 0 0 0 5 0
intr 12345 0 0
ctxt 999
cpu_freq 3
";
    // 100 more ticks: 30 busy (20 user + 10 system), 70 idle (60 + 10 iowait).
    const STAT2: &str = "\
cpu  120 0 60 860 60 0 0 0 10 0
cpu0 60 0 30 430 30 0 0 0 5 0
cpu1 60 0 30 430 30 0 0 0 5 0
";

    #[test]
    fn cpu_times_and_busy_share_between_two_samples() {
        let a = parse_cpu_times(STAT1).unwrap();
        assert_eq!(
            a,
            CpuTimes {
                busy: 150,
                total: 1000
            }
        );
        let b = parse_cpu_times(STAT2).unwrap();
        assert_eq!(busy_percent(a, b), Some(30.0));
        assert_eq!(busy_percent(a, a), None, "no time passed");
        assert_eq!(busy_percent(b, a), None, "counters went backwards");
        assert_eq!(count_cores(STAT1), 2);
        assert_eq!(count_cores("cpu 1 2 3 4\n"), 0);
        // Old kernels with four fields; garbage.
        assert_eq!(
            parse_cpu_times("cpu 1 2 3 4\n"),
            Some(CpuTimes { busy: 6, total: 10 })
        );
        assert_eq!(parse_cpu_times("cpu 1 2 x 4\n"), None);
        assert_eq!(parse_cpu_times("cpu 1 2\n"), None);
        assert_eq!(parse_cpu_times(""), None);
    }

    #[test]
    fn the_sampler_compares_with_the_previous_request() {
        let t0 = Instant::now();
        let mut s = CpuSampler::new();
        let a = parse_cpu_times(STAT1).unwrap();
        let b = parse_cpu_times(STAT2).unwrap();
        assert_eq!(s.sample(a, t0), None, "the first sample has no window");
        assert_eq!(
            s.sample(b, t0 + Duration::from_secs(5)),
            Some((30.0, Duration::from_secs(5)))
        );
        // The same counters again (two requests within one tick).
        assert_eq!(s.sample(b, t0 + Duration::from_secs(6)), None);
    }

    #[test]
    fn loadavg() {
        assert_eq!(
            parse_loadavg("0.52 1.00 12.25 2/345 12345\n"),
            Some((0.52, 1.0, 12.25))
        );
        assert_eq!(parse_loadavg("0.52 1.00\n"), None);
        assert_eq!(parse_loadavg("a b c"), None);
    }

    #[test]
    fn meminfo() {
        let text = "\
MemTotal:        2000000 kB
MemFree:          100000 kB
MemAvailable:     500000 kB
HugePages_Total:       0
";
        assert_eq!(
            parse_meminfo(text),
            Some((2_000_000 * 1024, 500_000 * 1024))
        );
        assert_eq!(parse_meminfo("MemTotal: 10 kB\nMemFree: 5 kB\n"), None);
        assert_eq!(percent(1500, 2000), 75.0);
        assert_eq!(percent(1, 3), 33.3);
        assert_eq!(percent(5, 0), 0.0);
    }
}
