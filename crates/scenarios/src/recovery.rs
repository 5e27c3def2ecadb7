//! Recovery mode: entered once with `maculaos recovery`, reachable over SSH
//! with root shells on the consoles and no workloads, the data partition
//! left unmounted; `maculaos repair` checks it, rebuilds a broken GRUB
//! environment and checks the slots; the next boot is normal, data intact.

use crate::harness::{ensure, info, wait_until, Ctx, BOOT_TIMEOUT, CMD_TIMEOUT};
use anyhow::{Context, Result};
use maculaos_vm::{disk, Ssh};
use std::path::Path;

const TARGET: &str = "maculaos-recovery.target";

pub fn recovery(ctx: &mut Ctx) -> Result<()> {
    let ssh = ctx.restore(0)?;
    let image = ctx.vm()?.spec().disk.clone();
    ssh.check("echo kept | sudo tee /var/lib/recovery-kept.txt >/dev/null")?;
    // The key in the node's own configuration too: the test's kernel
    // parameter lives in grubenv, which this scenario garbles and repair
    // rebuilds without it.
    ssh.check(&format!(
        "sudo mkdir -p /var/lib/maculaos/config.d && printf 'ssh_authorized_keys:\\n  - %s\\n' {} | sudo tee /var/lib/maculaos/config.d/50-key.yaml >/dev/null",
        maculaos_runner::shell_quote(ctx.pubkey())
    ))?;
    // Outside recovery mode, repair refuses: the data partition is in use.
    let r = ssh.run("sudo maculaos repair")?;
    ensure(!r.success() && r.stderr.contains("recovery mode"), || {
        format!("`maculaos repair` in disk mode did not refuse clearly:\n{r:?}")
    })?;

    // `maculaos recovery --reboot`: the next boot, once, is recovery.
    let ssh = ctx.reboot_by(
        &ssh,
        "sudo maculaos recovery --reboot",
        "recovery mode",
        TARGET,
    )?;
    let i = info(&ssh)?;
    ensure(i["mode"] == "recovery" && i["slot"] == "A", || {
        format!("maculaos info: expected recovery mode on slot A:\n{i:#}")
    })?;
    let multi = ssh.run("systemctl is-active multi-user.target")?;
    ensure(multi.stdout.trim() != "active", || {
        "multi-user.target (the workloads) is active in recovery mode".to_string()
    })?;
    let var = ssh.check("findmnt -n -o FSTYPE /var")?;
    ensure(var.trim() == "tmpfs", || {
        format!("/var is {} in recovery mode, expected tmpfs", var.trim())
    })?;
    let mounted = ssh.run("findmnt -n /dev/vda5")?;
    ensure(mounted.stdout.trim().is_empty(), || {
        format!(
            "MACULA_DATA is mounted in recovery mode:\n{}",
            mounted.stdout
        )
    })?;
    // The root shell on the serial console logged in by itself.
    let vm = ctx.vm()?;
    let serial = vm.serial_log_path().to_owned();
    wait_until(
        vm,
        "a root shell on the serial console",
        CMD_TIMEOUT,
        || {
            let log = std::fs::read_to_string(&serial).unwrap_or_default();
            Ok(log.contains("root (automatic login)"))
        },
    )?;

    let out = ssh.check_timeout("sudo maculaos repair", CMD_TIMEOUT)?;
    for want in [
        "✓ MACULA_DATA (/dev/vda5): e2fsck: clean",
        "✓ GRUB environment: readable: boots slot A",
        "sha256 matches",
        "– slot B: empty",
    ] {
        ensure(out.contains(want), || {
            format!("`maculaos repair` did not say `{want}`:\n{out}")
        })?;
    }
    // A grubenv that cannot be read is rebuilt.
    ssh.check(
        "sudo mkdir -p /run/esp && sudo mount /dev/vda2 /run/esp && \
         sudo dd if=/dev/urandom of=/run/esp/grub/grubenv bs=1024 count=1 conv=notrunc status=none && \
         sudo umount /run/esp",
    )?;
    let out = ssh.check_timeout("sudo maculaos repair --json", CMD_TIMEOUT)?;
    let checks: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("`maculaos repair --json` printed no JSON:\n{out}"))?;
    let env = checks
        .as_array()
        .and_then(|a| a.iter().find(|c| c["what"] == "GRUB environment"))
        .cloned()
        .unwrap_or_default();
    ensure(env["outcome"] == "repaired", || {
        format!("a garbled grubenv was not rebuilt:\n{out}")
    })?;

    // The next boot is a normal one, with the data as it was.
    let ssh = ctx.reboot(&ssh, "normal boot after recovery")?;
    let i = info(&ssh)?;
    ensure(i["mode"] == "disk" && i["slot"] == "A", || {
        format!("after recovery: expected a normal boot of slot A:\n{i:#}")
    })?;
    let kept = ssh.check("cat /var/lib/recovery-kept.txt")?;
    ensure(kept.trim() == "kept", || {
        "a file written before recovery mode is gone".to_string()
    })?;
    ctx.shutdown();
    let env = disk::grubenv_list(&image)?;
    ensure(
        env.get("maculaos_slot").map(String::as_str) == Some("A")
            && env.get("maculaos_next").is_none_or(|v| v.is_empty()),
        || format!("grub-editenv after recovery: {env:?}"),
    )
}

