//! The firewall (guide "Security: Firewall", plan §4.9.4): a node with the
//! default configuration, scanned from another node on the LAN, shows only
//! SSH, though a web server listens on 8080; `maculaos firewall allow
//! 8080/tcp` opens it (and still after a reboot), `deny` closes it again; a
//! bad network in `firewall.allow` is a configuration error that leaves the
//! rules in force and SSH working, and `maculaos health` names it.

use crate::harness::{ensure, Ctx, CMD_TIMEOUT};
use crate::pool::Nodes;
use anyhow::{Context, Result};
use maculaos_vm::Ssh;
use serde_json::Value;
use std::io::Write;
use std::time::{Duration, Instant};

/// Where the scanner goes in the scanning node.
const SCANNER: &str = "/var/tmp/maculaos-scan";
/// UDP ports tried: common services, the mesh's, and WireGuard's.
const UDP_SAMPLE: &str = "53,67,69,123,137,161,500,1900,4222,4433,4500,5060,6222,11211,51820";
/// The page of the listener on the scanned node.
const PAGE: &str = "behind-the-firewall";

/// Copy this program (the SDK, which has the scanner) into `ssh`'s node:
/// both are Debian 12 on x86_64.
fn install_scanner(ssh: &Ssh) -> Result<()> {
    let exe = std::env::current_exe().context("finding the SDK's own binary")?;
    let bytes = std::fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
    let mut child = std::process::Command::new("ssh")
        .args(ssh.args(&format!("cat > {SCANNER} && chmod 755 {SCANNER}")))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("running ssh")?;
    child
        .stdin
        .take()
        .context("ssh's stdin")?
        .write_all(&bytes)?;
    let status = child.wait()?;
    ensure(status.success(), || {
        format!("copying the scanner into the node failed ({status})")
    })
}

/// The scan of `addr` from `ssh`'s node: open TCP ports, UDP ports reached.
fn scan(ssh: &Ssh, addr: &str) -> Result<(Vec<u64>, Vec<u64>)> {
    let (mut tcp, udp) = scan_with(
        ssh,
        &format!("{addr} --tcp 1-65535 --udp {UDP_SAMPLE} --parallel 2048 --timeout-ms 800"),
    )?;
    // Thousands of probes at once on a busy host: an open port whose answer
    // came late is asked again, alone and with time to answer (a port the
    // firewall drops never answers, however long it is given).
    for port in [22, 80] {
        if !tcp.contains(&port) {
            let (again, _) = scan_with(
                ssh,
                &format!("{addr} --tcp {port}-{port} --parallel 1 --timeout-ms 5000"),
            )?;
            tcp.extend(again);
        }
    }
    tcp.sort_unstable();
    Ok((tcp, udp))
}

/// One run of the scanner with `args`.
fn scan_with(ssh: &Ssh, args: &str) -> Result<(Vec<u64>, Vec<u64>)> {
    let out = ssh.check_timeout(
        &format!("ulimit -n 8192; {SCANNER} scan {args}"),
        Duration::from_secs(600),
    )?;
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("the scan: {out}"))?;
    let list = |k: &str| -> Vec<u64> {
        v[k].as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    };
    Ok((list("tcp_open"), list("udp_reached")))
}

/// A web server on every address of the node, port 8080 (a transient unit:
/// gone after a reboot).
fn listen(ssh: &Ssh) -> Result<()> {
    ssh.check(&format!(
        "sudo mkdir -p /var/tmp/www && echo {PAGE} | sudo tee /var/tmp/www/index.html >/dev/null && \
         sudo systemd-run --quiet --unit=probe-web busybox httpd -f -p 8080 -h /var/tmp/www && \
         for i in $(seq 50); do curl -sf -m 2 http://127.0.0.1:8080/ >/dev/null && exit 0; sleep 0.2; done; exit 1"
    ))?;
    Ok(())
}

/// curl's exit status for the page at `addr:port` from `ssh`'s node: 0
/// served, 7 refused (nothing listens, or a reset), 28 timed out (dropped).
pub(crate) fn fetch_port(ssh: &Ssh, addr: &str, port: u16) -> Result<i32> {
    let out = ssh.run_timeout(
        &format!("curl -s -m 4 -o /dev/null http://{addr}:{port}/; echo \"exit=$?\""),
        CMD_TIMEOUT,
    )?;
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("exit="))
        .and_then(|c| c.trim().parse().ok())
        .with_context(|| format!("curl's status: {out:?}"))
}

/// [`fetch_port`] of the listener's port, 8080.
fn fetch(ssh: &Ssh, addr: &str) -> Result<i32> {
    fetch_port(ssh, addr, 8080)
}

/// `name.local`'s IPv4 address, as `ssh`'s node resolves it.
pub(crate) fn resolve(ssh: &Ssh, name: &str) -> Result<String> {
    let addr = ssh
        .check(&format!(
            "getent ahostsv4 {name}.local | awk '{{print $1}}' | head -1"
        ))?
        .trim()
        .to_string();
    ensure(addr.parse::<std::net::Ipv4Addr>().is_ok(), || {
        format!("{name}.local resolved to {addr:?}")
    })?;
    Ok(addr)
}

/// Power node `i` off cleanly and boot it again.
pub(crate) fn reboot(lan: &mut Nodes, i: usize) -> Result<()> {
    let _ = lan.nodes[i].ssh.run("sudo systemctl poweroff");
    let deadline = Instant::now() + Duration::from_secs(120);
    while lan.nodes[i].vm.is_running()? {
        ensure(Instant::now() < deadline, || {
            "the node did not power off within 2 minutes".into()
        })?;
        std::thread::sleep(Duration::from_millis(500));
    }
    lan.boot_again(i)
}

