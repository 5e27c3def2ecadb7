//! Coordinated updates (plan §4.12.3): a rollout of one version over the
//! realm's nodes, as the operator starts it on the realm CA's holder
//! ([`Plan`], kept in [`BUCKET`]; to be signed with the realm CA, as
//! orders and desired configurations are, when the command that writes
//! it is built).
//!
//! Nobody runs the rollout: every node's agent reads the plan and the
//! fleet's heartbeats and works out the same answer ([`verdict`]) — whose
//! turn it is, whether the canary nodes passed, whether too many nodes
//! failed — and what it should do itself ([`step`]). A node updates only
//! while it holds one of the rollout's `max_unavailable` reboot slots
//! (`crate::slots`, key `slots.<plan id>`), and gives it back once it runs
//! the new version, marked good, with no failing check, for
//! `health_check_wait`. A node whose own
//! boot counting took it back to the version before has failed: it never
//! tries that version again, and when more nodes failed than the success
//! threshold allows, the rollout stops, saying why ([`Stop`]).
//!
//! Everything here is a pure function of what was read, so every node
//! agrees and the tests can say what happens in each case.

use crate::Heartbeat;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The realm's bucket of the rollout: its [`Plan`] under [`PLAN_KEY`], and
/// under [`STOP_KEY`] why it stopped, once it did.
pub const BUCKET: &str = "fleet-rollout";
pub const PLAN_KEY: &str = "plan";
pub const STOP_KEY: &str = "stopped";

/// How the nodes take their turns: every node in turn, or the canary
/// nodes first (the configuration's `fleet.update.strategy`).
pub use maculaos_config::schema::RolloutStrategy as Strategy;

/// What the operator last said of the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Control {
    Running,
    /// No node starts an update; those updating finish.
    Paused,
    /// As paused, for good: a new rollout replaces it.
    Aborted,
}

/// A rollout as the operator started it (or paused, resumed, aborted it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Names this rollout (a new one gets a new id), and its reboot slots
    /// (`slots::key(id)`): a new rollout starts with all of them free.
    pub id: String,
    pub realm: String,
    pub version: String,
    pub strategy: Strategy,
    /// Nodes that may be updating at once (at least 1).
    pub max_unavailable: u32,
    /// How long a node runs the new version, marked good and healthy,
    /// before its slot goes to the next (seconds).
    pub health_check_wait: u64,
    /// The nodes of the rollout: the fleet when it started. A node that
    /// joins later is not part of it.
    pub nodes: Vec<String>,
    /// The canary nodes (strategy canary), among `nodes`.
    pub canary: Vec<String>,
    /// The share of nodes (percent) that must succeed: of the canary
    /// nodes before the others start, and of all of them.
    pub success_threshold: u8,
    pub control: Control,
    /// When and by whom it was last set.
    pub set_at: u64,
    pub by: String,
}

/// Why a rollout stopped, written by the first node that saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    /// The [`Plan::id`] it is about.
    pub id: String,
    pub reason: String,
}

/// Where a node stands in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "lowercase")]
pub enum Position {
    /// Not started (or no heartbeat from it yet).
    Waiting,
    /// Holds a slot, still on the version before: downloading, applying,
    /// rebooting (or it was interrupted, and goes on).
    Holding,
    /// Runs the version: on trial, or not yet marked good and healthy for
    /// `health_check_wait` (a failing check starts that wait again).
    Settling,
    /// Runs the version, marked good, healthy for `health_check_wait`.
    Done,
    /// Its boot counting took it back from the version (why).
    Failed(String),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Waiting => f.write_str("waiting"),
            Position::Holding => f.write_str("updating"),
            Position::Settling => f.write_str("on the version, settling"),
            Position::Done => f.write_str("done"),
            Position::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// The share `percent` of `n` nodes, rounded up, at least one, at most `n`
/// (none of none): 5% of 4 nodes is one canary.
pub fn share(n: usize, percent: u8) -> usize {
    if n == 0 {
        return 0;
    }
    (n * usize::from(percent)).div_ceil(100).clamp(1, n)
}

/// The canary nodes of `nodes`: `percent` of them, the first by name.
pub fn pick_canary(nodes: &[String], percent: u8) -> Vec<String> {
    let mut sorted = nodes.to_vec();
    sorted.sort();
    sorted.truncate(share(nodes.len(), percent));
    sorted
}

/// Where `node` stands: from its last heartbeat (`None`: none yet) and
/// whether it holds a slot.
pub fn position(plan: &Plan, hb: Option<&Heartbeat>, holds_slot: bool) -> Position {
    let before = || {
        if holds_slot {
            Position::Holding
        } else {
            Position::Waiting
        }
    };
    let Some(hb) = hb else {
        return before();
    };
    // As the updater compares them: `v0.2.0` is 0.2.0.
    let same = |v: &str| maculaos_bundle::compare_versions(v, &plan.version).is_eq();
    if let Some(f) = hb.failed_versions.iter().find(|f| same(&f.version)) {
        return Position::Failed(f.reason.clone());
    }
    if !same(&hb.version) {
        return before();
    }
    // `healthy_seconds` counts only while marked good with no failing check.
    let healthy = hb.update == "good" && hb.failing.is_empty();
    if healthy && hb.healthy_seconds >= plan.health_check_wait {
        Position::Done
    } else {
        Position::Settling
    }
}

/// The rollout as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "lowercase")]
pub enum Verdict {
    /// The canary nodes' turn.
    Canary,
    /// Every node's turn.
    All,
    /// Every node is done (or failed, within what the threshold allows).
    Finished,
    Paused,
    Aborted,
    /// Too many nodes failed (why).
    Stopped(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Canary => f.write_str("running: the canary nodes first"),
            Verdict::All => f.write_str("running"),
            Verdict::Finished => f.write_str("finished"),
            Verdict::Paused => f.write_str("paused"),
            Verdict::Aborted => f.write_str("aborted"),
            Verdict::Stopped(why) => write!(f, "stopped: {why}"),
        }
    }
}

