//! `maculaos diag network`: interfaces, default gateway, DNS, the way out
//! to the Internet, time sync.
//!
//! The parsers and the judging are pure functions of what the tools print
//! (or of how a connection went); the functions that run the tools only
//! glue them together.

use crate::config::{self, lookup, strings};
use crate::tools::Tools;
use crate::Line;
use maculaos_runner::RunError;
use serde::Deserialize;
use std::fs;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where updates come from when `maculaos.upgrade.url` is not set (the
/// `github://` source asks the GitHub API).
const DEFAULT_UPDATE_HOST: &str = "api.github.com";
/// The port of the GitHub API and of an `https://` update server.
const HTTPS_PORT: u16 = 443;
const HTTP_PORT: u16 = 80;

/// How long the Internet check waits for the name to resolve, for each
/// connection, and in all: a node without a way out must get its report in
/// seconds, not after the resolver's and TCP's own minutes-long timeouts.
const INTERNET_DNS_TIMEOUT: Duration = Duration::from_secs(3);
const INTERNET_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const INTERNET_BUDGET: Duration = Duration::from_secs(7);
/// Addresses tried: one of each family when the name has both (IPv6 may be
/// announced without working), else the first two.
const INTERNET_MAX_ADDRESSES: usize = 2;

/// systemd-resolved's stub listeners: /etc/resolv.conf points at them, and
/// the servers they ask are in [`RESOLVED_UPSTREAM`].
const RESOLVED_STUBS: &[&str] = &["127.0.0.53", "127.0.0.54"];
pub(crate) const RESOLVED_UPSTREAM: &str = "run/systemd/resolve/resolv.conf";

/// One interface as `ip -j addr` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IfAddrs {
    pub name: String,
    /// `UP`, `DOWN`, `UNKNOWN`…
    pub operstate: String,
    /// Addresses with their prefix (`10.0.2.15/24`), link-local ones left
    /// out: an interface with only those has no working address.
    pub addresses: Vec<String>,
}

impl IfAddrs {
    /// Whether the link is up: `UP`, or `UNKNOWN` as virtual links without
    /// a carrier (tun, WireGuard, PPP) show it. A link set down
    /// (`ip link set eth0 down`) or without carrier is `DOWN`.
    pub fn is_up(&self) -> bool {
        self.operstate.eq_ignore_ascii_case("UP") || self.operstate.eq_ignore_ascii_case("UNKNOWN")
    }

    /// Whether the node can talk through it: up, with an address that is
    /// not link-local.
    pub fn is_usable(&self) -> bool {
        self.is_up() && !self.addresses.is_empty()
    }
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

/// The host (lowercase; an IPv6 address without its brackets) and the
/// port, when one is given, of a URL or peer address
/// (`quic://boot.example.com:4433` → `boot.example.com`, 4433).
fn host_port(s: &str) -> Option<(String, Option<u16>)> {
    let rest = s.split_once("://").map_or(s, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6.split_once(']')?;
            (h, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => (h, Some(port)),
            _ => (hostport, None),
        },
    };
    (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port.and_then(|p| p.parse().ok())))
}

/// Whether a host is a name worth resolving (not an address, not a single
/// label such as `localhost`).
fn is_dns_name(host: &str) -> bool {
    host.parse::<IpAddr>().is_err() && host.contains('.')
}

/// The host of a URL or peer address, if it is a name rather than an address.
fn host_name(s: &str) -> Option<String> {
    host_port(s).map(|(h, _)| h).filter(|h| is_dns_name(h))
}

/// The host and port updates come from: those of an `http://` or
/// `https://` `maculaos.upgrade.url` (80 or 443 unless it gives a port),
/// the GitHub API for `github://` and when no URL is set; None for
/// `file://` (no server at all).
fn update_server(upgrade_url: Option<&str>) -> Option<(String, u16)> {
    let default_port = match upgrade_url {
        None => return Some((DEFAULT_UPDATE_HOST.into(), HTTPS_PORT)),
        Some(u) if u.starts_with("github://") => {
            return Some((DEFAULT_UPDATE_HOST.into(), HTTPS_PORT))
        }
        Some(u) if u.starts_with("https://") => HTTPS_PORT,
        Some(u) if u.starts_with("http://") => HTTP_PORT,
        Some(_) => return None,
    };
    let (host, port) = host_port(upgrade_url?)?;
    Some((host, port.unwrap_or(default_port)))
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
    update_server(upgrade_url)
        .map(|(h, _)| h)
        .filter(|h| is_dns_name(h))
        .map(|h| (h, "where updates come from".into()))
}

