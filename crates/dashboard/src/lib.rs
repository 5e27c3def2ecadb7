//! The node's local health dashboard (guide "Health Dashboard"): a
//! read-only page and its JSON that `maculaos agent` serves on
//! 127.0.0.1:9090. It shows the system's resources (CPU, memory, disks),
//! the state of a few services, the agent's latest check results, the mesh
//! status and the agent's recent events.
//!
//! [`collect`] gathers a [`Status`] from a root directory (`/` on a node, a
//! fake tree in tests): the /proc files are read under that root, and the
//! questions to systemd (`systemctl`, `journalctl`) are asked only when the
//! root is `/`. [`spawn`] serves it over HTTP from a thread of its own
//! ([`server`]); the agent hands over its check results through a [`Feed`].
//!
//! Nothing here changes the node: every request only reads.

pub mod html;
pub mod proc;
pub mod server;
pub mod systemd;

pub use html::render_html;

/// The fleet as the fleet page shows it, made by the fleet's crate from
/// the realm's heartbeats (the dashboard does not read the realm itself).
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    pub realm: String,
    /// The summary line (`3 nodes │ 3 healthy │ 0 degraded │ 0 offline`).
    pub summary: String,
    pub all_healthy: bool,
    /// Why the list may be old.
    pub warning: Option<String>,
    pub rows: Vec<FleetRow>,
    /// The same as `maculaos fleet list --json`, for `/api/v1/fleet`.
    pub json: serde_json::Value,
}

/// One node of the fleet page, each value as shown.
#[derive(Debug, Clone, Default)]
pub struct FleetRow {
    pub node: String,
    /// `healthy`, `degraded` or `offline`.
    pub status: String,
    pub version: String,
    pub slot: String,
    pub cpu: String,
    pub memory: String,
    pub disk: String,
    pub last_seen: String,
    pub why: String,
}
pub use proc::CpuSampler;
pub use server::{bind, spawn, spawn_with, Feed, FleetSource, DEFAULT_LISTEN};

use maculaos_health::{Check, State};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

/// The services the dashboard shows unless told otherwise: what makes the
/// node reachable (ssh, networkd, avahi for `.local` names), keeps its
/// clock, watches it (the agent) and runs its workloads (k3s).
pub const DEFAULT_UNITS: &[&str] = &[
    "ssh.service",
    "systemd-networkd.service",
    "chrony.service",
    "avahi-daemon.service",
    "maculaos-agent.service",
    "k3s.service",
];

/// The filesystems the dashboard shows: the root, and the data partition
/// when it is a filesystem of its own (in live mode it is not).
pub const DEFAULT_MOUNTS: &[&str] = &["/", "/var"];

/// Everything the dashboard shows, as `GET /api/v1/status` returns it.
/// The field names are part of the API: add fields, do not rename them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub hostname: String,
    /// The MaculaOS version (VERSION_ID of os-release).
    pub version: String,
    /// The root slot (`A` or `B`); none in live and install mode.
    pub slot: Option<String>,
    /// disk, live, install or recovery.
    pub mode: Option<String>,
    pub uptime_seconds: u64,
    /// No check is failing (`Warn` and `Skip` do not count against).
    pub healthy: bool,
    pub cpu: Cpu,
    pub memory: Memory,
    pub disks: Vec<Disk>,
    pub services: Vec<Service>,
    /// The health agent's latest result of each check.
    pub checks: Vec<CheckResult>,
    pub mesh: Mesh,
    /// The agent's last events in this boot, oldest first.
    pub events: Vec<Event>,
    /// What could not be found out, and why (a command that failed, a
    /// file that could not be read): the rest of the status is still good.
    pub notes: Vec<String>,
    /// When this status was gathered (RFC 3339, UTC).
    pub generated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// Online CPUs.
    pub cores: u32,
    /// Load averages over 1, 5 and 15 minutes.
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    /// How busy the CPUs were since the previous request, in percent; none
    /// on the first request (there is nothing to compare with yet).
    pub busy_percent: Option<f64>,
    /// The seconds `busy_percent` is an average of.
    pub busy_window_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub total_bytes: u64,
    /// What can be had without swapping (MemAvailable).
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub used_percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    pub mountpoint: String,
    pub size_bytes: u64,
    pub used_bytes: u64,
    /// What an unprivileged program can still write.
    pub available_bytes: u64,
    /// used / (used + available), as `df` and the `data-space` check count.
    pub used_percent: f64,
    /// Mounted read-only: the root image is always full and never grows,
    /// so its bar is no warning.
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub unit: String,
    /// systemd's ActiveState (`active`, `failed`, `inactive`, …), or
    /// `not-found` for a unit this node does not have, or `unknown` when
    /// systemd could not be asked.
    pub active_state: String,
    /// systemd's SubState (`running`, `exited`, `dead`, …); empty when
    /// there is none.
    pub sub_state: String,
}

