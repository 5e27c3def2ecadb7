//! Recovery mode: `maculaos recovery` (boot into it once) and
//! `maculaos repair` (check and mend what recovery mode can reach: the data
//! partition, GRUB's environment, both slots).

use crate::slots::{boot_disk_partition, boot_info, esp};
use anyhow::{bail, Context, Result};
use maculaos_boot::{grubenv, reset, Mode, Slot, LABEL_DATA};
use maculaos_runner::{Cmd, Mount};
use maculaos_slots::{check_slot, parse_slot_image, SlotCheck};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `maculaos recovery [--reboot]`: the next boot (once) starts the boot
/// menu's recovery entry.
pub fn recovery_cmd(reboot: bool) -> Result<ExitCode> {
    let info = boot_info()?;
    let esp = esp(&info, true)?;
    grubenv::update(&esp.grubenv(), |v| {
        v.insert("maculaos_next".into(), "recovery".into());
    })?;
    drop(esp);
    println!(
        "the next boot starts recovery mode (slot {}'s system, consoles and SSH, no workloads); the one after is normal again",
        info.slot
    );
    if reboot {
        println!("rebooting");
        Cmd::new("systemctl").args(["reboot", "--no-block"]).run()?;
    } else {
        println!("reboot to enter it (sudo systemctl reboot)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `maculaos shell`: a root login shell; through sudo for the admin user.
pub fn shell_cmd() -> Result<ExitCode> {
    let mut cmd = if maculaos_install::is_root() {
        std::process::Command::new("/bin/bash")
    } else {
        let mut c = std::process::Command::new("sudo");
        c.arg("/bin/bash");
        c
    };
    let status = cmd.arg("--login").status()?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `maculaos factory-reset` options.
#[derive(clap::Args)]
pub struct ResetArgs {
    /// Really do it (without it, the command only says what it would remove).
    #[arg(long)]
    pub confirm: bool,
    /// Keep the user data in /var/lib/data.
    #[arg(long)]
    pub keep_data: bool,
    /// Keep the network settings (network, maculaos.network,
    /// maculaos.dns_nameservers), so the node stays reachable where it is.
    #[arg(long)]
    pub keep_network: bool,
    /// Ask for the reset but do not reboot now: it happens on the next boot.
    #[arg(long)]
    pub no_reboot: bool,
    /// Withdraw a reset asked for with --no-reboot.
    #[arg(long, conflicts_with_all = ["confirm", "keep_data", "keep_network"])]
    pub cancel: bool,
}

/// `maculaos factory`: the user guide's name for the factory reset, which
/// asks before it erases anything.
#[derive(clap::Args)]
pub struct FactoryArgs {
    /// Keep the network settings, so the node stays reachable where it is.
    #[arg(long)]
    pub keep_network: bool,
    /// Keep nothing: the user data in /var/lib/data and the network
    /// settings go too. This is what a plain `maculaos factory` does; the
    /// flag says so, and refuses to go with a --keep flag.
    #[arg(long, conflicts_with_all = ["keep_network", "keep_data"])]
    pub full: bool,
    /// Keep the user data in /var/lib/data.
    #[arg(long)]
    pub keep_data: bool,
    /// Do not ask (for scripts); without it a terminal is asked to type
    /// "erase", and without a terminal nothing is done.
    #[arg(long, short = 'y', alias = "confirm")]
    pub yes: bool,
    /// Ask for the reset but do not reboot now: it happens on the next boot.
    #[arg(long)]
    pub no_reboot: bool,
    /// Withdraw a reset asked for with --no-reboot.
    #[arg(long, conflicts_with_all = ["yes", "keep_data", "keep_network", "full"])]
    pub cancel: bool,
}

/// `maculaos factory`: [`factory_reset_cmd`], confirmed by `--yes` or by
/// the operator typing "erase" at a terminal.
pub fn factory_cmd(args: &FactoryArgs) -> Result<ExitCode> {
    use std::io::{BufRead, IsTerminal, Write};
    let mut reset = ResetArgs {
        confirm: args.yes,
        keep_data: args.keep_data,
        keep_network: args.keep_network,
        no_reboot: args.no_reboot,
        cancel: args.cancel,
    };
    if !reset.confirm && !reset.cancel && std::io::stdin().is_terminal() {
        eprintln!("{}", reset_plan(&reset));
        eprint!("Type \"erase\" to reset this node now, anything else to stop: ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "erase" {
            eprintln!("Nothing was changed.");
            return Ok(ExitCode::FAILURE);
        }
        reset.confirm = true;
    }
    factory_reset_cmd(&reset)
}

/// Where the data partition's root is for this boot, mounting it when it is
/// not in use (recovery mode). `None` when there is none to reset.
fn data_root(info: &maculaos_boot::BootInfo) -> Result<(PathBuf, Option<Mount>)> {
    match info.mode {
        Mode::Disk => Ok((PathBuf::from("/var"), None)),
        Mode::Recovery => {
            let (dev, _) = boot_disk_partition(info, LABEL_DATA)?;
            let mount = Mount::new(&dev, Path::new("/run/maculaos/reset-data"), Some("ext4"), None)
                .with_context(|| {
                    format!(
                        "mounting {LABEL_DATA} ({}) to leave the reset request on it; \
                         if it does not mount, run `maculaos repair` first",
                        dev.display()
                    )
                })?;
            Ok((mount.dir().to_path_buf(), Some(mount)))
        }
        Mode::Live if info.data_device.starts_with("/dev/") => {
            Ok((PathBuf::from("/var"), None))
        }
        Mode::Live | Mode::Install => bail!(
            "this live system keeps /var in memory: there is nothing to reset (a reboot starts afresh)"
        ),
    }
}

/// The network part of the running configuration, as YAML, to write back
/// after the reset.
fn network_settings() -> Result<String> {
    let loaded = maculaos_config::load(&maculaos_config::Paths::system());
    let mut kept = serde_yaml_ng::Mapping::new();
    if let Some(n) = loaded.value.get("network") {
        kept.insert("network".into(), n.clone());
    }
    let mut os = serde_yaml_ng::Mapping::new();
    for key in ["network", "dns_nameservers"] {
        if let Some(v) = loaded.value.get("maculaos").and_then(|m| m.get(key)) {
            os.insert(key.into(), v.clone());
        }
    }
    if !os.is_empty() {
        kept.insert("maculaos".into(), os.into());
    }
    let yaml = serde_yaml_ng::to_string(&kept)?;
    Ok(format!(
        "# Kept by `maculaos factory-reset --keep-network`.\n{}",
        if kept.is_empty() { "{}\n" } else { &yaml }
    ))
}

/// What a factory reset with these options removes and keeps.
fn reset_plan(args: &ResetArgs) -> String {
    let keeps = [
        (args.keep_data, "the user data in /var/lib/data"),
        (args.keep_network, "the network settings"),
    ];
    let kept: Vec<&str> = keeps.iter().filter(|(k, _)| *k).map(|(_, w)| *w).collect();
    format!(
        "A factory reset removes the node's configuration, credentials and identity \
         (/var/lib/maculaos: SSH host keys, machine id, mesh certificates), logs and home directories: \
         everything on the data partition{}. Both OS slots stay; the next boot is a first boot.",
        if kept.is_empty() {
            String::new()
        } else {
            format!(" except {}", kept.join(" and "))
        }
    )
}

/// `maculaos factory-reset`: ask maculaos-init to wipe the node's state on
/// the next boot (see `maculaos_boot::reset`), then reboot.
pub fn factory_reset_cmd(args: &ResetArgs) -> Result<ExitCode> {
    let info = crate::slots::read_boot_info()?;
    let (root, mount) = data_root(&info)?;
    if args.cancel {
        let had = reset::cancel_request(&root)?;
        println!(
            "{}",
            if had {
                "the factory reset asked for is withdrawn"
            } else {
                "no factory reset was asked for"
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let plan = reset_plan(args);
    if !args.confirm {
        eprintln!("{plan}\nNothing was changed: add --confirm (or --yes) to do it.");
        return Ok(ExitCode::FAILURE);
    }
    let req = reset::ResetRequest {
        keep_data: args.keep_data,
        network_yaml: args.keep_network.then(network_settings).transpose()?,
        requested_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let path = reset::write_request(&root, &req)?;
    if let Some(m) = mount {
        m.unmount().context("unmounting the data partition")?;
    }
    println!("{plan}\nasked for: {}", path.display());
    if args.no_reboot {
        println!(
            "the reset happens at the next boot (withdraw it with `maculaos factory-reset --cancel`)"
        );
    } else {
        println!("rebooting to reset");
        Cmd::new("systemctl").args(["reboot", "--no-block"]).run()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// How one check of `maculaos repair` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    /// Fine as it was.
    Ok,
    /// Was broken, is mended.
    Repaired,
    /// Nothing to check (an empty slot).
    Skipped,
    /// Broken, and still broken.
    Failed,
}

#[derive(Debug, Serialize)]
struct Check {
    what: String,
    outcome: Outcome,
    message: String,
}

impl Check {
    fn new(what: impl Into<String>, outcome: Outcome, message: impl Into<String>) -> Check {
        Check {
            what: what.into(),
            outcome,
            message: message.into(),
        }
    }

    fn line(&self) -> String {
        let mark = match self.outcome {
            Outcome::Ok | Outcome::Repaired => "✓",
            Outcome::Skipped => "–",
            Outcome::Failed => "✗",
        };
        format!("{mark} {}: {}", self.what, self.message)
    }
}

/// `maculaos repair [--json]`: in recovery mode, fsck the data partition,
/// rebuild GRUB's environment when it cannot be read, and check both slots
/// against the size and sha256 recorded when they were written. Exit code 0
/// when nothing is left broken.
pub fn repair_cmd(json: bool) -> Result<ExitCode> {
    let info = boot_info()?;
    if info.mode != Mode::Recovery {
        bail!(
            "maculaos repair checks the data partition, which is in use now ({} mode): \
             run it in recovery mode (sudo maculaos recovery --reboot, or the boot menu's recovery entry)",
            info.mode
        );
    }
    let mut checks = vec![data_check(&info)?];
    let esp = esp(&info, true)?;
    checks.push(grubenv_check(&esp.grubenv(), info.slot));
    for slot in [Slot::A, Slot::B] {
        checks.push(slot_check(&info, &esp, slot));
    }
    drop(esp);
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            println!("{}", c.line());
        }
    }
    Ok(if checks.iter().any(|c| c.outcome == Outcome::Failed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn data_check(info: &maculaos_boot::BootInfo) -> Result<Check> {
    let (dev, _) = boot_disk_partition(info, LABEL_DATA)?;
    let what = format!("{LABEL_DATA} ({})", dev.display());
    // -f: check even a filesystem marked clean; -y: fix what can be fixed.
    let run = Cmd::new("e2fsck")
        .hint("apt-get install e2fsprogs")
        .args(["-f", "-y"])
        .arg(&dev)
        .quiet()
        .run();
    // e2fsck's exit codes: 0 clean, 1 errors fixed, 2 fixed (reboot), 4 and
    // up errors left or e2fsck could not run.
    Ok(match run {
        Ok(()) => Check::new(what, Outcome::Ok, "e2fsck: clean"),
        Err(e) => match e.exit_code() {
            Some(1) | Some(2) => Check::new(what, Outcome::Repaired, "e2fsck: errors found and fixed"),
            _ => Check::new(
                what,
                Outcome::Failed,
                format!("e2fsck could not fix it: {e}\nback up what you can (it is not mounted), then `maculaos factory-reset --confirm` (it reformats nothing: it removes the files), or reinstall"),
            ),
        },
    })
}

fn grubenv_check(path: &std::path::Path, running: Slot) -> Check {
    let what = "GRUB environment";
    match grubenv::read(path) {
        Ok(vars) => {
            let slot = vars.get("maculaos_slot").map(String::as_str).unwrap_or("A");
            let trial = vars
                .get("maculaos_trial")
                .filter(|t| !t.is_empty())
                .map(|t| format!(", slot {t} on trial"))
                .unwrap_or_default();
            Check::new(
                what,
                Outcome::Ok,
                format!("readable: boots slot {slot}{trial}"),
            )
        }
        Err(e) => {
            // What it held is lost: boot the slot this recovery came from,
            // the one that was good.
            let mut vars = grubenv::Vars::new();
            vars.insert("maculaos_slot".into(), running.to_string());
            match grubenv::write(path, &vars) {
                Ok(()) => Check::new(
                    what,
                    Outcome::Repaired,
                    format!("was unreadable ({e}); rebuilt: boots slot {running}, no trial"),
                ),
                Err(w) => Check::new(
                    what,
                    Outcome::Failed,
                    format!("unreadable ({e}), and rebuilding it failed: {w}"),
                ),
            }
        }
    }
}

fn slot_check(info: &maculaos_boot::BootInfo, esp: &maculaos_slots::Esp, slot: Slot) -> Check {
    let what = format!("slot {slot}");
    let Some(version) = esp.slot_version(slot) else {
        return Check::new(what, Outcome::Skipped, "empty");
    };
    let what = format!("slot {slot} ({version})");
    let cfg =
        std::fs::read_to_string(esp.dir.join(format!("slots/{slot}/slot.cfg"))).unwrap_or_default();
    let Some(image) = parse_slot_image(&cfg, slot) else {
        return Check::new(
            what,
            Outcome::Skipped,
            "no recorded sha256 (written by an older MaculaOS); not checked",
        );
    };
    let partition = match boot_disk_partition(info, slot.label()) {
        Ok((p, _)) => p,
        Err(e) => return Check::new(what, Outcome::Failed, format!("{e:#}")),
    };
    match check_slot(&partition, &image) {
        Ok(SlotCheck::Intact) => Check::new(
            what,
            Outcome::Ok,
            format!(
                "sha256 matches ({} bytes of {})",
                image.size,
                partition.display()
            ),
        ),
        Ok(SlotCheck::Damaged { actual }) => Check::new(
            what,
            Outcome::Failed,
            format!(
                "damaged: sha256 {actual}, {} was written; write it again \
                 (maculaos upgrade --apply --force), or boot the other slot",
                image.sha256
            ),
        ),
        Err(e) => Check::new(
            what,
            Outcome::Failed,
            format!("reading {}: {e}", partition.display()),
        ),
    }
}
