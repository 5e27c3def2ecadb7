//! MaculaOS update bundles (`maculaos-<version>-<arch>.mos`).
//!
//! A bundle carries one slot image (the root squashfs of one version, with
//! its kernel and initrd in `/boot`) and a signed manifest describing it. It
//! is an uncompressed ustar archive with exactly three entries, in this order:
//!
//! | entry | content |
//! | --- | --- |
//! | `manifest.json` | [`BundleManifest`] as JSON |
//! | `manifest.json.minisig` | minisign signature of `manifest.json`'s exact bytes |
//! | `payload.squashfs` | the slot image |
//!
//! The signature covers the manifest, and the manifest names the payload's
//! size and sha256, so the signature covers the payload. The payload comes
//! last so that a node can check the signature first and then stream the
//! payload straight into the inactive root partition, hashing it on the way,
//! without storing the bundle anywhere ([`Reader`] works on any `Read`).
//!
//! Keys and signatures are standard minisign (Ed25519), so the `minisign`
//! CLI can check a bundle by hand (`tar xf b.mos manifest.json
//! manifest.json.minisig && minisign -Vm manifest.json -p key.pub`) and can
//! sign manifests for us.

mod error;
mod keys;
mod version;

pub use error::{BundleError, Result};
pub use keys::{
    dev_keypair, generate_keypair, key_id, key_id_of, load_public_key, load_secret_key,
    load_trusted_keys, public_key_line, public_key_of, DEV_KEY_NAME,
};
pub use minisign::{PublicKey, SecretKey};
pub use version::{compare_dotted, compare_versions};

use error::io_err;
use minisign::SignatureBox;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

/// The bundle format this code writes and reads.
pub const FORMAT: u32 = 1;

/// What kind of system a bundle's payload fits: x86_64, GPT disk with the
/// MaculaOS partition labels, A/B root slots with per-slot boot files on the
/// ESP. A change that makes an old node unable to boot a new slot image
/// (another layout, boot scheme) gets a new value, so old nodes refuse it.
pub const COMPATIBLE: &str = "maculaos-x86_64-gpt-ab-v1";

/// The architecture name bundles use for this build's target (Debian names,
/// as in image file names).
#[cfg(target_arch = "x86_64")]
pub const NODE_ARCH: &str = "amd64";
#[cfg(target_arch = "aarch64")]
pub const NODE_ARCH: &str = "arm64";
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const NODE_ARCH: &str = std::env::consts::ARCH;

/// File name extension of bundles.
pub const EXTENSION: &str = "mos";
pub const MANIFEST_ENTRY: &str = "manifest.json";
pub const SIGNATURE_ENTRY: &str = "manifest.json.minisig";
pub const PAYLOAD_ENTRY: &str = "payload.squashfs";

/// manifest.json and its signature are small; a bigger entry means a damaged
/// or hostile file, and we refuse it before allocating for it.
const MAX_SMALL_ENTRY: u64 = 64 * 1024;
const BLOCK: usize = 512;
const CHUNK: usize = 1 << 20;

/// The bundle file name for a version and architecture (`maculaos-0.2.0-amd64.mos`).
pub fn bundle_file_name(version: &str, arch: &str) -> String {
    format!("maculaos-{version}-{arch}.{EXTENSION}")
}

/// Release channel a bundle is published on; nodes follow one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Stable,
    Beta,
    Nightly,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Stable, Channel::Beta, Channel::Nightly];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Stable => "stable",
            Channel::Beta => "beta",
            Channel::Nightly => "nightly",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown channel {s:?}: use stable, beta or nightly"))
    }
}

/// `manifest.json`: what the bundle holds and what it is for.
///
/// Unknown fields are ignored when reading, so format 1 can gain optional
/// fields without breaking older nodes; anything an older node must not
/// ignore needs a new [`FORMAT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleManifest {
    /// Bundle format ([`FORMAT`]).
    pub format: u32,
    /// The MaculaOS version of the payload.
    pub os_version: String,
    /// Debian architecture name (`amd64`).
    pub arch: String,
    /// What kind of system the payload fits ([`COMPATIBLE`]).
    pub compatible: String,
    pub channel: Channel,
    /// Size of `payload.squashfs` in bytes.
    pub payload_size: u64,
    /// sha256 of `payload.squashfs`, lower-case hex.
    pub payload_sha256: String,
    /// When the bundle was made (unix seconds; SOURCE_DATE_EPOCH if set).
    pub built_at: u64,
    /// Kernel version in the payload, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
}

