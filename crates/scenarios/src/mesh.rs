//! The mesh plane on three saved nodes of one LAN: two bootstrap nodes and
//! a peer in one realm. The first bootstrap node makes the realm; the
//! others join with one-time tokens made there; a publication on the peer
//! reaches subscribers on both bootstrap nodes; a bootstrap node's ping is
//! answered by the peer; a NATS client that is not ours (async-nats on the
//! host, through SSH forwards) publishes, requests and answers the same way;
//! a key-value bucket kept on both bootstrap nodes is written on the peer.
//! With the bootstrap node its leafnode goes to killed the peer stays in
//! the realm through the other; the killed node rejoins when it boots
//! again, and the bucket's value is read back. The peer, revoked on the CA
//! holder, is refused by both bootstrap nodes once they have the new
//! roster. A node whose certificate comes from another realm's CA is
//! refused, and its `maculaos mesh status` says why. The fleet: the three
//! nodes healthy in `maculaos fleet list` from their heartbeats, and the
//! revoked peer offline once its heartbeats stop.

use crate::harness::{ensure, Ctx, BOOT_TIMEOUT, CMD_TIMEOUT};
use crate::nats::Nats;
use crate::pool::Nodes;
use anyhow::{Context, Result};
use maculaos_vm::Ssh;
use serde_json::Value;
use std::time::{Duration, Instant};

const REALM: &str = "io.macula.test";
const DROPIN: &str = "/var/lib/maculaos/config.d/60-mesh.yaml";
/// The WireGuard overlay, on for every node of the realm: no peer listed,
/// the realm's nodes become peers through the mesh.
const OVERLAY: &str = "    wireguard: {enabled: true}\n";

/// `maculaos mesh status --json` on a node.
fn status(ssh: &Ssh) -> Result<Value> {
    let out = ssh.check_timeout("sudo maculaos mesh status --json", CMD_TIMEOUT)?;
    serde_json::from_str(&out).with_context(|| format!("mesh status --json printed {out:?}"))
}

/// Names of the nodes `s` has a connection of `kind` to.
fn connected(s: &Value, kind: &str) -> Vec<String> {
    s["connections"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["kind"] == kind && c["state"] == "connected")
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Configure node `i` and apply it.
fn configure(lan: &Nodes, i: usize, yaml: &str) -> Result<()> {
    let ssh = &lan.nodes[i].ssh;
    crate::config::put_file(ssh, DROPIN, yaml)?;
    ssh.check_timeout("sudo maculaos apply", CMD_TIMEOUT)?;
    Ok(())
}

/// Wait until what `read` gives on node `i` satisfies `cond`; returns how
/// the wait ended and the last value read.
fn wait_read(
    lan: &mut Nodes,
    i: usize,
    what: &str,
    read: fn(&Ssh) -> Result<Value>,
    mut cond: impl FnMut(&Value) -> bool,
) -> (Result<()>, Value) {
    let mut last = Value::Null;
    let r = lan.wait_until(i, what, BOOT_TIMEOUT, |ssh| {
        last = read(ssh)?;
        Ok(cond(&last))
    });
    (r, last)
}

/// Wait until node `i`'s mesh status satisfies `cond`; the last status is
/// in the error.
fn wait_status(
    lan: &mut Nodes,
    i: usize,
    what: &str,
    cond: impl FnMut(&Value) -> bool,
) -> Result<Value> {
    let (r, last) = wait_read(lan, i, what, status, cond);
    r.with_context(|| format!("node {i}'s last mesh status: {last:#}"))?;
    Ok(last)
}

/// `maculaos fleet list --json` on a node; `Null` while it fails (the
/// bucket not made yet, no quorum for a moment).
pub(crate) fn fleet(ssh: &Ssh) -> Result<Value> {
    let r = ssh.run_timeout("maculaos fleet list --json", CMD_TIMEOUT)?;
    if !r.success() {
        return Ok(serde_json::json!({ "error": r.stderr.trim() }));
    }
    serde_json::from_str(&r.stdout)
        .with_context(|| format!("fleet list --json printed {:?}", r.stdout))
}

/// The status `fleet` gives `node` (`None`: not listed).
pub(crate) fn fleet_status(fleet: &Value, node: &str) -> Option<String> {
    fleet["members"]
        .as_array()?
        .iter()
        .find(|m| m["node"] == node)
        .and_then(|m| m["status"].as_str().map(str::to_string))
}

/// Wait until node `i`'s fleet list satisfies `cond`; the last list is in
/// the error.
pub(crate) fn wait_fleet(
    lan: &mut Nodes,
    i: usize,
    what: &str,
    cond: impl FnMut(&Value) -> bool,
) -> Result<Value> {
    let (r, last) = wait_read(lan, i, what, fleet, cond);
    if r.is_err() {
        // What the agent said about its heartbeats, for the report.
        let said = agent_on_fleet(&lan.nodes[i].ssh, 5);
        r.with_context(|| {
            format!("node {i}'s last fleet list: {last:#}\nits agent on the fleet:\n{said}")
        })?;
    }
    Ok(last)
}

/// The last `lines` the node's agent said about the fleet, for a report.
fn agent_on_fleet(ssh: &Ssh, lines: usize) -> String {
    ssh.run(&format!(
        "sudo journalctl -u maculaos-agent --no-pager -o cat | grep -i fleet | tail -n {lines}"
    ))
    .map(|o| o.stdout)
    .unwrap_or_default()
}

/// A token for one node, made on the realm's CA holder.
fn token(ssh: &Ssh) -> Result<String> {
    let out = ssh.check_timeout("sudo maculaos mesh token create --ttl 10m", CMD_TIMEOUT)?;
    let t = out.trim().to_string();
    ensure(t.starts_with("MACULA-JOIN-1:"), || {
        format!("mesh token create printed {out:?}")
    })?;
    Ok(t)
}

/// Whether `from` gets an answer to `maculaos mesh ping NODE`.
fn pings(from: &Ssh, node: &str) -> Result<bool> {
    Ok(from
        .run_timeout(&format!("maculaos mesh ping {node} --json"), CMD_TIMEOUT)?
        .success())
}

/// The median round trip of 20 `maculaos mesh ping NODE` from `from`, ms.
fn median_rtt(from: &Ssh, node: &str) -> Result<f64> {
    let out = from.check_timeout(
        &format!("maculaos mesh ping {node} -c 20 --json"),
        CMD_TIMEOUT,
    )?;
    let v: Value =
        serde_json::from_str(&out).with_context(|| format!("mesh ping printed {out:?}"))?;
    let mut ms: Vec<f64> = v
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["rtt_ms"].as_f64()).collect())
        .unwrap_or_default();
    ms.sort_by(f64::total_cmp);
    ms.get(ms.len() / 2)
        .copied()
        .with_context(|| format!("no ping of {node} was answered: {out}"))
}

