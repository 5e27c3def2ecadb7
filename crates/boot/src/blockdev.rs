//! Finding partitions by GPT partition name, without udev (maculaos-init and
//! the CLI both use it): the kernel exports each partition's name as
//! `PARTNAME=` in sysfs uevent files.

use std::cmp::Ordering;
use std::io;
use std::path::Path;

/// A block device as sysfs shows it under `/sys/class/block/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    /// Kernel device name (`DEVNAME=`), e.g. `vda5`; devtmpfs creates
    /// `/dev/<name>`.
    pub name: String,
    /// GPT partition name (`PARTNAME=`), if any.
    pub label: Option<String>,
    /// For a partition: the disk it is on, e.g. `vda`.
    pub disk: Option<String>,
    /// For a partition: its number in the partition table (`PARTN=`).
    pub partnum: Option<u32>,
    /// For a partition: first sector on the disk (512-byte units).
    pub start: Option<u64>,
    /// Size in 512-byte sectors.
    pub size: u64,
}

impl BlockDev {
    /// The device node, e.g. `/dev/vda5`.
    pub fn node(&self) -> String {
        format!("/dev/{}", self.name)
    }

    pub fn is_partition(&self) -> bool {
        self.disk.is_some()
    }
}

/// The fields of a sysfs block `uevent` file that matter here.
#[derive(Debug, Default, PartialEq)]
pub struct Uevent {
    pub devname: Option<String>,
    pub partname: Option<String>,
    pub partn: Option<u32>,
    pub devtype: Option<String>,
}

/// Parse `KEY=VALUE` lines of a uevent file. Empty values count as absent.
pub fn parse_uevent(text: &str) -> Uevent {
    let mut u = Uevent::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        match k.trim() {
            "DEVNAME" => u.devname = Some(v.to_string()),
            "PARTNAME" => u.partname = Some(v.to_string()),
            "PARTN" => u.partn = v.parse().ok(),
            "DEVTYPE" => u.devtype = Some(v.to_string()),
            _ => {}
        }
    }
    u
}

/// Read every `<sysfs>/class/block/*`. Entries that vanish or cannot be
/// read while scanning are skipped: devices come and go during boot, and
/// the next scan sees them as they settle.
pub fn scan_block_devices(sysfs: &Path) -> io::Result<Vec<BlockDev>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(sysfs.join("class/block"))? {
        let Ok(entry) = entry else { continue };
        let dir = entry.path();
        let Ok(text) = std::fs::read_to_string(dir.join("uevent")) else {
            continue;
        };
        let u = parse_uevent(&text);
        let name = u
            .devname
            .clone()
            .unwrap_or_else(|| entry.file_name().to_string_lossy().into_owned());
        let is_partition =
            u.devtype.as_deref() == Some("partition") || dir.join("partition").exists();
        // /sys/class/block/vda5 links to …/block/vda/vda5: the parent
        // directory is the disk.
        let disk = if is_partition {
            std::fs::canonicalize(&dir).ok().and_then(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .map(|d| d.to_string_lossy().into_owned())
            })
        } else {
            None
        };
        if is_partition && disk.is_none() {
            continue;
        }
        out.push(BlockDev {
            name,
            label: u.partname,
            disk,
            partnum: u.partn,
            start: read_number(&dir.join("start")),
            size: read_number(&dir.join("size")).unwrap_or(0),
        });
    }
    out.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    Ok(out)
}

/// A number in a sysfs file, e.g. `/sys/class/block/vda/size`.
pub fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The partitions init needs, found on one disk.
#[derive(Debug, Clone, PartialEq)]
pub struct BootPartitions {
    pub disk: String,
    pub root: BlockDev,
    pub data: BlockDev,
    /// Other disks that also carry the root label (a second MaculaOS disk
    /// or an installer stick): worth a note, since we picked one.
    pub other_disks: Vec<String>,
}

/// What is still missing.
#[derive(Debug, Clone, PartialEq)]
pub enum Missing {
    /// No partition has the root slot's label.
    Root,
    /// The root slot is there, but its disk has no data partition.
    Data { disk: String },
}

