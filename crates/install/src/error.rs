//! Every way installing can fail. A refusal (the disk is not fit) comes
//! before anything is written; a failed step names the step and the device.

use crate::plan::Refusal;
use maculaos_boot::bios::BiosError;
use maculaos_boot::grubenv::GrubenvError;
use maculaos_runner::RunError;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The disk is not fit for installing; nothing was written.
    #[error(transparent)]
    Refused(#[from] Refusal),

    #[error("listing the disks with lsblk: {0}")]
    Lsblk(String),

    #[error("no disk {device} on this machine: `maculaos install --list` shows the disks")]
    NoSuchDisk { device: String },

    #[error("no disk to install on: this machine has no disk besides the installation medium (see `maculaos install --list`)")]
    NoDisks,

    #[error("no disk here can take MaculaOS:\n{reasons}")]
    NoUsableDisk { reasons: String },

    /// The install payload (the medium's `install/manifest.json` and the
    /// files it names) is missing or broken; nothing was written.
    #[error("the install payload in {}: {problem}", .dir.display())]
    Payload { dir: PathBuf, problem: String },

    /// The configuration to install with has errors (one problem per
    /// line, each with file:line:column where known); nothing was written.
    #[error("the configuration has errors; nothing was written:\n{problems}")]
    Config { problems: String },

    #[error("install.config_url is not supported yet; put the configuration in the install config itself")]
    ConfigUrlUnsupported,

    /// The input of the interactive installer ended before an answer.
    #[error("no more input: installation cancelled, nothing was written")]
    InputEnded,

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    /// A step of writing the disk failed.
    #[error("installing on {device} failed at step {number}/{of} ({step}): {source}\n{device} is partly written and will not boot: fix the cause and run the installer again (it starts over)")]
    Step {
        device: String,
        number: usize,
        of: usize,
        step: String,
        #[source]
        source: Box<StepError>,
    },
}

/// Why one step of [`crate::write()`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Run(#[from] RunError),

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    #[error(transparent)]
    Bios(#[from] BiosError),

    #[error("writing grub/grubenv: {0}")]
    Grubenv(#[from] GrubenvError),

    #[error("{file} on the installation medium is damaged: its sha256 is {actual}, the manifest says {expected}. Make the medium again, or use another one")]
    Damaged {
        file: String,
        expected: String,
        actual: String,
    },

    #[error("reading back {device} gave sha256 {actual} for the first {bytes} bytes, but {expected} was written: the disk did not keep what was written (check it: dmesg, smartctl)")]
    ReadBack {
        device: String,
        bytes: u64,
        expected: String,
        actual: String,
    },

    #[error("the kernel did not show the new partitions of {disk} within {secs} s (missing or not yet updated: {missing}); is something holding the disk open?")]
    PartitionsTimeout {
        disk: String,
        secs: u64,
        missing: String,
    },

    #[error("{0}")]
    Other(String),
}

/// `map_err` helper: an I/O error with what we were doing.
pub(crate) fn io_step(what: impl Into<String>) -> impl FnOnce(io::Error) -> StepError {
    let what = what.into();
    move |source| StepError::Io { what, source }
}

/// `map_err` helper: an I/O error with what we were doing.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> InstallError {
    let what = what.into();
    move |source| InstallError::Io { what, source }
}
