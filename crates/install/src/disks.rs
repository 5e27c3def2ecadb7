//! The disks of the machine, as `lsblk` (util-linux 2.38) reports them:
//! what each one is, how big, and what is on it now.

use crate::error::InstallError;
use maculaos_runner::Cmd;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// The `lsblk` columns [`parse_lsblk`] reads.
pub const LSBLK_COLUMNS: &str =
    "NAME,PATH,TYPE,SIZE,MODEL,RO,RM,TRAN,PTTYPE,FSTYPE,LABEL,PARTLABEL,MOUNTPOINTS";

/// What kind of block device (lsblk's TYPE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DevKind {
    Disk,
    /// A partition (of a disk, or of a loop device).
    Part,
    /// A CD/DVD drive.
    Rom,
    Loop,
    /// lvm, crypt, raid1, md, mpath…
    Other(String),
}

impl DevKind {
    fn from_lsblk(t: &str) -> DevKind {
        match t {
            "disk" => DevKind::Disk,
            "part" => DevKind::Part,
            "rom" => DevKind::Rom,
            "loop" => DevKind::Loop,
            other => DevKind::Other(other.to_string()),
        }
    }
}

/// One partition of a [`Disk`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// Kernel name, e.g. `vda3`.
    pub name: String,
    /// Device node, e.g. `/dev/vda3`.
    pub path: String,
    pub size: u64,
    pub fstype: Option<String>,
    /// Filesystem label.
    pub label: Option<String>,
    /// GPT partition name.
    pub partlabel: Option<String>,
    /// Where it (or anything stacked on it, such as an LVM volume) is mounted;
    /// `[SWAP]` for active swap.
    pub mountpoints: Vec<String>,
    /// Devices stacked on it (`dm-0 (lvm)`, `md0 (raid1)`).
    pub holders: Vec<String>,
}

impl Partition {
    /// `MACULA_ESP vfat 128 MiB`: its name, filesystem and size.
    pub fn describe(&self) -> String {
        let name = self
            .partlabel
            .as_deref()
            .or(self.label.as_deref())
            .unwrap_or(&self.name);
        match &self.fstype {
            Some(fs) => format!("{name} {fs} {}", human_size(self.size)),
            None => format!("{name} {}", human_size(self.size)),
        }
    }
}

/// A whole block device (a disk, a CD drive, a loop device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disk {
    /// Kernel name, e.g. `vda`, `nvme0n1`.
    pub name: String,
    /// Device node, e.g. `/dev/vda`.
    pub path: String,
    pub kind: DevKind,
    /// Bytes.
    pub size: u64,
    pub model: Option<String>,
    pub removable: bool,
    pub read_only: bool,
    /// `sata`, `nvme`, `usb`… (none for virtio).
    pub transport: Option<String>,
    /// Partition table: `gpt`, `dos`.
    pub table: Option<String>,
    /// A filesystem (or other signature) on the whole device, e.g. `iso9660`.
    pub fstype: Option<String>,
    pub label: Option<String>,
    pub mountpoints: Vec<String>,
    pub partitions: Vec<Partition>,
    /// Devices stacked directly on the whole disk (LVM, RAID, crypt).
    pub holders: Vec<String>,
    /// Logical sector size in bytes (512 unless sysfs says otherwise).
    pub sector_size: u64,
}

impl Disk {
    /// Worth offering as an installation target: a disk with a size, not a
    /// RAM-backed one (zram swap, ram disks) or a floppy drive.
    pub fn is_candidate(&self) -> bool {
        self.kind == DevKind::Disk
            && self.size > 0
            && !["zram", "ram", "fd"]
                .iter()
                .any(|p| self.name.starts_with(p))
    }

    /// Everything mounted from it: the whole disk, its partitions and what
    /// is stacked on them.
    pub fn mounted(&self) -> Vec<String> {
        let mut out: Vec<String> = self.mountpoints.clone();
        for p in &self.partitions {
            out.extend(p.mountpoints.iter().cloned());
        }
        out.dedup();
        out
    }

    /// Devices stacked on the disk or its partitions (LVM, RAID, crypt).
    pub fn all_holders(&self) -> Vec<String> {
        let mut out = self.holders.clone();
        for p in &self.partitions {
            out.extend(p.holders.iter().cloned());
        }
        out
    }

