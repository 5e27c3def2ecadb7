//! Keeping a node running, and telling why when it cannot: the health
//! agent restarts a unit whose check fails, systemd restarts a hung agent,
//! the hardware watchdog reboots a hung kernel; `maculaos backup` brings
//! back changed and deleted files byte-identical with their modes and
//! owners, and refuses a corrupted archive before writing anything;
//! `maculaos diag --full` writes a support bundle that holds what support
//! needs and none of the configuration's secrets.

use crate::config::put_file;
use crate::harness::{ensure, wait_until, Ctx, BOOT_TIMEOUT, CMD_TIMEOUT};
use anyhow::{Context, Result};
use maculaos_vm::Ssh;
use std::time::Duration;

/// A secret in the node's configuration that no support bundle may carry.
const SECRET: &str = "s3cr3t-k3s-token-4711";

/// Every file under /var/lib/data with its mode, owner, size, times and
/// content hash: what a restore must bring back exactly.
fn listing(ssh: &Ssh) -> Result<String> {
    Ok(ssh.check(
        "cd /var/lib/data && sudo find . ! -type l -printf '%p %y %m %u:%g %s %T@\\n' && \
         sudo find . -type l -printf '%p %y %u:%g -> %l\\n' && \
         sudo find . -type f -exec sha256sum {} +",
    )?)
}

/// The node's configuration for this scenario: backups, a 15 s hardware
/// watchdog, an HTTP check on a small web server (busybox httpd) that the
/// agent restarts, and a secret.
fn support_config() -> String {
    format!(
        "maculaos:
  backup:
    enabled: true
    schedule: \"30 3 * * *\"
    include: [/var/lib/data, /var/lib/maculaos/config.d]
    retention: 2
  watchdog:
    timeout: 15
  auto_heal:
    network_grace: 20s
  health:
    checks:
      - name: web
        type: http
        url: http://127.0.0.1:8080/
        unit: demo-web
        interval: 2s
        timeout: 2s
        restart_on_failure: true
        max_restarts: 3
        cooldown: 1m
write_files:
  - path: /etc/systemd/system/demo-web.service
    content: |
      [Unit]
      Description=demo web server checked by the health agent
      [Service]
      ExecStart=/bin/busybox httpd -f -p 127.0.0.1:8080 -h /var/lib/demo-web
  - path: /var/lib/demo-web/index.html
    content: hello from demo-web
k3s:
  token: {SECRET}
"
    )
}

/// The main PID of the health agent, once it is running.
fn agent_pid(ssh: &Ssh) -> Result<u32> {
    let out = ssh.check("systemctl show -p MainPID --value maculaos-agent")?;
    Ok(out.trim().parse().unwrap_or(0))
}

/// The agent restarts a unit whose check fails; systemd's watchdog restarts
/// an agent that stops answering.
fn agent(ctx: &mut Ctx, ssh: &Ssh) -> Result<()> {
    ssh.check(
        "sudo systemctl daemon-reload && sudo systemctl start demo-web && \
         curl -fsS http://127.0.0.1:8080/ && sudo systemctl restart maculaos-agent",
    )?;
    // Stopped with the agent out of the way: health says what is wrong.
    let h = ssh.run(
        "sudo systemctl stop maculaos-agent && sudo systemctl stop demo-web && sudo maculaos health",
    )?;
    ensure(
        !h.success()
            && h.stdout
                .lines()
                .any(|l| l.contains("✗") && l.contains("web")),
        || format!("`maculaos health` did not fail on the stopped web server:\n{h:?}"),
    )?;
    ssh.check("sudo systemctl start maculaos-agent")?;
    let vm = ctx.vm()?;
    wait_until(
        vm,
        "the agent to restart demo-web",
        Duration::from_secs(90),
        || Ok(ssh.run("curl -fsS http://127.0.0.1:8080/")?.success()),
    )?;
    let events = ssh.check("sudo journalctl -u maculaos-agent -o cat | grep 'event:'")?;
    ensure(
        events.contains("event: restart: check web failed")
            && events.contains("restarting demo-web.service (1/3)"),
        || format!("the agent's restart is not in the journal:\n{events}"),
    )?;
    let h = ssh.run("sudo maculaos health")?;
    ensure(h.success(), || {
        format!("`maculaos health` still fails after the agent's restart:\n{h:?}")
    })?;

    // A hung agent (SIGSTOP) stops feeding systemd's watchdog: restarted.
    let pid = agent_pid(ssh)?;
    ensure(pid > 0, || "the health agent is not running".to_string())?;
    ssh.check(&format!("sudo kill -STOP {pid}"))?;
    wait_until(
        vm,
        "systemd to restart the hung agent",
        Duration::from_secs(120),
        || {
            let now = agent_pid(ssh)?;
            Ok(now != 0 && now != pid)
        },
    )?;
    let log = ssh.check("sudo journalctl -u maculaos-agent -o cat")?;
    ensure(log.contains("Watchdog timeout"), || {
        format!("the journal does not show the agent's watchdog timeout:\n{log}")
    })?;
    Ok(())
}

