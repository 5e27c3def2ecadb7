//! The GPT layout of a MaculaOS disk (DESIGN.md "Disk and boot"), as plain data.

use crate::{Slot, LABEL_BIOS, LABEL_DATA, LABEL_ESP, TYPE_DATA_UNFORMATTED};

pub const MIB: u64 = 1024 * 1024;
pub const SECTOR: u64 = 512;

/// GPT type GUIDs.
pub const TYPE_BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Generic Linux data: deliberately not the "root" or "var" discoverable
/// types, so systemd's gpt-auto generator never mounts a slot on its own.
pub const TYPE_LINUX: &str = crate::TYPE_LINUX_FS;

/// One partition of the layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub number: u32,
    pub label: &'static str,
    pub type_guid: &'static str,
    pub start: u64,
    pub size: u64,
}

/// Sizes of the variable parts, in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub esp_size: u64,
    pub slot_size: u64,
    /// Size of the data partition in the image; maculaos-init grows it to
    /// fill the disk on first boot.
    pub data_size: u64,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            esp_size: 128 * MIB,
            slot_size: 2048 * MIB,
            data_size: 512 * MIB,
        }
    }
}

impl Layout {
    /// The partitions in disk order, 1 MiB aligned.
    pub fn parts(&self) -> Vec<Part> {
        let mut start = MIB;
        let mut out = Vec::new();
        let entries: [(&'static str, &'static str, u64); 5] = [
            (LABEL_BIOS, TYPE_BIOS_BOOT, MIB),
            (LABEL_ESP, TYPE_ESP, self.esp_size),
            (Slot::A.label(), TYPE_LINUX, self.slot_size),
            (Slot::B.label(), TYPE_LINUX, self.slot_size),
            (LABEL_DATA, TYPE_DATA_UNFORMATTED, self.data_size),
        ];
        for (i, (label, type_guid, size)) in entries.into_iter().enumerate() {
            out.push(Part {
                number: i as u32 + 1,
                label,
                type_guid,
                start,
                size,
            });
            start += size;
        }
        out
    }

    pub fn part(&self, label: &str) -> Option<Part> {
        self.parts().into_iter().find(|p| p.label == label)
    }

    /// Total disk size: the partitions plus 1 MiB at the end for the backup GPT.
    pub fn disk_size(&self) -> u64 {
        self.parts().last().map(|p| p.start + p.size).unwrap_or(0) + MIB
    }

    /// Input for `sfdisk` that creates this layout.
    pub fn sfdisk_script(&self) -> String {
        let mut s = String::from("label: gpt\nunit: sectors\nfirst-lba: 2048\n");
        for p in self.parts() {
            s.push_str(&format!(
                "start={}, size={}, type={}, name=\"{}\"\n",
                p.start / SECTOR,
                p.size / SECTOR,
                p.type_guid,
                p.label
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_aligned_and_contiguous() {
        let l = Layout::default();
        let parts = l.parts();
        assert_eq!(parts.len(), 5);
        assert_eq!(parts[0].start, MIB);
        for w in parts.windows(2) {
            assert_eq!(w[0].start + w[0].size, w[1].start);
        }
        for p in &parts {
            assert_eq!(p.start % MIB, 0, "{} not aligned", p.label);
        }
        assert_eq!(parts[1].label, "MACULA_ESP");
        assert_eq!(
            parts[1].number, 2,
            "GRUB's BIOS prefix (,gpt2) relies on this"
        );
        assert_eq!(l.part("MACULA_ROOT_B").map(|p| p.number), Some(4));
    }

    #[test]
    fn sfdisk_script_names_every_partition() {
        let s = Layout::default().sfdisk_script();
        for label in [
            "MACULA_BIOS",
            "MACULA_ESP",
            "MACULA_ROOT_A",
            "MACULA_ROOT_B",
            "MACULA_DATA",
        ] {
            assert!(s.contains(&format!("name=\"{label}\"")), "{s}");
        }
        assert!(s.starts_with("label: gpt\n"));
    }

    #[test]
    fn disk_size_leaves_room_for_backup_gpt() {
        let l = Layout::default();
        let last = l.parts().pop().unwrap();
        assert_eq!(l.disk_size(), last.start + last.size + MIB);
    }
}
