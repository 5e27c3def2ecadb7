//! `maculaos-sdk publish`: put a bundle on a self-hosted update source, a
//! directory served over HTTP(S) (or copied to a USB stick), as
//! `DIR/<channel>/maculaos-<version>-<arch>.mos` plus the channel index
//! `DIR/<channel>/latest.json` that nodes read.

use anyhow::{Context, Result};
use clap::Args;
use maculaos_bundle as bundle;
use maculaos_fetch::{write_index, INDEX_FILE};
use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct PublishArgs {
    /// The signed bundle (.mos) to publish, from `maculaos-sdk bundle`.
    #[arg(long, value_name = "FILE")]
    pub bundle: PathBuf,
    /// The update source's root directory (what the web server serves as upgrade.url).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

pub fn run(args: &PublishArgs) -> Result<()> {
    let src = &args.bundle;
    let opened = bundle::open(src)
        .with_context(|| format!("reading the bundle {} to publish", src.display()))?;
    let manifest = opened.manifest().clone();
    drop(opened);
    let root = crate::out_dir(Some(&args.dir));
    let channel_dir = root.join(manifest.channel.as_str());
    fs::create_dir_all(&channel_dir)
        .with_context(|| format!("creating {}", channel_dir.display()))?;
    let dest = channel_dir.join(bundle::bundle_file_name(
        &manifest.os_version,
        &manifest.arch,
    ));

    // The index published before, to say what this replaces.
    let index_path = channel_dir.join(INDEX_FILE);
    let previous = fs::read(&index_path).ok().and_then(|b| {
        maculaos_fetch::parse_index(
            &b,
            &index_path.display().to_string(),
            manifest.channel,
            &manifest.arch,
        )
        .ok()
    });

    if !same_file(src, &dest) {
        copy_whole(src, &dest)?;
    }
    let index = write_index(&channel_dir, &dest)?;

    println!("published: {} ({} bytes)", dest.display(), index.size);
    println!("index:     {}", index_path.display());
    println!(
        "version:   {} ({}, channel {})",
        index.version, index.arch, index.channel
    );
    println!("sha256:    {}", index.sha256);
    match previous {
        Some(p) if p.version == index.version => {
            println!("replaces:  the index of the same version")
        }
        Some(p) => {
            println!("replaces:  {}", p.version);
            if bundle::compare_versions(&index.version, &p.version) == Ordering::Less {
                println!(
                    "WARNING: {} is older than the {} published before: nodes that already run {} will not downgrade to it",
                    index.version, p.version, p.version
                );
            }
        }
        None => {}
    }
    println!(
        "Nodes whose upgrade.url is the web address of {} (channel {}) now see {}: `maculaos upgrade --check`.",
        root.display(),
        index.channel,
        index.version
    );
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Copy through a hidden temporary name and rename: a web server never
/// serves half a bundle under its real name.
fn copy_whole(src: &Path, dest: &Path) -> Result<()> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.partial"));
    let result = fs::copy(src, &tmp)
        .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))
        .and_then(|_| {
            fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("writing {}", tmp.display()))
        })
        .and_then(|_| {
            fs::rename(&tmp, dest)
                .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
