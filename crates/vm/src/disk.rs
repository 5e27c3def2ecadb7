//! Preparing and inspecting raw disk images on the host, without booting
//! them: sparse working copies, growing, the partition table, files on the
//! EFI system partition, and GRUB's environment block on it.

use crate::{Result, VmError};
use maculaos_boot::LABEL_ESP;
use maculaos_runner::Cmd;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Where the GRUB environment block lives on the ESP.
pub const GRUBENV_PATH: &str = "/grub/grubenv";

const MTOOLS_HINT: &str = "apt-get install mtools";
const GRUB_HINT: &str = "apt-get install grub-common";

/// One GPT partition of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as in `/dev/vda<number>`.
    pub number: u32,
    /// The GPT partition label (empty when unset).
    pub name: String,
    pub start_bytes: u64,
    pub size_bytes: u64,
    /// The partition type GUID (or MBR type) as sfdisk prints it.
    pub type_id: String,
}

/// Copy an image keeping it sparse: release images are gigabytes of mostly
/// holes, and a dense copy per test would eat the disk and the time.
/// Shares blocks instead (reflink) where the filesystem can.
pub fn working_copy(src: &Path, dest: &Path) -> Result<()> {
    if !src.is_file() {
        return Err(VmError::Invalid {
            what: "making a working copy".to_string(),
            detail: format!("{} does not exist", src.display()),
        });
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(crate::io_err("creating", parent))?;
    }
    Cmd::new("cp")
        .args(["--sparse=always", "--reflink=auto", "--"])
        .arg(src)
        .arg(dest)
        .quiet()
        .run()?;
    Ok(())
}

/// Grow a raw image to `new_size_bytes`; the new space is a hole.
///
/// For raw images `qemu-img resize -f raw` does nothing but extend the file,
/// so this does that directly and needs no qemu-utils. Shrinking is refused:
/// it would cut off partitions (the same default as `qemu-img`).
pub fn resize(path: &Path, new_size_bytes: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(crate::io_err("opening the image", path))?;
    let size = f
        .metadata()
        .map_err(crate::io_err("reading the size of", path))?
        .len();
    if new_size_bytes < size {
        return Err(VmError::Invalid {
            what: format!("resizing {}", path.display()),
            detail: format!("{new_size_bytes} bytes is smaller than its {size} bytes; shrinking would cut off partitions"),
        });
    }
    f.set_len(new_size_bytes)
        .map_err(crate::io_err("growing the image", path))
}

#[derive(Deserialize)]
struct SfdiskJson {
    partitiontable: SfdiskTable,
}

#[derive(Deserialize)]
struct SfdiskTable {
    #[serde(default)]
    device: String,
    sectorsize: Option<u64>,
    #[serde(default)]
    partitions: Vec<SfdiskPartition>,
}

#[derive(Deserialize)]
struct SfdiskPartition {
    node: String,
    start: u64,
    size: u64,
    #[serde(rename = "type", default)]
    type_id: String,
    #[serde(default)]
    name: String,
}

/// The partitions of `image`, from `sfdisk --json`.
pub fn partitions(image: &Path) -> Result<Vec<Partition>> {
    let json = Cmd::new("sfdisk")
        .arg("--json")
        .arg(image)
        .quiet()
        .hint("apt-get install fdisk")
        .output()?;
    parse_sfdisk_json(&json).map_err(|detail| VmError::Invalid {
        what: format!("partition table of {}", image.display()),
        detail,
    })
}