/// Where the Internet check connects to: the update server (an airgapped
/// node updating from `file://` still gets the default, and a ✗ that says
/// it has no way out).
fn internet_target(upgrade_url: Option<&str>) -> (String, u16) {
    update_server(upgrade_url).unwrap_or_else(|| (DEFAULT_UPDATE_HOST.into(), HTTPS_PORT))
}

/// How trying to reach a server on the Internet went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reach {
    /// A TCP connection opened to this address.
    Reachable(SocketAddr),
    /// The name gave no address: the resolver's reason.
    NoAddress(String),
    /// No connection opened: each address tried, and why it failed.
    Unreachable(Vec<(SocketAddr, String)>),
}

/// `host:port` as typed (`[fd00::1]:8443`), or the host alone on 443.
fn shown_target(host: &str, port: u16) -> String {
    match (port, host.contains(':')) {
        (HTTPS_PORT, _) => host.to_string(),
        (_, true) => format!("[{host}]:{port}"),
        (_, false) => format!("{host}:{port}"),
    }
}

/// The Internet line for how reaching `host:port` went.
pub(crate) fn internet_line(host: &str, port: u16, reach: &Reach) -> Line {
    const WHAT: &str = "Internet";
    let target = shown_target(host, port);
    match reach {
        Reach::Reachable(_) => Line::pass(WHAT, format!("{target} (reachable)")),
        Reach::NoAddress(why) => Line::fail(
            WHAT,
            format!(
                "{target}: DNS failed ({why}); check the DNS servers above and that \
                 this network lets DNS queries out"
            ),
        ),
        Reach::Unreachable(tried) if tried.is_empty() => {
            Line::fail(WHAT, format!("{target}: no address to connect to"))
        }
        Reach::Unreachable(tried) => {
            let each: Vec<String> = tried.iter().map(|(a, e)| format!("{a} ({e})")).collect();
            Line::fail(
                WHAT,
                format!(
                    "{target}: cannot connect to {}; check the default gateway, any \
                     firewall on the way, and whether this network needs a proxy",
                    each.join(", ")
                ),
            )
        }
    }
}

/// The addresses to try, at most [`INTERNET_MAX_ADDRESSES`]: the first,
/// then the first of the other family if there is one, else the second.
pub(crate) fn pick_addresses(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let other = addrs
        .iter()
        .find(|a| a.is_ipv4() != first.is_ipv4())
        .or_else(|| addrs.get(1));
    std::iter::once(*first)
        .chain(other.copied())
        .take(INTERNET_MAX_ADDRESSES)
        .collect()
}

/// `3s`, `1.5s`.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// A failed connection in a few words: `timed out after 3s`,
/// `connection refused`, `network is unreachable`.
pub(crate) fn connect_error(e: &std::io::Error, timeout: Duration) -> String {
    match e.kind() {
        std::io::ErrorKind::TimedOut => format!("timed out after {}", seconds(timeout)),
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => plain_io_error(e),
    }
}

/// An I/O error without std's ` (os error 101)` and capital letter.
fn plain_io_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut c = text.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Resolve `host` (through the system's resolver, as every program on the
/// node does) within `within`. The lookup cannot be cancelled: when it does
/// not answer in time its thread is left to finish on its own.
fn resolve_within(host: &str, port: u16, within: Duration) -> Result<Vec<SocketAddr>, String> {
    let (tx, rx) = mpsc::channel();
    let target = (host.to_string(), port);
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let _ = tx.send(target.to_socket_addrs().map(Iterator::collect::<Vec<_>>));
        })
        .map_err(|e| format!("could not start resolving: {e}"))?;
    match rx.recv_timeout(within) {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => {
            // std's words around getaddrinfo's: keep getaddrinfo's.
            let text = e.to_string();
            let why = text.strip_prefix("failed to lookup address information: ");
            Err(why.unwrap_or(&text).to_string())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(format!("no answer within {}", seconds(within)))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("the resolver failed".into()),
    }
}

