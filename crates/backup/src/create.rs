//! Making a backup.
//!
//! The manifest must be the first member but holds every file's sha256, so
//! files are read twice: a first pass hashes them for the manifest, the
//! second archives them and hashes again as it goes. If the second hash
//! differs, the file changed between the passes and the backup fails naming
//! it (the half-written temporary archive is deleted). That is simpler than
//! spooling file data aside and never yields an archive whose manifest
//! disagrees with its contents; the cost is that a file written all the
//! time makes the backup fail until it is excluded or the writer stopped.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};
use walkdir::WalkDir;

use crate::manifest::{Entry, Kind, Manifest, FORMAT, MANIFEST_NAME};
use crate::{io_err, BackupError, Hashing, Phase, Progress, Report, Spec};

/// Backs up `spec` into the new archive `dest` (refused if it exists; see
/// [`crate::default_name`] for a name). The archive is written to a
/// temporary file in `dest`'s directory, fsynced and renamed, so a power cut
/// leaves either no backup or a whole one under `dest`. It is created with
/// mode 0600: it holds the node's credentials. For an encrypted backup see
/// [`crate::create_encrypted`].
pub fn create(
    spec: &Spec,
    dest: &Path,
    progress: impl FnMut(Progress),
) -> Result<Report, BackupError> {
    create_at(spec, dest, now(), progress)
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// [`create`] with the creation time given, so tests can make backups of
/// different ages.
pub(crate) fn create_at(
    spec: &Spec,
    dest: &Path,
    created: u64,
    mut progress: impl FnMut(Progress),
) -> Result<Report, BackupError> {
    if crate::encrypted::has_age_suffix(dest) {
        return Err(BackupError::Name {
            path: dest.to_path_buf(),
            problem: "a name ending in .age marks an encrypted backup: give recipients to \
                      encrypt to, or name it ….tar.gz",
        });
    }
    refuse_existing(dest)?;
    let dir = parent_dir(dest);
    let tmp = tempfile::Builder::new()
        .prefix(".maculaos-backup-")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(io_err("create a temporary archive in", dir))?;
    // The destination may sit inside an included tree: never archive the
    // archive being written.
    let skip = [dev_ino(tmp.path())?];
    let report = write_archive(spec, tmp.as_file(), &skip, created, dest, &mut progress)?;
    tmp.as_file().sync_all().map_err(io_err("write", dest))?;
    persist(tmp, dest)?;
    Ok(report)
}

/// A backup is never written over an existing file: that may be the only
/// good backup there is.
pub(crate) fn refuse_existing(dest: &Path) -> Result<(), BackupError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(BackupError::Exists {
            path: dest.to_path_buf(),
        });
    }
    Ok(())
}

/// The directory `path` is in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Device and inode of `path`, to recognise it while walking the include
/// paths whatever name it is reached by.
pub(crate) fn dev_ino(path: &Path) -> Result<(u64, u64), BackupError> {
    let md = fs::symlink_metadata(path).map_err(io_err("inspect", path))?;
    Ok((md.dev(), md.ino()))
}

/// Renames the finished temporary `tmp` to `dest` (never over an existing
/// file) and syncs the directory, so the rename survives a power cut.
pub(crate) fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<(), BackupError> {
    tmp.persist_noclobber(dest).map_err(|e| {
        if e.error.kind() == io::ErrorKind::AlreadyExists {
            BackupError::Exists {
                path: dest.to_path_buf(),
            }
        } else {
            io_err("rename the finished archive to", dest)(e.error)
        }
    })?;
    let dir = parent_dir(dest);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

/// Writes the archive of `spec` to `file` (not synced). `skip`: device and
/// inode of what must not be archived, with everything below it (the
/// archive being written, or the private directory it is written in).
/// `dest` names the backup in errors.
pub(crate) fn write_archive(
    spec: &Spec,
    file: &File,
    skip: &[(u64, u64)],
    created: u64,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Report, BackupError> {
    let mut report = Report::default();
    let mut entries = scan(spec, skip, &mut report)?;

    let total: u64 = entries.values().map(|e| e.size).sum();
    let mut done = 0;
    for e in entries.values_mut().filter(|e| e.kind == Kind::File) {
        progress(Progress {
            phase: Phase::Hashing,
            path: e.path.clone(),
            done,
            total,
        });
        let path = spec.root.join(e.rel());
        let mut h = Hashing::new(open_file(&path)?);
        io::copy(&mut h, &mut io::sink()).map_err(io_err("read", &path))?;
        let (size, sha) = h.finish();
        e.size = size;
        e.sha256 = Some(sha);
        done += size;
    }

    let manifest = Manifest {
        format: FORMAT,
        created,
        hostname: hostname(&spec.root),
        entries: entries.into_values().collect(),
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| io_err("encode the manifest for", dest)(io::Error::other(e)))?;

    let write_err = || io_err("write", dest);
    let gz = GzEncoder::new(BufWriter::new(file), Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut h = header(EntryType::Regular, 0o600, 0, 0, created as i64);
    h.set_size(json.len() as u64);
    tar.append_data(&mut h, MANIFEST_NAME, json.as_slice())
        .map_err(write_err())?;

    let total: u64 = manifest.entries.iter().map(|e| e.size).sum();
    let mut done = 0;
    for e in &manifest.entries {
        progress(Progress {
            phase: Phase::Archiving,
            path: e.path.clone(),
            done,
            total,
        });
        let member = e.member();
        match e.kind {
            Kind::Dir => {
                let mut h = header(EntryType::Directory, e.mode, e.uid, e.gid, e.mtime);
                tar.append_data(&mut h, &member, io::empty())
                    .map_err(write_err())?;
                report.dirs += 1;
            }
            Kind::Symlink => {
                let mut h = header(EntryType::Symlink, e.mode, e.uid, e.gid, e.mtime);
                let target = e.target.as_deref().unwrap_or_default();
                tar.append_link(&mut h, &member, target)
                    .map_err(write_err())?;
                report.symlinks += 1;
            }
            Kind::File => {
                let path = spec.root.join(e.rel());
                let mut h = header(EntryType::Regular, e.mode, e.uid, e.gid, e.mtime);
                h.set_size(e.size);
                // take(): a file that grew is archived as the prefix that was
                // hashed; a file that changed otherwise fails the hash check.
                let mut r = Hashing::new(open_file(&path)?.take(e.size));
                tar.append_data(&mut h, &member, &mut r)
                    .map_err(io_err("archive", &path))?;
                let (size, sha) = r.finish();
                if size != e.size || Some(sha) != e.sha256 {
                    return Err(BackupError::Changed { path });
                }
                report.files += 1;
                report.bytes += size;
                done += size;
            }
        }
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .and_then(|buf| buf.into_inner().map_err(|e| e.into_error()))
        .map_err(write_err())?;
    Ok(report)
}

fn header(kind: EntryType, mode: u32, uid: u32, gid: u32, mtime: i64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(mtime.max(0) as u64);
    h.set_size(0);
    h
}

/// O_NOFOLLOW: if a file was swapped for a symlink between the scan and
/// now, fail instead of archiving whatever the link points at.
fn open_file(path: &Path) -> Result<File, BackupError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BackupError::Changed {
                path: path.to_path_buf(),
            },
            _ => io_err("read", path)(e),
        })
}

/// An include/exclude path relative to the node's `/`; refuses relative
/// paths and `..`, which would make "what is backed up" depend on guesses.
fn node_rel(p: &Path) -> Result<PathBuf, BackupError> {
    let bad = |problem| BackupError::Spec {
        path: p.to_path_buf(),
        problem,
    };
    if !p.is_absolute() {
        return Err(bad("not an absolute path"));
    }
    let mut rel = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => rel.push(n),
            _ => return Err(bad("contains `..`")),
        }
    }
    Ok(rel)
}

