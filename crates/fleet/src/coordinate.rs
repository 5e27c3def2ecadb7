//! A rollout as it stands in the realm — the signed plan, why it stopped,
//! who holds its reboot slots, where each node is — read by `maculaos
//! fleet rollout status` and by every node's agent ([`View`]), and the
//! agent's part of it ([`Roller::round`]): take a slot when it is the
//! node's turn, update and reboot, give the slot back once the version
//! runs well (or failed here). The rules are [`crate::rollout`]'s.

use crate::rollout::{self, Plan, Position, Step, Stop, Verdict};
use crate::slots::{self, InBucket, Slots, Taken};
use crate::Heartbeat;
use maculaos_mesh::client::Client;
use maculaos_mesh::order::Signed;
use maculaos_mesh::state::State;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How an error about the plan itself (not about reading it) starts.
pub const UNFOLLOWABLE: &str = "the rollout plan in the realm cannot be followed";
/// Where a node remembers the newest rollout plan it followed (`set_at`).
pub const SEEN_FILE: &str = "/var/lib/maculaos/fleet-rollout-seen";

/// What applies a version to the standby slot and reboots into it (the
/// binary's `maculaos upgrade --apply --version V`, then a reboot);
/// returns only when it failed, or once the reboot is under way.
pub type Update = fn(&str) -> Result<(), String>;

/// The plan in the realm, if there is one: `st` checks its signature
/// against the realm CA (`None`: not checked, for a reader who cannot read
/// the CA's certificate). Returns the plan, whether it was checked, and its
/// revision in the bucket.
pub fn plan(
    client: &Client,
    realm: &str,
    st: Option<&State>,
) -> Result<Option<(Plan, bool, u64)>, String> {
    Ok(plan_text(client, realm, st)?.map(|(p, c, r, _)| (p, c, r)))
}

/// [`plan`] with the signed text as the bucket holds it.
fn plan_text(
    client: &Client,
    realm: &str,
    st: Option<&State>,
) -> Result<Option<(Plan, bool, u64, String)>, String> {
    let got = match client.kv_get(realm, rollout::BUCKET, rollout::PLAN_KEY) {
        Ok(v) => v,
        // No bucket: no rollout was ever started.
        Err(e) if e.to_string().contains("no bucket") => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let Some(v) = got.filter(|v| !v.value.is_empty()) else {
        return Ok(None);
    };
    let opened = || -> Result<Plan, String> {
        let signed = Signed::from_json(v.value.as_bytes())?;
        let text = match st {
            Some(st) => st.verified_text(&signed, "the rollout plan")?,
            None => signed.text.clone(),
        };
        let plan: Plan = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if plan.realm != realm {
            return Err(format!("it is for realm {}, not {realm}", plan.realm));
        }
        Ok(plan)
    };
    let plan = opened().map_err(|e| format!("{UNFOLLOWABLE}: {e}"))?;
    Ok(Some((plan, st.is_some(), v.revision, v.value)))
}

/// A rollout as it stands.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub plan: Plan,
    /// Whether the plan's signature was checked (by the realm CA).
    pub signature_checked: bool,
    pub verdict: Verdict,
    /// Who holds its reboot slots.
    pub slots: Slots,
    /// Each node of the plan: where it is, and what its agent last said of
    /// the rollout.
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub node: String,
    pub position: Position,
    pub holds_slot: bool,
    pub note: Option<String>,
}

/// The rollout in `realm` (`None`: none was started); `own`: this node's
/// heartbeat, fresher than the one in the bucket.
pub fn view(
    client: &Client,
    realm: &str,
    st: Option<&State>,
    own: Option<&Heartbeat>,
) -> Result<Option<View>, String> {
    Ok(view_at(client, realm, st, own)?.map(|(v, _, _)| v))
}

