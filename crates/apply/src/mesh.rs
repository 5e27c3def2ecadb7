//! The mesh plane (plan §4.4, §4.9.5): the node's nats-server
//! configuration from its roles, and its realm identity.
//!
//! - The node's key is made on first use and stays on the data partition.
//! - A bootstrap node in `tls_mode: development` that names no other
//!   bootstrap node is the realm's first: with no certificate for its realm
//!   yet, it makes the realm CA and its own certificate. Every other node
//!   joins with a token (`maculaos mesh join`); until then its server serves
//!   local clients only, and a note says how to join.
//! - `/etc/maculaos/nats.conf` is checked with `nats-server -t` before it
//!   replaces the running one: a configuration the server refuses is an
//!   error here, and the previous one stays in force.
//! - `/etc/maculaos/mesh.env` tells services on the node how to connect.
//! - A changed configuration restarts `maculaos-nats.service` (2.9.10 cannot
//!   reload leafnodes); `maculaos-meshd.service` restarts when mesh.env or
//!   the node's certificate changed (its NATS clients reconnect by
//!   themselves). Both start after apply at boot and are stopped when
//!   `nats.enabled` is false.

use crate::applier::{systemctl, Applier, ROOT_OWNER};
use crate::watchdog::systemd_runs;
use maculaos_config::{Config, MeshRole, TlsMode};
use maculaos_mesh::conf::{Endpoint, ServerPlan, TlsFiles, LEAF_PORT, MONITOR};
use maculaos_mesh::state::State;
use maculaos_runner::Cmd;
use std::fs;

const AREA: &str = "mesh";
/// How nats.conf says which roster version its pins come from.
pub const ROSTER_LINE: &str = "# roster version ";

/// How nats.conf says which known nodes its remotes come from (a node
/// whose configuration names none; see [`dial_list`]).
pub const KNOWN_LINE: &str = "# known nodes ";

/// The roster version the node's nats.conf pins (see [`ROSTER_LINE`]).
pub fn applied_roster(root: &std::path::Path) -> Option<u64> {
    applied(root, ROSTER_LINE)
}

/// The tag of the known nodes the node's nats.conf dials (see [`KNOWN_LINE`]).
pub fn applied_known(root: &std::path::Path) -> Option<String> {
    applied(root, KNOWN_LINE)
}

fn applied<T: std::str::FromStr>(root: &std::path::Path, line: &str) -> Option<T> {
    fs::read_to_string(root.join(CONF.trim_start_matches('/')))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.trim().parse().ok())
}
/// The server's configuration.
pub const CONF: &str = "/etc/maculaos/nats.conf";
pub use maculaos_mesh::{read_env, ENV};
const NATS_SERVER: &str = "/usr/sbin/nats-server";
pub(crate) const UNITS: [&str; 2] = ["maculaos-nats.service", "maculaos-meshd.service"];

/// The node's name in the realm: its hostname (the hostname step ran first).
fn node_name(config: &Config, a: &Applier) -> String {
    node_name_under(config, &a.opts.root)
}

