//! The node's embedded services (plan §4.9; guide "Embedded Services"):
//! programs of the image that stay off until the configuration switches
//! them on. Each is a systemd unit of the image (a Debian package's own,
//! or MaculaOS's where Debian has none), run with the settings MaculaOS
//! writes in a drop-in (its arguments, and sandboxing added to the
//! package's) and in configuration files of its own, so the package's
//! unit, files and user stay as Debian made them.
//!
//! One description per service, read by everything that acts on it:
//! `maculaos apply` (the drop-in, enable or disable), the firewall (its
//! ports, only while it is enabled, from whom), the health agent (its
//! check, restarting the unit) and `maculaos services` (its row).

pub mod git;
pub mod mqtt;

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
    /// Files the service reads, written before it starts (a change
    /// restarts it) and removed when it is off.
    pub files: Vec<File>,
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

/// A file an embedded service reads.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    pub path: &'static str,
    pub mode: u32,
    /// `user:group` (the group lets the service read a file only root writes).
    pub owner: &'static str,
    pub content: Content,
}

/// What a file holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// This text, after apply's header (`# Written by maculaos apply …`).
    Text(String),
    /// mosquitto's password file for these users and passwords: see
    /// [`mqtt::passwords`] (no header: the format has no comments).
    MqttPasswords(Vec<(String, String)>),
}

/// The drop-in of `unit`: `/etc/systemd/system/UNIT.d/50-maculaos.conf`
/// (/etc is rebuilt at every boot; `maculaos apply` writes it again).
pub fn dropin_path(unit: &str) -> String {
    format!("/etc/systemd/system/{unit}.d/50-maculaos.conf")
}

/// Every embedded service MaculaOS knows, enabled or not.
pub fn all(config: &Config) -> Vec<Embedded> {
    vec![
        metrics(config),
        mqtt(config),
        git(config),
        log_forward(config),
    ]
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
        files: Vec::new(),
        // Port 0 is refused by the configuration's checks; were it to come
        // through, the service would have no port to open, not a panic.
        ports: tcp_ports(&[p.port], &p.allow_from),
        check: http_check("metrics", unit, &url),
    }
}

/// mosquitto's configuration and password files.
const MQTT_CONF: &str = "/etc/mosquitto/maculaos.conf";
const MQTT_PASSWD: &str = "/etc/mosquitto/maculaos.passwd";

/// `maculaos.edge.mqtt`: Debian's mosquitto.
fn mqtt(config: &Config) -> Embedded {
    let m = &config.maculaos.edge.mqtt;
    let unit = "mosquitto.service";
    // The package's file includes conf.d and logs to a file; MaculaOS's
    // own file says everything. The broker starts as root, reads its files
    // and drops to the user mosquitto, whose state directory this makes
    // (a node installed before the broker was in the image has none).
    let dropin = format!(
        "[Service]
ExecStart=
ExecStart=/usr/sbin/mosquitto -c {MQTT_CONF}
         ExecStartPre=/usr/bin/install -d -o mosquitto -g mosquitto -m 0750 /var/lib/mosquitto
         NoNewPrivileges=yes
PrivateTmp=yes
"
    );
    // Both files always (the password file empty without users), so that
    // both are removed when the broker is switched off.
    let files = vec![
        File {
            path: MQTT_CONF,
            mode: 0o644,
            owner: "root:root",
            content: Content::Text(mqtt::conf(m, MQTT_PASSWD)),
        },
        File {
            path: MQTT_PASSWD,
            // Hashes only, yet not for everyone: the broker reads it as
            // the user mosquitto.
            mode: 0o640,
            owner: "root:mosquitto",
            content: Content::MqttPasswords(
                m.users
                    .iter()
                    .map(|u| (u.name.to_string(), u.password.clone()))
                    .collect(),
            ),
        },
    ];
    let ports: Vec<u16> = std::iter::once(m.port).chain(m.websocket_port).collect();
    Embedded {
        name: "mqtt",
        unit,
        key: "maculaos.edge.mqtt",
        about: "MQTT broker (mosquitto)",
        enabled: m.enabled,
        dropin,
        files,
        ports: tcp_ports(&ports, &m.allow_from),
        check: unit_check("mqtt", unit),
    }
}

