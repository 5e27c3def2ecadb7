//! Commands in the guest over the forwarded SSH port, with the system `ssh`
//! client and a throw-away test key.

use crate::{Deadline, Result, VmError};
use maculaos_runner::{shell_quote, Cmd, RunError};
use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Comment of the key [`test_key`] creates.
pub const TEST_KEY_COMMENT: &str = "maculaos-test";
/// File name of the private key [`test_key`] creates.
pub const TEST_KEY_NAME: &str = "id_ed25519_maculaos_test";

const SSH_HINT: &str = "apt-get install openssh-client";

/// What a remote command did. `status` is the exit code; 255 means ssh itself
/// failed (refused, auth, lost connection); 128+N means ssh died of signal N.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// How to reach a guest's sshd through a 127.0.0.1 port forward.
///
/// Commands share one SSH connection per (port, key, user) (OpenSSH's
/// connection multiplexing): under TCG a new connection costs the guest
/// about 2.4 s of CPU (key exchange, authentication, a PAM and logind
/// session), a command on an open one about 0.15 s. A check whose point is
/// the login itself (is this key accepted? does sshd answer?) uses
/// [`Ssh::fresh`]; [`crate::Vm::wait_for_ssh`] closes the connection of an
/// earlier boot before it probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssh {
    pub port: u16,
    pub key: PathBuf,
    pub user: String,
    /// Share one connection between commands (see above).
    pub multiplex: bool,
}

/// How long a shared connection stays open with no command on it.
const CONTROL_PERSIST_SECS: u32 = 120;

impl Ssh {
    pub fn new(port: u16, key: impl Into<PathBuf>, user: impl Into<String>) -> Ssh {
        Ssh {
            port,
            key: key.into(),
            user: user.into(),
            multiplex: true,
        }
    }

    /// The same, each command on a new connection that logs in afresh.
    pub fn fresh(&self) -> Ssh {
        Ssh {
            multiplex: false,
            ..self.clone()
        }
    }

    /// The shared connection's control socket: one per port, key and user
    /// (another key must authenticate on its own, never ride on this one).
    pub fn control_path(&self) -> PathBuf {
        // FNV-1a: a stable short name, not a secret.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let key = self.key.as_os_str().as_encoded_bytes();
        for b in key.iter().chain(b"\0").chain(self.user.as_bytes()) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        control_dir().join(format!("{}-{h:016x}", self.port))
    }

    /// End the shared connection, if one is open (after a reboot it would
    /// be a connection to a guest that is gone).
    pub fn close_master(&self) {
        if !self.control_path().exists() {
            return;
        }
        let child = Command::new("ssh")
            .args(["-F", "/dev/null", "-o"])
            .arg(format!("ControlPath={}", self.control_path().display()))
            .args(["-O", "exit", "-p", &self.port.to_string()])
            .arg(format!("{}@127.0.0.1", self.user))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        // The master answers at once; a socket nobody serves must not hang us.
        if let Ok(mut child) = child {
            let _ = wait_or_kill(&mut child, Duration::from_secs(5));
        }
        // A socket whose master is gone would only be unlinked by the next
        // client; gone now, so nothing can be mistaken for it.
        let _ = std::fs::remove_file(self.control_path());
    }

