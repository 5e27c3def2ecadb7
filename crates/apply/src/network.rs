//! Network interfaces, as systemd-networkd `.network` files in /etc.
//!
//! networkd reads /etc/systemd/network and /usr/lib/systemd/network together,
//! in file name order, and the first file that matches a link configures it.
//! Ours are `10-maculaos-<name>.network`, so they win over the image's
//! `80-maculaos-dhcp.network` (DHCP on every wired interface), which a file
//! of the same name in /etc linked to /dev/null masks.

use crate::applier::{io_msg, run, Applier, HEADER, ROOT_OWNER};
use maculaos_config::{Config, Interface};
use maculaos_runner::Cmd;
use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;

const AREA: &str = "network";
const DIR: &str = "/etc/systemd/network";
const PREFIX: &str = "10-maculaos-";
const SUFFIX: &str = ".network";
/// Masks the image's DHCP-everywhere default when `network.dhcp` is false.
const DHCP_MASK: &str = "/etc/systemd/network/80-maculaos-dhcp.network";

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    let net = config.network();
    let mut changed = false;
    let mut ours = BTreeSet::new();
    for (n, iface) in net.interfaces.iter().enumerate() {
        let label = iface_label(iface, n);
        let file = match file_name(iface) {
            Ok(f) => f,
            Err(e) => {
                a.error(AREA, format!("{label}: {e}"));
                continue;
            }
        };
        // Claimed before the entry is checked: one refused below keeps its
        // file from the last good configuration instead of being removed as
        // stale (the node may be remote: old settings beat none).
        if !ours.insert(file.clone()) {
            a.error(
                AREA,
                format!(
                    "{label}: another interface already uses {DIR}/{file}: give each its own name"
                ),
            );
            continue;
        }
        let written = network_file(iface).and_then(|text| {
            a.put_file(
                AREA,
                &format!("{DIR}/{file}"),
                text.as_bytes(),
                0o644,
                ROOT_OWNER,
            )
        });
        match written {
            Ok(c) => changed |= c,
            Err(e) => a.error(AREA, format!("{label}: {e}")),
        }
    }
    changed |= remove_stale(a, &ours)?;
    changed |= if net.dhcp {
        a.remove_file(AREA, DHCP_MASK)?
    } else {
        a.put_symlink(AREA, DHCP_MASK, "/dev/null")?
    };
    if changed && a.live() && a.unit_active("systemd-networkd.service") {
        a.act(AREA, ("reload", "reloaded"), "systemd-networkd", || {
            run(Cmd::new("networkctl").arg("reload"))
                .map_err(|e| format!("`networkctl reload` failed: {e}"))
        });
    }
    Ok(())
}

/// How an entry is named in messages.
fn iface_label(iface: &Interface, n: usize) -> String {
    match (iface.name.as_str(), &iface.mac) {
        ("", Some(mac)) => format!("interface {mac}"),
        ("", None) => format!("interface #{}", n + 1),
        (name, _) => format!("interface {name}"),
    }
}

/// `10-maculaos-<name>.network`, the name made safe for a file name (a glob
/// such as `en*` becomes `en_`); the MAC's digits when there is no name.
fn file_name(iface: &Interface) -> Result<String, String> {
    let base = if !iface.name.is_empty() {
        iface
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    } else if let Some(mac) = &iface.mac {
        mac.chars()
            .filter(char::is_ascii_hexdigit)
            .collect::<String>()
            .to_ascii_lowercase()
    } else {
        return Err("give its `name` (eth0, en*) or its `mac`".into());
    };
    Ok(format!("{PREFIX}{base}{SUFFIX}"))
}

/// The `.network` file of one interface.
fn network_file(iface: &Interface) -> Result<String, String> {
    let mut s = format!("{HEADER}[Match]\n");
    if !iface.name.is_empty() {
        if iface
            .name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!("`{}` is not an interface name", iface.name));
        }
        s.push_str(&format!("Name={}\n", iface.name));
    }
    if let Some(mac) = &iface.mac {
        s.push_str(&format!("MACAddress={}\n", normalize_mac(mac)?));
    }
    s.push_str("\n[Network]\n");
    s.push_str(if iface.uses_dhcp() {
        "DHCP=yes\n"
    } else {
        "DHCP=no\n"
    });
    for addr in iface.all_addresses() {
        s.push_str(&format!("Address={addr}\n"));
    }
    if let Some(gw) = &iface.gateway {
        s.push_str(&format!("Gateway={gw}\n"));
    }
    for dns in &iface.dns {
        s.push_str(&format!("DNS={dns}\n"));
    }
    Ok(s)
}

