//! [`MountBootFiles`]: the kernel and initrd out of a freshly written slot,
//! on a real node (needs root and squashfs support; not unit-tested, the
//! QEMU scenario covers it).

use crate::error::{io_err, Result};
use crate::{BootFiles, INITRD, KERNEL};
use maculaos_runner::Mount;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Where the new root is mounted (read-only) for the moment it is read:
/// `<MOUNT_BASE>.<pid>`.
pub const MOUNT_BASE: &str = "/run/maculaos/upgrade-root";

/// Mounts the written squashfs read-only and copies `/boot/vmlinuz` and
/// `/boot/initrd.img` out of it.
pub struct MountBootFiles;

impl BootFiles for MountBootFiles {
    fn extract(&self, partition: &Path, dest_dir: &Path) -> Result<()> {
        let dir = PathBuf::from(format!("{MOUNT_BASE}.{}", std::process::id()));
        // Unmounted (also on an error while copying) when `m` goes.
        let m = Mount::new(partition, &dir, Some("squashfs"), Some("ro"))?;
        for name in [KERNEL, INITRD] {
            let src = dir.join("boot").join(name);
            let dest = dest_dir.join(name);
            if !src.is_file() {
                return Err(crate::UpgradeError::MissingBootFile {
                    file: format!("/boot/{name}"),
                });
            }
            // Contents only (no permission bits): see `install_file`.
            let what = format!("copying {} to {}", src.display(), dest.display());
            let mut input = File::open(&src).map_err(io_err(what.clone()))?;
            let mut out = File::create(&dest).map_err(io_err(what.clone()))?;
            io::copy(&mut input, &mut out).map_err(io_err(what))?;
        }
        Ok(m.unmount()?)
    }
}
