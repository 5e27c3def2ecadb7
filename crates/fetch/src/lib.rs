//! Finding and downloading MaculaOS update bundles from `upgrade.url`.
//!
//! Three kinds of source ([`Source::parse`]):
//!
//! | `upgrade.url` | where the newest bundle of a channel is named |
//! | --- | --- |
//! | `https://HOST/PATH/` (or `http://`) | `<url><channel>/latest.json`, a [`ChannelIndex`] |
//! | `github://OWNER/REPO` | the repository's releases (see [`github`] for the channel rule) |
//! | `file:///DIR/` or `/DIR` | `DIR/<channel>/latest.json` if there, else the newest `.mos` in `DIR` |
//!
//! Channels: a node follows its channel and every more stable one (stable ⊂
//! beta ⊂ nightly, [`follows`]) and is offered the highest version among
//! them, so a beta node moves to a stable release that is newer than the
//! newest beta. With indexes that means reading `stable/latest.json` too.
//!
//! [`check`] says what the newest bundle is ([`Available`]); [`download`]
//! fetches it into a directory, resumably, checking the sha256 the source
//! gave. Neither trusts what it got: the caller verifies the bundle's
//! signature (`maculaos_bundle`) before using it.

mod download;
mod error;
pub mod github;
mod http;
mod index;
mod source;

pub use download::{free_space, DownloadOptions, Progress, PART_SUFFIX};
pub use error::{FetchError, Result};
pub use http::Client;
pub use index::{parse_index, write_index, ChannelIndex, INDEX_FILE, INDEX_FORMAT};
pub use maculaos_bundle::Channel;
pub use source::{Source, GITHUB_API};

use error::io_err;
use maculaos_bundle::compare_versions;
use serde::Serialize;
use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};

/// The newest bundle a source offers on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Available {
    /// Its MaculaOS version (as the source names it; the bundle's signed
    /// manifest is what counts once downloaded).
    pub version: String,
    /// File name to store it under (`maculaos-0.2.0-amd64.mos`).
    pub name: String,
    /// Where to get it: `https://…`, `http://…` or `file:///…`.
    pub url: String,
    /// Size of the `.mos` file in bytes.
    pub size: u64,
    /// sha256 of the `.mos` file, when the source says (channel indexes
    /// always do, GitHub for assets uploaded since mid-2025, a directory of
    /// bundles never).
    pub sha256: Option<String>,
    /// The channel it was published on (a beta node may be offered a stable
    /// release, see [`follows`]).
    pub channel: Channel,
}

/// Whether a node on channel `node` is offered bundles published on
/// `published`: each channel sees itself and every more stable one
/// (stable ⊂ beta ⊂ nightly).
pub fn follows(node: Channel, published: Channel) -> bool {
    let rank = |c: Channel| match c {
        Channel::Stable => 0,
        Channel::Beta => 1,
        Channel::Nightly => 2,
    };
    rank(published) <= rank(node)
}

/// What `source` offers on `channel` for `arch`, with a default [`Client`].
pub fn check(source: &Source, channel: Channel, arch: &str) -> Result<Available> {
    Client::new().check(source, channel, arch)
}

