//! `maculaos-sdk keygen` and `maculaos-sdk bundle`: signing keys and signed
//! update bundles (`maculaos-<version>-amd64.mos`) made from a built slot image.

use anyhow::{Context, Result};
use clap::Args;
use maculaos_bundle::{self as bundle, BundleMeta, Channel};
use maculaos_image::{Manifest, ARCH, MANIFEST};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct KeygenArgs {
    /// Directory for the key pair [default: ~/.config/maculaos/keys].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// File name of the pair: NAME.pub and NAME.key.
    #[arg(long, default_value = "maculaos")]
    pub name: String,
}

#[derive(Args)]
pub struct BundleArgs {
    /// minisign secret key (unencrypted, from `maculaos-sdk keygen` or
    /// `minisign -G -W`) [default: a development key in <cache>/dev-keys/].
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Release channel written into the manifest: stable, beta or nightly.
    #[arg(long, default_value = "stable", value_parser = parse_channel)]
    pub channel: Channel,
    /// Slot image to bundle [default: <out>/maculaos-<version>-amd64.squashfs].
    #[arg(long)]
    pub slot_image: Option<PathBuf>,
    /// Output directory for the bundle [default: out/ in the repository].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Version of the slot image (file names and manifest).
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub version: String,
    /// Cache holding the development key (also MACULAOS_CACHE).
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

fn parse_channel(s: &str) -> std::result::Result<Channel, String> {
    s.parse()
}

/// ~/.config/maculaos/keys (XDG_CONFIG_HOME respected): keys belong to the
/// person, not to a clone of the repository, and must never be committed.
fn default_key_dir() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("maculaos/keys")
}

pub fn keygen(args: &KeygenArgs) -> Result<()> {
    let dir = args
        .out
        .as_deref()
        .map(|p| crate::out_dir(Some(p)))
        .unwrap_or_else(default_key_dir);
    let (pub_path, key_path) = bundle::generate_keypair(&dir, &args.name)?;
    let pk = bundle::load_public_key(&pub_path)?;
    println!("key id:      {}", bundle::key_id(&pk));
    println!("public key:  {}", pub_path.display());
    println!(
        "secret key:  {} (no password: keep it private)",
        key_path.display()
    );
    println!("public key line: {}", bundle::public_key_line(&pk));
    println!();
    println!(
        "To make images trust this key, copy {} into {}/ and rebuild the image;",
        pub_path.display(),
        crate::repo_root().join("image/keys").display()
    );
    println!(
        "then sign bundles with `maculaos-sdk bundle --key {}`.",
        key_path.display()
    );
    Ok(())
}

/// Kernel version from build-manifest.json next to the slot image, when it
/// describes that version (optional in the bundle manifest).
fn kernel_of(slot_image: &Path, version: &str) -> Option<String> {
    let manifest = slot_image.parent()?.join(MANIFEST);
    let m = Manifest::load(&manifest).ok()?;
    (m.version == version && !m.kernel.is_empty()).then_some(m.kernel)
}

fn fmt_bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    format!("{:.1} MiB ({n} bytes)", n as f64 / MIB)
}

pub fn run(args: &BundleArgs) -> Result<()> {
    let out = crate::out_dir(args.out.as_deref());
    let slot_image = match &args.slot_image {
        Some(p) => p.clone(),
        None => out.join(format!("maculaos-{}-{ARCH}.squashfs", args.version)),
    };
    if !slot_image.is_file() {
        anyhow::bail!(
            "no slot image at {}: build it with `maculaos-sdk build-image --version {}`, or name one with --slot-image",
            slot_image.display(),
            args.version
        );
    }
    let (key, dev) = match &args.key {
        Some(k) => (k.clone(), false),
        None => {
            let cache = args
                .cache
                .clone()
                .unwrap_or_else(maculaos_image::default_cache);
            (bundle::dev_keypair(&cache)?.1, true)
        }
    };
    let meta = BundleMeta {
        os_version: args.version.clone(),
        arch: ARCH.to_string(),
        channel: args.channel,
        kernel: kernel_of(&slot_image, &args.version),
        built_at: None,
    };
    let path = out.join(bundle::bundle_file_name(&args.version, ARCH));
    eprintln!(
        "==> bundling {} into {}",
        slot_image.display(),
        path.display()
    );
    let manifest = bundle::create(&slot_image, &path, &meta, &key)?;

    // Read it back as a node would (signature and manifest, not the payload):
    // catches a key whose public half is not what we think before anyone
    // downloads the bundle.
    let pk = bundle::public_key_of(&bundle::load_secret_key(&key)?)?;
    bundle::open(&path)?
        .verify_for(std::slice::from_ref(&pk), ARCH, maculaos_bundle::COMPATIBLE)
        .with_context(|| format!("checking the new bundle {}", path.display()))?;

    let size = std::fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    println!("bundle:   {} ({size} bytes)", path.display());
    println!("version:  {} ({})", manifest.os_version, manifest.arch);
    println!("channel:  {}", manifest.channel);
    if let Some(k) = &manifest.kernel {
        println!("kernel:   {k}");
    }
    println!("payload:  {}", fmt_bytes(manifest.payload_size));
    println!("sha256:   {}", manifest.payload_sha256);
    println!("key id:   {} ({})", bundle::key_id(&pk), key.display());
    if dev {
        println!(
            "WARNING: dev-signed bundle: signed with the development key {} (key id {}), not a release key. Nodes accept it only if their image trusts {} (image/keys/). Use --key for bundles you publish.",
            key.display(),
            bundle::key_id(&pk),
            key.with_extension("pub").display()
        );
    }
    Ok(())
}
