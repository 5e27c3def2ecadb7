//! What every applicator shares: where the root is, what may be done, the
//! report, and the few file and command primitives (atomic, idempotent,
//! dry-run aware) the applicators are built from.

use crate::{Options, Report};
use maculaos_runner::{Cmd, RunError};
use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Owner of the system files we write.
pub(crate) const ROOT_OWNER: Option<(u32, u32)> = Some((0, 0));

/// First line of every generated file that allows comments: whoever opens it
/// learns where its content comes from and that editing it is pointless.
pub(crate) const HEADER: &str =
    "# Written by `maculaos apply` from the node configuration: edit the configuration, not this file.\n";

pub(crate) struct Applier<'a> {
    pub opts: &'a Options,
    pub report: Report,
    /// chown is only possible (and only meaningful) as root.
    as_root: bool,
    units: Units,
}

/// What systemd said of units during this run: a step often asks twice
/// (is it enabled, does it run), and each `systemctl` costs about 0.2 s of
/// CPU under emulation. Forgotten whenever [`systemctl`] may have changed a
/// unit. (One `systemctl is-active` or `show` for many units is no cheaper:
/// systemd answers unit by unit, about as slowly.)
#[derive(Default)]
struct Units {
    /// (unit, "is-active" or "is-enabled") → whether systemctl said yes.
    known: HashMap<(String, &'static str), bool>,
    /// [`CHANGES`] when `known` was filled.
    generation: u64,
}

/// Counts the `systemctl` runs that may change units (see [`Units`]).
static CHANGES: AtomicU64 = AtomicU64::new(0);

impl<'a> Applier<'a> {
    pub fn new(opts: &'a Options) -> Applier<'a> {
        Applier {
            opts,
            report: Report::default(),
            as_root: running_as_root(),
            units: Units::default(),
        }
    }

    /// A node path (`/etc/hostname`) under the root being configured.
    pub fn path(&self, node_path: &str) -> PathBuf {
        self.opts.root.join(node_path.trim_start_matches('/'))
    }

    /// Whether to look at and act on the running system (kernel, services).
    pub fn live(&self) -> bool {
        self.opts.live
    }

    pub fn dry_run(&self) -> bool {
        self.opts.dry_run
    }

    pub fn error(&mut self, area: &str, msg: impl AsRef<str>) {
        self.report.errors.push(format!("{area}: {}", msg.as_ref()));
    }

    pub fn note(&mut self, area: &str, msg: impl AsRef<str>) {
        self.report.notes.push(format!("{area}: {}", msg.as_ref()));
    }

    /// Whether `unit` runs (`systemctl is-active`). At boot none does:
    /// apply runs before sysinit.target, which every unit the steps ask
    /// about starts after (D-Bus too); not asking saves a `systemctl` each.
    pub fn unit_active(&mut self, unit: &str) -> bool {
        !self.opts.boot && self.ask_systemctl("is-active", unit)
    }

    /// Whether `unit` is enabled (`systemctl is-enabled`).
    pub fn unit_enabled(&mut self, unit: &str) -> bool {
        self.ask_systemctl("is-enabled", unit)
    }

    fn ask_systemctl(&mut self, query: &'static str, unit: &str) -> bool {
        let generation = CHANGES.load(Ordering::SeqCst);
        let units = &mut self.units;
        if units.generation != generation {
            units.known.clear();
            units.generation = generation;
        }
        *units
            .known
            .entry((unit.to_string(), query))
            .or_insert_with(|| {
                Cmd::new("systemctl")
                    .args([query, "--quiet", unit])
                    .quiet()
                    .run()
                    .is_ok()
            })
    }

    /// Record a change: `area: <past> <object>`, or in a dry run
    /// `would <present> <object> (area)`.
    pub fn change(&mut self, area: &str, present: &str, past: &str, object: &str) {
        let line = if self.opts.dry_run {
            format!("would {present} {object} ({area})")
        } else {
            format!("{area}: {past} {object}")
        };
        self.report.changes.push(line);
    }

    /// Do something that changes the node (unless this is a dry run) and
    /// record it; a failure goes to the errors as `area: <message>`.
    /// Returns whether it succeeded (a dry run always does).
    pub fn act(
        &mut self,
        area: &str,
        (present, past): (&str, &str),
        object: &str,
        f: impl FnOnce() -> Result<(), String>,
    ) -> bool {
        if self.opts.dry_run {
            self.change(area, present, past, object);
            return true;
        }
        match f() {
            Ok(()) => {
                self.change(area, present, past, object);
                true
            }
            Err(e) => {
                self.error(area, e);
                false
            }
        }
    }

    /// Make the file at `node_path` hold `content` with `mode` (and `owner`
    /// when running as root). Returns whether it changed (or would).
    pub fn put_file(
        &mut self,
        area: &str,
        node_path: &str,
        content: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<bool, String> {
        let path = self.path(node_path);
        let owner = owner.filter(|_| self.as_root);
        if file_matches(&path, content, mode, owner)? {
            return Ok(false);
        }
        if !self.opts.dry_run {
            write_atomic(&path, content, mode, owner)?;
        }
        self.change(area, "write", "wrote", node_path);
        Ok(true)
    }

    /// Make sure nothing is at `node_path`. Returns whether it changed (or would).
    pub fn remove_file(&mut self, area: &str, node_path: &str) -> Result<bool, String> {
        let path = self.path(node_path);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_msg("reading", &path, &e)),
            Ok(_) => {}
        }
        if !self.opts.dry_run {
            fs::remove_file(&path).map_err(|e| io_msg("removing", &path, &e))?;
        }
        self.change(area, "remove", "removed", node_path);
        Ok(true)
    }

