//! Runs external tools (mmdebstrap, mksquashfs, sfdisk, mkfs, grub-*, qemu, ssh…).
//!
//! Every call is logged before it starts, and every failure becomes an error
//! that names the command, its exit status and the tail of what it printed, so
//! the user sees *which* tool failed and why without digging through logs.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// How many trailing lines of a failed command's output an error carries.
const TAIL_LINES: usize = 25;

/// A failure to run an external command.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program is not installed (not on `PATH`).
    #[error("`{program}` was not found: install it ({hint})")]
    NotFound { program: String, hint: String },
    /// The program ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}){}", fmt_tail(.tail, .log))]
    Failed {
        command: String,
        status: String,
        tail: String,
        log: Option<PathBuf>,
    },
    /// Starting or talking to the program failed.
    #[error("`{command}`: {source}")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

fn fmt_tail(tail: &str, log: &Option<PathBuf>) -> String {
    let mut s = String::new();
    if !tail.trim().is_empty() {
        s.push_str(":\n");
        s.push_str(tail.trim_end());
    }
    if let Some(log) = log {
        s.push_str(&format!("\n(full output in {})", log.display()));
    }
    s
}

/// A command to run. Build it like [`std::process::Command`], then call
/// [`Cmd::run`] (output shown or logged) or [`Cmd::output`] (stdout captured).
#[derive(Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    env_removed: Vec<OsString>,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    log: Option<PathBuf>,
    quiet: bool,
    hint: Option<String>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            env_removed: Vec::new(),
            cwd: None,
            stdin: None,
            log: None,
            quiet: false,
            hint: None,
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// Run without this variable even if our environment has it.
    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Self {
        self.env_removed.push(k.as_ref().to_owned());
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Feed these bytes to the command's standard input.
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// Append the command's stdout and stderr to this file instead of the
    /// terminal; a failure quotes the file's tail.
    pub fn log_to(mut self, path: impl AsRef<Path>) -> Self {
        self.log = Some(path.as_ref().to_owned());
        self
    }

    /// Capture output and show it only if the command fails.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// What to tell the user when the program is missing, e.g. "apt-get install squashfs-tools".
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The command line as a user could paste it into a shell.
    pub fn display(&self) -> String {
        let mut parts = vec![shell_quote(&self.program.to_string_lossy())];
        parts.extend(self.args.iter().map(|a| shell_quote(&a.to_string_lossy())));
        parts.join(" ")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for k in &self.env_removed {
            c.env_remove(k);
        }
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        c
    }

    fn spawn_error(&self, e: std::io::Error) -> RunError {
        if e.kind() == std::io::ErrorKind::NotFound {
            RunError::NotFound {
                program: self.program.to_string_lossy().into_owned(),
                hint: self
                    .hint
                    .clone()
                    .unwrap_or_else(|| "it is not on PATH".to_string()),
            }
        } else {
            RunError::Io {
                command: self.display(),
                source: e,
            }
        }
    }

    /// Run to completion. Output goes to the terminal, or to the log file, or
    /// (quiet) is kept for the error message.
    pub fn run(&self) -> Result<(), RunError> {
        self.exec(false).map(|_| ())
    }

    /// Run to completion and return what it printed on stdout.
    pub fn output(&self) -> Result<String, RunError> {
        self.exec(true)
            .map(|out| String::from_utf8_lossy(&out).into_owned())
    }

    /// Run and return stdout as bytes.
    pub fn output_bytes(&self) -> Result<Vec<u8>, RunError> {
        self.exec(true)
    }

    /// Run a command that goes on until stopped (a watcher such as
    /// `avahi-browse` without `-t`) for `how_long`, then kill it and return
    /// what it printed on stdout. Exiting earlier is fine when it succeeds;
    /// a failure is an error as with [`Cmd::output`].
    pub fn output_for(&self, how_long: std::time::Duration) -> Result<String, RunError> {
        tracing::debug!(command = %self.display(), ?how_long, "running for a while");
        let Ended(status, out, err) = self.run_until(how_long)?;
        match status {
            Some(s) if !s.success() => Err(self.failed(s, &err)),
            _ => Ok(String::from_utf8_lossy(&out).into_owned()),
        }
    }

    /// Run to completion within `how_long`: one that has not exited by then
    /// is killed, and that is a failure (a probe that hangs is not healthy).
    pub fn run_within(&self, how_long: std::time::Duration) -> Result<(), RunError> {
        tracing::debug!(command = %self.display(), ?how_long, "running with a deadline");
        let Ended(status, _, err) = self.run_until(how_long)?;
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(self.failed(s, &err)),
            None => Err(RunError::Failed {
                command: self.display(),
                status: format!("killed: still running after {how_long:?}"),
                tail: tail(&String::from_utf8_lossy(&err), TAIL_LINES),
                log: None,
            }),
        }
    }

    fn failed(&self, s: ExitStatus, err: &[u8]) -> RunError {
        RunError::Failed {
            command: self.display(),
            status: describe(s),
            tail: tail(&String::from_utf8_lossy(err), TAIL_LINES),
            log: None,
        }
    }

    /// Run with stdout and stderr captured until it exits or `how_long`
    /// has passed (then it is killed: no status).
    fn run_until(&self, how_long: std::time::Duration) -> Result<Ended, RunError> {
        let mut c = self.command();
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|e| self.spawn_error(e))?;
        let out_thread = drain(child.stdout.take());
        let err_thread = drain(child.stderr.take());
        let deadline = std::time::Instant::now() + how_long;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| self.io(e))? {
                break Some(status);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let out = out_thread.join().unwrap_or_default();
        let err = err_thread.join().unwrap_or_default();
        Ok(Ended(status, out, err))
    }

    fn exec(&self, capture_stdout: bool) -> Result<Vec<u8>, RunError> {
        tracing::debug!(command = %self.display(), "running");
        let mut c = self.command();
        c.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let log_file = match &self.log {
            Some(p) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| RunError::Io {
                        command: format!("opening log {}", p.display()),
                        source: e,
                    })?,
            ),
            None => None,
        };
        if let Some(f) = &log_file {
            let mut f2 = f;
            let _ = writeln!(f2, "$ {}", self.display());
        }
        let capture_stderr = self.quiet || capture_stdout && log_file.is_none();
        match (&log_file, capture_stdout, self.quiet) {
            (_, true, _) => {
                c.stdout(Stdio::piped());
            }
            (Some(f), false, _) => {
                c.stdout(Stdio::from(f.try_clone().map_err(|e| self.io(e))?));
            }
            (None, false, true) => {
                c.stdout(Stdio::piped());
            }
            (None, false, false) => {
                c.stdout(Stdio::inherit());
            }
        }
        match &log_file {
            Some(f) => {
                c.stderr(Stdio::from(f.try_clone().map_err(|e| self.io(e))?));
            }
            None if capture_stderr => {
                c.stderr(Stdio::piped());
            }
            None => {
                c.stderr(Stdio::inherit());
            }
        }
        let mut child = c.spawn().map_err(|e| self.spawn_error(e))?;
        if let Some(data) = &self.stdin {
            if let Some(mut sin) = child.stdin.take() {
                // A command may exit before reading all its input; that is
                // judged by its exit status, not by the broken pipe.
                let _ = sin.write_all(data);
            }
        }
        let stderr_thread = drain(child.stderr.take());
        let mut out = Vec::new();
        if let Some(mut so) = child.stdout.take() {
            so.read_to_end(&mut out).map_err(|e| self.io(e))?;
        }
        let status = child.wait().map_err(|e| self.io(e))?;
        let err = stderr_thread.join().unwrap_or_default();
        if status.success() {
            return Ok(out);
        }
        let mut text = String::from_utf8_lossy(&err).into_owned();
        if self.quiet && !capture_stdout {
            text = format!("{}{}", String::from_utf8_lossy(&out), text);
        }
        if let Some(p) = &self.log {
            text = std::fs::read_to_string(p).unwrap_or_default();
        }
        Err(RunError::Failed {
            command: self.display(),
            status: describe(status),
            tail: tail(&text, TAIL_LINES),
            log: self.log.clone(),
        })
    }

    fn io(&self, e: std::io::Error) -> RunError {
        RunError::Io {
            command: self.display(),
            source: e,
        }
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

impl RunError {
    /// The exit code of a program that ran and failed (tools such as
    /// e2fsck say different things with different codes).
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            RunError::Failed { status, .. } => status.strip_prefix("exit code ")?.parse().ok(),
            _ => None,
        }
    }
}

