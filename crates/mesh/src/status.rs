//! What the node's nats-server says about itself, from its monitoring
//! endpoint (loopback only, [`crate::conf::MONITOR`]): the server, its
//! leafnode connections, its cluster routes, JetStream.
//!
//! Only the fields `maculaos mesh status` shows are read; the others are
//! ignored, so a newer server's additions do not break it.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long one monitoring request may take (the server is on loopback).
const TIMEOUT: Duration = Duration::from_secs(3);
/// The largest monitoring answer read (a busy server's `/leafz` is a few KiB).
const MAX_BODY: u64 = 4 << 20;

/// nats-server writes an empty list as `null`.
fn null_is_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Varz {
    pub server_name: String,
    pub version: String,
    /// When the server started (RFC 3339).
    pub start: String,
    pub uptime: String,
    pub connections: u64,
    pub leafnodes: u64,
    pub routes: u64,
    /// Resident memory, bytes.
    pub mem: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Leaf {
    /// The other server's name (its node name).
    pub name: String,
    pub account: String,
    pub ip: String,
    pub port: u16,
    /// Round trip, as the server measures it (`1.234ms`).
    pub rtt: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Leafz {
    #[serde(deserialize_with = "null_is_empty")]
    pub leafs: Vec<Leaf>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Route {
    pub remote_id: String,
    /// The other server's name: newer servers say it, 2.9.10 does not
    /// (then empty).
    pub remote_name: String,
    pub ip: String,
    pub port: u16,
    pub rtt: String,
    /// This server dialled the route (it is in its configuration).
    pub did_solicit: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Routez {
    #[serde(deserialize_with = "null_is_empty")]
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct MetaCluster {
    pub name: String,
    pub leader: String,
    pub cluster_size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct JsConfig {
    pub domain: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Jsz {
    pub disabled: bool,
    pub config: JsConfig,
    pub streams: u64,
    pub meta_cluster: Option<MetaCluster>,
}

/// A monitoring request that failed: the server is down, or answered
/// something else.
#[derive(Debug, thiserror::Error)]
#[error("asking nats-server at http://{addr}/{path}: {why}")]
pub struct StatusError {
    addr: String,
    path: String,
    why: String,
}

fn get<T: for<'de> Deserialize<'de>>(addr: &str, path: &str) -> Result<T, StatusError> {
    let e = |why: String| StatusError {
        addr: addr.into(),
        path: path.into(),
        why,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    let mut resp = agent
        .get(&format!("http://{addr}/{path}"))
        .call()
        .map_err(|x| e(x.to_string()))?;
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .map_err(|x| e(x.to_string()))?;
    serde_json::from_slice(&body).map_err(|x| e(format!("unexpected answer: {x}")))
}

pub fn varz(addr: &str) -> Result<Varz, StatusError> {
    get(addr, "varz")
}

pub fn leafz(addr: &str) -> Result<Leafz, StatusError> {
    get(addr, "leafz")
}

pub fn routez(addr: &str) -> Result<Routez, StatusError> {
    get(addr, "routez")
}

pub fn jsz(addr: &str) -> Result<Jsz, StatusError> {
    get(addr, "jsz")
}

/// The mesh's state in a word (`maculaos mesh status`, the dashboard, the
/// login banner): `no realm`, `not joined`, `serving` (a bootstrap node
/// alone in its realm), `connecting`, `connected`, or `no bootstrap nodes
/// known` (a peer with nothing to dial). `dials`: the node has bootstrap
/// nodes (or gateways) to connect to; `leafs`, `routes`: it has such
/// connections.
pub fn state_word(
    realm: bool,
    joined: bool,
    bootstrap: bool,
    dials: bool,
    leafs: bool,
    routes: bool,
) -> &'static str {
    if !realm {
        "no realm"
    } else if !joined {
        "not joined"
    } else if bootstrap {
        match (dials, routes) {
            (false, false) => "serving",
            (true, false) => "connecting",
            _ => "connected",
        }
    } else if !dials {
        "no bootstrap nodes known"
    } else if leafs {
        "connected"
    } else {
        "connecting"
    }
}

/// A node's mesh in brief, from `mesh.env` and the server's `/varz`: what
/// the dashboard and the login banner show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Brief {
    /// [`state_word`], or `disabled` (no NATS server), or `down` (it does
    /// not answer).
    pub state: String,
    pub realm: Option<String>,
    pub roles: Vec<String>,
    pub leafnodes: u64,
    pub routes: u64,
}

impl Brief {
    /// From `mesh.env`'s lines ([`crate::read_env`]) and what the server
    /// said (`None`: it did not answer).
    pub fn from(env: &std::collections::BTreeMap<String, String>, varz: Option<&Varz>) -> Brief {
        let get = |k: &str| env.get(k).map(String::as_str).unwrap_or_default();
        let roles: Vec<String> = get("MACULA_ROLES")
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect();
        let realm = Some(get("MACULA_REALM").to_string()).filter(|r| !r.is_empty());
        let (leafnodes, routes) = varz.map_or((0, 0), |v| (v.leafnodes, v.routes));
        let state = if env.is_empty() {
            "disabled"
        } else if varz.is_none() {
            "down"
        } else {
            state_word(
                realm.is_some(),
                get("MACULA_JOINED") == "yes",
                roles.iter().any(|r| r == "bootstrap"),
                !get("MACULA_CONNECTS_TO").is_empty(),
                leafnodes > 0,
                routes > 0,
            )
        };
        Brief {
            state: state.into(),
            realm,
            roles,
            leafnodes,
            routes,
        }
    }

    /// The node's own: `mesh.env` under `root`, and the server on
    /// [`crate::conf::MONITOR`] when `ask_server` (not for a test tree).
    pub fn of_node(root: &std::path::Path, ask_server: bool) -> Brief {
        let env = crate::read_env(root);
        let varz = if env.is_empty() || !ask_server {
            None
        } else {
            varz(crate::conf::MONITOR).ok()
        };
        Brief::from(&env, varz.as_ref())
    }

    /// One line: `connected (1 leafnode, 0 routes); realm io.macula; roles peer`.
    pub fn line(&self) -> String {
        let plural = |n: u64, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        let mut s = self.state.clone();
        if self.leafnodes + self.routes > 0 {
            s.push_str(&format!(
                " ({}, {})",
                plural(self.leafnodes, "leafnode"),
                plural(self.routes, "route")
            ));
        }
        if let Some(r) = &self.realm {
            s.push_str(&format!("; realm {r}"));
        }
        if !self.roles.is_empty() {
            s.push_str(&format!("; roles {}", self.roles.join(", ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_brief_from_the_env_file_and_the_server() {
        let env: std::collections::BTreeMap<String, String> = [
            ("MACULA_REALM", "io.macula"),
            ("MACULA_ROLES", "peer"),
            ("MACULA_JOINED", "yes"),
            ("MACULA_CONNECTS_TO", "nats-leaf://b1.local:4433"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let v = Varz {
            leafnodes: 1,
            ..Varz::default()
        };
        let b = Brief::from(&env, Some(&v));
        assert_eq!(
            b.line(),
            "connected (1 leafnode, 0 routes); realm io.macula; roles peer"
        );
        assert_eq!(Brief::from(&env, None).state, "down");
        assert_eq!(
            Brief::from(&env, Some(&Varz::default())).state,
            "connecting"
        );
        assert_eq!(Brief::from(&Default::default(), None).line(), "disabled");
    }

    #[test]
    fn states() {
        assert_eq!(state_word(true, true, true, false, false, false), "serving");
        assert_eq!(
            state_word(true, true, true, true, false, false),
            "connecting"
        );
        assert_eq!(state_word(true, true, true, true, false, true), "connected");
        assert_eq!(
            state_word(true, true, false, false, false, false),
            "no bootstrap nodes known"
        );
        assert_eq!(
            state_word(true, false, false, true, true, true),
            "not joined"
        );
        assert_eq!(state_word(false, true, true, true, true, true), "no realm");
    }
}
