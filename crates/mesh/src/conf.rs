//! The nats-server configuration of a node, from its roles (plan §4.4,
//! DESIGN "Mesh, network and fleet"):
//!
//! - every node: a server for local clients on `nats.listen` (loopback by
//!   default), its monitoring endpoint on 127.0.0.1:8222 (what `maculaos
//!   mesh status` reads), and one account for its realm, which local clients
//!   land in without credentials; publications on `macula.pub.<realm>.…`
//!   are delivered to subscribers of `macula.sub.<realm>.…` (the seed's
//!   subject mapping);
//! - bootstrap: JetStream with the realm as its domain, cluster routes to
//!   the other bootstrap nodes, and a leafnode listener for peers;
//! - peer (every node that is not bootstrap): one leafnode connection to the
//!   realm, to one of the bootstrap nodes it knows (nats-server picks at
//!   random), failing over to the others (several connections from one
//!   server to one cluster would be a loop);
//! - gateway: a leafnode listener too, so peers that cannot reach a bootstrap
//!   node reach the realm through it.
//!
//! Everything that leaves the node is mutual TLS with the realm's CA:
//! listeners and remotes require a certificate the CA signed, so a node of
//! another realm, or one without a certificate, is refused. A node that has
//! not joined a realm yet runs the local server only.
//!
//! nats-server 2.9.10 refuses unknown fields: only fields that version
//! knows are written (`nats-server -t` checks the result in the tests).

use std::fmt::Write as _;
use std::path::PathBuf;

/// The port a bootstrap or gateway node takes leafnode connections on (the
/// guide's `bootstrap.macula.io:4433`).
pub const LEAF_PORT: u16 = 4433;
/// The port bootstrap nodes route to each other on (plan §4.9.5 `cluster.port`).
pub const CLUSTER_PORT: u16 = 6222;
/// The monitoring endpoint: loopback only.
pub const MONITOR: &str = "127.0.0.1:8222";

/// The node's certificate files, once it has joined a realm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A `host:port` another node is reached at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `host`, `host:port`, `[v6]:port` or a URL (`https://host:443`,
    /// `nats-leaf://host:4433`): the scheme and any path are dropped; the
    /// port defaults to `default_port`.
    pub fn parse(s: &str, default_port: u16) -> Result<Endpoint, String> {
        let bad = |why: &str| format!("`{s}` is not a host or host:port ({why})");
        let rest = s.split_once("://").map_or(s, |(_, r)| r);
        let rest = rest.split('/').next().unwrap_or_default();
        if rest.is_empty() {
            return Err(bad("no host"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, tail) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            (h.to_string(), tail.strip_prefix(':'))
        } else if rest.matches(':').count() > 1 {
            (rest.to_string(), None)
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c))
        {
            return Err(bad("bad host name"));
        }
        Ok(Endpoint { host, port })
    }

    /// As it goes into a URL (IPv6 in brackets).
    pub fn url(&self, scheme: &str) -> String {
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// What a node's nats-server is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPlan {
    /// The node's name (its hostname): the server's name in the realm.
    pub node: String,
    /// The realm, once configured.
    pub realm: Option<String>,
    pub bootstrap: bool,
    pub gateway: bool,
    /// Where local clients connect (`nats.listen`).
    pub listen: String,
    pub max_payload: u64,
    /// The bootstrap nodes this node knows (leafnode addresses).
    pub bootstrap_peers: Vec<Endpoint>,
    /// Gateway nodes a peer dials when no bootstrap node answers (after
    /// them, in this order); a gateway dials bootstrap nodes only.
    pub relays: Vec<Endpoint>,
    /// Certificates; `None` until the node has joined its realm.
    pub tls: Option<TlsFiles>,
    /// JetStream on a node that is not bootstrap (its own, domain = its
    /// name); bootstrap nodes always run the realm's.
    pub jetstream: bool,
    pub jetstream_dir: PathBuf,
    pub jetstream_max_file: u64,
    /// Ports and the monitoring address: [`LEAF_PORT`], [`CLUSTER_PORT`] and
    /// [`MONITOR`] on a node; others where several servers share one host
    /// (the tests).
    pub leaf_port: u16,
    pub cluster_port: u16,
    pub monitor: String,
    /// The address the leafnode and cluster listeners bind: every address
    /// (`0.0.0.0`) on a node.
    pub bind: String,
    /// The host other nodes reach this one at: `mesh.advertise_address`'s,
    /// else `<node>.local`. A bootstrap node routes to itself there too:
    /// nats-server needs a configured route to run JetStream clustered
    /// (even the first bootstrap node, alone), and drops a route that
    /// leads back to itself.
    pub advertise: String,
    /// The roster's keys (SPKI SHA-256, hex) a listener pins; empty: any
    /// certificate from the realm CA (no roster yet).
    pub pinned: Vec<String>,
}