/// The node's name in the realm for the node under `root`: the configured
/// hostname, else the one in `/etc/hostname`.
pub fn node_name_under(config: &Config, root: &std::path::Path) -> String {
    if let Some(h) = &config.maculaos.hostname {
        return h.as_str().to_string();
    }
    fs::read_to_string(root.join("etc/hostname"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The bootstrap nodes the configuration names, parsed (the configuration
/// check has refused any that does not parse).
pub fn bootstrap_peers(config: &Config) -> Vec<Endpoint> {
    parse_all(
        config
            .maculaos
            .mesh
            .bootstrap_peers
            .iter()
            .map(String::as_str),
    )
}

fn parse_all<'a>(l: impl Iterator<Item = &'a str>) -> Vec<Endpoint> {
    l.filter_map(|p| Endpoint::parse(p, LEAF_PORT).ok())
        .collect()
}

/// The bootstrap nodes and gateways a node dials, and a tag for the known
/// nodes they come from: those the configuration names, else those the
/// node learnt of (its join answer, mDNS; see [`maculaos_mesh::known`]).
/// A bootstrap node routes to those it was told of only: a bootstrap node
/// seen on the LAN does not make a route (a new JetStream peer is the
/// operator's choice). The tag (what `maculaos apply` records in nats.conf
/// and `maculaos mesh roster --check` compares) changes only when what
/// this node dials does, so a gateway another gateway learnt of is no
/// reason to restart a server.
pub fn dial_list(config: &Config, state: &State) -> (Vec<Endpoint>, Vec<Endpoint>, Option<String>) {
    let configured = bootstrap_peers(config);
    let Some(realm) = config.maculaos.mesh.realm.as_deref() else {
        return (configured, Vec::new(), None);
    };
    if !configured.is_empty() {
        return (configured, Vec::new(), None);
    }
    let Ok(known) = state.known() else {
        return (configured, Vec::new(), None);
    };
    let roles = config.maculaos.mesh.effective_roles();
    if roles.contains(&MeshRole::Bootstrap) {
        let joined = known
            .nodes
            .iter()
            .filter(|n| known.realm == realm && n.bootstrap() && n.source == "join");
        return (
            parse_all(joined.map(|n| n.address.as_str())),
            Vec::new(),
            None,
        );
    }
    let (boot, relays) = known.dial(realm, roles.contains(&MeshRole::Gateway));
    let tag = (known.realm == realm).then(|| {
        use sha2::{Digest, Sha256};
        let all = format!("{}|{}", boot.join(","), relays.join(","));
        hex::encode(&Sha256::digest(all.as_bytes())[..8])
    });
    (
        parse_all(boot.into_iter()),
        parse_all(relays.into_iter()),
        tag,
    )
}

/// The host other nodes reach this one at.
pub fn advertise_host(config: &Config, node: &str) -> String {
    config
        .maculaos
        .mesh
        .advertise_address
        .as_deref()
        .and_then(|a| Endpoint::parse(a, LEAF_PORT).ok())
        .map_or_else(|| format!("{node}.local"), |e| e.host)
}

/// What the node's server is to do, given its configuration and identity.
pub fn plan(config: &Config, node: &str, state: &State) -> ServerPlan {
    plan_and_tag(config, node, state).0
}

/// [`plan`], and the tag of the known nodes it dials ([`dial_list`]), from
/// one reading of them.
pub fn plan_and_tag(config: &Config, node: &str, state: &State) -> (ServerPlan, Option<String>) {
    let nats = &config.maculaos.nats;
    let roles = config.maculaos.mesh.effective_roles();
    let realm = config.maculaos.mesh.realm.clone();
    let joined = realm.as_deref().is_some_and(|r| state.joined(r));
    let (bootstrap_peers, relays, tag) = dial_list(config, state);
    let plan = ServerPlan {
        node: node.to_string(),
        realm,
        bootstrap: roles.contains(&MeshRole::Bootstrap),
        gateway: roles.contains(&MeshRole::Gateway),
        listen: nats.listen.to_string(),
        max_payload: nats.max_payload.bytes(),
        bootstrap_peers,
        relays,
        tls: joined.then(|| TlsFiles {
            cert: state.node_cert(),
            key: state.node_key(),
            ca: state.ca_cert(),
        }),
        jetstream: nats.jetstream.enabled,
        jetstream_dir: nats.jetstream.store_dir.clone().into(),
        jetstream_max_file: nats.jetstream.max_file.bytes(),
        leaf_port: LEAF_PORT,
        cluster_port: nats.cluster.port,
        monitor: MONITOR.into(),
        bind: "0.0.0.0".into(),
        advertise: advertise_host(config, node),
        // The mesh step fills them in from the roster (see `apply`).
        pinned: Vec::new(),
    };
    (plan, tag)
}

/// The ports the firewall opens for the mesh: those the node's server takes
/// from other nodes, each with the role that needs it, and the join port
/// on the node that holds the realm CA (maculaos-meshd listens there).
pub(crate) fn firewall_ports(config: &Config, a: &Applier) -> (Vec<(u16, String)>, Option<u16>) {
    if !config.maculaos.nats.enabled {
        return (Vec::new(), None);
    }
    let state = State::under(&a.opts.root);
    let (p, _) = plan_and_tag(config, &node_name(config, a), &state);
    let ports = p
        .listens_beyond_loopback()
        .into_iter()
        .map(|port| {
            let role = if port == p.cluster_port {
                "routes between bootstrap nodes"
            } else if p.bootstrap {
                "leafnodes to this bootstrap node"
            } else {
                "leafnodes to this gateway"
            };
            (port, role.to_string())
        })
        .collect();
    let join = config
        .maculaos
        .mesh
        .realm
        .as_deref()
        .filter(|r| state.joined(r))
        .filter(|_| state.identity().is_ok_and(|i| i.ca_holder))
        .map(|_| maculaos_mesh::join::JOIN_PORT);
    (ports, join)
}

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    // No nats-server in this root (a test tree, an image stage): nothing to run.
    if !a.path(NATS_SERVER).exists() {
        return Ok(());
    }
    let nats = &config.maculaos.nats;
    if !nats.enabled {
        let removed = a.remove_file(AREA, CONF)?;
        a.remove_file(AREA, ENV)?;
        if removed && systemd_runs(a) {
            for unit in UNITS {
                if a.unit_active(unit) {
                    a.act(AREA, ("stop", "stopped"), unit, || {
                        systemctl(&["stop", unit])
                    });
                }
            }
        }
        return Ok(());
    }
    let node = node_name(config, a);
    let state = State::under(&a.opts.root);
    if !a.dry_run() && state.ensure_key().map_err(|e| e.to_string())? {
        a.change(AREA, "make", "made", "the node's mesh key");
    }
    if let Some(realm) = &config.maculaos.mesh.realm {
        identity(config, a, &state, realm, &node);
    }

    let (mut p, known_tag) = plan_and_tag(config, &node, &state);
    // Pins only for a realm this node is in (the roster is checked against
    // its CA and realm when read), and only on a bootstrap or gateway
    // node's listeners (a peer keeps the roster to check what mDNS finds;
    // its server takes no connections), with the version they come from
    // (`maculaos mesh roster --check` compares it with the one kept).
    let roster = p
        .tls
        .as_ref()
        .filter(|_| p.bootstrap || p.gateway)
        .and_then(|_| state.read_roster())
        .map(|(_, r)| r);
    if let Some(r) = &roster {
        p.pinned = r.pins();
    }
    let mut text = p.render();
    if let Some(r) = roster.filter(|_| !p.pinned.is_empty()) {
        text.push_str(&format!("{ROSTER_LINE}{}\n", r.version));
    }
    if let Some(tag) = known_tag {
        text.push_str(&format!("{KNOWN_LINE}{tag}\n"));
    }
    // A new certificate (a join, a renewal) changes the file, so the
    // server restarts with it.
    if let Ok(id) = state.identity() {
        if let (Some(c), Some(ca)) = (id.certificate, id.ca) {
            text.push_str(&format!(
                "# node certificate sha256 {}, realm CA sha256 {}\n",
                c.sha256, ca.sha256
            ));
        }
    }
    // Which certificate the running daemon serves joins with: it restarts
    // only when that (or mesh.env) changes, not for new roster keys, so a
    // join or a revocation never cuts off the join service mid-answer.
    let identity_line = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("# node certificate sha256"))
            .map(str::to_string)
    };
    let before = fs::read_to_string(a.path(CONF)).unwrap_or_default();
    let identity_changed = identity_line(&before) != identity_line(&text);
    let changed = put_checked(a, &text)?;
    dead_peer_timeout(config, a, p.tls.is_some() && p.realm.is_some())?;
    let env = env_file(&p);
    let env_changed = a.put_file(AREA, ENV, env.as_bytes(), 0o644, ROOT_OWNER)?;
    if p.bootstrap || nats.jetstream.enabled {
        let dir = a.path(&nats.jetstream.store_dir);
        if !a.dry_run() && !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    if !systemd_runs(a) || a.opts.boot {
        // At boot both units start after apply, with what was just written.
        return Ok(());
    }
    // maculaos-meshd has nothing to do without a realm: it exits (0), and
    // starting it again at every apply would be a change every time (one
    // still running from a realm since removed is restarted, and exits).
    let units: Vec<&str> = UNITS
        .into_iter()
        .filter(|u| *u == UNITS[0] || p.realm.is_some() || a.unit_active(u))
        .collect();
    for unit in units {
        let restart = if unit == UNITS[0] {
            changed || env_changed
        } else {
            env_changed || identity_changed
        };
        if restart {
            a.act(AREA, ("restart", "restarted"), unit, || {
                systemctl(&["restart", unit])
            });
        } else if !a.unit_active(unit) {
            a.act(AREA, ("start", "started"), unit, || {
                systemctl(&["start", unit])
            });
        }
    }
    Ok(())
}

/// Linux keeps retransmitting to a peer that stopped answering for ~15
/// minutes (tcp_retries2 = 15), and nats-server 2.9 sends no PING on a
/// route or leafnode it keeps writing to (JetStream's replication always
/// does), so a dead bootstrap node's route stays "up" that long: its
/// interest lingers, and a peer failing over to another bootstrap node is
/// refused as a loop until then. A node of a realm gives up on a peer
/// that acknowledged nothing for ~25 s instead (6 retries). A value in
/// `maculaos.sysctl` wins (its file sorts after this one, and it is not
/// overwritten here).
const RETRIES_FILE: &str = "/etc/sysctl.d/80-maculaos-mesh.conf";
const RETRIES_KEY: &str = "net.ipv4.tcp_retries2";
const RETRIES: &str = "6";

fn dead_peer_timeout(config: &Config, a: &mut Applier, in_realm: bool) -> Result<(), String> {
    if !in_realm {
        a.remove_file(AREA, RETRIES_FILE)?;
        return Ok(());
    }
    let text = format!(
        "# Written by `maculaos apply` (mesh step): a dead mesh peer is given up after ~25 s.\n{RETRIES_KEY} = {RETRIES}\n"
    );
    a.put_file(AREA, RETRIES_FILE, text.as_bytes(), 0o644, ROOT_OWNER)?;
    if a.live()
        && !config
            .maculaos
            .sysctl
            .keys()
            .any(|k| k.as_str() == RETRIES_KEY)
    {
        crate::kernel::set_param(a, RETRIES_KEY, RETRIES);
    }
    Ok(())
}

/// What a CA holder puts in its own certificate besides its name and
/// `<name>.local`: the host of `mesh.advertise_address`, which other nodes
/// dial, as a DNS name or an address.
pub fn advertised(config: &Config, node: &str) -> (Vec<String>, Vec<std::net::IpAddr>) {
    let host = advertise_host(config, node);
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        (Vec::new(), vec![ip])
    } else if host == format!("{node}.local") || host == node {
        (Vec::new(), Vec::new())
    } else {
        (vec![host], Vec::new())
    }
}

