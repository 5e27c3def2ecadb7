//! Backups in a directory: names, listing, retention.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::encrypted::{starts_like_age, AGE_SUFFIX};
use crate::restore::peek;
use crate::{io_err, BackupError};

const PREFIX: &str = "maculaos-backup-";
const SUFFIX: &str = ".tar.gz";

/// Unix seconds as `2024-01-15T02:00:00Z`.
pub fn utc(unix_time: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_time),
    )
    .to_string()
}

/// `maculaos-backup-<host>-<YYYYmmddTHHMMSSZ>.tar.gz`, in UTC so names sort
/// by time and mean the same on every node. Characters a hostname may not
/// hold are replaced by `-`, so the name is always one safe path component.
pub fn default_name(hostname: &str, unix_time: u64) -> String {
    let host: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let host = if host.is_empty() || host.starts_with('.') {
        format!("unknown{host}")
    } else {
        host
    };
    // `2024-01-15T02:00:00Z` → `20240115T020000Z`: sortable, no colons
    // (which some file systems and tools mishandle).
    let stamp: String = utc(unix_time)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!("{PREFIX}{host}-{stamp}{SUFFIX}")
}

/// One backup found by [`list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub path: PathBuf,
    /// Bytes on disk.
    pub size: u64,
    /// From the manifest; for an encrypted backup, whose manifest cannot be
    /// read without its key, the file's mtime. `None` when damaged.
    pub created: Option<u64>,
    /// From the manifest; `None` when encrypted or damaged.
    pub hostname: Option<String>,
    /// Why the manifest could not be read. Only the manifest is read:
    /// listing a directory of large backups stays fast; [`crate::verify`]
    /// checks the rest. An encrypted backup is only checked to start like
    /// an age file.
    pub damaged: Option<String>,
    /// Encrypted to age keys (`….tar.gz.age`).
    pub encrypted: bool,
}

/// The backups (`maculaos-backup-*.tar.gz` and `….tar.gz.age` regular
/// files) in `dir`, newest first by the time in their manifest (encrypted
/// ones: their mtime); damaged ones are listed last, not hidden, so a
/// failing disk or a bad copy is noticed.
pub fn list(dir: &Path) -> Result<Vec<Listed>, BackupError> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let item = item.map_err(io_err("list", dir))?;
        let path = item.path();
        let Some(encrypted) = item.file_name().to_str().and_then(kind_of) else {
            continue;
        };
        let md = item.metadata().map_err(io_err("inspect", &path))?;
        if !md.is_file() {
            continue;
        }
        out.push(if encrypted {
            listed_encrypted(path, &md)
        } else {
            listed_plain(path, &md)
        });
    }
    // None sorts below Some, so descending puts damaged ones last; the name
    // breaks ties between backups made in the same second.
    out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.path.cmp(&a.path)));
    Ok(out)
}

/// Whether a file name is one of our backups: `Some(encrypted)`.
fn kind_of(name: &str) -> Option<bool> {
    let stem = name.strip_prefix(PREFIX)?;
    if stem.ends_with(SUFFIX) {
        Some(false)
    } else {
        stem.strip_suffix(AGE_SUFFIX)?
            .ends_with(SUFFIX)
            .then_some(true)
    }
}

fn listed_plain(path: PathBuf, md: &fs::Metadata) -> Listed {
    let (created, hostname, damaged) = match peek(&path) {
        Ok(m) => (Some(m.created), Some(m.hostname), None),
        Err(e) => (None, None, Some(e.to_string())),
    };
    Listed {
        path,
        size: md.len(),
        created,
        hostname,
        damaged,
        encrypted: false,
    }
}

/// The manifest is out of reach without the key: the time is the file's
/// mtime, and only the age header is checked.
fn listed_encrypted(path: PathBuf, md: &fs::Metadata) -> Listed {
    let damaged = match starts_like_age(&path) {
        Ok(true) => None,
        Ok(false) => Some(format!(
            "{}: not an age-encrypted file (it does not start with the age header); \
             this backup cannot be trusted, use another one",
            path.display()
        )),
        Err(e) => Some(format!("cannot read {}: {e}", path.display())),
    };
    Listed {
        created: damaged.is_none().then(|| md.mtime().max(0) as u64),
        size: md.len(),
        hostname: None,
        damaged,
        encrypted: true,
        path,
    }
}

/// Retention: deletes the readable backups in `dir` beyond the newest
/// `keep` and returns what it deleted (`keep == 0` deletes them all).
/// Encrypted and plain backups count alike.
/// Damaged backups neither count nor get deleted: whether one is garbage or
/// a good backup on a flaky disk is for a person to decide.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, BackupError> {
    let mut deleted = Vec::new();
    for old in list(dir)?
        .into_iter()
        .filter(|l| l.damaged.is_none())
        .skip(keep)
    {
        fs::remove_file(&old.path).map_err(io_err("delete", &old.path))?;
        deleted.push(old.path);
    }
    Ok(deleted)
}
