//! The realm's roster: which node keys the realm's listeners (bootstrap and
//! gateway nodes) let in. nats-server 2.9 checks no revocation list, but it
//! pins keys (`pinned_certs`): a node whose certificate is revoked drops out
//! of the roster, and every listener that has the new roster refuses it.
//!
//! The CA holder makes the roster whenever what it signed changes (a join,
//! a renewal, `maculaos mesh revoke`) and signs it with the realm CA's key;
//! the other listeners fetch it over the mesh and keep it only if the CA's
//! signature holds and it is newer than theirs (an old roster replayed
//! cannot let a revoked node back in). `roster.json` in the mesh directory
//! holds the signed text; `maculaos apply` turns it into `pinned_certs`.

use crate::pki;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// A node the roster lets in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: String,
    /// SHA-256 of its certificate's SubjectPublicKeyInfo, hex.
    pub spki_sha256: String,
}

/// The roster of a realm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    pub realm: String,
    /// One more at every change.
    pub version: u64,
    pub members: Vec<Member>,
    /// Nodes whose certificates were all revoked, for `mesh status`.
    pub revoked: Vec<String>,
}

/// A roster as it travels and is kept: its JSON text and the CA's
/// signature of exactly that text (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub roster: String,
    pub signature: String,
}

impl Roster {
    /// The keys nats-server is to pin, sorted, each once.
    pub fn pins(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .members
            .iter()
            .map(|m| m.spki_sha256.clone())
            .filter(|k| !k.is_empty())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// One line for logs and `mesh status`.
    pub fn summary(&self) -> String {
        format!(
            "version {}, {} nodes let in; revoked: {}",
            self.version,
            self.members.len(),
            if self.revoked.is_empty() {
                "none".to_string()
            } else {
                self.revoked.join(", ")
            }
        )
    }

    /// Signed with the realm CA's key.
    pub fn sign(&self, ca_key_pem: &str) -> Result<Signed, pki::PkiError> {
        let roster = serde_json::to_string(self).unwrap_or_default();
        let sig = pki::sign(ca_key_pem, roster.as_bytes())?;
        Ok(Signed {
            roster,
            signature: base64::engine::general_purpose::STANDARD.encode(sig),
        })
    }
}

impl Signed {
    /// The roster, if `ca_pem`'s key signed it and it is for `realm`.
    pub fn open(&self, ca_pem: &str, realm: &str) -> Result<Roster, String> {
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|e| format!("the roster's signature is not base64: {e}"))?;
        if !pki::verify(ca_pem, self.roster.as_bytes(), &sig) {
            return Err("the roster is not signed by this realm's CA".into());
        }
        let r: Roster = serde_json::from_str(&self.roster)
            .map_err(|e| format!("the roster does not parse: {e}"))?;
        if r.realm != realm {
            return Err(format!("the roster is for realm {}, not {realm}", r.realm));
        }
        Ok(r)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Signed, String> {
        serde_json::from_str(text).map_err(|e| format!("not a signed roster: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roster() -> Roster {
        Roster {
            realm: "io.macula".into(),
            version: 3,
            members: vec![
                Member {
                    node: "b".into(),
                    spki_sha256: "bb".into(),
                },
                Member {
                    node: "a".into(),
                    spki_sha256: "aa".into(),
                },
                Member {
                    node: "a2".into(),
                    spki_sha256: "aa".into(),
                },
            ],
            revoked: vec!["c".into()],
        }
    }

    #[test]
    fn only_the_realm_ca_can_sign_a_roster() {
        let ca = pki::create_ca("io.macula").unwrap();
        let signed = roster().sign(&ca.key_pem).unwrap();
        let back = Signed::from_json(&signed.to_json()).unwrap();
        assert_eq!(back.open(&ca.cert_pem, "io.macula").unwrap(), roster());
        assert!(back
            .open(&ca.cert_pem, "io.other")
            .unwrap_err()
            .contains("for realm io.macula"));
        // Another CA's signature, or a changed text, is refused.
        let other = pki::create_ca("io.macula").unwrap();
        let forged = roster().sign(&other.key_pem).unwrap();
        assert!(forged.open(&ca.cert_pem, "io.macula").is_err());
        let mut changed = signed.clone();
        changed.roster = changed.roster.replace("\"c\"", "\"d\"");
        assert!(changed
            .open(&ca.cert_pem, "io.macula")
            .unwrap_err()
            .contains("not signed"));
    }

    #[test]
    fn pins_are_sorted_and_once_each() {
        assert_eq!(roster().pins(), ["aa", "bb"]);
    }
}