/// The node's identity in `realm`: the realm's first bootstrap node makes
/// the realm; a CA holder renews its own certificate (expiry, new name,
/// new advertised name); others are told how to join.
fn identity(config: &Config, a: &mut Applier, state: &State, realm: &str, node: &str) {
    let mesh = &config.maculaos.mesh;
    let bootstrap = mesh.effective_roles().contains(&MeshRole::Bootstrap);
    let (names, ips) = advertised(config, node);
    let id = match state.identity() {
        Ok(id) => id,
        Err(e) => {
            a.error(AREA, format!("reading the node's mesh identity: {e}"));
            return;
        }
    };
    if !state.joined(realm) {
        let first = bootstrap && plan(config, node, state).knows_no_other_bootstrap_node();
        if first && mesh.tls_mode == TlsMode::Development {
            a.act(
                AREA,
                ("make", "made"),
                &format!("the CA of realm {realm} and this node's certificate"),
                || {
                    state
                        .create_realm(realm, node, &names, &ips)
                        .map_err(|e| e.to_string())
                },
            );
        } else if first {
            a.note(
                AREA,
                format!(
                    "tls_mode production: realm {realm} has no CA on this node yet: give it the \
                     operator's with `sudo maculaos mesh ca import --cert ca.crt --key ca.key` \
                     (an ECDSA P-256 CA); until then the NATS server serves this node only"
                ),
            );
        } else {
            a.note(
                AREA,
                format!(
                    "not in realm {realm} yet: run `maculaos mesh join TOKEN` with a token from \
                     `maculaos mesh token create` on the realm's first bootstrap node; until \
                     then the NATS server serves this node only"
                ),
            );
        }
        return;
    }
    let Some(cert) = id.certificate else { return };
    if id.ca_holder {
        let why = if state.needs_renewal() {
            Some("its certificate expires soon".to_string())
        } else if cert.common_name != node {
            Some(format!("its name changed from {}", cert.common_name))
        } else {
            names
                .iter()
                .cloned()
                .chain(ips.iter().map(|i| i.to_string()))
                .find(|n| !state.certificate_names(n))
                .map(|n| format!("it is advertised as {n}"))
        };
        if let Some(why) = why {
            a.act(
                AREA,
                ("renew", "renewed"),
                &format!("this node's certificate ({why})"),
                || {
                    state
                        .sign_own(realm, node, &names, &ips)
                        .map_err(|e| e.to_string())
                },
            );
        }
    } else if cert.common_name != node {
        a.note(
            AREA,
            format!(
                "this node's certificate names it {}, its hostname is {node}: join again \
                 with a new token to be known by its new name",
                cert.common_name
            ),
        );
    }
}