/// A realm as a single NATS token (account and JetStream domain names take
/// no dots): `io.macula` → `io_macula`.
pub fn realm_token(realm: &str) -> String {
    realm.replace('.', "_")
}

/// A double-quoted string for the config file.
fn q(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            o.push('\\');
        }
        o.push(c);
    }
    o.push('"');
    o
}

impl ServerPlan {
    /// The account the node's clients and the realm's connections use.
    pub fn account(&self) -> String {
        self.realm
            .as_deref()
            .map_or_else(|| "local".to_string(), realm_token)
    }

    /// Whether the node takes connections from other nodes, and on which
    /// ports (for the firewall and the docs): none until it has joined.
    pub fn listens_beyond_loopback(&self) -> Vec<u16> {
        let mut ports = Vec::new();
        if self.tls.is_none() || self.realm.is_none() {
            return ports;
        }
        if self.bootstrap || self.gateway {
            ports.push(self.leaf_port);
        }
        if self.bootstrap {
            ports.push(self.cluster_port);
        }
        ports
    }

    /// The leafnode addresses this node dials: every bootstrap node it
    /// knows but itself, then (not on a gateway) the gateways it knows;
    /// none for a bootstrap node (routes join those).
    pub fn remotes(&self) -> Vec<&Endpoint> {
        if self.bootstrap {
            return Vec::new();
        }
        let relays: &[Endpoint] = if self.gateway { &[] } else { &self.relays };
        let mut boot: Vec<&Endpoint> = self
            .bootstrap_peers
            .iter()
            .filter(|e| !self.is_self(&e.host))
            .collect();
        if !relays.is_empty() && !boot.is_empty() {
            // Dialled in order from here on (`dont_randomize`): each node
            // starts at a place of its own, so peers still spread over the
            // bootstrap nodes as nats-server's random pick would.
            let h = self.node.bytes().fold(0usize, |h, b| {
                h.wrapping_mul(31).wrapping_add(usize::from(b))
            });
            let n = boot.len();
            boot.rotate_left(h % n);
        }
        boot.into_iter()
            .chain(relays.iter().filter(|e| !self.is_self(&e.host)))
            .collect()
    }

    /// Whether a gateway is among [`ServerPlan::remotes`]: then they are
    /// dialled in order (nats-server picks at random otherwise), so a
    /// peer uses a relay only when no bootstrap node answers.
    fn dials_relays(&self) -> bool {
        let remotes = self.remotes();
        self.relays.iter().any(|r| remotes.contains(&r))
    }

    /// The cluster routes of a bootstrap node: itself (see
    /// [`ServerPlan::advertise`]), then the other bootstrap nodes.
    pub fn routes(&self) -> Vec<Endpoint> {
        if !self.bootstrap {
            return Vec::new();
        }
        let me = Endpoint {
            host: self.advertise.clone(),
            port: self.cluster_port,
        };
        std::iter::once(me)
            .chain(
                self.bootstrap_peers
                    .iter()
                    .filter(|e| !self.is_self(&e.host))
                    .map(|e| Endpoint {
                        host: e.host.clone(),
                        port: self.cluster_port,
                    }),
            )
            .collect()
    }

    /// Whether every bootstrap node this node knows is itself: a bootstrap
    /// node like that is its realm's first.
    pub fn knows_no_other_bootstrap_node(&self) -> bool {
        self.bootstrap_peers.iter().all(|e| self.is_self(&e.host))
    }

    fn is_self(&self, host: &str) -> bool {
        let h = host.trim_end_matches('.');
        h == self.node
            || h == self.advertise
            || h.strip_suffix(".local") == Some(self.node.as_str())
    }