/// Find the partition labelled `root_label` and the one labelled
/// `data_label` on the same disk. With several disks carrying the root
/// label, the first (in name order) that also has a data partition wins.
pub fn find_boot_partitions(
    devs: &[BlockDev],
    root_label: &str,
    data_label: &str,
) -> Result<BootPartitions, Missing> {
    let mut roots: Vec<&BlockDev> = devs
        .iter()
        .filter(|d| d.is_partition() && d.label.as_deref() == Some(root_label))
        .collect();
    roots.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    let data_on = |disk: &Option<String>| {
        devs.iter()
            .filter(|d| d.is_partition() && d.disk == *disk)
            .filter(|d| d.label.as_deref() == Some(data_label))
            .min_by(|a, b| natural_cmp(&a.name, &b.name))
    };
    let Some(first) = roots.first() else {
        return Err(Missing::Root);
    };
    let Some((root, data)) = roots.iter().find_map(|r| data_on(&r.disk).map(|d| (*r, d))) else {
        return Err(Missing::Data {
            disk: first.disk.clone().unwrap_or_default(),
        });
    };
    let disk = root.disk.clone().unwrap_or_default();
    let mut other_disks: Vec<String> = roots
        .iter()
        .filter_map(|r| r.disk.clone())
        .filter(|d| *d != disk)
        .collect();
    other_disks.dedup();
    Ok(BootPartitions {
        disk,
        root: root.clone(),
        data: data.clone(),
        other_disks,
    })
}

