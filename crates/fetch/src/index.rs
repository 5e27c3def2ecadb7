//! The channel index, `<channel>/latest.json`: what a self-hosted source
//! (web server, directory) offers on one channel.
//!
//! ```json
//! {"format":1,"version":"0.2.0","arch":"amd64","channel":"stable",
//!  "bundle":"maculaos-0.2.0-amd64.mos","size":301989888,"sha256":"9f86…"}
//! ```
//!
//! `bundle` is a path relative to the index's directory, or an absolute
//! URL (`https://…`, `file:///…`); `size` and `sha256` are those of the
//! whole `.mos` file. The index is not signed: the bundle is, and a node
//! checks the bundle's signature before it uses it. The index only says
//! where to look; its sha256 catches a damaged download before the
//! signature check reads it.

use crate::download::hash_file;
use crate::error::{io_err, FetchError, Result};
use maculaos_bundle::Channel;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::Path;

/// File name of the channel index in each channel directory.
pub const INDEX_FILE: &str = "latest.json";
/// The index format this code writes and reads.
pub const INDEX_FORMAT: u32 = 1;

/// `latest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelIndex {
    pub format: u32,
    /// The MaculaOS version of the bundle.
    pub version: String,
    /// Debian architecture name (`amd64`).
    pub arch: String,
    pub channel: Channel,
    /// The bundle: relative to the index's directory, or an absolute URL.
    pub bundle: String,
    /// Size of the `.mos` file in bytes.
    pub size: u64,
    /// sha256 of the `.mos` file, lower-case hex.
    pub sha256: String,
}

/// Parse and check an index read from `url` for a node on `channel` and `arch`.
pub fn parse_index(bytes: &[u8], url: &str, channel: Channel, arch: &str) -> Result<ChannelIndex> {
    let bad = |reason: String| FetchError::BadIndex {
        url: url.to_string(),
        reason,
    };
    // The format first: a later format may have other fields, and "format 2
    // is not supported" says more than a missing field.
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let f: Format = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if f.format != INDEX_FORMAT {
        return Err(FetchError::IndexFormat {
            url: url.to_string(),
            found: f.format,
            supported: INDEX_FORMAT,
        });
    }
    let mut index: ChannelIndex = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if index.arch != arch {
        return Err(FetchError::WrongArch {
            url: url.to_string(),
            found: index.arch,
            node: arch.to_string(),
        });
    }
    if index.channel != channel {
        return Err(FetchError::WrongChannel {
            url: url.to_string(),
            found: index.channel.to_string(),
            wanted: channel.to_string(),
        });
    }
    if index.version.trim().is_empty() {
        return Err(bad("version is empty".into()));
    }
    if index.size == 0 {
        return Err(bad("size is 0".into()));
    }
    index.sha256 = index.sha256.to_ascii_lowercase();
    if !is_sha256(&index.sha256) {
        return Err(bad(format!(
            "sha256 {:?} is not 64 hex digits",
            index.sha256
        )));
    }
    let b = index.bundle.as_str();
    if b.is_empty() || b.starts_with('/') || (b.contains(':') && !b.contains("://")) {
        return Err(bad(format!(
            "bundle {b:?} is neither a path relative to the index nor an absolute URL"
        )));
    }
    check_name("bundle", bundle_name(b))?;
    Ok(index)
}

/// The file name of a bundle reference (its last path segment).
pub(crate) fn bundle_name(bundle: &str) -> &str {
    bundle.rsplit('/').next().unwrap_or(bundle)
}

/// Where the index's bundle is: `bundle` if it is an absolute URL, else
/// `bundle` under `index_dir` (a URL ending with `/`).
pub(crate) fn resolve(index_dir: &str, bundle: &str) -> String {
    if bundle.contains("://") {
        bundle.to_string()
    } else {
        format!("{index_dir}{}", bundle.trim_start_matches("./"))
    }
}

pub(crate) fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Bundle file names become files in the node's state directory: keep them
/// to one safe path component.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<()> {
    let bad = |reason| {
        Err(FetchError::BadName {
            what,
            value: name.to_string(),
            reason,
        })
    };
    let ext = format!(".{}", maculaos_bundle::EXTENSION);
    if !name.ends_with(&ext) || name.len() <= ext.len() {
        return bad("it does not end with .mos");
    }
    if name.starts_with('.') {
        return bad("it starts with a dot");
    }
    if name.len() > 200 {
        return bad("it is longer than 200 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._+~-".contains(c))
    {
        return bad("use letters, digits and . _ + ~ - only");
    }
    Ok(())
}

/// Write `<channel_dir>/latest.json` for the bundle at `bundle`, which must
/// be in `channel_dir` (the index names it relative to itself). Reads the
/// bundle's manifest for its version, arch and channel, and hashes the whole
/// file. The index is replaced whole (written beside it, then renamed), so a
/// node never reads half of one. Returns what was written.
///
/// The signature is not checked here (no trusted keys at hand); nodes check
/// it after downloading.
pub fn write_index(channel_dir: &Path, bundle: &Path) -> Result<ChannelIndex> {
    let name = bundle
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    check_name("bundle", &name)?;
    let canon =
        |p: &Path| fs::canonicalize(p).map_err(io_err(format!("looking up {}", p.display())));
    let parent = bundle.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = canon(parent.unwrap_or(Path::new(".")))?;
    if parent != canon(channel_dir)? {
        return Err(FetchError::BadName {
            what: "bundle",
            value: bundle.display().to_string(),
            reason: "it is not in the channel directory the index goes to: copy it there first",
        });
    }
    let manifest = maculaos_bundle::open(bundle)?.manifest().clone();
    let (size, hasher) = hash_file(bundle, u64::MAX)?;
    let index = ChannelIndex {
        format: INDEX_FORMAT,
        version: manifest.os_version,
        arch: manifest.arch,
        channel: manifest.channel,
        bundle: name,
        size,
        sha256: hex::encode(sha2::Digest::finalize(hasher)),
    };
    let mut bytes = serde_json::to_vec_pretty(&index).map_err(|e| FetchError::Io {
        what: "encoding the channel index".into(),
        source: e.into(),
    })?;
    bytes.push(b'\n');
    let path = channel_dir.join(INDEX_FILE);
    let tmp = channel_dir.join(format!(".{INDEX_FILE}.new"));
    let what = format!("writing {}", tmp.display());
    let mut f = fs::File::create(&tmp).map_err(io_err(what.clone()))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err(what))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(io_err(format!(
        "renaming {} to {}",
        tmp.display(),
        path.display()
    )))?;
    Ok(index)
}