    /// Nothing on it that lsblk can see: no partition table, no filesystem
    /// signature, no partitions.
    pub fn is_blank(&self) -> bool {
        self.table.is_none()
            && self.fstype.is_none()
            && self.partitions.is_empty()
            && self.holders.is_empty()
    }

    /// What is on it, without the mounts: `blank`, `GPT, 2 partitions: …`,
    /// `iso9660 filesystem "MACULA_LIVE"`.
    pub fn contents(&self) -> String {
        if self.kind == DevKind::Rom && self.size == 0 {
            return "no medium".to_string();
        }
        let table = self.table.as_deref().map(|t| match t {
            "gpt" => "GPT".to_string(),
            "dos" => "MBR".to_string(),
            other => other.to_string(),
        });
        if !self.partitions.is_empty() {
            let n = self.partitions.len();
            let list: Vec<String> = self.partitions.iter().map(Partition::describe).collect();
            let what = format!(
                "{n} partition{}: {}",
                if n == 1 { "" } else { "s" },
                list.join(", ")
            );
            return match table {
                Some(t) => format!("{t}, {what}"),
                None => what,
            };
        }
        if let Some(fs) = &self.fstype {
            return match &self.label {
                Some(l) => format!("{fs} filesystem \"{l}\""),
                None => format!("{fs} filesystem"),
            };
        }
        if let Some(t) = table {
            return format!("{t}, no partitions");
        }
        if !self.holders.is_empty() {
            return format!("used by {}", self.holders.join(", "));
        }
        "blank".to_string()
    }

    /// One line of what is on it now, mounts included:
    /// `GPT, 5 partitions: …; holds mounted filesystems: /var`.
    pub fn describe(&self) -> String {
        let mut s = self.contents();
        let mounted = self.mounted();
        if !mounted.is_empty() {
            s.push_str(&format!(
                "; holds mounted filesystems: {}",
                mounted.join(", ")
            ));
        }
        let holders = self.all_holders();
        if !holders.is_empty() && !self.partitions.is_empty() {
            s.push_str(&format!("; in use by {}", holders.join(", ")));
        }
        s
    }

    /// Model and how it is attached: `Samsung SSD 970 (nvme)`, `- (usb, removable)`.
    pub fn model_text(&self) -> String {
        let mut extra: Vec<&str> = Vec::new();
        if let Some(t) = &self.transport {
            extra.push(t);
        }
        if self.removable {
            extra.push("removable");
        }
        if self.read_only {
            extra.push("read-only");
        }
        let model = self.model.as_deref().unwrap_or("-");
        if extra.is_empty() {
            model.to_string()
        } else {
            format!("{model} ({})", extra.join(", "))
        }
    }
}

/// Sizes as people read them on a disk label: `512 MiB`, `20 GiB`, `476.9 GiB`.
pub fn human_size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = KIB * 1024;
    const GIB: u64 = MIB * 1024;
    const TIB: u64 = GIB * 1024;
    let (unit, div) = if bytes >= TIB {
        ("TiB", TIB)
    } else if bytes >= GIB {
        ("GiB", GIB)
    } else if bytes >= MIB {
        ("MiB", MIB)
    } else if bytes >= KIB {
        ("KiB", KIB)
    } else {
        return format!("{bytes} B");
    };
    let v = bytes as f64 / div as f64;
    let s = format!("{v:.1}");
    let s = s.strip_suffix(".0").unwrap_or(&s);
    format!("{s} {unit}")
}

#[derive(Deserialize)]
struct LsblkOut {
    blockdevices: Vec<RawDev>,
}

/// One device as lsblk prints it. Numbers and flags are read loosely
/// (lsblk prints `"ro": false` or `"ro": "0"` depending on version and
/// options, sizes as numbers or strings).
#[derive(Deserialize)]
struct RawDev {
    name: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    size: Value,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    ro: Value,
    #[serde(default)]
    rm: Value,
    #[serde(default)]
    tran: Option<String>,
    #[serde(default)]
    pttype: Option<String>,
    #[serde(default)]
    fstype: Option<String>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    partlabel: Option<String>,
    #[serde(default)]
    mountpoints: Vec<Option<String>>,
    #[serde(default)]
    children: Vec<RawDev>,
}

