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
    t("grub-mkrescue", "grub-common"),
    t("xorriso", "xorriso"),
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
    // The relay behind each guest connection to a host service (VmSpec::host_services).
    t("socat", "socat"),
];

/// What only the tests need besides [`VM`]: the first-boot wizard
/// scenario loads the page in a real browser (a screenshot stays with the
/// logs) and talks to the wizard's API with curl.
pub const TEST: &[Tool] = &[
    t("chromium", "chromium"),
    t("curl", "curl"),
    // The mesh crate's tests check its configurations with nats-server
    // itself and run a realm of three servers on loopback.
    t("/usr/sbin/nats-server", "nats-server"),
    // services-registry pushes to and deploys from a registry on the host.
    t("docker-registry", "docker-registry"),
    // metrics reads what a node serves with the Prometheus client library's
    // own parser of the text format.
    t(
        "/usr/lib/python3/dist-packages/prometheus_client/parser.py",
        "python3-prometheus-client",
    ),
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
    if let Err(source) = install() {
        // A host with a newer qemu-utils (from backports) than the archive's
        // qemu-system-x86 cannot take both: qemu-utils Breaks a different
        // qemu-system-common. Install the matching qemu-utils with it.
        let pins = companion_pins(&pkgs);
        if pins.is_empty() {
            return Err(HostToolsError::Install { pkgs, source });
        }
        eprintln!(
            "==> note: the archive's QEMU does not match this host's {}; installing the matching {} with it",
            pins.iter().map(|(p, _, _)| p.to_string()).collect::<Vec<_>>().join(", "),
            pins.iter().map(|(p, _, v)| format!("{p} {v}")).collect::<Vec<_>>().join(", "),
        );
        Cmd::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "--allow-downgrades",
            ])
            .args(&pkgs)
            .args(pins.iter().map(|(p, _, v)| format!("{p}={v}")))
            .env("DEBIAN_FRONTEND", "noninteractive")
            .quiet()
            .run()
            .map_err(|source| HostToolsError::Install {
                pkgs: pkgs.clone(),
                source,
            })?;
    }
    let still = missing(tools);
    if still.is_empty() {
        Ok(())
    } else {
        Err(HostToolsError::Missing { pkgs: still })
    }
}

/// Installed packages that must carry the same version as a package we
/// install (`installed`, `installing`).
const LOCKSTEP: &[(&str, &str)] = &[("qemu-utils", "qemu-system-x86")];

/// For each installed package of [`LOCKSTEP`] whose version differs from the
/// archive's candidate of its partner (being installed): (package, installed
/// version, the version to install).
fn companion_pins(pkgs: &[&str]) -> Vec<(&'static str, String, String)> {
    let installed = |p: &str| {
        Cmd::new("dpkg-query")
            .args(["-W", "-f", "${Version}", p])
            .quiet()
            .output()
            .ok()
            .map(|o| o.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let candidate = |p: &str| {
        Cmd::new("apt-cache")
            .args(["policy", p])
            .quiet()
            .output()
            .ok()
            .and_then(|o| parse_candidate(&o))
    };
    LOCKSTEP
        .iter()
        .filter(|(_, partner)| pkgs.contains(partner))
        .filter_map(|(p, partner)| {
            let have = installed(p)?;
            let want = candidate(partner)?;
            (have != want).then_some((*p, have, want))
        })
        .collect()
}

/// The `Candidate:` line of `apt-cache policy`.
fn parse_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v != "(none)")
}

#[cfg(test)]
mod tests {
    #[test]
    fn candidate_of_apt_cache_policy() {
        let out = "qemu-system-x86:\n  Installed: (none)\n  Candidate: 1:7.2+dfsg-7+deb12u18+b3\n  Version table:\n";
        assert_eq!(
            super::parse_candidate(out).as_deref(),
            Some("1:7.2+dfsg-7+deb12u18+b3")
        );
        assert_eq!(super::parse_candidate("x:\n  Candidate: (none)\n"), None);
    }

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
