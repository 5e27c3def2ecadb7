//! Coordinated updates over a realm of three saved nodes (two bootstrap
//! nodes and a peer), every node's update source an HTTP directory on the
//! host. A rolling update to v2 with one reboot slot: each node takes the
//! slot, updates, reboots, and gives it back once v2 runs marked good and
//! healthy; the harness sees the nodes reboot one after the other (a node
//! reboots only once the one before runs v2 well) and the slot never held
//! by two. Then a canary rollout of a v3 that cannot pass its boot checks:
//! the canary tries it three times, its boot counting takes it back to v2,
//! the version is remembered bad and refused, the rollout stops saying
//! why, and no other node leaves v2. FleetLock clients (curl) on two
//! nodes share a group's one slot.

use crate::harness::{ensure, Ctx, CMD_TIMEOUT};
use crate::mesh::{fleet, fleet_status, three_node_realm, wait_fleet};
use crate::pool::Nodes;
use crate::slots::{link_or_copy, unhealthy_bundle, v2_bundle, V2, V3_UNHEALTHY};
use anyhow::{Context, Result};
use maculaos_vm::GUEST_SERVICE_ADDR;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long a rollout of three nodes may take under TCG.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(2400);
/// The pace of the harness's look at the nodes (a poll, not a wait).
const LOOK_EVERY: Duration = Duration::from_secs(3);

/// `maculaos fleet rollout status --json` from the first node that
/// answers (a bootstrap node may be rebooting; JetStream may have no
/// leader for a moment): `None` when none does.
fn rollout_status(lan: &Nodes) -> Option<Value> {
    lan.nodes.iter().find_map(|n| {
        let r = n
            .ssh
            .run_timeout(
                "sudo timeout 20 maculaos fleet rollout status --json",
                Duration::from_secs(30),
            )
            .ok()?;
        serde_json::from_str::<Value>(&r.stdout)
            .ok()
            .filter(|v| v.is_object())
    })
}

/// What the harness saw of a rollout.
#[derive(Default)]
struct Seen {
    /// Reboots, in order: (node, seconds since the rollout started).
    reboots: Vec<(usize, f64)>,
    /// The most slot holders in one look.
    most_holders: usize,
    /// Lines for the report: reboots, nodes back and marked good, slot
    /// holders, with their times.
    log: Vec<String>,
}

/// Whether the node behind `ssh` runs a slot marked good: not booted on
/// trial, or marked good since (what mark-good leaves in /run); false
/// while it cannot be asked. Reads files only: no command that could
/// itself record a rollback.
fn marked_good(ssh: &maculaos_vm::Ssh) -> bool {
    ssh.run_timeout(
        "test -e /run/maculaos/marked-good || ! grep -q maculaos.trial= /proc/cmdline",
        Duration::from_secs(15),
    )
    .is_ok_and(|o| o.success())
}

