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
//! refused, and its `maculaos mesh status` says why.

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

/// Wait until node `i`'s mesh status satisfies `cond`; the last status is
/// in the error.
fn wait_status(
    lan: &mut Nodes,
    i: usize,
    what: &str,
    mut cond: impl FnMut(&Value) -> bool,
) -> Result<Value> {
    let mut last = Value::Null;
    let r = lan.wait_until(i, what, BOOT_TIMEOUT, |ssh| {
        last = status(ssh)?;
        Ok(cond(&last))
    });
    r.with_context(|| format!("node {i}'s last mesh status: {last:#}"))?;
    Ok(last)
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

pub fn mesh_realm(ctx: &mut Ctx) -> Result<()> {
    let started = Instant::now();
    let mut lan = ctx.nodes(3)?;
    let n: Vec<&str> = lan.nodes.iter().map(|n| n.hostname).collect();

    // Node 0 names no other bootstrap node: it makes the realm.
    configure(
        &lan,
        0,
        &format!("maculaos:\n  mesh:\n    realm: {REALM}\n    role: bootstrap\n{OVERLAY}"),
    )?;
    let s0 = wait_status(&mut lan, 0, "node 0 to serve its new realm", |s| {
        s["state"] == "serving"
    })?;
    ensure(s0["identity"]["ca_holder"] == true, || {
        format!("node 0 made the realm but does not hold its CA: {s0:#}")
    })?;
    // Node 1 is a bootstrap node that routes to node 0; node 2 a peer of both.
    configure(
        &lan,
        1,
        &format!(
            "maculaos:\n  mesh:\n    realm: {REALM}\n    role: bootstrap\n    bootstrap_peers: [{}.local]\n{OVERLAY}",
            n[0]
        ),
    )?;
    configure(
        &lan,
        2,
        &format!(
            "maculaos:\n  mesh:\n    realm: {REALM}\n    bootstrap_peers: ['{}.local:4433', '{}.local:4433']\n{OVERLAY}",
            n[0], n[1]
        ),
    )?;
    // Not in the realm before it joined: its server (restarted by apply)
    // serves only itself.
    let s2 = wait_status(&mut lan, 2, "node 2's server to answer", |s| {
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
    wait_status(&mut lan, 1, "node 1 to route to node 0", |s| {
        s["state"] == "connected" && !connected(s, "route").is_empty()
    })?;
    let s2 = wait_status(&mut lan, 2, "node 2's leafnode connection", |s| {
        s["state"] == "connected"
    })?;
    ensure(s2["identity"]["certificate"]["realm"] == REALM, || {
        format!("node 2's certificate is not for {REALM}: {s2:#}")
    })?;
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
    Ok(())
}

/// A production realm, and a gateway relaying a peer that cannot reach the
/// bootstrap node, which the peer finds by mDNS: node 0 (bootstrap,
/// `tls_mode: production`) makes the realm with the operator's CA,
/// node 1 is a gateway and node 2 a peer, neither configured with any
/// bootstrap node. Both join with tokens (the join answer names node 0);
/// node 2 learns of the gateway from its mDNS announcement. With node 2's
/// route to node 0 made unreachable, node 2's leafnode goes to the gateway,
/// its publication reaches node 0's subscriber and node 0's ping reaches it.
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
    Ok(())
}
