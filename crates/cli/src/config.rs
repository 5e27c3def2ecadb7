//! `maculaos config show | validate | schema`.

use anyhow::Result;
use clap::Subcommand;
use maculaos_config::load::{check, merge, redact, render_with_sources};
use maculaos_config::sources::{self, Format};
use maculaos_config::{Config, Paths, Using};
use serde::Deserialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum Command {
    /// Print the configuration in effect (all sources merged).
    Show {
        /// Name the source of every key.
        #[arg(long)]
        sources: bool,
        /// Print tokens and passwords instead of `<redacted>`.
        #[arg(long)]
        show_secrets: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check configuration files offline (MaculaOS config.yaml or #cloud-config).
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema of config.yaml, for editors.
    Schema,
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Show {
            sources,
            show_secrets,
            json,
        } => show(sources, show_secrets, json),
        Command::Validate { files } => validate(&files),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&maculaos_config::json_schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn show(with_sources: bool, show_secrets: bool, json: bool) -> Result<ExitCode> {
    let loaded = maculaos_config::load(&Paths::system());
    let value = if show_secrets {
        loaded.value.clone()
    } else {
        redact(&loaded.value)
    };
    if json {
        let out = serde_json::json!({
            "using": loaded.using,
            "problems": loaded.problems,
            "config": value,
            "sources": loaded.provenance,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !loaded.problems.is_empty() {
        let using = match loaded.using {
            Using::LastGood => "the last good configuration",
            _ => "the image defaults",
        };
        println!("# CONFIGURATION ERROR: the node runs with {using}, shown below.");
        for p in &loaded.problems {
            println!("#   {p}");
        }
        println!("# Fix the files named above, then run `maculaos apply`.");
    }
    if with_sources {
        print!("{}", render_with_sources(&value, &loaded.provenance));
    } else {
        print!("{}", serde_yaml_ng::to_string(&value)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(files: &[PathBuf]) -> Result<ExitCode> {
    let mut bad = 0;
    for f in files {
        let name = f.display().to_string();
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                bad += 1;
                let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    " (run it with sudo)"
                } else {
                    ""
                };
                println!("{name}: cannot read it: {e}{hint}");
                continue;
            }
        };
        let problems = match sources::parse(&name, &text, Format::UserData) {
            Err(p) => vec![p],
            Ok(source) => {
                let (value, prov) = merge(std::slice::from_ref(&source));
                match Config::deserialize(value) {
                    Ok(c) => check(&c, &prov),
                    Err(e) => vec![maculaos_config::Problem::from_yaml(&name, &e)],
                }
            }
        };
        if problems.is_empty() {
            println!("{name}: valid");
        } else {
            bad += 1;
            for p in problems {
                println!("{p}");
            }
        }
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