/// `maculaos.gitops`: git over SSH from a second sshd (see [`git`]).
fn git(config: &Config) -> Embedded {
    let g = &config.maculaos.gitops;
    let unit = "maculaos-git.service";
    // The user git's home (sshd starts sessions there, and it is the
    // default repositories' directory): Debian's git package ships it
    // empty and root's, so it is handed to git at every start (`+`: as
    // root, whatever the unit's sandbox). Another repositories' directory
    // is made for git only when it does not exist: `install -d` would hand
    // an existing one (/var/lib, say, by a typo) to git. (VarDir has no
    // character the shell would read.)
    let mut dropin = format!(
        "[Service]\nExecStartPre=+/usr/bin/install -d -o {user} -g {user} -m 0750 {home}\n",
        user = git::USER,
        home = git::HOME,
    );
    if g.data_path.as_str() != git::HOME {
        dropin.push_str(&format!(
            "ExecStartPre=+/bin/sh -c 'test -d {d} || /usr/bin/install -d -o {user} -g {user} -m 0750 {d}'\n",
            d = g.data_path,
            user = git::USER,
        ));
    }
    let keys: String = config.git_keys().iter().map(|k| format!("{k}\n")).collect();
    Embedded {
        name: "git",
        unit,
        key: "maculaos.gitops",
        about: "git server over SSH",
        enabled: g.enabled,
        dropin,
        files: vec![
            File {
                path: git::SSHD_CONFIG,
                mode: 0o644,
                owner: "root:root",
                content: Content::Text(git::sshd_config(g, "/usr/bin/maculaos git-serve")),
            },
            File {
                path: git::AUTHORIZED_KEYS,
                mode: 0o644,
                owner: "root:root",
                content: Content::Text(keys),
            },
        ],
        ports: tcp_ports(&[g.port], &g.allow_from),
        check: unit_check("git", unit),
    }
}

/// Where Debian's uploader reads its receiver, and MaculaOS's script that
/// keeps it from sending its last entry again when it restarts.
const CURSOR_FIX: &str = "/usr/lib/maculaos/journal-upload-cursor";
const UPLOAD_CONF: &str = "/etc/systemd/journal-upload.conf.d/50-maculaos.conf";

/// `maculaos.logging.forward_to`: Debian's systemd-journal-upload, which
/// keeps its cursor in its state directory on /var (`--save-state`).
fn log_forward(config: &Config) -> Embedded {
    let l = &config.maculaos.logging;
    let unit = "systemd-journal-upload.service";
    // It exits when the receiver cannot be reached: started again every
    // 10 s for as long as that lasts (no start limit), each time after the
    // last entry the receiver took (its cursor, moved past that entry
    // first: see the script).
    let dropin = format!(
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStartPre=-+{CURSOR_FIX}\n\
         Restart=always\nRestartSec=10s\n"
    );
    let url = l.forward_to.as_ref().map(|t| t.url()).unwrap_or_default();
    Embedded {
        name: "log-forward",
        unit,
        key: "maculaos.logging",
        about: "journal forwarding (systemd-journal-upload)",
        enabled: l.forward_to.is_some(),
        dropin,
        files: vec![File {
            path: UPLOAD_CONF,
            mode: 0o644,
            owner: "root:root",
            content: Content::Text(format!("[Upload]\nURL={url}\n")),
        }],
        // It only connects out.
        ports: Vec::new(),
        // Failing while the receiver is away (the unit waits to start
        // again), which systemd's restarts already deal with: reported,
        // not restarted by the agent.
        check: HealthCheck {
            restart_on_failure: false,
            only_while_active: false,
            ..unit_check("log-forward", unit)
        },
    }
}