fn number(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap_or(0),
        Value::String(s) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

fn flag(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_u64().is_some_and(|n| n != 0),
        Value::String(s) => matches!(s.trim(), "1" | "true"),
        _ => false,
    }
}

/// Empty or blank strings are absent; the rest is trimmed (lsblk pads models).
fn text(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn mounts(d: &RawDev) -> Vec<String> {
    d.mountpoints
        .iter()
        .flatten()
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

fn dev_path(d: &RawDev) -> String {
    text(&d.path).unwrap_or_else(|| format!("/dev/{}", d.name))
}

/// Mountpoints and names of everything stacked on `d` (its children that
/// are not partitions, and theirs).
fn stacked(d: &RawDev, mountpoints: &mut Vec<String>, holders: &mut Vec<String>) {
    for c in &d.children {
        let kind = c.kind.clone().unwrap_or_default();
        if kind != "part" {
            holders.push(format!("{} ({kind})", c.name));
        }
        mountpoints.extend(mounts(c));
        stacked(c, mountpoints, holders);
    }
}

fn partition(d: &RawDev) -> Partition {
    let mut mountpoints = mounts(d);
    let mut holders = Vec::new();
    stacked(d, &mut mountpoints, &mut holders);
    Partition {
        name: d.name.clone(),
        path: dev_path(d),
        size: number(&d.size),
        fstype: text(&d.fstype),
        label: text(&d.label),
        partlabel: text(&d.partlabel),
        mountpoints,
        holders,
    }
}

fn disk(d: &RawDev) -> Disk {
    let mut partitions = Vec::new();
    let mut holders = Vec::new();
    let mut mountpoints = mounts(d);
    for c in &d.children {
        if c.kind.as_deref() == Some("part") {
            partitions.push(partition(c));
        } else {
            holders.push(format!(
                "{} ({})",
                c.name,
                c.kind.clone().unwrap_or_default()
            ));
            mountpoints.extend(mounts(c));
            stacked(c, &mut mountpoints, &mut holders);
        }
    }
    Disk {
        name: d.name.clone(),
        path: dev_path(d),
        kind: DevKind::from_lsblk(d.kind.as_deref().unwrap_or("")),
        size: number(&d.size),
        model: text(&d.model),
        removable: flag(&d.rm),
        read_only: flag(&d.ro),
        transport: text(&d.tran),
        table: text(&d.pttype),
        fstype: text(&d.fstype),
        label: text(&d.label),
        mountpoints,
        partitions,
        holders,
        sector_size: 512,
    }
}

/// Parse the output of `lsblk --json --bytes --output` [`LSBLK_COLUMNS`].
/// Every top-level device is returned, loop devices and RAM disks aside
/// (never an installation target); [`Disk::is_candidate`] tells which to offer.
pub fn parse_lsblk(json: &str) -> Result<Vec<Disk>, InstallError> {
    let out: LsblkOut = serde_json::from_str(json)
        .map_err(|e| InstallError::Lsblk(format!("cannot read its JSON output: {e}")))?;
    Ok(out
        .blockdevices
        .iter()
        .filter(|d| d.kind.as_deref() != Some("loop"))
        .filter(|d| !["zram", "ram", "fd"].iter().any(|p| d.name.starts_with(p)))
        .map(disk)
        .collect())
}

/// All disks of this machine (runs `lsblk`), with their sector size from
/// sysfs. lsblk takes filesystem and partition-table types from udev's
/// database; a disk it shows as blank is probed directly (`blkid -p`,
/// root only), so that a signature udev has not recorded is not missed.
pub fn list() -> Result<Vec<Disk>, InstallError> {
    let json = Cmd::new("lsblk")
        .hint("apt-get install util-linux")
        .args(["--json", "--bytes", "--output", LSBLK_COLUMNS])
        .quiet()
        .output()
        .map_err(|e| InstallError::Lsblk(e.to_string()))?;
    let mut disks = parse_lsblk(&json)?;
    for d in &mut disks {
        let p = Path::new("/sys/class/block")
            .join(&d.name)
            .join("queue/logical_block_size");
        if let Some(n) = maculaos_boot::blockdev::read_number(&p) {
            d.sector_size = n;
        }
        if d.is_candidate() && d.is_blank() {
            // Exit code 2: nothing found; any failure leaves lsblk's view.
            if let Ok(out) = Cmd::new("blkid")
                .args(["--probe", "--output", "export"])
                .arg(&d.path)
                .quiet()
                .output()
            {
                apply_probe(d, &out);
            }
        }
    }
    Ok(disks)
}

/// Take `TYPE=`, `PTTYPE=` and `LABEL=` from `blkid --probe --output export`.
fn apply_probe(d: &mut Disk, export: &str) {
    for line in export.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = Some(v.trim().to_string()).filter(|v| !v.is_empty());
        match k.trim() {
            "TYPE" => d.fstype = d.fstype.take().or(v),
            "PTTYPE" => d.table = d.table.take().or(v),
            "LABEL" => d.label = d.label.take().or(v),
            _ => {}
        }
    }
}

/// The device `device` names among `disks`: a disk, or one of their
/// partitions (returned as a [`Disk`] of kind [`DevKind::Part`], which the
/// plan refuses with a message naming its disk). Symlinks such as
/// `/dev/disk/by-id/…` are followed.
pub fn find(disks: &[Disk], device: &str) -> Result<Disk, InstallError> {
    let real = std::fs::canonicalize(device)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| device.to_string());
    let matches = |path: &str, name: &str| {
        path == device || path == real || name == device.trim_start_matches("/dev/")
    };
    if let Some(d) = disks.iter().find(|d| matches(&d.path, &d.name)) {
        return Ok(d.clone());
    }
    for d in disks {
        if let Some(p) = d.partitions.iter().find(|p| matches(&p.path, &p.name)) {
            return Ok(Disk {
                name: p.name.clone(),
                path: p.path.clone(),
                kind: DevKind::Part,
                size: p.size,
                model: d.model.clone(),
                removable: d.removable,
                read_only: d.read_only,
                transport: d.transport.clone(),
                table: None,
                fstype: p.fstype.clone(),
                label: p.label.clone(),
                mountpoints: p.mountpoints.clone(),
                partitions: Vec::new(),
                holders: p.holders.clone(),
                sector_size: d.sector_size,
            });
        }
    }
    Err(InstallError::NoSuchDisk {
        device: device.to_string(),
    })
}

