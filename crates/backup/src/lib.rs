//! Node backups (`maculaos backup`): a `.tar.gz` of chosen paths whose first
//! member, `manifest.json`, lists every entry with its sha256 and metadata.
//!
//! The manifest comes first so that a backup can be listed (host, time)
//! without reading the whole archive, and so that restore can check every
//! member against it before writing anything: a damaged or tampered backup
//! is refused whole instead of half-restored. Members live under `files/`
//! with the node path minus its leading `/`, so the archive can also be
//! unpacked by hand with plain `tar` in an emergency.
//!
//! A backup can also be encrypted to age public keys (`….tar.gz.age`, see
//! [`create_encrypted`]): the same archive, run through the `age` tool.
//!
//! Where the archives go (local directory, mesh peers, S3) is not this
//! crate's business: it makes, checks, restores, lists and prunes archive
//! files in a directory.

mod create;
mod encrypted;
mod manifest;
mod restore;
mod store;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use create::create;
pub use encrypted::{create_encrypted, is_encrypted, restore_encrypted, verify_encrypted, Age};
pub use manifest::{Entry, Kind, Manifest, FORMAT};
pub use restore::{restore, verify};
pub use store::{default_name, list, prune, utc, Listed};

/// What to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Absolute paths as seen on the node (`/var/lib/maculaos`). A missing
    /// one is skipped and named in [`Report::missing`]: a node that has no
    /// `/var/lib/data` yet should still get its config backed up.
    pub include: Vec<PathBuf>,
    /// Absolute node paths left out together with everything below them.
    pub exclude: Vec<PathBuf>,
    /// Where the node's `/` is: `/` on the node, a scratch directory in
    /// tests. The archive never contains this prefix.
    pub root: PathBuf,
}

/// What [`create`] or [`restore`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of file contents archived or restored.
    pub bytes: u64,
    /// create: include paths that did not exist.
    pub missing: Vec<PathBuf>,
    /// create: node paths not backed up because an archive cannot hold them
    /// usefully: sockets, fifos, device nodes, names that are not UTF-8.
    pub skipped: Vec<PathBuf>,
    /// restore: entries whose owner could not be set (the kernel said no,
    /// which is what happens when not running as root). Their contents,
    /// mode and mtime were still restored.
    pub owners_not_set: u64,
}

/// Which step a [`Progress`] report belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// create, first pass: hashing files for the manifest.
    Hashing,
    /// create, second pass: writing the archive.
    Archiving,
    /// create of an encrypted backup, last: `age` encrypting the archive
    /// (reported when it starts and when it is done).
    Encrypting,
    /// restore or verify of an encrypted backup, first: `age` decrypting
    /// it (reported when it starts and when it is done).
    Decrypting,
    /// verify (also the first step of restore).
    Verifying,
    /// restore: writing files.
    Restoring,
}

/// Sent before each entry is handled, so a caller can show a bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    /// Node path of the entry about to be handled (while encrypting or
    /// decrypting: the backup file).
    pub path: String,
    /// File bytes handled so far in this phase, and in all of it.
    pub done: u64,
    pub total: u64,
}

/// Every error names the path and what was being done, and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot {action} {}: {source} ({})", .path.display(), hint(.source))]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("backup settings: {}: {problem}; fix the include/exclude list", .path.display())]
    Spec {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("{} changed while it was being backed up: run the backup again, or exclude it if it is always being written", .path.display())]
    Changed { path: PathBuf },
    #[error("{}: {problem}; this backup cannot be trusted, use another one", .archive.display())]
    Invalid { archive: PathBuf, problem: String },
    #[error("cannot restore {}: {problem}; move it out of the way and restore again (nothing was written)", .path.display())]
    Conflict {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("{} already exists: choose another name or delete it first", .path.display())]
    Exists { path: PathBuf },
    #[error("{}: {problem}", .path.display())]
    Name {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("no age recipient to encrypt {} to: give at least one public key (age1… or ssh-ed25519 …)", .path.display())]
    NoRecipients { path: PathBuf },
    #[error("{} is encrypted to an age key: give the private key with --identity FILE", .archive.display())]
    Encrypted { archive: PathBuf },
    #[error("{} cannot be decrypted with {}: the key does not match (the backup was encrypted to other keys); give one of the private keys it was encrypted to", .archive.display(), .identity.display())]
    WrongKey { archive: PathBuf, identity: PathBuf },
    /// `age` is missing or failed; the source names the command and quotes
    /// what it said (boxed: it is large, and this error is rare).
    #[error("cannot {action} {}: {source}", .path.display())]
    Age {
        action: &'static str,
        path: PathBuf,
        source: Box<maculaos_runner::RunError>,
    },
}

fn hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => "run it as root",
        io::ErrorKind::NotFound => "check that the path exists",
        io::ErrorKind::StorageFull => "free some space or choose another place",
        io::ErrorKind::ReadOnlyFilesystem => {
            "the file system is read-only: choose a writable place"
        }
        _ => "check the disk and try again",
    }
}

/// Shorthand for `.map_err(io_err("read", path))`.
fn io_err(action: &'static str, path: &std::path::Path) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io {
        action,
        path,
        source,
    }
}

/// Reads through to the inner reader, hashing and counting what passes, so
/// a file is hashed in the same read that archives, checks or restores it.
struct Hashing<R> {
    inner: R,
    hasher: sha2::Sha256,
    count: u64,
}

impl<R: io::Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: sha2::Digest::new(),
            count: 0,
        }
    }

    /// (bytes read, hex sha256 of them).
    fn finish(self) -> (u64, String) {
        (self.count, hex::encode(sha2::Digest::finalize(self.hasher)))
    }
}

impl<R: io::Read> io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}