/// A hung kernel (sysrq crash; the kernel does not reboot on panic) stops
/// systemd feeding the i6300esb: the hardware resets the machine, and it
/// boots again.
fn hardware_watchdog(ctx: &mut Ctx, ssh: &Ssh) -> Result<()> {
    // The agent arms it once it is up (after telling systemd it is ready).
    let mut armed = String::new();
    wait_until(
        ctx.vm()?,
        "systemd's runtime watchdog armed on the i6300esb for 15 s",
        CMD_TIMEOUT,
        || {
            armed = ssh.check(
                "cat /sys/class/watchdog/watchdog0/identity; systemctl show -p RuntimeWatchdogUSec --value",
            )?;
            Ok(armed.contains("i6300ESB") && armed.contains("15s"))
        },
    )
    .with_context(|| format!("watchdog identity and RuntimeWatchdogUSec:\n{armed}"))?;
    let _ = ssh.run("sudo sh -c 'echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger'");
    let vm = ctx.vm()?;
    vm.wait_exit(BOOT_TIMEOUT)
        .context("waiting for the watchdog to reset the hung machine")?;
    let serial = vm.serial_text();
    ensure(serial.contains("Kernel panic"), || {
        "the serial console shows no kernel panic before the reset".to_string()
    })?;
    vm.boot_again()?;
    ctx.wait_up("after the watchdog reset")?;
    Ok(())
}

