//! The A/B slots as GRUB sees them. GRUB keeps the boot state in its
//! environment block on the ESP (see image/grub/grub.cfg and
//! docs/updates.md); this crate reads it, marks a slot on trial good, and
//! tells what each slot holds.
//!
//! The ESP is mounted only for the moment it is read or written (under
//! /run/maculaos/esp), so a power cut at any other time cannot touch it.

use maculaos_boot::grubenv::{self, Vars};
use maculaos_boot::{blockdev, Slot, LABEL_ESP};
use serde::Serialize;
use std::path::{Path, PathBuf};

pub const VAR_SLOT: &str = "maculaos_slot";
pub const VAR_TRIAL: &str = "maculaos_trial";
pub const VAR_TRIES: &str = "maculaos_tries";
pub const VAR_BAD: &str = "maculaos_bad";
pub const VAR_ROLLBACK: &str = "maculaos_rollback";
/// Boots a slot on trial gets (GRUB counts them down: grub.cfg).
pub const TRIES: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SlotsError {
    #[error("no partition labelled {LABEL_ESP} on the boot disk {disk}: is this an installed MaculaOS disk?")]
    NoEsp { disk: String },
    #[error("reading the block devices in /sys: {0}")]
    Sysfs(std::io::Error),
    #[error(transparent)]
    Grubenv(#[from] grubenv::GrubenvError),
    #[error(transparent)]
    Run(#[from] maculaos_runner::RunError),
    #[error("{0}")]
    Io(String),
}

/// The boot state GRUB keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct State {
    /// The good slot: booted when no trial is running.
    pub good: Slot,
    /// A slot on trial, with the boots it has left.
    pub trial: Option<Slot>,
    pub tries_left: Option<u8>,
    /// The slot that last failed its trial, and why GRUB gave up on it.
    pub bad: Option<Slot>,
    pub rollback: Option<String>,
}

fn slot_var(vars: &Vars, k: &str) -> Option<Slot> {
    vars.get(k).and_then(|v| v.parse().ok())
}

impl State {
    pub fn from_vars(vars: &Vars) -> State {
        State {
            good: slot_var(vars, VAR_SLOT).unwrap_or(Slot::A),
            trial: slot_var(vars, VAR_TRIAL),
            tries_left: vars.get(VAR_TRIES).and_then(|v| v.parse().ok()),
            bad: slot_var(vars, VAR_BAD),
            rollback: vars.get(VAR_ROLLBACK).filter(|r| !r.is_empty()).cloned(),
        }
    }

    /// The slot the next boot starts (what grub.cfg will pick).
    pub fn next_boot(&self) -> Slot {
        match (self.trial, self.tries_left) {
            (Some(t), Some(n)) if n > 0 => t,
            _ => self.good,
        }
    }
}

/// Make `running` the good slot if it is the one on trial. Returns whether
/// anything changed (marking good happens once per trial).
pub fn mark_good(vars: &mut Vars, running: Slot) -> bool {
    if slot_var(vars, VAR_TRIAL) != Some(running) {
        return false;
    }
    vars.insert(VAR_SLOT.into(), running.to_string());
    vars.insert(VAR_TRIAL.into(), String::new());
    vars.insert(VAR_TRIES.into(), String::new());
    if slot_var(vars, VAR_BAD) == Some(running) {
        vars.insert(VAR_BAD.into(), String::new());
    }
    true
}

/// What `maculaos rollback` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollback {
    /// The other slot is the good one again: the next boot starts it.
    ToOther(Slot),
    /// The running slot was on trial: its trial is abandoned, the next boot
    /// starts the good slot (the one it was updated from).
    AbandonTrial { running: Slot, good: Slot },
    /// An update waiting to be tried in the other slot is cancelled: the next
    /// boot stays on the running slot.
    CancelTrial(Slot),
}

/// Why `maculaos rollback` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackRefused {
    #[error("slot {0} is empty (it holds no version, or no kernel on the ESP): there is nothing to roll back to")]
    Empty(Slot),
    #[error("slot {0} failed its trial ({1}); roll back to it anyway with --force")]
    Bad(Slot, String),
}

