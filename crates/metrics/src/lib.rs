//! MaculaOS's own metrics (issue 20, "Metrics"): what node-exporter cannot
//! know about a node — its version and slot, whether this boot is a new
//! slot's trial, how often it booted, its last update, the health agent's
//! checks, the mesh's connections. The health agent writes them every
//! [`EVERY`] to `maculaos.prom` in node-exporter's textfile directory
//! while `maculaos.monitoring.prometheus` is enabled; node-exporter serves
//! them with its own at every scrape.
//!
//! The format is Prometheus's text exposition format (version 0.0.4):
//! `# HELP` and `# TYPE` before each family, label values escaped.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// How often the agent writes the file.
pub const EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// The file, in [`maculaos_embedded::TEXTFILE_DIR`].
pub const FILE: &str = "maculaos.prom";
/// The node's boots, counted by the agent (`COUNT BOOT_ID`).
pub const BOOTS_FILE: &str = "/var/lib/maculaos/boots";
const UPDATES_DIR: &str = "/var/lib/maculaos/updates";

/// One family: a name, its help, its type and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn one(mut self, value: f64) -> Family {
        self.samples.push(Sample {
            labels: Vec::new(),
            value,
        });
        self
    }

    fn with(mut self, labels: Vec<(&'static str, String)>, value: f64) -> Family {
        self.samples.push(Sample { labels, value });
        self
    }
}

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// The families in the text format; a family without samples is left out.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let kind = match f.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help.replace('\n', " "));
        let _ = writeln!(out, "# TYPE {} {kind}", f.name);
        for s in &f.samples {
            out.push_str(f.name);
            if !s.labels.is_empty() {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", labels.join(","));
            }
            let _ = writeln!(out, " {}", number(s.value));
        }
    }
    out
}

/// What the node says about itself, gathered by [`gather`] (or made up by
/// a test).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub version: String,
    pub slot: Option<String>,
    pub mode: Option<String>,
    pub firmware: String,
    pub kernel: String,
    /// This boot tries a slot that is not yet known good.
    pub trial: bool,
    pub boots: Option<u64>,
    /// The last update applied: version, slot, when (unix seconds).
    pub last_update: Option<(String, String, u64)>,
    /// Versions refused because they failed to boot or their checks, and why.
    pub bad_versions: Vec<maculaos_upgrade::BadVersion>,
    /// The health agent's checks: name, passing (skipped ones are left out).
    pub checks: Vec<(String, bool)>,
    /// NATS, when the mesh plane is enabled: answered, then connections,
    /// leaf nodes and routes.
    pub mesh: Option<Mesh>,
    /// When these were gathered (unix seconds).
    pub at: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mesh {
    pub up: bool,
    pub connections: u64,
    pub leafnodes: u64,
    pub routes: u64,
}

