//! Every way finding or downloading an update can fail. Each message names
//! the URL or path involved and says what to do, because it reaches an
//! operator on a node's console with nothing else around it.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = FetchError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url:?} is not an update source: {reason}. Use github://OWNER/REPO, https://HOST/PATH/, http://HOST/PATH/, file:///DIR/ or a directory path")]
    BadUrl { url: String, reason: String },

    #[error("cannot reach {url}: {reason}. Check the node's network (address, route, DNS, proxy) and the URL (upgrade.url or --url)")]
    Network { url: String, reason: String },

    #[error("{url} answered HTTP {status}{}. Check the URL (upgrade.url or --url) and the server", detail_suffix(.detail))]
    Http {
        url: String,
        status: u16,
        detail: String,
    },

    #[error("{url} does not exist (HTTP 404): {hint}")]
    NotFound { url: String, hint: String },

    #[error("GitHub refused {url}: API rate limit exceeded (without a token GitHub allows 60 requests an hour from one address){}. Try again then, or point upgrade.url (or --url) at an https:// mirror of the releases", reset_suffix(*.reset_in_secs))]
    RateLimited {
        url: String,
        reset_in_secs: Option<u64>,
    },

    #[error("the answer of {url} is not what was expected: {reason}. Is the URL an update source (upgrade.url or --url)?")]
    BadAnswer { url: String, reason: String },

    #[error("the channel index {url} is not valid: {reason}. Publish it again with `maculaos-sdk publish`")]
    BadIndex { url: String, reason: String },

    #[error("the channel index {url} is format {found}; this node reads format {supported}. Upgrade in steps, from a source this version understands")]
    IndexFormat {
        url: String,
        found: u32,
        supported: u32,
    },

    #[error("the channel index {url} offers an {found} bundle, this node is {node}. Publish the {node} bundle on this source, or use another source")]
    WrongArch {
        url: String,
        found: String,
        node: String,
    },

    #[error("the channel index {url} is for channel {found}, not {wanted}: it was published to the wrong place. Publish it again with `maculaos-sdk publish`")]
    WrongChannel {
        url: String,
        found: String,
        wanted: String,
    },

    #[error("{source_name} has no {channel} release (releases are stable unless marked pre-release; a pre-release is nightly when its tag contains \"nightly\", beta otherwise). Pick another channel (--channel) or publish a release")]
    NoRelease {
        source_name: String,
        channel: String,
    },

    #[error("no {channel} release of {source_name} has a bundle for {arch}: the newest, {tag}, has {}. Upload maculaos-<version>-{arch}.mos to the release", list_or_none(.assets))]
    NoAsset {
        source_name: String,
        channel: String,
        tag: String,
        arch: String,
        assets: Vec<String>,
    },

    #[error("{} holds no {channel} update bundle for {arch} (maculaos-<version>-{arch}.mos, or {channel}/latest.json){}", .dir.display(), ignored_suffix(.ignored))]
    NoBundle {
        dir: PathBuf,
        channel: String,
        arch: String,
        ignored: Vec<String>,
    },

    #[error("{what} {value:?} is not a usable bundle file name: {reason}")]
    BadName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error("not enough space in {}: the download needs {} more, {} is free (a reserve of {} is kept for the node). Free space on /var (old bundles in {} can go), then run it again", .dir.display(), mib(*.need), mib(*.free), mib(*.reserve), .dir.display())]
    NoSpace {
        dir: PathBuf,
        need: u64,
        free: u64,
        reserve: u64,
    },

    #[error("the download of {url} stopped after {done} of {total} bytes ({reason}). Run the same command again to continue from there (kept in {})", .part.display())]
    Interrupted {
        url: String,
        done: u64,
        total: u64,
        reason: String,
        part: PathBuf,
    },

    #[error("{url} sent {actual} bytes where {expected} were announced: the source is inconsistent (a bundle replaced without updating its index?). The partial file was deleted; publish the index again, or try later")]
    SizeMismatch {
        url: String,
        expected: u64,
        actual: u64,
    },

    #[error("the file downloaded from {url} has sha256 {actual}, the source says {expected}: it was damaged on the way or changed at the source. The partial file was deleted; run the command again to download it anew, and if this repeats, tell whoever publishes the updates")]
    ShaMismatch {
        url: String,
        expected: String,
        actual: String,
    },

    #[error("another download of this bundle is running (it holds {}): wait for it to finish", .part.display())]
    Busy { part: PathBuf },

    #[error("no trusted CA certificates for https ({reason}). The node needs Debian's ca-certificates in /etc/ssl/certs (or SSL_CERT_FILE / SSL_CERT_DIR pointing at a CA bundle)")]
    NoCaCertificates { reason: String },

    /// Reading a bundle's manifest failed (its message names the file).
    #[error(transparent)]
    Bundle(#[from] maculaos_bundle::BundleError),

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

fn reset_suffix(secs: Option<u64>) -> String {
    match secs {
        Some(s) => format!("; the limit resets in about {} min", s.div_ceil(60).max(1)),
        None => String::new(),
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "no files".into()
    } else {
        items.join(", ")
    }
}

fn ignored_suffix(ignored: &[String]) -> String {
    if ignored.is_empty() {
        String::new()
    } else {
        format!("; not taken: {}", ignored.join("; "))
    }
}

/// Bytes as `12.3 MiB` (sizes of bundles and free space: MiB is what people compare).
pub(crate) fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

/// `map_err` helper: an I/O error with what we were doing.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FetchError {
    let what = what.into();
    move |source| FetchError::Io { what, source }
}
