//! `maculaos agent`: the long-running health agent (plan §4.17.1, §4.17.2,
//! §4.17.4), started by `maculaos-agent.service`.
//!
//! It runs the checks of `maculaos.health.checks`, each on its `interval`,
//! the built-in `data-space`, `time-sync` and `network` checks every
//! minute, and the built-in `mdns-name` check every 30 s; restarts the unit
//! of a failing check that has `restart_on_failure` ([`RestartPolicy`]);
//! and, with `maculaos.auto_heal.enabled`, cleans up the data partition
//! when it is too full, restarts chrony when the clock stays
//! unsynchronised, restarts systemd-networkd when the network stays down
//! for `auto_heal.network_grace`, and has avahi-daemon claim the hostname
//! again when it announces the node under another name (after a name
//! conflict on the LAN). It talks to systemd with the notify
//! protocol ([`Notifier`]): `READY=1` once started, `WATCHDOG=1` at least
//! every `WATCHDOG_USEC / 2`, and `STATUS=` with a one-line summary.
//!
//! What happens is printed on stdout, one line per event, which the journal
//! keeps under the unit (`journalctl -u maculaos-agent`):
//!
//! ```text
//! event: <key>: <message>
//! ```
//!
//! with the keys of [`EventKind`]. Only transitions and actions are events:
//! a check that keeps failing is reported once when it starts failing
//! (`check-failed`) and once when it passes again (`check-recovered`), not at
//! every run.
//!
//! The decisions are made by [`Scheduler`], which is pure (fed with the time
//! and the results, it returns the [`Action`]s to take) and tested with
//! synthetic instants; [`run`] is a thin shell around it.
//!
//! Checks run on threads of their own, one at a time per check, and report
//! back over a channel; actions (systemctl, journalctl) run one after the
//! other on a single worker thread. The loop itself only waits on that
//! channel with a timeout, so it feeds the watchdog on time whatever a check
//! or an action does: an http or tcp check is bounded by its `timeout`, but
//! `timeout` may be set above `WatchdogSec`, a TCP check tries each address
//! in turn, and `systemctl`, `timedatectl` and statvfs (a hung mount) have
//! no bound at all. A check still running when it is due again is not
//! started a second time. While the unit of a check is being restarted the
//! check waits, and runs again one interval after the restart is over (it
//! would otherwise fail again at once and ask for the next restart).
//!
//! A check fails when its state is `Fail`; `Warn` (the clock not
//! synchronised yet) and `Skip` do not count as failing.

use crate::{
    data_space_check, mdns_name_check, network_check, probes, time_sync_check, Check, Decision,
    RestartPolicy, State,
};
use anyhow::{bail, Context};
use maculaos_config::values::Percent;
use maculaos_config::{AutoHeal, CheckType, DiskAction, HealthCheck, Maculaos, Paths};
use maculaos_runner::Cmd;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io::{self, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// How often the configuration is read again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);
/// How often the built-in checks `data-space`, `time-sync` and `network` run.
pub const BUILT_IN_EVERY: Duration = Duration::from_secs(60);
/// How often the built-in `mdns-name` check runs: once a name conflict on
/// the LAN is over, the node gets its name back within about a minute and a
/// half (a claim is made by the second failing run in a row, up to 60 s
/// after the conflict is over; avahi-daemon probes for about a second). The
/// check is cheap: one D-Bus call.
pub const MDNS_NAME_EVERY: Duration = Duration::from_secs(30);
/// avahi-daemon is told to claim the hostname again at most once a run of
/// the `mdns-name` check (so once in [`MDNS_NAME_EVERY`]) and at most this
/// many times within [`MDNS_CLAIM_WINDOW`]. While the other host still holds
/// the name each claim is lost: avahi-daemon withdraws the `-2` name,
/// probes (three queries over about 750 ms), is refused, and takes the `-2`
/// name again, so that for a moment the node answers to no name. Ten an
/// hour bound that churn (and the journal lines) for two hosts that share
/// a name for good, and still cover the first five minutes after a
/// conflict closely, when a rebooting or roaming host is most likely to
/// go away.
pub const MDNS_CLAIMS: u32 = 10;
pub const MDNS_CLAIM_WINDOW: Duration = Duration::from_secs(60 * 60);
/// `avahi-set-host-name` is stopped after this long (it normally returns
/// at once: the probing goes on in avahi-daemon).
const AVAHI_SET_HOST_NAME_LIMIT: Duration = Duration::from_secs(10);
/// The disk cleanup runs at most this often.
pub const CLEANUP_EVERY: Duration = Duration::from_secs(10 * 60);
/// The clock may take this long after boot to synchronise before the agent
/// restarts chrony.
pub const TIME_SYNC_GRACE: Duration = Duration::from_secs(5 * 60);
/// chrony is restarted at most this often.
pub const TIME_SYNC_EVERY: Duration = Duration::from_secs(15 * 60);
/// The unit restarted when the clock is not synchronised.
pub const TIME_DAEMON: &str = "chrony.service";
/// The unit restarted when the network stays down: on start it brings up
/// the links it manages (`ActivationPolicy=up`, the default, raises a link
/// each time it is configured) and asks DHCP again.
pub const NETWORKD: &str = "systemd-networkd.service";
/// systemd-networkd is restarted at most this many times within
/// [`NETWORK_RESTART_WINDOW`]: a node whose network is not configured at
/// all fails the `network` check for good, and a restart every
/// `network_grace` would only fill the journal.
pub const NETWORK_RESTARTS: u32 = 3;
pub const NETWORK_RESTART_WINDOW: Duration = Duration::from_secs(60 * 60);
/// Where `maculaos upgrade` downloads update bundles (on /var).
pub const UPDATES_DIR: &str = "/var/lib/maculaos/updates";
/// The built-in checks the agent runs (`maculaos health` has more, which
/// change only at boot).
const BUILT_INS: &[CheckId] = &[
    CheckId::DataSpace,
    CheckId::TimeSync,
    CheckId::Network,
    CheckId::MdnsName,
];
/// The partition the disk cleanup frees space on.
const DATA_DIR: &str = "/var";

// ---------------------------------------------------------------------------
// Events and actions
// ---------------------------------------------------------------------------

/// What an event line is about; [`EventKind::key`] is its stable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A check started failing (or failed on its first run).
    CheckFailed,
    /// A failing check passes again.
    CheckRecovered,
    /// The unit of a failing check is restarted (or its restart failed).
    Restart,
    /// `max_restarts` restarts did not help: no more until `cooldown`.
    GaveUp,
    /// The journal was vacuumed and old update bundles removed.
    DiskCleanup,
    /// chrony was restarted (or its restart failed).
    TimeSync,
    /// systemd-networkd was restarted (or its restart failed).
    Network,
    /// avahi-daemon was told to claim the hostname again (or that failed).
    Mdns,
}

impl EventKind {
    pub fn key(self) -> &'static str {
        match self {
            EventKind::CheckFailed => "check-failed",
            EventKind::CheckRecovered => "check-recovered",
            EventKind::Restart => "restart",
            EventKind::GaveUp => "gave-up",
            EventKind::DiskCleanup => "disk-cleanup",
            EventKind::TimeSync => "time-sync",
            EventKind::Network => "network",
            EventKind::Mdns => "mdns",
        }
    }
}

/// One event: shown as `event: <key>: <message>`, on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub message: String,
}

impl Event {
    pub fn new(kind: EventKind, message: impl AsRef<str>) -> Event {
        Event {
            kind,
            message: one_line(message.as_ref()),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event: {}: {}", self.kind.key(), self.message)
    }
}

/// What the agent does after a check ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Print this event.
    Log(Event),
    /// `systemctl restart <unit>` for the failing check `check`; then
    /// [`Scheduler::restarted`] with `check` and `generation`.
    RestartUnit {
        check: String,
        generation: u64,
        unit: String,
        /// Only if it still runs (`systemctl try-restart`): the check of a
        /// service, which may have been stopped since the check started.
        if_running: bool,
    },
    /// Vacuum the journal to `journal_max` bytes and remove old update
    /// bundles; `reason` says which check asked for it.
    DiskCleanup { reason: String, journal_max: u64 },
    /// `systemctl restart chrony`.
    RestartTimeSync,
    /// `systemctl restart systemd-networkd`.
    RestartNetwork,
    /// `avahi-set-host-name <name>`: avahi-daemon probes for the name again
    /// and announces it, or, should another host still hold it, takes
    /// another one again (and the `mdns-name` check fails again).
    ReclaimName(String),
}

/// Which check: a built-in one, or one of `maculaos.health.checks` (whose
/// names are unique among themselves, but may be those of a built-in one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckId {
    DataSpace,
    TimeSync,
    Network,
    MdnsName,
    Configured(String),
}

impl CheckId {
    pub fn name(&self) -> &str {
        match self {
            CheckId::DataSpace => "data-space",
            CheckId::TimeSync => "time-sync",
            CheckId::Network => crate::NETWORK_CHECK,
            CheckId::MdnsName => crate::MDNS_NAME_CHECK,
            CheckId::Configured(n) => n,
        }
    }

    /// How often a built-in check runs (a configured one has its `interval`).
    fn built_in_interval(&self) -> Duration {
        match self {
            CheckId::MdnsName => MDNS_NAME_EVERY,
            _ => BUILT_IN_EVERY,
        }
    }
}

/// What to run for a check.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Configured(Box<HealthCheck>),
    DataSpace(Percent),
    TimeSync,
    Network,
    MdnsName,
}

impl Probe {
    /// Run it now (this may take up to the check's timeout, or hang with
    /// whatever it asks: run it off the main loop).
    pub fn run(&self, root: &Path) -> Check {
        match self {
            Probe::Configured(c) => probes::configured_check(root, c),
            Probe::DataSpace(threshold) => data_space_check(root, *threshold),
            Probe::TimeSync => time_sync_check(root),
            Probe::Network => network_check(root),
            Probe::MdnsName => mdns_name_check(root),
        }
    }
}

/// A check to start now. Its result goes back to [`Scheduler::record`] with
/// the same `id` and `generation` (a result for a check that was since
/// removed or changed is ignored).
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    pub id: CheckId,
    pub generation: u64,
    pub probe: Probe,
}

// ---------------------------------------------------------------------------
// The scheduler: every decision, without I/O
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Slot {
    /// Bumped when the check is (re)created: results of the old one are stale.
    generation: u64,
    /// `None` for the built-in checks.
    spec: Option<HealthCheck>,
    interval: Duration,
    next_due: Instant,
    /// When the last run started.
    started: Instant,
    running: bool,
    /// Its unit is being restarted: the check waits (it would fail and
    /// ask for another restart while the first one runs).
    restarting: bool,
    /// Whether the last result was a failure; `None` before the first.
    failing: Option<bool>,
    policy: Option<RestartPolicy>,
}

