//! Scenarios of GRUB's boot counting: a slot on trial that comes up healthy
//! becomes the good one; one that never does is abandoned after three tries.

use crate::harness::{ensure, info, Ctx};
use anyhow::{Context, Result};
use maculaos_vm::{disk, Firmware};
use std::io::{Seek, SeekFrom};
use std::path::Path;

/// Give slot B its boot files on the ESP (copies of slot A's) and, when
/// `with_root`, its root: the build's slot image written into MACULA_ROOT_B.
fn fill_slot_b(ctx: &Ctx, image: &Path, with_root: bool) -> Result<()> {
    let esp = disk::partition_by_label(image, maculaos_boot::LABEL_ESP)?;
    for f in ["vmlinuz", "initrd.img"] {
        let tmp = ctx.dir.join(f);
        disk::esp_get(image, esp.start_bytes, &format!("/slots/A/{f}"), &tmp)?;
        disk::esp_put(image, esp.start_bytes, &tmp, &format!("/slots/B/{f}"))?;
        std::fs::remove_file(&tmp)?;
    }
    let cfg = ctx.dir.join("slot.cfg");
    std::fs::write(
        &cfg,
        format!("set maculaos_B_version=\"{}\"\n", ctx.manifest.version),
    )?;
    disk::esp_put(image, esp.start_bytes, &cfg, "/slots/B/slot.cfg")?;
    if with_root {
        let part = disk::partition_by_label(image, "MACULA_ROOT_B")?;
        let mut src = std::fs::File::open(&ctx.slot_image)
            .with_context(|| format!("opening {}", ctx.slot_image.display()))?;
        let mut dst = std::fs::OpenOptions::new().write(true).open(image)?;
        dst.seek(SeekFrom::Start(part.start_bytes))?;
        std::io::copy(&mut src, &mut dst)?;
        dst.sync_all()?;
    }
    Ok(())
}

fn env_of(image: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    Ok(disk::grubenv_list(image)?)
}

fn var<'a>(env: &'a std::collections::BTreeMap<String, String>, k: &str) -> &'a str {
    env.get(k).map(String::as_str).unwrap_or("")
}

pub fn trial_good(ctx: &mut Ctx) -> Result<()> {
    let image = ctx.disk("")?;
    fill_slot_b(ctx, &image, true)?;
    disk::grubenv_set(&image, &[("maculaos_trial", "B"), ("maculaos_tries", "3")])?;
    let spec = ctx.spec(&image, Firmware::Bios);
    let ssh = ctx.boot(spec, "trial boot of slot B")?;
    let i = info(&ssh)?;
    ensure(i["slot"] == "B", || {
        format!("booted slot {}, not the trial slot B", i["slot"])
    })?;
    let st = ssh.check("sudo maculaos upgrade --status")?;
    let line_b = st.lines().find(|l| l.starts_with("B ")).unwrap_or("");
    ensure(
        line_b.contains("good") && line_b.matches("yes").count() == 2,
        || format!("slot B should be good, running and next; `upgrade --status` says:\n{st}"),
    )?;
    let log = ssh.check("sudo journalctl -b -o cat -u maculaos-mark-good.service")?;
    ensure(log.contains("it is now the good slot"), || {
        format!("maculaos-mark-good did not mark B good:\n{log}")
    })?;
    ctx.shutdown();
    // GRUB's own tool reads what the node wrote.
    let env = env_of(&image)?;
    ensure(
        var(&env, "maculaos_slot") == "B" && var(&env, "maculaos_trial").is_empty(),
        || format!("grub-editenv list after the trial: {env:?}"),
    )?;
    Ok(())
}

pub fn trial_rollback(ctx: &mut Ctx) -> Result<()> {
    let image = ctx.disk("")?;
    // Boot files but no root: every boot of B fails in maculaos-init.
    fill_slot_b(ctx, &image, false)?;
    disk::grubenv_set(&image, &[("maculaos_trial", "B"), ("maculaos_tries", "3")])?;
    let mut spec = ctx.spec(&image, Firmware::Bios);
    // The guest reboots by itself after each failed try, as a node would.
    spec.no_reboot = false;
    ctx.start(spec)?;
    let ssh = ctx
        .wait_up("after three failed tries")
        .context("the node did not come back on slot A")?;
    let i = info(&ssh)?;
    ensure(i["slot"] == "A", || {
        format!("running slot {} after the rollback, not A", i["slot"])
    })?;
    let vm = ctx.vm()?;
    let serial = vm.serial_text();
    let fails = serial.matches("maculaos-init: FAILED").count();
    ensure(fails == 3, || {
        format!("slot B should have been tried exactly 3 times; init failed {fails} times")
    })?;
    let st = ssh.check("sudo maculaos upgrade --status")?;
    ensure(
        st.contains("last rollback: slot B was not marked good after 3 boots; booting slot A")
            && st.lines().any(|l| l.starts_with("B ") && l.contains("bad")),
        || format!("`upgrade --status` after the rollback:\n{st}"),
    )?;
    ctx.shutdown();
    let env = env_of(&image)?;
    ensure(
        var(&env, "maculaos_slot") == "A"
            && var(&env, "maculaos_bad") == "B"
            && var(&env, "maculaos_trial").is_empty(),
        || format!("grub-editenv list after the rollback: {env:?}"),
    )?;
    Ok(())
}