impl BundleManifest {
    /// The minisign trusted comment for this manifest. It is signed too, and
    /// `minisign -V` prints it, so a person checking by hand sees what it is.
    pub fn trusted_comment(&self) -> String {
        format!(
            "maculaos {} {} {}",
            self.os_version, self.arch, self.channel
        )
    }
}

/// What [`create`] is told about the payload; the rest it measures.
#[derive(Debug, Clone)]
pub struct BundleMeta {
    pub os_version: String,
    pub arch: String,
    pub channel: Channel,
    pub kernel: Option<String>,
    /// None: SOURCE_DATE_EPOCH if set, else now.
    pub built_at: Option<u64>,
}

impl BundleMeta {
    /// A bundle of `version` for `amd64`, the architecture images are built for.
    pub fn new(version: &str, channel: Channel) -> Self {
        BundleMeta {
            os_version: version.to_string(),
            arch: "amd64".to_string(),
            channel,
            kernel: None,
            built_at: None,
        }
    }
}

/// Versions and arch names end up in file names and in the one-line trusted
/// comment: keep them to a safe alphabet.
fn check_token(what: &'static str, value: &str) -> Result<()> {
    let bad = |reason| {
        Err(BundleError::InvalidName {
            what,
            value: value.to_string(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("it is empty");
    }
    if value.len() > 64 {
        return bad("it is longer than 64 characters");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._+~-".contains(c))
    {
        return bad("use letters, digits and . _ + ~ - only");
    }
    Ok(())
}

fn built_at_now() -> u64 {
    if let Some(v) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return v;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads everything through while counting and hashing it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Size and sha256 of a file, read once in chunks (slot images are hundreds
/// of MiB: never held in memory).
fn hash_file(path: &Path) -> Result<(u64, String)> {
    let what = || format!("reading payload {}", path.display());
    let f = File::open(path).map_err(io_err(what()))?;
    let mut h = Hashing {
        inner: f,
        hasher: Sha256::new(),
        count: 0,
    };
    io::copy(&mut h, &mut io::sink()).map_err(io_err(what()))?;
    Ok((h.count, hex::encode(h.hasher.finalize())))
}

fn parse_manifest(bytes: &[u8], source_name: &str) -> Result<BundleManifest> {
    serde_json::from_slice(bytes).map_err(|e| BundleError::BadManifest {
        source_name: source_name.to_string(),
        reason: e.to_string(),
    })
}

/// Sign `manifest_bytes` with the secret key at `secret_key`, returning the
/// `.minisig` file's bytes. The trusted comment is
/// `maculaos <version> <arch> <channel>` from the manifest.
///
/// Why it checks its own signature: minisign secret keys carry their public
/// half, and `minisign::sign` verifies the new signature with it when given;
/// a damaged key thus fails here, not on every node.
pub fn sign_manifest(manifest_bytes: &[u8], secret_key: &Path) -> Result<Vec<u8>> {
    let manifest = parse_manifest(manifest_bytes, MANIFEST_ENTRY)?;
    let sk = load_secret_key(secret_key)?;
    sign_with(manifest_bytes, &manifest, &sk).map_err(|e| match e {
        BundleError::Sign { reason } => BundleError::BadKey {
            path: secret_key.to_owned(),
            kind: "secret",
            reason,
        },
        e => e,
    })
}

fn sign_with(bytes: &[u8], manifest: &BundleManifest, sk: &SecretKey) -> Result<Vec<u8>> {
    let pk = public_key_of(sk)?;
    let sig = minisign::sign(
        Some(&pk),
        sk,
        Cursor::new(bytes),
        Some(&manifest.trusted_comment()),
        Some(&format!("signature from maculaos key {}", key_id(&pk))),
    )
    .map_err(|e| BundleError::Sign {
        reason: e.to_string(),
    })?;
    Ok(sig.into_string().into_bytes())
}

/// Make a signed bundle at `out` from the slot image `payload`.
///
/// Why this order: the key is loaded first so that a wrong key fails before
/// hashing a big payload; the payload is hashed in a first streaming pass
/// because the manifest (and its signature) must precede it in the archive;
/// [`assemble`] then hashes it again while copying, so a payload that changes
/// between the two passes gives an error instead of a bundle every node
/// would reject. `out` appears only complete (written as `out.partial`, then
/// renamed).
pub fn create(
    payload: &Path,
    out: &Path,
    meta: &BundleMeta,
    secret_key: &Path,
) -> Result<BundleManifest> {
    check_token("version", &meta.os_version)?;
    check_token("architecture", &meta.arch)?;
    let sk = load_secret_key(secret_key)?;
    let (payload_size, payload_sha256) = hash_file(payload)?;
    let manifest = BundleManifest {
        format: FORMAT,
        os_version: meta.os_version.clone(),
        arch: meta.arch.clone(),
        compatible: COMPATIBLE.to_string(),
        channel: meta.channel,
        payload_size,
        payload_sha256,
        built_at: meta.built_at.unwrap_or_else(built_at_now),
        kernel: meta.kernel.clone(),
    };
    let mut bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| BundleError::BadManifest {
        source_name: MANIFEST_ENTRY.into(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    let sig = sign_with(&bytes, &manifest, &sk).map_err(|e| match e {
        BundleError::Sign { reason } => BundleError::BadKey {
            path: secret_key.to_owned(),
            kind: "secret",
            reason,
        },
        e => e,
    })?;
    assemble(&bytes, &sig, payload, out)?;
    Ok(manifest)
}

/// Removes a partial output unless disarmed (any early return or panic).
struct PartialFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn entry_header(name: &str, size: u64, mtime: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)
        .map_err(io_err(format!("naming tar entry {name}")))?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Write a bundle from its parts: the exact manifest bytes, the minisign
/// signature file's bytes, and the payload file.
///
/// Why it is public: signing can happen elsewhere (`minisign -S` on an
/// offline machine, an HSM): a release process can make the manifest, sign
/// it its own way, and assemble. It checks that the payload matches the
/// manifest (size and sha256, hashed while copying), so it never produces a
/// bundle that nodes would reject for that; it does not check the signature
/// (it has no trusted keys), `open` + `verify` do. `out` is written as
/// `<out>.partial` and renamed when complete.
pub fn assemble(manifest_bytes: &[u8], sig_bytes: &[u8], payload: &Path, out: &Path) -> Result<()> {
    let manifest = parse_manifest(manifest_bytes, MANIFEST_ENTRY)?;
    let sig_text = std::str::from_utf8(sig_bytes).map_err(|_| BundleError::BadSignatureFile {
        reason: "it is not text".into(),
    })?;
    SignatureBox::from_string(sig_text).map_err(|e| BundleError::BadSignatureFile {
        reason: e.to_string(),
    })?;
    for (name, len) in [
        (MANIFEST_ENTRY, manifest_bytes.len()),
        (SIGNATURE_ENTRY, sig_bytes.len()),
    ] {
        if len as u64 > MAX_SMALL_ENTRY {
            return Err(BundleError::BadManifest {
                source_name: out.display().to_string(),
                reason: format!("{name} is {len} bytes, more than the {MAX_SMALL_ENTRY} allowed"),
            });
        }
    }

    let pf =
        File::open(payload).map_err(io_err(format!("opening payload {}", payload.display())))?;
    let size = pf
        .metadata()
        .map_err(io_err(format!("reading payload {}", payload.display())))?
        .len();
    if size != manifest.payload_size {
        return Err(BundleError::PayloadSizeMismatch {
            expected: manifest.payload_size,
            actual: size,
        });
    }

    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    }
    let mut partial_name = out.as_os_str().to_owned();
    partial_name.push(".partial");
    let mut partial = PartialFile {
        path: PathBuf::from(partial_name),
        armed: true,
    };
    let what = format!("writing {}", partial.path.display());
    let file = File::create(&partial.path).map_err(io_err(what.clone()))?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(CHUNK, file));
    let mtime = manifest.built_at;
    tar.append(
        &entry_header(MANIFEST_ENTRY, manifest_bytes.len() as u64, mtime)?,
        manifest_bytes,
    )
    .map_err(io_err(what.clone()))?;
    tar.append(
        &entry_header(SIGNATURE_ENTRY, sig_bytes.len() as u64, mtime)?,
        sig_bytes,
    )
    .map_err(io_err(what.clone()))?;
    // take(): a payload that grew since it was measured must not overflow its entry.
    let mut hashing = Hashing {
        inner: pf.take(size),
        hasher: Sha256::new(),
        count: 0,
    };
    tar.append(&entry_header(PAYLOAD_ENTRY, size, mtime)?, &mut hashing)
        .map_err(io_err(what.clone()))?;
    if hashing.count != size {
        return Err(BundleError::PayloadSizeMismatch {
            expected: size,
            actual: hashing.count,
        });
    }
    let actual = hex::encode(hashing.hasher.finalize());
    if actual != manifest.payload_sha256 {
        return Err(BundleError::PayloadHashMismatch {
            expected: manifest.payload_sha256,
            actual,
        });
    }
    let file = tar
        .into_inner()
        .map_err(io_err(what.clone()))?
        .into_inner()
        .map_err(|e| BundleError::Io {
            what: what.clone(),
            source: e.into_error(),
        })?;
    file.sync_all().map_err(io_err(what))?;
    drop(file);
    fs::rename(&partial.path, out).map_err(io_err(format!(
        "renaming {} to {}",
        partial.path.display(),
        out.display()
    )))?;
    partial.armed = false;
    Ok(())
}

/// Reads a bundle from any byte stream: a file, an HTTP response body, a
/// pipe. It reads the manifest and signature and stops at the start of the
/// payload, so the payload can then be streamed once, straight to where it
/// goes, with [`copy_payload`].
pub struct Reader<R> {
    inner: R,
    source_name: String,
}

impl<R: Read> Reader<R> {
    /// `source_name` names the stream in errors (a path or URL).
    pub fn new(inner: R, source_name: impl Into<String>) -> Self {
        Reader {
            inner,
            source_name: source_name.into(),
        }
    }

    fn not_a_bundle(&self, reason: String) -> BundleError {
        BundleError::NotABundle {
            source_name: self.source_name.clone(),
            reason,
        }
    }

    fn read_block(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.not_a_bundle(format!("it ends before {what}"))
            } else {
                BundleError::Io {
                    what: format!("reading {what} from {}", self.source_name),
                    source: e,
                }
            }
        })
    }

    /// Read one ustar header, which must be a regular file named `expected`;
    /// returns its size.
    fn header(&mut self, expected: &str) -> Result<u64> {
        let mut block = [0u8; BLOCK];
        self.read_block(&mut block, &format!("the header of {expected}"))?;
        if block.iter().all(|b| *b == 0) {
            return Err(self.not_a_bundle(format!("the archive ends where {expected} should be")));
        }
        let h = tar::Header::from_byte_slice(&block);
        // The checksum field (bytes 148..156) counts as spaces.
        let computed: u32 = block
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    *b as u32
                }
            })
            .sum();
        match h.cksum() {
            Ok(stored) if stored == computed => {}
            _ => return Err(self.not_a_bundle("it is not a tar archive (header checksum)".into())),
        }
        if h.as_ustar().is_none() {
            return Err(self.not_a_bundle("it is a tar archive, but not ustar".into()));
        }
        let name = h.path_bytes();
        if name.as_ref() != expected.as_bytes() {
            return Err(self.not_a_bundle(format!(
                "expected entry {expected}, found {:?}",
                String::from_utf8_lossy(&name)
            )));
        }
        if !h.entry_type().is_file() {
            return Err(self.not_a_bundle(format!("{expected} is not a regular file")));
        }
        h.entry_size()
            .map_err(|e| self.not_a_bundle(format!("bad size of {expected}: {e}")))
    }

    /// Read a small entry whole (manifest, signature), with its padding.
    fn small_entry(&mut self, name: &str) -> Result<Vec<u8>> {
        let size = self.header(name)?;
        if size > MAX_SMALL_ENTRY {
            return Err(self.not_a_bundle(format!(
                "{name} is {size} bytes, more than the {MAX_SMALL_ENTRY} allowed"
            )));
        }
        let padded = (size as usize).div_ceil(BLOCK) * BLOCK;
        let mut buf = vec![0u8; padded];
        self.read_block(&mut buf, name)?;
        buf.truncate(size as usize);
        Ok(buf)
    }

    /// Read the manifest and the signature and stop at the payload.
    ///
    /// Nothing is verified yet: call [`OpenedBundle::verify`] before trusting
    /// anything in the manifest. The manifest is parsed here (so that a tool
    /// can show what a bundle claims to be), but parsing is all that is done
    /// with it until the signature checks out.
    pub fn open(mut self) -> Result<OpenedBundle<R>> {
        let manifest_bytes = self.small_entry(MANIFEST_ENTRY)?;
        let sig_bytes = self.small_entry(SIGNATURE_ENTRY)?;
        let payload_entry_size = self.header(PAYLOAD_ENTRY)?;
        let manifest = parse_manifest(&manifest_bytes, &self.source_name)?;
        let sig_text = String::from_utf8(sig_bytes).map_err(|_| {
            self.not_a_bundle(format!("{SIGNATURE_ENTRY} is not a minisign signature"))
        })?;
        let signature = SignatureBox::from_string(&sig_text).map_err(|e| {
            self.not_a_bundle(format!(
                "{SIGNATURE_ENTRY} is not a minisign signature ({e})"
            ))
        })?;
        Ok(OpenedBundle {
            manifest,
            manifest_bytes,
            signature,
            payload_entry_size,
            reader: self,
            verified: AtomicBool::new(false),
        })
    }
}

