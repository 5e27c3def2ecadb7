//! `maculaos upgrade --apply`: write a verified update bundle into the
//! standby slot and set GRUB to try it (docs/updates.md).
//!
//! [`apply`] does, in this order:
//!
//! 1. checks, none of which writes anything: the target is not the running
//!    slot, nor the slot GRUB falls back to; the bundle is signed by a
//!    trusted key and made for this system; its version is newer than the
//!    running one and not remembered as bad (unless told otherwise, see
//!    [`Options`]); it fits the partition;
//! 2. makes the standby slot unbootable: any trial of it is cleared in
//!    GRUB's environment and its kernel (`slots/<slot>/vmlinuz` on the ESP,
//!    which both the menu entry and grub.cfg's trial logic require) removed;
//!    its payload matches the signed hash (a first pass that writes nothing);
//! 3. streams the payload into the partition, hashing it on the way, and
//!    reads it back to compare;
//! 4. copies the new kernel and initrd out of the written root onto the ESP,
//!    the kernel last: from then on the slot can boot;
//! 5. only then sets GRUB to try it (`maculaos_trial`, `maculaos_tries=3`).
//!
//! A failure or a power cut anywhere in 2-4 leaves a slot without a kernel
//! and no trial: GRUB keeps booting the running slot. The running slot and
//! its boot files are never touched.

mod error;
mod mount;
mod progress;
mod state;

pub use error::{Result, UpgradeError};
pub use mount::{MountBootFiles, MOUNT_BASE};
pub use progress::{Phase, Progress};
pub use state::{
    bad_versions, find_bad, format_utc, last_applied, remember_bad, AppliedRecord, BadVersion,
    APPLIED_FILE, BAD_VERSIONS_FILE,
};

use error::{grubenv_err, io_err};
use maculaos_boot::grubenv;
use maculaos_boot::Slot;
use maculaos_bundle::{compare_versions, BundleManifest, PublicKey, COMPATIBLE};
use maculaos_slots::{State, TRIES, VAR_BAD, VAR_ROLLBACK, VAR_TRIAL, VAR_TRIES};
use serde::Serialize;
use sha2::{Digest, Sha256};
use state::{now, sibling, sync_dir, write_atomic};
use std::cmp::Ordering;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The boot files of a slot, in its root's `/boot` and in `slots/<slot>/` on
/// the ESP. The kernel is what makes a slot bootable (see grub.cfg).
pub const KERNEL: &str = "vmlinuz";
pub const INITRD: &str = "initrd.img";
/// The per-slot GRUB snippet naming the slot's version.
pub const SLOT_CFG: &str = "slot.cfg";
/// The lock file in the state directory: one apply at a time.
pub const LOCK_FILE: &str = "apply.lock";

const CHUNK: usize = 1 << 20;

/// Where to write and what is running.
#[derive(Debug, Clone)]
pub struct Target {
    /// The standby slot to write (never the running one).
    pub slot: Slot,
    pub running_slot: Slot,
    pub running_version: String,
    /// The slot's root partition (`/dev/vda4` on a node; a file in tests).
    pub partition: PathBuf,
    /// Its size in bytes (sysfs `size` * 512 on a node).
    pub partition_size: u64,
    /// The mounted ESP's root (holds `grub/grubenv` and `slots/<slot>/`).
    pub esp: PathBuf,
    /// `/var/lib/maculaos/updates`: bad versions, the last apply, the lock.
    pub state_dir: PathBuf,
}

impl Target {
    pub fn grubenv(&self) -> PathBuf {
        self.esp.join("grub/grubenv")
    }

    /// `slots/<slot>/` on the ESP.
    pub fn slot_dir(&self) -> PathBuf {
        self.esp.join(format!("slots/{}", self.slot))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Write a version older than the running one.
    pub allow_downgrade: bool,
    /// Write the running version again, or a version remembered as bad.
    pub force: bool,
}

/// Copies `/boot/vmlinuz` and `/boot/initrd.img` out of the root just
/// written into `partition` into `dest_dir` (as `vmlinuz`, `initrd.img`).
/// A node mounts the squashfs ([`MountBootFiles`]); tests use a fake.
pub trait BootFiles {
    fn extract(&self, partition: &Path, dest_dir: &Path) -> Result<()>;
}

/// What [`apply`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Applied {
    pub version: String,
    pub slot: Slot,
    /// Size of the slot image written.
    pub bytes: u64,
    /// Time from the first write to GRUB set to try the slot.
    pub seconds: f64,
    /// sha256 of the slot image (checked while writing and read back).
    pub sha256: String,
}