fn parse_sfdisk_json(json: &str) -> Result<Vec<Partition>, String> {
    let parsed: SfdiskJson =
        serde_json::from_str(json).map_err(|e| format!("unreadable sfdisk --json output: {e}"))?;
    let table = parsed.partitiontable;
    let sector = table.sectorsize.unwrap_or(512);
    table
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // sfdisk names partitions <device><n> or <device>p<n>.
            let number = p
                .node
                .strip_prefix(table.device.as_str())
                .map(|rest| rest.trim_start_matches('p'))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| u32::try_from(i + 1).unwrap_or(u32::MAX));
            let bytes = |sectors: u64, what: &str| {
                sectors
                    .checked_mul(sector)
                    .ok_or_else(|| format!("partition {number} {what} overflows"))
            };
            Ok(Partition {
                number,
                name: p.name.clone(),
                start_bytes: bytes(p.start, "start")?,
                size_bytes: bytes(p.size, "size")?,
                type_id: p.type_id.clone(),
            })
        })
        .collect()
}

/// The partition of `image` with GPT label `label`.
pub fn partition_by_label(image: &Path, label: &str) -> Result<Partition> {
    let parts = partitions(image)?;
    if let Some(p) = parts.iter().find(|p| p.name == label) {
        return Ok(p.clone());
    }
    let found: Vec<String> = parts
        .iter()
        .map(|p| format!("{}={:?}", p.number, p.name))
        .collect();
    Err(VmError::NoPartition {
        image: image.to_owned(),
        label: label.to_string(),
        found: if found.is_empty() {
            "none".to_string()
        } else {
            found.join(", ")
        },
    })
}

/// `img@@offset`: mtools' way to address a FAT filesystem inside a disk image.
fn mtools_image(image: &Path, offset: u64) -> std::ffi::OsString {
    let mut s = image.as_os_str().to_owned();
    s.push(format!("@@{offset}"));
    s
}

fn fat_path(path_in_fat: &str) -> String {
    format!("::/{}", path_in_fat.trim_start_matches('/'))
}

fn mtools(program: &str) -> Cmd {
    // The ESP is not a floppy: mtools' geometry sanity check would reject it.
    Cmd::new(program)
        .env("MTOOLS_SKIP_CHECK", "1")
        .quiet()
        .hint(MTOOLS_HINT)
}

/// Copy `path_in_fat` out of the FAT filesystem starting `part_offset` bytes
/// into `image`, to `dest` (overwritten).
pub fn esp_get(image: &Path, part_offset: u64, path_in_fat: &str, dest: &Path) -> Result<()> {
    mtools("mcopy")
        // -n: overwrite `dest` without asking (there is no terminal to ask on).
        .args(["-n", "-i"])
        .arg(mtools_image(image, part_offset))
        .arg(fat_path(path_in_fat))
        .arg(dest)
        .run()?;
    Ok(())
}

/// Copy `src` into the FAT filesystem starting `part_offset` bytes into
/// `image`, as `path_in_fat` (overwritten; its directory must exist).
pub fn esp_put(image: &Path, part_offset: u64, src: &Path, path_in_fat: &str) -> Result<()> {
    mtools("mcopy")
        // -o: overwrite an existing file without asking.
        .args(["-o", "-i"])
        .arg(mtools_image(image, part_offset))
        .arg(src)
        .arg(fat_path(path_in_fat))
        .run()?;
    Ok(())
}

/// Run `grub-editenv <copy of the ESP's grubenv> <args…>`, and write the
/// result back if `write_back`. Returns what grub-editenv printed.
fn with_grubenv(image: &Path, args: &[String], write_back: bool) -> Result<String> {
    let esp = partition_by_label(image, LABEL_ESP)?;
    let dir = tempfile::tempdir().map_err(crate::io_err(
        "creating a temporary directory for the grubenv of",
        image,
    ))?;
    let env = dir.path().join("grubenv");
    esp_get(image, esp.start_bytes, GRUBENV_PATH, &env)?;
    let out = Cmd::new("grub-editenv")
        .arg(&env)
        .args(args)
        .quiet()
        .hint(GRUB_HINT)
        .output()?;
    if write_back {
        esp_put(image, esp.start_bytes, &env, GRUBENV_PATH)?;
    }
    Ok(out)
}

