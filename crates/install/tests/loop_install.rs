//! The whole install ([`maculaos_install::write`]) onto a loop device, then
//! again over it with force: real sfdisk, mkfs, mount. Needs root and loop
//! devices, so it only runs when asked:
//! `sudo cargo test -p maculaos-install -- --ignored`.

#![allow(clippy::unwrap_used)]

use maculaos_boot::media::{InstallManifest, PayloadFile, INSTALL_MANIFEST, LIVE_ROOT};
use maculaos_install::disks::{parse_lsblk, DevKind, Disk, LSBLK_COLUMNS};
use maculaos_install::{Options, Payload, Plan, Printer, Refusal};
use maculaos_runner::Cmd;
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const DISK_SIZE: u64 = 6 << 30;
const SLOT_BYTES: usize = 8 << 20;
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB me@host";

/// The loop device, detached when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Cmd::new("losetup").arg("--detach").arg(&self.0).run();
    }
}

fn fake_payload(dir: &Path) -> InstallManifest {
    let mut core = vec![0x11u8; 512 * 4];
    core[0x200 - 12 + 8..0x200 - 12 + 10].copy_from_slice(&3u16.to_le_bytes());
    let slot: Vec<u8> = (0..SLOT_BYTES).map(|i| (i * 7 % 253) as u8).collect();
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
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        pf.push(PayloadFile {
            path: rel.to_string(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        });
    }
    let m = InstallManifest {
        version: "9.8.7".into(),
        arch: maculaos_install::payload::node_arch().into(),
        slot: pf[0].clone(),
        kernel: pf[1].clone(),
        initrd: pf[2].clone(),
        boot_img: pf[3].clone(),
        core_img: pf[4].clone(),
        efi: pf[5].clone(),
        grub_cfg: pf[6].clone(),
    };
    fs::write(
        dir.join(INSTALL_MANIFEST),
        serde_json::to_string(&m).unwrap(),
    )
    .unwrap();
    m
}

/// The loop device as lsblk sees it, as a disk (lsblk says "loop", which
/// the installer refuses; the layout on it is what is checked here).
fn as_disk(dev: &str) -> Disk {
    let json = Cmd::new("lsblk")
        .args(["--json", "--bytes", "--output", LSBLK_COLUMNS])
        .arg(dev)
        .output()
        .unwrap()
        .replacen("\"type\":\"loop\"", "\"type\":\"disk\"", 1)
        .replacen("\"type\": \"loop\"", "\"type\": \"disk\"", 1);
    let mut disks = parse_lsblk(&json).unwrap();
    assert_eq!(disks.len(), 1, "{json}");
    let d = disks.remove(0);
    assert_eq!(d.kind, DevKind::Disk);
    d
}

fn install(plan: &Plan, payload: &Payload, config: &str, work: &Path) {
    let opts = Options {
        mount_base: work.join("mnt"),
        partition_wait: Duration::from_secs(30),
        ..Options::default()
    };
    let mut printer = Printer::default();
    let done = maculaos_install::write(plan, payload, config, &opts, &mut |r| {
        if let Some(l) = printer.line(&r) {
            println!("{l}");
        }
    })
    .unwrap();
    println!("{}", done.message());
    assert_eq!(done.version, "9.8.7");
}

