//! The MQTT broker, the git server, the LAN time server and journal
//! forwarding (issue 20; plan §4.9.1, §4.9.3, §4.9.6, guide "Embedded
//! Services"): switched on in the configuration, used from another node on
//! the LAN with their real clients and receivers (mosquitto_pub/sub, curl's
//! WebSocket handshake, git over ssh, chrony, systemd-journal-remote),
//! still serving what they kept after a reboot, and off again with their
//! ports dropped.

use crate::firewall::{fetch_port, reboot, resolve};
use crate::harness::{ensure, Ctx, CMD_TIMEOUT};
use anyhow::Result;
use maculaos_vm::Ssh;
use std::time::Instant;

const FILE: &str = "/var/lib/maculaos/config.d/60-edge.yaml";
/// The other node's: the first node as its time source, the log
/// receiver's port open.
const B_FILE: &str = "/var/lib/maculaos/config.d/60-time.yaml";
/// The first node's journal sent to the other node.
const LOG_FILE: &str = "/var/lib/maculaos/config.d/61-logs.yaml";
/// Where the other node's receiver writes what it gets.
const RECEIVED: &str = "/var/tmp/received";
const PASSWORD: &str = "s3cret-Sensor";

/// The configuration: the broker with one user, the git server with `key`,
/// NTP for the LAN.
fn edge_yaml(key: &str, users: bool) -> String {
    let users = if users {
        format!("      users:\n        - name: sensor\n          password: {PASSWORD}\n")
    } else {
        String::new()
    };
    format!(
        "maculaos:\n  edge:\n    mqtt:\n      enabled: true\n      port: 1883\n      \
         websocket_port: 9001\n{users}    time_sync:\n      serve_to_lan: true\n  gitops:\n    enabled: true\n    port: 23231\n    \
         authorized_keys:\n      - {key}\n"
    )
}

/// ssh for git from `b`, with the key made for it, trusting the node's
/// host key on first use.
const GIT_SSH: &str = "GIT_SSH_COMMAND='ssh -i ~/.ssh/git_key -o IdentitiesOnly=yes \
                       -o StrictHostKeyChecking=accept-new -o BatchMode=yes'";

/// Whether `b` gets the time from `addr`: chronyd's one-shot client mode
/// (`-Q`: asks, prints the offset, sets nothing; it logs to stderr, here
/// joined to stdout), given `secs` to get an answer. Its own pid file, as
/// the node's chronyd runs beside it.
fn ntp_answers(b: &Ssh, addr: &str, secs: u32) -> Result<maculaos_vm::Output> {
    Ok(b.run_timeout(
        &format!(
            "sudo chronyd -Q -t {secs} 'pidfile /run/chrony/probe.pid' \
             'server {addr} iburst maxsamples 1' 2>&1"
        ),
        CMD_TIMEOUT,
    )?)
}

/// Starts the receiver on `b`: Debian's systemd-journal-remote on 19532
/// (a transient unit; the node has none for it), one journal in
/// [`RECEIVED`], appended to when started again.
fn start_receiver(b: &Ssh) -> Result<()> {
    b.check(&format!(
        "sudo mkdir -p {RECEIVED} && sudo systemd-run --quiet --collect --unit=log-receiver \
         /lib/systemd/systemd-journal-remote --listen-http=19532 --split-mode=none \
         --output={RECEIVED}/remote.journal && \
         for i in $(seq 30); do ss -Hltn 'sport = :19532' | grep -q . && exit 0; sleep 1; done; exit 1"
    ))?;
    Ok(())
}

/// How many lines tagged `tag` and equal to `line` `b` received
/// (`line` empty: all of them).
fn received(b: &Ssh, tag: &str, line: &str) -> Result<usize> {
    let out = b.check(&format!(
        "sudo journalctl -D {RECEIVED} -t {tag} -o cat 2>/dev/null || true"
    ))?;
    Ok(out
        .lines()
        .filter(|l| line.is_empty() || l.trim() == line)
        .count())
}

