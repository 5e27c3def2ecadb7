//! The boot contract shared by the image builder, `maculaos-init` and the
//! `maculaos` CLI: GPT partition labels, A/B slots, boot modes, the
//! `maculaos.*` kernel command line, and the record init leaves for the
//! running system in [`BOOT_INFO_PATH`].

pub mod bios;
pub mod blockdev;
pub mod grubenv;
pub mod layout;
pub mod media;
pub mod reset;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// GPT partition label of the BIOS boot partition (GRUB's core image).
pub const LABEL_BIOS: &str = "MACULA_BIOS";
/// GPT partition label (and FAT volume label) of the EFI system partition.
pub const LABEL_ESP: &str = "MACULA_ESP";
/// GPT partition label of the persistent data partition mounted on `/var`.
pub const LABEL_DATA: &str = "MACULA_DATA";

/// GPT type of a data partition that has not been formatted yet. The image
/// ships `MACULA_DATA` with this type; maculaos-init formats it and only then
/// sets [`TYPE_LINUX_FS`]. A power cut in between leaves this type, so the
/// next boot formats again instead of mistaking a half-made filesystem for
/// foreign data (which it must never touch).
pub const TYPE_DATA_UNFORMATTED: &str = "40CB2921-36A6-4662-A9CD-6FF51C2C78D8";
/// GPT type "Linux filesystem data".
pub const TYPE_LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Where `maculaos-init` records how it booted the system.
pub const BOOT_INFO_PATH: &str = "/run/maculaos/boot.json";
/// Written by `maculaos mark-good` once this boot's slot is the good one:
/// a boot on trial (`maculaos.trial=` on its command line) is no longer
/// one from then on.
pub const MARKED_GOOD_PATH: &str = "/run/maculaos/marked-good";
/// Persistent MaculaOS state (config, identity) on the data partition.
pub const STATE_DIR: &str = "/var/lib/maculaos";

/// One of the two root slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// The GPT partition label of this slot's root.
    pub fn label(self) -> &'static str {
        match self {
            Slot::A => "MACULA_ROOT_A",
            Slot::B => "MACULA_ROOT_B",
        }
    }

    /// The standby slot when this one runs.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

impl FromStr for Slot {
    type Err = BootError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" | "a" => Ok(Slot::A),
            "B" | "b" => Ok(Slot::B),
            _ => Err(BootError::BadValue {
                key: "maculaos.slot",
                value: s.to_string(),
                expected: "A or B",
            }),
        }
    }
}

/// How the system was started (`maculaos.mode=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Installed on a disk with A/B slots (the default).
    Disk,
    /// Running from installation media, nothing written to disk.
    Live,
    /// Booted to run the installer.
    Install,
    /// Maintenance boot without the node's workloads.
    Recovery,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Disk => "disk",
            Mode::Live => "live",
            Mode::Install => "install",
            Mode::Recovery => "recovery",
        })
    }
}

impl FromStr for Mode {
    type Err = BootError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disk" => Ok(Mode::Disk),
            "live" => Ok(Mode::Live),
            "install" => Ok(Mode::Install),
            "recovery" => Ok(Mode::Recovery),
            _ => Err(BootError::BadValue {
                key: "maculaos.mode",
                value: s.to_string(),
                expected: "disk, live, install or recovery",
            }),
        }
    }
}

/// Firmware the machine booted through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "BIOS",
            Firmware::Uefi => "UEFI",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BootError {
    #[error("kernel command line: {key}={value} is not valid (expected {expected})")]
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// The kernel command line, split the way the kernel splits it: on spaces,
/// except inside double quotes, which are removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cmdline {
    params: Vec<(String, Option<String>)>,
}

impl Cmdline {
    pub fn parse(text: &str) -> Cmdline {
        let mut params = Vec::new();
        let mut word = String::new();
        let mut in_quotes = false;
        let mut any = false;
        for c in text.chars() {
            match c {
                '"' => {
                    in_quotes = !in_quotes;
                    any = true;
                }
                c if c.is_whitespace() && !in_quotes => {
                    if any {
                        params.push(split_param(&word));
                        word.clear();
                        any = false;
                    }
                }
                c => {
                    word.push(c);
                    any = true;
                }
            }
        }
        if any {
            params.push(split_param(&word));
        }
        Cmdline { params }
    }

    /// The value of the last `key=value` (the kernel's rule: the last one wins).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Whether `key` appears, with or without a value.
    pub fn has(&self, key: &str) -> bool {
        self.params.iter().any(|(k, _)| k == key)
    }

    /// All `maculaos.*` parameters, in order.
    pub fn maculaos_params(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.params
            .iter()
            .filter(|(k, _)| k.starts_with("maculaos."))
            .map(|(k, v)| (k.as_str(), v.as_deref()))
    }
}

fn split_param(word: &str) -> (String, Option<String>) {
    match word.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (word.to_string(), None),
    }
}

