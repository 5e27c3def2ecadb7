//! What the node remembers about updates, in the state directory
//! (`/var/lib/maculaos/updates`, on the persistent data partition):
//!
//! | file | content |
//! | --- | --- |
//! | `applied.json` | the last update written into a slot ([`AppliedRecord`]) |
//! | `bad-versions.json` | versions that failed their trial ([`BadVersion`]), newest last |
//!
//! Both are written whole (a sibling `.new`, fsync, rename, fsync of the
//! directory), so a power cut leaves the old file or the new one.

use crate::error::{io_err, Result};
use maculaos_boot::Slot;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const APPLIED_FILE: &str = "applied.json";
pub const BAD_VERSIONS_FILE: &str = "bad-versions.json";

/// A version that failed its trial: GRUB fell back from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadVersion {
    pub version: String,
    /// Why (GRUB's `maculaos_rollback`, e.g. "slot B was not marked good after 3 boots; booting slot A").
    pub reason: String,
    /// When it was remembered (unix seconds).
    pub at: u64,
}

impl BadVersion {
    /// [`Self::at`] as `2024-05-01 12:00 UTC`.
    pub fn date(&self) -> String {
        format_utc(self.at)
    }
}

/// `applied.json`: what the last apply wrote, so that a later rollback can be
/// pinned on a version (and an operator can see what was tried).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRecord {
    pub version: String,
    pub slot: Slot,
    pub sha256: String,
    pub bytes: u64,
    /// When the apply finished (unix seconds).
    pub at: u64,
    /// The version and slot that were running when it was applied.
    pub from_version: String,
    pub from_slot: Slot,
}

/// The versions remembered as bad, oldest first. A missing file means none;
/// an unreadable or damaged one counts as none too (it is only a guard
/// against re-trying a known failure, and `remember_bad` replaces it).
pub fn bad_versions(state_dir: &Path) -> Vec<BadVersion> {
    fs::read(state_dir.join(BAD_VERSIONS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The entry for `version`, if it is remembered as bad (exact match: a
/// rebuild with other build metadata is another build).
pub fn find_bad(state_dir: &Path, version: &str) -> Option<BadVersion> {
    bad_versions(state_dir)
        .into_iter()
        .rev()
        .find(|b| b.version == version.trim())
}

/// Remember that `version` failed its trial, and why. Called by the CLI when
/// it sees that GRUB rolled back; [`crate::apply`] then refuses that version
/// unless forced. A version remembered again gets the new reason and date.
pub fn remember_bad(state_dir: &Path, version: &str, reason: &str) -> Result<()> {
    remember_bad_at(state_dir, version, reason, now())
}

pub(crate) fn remember_bad_at(
    state_dir: &Path,
    version: &str,
    reason: &str,
    at: u64,
) -> Result<()> {
    let version = version.trim().to_string();
    let mut list = bad_versions(state_dir);
    list.retain(|b| b.version != version);
    list.push(BadVersion {
        version,
        reason: reason.trim().to_string(),
        at,
    });
    write_json(&state_dir.join(BAD_VERSIONS_FILE), &list)
}

/// The last apply's record, if any.
pub fn last_applied(state_dir: &Path) -> Option<AppliedRecord> {
    fs::read(state_dir.join(APPLIED_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

pub(crate) fn record_applied(state_dir: &Path, record: &AppliedRecord) -> Result<()> {
    write_json(&state_dir.join(APPLIED_FILE), record)
}

/// Write `value` as pretty JSON at `path`, whole and durably.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| crate::UpgradeError::Io {
        what: format!("encoding {}", path.display()),
        source: e.into(),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Replace `path` with `bytes`: `<path>.new`, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let tmp = sibling(path, ".new");
    {
        let mut f =
            fs::File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(io_err(format!("writing {}", tmp.display())))?;
    }
    fs::rename(&tmp, path).map_err(io_err(format!(
        "renaming {} to {}",
        tmp.display(),
        path.display()
    )))?;
    sync_dir(dir)
}

/// `path` with `suffix` appended to its file name (`vmlinuz` → `vmlinuz.new`).
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Make renames and removals in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing directory {}", dir.display())))
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC` (nodes have no reliable time zone
/// database; UTC is unambiguous in logs and messages).
pub fn format_utc(secs: u64) -> String {
    let t = rfc3339(secs);
    // `2023-11-14T22:13:20Z` → `2023-11-14 22:13 UTC`.
    format!("{} {} UTC", &t[..10], &t[11..16])
}

/// Unix seconds as RFC 3339 UTC, `2023-11-14T22:13:20Z`.
fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}