/// [`view`] with the plan's revision and text in the bucket.
fn view_at(
    client: &Client,
    realm: &str,
    st: Option<&State>,
    own: Option<&Heartbeat>,
) -> Result<Option<(View, u64, String)>, String> {
    let Some((plan, checked, revision, value)) = plan_text(client, realm, st)? else {
        return Ok(None);
    };
    let stop: Option<Stop> = client
        .kv_get(realm, rollout::BUCKET, rollout::STOP_KEY)
        .map_err(|e| e.to_string())?
        .and_then(|v| serde_json::from_str(&v.value).ok());
    let (slots, _) = slots::read(&store(client, realm, &plan))?;
    let entries = client
        .kv_entries(realm, crate::BUCKET)
        .map_err(|e| crate::explain(&e.to_string()))?;
    let (members, _) = crate::members(&entries);
    Ok(Some((
        assemble(plan, checked, stop, slots, &members, own),
        revision,
        value,
    )))
}

/// The [`View`] of what was read: `own` (this node's heartbeat, fresher
/// than the one in the bucket) wins over its entry in `members`.
fn assemble(
    plan: Plan,
    checked: bool,
    stop: Option<Stop>,
    slots: Slots,
    members: &[crate::Member],
    own: Option<&Heartbeat>,
) -> View {
    let mut beats: BTreeMap<&str, &Heartbeat> = members
        .iter()
        .map(|m| (m.node.as_str(), &m.heartbeat))
        .collect();
    if let Some(own) = own {
        beats.insert(own.node.as_str(), own);
    }
    let mut positions = BTreeMap::new();
    let mut nodes = Vec::new();
    for n in &plan.nodes {
        let holds = slots.holders.iter().any(|h| h == n);
        let hb = beats.get(n.as_str()).copied();
        let p = rollout::position(&plan, hb, holds);
        positions.insert(n.clone(), p.clone());
        nodes.push(NodeView {
            node: n.clone(),
            position: p,
            holds_slot: holds,
            note: hb.and_then(|h| h.rollout.clone()),
        });
    }
    let verdict = rollout::verdict(&plan, &positions, stop.as_ref());
    View {
        plan,
        signature_checked: checked,
        verdict,
        slots,
        nodes,
    }
}

/// The key of `plan`'s reboot slots in the realm's bucket.
pub fn store<'a>(client: &'a Client, realm: &'a str, plan: &Plan) -> InBucket<'a> {
    InBucket {
        client,
        realm,
        bucket: rollout::BUCKET,
        key: slots::key(&plan.id),
    }
}

/// What the last update a node tried said, shared with its thread.
#[derive(Debug, Default)]
struct Attempt {
    /// The rollout it was for (a new rollout starts afresh).
    plan: String,
    /// Failures in a row, the last one's words and when it ended.
    failures: u32,
    error: Option<String>,
    ended: Option<Instant>,
    /// When the update was written and the reboot asked for.
    rebooting: Option<Instant>,
}

/// How long a node may take to go down after asking for its reboot before
/// the update counts as failed (and is tried again).
const REBOOT_GRACE: Duration = Duration::from_secs(600);

/// The wait before trying an update again after `failures` in a row:
/// 30 s, doubled each time, at most 10 min.
pub fn retry_after(failures: u32) -> Duration {
    Duration::from_secs((30u64 << failures.saturating_sub(1).min(5)).min(600))
}

/// `text` with the password of any `scheme://user:password@` taken out: an
/// update source's credentials never reach a heartbeat.
pub fn without_credentials(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            out.push_str("***@");
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    // Tokens in query strings too.
    for key in ["token=", "access_token=", "password=", "key="] {
        let mut from = 0;
        while let Some(i) = out[from..].find(key) {
            let start = from + i + key.len();
            let end = out[start..]
                .find(|c: char| c == '&' || c.is_whitespace())
                .map_or(out.len(), |e| start + e);
            out.replace_range(start..end, "***");
            from = start + 3;
        }
    }
    out
}

/// The agent's part: one [`Roller::round`] per heartbeat.
pub struct Roller {
    update: Update,
    attempt: Arc<Mutex<Attempt>>,
    busy: Arc<AtomicBool>,
    /// Where the newest plan this node followed is remembered (its
    /// `set_at`): an older one signed before (a paused or aborted plan's
    /// earlier state put back by anyone on the mesh) is refused.
    seen_file: PathBuf,
    /// The plan's revision for which nothing is left to do here (the
    /// rollout is over for this node, no slot held): its bucket is not
    /// read again until the plan changes.
    settled: Option<(u64, String, String)>,
}