    /// Forward a free port on the host's 127.0.0.1 to `target` (`host:port`
    /// as the guest sees it, e.g. a service that listens on the guest's
    /// loopback only) over the shared connection, as an operator's
    /// `ssh -L` would; returns the host port. The forward lasts as long as
    /// the shared connection.
    pub fn forward(&self, target: &str) -> Result<u16> {
        // The shared connection first: the forward is asked of it.
        let shared = Ssh {
            multiplex: true,
            ..self.clone()
        };
        shared.check("true")?;
        let mut last = String::new();
        // The free port is chosen, then handed to ssh: another process may
        // take it in between, hence a few tries.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| VmError::Io {
                    what: "choosing a free port on 127.0.0.1".into(),
                    path: PathBuf::from("127.0.0.1"),
                    source: e,
                })?
                .port();
            let out = Command::new("ssh")
                .args(["-F", "/dev/null", "-o"])
                .arg(format!("ControlPath={}", shared.control_path().display()))
                .args(["-O", "forward", "-L"])
                .arg(format!("127.0.0.1:{port}:{target}"))
                .args(["-p", &self.port.to_string()])
                .arg(format!("{}@127.0.0.1", self.user))
                .stdin(Stdio::null())
                .output()
                .map_err(|e| spawn_error(e, format!("ssh -O forward -L {port}:{target}")))?;
            if out.status.success() {
                return Ok(port);
            }
            last = String::from_utf8_lossy(&out.stderr).trim().to_string();
        }
        Err(VmError::SshFailed {
            port: self.port,
            command: format!("ssh -O forward -L 127.0.0.1:PORT:{target}"),
            status: 255,
            stdout: String::new(),
            stderr: last,
        })
    }

    /// The `ssh` arguments that run `cmd` (a shell command line for the guest).
    pub fn args(&self, cmd: &str) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        // -F /dev/null: the user's ssh config (ProxyJump, their own
        // ControlMaster, other identities) must not change where or how the
        // test connects.
        for s in ["-F", "/dev/null", "-T", "-i"] {
            a.push(s.into());
        }
        a.push(self.key.clone().into_os_string());
        a.push("-p".into());
        a.push(self.port.to_string().into());
        for o in [
            // Every boot of every test image has a new host key.
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "ConnectTimeout=5",
            "LogLevel=ERROR",
            // Only the test key: an agent's keys could exhaust MaxAuthTries.
            "IdentitiesOnly=yes",
            // Notice a frozen or powered-off guest instead of hanging forever.
            "ServerAliveInterval=10",
            "ServerAliveCountMax=6",
        ] {
            a.push("-o".into());
            a.push(o.into());
        }
        let mux = if self.multiplex {
            vec![
                "ControlMaster=auto".to_string(),
                format!("ControlPath={}", self.control_path().display()),
                format!("ControlPersist={CONTROL_PERSIST_SECS}"),
            ]
        } else {
            vec![
                "ControlMaster=no".to_string(),
                "ControlPath=none".to_string(),
            ]
        };
        for o in mux {
            a.push("-o".into());
            a.push(o.into());
        }
        a.push(format!("{}@127.0.0.1", self.user).into());
        a.push("--".into());
        a.push(cmd.into());
        a
    }

    /// The ssh command line as a user could paste it into a shell.
    pub fn command_line(&self, cmd: &str) -> String {
        std::iter::once("ssh".to_string())
            .chain(
                self.args(cmd)
                    .iter()
                    .map(|a| shell_quote(&a.to_string_lossy())),
            )
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Run `cmd` in the guest and report its exit status and output; only a
    /// failure to run `ssh` at all is an error.
    pub fn run(&self, cmd: &str) -> Result<Output> {
        self.exec(cmd, None)
    }

    /// Like [`Ssh::run`], but kill `ssh` and fail once `timeout` has passed.
    pub fn run_timeout(&self, cmd: &str, timeout: Duration) -> Result<Output> {
        self.exec(cmd, Some(timeout))
    }

    /// Run `cmd` and return its stdout; a non-zero exit is an error quoting
    /// the status, stdout and stderr.
    pub fn check(&self, cmd: &str) -> Result<String> {
        self.check_output(self.run(cmd)?, cmd)
    }

    /// Like [`Ssh::check`] with a deadline.
    pub fn check_timeout(&self, cmd: &str, timeout: Duration) -> Result<String> {
        self.check_output(self.run_timeout(cmd, timeout)?, cmd)
    }

    fn check_output(&self, out: Output, cmd: &str) -> Result<String> {
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(VmError::SshFailed {
                port: self.port,
                command: cmd.to_string(),
                status: out.status,
                stdout: out.stdout,
                stderr: out.stderr,
            })
        }
    }

    // Not through maculaos_runner::Cmd: it turns a non-zero exit into an error
    // and drops stdout, while callers here need the exit code and both streams
    // (and a deadline).
    fn exec(&self, cmd: &str, timeout: Option<Duration>) -> Result<Output> {
        tracing::debug!(command = %self.command_line(cmd), "running");
        if self.multiplex {
            ensure_control_dir()?;
        }
        let mut child = Command::new("ssh")
            .args(self.args(cmd))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error(e, self.command_line(cmd)))?;
        // Read both pipes on threads so a chatty command cannot block on a full pipe.
        let out = maculaos_runner::drain(child.stdout.take());
        let err = maculaos_runner::drain(child.stderr.take());
        let wait_err = |e| VmError::Io {
            what: format!("waiting for `{}`", self.command_line(cmd)),
            path: PathBuf::from("ssh"),
            source: e,
        };
        let status = match timeout {
            None => child.wait().map_err(wait_err)?,
            Some(t) => match wait_or_kill(&mut child, t).map_err(wait_err)? {
                Some(s) => s,
                None => {
                    return Err(VmError::SshTimeout {
                        port: self.port,
                        command: cmd.to_string(),
                        waited: t,
                    })
                }
            },
        };
        Ok(Output {
            status: exit_code(status),
            stdout: String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned(),
            stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
        })
    }
}

