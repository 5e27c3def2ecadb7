//! The node's firewall (guide "Security: Firewall", plan §4.4 "firewall
//! rules based on roles", §4.9.4): a list of openings — a port, who may
//! reach it and why — made from the configuration and what the node is,
//! and the one nftables ruleset that lets exactly those in.
//!
//! The ruleset is one table, `inet maculaos`, replaced whole in one `nft -f`
//! transaction (so there is never a moment with half a ruleset, and one
//! nft refuses changes nothing). Input and forward drop by default; let in are
//! answers to what the node sent, loopback, ICMP (echo rate-limited),
//! DHCP and mDNS, then the openings. Forwarding is only for containers:
//! what they send, and what comes to a port a service publishes (podman
//! rewrites its destination, so it is forwarded, not taken in).

use maculaos_config::values::{Cidr, FirewallPort, Proto};
use maculaos_config::Config;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The nftables table MaculaOS owns; nothing else in it is kept.
pub const TABLE: &str = "maculaos";
/// Where apply writes the ruleset it loaded.
pub const RULESET_PATH: &str = "/etc/maculaos/firewall.nft";
/// What apply loaded, for `maculaos firewall show` (JSON: [`Applied`]).
pub const STATE_PATH: &str = "/run/maculaos/firewall.json";
/// New SSH connections per minute from one address before more wait.
pub const SSH_PER_MINUTE: u32 = 120;

/// One way in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opening {
    /// `22/tcp`, `4433/tcp`, `8000-8010/udp`.
    pub port: FirewallPort,
    /// Source networks; empty: anyone.
    pub from: Vec<Cidr>,
    /// What opened it: `ssh`, `mesh bootstrap role`, `firewall.allow`, ….
    pub why: String,
    /// Rate-limited new connections (per source address, per minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_per_minute: Option<u32>,
}

/// What the node is, besides its configuration: decided by apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Ports the mesh's NATS server takes from other nodes, with the role
    /// that needs each (`4433`: bootstrap or gateway, `6222`: bootstrap).
    pub mesh_ports: Vec<(u16, String)>,
    /// This node holds the realm CA and takes joins on this port.
    pub join_port: Option<u16>,
    /// The node is not paired yet: the first-boot wizard listens on port 80.
    pub unconfigured: bool,
}

/// What apply loaded: the openings, and the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub enabled: bool,
    /// `drop` or `accept`: what happens to the rest.
    pub policy: String,
    pub openings: Vec<Opening>,
    /// The mesh's WireGuard interface, whose traffic is let in whole (it
    /// comes from peers the configuration lists, authenticated by their keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<String>,
}

/// The WireGuard interface whose traffic is let in: the mesh's, when it is
/// on and `allow_mesh` is.
pub fn overlay(config: &Config) -> Option<String> {
    let wg = &config.maculaos.mesh.wireguard;
    (wg.enabled && config.maculaos.security.firewall.allow_mesh).then(|| wg.interface.to_string())
}

fn port(s: &str) -> FirewallPort {
    s.parse().expect("a built-in port is valid")
}

