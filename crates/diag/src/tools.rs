//! The external commands the diagnostics run, all through
//! [`maculaos_runner::Cmd`], and the one connection they open (the
//! Internet check). Tests point `PATH` at a directory of fake tools (or at
//! nothing) to get missing and failing commands on purpose, and give the
//! Internet check its outcome instead of going out.

use crate::network::{self, Reach};
use maculaos_runner::{shell_quote, Cmd, RunError};
use std::ffi::OsString;
use std::path::Path;

/// Where commands are looked up: the process's `PATH`, or another one.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tools {
    path: Option<OsString>,
    /// What the Internet check finds, instead of trying (tests).
    internet: Option<Reach>,
}

/// How a command whose output went to a file ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Exit code 0.
    Ok,
    /// Not on `PATH`.
    Missing,
    /// Ran and exited unsuccessfully: its status (`exit code 1`) and the
    /// tail of its stderr.
    Failed { status: String, stderr: String },
    /// Could not be started or talked to.
    Error(String),
}

impl Outcome {
    /// For the bundle's MANIFEST: `exit code 0`, `not found`…
    pub(crate) fn status(&self) -> String {
        match self {
            Outcome::Ok => "exit code 0".into(),
            Outcome::Missing => "not found (not installed)".into(),
            Outcome::Failed { status, stderr } => {
                match stderr.lines().find(|l| !l.trim().is_empty()) {
                    Some(first) => format!("{status}: {}", first.trim()),
                    None => status.clone(),
                }
            }
            Outcome::Error(e) => format!("could not run: {e}"),
        }
    }
}

/// The command line as it would be typed.
pub(crate) fn display(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Tools {
    /// The running system's `PATH`.
    pub(crate) fn system() -> Tools {
        Tools::default()
    }

    /// Look commands up in `path` only, and never go out: the Internet
    /// check finds no address (tests).
    #[cfg(test)]
    pub(crate) fn with_path(path: impl Into<OsString>) -> Tools {
        Tools {
            path: Some(path.into()),
            internet: Some(Reach::NoAddress("not tried in tests".into())),
        }
    }

    /// The Internet check finds `reach` (tests).
    #[cfg(test)]
    pub(crate) fn with_internet(mut self, reach: Reach) -> Tools {
        self.internet = Some(reach);
        self
    }

    /// Resolve `host` and connect to `port` (see [`network::reach`]).
    pub(crate) fn reach(&self, host: &str, port: u16) -> Reach {
        match &self.internet {
            Some(r) => r.clone(),
            None => network::reach(host, port),
        }
    }

    /// Whether `program` can be run.
    pub(crate) fn have(&self, program: &str) -> bool {
        match &self.path {
            None => maculaos_runner::have(program),
            Some(p) => std::env::split_paths(p).any(|d| d.join(program).is_file()),
        }
    }

    pub(crate) fn cmd(&self, program: &str) -> Cmd {
        let c = Cmd::new(program);
        match &self.path {
            Some(p) => c.env("PATH", p),
            None => c,
        }
    }

    /// Run and return stdout; a failure keeps stderr for its message.
    pub(crate) fn output(&self, program: &str, args: &[&str]) -> Result<String, RunError> {
        self.cmd(program).args(args).quiet().output()
    }

    /// Run `program args` with its stdout going to `out` (kept whatever the
    /// exit status: `maculaos health --json` prints its report and exits 1
    /// when a check fails, and that report is what support wants). Goes
    /// through `/bin/sh` since the runner returns stdout only on success.
    pub(crate) fn run_to_file(&self, program: &str, args: &[&str], out: &Path) -> Outcome {
        if !self.have(program) {
            return Outcome::Missing;
        }
        let cmd = self
            .cmd("/bin/sh")
            .args([
                "-c",
                "exec \"$@\" >\"$MACULAOS_DIAG_STDOUT\"",
                "sh",
                program,
            ])
            .args(args)
            .env("MACULAOS_DIAG_STDOUT", out)
            .quiet();
        match cmd.output() {
            Ok(_) => Outcome::Ok,
            Err(RunError::Failed { status, tail, .. }) => {
                // `exec` could not start the program after all (raced away,
                // not executable): the shell says so with 126 or 127.
                if matches!(status.as_str(), "exit code 126" | "exit code 127")
                    && tail.starts_with("sh: ")
                {
                    return Outcome::Error(tail.trim().to_string());
                }
                Outcome::Failed {
                    status,
                    stderr: tail,
                }
            }
            Err(RunError::NotFound { .. }) => Outcome::Error("/bin/sh is missing".into()),
            Err(e) => Outcome::Error(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn stdout_is_kept_when_the_command_fails() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let t = Tools::system();
        let o = t.run_to_file(
            "sh",
            &["-c", "echo '{\"a\":1}'; echo bad >&2; exit 3"],
            &out,
        );
        assert_eq!(
            o,
            Outcome::Failed {
                status: "exit code 3".into(),
                stderr: "bad".into()
            }
        );
        assert_eq!(fs::read_to_string(&out).unwrap(), "{\"a\":1}\n");
        assert_eq!(o.status(), "exit code 3: bad");
        assert_eq!(t.run_to_file("sh", &["-c", "echo ok"], &out), Outcome::Ok);
        assert_eq!(fs::read_to_string(&out).unwrap(), "ok\n");
    }

    #[test]
    fn missing_tools_are_reported_not_run() {
        let d = tempfile::tempdir().unwrap();
        let t = Tools::with_path(d.path());
        assert!(!t.have("ip"));
        assert_eq!(
            t.run_to_file("ip", &["addr"], &d.path().join("o")),
            Outcome::Missing
        );
        assert!(matches!(
            t.output("ip", &["addr"]),
            Err(RunError::NotFound { .. })
        ));
    }

    #[test]
    fn command_lines_are_quoted() {
        assert_eq!(
            display("journalctl", &["-b", "-1", "-o", "short-iso"]),
            "journalctl -b -1 -o short-iso"
        );
        assert_eq!(display("getent", &["hosts", "a b"]), "getent hosts 'a b'");
    }
}
