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