/// How a run with a deadline ended: its status (`None`: killed at the
/// deadline), stdout and stderr.
struct Ended(Option<ExitStatus>, Vec<u8>, Vec<u8>);

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// The last `n` lines of `text`.
/// Read a child's pipe to its end on a thread of its own, so a chatty
/// command cannot block on a full pipe while it is waited for.
pub fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Quote a word for a POSIX shell, only when it needs it.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A filesystem mounted with `mount` for as long as this lives. Dropped
/// (an error on the way, a panic), it is unmounted and its mount point
/// removed if empty, so nothing is left mounted behind; [`Mount::unmount`]
/// does the same now and reports a failure.
pub struct Mount {
    dir: PathBuf,
    mounted: bool,
}

impl Mount {
    /// `mount [-t FSTYPE] [-o OPTIONS] SOURCE DIR`, making `dir` first.
    pub fn new(
        source: impl AsRef<OsStr>,
        dir: &Path,
        fstype: Option<&str>,
        options: Option<&str>,
    ) -> Result<Mount, RunError> {
        std::fs::create_dir_all(dir).map_err(|source| RunError::Io {
            command: format!("mkdir -p {}", dir.display()),
            source,
        })?;
        let mut cmd = Cmd::new("mount").hint("apt-get install mount");
        if let Some(t) = fstype {
            cmd = cmd.args(["-t", t]);
        }
        if let Some(o) = options {
            cmd = cmd.args(["-o", o]);
        }
        cmd.arg(source).arg(dir).quiet().run()?;
        Ok(Mount {
            dir: dir.to_owned(),
            mounted: true,
        })
    }