/// Write the server's configuration once nats-server accepts it (live
/// only: a test tree has no server to ask). Returns whether it changed.
fn put_checked(a: &mut Applier, text: &str) -> Result<bool, String> {
    let path = a.path(CONF);
    if fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(false);
    }
    // /etc is rebuilt at every boot, so the file is new at every boot: a
    // text this version of the server already accepted is not checked again
    // (starting nats-server costs a boot about a second under emulation).
    let version = fs::read_to_string(a.path("/etc/os-release")).unwrap_or_default();
    let key = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(format!("{version}\n{text}").as_bytes()))
    };
    let stamp = a.path(&format!(
        "{}/nats.conf.checked",
        maculaos_mesh::state::MESH_DIR
    ));
    let known = fs::read_to_string(&stamp).is_ok_and(|k| k == key);
    if a.live() && !a.dry_run() && !known {
        let dir = path.parent().unwrap_or(&path).to_owned();
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let candidate = dir.join(".nats.conf.check");
        fs::write(&candidate, text).map_err(|e| format!("{}: {e}", candidate.display()))?;
        let checked = Cmd::new(a.path(NATS_SERVER).to_string_lossy().as_ref())
            .args(["-t", "-c"])
            .arg(candidate.to_string_lossy().as_ref())
            .quiet()
            .run();
        let _ = fs::remove_file(&candidate);
        if let Err(e) = checked {
            return Err(format!(
                "nats-server refuses the configuration made for this node ({}); the previous one stays in force",
                crate::applier::why(&e)
            ));
        }
        // Only a shortcut: without it the next boot checks again.
        let _ = fs::write(&stamp, &key);
    }
    a.put_file(AREA, CONF, text.as_bytes(), 0o644, ROOT_OWNER)
}

