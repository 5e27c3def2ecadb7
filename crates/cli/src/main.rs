//! `maculaos`: the operator CLI on every MaculaOS node.

mod agent;
mod apply;
mod backup;
mod config;
mod diag;
mod fetch;
mod firstboot;
mod install;
mod mesh;
mod recovery;
mod slots;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

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
    Apply(apply::Args),
    /// Show, check and describe the configuration.
    #[command(subcommand)]
    Config(config::Command),
    /// Updates of the A/B slots: `--status`, `--check`, `--download`, `--apply [--from DIR|FILE]`.
    Upgrade(slots::UpgradeArgs),
    /// Make the next boot start the other slot (the version before the last
    /// update), or cancel an update that waits to be tried. Reboot to use it.
    Rollback {
        /// Roll back to a slot that failed its trial.
        #[arg(long)]
        force: bool,
    },
    /// Make the running slot the good one if it was booted on trial (run by maculaos-mark-good.service).
    MarkGood,
    /// Install MaculaOS from the live medium onto a disk: interactive, or
    /// unattended with --config FILE / --auto (the install: settings).
    Install(install::Args),
    /// Make the next boot (once) start recovery mode: the system with root
    /// shells on the consoles, network and SSH, no workloads, and the data
    /// partition unmounted for `maculaos repair`.
    Recovery {
        /// Reboot now.
        #[arg(long)]
        reboot: bool,
    },
    /// In recovery mode: fsck the data partition, rebuild GRUB's environment
    /// if it cannot be read, check both slots against their recorded sha256.
    Repair {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A root login shell (in recovery mode, or anywhere for an admin).
    Shell,
    /// Wipe the node's configuration, credentials, identity and state and
    /// start again as on first boot (done by the next boot, which this
    /// starts); both OS slots stay.
    FactoryReset(recovery::ResetArgs),
    /// Back up the configured paths, list backups, restore one.
    #[command(subcommand)]
    Backup(backup::Command),
    /// Diagnose the network, storage or mesh (✓/✗ lines), or write a
    /// support bundle with --full -o FILE.
    Diag(diag::Args),
    /// The first-boot wizard (maculaos-firstboot.service, while the node is
    /// not configured): pairing code and QR code on the consoles, the
    /// pairing page on port 80. `--show-code` prints this boot's code.
    Firstboot(firstboot::Args),
    /// List the MaculaOS nodes on the LAN (mDNS): name, addresses, version,
    /// mesh role, realm, and whether the node is configured or waits in its
    /// first-boot wizard.
    Discover {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// How long to listen for answers, in seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// The Macula mesh: status, peers, ping, pub/sub/request, join tokens.
    #[command(subcommand)]
    Mesh(mesh::Command),
    /// The system journal, or one unit's (`maculaos logs ssh -f`).
    Logs(diag::LogsArgs),
    /// The health agent (maculaos-agent.service): runs the checks on their
    /// intervals, restarts failed units, cleans up a full disk, feeds
    /// systemd's watchdog; events go to the journal (`maculaos logs maculaos-agent`).
    Agent,
    /// Run the node's checks; exit code 0 only when none fails.
    Health {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Only the checks that decide whether this boot is good (sshd,
        /// networking); on a slot on trial, a failure reboots to use a try
        /// (maculaos-boot-check.service).
        #[arg(long)]
        boot: bool,
    },
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Info { json } => {
            let info = maculaos_info::collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", info.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply(args) => apply::run(&args),
        Command::Config(cmd) => config::run(cmd),
        Command::Upgrade(args) => slots::upgrade_cmd(&args),
        Command::Rollback { force } => slots::rollback_cmd(force),
        Command::MarkGood => slots::mark_good_cmd(),
        Command::Recovery { reboot } => recovery::recovery_cmd(reboot),
        Command::Repair { json } => recovery::repair_cmd(json),
        Command::Shell => recovery::shell_cmd(),
        Command::FactoryReset(args) => recovery::factory_reset_cmd(&args),
        Command::Install(args) => install::run(&args),
        Command::Backup(cmd) => backup::run(cmd),
        Command::Agent => {
            agent::run()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Diag(args) => diag::run(&args),
        Command::Logs(args) => diag::logs(&args),
        Command::Mesh(cmd) => mesh::run(cmd),
        Command::Firstboot(args) => firstboot::run(&args),
        Command::Discover { json, timeout } => {
            let me = maculaos_discover::ThisNode::running();
            let nodes = maculaos_discover::browse(std::time::Duration::from_secs(timeout), &me)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                print!("{}", maculaos_discover::render(&nodes, &me));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { json, boot: true } => slots::boot_check(json),
        Command::Health { json, boot: false } => {
            let checks = maculaos_health::run(&maculaos_config::Paths::system());
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                print!("{}", maculaos_health::render(&checks));
            }
            Ok(if maculaos_health::healthy(&checks) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