/// What `maculaos-init` takes from the kernel command line.
#[derive(Debug, Clone, PartialEq)]
pub struct BootParams {
    pub mode: Mode,
    pub slot: Slot,
    /// `maculaos.debug`: open a shell instead of rebooting on failure.
    pub debug: bool,
    /// `maculaos.rootwait=SECONDS`: how long to wait for the boot disk.
    pub root_wait_secs: u64,
    /// `maculaos.live.persistence` and `maculaos.live.persistence_device`
    /// (the config keys, given on the command line because init decides
    /// before any configuration file can be read): where live mode keeps
    /// `/var`.
    pub persistence: Persistence,
    /// `maculaos.factory_reset=keep-data|all`: the boot menu's factory reset
    /// entry, for a node nobody can log into. Carried out like a request
    /// left by `maculaos factory-reset` (disk mode only).
    pub factory_reset: Option<reset::ResetRequest>,
}

/// Where live mode keeps `/var`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// In memory: gone at reboot (the default).
    Off,
    /// On the partition (or disk) labelled [`media::LABEL_PERSIST`].
    Auto,
    /// On this device node, e.g. `/dev/sdb1`.
    Device(String),
}

/// A yes/no kernel parameter: present without a value means yes.
fn flag(c: &Cmdline, key: &'static str) -> Result<bool, BootError> {
    if !c.has(key) {
        return Ok(false);
    }
    match c.get(key).map(str::to_ascii_lowercase).as_deref() {
        None | Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(_) => Err(BootError::BadValue {
            key,
            value: c.get(key).unwrap_or_default().to_string(),
            expected: "true or false",
        }),
    }
}

impl Persistence {
    fn from_cmdline(c: &Cmdline) -> Result<Persistence, BootError> {
        const DEVICE: &str = "maculaos.live.persistence_device";
        if !flag(c, "maculaos.live.persistence")? {
            return Ok(Persistence::Off);
        }
        match c.get(DEVICE) {
            None | Some("auto") => Ok(Persistence::Auto),
            Some(d) if d.starts_with("/dev/") && d.len() > 5 => Ok(Persistence::Device(d.into())),
            Some(d) => Err(BootError::BadValue {
                key: DEVICE,
                value: d.to_string(),
                expected: "auto, or a device such as /dev/sdb1",
            }),
        }
    }
}

/// Kernel parameters that belong to the boot, not to the configuration
/// (the config loader skips them): what [`BootParams::from_cmdline`] reads
/// but `maculaos.live.*`, which are also config keys, plus those read by
/// other parts of the boot (`config_url`: maculaos-config-url.service;
/// `trial`: `maculaos mark-good`). A new parameter goes here too.
pub const BOOT_PARAMS: &[&str] = &[
    "maculaos.mode",
    "maculaos.slot",
    "maculaos.debug",
    "maculaos.rootwait",
    "maculaos.factory_reset",
    "maculaos.config_url",
    "maculaos.trial",
];

/// Default time to wait for the boot disk's partitions to appear. Generous
/// because slow USB sticks and emulated machines take many seconds.
pub const DEFAULT_ROOT_WAIT_SECS: u64 = 60;

impl BootParams {
    pub fn from_cmdline(c: &Cmdline) -> Result<BootParams, BootError> {
        let mode = c.get("maculaos.mode").map(str::parse).transpose()?;
        let slot = c.get("maculaos.slot").map(str::parse).transpose()?;
        let root_wait_secs = match c.get("maculaos.rootwait") {
            None => DEFAULT_ROOT_WAIT_SECS,
            Some(v) => v.parse().map_err(|_| BootError::BadValue {
                key: "maculaos.rootwait",
                value: v.to_string(),
                expected: "a number of seconds",
            })?,
        };
        Ok(BootParams {
            mode: mode.unwrap_or(Mode::Disk),
            slot: slot.unwrap_or(Slot::A),
            debug: c.has("maculaos.debug") && c.get("maculaos.debug") != Some("0"),
            root_wait_secs,
            persistence: Persistence::from_cmdline(c)?,
            factory_reset: factory_reset_param(c)?,
        })
    }
}

fn factory_reset_param(c: &Cmdline) -> Result<Option<reset::ResetRequest>, BootError> {
    const KEY: &str = "maculaos.factory_reset";
    let keep_data = match c.get(KEY) {
        None if !c.has(KEY) => return Ok(None),
        Some("keep-data") => true,
        Some("all") => false,
        other => {
            return Err(BootError::BadValue {
                key: KEY,
                value: other.unwrap_or_default().to_string(),
                expected: "keep-data or all",
            })
        }
    };
    Ok(Some(reset::ResetRequest {
        keep_data,
        ..reset::ResetRequest::default()
    }))
}