fn check_grubenv_name(image: &Path, name: &str) -> Result<()> {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(VmError::Invalid {
            what: format!("grubenv of {}", image.display()),
            detail: format!("{name:?} is not a GRUB variable name (letters, digits, _)"),
        })
    }
}

/// Set variables in the GRUB environment block on the image's ESP
/// (partition labelled [`LABEL_ESP`], file [`GRUBENV_PATH`]).
pub fn grubenv_set(image: &Path, vars: &[(&str, &str)]) -> Result<()> {
    if vars.is_empty() {
        return Ok(());
    }
    let mut args = vec!["set".to_string()];
    for (k, v) in vars {
        check_grubenv_name(image, k)?;
        // The block is one `name=value` per line.
        if v.contains('\n') {
            return Err(VmError::Invalid {
                what: format!("grubenv of {}", image.display()),
                detail: format!("the value of {k} contains a newline"),
            });
        }
        args.push(format!("{k}={v}"));
    }
    with_grubenv(image, &args, true).map(|_| ())
}

/// Remove variables from the GRUB environment block on the image's ESP.
pub fn grubenv_unset(image: &Path, names: &[&str]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let mut args = vec!["unset".to_string()];
    for n in names {
        check_grubenv_name(image, n)?;
        args.push(n.to_string());
    }
    with_grubenv(image, &args, true).map(|_| ())
}

