//! minisign keys: making them, reading them, naming them.
//!
//! Keys are the standard minisign files so that the `minisign` CLI can check
//! our bundles and sign manifests for us: `.pub` (public, two lines) and
//! `.key` (secret, two lines). Our secret keys are unencrypted ("no password"
//! mode, `minisign -G -W`) because bundles are built unattended; protect the
//! file instead (it is written mode 0600).

use crate::error::{io_err, BundleError, Result};
use base64::Engine;
use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Byte offsets in a decoded minisign secret key: sig_alg(2) kdf_alg(2) ...
const SK_KDF_ALG: std::ops::Range<usize> = 2..4;
const SK_LEN: usize = 158;
const KDF_NONE: [u8; 2] = [0, 0];

/// The key id as minisign prints it (`minisign public key 3CE7FFA703BDDED2`):
/// 16 upper-case hex digits of the little-endian u64 key number. Errors and
/// summaries use it so they match what `minisign` and the `.pub` files say.
pub fn key_id_of(keynum: &[u8]) -> String {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(keynum) {
        *d = *s;
    }
    format!("{:016X}", u64::from_le_bytes(b))
}

/// The key id of a public key (see [`key_id_of`]).
pub fn key_id(pk: &PublicKey) -> String {
    key_id_of(pk.keynum())
}

/// The base64 line of a public key, what `minisign -P` takes and what people
/// paste into configs and chat.
pub fn public_key_line(pk: &PublicKey) -> String {
    pk.to_base64()
}

fn check_key_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(BundleError::InvalidName {
            what: "key name",
            value: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.starts_with('.') {
        return bad("it must not start with a dot");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return bad("use letters, digits, '.', '_' and '-' only");
    }
    Ok(())
}

/// Make a new unencrypted minisign key pair as `<dir>/<name>.pub` and
/// `<dir>/<name>.key`, and return those paths (public, secret).
///
/// Why it refuses to overwrite: replacing a signing key silently would make
/// every node that trusts the old one reject the next bundle, and the old
/// secret key could not be recovered.
pub fn generate_keypair(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    check_key_name(name)?;
    let pub_path = dir.join(format!("{name}.pub"));
    let key_path = dir.join(format!("{name}.key"));
    for p in [&pub_path, &key_path] {
        if p.exists() || p.is_symlink() {
            return Err(BundleError::KeyExists { path: p.clone() });
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("creating key directory {}", dir.display())))?;

    let kp = KeyPair::generate_unencrypted_keypair().map_err(|e| BundleError::Sign {
        reason: format!("generating a key pair: {e}"),
    })?;
    let id = key_id(&kp.pk);
    let sk_text = kp
        .sk
        .to_box(Some(&format!(
            "maculaos signing key {name} ({id}), not password-protected"
        )))
        .map_err(|e| BundleError::Sign {
            reason: format!("encoding the secret key: {e}"),
        })?
        .into_string();
    let pk_text = kp
        .pk
        .to_box()
        .map_err(|e| BundleError::Sign {
            reason: format!("encoding the public key: {e}"),
        })?
        .into_string();

    write_new(&key_path, sk_text.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&pub_path, pk_text.as_bytes(), 0o644) {
        // Leave no half pair behind: a lone .key would block the next attempt.
        let _ = fs::remove_file(&key_path);
        return Err(e);
    }
    Ok((pub_path, key_path))
}

/// Write a file that must not exist yet (O_EXCL), so a race with another
/// keygen cannot clobber a key either.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                BundleError::KeyExists {
                    path: path.to_owned(),
                }
            } else {
                BundleError::Io {
                    what: format!("creating {}", path.display()),
                    source: e,
                }
            }
        })?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("writing {}", path.display())))
}

/// Read a minisign public key file (`.pub`).
pub fn load_public_key(path: &Path) -> Result<PublicKey> {
    let text = fs::read_to_string(path)
        .map_err(io_err(format!("reading public key {}", path.display())))?;
    PublicKey::from_box(PublicKeyBox::from(text)).map_err(|e| BundleError::BadKey {
        path: path.to_owned(),
        kind: "public",
        reason: e.to_string(),
    })
}

/// Read an unencrypted minisign secret key file (`.key`).
///
/// Why we decode it ourselves instead of `SecretKeyBox::into_unencrypted_secret_key`:
/// `minisign -G -W` (0.11, Debian 12) writes unencrypted keys with an all-zero
/// checksum, which the crate rejects as corrupt. We parse the bytes with
/// `SecretKey::from_bytes`, and signing checks the key for real: `sign`
/// verifies its own signature with the public half (see `crate::sign_manifest`),
/// so a damaged key still fails, before anything is written.
pub fn load_secret_key(path: &Path) -> Result<SecretKey> {
    let bad = |reason: String| BundleError::BadKey {
        path: path.to_owned(),
        kind: "secret",
        reason,
    };
    let text = fs::read_to_string(path)
        .map_err(io_err(format!("reading secret key {}", path.display())))?;
    let mut lines = text.lines();
    let comment = lines.next().unwrap_or_default();
    if !comment.starts_with("untrusted comment:") {
        return Err(bad("the first line is not `untrusted comment: …`".into()));
    }
    let encoded = lines
        .next()
        .ok_or_else(|| bad("the key line is missing".into()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| bad(format!("the key line is not base64 ({e})")))?;
    if bytes.len() != SK_LEN {
        return Err(bad(format!(
            "the key is {} bytes, a minisign secret key is {SK_LEN}",
            bytes.len()
        )));
    }
    if &bytes[..2] != b"Ed" {
        return Err(bad("it is not an Ed25519 minisign key".into()));
    }
    if bytes[SK_KDF_ALG] != KDF_NONE {
        return Err(BundleError::EncryptedKey {
            path: path.to_owned(),
        });
    }
    SecretKey::from_bytes(&bytes).map_err(|e| bad(e.to_string()))
}

/// The public half of a secret key (minisign secret keys carry it).
pub fn public_key_of(sk: &SecretKey) -> Result<PublicKey> {
    PublicKey::from_secret_key(sk).map_err(|e| BundleError::Sign {
        reason: format!("deriving the public key: {e}"),
    })
}

/// Every `*.pub` in `dir` (e.g. `/usr/share/maculaos/keys/`), in file name order.
///
/// Why a directory of files: keys are added and rotated by dropping files into
/// the image (`image/keys/`), without any list to keep in sync. A `.pub` that
/// does not parse is an error, not skipped: a silently ignored key would show
/// up later as an "untrusted signature" that is much harder to explain.
pub fn load_trusted_keys(dir: &Path) -> Result<Vec<PublicKey>> {
    let entries =
        fs::read_dir(dir).map_err(io_err(format!("reading trusted keys in {}", dir.display())))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(format!("reading trusted keys in {}", dir.display())))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "pub") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    paths.iter().map(|p| load_public_key(p)).collect()
}

/// Name of the development key pair in `<cache>/dev-keys/`.
pub const DEV_KEY_NAME: &str = "maculaos-dev";

/// The development key pair (public, secret) in `<cache>/dev-keys/`, made on
/// first use. Why: bundles and images must work out of the box for local
/// testing (an image built without a key in image/keys/ trusts this one),
/// but nothing signed with it may pass for a release: every use warns.
pub fn dev_keypair(cache: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = cache.join("dev-keys");
    let public = dir.join(format!("{DEV_KEY_NAME}.pub"));
    let secret = dir.join(format!("{DEV_KEY_NAME}.key"));
    if !secret.exists() || !public.exists() {
        return generate_keypair(&dir, DEV_KEY_NAME);
    }
    Ok((public, secret))
}