/// Make realm [`REALM`] of the first three nodes of `lan`: node 0, a
/// bootstrap node naming no other, makes it; node 1, a bootstrap node
/// routing to node 0, and node 2, a peer of both, join with one-time
/// tokens made there (a used token is refused). `more` is added to each
/// node's `mesh:` section.
pub(crate) fn three_node_realm(lan: &mut Nodes, more: &str) -> Result<()> {
    let n: Vec<&str> = lan.nodes.iter().map(|n| n.hostname).collect();

    // Node 0 names no other bootstrap node: it makes the realm.
    configure(
        lan,
        0,
        &format!("maculaos:\n  mesh:\n    realm: {REALM}\n    role: bootstrap\n{more}"),
    )?;
    let s0 = wait_status(lan, 0, "node 0 to serve its new realm", |s| {
        s["state"] == "serving"
    })?;
    ensure(s0["identity"]["ca_holder"] == true, || {
        format!("node 0 made the realm but does not hold its CA: {s0:#}")
    })?;
    // Node 1 is a bootstrap node that routes to node 0; node 2 a peer of both.
    configure(
        lan,
        1,
        &format!(
            "maculaos:\n  mesh:\n    realm: {REALM}\n    role: bootstrap\n    bootstrap_peers: [{}.local]\n{more}",
            n[0]
        ),
    )?;
    configure(
        lan,
        2,
        &format!(
            "maculaos:\n  mesh:\n    realm: {REALM}\n    bootstrap_peers: ['{}.local:4433', '{}.local:4433']\n{more}",
            n[0], n[1]
        ),
    )?;
    // Not in the realm before it joined: its server (restarted by apply)
    // serves only itself.
    let s2 = wait_status(lan, 2, "node 2's server to answer", |s| {
        s["state"] != "down"
    })?;
    ensure(s2["state"] == "not joined", || {
        format!("node 2 is in the realm before it joined: {s2:#}")
    })?;

    // One token each; a used token does not let a second node in.
    for i in [1, 2] {
        let t = token(&lan.nodes[0].ssh)?;
        lan.nodes[i]
            .ssh
            .check_timeout(&format!("sudo maculaos mesh join {t}"), CMD_TIMEOUT)?;
        if i == 2 {
            let again = lan.nodes[1]
                .ssh
                .run_timeout(&format!("sudo maculaos mesh join {t}"), CMD_TIMEOUT)?;
            ensure(
                !again.success() && again.stderr.contains("already used"),
                || format!("a used token was taken again: {again:?}"),
            )?;
        }
    }
    wait_status(lan, 1, "node 1 to route to node 0", |s| {
        s["state"] == "connected" && !connected(s, "route").is_empty()
    })?;
    let s2 = wait_status(lan, 2, "node 2's leafnode connection", |s| {
        s["state"] == "connected"
    })?;
    ensure(s2["identity"]["certificate"]["realm"] == REALM, || {
        format!("node 2's certificate is not for {REALM}: {s2:#}")
    })?;
    Ok(())
}

