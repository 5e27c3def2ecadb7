//! Every way making, reading or checking a bundle can fail. Each message says
//! what failed and what to do about it, because these reach an operator on a
//! node's console or a developer's terminal with nothing else around them.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = BundleError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    #[error("refusing to overwrite {}: a key is already there. Choose another name or directory, or remove it first if you really mean to replace it (nodes that trust the old key will not accept bundles signed by a new one)", .path.display())]
    KeyExists { path: PathBuf },

    #[error("{} is not a usable minisign {kind} key: {reason}. Make one with `maculaos-sdk keygen` (or `minisign -G -W`)", .path.display())]
    BadKey {
        path: PathBuf,
        kind: &'static str,
        reason: String,
    },

    #[error("{} is a password-protected minisign key; unattended bundle builds need a key without a password. Make one with `maculaos-sdk keygen`, or remove the password with `minisign -C -s {}` and an empty password", .path.display(), .path.display())]
    EncryptedKey { path: PathBuf },

    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error("the signature is not a minisign signature file ({reason}). Sign manifest.json with `minisign -S` or use `maculaos-sdk bundle`")]
    BadSignatureFile { reason: String },

    #[error("signing the manifest failed: {reason}. Check that the secret key is intact (`maculaos-sdk keygen` makes a new one)")]
    Sign { reason: String },

    #[error("{source_name} is not a MaculaOS bundle: {reason}. Is it a .mos file made by `maculaos-sdk bundle`, and was it copied completely?")]
    NotABundle { source_name: String, reason: String },

    #[error("the manifest of {source_name} is not valid: {reason}. The bundle is damaged, or was made by an incompatible tool; get or build it again")]
    BadManifest { source_name: String, reason: String },

    #[error("no trusted keys to check the bundle's signature (key {signature_key}) against. Put the signer's public key (.pub) in the trusted keys directory (/usr/share/maculaos/keys/ on a node, image/keys/ in the repository)")]
    NoTrustedKeys { signature_key: String },

    #[error("the bundle is signed by key {signature_key}, which is not trusted here (trusted keys: {}). Sign it with a trusted key, or build an image that trusts this one (its .pub in image/keys/)", .trusted.join(", "))]
    UntrustedSignature {
        signature_key: String,
        trusted: Vec<String>,
    },

    #[error("the signature of the bundle's manifest does not verify with key {key_id}: {reason}. The manifest was changed after signing, or the bundle is damaged: do not install it; get or build it again")]
    BadSignature { key_id: String, reason: String },

    #[error("bundle format {found} is not supported here (this system reads format {supported}). Upgrade in smaller steps, or use a bundle made for this version")]
    UnknownFormat { found: u32, supported: u32 },

    #[error("the bundle is for architecture {bundle}, this system is {node}. Use the {node} bundle of that version")]
    WrongArch { bundle: String, node: String },

    #[error("the bundle is for systems of kind {bundle:?}, this one is {node:?} (disk layout or boot scheme differ). Use a bundle made for {node:?}, or reinstall")]
    Incompatible { bundle: String, node: String },

    #[error("the payload was not copied: verify the bundle (OpenedBundle::verify) before reading its payload, so nothing unsigned is ever written")]
    NotVerified,

    #[error("payload size {actual} bytes does not match the manifest's {expected}: the bundle is truncated or damaged, or its payload changed after the manifest was made. Discard anything written from it and get the bundle again")]
    PayloadSizeMismatch { expected: u64, actual: u64 },

    #[error("payload sha256 {actual} does not match the manifest's {expected}: the bundle is damaged or was tampered with, or its payload changed after the manifest was made. Discard anything written from it and get the bundle again")]
    PayloadHashMismatch { expected: String, actual: String },
}

/// `map_err` helper: an I/O error with what we were doing.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BundleError {
    let what = what.into();
    move |source| BundleError::Io { what, source }
}