pub fn agent_backup_diag(ctx: &mut Ctx) -> Result<()> {
    // The saved node with an i6300esb hardware watchdog.
    let ssh = ctx.restore(2)?;
    put_file(
        &ssh,
        "/var/lib/maculaos/config.d/60-support.yaml",
        &support_config(),
    )?;
    ssh.check("sudo maculaos apply")?;
    agent(ctx, &ssh)?;
    ssh.check(
        "sudo mkdir -p /var/lib/data/sub/deeper && cd /var/lib/data && \
         echo 'first file' | sudo tee a.txt >/dev/null && sudo chmod 0640 a.txt && sudo chown macula:macula a.txt && \
         sudo head -c 1048576 /dev/urandom | sudo tee sub/blob.bin >/dev/null && \
         echo secret-ish | sudo tee sub/deeper/private >/dev/null && sudo chmod 0600 sub/deeper/private && \
         sudo ln -s a.txt link && sudo touch -d '2020-01-02 03:04:05' a.txt sub/blob.bin",
    )?;
    let original = listing(&ssh)?;

    let out = ssh.check_timeout("sudo maculaos backup create", CMD_TIMEOUT)?;
    let archive = out
        .lines()
        .find_map(|l| l.split(':').next().filter(|p| p.ends_with(".tar.gz")))
        .unwrap_or_default()
        .to_string();
    ensure(archive.starts_with("/var/lib/"), || {
        format!("`maculaos backup create` did not say where the backup is:\n{out}")
    })?;
    let list = ssh.check("sudo maculaos backup list")?;
    ensure(list.contains(&archive), || {
        format!("`maculaos backup list` does not show {archive}:\n{list}")
    })?;

    // Change, delete, re-own: then a corrupted copy is refused untouched.
    ssh.check(
        "cd /var/lib/data && echo changed | sudo tee a.txt >/dev/null && sudo chmod 0777 a.txt && \
         sudo chown root:root a.txt && sudo rm -r sub link && echo new | sudo tee extra.txt >/dev/null",
    )?;
    let changed = listing(&ssh)?;
    ssh.check(&format!(
        "sudo cp {archive} /tmp/bad.tar.gz && size=$(stat -c %s /tmp/bad.tar.gz) && \
         printf '\\377\\000\\377' | sudo dd of=/tmp/bad.tar.gz bs=1 seek=$((size / 2)) conv=notrunc status=none"
    ))?;
    let bad = ssh.run_timeout("sudo maculaos backup restore /tmp/bad.tar.gz", CMD_TIMEOUT)?;
    ensure(
        !bad.success() && bad.stderr.contains("before anything was written"),
        || format!("a corrupted backup was not refused clearly:\n{bad:?}"),
    )?;
    ensure(listing(&ssh)? == changed, || {
        "the refused restore changed /var/lib/data".to_string()
    })?;

    let good = ssh.run_timeout("sudo maculaos backup restore --latest", CMD_TIMEOUT)?;
    ensure(good.success(), || format!("the restore failed:\n{good:?}"))?;
    let restored = listing(&ssh)?;
    // extra.txt was not in the backup: a restore leaves it alone.
    let expected: Vec<&str> = changed
        .lines()
        .filter(|l| l.contains("extra.txt"))
        .chain(original.lines())
        .collect();
    let mut expected = expected;
    expected.sort();
    let mut got: Vec<&str> = restored.lines().collect();
    got.sort();
    ensure(got == expected, || {
        format!(
            "after the restore /var/lib/data is not as backed up:\nexpected:\n{}\ngot:\n{restored}",
            expected.join("\n")
        )
    })?;

    encrypted_backup(&ssh)?;
    scheduled_backup(&ssh)?;

    // The support bundle.
    let out = ssh.run_timeout(
        "sudo maculaos diag --full -o /tmp/support.tar.gz",
        CMD_TIMEOUT,
    )?;
    ensure(out.success(), || {
        format!("`maculaos diag --full` failed:\n{out:?}")
    })?;
    let members = ssh.check("sudo tar tzf /tmp/support.tar.gz")?;
    for m in [
        "MANIFEST.txt",
        "system/info.json",
        "system/dmesg.txt",
        "journal/this-boot.txt",
        "config/config.d/60-support.yaml",
        "health/health.json",
        "updates/status.json",
    ] {
        ensure(
            members.lines().any(|l| l.trim_start_matches("./") == m),
            || format!("the support bundle has no {m}:\n{members}"),
        )?;
    }
    let leaks = ssh.run(&format!(
        "sudo tar xzf /tmp/support.tar.gz -O | grep -c {SECRET}"
    ))?;
    ensure(leaks.stdout.trim() == "0", || {
        format!(
            "the support bundle holds the config's secret ({} lines)",
            leaks.stdout.trim()
        )
    })?;
    let conf = ssh.check("sudo tar xzf /tmp/support.tar.gz -O config/config.d/60-support.yaml")?;
    ensure(
        conf.contains("<redacted>") && conf.contains("/var/lib/data"),
        || format!("the bundle's copy of the config is not the redacted config:\n{conf}"),
    )?;
    let storage = ssh.check("sudo maculaos diag storage")?;
    ensure(
        storage.contains("✓") && storage.contains("Data partition"),
        || format!("`maculaos diag storage` printed no data partition line:\n{storage}"),
    )?;
    network_lines(&ssh)?;
    network_heal(ctx, &ssh)?;
    hardware_watchdog(ctx, &ssh)
}