    /// Make `node_path` a symlink to `target`. Returns whether it changed (or would).
    pub fn put_symlink(
        &mut self,
        area: &str,
        node_path: &str,
        target: &str,
    ) -> Result<bool, String> {
        let path = self.path(node_path);
        if fs::read_link(&path).is_ok_and(|t| t == Path::new(target)) {
            return Ok(false);
        }
        if !self.opts.dry_run {
            let tmp = tmp_path(&path)?;
            make_parent(&path)?;
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(target, &tmp)
                .map_err(|e| io_msg("creating the symlink", &tmp, &e))?;
            fs::rename(&tmp, &path).map_err(|e| io_msg("replacing", &path, &e))?;
        }
        self.change(area, "link", "linked", &format!("{node_path} to {target}"));
        Ok(true)
    }

    /// `systemctl ARGS --no-block UNIT` (at boot apply runs before
    /// sysinit.target, which a start waits for), recorded as a change.
    pub fn systemctl_unit(&mut self, area: &str, verbs: (&str, &str), args: &[&str], unit: &str) {
        let what = verbs.0;
        self.act(area, verbs, unit, || {
            let mut all = args.to_vec();
            all.extend(["--no-block", unit]);
            systemctl(&all).map_err(|e| format!("could not {what} {unit}: {e}"))
        });
    }

    /// Restart `unit` if it runs, so it reads the file we just changed. At
    /// boot it usually does not run yet, and will read the file when it starts.
    pub fn restart_if_active(&mut self, area: &str, unit: &str) {
        if !self.unit_active(unit) {
            return;
        }
        self.act(area, ("restart", "restarted"), unit, || {
            systemctl(&["restart", unit]).map_err(|e| format!("restarting {unit} failed: {e}"))
        });
    }
}

/// Run `systemctl ARGS`, which may change units (quietly; the error in one
/// line): what [`Applier`] knew of units is asked again afterwards.
pub(crate) fn systemctl(args: &[&str]) -> Result<(), String> {
    CHANGES.fetch_add(1, Ordering::SeqCst);
    let result = run(Cmd::new("systemctl").args(args));
    CHANGES.fetch_add(1, Ordering::SeqCst);
    result
}

/// Run quietly; the error says why in one line.
pub(crate) fn run(cmd: Cmd) -> Result<(), String> {
    cmd.quiet().run().map_err(|e| why(&e))
}

/// A runner error in one line: the last lines of what the command printed
/// and its exit status (the runner's own message repeats the command, which
/// our messages already name).
pub(crate) fn why(e: &RunError) -> String {
    match e {
        RunError::Failed {
            status, tail, log, ..
        } => {
            let last: Vec<&str> = tail.lines().filter(|l| !l.trim().is_empty()).collect();
            let last = last[last.len().saturating_sub(3)..].join("; ");
            let mut s = if last.is_empty() {
                status.clone()
            } else {
                format!("{last} ({status})")
            };
            if let Some(log) = log {
                s.push_str(&format!("; full output in {}", log.display()));
            }
            s
        }
        other => other.to_string(),
    }
}

/// An I/O error with what we were doing, where, and (when we can tell) what to do.
pub(crate) fn io_msg(action: &str, path: &Path, e: &std::io::Error) -> String {
    let hint = match e.kind() {
        ErrorKind::PermissionDenied => " (run `maculaos apply` as root)",
        ErrorKind::ReadOnlyFilesystem => " (this part of the system is read-only)",
        _ => "",
    };
    format!("{action} {}: {e}{hint}", path.display())
}

/// Whether the file already is what we want (a symlink or directory never is).
fn file_matches(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<bool, String> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_msg("reading", path, &e)),
    };
    if !meta.is_file() || meta.mode() & 0o7777 != mode {
        return Ok(false);
    }
    if owner.is_some_and(|(u, g)| (meta.uid(), meta.gid()) != (u, g)) {
        return Ok(false);
    }
    let current = fs::read(path).map_err(|e| io_msg("reading", path, &e))?;
    Ok(current == content)
}

