//! `maculaos mark-good` and `maculaos upgrade --status`: the A/B slot state
//! GRUB keeps on the ESP.

use anyhow::{Context, Result};
use maculaos_boot::{BootInfo, Cmdline, BOOT_INFO_PATH};
use maculaos_slots::{find_esp, mark_good, status, Esp, State};
use std::path::Path;
use std::process::ExitCode;

/// Where the ESP is mounted for the moment it is used.
const ESP_MNT: &str = "/run/maculaos/esp";

fn boot_info() -> Result<BootInfo> {
    let text = std::fs::read_to_string(BOOT_INFO_PATH)
        .with_context(|| format!("reading {BOOT_INFO_PATH} (written by maculaos-init at boot)"))?;
    BootInfo::from_json(&text).with_context(|| format!("parsing {BOOT_INFO_PATH}"))
}

fn esp(info: &BootInfo, write: bool) -> Result<Esp> {
    let dev = find_esp(Path::new("/sys"), &info.root_device)?;
    Esp::mount(&dev, Path::new(ESP_MNT), write).with_context(|| format!("mounting the ESP {dev}"))
}

/// Run by maculaos-mark-good.service once the boot checks passed: a slot
/// booted on trial (GRUB passed `maculaos.trial=<slot>`) becomes the good one.
pub fn mark_good_cmd() -> Result<ExitCode> {
    let cmdline = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let info = boot_info()?;
    if cmdline.get("maculaos.trial") != Some(&info.slot.to_string()) {
        println!(
            "maculaos mark-good: slot {} is not on trial: nothing to do",
            info.slot
        );
        return Ok(ExitCode::SUCCESS);
    }
    let esp = esp(&info, true)?;
    let mut changed = false;
    maculaos_boot::grubenv::update(&esp.grubenv(), |v| changed = mark_good(v, info.slot))?;
    if changed {
        println!(
            "maculaos mark-good: slot {} is healthy: it is now the good slot",
            info.slot
        );
    } else {
        println!(
            "maculaos mark-good: slot {} is no longer on trial in the GRUB environment: nothing to do",
            info.slot
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `maculaos upgrade --status`.
pub fn status_cmd(json: bool) -> Result<ExitCode> {
    let info = boot_info()?;
    let esp = esp(&info, false)?;
    let vars = maculaos_boot::grubenv::read(&esp.grubenv())?;
    let state = State::from_vars(&vars);
    let versions = [
        esp.slot_version(maculaos_boot::Slot::A),
        esp.slot_version(maculaos_boot::Slot::B),
    ];
    drop(esp);
    let slots = status(&state, versions, info.slot);
    if json {
        let out = serde_json::json!({ "slots": slots, "grub": state });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("slot  version       state          running  next boot");
    for s in &slots {
        println!(
            "{:<5} {:<13} {:<14} {:<8} {}",
            s.slot.to_string(),
            s.version.as_deref().unwrap_or("-"),
            s.state,
            if s.running { "yes" } else { "" },
            if s.next_boot { "yes" } else { "" },
        );
    }
    match &state.rollback {
        Some(r) => println!("last rollback: {r}"),
        None => println!("last rollback: none"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `maculaos health --boot`: the boot checks. A slot on trial that fails them
/// is rebooted, which uses one of its tries; after the last GRUB boots the
/// good slot. The failure is kept in the journal of that boot.
pub fn boot_check(json: bool) -> Result<ExitCode> {
    let checks = maculaos_health::boot_checks();
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print!("{}", maculaos_health::render(&checks));
    }
    if maculaos_health::healthy(&checks) {
        return Ok(ExitCode::SUCCESS);
    }
    let cmdline = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let info = boot_info()?;
    if cmdline.get("maculaos.trial") == Some(&info.slot.to_string()) {
        println!(
            "maculaos health: slot {} on trial failed its boot checks: rebooting to use a try",
            info.slot
        );
        maculaos_runner::Cmd::new("systemctl")
            .args(["reboot", "--no-block"])
            .run()?;
    }
    Ok(ExitCode::FAILURE)
}
