//! The fleet registry (plan §4.12.1–2, issue 21): every node of a realm
//! puts a heartbeat — its version, slot, update state, checks, CPU, memory,
//! disk, uptime and configuration digest — under its name in the realm's
//! key-value bucket [`BUCKET`] every [`EVERY`], from its health agent. Any
//! node of the realm reads the bucket back as the fleet: a node whose last
//! heartbeat is older than [`OFFLINE_AFTER`] is offline, one with a
//! failing check, a slot on trial or a nearly full disk or memory is
//! degraded, the others are healthy.
//!
//! The bucket lives in the bootstrap nodes' JetStream, so the fleet needs
//! no server of its own; the bootstrap nodes keep it on up to three of
//! them ([`replicas`]). JetStream writes need a majority of them: with two
//! bootstrap nodes, one down stops the heartbeats; with three, one may be
//! down.
//!
//! A heartbeat's age is how long before the newest heartbeat of the bucket
//! it was stored, both times stamped by the realm's JetStream: no node's
//! clock is compared with another's, so a node with a wrong clock is
//! neither offline nor immortal, and a reader with a wrong clock sees the
//! same fleet. The newest heartbeat is at most [`EVERY`] old while any
//! node is up (the reader's own, on a node of the realm), so a node is
//! offline at most [`EVERY`] after [`OFFLINE_AFTER`]. When no heartbeat is
//! stored at all (the bootstrap nodes lost their majority), the reader's
//! clock says so ([`Fleet::newest_seconds_ago`]).

pub mod coordinate;
pub mod drift;
pub mod fleetlock;
pub mod rollout;
pub mod slots;

use maculaos_config::Paths;
use maculaos_mesh::client::{Client, KvEntry};
use maculaos_mesh::order::Order;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// The realm's bucket of heartbeats, one key per node.
pub const BUCKET: &str = "fleet";
/// How often a node puts its heartbeat.
pub const EVERY: Duration = Duration::from_secs(15);
/// How often while a rollout is under way for it: the next node's turn
/// comes sooner after a slot is given back.
pub const ROLLING_EVERY: Duration = Duration::from_secs(5);
/// A node whose heartbeat is older than this is offline (four missed).
pub const OFFLINE_AFTER: u64 = 60;
/// Disk (`/var`) or memory use from which a node is degraded, percent.
pub const NEARLY_FULL: f64 = 90.0;
/// The most bootstrap nodes that keep a copy of the bucket.
pub const MAX_REPLICAS: usize = 3;
/// How long one mesh operation of the agent may take.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// What a node says about itself every [`EVERY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    pub realm: String,
    pub roles: Vec<String>,
    pub version: String,
    pub slot: Option<String>,
    /// `good`, or `trial` while this boot tries a slot not yet marked good.
    pub update: String,
    /// The last update applied (version), if any.
    pub last_update: Option<String>,
    /// Versions refused because they failed on this node.
    pub bad_versions: usize,
    /// Which, and why (a rollout never retries one here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_versions: Vec<FailedVersion>,
    /// The health agent's checks that ran, and those failing now.
    pub checks: usize,
    pub failing: Vec<String>,
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    /// Use of `/var`, where everything the node keeps is.
    pub disk_percent: Option<f64>,
    pub uptime_seconds: u64,
    /// How long it has been marked good with no failing check, as its
    /// agent saw it (counted again from 0 when the agent restarts).
    #[serde(default)]
    pub healthy_seconds: u64,
    /// sha256 of the configuration in force (first 16 hex digits): equal
    /// digests, equal configurations.
    pub config_digest: String,
    /// The node's clock when it was sent (unix seconds); for reading only.
    pub sent_at: u64,
    /// The keys of its configuration that differ from the realm's desired
    /// configuration for it (`None`: nothing is desired for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Vec<drift::Drifted>>,
    /// Why its drift could not be checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_error: Option<String>,
    /// What its agent last did in the realm's rollout (`None`: none
    /// concerns it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
}

/// A version that failed on a node, and why (its boot counting's words).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedVersion {
    pub version: String,
    pub reason: String,
}

/// A node as the fleet sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Offline,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Offline => "offline",
        })
    }
}

