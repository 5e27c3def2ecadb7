//! Whether a disk can take MaculaOS, and the layout it gets: the fixed
//! partitions of [`Layout`] with `MACULA_DATA` filling the rest of the disk.

use crate::disks::{human_size, partition_path, whole_disk_name, DevKind, Disk};
use maculaos_boot::layout::{Layout, Part, MIB};
use maculaos_boot::{
    Slot, LABEL_BIOS, LABEL_DATA, LABEL_ESP, TYPE_DATA_UNFORMATTED, TYPE_LINUX_FS,
};
use std::fmt::Write as _;

/// The smallest data partition worth installing with.
pub const MIN_DATA: u64 = 1024 * MIB;
/// Room left at the end of the disk for the backup GPT.
pub const BACKUP_GPT: u64 = MIB;

/// Why a disk is not installed on. Nothing has been written when one of
/// these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{path} is a partition, not a disk: give the whole disk (/dev/{disk}); MaculaOS takes all of it")]
    Partition { path: String, disk: String },

    #[error(
        "{path} is a CD/DVD drive: install onto a disk (`maculaos install --list` shows them)"
    )]
    Rom { path: String },

    #[error("{path} is a loop device, not a disk: install onto a disk (`maculaos install --list` shows them)")]
    Loop { path: String },

    #[error("{path} is a {kind} device, not a disk: install onto a disk (`maculaos install --list` shows them)")]
    NotADisk { path: String, kind: String },

    #[error("{path} is read-only (a write-protect switch on the card or stick?): nothing can be written to it")]
    ReadOnly { path: String },

    #[error("{path} is the disk the running system was started from ({running_from}): install onto another disk")]
    RunningSystem { path: String, running_from: String },

    #[error("{path} is in use ({what}): even --force does not erase a disk in use; unmount it or install onto another disk")]
    InUse { path: String, what: String },

    #[error("{path} is too small ({size}): MaculaOS needs at least {needed} (boot partitions, two {slot} slots and {data} of data)", size = human_size(*.size), needed = human_gib(*.needed), slot = human_size(*.slot_size), data = human_size(MIN_DATA))]
    TooSmall {
        path: String,
        size: u64,
        needed: u64,
        slot_size: u64,
    },

    #[error("{path} has {sector_size}-byte sectors; the MaculaOS layout is made for 512-byte sectors: install onto another disk")]
    SectorSize { path: String, sector_size: u64 },

    #[error("the MaculaOS image to install is {} ({size} bytes), more than a slot holds ({}): the installation medium does not match this installer", human_size(*.size), human_size(*.slot_size))]
    PayloadTooBig { size: u64, slot_size: u64 },

    #[error(
        "{path} is not blank: it holds {contents}; pass --force (install.force: true) to erase it"
    )]
    HoldsData { path: String, contents: String },
}

/// `5.2 GiB`, rounded up so that "at least" holds.
fn human_gib(bytes: u64) -> String {
    let tenths = (bytes * 10).div_ceil(1024 * MIB);
    format!("{}.{} GiB", tenths / 10, tenths % 10)
}

/// The layout for a disk of `disk_size` bytes: the default sizes, and the
/// data partition from the end of slot B to 1 MiB before the end of the
/// disk (the backup GPT), rounded down to a MiB. `Err` carries the size
/// the disk would need.
pub fn layout_for(disk_size: u64) -> Result<Layout, u64> {
    let base = Layout::default();
    let data_start = base.part(LABEL_DATA).map(|p| p.start).unwrap_or(0);
    let needed = data_start + MIN_DATA + BACKUP_GPT;
    if disk_size < needed {
        return Err(needed);
    }
    let data_size = (disk_size - data_start - BACKUP_GPT) / MIB * MIB;
    Ok(Layout { data_size, ..base })
}

/// The smallest disk MaculaOS installs on.
pub fn min_disk_size() -> u64 {
    match layout_for(0) {
        Err(n) => n,
        Ok(l) => l.disk_size(),
    }
}

