//! GRUB, the EFI system partition and the GPT disk image, built without
//! mounting anything: mtools writes the FAT, sfdisk partitions a plain file,
//! and GRUB's BIOS boot code is placed by [`crate::bios`].

use crate::bios;
use crate::layout::{Layout, MIB, SECTOR};
use crate::util::{copy_into_at, Partial};
use anyhow::{bail, Context, Result};
use maculaos_boot::{Slot, LABEL_BIOS, LABEL_ESP};
use maculaos_runner::Cmd;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub(crate) const GRUB_BIOS_DIR: &str = "/usr/lib/grub/i386-pc";
const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";
/// Fixed FAT volume id, so the ESP image does not change from build to build.
const ESP_VOLUME_ID: &str = "4d414355";

fn module_list(grub_dir: &Path, file: &str) -> Result<Vec<String>> {
    let p = grub_dir.join(file);
    let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(crate::rootfs::read_package_list(&text))
}

/// The two GRUB images: BIOS core.img (prefix: the ESP, partition 2 of the
/// boot disk) and the removable-media EFI binary (prefix: /grub on the ESP it
/// was loaded from).
pub struct Grub {
    pub core_img: PathBuf,
    pub efi: PathBuf,
}

pub fn make_grub(image_dir: &Path, work: &Path) -> Result<Grub> {
    let grub_dir = image_dir.join("grub");
    let common = module_list(&grub_dir, "modules-common.txt")?;
    let core_img = work.join("core.img");
    let efi = work.join("BOOTX64.EFI");
    let esp_num = Layout::default()
        .part(LABEL_ESP)
        .map(|p| p.number)
        .unwrap_or(2);
    Cmd::new("grub-mkimage")
        .hint("apt-get install grub-common grub-pc-bin")
        .args(["-O", "i386-pc", "-d", GRUB_BIOS_DIR, "-o"])
        .arg(&core_img)
        .args(["-p", &format!("(,gpt{esp_num})/grub")])
        .args(&common)
        .args(module_list(&grub_dir, "modules-bios.txt")?)
        .quiet()
        .run()?;
    Cmd::new("grub-mkimage")
        .hint("apt-get install grub-common grub-efi-amd64-bin")
        .args(["-O", "x86_64-efi", "-d", GRUB_EFI_DIR, "-o"])
        .arg(&efi)
        .args(["-p", "/grub"])
        .args(&common)
        .args(module_list(&grub_dir, "modules-efi.txt")?)
        .quiet()
        .run()?;
    Ok(Grub { core_img, efi })
}

/// Boot files of one slot as they go onto the ESP.
pub struct SlotBoot<'a> {
    pub slot: Slot,
    pub version: &'a str,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The slot image's size and sha256, recorded in `slot.cfg`.
    pub image: maculaos_slots::SlotImage,
}

fn mtools(img: &Path) -> impl Fn(&str) -> Cmd + '_ {
    move |tool: &str| {
        Cmd::new(tool)
            .hint("apt-get install mtools")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(img)
    }
}

