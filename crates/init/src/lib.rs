//! `maculaos-init`: PID 1 of the MaculaOS initramfs.
//!
//! In disk mode (`maculaos.mode=disk`, the default) it:
//!
//! 1. mounts `/proc`, `/sys`, `/dev` (devtmpfs) and `/run` (tmpfs), and makes
//!    `/dev/console` its stdin, stdout and stderr;
//! 2. reads `maculaos.*` from `/proc/cmdline` ([`maculaos_boot::BootParams`]);
//! 3. loads the filesystem modules (squashfs, overlay, ext4) and, over and
//!    over until the boot disk shows up, the drivers the hardware asks for
//!    (modalias coldplug, [`maculaos_kmod::Loader`]);
//! 4. finds the root slot (`MACULA_ROOT_A`/`_B`) and `MACULA_DATA` on the same
//!    disk by GPT partition name, from sysfs, without udev;
//! 5. mounts the slot's squashfs read-only on `/sysroot`;
//! 6. bind-mounts `/dev`, `/proc`, `/sys` and `/run` into it, so the root's
//!    own tools (sfdisk, mkfs.ext4, ssh-keygen…) run under `chroot /sysroot`;
//! 7. checks the data partition: blank → grows it to the end of the disk and
//!    formats it (first boot); ext4 → grows it when the disk got bigger;
//!    anything else → refuses to touch it;
//! 8. mounts it, copies in what the image has under `/var`, `/home`, `/root`
//!    and the partition lacks, and puts it on `/var` (with `/home` and
//!    `/root` bind-mounted from it);
//! 9. puts a tmpfs overlay on `/etc`;
//! 10. keeps the machine id and SSH host keys in `/var/lib/maculaos`;
//! 11. writes [`maculaos_boot::BootInfo`] to `/run/maculaos/boot.json`;
//! 12. frees the initramfs and switches root to `/sbin/init` (systemd).
//!
//! Any failure prints what failed and a hint, then reboots after 10 s (the
//! boot counter then falls back to the other slot), or with `maculaos.debug`
//! opens a shell first.
//!
//! Live and install modes (`maculaos.mode=live|install`, the ISO) replace
//! steps 4-8: the medium is found by its ISO 9660 volume id, the root is its
//! `live/root.squashfs` (loop-mounted) and /var a tmpfs. Recovery mode keeps
//! steps 4-6 but puts /var on a tmpfs too, with only `/var/lib/maculaos`
//! copied from `MACULA_DATA`, which stays unmounted for `maculaos repair`.
//!
//! The decisions (which partitions, blank or not, grow or not, what to copy)
//! are plain functions in the modules below, tested on their own; the
//! system calls are in [`boot`].

pub mod boot;
pub mod console;
pub mod data;
pub mod error;
pub mod identity;
pub use maculaos_boot::blockdev as partitions;
pub mod seed;
pub mod switch;

pub use boot::{in_root, main, FS_MODULES, SYSROOT};
pub use error::InitError;