/// Make the next boot leave the running slot: go back to the other slot if
/// it holds a bootable, not-bad version. `other_bootable`: the other slot
/// has a version and a kernel on the ESP. `reason` is kept in
/// `maculaos_rollback` so `upgrade --status` shows it afterwards.
pub fn rollback(
    vars: &mut Vars,
    running: Slot,
    other_bootable: bool,
    force: bool,
    reason: &str,
) -> Result<Rollback, RollbackRefused> {
    let state = State::from_vars(vars);
    let other = running.other();
    let clear_trial = |v: &mut Vars| {
        v.insert(VAR_TRIAL.into(), String::new());
        v.insert(VAR_TRIES.into(), String::new());
        v.insert(VAR_ROLLBACK.into(), reason.to_string());
    };
    if state.trial == Some(other) && state.next_boot() == other {
        clear_trial(vars);
        return Ok(Rollback::CancelTrial(other));
    }
    if !other_bootable {
        return Err(RollbackRefused::Empty(other));
    }
    if state.trial == Some(running) && state.good == other {
        clear_trial(vars);
        return Ok(Rollback::AbandonTrial {
            running,
            good: other,
        });
    }
    if state.bad == Some(other) && !force {
        let why = state
            .rollback
            .unwrap_or_else(|| "no reason recorded".into());
        return Err(RollbackRefused::Bad(other, why));
    }
    clear_trial(vars);
    vars.insert(VAR_SLOT.into(), other.to_string());
    if state.bad == Some(other) {
        vars.insert(VAR_BAD.into(), String::new());
    }
    Ok(Rollback::ToOther(other))
}

/// The ESP of the disk `root_device` (e.g. `/dev/vda3`) is on.
pub fn find_esp(sysfs: &Path, root_device: &str) -> Result<String, SlotsError> {
    let devs = blockdev::scan_block_devices(sysfs).map_err(SlotsError::Sysfs)?;
    let root_name = root_device.trim_start_matches("/dev/");
    let disk = devs
        .iter()
        .find(|d| d.name == root_name)
        .and_then(|d| d.disk.clone())
        .unwrap_or_default();
    devs.iter()
        .find(|d| d.disk.as_deref() == Some(disk.as_str()) && d.label.as_deref() == Some(LABEL_ESP))
        .map(|d| d.node())
        .ok_or(SlotsError::NoEsp { disk })
}

/// The ESP, mounted for as long as this lives.
pub struct Esp {
    pub dir: PathBuf,
    _mount: maculaos_runner::Mount,
}

impl Esp {
    /// Mount `device` (vfat) at `dir`; `write` mounts it read-write with
    /// synchronous writes, so what we write is on the disk when we return.
    pub fn mount(device: &str, dir: &Path, write: bool) -> Result<Esp, SlotsError> {
        let opts = if write { "rw,sync" } else { "ro" };
        let mount = maculaos_runner::Mount::new(device, dir, Some("vfat"), Some(opts))?;
        Ok(Esp {
            dir: dir.to_owned(),
            _mount: mount,
        })
    }

    pub fn grubenv(&self) -> PathBuf {
        self.dir.join("grub/grubenv")
    }

    /// The version a slot holds (from its `slot.cfg`), if it holds one.
    pub fn slot_version(&self, slot: Slot) -> Option<String> {
        let cfg = std::fs::read_to_string(self.dir.join(format!("slots/{slot}/slot.cfg"))).ok()?;
        parse_slot_cfg(&cfg, slot)
    }
}

/// What a slot was written with: the size and sha256 of its image, kept in
/// its `slot.cfg` so `maculaos repair` can check the slot later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotImage {
    pub size: u64,
    pub sha256: String,
}

/// The per-slot GRUB snippet written by the image builder, the installer
/// and `maculaos upgrade`: `set maculaos_B_version="1.2.3"` (the menu shows
/// it) plus the image's size and sha256. Only `[A-Za-z0-9.+~_-]` survive in
/// the version and hex digits in the hash, so nothing can break out of the
/// quoted GRUB strings.
pub fn slot_cfg(slot: Slot, version: &str, image: &SlotImage) -> String {
    let safe: String = version
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || ".-+~_".contains(*c))
        .collect();
    let hash: String = image
        .sha256
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect();
    format!(
        "set maculaos_{slot}_version=\"{safe}\"\nset maculaos_{slot}_size=\"{}\"\nset maculaos_{slot}_sha256=\"{hash}\"\n",
        image.size
    )
}

