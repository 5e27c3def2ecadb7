//! `maculaos health`: every check with its state and a message.
//!
//! Built in: the configuration is valid (`config`), k3s (`k3s`), how the
//! node booted (`slots`), room on the data partition (`data-space`), the
//! clock (`time-sync`), a way out (`network`) and the node's name on the LAN
//! (`mdns-name`). Then the checks of
//! `maculaos.health.checks`, in their order ([`probes`]). [`RestartPolicy`]
//! decides, for the agent that runs them on their intervals, when a failing
//! check's unit is restarted.
//!
//! Every check takes the root of the system it looks at (`/` on a node, a
//! directory in tests). Checks that ask the running system (systemctl,
//! timedatectl, ip, busctl) are skipped under any other root.

pub mod agent;
pub mod policy;
pub mod probes;

pub use policy::{Decision, RestartPolicy};
pub use probes::{
    configured_check, configured_checks, disk_check, disk_use, http_check, systemd_unit_check,
    tcp_check,
};

use maculaos_boot::{BootInfo, Cmdline, Mode, BOOT_INFO_PATH};
use maculaos_config::load::{Loaded, Paths, Using};
use maculaos_config::values::Percent;
use maculaos_diag::{parse_default_routes, parse_ip_addr, IfAddrs, Route};
use maculaos_discover::{host_label, Announced, NameError};
use maculaos_runner::RunError;
use probes::{is_running_system, not_running_system, under};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pass,
    Fail,
    /// Not applicable here (k3s not installed): neither pass nor fail.
    Skip,
    /// Worth knowing, not a failure (the clock not synchronised yet: an
    /// airgapped node may never be): shown, but `healthy` stays true.
    Warn,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub state: State,
    pub message: String,
    /// The failing `mdns-name` check's names, for the agent's repair (not
    /// shown: the message says it).
    #[serde(skip)]
    pub(crate) mdns: Option<MdnsNames>,
}

impl Check {
    pub fn new(name: &str, state: State, message: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            state,
            message: message.into(),
            mdns: None,
        }
    }
}

/// The names the `mdns-name` check compared when they differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MdnsNames {
    /// The hostname (its first label): the name to claim again.
    pub hostname: String,
    /// What avahi-daemon announces instead.
    pub announced: String,
    /// Whether that is the hostname with avahi's `-N` suffix (a conflict).
    pub conflict: bool,
}

/// The configuration check: fails while any source has an error, and says
/// which configuration the node runs with meanwhile.
pub fn config_check(loaded: &Loaded) -> Check {
    if loaded.problems.is_empty() {
        return Check::new("config", State::Pass, "configuration valid");
    }
    let fallback = match loaded.using {
        Using::LastGood => "running with the last good configuration",
        Using::Defaults | Using::Current => "running with the image defaults",
    };
    let list: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
    Check::new(
        "config",
        State::Fail,
        format!(
            "{} error(s), {fallback}; fix them and run `maculaos apply`:\n{}",
            list.len(),
            list.join("\n")
        ),
    )
}

pub fn k3s_check(root: &Path) -> Check {
    if maculaos_apply::k3s_installed(root) {
        Check::new("k3s", State::Pass, "k3s installed and configured")
    } else {
        Check::new("k3s", State::Skip, "k3s: not installed")
    }
}

/// The units a boot needs before its slot may be marked good: a node that
/// cannot be reached is not healthy, whatever else runs.
pub const BOOT_UNITS: &[&str] = &["ssh.service", "systemd-networkd.service"];

/// A systemd unit of the running system is active (the check is named after the unit).
pub fn unit_check(unit: &str) -> Check {
    systemd_unit_check(Path::new("/"), unit, unit)
}

/// How the node booted, from the record maculaos-init leaves in
/// `/run/maculaos/boot.json`: the mode, the root slot, and whether GRUB
/// booted that slot on trial after an update (`maculaos.trial=` on the
/// kernel command line). Whether the trial was since marked good is in the
/// GRUB environment on the ESP: `maculaos upgrade --status` shows it.
pub fn slots_check(root: &Path) -> Check {
    const NAME: &str = "slots";
    let path = under(root, Path::new(BOOT_INFO_PATH));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::new(
                NAME,
                State::Skip,
                format!("{BOOT_INFO_PATH} not found: not booted by maculaos-init"),
            );
        }
        Err(e) => return Check::new(NAME, State::Fail, format!("{BOOT_INFO_PATH}: {e}")),
    };
    let info = match BootInfo::from_json(&text) {
        Ok(i) => i,
        Err(e) => return Check::new(NAME, State::Fail, format!("{BOOT_INFO_PATH}: {e}")),
    };
    let message = match info.mode {
        Mode::Live | Mode::Install => {
            format!("{} mode from {}: no A/B slots", info.mode, info.root_device)
        }
        Mode::Disk | Mode::Recovery => {
            let cmdline = Cmdline::parse(
                &std::fs::read_to_string(under(root, Path::new("/proc/cmdline")))
                    .unwrap_or_default(),
            );
            let trial = cmdline.get("maculaos.trial") == Some(info.slot.to_string().as_str());
            let mut m = format!(
                "{} mode, slot {} ({})",
                info.mode, info.slot, info.root_device
            );
            if trial {
                m.push_str(", booted on trial after an update");
            }
            m
        }
    };
    Check::new(NAME, State::Pass, message)
}

