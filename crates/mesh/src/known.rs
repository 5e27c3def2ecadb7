//! The realm's bootstrap and gateway nodes a node has learnt of
//! (`known.json` in the mesh state), for a node whose configuration names
//! no `mesh.bootstrap_peers`:
//!
//! - the bootstrap nodes its join answer listed (`source: join`);
//! - the bootstrap and gateway nodes of its realm `maculaos-meshd` sees
//!   announced on the LAN (`_macula._tcp`, `source: mdns`).
//!
//! A node that goes away stays on the list (it is tried after the
//! others): a bootstrap node that lost power drops out of mDNS, and
//! rewriting the list then would restart every peer's server in the middle
//! of its failover. mDNS is not authenticated: it adds only nodes whose
//! name is in the realm roster (signed by the realm CA), at their
//! `<name>.local` leafnode port, and the TLS handshake there still needs a
//! certificate of the realm CA naming that host; a node revoked since
//! leaves the list. What a join said wins over what mDNS said. At most
//! [`MAX_KNOWN`] are kept.

use crate::conf::LEAF_PORT;
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
    /// Only a `<name>.local` host is taken (no other domain, no port: an
    /// announcement cannot point nodes anywhere but at a LAN name), and
    /// only a name in `members` (the realm roster's nodes: a revoked node
    /// announcing itself is not dialled).
    pub fn announced(
        realm: &str,
        host: &str,
        roles: &str,
        its_realm: &str,
        members: &[String],
    ) -> Option<KnownNode> {
        if its_realm != realm {
            return None;
        }
        let name = host.trim_end_matches('.').strip_suffix(".local")?;
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || !members.iter().any(|m| m == name)
        {
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
        Some(KnownNode {
            address: format!("{name}.local:{LEAF_PORT}"),
            role: role.into(),
            source: "mdns".into(),
        })
    }
}

/// The file: one realm's list, with a version that goes up at each change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    pub realm: String,
    pub version: u64,
    pub nodes: Vec<KnownNode>,
}

impl Known {
    /// Add `new` to the list for `realm`. A list for another realm is
    /// replaced only by what a join learnt (`switch`): a daemon still
    /// looking for an old realm's nodes does not wipe the new one's. A node
    /// already known keeps its entry, except that what a join says wins over
    /// what mDNS said (its role, its source). Returns whether anything
    /// changed; the version then goes up.
    pub fn learn(&mut self, realm: &str, new: &[KnownNode], switch: bool) -> bool {
        let mut changed = false;
        if self.realm != realm {
            if !switch && !self.realm.is_empty() {
                return false;
            }
            changed = !self.nodes.is_empty() || !self.realm.is_empty();
            self.realm = realm.to_string();
            self.nodes.clear();
        }
        for n in new {
            let room = self.nodes.len() < MAX_KNOWN;
            match self.nodes.iter_mut().find(|k| k.address == n.address) {
                Some(k) if n.source == "join" && (k.source != "join" || k.role != n.role) => {
                    *k = n.clone();
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

    /// Forget the nodes mDNS found whose name is not in `members` (the
    /// realm roster: a node revoked since). Returns whether any went.
    pub fn keep_members(&mut self, members: &[String]) -> bool {
        let before = self.nodes.len();
        self.nodes.retain(|n| {
            n.source != "mdns"
                || n.address
                    .split_once(".local:")
                    .is_some_and(|(name, _)| members.iter().any(|m| m == name))
        });
        let changed = self.nodes.len() != before;
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
    fn the_list_grows_once_per_node_and_a_join_has_the_last_word() {
        let mut k = Known::default();
        assert!(k.learn("r", &[node("b1.local:4433", "bootstrap", "mdns")], false));
        assert_eq!(k.version, 1);
        // Seen again on the LAN: nothing new, no new version.
        assert!(!k.learn("r", &[node("b1.local:4433", "bootstrap", "mdns")], false));
        // The join answer names it: its entry says so.
        assert!(k.learn("r", &[node("b1.local:4433", "bootstrap", "join")], true));
        assert_eq!(k.nodes[0].source, "join");
        // mDNS cannot make a gateway a bootstrap node.
        assert!(k.learn("r", &[node("g1.local:4433", "gateway", "mdns")], false));
        assert!(!k.learn("r", &[node("g1.local:4433", "bootstrap", "mdns")], false));
        assert_eq!(k.nodes[1].role, "gateway");
        assert_eq!(k.version, 3);
        // A revoked node found by mDNS goes; what a join said stays.
        assert!(k.keep_members(&["b1".into()]));
        assert_eq!(k.nodes.len(), 1);
        assert!(!k.keep_members(&[]));
    }

    #[test]
    fn only_a_join_moves_the_list_to_another_realm_and_the_list_is_bounded() {
        let mut k = Known::default();
        k.learn("r", &[node("b1.local:4433", "bootstrap", "join")], true);
        assert!(!k.learn("s", &[node("x.local:4433", "bootstrap", "mdns")], false));
        assert_eq!(k.realm, "r");
        assert!(k.learn("s", &[], true));
        assert!(k.nodes.is_empty() && k.realm == "s");
        let many: Vec<KnownNode> = (0..100)
            .map(|i| node(&format!("n{i}.local:4433"), "gateway", "mdns"))
            .collect();
        k.learn("s", &many, false);
        assert_eq!(k.nodes.len(), MAX_KNOWN);
        assert_eq!(k.dial("r", false), (vec![], vec![]));
    }

    #[test]
    fn only_bootstrap_and_gateway_nodes_of_the_realm_are_dialled() {
        let members = ["b1".to_string()];
        let a = |roles, realm| KnownNode::announced("r", "b1.local", roles, realm, &members);
        assert_eq!(
            a("peer,bootstrap", "r"),
            Some(node("b1.local:4433", "bootstrap", "mdns"))
        );
        assert_eq!(a("peer,bootstrap,gateway", "r").unwrap().role, "bootstrap");
        assert_eq!(a("peer,gateway", "r").unwrap().role, "gateway");
        assert_eq!(a("peer", "r"), None);
        assert_eq!(a("peer,bootstrap", "other"), None);
        assert_eq!(a("peer,bootstrapper", "r"), None);
        // Only a member of the roster, only at a .local name, never a port.
        for host in [
            "b2.local",
            "b1.example.com",
            "b1.local:99",
            "b1",
            "bad host.local",
        ] {
            assert_eq!(
                KnownNode::announced("r", host, "bootstrap", "r", &members),
                None,
                "{host}"
            );
        }
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
            true,
        );
        assert_eq!(
            k.dial("r", false),
            (vec!["b1.local:4433"], vec!["g1.local:4433"])
        );
        assert_eq!(k.dial("r", true), (vec!["b1.local:4433"], vec![]));
    }
}
