//! Datasources: a NoCloud drive (as `cloud-localds` makes it) and a URL.
//!
//! Both are copied under `/var/lib/maculaos/datasource/` when they are
//! reachable, and the copies are what the loader reads. So a node keeps its
//! configuration when the USB stick is pulled or the server is down, and
//! `maculaos config show` needs neither.

use crate::load::Paths;
use crate::sources::{self, Format};
use maculaos_runner::{tail, Cmd};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Filesystem labels of a NoCloud drive (ISO 9660 keeps the case, FAT shouts).
pub const NOCLOUD_LABELS: &[&str] = &["cidata", "CIDATA"];

/// The files of a NoCloud drive that MaculaOS reads.
pub const NOCLOUD_FILES: &[&str] = &["user-data", "meta-data"];

/// What refreshing a datasource did, for the journal.
#[derive(Debug, Default, PartialEq)]
pub struct Refresh {
    pub notes: Vec<String>,
    pub errors: Vec<String>,
}

/// The device holding a NoCloud filesystem, if one is attached.
///
/// The device nodes are read here, without waiting for udev: the storage
/// drivers (virtio, SATA, NVMe, USB, CD-ROM) were loaded by maculaos-init,
/// so a drive attached at power-on is there. Waiting for udev's whole queue
/// instead cost 16 s of every boot under emulation, and `blkid`, probing
/// every device for every filesystem it knows, most of a second of CPU.
pub fn find_nocloud_device() -> Option<PathBuf> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            !["loop", "ram", "zram", "fd"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        // No medium (an empty CD drive): nothing to read.
        .filter(|n| {
            fs::read_to_string(format!("/sys/class/block/{n}/size")).is_ok_and(|s| s.trim() != "0")
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| Path::new("/dev").join(n))
        .find(|dev| crate::fslabel::read(dev).is_some_and(|l| NOCLOUD_LABELS.contains(&l.as_str())))
}

/// Copy the NoCloud drive's `user-data` and `meta-data` (mounted read-only
/// at `mnt` for the time it takes) into the node's datasource directory.
pub fn refresh_nocloud(paths: &Paths, device: &Path, mnt: &Path) -> Refresh {
    let mut r = Refresh::default();
    if let Err(e) = fs::create_dir_all(mnt) {
        r.errors
            .push(format!("NoCloud: cannot create {}: {e}", mnt.display()));
        return r;
    }
    let mount = Cmd::new("mount")
        .args(["-o", "ro"])
        .arg(device)
        .arg(mnt)
        .quiet()
        .output();
    if let Err(e) = mount {
        r.errors.push(format!(
            "NoCloud: cannot mount {} (labelled cidata): {}",
            device.display(),
            tail(&e.to_string(), 3)
        ));
        return r;
    }
    r = copy_nocloud_files(paths, mnt, &device.display().to_string());
    if let Err(e) = Cmd::new("umount").arg(mnt).quiet().run() {
        r.errors
            .push(format!("NoCloud: cannot unmount {}: {e}", mnt.display()));
    }
    r
}

/// Copy the seed files from a mounted (or any) directory. A file the drive
/// lacks is removed from the copy, so the copy is always one drive's view.
pub fn copy_nocloud_files(paths: &Paths, from: &Path, what: &str) -> Refresh {
    let mut r = Refresh::default();
    let dest = paths.nocloud_dir();
    if let Err(e) = fs::create_dir_all(&dest) {
        r.errors
            .push(format!("NoCloud: cannot create {}: {e}", dest.display()));
        return r;
    }
    let mut found = Vec::new();
    for name in NOCLOUD_FILES {
        let target = dest.join(name);
        match fs::read(from.join(name)) {
            Ok(bytes) => {
                if fs::read(&target).ok().as_deref() != Some(&bytes[..]) {
                    if let Err(e) = write_atomic(&target, &bytes) {
                        r.errors.push(format!("NoCloud: {e}"));
                        continue;
                    }
                }
                found.push(*name);
            }
            Err(_) => {
                let _ = fs::remove_file(&target);
            }
        }
    }
    r.notes.push(if found.is_empty() {
        format!("NoCloud drive {what}: no user-data or meta-data on it")
    } else {
        format!("NoCloud drive {what}: read {}", found.join(", "))
    });
    r
}

/// Fetch `url` (http, https or file) into the node's URL copy. The copy is
/// only replaced by a fetched file that parses; the old one stays otherwise.
pub fn refresh_url(paths: &Paths, url: &str, wait: Duration) -> Refresh {
    let mut r = Refresh::default();
    let dest = paths.url_copy();
    let tmp = dest.with_extension("yaml.download");
    if let Some(dir) = dest.parent() {
        if let Err(e) = fs::create_dir_all(dir) {
            r.errors
                .push(format!("config_url: cannot create {}: {e}", dir.display()));
            return r;
        }
    }
    // curl retries while the network comes up, within `wait` in all.
    let secs = wait.as_secs().max(1).to_string();
    let fetched = Cmd::new("curl")
        .args(["--fail", "--silent", "--show-error", "--location"])
        .args(["--retry", "30", "--retry-connrefused", "--retry-delay", "2"])
        .args(["--retry-max-time", &secs, "--max-time", &secs])
        .arg("--output")
        .arg(&tmp)
        .arg(url)
        .quiet()
        .run();
    if let Err(e) = fetched {
        let _ = fs::remove_file(&tmp);
        r.errors.push(format!(
            "config_url: cannot fetch {url}: {}; keeping the copy fetched before, if any",
            tail(&e.to_string(), 3)
        ));
        return r;
    }
    let text = match fs::read_to_string(&tmp) {
        Ok(t) => t,
        Err(e) => {
            r.errors.push(format!("config_url: {url}: not text: {e}"));
            return r;
        }
    };
    if let Err(p) = sources::parse(url, &text, Format::UserData) {
        let _ = fs::remove_file(&tmp);
        r.errors.push(format!(
            "config_url: not applied, the fetched file has an error: {p}"
        ));
        return r;
    }
    // It may carry tokens: root only.
    let _ = fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    if let Err(e) = fs::rename(&tmp, &dest) {
        r.errors.push(format!(
            "config_url: cannot replace {}: {e}",
            dest.display()
        ));
        return r;
    }
    r.notes.push(format!("config_url: fetched {url}"));
    r
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("new");
    fs::write(&tmp, bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    // user-data may carry tokens: root only.
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("setting the mode of {}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("replacing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_follow_the_drive() {
        let root = tempfile::tempdir().unwrap();
        let drive = tempfile::tempdir().unwrap();
        let paths = Paths::new(root.path());
        fs::write(
            drive.path().join("user-data"),
            "#cloud-config\nhostname: a\n",
        )
        .unwrap();
        fs::write(drive.path().join("meta-data"), "instance-id: i\n").unwrap();
        let r = copy_nocloud_files(&paths, drive.path(), "/dev/sr0");
        assert_eq!(
            r.notes,
            vec!["NoCloud drive /dev/sr0: read user-data, meta-data"]
        );
        assert!(paths.nocloud_dir().join("meta-data").exists());
        fs::remove_file(drive.path().join("meta-data")).unwrap();
        copy_nocloud_files(&paths, drive.path(), "/dev/sr0");
        assert!(!paths.nocloud_dir().join("meta-data").exists());
        assert!(paths.nocloud_dir().join("user-data").exists());
    }

    #[test]
    fn url_copy_is_kept_when_the_new_file_is_bad() {
        let root = tempfile::tempdir().unwrap();
        let paths = Paths::new(root.path());
        let served = tempfile::tempdir().unwrap();
        let f = served.path().join("c.yaml");
        fs::write(&f, "maculaos:\n  hostname: one\n").unwrap();
        let url = format!("file://{}", f.display());
        let r = refresh_url(&paths, &url, Duration::from_secs(60));
        assert!(r.errors.is_empty(), "{r:?}");
        assert!(fs::read_to_string(paths.url_copy())
            .unwrap()
            .contains("one"));
        fs::write(&f, "maculaos:\n  hostnme: two\n").unwrap();
        let r = refresh_url(&paths, &url, Duration::from_secs(60));
        assert!(r.errors[0].contains("did you mean `hostname`"), "{r:?}");
        assert!(fs::read_to_string(paths.url_copy())
            .unwrap()
            .contains("one"));
        let r = refresh_url(&paths, "file:///nonexistent/x.yaml", Duration::from_secs(1));
        assert!(r.errors[0].contains("cannot fetch"), "{r:?}");
        assert!(fs::read_to_string(paths.url_copy())
            .unwrap()
            .contains("one"));
    }
}
