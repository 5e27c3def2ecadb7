//! The label of the filesystem on a block device, for the two kinds a
//! NoCloud drive is made with: ISO 9660 (`cloud-localds`, `genisoimage`)
//! and FAT (`cloud-localds -f vfat`, a USB stick). Read from the device
//! itself: a few sectors, where probing for every filesystem `blkid` knows
//! cost most of a second of every boot under emulation.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// ISO 9660's volume descriptors start at sector 16 (2,048-byte sectors).
const ISO_PVD_OFFSET: u64 = 16 * 2048;

/// The label of the ISO 9660 or FAT filesystem on `device`; `None` when it
/// has neither (or no label, or cannot be read: a CD drive without a disc).
pub fn read(device: &Path) -> Option<String> {
    // Non-blocking, as blkid opens them: a blocking open of a CD drive
    // closes an open tray and waits for the disc to spin up.
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(device)
        .ok()?;
    let mut boot = [0u8; 512];
    f.read_exact(&mut boot).ok()?;
    if let Some(fat) = Fat::parse(&boot) {
        let mut root = vec![0u8; fat.root_dir_len];
        let in_root = f
            .seek(SeekFrom::Start(fat.root_dir_offset))
            .and_then(|_| f.read_exact(&mut root))
            .ok()
            .and_then(|()| fat_root_label(&root));
        return in_root.or(fat.boot_label);
    }
    let mut pvd = [0u8; 2048];
    f.seek(SeekFrom::Start(ISO_PVD_OFFSET)).ok()?;
    f.read_exact(&mut pvd).ok()?;
    iso9660_label(&pvd)
}

/// The volume identifier of an ISO 9660 primary volume descriptor.
fn iso9660_label(pvd: &[u8]) -> Option<String> {
    if pvd.len() < 72 || pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return None;
    }
    text(&pvd[40..72])
}

/// What a FAT boot sector says about where the label is.
#[derive(Debug, PartialEq)]
struct Fat {
    /// The label in the boot sector (older tools only write this one).
    boot_label: Option<String>,
    /// Where the root directory starts, and how much of it to read (FAT32:
    /// its first cluster, where the label entry is in practice).
    root_dir_offset: u64,
    root_dir_len: usize,
}

impl Fat {
    fn parse(b: &[u8; 512]) -> Option<Fat> {
        let u16_at = |o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
        let u32_at = |o: usize| u64::from(u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]));
        let sector = u16_at(11);
        let per_cluster = u64::from(b[13]);
        let reserved = u16_at(14);
        let fats = u64::from(b[16]);
        let fat32 = &b[82..87] == b"FAT32";
        if !(fat32 || &b[54..57] == b"FAT")
            || ![512, 1024, 2048, 4096].contains(&sector)
            || !per_cluster.is_power_of_two()
            || reserved == 0
            || !(1..=2).contains(&fats)
        {
            return None;
        }
        // The extended boot signature says the label field is there.
        let (sig, label_at) = if fat32 { (66, 71) } else { (38, 43) };
        let boot_label = (b[sig] == 0x29)
            .then(|| text(&b[label_at..label_at + 11]))
            .flatten()
            .filter(|l| l != "NO NAME");
        let (root_dir_offset, root_dir_len) = if fat32 {
            let first_data = reserved + fats * u32_at(36);
            let cluster = u32_at(44).max(2);
            (
                (first_data + (cluster - 2) * per_cluster) * sector,
                per_cluster * sector,
            )
        } else {
            ((reserved + fats * u16_at(22)) * sector, u16_at(17) * 32)
        };
        Some(Fat {
            boot_label,
            root_dir_offset,
            // A label is among the first entries; no need to read 1 MiB.
            root_dir_len: usize::try_from(root_dir_len.min(64 * 1024)).ok()?,
        })
    }
}

/// The volume label entry of a FAT root directory (the volume attribute
/// without the directory one, whatever the archive bit says; long-name
/// entries, 0x0F, are not labels), up to its end marker.
fn fat_root_label(dir: &[u8]) -> Option<String> {
    for entry in dir.chunks_exact(32) {
        match entry[0] {
            0x00 => return None,
            0xE5 => continue,
            _ => {}
        }
        if entry[11] != 0x0F && entry[11] & 0x18 == 0x08 {
            return text(&entry[..11]);
        }
    }
    None
}