/// `maculaos factory-reset --confirm --keep-data --keep-network`: the next
/// boot wipes the node's configuration, credentials and identity, keeps
/// /var/lib/data and the network settings; a key that only the wiped
/// configuration authorised no longer logs in.
pub fn factory_reset(ctx: &mut Ctx) -> Result<()> {
    const HOST: &str = "before-reset";
    let ssh = ctx.restore(0)?;
    let image = ctx.vm()?.spec().disk.clone();
    // A second admin key, given only by the node's configuration (the test
    // key stays on the kernel command line, which a reset keeps).
    let (key2, pub2) = maculaos_vm::ssh::test_key(&ctx.dir.join("key2"))?;
    ssh.check(&format!(
        "sudo mkdir -p /var/lib/maculaos/config.d && printf 'maculaos:\\n  hostname: {HOST}\\n  dns_nameservers: [10.0.2.3]\\nssh_authorized_keys:\\n  - %s\\n' {} | sudo tee /var/lib/maculaos/config.d/50-node.yaml >/dev/null && sudo maculaos apply",
        maculaos_runner::shell_quote(pub2.trim())
    ))?;
    let port = ctx.vm()?.ssh_port().context("no SSH forward")?;
    let ssh2 = maculaos_vm::Ssh::new(port, &key2, "macula");
    let host = ssh2.check("hostname")?;
    ensure(host.trim() == HOST, || {
        format!("the configured hostname is not in effect before the reset: {host}")
    })?;
    ssh.check(
        "sudo mkdir -p /var/lib/data /var/lib/rancher/k3s && \
         echo user-data | sudo tee /var/lib/data/keep-me >/dev/null && \
         echo k3s-state | sudo tee /var/lib/rancher/k3s/state >/dev/null && sync",
    )?;
    let identity = "sudo cat /etc/machine-id /var/lib/maculaos/ssh/ssh_host_ed25519_key.pub";
    let before = ssh.check(identity)?;

    // Without --confirm: says what it would do and changes nothing.
    let dry = ssh.run("sudo maculaos factory-reset --keep-data")?;
    ensure(
        !dry.success() && dry.stderr.contains("--confirm") && dry.stderr.contains("/var/lib/data"),
        || format!("factory-reset without --confirm did not explain itself:\n{dry:?}"),
    )?;
    let pending = ssh.run("test -e /var/.maculaos-factory-reset.json")?;
    ensure(!pending.success(), || {
        "factory-reset without --confirm left a request behind".to_string()
    })?;

    // Asked for from recovery mode (seed 4.10.2), where the data partition
    // is not mounted: the CLI mounts it to leave the request.
    let rec = ctx.reboot_by(
        &ssh,
        "sudo maculaos recovery --reboot",
        "recovery mode",
        TARGET,
    )?;
    let ssh = ctx.reboot_by(
        &rec,
        "sudo maculaos factory-reset --confirm --keep-data --keep-network",
        "after the factory reset",
        "multi-user.target",
    )?;
    let boot = ssh.check("cat /run/maculaos/boot.json")?;
    ensure(boot.contains("\"factory_reset\": true"), || {
        format!("init did not record a factory reset:\n{boot}")
    })?;
    let serial = ctx.vm()?.serial_text();
    ensure(serial.contains("FACTORY RESET of MACULA_DATA"), || {
        "the console does not announce the factory reset".to_string()
    })?;
    let data = ssh.check("sudo cat /var/lib/data/keep-me")?;
    ensure(data.trim() == "user-data", || {
        format!("/var/lib/data/keep-me did not survive --keep-data: {data:?}")
    })?;
    let k3s = ssh.run("sudo test -e /var/lib/rancher")?;
    ensure(!k3s.success(), || {
        "k3s state survived the reset".to_string()
    })?;
    let confd = ssh.check("sudo ls /var/lib/maculaos/config.d")?;
    ensure(confd.trim() == "10-kept-network.yaml", || {
        format!("config.d after the reset holds {confd:?}, expected only the kept network settings")
    })?;
    let kept = ssh.check("sudo cat /var/lib/maculaos/config.d/10-kept-network.yaml")?;
    ensure(kept.contains("10.0.2.3") && !kept.contains(HOST), || {
        format!("the kept network settings are wrong:\n{kept}")
    })?;
    let host = ssh.check("hostname")?;
    ensure(host.trim() != HOST, || {
        "the hostname of the wiped configuration is still in effect".to_string()
    })?;
    let after = ssh.check(identity)?;
    ensure(before != after, || {
        format!("machine id and SSH host key are the same after the reset:\n{after}")
    })?;
    // The wiped configuration's key no longer logs in (the host key
    // changed too: the harness's SSH does not pin host keys).
    let old = ssh2.fresh().run("true")?;
    ensure(!old.success(), || {
        "the key given only by the wiped configuration still logs in".to_string()
    })?;
    // A first boot again: the wizard answers (the test key, on the kernel
    // command line, is not a configuration).
    let mut wizard = String::new();
    wait_until(
        ctx.vm()?,
        "the first-boot wizard to answer after the reset",
        CMD_TIMEOUT,
        || {
            let out = ssh.run("curl -sf http://127.0.0.1/api/v1/info")?;
            let ok = out.success();
            wizard = out.stdout;
            Ok(ok)
        },
    )?;
    ensure(wizard.contains("hostname"), || {
        format!("the wizard's /api/v1/info after the reset: {wizard}")
    })?;
    ensure(
        !ssh.run("test -e /var/lib/maculaos/.configured")?.success(),
        || "the node is still marked configured after the reset".to_string(),
    )?;
    let failed = ssh.check("systemctl --failed --no-legend --plain")?;
    ensure(failed.trim().is_empty(), || {
        format!("units failed after the factory reset:\n{failed}")
    })?;
    reset_from_boot_menu(ctx, &ssh, &image)
}

