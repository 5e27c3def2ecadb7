//! `maculaos health`: every check with its state and a message.
//!
//! Built in: the configuration is valid (`config`), k3s (`k3s`), how the
//! node booted (`slots`), room on the data partition (`data-space`) and the
//! clock (`time-sync`). Then the checks of `maculaos.health.checks`, in
//! their order ([`probes`]). [`RestartPolicy`] decides, for the agent that
//! runs them on their intervals, when a failing check's unit is restarted.
//!
//! Every check takes the root of the system it looks at (`/` on a node, a
//! directory in tests). Checks that ask the running system (systemctl,
//! timedatectl) are skipped under any other root.

pub mod agent;
pub mod policy;
pub mod probes;

pub use policy::{Decision, RestartPolicy};
pub use probes::{
    configured_check, configured_checks, disk_check, disk_use, http_check, systemd_unit_check,
    tcp_check,
};

use maculaos_boot::{BootInfo, Cmdline, Mode, BOOT_INFO_PATH};
use maculaos_config::load::{Loaded, Paths, Using};
use maculaos_config::values::Percent;
use maculaos_runner::RunError;
use probes::{is_running_system, not_running_system, under};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pass,
    Fail,
    /// Not applicable here (k3s not installed): neither pass nor fail.
    Skip,
    /// Worth knowing, not a failure (the clock not synchronised yet: an
    /// airgapped node may never be): shown, but `healthy` stays true.
    Warn,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub state: State,
    pub message: String,
}

impl Check {
    pub fn new(name: &str, state: State, message: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            state,
            message: message.into(),
        }
    }
}

/// The configuration check: fails while any source has an error, and says
/// which configuration the node runs with meanwhile.
pub fn config_check(loaded: &Loaded) -> Check {
    if loaded.problems.is_empty() {
        return Check::new("config", State::Pass, "configuration valid");
    }
    let fallback = match loaded.using {
        Using::LastGood => "running with the last good configuration",
        Using::Defaults | Using::Current => "running with the image defaults",
    };
    let list: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
    Check::new(
        "config",
        State::Fail,
        format!(
            "{} error(s), {fallback}; fix them and run `maculaos apply`:\n{}",
            list.len(),
            list.join("\n")
        ),
    )
}

pub fn k3s_check(root: &Path) -> Check {
    if maculaos_apply::k3s_installed(root) {
        Check::new("k3s", State::Pass, "k3s installed and configured")
    } else {
        Check::new("k3s", State::Skip, "k3s: not installed")
    }
}

/// The units a boot needs before its slot may be marked good: a node that
/// cannot be reached is not healthy, whatever else runs.
pub const BOOT_UNITS: &[&str] = &["ssh.service", "systemd-networkd.service"];

/// A systemd unit of the running system is active (the check is named after the unit).
pub fn unit_check(unit: &str) -> Check {
    systemd_unit_check(Path::new("/"), unit, unit)
}

/// How the node booted, from the record maculaos-init leaves in
/// `/run/maculaos/boot.json`: the mode, the root slot, and whether GRUB
/// booted that slot on trial after an update (`maculaos.trial=` on the
/// kernel command line). Whether the trial was since marked good is in the
/// GRUB environment on the ESP: `maculaos upgrade --status` shows it.
pub fn slots_check(root: &Path) -> Check {
    const NAME: &str = "slots";
    let path = under(root, Path::new(BOOT_INFO_PATH));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::new(
                NAME,
                State::Skip,
                format!("{BOOT_INFO_PATH} not found: not booted by maculaos-init"),
            );
        }
        Err(e) => return Check::new(NAME, State::Fail, format!("{BOOT_INFO_PATH}: {e}")),
    };
    let info = match BootInfo::from_json(&text) {
        Ok(i) => i,
        Err(e) => return Check::new(NAME, State::Fail, format!("{BOOT_INFO_PATH}: {e}")),
    };
    let message = match info.mode {
        Mode::Live | Mode::Install => {
            format!("{} mode from {}: no A/B slots", info.mode, info.root_device)
        }
        Mode::Disk | Mode::Recovery => {
            let cmdline = Cmdline::parse(
                &std::fs::read_to_string(under(root, Path::new("/proc/cmdline")))
                    .unwrap_or_default(),
            );
            let trial = cmdline.get("maculaos.trial") == Some(info.slot.to_string().as_str());
            let mut m = format!(
                "{} mode, slot {} ({})",
                info.mode, info.slot, info.root_device
            );
            if trial {
                m.push_str(", booted on trial after an update");
            }
            m
        }
    };
    Check::new(NAME, State::Pass, message)
}

