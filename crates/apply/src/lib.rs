//! `maculaos apply`: makes the node match its configuration.
//!
//! [`apply`] runs one applicator per part of the configuration, in a fixed
//! order (hostname, mDNS announcement, SSH keys, network, DNS, NTP, modules, sysctl,
//! environment, write_files, watchdog, backup, mesh, boot_cmd, run_cmd,
//! services, embedded services, firewall, k3s).
//! Each is independent: one that fails is reported in [`Report::errors`]
//! and the others still run.
//! Each is idempotent: a second run with the same configuration reports no
//! change (except `boot_cmd`, which runs at every boot by design).
//!
//! Files are written under [`Options::root`] (`/` on a node), atomically,
//! and only when their content, mode or owner differs. Acting on the running
//! system (kernel hostname, /proc/sys, modprobe, services) happens only when
//! [`Options::live`]; running the configuration's commands only when
//! [`Options::run_commands`].

mod applier;
mod backup_timer;
mod commands;
mod dropins;
mod embedded;
mod environment;
mod firewall;
mod hostname;
mod k3s;
mod kernel;
pub mod mdns;
pub mod mesh;
mod network;
mod registry;
mod services;
mod ssh;
mod time;
mod units;
mod updates_timer;
mod users;
mod watchdog;
mod wireguard;
mod write_files;

use applier::Applier;
use maculaos_config::Config;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use hostname::{default_hostname, hosts_file, primary_mac};
pub use k3s::k3s_installed;
pub use users::{lookup_group, lookup_user};

/// The admin user: the one the configuration's SSH keys are for.
pub const ADMIN_USER: &str = "macula";

/// How to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Where the node's files are (`/` on a node; a directory in tests or image builds).
    pub root: PathBuf,
    /// Work out what would change, and change nothing: no file written, no
    /// command run (read-only queries such as `systemctl is-active` aside).
    pub dry_run: bool,
    /// Run by the boot unit: only then `boot_cmd` runs.
    pub boot: bool,
    /// Also act on the running system: set the kernel hostname, write
    /// /proc/sys, load modules, reload or restart services, enable k3s.
    /// Its files (/proc, /sys) are still read under `root`.
    pub live: bool,
    /// Run the configuration's commands (`boot_cmd`, `run_cmd`).
    pub run_commands: bool,
}

impl Options {
    /// The options for `root`: live, and running commands, only when `root` is `/`.
    pub fn for_root(root: impl Into<PathBuf>, dry_run: bool, boot: bool) -> Options {
        let root = root.into();
        let live = root == Path::new("/");
        Options {
            root,
            dry_run,
            boot,
            live,
            run_commands: live,
        }
    }
}

/// What one run changed (or, in a dry run, would change: entries start with
/// "would "), what failed, and what is worth knowing.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub changes: Vec<String>,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
    /// How long each step took, in order: apply runs on every boot, before
    /// the network and SSH, so a slow step delays the whole node.
    #[serde(skip)]
    pub timings: Vec<(&'static str, Duration)>,
}

