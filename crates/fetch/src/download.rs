//! Downloading a bundle into the node's state directory.
//!
//! The file grows as `<name>.part` and becomes `<name>` only when complete
//! and, when the source gave a sha256, matching it: whatever holds the final
//! name is whole. An interrupted download keeps its `.part`; the next run
//! hashes what is there and asks for the rest (HTTP `Range`). A server that
//! answers a range request with the whole file (200) gets the part restarted.

use crate::error::{io_err, FetchError, Result};
use crate::http::{header, Client};
use crate::index::check_name;
use crate::Available;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CHUNK: usize = 256 << 10;
/// Suffix of a download in progress.
pub const PART_SUFFIX: &str = ".part";

/// One progress report of a download: after each chunk, the first with
/// nothing new done, the last with `done == total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Bytes of the file present (including those of an earlier, resumed
    /// attempt), and its size.
    pub done: u64,
    pub total: u64,
    /// Bytes that were already there when this transfer started.
    pub resumed_from: u64,
    /// Time since this transfer started.
    pub elapsed: Duration,
    /// Average rate of this transfer so far (0 before anything came).
    pub bytes_per_sec: f64,
    /// Time left at that rate; None until there is a rate.
    pub eta: Option<Duration>,
}

impl Progress {
    pub fn new(done: u64, total: u64, resumed_from: u64, elapsed: Duration) -> Progress {
        let (bytes_per_sec, eta) = maculaos_progress::rate(
            done.saturating_sub(resumed_from),
            total.saturating_sub(done),
            elapsed,
        );
        Progress {
            done,
            total,
            resumed_from,
            elapsed,
            bytes_per_sec,
            eta,
        }
    }

    /// 0..=100 (100 for an empty file).
    pub fn percent(&self) -> f64 {
        maculaos_progress::percent(self.done, self.total)
    }
}

/// How [`Client::download`] behaves; the defaults are the node's.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Free bytes for unprivileged writers on the filesystem of a directory
    /// ([`free_space`], statvfs). Tests put their own here.
    pub free_space: fn(&Path) -> io::Result<u64>,
    /// Bytes left free after the download: /var also holds the journal and
    /// the node's state, which must not be starved by an update.
    pub reserve: u64,
    /// Transfers in one call: an interrupted one is resumed up to
    /// `attempts - 1` times before the error is returned.
    pub attempts: u32,
    /// Pause before a resumed attempt (times the attempt number).
    pub retry_pause: Duration,
}

impl Default for DownloadOptions {
    fn default() -> DownloadOptions {
        DownloadOptions {
            free_space,
            reserve: 64 << 20,
            attempts: 3,
            retry_pause: Duration::from_secs(2),
        }
    }
}

/// Free bytes in the filesystem holding `dir`, for unprivileged writers
/// (statvfs `f_bavail * f_frsize`).
pub fn free_space(dir: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Size and running sha256 of the first `limit` bytes of `path`.
pub(crate) fn hash_file(path: &Path, limit: u64) -> Result<(u64, Sha256)> {
    let what = || format!("reading {}", path.display());
    let f = File::open(path).map_err(io_err(what()))?;
    let mut input = f.take(limit);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                hasher.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(what())(e)),
        }
    }
    Ok((n, hasher))
}

/// The local path of a `file://` URL.
pub(crate) fn file_path(url: &str) -> Option<&Path> {
    url.strip_prefix("file://").map(Path::new)
}

/// The `.part` file being written, its running hash, and what is in it.
struct Part<'a> {
    path: &'a Path,
    file: File,
    hasher: Sha256,
    len: u64,
}

impl Part<'_> {
    /// Start over from an empty file.
    fn restart(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .and_then(|_| self.file.seek(SeekFrom::Start(0)).map(|_| ()))
            .map_err(io_err(format!("emptying {}", self.path.display())))?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(io_err(format!("writing {}", self.path.display())))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Delete the file (its content cannot be used) and return `err`.
    fn discard(self, err: FetchError) -> FetchError {
        let _ = fs::remove_file(self.path);
        err
    }
}

/// How a transfer ended when it did not complete.
enum Stop {
    /// Worth another attempt: the connection failed or closed early.
    Retry(FetchError),
    Fatal(FetchError),
}