/// Room on the data partition (`/var`): fails from `threshold` full
/// (`maculaos.auto_heal.disk_threshold`).
pub fn data_space_check(root: &Path, threshold: Percent) -> Check {
    const NAME: &str = "data-space";
    let var = Path::new("/var");
    let at = under(root, var);
    if !at.exists() {
        return Check::new(NAME, State::Skip, "/var not found");
    }
    probes::disk_check(root, NAME, var, threshold)
}

/// The clock is synchronised (`timedatectl show -p NTPSynchronized`).
pub fn time_sync_check(root: &Path) -> Check {
    const NAME: &str = "time-sync";
    if !is_running_system(root) {
        return not_running_system(NAME, root);
    }
    let answer = maculaos_runner::Cmd::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .quiet()
        .output();
    time_sync_answer(answer)
}

/// The check for what timedatectl said.
pub(crate) fn time_sync_answer(answer: Result<String, RunError>) -> Check {
    const NAME: &str = "time-sync";
    match answer.as_deref().map(str::trim) {
        Ok("yes") => Check::new(NAME, State::Pass, "clock synchronised"),
        Ok("no") => Check::new(
            NAME,
            State::Warn,
            "clock not synchronised (no NTP server answered yet)",
        ),
        Ok(other) => Check::new(
            NAME,
            State::Fail,
            format!("timedatectl says NTPSynchronized=`{other}`"),
        ),
        Err(RunError::NotFound { .. }) => {
            Check::new(NAME, State::Skip, "timedatectl not installed")
        }
        Err(e) => Check::new(NAME, State::Fail, format!("cannot tell: {e}")),
    }
}

/// The name of the network check.
pub const NETWORK_CHECK: &str = "network";

/// The node has a way out: an interface other than lo is up with an
/// address that is not link-local, and a default route (IPv4 or IPv6) goes
/// through one of them. A link set down (`ip link set eth0 down`) fails it;
/// the agent restarts systemd-networkd when that lasts
/// `auto_heal.network_grace`.
pub fn network_check(root: &Path) -> Check {
    if !is_running_system(root) {
        return not_running_system(NETWORK_CHECK, root);
    }
    let ip = |args: &[&str]| maculaos_runner::Cmd::new("ip").args(args).quiet().output();
    network_answer(
        ip(&["-j", "addr"]),
        ip(&["-j", "route", "show", "default"]),
        ip(&["-6", "-j", "route", "show", "default"]),
    )
}

/// The check for what `ip -j addr`, `ip -j route show default` and
/// `ip -6 -j route show default` said. When `ip` cannot tell, the check
/// warns rather than fails: restarting the network would not mend that.
pub(crate) fn network_answer(
    addr: Result<String, RunError>,
    route4: Result<String, RunError>,
    route6: Result<String, RunError>,
) -> Check {
    let cannot_tell =
        |why: String| Check::new(NETWORK_CHECK, State::Warn, format!("cannot tell: {why}"));
    let links = match addr.map(|out| parse_ip_addr(&out)) {
        Err(RunError::NotFound { .. }) => {
            return Check::new(NETWORK_CHECK, State::Skip, "ip not installed")
        }
        Err(e) => return cannot_tell(e.to_string()),
        Ok(Err(e)) => {
            return cannot_tell(format!("`ip -j addr` printed something unexpected: {e}"))
        }
        Ok(Ok(links)) => links,
    };
    let mut routes = match route4.map(|out| parse_default_routes(&out)) {
        Err(e) => return cannot_tell(e.to_string()),
        Ok(Err(e)) => {
            return cannot_tell(format!("`ip -j route` printed something unexpected: {e}"))
        }
        Ok(Ok(routes)) => routes,
    };
    // Without IPv6 (disabled on the kernel command line) `ip -6` fails:
    // there is simply no IPv6 default route.
    if let Ok(Ok(v6)) = route6.map(|out| parse_default_routes(&out)) {
        routes.extend(v6);
    }
    network_state(&links, &routes)
}

/// `eth0 DOWN`, `eth1 UP, no address`.
fn link_state(link: &IfAddrs) -> String {
    if link.is_up() && link.addresses.is_empty() {
        format!("{} {}, no address", link.name, link.operstate)
    } else {
        format!("{} {}", link.name, link.operstate)
    }
}

/// `via 10.0.2.2 (eth0)`, `on wg0`.
fn route_text(route: &Route) -> String {
    match (&route.gateway, &route.dev) {
        (Some(gw), Some(dev)) => format!("via {gw} ({dev})"),
        (Some(gw), None) => format!("via {gw}"),
        (None, Some(dev)) => format!("on {dev}"),
        (None, None) => "(no gateway, no device)".into(),
    }
}

