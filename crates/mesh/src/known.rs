//! The realm's bootstrap and gateway nodes a node has learnt of
//! (`known.json` in the mesh state), for a node whose configuration names
//! no `mesh.bootstrap_peers`:
//!
//! - the bootstrap nodes its join answer listed (`source: join`);
//! - the bootstrap and gateway nodes of its realm `maculaos-meshd` sees
//!   announced on the LAN (`_macula._tcp`, `source: mdns`).
//!
//! The list only grows (a node that went away is still tried, after the
//! others): a bootstrap node that lost power drops out of mDNS, and
//! rewriting the list then would restart every peer's server in the middle
//! of its failover. mDNS is not authenticated; what it adds is only a
//! place to dial, and the TLS handshake there still needs a certificate of
//! the realm CA naming that host. At most [`MAX_KNOWN`] are kept, so a
//! flood of announcements cannot grow the file without end.

use crate::conf::{Endpoint, LEAF_PORT};
use serde::{Deserialize, Serialize};

/// How many nodes the list keeps.
pub const MAX_KNOWN: usize = 32;

/// One node to dial: its leafnode listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownNode {
    /// `host:port`.
    pub address: String,
    /// `bootstrap` or `gateway`.
    pub role: String,
    /// `join` or `mdns`.
    pub source: String,
}

impl KnownNode {
    pub fn bootstrap(&self) -> bool {
        self.role == "bootstrap"
    }

    /// A node announced on the LAN (`_macula._tcp`: its host, and the
    /// `role` and `realm` of its TXT records) as a node of `realm` to dial:
    /// a bootstrap or gateway node of that realm, at its leafnode port.
    pub fn announced(realm: &str, host: &str, roles: &str, its_realm: &str) -> Option<KnownNode> {
        if its_realm != realm {
            return None;
        }
        let has = |r: &str| roles.split(',').any(|x| x.trim() == r);
        let role = if has("bootstrap") {
            "bootstrap"
        } else if has("gateway") {
            "gateway"
        } else {
            return None;
        };
        let e = Endpoint::parse(host, LEAF_PORT).ok()?;
        Some(KnownNode {
            address: format!("{}:{}", e.host, e.port),
            role: role.into(),
            source: "mdns".into(),
        })
    }
}

/// The file: one realm's list, with a version that goes up at each change
/// (what `maculaos apply` records as in force).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    pub realm: String,
    pub version: u64,
    pub nodes: Vec<KnownNode>,
}

impl Known {
    /// Add `new` to the list for `realm` (a list for another realm is
    /// dropped). A node already known keeps its entry, except that
    /// `bootstrap` wins over `gateway` (a gateway that became a bootstrap
    /// node). Returns whether anything changed; the version then goes up.
    pub fn learn(&mut self, realm: &str, new: &[KnownNode]) -> bool {
        let mut changed = false;
        if self.realm != realm {
            changed = !self.nodes.is_empty() || !self.realm.is_empty();
            self.realm = realm.to_string();
            self.nodes.clear();
        }
        for n in new {
            let room = self.nodes.len() < MAX_KNOWN;
            match self.nodes.iter_mut().find(|k| k.address == n.address) {
                Some(k) if n.bootstrap() && !k.bootstrap() => {
                    k.role = n.role.clone();
                    changed = true;
                }
                Some(_) => {}
                None if room => {
                    self.nodes.push(n.clone());
                    changed = true;
                }
                None => {}
            }
        }
        if changed {
            self.version += 1;
        }
        changed
    }

    /// The addresses to dial, bootstrap nodes first; gateways only for a
    /// node that is not one itself (two gateways relaying through each
    /// other would be a loop).
    pub fn dial(&self, realm: &str, gateway: bool) -> (Vec<&str>, Vec<&str>) {
        if self.realm != realm {
            return (Vec::new(), Vec::new());
        }
        let pick = |b: bool| {
            self.nodes
                .iter()
                .filter(|n| n.bootstrap() == b)
                .map(|n| n.address.as_str())
                .collect::<Vec<_>>()
        };
        let relays = if gateway { Vec::new() } else { pick(false) };
        (pick(true), relays)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addr: &str, role: &str, source: &str) -> KnownNode {
        KnownNode {
            address: addr.into(),
            role: role.into(),
            source: source.into(),
        }
    }

    #[test]
    fn the_list_grows_once_per_node_and_bootstrap_wins() {
        let mut k = Known::default();
        assert!(k.learn("r", &[node("b1.local:4433", "bootstrap", "join")]));
        assert_eq!(k.version, 1);
        // Seen again on the LAN: nothing new, no new version.
        assert!(!k.learn("r", &[node("b1.local:4433", "bootstrap", "mdns")]));
        assert!(k.learn("r", &[node("g1.local:4433", "gateway", "mdns")]));
        assert!(k.learn("r", &[node("g1.local:4433", "bootstrap", "mdns")]));
        assert!(!k.learn("r", &[node("g1.local:4433", "gateway", "mdns")]));
        assert_eq!(k.version, 3);
        assert_eq!(k.nodes[0].source, "join");
        assert_eq!(k.nodes[1].role, "bootstrap");
    }

    #[test]
    fn another_realm_starts_over_and_the_list_is_bounded() {
        let mut k = Known::default();
        k.learn("r", &[node("b1.local:4433", "bootstrap", "join")]);
        assert!(k.learn("s", &[]));
        assert!(k.nodes.is_empty() && k.realm == "s");
        let many: Vec<KnownNode> = (0..100)
            .map(|i| node(&format!("n{i}.local:4433"), "gateway", "mdns"))
            .collect();
        k.learn("s", &many);
        assert_eq!(k.nodes.len(), MAX_KNOWN);
        assert_eq!(k.dial("r", false), (vec![], vec![]));
    }

    #[test]
    fn only_bootstrap_and_gateway_nodes_of_the_realm_are_dialled() {
        let a = |roles, realm| KnownNode::announced("r", "b1.local", roles, realm);
        assert_eq!(
            a("peer,bootstrap", "r"),
            Some(node("b1.local:4433", "bootstrap", "mdns"))
        );
        assert_eq!(a("peer,bootstrap,gateway", "r").unwrap().role, "bootstrap");
        assert_eq!(a("peer,gateway", "r").unwrap().role, "gateway");
        assert_eq!(a("peer", "r"), None);
        assert_eq!(a("peer,bootstrap", "other"), None);
        assert_eq!(a("peer,bootstrapper", "r"), None);
        assert_eq!(
            KnownNode::announced("r", "bad host", "bootstrap", "r"),
            None
        );
    }

    #[test]
    fn bootstrap_nodes_first_and_no_relay_for_a_gateway() {
        let mut k = Known::default();
        k.learn(
            "r",
            &[
                node("g1.local:4433", "gateway", "mdns"),
                node("b1.local:4433", "bootstrap", "join"),
            ],
        );
        assert_eq!(
            k.dial("r", false),
            (vec!["b1.local:4433"], vec!["g1.local:4433"])
        );
        assert_eq!(k.dial("r", true), (vec!["b1.local:4433"], vec![]));
    }
}