/// Walks the include paths: metadata of every entry, not yet hashed. A
/// BTreeMap so overlapping includes are stored once and in path order.
fn scan(
    spec: &Spec,
    skip: &[(u64, u64)],
    report: &mut Report,
) -> Result<BTreeMap<String, Entry>, BackupError> {
    let excludes = spec
        .exclude
        .iter()
        .map(|p| node_rel(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = BTreeMap::new();
    for inc in &spec.include {
        let start = spec.root.join(node_rel(inc)?);
        match fs::metadata(&start) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                report.missing.push(inc.clone());
                continue;
            }
            Err(e) => return Err(io_err("read", &start)(e)),
            Ok(_) => {}
        }
        let rel_of = |p: &Path| p.strip_prefix(&spec.root).unwrap_or(p).to_path_buf();
        // An include path that is itself a symlink is followed (walkdir's
        // default for the root): the user named the data, not the link.
        let walk = WalkDir::new(&start)
            .follow_links(false)
            .into_iter()
            .filter_entry(|d| {
                !excludes.iter().any(|x| rel_of(d.path()).starts_with(x)) && !skipped(d, skip)
            });
        for item in walk {
            let d = item.map_err(|e| {
                let path = e.path().unwrap_or(&start).to_path_buf();
                io_err("read", &path)(e.into())
            })?;
            let node = Path::new("/").join(rel_of(d.path()));
            let md = d
                .metadata()
                .map_err(|e| io_err("read", d.path())(e.into()))?;
            let kind = if md.is_dir() {
                Kind::Dir
            } else if md.is_file() {
                Kind::File
            } else if md.file_type().is_symlink() {
                Kind::Symlink
            } else {
                report.skipped.push(node);
                continue;
            };
            let target = match kind {
                Kind::Symlink => {
                    let t = fs::read_link(d.path()).map_err(io_err("read", d.path()))?;
                    match t.to_str() {
                        Some(t) => Some(t.to_string()),
                        None => {
                            report.skipped.push(node);
                            continue;
                        }
                    }
                }
                _ => None,
            };
            let Some(path) = node.to_str().map(str::to_string) else {
                report.skipped.push(node);
                continue;
            };
            let entry = Entry {
                path: path.clone(),
                kind,
                size: if kind == Kind::File { md.len() } else { 0 },
                sha256: None,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: md.mtime(),
                mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
                target,
            };
            out.insert(path, entry);
        }
    }
    Ok(out)
}

/// Whether a walked entry is one of `skip`. The inode walkdir read from the
/// directory is compared first, so only a likely match costs a stat.
fn skipped(d: &walkdir::DirEntry, skip: &[(u64, u64)]) -> bool {
    use walkdir::DirEntryExt;
    skip.iter().any(|&(dev, ino)| {
        d.ino() == ino && fs::symlink_metadata(d.path()).is_ok_and(|m| m.dev() == dev)
    })
}

/// The name to record: `<root>/etc/hostname`, else the kernel's hostname
/// (MaculaOS may set it without writing /etc/hostname), else "unknown".
fn hostname(root: &Path) -> String {
    let from_file = fs::read_to_string(root.join("etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if !from_file.is_empty() {
        return from_file;
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}