/// One node of the fleet: its last heartbeat and what it means now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub node: String,
    pub status: Status,
    /// Why it is not healthy (empty when it is).
    pub reasons: Vec<String>,
    /// When its last heartbeat was stored (unix seconds), and how long ago.
    pub last_seen: i64,
    pub age_seconds: u64,
    pub heartbeat: Heartbeat,
}

/// The status of a node whose last heartbeat `hb` was stored at `stored`,
/// when the bucket's newest was stored at `newest` (both unix seconds, the
/// realm's clock), with the reasons.
pub fn judge(hb: &Heartbeat, stored: i64, newest: i64) -> (Status, Vec<String>) {
    let age = newest.saturating_sub(stored).max(0) as u64;
    if age > OFFLINE_AFTER {
        return (
            Status::Offline,
            vec![format!("no heartbeat for {}", human_age(age))],
        );
    }
    let mut why = Vec::new();
    if !hb.failing.is_empty() {
        why.push(format!("failing: {}", hb.failing.join(", ")));
    }
    if hb.update == "trial" {
        why.push(format!(
            "slot {} on trial (not yet marked good)",
            hb.slot.as_deref().unwrap_or("?")
        ));
    }
    for (what, v) in [("disk", hb.disk_percent), ("memory", hb.memory_percent)] {
        if let Some(v) = v.filter(|v| *v >= NEARLY_FULL) {
            why.push(format!("{what} {v:.0}% used"));
        }
    }
    let status = if why.is_empty() {
        Status::Healthy
    } else {
        Status::Degraded
    };
    (status, why)
}

/// The fleet from the bucket's entries, judged against the newest of
/// them; entries that are not a heartbeat are returned apart (key and
/// why).
pub fn members(entries: &[KvEntry]) -> (Vec<Member>, Vec<(String, String)>) {
    let newest = newest_stored(entries).unwrap_or(0);
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    for e in entries {
        match serde_json::from_slice::<Heartbeat>(&e.value) {
            Ok(hb) => {
                let (status, reasons) = judge(&hb, e.stored, newest);
                out.push(Member {
                    node: e.key.clone(),
                    status,
                    reasons,
                    last_seen: e.stored,
                    age_seconds: newest.saturating_sub(e.stored).max(0) as u64,
                    heartbeat: hb,
                });
            }
            Err(why) => unreadable.push((e.key.clone(), why.to_string())),
        }
    }
    (out, unreadable)
}

/// When the bucket's last write was stored: the entry with the highest
/// revision (the stream's sequence, which no clock sets), not the largest
/// time, which a stream leader with a clock ahead would have left behind.
fn newest_stored(entries: &[KvEntry]) -> Option<i64> {
    entries.iter().max_by_key(|e| e.revision).map(|e| e.stored)
}

/// The fleet's counts, as plan §4.12.2 shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub nodes: usize,
    pub healthy: usize,
    pub degraded: usize,
    pub offline: usize,
}

impl Summary {
    pub fn of(members: &[Member]) -> Summary {
        let count = |s| members.iter().filter(|m| m.status == s).count();
        Summary {
            nodes: members.len(),
            healthy: count(Status::Healthy),
            degraded: count(Status::Degraded),
            offline: count(Status::Offline),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} node{} │ {} healthy │ {} degraded │ {} offline",
            self.nodes,
            if self.nodes == 1 { "" } else { "s" },
            self.healthy,
            self.degraded,
            self.offline
        )
    }
}

/// `12 s`, `5 min`, `3 h`, `2 d`: how long ago, roughly.
pub fn human_age(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172800 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86400),
    }
}

/// `12%`, or `?` where unknown.
pub fn percent(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}%")).unwrap_or_else(|| "?".into())
}

/// The fleet as a table: one row per node, then why the others are not
/// healthy.
pub fn table(members: &[Member]) -> String {
    let mut o = format!(
        "{:<24} {:<9} {:<14} {:<5} {:<10} {:<9} {:<5} {}\n",
        "NODE", "STATUS", "VERSION", "SLOT", "UPTIME", "CPU/MEM", "DISK", "SEEN"
    );
    for m in members {
        let hb = &m.heartbeat;
        o.push_str(&format!(
            "{:<24} {:<9} {:<14} {:<5} {:<10} {:<9} {:<5} {} ago\n",
            m.node,
            m.status.to_string(),
            hb.version,
            hb.slot.as_deref().unwrap_or("-"),
            human_age(hb.uptime_seconds),
            format!("{}/{}", percent(hb.cpu_percent), percent(hb.memory_percent)),
            percent(hb.disk_percent),
            human_age(m.age_seconds),
        ));
    }
    for m in members.iter().filter(|m| !m.reasons.is_empty()) {
        o.push_str(&format!("  {}: {}\n", m.node, m.reasons.join("; ")));
    }
    o
}