/// Follow a rollout until `done` holds for its status. Every node that
/// reboots (its QEMU exits) is booted again at once, and is "rebooting"
/// until it answers again running a slot marked good. A node that reboots
/// while another is rebooting is an error (a node takes its turn only
/// after the one before has run its new version healthy for the rollout's
/// wait, so a reboot seen late cannot look like two at once), as is a
/// look at more than `max` slot holders.
fn follow(
    lan: &mut Nodes,
    what: &str,
    max: usize,
    done: impl Fn(&Value) -> bool,
) -> Result<(Value, Seen)> {
    let started = Instant::now();
    let mut seen = Seen::default();
    let mut rebooting: BTreeSet<usize> = BTreeSet::new();
    let mut last = Value::Null;
    let mut holders_before = String::new();
    loop {
        let now = |started: Instant| started.elapsed().as_secs_f64();
        for i in 0..lan.nodes.len() {
            if rebooting.contains(&i) && marked_good(&lan.nodes[i].ssh) {
                rebooting.remove(&i);
                seen.log.push(format!(
                    "{:>6.0} s  node {i} is back, marked good",
                    now(started)
                ));
            }
            if lan.nodes[i].vm.try_exit_status()?.is_none() {
                continue;
            }
            let at = now(started);
            // Looked at once more: it may have come back since.
            let others: Vec<usize> = rebooting.iter().copied().filter(|o| *o != i).collect();
            for o in others {
                if marked_good(&lan.nodes[o].ssh) {
                    rebooting.remove(&o);
                    seen.log
                        .push(format!("{at:>6.0} s  node {o} is back, marked good"));
                }
            }
            if let Some(other) = rebooting.iter().find(|o| **o != i) {
                anyhow::bail!(
                    "{what}: node {i} rebooted at {at:.0} s while node {other} was still rebooting \
                     (max_unavailable {max}); last status: {last:#}\nlog:\n{}",
                    seen.log.join("\n")
                );
            }
            seen.log.push(format!("{at:>6.0} s  node {i} reboots"));
            seen.reboots.push((i, at));
            rebooting.insert(i);
            let node = &mut lan.nodes[i];
            node.ssh.close_master();
            node.vm.boot_again()?;
        }
        if let Some(s) = rollout_status(lan) {
            let holders: Vec<String> = s["slots"]["holders"]
                .as_array()
                .map(|h| {
                    h.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            seen.most_holders = seen.most_holders.max(holders.len());
            ensure(holders.len() <= max, || {
                format!(
                    "{what}: {} slot holders, at most {max} allowed: {s:#}",
                    holders.len()
                )
            })?;
            let joined = holders.join(", ");
            if joined != holders_before {
                seen.log.push(format!(
                    "{:>6.0} s  slot held by: {}",
                    now(started),
                    if joined.is_empty() { "nobody" } else { &joined }
                ));
                holders_before = joined;
            }
            let end = done(&s);
            last = s;
            if end {
                return Ok((last, seen));
            }
        }
        if started.elapsed() > ROLLOUT_TIMEOUT {
            anyhow::bail!(
                "{what}: not over after {} s; last status: {last:#}\nlog:\n{}",
                ROLLOUT_TIMEOUT.as_secs(),
                seen.log.join("\n")
            );
        }
        std::thread::sleep(LOOK_EVERY);
    }
}

fn verdict(s: &Value) -> &str {
    s["verdict"]["state"].as_str().unwrap_or_default()
}

/// Wait until every node answers SSH again (after the rollout's reboots).
fn all_up(lan: &mut Nodes) -> Result<()> {
    for i in 0..lan.nodes.len() {
        lan.wait_until(
            i,
            &format!("node {i} to answer SSH"),
            crate::harness::BOOT_TIMEOUT,
            |ssh| Ok(ssh.run_timeout("true", Duration::from_secs(10))?.success()),
        )?;
    }
    Ok(())
}

/// A FleetLock request from `ssh`'s node to its agent: the status code and
/// the body.
fn fleetlock_post(
    ssh: &maculaos_vm::Ssh,
    path: &str,
    id: &str,
    header: bool,
) -> Result<(u16, String)> {
    let out = ssh.check(&format!(
        "curl -s -w '\\n%{{http_code}}' -X POST {} -d '{{\"client_params\": {{\"id\": \"{id}\", \"group\": \"workers\"}}}}' http://127.0.0.1:9095/v1/{path}",
        if header { "-H 'fleet-lock-protocol: true'" } else { "" }
    ))?;
    let (body, code) = out.trim().rsplit_once('\n').unwrap_or(("", out.trim()));
    Ok((code.parse().unwrap_or(0), body.to_string()))
}

/// The last heartbeat of each of `nodes` in the fleet list `ssh`'s node
/// reads.
fn heartbeats(
    ssh: &maculaos_vm::Ssh,
    nodes: &[&'static str],
) -> Result<Vec<(&'static str, Value)>> {
    let f = fleet(ssh)?;
    nodes
        .iter()
        .map(|x| {
            f["members"]
                .as_array()
                .and_then(|a| a.iter().find(|m| m["node"] == *x))
                .map(|m| (*x, m["heartbeat"].clone()))
                .with_context(|| format!("{x} is not in the fleet list: {f:#}"))
        })
        .collect()
}

/// `sudo maculaos fleet update ARGS` on node 0, which must say `said`,
/// followed until its verdict is `end` (one slot at most); its time in the
/// report as `what`, the harness's log printed.
fn roll(
    ctx: &mut Ctx,
    lan: &mut Nodes,
    args: &str,
    said: &str,
    end: &'static str,
    what: &str,
) -> Result<(Value, Seen)> {
    let t = Instant::now();
    let out = lan.nodes[0]
        .ssh
        .check_timeout(&format!("sudo maculaos fleet update {args}"), CMD_TIMEOUT)?;
    ensure(out.contains(said), || {
        format!("`fleet update {args}` should say {said:?}:\n{out}")
    })?;
    let (s, seen) = follow(lan, what, 1, |s| verdict(s) == end)?;
    ctx.record(format!("fleet: {what} (wall)"), t.elapsed().as_secs_f64());
    println!("    {what}:\n      {}", seen.log.join("\n      "));
    Ok((s, seen))
}

/// FleetLock clients on two nodes share a group's one slot (the
/// configuration's `max_unavailable`, 1 of the 3 nodes): the second is
/// refused while the first holds it and gets it once given back.
fn fleetlock(lan: &Nodes) -> Result<()> {
    let (a, b) = (&lan.nodes[2].ssh, &lan.nodes[1].ssh);
    let got = fleetlock_post(a, "pre-reboot", "updater-a", true)?;
    ensure(got.0 == 200, || {
        format!("FleetLock pre-reboot of updater-a: {got:?}")
    })?;
    let got = fleetlock_post(b, "pre-reboot", "updater-b", true)?;
    ensure(
        got.0 == 409 && got.1.contains("failed_lock") && got.1.contains("updater-a"),
        || {
            format!(
                "updater-b's pre-reboot while updater-a holds the slot should be refused: {got:?}"
            )
        },
    )?;
    for (ssh, path, id, header, code, what) in [
        (
            b,
            "pre-reboot",
            "updater-b",
            false,
            400,
            "a request without fleet-lock-protocol",
        ),
        (
            a,
            "steady-state",
            "updater-a",
            true,
            200,
            "FleetLock steady-state of updater-a",
        ),
        (
            b,
            "pre-reboot",
            "updater-b",
            true,
            200,
            "updater-b's pre-reboot once the slot is free",
        ),
        (
            b,
            "steady-state",
            "updater-b",
            true,
            200,
            "FleetLock steady-state of updater-b",
        ),
    ] {
        let got = fleetlock_post(ssh, path, id, header)?;
        ensure(got.0 == code, || format!("{what}: {got:?}"))?;
    }
    Ok(())
}

pub fn fleet_rollout(ctx: &mut Ctx) -> Result<()> {
    // The update source: the host's directory, v2 on channel stable.
    let v2 = v2_bundle(ctx)?;
    let site = ctx.dir.join("site");
    let channel = site.join("stable");
    std::fs::create_dir_all(&channel)?;
    let v2_name = maculaos_bundle::bundle_file_name(V2, "amd64");
    link_or_copy(&v2, &channel.join(&v2_name))?;
    maculaos_fetch::write_index(&channel, &channel.join(&v2_name))?;
    let server = crate::harness::DirServer::serve(site, None)?;
    let port = server.port;
    let mut lan = ctx.nodes_with(3, |spec| spec.host_services.push((8080, port)))?;
    let n: Vec<&'static str> = lan.nodes.iter().map(|n| n.hostname).collect();
    for node in &lan.nodes {
        crate::config::put_file(
            &node.ssh,
            "/var/lib/maculaos/config.d/50-upgrade.yaml",
            &format!("maculaos:\n  upgrade:\n    url: http://{GUEST_SERVICE_ADDR}:8080/\n"),
        )?;
    }
    three_node_realm(&mut lan, "")?;
    wait_fleet(&mut lan, 0, "the three nodes healthy in the fleet", |f| {
        n.iter()
            .all(|x| fleet_status(f, x).as_deref() == Some("healthy"))
    })?;
    // The fleet page of a node's dashboard (loopback, so through SSH).
    let mut page = String::new();
    let waited = lan.wait_until(1, "the dashboard's fleet page", CMD_TIMEOUT, |ssh| {
        page = ssh.run("curl -sf http://127.0.0.1:9090/fleet")?.stdout;
        Ok(
            page.contains("3 nodes │ 3 healthy │ 0 degraded │ 0 offline")
                && n.iter().all(|x| page.contains(&format!("<td>{x}</td>"))),
        )
    });
    waited.with_context(|| {
        format!("the dashboard's fleet page should list the three nodes healthy:\n{page}")
    })?;

    // Rolling, one at a time.
    let (s, seen) = roll(
        ctx,
        &mut lan,
        &format!("{V2} --strategy rolling --max-unavailable 1 --health-check-wait 10s"),
        &format!("{V2} to 3 nodes"),
        "finished",
        "rolling update of 3 nodes to v2, one at a time",
    )?;
    let rebooted: BTreeSet<usize> = seen.reboots.iter().map(|(i, _)| *i).collect();
    ensure(
        seen.reboots.len() == 3 && rebooted.len() == 3 && seen.most_holders <= 1,
        || {
            format!(
            "each node should have rebooted once, one at a time: {:?}, at most {} holder(s) seen; {s:#}",
            seen.reboots, seen.most_holders
        )
        },
    )?;
    all_up(&mut lan)?;
    for (x, hb) in heartbeats(&lan.nodes[2].ssh, &n)? {
        ensure(hb["version"] == V2 && hb["update"] == "good", || {
            format!("{x} should run {V2}, marked good: {hb:#}")
        })?;
    }
    let audit = lan.nodes[0]
        .ssh
        .check("sudo grep -c rollout-start /var/lib/maculaos/mesh/audit.log || true")?;
    ensure(audit.trim() != "0", || {
        "the rollout's start is not in the CA holder's audit log".to_string()
    })?;

    fleetlock(&lan)?;

    // A canary rollout of a version that fails its boot checks.
    unhealthy_bundle(ctx, &channel)?;
    let v3_name = maculaos_bundle::bundle_file_name(V3_UNHEALTHY, "amd64");
    maculaos_fetch::write_index(&channel, &channel.join(&v3_name))?;
    let logs_before = lan.nodes[0].vm.serial_log_paths().len();
    let (s, seen) = roll(
        ctx,
        &mut lan,
        &format!(
            "{V3_UNHEALTHY} --strategy canary --canary-percentage 30% --health-check-wait 10s"
        ),
        // The first of 30% by name.
        &format!("canary: {} first", n[0]),
        "stopped",
        "canary rollout of a failing v3 to stopped",
    )?;
    ensure(seen.reboots.iter().all(|(i, _)| *i == 0), || {
        format!(
            "only the canary (node 0) should have rebooted: {:?}",
            seen.reboots
        )
    })?;
    let why = s["verdict"]["detail"].as_str().unwrap_or_default();
    ensure(why.contains(n[0]) && why.contains("canary"), || {
        format!(
            "the stopped rollout should name the failed canary {}: {s:#}",
            n[0]
        )
    })?;
    all_up(&mut lan)?;
    let tries = lan.nodes[0].vm.serial_log_paths()[logs_before..]
        .iter()
        .filter(|p| {
            std::fs::read_to_string(p).is_ok_and(|t| t.contains("on trial failed its boot checks"))
        })
        .count();
    ensure(tries == 3, || {
        format!("the canary should have failed exactly 3 boots of {V3_UNHEALTHY}; {tries} serial logs show it")
    })?;
    let st = lan.nodes[0].ssh.check("sudo maculaos upgrade --status")?;
    ensure(
        st.contains("last rollback:") && st.contains("was not marked good after 3 boots"),
        || format!("`upgrade --status` on the canary after its failed trial:\n{st}"),
    )?;
    // Remembered: the version is refused there, with the reason.
    let again = lan.nodes[0].ssh.run_timeout(
        &format!("sudo maculaos upgrade --apply --version {V3_UNHEALTHY}"),
        CMD_TIMEOUT,
    )?;
    ensure(
        !again.success()
            && again
                .stderr
                .contains(&format!("{V3_UNHEALTHY} failed its trial"))
            && again.stderr.contains("--force"),
        || format!("applying the version that failed its trial again: {again:?}"),
    )?;
    // No other node left v2, and none holds a slot.
    for (x, hb) in heartbeats(&lan.nodes[1].ssh, &n)? {
        ensure(hb["version"] == V2, || {
            format!("{x} should still run {V2}: {hb:#}")
        })?;
    }
    let text = lan.nodes[1]
        .ssh
        .check_timeout("sudo maculaos fleet rollout status", CMD_TIMEOUT)?;
    ensure(text.contains("stopped") && text.contains("failed"), || {
        format!("`fleet rollout status` should say why it stopped:\n{text}")
    })?;
    Ok(())
}
