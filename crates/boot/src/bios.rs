//! Installing GRUB's BIOS boot code into a disk image without `grub-install`
//! (which wants a real block device). `boot.img` goes into the MBR and is told
//! where `core.img` starts; `core.img` goes into the BIOS boot partition and is
//! told where the rest of itself lies.

/// Offset in boot.img of the LBA of core.img's first sector.
const KERNEL_SECTOR: usize = 0x5c;
/// Offset in boot.img of the jump that trusts the BIOS's boot drive number;
/// replaced by two NOPs on hard disks, as grub-bios-setup does, because some
/// BIOSes pass a wrong drive number.
const DRIVE_CHECK: usize = 0x66;
/// Where the MBR's disk signature and partition table start (kept as written by sfdisk).
const MBR_CODE_END: usize = 0x1b8;
/// The blocklist at the end of core.img's first sector: u64 start, u16 len, u16 segment.
const BLOCKLIST_START: usize = 0x200 - 12;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BiosError {
    #[error("GRUB boot.img is {0} bytes, expected 512")]
    BootImgSize(usize),
    #[error("GRUB core.img is {size} bytes; the BIOS boot partition holds {room}")]
    CoreTooBig { size: usize, room: usize },
    #[error("GRUB core.img's first sector has no blocklist length (not an i386-pc core image?)")]
    NoBlocklist,
}

/// The MBR code area (first 440 bytes) to write over the protective MBR.
pub fn patch_boot_img(boot_img: &[u8], core_lba: u64) -> Result<Vec<u8>, BiosError> {
    if boot_img.len() != 512 {
        return Err(BiosError::BootImgSize(boot_img.len()));
    }
    let mut b = boot_img[..MBR_CODE_END].to_vec();
    b[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    b[DRIVE_CHECK] = 0x90;
    b[DRIVE_CHECK + 1] = 0x90;
    Ok(b)
}

/// core.img with its blocklist pointing at the sectors after its first one.
pub fn patch_core_img(core_img: &[u8], core_lba: u64, room: usize) -> Result<Vec<u8>, BiosError> {
    if core_img.len() > room {
        return Err(BiosError::CoreTooBig {
            size: core_img.len(),
            room,
        });
    }
    if core_img.len() < 512 {
        return Err(BiosError::NoBlocklist);
    }
    let mut c = core_img.to_vec();
    let len = u16::from_le_bytes([c[BLOCKLIST_START + 8], c[BLOCKLIST_START + 9]]);
    let needed = core_img.len().div_ceil(512) - 1;
    if len as usize != needed {
        return Err(BiosError::NoBlocklist);
    }
    c[BLOCKLIST_START..BLOCKLIST_START + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_img_gets_core_location_and_nops() {
        let mut img = vec![0u8; 512];
        img[DRIVE_CHECK] = 0xeb;
        img[DRIVE_CHECK + 1] = 0x05;
        let b = patch_boot_img(&img, 2048).unwrap();
        assert_eq!(b.len(), 440);
        assert_eq!(&b[KERNEL_SECTOR..KERNEL_SECTOR + 8], &2048u64.to_le_bytes());
        assert_eq!(&b[DRIVE_CHECK..DRIVE_CHECK + 2], &[0x90, 0x90]);
        assert!(patch_boot_img(&img[..100], 1).is_err());
    }

    #[test]
    fn core_img_blocklist_points_after_first_sector() {
        let mut core = vec![0u8; 512 * 4];
        core[BLOCKLIST_START + 8..BLOCKLIST_START + 10].copy_from_slice(&3u16.to_le_bytes());
        let c = patch_core_img(&core, 2048, 1 << 20).unwrap();
        assert_eq!(
            &c[BLOCKLIST_START..BLOCKLIST_START + 8],
            &2049u64.to_le_bytes()
        );
        assert_eq!(
            patch_core_img(&core, 2048, 1024),
            Err(BiosError::CoreTooBig {
                size: 2048,
                room: 1024
            })
        );
        let bad = vec![0u8; 1024];
        assert_eq!(
            patch_core_img(&bad, 2048, 1 << 20),
            Err(BiosError::NoBlocklist)
        );
    }
}
