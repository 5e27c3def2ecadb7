//! Carrying out a [`Plan`]: partition the disk, install GRUB for BIOS and
//! UEFI, fill the ESP, write and verify slot A, make the data partition and
//! store the node's configuration on it.
//!
//! The order makes a half-done install harmless: nothing can boot the disk
//! until the ESP holds GRUB and slot A's kernel, and the kernel is written
//! only after GRUB's files; the slot image is verified by reading it back.

use crate::error::{io_step, InstallError, StepError};
use crate::payload::Payload;
use crate::plan::Plan;
use crate::report::{Pass, Report};
use maculaos_boot::bios::{patch_boot_img, patch_core_img};
use maculaos_boot::grubenv;
use maculaos_boot::layout::{Part, SECTOR};
use maculaos_boot::media::PayloadFile;
use maculaos_boot::{Slot, LABEL_BIOS, LABEL_DATA, LABEL_ESP, STATE_DIR};
use maculaos_runner::{have, Cmd, Mount};
use sha2::{Digest, Sha256};
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the new ESP and data partition are mounted while they are filled
/// (`<base>/install-esp.<pid>`, `<base>/install-data.<pid>`).
pub const MOUNT_BASE: &str = "/run/maculaos";
/// How long the kernel gets to show the new partitions.
pub const PARTITION_WAIT: Duration = Duration::from_secs(30);

/// Names of a slot's boot files in `slots/<slot>/` on the ESP (the same as
/// the image builder's and the updater's).
const KERNEL: &str = "vmlinuz";
const INITRD: &str = "initrd.img";
const SLOT_CFG: &str = "slot.cfg";
/// Where the MBR's boot code ends (the disk signature and the partition
/// table follow and are kept as sfdisk wrote them).
const MBR_CODE_LEN: usize = 440;
const CHUNK: usize = 4 << 20;

/// The node's `/var/lib/maculaos/config.yaml` as a path inside the data
/// partition, which is mounted on `/var`: `lib/maculaos/config.yaml`.
pub fn config_on_data() -> PathBuf {
    Path::new(STATE_DIR)
        .strip_prefix("/var")
        .unwrap_or(Path::new("lib/maculaos"))
        .join("config.yaml")
}

/// One step of [`write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `wipefs --all` on the disk (only with force).
    Wipe,
    /// `sfdisk`, then wait for the kernel to show the partitions.
    Partition,
    /// GRUB's boot code into the MBR, its core image into `MACULA_BIOS`.
    Bios,
    /// FAT32 on `MACULA_ESP`: GRUB for UEFI, grub.cfg, grubenv, slot A's boot files.
    Esp,
    /// The slot image into `MACULA_ROOT_A`, read back and compared.
    Slot,
    /// ext4 on `MACULA_DATA`, with the node's config.yaml.
    Data,
    /// Everything flushed to the disk.
    Sync,
}

/// The steps of installing `plan`, in order.
pub fn steps(plan: &Plan) -> Vec<Step> {
    let mut s = Vec::new();
    if plan.force {
        s.push(Step::Wipe);
    }
    s.extend([
        Step::Partition,
        Step::Bios,
        Step::Esp,
        Step::Slot,
        Step::Data,
        Step::Sync,
    ]);
    s
}

impl Step {
    /// The step line's text: `partitioning /dev/vda (GPT: …)`.
    pub fn text(self, plan: &Plan, version: &str) -> String {
        let dev = plan.device();
        let part = |label: &str| plan.part_path(label).unwrap_or_default();
        match self {
            Step::Wipe => format!("erasing the partition table and signatures on {dev}"),
            Step::Partition => {
                let labels: Vec<&str> = plan.parts().iter().map(|p| p.label).collect();
                format!("partitioning {dev} (GPT: {})", labels.join(", "))
            }
            Step::Bios => format!(
                "installing GRUB for BIOS (boot code in the MBR, core image on {})",
                part(LABEL_BIOS)
            ),
            Step::Esp => format!(
                "making the EFI system partition {} (GRUB, kernel, initrd)",
                part(LABEL_ESP)
            ),
            Step::Slot => format!(
                "writing MaculaOS {version} into slot A ({})",
                part(Slot::A.label())
            ),
            Step::Data => format!(
                "making the data partition {} and storing the configuration",
                part(LABEL_DATA)
            ),
            Step::Sync => format!("flushing everything to {dev}"),
        }
    }
}