/// Write the bundle at `bundle` into `target.slot` and set GRUB to try it at
/// the next boot (see the crate documentation for the order of steps).
///
/// `trusted`: the keys bundles must be signed with; `node_arch`: this
/// node's architecture (`maculaos_bundle::NODE_ARCH`). `progress` gets a
/// report per MiB written and read back.
pub fn apply(
    bundle: &Path,
    trusted: &[PublicKey],
    node_arch: &str,
    target: &Target,
    opts: &Options,
    boot_files: &dyn BootFiles,
    progress: &mut dyn FnMut(Progress),
) -> Result<Applied> {
    apply_inner(
        bundle,
        trusted,
        node_arch,
        target,
        opts,
        boot_files,
        progress,
        &mut |_| {},
    )
}

/// [`apply`] with a hook run between writing the partition and reading it
/// back (tests damage the partition there to check the read-back).
#[allow(clippy::too_many_arguments)]
fn apply_inner(
    bundle: &Path,
    trusted: &[PublicKey],
    node_arch: &str,
    target: &Target,
    opts: &Options,
    boot_files: &dyn BootFiles,
    progress: &mut dyn FnMut(Progress),
    after_write: &mut dyn FnMut(&Path),
) -> Result<Applied> {
    // 1. Never the running slot.
    if target.slot == target.running_slot {
        return Err(UpgradeError::RunningSlot { slot: target.slot });
    }
    let _lock = lock(&target.state_dir)?;

    // Nor the slot GRUB falls back to. It is the running one, except while
    // the running slot is on trial (or was booted by hand from the menu):
    // writing the fall-back then would leave nothing known-good to go back to.
    let grubenv_path = target.grubenv();
    let vars = grubenv::read(&grubenv_path).map_err(grubenv_err(
        "reading GRUB's boot state (is the ESP mounted?)",
    ))?;
    let grub = State::from_vars(&vars);
    if grub.good == target.slot {
        return Err(UpgradeError::FallbackSlot {
            slot: target.slot,
            running: target.running_slot,
            why: if grub.trial == Some(target.running_slot) {
                "is on trial and has not been marked good yet"
            } else {
                "is not GRUB's good slot (it was booted by hand from the GRUB menu?)"
            },
        });
    }

    // 2. Signed by a trusted key, for this system.
    let opened = maculaos_bundle::open(bundle).map_err(UpgradeError::Open)?;
    let manifest: BundleManifest = opened
        .verify_for(trusted, node_arch, COMPATIBLE)
        .map_err(|source| UpgradeError::Verify {
            bundle: bundle.to_owned(),
            source,
        })?
        .clone();
    let version = manifest.os_version.clone();

    // 3. Version order and memory of failed trials.
    check_version(&version, target, opts)?;

    // 4. Size, and a partition we can open for writing, before a byte is written.
    let size = manifest.payload_size;
    if size > target.partition_size {
        return Err(UpgradeError::TooBig {
            payload_size: size,
            partition: target.partition.clone(),
            partition_size: target.partition_size,
        });
    }
    // The payload matches its signed hash, before a byte of the standby slot
    // is overwritten: that slot is usually the way back (the version before
    // the running one), and a damaged download must not cost it. The write
    // below hashes again, in case the file changes in between.
    let check = maculaos_bundle::open(bundle).map_err(UpgradeError::Open)?;
    check
        .verify_for(trusted, node_arch, COMPATIBLE)
        .map_err(|source| UpgradeError::Verify {
            bundle: bundle.to_owned(),
            source,
        })?;
    let started = Instant::now();
    maculaos_bundle::copy_payload(check, &mut io::sink(), |done, total| {
        progress(Progress::new(Phase::Verify, done, total, started.elapsed()))
    })
    .map_err(|source| UpgradeError::Verify {
        bundle: bundle.to_owned(),
        source,
    })?;

    // No truncate, no create: it is a block device on a node.
    let mut part = OpenOptions::new()
        .write(true)
        .open(&target.partition)
        .map_err(io_err(format!(
            "opening partition {} for writing (are you root?). Nothing was written",
            target.partition.display()
        )))?;

    // 5. From here on the standby slot is written: make it unbootable first.
    make_unbootable(target)?;

    // 6. The slot image, then read back.
    let slot = target.slot;
    let after_step5 = |what: String| {
        let extra = error::unbootable(slot);
        move |source: io::Error| UpgradeError::Io {
            what: format!("{what} ({extra})"),
            source,
        }
    };
    let started = Instant::now();
    part.seek(SeekFrom::Start(0)).map_err(after_step5(format!(
        "seeking to the start of {}",
        target.partition.display()
    )))?;
    let sha256 = maculaos_bundle::copy_payload(opened, &mut part, |done, total| {
        progress(Progress::new(Phase::Write, done, total, started.elapsed()))
    })
    .map_err(|source| UpgradeError::Write {
        partition: target.partition.clone(),
        slot,
        source,
    })?;
    part.sync_all().map_err(after_step5(format!(
        "flushing {} to the disk",
        target.partition.display()
    )))?;
    drop(part);
    after_write(&target.partition);
    read_back(&target.partition, slot, size, &sha256, progress)?;

    // 7. Boot files: initrd, slot.cfg, and the kernel last.
    let image = maculaos_slots::SlotImage {
        size,
        sha256: sha256.clone(),
    };
    install_boot_files(target, &version, &image, boot_files)?;

    // 8. Only now: try it at the next boot.
    grubenv::update(&grubenv_path, |v| start_trial(v, slot))
        .map_err(grubenv_err(format!("setting slot {slot} on trial in GRUB's environment; slot {slot} holds {version} and can boot, but nothing will boot it: apply again")))?;
    let seconds = started.elapsed().as_secs_f64();
    state::record_applied(
        &target.state_dir,
        &AppliedRecord {
            version: version.clone(),
            slot,
            sha256: sha256.clone(),
            bytes: size,
            at: now(),
            from_version: target.running_version.clone(),
            from_slot: target.running_slot,
        },
    )?;
    Ok(Applied {
        version,
        slot,
        bytes: size,
        seconds,
        sha256,
    })
}