/// The network check for these links and default routes.
pub(crate) fn network_state(links: &[IfAddrs], routes: &[Route]) -> Check {
    let check = |state, message: String| Check::new(NETWORK_CHECK, state, message);
    let links: Vec<&IfAddrs> = links.iter().filter(|l| l.name != "lo").collect();
    if links.is_empty() {
        // Nothing a restart of the network stack could bring up.
        return check(State::Skip, "no network interface besides lo".into());
    }
    let usable: Vec<&IfAddrs> = links.iter().copied().filter(|l| l.is_usable()).collect();
    if usable.is_empty() {
        // Pods' veth interfaces would only bury the node's own.
        let states: Vec<String> = links
            .iter()
            .filter(|l| !l.name.starts_with("veth"))
            .map(|l| link_state(l))
            .collect();
        return check(
            State::Fail,
            format!(
                "no interface is up with an address ({}); see `maculaos diag network`",
                states.join("; ")
            ),
        );
    }
    let through = |r: &Route| match &r.dev {
        Some(dev) => usable.iter().copied().find(|l| &l.name == dev),
        None => usable.first().copied(),
    };
    if let Some((route, link)) = routes.iter().find_map(|r| through(r).map(|l| (r, l))) {
        return check(
            State::Pass,
            format!(
                "{} up with {}, default route {}",
                link.name,
                link.addresses.join(", "),
                route_text(route)
            ),
        );
    }
    let up: Vec<String> = usable
        .iter()
        .map(|l| format!("{} ({})", l.name, l.addresses.join(", ")))
        .collect();
    let message = match routes.first() {
        None => format!(
            "{} up, but there is no default route (no DHCP lease yet, or no `gateway` \
             in maculaos.network)",
            up.join(", ")
        ),
        Some(r) => format!(
            "the default route {} goes through an interface that is not up with an \
             address; up: {}",
            route_text(r),
            up.join(", ")
        ),
    };
    check(State::Fail, message)
}

/// The name of the mDNS name check.
pub const MDNS_NAME_CHECK: &str = "mdns-name";

/// The node is announced on the LAN under its hostname: avahi-daemon
/// renames it after a name conflict (`macula-0b02` becomes
/// `macula-0b02-2`) and keeps that name once the other host is gone. The
/// agent then has avahi-daemon claim the hostname again.
pub fn mdns_name_check(root: &Path) -> Check {
    if !is_running_system(root) {
        return not_running_system(MDNS_NAME_CHECK, root);
    }
    let announced = maculaos_discover::announced_host_name();
    let hostname = std::fs::read_to_string(under(root, Path::new(HOSTNAME_PATH)));
    mdns_name_answer(announced, hostname)
}

const HOSTNAME_PATH: &str = "/proc/sys/kernel/hostname";

/// The check for the name avahi-daemon announces and the kernel's
/// hostname. Not knowing warns and never fails: a node without avahi is
/// fine.
pub(crate) fn mdns_name_answer(
    announced: Result<String, NameError>,
    hostname: std::io::Result<String>,
) -> Check {
    let cannot_tell =
        |why: String| Check::new(MDNS_NAME_CHECK, State::Warn, format!("cannot tell: {why}"));
    let announced = match announced {
        Ok(a) => a,
        Err(e) => return cannot_tell(e.to_string()),
    };
    let hostname = match hostname {
        Ok(h) => h,
        Err(e) => return cannot_tell(format!("{HOSTNAME_PATH}: {e}")),
    };
    let host = host_label(&hostname).to_string();
    let (conflict, message) = match maculaos_discover::compare(&hostname, &announced) {
        Announced::AsHostname => {
            return Check::new(
                MDNS_NAME_CHECK,
                State::Pass,
                format!("announced as {announced}.local"),
            )
        }
        Announced::Renamed => (
            true,
            format!(
                "announced as {announced}.local: the name {host}.local is taken by another \
                 host on the LAN"
            ),
        ),
        Announced::Other => (
            false,
            format!("announced as {announced}.local, not as the hostname {host}.local"),
        ),
    };
    let mut check = Check::new(MDNS_NAME_CHECK, State::Fail, message);
    check.mdns = Some(MdnsNames {
        hostname: host,
        announced,
        conflict,
    });
    check
}

/// The checks that decide whether a boot is good (`maculaos health --boot`).
pub fn boot_checks() -> Vec<Check> {
    BOOT_UNITS.iter().map(|u| unit_check(u)).collect()
}

/// `maculaos:` with the checks of `services:` (`services.NAME.health`)
/// after its own, then those of the embedded services that are enabled
/// (`metrics`): what the agent and `maculaos health` run.
pub fn watched(config: &maculaos_config::Config) -> maculaos_config::Maculaos {
    let mut m = config.maculaos.clone();
    m.health
        .checks
        .extend(maculaos_services::health_checks(&config.services));
    m.health.checks.extend(
        maculaos_embedded::enabled(config)
            .into_iter()
            .map(|e| e.check),
    );
    m
}