/// What the installer will do to one disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub disk: Disk,
    pub layout: Layout,
    /// Erase what is on the disk first (`wipefs`); the user agreed to lose it.
    pub force: bool,
    /// Size of the slot image written into slot A.
    pub payload_size: u64,
}

impl Plan {
    /// Check `disk` and lay MaculaOS out on it. `running_from`: the device
    /// the running system was started from (boot.json's `root_device`; a
    /// partition or a whole disk). `force`: the disk may be erased even if
    /// it holds something. `payload_size`: the slot image's size.
    pub fn new(
        disk: &Disk,
        running_from: Option<&str>,
        force: bool,
        payload_size: u64,
    ) -> Result<Plan, Refusal> {
        let path = disk.path.clone();
        match &disk.kind {
            DevKind::Disk => {}
            DevKind::Part => {
                return Err(Refusal::Partition {
                    disk: whole_disk_name(&path),
                    path,
                })
            }
            DevKind::Rom => return Err(Refusal::Rom { path }),
            DevKind::Loop => return Err(Refusal::Loop { path }),
            DevKind::Other(kind) => {
                return Err(Refusal::NotADisk {
                    path,
                    kind: kind.clone(),
                })
            }
        }
        if disk.read_only {
            return Err(Refusal::ReadOnly { path });
        }
        if let Some(from) = running_from.filter(|f| runs_from(disk, f)) {
            return Err(Refusal::RunningSystem {
                path,
                running_from: from.to_string(),
            });
        }
        let mounted = disk.mounted();
        let holders = disk.all_holders();
        if !mounted.is_empty() || !holders.is_empty() {
            let mut what = Vec::new();
            if !mounted.is_empty() {
                what.push(format!("mounted: {}", mounted.join(", ")));
            }
            if !holders.is_empty() {
                what.push(format!("holds active volumes: {}", holders.join(", ")));
            }
            return Err(Refusal::InUse {
                path,
                what: what.join("; "),
            });
        }
        if disk.sector_size != 512 {
            return Err(Refusal::SectorSize {
                path,
                sector_size: disk.sector_size,
            });
        }
        let layout = layout_for(disk.size).map_err(|needed| Refusal::TooSmall {
            path: path.clone(),
            size: disk.size,
            needed,
            slot_size: Layout::default().slot_size,
        })?;
        if payload_size > layout.slot_size {
            return Err(Refusal::PayloadTooBig {
                size: payload_size,
                slot_size: layout.slot_size,
            });
        }
        if !force && !disk.is_blank() {
            return Err(Refusal::HoldsData {
                path,
                contents: disk.contents(),
            });
        }
        Ok(Plan {
            disk: disk.clone(),
            layout,
            force,
            payload_size,
        })
    }

    /// The disk's device node, e.g. `/dev/vda`.
    pub fn device(&self) -> &str {
        &self.disk.path
    }

    pub fn parts(&self) -> Vec<Part> {
        self.layout.parts()
    }

    pub fn part(&self, label: &str) -> Option<Part> {
        self.layout.part(label)
    }

    /// The device node the partition labelled `label` will have.
    pub fn part_path(&self, label: &str) -> Option<String> {
        self.part(label)
            .map(|p| partition_path(&self.disk.path, p.number))
    }

    /// Input for `sfdisk`: the layout, with `MACULA_DATA` typed as a Linux
    /// filesystem, since the installer formats it itself (an image leaves it
    /// "unformatted" for maculaos-init to format on first boot).
    pub fn sfdisk_script(&self) -> String {
        self.layout
            .sfdisk_script()
            .replace(TYPE_DATA_UNFORMATTED, TYPE_LINUX_FS)
    }

