//! Several nodes on one virtual LAN, started from the saved pool: they
//! reach each other by their `.local` names over TCP; a node cut off the
//! LAN, paused, or killed and booted again drops out and comes back. And
//! an mDNS name taken by another host comes back to its node once that
//! host is gone.

use crate::harness::{ensure, Ctx, BOOT_TIMEOUT, CMD_TIMEOUT};
use crate::pool::Nodes;
use anyhow::{Context, Result};
use maculaos_vm::Ssh;
use std::time::Instant;

/// How long one TCP connection attempt from a node may take.
const CONNECT: &str = "5";

/// A shell line that opens a TCP connection to `host` port 22 (by name,
/// through nss-mdns, or by address) and reads sshd's greeting.
fn ssh_banner_from(host: &str) -> String {
    format!("timeout {CONNECT} bash -c 'exec 3<>/dev/tcp/{host}/22 && head -c 4 <&3'")
}

/// Whether `from` gets sshd's greeting from `host` over the LAN.
fn reaches(from: &Ssh, host: &str) -> Result<bool> {
    let out = from.run_timeout(&ssh_banner_from(host), CMD_TIMEOUT)?;
    Ok(out.success() && out.stdout.starts_with("SSH-"))
}

/// `host`'s IPv4 address as node `from` resolves it with avahi.
fn resolve(from: &Ssh, host: &str) -> Result<Option<String>> {
    let out = from.run_timeout(&format!("avahi-resolve -4 -n {host}.local"), CMD_TIMEOUT)?;
    Ok(out
        .stdout
        .split_whitespace()
        .nth(1)
        .map(str::to_string)
        .filter(|_| out.success()))
}

/// Wait until node `i` reaches `host` (or, with `want` false, no longer does).
fn wait_reach(lan: &mut Nodes, i: usize, host: &str, want: bool) -> Result<()> {
    let what = if want {
        format!("node {i} to reach {host} over TCP")
    } else {
        format!("node {i} to lose {host}")
    };
    lan.wait_until(
        i,
        &what,
        BOOT_TIMEOUT,
        |ssh| Ok(reaches(ssh, host)? == want),
    )
}

pub fn lan_nodes(ctx: &mut Ctx) -> Result<()> {
    let started = Instant::now();
    let mut lan = ctx.nodes(3)?;
    let names: Vec<&str> = lan.nodes.iter().map(|n| n.hostname).collect();
    // Every node finds every other by name and opens a TCP connection.
    let mut addr = vec![String::new(); names.len()];
    for i in 0..names.len() {
        for (j, name) in names.iter().enumerate() {
            if i == j {
                continue;
            }
            let host = format!("{name}.local");
            wait_reach(&mut lan, i, &host, true)?;
            let ssh = lan.nodes[i].ssh.clone();
            let a = resolve(&ssh, name)?
                .with_context(|| format!("node {i} reaches {host} but avahi-resolve does not"))?;
            let theirs = crate::harness::ipv4_addresses(&lan.nodes[j].ssh)?;
            ensure(theirs.lines().any(|l| l.trim() == a), || {
                format!("node {i} resolves {host} to {a}, not one of node {j}'s: {theirs}")
            })?;
            addr[j] = a;
        }
    }
    ctx.record(
        "3 nodes: start to every pair connected by name (wall)",
        started.elapsed().as_secs_f64(),
    );

    // Cut node 2 off the LAN: node 0 loses it; plugged back, reaches it.
    lan.cut(2)?;
    wait_reach(&mut lan, 0, &addr[2], false)?;
    ensure(reaches(&lan.nodes[1].ssh, &addr[0])?, || {
        "nodes 0 and 1 lost each other when node 2 was cut off".to_string()
    })?;
    lan.reconnect(2)?;
    wait_reach(&mut lan, 0, &addr[2], true)?;

    // Node 1 frozen: nobody reaches it until it runs again.
    lan.pause(1)?;
    wait_reach(&mut lan, 0, &addr[1], false)?;
    lan.resume(1)?;
    wait_reach(&mut lan, 0, &addr[1], true)?;

    // Node 1 killed (a power cut) and booted again from its disk: it is
    // back on the LAN under its name, with the same identity.
    let id = "cat /etc/machine-id";
    let before = lan.nodes[1].ssh.check(id)?;
    lan.kill(1)?;
    wait_reach(&mut lan, 0, &addr[1], false)?;
    let t = Instant::now();
    lan.boot_again(1)?;
    ctx.record(
        "node 1: boot after a power cut, to multi-user (wall)",
        t.elapsed().as_secs_f64(),
    );
    let host = format!("{}.local", names[1]);
    wait_reach(&mut lan, 0, &host, true)?;
    let after = lan.nodes[1].ssh.check(id)?;
    ensure(before == after, || {
        format!("node 1's machine-id changed across the power cut: {before:?} -> {after:?}")
    })?;
    Ok(())
}

