//! `maculaos health`: every check with its state and a message. Today the
//! built-in checks of the configuration issue (config valid, k3s); the
//! configurable checks and the agent grow from here.

use maculaos_config::load::{Loaded, Paths, Using};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pass,
    Fail,
    /// Not applicable here (k3s not installed): neither pass nor fail.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub state: State,
    pub message: String,
}

impl Check {
    fn new(name: &str, state: State, message: impl Into<String>) -> Check {
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

/// A systemd unit is active.
pub fn unit_check(unit: &str) -> Check {
    let state = maculaos_runner::Cmd::new("systemctl")
        .args(["is-active", unit])
        .quiet()
        .output()
        .unwrap_or_else(|e| e.to_string());
    let state = state.lines().next().unwrap_or("unknown").trim().to_string();
    if state == "active" {
        Check::new(unit, State::Pass, format!("{unit} active"))
    } else {
        Check::new(unit, State::Fail, format!("{unit} is {state}"))
    }
}

/// The checks that decide whether a boot is good (`maculaos health --boot`).
pub fn boot_checks() -> Vec<Check> {
    BOOT_UNITS.iter().map(|u| unit_check(u)).collect()
}

/// Run every check.
pub fn run(paths: &Paths) -> Vec<Check> {
    let loaded = maculaos_config::load(paths);
    vec![config_check(&loaded), k3s_check(&paths.root)]
}

/// Whether all checks pass (skipped ones do not count against).
pub fn healthy(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.state != State::Fail)
}

/// One line per check (continuation lines indented), for the terminal.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let mark = match c.state {
            State::Pass => "✓",
            State::Fail => "✗",
            State::Skip => "-",
        };
        let mut lines = c.message.lines();
        out.push_str(&format!(
            "{mark} {:<8} {}\n",
            c.name,
            lines.next().unwrap_or("")
        ));
        for l in lines {
            out.push_str(&format!("  {:<8}   {l}\n", ""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
}
