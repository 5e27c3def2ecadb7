//! Facts about the running node, gathered from /proc, /sys, os-release and
//! the record `maculaos-init` left in /run/maculaos/boot.json. Every path is
//! read relative to a root so tests can use a fake one. [`collect`] also
//! asks avahi-daemon which name it announces on the LAN.

use maculaos_boot::{BootInfo, Cmdline, Firmware, BOOT_INFO_PATH};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

/// Everything `maculaos info` shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Info {
    pub hostname: String,
    /// The host name avahi-daemon announces (`<mdns_name>.local`): not the
    /// hostname after a name conflict on the LAN. `None` when unknown
    /// (avahi-daemon not running, or not asked: [`Collector::collect`]).
    pub mdns_name: Option<String>,
    pub version: String,
    pub slot: Option<String>,
    /// disk, live, install or recovery
    pub mode: Option<String>,
    pub firmware: String,
    pub kernel: String,
    pub uptime_seconds: u64,
    pub root: RootState,
    pub data: Option<DataState>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RootState {
    pub device: String,
    pub fstype: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DataState {
    pub device: String,
    pub mountpoint: String,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
}

/// A mount from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub mountpoint: String,
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Parse /proc/self/mountinfo (fields per proc(5)); later mounts on the same
/// point hide earlier ones, so callers take the last match.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let lf: Vec<&str> = left.split_whitespace().collect();
            let rf: Vec<&str> = right.split_whitespace().collect();
            Some(Mount {
                mountpoint: unescape(lf.get(4)?),
                options: lf.get(5)?.split(',').map(str::to_string).collect(),
                fstype: rf.first()?.to_string(),
                source: unescape(rf.get(1)?),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

pub fn mount_at<'a>(mounts: &'a [Mount], point: &str) -> Option<&'a Mount> {
    mounts.iter().rev().find(|m| m.mountpoint == point)
}

/// A value of an os-release file.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Gathers [`Info`] from a root directory (`/` on a node).
pub struct Collector {
    root: PathBuf,
}

impl Collector {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Collector { root: root.into() }
    }

    fn read(&self, p: &str) -> Option<String> {
        fs::read_to_string(self.root.join(p.trim_start_matches('/'))).ok()
    }

    /// What the files under the root say; `mdns_name` is left `None`
    /// (avahi-daemon is asked by [`collect`], for the running system).
    pub fn collect(&self) -> Info {
        let boot: Option<BootInfo> = self
            .read(BOOT_INFO_PATH)
            .and_then(|t| BootInfo::from_json(&t).ok());
        let cmdline = Cmdline::parse(&self.read("/proc/cmdline").unwrap_or_default());
        let os = self
            .read("/etc/os-release")
            .or_else(|| self.read("/usr/lib/os-release"))
            .unwrap_or_default();
        let mounts = parse_mountinfo(&self.read("/proc/self/mountinfo").unwrap_or_default());
        let root_mount = mount_at(&mounts, "/");
        let firmware = match &boot {
            Some(b) => b.firmware,
            None if self.root.join("sys/firmware/efi").exists() => Firmware::Uefi,
            None => Firmware::Bios,
        };
        let data = mount_at(&mounts, "/var").map(|m| {
            let (size, used, avail) = self.space("/var");
            DataState {
                device: boot
                    .as_ref()
                    .map(|b| b.data_device.clone())
                    .unwrap_or_else(|| m.source.clone()),
                mountpoint: "/var".into(),
                size_bytes: size,
                used_bytes: used,
                available_bytes: avail,
            }
        });
        Info {
            hostname: self
                .read("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_string(),
            mdns_name: None,
            version: os_release_value(&os, "VERSION_ID").unwrap_or_else(|| "unknown".into()),
            // A live system runs from its medium, not from a slot.
            slot: boot
                .as_ref()
                .filter(|b| {
                    !matches!(
                        b.mode,
                        maculaos_boot::Mode::Live | maculaos_boot::Mode::Install
                    )
                })
                .map(|b| b.slot.to_string())
                .or_else(|| cmdline.get("maculaos.slot").map(str::to_string)),
            mode: boot
                .as_ref()
                .map(|b| b.mode.to_string())
                .or_else(|| cmdline.get("maculaos.mode").map(str::to_string)),
            firmware: firmware.to_string(),
            kernel: self
                .read("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            uptime_seconds: self
                .read("/proc/uptime")
                .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(0.0) as u64,
            root: RootState {
                device: boot
                    .as_ref()
                    .map(|b| b.root_device.clone())
                    .or_else(|| root_mount.map(|m| m.source.clone()))
                    .unwrap_or_default(),
                fstype: root_mount.map(|m| m.fstype.clone()).unwrap_or_default(),
                read_only: root_mount.is_some_and(|m| m.options.iter().any(|o| o == "ro")),
            },
            data,
        }
    }

    fn space(&self, p: &str) -> (u64, u64, u64) {
        match nix::sys::statvfs::statvfs(&self.root.join(p.trim_start_matches('/'))) {
            Ok(s) => {
                let f = s.fragment_size();
                let size = s.blocks() * f;
                let free = s.blocks_free() * f;
                (size, size - free.min(size), s.blocks_available() * f)
            }
            Err(_) => (0, 0, 0),
        }
    }
}

pub fn human_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

pub fn human_uptime(secs: u64) -> String {
    let (d, h, m) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60);
    match (d, h) {
        (0, 0) => format!("{m} min, {} s", secs % 60),
        (0, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h {m} min"),
    }
}

impl Info {
    /// The `mDNS` row: the announced name, and why it is not the hostname
    /// when it is not.
    pub fn mdns_row(&self) -> String {
        use maculaos_discover::{compare, host_label, Announced};
        let Some(name) = &self.mdns_name else {
            return "-".into();
        };
        let host = host_label(&self.hostname);
        match compare(&self.hostname, name) {
            Announced::AsHostname => format!("{name}.local"),
            Announced::Renamed => {
                format!("{name}.local (the hostname {host} is taken on the LAN)")
            }
            Announced::Other => format!("{name}.local (not the hostname {host})"),
        }
    }

    /// The human table.
    pub fn render(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![
            ("Hostname", self.hostname.clone()),
            ("mDNS", self.mdns_row()),
            ("Version", format!("MaculaOS {}", self.version)),
            ("Slot", self.slot.clone().unwrap_or_else(|| "-".into())),
            (
                "Boot mode",
                format!(
                    "{} ({})",
                    self.mode.clone().unwrap_or_else(|| "-".into()),
                    self.firmware
                ),
            ),
            ("Kernel", self.kernel.clone()),
            ("Uptime", human_uptime(self.uptime_seconds)),
            (
                "Root",
                format!(
                    "{} {} {}",
                    self.root.device,
                    self.root.fstype,
                    if self.root.read_only {
                        "read-only"
                    } else {
                        "WRITABLE"
                    }
                ),
            ),
        ];
        match &self.data {
            Some(d) => rows.push((
                "Data",
                format!(
                    "{} on {}: {} used of {} ({}%), {} free",
                    d.device,
                    d.mountpoint,
                    human_size(d.used_bytes),
                    human_size(d.size_bytes),
                    (d.used_bytes * 100).checked_div(d.size_bytes).unwrap_or(0),
                    human_size(d.available_bytes)
                ),
            )),
            None => rows.push(("Data", "not mounted".into())),
        }
        rows.iter().map(|(k, v)| format!("{k:<10} {v}\n")).collect()
    }
}

/// Everything about the running system, with the name avahi-daemon
/// announces.
pub fn collect() -> Info {
    let mut info = Collector::new(Path::new("/")).collect();
    info.mdns_name = maculaos_discover::announced_host_name().ok();
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:3 / / ro,relatime shared:1 - squashfs /dev/vda3 ro\n\
30 22 254:5 / /var rw,relatime shared:9 - ext4 /dev/vda5 rw\n\
31 22 0:40 / /etc rw,relatime shared:10 - overlay overlay rw,lowerdir=/etc\n\
32 22 0:41 / /mnt/with\\040space rw - tmpfs tmpfs rw\n";

    #[test]
    fn mountinfo_is_parsed() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 4);
        let root = mount_at(&m, "/").unwrap();
        assert_eq!(root.fstype, "squashfs");
        assert!(root.options.contains(&"ro".to_string()));
        assert_eq!(mount_at(&m, "/var").unwrap().source, "/dev/vda5");
        assert_eq!(m[3].mountpoint, "/mnt/with space");
    }

    #[test]
    fn collects_from_a_fake_root() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let f = d.path().join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, s).unwrap();
        };
        w("proc/self/mountinfo", MOUNTINFO);
        w(
            "proc/cmdline",
            "maculaos.mode=disk maculaos.slot=A console=ttyS0",
        );
        w("proc/uptime", "125.3 200.1\n");
        w("proc/sys/kernel/osrelease", "6.1.0-50-amd64\n");
        w("proc/sys/kernel/hostname", "macula-ab12\n");
        w(
            "etc/os-release",
            "NAME=\"MaculaOS\"\nVERSION_ID=\"1.2.3\"\n",
        );
        fs::create_dir_all(d.path().join("var")).unwrap();
        let info = Collector::new(d.path()).collect();
        assert_eq!(info.version, "1.2.3");
        assert_eq!(info.slot.as_deref(), Some("A"));
        assert_eq!(info.mode.as_deref(), Some("disk"));
        assert_eq!(info.firmware, "BIOS");
        assert_eq!(info.uptime_seconds, 125);
        assert!(info.root.read_only);
        assert_eq!(info.root.device, "/dev/vda3");
        let data = info.data.clone().unwrap();
        assert_eq!(data.device, "/dev/vda5");
        assert!(data.size_bytes > 0);
        let text = info.render();
        assert!(text.contains("read-only"), "{text}");
        assert!(text.contains("Slot       A"), "{text}");
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["root"]["read_only"], true);
        // Not asked under a fake root.
        assert_eq!(json["mdns_name"], serde_json::Value::Null);
        assert!(text.contains("\nmDNS       -\n"), "{text}");
    }

    #[test]
    fn the_announced_name_is_shown_and_why_it_differs() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("proc/sys/kernel")).unwrap();
        fs::write(d.path().join("proc/sys/kernel/hostname"), "macula-0b02\n").unwrap();
        let mut info = Collector::new(d.path()).collect();
        let row = |info: &Info| {
            info.render()
                .lines()
                .find(|l| l.starts_with("mDNS"))
                .map(str::to_string)
                .unwrap()
        };
        info.mdns_name = Some("macula-0b02".into());
        assert_eq!(row(&info), "mDNS       macula-0b02.local");
        info.mdns_name = Some("macula-0b02-2".into());
        assert_eq!(
            row(&info),
            "mDNS       macula-0b02-2.local (the hostname macula-0b02 is taken on the LAN)"
        );
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["mdns_name"], "macula-0b02-2");
        assert_eq!(json["hostname"], "macula-0b02");
        info.mdns_name = Some("old-name".into());
        assert_eq!(
            row(&info),
            "mDNS       old-name.local (not the hostname macula-0b02)"
        );
    }

    #[test]
    fn boot_record_wins_over_cmdline() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("run/maculaos")).unwrap();
        fs::create_dir_all(d.path().join("proc")).unwrap();
        fs::write(d.path().join("proc/cmdline"), "maculaos.slot=A").unwrap();
        let b = BootInfo {
            mode: maculaos_boot::Mode::Disk,
            slot: maculaos_boot::Slot::B,
            firmware: Firmware::Uefi,
            root_device: "/dev/sda4".into(),
            data_device: "/dev/sda5".into(),
            data_formatted: false,
            data_grown: false,
            factory_reset: false,
            init_done_ms: 10,
        };
        fs::write(d.path().join("run/maculaos/boot.json"), b.to_json()).unwrap();
        let info = Collector::new(d.path()).collect();
        assert_eq!(info.slot.as_deref(), Some("B"));
        assert_eq!(info.firmware, "UEFI");
    }

    #[test]
    fn uptime_reads_well() {
        assert_eq!(human_uptime(65), "1 min, 5 s");
        assert_eq!(human_uptime(2 * 3600 + 15 * 60), "2 h 15 min");
    }
}
