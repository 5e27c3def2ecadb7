//! Scenarios of GRUB's boot counting: a slot on trial that comes up healthy
//! becomes the good one; one that never does is abandoned after three tries.

use crate::harness::{ensure, info, Ctx, DirServer, BOOT_TIMEOUT};
use anyhow::{Context, Result};
use maculaos_vm::GUEST_SERVICE_ADDR;
use maculaos_vm::{disk, Firmware};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

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

/// `maculaos info` says the node runs `slot` with `version`.
fn expect_running(ssh: &maculaos_vm::Ssh, slot: &str, version: &str, when: &str) -> Result<()> {
    let i = info(ssh)?;
    ensure(i["slot"] == slot && i["version"] == version, || {
        format!(
            "{when}: running slot {} version {}, expected slot {slot} version {version}",
            i["slot"], i["version"]
        )
    })
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
    // A manual rollback to the slot that failed is refused, and says why.
    let back = ssh.run("sudo maculaos rollback")?;
    ensure(
        !back.success() && back.stderr.contains("slot B failed its trial"),
        || format!("`maculaos rollback` to the bad slot B: {back:?}"),
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

/// Bundles `upgrade --apply` must refuse, written into `dir`: (file name, a
/// piece of the error it must give). Their payloads are small: each is
/// refused before its payload could be written.
fn bad_bundles(ctx: &Ctx, dir: &Path, dev_key: &Path) -> Result<Vec<(String, &'static str)>> {
    use maculaos_bundle::{create, BundleMeta, Channel};
    std::fs::create_dir_all(dir)?;
    let payload = ctx.dir.join("small.squashfs");
    std::fs::write(&payload, vec![0x5a; 1 << 20])?;
    let meta = |v: &str| BundleMeta::new(v, Channel::Stable);
    let mut out = Vec::new();
    // Signed by a key the image does not trust.
    let (_, other_key) = maculaos_bundle::generate_keypair(&ctx.dir.join("keys"), "stranger")?;
    create(
        &payload,
        &dir.join("stranger.mos"),
        &meta("9.0.0"),
        &other_key,
    )?;
    out.push(("stranger.mos".into(), "which is not trusted here"));
    // Made for another architecture.
    let mut arm = meta("9.0.0");
    arm.arch = "arm64".into();
    create(&payload, &dir.join("arm64.mos"), &arm, dev_key)?;
    out.push(("arm64.mos".into(), "is for architecture arm64"));
    // Older than the running version.
    create(&payload, &dir.join("old.mos"), &meta("0.0.1"), dev_key)?;
    out.push(("old.mos".into(), "downgrade from"));
    // A manifest changed after signing (the version, same length).
    create(&payload, &dir.join("manifest.mos"), &meta("9.0.0"), dev_key)?;
    patch(&dir.join("manifest.mos"), b"\"9.0.0\"", b"\"9.0.1\"")?;
    out.push(("manifest.mos".into(), "does not verify with key"));
    // A payload changed after signing.
    create(&payload, &dir.join("payload.mos"), &meta("9.0.0"), dev_key)?;
    patch(&dir.join("payload.mos"), &[0x5a; 64], &[0x5b; 64])?;
    out.push(("payload.mos".into(), "payload sha256"));
    std::fs::remove_file(&payload)?;
    Ok(out)
}

/// Replace the first `from` in the file at `path` with `to` (same length).
fn patch(path: &Path, from: &[u8], to: &[u8]) -> Result<()> {
    let mut bytes = std::fs::read(path)?;
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .with_context(|| {
            format!(
                "{} does not contain what the scenario patches",
                path.display()
            )
        })?;
    bytes[at..at + to.len()].copy_from_slice(to);
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Apply's write pass beside a plain `dd` of the same payload into the same
/// partition (slot B, which then holds the same bytes again), both as MiB/s
/// in the report: numbers, not asserts.
fn write_rate_against_dd(ctx: &mut Ctx, ssh: &maculaos_vm::Ssh, apply_out: &str) -> Result<()> {
    // The last progress line of the write pass: "  writing 100%  174 / 174 MiB  6.2 MiB/s".
    let apply_rate = apply_out
        .lines()
        .find(|l| l.trim_start().starts_with("writing 100%"))
        .and_then(|l| l.split("MiB  ").nth(1))
        .and_then(|r| r.split(" MiB/s").next())
        .and_then(|r| r.trim().parse::<f64>().ok());
    let name = maculaos_bundle::bundle_file_name(V2, "amd64");
    let dd = ssh.check_timeout(
        &format!(
            "sudo sh -c 'tar -xOf /mnt/usb/{name} {payload} \
             | dd of=/dev/disk/by-partlabel/MACULA_ROOT_B bs=1M iflag=fullblock conv=fsync 2>&1'",
            payload = maculaos_bundle::PAYLOAD_ENTRY
        ),
        CMD_LONG,
    )?;
    // "182714368 bytes (183 MB, 174 MiB) copied, 20.1 s, 9.1 MB/s"
    let dd_rate = dd.lines().find(|l| l.contains(" copied, ")).and_then(|l| {
        let bytes: f64 = l.split_whitespace().next()?.parse().ok()?;
        let secs: f64 = l
            .split(" copied, ")
            .nth(1)?
            .split(" s")
            .next()?
            .parse()
            .ok()?;
        Some(bytes / secs / 1048576.0)
    });
    match (apply_rate, dd_rate) {
        (Some(a), Some(d)) => {
            // The report holds seconds: seconds per 100 MiB at each rate.
            ctx.record("apply write pass: seconds per 100 MiB", 100.0 / a);
            ctx.record("dd of the same payload: seconds per 100 MiB", 100.0 / d);
            eprintln!(
                "    apply writes at {a:.1} MiB/s, dd at {d:.1} MiB/s: ratio {:.2}",
                a / d
            );
        }
        _ => eprintln!("    note: no write rates to compare (apply: {apply_rate:?}, dd: {dd:?})"),
    }
    Ok(())
}

/// Version of the second build the update scenario installs.
pub(crate) const V2: &str = "0.2.0-scenario";

/// v1 → v2 from a "USB stick": a second disk holding a signed bundle.
/// The signed bundle of [`V2`]: the same inputs built under another version
/// (a real, newer slot image), signed with the dev key the image trusts.
/// Built once per set of build inputs and shared by the update scenarios.
pub(crate) fn v2_bundle(ctx: &Ctx) -> Result<PathBuf> {
    // The update scenarios run side by side: the first builds, the others
    // wait for it and take its bundle.
    static V2_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = V2_LOCK
        .lock()
        .map_err(|_| anyhow::anyhow!("a scenario panicked while building v2"))?;
    let all = ctx.dir.parent().unwrap_or(&ctx.dir).join("shared-v2");
    let key: String = ctx
        .manifest
        .inputs
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    let shared = all.join(key);
    let mos = shared.join(maculaos_bundle::bundle_file_name(V2, "amd64"));
    if mos.is_file() {
        return Ok(mos);
    }
    // Bundles of older inputs are of no use any more.
    let _ = std::fs::remove_dir_all(&all);
    std::fs::create_dir_all(&shared)?;
    let mut opts = ctx.build.clone();
    opts.version = V2.into();
    opts.out = shared.join("build");
    let v2 = crate::harness::build_image(&opts)?;
    let (_, dev_key) = maculaos_bundle::dev_keypair(&ctx.build.cache)?;
    let meta = maculaos_bundle::BundleMeta::new(V2, maculaos_bundle::Channel::Stable);
    maculaos_bundle::create(&v2.slot, &mos, &meta, &dev_key)?;
    let _ = std::fs::remove_dir_all(&opts.out);
    Ok(mos)
}

/// An ext4 "USB stick" image holding what is in `files` (then removed),
/// for the guest's second disk (/dev/vdb).
fn usb_stick(ctx: &Ctx, files: &Path) -> Result<PathBuf> {
    let mut size = 32u64 << 20;
    for e in walkdir::WalkDir::new(files) {
        size += e?.metadata()?.len();
    }
    let usb = ctx.dir.join("usb.img");
    std::fs::File::create(&usb)?.set_len(size + size / 8)?;
    maculaos_runner::Cmd::new("mkfs.ext4")
        .args(["-q", "-L", "UPDATES", "-d"])
        .arg(files)
        .arg(&usb)
        .run()?;
    std::fs::remove_dir_all(files)?;
    Ok(usb)
}

/// v1 with the v2 bundle (and whatever `more` adds) on a USB stick mounted
/// at /mnt/usb; returns the disk image and SSH.
fn boot_with_v2_stick(
    ctx: &mut Ctx,
    more: impl FnOnce(&Ctx, &Path) -> Result<()>,
) -> Result<(PathBuf, maculaos_vm::Ssh)> {
    let v2 = v2_bundle(ctx)?;
    let stick = ctx.dir.join("stick");
    std::fs::create_dir_all(&stick)?;
    link_or_copy(
        &v2,
        &stick.join(maculaos_bundle::bundle_file_name(V2, "amd64")),
    )?;
    more(ctx, &stick)?;
    let usb = usb_stick(ctx, &stick)?;
    let ssh = ctx.restore(0)?;
    let image = ctx.vm()?.spec().disk.clone();
    plug_stick(ctx, &ssh, &usb)?;
    Ok((image, ssh))
}

/// Plug `usb` into the running node (it becomes /dev/vdb, and stays
/// plugged in across reboots) and mount it at /mnt/usb.
fn plug_stick(ctx: &mut Ctx, ssh: &maculaos_vm::Ssh, usb: &Path) -> Result<()> {
    let vm = ctx.vm()?;
    vm.plug_drive(usb)?;
    // The stick's own label, not just any second disk.
    crate::harness::wait_until(vm, "the plugged-in stick (/dev/vdb)", CMD_PLUG, || {
        Ok(ssh
            .run("test \"$(readlink -f /dev/disk/by-label/UPDATES)\" = /dev/vdb")?
            .success())
    })?;
    ssh.check("sudo mount -o ro /dev/vdb /mnt/usb")?;
    Ok(())
}

/// Deadline for the guest to see a plugged-in disk.
const CMD_PLUG: std::time::Duration = std::time::Duration::from_secs(120);

/// Power cut while `--apply` writes the standby slot: the node boots the
/// running version as if nothing happened, slot B is empty (not half-tried),
/// and the next `--apply` writes it completely.
pub fn upgrade_power_cut(ctx: &mut Ctx) -> Result<()> {
    let (image, ssh) = boot_with_v2_stick(ctx, |_, _| Ok(()))?;
    ssh.check(
        "sudo systemd-run --unit=apply-cut --collect \
         sh -c 'maculaos upgrade --apply --from /mnt/usb/ > /run/apply.log 2>&1'",
    )?;
    let vm = ctx.vm()?;
    crate::harness::wait_until(vm, "--apply to write 30 % of slot B", CMD_LONG, || {
        Ok(writing_percent(&ssh.run("cat /run/apply.log")?.stdout) >= 30)
    })?;
    vm.quit()?;
    vm.wait_exit(BOOT_TIMEOUT)?;
    vm.boot_again()?;
    let ssh = ctx.wait_up("after the power cut")?;
    expect_running(&ssh, "A", &ctx.manifest.version, "after the power cut")?;
    let st = ssh.check("sudo maculaos upgrade --status")?;
    ensure(
        st.lines()
            .any(|l| l.starts_with("B ") && l.contains("empty"))
            && st.contains("last rollback: none"),
        || format!("after a cut --apply slot B should be empty, with no trial:\n{st}"),
    )?;
    ssh.check("sudo mount -o ro /dev/vdb /mnt/usb")?;
    let out = ssh.check_timeout("sudo maculaos upgrade --apply --from /mnt/usb/", CMD_LONG)?;
    ensure(out.contains(&format!("now holds {V2}")), || {
        format!("`upgrade --apply` after the power cut:\n{out}")
    })?;
    ctx.shutdown();
    let env = env_of(&image)?;
    ensure(
        var(&env, "maculaos_trial") == "B" && var(&env, "maculaos_tries") == "3",
        || format!("grub-editenv list after the second --apply: {env:?}"),
    )?;
    Ok(())
}

/// The highest percentage in `--apply`'s `  writing  NN%` lines (0 before
/// the first). Why not wait for the text "writing  30%": the CLI prints one
/// line per 5 % step with the percentage it reached, rounded, so with a
/// payload of another size the first line of that step may say 31 %.
fn writing_percent(log: &str) -> u32 {
    log.lines()
        .filter_map(|l| l.trim_start().strip_prefix("writing"))
        .filter_map(|rest| rest.trim_start().split('%').next()?.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// Link `src` at `dest` (same file system: no copy of 200 MiB), else copy.
pub(crate) fn link_or_copy(src: &Path, dest: &Path) -> Result<()> {
    if std::fs::hard_link(src, dest).is_err() {
        std::fs::copy(src, dest)
            .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    }
    Ok(())
}

pub fn upgrade_usb(ctx: &mut Ctx) -> Result<()> {
    let mut refused = Vec::new();
    let (image, ssh) = boot_with_v2_stick(ctx, |ctx, stick| {
        let (_, dev_key) = maculaos_bundle::dev_keypair(&ctx.build.cache)?;
        refused = bad_bundles(ctx, &stick.join("bad"), &dev_key)?;
        Ok(())
    })?;
    // Nothing to roll back to yet: slot B is empty.
    let back = ssh.run("sudo maculaos rollback")?;
    ensure(
        !back.success() && back.stderr.contains("slot B is empty"),
        || format!("`maculaos rollback` with an empty slot B: {back:?}"),
    )?;
    // Bundles that must be refused, each with its reason, before anything
    // is written: slot B's first 64 MiB, the ESP's slot B and GRUB's state
    // stay as they were.
    let untouched = "sudo head -c 64M /dev/disk/by-partlabel/MACULA_ROOT_B | sha256sum; \
                     sudo maculaos upgrade --status --json";
    let before = ssh.check(untouched)?;
    for (file, why) in &refused {
        let r = ssh.run(&format!(
            "sudo maculaos upgrade --apply --from /mnt/usb/bad/{file}"
        ))?;
        ensure(!r.success() && r.stderr.contains(why), || {
            format!("`upgrade --apply` of {file} should be refused with \"{why}\": {r:?}")
        })?;
    }
    let after = ssh.check(untouched)?;
    ensure(before == after, || {
        format!("refused bundles changed slot B or GRUB's state:\nbefore {before}\nafter {after}")
    })?;
    // A service deployed on v1 runs on v2, after the rollback to v1 and
    // forward again, with its volume's data: images, volumes and its
    // definition live on the data partition.
    crate::services::deploy_web(&ssh)?;
    let out = ssh
        .check_timeout("sudo maculaos upgrade --apply --from /mnt/usb/", CMD_LONG)
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
    write_rate_against_dd(ctx, &ssh, &out)?;
    let st = ssh.check("sudo maculaos upgrade --status")?;
    ensure(
        st.lines()
            .any(|l| l.starts_with("B ") && l.contains(V2) && l.contains("trying 0 of 3")),
        || format!("after --apply slot B should be on trial with {V2}:\n{st}"),
    )?;
    let started = std::time::Instant::now();
    let ssh = ctx.reboot(&ssh, "v2 on trial")?;
    expect_running(&ssh, "B", V2, "after the update")?;
    crate::services::expect_web(&ssh, "on v2")?;
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
    // Manual rollback to v1, and forward again to v2.
    let v1 = ctx.manifest.version.clone();
    let mut ssh = ssh;
    for (slot, version) in [("A", v1.as_str()), ("B", V2)] {
        let out = ssh.check("sudo maculaos rollback")?;
        ensure(
            out.contains(&format!("the next boot starts slot {slot}")),
            || format!("`maculaos rollback` towards slot {slot}:\n{out}"),
        )?;
        ssh = ctx.reboot(&ssh, &format!("rolled back to slot {slot}"))?;
        expect_running(&ssh, slot, version, "after `maculaos rollback`")?;
        crate::services::expect_web(&ssh, &format!("after the rollback to slot {slot}"))?;
        let st = ssh.check("sudo maculaos upgrade --status")?;
        ensure(
            st.contains("last rollback: rolled back by the operator"),
            || format!("`upgrade --status` does not show the manual rollback:\n{st}"),
        )?;
    }
    ctx.shutdown();
    let env = env_of(&image)?;
    ensure(
        var(&env, "maculaos_slot") == "B" && var(&env, "maculaos_trial").is_empty(),
        || format!("grub-editenv list after the update and two rollbacks: {env:?}"),
    )?;
    Ok(())
}

/// v1 → v2 from an HTTP update source set in the node's configuration: the
/// channel index names the bundle; the first download is cut half-way and
/// resumed with a Range request; `--apply` takes the downloaded bundle.
pub fn upgrade_http(ctx: &mut Ctx) -> Result<()> {
    let v2 = v2_bundle(ctx)?;
    let channel = ctx.dir.join("site/stable");
    std::fs::create_dir_all(&channel)?;
    let name = maculaos_bundle::bundle_file_name(V2, "amd64");
    link_or_copy(&v2, &channel.join(&name))?;
    maculaos_fetch::write_index(&channel, &channel.join(&name))?;
    let size = std::fs::metadata(&v2)?.len();
    let server = DirServer::serve(ctx.dir.join("site"), Some(size / 2))?;

    let port = server.port;
    let ssh = ctx.restore_with(0, |spec| spec.host_services.push((8080, port)))?;
    let image = ctx.vm()?.spec().disk.clone();
    // The source as an operator sets it: in the node's configuration.
    ssh.check(&format!(
        "sudo mkdir -p /var/lib/maculaos/config.d && printf 'maculaos:\\n  upgrade:\\n    url: http://{GUEST_SERVICE_ADDR}:8080/\\n' \
         | sudo tee /var/lib/maculaos/config.d/50-upgrade.yaml"
    ))?;
    let check = ssh.check("sudo maculaos upgrade --check")?;
    ensure(check.contains(&format!("{V2} is newer")), || {
        format!("`upgrade --check` should offer {V2}:\n{check}")
    })?;
    // The timer's check (auto_check on by default): it reports, applies nothing.
    ssh.check("systemctl is-active maculaos-upgrade-check.timer")?;
    ssh.check("sudo systemctl start maculaos-upgrade-check.service")?;
    let log = ssh.check("sudo journalctl -b -o cat -u maculaos-upgrade-check.service")?;
    ensure(
        log.contains(&format!("{V2} is available on channel stable")),
        || format!("maculaos-upgrade-check.service should report {V2}:\n{log}"),
    )?;
    let started = std::time::Instant::now();
    let dl = ssh
        .check_timeout("sudo maculaos upgrade --download", CMD_LONG)
        .context("maculaos upgrade --download")?;
    ctx.record(
        "download of the v2 bundle over HTTP, cut once and resumed",
        started.elapsed().as_secs_f64(),
    );
    ensure(
        dl.contains("is downloaded and its signature checked"),
        || format!("`upgrade --download`:\n{dl}"),
    )?;
    let requests = server.requests();
    let bundle_path = format!("/stable/{name}");
    ensure(
        requests.iter().any(|r| r == &format!("GET {bundle_path}"))
            && requests
                .iter()
                .any(|r| r.starts_with(&format!("GET {bundle_path} range="))),
        || format!("the cut download was not resumed with a Range request: {requests:?}"),
    )?;
    // The guide's automatic updates: on a schedule, applied (the bundle
    // downloaded above is used as it is) and rebooted into by what the
    // timer runs (started here rather than waited for).
    ssh.check(
        "printf 'updates:\\n  automatic: true\\n  schedule: \"04:00\"\\n  auto_reboot: true\\n' \
         | sudo tee /var/lib/maculaos/config.d/60-updates.yaml && sudo maculaos apply",
    )?;
    // Only the schedule: the image's times after boot are gone.
    let calendar = ssh.check(
        "systemctl show -p TimersCalendar -p TimersMonotonic maculaos-upgrade-check.timer",
    )?;
    ensure(
        calendar.contains("OnCalendar=*-*-* 04:00:00") && !calendar.contains("TimersMonotonic"),
        || format!("updates.schedule did not become the check's time: {calendar}"),
    )?;
    let ssh = ctx.reboot_by(
        &ssh,
        "sudo systemctl start --no-block maculaos-upgrade-check.service",
        "v2 on trial, rebooted into by updates.auto_reboot",
        "multi-user.target",
    )?;
    // Nothing else applied v2 or rebooted: the node runs it now.
    expect_running(&ssh, "B", V2, "after the update")?;
    let st = ssh.check("sudo maculaos upgrade --status")?;
    ensure(
        st.lines()
            .any(|l| l.starts_with("B ") && l.contains(V2) && l.contains("good")),
        || format!("v2 in slot B should be marked good:\n{st}"),
    )?;
    let check = ssh.check("sudo maculaos upgrade --check")?;
    ensure(check.contains("up to date"), || {
        format!("after the update `upgrade --check` should say up to date:\n{check}")
    })?;
    ctx.shutdown();
    let env = env_of(&image)?;
    ensure(
        var(&env, "maculaos_slot") == "B" && var(&env, "maculaos_trial").is_empty(),
        || format!("grub-editenv list after the update over HTTP: {env:?}"),
    )?;
    Ok(())
}

/// Deadline for a download or an apply of a whole slot image under TCG.
const CMD_LONG: std::time::Duration = std::time::Duration::from_secs(900);

/// Version of the unhealthy update ([`unhealthy_bundle`]).
pub(crate) const V3_UNHEALTHY: &str = "0.3.0-unhealthy";

/// A signed update that boots but fails its boot checks: v1's root with
/// sshd masked, as a bundle in `dir`.
pub(crate) fn unhealthy_bundle(ctx: &Ctx, dir: &Path) -> Result<PathBuf> {
    let root = ctx.dir.join("v3-root");
    maculaos_runner::Cmd::new("unsquashfs")
        .args(["-q", "-n", "-d"])
        .arg(&root)
        .arg(&ctx.slot_image)
        .run()?;
    let _ = std::fs::remove_file(root.join("etc/systemd/system/ssh.service"));
    std::os::unix::fs::symlink("/dev/null", root.join("etc/systemd/system/ssh.service"))?;
    let payload = ctx.dir.join("v3.squashfs");
    maculaos_runner::Cmd::new("mksquashfs")
        .arg(&root)
        .arg(&payload)
        .args([
            "-noappend",
            "-quiet",
            "-comp",
            "zstd",
            "-Xcompression-level",
            "3",
        ])
        .run()?;
    std::fs::remove_dir_all(&root)?;
    std::fs::create_dir_all(dir)?;
    let (_, dev_key) = maculaos_bundle::dev_keypair(&ctx.build.cache)?;
    let meta = maculaos_bundle::BundleMeta::new(V3_UNHEALTHY, maculaos_bundle::Channel::Stable);
    let mos = dir.join(maculaos_bundle::bundle_file_name(V3_UNHEALTHY, "amd64"));
    maculaos_bundle::create(&payload, &mos, &meta, &dev_key)?;
    std::fs::remove_file(&payload)?;
    Ok(mos)
}

#[cfg(test)]
mod tests {
    #[test]
    fn writing_percent_reads_the_progress_lines() {
        let log = "checking the bundle\n  writing   0%  0 / 183 MiB  0.0 MiB/s\n  \
                   writing  25%  46 / 183 MiB  9.1 MiB/s, 15s left\n  \
                   writing  31%  57 / 183 MiB  9.0 MiB/s, 14s left\n";
        assert_eq!(super::writing_percent(log), 31);
        assert_eq!(super::writing_percent("checking the bundle\n"), 0);
        assert_eq!(super::writing_percent("  writing 100%  1 / 1 MiB"), 100);
    }
}
