//! `maculaos install`: MaculaOS from the live medium onto a disk
//! (the logic is in `maculaos-install`).

use anyhow::{bail, Context, Result};
use maculaos_boot::media::MEDIUM_DIR;
use maculaos_config::Paths;
use maculaos_install::disks::{self, Disk};
use maculaos_install::interactive::Prompter;
use maculaos_install::node_config;
use maculaos_install::{Payload, Plan, Printer};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The disk to install on (/dev/sda, /dev/nvme0n1); wins over install.device.
    #[arg(long, value_name = "DEV")]
    device: Option<String>,
    /// Erase the disk even if it holds partitions or a filesystem (install.force).
    #[arg(long)]
    force: bool,
    /// A MaculaOS config.yaml: its `maculaos.install` section (device, force,
    /// reboot, silent) drives the install, and the whole file becomes the
    /// installed node's /var/lib/maculaos/config.yaml.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Reboot when done (install.reboot).
    #[arg(long)]
    reboot: bool,
    /// Show the plan (disk, partitions, configuration) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Ask nothing, not even for the confirmation (install.silent).
    #[arg(long, short = 'y')]
    yes: bool,
    /// What the installer boot runs: install unattended as the running
    /// system's configuration says (install.device, from config.yaml,
    /// NoCloud cidata or maculaos.install.* on the kernel command line),
    /// storing that configuration; without install.device, only say how to
    /// start the interactive installer.
    #[arg(long, conflicts_with_all = ["device", "config"])]
    auto: bool,
    /// The install payload: a directory with the live medium's contents.
    #[arg(long, value_name = "DIR", default_value = MEDIUM_DIR)]
    from: PathBuf,
    /// List the disks with what is on each, and do nothing else.
    #[arg(long, conflicts_with_all = ["device", "force", "config", "reboot", "dry_run", "yes", "auto"])]
    list: bool,
}

/// Where the configuration to store comes from.
enum ConfigFrom {
    /// Already known (a file, or the live system's configuration).
    Text(String),
    /// The interactive questions.
    Ask,
    /// None given: the image defaults only.
    Nothing,
}

/// One install, however it was asked for.
struct Job {
    /// None: pick it from the list (interactive).
    device: Option<String>,
    force: bool,
    reboot: bool,
    /// Ask for the typed confirmation.
    confirm: bool,
    config: ConfigFrom,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    if args.list {
        let all: Vec<Disk> = disks::list()?
            .into_iter()
            .filter(Disk::is_candidate)
            .collect();
        print!("{}", disks::render_table(&all));
        return Ok(ExitCode::SUCCESS);
    }
    if !args.dry_run && !maculaos_install::is_root() {
        bail!("maculaos install writes a whole disk: run it as root (sudo maculaos install …); --list and --dry-run work without");
    }
    let job = if args.auto {
        let eff = node_config::effective(&Paths::system())?;
        let install = eff.install();
        let Some(device) = install.device.clone() else {
            println!("no install.device in the configuration: run `sudo maculaos install` for the interactive installer");
            return Ok(ExitCode::SUCCESS);
        };
        node_config::refuse_config_url(install)?;
        Job {
            device: Some(device),
            force: install.force || args.force,
            reboot: install.reboot || args.reboot,
            confirm: false,
            config: ConfigFrom::Text(eff.stored.clone()),
        }
    } else if let Some(file) = &args.config {
        let fc = node_config::from_file(file)?;
        let install = fc.install();
        node_config::refuse_config_url(install)?;
        let device = args
            .device
            .clone()
            .or_else(|| install.device.clone())
            .with_context(|| {
                format!(
                    "no disk to install on: pass --device DEV or set maculaos.install.device in {}",
                    file.display()
                )
            })?;
        Job {
            device: Some(device),
            force: install.force || args.force,
            reboot: install.reboot || args.reboot,
            confirm: !(args.yes || install.silent),
            config: ConfigFrom::Text(fc.text.clone()),
        }
    } else {
        if args.yes && args.device.is_none() {
            bail!("--yes installs without asking anything: name the disk with --device DEV (or use --config FILE with install.device)");
        }
        // Interactive. Picking the disk from the list and typing its path
        // to confirm is the consent to erase it; with --device, --force is.
        Job {
            force: args.force || args.device.is_none(),
            device: args.device.clone(),
            reboot: args.reboot,
            confirm: !args.yes,
            config: if args.yes {
                ConfigFrom::Nothing
            } else {
                ConfigFrom::Ask
            },
        }
    };
    let stdin = std::io::stdin();
    let mut prompter = Prompter::new(stdin.lock(), std::io::stdout());
    install(args, job, &mut prompter)
}

