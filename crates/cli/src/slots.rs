//! `maculaos mark-good` and `maculaos upgrade --status`: the A/B slot state
//! GRUB keeps on the ESP.

use anyhow::{Context, Result};
use maculaos_boot::{BootInfo, Cmdline, BOOT_INFO_PATH};
use maculaos_bundle::compare_versions;
use maculaos_slots::{find_esp, mark_good, status, Esp, State};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The keys update bundles must be signed with (installed by the image build).
pub(crate) const TRUSTED_KEYS: &str = "/usr/share/maculaos/keys";
/// What the updater keeps on the data partition.
pub(crate) const STATE_DIR: &str = "/var/lib/maculaos/updates";

#[derive(clap::Args)]
// Not a struct-level #[group(...)]: clap puts every field of the struct in
// that group, which made --from, --json, --force… exclusive with the action.
#[group(skip)]
#[command(group = clap::ArgGroup::new("action").multiple(false))]
pub struct UpgradeArgs {
    /// Show both slots: version, good / trying N of 3 / bad, running, next boot, last rollback.
    #[arg(long, group = "action")]
    status: bool,
    /// Show the running version and the newest on the channel (upgrade.url, upgrade.channel).
    #[arg(long, group = "action")]
    check: bool,
    /// Download the newest bundle of the channel into /var/lib/maculaos/updates and check its signature.
    #[arg(long, group = "action")]
    download: bool,
    /// Write a signed bundle into the standby slot and set it to be tried at the next boot
    /// (the newest of the channel, downloaded if needed; or --from).
    #[arg(long, group = "action")]
    apply: bool,
    /// What maculaos-upgrade-check.timer runs: with upgrade.auto_check, look for
    /// a newer version and report it; with updates.automatic (or
    /// upgrade.auto_apply), also apply it (never a version that failed its
    /// trial), and with updates.auto_reboot reboot into it.
    #[arg(long, group = "action")]
    auto: bool,
    /// The same as `maculaos rollback`: the next boot starts the other slot.
    #[arg(long, group = "action")]
    rollback: bool,
    /// The bundle (`.mos`), or a directory holding bundles (the newest is taken): a USB stick.
    #[arg(long, value_name = "DIR|FILE", conflicts_with_all = ["status", "check", "download", "rollback", "auto"])]
    from: Option<PathBuf>,
    /// Update source instead of upgrade.url: github://OWNER/REPO, https://HOST/PATH/, file:///DIR/.
    #[arg(long, value_name = "URL", conflicts_with = "from")]
    url: Option<String>,
    /// Channel instead of upgrade.channel: stable, beta or nightly.
    #[arg(long, value_name = "CHANNEL", conflicts_with = "from")]
    channel: Option<maculaos_bundle::Channel>,
    /// With --download or --apply: only this version, refused when the
    /// source's newest is another (what a fleet rollout's nodes run).
    #[arg(long, value_name = "VERSION", conflicts_with_all = ["from", "status", "check", "rollback", "auto"])]
    version: Option<String>,
    /// Write a version older than the running one.
    #[arg(long)]
    allow_downgrade: bool,
    /// Write the running version again, or one that failed its trial before.
    #[arg(long)]
    force: bool,
    /// Machine-readable output (with --status, --check).
    #[arg(long)]
    json: bool,
}

impl UpgradeArgs {
    /// All but --status and --check write to the data partition or the slots.
    pub fn changes_the_system(&self) -> bool {
        !(self.status || self.check)
    }

    /// `--json` without `--status` or `--check`: refused.
    pub fn json_alone(&self) -> bool {
        self.json && !(self.status || self.check)
    }
}

pub fn upgrade_cmd(args: &UpgradeArgs) -> Result<ExitCode> {
    if args.json_alone() {
        anyhow::bail!("--json goes with --status or --check");
    }
    if args.status {
        return status_cmd(args.json);
    }
    if args.auto {
        return crate::fetch::auto_cmd();
    }
    if args.rollback {
        return rollback_cmd(args.force);
    }
    let (url, channel) = (args.url.as_deref(), args.channel);
    if args.check {
        return crate::fetch::check_cmd(url, channel, args.json);
    }
    let want = crate::fetch::Wanted {
        url,
        channel,
        version: args.version.as_deref(),
        allow_downgrade: args.allow_downgrade,
        force: args.force,
    };
    if args.download {
        return crate::fetch::download_cmd(&want);
    }
    match args.from.as_deref() {
        Some(from) => apply_cmd(from, args.allow_downgrade, args.force),
        None => crate::fetch::apply_latest_cmd(&want),
    }
}

/// Where the ESP is mounted for the moment it is used.
const ESP_MNT: &str = "/run/maculaos/esp";

/// How this boot was made, whatever the mode.
pub(crate) fn read_boot_info() -> Result<BootInfo> {
    let text = std::fs::read_to_string(BOOT_INFO_PATH)
        .with_context(|| format!("reading {BOOT_INFO_PATH} (written by maculaos-init at boot)"))?;
    BootInfo::from_json(&text).with_context(|| format!("parsing {BOOT_INFO_PATH}"))
}

/// [`read_boot_info`] for commands about slots: refused in live and install mode.
pub(crate) fn boot_info() -> Result<BootInfo> {
    let info = read_boot_info()?;
    // Slots, updates and rollbacks belong to an installed disk; a live
    // system has none of them.
    if matches!(
        info.mode,
        maculaos_boot::Mode::Live | maculaos_boot::Mode::Install
    ) {
        anyhow::bail!(
            "this system runs in {} mode from {}, not from an installed disk: it has no A/B slots. \
             Install it first (sudo maculaos install), then boot the installed disk",
            info.mode,
            info.root_device
        );
    }
    Ok(info)
}