pub fn firewall(ctx: &mut Ctx) -> Result<()> {
    let mut lan = ctx.nodes(2)?;
    let target = lan.nodes[0].hostname;
    let a = lan.nodes[0].ssh.clone();
    let b = lan.nodes[1].ssh.clone();
    let rules = a.check("sudo nft list table inet maculaos")?;
    ensure(rules.contains("policy drop"), || {
        format!("the node's firewall is not loaded:\n{rules}")
    })?;
    // The saved node is not paired yet: its wizard's port is open too.
    let shown = a.check("maculaos firewall show")?;
    ensure(
        shown.contains("22/tcp") && shown.contains("80/tcp") && !shown.contains("8080/tcp"),
        || format!("`firewall show` on a default node:\n{shown}"),
    )?;
    listen(&a)?;
    let addr = resolve(&b, target)?;
    install_scanner(&b)?;

    // Only SSH and the wizard answer, though 8080 listens; the UDP sample
    // gets nothing back (no answer, no "port unreachable": dropped).
    let t = Instant::now();
    let (tcp, udp) = scan(&b, &addr)?;
    ctx.record(
        "firewall: TCP scan of 65535 ports and 15 UDP ports (wall)",
        t.elapsed().as_secs_f64(),
    );
    ensure(tcp == [22, 80] && udp.is_empty(), || {
        format!(
            "the scan of a default node found TCP {tcp:?}, UDP {udp:?}; documented are TCP 22 \
             (SSH) and 80 (the wizard of a node not paired yet)"
        )
    })?;
    ensure(fetch(&b, &addr)? == 28, || {
        "8080 was not dropped before it was allowed".into()
    })?;

    // allow opens it, for good; deny closes it.
    let said = a.check_timeout("maculaos firewall allow 8080/tcp", CMD_TIMEOUT)?;
    ensure(said.contains("allowed 8080/tcp from anyone"), || {
        format!("`firewall allow 8080/tcp`:\n{said}")
    })?;
    ensure(fetch(&b, &addr)? == 0, || {
        "8080 does not answer after `firewall allow 8080/tcp`".into()
    })?;
    // The UDP probe sees what a firewall lets through: a port allowed with
    // nothing behind it answers "port unreachable".
    a.check_timeout("maculaos firewall allow 9999/udp", CMD_TIMEOUT)?;
    let (_, udp) = scan_with(&b, &format!("{addr} --tcp 22-22 --udp 9999,9998"))?;
    ensure(udp == [9999], || {
        format!("UDP 9999 (allowed, nothing listening) and 9998 (dropped) gave {udp:?}")
    })?;
    a.check_timeout("maculaos firewall deny 9999/udp", CMD_TIMEOUT)?;
    // A configuration file makes the node configured: the wizard's port
    // closes, though the wizard still listens until the next boot.
    ensure(fetch_port(&b, &addr, 80)? == 28, || {
        "port 80 is still open on a configured node".into()
    })?;
    let shown = a.check("maculaos firewall show --json")?;
    ensure(shown.contains("\"8080/tcp\""), || {
        format!("`firewall show --json` after allow:\n{shown}")
    })?;
    reboot(&mut lan, 0)?;
    let a = lan.nodes[0].ssh.clone();
    listen(&a)?;
    // Its link-local address may be another after the boot: asked again.
    let mut addr = addr;
    lan.wait_until(
        1,
        "8080 to answer after a reboot (the allow lasts)",
        Duration::from_secs(120),
        |b| {
            addr = resolve(b, target)?;
            Ok(fetch(b, &addr)? == 0)
        },
    )?;
    a.check_timeout("maculaos firewall deny 8080/tcp", CMD_TIMEOUT)?;
    ensure(fetch(&b, &addr)? == 28, || {
        "8080 still answers after `firewall deny 8080/tcp`".into()
    })?;

    // A bad network: a configuration error; the rules in force stay.
    let refused = a.run("maculaos firewall allow 9000/tcp --from 10.0.0.300/8")?;
    ensure(
        !refused.success() && refused.stderr.contains("10.0.0.300/8"),
        || format!("a bad --from was not refused: {refused:?}"),
    )?;
    crate::config::put_file(
        &a,
        "/var/lib/maculaos/config.d/90-bad.yaml",
        "maculaos:\n  security:\n    firewall:\n      allow: [{port: 8080/tcp, from: [10.0.0.300/8]}]\n",
    )?;
    let applied = a.run_timeout("sudo maculaos apply", CMD_TIMEOUT)?;
    ensure(
        !applied.success()
            && format!("{}{}", applied.stdout, applied.stderr).contains("90-bad.yaml"),
        || format!("apply with a bad firewall.allow: {applied:?}"),
    )?;
    let health = a.run("maculaos health")?;
    ensure(
        !health.success() && health.stdout.contains("90-bad.yaml"),
        || format!("`maculaos health` does not name the bad file: {health:?}"),
    )?;
    // The login banners (ssh's motd, the console's issue) name it too.
    let banners =
        a.check("cat /run/motd.d/50-maculaos-config /etc/issue.d/50-maculaos-config.issue")?;
    ensure(banners.matches("90-bad.yaml").count() >= 2, || {
        format!("the login banners do not name the bad file:\n{banners}")
    })?;
    let rules = a.check("sudo nft list table inet maculaos")?;
    ensure(
        rules.contains("dport 22") && !rules.contains("10.0.0"),
        || format!("the rules in force changed after a bad configuration:\n{rules}"),
    )?;
    ensure(fetch(&b, &addr)? == 28, || {
        "8080 answers after a bad configuration".into()
    })?;
    Ok(())
}
