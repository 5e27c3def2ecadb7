//! `maculaos diag network`: interfaces, default gateway, DNS, time sync.
//!
//! The parsers are pure functions of what the tools print; the functions
//! that run the tools only glue them together.

use crate::config::{self, lookup, strings};
use crate::tools::Tools;
use crate::Line;
use maculaos_runner::RunError;
use serde::Deserialize;
use std::fs;
use std::net::IpAddr;
use std::path::Path;

/// Where updates come from when `maculaos.upgrade.url` is not set (the
/// `github://` source asks the GitHub API).
const DEFAULT_UPDATE_HOST: &str = "api.github.com";

/// systemd-resolved's stub listeners: /etc/resolv.conf points at them, and
/// the servers they ask are in [`RESOLVED_UPSTREAM`].
const RESOLVED_STUBS: &[&str] = &["127.0.0.53", "127.0.0.54"];
const RESOLVED_UPSTREAM: &str = "run/systemd/resolve/resolv.conf";

/// One interface as `ip -j addr` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddrs {
    pub name: String,
    /// `UP`, `DOWN`, `UNKNOWN`…
    pub operstate: String,
    /// Addresses with their prefix (`10.0.2.15/24`), link-local ones left
    /// out: an interface with only those has no working address.
    pub addresses: Vec<String>,
}

#[derive(Deserialize)]
struct IpLink {
    ifname: Option<String>,
    operstate: Option<String>,
    #[serde(default)]
    addr_info: Vec<IpAddr_>,
}

#[derive(Deserialize)]
#[allow(non_camel_case_types)]
struct IpAddr_ {
    local: Option<String>,
    prefixlen: Option<u8>,
    scope: Option<String>,
}

/// Parse `ip -j addr`.
pub fn parse_ip_addr(json: &str) -> Result<Vec<IfAddrs>, serde_json::Error> {
    let links: Vec<IpLink> = serde_json::from_str(json)?;
    Ok(links
        .into_iter()
        .filter_map(|l| {
            Some(IfAddrs {
                name: l.ifname?,
                operstate: l.operstate.unwrap_or_else(|| "UNKNOWN".into()),
                addresses: l
                    .addr_info
                    .into_iter()
                    .filter(|a| a.scope.as_deref() != Some("link"))
                    .filter_map(|a| {
                        let local = a.local?;
                        Some(match a.prefixlen {
                            Some(p) => format!("{local}/{p}"),
                            None => local,
                        })
                    })
                    .collect(),
            })
        })
        .collect())
}

/// One default route as `ip -j route show default` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    /// None for a route straight onto a link (a VPN, point-to-point).
    pub gateway: Option<String>,
    pub dev: Option<String>,
}

/// Parse `ip -j route show default` (an empty output is no route).
pub fn parse_default_routes(json: &str) -> Result<Vec<Route>, serde_json::Error> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(json)
}

/// The `nameserver` entries of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then(|| w.next().map(str::to_string))?
        })
        .collect()
}