/// Open the bundle file at `path` (see [`Reader::open`]).
pub fn open(path: &Path) -> Result<OpenedBundle<File>> {
    let f = File::open(path).map_err(io_err(format!("opening bundle {}", path.display())))?;
    Reader::new(f, path.display().to_string()).open()
}

/// A bundle whose manifest and signature have been read; its stream is at
/// the start of the payload.
pub struct OpenedBundle<R = File> {
    manifest: BundleManifest,
    manifest_bytes: Vec<u8>,
    signature: SignatureBox,
    payload_entry_size: u64,
    reader: Reader<R>,
    verified: AtomicBool,
}

impl<R: Read> OpenedBundle<R> {
    /// The manifest as read. Not authenticated until [`Self::verify`] succeeded.
    pub fn manifest(&self) -> &BundleManifest {
        &self.manifest
    }

    /// manifest.json's exact bytes (what the signature covers).
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// Id of the key that made the signature (as minisign prints it).
    pub fn signature_key_id(&self) -> String {
        key_id_of(self.signature.keynum())
    }

    /// The signature's trusted comment (signed; normally
    /// `maculaos <version> <arch> <channel>`).
    pub fn trusted_comment(&self) -> Option<String> {
        self.signature.trusted_comment().ok()
    }

    /// The signature file's text (`manifest.json.minisig`).
    pub fn signature_text(&self) -> String {
        self.signature.to_string()
    }

