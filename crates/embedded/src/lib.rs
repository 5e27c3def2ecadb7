//! The node's embedded services (plan §4.9; guide "Embedded Services"):
//! programs of the image that stay off until the configuration switches
//! them on. Each is a Debian package's own systemd unit, run with the
//! settings MaculaOS writes in a drop-in (its arguments, and sandboxing
//! added to the package's), so the package's unit and user stay as Debian
//! made them.
//!
//! One description per service, read by everything that acts on it:
//! `maculaos apply` (the drop-in, enable or disable), the firewall (its
//! ports, only while it is enabled, from whom), the health agent (its
//! check, restarting the unit) and `maculaos services` (its row).

use maculaos_config::values::{Cidr, Duration, FirewallPort, HttpUrl};
use maculaos_config::{CheckType, Config, HealthCheck};

/// Where node-exporter's textfile collector reads `*.prom` files; the
/// health agent writes MaculaOS's own metrics there (`maculaos.prom`).
pub const TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";

/// One embedded service, as the configuration wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// Its name in `maculaos services` and `maculaos health`.
    pub name: &'static str,
    /// The Debian unit that runs it.
    pub unit: &'static str,
    /// The configuration section that switches it on.
    pub key: &'static str,
    /// What it is, in a few words.
    pub about: &'static str,
    pub enabled: bool,
    /// The drop-in's text (`maculaos apply` adds its header): how MaculaOS
    /// runs the unit.
    pub dropin: String,
    /// What it serves, opened in the firewall while it is enabled.
    pub ports: Vec<Port>,
    /// How the health agent checks it (on the node itself, while the unit
    /// runs); the agent restarts the unit when it fails.
    pub check: HealthCheck,
}

/// A port an embedded service serves, and who may reach it (empty: anyone
/// who reaches the node).
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub port: FirewallPort,
    pub from: Vec<Cidr>,
}

/// The drop-in of `unit`: `/etc/systemd/system/UNIT.d/50-maculaos.conf`
/// (/etc is rebuilt at every boot; `maculaos apply` writes it again).
pub fn dropin_path(unit: &str) -> String {
    format!("/etc/systemd/system/{unit}.d/50-maculaos.conf")
}

/// Every embedded service MaculaOS knows, enabled or not.
pub fn all(config: &Config) -> Vec<Embedded> {
    vec![metrics(config)]
}

/// Those the configuration switches on.
pub fn enabled(config: &Config) -> Vec<Embedded> {
    all(config).into_iter().filter(|e| e.enabled).collect()
}

/// `maculaos.monitoring.prometheus`: Debian's prometheus-node-exporter.
fn metrics(config: &Config) -> Embedded {
    let p = &config.maculaos.monitoring.prometheus;
    let unit = "prometheus-node-exporter.service";
    // Debian's unit reads its arguments from /etc/default; this drop-in
    // gives them instead, so the file in the image stays untouched.
    let dropin = format!(
        "[Service]\nEnvironmentFile=\nExecStart=\n\
         ExecStart=/usr/bin/prometheus-node-exporter --web.listen-address=:{port} \
         --web.telemetry-path={path} --collector.textfile.directory={TEXTFILE_DIR}\n\
         NoNewPrivileges=yes\nProtectSystem=strict\nPrivateTmp=yes\n",
        port = p.port,
        path = p.path,
    );
    let url = format!("http://127.0.0.1:{}{}", p.port, p.path);
    Embedded {
        name: "metrics",
        unit,
        key: "maculaos.monitoring.prometheus",
        about: "Prometheus metrics (prometheus-node-exporter)",
        enabled: p.enabled,
        dropin,
        // Port 0 is refused by the configuration's checks; were it to come
        // through, the service would have no port to open, not a panic.
        ports: format!("{}/tcp", p.port)
            .parse()
            .map(|port| Port {
                port,
                from: p.allow_from.clone(),
            })
            .into_iter()
            .collect(),
        check: http_check("metrics", unit, &url),
    }
}

/// A GET of `url` every 30 s that restarts `unit` after it fails.
fn http_check(name: &str, unit: &str, url: &str) -> HealthCheck {
    HealthCheck {
        name: name.to_string(),
        kind: CheckType::Http,
        unit: unit.parse().ok(),
        url: url.parse::<HttpUrl>().ok(),
        host: None,
        port: None,
        address: None,
        path: None,
        threshold: None,
        action: None,
        command: Vec::new(),
        interval: HealthCheck::DEFAULT_INTERVAL,
        timeout: Duration::from_secs(5),
        restart_on_failure: true,
        max_restarts: HealthCheck::DEFAULT_MAX_RESTARTS,
        cooldown: HealthCheck::DEFAULT_COOLDOWN,
        // Skipped while the unit does not run: the agent reloads the
        // configuration every 10 s, and must not start a service apply has
        // just stopped (a crash is systemd's to restart: Restart=on-failure).
        only_while_active: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn metrics_are_off_by_default() {
        let c = Config::default();
        assert!(enabled(&c).is_empty());
        let m = &all(&c)[0];
        assert_eq!((m.name, m.enabled), ("metrics", false));
        assert_eq!(m.ports[0].port.to_string(), "9100/tcp");
    }

    #[test]
    fn metrics_follow_port_path_and_allow_from() {
        let c = config(
            "maculaos:\n  monitoring:\n    prometheus:\n      enabled: true\n      port: 9200\n      path: /m\n      allow_from: [10.0.0.0/8]\n",
        );
        let e = enabled(&c);
        assert_eq!(e.len(), 1);
        let m = &e[0];
        assert!(m.dropin.contains(
            "ExecStart=/usr/bin/prometheus-node-exporter --web.listen-address=:9200 \
             --web.telemetry-path=/m --collector.textfile.directory=/var/lib/prometheus/node-exporter\n"
        ));
        // The package's arguments are dropped, not added to.
        assert!(m.dropin.contains("EnvironmentFile=\nExecStart=\n"));
        assert_eq!(m.ports[0].port.to_string(), "9200/tcp");
        assert_eq!(m.ports[0].from[0].to_string(), "10.0.0.0/8");
        assert_eq!(
            m.check.url.as_ref().unwrap().to_string(),
            "http://127.0.0.1:9200/m"
        );
        assert_eq!(
            m.check.unit_name().as_deref(),
            Some("prometheus-node-exporter.service")
        );
        assert!(m.check.restart_on_failure && m.check.only_while_active);
        assert_eq!(
            dropin_path(m.unit),
            "/etc/systemd/system/prometheus-node-exporter.service.d/50-maculaos.conf"
        );
    }
}
