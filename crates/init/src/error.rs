//! Everything that can stop the boot, each saying what failed and where,
//! with a hint for the person at the console.

use maculaos_boot::{BootError, Mode};
use maculaos_runner::RunError;
use nix::errno::Errno;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("maculaos-init is the initramfs's /init and must run as PID 1 (it mounts filesystems and switches root); refusing to run as PID {pid}")]
    NotPid1 { pid: i32 },
    /// A system call failed: `what` says which and on what.
    #[error("{what}: {errno}")]
    Sys { what: String, errno: Errno },
    #[error("{action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Cmdline(#[from] BootError),
    #[error("maculaos.mode={0} is not supported by this image yet")]
    UnsupportedMode(Mode),
    #[error("no partition labelled {label} after {secs} s; saw: {seen}")]
    RootNotFound {
        label: &'static str,
        secs: u64,
        seen: String,
    },
    #[error("no partition labelled {data_label} on {disk} (the disk holding {root_label}) after {secs} s; saw: {seen}")]
    DataNotFound {
        data_label: &'static str,
        root_label: &'static str,
        disk: String,
        secs: u64,
        seen: String,
    },
    #[error("no MaculaOS live medium (an ISO 9660 volume {label}) after {secs} s; saw: {seen}")]
    MediumNotFound {
        label: &'static str,
        secs: u64,
        seen: String,
    },
    #[error("live persistence: no {what} after {secs} s; saw: {seen}")]
    PersistenceNotFound {
        what: String,
        secs: u64,
        seen: String,
    },
    #[error("{label} ({device}) holds no MaculaOS root ({reason})")]
    NoRoot {
        label: &'static str,
        device: String,
        reason: String,
    },
    #[error("{label} ({device}) holds something that is not a MaculaOS data filesystem (not blank, no ext4 signature); refusing to format it")]
    ForeignData { label: &'static str, device: String },
    #[error("{what}: {source}")]
    Tool {
        what: String,
        #[source]
        source: RunError,
    },
    #[error(transparent)]
    Seed(#[from] crate::seed::SeedError),
    #[error("generating the machine id: no randomness from the kernel: {0}")]
    Random(getrandom::Error),
    #[error("starting {program}: {source}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("init stopped on an internal error (a bug in maculaos-init): {0}")]
    Panic(String),
}

impl InitError {
    pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(Errno) -> InitError {
        let what = what.into();
        move |errno| InitError::Sys { what, errno }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> InitError {
        let path = path.into();
        move |source| InitError::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn tool(what: impl Into<String>) -> impl FnOnce(RunError) -> InitError {
        let what = what.into();
        move |source| InitError::Tool { what, source }
    }

    /// One line telling the person at the console what to try.
    pub fn hint(&self) -> &'static str {
        match self {
            InitError::NotPid1 { .. } => "the image builder installs it as /init; there is nothing to run by hand",
            InitError::Cmdline(_) => "fix the maculaos.* parameters on the kernel command line (press e in the boot menu)",
            InitError::UnsupportedMode(_) => "boot with maculaos.mode=disk, or use an image that has this mode",
            InitError::RootNotFound { .. } | InitError::DataNotFound { .. } => {
                "check that the disk is attached and its controller's driver is in the initramfs; maculaos.rootwait=SECONDS waits longer"
            }
            InitError::MediumNotFound { .. } => {
                "check that the ISO (or the USB stick it was written to) is attached and was written whole; maculaos.rootwait=SECONDS waits longer"
            }
            InitError::NoRoot { .. } => {
                "this slot was never installed or its update did not finish: pick the other slot in the boot menu"
            }
            InitError::ForeignData { .. } => {
                "if what is on it may be erased, wipe the partition's first MiB from the debug shell (maculaos.debug) and reboot"
            }
            _ => "boot with maculaos.debug on the kernel command line for a shell in the initramfs",
        }
    }
}
