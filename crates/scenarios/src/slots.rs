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

/// Version of the second build the update scenario installs.
const V2: &str = "0.2.0-scenario";

/// v1 → v2 from a "USB stick": a second disk holding a signed bundle.
pub fn upgrade_usb(ctx: &mut Ctx) -> Result<()> {
    // The same inputs under another version: a real, newer slot image.
    let mut opts = ctx.build.clone();
    opts.version = V2.into();
    opts.out = ctx.dir.join("v2");
    let v2 = maculaos_image::build(&opts)?;
    let (_, dev_key) = maculaos_bundle::dev_keypair(&ctx.build.cache)?;
    let stick = ctx.dir.join("stick");
    std::fs::create_dir_all(&stick)?;
    let mos = stick.join(maculaos_bundle::bundle_file_name(V2, "amd64"));
    let meta = maculaos_bundle::BundleMeta::new(V2, maculaos_bundle::Channel::Stable);
    maculaos_bundle::create(&v2.slot, &mos, &meta, &dev_key)?;
    let _ = std::fs::remove_dir_all(&opts.out);
    let usb = ctx.dir.join("usb.img");
    let size = std::fs::metadata(&mos)?.len() + (64 << 20);
    std::fs::File::create(&usb)?.set_len(size)?;
    maculaos_runner::Cmd::new("mkfs.ext4")
        .args(["-q", "-L", "UPDATES", "-d"])
        .arg(&stick)
        .arg(&usb)
        .run()?;
    std::fs::remove_dir_all(&stick)?;

    let image = ctx.disk("")?;
    let mut spec = ctx.spec(&image, Firmware::Bios);
    spec.extra_drives.push(usb);
    let ssh = ctx.boot(spec, "v1")?;
    ssh.check("sudo mkdir -p /mnt/usb && sudo mount -o ro /dev/vdb /mnt/usb")?;
    let out = ssh
        .check_timeout(
            "sudo maculaos upgrade --apply --from /mnt/usb/",
            std::time::Duration::from_secs(900),
        )
        .context("maculaos upgrade --apply")?;
    ensure(out.contains(&format!("now holds {V2}")), || {
        format!("`upgrade --apply` did not finish:\n{out}")
    })?;
    if let Some(secs) = out
        .split(" MiB in ")
        .nth(1)
        .and_then(|r| r.split(" s,").next())
        .and_then(|s| s.trim().parse::<f64>().ok())
    {
        ctx.record("apply: write + read back of the slot image", secs);
    }
    let st = ssh.check("sudo maculaos upgrade --status")?;
    ensure(
        st.lines()
            .any(|l| l.starts_with("B ") && l.contains(V2) && l.contains("trying 0 of 3")),
        || format!("after --apply slot B should be on trial with {V2}:\n{st}"),
    )?;
    let started = std::time::Instant::now();
    let ssh = ctx.reboot(&ssh, "v2 on trial")?;
    let i = info(&ssh)?;
    ensure(i["slot"] == "B" && i["version"] == V2, || {
        format!(
            "after the update: slot {} version {}",
            i["slot"], i["version"]
        )
    })?;
    let st = ssh.check("sudo maculaos upgrade --status")?;
    ensure(
        st.lines()
            .any(|l| l.starts_with("B ") && l.contains("good")),
        || format!("v2 was not marked good:\n{st}"),
    )?;
    ctx.record(
        "reboot after --apply until v2 is up and marked good",
        started.elapsed().as_secs_f64(),
    );
    // Applying what already runs is refused, and says why.
    let again = ssh.run("sudo mount -o ro /dev/vdb /mnt/usb 2>/dev/null; sudo maculaos upgrade --apply --from /mnt/usb/")?;
    ensure(
        !again.success() && again.stderr.contains("already running"),
        || format!("re-applying the running version: {again:?}"),
    )?;
    ctx.shutdown();
    let env = env_of(&image)?;
    ensure(
        var(&env, "maculaos_slot") == "B" && var(&env, "maculaos_trial").is_empty(),
        || format!("grub-editenv list after the update: {env:?}"),
    )?;
    Ok(())
}
