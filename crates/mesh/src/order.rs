//! Orders from the realm's operator to one node (issue 21: `maculaos fleet
//! decommission`). The realm CA's key is the operator's credential: an
//! order is signed with it on the bootstrap node that holds it (only root
//! there can read it), and a node carries out only an order that the CA it
//! trusts signed, for its realm and its own name, made less than [`TTL`]
//! ago (a recorded order cannot be replayed later, nor to another node).
//! Each node answers orders on [`subject`] (maculaos-meshd).

use crate::pki;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// How long an order may be carried out after it was made, seconds (either
/// way: the CA holder's clock may be ahead of the node's).
pub const TTL: u64 = 600;

/// What a node is told to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Leave the fleet: factory reset (the network settings kept so the
    /// node can be paired again where it is); with `wipe`, the user data
    /// in /var/lib/data goes too.
    Decommission { wipe: bool },
    /// Take the realm's desired configuration for this node (`maculaos
    /// fleet drift-fix --apply`).
    FixDrift,
}

/// An order for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub realm: String,
    pub node: String,
    #[serde(flatten)]
    pub action: Action,
    /// When it was made (unix seconds, the CA holder's clock).
    pub issued_at: u64,
    /// Who made it (the operator's login on the CA holder), for the logs.
    pub by: String,
    /// Random: two orders are never the same text, so a node that
    /// remembers the orders it took ([`crate::state::State::first_time`])
    /// refuses only a replay.
    pub nonce: String,
}

/// A new random nonce for an order.
pub fn nonce() -> String {
    let mut b = [0u8; 16];
    // A failing system RNG leaves zeros: the order is still signed and
    // dated, only a second one in the same second would be refused.
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

/// A text signed by the realm CA (an order, the fleet's desired
/// configuration) as it travels and is kept: the text and the CA's
/// signature of exactly that text (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub text: String,
    pub signature: String,
}

/// `text` signed with the realm CA's key.
pub fn sign_text(ca_key_pem: &str, text: String) -> Result<Signed, pki::PkiError> {
    let sig = pki::sign(ca_key_pem, text.as_bytes())?;
    Ok(Signed {
        text,
        signature: base64::engine::general_purpose::STANDARD.encode(sig),
    })
}

/// A node's answer to an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub accepted: bool,
    /// Why it was refused, or what the node does now.
    pub message: String,
}

/// The subject node `node` takes orders on.
pub fn subject(realm: &str, node: &str) -> String {
    crate::client::rpc_subject(realm, &format!("node.{node}.order"))
}

impl Order {
    /// Signed with the realm CA's key.
    pub fn sign(&self, ca_key_pem: &str) -> Result<Signed, pki::PkiError> {
        sign_text(ca_key_pem, serde_json::to_string(self).unwrap_or_default())
    }
}

impl Signed {
    /// The order, if `ca_pem`'s key signed it for `realm` and `node` and it
    /// was made within [`TTL`] of `now` (unix seconds).
    pub fn open(&self, ca_pem: &str, realm: &str, node: &str, now: u64) -> Result<Order, String> {
        let o: Order = serde_json::from_str(self.verified(ca_pem, "the order")?)
            .map_err(|e| format!("the order does not parse: {e}"))?;
        if o.realm != realm {
            return Err(format!("the order is for realm {}, not {realm}", o.realm));
        }
        if o.node != node {
            return Err(format!("the order is for node {}, not {node}", o.node));
        }
        if o.issued_at.abs_diff(now) > TTL {
            return Err(format!(
                "the order was made at {} and this node's clock says {now}: more than {TTL} s apart (a replay, or a clock to set right)",
                o.issued_at
            ));
        }
        Ok(o)
    }

    /// The text, if `ca_pem`'s key signed it (`what` names it in errors).
    pub fn verified(&self, ca_pem: &str, what: &str) -> Result<&str, String> {
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|e| format!("{what}'s signature is not base64: {e}"))?;
        if !pki::verify(ca_pem, self.text.as_bytes(), &sig) {
            return Err(format!("{what} is not signed by this realm's CA"));
        }
        Ok(&self.text)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &[u8]) -> Result<Signed, String> {
        serde_json::from_slice(text).map_err(|e| format!("not a signed order: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Order {
        Order {
            realm: "io.macula".into(),
            node: "edge-03".into(),
            action: Action::Decommission { wipe: true },
            issued_at: 10_000,
            by: "macula".into(),
            nonce: "00".into(),
        }
    }

    #[test]
    fn only_the_realm_ca_for_this_node_and_now() {
        let ca = pki::create_ca("io.macula").unwrap();
        let signed = order().sign(&ca.key_pem).unwrap();
        let back = Signed::from_json(signed.to_json().as_bytes()).unwrap();
        assert_eq!(
            back.open(&ca.cert_pem, "io.macula", "edge-03", 10_100)
                .unwrap(),
            order()
        );
        assert!(back
            .text
            .contains("\"action\":\"decommission\",\"wipe\":true"));
        let refused = |s: &Signed, realm: &str, node: &str, now: u64| {
            s.open(&ca.cert_pem, realm, node, now).unwrap_err()
        };
        assert!(refused(&back, "io.other", "edge-03", 10_000).contains("for realm io.macula"));
        assert!(refused(&back, "io.macula", "edge-04", 10_000).contains("for node edge-03"));
        assert!(refused(&back, "io.macula", "edge-03", 10_000 + TTL + 1).contains("replay"));
        assert!(refused(&back, "io.macula", "edge-03", 10_000 - TTL - 1).contains("replay"));
        // Another CA's signature, or a changed text, is refused.
        let other = pki::create_ca("io.macula").unwrap();
        let forged = order().sign(&other.key_pem).unwrap();
        assert!(refused(&forged, "io.macula", "edge-03", 10_000).contains("not signed"));
        let mut changed = signed.clone();
        changed.text = changed.text.replace("edge-03", "edge-04");
        assert!(refused(&changed, "io.macula", "edge-04", 10_000).contains("not signed"));
    }
}