/// The FAT32 ESP image: GRUB for UEFI, the shared grub.cfg, a fresh grubenv
/// naming `default_slot`, and the boot files of each given slot.
pub fn make_esp(
    image_dir: &Path,
    work: &Path,
    grub: &Grub,
    slots: &[SlotBoot],
    size: u64,
    out: &Path,
) -> Result<()> {
    let _ = fs::remove_file(out);
    Cmd::new("mkfs.vfat")
        .hint("apt-get install dosfstools")
        .args(["-F", "32", "-n", LABEL_ESP, "-i", ESP_VOLUME_ID, "-C"])
        .arg(out)
        .arg((size / 1024).to_string())
        .quiet()
        .run()?;
    let m = mtools(out);
    m("mmd")
        .args([
            "::/EFI",
            "::/EFI/BOOT",
            "::/grub",
            "::/slots",
            "::/slots/A",
            "::/slots/B",
        ])
        .quiet()
        .run()?;
    let put = |src: &Path, dst: &str| {
        m("mcopy")
            .arg("-o")
            .arg(src)
            .arg(format!("::{dst}"))
            .quiet()
            .run()
    };
    put(&grub.efi, "/EFI/BOOT/BOOTX64.EFI")?;
    put(&image_dir.join("grub/grub.cfg"), "/grub/grub.cfg")?;
    let env = work.join("grubenv");
    let _ = fs::remove_file(&env);
    Cmd::new("grub-editenv")
        .arg(&env)
        .arg("create")
        .quiet()
        .run()?;
    let first = slots.first().map(|s| s.slot).unwrap_or(Slot::A);
    Cmd::new("grub-editenv")
        .arg(&env)
        .args(["set", &format!("maculaos_slot={first}")])
        .quiet()
        .run()?;
    put(&env, "/grub/grubenv")?;
    for s in slots {
        let dir = format!("/slots/{}", s.slot);
        put(s.kernel, &format!("{dir}/vmlinuz"))?;
        put(s.initrd, &format!("{dir}/initrd.img"))?;
        let cfg = work.join(format!("slot-{}.cfg", s.slot));
        fs::write(&cfg, slot_cfg(s.slot, s.version, &s.image))?;
        put(&cfg, &format!("{dir}/slot.cfg"))?;
    }
    Ok(())
}

/// The per-slot GRUB snippet: lets the menu show each slot's version.
pub use maculaos_slots::slot_cfg;

/// Assemble the disk image at `dest` (via a `.partial` file).
pub fn make_disk(
    layout: &Layout,
    grub: &Grub,
    esp: &Path,
    root_a: &Path,
    dest: &Path,
) -> Result<()> {
    let root_size = fs::metadata(root_a)?.len();
    if root_size > layout.slot_size {
        bail!(
            "the root image ({} MiB) does not fit a slot ({} MiB): trim image/packages or raise the slot size",
            root_size / MIB,
            layout.slot_size / MIB
        );
    }
    let part = Partial::new(dest);
    {
        let f = File::create(part.path())
            .with_context(|| format!("creating {}", part.path().display()))?;
        f.set_len(layout.disk_size())?;
    }
    Cmd::new("sfdisk")
        .hint("apt-get install fdisk")
        .args(["--no-reread", "--no-tell-kernel", "--quiet"])
        .arg(part.path())
        .stdin(layout.sfdisk_script())
        .quiet()
        .run()?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(part.path())
        .with_context(|| format!("opening {}", part.path().display()))?;
    let bios_part = layout
        .part(LABEL_BIOS)
        .context("layout has no BIOS boot partition")?;
    let core_lba = bios_part.start / SECTOR;
    let boot_img = fs::read(Path::new(GRUB_BIOS_DIR).join("boot.img"))?;
    let mbr_code = bios::patch_boot_img(&boot_img, core_lba)?;
    let core = fs::read(&grub.core_img)?;
    let core = bios::patch_core_img(&core, core_lba, bios_part.size as usize)?;
    let mut mbr = [0u8; 512];
    f.read_exact(&mut mbr)?;
    mbr[..mbr_code.len()].copy_from_slice(&mbr_code);
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&mbr)?;
    f.seek(SeekFrom::Start(bios_part.start))?;
    f.write_all(&core)?;
    let esp_part = layout.part(LABEL_ESP).context("layout has no ESP")?;
    copy_into_at(esp, &mut f, esp_part.start)
        .with_context(|| format!("writing the ESP into {}", dest.display()))?;
    let a = layout
        .part(Slot::A.label())
        .context("layout has no slot A")?;
    copy_into_at(root_a, &mut f, a.start)
        .with_context(|| format!("writing slot A into {}", dest.display()))?;
    f.sync_all()?;
    drop(f);
    part.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_cfg_parses() {
        // The real parser of GRUB's script language, from grub-common.
        if !maculaos_runner::have("grub-script-check") {
            eprintln!("grub-script-check not installed; skipping");
            return;
        }
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../image/grub/grub.cfg");
        maculaos_runner::Cmd::new("grub-script-check")
            .arg(&cfg)
            .quiet()
            .run()
            .unwrap();
    }
}