pub fn mesh_realm(ctx: &mut Ctx) -> Result<()> {
    let started = Instant::now();
    let mut lan = ctx.nodes(3)?;
    let n: Vec<&str> = lan.nodes.iter().map(|n| n.hostname).collect();
    three_node_realm(&mut lan, OVERLAY)?;
    ctx.record(
        "mesh: 3 nodes from restore to one realm (wall)",
        started.elapsed().as_secs_f64(),
    );

    // The overlay: no node lists a peer, yet each takes the others' keys
    // from the realm (signed announcements over the mesh) and pings them.
    let t = Instant::now();
    let mut overlay = Vec::new();
    for node in &lan.nodes {
        let s = crate::wireguard::status(&node.ssh)?;
        overlay.push(crate::wireguard::key_and_address(&s));
    }
    for (from, to) in [(0, 2), (2, 1)] {
        let addr = overlay[to].1.clone();
        lan.wait_until(
            from,
            &format!("node {from} to ping node {to} over the overlay ({addr})"),
            BOOT_TIMEOUT,
            |ssh| crate::wireguard::pings(ssh, &addr),
        )?;
    }
    let s0 = crate::wireguard::status(&lan.nodes[0].ssh)?;
    let keys = crate::wireguard::peer_keys(&s0);
    ensure(
        keys.len() == 2 && keys.contains(&overlay[1].0) && keys.contains(&overlay[2].0),
        || {
            format!(
                "node 0's overlay peers, from the realm: {:#}",
                s0["wireguard"]
            )
        },
    )?;
    ctx.record(
        "mesh: realm of 3 to every overlay ping passing (wall)",
        t.elapsed().as_secs_f64(),
    );

    // A publication on the peer reaches subscribers on both bootstrap
    // nodes, from `maculaos mesh pub` and from a NATS client that is not
    // ours (async-nats on the host, through an SSH forward to the peer's
    // local NATS port).
    let t = Instant::now();
    let host2 = Nats::connect(&lan.nodes[2].ssh)?;
    for i in [0, 1] {
        lan.nodes[i].ssh.check(
            "rm -f /tmp/sub.out; setsid sh -c 'maculaos mesh sub news --timeout 300 >/tmp/sub.out 2>/tmp/sub.err' </dev/null >/dev/null 2>&1 &",
        )?;
    }
    let got = |ssh: &Ssh| -> Result<bool> {
        let out = ssh.run("cat /tmp/sub.out")?.stdout;
        Ok(out.contains("hello from the peer") && out.contains("hello from async-nats"))
    };
    let pubs = lan.nodes[2].ssh.clone();
    for i in [0, 1] {
        // Interest travels to the peer over the leafnode: publish until it arrives.
        lan.wait_until(
            i,
            &format!("node {i} to receive both of the peer's publications"),
            CMD_TIMEOUT,
            |ssh| {
                pubs.check("maculaos mesh pub news 'hello from the peer'")?;
                host2.publish(&format!("macula.pub.{REALM}.news"), "hello from async-nats")?;
                got(ssh)
            },
        )?;
    }
    let out = lan.nodes[0].ssh.check("cat /tmp/sub.out")?;
    let m: Value = serde_json::from_str(out.lines().next().unwrap_or_default())?;
    ensure(m["subject"] == format!("macula.sub.{REALM}.news"), || {
        format!("the subscriber saw {m}")
    })?;
    for i in [0, 1] {
        lan.nodes[i]
            .ssh
            .check("pkill -f '^maculaos mesh sub news' || true")?;
    }
    ctx.record(
        "mesh: publications from the peer seen on both bootstrap nodes (wall)",
        t.elapsed().as_secs_f64(),
    );
    let t = Instant::now();

    // Request/reply: both bootstrap nodes reach the peer's responder; a
    // foreign client on a bootstrap node does too, and one on the peer
    // answers a bootstrap node's request.
    for i in [0, 1] {
        let from = lan.nodes[i].ssh.clone();
        lan.wait_until(
            i,
            &format!("node {i}'s ping of {}", n[2]),
            CMD_TIMEOUT,
            |_| pings(&from, n[2]),
        )?;
    }
    let host0 = Nats::connect(&lan.nodes[0].ssh)?;
    let pong = host0.request(&format!("macula.rpc.{REALM}.node.{}.ping", n[2]), "")?;
    ensure(pong.contains(&format!("\"node\":\"{}\"", n[2])), || {
        format!(
            "a ping of {} through node 0 was answered with {pong:?}",
            n[2]
        )
    })?;
    host2.answer(
        &format!("macula.rpc.{REALM}.echo"),
        "answered by async-nats",
        Duration::from_secs(600),
    )?;
    let from = lan.nodes[0].ssh.clone();
    lan.wait_until(
        0,
        "node 0's request to the peer's foreign responder",
        CMD_TIMEOUT,
        |_| {
            Ok(from
                .run_timeout("maculaos mesh request echo hi", CMD_TIMEOUT)?
                .stdout
                .contains("answered by async-nats"))
        },
    )?;

    ctx.record(
        "mesh: requests answered both ways, ours and async-nats (wall)",
        t.elapsed().as_secs_f64(),
    );

    // A service running on the peer is found from a bootstrap node; a name
    // no node runs finds nothing.
    let t = Instant::now();
    crate::services::build_image(&lan.nodes[2].ssh, "localhost/web:1")?;
    crate::config::put_file(
        &lan.nodes[2].ssh,
        "/var/lib/maculaos/config.d/60-web.yaml",
        "services:\n  web:\n    image: localhost/web:1\n    pull: never\n    ports: [\"8080:80\"]\n",
    )?;
    lan.nodes[2]
        .ssh
        .check_timeout("sudo maculaos apply >/dev/null", CMD_TIMEOUT)?;
    let mut found = String::new();
    lan.wait_until(
        0,
        "node 0 to find the peer's service web",
        CMD_TIMEOUT,
        |ssh| {
            found = ssh
                .run_timeout("maculaos mesh discover web --json", CMD_TIMEOUT)?
                .stdout;
            Ok(found.contains(&format!("\"node\": \"{}\"", n[2])))
        },
    )?;
    let offers: Value = serde_json::from_str(&found)?;
    ensure(
        offers[0]["host"] == format!("{}.local", n[2]) && offers[0]["ports"][0] == "8080:80",
        || format!("the peer's offer of web: {offers:#}"),
    )?;
    let listed = lan.nodes[2].ssh.check("maculaos services --json")?;
    ensure(
        listed.contains(&format!("announced on macula.discover.{REALM}.web")),
        || format!("`services` on the peer does not say web is announced:\n{listed}"),
    )?;
    let none = lan.nodes[0]
        .ssh
        .run_timeout("maculaos mesh discover nothing-runs-this", CMD_TIMEOUT)?;
    ensure(
        !none.success() && none.stderr.contains("no node of realm"),
        || format!("a service no node runs was found: {none:?}"),
    )?;
    ctx.record(
        "mesh: a service on the peer found from a bootstrap node (wall)",
        t.elapsed().as_secs_f64(),
    );
    // Benchmarks for the report (not checks): round trips over the
    // leafnode and on the node's own server, messages through the mesh,
    // the servers' memory.
    // A benchmark that fails is reported, not a failure of the scenario.
    let peer_ssh = &lan.nodes[2].ssh;
    let rate = host2.throughput(
        &host0,
        &format!("macula.pub.{REALM}.bench"),
        &format!("macula.sub.{REALM}.bench"),
        2000,
        128,
    );
    let benches = [
        (
            "mesh bench: ping round trip, peer to bootstrap node over the leafnode, median of 20 (ms)",
            median_rtt(peer_ssh, n[0]),
        ),
        (
            "mesh bench: ping round trip, peer to itself on its own server, median of 20 (ms)",
            median_rtt(peer_ssh, n[2]),
        ),
        (
            "mesh bench: 128-byte messages, peer to bootstrap node, async-nats on the host through SSH forwards (msgs/s)",
            rate,
        ),
    ];
    for (what, r) in benches {
        match r {
            Ok(v) => ctx.record(what, v),
            Err(e) => println!("    benchmark {what}: not measured: {e:#}"),
        }
    }
    for (i, what) in [(0, "bootstrap node"), (2, "peer")] {
        if let Some(mem) = status(&lan.nodes[i].ssh)
            .ok()
            .and_then(|s| s["server"]["mem"].as_u64())
        {
            ctx.record(
                format!("mesh bench: nats-server resident memory on a {what} (MiB)"),
                mem as f64 / 1048576.0,
            );
        }
    }
    let t = Instant::now();
    // The realm's key-value store: a bucket kept on both bootstrap nodes,
    // written on the peer (JetStream elects the bucket's leader once both
    // bootstrap nodes see each other).
    let peer = lan.nodes[2].ssh.clone();
    lan.wait_until(
        2,
        "a bucket kept on both bootstrap nodes",
        CMD_TIMEOUT,
        |_| {
            Ok(peer
                .run_timeout("maculaos mesh kv create settings --replicas 2", CMD_TIMEOUT)?
                .success())
        },
    )?;
    peer.check_timeout("maculaos mesh kv put settings mode eco", CMD_TIMEOUT)?;
    ctx.record(
        "mesh: a bucket kept on both bootstrap nodes made and written (wall)",
        t.elapsed().as_secs_f64(),
    );

    // The fleet: every node's health agent puts its heartbeat in the
    // realm's bucket; the peer reads all three nodes healthy, and the
    // summary line and a node's status as an operator reads them.
    let t = Instant::now();
    wait_fleet(
        &mut lan,
        2,
        "the peer's fleet list to show the three nodes healthy",
        |f| {
            n.iter()
                .all(|x| fleet_status(f, x).as_deref() == Some("healthy"))
        },
    )?;
    ctx.record(
        "fleet: all three nodes healthy in the peer's fleet list (wall)",
        t.elapsed().as_secs_f64(),
    );
    let text = lan.nodes[0]
        .ssh
        .check_timeout("maculaos fleet list", CMD_TIMEOUT)?;
    ensure(
        text.starts_with("3 nodes │ 3 healthy │ 0 degraded │ 0 offline"),
        || format!("node 0's fleet list:\n{text}"),
    )?;
    let one = lan.nodes[0].ssh.run_timeout(
        &format!("maculaos fleet status {}.local", n[2]),
        CMD_TIMEOUT,
    )?;
    ensure(
        one.success()
            && one.stdout.contains("healthy")
            && one.stdout.contains("Realm:        io.macula.test"),
        || format!("fleet status of the peer: {one:?}"),
    )?;
    if let Ok(hb) = lan.nodes[2]
        .ssh
        .check_timeout(&format!("maculaos mesh kv get fleet {}", n[2]), CMD_TIMEOUT)
    {
        // A heartbeat every 15 s.
        ctx.record(
            "fleet bench: heartbeat bytes per node per minute (bytes)",
            (hb.trim_end().len() * 4) as f64,
        );
    }

    // The bootstrap node the peer's leafnode goes to dies: the peer stays
    // in the realm through the other one.
    let s2 = status(&lan.nodes[2].ssh)?;
    let via = connected(&s2, "leafnode");
    let k = match via.as_slice() {
        [one] if one == n[0] => 0,
        [one] if one == n[1] => 1,
        _ => anyhow::bail!(
            "node 2 should have one leafnode, to {} or {}: {s2:#}",
            n[0],
            n[1]
        ),
    };
    let o = 1 - k;
    let t = Instant::now();
    lan.kill(k)?;
    let s2 = wait_status(
        &mut lan,
        2,
        &format!("node 2 to reach the realm through node {o}"),
        |s| connected(s, "leafnode").iter().any(|c| c == n[o]),
    )?;
    ensure(s2["state"] == "connected", || format!("{s2:#}"))?;
    ctx.record(
        "mesh: a bootstrap node killed to the peer connected through the other (wall)",
        t.elapsed().as_secs_f64(),
    );
    let from = lan.nodes[o].ssh.clone();
    lan.wait_until(
        o,
        &format!("node {o}'s ping of the peer with node {k} gone"),
        CMD_TIMEOUT,
        |_| pings(&from, n[2]),
    )?;
    // It boots again and is back in the realm, routed to the other.
    let t = Instant::now();
    lan.boot_again(k)?;
    wait_status(&mut lan, k, &format!("node {k} to rejoin its realm"), |s| {
        s["state"] == "connected" && !connected(s, "route").is_empty()
    })?;
    let from = lan.nodes[k].ssh.clone();
    lan.wait_until(
        k,
        &format!("node {k}'s ping of the peer after its reboot"),
        CMD_TIMEOUT,
        |_| pings(&from, n[2]),
    )?;
    ctx.record(
        "mesh: bootstrap node boot after a power cut to back in the realm (wall)",
        t.elapsed().as_secs_f64(),
    );
    // The bucket's value, read after the power cut by the node that had
    // it and, the standard way, by the foreign client on the peer.
    let back = lan.nodes[k].ssh.clone();
    lan.wait_until(
        k,
        &format!("node {k} to read the bucket again"),
        CMD_TIMEOUT,
        |_| {
            Ok(back
                .run_timeout("maculaos mesh kv get settings mode", CMD_TIMEOUT)?
                .stdout
                .trim()
                == "eco")
        },
    )?;
    // The bucket's leader may still be being elected: ask until it answers.
    let mut v = None;
    lan.wait_until(
        2,
        "async-nats on the peer to read the bucket",
        CMD_TIMEOUT,
        |_| {
            v = host2
                .kv_get(&REALM.replace('.', "_"), "settings", "mode")
                .ok();
            Ok(v.is_some())
        },
    )?;
    ensure(v == Some(Some("eco".to_string())), || {
        format!("async-nats read settings/mode as {v:?}, not \"eco\"")
    })?;
    // Heartbeats are stored again once both bootstrap nodes are back
    // (two copies need both): the three nodes healthy in the fleet again.
    wait_fleet(
        &mut lan,
        2,
        "the three nodes healthy in the fleet after the power cut",
        |f| {
            n.iter()
                .all(|x| fleet_status(f, x).as_deref() == Some("healthy"))
        },
    )?;
    drift(ctx, &mut lan)?;

    // Node 2 is revoked on the CA holder: both bootstrap nodes refuse it
    // once they have the new roster (their nats-servers pin its keys), and
    // it is out of the realm.
    let out = lan.nodes[0].ssh.check_timeout(
        &format!("sudo maculaos mesh revoke {} --json", n[2]),
        CMD_TIMEOUT,
    )?;
    let rev: Value = serde_json::from_str(&out)
        .with_context(|| format!("mesh revoke --json printed {out:?}"))?;
    let version = rev["roster_version"].as_u64().unwrap_or(u64::MAX);
    let t = Instant::now();
    for i in [0, 1] {
        wait_status(
            &mut lan,
            i,
            &format!(
                "node {i} to take roster version {version} and drop {}",
                n[2]
            ),
            |s| {
                // Kept, and in force: the server runs with its pins.
                s["roster"]["version"].as_u64() >= Some(version)
                    && s["roster_applied"].as_u64() >= Some(version)
                    && s["roster"]["revoked"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|x| x == n[2]))
                    && !connected(s, "leafnode").iter().any(|c| c == n[2])
            },
        )?;
    }
    let s2 = wait_status(&mut lan, 2, "node 2 to be refused", |s| {
        s["state"] == "connecting" && connected(s, "leafnode").is_empty()
    })?;
    ctx.record(
        "mesh: revoke to the revoked node refused by both bootstrap nodes (wall)",
        t.elapsed().as_secs_f64(),
    );
    ensure(!pings(&lan.nodes[1].ssh, n[2])?, || {
        format!("node 1 still reaches the revoked node: {s2:#}")
    })?;
    // Cut off, it sends no heartbeat: offline in the fleet within a
    // minute of its last one, the others still healthy.
    wait_fleet(
        &mut lan,
        0,
        "the revoked peer to be offline in the fleet",
        |f| {
            fleet_status(f, n[2]).as_deref() == Some("offline")
                && [n[0], n[1]]
                    .iter()
                    .all(|x| fleet_status(f, x).as_deref() == Some("healthy"))
        },
    )?;
    ctx.record(
        "fleet: revoke to the peer offline in the fleet list (wall)",
        t.elapsed().as_secs_f64(),
    );
    // Out of the overlay too: no longer a peer of either bootstrap node.
    for i in [0, 1] {
        let (key2, addr2) = overlay[2].clone();
        lan.wait_until(
            i,
            &format!("node {i} to drop the revoked node's overlay peer"),
            CMD_TIMEOUT,
            |ssh| {
                let s = crate::wireguard::status(ssh)?;
                Ok(!crate::wireguard::peer_keys(&s).contains(&key2)
                    && !crate::wireguard::pings(ssh, &addr2)?)
            },
        )?;
    }

    // Node 2 makes a realm of its own (another CA), then dials node 1 with
    // that certificate: refused, and its status says so.
    configure(
        &lan,
        2,
        "maculaos:\n  mesh:\n    realm: io.elsewhere\n    role: bootstrap\n",
    )?;
    configure(
        &lan,
        2,
        &format!(
            "maculaos:\n  mesh:\n    realm: io.elsewhere\n    bootstrap_peers: ['{}.local:4433']\n",
            n[1]
        ),
    )?;
    let s2 = wait_status(&mut lan, 2, "node 2's refusal to show in its status", |s| {
        s["errors"].as_array().is_some_and(|e| {
            e.iter()
                .any(|e| e.as_str().is_some_and(|e| e.contains("certificate")))
        })
    })?;
    ensure(
        s2["state"] == "connecting" && connected(&s2, "leafnode").is_empty(),
        || format!("a node of another realm got in: {s2:#}"),
    )?;
    let s1 = status(&lan.nodes[1].ssh)?;
    ensure(
        !connected(&s1, "leafnode").iter().any(|c| c == n[2]),
        || format!("node 1 took a leafnode from another realm: {s1:#}"),
    )?;

    // A benchmark for the report (not a check): a thousand simulated
    // nodes' heartbeats put from the host, then the fleet read on node 0.
    // A new connection: node 0 may be the one that was killed.
    let load =
        Nats::connect(&lan.nodes[0].ssh).and_then(|c| fleet_load(&c, &lan.nodes[0].ssh, 1000));
    match load {
        Ok(ms) => ctx.record(
            "fleet bench: fleet list of 1,000 simulated nodes and the realm's (ms)",
            ms,
        ),
        Err(e) => println!("    benchmark fleet list of 1,000 nodes: not measured: {e:#}"),
    }
    Ok(())
}