    /// Check the bundle for this system: signed by one of `trusted_keys`,
    /// format known, [`NODE_ARCH`], [`COMPATIBLE`].
    pub fn verify(&self, trusted_keys: &[PublicKey]) -> Result<&BundleManifest> {
        self.verify_for(trusted_keys, NODE_ARCH, COMPATIBLE)
    }

    /// [`Self::verify`] for another system (the SDK checks an amd64 bundle
    /// whatever host it runs on).
    ///
    /// Why the signature comes first: nothing in an unsigned manifest is
    /// worth an error message that could mislead (a forged "wrong arch"). The
    /// key is picked by the signature's key id; minisign then checks the
    /// signature of the manifest's bytes and of the trusted comment. The
    /// trusted comment is for people (`minisign -V` prints it) and is not
    /// interpreted: the signed manifest is what counts.
    pub fn verify_for(
        &self,
        trusted_keys: &[PublicKey],
        arch: &str,
        compatible: &str,
    ) -> Result<&BundleManifest> {
        let signature_key = self.signature_key_id();
        if trusted_keys.is_empty() {
            return Err(BundleError::NoTrustedKeys { signature_key });
        }
        let candidates: Vec<&PublicKey> = trusted_keys
            .iter()
            .filter(|k| k.keynum() == self.signature.keynum())
            .collect();
        if candidates.is_empty() {
            return Err(BundleError::UntrustedSignature {
                signature_key,
                trusted: trusted_keys.iter().map(key_id).collect(),
            });
        }
        let mut last_reason = String::new();
        let ok = candidates.iter().any(|pk| {
            match minisign::verify(
                pk,
                &self.signature,
                Cursor::new(&self.manifest_bytes),
                true,
                false,
                false,
            ) {
                Ok(()) => true,
                Err(e) => {
                    last_reason = e.to_string();
                    false
                }
            }
        });
        if !ok {
            return Err(BundleError::BadSignature {
                key_id: signature_key,
                reason: last_reason,
            });
        }

        let m = &self.manifest;
        if m.format != FORMAT {
            return Err(BundleError::UnknownFormat {
                found: m.format,
                supported: FORMAT,
            });
        }
        if m.arch != arch {
            return Err(BundleError::WrongArch {
                bundle: m.arch.clone(),
                node: arch.to_string(),
            });
        }
        if m.compatible != compatible {
            return Err(BundleError::Incompatible {
                bundle: m.compatible.clone(),
                node: compatible.to_string(),
            });
        }
        if m.payload_sha256.len() != 64
            || !m
                .payload_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(BundleError::BadManifest {
                source_name: self.reader.source_name.clone(),
                reason: format!(
                    "payload_sha256 {:?} is not 64 lower-case hex digits",
                    m.payload_sha256
                ),
            });
        }
        self.verified.store(true, AtomicOrdering::SeqCst);
        Ok(m)
    }
}

