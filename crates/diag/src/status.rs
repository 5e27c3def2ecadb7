//! `maculaos network status`: the node's network as data (interfaces,
//! routes, DNS servers, the WireGuard overlay with its peers' last
//! handshakes, the firewall in force) and the checks of `diag network`.
//! `--json` prints [`NetworkStatus`]; the text is for people.

use crate::config::{self, lookup};
use crate::network::{network_with, parse_ip_addr, parse_resolv_conf, IfAddrs, RESOLVED_UPSTREAM};
use crate::tools::Tools;
use crate::Line;
use maculaos_firewall::Applied;
use maculaos_wireguard::{parse_dump, PeerState};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// The interface `maculaos.mesh.wireguard` makes when it names none.
const WG_DEFAULT: &str = "wg-macula";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkStatus {
    /// Every link but loopback, with its addresses (link-local left out).
    pub interfaces: Vec<IfAddrs>,
    /// The main routing table, IPv4 then IPv6.
    pub routes: Vec<RouteEntry>,
    /// The DNS servers the node asks (systemd-resolved's upstream ones).
    pub dns: Vec<String>,
    /// The overlay, when the configuration turns it on.
    pub wireguard: Option<WgStatus>,
    /// What apply loaded (`None`: no firewall was loaded on this boot).
    pub firewall: Option<Applied>,
    /// The checks of `maculaos diag network`.
    pub checks: Vec<Line>,
}

/// One route as `ip -j route` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    /// `default`, or a network (`10.0.2.0/24`).
    #[serde(rename(deserialize = "dst"))]
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// Parse `ip -j route` (empty: no route).
pub fn parse_routes(json: &str) -> Result<Vec<RouteEntry>, serde_json::Error> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(json)
}

/// The overlay interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WgStatus {
    pub interface: String,
    /// The link exists and is up.
    pub up: bool,
    pub addresses: Vec<String>,
    pub public_key: Option<String>,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerState>,
    /// Why the above is missing, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The overlay's name when the configuration turns it on (raw YAML, as
/// the other checks read it: a configuration that does not load still gets
/// its network shown).
fn wireguard_interface(root: &Path) -> Option<String> {
    let sources = config::sources(root);
    let on = lookup(&sources, "maculaos.mesh.wireguard.enabled")
        .and_then(|(v, _)| config::scalar(v))
        .is_some_and(|v| v == "true");
    if !on {
        return None;
    }
    Some(
        lookup(&sources, "maculaos.mesh.wireguard.interface")
            .or_else(|| lookup(&sources, "maculaos.mesh.wireguard.mesh_interface"))
            .and_then(|(v, _)| config::scalar(v))
            .unwrap_or_else(|| WG_DEFAULT.to_string()),
    )
}

fn wg_status(tools: &Tools, name: &str, interfaces: &[IfAddrs]) -> WgStatus {
    let link = interfaces.iter().find(|i| i.name == name);
    let mut s = WgStatus {
        interface: name.to_string(),
        up: link.is_some_and(IfAddrs::is_up),
        addresses: link.map(|l| l.addresses.clone()).unwrap_or_default(),
        public_key: None,
        listen_port: None,
        peers: Vec::new(),
        error: None,
    };
    if link.is_none() {
        s.error = Some(format!(
            "{name} does not exist: `maculaos apply` makes it (its errors say why not)"
        ));
        return s;
    }
    match tools.output("wg", &["show", name, "dump"]) {
        Ok(out) => match parse_dump(&out) {
            Some(d) => {
                s.public_key = Some(d.public_key);
                s.listen_port = Some(d.listen_port);
                s.peers = d.peers;
            }
            None => s.error = Some("`wg show dump` printed something else".into()),
        },
        Err(e) => s.error = Some(format!("wg show: {}", crate::network::brief(&e))),
    }
    s
}

/// The whole status of the node under `root`.
pub fn network_status(root: &Path, resolve: Option<&str>) -> NetworkStatus {
    let tools = Tools::system();
    let interfaces: Vec<IfAddrs> = tools
        .output("ip", &["-j", "addr"])
        .ok()
        .and_then(|o| parse_ip_addr(&o).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.name != "lo")
        .collect();
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        if let Some(r) = tools
            .output("ip", &["-j", family, "route"])
            .ok()
            .and_then(|o| parse_routes(&o).ok())
        {
            routes.extend(r);
        }
    }
    let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
    let dns = read(RESOLVED_UPSTREAM)
        .map(|t| parse_resolv_conf(&t))
        .filter(|v| !v.is_empty())
        .or_else(|| read("etc/resolv.conf").map(|t| parse_resolv_conf(&t)))
        .unwrap_or_default();
    let wireguard = wireguard_interface(root).map(|n| wg_status(&tools, &n, &interfaces));
    let firewall = read(maculaos_firewall::STATE_PATH.trim_start_matches('/'))
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut checks = network_with(root, &tools, resolve);
    if let Some(w) = &wireguard {
        checks.push(wg_line(w));
    }
    NetworkStatus {
        interfaces,
        routes,
        dns,
        wireguard,
        firewall,
        checks,
    }
}