/// Where the agent keeps the latest result of each of its checks (JSON: a
/// list of name, state, message), for `maculaos services`.
pub const RESULTS_PATH: &str = "/run/maculaos/checks.json";

/// The agent's latest results, by check name (empty when it has none yet).
pub fn latest_results(paths: &Paths) -> BTreeMap<String, (State, String)> {
    #[derive(serde::Deserialize)]
    struct Row {
        name: String,
        state: State,
        message: String,
    }
    let path = paths.root.join(RESULTS_PATH.trim_start_matches('/'));
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<Row>>(&b).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.name, (r.state, r.message)))
        .collect()
}

/// The built-in checks, then those of `maculaos.health.checks` in their
/// order, then those of `services:`.
pub fn run(paths: &Paths) -> Vec<Check> {
    let loaded = maculaos_config::load(paths);
    let root = paths.root.as_path();
    let config = &watched(&loaded.config);
    let mut checks = vec![
        config_check(&loaded),
        k3s_check(root),
        slots_check(root),
        data_space_check(root, config.auto_heal.disk_threshold),
        time_sync_check(root),
        network_check(root),
        mdns_name_check(root),
    ];
    checks.extend(configured_checks(root, &config.health.checks));
    checks
}

/// Whether all checks pass (skipped ones do not count against).
pub fn healthy(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.state != State::Fail)
}

