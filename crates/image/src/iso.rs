//! The live ISO: one hybrid image that boots from CD and USB stick, BIOS
//! and UEFI (grub-mkrescue and xorriso do the El Torito, MBR and GPT
//! parts). It holds the same kernel, initramfs and slot image as the disk
//! image, plus the install payload `maculaos install` writes to a disk
//! (layout in [`maculaos_boot::media`]).

use crate::disk::Grub;
use crate::util::{sha256_file, Partial};
use anyhow::{Context, Result};
use maculaos_boot::media::{InstallManifest, PayloadFile, INSTALL_MANIFEST, LABEL_LIVE, LIVE_ROOT};
use maculaos_runner::Cmd;
use std::fs;
use std::path::Path;

/// What goes onto the ISO besides GRUB's own files.
pub struct IsoInputs<'a> {
    pub version: &'a str,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub squashfs: &'a Path,
    pub grub: &'a Grub,
}

/// Put `src` at `dst`: a hard link when they share a filesystem (the
/// 200 MiB slot image need not be copied for xorriso to read it), else a copy.
fn place(src: &Path, dst: &Path) -> Result<()> {
    if let Some(dir) = dst.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if fs::hard_link(src, dst).is_err() {
        fs::copy(src, dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

fn payload(tree: &Path, rel: &str) -> Result<PayloadFile> {
    let p = tree.join(rel);
    Ok(PayloadFile {
        path: rel.to_string(),
        size: fs::metadata(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .len(),
        sha256: sha256_file(&p)?,
    })
}

/// Build the ISO tree under `work` and write the ISO to `out` (via a
/// `.partial` file).
pub fn make_iso(image_dir: &Path, work: &Path, inputs: &IsoInputs, out: &Path) -> Result<()> {
    let tree = work.join("iso-tree");
    crate::rootfs::remove_tree(&tree)?;
    let grub_dir = image_dir.join("grub");
    place(inputs.kernel, &tree.join("boot/vmlinuz"))?;
    place(inputs.initrd, &tree.join("boot/initrd.img"))?;
    place(inputs.squashfs, &tree.join(LIVE_ROOT))?;
    fs::create_dir_all(tree.join("boot/grub"))?;
    let menu = fs::read_to_string(grub_dir.join("iso.cfg"))
        .with_context(|| format!("reading {}", grub_dir.join("iso.cfg").display()))?;
    fs::write(
        tree.join("boot/grub/grub.cfg"),
        crate::rootfs::render(&menu, &[("VERSION", inputs.version)]),
    )
    .context("writing the ISO's grub.cfg")?;
    let install = |name: &str| format!("install/{name}");
    place(
        &Path::new(crate::disk::GRUB_BIOS_DIR).join("boot.img"),
        &tree.join(install("boot.img")),
    )?;
    place(&inputs.grub.core_img, &tree.join(install("core.img")))?;
    place(&inputs.grub.efi, &tree.join(install("BOOTX64.EFI")))?;
    place(&grub_dir.join("grub.cfg"), &tree.join(install("grub.cfg")))?;
    let manifest = InstallManifest {
        version: inputs.version.to_string(),
        arch: crate::ARCH.to_string(),
        slot: payload(&tree, LIVE_ROOT)?,
        kernel: payload(&tree, "boot/vmlinuz")?,
        initrd: payload(&tree, "boot/initrd.img")?,
        boot_img: payload(&tree, &install("boot.img"))?,
        core_img: payload(&tree, &install("core.img"))?,
        efi: payload(&tree, &install("BOOTX64.EFI"))?,
        grub_cfg: payload(&tree, &install("grub.cfg"))?,
    };
    fs::write(
        tree.join(INSTALL_MANIFEST),
        serde_json::to_string_pretty(&manifest)?,
    )
    .context("writing the install manifest")?;

    let part = Partial::new(out);
    Cmd::new("grub-mkrescue")
        .hint("apt-get install grub-common xorriso mtools")
        .arg("-o")
        .arg(part.path())
        .arg(&tree)
        // After "--": options for xorriso's mkisofs emulation. maculaos-init
        // finds the medium by this volume id.
        .args(["--", "-volid", LABEL_LIVE])
        .quiet()
        .run()?;
    part.commit()?;
    crate::rootfs::remove_tree(&tree)?;
    Ok(())
}
