//! The boot flow itself: system calls and tools, in order. The decisions
//! it acts on live in the other modules, where they are tested.

use crate::console::{reopen_console, say, say_block, warn};
use crate::data::{
    self, classify, ext4_label, ext4_size, fs_needs_resize, grow_target, human_size, DataState,
};
use crate::error::InitError;
use crate::identity::{self, MachineIdOrigin};
use crate::partitions::{
    describe_seen, find_boot_partitions, read_number, scan_block_devices, BlockDev, BootPartitions,
    Missing,
};
use crate::seed::seed_data;
use crate::switch::{switch_root, ROOT_INIT};
use maculaos_boot::media::{
    iso_volume_id, ISO_HEAD_LEN, LABEL_LIVE, LABEL_PERSIST, LIVE_ROOT, MEDIUM_DIR,
};
use maculaos_boot::{
    reset, BootInfo, BootParams, Cmdline, Firmware, Mode, Persistence, BOOT_INFO_PATH, LABEL_DATA,
    STATE_DIR, TYPE_DATA_UNFORMATTED, TYPE_LINUX_FS,
};
use maculaos_kmod::{KmodError, Loader, ModuleIndex};
use maculaos_runner::Cmd;
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use std::cell::Cell;
use std::convert::Infallible;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the root slot is mounted before it becomes `/`.
pub const SYSROOT: &str = "/sysroot";
/// Where the data partition is mounted (in the initramfs) while it is seeded.
const DATA_MOUNT: &str = "/data";
/// The initramfs's static busybox: chroot applet and rescue shell.
const BUSYBOX: &str = "/bin/busybox";
/// The rescue shell for `maculaos.debug`.
const SHELL: &str = "/bin/sh";
/// PATH for the root's tools (the kernel starts init without one).
const ROOT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Filesystem modules init always loads: the root is squashfs, /etc an
/// overlay, the data partition ext4. Also what the image builder should
/// pass to `ModuleIndex::closure` (with storage drivers).
pub const FS_MODULES: [&str; 3] = ["squashfs", "overlay", "ext4"];
/// What the node's firewall needs (`maculaos apply` loads an nftables
/// ruleset early in every boot): loaded here from the initramfs, instead
/// of the kernel running modprobe once per module while nft loads the
/// ruleset (a dozen processes, about a second of a boot under emulation).
const FIREWALL_MODULES: [&str; 3] = ["nf_tables", "nft_ct", "nft_limit"];
/// What live mode also needs: the ISO's filesystem, loop devices for the
/// root image on it, and CD drives (their controllers come by modalias).
const LIVE_MODULES: [&str; 3] = ["isofs", "loop", "sr_mod"];
/// The mounts init makes in the initramfs and hands to the root.
const SYSTEM_MOUNTS: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];
/// How often to rescan for new devices while waiting for the boot disk.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The longest live mode waits for its persistence partition after the
/// medium is there: a stick that is not plugged in should not hold the
/// boot for a minute.
const PERSIST_WAIT_SECS: u64 = 15;
/// How long a failure stays on screen before the reboot.
const FAILURE_REBOOT_DELAY: Duration = Duration::from_secs(10);

/// A command run inside the root filesystem: `chroot /sysroot <args>`.
///
/// The root's tools (sfdisk, mkfs.ext4, ssh-keygen…) are linked against the
/// root's libraries, so they must run with /sysroot as their root. Doing
/// the chroot ourselves between fork and exec would need `pre_exec`, which
/// is unsafe code (denied in this workspace); the initramfs's static
/// busybox has a chroot applet that does exactly that step.
pub fn in_root<I, S>(args: I) -> Cmd
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Cmd::new(BUSYBOX)
        .hint("the initramfs must have a static busybox at /bin/busybox")
        .arg("chroot")
        .arg(SYSROOT)
        .args(args)
        .env("PATH", ROOT_PATH)
        .quiet()
}

/// A path inside the root as the initramfs sees it: `/var/x` → `/sysroot/var/x`.
fn sysroot(path: &str) -> PathBuf {
    Path::new(SYSROOT).join(path.trim_start_matches('/'))
}

/// Milliseconds since the kernel started, from the first field of
/// `/proc/uptime` (`"12.34 5.67"`).
pub fn parse_uptime_ms(text: &str) -> Option<u64> {
    let first = text.split_whitespace().next()?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, ""));
    let secs: u64 = secs.parse().ok()?;
    let mut ms = 0u64;
    for (i, c) in frac.chars().take(3).enumerate() {
        let digit = u64::from(c.to_digit(10)?);
        ms += digit * 10u64.pow(2 - i as u32);
    }
    secs.checked_mul(1000)?.checked_add(ms)
}

/// The entry point of the `maculaos-init` binary. Never returns: it ends
/// in systemd, a reboot, or (not PID 1) an exit.
pub fn main() -> ! {
    let pid = nix::unistd::getpid().as_raw();
    if pid != 1 {
        let msg = InitError::NotPid1 { pid };
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("maculaos-init: {msg}\n"),
        );
        std::process::exit(1);
    }
    let debug = Cell::new(false);
    // A panic in PID 1 would be a kernel panic ("Attempted to kill init"),
    // with no message and no reboot: catch it and fail the normal way.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&debug)));
    let err = match outcome {
        Ok(Ok(never)) => match never {},
        Ok(Err(e)) => e,
        Err(payload) => InitError::Panic(
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string()),
        ),
    };
    fail(&err, debug.get())
}