/// `dir/.name.new`, next to the file so the rename stays on one filesystem.
fn tmp_path(path: &Path) -> Result<PathBuf, String> {
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} is not a file path", path.display()))?;
    Ok(path.with_file_name(format!(".{}.new", name.to_string_lossy())))
}

/// Create the parent directories (0755) of `path`.
fn make_parent(path: &Path) -> Result<(), String> {
    match path.parent() {
        Some(dir) => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| io_msg("creating the directory", dir, &e)),
        None => Ok(()),
    }
}

/// Write `.name.new`, then rename it over the file: a reader (or a power
/// cut) sees the old content or the new, never half of it.
pub(crate) fn write_atomic(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), String> {
    make_parent(path)?;
    let tmp = tmp_path(path)?;
    let result = write_tmp(&tmp, content, mode, owner)
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| io_msg("replacing", path, &e)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_tmp(
    tmp: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), String> {
    // A leftover from an interrupted run would make create_new fail.
    let _ = fs::remove_file(tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| io_msg("creating", tmp, &e))?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_msg("writing", tmp, &e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(tmp, Some(uid), Some(gid))
            .map_err(|e| io_msg("changing the owner of", tmp, &e))?;
    }
    // After chown, which clears setuid/setgid bits.
    fs::set_permissions(tmp, fs::Permissions::from_mode(mode))
        .map_err(|e| io_msg("setting the mode of", tmp, &e))
}

/// Whether this process runs with effective uid 0 (read from
/// /proc/self/status, which needs no unsafe call).
pub(crate) fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(root: &Path, dry_run: bool) -> Options {
        Options {
            root: root.to_owned(),
            dry_run,
            boot: false,
            live: false,
            run_commands: false,
        }
    }

    #[test]
    fn put_file_writes_once_with_mode() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path(), false);
        let mut a = Applier::new(&o);
        assert!(a.put_file("t", "/a/b/f", b"x\n", 0o640, None).unwrap());
        assert!(!a.put_file("t", "/a/b/f", b"x\n", 0o640, None).unwrap());
        let m = fs::metadata(d.path().join("a/b/f")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert!(
            a.put_file("t", "/a/b/f", b"x\n", 0o644, None).unwrap(),
            "mode differs"
        );
        assert_eq!(a.report.changes, vec!["t: wrote /a/b/f", "t: wrote /a/b/f"]);
        assert!(!d.path().join("a/b/.f.new").exists());
    }

    #[test]
    fn dry_run_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path(), true);
        let mut a = Applier::new(&o);
        assert!(a.put_file("t", "/f", b"x", 0o644, None).unwrap());
        assert!(a.put_symlink("t", "/l", "/dev/null").unwrap());
        fs::write(d.path().join("g"), "").unwrap();
        assert!(a.remove_file("t", "/g").unwrap());
        assert!(d.path().join("g").exists());
        assert!(!d.path().join("f").exists());
        assert_eq!(
            a.report.changes,
            vec![
                "would write /f (t)",
                "would link /l to /dev/null (t)",
                "would remove /g (t)"
            ]
        );
    }

    #[test]
    fn symlink_and_remove_are_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path(), false);
        let mut a = Applier::new(&o);
        assert!(a.put_symlink("t", "/x/l", "/dev/null").unwrap());
        assert!(!a.put_symlink("t", "/x/l", "/dev/null").unwrap());
        assert!(a.remove_file("t", "/x/l").unwrap());
        assert!(!a.remove_file("t", "/x/l").unwrap());
    }

    #[test]
    fn runner_errors_fit_on_a_line() {
        let e = Cmd::new("sh")
            .args(["-c", "echo a; echo b >&2; echo c >&2; echo d >&2; exit 4"])
            .quiet()
            .run()
            .unwrap_err();
        assert_eq!(why(&e), "b; c; d (exit code 4)");
        let e = Cmd::new("maculaos-no-such-tool").run().unwrap_err();
        // "was not found", or (a PATH entry we may not read) "Permission denied".
        assert!(why(&e).contains("maculaos-no-such-tool"), "{}", why(&e));
    }
}