/// What a reload changed, by check name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reload {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Reload {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

impl fmt::Display for Reload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &self.added),
            ("changed", &self.changed),
            ("removed", &self.removed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what} {}", names.join(", ")));
            }
        }
        f.write_str(&parts.join("; "))
    }
}

/// When each check is due, what its results mean, and what to do about
/// them. Pure: the caller gives the time and runs what it returns.
#[derive(Debug, Clone)]
pub struct Scheduler {
    slots: BTreeMap<CheckId, Slot>,
    /// The configured checks' names in the configuration's order (for the status).
    order: Vec<CheckId>,
    next_generation: u64,
    auto_heal: AutoHeal,
    last_cleanup: Option<Instant>,
    last_time_sync: Option<Instant>,
    /// `edge.time_sync.enabled`: whether chrony is restarted for a clock
    /// that is not synchronised.
    time_sync_on: bool,
    /// Since when the `network` check has failed, without a pass between.
    network_down_since: Option<Instant>,
    /// The restarts of systemd-networkd: [`NETWORK_RESTARTS`] within
    /// [`NETWORK_RESTART_WINDOW`]. Never told of a pass, so that a network
    /// that keeps going down is not restarted more often than that.
    network_restarts: RestartPolicy,
    /// The claims of the hostname: [`MDNS_CLAIMS`] within
    /// [`MDNS_CLAIM_WINDOW`]. Never told of a pass either: two hosts that
    /// take the name from each other in turn are not worth more claims.
    name_claims: RestartPolicy,
    /// When the `mdns-name` check's current run of failures began (the
    /// start of its first failing run); `None` while it passes.
    mdns_failing_since: Option<Instant>,
    started: Instant,
    uptime_at_start: Duration,
}

impl Scheduler {
    /// The checks of `config`, all due at `now`. `uptime` is the system's
    /// uptime at `now` (`/proc/uptime`): the clock gets [`TIME_SYNC_GRACE`]
    /// after boot, not after the agent started.
    pub fn new(config: &Maculaos, now: Instant, uptime: Duration) -> Scheduler {
        let mut s = Scheduler {
            slots: BTreeMap::new(),
            order: Vec::new(),
            next_generation: 0,
            auto_heal: config.auto_heal.clone(),
            last_cleanup: None,
            last_time_sync: None,
            time_sync_on: config.edge.time_sync.enabled,
            network_down_since: None,
            network_restarts: RestartPolicy::new(NETWORK_RESTARTS, NETWORK_RESTART_WINDOW),
            name_claims: RestartPolicy::new(MDNS_CLAIMS, MDNS_CLAIM_WINDOW),
            mdns_failing_since: None,
            started: now,
            uptime_at_start: uptime,
        };
        for id in BUILT_INS {
            let slot = s.slot(None, id.built_in_interval(), now);
            s.slots.insert(id.clone(), slot);
        }
        s.reload(config, now);
        s
    }

    fn slot(&mut self, spec: Option<HealthCheck>, interval: Duration, now: Instant) -> Slot {
        self.next_generation += 1;
        let policy = spec
            .as_ref()
            .filter(|c| c.unit_name().is_some())
            .and_then(RestartPolicy::for_check);
        Slot {
            generation: self.next_generation,
            spec,
            interval,
            next_due: now,
            started: now,
            running: false,
            restarting: false,
            failing: None,
            policy,
        }
    }

    /// The names of the checks it runs, built-in and configured.
    pub fn names(&self) -> Vec<String> {
        self.slots.keys().map(|id| id.name().to_string()).collect()
    }

    /// Take a newly loaded configuration. A check whose name and settings
    /// are unchanged keeps its state (schedule, failing or not, restart
    /// count); a changed one starts afresh, due now, as does a new one; a
    /// removed one is forgotten (a result still coming for it is ignored).
    pub fn reload(&mut self, config: &Maculaos, now: Instant) -> Reload {
        self.auto_heal = config.auto_heal.clone();
        self.time_sync_on = config.edge.time_sync.enabled;
        let mut report = Reload::default();
        let mut old: BTreeMap<CheckId, Slot> = std::mem::take(&mut self.slots);
        for id in BUILT_INS {
            if let Some(slot) = old.remove(id) {
                self.slots.insert(id.clone(), slot);
            }
        }
        self.order.clear();
        for spec in &config.health.checks {
            let id = CheckId::Configured(spec.name.clone());
            if self.slots.contains_key(&id) {
                // Names are unique once the configuration is checked; the
                // first of a duplicate wins.
                continue;
            }
            let slot = match old.remove(&id) {
                Some(slot) if slot.spec.as_ref() == Some(spec) => slot,
                Some(_) => {
                    report.changed.push(spec.name.clone());
                    self.slot(Some(spec.clone()), spec.interval.get(), now)
                }
                None => {
                    report.added.push(spec.name.clone());
                    self.slot(Some(spec.clone()), spec.interval.get(), now)
                }
            };
            self.order.push(id.clone());
            self.slots.insert(id, slot);
        }
        report.removed = old.into_keys().map(|id| id.name().to_string()).collect();
        report
    }

    /// The checks to start at `now` (each then counts as running until its
    /// result is recorded, and is due again an interval after this start).
    pub fn due(&mut self, now: Instant) -> Vec<Due> {
        let threshold = self.auto_heal.disk_threshold;
        let mut out = Vec::new();
        for (id, slot) in &mut self.slots {
            if slot.running || slot.restarting || slot.next_due > now {
                continue;
            }
            slot.running = true;
            slot.started = now;
            slot.next_due = now + slot.interval;
            let probe = match (id, &slot.spec) {
                (CheckId::DataSpace, _) => Probe::DataSpace(threshold),
                (CheckId::TimeSync, _) => Probe::TimeSync,
                (CheckId::Network, _) => Probe::Network,
                (CheckId::MdnsName, _) => Probe::MdnsName,
                (CheckId::Configured(_), Some(spec)) => Probe::Configured(Box::new(spec.clone())),
                (CheckId::Configured(_), None) => continue,
            };
            out.push(Due {
                id: id.clone(),
                generation: slot.generation,
                probe,
            });
        }
        out
    }

    /// When the next check is due (checks that are running, or whose unit
    /// is being restarted, are not).
    pub fn next_due(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter(|s| !s.running && !s.restarting)
            .map(|s| s.next_due)
            .min()
    }

    /// The result of a check started by [`Scheduler::due`], and what to do.
    pub fn record(
        &mut self,
        id: &CheckId,
        generation: u64,
        check: &Check,
        now: Instant,
    ) -> Vec<Action> {
        let uptime = self.uptime(now);
        let Some(slot) = self.slots.get_mut(id) else {
            return Vec::new();
        };
        if slot.generation != generation {
            return Vec::new();
        }
        slot.running = false;
        // A service's check skipped while its unit does not run (stopped,
        // or being restarted by systemd) is neither a pass nor a failure:
        // it must not reset the restart count, nor log a recovery.
        if check.state == State::Skip && slot.spec.as_ref().is_some_and(|s| s.only_while_active) {
            return Vec::new();
        }
        let started = slot.started;
        let name = id.name();
        let failed = check.state == State::Fail;
        let message = one_line(&check.message);
        let mut actions = Vec::new();
        match (slot.failing, failed) {
            (Some(true), false) => actions.push(Action::Log(Event::new(
                EventKind::CheckRecovered,
                format!("check {name} passes again ({message})"),
            ))),
            (None | Some(false), true) => actions.push(Action::Log(Event::new(
                EventKind::CheckFailed,
                format!("check {name} failed ({message})"),
            ))),
            _ => {}
        }
        slot.failing = Some(failed);

        if let (Some(policy), Some(spec)) = (&mut slot.policy, &slot.spec) {
            let unit = spec.unit_name().unwrap_or_default();
            match policy.decide(now, failed) {
                Decision::Restart => {
                    actions.push(Action::Log(Event::new(
                        EventKind::Restart,
                        format!(
                            "check {name} failed ({message}); restarting {unit} ({}/{})",
                            policy.restarts(),
                            policy.max_restarts
                        ),
                    )));
                    actions.push(Action::RestartUnit {
                        check: name.to_string(),
                        generation,
                        unit,
                        if_running: spec.only_while_active,
                    });
                    slot.restarting = true;
                }
                Decision::GiveUp => {
                    let text = if policy.max_restarts == 0 {
                        format!("check {name} fails and max_restarts is 0: not restarting {unit}")
                    } else {
                        format!(
                            "check {name} still fails after {} restart(s) of {unit}; \
                             no more restarts until {} after the last one ({message})",
                            policy.max_restarts, spec.cooldown
                        )
                    };
                    actions.push(Action::Log(Event::new(EventKind::GaveUp, text)));
                }
                Decision::Wait | Decision::Nothing => {}
            }
        }

        let cleanup_check = match id {
            CheckId::DataSpace => true,
            CheckId::Configured(_) => slot.spec.as_ref().is_some_and(|s| {
                s.kind == CheckType::Disk && s.disk_action() == DiskAction::Cleanup
            }),
            CheckId::TimeSync | CheckId::Network | CheckId::MdnsName => false,
        };
        if *id == CheckId::Network {
            actions.extend(self.heal_network(check, now));
        }
        if *id == CheckId::MdnsName {
            // The run of failures is counted with auto_heal on or off: a
            // pass (or a run that cannot tell) ends it.
            if matches!((check.state, &check.mdns), (State::Fail, Some(_))) {
                self.mdns_failing_since.get_or_insert(started);
            } else {
                self.mdns_failing_since = None;
            }
        }
        if !self.auto_heal.enabled {
            return actions;
        }
        if cleanup_check
            && failed
            && self
                .last_cleanup
                .is_none_or(|t| now.saturating_duration_since(t) >= CLEANUP_EVERY)
        {
            self.last_cleanup = Some(now);
            actions.push(Action::DiskCleanup {
                reason: format!("check {name} failed ({message})"),
                journal_max: self.auto_heal.journal_max.bytes(),
            });
        }
        // Warn is timedatectl's "NTPSynchronized=no"; Fail means it could
        // not tell, which restarting chrony would not mend. With time sync
        // off (`edge.time_sync.enabled: false`) chrony has no server to ask.
        if *id == CheckId::TimeSync
            && self.time_sync_on
            && check.state == State::Warn
            && uptime >= TIME_SYNC_GRACE
            && self
                .last_time_sync
                .is_none_or(|t| now.saturating_duration_since(t) >= TIME_SYNC_EVERY)
        {
            self.last_time_sync = Some(now);
            actions.push(Action::Log(Event::new(
                EventKind::TimeSync,
                format!(
                    "the clock is still not synchronised {} min after boot; restarting {TIME_DAEMON}",
                    uptime.as_secs() / 60
                ),
            )));
            actions.push(Action::RestartTimeSync);
        }
        if *id == CheckId::MdnsName {
            actions.extend(self.heal_mdns(check, started));
        }
        actions
    }