/// Why `group` failed, if more of its nodes failed than `threshold`
/// (percent that must succeed) allows.
fn too_many_failed(
    what: &str,
    group: &[String],
    positions: &BTreeMap<String, Position>,
    threshold: u8,
) -> Option<String> {
    let failed: Vec<(&String, &String)> = group
        .iter()
        .filter_map(|n| match positions.get(n) {
            Some(Position::Failed(why)) => Some((n, why)),
            _ => None,
        })
        .collect();
    let must_succeed = share(group.len(), threshold);
    if failed.is_empty() || group.len() - failed.len() >= must_succeed {
        return None;
    }
    let (first, why) = failed[0];
    Some(format!(
        "{} of {} {what} failed (at least {}% must succeed): {first}: {why}",
        failed.len(),
        group.len(),
        threshold
    ))
}

/// The rollout's state from every node's position (`stop`: what a node
/// wrote when it saw the rollout fail).
pub fn verdict(
    plan: &Plan,
    positions: &BTreeMap<String, Position>,
    stop: Option<&Stop>,
) -> Verdict {
    if let Some(s) = stop.filter(|s| s.id == plan.id) {
        return Verdict::Stopped(s.reason.clone());
    }
    let canary = plan.strategy == Strategy::Canary;
    if canary {
        if let Some(why) = too_many_failed(
            "canary nodes",
            &plan.canary,
            positions,
            plan.success_threshold,
        ) {
            return Verdict::Stopped(why);
        }
    }
    if let Some(why) = too_many_failed("nodes", &plan.nodes, positions, plan.success_threshold) {
        return Verdict::Stopped(why);
    }
    match plan.control {
        Control::Aborted => return Verdict::Aborted,
        Control::Paused => return Verdict::Paused,
        Control::Running => {}
    }
    let settled =
        |n: &String| matches!(positions.get(n), Some(Position::Done | Position::Failed(_)));
    if canary && !plan.canary.iter().all(settled) {
        return Verdict::Canary;
    }
    if plan.nodes.iter().all(settled) {
        Verdict::Finished
    } else {
        Verdict::All
    }
}

/// What a node does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing now (why, for its journal when it changes).
    Wait(String),
    /// Take a slot (if one is free) and update.
    Update,
    /// Give its slot back: it is done, or failed.
    Release,
}