/// Room on the data partition (`/var`): fails from `threshold` full
/// (`maculaos.auto_heal.disk_threshold`).
pub fn data_space_check(root: &Path, threshold: Percent) -> Check {
    const NAME: &str = "data-space";
    let var = Path::new("/var");
    let at = under(root, var);
    if !at.exists() {
        return Check::new(NAME, State::Skip, "/var not found");
    }
    probes::disk_check(root, NAME, var, threshold)
}

/// The clock is synchronised (`timedatectl show -p NTPSynchronized`).
pub fn time_sync_check(root: &Path) -> Check {
    const NAME: &str = "time-sync";
    if !is_running_system(root) {
        return not_running_system(NAME, root);
    }
    let answer = maculaos_runner::Cmd::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .quiet()
        .output();
    time_sync_answer(answer)
}

/// The check for what timedatectl said.
pub(crate) fn time_sync_answer(answer: Result<String, RunError>) -> Check {
    const NAME: &str = "time-sync";
    match answer.as_deref().map(str::trim) {
        Ok("yes") => Check::new(NAME, State::Pass, "clock synchronised"),
        Ok("no") => Check::new(
            NAME,
            State::Warn,
            "clock not synchronised (no NTP server answered yet)",
        ),
        Ok(other) => Check::new(
            NAME,
            State::Fail,
            format!("timedatectl says NTPSynchronized=`{other}`"),
        ),
        Err(RunError::NotFound { .. }) => {
            Check::new(NAME, State::Skip, "timedatectl not installed")
        }
        Err(e) => Check::new(NAME, State::Fail, format!("cannot tell: {e}")),
    }
}

/// The checks that decide whether a boot is good (`maculaos health --boot`).
pub fn boot_checks() -> Vec<Check> {
    BOOT_UNITS.iter().map(|u| unit_check(u)).collect()
}

/// The built-in checks, then those of `maculaos.health.checks` in their order.
pub fn run(paths: &Paths) -> Vec<Check> {
    let loaded = maculaos_config::load(paths);
    let root = paths.root.as_path();
    let config = &loaded.config.maculaos;
    let mut checks = vec![
        config_check(&loaded),
        k3s_check(root),
        slots_check(root),
        data_space_check(root, config.auto_heal.disk_threshold),
        time_sync_check(root),
    ];
    checks.extend(configured_checks(root, &config.health.checks));
    checks
}

/// Whether all checks pass (skipped ones do not count against).
pub fn healthy(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.state != State::Fail)
}

