//! Every way applying an update can fail. Each message says what failed and
//! what to do, and, once the standby slot has been touched, that it was left
//! unbootable while the running slot is untouched: the operator reading it on
//! a console needs to know the node is still safe to reboot.

use maculaos_boot::grubenv::GrubenvError;
use maculaos_boot::Slot;
use maculaos_bundle::BundleError;
use std::io;
use std::path::PathBuf;

pub type Result<T, E = UpgradeError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("refusing to write slot {slot}: it is the running slot. Updates go into the standby slot ({})", .slot.other())]
    RunningSlot { slot: Slot },

    #[error("refusing to write slot {slot}: it is the slot GRUB falls back to (maculaos_slot={slot}), and the running slot {running} {why}. Let slot {running} be marked good first (it is after its boot checks pass; see `maculaos upgrade --status`), or reboot into slot {slot}, then apply again")]
    FallbackSlot {
        slot: Slot,
        running: Slot,
        why: &'static str,
    },

    #[error("another `maculaos upgrade --apply` is running (it holds {}): wait for it to finish", .lock.display())]
    Busy { lock: PathBuf },

    /// The bundle could not be read (its messages name the file).
    #[error(transparent)]
    Open(BundleError),

    #[error("{} is not accepted here: {source}", .bundle.display())]
    Verify {
        bundle: PathBuf,
        #[source]
        source: BundleError,
    },

    #[error("downgrade from {from} to {to} refused; --allow-downgrade to do it anyway")]
    Downgrade { from: String, to: String },

    #[error("already running {version}; --force to write it into slot {slot} anyway")]
    SameVersion { version: String, slot: Slot },

    #[error("{version} failed its trial on {date}: {reason}; --force to try again")]
    KnownBad {
        version: String,
        date: String,
        reason: String,
    },

    #[error("the slot image is {payload_size} bytes, more than partition {} holds ({partition_size} bytes): this version needs bigger slots than this disk has; reinstall from a newer image to get them. Nothing was written", .partition.display())]
    TooBig {
        payload_size: u64,
        partition: PathBuf,
        partition_size: u64,
    },

    #[error("{what}: {source}")]
    Grubenv {
        what: String,
        #[source]
        source: GrubenvError,
    },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    #[error("writing the slot image into {} failed: {source}. {}", .partition.display(), unbootable(*.slot))]
    Write {
        partition: PathBuf,
        slot: Slot,
        #[source]
        source: BundleError,
    },

    #[error("reading back {} gave sha256 {actual} for the first {bytes} bytes, but {expected} was written: the disk did not keep what was written (check it: dmesg, smartctl). {}", .partition.display(), unbootable(*.slot))]
    ReadBackMismatch {
        partition: PathBuf,
        slot: Slot,
        bytes: u64,
        expected: String,
        actual: String,
    },

    #[error("copying the kernel and initrd out of the new slot image failed: {source}. {}", unbootable(*.slot))]
    BootFiles {
        slot: Slot,
        #[source]
        source: Box<UpgradeError>,
    },

    #[error("the slot image has no {file}: it is not a MaculaOS root (a MaculaOS slot image keeps its kernel and initrd in /boot); build it with `maculaos-sdk build-image`")]
    MissingBootFile { file: String },

    #[error(transparent)]
    Run(#[from] maculaos_runner::RunError),
}

/// What an operator needs to hear after a failure past the point where the
/// standby slot was made unbootable.
pub(crate) fn unbootable(slot: Slot) -> String {
    format!("Slot {slot} was left unbootable (no kernel on the ESP, not on trial) and the running slot is untouched: rebooting is safe. Apply a good bundle again")
}

/// `map_err` helper: an I/O error with what we were doing.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> UpgradeError {
    let what = what.into();
    move |source| UpgradeError::Io { what, source }
}

/// `map_err` helper: a grubenv error with what we were doing.
pub(crate) fn grubenv_err(what: impl Into<String>) -> impl FnOnce(GrubenvError) -> UpgradeError {
    let what = what.into();
    move |source| UpgradeError::Grubenv { what, source }
}