/// `52:54:00:AB:CD:EF` or `52-54-…` → `52:54:00:ab:cd:ef`.
fn normalize_mac(mac: &str) -> Result<String, String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(parts.join(":").to_ascii_lowercase())
    } else {
        Err(format!(
            "`{mac}` is not a MAC address such as 52:54:00:12:34:56"
        ))
    }
}

/// Remove our files of interfaces no longer in the configuration.
fn remove_stale(a: &mut Applier, ours: &BTreeSet<String>) -> Result<bool, String> {
    let dir = a.path(DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_msg("listing", &dir, &e)),
    };
    let mut stale: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX) && !ours.contains(n))
        .collect();
    stale.sort();
    let mut changed = false;
    for name in stale {
        changed |= a.remove_file(AREA, &format!("{DIR}/{name}"))?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{apply_twice, opts, yaml};

    #[test]
    fn static_and_dhcp_interfaces() {
        let d = tempfile::tempdir().unwrap();
        let cfg = yaml(
            "maculaos:\n  network:\n    dhcp: false\n    interfaces:\n\
             \x20     - {name: eth0, address: 192.168.1.10/24, addresses: [fd00::10/64], gateway: 192.168.1.1, dns: [1.1.1.1, 9.9.9.9]}\n\
             \x20     - {name: 'en*', mac: '52-54-00-AB-CD-EF'}\n",
        );
        let r = apply_twice(&cfg, &opts(d.path()));
        let dir = d.path().join("etc/systemd/network");
        let eth0 = fs::read_to_string(dir.join("10-maculaos-eth0.network")).unwrap();
        assert!(
            eth0.ends_with(
                "[Match]\nName=eth0\n\n[Network]\nDHCP=no\nAddress=192.168.1.10/24\n\
             Address=fd00::10/64\nGateway=192.168.1.1\nDNS=1.1.1.1\nDNS=9.9.9.9\n"
            ),
            "{eth0}"
        );
        let en = fs::read_to_string(dir.join("10-maculaos-en_.network")).unwrap();
        assert!(
            en.ends_with(
                "[Match]\nName=en*\nMACAddress=52:54:00:ab:cd:ef\n\n[Network]\nDHCP=yes\n"
            ),
            "{en}"
        );
        let mask = fs::read_link(dir.join("80-maculaos-dhcp.network")).unwrap();
        assert_eq!(mask, std::path::Path::new("/dev/null"));
        assert!(
            r.changes.contains(
                &"network: linked /etc/systemd/network/80-maculaos-dhcp.network to /dev/null"
                    .to_string()
            ),
            "{r:?}"
        );
    }

    #[test]
    fn stale_files_and_the_mask_go_away() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        apply_twice(
            &yaml("network: {dhcp: false, interfaces: [{name: eth0}, {mac: '52:54:00:00:00:01'}]}"),
            &o,
        );
        let dir = d.path().join("etc/systemd/network");
        assert!(dir.join("10-maculaos-525400000001.network").exists());
        fs::write(dir.join("20-by-hand.network"), "").unwrap();
        let r = apply_twice(&yaml("network: {interfaces: [{name: eth0}]}"), &o);
        assert_eq!(
            r.changes,
            vec![
                "network: removed /etc/systemd/network/10-maculaos-525400000001.network",
                "network: removed /etc/systemd/network/80-maculaos-dhcp.network",
            ]
        );
        assert!(dir.join("10-maculaos-eth0.network").exists());
        assert!(dir.join("20-by-hand.network").exists(), "not ours: kept");
    }

    #[test]
    fn bad_entries_are_errors_and_the_rest_is_applied() {
        let d = tempfile::tempdir().unwrap();
        let cfg = yaml(
            "network: {interfaces: [{dhcp: true}, {name: eth0, mac: nope}, {name: eth1}, {name: eth1}]}",
        );
        let r = crate::apply(&cfg, &opts(d.path()));
        assert_eq!(
            r.errors,
            vec![
                "network: interface #1: give its `name` (eth0, en*) or its `mac`",
                "network: interface eth0: `nope` is not a MAC address such as 52:54:00:12:34:56",
                "network: interface eth1: another interface already uses \
                 /etc/systemd/network/10-maculaos-eth1.network: give each its own name",
            ]
        );
        assert!(d
            .path()
            .join("etc/systemd/network/10-maculaos-eth1.network")
            .exists());
    }
}