/// The variables in the GRUB environment block on the image's ESP.
pub fn grubenv_list(image: &Path) -> Result<BTreeMap<String, String>> {
    let out = with_grubenv(image, &["list".to_string()], false)?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    const MIB: u64 = 1024 * 1024;

    fn missing_tools(tools: &[&str]) -> bool {
        let missing: Vec<&&str> = tools.iter().filter(|t| !maculaos_runner::have(t)).collect();
        if !missing.is_empty() {
            eprintln!("note: {missing:?} not installed; skipping");
        }
        !missing.is_empty()
    }

    /// A 48 MiB GPT disk: a 32 MiB FAT ESP at 1 MiB holding an empty
    /// grubenv, and an 8 MiB data partition.
    fn small_disk(dir: &Path) -> std::path::PathBuf {
        let img = dir.join("disk.raw");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(48 * MIB)
            .unwrap();
        Cmd::new("sfdisk")
            .args(["--no-reread", "--no-tell-kernel"])
            .arg(&img)
            .stdin(format!(
                "label: gpt\n\
                 start=2048, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"{LABEL_ESP}\"\n\
                 size=16384, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"MACULA_DATA\"\n"
            ))
            .quiet()
            .run()
            .unwrap();
        let esp = dir.join("esp.fat");
        Cmd::new("mkfs.vfat")
            .args(["-n", LABEL_ESP, "-C"])
            .arg(&esp)
            .arg("32768")
            .quiet()
            .run()
            .unwrap();
        let fat = std::fs::read(&esp).unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(MIB)).unwrap();
        f.write_all(&fat).unwrap();
        drop(f);
        mtools("mmd")
            .arg("-i")
            .arg(mtools_image(&img, MIB))
            .arg("::/grub")
            .run()
            .unwrap();
        let env = dir.join("grubenv.new");
        Cmd::new("grub-editenv")
            .arg(&env)
            .arg("create")
            .quiet()
            .run()
            .unwrap();
        esp_put(&img, MIB, &env, GRUBENV_PATH).unwrap();
        img
    }

    #[test]
    fn partitions_and_grubenv_round_trip() {
        if missing_tools(&["sfdisk", "mkfs.vfat", "mcopy", "mmd", "grub-editenv"]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = small_disk(dir.path());

        let parts = partitions(&img).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].number, 1);
        assert_eq!(parts[0].name, LABEL_ESP);
        assert_eq!(parts[0].start_bytes, MIB);
        assert_eq!(parts[0].size_bytes, 32 * MIB);
        assert_eq!(parts[0].type_id, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(parts[1].number, 2);
        assert_eq!(parts[1].name, "MACULA_DATA");
        assert_eq!(parts[1].start_bytes, 33 * MIB);
        assert_eq!(partition_by_label(&img, "MACULA_DATA").unwrap(), parts[1]);

        assert!(grubenv_list(&img).unwrap().is_empty());
        grubenv_set(&img, &[("next_slot", "B"), ("boot_tries", "3")]).unwrap();
        grubenv_set(&img, &[("boot_tries", "2"), ("note", "a b=c")]).unwrap();
        grubenv_unset(&img, &["next_slot"]).unwrap();
        let env = grubenv_list(&img).unwrap();
        assert_eq!(
            env,
            BTreeMap::from([
                ("boot_tries".to_string(), "2".to_string()),
                ("note".to_string(), "a b=c".to_string()),
            ])
        );

        // The block keeps GRUB's fixed size; esp_get overwrites an existing file.
        let out = dir.path().join("grubenv.out");
        std::fs::write(&out, b"old").unwrap();
        esp_get(&img, MIB, "grub/grubenv", &out).unwrap();
        let block = std::fs::read(&out).unwrap();
        assert_eq!(block.len(), 1024);
        assert!(block.starts_with(b"# GRUB Environment Block\n"));

        let e = grubenv_set(&img, &[("bad name", "x")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"bad name\" is not a GRUB variable name"),
            "{e}"
        );
        let e = esp_get(&img, MIB, "/grub/missing", &out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mcopy"), "{e}");
    }

    #[test]
    fn missing_esp_is_named() {
        if missing_tools(&["sfdisk"]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("noesp.raw");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 * MIB)
            .unwrap();
        Cmd::new("sfdisk")
            .args(["--no-reread", "--no-tell-kernel"])
            .arg(&img)
            .stdin("label: gpt\nsize=4096, name=\"OTHER\"\n")
            .quiet()
            .run()
            .unwrap();
        let e = grubenv_list(&img).unwrap_err().to_string();
        assert!(e.contains("no partition labelled MACULA_ESP"), "{e}");
        assert!(e.contains("1=\"OTHER\""), "{e}");
        assert!(e.contains("noesp.raw"), "{e}");
    }

    #[test]
    fn sfdisk_json_with_p_separator() {
        let json = r#"{"partitiontable": {"label": "gpt", "device": "/x/disk1",
            "unit": "sectors", "sectorsize": 4096, "partitions": [
            {"node": "/x/disk1p3", "start": 256, "size": 512, "type": "T", "name": "N"},
            {"node": "weird", "start": 1, "size": 1, "type": "T"}]}}"#;
        let p = parse_sfdisk_json(json).unwrap();
        assert_eq!(p[0].number, 3);
        assert_eq!(p[0].start_bytes, 256 * 4096);
        assert_eq!(p[0].size_bytes, 512 * 4096);
        assert_eq!(p[1].number, 2);
        assert_eq!(p[1].name, "");
        assert!(parse_sfdisk_json("nonsense").is_err());
    }

    #[test]
    fn working_copy_stays_sparse_and_resize_grows() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.raw");
        let mut f = std::fs::File::create(&src).unwrap();
        f.set_len(256 * MIB).unwrap();
        f.seek(SeekFrom::Start(100 * MIB)).unwrap();
        f.write_all(&[0xA5; 4096]).unwrap();
        drop(f);
        let dest = dir.path().join("sub/dest.raw");
        working_copy(&src, &dest).unwrap();
        let meta = std::fs::metadata(&dest).unwrap();
        assert_eq!(meta.len(), 256 * MIB);
        assert!(meta.blocks() * 512 < 4 * MIB, "copy is not sparse");
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dest).unwrap());

        resize(&dest, 512 * MIB).unwrap();
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), 512 * MIB);
        let e = resize(&dest, MIB).unwrap_err().to_string();
        assert!(e.contains("shrinking"), "{e}");

        let e = working_copy(&dir.path().join("nope.raw"), &dest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.raw does not exist"), "{e}");
    }
}
