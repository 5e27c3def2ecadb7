//! A running QEMU and its lifecycle: start, watch, stop, boot again.

use crate::qmp::Qmp;
use crate::serial::{SerialLog, SerialWriter};
use crate::spec::{qemu_args, Ports, VmSpec};
use crate::ssh::Ssh;
use crate::{Deadline, Result, VmError, ERROR_TAIL_LINES};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// How long QEMU gets to bring up its QMP socket after being spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a QMP `quit` gets before QEMU is killed.
const QUIT_GRACE: Duration = Duration::from_secs(10);
/// How often process state is polled.
const POLL: Duration = Duration::from_millis(50);
/// How often SSH is retried while waiting for the guest's sshd.
const SSH_RETRY: Duration = Duration::from_secs(1);
/// The longest a single SSH probe may take while waiting for sshd.
const SSH_PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long saving a machine's state may take (it is written to a local file).
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);
/// Attempts at starting QEMU when another process grabbed a picked port.
const PORT_ATTEMPTS: usize = 3;

/// How [`Vm::stop`] ended QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopHow {
    /// It had already exited.
    AlreadyExited,
    /// The guest shut down after the ACPI power button.
    PoweredOff,
    /// The guest ignored the power button; QMP `quit` ended QEMU.
    Quit,
    /// QEMU did not react to `quit` either and was killed.
    Killed,
}

/// The outcome of [`Vm::stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    pub how: StopHow,
    pub status: ExitStatus,
}

/// A QEMU process booting [`VmSpec::disk`]. Dropping it kills QEMU if it
/// still runs.
pub struct Vm {
    spec: VmSpec,
    ports: Ports,
    /// Boot number, from 1; each boot has its own serial log.
    boot: u32,
    args: Vec<String>,
    child: Child,
    serial: SerialLog,
    serial_writer: Option<SerialWriter>,
}