/// How a service on the node reaches the mesh, and what `maculaos mesh`
/// shows without root (the configuration and identity are root's).
pub fn env_file(p: &ServerPlan) -> String {
    let (host, port) = p.listen.rsplit_once(':').unwrap_or((&p.listen, "4222"));
    let realm = p.realm.clone().unwrap_or_default();
    let mut roles = vec!["peer"];
    if p.bootstrap {
        roles.push("bootstrap");
    }
    if p.gateway {
        roles.push("gateway");
    }
    // The other bootstrap nodes this one connects to: routes for a
    // bootstrap node (itself, the first route, left out), leafnode
    // addresses for the others.
    let others: Vec<String> = if p.bootstrap {
        p.routes()
            .iter()
            .skip(1)
            .map(|e| e.url("nats-route"))
            .collect()
    } else {
        p.remotes().iter().map(|e| e.url("nats-leaf")).collect()
    };
    let mut s = String::from(crate::applier::HEADER);
    s.push_str(&format!("NATS_URL=nats://{host}:{port}\n"));
    s.push_str(&format!("MACULA_NODE={}\n", p.node));
    s.push_str(&format!("MACULA_REALM={realm}\n"));
    if !realm.is_empty() {
        for (k, kind) in [
            ("PUB", "pub"),
            ("SUB", "sub"),
            ("RPC", "rpc"),
            ("DISCOVER", "discover"),
        ] {
            s.push_str(&format!("MACULA_{k}_PREFIX=macula.{kind}.{realm}\n"));
        }
    }
    s.push_str(&format!("MACULA_ROLES={}\n", roles.join(",")));
    s.push_str(&format!(
        "MACULA_JOINED={}\n",
        if p.tls.is_some() && p.realm.is_some() {
            "yes"
        } else {
            "no"
        }
    ));
    s.push_str(&format!("MACULA_CONNECTS_TO={}\n", others.join(",")));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{opts, yaml};

    fn node_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("usr/sbin")).unwrap();
        fs::write(r.join("usr/sbin/nats-server"), "").unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(r.join("etc/hostname"), "b1\n").unwrap();
        dir
    }

    #[test]
    fn the_configured_bootstrap_nodes_else_the_known_ones() {
        use maculaos_mesh::known::KnownNode;
        let dir = tempfile::tempdir().unwrap();
        let st = State::new(dir.path());
        let k = |a: &str, role: &str, source: &str| KnownNode {
            address: a.into(),
            role: role.into(),
            source: source.into(),
        };
        st.learn(
            "io.macula",
            &[
                k("b1.local:4433", "bootstrap", "join"),
                k("b2.local:4433", "bootstrap", "mdns"),
                k("g1.local:4433", "gateway", "mdns"),
            ],
            true,
        )
        .unwrap();
        let hosts = |l: &[Endpoint]| l.iter().map(|e| e.host.clone()).collect::<Vec<_>>();
        let peer = yaml("maculaos:\n  mesh:\n    realm: io.macula\n");
        let (b, r, tag) = dial_list(&peer, &st);
        assert_eq!(
            (hosts(&b), hosts(&r)),
            (
                vec!["b1.local".into(), "b2.local".into()],
                vec!["g1.local".into()]
            )
        );
        assert!(tag.is_some());
        let gw = yaml("maculaos:\n  mesh:\n    realm: io.macula\n    role: gateway\n");
        let (b, r, gw_tag) = dial_list(&gw, &st);
        assert_eq!((b.len(), r.len()), (2, 0));
        // Another gateway learnt of: the gateway's tag (and nats.conf) stay.
        st.learn("io.macula", &[k("g2.local:4433", "gateway", "mdns")], false)
            .unwrap();
        assert_eq!(dial_list(&gw, &st).2, gw_tag);
        assert_ne!(dial_list(&peer, &st).2, tag);
        // A bootstrap node routes to those it was told of, not to those seen.
        let boot = yaml("maculaos:\n  mesh:\n    realm: io.macula\n    role: bootstrap\n");
        let (b, r, v) = dial_list(&boot, &st);
        assert_eq!((hosts(&b), r.len(), v), (vec!["b1.local".into()], 0, None));
        // The configuration wins; another realm's list is not used.
        let named =
            yaml("maculaos:\n  mesh:\n    realm: io.macula\n    bootstrap_peers: [b9.local]\n");
        assert_eq!(hosts(&dial_list(&named, &st).0), ["b9.local"]);
        let other = yaml("maculaos:\n  mesh:\n    realm: io.other\n");
        let (b, r, v) = dial_list(&other, &st);
        assert_eq!((b.len(), r.len(), v), (0, 0, None));
    }

    #[test]
    fn the_first_bootstrap_node_makes_its_realm_and_serves_it() {
        let dir = node_tree();
        let c = yaml("maculaos:\n  mesh:\n    realm: io.macula\n    role: bootstrap\n");
        let r = crate::apply(&c, &opts(dir.path()));
        assert!(r.ok(), "{:?}", r.errors);
        assert!(
            r.changes
                .iter()
                .any(|c| c.contains("the CA of realm io.macula")),
            "{:?}",
            r.changes
        );
        let conf = fs::read_to_string(dir.path().join("etc/maculaos/nats.conf")).unwrap();
        assert!(
            conf.contains("leafnodes") && conf.contains("jetstream {"),
            "{conf}"
        );
        let env = read_env(dir.path());
        assert_eq!(env["MACULA_PUB_PREFIX"], "macula.pub.io.macula");
        assert_eq!(env["MACULA_ROLES"], "peer,bootstrap");
        assert_eq!(env["MACULA_JOINED"], "yes");
        assert_eq!(env["MACULA_CONNECTS_TO"], "");
        // Again: nothing changes, no second CA.
        let again = crate::apply(&c, &opts(dir.path()));
        assert!(
            !again.changes.iter().any(|c| c.contains("mesh")),
            "{:?}",
            again.changes
        );
    }

    #[test]
    fn a_node_that_has_not_joined_serves_only_itself_and_says_how_to_join() {
        let dir = node_tree();
        let c = yaml(
            "maculaos:\n  mesh:\n    realm: io.macula\n    bootstrap_peers: [b0.local]\n    roles: {bootstrap: true}\n",
        );
        let r = crate::apply(&c, &opts(dir.path()));
        assert!(r.ok(), "{:?}", r.errors);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("maculaos mesh join TOKEN")),
            "{:?}",
            r.notes
        );
        let conf = fs::read_to_string(dir.path().join("etc/maculaos/nats.conf")).unwrap();
        assert!(!conf.contains("leafnodes"), "{conf}");
        assert!(!State::under(dir.path()).identity().unwrap().ca_holder);
        let env = read_env(dir.path());
        assert_eq!(env["MACULA_JOINED"], "no");
        assert_eq!(env["MACULA_CONNECTS_TO"], "nats-route://b0.local:6222");
    }

    #[test]
    fn nats_disabled_removes_the_server_configuration() {
        let dir = node_tree();
        let on = yaml("maculaos:\n  mesh:\n    realm: io.macula\n");
        crate::apply(&on, &opts(dir.path()));
        assert!(dir.path().join("etc/maculaos/nats.conf").exists());
        let off = yaml("maculaos:\n  nats:\n    enabled: false\n");
        let r = crate::apply(&off, &opts(dir.path()));
        assert!(r.ok(), "{:?}", r.errors);
        assert!(!dir.path().join("etc/maculaos/nats.conf").exists());
    }
}