/// A backup encrypted to an age key (made with age-keygen on the node):
/// only the age file is left, it is listed as encrypted, a restore without
/// the key is refused, and with it the files come back.
fn encrypted_backup(ssh: &Ssh) -> Result<()> {
    let keygen = ssh.check("sudo age-keygen -o /root/backup.key 2>&1")?;
    let recipient = keygen
        .split_whitespace()
        .find(|w| w.starts_with("age1"))
        .with_context(|| format!("age-keygen printed no public key:\n{keygen}"))?
        .to_string();
    let before = ssh.check("sudo ls -A /var/lib/maculaos-backups")?;
    let out = ssh.check_timeout(
        &format!("sudo maculaos backup create --encrypt-to {recipient}"),
        CMD_TIMEOUT,
    )?;
    let archive = out
        .lines()
        .find_map(|l| l.split(':').next().filter(|p| p.ends_with(".tar.gz.age")))
        .unwrap_or_default()
        .to_string();
    ensure(!archive.is_empty(), || {
        format!("`backup create --encrypt-to` did not say where the .tar.gz.age is:\n{out}")
    })?;
    let head = ssh.check(&format!("sudo head -c 21 {archive}"))?;
    ensure(head == "age-encryption.org/v1", || {
        format!("{archive} is not an age file: it starts {head:?}")
    })?;
    let after = ssh.check("sudo ls -A /var/lib/maculaos-backups")?;
    let new = added_lines(&before, &after);
    ensure(new.len() == 1 && new[0].ends_with(".tar.gz.age"), || {
        format!("the encrypted backup left more than its .age file behind: {new:?}")
    })?;
    let list = ssh.check("sudo maculaos backup list")?;
    ensure(
        list.lines()
            .any(|l| l.contains(&archive) && l.contains("encrypted")),
        || format!("`backup list` does not show {archive} as encrypted:\n{list}"),
    )?;
    ssh.check("echo changed-again | sudo tee /var/lib/data/a.txt >/dev/null")?;
    let refused = ssh.run_timeout(
        &format!("sudo maculaos backup restore {archive}"),
        CMD_TIMEOUT,
    )?;
    ensure(
        !refused.success() && refused.stderr.contains("--identity"),
        || format!("an encrypted restore without a key was not refused clearly:\n{refused:?}"),
    )?;
    let a = ssh.check("cat /var/lib/data/a.txt")?;
    ensure(a.trim() == "changed-again", || {
        "the refused encrypted restore changed /var/lib/data".to_string()
    })?;
    let good = ssh.run_timeout(
        &format!("sudo maculaos backup restore {archive} --identity /root/backup.key"),
        CMD_TIMEOUT,
    )?;
    ensure(good.success(), || {
        format!("the encrypted restore failed:\n{good:?}")
    })?;
    let a = ssh.check("sudo cat /var/lib/data/a.txt")?;
    ensure(a.trim() == "first file", || {
        format!("after the encrypted restore a.txt holds {a:?}")
    })?;
    let left =
        ssh.check("sudo find /var/lib/maculaos-backups -name '*.tar.gz' -newer /root/backup.key")?;
    ensure(left.trim().is_empty(), || {
        format!("a decrypted copy was left behind: {left}")
    })
}

/// The lines of `after` that are not in `before` (new files in a listing).
fn added_lines<'a>(before: &str, after: &'a str) -> Vec<&'a str> {
    after
        .lines()
        .filter(|l| !before.lines().any(|b| b == *l))
        .collect()
}