    /// The `mdns-name` check's result, from its run started at `started`
    /// (with auto_heal on). When it failed, avahi-daemon announcing another
    /// name than the hostname, claim the hostname again: at most once per
    /// run, a run being [`MDNS_NAME_EVERY`] after the one before, and at
    /// most [`MDNS_CLAIMS`] times within [`MDNS_CLAIM_WINDOW`].
    fn heal_mdns(&mut self, check: &Check, started: Instant) -> Vec<Action> {
        // Pass, or avahi-daemon not running (Warn): nothing to claim.
        let (State::Fail, Some(names)) = (check.state, &check.mdns) else {
            return Vec::new();
        };
        // Only a mismatch seen by two runs, a check interval apart, is
        // claimed. One run may fall in a rename under way (apply setting a
        // new hostname, avahi-daemon probing for it), and a claim then would
        // probe again within a second of the other host's answer, which
        // avahi-daemon does not repeat that soon: the claim would win the
        // name from the host that holds it.
        let since = *self.mdns_failing_since.get_or_insert(started);
        if started.saturating_duration_since(since) < MDNS_NAME_EVERY {
            return Vec::new();
        }
        let rested = self
            .name_claims
            .last_restart()
            .is_none_or(|t| started.saturating_duration_since(t) >= MDNS_NAME_EVERY);
        if !rested {
            return Vec::new();
        }
        let (host, announced) = (&names.hostname, &names.announced);
        let p = &mut self.name_claims;
        match p.decide(started, true) {
            Decision::Restart => {
                let text = if names.conflict {
                    format!(
                        "announced as {announced}.local, not {host}.local (a name conflict \
                         on the LAN); claiming {host}.local again"
                    )
                } else {
                    format!(
                        "announced as {announced}.local, not {host}.local (avahi-daemon has \
                         another name than the hostname); claiming {host}.local"
                    )
                };
                vec![
                    Action::Log(Event::new(EventKind::Mdns, text)),
                    Action::ReclaimName(host.clone()),
                ]
            }
            Decision::GiveUp => vec![Action::Log(Event::new(
                EventKind::GaveUp,
                format!(
                    "still announced as {announced}.local, not {host}.local, after {} claims \
                     of {host}.local within an hour; no more claims until an hour after the \
                     last one",
                    p.max_restarts
                ),
            ))],
            Decision::Wait | Decision::Nothing => Vec::new(),
        }
    }

    /// The `network` check's result. Once it has failed for
    /// `auto_heal.network_grace`, restart systemd-networkd; then not again
    /// before `network_grace` has passed (networkd and DHCP get that long),
    /// and at most [`NETWORK_RESTARTS`] times within
    /// [`NETWORK_RESTART_WINDOW`]. The outage is followed even with
    /// auto_heal off, so that turning it on counts from its start.
    fn heal_network(&mut self, check: &Check, now: Instant) -> Vec<Action> {
        if check.state != State::Fail {
            // Up, or `ip` cannot tell (Warn), or nothing to check (Skip):
            // not an outage a restart would end.
            self.network_down_since = None;
            return Vec::new();
        }
        let since = *self.network_down_since.get_or_insert(now);
        if !self.auto_heal.enabled {
            return Vec::new();
        }
        let grace = self.auto_heal.network_grace.get();
        let down_for = now.saturating_duration_since(since);
        let rested = self
            .network_restarts
            .last_restart()
            .is_none_or(|t| now.saturating_duration_since(t) >= grace);
        if down_for < grace || !rested {
            return Vec::new();
        }
        let message = one_line(&check.message);
        let p = &mut self.network_restarts;
        match p.decide(now, true) {
            Decision::Restart => vec![
                Action::Log(Event::new(
                    EventKind::Network,
                    format!(
                        "the network has been down for {} ({message}); restarting {NETWORKD} \
                         ({}/{} within an hour)",
                        human_span(down_for),
                        p.restarts(),
                        p.max_restarts
                    ),
                )),
                Action::RestartNetwork,
            ],
            Decision::GiveUp => vec![Action::Log(Event::new(
                EventKind::GaveUp,
                format!(
                    "the network is still down after {} restarts of {NETWORKD} within an \
                     hour; no more restarts until an hour after the last one ({message})",
                    p.max_restarts
                ),
            ))],
            Decision::Wait | Decision::Nothing => Vec::new(),
        }
    }

    /// The restart asked for by [`Action::RestartUnit`] is over (done or
    /// failed): the check runs again an interval from `now`, which gives
    /// the unit that long to come up.
    pub fn restarted(&mut self, check: &str, generation: u64, now: Instant) {
        let id = CheckId::Configured(check.to_string());
        if let Some(slot) = self.slots.get_mut(&id) {
            if slot.generation == generation && slot.restarting {
                slot.restarting = false;
                slot.next_due = now + slot.interval;
            }
        }
    }

    fn uptime(&self, now: Instant) -> Duration {
        self.uptime_at_start + now.saturating_duration_since(self.started)
    }

    /// How many checks there are, and which fail.
    pub fn failing(&self) -> (usize, Vec<&str>) {
        let failing = BUILT_INS
            .iter()
            .chain(self.order.iter())
            .filter(|id| self.slots.get(id).is_some_and(|s| s.failing == Some(true)))
            .map(|id| id.name())
            .collect();
        (self.slots.len(), failing)
    }

    /// One line for systemd's `STATUS=`: `7 checks, 1 failing: web`.
    pub fn status(&self) -> String {
        let (n, failing) = self.failing();
        let mut s = format!("{n} checks, {} failing", failing.len());
        if !failing.is_empty() {
            s.push_str(": ");
            s.push_str(&failing.join(", "));
        }
        s
    }
}

// ---------------------------------------------------------------------------
// systemd's notify protocol (sd_notify(3)), without libsystemd
// ---------------------------------------------------------------------------

/// Where `NOTIFY_SOCKET` points: a socket file, or (`@name`) a name in the
/// abstract namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddr {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl NotifyAddr {
    pub fn parse(value: &OsStr) -> Result<NotifyAddr, String> {
        let bytes = value.as_bytes();
        match bytes.first() {
            Some(b'@') if bytes.len() > 1 => Ok(NotifyAddr::Abstract(bytes[1..].to_vec())),
            Some(b'/') => Ok(NotifyAddr::Path(PathBuf::from(value))),
            _ => Err(format!(
                "NOTIFY_SOCKET=`{}` is neither a socket path nor an @abstract name",
                value.to_string_lossy()
            )),
        }
    }
}

/// Sends datagrams to systemd's notify socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: NotifyAddr,
}

impl Notifier {
    pub fn new(addr: NotifyAddr) -> io::Result<Notifier> {
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            addr,
        })
    }

    /// The notifier of `NOTIFY_SOCKET`; `None` when it is not set (run
    /// from a terminal).
    pub fn from_env() -> anyhow::Result<Option<Notifier>> {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let addr = NotifyAddr::parse(&value).map_err(anyhow::Error::msg)?;
        let n = Notifier::new(addr).context("creating a socket to notify systemd")?;
        Ok(Some(n))
    }

    pub fn send(&self, message: &str) -> io::Result<()> {
        let data = message.as_bytes();
        let sent = match &self.addr {
            NotifyAddr::Path(p) => self.socket.send_to(data, p)?,
            NotifyAddr::Abstract(name) => {
                let addr = SocketAddr::from_abstract_name(name)?;
                self.socket.send_to_addr(data, &addr)?
            }
        };
        if sent != data.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                data.len()
            )));
        }
        Ok(())
    }
}

/// A notify message: `KEY=value` lines. A value is one line (a newline
/// would start another assignment).
pub fn notify_message(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", one_line(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, if it is set
/// for this process (`WATCHDOG_PID`, when set, is ours).
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(my_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

// ---------------------------------------------------------------------------
// The disk cleanup's parts
// ---------------------------------------------------------------------------

/// The update bundles that are not the newest (by modification time; a
/// tie goes to the greater name): what the cleanup removes.
pub fn old_bundles(mut bundles: Vec<(PathBuf, SystemTime)>) -> Vec<PathBuf> {
    bundles.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    bundles.into_iter().skip(1).map(|(p, _)| p).collect()
}

/// Remove the bundles in `dir` older than the newest one (a download in
/// progress, `*.mos.part`, is left alone). Returns the names removed, the
/// bytes they held, and what could not be done.
pub fn remove_old_bundles(dir: &Path) -> (Vec<String>, u64, Vec<String>) {
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (Vec::new(), 0, errors),
        Err(e) => {
            errors.push(format!("reading {}: {e}", dir.display()));
            return (Vec::new(), 0, errors);
        }
    };
    let mut bundles = Vec::new();
    let mut sizes = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension() != Some(OsStr::new(maculaos_bundle::EXTENSION)) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        sizes.insert(path.clone(), meta.len());
        bundles.push((path, mtime));
    }
    let mut removed = Vec::new();
    let mut bytes = 0;
    for path in old_bundles(bundles) {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                bytes += sizes.get(&path).copied().unwrap_or(0);
                removed.push(
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
            Err(e) => errors.push(format!("removing {}: {e}", path.display())),
        }
    }
    (removed, bytes, errors)
}

/// Free bytes (for unprivileged writers) and use in percent of the
/// filesystem holding `path`, as `df` shows them.
pub fn space(path: &Path) -> io::Result<(u64, u8)> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let avail = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
    Ok((avail, probes::disk_use(path)?))
}

/// The `disk-cleanup` event's message: why, what was done, and what it freed.
pub fn cleanup_message(
    reason: &str,
    done: &[String],
    before: io::Result<(u64, u8)>,
    after: io::Result<(u64, u8)>,
) -> String {
    let result = match (before, after) {
        (Ok((free0, pct0)), Ok((free1, pct1))) => format!(
            "freed {} on {DATA_DIR} ({pct0}% -> {pct1}% full)",
            human_bytes(free1.saturating_sub(free0))
        ),
        (Err(e), _) | (_, Err(e)) => format!("free space on {DATA_DIR} unknown: {e}"),
    };
    format!("{reason}: {}; {result}", done.join("; "))
}

/// `1.5 GiB`, `200 MiB`, `12 KiB`, `0 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut whole = n;
    while whole >= 1024 && unit < UNITS.len() - 1 {
        whole /= 1024;
        unit += 1;
    }
    if unit == 0 {
        return format!("{n} B");
    }
    let value = n as f64 / (1u64 << (10 * unit)) as f64;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// `45s`, `2 min`, `1 h 5 min` (for how long something lasted).
