//! Checking and restoring a backup.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use nix::sys::stat::{futimens, utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use crate::manifest::{Entry, Kind, Manifest, MANIFEST_NAME};
use crate::{io_err, BackupError, Hashing, Phase, Progress, Report};

/// Largest manifest read: far above any real node's, small enough that a
/// hostile archive cannot make us allocate without bound.
const MAX_MANIFEST: u64 = 256 << 20;

type Archive = tar::Archive<GzDecoder<File>>;

fn open(archive: &Path) -> Result<Archive, BackupError> {
    let f = File::open(archive).map_err(io_err("open", archive))?;
    Ok(tar::Archive::new(GzDecoder::new(f)))
}

pub(crate) fn invalid(archive: &Path, problem: impl Into<String>) -> BackupError {
    BackupError::Invalid {
        archive: archive.to_path_buf(),
        problem: problem.into(),
    }
}

/// A read error inside the archive: the gzip or tar layer found it short
/// or inconsistent.
fn damaged(archive: &Path) -> impl Fn(io::Error) -> BackupError + '_ {
    move |e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            invalid(archive, "archive is truncated")
        } else {
            invalid(archive, format!("archive is damaged ({e})"))
        }
    }
}

/// Reads and checks the first member, which must be the manifest.
fn read_manifest<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    archive: &Path,
) -> Result<Manifest, BackupError> {
    let not_ours = || invalid(archive, "not a MaculaOS backup: no manifest.json first");
    let mut first = entries
        .next()
        .ok_or_else(not_ours)?
        .map_err(damaged(archive))?;
    if first.path().map_err(damaged(archive))? != Path::new(MANIFEST_NAME) {
        return Err(not_ours());
    }
    let mut json = Vec::new();
    (&mut first)
        .take(MAX_MANIFEST + 1)
        .read_to_end(&mut json)
        .map_err(damaged(archive))?;
    if json.len() as u64 > MAX_MANIFEST || json.len() as u64 != first.size() {
        return Err(invalid(archive, "manifest.json is too large or cut short"));
    }
    let manifest: Manifest = serde_json::from_slice(&json)
        .map_err(|e| invalid(archive, format!("manifest.json cannot be read: {e}")))?;
    manifest.check().map_err(|p| invalid(archive, p))?;
    Ok(manifest)
}

/// The manifest of `archive`, reading only its first member: for listing.
pub(crate) fn peek(archive: &Path) -> Result<Manifest, BackupError> {
    let mut ar = open(archive)?;
    let mut entries = ar.entries().map_err(damaged(archive))?;
    read_manifest(&mut entries, archive)
}

/// A member's name, refused if it could land outside the restore root.
fn member_path<R: Read>(m: &tar::Entry<'_, R>, archive: &Path) -> Result<PathBuf, BackupError> {
    let p = m.path().map_err(damaged(archive))?;
    if !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(invalid(
            archive,
            format!("{}: member path is absolute or contains `..`", p.display()),
        ));
    }
    Ok(p.into_owned())
}

/// Reads the whole archive and checks every member against the manifest:
/// presence, kind, size, sha256, symlink target, no member twice, none
/// extra, none escaping. Returns the manifest; nothing is written. An
/// encrypted backup is refused ([`BackupError::Encrypted`]): see
/// [`crate::verify_encrypted`].
pub fn verify(archive: &Path) -> Result<Manifest, BackupError> {
    verify_with(archive, &mut |_| {})
}