    /// Where it is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unmount now.
    pub fn unmount(mut self) -> Result<(), RunError> {
        self.release()
    }

    fn release(&mut self) -> Result<(), RunError> {
        if self.mounted {
            Cmd::new("umount").arg(&self.dir).quiet().run()?;
            self.mounted = false;
        }
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// Whether `program` can be found on `PATH` (or is an existing path).
pub fn have(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_captured() {
        let out = Cmd::new("sh").args(["-c", "echo hi"]).output().unwrap();
        assert_eq!(out, "hi\n");
    }

    #[test]
    fn failure_names_command_status_and_output() {
        let err = Cmd::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .quiet()
            .run()
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`sh -c 'echo boom >&2; exit 3'` failed"),
            "{msg}"
        );
        assert!(msg.contains("exit code 3"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
    }

    #[test]
    fn missing_program_says_how_to_install() {
        let err = Cmd::new("maculaos-no-such-tool")
            .hint("apt-get install maculaos-no-such-tool")
            .run()
            .unwrap_err();
        assert!(matches!(err, RunError::NotFound { .. }));
        assert!(err
            .to_string()
            .contains("apt-get install maculaos-no-such-tool"));
    }

    #[test]
    fn stdin_is_fed() {
        let out = Cmd::new("cat").stdin("abc").output().unwrap();
        assert_eq!(out, "abc");
    }

    #[test]
    fn log_file_gets_output_and_error_quotes_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let err = Cmd::new("sh")
            .args(["-c", "echo line1; echo line2 >&2; false"])
            .log_to(&log)
            .run()
            .unwrap_err();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("line1") && text.contains("line2"));
        assert!(err.to_string().contains("line2"));
        assert!(err.to_string().contains("full output in"));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc-1.2"), "abc-1.2");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
    }

    #[test]
    fn run_within_fails_on_a_bad_exit_and_on_a_hang() {
        let t = std::time::Duration::from_secs(5);
        assert!(Cmd::new("true").run_within(t).is_ok());
        let e = Cmd::new("sh")
            .args(["-c", "echo why >&2; exit 3"])
            .run_within(t);
        assert!(matches!(e, Err(RunError::Failed { ref tail, .. }) if tail.contains("why")));
        let hang = Cmd::new("sleep")
            .arg("30")
            .run_within(std::time::Duration::from_millis(200));
        match hang {
            Err(RunError::Failed { status, .. }) => assert!(status.contains("killed"), "{status}"),
            other => panic!("a hung command passed: {other:?}"),
        }
    }

    #[test]
    fn output_for_stops_a_watcher_and_keeps_its_output() {
        // A watcher that would fail if it ran to its end: `Ok` means it was
        // stopped (a stopped command is not a failure). Its `sleep` leaves
        // our pipes alone, so the output is complete once the shell is
        // killed. The shell must have printed before it is stopped; a
        // machine too busy for that within the time given is tried again
        // with more.
        let watcher = Cmd::new("sh").args([
            "-c",
            "echo seen; sleep 30 </dev/null >/dev/null 2>&1; exit 3",
        ]);
        let mut out = String::new();
        for ms in [500, 5_000, 20_000] {
            out = watcher
                .output_for(std::time::Duration::from_millis(ms))
                .unwrap();
            if !out.is_empty() {
                break;
            }
        }
        assert_eq!(out, "seen\n");
        let err = Cmd::new("sh")
            .args(["-c", "echo bad >&2; exit 3"])
            .output_for(std::time::Duration::from_secs(120))
            .unwrap_err();
        assert!(err.to_string().contains("bad"), "{err}");
    }
}
