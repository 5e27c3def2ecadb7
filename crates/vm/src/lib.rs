//! Boots MaculaOS disk images under QEMU, for the SDK's dev VM and the
//! scenario test suite.
//!
//! * [`VmSpec`] describes a machine, [`Vm::start`] runs it; every boot writes
//!   its own serial log (`serial-1.log`, `serial-2.log`, …) in the run
//!   directory so a test keeps the console output of each boot.
//! * [`Vm`] waits for text on the serial console, talks QMP ([`qmp::Qmp`]),
//!   stops the machine (ACPI power button, then `quit`, then kill) and never
//!   leaves a QEMU behind, even when dropped.
//! * [`Ssh`] runs commands in the guest through the forwarded SSH port.
//! * [`disk`] prepares images on the host: sparse copies, partitions, files on
//!   the EFI system partition and the GRUB environment block.
//!
//! Every wait polls a condition until a deadline; a timeout names what was
//! awaited, for how long, and quotes the tail of the serial log.

pub mod disk;
mod lan;
pub mod qmp;
mod serial;
mod spec;
pub mod ssh;
mod vm;

pub use lan::Hub;
pub use maculaos_boot::Firmware;
pub use serial::wedged_line;
pub use spec::{
    extra_nic_mac, Accel, Lan, VmSpec, DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DEFAULT_OVMF,
    DEFAULT_QEMU, GUEST_SERVICE_ADDR,
};
pub use ssh::{test_key, Output, Ssh};
pub use vm::{StopHow, Stopped, Vm};

use maculaos_runner::RunError;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How many serial log lines an error about a waiting VM quotes.
pub const ERROR_TAIL_LINES: usize = 40;

pub type Result<T, E = VmError> = std::result::Result<T, E>;

/// Everything that can go wrong starting, watching or preparing a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A host tool (sfdisk, mcopy, grub-editenv, ssh-keygen, cp…) failed.
    #[error(transparent)]
    Run(#[from] RunError),

    /// A file or socket operation on the host failed.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The spec or an argument cannot work (missing disk, bad name…).
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },

    /// QEMU could not be started at all.
    #[error("starting `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    /// QEMU started but exited before its monitor came up.
    #[error("QEMU exited during start-up ({status}){}", fmt_tail(.log, .tail))]
    StartFailed {
        status: String,
        log: PathBuf,
        tail: String,
    },

    /// A condition did not come true before its deadline.
    #[error("timed out after {:.1}s waiting for {what}{}", .waited.as_secs_f64(), fmt_tail(.log, .tail))]
    Timeout {
        what: String,
        waited: Duration,
        log: PathBuf,
        tail: String,
    },

    /// QEMU exited while something was still awaited from the guest.
    #[error("QEMU exited ({status}) while waiting for {what}{}", fmt_tail(.log, .tail))]
    Exited {
        what: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    /// The guest kernel reports a CPU stuck for minutes: the emulated machine
    /// is wedged (a TCG vCPU stopped making progress), not failing in a way
    /// the system under test chose. Waiting longer does not help.
    #[error("the guest is wedged while waiting for {what}: its kernel reports `{line}`{}", fmt_tail(.log, .tail))]
    GuestWedged {
        what: String,
        line: String,
        log: PathBuf,
        tail: String,
    },

    /// An operation needs QEMU to have exited first.
    #[error("{what}: QEMU (pid {pid}) is still running")]
    StillRunning { what: String, pid: u32 },

    /// The QEMU monitor protocol failed or QEMU answered with an error.
    #[error("QMP {}: {detail}", .socket.display())]
    Qmp { socket: PathBuf, detail: String },

    /// A command run over SSH exited unsuccessfully.
    #[error("ssh 127.0.0.1:{port} `{command}` exited with status {status}{}{}", fmt_stream("stdout", .stdout), fmt_stream("stderr", .stderr))]
    SshFailed {
        port: u16,
        command: String,
        status: i32,
        stdout: String,
        stderr: String,
    },

    /// A command run over SSH did not finish in time (ssh was killed).
    #[error("ssh 127.0.0.1:{port} `{command}` did not finish within {:.1}s", .waited.as_secs_f64())]
    SshTimeout {
        port: u16,
        command: String,
        waited: Duration,
    },

    /// A disk image lacks the partition an operation needs.
    #[error("{}: no partition labelled {label} (partitions: {found})", .image.display())]
    NoPartition {
        image: PathBuf,
        label: String,
        found: String,
    },
}

fn fmt_tail(log: &std::path::Path, tail: &str) -> String {
    if tail.trim().is_empty() {
        format!("; {} is empty", log.display())
    } else {
        format!("; last lines of {}:\n{}", log.display(), tail.trim_end())
    }
}

fn fmt_stream(name: &str, text: &str) -> String {
    if text.trim().is_empty() {
        String::new()
    } else {
        format!("\n{name}:\n{}", maculaos_runner::tail(text, 25))
    }
}

pub(crate) fn io_err(
    what: impl Into<String>,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    let path = path.into();
    move |source| VmError::Io { what, path, source }
}

/// A point in time a wait gives up at. `Duration::MAX` and other timeouts too
/// long to add to "now" mean "never", instead of panicking on overflow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    start: Instant,
    end: Option<Instant>,
}

impl Deadline {
    pub(crate) fn after(timeout: Duration) -> Deadline {
        let start = Instant::now();
        Deadline {
            start,
            end: start.checked_add(timeout),
        }
    }

    pub(crate) fn expired(&self) -> bool {
        self.end.is_some_and(|e| Instant::now() >= e)
    }

    pub(crate) fn remaining(&self) -> Duration {
        match self.end {
            Some(e) => e.saturating_duration_since(Instant::now()),
            None => Duration::MAX,
        }
    }

    pub(crate) fn waited(&self) -> Duration {
        self.start.elapsed()
    }

    /// Sleep one poll interval, never past the deadline.
    pub(crate) fn pause(&self, interval: Duration) {
        std::thread::sleep(interval.min(self.remaining()));
    }
}