/// The name avahi announces on node `ssh`, from `maculaos info --json`.
fn announced(ssh: &Ssh) -> Result<Option<String>> {
    Ok(crate::harness::info(ssh)?["mdns_name"]
        .as_str()
        .map(str::to_string))
}

/// A second host claims node 1's name: node 1 is announced as `NAME-2`
/// meanwhile (and says so); once that host is gone, node 1's agent claims
/// its name back and the other nodes resolve it to node 1.
pub fn mdns_conflict(ctx: &mut Ctx) -> Result<()> {
    let mut lan = ctx.nodes(3)?;
    let taken = lan.nodes[0].hostname;
    // Node 1 is given node 0's name: node 0 defends it, node 1 yields.
    crate::config::put_file(
        &lan.nodes[1].ssh,
        "/var/lib/maculaos/config.d/50-name.yaml",
        &format!("maculaos:\n  hostname: {taken}\n"),
    )?;
    lan.nodes[1]
        .ssh
        .check_timeout("sudo maculaos apply", CMD_TIMEOUT)?;
    let renamed = format!("{taken}-2");
    let mut last = None;
    let wait = lan.wait_until(
        1,
        &format!("node 1 to be announced as {renamed}"),
        CMD_TIMEOUT,
        |ssh| {
            last = announced(ssh)?;
            Ok(last.as_deref() == Some(renamed.as_str()))
        },
    );
    if let Err(e) = wait {
        // What each side's avahi saw: the probe, the conflict (or not).
        let log = |i: usize| {
            lan.nodes[i]
                .ssh
                .run("sudo journalctl -o short-monotonic --no-pager -n 60 _COMM=avahi-daemon + _COMM=maculaos + _COMM=avahi-set-host-; maculaos info | grep -i mdns")
                .map(|o| o.stdout)
                .unwrap_or_default()
        };
        return Err(e.context(format!(
            "node 1's mdns_name: {last:?}\nnode 0's avahi:\n{}\nnode 1's avahi:\n{}",
            log(0),
            log(1)
        )));
    }
    // The agent tries its name again every 30 s, and avahi announces the
    // name it probes meanwhile: each view is polled until it shows the
    // conflict, rather than read once at a moment that may be a retry.
    for (cmd, what) in [
        ("maculaos info", "`maculaos info`"),
        ("maculaos discover --timeout 3", "`maculaos discover`"),
    ] {
        let mut shown = String::new();
        let wait = lan.wait_until(
            1,
            &format!("{what} on node 1 to say its name is taken"),
            CMD_TIMEOUT,
            |ssh| {
                shown = ssh.check_timeout(cmd, CMD_TIMEOUT)?;
                Ok(shown.contains(&format!("{renamed}.local")) && shown.contains("taken"))
            },
        );
        wait.with_context(|| format!("{what} on node 1 last said:\n{shown}"))?;
    }

    // The other host goes away for good; node 1 gets the name back. Its
    // agent has spent a claim every 30 s of the conflict (10 an hour); on a
    // slow host that could be all of them, and then the next try would be
    // an hour away. A fresh agent has its full budget.
    lan.nodes[1]
        .ssh
        .check_timeout("sudo systemctl restart maculaos-agent", CMD_TIMEOUT)?;
    lan.kill(0)?;
    let t = Instant::now();
    let wait = lan.wait_until(
        1,
        &format!("node 1 to claim {taken} back"),
        BOOT_TIMEOUT,
        |ssh| {
            last = announced(ssh)?;
            Ok(last.as_deref() == Some(taken))
        },
    );
    wait.with_context(|| format!("node 1's mdns_name: {last:?}"))?;
    ctx.record(
        "name conflict cleared to the name claimed back (wall)",
        t.elapsed().as_secs_f64(),
    );
    let mine = crate::harness::ipv4_addresses(&lan.nodes[1].ssh)?;
    let mut seen = None;
    let wait = lan.wait_until(
        2,
        &format!("node 2 to resolve {taken} to node 1"),
        BOOT_TIMEOUT,
        |ssh| {
            seen = resolve(ssh, taken)?;
            Ok(seen
                .as_deref()
                .is_some_and(|a| mine.lines().any(|l| l.trim() == a)))
        },
    );
    wait.with_context(|| format!("node 2 resolves {taken}.local to {seen:?}; node 1 has {mine}"))?;
    let events = lan.nodes[1]
        .ssh
        .check("sudo journalctl -u maculaos-agent -o cat | grep 'event: mdns' || true")?;
    ensure(events.contains(taken), || {
        format!("node 1's agent logged no mdns event naming {taken}:\n{events}")
    })?;
    Ok(())
}
