//! The hostname: `maculaos.hostname`, else `macula-XXXX` from the primary MAC.

use crate::applier::{io_msg, Applier, ROOT_OWNER};
use maculaos_config::Config;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const AREA: &str = "hostname";

/// The default hostname `macula-XXXX`, XXXX the last four hex digits of the
/// primary MAC address (stable across reboots and reinstalls), else of the
/// machine-id.
pub fn default_hostname(primary_mac: Option<&str>, machine_id: &str) -> String {
    let hex: String = match primary_mac {
        Some(mac) => mac.chars().filter(|c| c.is_ascii_hexdigit()).collect(),
        None => machine_id
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .collect(),
    };
    let tail = if primary_mac.is_some() {
        &hex[hex.len().saturating_sub(4)..]
    } else {
        &hex[..hex.len().min(4)]
    };
    if tail.is_empty() {
        "macula".to_string()
    } else {
        format!("macula-{}", tail.to_ascii_lowercase())
    }
}

/// The MAC of the node's primary NIC, chosen so that the choice does not
/// depend on timing: the lowest-addressed PCI Ethernet controller, once its
/// driver has made its interface. Interface names are no guide while udev
/// renames them (`eth1` and `ens5` side by side sort the wrong way) and a
/// second NIC may be probed first, so names only decide where there is no
/// PCI Ethernet controller (USB or SoC NICs). `None` while the primary
/// NIC has no interface yet.
pub fn primary_mac(sys: &Path) -> Option<String> {
    let pci = sys.join("bus/pci/devices");
    let mut ethernet: Vec<String> = fs::read_dir(&pci)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|addr| {
                    // PCI class 0x0200xx: network controller, Ethernet.
                    fs::read_to_string(pci.join(addr).join("class"))
                        .is_ok_and(|c| c.trim().starts_with("0x0200"))
                })
                .collect()
        })
        .unwrap_or_default();
    // domain:bus:device.function, fixed-width hex: text order is bus order.
    ethernet.sort();
    let Some(first) = ethernet.first() else {
        return first_mac_in(&sys.join("class/net"));
    };
    // The interface sits in the device's `net` directory, or one level down
    // where a bus driver sits between them (virtio: `0000:00:04.0/virtio1/net`).
    let dev = pci.join(first);
    first_mac_in(&dev.join("net")).or_else(|| {
        let mut children: Vec<PathBuf> = fs::read_dir(&dev)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("net"))
            .filter(|net| net.is_dir())
            .collect();
        children.sort();
        children.iter().find_map(|net| first_mac_in(net))
    })
}

/// The MAC of the first (by name) device-backed Ethernet interface in a
/// `net` directory.
fn first_mac_in(net: &Path) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(net)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().find_map(|n| {
        let dir = net.join(&n);
        let is_ether = fs::read_to_string(dir.join("type")).is_ok_and(|t| t.trim() == "1");
        if !is_ether || !dir.join("device").exists() {
            return None;
        }
        let mac = fs::read_to_string(dir.join("address"))
            .ok()?
            .trim()
            .to_string();
        (mac != "00:00:00:00:00:00").then_some(mac)
    })
}

/// /etc/hosts that resolves the node's own name (sudo and others ask).
pub fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
}

/// The default name for this root. At boot the NIC driver may still be
/// loading (udev) when we start, so on the node itself we give it a moment;
/// past that (a first NIC without a driver), any device-backed interface.
fn default_for(a: &Applier) -> String {
    let sys = a.path("/sys");
    let wait = if a.opts.boot && a.opts.root == Path::new("/") {
        Duration::from_secs(10)
    } else {
        Duration::ZERO
    };
    let deadline = Instant::now() + wait;
    let mut mac = primary_mac(&sys);
    while mac.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        mac = primary_mac(&sys);
    }
    let mac = mac.or_else(|| first_mac_in(&sys.join("class/net")));
    let machine_id = fs::read_to_string(a.path("/etc/machine-id")).unwrap_or_default();
    default_hostname(mac.as_deref(), machine_id.trim())
}

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    let name = match &config.maculaos.hostname {
        Some(h) => h.as_str().to_string(),
        None => default_for(a),
    };
    a.put_file(
        AREA,
        "/etc/hostname",
        format!("{name}\n").as_bytes(),
        0o644,
        ROOT_OWNER,
    )?;
    a.put_file(
        AREA,
        "/etc/hosts",
        hosts_file(&name).as_bytes(),
        0o644,
        ROOT_OWNER,
    )?;
    if a.live() {
        set_kernel_hostname(a, &name);
    }
    Ok(())
}

