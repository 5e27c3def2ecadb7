//! The install payload on the live medium ([`maculaos_boot::media`]): its
//! manifest, read and checked before anything is written.

use crate::error::{InstallError, StepError};
use maculaos_boot::layout::Layout;
use maculaos_boot::media::{InstallManifest, PayloadFile, INSTALL_MANIFEST};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// GRUB's BIOS core image must fit the 1 MiB BIOS boot partition.
const CORE_IMG_MAX: u64 = 1 << 20;

/// The payload in a directory (the mounted medium, or `--from DIR`).
#[derive(Debug, Clone)]
pub struct Payload {
    pub dir: PathBuf,
    pub manifest: InstallManifest,
}

/// The architecture name the image builder writes for this machine.
pub fn node_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl Payload {
    /// Read `<dir>/install/manifest.json` and check that every file it names
    /// is there with the size it gives, and that the slot image fits a slot.
    /// The contents are hashed while they are written ([`crate::write()`]).
    pub fn open(dir: &Path) -> Result<Payload, InstallError> {
        let bad = |problem: String| InstallError::Payload {
            dir: dir.to_owned(),
            problem,
        };
        let path = dir.join(INSTALL_MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                bad(format!(
                    "no {INSTALL_MANIFEST}: boot the MaculaOS installation medium (ISO), or pass --from DIR with the medium's contents"
                ))
            } else {
                bad(format!("reading {INSTALL_MANIFEST}: {e}"))
            }
        })?;
        let manifest: InstallManifest = serde_json::from_str(&text)
            .map_err(|e| bad(format!("{INSTALL_MANIFEST} is not a valid manifest: {e}")))?;
        check_manifest(&manifest, dir, node_arch()).map_err(bad)?;
        Ok(Payload {
            dir: dir.to_owned(),
            manifest,
        })
    }

    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    /// Where a payload file is.
    pub fn path(&self, f: &PayloadFile) -> PathBuf {
        self.dir.join(&f.path)
    }

    /// A small payload file, read whole and checked against its sha256.
    pub fn read_verified(&self, f: &PayloadFile) -> Result<Vec<u8>, StepError> {
        let path = self.path(f);
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut r| r.read_to_end(&mut bytes))
            .map_err(crate::error::io_step(format!("reading {}", path.display())))?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != f.sha256 || bytes.len() as u64 != f.size {
            return Err(StepError::Damaged {
                file: f.path.clone(),
                expected: f.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

/// The manifest's files, with what each one is (for messages).
fn files(m: &InstallManifest) -> [(&'static str, &PayloadFile); 7] {
    [
        ("slot image", &m.slot),
        ("kernel", &m.kernel),
        ("initrd", &m.initrd),
        ("GRUB boot.img", &m.boot_img),
        ("GRUB core.img", &m.core_img),
        ("GRUB EFI binary", &m.efi),
        ("grub.cfg", &m.grub_cfg),
    ]
}

/// Every check of the manifest that reads no more than file sizes.
pub fn check_manifest(m: &InstallManifest, dir: &Path, arch: &str) -> Result<(), String> {
    if m.arch != arch {
        return Err(format!(
            "it installs MaculaOS for {}, this machine is {arch}",
            m.arch
        ));
    }
    for (what, f) in files(m) {
        let rel = Path::new(&f.path);
        let plain = !f.path.is_empty()
            && rel
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !plain {
            return Err(format!(
                "the {what} path `{}` is not a path inside the medium",
                f.path
            ));
        }
        if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("the {what} ({}) has no valid sha256", f.path));
        }
        let path = dir.join(rel);
        let len = std::fs::metadata(&path)
            .map_err(|e| format!("the {what} {}: {e}", path.display()))?
            .len();
        if len != f.size {
            return Err(format!(
                "the {what} {} is {len} bytes, the manifest says {}: the medium is damaged or incomplete",
                path.display(),
                f.size
            ));
        }
    }
    let slot_size = Layout::default().slot_size;
    if m.slot.size > slot_size {
        return Err(format!(
            "the slot image is {} bytes, more than a slot holds ({slot_size})",
            m.slot.size
        ));
    }
    if m.boot_img.size != 512 {
        return Err(format!(
            "GRUB boot.img is {} bytes, not 512",
            m.boot_img.size
        ));
    }
    if m.core_img.size > CORE_IMG_MAX {
        return Err(format!(
            "GRUB core.img is {} bytes, more than the BIOS boot partition holds ({CORE_IMG_MAX})",
            m.core_img.size
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use maculaos_boot::media::LIVE_ROOT;

    /// A payload directory with small fake files (a core.img with a valid
    /// blocklist, a 512-byte boot.img) and its manifest.
    pub(crate) fn fake_payload(dir: &Path, slot_bytes: usize) -> InstallManifest {
        let mut core = vec![0x11u8; 512 * 4];
        // The blocklist length of GRUB's core.img first sector: 3 more sectors.
        core[0x200 - 12 + 8..0x200 - 12 + 10].copy_from_slice(&3u16.to_le_bytes());
        let slot: Vec<u8> = (0..slot_bytes).map(|i| (i % 251) as u8).collect();
        let files: Vec<(&str, Vec<u8>)> = vec![
            (LIVE_ROOT, slot),
            ("boot/vmlinuz", b"kernel".repeat(1000)),
            ("boot/initrd.img", b"initrd".repeat(3000)),
            ("install/boot.img", vec![0x22u8; 512]),
            ("install/core.img", core),
            ("install/BOOTX64.EFI", b"MZ efi".to_vec()),
            ("install/grub.cfg", b"# grub.cfg\n".to_vec()),
        ];
        let mut pf = Vec::new();
        for (rel, bytes) in &files {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            pf.push(PayloadFile {
                path: rel.to_string(),
                size: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(bytes)),
            });
        }
        let m = InstallManifest {
            version: "1.2.3".into(),
            arch: node_arch().into(),
            slot: pf[0].clone(),
            kernel: pf[1].clone(),
            initrd: pf[2].clone(),
            boot_img: pf[3].clone(),
            core_img: pf[4].clone(),
            efi: pf[5].clone(),
            grub_cfg: pf[6].clone(),
        };
        std::fs::write(
            dir.join(INSTALL_MANIFEST),
            serde_json::to_string_pretty(&m).unwrap(),
        )
        .unwrap();
        m
    }

    #[test]
    fn a_complete_payload_opens() {
        let d = tempfile::tempdir().unwrap();
        let m = fake_payload(d.path(), 3 << 20);
        let p = Payload::open(d.path()).unwrap();
        assert_eq!(p.manifest, m);
        assert_eq!(p.version(), "1.2.3");
        assert_eq!(p.read_verified(&m.kernel).unwrap().len(), 6000);
    }

    #[test]
    fn no_manifest_says_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let e = Payload::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("boot the MaculaOS installation medium"), "{e}");
        std::fs::create_dir_all(d.path().join("install")).unwrap();
        std::fs::write(d.path().join(INSTALL_MANIFEST), "{}").unwrap();
        let e = Payload::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a valid manifest"), "{e}");
    }

    #[test]
    fn missing_or_wrong_size_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let m = fake_payload(d.path(), 1 << 20);
        std::fs::write(d.path().join("boot/initrd.img"), b"short").unwrap();
        let e = Payload::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("initrd"), "{e}");
        assert!(e.contains("is 5 bytes, the manifest says 18000"), "{e}");
        std::fs::remove_file(d.path().join("boot/initrd.img")).unwrap();
        assert!(Payload::open(d.path()).is_err());
        let mut bad = m.clone();
        bad.kernel.path = "../etc/passwd".into();
        assert!(check_manifest(&bad, d.path(), node_arch())
            .unwrap_err()
            .contains("not a path inside the medium"));
        assert!(check_manifest(&m, d.path(), "riscv64")
            .unwrap_err()
            .contains("this machine is riscv64"));
    }

    #[test]
    fn a_damaged_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        let m = fake_payload(d.path(), 1 << 20);
        std::fs::write(d.path().join("boot/vmlinuz"), b"x".repeat(6000)).unwrap();
        let p = Payload::open(d.path()).unwrap();
        let e = p.read_verified(&m.kernel).unwrap_err();
        assert!(matches!(e, StepError::Damaged { .. }));
        assert!(e
            .to_string()
            .starts_with("boot/vmlinuz on the installation medium is damaged"));
    }
}
