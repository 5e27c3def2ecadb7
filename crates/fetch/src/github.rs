//! GitHub releases as an update source (`github://OWNER/REPO`).
//!
//! The node reads `GET /repos/OWNER/REPO/releases` (newest first) and
//! takes the assets named `maculaos-<version>-<arch>.mos`.
//!
//! Channels, from the release's flags and tag:
//!
//! | release | channel |
//! | --- | --- |
//! | draft | none (never offered) |
//! | not a pre-release | stable |
//! | pre-release whose tag contains `nightly` | nightly |
//! | any other pre-release (`-beta.1`, `-rc.2`, …) | beta |
//!
//! A node follows its channel and every more stable one: stable sees stable
//! releases; beta sees beta and stable; nightly sees all three. Of those, the
//! highest version (from the asset's name, in `compare_versions` order) with
//! an asset for the node's architecture wins; so a beta node moves to a
//! stable release as soon as it is newer than the newest beta.

use crate::error::{FetchError, Result};
use crate::index::{check_name, is_sha256};
use crate::Available;
use maculaos_bundle::{compare_versions, Channel, EXTENSION};
use serde::Deserialize;
use std::cmp::Ordering;

/// One release, as the API gives it (the fields used here).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Release {
    pub tag_name: String,
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub prerelease: bool,
    #[serde(default)]
    pub assets: Vec<Asset>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Asset {
    pub name: String,
    pub size: u64,
    pub browser_download_url: String,
    /// `uploaded` once complete; `open` while an upload is in progress.
    #[serde(default)]
    pub state: Option<String>,
    /// `sha256:<hex>`, on assets uploaded since mid-2025.
    #[serde(default)]
    pub digest: Option<String>,
}

/// The channel a release is published on (see the module documentation).
pub fn release_channel(draft: bool, prerelease: bool, tag: &str) -> Option<Channel> {
    if draft {
        None
    } else if !prerelease {
        Some(Channel::Stable)
    } else if tag.to_ascii_lowercase().contains("nightly") {
        Some(Channel::Nightly)
    } else {
        Some(Channel::Beta)
    }
}

/// How far from stable a channel is: a node sees releases of its rank or lower.
fn rank(c: Channel) -> u8 {
    match c {
        Channel::Stable => 0,
        Channel::Beta => 1,
        Channel::Nightly => 2,
    }
}

/// The version in `maculaos-<version>-<arch>.mos`, when the name is one for `arch`.
pub(crate) fn asset_version<'a>(name: &'a str, arch: &str) -> Option<&'a str> {
    let v = name
        .strip_prefix("maculaos-")?
        .strip_suffix(&format!("-{arch}.{EXTENSION}"))?;
    (!v.is_empty() && check_name("asset", name).is_ok()).then_some(v)
}

pub(crate) fn parse_releases(bytes: &[u8], url: &str) -> Result<Vec<Release>> {
    serde_json::from_slice(bytes).map_err(|e| FetchError::BadAnswer {
        url: url.to_string(),
        reason: format!("not a list of GitHub releases ({e})"),
    })
}

/// The newest bundle for `arch` a node on `channel` should see.
pub(crate) fn pick(
    releases: &[Release],
    channel: Channel,
    arch: &str,
    source_name: &str,
) -> Result<Available> {
    let visible: Vec<(&Release, Channel)> = releases
        .iter()
        .filter_map(|r| {
            release_channel(r.draft, r.prerelease, &r.tag_name)
                .filter(|c| rank(*c) <= rank(channel))
                .map(|c| (r, c))
        })
        .collect();
    let newest_release = visible.first().ok_or_else(|| FetchError::NoRelease {
        source_name: source_name.to_string(),
        channel: channel.to_string(),
    })?;
    let mut best: Option<(&str, &Asset, Channel)> = None;
    for (release, rel_channel) in &visible {
        for asset in &release.assets {
            if asset.state.as_deref().is_some_and(|s| s != "uploaded") {
                continue;
            }
            let Some(version) = asset_version(&asset.name, arch) else {
                continue;
            };
            // Strictly newer only: among equal versions the release listed
            // first (the newest) wins.
            if best.is_none_or(|(v, _, _)| compare_versions(version, v) == Ordering::Greater) {
                best = Some((version, asset, *rel_channel));
            }
        }
    }
    let Some((version, asset, rel_channel)) = best else {
        return Err(FetchError::NoAsset {
            source_name: source_name.to_string(),
            channel: channel.to_string(),
            tag: newest_release.0.tag_name.clone(),
            arch: arch.to_string(),
            assets: newest_release
                .0
                .assets
                .iter()
                .map(|a| a.name.clone())
                .collect(),
        });
    };
    let sha256 = asset
        .digest
        .as_deref()
        .and_then(|d| d.strip_prefix("sha256:"))
        .filter(|h| is_sha256(h))
        .map(|h| h.to_ascii_lowercase());
    Ok(Available {
        version: version.to_string(),
        name: asset.name.clone(),
        url: asset.browser_download_url.clone(),
        size: asset.size,
        sha256,
        channel: rel_channel,
    })
}

/// What a failed API answer means. GitHub says "rate limit" with 403 (or
/// 429) and `x-ratelimit-remaining: 0`; its body's `message` says it too.
pub(crate) fn api_error(
    url: &str,
    status: u16,
    remaining: Option<&str>,
    reset: Option<&str>,
    body: &[u8],
    now: u64,
) -> FetchError {
    #[derive(Deserialize)]
    struct Message {
        message: String,
    }
    let message = serde_json::from_slice::<Message>(body)
        .map(|m| m.message)
        .unwrap_or_default();
    let limited = matches!(status, 403 | 429)
        && (remaining.map(str::trim) == Some("0")
            || message.to_ascii_lowercase().contains("rate limit"));
    if limited {
        let reset_in_secs = reset
            .and_then(|r| r.trim().parse::<u64>().ok())
            .map(|at| at.saturating_sub(now));
        return FetchError::RateLimited {
            url: url.to_string(),
            reset_in_secs,
        };
    }
    if status == 404 {
        return FetchError::NotFound {
            url: url.to_string(),
            hint: "no such GitHub repository, or it is private. Check upgrade.url (github://OWNER/REPO) or --url".into(),
        };
    }
    FetchError::Http {
        url: url.to_string(),
        status,
        detail: message,
    }
}