/// What checking a slot's partition against its recorded image found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotCheck {
    /// The first `size` bytes hash to the recorded sha256.
    Intact,
    /// They do not: the slot is damaged.
    Damaged { actual: String },
}

/// Hash the first `image.size` bytes of `partition` and compare them with
/// `image.sha256`.
pub fn check_slot(partition: &std::path::Path, image: &SlotImage) -> std::io::Result<SlotCheck> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let f = std::fs::File::open(partition)?;
    let mut input = f.take(image.size);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    let actual = hex::encode(hasher.finalize());
    Ok(if done == image.size && actual == image.sha256 {
        SlotCheck::Intact
    } else if done != image.size {
        SlotCheck::Damaged {
            actual: format!("only {done} of {} bytes readable", image.size),
        }
    } else {
        SlotCheck::Damaged { actual }
    })
}

fn slot_cfg_value(cfg: &str, slot: Slot, name: &str) -> Option<String> {
    let key = format!("set maculaos_{slot}_{name}=");
    cfg.lines()
        .find_map(|l| l.trim().strip_prefix(&key))
        .map(|v| v.trim().trim_matches('"').to_string())
}

/// `set maculaos_B_version="1.2.3"` → `1.2.3` (the inverse of [`slot_cfg`]).
pub fn parse_slot_cfg(cfg: &str, slot: Slot) -> Option<String> {
    slot_cfg_value(cfg, slot, "version")
}

/// The image size and sha256 in a `slot.cfg`; `None` for one written
/// before they were recorded.
pub fn parse_slot_image(cfg: &str, slot: Slot) -> Option<SlotImage> {
    Some(SlotImage {
        size: slot_cfg_value(cfg, slot, "size")?.parse().ok()?,
        sha256: slot_cfg_value(cfg, slot, "sha256").filter(|h| h.len() == 64)?,
    })
}

/// One slot, for `maculaos upgrade --status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotStatus {
    pub slot: Slot,
    pub version: Option<String>,
    /// `good`, `trying N of 3`, `bad`, `empty`, or `standby`.
    pub state: String,
    pub running: bool,
    pub next_boot: bool,
}

