//! `maculaos agent`: the health agent (maculaos-health) with the dashboard
//! (maculaos-dashboard) on its own thread, fed by the agent, and the
//! alerts (maculaos-alerts) on another.

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
            maculaos_dashboard::spawn(l, maculaos_dashboard::Collector::system(), feed.clone())
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
    maculaos_health::agent::run(&paths, &feed)
}