/// What `me`, at `mine`, does next in the rollout judged `verdict`.
pub fn step(plan: &Plan, me: &str, mine: &Position, holds_slot: bool, verdict: &Verdict) -> Step {
    if !plan.nodes.iter().any(|n| n == me) {
        return Step::Wait(format!("not part of the rollout of {}", plan.version));
    }
    let my_turn = match verdict {
        Verdict::Canary => plan.canary.iter().any(|n| n == me),
        Verdict::All => true,
        _ => false,
    };
    match mine {
        Position::Done | Position::Failed(_) if holds_slot => Step::Release,
        Position::Done => Step::Wait(format!("runs {}", plan.version)),
        Position::Failed(why) => Step::Wait(format!(
            "{} failed here, never tried again: {why}",
            plan.version
        )),
        Position::Settling => Step::Wait(format!("runs {}, settling", plan.version)),
        // Interrupted (the agent restarted, a download failed): again, with
        // the slot it holds. Paused: it keeps the slot, to go on once resumed.
        Position::Holding if my_turn => Step::Update,
        Position::Holding if matches!(verdict, Verdict::Aborted | Verdict::Stopped(_)) => {
            Step::Release
        }
        Position::Holding => Step::Wait(format!("the rollout is {verdict}")),
        Position::Waiting if my_turn => Step::Update,
        Position::Waiting if *verdict == Verdict::Canary => {
            Step::Wait("waiting for the canary nodes".into())
        }
        Position::Waiting => Step::Wait(format!("the rollout is {verdict}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FailedVersion;

    fn nodes(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    fn plan(strategy: Strategy, n: usize) -> Plan {
        let all = nodes(n);
        Plan {
            id: "r1".into(),
            realm: "lab".into(),
            version: "2.0".into(),
            strategy,
            max_unavailable: 1,
            health_check_wait: 60,
            canary: pick_canary(&all, 25),
            nodes: all,
            success_threshold: 75,
            control: Control::Running,
            set_at: 0,
            by: "op".into(),
        }
    }

    /// A heartbeat on `version`, `update` (good or trial), healthy (marked
    /// good, nothing failing) for `healthy` seconds.
    fn hb(version: &str, update: &str, healthy: u64) -> Heartbeat {
        let mut h: Heartbeat = serde_json::from_value(serde_json::json!({
            "node": "n1", "realm": "lab", "roles": ["peer"], "version": version,
            "slot": "A", "update": update, "last_update": null, "bad_versions": 0,
            "checks": 3, "failing": [], "cpu_percent": null, "memory_percent": null,
            "disk_percent": null, "uptime_seconds": 900, "config_digest": "x",
            "sent_at": 0
        }))
        .unwrap();
        h.healthy_seconds = healthy;
        h
    }

    #[test]
    fn shares_round_up_and_stay_within_the_fleet() {
        assert_eq!(share(4, 5), 1);
        assert_eq!(share(47, 5), 3);
        assert_eq!(share(4, 95), 4);
        assert_eq!(share(4, 75), 3);
        assert_eq!(share(3, 100), 3);
        assert_eq!(share(0, 50), 0);
        let unsorted: Vec<String> = ["n3", "n1", "n2", "n4"].map(String::from).to_vec();
        assert_eq!(pick_canary(&unsorted, 5), ["n1"]);
        assert_eq!(pick_canary(&unsorted, 50), ["n1", "n2"]);
    }

    #[test]
    fn a_node_is_done_only_marked_good_and_healthy_long_enough() {
        let p = plan(Strategy::Rolling, 4);
        let pos = |h: &Heartbeat, slot| position(&p, Some(h), slot);
        assert_eq!(position(&p, None, false), Position::Waiting);
        assert_eq!(position(&p, None, true), Position::Holding);
        assert_eq!(pos(&hb("1.0", "good", 900), false), Position::Waiting);
        assert_eq!(pos(&hb("1.0", "good", 900), true), Position::Holding);
        // Rebooted into it: settling, slot or not, until marked good and
        // healthy for the whole wait.
        assert_eq!(pos(&hb("2.0", "trial", 0), false), Position::Settling);
        assert_eq!(pos(&hb("2.0", "good", 59), true), Position::Settling);
        assert_eq!(pos(&hb("2.0", "good", 60), true), Position::Done);
        let mut failing = hb("2.0", "good", 600);
        failing.failing = vec!["nats".into()];
        assert_eq!(pos(&failing, true), Position::Settling);
        let mut back = hb("1.0", "good", 40);
        back.failed_versions = vec![FailedVersion {
            version: "2.0".into(),
            reason: "slot B was not marked good after 3 boots".into(),
        }];
        assert_eq!(
            pos(&back, true),
            Position::Failed("slot B was not marked good after 3 boots".into())
        );
    }

    #[test]
    fn a_slot_holder_goes_on_after_an_interruption_and_lets_go_when_stopped() {
        let mut p = plan(Strategy::Rolling, 2);
        let h = Position::Holding;
        assert_eq!(step(&p, "n1", &h, true, &Verdict::All), Step::Update);
        // Paused: it keeps the slot (it may be rebooting into the version).
        p.control = Control::Paused;
        assert!(
            matches!(step(&p, "n1", &h, true, &Verdict::Paused), Step::Wait(w) if w.contains("paused"))
        );
        for v in [Verdict::Aborted, Verdict::Stopped("x".into())] {
            assert_eq!(step(&p, "n1", &h, true, &v), Step::Release);
        }
        assert!(matches!(
            step(&p, "n1", &Position::Settling, true, &Verdict::All),
            Step::Wait(w) if w.contains("settling")
        ));
    }

    fn at(pairs: &[(&str, Position)]) -> BTreeMap<String, Position> {
        pairs
            .iter()
            .map(|(n, p)| (n.to_string(), p.clone()))
            .collect()
    }

    #[test]
    fn rolling_runs_until_every_node_is_done() {
        let p = plan(Strategy::Rolling, 3);
        let mut pos = at(&[("n1", Position::Done), ("n2", Position::Settling)]);
        assert_eq!(verdict(&p, &pos, None), Verdict::All);
        assert_eq!(
            step(&p, "n3", &Position::Waiting, false, &Verdict::All),
            Step::Update
        );
        assert_eq!(
            step(&p, "n1", &Position::Done, true, &Verdict::All),
            Step::Release
        );
        assert!(matches!(
            step(&p, "n1", &Position::Done, false, &Verdict::All),
            Step::Wait(_)
        ));
        pos.insert("n2".into(), Position::Done);
        pos.insert("n3".into(), Position::Done);
        assert_eq!(verdict(&p, &pos, None), Verdict::Finished);
        assert!(
            matches!(step(&p, "other", &Position::Waiting, false, &Verdict::All), Step::Wait(w) if w.contains("not part"))
        );
    }

    #[test]
    fn canary_first_then_the_others() {
        let p = plan(Strategy::Canary, 4);
        assert_eq!(p.canary, vec!["n1".to_string()]);
        let pos = at(&[("n1", Position::Holding)]);
        let v = verdict(&p, &pos, None);
        assert_eq!(v, Verdict::Canary);
        // The canary, holding its slot, goes on with its update.
        assert_eq!(step(&p, "n1", &Position::Holding, true, &v), Step::Update);
        assert_eq!(
            step(&p, "n2", &Position::Waiting, false, &v),
            Step::Wait("waiting for the canary nodes".into())
        );
        let pos = at(&[("n1", Position::Done)]);
        assert_eq!(verdict(&p, &pos, None), Verdict::All);
    }

    #[test]
    fn a_failed_canary_stops_the_rollout_and_says_why() {
        let p = plan(Strategy::Canary, 4);
        let pos = at(&[(
            "n1",
            Position::Failed("slot B was not marked good after 3 boots".into()),
        )]);
        let v = verdict(&p, &pos, None);
        assert_eq!(
            v,
            Verdict::Stopped(
                "1 of 1 canary nodes failed (at least 75% must succeed): n1: slot B was not marked good after 3 boots"
                    .into()
            )
        );
        // Nobody else starts; the canary gives its slot back.
        assert!(
            matches!(step(&p, "n2", &Position::Waiting, false, &v), Step::Wait(w) if w.contains("stopped"))
        );
        assert_eq!(step(&p, "n1", &pos["n1"], true, &v), Step::Release);
        assert!(
            matches!(step(&p, "n1", &pos["n1"], false, &v), Step::Wait(w) if w.contains("never tried again"))
        );
    }

    #[test]
    fn failures_within_the_threshold_do_not_stop_it() {
        let mut p = plan(Strategy::Rolling, 4);
        p.success_threshold = 75;
        let failed = Position::Failed("x".into());
        let pos = at(&[("n1", failed.clone()), ("n2", Position::Done)]);
        assert_eq!(verdict(&p, &pos, None), Verdict::All);
        let pos = at(&[
            ("n1", failed.clone()),
            ("n2", failed),
            ("n3", Position::Done),
        ]);
        assert!(
            matches!(verdict(&p, &pos, None), Verdict::Stopped(w) if w.starts_with("2 of 4 nodes failed"))
        );
    }

    #[test]
    fn paused_aborted_and_stopped_start_nobody() {
        let mut p = plan(Strategy::Rolling, 2);
        p.control = Control::Paused;
        let pos = at(&[]);
        assert_eq!(verdict(&p, &pos, None), Verdict::Paused);
        assert!(matches!(
            step(&p, "n1", &Position::Waiting, false, &Verdict::Paused),
            Step::Wait(_)
        ));
        p.control = Control::Aborted;
        assert_eq!(verdict(&p, &pos, None), Verdict::Aborted);
        p.control = Control::Running;
        let stop = Stop {
            id: "r1".into(),
            reason: "why".into(),
        };
        assert_eq!(
            verdict(&p, &pos, Some(&stop)),
            Verdict::Stopped("why".into())
        );
        // Another rollout's stop is not this one's.
        let old = Stop {
            id: "r0".into(),
            reason: "old".into(),
        };
        assert_eq!(verdict(&p, &pos, Some(&old)), Verdict::All);
    }
}