impl Service {
    pub fn new(unit: &str, active_state: &str, sub_state: &str) -> Service {
        Service {
            unit: unit.into(),
            active_state: active_state.into(),
            sub_state: sub_state.into(),
        }
    }
}

/// A check result as the agent last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    /// `pass`, `fail`, `skip` or `warn`.
    pub state: String,
    pub message: String,
}

impl From<&Check> for CheckResult {
    fn from(c: &Check) -> CheckResult {
        CheckResult {
            name: c.name.clone(),
            state: state_name(c.state).into(),
            message: c.message.clone(),
        }
    }
}

/// The names `maculaos health --json` gives the states.
fn state_name(s: State) -> &'static str {
    match s {
        State::Pass => "pass",
        State::Fail => "fail",
        State::Skip => "skip",
        State::Warn => "warn",
    }
}

/// The node's mesh, in brief (`maculaos mesh status` has the details).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mesh {
    /// `connected`, `connecting`, `serving`, `not joined`, `no realm`,
    /// `no bootstrap nodes known`, `down` or `disabled` (see
    /// [`maculaos_mesh::status::state_word`]).
    pub state: String,
    pub realm: Option<String>,
    /// One line: the state, connections, realm and roles.
    pub detail: String,
}

impl Mesh {
    pub fn from_brief(b: &maculaos_mesh::status::Brief) -> Mesh {
        Mesh {
            state: b.state.clone(),
            realm: b.realm.clone(),
            detail: b.line(),
        }
    }
}

/// The mesh from the node's `mesh.env` and, on the running system, its
/// server's monitoring endpoint (loopback).
fn mesh(ctx: &Collector) -> Mesh {
    let b = maculaos_mesh::status::Brief::of_node(&ctx.root, ctx.running_system());
    let mut m = Mesh::from_brief(&b);
    if b.state == "disabled" {
        m.realm = ctx.realm.clone();
        m.detail = "no NATS server on this node (maculaos.nats.enabled: false)".into();
    }
    m
}

/// One event of the agent (`event: <key>: <message>` in its journal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When the journal got it (RFC 3339, UTC).
    pub time: Option<String>,
    /// What it is about (`check-failed`, `restart`, …; see the agent's
    /// `EventKind`).
    pub key: Option<String>,
    pub message: String,
}

/// What [`collect`] needs between requests: where to look, what to show,
/// and the previous CPU sample.
#[derive(Debug, Clone)]
pub struct Collector {
    /// `/` on a node; anything else is a fake tree, where systemd is not
    /// asked.
    pub root: PathBuf,
    /// The services to show, in this order.
    pub units: Vec<String>,
    /// The filesystems to show: `/` always, the others when mounted.
    pub mounts: Vec<String>,
    /// `maculaos.mesh.realm` ([`Collector::set_config`]).
    pub realm: Option<String>,
    cpu: CpuSampler,
}

impl Collector {
    /// A collector for the tree at `root` showing `units`.
    pub fn new(root: impl Into<PathBuf>, units: Vec<String>) -> Collector {
        Collector {
            root: root.into(),
            units,
            mounts: DEFAULT_MOUNTS.iter().map(|m| m.to_string()).collect(),
            realm: None,
            cpu: CpuSampler::new(),
        }
    }

    /// The running system with [`DEFAULT_UNITS`].
    pub fn system() -> Collector {
        Collector::new("/", DEFAULT_UNITS.iter().map(|u| u.to_string()).collect())
    }