/// Resolve `host` and open a TCP connection to `port`, all within
/// [`INTERNET_BUDGET`].
pub(crate) fn reach(host: &str, port: u16) -> Reach {
    let deadline = Instant::now() + INTERNET_BUDGET;
    let addrs = match resolve_within(host, port, INTERNET_DNS_TIMEOUT) {
        Ok(a) if a.is_empty() => return Reach::NoAddress("no address".into()),
        Ok(a) => a,
        Err(why) => return Reach::NoAddress(why),
    };
    let mut tried = Vec::new();
    for addr in pick_addresses(&addrs) {
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .min(INTERNET_CONNECT_TIMEOUT);
        if timeout < Duration::from_millis(100) {
            break;
        }
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => return Reach::Reachable(addr),
            Err(e) => tried.push((addr, connect_error(&e, timeout))),
        }
    }
    Reach::Unreachable(tried)
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
                match (i.is_up(), addrs.is_empty()) {
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

    let sources = config::sources(root);
    let url = lookup(&sources, "maculaos.upgrade.url").and_then(|(v, _)| config::scalar(v));
    let chosen = match name {
        Some(n) => Some((n.to_string(), String::new())),
        None => {
            let peers = lookup(&sources, "maculaos.mesh.bootstrap_peers")
                .or_else(|| lookup(&sources, "maculaos.mesh.bootstrap_nodes"))
                .map(|(v, _)| strings(v))
                .unwrap_or_default();
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

    let (host, port) = internet_target(url.as_deref());
    lines.push(internet_line(&host, port, &tools.reach(&host, port)));

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
    fn internet_target_is_the_update_server() {
        let t = |u: Option<&str>| internet_target(u);
        assert_eq!(t(None), ("api.github.com".into(), 443));
        assert_eq!(t(Some("github://macula-io/macula-os")).0, "api.github.com");
        assert_eq!(
            t(Some("https://u:pw@Updates.Example.com:8443/x/")),
            ("updates.example.com".into(), 8443)
        );
        assert_eq!(
            t(Some("https://updates.example.com/x/")),
            ("updates.example.com".into(), 443)
        );
        assert_eq!(t(Some("http://10.0.0.1/updates/")), ("10.0.0.1".into(), 80));
        assert_eq!(t(Some("http://[fd00::1]:8080/")), ("fd00::1".into(), 8080));
        // No server to reach: the default says whether there is a way out.
        assert_eq!(
            t(Some("file:///var/updates")),
            ("api.github.com".into(), 443)
        );
    }

    #[test]
    fn internet_is_judged() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            internet_line(
                "api.github.com",
                443,
                &Reach::Reachable(a("140.82.121.6:443"))
            ),
            Line::pass("Internet", "api.github.com (reachable)")
        );
        assert_eq!(
            internet_line(
                "api.github.com",
                443,
                &Reach::NoAddress("Temporary failure in name resolution".into())
            ),
            Line::fail(
                "Internet",
                "api.github.com: DNS failed (Temporary failure in name resolution); \
                 check the DNS servers above and that this network lets DNS queries out"
            )
        );
        let tried = Reach::Unreachable(vec![
            (a("140.82.121.6:443"), "timed out after 3s".into()),
            (a("[2606:50c0::1]:443"), "network is unreachable".into()),
        ]);
        assert_eq!(
            internet_line("api.github.com", 443, &tried),
            Line::fail(
                "Internet",
                "api.github.com: cannot connect to 140.82.121.6:443 (timed out after 3s), \
                 [2606:50c0::1]:443 (network is unreachable); check the default gateway, \
                 any firewall on the way, and whether this network needs a proxy"
            )
        );
        let refused = Reach::Unreachable(vec![(a("10.0.0.1:8080"), "connection refused".into())]);
        let line = internet_line("updates.lan", 8080, &refused);
        assert!(
            line.detail.starts_with(
                "updates.lan:8080: cannot connect to 10.0.0.1:8080 (connection refused); check"
            ),
            "{line}"
        );
        assert_eq!(
            internet_line("fd00::1", 8080, &Reach::Unreachable(vec![])).detail,
            "[fd00::1]:8080: no address to connect to"
        );
    }

    #[test]
    fn one_address_of_each_family_is_tried() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let v4 = a("192.0.2.1:443");
        let v4b = a("192.0.2.2:443");
        let v6 = a("[2001:db8::1]:443");
        let v6b = a("[2001:db8::2]:443");
        assert_eq!(pick_addresses(&[]), []);
        assert_eq!(pick_addresses(&[v4]), [v4]);
        assert_eq!(pick_addresses(&[v6, v6b, v4, v4b]), [v6, v4]);
        assert_eq!(pick_addresses(&[v4, v4b, v6]), [v4, v6]);
        assert_eq!(pick_addresses(&[v4, v4b, a("192.0.2.3:443")]), [v4, v4b]);
    }

    #[test]
    fn connection_errors_in_a_few_words() {
        use std::io::{Error, ErrorKind};
        let t = Duration::from_secs(3);
        assert_eq!(
            connect_error(&Error::from(ErrorKind::TimedOut), t),
            "timed out after 3s"
        );
        assert_eq!(
            connect_error(
                &Error::from(ErrorKind::TimedOut),
                Duration::from_millis(1500)
            ),
            "timed out after 1.5s"
        );
        assert_eq!(
            connect_error(&Error::from(ErrorKind::ConnectionRefused), t),
            "connection refused"
        );
        // ENETUNREACH
        assert_eq!(
            connect_error(&Error::from_raw_os_error(101), t),
            "network is unreachable"
        );
    }

    #[test]
    fn reach_connects_or_says_why_not() {
        // The listener stays bound on 127.0.0.1:P for the whole test, so
        // nobody else can take P there. Nothing listens on 127.0.0.2:P,
        // and a connect to it cannot meet itself (simultaneous open): its
        // source address is 127.0.0.1, not 127.0.0.2. A port freed by
        // dropping a listener could be taken again at once.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(
            reach("127.0.0.1", port),
            Reach::Reachable(SocketAddr::from(([127, 0, 0, 1], port)))
        );
        match reach("127.0.0.2", port) {
            Reach::Unreachable(tried) => {
                assert_eq!(tried.len(), 1);
                assert_eq!(tried[0].0, SocketAddr::from(([127, 0, 0, 2], port)));
                assert_eq!(tried[0].1, "connection refused");
            }
            other => panic!("{other:?}"),
        }
        drop(l);
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
        assert!(
            text.contains("✗ Internet: api.github.com: DNS failed (not tried in tests)"),
            "{text}"
        );
    }

    #[test]
    fn the_internet_line_follows_the_update_url() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join(config::NODE_CONFIG);
        fs::create_dir_all(cfg.parent().unwrap()).unwrap();
        fs::write(
            &cfg,
            "maculaos:\n  upgrade:\n    url: https://updates.example.com/stable/\n",
        )
        .unwrap();
        let tools = Tools::with_path(d.path().join("no-bin"))
            .with_internet(Reach::Reachable("192.0.2.7:443".parse().unwrap()));
        let lines = network_with(d.path(), &tools, None);
        let internet: Vec<&Line> = lines.iter().filter(|l| l.what == "Internet").collect();
        assert_eq!(
            internet,
            [&Line::pass("Internet", "updates.example.com (reachable)")]
        );
        // After the DNS lines, before time sync.
        let whats: Vec<&str> = lines.iter().map(|l| l.what.as_str()).collect();
        assert_eq!(
            whats[whats.len() - 3..],
            ["DNS resolution", "Internet", "Time sync"]
        );
    }
}
