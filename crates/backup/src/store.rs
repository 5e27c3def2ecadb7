//! Backups in a directory: names, listing, retention.

use std::fs;
use std::path::{Path, PathBuf};

use crate::restore::peek;
use crate::{io_err, BackupError};

const PREFIX: &str = "maculaos-backup-";
const SUFFIX: &str = ".tar.gz";

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
    let stamp: String = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_time),
    )
    .to_string()
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
    /// From the manifest; `None` when damaged.
    pub created: Option<u64>,
    pub hostname: Option<String>,
    /// Why the manifest could not be read. Only the manifest is read:
    /// listing a directory of large backups stays fast; [`crate::verify`]
    /// checks the rest.
    pub damaged: Option<String>,
}

/// The backups (`maculaos-backup-*.tar.gz` regular files) in `dir`, newest
/// first by the time in their manifest; damaged ones are listed last, not
/// hidden, so a failing disk or a bad copy is noticed.
pub fn list(dir: &Path) -> Result<Vec<Listed>, BackupError> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let item = item.map_err(io_err("list", dir))?;
        let path = item.path();
        let ours = item
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX));
        let md = item.metadata().map_err(io_err("inspect", &path))?;
        if !ours || !md.is_file() {
            continue;
        }
        let listed = match peek(&path) {
            Ok(m) => Listed {
                path,
                size: md.len(),
                created: Some(m.created),
                hostname: Some(m.hostname),
                damaged: None,
            },
            Err(e) => Listed {
                path,
                size: md.len(),
                created: None,
                hostname: None,
                damaged: Some(e.to_string()),
            },
        };
        out.push(listed);
    }
    // None sorts below Some, so descending puts damaged ones last; the name
    // breaks ties between backups made in the same second.
    out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.path.cmp(&a.path)));
    Ok(out)
}

/// Retention: deletes the readable backups in `dir` beyond the newest
/// `keep` and returns what it deleted (`keep == 0` deletes them all).
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
