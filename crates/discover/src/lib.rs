//! LAN discovery (plan §5.1): every node's avahi-daemon announces
//! `_macula._tcp` with TXT records (id, version, role, realm, configured;
//! written by `maculaos apply`, step mdns). [`browse`] asks the local
//! avahi-daemon, through `avahi-browse`, which nodes answer.
//!
//! [`announced_host_name`] asks it which name it announces for this node:
//! after a name conflict on the LAN that is not the hostname ([`name`]).

pub mod name;

pub use name::{announced_host_name, compare, host_label, Announced, NameError};

use maculaos_runner::{Cmd, RunError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The DNS-SD service type of MaculaOS nodes.
pub const SERVICE_TYPE: &str = "_macula._tcp";

/// One node seen on the LAN.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The announced name (the node's hostname).
    pub name: String,
    /// `<name>.local`, as resolved.
    pub host: String,
    /// IPv4 first, then IPv6, each once.
    pub addresses: Vec<String>,
    /// Interfaces it was seen on (`enp0s4`).
    pub interfaces: Vec<String>,
    pub id: String,
    pub version: String,
    pub role: String,
    pub realm: String,
    pub configured: bool,
    /// The announcement comes from this node itself.
    pub local: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(
        "avahi-daemon is not running: start it (`sudo systemctl start avahi-daemon`) and try again"
    )]
    NoDaemon,
    #[error(transparent)]
    Run(#[from] RunError),
}

/// This node's names: its hostname, and the name avahi-daemon announces
/// for it (`None` when that is unknown: avahi-daemon not running).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThisNode {
    pub hostname: String,
    pub announced: Option<String>,
}

impl ThisNode {
    /// The running system's (`/proc/sys/kernel/hostname`, and avahi-daemon).
    pub fn running() -> ThisNode {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        ThisNode {
            hostname: hostname.trim().to_string(),
            announced: announced_host_name().ok(),
        }
    }

    /// The name this node's announcements carry: the announced one when
    /// known, else the hostname.
    pub fn name(&self) -> &str {
        self.announced.as_deref().unwrap_or(&self.hostname)
    }

    /// When avahi-daemon announces another name than the hostname, a line
    /// that says so.
    pub fn note(&self) -> Option<String> {
        let announced = self.announced.as_deref()?;
        let host = host_label(&self.hostname);
        match compare(&self.hostname, announced) {
            Announced::AsHostname => None,
            Announced::Renamed => Some(format!(
                "note: this node is announced as {announced}.local; its hostname {host} is \
                 taken by another host on the LAN"
            )),
            Announced::Other => Some(format!(
                "note: this node is announced as {announced}.local, not as its hostname {host}"
            )),
        }
    }
}

/// Browse for `timeout`, then list the nodes seen, by name; `me` marks
/// this node's own announcement ([`ThisNode::running`]).
pub fn browse(timeout: Duration, me: &ThisNode) -> Result<Vec<Node>, DiscoverError> {
    // -r resolves (addresses, TXT), -p parsable lines, -k no type lookups;
    // no -t: avahi's "all for now" comes after about a second, too early
    // for a node that has just come up, so we watch for `timeout` instead.
    let out = Cmd::new("avahi-browse")
        .args(["-r", "-p", "-k", SERVICE_TYPE])
        .hint("install avahi-utils")
        .output_for(timeout)
        .map_err(|e| match &e {
            RunError::Failed { tail, .. } if tail.contains("Daemon not running") => {
                DiscoverError::NoDaemon
            }
            _ => DiscoverError::Run(e),
        })?;
    Ok(parse(&out, me.name()))
}