impl Vm {
    /// Start QEMU and wait until its monitor answers. Forwarded ports are
    /// picked here and kept for every later boot of this `Vm`.
    pub fn start(spec: VmSpec) -> Result<Vm> {
        spec.validate()?;
        std::fs::create_dir_all(&spec.run_dir)
            .map_err(crate::io_err("creating the run directory", &spec.run_dir))?;
        let mut attempt = 1;
        loop {
            let ports = Ports::pick(&spec)?;
            match launch(&spec, &ports, 1) {
                Ok((child, args)) => {
                    let serial = SerialLog::new(spec.serial_log(1));
                    let mut vm = Vm {
                        spec,
                        ports,
                        boot: 1,
                        args,
                        child,
                        serial,
                        serial_writer: None,
                    };
                    if vm.spec.incoming.is_some() {
                        vm.resume_loaded()?;
                    }
                    return Ok(vm);
                }
                // Between picking a port and QEMU binding it another process
                // may take it; new ports make that rare race harmless.
                Err(VmError::StartFailed { tail, .. })
                    if attempt < PORT_ATTEMPTS && tail.contains("host forwarding rule") =>
                {
                    tracing::warn!("a forwarded port was taken; retrying with new ports");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// The 127.0.0.1 port forwarded to the guest's sshd (`ssh_forward`).
    pub fn ssh_port(&self) -> Option<u16> {
        self.ports.ssh
    }

    /// The 127.0.0.1 port forwarded to `guest_port` (port 22 included).
    pub fn forwarded_port(&self, guest_port: u16) -> Option<u16> {
        if guest_port == 22 && self.ports.ssh.is_some() {
            return self.ports.ssh;
        }
        self.ports
            .extra
            .iter()
            .find(|(g, _)| *g == guest_port)
            .map(|(_, h)| *h)
    }

    pub fn run_dir(&self) -> &Path {
        &self.spec.run_dir
    }

    /// The serial log of the current boot.
    pub fn serial_log_path(&self) -> &Path {
        self.serial.path()
    }

    /// The serial logs of all boots so far, oldest first.
    pub fn serial_log_paths(&self) -> Vec<PathBuf> {
        (1..=self.boot).map(|b| self.spec.serial_log(b)).collect()
    }

    /// Which boot this is, from 1.
    pub fn boot_number(&self) -> u32 {
        self.boot
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The QEMU command line of the current boot, shell-quoted for printing.
    pub fn command_line(&self) -> String {
        std::iter::once(self.spec.qemu.to_string_lossy().into_owned())
            .chain(self.args.iter().cloned())
            .map(|a| maculaos_runner::shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The QEMU arguments of the current boot (without the program).
    pub fn command_args(&self) -> &[String] {
        &self.args
    }

    // ---- serial console ----

    /// The whole serial log of the current boot (invalid UTF-8 replaced).
    pub fn serial_text(&self) -> String {
        self.serial.text()
    }

    /// The last `lines` lines of the serial log, without terminal escapes.
    pub fn serial_tail(&self, lines: usize) -> String {
        self.serial.tail(lines)
    }

    /// From now on, waits only look at serial output written after this point.
    pub fn mark_serial(&mut self) {
        self.serial.mark_end();
    }

    /// Wait until `pattern` (a plain substring) appears on the serial console
    /// after the mark. Fails early if QEMU exits.
    pub fn wait_for_serial(&mut self, pattern: &str, timeout: Duration) -> Result<()> {
        self.wait_for_serial_any(&[pattern], timeout).map(|_| ())
    }

    /// Wait for whichever of `patterns` appears first after the mark (say a
    /// login prompt or a kernel panic) and return its index.
    pub fn wait_for_serial_any(&mut self, patterns: &[&str], timeout: Duration) -> Result<usize> {
        let child = &mut self.child;
        let log = self.serial.path().to_owned();
        self.serial.wait_for_any(patterns, timeout, || {
            child
                .try_wait()
                .map_err(crate::io_err("checking on QEMU for", &log))
        })
    }

    /// Type `text` on the serial console (add `\n` to press Enter).
    pub fn send_serial(&mut self, text: &str) -> Result<()> {
        let socket = self.spec.serial_socket();
        if self.spec.serial_stdio {
            return Err(VmError::Invalid {
                what: "sending to the serial console".to_string(),
                detail: "serial_stdio is on: the console belongs to the terminal".to_string(),
            });
        }
        if let Some(status) = self.try_exit_status()? {
            return Err(VmError::Exited {
                what: format!("sending {text:?} to the serial console"),
                status: status.to_string(),
                log: self.serial.path().to_owned(),
                tail: self.serial.tail(ERROR_TAIL_LINES),
            });
        }
        let writer = match &mut self.serial_writer {
            Some(w) => w,
            None => self.serial_writer.insert(SerialWriter::connect(&socket)?),
        };
        writer.send(text.as_bytes(), &socket)
    }

    // ---- QMP ----

    /// A fresh QMP connection (one per call keeps no state to go stale).
    pub fn qmp(&self) -> Result<Qmp> {
        Qmp::connect(&self.spec.qmp_socket(), Duration::from_secs(5))
    }

    /// Press the ACPI power button.
    pub fn powerdown(&self) -> Result<()> {
        self.qmp()?.powerdown()
    }

    /// Make QEMU exit at once.
    pub fn quit(&self) -> Result<()> {
        self.qmp()?.quit()
    }

    /// The run state, e.g. `running`.
    pub fn query_status(&self) -> Result<String> {
        self.qmp()?.query_status()
    }

    /// Freeze the guest's CPUs (QMP `stop`): it neither runs nor answers,
    /// as a hung machine would, until [`Vm::resume`].
    pub fn pause(&self) -> Result<()> {
        self.qmp()?.execute("stop", None).map(|_| ())
    }

    /// Let a paused guest run again (QMP `cont`).
    pub fn resume(&self) -> Result<()> {
        self.qmp()?.execute("cont", None).map(|_| ())
    }

    /// Plug `image` in as one more virtio disk while the guest runs (QMP
    /// `blockdev-add` + `device_add`, ACPI PCI hotplug), as a USB stick
    /// would be; later boots of this machine keep it (`extra_drives`).
    pub fn plug_drive(&mut self, image: &Path) -> Result<()> {
        let filename = image.to_str().ok_or_else(|| VmError::Invalid {
            what: "plugging in a disk".to_string(),
            detail: format!("path {} is not UTF-8", image.display()),
        })?;
        let node = format!("plugged{}", self.spec.extra_drives.len());
        let mut q = self.qmp()?;
        q.execute(
            "blockdev-add",
            Some(serde_json::json!({
                "driver": "raw",
                "node-name": node,
                "discard": "unmap",
                "file": { "driver": "file", "filename": filename },
            })),
        )?;
        let added = q.execute(
            "device_add",
            Some(serde_json::json!({
                "driver": "virtio-blk-pci",
                "drive": node,
                "id": format!("{node}-dev"),
            })),
        );
        if let Err(e) = added {
            // Leave no block node behind to clash with a second try.
            let _ = q.execute(
                "blockdev-del",
                Some(serde_json::json!({ "node-name": node })),
            );
            return Err(e);
        }
        self.spec.extra_drives.push(image.to_owned());
        Ok(())
    }

    /// Wait until QEMU has loaded the saved state it was started with, then
    /// let the guest run: it was saved paused, and stays so until told.
    fn resume_loaded(&mut self) -> Result<()> {
        let deadline = Deadline::after(SAVE_TIMEOUT);
        let mut q = self.qmp()?;
        loop {
            let status = q.query_status()?;
            match status.as_str() {
                "inmigrate" if !deadline.expired() => deadline.pause(POLL),
                "paused" | "postmigrate" | "prelaunch" => {
                    q.execute("cont", None)?;
                    return Ok(());
                }
                "running" => return Ok(()),
                _ => {
                    let info = q.execute("query-migrate", None).unwrap_or_default();
                    return Err(VmError::Qmp {
                        socket: self.spec.qmp_socket(),
                        detail: format!(
                            "loading the saved state {}: QEMU is {status} ({info})",
                            self.spec
                                .incoming
                                .as_deref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default()
                        ),
                    });
                }
            }
        }
    }

    /// Save the machine's state (memory and devices) to `path` and end QEMU:
    /// a copy of the disk as it is now plus this file start the same machine
    /// again at this very point ([`VmSpec::incoming`]), in seconds instead
    /// of a boot. The guest is paused first, so disk and memory agree.
    pub fn save_state(&mut self, path: &Path) -> Result<()> {
        let partial = path.with_extension("partial");
        let target = partial.to_str().ok_or_else(|| VmError::Invalid {
            what: "saving the machine state".to_string(),
            detail: format!("path {} is not UTF-8", partial.display()),
        })?;
        let mut q = self.qmp()?;
        q.execute("stop", None)?;
        // QEMU throttles migration to 128 MiB/s by default; a file has no
        // reason to wait.
        q.execute(
            "migrate-set-parameters",
            Some(serde_json::json!({ "max-bandwidth": 8u64 << 30 })),
        )?;
        q.execute(
            "migrate",
            Some(serde_json::json!({
                "uri": format!("exec:cat > {}", maculaos_runner::shell_quote(target))
            })),
        )?;
        let deadline = Deadline::after(SAVE_TIMEOUT);
        loop {
            let info = q.execute("query-migrate", None)?;
            match info.get("status").and_then(serde_json::Value::as_str) {
                Some("completed") => break,
                Some(s @ ("failed" | "cancelled")) => {
                    let why = info
                        .get("error-desc")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("no reason given");
                    return Err(VmError::Qmp {
                        socket: self.spec.qmp_socket(),
                        detail: format!("saving the machine state to {target}: {s}: {why}"),
                    });
                }
                _ if deadline.expired() => {
                    return Err(self.timeout("the machine state to be saved", &deadline))
                }
                _ => deadline.pause(POLL),
            }
        }
        drop(q);
        self.quit()?;
        self.wait_exit(QUIT_GRACE)?;
        std::fs::rename(&partial, path).map_err(crate::io_err("renaming the saved state to", path))
    }

    // ---- lifecycle ----

    /// QEMU's exit status if it has exited, without waiting.
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        let log = self.serial.path().to_owned();
        self.child
            .try_wait()
            .map_err(crate::io_err("checking on QEMU for", log))
    }

    /// Whether QEMU still runs; an error when the guest is wedged (see
    /// [`VmError::GuestWedged`]), so every wait gives up at once.
    pub fn is_running(&mut self) -> Result<bool> {
        Ok(self.exited_or_wedged("the guest")?.is_none())
    }

    /// QEMU's exit status if it has exited; [`VmError::GuestWedged`] if its
    /// kernel reports a CPU stuck for minutes.
    fn exited_or_wedged(&mut self, what: &str) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.try_exit_status()? {
            return Ok(Some(status));
        }
        match self.serial.lockup() {
            Some(line) => Err(VmError::GuestWedged {
                what: what.to_string(),
                line,
                log: self.serial.path().to_owned(),
                tail: self.serial.tail(ERROR_TAIL_LINES),
            }),
            None => Ok(None),
        }
    }

    /// Wait for QEMU to exit by itself (guest power-off, or a reboot with
    /// `no_reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Deadline::after(timeout);
        loop {
            if let Some(s) = self.exited_or_wedged("QEMU to exit")? {
                self.serial_writer = None;
                return Ok(s);
            }
            if deadline.expired() {
                return Err(self.timeout("QEMU to exit", &deadline));
            }
            deadline.pause(POLL);
        }
    }

    /// Shut the machine down: ACPI power button and up to `timeout` for the
    /// guest to power off, then QMP `quit`, then kill. QEMU is gone afterwards
    /// whatever this returns.
    pub fn stop(&mut self, timeout: Duration) -> Result<Stopped> {
        if let Some(status) = self.try_exit_status()? {
            self.serial_writer = None;
            return Ok(Stopped {
                how: StopHow::AlreadyExited,
                status,
            });
        }
        match self.powerdown() {
            Ok(()) => {
                if let Ok(status) = self.wait_exit(timeout) {
                    return Ok(Stopped {
                        how: StopHow::PoweredOff,
                        status,
                    });
                }
                tracing::warn!(
                    "guest did not power off within {:.1}s; quitting QEMU",
                    timeout.as_secs_f64()
                );
            }
            Err(e) => tracing::warn!("power button failed ({e}); quitting QEMU"),
        }
        match self.quit() {
            Ok(()) => {
                if let Ok(status) = self.wait_exit(QUIT_GRACE) {
                    return Ok(Stopped {
                        how: StopHow::Quit,
                        status,
                    });
                }
                tracing::warn!("QEMU ignored quit; killing it");
            }
            Err(e) => tracing::warn!("QMP quit failed ({e}); killing QEMU"),
        }
        let status = self.kill()?;
        Ok(Stopped {
            how: StopHow::Killed,
            status,
        })
    }

    /// Kill QEMU (SIGKILL) and reap it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.serial_writer = None;
        if let Some(s) = self.try_exit_status()? {
            return Ok(s);
        }
        let log = self.serial.path().to_owned();
        // Fails only if it exited meanwhile; wait() below tells either way.
        let _ = self.child.kill();
        self.child
            .wait()
            .map_err(crate::io_err("reaping the killed QEMU for", log))
    }

    /// Boot the same machine again after QEMU exited (typically a guest
    /// reboot under `no_reboot`): same spec, same forwarded ports, the next
    /// serial log (`serial-2.log`, …) with the mark at its start.
    pub fn boot_again(&mut self) -> Result<()> {
        if self.try_exit_status()?.is_none() {
            return Err(VmError::StillRunning {
                what: "booting again".to_string(),
                pid: self.child.id(),
            });
        }
        self.serial_writer = None;
        let boot = self.boot + 1;
        let (child, args) = launch(&self.spec, &self.ports, boot)?;
        self.child = child;
        self.args = args;
        self.boot = boot;
        self.serial = SerialLog::new(self.spec.serial_log(boot));
        Ok(())
    }

    /// [`Vm::stop`] (if still running, with `timeout` for the guest to power
    /// off), then [`Vm::boot_again`].
    pub fn restart(&mut self, timeout: Duration) -> Result<Stopped> {
        let stopped = self.stop(timeout)?;
        self.boot_again()?;
        Ok(stopped)
    }

    // ---- SSH ----

    /// An [`Ssh`] for this VM's forwarded port.
    pub fn ssh(&self, key: impl Into<PathBuf>, user: impl Into<String>) -> Result<Ssh> {
        let port = self.ports.ssh.ok_or_else(|| VmError::Invalid {
            what: "SSH to the VM".to_string(),
            detail: "the VM was started without ssh_forward".to_string(),
        })?;
        Ok(Ssh::new(port, key, user))
    }

    /// Retry `true` over SSH until it succeeds. Fails early if QEMU exits;
    /// a timeout quotes ssh's last complaint and the serial log.
    pub fn wait_for_ssh(&mut self, ssh: &Ssh, timeout: Duration) -> Result<()> {
        let deadline = Deadline::after(timeout);
        // A shared connection of an earlier boot leads nowhere: the first
        // probe that gets in opens a new one.
        ssh.close_master();
        let mut last = String::from("no attempt finished");
        loop {
            let what = format!("SSH on 127.0.0.1:{}", ssh.port);
            if let Some(status) = self.exited_or_wedged(&what)? {
                return Err(VmError::Exited {
                    what: format!("SSH on 127.0.0.1:{} (last ssh error: {last})", ssh.port),
                    status: status.to_string(),
                    log: self.serial.path().to_owned(),
                    tail: self.serial.tail(ERROR_TAIL_LINES),
                });
            }
            let probe = deadline.remaining().min(SSH_PROBE_TIMEOUT);
            match ssh.run_timeout("true", probe) {
                Ok(out) if out.success() => return Ok(()),
                Ok(out) => {
                    last = format!("status {}: {}", out.status, out.stderr.trim());
                }
                Err(e @ VmError::SshTimeout { .. }) => last = e.to_string(),
                Err(e) => return Err(e),
            }
            if deadline.expired() {
                let what = format!("SSH on 127.0.0.1:{} (last ssh error: {last})", ssh.port);
                return Err(self.timeout(&what, &deadline));
            }
            deadline.pause(SSH_RETRY);
        }
    }

    fn timeout(&self, what: &str, deadline: &Deadline) -> VmError {
        VmError::Timeout {
            what: what.to_string(),
            waited: deadline.waited(),
            log: self.serial.path().to_owned(),
            tail: self.serial.tail(ERROR_TAIL_LINES),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            tracing::debug!(pid = self.child.id(), "killing QEMU left running");
            let _ = self.kill();
        }
    }
}

/// Spawn QEMU for boot number `boot` and wait until its QMP socket answers.
fn launch(spec: &VmSpec, ports: &Ports, boot: u32) -> Result<(Child, Vec<String>)> {
    let args = qemu_args(spec, ports, boot)?;
    let shown = std::iter::once(spec.qemu.to_string_lossy().into_owned())
        .chain(args.iter().cloned())
        .map(|a| maculaos_runner::shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    tracing::info!(command = %shown, "starting QEMU (boot {boot})");
    // Leftovers of an earlier QEMU in this run directory would be mistaken
    // for the new one's (a socket file answering nobody, an old log).
    for stale in [
        spec.qmp_socket(),
        spec.serial_socket(),
        spec.pidfile(),
        spec.serial_log(boot),
    ] {
        let _ = std::fs::remove_file(stale);
    }
    let qemu_log = spec.qemu_log();
    let mut cmd = Command::new(&spec.qemu);
    cmd.args(&args);
    // Only this boot's part of qemu.log is quoted if it fails to start.
    let mut log_start = 0;
    if spec.serial_stdio {
        cmd.stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
    } else {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&qemu_log)
            .map_err(crate::io_err("opening", &qemu_log))?;
        let _ = writeln!(log, "=== boot {boot}: {shown}");
        log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let err = log
            .try_clone()
            .map_err(crate::io_err("opening", &qemu_log))?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(err);
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            VmError::Run(maculaos_runner::RunError::NotFound {
                program: spec.qemu.to_string_lossy().into_owned(),
                hint: "apt-get install qemu-system-x86".to_string(),
            })
        } else {
            VmError::Spawn {
                command: shown.clone(),
                source: e,
            }
        }
    })?;
    let deadline = Deadline::after(START_TIMEOUT);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let text = std::fs::read(&qemu_log).unwrap_or_default();
                let start = usize::try_from(log_start).unwrap_or(0).min(text.len());
                return Err(VmError::StartFailed {
                    status: status.to_string(),
                    log: qemu_log,
                    tail: maculaos_runner::tail(
                        &String::from_utf8_lossy(&text[start..]),
                        ERROR_TAIL_LINES,
                    ),
                });
            }
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(crate::io_err("checking on QEMU started with", &qemu_log)(e));
            }
        }
        if Qmp::connect_once(&spec.qmp_socket()).is_ok() {
            return Ok((child, args));
        }
        if deadline.expired() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(VmError::Timeout {
                what: format!("QEMU's QMP socket {}", spec.qmp_socket().display()),
                waited: deadline.waited(),
                log: qemu_log.clone(),
                tail: maculaos_runner::tail(
                    &std::fs::read_to_string(&qemu_log).unwrap_or_default(),
                    ERROR_TAIL_LINES,
                ),
            });
        }
        deadline.pause(POLL);
    }
}