    /// Take what the dashboard shows from the configuration (the realm).
    pub fn set_config(&mut self, config: &maculaos_config::Maculaos) {
        self.realm = config.mesh.realm.clone();
    }

    fn running_system(&self) -> bool {
        self.root == Path::new("/")
    }

    /// `path` (absolute, as on the node) under the root.
    fn under(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn read(&self, path: &str, notes: &mut Vec<String>) -> Option<String> {
        match std::fs::read_to_string(self.under(path)) {
            Ok(t) => Some(t),
            Err(e) => {
                notes.push(format!("{path}: {e}"));
                None
            }
        }
    }
}

/// The status now, with `checks` as the agent's latest results.
pub fn collect(ctx: &mut Collector, checks: &[Check]) -> Status {
    let mut notes = Vec::new();
    let info = maculaos_info::Collector::new(&ctx.root).collect();
    let cpu = cpu(ctx, &mut notes);
    let memory = memory(ctx, &mut notes);
    let disks = disks(ctx, &mut notes);
    let services = services(ctx, &mut notes);
    let events = events(ctx, &mut notes);
    if checks.is_empty() {
        notes.push("no check results yet: the health agent has not run its checks".into());
    }
    Status {
        hostname: info.hostname,
        version: info.version,
        slot: info.slot,
        mode: info.mode,
        uptime_seconds: info.uptime_seconds,
        healthy: maculaos_health::healthy(checks),
        cpu,
        memory,
        disks,
        services,
        checks: checks.iter().map(CheckResult::from).collect(),
        mesh: mesh(ctx),
        events,
        notes,
        generated_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    }
}

fn cpu(ctx: &mut Collector, notes: &mut Vec<String>) -> Cpu {
    let stat = ctx.read("/proc/stat", notes).unwrap_or_default();
    let busy = match proc::parse_cpu_times(&stat) {
        Some(t) => ctx.cpu.sample(t, Instant::now()),
        None => {
            if !stat.is_empty() {
                notes.push("/proc/stat: no `cpu` line".into());
            }
            None
        }
    };
    let (load1, load5, load15) = ctx
        .read("/proc/loadavg", notes)
        .and_then(|t| {
            let l = proc::parse_loadavg(&t);
            if l.is_none() {
                notes.push(format!("/proc/loadavg: cannot read `{}`", t.trim()));
            }
            l
        })
        .unwrap_or_default();
    Cpu {
        cores: proc::count_cores(&stat),
        load1,
        load5,
        load15,
        busy_percent: busy.map(|(pct, _)| pct),
        busy_window_seconds: busy.map(|(_, d)| proc::round1(d.as_secs_f64())),
    }
}

fn memory(ctx: &Collector, notes: &mut Vec<String>) -> Memory {
    let (total, available) = ctx
        .read("/proc/meminfo", notes)
        .and_then(|t| {
            let m = proc::parse_meminfo(&t);
            if m.is_none() {
                notes.push("/proc/meminfo: no MemTotal or MemAvailable".into());
            }
            m
        })
        .unwrap_or_default();
    let used = total.saturating_sub(available);
    Memory {
        total_bytes: total,
        available_bytes: available,
        used_bytes: used,
        used_percent: proc::percent(used, total),
    }
}

fn disks(ctx: &Collector, notes: &mut Vec<String>) -> Vec<Disk> {
    // Only mount points are shown: /var on the root filesystem (live mode)
    // would repeat the root's numbers under another name.
    let mounts = std::fs::read_to_string(ctx.under("/proc/self/mountinfo"))
        .map(|t| maculaos_info::parse_mountinfo(&t))
        .unwrap_or_default();
    ctx.mounts
        .iter()
        .filter(|m| m.as_str() == "/" || maculaos_info::mount_at(&mounts, m).is_some())
        .filter_map(|m| match disk(&ctx.under(m), m) {
            Ok(d) => Some(d),
            Err(e) => {
                notes.push(format!("{m}: {e}"));
                None
            }
        })
        .collect()
}

/// The filesystem at `path` (shown as `mountpoint`): size, use, read-only.
pub fn disk(path: &Path, mountpoint: &str) -> nix::Result<Disk> {
    let st = nix::sys::statvfs::statvfs(path)?;
    // libc's types: u64 on 64-bit Linux, narrower elsewhere.
    let (frsize, blocks, free, avail) = (
        (st.fragment_size() as u64).max(1),
        st.blocks() as u64,
        st.blocks_free() as u64,
        st.blocks_available() as u64,
    );
    let used = blocks.saturating_sub(free).saturating_mul(frsize);
    let available = avail.saturating_mul(frsize);
    Ok(Disk {
        mountpoint: mountpoint.into(),
        size_bytes: blocks.saturating_mul(frsize),
        used_bytes: used,
        available_bytes: available,
        used_percent: proc::percent(used, used.saturating_add(available)),
        read_only: st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
    })
}

fn services(ctx: &Collector, notes: &mut Vec<String>) -> Vec<Service> {
    let unknown = || {
        ctx.units
            .iter()
            .map(|u| Service::new(u, "unknown", ""))
            .collect()
    };
    if ctx.units.is_empty() {
        return Vec::new();
    }
    if !ctx.running_system() {
        notes.push(format!(
            "services: not asked ({} is not the running system)",
            ctx.root.display()
        ));
        return unknown();
    }
    match systemd::systemctl_show(&ctx.units).output() {
        Ok(text) => systemd::parse_show(&ctx.units, &text),
        Err(e) => {
            notes.push(format!("services: {e}"));
            unknown()
        }
    }
}

fn events(ctx: &Collector, notes: &mut Vec<String>) -> Vec<Event> {
    if !ctx.running_system() {
        notes.push(format!(
            "events: not read ({} is not the running system)",
            ctx.root.display()
        ));
        return Vec::new();
    }
    match systemd::journalctl_agent().output() {
        Ok(text) => systemd::parse_journal(&text, systemd::MAX_EVENTS),
        Err(e) => {
            notes.push(format!("events: {e}"));
            Vec::new()
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    pub(crate) fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    /// A fake node: /proc files, os-release, a /var mount.
    pub(crate) fn fake_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(r, "proc/sys/kernel/hostname", "macula-ab12\n");
        write(
            r,
            "etc/os-release",
            "NAME=\"MaculaOS\"\nVERSION_ID=\"1.2.3\"\n",
        );
        write(r, "proc/cmdline", "maculaos.mode=disk maculaos.slot=B\n");
        write(r, "proc/uptime", "3725.5 100.0\n");
        write(r, "proc/loadavg", "0.50 0.25 0.10 1/200 4242\n");
        write(
            r,
            "proc/meminfo",
            "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n",
        );
        write(
            r,
            "proc/stat",
            "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 1 1 1\ncpu1 1 1 1 1\ncpu2 1 1 1 1\ncpu3 1 1 1 1\n",
        );
        write(
            r,
            "proc/self/mountinfo",
            "22 1 254:3 / / ro,relatime - squashfs /dev/vda3 ro\n\
             30 22 254:5 / /var rw,relatime - ext4 /dev/vda5 rw\n",
        );
        fs::create_dir_all(r.join("var")).unwrap();
        d
    }

    pub(crate) fn checks() -> Vec<Check> {
        vec![
            Check::new("config", State::Pass, "configuration valid"),
            Check::new("web", State::Fail, "GET http://127.0.0.1/ <refused>"),
            Check::new("k3s", State::Skip, "k3s: not installed"),
            Check::new("time-sync", State::Warn, "clock not synchronised"),
        ]
    }

    #[test]
    fn collects_from_a_fake_root() {
        let d = fake_root();
        let mut c = Collector::new(d.path(), vec!["ssh.service".into()]);
        let s = collect(&mut c, &checks());
        assert_eq!(s.hostname, "macula-ab12");
        assert_eq!(s.version, "1.2.3");
        assert_eq!(s.slot.as_deref(), Some("B"));
        assert_eq!(s.mode.as_deref(), Some("disk"));
        assert_eq!(s.uptime_seconds, 3725);
        assert_eq!(s.cpu.cores, 4);
        assert_eq!((s.cpu.load1, s.cpu.load5, s.cpu.load15), (0.5, 0.25, 0.1));
        assert_eq!(s.cpu.busy_percent, None, "first sample");
        assert_eq!(
            s.memory,
            Memory {
                total_bytes: 1_024_000,
                available_bytes: 256_000,
                used_bytes: 768_000,
                used_percent: 75.0
            }
        );
        let mounts: Vec<&str> = s.disks.iter().map(|d| d.mountpoint.as_str()).collect();
        assert_eq!(mounts, ["/", "/var"]);
        assert!(s.disks[0].size_bytes > 0);
        assert_eq!(s.services, vec![Service::new("ssh.service", "unknown", "")]);
        assert!(!s.healthy, "web fails");
        assert_eq!(s.checks[1].state, "fail");
        assert_eq!(s.checks[3].state, "warn");
        assert_eq!(s.mesh.state, "disabled");
        assert!(s.events.is_empty());
        assert!(
            s.notes.iter().any(|n| n.starts_with("events: not read")),
            "{:?}",
            s.notes
        );
        assert!(s.generated_at.ends_with('Z'), "{}", s.generated_at);

        // The second request measures the CPU since the first: 100 more
        // ticks, 40 of them busy.
        write(
            d.path(),
            "proc/stat",
            "cpu  120 0 120 750 110 0 0 0 0 0\ncpu0 1 1 1 1\n",
        );
        write(
            d.path(),
            "etc/maculaos/mesh.env",
            "MACULA_REALM=io.macula\nMACULA_ROLES=peer\nMACULA_JOINED=no\n",
        );
        let s = collect(&mut c, &checks()[..1]);
        assert_eq!(s.cpu.busy_percent, Some(40.0));
        assert!(s.cpu.busy_window_seconds.is_some());
        assert!(s.healthy);
        // A fake tree has no server to ask.
        assert_eq!(s.mesh.detail, "down; realm io.macula; roles peer");
    }

    #[test]
    fn a_missing_file_is_a_note_not_a_failure() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Collector::new(d.path(), Vec::new());
        let s = collect(&mut c, &[]);
        assert_eq!(s.memory.total_bytes, 0);
        assert_eq!(s.cpu.cores, 0);
        assert!(s.services.is_empty());
        assert_eq!(s.disks.len(), 1, "the root, but no /var mount");
        assert!(s.healthy);
        for want in ["/proc/meminfo: ", "/proc/stat: ", "no check results yet"] {
            assert!(
                s.notes.iter().any(|n| n.starts_with(want)),
                "{want}: {:?}",
                s.notes
            );
        }
    }

    #[test]
    fn the_json_shape_is_stable() {
        let d = fake_root();
        let mut c = Collector::new(d.path(), vec!["k3s.service".into()]);
        let s = collect(&mut c, &checks());
        let v = serde_json::to_value(&s).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "checks",
                "cpu",
                "disks",
                "events",
                "generated_at",
                "healthy",
                "hostname",
                "memory",
                "mesh",
                "mode",
                "notes",
                "services",
                "slot",
                "uptime_seconds",
                "version"
            ]
        );
        assert_eq!(v["cpu"]["busy_percent"], serde_json::Value::Null);
        assert_eq!(v["cpu"]["cores"], 4);
        assert_eq!(v["memory"]["used_percent"], 75.0);
        assert_eq!(v["disks"][1]["mountpoint"], "/var");
        assert!(v["disks"][0]["read_only"].is_boolean());
        assert_eq!(
            v["services"][0],
            serde_json::json!({"unit": "k3s.service", "active_state": "unknown", "sub_state": ""})
        );
        assert_eq!(
            v["checks"][0],
            serde_json::json!({"name": "config", "state": "pass", "message": "configuration valid"})
        );
        assert_eq!(v["mesh"]["state"], "disabled");
        assert_eq!(v["healthy"], false);
        // A client (the CLI) reads it back.
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn the_realm_comes_from_the_configuration() {
        let mut c = Collector::system();
        assert_eq!(c.units.len(), DEFAULT_UNITS.len());
        let mut config = maculaos_config::Maculaos::default();
        config.mesh.realm = Some("io.macula".into());
        c.set_config(&config);
        assert_eq!(c.realm.as_deref(), Some("io.macula"));
    }
}
