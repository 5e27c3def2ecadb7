//! Where updates come from (`upgrade.url`).

use crate::error::{FetchError, Result};
use std::fmt;
use std::path::PathBuf;

/// The GitHub REST API.
pub const GITHUB_API: &str = "https://api.github.com";

/// An update source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A web server with one index per channel at `<base><channel>/latest.json`.
    /// `base` ends with `/`.
    Http { base: String },
    /// The releases of a GitHub repository. `api` is the REST API's root
    /// ([`GITHUB_API`]; another one for GitHub Enterprise or tests).
    GitHub {
        owner: String,
        repo: String,
        api: String,
    },
    /// A directory (a USB stick, an NFS mount): `<dir>/<channel>/latest.json`,
    /// else the bundles in it.
    Dir { path: PathBuf },
}

impl Source {
    /// Parse `upgrade.url` or `--url`: `github://OWNER/REPO`,
    /// `http(s)://HOST/PATH/`, `file:///DIR/`, or a plain directory path.
    pub fn parse(url: &str) -> Result<Source> {
        let url = url.trim();
        let bad = |reason: &str| FetchError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = url.strip_prefix("github://") {
            let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
            let ok = |p: &str| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            return match parts.as_slice() {
                [owner, repo] if ok(owner) && ok(repo) => Ok(Source::GitHub {
                    owner: owner.to_string(),
                    repo: repo.to_string(),
                    api: GITHUB_API.to_string(),
                }),
                _ => Err(bad("write github://OWNER/REPO")),
            };
        }
        if let Some(rest) = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
        {
            if rest.is_empty() || rest.starts_with('/') {
                return Err(bad("it names no host"));
            }
            if url.contains(['?', '#']) || url.chars().any(char::is_whitespace) {
                return Err(bad(
                    "give the base directory only, without ?query, #fragment or spaces",
                ));
            }
            // The channel directories are under the base: make it a directory.
            let base = if url.ends_with('/') {
                url.to_string()
            } else {
                format!("{url}/")
            };
            return Ok(Source::Http { base });
        }
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad("write file:///ABSOLUTE/PATH (three slashes)"));
            }
            return Ok(Source::Dir {
                path: PathBuf::from(rest),
            });
        }
        if url.contains("://") {
            return Err(bad("unknown scheme"));
        }
        if url.is_empty() {
            return Err(bad("it is empty"));
        }
        Ok(Source::Dir {
            path: PathBuf::from(url),
        })
    }

    /// Where a [`Source::GitHub`] lists its releases (newest first, the
    /// first 100: a node only wants the newest of its channel).
    pub fn releases_url(owner: &str, repo: &str, api: &str) -> String {
        format!(
            "{}/repos/{owner}/{repo}/releases?per_page=100",
            api.trim_end_matches('/')
        )
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Http { base } => f.write_str(base),
            Source::GitHub { owner, repo, api } if api == GITHUB_API => {
                write!(f, "github://{owner}/{repo}")
            }
            Source::GitHub { owner, repo, api } => write!(f, "github://{owner}/{repo} (API {api})"),
            Source::Dir { path } => write!(f, "{}", path.display()),
        }
    }
}