fn verify_with(
    archive: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Manifest, BackupError> {
    // Read as gzip it would only be "damaged": say what it needs instead.
    if crate::is_encrypted(archive) {
        return Err(BackupError::Encrypted {
            archive: archive.to_path_buf(),
        });
    }
    let mut ar = open(archive)?;
    let manifest;
    {
        let mut entries = ar.entries().map_err(damaged(archive))?;
        manifest = read_manifest(&mut entries, archive)?;
        let expected: HashMap<PathBuf, &Entry> =
            manifest.entries.iter().map(|e| (e.member(), e)).collect();
        let total = manifest.entries.iter().map(|e| e.size).sum();
        let mut done = 0;
        let mut seen = HashSet::new();
        for m in entries {
            let mut m = m.map_err(damaged(archive))?;
            let name = member_path(&m, archive)?;
            let bad = |what: String| invalid(archive, format!("{}: {what}", name.display()));
            let Some(e) = expected.get(&name) else {
                return Err(bad("not listed in the manifest".into()));
            };
            if !seen.insert(name.clone()) {
                return Err(bad("is in the archive twice".into()));
            }
            progress(Progress {
                phase: Phase::Verifying,
                path: e.path.clone(),
                done,
                total,
            });
            let t = m.header().entry_type();
            let kind_ok = match e.kind {
                Kind::File => t == EntryType::Regular,
                Kind::Dir => t == EntryType::Directory,
                Kind::Symlink => t == EntryType::Symlink,
            };
            if !kind_ok {
                return Err(bad(format!(
                    "is a {t:?} member, manifest says {:?}",
                    e.kind
                )));
            }
            if e.kind == Kind::Symlink {
                let link = m.link_name().map_err(damaged(archive))?;
                let link = link.as_deref().and_then(Path::to_str).unwrap_or_default();
                if Some(link) != e.target.as_deref() {
                    return Err(bad(format!(
                        "symlink target is {link:?}, manifest says {:?}",
                        e.target.as_deref().unwrap_or_default()
                    )));
                }
            }
            let mut h = Hashing::new(&mut m);
            io::copy(&mut h, &mut io::sink()).map_err(damaged(archive))?;
            let (size, sha) = h.finish();
            if size != e.size {
                return Err(bad(format!("size is {size}, manifest says {}", e.size)));
            }
            if e.kind == Kind::File && Some(&sha) != e.sha256.as_ref() {
                return Err(bad(format!(
                    "sha256 is {sha}, manifest says {}",
                    e.sha256.as_deref().unwrap_or_default()
                )));
            }
            done += size;
        }
        if let Some(e) = manifest
            .entries
            .iter()
            .find(|e| !seen.contains(&e.member()))
        {
            return Err(invalid(
                archive,
                format!(
                    "{}: listed in the manifest but not in the archive (archive is truncated or incomplete)",
                    e.member().display()
                ),
            ));
        }
    }
    // tar stops at its end marker; read on to the gzip trailer so its CRC and
    // length are checked too.
    io::copy(&mut ar.into_inner(), &mut io::sink()).map_err(damaged(archive))?;
    Ok(manifest)
}

/// Restores `archive` under `root` (`/` on the node).
///
/// The archive is verified whole first ([`verify`]), and every path is
/// checked for a conflict (a directory where the backup has a file, or the
/// reverse); if either fails nothing is written. Then each file is written
/// to a temporary name beside it, given its owner, mode and mtime, fsynced
/// and renamed over the old one, so an interrupted restore leaves every file
/// either old or new, never half. Directories get their mode, owner and
/// mtime after their contents.
///
/// Existing files and symlinks at backed-up paths are replaced. Files on
/// disk that are not in the backup are left alone: restore brings back what
/// was saved, it does not delete what came after.
///
/// Owners are set with chown; where the kernel refuses (not root), the
/// entry is counted in [`Report::owners_not_set`] instead of failing.
///
/// An encrypted backup is refused ([`BackupError::Encrypted`]): see
/// [`crate::restore_encrypted`].
pub fn restore(
    archive: &Path,
    root: &Path,
    mut progress: impl FnMut(Progress),
) -> Result<Report, BackupError> {
    let manifest = verify_with(archive, &mut progress)?;
    preflight(&manifest, root)?;

    let by_member: HashMap<PathBuf, &Entry> =
        manifest.entries.iter().map(|e| (e.member(), e)).collect();
    let total = manifest.entries.iter().map(|e| e.size).sum();
    let mut report = Report::default();
    let mut dirs = Vec::new();
    let mut ar = open(archive)?;
    let mut entries = ar.entries().map_err(damaged(archive))?;
    // Read again rather than skipped: catches the file being swapped since
    // verify (the per-file hashes below catch the rest).
    if read_manifest(&mut entries, archive)? != manifest {
        return Err(invalid(archive, "archive changed while being restored"));
    }
    for m in entries {
        let mut m = m.map_err(damaged(archive))?;
        let name = member_path(&m, archive)?;
        let Some(e) = by_member.get(&name).copied() else {
            return Err(invalid(archive, "archive changed while being restored"));
        };
        progress(Progress {
            phase: Phase::Restoring,
            path: e.path.clone(),
            done: report.bytes,
            total,
        });
        let target = root.join(e.rel());
        match e.kind {
            Kind::Dir => {
                if !target.is_dir() {
                    make_parent(&target)?;
                    // Private until its final mode is set after its contents.
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&target)
                        .map_err(io_err("create", &target))?;
                }
                dirs.push((e, target));
                report.dirs += 1;
            }
            Kind::File => {
                write_file(&mut m, e, &target, archive, &mut report)?;
                report.files += 1;
            }
            Kind::Symlink => {
                write_symlink(e, &target, &mut report)?;
                report.symlinks += 1;
            }
        }
    }
    // Deepest first, and after everything inside was written (which moves a
    // directory's mtime and may need write permission on it).
    for (e, target) in dirs.iter().rev() {
        set_owner(
            || std::os::unix::fs::chown(target, Some(e.uid), Some(e.gid)),
            target,
            &mut report,
        )?;
        fs::set_permissions(target, Permissions::from_mode(e.mode))
            .map_err(io_err("set the mode of", target))?;
        set_mtime(target, e, UtimensatFlags::FollowSymlink)?;
    }
    Ok(report)
}