fn install<R: BufRead, W: Write>(
    args: &Args,
    job: Job,
    prompter: &mut Prompter<R, W>,
) -> Result<ExitCode> {
    let payload = Payload::open(&args.from)?;
    let size = payload.manifest.slot.size;
    let all = disks::list()?;
    let running = maculaos_install::running_from();
    let running = running.as_deref();
    let plan = match &job.device {
        Some(dev) => Plan::new(&disks::find(&all, dev)?, running, job.force, size)?,
        None => {
            let usable = |d: &Disk| Plan::new(d, running, true, size).map(|_| ());
            let disk = prompter.pick_disk(&all, &usable)?;
            Plan::new(&disk, running, true, size)?
        }
    };
    let config = match job.config {
        ConfigFrom::Text(t) => t,
        ConfigFrom::Ask => prompter.answers()?.to_yaml()?,
        ConfigFrom::Nothing => node_config::stored_yaml(
            &serde_yaml_ng::Value::Null,
            "without a configuration (the image defaults apply)",
        )?,
    };
    println!();
    print!("{}", plan.summary());
    println!("  configuration to store as /var/lib/maculaos/config.yaml:");
    for line in node_config::redacted(&config).lines() {
        println!("    {line}");
    }
    if args.dry_run {
        println!("dry run: nothing was written");
        return Ok(ExitCode::SUCCESS);
    }
    if job.confirm && !prompter.confirm_erase(&plan)? {
        println!("cancelled: nothing was written");
        return Ok(ExitCode::FAILURE);
    }
    let mut printer = Printer::default();
    let installed = maculaos_install::write(
        &plan,
        &payload,
        &config,
        &maculaos_install::Options::default(),
        &mut |r| {
            if let Some(line) = printer.line(&r) {
                // Now, not when the buffer fills: stdout may be the journal.
                println!("{line}");
                let _ = std::io::stdout().flush();
            }
        },
    )?;
    println!("{}", installed.message());
    if job.reboot {
        println!("rebooting");
        maculaos_runner::Cmd::new("systemctl").arg("reboot").run()?;
    } else {
        println!("remove the installation medium and reboot");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: Args,
    }

    fn parse(a: &[&str]) -> Result<Args, clap::Error> {
        T::try_parse_from(std::iter::once("install").chain(a.iter().copied())).map(|t| t.args)
    }

    #[test]
    fn flags() {
        T::command().debug_assert();
        let a = parse(&[]).unwrap();
        assert_eq!(a.from, PathBuf::from(MEDIUM_DIR));
        assert!(!a.auto && !a.list && !a.yes && a.device.is_none());
        let a = parse(&[
            "--device",
            "/dev/vda",
            "--force",
            "--config",
            "c.yaml",
            "--reboot",
            "--dry-run",
            "-y",
            "--from",
            "/mnt",
        ])
        .unwrap();
        assert_eq!(a.device.as_deref(), Some("/dev/vda"));
        assert!(a.force && a.reboot && a.dry_run && a.yes);
        assert_eq!(a.config, Some(PathBuf::from("c.yaml")));
        assert!(parse(&["--auto", "--dry-run", "--force", "--reboot"]).is_ok());
        assert!(parse(&["--auto", "--device", "/dev/vda"]).is_err());
        assert!(parse(&["--auto", "--config", "c.yaml"]).is_err());
        assert!(parse(&["--list", "--device", "/dev/vda"]).is_err());
        assert!(parse(&["--list"]).unwrap().list);
    }
}
