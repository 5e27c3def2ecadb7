//! The service manager's model (guide "Service Deployment"): each entry of
//! `services:` runs as one OCI container under rootful podman, started by
//! its own systemd unit, `maculaos-svc-NAME.service`, made the way
//! `podman generate systemd --new` makes them (the container is created at
//! start and removed at stop; conmon tells systemd when it runs).
//!
//! Images and volumes live on the data partition (`/var/lib/containers`,
//! the volumes under `/var`), so they survive updates and rollbacks; the
//! units live in `/etc`, which is rebuilt at every boot, and `maculaos
//! apply` writes them again from the configuration.
//!
//! Environment values may be secrets: they go into a file only root can
//! read (`--env-file`), never into the unit (world-readable) or podman's
//! command line (visible in `ps`).

use maculaos_config::values::ServiceName;
use maculaos_config::{HealthCheck, Service};
use std::collections::BTreeMap;

/// Units of services are named `maculaos-svc-NAME.service`.
pub const UNIT_PREFIX: &str = "maculaos-svc-";
/// Where `maculaos apply` writes the units.
pub const UNIT_DIR: &str = "/etc/systemd/system";
/// Where the environment files go (root only, 0600).
pub const ENV_DIR: &str = "/etc/maculaos/services";
/// `maculaos stop NAME` leaves `NAME.stopped` here, so that apply (at every
/// boot) does not start it again until `maculaos start NAME`.
pub const STOPPED_DIR: &str = "/var/lib/maculaos/services";
/// Containers carry this label with their service's name.
pub const LABEL: &str = "io.maculaos.service";

/// `STOPPED_DIR/NAME.stopped`: the mark `maculaos stop NAME` leaves.
pub fn stopped_marker(name: &str) -> String {
    format!("{STOPPED_DIR}/{name}.stopped")
}

/// `maculaos-svc-NAME.service`.
pub fn unit_name(name: &ServiceName) -> String {
    format!("{UNIT_PREFIX}{name}.service")
}

/// The service a unit name belongs to, if it is one of ours.
pub fn service_of_unit(unit: &str) -> Option<&str> {
    unit.strip_prefix(UNIT_PREFIX)?.strip_suffix(".service")
}

/// `maculaos-NAME`: the container's name.
pub fn container_name(name: &ServiceName) -> String {
    format!("maculaos-{name}")
}

/// `service:NAME`: the health agent's check of a service's `health`.
pub fn check_name(name: &str) -> String {
    format!("service:{name}")
}

/// The health agent's checks of `services` that have a `health`: each
/// restarts its service's unit when it fails, and is skipped while the
/// service does not run; a `command` runs in the container.
pub fn health_checks(services: &BTreeMap<ServiceName, Service>) -> Vec<HealthCheck> {
    services
        .iter()
        .filter_map(|(name, svc)| {
            let h = svc.health.as_ref()?;
            let container = container_name(name);
            Some(h.check(
                &check_name(name.as_str()),
                &unit_name(name),
                &["podman", "exec", &container],
            ))
        })
        .collect()
}

/// `ENV_DIR/NAME.env`.
pub fn env_file(name: &str) -> String {
    format!("{ENV_DIR}/{name}.env")
}

/// The environment file's text: `KEY=value` lines, as podman's
/// `--env-file` reads them (one line each: a value with a newline is cut
/// there, and that is said by [`problems`]).
pub fn env_text(svc: &Service) -> String {
    svc.env
        .iter()
        .map(|(k, v)| format!("{k}={}\n", v.lines().next().unwrap_or_default()))
        .collect()
}

/// What in `svc` podman or a unit file cannot take as it is.
pub fn problems(name: &ServiceName, svc: &Service) -> Vec<String> {
    let mut out: Vec<String> = svc
        .env
        .iter()
        .filter(|(_, v)| v.contains(['\n', '\r', '\0']))
        .map(|(k, _)| format!("services.{name}.env.{k}: a value must be one line"))
        .collect();
    for (i, w) in svc.command.iter().enumerate() {
        if w.chars().any(char::is_control) {
            out.push(format!(
                "services.{name}.command.{i}: no control characters (newlines, tabs) in a command's words"
            ));
        }
    }
    if let Some(c) = svc.cpus {
        if !(c > 0.0 && c <= 1024.0) {
            out.push(format!(
                "services.{name}.cpus: {c} is not a number of cores above 0"
            ));
        }
    }
    out
}

