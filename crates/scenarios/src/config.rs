//! Scenarios of the declarative configuration: a NoCloud seed drive made by
//! `cloud-localds` plus a `config.d` file, and a typo that must not brick.

use crate::harness::{ensure, Ctx, HttpServer, CMD_TIMEOUT};
use anyhow::{Context, Result};
use maculaos_runner::{shell_quote, Cmd};
use maculaos_vm::{extra_nic_mac, test_key, Firmware, Ssh, GUEST_SERVICE_ADDR};
use std::path::{Path, PathBuf};

const HOSTNAME: &str = "cfg-node-1";
const STATIC_ADDR: &str = "192.168.77.10/24";
const RUNCMD_LOG: &str = "/var/lib/maculaos-scenario/runcmd.log";
const WRITTEN: &str = "/etc/maculaos-scenario/hello.txt";

/// A NoCloud seed drive, made the way users make one.
pub fn nocloud_seed(dir: &Path, user_data: &str, meta_data: &str) -> Result<PathBuf> {
    let ud = dir.join("user-data");
    let md = dir.join("meta-data");
    std::fs::write(&ud, user_data)?;
    std::fs::write(&md, meta_data)?;
    let seed = dir.join("seed.iso");
    Cmd::new("cloud-localds")
        .arg(&seed)
        .arg(&ud)
        .arg(&md)
        .run()?;
    Ok(seed)
}

/// Write `text` to `path` in the guest as root.
/// Writes `text` to `path` and checks that `sudo maculaos apply` refuses
/// it, naming the file and saying `why`.
pub(crate) fn apply_refuses(ssh: &Ssh, path: &str, text: &str, why: &str) -> Result<()> {
    put_file(ssh, path, text)?;
    let applied = ssh.run_timeout("sudo maculaos apply", crate::harness::CMD_TIMEOUT)?;
    let said = format!("{}{}", applied.stdout, applied.stderr);
    let file = path.rsplit('/').next().unwrap_or(path);
    crate::harness::ensure(
        !applied.success() && said.contains(file) && said.contains(why),
        || format!("apply of {file} did not fail naming it and saying `{why}`: {applied:?}"),
    )
}