/// One line per check (continuation lines indented), for the terminal.
pub fn render(checks: &[Check]) -> String {
    let width = checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(8);
    let mut out = String::new();
    for c in checks {
        let mark = match c.state {
            State::Pass => "✓",
            State::Fail => "✗",
            State::Skip => "-",
            State::Warn => "!",
        };
        let mut lines = c.message.lines();
        out.push_str(&format!(
            "{mark} {:<width$} {}\n",
            c.name,
            lines.next().unwrap_or("")
        ));
        for l in lines {
            out.push_str(&format!("  {:<width$}   {l}\n", ""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn config_errors_fail_the_check_with_their_text() {
        let d = tempfile::tempdir().unwrap();
        let p = Paths::new(d.path());
        let checks = run(&p);
        assert!(healthy(&checks), "{checks:?}");
        assert_eq!(checks[1].message, "k3s: not installed");
        fs::create_dir_all(d.path().join("var/lib/maculaos")).unwrap();
        fs::write(
            d.path().join("var/lib/maculaos/config.yaml"),
            "maculaos:\n  hostnme: x\n",
        )
        .unwrap();
        let checks = run(&p);
        assert!(!healthy(&checks));
        let text = render(&checks);
        assert!(text.contains("✗ config"), "{text}");
        assert!(
            text.contains("/var/lib/maculaos/config.yaml:2:3: maculaos: unknown key `hostnme`"),
            "{text}"
        );
        assert!(text.contains("image defaults"), "{text}");
    }

    #[test]
    fn run_gives_the_built_ins_then_the_configured_checks_in_order() {
        let d = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        write(
            d.path(),
            "var/lib/maculaos/config.yaml",
            &format!(
                "maculaos:
  auto_heal:
    disk_threshold: 100%
  health:
    checks:
      - {{name: k3s-unit, type: process, process: k3s}}
      - {{name: api, type: tcp, address: '127.0.0.1:{port}', timeout: 2s}}
      - {{name: var, type: disk, path: /var, threshold: 100%}}
"
            ),
        );
        let checks = run(&Paths::new(d.path()));
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "config",
                "k3s",
                "slots",
                "data-space",
                "time-sync",
                "k3s-unit",
                "api",
                "var"
            ]
        );
        let states: Vec<State> = checks.iter().map(|c| c.state).collect();
        use State::*;
        assert_eq!(
            states,
            [Pass, Skip, Skip, Pass, Skip, Skip, Pass, Pass],
            "{checks:#?}"
        );
        assert!(
            checks[3].message.starts_with("/var is "),
            "{}",
            checks[3].message
        );
        assert!(checks[3].message.ends_with("% full (fails at 100%)"));
        assert_eq!(
            checks[5].message,
            format!(
                "not checked: {} is not the running system",
                d.path().display()
            )
        );
        let text = render(&checks);
        assert!(text.contains("- time-sync  not checked"), "{text}");
        assert!(text.contains("✓ data-space /var is"), "{text}");
    }

    #[test]
    fn slots_from_the_boot_record() {
        let d = tempfile::tempdir().unwrap();
        let c = slots_check(d.path());
        assert_eq!(c.state, State::Skip);
        assert_eq!(
            c.message,
            "/run/maculaos/boot.json not found: not booted by maculaos-init"
        );
        let info = |mode: &str, slot: &str, dev: &str| {
            format!(
                r#"{{"mode":"{mode}","slot":"{slot}","firmware":"uefi","root_device":"{dev}",
                "data_device":"/dev/vda5","data_formatted":false,"data_grown":false,"init_done_ms":900}}"#
            )
        };
        write(
            d.path(),
            "run/maculaos/boot.json",
            &info("disk", "B", "/dev/vda4"),
        );
        let c = slots_check(d.path());
        assert_eq!(
            (c.state, c.message.as_str()),
            (State::Pass, "disk mode, slot B (/dev/vda4)")
        );
        write(
            d.path(),
            "proc/cmdline",
            "quiet maculaos.slot=B maculaos.trial=B\n",
        );
        assert_eq!(
            slots_check(d.path()).message,
            "disk mode, slot B (/dev/vda4), booted on trial after an update"
        );
        write(
            d.path(),
            "proc/cmdline",
            "quiet maculaos.slot=A maculaos.trial=B\n",
        );
        write(
            d.path(),
            "run/maculaos/boot.json",
            &info("disk", "A", "/dev/vda3"),
        );
        assert_eq!(
            slots_check(d.path()).message,
            "disk mode, slot A (/dev/vda3)"
        );
        write(
            d.path(),
            "run/maculaos/boot.json",
            &info("live", "A", "/dev/sr0"),
        );
        assert_eq!(
            slots_check(d.path()).message,
            "live mode from /dev/sr0: no A/B slots"
        );
        write(d.path(), "run/maculaos/boot.json", "{");
        let c = slots_check(d.path());
        assert_eq!(c.state, State::Fail);
        assert!(
            c.message.starts_with("/run/maculaos/boot.json: "),
            "{}",
            c.message
        );
    }

    #[test]
    fn time_sync_answers() {
        let c = time_sync_answer(Ok("yes\n".into()));
        assert_eq!(
            (c.state, c.message.as_str()),
            (State::Pass, "clock synchronised")
        );
        let c = time_sync_answer(Ok("no\n".into()));
        assert_eq!(
            (c.state, c.message.as_str()),
            (
                State::Warn,
                "clock not synchronised (no NTP server answered yet)"
            )
        );
        let c = time_sync_answer(Err(RunError::NotFound {
            program: "timedatectl".into(),
            hint: String::new(),
        }));
        assert_eq!(
            (c.state, c.message.as_str()),
            (State::Skip, "timedatectl not installed")
        );
        let c = time_sync_answer(Err(RunError::Failed {
            command: "timedatectl show".into(),
            status: "exit status: 1".into(),
            tail: "Failed to connect to bus".into(),
            log: None,
        }));
        assert_eq!(c.state, State::Fail);
        assert!(
            c.message.contains("Failed to connect to bus"),
            "{}",
            c.message
        );
        let d = tempfile::tempdir().unwrap();
        assert_eq!(time_sync_check(d.path()).state, State::Skip);
    }

    #[test]
    fn data_space_fails_at_the_threshold() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            data_space_check(d.path(), Percent::new(90).unwrap()).state,
            State::Skip
        );
        fs::create_dir(d.path().join("var")).unwrap();
        let used = disk_use(&d.path().join("var")).unwrap();
        let c = data_space_check(d.path(), Percent::new(used.max(1)).unwrap());
        assert_eq!(c.state, State::Fail, "{c:?}");
        assert_eq!(
            c.message,
            format!("/var is {used}% full (fails at {}%)", used.max(1))
        );
        if used < 100 {
            let c = data_space_check(d.path(), Percent::new(used + 1).unwrap());
            assert_eq!(c.state, State::Pass, "{c:?}");
        }
    }

    #[test]
    fn render_aligns_long_names() {
        let text = render(&[
            Check::new("config", State::Pass, "ok"),
            Check::new("data-space", State::Fail, "one\ntwo"),
        ]);
        assert_eq!(
            text,
            "✓ config     ok\n✗ data-space one\n               two\n"
        );
    }

    /// A server on 127.0.0.1 that answers each connection with `response`
    /// (or with nothing, holding the connection, when it is empty).
    fn serve(response: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if response.is_empty() {
                    std::thread::sleep(std::time::Duration::from_secs(3));
                } else {
                    let _ = s.write_all(response.as_bytes());
                }
            }
        });
        port
    }

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    const T: std::time::Duration = std::time::Duration::from_secs(5);

    #[test]
    fn http_checks() {
        let ok = serve("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        let url = format!("http://127.0.0.1:{ok}/health");
        let c = http_check("mesh", &url, T);
        assert_eq!(
            (c.state, c.message.clone()),
            (State::Pass, format!("{url} answered 200 OK"))
        );

        let moved = serve("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let c = http_check("mesh", &format!("http://127.0.0.1:{moved}/"), T);
        assert_eq!(c.state, State::Pass, "{c:?}");
        assert!(c.message.ends_with("answered 302 Found"), "{}", c.message);

        let err = serve(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let url = format!("http://127.0.0.1:{err}/health");
        let c = http_check("mesh", &url, T);
        assert_eq!(
            (c.state, c.message.clone()),
            (
                State::Fail,
                format!("{url} answered 500 Internal Server Error")
            )
        );

        let url = format!("http://127.0.0.1:{}/health", closed_port());
        let c = http_check("mesh", &url, T);
        assert_eq!(c.state, State::Fail);
        assert!(c.message.starts_with(&format!("{url}: ")), "{}", c.message);

        let silent = serve("");
        let url = format!("http://127.0.0.1:{silent}/");
        let c = http_check("mesh", &url, std::time::Duration::from_millis(300));
        assert_eq!(
            (c.state, c.message.clone()),
            (State::Fail, format!("{url}: no answer within 300ms"))
        );
    }

    #[test]
    fn tcp_checks() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c = tcp_check("api", "127.0.0.1", port, T);
        assert_eq!(
            (c.state, c.message.clone()),
            (State::Pass, format!("127.0.0.1:{port} accepts connections"))
        );
        let c = tcp_check("api", "localhost", port, T);
        // localhost may resolve to ::1 first; one of its addresses answers.
        assert_eq!(c.state, State::Pass, "{c:?}");
        let closed = closed_port();
        let c = tcp_check("api", "127.0.0.1", closed, T);
        assert_eq!(c.state, State::Fail);
        assert!(
            c.message
                .starts_with(&format!("cannot connect to 127.0.0.1:{closed}: ")),
            "{}",
            c.message
        );
        let c = tcp_check("api", "::1", closed, T);
        assert!(
            c.message
                .starts_with(&format!("cannot connect to [::1]:{closed}")),
            "{}",
            c.message
        );
    }

    #[test]
    fn disk_checks_name_the_path() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("srv/data")).unwrap();
        let path = Path::new("/srv/data");
        let c = disk_check(d.path(), "data", path, Percent::new(100).unwrap());
        assert!(c.message.starts_with("/srv/data is "), "{}", c.message);
        let c = disk_check(
            d.path(),
            "data",
            Path::new("/nope"),
            Percent::new(90).unwrap(),
        );
        assert_eq!(c.state, State::Fail);
        assert!(c.message.starts_with("/nope: "), "{}", c.message);
        let c = probes::usage_check("data", path, 90, Percent::new(90).unwrap());
        assert_eq!(
            (c.state, c.message.as_str()),
            (State::Fail, "/srv/data is 90% full (fails at 90%)")
        );
        let c = probes::usage_check("data", path, 89, Percent::new(90).unwrap());
        assert_eq!(c.state, State::Pass);
        assert_eq!(probes::use_percent(0, 0), 0);
        assert_eq!(probes::use_percent(1, 999), 1);
        assert_eq!(probes::use_percent(899, 101), 90);
        assert_eq!(probes::use_percent(901, 99), 91);
        assert_eq!(probes::use_percent(1000, 0), 100);
        assert_eq!(probes::use_percent(u64::MAX, u64::MAX), 50);
    }

    #[test]
    fn unit_answers() {
        let c = probes::unit_answer("k3s", "k3s.service", Ok(()));
        assert_eq!(
            (c.state, c.message.as_str()),
            (State::Pass, "k3s.service active")
        );
        let failed = |tail: &str| {
            probes::unit_answer(
                "k3s",
                "k3s.service",
                Err(RunError::Failed {
                    command: "systemctl is-active k3s.service".into(),
                    status: "exit status: 3".into(),
                    tail: tail.into(),
                    log: None,
                }),
            )
        };
        assert_eq!(failed("inactive\n").message, "k3s.service is inactive");
        assert_eq!(failed("\nfailed\n").message, "k3s.service is failed");
        assert_eq!(failed("").message, "k3s.service is not active");
        assert_eq!(failed("activating").state, State::Fail);
    }

    #[test]
    fn configured_checks_run_by_type() {
        let c: maculaos_config::Config = serde_yaml_ng::from_str(&format!(
            "maculaos:
  health:
    checks:
      - {{name: k3s, type: process, process: k3s-server}}
      - {{name: web, type: http, url: 'http://127.0.0.1:{}/', timeout: 2s}}
      - {{name: tmp, type: disk, path: /, threshold: 100%}}
",
            closed_port()
        ))
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let checks = configured_checks(d.path(), &c.maculaos.health.checks);
        let got: Vec<(&str, State)> = checks.iter().map(|c| (c.name.as_str(), c.state)).collect();
        assert_eq!(
            got,
            [
                ("k3s", State::Skip),
                ("web", State::Fail),
                ("tmp", State::Pass)
            ],
            "{checks:#?}"
        );
    }
}
