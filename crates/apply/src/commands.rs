//! `boot_cmd` (every boot) and `run_cmd` (once per change of the list).
//!
//! Commands run in the root directory, with their output appended to
//! `/var/log/maculaos/<list>.log` (started afresh each time the list runs,
//! so it never grows past one run); a failure quotes the end of it.

use crate::applier::{why, write_atomic, Applier};
use maculaos_config::{Command, Config};
use maculaos_runner::{Cmd, RunError};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

/// The hash of the last `run_cmd` list that ran to the end without a failure.
pub(crate) const RUN_CMD_STATE: &str = "/var/lib/maculaos/run_cmd.sha256";

pub(crate) fn boot_cmd(config: &Config, a: &mut Applier) -> Result<(), String> {
    const AREA: &str = "boot_cmd";
    if !a.opts.boot || config.boot_cmd.is_empty() {
        return Ok(());
    }
    if !may_run(a, AREA, config.boot_cmd.len()) {
        return Ok(());
    }
    let log = start_log(a, AREA)?;
    for c in &config.boot_cmd {
        run_one(a, AREA, c, log.as_deref());
    }
    Ok(())
}

pub(crate) fn run_cmd(config: &Config, a: &mut Applier) -> Result<(), String> {
    const AREA: &str = "run_cmd";
    if config.run_cmd.is_empty() {
        return Ok(());
    }
    let hash = list_hash(&config.run_cmd)?;
    let state = a.path(RUN_CMD_STATE);
    let last = fs::read_to_string(&state).unwrap_or_default();
    if last.trim() == hash {
        return Ok(());
    }
    if !may_run(a, AREA, config.run_cmd.len()) {
        return Ok(());
    }
    let log = start_log(a, AREA)?;
    // All of them, in order, even after a failure (as a shell script would);
    // the list counts as done only if every one succeeded, so a failed
    // run_cmd is tried again at the next apply.
    let mut all_ok = true;
    for c in &config.run_cmd {
        all_ok &= run_one(a, AREA, c, log.as_deref());
    }
    if all_ok && !a.dry_run() {
        write_atomic(&state, format!("{hash}\n").as_bytes(), 0o644, None)?;
    }
    Ok(())
}

/// Commands run only where asked to (the node itself, not an image or a
/// test root); elsewhere say what was skipped.
fn may_run(a: &mut Applier, area: &str, n: usize) -> bool {
    if a.opts.run_commands {
        return true;
    }
    a.note(
        area,
        format!(
            "{n} command(s) not run: commands run only when applying to the running node (root /)"
        ),
    );
    false
}

/// sha256 of the list as JSON: any change to a command changes it.
fn list_hash(cmds: &[Command]) -> Result<String, String> {
    let json = serde_json::to_vec(cmds).map_err(|e| format!("serializing the list: {e}"))?;
    Ok(hex::encode(Sha256::digest(json)))
}

/// An empty log for this run (none in a dry run, or if it cannot be made:
/// the output is then only quoted on failure).
fn start_log(a: &mut Applier, area: &str) -> Result<Option<PathBuf>, String> {
    if a.dry_run() {
        return Ok(None);
    }
    let log = a.path(&format!("/var/log/maculaos/{area}.log"));
    match write_atomic(&log, b"", 0o600, None) {
        Ok(()) => Ok(Some(log)),
        Err(e) => {
            a.note(area, format!("no log of the commands' output: {e}"));
            Ok(None)
        }
    }
}

/// Run one command; a failure goes to the errors. Returns whether it succeeded.
fn run_one(a: &mut Applier, area: &str, c: &Command, log: Option<&Path>) -> bool {
    let root = a.opts.root.clone();
    let shown = format!("`{}`", c.display());
    a.act(area, ("run", "ran"), &shown, || {
        let argv = c.argv();
        let Some((program, args)) = argv.split_first() else {
            return Err(
                "a command is empty: give a string, or a list of program and arguments".into(),
            );
        };
        let mut cmd = Cmd::new(program).args(args).current_dir(&root);
        cmd = match log {
            Some(l) => cmd.log_to(l),
            None => cmd.quiet(),
        };
        let header = format!("$ {}", cmd.display());
        cmd.run()
            .map_err(|e| format!("{shown} failed: {}", why(&own_output(e, &header))))
    })
}