impl Report {
    /// Whether every applicator succeeded.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// One applicator: a failure it returns is reported under its name; it may
/// also report errors itself and go on (one bad file among several).
type Step = fn(&Config, &mut Applier) -> Result<(), String>;

/// In order: names first (hostname, keys), then the network and what uses
/// it, the kernel, files, the node's own services (the systemd watchdog,
/// the backup timer: armed before the configuration's commands run, which
/// may take long or fail), and last what runs (commands, k3s).
const STEPS: &[(&str, Step)] = &[
    ("hostname", hostname::apply),
    ("mdns", mdns::apply),
    ("ssh", ssh::apply),
    ("network", network::apply),
    ("dns", dropins::dns),
    ("ntp", time::apply),
    ("modules", kernel::modules),
    ("sysctl", kernel::sysctl),
    ("environment", environment::apply),
    ("write_files", write_files::apply),
    ("watchdog", watchdog::apply),
    ("backup", backup_timer::apply),
    ("updates", updates_timer::apply),
    ("mesh", mesh::apply),
    ("wireguard", wireguard::apply),
    ("boot_cmd", commands::boot_cmd),
    ("run_cmd", commands::run_cmd),
    ("registry", registry::apply),
    ("services", services::apply),
    ("embedded", embedded::apply),
    ("firewall", firewall::apply),
    ("k3s", k3s::apply),
];

/// Only the watchdog step: for the health agent, which arms the running
/// systemd's watchdog once D-Bus is up (apply at boot runs before it).
pub fn apply_watchdog(config: &Config, opts: &Options) -> Report {
    let mut a = Applier::new(opts);
    if let Err(e) = watchdog::apply(config, &mut a) {
        a.error("watchdog", e);
    }
    a.report
}

/// Make the node under `opts.root` match `config`.
pub fn apply(config: &Config, opts: &Options) -> Report {
    let mut a = Applier::new(opts);
    for (area, step) in STEPS {
        let started = Instant::now();
        if let Err(e) = step(config, &mut a) {
            a.error(area, e);
        }
        a.report.timings.push((area, started.elapsed()));
    }
    a.report
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    /// A tempdir root: nothing live, no commands.
    pub fn opts(root: &Path) -> Options {
        Options::for_root(root, false, false)
    }

    pub fn yaml(text: &str) -> Config {
        if text.trim().is_empty() {
            return Config::default();
        }
        serde_yaml_ng::from_str(text).unwrap()
    }

    /// Apply, check there was no error, apply again and check that nothing
    /// changed; returns the first report.
    pub fn apply_twice(config: &Config, o: &Options) -> Report {
        let first = apply(config, o);
        assert_eq!(first.errors, Vec::<String>::new(), "first run: {first:?}");
        let second = apply(config, o);
        assert_eq!(
            second.errors,
            Vec::<String>::new(),
            "second run: {second:?}"
        );
        assert_eq!(
            second.changes,
            Vec::<String>::new(),
            "not idempotent: {second:?}"
        );
        first
    }

    const FULL: &str = "\
maculaos:
  hostname: edge-01
  dns_nameservers: [1.1.1.1]
  labels: {zone: a}
  modules: [br_netfilter]
  sysctl: {net.ipv4.ip_forward: 1}
  environment: {TZ: UTC}
  ntp: {servers: [pool.ntp.org]}
  ssh: {authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB me@host']}
  network:
    dhcp: false
    interfaces: [{name: eth0, address: 10.0.0.5/24, gateway: 10.0.0.1}]
k3s: {token: t, args: [--disable=traefik]}
write_files: [{path: /etc/motd.d/hello, content: hi}]
run_cmd: ['echo ran >> run.log']
boot_cmd: ['echo boot >> boot.log']
";

    /// Every file the full configuration writes, relative to the root.
    const FULL_FILES: &[&str] = &[
        "etc/hostname",
        "etc/hosts",
        "etc/ssh/authorized_keys.d/macula",
        "etc/systemd/network/10-maculaos-eth0.network",
        "etc/systemd/network/80-maculaos-dhcp.network",
        "etc/systemd/resolved.conf.d/90-maculaos.conf",
        "etc/chrony/sources.d/maculaos.sources",
        "etc/modules-load.d/maculaos.conf",
        "etc/sysctl.d/90-maculaos.conf",
        "etc/environment",
        "etc/motd.d/hello",
        "etc/systemd/system.conf.d/90-maculaos-watchdog.conf",
        "etc/maculaos/firewall.nft",
        "etc/rancher/k3s/config.yaml",
    ];

    #[test]
    fn full_config_applies_once() {
        let d = tempfile::tempdir().unwrap();
        let r = apply_twice(&yaml(FULL), &opts(d.path()));
        for f in FULL_FILES {
            assert!(d.path().join(f).symlink_metadata().is_ok(), "{f} missing");
        }
        assert_eq!(r.changes.len(), FULL_FILES.len(), "{r:?}");
        assert_eq!(
            r.notes,
            vec![
                "run_cmd: 1 command(s) not run: commands run only when applying to the running node (root /)",
                "k3s: not installed (config written to /etc/rancher/k3s/config.yaml)",
            ]
        );
    }

    #[test]
    fn dry_run_writes_nothing_and_says_what_would_change() {
        let d = tempfile::tempdir().unwrap();
        let mut o = opts(d.path());
        o.dry_run = true;
        o.boot = true;
        o.run_commands = true;
        let r = apply(&yaml(FULL), &o);
        assert!(r.ok(), "{r:?}");
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            0,
            "nothing written"
        );
        assert_eq!(r.changes.len(), FULL_FILES.len() + 2, "{r:?}");
        assert!(r.changes.iter().all(|c| c.starts_with("would ")), "{r:?}");
        assert!(r
            .changes
            .contains(&"would write /etc/hostname (hostname)".to_string()));
        assert!(r
            .changes
            .contains(&"would run `echo ran >> run.log` (run_cmd)".to_string()));

        // Once applied, a dry run finds nothing to do.
        o.dry_run = false;
        o.run_commands = false;
        o.boot = false;
        apply(&yaml(FULL), &o);
        o.dry_run = true;
        let r = apply(&yaml(FULL), &o);
        assert_eq!(r.changes, Vec::<String>::new());
    }

    #[test]
    fn for_root_is_live_only_on_slash() {
        let o = Options::for_root("/", true, true);
        assert!(o.live && o.run_commands && o.dry_run && o.boot);
        let o = Options::for_root("/tmp/x", false, false);
        assert!(!o.live && !o.run_commands);
    }
}