/// What init did, left in [`BOOT_INFO_PATH`] for `maculaos info` and friends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootInfo {
    pub mode: Mode,
    pub slot: Slot,
    pub firmware: Firmware,
    /// Device node of the root slot, e.g. `/dev/vda3`.
    pub root_device: String,
    /// Device node of the data partition, e.g. `/dev/vda5`.
    pub data_device: String,
    /// The data partition was blank and got formatted on this boot.
    pub data_formatted: bool,
    /// The data partition was grown to fill the disk on this boot.
    pub data_grown: bool,
    /// A factory reset (see [`reset`]) was carried out on this boot.
    #[serde(default)]
    pub factory_reset: bool,
    /// Milliseconds from kernel start to the hand-over to systemd.
    pub init_done_ms: u64,
}

impl BootInfo {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Result<BootInfo, serde_json::Error> {
        serde_json::from_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_splits_and_unquotes() {
        let c =
            Cmdline::parse("BOOT_IMAGE=/vmlinuz quiet maculaos.slot=B x=\"a b\" maculaos.debug\n");
        assert_eq!(c.get("maculaos.slot"), Some("B"));
        assert_eq!(c.get("x"), Some("a b"));
        assert!(c.has("quiet"));
        assert!(c.has("maculaos.debug"));
        assert_eq!(c.get("maculaos.debug"), None);
        assert_eq!(c.maculaos_params().count(), 2);
    }

    #[test]
    fn last_value_wins() {
        let c = Cmdline::parse("maculaos.slot=A maculaos.slot=B");
        assert_eq!(c.get("maculaos.slot"), Some("B"));
    }

    #[test]
    fn params_default_to_disk_slot_a() {
        let p = BootParams::from_cmdline(&Cmdline::parse("ro quiet")).unwrap();
        assert_eq!(p.mode, Mode::Disk);
        assert_eq!(p.slot, Slot::A);
        assert!(!p.debug);
        assert_eq!(p.root_wait_secs, DEFAULT_ROOT_WAIT_SECS);
    }

    #[test]
    fn factory_reset_param() {
        let p = |s: &str| BootParams::from_cmdline(&Cmdline::parse(s)).map(|p| p.factory_reset);
        assert_eq!(p("maculaos.mode=disk").unwrap(), None);
        assert!(
            p("maculaos.factory_reset=keep-data")
                .unwrap()
                .unwrap()
                .keep_data
        );
        assert!(!p("maculaos.factory_reset=all").unwrap().unwrap().keep_data);
        let e = p("maculaos.factory_reset").unwrap_err().to_string();
        assert!(e.contains("keep-data or all"), "{e}");
        assert!(p("maculaos.factory_reset=yes").is_err());
    }

    #[test]
    fn persistence_params() {
        let p = |s: &str| BootParams::from_cmdline(&Cmdline::parse(s)).map(|p| p.persistence);
        assert_eq!(p("maculaos.mode=live").unwrap(), Persistence::Off);
        assert_eq!(p("maculaos.live.persistence").unwrap(), Persistence::Auto);
        assert_eq!(
            p("maculaos.live.persistence=true").unwrap(),
            Persistence::Auto
        );
        assert_eq!(p("maculaos.live.persistence=0").unwrap(), Persistence::Off);
        assert_eq!(
            p("maculaos.live.persistence=yes maculaos.live.persistence_device=/dev/sdb2").unwrap(),
            Persistence::Device("/dev/sdb2".into())
        );
        // A device without persistence turned on changes nothing.
        assert_eq!(
            p("maculaos.live.persistence_device=/dev/sdb2").unwrap(),
            Persistence::Off
        );
        let e = p("maculaos.live.persistence=maybe")
            .unwrap_err()
            .to_string();
        assert!(e.contains("maculaos.live.persistence=maybe"), "{e}");
        let e = p("maculaos.live.persistence maculaos.live.persistence_device=sdb")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/sdb1"), "{e}");
    }

    #[test]
    fn params_are_read() {
        let p = BootParams::from_cmdline(&Cmdline::parse(
            "maculaos.mode=recovery maculaos.slot=b maculaos.debug maculaos.rootwait=5",
        ))
        .unwrap();
        assert_eq!(p.mode, Mode::Recovery);
        assert_eq!(p.slot, Slot::B);
        assert!(p.debug);
        assert_eq!(p.root_wait_secs, 5);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = BootParams::from_cmdline(&Cmdline::parse("maculaos.slot=C")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "kernel command line: maculaos.slot=C is not valid (expected A or B)"
        );
        let e = BootParams::from_cmdline(&Cmdline::parse("maculaos.mode=usb")).unwrap_err();
        assert!(e.to_string().contains("maculaos.mode=usb"));
    }

    #[test]
    fn slots() {
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.label(), "MACULA_ROOT_B");
    }

    #[test]
    fn boot_info_round_trips() {
        let b = BootInfo {
            mode: Mode::Disk,
            slot: Slot::A,
            firmware: Firmware::Uefi,
            root_device: "/dev/vda3".into(),
            data_device: "/dev/vda5".into(),
            data_formatted: true,
            data_grown: false,
            factory_reset: false,
            init_done_ms: 1234,
        };
        assert_eq!(BootInfo::from_json(&b.to_json()).unwrap(), b);
        assert!(b.to_json().contains("\"mode\": \"disk\""));
    }
}
