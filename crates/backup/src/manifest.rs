//! `manifest.json`, the first member of every backup.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Manifest format written by this version. A reader refuses other formats
/// rather than guess what a newer writer meant.
pub const FORMAT: u32 = 1;
pub(crate) const MANIFEST_NAME: &str = "manifest.json";
pub(crate) const FILES_DIR: &str = "files";

/// Top of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Unix seconds when the backup was made.
    pub created: u64,
    pub hostname: String,
    /// Sorted by path, so a directory comes before what it holds.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// One backed-up path. The manifest, not the tar header, is what restore
/// applies: tar headers cannot hold nanoseconds or every uid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Absolute node path (`/var/lib/data/a.txt`).
    pub path: String,
    pub kind: Kind,
    /// Content bytes for files, 0 otherwise.
    pub size: u64,
    /// Hex sha256 of the contents; files only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Permission bits including setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    #[serde(default)]
    pub mtime_nsec: u32,
    /// Where a symlink points, as stored in the link (not resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Entry {
    /// The path relative to the node's `/`.
    pub(crate) fn rel(&self) -> &Path {
        Path::new(self.path.trim_start_matches('/'))
    }

    /// The member name in the archive: `files/<path without leading />`.
    pub fn member(&self) -> PathBuf {
        Path::new(FILES_DIR).join(self.rel())
    }
}

impl Manifest {
    /// Checks what restore relies on before it trusts any path: plain
    /// absolute paths (no `..`, one spelling each), no duplicates, the
    /// fields each kind needs, and nothing listed below a symlink or a file
    /// (a member below a symlink would be written wherever the link points,
    /// possibly outside the restore root).
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "manifest format {} is not known to this MaculaOS (it reads format {FORMAT}): update MaculaOS",
                self.format
            ));
        }
        let mut kinds: HashMap<&str, Kind> = HashMap::new();
        for e in &self.entries {
            let p = Path::new(&e.path);
            let plain = p.is_absolute()
                && p.components()
                    .skip(1)
                    .all(|c| matches!(c, Component::Normal(_)))
                && p.components().collect::<PathBuf>().as_os_str() == p.as_os_str();
            if !plain {
                return Err(format!(
                    "manifest lists {:?}, which is not a plain absolute path",
                    e.path
                ));
            }
            if kinds.insert(&e.path, e.kind).is_some() {
                return Err(format!("manifest lists {} twice", e.path));
            }
            let sha_ok = e
                .sha256
                .as_deref()
                .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
            match e.kind {
                Kind::File if !sha_ok => {
                    return Err(format!("manifest has no valid sha256 for {}", e.path))
                }
                Kind::Symlink if e.target.is_none() => {
                    return Err(format!("manifest has no target for symlink {}", e.path))
                }
                _ => {}
            }
        }
        for e in &self.entries {
            for up in Path::new(&e.path).ancestors().skip(1) {
                if let Some(kind) = up.to_str().and_then(|s| kinds.get(s)) {
                    if *kind != Kind::Dir {
                        return Err(format!(
                            "manifest puts {} below {}, which is not a directory",
                            e.path,
                            up.display()
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