/// Both slots' status from GRUB's state and the versions on the ESP.
pub fn status(state: &State, versions: [Option<String>; 2], running: Slot) -> Vec<SlotStatus> {
    [Slot::A, Slot::B]
        .into_iter()
        .zip(versions)
        .map(|(slot, version)| {
            let st = if version.is_none() {
                "empty".to_string()
            } else if state.trial == Some(slot) {
                let used = TRIES - state.tries_left.unwrap_or(0).min(TRIES);
                format!("trying {used} of {TRIES}")
            } else if state.good == slot {
                "good".to_string()
            } else if state.bad == Some(slot) {
                "bad".to_string()
            } else {
                "standby".to_string()
            };
            SlotStatus {
                slot,
                version,
                state: st,
                running: running == slot,
                next_boot: state.next_boot() == slot,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn state_and_next_boot() {
        let s = State::from_vars(&vars(&[("maculaos_slot", "A")]));
        assert_eq!((s.good, s.trial, s.next_boot()), (Slot::A, None, Slot::A));
        let s = State::from_vars(&vars(&[
            ("maculaos_slot", "A"),
            ("maculaos_trial", "B"),
            ("maculaos_tries", "2"),
        ]));
        assert_eq!(s.next_boot(), Slot::B);
        let s = State::from_vars(&vars(&[
            ("maculaos_slot", "A"),
            ("maculaos_trial", "B"),
            ("maculaos_tries", "0"),
        ]));
        assert_eq!(s.next_boot(), Slot::A, "no tries left: GRUB falls back");
        let s = State::from_vars(&vars(&[("maculaos_trial", ""), ("maculaos_rollback", "")]));
        assert_eq!((s.trial, s.rollback), (None, None));
    }

    #[test]
    fn mark_good_only_the_slot_on_trial_and_once() {
        let mut v = vars(&[
            ("maculaos_slot", "A"),
            ("maculaos_trial", "B"),
            ("maculaos_tries", "2"),
            ("maculaos_bad", "B"),
        ]);
        assert!(!mark_good(&mut v, Slot::A), "A is not on trial");
        assert!(mark_good(&mut v, Slot::B));
        let s = State::from_vars(&v);
        assert_eq!(
            (s.good, s.trial, s.tries_left, s.bad),
            (Slot::B, None, None, None)
        );
        assert!(!mark_good(&mut v, Slot::B), "only once");
    }

    #[test]
    fn status_of_both_slots() {
        let s = State::from_vars(&vars(&[
            ("maculaos_slot", "A"),
            ("maculaos_trial", "B"),
            ("maculaos_tries", "2"),
        ]));
        let st = status(&s, [Some("1.0".into()), Some("1.1".into())], Slot::B);
        assert_eq!(st[0].state, "good");
        assert_eq!(st[1].state, "trying 1 of 3");
        assert!(st[1].running && st[1].next_boot && !st[0].next_boot);
        let s = State::from_vars(&vars(&[("maculaos_slot", "A"), ("maculaos_bad", "B")]));
        let st = status(&s, [Some("1.0".into()), Some("1.1".into())], Slot::A);
        assert_eq!(st[1].state, "bad");
        let st = status(&s, [Some("1.0".into()), None], Slot::A);
        assert_eq!(st[1].state, "empty");
    }

    #[test]
    fn rollback_to_the_other_slot_and_back() {
        let mut v = vars(&[("maculaos_slot", "B")]);
        assert_eq!(
            rollback(&mut v, Slot::B, true, false, "operator"),
            Ok(Rollback::ToOther(Slot::A))
        );
        let s = State::from_vars(&v);
        assert_eq!((s.good, s.next_boot()), (Slot::A, Slot::A));
        assert_eq!(s.rollback.as_deref(), Some("operator"));
        // After booting A, rolling back again returns to B.
        assert_eq!(
            rollback(&mut v, Slot::A, true, false, "again"),
            Ok(Rollback::ToOther(Slot::B))
        );
        assert_eq!(State::from_vars(&v).next_boot(), Slot::B);
    }

    #[test]
    fn rollback_refuses_empty_and_bad_slots() {
        let mut v = vars(&[("maculaos_slot", "A")]);
        let before = v.clone();
        assert_eq!(
            rollback(&mut v, Slot::A, false, true, "x"),
            Err(RollbackRefused::Empty(Slot::B))
        );
        assert_eq!(v, before, "a refusal changes nothing");
        let mut v = vars(&[
            ("maculaos_slot", "A"),
            ("maculaos_bad", "B"),
            (
                "maculaos_rollback",
                "slot B was not marked good after 3 boots",
            ),
        ]);
        let before = v.clone();
        let err = rollback(&mut v, Slot::A, true, false, "x").unwrap_err();
        assert!(
            err.to_string().contains("not marked good after 3 boots"),
            "{err}"
        );
        assert_eq!(v, before);
        assert_eq!(
            rollback(&mut v, Slot::A, true, true, "forced"),
            Ok(Rollback::ToOther(Slot::B))
        );
        let s = State::from_vars(&v);
        assert_eq!((s.good, s.bad), (Slot::B, None));
    }

    #[test]
    fn rollback_during_a_trial() {
        // Running B on trial (updated from A): abandon the trial, boot A.
        let mut v = vars(&[
            ("maculaos_slot", "A"),
            ("maculaos_trial", "B"),
            ("maculaos_tries", "2"),
        ]);
        assert_eq!(
            rollback(&mut v, Slot::B, true, false, "operator"),
            Ok(Rollback::AbandonTrial {
                running: Slot::B,
                good: Slot::A
            })
        );
        let s = State::from_vars(&v);
        assert_eq!((s.trial, s.next_boot()), (None, Slot::A));
        // Running A with an update waiting in B: cancel it, stay on A.
        let mut v = vars(&[
            ("maculaos_slot", "A"),
            ("maculaos_trial", "B"),
            ("maculaos_tries", "3"),
        ]);
        assert_eq!(
            rollback(&mut v, Slot::A, true, false, "operator"),
            Ok(Rollback::CancelTrial(Slot::B))
        );
        assert_eq!(State::from_vars(&v).next_boot(), Slot::A);
    }

    #[test]
    fn slot_cfg_is_safe_grub_script_and_round_trips() {
        let img = SlotImage {
            size: 42,
            sha256: "ab".repeat(32),
        };
        assert_eq!(
            slot_cfg(Slot::B, "1.2.3", &img),
            format!(
                "set maculaos_B_version=\"1.2.3\"\nset maculaos_B_size=\"42\"\nset maculaos_B_sha256=\"{}\"\n",
                "ab".repeat(32)
            )
        );
        let evil = SlotImage {
            size: 1,
            sha256: "\"; reboot; \"".into(),
        };
        let cfg = slot_cfg(Slot::A, "1\"; reboot; \"", &evil);
        assert!(
            cfg.starts_with("set maculaos_A_version=\"1reboot\"\n"),
            "{cfg}"
        );
        assert!(cfg.contains("set maculaos_A_sha256=\"eb\"\n"), "{cfg}");
        let cfg = slot_cfg(Slot::B, "1.2.3", &img);
        assert_eq!(parse_slot_cfg(&cfg, Slot::B).as_deref(), Some("1.2.3"));
        assert_eq!(parse_slot_image(&cfg, Slot::B), Some(img));
        assert_eq!(
            parse_slot_image("set maculaos_B_version=\"1\"\n", Slot::B),
            None
        );
    }

    #[test]
    fn slots_are_checked_against_their_record() {
        use sha2::{Digest, Sha256};
        let d = tempfile::tempdir().unwrap();
        let part = d.path().join("part");
        let mut bytes = vec![7u8; 3000];
        bytes.extend(vec![0u8; 1000]);
        std::fs::write(&part, &bytes).unwrap();
        let image = SlotImage {
            size: 3000,
            sha256: hex::encode(Sha256::digest(&bytes[..3000])),
        };
        assert_eq!(check_slot(&part, &image).unwrap(), SlotCheck::Intact);
        bytes[10] = 8;
        std::fs::write(&part, &bytes).unwrap();
        assert!(matches!(
            check_slot(&part, &image).unwrap(),
            SlotCheck::Damaged { .. }
        ));
        let too_big = SlotImage {
            size: 9000,
            ..image
        };
        assert!(matches!(
            check_slot(&part, &too_big).unwrap(),
            SlotCheck::Damaged { actual } if actual.contains("4000 of 9000")
        ));
    }

    #[test]
    fn slot_cfg_versions() {
        assert_eq!(
            parse_slot_cfg("set maculaos_B_version=\"1.2.3\"\n", Slot::B),
            Some("1.2.3".into())
        );
        assert_eq!(
            parse_slot_cfg("set maculaos_A_version=\"1\"\n", Slot::B),
            None
        );
    }

    #[test]
    fn esp_is_found_on_the_boot_disk() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path();
        let mk = |disk: &str, part: &str, label: &str| {
            let dev = sys.join(format!("devices/{disk}/{part}"));
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(
                dev.join("uevent"),
                format!("DEVNAME={part}\nDEVTYPE=partition\nPARTNAME={label}\n"),
            )
            .unwrap();
            std::fs::create_dir_all(sys.join("class/block")).unwrap();
            std::os::unix::fs::symlink(&dev, sys.join(format!("class/block/{part}"))).unwrap();
        };
        mk("vda", "vda2", "MACULA_ESP");
        mk("vda", "vda3", "MACULA_ROOT_A");
        mk("vdb", "vdb2", "MACULA_ESP");
        mk("vdb", "vdb3", "MACULA_ROOT_A");
        assert_eq!(find_esp(sys, "/dev/vdb3").unwrap(), "/dev/vdb2");
        assert_eq!(find_esp(sys, "/dev/vda3").unwrap(), "/dev/vda2");
        assert!(matches!(
            find_esp(sys, "/dev/sdz1"),
            Err(SlotsError::NoEsp { .. })
        ));
    }
}
