//! WireGuard keys over the mesh: how the nodes of a realm learn each
//! other's overlay key and where to reach it, without an operator listing
//! peers on every node.
//!
//! A node whose overlay is on answers [`crate::client::overlay_subject`]
//! with an [`Announcement`] (its name, WireGuard public key and port, and
//! the host other nodes reach it at), signed with its mesh key and sent
//! with its certificate. Anyone on the mesh could answer, so an answer is
//! taken only if the certificate was signed by the realm CA, names the
//! node the announcement names, and is one the realm roster lets in (the
//! roster pins certificate keys: a revoked node's answers are refused and
//! its entry dropped), and if the signature holds.
//!
//! `maculaos-meshd` keeps what it took in [`PEERS_FILE`] of the mesh state
//! (an endpoint resolved by meshd, which runs once the network is up), and
//! `maculaos apply` makes them WireGuard peers of the roster's nodes.

use crate::pki;
use crate::roster::Roster;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Where apply leaves what the node announces (0644; no secret in it).
pub const OWN_FILE: &str = "/run/maculaos/wireguard.json";
/// The peers meshd took from the realm, in the mesh state directory.
pub const PEERS_FILE: &str = "wireguard-peers.json";

/// What the node's overlay is, as apply made it (read by meshd to answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Own {
    pub interface: String,
    pub public_key: String,
    pub port: u16,
}

/// One node's overlay, as it tells the realm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub realm: String,
    pub node: String,
    pub public_key: String,
    pub port: u16,
    /// Where the node is reached (its mesh advertise host: `<name>.local`
    /// or `advertise_address`'s host).
    pub host: String,
}

/// An announcement as it travels: its JSON text, the signature of that
/// text by the node's mesh key (base64), and the node's certificate (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub announcement: String,
    pub signature: String,
    pub certificate: String,
}

/// A peer taken from the realm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayPeer {
    pub node: String,
    pub public_key: String,
    /// The certificate key the roster must still let in.
    pub spki_sha256: String,
    /// `ip:port`, resolved by meshd; `None` while the host did not resolve.
    pub endpoint: Option<String>,
}

/// Whether `k` is a WireGuard key (32 bytes, base64).
pub fn is_key(k: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(k)
        .is_ok_and(|b| b.len() == 32)
}

impl Announcement {
    /// Signed with `key_pem` (the node's mesh key), sent with `cert_pem`.
    pub fn sign(&self, key_pem: &str, cert_pem: &str) -> Result<Signed, pki::PkiError> {
        let text = serde_json::to_string(self).unwrap_or_default();
        let sig = pki::sign(key_pem, text.as_bytes())?;
        Ok(Signed {
            announcement: text,
            signature: base64::engine::general_purpose::STANDARD.encode(sig),
            certificate: cert_pem.to_string(),
        })
    }
}

impl Signed {
    /// The announcement and its certificate's key hash, if it is one the
    /// realm's CA (`ca_pem`) and `roster` vouch for (see the module's doc).
    pub fn open(&self, ca_pem: &str, roster: &Roster) -> Result<(Announcement, String), String> {
        let a: Announcement = serde_json::from_str(&self.announcement)
            .map_err(|e| format!("not an overlay announcement: {e}"))?;
        if a.realm != roster.realm {
            return Err(format!("{} announces realm {}", a.node, a.realm));
        }
        if !pki::signed_by(&self.certificate, ca_pem) {
            return Err(format!(
                "{}'s certificate is not signed by this realm's CA",
                a.node
            ));
        }
        let info = pki::cert_info(&self.certificate)
            .ok_or_else(|| format!("{}'s certificate does not parse", a.node))?;
        if info.common_name != a.node {
            return Err(format!(
                "an announcement for {} comes with {}'s certificate",
                a.node, info.common_name
            ));
        }
        if !roster
            .members
            .iter()
            .any(|m| m.node == a.node && m.spki_sha256 == info.spki_sha256)
        {
            return Err(format!("{} is not in the realm roster", a.node));
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|_| format!("{}'s signature is not base64", a.node))?;
        if !pki::verify(&self.certificate, self.announcement.as_bytes(), &sig) {
            return Err(format!(
                "{}'s announcement is not signed by its key",
                a.node
            ));
        }
        if !is_key(&a.public_key) || a.port == 0 {
            return Err(format!("{} announces a bad key or port", a.node));
        }
        Ok((a, info.spki_sha256))
    }
}

/// The peers of `kept` the roster still lets in (same node, same
/// certificate key): what apply makes WireGuard peers.
pub fn in_roster(kept: &[OverlayPeer], roster: &Roster) -> Vec<OverlayPeer> {
    kept.iter()
        .filter(|p| {
            roster
                .members
                .iter()
                .any(|m| m.node == p.node && m.spki_sha256 == p.spki_sha256)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roster::Member;

    const KEY: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    /// A realm CA, and a node certificate (with its key) it signed.
    fn realm() -> (pki::CertAndKey, String, String) {
        let ca = pki::create_ca("io.macula").unwrap();
        let key = pki::new_key().unwrap();
        let csr = pki::csr(&key, "node-b").unwrap();
        let cert = pki::sign_node(&ca, "io.macula", "node-b", &[], &[], &csr).unwrap();
        (ca, cert, key)
    }

    fn roster_with(node: &str, cert: &str) -> Roster {
        Roster {
            realm: "io.macula".into(),
            version: 1,
            members: vec![Member {
                node: node.into(),
                spki_sha256: pki::cert_info(cert).unwrap().spki_sha256,
            }],
            revoked: vec![],
        }
    }

    fn announcement(node: &str) -> Announcement {
        Announcement {
            realm: "io.macula".into(),
            node: node.into(),
            public_key: KEY.into(),
            port: 51820,
            host: format!("{node}.local"),
        }
    }

    #[test]
    fn an_announcement_is_taken_only_from_a_roster_node_that_signed_it() {
        let (ca, cert, key) = realm();
        let roster = roster_with("node-b", &cert);
        let s = announcement("node-b").sign(&key, &cert).unwrap();
        let (a, spki) = s.open(&ca.cert_pem, &roster).unwrap();
        assert_eq!(a.public_key, KEY);
        assert_eq!(spki, roster.members[0].spki_sha256);

        // Another node's name with this certificate.
        let other = announcement("node-c").sign(&key, &cert).unwrap();
        assert!(other
            .open(&ca.cert_pem, &roster)
            .unwrap_err()
            .contains("node-b's certificate"));
        // Changed after signing.
        let mut tampered = s.clone();
        tampered.announcement = tampered.announcement.replace("51820", "51821");
        assert!(tampered
            .open(&ca.cert_pem, &roster)
            .unwrap_err()
            .contains("not signed by its key"));
        // Revoked: out of the roster.
        let empty = Roster {
            members: vec![],
            ..roster.clone()
        };
        assert!(s
            .open(&ca.cert_pem, &empty)
            .unwrap_err()
            .contains("not in the realm roster"));
        // Another realm's CA.
        let (other_ca, _, _) = realm();
        assert!(s
            .open(&other_ca.cert_pem, &roster)
            .unwrap_err()
            .contains("not signed by this realm's CA"));

        let kept = vec![OverlayPeer {
            node: "node-b".into(),
            public_key: KEY.into(),
            spki_sha256: spki,
            endpoint: None,
        }];
        assert_eq!(in_roster(&kept, &roster).len(), 1);
        assert!(in_roster(&kept, &empty).is_empty());
    }
}