/// `maculaos fleet drift-check --json` on a node: each node's state
/// (`drifted`, `in step`, …) and the keys that differ with who set them.
fn drift_states(ssh: &Ssh) -> Result<Value> {
    let r = ssh.run_timeout("maculaos fleet drift-check --json", CMD_TIMEOUT)?;
    Ok(serde_json::from_str(&r.stdout)
        .unwrap_or_else(|_| serde_json::json!({ "error": r.stderr.trim(), "stdout": r.stdout })))
}

/// Wait until node 1's drift-check satisfies `cond`; the last one is in
/// the error.
fn wait_drift(lan: &mut Nodes, what: &str, cond: impl FnMut(&Value) -> bool) -> Result<Value> {
    let (r, last) = wait_read(lan, 1, what, drift_states, cond);
    if r.is_err() {
        // What each agent said about its heartbeats, for the report.
        let mut said = String::new();
        for (i, node) in lan.nodes.iter().enumerate() {
            let out = agent_on_fleet(&node.ssh, 3);
            said.push_str(&format!("node {i}:\n{out}"));
        }
        r.with_context(|| format!("the last drift-check on node 1: {last:#}\n{said}"))?;
    }
    Ok(last)
}

fn drift_state(d: &Value, node: &str) -> String {
    d.as_array()
        .and_then(|a| a.iter().find(|x| x["node"] == node))
        .and_then(|x| x["state"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Configuration drift: every node has the site's `SITE=hq` (a
/// provisioning file); the CA holder makes it the realm's desired
/// configuration: all in step. A hand-made `config.d` file on the peer
/// sets `SITE=lab`: `drift-check` on node 1 reports that key and that
/// file, only for the peer; `drift-fix --dry-run` names it, `--apply`
/// orders it back: in step again, and its `/etc/environment` says hq.
fn drift(ctx: &mut Ctx, lan: &mut Nodes) -> Result<()> {
    let n: Vec<&str> = lan.nodes.iter().map(|n| n.hostname).collect();
    let t = Instant::now();
    let site = "maculaos:\n  environment:\n    SITE: hq\n";
    for node in &lan.nodes {
        crate::config::put_file(&node.ssh, "/var/lib/maculaos/config.d/55-site.yaml", site)?;
        node.ssh
            .check_timeout("sudo maculaos apply >/dev/null", CMD_TIMEOUT)?;
    }
    crate::config::put_file(&lan.nodes[0].ssh, "/tmp/desired.yaml", site)?;
    lan.nodes[0].ssh.check_timeout(
        "sudo maculaos fleet desired set /tmp/desired.yaml",
        CMD_TIMEOUT,
    )?;
    wait_drift(
        lan,
        "every node in step with the desired configuration",
        |last| n.iter().all(|x| drift_state(last, x) == "in step"),
    )?;
    crate::config::put_file(
        &lan.nodes[2].ssh,
        "/var/lib/maculaos/config.d/70-hand.yaml",
        "maculaos:\n  environment:\n    SITE: lab\n",
    )?;
    lan.nodes[2]
        .ssh
        .check_timeout("sudo maculaos apply >/dev/null", CMD_TIMEOUT)?;
    let last = wait_drift(lan, "the peer's hand-made change reported", |last| {
        drift_state(last, n[2]) == "drifted"
    })?;
    let peer = last
        .as_array()
        .and_then(|a| a.iter().find(|x| x["node"] == n[2]))
        .cloned()
        .unwrap_or_default();
    ensure(
        peer["keys"][0]["key"] == "maculaos.environment.SITE"
            && peer["keys"][0]["set_by"] == "/var/lib/maculaos/config.d/70-hand.yaml"
            && peer["keys"].as_array().map_or(0, Vec::len) == 1
            && drift_state(&last, n[0]) == "in step"
            && drift_state(&last, n[1]) == "in step",
        || format!("drift-check on node 1: {last:#}"),
    )?;
    let text = lan.nodes[1]
        .ssh
        .run_timeout("maculaos fleet drift-check", CMD_TIMEOUT)?;
    ensure(
        !text.success()
            && text
                .stdout
                .contains(&format!("{}: configuration differs (1 key)", n[2])),
        || format!("drift-check's text on node 1: {text:?}"),
    )?;
    let dry = lan.nodes[0]
        .ssh
        .check_timeout("sudo maculaos fleet drift-fix --dry-run", CMD_TIMEOUT)?;
    ensure(
        dry.contains(n[2]) && dry.contains("would write") && !dry.contains(n[1]),
        || format!("drift-fix --dry-run printed {dry:?}"),
    )?;
    let fixed = lan.nodes[0]
        .ssh
        .check_timeout("sudo maculaos fleet drift-fix --apply --json", CMD_TIMEOUT)?;
    ensure(fixed.contains("\"accepted\": true"), || {
        format!("drift-fix --apply printed {fixed:?}")
    })?;
    wait_drift(lan, "the peer in step again after drift-fix", |last| {
        n.iter().all(|x| drift_state(last, x) == "in step")
    })?;
    // Its heartbeat may say so before maculaos-mesh-apply has run.
    lan.wait_until(
        2,
        "the peer's /etc/environment to say SITE=hq",
        CMD_TIMEOUT,
        |ssh| {
            let env = ssh.check("cat /etc/environment")?;
            Ok(env.contains("SITE=hq") || env.contains("SITE=\"hq\""))
        },
    )?;
    ctx.record(
        "fleet: desired configuration set to a hand change undone (wall)",
        t.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// Put `count` simulated heartbeats in the realm's fleet bucket through
/// `nats`, then time `maculaos fleet list --json` on `ssh`, in ms (as the
/// node's clock measures it, without SSH).
fn fleet_load(nats: &Nats, ssh: &Ssh, count: usize) -> Result<f64> {
    let items: Vec<(String, String)> = (0..count)
        .map(|i| {
            let node = format!("sim-{i:04}");
            let hb = serde_json::json!({
                "node": node, "realm": REALM, "roles": ["peer"], "version": "0.0.0-sim",
                "slot": "a", "update": "good", "last_update": null, "bad_versions": 0,
                "checks": 3, "failing": [], "cpu_percent": 5.0, "memory_percent": 20.0,
                "disk_percent": 10.0, "uptime_seconds": 100,
                "config_digest": "0000000000000000", "sent_at": 0
            });
            (node, hb.to_string())
        })
        .collect();
    nats.kv_put_many(&REALM.replace('.', "_"), "fleet", &items)?;
    let out = ssh.check_timeout(
        "t0=$(date +%s%N); maculaos fleet list --json >/tmp/fleet.json; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 ))",
        CMD_TIMEOUT,
    )?;
    let ms: f64 = out
        .trim()
        .parse()
        .with_context(|| format!("timing printed {out:?}"))?;
    let f: Value = serde_json::from_str(&ssh.check("cat /tmp/fleet.json")?)?;
    let listed = f["members"].as_array().map_or(0, Vec::len);
    ensure(listed >= count, || {
        format!("fleet list showed {listed} nodes of {count} put")
    })?;
    Ok(ms)
}

/// A production realm, and a gateway relaying a peer that cannot reach the
/// bootstrap node, which the peer finds by mDNS: node 0 (bootstrap,
/// `tls_mode: production`) makes the realm with the operator's CA,
/// node 1 is a gateway and node 2 a peer, neither configured with any
/// bootstrap node. Both join with tokens (the join answer names node 0);
/// node 2 learns of the gateway from its mDNS announcement. With node 2's
/// route to node 0 made unreachable, node 2's leafnode goes to the gateway,
/// its publication reaches node 0's subscriber and node 0's ping reaches it.
/// Then node 0 decommissions node 2 (see [`decommission`]).
pub fn mesh_gateway(ctx: &mut Ctx) -> Result<()> {
    let started = Instant::now();
    let mut lan = ctx.nodes(3)?;
    let n: Vec<&str> = lan.nodes.iter().map(|n| n.hostname).collect();
    // A production realm: node 0 makes no CA of its own and waits for the
    // operator's (made here with openssl); a key that is not the CA's is
    // refused and nothing is kept.
    configure(
        &lan,
        0,
        &format!(
            "maculaos:\n  mesh:\n    realm: {REALM}\n    role: bootstrap\n    tls_mode: production\n"
        ),
    )?;
    // Apply restarted its server: wait until it answers.
    let s0 = wait_status(&mut lan, 0, "node 0's server to answer", |s| {
        s["state"] != "down"
    })?;
    ensure(s0["state"] == "not joined", || {
        format!("node 0 is in its production realm without the operator's CA: {s0:#}")
    })?;
    let b = lan.nodes[0].ssh.clone();
    b.check(
        "cd /tmp && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
         -keyout op.key -out op.crt -subj '/CN=Operator CA' -days 730 \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
         && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.key",
    )?;
    let bad = b.run("sudo maculaos mesh ca import --cert /tmp/op.crt --key /tmp/other.key")?;
    ensure(
        !bad.success() && bad.stderr.contains("not the CA certificate's key"),
        || format!("a CA with the wrong key was taken: {bad:?}"),
    )?;
    b.check("sudo test ! -e /var/lib/maculaos/mesh/ca.key")?;
    b.check_timeout(
        "sudo maculaos mesh ca import --cert /tmp/op.crt --key /tmp/op.key",
        CMD_TIMEOUT,
    )?;
    let s0 = wait_status(&mut lan, 0, "node 0 to serve the operator's realm", |s| {
        s["state"] == "serving"
    })?;
    ensure(s0["identity"]["ca_holder"] == true, || format!("{s0:#}"))?;
    configure(
        &lan,
        1,
        &format!("maculaos:\n  mesh:\n    realm: {REALM}\n    role: gateway\n"),
    )?;
    configure(
        &lan,
        2,
        &format!("maculaos:\n  mesh:\n    realm: {REALM}\n"),
    )?;
    for i in [1, 2] {
        let t = token(&lan.nodes[0].ssh)?;
        lan.nodes[i]
            .ssh
            .check_timeout(&format!("sudo maculaos mesh join {t}"), CMD_TIMEOUT)?;
    }
    // Neither names a bootstrap node: the join answer told them of node 0.
    let boot = format!("{}.local:4433", n[0]);
    let gw = format!("{}.local:4433", n[1]);
    let known = |s: &Value, addr: &str, role: &str, source: &str| {
        s["known"].as_array().is_some_and(|k| {
            k.iter()
                .any(|k| k["address"] == addr && k["role"] == role && k["source"] == source)
        })
    };
    wait_status(&mut lan, 1, "the gateway's leafnode to node 0", |s| {
        known(s, &boot, "bootstrap", "join")
            && s["state"] == "connected"
            && connected(s, "leafnode").iter().any(|c| c == n[0])
    })?;
    // Node 2 sees the gateway announced on the LAN, and dials it after
    // node 0 (maculaos-mesh-apply.path applies what meshd learnt).
    wait_status(&mut lan, 2, "node 2 to learn of the gateway by mDNS", |s| {
        known(s, &boot, "bootstrap", "join")
            && known(s, &gw, "gateway", "mdns")
            && s["connects_to"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c.as_str().is_some_and(|c| c.contains(&gw)))
            })
    })?;
    ctx.record(
        "mesh-gateway: 3 nodes from restore to the gateway known by mDNS (wall)",
        started.elapsed().as_secs_f64(),
    );

    // Bootstrap nodes first: with node 0 reachable, node 2 goes to it.
    wait_status(&mut lan, 2, "node 2's leafnode to node 0", |s| {
        s["state"] == "connected" && connected(s, "leafnode") == [n[0]]
    })?;
    // Node 2 loses its way to node 0 (as behind a NAT, or on another
    // network): its server, restarted, gets no answer from node 0 and
    // takes the gateway.
    let t = Instant::now();
    let peer = lan.nodes[2].ssh.clone();
    // Every address node 0's name resolves to on node 2 (what its server
    // dials).
    let addrs = peer.check(&format!(
        "getent ahostsv4 {}.local | awk '{{print $1}}' | sort -u",
        n[0]
    ))?;
    let addrs: Vec<&str> = addrs.split_whitespace().collect();
    ensure(
        !addrs.is_empty()
            && addrs
                .iter()
                .all(|a| a.parse::<std::net::Ipv4Addr>().is_ok()),
        || format!("node 2 resolved {}.local to {addrs:?}", n[0]),
    )?;
    for a in &addrs {
        peer.check(&format!("sudo ip route add unreachable {a}/32"))?;
    }
    peer.check("sudo systemctl restart maculaos-nats")?;
    for a in &addrs {
        ensure(
            !peer
                .run(&format!("timeout 5 bash -c '</dev/tcp/{a}/4433'"))?
                .success(),
            || format!("node 2 still reaches node 0 at {a}:4433"),
        )?;
    }
    let s2 = wait_status(&mut lan, 2, "node 2's leafnode through the gateway", |s| {
        s["state"] == "connected" && connected(s, "leafnode") == [n[1]]
    })?;
    ctx.record(
        "mesh-gateway: route to the bootstrap node cut to the peer connected through the gateway (wall)",
        t.elapsed().as_secs_f64(),
    );
    // Relayed both ways: a publication on node 2 reaches node 0's
    // subscriber, node 0's ping is answered by node 2.
    lan.nodes[0].ssh.check(
        "rm -f /tmp/sub.out; setsid sh -c 'maculaos mesh sub relayed --timeout 300 >/tmp/sub.out 2>/tmp/sub.err' </dev/null >/dev/null 2>&1 &",
    )?;
    let sub = lan.nodes[0].ssh.clone();
    lan.wait_until(
        0,
        "node 0 to receive node 2's publication",
        CMD_TIMEOUT,
        |_| {
            peer.check("maculaos mesh pub relayed 'through the gateway'")?;
            Ok(sub
                .run("cat /tmp/sub.out")?
                .stdout
                .contains("through the gateway"))
        },
    )?;
    let from = lan.nodes[0].ssh.clone();
    lan.wait_until(
        0,
        "node 0's ping of node 2 through the gateway",
        CMD_TIMEOUT,
        |_| pings(&from, n[2]),
    )?;
    let s1 = status(&lan.nodes[1].ssh)?;
    ensure(connected(&s1, "leafnode").len() >= 2, || {
        format!("the gateway shows no leafnode from node 2 beside its own to node 0: {s1:#}\nnode 2: {s2:#}")
    })?;

    // Node 2 renews its certificate from the CA holder, over the mesh
    // (through the gateway): a new serial for the same key and name, and
    // the node is back in through the gateway with it.
    let before = status(&peer)?["identity"]["certificate"]["serial"].clone();
    let out = peer.check_timeout("sudo maculaos mesh renew", CMD_TIMEOUT)?;
    ensure(
        out.contains(&format!(" for {}, expires in 36", n[2])) && !before.is_null(),
        || format!("mesh renew printed {out:?}"),
    )?;
    wait_status(
        &mut lan,
        2,
        "node 2 back through the gateway with its new certificate",
        |s| {
            s["identity"]["certificate"]["serial"] != before
                && s["state"] == "connected"
                && connected(s, "leafnode") == [n[1]]
        },
    )?;

    // Node 2's certificate chains to the operator's CA (openssl, on node 2,
    // with the CA node 0 was given).
    let op = lan.nodes[0].ssh.check("cat /tmp/op.crt")?;
    crate::config::put_file(&peer, "/tmp/op.crt", &op)?;
    let v =
        peer.check("sudo openssl verify -CAfile /tmp/op.crt /var/lib/maculaos/mesh/node.crt")?;
    ensure(v.contains(": OK"), || format!("openssl verify said {v}"))?;

    // The login banner (pam_motd, at a new login) and the dashboard show
    // the mesh state too.
    let motd = peer.fresh().check("cat /run/motd.dynamic")?;
    ensure(
        motd.contains("Mesh:")
            && motd.contains(&format!(
                "connected (1 leafnode, 0 routes); realm {REALM}; roles peer"
            )),
        || format!("node 2's login banner: {motd}"),
    )?;
    let mut dash = Value::Null;
    lan.wait_until(
        2,
        "node 2's dashboard to show the mesh connected",
        CMD_TIMEOUT,
        |ssh| {
            let out = ssh.run("curl -sf http://127.0.0.1:9090/api/v1/status")?;
            dash = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
            Ok(dash["mesh"]["state"] == "connected")
        },
    )
    .with_context(|| format!("node 2's dashboard said {:#}", dash["mesh"]))?;
    decommission(ctx, &mut lan)
}

/// `maculaos fleet decommission NODE --wipe` of node 2 (a peer reached
/// through the gateway) on node 0, the CA holder: refused on the gateway,
/// which lacks the operator's credential; then node 2 takes the signed
/// order, resets itself and comes back in its first-boot wizard with its
/// user data and mesh key gone, and the realm refuses its key. This realm
/// has one bootstrap node, whose JetStream never elects a leader
/// (nats-server 2.9 counts its route to itself as a second server): there
/// is no registry, and the command says so and exits 1 after the other two
/// steps. The audit log on node 0 has the action.
fn decommission(ctx: &mut Ctx, lan: &mut Nodes) -> Result<()> {
    let n: Vec<&str> = lan.nodes.iter().map(|n| n.hostname).collect();
    let t = Instant::now();
    lan.nodes[2].ssh.check(
        "sudo mkdir -p /var/lib/data && echo user-data | sudo tee /var/lib/data/keep-me >/dev/null",
    )?;
    const KEY_HASH: &str = "sudo sha256sum /var/lib/maculaos/mesh/node.key";
    let key_before = lan.nodes[2].ssh.check(KEY_HASH)?;
    let not_ca = lan.nodes[1].ssh.run_timeout(
        &format!("sudo maculaos fleet decommission {}", n[2]),
        CMD_TIMEOUT,
    )?;
    ensure(
        !not_ca.success() && not_ca.stderr.contains("realm CA"),
        || format!("the gateway decommissioned a node without the realm CA: {not_ca:?}"),
    )?;
    let out = lan.nodes[0].ssh.run_timeout(
        &format!(
            "sudo maculaos fleet decommission {}.local --wipe --json",
            n[2]
        ),
        CMD_TIMEOUT,
    )?;
    let d: Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("decommission printed {out:?}"))?;
    ensure(
        !out.success()
            && d["reset"]["accepted"] == true
            && d["revoked"]["ok"] == true
            // No leader: refused, or no answer at all, by turns.
            && d["registry"]["ok"] == false
            && d["registry"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("bucket fleet")),
        || format!("decommission of node 2 (exit {:?}): {d:#}", out.status),
    )?;
    lan.rebooted(2, "its factory reset after the decommission")?;
    let ssh = lan.nodes[2].ssh.clone();
    lan.wait_until(
        2,
        "node 2's first-boot wizard after the decommission",
        CMD_TIMEOUT,
        |ssh| Ok(ssh.run("curl -sf http://127.0.0.1/api/v1/info")?.success()),
    )?;
    ctx.record(
        "fleet: decommission to the node in its first-boot wizard (wall)",
        t.elapsed().as_secs_f64(),
    );
    ensure(
        !ssh.run("sudo test -e /var/lib/data/keep-me")?.success(),
        || "the user data survived `decommission --wipe`".to_string(),
    )?;
    // A first boot makes a new key; the old one and its certificate are
    // gone.
    let key_after = ssh.run(KEY_HASH)?.stdout;
    ensure(
        key_after != key_before
            && !ssh
                .run("sudo test -e /var/lib/maculaos/mesh/node.crt")?
                .success(),
        || format!("the decommissioned node kept its mesh key or certificate: {key_after}"),
    )?;
    let s0 = status(&lan.nodes[0].ssh)?;
    ensure(
        s0["roster"]["revoked"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == n[2])),
        || format!("node 0's roster does not refuse node 2: {:#}", s0["roster"]),
    )?;
    let audit = lan.nodes[0]
        .ssh
        .check("sudo tail -n 1 /var/lib/maculaos/mesh/audit.log")?;
    ensure(
        audit.contains("\"action\":\"decommission\"")
            && audit.contains("\"by\":\"macula\"")
            && audit.contains(n[2]),
        || format!("node 0's audit log ends with {audit:?}"),
    )?;
    Ok(())
}