impl Roller {
    pub fn new(update: Update, root: &Path) -> Roller {
        Roller {
            update,
            attempt: Arc::default(),
            busy: Arc::default(),
            seen_file: root.join(SEEN_FILE.trim_start_matches('/')),
            settled: None,
        }
    }

    fn newest_seen(&self) -> u64 {
        std::fs::read_to_string(&self.seen_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Refuse a plan older than one followed before; remember a newer one.
    fn check_fresh(&self, plan: &Plan) -> Result<(), String> {
        let seen = self.newest_seen();
        if plan.set_at < seen {
            return Err(format!(
                "the rollout plan in the realm ({}, set at {}) is older than one this node saw before (set at {seen}, kept in {}): \
                 refused, as an earlier plan put back would be; the realm CA's holder sets a newer one with \
                 `sudo maculaos fleet update VERSION` or `fleet rollout pause|resume|abort`",
                plan.id,
                plan.set_at,
                self.seen_file.display()
            ));
        }
        if plan.set_at > seen {
            if let Some(dir) = self.seen_file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::write(&self.seen_file, plan.set_at.to_string())
                .map_err(|e| format!("writing {}: {e}", self.seen_file.display()))?;
        }
        Ok(())
    }

    /// One round: read the rollout, write why it stopped when this node is
    /// the first to see it, and take this node's step. Returns what the
    /// node does (for its heartbeat and journal; `None`: no rollout
    /// concerns it) and whether it is still under way for this node (the
    /// agent then comes back sooner).
    pub fn round(
        &mut self,
        client: &Client,
        st: &State,
        own: &Heartbeat,
    ) -> Result<Option<(String, bool)>, String> {
        let realm = own.realm.as_str();
        if let Some((revision, value, line)) = &self.settled {
            let now = match client.kv_get(realm, rollout::BUCKET, rollout::PLAN_KEY) {
                Ok(v) => v.map(|v| (v.revision, v.value)),
                Err(e) if e.to_string().contains("no bucket") => None,
                Err(e) => return Err(e.to_string()),
            };
            if now
                .as_ref()
                .is_some_and(|(r, v)| r == revision && v == value)
            {
                return Ok(Some((line.clone(), false)));
            }
            self.settled = None;
        }
        let Some((v, revision, value)) = view_at(client, realm, Some(st), Some(own))? else {
            return Ok(None);
        };
        let plan = &v.plan;
        self.check_fresh(plan)?;
        let me = own.node.as_str();
        if let Verdict::Stopped(why) = &v.verdict {
            let written = client
                .kv_get(realm, rollout::BUCKET, rollout::STOP_KEY)
                .map_err(|e| e.to_string())?
                .and_then(|s| serde_json::from_str::<Stop>(&s.value).ok())
                .is_some_and(|s| s.id == plan.id);
            if !written {
                let stop = Stop {
                    id: plan.id.clone(),
                    reason: why.clone(),
                };
                let json = serde_json::to_vec(&stop).map_err(|e| e.to_string())?;
                client
                    .kv_put(realm, rollout::BUCKET, rollout::STOP_KEY, &json)
                    .map_err(|e| e.to_string())?;
                println!("event: fleet: rollout {} stopped: {why}", plan.id);
            }
        }
        let Some(mine) = v.nodes.iter().find(|n| n.node == me) else {
            return Ok(None);
        };
        let store = store(client, realm, plan);
        let step = rollout::step(plan, me, &mine.position, mine.holds_slot, &v.verdict);
        let (failures, error, ended) = match self.attempt.lock() {
            Ok(mut a) => {
                if a.plan != plan.id {
                    *a = Attempt {
                        plan: plan.id.clone(),
                        ..Attempt::default()
                    };
                }
                // Asked to reboot, still here: the update did not take.
                if a.rebooting.is_some_and(|t| t.elapsed() > REBOOT_GRACE) {
                    a.rebooting = None;
                    a.failures += 1;
                    a.error = Some(format!(
                        "the node did not reboot within {} s of asking",
                        REBOOT_GRACE.as_secs()
                    ));
                    a.ended = Some(Instant::now());
                    self.busy.store(false, Ordering::SeqCst);
                }
                (a.failures, a.error.clone(), a.ended)
            }
            Err(_) => (0, None, None),
        };
        let busy = self.busy.load(Ordering::SeqCst);
        let wait = ended
            .map(|e| retry_after(failures).saturating_sub(e.elapsed()))
            .filter(|w| !w.is_zero() && failures > 0);
        let line = match step {
            Step::Wait(why) => why,
            // The update under way writes the slot and reboots: the slot is
            // given back once it runs (or failed), never before.
            Step::Release if busy => format!(
                "finishing the update to {} before giving the reboot slot back",
                plan.version
            ),
            Step::Release => {
                slots::release(&store, me)?;
                format!("{}: gave its reboot slot back", mine.position)
            }
            Step::Update if busy => format!("updating to {}", plan.version),
            Step::Update if wait.is_some() => format!(
                "updating to {}: next try in {} s",
                plan.version,
                wait.unwrap_or_default().as_secs()
            ),
            Step::Update => {
                if !mine.holds_slot {
                    if let Taken::Full(holders) = slots::acquire(&store, me, plan.max_unavailable)?
                    {
                        return Ok(Some((
                            format!(
                                "waiting for a reboot slot (all {} held: {})",
                                plan.max_unavailable,
                                holders.join(", ")
                            ),
                            true,
                        )));
                    }
                    println!(
                        "event: fleet: took a reboot slot of rollout {}: updating to {}",
                        plan.id, plan.version
                    );
                }
                self.start(plan.version.clone());
                format!("updating to {}", plan.version)
            }
        };
        let line = match error {
            Some(f) if mine.position == Position::Holding => format!("{line} (last try: {f})"),
            _ => line,
        };
        let over = matches!(
            v.verdict,
            Verdict::Finished | Verdict::Aborted | Verdict::Stopped(_)
        ) || matches!(mine.position, Position::Done | Position::Failed(_));
        let under_way = !over || mine.holds_slot || busy;
        if !under_way {
            self.settled = Some((revision, value, line.clone()));
        }
        Ok(Some((line, under_way)))
    }

    /// Update to `version` in a thread of its own: heartbeats go on while
    /// it downloads and writes.
    fn start(&self, version: String) {
        self.busy.store(true, Ordering::SeqCst);
        let (busy, attempt, update) = (self.busy.clone(), self.attempt.clone(), self.update);
        let spawned = std::thread::Builder::new()
            .name("rollout".into())
            .spawn(move || {
                let outcome = update(&version);
                // Done: the node is rebooting, and stays busy until it is
                // gone (no second update of the slot it just wrote), or
                // [`REBOOT_GRACE`] passed.
                if outcome.is_ok() {
                    if let Ok(mut a) = attempt.lock() {
                        a.rebooting = Some(Instant::now());
                    }
                }
                if let Err(why) = outcome {
                    let why = without_credentials(&why);
                    println!("event: fleet: the update to {version} failed: {why}");
                    if let Ok(mut a) = attempt.lock() {
                        a.failures += 1;
                        // One line, for the status table.
                        a.error = Some(why.split_whitespace().collect::<Vec<_>>().join(" "));
                        a.ended = Some(Instant::now());
                    }
                    busy.store(false, Ordering::SeqCst);
                }
            });
        if let Err(e) = spawned {
            println!("event: fleet: cannot start the update: {e}");
            self.busy.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{Control, Strategy};

    fn plan() -> Plan {
        Plan {
            id: "0_2_0-1".into(),
            realm: "io.macula".into(),
            version: "0.2.0".into(),
            strategy: Strategy::Rolling,
            max_unavailable: 1,
            health_check_wait: 10,
            nodes: vec!["a".into(), "b".into(), "c".into()],
            canary: vec![],
            success_threshold: 95,
            control: Control::Running,
            set_at: 1,
            by: "root".into(),
        }
    }

    fn member(node: &str, version: &str, update: &str, healthy: u64) -> crate::Member {
        let hb: Heartbeat = serde_json::from_value(serde_json::json!({
            "node": node, "realm": "io.macula", "roles": ["peer"], "version": version,
            "slot": "b", "update": update, "last_update": null, "bad_versions": 0,
            "checks": 1, "failing": [], "cpu_percent": null, "memory_percent": null,
            "disk_percent": null, "uptime_seconds": 60, "healthy_seconds": healthy,
            "config_digest": "0", "sent_at": 1, "rollout": format!("{node} says")
        }))
        .unwrap();
        crate::Member {
            node: node.into(),
            status: crate::Status::Healthy,
            reasons: vec![],
            last_seen: 1,
            age_seconds: 0,
            heartbeat: hb,
        }
    }

    #[test]
    fn positions_from_heartbeats_and_slots_with_the_own_one_fresher() {
        let members = vec![
            member("a", "0.2.0", "good", 30),
            member("b", "0.1.0", "good", 30),
        ];
        let slots = Slots {
            max: 1,
            holders: vec!["b".into()],
        };
        let v = assemble(plan(), true, None, slots.clone(), &members, None);
        let at: Vec<(&str, &Position, bool)> = v
            .nodes
            .iter()
            .map(|n| (n.node.as_str(), &n.position, n.holds_slot))
            .collect();
        assert_eq!(
            at,
            vec![
                ("a", &Position::Done, false),
                ("b", &Position::Holding, true),
                // No heartbeat yet: waiting.
                ("c", &Position::Waiting, false),
            ]
        );
        assert_eq!(v.nodes[0].note.as_deref(), Some("a says"));
        assert_eq!(v.verdict, Verdict::All);
        // b's own heartbeat says it runs the version now, on trial.
        let own = member("b", "0.2.0", "trial", 0).heartbeat;
        let v = assemble(plan(), true, None, slots, &members, Some(&own));
        assert_eq!(v.nodes[1].position, Position::Settling);
    }

    #[test]
    fn failed_updates_are_tried_again_ever_more_slowly() {
        let s: Vec<u64> = (1..=7).map(|f| retry_after(f).as_secs()).collect();
        assert_eq!(s, vec![30, 60, 120, 240, 480, 600, 600]);
    }

    #[test]
    fn credentials_in_urls_never_reach_a_heartbeat() {
        assert_eq!(
            without_credentials("GET https://ops:s3cret@updates.example/stable/ failed"),
            "GET https://***@updates.example/stable/ failed"
        );
        assert_eq!(
            without_credentials("http://10.0.2.100:8080/ offers 0.3.0, not 0.2.0"),
            "http://10.0.2.100:8080/ offers 0.3.0, not 0.2.0"
        );
        assert_eq!(
            without_credentials("GET https://h/x?access_token=abc&y=1 failed"),
            "GET https://h/x?access_token=***&y=1 failed"
        );
        // An @ after the host is a path's, not a password's.
        assert_eq!(
            without_credentials("https://h/a@b and file:///x"),
            "https://h/a@b and file:///x"
        );
    }

    #[test]
    fn versions_compare_as_the_updater_compares_them() {
        let mut p = plan();
        p.version = "v0.2.0".into();
        let members = vec![member("a", "0.2.0", "good", 30)];
        let v = assemble(p, true, None, Slots::default(), &members, None);
        assert_eq!(v.nodes[0].position, Position::Done);
    }

    #[test]
    fn a_written_stop_of_this_rollout_is_its_verdict() {
        let stop = Stop {
            id: "0_2_0-1".into(),
            reason: "1 of 1 canary nodes failed".into(),
        };
        let v = assemble(
            plan(),
            true,
            Some(stop.clone()),
            Slots::default(),
            &[],
            None,
        );
        assert_eq!(v.verdict, Verdict::Stopped(stop.reason));
        // Another rollout's stop is not this one's.
        let old = Stop {
            id: "0_1_9-0".into(),
            reason: "old".into(),
        };
        let v = assemble(plan(), true, Some(old), Slots::default(), &[], None);
        assert_eq!(v.verdict, Verdict::All);
    }
}
