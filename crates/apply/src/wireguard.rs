//! `maculaos.mesh.wireguard` (guide "WireGuard (VPN)"): the overlay
//! interface, `wg-macula` by default. The node's private key is the
//! configuration's, or one it makes once and keeps (0600, never shown);
//! the peers and the address come from `maculaos_wireguard`. The interface
//! is made with `ip`, and its key, port and peers set in one `wg syncconf`,
//! which changes only what differs: handshakes with unchanged peers go on.
//! networkd leaves it alone (`06-maculaos-wireguard.network`).

use crate::applier::{run, Applier, ROOT_OWNER};
use maculaos_config::values::WgKey;
use maculaos_config::Config;
use maculaos_mesh::overlay::{in_roster, Own, OWN_FILE};
use maculaos_mesh::state::State;
use maculaos_runner::Cmd;
use maculaos_wireguard::{
    conf_path, new_private_key, own_address, peers, render, RealmPeer, KEY_PATH,
};
use std::net::ToSocketAddrs;

const AREA: &str = "wireguard";

/// Whether the interface can be acted on (the running node, with `wg`).
fn wg_here(a: &Applier) -> bool {
    a.live() && !a.dry_run() && a.path("/usr/bin/wg").exists()
}

fn link_exists(a: &Applier, name: &str) -> bool {
    a.path(&format!("/sys/class/net/{name}")).exists()
}

/// The key the node made, made now if it has none (not in a dry run).
fn own_key(a: &mut Applier) -> Result<Option<String>, String> {
    if let Ok(t) = std::fs::read_to_string(a.path(KEY_PATH)) {
        let t = t.trim().to_string();
        if t.parse::<WgKey>().is_ok() {
            return Ok(Some(t));
        }
        a.note(
            AREA,
            format!("{KEY_PATH} does not hold a WireGuard key: a new one is made"),
        );
    }
    if a.dry_run() {
        return Ok(None);
    }
    let k = new_private_key()?;
    a.put_file(
        AREA,
        KEY_PATH,
        format!("{k}\n").as_bytes(),
        0o600,
        ROOT_OWNER,
    )?;
    Ok(Some(k))
}

/// `host:port` as `ip:port`, IPv4 first (what most LANs route); `None`
/// when it does not resolve now.
fn resolve(host_port: &str) -> Option<String> {
    let addrs: Vec<std::net::SocketAddr> = host_port.to_socket_addrs().ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .map(ToString::to_string)
}

/// The addresses on `name`, as `ADDR/PREFIX`.
fn addresses_of(name: &str) -> Vec<String> {
    let out = Cmd::new("ip")
        .args(["-j", "addr", "show", "dev", name])
        .quiet()
        .output()
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] != "link")
        .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
        .collect()
}

/// The nodes of the node's realm that announced their overlay (kept by
/// maculaos-meshd) and that the realm roster still lets in: a node revoked
/// since is no peer from the apply the new roster brings.
fn realm_peers(config: &Config, a: &Applier) -> Vec<RealmPeer> {
    let st = State::under(&a.path("/"));
    let Some((_, roster)) = st.read_roster() else {
        return Vec::new();
    };
    if config.maculaos.mesh.realm.as_deref() != Some(roster.realm.as_str()) {
        return Vec::new();
    }
    in_roster(&st.overlay_peers(), &roster)
        .into_iter()
        .filter_map(|p| {
            Some(RealmPeer {
                public_key: p.public_key.parse().ok()?,
                node: p.node,
                endpoint: p.endpoint,
            })
        })
        .collect()
}

/// Tell maculaos-meshd what to announce to the realm (no secret in it).
fn announce(a: &mut Applier, name: &str, public: &WgKey, port: u16) -> Result<(), String> {
    let own = Own {
        interface: name.to_string(),
        public_key: public.to_string(),
        port,
    };
    let text = serde_json::to_vec_pretty(&own).unwrap_or_default();
    a.put_file(AREA, OWN_FILE, &text, 0o644, ROOT_OWNER)?;
    Ok(())
}

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    let wg = &config.maculaos.mesh.wireguard;
    let name = wg.interface.as_str();
    let conf = conf_path(name);
    if !wg.enabled {
        a.remove_file(AREA, &conf)?;
        a.remove_file(AREA, OWN_FILE)?;
        if a.live() && !a.dry_run() && link_exists(a, name) {
            a.act(
                AREA,
                ("remove", "removed"),
                &format!("WireGuard interface {name}"),
                || run(Cmd::new("ip").args(["link", "del", name])),
            );
        }
        return Ok(());
    }
    if wg.port == 0 {
        return Err("maculaos.mesh.wireguard.port: 0 is not a port (1 to 65535)".into());
    }
    let private = match &wg.private_key {
        Some(k) => k.to_string(),
        None => match own_key(a)? {
            Some(k) => k,
            None => return Ok(()),
        },
    };
    if !wg_here(a) {
        return Ok(());
    }
    let public: WgKey = Cmd::new("wg")
        .arg("pubkey")
        .stdin(format!("{private}\n"))
        .quiet()
        .output()
        .map_err(|e| format!("wg pubkey: {}", crate::applier::why(&e)))?
        .trim()
        .parse()?;
    let (peers, notes) = peers(config, &public, resolve, &realm_peers(config, a));
    for n in notes {
        a.note(AREA, n);
    }
    announce(a, name, &public, wg.port)?;
    let text = render(&private, wg.port, &peers);
    let changed = a.put_file(AREA, &conf, text.as_bytes(), 0o600, ROOT_OWNER)?;
    let created = !link_exists(a, name);
    if created {
        let ok = a.act(
            AREA,
            ("make", "made"),
            &format!("WireGuard interface {name}"),
            || run(Cmd::new("ip").args(["link", "add", name, "type", "wireguard"])),
        );
        if !ok {
            return Ok(());
        }
    }
    if changed || created {
        let what = format!("{name}'s key, port {} and {} peers", wg.port, peers.len());
        let path = a.path(&conf);
        if !a.act(AREA, ("set", "set"), &what, || {
            run(Cmd::new("wg").args(["syncconf", name]).arg(&path))
        }) {
            return Ok(());
        }
    }
    let address = own_address(config, &public);
    let have = addresses_of(name);
    if have != [address.clone()] {
        a.act(
            AREA,
            ("address", "addressed"),
            &format!("{name} as {address}"),
            || {
                run(Cmd::new("ip").args(["addr", "flush", "dev", name]))?;
                run(Cmd::new("ip").args(["addr", "add", &address, "dev", name]))
            },
        );
    }
    let up = std::fs::read_to_string(a.path(&format!("/sys/class/net/{name}/flags")))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & 1 == 1);
    if !up {
        a.act(AREA, ("bring up", "brought up"), name, || {
            run(Cmd::new("ip").args(["link", "set", name, "up"]))
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::tests::{apply_twice, opts, yaml};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_node_makes_its_key_once_and_keeps_it() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        let key = d
            .path()
            .join(maculaos_wireguard::KEY_PATH.trim_start_matches('/'));
        let on = yaml("maculaos:\n  mesh:\n    wireguard: {enabled: true}\n");
        apply_twice(&on, &o);
        let k = fs::read_to_string(&key).unwrap();
        assert!(k.trim().parse::<maculaos_config::values::WgKey>().is_ok());
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        apply_twice(&on, &o);
        assert_eq!(fs::read_to_string(&key).unwrap(), k, "kept");
        // Off: the key stays (turning it on again keeps the node's address).
        apply_twice(&yaml(""), &o);
        assert_eq!(fs::read_to_string(&key).unwrap(), k);
    }
}
