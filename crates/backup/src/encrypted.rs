//! Backups encrypted to age public keys: `<name>.tar.gz.age`, the usual
//! archive run through `age -e`, so a copy that leaves the node (a USB
//! stick, a file server) tells nothing without one of the private keys.
//!
//! The `age` command line tool does the cryptography (it is on the node
//! image); this module only runs it and keeps the plain archive from
//! lingering. The plain archive exists only inside a private (0700)
//! directory next to the backup, `.maculaos-backup-<pid>-XXXXXX.encrypting`
//! (or `.decrypting`), which is deleted on success and on every error; one
//! left by a process that was killed (Ctrl-C, a power cut, systemd stopping
//! the timer's service) is deleted by the next backup or restore there.
//!
//! Next to the backup rather than under /run: the archive is as large as
//! the node's data, and /run is a small RAM file system, while the backup
//! directory is on the data partition, outside every included path (the
//! config checks that), and already has to hold the archive. Being in the
//! same directory also makes the final rename atomic.

use std::fs::{self, OpenOptions, Permissions};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use maculaos_runner::{Cmd, RunError};
use tempfile::TempDir;

use crate::create::{dev_ino, parent_dir, persist, refuse_existing, write_archive};
use crate::{io_err, restore, verify, BackupError, Manifest, Phase, Progress, Report, Spec};

/// The ending that marks an encrypted backup (after `.tar.gz`).
pub(crate) const AGE_SUFFIX: &str = ".age";

/// How an age file starts: binary, and `age -a` armored.
const MAGIC: [&[u8]; 2] = [
    b"age-encryption.org/v1\n",
    b"-----BEGIN AGE ENCRYPTED FILE-----",
];

/// What the work directories are called: the pid says whose they are, so a
/// leftover of a dead process can be told from one in use.
const WORK_PREFIX: &str = ".maculaos-backup-";
const ENCRYPTING: &str = ".encrypting";
const DECRYPTING: &str = ".decrypting";

/// The `age` command line tool (Debian package `age`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Age {
    program: PathBuf,
}

impl Default for Age {
    /// `age` from `PATH`.
    fn default() -> Age {
        Age::at("age")
    }
}

impl Age {
    /// The program at `program` (tests use a stand-in).
    pub fn at(program: impl Into<PathBuf>) -> Age {
        Age {
            program: program.into(),
        }
    }

    fn cmd(&self) -> Cmd {
        Cmd::new(&self.program)
            .hint("install the `age` package: apt-get install age")
            .quiet()
    }

    /// `age -e -r R1 -r R2 … -o OUTPUT INPUT`.
    pub(crate) fn encrypt(
        &self,
        recipients: &[String],
        input: &Path,
        output: &Path,
    ) -> Result<(), RunError> {
        let mut cmd = self.cmd().arg("-e");
        for r in recipients {
            cmd = cmd.arg("-r").arg(r);
        }
        cmd.arg("-o").arg(output).arg(input).run()
    }

    /// `age -d -i IDENTITY -o OUTPUT INPUT`.
    pub(crate) fn decrypt(
        &self,
        identity: &Path,
        input: &Path,
        output: &Path,
    ) -> Result<(), RunError> {
        self.cmd()
            .arg("-d")
            .arg("-i")
            .arg(identity)
            .arg("-o")
            .arg(output)
            .arg(input)
            .run()
    }
}

pub(crate) fn has_age_suffix(path: &Path) -> bool {
    path.to_str().is_some_and(|p| p.ends_with(AGE_SUFFIX))
}

/// Whether `archive` is an encrypted backup: its name ends in `.age`, or
/// it starts like an age file (a backup renamed by hand).
pub fn is_encrypted(archive: &Path) -> bool {
    has_age_suffix(archive) || starts_like_age(archive).unwrap_or(false)
}

/// Whether the file begins with the age header. `list` uses it to tell an
/// encrypted backup from a damaged file without any key.
pub(crate) fn starts_like_age(path: &Path) -> std::io::Result<bool> {
    let mut head = Vec::new();
    fs::File::open(path)?.take(64).read_to_end(&mut head)?;
    Ok(MAGIC.iter().any(|m| head.starts_with(m)))
}

