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

pub fn mesh_realm(ctx: &mut Ctx) -> Result<()> {
    let started = Instant::now();
    let mut lan = ctx.nodes(3)?;
    let n: Vec<&str> = lan.nodes.iter().map(|n| n.hostname).collect();

    // Node 0 names no other bootstrap node: it makes the realm.
    configure(
        &lan,
        0,
        &format!("maculaos:\n  mesh:\n    realm: {REALM}\n    role: bootstrap\n"),
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
            "maculaos:\n  mesh:\n    realm: {REALM}\n    role: bootstrap\n    bootstrap_peers: [{}.local]\n",
            n[0]
        ),
    )?;
    configure(
        &lan,
        2,
        &format!(
            "maculaos:\n  mesh:\n    realm: {REALM}\n    bootstrap_peers: ['{}.local:4433', '{}.local:4433']\n",
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