/// Nodes from `avahi-browse -r -p` output: resolved (`=`) lines, merged by
/// name across interfaces and protocols. `me` is the name this node
/// announces ([`ThisNode::name`]): avahi lists its own announcements like
/// any other. After a name conflict that name is not the hostname, and the
/// other host, which holds the hostname, is not this node.
pub fn parse(text: &str, me: &str) -> Vec<Node> {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for line in text.lines() {
        let f = split_fields(line);
        // =;iface;proto;name;type;domain;host;address;port;txt
        if f.len() < 10 || f[0] != "=" || f[4] != SERVICE_TYPE {
            continue;
        }
        let n = nodes.entry(f[3].clone()).or_insert_with(|| Node {
            name: f[3].clone(),
            host: f[6].clone(),
            ..Node::default()
        });
        let addr = f[7].clone();
        if !addr.is_empty() && !n.addresses.contains(&addr) {
            n.addresses.push(addr);
        }
        if !n.interfaces.contains(&f[1]) {
            n.interfaces.push(f[1].clone());
        }
        for (k, v) in txt_records(&f[9]) {
            match k.as_str() {
                "id" => n.id = v,
                "version" => n.version = v,
                "role" => n.role = v,
                "realm" => n.realm = v,
                "configured" => n.configured = v == "yes",
                _ => {}
            }
        }
    }
    for n in nodes.values_mut() {
        // A link-local IPv6 address needs its interface to be usable.
        n.addresses.sort_by_key(|a| a.contains(':'));
        n.interfaces.sort();
        n.local = n.name == me || n.host == format!("{me}.local");
    }
    nodes.into_values().collect()
}

/// Split a parsable line on `;`; avahi writes a `;` or `\` inside a field
/// as `\059` / `\092` (a backslash and three decimal digits).
fn split_fields(line: &str) -> Vec<String> {
    line.split(';').map(unescape).collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = (b[i + 1] - b'0') as u32 * 100
                + (b[i + 2] - b'0') as u32 * 10
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(n) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The TXT field: `"k=v" "k2=v2"`, each record in double quotes.
fn txt_records(field: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = field;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        let rec = &after[..end];
        if let Some((k, v)) = rec.split_once('=') {
            out.push((k.to_string(), v.to_string()));
        }
        rest = &after[end + 1..];
    }
    out
}

