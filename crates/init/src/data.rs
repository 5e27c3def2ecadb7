//! Decisions about the data partition: is it blank, ours, or something
//! else; does it need to grow to the end of the disk.

use crate::partitions::BlockDev;

/// Sysfs sizes are in 512-byte sectors whatever the disk's sector size.
pub const SECTOR: u64 = 512;
/// How much of the partition is read to decide whether it is blank.
pub const HEAD_LEN: usize = 1 << 20;
/// GPT keeps its backup header and table in the last 33 sectors.
pub const GPT_BACKUP_SECTORS: u64 = 33;
/// Free space after the partition below which growing is not worth it;
/// also absorbs the partitioner's 1 MiB alignment of the new end, so a
/// grown partition is not "grown" again on every boot.
pub const GROW_SLACK_SECTORS: u64 = 2048;

/// The ext2/3/4 superblock magic: 0xEF53 little-endian at byte 1080
/// (superblock at 1024, s_magic at offset 56).
const EXT4_MAGIC_OFFSET: usize = 1080;
const EXT4_MAGIC: [u8; 2] = [0x53, 0xEF];

/// What the start of the data partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataState {
    /// All zeroes: never used, so first boot formats it.
    Blank,
    /// An ext4 (ext2/3) filesystem: ours, mount it.
    Ext4,
    /// Anything else: someone's data, never format it.
    Foreign,
}

/// Classify the first bytes (up to [`HEAD_LEN`]) of the partition.
pub fn classify(head: &[u8]) -> DataState {
    if head.get(EXT4_MAGIC_OFFSET..EXT4_MAGIC_OFFSET + 2) == Some(&EXT4_MAGIC[..]) {
        DataState::Ext4
    } else if head.iter().all(|&b| b == 0) {
        DataState::Blank
    } else {
        DataState::Foreign
    }
}

/// Offsets in the ext4 superblock (which starts at byte 1024).
const SB_START: usize = 1024;
const SB_BLOCKS_COUNT_LO: usize = 0x04;
const SB_LOG_BLOCK_SIZE: usize = 0x18;
const SB_FEATURE_INCOMPAT: usize = 0x60;
const SB_BLOCKS_COUNT_HI: usize = 0x150;
const INCOMPAT_64BIT: u32 = 0x80;

/// How much smaller than its partition a filesystem may be before it is
/// grown. resize2fs leaves out a trailing block group too small to be
/// useful, so a few MiB always stay unused; without slack we would run it
/// on every boot.
pub const RESIZE_SLACK_BYTES: u64 = 32 << 20;

/// The size in bytes of the ext4 filesystem whose first bytes are `head`,
/// read from its superblock.
pub fn ext4_size(head: &[u8]) -> Option<u64> {
    let u32_at = |offset: usize| -> Option<u32> {
        let start = SB_START + offset;
        let bytes: [u8; 4] = head.get(start..start + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(bytes))
    };
    let log_block_size = u32_at(SB_LOG_BLOCK_SIZE)?;
    // ext4 blocks are 1 KiB to 64 KiB: anything else is not a superblock.
    if log_block_size > 6 {
        return None;
    }
    let hi = if u32_at(SB_FEATURE_INCOMPAT)? & INCOMPAT_64BIT != 0 {
        u32_at(SB_BLOCKS_COUNT_HI)?
    } else {
        0
    };
    let blocks = (u64::from(hi) << 32) | u64::from(u32_at(SB_BLOCKS_COUNT_LO)?);
    blocks.checked_mul(1024u64 << log_block_size)
}

/// The volume label of the ext4 filesystem whose first bytes are `head`
/// (`mkfs.ext4 -L`), if it has one.
pub fn ext4_label(head: &[u8]) -> Option<String> {
    const SB_VOLUME_NAME: usize = 0x78;
    if classify(head) != DataState::Ext4 {
        return None;
    }
    let start = SB_START + SB_VOLUME_NAME;
    let raw = head.get(start..start + 16)?;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let label = std::str::from_utf8(&raw[..end]).ok()?;
    (!label.is_empty()).then(|| label.to_string())
}

