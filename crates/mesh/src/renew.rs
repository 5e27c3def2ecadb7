//! Renewing a node's certificate over the mesh, before it expires.
//!
//! A node whose certificate has less than a third of its life left (or an
//! operator running `maculaos mesh renew`) sends the realm's CA holder,
//! on `macula.rpc.<realm>.realm.renew` through its own server (the mesh is
//! mutual TLS, so only a node of the realm reaches it), its current
//! certificate and a signing request made with the same key. The CA holder
//! signs a new certificate naming what the old one did
//! ([`State::renew`]): a revoked or expired certificate is refused, and so
//! is a request another key signed. The node keeps the new certificate
//! only if the realm CA it holds signed it, for its own key and name.

use crate::client::{self, Client};
use crate::pki::{self, CertInfo};
use crate::state::State;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a node waits for the CA holder's answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The node's current certificate (PEM).
    pub cert: String,
    /// A signing request made with the node's key (PEM).
    pub csr: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default)]
    pub cert: String,
    #[serde(default)]
    pub error: String,
}

/// On the CA holder: the answer to one request (JSON), and what to log.
pub fn answer(state: &State, payload: &[u8]) -> (Vec<u8>, String) {
    let a = match serde_json::from_slice::<Request>(payload) {
        Err(_) => Answer {
            error: "not a renewal request".into(),
            ..Answer::default()
        },
        Ok(req) => match state.renew(&req.cert, &req.csr) {
            Ok(cert) => Answer {
                ok: true,
                cert,
                ..Answer::default()
            },
            Err(e) => Answer {
                error: e.to_string(),
                ..Answer::default()
            },
        },
    };
    let log = if a.ok {
        match pki::cert_info(&a.cert) {
            Some(c) => format!(
                "renewed the certificate of {} (serial {})",
                c.common_name, c.serial
            ),
            None => "renewed a certificate".into(),
        }
    } else {
        format!("refused a renewal: {}", a.error)
    };
    (serde_json::to_vec(&a).unwrap_or_default(), log)
}

/// On a node of `realm` (not its CA holder, which renews its own at
/// `maculaos apply`): ask for a new certificate through `client` and keep
/// it. Returns what it says.
pub fn renew(state: &State, client: &Client, realm: &str) -> Result<CertInfo, String> {
    state.refuse_if_ca_holder().map_err(|e| e.to_string())?;
    let id = state.identity().map_err(|e| e.to_string())?;
    let (Some(old), Some(_)) = (id.certificate, id.ca) else {
        return Err(
            "this node has no certificate to renew: join a realm first (`maculaos mesh join`)"
                .into(),
        );
    };
    if id.realm.as_deref() != Some(realm) {
        return Err(format!(
            "this node's certificate is for realm {}, not {realm}",
            id.realm.unwrap_or_default()
        ));
    }
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let cert = read(state.node_cert())?;
    let ca = read(state.ca_cert())?;
    let key = state.key_pem().map_err(|e| e.to_string())?;
    let csr = pki::csr(&key, &old.common_name).map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(&Request { cert, csr }).unwrap_or_default();
    let (m, _) = client
        .request(&client::renew_subject(realm), &body, TIMEOUT)
        .map_err(|e| format!("asking the realm's CA holder: {e}"))?;
    let a: Answer = serde_json::from_str(&m.payload)
        .map_err(|_| "the CA holder's answer is not a renewal answer".to_string())?;
    if !a.ok {
        return Err(format!("the CA holder refused: {}", a.error));
    }
    let new = pki::cert_info(&a.cert).ok_or("the new certificate does not parse")?;
    // Any node of the realm can answer on this subject: an older
    // certificate of this key replayed is not taken.
    if new.not_after <= old.not_after {
        return Err("the answer is no newer than the certificate this node has: not taken".into());
    }
    if new.common_name != old.common_name {
        return Err(format!(
            "the new certificate names {}, not this node ({})",
            new.common_name, old.common_name
        ));
    }
    // Signed by the CA this node holds, for its own key (checked there).
    state
        .install_join(realm, &ca, &a.cert)
        .map_err(|e| e.to_string())?;
    // Its server restarts with it (maculaos-mesh-apply.path).
    state.request_apply().map_err(|e| e.to_string())?;
    Ok(new)
}