    /// A JetStream of this node's own: asked for, and not a bootstrap node
    /// of a realm it has joined (which runs the realm's).
    fn own_jetstream(&self) -> bool {
        self.jetstream && !(self.bootstrap && self.tls.is_some() && self.realm.is_some())
    }

    /// `host:port` other servers are told to reach a listener at: the
    /// advertised host, not every address of the node (nats-server would
    /// otherwise list each interface's, such as a NAT address every node
    /// has, and peers would dial themselves there).
    fn advertised(&self, port: u16) -> String {
        if self.advertise.contains(':') {
            format!("[{}]:{port}", self.advertise)
        } else {
            format!("{}:{port}", self.advertise)
        }
    }

    /// The configuration file text.
    pub fn render(&self) -> String {
        let mut c = String::new();
        let _ = writeln!(
            c,
            "# Written by `maculaos apply` from the node configuration (mesh step): edit the configuration, not this file."
        );
        let _ = writeln!(c, "server_name: {}", q(&self.node));
        let _ = writeln!(c, "listen: {}", q(&self.listen));
        let _ = writeln!(c, "http: {}", q(&self.monitor));
        let _ = writeln!(c, "max_payload: {}", self.max_payload);
        // A node that lost power sends no goodbye: without pings its links
        // look alive for minutes (nats-server's default is 2m x 2). 10s x 3
        // finds a dead route or leafnode within half a minute.
        let _ = writeln!(c, "ping_interval: \"10s\"\nping_max: 3");
        // Local clients (services on this node) land in the realm's account
        // without credentials; the user has no password and can only be
        // used by connecting to the local listener.
        let account = self.account();
        let _ = writeln!(c, "accounts {{\n  {}: {{", q(&account));
        let _ = writeln!(c, "    users: [ {{ user: \"local\" }} ]");
        if (self.bootstrap && self.tls.is_some()) || self.own_jetstream() {
            let _ = writeln!(c, "    jetstream: enabled");
        }
        if let Some(realm) = &self.realm {
            let _ = writeln!(
                c,
                "    mappings: {{ {}: {} }}",
                q(&format!("macula.pub.{realm}.>")),
                q(&format!("macula.sub.{realm}.>"))
            );
        }
        let _ = writeln!(c, "  }}\n}}");
        let _ = writeln!(c, "no_auth_user: \"local\"");
        if self.own_jetstream() {
            let _ = writeln!(
                c,
                "jetstream {{\n  store_dir: {}\n  domain: {}\n  max_file_store: {}\n}}",
                q(&self.jetstream_dir.to_string_lossy()),
                q(&realm_token(&self.node)),
                self.jetstream_max_file
            );
        }
        let Some(tls) = self.tls.as_ref().filter(|_| self.realm.is_some()) else {
            return c;
        };
        // A listener (verify) lets in only the roster's keys, once there is
        // a roster: a revoked node's certificate still chains to the CA.
        let pins = if self.pinned.is_empty() {
            String::new()
        } else {
            let keys: Vec<String> = self.pinned.iter().map(|k| q(k)).collect();
            format!(", pinned_certs: [ {} ]", keys.join(", "))
        };
        let tls_block = |verify: bool| {
            format!(
                "tls {{ cert_file: {}, key_file: {}, ca_file: {}{}, timeout: 5 }}",
                q(&tls.cert.to_string_lossy()),
                q(&tls.key.to_string_lossy()),
                q(&tls.ca.to_string_lossy()),
                if verify {
                    format!(", verify: true{pins}")
                } else {
                    String::new()
                }
            )
        };
        let token = q(&account);
        if self.bootstrap {
            let _ = writeln!(
                c,
                "jetstream {{\n  store_dir: {}\n  domain: {token}\n  max_file_store: {}\n}}",
                q(&self.jetstream_dir.to_string_lossy()),
                self.jetstream_max_file
            );
            let routes: Vec<String> = self
                .routes()
                .iter()
                .map(|e| q(&e.url("nats-route")))
                .collect();
            let _ = writeln!(
                c,
                "cluster {{\n  name: {token}\n  listen: {}\n  advertise: {}\n  routes: [ {} ]\n  {}\n}}",
                q(&format!("{}:{}", self.bind, self.cluster_port)),
                q(&self.advertised(self.cluster_port)),
                routes.join(", "),
                tls_block(true)
            );
        }
        let listener = self.bootstrap || self.gateway;
        let remotes = self.remotes();
        if listener || !remotes.is_empty() {
            let _ = writeln!(c, "leafnodes {{");
            if listener {
                let _ = writeln!(
                    c,
                    "  listen: {}\n  advertise: {}\n  authorization {{ account: {token} }}\n  {}",
                    q(&format!("{}:{}", self.bind, self.leaf_port)),
                    q(&self.advertised(self.leaf_port)),
                    tls_block(true)
                );
            }
            if !remotes.is_empty() {
                let urls: Vec<String> = remotes.iter().map(|e| q(&e.url("nats-leaf"))).collect();
                let _ = writeln!(
                    c,
                    "  reconnect: 2\n  remotes: [ {{\n    urls: [ {} ]\n    account: {token}\n{}    {}\n  }} ]",
                    urls.join(", "),
                    if self.dials_relays() {
                        "    dont_randomize: true\n"
                    } else {
                        ""
                    },
                    tls_block(false)
                );
            }
            let _ = writeln!(c, "}}");
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;
    use std::path::Path;
    use std::process::Command;

    pub(crate) const NATS_SERVER: &str = "/usr/sbin/nats-server";

    fn plan(dir: &Path, bootstrap: bool, gateway: bool, peers: &[&str]) -> ServerPlan {
        ServerPlan {
            node: "edge-01".into(),
            realm: Some("io.macula".into()),
            bootstrap,
            gateway,
            listen: "127.0.0.1:4222".into(),
            max_payload: 1 << 20,
            bootstrap_peers: peers
                .iter()
                .map(|p| Endpoint::parse(p, LEAF_PORT).unwrap())
                .collect(),
            relays: Vec::new(),
            tls: Some(TlsFiles {
                cert: dir.join("node.crt"),
                key: dir.join("node.key"),
                ca: dir.join("ca.crt"),
            }),
            jetstream: false,
            jetstream_dir: dir.join("js"),
            jetstream_max_file: 1 << 30,
            leaf_port: LEAF_PORT,
            cluster_port: CLUSTER_PORT,
            monitor: MONITOR.into(),
            bind: "0.0.0.0".into(),
            advertise: "edge-01.local".into(),
            pinned: Vec::new(),
        }
    }

    /// Real certificate files, so `nats-server -t` also loads them.
    fn certs(dir: &Path) {
        let ca = pki::create_ca("io.macula").unwrap();
        let key = pki::new_key().unwrap();
        let csr = pki::csr(&key, "edge-01").unwrap();
        let cert = pki::sign_node(&ca, "io.macula", "edge-01", &[], &[], &csr).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.cert_pem).unwrap();
        std::fs::write(dir.join("node.key"), key).unwrap();
        std::fs::write(dir.join("node.crt"), cert).unwrap();
    }

    /// nats-server 2.9.10 itself accepts the file (it stops at an unknown field).
    pub(crate) fn nats_accepts(dir: &Path, text: &str) {
        assert!(
            Path::new(NATS_SERVER).exists(),
            "{NATS_SERVER} is missing: apt-get install nats-server (maculaos-sdk test installs it)"
        );
        let f = dir.join("nats.conf");
        std::fs::write(&f, text).unwrap();
        let out = Command::new(NATS_SERVER)
            .arg("-t")
            .arg("-c")
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nats-server -t refused:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn every_role_gives_a_config_nats_server_accepts() {
        let dir = tempfile::tempdir().unwrap();
        certs(dir.path());
        let peers = [
            "macula-0a01.local",
            "macula-0b02.local:4433",
            "https://10.0.0.9:443",
        ];
        for (b, g) in [(false, false), (true, false), (false, true), (true, true)] {
            let p = plan(dir.path(), b, g, &peers);
            nats_accepts(dir.path(), &p.render());
        }
        // A peer with a JetStream of its own, joined or not.
        let mut p = plan(dir.path(), false, false, &peers);
        p.jetstream = true;
        let text = p.render();
        assert!(text.contains("domain: \"edge-01\""), "{text}");
        nats_accepts(dir.path(), &text);
        p.tls = None;
        nats_accepts(dir.path(), &p.render());
        // Not joined yet: the local server only.
        let mut p = plan(dir.path(), true, false, &peers);
        p.tls = None;
        let text = p.render();
        assert!(
            !text.contains("leafnodes") && !text.contains("cluster"),
            "{text}"
        );
        nats_accepts(dir.path(), &text);
        p.realm = None;
        nats_accepts(dir.path(), &p.render());
    }

    #[test]
    fn a_peer_dials_every_bootstrap_node_but_itself_in_one_remote() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(
            dir.path(),
            false,
            false,
            &["edge-01.local", "b1.local", "b2:5000"],
        );
        let urls: Vec<String> = p.remotes().iter().map(|e| e.url("nats-leaf")).collect();
        assert_eq!(urls, ["nats-leaf://b1.local:4433", "nats-leaf://b2:5000"]);
        let text = p.render();
        assert_eq!(text.matches("urls:").count(), 1, "{text}");
        assert!(
            !text.contains("cluster") && !text.contains("jetstream {"),
            "{text}"
        );
        // The remote presents its certificate but does not ask for one back
        // (`verify` is for listeners); the listener side verifies it.
        assert!(!text.contains("verify: true"), "{text}");
        let b = plan(
            dir.path(),
            true,
            false,
            &["edge-01.local:4433", "b1.local:4433"],
        );
        let routes: Vec<String> = b.routes().iter().map(|e| e.url("nats-route")).collect();
        assert_eq!(
            routes,
            [
                "nats-route://edge-01.local:6222",
                "nats-route://b1.local:6222"
            ]
        );
        assert!(b.remotes().is_empty());
        assert_eq!(b.listens_beyond_loopback(), [LEAF_PORT, CLUSTER_PORT]);
        // Listeners are advertised by name, not by every address.
        let text = b.render();
        assert!(
            text.contains("advertise: \"edge-01.local:6222\"")
                && text.contains("advertise: \"edge-01.local:4433\""),
            "{text}"
        );
    }

    #[test]
    fn a_peer_dials_gateways_after_every_bootstrap_node_and_a_gateway_does_not() {
        let dir = tempfile::tempdir().unwrap();
        certs(dir.path());
        let mut p = plan(dir.path(), false, false, &["b1.local"]);
        p.relays = vec![Endpoint::parse("g1.local", LEAF_PORT).unwrap()];
        let urls: Vec<String> = p.remotes().iter().map(|e| e.url("nats-leaf")).collect();
        assert_eq!(
            urls,
            ["nats-leaf://b1.local:4433", "nats-leaf://g1.local:4433"]
        );
        let text = p.render();
        assert!(text.contains("dont_randomize: true"), "{text}");
        nats_accepts(dir.path(), &text);
        // Bootstrap nodes only: nats-server spreads peers over them.
        p.relays.clear();
        assert!(!p.render().contains("dont_randomize"));
        // A gateway relays for others and dials bootstrap nodes only.
        let mut g = plan(dir.path(), false, true, &["b1.local"]);
        g.relays = vec![Endpoint::parse("g2.local", LEAF_PORT).unwrap()];
        assert_eq!(g.remotes().len(), 1);
        let text = g.render();
        assert!(
            !text.contains("dont_randomize") && text.contains("listen: \"0.0.0.0:4433\""),
            "{text}"
        );
        nats_accepts(dir.path(), &text);
    }

    #[test]
    fn endpoints_parse_like_the_guide_writes_them() {
        let e = |s| Endpoint::parse(s, LEAF_PORT);
        assert_eq!(
            e("bootstrap.macula.io:4433").unwrap().url("x"),
            "x://bootstrap.macula.io:4433"
        );
        assert_eq!(e("https://boot.macula.io:443").unwrap().port, 443);
        assert_eq!(e("boot").unwrap().port, LEAF_PORT);
        assert_eq!(e("[fd00::1]:7").unwrap().url("x"), "x://[fd00::1]:7");
        assert!(e("boot:0").unwrap_err().contains("1 to 65535"));
        assert!(e("boot:x").is_err());
        assert!(e("bo\"ot").is_err());
        assert!(e("").is_err());
    }

    #[test]
    fn realm_names_become_one_token_and_strings_are_quoted() {
        assert_eq!(realm_token("io.macula.lab"), "io_macula_lab");
        assert_eq!(q("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