fn check_installed(dev: &str, m: &InstallManifest, medium: &Path, work: &Path, config: &str) {
    let p = |n: u32| maculaos_install::disks::partition_path(dev, n);
    // The GPT, as sfdisk reads it back.
    let dump: serde_json::Value =
        serde_json::from_str(&Cmd::new("sfdisk").arg("--json").arg(dev).output().unwrap()).unwrap();
    let parts = dump["partitiontable"]["partitions"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "MACULA_BIOS",
            "MACULA_ESP",
            "MACULA_ROOT_A",
            "MACULA_ROOT_B",
            "MACULA_DATA"
        ]
    );
    assert_eq!(
        parts[4]["type"].as_str().unwrap(),
        maculaos_boot::TYPE_LINUX_FS
    );
    let end = parts[4]["start"].as_u64().unwrap() + parts[4]["size"].as_u64().unwrap();
    assert_eq!(end * 512, DISK_SIZE - (1 << 20), "data fills the disk");
    // GRUB for BIOS: the MBR points at core.img, core.img at its next sector.
    let mut disk = fs::File::open(dev).unwrap();
    let mut first = vec![0u8; (1 << 20) + 512];
    std::io::Read::read_exact(&mut disk, &mut first).unwrap();
    assert_eq!(&first[0x5c..0x64], &2048u64.to_le_bytes());
    assert_eq!(&first[0x66..0x68], &[0x90, 0x90]);
    assert_eq!(&first[510..512], &[0x55, 0xaa]);
    let core = &first[1 << 20..];
    assert_eq!(&core[0x200 - 12..0x200 - 4], &2049u64.to_le_bytes());
    // Slot A.
    let mut a = vec![0u8; SLOT_BYTES];
    std::io::Read::read_exact(&mut fs::File::open(p(3)).unwrap(), &mut a).unwrap();
    assert_eq!(a, fs::read(medium.join(LIVE_ROOT)).unwrap());
    // Slot B carries no old signature.
    let blkid_b = Cmd::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(p(4))
        .output();
    assert!(
        blkid_b
            .as_ref()
            .map(|s| s.trim().is_empty())
            .unwrap_or(true),
        "{blkid_b:?}"
    );
    // The ESP.
    let mnt = work.join("check");
    fs::create_dir_all(&mnt).unwrap();
    Cmd::new("mount")
        .args(["-o", "ro", &p(2)])
        .arg(&mnt)
        .run()
        .unwrap();
    let esp = |rel: &str| fs::read(mnt.join(rel));
    let grubenv = maculaos_boot::grubenv::read(&mnt.join("grub/grubenv"));
    let results = (
        esp("EFI/BOOT/BOOTX64.EFI"),
        esp("grub/grub.cfg"),
        esp("slots/A/vmlinuz"),
        esp("slots/A/initrd.img"),
        esp("slots/A/slot.cfg"),
        mnt.join("slots/B").is_dir(),
    );
    Cmd::new("umount").arg(&mnt).run().unwrap();
    assert_eq!(
        results.0.unwrap(),
        fs::read(medium.join(&m.efi.path)).unwrap()
    );
    assert_eq!(results.1.unwrap(), b"# grub.cfg\n");
    assert_eq!(results.2.unwrap().len() as u64, m.kernel.size);
    assert_eq!(results.3.unwrap().len() as u64, m.initrd.size);
    assert_eq!(results.4.unwrap(), b"set maculaos_A_version=\"9.8.7\"\n");
    assert!(results.5);
    assert_eq!(grubenv.unwrap()["maculaos_slot"], "A");
    // The data partition and the configuration on it.
    let label = Cmd::new("blkid")
        .args(["-p", "-o", "value", "-s", "LABEL"])
        .arg(p(5))
        .output()
        .unwrap();
    assert_eq!(label.trim(), "MACULA_DATA");
    Cmd::new("mount")
        .args(["-o", "ro", &p(5)])
        .arg(&mnt)
        .run()
        .unwrap();
    let stored = fs::read_to_string(mnt.join("lib/maculaos/config.yaml"));
    let mode =
        fs::metadata(mnt.join("lib/maculaos/config.yaml")).map(|m| m.permissions().mode() & 0o777);
    let dir_mode = fs::metadata(mnt.join("lib/maculaos")).map(|m| m.permissions().mode() & 0o777);
    Cmd::new("umount").arg(&mnt).run().unwrap();
    assert_eq!(stored.unwrap(), config);
    assert_eq!(mode.unwrap(), 0o600);
    assert_eq!(dir_mode.unwrap(), 0o700);
}

#[test]
#[ignore = "needs root and loop devices: sudo cargo test -p maculaos-install -- --ignored"]
fn installs_onto_a_loop_device_and_again_with_force() {
    assert!(maculaos_install::is_root(), "run as root");
    let kernel_fs = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !["vfat", "ext4"].iter().all(|f| {
        kernel_fs
            .lines()
            .any(|l| l.trim_start_matches("nodev").trim() == *f)
    }) {
        eprintln!("skipped: this kernel cannot mount vfat and ext4 (/proc/filesystems)");
        return;
    }
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let medium = work.path().join("medium");
    let m = fake_payload(&medium);
    let payload = Payload::open(&medium).unwrap();
    let img = work.path().join("disk.img");
    fs::File::create(&img).unwrap().set_len(DISK_SIZE).unwrap();
    let dev = Cmd::new("losetup")
        .args(["--find", "--show", "--partscan"])
        .arg(&img)
        .output()
        .unwrap()
        .trim()
        .to_string();
    let _loop = Loop(dev.clone());

    let blank = as_disk(&dev);
    assert!(blank.is_blank(), "{blank:?}");
    let plan = Plan::new(&blank, None, false, m.slot.size).unwrap();
    println!("{}", plan.summary());
    let config = format!("maculaos:\n  hostname: loop-node\nssh_authorized_keys:\n  - {KEY}\n");
    install(&plan, &payload, &config, work.path());
    check_installed(&dev, &m, &medium, work.path(), &config);

    // Now it holds MaculaOS: refused without force, reinstalled with it.
    let used = as_disk(&dev);
    assert_eq!(used.partitions.len(), 5);
    // Names and filesystems come from udev's database (absent where no
    // udev runs); the partitions themselves always show.
    assert!(
        used.describe().contains("5 partitions: "),
        "{}",
        used.describe()
    );
    assert!(matches!(
        Plan::new(&used, None, false, m.slot.size),
        Err(Refusal::HoldsData { .. })
    ));
    // An old filesystem where the new slot B will be must not show through.
    let slot_b = maculaos_install::disks::partition_path(&dev, 4);
    Cmd::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&slot_b)
        .run()
        .unwrap();
    let plan = Plan::new(&used, None, true, m.slot.size).unwrap();
    let config = "k3s:\n  role: server\n".to_string();
    install(&plan, &payload, &config, work.path());
    check_installed(&dev, &m, &medium, work.path(), &config);
    assert_eq!(
        fs::read_dir(work.path().join("mnt")).unwrap().count(),
        0,
        "nothing left mounted"
    );
}