impl Client {
    /// Download `available` into `dest_dir` as `available.name` (through
    /// `<name>.part`, see the module documentation) and return its path.
    ///
    /// A file already complete there is kept (re-hashed when a sha256 is
    /// known). The free space is checked before anything is written.
    /// Nothing here checks the bundle's signature: the caller does, before
    /// it reports the download as usable.
    pub fn download(
        &self,
        available: &Available,
        dest_dir: &Path,
        opts: &DownloadOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PathBuf> {
        check_name("bundle", &available.name)?;
        let size = available.size;
        fs::create_dir_all(dest_dir).map_err(io_err(format!(
            "creating the download directory {}",
            dest_dir.display()
        )))?;
        let final_path = dest_dir.join(&available.name);
        let part_path = dest_dir.join(format!("{}{PART_SUFFIX}", available.name));

        // A directory source may be this very directory.
        if let Some(src) = file_path(&available.url) {
            if fs::canonicalize(src).ok() == fs::canonicalize(&final_path).ok()
                && final_path.exists()
            {
                progress(Progress::new(size, size, size, Duration::ZERO));
                return Ok(final_path);
            }
        }
        if final_path.exists() {
            if self.complete(&final_path, available)? {
                progress(Progress::new(size, size, size, Duration::ZERO));
                return Ok(final_path);
            }
            fs::remove_file(&final_path).map_err(io_err(format!(
                "removing {}, which does not match the source",
                final_path.display()
            )))?;
        }

        // Space for what is still missing, before writing anything.
        let have = fs::metadata(&part_path)
            .map(|m| m.len())
            .unwrap_or(0)
            .min(size);
        let need = size - have;
        let free = (opts.free_space)(dest_dir).map_err(io_err(format!(
            "reading the free space of {}",
            dest_dir.display()
        )))?;
        if free < need.saturating_add(opts.reserve) {
            return Err(FetchError::NoSpace {
                dir: dest_dir.to_owned(),
                need,
                free,
                reserve: opts.reserve,
            });
        }

        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)
            .map_err(io_err(format!("opening {}", part_path.display())))?;
        // One download of a file at a time: two would interleave their bytes.
        let locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| match errno {
                nix::errno::Errno::EWOULDBLOCK => FetchError::Busy {
                    part: part_path.clone(),
                },
                e => FetchError::Io {
                    what: format!("locking {}", part_path.display()),
                    source: e.into(),
                },
            })?;
        let file = locked
            .try_clone()
            .map_err(io_err(format!("opening {}", part_path.display())))?;
        let len = file
            .metadata()
            .map_err(io_err(format!("reading {}", part_path.display())))?
            .len();
        let mut part = Part {
            path: &part_path,
            file,
            hasher: Sha256::new(),
            len: 0,
        };
        if len > 0 && len <= size {
            // Resume: the hash must cover the bytes already there.
            let (n, hasher) = hash_file(&part_path, len)?;
            part.hasher = hasher;
            part.len = n;
        }
        if part.len != len {
            part.restart()?;
        }
        part.file
            .seek(SeekFrom::Start(part.len))
            .map_err(io_err(format!("seeking in {}", part_path.display())))?;

        let attempts = opts.attempts.max(1);
        for attempt in 1..=attempts {
            let result = match file_path(&available.url) {
                Some(src) => self.copy_local(src, available, &mut part, progress),
                None => self.transfer(available, &mut part, progress),
            };
            match result {
                Ok(()) => break,
                Err(Stop::Retry(_)) if attempt < attempts => {
                    std::thread::sleep(opts.retry_pause * attempt);
                }
                Err(Stop::Retry(e)) => {
                    // Keep what came for the next run; an empty part is no help.
                    if part.len == 0 {
                        return Err(part.discard(e));
                    }
                    let _ = part.file.sync_data();
                    return Err(e);
                }
                Err(Stop::Fatal(e)) => return Err(part.discard(e)),
            }
        }