pub fn human_span(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// Text on one line (a check's message may have several).
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------------------
// The loop
// ---------------------------------------------------------------------------

/// What the threads tell the loop.
enum Message {
    /// A check's result, from its thread.
    Checked {
        id: CheckId,
        generation: u64,
        check: Check,
    },
    /// A restart of [`Action::RestartUnit`] is over, from the action thread.
    Restarted { check: String, generation: u64 },
}

/// Print a line on stdout (the journal, under the unit). A closed stdout
/// is no reason to stop watching.
fn emit(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The system's uptime from `/proc/uptime` under `root` (zero when unknown).
fn uptime(root: &Path) -> Duration {
    std::fs::read_to_string(probes::under(root, Path::new("/proc/uptime")))
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or_default()
}

/// Start `due` on a thread of its own; its result comes back on `tx`.
fn start_check(root: &Path, due: Due, tx: &mpsc::Sender<Message>) {
    let Due {
        id,
        generation,
        probe,
    } = due;
    let name = id.name().to_string();
    let root = root.to_path_buf();
    let thread_tx = tx.clone();
    let thread_id = id.clone();
    let thread_name = name.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("check {name}"))
        .spawn(move || {
            let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| probe.run(&root)))
                .unwrap_or_else(|_| {
                    Check::new(&thread_name, State::Fail, "the check itself failed (panic)")
                });
            let _ = thread_tx.send(Message::Checked {
                id: thread_id,
                generation,
                check,
            });
        });
    if let Err(e) = spawned {
        let _ = tx.send(Message::Checked {
            id,
            generation,
            check: Check::new(
                &name,
                State::Fail,
                format!("could not start the check: {e}"),
            ),
        });
    }
}

/// Runs the actions that act on the system, one after the other, on a
/// thread of its own (a restart waits for the unit to start: longer than
/// the watchdog allows the loop).
fn start_executor(
    root: PathBuf,
    done: mpsc::Sender<Message>,
) -> anyhow::Result<mpsc::Sender<Action>> {
    let (tx, rx) = mpsc::channel::<Action>();
    std::thread::Builder::new()
        .name("actions".into())
        .spawn(move || {
            for action in rx {
                let restart = match &action {
                    Action::RestartUnit {
                        check, generation, ..
                    } => Some(Message::Restarted {
                        check: check.clone(),
                        generation: *generation,
                    }),
                    _ => None,
                };
                execute(&root, action);
                if let Some(m) = restart {
                    let _ = done.send(m);
                }
            }
        })
        .context("starting the thread that runs actions")?;
    Ok(tx)
}

fn execute(root: &Path, action: Action) {
    let live = probes::is_running_system(root);
    let not_live = || format!("not run: {} is not the running system", root.display());
    match action {
        Action::Log(e) => emit(&e.to_string()),
        Action::RestartUnit {
            check,
            unit,
            if_running,
            ..
        } => {
            let result = if live {
                systemctl_restart(&unit, if_running)
            } else {
                Err(not_live())
            };
            if let Err(e) = result {
                emit(
                    &Event::new(
                        EventKind::Restart,
                        format!("restarting {unit} for check {check} failed: {e}"),
                    )
                    .to_string(),
                );
            }
        }
        Action::RestartTimeSync => {
            restart_built_in(live, &not_live, TIME_DAEMON, EventKind::TimeSync)
        }
        Action::RestartNetwork => restart_built_in(live, &not_live, NETWORKD, EventKind::Network),
        Action::ReclaimName(name) => {
            let result = if live {
                // timeout(1): a claim that hangs is a failure (exit 124),
                // not a success cut short.
                Cmd::new("timeout")
                    .arg(AVAHI_SET_HOST_NAME_LIMIT.as_secs().to_string())
                    .arg("avahi-set-host-name")
                    .arg(&name)
                    .hint("install coreutils and avahi-utils")
                    .output()
                    .map(drop)
                    .map_err(|e| one_line(&e.to_string()))
            } else {
                Err(not_live())
            };
            if let Err(e) = result {
                emit(
                    &Event::new(
                        EventKind::Mdns,
                        format!("claiming {name}.local failed: {e}"),
                    )
                    .to_string(),
                );
            }
        }
        Action::DiskCleanup {
            reason,
            journal_max,
        } => {
            let data = probes::under(root, Path::new(DATA_DIR));
            let before = space(&data);
            let mut done = Vec::new();
            if live {
                let vacuum = Cmd::new("journalctl")
                    .arg(format!("--vacuum-size={journal_max}"))
                    .quiet()
                    .run();
                done.push(match vacuum {
                    Ok(()) => format!("journal vacuumed to {}", human_bytes(journal_max)),
                    Err(e) => format!(
                        "journalctl --vacuum-size failed: {}",
                        one_line(&e.to_string())
                    ),
                });
            } else {
                done.push(format!("journal not vacuumed ({})", not_live()));
            }
            let (removed, bytes, errors) =
                remove_old_bundles(&probes::under(root, Path::new(UPDATES_DIR)));
            if !removed.is_empty() {
                done.push(format!(
                    "removed {} old update bundle(s) ({}, {})",
                    removed.len(),
                    removed.join(", "),
                    human_bytes(bytes)
                ));
            }
            done.extend(errors);
            let after = space(&data);
            emit(
                &Event::new(
                    EventKind::DiskCleanup,
                    cleanup_message(&reason, &done, before, after),
                )
                .to_string(),
            );
        }
    }
}

/// Restart a unit the agent restarts on its own (not a check's); a failure
/// is an event of `kind`.
fn restart_built_in(live: bool, not_live: &dyn Fn() -> String, unit: &str, kind: EventKind) {
    let result = if live {
        systemctl_restart(unit, false)
    } else {
        Err(not_live())
    };
    if let Err(e) = result {
        emit(&Event::new(kind, format!("restarting {unit} failed: {e}")).to_string());
    }
}

fn systemctl_restart(unit: &str, if_running: bool) -> Result<(), String> {
    let verb = if if_running { "try-restart" } else { "restart" };
    Cmd::new("systemctl")
        .args([verb, unit])
        .quiet()
        .run()
        .map_err(|e| one_line(&e.to_string()))
}

/// Tell systemd, if it listens; a failure is reported once until a send
/// works again (a watchdog ping every few seconds would flood the journal).
struct Systemd {
    notifier: Option<Notifier>,
    failing: bool,
}

impl Systemd {
    fn send(&mut self, message: &str) {
        let Some(n) = &self.notifier else { return };
        match n.send(message) {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                eprintln!("maculaos agent: cannot notify systemd: {e}");
            }
            Err(_) => {}
        }
    }
}

/// Arm the running systemd's watchdog as configured (`maculaos apply`'s
/// watchdog step): apply at boot runs before D-Bus and leaves it to us.
/// Only on the node itself (`/`); what changed is logged as an event.
fn arm_watchdog(config: &maculaos_config::Config, root: &Path) {
    if root != Path::new("/") {
        return;
    }
    let opts = maculaos_apply::Options::for_root(root, false, false);
    let report = maculaos_apply::apply_watchdog(config, &opts);
    // The report's lines start with their area: `watchdog: …`.
    for line in report.changes.iter().chain(&report.errors) {
        emit(&format!("event: {line}"));
    }
}

/// Who else wants to know what the agent sees (the dashboard, in
/// maculaos-dashboard, which depends on this crate).
pub trait Observer {
    /// The configuration the agent (re)loaded; `checks` are the names of
    /// the configured checks (others are gone).
    fn configured(&self, config: &Maculaos, checks: &[String]);
    /// A check's latest result.
    fn checked(&self, check: &Check);
}

/// The agent: runs until killed (systemd stops it with SIGTERM). Returns
/// only on an error that makes going on pointless (systemd restarts it).
/// `observer` hears of each configuration and check result.
pub fn run(paths: &Paths, observer: &dyn Observer) -> anyhow::Result<()> {
    let root = paths.root.clone();
    let mut systemd = Systemd {
        notifier: Notifier::from_env()?,
        failing: false,
    };
    let ping_every = watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    );
    let now = Instant::now();
    let loaded = maculaos_config::load(paths);
    let mut watching = crate::watched(&loaded.config);
    let mut scheduler = Scheduler::new(&watching, now, uptime(&root));
    let mut results = Results::new(&root);
    let (tx, rx) = mpsc::channel::<Message>();
    let actions = start_executor(root.clone(), tx.clone())?;

    let (n, _) = scheduler.failing();
    let auto_heal = if loaded.config.maculaos.auto_heal.enabled {
        "on"
    } else {
        "off"
    };
    emit(&format!(
        "maculaos agent: watching {n} checks (auto_heal {auto_heal}){}",
        ping_every
            .map(|d| format!(", feeding the systemd watchdog every {}s", d.as_secs()))
            .unwrap_or_default()
    ));
    observer.configured(&watching, &scheduler.names());
    let mut status = format!("starting: {n} checks");
    // Ready first: the boot (multi-user.target) waits for this, not for
    // the watchdog's arming (systemctl, busctl) or the metrics thread.
    systemd.send(&notify_message(&[("READY", "1"), ("STATUS", &status)]));
    arm_watchdog(&loaded.config, &root);
    start_metrics(paths.clone());

    let mut next_reload = now + RELOAD_EVERY;
    let mut next_ping = now;
    loop {
        let now = Instant::now();
        if now >= next_reload {
            let loaded = maculaos_config::load(paths);
            watching = crate::watched(&loaded.config);
            let changes = scheduler.reload(&watching, now);
            if !changes.is_empty() {
                emit(&format!(
                    "maculaos agent: configuration reloaded: {changes}"
                ));
                observer.configured(&watching, &scheduler.names());
                results.keep_only(&scheduler.names());
            }
            next_reload = now + RELOAD_EVERY;
        }
        for due in scheduler.due(now) {
            start_check(&root, due, &tx);
        }
        if let Some(every) = ping_every {
            if now >= next_ping {
                systemd.send("WATCHDOG=1");
                next_ping = now + every;
            }
        }

        let mut wake = next_reload;
        if let Some(t) = scheduler.next_due() {
            wake = wake.min(t);
        }
        if ping_every.is_some() {
            wake = wake.min(next_ping);
        }
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Message::Restarted { check, generation }) => {
                scheduler.restarted(&check, generation, Instant::now());
            }
            Ok(Message::Checked {
                id,
                generation,
                check,
            }) => {
                observer.checked(&check);
                results.record(&check);
                let todo = scheduler.record(&id, generation, &check, Instant::now());
                for action in todo {
                    match action {
                        Action::Log(e) => emit(&e.to_string()),
                        other => {
                            if actions.send(other).is_err() {
                                bail!("the thread that runs actions stopped");
                            }
                        }
                    }
                }
                let now_status = scheduler.status();
                if now_status != status {
                    status = now_status;
                    systemd.send(&notify_message(&[("STATUS", &status)]));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the channel of check results closed")
            }
        }
    }
}