/// A label field: ASCII, padded with spaces (or NULs); `None` when empty.
fn text(field: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(field);
    let s = s.trim_end_matches([' ', '\0']);
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A FAT16 boot sector as mkfs.vfat writes it: 512-byte sectors, 4 per
    /// cluster, 4 reserved, 2 FATs of 8 sectors, 512 root entries.
    fn fat16(boot_label: &[u8; 11]) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 4;
        b[14..16].copy_from_slice(&4u16.to_le_bytes());
        b[16] = 2;
        b[17..19].copy_from_slice(&512u16.to_le_bytes());
        b[22..24].copy_from_slice(&8u16.to_le_bytes());
        b[38] = 0x29;
        b[43..54].copy_from_slice(boot_label);
        b[54..62].copy_from_slice(b"FAT16   ");
        b[510..512].copy_from_slice(&[0x55, 0xAA]);
        b
    }

    fn dir_entry(name: &[u8; 11], attr: u8) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(name);
        e[11] = attr;
        e
    }

    fn device(parts: &[(u64, &[u8])]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(64 * 1024).unwrap();
        for (at, bytes) in parts {
            f.seek(SeekFrom::Start(*at)).unwrap();
            f.write_all(bytes).unwrap();
        }
        f
    }

    #[test]
    fn fat16_label_from_the_root_directory_first() {
        let boot = fat16(b"NO NAME    ");
        // Root directory: sector 4 + 2 * 8 = 20.
        let mut root = Vec::new();
        root.extend(dir_entry(b"USER-DATA  ", 0x20));
        root.extend(dir_entry(b"cidata     ", 0x08));
        let dev = device(&[(0, &boot), (20 * 512, &root)]);
        assert_eq!(read(dev.path()).as_deref(), Some("cidata"));
    }

    #[test]
    fn fat_label_entries_as_tools_write_them() {
        // The archive bit set on the label entry (0x28), after a deleted
        // label (0xE5) and a long-name entry (0x0F, not a label).
        let mut root = Vec::new();
        let mut deleted = dir_entry(b"OLDLABEL   ", 0x08);
        deleted[0] = 0xE5;
        root.extend(deleted);
        root.extend(dir_entry(b"Bcidata    ", 0x0F));
        root.extend(dir_entry(b"CIDATA     ", 0x28));
        let dev = device(&[(0, &fat16(b"NO NAME    ")), (20 * 512, &root)]);
        assert_eq!(read(dev.path()).as_deref(), Some("CIDATA"));
        // A directory is not a label (0x18).
        let dev = device(&[
            (0, &fat16(b"cidata     ")),
            (20 * 512, &dir_entry(b"DATA       ", 0x18)),
        ]);
        assert_eq!(read(dev.path()).as_deref(), Some("cidata"));
        // FAT12, as mkfs.vfat makes a small seed.
        let mut b = fat16(b"cidata     ");
        b[54..62].copy_from_slice(b"FAT12   ");
        let dev = device(&[(0, &b)]);
        assert_eq!(read(dev.path()).as_deref(), Some("cidata"));
        // A root directory past the end of the device: the boot sector's.
        let mut far = fat16(b"cidata     ");
        far[22..24].copy_from_slice(&60000u16.to_le_bytes());
        let dev = device(&[(0, &far)]);
        assert_eq!(read(dev.path()).as_deref(), Some("cidata"));
    }

    #[test]
    fn fat_boot_sector_label_when_the_root_has_none() {
        let boot = fat16(b"CIDATA     ");
        let lfn = dir_entry(b"Auser-data ", 0x0F);
        let dev = device(&[(0, &boot), (20 * 512, &lfn)]);
        assert_eq!(read(dev.path()).as_deref(), Some("CIDATA"));
        // "NO NAME" is FAT for "no label".
        let dev = device(&[(0, &fat16(b"NO NAME    "))]);
        assert_eq!(read(dev.path()), None);
    }

    #[test]
    fn fat32_label_from_the_root_cluster() {
        let mut b = fat16(b"NO NAME    ");
        b[13] = 1;
        b[14..16].copy_from_slice(&32u16.to_le_bytes());
        b[17..19].copy_from_slice(&0u16.to_le_bytes());
        b[22..24].copy_from_slice(&0u16.to_le_bytes());
        b[36..40].copy_from_slice(&10u32.to_le_bytes());
        b[44..48].copy_from_slice(&2u32.to_le_bytes());
        b[38] = 0;
        b[54..62].copy_from_slice(&[0; 8]);
        b[66] = 0x29;
        b[71..82].copy_from_slice(b"NO NAME    ");
        b[82..90].copy_from_slice(b"FAT32   ");
        // Cluster 2 is the first data sector: 32 + 2 * 10 = 52.
        let dev = device(&[(0, &b), (52 * 512, &dir_entry(b"CIDATA     ", 0x08))]);
        assert_eq!(read(dev.path()).as_deref(), Some("CIDATA"));
    }

    #[test]
    fn iso9660_volume_identifier() {
        let mut pvd = [0u8; 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[40..72].copy_from_slice(b"cidata                          ");
        let dev = device(&[(ISO_PVD_OFFSET, &pvd)]);
        assert_eq!(read(dev.path()).as_deref(), Some("cidata"));
    }

    #[test]
    fn neither_fat_nor_iso9660_has_no_label() {
        let dev = device(&[(1024, b"ext4 is somewhere else")]);
        assert_eq!(read(dev.path()), None);
        let short = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(read(short.path()), None);
        assert_eq!(read(Path::new("/nonexistent/device")), None);
    }
}