        part.file
            .sync_all()
            .map_err(io_err(format!("writing {}", part_path.display())))?;
        let actual = hex::encode(part.hasher.clone().finalize());
        if let Some(expected) = &available.sha256 {
            if !actual.eq_ignore_ascii_case(expected) {
                let err = FetchError::ShaMismatch {
                    url: available.url.clone(),
                    expected: expected.clone(),
                    actual,
                };
                return Err(part.discard(err));
            }
        }
        fs::rename(&part_path, &final_path).map_err(io_err(format!(
            "renaming {} to {}",
            part_path.display(),
            final_path.display()
        )))?;
        let _ = File::open(dest_dir).and_then(|d| d.sync_all());
        drop(locked);
        Ok(final_path)
    }

    /// Whether the file at `path` is the complete download of `available`.
    fn complete(&self, path: &Path, available: &Available) -> Result<bool> {
        let len = fs::metadata(path)
            .map_err(io_err(format!("reading {}", path.display())))?
            .len();
        if len != available.size {
            return Ok(false);
        }
        Ok(match &available.sha256 {
            Some(expected) => {
                let (_, hasher) = hash_file(path, u64::MAX)?;
                hex::encode(hasher.finalize()).eq_ignore_ascii_case(expected)
            }
            None => true,
        })
    }

    /// One HTTP transfer of what `part` lacks.
    fn transfer(
        &self,
        available: &Available,
        part: &mut Part,
        progress: &mut dyn FnMut(Progress),
    ) -> std::result::Result<(), Stop> {
        let url = available.url.as_str();
        let size = available.size;
        if part.len == size {
            return Ok(());
        }
        let mut resp = self.get_from(url, part.len).map_err(Stop::Retry)?;
        let status = resp.status().as_u16();
        match status {
            206 => {
                let range = header(resp.headers(), "content-range").unwrap_or_default();
                match parse_content_range(range) {
                    Some((start, total))
                        if start == part.len && total.is_none_or(|t| t == size) => {}
                    Some((_, Some(total))) if total != size => {
                        return Err(Stop::Fatal(FetchError::SizeMismatch {
                            url: url.to_string(),
                            expected: size,
                            actual: total,
                        }))
                    }
                    // Another range than asked for: take the whole file.
                    _ => {
                        part.restart().map_err(Stop::Fatal)?;
                        resp = self.get_from(url, 0).map_err(Stop::Retry)?;
                        if resp.status().as_u16() != 200 {
                            return Err(Stop::Fatal(status_error(url, resp.status().as_u16())));
                        }
                    }
                }
            }
            200 => {
                // The server ignored Range (or there was none): from the start.
                if part.len > 0 {
                    part.restart().map_err(Stop::Fatal)?;
                }
            }
            416 => {
                // The part is not a prefix of what the server has now.
                part.restart().map_err(Stop::Fatal)?;
                resp = self.get_from(url, 0).map_err(Stop::Retry)?;
                if resp.status().as_u16() != 200 {
                    return Err(Stop::Fatal(status_error(url, resp.status().as_u16())));
                }
            }
            s => return Err(Stop::Fatal(status_error(url, s))),
        }
        let offset = part.len;
        if let Some(len) =
            header(resp.headers(), "content-length").and_then(|v| v.parse::<u64>().ok())
        {
            if offset + len != size {
                return Err(Stop::Fatal(FetchError::SizeMismatch {
                    url: url.to_string(),
                    expected: size,
                    actual: offset + len,
                }));
            }
        }
        let reader = resp.into_body().into_reader();
        self.stream(reader, url, size, part, progress)
    }

    fn get_from(&self, url: &str, offset: u64) -> Result<ureq::http::Response<ureq::Body>> {
        if offset == 0 {
            self.get(url, &[])
        } else {
            self.get(url, &[("Range", &format!("bytes={offset}-"))])
        }
    }

    /// Append what `input` gives to `part` until the file has `size` bytes.
    fn stream(
        &self,
        mut input: impl Read,
        url: &str,
        size: u64,
        part: &mut Part,
        progress: &mut dyn FnMut(Progress),
    ) -> std::result::Result<(), Stop> {
        let started = Instant::now();
        let resumed_from = part.len;
        let interrupted = |part: &Part, reason: String| {
            Stop::Retry(FetchError::Interrupted {
                url: url.to_string(),
                done: part.len,
                total: size,
                reason,
                part: part.path.to_owned(),
            })
        };
        progress(Progress::new(
            part.len,
            size,
            resumed_from,
            started.elapsed(),
        ));
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(interrupted(part, e.to_string())),
            };
            if part.len + n as u64 > size {
                return Err(Stop::Fatal(FetchError::SizeMismatch {
                    url: url.to_string(),
                    expected: size,
                    actual: part.len + n as u64,
                }));
            }
            part.append(&buf[..n]).map_err(Stop::Fatal)?;
            progress(Progress::new(
                part.len,
                size,
                resumed_from,
                started.elapsed(),
            ));
        }
        if part.len < size {
            return Err(interrupted(part, "the connection closed early".into()));
        }
        Ok(())
    }

    /// Copy a bundle from a directory source (from the start: local reads
    /// are quick, and the file may have been replaced since the last try).
    fn copy_local(
        &self,
        src: &Path,
        available: &Available,
        part: &mut Part,
        progress: &mut dyn FnMut(Progress),
    ) -> std::result::Result<(), Stop> {
        let fatal = |e| Stop::Fatal(e);
        let f = File::open(src)
            .map_err(io_err(format!("opening {}", src.display())))
            .map_err(fatal)?;
        let len = f
            .metadata()
            .map_err(io_err(format!("reading {}", src.display())))
            .map_err(fatal)?
            .len();
        if len != available.size {
            return Err(Stop::Fatal(FetchError::SizeMismatch {
                url: available.url.clone(),
                expected: available.size,
                actual: len,
            }));
        }
        part.restart().map_err(fatal)?;
        self.stream(f, &available.url, available.size, part, progress)
            .map_err(|s| match s {
                // A local read error is not a network hiccup.
                Stop::Retry(e) => Stop::Fatal(e),
                s => s,
            })
    }
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL); TOTAL may be `*`.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

fn status_error(url: &str, status: u16) -> FetchError {
    if status == 404 {
        return FetchError::NotFound {
            url: url.to_string(),
            hint: "the source names a bundle that is not there: it was removed, or the index is stale. Publish the channel again, or try later".into(),
        };
    }
    FetchError::Http {
        url: url.to_string(),
        status,
        detail: ureq::http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or_default()
            .to_string(),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 10-99/*"), Some((10, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn progress_rate_counts_only_new_bytes() {
        let p = Progress::new(600, 1000, 400, Duration::from_secs(2));
        assert_eq!(p.bytes_per_sec, 100.0);
        assert_eq!(p.eta, Some(Duration::from_secs(4)));
        assert_eq!(p.percent(), 60.0);
        assert_eq!(Progress::new(0, 0, 0, Duration::ZERO).percent(), 100.0);
    }
}