/// Wait for `child` up to `timeout`; past it, kill it and return None.
fn wait_or_kill(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Deadline::after(timeout);
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if deadline.expired() {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        deadline.pause(Duration::from_millis(20));
    }
}

/// A socket path's room (`sun_path`, with its NUL).
const SUN_PATH_MAX: usize = 108;
/// `/PORT-HASH` plus the temporary suffix ssh adds while it binds.
const SOCKET_NAME_MAX: usize = 1 + 5 + 1 + 16 + 17;

fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

/// Where the shared connections' sockets live: private to this user, and
/// short (`/tmp` when `$TMPDIR` is too long for a socket path).
fn control_dir() -> PathBuf {
    let name = format!("maculaos-ssh-{}", my_uid());
    let dir = std::env::temp_dir().join(&name);
    if dir.as_os_str().len() + SOCKET_NAME_MAX < SUN_PATH_MAX {
        dir
    } else {
        Path::new("/tmp").join(name)
    }
}

/// Create the sockets' directory (ssh does not), and refuse one that
/// another user could have planted: whoever serves a socket there would
/// receive the commands, sudo ones included.
fn ensure_control_dir() -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = control_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(crate::io_err("creating the SSH control directory", &dir))?;
    let meta = std::fs::symlink_metadata(&dir)
        .map_err(crate::io_err("checking the SSH control directory", &dir))?;
    if !meta.is_dir() || meta.uid() != my_uid() || meta.permissions().mode() & 0o077 != 0 {
        return Err(VmError::Invalid {
            what: format!("the SSH control directory {}", dir.display()),
            detail: "it is not a directory of this user's with mode 0700: remove it".to_string(),
        });
    }
    Ok(())
}

