//! The guide's alerts ("Alerting"): conditions over the node's metrics
//! (`disk_usage > 90%`) that the health agent evaluates every [`EVERY`].
//! An alert fires once its condition has held for its hold time (`for`,
//! default 1 min) and is resolved once it has not held for as long, so a
//! value that hovers around the threshold does not flap. Each event goes
//! to the journal (the agent's `event: alert: …` lines) and, when the
//! alert names a topic and the node has a realm, to the mesh as JSON on
//! `macula.pub.<realm>.<topic>`.

use maculaos_config::schema::{Alert, AlertMetric};
use maculaos_config::Paths;
use maculaos_dashboard::proc;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

/// How often the conditions are evaluated.
pub const EVERY: Duration = Duration::from_secs(10);
/// How long publishing an event may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The metrics' current values; `None`: could not be read (or, for
/// `cpu_usage`, not yet: it needs two samples).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Readings {
    pub disk_usage: Option<f64>,
    pub memory_usage: Option<f64>,
    pub cpu_usage: Option<f64>,
    pub load: Option<f64>,
    pub failing_checks: Option<f64>,
}

impl Readings {
    pub fn get(&self, m: AlertMetric) -> Option<f64> {
        match m {
            AlertMetric::DiskUsage => self.disk_usage,
            AlertMetric::MemoryUsage => self.memory_usage,
            AlertMetric::CpuUsage => self.cpu_usage,
            AlertMetric::Load => self.load,
            AlertMetric::FailingChecks => self.failing_checks,
        }
    }
}

/// Reads the metrics from the files under a root (`/` on a node).
#[derive(Debug, Default)]
pub struct Sampler {
    cpu: proc::CpuSampler,
}

impl Sampler {
    pub fn read(&mut self, root: &Path, failing_checks: usize) -> Readings {
        let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
        let cpu = read("proc/stat")
            .and_then(|t| proc::parse_cpu_times(&t))
            .and_then(|t| self.cpu.sample(t, Instant::now()))
            .map(|(pct, _)| pct);
        let memory = read("proc/meminfo")
            .and_then(|t| proc::parse_meminfo(&t))
            .map(|(total, available)| proc::percent(total.saturating_sub(available), total));
        let load = read("proc/loadavg")
            .and_then(|t| proc::parse_loadavg(&t))
            .map(|(one, _, _)| one);
        let disk = maculaos_dashboard::disk(&root.join("var"), "/var")
            .ok()
            .map(|d| d.used_percent);
        Readings {
            disk_usage: disk,
            memory_usage: memory,
            cpu_usage: cpu,
            load,
            failing_checks: Some(failing_checks as f64),
        }
    }
}

/// An alert fired or was resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub firing: bool,
    pub condition: String,
    /// The metric's value; `None` when the alert was taken out of the
    /// configuration while it fired.
    pub value: Option<f64>,
    pub hold: Duration,
    pub topic: Option<String>,
}

impl Event {
    /// The journal's line.
    pub fn line(&self) -> String {
        let state = if self.firing { "firing" } else { "resolved" };
        match self.value {
            Some(v) => {
                let metric = self.condition.split_whitespace().next().unwrap_or_default();
                let pct = if self.condition.ends_with('%') {
                    "%"
                } else {
                    ""
                };
                format!(
                    "alert {} {state}: {metric} is {}{pct} (`{}` {} for {})",
                    self.name,
                    round1(v),
                    self.condition,
                    if self.firing { "held" } else { "has not held" },
                    humantime::format_duration(self.hold),
                )
            }
            None => format!(
                "alert {} {state}: no longer in the configuration",
                self.name
            ),
        }
    }

