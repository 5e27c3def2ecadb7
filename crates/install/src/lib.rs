//! `maculaos install`: MaculaOS from the live medium onto a disk.
//!
//! 1. [`disks`]: the machine's disks (`lsblk`) and what is on each;
//! 2. [`plan`]: whether a disk can take MaculaOS ([`Refusal`] if not) and
//!    the GPT layout it gets, `MACULA_DATA` filling the disk;
//! 3. [`payload`]: the install payload on the medium (`install/manifest.json`);
//! 4. [`write()`]: partition, GRUB for BIOS and UEFI, the ESP, slot A
//!    (read back and compared), the data partition with the node's
//!    `config.yaml`;
//! 5. [`node_config`]: the configuration to store, checked by the config
//!    crate (from `--config FILE`, from the live system's own configuration
//!    for `--auto`, or from [`interactive`] answers).
//!
//! Nothing is written before the plan, the payload and the configuration
//! have all been checked.

pub mod disks;
mod error;
pub mod interactive;
pub mod node_config;
pub mod payload;
pub mod plan;
pub mod report;
pub mod write;

pub use disks::{Disk, Partition};
pub use error::{InstallError, StepError};
pub use payload::Payload;
pub use plan::{Plan, Refusal};
pub use report::{Pass, Printer, Report};
pub use write::{write, Installed, Options};

use maculaos_boot::{BootInfo, BOOT_INFO_PATH};

/// The device the running system was started from (boot.json's
/// `root_device`: the live medium, e.g. `/dev/sr0`, or an installed slot,
/// e.g. `/dev/vda3`), or `None` when maculaos-init left no record (not a
/// MaculaOS boot). [`Plan::new`] refuses its disk.
pub fn running_from() -> Option<String> {
    let text = std::fs::read_to_string(BOOT_INFO_PATH).ok()?;
    let info = BootInfo::from_json(&text).ok()?;
    Some(info.root_device).filter(|d| !d.is_empty())
}

/// Whether we run as root (writing disks needs it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