    /// What the installer does to the disk, for `--dry-run` and the
    /// confirmation.
    pub fn summary(&self) -> String {
        let d = &self.disk;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Install MaculaOS on {} ({}, {})",
            d.path,
            d.model_text(),
            human_size(d.size)
        );
        let _ = writeln!(s, "  on it now: {}", d.describe());
        let _ = writeln!(s, "  partitions to create (GPT):");
        for p in self.parts() {
            let what = match p.label {
                LABEL_BIOS => "GRUB for BIOS".to_string(),
                LABEL_ESP => "EFI system partition (FAT32): GRUB, kernel, initrd".to_string(),
                l if l == Slot::A.label() => format!(
                    "slot A: the MaculaOS image ({})",
                    human_size(self.payload_size)
                ),
                l if l == Slot::B.label() => "slot B: empty until the first update".to_string(),
                LABEL_DATA => "data (ext4, mounted on /var): configuration and state".to_string(),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "    {}  {:<14} {:>10}  {}",
                partition_path(&d.path, p.number),
                p.label,
                human_size(p.size),
                what
            );
        }
        if d.is_blank() {
            let _ = writeln!(s, "  This writes all of {}.", d.path);
        } else {
            let _ = writeln!(s, "  This erases {}: everything on it now is lost.", d.path);
        }
        s
    }
}