/// One apply at a time: an exclusive flock on `<state_dir>/apply.lock`,
/// released when the returned file is dropped (or the process ends).
fn lock(state_dir: &Path) -> Result<nix::fcntl::Flock<File>> {
    fs::create_dir_all(state_dir).map_err(io_err(format!(
        "creating the update state directory {}",
        state_dir.display()
    )))?;
    let path = state_dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        match errno {
            nix::errno::Errno::EWOULDBLOCK => UpgradeError::Busy { lock: path.clone() },
            e => UpgradeError::Io {
                what: format!("locking {}", path.display()),
                source: e.into(),
            },
        }
    })
}

/// Step 3: newer than the running version, and not known to fail.
fn check_version(version: &str, target: &Target, opts: &Options) -> Result<()> {
    match compare_versions(version, &target.running_version) {
        Ordering::Less if !opts.allow_downgrade => {
            return Err(UpgradeError::Downgrade {
                from: target.running_version.clone(),
                to: version.to_string(),
            })
        }
        Ordering::Equal if !opts.force => {
            return Err(UpgradeError::SameVersion {
                version: version.to_string(),
                slot: target.slot,
            })
        }
        _ => {}
    }
    if !opts.force {
        if let Some(bad) = find_bad(&target.state_dir, version) {
            return Err(UpgradeError::KnownBad {
                version: bad.version.clone(),
                date: bad.date(),
                reason: bad.reason,
            });
        }
    }
    Ok(())
}

/// Step 5: no trial of the slot in GRUB's environment, no kernel on the ESP
/// (and no leftovers of its other boot files), durably.
fn make_unbootable(target: &Target) -> Result<()> {
    let slot = target.slot;
    let grubenv_path = target.grubenv();
    let vars = grubenv::read(&grubenv_path).map_err(grubenv_err("reading GRUB's boot state"))?;
    if vars.get(VAR_TRIAL).and_then(|v| v.parse::<Slot>().ok()) == Some(slot) {
        grubenv::update(&grubenv_path, |v| {
            v.insert(VAR_TRIAL.into(), String::new());
            v.insert(VAR_TRIES.into(), String::new());
        })
        .map_err(grubenv_err(format!(
            "ending the trial of slot {slot} before writing it; nothing was written"
        )))?;
    }
    let dir = target.slot_dir();
    fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    // The kernel first: it is what makes the slot bootable.
    for name in [KERNEL, INITRD, SLOT_CFG] {
        for path in [dir.join(name), sibling(&dir.join(name), ".new")] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(UpgradeError::Io {
                        what: format!(
                            "removing {} to make slot {slot} unbootable before writing it; nothing was written to the partition",
                            path.display()
                        ),
                        source: e,
                    })
                }
            }
        }
    }
    sync_dir(&dir)
}

