//! The mesh's WireGuard overlay (guide "WireGuard (VPN)", plan §4.9.4):
//! one interface, `wg-macula` by default, whose peers are other nodes.
//!
//! Addresses: every node of a realm has an IPv6 address on the overlay
//! made from its public key: the realm's /64 (a unique local prefix,
//! `fd` and 40 bits hashed from the realm's name, RFC 4193) and 64 bits
//! hashed from the key. Any node can work out any other's address from
//! its key alone, so no node hands addresses out and two nodes collide
//! only if SHA-256 does. `address` in the configuration overrides it.
//!
//! This crate decides; `maculaos apply` acts (the `wg` tool of Debian's
//! wireguard-tools and `ip`), and `maculaos network status` reports.

use base64::Engine;
use maculaos_config::values::{Cidr, WgKey};
use maculaos_config::{Config, Wireguard};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::net::Ipv6Addr;

/// Where a node keeps the private key it made (0600, root's).
pub const KEY_PATH: &str = "/var/lib/maculaos/wireguard/private.key";
/// What `wg syncconf` is given (0600: it holds the private key).
pub fn conf_path(interface: &str) -> String {
    format!("/run/maculaos/{interface}.conf")
}

/// The realm's overlay prefix: `fdXX:XXXX:XXXX::/64`.
pub fn realm_prefix(realm: Option<&str>) -> [u8; 8] {
    let h = Sha256::digest(format!("maculaos wireguard realm {}", realm.unwrap_or("")));
    let mut p = [0u8; 8];
    p[0] = 0xfd;
    p[1..6].copy_from_slice(&h[..5]);
    // Subnet 0: the rest of the /48 is left for later overlays.
    p
}

/// The overlay address a node with `public_key` has in `realm`.
pub fn mesh_address(realm: Option<&str>, public_key: &WgKey) -> Ipv6Addr {
    let h = Sha256::digest(public_key.bytes());
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&realm_prefix(realm));
    a[8..].copy_from_slice(&h[..8]);
    Ipv6Addr::from(a)
}

/// This node's address on the overlay, with its prefix length: the
/// configured one, else its key's in the realm's /64.
pub fn own_address(config: &Config, public_key: &WgKey) -> String {
    match &config.maculaos.mesh.wireguard.address {
        Some(a) => a.to_string(),
        None => format!(
            "{}/64",
            mesh_address(config.maculaos.mesh.realm.as_deref(), public_key)
        ),
    }
}

/// A new private key: 32 random bytes, clamped as X25519 wants (what
/// `wg genkey` does), in base64.
pub fn new_private_key() -> Result<String, String> {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).map_err(|e| format!("no random bytes for a WireGuard key: {e}"))?;
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    Ok(base64::engine::general_purpose::STANDARD.encode(k))
}

/// One `[Peer]` as `wg` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub public_key: WgKey,
    /// `ip:port`, already resolved (wg would stop at a name it cannot resolve).
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    pub keepalive: Option<u16>,
}

/// A node of the realm that announced its overlay over the mesh (its
/// endpoint already resolved, by maculaos-meshd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealmPeer {
    pub node: String,
    pub public_key: WgKey,
    pub endpoint: Option<String>,
}

/// The configured peers, each with its allowed IPs (its overlay address
/// when none are given) and its endpoint as `resolve` turns it into
/// `ip:port` (`None`: not resolved now; the peer waits to be reached);
/// then the realm's nodes not configured already, at their overlay
/// address. A peer listed twice, or this node's own key, is left out and
/// said.
pub fn peers(
    config: &Config,
    own_key: &WgKey,
    resolve: impl Fn(&str) -> Option<String>,
    realm_peers: &[RealmPeer],
) -> (Vec<Peer>, Vec<String>) {
    let wg: &Wireguard = &config.maculaos.mesh.wireguard;
    let realm = config.maculaos.mesh.realm.as_deref();
    let mut out: Vec<Peer> = Vec::new();
    let mut notes = Vec::new();
    for p in &wg.peers {
        let short = short_key(&p.public_key);
        if &p.public_key == own_key {
            notes.push(format!("peer {short} is this node's own key: left out"));
            continue;
        }
        if out.iter().any(|o| o.public_key == p.public_key) {
            notes.push(format!("peer {short} is listed twice: the first is used"));
            continue;
        }
        let allowed_ips = if p.allowed_ips.is_empty() {
            vec![format!("{}/128", mesh_address(realm, &p.public_key))]
        } else {
            p.allowed_ips.iter().map(Cidr::to_string).collect()
        };
        let endpoint = p.endpoint.as_ref().and_then(|e| {
            let r = resolve(e.as_str());
            if r.is_none() {
                notes.push(format!(
                    "peer {short}: {e} does not resolve now; the peer is kept without an \
                     endpoint until the next apply, or until it reaches this node"
                ));
            }
            r
        });
        out.push(Peer {
            public_key: p.public_key.clone(),
            endpoint,
            allowed_ips,
            keepalive: p.persistent_keepalive.filter(|k| *k > 0),
        });
    }
    for r in realm_peers {
        if &r.public_key == own_key || out.iter().any(|o| o.public_key == r.public_key) {
            continue;
        }
        out.push(Peer {
            public_key: r.public_key.clone(),
            endpoint: r.endpoint.clone(),
            allowed_ips: vec![format!("{}/128", mesh_address(realm, &r.public_key))],
            keepalive: None,
        });
    }
    (out, notes)
}