/// `ports` over TCP, each open to `from`. Port 0 is refused by the
/// configuration's checks; were it to come through, it would be left out,
/// not a panic.
fn tcp_ports(ports: &[u16], from: &[Cidr]) -> Vec<Port> {
    ports
        .iter()
        .filter_map(|p| format!("{p}/tcp").parse().ok())
        .map(|port| Port {
            port,
            from: from.to_vec(),
        })
        .collect()
}

/// `unit` running, every 30 s. Not a connection to the service's port:
/// sshd and mosquitto log each connection that closes without a word (two
/// lines every 30 s); both exit when they cannot listen, and mosquitto
/// tells systemd it runs only once its listeners are open.
fn unit_check(name: &str, unit: &str) -> HealthCheck {
    HealthCheck {
        kind: CheckType::Unit,
        url: None,
        ..http_check(name, unit, "http://127.0.0.1/")
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
    fn the_journal_goes_where_logging_says() {
        let c = config("maculaos:\n  logging: {forward_to: '10.0.0.9:19532'}\n");
        let e = enabled(&c);
        assert_eq!(e.len(), 1);
        let f = &e[0];
        assert_eq!(
            (f.name, f.unit),
            ("log-forward", "systemd-journal-upload.service")
        );
        assert!(f.ports.is_empty());
        assert_eq!(
            f.files[0].content,
            Content::Text("[Upload]\nURL=http://10.0.0.9:19532\n".into())
        );
        assert!(f.dropin.contains("Restart=always\n"), "{}", f.dropin);
        assert!(f
            .dropin
            .contains("ExecStartPre=-+/usr/lib/maculaos/journal-upload-cursor\n"));
        assert!(!f.check.restart_on_failure);
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

    #[test]
    fn mqtt_and_git_follow_their_keys() {
        let c = config(
            "maculaos:\n  edge:\n    mqtt: {enabled: true, allow_anonymous: true, websocket_port: null, allow_from: [10.0.0.0/8]}\n  gitops: {enabled: true, port: 2222, data_path: /var/git}\n  ssh: {authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb2Q3M5dG7d8m1oQ6pP0c3W0uW2mGq0mY8m6r8b9Vq3 op']}\n",
        );
        let e = enabled(&c);
        let names: Vec<&str> = e.iter().map(|e| e.name).collect();
        assert_eq!(names, ["mqtt", "git"]);
        let (m, g) = (&e[0], &e[1]);
        // No WebSocket listener: one port, narrowed.
        assert_eq!(m.ports.len(), 1);
        assert_eq!(m.ports[0].port.to_string(), "1883/tcp");
        assert_eq!(m.ports[0].from[0].to_string(), "10.0.0.0/8");
        let Content::Text(conf) = &m.files[0].content else {
            panic!("{:?}", m.files[0])
        };
        assert!(conf.contains("allow_anonymous true\n") && !conf.contains("websockets"));
        assert!(!conf.contains("password_file"), "{conf}");
        assert_eq!(m.check.kind, CheckType::Unit);
        // The git server takes the admin's keys and its own directory.
        assert_eq!(g.ports[0].port.to_string(), "2222/tcp");
        assert!(
            g.dropin.contains(
                "ExecStartPre=+/usr/bin/install -d -o git -g git -m 0750 /var/lib/git\n\
                 ExecStartPre=+/bin/sh -c 'test -d /var/git || /usr/bin/install -d -o git -g git -m 0750 /var/git'\n"
            ),
            "{}",
            g.dropin
        );
        let Content::Text(keys) = &g.files[1].content else {
            panic!("{:?}", g.files[1])
        };
        assert!(keys.ends_with(" op\n"), "{keys}");
        let Content::Text(sshd) = &g.files[0].content else {
            panic!("{:?}", g.files[0])
        };
        assert!(
            sshd.contains("ForceCommand /usr/bin/maculaos git-serve /var/git\n"),
            "{sshd}"
        );
        assert_eq!(g.check.kind, CheckType::Unit);
    }
}