/// Where [`write`] mounts things and how long it waits.
#[derive(Debug, Clone)]
pub struct Options {
    pub mount_base: PathBuf,
    pub partition_wait: Duration,
    /// `/sys`, where the kernel shows the new partitions.
    pub sysfs: PathBuf,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            mount_base: PathBuf::from(MOUNT_BASE),
            partition_wait: PARTITION_WAIT,
            sysfs: PathBuf::from("/sys"),
        }
    }
}

/// What [`write`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    pub version: String,
    pub device: String,
    pub seconds: f64,
}

impl Installed {
    /// `installed MaculaOS 1.2.3 on /dev/vda in 42 s`
    pub fn message(&self) -> String {
        format!(
            "installed MaculaOS {} on {} in {:.0} s",
            self.version, self.device, self.seconds
        )
    }
}

/// Install `payload` on the disk of `plan` and store `config_yaml` as the
/// node's `/var/lib/maculaos/config.yaml`. `config_yaml` is checked by the
/// config crate's parser first: nothing is written when it has errors.
pub fn write(
    plan: &Plan,
    payload: &Payload,
    config_yaml: &str,
    opts: &Options,
    report: &mut dyn FnMut(Report),
) -> Result<Installed, InstallError> {
    crate::node_config::check_text("the configuration to store", config_yaml)?;
    let slot_size = plan.part(Slot::A.label()).map(|p| p.size).unwrap_or(0);
    if payload.manifest.slot.size > slot_size {
        return Err(crate::plan::Refusal::PayloadTooBig {
            size: payload.manifest.slot.size,
            slot_size,
        }
        .into());
    }
    let started = Instant::now();
    let version = payload.version().to_string();
    let all = steps(plan);
    let of = all.len();
    for (i, step) in all.into_iter().enumerate() {
        let text = step.text(plan, &version);
        report(Report::Step {
            number: i + 1,
            of,
            text: text.clone(),
        });
        run_step(step, plan, payload, config_yaml, opts, report).map_err(|source| {
            InstallError::Step {
                device: plan.device().to_string(),
                number: i + 1,
                of,
                step: text,
                source: Box::new(source),
            }
        })?;
    }
    Ok(Installed {
        version,
        device: plan.device().to_string(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn run_step(
    step: Step,
    plan: &Plan,
    payload: &Payload,
    config_yaml: &str,
    opts: &Options,
    report: &mut dyn FnMut(Report),
) -> Result<(), StepError> {
    let part = |label: &str| {
        plan.part_path(label)
            .ok_or_else(|| StepError::Other(format!("the layout has no {label} partition")))
    };
    match step {
        Step::Wipe => Cmd::new("wipefs")
            .hint("apt-get install util-linux")
            .arg("--all")
            .arg(plan.device())
            .quiet()
            .run()?,
        Step::Partition => partition(plan, opts)?,
        Step::Bios => bios(plan, payload)?,
        Step::Esp => {
            let dev = part(LABEL_ESP)?;
            Cmd::new("mkfs.vfat")
                .hint("apt-get install dosfstools")
                .args(["-F", "32", "-n", LABEL_ESP])
                .arg(&dev)
                .quiet()
                .run()?;
            let m = Mount::new(&dev, &mount_dir(opts, "esp"), Some("vfat"), None)?;
            fill_esp(m.dir(), payload)?;
            m.unmount()?;
        }
        Step::Slot => {
            let dev = part(Slot::A.label())?;
            let slot = &payload.manifest.slot;
            write_slot(&payload.path(slot), slot, Path::new(&dev), report)?;
        }
        Step::Data => {
            let dev = part(LABEL_DATA)?;
            Cmd::new("mkfs.ext4")
                .hint("apt-get install e2fsprogs")
                .args(["-F", "-q", "-L", LABEL_DATA])
                .args(["-E", "lazy_itable_init=1,lazy_journal_init=1"])
                .arg(&dev)
                .quiet()
                .run()?;
            let m = Mount::new(&dev, &mount_dir(opts, "data"), Some("ext4"), None)?;
            store_config(m.dir(), config_yaml)?;
            m.unmount()?;
        }
        Step::Sync => nix::unistd::sync(),
    }
    Ok(())
}

fn mount_dir(opts: &Options, what: &str) -> PathBuf {
    opts.mount_base
        .join(format!("install-{what}.{}", std::process::id()))
}

/// `sfdisk`, then make sure the kernel shows the new partitions before
/// anything is written to them.
fn partition(plan: &Plan, opts: &Options) -> Result<(), StepError> {
    let dev = plan.device();
    // --wipe-partitions: a new partition where an old one was would
    // otherwise show the old filesystem (say, a former slot B's squashfs).
    Cmd::new("sfdisk")
        .hint("apt-get install fdisk")
        .args(["--quiet", "--wipe", "always", "--wipe-partitions", "always"])
        .arg(dev)
        .stdin(plan.sfdisk_script())
        .quiet()
        .run()?;
    // sfdisk asks the kernel to re-read the table; partx updates it one
    // partition at a time where that failed. Either may have nothing to do.
    if have("partx") {
        let _ = Cmd::new("partx").arg("--update").arg(dev).quiet().run();
    }
    let deadline = Instant::now() + opts.partition_wait;
    loop {
        let mut missing = pending_partitions(plan, &opts.sysfs);
        for p in plan.parts() {
            let node = crate::disks::partition_path(dev, p.number);
            if !Path::new(&node).exists() && !missing.contains(&node) {
                missing.push(node);
            }
        }
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(StepError::PartitionsTimeout {
                disk: dev.to_string(),
                secs: opts.partition_wait.as_secs(),
                missing: missing.join(", "),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // udev may still be probing the new partitions (and making their
    // /dev/disk/by-* links); let it finish before they are formatted.
    if have("udevadm") {
        let _ = Cmd::new("udevadm")
            .args(["settle", "--timeout=30"])
            .quiet()
            .run();
    }
    Ok(())
}

/// The partitions of `plan` the kernel does not show yet as planned
/// (sysfs `start` and `size` of each, in 512-byte sectors).
pub fn pending_partitions(plan: &Plan, sysfs: &Path) -> Vec<String> {
    let read = maculaos_boot::blockdev::read_number;
    plan.parts()
        .iter()
        .filter(|p: &&Part| {
            let node = crate::disks::partition_path(plan.device(), p.number);
            let name = node.trim_start_matches("/dev/");
            let dir = sysfs.join("class/block").join(name);
            read(&dir.join("start")) != Some(p.start / SECTOR)
                || read(&dir.join("size")) != Some(p.size / SECTOR)
        })
        .map(|p| crate::disks::partition_path(plan.device(), p.number))
        .collect()
}

/// The first sector of the disk with GRUB's boot code in place of the
/// protective MBR's: the code area (440 bytes) replaced, the disk signature
/// and the partition table kept.
pub fn mbr_with_boot_code(mbr: &[u8; 512], code: &[u8]) -> Result<[u8; 512], StepError> {
    if mbr[510..] != [0x55, 0xaa] {
        return Err(StepError::Other(
            "the disk's first sector holds no MBR after partitioning (no 55 AA signature)".into(),
        ));
    }
    if code.len() > MBR_CODE_LEN {
        return Err(StepError::Other(format!(
            "GRUB's MBR code is {} bytes, more than the {MBR_CODE_LEN} an MBR holds",
            code.len()
        )));
    }
    let mut out = *mbr;
    out[..code.len()].copy_from_slice(code);
    Ok(out)
}

/// GRUB's BIOS boot code, as the image builder places it in a disk image
/// (`maculaos_image::disk::make_disk`), here on the block device.
fn bios(plan: &Plan, payload: &Payload) -> Result<(), StepError> {
    let m = &payload.manifest;
    let bios = plan
        .part(LABEL_BIOS)
        .ok_or_else(|| StepError::Other("the layout has no BIOS boot partition".into()))?;
    let core_lba = bios.start / SECTOR;
    let code = patch_boot_img(&payload.read_verified(&m.boot_img)?, core_lba)?;
    let core = patch_core_img(
        &payload.read_verified(&m.core_img)?,
        core_lba,
        bios.size as usize,
    )?;
    let dev = plan.device();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(io_step(format!("opening {dev}")))?;
    let mut mbr = [0u8; 512];
    f.read_exact(&mut mbr)
        .map_err(io_step(format!("reading the MBR of {dev}")))?;
    let mbr = mbr_with_boot_code(&mbr, &code)?;
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(&mbr))
        .map_err(io_step(format!("writing the MBR of {dev}")))?;
    f.seek(SeekFrom::Start(bios.start))
        .and_then(|_| f.write_all(&core))
        .map_err(io_step(format!(
            "writing GRUB's core image at byte {} of {dev}",
            bios.start
        )))?;
    f.sync_all()
        .map_err(io_step(format!("flushing {dev} to the disk")))
}

/// Fill a freshly made (and mounted) ESP: GRUB for UEFI, the installed
/// disk's grub.cfg, a grubenv booting slot A, slot A's boot files (kernel
/// last: it is what makes a slot bootable), and an empty `slots/B`.
pub fn fill_esp(esp: &Path, payload: &Payload) -> Result<(), StepError> {
    let m = &payload.manifest;
    for d in ["EFI/BOOT", "grub", "slots/A", "slots/B"] {
        let p = esp.join(d);
        fs::create_dir_all(&p).map_err(io_step(format!("creating {}", p.display())))?;
    }
    copy_verified(payload, &m.efi, &esp.join("EFI/BOOT/BOOTX64.EFI"))?;
    copy_verified(payload, &m.grub_cfg, &esp.join("grub/grub.cfg"))?;
    let mut vars = grubenv::Vars::new();
    vars.insert(maculaos_slots::VAR_SLOT.into(), Slot::A.to_string());
    grubenv::write(&esp.join("grub/grubenv"), &vars)?;
    let slot_dir = esp.join("slots/A");
    copy_verified(payload, &m.initrd, &slot_dir.join(INITRD))?;
    write_synced(
        &slot_dir.join(SLOT_CFG),
        maculaos_slots::slot_cfg(
            Slot::A,
            payload.version(),
            &maculaos_slots::SlotImage {
                size: payload.manifest.slot.size,
                sha256: payload.manifest.slot.sha256.clone(),
            },
        )
        .as_bytes(),
    )?;
    copy_verified(payload, &m.kernel, &slot_dir.join(KERNEL))?;
    for d in ["EFI/BOOT", "EFI", "grub", "slots/A", "slots/B", "slots", ""] {
        sync_dir(&esp.join(d))?;
    }
    Ok(())
}

/// Copy a payload file to `dest`, hashing it on the way; a mismatch with
/// the manifest removes `dest` and names the damaged file. Contents only
/// (no permission bits, which vfat cannot keep).
fn copy_verified(payload: &Payload, f: &PayloadFile, dest: &Path) -> Result<(), StepError> {
    let src = payload.path(f);
    let what = format!("copying {} to {}", src.display(), dest.display());
    let mut input = File::open(&src).map_err(io_step(what.clone()))?;
    let mut out = File::create(dest).map_err(io_step(what.clone()))?;
    let (actual, done) = hash_stream(&mut input, &what, |piece, _| {
        out.write_all(piece).map_err(io_step(what.clone()))
    })?;
    out.sync_all().map_err(io_step(what.clone()))?;
    if actual != f.sha256 || done != f.size {
        drop(out);
        let _ = fs::remove_file(dest);
        return Err(StepError::Damaged {
            file: f.path.clone(),
            expected: f.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StepError> {
    let what = format!("writing {}", path.display());
    let mut f = File::create(path).map_err(io_step(what.clone()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_step(what))
}

fn sync_dir(dir: &Path) -> Result<(), StepError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_step(format!("syncing directory {}", dir.display())))
}

/// Read `input` to its end in [`CHUNK`] pieces, hashing them with sha256;
/// `each` sees every piece and the byte count so far (to write it, to
/// report progress). Returns the hex digest and the byte count. A read
/// error is reported as `what`.
fn hash_stream(
    input: &mut dyn Read,
    what: &str,
    mut each: impl FnMut(&[u8], u64) -> Result<(), StepError>,
) -> Result<(String, u64), StepError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_step(what.to_string())(e)),
        };
        hasher.update(&buf[..n]);
        done += n as u64;
        each(&buf[..n], done)?;
    }
    Ok((hex::encode(hasher.finalize()), done))
}

/// Stream the slot image `src` into `dev` (a partition, or a file in
/// tests), hashing it on the way; flush; then read back exactly `f.size`
/// bytes from the disk and compare their sha256 with the manifest's.
pub fn write_slot(
    src: &Path,
    f: &PayloadFile,
    dev: &Path,
    report: &mut dyn FnMut(Report),
) -> Result<(), StepError> {
    let reading = format!("reading {} from the medium", f.path);
    let writing = format!("writing {}", dev.display());
    let mut input = File::open(src).map_err(io_step(reading.clone()))?;
    // No create, no truncate: it is a block device.
    let mut out = OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(io_step(format!("opening {} for writing", dev.display())))?;
    let total = f.size;
    let started = Instant::now();
    let progress = |done| Report::Progress {
        pass: Pass::Write,
        done,
        total,
        elapsed: started.elapsed(),
    };
    report(progress(0));
    let (actual, done) = hash_stream(&mut input, &reading, |piece, done| {
        out.write_all(piece).map_err(io_step(writing.clone()))?;
        report(progress(done));
        Ok(())
    })?;
    out.sync_all()
        .map_err(io_step(format!("flushing {} to the disk", dev.display())))?;
    drop(out);
    if actual != f.sha256 || done != total {
        return Err(StepError::Damaged {
            file: f.path.clone(),
            expected: f.sha256.clone(),
            actual: if done == total {
                actual
            } else {
                format!("{actual} (of {done} bytes, not {total})")
            },
        });
    }
    read_back(dev, total, &f.sha256, report)
}

/// The first `size` bytes of `dev` must hash to `expected`. The page cache
/// is dropped first (best effort) so the bytes come from the disk.
fn read_back(
    dev: &Path,
    size: u64,
    expected: &str,
    report: &mut dyn FnMut(Report),
) -> Result<(), StepError> {
    let what = format!("reading back {}", dev.display());
    let f = File::open(dev).map_err(io_step(what.clone()))?;
    let _ = nix::fcntl::posix_fadvise(
        f.as_raw_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    let started = Instant::now();
    let progress = |done| Report::Progress {
        pass: Pass::ReadBack,
        done,
        total: size,
        elapsed: started.elapsed(),
    };
    report(progress(0));
    let (actual, done) = hash_stream(&mut f.take(size), &what, |_, done| {
        report(progress(done));
        Ok(())
    })?;
    if done != size || actual != expected {
        return Err(StepError::ReadBack {
            device: dev.display().to_string(),
            bytes: size,
            expected: expected.to_string(),
            actual: if done == size {
                actual
            } else {
                format!("{actual} (only {done} bytes could be read)")
            },
        });
    }
    Ok(())
}

/// Store `yaml` as `<data>/lib/maculaos/config.yaml` (the node's
/// `/var/lib/maculaos/config.yaml`): `lib` 0755 as /var/lib always is,
/// `lib/maculaos` 0700, the file 0600 (it may hold a k3s token); written
/// via a sibling and renamed, everything fsynced. Returns the file's path.
pub fn store_config(data_root: &Path, yaml: &str) -> Result<PathBuf, StepError> {
    let rel = config_on_data();
    let dest = data_root.join(&rel);
    let mut dir = data_root.to_path_buf();
    let parents: Vec<_> = rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    let last = parents.len().saturating_sub(1);
    for (i, c) in parents.into_iter().enumerate() {
        dir.push(c);
        let mode = if i == last { 0o700 } else { 0o755 };
        if !dir.is_dir() {
            DirBuilder::new()
                .mode(mode)
                .create(&dir)
                .map_err(io_step(format!("creating {}", dir.display())))?;
        }
        if i == last {
            fs::set_permissions(&dir, Permissions::from_mode(mode))
                .map_err(io_step(format!("setting the mode of {}", dir.display())))?;
        }
    }
    let tmp = dest.with_extension("yaml.new");
    let what = format!("writing {}", tmp.display());
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_step(what.clone()))?;
        f.set_permissions(Permissions::from_mode(0o600))
            .and_then(|_| f.write_all(yaml.as_bytes()))
            .and_then(|_| f.sync_all())
            .map_err(io_step(what))?;
    }
    fs::rename(&tmp, &dest).map_err(io_step(format!(
        "renaming {} to {}",
        tmp.display(),
        dest.display()
    )))?;
    if let Some(d) = dest.parent() {
        sync_dir(d)?;
    }
    Ok(dest)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::disks::tests::by_name;
    use crate::payload::tests::fake_payload;
    use maculaos_boot::layout::MIB;

    fn plan(force: bool) -> Plan {
        let d = crate::disks::Disk {
            size: 8 << 30,
            ..by_name("vdb")
        };
        Plan::new(&d, None, force, 200 * MIB).unwrap()
    }

    #[test]
    fn the_config_goes_where_var_is_mounted() {
        assert_eq!(config_on_data(), Path::new("lib/maculaos/config.yaml"));
        assert_eq!(
            Path::new("/var").join(config_on_data()),
            maculaos_config::Paths::system().node_config()
        );
    }

    #[test]
    fn the_steps() {
        let p = plan(false);
        assert_eq!(
            steps(&p),
            [
                Step::Partition,
                Step::Bios,
                Step::Esp,
                Step::Slot,
                Step::Data,
                Step::Sync
            ]
        );
        assert_eq!(steps(&plan(true))[0], Step::Wipe);
        assert_eq!(steps(&plan(true)).len(), 7);
        let texts: Vec<String> = steps(&plan(true))
            .into_iter()
            .map(|s| s.text(&p, "1.2.3"))
            .collect();
        assert_eq!(
            texts,
            [
                "erasing the partition table and signatures on /dev/vdb",
                "partitioning /dev/vdb (GPT: MACULA_BIOS, MACULA_ESP, MACULA_ROOT_A, MACULA_ROOT_B, MACULA_DATA)",
                "installing GRUB for BIOS (boot code in the MBR, core image on /dev/vdb1)",
                "making the EFI system partition /dev/vdb2 (GRUB, kernel, initrd)",
                "writing MaculaOS 1.2.3 into slot A (/dev/vdb3)",
                "making the data partition /dev/vdb5 and storing the configuration",
                "flushing everything to /dev/vdb",
            ]
        );
    }

    #[test]
    fn mbr_assembly_keeps_the_partition_table() {
        let mut mbr = [0u8; 512];
        mbr[440..446].copy_from_slice(&[1, 2, 3, 4, 0, 0]);
        mbr[446..510].fill(0x77);
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        let code = vec![0xEBu8; 440];
        let out = mbr_with_boot_code(&mbr, &code).unwrap();
        assert_eq!(&out[..440], &code[..]);
        assert_eq!(&out[440..], &mbr[440..]);
        // With the real patching of boot.img.
        let mut boot_img = vec![0u8; 512];
        boot_img[0x66] = 0xeb;
        let code = patch_boot_img(&boot_img, 2048).unwrap();
        let out = mbr_with_boot_code(&mbr, &code).unwrap();
        assert_eq!(&out[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(&out[446..512], &mbr[446..512]);
        assert!(mbr_with_boot_code(&mbr, &[0u8; 441]).is_err());
        assert!(mbr_with_boot_code(&[0u8; 512], &code).is_err());
    }

    #[test]
    fn partitions_are_pending_until_sysfs_shows_them_as_planned() {
        let p = plan(false);
        let sys = tempfile::tempdir().unwrap();
        assert_eq!(pending_partitions(&p, sys.path()).len(), 5);
        for part in p.parts() {
            let dir = sys.path().join(format!("class/block/vdb{}", part.number));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("start"), format!("{}\n", part.start / 512)).unwrap();
            fs::write(dir.join("size"), format!("{}\n", part.size / 512)).unwrap();
        }
        assert!(pending_partitions(&p, sys.path()).is_empty());
        // An old partition 5 of another size is not the new one.
        fs::write(sys.path().join("class/block/vdb5/size"), "2048\n").unwrap();
        assert_eq!(pending_partitions(&p, sys.path()), ["/dev/vdb5"]);
    }

    #[test]
    fn the_esp_holds_grub_and_slot_a() {
        let medium = tempfile::tempdir().unwrap();
        fake_payload(medium.path(), 1 << 20);
        let payload = Payload::open(medium.path()).unwrap();
        let esp = tempfile::tempdir().unwrap();
        fill_esp(esp.path(), &payload).unwrap();
        let e = esp.path();
        assert_eq!(fs::read(e.join("EFI/BOOT/BOOTX64.EFI")).unwrap(), b"MZ efi");
        assert_eq!(fs::read(e.join("grub/grub.cfg")).unwrap(), b"# grub.cfg\n");
        let env = grubenv::read(&e.join("grub/grubenv")).unwrap();
        assert_eq!(env.get("maculaos_slot").map(String::as_str), Some("A"));
        assert_eq!(env.len(), 1);
        assert_eq!(fs::read(e.join("slots/A/vmlinuz")).unwrap().len(), 6000);
        assert_eq!(fs::read(e.join("slots/A/initrd.img")).unwrap().len(), 18000);
        let cfg = fs::read_to_string(e.join("slots/A/slot.cfg")).unwrap();
        assert_eq!(
            maculaos_slots::parse_slot_cfg(&cfg, Slot::A).as_deref(),
            Some("1.2.3")
        );
        let image = maculaos_slots::parse_slot_image(&cfg, Slot::A).unwrap();
        assert_eq!(image.sha256, payload.manifest.slot.sha256);
        assert!(e.join("slots/B").is_dir());
        assert_eq!(fs::read_dir(e.join("slots/B")).unwrap().count(), 0);
    }

    #[test]
    fn a_damaged_kernel_is_not_left_on_the_esp() {
        let medium = tempfile::tempdir().unwrap();
        fake_payload(medium.path(), 1 << 20);
        let payload = Payload::open(medium.path()).unwrap();
        fs::write(medium.path().join("boot/vmlinuz"), b"y".repeat(6000)).unwrap();
        let esp = tempfile::tempdir().unwrap();
        let e = fill_esp(esp.path(), &payload).unwrap_err();
        assert!(matches!(e, StepError::Damaged { ref file, .. } if file == "boot/vmlinuz"));
        assert!(!esp.path().join("slots/A/vmlinuz").exists());
    }

    #[test]
    fn the_slot_is_written_and_read_back_with_progress() {
        let medium = tempfile::tempdir().unwrap();
        let m = fake_payload(medium.path(), 9 << 20);
        let payload = Payload::open(medium.path()).unwrap();
        let part = tempfile::NamedTempFile::new().unwrap();
        // A partition bigger than the image, with old data after it.
        fs::write(part.path(), vec![0xAAu8; 12 << 20]).unwrap();
        let mut reports = Vec::new();
        write_slot(&payload.path(&m.slot), &m.slot, part.path(), &mut |r| {
            reports.push(r)
        })
        .unwrap();
        let written = fs::read(part.path()).unwrap();
        assert_eq!(written.len(), 12 << 20, "the partition is not truncated");
        assert_eq!(
            &written[..9 << 20],
            &fs::read(payload.path(&m.slot)).unwrap()[..]
        );
        let passes: Vec<(Pass, u64)> = reports
            .iter()
            .filter_map(|r| match r {
                Report::Progress { pass, done, .. } => Some((*pass, *done)),
                _ => None,
            })
            .collect();
        assert_eq!(passes.first(), Some(&(Pass::Write, 0)));
        assert!(passes.contains(&(Pass::Write, 9 << 20)));
        assert!(passes.contains(&(Pass::ReadBack, 0)));
        assert_eq!(passes.last(), Some(&(Pass::ReadBack, 9 << 20)));
    }

    #[test]
    fn a_slot_that_does_not_read_back_is_an_error() {
        let medium = tempfile::tempdir().unwrap();
        let m = fake_payload(medium.path(), 1 << 20);
        let part = tempfile::NamedTempFile::new().unwrap();
        // A "disk" that keeps only half of what is written: /dev/full-like
        // failures are I/O errors; a short device reads back short.
        let e = read_back(part.path(), m.slot.size, &m.slot.sha256, &mut |_| {}).unwrap_err();
        assert!(matches!(e, StepError::ReadBack { .. }));
        assert!(e.to_string().contains("only 0 bytes could be read"), "{e}");
        fs::write(part.path(), vec![0u8; 1 << 20]).unwrap();
        let e = read_back(part.path(), m.slot.size, &m.slot.sha256, &mut |_| {}).unwrap_err();
        assert!(
            e.to_string()
                .contains("the disk did not keep what was written"),
            "{e}"
        );
    }

    #[test]
    fn a_damaged_slot_image_is_named() {
        let medium = tempfile::tempdir().unwrap();
        let m = fake_payload(medium.path(), 1 << 20);
        fs::write(medium.path().join(&m.slot.path), vec![1u8; 1 << 20]).unwrap();
        let part = tempfile::NamedTempFile::new().unwrap();
        let e = write_slot(
            &medium.path().join(&m.slot.path),
            &m.slot,
            part.path(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(e, StepError::Damaged { ref file, .. } if file == "live/root.squashfs"),
            "{e}"
        );
    }

    #[test]
    fn the_config_is_stored_for_root_only() {
        let data = tempfile::tempdir().unwrap();
        let p = store_config(data.path(), "maculaos:\n  hostname: edge-1\n").unwrap();
        assert_eq!(p, data.path().join("lib/maculaos/config.yaml"));
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            "maculaos:\n  hostname: edge-1\n"
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&data.path().join("lib/maculaos")), 0o700);
        assert_eq!(mode(&data.path().join("lib")), 0o755);
        assert!(!data.path().join("lib/maculaos/config.yaml.new").exists());
        // Again: replaced whole.
        store_config(data.path(), "k3s:\n  role: server\n").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "k3s:\n  role: server\n");
    }

    #[test]
    fn a_config_with_errors_writes_nothing() {
        let medium = tempfile::tempdir().unwrap();
        fake_payload(medium.path(), 1 << 20);
        let payload = Payload::open(medium.path()).unwrap();
        let mut reports = Vec::new();
        let e = write(
            &plan(false),
            &payload,
            "maculaos:\n  hostnme: x\n",
            &Options::default(),
            &mut |r| reports.push(r),
        )
        .unwrap_err();
        assert!(matches!(e, InstallError::Config { .. }), "{e}");
        assert!(e.to_string().contains("did you mean `hostname`?"), "{e}");
        assert!(reports.is_empty());
    }

    #[test]
    fn installed_message() {
        let i = Installed {
            version: "1.2.3".into(),
            device: "/dev/vda".into(),
            seconds: 41.6,
        };
        assert_eq!(i.message(), "installed MaculaOS 1.2.3 on /dev/vda in 42 s");
    }
}
