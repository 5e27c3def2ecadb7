//! `maculaos diag storage`: root slot and data partition, every other
//! mounted block filesystem, the running slot, SMART.

use crate::tools::{Outcome, Tools};
use crate::Line;
use maculaos_info::{human_size, mount_at, parse_mountinfo, Collector, Info};
use serde::Deserialize;
use std::fs;
use std::path::Path;

/// Use at or above this is a warning…
const WARN_PERCENT: u64 = 80;
/// …and at or above this a failure.
const FAIL_PERCENT: u64 = 90;

/// Use in percent as `df` shows it: used / (used + available to users),
/// rounded up (the blocks reserved for root do not count as free).
pub fn usage_percent(used: u64, available: u64) -> u64 {
    let total = used.saturating_add(available);
    if total == 0 {
        return 0;
    }
    (used.saturating_mul(100)).div_ceil(total)
}

/// `45% used, healthy (…)`: ✓ below 80%, ✓ with a warning from 80%, ✗
/// from 90%. (A line is passed, failed or information; a warning is a
/// pass whose detail says so.)
fn usage_line(what: &str, pct: u64, detail: &str) -> Line {
    if pct >= FAIL_PERCENT {
        Line::fail(what, format!("{pct}% used, nearly full ({detail})"))
    } else if pct >= WARN_PERCENT {
        Line::pass(what, format!("{pct}% used, warning: filling up ({detail})"))
    } else {
        Line::pass(what, format!("{pct}% used, healthy ({detail})"))
    }
}

/// (size, used, available) in bytes of the filesystem holding `path`.
fn space(path: &Path) -> Option<(u64, u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let f = s.fragment_size();
    let size = s.blocks() * f;
    let free = s.blocks_free() * f;
    Some((size, size - free.min(size), s.blocks_available() * f))
}

/// The disk a partition is on (`sda3` → `sda`, `nvme0n1p2` → `nvme0n1`,
/// `mmcblk0p1` → `mmcblk0`); a whole disk or an unknown name as it is.
pub fn disk_of_partition(name: &str) -> String {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return name.to_string();
    }
    let stem = &name[..name.len() - digits];
    // nvme0n1p2, mmcblk0p1, loop0p1: a `p` after a digit.
    if let Some(before) = stem.strip_suffix('p') {
        if before.ends_with(|c: char| c.is_ascii_digit()) {
            return before.to_string();
        }
    }
    if ["sd", "vd", "hd", "xvd"]
        .iter()
        .any(|p| stem.starts_with(p))
    {
        return stem.to_string();
    }
    name.to_string()
}

/// The disk under a device node, from sysfs when it knows (a partition's
/// directory sits in its disk's), else from the name.
fn disk_of(root: &Path, device: &str) -> Option<String> {
    let dev = fs::canonicalize(root.join(device.trim_start_matches('/')))
        .ok()
        .filter(|p| p.starts_with(root))
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| {
            Some(
                Path::new(device)
                    .file_name()?
                    .to_string_lossy()
                    .into_owned(),
            )
        })?;
    let sys = root.join("sys/class/block").join(&dev);
    if sys.join("partition").exists() {
        if let Some(parent) = fs::canonicalize(&sys)
            .ok()
            .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()))
        {
            return Some(parent);
        }
    } else if sys.exists() {
        return Some(dev);
    }
    Some(disk_of_partition(&dev))
}

/// What `smartctl -H -j` said about a disk's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmartHealth {
    Passed,
    Failing,
    /// No verdict: smartctl's own message (no SMART support, permission…).
    Unknown(String),
}

#[derive(Deserialize)]
struct SmartJson {
    smartctl: Option<SmartctlPart>,
    smart_status: Option<SmartStatus>,
}
#[derive(Deserialize)]
struct SmartctlPart {
    #[serde(default)]
    messages: Vec<SmartMessage>,
}
#[derive(Deserialize)]
struct SmartMessage {
    string: String,
}
#[derive(Deserialize)]
struct SmartStatus {
    passed: bool,
}

/// Parse `smartctl -H -j DISK` (whatever its exit status: it is a bit mask
/// and the JSON says more).
pub fn parse_smartctl(json: &str) -> SmartHealth {
    match serde_json::from_str::<SmartJson>(json) {
        Ok(SmartJson {
            smart_status: Some(s),
            ..
        }) => {
            if s.passed {
                SmartHealth::Passed
            } else {
                SmartHealth::Failing
            }
        }
        Ok(j) => SmartHealth::Unknown(
            j.smartctl
                .and_then(|s| s.messages.into_iter().next())
                .map(|m| m.string)
                .unwrap_or_else(|| "no SMART status reported".into()),
        ),
        Err(_) if json.trim().is_empty() => SmartHealth::Unknown("smartctl printed nothing".into()),
        Err(e) => SmartHealth::Unknown(format!("cannot read smartctl's output: {e}")),
    }
}

