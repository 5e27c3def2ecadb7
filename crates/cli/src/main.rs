//! `maculaos`: the operator CLI on every MaculaOS node.

mod agent;
mod apply;
mod backup;
mod config;
mod diag;
mod fetch;
mod firewall;
mod firstboot;
mod fleet;
mod install;
mod mesh;
mod recovery;
mod services;
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
    /// Updates of the A/B slots: `--status`, `--check`, `--download`, `--apply [--from DIR|FILE]`;
    /// with no flag, the same as `--apply`: check, download and write the newest.
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
    /// Factory reset, as the user guide names it: asks before it erases
    /// (type "erase"), or --yes; --keep-network keeps the node reachable.
    Factory(recovery::FactoryArgs),
    /// Back up the configured paths (`maculaos backup FILE`), list backups,
    /// restore one.
    Backup(backup::Args),
    /// Check a backup whole, then put its files back (`backup restore FILE`).
    Restore {
        /// The archive to restore.
        file: std::path::PathBuf,
        /// The private key to decrypt an encrypted backup (….tar.gz.age) with.
        #[arg(long, value_name = "FILE")]
        identity: Option<std::path::PathBuf>,
    },
    /// Run a service: an OCI image by reference (pulled), or an image
    /// archive (.tar, .tar.gz); kept in config.d, so it runs again after
    /// reboots and updates.
    Deploy(services::DeployArgs),
    /// The deployed services: state, uptime, restarts, ports, image.
    Services {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One service: `maculaos service status NAME`.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Stop a service; it stays stopped across reboots until `start`.
    Stop { name: String },
    /// Start a stopped service.
    Start { name: String },
    /// Restart a service.
    Restart { name: String },
    /// Remove a deployed service (its image and volumes' data stay).
    Remove { name: String },
    /// The network's state: `maculaos network status`.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// The firewall: `show` what is open and why, `allow 8080/tcp`, `deny`.
    #[command(subcommand)]
    Firewall(firewall::Command),
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
    /// The fleet: every node of this node's realm from its heartbeats
    /// (healthy, degraded, offline), `list` and `status NODE`.
    #[command(subcommand)]
    Fleet(fleet::Command),
    /// The system journal, or one unit's (`maculaos logs ssh -f`).
    Logs(diag::LogsArgs),
    /// The health agent (maculaos-agent.service): runs the checks on their
    /// intervals, restarts failed units, cleans up a full disk, feeds
    /// systemd's watchdog; events go to the journal (`maculaos logs maculaos-agent`).
    Agent,
    /// The git server's forced command (`maculaos.gitops`): sshd runs it
    /// for every session of the user git; it serves fetch and push of the
    /// repositories under ROOT and nothing else.
    #[command(hide = true)]
    GitServe { root: String },
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

#[derive(Subcommand)]
enum ServiceCommand {
    /// State, image, uptime, restarts, ports, volumes; exit 0 only when it runs.
    Status {
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Interfaces, default gateway, DNS, internet and the mesh's bootstrap
    /// nodes, checked (the same checks as `maculaos diag network`).
    Status {
        /// The name to resolve (default: the first bootstrap peer, else
        /// the update server).
        #[arg(long)]
        resolve: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Whether `command` changes the system or reads what only root may, so that a user who is not root is
/// told to use sudo before anything is tried (instead of a permission
/// error from deep inside).
fn needs_root(command: &Command) -> bool {
    match command {
        Command::Apply(_)
        | Command::Rollback { .. }
        | Command::MarkGood
        | Command::Recovery { .. }
        | Command::Repair { .. }
        | Command::FactoryReset(_)
        | Command::Factory(_)
        | Command::Restore { .. } => true,
        // Read the configuration, which holds secrets and is root's only.
        Command::Health { .. } | Command::Services { .. } | Command::Service(_) => true,
        Command::Firewall(c) => firewall::needs_root(c),
        Command::Fleet(c) => fleet::needs_root(c),
        // `wg show` (the overlay's peers and handshakes) is root's.
        Command::Network(_) => true,
        Command::Deploy(_)
        | Command::Stop { .. }
        | Command::Start { .. }
        | Command::Restart { .. }
        | Command::Remove { .. } => true,
        // `--json` alone is refused by upgrade itself, without sudo first.
        Command::Upgrade(a) => a.changes_the_system() && !a.json_alone(),
        Command::Backup(a) => a.changes_the_system(),
        _ => false,
    }
}

/// Run this same command again as root through sudo, as the guide's
/// commands are written without it: the admin user's sudo rights (or
/// password) decide, and nothing else is tried as a user.
fn through_sudo() -> Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    // This very command already started by sudo and still not root
    // (sudo's target user is someone else): going round would never end.
    let me_text = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if std::env::var("SUDO_COMMAND").is_ok_and(|c| !me_text.is_empty() && c.starts_with(&me_text)) {
        anyhow::bail!("this needs root, and sudo did not make this command root: run it as root");
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let me = std::env::current_exe().unwrap_or_else(|_| "/usr/bin/maculaos".into());
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    eprintln!(
        "maculaos {}: needs root; running it through sudo",
        shown.first().map(String::as_str).unwrap_or_default()
    );
    let err = std::process::Command::new("sudo")
        .arg("--")
        .arg(me)
        .args(&args)
        .exec();
    anyhow::bail!(
        "running sudo: {err}; run it as root (`sudo maculaos {}`)",
        shown.join(" ")
    )
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    if needs_root(&cli.command) && !maculaos_install::is_root() {
        return through_sudo();
    }
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
        Command::Factory(args) => recovery::factory_cmd(&args),
        Command::Restore { file, identity } => backup::run(backup::Command::Restore {
            file: Some(file),
            latest: false,
            dir: None,
            identity,
        }),
        Command::Deploy(args) => services::deploy(&args),
        Command::Firewall(c) => firewall::run(c),
        Command::Services { json } => services::list(json),
        Command::Service(ServiceCommand::Status { name, json }) => services::status(&name, json),
        Command::Stop { name } => services::control("stop", &name),
        Command::Start { name } => services::control("start", &name),
        Command::Restart { name } => services::control("restart", &name),
        Command::Remove { name } => services::remove(&name),
        Command::Network(NetworkCommand::Status { resolve, json }) => {
            diag::network_status(resolve.as_deref(), json)
        }
        Command::Install(args) => install::run(&args),
        Command::Backup(args) => backup::run_args(args),
        Command::Agent => {
            agent::run()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Diag(args) => diag::run(&args),
        Command::Logs(args) => diag::logs(&args),
        Command::Mesh(cmd) => mesh::run(cmd),
        Command::Fleet(cmd) => fleet::run(cmd),
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
        Command::GitServe { root } => git_serve(&root),
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

/// Serves the git request sshd passed in `SSH_ORIGINAL_COMMAND` from the
/// repositories under `root` (a push creates a repository that does not
/// exist).
fn git_serve(root: &str) -> Result<ExitCode> {
    use maculaos_embedded::git;
    use std::os::unix::process::CommandExt;
    let asked = std::env::var("SSH_ORIGINAL_COMMAND").ok();
    let req = match git::parse(asked.as_deref()) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("maculaos: {why}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let dir = req.dir(root);
    if std::path::Path::new(&dir).join("HEAD").exists() {
        let err = std::process::Command::new(req.op.program())
            .arg(&dir)
            .exec();
        return Err(anyhow::anyhow!("running {}: {err}", req.op.program()));
    }
    if req.op != git::Op::ReceivePack {
        eprintln!(
            "maculaos: no repository `{}` on this node (a push creates it)",
            req.repo
        );
        return Ok(ExitCode::FAILURE);
    }
    let made = std::process::Command::new("git")
        .args(["init", "--quiet", "--bare", "--initial-branch=main", &dir])
        .status()?;
    if !made.success() {
        eprintln!("maculaos: could not create the repository `{}`", req.repo);
        return Ok(ExitCode::FAILURE);
    }
    let pushed = std::process::Command::new(req.op.program())
        .arg(&dir)
        .status()?;
    // The first push names the default branch (`main` unless it pushed
    // only another one), so that a clone checks it out.
    let branches = std::process::Command::new("git")
        .args([
            "-C",
            &dir,
            "for-each-ref",
            "--format=%(refname)",
            "refs/heads/",
        ])
        .output()?;
    let branches = String::from_utf8_lossy(&branches.stdout);
    let branches: Vec<&str> = branches.lines().collect();
    if !branches.contains(&"refs/heads/main") {
        if let Some(first) = branches.first() {
            let _ = std::process::Command::new("git")
                .args(["-C", &dir, "symbolic-ref", "HEAD", first])
                .status();
        }
    }
    Ok(if pushed.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("maculaos").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every node command of the user guide's code blocks parses as written.
    #[test]
    fn the_guides_commands_parse() {
        for line in [
            "info",
            "mesh status",
            "logs",
            "health",
            "upgrade",
            "rollback",
            "upgrade --check",
            "upgrade --download",
            "upgrade --apply",
            "backup /mnt/usb/backup.tar.gz",
            "restore /mnt/usb/backup.tar.gz",
            "repair",
            "shell",
            "factory",
            "factory --keep-network",
            "factory --full",
            "network status",
            "mesh ping bootstrap.macula.io",
            "logs network",
            "deploy ghcr.io/mycompany/myservice:latest",
            "deploy /path/to/myservice.tar.gz",
            "services",
            "logs myservice",
            "stop myservice",
            "service status myservice",
            "restart myservice",
            "firewall show",
            "firewall allow 8080/tcp",
        ] {
            let args: Vec<&str> = line.split(' ').collect();
            if let Err(e) = parse(&args) {
                panic!("maculaos {line}: {e}");
            }
        }
    }

    #[test]
    fn backup_takes_a_file_or_a_subcommand() {
        let Command::Backup(a) = parse(&["backup", "/mnt/usb/b.tar.gz"]).unwrap().command else {
            panic!("not backup");
        };
        assert!(a.is_short_form_to("/mnt/usb/b.tar.gz"));
        let Command::Backup(a) = parse(&["backup", "list", "--json"]).unwrap().command else {
            panic!("not backup");
        };
        assert!(!a.is_short_form_to("list"));
        assert!(parse(&["backup", "x.tar.gz", "list"]).is_err());
    }

    #[test]
    fn deploy_takes_one_health_check() {
        assert!(parse(&["deploy", "a:1", "--health-url", "http://127.0.0.1:8080/"]).is_ok());
        assert!(parse(&[
            "deploy",
            "a:1",
            "--health-cmd",
            "wget -q http://127.0.0.1/",
            "--health-interval",
            "5s"
        ])
        .is_ok());
        assert!(parse(&[
            "deploy",
            "a:1",
            "--health-url",
            "http://x/",
            "--health-tcp",
            "80"
        ])
        .is_err());
        assert!(parse(&["deploy", "a:1", "--health-interval", "5s"]).is_err());
        assert!(parse(&["deploy", "a:1", "--health-url", "ftp://x/"]).is_err());
    }

    #[test]
    fn factory_full_keeps_nothing() {
        assert!(parse(&["factory", "--full", "--keep-network"]).is_err());
        assert!(parse(&["factory", "--cancel", "--yes"]).is_err());
        assert!(parse(&["factory", "--keep-network", "--yes", "--no-reboot"]).is_ok());
    }
}