/// Like [`crate::create`], then encrypted to `recipients` (`age1…` or SSH
/// public keys) with `age`: `dest` must end in `.age` (see
/// [`crate::default_name`] and add `.age`). The plain archive is written in
/// a private directory beside `dest` and deleted once encrypted; the
/// encrypted file gets mode 0600 and is renamed to `dest` when whole. On
/// any error nothing is left behind.
pub fn create_encrypted(
    age: &Age,
    spec: &Spec,
    dest: &Path,
    recipients: &[String],
    progress: impl FnMut(Progress),
) -> Result<Report, BackupError> {
    create_encrypted_at(age, spec, dest, recipients, crate::create::now(), progress)
}

/// [`create_encrypted`] with the creation time given (tests).
pub(crate) fn create_encrypted_at(
    age: &Age,
    spec: &Spec,
    dest: &Path,
    recipients: &[String],
    created: u64,
    mut progress: impl FnMut(Progress),
) -> Result<Report, BackupError> {
    if recipients.is_empty() {
        return Err(BackupError::NoRecipients {
            path: dest.to_path_buf(),
        });
    }
    if !has_age_suffix(dest) {
        return Err(BackupError::Name {
            path: dest.to_path_buf(),
            problem: "an encrypted backup's name must end in .age (….tar.gz.age), so that \
                      it is known to need a key",
        });
    }
    refuse_existing(dest)?;
    let work = WorkDir::new(parent_dir(dest), ENCRYPTING)?;
    let plain = work.path().join("backup.tar.gz");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&plain)
        .map_err(io_err("create", &plain))?;
    // The work directory may sit inside an included tree: leave it, and
    // everything in it, out of the archive.
    let skip = [dev_ino(work.path())?];
    let report = write_archive(spec, &file, &skip, created, dest, &mut progress)?;
    drop(file);
    let encrypted = work.path().join("backup.tar.gz.age");
    let size = fs::metadata(&plain).map_or(0, |m| m.len());
    let step = |done| Progress {
        phase: Phase::Encrypting,
        path: dest.display().to_string(),
        done,
        total: size,
    };
    progress(step(0));
    age.encrypt(recipients, &plain, &encrypted)
        .map_err(|source| BackupError::Age {
            action: "encrypt",
            path: dest.to_path_buf(),
            source: Box::new(source),
        })?;
    // Gone as soon as it is not needed, not only with the directory.
    fs::remove_file(&plain).map_err(io_err("delete the unencrypted temporary archive", &plain))?;
    progress(step(size));
    persist(finished(&encrypted)?, dest)?;
    // Empty by now (the plain archive was deleted above, and checked), so
    // failing to remove it is not worth failing a good backup for.
    drop(work);
    Ok(report)
}

/// The file age wrote, made 0600 (age creates it 0666 less the umask; the
/// private directory kept it from others until now) and synced, as a
/// temporary file that [`persist`] can rename without overwriting.
fn finished(path: &Path) -> Result<tempfile::NamedTempFile, BackupError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open the encrypted archive", path))?;
    f.set_permissions(Permissions::from_mode(0o600))
        .map_err(io_err("set the mode of", path))?;
    f.sync_all().map_err(io_err("write", path))?;
    let tmp = tempfile::TempPath::try_from_path(path).map_err(io_err("open", path))?;
    Ok(tempfile::NamedTempFile::from_parts(f, tmp))
}

/// [`crate::verify`] of an encrypted backup: decrypted with the private key
/// in `identity` (an `age-keygen` key file or an SSH private key) to a
/// private temporary file, checked whole, and the temporary file deleted.
pub fn verify_encrypted(
    age: &Age,
    archive: &Path,
    identity: &Path,
) -> Result<Manifest, BackupError> {
    decrypted(age, archive, identity, &mut |_| {}, |plain, _| {
        verify(plain)
    })
}

/// [`crate::restore`] of an encrypted backup: decrypted with the private
/// key in `identity` to a private temporary file, which is checked whole
/// before anything is written, restored, and deleted whatever happens. A
/// key the backup was not encrypted to is refused before anything is
/// written.
pub fn restore_encrypted(
    age: &Age,
    archive: &Path,
    identity: &Path,
    root: &Path,
    mut progress: impl FnMut(Progress),
) -> Result<Report, BackupError> {
    decrypted(age, archive, identity, &mut progress, |plain, progress| {
        restore(plain, root, progress)
    })
}