/// The boot menu's factory reset entry (a node nobody can log into),
/// chosen through grubenv's `maculaos_next` as an operator would with the
/// arrow keys: the node's state goes, /var/lib/data stays, once.
fn reset_from_boot_menu(ctx: &mut Ctx, ssh: &Ssh, image: &Path) -> Result<()> {
    ssh.check(
        "echo state | sudo tee /var/lib/maculaos/state-after-reset >/dev/null && sync && \
         sudo mkdir -p /var/lib/maculaos/config.d && \
         printf 'maculaos:\\n  hostname: second-life\\n' | sudo tee /var/lib/maculaos/config.d/50-node.yaml >/dev/null",
    )?;
    let _ = ssh.run("sudo systemctl poweroff");
    let vm = ctx.vm()?;
    vm.wait_exit(BOOT_TIMEOUT)
        .context("waiting for the power-off before the boot menu's reset")?;
    disk::grubenv_set(image, &[("maculaos_next", "factory-reset")])?;
    vm.boot_again()?;
    let ssh = ctx.wait_up("after the boot menu's factory reset")?;
    let serial = ctx.vm()?.serial_text();
    ensure(
        serial.contains("factory reset asked for on the kernel command line")
            && serial.contains("FACTORY RESET of MACULA_DATA"),
        || "the console does not show the boot menu's factory reset".to_string(),
    )?;
    let gone = ssh.run("sudo test -e /var/lib/maculaos/state-after-reset || sudo test -e /var/lib/maculaos/config.d/50-node.yaml")?;
    ensure(!gone.success(), || {
        "the boot menu's reset left the node's state behind".to_string()
    })?;
    let data = ssh.check("sudo cat /var/lib/data/keep-me")?;
    ensure(data.trim() == "user-data", || {
        format!("the boot menu's reset did not keep /var/lib/data: {data:?}")
    })?;
    ensure(ssh.check("hostname")?.trim() != "second-life", || {
        "the wiped configuration's hostname is in effect after the boot menu's reset".to_string()
    })?;
    // Once only: GRUB cleared the choice before the kernel started.
    ctx.shutdown();
    let env = disk::grubenv_list(image)?;
    ensure(
        env.get("maculaos_next").is_none_or(|v| v.is_empty()),
        || format!("grubenv still asks for the boot menu's entry: {env:?}"),
    )
}
