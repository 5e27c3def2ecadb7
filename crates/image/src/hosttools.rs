//! Host tools the SDK needs, the Debian packages that provide them, and
//! installing the missing ones (apt-get as root; otherwise the exact command).

use maculaos_runner::{have, Cmd};
use std::path::Path;

/// A program (or file) on the host and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub path: &'static str,
    pub package: &'static str,
}

const fn t(path: &'static str, package: &'static str) -> Tool {
    Tool { path, package }
}

/// What `build-image` runs.
pub const BUILD: &[Tool] = &[
    t("mmdebstrap", "mmdebstrap"),
    t("mksquashfs", "squashfs-tools"),
    t("sfdisk", "fdisk"),
    t("mkfs.vfat", "dosfstools"),
    t("mcopy", "mtools"),
    t("grub-mkimage", "grub-common"),
    t("grub-editenv", "grub-common"),
    t("/usr/lib/grub/i386-pc/boot.img", "grub-pc-bin"),
    t("/usr/lib/grub/x86_64-efi/kernel.img", "grub-efi-amd64-bin"),
    t("dpkg-deb", "dpkg"),
    t("chroot", "coreutils"),
    t(
        "/usr/share/keyrings/debian-archive-keyring.gpg",
        "debian-archive-keyring",
    ),
];

/// What booting images under QEMU and talking to them runs.
pub const VM: &[Tool] = &[
    t("qemu-system-x86_64", "qemu-system-x86"),
    t("qemu-img", "qemu-utils"),
    t("/usr/share/ovmf/OVMF.fd", "ovmf"),
    t("ssh", "openssh-client"),
    t("ssh-keygen", "openssh-client"),
    t("mcopy", "mtools"),
    t("sfdisk", "fdisk"),
    t("grub-editenv", "grub-common"),
    // NoCloud seed drives for the configuration scenarios, made as users make them.
    t("cloud-localds", "cloud-image-utils"),
    t("genisoimage", "genisoimage"),
    // Update bundles: the reference tool checks our signatures (and signs for ours).
    t("minisign", "minisign"),
];

/// The Debian packages whose tools are missing, deduplicated, in order.
pub fn missing(tools: &[Tool]) -> Vec<&'static str> {
    let mut pkgs: Vec<&'static str> = Vec::new();
    for tool in tools {
        let present = if tool.path.starts_with('/') {
            Path::new(tool.path).exists()
        } else {
            have(tool.path) || have_sbin(tool.path)
        };
        if !present && !pkgs.contains(&tool.package) {
            pkgs.push(tool.package);
        }
    }
    pkgs
}

/// Non-root shells often lack /sbin and /usr/sbin on PATH.
fn have_sbin(program: &str) -> bool {
    ["/usr/sbin", "/sbin"]
        .iter()
        .any(|d| Path::new(d).join(program).is_file())
}

/// The apt-get line that installs `pkgs`.
pub fn apt_command(pkgs: &[&str]) -> String {
    format!(
        "sudo apt-get update && sudo apt-get install -y --no-install-recommends {}",
        pkgs.join(" ")
    )
}

#[derive(Debug, thiserror::Error)]
pub enum HostToolsError {
    #[error("missing host packages: {}. Install them with:\n  {}", .pkgs.join(" "), apt_command(.pkgs))]
    Missing { pkgs: Vec<&'static str> },
    #[error("installing host packages ({}) failed: {source}", .pkgs.join(" "))]
    Install {
        pkgs: Vec<&'static str>,
        #[source]
        source: maculaos_runner::RunError,
    },
}

fn is_root() -> bool {
    // SAFETY-free: geteuid via /proc would do too, but libc is simplest.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid() == 0
    }
}

/// Make sure every tool is there: install missing packages with apt-get when
/// running as root, else fail with the exact command to run.
pub fn ensure(tools: &[Tool]) -> Result<(), HostToolsError> {
    let pkgs = missing(tools);
    if pkgs.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(HostToolsError::Missing { pkgs });
    }
    eprintln!("==> installing host packages: {}", pkgs.join(" "));
    let install = || -> Result<(), maculaos_runner::RunError> {
        Cmd::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .quiet()
            .run()?;
        Cmd::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .quiet()
            .run()
    };
    install().map_err(|source| HostToolsError::Install {
        pkgs: pkgs.clone(),
        source,
    })?;
    let still = missing(tools);
    if still.is_empty() {
        Ok(())
    } else {
        Err(HostToolsError::Missing { pkgs: still })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_lists_each_package_once() {
        let tools = [
            t("maculaos-no-such-a", "pkg-x"),
            t("maculaos-no-such-b", "pkg-x"),
            t("/no/such/file", "pkg-y"),
            t("sh", "dash"),
        ];
        assert_eq!(missing(&tools), vec!["pkg-x", "pkg-y"]);
    }

    #[test]
    fn message_has_the_apt_line() {
        let e = HostToolsError::Missing {
            pkgs: vec!["mtools", "fdisk"],
        };
        assert!(e
            .to_string()
            .contains("sudo apt-get install -y --no-install-recommends mtools fdisk"));
    }
}