/// A table for people: one line per node; under it, a note when this node
/// is not announced under its hostname ([`ThisNode::note`]).
pub fn render(nodes: &[Node], me: &ThisNode) -> String {
    let mut out = table(nodes);
    if let Some(note) = me.note() {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

fn table(nodes: &[Node]) -> String {
    if nodes.is_empty() {
        return "no MaculaOS node answered on the LAN\n".to_string();
    }
    let rows: Vec<[String; 6]> = nodes
        .iter()
        .map(|n| {
            [
                if n.local {
                    format!("{} (this node)", n.name)
                } else {
                    n.name.clone()
                },
                n.addresses.join(", "),
                n.version.clone(),
                n.role.clone(),
                if n.realm.is_empty() {
                    "-".into()
                } else {
                    n.realm.clone()
                },
                if n.configured {
                    "yes".into()
                } else {
                    "no (wizard)".into()
                },
            ]
        })
        .collect();
    let head = [
        "NAME",
        "ADDRESSES",
        "VERSION",
        "ROLE",
        "REALM",
        "CONFIGURED",
    ];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SAMPLE: &str = "\
+;enp0s4;IPv4;macula-0b02;_macula._tcp;local
+;enp0s4;IPv4;macula-0a01;_macula._tcp;local
=;enp0s4;IPv6;macula-0b02;_macula._tcp;local;macula-0b02.local;fe80::5054:ff:fe00:20b;22;\"configured=no\" \"realm=\" \"role=peer\" \"version=0.1.0\" \"id=aa11bb22cc33\"
=;enp0s4;IPv4;macula-0b02;_macula._tcp;local;macula-0b02.local;169.254.12.7;22;\"configured=no\" \"realm=\" \"role=peer\" \"version=0.1.0\" \"id=aa11bb22cc33\"
=;enp0s4;IPv4;macula-0a01;_macula._tcp;local;macula-0a01.local;169.254.3.3;22;\"configured=yes\" \"realm=io.macula\" \"role=peer,gateway\" \"version=0.1.0\" \"id=0f3e9a77c0d1\"
=;enp0s4;IPv4;other\\059box;_http._tcp;local;x.local;169.254.1.1;80;\"path=/\"
";

    #[test]
    fn resolved_lines_make_nodes() {
        let nodes = parse(SAMPLE, "macula-0a01");
        assert_eq!(nodes.len(), 2, "{nodes:?}");
        let me = &nodes[0];
        assert_eq!(me.name, "macula-0a01");
        assert!(me.local && me.configured);
        assert_eq!(me.role, "peer,gateway");
        assert_eq!(me.realm, "io.macula");
        let other = &nodes[1];
        assert_eq!(other.host, "macula-0b02.local");
        assert_eq!(other.addresses, ["169.254.12.7", "fe80::5054:ff:fe00:20b"]);
        assert_eq!(other.id, "aa11bb22cc33");
        assert_eq!(other.version, "0.1.0");
        assert!(!other.local && !other.configured);
        let table = render(&nodes, &ThisNode::default());
        assert!(table.starts_with("NAME"), "{table}");
        assert!(table.contains("macula-0a01 (this node)"), "{table}");
        assert!(table.contains("no (wizard)"), "{table}");
    }

    #[test]
    fn escapes_are_decoded() {
        assert_eq!(unescape("a\\059b\\092c"), "a;b\\c");
        assert_eq!(unescape("trailing\\05"), "trailing\\05");
        assert_eq!(split_fields("=;x\\059y;z"), ["=", "x;y", "z"]);
    }

    #[test]
    fn nothing_seen() {
        assert!(parse("", "x").is_empty());
        assert_eq!(
            render(&[], &ThisNode::default()),
            "no MaculaOS node answered on the LAN\n"
        );
    }

    /// Two hosts named macula-0b02: this one lost the name and avahi-daemon
    /// announces it (and its service) as macula-0b02-2.
    const CONFLICT: &str = "\
=;enp0s4;IPv4;macula-0b02;_macula._tcp;local;macula-0b02.local;169.254.12.7;22;\"configured=no\" \"id=aa11bb22cc33\"
=;enp0s4;IPv4;macula-0b02-2;_macula._tcp;local;macula-0b02-2.local;169.254.9.9;22;\"configured=no\" \"id=99ee88dd77cc\"
";

    #[test]
    fn a_renamed_node_is_marked_by_its_announced_name_with_a_note() {
        let me = ThisNode {
            hostname: "macula-0b02".into(),
            announced: Some("macula-0b02-2".into()),
        };
        assert_eq!(me.name(), "macula-0b02-2");
        let nodes = parse(CONFLICT, me.name());
        let local: Vec<(&str, bool)> = nodes.iter().map(|n| (n.name.as_str(), n.local)).collect();
        assert_eq!(local, [("macula-0b02", false), ("macula-0b02-2", true)]);
        let text = render(&nodes, &me);
        assert!(text.contains("macula-0b02-2 (this node)"), "{text}");
        assert!(
            text.ends_with(
                "\nnote: this node is announced as macula-0b02-2.local; its hostname \
                 macula-0b02 is taken by another host on the LAN\n"
            ),
            "{text}"
        );
        // A service renamed on its own (`macula-0b02 #2`) is still this
        // node's by its host.
        let nodes = parse(
            "=;enp0s4;IPv4;macula-0b02 #2;_macula._tcp;local;macula-0b02-2.local;169.254.9.9;22;\"id=x\"\n",
            me.name(),
        );
        assert!(nodes[0].local, "{nodes:?}");
        // The note comes under an empty list too.
        assert!(render(&[], &me).starts_with("no MaculaOS node answered on the LAN\nnote: "));
    }

    #[test]
    fn no_note_when_announced_as_the_hostname_or_unknown() {
        let same = ThisNode {
            hostname: "macula-0b02".into(),
            announced: Some("macula-0b02".into()),
        };
        let unknown = ThisNode {
            hostname: "macula-0b02".into(),
            announced: None,
        };
        for me in [&same, &unknown] {
            assert_eq!(me.note(), None);
            assert_eq!(me.name(), "macula-0b02");
            let nodes = parse(CONFLICT, me.name());
            assert!(nodes[0].local && !nodes[1].local, "{nodes:?}");
            assert!(!render(&nodes, me).contains("note:"));
        }
        let stale = ThisNode {
            hostname: "edge-one".into(),
            announced: Some("macula-0b02".into()),
        };
        assert_eq!(
            stale.note().as_deref(),
            Some("note: this node is announced as macula-0b02.local, not as its hostname edge-one")
        );
    }
}