    /// What is published on the mesh.
    pub fn json(&self, node: &str, at: SystemTime) -> String {
        serde_json::json!({
            "alert": self.name,
            "state": if self.firing { "firing" } else { "resolved" },
            "condition": self.condition,
            "value": self.value.map(round1),
            "node": node,
            "at": humantime::format_rfc3339_seconds(at).to_string(),
        })
        .to_string()
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Each alert's state between evaluations, by name.
#[derive(Debug, Default)]
pub struct Tracker {
    states: BTreeMap<String, State>,
}

#[derive(Debug, Default)]
struct State {
    firing: bool,
    /// Since when the condition disagrees with `firing`.
    pending_since: Option<Instant>,
    /// The alert as last configured (for its resolution when removed).
    condition: String,
    hold: Duration,
    topic: Option<String>,
}

impl Tracker {
    /// Evaluate `alerts` on `r` at `now`; the events of this step. An alert
    /// whose metric could not be read keeps its state (and its hold starts
    /// again). An alert whose condition or hold changed keeps its state too,
    /// and the new condition decides from now on, with its own hold time.
    pub fn step(&mut self, alerts: &[Alert], r: &Readings, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        for a in alerts {
            let (metric, op, threshold) = a.condition.parts();
            let st = self.states.entry(a.name.to_string()).or_default();
            // A new condition or hold waits its own hold time from now.
            if st.condition != a.condition.as_str() || st.hold != a.hold.get() {
                st.pending_since = None;
            }
            st.condition = a.condition.to_string();
            st.hold = a.hold.get();
            st.topic = a.topic.as_ref().map(ToString::to_string);
            let Some(value) = r.get(metric) else {
                // Time nobody observed does not count towards the hold.
                st.pending_since = None;
                continue;
            };
            let holds = op.holds(value, threshold);
            if holds == st.firing {
                st.pending_since = None;
                continue;
            }
            let since = *st.pending_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= st.hold {
                st.firing = holds;
                st.pending_since = None;
                events.push(Event {
                    name: a.name.to_string(),
                    firing: holds,
                    condition: st.condition.clone(),
                    value: Some(value),
                    hold: st.hold,
                    topic: st.topic.clone(),
                });
            }
        }
        // Gone from the configuration: forgotten, resolved if it fired.
        let kept: Vec<String> = alerts.iter().map(|a| a.name.to_string()).collect();
        let gone: Vec<String> = self
            .states
            .keys()
            .filter(|n| !kept.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(st) = self.states.remove(&name) {
                if st.firing {
                    events.push(Event {
                        name,
                        firing: false,
                        condition: st.condition,
                        value: None,
                        hold: st.hold,
                        topic: st.topic,
                    });
                }
            }
        }
        events
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

/// The health agent's thread: every [`EVERY`], the configuration's alerts
/// evaluated; events printed (the agent's stdout is its journal) and
/// published.
pub fn spawn(paths: Paths) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("alerts".into())
        .spawn(move || {
            let mut tracker = Tracker::default();
            let mut sampler = Sampler::default();
            loop {
                let alerts = maculaos_config::load(&paths).config.maculaos.alerts;
                if !alerts.is_empty() || !tracker.is_empty() {
                    let failing = maculaos_health::latest_results(&paths)
                        .values()
                        .filter(|(s, _)| *s == maculaos_health::State::Fail)
                        .count();
                    let r = sampler.read(&paths.root, failing);
                    for e in tracker.step(&alerts, &r, Instant::now()) {
                        println!("event: {}", e.line());
                        if let Err(why) = publish(&paths.root, &e) {
                            println!("event: alert {}: not published: {why}", e.name);
                        }
                    }
                }
                std::thread::sleep(EVERY);
            }
        })
}

/// Publishes `e` on its topic when it has one and the node has a realm.
fn publish(root: &Path, e: &Event) -> Result<(), String> {
    let Some(topic) = &e.topic else {
        return Ok(());
    };
    let env = maculaos_mesh::read_env(root);
    let Some(realm) = env.get("MACULA_REALM").filter(|r| !r.is_empty()) else {
        // No mesh: the journal has it.
        return Ok(());
    };
    let subject = maculaos_mesh::client::pub_subject(realm, topic);
    let url = env
        .get("NATS_URL")
        .filter(|u| !u.is_empty())
        .cloned()
        .unwrap_or_else(|| maculaos_mesh::client::LOCAL_URL.to_string());
    let node = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let client =
        maculaos_mesh::client::Client::connect(&url, "maculaos-agent-alerts", PUBLISH_TIMEOUT)
            .map_err(|e| e.to_string())?;
    client
        .publish(&subject, e.json(&node, SystemTime::now()).as_bytes())
        .map_err(|e| format!("{subject}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alerts(yaml: &str) -> Vec<Alert> {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn disk(v: f64) -> Readings {
        Readings {
            disk_usage: Some(v),
            ..Readings::default()
        }
    }

    #[test]
    fn fires_after_the_hold_and_resolves_after_it() {
        let a = alerts(
            "- {name: disk_full, condition: disk_usage > 90%, topic: io.x.alerts.disk, for: 30s}\n",
        );
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(t.step(&a, &disk(95.0), t0).is_empty());
        // Below again before the hold: no event, the wait starts over.
        assert!(t.step(&a, &disk(80.0), t0 + s(20)).is_empty());
        assert!(t.step(&a, &disk(95.0), t0 + s(30)).is_empty());
        assert!(t.step(&a, &disk(95.0), t0 + s(50)).is_empty());
        let e = t.step(&a, &disk(93.21), t0 + s(60));
        assert_eq!(e.len(), 1);
        assert!(e[0].firing);
        assert_eq!(
            e[0].line(),
            "alert disk_full firing: disk_usage is 93.2% (`disk_usage > 90%` held for 30s)"
        );
        assert_eq!(e[0].topic.as_deref(), Some("io.x.alerts.disk"));
        // Still above: nothing new; an unreadable value changes nothing.
        assert!(t.step(&a, &disk(99.0), t0 + s(70)).is_empty());
        assert!(t.step(&a, &Readings::default(), t0 + s(80)).is_empty());
        assert!(t.step(&a, &disk(10.0), t0 + s(90)).is_empty());
        let e = t.step(&a, &disk(10.0), t0 + s(120));
        assert_eq!(e.len(), 1);
        assert!(!e[0].firing);
        assert!(e[0]
            .line()
            .starts_with("alert disk_full resolved: disk_usage is 10%"));
        let j: serde_json::Value =
            serde_json::from_str(&e[0].json("macula-0a01", SystemTime::UNIX_EPOCH)).unwrap();
        assert_eq!(j["alert"], "disk_full");
        assert_eq!(j["state"], "resolved");
        assert_eq!(j["value"], 10.0);
        assert_eq!(j["node"], "macula-0a01");
        assert_eq!(j["at"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn short_hold_fires_at_the_next_step_and_removal_resolves() {
        let a = alerts("- {name: busy, condition: failing_checks >= 1, for: 1s}\n");
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let r = Readings {
            failing_checks: Some(2.0),
            ..Readings::default()
        };
        assert!(t.step(&a, &r, t0).is_empty());
        let now = t0 + EVERY;
        let e = t.step(&a, &r, now);
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].line(),
            "alert busy firing: failing_checks is 2 (`failing_checks >= 1` held for 1s)"
        );
        assert_eq!(e[0].topic, None);
        let e = t.step(&[], &r, now);
        assert_eq!(
            e[0].line(),
            "alert busy resolved: no longer in the configuration"
        );
        assert!(t.is_empty());
    }

    #[test]
    fn a_changed_condition_waits_its_own_hold() {
        let hot = alerts("- {name: m, condition: memory_usage > 50%, for: 30s}\n");
        let hotter = alerts("- {name: m, condition: memory_usage > 60%, for: 30s}\n");
        let r = Readings {
            memory_usage: Some(70.0),
            ..Readings::default()
        };
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(t.step(&hot, &r, t0).is_empty());
        assert!(t.step(&hotter, &r, t0 + s(20)).is_empty());
        // 30 s after the first step, but only 10 s after the change.
        assert!(t.step(&hotter, &r, t0 + s(30)).is_empty());
        assert_eq!(t.step(&hotter, &r, t0 + s(50)).len(), 1);
        // An unreadable value restarts the wait.
        let cool = Readings {
            memory_usage: Some(10.0),
            ..Readings::default()
        };
        assert!(t.step(&hotter, &cool, t0 + s(60)).is_empty());
        assert!(t.step(&hotter, &Readings::default(), t0 + s(80)).is_empty());
        assert!(t.step(&hotter, &cool, t0 + s(95)).is_empty());
        assert_eq!(t.step(&hotter, &cool, t0 + s(125)).len(), 1);
    }

    #[test]
    fn default_hold_is_a_minute() {
        let a = alerts("- {name: d, condition: disk_usage > 90%}\n");
        assert_eq!(a[0].hold.get(), Duration::from_secs(60));
    }

    #[test]
    fn reads_a_root() {
        let d = std::env::temp_dir().join(format!("maculaos-alerts-{}", std::process::id()));
        std::fs::create_dir_all(d.join("proc")).unwrap();
        std::fs::create_dir_all(d.join("var")).unwrap();
        std::fs::write(d.join("proc/loadavg"), "1.50 0.25 0.10 1/200 4242\n").unwrap();
        std::fs::write(
            d.join("proc/meminfo"),
            "MemTotal: 1000 kB\nMemAvailable: 250 kB\n",
        )
        .unwrap();
        let r = Sampler::default().read(&d, 3);
        assert_eq!(r.load, Some(1.5));
        assert_eq!(r.memory_usage, Some(75.0));
        assert_eq!(r.failing_checks, Some(3.0));
        assert_eq!(r.cpu_usage, None);
        assert!(r.disk_usage.is_some());
        let _ = std::fs::remove_dir_all(&d);
    }
}