/// Whether a filesystem of `fs_bytes` should be grown to fill a partition
/// of `part_sectors` (the partition grew, now or on an earlier boot whose
/// resize did not happen).
pub fn fs_needs_resize(fs_bytes: u64, part_sectors: u64) -> bool {
    part_sectors.saturating_mul(SECTOR) > fs_bytes.saturating_add(RESIZE_SLACK_BYTES)
}

/// The size (in sectors) the partition can grow to, or `None` when it
/// already ends within [`GROW_SLACK_SECTORS`] of where it could end: the
/// start of the next partition on the disk, or the GPT backup at the end.
/// `disk_parts` are the partitions of the same disk (the partition itself
/// may be among them).
pub fn grow_target(part: &BlockDev, disk_sectors: u64, disk_parts: &[BlockDev]) -> Option<u64> {
    let start = part.start?;
    let end = start.checked_add(part.size)?;
    let next_start = disk_parts
        .iter()
        .filter(|p| p.disk == part.disk && p.name != part.name)
        .filter_map(|p| p.start)
        .filter(|&s| s >= end)
        .min();
    let limit = disk_sectors.saturating_sub(GPT_BACKUP_SECTORS);
    let limit = next_start.map_or(limit, |n| n.min(limit));
    if limit > end && limit - end > GROW_SLACK_SECTORS {
        Some(limit - start)
    } else {
        None
    }
}