/// The running kernel's name (what `hostname` prints), through /proc.
fn set_kernel_hostname(a: &mut Applier, name: &str) {
    let path = a.path("/proc/sys/kernel/hostname");
    let running = fs::read_to_string(&path).unwrap_or_default();
    if running.trim() == name {
        return;
    }
    a.act(
        AREA,
        ("set", "set"),
        &format!("the kernel hostname to {name}"),
        || fs::write(&path, name).map_err(|e| io_msg("writing", &path, &e)),
    );
    // avahi-daemon took the old name when it started and keeps announcing
    // it: hand it the new one (the wizard renames a running node).
    if a.path("/run/avahi-daemon/pid").exists() {
        a.act(
            AREA,
            ("announce", "announced"),
            &format!("{name}.local on the LAN"),
            || crate::applier::run(maculaos_runner::Cmd::new("avahi-set-host-name").arg(name)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{apply_twice, opts, yaml};

    #[test]
    fn hostname_from_mac_or_machine_id() {
        assert_eq!(
            default_hostname(Some("52:54:00:12:AB:56"), "x"),
            "macula-ab56"
        );
        assert_eq!(default_hostname(None, "0f3e9a77c0d1"), "macula-0f3e");
        assert_eq!(default_hostname(None, ""), "macula");
    }

    /// A NIC under `dir` (a `net` directory): its type, MAC and whether a
    /// device backs it.
    fn nic(dir: &Path, name: &str, kind: &str, mac: &str, dev: bool) {
        let p = dir.join(name);
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("type"), kind).unwrap();
        fs::write(p.join("address"), mac).unwrap();
        if dev {
            fs::create_dir_all(p.join("device")).unwrap();
        }
    }

    #[test]
    fn primary_mac_skips_virtual_and_loopback() {
        let d = tempfile::tempdir().unwrap();
        let net = d.path().join("class/net");
        nic(&net, "lo", "772", "00:00:00:00:00:00", false);
        nic(&net, "br0", "1", "aa:aa:aa:aa:aa:aa", false);
        nic(&net, "enp0s3", "1", "52:54:00:12:34:56\n", true);
        nic(&net, "enp1s0", "1", "52:54:00:ff:ff:ff", true);
        assert_eq!(primary_mac(d.path()).as_deref(), Some("52:54:00:12:34:56"));
    }

    /// The lowest-addressed PCI Ethernet controller is the primary NIC
    /// whatever its interface is called mid-rename, and until its driver
    /// has made the interface there is no answer (not the second NIC's).
    #[test]
    fn primary_mac_is_the_first_pci_ethernet_controller() {
        let d = tempfile::tempdir().unwrap();
        let pci = d.path().join("bus/pci/devices");
        let dev = |addr: &str, class: &str| {
            let p = pci.join(addr);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("class"), class).unwrap();
            p.join("net")
        };
        dev("0000:00:01.0", "0x060100\n"); // an ISA bridge
        let first = dev("0000:00:04.0", "0x020000\n");
        let second = dev("0000:00:05.0", "0x020000\n");
        // The second NIC already renamed, the first not probed yet.
        nic(&second, "ens5", "1", "52:54:00:00:02:03", true);
        nic(
            &d.path().join("class/net"),
            "ens5",
            "1",
            "52:54:00:00:02:03",
            true,
        );
        assert_eq!(primary_mac(d.path()), None);
        // The first one appears under its kernel name, beneath its virtio
        // device: it sorts after ens5 by name, but it is the primary NIC.
        let first = first.parent().unwrap().join("virtio1/net");
        nic(&first, "eth0", "1", "52:54:00:00:0c:03\n", true);
        assert_eq!(primary_mac(d.path()).as_deref(), Some("52:54:00:00:0c:03"));
    }

    #[test]
    fn default_name_goes_to_etc() {
        let d = tempfile::tempdir().unwrap();
        let nic = d.path().join("sys/class/net/eth0");
        fs::create_dir_all(nic.join("device")).unwrap();
        fs::write(nic.join("type"), "1\n").unwrap();
        fs::write(nic.join("address"), "52:54:00:12:ab:56\n").unwrap();
        let r = apply_twice(&yaml(""), &opts(d.path()));
        assert!(r
            .changes
            .contains(&"hostname: wrote /etc/hostname".to_string()));
        assert!(r
            .changes
            .contains(&"hostname: wrote /etc/hosts".to_string()));
        let etc = d.path().join("etc");
        assert_eq!(
            fs::read_to_string(etc.join("hostname")).unwrap(),
            "macula-ab56\n"
        );
        assert!(fs::read_to_string(etc.join("hosts"))
            .unwrap()
            .contains("127.0.1.1\tmacula-ab56\n"));
    }

    #[test]
    fn configured_name_wins_and_live_sets_the_kernel_name() {
        let d = tempfile::tempdir().unwrap();
        let kernel = d.path().join("proc/sys/kernel/hostname");
        fs::create_dir_all(kernel.parent().unwrap()).unwrap();
        fs::write(&kernel, "localhost\n").unwrap();
        let mut o = opts(d.path());
        o.live = true;
        let r = apply_twice(&yaml("maculaos: {hostname: edge-01}"), &o);
        assert!(
            r.changes
                .contains(&"hostname: set the kernel hostname to edge-01".to_string()),
            "{r:?}"
        );
        assert_eq!(fs::read_to_string(&kernel).unwrap(), "edge-01");
        assert_eq!(
            fs::read_to_string(d.path().join("etc/hostname")).unwrap(),
            "edge-01\n"
        );
    }
}