/// Waits (deadline `secs`) until `b` received `want` lines tagged `tag`
/// (equal to `line`, when not empty).
fn wait_received(b: &Ssh, tag: &str, line: &str, want: usize, secs: u64) -> Result<()> {
    let t = Instant::now();
    loop {
        let got = received(b, tag, line)?;
        if got >= want {
            return Ok(());
        }
        if t.elapsed().as_secs() >= secs {
            anyhow::bail!("the receiver has {got} of {want} lines `{tag}: {line}` after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// What `mosquitto_sub` on `b` gets from `addr` (one message on `topic`
/// within 10 s), with `auth` (`-u … -P …`, or nothing).
fn subscribe(b: &Ssh, addr: &str, auth: &str, topic: &str) -> Result<maculaos_vm::Output> {
    Ok(b.run_timeout(
        &format!("mosquitto_sub -h {addr} -p 1883 {auth} -t {topic} -C 1 -W 10"),
        CMD_TIMEOUT,
    )?)
}

pub fn edge_services(ctx: &mut Ctx) -> Result<()> {
    let mut lan = ctx.nodes(2)?;
    let target = lan.nodes[0].hostname;
    let a = lan.nodes[0].ssh.clone();
    let b = lan.nodes[1].ssh.clone();
    let addr = resolve(&b, target)?;
    let b_addr = resolve(&a, lan.nodes[1].hostname)?;
    let auth = format!("-u sensor -P {PASSWORD}");

    // Off by default: nothing runs, the ports are dropped.
    for unit in ["mosquitto", "maculaos-git"] {
        let state = a.run(&format!("systemctl is-active {unit}"))?;
        ensure(state.stdout.trim() == "inactive", || {
            format!("{unit} runs on a node that did not ask for it: {state:?}")
        })?;
    }
    for port in [1883, 23231] {
        ensure(fetch_port(&b, &addr, port)? == 28, || {
            format!("port {port} is not dropped before the services are enabled")
        })?;
    }

    // The other node's key for git.
    b.check("rm -f ~/.ssh/git_key* && ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/git_key")?;
    let key = b.check("cat ~/.ssh/git_key.pub")?.trim().to_string();

    // A broker nobody could use is refused, naming the file.
    crate::config::apply_refuses(&a, FILE, &edge_yaml(&key, false), "no client could connect")?;

    crate::config::put_file(&a, FILE, &edge_yaml(&key, true))?;
    let t = Instant::now();
    a.check_timeout("sudo maculaos apply", CMD_TIMEOUT)?;
    // apply starts the units without waiting (--no-block).
    a.check(
        "for i in $(seq 60); do systemctl is-active --quiet mosquitto && \
         systemctl is-active --quiet maculaos-git && exit 0; \
         sleep 1; done; systemctl status --no-pager mosquitto maculaos-git; exit 1",
    )?;

    // MQTT from the other node: a retained reading published with the
    // user's password is what a subscriber gets.
    b.check(&format!(
        "mosquitto_pub -h {addr} -p 1883 {auth} -q 1 -r -t sensors/temp -m 21.5"
    ))?;
    ctx.record(
        "edge: apply to a message through the broker from the LAN (s)",
        t.elapsed().as_secs_f64(),
    );
    let got = subscribe(&b, &addr, &auth, "sensors/temp")?;
    ensure(got.success() && got.stdout.trim() == "21.5", || {
        format!("the subscriber did not get the retained reading: {got:?}")
    })?;
    // No anonymous clients, no wrong passwords.
    for (who, auth) in [
        ("an anonymous client", String::new()),
        ("a wrong password", "-u sensor -P wrong".to_string()),
    ] {
        let got = subscribe(&b, &addr, &auth, "sensors/temp")?;
        ensure(
            !got.success() && !got.stdout.contains("21.5") && got.stderr.contains("not authorised"),
            || format!("{who} was not refused by the broker: {got:?}"),
        )?;
    }
    // MQTT over WebSocket: the listener answers the handshake for MQTT.
    let ws = b.run_timeout(
        &format!(
            "curl -s -i -m 3 -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
             -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: bWFjdWxhb3MtZWRnZS0xMg==' \
             -H 'Sec-WebSocket-Protocol: mqtt' http://{addr}:9001/mqtt"
        ),
        CMD_TIMEOUT,
    )?;
    ensure(
        ws.stdout.starts_with("HTTP/1.1 101")
            && ws
                .stdout
                .to_lowercase()
                .contains("sec-websocket-protocol: mqtt"),
        || format!("port 9001 did not switch to WebSocket MQTT: {ws:?}"),
    )?;
    // The password is kept hashed, and hidden by `config show`.
    let passwd = a.check("sudo cat /etc/mosquitto/maculaos.passwd")?;
    ensure(
        passwd.starts_with("sensor:$7$101$") && !passwd.contains(PASSWORD),
        || format!("the broker's password file is not hashed: {passwd}"),
    )?;
    let shown = a.check("sudo maculaos config show")?;
    ensure(!shown.contains(PASSWORD), || {
        format!("config show prints the broker's password:\n{shown}")
    })?;

    // git: the guide's clone, after a push made the repository.
    let t = Instant::now();
    b.check(&format!(
        "rm -rf ~/w ~/c1 && git init -q -b main ~/w && cd ~/w && \
         git config user.email t@t && git config user.name t && \
         echo 'replicas: 2' > app.yaml && git add app.yaml && git commit -q -m first && \
         {GIT_SSH} git push -q ssh://git@{addr}:23231/myrepo.git main"
    ))?;
    b.check(&format!(
        "cd ~ && {GIT_SSH} git clone -q ssh://git@{addr}:23231/myrepo.git c1 && \
         grep -qx 'replicas: 2' c1/app.yaml"
    ))?;
    ctx.record(
        "edge: push to a new repository and clone it from the LAN (s)",
        t.elapsed().as_secs_f64(),
    );
    // Only git: no shell on its port, no login on SSH's.
    let shell = b.run(&format!(
        "ssh -i ~/.ssh/git_key -o IdentitiesOnly=yes -o BatchMode=yes -p 23231 git@{addr} id"
    ))?;
    ensure(
        !shell.success()
            && !shell.stdout.contains("uid=")
            && shell.stderr.contains("this is a git server"),
        || format!("the git port ran a command that is not git: {shell:?}"),
    )?;
    let login = b.run(&format!(
        "ssh -i ~/.ssh/git_key -o IdentitiesOnly=yes -o BatchMode=yes \
         -o StrictHostKeyChecking=accept-new git@{addr} id"
    ))?;
    ensure(!login.success() && !login.stdout.contains("uid="), || {
        format!("the user git logged in on port 22: {login:?}")
    })?;
    // Refused for being git, not only for a key port 22 does not know.
    a.check(
        "for i in $(seq 20); do journalctl -q -b -u ssh.service | \
         grep -q 'User git from .* not allowed because listed in DenyUsers' && exit 0; sleep 0.5; done; \
         echo 'sshd on port 22 did not deny the user git'; exit 1",
    )?;
    let outside = b.run(&format!(
        "cd ~ && rm -rf x && {GIT_SSH} git clone -q ssh://git@{addr}:23231/../../etc.git x"
    ))?;
    ensure(
        !outside.success() && outside.stderr.contains("is not a repository name here"),
        || format!("a path outside the repositories was not refused as such: {outside:?}"),
    )?;

    // Time: the other node asks the first, once and then as its source.
    let t = Instant::now();
    let once = ntp_answers(&b, &addr, 20)?;
    ensure(
        once.success() && once.stdout.contains("System clock wrong by"),
        || format!("the node did not answer NTP from the LAN: {once:?}"),
    )?;
    crate::config::put_file(
        &b,
        B_FILE,
        &format!(
            "maculaos:\n  edge:\n    time_sync:\n      servers: [{addr}]\n  \
             security:\n    firewall:\n      allow:\n        - port: 19532/tcp\n"
        ),
    )?;
    b.check_timeout("sudo maculaos apply", CMD_TIMEOUT)?;
    // `^*`: the source chrony selected and follows.
    b.check(&format!(
        "for i in $(seq 90); do chronyc -n sources | grep -q '^\\^\\* {addr} ' && exit 0; sleep 1; done; \
         chronyc -n sources; exit 1"
    ))?;
    ctx.record(
        "edge: the other node's clock follows the LAN time server (s)",
        t.elapsed().as_secs_f64(),
    );
    // Served from the node's own clock (no server reachable here): stratum
    // 10 there, 11 for its client.
    let tracking = b.check("chronyc -n tracking")?;
    ensure(
        tracking.contains(&format!("({addr})")) && tracking.contains("Stratum         : 11"),
        || format!("the other node does not track the LAN time server:\n{tracking}"),
    )?;

    // The journal, sent to the other node's receiver: the guide's
    // top-level `logging:` with a journal receiver's address.
    start_receiver(&b)?;
    crate::config::put_file(
        &a,
        LOG_FILE,
        &format!("logging:\n  forward_to: http://{b_addr}:19532\n"),
    )?;
    a.check_timeout("sudo maculaos apply", CMD_TIMEOUT)?;
    a.check("logger -t edge-test marker-1")?;
    wait_received(&b, "edge-test", "marker-1", 1, 90)?;
    // The receiver goes away once the uploader has saved its place past
    // marker-1 (its cursor's sequence number; an upload cut before that is
    // sent again whole): what is logged meanwhile waits on the node, and
    // arrives once, as does what went before, when it is back.
    a.check(
        r#"m=$(journalctl -t edge-test -o json -n 1 | jq -r .__CURSOR | sed 's/.*;i=\([0-9a-f]*\);.*/\1/');
        for i in $(seq 60); do
          s=$(sudo sed -n 's/^LAST_CURSOR=.*;i=\([0-9a-f]*\);.*/\1/p' /var/lib/private/systemd/journal-upload/state);
          [ -n "$s" ] && [ $((0x$s)) -ge $((0x$m)) ] && exit 0; sleep 1;
        done; echo "the uploader did not save a cursor past marker-1 ($m)"; exit 1"#,
    )?;
    let restarts = a.check("systemctl show -p NRestarts --value systemd-journal-upload")?;
    let restarts: u32 = restarts.trim().parse().unwrap_or(0);
    b.check("sudo systemctl stop log-receiver")?;
    a.check("logger -t edge-test marker-2")?;
    a.check(&format!(
        "for i in $(seq 60); do \
         test \"$(systemctl show -p NRestarts --value systemd-journal-upload)\" -gt {restarts} \
         && exit 0; sleep 1; done; echo 'the uploader did not notice the receiver went away'; exit 1"
    ))?;
    start_receiver(&b)?;
    wait_received(&b, "edge-test", "marker-2", 1, 90)?;
    // Nothing the uploader had confirmed before the outage (every entry up
    // to marker-1) came twice: no two received entries of this boot with
    // the same time, process and message.
    let twice = b.check(&format!(
        r#"sudo journalctl -D {RECEIVED} -o json | jq -r --arg h {target} '
          select(._HOSTNAME == $h) | [._BOOT_ID, .__MONOTONIC_TIMESTAMP, ._PID, .MESSAGE] | @json' \
          | awk '{{ print }} /"marker-1"\]$/ {{ exit }}' | sort | uniq -d | head -n 5"#
    ))?;
    ensure(twice.trim().is_empty(), || {
        format!("entries confirmed before the receiver went away came twice:\n{twice}")
    })?;
    ensure(received(&b, "edge-test", "marker-1")? == 1, || {
        "marker-1 is not there exactly once after the receiver came back".to_string()
    })?;
    // How fast: 2000 lines at once.
    let t = Instant::now();
    a.check("seq 2000 | sed 's/^/burst-/' | logger -t edge-burst")?;
    wait_received(&b, "edge-burst", "", 2000, 120)?;
    ctx.record(
        "edge: journal forwarded, 2000 lines at once (lines/s)",
        2000.0 / t.elapsed().as_secs_f64(),
    );

    // Shown where the operator looks.
    let services = a.check("maculaos services")?;
    for (name, port) in [("mqtt ", "1883/tcp"), ("git ", "23231/tcp")] {
        ensure(
            services
                .lines()
                .any(|l| l.starts_with(name) && l.contains("running") && l.contains(port)),
            || format!("`maculaos services` does not show {name}running:\n{services}"),
        )?;
    }
    let shown = a.check("maculaos firewall show")?;
    for (port, key) in [
        ("1883/tcp", "maculaos.edge.mqtt"),
        ("9001/tcp", "maculaos.edge.mqtt"),
        ("23231/tcp", "maculaos.gitops"),
        ("123/udp", "maculaos.edge.time_sync.serve_to_lan"),
    ] {
        ensure(
            shown.lines().any(|l| l.contains(port) && l.contains(key)),
            || format!("`firewall show` does not say why {port} is open:\n{shown}"),
        )?;
    }
    for (unit, what) in [
        ("mosquitto", "mosquitto"),
        ("maculaos-git", "git's sshd"),
        ("chrony", "chrony"),
        ("systemd-journal-upload", "the journal uploader"),
    ] {
        let mem = a.check(&format!("systemctl show -p MemoryCurrent --value {unit}"))?;
        if let Ok(bytes) = mem.trim().parse::<f64>() {
            ctx.record(format!("edge: {what}'s memory (MiB)"), bytes / 1048576.0);
        }
    }

    // After a reboot: both started again from the configuration, the
    // retained reading and the repository kept on /var.
    reboot(&mut lan, 0)?;
    let a = lan.nodes[0].ssh.clone();
    let t = Instant::now();
    let mut got = subscribe(&b, &addr, &auth, "sensors/temp")?;
    while !got.success() && t.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        got = subscribe(&b, &addr, &auth, "sensors/temp")?;
    }
    ensure(got.success() && got.stdout.trim() == "21.5", || {
        format!("after a reboot the broker did not give the retained reading: {got:?}")
    })?;
    a.check(
        "for i in $(seq 60); do systemctl is-active --quiet maculaos-git && exit 0; sleep 1; done; \
         systemctl status --no-pager maculaos-git; exit 1",
    )?;
    b.check(&format!(
        "cd ~ && rm -rf c2 && {GIT_SSH} git clone -q ssh://git@{addr}:23231/myrepo.git c2 && \
         grep -qx 'replicas: 2' c2/app.yaml"
    ))?;
    let once = ntp_answers(&b, &addr, 20)?;
    ensure(once.success(), || {
        format!("after a reboot the node did not answer NTP: {once:?}")
    })?;
    // Forwarding again after the reboot (the node's journal is kept in
    // memory): this boot's from its start, the kernel's first line too.
    a.check("logger -t edge-test marker-3")?;
    wait_received(&b, "edge-test", "marker-3", 1, 120)?;
    let boot = a.check("tr -d - < /proc/sys/kernel/random/boot_id")?;
    let first = b.check(&format!(
        "sudo journalctl -D {RECEIVED} _BOOT_ID={} _TRANSPORT=kernel -o cat | head -n 1",
        boot.trim()
    ))?;
    ensure(first.starts_with("Linux version"), || {
        format!("the rebooted node's journal did not arrive from its first line: {first:?}")
    })?;
    let health = a.run("maculaos health")?;
    for name in ["mqtt", "git", "log-forward"] {
        ensure(
            health
                .stdout
                .lines()
                .any(|l| l.starts_with(&format!("✓ {name} "))),
            || format!("`maculaos health` has no passing {name} check: {health:?}"),
        )?;
    }

    // Off again: both stop, their ports are dropped.
    a.check(&format!("sudo rm {FILE} {LOG_FILE}"))?;
    a.check_timeout("sudo maculaos apply", CMD_TIMEOUT)?;
    a.check(
        "for i in $(seq 60); do systemctl is-active --quiet mosquitto || \
         systemctl is-active --quiet maculaos-git || \
         systemctl is-active --quiet systemd-journal-upload || exit 0; sleep 1; done; \
         echo 'still running 60 s after the configuration was removed'; exit 1",
    )?;
    for port in [1883, 9001, 23231] {
        ensure(fetch_port(&b, &addr, port)? == 28, || {
            format!("port {port} is not dropped after the services were disabled")
        })?;
    }
    let once = ntp_answers(&b, &addr, 6)?;
    ensure(
        !once.success() && once.stdout.contains("Timeout reached"),
        || format!("NTP is still answered after serve_to_lan was removed: {once:?}"),
    )?;
    b.check(&format!(
        "sudo systemctl stop log-receiver; sudo rm -r {B_FILE} {RECEIVED}"
    ))?;
    Ok(())
}
