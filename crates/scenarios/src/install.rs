//! Scenarios of the live ISO and the installer: the ISO boots live from a
//! CD (SeaBIOS) and from a USB stick (OVMF) and writes nothing to the
//! disks it finds; the installer refuses what it must and installs
//! unattended from a NoCloud seed onto a disk that then boots alone.

use crate::config::nocloud_seed;
use crate::harness::{ensure, info, Ctx, BOOT_TIMEOUT, CMD_TIMEOUT};
use anyhow::{Context, Result};
use maculaos_runner::{shell_quote, Cmd};
use maculaos_vm::{disk, Firmware, Ssh};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A sparse file of `size` bytes: a blank disk.
fn blank_disk(dir: &Path, name: &str, size: u64) -> Result<PathBuf> {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
    f.set_len(size)?;
    Ok(p)
}

/// Nothing was ever written to a sparse blank disk: it still has no blocks.
fn untouched(disk: &Path) -> Result<()> {
    let blocks = std::fs::metadata(disk)?.blocks();
    ensure(blocks == 0, || {
        format!(
            "the blank disk {} was written to ({} KiB allocated)",
            disk.display(),
            blocks / 2
        )
    })
}

/// A NoCloud seed that gives `macula` the test key (the live system's
/// only configuration source besides the kernel command line).
fn key_seed(ctx: &Ctx, extra: &str) -> Result<PathBuf> {
    nocloud_seed(
        &ctx.dir,
        &format!(
            "#cloud-config\nssh_authorized_keys:\n  - {}\n{extra}",
            ctx.pubkey()
        ),
        "instance-id: live-1\n",
    )
}

/// What every live boot must show.
fn check_live(ssh: &Ssh, firmware: Firmware, medium: &str) -> Result<()> {
    let i = info(ssh)?;
    ensure(i["mode"] == "live", || {
        format!("maculaos info: mode is {}, expected live\n{i:#}", i["mode"])
    })?;
    ensure(i["firmware"] == firmware.to_string(), || {
        format!(
            "maculaos info: firmware is {}, expected {firmware}",
            i["firmware"]
        )
    })?;
    ensure(
        i["root"]["fstype"] == "squashfs" && i["root"]["read_only"] == true,
        || format!("the live root is not a read-only squashfs: {}", i["root"]),
    )?;
    let var = ssh.check("findmnt -n -o FSTYPE /var")?;
    ensure(var.trim() == "tmpfs", || {
        format!("/var is on {}, expected tmpfs in live mode", var.trim())
    })?;
    let src = ssh.check("findmnt -n -o SOURCE /run/maculaos/medium")?;
    ensure(src.trim() == medium, || {
        format!("the live medium is {}, expected {medium}", src.trim())
    })?;
    let failed = ssh.check("systemctl --failed --no-legend --plain")?;
    ensure(failed.trim().is_empty(), || {
        format!("units failed during the live boot:\n{failed}")
    })?;
    // Slots and updates belong to installed disks: a clear refusal.
    let up = ssh.run("maculaos upgrade --status")?;
    ensure(!up.success() && up.stderr.contains("live mode"), || {
        format!("`maculaos upgrade --status` in live mode did not refuse clearly:\n{up:?}")
    })?;
    // Writes go to memory.
    ssh.check("sudo touch /var/lib/live-write /etc/live-write")?;
    Ok(())
}

/// A disk with a GPT and a partition holding data: what the installer
/// must not erase without `force`.
fn used_disk(dir: &Path) -> Result<PathBuf> {
    let p = blank_disk(dir, "used.img", 6 << 30)?;
    Cmd::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&p)
        .stdin("label: gpt\nsize=64MiB, type=L, name=precious\ntype=L\n")
        .quiet()
        .run()?;
    let mut f = std::fs::OpenOptions::new().write(true).open(&p)?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(1 << 20))?;
    std::io::Write::write_all(&mut f, b"data that must survive a refused install")?;
    Ok(p)
}