/// Download `available` into `dest_dir` with a default [`Client`] and
/// [`DownloadOptions`]; see [`Client::download`].
pub fn download(
    available: &Available,
    dest_dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf> {
    Client::new().download(available, dest_dir, &DownloadOptions::default(), progress)
}

impl Client {
    /// What `source` offers on `channel` for `arch` (see the crate documentation).
    pub fn check(&self, source: &Source, channel: Channel, arch: &str) -> Result<Available> {
        match source {
            Source::Http { base } => {
                // The node's own channel first: its 404 is the one to report
                // when no followed channel has an index.
                let mut first_missing = None;
                let mut found = Vec::new();
                for c in followed(channel) {
                    match self.http_index(base, c, arch) {
                        Ok(a) => found.push(a),
                        Err(e @ FetchError::NotFound { .. }) => {
                            first_missing.get_or_insert(e);
                        }
                        Err(e) => return Err(e),
                    }
                }
                match newest(found) {
                    Some(a) => Ok(a),
                    None => Err(first_missing.unwrap_or_else(|| FetchError::NoRelease {
                        source_name: base.clone(),
                        channel: channel.to_string(),
                    })),
                }
            }
            Source::GitHub { owner, repo, api } => {
                let url = Source::releases_url(owner, repo, api);
                let (status, headers, body) = self.get_small(
                    &url,
                    &[
                        ("Accept", "application/vnd.github+json"),
                        ("X-GitHub-Api-Version", "2022-11-28"),
                    ],
                )?;
                if status != 200 {
                    return Err(github::api_error(
                        &url,
                        status,
                        http::header(&headers, "x-ratelimit-remaining"),
                        http::header(&headers, "x-ratelimit-reset"),
                        &body,
                        unix_now(),
                    ));
                }
                let releases = github::parse_releases(&body, &url)?;
                github::pick(
                    &releases,
                    channel,
                    arch,
                    &format!("github://{owner}/{repo}"),
                )
            }
            Source::Dir { path } => check_dir(path, channel, arch),
        }
    }
}

impl Client {
    /// `<base><channel>/latest.json` as an [`Available`].
    fn http_index(&self, base: &str, channel: Channel, arch: &str) -> Result<Available> {
        let dir = format!("{base}{channel}/");
        let url = format!("{dir}{INDEX_FILE}");
        let (status, _, body) = self.get_small(&url, &[])?;
        match status {
            200 => {}
            404 => {
                return Err(FetchError::NotFound {
                    url,
                    hint: format!(
                        "no {channel} channel index there. Is upgrade.url (or --url) the base directory of the update server, and is the {channel} channel published (`maculaos-sdk publish`)?"
                    ),
                })
            }
            status => {
                return Err(FetchError::Http {
                    url,
                    status,
                    detail: String::new(),
                })
            }
        }
        let index = parse_index(&body, &url, channel, arch)?;
        Ok(from_index(index, &dir))
    }
}

/// The channels a node on `channel` follows, its own first.
fn followed(channel: Channel) -> Vec<Channel> {
    let mut all: Vec<Channel> = Channel::ALL
        .into_iter()
        .filter(|c| follows(channel, *c))
        .collect();
    all.sort_by_key(|c| *c != channel);
    all
}

/// The highest version; the first of equal ones (the node's own channel).
fn newest(candidates: Vec<Available>) -> Option<Available> {
    let mut best: Option<Available> = None;
    for c in candidates {
        if best
            .as_ref()
            .is_none_or(|b| compare_versions(&c.version, &b.version) == Ordering::Greater)
        {
            best = Some(c);
        }
    }
    best
}

fn from_index(index: ChannelIndex, index_dir: &str) -> Available {
    Available {
        name: index::bundle_name(&index.bundle).to_string(),
        url: index::resolve(index_dir, &index.bundle),
        version: index.version,
        size: index.size,
        sha256: Some(index.sha256),
        channel: index.channel,
    }
}

/// A directory source: its channel index if it has one, else the newest
/// bundle in it for `arch` on a channel the node follows (read from the
/// bundles' manifests; not verified here).
fn check_dir(dir: &Path, channel: Channel, arch: &str) -> Result<Available> {
    let mut indexed = Vec::new();
    for c in followed(channel) {
        let index_path = dir.join(c.as_str()).join(INDEX_FILE);
        if !index_path.is_file() {
            continue;
        }
        let bytes = fs::read(&index_path).map_err(io_err(format!(
            "reading the channel index {}",
            index_path.display()
        )))?;
        let index = parse_index(&bytes, &index_path.display().to_string(), c, arch)?;
        let index_dir = format!("file://{}/", dir.join(c.as_str()).display());
        indexed.push(from_index(index, &index_dir));
    }
    if let Some(a) = newest(indexed) {
        return Ok(a);
    }
    let entries = fs::read_dir(dir).map_err(io_err(format!(
        "reading the update directory {} (is it mounted?)",
        dir.display()
    )))?;
    let mut ignored = Vec::new();
    let mut candidates = Vec::new();
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == maculaos_bundle::EXTENSION)
        })
        .collect();
    paths.sort();
    for path in paths {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let manifest = match maculaos_bundle::open(&path) {
            Ok(b) => b.manifest().clone(),
            Err(e) => {
                ignored.push(format!("{file}: {e}"));
                continue;
            }
        };
        if manifest.arch != arch {
            ignored.push(format!("{file} is for {}", manifest.arch));
            continue;
        }
        if !follows(channel, manifest.channel) {
            ignored.push(format!("{file} is on channel {}", manifest.channel));
            continue;
        }
        let size = fs::metadata(&path)
            .map_err(io_err(format!("reading {}", path.display())))?
            .len();
        let name = maculaos_bundle::bundle_file_name(&manifest.os_version, arch);
        if index::check_name("bundle", &name).is_err() {
            ignored.push(format!(
                "{file}: its version {:?} cannot name a file",
                manifest.os_version
            ));
            continue;
        }
        let abs = fs::canonicalize(&path).unwrap_or(path.clone());
        candidates.push(Available {
            version: manifest.os_version,
            name,
            url: format!("file://{}", abs.display()),
            size,
            sha256: None,
            channel: manifest.channel,
        });
    }
    newest(candidates).ok_or_else(|| FetchError::NoBundle {
        dir: dir.to_owned(),
        channel: channel.to_string(),
        arch: arch.to_string(),
        ignored,
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