/// A size in sectors for people: `7.5 GiB`, `512 MiB`.
pub fn human_size(sectors: u64) -> String {
    let bytes = sectors.saturating_mul(SECTOR);
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if bytes >= GIB {
        // Tenths, rounded down, in integers so big disks print exactly.
        let tenths = u128::from(bytes) * 10 / u128::from(GIB);
        format!("{}.{} GiB", tenths / 10, tenths % 10)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ext4_head() -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[1080] = 0x53;
        h[1081] = 0xEF;
        h[1024] = 7; // some superblock content
        h
    }

    #[test]
    fn classifies_heads() {
        assert_eq!(classify(&vec![0u8; HEAD_LEN]), DataState::Blank);
        assert_eq!(classify(&ext4_head()), DataState::Ext4);
        let mut xfs = vec![0u8; 4096];
        xfs[..4].copy_from_slice(b"XFSB");
        assert_eq!(classify(&xfs), DataState::Foreign);
        // Magic bytes the wrong way round are not ext4.
        let mut be = vec![0u8; 4096];
        be[1080] = 0xEF;
        be[1081] = 0x53;
        assert_eq!(classify(&be), DataState::Foreign);
        // A stray byte late in the first MiB is still "used".
        let mut late = vec![0u8; HEAD_LEN];
        late[HEAD_LEN - 1] = 1;
        assert_eq!(classify(&late), DataState::Foreign);
        assert_eq!(classify(&[]), DataState::Blank);
    }

    fn part(name: &str, start: u64, size: u64) -> BlockDev {
        BlockDev {
            name: name.into(),
            label: None,
            disk: Some("vda".into()),
            partnum: None,
            start: Some(start),
            size,
        }
    }

    #[test]
    fn grows_to_the_gpt_backup() {
        // 8 GiB disk image written to a 32 GiB disk.
        let data = part("vda5", 4_196_352, 16_777_216 - 4_196_352 - 2048);
        let disk = 67_108_864;
        assert_eq!(
            grow_target(&data, disk, std::slice::from_ref(&data)),
            Some(disk - GPT_BACKUP_SECTORS - 4_196_352)
        );
    }

    #[test]
    fn no_grow_when_already_at_the_end() {
        let disk = 67_108_864;
        // Ends exactly at the usable end.
        let full = part("vda5", 4_196_352, disk - GPT_BACKUP_SECTORS - 4_196_352);
        assert_eq!(grow_target(&full, disk, &[]), None);
        // Ends at the last 1 MiB boundary before it (what sfdisk makes).
        let aligned = part("vda5", 4_196_352, disk - 2048 - 4_196_352);
        assert_eq!(grow_target(&aligned, disk, &[]), None);
        // Just over the slack: grow.
        let short = part(
            "vda5",
            4_196_352,
            disk - GPT_BACKUP_SECTORS - 2049 - 4_196_352,
        );
        assert!(grow_target(&short, disk, &[]).is_some());
    }

    #[test]
    fn no_grow_into_a_following_partition() {
        let disk = 67_108_864;
        let data = part("vda5", 4_196_352, 1_048_576);
        let next = part("vda6", 4_196_352 + 1_048_576, 2048);
        assert_eq!(grow_target(&data, disk, &[data.clone(), next]), None);
        // A following partition further away limits the growth.
        let next = part("vda6", 8_390_656, 2048);
        assert_eq!(
            grow_target(&data, disk, &[next]),
            Some(8_390_656 - 4_196_352)
        );
        // A partition on another disk does not.
        let mut other = part("sda1", 5_300_000, 2048);
        other.disk = Some("sda".into());
        assert!(grow_target(&data, disk, &[other]).is_some());
        // Without a start sector nothing can be decided.
        let mut unknown = data.clone();
        unknown.start = None;
        assert_eq!(grow_target(&unknown, disk, &[]), None);
    }

    fn superblock(blocks: u64, log_block_size: u32, is_64bit: bool) -> Vec<u8> {
        let mut h = ext4_head();
        let sb = 1024;
        h[sb + 0x04..sb + 0x08].copy_from_slice(&(blocks as u32).to_le_bytes());
        h[sb + 0x18..sb + 0x1c].copy_from_slice(&log_block_size.to_le_bytes());
        if is_64bit {
            h[sb + 0x60..sb + 0x64].copy_from_slice(&INCOMPAT_64BIT.to_le_bytes());
            h[sb + 0x150..sb + 0x154].copy_from_slice(&((blocks >> 32) as u32).to_le_bytes());
        }
        h
    }

    #[test]
    fn reads_the_filesystem_label() {
        let mut h = superblock(1000, 2, false);
        assert_eq!(ext4_label(&h), None);
        h[1024 + 0x78..1024 + 0x78 + 14].copy_from_slice(b"MACULA_PERSIST");
        assert_eq!(ext4_label(&h).as_deref(), Some("MACULA_PERSIST"));
        // All 16 bytes used: no terminating NUL.
        h[1024 + 0x78..1024 + 0x88].copy_from_slice(b"ABCDEFGHIJKLMNOP");
        assert_eq!(ext4_label(&h).as_deref(), Some("ABCDEFGHIJKLMNOP"));
        // Not ext4: no label, whatever the bytes.
        h[1080] = 0;
        assert_eq!(ext4_label(&h), None);
        assert_eq!(ext4_label(&[]), None);
    }

    #[test]
    fn reads_the_filesystem_size() {
        // 2 GiB of 4 KiB blocks.
        assert_eq!(ext4_size(&superblock(524_288, 2, true)), Some(2 << 30));
        // 64-bit block count above 2^32 blocks (16 TiB + 4 KiB).
        assert_eq!(
            ext4_size(&superblock((1 << 32) + 1, 2, true)),
            Some(((1u64 << 32) + 1) * 4096)
        );
        // Without the 64bit feature the high word is ignored.
        let mut h = superblock(1000, 0, false);
        h[1024 + 0x150] = 0xff;
        assert_eq!(ext4_size(&h), Some(1_024_000));
        assert_eq!(ext4_size(&superblock(1, 20, false)), None);
        assert_eq!(ext4_size(&[0u8; 1100]), None);
    }

    #[test]
    fn resize_only_when_it_matters() {
        let part = 16_777_216; // 8 GiB
        assert!(fs_needs_resize(2 << 30, part));
        assert!(!fs_needs_resize(8 << 30, part));
        assert!(!fs_needs_resize((8 << 30) - (4 << 20), part));
        assert!(fs_needs_resize((8 << 30) - (64 << 20), part));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(2048), "1 MiB");
        assert_eq!(human_size(1_048_576), "512 MiB");
        assert_eq!(human_size(2_097_152), "1.0 GiB");
        assert_eq!(human_size(15_728_640), "7.5 GiB");
        assert_eq!(human_size(62_910_431), "29.9 GiB");
    }
}