/// Finds what restore would have to delete a directory for, before
/// anything is written.
fn preflight(manifest: &Manifest, root: &Path) -> Result<(), BackupError> {
    for e in &manifest.entries {
        let target = root.join(e.rel());
        let conflict = |problem| BackupError::Conflict {
            path: target.clone(),
            problem,
        };
        let here = match fs::symlink_metadata(&target) {
            Ok(md) => md,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_err("inspect", &target)(err)),
        };
        match e.kind {
            // A symlink to a directory is fine: the node may link a data
            // directory elsewhere, and restore writes through it.
            Kind::Dir if !target.is_dir() => {
                return Err(conflict(
                    "the backup has a directory here but the disk has a file or a broken symlink",
                ))
            }
            Kind::File | Kind::Symlink if here.is_dir() => {
                return Err(conflict(
                    "the backup has a file here but the disk has a directory",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn make_parent(target: &Path) -> Result<(), BackupError> {
    match target.parent() {
        Some(p) => fs::create_dir_all(p).map_err(io_err("create", p)),
        None => Ok(()),
    }
}

/// `.<name>.maculaos-restore` beside `target`: same directory, so the
/// final rename is atomic.
fn temp_beside(target: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(target.file_name().unwrap_or_default());
    name.push(".maculaos-restore");
    target.with_file_name(name)
}

/// Removes a temporary file on drop unless it was renamed into place.
struct Temp(Option<PathBuf>);

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

fn fresh_temp(target: &Path) -> Result<Temp, BackupError> {
    make_parent(target)?;
    let tmp = temp_beside(target);
    // Left over from an interrupted restore.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_err("remove the leftover", &tmp)(e))
        }
        _ => {}
    }
    Ok(Temp(Some(tmp)))
}

fn write_file(
    data: &mut impl Read,
    e: &Entry,
    target: &Path,
    archive: &Path,
    report: &mut Report,
) -> Result<(), BackupError> {
    let mut tmp = fresh_temp(target)?;
    let path = tmp.0.clone().unwrap_or_default();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("create", &path))?;
    let mut h = Hashing::new(data);
    io::copy(&mut h, &mut f).map_err(io_err("write", &path))?;
    let (size, sha) = h.finish();
    if size != e.size || Some(&sha) != e.sha256.as_ref() {
        return Err(invalid(archive, "archive changed while being restored"));
    }
    // chown before chmod: chown clears setuid/setgid bits.
    set_owner(
        || std::os::unix::fs::fchown(&f, Some(e.uid), Some(e.gid)),
        &path,
        report,
    )?;
    f.set_permissions(Permissions::from_mode(e.mode))
        .map_err(io_err("set the mode of", &path))?;
    futimens(f.as_raw_fd(), &TimeSpec::UTIME_OMIT, &mtime(e))
        .map_err(|err| io_err("set the mtime of", &path)(err.into()))?;
    f.sync_all().map_err(io_err("sync", &path))?;
    fs::rename(&path, target).map_err(io_err("replace", target))?;
    tmp.0 = None;
    report.bytes += size;
    Ok(())
}

fn write_symlink(e: &Entry, target: &Path, report: &mut Report) -> Result<(), BackupError> {
    let mut tmp = fresh_temp(target)?;
    let path = tmp.0.clone().unwrap_or_default();
    let link = e.target.as_deref().unwrap_or_default();
    std::os::unix::fs::symlink(link, &path).map_err(io_err("create", &path))?;
    set_owner(
        || std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid)),
        &path,
        report,
    )?;
    set_mtime(&path, e, UtimensatFlags::NoFollowSymlink)?;
    fs::rename(&path, target).map_err(io_err("replace", target))?;
    tmp.0 = None;
    Ok(())
}

/// Runs a chown; "permission denied" is counted, not fatal (see restore).
fn set_owner(
    chown: impl FnOnce() -> io::Result<()>,
    path: &Path,
    report: &mut Report,
) -> Result<(), BackupError> {
    match chown() {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            report.owners_not_set += 1;
            Ok(())
        }
        Err(e) => Err(io_err("set the owner of", path)(e)),
    }
}

fn mtime(e: &Entry) -> TimeSpec {
    TimeSpec::new(e.mtime, e.mtime_nsec.into())
}

fn set_mtime(path: &Path, e: &Entry, flag: UtimensatFlags) -> Result<(), BackupError> {
    utimensat(None, path, &TimeSpec::UTIME_OMIT, &mtime(e), flag)
        .map_err(|err| io_err("set the mtime of", path)(err.into()))
}
