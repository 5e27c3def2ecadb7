//! `maculaos-sdk`: build MaculaOS images, boot them in QEMU, run the scenarios.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

mod bundle;
mod devvm;
mod publish;

/// MaculaOS host SDK.
#[derive(Parser)]
#[command(name = "maculaos-sdk", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct BuildArgs {
    /// Output directory for the disk image, slot image and manifest [default: out/ in the repository].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Version written into the image (os-release, file names).
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub version: String,
    /// Debian mirror (also MACULAOS_MIRROR).
    #[arg(
        long,
        env = "MACULAOS_MIRROR",
        default_value = "http://deb.debian.org/debian"
    )]
    pub mirror: String,
    /// Cache for downloaded packages and build stages (also MACULAOS_CACHE).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// zstd compression level of the root squashfs (1-22).
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..=22))]
    pub zstd_level: u32,
}

impl BuildArgs {
    pub fn options(&self) -> maculaos_image::BuildOptions {
        let repo = repo_root();
        maculaos_image::BuildOptions {
            out: out_dir(self.out.as_deref()),
            cache: self
                .cache
                .clone()
                .unwrap_or_else(maculaos_image::default_cache),
            version: self.version.clone(),
            suite: "bookworm".into(),
            mirror: self.mirror.clone(),
            source_date_epoch: maculaos_image::source_date_epoch(&repo),
            zstd_level: self.zstd_level,
            repo,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Build the disk image, the slot image and build-manifest.json.
    BuildImage(BuildArgs),
    /// The development VM.
    Vm {
        #[command(subcommand)]
        command: devvm::VmCommand,
    },
    /// Run the unit tests and the scenario suite.
    Test(maculaos_scenarios::TestArgs),
    /// Scan a node's ports (the firewall scenario runs it on another node).
    #[command(hide = true)]
    Scan(maculaos_scenarios::scan::ScanArgs),
    /// Make a minisign key pair for signing update bundles.
    Keygen(bundle::KeygenArgs),
    /// Make a signed update bundle (.mos) from a built slot image.
    Bundle(bundle::BundleArgs),
    /// Put a bundle on a self-hosted update source: DIR/<channel>/ and its latest.json.
    Publish(publish::PublishArgs),
}

/// The repository this SDK was built from (holds image/ and crates/).
pub fn repo_root() -> PathBuf {
    if let Some(p) = std::env::var_os("MACULAOS_REPO") {
        return PathBuf::from(p);
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or(here)
}

/// The output directory: as given (relative to the current directory), or out/ in the repository.
pub fn out_dir(given: Option<&std::path::Path>) -> PathBuf {
    match given {
        Some(p) if p.is_absolute() => p.to_owned(),
        Some(p) => std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned()),
        None => repo_root().join("out"),
    }
}

fn main() {
    let cli = Cli::parse();
    let result: Result<i32> = match cli.command {
        Command::BuildImage(args) => maculaos_image::build(&args.options()).map(|_| 0),
        Command::Vm { command } => devvm::run(command).map(|_| 0),
        Command::Keygen(args) => bundle::keygen(&args).map(|_| 0),
        Command::Scan(args) => maculaos_scenarios::scan::scan(&args).map(|_| 0),
        Command::Bundle(args) => bundle::run(&args).map(|_| 0),
        Command::Publish(args) => publish::run(&args).map(|_| 0),
        Command::Test(args) => {
            let build = BuildArgs {
                out: args.out.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                mirror: std::env::var("MACULAOS_MIRROR")
                    .unwrap_or_else(|_| "http://deb.debian.org/debian".into()),
                cache: None,
                zstd_level: 9,
            };
            maculaos_scenarios::run(&args, &build.options())
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