/// The addresses `getent hosts NAME` printed.
pub fn parse_getent_hosts(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Whether an /etc/hosts names `name` (then resolving it does not ask DNS).
pub fn hosts_file_has(hosts: &str, name: &str) -> bool {
    hosts.lines().any(|l| {
        let l = l.split('#').next().unwrap_or("");
        l.split_whitespace()
            .skip(1)
            .any(|n| n.eq_ignore_ascii_case(name))
    })
}

/// `timedatectl show -p NTPSynchronized --value`: `yes` or `no`.
pub fn parse_ntp_synchronized(out: &str) -> Option<bool> {
    match out.trim() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// The host of a URL or peer address (`quic://boot.example.com:4433` →
/// `boot.example.com`), if it is a name rather than an address.
fn host_name(s: &str) -> Option<String> {
    let rest = s.split_once("://").map_or(s, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hostport.starts_with('[') {
        return None; // [IPv6]:port
    }
    let host = match hostport.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => hostport,
    };
    (!host.is_empty() && host.parse::<IpAddr>().is_err() && host.contains('.'))
        .then(|| host.to_ascii_lowercase())
}

/// The name to resolve when none is given: the first bootstrap peer given
/// by name, else the host updates come from. Returns the name and why it
/// was chosen; None when the node is configured to need no name at all.
pub fn default_resolve_name(
    bootstrap_peers: &[String],
    upgrade_url: Option<&str>,
) -> Option<(String, String)> {
    if let Some(h) = bootstrap_peers.iter().find_map(|p| host_name(p)) {
        return Some((h, "first bootstrap peer".into()));
    }
    match upgrade_url {
        None => Some((DEFAULT_UPDATE_HOST.into(), "where updates come from".into())),
        Some(u) if u.starts_with("github://") => {
            Some((DEFAULT_UPDATE_HOST.into(), "where updates come from".into()))
        }
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
            host_name(u).map(|h| (h, "where updates come from".into()))
        }
        Some(_) => None,
    }
}

/// A short reason for a line: `ip is not installed`, `exit code 2: …`.
pub(crate) fn brief(e: &RunError) -> String {
    match e {
        RunError::NotFound { program, .. } => format!("{program} is not installed"),
        RunError::Failed { status, tail, .. } => {
            match tail.lines().find(|l| !l.trim().is_empty()) {
                Some(l) => format!("{status}: {}", l.trim()),
                None => status.clone(),
            }
        }
        RunError::Io { source, .. } => source.to_string(),
    }
}

/// The interfaces of /sys/class/net (name, operstate), sorted.
fn sys_interfaces(root: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = fs::read_dir(root.join("sys/class/net"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let state = fs::read_to_string(e.path().join("operstate"))
                        .map(|s| s.trim().to_string())
                        .unwrap_or_else(|_| "unknown".into());
                    (name, state)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One line per interface (lo left out; the veth pairs of pods counted,
/// not listed), and a ✗ when none is up with an address.
pub(crate) fn interface_lines(
    sys: &[(String, String)],
    ip: &Result<Vec<IfAddrs>, String>,
) -> Vec<Line> {
    let names: Vec<(String, String)> = match (sys.is_empty(), ip) {
        (false, _) => sys.to_vec(),
        (true, Ok(ip)) => ip
            .iter()
            .map(|i| (i.name.clone(), i.operstate.clone()))
            .collect(),
        (true, Err(_)) => Vec::new(),
    };
    let mut lines = Vec::new();
    let mut veth = 0;
    for (name, sys_state) in names.iter().filter(|(n, _)| n != "lo") {
        if name.starts_with("veth") {
            veth += 1;
            continue;
        }
        let what = format!("Interface {name}");
        let found = ip
            .as_ref()
            .ok()
            .and_then(|ip| ip.iter().find(|i| &i.name == name));
        let state = found
            .map(|i| i.operstate.clone())
            .unwrap_or_else(|| sys_state.clone())
            .to_ascii_uppercase();
        let line = match (ip, found) {
            (Err(e), _) => Line::info(what, format!("{state}, addresses unknown ({e})")),
            (Ok(_), None) => Line::info(what, format!("{state}, not shown by `ip addr`")),
            (Ok(_), Some(i)) => {
                let addrs = i.addresses.join(", ");
                let up = state == "UP" || state == "UNKNOWN";
                match (up, addrs.is_empty()) {
                    (true, false) => Line::pass(what, format!("{state}, {addrs}")),
                    (true, true) if state == "UP" => Line::fail(what, "UP, no address"),
                    (_, true) => Line::info(what, state),
                    (false, false) => Line::info(what, format!("{state}, {addrs}")),
                }
            }
        };
        lines.push(line);
    }
    if lines.is_empty() {
        lines.push(Line::fail(
            "Network",
            "no network interface found (besides lo)",
        ));
    } else if ip.is_ok() && !lines.iter().any(|l| l.ok == Some(true)) {
        // (Without `ip`, the lines above already say the addresses are unknown.)
        lines.push(Line::fail("Network", "no interface is up with an address"));
    }
    if veth > 0 {
        lines.push(Line::info(
            "Pod interfaces",
            format!("{veth} veth interface(s) not listed"),
        ));
    }
    lines
}

/// How pinging the gateway went.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ping {
    Answered,
    NoAnswer,
    Missing,
    Error(String),
}

pub(crate) fn gateway_lines(
    routes: &Result<Vec<Route>, String>,
    mut ping: impl FnMut(&str) -> Ping,
) -> Vec<Line> {
    const WHAT: &str = "Default gateway";
    let routes = match routes {
        Err(e) => return vec![Line::info(WHAT, format!("not checked: {e}"))],
        Ok(r) if r.is_empty() => return vec![Line::fail(WHAT, "none (no default route)")],
        Ok(r) => r,
    };
    routes
        .iter()
        .map(|r| {
            let via = r
                .dev
                .as_deref()
                .map(|d| format!(" via {d}"))
                .unwrap_or_default();
            match &r.gateway {
                None => Line::info(
                    WHAT,
                    format!("route straight onto the link{via} (no gateway to ping)"),
                ),
                Some(gw) => match ping(gw) {
                    Ping::Answered => Line::pass(WHAT, format!("{gw}{via} (reachable)")),
                    Ping::NoAnswer => Line::fail(WHAT, format!("{gw}{via} (no answer to ping)")),
                    Ping::Missing => Line::info(
                        WHAT,
                        format!("{gw}{via} (not checked: ping is not installed)"),
                    ),
                    Ping::Error(e) => Line::info(WHAT, format!("{gw}{via} (not checked: {e})")),
                },
            }
        })
        .collect()
}

/// The nameservers in use: those of /etc/resolv.conf, or, when it points at
/// systemd-resolved's stub, the servers resolved asks.
pub(crate) fn dns_line(etc: Option<&str>, upstream: Option<&str>) -> Line {
    const WHAT: &str = "DNS";
    let etc_servers = etc.map(parse_resolv_conf).unwrap_or_default();
    let only_stub = !etc_servers.is_empty()
        && etc_servers
            .iter()
            .all(|s| RESOLVED_STUBS.contains(&s.as_str()));
    if !only_stub {
        return if etc_servers.is_empty() {
            Line::fail(WHAT, "no nameserver configured (/etc/resolv.conf has none)")
        } else {
            Line::pass(
                WHAT,
                format!("{} (/etc/resolv.conf)", etc_servers.join(", ")),
            )
        };
    }
    match upstream.map(parse_resolv_conf) {
        Some(up) if !up.is_empty() => {
            Line::pass(WHAT, format!("{} (through systemd-resolved)", up.join(", ")))
        }
        Some(_) => Line::fail(WHAT, "no nameserver configured (systemd-resolved knows none)"),
        None => Line::info(
            WHAT,
            format!(
                "{} (systemd-resolved's stub; /{RESOLVED_UPSTREAM} is missing, so its servers are unknown)",
                etc_servers.join(", ")
            ),
        ),
    }
}

pub(crate) fn resolve_line(
    name: &str,
    why: &str,
    in_hosts_file: bool,
    getent: impl FnOnce() -> Result<String, RunError>,
) -> Line {
    const WHAT: &str = "DNS resolution";
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(" ({why})")
    };
    if in_hosts_file {
        return Line::info(WHAT, format!("{name}{why} is in /etc/hosts: DNS not asked"));
    }
    match getent() {
        Ok(out) => {
            let addrs = parse_getent_hosts(&out);
            if addrs.is_empty() {
                Line::fail(WHAT, format!("{name}{why} does not resolve"))
            } else {
                Line::pass(WHAT, format!("{name} → {}{why}", addrs.join(", ")))
            }
        }
        // getent: 2 = not found.
        Err(e) if e.exit_code() == Some(2) => {
            Line::fail(WHAT, format!("{name}{why} does not resolve"))
        }
        Err(e @ RunError::NotFound { .. }) => {
            Line::info(WHAT, format!("{name}{why} not checked: {}", brief(&e)))
        }
        Err(e) => Line::fail(WHAT, format!("{name}{why}: {}", brief(&e))),
    }
}

pub(crate) fn time_line(out: Result<String, RunError>) -> Line {
    const WHAT: &str = "Time sync";
    match out.as_deref().map(parse_ntp_synchronized) {
        Ok(Some(true)) => Line::pass(WHAT, "synchronized (NTP)"),
        Ok(Some(false)) => Line::fail(
            WHAT,
            "not synchronized (no NTP server answered? see maculaos.ntp.servers)",
        ),
        Ok(None) => Line::info(
            WHAT,
            format!(
                "unknown (timedatectl said `{}`)",
                out.as_deref().unwrap_or_default().trim()
            ),
        ),
        Err(e) => Line::info(WHAT, format!("not checked: {}", brief(e))),
    }
}

/// `maculaos diag network`, resolving the default name (see
/// [`default_resolve_name`]).
pub fn network(root: &Path) -> Vec<Line> {
    network_with(root, &Tools::system(), None)
}

/// `maculaos diag network`, resolving `name` if given.
pub fn network_resolving(root: &Path, name: Option<&str>) -> Vec<Line> {
    network_with(root, &Tools::system(), name)
}

pub(crate) fn network_with(root: &Path, tools: &Tools, name: Option<&str>) -> Vec<Line> {
    let ip = |args: &[&str]| tools.output("ip", args).map_err(|e| brief(&e));
    let addrs = ip(&["-j", "addr"])
        .and_then(|o| parse_ip_addr(&o).map_err(|e| format!("`ip -j addr` output: {e}")));
    let mut lines = interface_lines(&sys_interfaces(root), &addrs);

    let routes = ip(&["-j", "route", "show", "default"])
        .and_then(|o| parse_default_routes(&o).map_err(|e| format!("`ip -j route` output: {e}")));
    lines.extend(gateway_lines(&routes, |gw| {
        if !tools.have("ping") {
            return Ping::Missing;
        }
        match tools.output("ping", &["-c1", "-W2", gw]) {
            Ok(_) => Ping::Answered,
            // ping: 1 = no reply, 2 = any other error (permissions…).
            Err(e) if e.exit_code() == Some(1) => Ping::NoAnswer,
            Err(RunError::NotFound { .. }) => Ping::Missing,
            Err(e) => Ping::Error(brief(&e)),
        }
    }));

    let read = |p: &str| fs::read_to_string(root.join(p)).ok();
    lines.push(dns_line(
        read("etc/resolv.conf").as_deref(),
        read(RESOLVED_UPSTREAM).as_deref(),
    ));

    let chosen = match name {
        Some(n) => Some((n.to_string(), String::new())),
        None => {
            let sources = config::sources(root);
            let peers = lookup(&sources, "maculaos.mesh.bootstrap_peers")
                .or_else(|| lookup(&sources, "maculaos.mesh.bootstrap_nodes"))
                .map(|(v, _)| strings(v))
                .unwrap_or_default();
            let url = lookup(&sources, "maculaos.upgrade.url").and_then(|(v, _)| config::scalar(v));
            default_resolve_name(&peers, url.as_deref())
        }
    };
    match chosen {
        Some((n, why)) => {
            let hosts = read("etc/hosts").unwrap_or_default();
            lines.push(resolve_line(&n, &why, hosts_file_has(&hosts, &n), || {
                tools.output("getent", &["hosts", &n])
            }));
        }
        None => lines.push(Line::info(
            "DNS resolution",
            "not checked: no name to resolve (no bootstrap peer or update server given by name)",
        )),
    }

    lines.push(time_line(tools.output(
        "timedatectl",
        &["show", "-p", "NTPSynchronized", "--value"],
    )));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP_ADDR: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN","group":"default","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"::1","prefixlen":128,"scope":"host","noprefixroute":true,"valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"qdisc":"fq_codel","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"52:54:00:12:34:56","broadcast":"ff:ff:ff:ff:ff:ff","altnames":["enp0s3"],"addr_info":[{"family":"inet","local":"10.0.2.15","prefixlen":24,"broadcast":"10.0.2.255","scope":"global","dynamic":true,"label":"eth0","valid_life_time":86313,"preferred_life_time":86313},{"family":"inet6","local":"fec0::5054:ff:fe12:3456","prefixlen":64,"scope":"site","dynamic":true,"mngtmpaddr":true,"valid_life_time":86315,"preferred_life_time":14315},{"family":"inet6","local":"fe80::5054:ff:fe12:3456","prefixlen":64,"scope":"link","valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":3,"ifname":"eth1","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],"mtu":1500,"qdisc":"fq_codel","operstate":"DOWN","group":"default","txqlen":1000,"link_type":"ether","address":"52:54:00:12:34:57","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[]},{"ifindex":4,"ifname":"eth2","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"operstate":"UP","addr_info":[{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]},{},{"ifindex":9,"ifname":"veth1a2b","operstate":"UP","addr_info":[]}]"#;

    fn sys(names: &[(&str, &str)]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn ip_addr_is_parsed() {
        let v = parse_ip_addr(IP_ADDR).unwrap();
        assert_eq!(v.len(), 5, "the empty object is skipped");
        assert_eq!(v[1].name, "eth0");
        assert_eq!(v[1].operstate, "UP");
        assert_eq!(
            v[1].addresses,
            ["10.0.2.15/24", "fec0::5054:ff:fe12:3456/64"]
        );
        assert!(v[3].addresses.is_empty(), "link-local only");
        assert!(parse_ip_addr("not json").is_err());
    }

    #[test]
    fn interfaces_are_judged() {
        let ip = Ok(parse_ip_addr(IP_ADDR).unwrap());
        let s = sys(&[
            ("eth0", "up"),
            ("eth1", "down"),
            ("eth2", "up"),
            ("lo", "unknown"),
            ("veth1a2b", "up"),
        ]);
        let lines = interface_lines(&s, &ip);
        assert_eq!(
            crate::render(&lines),
            "  ✓ Interface eth0: UP, 10.0.2.15/24, fec0::5054:ff:fe12:3456/64\n  \
             - Interface eth1: DOWN\n  \
             ✗ Interface eth2: UP, no address\n  \
             - Pod interfaces: 1 veth interface(s) not listed\n"
        );
    }

    #[test]
    fn no_usable_interface_fails() {
        let ip = Ok(vec![IfAddrs {
            name: "eth0".into(),
            operstate: "DOWN".into(),
            addresses: vec![],
        }]);
        // Without /sys/class/net, the interfaces `ip` knows.
        let lines = interface_lines(&[], &ip);
        assert_eq!(lines[0], Line::info("Interface eth0", "DOWN"));
        assert_eq!(
            lines[1],
            Line::fail("Network", "no interface is up with an address")
        );
        // `ip` missing: the interfaces are listed, nothing is judged.
        let lines = interface_lines(&sys(&[("eth0", "up")]), &Err("ip is not installed".into()));
        assert_eq!(
            lines,
            [Line::info(
                "Interface eth0",
                "UP, addresses unknown (ip is not installed)"
            )]
        );
        let lines = interface_lines(
            &sys(&[("lo", "unknown")]),
            &Err("ip is not installed".into()),
        );
        assert_eq!(
            lines,
            [Line::fail(
                "Network",
                "no network interface found (besides lo)"
            )]
        );
    }

    #[test]
    fn default_routes_are_parsed() {
        let r = parse_default_routes(
            r#"[{"dst":"default","gateway":"10.0.2.2","dev":"eth0","protocol":"dhcp","prefsrc":"10.0.2.15","metric":1024,"flags":[]}]"#,
        )
        .unwrap();
        assert_eq!(
            r,
            [Route {
                gateway: Some("10.0.2.2".into()),
                dev: Some("eth0".into())
            }]
        );
        assert_eq!(parse_default_routes("[]\n").unwrap(), []);
        assert_eq!(parse_default_routes("").unwrap(), []);
        let r =
            parse_default_routes(r#"[{"dst":"default","dev":"wg0","scope":"link","flags":[]}]"#)
                .unwrap();
        assert_eq!(r[0].gateway, None);
    }

    #[test]
    fn gateway_lines_say_how_ping_went() {
        let r = Ok(vec![Route {
            gateway: Some("10.0.2.2".into()),
            dev: Some("eth0".into()),
        }]);
        let one = |p: Ping| gateway_lines(&r, |_| p.clone()).remove(0);
        assert_eq!(
            one(Ping::Answered),
            Line::pass("Default gateway", "10.0.2.2 via eth0 (reachable)")
        );
        assert_eq!(
            one(Ping::NoAnswer),
            Line::fail("Default gateway", "10.0.2.2 via eth0 (no answer to ping)")
        );
        assert_eq!(
            one(Ping::Missing),
            Line::info(
                "Default gateway",
                "10.0.2.2 via eth0 (not checked: ping is not installed)"
            )
        );
        assert_eq!(
            gateway_lines(&Ok(vec![]), |_| Ping::Answered),
            [Line::fail("Default gateway", "none (no default route)")]
        );
        assert_eq!(
            gateway_lines(&Err("ip is not installed".into()), |_| Ping::Answered)[0].ok,
            None
        );
    }

    #[test]
    fn resolv_conf_is_parsed() {
        let t = "# generated\nnameserver 10.0.2.3\nnameserver  1.1.1.1 \nsearch lan\nnameserver\n";
        assert_eq!(parse_resolv_conf(t), ["10.0.2.3", "1.1.1.1"]);
    }

    #[test]
    fn dns_follows_the_stub_to_resolved() {
        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n";
        assert_eq!(
            dns_line(Some(stub), Some("nameserver 10.0.2.3\n")),
            Line::pass("DNS", "10.0.2.3 (through systemd-resolved)")
        );
        assert_eq!(
            dns_line(Some(stub), Some("# no servers\n")),
            Line::fail(
                "DNS",
                "no nameserver configured (systemd-resolved knows none)"
            )
        );
        assert_eq!(dns_line(Some(stub), None).ok, None);
        assert_eq!(
            dns_line(Some("nameserver 1.1.1.1\n"), Some("nameserver 10.0.2.3\n")),
            Line::pass("DNS", "1.1.1.1 (/etc/resolv.conf)")
        );
        assert_eq!(dns_line(None, None).ok, Some(false));
    }

    #[test]
    fn resolution_is_judged() {
        let ok = resolve_line("api.github.com", "where updates come from", false, || {
            Ok("140.82.121.6    api.github.com\n".into())
        });
        assert_eq!(
            ok,
            Line::pass(
                "DNS resolution",
                "api.github.com → 140.82.121.6 (where updates come from)"
            )
        );
        let not_found = resolve_line("nope.invalid", "", false, || {
            Err(RunError::Failed {
                command: "getent hosts nope.invalid".into(),
                status: "exit code 2".into(),
                tail: String::new(),
                log: None,
            })
        });
        assert_eq!(
            not_found,
            Line::fail("DNS resolution", "nope.invalid does not resolve")
        );
        let hosts = resolve_line("boot.lan", "", true, || unreachable!());
        assert_eq!(hosts.ok, None);
        assert!(hosts.detail.contains("/etc/hosts"));
    }

    #[test]
    fn hosts_file_lookup() {
        let h = "127.0.0.1 localhost\n10.0.0.5 boot.lan boot # the bootstrap\n# 10.0.0.6 old.lan\n";
        assert!(hosts_file_has(h, "boot.lan"));
        assert!(hosts_file_has(h, "BOOT"));
        assert!(!hosts_file_has(h, "old.lan"));
        assert!(!hosts_file_has(h, "10.0.0.5"));
    }

    #[test]
    fn name_to_resolve() {
        let peers = vec![
            "quic://203.0.113.10:4433".to_string(),
            "quic://Boot.Macula.io:4433".to_string(),
        ];
        assert_eq!(
            default_resolve_name(&peers, None),
            Some(("boot.macula.io".into(), "first bootstrap peer".into()))
        );
        assert_eq!(default_resolve_name(&[], None).unwrap().0, "api.github.com");
        assert_eq!(
            default_resolve_name(&[], Some("https://user:pw@updates.example.com:8443/x/"))
                .unwrap()
                .0,
            "updates.example.com"
        );
        assert_eq!(default_resolve_name(&[], Some("file:///var/updates")), None);
        assert_eq!(
            default_resolve_name(&["[2001:db8::1]:4433".into()], Some("http://10.0.0.1/")),
            None
        );
    }

    #[test]
    fn time_sync() {
        assert_eq!(parse_ntp_synchronized("yes\n"), Some(true));
        assert_eq!(parse_ntp_synchronized("no\n"), Some(false));
        assert_eq!(parse_ntp_synchronized(""), None);
        assert_eq!(
            time_line(Ok("yes\n".into())),
            Line::pass("Time sync", "synchronized (NTP)")
        );
        assert_eq!(time_line(Ok("no\n".into())).ok, Some(false));
        let missing = time_line(Err(RunError::NotFound {
            program: "timedatectl".into(),
            hint: String::new(),
        }));
        assert_eq!(
            missing,
            Line::info("Time sync", "not checked: timedatectl is not installed")
        );
    }

    #[test]
    fn without_any_tool_every_check_says_so() {
        let d = tempfile::tempdir().unwrap();
        let lines = network_with(
            d.path(),
            &Tools::with_path(d.path().join("no-bin")),
            Some("example.org"),
        );
        let text = crate::render(&lines);
        assert!(
            text.contains("✗ Network: no network interface found (besides lo)"),
            "{text}"
        );
        assert!(
            text.contains("- Default gateway: not checked: ip is not installed"),
            "{text}"
        );
        assert!(text.contains("✗ DNS: no nameserver configured"), "{text}");
        assert!(
            text.contains("- DNS resolution: example.org not checked: getent is not installed"),
            "{text}"
        );
        assert!(
            text.contains("- Time sync: not checked: timedatectl is not installed"),
            "{text}"
        );
    }
}
