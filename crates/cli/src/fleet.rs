//! `maculaos fleet`: the realm's nodes as their heartbeats show them
//! (maculaos-fleet), read from the realm's key-value bucket through this
//! node's NATS server.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use maculaos_fleet::{Fleet, InRealm, Member};
use maculaos_mesh::client::Client;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// How long a command waits for the realm's JetStream to have a leader.
const PATIENCE: Duration = Duration::from_secs(60);

/// How long one JetStream request may take: a thousand nodes are read in
/// under a second, but JetStream answers slowly on a loaded machine (QEMU
/// without KVM showed it).
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Subcommand)]
pub enum Command {
    /// Every node of the realm: healthy, degraded (a failing check, a slot
    /// on trial, disk or memory over 90%) or offline (no heartbeat for a
    /// minute), with the summary line.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One node's last heartbeat and what it means; exit code 0 only when
    /// it is healthy.
    Status {
        node: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The realm's desired configuration (root, on the realm CA's holder
    /// for `set`): what `drift-check` compares every node with.
    #[command(subcommand)]
    Desired(DesiredCommand),
    /// Which nodes' configuration in force differs from the realm's
    /// desired configuration for them, key by key, and which file set
    /// each; exit code 1 when one does.
    DriftCheck {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Make the drifting nodes take the desired configuration (root, on
    /// the realm CA's holder): `--dry-run` says what would change where,
    /// `--apply` sends each an order signed with the realm CA.
    #[command(group(clap::ArgGroup::new("mode").required(true).args(["dry_run", "apply"])))]
    DriftFix {
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        apply: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Roll VERSION out over the realm's nodes (root, on the realm CA's
    /// holder): every node that is not offline takes its turn, at most
    /// `max_unavailable` at once, each taking a reboot slot, updating from
    /// its update source (`upgrade.url`), rebooting, and giving the slot
    /// back once it runs VERSION, marked good and healthy for
    /// `health_check_wait`. Defaults from `fleet.update` in this node's
    /// configuration. Written to the audit log.
    Update {
        version: String,
        /// `rolling` or `canary`.
        #[arg(long, value_parser = parse_strategy)]
        strategy: Option<maculaos_fleet::rollout::Strategy>,
        /// Nodes updating at once: a number, or a share such as 10%.
        #[arg(long, value_parser = maculaos_config::values::Portion::parse)]
        max_unavailable: Option<maculaos_config::values::Portion>,
        /// How long a node runs VERSION healthy before the next one's
        /// turn, such as 60s or 5m.
        #[arg(long, value_parser = maculaos_config::values::Duration::parse)]
        health_check_wait: Option<maculaos_config::values::Duration>,
        /// Share of the nodes that go first with `--strategy canary`.
        #[arg(long, value_parser = maculaos_config::values::Percent::parse)]
        canary_percentage: Option<maculaos_config::values::Percent>,
        /// Share of the nodes that must succeed, or the rollout stops.
        #[arg(long, value_parser = maculaos_config::values::Percent::parse)]
        success_threshold: Option<maculaos_config::values::Percent>,
    },
    /// The rollout under way: `status`, `pause`, `resume`, `abort`.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Take NODE out of the fleet (root, on the bootstrap node that holds
    /// the realm CA): an order signed with the realm CA tells it to factory
    /// reset (network settings kept), then its certificates are revoked and
    /// it leaves the registry. Written to the audit log. Exit code 0 only
    /// when all three happened.
    Decommission {
        node: String,
        /// Erase the user data in /var/lib/data too.
        #[arg(long)]
        wipe: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// The realm's rollout: its state, who holds its reboot slots, where
    /// each node is and what its agent last said.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// No node starts an update (root, on the realm CA's holder); those
    /// updating finish.
    Pause,
    /// Go on after a pause.
    Resume,
    /// Stop the rollout for good: no node starts an update, the slots are
    /// given back; nodes already on the new version stay on it.
    Abort,
}

#[derive(Subcommand)]
pub enum DesiredCommand {
    /// Set the desired configuration of every node of the realm, or of
    /// NODE (which wins over it), from FILE (a `config.d` file's YAML,
    /// checked first); signed with the realm CA.
    Set {
        file: std::path::PathBuf,
        #[arg(long)]
        node: Option<String>,
    },
    /// Print the desired configuration of every node, or of NODE.
    Show {
        #[arg(long)]
        node: Option<String>,
    },
}

/// Whether `cmd` needs root (it signs with the realm CA's key).
pub fn needs_root(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Decommission { .. }
            | Command::DriftFix { .. }
            | Command::Desired(DesiredCommand::Set { .. })
            | Command::Update { .. }
            | Command::Rollout(
                RolloutCommand::Pause | RolloutCommand::Resume | RolloutCommand::Abort
            )
    )
}

fn parse_strategy(s: &str) -> Result<maculaos_fleet::rollout::Strategy, String> {
    match s {
        "rolling" => Ok(maculaos_fleet::rollout::Strategy::Rolling),
        "canary" => Ok(maculaos_fleet::rollout::Strategy::Canary),
        _ => Err(format!("`{s}` is not a strategy: rolling or canary")),
    }
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    let cmd = match cmd {
        Command::Decommission { node, wipe, json } => return decommission(&node, wipe, json),
        Command::Desired(d) => return desired(d),
        Command::DriftFix { apply, json, .. } => return drift_fix(apply, json),
        Command::Update {
            version,
            strategy,
            max_unavailable,
            health_check_wait,
            canary_percentage,
            success_threshold,
        } => {
            let d = maculaos_config::load(&maculaos_config::Paths::system())
                .config
                .maculaos
                .fleet
                .update;
            return start_rollout(&Rollout {
                version,
                strategy: strategy.unwrap_or(d.strategy),
                max_unavailable: max_unavailable.unwrap_or(d.max_unavailable),
                health_check_wait: health_check_wait.unwrap_or(d.health_check_wait),
                canary_percentage: canary_percentage.unwrap_or(d.canary.percentage),
                success_threshold: success_threshold.unwrap_or(d.canary.success_threshold),
            });
        }
        Command::Rollout(r) => return rollout_cmd(r),
        other => other,
    };
    let fleet = read()?;
    match cmd {
        Command::Decommission { .. }
        | Command::Desired(_)
        | Command::DriftFix { .. }
        | Command::Update { .. }
        | Command::Rollout(_) => {
            unreachable!("handled above")
        }
        Command::DriftCheck { json } => drift_check(&fleet, json),
        Command::List { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&fleet)?);
            } else {
                if let Some(w) = fleet.stale() {
                    eprintln!("warning: {w}");
                }
                println!("{}", fleet.summary);
                print!("{}", maculaos_fleet::table(&fleet.members));
                for (key, why) in &fleet.unreadable {
                    eprintln!(
                        "warning: {key} in bucket {}: not a heartbeat: {why}",
                        maculaos_fleet::BUCKET
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { node, json } => {
            let name = node.split('.').next().unwrap_or(&node);
            let Some(m) = fleet.members.iter().find(|m| m.node == name) else {
                bail!(
                    "{name} has never sent a heartbeat to this realm (`maculaos fleet list` shows the nodes that have)"
                );
            };
            if json {
                println!("{}", serde_json::to_string_pretty(m)?);
            } else {
                if let Some(w) = fleet.stale() {
                    eprintln!("warning: {w}");
                }
                print!("{}", render(m));
            }
            Ok(if m.status == maculaos_fleet::Status::Healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn read() -> Result<Fleet> {
    let me = InRealm::of_node(Path::new("/")).context(
        "this node is in no realm: the fleet is the nodes of the node's realm (`maculaos mesh status`)",
    )?;
    let c = Client::connect(&me.url, "maculaos-cli-fleet", TIMEOUT)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)?;
    maculaos_fleet::patiently(PATIENCE, || maculaos_fleet::list(&c, &me.realm, now)).map_err(|e| {
        anyhow::anyhow!(
            "reading the fleet of realm {}: {e} (its bootstrap nodes make the bucket `{}` once their agents run)",
            me.realm,
            maculaos_fleet::BUCKET
        )
    })
}

fn render(m: &Member) -> String {
    let hb = &m.heartbeat;
    let pct = maculaos_fleet::percent;
    let mut o = String::new();
    let mut line = |k: &str, v: String| o.push_str(&format!("{k:<14}{v}\n"));
    line("Node:", m.node.clone());
    line("Status:", m.status.to_string());
    if !m.reasons.is_empty() {
        line("Why:", m.reasons.join("; "));
    }
    line(
        "Last seen:",
        format!("{} ago", maculaos_fleet::human_age(m.age_seconds)),
    );
    line("Realm:", hb.realm.clone());
    line("Roles:", hb.roles.join(", "));
    line("Version:", hb.version.clone());
    line(
        "Slot:",
        format!("{} ({})", hb.slot.as_deref().unwrap_or("-"), hb.update),
    );
    if let Some(v) = &hb.last_update {
        line("Last update:", v.clone());
    }
    if hb.bad_versions > 0 {
        line("Bad versions:", hb.bad_versions.to_string());
    }
    line(
        "Checks:",
        format!("{} ({} failing)", hb.checks, hb.failing.len()),
    );
    line(
        "CPU/memory:",
        format!("{} / {}", pct(hb.cpu_percent), pct(hb.memory_percent)),
    );
    line("Disk (/var):", pct(hb.disk_percent));
    line("Uptime:", maculaos_info::human_uptime(hb.uptime_seconds));
    line("Config:", hb.config_digest.clone());
    o
}

/// How long a node has to answer an order.
const ORDER_TIMEOUT: Duration = Duration::from_secs(10);

/// The realm operator on the realm CA's holder: this node's realm, its
/// mesh state (with the CA's key), the operator's login, now, and a
/// connection. `what` says what needs it, in the error.
struct Operator {
    me: InRealm,
    st: maculaos_mesh::state::State,
    by: String,
    now: u64,
    client: Client,
}

impl Operator {
    fn here(what: &str) -> Result<Operator> {
        let me = InRealm::of_node(Path::new("/"))
            .context("this node is in no realm: there is no fleet here")?;
        let st = maculaos_mesh::state::State::under(Path::new("/"));
        if !st.identity().map(|i| i.ca_holder).unwrap_or(false) {
            bail!(
                "{what} takes the realm operator's credential, the realm CA's key: run it on the \
                 bootstrap node that holds it (its `maculaos mesh status` says `CA holder`)"
            );
        }
        let by = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "root".into());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let client = Client::connect(&me.url, "maculaos-cli-fleet", TIMEOUT)?;
        Ok(Operator {
            me,
            st,
            by,
            now,
            client,
        })
    }

    /// Send `action` to `node`, signed; its answer (refusals and no answer
    /// included).
    fn order(
        &self,
        node: &str,
        action: maculaos_mesh::order::Action,
    ) -> Result<maculaos_mesh::order::Answer> {
        use maculaos_mesh::order::{self, Answer, Order};
        // Dated when sent: a long run of orders stays within their window.
        let o = Order {
            realm: self.me.realm.clone(),
            node: node.to_string(),
            action,
            issued_at: maculaos_mesh::state::now().max(0) as u64,
            by: self.by.clone(),
            nonce: order::nonce(),
        };
        let signed = self.st.sign_order(&o).map_err(anyhow::Error::msg)?;
        Ok(
            match self.client.request(
                &order::subject(&self.me.realm, node),
                signed.to_json().as_bytes(),
                ORDER_TIMEOUT,
            ) {
                Ok((m, _)) => {
                    serde_json::from_str::<Answer>(&m.payload).unwrap_or_else(|e| Answer {
                        accepted: false,
                        message: format!("the node answered something else: {e}"),
                    })
                }
                Err(e) => Answer {
                    accepted: false,
                    message: format!("not delivered: {e}"),
                },
            },
        )
    }

    /// One line in the audit log; a failure is said, not fatal.
    fn audit(&self, action: &str, outcome: &serde_json::Value) {
        let line = serde_json::json!({
            "at": self.now,
            "by": self.by,
            "action": action,
            "realm": self.me.realm,
            "outcome": outcome,
        });
        if let Err(e) = self.st.audit(&line) {
            eprintln!("warning: not written to the audit log: {e}");
        }
    }
}

fn decommission(node: &str, wipe: bool, json: bool) -> Result<ExitCode> {
    use maculaos_mesh::order::Action;
    let name = node.split('.').next().unwrap_or(node).to_string();
    let op = Operator::here("decommissioning")?;
    if name == op.me.node {
        bail!("{name} is this node, which holds the realm CA: it cannot decommission itself");
    }
    let (st, c, me) = (&op.st, &op.client, &op.me);
    // The order first: once revoked, the node is out of reach.
    let reset = op.order(&name, Action::Decommission { wipe })?;
    let revoked = match st.revoke(&name) {
        Ok((gone, roster)) => Ok(format!(
            "{} certificate(s) revoked; roster {}",
            gone.len(),
            roster.summary()
        )),
        Err(e) if e.to_string().contains("revoked already") => Ok("revoked already".into()),
        Err(e) => Err(e.to_string()),
    };
    // Not as patient as the rest: a realm with one bootstrap node never
    // has a leader.
    let removed = maculaos_fleet::patiently(ORDER_TIMEOUT, || {
        c.kv_delete(&me.realm, maculaos_fleet::BUCKET, &name)
            .map_err(|e| maculaos_fleet::explain(&e.to_string()))
    })
    .map(|_| "removed from the registry".to_string());
    let done = reset.accepted && revoked.is_ok() && removed.is_ok();
    let outcome = serde_json::json!({
        "node": name,
        "wipe": wipe,
        "reset": {"accepted": reset.accepted, "message": reset.message},
        "revoked": match &revoked { Ok(m) => serde_json::json!({"ok": true, "message": m}), Err(e) => serde_json::json!({"ok": false, "message": e}) },
        "registry": match &removed { Ok(m) => serde_json::json!({"ok": true, "message": m}), Err(e) => serde_json::json!({"ok": false, "message": e}) },
    });
    op.audit("decommission", &outcome);
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        let mark = |ok: bool| if ok { "✓" } else { "✗" };
        println!("{} reset: {}", mark(reset.accepted), reset.message);
        for (r, what) in [(&revoked, "mesh credentials"), (&removed, "registry")] {
            match r {
                Ok(m) => println!("✓ {what}: {m}"),
                Err(e) => println!("✗ {what}: {e}"),
            }
        }
        if !reset.accepted {
            eprintln!(
                "{name} did not take the order: it is refused by the realm from now on, but keeps its data \
                 until someone resets it there (`maculaos factory`)."
            );
        }
    }
    Ok(if done {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `fleet desired set|show`.
fn desired(cmd: DesiredCommand) -> Result<ExitCode> {
    use maculaos_fleet::drift::{self, Desired};
    match cmd {
        DesiredCommand::Set { file, node } => {
            let node = node.map(|n| n.split('.').next().unwrap_or(&n).to_string());
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            drift::parse(&file.display().to_string(), &text).map_err(anyhow::Error::msg)?;
            let op = Operator::here("setting the desired configuration")?;
            let d = Desired {
                realm: op.me.realm.clone(),
                node: node.clone(),
                yaml: text,
                set_at: op.now,
                by: op.by.clone(),
            };
            let signed = op
                .st
                .sign_text(serde_json::to_string(&d)?)
                .map_err(anyhow::Error::msg)?;
            let copies = maculaos_fleet::replicas(maculaos_fleet::jetstream_servers());
            let key = drift::key(node.as_deref());
            let rev = maculaos_fleet::patiently(PATIENCE, || {
                op.client
                    .kv_ensure(&op.me.realm, drift::BUCKET, copies)
                    .and_then(|_| {
                        op.client.kv_put(
                            &op.me.realm,
                            drift::BUCKET,
                            &key,
                            signed.to_json().as_bytes(),
                        )
                    })
                    .map_err(|e| maculaos_fleet::explain(&e.to_string()))
            })
            .map_err(anyhow::Error::msg)?;
            op.audit(
                "desired-set",
                &serde_json::json!({"key": key, "revision": rev, "file": file.display().to_string()}),
            );
            eprintln!(
                "the desired configuration of {} is set (revision {rev}); `maculaos fleet drift-check` \
                 shows the nodes that differ within {} s",
                node.as_deref().unwrap_or("every node of the realm"),
                maculaos_fleet::EVERY.as_secs()
            );
            Ok(ExitCode::SUCCESS)
        }
        DesiredCommand::Show { node } => {
            let me = InRealm::of_node(Path::new("/")).context("this node is in no realm")?;
            let c = Client::connect(&me.url, "maculaos-cli-fleet", TIMEOUT)?;
            let key = drift::key(node.as_deref().map(|n| n.split('.').next().unwrap_or(n)));
            let Some(v) = c.kv_get(&me.realm, drift::BUCKET, &key).or_else(|e| {
                if e.to_string().contains("no bucket") {
                    Ok(None)
                } else {
                    Err(e)
                }
            })?
            else {
                eprintln!("no desired configuration is set for {key}");
                return Ok(ExitCode::FAILURE);
            };
            let signed = maculaos_mesh::order::Signed::from_json(v.value.as_bytes())
                .map_err(anyhow::Error::msg)?;
            // Checked as the nodes check it (the CA's certificate is
            // readable by root only).
            if maculaos_install::is_root() {
                maculaos_mesh::state::State::under(Path::new("/"))
                    .verified_text(&signed, &format!("the desired configuration {key}"))
                    .map_err(anyhow::Error::msg)?;
            } else {
                eprintln!("# its signature is not checked: run it with sudo to check it");
            }
            let d: Desired = serde_json::from_str(&signed.text)?;
            eprintln!(
                "# set by {} at {} (unix time), revision {}",
                d.by, d.set_at, v.revision
            );
            print!("{}", d.yaml);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A node's drift as `drift-check` reports it.
#[derive(serde::Serialize)]
struct NodeDrift {
    node: String,
    /// `drifted`, `in step`, `nothing desired`, `unchecked` (why in
    /// `message`), `offline`.
    state: &'static str,
    keys: Vec<maculaos_fleet::drift::Drifted>,
    message: String,
}

fn drifts(fleet: &Fleet) -> Vec<NodeDrift> {
    fleet
        .members
        .iter()
        .map(|m| {
            let hb = &m.heartbeat;
            let (state, keys, message) = if m.status == maculaos_fleet::Status::Offline {
                ("offline", vec![], "not checked: offline".to_string())
            } else if let Some(e) = &hb.drift_error {
                ("unchecked", vec![], e.clone())
            } else {
                match &hb.drift {
                    None => ("nothing desired", vec![], String::new()),
                    Some(k) if k.is_empty() => ("in step", vec![], String::new()),
                    Some(k) => ("drifted", k.clone(), String::new()),
                }
            };
            NodeDrift {
                node: m.node.clone(),
                state,
                keys,
                message,
            }
        })
        .collect()
}

fn drift_line(d: &NodeDrift) -> String {
    let keys: Vec<String> = d
        .keys
        .iter()
        .map(|k| match &k.set_by {
            Some(f) => format!("{} (set by {f})", k.key),
            None => format!("{} (not set)", k.key),
        })
        .collect();
    format!(
        "  ⚠️ {}: configuration differs ({} key{}): {}",
        d.node,
        keys.len(),
        if keys.len() == 1 { "" } else { "s" },
        keys.join(", ")
    )
}

/// `fleet drift-check`: exit code 1 when a node drifted.
fn drift_check(fleet: &Fleet, json: bool) -> Result<ExitCode> {
    let all = drifts(fleet);
    let drifted = all.iter().filter(|d| d.state == "drifted").count();
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for d in all.iter().filter(|d| d.state == "drifted") {
            println!("{}", drift_line(d));
        }
        for d in all
            .iter()
            .filter(|d| d.state == "unchecked" || d.state == "offline")
        {
            println!("  ? {}: {}", d.node, d.message);
        }
        let n = |s: &str| all.iter().filter(|d| d.state == s).count();
        println!("  ✓ {} nodes: no drift detected", n("in step"));
        if n("nothing desired") > 0 {
            println!(
                "  {} nodes: no desired configuration (`maculaos fleet desired set`)",
                n("nothing desired")
            );
        }
    }
    Ok(if drifted > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `fleet drift-fix --dry-run | --apply`.
fn drift_fix(apply: bool, json: bool) -> Result<ExitCode> {
    let op = Operator::here("fixing drift")?;
    let fleet = maculaos_fleet::patiently(PATIENCE, || {
        maculaos_fleet::list(&op.client, &op.me.realm, op.now as i64)
    })
    .map_err(anyhow::Error::msg)?;
    let drifted: Vec<NodeDrift> = drifts(&fleet)
        .into_iter()
        .filter(|d| d.state == "drifted")
        .collect();
    let mut out = Vec::new();
    let mut all_ok = true;
    for d in &drifted {
        let (accepted, message) = if apply && d.node == op.me.node {
            // The CA holder takes no orders: it fixes itself.
            match maculaos_fleet::drift::fix(&maculaos_config::Paths::system()) {
                Ok(()) => (true, "fixed here, on the CA holder".to_string()),
                Err(e) => (false, e),
            }
        } else if apply {
            let a = op.order(&d.node, maculaos_mesh::order::Action::FixDrift)?;
            (a.accepted, a.message)
        } else {
            (false, "dry run: nothing sent".to_string())
        };
        all_ok &= accepted || !apply;
        out.push(serde_json::json!({
            "node": d.node,
            "keys": d.keys,
            "accepted": accepted,
            "message": message,
        }));
    }
    if apply {
        op.audit("drift-fix", &serde_json::Value::Array(out.clone()));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if drifted.is_empty() {
        println!("no node drifted: nothing to fix");
    } else {
        for (d, o) in drifted.iter().zip(&out) {
            println!("{}", drift_line(d));
            if apply {
                let mark = if o["accepted"] == true { "✓" } else { "✗" };
                println!("    {mark} {}", o["message"].as_str().unwrap_or_default());
            } else {
                println!(
                    "    would write the desired configuration to {} there and apply it",
                    maculaos_fleet::drift::FIX_FILE
                );
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What `fleet update` starts: its options over `fleet.update`'s.
struct Rollout {
    version: String,
    strategy: maculaos_fleet::rollout::Strategy,
    max_unavailable: maculaos_config::values::Portion,
    health_check_wait: maculaos_config::values::Duration,
    canary_percentage: maculaos_config::values::Percent,
    success_threshold: maculaos_config::values::Percent,
}

/// Sign `plan` with the realm CA and put it in the realm's rollout bucket.
fn publish(op: &Operator, plan: &maculaos_fleet::rollout::Plan) -> Result<u64> {
    use maculaos_fleet::rollout;
    let signed = op
        .st
        .sign_text(serde_json::to_string(plan)?)
        .map_err(anyhow::Error::msg)?;
    let copies = maculaos_fleet::replicas(maculaos_fleet::jetstream_servers());
    maculaos_fleet::patiently(PATIENCE, || {
        op.client
            .kv_ensure(&op.me.realm, rollout::BUCKET, copies)
            .and_then(|_| {
                op.client.kv_put(
                    &op.me.realm,
                    rollout::BUCKET,
                    rollout::PLAN_KEY,
                    signed.to_json().as_bytes(),
                )
            })
            .map_err(|e| maculaos_fleet::explain(&e.to_string()))
    })
    .map_err(anyhow::Error::msg)
}

/// The rollout in the realm now, its signature checked.
fn current(op: &Operator) -> Result<Option<maculaos_fleet::coordinate::View>> {
    maculaos_fleet::patiently(PATIENCE, || {
        maculaos_fleet::coordinate::view(&op.client, &op.me.realm, Some(&op.st), None)
            .map_err(|e| maculaos_fleet::explain(&e))
    })
    .map_err(anyhow::Error::msg)
}

/// When a new plan (or a new state of one) is set: now, but always after
/// the plan in the realm, which every node compares with the newest it
/// followed (a clock that went back must not make the new one "older").
fn next_set_at(op: &Operator) -> u64 {
    let before = maculaos_fleet::coordinate::plan(&op.client, &op.me.realm, None)
        .ok()
        .flatten()
        .map(|(p, _, _)| p.set_at)
        .unwrap_or(0);
    op.now.max(before + 1)
}

/// `fleet update VERSION`.
fn start_rollout(r: &Rollout) -> Result<ExitCode> {
    use maculaos_fleet::rollout::{self, Control, Plan, Strategy, Verdict};
    if r.version.starts_with('-') || r.version.chars().any(char::is_whitespace) {
        bail!("{:?} is not a version (such as 0.2.0)", r.version);
    }
    let op = Operator::here("starting a rollout")?;
    match current(&op) {
        Ok(Some(v)) if matches!(v.verdict, Verdict::Canary | Verdict::All | Verdict::Paused) => {
            bail!(
                "rollout {} of {} is {}: let it finish, or `sudo maculaos fleet rollout abort` it first",
                v.plan.id,
                v.plan.version,
                v.verdict
            );
        }
        Ok(_) => {}
        // A plan nobody follows (unreadable, not signed by this realm's
        // CA) must not keep the operator from starting one.
        Err(e)
            if e.to_string()
                .contains(maculaos_fleet::coordinate::UNFOLLOWABLE) =>
        {
            eprintln!("warning: the rollout in the realm is replaced: {e:#}");
        }
        Err(e) => return Err(e),
    }
    let fleet = maculaos_fleet::patiently(PATIENCE, || {
        maculaos_fleet::list(&op.client, &op.me.realm, op.now as i64)
    })
    .map_err(anyhow::Error::msg)?;
    let (nodes, offline): (Vec<&Member>, Vec<&Member>) = fleet
        .members
        .iter()
        .partition(|m| m.status != maculaos_fleet::Status::Offline);
    // Forward only: a node running a newer version would refuse the
    // update for good (a version that fails goes back by boot counting).
    if let Some(m) = nodes
        .iter()
        .find(|m| maculaos_bundle::compare_versions(&m.heartbeat.version, &r.version).is_gt())
    {
        bail!(
            "{} runs {}, newer than {}: a rollout only goes forward; go back on a node with `sudo maculaos rollback`",
            m.node,
            m.heartbeat.version,
            r.version
        );
    }
    let nodes: Vec<String> = nodes.iter().map(|m| m.node.clone()).collect();
    if nodes.is_empty() {
        bail!(
            "no node of realm {} is online: nothing to roll out to",
            op.me.realm
        );
    }
    let id: String = format!("{}-{}", r.version, op.now)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let canary = match r.strategy {
        Strategy::Canary => rollout::pick_canary(&nodes, r.canary_percentage.get()),
        Strategy::Rolling => Vec::new(),
    };
    let plan = Plan {
        id,
        realm: op.me.realm.clone(),
        version: r.version.clone(),
        strategy: r.strategy,
        max_unavailable: r.max_unavailable.of(nodes.len()).max(1),
        health_check_wait: r.health_check_wait.get().as_secs(),
        nodes,
        canary,
        success_threshold: r.success_threshold.get(),
        control: Control::Running,
        set_at: next_set_at(&op),
        by: op.by.clone(),
    };
    let rev = publish(&op, &plan)?;
    op.audit(
        "rollout-start",
        &serde_json::json!({"id": plan.id, "version": plan.version, "strategy": plan.strategy,
            "max_unavailable": plan.max_unavailable, "nodes": plan.nodes, "canary": plan.canary,
            "revision": rev}),
    );
    println!(
        "rollout {}: {} to {} node{} ({}, at most {} at once, {} s healthy each before the next)",
        plan.id,
        plan.version,
        plan.nodes.len(),
        if plan.nodes.len() == 1 { "" } else { "s" },
        match plan.strategy {
            Strategy::Rolling => "rolling".to_string(),
            Strategy::Canary => format!(
                "canary: {} first, {}% must succeed",
                plan.canary.join(", "),
                plan.success_threshold
            ),
        },
        plan.max_unavailable,
        plan.health_check_wait
    );
    for m in offline {
        println!("  left out, offline: {}", m.node);
    }
    println!("follow it with `maculaos fleet rollout status`");
    Ok(ExitCode::SUCCESS)
}

/// `fleet rollout status|pause|resume|abort`.
fn rollout_cmd(cmd: RolloutCommand) -> Result<ExitCode> {
    use maculaos_fleet::rollout::{Control, Verdict};
    let control = match cmd {
        RolloutCommand::Status { json } => return rollout_status(json),
        RolloutCommand::Pause => Control::Paused,
        RolloutCommand::Resume => Control::Running,
        RolloutCommand::Abort => Control::Aborted,
    };
    let op = Operator::here("changing a rollout")?;
    let Some(v) = current(&op)? else {
        bail!(
            "realm {} has no rollout (`sudo maculaos fleet update VERSION` starts one)",
            op.me.realm
        );
    };
    let mut plan = v.plan;
    if plan.control == Control::Aborted {
        bail!("rollout {} was aborted for good: start a new one with `sudo maculaos fleet update VERSION`", plan.id);
    }
    if matches!(v.verdict, Verdict::Finished | Verdict::Stopped(_)) {
        bail!(
            "rollout {} of {} is {}: there is nothing to {}; start a new one with `sudo maculaos fleet update VERSION`",
            plan.id,
            plan.version,
            v.verdict,
            match control {
                Control::Paused => "pause",
                Control::Running => "resume",
                Control::Aborted => "abort",
            }
        );
    }
    if plan.control == control {
        println!("rollout {} is {} already", plan.id, v.verdict);
        return Ok(ExitCode::SUCCESS);
    }
    plan.control = control;
    plan.set_at = next_set_at(&op);
    plan.by = op.by.clone();
    publish(&op, &plan)?;
    let (action, word) = match control {
        Control::Paused => ("rollout-pause", "paused"),
        Control::Running => ("rollout-resume", "resumed"),
        Control::Aborted => ("rollout-abort", "aborted"),
    };
    op.audit(
        action,
        &serde_json::json!({"id": plan.id, "version": plan.version}),
    );
    println!("rollout {} of {} is {word}", plan.id, plan.version);
    Ok(ExitCode::SUCCESS)
}

/// `fleet rollout status [--json]`, on any node of the realm.
fn rollout_status(json: bool) -> Result<ExitCode> {
    let me = InRealm::of_node(Path::new("/")).context("this node is in no realm")?;
    let c = Client::connect(&me.url, "maculaos-cli-fleet", TIMEOUT)?;
    // Checked as the nodes check it (the CA's certificate is readable by
    // root only).
    let st = maculaos_mesh::state::State::under(Path::new("/"));
    let st = maculaos_install::is_root().then_some(&st);
    let v = maculaos_fleet::patiently(PATIENCE, || {
        maculaos_fleet::coordinate::view(&c, &me.realm, st, None)
            .map_err(|e| maculaos_fleet::explain(&e))
    })
    .map_err(anyhow::Error::msg)?;
    let Some(v) = v else {
        if json {
            println!("null");
        } else {
            println!("realm {} has no rollout", me.realm);
        }
        return Ok(ExitCode::SUCCESS);
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_rollout(&v));
    if !v.signature_checked {
        eprintln!("# the plan's signature is not checked: run it with sudo to check it");
    }
    Ok(ExitCode::SUCCESS)
}

fn render_rollout(v: &maculaos_fleet::coordinate::View) -> String {
    let p = &v.plan;
    let mut o = String::new();
    o.push_str(&format!(
        "Rollout:  {} ({}, {}, at most {} at once, {} s healthy each)\nState:    {}\nSet:      by {} at {} (unix time)\n",
        p.id,
        p.version,
        p.strategy,
        p.max_unavailable,
        p.health_check_wait,
        v.verdict,
        p.by,
        p.set_at
    ));
    o.push_str(&format!(
        "Slots:    {} of {} held{}\n",
        v.slots.holders.len(),
        p.max_unavailable,
        if v.slots.holders.is_empty() {
            String::new()
        } else {
            format!(": {}", v.slots.holders.join(", "))
        }
    ));
    let width = v
        .nodes
        .iter()
        .map(|n| n.node.len())
        .max()
        .unwrap_or(4)
        .max(4);
    o.push_str(&format!(
        "{:<width$}  {:<30}  {}\n",
        "NODE", "POSITION", "ITS AGENT SAYS"
    ));
    for n in &v.nodes {
        let canary = if p.canary.contains(&n.node) {
            " (canary)"
        } else {
            ""
        };
        o.push_str(&format!(
            "{:<width$}  {:<30}  {}\n",
            n.node,
            format!("{}{canary}", n.position),
            n.note.as_deref().unwrap_or("-")
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use maculaos_fleet::coordinate::{NodeView, View};
    use maculaos_fleet::rollout::{Control, Plan, Position, Strategy, Verdict};
    use maculaos_fleet::slots::Slots;

    #[test]
    fn strategies_by_name() {
        assert_eq!(parse_strategy("canary"), Ok(Strategy::Canary));
        assert!(parse_strategy("blue-green")
            .unwrap_err()
            .contains("rolling or canary"));
    }

    #[test]
    fn a_rollout_reads_node_by_node() {
        let v = View {
            plan: Plan {
                id: "0_2_0-7".into(),
                realm: "io.macula".into(),
                version: "0.2.0".into(),
                strategy: Strategy::Canary,
                max_unavailable: 1,
                health_check_wait: 60,
                nodes: vec!["edge-01".into(), "edge-02".into()],
                canary: vec!["edge-01".into()],
                success_threshold: 95,
                control: Control::Running,
                set_at: 7,
                by: "ops".into(),
            },
            signature_checked: true,
            verdict: Verdict::Canary,
            slots: Slots {
                max: 1,
                holders: vec!["edge-01".into()],
            },
            nodes: vec![
                NodeView {
                    node: "edge-01".into(),
                    position: Position::Holding,
                    holds_slot: true,
                    note: Some("updating to 0.2.0".into()),
                },
                NodeView {
                    node: "edge-02".into(),
                    position: Position::Waiting,
                    holds_slot: false,
                    note: None,
                },
            ],
        };
        let text = render_rollout(&v);
        assert!(
            text.starts_with(
                "Rollout:  0_2_0-7 (0.2.0, canary, at most 1 at once, 60 s healthy each)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("State:    running: the canary nodes first\n"),
            "{text}"
        );
        assert!(text.contains("Slots:    1 of 1 held: edge-01\n"), "{text}");
        let rows: Vec<&str> = text.lines().skip(5).collect();
        assert!(rows[0].starts_with("edge-01  updating (canary)"), "{text}");
        assert!(rows[0].ends_with("updating to 0.2.0"), "{text}");
        assert!(
            rows[1].starts_with("edge-02  waiting") && rows[1].ends_with('-'),
            "{text}"
        );
    }
}
