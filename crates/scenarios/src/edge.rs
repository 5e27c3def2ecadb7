//! The MQTT broker and the git server (issue 20; plan §4.9.1, §4.9.6,
//! guide "Embedded Services"): switched on in one file, used from another
//! node on the LAN with their real clients (mosquitto_pub/sub, curl's
//! WebSocket handshake, git over ssh), both still serving what they kept
//! after a reboot, and off again with their ports dropped.

use crate::firewall::{fetch_port, reboot, resolve};
use crate::harness::{ensure, Ctx, CMD_TIMEOUT};
use anyhow::Result;
use maculaos_vm::Ssh;
use std::time::Instant;

const FILE: &str = "/var/lib/maculaos/config.d/60-edge.yaml";
const PASSWORD: &str = "s3cret-Sensor";

/// The configuration: the broker with one user, the git server with `key`.
fn edge_yaml(key: &str, users: bool) -> String {
    let users = if users {
        format!("      users:\n        - name: sensor\n          password: {PASSWORD}\n")
    } else {
        String::new()
    };
    format!(
        "maculaos:\n  edge:\n    mqtt:\n      enabled: true\n      port: 1883\n      \
         websocket_port: 9001\n{users}  gitops:\n    enabled: true\n    port: 23231\n    \
         authorized_keys:\n      - {key}\n"
    )
}

/// ssh for git from `b`, with the key made for it, trusting the node's
/// host key on first use.
const GIT_SSH: &str = "GIT_SSH_COMMAND='ssh -i ~/.ssh/git_key -o IdentitiesOnly=yes \
                       -o StrictHostKeyChecking=accept-new -o BatchMode=yes'";

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
    ] {
        ensure(
            shown.lines().any(|l| l.contains(port) && l.contains(key)),
            || format!("`firewall show` does not say why {port} is open:\n{shown}"),
        )?;
    }
    for (unit, what) in [("mosquitto", "mosquitto"), ("maculaos-git", "git's sshd")] {
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
    let health = a.run("maculaos health")?;
    for name in ["mqtt", "git"] {
        ensure(
            health
                .stdout
                .lines()
                .any(|l| l.starts_with(&format!("✓ {name} "))),
            || format!("`maculaos health` has no passing {name} check: {health:?}"),
        )?;
    }

    // Off again: both stop, their ports are dropped.
    a.check(&format!("sudo rm {FILE}"))?;
    a.check_timeout("sudo maculaos apply", CMD_TIMEOUT)?;
    a.check(
        "for i in $(seq 60); do systemctl is-active --quiet mosquitto || \
         systemctl is-active --quiet maculaos-git || exit 0; sleep 1; done; \
         echo 'still running 60 s after the configuration was removed'; exit 1",
    )?;
    for port in [1883, 9001, 23231] {
        ensure(fetch_port(&b, &addr, port)? == 28, || {
            format!("port {port} is not dropped after the services were disabled")
        })?;
    }
    Ok(())
}