/// `why` a JetStream request failed, with what to do where JetStream has
/// no leader.
pub fn explain(why: &str) -> String {
    if why.contains("temporarily unavailable") {
        format!(
            "{why}: the realm's JetStream has no leader; it needs most of the realm's bootstrap nodes up, \
             and at least two of them (alone, a bootstrap node's nats-server 2.9 waits for a second \
             one forever)"
        )
    } else {
        why.to_string()
    }
}

/// Run `f` again while the realm's JetStream has no leader (electing one
/// takes seconds after a bootstrap node came back), for at most
/// `patience`; says once, on stderr, that it waits.
pub fn patiently<T>(
    patience: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = std::time::Instant::now() + patience;
    let mut said = false;
    loop {
        match f() {
            Err(e)
                if e.contains("temporarily unavailable")
                    && std::time::Instant::now() < deadline =>
            {
                if !said {
                    eprintln!(
                        "the realm's JetStream has no leader at the moment; waiting up to {} s for one",
                        patience.as_secs()
                    );
                    said = true;
                }
                // Pacing the next try, not waiting for a condition.
                std::thread::sleep(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Every node of the realm, sorted by name, from the node's own server.
pub fn list(client: &Client, realm: &str, now: i64) -> Result<Fleet, String> {
    let entries = client
        .kv_entries(realm, BUCKET)
        .map_err(|e| explain(&e.to_string()))?;
    let newest = newest_stored(&entries);
    let (members, unreadable) = members(&entries);
    Ok(Fleet {
        summary: Summary::of(&members),
        members,
        unreadable,
        newest_seconds_ago: newest.map(|t| now.saturating_sub(t).max(0) as u64),
    })
}

/// The fleet of the realm the node under `root` is in, read through its
/// own server, as the dashboard's fleet page shows it.
pub fn page_of_node(root: &Path) -> Result<maculaos_dashboard::FleetView, String> {
    let me = InRealm::of_node(root)
        .ok_or("this node is in no realm: there is no fleet to show (`maculaos mesh status`)")?;
    let c =
        Client::connect(&me.url, "maculaos-dashboard-fleet", TIMEOUT).map_err(|e| e.to_string())?;
    let fleet = list(&c, &me.realm, maculaos_mesh::state::now()).map_err(|e| explain(&e))?;
    Ok(page(&me.realm, &fleet))
}

/// `fleet` as the dashboard's fleet page shows it.
pub fn page(realm: &str, fleet: &Fleet) -> maculaos_dashboard::FleetView {
    let rows = fleet
        .members
        .iter()
        .map(|m| {
            let hb = &m.heartbeat;
            maculaos_dashboard::FleetRow {
                node: m.node.clone(),
                status: m.status.to_string(),
                version: hb.version.clone(),
                slot: format!("{} ({})", hb.slot.as_deref().unwrap_or("-"), hb.update),
                cpu: percent(hb.cpu_percent),
                memory: percent(hb.memory_percent),
                disk: percent(hb.disk_percent),
                last_seen: format!("{} ago", human_age(m.age_seconds)),
                why: m.reasons.join("; "),
            }
        })
        .collect();
    maculaos_dashboard::FleetView {
        realm: realm.to_string(),
        summary: fleet.summary.to_string(),
        all_healthy: fleet.summary.nodes > 0
            && fleet.summary.healthy == fleet.summary.nodes
            && fleet.stale().is_none(),
        warning: fleet.stale(),
        rows,
        json: serde_json::to_value(fleet).unwrap_or_default(),
    }
}

/// The fleet as [`list`] reads it.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    pub summary: Summary,
    pub members: Vec<Member>,
    /// Keys of the bucket whose value is not a heartbeat, and why.
    pub unreadable: Vec<(String, String)>,
    /// How long ago the newest heartbeat was stored, by the reader's clock
    /// (`None`: the bucket is empty).
    pub newest_seconds_ago: Option<u64>,
}

impl Fleet {
    /// A warning when no heartbeat has been stored for longer than a node
    /// takes to be offline: every status is as of then.
    pub fn stale(&self) -> Option<String> {
        let ago = self.newest_seconds_ago.filter(|a| *a > OFFLINE_AFTER)?;
        Some(format!(
            "no heartbeat was stored in the last {} by this node's clock: the list is as of then \
             (are most of the realm's bootstrap nodes up? `maculaos mesh status`), or this node's clock is wrong",
            human_age(ago)
        ))
    }
}

/// The realm's JetStream servers this bootstrap node sees now: itself and
/// the bootstrap nodes it has a route to. Not `jsz`'s cluster size, which
/// counts the configured routes, and a bootstrap node is configured with a
/// route to itself (nats-server wants one to run JetStream clustered):
/// a bootstrap node alone would ask for two copies and get none.
pub fn jetstream_servers() -> u64 {
    let routes = maculaos_mesh::status::routez(maculaos_mesh::conf::MONITOR)
        .map(|r| {
            let mut ids: Vec<String> = r.routes.into_iter().map(|r| r.remote_id).collect();
            ids.sort();
            ids.dedup();
            ids.len() as u64
        })
        .unwrap_or(0);
    routes + 1
}

/// How many copies of the bucket the realm keeps: one per JetStream
/// server of the realm (its bootstrap nodes), at most [`MAX_REPLICAS`].
pub fn replicas(jetstream_servers: u64) -> usize {
    (jetstream_servers as usize).clamp(1, MAX_REPLICAS)
}

/// The first 16 hex digits of the sha256 of `config` as JSON: the
/// configuration with its secrets redacted, so that the digest, which every
/// node of the realm reads, helps no one guess a password.
pub fn digest(config: &serde_yaml_ng::Value) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(config).unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(&json)[..8])
}

/// This node's mesh facts, from [`maculaos_mesh::ENV`]: its name, realm
/// and roles, once it is in a realm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InRealm {
    pub node: String,
    pub realm: String,
    pub roles: Vec<String>,
    pub url: String,
}

impl InRealm {
    pub fn of_node(root: &Path) -> Option<InRealm> {
        let env = maculaos_mesh::read_env(root);
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        if get("MACULA_JOINED").as_deref() != Some("yes") {
            return None;
        }
        Some(InRealm {
            node: get("MACULA_NODE")?,
            realm: get("MACULA_REALM")?,
            roles: get("MACULA_ROLES")
                .map(|r| r.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            url: get("NATS_URL").unwrap_or_else(|| maculaos_mesh::client::LOCAL_URL.into()),
        })
    }

    fn bootstrap(&self) -> bool {
        self.roles.iter().any(|r| r == "bootstrap")
    }
}

/// This node's heartbeat now.
pub fn gather(
    paths: &Paths,
    me: &InRealm,
    sampler: &mut maculaos_alerts::Sampler,
    now: u64,
) -> Heartbeat {
    let root = &paths.root;
    let loaded = maculaos_config::load(paths);
    let config = &loaded.config;
    let results = maculaos_health::latest_results(paths);
    let failing: Vec<String> = results
        .iter()
        .filter(|(_, (s, _))| *s == maculaos_health::State::Fail)
        .map(|(n, _)| n.clone())
        .collect();
    let facts = maculaos_metrics::gather(root, config, Vec::new(), None);
    let r = sampler.read(root, failing.len());
    let uptime = std::fs::read_to_string(root.join("proc/uptime"))
        .ok()
        .and_then(|t| t.split('.').next().and_then(|s| s.trim().parse().ok()))
        .unwrap_or(0);
    let round = |v: Option<f64>| v.map(|v| (v * 10.0).round() / 10.0);
    Heartbeat {
        node: me.node.clone(),
        realm: me.realm.clone(),
        roles: me.roles.clone(),
        version: facts.version,
        slot: facts.slot,
        update: if facts.trial { "trial" } else { "good" }.into(),
        last_update: facts.last_update.map(|(v, _, _)| v),
        bad_versions: facts.bad_versions.len(),
        failed_versions: facts
            .bad_versions
            .into_iter()
            .map(|b| FailedVersion {
                version: b.version,
                reason: b.reason,
            })
            .collect(),
        checks: results.len(),
        failing,
        cpu_percent: round(r.cpu_usage),
        memory_percent: round(r.memory_usage),
        disk_percent: round(r.disk_usage),
        uptime_seconds: uptime,
        healthy_seconds: 0,
        config_digest: digest(&maculaos_config::load::redact(&loaded.value)),
        sent_at: now,
        drift: None,
        drift_error: None,
        rollout: None,
    }
}

/// The health agent's thread: every [`EVERY`], while the node is in a
/// realm, its heartbeat put in the bucket; on a bootstrap node the bucket
/// is made, and kept on as many bootstrap nodes as [`replicas`] says,
/// first. What fails is said once until it changes (the agent's stdout is
/// its journal), never fatal.
///
/// An operator's order that maculaos-meshd accepted
/// ([`maculaos_mesh::state::State::keep_order`]) is checked again and
/// handed to `carry_out` (the binary's factory reset), once.
pub fn spawn(
    paths: Paths,
    carry_out: CarryOut,
    update: coordinate::Update,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fleet".into())
        .spawn(move || {
            let mut sampler = maculaos_alerts::Sampler::default();
            let mut client: Option<(String, Client)> = None;
            let mut healthy_since = None;
            let mut said = String::new();
            let mut leaving = false;
            let mut roller = coordinate::Roller::new(update, &paths.root);
            let mut rollout: Option<String> = None;
            let mut rolling = false;
            loop {
                leaving |= take_order(&paths.root, carry_out);
                let outcome = match InRealm::of_node(&paths.root) {
                    // Decommissioned: the reset is under way, and a
                    // heartbeat would put the node back in the registry.
                    _ if leaving => Ok(None),
                    None => {
                        client = None;
                        Ok(None)
                    }
                    Some(me) => {
                        let mut round = Round {
                            client: &mut client,
                            sampler: &mut sampler,
                            healthy_since: &mut healthy_since,
                            roller: &mut roller,
                            rollout: &mut rollout,
                            rolling: &mut rolling,
                        };
                        round.beat(&paths, &me).map(Some)
                    }
                };
                let now = match &outcome {
                    Ok(Some(realm)) => format!("fleet: heartbeats go to realm {realm}"),
                    Ok(None) => String::new(),
                    Err(why) => format!("fleet: no heartbeat: {}", explain(why)),
                };
                if now != said && !now.is_empty() {
                    println!("event: {now}");
                }
                if outcome.is_err() {
                    // A new connection next time: the server may have moved.
                    client = None;
                }
                said = now;
                std::thread::sleep(if rolling { ROLLING_EVERY } else { EVERY });
            }
        })
}

/// What carries out an operator's order on this node.
pub type CarryOut = fn(&Order) -> Result<(), String>;

/// The order maculaos-meshd kept, if any: checked again here (the file is
/// in a directory meshd writes), carried out, and said in the journal.
/// Returns whether the node is leaving its realm (decommissioned): its key
/// is taken out of the registry first, and no heartbeat follows.
fn take_order(root: &Path, carry_out: CarryOut) -> bool {
    let st = maculaos_mesh::state::State::under(root);
    let Some(taken) = st.take_order() else {
        return false;
    };
    let me = InRealm::of_node(root);
    let checked = taken.and_then(|signed| {
        let me = me.as_ref().ok_or("this node is no longer in a realm")?;
        st.open_order(&signed, &me.realm, &me.node)
    });
    let order = match checked {
        Ok(order) => order,
        Err(why) => {
            println!("event: fleet: an order was dropped: {why}");
            return false;
        }
    };
    println!(
        "event: fleet: carrying out {} from {} (made on the realm's CA holder)",
        serde_json::to_string(&order.action).unwrap_or_default(),
        order.by
    );
    let leaving = matches!(
        order.action,
        maculaos_mesh::order::Action::Decommission { .. }
    );
    if let (true, Some(me)) = (leaving, &me) {
        let gone = Client::connect(&me.url, "maculaos-agent-fleet", TIMEOUT)
            .and_then(|c| c.kv_delete(&me.realm, BUCKET, &me.node));
        if let Err(e) = gone {
            println!("event: fleet: not taken out of the registry: {e}");
        }
    }
    match carry_out(&order) {
        Ok(()) => leaving,
        Err(why) => {
            println!("event: fleet: the order failed: {why}");
            false
        }
    }
}

/// How long `hb`'s node has been marked good with no failing check, counted
/// from `since` (set when it became so, cleared when it is not).
fn healthy_for(hb: &Heartbeat, since: &mut Option<std::time::Instant>) -> u64 {
    if hb.update == "good" && hb.failing.is_empty() {
        since
            .get_or_insert_with(std::time::Instant::now)
            .elapsed()
            .as_secs()
    } else {
        *since = None;
        0
    }
}

/// What a round of the fleet thread works with, kept between rounds.
struct Round<'a> {
    client: &'a mut Option<(String, Client)>,
    sampler: &'a mut maculaos_alerts::Sampler,
    healthy_since: &'a mut Option<std::time::Instant>,
    roller: &'a mut coordinate::Roller,
    /// What the node last did in a rollout, for its next heartbeat.
    rollout: &'a mut Option<String>,
    /// Whether a rollout is under way for this node (rounds come sooner).
    rolling: &'a mut bool,
}

impl Round<'_> {
    /// One heartbeat, then this node's step in the realm's rollout;
    /// returns the realm it went to.
    fn beat(&mut self, paths: &Paths, me: &InRealm) -> Result<String, String> {
        if self.client.as_ref().is_none_or(|(url, _)| *url != me.url) {
            let c = Client::connect(&me.url, "maculaos-agent-fleet", TIMEOUT)
                .map_err(|e| e.to_string())?;
            *self.client = Some((me.url.clone(), c));
        }
        let Some((_, c)) = self.client.as_ref() else {
            return Err("no connection".into());
        };
        if me.bootstrap() {
            // Alone, a bootstrap node's JetStream has no leader (nats-server
            // 2.9): a bucket asked for then may be made later, with one
            // copy, and growing it to two once a second bootstrap node came
            // left the stream without a leader (seen in mesh-realm). Made
            // once the realm has two, with as many copies as it has then.
            let servers = jetstream_servers();
            if servers < 2 {
                return Err(
                    "this bootstrap node has no route to another yet: the realm's JetStream needs two"
                        .into(),
                );
            }
            c.kv_ensure(&me.realm, BUCKET, replicas(servers))
                .map_err(|e| e.to_string())?;
        }
        let mut hb = gather(
            paths,
            me,
            self.sampler,
            maculaos_mesh::state::now().max(0) as u64,
        );
        hb.healthy_seconds = healthy_for(&hb, self.healthy_since);
        match drift::of_node(c, paths, &me.realm, &me.node) {
            Ok(d) => hb.drift = d,
            Err(why) => hb.drift_error = Some(why),
        }
        hb.rollout = self.rollout.clone();
        let json = serde_json::to_vec(&hb).map_err(|e| e.to_string())?;
        c.kv_put(&me.realm, BUCKET, &me.node, &json)
            .map_err(|e| e.to_string())?;
        let st = maculaos_mesh::state::State::under(&paths.root);
        match self.roller.round(c, &st, &hb) {
            Ok(Some((line, under_way))) => {
                if self.rollout.as_deref() != Some(line.as_str()) {
                    println!("event: fleet: rollout: {line}");
                }
                *self.rollout = Some(line);
                *self.rolling = under_way;
            }
            Ok(None) => {
                *self.rollout = None;
                *self.rolling = false;
            }
            Err(why) => {
                let line = format!("cannot follow the rollout: {}", explain(&why));
                if self.rollout.as_deref() != Some(line.as_str()) {
                    println!("event: fleet: {line}");
                }
                *self.rollout = Some(line);
            }
        }
        Ok(me.realm.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb() -> Heartbeat {
        Heartbeat {
            node: "edge-01".into(),
            realm: "io.macula".into(),
            roles: vec!["peer".into()],
            version: "0.4.0".into(),
            slot: Some("a".into()),
            update: "good".into(),
            last_update: None,
            bad_versions: 0,
            failed_versions: vec![],
            checks: 3,
            failing: vec![],
            cpu_percent: Some(12.0),
            memory_percent: Some(34.0),
            disk_percent: Some(10.0),
            uptime_seconds: 3600,
            healthy_seconds: 3000,
            config_digest: "0123456789abcdef".into(),
            sent_at: 1000,
            drift: None,
            drift_error: None,
            rollout: None,
        }
    }

    fn entry(key: &str, hb: &Heartbeat, stored: i64) -> KvEntry {
        KvEntry {
            key: key.into(),
            value: serde_json::to_vec(hb).unwrap(),
            // Written in the order of their times, as a stream does.
            revision: stored as u64,
            stored,
        }
    }

    #[test]
    fn offline_after_the_limit_by_the_servers_clock() {
        let h = hb();
        assert_eq!(
            judge(&h, 1000, 1000 + OFFLINE_AFTER as i64).0,
            Status::Healthy
        );
        let (s, why) = judge(&h, 1000, 1001 + OFFLINE_AFTER as i64);
        assert_eq!(s, Status::Offline);
        assert_eq!(why, vec!["no heartbeat for 61 s"]);
        // The node's own clock does not matter; a heartbeat stored after
        // the newest one (a new stream leader's clock) is not "in the
        // future".
        let mut late = h.clone();
        late.sent_at = 0;
        assert_eq!(judge(&late, 1000, 1010).0, Status::Healthy);
        assert_eq!(judge(&h, 2000, 1000).0, Status::Healthy);
    }

    #[test]
    fn degraded_with_its_reasons() {
        let mut h = hb();
        h.failing = vec!["web".into(), "disk".into()];
        h.update = "trial".into();
        h.disk_percent = Some(93.4);
        let (s, why) = judge(&h, 1000, 1000);
        assert_eq!(s, Status::Degraded);
        assert_eq!(
            why,
            vec![
                "failing: web, disk",
                "slot a on trial (not yet marked good)",
                "disk 93% used"
            ]
        );
    }

    #[test]
    fn summary_as_the_plan_writes_it() {
        let mut sick = hb();
        sick.failing = vec!["web".into()];
        let entries = vec![
            entry("a", &hb(), 1000),
            entry("b", &sick, 1000),
            entry("c", &hb(), 900),
            KvEntry {
                key: "junk".into(),
                value: b"not json".to_vec(),
                revision: 2,
                stored: 1000,
            },
        ];
        let (m, bad) = members(&entries);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, "junk");
        let s = Summary::of(&m);
        assert_eq!(
            s.to_string(),
            "3 nodes │ 1 healthy │ 1 degraded │ 1 offline"
        );
        let t = table(&m);
        assert!(t.contains("b: failing: web"), "{t}");
        assert!(t.contains("c: no heartbeat for 100 s"), "{t}");
        assert!(t.lines().nth(1).unwrap().starts_with("a "), "{t}");
    }

    #[test]
    fn ages_are_by_the_newest_heartbeat_not_the_readers_clock() {
        let (m, _) = members(&[entry("a", &hb(), 5000), entry("b", &hb(), 4930)]);
        assert_eq!(m[0].status, Status::Healthy);
        assert_eq!((m[1].status, m[1].age_seconds), (Status::Offline, 70));
        let fleet = |now: i64| Fleet {
            summary: Summary::of(&m),
            members: m.clone(),
            unreadable: vec![],
            newest_seconds_ago: Some(now.saturating_sub(5000) as u64),
        };
        assert_eq!(fleet(5030).stale(), None);
        assert!(fleet(5600).stale().unwrap().contains("10 min"));
    }

    #[test]
    fn the_last_write_not_the_largest_time_is_the_newest() {
        // A leader whose clock ran ahead stored `a`; the realm's last
        // write, `b`, has an earlier time: `a` is not in the future.
        let mut late = entry("b", &hb(), 1000);
        late.revision = 9_999;
        let (m, _) = members(&[entry("a", &hb(), 1300), late]);
        assert!(m.iter().all(|m| m.status == Status::Healthy), "{m:?}");
    }

    #[test]
    fn replicas_one_per_bootstrap_node_up_to_three() {
        assert_eq!(replicas(0), 1);
        assert_eq!(replicas(2), 2);
        assert_eq!(replicas(5), 3);
    }

    #[test]
    fn ages_read_roughly() {
        assert_eq!(human_age(59), "59 s");
        assert_eq!(human_age(600), "10 min");
        assert_eq!(human_age(3 * 86400), "3 d");
    }

    #[test]
    fn a_heartbeat_is_small() {
        // Reported as bytes per node per minute: keep it in check.
        let n = serde_json::to_vec(&hb()).unwrap().len();
        assert!(n < 512, "{n} bytes");
    }
}