/// podman's arguments after `run`, without the image's command.
pub fn run_args(name: &ServiceName, svc: &Service) -> Vec<String> {
    let mut a: Vec<String> = [
        "--cidfile=%t/%n.ctr-id",
        "--cgroups=no-conmon",
        "--rm",
        "--sdnotify=conmon",
        "--replace",
        "-d",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(format!("--name={}", container_name(name)));
    a.push(format!("--label={LABEL}={name}"));
    a.push(format!("--pull={}", svc.pull.as_str()));
    if !svc.env.is_empty() {
        a.push(format!("--env-file={}", env_file(name.as_str())));
    }
    for p in &svc.ports {
        a.push(format!("--publish={p}"));
    }
    for v in &svc.volumes {
        a.push(format!("--volume={v}"));
    }
    if let Some(m) = &svc.memory {
        a.push(format!("--memory={}", m.bytes()));
    }
    if let Some(c) = svc.cpus {
        a.push(format!("--cpus={c}"));
    }
    a.push(svc.image.to_string());
    a.extend(svc.command.iter().cloned());
    a
}

/// One word of an `Exec…=` line, quoted for systemd: `%` and `$` are
/// systemd's specifiers and variables unless doubled, and a word with a
/// space, quote or backslash goes in double quotes with C escapes.
/// Our own specifiers (`%t`, `%n` in [`run_args`]) are kept.
fn exec_word(w: &str, keep_specifiers: bool) -> String {
    let s = if keep_specifiers {
        w.replace('$', "$$")
    } else {
        w.replace('%', "%%").replace('$', "$$")
    };
    let plain = !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_control() || matches!(c, ' ' | '"' | '\'' | '\\' | ';'));
    if plain {
        return s;
    }
    // Inside double quotes systemd undoes C escapes; a control character
    // (a newline would start a new line of the unit) goes as \xNN.
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => q.push_str("\\\\"),
            '"' => q.push_str("\\\""),
            c if c.is_control() && (c as u32) < 0x80 => q.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => q.push_str(&format!("\\u{:04x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// The unit that runs `name`.
pub fn unit_text(name: &ServiceName, svc: &Service) -> String {
    let args = run_args(name, svc);
    let words: Vec<String> = args
        .iter()
        .enumerate()
        // Only the container id file's argument (the first) carries
        // specifiers; everything else is taken literally.
        .map(|(i, w)| exec_word(w, i == 0))
        .collect();
    format!(
        "# Written by maculaos apply from services.{name} of the configuration:
# change that (or `maculaos deploy`), not this file.
[Unit]
Description=MaculaOS service {name} ({image})
Wants=network-online.target
After=network-online.target
RequiresMountsFor=/var/lib/containers
# A container that keeps failing is started again every RestartSec, never
# given up on (systemd's start limit would leave it failed for good).
StartLimitIntervalSec=0

[Service]
Environment=PODMAN_SYSTEMD_UNIT=%n
Restart={restart}
RestartSec=2
# A first start may pull the image.
TimeoutStartSec=900
TimeoutStopSec=40
# A container id file left by a killed run would make podman refuse.
ExecStartPre=/bin/rm -f %t/%n.ctr-id
ExecStart=/usr/bin/podman run {words}
ExecStop=/usr/bin/podman stop --ignore -t 10 --cidfile=%t/%n.ctr-id
ExecStopPost=/usr/bin/podman rm -f --ignore -t 10 --cidfile=%t/%n.ctr-id
Type=notify
NotifyAccess=all

[Install]
WantedBy=multi-user.target
",
        image = svc.image,
        restart = svc.restart.as_str(),
        words = words.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service from JSON (which is YAML too).
    fn service(json: &str) -> Service {
        serde_json::from_str(json).expect("a service")
    }

    fn name(s: &str) -> ServiceName {
        s.parse().expect("a name")
    }

    #[test]
    fn the_unit_runs_the_image_with_its_ports_volumes_and_limits() {
        let svc = service(
            r#"{"image": "localhost/web:1", "ports": ["8080:80"],
                "volumes": ["/var/lib/maculaos/web:/data"], "memory": "64M", "cpus": 0.5,
                "env": {"TOKEN": "s3cret"}, "command": ["httpd", "-f", "-p", "80"]}"#,
        );
        let unit = unit_text(&name("web"), &svc);
        let exec = unit
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .expect("ExecStart");
        assert_eq!(
            exec,
            "ExecStart=/usr/bin/podman run --cidfile=%t/%n.ctr-id --cgroups=no-conmon --rm \
             --sdnotify=conmon --replace -d --name=maculaos-web --label=io.maculaos.service=web \
             --pull=missing --env-file=/etc/maculaos/services/web.env --publish=8080:80 \
             --volume=/var/lib/maculaos/web:/data --memory=67108864 --cpus=0.5 localhost/web:1 \
             httpd -f -p 80"
        );
        assert!(unit.contains("Restart=always\n"));
        assert!(unit.contains("Type=notify\n"));
        // The secret is in the root-only file, not in the unit.
        assert!(!unit.contains("s3cret"));
        assert_eq!(env_text(&svc), "TOKEN=s3cret\n");
    }

    #[test]
    fn an_operators_command_is_taken_literally() {
        let svc =
            service(r#"{"image": "busybox", "command": ["sh", "-c", "echo 100% $HOME \"x\""]}"#);
        let unit = unit_text(&name("a"), &svc);
        assert!(
            unit.contains(r#"busybox sh -c "echo 100%% $$HOME \"x\"""#),
            "{unit}"
        );
    }

    #[test]
    fn a_services_check_restarts_its_unit_and_runs_in_its_container() {
        let mut all = BTreeMap::new();
        all.insert(
            name("web"),
            service(
                r#"{"image": "a", "health": {"type": "command", "command": ["wget", "-q", "http://127.0.0.1/"],
                    "interval": "10s"}}"#,
            ),
        );
        all.insert(name("plain"), service(r#"{"image": "a"}"#));
        all.insert(
            name("db"),
            service(r#"{"image": "a", "health": {"type": "tcp", "port": 5432}}"#),
        );
        let checks = health_checks(&all);
        assert_eq!(checks.len(), 2);
        let db = &checks[0];
        assert_eq!(db.name, "service:db");
        assert_eq!(db.tcp_target(), Some(("127.0.0.1".to_string(), 5432)));
        let web = &checks[1];
        assert_eq!(web.unit_name().as_deref(), Some("maculaos-svc-web.service"));
        assert!(web.restart_on_failure && web.only_while_active);
        assert_eq!(
            web.command,
            [
                "podman",
                "exec",
                "maculaos-web",
                "wget",
                "-q",
                "http://127.0.0.1/"
            ]
        );
        assert_eq!(web.interval.get(), std::time::Duration::from_secs(10));
    }

    #[test]
    fn unit_names_map_back_to_services() {
        assert_eq!(unit_name(&name("web")), "maculaos-svc-web.service");
        assert_eq!(service_of_unit("maculaos-svc-web.service"), Some("web"));
        assert_eq!(service_of_unit("ssh.service"), None);
    }

    #[test]
    fn values_podman_cannot_take_are_named() {
        let svc = service(
            r#"{"image": "a", "cpus": 0, "env": {"K": "two\nlines"},
                "command": ["sh", "-c", "x\nExecStartPost=/bin/evil"]}"#,
        );
        let p = problems(&name("a"), &svc);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("services.a.env.K"));
        assert!(p[1].contains("services.a.command.2"));
        assert!(p[2].contains("services.a.cpus"));
    }

    #[test]
    fn a_control_character_cannot_start_a_new_unit_line() {
        let svc = service(r#"{"image": "a", "command": ["x\nExecStartPost=/bin/evil", "t\tb"]}"#);
        let unit = unit_text(&name("a"), &svc);
        assert!(!unit.contains("\nExecStartPost"), "{unit}");
        assert!(
            unit.contains(r#""x\x0aExecStartPost=/bin/evil" "t\x09b""#),
            "{unit}"
        );
    }
}