/// The first characters of a key, enough to tell keys apart in messages.
pub fn short_key(k: &WgKey) -> String {
    format!("{}…", &k.as_str()[..8])
}

/// The text `wg syncconf` takes: this node's key and port, and `peers`.
pub fn render(private_key: &str, port: u16, peers: &[Peer]) -> String {
    let mut s = format!("[Interface]\nPrivateKey = {private_key}\nListenPort = {port}\n");
    for p in peers {
        let _ = write!(s, "\n[Peer]\nPublicKey = {}\n", p.public_key);
        if !p.allowed_ips.is_empty() {
            let _ = writeln!(s, "AllowedIPs = {}", p.allowed_ips.join(", "));
        }
        if let Some(e) = &p.endpoint {
            let _ = writeln!(s, "Endpoint = {e}");
        }
        if let Some(k) = p.keepalive {
            let _ = writeln!(s, "PersistentKeepalive = {k}");
        }
    }
    s
}

/// A peer as the kernel has it (`wg show IF dump`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerState {
    pub public_key: String,
    /// `ip:port` it was last seen at, or configured with; `None`: not yet.
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Unix time of the last handshake; `None`: never.
    pub latest_handshake: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Seconds; `None`: off.
    pub persistent_keepalive: Option<u64>,
}

/// The interface as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dump {
    pub public_key: String,
    pub listen_port: u16,
    pub peers: Vec<PeerState>,
}