fn smart_line(tools: &Tools, disk: &str) -> Line {
    let what = format!("SMART ({disk})");
    let kind = if disk.starts_with("vd") {
        Some("not available (virtio disk)")
    } else if disk.starts_with("xvd") {
        Some("not available (Xen virtual disk)")
    } else if ["loop", "sr", "ram", "zram", "nbd"]
        .iter()
        .any(|p| disk.starts_with(p))
    {
        Some("not applicable (not a physical disk)")
    } else if disk.starts_with("dm-") || disk.starts_with("md") {
        Some("not applicable (virtual device: check the disks under it)")
    } else {
        None
    };
    if let Some(k) = kind {
        return Line::info(what, k);
    }
    if !tools.have("smartctl") {
        return Line::info(what, "not checked: smartctl is not installed");
    }
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return Line::info(what, format!("not checked: no scratch directory: {e}")),
    };
    let out = scratch.path().join("smartctl.json");
    let dev = format!("/dev/{disk}");
    let outcome = tools.run_to_file("smartctl", &["-H", "-j", &dev], &out);
    match outcome {
        Outcome::Missing => Line::info(what, "not checked: smartctl is not installed"),
        Outcome::Error(e) => Line::info(what, format!("not checked: {e}")),
        Outcome::Ok | Outcome::Failed { .. } => {
            match parse_smartctl(&fs::read_to_string(&out).unwrap_or_default()) {
                SmartHealth::Passed => Line::pass(what, "PASSED"),
                SmartHealth::Failing => Line::fail(
                    what,
                    "FAILING: the disk predicts its own failure; back up the data and replace it",
                ),
                SmartHealth::Unknown(m) => Line::info(what, format!("not available: {m}")),
            }
        }
    }
}

fn live(info: &Info) -> bool {
    matches!(info.mode.as_deref(), Some("live") | Some("install"))
}

/// `maculaos diag storage`.
pub fn storage(root: &Path) -> Vec<Line> {
    storage_with(root, &Tools::system())
}