pub(crate) fn put_file(ssh: &Ssh, path: &str, text: &str) -> Result<()> {
    let dir = Path::new(path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/".into());
    ssh.check(&format!(
        "sudo mkdir -p {} && printf '%s' {} | sudo tee {} >/dev/null",
        shell_quote(&dir),
        shell_quote(text),
        shell_quote(path)
    ))?;
    Ok(())
}

/// `ssh` offering no key: the server must list only `publickey` as a way in.
fn check_password_refused(port: u16) -> Result<()> {
    let err = Cmd::new("ssh")
        .args(["-F", "/dev/null", "-p", &port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no"])
        .args([
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ])
        .args(["-o", "ConnectTimeout=10", "macula@127.0.0.1", "true"])
        .quiet()
        .output();
    let text = match err {
        Ok(out) => anyhow::bail!("ssh without a key logged in: {out}"),
        Err(e) => e.to_string(),
    };
    ensure(text.contains("Permission denied (publickey)"), || {
        format!("ssh without a key was not refused with `publickey` only:\n{text}")
    })
}

/// Everything the seed drive and the config.d file asked for.
fn check_configured(ssh: &Ssh, seed_key: &Path) -> Result<()> {
    let h = ssh.check("hostname")?;
    ensure(h.trim() == HOSTNAME, || {
        format!("hostname is {h:?}, not {HOSTNAME}")
    })?;
    // A login of its own: the point is that this key is accepted.
    let other = Ssh::new(ssh.port, seed_key, "macula").fresh();
    other
        .check("true")
        .context("logging in with the key from the seed drive's user-data")?;
    check_password_refused(ssh.port)?;
    let addrs = ssh.check("ip -o -4 addr show")?;
    ensure(addrs.contains(STATIC_ADDR), || {
        format!("the second NIC has no {STATIC_ADDR}:\n{addrs}")
    })?;
    let sw = ssh.check("cat /proc/sys/vm/swappiness")?;
    ensure(sw.trim() == "13", || {
        format!("vm.swappiness is {sw:?}, not 13")
    })?;
    ssh.check("test -d /sys/module/dummy")
        .context("module dummy is not loaded")?;
    let st = ssh.check(&format!("sudo stat -c '%a %U' {WRITTEN}"))?;
    ensure(st.trim() == "600 root", || {
        format!("{WRITTEN} has mode/owner {st:?}, not 600 root")
    })?;
    let content = ssh.check(&format!("sudo cat {WRITTEN}"))?;
    ensure(content == "hello from nocloud\n", || {
        format!("{WRITTEN} holds {content:?}")
    })?;
    let log = ssh.check(&format!("cat {RUNCMD_LOG}"))?;
    ensure(log == "ran\n", || {
        format!("runcmd should have run exactly once; {RUNCMD_LOG} holds {log:?}")
    })?;
    let again = ssh.check("sudo maculaos apply")?;
    ensure(again.contains("nothing to change"), || {
        format!("a second `maculaos apply` changed things:\n{again}")
    })?;
    Ok(())
}

/// The `done in N ms` of this boot's maculaos-apply.service.
fn record_apply_time(ctx: &mut Ctx, ssh: &Ssh, label: &str) -> Result<()> {
    let out = ssh.check("sudo journalctl -b -o cat -u maculaos-apply.service")?;
    let ms = out
        .lines()
        .filter_map(|l| l.split("done in ").nth(1))
        .filter_map(|r| r.trim_end_matches(" ms").trim().parse::<f64>().ok())
        .next_back()
        .with_context(|| format!("no `done in` line from maculaos-apply:\n{out}"))?;
    ctx.record(format!("{label}: maculaos apply at boot"), ms / 1000.0);
    Ok(())
}

pub fn config_nocloud(ctx: &mut Ctx) -> Result<()> {
    let (seed_key, seed_pub) = test_key(&ctx.dir.join("seed-key"))?;
    let mac = extra_nic_mac(1);
    let user_data = format!(
        "#cloud-config\n\
         hostname: {HOSTNAME}\n\
         ssh_authorized_keys:\n  - {}\n\
         write_files:\n  - path: {WRITTEN}\n    content: \"hello from nocloud\\n\"\n    permissions: \"0600\"\n\
         runcmd:\n  - mkdir -p {dir} && echo ran >> {RUNCMD_LOG}\n\
         maculaos:\n  network:\n    interfaces:\n      - mac: \"{mac}\"\n        address: {STATIC_ADDR}\n",
        seed_pub.trim(),
        dir = Path::new(RUNCMD_LOG).parent().map(|p| p.display().to_string()).unwrap_or_default(),
    );
    // meta-data's hostname is the weaker: user-data's must win.
    let seed = nocloud_seed(
        &ctx.dir,
        &user_data,
        "instance-id: scenario-1\nlocal-hostname: from-meta-data\n",
    )?;
    let disk = ctx.disk("")?;
    let mut spec = ctx.spec(&disk, Firmware::Bios);
    spec.extra_drives.push(seed);
    spec.extra_nics = 1;
    let ssh = ctx.boot(spec, "first boot")?;
    record_apply_time(ctx, &ssh, "first boot")?;

    put_file(
        &ssh,
        "/var/lib/maculaos/config.d/50-scenario.yaml",
        "maculaos:\n  sysctl:\n    vm.swappiness: 13\n  modules:\n    - dummy\n",
    )?;
    let out = ssh.check_timeout("sudo maculaos apply", CMD_TIMEOUT)?;
    ensure(out.contains("sysctl"), || {
        format!("`maculaos apply` did not report the sysctl change:\n{out}")
    })?;
    let shown = ssh.check("sudo maculaos config show --sources")?;
    ensure(
        shown.contains("vm.swappiness")
            && shown.contains("50-scenario.yaml")
            && shown.contains("datasource/nocloud/user-data"),
        || format!("`config show --sources` does not name the sources:\n{shown}"),
    )?;
    check_configured(&ssh, &seed_key)?;

    let ssh = ctx.reboot(&ssh, "second boot")?;
    record_apply_time(ctx, &ssh, "second boot")?;
    check_configured(&ssh, &seed_key)
}

pub fn config_last_good(ctx: &mut Ctx) -> Result<()> {
    // The good configuration comes from a URL (maculaos.config_url), served
    // from the host through the VM's one allowed forward.
    let server = HttpServer::serve("maculaos:\n  hostname: good-node\n".into())?;
    let disk = ctx.disk(&format!(
        "maculaos.config_url=http://{GUEST_SERVICE_ADDR}:8080/node.yaml"
    ))?;
    let mut spec = ctx.spec(&disk, Firmware::Bios);
    spec.host_services.push((8080, server.port));
    let ssh = ctx.boot(spec, "first boot")?;
    ensure(server.hits() > 0, || {
        "the node never fetched its config_url".into()
    })?;
    let h = ssh.check("hostname")?;
    ensure(h.trim() == "good-node", || {
        format!("hostname is {h:?}, not good-node from the config_url")
    })?;
    let shown = ssh.check("sudo maculaos config show --sources")?;
    ensure(shown.contains("datasource/url/config.yaml"), || {
        format!("`config show --sources` does not name the URL copy:\n{shown}")
    })?;
    ssh.check("sudo maculaos health")
        .context("health fails with a valid configuration")?;

    let typo = "/var/lib/maculaos/config.d/20-typo.yaml";
    put_file(&ssh, typo, "maculaos:\n  hostnme: typo-node\n")?;
    let ssh = ctx.reboot(&ssh, "boot with a typo")?;
    let h = ssh.check("hostname")?;
    ensure(h.trim() == "good-node", || {
        format!("with a typo the node should keep good-node, it is {h:?}")
    })?;
    let want = format!(
        "{typo}:2:3: maculaos: unknown key `hostnme` in `maculaos` — did you mean `hostname`?"
    );
    let health = ssh.run("sudo maculaos health")?;
    ensure(!health.success(), || {
        format!("`maculaos health` passed with a typo:\n{}", health.stdout)
    })?;
    ensure(health.stdout.contains(&want), || {
        format!(
            "`maculaos health` does not show\n  {want}\nit says:\n{}",
            health.stdout
        )
    })?;
    let vm = ctx.vm()?;
    let serial = vm.serial_text();
    ensure(serial.contains("CONFIGURATION ERROR"), || {
        "the boot console did not show the configuration error".into()
    })?;
    // agetty prints /etc/issue.d/ above the serial login prompt.
    ensure(
        serial.contains("*** MaculaOS: the configuration has errors"),
        || "the console login banner did not show the configuration error".into(),
    )?;
    let motd = ssh.check("cat /run/motd.d/50-maculaos-config")?;
    ensure(motd.contains("20-typo.yaml"), || {
        format!("login banner: {motd}")
    })?;
    let shown = ssh.check("sudo maculaos config show")?;
    ensure(
        shown.starts_with("# CONFIGURATION ERROR") && shown.contains("hostname: good-node"),
        || format!("`config show` with a typo:\n{shown}"),
    )?;
    // An operator checks a copy of their own, without root.
    let v = ssh.run(&format!(
        "sudo cat {typo} > /tmp/typo.yaml && maculaos config validate /tmp/typo.yaml"
    ))?;
    ensure(!v.success() && v.stdout.contains("did you mean"), || {
        format!("`config validate` on the typo: {v:?}")
    })?;

    // Fixing the file and applying clears every trace.
    ssh.check(&format!("sudo rm {typo} && sudo maculaos apply"))?;
    ssh.check("sudo maculaos health")
        .context("health still fails after the typo was fixed")?;
    ssh.check("test ! -e /run/motd.d/50-maculaos-config")
        .context("the login banner still shows the error")?;
    Ok(())
}
