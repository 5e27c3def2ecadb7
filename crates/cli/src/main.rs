//! `maculaos`: the operator CLI on every MaculaOS node.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::Path;

/// MaculaOS node management.
#[derive(Parser)]
#[command(name = "maculaos", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show version, slot, boot mode, kernel, uptime, root and data partition state.
    Info {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Make the node match its configuration (run at boot by maculaos-apply.service).
    Apply,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Info { json } => {
            let info = maculaos_info::collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", info.render());
            }
        }
        Command::Apply => {
            let report =
                maculaos_apply::apply(Path::new("/")).context("applying the configuration")?;
            if report.changes.is_empty() {
                println!("maculaos apply: nothing to change");
            }
            for c in report.changes {
                println!("maculaos apply: {c}");
            }
        }
    }
    Ok(())
}
