//! Recovery mode: entered once with `maculaos recovery`, reachable over SSH
//! with root shells on the consoles and no workloads, the data partition
//! left unmounted; `maculaos repair` checks it, rebuilds a broken GRUB
//! environment and checks the slots; the next boot is normal, data intact.

use crate::harness::{ensure, info, wait_until, Ctx, BOOT_TIMEOUT, CMD_TIMEOUT};
use anyhow::{Context, Result};
use maculaos_vm::{disk, Firmware};

const TARGET: &str = "maculaos-recovery.target";

pub fn recovery(ctx: &mut Ctx) -> Result<()> {
    let image = ctx.disk("")?;
    let ssh = ctx.boot(ctx.spec(&image, Firmware::Bios), "first boot")?;
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
    let _ = ssh.run("sudo maculaos recovery --reboot");
    let vm = ctx.vm()?;
    vm.wait_exit(BOOT_TIMEOUT)
        .context("waiting for the reboot into recovery mode")?;
    vm.boot_again()?;
    let ssh = ctx.wait_up_for("recovery mode", TARGET)?;
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
    let _ = ssh.run("sudo systemctl reboot");
    let vm = ctx.vm()?;
    vm.wait_exit(BOOT_TIMEOUT)
        .context("waiting for the reboot out of recovery mode")?;
    vm.boot_again()?;
    let ssh = ctx.wait_up("normal boot after recovery")?;
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
