//! `maculaos agent`: the health agent (maculaos-health) with the dashboard
//! (maculaos-dashboard) on its own thread, fed by the agent, and the
//! alerts (maculaos-alerts) and the fleet heartbeat (maculaos-fleet) on
//! others.

use anyhow::Result;
use maculaos_config::Paths;

pub fn run() -> Result<()> {
    let paths = Paths::system();
    let feed = maculaos_dashboard::Feed::new();
    // Read once: a new `dashboard.listen` takes a restart of the agent.
    let dashboard = maculaos_config::load(&paths).config.maculaos.dashboard;
    if dashboard.enabled {
        let listen = dashboard.listen.to_string();
        let served = maculaos_dashboard::bind(&listen).and_then(|l| {
            let root = paths.root.clone();
            let fleet: maculaos_dashboard::FleetSource =
                Box::new(move || maculaos_fleet::page_of_node(&root));
            maculaos_dashboard::spawn(
                l,
                maculaos_dashboard::Collector::system(),
                feed.clone(),
                fleet,
            )
            .map_err(anyhow::Error::from)
        });
        // Without its dashboard the agent still has checks to run.
        match served {
            Ok(_) => println!("event: dashboard: serving http://{listen}/"),
            Err(e) => println!("event: dashboard: {e:#}"),
        }
    }
    // Without alerts the agent still has checks to run.
    if let Err(e) = maculaos_alerts::spawn(paths.clone()) {
        println!("event: alerts: cannot start their thread: {e}");
    }
    // Without heartbeats the node is offline in its fleet, nothing more.
    if let Err(e) = maculaos_fleet::spawn(paths.clone(), carry_out, update) {
        println!("event: fleet: cannot start its thread: {e}");
    }
    // Without it FleetLock clients on this node wait; the rest goes on.
    match maculaos_fleet::fleetlock::spawn(paths.clone()) {
        Ok(_) => println!(
            "event: fleetlock: serving http://{}/ (loopback only)",
            maculaos_fleet::fleetlock::LISTEN
        ),
        Err(e) => println!("event: fleetlock: {e}"),
    }
    maculaos_health::agent::run(&paths, &feed)
}

/// A rollout's update on this node, when its turn came and it holds a
/// reboot slot: the version from the node's update source (`upgrade.url`),
/// only that one, written to the standby slot; then the reboot into it,
/// on trial (its boot counting takes it back if it fails).
fn update(version: &str) -> Result<(), String> {
    let me = std::env::current_exe().unwrap_or_else(|_| "/usr/bin/maculaos".into());
    maculaos_runner::Cmd::new(me)
        .args(["upgrade", "--apply", "--version", version])
        .run_within(std::time::Duration::from_secs(3600))
        .map_err(|e| e.to_string())?;
    println!("event: fleet: {version} is in the standby slot: rebooting into it for the rollout");
    maculaos_runner::Cmd::new("systemctl")
        .arg("reboot")
        .run()
        .map_err(|e| e.to_string())
}

/// An operator's order, checked by the fleet thread: `fleet decommission`
/// is a factory reset that keeps the network settings (so the node can be
/// paired again where it stands) and, with `--wipe`, not the user data.
fn carry_out(order: &maculaos_mesh::order::Order) -> Result<(), String> {
    use maculaos_mesh::order::Action;
    match order.action {
        Action::Decommission { wipe } => {
            crate::recovery::factory_reset_cmd(&crate::recovery::ResetArgs {
                confirm: true,
                keep_data: !wipe,
                keep_network: true,
                no_reboot: false,
                cancel: false,
            })
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
        }
        Action::FixDrift => maculaos_fleet::drift::fix(&maculaos_config::Paths::system()),
    }
}