pub(crate) fn storage_with(root: &Path, tools: &Tools) -> Vec<Line> {
    let info = Collector::new(root).collect();
    let mounts =
        parse_mountinfo(&fs::read_to_string(root.join("proc/self/mountinfo")).unwrap_or_default());
    let mut lines = Vec::new();

    // The root: a read-only squashfs in its slot.
    let r = &info.root;
    let slot = info
        .slot
        .as_deref()
        .map(|s| format!(", slot {s}"))
        .unwrap_or_default();
    lines.push(if r.device.is_empty() {
        Line::info("Root", "not found in /proc/self/mountinfo")
    } else if r.read_only {
        Line::pass(
            "Root",
            format!("{} {}, read-only{slot}", r.device, r.fstype),
        )
    } else if live(&info) {
        Line::info(
            "Root",
            format!("{} {}, writable (live system){slot}", r.device, r.fstype),
        )
    } else {
        Line::fail(
            "Root",
            format!(
                "{} {} is WRITABLE{slot} (should be a read-only squashfs)",
                r.device, r.fstype
            ),
        )
    });
    // How much of its slot the squashfs image fills (what the next update has).
    if r.fstype == "squashfs" {
        let part = Path::new(&r.device)
            .file_name()
            .and_then(|n| {
                fs::read_to_string(root.join("sys/class/block").join(n).join("size")).ok()
            })
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|sectors| sectors * 512);
        if let (Some(part), Some((image, _, _))) = (part, space(root)) {
            if part > 0 {
                lines.push(usage_line(
                    "Root partition",
                    (image * 100).div_ceil(part),
                    &format!("{} image in a {} slot", human_size(image), human_size(part)),
                ));
            }
        }
    }

    // The data partition on /var.
    let var = mount_at(&mounts, "/var");
    lines.push(match (&info.data, var) {
        (Some(d), Some(m)) if m.options.iter().any(|o| o == "ro") => Line::fail(
            "Data partition",
            format!(
                "{} on /var is mounted READ-ONLY (filesystem errors? see dmesg)",
                d.device
            ),
        ),
        (Some(d), _) => usage_line(
            "Data partition",
            usage_percent(d.used_bytes, d.available_bytes),
            &format!(
                "{} of {}, {} free; {} on /var",
                human_size(d.used_bytes),
                human_size(d.size_bytes),
                human_size(d.available_bytes),
                d.device
            ),
        ),
        (None, _) if live(&info) => Line::info("Data partition", "none (live system)"),
        (None, _) => Line::fail("Data partition", "nothing is mounted on /var"),
    });

    // Every other block filesystem, once per device.
    let skip: Vec<&str> = ["/", "/var"]
        .iter()
        .filter_map(|p| mount_at(&mounts, p).map(|m| m.source.as_str()))
        .collect();
    let mut seen: Vec<&str> = Vec::new();
    for m in &mounts {
        if !m.source.starts_with("/dev/")
            || m.fstype == "squashfs"
            || skip.contains(&m.source.as_str())
            || seen.contains(&m.source.as_str())
        {
            continue;
        }
        seen.push(&m.source);
        let what = format!("Filesystem {}", m.mountpoint);
        let ro = if m.options.iter().any(|o| o == "ro") {
            ", read-only"
        } else {
            ""
        };
        match space(&root.join(m.mountpoint.trim_start_matches('/'))) {
            Some((size, used, avail)) => lines.push(usage_line(
                &what,
                usage_percent(used, avail),
                &format!(
                    "{} of {}; {} {}{ro}",
                    human_size(used),
                    human_size(size),
                    m.source,
                    m.fstype
                ),
            )),
            None => lines.push(Line::info(
                what,
                format!("{} {}{ro}, size unknown", m.source, m.fstype),
            )),
        }
    }

    // The running slot, as maculaos-init recorded it.
    let mode = info.mode.as_deref().unwrap_or("unknown");
    lines.push(match &info.slot {
        Some(s) => Line::info(
            "Running slot",
            format!("{s} (boot mode {mode}, {})", info.firmware),
        ),
        None => Line::info(
            "Running slot",
            format!("none (boot mode {mode}, {})", info.firmware),
        ),
    });

    // SMART of the disks under root and data.
    let mut disks: Vec<String> = Vec::new();
    let devices =
        std::iter::once(r.device.as_str()).chain(info.data.as_ref().map(|d| d.device.as_str()));
    for dev in devices.filter(|d| d.starts_with("/dev/")) {
        if let Some(d) = disk_of(root, dev) {
            if !disks.contains(&d) {
                disks.push(d);
            }
        }
    }
    if disks.is_empty() {
        lines.push(Line::info(
            "SMART",
            "not checked: no disk found under root or data",
        ));
    }
    for d in &disks {
        lines.push(smart_line(tools, d));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_what_df_shows() {
        assert_eq!(usage_percent(0, 0), 0);
        assert_eq!(usage_percent(45, 55), 45);
        assert_eq!(usage_percent(1, 199), 1, "rounded up");
        assert_eq!(usage_percent(100, 0), 100);
    }

    #[test]
    fn thresholds() {
        assert_eq!(
            usage_line("Data partition", 23, "x"),
            Line::pass("Data partition", "23% used, healthy (x)")
        );
        let warn = usage_line("Data partition", 80, "x");
        assert_eq!(warn.ok, Some(true));
        assert!(warn.detail.contains("warning"), "{warn}");
        assert_eq!(usage_line("Data partition", 89, "x").ok, Some(true));
        assert_eq!(usage_line("Data partition", 90, "x").ok, Some(false));
    }

    #[test]
    fn partitions_map_to_disks() {
        assert_eq!(disk_of_partition("sda3"), "sda");
        assert_eq!(disk_of_partition("vda5"), "vda");
        assert_eq!(disk_of_partition("xvdb1"), "xvdb");
        assert_eq!(disk_of_partition("nvme0n1p2"), "nvme0n1");
        assert_eq!(disk_of_partition("nvme0n1"), "nvme0n1");
        assert_eq!(disk_of_partition("mmcblk0p1"), "mmcblk0");
        assert_eq!(disk_of_partition("sda"), "sda");
        assert_eq!(disk_of_partition("sr0"), "sr0");
        assert_eq!(disk_of_partition("md127"), "md127");
    }

    #[test]
    fn disk_from_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let part = d
            .path()
            .join("sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/nvme0n1p3");
        fs::create_dir_all(&part).unwrap();
        fs::write(part.join("partition"), "3\n").unwrap();
        fs::create_dir_all(d.path().join("sys/class/block")).unwrap();
        std::os::unix::fs::symlink(&part, d.path().join("sys/class/block/nvme0n1p3")).unwrap();
        assert_eq!(
            disk_of(d.path(), "/dev/nvme0n1p3").as_deref(),
            Some("nvme0n1")
        );
        assert_eq!(disk_of(d.path(), "/dev/sdb2").as_deref(), Some("sdb"));
    }

    #[test]
    fn smartctl_output_is_read() {
        let passed = r#"{"json_format_version":[1,0],"smartctl":{"version":[7,3],"exit_status":0},"device":{"name":"/dev/sda","type":"sat"},"smart_status":{"passed":true}}"#;
        assert_eq!(parse_smartctl(passed), SmartHealth::Passed);
        let failing = r#"{"smartctl":{"exit_status":8},"smart_status":{"passed":false}}"#;
        assert_eq!(parse_smartctl(failing), SmartHealth::Failing);
        let virtio = r#"{"smartctl":{"exit_status":1,"messages":[{"string":"/dev/vda: Unable to detect device type","severity":"error"}]}}"#;
        assert_eq!(
            parse_smartctl(virtio),
            SmartHealth::Unknown("/dev/vda: Unable to detect device type".into())
        );
        assert!(matches!(parse_smartctl(""), SmartHealth::Unknown(_)));
        assert!(matches!(
            parse_smartctl("Smartctl open device failed"),
            SmartHealth::Unknown(_)
        ));
    }

    fn fake_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let f = d.path().join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, s).unwrap();
        };
        w(
            "proc/self/mountinfo",
            "22 1 254:3 / / ro,relatime shared:1 - squashfs /dev/vda3 ro\n\
             30 22 254:5 / /var rw,relatime shared:9 - ext4 /dev/vda5 rw\n\
             31 30 254:5 /lib/rancher /var/lib/rancher rw,relatime - ext4 /dev/vda5 rw\n\
             32 22 254:1 / /boot/efi ro,relatime - vfat /dev/vda1 ro\n\
             33 22 0:41 / /tmp rw - tmpfs tmpfs rw\n",
        );
        w("proc/cmdline", "maculaos.mode=disk maculaos.slot=A");
        w("sys/class/block/vda3/size", "2097152\n");
        fs::create_dir_all(d.path().join("var")).unwrap();
        fs::create_dir_all(d.path().join("boot/efi")).unwrap();
        d
    }

    #[test]
    fn storage_of_a_fake_root() {
        let d = fake_root();
        let lines = storage_with(d.path(), &Tools::system());
        let text = crate::render(&lines);
        assert_eq!(
            lines[0],
            Line::pass("Root", "/dev/vda3 squashfs, read-only, slot A"),
            "{text}"
        );
        assert!(text.contains(" Root partition: "), "{text}");
        assert!(text.contains("in a 1.0 GiB slot"), "{text}");
        assert!(
            text.contains(" Data partition: ") && text.contains("/dev/vda5 on /var"),
            "{text}"
        );
        assert!(
            text.contains(" Filesystem /boot/efi: ") && text.contains("/dev/vda1 vfat, read-only"),
            "{text}"
        );
        assert!(
            !text.contains("/var/lib/rancher"),
            "a bind mount of the data partition: {text}"
        );
        assert!(!text.contains("/tmp"), "not a block device: {text}");
        assert!(
            text.contains("- Running slot: A (boot mode disk, BIOS)"),
            "{text}"
        );
        assert!(
            text.contains("- SMART (vda): not available (virtio disk)"),
            "{text}"
        );
    }

    #[test]
    fn read_only_data_and_missing_smartctl() {
        let d = fake_root();
        let mi = d.path().join("proc/self/mountinfo");
        let t = fs::read_to_string(&mi)
            .unwrap()
            .replace("/dev/vda", "/dev/sda")
            .replace("/var rw,relatime shared:9", "/var ro,relatime shared:9");
        fs::write(&mi, t).unwrap();
        let lines = storage_with(d.path(), &Tools::with_path(d.path().join("no-bin")));
        let text = crate::render(&lines);
        assert!(
            text.contains("✗ Data partition: /dev/sda5 on /var is mounted READ-ONLY"),
            "{text}"
        );
        assert!(
            text.contains("- SMART (sda): not checked: smartctl is not installed"),
            "{text}"
        );
        assert!(crate::any_failed(&lines));
    }

    #[test]
    fn smartctl_is_run_when_present() {
        let d = fake_root();
        let mi = d.path().join("proc/self/mountinfo");
        let t = fs::read_to_string(&mi)
            .unwrap()
            .replace("/dev/vda", "/dev/sda");
        fs::write(&mi, t).unwrap();
        let bin = d.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        crate::bundle::tests::fake_tool(
            &bin,
            "smartctl",
            "printf '{\"smart_status\":{\"passed\":false}}'; exit 8",
        );
        let lines = storage_with(d.path(), &Tools::with_path(&bin));
        assert!(
            lines.contains(&Line::fail(
                "SMART (sda)",
                "FAILING: the disk predicts its own failure; back up the data and replace it"
            )),
            "{}",
            crate::render(&lines)
        );
    }
}