/// Say what failed, then give a shell (`maculaos.debug`) or wait and reboot.
fn fail(err: &InitError, debug: bool) -> ! {
    say_block("FAILED", err);
    say(format!("hint: {}", err.hint()));
    if debug {
        say("starting a debug shell (exit to reboot)");
        // std's Command, not Cmd: the shell needs the console as its stdin.
        if let Err(e) = std::process::Command::new(SHELL)
            .env("PS1", "maculaos-init# ")
            .status()
        {
            say(format!("could not start {SHELL}: {e}; rebooting in 10 s"));
            std::thread::sleep(FAILURE_REBOOT_DELAY);
        }
    } else {
        say("(add maculaos.debug to the kernel command line for a shell instead)");
        say("rebooting in 10 s");
        // The one deliberate pause: time to read the message. The boot
        // counter then falls back to the other slot.
        std::thread::sleep(FAILURE_REBOOT_DELAY);
    }
    reboot_now()
}

fn reboot_now() -> ! {
    nix::unistd::sync();
    let err = match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // PID 1 must not exit: that is a kernel panic. Stay, so the message
    // stays on screen.
    say(format!("reboot failed: {err}; halting here"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// What happened to the data partition (nothing, by default: live and
/// recovery modes leave it alone).
#[derive(Default)]
struct DataOutcome {
    formatted: bool,
    grown: bool,
    /// The existing filesystem is smaller than its partition: resize2fs
    /// once it is mounted.
    resize: bool,
    /// A factory reset was carried out (set by [`mount_data`]).
    factory_reset: bool,
    /// A factory reset asked for on the kernel command line (the boot
    /// menu's entry), for [`mount_data`] to carry out.
    reset_asked: Option<reset::ResetRequest>,
}

fn run(debug: &Cell<bool>) -> Result<Infallible, InitError> {
    // 1. The kernel's filesystems.
    mount_system()?;
    if let Err(e) = reopen_console(Path::new("/dev/console")) {
        warn(&e);
    }
    say(format!(
        "MaculaOS init {} starting",
        env!("CARGO_PKG_VERSION")
    ));

    // 2. What to boot.
    let text =
        fs::read_to_string("/proc/cmdline").map_err(InitError::io("reading", "/proc/cmdline"))?;
    let cmdline = Cmdline::parse(&text);
    // Known before the parameters are validated, so a bad value can still
    // get the shell that was asked for.
    debug.set(cmdline.has("maculaos.debug") && cmdline.get("maculaos.debug") != Some("0"));
    let params = BootParams::from_cmdline(&cmdline)?;
    debug.set(params.debug);

    // 3 to 8: the root and /var, from a disk or from the live medium.
    let mut loader = open_loader();
    if let Some(l) = loader.as_mut() {
        load_modules(l, &FS_MODULES);
    }
    let booted = match params.mode {
        Mode::Disk => boot_disk(loader.as_mut(), &params)?,
        Mode::Live | Mode::Install => boot_live(loader.as_mut(), &params)?,
        Mode::Recovery => boot_recovery(loader.as_mut(), &params)?,
    };
    settle_drivers(loader.as_mut());
    if let Some(l) = loader.as_mut() {
        load_modules(l, &FIREWALL_MODULES);
        say(format!("loaded {} kernel modules", l.loaded().len()));
    }

    // 9. A writable /etc whose changes last until reboot, and a /tmp.
    mount_etc_overlay()?;
    mount_tmp()?;

    // 10. Identity.
    setup_identity()?;

    // 11. The record of this boot.
    let info = BootInfo {
        mode: params.mode,
        slot: params.slot,
        firmware: if Path::new("/sys/firmware/efi").exists() {
            Firmware::Uefi
        } else {
            Firmware::Bios
        },
        root_device: booted.root_device,
        data_device: booted.data_device,
        data_formatted: booted.data.formatted,
        data_grown: booted.data.grown,
        factory_reset: booted.data.factory_reset,
        init_done_ms: fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|t| parse_uptime_ms(&t))
            .unwrap_or(0),
    };
    let info_path = sysroot(BOOT_INFO_PATH);
    if let Some(dir) = info_path.parent() {
        fs::create_dir_all(dir).map_err(InitError::io("creating directory", dir))?;
    }
    fs::write(&info_path, info.to_json()).map_err(InitError::io("writing", &info_path))?;

    // 12. Hand over.
    say(format!(
        "starting {ROOT_INIT} ({} ms after kernel start)",
        info.init_done_ms
    ));
    switch_root(SYSROOT, &SYSTEM_MOUNTS)
}

/// Where the root and /var came from.
struct Booted {
    root_device: String,
    data_device: String,
    data: DataOutcome,
}

/// Disk mode: the slot's squashfs from `MACULA_ROOT_<slot>`, /var on `MACULA_DATA`.
fn boot_disk(loader: Option<&mut Loader>, params: &BootParams) -> Result<Booted, InitError> {
    let root_label = params.slot.label();
    say(format!("booting slot {} ({root_label})", params.slot));

    // 3 and 4. Drivers, then the partitions they reveal.
    let (parts, devs) = wait_for_partitions(loader, params)?;
    say(format!(
        "found {root_label} ({}) and {LABEL_DATA} ({}) on {}",
        parts.root.node(),
        parts.data.node(),
        parts.disk
    ));
    if !parts.other_disks.is_empty() {
        say(format!(
            "note: {} also carry {root_label}; using {}",
            parts.other_disks.join(", "),
            parts.disk
        ));
    }

    // 5. The root slot.
    mount_root(root_label, &parts.root)?;

    // 6. /dev, /proc, /sys and /run inside the root, for its tools.
    bind_system_mounts()?;

    // 7. The data partition: check, grow, format.
    let mut outcome = prepare_data(&parts, &devs)?;
    outcome.reset_asked = params.factory_reset.clone();

    // 8. Mount it on /var with /home and /root.
    mount_data(Some((LABEL_DATA, &parts.data)), &mut outcome)?;
    Ok(Booted {
        root_device: parts.root.node(),
        data_device: parts.data.node(),
        data: outcome,
    })
}

/// Recovery mode: the slot's root as in disk mode, but /var in memory and
/// `MACULA_DATA` left unmounted, so `maculaos repair` can check it and a
/// damaged one cannot stop the boot. The node's state (`/var/lib/maculaos`:
/// config, SSH host keys, machine id) is copied from it when it mounts, so
/// the node is reachable as itself.
fn boot_recovery(loader: Option<&mut Loader>, params: &BootParams) -> Result<Booted, InitError> {
    let root_label = params.slot.label();
    say(format!(
        "booting slot {} ({root_label}) in recovery mode",
        params.slot
    ));
    let (parts, _) = wait_for_partitions(loader, params)?;
    mount_root(root_label, &parts.root)?;
    bind_system_mounts()?;
    let mut outcome = DataOutcome::default();
    mount_data(None, &mut outcome)?;
    let data = parts.data.node();
    if let Err(e) = copy_state_from(&data) {
        warn(format!(
            "{e}\nthe node's configuration and keys are not available: `maculaos repair` checks {LABEL_DATA}"
        ));
    }
    Ok(Booted {
        root_device: parts.root.node(),
        data_device: "tmpfs".into(),
        data: outcome,
    })
}

/// Copy `/var/lib/maculaos` from the data partition `device` (mounted
/// read-only for the moment) into the in-memory /var.
fn copy_state_from(device: &str) -> Result<(), InitError> {
    // Under the root's /run (a bind of ours, made before: a mount on our
    // own /run now would not show through it), where its cp finds it.
    const MNT: &str = "/run/maculaos/data-ro";
    let target = sysroot(MNT);
    fs::create_dir_all(&target).map_err(InitError::io("creating directory", &target))?;
    mount(
        Some(device),
        &target,
        Some("ext4"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(InitError::sys(format!(
        "mounting {LABEL_DATA} ({device}) read-only"
    )))?;
    // The root's cp keeps owners, modes and times. Downloaded update
    // bundles (hundreds of MiB) stay behind: /var is in memory now.
    let copy = || -> Result<(), InitError> {
        let what = || format!("copying /var/lib/maculaos from {LABEL_DATA} ({device})");
        let src = target.join("lib/maculaos");
        let entries = fs::read_dir(&src).map_err(InitError::io("reading", &src))?;
        in_root(["mkdir", "-p", "-m", "0700", "/var/lib/maculaos"])
            .run()
            .map_err(InitError::tool(what()))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "updates" {
                continue;
            }
            in_root([
                "cp",
                "-a",
                &format!("{MNT}/lib/maculaos/{name}"),
                "/var/lib/maculaos/",
            ])
            .run()
            .map_err(InitError::tool(what()))?;
        }
        Ok(())
    };
    let copied = copy();
    let _ = nix::mount::umount(&target);
    let _ = fs::remove_dir(&target);
    copied?;
    say(format!(
        "copied /var/lib/maculaos from {LABEL_DATA} ({device}); {LABEL_DATA} stays unmounted"
    ));
    Ok(())
}

/// Live (and install) mode: the root from the live medium's squashfs,
/// everything writable in memory. Nothing is written to any disk.
fn boot_live(mut loader: Option<&mut Loader>, params: &BootParams) -> Result<Booted, InitError> {
    say(format!(
        "booting {} from the live medium ({LABEL_LIVE})",
        params.mode
    ));
    if let Some(l) = loader.as_deref_mut() {
        for m in LIVE_MODULES {
            match l.load(m) {
                Ok(_) | Err(KmodError::UnknownModule { .. }) => {}
                Err(e) => warn(&e),
            }
        }
    }
    let medium = wait_for_medium(loader.as_deref_mut(), params)?;
    let device = medium.node();
    say(format!("found the live medium on {device}"));

    // The medium stays mounted under /run, which the root inherits: the
    // loop device needs it, and `maculaos install` reads its payload.
    fs::create_dir_all(MEDIUM_DIR).map_err(InitError::io("creating directory", MEDIUM_DIR))?;
    mount(
        Some(device.as_str()),
        MEDIUM_DIR,
        Some("iso9660"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(InitError::sys(format!(
        "mounting the live medium {device} (iso9660) on {MEDIUM_DIR}"
    )))?;
    let image = Path::new(MEDIUM_DIR).join(LIVE_ROOT);
    if !image.is_file() {
        return Err(InitError::NoRoot {
            label: LABEL_LIVE,
            device,
            reason: format!("it has no /{LIVE_ROOT}"),
        });
    }
    // A loop device over a file needs the loop ioctls; busybox's mount does
    // them (doing it here would need unsafe code, denied in this workspace).
    Cmd::new(BUSYBOX)
        .args(["mount", "-t", "squashfs", "-o", "loop,ro"])
        .arg(&image)
        .arg(SYSROOT)
        .quiet()
        .run()
        .map_err(InitError::tool(format!(
            "mounting {} as the root",
            image.display()
        )))?;
    check_root_init(LABEL_LIVE, &device)?;
    say(format!(
        "mounted /{LIVE_ROOT} ({device}) read-only on {SYSROOT}"
    ));
    bind_system_mounts()?;
    let (data_device, outcome) = live_var(loader, params, &medium)?;
    Ok(Booted {
        root_device: device,
        data_device,
        data: outcome,
    })
}

/// Live mode's /var: on the persistence partition when the command line
/// asks for one and it is usable, in memory otherwise. A live system must
/// come up, so a missing, foreign or broken persistence partition is a
/// warning (naming it and why), never a failed boot, and it is never
/// formatted unless blank.
fn live_var(
    loader: Option<&mut Loader>,
    params: &BootParams,
    medium: &BlockDev,
) -> Result<(String, DataOutcome), InitError> {
    let tmpfs = |mut outcome: DataOutcome| -> Result<(String, DataOutcome), InitError> {
        mount_data(None, &mut outcome)?;
        Ok(("tmpfs".into(), outcome))
    };
    if params.persistence == Persistence::Off {
        return tmpfs(DataOutcome::default());
    }
    // Its disk may sit on a bus whose driver comes after the medium's.
    settle_drivers(loader);
    let part = match find_persistence(params, medium) {
        Ok(p) => p,
        Err(why) => {
            warn(format!(
                "{why}\n/var stays in memory: nothing written in this session survives a reboot"
            ));
            return tmpfs(DataOutcome::default());
        }
    };
    let device = part.node();
    let mut outcome = match prepare_persistence(&device) {
        Ok(o) => o,
        Err(e) => {
            warn(format!(
                "{e}\n/var stays in memory: nothing written in this session survives a reboot"
            ));
            return tmpfs(DataOutcome::default());
        }
    };
    match mount_data(Some((LABEL_PERSIST, &part)), &mut outcome) {
        Ok(()) => Ok((device, outcome)),
        Err(e) => {
            warn(format!(
                "{e}\n/var stays in memory: nothing written in this session survives a reboot"
            ));
            // Undo whatever half of it was done before the fallback.
            for m in [sysroot("/var"), PathBuf::from(DATA_MOUNT)] {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
            tmpfs(DataOutcome::default())
        }
    }
}

/// The device named by `maculaos.live.persistence_device`, or the one
/// partition (or disk) whose GPT name or ext4 label is [`LABEL_PERSIST`].
/// Waits a little: a USB stick can show up after the medium.
fn find_persistence(params: &BootParams, medium: &BlockDev) -> Result<BlockDev, InitError> {
    let wanted = params.persistence.clone();
    let wait = BootParams {
        root_wait_secs: params.root_wait_secs.min(PERSIST_WAIT_SECS),
        ..params.clone()
    };
    let what = match &wanted {
        Persistence::Device(d) => format!("the persistence device {d}"),
        _ => format!("a partition labelled {LABEL_PERSIST}"),
    };
    let found = wait_for_devices(
        None,
        &wait,
        &what,
        |devs| {
            let hits: Vec<BlockDev> = devs
                .iter()
                .filter(|d| d.name != medium.name && Path::new(&d.node()).exists())
                .filter(|d| match &wanted {
                    Persistence::Device(node) => d.node() == *node,
                    _ => {
                        d.label.as_deref() == Some(LABEL_PERSIST)
                            || read_head(&d.node(), 2048)
                                .ok()
                                .and_then(|h| ext4_label(&h))
                                .as_deref()
                                == Some(LABEL_PERSIST)
                    }
                })
                .cloned()
                .collect();
            if hits.is_empty() {
                Look::NotYet(())
            } else {
                Look::Found(hits)
            }
        },
        |(), devs, secs| InitError::PersistenceNotFound {
            what: what.clone(),
            secs,
            seen: describe_seen(devs),
        },
    );
    let (mut hits, _) = found?;
    let first = hits.remove(0);
    if !hits.is_empty() {
        let others: Vec<String> = hits.iter().map(BlockDev::node).collect();
        warn(format!(
            "{} are labelled {LABEL_PERSIST} too; using {}",
            others.join(", "),
            first.node()
        ));
    }
    say(format!("found {LABEL_PERSIST} on {}", first.node()));
    Ok(first)
}

/// Format the persistence partition if it is blank, accept it if it holds
/// ext4, refuse anything else (someone's data).
fn prepare_persistence(device: &str) -> Result<DataOutcome, InitError> {
    let head = read_head(device, data::HEAD_LEN)?;
    match classify(&head) {
        DataState::Ext4 => Ok(DataOutcome::default()),
        DataState::Foreign => Err(InitError::ForeignData {
            label: LABEL_PERSIST,
            device: device.to_string(),
        }),
        DataState::Blank => {
            say(format!(
                "formatting {LABEL_PERSIST} ({device}): its first use"
            ));
            in_root([
                "mkfs.ext4",
                "-F",
                "-L",
                LABEL_PERSIST,
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                device,
            ])
            .run()
            .map_err(InitError::tool(format!(
                "formatting {LABEL_PERSIST} ({device})"
            )))?;
            Ok(DataOutcome {
                formatted: true,
                ..DataOutcome::default()
            })
        }
    }
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    match mount(Some(source), target, Some(fstype), flags, data) {
        // Already there (a kernel that mounts devtmpfs itself): fine.
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(errno) => Err(InitError::Sys {
            what: format!("mounting {fstype} on {target}"),
            errno,
        }),
    }
}

fn mount_system() -> Result<(), InitError> {
    let kernel_fs = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", kernel_fs, None)?;
    mount_fs("sysfs", "/sys", "sysfs", kernel_fs, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    // The flags and mode systemd gives /run, which it keeps as it finds it.
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
}

/// The module loader for the running kernel, or `None` (with a note) when
/// the initramfs has no modules for it: built-in drivers may still do.
fn open_loader() -> Option<Loader> {
    let release = match fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(r) => r.trim().to_string(),
        Err(e) => {
            warn(format!(
                "reading the kernel release: {e}; loading no modules"
            ));
            return None;
        }
    };
    let dir = Path::new("/lib/modules").join(&release);
    match ModuleIndex::load(&dir) {
        Ok(index) => Some(Loader::new(index, dir)),
        Err(e) => {
            warn(format!(
                "no kernel modules for {release} ({e}); relying on built-in drivers"
            ));
            None
        }
    }
}

/// Load `modules`, each with what it depends on.
fn load_modules(loader: &mut Loader, modules: &[&str]) {
    for m in modules {
        match loader.load(m) {
            // Not in this initramfs: built in, or what needs it will say so.
            Ok(_) | Err(KmodError::UnknownModule { .. }) => {}
            Err(e) => warn(&e),
        }
    }
    for w in loader.take_warnings() {
        warn_load(&w);
    }
}

/// ENODEV means "this driver found no hardware it supports" — normal for
/// CPU-feature modules (crc32c-intel without SSE4.2) and for drivers matched
/// by a modalias the device turns out not to need. Not worth a warning.
fn warn_load(e: &KmodError) {
    if !matches!(
        e,
        KmodError::Insert {
            errno: nix::errno::Errno::ENODEV,
            ..
        }
    ) {
        warn(e);
    }
}

/// Load drivers for what appeared after the boot device was found: a
/// bus driver's devices need drivers of their own (virtio-pci → virtio
/// disks). Init stops looking once it has its own device, so a NoCloud
/// seed on another bus would otherwise wait for udev, after
/// `maculaos apply` has looked for it (live mode from a CD is one such
/// case). A few rounds, until one loads nothing new.
fn settle_drivers(loader: Option<&mut Loader>) {
    let Some(l) = loader else { return };
    for _ in 0..5 {
        let loaded = l.coldplug(Path::new("/sys"));
        for w in l.take_warnings() {
            warn_load(&w);
        }
        match loaded {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                warn(&e);
                break;
            }
        }
    }
}

/// What one look at the block devices found.
enum Look<T, M> {
    Found(T),
    /// Not (yet) there; kept to explain a timeout.
    NotYet(M),
}

/// Load drivers and look at the block devices until `look` finds what it
/// wants or `root_wait_secs` pass (then `timed_out` makes the error).
/// Drivers for new buses make new devices appear (virtio-pci → virtio
/// disks, USB host → USB storage), so every round coldplugs again.
fn wait_for_devices<T, M>(
    mut loader: Option<&mut Loader>,
    params: &BootParams,
    what: &str,
    mut look: impl FnMut(&[BlockDev]) -> Look<T, M>,
    timed_out: impl FnOnce(M, &[BlockDev], u64) -> InitError,
) -> Result<(T, Vec<BlockDev>), InitError> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(params.root_wait_secs);
    let mut announced = false;
    let mut coldplug_warned = false;
    loop {
        if let Some(l) = loader.as_deref_mut() {
            if let Err(e) = l.coldplug(Path::new("/sys")) {
                if !coldplug_warned {
                    warn(&e);
                    coldplug_warned = true;
                }
            }
            for w in l.take_warnings() {
                warn_load(&w);
            }
        }
        let devs = scan_block_devices(Path::new("/sys"))
            .map_err(InitError::io("reading", "/sys/class/block"))?;
        match look(&devs) {
            Look::Found(t) => return Ok((t, devs)),
            Look::NotYet(missing) if Instant::now() >= deadline => {
                return Err(timed_out(missing, &devs, params.root_wait_secs))
            }
            Look::NotYet(_) => {}
        }
        if !announced && start.elapsed() >= Duration::from_secs(1) {
            say(format!(
                "waiting up to {} s for {what}",
                params.root_wait_secs
            ));
            announced = true;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Why the boot partitions are not usable yet.
enum NotReady {
    Missing(Missing),
    /// Found in sysfs; devtmpfs has not made this node yet.
    NoNode(String),
}

fn wait_for_partitions(
    loader: Option<&mut Loader>,
    params: &BootParams,
) -> Result<(BootPartitions, Vec<BlockDev>), InitError> {
    let root_label = params.slot.label();
    wait_for_devices(
        loader,
        params,
        root_label,
        |devs| match find_boot_partitions(devs, root_label, LABEL_DATA) {
            // devtmpfs adds the node just after sysfs shows the device:
            // use it only once both nodes are there.
            Ok(found) => match [found.root.node(), found.data.node()]
                .into_iter()
                .find(|n| !Path::new(n).exists())
            {
                None => Look::Found(found),
                Some(node) => Look::NotYet(NotReady::NoNode(node)),
            },
            Err(missing) => Look::NotYet(NotReady::Missing(missing)),
        },
        |why, devs, secs| {
            let seen = describe_seen(devs);
            match why {
                NotReady::NoNode(node) => InitError::Io {
                    action: "waiting for the device node",
                    path: node.into(),
                    source: std::io::ErrorKind::NotFound.into(),
                },
                NotReady::Missing(Missing::Root) => InitError::RootNotFound {
                    label: root_label,
                    secs,
                    seen,
                },
                NotReady::Missing(Missing::Data { disk }) => InitError::DataNotFound {
                    data_label: LABEL_DATA,
                    root_label,
                    disk,
                    secs,
                    seen,
                },
            }
        },
    )
}

/// The whole disk (CD drive, USB stick, virtual disk) whose ISO 9660
/// volume id is [`LABEL_LIVE`]. Partitions are skipped: a hybrid ISO
/// written to a stick is read from the start of the disk.
fn wait_for_medium(
    loader: Option<&mut Loader>,
    params: &BootParams,
) -> Result<BlockDev, InitError> {
    let (medium, _) = wait_for_devices(
        loader,
        params,
        LABEL_LIVE,
        |devs| {
            for d in devs.iter().filter(|d| !d.is_partition()) {
                let node = d.node();
                // An empty CD drive or a vanished device: not it.
                let Ok(head) = read_head(&node, ISO_HEAD_LEN) else {
                    continue;
                };
                if iso_volume_id(&head).as_deref() == Some(LABEL_LIVE) {
                    return Look::Found(d.clone());
                }
            }
            Look::NotYet(())
        },
        |(), devs, secs| InitError::MediumNotFound {
            label: LABEL_LIVE,
            secs,
            seen: describe_seen(devs),
        },
    )?;
    Ok(medium)
}

fn mount_root(label: &'static str, root: &BlockDev) -> Result<(), InitError> {
    let device = root.node();
    match mount(
        Some(device.as_str()),
        SYSROOT,
        Some("squashfs"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        Ok(()) => {}
        // The kernel lacks squashfs: not the slot's fault.
        Err(Errno::ENODEV) => {
            return Err(InitError::Sys {
                what: format!(
                    "mounting {device} as squashfs (the kernel has no squashfs support: is the squashfs module in the initramfs?)"
                ),
                errno: Errno::ENODEV,
            })
        }
        Err(e) => {
            return Err(InitError::NoRoot {
                label,
                device,
                reason: format!("squashfs mount failed: {e}"),
            })
        }
    }
    check_root_init(label, &device)?;
    say(format!("mounted {label} ({device}) read-only on {SYSROOT}"));
    Ok(())
}

/// The mounted root has an init to hand over to; if not, unmount it.
fn check_root_init(label: &'static str, device: &str) -> Result<(), InitError> {
    // lstat, not stat: /sbin/init is an absolute symlink into the root,
    // which does not resolve from the initramfs.
    if fs::symlink_metadata(sysroot(ROOT_INIT)).is_err() {
        let _ = nix::mount::umount(SYSROOT);
        return Err(InitError::NoRoot {
            label,
            device: device.to_string(),
            reason: format!("it mounts, but has no {ROOT_INIT}"),
        });
    }
    Ok(())
}

/// Make /dev, /proc, /sys and /run visible inside the root so its tools
/// work under chroot. Bind mounts rather than moves: the initramfs keeps
/// its own /dev until the hand-over, so the mounts init makes from here on
/// name their devices `/dev/vda5` (what `findmnt` and systemd later see),
/// not `/sysroot/dev/vda5`. The initramfs's originals are detached at the
/// hand-over, leaving exactly one mount of each.
fn bind_system_mounts() -> Result<(), InitError> {
    for m in SYSTEM_MOUNTS {
        let target = sysroot(m);
        mount(
            Some(m),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(InitError::sys(format!(
            "bind-mounting {m} on {}",
            target.display()
        )))?;
    }
    Ok(())
}

/// Read up to `len` bytes from the start of a device.
fn read_head(device: &str, len: usize) -> Result<Vec<u8>, InitError> {
    let file = fs::File::open(device).map_err(InitError::io("opening", device))?;
    let mut head = Vec::with_capacity(len);
    file.take(len as u64)
        .read_to_end(&mut head)
        .map_err(InitError::io("reading", device))?;
    Ok(head)
}

fn prepare_data(parts: &BootPartitions, devs: &[BlockDev]) -> Result<DataOutcome, InitError> {
    let device = parts.data.node();
    let head = read_head(&device, data::HEAD_LEN)?;
    let state = classify(&head);
    let unformatted = parts
        .data
        .partnum
        .is_some_and(|n| partition_type(&parts.disk, n).is_some_and(|t| is_unformatted_type(&t)));
    if state == DataState::Foreign && !unformatted {
        return Err(InitError::ForeignData {
            label: LABEL_DATA,
            device,
        });
    }

    // Grow on every boot, not just the first: a disk can be enlarged later.
    let disk_size_path = Path::new("/sys/class/block").join(&parts.disk).join("size");
    let disk_size = read_number(&disk_size_path).ok_or_else(|| InitError::Io {
        action: "reading the disk size from",
        path: disk_size_path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no number"),
    })?;
    let mut size = parts.data.size;
    let mut grown = false;
    if let Some(target) = grow_target(&parts.data, disk_size, devs) {
        match parts.data.partnum {
            Some(n) => {
                say(format!(
                    "growing {LABEL_DATA} ({device}) from {} to {} (end of disk)",
                    human_size(size),
                    human_size(target)
                ));
                // Growing is worth a warning, not a boot loop: the data
                // fits where it is, and the next boot tries again.
                match grow_partition(&parts.disk, n) {
                    Ok(()) => {
                        let part_size = Path::new("/sys/class/block")
                            .join(&parts.data.name)
                            .join("size");
                        size = read_number(&part_size).unwrap_or(size);
                        grown = size > parts.data.size;
                        if !grown {
                            warn(format!(
                                "{device} did not grow; keeping {}",
                                human_size(size)
                            ));
                        }
                    }
                    Err(e) => warn(format!("{e}\nkeeping {device} at {}", human_size(size))),
                }
            }
            None => warn(format!(
                "{device} has no partition number in sysfs; not growing it"
            )),
        }
    }

    let formatted = unformatted || state == DataState::Blank;
    if formatted {
        say(format!(
            "formatting {LABEL_DATA} ({device}, {}): first boot",
            human_size(size)
        ));
        in_root([
            "mkfs.ext4",
            "-F",
            "-L",
            LABEL_DATA,
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1",
            &device,
        ])
        .run()
        .map_err(InitError::tool(format!(
            "formatting {LABEL_DATA} ({device})"
        )))?;
        // Only now is it a filesystem worth keeping. If this fails we must not
        // go on: the next boot would see "unformatted" and format it again.
        if let Some(n) = parts.data.partnum {
            set_partition_type(&parts.disk, n, TYPE_LINUX_FS)?;
        }
    }
    let resize = !formatted && ext4_size(&head).is_some_and(|fs| fs_needs_resize(fs, size));
    Ok(DataOutcome {
        formatted,
        grown,
        resize,
        ..DataOutcome::default()
    })
}

/// The GPT type GUID of partition `partnum` of `disk`, read with the root's
/// sfdisk; None (and a warning) when it cannot be read.
fn partition_type(disk: &str, partnum: u32) -> Option<String> {
    let node = format!("/dev/{disk}");
    match in_root(["sfdisk", "--part-type", &node, &partnum.to_string()])
        .quiet()
        .output()
    {
        Ok(t) => Some(t.trim().to_string()),
        Err(e) => {
            warn(format!(
                "reading the partition type of {node} partition {partnum}: {e}"
            ));
            None
        }
    }
}

/// Whether a GPT type (as sfdisk prints it) marks a data partition still to be formatted.
pub fn is_unformatted_type(t: &str) -> bool {
    t.trim().eq_ignore_ascii_case(TYPE_DATA_UNFORMATTED)
}

fn set_partition_type(disk: &str, partnum: u32, type_guid: &str) -> Result<(), InitError> {
    let node = format!("/dev/{disk}");
    in_root([
        "sfdisk",
        "--no-reread",
        "--no-tell-kernel",
        "--part-type",
        &node,
        &partnum.to_string(),
        type_guid,
    ])
    .quiet()
    .run()
    .map_err(InitError::tool(format!(
        "marking {LABEL_DATA} ({node} partition {partnum}) as formatted"
    )))
}

/// Extend partition `partnum` of `disk` to the end of the free space, with
/// the root's sfdisk, and tell the kernel its new size.
fn grow_partition(disk: &str, partnum: u32) -> Result<(), InitError> {
    let node = format!("/dev/{disk}");
    let n = partnum.to_string();
    let what = format!("growing {LABEL_DATA} on {node}");
    // An image written to a bigger disk has its backup GPT where the image
    // ended, not at the end of the disk: move it there first, or the
    // partition cannot pass it.
    in_root([
        "sfdisk",
        "--no-reread",
        "--no-tell-kernel",
        "--relocate",
        "gpt-bak-std",
        &node,
    ])
    .run()
    .map_err(InitError::tool(what.clone()))?;
    // Same start, size "+" (all there is). The disk is in use (the root is
    // mounted from it), hence no re-read; signatures on the partition are
    // our filesystem, never to be wiped.
    in_root([
        "sfdisk",
        "--no-reread",
        "--no-tell-kernel",
        "--wipe-partitions",
        "never",
        "-N",
        &n,
        &node,
    ])
    .stdin(", +\n")
    .run()
    .map_err(InitError::tool(what.clone()))?;
    // The kernel refuses to re-read the table of a disk in use, but
    // updates one partition's size when asked.
    in_root(["partx", "-u", "-n", &n, &node])
        .run()
        .map_err(InitError::tool(what))
}

/// Put /var (with /home and /root) on the data partition (labelled
/// `label`: `MACULA_DATA`, or `MACULA_PERSIST` in live mode), or, with none,
/// on a tmpfs: seeded from the image either way.
fn mount_data(
    data_part: Option<(&'static str, &BlockDev)>,
    outcome: &mut DataOutcome,
) -> Result<(), InitError> {
    let label = data_part.map_or(LABEL_DATA, |(l, _)| l);
    let device = match data_part {
        Some((_, part)) => {
            let device = part.node();
            mount(
                Some(device.as_str()),
                DATA_MOUNT,
                Some("ext4"),
                MsFlags::empty(),
                None::<&str>,
            )
            .map_err(InitError::sys(format!(
                "mounting {label} ({device}) as ext4 on {DATA_MOUNT}"
            )))?;
            device
        }
        None => {
            fs::create_dir_all(DATA_MOUNT)
                .map_err(InitError::io("creating directory", DATA_MOUNT))?;
            mount(
                Some("tmpfs"),
                DATA_MOUNT,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("mode=0755"),
            )
            .map_err(InitError::sys(format!("mounting a tmpfs on {DATA_MOUNT}")))?;
            "tmpfs (in memory: gone at reboot)".to_string()
        }
    };
    if data_part.is_some() {
        outcome.factory_reset =
            factory_reset_if_requested(label, &device, outcome.reset_asked.take());
    }
    let stats = seed_data(Path::new(SYSROOT), Path::new(DATA_MOUNT))?;
    if stats.created > 0 {
        say(format!(
            "copied {} new entries from the image into /var",
            stats.created
        ));
    }
    let var = sysroot("/var");
    mount(
        Some(DATA_MOUNT),
        &var,
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(InitError::sys(format!(
        "moving {DATA_MOUNT} to {}",
        var.display()
    )))?;
    for (from, to) in [("/var/home", "/home"), ("/var/roothome", "/root")] {
        let (from, to) = (sysroot(from), sysroot(to));
        mount(
            Some(&from),
            &to,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(InitError::sys(format!(
            "bind-mounting {} on {}",
            from.display(),
            to.display()
        )))?;
    }
    match data_part {
        Some(_) => say(format!("mounted {label} ({device}) on /var")),
        None => say(format!("/var is a {device}")),
    }
    if outcome.resize {
        // Online, now that it is mounted where the root's resize2fs sees
        // it (/var). A failure costs only space, and the next boot tries
        // again (the filesystem is still smaller than its partition).
        say(format!(
            "growing the filesystem on {device} to fill its partition"
        ));
        if let Err(e) = in_root(["resize2fs", device.as_str()]).run() {
            warn(format!("growing the filesystem on {device}: {e}"));
        }
    }
    Ok(())
}

/// Carry out a factory reset asked for by `maculaos factory-reset` (a
/// request at the root of the data partition, mounted at [`DATA_MOUNT`]),
/// before the partition is seeded and used. Failures are warnings: the
/// request stays, the node boots, and the next boot tries again.
/// `asked` comes from the kernel command line: it is written down as a
/// request first, so a power cut during the wipe is finished next boot.
fn factory_reset_if_requested(
    label: &str,
    device: &str,
    asked: Option<reset::ResetRequest>,
) -> bool {
    let data = Path::new(DATA_MOUNT);
    let req = match (reset::read_request(data), asked) {
        (Ok(Some(r)), _) => r,
        (Ok(None), Some(asked)) => {
            say("factory reset asked for on the kernel command line (the boot menu's entry)");
            if let Err(e) = reset::write_request(data, &asked) {
                warn(format!(
                    "{e}
resetting anyway; if this boot is cut short, choose the entry again"
                ));
            }
            asked
        }
        (Ok(None), None) => return false,
        (Err(e), _) => {
            warn(format!(
                "{e}\nthe factory reset was NOT done: ask for it again with `maculaos factory-reset --confirm`"
            ));
            return false;
        }
    };
    let keeping = match (req.keep_data, req.network_yaml.is_some()) {
        (true, true) => "keeping /var/lib/data and the network settings",
        (true, false) => "keeping /var/lib/data",
        (false, true) => "keeping the network settings",
        (false, false) => "keeping nothing",
    };
    say(format!(
        "FACTORY RESET of {label} ({device}): removing the node's configuration, credentials, identity and state; {keeping}"
    ));
    match reset::wipe(data, &req) {
        Ok(w) => {
            say(format!(
                "factory reset done: removed {}; this is a first boot again",
                w.removed.join(", ")
            ));
            true
        }
        Err(e) => {
            warn(format!(
                "{e}\nthe factory reset is incomplete; it is tried again on the next boot"
            ));
            false
        }
    }
}

fn mount_etc_overlay() -> Result<(), InitError> {
    // On the root's /run (the tmpfs), so the upper layer stays reachable
    // after the hand-over and is gone on reboot.
    let base = sysroot("/run/maculaos/etc");
    let (upper, work) = (base.join("upper"), base.join("work"));
    for d in [&upper, &work] {
        fs::create_dir_all(d).map_err(InitError::io("creating directory", d))?;
    }
    let etc = sysroot("/etc");
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        etc.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &etc,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(InitError::sys(format!(
        "mounting the overlay on {}",
        etc.display()
    )))?;
    say("/etc is writable (an overlay whose changes last until reboot)");
    Ok(())
}

/// /tmp on tmpfs: the root is read-only, and systemd needs a writable /tmp
/// to set up services' private /dev (PrivateDevices=, e.g. systemd-resolved).
fn mount_tmp() -> Result<(), InitError> {
    let tmp = sysroot("/tmp");
    mount(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(InitError::sys(format!(
        "mounting a tmpfs on {}",
        tmp.display()
    )))?;
    Ok(())
}

fn setup_identity() -> Result<(), InitError> {
    let state = sysroot(STATE_DIR);
    identity::ensure_private_dir(&state)?;
    let (id, origin) = identity::ensure_machine_id(&state)?;
    let etc_id = sysroot("/etc/machine-id");
    fs::write(&etc_id, format!("{id}\n")).map_err(InitError::io("writing", &etc_id))?;
    say(match origin {
        MachineIdOrigin::Kept => format!("machine id {id}"),
        MachineIdOrigin::Created => format!("machine id {id} (new: first boot)"),
        MachineIdOrigin::Replaced => {
            format!("machine id {id} (new: the saved one was not a valid id)")
        }
    });

    let ssh_dir = state.join("ssh");
    identity::ensure_private_dir(&ssh_dir)?;
    let missing = identity::missing_host_keys(&ssh_dir);
    if missing.is_empty() {
        return Ok(());
    }
    say(format!("generating SSH host keys ({})", missing.join(", ")));
    let started = Instant::now();
    for key_type in missing {
        let name = identity::host_key_name(key_type);
        // ssh-keygen asks before overwriting a leftover public key; there
        // is nobody to answer.
        let _ = fs::remove_file(ssh_dir.join(format!("{name}.pub")));
        let in_root_path = format!("{STATE_DIR}/ssh/{name}");
        in_root([
            "ssh-keygen",
            "-q",
            "-t",
            key_type,
            "-N",
            "",
            "-f",
            &in_root_path,
        ])
        .run()
        .map_err(InitError::tool(format!(
            "generating the {key_type} SSH host key"
        )))?;
    }
    say(format!(
        "SSH host keys generated in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uptime() {
        assert_eq!(parse_uptime_ms("12.34 5.67\n"), Some(12_340));
        assert_eq!(parse_uptime_ms("3.05 1.00"), Some(3_050));
        assert_eq!(parse_uptime_ms("7 1"), Some(7_000));
        assert_eq!(parse_uptime_ms("1.2345 0"), Some(1_234));
        assert_eq!(parse_uptime_ms(""), None);
        assert_eq!(parse_uptime_ms("x.1 0"), None);
    }

    #[test]
    fn in_root_runs_through_busybox_chroot() {
        let c = in_root([
            "ssh-keygen",
            "-q",
            "-N",
            "",
            "-f",
            "/var/lib/maculaos/ssh/k",
        ]);
        assert_eq!(
            c.display(),
            "/bin/busybox chroot /sysroot ssh-keygen -q -N '' -f /var/lib/maculaos/ssh/k"
        );
    }

    #[test]
    fn sysroot_paths() {
        assert_eq!(
            sysroot("/var/lib/maculaos"),
            Path::new("/sysroot/var/lib/maculaos")
        );
        assert_eq!(
            sysroot(BOOT_INFO_PATH),
            Path::new("/sysroot/run/maculaos/boot.json")
        );
    }
}

#[cfg(test)]
mod type_tests {
    use super::*;

    #[test]
    fn unformatted_type_is_recognised_in_any_case() {
        assert!(is_unformatted_type(
            "40cb2921-36a6-4662-a9cd-6ff51c2c78d8\n"
        ));
        assert!(is_unformatted_type(TYPE_DATA_UNFORMATTED));
        assert!(!is_unformatted_type(TYPE_LINUX_FS));
    }
}
