//! Recovery mode: `maculaos recovery` (boot into it once) and
//! `maculaos repair` (check and mend what recovery mode can reach: the data
//! partition, GRUB's environment, both slots).

use crate::slots::{boot_disk_partition, boot_info, esp};
use anyhow::{bail, Result};
use maculaos_boot::{grubenv, Mode, Slot, LABEL_DATA};
use maculaos_runner::Cmd;
use maculaos_slots::{check_slot, parse_slot_image, SlotCheck};
use serde::Serialize;
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

/// `maculaos factory-reset`: not built yet. It says so, and what to do
/// instead, rather than pretend.
pub fn factory_reset_cmd() -> Result<ExitCode> {
    eprintln!(
        "maculaos factory-reset is not built yet (it comes with the health and reset work): nothing was changed.\n\
         To start a node over today, reinstall it from the live ISO (sudo maculaos install)."
    );
    Ok(ExitCode::FAILURE)
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
                format!("e2fsck could not fix it: {e}\nback up what you can (it is not mounted), then `maculaos factory-reset` once it exists, or reinstall"),
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