/// The table of `maculaos install --list`.
pub fn render_table(disks: &[Disk]) -> String {
    let rows: Vec<[String; 4]> = disks
        .iter()
        .map(|d| {
            [
                d.path.clone(),
                human_size(d.size),
                d.model_text(),
                d.describe(),
            ]
        })
        .collect();
    let header = [
        "DEVICE".to_string(),
        "SIZE".to_string(),
        "MODEL".to_string(),
        "ON IT NOW".to_string(),
    ];
    let mut w = [0usize; 3];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for i in 0..3 {
            w[i] = w[i].max(r[i].chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows.iter()) {
        out.push_str(&format!(
            "{:<w0$}  {:>w1$}  {:<w2$}  {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        ));
    }
    if disks.is_empty() {
        out.push_str("(no disks found)\n");
    }
    out
}

/// The whole disk a device node belongs to, by the kernel's naming rules:
/// `/dev/vda3` → `vda`, `/dev/nvme0n1p3` → `nvme0n1`, `/dev/mmcblk0p1` →
/// `mmcblk0`, `/dev/sr0` → `sr0`. Used where sysfs cannot say (see
/// [`crate::running_from`]).
pub fn whole_disk_name(device: &str) -> String {
    let name = device.trim_start_matches("/dev/");
    // <name ending in a digit>p<N>: nvme0n1p3, mmcblk0p1, loop0p1, md0p1.
    if let Some(i) = name.rfind('p') {
        let (head, tail) = (&name[..i], &name[i + 1..]);
        if !tail.is_empty()
            && tail.bytes().all(|b| b.is_ascii_digit())
            && head.bytes().last().is_some_and(|b| b.is_ascii_digit())
        {
            return head.to_string();
        }
    }
    // sda3, vda3, hda1, xvda2: letters then the partition number.
    for prefix in ["sd", "vd", "hd", "xvd"] {
        if name.starts_with(prefix) {
            return name
                .trim_end_matches(|c: char| c.is_ascii_digit())
                .to_string();
        }
    }
    name.to_string()
}

/// The device node of partition `n` of `disk`: `/dev/vda` → `/dev/vda1`,
/// `/dev/nvme0n1` → `/dev/nvme0n1p1` (a `p` when the name ends in a digit).
pub fn partition_path(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// A virtio disk holding an installed MaculaOS (one partition mounted on
    /// /var), a blank virtio disk, the CD drive with the live ISO, loop
    /// devices, zram swap and an NVMe disk with another system; as lsblk
    /// 2.38.1 on Debian 12 prints them.
    pub(crate) const SAMPLE: &str = r#"{
   "blockdevices": [
      {"name":"loop0", "path":"/dev/loop0", "type":"loop", "size":221184000, "model":null, "ro":true, "rm":false, "tran":null, "pttype":null, "fstype":"squashfs", "label":null, "partlabel":null, "mountpoints":["/run/rootfsbase"]},
      {"name":"loop1", "path":"/dev/loop1", "type":"loop", "size":0, "model":null, "ro":false, "rm":false, "tran":null, "pttype":null, "fstype":null, "label":null, "partlabel":null, "mountpoints":[null]},
      {"name":"sr0", "path":"/dev/sr0", "type":"rom", "size":241172480, "model":"QEMU DVD-ROM", "ro":false, "rm":true, "tran":"ata", "pttype":"dos", "fstype":"iso9660", "label":"MACULA_LIVE", "partlabel":null, "mountpoints":["/run/maculaos/medium"]},
      {"name":"vda", "path":"/dev/vda", "type":"disk", "size":21474836480, "model":null, "ro":false, "rm":false, "tran":null, "pttype":"gpt", "fstype":null, "label":null, "partlabel":null, "mountpoints":[null],
         "children": [
            {"name":"vda1", "path":"/dev/vda1", "type":"part", "size":1048576, "model":null, "ro":false, "rm":false, "tran":null, "pttype":"gpt", "fstype":null, "label":null, "partlabel":"MACULA_BIOS", "mountpoints":[null]},
            {"name":"vda2", "path":"/dev/vda2", "type":"part", "size":134217728, "model":null, "ro":false, "rm":false, "tran":null, "pttype":"gpt", "fstype":"vfat", "label":"MACULA_ESP", "partlabel":"MACULA_ESP", "mountpoints":[null]},
            {"name":"vda3", "path":"/dev/vda3", "type":"part", "size":2147483648, "model":null, "ro":false, "rm":false, "tran":null, "pttype":"gpt", "fstype":"squashfs", "label":null, "partlabel":"MACULA_ROOT_A", "mountpoints":[null]},
            {"name":"vda4", "path":"/dev/vda4", "type":"part", "size":2147483648, "model":null, "ro":false, "rm":false, "tran":null, "pttype":"gpt", "fstype":null, "label":null, "partlabel":"MACULA_ROOT_B", "mountpoints":[null]},
            {"name":"vda5", "path":"/dev/vda5", "type":"part", "size":17043554304, "model":null, "ro":false, "rm":false, "tran":null, "pttype":"gpt", "fstype":"ext4", "label":"MACULA_DATA", "partlabel":"MACULA_DATA", "mountpoints":["/var"]}
         ]
      },
      {"name":"vdb", "path":"/dev/vdb", "type":"disk", "size":8589934592, "model":null, "ro":false, "rm":false, "tran":null, "pttype":null, "fstype":null, "label":null, "partlabel":null, "mountpoints":[null]},
      {"name":"zram0", "path":"/dev/zram0", "type":"disk", "size":4294967296, "model":null, "ro":false, "rm":false, "tran":null, "pttype":null, "fstype":"swap", "label":null, "partlabel":null, "mountpoints":["[SWAP]"]},
      {"name":"nvme0n1", "path":"/dev/nvme0n1", "type":"disk", "size":512110190592, "model":"Samsung SSD 970 EVO Plus 500GB          ", "ro":false, "rm":false, "tran":"nvme", "pttype":"gpt", "fstype":null, "label":null, "partlabel":null, "mountpoints":[null],
         "children": [
            {"name":"nvme0n1p1", "path":"/dev/nvme0n1p1", "type":"part", "size":536870912, "model":null, "ro":false, "rm":false, "tran":"nvme", "pttype":"gpt", "fstype":"vfat", "label":null, "partlabel":"EFI system partition", "mountpoints":[null]},
            {"name":"nvme0n1p2", "path":"/dev/nvme0n1p2", "type":"part", "size":511571492864, "model":null, "ro":false, "rm":false, "tran":"nvme", "pttype":"gpt", "fstype":"LVM2_member", "label":null, "partlabel":null, "mountpoints":[null],
               "children": [
                  {"name":"vg0-root", "path":"/dev/mapper/vg0-root", "type":"lvm", "size":107374182400, "model":null, "ro":false, "rm":false, "tran":null, "pttype":null, "fstype":"ext4", "label":null, "partlabel":null, "mountpoints":[null]}
               ]
            }
         ]
      },
      {"name":"sda", "path":"/dev/sda", "type":"disk", "size":"31914983424", "model":"Ultra Fit", "ro":"0", "rm":"1", "tran":"usb", "pttype":null, "fstype":null, "label":null, "partlabel":null, "mountpoints":[null, null]}
   ]
}"#;

    pub(crate) fn sample() -> Vec<Disk> {
        parse_lsblk(SAMPLE).unwrap()
    }

    pub(crate) fn by_name(name: &str) -> Disk {
        sample().into_iter().find(|d| d.name == name).unwrap()
    }

    #[test]
    fn loop_and_ram_devices_are_left_out() {
        let names: Vec<String> = sample().into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["sr0", "vda", "vdb", "nvme0n1", "sda"]);
        let candidates: Vec<String> = sample()
            .into_iter()
            .filter(Disk::is_candidate)
            .map(|d| d.name)
            .collect();
        assert_eq!(candidates, ["vda", "vdb", "nvme0n1", "sda"]);
    }

    #[test]
    fn an_installed_maculaos_disk() {
        let d = by_name("vda");
        assert_eq!(d.kind, DevKind::Disk);
        assert_eq!(d.size, 20 << 30);
        assert_eq!(d.partitions.len(), 5);
        assert_eq!(d.partitions[4].mountpoints, ["/var"]);
        assert_eq!(d.mounted(), ["/var"]);
        assert!(!d.is_blank());
        assert_eq!(
            d.describe(),
            "GPT, 5 partitions: MACULA_BIOS 1 MiB, MACULA_ESP vfat 128 MiB, \
             MACULA_ROOT_A squashfs 2 GiB, MACULA_ROOT_B 2 GiB, MACULA_DATA ext4 15.9 GiB; \
             holds mounted filesystems: /var"
        );
    }

    #[test]
    fn a_blank_disk() {
        let d = by_name("vdb");
        assert!(d.is_blank());
        assert_eq!(d.describe(), "blank");
        assert_eq!(d.model_text(), "-");
        assert!(d.mounted().is_empty());
    }

    #[test]
    fn the_cd_drive_with_the_live_medium() {
        let d = by_name("sr0");
        assert_eq!(d.kind, DevKind::Rom);
        assert!(!d.is_candidate());
        assert!(d.removable);
        assert_eq!(
            d.describe(),
            "iso9660 filesystem \"MACULA_LIVE\"; holds mounted filesystems: /run/maculaos/medium"
        );
    }

    #[test]
    fn an_nvme_disk_with_lvm() {
        let d = by_name("nvme0n1");
        assert_eq!(d.model.as_deref(), Some("Samsung SSD 970 EVO Plus 500GB"));
        assert_eq!(d.model_text(), "Samsung SSD 970 EVO Plus 500GB (nvme)");
        assert_eq!(d.partitions[1].holders, ["vg0-root (lvm)"]);
        assert_eq!(d.all_holders(), ["vg0-root (lvm)"]);
        assert!(d.describe().starts_with(
            "GPT, 2 partitions: EFI system partition vfat 512 MiB, nvme0n1p2 LVM2_member 476.4 GiB"
        ));
        assert!(d.describe().ends_with("; in use by vg0-root (lvm)"));
    }

    #[test]
    fn strings_for_numbers_and_flags_and_null_mountpoints() {
        let d = by_name("sda");
        assert_eq!(d.size, 31914983424);
        assert!(d.removable && !d.read_only);
        assert!(d.mountpoints.is_empty());
        assert_eq!(d.model_text(), "Ultra Fit (usb, removable)");
    }

    #[test]
    fn a_direct_probe_fills_in_what_udev_did_not_record() {
        let mut d = by_name("vdb");
        apply_probe(
            &mut d,
            "DEVNAME=/dev/vdb\nLABEL=backup\nUUID=1234\nTYPE=ext4\n",
        );
        assert!(!d.is_blank());
        assert_eq!(d.describe(), "ext4 filesystem \"backup\"");
        let mut d = by_name("vdb");
        apply_probe(&mut d, "DEVNAME=/dev/vdb\nPTUUID=ab\nPTTYPE=gpt\n");
        assert_eq!(d.describe(), "GPT, no partitions");
        let mut d = by_name("vdb");
        apply_probe(&mut d, "");
        assert!(d.is_blank());
    }

    #[test]
    fn bad_json_is_an_error() {
        assert!(parse_lsblk("{").is_err());
        assert!(parse_lsblk("{\"blockdevices\": []}").unwrap().is_empty());
    }

    #[test]
    fn finding_a_device() {
        let disks = sample();
        assert_eq!(find(&disks, "/dev/vdb").unwrap().name, "vdb");
        assert_eq!(find(&disks, "vdb").unwrap().name, "vdb");
        let p = find(&disks, "/dev/vda3").unwrap();
        assert_eq!(p.kind, DevKind::Part);
        assert_eq!(p.fstype.as_deref(), Some("squashfs"));
        assert!(matches!(
            find(&disks, "/dev/sdz"),
            Err(InstallError::NoSuchDisk { .. })
        ));
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(1 << 20), "1 MiB");
        assert_eq!(human_size(128 << 20), "128 MiB");
        assert_eq!(human_size(20 << 30), "20 GiB");
        assert_eq!(human_size(512110190592), "476.9 GiB");
        assert_eq!(human_size(3 << 40), "3 TiB");
        assert_eq!(human_size(100), "100 B");
    }

    #[test]
    fn table() {
        let t = render_table(
            &sample()
                .into_iter()
                .filter(Disk::is_candidate)
                .collect::<Vec<_>>(),
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[0].starts_with("DEVICE"), "{t}");
        assert!(lines[2].starts_with("/dev/vdb"), "{t}");
        assert!(lines[2].ends_with("  blank"), "{t}");
        assert!(render_table(&[]).contains("no disks found"));
    }

    #[test]
    fn whole_disks() {
        assert_eq!(whole_disk_name("/dev/vda3"), "vda");
        assert_eq!(whole_disk_name("/dev/vda"), "vda");
        assert_eq!(whole_disk_name("/dev/sdb12"), "sdb");
        assert_eq!(whole_disk_name("/dev/nvme0n1p3"), "nvme0n1");
        assert_eq!(whole_disk_name("/dev/nvme0n1"), "nvme0n1");
        assert_eq!(whole_disk_name("/dev/mmcblk0p1"), "mmcblk0");
        assert_eq!(whole_disk_name("/dev/mmcblk0"), "mmcblk0");
        assert_eq!(whole_disk_name("/dev/sr0"), "sr0");
        assert_eq!(whole_disk_name("/dev/loop0p2"), "loop0");
        assert_eq!(whole_disk_name("xvda1"), "xvda");
    }

    #[test]
    fn partition_paths() {
        assert_eq!(partition_path("/dev/vda", 1), "/dev/vda1");
        assert_eq!(partition_path("/dev/sdb", 5), "/dev/sdb5");
        assert_eq!(partition_path("/dev/nvme0n1", 1), "/dev/nvme0n1p1");
        assert_eq!(partition_path("/dev/mmcblk0", 3), "/dev/mmcblk0p3");
        assert_eq!(partition_path("/dev/loop7", 2), "/dev/loop7p2");
    }
}