/// One line per check (continuation lines indented), for the terminal.
pub fn render(checks: &[Check]) -> String {
    let width = checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(8);
    let mut out = String::new();
    for c in checks {
        let mark = match c.state {
            State::Pass => "✓",
            State::Fail => "✗",
            State::Skip => "-",
            State::Warn => "!",
        };
        let mut lines = c.message.lines();
        out.push_str(&format!(
            "{mark} {:<width$} {}\n",
            c.name,
            lines.next().unwrap_or("")
        ));
        for l in lines {
            out.push_str(&format!("  {:<width$}   {l}\n", ""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn config_errors_fail_the_check_with_their_text() {
        let d = tempfile::tempdir().unwrap();
        let p = Paths::new(d.path());
        let checks = run(&p);
        assert!(healthy(&checks), "{checks:?}");
        assert_eq!(checks[1].message, "k3s: not installed");
        fs::create_dir_all(d.path().join("var/lib/maculaos")).unwrap();
        fs::write(
            d.path().join("var/lib/maculaos/config.yaml"),
            "maculaos:\n  hostnme: x\n",
        )
        .unwrap();
        let checks = run(&p);
        assert!(!healthy(&checks));
        let text = render(&checks);
        assert!(text.contains("✗ config"), "{text}");
        assert!(
            text.contains("/var/lib/maculaos/config.yaml:2:3: maculaos: unknown key `hostnme`"),
            "{text}"
        );
        assert!(text.contains("image defaults"), "{text}");
    }

    #[test]
    fn run_gives_the_built_ins_then_the_configured_checks_in_order() {
        let d = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        write(
            d.path(),
            "var/lib/maculaos/config.yaml",
            &format!(
                "maculaos:
  auto_heal:
    disk_threshold: 100%
  health:
    checks:
      - {{name: k3s-unit, type: process, process: k3s}}
      - {{name: api, type: tcp, address: '127.0.0.1:{port}', timeout: 2s}}
      - {{name: var, type: disk, path: /var, threshold: 100%}}
"
            ),
        );
        let checks = run(&Paths::new(d.path()));
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "config",
                "k3s",
                "slots",
                "data-space",
                "time-sync",
                "network",
                "mdns-name",
                "k3s-unit",
                "api",
                "var"
            ]
        );
        let states: Vec<State> = checks.iter().map(|c| c.state).collect();
        use State::*;
        assert_eq!(
            states,
            [Pass, Skip, Skip, Pass, Skip, Skip, Skip, Skip, Pass, Pass],
            "{checks:#?}"
        );
        assert!(
            checks[3].message.starts_with("/var is "),
            "{}",
            checks[3].message
        );
        assert!(checks[3].message.ends_with("% full (fails at 100%)"));
        for i in [4, 5, 6, 7] {
            assert_eq!(
                checks[i].message,
                format!(
                    "not checked: {} is not the running system",
                    d.path().display()
                )
            );
        }
        let text = render(&checks);
        assert!(text.contains("- time-sync  not checked"), "{text}");
        assert!(text.contains("- network    not checked"), "{text}");
        assert!(text.contains("- mdns-name  not checked"), "{text}");
        assert!(text.contains("✓ data-space /var is"), "{text}");
    }

    #[test]
    fn slots_from_the_boot_record() {
        let d = tempfile::tempdir().unwrap();
        let c = slots_check(d.path());
        assert_eq!(c.state, State::Skip);
        assert_eq!(
            c.message,
            "/run/maculaos/boot.json not found: not booted by maculaos-init"
        );
        let info = |mode: &str, slot: &str, dev: &str| {
            format!(
                r#"{{"mode":"{mode}","slot":"{slot}","firmware":"uefi","root_device":"{dev}",
                "data_device":"/dev/vda5","data_formatted":false,"data_grown":false,"init_done_ms":900}}"#
            )
        };
        write(
            d.path(),
            "run/maculaos/boot.json",
            &info("disk", "B", "/dev/vda4"),
        );
        let c = slots_check(d.path());
        assert_eq!(
            (c.state, c.message.as_str()),
            (State::Pass, "disk mode, slot B (/dev/vda4)")
        );
        write(
            d.path(),
            "proc/cmdline",
            "quiet maculaos.slot=B maculaos.trial=B\n",
        );
        assert_eq!(
            slots_check(d.path()).message,
            "disk mode, slot B (/dev/vda4), booted on trial after an update"
        );
        write(
            d.path(),
            "proc/cmdline",
            "quiet maculaos.slot=A maculaos.trial=B\n",
        );
        write(
            d.path(),
            "run/maculaos/boot.json",
            &info("disk", "A", "/dev/vda3"),
        );
        assert_eq!(
            slots_check(d.path()).message,
            "disk mode, slot A (/dev/vda3)"
        );
        write(
            d.path(),
            "run/maculaos/boot.json",
            &info("live", "A", "/dev/sr0"),
        );
        assert_eq!(
            slots_check(d.path()).message,
            "live mode from /dev/sr0: no A/B slots"
        );
        write(d.path(), "run/maculaos/boot.json", "{");
        let c = slots_check(d.path());
        assert_eq!(c.state, State::Fail);
        assert!(
            c.message.starts_with("/run/maculaos/boot.json: "),
            "{}",
            c.message
        );
    }

    #[test]
    fn time_sync_answers() {
        let c = time_sync_answer(Ok("yes\n".into()));
        assert_eq!(
            (c.state, c.message.as_str()),
            (State::Pass, "clock synchronised")
        );
        let c = time_sync_answer(Ok("no\n".into()));
        assert_eq!(
            (c.state, c.message.as_str()),
            (
                State::Warn,
                "clock not synchronised (no NTP server answered yet)"
            )
        );
        let c = time_sync_answer(Err(RunError::NotFound {
            program: "timedatectl".into(),
            hint: String::new(),
        }));
        assert_eq!(
            (c.state, c.message.as_str()),
            (State::Skip, "timedatectl not installed")
        );
        let c = time_sync_answer(Err(RunError::Failed {
            command: "timedatectl show".into(),
            status: "exit status: 1".into(),
            tail: "Failed to connect to bus".into(),
            log: None,
        }));
        assert_eq!(c.state, State::Fail);
        assert!(
            c.message.contains("Failed to connect to bus"),
            "{}",
            c.message
        );
        let d = tempfile::tempdir().unwrap();
        assert_eq!(time_sync_check(d.path()).state, State::Skip);
    }

    /// `ip -j addr` of a VM: lo, eth0 (`state` and its IPv4 address given),
    /// a pod's veth.
    fn ip_addr(eth0_state: &str, eth0_flags: &str) -> String {
        format!(
            r#"[{{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"operstate":"UNKNOWN","addr_info":[{{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}}]}},
            {{"ifindex":2,"ifname":"eth0","flags":[{eth0_flags}],"operstate":"{eth0_state}","addr_info":[{{"family":"inet","local":"10.0.2.15","prefixlen":24,"scope":"global"}},{{"family":"inet6","local":"fe80::5054:ff:fe12:3456","prefixlen":64,"scope":"link"}}]}},
            {{"ifindex":9,"ifname":"veth1a2b","operstate":"UP","addr_info":[{{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}}]}}]"#
        )
    }

    const UP: &str = r#""BROADCAST","MULTICAST","UP","LOWER_UP""#;
    const ROUTE: &str = r#"[{"dst":"default","gateway":"10.0.2.2","dev":"eth0","protocol":"dhcp","prefsrc":"10.0.2.15","metric":1024,"flags":[]}]"#;

    fn answer(addr: &str, route4: &str, route6: &str) -> Check {
        network_answer(Ok(addr.into()), Ok(route4.into()), Ok(route6.into()))
    }

    #[test]
    fn network_up_with_a_default_route_passes() {
        let c = answer(&ip_addr("UP", UP), ROUTE, "");
        assert_eq!(
            (c.name.as_str(), c.state, c.message.as_str()),
            (
                "network",
                State::Pass,
                "eth0 up with 10.0.2.15/24, default route via 10.0.2.2 (eth0)"
            )
        );
        // An IPv6 default route is as good.
        let v6 = r#"[{"dst":"default","gateway":"fe80::2","dev":"eth0","protocol":"ra","metric":1024,"flags":[],"pref":"medium"}]"#;
        let c = answer(&ip_addr("UP", UP), "[]", v6);
        assert_eq!(c.state, State::Pass, "{c:?}");
        assert!(c.message.ends_with("via fe80::2 (eth0)"), "{}", c.message);
    }

    #[test]
    fn a_link_set_down_fails_the_network_check() {
        // `ip link set eth0 down`: the kernel drops its routes, keeps its
        // IPv4 address, and `ip` shows it DOWN without the UP flag.
        let c = answer(&ip_addr("DOWN", r#""BROADCAST","MULTICAST""#), "", "");
        assert_eq!(
            (c.state, c.message.as_str()),
            (
                State::Fail,
                "no interface is up with an address (eth0 DOWN); see `maculaos diag network`"
            )
        );
        // Even were its route left behind.
        let c = answer(&ip_addr("DOWN", r#""BROADCAST","MULTICAST""#), ROUTE, "");
        assert_eq!(c.state, State::Fail);
    }

    #[test]
    fn network_without_a_usable_default_route_fails() {
        let c = answer(&ip_addr("UP", UP), "", "[]\n");
        assert_eq!(
            (c.state, c.message.as_str()),
            (
                State::Fail,
                "eth0 (10.0.2.15/24) up, but there is no default route (no DHCP lease yet, \
                 or no `gateway` in maculaos.network)"
            )
        );
        // The default route goes out through a link that is down, while a
        // bridge of k3s has an address.
        let links = vec![
            IfAddrs {
                name: "eth0".into(),
                operstate: "DOWN".into(),
                addresses: vec!["10.0.2.15/24".into()],
            },
            IfAddrs {
                name: "cni0".into(),
                operstate: "UP".into(),
                addresses: vec!["10.42.0.1/24".into()],
            },
        ];
        let routes = parse_default_routes(ROUTE).unwrap();
        let c = network_state(&links, &routes);
        assert_eq!(
            (c.state, c.message.as_str()),
            (
                State::Fail,
                "the default route via 10.0.2.2 (eth0) goes through an interface that is not \
                 up with an address; up: cni0 (10.42.0.1/24)"
            )
        );
        // A route straight onto an up link (WireGuard: UNKNOWN) passes.
        let wg = vec![IfAddrs {
            name: "wg0".into(),
            operstate: "UNKNOWN".into(),
            addresses: vec!["10.9.0.2/32".into()],
        }];
        let on_link =
            parse_default_routes(r#"[{"dst":"default","dev":"wg0","scope":"link","flags":[]}]"#)
                .unwrap();
        let c = network_state(&wg, &on_link);
        assert_eq!(
            (c.state, c.message.as_str()),
            (State::Pass, "wg0 up with 10.9.0.2/32, default route on wg0")
        );
        // Up without an address.
        let bare = vec![IfAddrs {
            name: "eth1".into(),
            operstate: "UP".into(),
            addresses: vec![],
        }];
        assert_eq!(
            network_state(&bare, &[]).message,
            "no interface is up with an address (eth1 UP, no address); see `maculaos diag network`"
        );
    }

    #[test]
    fn network_cannot_tell_without_ip() {
        let lo_only = r#"[{"ifindex":1,"ifname":"lo","operstate":"UNKNOWN","addr_info":[]}]"#;
        assert_eq!(answer(lo_only, "", "").state, State::Skip);
        let c = network_answer(
            Err(RunError::NotFound {
                program: "ip".into(),
                hint: String::new(),
            }),
            Ok(String::new()),
            Ok(String::new()),
        );
        assert_eq!(
            (c.state, c.message.as_str()),
            (State::Skip, "ip not installed")
        );
        let failed = || RunError::Failed {
            command: "ip -j route show default".into(),
            status: "exit code 255".into(),
            tail: "Cannot talk to rtnetlink".into(),
            log: None,
        };
        let c = network_answer(Ok(ip_addr("UP", UP)), Err(failed()), Ok(String::new()));
        assert_eq!(c.state, State::Warn, "{c:?}");
        assert!(
            c.message
                .starts_with("cannot tell: `ip -j route show default` failed"),
            "{}",
            c.message
        );
        let c = answer("not json", ROUTE, "");
        assert_eq!(c.state, State::Warn);
        // No IPv6 on this kernel: `ip -6` fails, the IPv4 route is enough.
        let c = network_answer(Ok(ip_addr("UP", UP)), Ok(ROUTE.into()), Err(failed()));
        assert_eq!(c.state, State::Pass);
    }

    fn name(n: &str) -> Result<String, NameError> {
        Ok(n.into())
    }

    fn host(n: &str) -> std::io::Result<String> {
        Ok(n.into())
    }

    #[test]
    fn mdns_name_passes_under_the_hostname() {
        let c = mdns_name_answer(name("macula-0b02"), host("macula-0b02\n"));
        assert_eq!(
            (c.name.as_str(), c.state, c.message.as_str(), &c.mdns),
            (
                "mdns-name",
                State::Pass,
                "announced as macula-0b02.local",
                &None
            )
        );
        // Case and a domain in the hostname do not matter.
        let c = mdns_name_answer(name("Macula-0B02"), host("macula-0b02.example.org"));
        assert_eq!(c.state, State::Pass, "{c:?}");
    }

    #[test]
    fn mdns_name_fails_after_a_conflict() {
        let c = mdns_name_answer(name("macula-0b02-2"), host("macula-0b02\n"));
        assert_eq!(
            (c.state, c.message.as_str()),
            (
                State::Fail,
                "announced as macula-0b02-2.local: the name macula-0b02.local is taken by \
                 another host on the LAN"
            )
        );
        assert_eq!(
            c.mdns,
            Some(MdnsNames {
                hostname: "macula-0b02".into(),
                announced: "macula-0b02-2".into(),
                conflict: true,
            })
        );
        // Not shown in the JSON.
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("conflict"), "{json}");
        // An old name (avahi-daemon not told of a new hostname) fails too.
        let c = mdns_name_answer(name("macula-0b02"), host("edge-one"));
        assert_eq!(
            (c.state, c.message.as_str()),
            (
                State::Fail,
                "announced as macula-0b02.local, not as the hostname edge-one.local"
            )
        );
        assert_eq!(c.mdns.map(|m| m.conflict), Some(false));
    }

    #[test]
    fn mdns_name_cannot_tell_without_avahi() {
        let c = mdns_name_answer(Err(NameError::NoDaemon), host("macula-0b02"));
        assert_eq!(
            (c.state, c.message.as_str()),
            (State::Warn, "cannot tell: avahi-daemon is not running")
        );
        let c = mdns_name_answer(
            Err(NameError::Run(RunError::Failed {
                command: "busctl --system call org.freedesktop.Avahi / …".into(),
                status: "exit status: 1".into(),
                tail: "Failed to connect to bus: No such file or directory".into(),
                log: None,
            })),
            host("macula-0b02"),
        );
        assert_eq!(c.state, State::Warn);
        assert!(
            c.message.starts_with("cannot tell: `busctl")
                && c.message.contains("Failed to connect to bus"),
            "{}",
            c.message
        );
        let c = mdns_name_answer(
            maculaos_discover::name::parse_host_name_reply("i 7\n"),
            host("macula-0b02"),
        );
        assert_eq!(
            (c.state, c.message.as_str()),
            (
                State::Warn,
                "cannot tell: busctl printed `i 7`, not a string"
            )
        );
        let c = mdns_name_answer(
            name("macula-0b02"),
            Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        );
        assert_eq!(c.state, State::Warn);
        assert!(
            c.message
                .starts_with("cannot tell: /proc/sys/kernel/hostname: "),
            "{}",
            c.message
        );
        let d = tempfile::tempdir().unwrap();
        assert_eq!(mdns_name_check(d.path()).state, State::Skip);
    }

    #[test]
    fn data_space_fails_at_the_threshold() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            data_space_check(d.path(), Percent::new(90).unwrap()).state,
            State::Skip
        );
        fs::create_dir(d.path().join("var")).unwrap();
        let used = disk_use(&d.path().join("var")).unwrap();
        let c = data_space_check(d.path(), Percent::new(used.max(1)).unwrap());
        assert_eq!(c.state, State::Fail, "{c:?}");
        assert_eq!(
            c.message,
            format!("/var is {used}% full (fails at {}%)", used.max(1))
        );
        if used < 100 {
            let c = data_space_check(d.path(), Percent::new(used + 1).unwrap());
            assert_eq!(c.state, State::Pass, "{c:?}");
        }
    }

    #[test]
    fn render_aligns_long_names() {
        let text = render(&[
            Check::new("config", State::Pass, "ok"),
            Check::new("data-space", State::Fail, "one\ntwo"),
        ]);
        assert_eq!(
            text,
            "✓ config     ok\n✗ data-space one\n               two\n"
        );
    }

    /// A server on 127.0.0.1 that answers each connection with `response`
    /// (or with nothing, holding the connection, when it is empty).
    fn serve(response: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if response.is_empty() {
                    // Hold the connection until the client gives up.
                    let _ = s.read_to_end(&mut req);
                } else {
                    let _ = s.write_all(response.as_bytes());
                }
            }
        });
        port
    }

    /// A port P held by a listener on 127.0.0.1 for as long as the
    /// listener lives, and the address where nothing answers on it:
    /// 127.0.0.2:P. (A port freed for the test could be taken again at
    /// once, or a connect to it could even reach itself.)
    fn closed_port() -> (TcpListener, u16) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    /// Where nothing listens, while the listener of [`closed_port`] lives.
    const CLOSED_HOST: &str = "127.0.0.2";

    const T: std::time::Duration = std::time::Duration::from_secs(5);

    #[test]
    fn http_checks() {
        let ok = serve("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        let url = format!("http://127.0.0.1:{ok}/health");
        let c = http_check("mesh", &url, T);
        assert_eq!(
            (c.state, c.message.clone()),
            (State::Pass, format!("{url} answered 200 OK"))
        );

        let moved = serve("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let c = http_check("mesh", &format!("http://127.0.0.1:{moved}/"), T);
        assert_eq!(c.state, State::Pass, "{c:?}");
        assert!(c.message.ends_with("answered 302 Found"), "{}", c.message);

        let err = serve(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let url = format!("http://127.0.0.1:{err}/health");
        let c = http_check("mesh", &url, T);
        assert_eq!(
            (c.state, c.message.clone()),
            (
                State::Fail,
                format!("{url} answered 500 Internal Server Error")
            )
        );

        let (_held, closed) = closed_port();
        let url = format!("http://{CLOSED_HOST}:{closed}/health");
        let c = http_check("mesh", &url, T);
        assert_eq!(c.state, State::Fail);
        assert!(c.message.starts_with(&format!("{url}: ")), "{}", c.message);

        let silent = serve("");
        let url = format!("http://127.0.0.1:{silent}/");
        let c = http_check("mesh", &url, std::time::Duration::from_millis(300));
        assert_eq!(
            (c.state, c.message.clone()),
            (State::Fail, format!("{url}: no answer within 300ms"))
        );
    }

    #[test]
    fn tcp_checks() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c = tcp_check("api", "127.0.0.1", port, T);
        assert_eq!(
            (c.state, c.message.clone()),
            (State::Pass, format!("127.0.0.1:{port} accepts connections"))
        );
        let c = tcp_check("api", "localhost", port, T);
        // localhost may resolve to ::1 first; one of its addresses answers.
        assert_eq!(c.state, State::Pass, "{c:?}");
        let (_held, closed) = closed_port();
        let c = tcp_check("api", CLOSED_HOST, closed, T);
        assert_eq!(c.state, State::Fail);
        assert!(
            c.message
                .starts_with(&format!("cannot connect to {CLOSED_HOST}:{closed}: ")),
            "{}",
            c.message
        );
        let c = tcp_check("api", "::1", closed, T);
        assert!(
            c.message
                .starts_with(&format!("cannot connect to [::1]:{closed}")),
            "{}",
            c.message
        );
    }

    #[test]
    fn disk_checks_name_the_path() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("srv/data")).unwrap();
        let path = Path::new("/srv/data");
        let c = disk_check(d.path(), "data", path, Percent::new(100).unwrap());
        assert!(c.message.starts_with("/srv/data is "), "{}", c.message);
        let c = disk_check(
            d.path(),
            "data",
            Path::new("/nope"),
            Percent::new(90).unwrap(),
        );
        assert_eq!(c.state, State::Fail);
        assert!(c.message.starts_with("/nope: "), "{}", c.message);
        let c = probes::usage_check("data", path, 90, Percent::new(90).unwrap());
        assert_eq!(
            (c.state, c.message.as_str()),
            (State::Fail, "/srv/data is 90% full (fails at 90%)")
        );
        let c = probes::usage_check("data", path, 89, Percent::new(90).unwrap());
        assert_eq!(c.state, State::Pass);
        assert_eq!(probes::use_percent(0, 0), 0);
        assert_eq!(probes::use_percent(1, 999), 1);
        assert_eq!(probes::use_percent(899, 101), 90);
        assert_eq!(probes::use_percent(901, 99), 91);
        assert_eq!(probes::use_percent(1000, 0), 100);
        assert_eq!(probes::use_percent(u64::MAX, u64::MAX), 50);
    }

    #[test]
    fn unit_answers() {
        let c = probes::unit_answer("k3s", "k3s.service", Ok(()));
        assert_eq!(
            (c.state, c.message.as_str()),
            (State::Pass, "k3s.service active")
        );
        let failed = |tail: &str| {
            probes::unit_answer(
                "k3s",
                "k3s.service",
                Err(RunError::Failed {
                    command: "systemctl is-active k3s.service".into(),
                    status: "exit status: 3".into(),
                    tail: tail.into(),
                    log: None,
                }),
            )
        };
        assert_eq!(failed("inactive\n").message, "k3s.service is inactive");
        assert_eq!(failed("\nfailed\n").message, "k3s.service is failed");
        assert_eq!(failed("").message, "k3s.service is not active");
        assert_eq!(failed("activating").state, State::Fail);
    }

    #[test]
    fn configured_checks_run_by_type() {
        let (_held, closed) = closed_port();
        let c: maculaos_config::Config = serde_yaml_ng::from_str(&format!(
            "maculaos:
  health:
    checks:
      - {{name: k3s, type: process, process: k3s-server}}
      - {{name: web, type: http, url: 'http://{CLOSED_HOST}:{closed}/', timeout: 2s}}
      - {{name: tmp, type: disk, path: /, threshold: 100%}}
"
        ))
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let checks = configured_checks(d.path(), &c.maculaos.health.checks);
        let got: Vec<(&str, State)> = checks.iter().map(|c| (c.name.as_str(), c.state)).collect();
        assert_eq!(
            got,
            [
                ("k3s", State::Skip),
                ("web", State::Fail),
                ("tmp", State::Pass)
            ],
            "{checks:#?}"
        );
    }
}
