//! `maculaos mark-good` and `maculaos upgrade --status`: the A/B slot state
//! GRUB keeps on the ESP.

use anyhow::{Context, Result};
use maculaos_boot::{BootInfo, Cmdline, BOOT_INFO_PATH};
use maculaos_slots::{find_esp, mark_good, status, Esp, State};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The keys update bundles must be signed with (installed by the image build).
const TRUSTED_KEYS: &str = "/usr/share/maculaos/keys";
/// What the updater keeps on the data partition.
const STATE_DIR: &str = "/var/lib/maculaos/updates";

#[derive(clap::Args)]
#[group(required = true, multiple = false, id = "action")]
pub struct UpgradeArgs {
    /// Show both slots: version, good / trying N of 3 / bad, running, next boot, last rollback.
    #[arg(long, group = "action")]
    status: bool,
    /// Write a signed bundle into the standby slot and set it to be tried at the next boot.
    #[arg(long, group = "action", requires = "from")]
    apply: bool,
    /// The bundle (`.mos`), or a directory holding bundles (the newest is taken): a USB stick.
    #[arg(long, value_name = "DIR|FILE")]
    from: Option<PathBuf>,
    /// Write a version older than the running one.
    #[arg(long)]
    allow_downgrade: bool,
    /// Write the running version again, or one that failed its trial before.
    #[arg(long)]
    force: bool,
    /// Machine-readable output (with --status).
    #[arg(long)]
    json: bool,
}

pub fn upgrade_cmd(args: &UpgradeArgs) -> Result<ExitCode> {
    if args.status {
        return status_cmd(args.json);
    }
    let from = args
        .from
        .as_deref()
        .context("--apply needs --from DIR|FILE")?;
    apply_cmd(from, args.allow_downgrade, args.force)
}

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

/// When GRUB gave up on the slot the last apply wrote, remember that
/// version as bad, so it is not applied again without --force.
fn note_rollback(state: &State) {
    let dir = Path::new(STATE_DIR);
    let (Some(bad), Some(reason)) = (state.bad, &state.rollback) else {
        return;
    };
    let Some(last) = maculaos_upgrade::last_applied(dir) else {
        return;
    };
    if last.slot == bad && maculaos_upgrade::find_bad(dir, &last.version).is_none() {
        let _ = maculaos_upgrade::remember_bad(dir, &last.version, reason);
    }
}

/// `maculaos upgrade --status`.
pub fn status_cmd(json: bool) -> Result<ExitCode> {
    let info = boot_info()?;
    let esp = esp(&info, false)?;
    let vars = maculaos_boot::grubenv::read(&esp.grubenv())?;
    let state = State::from_vars(&vars);
    note_rollback(&state);
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

/// The newest bundle in `from` (a directory), or `from` itself (a file).
fn pick_bundle(from: &Path) -> Result<PathBuf> {
    if !from.is_dir() {
        return Ok(from.to_owned());
    }
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let p = e?.path();
        if p.extension()
            .is_some_and(|x| x == maculaos_bundle::EXTENSION)
        {
            if let Ok(b) = maculaos_bundle::open(&p) {
                found.push((b.manifest().os_version.clone(), p));
            }
        }
    }
    found.sort_by(|a, b| maculaos_bundle::compare_versions(&a.0, &b.0));
    found.pop().map(|(_, p)| p).with_context(|| {
        format!(
            "no update bundle (maculaos-<version>-amd64.{}) in {}",
            maculaos_bundle::EXTENSION,
            from.display()
        )
    })
}

/// The partition of `slot` on the boot disk, and its size in bytes.
fn slot_partition(info: &BootInfo, slot: maculaos_boot::Slot) -> Result<(PathBuf, u64)> {
    let devs = maculaos_boot::blockdev::scan_block_devices(Path::new("/sys"))
        .context("reading the block devices in /sys")?;
    let root = info.root_device.trim_start_matches("/dev/");
    let disk = devs
        .iter()
        .find(|d| d.name == root)
        .and_then(|d| d.disk.clone());
    let part = devs
        .iter()
        .find(|d| d.disk.is_some() && d.disk == disk && d.label.as_deref() == Some(slot.label()))
        .with_context(|| format!("no partition labelled {} on the boot disk", slot.label()))?;
    Ok((PathBuf::from(part.node()), part.size * 512))
}

/// `maculaos upgrade --apply --from DIR|FILE`.
fn apply_cmd(from: &Path, allow_downgrade: bool, force: bool) -> Result<ExitCode> {
    let bundle = pick_bundle(from)?;
    let info = boot_info()?;
    let slot = info.slot.other();
    let (partition, partition_size) = slot_partition(&info, slot)?;
    let trusted = maculaos_bundle::load_trusted_keys(Path::new(TRUSTED_KEYS))?;
    let esp = esp(&info, true)?;
    note_rollback(&State::from_vars(&maculaos_boot::grubenv::read(
        &esp.grubenv(),
    )?));
    let target = maculaos_upgrade::Target {
        slot,
        running_slot: info.slot,
        running_version: maculaos_info::collect().version,
        partition,
        partition_size,
        esp: esp.dir.clone(),
        state_dir: PathBuf::from(STATE_DIR),
    };
    println!(
        "maculaos upgrade: writing {} into slot {slot} ({})",
        bundle.display(),
        target.partition.display()
    );
    let mut last_shown = -1i64;
    let mut progress = |p: maculaos_upgrade::Progress| {
        // One line per 5 %: readable in a log as well as on a terminal.
        let step = (p.percent() / 5.0) as i64;
        let phase = match p.phase {
            maculaos_upgrade::Phase::Write => "writing",
            maculaos_upgrade::Phase::ReadBack => "checking",
        };
        let key = step
            + if p.phase == maculaos_upgrade::Phase::ReadBack {
                100
            } else {
                0
            };
        if key != last_shown {
            last_shown = key;
            let eta = p
                .eta
                .map(|e| format!(", {}s left", e.as_secs()))
                .unwrap_or_default();
            println!(
                "  {phase} {:>3.0}%  {} / {} MiB  {:.1} MiB/s{eta}",
                p.percent(),
                p.done >> 20,
                p.total >> 20,
                p.bytes_per_sec / 1048576.0
            );
            let _ = std::io::stdout().flush();
        }
    };
    let opts = maculaos_upgrade::Options {
        allow_downgrade,
        force,
    };
    let applied = maculaos_upgrade::apply(
        &bundle,
        &trusted,
        maculaos_bundle::NODE_ARCH,
        &target,
        &opts,
        &maculaos_upgrade::MountBootFiles,
        &mut progress,
    )?;
    drop(esp);
    println!(
        "maculaos upgrade: slot {} now holds {} ({} MiB in {:.1} s, sha256 checked after writing); \
         the next boot tries it (3 tries). Reboot to start: sudo systemctl reboot",
        applied.slot,
        applied.version,
        applied.bytes >> 20,
        applied.seconds
    );
    Ok(ExitCode::SUCCESS)
}
