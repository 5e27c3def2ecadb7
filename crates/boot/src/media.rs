//! The installation medium (the live ISO): how init finds it, where the
//! running system sees it, and the install payload it carries for
//! `maculaos install`.
//!
//! ```text
//! /boot/vmlinuz, /boot/initrd.img   kernel and initramfs (live and installed alike)
//! /boot/grub/grub.cfg               the ISO's menu: live, install
//! /live/root.squashfs               the slot image: the live root, and slot A once installed
//! /install/manifest.json            [`InstallManifest`]
//! /install/boot.img, core.img       GRUB for BIOS disks (patched by the installer)
//! /install/BOOTX64.EFI              GRUB for UEFI disks
//! /install/grub.cfg                 the installed disk's boot menu
//! ```

use serde::{Deserialize, Serialize};

/// ISO 9660 volume id of the MaculaOS live medium.
pub const LABEL_LIVE: &str = "MACULA_LIVE";
/// GPT partition name or ext4 label of the partition that keeps live
/// mode's `/var` across reboots (with `maculaos.live.persistence`).
pub const LABEL_PERSIST: &str = "MACULA_PERSIST";
/// Where the running live system has the medium mounted (read-only).
pub const MEDIUM_DIR: &str = "/run/maculaos/medium";
/// The root image on the medium.
pub const LIVE_ROOT: &str = "live/root.squashfs";
/// The install payload's manifest on the medium.
pub const INSTALL_MANIFEST: &str = "install/manifest.json";

/// One file of the install payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadFile {
    /// Path relative to the medium's root.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `install/manifest.json`: what the medium installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallManifest {
    pub version: String,
    pub arch: String,
    /// The slot image written to `MACULA_ROOT_A` (same as the live root).
    pub slot: PayloadFile,
    pub kernel: PayloadFile,
    pub initrd: PayloadFile,
    /// GRUB's BIOS MBR code, unpatched.
    pub boot_img: PayloadFile,
    /// GRUB's BIOS core image (prefix `(,gpt2)/grub`), unpatched.
    pub core_img: PayloadFile,
    /// GRUB for UEFI (`EFI/BOOT/BOOTX64.EFI` on the ESP).
    pub efi: PayloadFile,
    /// The installed disk's `grub/grub.cfg`.
    pub grub_cfg: PayloadFile,
}

/// Offset of the primary volume descriptor in an ISO 9660 filesystem.
const PVD_OFFSET: usize = 0x8000;
/// Bytes to read from a device to get its ISO 9660 volume id.
pub const ISO_HEAD_LEN: usize = PVD_OFFSET + 2048;

/// The ISO 9660 volume id in the first [`ISO_HEAD_LEN`] bytes of a device,
/// or `None` when it holds no ISO 9660 filesystem.
pub fn iso_volume_id(head: &[u8]) -> Option<String> {
    let pvd = head.get(PVD_OFFSET..PVD_OFFSET + 72)?;
    // Type 1 (primary volume descriptor), "CD001", version 1.
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" || pvd[6] != 1 {
        return None;
    }
    let id = std::str::from_utf8(&pvd[40..72]).ok()?;
    Some(id.trim_end_matches([' ', '\0']).to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn iso_head(id: &str) -> Vec<u8> {
        let mut h = vec![0u8; ISO_HEAD_LEN];
        h[PVD_OFFSET] = 1;
        h[PVD_OFFSET + 1..PVD_OFFSET + 6].copy_from_slice(b"CD001");
        h[PVD_OFFSET + 6] = 1;
        let mut field = [b' '; 32];
        field[..id.len()].copy_from_slice(id.as_bytes());
        h[PVD_OFFSET + 40..PVD_OFFSET + 72].copy_from_slice(&field);
        h
    }

    #[test]
    fn reads_the_volume_id() {
        assert_eq!(
            iso_volume_id(&iso_head(LABEL_LIVE)).as_deref(),
            Some(LABEL_LIVE)
        );
        assert_eq!(
            iso_volume_id(&iso_head("cidata")).as_deref(),
            Some("cidata")
        );
    }

    #[test]
    fn not_an_iso() {
        assert_eq!(iso_volume_id(&vec![0u8; ISO_HEAD_LEN]), None);
        assert_eq!(iso_volume_id(&[1, 2, 3]), None);
        let mut h = iso_head(LABEL_LIVE);
        h[PVD_OFFSET + 3] = b'X';
        assert_eq!(iso_volume_id(&h), None);
    }

    #[test]
    fn manifest_round_trips() {
        let f = |p: &str| PayloadFile {
            path: p.into(),
            size: 1,
            sha256: "00".into(),
        };
        let m = InstallManifest {
            version: "1.0.0".into(),
            arch: "amd64".into(),
            slot: f(LIVE_ROOT),
            kernel: f("boot/vmlinuz"),
            initrd: f("boot/initrd.img"),
            boot_img: f("install/boot.img"),
            core_img: f("install/core.img"),
            efi: f("install/BOOTX64.EFI"),
            grub_cfg: f("install/grub.cfg"),
        };
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<InstallManifest>(&j).unwrap(), m);
    }
}
