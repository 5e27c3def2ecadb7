//! Handing the machine over to the root filesystem's init.

use crate::error::InitError;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statfs::{statfs, TMPFS_MAGIC};
use nix::unistd::{chdir, chroot};
use std::convert::Infallible;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// `RAMFS_MAGIC` from linux/magic.h (nix names only tmpfs).
const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// The init the root filesystem provides (systemd).
pub const ROOT_INIT: &str = "/sbin/init";

/// What deleting the initramfs did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removal {
    pub removed: usize,
    /// Entries that could not be removed (left behind, costing only memory).
    pub failed: usize,
}

/// Remove everything under `dir` that is on the filesystem `dev`, without
/// following symlinks or entering other mounts (their mount points have
/// another device number). `dir` itself stays.
pub fn remove_tree_on_device(dir: &Path, dev: u64) -> Removal {
    let mut r = Removal::default();
    let Ok(entries) = fs::read_dir(dir) else {
        r.failed += 1;
        return r;
    };
    for entry in entries {
        let Ok(entry) = entry else {
            r.failed += 1;
            continue;
        };
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            r.failed += 1;
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        let result = if meta.is_dir() {
            let inner = remove_tree_on_device(&path, dev);
            r.removed += inner.removed;
            r.failed += inner.failed;
            fs::remove_dir(&path)
        } else {
            fs::remove_file(&path)
        };
        match result {
            Ok(()) => r.removed += 1,
            Err(_) => r.failed += 1,
        }
    }
    r
}

/// Whether `/` is the initramfs (ramfs or tmpfs): deleting everything on
/// it is only ever right then.
fn root_is_initramfs() -> bool {
    statfs("/")
        .map(|s| {
            let t = s.filesystem_type();
            t == TMPFS_MAGIC || t.0 as u64 == RAMFS_MAGIC
        })
        .unwrap_or(false)
}

/// Free the initramfs's memory, make `new_root` the root directory and
/// exec its init. `system_mounts` are the initramfs's own mounts (the new
/// root has its own bind mounts of them), detached first so their mount
/// points can go too.
pub fn switch_root(new_root: &str, system_mounts: &[&str]) -> Result<Infallible, InitError> {
    for m in system_mounts {
        umount2(*m, MntFlags::MNT_DETACH)
            .map_err(InitError::sys(format!("detaching the initramfs's {m}")))?;
    }
    if root_is_initramfs() {
        if let Ok(meta) = fs::symlink_metadata("/") {
            let r = remove_tree_on_device(Path::new("/"), meta.dev());
            if r.failed > 0 {
                crate::console::say(format!(
                    "note: {} initramfs entries could not be removed (memory stays in use)",
                    r.failed
                ));
            }
        }
    }
    chdir(new_root).map_err(InitError::sys(format!("changing directory to {new_root}")))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(InitError::sys(format!("moving the mount {new_root} to /")))?;
    chroot(".").map_err(InitError::sys(format!("chroot into {new_root}")))?;
    chdir("/").map_err(InitError::sys("changing directory to / in the new root"))?;
    // Pass on what the kernel gave us (e.g. `single`) to the real init.
    let source = Command::new(ROOT_INIT)
        .args(std::env::args_os().skip(1))
        .exec();
    Err(InitError::Exec {
        program: ROOT_INIT.to_string(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn removes_everything_on_the_device_but_follows_no_symlink() {
        let root = tempfile::tempdir().unwrap();
        let keep = tempfile::tempdir().unwrap();
        std::fs::write(keep.path().join("precious"), "x").unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("lib/modules/6.1.0/kernel")).unwrap();
        std::fs::write(r.join("lib/modules/6.1.0/kernel/a.ko"), "ko").unwrap();
        std::fs::write(r.join("init"), "bin").unwrap();
        std::os::unix::fs::symlink(keep.path(), r.join("link")).unwrap();
        let dev = std::fs::metadata(r).unwrap().dev();
        let removal = remove_tree_on_device(r, dev);
        assert_eq!(
            removal,
            Removal {
                removed: 7,
                failed: 0
            }
        );
        assert_eq!(std::fs::read_dir(r).unwrap().count(), 0);
        assert!(keep.path().join("precious").exists());
    }

    #[test]
    fn other_devices_are_left_alone() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("mnt")).unwrap();
        std::fs::write(root.path().join("mnt/file"), "x").unwrap();
        std::fs::write(root.path().join("file"), "x").unwrap();
        let dev = std::fs::metadata(root.path()).unwrap().dev();
        // Pretend everything is on another device than the one we clear.
        let removal = remove_tree_on_device(root.path(), dev.wrapping_add(1));
        assert_eq!(removal, Removal::default());
        assert!(root.path().join("mnt/file").exists());
    }
}