/// MaculaOS's own metrics for node-exporter (`maculaos.monitoring.prometheus`),
/// on a thread of their own (asking NATS may take up to its timeout): this
/// boot counted once, then every [`maculaos_metrics::EVERY`] the textfile
/// written while metrics are enabled, and removed once they are not. A
/// failure is said once until it changes, never fatal.
fn start_metrics(paths: Paths) {
    let spawned = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let root = paths.root.clone();
            let boots = maculaos_metrics::count_boot(&root);
            let mut said = String::new();
            loop {
                let config = maculaos_config::load(&paths).config;
                let done = if config.maculaos.monitoring.prometheus.enabled {
                    let checks = crate::latest_results(&paths)
                        .into_iter()
                        .filter_map(|(name, (state, _))| match state {
                            State::Pass | State::Warn => Some((name, true)),
                            State::Fail => Some((name, false)),
                            State::Skip => None,
                        })
                        .collect();
                    let facts = maculaos_metrics::gather(&root, &config, checks, boots);
                    let text = maculaos_metrics::render(&maculaos_metrics::families(&facts));
                    maculaos_metrics::write(&root, &text)
                } else {
                    maculaos_metrics::remove(&root)
                };
                let now = match done {
                    Ok(()) => String::new(),
                    Err(e) => format!(
                        "maculaos agent: cannot write {}: {e}",
                        maculaos_metrics::file(&root).display()
                    ),
                };
                if now != said && !now.is_empty() {
                    emit(&now);
                }
                said = now;
                std::thread::sleep(maculaos_metrics::EVERY);
            }
        });
    if let Err(e) = spawned {
        emit(&format!(
            "maculaos agent: no metrics: cannot start their thread: {e}"
        ));
    }
}

/// The latest result of each check, kept in [`crate::RESULTS_PATH`] for
/// `maculaos services` (written when one changes; /run is gone at boot).
struct Results {
    path: std::path::PathBuf,
    latest: BTreeMap<String, Check>,
}

impl Results {
    fn new(root: &Path) -> Results {
        Results {
            path: root.join(crate::RESULTS_PATH.trim_start_matches('/')),
            latest: BTreeMap::new(),
        }
    }

    fn record(&mut self, check: &Check) {
        if self.latest.get(&check.name) != Some(check) {
            self.latest.insert(check.name.clone(), check.clone());
            self.write();
        }
    }

    fn keep_only(&mut self, names: &[String]) {
        let before = self.latest.len();
        self.latest.retain(|n, _| names.contains(n));
        if self.latest.len() != before {
            self.write();
        }
    }