pub(crate) fn esp(info: &BootInfo, write: bool) -> Result<Esp> {
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
    // The trial is over either way: what the agent and its heartbeats say.
    if let Err(e) = std::fs::write(maculaos_boot::MARKED_GOOD_PATH, info.slot.to_string()) {
        eprintln!(
            "maculaos mark-good: writing {}: {e}",
            maculaos_boot::MARKED_GOOD_PATH
        );
    }
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

/// At boot, not on trial, running another version than the last one
/// applied: if GRUB fell back from it, remember it as bad now, so that the
/// heartbeat (and a fleet rollout) knows it failed here without waiting
/// for an `upgrade` command to notice. The ESP is read only then.
fn record_rollback() {
    let dir = Path::new(STATE_DIR);
    let Some(last) = maculaos_upgrade::last_applied(dir) else {
        return;
    };
    let cmdline = Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    // os-release only: the full `maculaos info` asks avahi and more.
    let running = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| maculaos_info::os_release_value(&t, "VERSION_ID"))
        .unwrap_or_default();
    // Looked at once per apply (a manual rollback is no failure, and the
    // ESP need not be read at every boot after it).
    let checked = Path::new(STATE_DIR).join("rollback-checked");
    let this_apply = format!("{} {}", last.version, last.at);
    if cmdline.get("maculaos.trial").is_some()
        || maculaos_upgrade::find_bad(dir, &last.version).is_some()
        || compare_versions(&running, &last.version).is_eq()
        || std::fs::read_to_string(&checked).is_ok_and(|t| t.trim() == this_apply)
    {
        return;
    }
    let _ = std::fs::write(&checked, &this_apply);
    let read = boot_info().and_then(|info| {
        let esp = esp(&info, false)?;
        Ok(maculaos_boot::grubenv::read(&esp.grubenv())?)
    });
    match read {
        Ok(vars) => note_rollback(&State::from_vars(&vars)),
        Err(e) => eprintln!("maculaos health: could not read GRUB's state for a rollback: {e:#}"),
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
    record_rollback();
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
    let Some(trial) = cmdline.get("maculaos.trial") else {
        return Ok(ExitCode::FAILURE);
    };
    let info = boot_info()?;
    if trial == info.slot.to_string() {
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
    boot_disk_partition(info, slot.label())
}

/// The partition labelled `label` on the disk the system booted from, and its size.
pub(crate) fn boot_disk_partition(info: &BootInfo, label: &str) -> Result<(PathBuf, u64)> {
    let devs = maculaos_boot::blockdev::scan_block_devices(Path::new("/sys"))
        .context("reading the block devices in /sys")?;
    let root = info.root_device.trim_start_matches("/dev/");
    let disk = devs
        .iter()
        .find(|d| d.name == root)
        .and_then(|d| d.disk.clone());
    let part = devs
        .iter()
        .find(|d| d.disk.is_some() && d.disk == disk && d.label.as_deref() == Some(label))
        .with_context(|| format!("no partition labelled {label} on the boot disk"))?;
    Ok((PathBuf::from(part.node()), part.size * 512))
}

/// `maculaos upgrade --apply --from DIR|FILE`.
pub(crate) fn apply_cmd(from: &Path, allow_downgrade: bool, force: bool) -> Result<ExitCode> {
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
    let mut steps = maculaos_progress::Steps::default();
    let mut progress = |p: maculaos_upgrade::Progress| {
        let (phase, pass) = match p.phase {
            maculaos_upgrade::Phase::Verify => ("verifying", 0),
            maculaos_upgrade::Phase::Write => ("writing", 1),
            maculaos_upgrade::Phase::ReadBack => ("checking", 2),
        };
        if steps.due(pass, p.percent()) {
            show(&maculaos_progress::line(
                phase,
                p.done,
                p.total,
                p.bytes_per_sec,
                p.eta,
            ));
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

/// Print a progress line now (stdout may be a pipe to the journal).
pub(crate) fn show(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// `maculaos rollback`: the next boot starts the other slot.
pub fn rollback_cmd(force: bool) -> Result<ExitCode> {
    let info = boot_info()?;
    let other = info.slot.other();
    let esp = esp(&info, true)?;
    let bootable = esp.slot_version(other).is_some()
        && esp.dir.join(format!("slots/{other}/vmlinuz")).is_file();
    let from = esp
        .slot_version(info.slot)
        .unwrap_or_else(|| maculaos_info::collect().version);
    let to = esp.slot_version(other).unwrap_or_else(|| "-".into());
    let reason = format!(
        "rolled back by the operator from slot {} ({from})",
        info.slot
    );
    // Read, decide, and write only when something changes: a refusal
    // leaves the GRUB environment untouched.
    let mut vars = maculaos_boot::grubenv::read(&esp.grubenv())?;
    let outcome = maculaos_slots::rollback(&mut vars, info.slot, bootable, force, &reason);
    if outcome.is_ok() {
        maculaos_boot::grubenv::write(&esp.grubenv(), &vars)?;
    }
    drop(esp);
    use maculaos_slots::Rollback;
    match outcome {
        Ok(Rollback::ToOther(s)) => println!(
            "maculaos rollback: the next boot starts slot {s} ({to}). Reboot to use it: sudo systemctl reboot"
        ),
        Ok(Rollback::AbandonTrial { running, good }) => println!(
            "maculaos rollback: the trial of slot {running} is abandoned; the next boot starts slot {good} ({to}). \
             Reboot to use it: sudo systemctl reboot"
        ),
        Ok(Rollback::CancelTrial(s)) => println!(
            "maculaos rollback: the update waiting in slot {s} ({to}) is cancelled; the next boot stays on slot {} ({from})",
            info.slot
        ),
        Err(refused) => {
            eprintln!("maculaos rollback: {refused}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