/// The families for `facts`.
pub fn families(facts: &Facts) -> Vec<Family> {
    use Kind::{Counter, Gauge};
    let opt = |o: &Option<String>| o.clone().unwrap_or_default();
    let mut out = vec![
        Family::new(
            "maculaos_info",
            Gauge,
            "The running MaculaOS: version, slot, boot mode, firmware, kernel (always 1).",
        )
        .with(
            vec![
                ("version", facts.version.clone()),
                ("slot", opt(&facts.slot)),
                ("mode", opt(&facts.mode)),
                ("firmware", facts.firmware.clone()),
                ("kernel", facts.kernel.clone()),
            ],
            1.0,
        ),
        Family::new(
            "maculaos_boot_trial",
            Gauge,
            "1 when this boot is the trial of a newly updated slot (GRUB falls back after 3 failed tries).",
        )
        .one(if facts.trial { 1.0 } else { 0.0 }),
    ];
    if let Some(n) = facts.boots {
        out.push(
            Family::new(
                "maculaos_boots_total",
                Counter,
                "Boots of this node since its data partition was made or last reset (factory reset).",
            )
            .one(n as f64),
        );
    }
    if let Some((version, slot, at)) = &facts.last_update {
        out.push(
            Family::new(
                "maculaos_update_last_applied_timestamp_seconds",
                Gauge,
                "When the last update was written to the standby slot, with its version and slot.",
            )
            .with(
                vec![("version", version.clone()), ("slot", slot.clone())],
                *at as f64,
            ),
        );
    }
    out.push(
        Family::new(
            "maculaos_update_bad_versions",
            Gauge,
            "Versions refused from now on because they failed to boot or failed their checks.",
        )
        .one(facts.bad_versions.len() as f64),
    );
    let mut checks = Family::new(
        "maculaos_health_check_passing",
        Gauge,
        "The health agent's latest result of each check: 1 passing, 0 failing.",
    );
    for (name, pass) in &facts.checks {
        checks = checks.with(vec![("check", name.clone())], if *pass { 1.0 } else { 0.0 });
    }
    out.push(checks);
    out.push(
        Family::new(
            "maculaos_health_checks_failing",
            Gauge,
            "How many of the health agent's checks fail.",
        )
        .one(facts.checks.iter().filter(|(_, p)| !p).count() as f64),
    );
    if let Some(m) = &facts.mesh {
        out.push(
            Family::new(
                "maculaos_mesh_up",
                Gauge,
                "1 when the node's NATS server (the mesh plane) answers.",
            )
            .one(if m.up { 1.0 } else { 0.0 }),
        );
        if m.up {
            for (name, help, v) in [
                (
                    "maculaos_mesh_connections",
                    "Clients connected to the node's NATS server.",
                    m.connections,
                ),
                (
                    "maculaos_mesh_leafnodes",
                    "Leaf-node connections of the node's NATS server (peers to bootstrap nodes).",
                    m.leafnodes,
                ),
                (
                    "maculaos_mesh_routes",
                    "Cluster routes of the node's NATS server (between bootstrap nodes).",
                    m.routes,
                ),
            ] {
                out.push(Family::new(name, Gauge, help).one(v as f64));
            }
        }
    }
    out.push(
        Family::new(
            "maculaos_metrics_timestamp_seconds",
            Gauge,
            "When the health agent gathered these metrics (a stale value means it stopped).",
        )
        .one(facts.at as f64),
    );
    out
}

/// Count this boot in [`BOOTS_FILE`] (once per kernel boot id) and return
/// the count; `None` when the file cannot be read or written.
pub fn count_boot(root: &Path) -> Option<u64> {
    let boot_id = std::fs::read_to_string(root.join("proc/sys/kernel/random/boot_id")).ok()?;
    let boot_id = boot_id.trim();
    let path = under(root, BOOTS_FILE);
    let (count, last) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| {
            let (n, id) = t.trim().split_once(' ')?;
            Some((n.parse::<u64>().ok()?, id.to_string()))
        })
        .unwrap_or((0, String::new()));
    if last == boot_id {
        return Some(count);
    }
    let count = count + 1;
    write_atomic(&path, format!("{count} {boot_id}\n").as_bytes()).ok()?;
    Some(count)
}

fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// What the node's files, its NATS server and `checks` say, now.
pub fn gather(
    root: &Path,
    config: &maculaos_config::Config,
    checks: Vec<(String, bool)>,
    boots: Option<u64>,
) -> Facts {
    let info = maculaos_info::Collector::new(root).collect();
    let cmdline = maculaos_boot::Cmdline::parse(
        &std::fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default(),
    );
    // Booted on trial, and not marked good since.
    let trial = info.slot.is_some()
        && cmdline.get("maculaos.trial") == info.slot.as_deref()
        && !under(root, maculaos_boot::MARKED_GOOD_PATH).exists();
    let updates = under(root, UPDATES_DIR);
    let mesh = config.maculaos.nats.enabled.then(|| {
        match maculaos_mesh::status::varz(maculaos_mesh::conf::MONITOR) {
            Ok(v) => Mesh {
                up: true,
                connections: v.connections,
                leafnodes: v.leafnodes,
                routes: v.routes,
            },
            Err(_) => Mesh::default(),
        }
    });
    Facts {
        version: info.version,
        slot: info.slot,
        mode: info.mode,
        firmware: info.firmware,
        kernel: info.kernel,
        trial,
        boots,
        last_update: maculaos_upgrade::last_applied(&updates)
            .map(|r| (r.version, r.slot.to_string(), r.at)),
        bad_versions: maculaos_upgrade::bad_versions(&updates),
        checks,
        mesh,
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

/// The textfile under `root`.
pub fn file(root: &Path) -> PathBuf {
    under(root, maculaos_embedded::TEXTFILE_DIR).join(FILE)
}

/// Write `text` as the textfile: whole, renamed into place (node-exporter
/// reads only `*.prom`, never the temporary file), readable by its user.
pub fn write(root: &Path, text: &str) -> std::io::Result<()> {
    write_atomic(&file(root), text.as_bytes())
}

/// Remove the textfile (metrics switched off); a missing one is fine.
pub fn remove(root: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(file(root)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            version: "0.2.0".into(),
            slot: Some("b".into()),
            mode: Some("disk".into()),
            firmware: "uefi".into(),
            kernel: "6.1.0-28-amd64".into(),
            trial: true,
            boots: Some(7),
            last_update: Some(("0.2.0".into(), "b".into(), 1_700_000_000)),
            bad_versions: vec![maculaos_upgrade::BadVersion {
                version: "0.3.0".into(),
                reason: "slot b was not marked good after 3 boots".into(),
                at: 1_700_000_100,
            }],
            checks: vec![("config".into(), true), ("say \"hi\"\\now".into(), false)],
            mesh: Some(Mesh {
                up: true,
                connections: 3,
                leafnodes: 1,
                routes: 0,
            }),
            at: 1_700_000_100,
        }
    }

    #[test]
    fn the_text_format() {
        let text = render(&families(&facts()));
        for line in [
            "# HELP maculaos_info The running MaculaOS: version, slot, boot mode, firmware, kernel (always 1).",
            "# TYPE maculaos_info gauge",
            "maculaos_info{version=\"0.2.0\",slot=\"b\",mode=\"disk\",firmware=\"uefi\",kernel=\"6.1.0-28-amd64\"} 1",
            "maculaos_boot_trial 1",
            "# TYPE maculaos_boots_total counter",
            "maculaos_boots_total 7",
            "maculaos_update_last_applied_timestamp_seconds{version=\"0.2.0\",slot=\"b\"} 1700000000",
            "maculaos_update_bad_versions 1",
            "maculaos_health_check_passing{check=\"config\"} 1",
            // Quotes and backslashes in a label value are escaped.
            "maculaos_health_check_passing{check=\"say \\\"hi\\\"\\\\now\"} 0",
            "maculaos_health_checks_failing 1",
            "maculaos_mesh_up 1",
            "maculaos_mesh_leafnodes 1",
            "maculaos_metrics_timestamp_seconds 1700000100",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        // Every sample line follows its family's HELP and TYPE.
        let mut declared = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert_eq!(declared.last().map(String::as_str), Some(name), "{l}");
            }
        }
    }

    #[test]
    fn empty_families_and_missing_facts_are_left_out() {
        let f = Facts {
            checks: Vec::new(),
            boots: None,
            last_update: None,
            mesh: Some(Mesh::default()),
            ..facts()
        };
        let text = render(&families(&f));
        assert!(!text.contains("maculaos_health_check_passing"), "{text}");
        assert!(!text.contains("maculaos_boots_total"), "{text}");
        assert!(!text.contains("last_applied"), "{text}");
        assert!(text.contains("maculaos_mesh_up 0\n"), "{text}");
        assert!(!text.contains("maculaos_mesh_connections"), "{text}");
        let text = render(&families(&Facts {
            mesh: None,
            ..facts()
        }));
        assert!(!text.contains("maculaos_mesh"), "{text}");
    }

    #[test]
    fn boots_are_counted_once_per_boot_id() {
        let d = tempfile::tempdir().unwrap();
        let id = d.path().join("proc/sys/kernel/random/boot_id");
        std::fs::create_dir_all(id.parent().unwrap()).unwrap();
        std::fs::write(&id, "aaaa\n").unwrap();
        assert_eq!(count_boot(d.path()), Some(1));
        assert_eq!(count_boot(d.path()), Some(1));
        std::fs::write(&id, "bbbb\n").unwrap();
        assert_eq!(count_boot(d.path()), Some(2));
        assert_eq!(
            std::fs::read_to_string(under(d.path(), BOOTS_FILE)).unwrap(),
            "2 bbbb\n"
        );
    }

    #[test]
    fn the_file_is_written_whole_and_removed() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(file(d.path())).unwrap(), "a 1\n");
        let dir = file(d.path()).parent().unwrap().to_path_buf();
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        remove(d.path()).unwrap();
        remove(d.path()).unwrap();
        assert!(!file(d.path()).exists());
    }
}