fn spawn_error(e: std::io::Error, command: String) -> VmError {
    if e.kind() == std::io::ErrorKind::NotFound {
        VmError::Run(RunError::NotFound {
            program: "ssh".to_string(),
            hint: SSH_HINT.to_string(),
        })
    } else {
        VmError::Spawn { command, source: e }
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// The ed25519 test key in `dir` (created on first use, passphrase-less,
/// comment `maculaos-test`): its private key path and its public key line
/// for `authorized_keys`.
///
/// Safe to call concurrently: a new key is generated under a temporary name
/// and hard-linked into place, so exactly one key ever lands there, and the
/// public line is always derived from that private key.
pub fn test_key(dir: &Path) -> Result<(PathBuf, String)> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    std::fs::create_dir_all(dir).map_err(crate::io_err("creating the key directory", dir))?;
    let key = dir.join(TEST_KEY_NAME);
    if !key.exists() {
        let tmp = dir.join(format!(
            ".{TEST_KEY_NAME}.{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp_pub = with_suffix(&tmp, ".pub");
        // ssh-keygen asks before overwriting, which fails without a terminal.
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&tmp_pub);
        Cmd::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                TEST_KEY_COMMENT,
                "-f",
            ])
            .arg(&tmp)
            .quiet()
            .hint(SSH_HINT)
            .run()?;
        match std::fs::hard_link(&tmp, &key) {
            Ok(()) => {
                let _ = std::fs::rename(&tmp_pub, with_suffix(&key, ".pub"));
            }
            // Another caller won the race; use its key.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(crate::io_err("installing the test key", &key)(e)),
        }
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(&tmp_pub);
    }
    let public = Cmd::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&key)
        .quiet()
        .hint(SSH_HINT)
        .output()?;
    let mut line = public.trim().to_string();
    if line.split_whitespace().count() < 3 {
        // Older ssh-keygen -y leaves the comment out.
        line = format!("{line} {TEST_KEY_COMMENT}");
    }
    Ok((key, line))
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ssh_arguments() {
        let s = Ssh::new(40022, "/k/id", "root");
        let line = s.command_line("cat /etc/os-release | head -1");
        assert!(
            line.starts_with("ssh -F /dev/null -T -i /k/id -p 40022 "),
            "{line}"
        );
        for o in [
            "-o StrictHostKeyChecking=no",
            "-o UserKnownHostsFile=/dev/null",
            "-o BatchMode=yes",
            "-o ConnectTimeout=5",
            "-o LogLevel=ERROR",
        ] {
            assert!(line.contains(o), "{line}");
        }
        assert!(
            line.ends_with(" root@127.0.0.1 -- 'cat /etc/os-release | head -1'"),
            "{line}"
        );
        // Commands share a connection; a fresh one logs in on its own.
        let path = s.control_path();
        assert!(line.contains("-o ControlMaster=auto"), "{line}");
        assert!(
            line.contains(&format!("-o ControlPath={}", path.display())),
            "{line}"
        );
        let fresh = s.fresh().command_line("true");
        assert!(fresh.contains("-o ControlMaster=no"), "{fresh}");
        assert!(fresh.contains("-o ControlPath=none"), "{fresh}");
    }

    #[test]
    fn each_port_key_and_user_has_its_own_shared_connection() {
        let a = Ssh::new(40022, "/k/id", "macula");
        assert_eq!(
            a.control_path(),
            Ssh::new(40022, "/k/id", "macula").control_path()
        );
        for other in [
            Ssh::new(40023, "/k/id", "macula"),
            Ssh::new(40022, "/k/id2", "macula"),
            Ssh::new(40022, "/k/id", "root"),
        ] {
            assert_ne!(a.control_path(), other.control_path(), "{other:?}");
        }
        // Short enough for a socket path, with ssh's temporary suffix.
        assert!(a.control_path().as_os_str().len() + 17 < SUN_PATH_MAX);
    }

    #[test]
    fn key_is_created_once_and_reused() {
        if !maculaos_runner::have("ssh-keygen") {
            eprintln!("note: ssh-keygen is not installed; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (k1, pub1) = test_key(dir.path()).unwrap();
        let (k2, pub2) = test_key(dir.path()).unwrap();
        assert_eq!(k1, k2);
        assert_eq!(pub1, pub2);
        assert!(pub1.starts_with("ssh-ed25519 "), "{pub1}");
        assert!(pub1.ends_with(" maculaos-test"), "{pub1}");
        let on_disk = std::fs::read_to_string(with_suffix(&k1, ".pub")).unwrap();
        assert_eq!(on_disk.trim(), pub1);
        // Only the key pair is left, no temporaries.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn failed_command_keeps_status_and_output() {
        if !maculaos_runner::have("ssh") {
            eprintln!("note: ssh is not installed; skipping");
            return;
        }
        // A port that takes connections and closes them at once: ssh itself
        // fails. The listener is held for the whole test, so nothing else
        // can take the port (a freed port could be, or could even connect
        // to itself).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        });
        let s = Ssh::new(port, "/nonexistent/key", "root");
        let out = s.run("true").unwrap();
        assert_eq!(out.status, 255);
        let e = s.check("echo hi").unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "ssh 127.0.0.1:{port} `echo hi` exited with status 255"
            )),
            "{e}"
        );
        assert!(e.contains("stderr:"), "{e}");
    }
}