/// Decrypts `archive` into a private work directory, runs `then` on the
/// plain copy, and deletes the directory on every path. Errors about the
/// plain copy are given the name of `archive`, the file the user knows.
fn decrypted<T>(
    age: &Age,
    archive: &Path,
    identity: &Path,
    progress: &mut dyn FnMut(Progress),
    then: impl FnOnce(&Path, &mut dyn FnMut(Progress)) -> Result<T, BackupError>,
) -> Result<T, BackupError> {
    // Checked here so that a typo in the key's path is not reported as
    // whatever age makes of it.
    fs::metadata(identity).map_err(io_err("read the private key file", identity))?;
    let size = fs::metadata(archive)
        .map_err(io_err("open", archive))?
        .len();
    let work = WorkDir::new(parent_dir(archive), DECRYPTING)?;
    let plain = work.path().join("backup.tar.gz");
    let step = |done| Progress {
        phase: Phase::Decrypting,
        path: archive.display().to_string(),
        done,
        total: size,
    };
    progress(step(0));
    age.decrypt(identity, archive, &plain)
        .map_err(|e| decrypt_error(archive, identity, e))?;
    progress(step(size));
    let out = then(&plain, progress).map_err(|e| renamed(e, &plain, archive))?;
    work.remove()?;
    Ok(out)
}

/// age says "no identity matched any of the recipients" when the key is
/// not one the file was encrypted to.
fn decrypt_error(archive: &Path, identity: &Path, e: RunError) -> BackupError {
    match &e {
        RunError::Failed { tail, .. } if tail.contains("no identity matched") => {
            BackupError::WrongKey {
                archive: archive.to_path_buf(),
                identity: identity.to_path_buf(),
            }
        }
        _ => BackupError::Age {
            action: "decrypt",
            path: archive.to_path_buf(),
            source: Box::new(e),
        },
    }
}

fn renamed(e: BackupError, plain: &Path, archive: &Path) -> BackupError {
    match e {
        BackupError::Invalid {
            archive: a,
            problem,
        } if a == plain => BackupError::Invalid {
            archive: archive.to_path_buf(),
            problem,
        },
        e => e,
    }
}

/// A private (0700) directory beside a backup for its plain archive,
/// deleted with everything in it when dropped.
struct WorkDir(TempDir);

impl WorkDir {
    fn new(dir: &Path, suffix: &str) -> Result<WorkDir, BackupError> {
        sweep_leftovers(dir);
        tempfile::Builder::new()
            .prefix(&format!("{WORK_PREFIX}{}-", std::process::id()))
            .suffix(suffix)
            .permissions(Permissions::from_mode(0o700))
            .tempdir_in(dir)
            .map(WorkDir)
            .map_err(io_err("create a private temporary directory in", dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Deletes it now and says so if that fails: it may hold a plain copy.
    fn remove(self) -> Result<(), BackupError> {
        let path = self.0.path().to_path_buf();
        self.0
            .close()
            .map_err(io_err("delete the temporary directory (it may hold an unencrypted copy of the backup: delete it by hand)", &path))
    }
}

/// Deletes the work directories in `dir` of processes that no longer run:
/// a killed backup or restore cannot clean up after itself, and what it
/// left may be a plain copy of an encrypted backup. Best effort: a
/// directory that cannot be read or deleted now is tried again next time.
fn sweep_leftovers(dir: &Path) {
    // Without /proc every process would look dead.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(items) = fs::read_dir(dir) else {
        return;
    };
    for item in items.flatten() {
        let name = item.file_name();
        let Some(pid) = name.to_str().and_then(leftover_pid) else {
            continue;
        };
        let is_dir = item.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_dir_all(item.path());
        }
    }
}

/// The pid in a work directory's name, `None` for any other name.
fn leftover_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_suffix(ENCRYPTING)
        .or_else(|| name.strip_suffix(DECRYPTING))?
        .strip_prefix(WORK_PREFIX)?;
    rest.split_once('-')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_names() {
        assert_eq!(
            leftover_pid(".maculaos-backup-123-AbC9xz.encrypting"),
            Some(123)
        );
        assert_eq!(leftover_pid(".maculaos-backup-7-x.decrypting"), Some(7));
        for other in [
            ".maculaos-backup-x.partial",
            ".maculaos-backup-abc-x.encrypting",
            "maculaos-backup-1-x.encrypting",
            ".maculaos-backup-1.encrypting",
        ] {
            assert_eq!(leftover_pid(other), None, "{other}");
        }
    }
}