/// `wg show IF dump`: a line for the interface (private key, public key,
/// port, fwmark), then one per peer (public key, preshared key, endpoint,
/// allowed IPs, latest handshake, rx, tx, keepalive), tab-separated. The
/// private key is read past, never kept.
pub fn parse_dump(text: &str) -> Option<Dump> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let head: Vec<&str> = lines.next()?.split('\t').collect();
    if head.len() < 4 {
        return None;
    }
    let none_if = |v: &str, off: &str| (v != off).then(|| v.to_string());
    let mut peers = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() < 8 {
            return None;
        }
        peers.push(PeerState {
            public_key: f[0].to_string(),
            endpoint: none_if(f[2], "(none)"),
            allowed_ips: if f[3] == "(none)" {
                Vec::new()
            } else {
                f[3].split(',').map(|s| s.trim().to_string()).collect()
            },
            latest_handshake: f[4].parse().ok().filter(|t| *t > 0),
            rx_bytes: f[5].parse().unwrap_or(0),
            tx_bytes: f[6].parse().unwrap_or(0),
            persistent_keepalive: f[7].parse().ok().filter(|k| *k > 0),
        });
    }
    Some(Dump {
        public_key: head[1].to_string(),
        listen_port: head[2].parse().ok()?,
        peers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const C: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    fn key(s: &str) -> WgKey {
        s.parse().unwrap()
    }

    fn config(yaml: &str) -> Config {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn addresses_come_from_the_realm_and_the_key() {
        let a = mesh_address(Some("io.macula"), &key(A));
        assert_eq!(a.segments()[0] >> 8, 0xfd, "a unique local address: {a}");
        assert_eq!(
            a,
            mesh_address(Some("io.macula"), &key(A)),
            "the same every time"
        );
        let b = mesh_address(Some("io.macula"), &key(B));
        assert_eq!(a.segments()[..4], b.segments()[..4], "one /64 per realm");
        assert_ne!(a, b);
        let other = mesh_address(Some("com.example"), &key(A));
        assert_ne!(a.segments()[..4], other.segments()[..4]);
        let c = config("maculaos:\n  mesh:\n    realm: io.macula\n");
        assert_eq!(own_address(&c, &key(A)), format!("{a}/64"));
        let c = config("maculaos:\n  mesh:\n    wireguard:\n      address: 10.9.0.1/24\n");
        assert_eq!(own_address(&c, &key(A)), "10.9.0.1/24");
    }

    #[test]
    fn new_keys_are_clamped_keys() {
        let k = new_private_key().unwrap();
        let b = key(&k).bytes();
        assert_eq!(b[0] & 7, 0);
        assert_eq!(b[31] & 0xc0, 0x40);
        assert_ne!(k, new_private_key().unwrap());
    }

    #[test]
    fn peers_get_their_address_and_a_resolved_endpoint() {
        let c = config(&format!(
            "maculaos:\n  mesh:\n    realm: io.macula\n    wireguard:\n      enabled: true\n      peers:\n\
             \x20       - public_key: {B}\n          endpoint: peer1.example.com:51820\n\
             \x20       - public_key: {B}\n\
             \x20       - public_key: {A}\n\
             \x20       - public_key: {A2}\n          endpoint: nowhere.invalid:51820\n          allowed_ips: [10.1.0.0/16]\n          persistent_keepalive: 25\n",
            A2 = "WAmgVYXkbT2bCtdcDwolI88/iVi/aV3/PHcUBTQSYmo="
        ));
        let realm = [
            RealmPeer {
                node: "b".into(),
                public_key: key(B),
                endpoint: Some("10.0.0.2:51820".into()),
            },
            RealmPeer {
                node: "a".into(),
                public_key: key(A),
                endpoint: None,
            },
            RealmPeer {
                node: "c".into(),
                public_key: key(C),
                endpoint: Some("10.0.0.3:51820".into()),
            },
        ];
        let (p, notes) = peers(
            &c,
            &key(A),
            |h| (h == "peer1.example.com:51820").then(|| "192.0.2.7:51820".to_string()),
            &realm,
        );
        assert_eq!(p.len(), 3, "configured B and A2, and the realm's C: {p:?}");
        assert_eq!(p[2].public_key, key(C));
        assert_eq!(p[2].endpoint.as_deref(), Some("10.0.0.3:51820"));
        assert_eq!(
            p[2].allowed_ips,
            [format!("{}/128", mesh_address(Some("io.macula"), &key(C)))]
        );
        let p: Vec<Peer> = p.into_iter().take(2).collect();
        assert_eq!(
            p[0].allowed_ips,
            [format!("{}/128", mesh_address(Some("io.macula"), &key(B)))]
        );
        assert_eq!(p[0].endpoint.as_deref(), Some("192.0.2.7:51820"));
        assert_eq!(p[1].allowed_ips, ["10.1.0.0/16"]);
        assert_eq!(p[1].endpoint, None);
        assert_eq!(p[1].keepalive, Some(25));
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].contains("listed twice"), "{notes:?}");
        assert!(notes[1].contains("own key"), "{notes:?}");
        assert!(notes[2].contains("does not resolve"), "{notes:?}");

        let text = render("PRIV", 51820, &p);
        assert!(text.starts_with("[Interface]\nPrivateKey = PRIV\nListenPort = 51820\n"));
        assert!(text.contains(&format!("\n[Peer]\nPublicKey = {B}\nAllowedIPs = ")));
        assert!(text.contains("Endpoint = 192.0.2.7:51820\n"));
        assert!(text.contains("AllowedIPs = 10.1.0.0/16\nPersistentKeepalive = 25\n"));
    }

    #[test]
    fn the_dump_is_read_without_the_private_key() {
        let text = format!(
            "PRIVATE\t{A}\t51820\toff\n\
             {B}\t(none)\t10.0.3.2:51820\tfd00::1/128\t1764900000\t1234\t5678\toff\n\
             {A}\t(none)\t(none)\t(none)\t0\t0\t0\t25\n"
        );
        let d = parse_dump(&text).unwrap();
        assert_eq!(d.public_key, A);
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.peers.len(), 2);
        assert_eq!(d.peers[0].endpoint.as_deref(), Some("10.0.3.2:51820"));
        assert_eq!(d.peers[0].latest_handshake, Some(1764900000));
        assert_eq!((d.peers[0].rx_bytes, d.peers[0].tx_bytes), (1234, 5678));
        assert_eq!(d.peers[1].endpoint, None);
        assert_eq!(d.peers[1].latest_handshake, None);
        assert!(d.peers[1].allowed_ips.is_empty());
        assert_eq!(d.peers[1].persistent_keepalive, Some(25));
        assert!(!format!("{d:?}").contains("PRIVATE"));
        assert_eq!(parse_dump("garbage"), None);
    }
}