/// Stream the payload of a verified bundle into `dest`, hashing it on the
/// way; returns its sha256 (hex). `progress(done, total)` is called after
/// each chunk (1 MiB).
///
/// Why it takes the bundle by value: the payload of a stream can be read only
/// once. Why it refuses an unverified bundle: the hash it checks against
/// comes from the manifest, which means nothing unsigned. On
/// `PayloadSizeMismatch` or `PayloadHashMismatch` (also for a truncated
/// stream) whatever was written to `dest` is garbage: the caller must not use
/// it (an updater must not mark the slot bootable).
pub fn copy_payload<R: Read, W: Write + ?Sized>(
    opened: OpenedBundle<R>,
    dest: &mut W,
    mut progress: impl FnMut(u64, u64),
) -> Result<String> {
    if !opened.verified.load(AtomicOrdering::SeqCst) {
        return Err(BundleError::NotVerified);
    }
    let expected_size = opened.manifest.payload_size;
    if opened.payload_entry_size != expected_size {
        return Err(BundleError::PayloadSizeMismatch {
            expected: expected_size,
            actual: opened.payload_entry_size,
        });
    }
    let source_name = opened.reader.source_name.clone();
    let mut input = opened.reader.inner.take(expected_size);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    progress(0, expected_size);
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(BundleError::Io {
                    what: format!("reading the payload of {source_name}"),
                    source: e,
                })
            }
        };
        hasher.update(&buf[..n]);
        dest.write_all(&buf[..n])
            .map_err(io_err("writing the payload"))?;
        done += n as u64;
        progress(done, expected_size);
    }
    dest.flush().map_err(io_err("writing the payload"))?;
    if done != expected_size {
        return Err(BundleError::PayloadSizeMismatch {
            expected: expected_size,
            actual: done,
        });
    }
    let actual = hex::encode(hasher.finalize());
    if actual != opened.manifest.payload_sha256 {
        return Err(BundleError::PayloadHashMismatch {
            expected: opened.manifest.payload_sha256,
            actual,
        });
    }
    Ok(actual)
}

#[cfg(test)]
mod tests;