/// `backup.enabled` and `schedule` (a cron line): apply enables the timer
/// with the schedule, and the service it starts makes a backup and keeps
/// `retention` (2) of them.
fn scheduled_backup(ssh: &Ssh) -> Result<()> {
    let timer = ssh.check(
        "systemctl is-enabled maculaos-backup.timer; systemctl is-active maculaos-backup.timer; \
         systemctl show -p TimersCalendar --value maculaos-backup.timer",
    )?;
    ensure(
        timer.starts_with("enabled\nactive\n") && timer.contains("*-*-* 03:30:00"),
        || format!("the backup timer is not enabled with the schedule 03:30:\n{timer}"),
    )?;
    let before = ssh.check("sudo ls -A /var/lib/maculaos-backups")?;
    ssh.check_timeout("sudo systemctl start maculaos-backup.service", CMD_TIMEOUT)?;
    let after = ssh.check("sudo ls -A /var/lib/maculaos-backups")?;
    let new = added_lines(&before, &after);
    ensure(
        new.len() == 1 && new[0].ends_with(".tar.gz") && after.lines().count() == 2,
        || {
            format!("the timer's service did not leave 2 backups with a new one:\nbefore:\n{before}\nafter:\n{after}")
        },
    )
}

/// `diag network` says whether the Internet is reachable (these VMs have
/// no way out, so: not, and why), and the network check is in `health`.
fn network_lines(ssh: &Ssh) -> Result<()> {
    let out = ssh.run_timeout("sudo maculaos diag network", CMD_TIMEOUT)?;
    ensure(
        out.stdout
            .lines()
            .any(|l| l.contains("✗") && l.contains("Internet:")),
        || {
            format!(
                "`diag network` has no failing Internet line on a VM without Internet:\n{out:?}"
            )
        },
    )?;
    let health = ssh.check("sudo maculaos health --json")?;
    ensure(health.contains("\"network\""), || {
        format!("`maculaos health` has no network check:\n{health}")
    })
}

/// Whether SSH gets a command through within `timeout` (a connection that
/// hangs, as one over a downed link does, counts as no).
fn answers(ssh: &Ssh, timeout: Duration) -> bool {
    // A new login: a connection opened before the link went down proves nothing.
    matches!(ssh.fresh().run_timeout("true", timeout), Ok(o) if o.success())
}

/// The node's only link, taken down, comes back: the agent sees no network
/// for `network_grace` and restarts systemd-networkd, which raises it.
fn network_heal(ctx: &mut Ctx, ssh: &Ssh) -> Result<()> {
    // The NIC SSH comes in on (with restrict=on there is no IPv4 gateway;
    // the default route is IPv6's).
    let nic = ssh.check("ip -j route get 10.0.2.2 | jq -r '.[0].dev'")?;
    let nic = nic.trim().to_string();
    ensure(!nic.is_empty() && nic != "null", || {
        "no route to the host's side of the VM's network".to_string()
    })?;
    // Later, from inside: this SSH connection runs over that link.
    ssh.check(&format!(
        "sudo systemd-run --quiet --on-active=2s /usr/sbin/ip link set dev {nic} down"
    ))?;
    let vm = ctx.vm()?;
    wait_until(vm, &format!("{nic} to go down"), CMD_TIMEOUT, || {
        Ok(!answers(ssh, Duration::from_secs(10)))
    })?;
    let down_at = std::time::Instant::now();
    wait_until(
        vm,
        "the agent to bring the network back",
        Duration::from_secs(300),
        || Ok(answers(ssh, Duration::from_secs(15))),
    )?;
    ctx.record(
        "network down to SSH back (agent: 20 s grace, 60 s checks)",
        down_at.elapsed().as_secs_f64(),
    );
    // The shared connection from before the link went down may still be
    // waiting out its keepalives: the next commands get a new one.
    ssh.close_master();
    let events = ssh.check("sudo journalctl -u maculaos-agent -o cat | grep 'event: network'")?;
    ensure(
        events.contains("restarting systemd-networkd.service"),
        || format!("the agent's network restart is not in the journal:\n{events}"),
    )
}