/// The runner quotes the end of the log, which may hold the commands run
/// before this one: keep only what follows this command's `$ …` line.
fn own_output(e: RunError, header: &str) -> RunError {
    match e {
        RunError::Failed {
            command,
            status,
            tail,
            log,
        } => {
            let lines: Vec<&str> = tail.lines().collect();
            let start = lines
                .iter()
                .rposition(|l| *l == header)
                .map_or(0, |i| i + 1);
            RunError::Failed {
                command,
                status,
                tail: lines[start..].join("\n"),
                log,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{apply_twice, opts, yaml};
    use crate::Options;

    fn runner(root: &Path) -> Options {
        let mut o = opts(root);
        o.run_commands = true;
        o
    }

    fn out(root: &Path) -> String {
        fs::read_to_string(root.join("out")).unwrap_or_default()
    }

    #[test]
    fn run_cmd_runs_once_per_change_of_the_list() {
        let d = tempfile::tempdir().unwrap();
        let o = runner(d.path());
        let r = apply_twice(
            &yaml("run_cmd: ['echo x >> out', [sh, -c, 'echo y >> out']]"),
            &o,
        );
        assert!(
            r.changes
                .contains(&"run_cmd: ran `echo x >> out`".to_string()),
            "{r:?}"
        );
        assert!(
            r.changes
                .contains(&"run_cmd: ran `sh -c echo y >> out`".to_string()),
            "{r:?}"
        );
        assert_eq!(out(d.path()), "x\ny\n", "ran once");
        let state = fs::read_to_string(d.path().join("var/lib/maculaos/run_cmd.sha256")).unwrap();
        assert_eq!(state.trim().len(), 64);
        apply_twice(&yaml("run_cmd: ['echo z >> out']"), &o);
        assert_eq!(out(d.path()), "x\ny\nz\n", "a new list runs");
    }

    #[test]
    fn a_failed_run_cmd_is_retried() {
        let d = tempfile::tempdir().unwrap();
        let o = runner(d.path());
        let cfg = yaml(
            "run_cmd: ['echo a >> out; echo noise', 'echo oops >&2; exit 3', 'echo b >> out']",
        );
        let r = crate::apply(&cfg, &o);
        let log = d.path().join("var/log/maculaos/run_cmd.log");
        assert_eq!(
            r.errors,
            vec![format!(
                "run_cmd: `echo oops >&2; exit 3` failed: oops (exit code 3); full output in {}",
                log.display()
            )]
        );
        assert_eq!(out(d.path()), "a\nb\n", "the others ran");
        assert!(!d.path().join("var/lib/maculaos/run_cmd.sha256").exists());
        let r = crate::apply(&cfg, &o);
        assert_eq!(r.errors.len(), 1);
        assert_eq!(out(d.path()), "a\nb\na\nb\n", "tried again");
        assert!(fs::read_to_string(&log).unwrap().contains("noise"));
    }

    #[test]
    fn commands_run_only_when_allowed() {
        let d = tempfile::tempdir().unwrap();
        let cfg = yaml("run_cmd: ['echo x >> out']\nboot_cmd: ['echo b >> out']");
        let mut o = opts(d.path());
        o.boot = true;
        let r = crate::apply(&cfg, &o);
        assert_eq!(out(d.path()), "");
        assert!(r.notes.contains(
            &"run_cmd: 1 command(s) not run: commands run only when applying to the running node (root /)"
                .to_string()
        ), "{r:?}");
        let mut o = runner(d.path());
        o.dry_run = true;
        o.boot = true;
        let r = crate::apply(&cfg, &o);
        assert!(
            r.changes
                .contains(&"would run `echo b >> out` (boot_cmd)".to_string()),
            "{r:?}"
        );
        assert!(
            r.changes
                .contains(&"would run `echo x >> out` (run_cmd)".to_string()),
            "{r:?}"
        );
        assert_eq!(out(d.path()), "");
        assert!(!d.path().join("var").exists(), "a dry run writes nothing");
    }

    #[test]
    fn boot_cmd_runs_at_every_boot_only() {
        let d = tempfile::tempdir().unwrap();
        let cfg = yaml("boot_cmd: ['echo b >> out', 'false', []]");
        let mut o = runner(d.path());
        let r = crate::apply(&cfg, &o);
        assert!(
            r.errors.is_empty() && out(d.path()).is_empty(),
            "not at boot: {r:?}"
        );
        o.boot = true;
        for n in 1..=2 {
            let r = crate::apply(&cfg, &o);
            assert!(r
                .changes
                .contains(&"boot_cmd: ran `echo b >> out`".to_string()));
            assert_eq!(out(d.path()), "b\n".repeat(n));
            assert_eq!(r.errors.len(), 2, "{r:?}");
            assert!(
                r.errors[0].starts_with("boot_cmd: `false` failed: exit code 1; full output in "),
                "{r:?}"
            );
            assert_eq!(
                r.errors[1],
                "boot_cmd: a command is empty: give a string, or a list of program and arguments"
            );
        }
    }
}