fn sha256(path: &Path) -> Result<String> {
    let out = Cmd::new("sha256sum").arg(path).quiet().output()?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// The hostname given to the interactive installer.
const INTERACTIVE_HOST: &str = "asked-node";

/// SeaBIOS, the ISO in a CD drive, a blank disk and a used one attached:
/// live mode, then what the installer refuses (and `--dry-run`), then the
/// interactive installer on the blank disk.
pub fn live_bios(ctx: &mut Ctx) -> Result<()> {
    let blank = blank_disk(&ctx.dir, "blank.img", 8 << 30)?;
    let used = used_disk(&ctx.dir)?;
    let used_before = sha256(&used)?;
    let small = blank_disk(&ctx.dir, "small.img", 1 << 30)?;
    let seed = key_seed(ctx, "")?;
    let mut spec = ctx.spec(&blank, Firmware::Bios);
    spec.cdrom = Some(ctx.iso.clone());
    spec.extra_drives = vec![used.clone(), small, seed];
    let ssh = ctx.boot(spec, "live ISO from CD (bios)")?;
    check_live(&ssh, Firmware::Bios, "/dev/sr0")?;

    let list = ssh.check("sudo maculaos install --list")?;
    ensure(
        list.contains("/dev/vda") && list.contains("/dev/vdb"),
        || format!("`maculaos install --list` does not show both disks:\n{list}"),
    )?;
    // A disk with partitions, without --force: refused, says why.
    let r = ssh.run_timeout("sudo maculaos install --device /dev/vdb --yes", CMD_TIMEOUT)?;
    ensure(
        !r.success() && r.stderr.contains("not blank") && r.stderr.contains("--force"),
        || format!("installing on a used disk without --force was not refused clearly:\n{r:?}"),
    )?;
    // The medium itself, and a too-small target.
    let r = ssh.run_timeout(
        "sudo maculaos install --device /dev/sr0 --yes --force",
        CMD_TIMEOUT,
    )?;
    ensure(!r.success(), || {
        format!("installing on the live medium was not refused:\n{r:?}")
    })?;
    let r = ssh.run_timeout(
        "sudo maculaos install --device /dev/vdc --yes --force --dry-run",
        CMD_TIMEOUT,
    )?;
    ensure(!r.success() && r.stderr.contains("small"), || {
        format!("a 1 GiB disk was not refused as too small:\n{r:?}")
    })?;
    // The plan for the blank disk, touching nothing.
    let plan = ssh.check_timeout(
        "sudo maculaos install --device /dev/vda --dry-run --yes",
        CMD_TIMEOUT,
    )?;
    ensure(
        plan.contains("MACULA_ROOT_A") && plan.contains("nothing was written"),
        || format!("`install --dry-run` printed no plan:\n{plan}"),
    )?;
    // Nothing was written by the live system: checked now, while it runs
    // (QEMU writes through to the file), before the interactive install
    // below writes the blank disk.
    untouched(&blank)?;

    // The interactive installer, answered on its standard input: the blank
    // disk by its path, hostname, key, bootstrap yes, gateway no, realm, no
    // k3s, then the typed confirmation.
    let answers = format!(
        "/dev/vda\n{INTERACTIVE_HOST}\n{}\ny\nn\nio.example\nnone\n/dev/vda\n",
        ctx.pubkey()
    );
    let out = ssh.run_timeout(
        &format!(
            "printf '%s' {} | sudo maculaos install",
            shell_quote(&answers)
        ),
        CMD_TIMEOUT,
    )?;
    ensure(
        out.success()
            && out.stdout.contains("Install MaculaOS on /dev/vda")
            && out.stdout.contains("installed MaculaOS"),
        || format!("the interactive install on /dev/vda did not finish:\n{out:?}"),
    )?;
    let stored = ssh.check(
        "sudo mkdir -p /run/check && sudo mount -o ro /dev/vda5 /run/check && \
         sudo cat /run/check/lib/maculaos/config.yaml; sudo umount /run/check",
    )?;
    ensure(
        stored.contains(INTERACTIVE_HOST)
            && stored.contains("io.example")
            && stored.contains("bootstrap"),
        || format!("the interactive answers are not in the stored config:\n{stored}"),
    )?;
    ctx.shutdown();
    let used_after = sha256(&used)?;
    ensure(used_before == used_after, || {
        "the used disk changed although the install was refused".to_string()
    })
}

/// The ISO's unattended install: a NoCloud seed names install.device; the
/// installer writes the disk and reboots; the disk then boots alone, under
/// SeaBIOS and OVMF, with the hostname and SSH key of the install config.
pub fn install_unattended(ctx: &mut Ctx) -> Result<()> {
    const HOSTNAME: &str = "installed-node";
    let target = blank_disk(&ctx.dir, "target.img", 8 << 30)?;
    let seed = key_seed(
        ctx,
        &format!(
            "hostname: {HOSTNAME}\nmaculaos:\n  install:\n    device: /dev/vda\n    reboot: true\n"
        ),
    )?;
    let mut spec = ctx.spec(&target, Firmware::Bios);
    spec.cdrom = Some(ctx.iso.clone());
    spec.extra_drives = vec![seed];
    // Its own directory: the installed disk's boots must not overwrite the
    // installer's serial log.
    spec.run_dir = ctx.dir.join("vm-installer");
    let started = Instant::now();
    let vm = ctx.start(spec)?;
    // The installer reboots when done; -no-reboot makes that QEMU's exit.
    vm.wait_exit(BOOT_TIMEOUT).with_context(|| {
        format!(
            "waiting for the unattended install to finish and reboot\n{}",
            vm.serial_tail(40)
        )
    })?;
    let log = std::fs::read_to_string(vm.serial_log_path()).unwrap_or_default();
    let tail = vm.serial_tail(40);
    let line = log
        .lines()
        .find(|l| l.contains("installed MaculaOS"))
        .with_context(|| format!("the installer never said it was done:\n{tail}"))?
        .to_string();
    let wall = started.elapsed().as_secs_f64();
    ctx.record("ISO boot + unattended install to reboot (wall)", wall);
    if let Some(secs) = line
        .split(" in ")
        .last()
        .and_then(|t| t.trim().trim_end_matches(" s").parse::<f64>().ok())
    {
        ctx.record("maculaos install (write + verify)", secs);
    }
    ctx.shutdown();

    let env = disk::grubenv_list(&target)?;
    ensure(
        env.get("maculaos_slot").map(String::as_str) == Some("A"),
        || format!("the installed disk's grubenv does not boot slot A: {env:?}"),
    )?;
    for fw in [Firmware::Bios, Firmware::Uefi] {
        // The disk alone: no ISO, no seed, no kernel parameters from the test.
        let ssh = ctx.boot(ctx.spec(&target, fw), &format!("installed disk ({fw})"))?;
        let i = info(&ssh)?;
        ensure(i["mode"] == "disk" && i["slot"] == "A", || {
            format!("the installed disk did not boot slot A in disk mode:\n{i:#}")
        })?;
        ensure(i["firmware"] == fw.to_string(), || {
            format!("firmware is {}, expected {fw}", i["firmware"])
        })?;
        let host = ssh.check("hostname")?;
        ensure(host.trim() == HOSTNAME, || {
            format!(
                "hostname is {}, expected {HOSTNAME} from the install config",
                host.trim()
            )
        })?;
        let stored = ssh.check("sudo cat /var/lib/maculaos/config.yaml")?;
        ensure(
            !stored.contains("install:") && !stored.contains("/dev/vda"),
            || format!("the stored config still has the install section:\n{stored}"),
        )?;
        let failed = ssh.check("systemctl --failed --no-legend --plain")?;
        ensure(failed.trim().is_empty(), || {
            format!("units failed on the installed disk:\n{failed}")
        })?;
        ctx.shutdown();
    }
    Ok(())
}

/// OVMF, the ISO written to a "USB stick" (the hybrid image as a disk).
pub fn live_uefi(ctx: &mut Ctx) -> Result<()> {
    let stick = ctx.dir.join("stick.img");
    std::fs::copy(&ctx.iso, &stick)
        .with_context(|| format!("copying {} to {}", ctx.iso.display(), stick.display()))?;
    let blank = blank_disk(&ctx.dir, "blank.img", 4 << 30)?;
    let seed = key_seed(ctx, "")?;
    let mut spec = ctx.spec(&stick, Firmware::Uefi);
    spec.extra_drives = vec![blank.clone(), seed];
    let ssh = ctx.boot(spec, "live ISO from USB stick (uefi)")?;
    check_live(&ssh, Firmware::Uefi, "/dev/vda")?;
    ctx.shutdown();
    untouched(&blank)
}

/// A disk with one GPT partition named `MACULA_PERSIST`; `content` (if any)
/// is written at the partition's start.
fn persist_disk(dir: &Path, name: &str, content: Option<&[u8]>) -> Result<PathBuf> {
    let p = blank_disk(dir, name, 1 << 30)?;
    Cmd::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&p)
        .stdin("label: gpt\nstart=1MiB, type=L, name=MACULA_PERSIST\n")
        .quiet()
        .run()?;
    if let Some(bytes) = content {
        let mut f = std::fs::OpenOptions::new().write(true).open(&p)?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(1 << 20))?;
        std::io::Write::write_all(&mut f, bytes)?;
    }
    Ok(p)
}