/// The openings of `config` on a node with `facts`, in the order shown.
pub fn openings(config: &Config, facts: &Facts) -> Vec<Opening> {
    let fw = &config.maculaos.security.firewall;
    let mut out = Vec::new();
    let mut open = |p: String, why: &str, limit: Option<u32>| {
        out.push(Opening {
            port: port(&p),
            from: Vec::new(),
            why: why.to_string(),
            limit_per_minute: limit,
        })
    };
    if fw.allow_ssh {
        open("22/tcp".into(), "ssh (allow_ssh)", Some(SSH_PER_MINUTE));
    }
    if facts.unconfigured {
        open(
            "80/tcp".into(),
            "the first-boot wizard (until the node is paired)",
            None,
        );
    }
    if fw.allow_mesh {
        for (p, role) in &facts.mesh_ports {
            open(format!("{p}/tcp"), &format!("mesh: {role}"), None);
        }
        let wg = &config.maculaos.mesh.wireguard;
        if wg.enabled {
            open(format!("{}/udp", wg.port), "mesh: WireGuard overlay", None);
        }
        if let Some(p) = facts.join_port {
            open(
                format!("{p}/tcp"),
                "mesh: joins (this node holds the realm CA)",
                None,
            );
        }
    }
    let dash = &config.maculaos.dashboard;
    if dash.enabled && !dash.listen.ip().is_loopback() {
        open(
            format!("{}/tcp", dash.listen.port()),
            "dashboard.listen",
            None,
        );
    }
    for e in maculaos_embedded::enabled(config) {
        for p in e.ports {
            out.push(Opening {
                port: p.port,
                from: p.from,
                why: format!("{} ({})", e.name, e.key),
                limit_per_minute: None,
            });
        }
    }
    let time = &config.maculaos.edge.time_sync;
    if time.enabled && time.serve_to_lan {
        out.push(Opening {
            port: port("123/udp"),
            from: time.allow_from.clone(),
            why: "NTP for the LAN (maculaos.edge.time_sync.serve_to_lan)".into(),
            limit_per_minute: None,
        });
    }
    for a in &fw.allow {
        out.push(Opening {
            port: a.port.clone(),
            from: a.from.clone(),
            why: "firewall.allow".into(),
            limit_per_minute: None,
        });
    }
    out
}

/// `192.168.1.10/24` as a network nft takes (`192.168.1.0/24`), and
/// whether it is IPv6.
fn network(c: &Cidr) -> (String, bool) {
    let (addr, len) = c.split();
    match addr {
        std::net::IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            (
                format!("{}/{len}", std::net::Ipv4Addr::from(bits & mask)),
                false,
            )
        }
        std::net::IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            (
                format!("{}/{len}", std::net::Ipv6Addr::from(bits & mask)),
                true,
            )
        }
    }
}

/// The name of the set that counts an opening's new connections per
/// source (`limit_tcp_22_4`, `_6`).
fn limit_set(o: &Opening, v6: bool) -> String {
    let (lo, _, proto) = o.port.range();
    let proto = match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    format!("limit_{proto}_{lo}_{}", if v6 { 6 } else { 4 })
}

/// The sets the rate limits need: entries expire, so the sets never fill
/// for good.
fn sets(openings: &[Opening]) -> Vec<String> {
    let mut out = Vec::new();
    for o in openings.iter().filter(|o| o.limit_per_minute.is_some()) {
        for (v6, ty) in [(false, "ipv4_addr"), (true, "ipv6_addr")] {
            out.push(format!(
                "set {} {{ type {ty}; size 65535; flags dynamic,timeout; timeout 2m; }}",
                limit_set(o, v6)
            ));
        }
    }
    out
}

/// The rule lines for one opening.
fn rules(o: &Opening) -> Vec<String> {
    let (lo, hi, proto) = o.port.range();
    let ports = if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    };
    let proto = match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    let comment = o.why.replace(['"', '\\'], "'");
    let accept = format!("accept comment \"{comment}\"");
    if o.from.is_empty() {
        let mut out = Vec::new();
        if let Some(n) = o.limit_per_minute {
            // New connections over the limit from one address (an IPv6
            // /64: one host has all of it) are dropped. When the set is
            // full the drop rule does not match and the port stays open:
            // a flood of addresses cannot lock the operator out.
            for (v6, family, key) in [
                (false, "ipv4", "ip saddr"),
                (true, "ipv6", "ip6 saddr and ffff:ffff:ffff:ffff::"),
            ] {
                out.push(format!(
                    "meta nfproto {family} {proto} dport {ports} ct state new update @{} {{ {key} limit rate over {n}/minute burst {n} packets }} drop",
                    limit_set(o, v6)
                ));
            }
        }
        out.push(format!("{proto} dport {ports} {accept}"));
        return out;
    }
    o.from
        .iter()
        .map(|c| {
            let (net, v6) = network(c);
            let family = if v6 { "ip6" } else { "ip" };
            format!("{family} saddr {net} {proto} dport {ports} {accept}")
        })
        .collect()
}