/// ✓ when the overlay is up with an address, ✗ otherwise.
fn wg_line(w: &WgStatus) -> Line {
    let what = format!("WireGuard {}", w.interface);
    match (&w.error, w.up, w.addresses.first()) {
        (Some(e), _, _) => Line::fail(what, e.clone()),
        (None, true, Some(a)) => Line::pass(what, format!("up, {a}, {} peers", w.peers.len())),
        (None, false, _) => Line::fail(what, "down"),
        (None, true, None) => Line::fail(what, "up without an address"),
    }
}

/// How long ago `t` (Unix seconds) was, in words.
fn ago(t: u64, now: u64) -> String {
    let s = now.saturating_sub(t);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// The text of `maculaos network status`: the checks, then the overlay's
/// peers, the routes, the DNS servers and the firewall in a few lines.
pub fn render_status(s: &NetworkStatus, now: u64) -> String {
    let mut out = crate::render(&s.checks);
    if let Some(w) = &s.wireguard {
        let _ = writeln!(
            out,
            "WireGuard {}: key {}, port {}",
            w.interface,
            w.public_key.as_deref().unwrap_or("unknown"),
            w.listen_port.map_or("unknown".into(), |p| p.to_string())
        );
        if w.peers.is_empty() {
            let _ = writeln!(out, "  no peers (maculaos.mesh.wireguard.peers)");
        }
        for p in &w.peers {
            let _ = writeln!(
                out,
                "  peer {} at {}, {}; last handshake {}; {} B in, {} B out",
                p.public_key,
                p.endpoint.as_deref().unwrap_or("(not known yet)"),
                p.allowed_ips.join(", "),
                p.latest_handshake.map_or("never".into(), |t| ago(t, now)),
                p.rx_bytes,
                p.tx_bytes
            );
        }
    }
    let _ = writeln!(out, "Routes:");
    for r in &s.routes {
        let mut l = format!("  {}", r.destination);
        if let Some(g) = &r.gateway {
            let _ = write!(l, " via {g}");
        }
        if let Some(d) = &r.dev {
            let _ = write!(l, " dev {d}");
        }
        let _ = writeln!(out, "{l}");
    }
    let _ = writeln!(
        out,
        "DNS servers: {}",
        if s.dns.is_empty() {
            "none".to_string()
        } else {
            s.dns.join(", ")
        }
    );
    let _ = match &s.firewall {
        None => writeln!(out, "Firewall: none loaded on this boot"),
        Some(f) if !f.enabled => writeln!(out, "Firewall: off"),
        Some(f) => writeln!(
            out,
            "Firewall: on, policy {}; open: {}{} (`maculaos firewall show` says why)",
            f.policy,
            f.openings
                .iter()
                .map(|o| o.port.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            f.overlay
                .as_ref()
                .map(|i| format!(", all of {i}"))
                .unwrap_or_default()
        ),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_parsed() {
        let r = parse_routes(
            r#"[{"dst":"default","gateway":"10.0.2.2","dev":"eth0","protocol":"dhcp"},{"dst":"10.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.0.2.15"}]"#,
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].destination, "default");
        assert_eq!(r[0].gateway.as_deref(), Some("10.0.2.2"));
        assert_eq!(r[1].gateway, None);
        assert!(parse_routes("").unwrap().is_empty());
        let j = serde_json::to_value(&r[0]).unwrap();
        assert_eq!(j["destination"], "default");
    }

    #[test]
    fn the_text_says_peers_routes_dns_and_firewall() {
        let s = NetworkStatus {
            interfaces: vec![],
            routes: vec![RouteEntry {
                destination: "default".into(),
                gateway: Some("10.0.2.2".into()),
                dev: Some("eth0".into()),
            }],
            dns: vec!["10.0.2.3".into()],
            wireguard: Some(WgStatus {
                interface: "wg-macula".into(),
                up: true,
                addresses: vec!["fd00::1/64".into()],
                public_key: Some("KEY".into()),
                listen_port: Some(51820),
                peers: vec![PeerState {
                    public_key: "PEER".into(),
                    endpoint: Some("10.0.3.2:51820".into()),
                    allowed_ips: vec!["fd00::2/128".into()],
                    latest_handshake: Some(1000),
                    rx_bytes: 10,
                    tx_bytes: 20,
                    persistent_keepalive: None,
                }],
                error: None,
            }),
            firewall: None,
            checks: vec![],
        };
        let t = render_status(&s, 1030);
        assert!(
            t.contains("WireGuard wg-macula: key KEY, port 51820"),
            "{t}"
        );
        assert!(
            t.contains("peer PEER at 10.0.3.2:51820, fd00::2/128; last handshake 30 s ago"),
            "{t}"
        );
        assert!(t.contains("  default via 10.0.2.2 dev eth0"), "{t}");
        assert!(t.contains("DNS servers: 10.0.2.3"), "{t}");
        assert!(t.contains("Firewall: none loaded"), "{t}");
        assert_eq!(wg_line(s.wireguard.as_ref().unwrap()).ok, Some(true));
    }
}