/// Step 6, second half: the first `size` bytes of `partition` must hash to
/// `expected`. The page cache is dropped first (best effort) so the bytes
/// come from the disk, not from memory.
fn read_back(
    partition: &Path,
    slot: Slot,
    size: u64,
    expected: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let what = || {
        format!(
            "reading back {} ({})",
            partition.display(),
            error::unbootable(slot)
        )
    };
    let f = File::open(partition).map_err(io_err(what()))?;
    let _ = nix::fcntl::posix_fadvise(
        f.as_raw_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    let started = Instant::now();
    let mut input = f.take(size);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    progress(Progress::new(Phase::ReadBack, 0, size, started.elapsed()));
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(what())(e)),
        };
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(Progress::new(
            Phase::ReadBack,
            done,
            size,
            started.elapsed(),
        ));
    }
    let actual = hex::encode(hasher.finalize());
    if done != size || actual != expected {
        return Err(UpgradeError::ReadBackMismatch {
            partition: partition.to_owned(),
            slot,
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

/// Step 7: extract the kernel and initrd, install the initrd, slot.cfg and
/// then the kernel into `slots/<slot>/` on the ESP.
fn install_boot_files(
    target: &Target,
    version: &str,
    image: &maculaos_slots::SlotImage,
    boot_files: &dyn BootFiles,
) -> Result<()> {
    let slot = target.slot;
    let wrap = |e: UpgradeError| UpgradeError::BootFiles {
        slot,
        source: Box::new(e),
    };
    // On the data partition, not in RAM: an initrd is tens of MiB.
    let tmp = tempfile::Builder::new()
        .prefix(".boot-files-")
        .tempdir_in(&target.state_dir)
        .map_err(io_err(format!(
            "creating a temporary directory in {}",
            target.state_dir.display()
        )))
        .map_err(wrap)?;
    boot_files
        .extract(&target.partition, tmp.path())
        .map_err(wrap)?;
    for name in [INITRD, KERNEL] {
        let len = fs::metadata(tmp.path().join(name))
            .map(|m| m.len())
            .unwrap_or(0);
        if len == 0 {
            return Err(wrap(UpgradeError::MissingBootFile {
                file: format!("/boot/{name}"),
            }));
        }
    }
    let dir = target.slot_dir();
    install_file(&tmp.path().join(INITRD), &dir.join(INITRD)).map_err(wrap)?;
    write_atomic(
        &dir.join(SLOT_CFG),
        slot_cfg(slot, version, image).as_bytes(),
    )
    .map_err(wrap)?;
    install_file(&tmp.path().join(KERNEL), &dir.join(KERNEL)).map_err(wrap)?;
    Ok(())
}

/// Copy `src` to `dest` via `dest.new`, fsync, rename, fsync the directory.
///
/// Why not `fs::copy`: it copies the permission bits too (fchmod), which
/// vfat refuses for modes it cannot represent.
fn install_file(src: &Path, dest: &Path) -> Result<()> {
    let tmp = sibling(dest, ".new");
    let what = format!("copying {} to {}", src.display(), tmp.display());
    let mut input = File::open(src).map_err(io_err(what.clone()))?;
    let mut out = File::create(&tmp).map_err(io_err(what.clone()))?;
    io::copy(&mut input, &mut out)
        .and_then(|_| out.sync_all())
        .map_err(io_err(what))?;
    drop(out);
    fs::rename(&tmp, dest).map_err(io_err(format!(
        "renaming {} to {}",
        tmp.display(),
        dest.display()
    )))?;
    sync_dir(dest.parent().unwrap_or(Path::new(".")))
}

/// Step 8: a fresh trial of `slot`. Any earlier trial state goes, so a stale
/// count or rollback reason never causes an instant fall-back or a
/// misleading status.
fn start_trial(vars: &mut grubenv::Vars, slot: Slot) {
    vars.insert(VAR_TRIAL.into(), slot.to_string());
    vars.insert(VAR_TRIES.into(), TRIES.to_string());
    if vars.get(VAR_BAD).and_then(|v| v.parse::<Slot>().ok()) == Some(slot) {
        vars.insert(VAR_BAD.into(), String::new());
    }
    vars.insert(VAR_ROLLBACK.into(), String::new());
}

/// One rule for both writers of `slot.cfg`: the image builder and this.
pub use maculaos_slots::slot_cfg;

#[cfg(test)]
mod tests;