/// Start the live ISO (in a CD drive, SeaBIOS) and pick the boot menu's
/// "live, persistent" entry by its hotkey, then wait until it is up.
fn boot_persistent(ctx: &mut Ctx, label: &str) -> Result<Ssh> {
    let vm = ctx.vm()?;
    vm.wait_for_serial("(live, persistent)", BOOT_TIMEOUT)
        .context("waiting for the ISO's boot menu")?;
    vm.send_serial("p")?;
    ctx.wait_up(label)
}

/// The live ISO with persistence: a blank `MACULA_PERSIST` partition is
/// formatted on first use; what is written under /var, /home and /root,
/// and the node's identity, survive a reboot; a `MACULA_PERSIST` partition
/// holding something else is refused, left byte-identical, and /var stays
/// in memory.
pub fn live_persist(ctx: &mut Ctx) -> Result<()> {
    let persist = persist_disk(&ctx.dir, "persist.img", None)?;
    let seed = key_seed(ctx, "")?;
    // The blank disk is the first virtio disk, the seed the second.
    let mut spec = ctx.spec(&persist, Firmware::Bios);
    spec.cdrom = Some(ctx.iso.clone());
    spec.extra_drives = vec![seed.clone()];
    ctx.start(spec.clone())?;
    let ssh = boot_persistent(ctx, "live ISO, persistent (first use)")?;
    let i = info(&ssh)?;
    ensure(
        i["mode"] == "live" && i["data"]["device"] == "/dev/vda1",
        || format!("maculaos info: expected live mode with /var on /dev/vda1\n{i:#}"),
    )?;
    let var = ssh.check("findmnt -n -o SOURCE,FSTYPE /var")?;
    ensure(var.split_whitespace().eq(["/dev/vda1", "ext4"]), || {
        format!("/var is on {}, expected /dev/vda1 ext4", var.trim())
    })?;
    let label = ssh.check("sudo blkid -s LABEL -o value /dev/vda1")?;
    ensure(label.trim() == "MACULA_PERSIST", || {
        format!(
            "/dev/vda1 has the label {:?}, expected MACULA_PERSIST",
            label.trim()
        )
    })?;
    let boot = ssh.check("cat /run/maculaos/boot.json")?;
    ensure(boot.contains("\"data_formatted\": true"), || {
        format!("init did not format the blank MACULA_PERSIST partition:\n{boot}")
    })?;
    let failed = ssh.check("systemctl --failed --no-legend --plain")?;
    ensure(failed.trim().is_empty(), || {
        format!("units failed during the persistent live boot:\n{failed}")
    })?;
    const MARKS: &str = "/var/lib/live-mark /root/live-mark /home/macula/live-mark";
    ssh.check(&format!(
        "for f in {MARKS}; do echo kept-$f | sudo tee $f >/dev/null; done; sync"
    ))?;
    let identity = "sudo cat /etc/machine-id /var/lib/maculaos/ssh/ssh_host_ed25519_key.pub";
    let before = ssh.check(identity)?;

    // Reboot from inside: the same machine, the same entry.
    let _ = ssh.run("sudo systemctl reboot");
    let vm = ctx.vm()?;
    vm.wait_exit(BOOT_TIMEOUT)
        .context("waiting for the live system to reboot")?;
    vm.boot_again()?;
    let ssh = boot_persistent(ctx, "live ISO, persistent (second boot)")?;
    let boot = ssh.check("cat /run/maculaos/boot.json")?;
    ensure(boot.contains("\"data_formatted\": false"), || {
        format!("the second boot formatted MACULA_PERSIST again:\n{boot}")
    })?;
    let kept = ssh.check(&format!("sudo cat {MARKS}"))?;
    for f in MARKS.split(' ') {
        ensure(kept.contains(&format!("kept-{f}")), || {
            format!("{f} did not survive the reboot; read back:\n{kept}")
        })?;
    }
    let after = ssh.check(identity)?;
    ensure(before == after, || {
        format!(
            "the node's identity changed across the reboot:\nbefore:\n{before}\nafter:\n{after}"
        )
    })?;
    ctx.shutdown();

    // Someone else's data under the same name: refused, not formatted.
    let foreign = persist_disk(
        &ctx.dir,
        "foreign.img",
        Some(b"someone's data, not a filesystem MaculaOS made"),
    )?;
    let foreign_before = sha256(&foreign)?;
    let mut spec = ctx.spec(&foreign, Firmware::Bios);
    spec.cdrom = Some(ctx.iso.clone());
    spec.extra_drives = vec![seed];
    spec.run_dir = ctx.dir.join("vm-foreign");
    ctx.start(spec)?;
    let ssh = boot_persistent(ctx, "live ISO, persistent (foreign partition)")?;
    let var = ssh.check("findmnt -n -o FSTYPE /var")?;
    ensure(var.trim() == "tmpfs", || {
        format!(
            "/var is on {}, expected tmpfs beside a foreign MACULA_PERSIST",
            var.trim()
        )
    })?;
    let serial = ctx.vm()?.serial_text();
    ensure(
        serial.contains("MACULA_PERSIST (/dev/vda1)") && serial.contains("refusing to format"),
        || "the console does not say why the foreign MACULA_PERSIST was refused".to_string(),
    )?;
    ctx.shutdown();
    ensure(sha256(&foreign)? == foreign_before, || {
        "the foreign MACULA_PERSIST disk changed".to_string()
    })
}