/// Whether `running_from` (a device node) is `disk` or one of its partitions.
fn runs_from(disk: &Disk, running_from: &str) -> bool {
    let real = std::fs::canonicalize(running_from)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| running_from.to_string());
    [running_from, real.as_str()].iter().any(|from| {
        *from == disk.path
            || disk.partitions.iter().any(|p| p.path == *from)
            || whole_disk_name(from) == disk.name
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::disks::tests::by_name;

    const IMG: u64 = 230 * MIB;

    fn blank(size: u64) -> Disk {
        Disk {
            size,
            ..by_name("vdb")
        }
    }

    #[test]
    fn data_fills_the_disk() {
        let l = layout_for(20 << 30).unwrap();
        let data = l.part(LABEL_DATA).unwrap();
        assert_eq!(data.start, (1 + 1 + 128 + 2048 * 2) * MIB);
        assert_eq!(data.start + data.size + MIB, 20 << 30);
        assert_eq!(l.disk_size(), 20 << 30);
        // An odd size: rounded down to a MiB, still leaving the backup GPT.
        let odd = (20 << 30) + 12345;
        let l = layout_for(odd).unwrap();
        let data = l.part(LABEL_DATA).unwrap();
        assert_eq!(data.size % MIB, 0);
        assert!(data.start + data.size + MIB <= odd);
    }

    #[test]
    fn smallest_disk() {
        let min = min_disk_size();
        assert_eq!(min, (4226 + 1024 + 1) * MIB);
        assert!(layout_for(min).is_ok());
        assert_eq!(layout_for(min - 1), Err(min));
        assert_eq!(
            layout_for(min).unwrap().part(LABEL_DATA).unwrap().size,
            MIN_DATA
        );
    }

    #[test]
    fn a_blank_disk_is_planned() {
        let p = Plan::new(&blank(8 << 30), Some("/dev/sr0"), false, IMG).unwrap();
        assert_eq!(p.device(), "/dev/vdb");
        assert_eq!(p.part_path(LABEL_ESP).as_deref(), Some("/dev/vdb2"));
        assert_eq!(p.part_path(LABEL_DATA).as_deref(), Some("/dev/vdb5"));
        let s = p.summary();
        assert!(s.contains("Install MaculaOS on /dev/vdb (-, 8 GiB)"), "{s}");
        assert!(s.contains("/dev/vdb3  MACULA_ROOT_A"), "{s}");
        assert!(s.contains("slot A: the MaculaOS image (230 MiB)"), "{s}");
        assert!(s.contains("This writes all of /dev/vdb."), "{s}");
    }

    #[test]
    fn the_data_partition_is_typed_formatted() {
        let p = Plan::new(&blank(8 << 30), None, false, IMG).unwrap();
        let script = p.sfdisk_script();
        let data = script.lines().find(|l| l.contains("MACULA_DATA")).unwrap();
        assert!(data.contains(TYPE_LINUX_FS), "{script}");
        assert!(!script.contains(TYPE_DATA_UNFORMATTED), "{script}");
        assert!(script.starts_with("label: gpt\n"));
        assert_eq!(script.lines().filter(|l| l.contains("name=")).count(), 5);
    }

    #[test]
    fn a_disk_with_partitions_needs_force() {
        let mut d = by_name("nvme0n1");
        d.partitions[1].holders.clear();
        let e = Plan::new(&d, None, false, IMG).unwrap_err();
        assert!(matches!(e, Refusal::HoldsData { .. }));
        assert_eq!(
            e.to_string(),
            "/dev/nvme0n1 is not blank: it holds GPT, 2 partitions: EFI system partition vfat 512 MiB, \
             nvme0n1p2 LVM2_member 476.4 GiB; pass --force (install.force: true) to erase it"
        );
        let p = Plan::new(&d, None, true, IMG).unwrap();
        assert!(p.force);
        assert_eq!(p.part_path(LABEL_BIOS).as_deref(), Some("/dev/nvme0n1p1"));
        assert!(p.summary().contains("This erases /dev/nvme0n1"));
        // A filesystem on the whole disk counts too.
        let mut d = blank(8 << 30);
        d.fstype = Some("ext4".into());
        assert!(matches!(
            Plan::new(&d, None, false, IMG),
            Err(Refusal::HoldsData { .. })
        ));
    }

    #[test]
    fn mounted_and_active_volumes_are_refused_even_with_force() {
        let e = Plan::new(&by_name("vda"), None, true, IMG).unwrap_err();
        assert_eq!(
            e,
            Refusal::InUse {
                path: "/dev/vda".into(),
                what: "mounted: /var".into()
            }
        );
        let e = Plan::new(&by_name("nvme0n1"), None, true, IMG).unwrap_err();
        assert!(e
            .to_string()
            .contains("holds active volumes: vg0-root (lvm)"));
    }

    #[test]
    fn the_running_system_disk_is_refused() {
        let d = blank(8 << 30);
        for from in ["/dev/vdb", "/dev/vdb3"] {
            let e = Plan::new(&d, Some(from), true, IMG).unwrap_err();
            assert!(matches!(e, Refusal::RunningSystem { .. }), "{from}: {e}");
        }
        let mut nvme = by_name("nvme0n1");
        nvme.partitions.clear();
        nvme.table = None;
        let e = Plan::new(&nvme, Some("/dev/nvme0n1p3"), true, IMG).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/nvme0n1 is the disk the running system was started from (/dev/nvme0n1p3): install onto another disk"
        );
        assert!(Plan::new(&d, Some("/dev/sr0"), false, IMG).is_ok());
        assert!(Plan::new(&d, Some("/dev/vda3"), false, IMG).is_ok());
    }

    #[test]
    fn not_disks() {
        let rom = by_name("sr0");
        assert!(matches!(
            Plan::new(&rom, None, true, IMG),
            Err(Refusal::Rom { .. })
        ));
        let part = crate::disks::find(&crate::disks::tests::sample(), "/dev/vda4").unwrap();
        let e = Plan::new(&part, None, true, IMG).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/vda4 is a partition, not a disk: give the whole disk (/dev/vda); MaculaOS takes all of it"
        );
        let mut lp = blank(8 << 30);
        lp.kind = DevKind::Loop;
        assert!(matches!(
            Plan::new(&lp, None, true, IMG),
            Err(Refusal::Loop { .. })
        ));
    }

    #[test]
    fn read_only_small_odd_sectors_and_big_payloads() {
        let mut ro = blank(8 << 30);
        ro.read_only = true;
        assert!(matches!(
            Plan::new(&ro, None, true, IMG),
            Err(Refusal::ReadOnly { .. })
        ));
        let e = Plan::new(&blank(4 << 30), None, true, IMG).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/vdb is too small (4 GiB): MaculaOS needs at least 5.2 GiB \
             (boot partitions, two 2 GiB slots and 1 GiB of data)"
        );
        let mut k4 = blank(8 << 30);
        k4.sector_size = 4096;
        assert!(matches!(
            Plan::new(&k4, None, true, IMG),
            Err(Refusal::SectorSize { .. })
        ));
        assert!(matches!(
            Plan::new(&blank(8 << 30), None, true, 3 << 30),
            Err(Refusal::PayloadTooBig { .. })
        ));
    }
}