/// What the scan saw, for a failure message: partitions and devices without
/// partitions, e.g. `vda1 (MACULA_BIOS), vda2 (MACULA_ESP), sr0 (no label)`.
/// Disks with partitions are left out (their partitions say it all), and so
/// are empty loop and RAM disks, which exist whether or not hardware does.
pub fn describe_seen(devs: &[BlockDev]) -> String {
    let mut shown: Vec<&BlockDev> = devs
        .iter()
        .filter(|d| {
            if d.is_partition() {
                return true;
            }
            let has_parts = devs.iter().any(|p| p.disk.as_deref() == Some(&d.name));
            let virtual_empty = d.size == 0
                && ["loop", "ram", "zram"]
                    .iter()
                    .any(|p| d.name.starts_with(p));
            !has_parts && !virtual_empty
        })
        .collect();
    if shown.is_empty() {
        return "no block devices at all".to_string();
    }
    shown.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    shown
        .iter()
        .map(|d| match &d.label {
            Some(l) => format!("{} ({l})", d.name),
            None => format!("{} (no label)", d.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compare names so that digit runs compare as numbers: `vda2` < `vda10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.is_empty(), b.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        let (ca, ra) = split_chunk(a);
        let (cb, rb) = split_chunk(b);
        let both_digits = starts_with_digit(ca) && starts_with_digit(cb);
        let ord = if both_digits {
            let (ta, tb) = (ca.trim_start_matches('0'), cb.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            ca.cmp(cb)
        };
        if ord != Ordering::Equal {
            return ord;
        }
        a = ra;
        b = rb;
    }
}

fn starts_with_digit(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_digit())
}

/// Split off the leading run of digits or of non-digits.
fn split_chunk(s: &str) -> (&str, &str) {
    let digit = starts_with_digit(s);
    let end = s
        .char_indices()
        .find(|(_, c)| c.is_ascii_digit() != digit)
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    s.split_at(end)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn part(name: &str, disk: &str, n: u32, label: Option<&str>) -> BlockDev {
        BlockDev {
            name: name.into(),
            label: label.map(Into::into),
            disk: Some(disk.into()),
            partnum: Some(n),
            start: Some(2048 * u64::from(n)),
            size: 2048,
        }
    }

    fn whole(name: &str, size: u64) -> BlockDev {
        BlockDev {
            name: name.into(),
            label: None,
            disk: None,
            partnum: None,
            start: None,
            size,
        }
    }

    fn layout(disk: &str) -> Vec<BlockDev> {
        let p = |n: u32| format!("{disk}{n}");
        vec![
            whole(disk, 1 << 24),
            part(&p(1), disk, 1, Some("MACULA_BIOS")),
            part(&p(2), disk, 2, Some("MACULA_ESP")),
            part(&p(3), disk, 3, Some("MACULA_ROOT_A")),
            part(&p(4), disk, 4, Some("MACULA_ROOT_B")),
            part(&p(5), disk, 5, Some("MACULA_DATA")),
        ]
    }

    #[test]
    fn uevent_fields() {
        let u = parse_uevent(
            "MAJOR=253\nMINOR=5\nDEVNAME=vda5\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=5\nPARTNAME=MACULA_DATA\n",
        );
        assert_eq!(u.devname.as_deref(), Some("vda5"));
        assert_eq!(u.partname.as_deref(), Some("MACULA_DATA"));
        assert_eq!(u.partn, Some(5));
        assert_eq!(u.devtype.as_deref(), Some("partition"));
        assert_eq!(parse_uevent("PARTNAME=\nnoise\n"), Uevent::default());
    }

    #[test]
    fn finds_root_and_data_on_one_disk() {
        let devs = layout("vda");
        let b = find_boot_partitions(&devs, "MACULA_ROOT_B", "MACULA_DATA").unwrap();
        assert_eq!(b.disk, "vda");
        assert_eq!(b.root.node(), "/dev/vda4");
        assert_eq!(b.data.node(), "/dev/vda5");
        assert!(b.other_disks.is_empty());
    }

    #[test]
    fn data_must_be_on_the_root_disk() {
        // An installer stick with the root label but no data partition, and
        // the installed disk: the installed disk wins, the stick is noted.
        let mut devs = layout("vda");
        devs.retain(|d| d.label.as_deref() != Some("MACULA_DATA"));
        devs.extend(layout("sda"));
        let b = find_boot_partitions(&devs, "MACULA_ROOT_A", "MACULA_DATA").unwrap();
        assert_eq!(b.root.node(), "/dev/sda3");
        assert_eq!(b.data.node(), "/dev/sda5");
        assert_eq!(b.other_disks, ["vda"]);
        // Data only on another disk than the root: missing.
        let mut devs = layout("vda");
        devs.retain(|d| d.label.as_deref() != Some("MACULA_DATA"));
        devs.push(part("sdb1", "sdb", 1, Some("MACULA_DATA")));
        assert_eq!(
            find_boot_partitions(&devs, "MACULA_ROOT_A", "MACULA_DATA"),
            Err(Missing::Data { disk: "vda".into() })
        );
    }

    #[test]
    fn nothing_found_and_what_was_seen() {
        let mut devs = vec![
            whole("vda", 1 << 24),
            part("vda1", "vda", 1, Some("MACULA_BIOS")),
            part("vda2", "vda", 2, Some("MACULA_ESP")),
            part("vda5", "vda", 5, Some("MACULA_DATA")),
            whole("sr0", 0),
            whole("loop0", 0),
            part("vda10", "vda", 10, None),
        ];
        devs.sort_by(|a, b| natural_cmp(&a.name, &b.name));
        assert_eq!(
            find_boot_partitions(&devs, "MACULA_ROOT_A", "MACULA_DATA"),
            Err(Missing::Root)
        );
        assert_eq!(
            describe_seen(&devs),
            "sr0 (no label), vda1 (MACULA_BIOS), vda2 (MACULA_ESP), vda5 (MACULA_DATA), vda10 (no label)"
        );
        assert_eq!(describe_seen(&[]), "no block devices at all");
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["vda10", "vda2", "sda", "nvme0n1p2", "nvme0n1p10", "vda1"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            ["nvme0n1p2", "nvme0n1p10", "sda", "vda1", "vda2", "vda10"]
        );
        assert_eq!(natural_cmp("a01", "a1"), Ordering::Equal);
    }

    #[test]
    fn scans_a_sysfs_tree() {
        let sys = tempfile::tempdir().unwrap();
        let s = sys.path();
        let dev = s.join("devices/pci0000:00/0000:00:04.0/virtio1/block/vda");
        std::fs::create_dir_all(dev.join("vda5")).unwrap();
        std::fs::write(dev.join("uevent"), "DEVNAME=vda\nDEVTYPE=disk\n").unwrap();
        std::fs::write(dev.join("size"), "16777216\n").unwrap();
        std::fs::write(
            dev.join("vda5/uevent"),
            "DEVNAME=vda5\nDEVTYPE=partition\nPARTN=5\nPARTNAME=MACULA_DATA\n",
        )
        .unwrap();
        std::fs::write(dev.join("vda5/partition"), "5\n").unwrap();
        std::fs::write(dev.join("vda5/start"), "4196352\n").unwrap();
        std::fs::write(dev.join("vda5/size"), "1048576\n").unwrap();
        std::fs::create_dir_all(s.join("class/block")).unwrap();
        std::os::unix::fs::symlink(&dev, s.join("class/block/vda")).unwrap();
        std::os::unix::fs::symlink(dev.join("vda5"), s.join("class/block/vda5")).unwrap();
        let devs = scan_block_devices(s).unwrap();
        assert_eq!(
            devs,
            [
                BlockDev {
                    name: "vda".into(),
                    label: None,
                    disk: None,
                    partnum: None,
                    start: None,
                    size: 16777216
                },
                BlockDev {
                    name: "vda5".into(),
                    label: Some("MACULA_DATA".into()),
                    disk: Some("vda".into()),
                    partnum: Some(5),
                    start: Some(4196352),
                    size: 1048576
                }
            ]
        );
        assert!(scan_block_devices(&s.join("nope")).is_err());
    }
}