/// The whole ruleset: `nft -f` replaces the table in one transaction.
pub fn ruleset(policy_drop: bool, openings: &[Opening], overlay: Option<&str>) -> String {
    let policy = if policy_drop { "drop" } else { "accept" };
    let mut s = String::from(
        "# Written by maculaos apply from maculaos.security.firewall, the node's
# roles and services: change those, not this file (`maculaos firewall show`).
",
    );
    // Declared first so that the delete never fails on a fresh boot.
    let _ = writeln!(s, "table inet {TABLE}\ndelete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    for set in sets(openings) {
        let _ = writeln!(s, "  {set}");
    }
    let _ = writeln!(
        s,
        "  chain input {{
    type filter hook input priority filter; policy {policy};
    ct state established,related accept
    ct state invalid drop
    iif lo accept
    # ICMPv6 carries neighbour discovery and router adverts: IPv6 needs it.
    icmpv6 type echo-request limit rate 10/second burst 20 packets accept
    icmpv6 type != echo-request accept
    icmp type echo-request limit rate 10/second burst 20 packets accept
    icmp type {{ destination-unreachable, time-exceeded, parameter-problem }} accept
    udp dport 68 accept comment \"DHCP\"
    udp dport 546 accept comment \"DHCPv6\"
    udp dport 5353 accept comment \"mDNS: <name>.local and the node's announcement\""
    );
    if let Some(i) = overlay {
        let i = i.replace(['"', '\\'], "");
        let _ = writeln!(
            s,
            "    iifname \"{i}\" accept comment \"mesh: the WireGuard overlay's peers\""
        );
    }
    for o in openings {
        for r in rules(o) {
            let _ = writeln!(s, "    {r}");
        }
    }
    let _ = writeln!(
        s,
        "  }}
  chain forward {{
    type filter hook forward priority filter; policy {policy};
    ct state established,related accept
    # Containers (podman's bridge) reach out; the ports services publish
    # come in, their destination rewritten by podman.
    iifname \"podman*\" accept
    ct status dnat accept
  }}
}}"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        serde_yaml_ng::from_str(yaml).expect("a configuration")
    }

    #[test]
    fn a_default_node_opens_ssh_only() {
        let o = openings(&Config::default(), &Facts::default());
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].port.to_string(), "22/tcp");
        let r = ruleset(true, &o, None);
        assert!(r.contains("policy drop;"));
        assert!(r.contains(
            "meta nfproto ipv4 tcp dport 22 ct state new update @limit_tcp_22_4 { ip saddr limit rate over 120/minute burst 120 packets } drop"
        ), "{r}");
        assert!(r.contains("set limit_tcp_22_6 { type ipv6_addr; size 65535; flags dynamic,timeout; timeout 2m; }"), "{r}");
        assert!(
            r.contains("tcp dport 22 accept comment \"ssh (allow_ssh)\""),
            "{r}"
        );
        assert!(r.starts_with("# Written by maculaos apply"));
    }

    #[test]
    fn the_wireguard_overlay_opens_its_port_and_its_interface() {
        let c = config("maculaos:\n  mesh:\n    wireguard: {enabled: true, port: 51999}\n");
        let o = openings(&c, &Facts::default());
        assert!(o.iter().any(|o| o.port.to_string() == "51999/udp"), "{o:?}");
        assert_eq!(overlay(&c).as_deref(), Some("wg-macula"));
        let r = ruleset(true, &o, overlay(&c).as_deref());
        assert!(r.contains("udp dport 51999 accept"), "{r}");
        assert!(r.contains("iifname \"wg-macula\" accept"), "{r}");
        // allow_mesh: false closes both.
        let c = config(
            "maculaos:\n  mesh:\n    wireguard: {enabled: true}\n  security:\n    firewall: {allow_mesh: false}\n",
        );
        assert!(!openings(&c, &Facts::default())
            .iter()
            .any(|o| o.port.to_string() == "51820/udp"));
        assert_eq!(overlay(&c), None);
        assert_eq!(overlay(&Config::default()), None);
    }

    #[test]
    fn roles_the_wizard_the_dashboard_and_allow_open_their_ports() {
        let c = config(
            "maculaos:
  dashboard: {listen: '0.0.0.0:9090'}
  security:
    firewall:
      allow:
        - 8080/tcp
        - {port: 9000-9010/udp, from: [10.1.2.3/8, 'fd00::1/64']}
",
        );
        let facts = Facts {
            mesh_ports: vec![(4433, "bootstrap".into()), (6222, "bootstrap".into())],
            join_port: Some(4434),
            unconfigured: true,
        };
        let o = openings(&c, &facts);
        let ports: Vec<String> = o.iter().map(|o| o.port.to_string()).collect();
        assert_eq!(
            ports,
            [
                "22/tcp",
                "80/tcp",
                "4433/tcp",
                "6222/tcp",
                "4434/tcp",
                "9090/tcp",
                "8080/tcp",
                "9000-9010/udp"
            ]
        );
        let r = ruleset(true, &o, None);
        assert!(
            r.contains("ip saddr 10.0.0.0/8 udp dport 9000-9010 accept"),
            "{r}"
        );
        assert!(
            r.contains("ip6 saddr fd00::/64 udp dport 9000-9010 accept"),
            "{r}"
        );
        assert!(
            r.contains("tcp dport 8080 accept comment \"firewall.allow\""),
            "{r}"
        );
    }

    #[test]
    fn an_embedded_service_opens_its_port_while_enabled() {
        let c = config(
            "maculaos:\n  monitoring:\n    prometheus: {enabled: true, allow_from: [192.168.7.0/24]}\n",
        );
        let o = openings(&c, &Facts::default());
        let m = o.iter().find(|o| o.port.to_string() == "9100/tcp").unwrap();
        assert_eq!(m.why, "metrics (maculaos.monitoring.prometheus)");
        let r = ruleset(true, &o, None);
        assert!(
            r.contains("ip saddr 192.168.7.0/24 tcp dport 9100 accept comment \"metrics (maculaos.monitoring.prometheus)\""),
            "{r}"
        );
        let c = config("maculaos:\n  monitoring:\n    prometheus: {enabled: false}\n");
        assert!(!openings(&c, &Facts::default())
            .iter()
            .any(|o| o.port.to_string() == "9100/tcp"));
    }

    #[test]
    fn ntp_is_served_only_when_asked() {
        let ntp = |c: &Config| {
            openings(c, &Facts::default())
                .into_iter()
                .find(|o| o.port.to_string() == "123/udp")
        };
        assert!(ntp(&Config::default()).is_none());
        let c = config(
            "maculaos:\n  edge:\n    time_sync: {serve_to_lan: true, allow_from: [10.1.0.0/16]}\n",
        );
        let o = ntp(&c).unwrap();
        let r = ruleset(true, &[o], None);
        assert!(
            r.contains("ip saddr 10.1.0.0/16 udp dport 123 accept"),
            "{r}"
        );
    }

    #[test]
    fn the_mesh_and_ssh_can_be_closed() {
        let c =
            config("maculaos:\n  security:\n    firewall: {allow_ssh: false, allow_mesh: false}\n");
        let facts = Facts {
            mesh_ports: vec![(4433, "gateway".into())],
            ..Facts::default()
        };
        assert!(openings(&c, &facts).is_empty());
    }
}