    /// Written whole and renamed into place, so that a reader never sees
    /// half of it; a failure is said once per result, never fatal.
    fn write(&self) {
        let rows: Vec<&Check> = self.latest.values().collect();
        let tmp = self.path.with_extension("json.tmp");
        let written = serde_json::to_vec(&rows)
            .map_err(std::io::Error::other)
            .and_then(|text| {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                // Root's only: a check's message may quote a URL with a
                // token in it.
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let _ = std::fs::remove_file(&tmp);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&text)?;
                std::fs::rename(&tmp, &self.path)
            });
        if let Err(e) = written {
            emit(&format!(
                "maculaos agent: cannot write {}: {e}",
                self.path.display()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maculaos_config::Config;

    const S: Duration = Duration::from_secs(1);
    const NONE: Vec<Action> = Vec::new();
    const MIN: Duration = Duration::from_secs(60);

    fn config(yaml: &str) -> Maculaos {
        let c: Config = serde_yaml_ng::from_str(yaml).unwrap();
        c.maculaos
    }

    fn pass(name: &str) -> Check {
        Check::new(name, State::Pass, "ok")
    }

    fn fail(name: &str, why: &str) -> Check {
        Check::new(name, State::Fail, why)
    }

    fn names(due: &[Due]) -> Vec<&str> {
        due.iter().map(|d| d.id.name()).collect()
    }

    /// Record `check` for the due check `id` (started now).
    fn run_one(s: &mut Scheduler, id: &CheckId, check: &Check, now: Instant) -> Vec<Action> {
        let due = s.due(now);
        let d = due
            .iter()
            .find(|d| &d.id == id)
            .unwrap_or_else(|| panic!("{id:?} not due at this time: {:?}", names(&due)));
        let generation = d.generation;
        // The others pass (and are done).
        for other in &due {
            if &other.id != id {
                s.record(&other.id, other.generation, &pass(other.id.name()), now);
            }
        }
        s.record(id, generation, check, now)
    }

    fn events(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Log(e) => Some(e.to_string()),
                _ => None,
            })
            .collect()
    }

    /// The restarts `actions` asked for are done at `now`.
    fn restarted(s: &mut Scheduler, actions: &[Action], now: Instant) {
        for a in actions {
            if let Action::RestartUnit {
                check, generation, ..
            } = a
            {
                s.restarted(check, *generation, now);
            }
        }
    }

    fn web() -> CheckId {
        CheckId::Configured("web".into())
    }

    const TWO: &str = "maculaos:
  health:
    checks:
      - {name: web, type: http, url: 'http://127.0.0.1:8080/', interval: 10s}
      - {name: k3s, type: unit, unit: k3s}
";

    #[test]
    fn checks_are_due_by_their_interval() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&config(TWO), t0, Duration::ZERO);
        let due = s.due(t0);
        assert_eq!(
            names(&due),
            [
                "data-space",
                "time-sync",
                "network",
                "mdns-name",
                "k3s",
                "web"
            ]
        );
        assert!(matches!(due[0].probe, Probe::DataSpace(p) if p.get() == 90));
        assert_eq!(due[3].probe, Probe::MdnsName);
        // Running: not due again, whatever the time.
        assert!(s.due(t0 + 600 * S).is_empty());
        assert_eq!(s.next_due(), None);
        for d in &due {
            s.record(&d.id, d.generation, &pass(d.id.name()), t0 + S);
        }
        assert_eq!(s.next_due(), Some(t0 + 10 * S));
        assert!(s.due(t0 + 9 * S).is_empty());
        assert_eq!(names(&s.due(t0 + 10 * S)), ["web"]);
        assert_eq!(
            s.next_due(),
            Some(t0 + 30 * S),
            "k3s: default 30s; mdns-name: 30s"
        );
        let due = s.due(t0 + 30 * S);
        assert_eq!(names(&due), ["mdns-name", "k3s"], "web is still running");
        assert_eq!(s.next_due(), Some(t0 + 60 * S));
        // k3s, web and mdns-name are still running: only the other built-ins.
        assert_eq!(
            names(&s.due(t0 + 60 * S)),
            ["data-space", "time-sync", "network"]
        );
    }

    #[test]
    fn only_transitions_are_events() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&config(TWO), t0, Duration::ZERO);
        let mut log = Vec::new();
        let results = [
            fail("web", "connection refused"),
            fail("web", "connection refused"),
            fail("web", "answered 500"),
            pass("web"),
            pass("web"),
            Check::new("web", State::Skip, "not checked"),
            fail("web", "line one\nline two"),
        ];
        for (i, c) in results.iter().enumerate() {
            let a = run_one(&mut s, &web(), c, t0 + 10 * S * i as u32);
            log.push(events(&a));
        }
        assert_eq!(
            log,
            vec![
                vec!["event: check-failed: check web failed (connection refused)".to_string()],
                vec![],
                vec![],
                vec!["event: check-recovered: check web passes again (ok)".to_string()],
                vec![],
                vec![],
                vec!["event: check-failed: check web failed (line one; line two)".to_string()],
            ]
        );
        assert_eq!(s.status(), "6 checks, 1 failing: web");
    }

    #[test]
    fn a_skipped_service_check_neither_passes_nor_resets_its_restarts() {
        let t0 = Instant::now();
        let c: Config = serde_yaml_ng::from_str(
            "services:\n  web:\n    image: a\n    health: {type: tcp, port: 8080, interval: 10s, max_restarts: 2}\n",
        )
        .unwrap();
        let mut s = Scheduler::new(&crate::watched(&c), t0, Duration::ZERO);
        let id = CheckId::Configured("service:web".into());
        let bad = fail("service:web", "connection refused");
        let skip = Check::new("service:web", State::Skip, "not checked: it is activating");
        let mut restarts = Vec::new();
        for (at, check) in [(0, &bad), (12, &skip), (24, &bad), (36, &skip), (48, &bad)] {
            let now = t0 + at * S;
            let a = run_one(&mut s, &id, check, now);
            if check.state == State::Skip {
                assert_eq!(a, NONE, "a skip logs nothing and restarts nothing");
            }
            for act in &a {
                if let Action::RestartUnit {
                    unit, if_running, ..
                } = act
                {
                    assert_eq!(unit, "maculaos-svc-web.service");
                    assert!(if_running, "a service is only try-restarted");
                    restarts.push(at);
                }
            }
            restarted(&mut s, &a, now + S);
        }
        // Two restarts, then it gives up: the skips between did not count
        // as passes.
        assert_eq!(restarts, [0, 24]);
    }

    #[test]
    fn restarts_then_gives_up_once() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(
            &config(
                "maculaos:
  health:
    checks:
      - {name: web, type: http, url: 'http://127.0.0.1:8080/', unit: demo-web, interval: 10s,
         restart_on_failure: true, max_restarts: 2, cooldown: 5m}
",
            ),
            t0,
            Duration::ZERO,
        );
        let bad = fail("web", "http://127.0.0.1:8080/: connection refused");
        let mut all = Vec::new();
        for at in [0, 12, 24, 34, 44] {
            let now = t0 + at * S;
            let a = run_one(&mut s, &web(), &bad, now);
            if a.iter().any(|a| matches!(a, Action::RestartUnit { .. })) {
                // Held while its unit restarts…
                assert!(names(&s.due(now + 5 * S)).is_empty());
                assert_eq!(s.next_due(), Some(t0 + 30 * S), "mdns-name's");
                // …then due an interval after the restart (which took 2 s).
                restarted(&mut s, &a, now + 2 * S);
                assert_eq!(s.next_due(), Some(now + 12 * S));
            }
            all.push(a);
        }
        assert_eq!(
            all[0],
            vec![
                Action::Log(Event::new(
                    EventKind::CheckFailed,
                    "check web failed (http://127.0.0.1:8080/: connection refused)"
                )),
                Action::Log(Event::new(
                    EventKind::Restart,
                    "check web failed (http://127.0.0.1:8080/: connection refused); restarting demo-web.service (1/2)"
                )),
                Action::RestartUnit {
                    check: "web".into(),
                    generation: 5,
                    unit: "demo-web.service".into(),
                    if_running: false,
                },
            ]
        );
        assert_eq!(
            events(&all[1]),
            ["event: restart: check web failed (http://127.0.0.1:8080/: connection refused); restarting demo-web.service (2/2)"]
        );
        assert_eq!(
            all[2],
            vec![Action::Log(Event::new(
                EventKind::GaveUp,
                "check web still fails after 2 restart(s) of demo-web.service; no more restarts until 5m after the last one (http://127.0.0.1:8080/: connection refused)"
            ))]
        );
        assert_eq!(all[3], NONE);
        assert_eq!(all[4], NONE);
        // Not yet 5 min since the last restart (at 12 s)…
        let a = run_one(&mut s, &web(), &bad, t0 + 311 * S);
        assert_eq!(a, NONE);
        // …now: restarts again.
        let a = run_one(&mut s, &web(), &bad, t0 + 321 * S);
        assert!(
            events(&a)[0].ends_with("restarting demo-web.service (1/2)"),
            "{a:?}"
        );
        restarted(&mut s, &a, t0 + 321 * S);
        // A pass ends it.
        let a = run_one(&mut s, &web(), &pass("web"), t0 + 331 * S);
        assert_eq!(
            events(&a),
            ["event: check-recovered: check web passes again (ok)"]
        );
    }

    #[test]
    fn checks_without_restart_on_failure_only_report() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&config(TWO), t0, Duration::ZERO);
        let a = run_one(
            &mut s,
            &CheckId::Configured("k3s".into()),
            &fail("k3s", "k3s.service is inactive"),
            t0,
        );
        assert_eq!(
            a,
            vec![Action::Log(Event::new(
                EventKind::CheckFailed,
                "check k3s failed (k3s.service is inactive)"
            ))]
        );
    }

    #[test]
    fn disk_cleanup_at_most_every_ten_minutes() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(
            &config(
                "maculaos:
  auto_heal: {journal_max: 100M}
  health:
    checks:
      - {name: lib, type: disk, path: /var/lib, threshold: 80%, action: cleanup, interval: 1m}
      - {name: srv, type: disk, path: /srv, interval: 1m}
",
            ),
            t0,
            Duration::ZERO,
        );
        let full = fail("data-space", "/var is 95% full (fails at 90%)");
        let cleanups = |a: &[Action]| -> Vec<Action> {
            a.iter()
                .filter(|a| matches!(a, Action::DiskCleanup { .. }))
                .cloned()
                .collect()
        };
        let a = run_one(&mut s, &CheckId::DataSpace, &full, t0);
        assert_eq!(
            cleanups(&a),
            [Action::DiskCleanup {
                reason: "check data-space failed (/var is 95% full (fails at 90%))".into(),
                journal_max: 100 << 20
            }]
        );
        for m in 1..5 {
            let a = run_one(&mut s, &CheckId::DataSpace, &full, t0 + m * MIN);
            assert_eq!(cleanups(&a), NONE, "at {m} min");
        }
        // A disk check with `action: cleanup` shares the limit…
        let lib = CheckId::Configured("lib".into());
        let a = run_one(
            &mut s,
            &lib,
            &fail("lib", "/var/lib is 85% full"),
            t0 + 5 * MIN,
        );
        assert_eq!(cleanups(&a), NONE);
        let a = run_one(
            &mut s,
            &lib,
            &fail("lib", "/var/lib is 85% full"),
            t0 + 10 * MIN,
        );
        assert_eq!(cleanups(&a).len(), 1, "{a:?}");
        // …one with the default `alert` never cleans up.
        let srv = CheckId::Configured("srv".into());
        let a = run_one(
            &mut s,
            &srv,
            &fail("srv", "/srv is 99% full"),
            t0 + 60 * MIN,
        );
        assert_eq!(cleanups(&a), NONE);
        // Passing never cleans up.
        let a = run_one(
            &mut s,
            &CheckId::DataSpace,
            &pass("data-space"),
            t0 + 61 * MIN,
        );
        assert_eq!(cleanups(&a), NONE);

        // Without auto_heal, nothing.
        let mut s = Scheduler::new(
            &config("maculaos:\n  auto_heal: {enabled: false}\n"),
            t0,
            Duration::ZERO,
        );
        let a = run_one(&mut s, &CheckId::DataSpace, &full, t0);
        assert_eq!(cleanups(&a), NONE);
        assert_eq!(events(&a).len(), 1, "still reported: {a:?}");
    }

    #[test]
    fn time_sync_after_five_minutes_of_uptime_every_fifteen() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&Maculaos::default(), t0, MIN);
        let unsynced = Check::new("time-sync", State::Warn, "clock not synchronised");
        let ts = CheckId::TimeSync;
        assert_eq!(run_one(&mut s, &ts, &unsynced, t0), NONE);
        assert_eq!(run_one(&mut s, &ts, &unsynced, t0 + 3 * MIN), NONE);
        let a = run_one(&mut s, &ts, &unsynced, t0 + 4 * MIN);
        assert_eq!(
            a,
            vec![
                Action::Log(Event::new(
                    EventKind::TimeSync,
                    "the clock is still not synchronised 5 min after boot; restarting chrony.service"
                )),
                Action::RestartTimeSync
            ]
        );
        assert_eq!(run_one(&mut s, &ts, &unsynced, t0 + 18 * MIN), NONE);
        assert_eq!(run_one(&mut s, &ts, &unsynced, t0 + 19 * MIN).len(), 2);
        // With time sync off, an unsynchronised clock is only reported.
        let mut off = Scheduler::new(
            &config("maculaos:\n  edge: {time_sync: {enabled: false}}\n"),
            t0,
            10 * MIN,
        );
        assert_eq!(run_one(&mut off, &ts, &unsynced, t0), NONE);
        // Synchronised, or timedatectl could not tell: nothing to restart.
        let synced = Check::new("time-sync", State::Pass, "clock synchronised");
        assert_eq!(run_one(&mut s, &ts, &synced, t0 + 60 * MIN), NONE);
        let broken = fail("time-sync", "cannot tell");
        let a = run_one(&mut s, &ts, &broken, t0 + 61 * MIN);
        assert_eq!(
            events(&a),
            ["event: check-failed: check time-sync failed (cannot tell)"]
        );
    }

    const DOWN: &str = "no interface is up with an address (eth0 DOWN)";

    fn network_down() -> Check {
        fail("network", DOWN)
    }

    /// Whether `actions` restart systemd-networkd.
    fn restarts_network(actions: &[Action]) -> bool {
        actions.contains(&Action::RestartNetwork)
    }

    #[test]
    fn network_restart_after_the_grace_then_not_before_the_grace_again() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&Maculaos::default(), t0, Duration::ZERO);
        let net = CheckId::Network;
        let a = run_one(&mut s, &net, &network_down(), t0);
        assert_eq!(
            events(&a),
            [format!(
                "event: check-failed: check network failed ({DOWN})"
            )]
        );
        // Not before the default grace of 2 min (the check runs every minute)…
        assert_eq!(run_one(&mut s, &net, &network_down(), t0 + MIN), NONE);
        // …then a restart.
        let a = run_one(&mut s, &net, &network_down(), t0 + 2 * MIN);
        assert_eq!(
            a,
            vec![
                Action::Log(Event::new(
                    EventKind::Network,
                    format!(
                        "the network has been down for 2 min ({DOWN}); restarting \
                         systemd-networkd.service (1/3 within an hour)"
                    )
                )),
                Action::RestartNetwork
            ]
        );
        // Still down: the next one no sooner than the grace after it.
        assert_eq!(run_one(&mut s, &net, &network_down(), t0 + 3 * MIN), NONE);
        let a = run_one(&mut s, &net, &network_down(), t0 + 4 * MIN);
        assert!(
            events(&a)[0].contains("down for 4 min")
                && events(&a)[0].ends_with("(2/3 within an hour)"),
            "{a:?}"
        );
        let a = run_one(&mut s, &net, &network_down(), t0 + 6 * MIN);
        assert!(restarts_network(&a), "{a:?}");
        // Three within the hour: no more, said once…
        let a = run_one(&mut s, &net, &network_down(), t0 + 8 * MIN);
        assert_eq!(
            events(&a),
            [format!(
                "event: gave-up: the network is still down after 3 restarts of \
                 systemd-networkd.service within an hour; no more restarts until an hour \
                 after the last one ({DOWN})"
            )]
        );
        for m in [10, 30, 65] {
            let a = run_one(&mut s, &net, &network_down(), t0 + m * MIN);
            assert_eq!(a, NONE, "at {m} min");
        }
        // …until an hour after the last restart (at 6 min).
        let a = run_one(&mut s, &net, &network_down(), t0 + 66 * MIN);
        assert!(events(&a)[0].ends_with("(1/3 within an hour)"), "{a:?}");
        assert!(restarts_network(&a));
    }

    #[test]
    fn network_recovery_starts_the_grace_again() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&Maculaos::default(), t0, Duration::ZERO);
        let net = CheckId::Network;
        run_one(&mut s, &net, &network_down(), t0);
        run_one(&mut s, &net, &network_down(), t0 + MIN);
        let a = run_one(&mut s, &net, &pass("network"), t0 + 2 * MIN);
        assert_eq!(
            events(&a),
            ["event: check-recovered: check network passes again (ok)"]
        );
        // Down again: counted from here, not from the first outage.
        run_one(&mut s, &net, &network_down(), t0 + 3 * MIN);
        assert_eq!(run_one(&mut s, &net, &network_down(), t0 + 4 * MIN), NONE);
        // `ip` could not tell: not down, and no restart would tell better.
        let unsure = Check::new("network", State::Warn, "cannot tell: ip failed");
        let a = run_one(&mut s, &net, &unsure, t0 + 5 * MIN);
        assert!(!restarts_network(&a), "{a:?}");
        run_one(&mut s, &net, &network_down(), t0 + 6 * MIN);
        assert_eq!(run_one(&mut s, &net, &network_down(), t0 + 7 * MIN), NONE);
        let a = run_one(&mut s, &net, &network_down(), t0 + 8 * MIN);
        assert!(
            events(&a).iter().any(|e| e.contains("down for 2 min")),
            "{a:?}"
        );
        assert!(restarts_network(&a));
        // A recovery does not give back restarts: the hour's budget holds
        // for a network that keeps going down.
        for (i, m) in [10, 20, 30].into_iter().enumerate() {
            run_one(&mut s, &net, &pass("network"), t0 + m * MIN);
            run_one(&mut s, &net, &network_down(), t0 + (m + 1) * MIN);
            let a = run_one(&mut s, &net, &network_down(), t0 + (m + 3) * MIN);
            if i < 2 {
                assert!(restarts_network(&a), "at {m} min: {a:?}");
            } else {
                assert!(!restarts_network(&a), "at {m} min: {a:?}");
                assert!(
                    events(&a)[0].starts_with("event: gave-up: the network"),
                    "{a:?}"
                );
            }
        }
    }

    #[test]
    fn network_grace_is_configurable_and_auto_heal_off_never_restarts() {
        let t0 = Instant::now();
        let net = CheckId::Network;
        let mut s = Scheduler::new(
            &config("maculaos:\n  auto_heal: {network_grace: 5m}\n"),
            t0,
            Duration::ZERO,
        );
        for m in 0..5 {
            let a = run_one(&mut s, &net, &network_down(), t0 + m * MIN);
            assert!(!restarts_network(&a), "at {m} min");
        }
        let a = run_one(&mut s, &net, &network_down(), t0 + 5 * MIN);
        assert!(events(&a)[0].contains("down for 5 min"), "{a:?}");
        assert!(restarts_network(&a));

        let mut s = Scheduler::new(
            &config("maculaos:\n  auto_heal: {enabled: false}\n"),
            t0,
            Duration::ZERO,
        );
        for m in 0..30 {
            let a = run_one(&mut s, &net, &network_down(), t0 + m * MIN);
            assert!(!restarts_network(&a), "at {m} min: {a:?}");
            assert!(
                a.iter()
                    .all(|a| matches!(a, Action::Log(e) if e.kind == EventKind::CheckFailed)),
                "only reported: {a:?}"
            );
        }
        // Turned on while the network is down: the outage counts from its start.
        s.reload(&Maculaos::default(), t0 + 30 * MIN);
        let a = run_one(&mut s, &net, &network_down(), t0 + 31 * MIN);
        assert!(events(&a)[0].contains("down for 31 min"), "{a:?}");
        assert!(restarts_network(&a));
    }

    /// The `mdns-name` check as it fails when avahi-daemon announces `announced`.
    fn announced_as(announced: &str, hostname: &str) -> Check {
        crate::mdns_name_answer(Ok(announced.into()), Ok(format!("{hostname}\n")))
    }

    fn claims(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::ReclaimName(n) => Some(n.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn mdns_name_conflict_claims_the_hostname_again() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&Maculaos::default(), t0, Duration::ZERO);
        let mdns = CheckId::MdnsName;
        let renamed = announced_as("macula-0b02-2", "macula-0b02");
        // The first failing run only reports: it may see a rename under way.
        let a = run_one(&mut s, &mdns, &renamed, t0);
        assert_eq!(
            a,
            vec![Action::Log(Event::new(
                EventKind::CheckFailed,
                "check mdns-name failed (announced as macula-0b02-2.local: the name \
                 macula-0b02.local is taken by another host on the LAN)"
            ))]
        );
        // The next one, a check interval later, claims.
        let a = run_one(&mut s, &mdns, &renamed, t0 + 30 * S);
        assert_eq!(
            a,
            vec![
                Action::Log(Event::new(
                    EventKind::Mdns,
                    "announced as macula-0b02-2.local, not macula-0b02.local (a name conflict \
                     on the LAN); claiming macula-0b02.local again"
                )),
                Action::ReclaimName("macula-0b02".into()),
            ]
        );
        assert_eq!(
            events(&a)[0],
            "event: mdns: announced as macula-0b02-2.local, not macula-0b02.local (a name \
             conflict on the LAN); claiming macula-0b02.local again"
        );
        // The check runs every 30 s: one claim per run while it fails…
        assert_eq!(s.next_due(), Some(t0 + 60 * S));
        for i in 2..=MDNS_CLAIMS {
            let a = run_one(&mut s, &mdns, &renamed, t0 + 30 * S * i);
            assert_eq!(claims(&a), ["macula-0b02"], "run {i}: {a:?}");
            assert_eq!(events(&a).len(), 1, "no new check-failed: {a:?}");
        }
        // …ten within the hour (the tenth at 300 s): then no more, said once…
        let a = run_one(&mut s, &mdns, &renamed, t0 + 330 * S);
        assert_eq!(
            events(&a),
            [
                "event: gave-up: still announced as macula-0b02-2.local, not macula-0b02.local, \
              after 10 claims of macula-0b02.local within an hour; no more claims until an \
              hour after the last one"
            ]
        );
        assert!(claims(&a).is_empty());
        // …and a pass between does not give claims back.
        let a = run_one(
            &mut s,
            &mdns,
            &announced_as("macula-0b02", "macula-0b02"),
            t0 + 360 * S,
        );
        assert_eq!(
            events(&a),
            ["event: check-recovered: check mdns-name passes again (announced as macula-0b02.local)"]
        );
        for at in (390..3900).step_by(30) {
            let a = run_one(&mut s, &mdns, &renamed, t0 + at * S);
            assert!(claims(&a).is_empty(), "at {at} s: {a:?}");
        }
        // An hour after the last claim (at 300 s): claims again.
        let a = run_one(&mut s, &mdns, &renamed, t0 + 3900 * S);
        assert_eq!(claims(&a), ["macula-0b02"], "{a:?}");
    }

    #[test]
    fn mdns_name_claims_at_most_once_per_check_interval() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&Maculaos::default(), t0, Duration::ZERO);
        let renamed = announced_as("edge-2", "edge");
        // Seen once: not yet; seen again an interval later: claimed.
        assert_eq!(s.heal_mdns(&renamed, t0), NONE);
        assert_eq!(s.heal_mdns(&renamed, t0 + 29 * S), NONE);
        assert_eq!(claims(&s.heal_mdns(&renamed, t0 + 30 * S)), ["edge"]);
        // A result of a run started sooner than an interval later (it
        // cannot come from the schedule, but the limit holds anyway).
        assert_eq!(s.heal_mdns(&renamed, t0 + 40 * S), NONE);
        assert_eq!(s.heal_mdns(&renamed, t0 + 59 * S), NONE);
        assert_eq!(claims(&s.heal_mdns(&renamed, t0 + 60 * S)), ["edge"]);
        // The time is the run's start, not its end: a run started 30 s
        // after the last one claims even when the last one took longer.
        let due = s.due(t0 + 90 * S);
        let d = due.iter().find(|d| d.id == CheckId::MdnsName).unwrap();
        let a = s.record(&d.id, d.generation, &renamed, t0 + 92 * S);
        assert_eq!(claims(&a), ["edge"]);
        let due = s.due(t0 + 120 * S);
        let d = due.iter().find(|d| d.id == CheckId::MdnsName).unwrap();
        let a = s.record(&d.id, d.generation, &renamed, t0 + 120 * S + S / 10);
        assert_eq!(claims(&a), ["edge"], "{a:?}");
    }

    #[test]
    fn mdns_name_claims_only_when_failing_with_auto_heal() {
        let t0 = Instant::now();
        let mdns = CheckId::MdnsName;
        let mut s = Scheduler::new(&Maculaos::default(), t0, Duration::ZERO);
        // avahi-daemon not running: a warning, nothing to claim.
        let no_avahi =
            crate::mdns_name_answer(Err(maculaos_discover::NameError::NoDaemon), Ok("x".into()));
        assert_eq!(no_avahi.state, State::Warn);
        assert_eq!(run_one(&mut s, &mdns, &no_avahi, t0), NONE);
        let same = announced_as("macula-0b02", "macula-0b02");
        assert_eq!(run_one(&mut s, &mdns, &same, t0 + 30 * S), NONE);
        // A failure without the names (the check panicked): no claim.
        let broken = fail("mdns-name", "the check itself failed (panic)");
        let a = run_one(&mut s, &mdns, &broken, t0 + 60 * S);
        assert_eq!(events(&a).len(), 1, "{a:?}");
        assert!(claims(&a).is_empty());
        // avahi-daemon kept an old name: claimed with what it is, once a
        // second run still sees it.
        let stale = announced_as("macula-0b02", "edge-one");
        let a = run_one(&mut s, &mdns, &stale, t0 + 90 * S);
        assert!(claims(&a).is_empty(), "{a:?}");
        let a = run_one(&mut s, &mdns, &stale, t0 + 120 * S);
        assert_eq!(
            events(&a),
            [
                "event: mdns: announced as macula-0b02.local, not edge-one.local (avahi-daemon \
              has another name than the hostname); claiming edge-one.local"
            ]
        );
        assert_eq!(claims(&a), ["edge-one"]);

        // Without auto_heal: only reported.
        let mut s = Scheduler::new(
            &config("maculaos:\n  auto_heal: {enabled: false}\n"),
            t0,
            Duration::ZERO,
        );
        let renamed = announced_as("macula-0b02-2", "macula-0b02");
        for i in 0..5 {
            let a = run_one(&mut s, &mdns, &renamed, t0 + 30 * S * i);
            assert!(claims(&a).is_empty(), "{a:?}");
            assert!(
                a.iter()
                    .all(|a| matches!(a, Action::Log(e) if e.kind == EventKind::CheckFailed)),
                "only reported: {a:?}"
            );
        }
        // Turned on: runs have seen the mismatch since 0 s, so the next
        // failing run claims.
        s.reload(&Maculaos::default(), t0 + 140 * S);
        let a = run_one(&mut s, &mdns, &renamed, t0 + 150 * S);
        assert_eq!(claims(&a), ["macula-0b02"]);
    }

    #[test]
    fn a_pass_between_failures_starts_the_count_again_with_auto_heal_off_too() {
        let t0 = Instant::now();
        let mdns = CheckId::MdnsName;
        let renamed = announced_as("macula-0b02-2", "macula-0b02");
        let same = announced_as("macula-0b02", "macula-0b02");
        let mut s = Scheduler::new(&Maculaos::default(), t0, Duration::ZERO);
        assert!(claims(&run_one(&mut s, &mdns, &renamed, t0)).is_empty());
        // auto_heal off: a pass, then failures again.
        s.reload(
            &config("maculaos:\n  auto_heal: {enabled: false}\n"),
            t0 + 10 * S,
        );
        assert!(claims(&run_one(&mut s, &mdns, &same, t0 + 30 * S)).is_empty());
        assert!(claims(&run_one(&mut s, &mdns, &renamed, t0 + 60 * S)).is_empty());
        // Back on: the first failing run after the pass started the count
        // at 60 s, so 90 s claims and an immediate claim never happens.
        s.reload(&Maculaos::default(), t0 + 70 * S);
        let a = run_one(&mut s, &mdns, &renamed, t0 + 90 * S);
        assert_eq!(claims(&a), ["macula-0b02"], "{a:?}");
        // A pass then a failure with auto_heal on: no claim on that failure.
        assert!(claims(&run_one(&mut s, &mdns, &same, t0 + 120 * S)).is_empty());
        assert!(claims(&run_one(&mut s, &mdns, &renamed, t0 + 150 * S)).is_empty());
    }

    #[test]
    fn reload_keeps_unchanged_checks_and_drops_removed_ones() {
        let t0 = Instant::now();
        let three = "maculaos:
  health:
    checks:
      - {name: web, type: http, url: 'http://127.0.0.1:8080/', unit: demo-web, restart_on_failure: true}
      - {name: api, type: tcp, address: '127.0.0.1:6443'}
      - {name: gone, type: unit, unit: gone}
";
        let mut s = Scheduler::new(&config(three), t0, Duration::ZERO);
        let due = s.due(t0);
        let generation = |n: &str| {
            due.iter()
                .find(|d| d.id.name() == n)
                .map(|d| d.generation)
                .unwrap()
        };
        let a = s.record(&web(), generation("web"), &fail("web", "refused"), t0 + S);
        assert_eq!(events(&a).len(), 2, "failed, restart 1/3");
        restarted(&mut s, &a, t0 + S);
        // `api` and `gone` are still running when the configuration changes.
        let changed = "maculaos:
  health:
    checks:
      - {name: new, type: unit, unit: new}
      - {name: api, type: tcp, address: '127.0.0.1:6444'}
      - {name: web, type: http, url: 'http://127.0.0.1:8080/', unit: demo-web, restart_on_failure: true}
";
        let r = s.reload(&config(changed), t0 + 5 * S);
        assert_eq!(
            r,
            Reload {
                added: vec!["new".into()],
                changed: vec!["api".into()],
                removed: vec!["gone".into()],
            }
        );
        assert_eq!(r.to_string(), "added new; changed api; removed gone");
        assert!(s.reload(&config(changed), t0 + 6 * S).is_empty());
        // Results of the removed check and of the old `api` are ignored.
        let api = CheckId::Configured("api".into());
        let gone = CheckId::Configured("gone".into());
        assert_eq!(
            s.record(&gone, generation("gone"), &fail("gone", "x"), t0 + 7 * S),
            NONE
        );
        assert_eq!(
            s.record(&api, generation("api"), &fail("api", "x"), t0 + 7 * S),
            NONE
        );
        // The new and the changed check are due now; `web` keeps its
        // schedule (due 30 s after its restart)…
        assert_eq!(names(&s.due(t0 + 7 * S)), ["api", "new"]);
        assert_eq!(s.status(), "7 checks, 1 failing: web");
        // …and its state: still failing (no new check-failed), second restart.
        assert_eq!(s.next_due(), Some(t0 + 31 * S));
        let a = run_one(&mut s, &web(), &fail("web", "refused"), t0 + 31 * S);
        assert_eq!(
            events(&a),
            ["event: restart: check web failed (refused); restarting demo-web.service (2/3)"]
        );
        // The built-ins follow auto_heal.disk_threshold.
        let mut s = Scheduler::new(&Maculaos::default(), t0, Duration::ZERO);
        s.reload(
            &config("maculaos:\n  auto_heal: {disk_threshold: 70%}\n"),
            t0,
        );
        let due = s.due(t0);
        assert!(
            due.iter()
                .any(|d| matches!(d.probe, Probe::DataSpace(p) if p.get() == 70)),
            "{due:?}"
        );
        assert_eq!(s.failing().0, 4);
    }

    #[test]
    fn status_lists_the_failing_checks_in_order() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(&config(TWO), t0, Duration::ZERO);
        assert_eq!(s.status(), "6 checks, 0 failing");
        let due = s.due(t0);
        for d in &due {
            let c = if d.id.name() == "data-space" || d.id.name() == "web" {
                fail(d.id.name(), "x")
            } else {
                pass(d.id.name())
            };
            s.record(&d.id, d.generation, &c, t0);
        }
        assert_eq!(s.status(), "6 checks, 2 failing: data-space, web");
    }

    #[test]
    fn notify_messages_and_watchdog_interval() {
        assert_eq!(notify_message(&[("READY", "1")]), "READY=1");
        assert_eq!(
            notify_message(&[("READY", "1"), ("STATUS", "4 checks,\n1 failing")]),
            "READY=1\nSTATUS=4 checks,; 1 failing"
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn notify_socket_addresses() {
        assert_eq!(
            NotifyAddr::parse(OsStr::new("/run/systemd/notify")),
            Ok(NotifyAddr::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            NotifyAddr::parse(OsStr::new("@/org/freedesktop/systemd1/notify/42")),
            Ok(NotifyAddr::Abstract(
                b"/org/freedesktop/systemd1/notify/42".to_vec()
            ))
        );
        for bad in ["", "@", "vsock:2:1234", "relative/path"] {
            assert!(NotifyAddr::parse(OsStr::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn notify_reaches_a_socket_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(NotifyAddr::parse(path.as_os_str()).unwrap()).unwrap();
        n.send(&notify_message(&[
            ("READY", "1"),
            ("STATUS", "2 checks, 0 failing"),
        ]))
        .unwrap();
        n.send("WATCHDOG=1").unwrap();
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=2 checks, 0 failing");
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        // Nobody listening: an error, not a panic.
        drop(server);
        assert!(n.send("WATCHDOG=1").is_err());
    }

    #[test]
    fn notify_reaches_an_abstract_socket() {
        let name = format!("maculaos-agent-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(NotifyAddr::parse(OsStr::new(&format!("@{name}"))).unwrap()).unwrap();
        n.send("WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn old_bundles_are_all_but_the_newest() {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(old_bundles(vec![]), Vec::<PathBuf>::new());
        assert_eq!(
            old_bundles(vec![("a.mos".into(), t(1))]),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            old_bundles(vec![
                ("a.mos".into(), t(1)),
                ("c.mos".into(), t(3)),
                ("b.mos".into(), t(2)),
            ]),
            vec![PathBuf::from("b.mos"), PathBuf::from("a.mos")]
        );
        assert_eq!(
            old_bundles(vec![("a.mos".into(), t(1)), ("b.mos".into(), t(1))]),
            vec![PathBuf::from("a.mos")]
        );
    }

    #[test]
    fn remove_old_bundles_keeps_the_newest_and_downloads_in_progress() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            remove_old_bundles(&d.path().join("none")),
            (vec![], 0, vec![])
        );
        let put = |name: &str, size: usize, age: u64| {
            let p = d.path().join(name);
            std::fs::write(&p, vec![0u8; size]).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(age))
                .unwrap();
        };
        put("maculaos-1.0.0-amd64.mos", 1000, 300);
        put("maculaos-1.1.0-amd64.mos", 24, 200);
        put("maculaos-1.2.0-amd64.mos", 10, 100);
        put("maculaos-1.3.0-amd64.mos.part", 5, 0);
        put("applied.json", 5, 1000);
        let (mut removed, bytes, errors) = remove_old_bundles(d.path());
        removed.sort();
        assert_eq!(
            removed,
            ["maculaos-1.0.0-amd64.mos", "maculaos-1.1.0-amd64.mos"]
        );
        assert_eq!((bytes, errors), (1024, vec![]));
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "applied.json",
                "maculaos-1.2.0-amd64.mos",
                "maculaos-1.3.0-amd64.mos.part"
            ]
        );
    }

    #[test]
    fn cleanup_messages() {
        let done = vec![
            "journal vacuumed to 200 MiB".to_string(),
            "removed 1 old update bundle(s) (maculaos-1.0.0-amd64.mos, 512 MiB)".to_string(),
        ];
        assert_eq!(
            cleanup_message(
                "check data-space failed (/var is 93% full (fails at 90%))",
                &done,
                Ok((1 << 30, 93)),
                Ok((3 << 29, 80)),
            ),
            "check data-space failed (/var is 93% full (fails at 90%)): journal vacuumed to 200 MiB; \
             removed 1 old update bundle(s) (maculaos-1.0.0-amd64.mos, 512 MiB); freed 512 MiB on /var (93% -> 80% full)"
        );
        let m = cleanup_message(
            "why",
            &done[..1],
            Err(io::Error::other("statvfs failed")),
            Ok((0, 0)),
        );
        assert_eq!(
            m,
            "why: journal vacuumed to 200 MiB; free space on /var unknown: statvfs failed"
        );
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(200 << 20), "200 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn the_cleanup_on_a_directory_frees_and_reports() {
        let d = tempfile::tempdir().unwrap();
        let updates = d.path().join("var/lib/maculaos/updates");
        std::fs::create_dir_all(&updates).unwrap();
        std::fs::write(updates.join("a.mos"), vec![0u8; 4096]).unwrap();
        std::fs::write(updates.join("b.mos"), vec![0u8; 10]).unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(updates.join("a.mos"))
            .unwrap();
        f.set_modified(SystemTime::now() - 100 * S).unwrap();
        // Not the running system: only the bundles go.
        execute(
            d.path(),
            Action::DiskCleanup {
                reason: "test".into(),
                journal_max: 1 << 20,
            },
        );
        assert!(!updates.join("a.mos").exists());
        assert!(updates.join("b.mos").exists());
    }

    #[test]
    fn probes_run_under_a_root() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Probe::TimeSync.run(d.path()).state, State::Skip);
        assert_eq!(Probe::Network.run(d.path()).state, State::Skip);
        assert_eq!(Probe::MdnsName.run(d.path()).state, State::Skip);
        assert_eq!(
            Probe::DataSpace(Percent::new(90).unwrap())
                .run(d.path())
                .state,
            State::Skip
        );
        std::fs::create_dir_all(d.path().join("proc")).unwrap();
        std::fs::write(d.path().join("proc/uptime"), "350.25 1000.00\n").unwrap();
        assert_eq!(uptime(d.path()), Duration::from_millis(350_250));
        assert_eq!(uptime(&d.path().join("nope")), Duration::ZERO);
    }

    #[test]
    fn event_keys_are_stable() {
        let keys: Vec<&str> = [
            EventKind::CheckFailed,
            EventKind::CheckRecovered,
            EventKind::Restart,
            EventKind::GaveUp,
            EventKind::DiskCleanup,
            EventKind::TimeSync,
            EventKind::Network,
            EventKind::Mdns,
        ]
        .iter()
        .map(|k| k.key())
        .collect();
        assert_eq!(
            keys,
            [
                "check-failed",
                "check-recovered",
                "restart",
                "gave-up",
                "disk-cleanup",
                "time-sync",
                "network",
                "mdns"
            ]
        );
        assert_eq!(human_span(45 * S), "45s");
        assert_eq!(human_span(2 * MIN + 5 * S), "2 min");
        assert_eq!(human_span(60 * MIN), "1 h");
        assert_eq!(human_span(65 * MIN), "1 h 5 min");
        assert_eq!(
            Event::new(EventKind::GaveUp, "a\nb").to_string(),
            "event: gave-up: a; b"
        );
    }
}
