//! The watchdog (plan §4.17.1): systemd (PID 1) feeds a watchdog device,
//! and the machine reboots when it is not fed for `maculaos.watchdog.timeout`
//! (a hung kernel or a hung PID 1). `maculaos-agent.service` is in turn
//! watched by systemd (`WatchdogSec=`), so a hung agent is restarted.
//!
//! The device: the configured one (`/dev/watchdog`) when it exists and is
//! not the kernel's software watchdog; else, with `software_fallback`,
//! softdog, loaded here (on the running node, like `modules`) and used as
//! `/dev/watchdog0`.
//!
//! Two halves, like the other steps: the drop-in
//! `/etc/systemd/system.conf.d/90-maculaos-watchdog.conf` (`RuntimeWatchdogSec=`,
//! `WatchdogDevice=`) records the setting; on the running node, the
//! `RuntimeWatchdogUSec` property of the running systemd is set over D-Bus.
//! The property is what makes it work: systemd reads system.conf when it
//! starts, before `maculaos apply` runs, and /etc is rebuilt at every boot,
//! so the drop-in written at the previous boot is gone by then. systemd
//! keeps a value set over D-Bus across `daemon-reload` and `daemon-reexec`.
//!
//! Acting on the running node (modprobe, busctl) needs [`Options::live`]
//! and systemd running the system under the root (`/run/systemd/system`,
//! as sd_booted(3) tells): the devices are looked up under the root, and
//! they describe the machine whose systemd is set only when the root is it.
//!
//! [`Options::live`]: crate::Options::live
//!
//! `WatchdogDevice=` cannot be set over D-Bus (systemd 252): the running
//! systemd keeps its default device, `/dev/watchdog0` (the first watchdog,
//! which `/dev/watchdog` also is). A configured device other than those
//! two is used only after `systemctl daemon-reexec` (which reads the
//! drop-in); the step says so in a note rather than re-executing PID 1
//! at every boot.

use crate::applier::{run, Applier, HEADER, ROOT_OWNER};
use maculaos_config::{Config, Watchdog};
use maculaos_runner::Cmd;
use std::time::Duration;

const AREA: &str = "watchdog";
pub(crate) const DROPIN: &str = "/etc/systemd/system.conf.d/90-maculaos-watchdog.conf";
/// The device systemd uses unless told otherwise: the first watchdog.
pub(crate) const DEFAULT_DEVICE: &str = "/dev/watchdog0";
/// What `/sys/class/watchdog/watchdogN/identity` says for softdog.
const SOFTDOG_IDENTITY: &str = "Software Watchdog";

const BUS: [&str; 4] = [
    "org.freedesktop.systemd1",
    "/org/freedesktop/systemd1",
    "org.freedesktop.systemd1.Manager",
    "RuntimeWatchdogUSec",
];

/// Whether to act on the running systemd: live, and systemd runs the
/// system under the root (sd_booted(3): `/run/systemd/system` is a
/// directory). Tests that apply live to a directory have no such directory,
/// so they never reach the machine's own systemd.
pub(crate) fn systemd_runs(a: &Applier) -> bool {
    a.live() && a.path("/run/systemd/system").is_dir()
}

/// Which watchdog to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Choice {
    /// The configured device, which exists and is not softdog.
    Hardware(String),
    /// softdog, as [`DEFAULT_DEVICE`]; `load`: modprobe it first.
    Software { load: bool },
    /// No watchdog device, and no software fallback.
    Missing,
}

impl Choice {
    pub(crate) fn device(&self) -> Option<&str> {
        match self {
            Choice::Hardware(d) => Some(d),
            Choice::Software { .. } => Some(DEFAULT_DEVICE),
            Choice::Missing => None,
        }
    }
}

/// Whether `device` names the first watchdog: `/dev/watchdog` is the
/// kernel's legacy name of `/dev/watchdog0`.
fn first_device(device: &str) -> bool {
    device == "/dev/watchdog" || device == DEFAULT_DEVICE
}

/// The choice, from what is there: whether the configured device exists,
/// whether the first watchdog is softdog (then the configured
/// `/dev/watchdog` is not hardware: it is ours from an earlier run, and
/// choosing it now would make a second run differ from the first), and
/// whether softdog is loaded.
pub(crate) fn choose(
    configured: &str,
    exists: bool,
    first_is_softdog: bool,
    softdog_loaded: bool,
    fallback: bool,
) -> Choice {
    let hardware = exists && !(first_device(configured) && first_is_softdog);
    if hardware {
        Choice::Hardware(configured.to_string())
    } else if fallback {
        Choice::Software {
            load: !softdog_loaded,
        }
    } else {
        Choice::Missing
    }
}

/// The timeout in whole seconds (watchdog hardware counts in seconds),
/// rounded up, at least 1.
pub(crate) fn timeout_secs(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

pub(crate) fn dropin_text(device: &str, timeout: Duration) -> String {
    // RebootWatchdogSec= keeps systemd's default (10min): a reboot that
    // hangs is still ended by the watchdog.
    format!(
        "{HEADER}[Manager]\nRuntimeWatchdogSec={}s\nWatchdogDevice={device}\n",
        timeout_secs(timeout)
    )
}

/// `busctl get-property` prints `t 60000000`.
pub(crate) fn parse_usec(answer: &str) -> Result<u64, String> {
    let mut words = answer.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("t"), Some(n), None) => n
            .parse()
            .map_err(|_| format!("unexpected answer from busctl: `{}`", answer.trim())),
        _ => Err(format!(
            "unexpected answer from busctl: `{}`",
            answer.trim()
        )),
    }
}

/// `60s`, `1min 30s`-like, for the report.
fn human(usec: u64) -> String {
    if usec == 0 {
        return "off".into();
    }
    let s = usec.div_ceil(1_000_000);
    if s.is_multiple_of(60) {
        format!("{}min", s / 60)
    } else {
        format!("{s}s")
    }
}

/// What to tell about the choice, when it is not the configured device.
pub(crate) fn choice_note(choice: &Choice, w: &Watchdog) -> Option<String> {
    match choice {
        Choice::Software { .. } => Some(format!(
            "no hardware watchdog at {}: using the kernel's software watchdog (softdog) as {DEFAULT_DEVICE}",
            w.device
        )),
        Choice::Missing if w.enabled => Some(format!(
            "no watchdog: {} not found and software_fallback is off",
            w.device
        )),
        _ => None,
    }
}

fn inspect(a: &Applier, w: &Watchdog) -> Choice {
    let configured = w.device.as_str();
    let softdog_loaded = a.path("/sys/module/softdog").exists();
    // Without the sysfs attribute (CONFIG_WATCHDOG_SYSFS), a loaded softdog
    // is taken to be the first watchdog: it is loaded (by an earlier run)
    // only when there was no other.
    let first_is_softdog =
        match std::fs::read_to_string(a.path("/sys/class/watchdog/watchdog0/identity")) {
            Ok(identity) => identity.trim() == SOFTDOG_IDENTITY,
            Err(_) => softdog_loaded,
        };
    choose(
        configured,
        a.path(configured).exists(),
        first_is_softdog,
        softdog_loaded,
        w.software_fallback,
    )
}

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    let w = &config.maculaos.watchdog;
    let choice = if w.enabled {
        inspect(a, w)
    } else {
        Choice::Missing
    };
    // Under another root, the devices looked at are not the node's: the
    // choice is a guess not worth a note.
    let live = systemd_runs(a);
    if let (Some(note), true) = (choice_note(&choice, w), live) {
        a.note(AREA, note);
    }
    if let (Choice::Software { load: true }, true) = (&choice, live) {
        let loaded = a.act(AREA, ("load", "loaded"), "softdog", || {
            run(Cmd::new("modprobe")
                .arg("softdog")
                .hint("the image lacks modprobe (Debian package kmod)"))
            .map_err(|e| format!("softdog: modprobe failed: {e}"))
        });
        if !loaded {
            // Without the device, systemd would fail to open it.
            return Ok(());
        }
    }

    let device = choice.device();
    let written = match device {
        Some(dev) => {
            let text = dropin_text(dev, w.timeout.get());
            a.put_file(AREA, DROPIN, text.as_bytes(), 0o644, ROOT_OWNER)
        }
        None => a.remove_file(AREA, DROPIN),
    };
    // The file failing should not keep the running systemd from being set.
    if let Err(e) = written {
        a.error(AREA, e);
    }
    if !live {
        return Ok(());
    }
    if let Some(dev) = device.filter(|d| !first_device(d)) {
        a.note(
            AREA,
            format!(
                "the running systemd keeps its watchdog device ({DEFAULT_DEVICE}): \
                 WatchdogDevice={dev} is used only after `systemctl daemon-reexec`"
            ),
        );
    }
    let usec = match device {
        Some(_) => timeout_secs(w.timeout.get()).saturating_mul(1_000_000),
        None => 0,
    };
    set_runtime(a, usec);
    Ok(())
}

/// Give the running systemd's `RuntimeWatchdogUSec` the value `usec` (0:
/// off, which also disarms the device), unless it already has it.
fn set_runtime(a: &mut Applier, usec: u64) {
    // At boot apply runs before D-Bus: busctl would fail, or, were the bus
    // socket there, start dbus.service, which is ordered after us and would
    // wait for us. The health agent arms it then (it runs this step again
    // once the system is up, `apply_watchdog`).
    if !a.unit_active("dbus.service") {
        a.note(
            AREA,
            "D-Bus is not up yet: the health agent arms the running systemd's watchdog once it is",
        );
        return;
    }
    let current = Cmd::new("busctl")
        .arg("get-property")
        .args(BUS)
        .quiet()
        .output()
        .map_err(|e| crate::applier::why(&e))
        .and_then(|answer| parse_usec(&answer));
    let current = match current {
        Ok(c) => c,
        Err(e) => {
            a.error(
                AREA,
                format!("cannot read the running systemd's RuntimeWatchdogUSec: {e}"),
            );
            return;
        }
    };
    if current == usec {
        return;
    }
    let (verbs, object) = if usec == 0 {
        (
            ("stop", "stopped"),
            "the running systemd's watchdog".to_string(),
        )
    } else {
        (
            ("set", "set"),
            format!("the running systemd's watchdog to {}", human(usec)),
        )
    };
    a.act(AREA, verbs, &object, || {
        run(Cmd::new("busctl")
            .arg("set-property")
            .args(BUS)
            .arg("t")
            .arg(usec.to_string()))
        .map_err(|e| format!("setting RuntimeWatchdogUSec to {usec} failed: {e}"))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{apply_twice, opts, yaml};
    use std::fs;
    use std::path::Path;

    const S60: Duration = Duration::from_secs(60);

    fn dropin(root: &Path) -> Option<String> {
        fs::read_to_string(root.join(DROPIN.trim_start_matches('/'))).ok()
    }

    #[test]
    fn choosing_the_device() {
        use Choice::*;
        let hw = |d: &str| Hardware(d.to_string());
        // configured, exists, first is softdog, softdog loaded, fallback
        assert_eq!(
            choose("/dev/watchdog", true, false, false, true),
            hw("/dev/watchdog")
        );
        assert_eq!(
            choose("/dev/watchdog1", true, false, false, false),
            hw("/dev/watchdog1")
        );
        assert_eq!(
            choose("/dev/watchdog", false, false, false, true),
            Software { load: true }
        );
        assert_eq!(choose("/dev/watchdog", false, false, false, false), Missing);
        // A second run: softdog (loaded by the first) provides /dev/watchdog.
        assert_eq!(
            choose("/dev/watchdog", true, true, true, true),
            Software { load: false }
        );
        assert_eq!(choose("/dev/watchdog0", true, true, true, false), Missing);
        // A second hardware watchdog is not softdog.
        assert_eq!(
            choose("/dev/watchdog1", true, true, true, true),
            hw("/dev/watchdog1")
        );
        assert_eq!(Software { load: true }.device(), Some("/dev/watchdog0"));
        assert_eq!(Missing.device(), None);
    }

    #[test]
    fn dropin_text_and_timeouts() {
        assert_eq!(
            dropin_text("/dev/watchdog", S60),
            format!("{HEADER}[Manager]\nRuntimeWatchdogSec=60s\nWatchdogDevice=/dev/watchdog\n")
        );
        assert_eq!(timeout_secs(Duration::from_millis(1500)), 2);
        assert_eq!(timeout_secs(Duration::from_millis(1)), 1);
        assert_eq!(timeout_secs(Duration::from_secs(120)), 120);
        assert_eq!(parse_usec("t 60000000\n"), Ok(60_000_000));
        assert_eq!(parse_usec("t 0"), Ok(0));
        assert!(parse_usec("s \"x\"").is_err());
        assert!(parse_usec("t 1 2").is_err());
        assert!(parse_usec("").is_err());
        assert_eq!(human(60_000_000), "1min");
        assert_eq!(human(90_000_000), "90s");
        assert_eq!(human(0), "off");
    }

    #[test]
    fn hardware_device_present() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("dev")).unwrap();
        fs::write(d.path().join("dev/watchdog"), "").unwrap();
        let r = apply_twice(
            &yaml("maculaos: {watchdog: {timeout: 2m}}"),
            &opts(d.path()),
        );
        assert_eq!(
            dropin(d.path()).unwrap(),
            format!("{HEADER}[Manager]\nRuntimeWatchdogSec=120s\nWatchdogDevice=/dev/watchdog\n")
        );
        assert!(r.changes.contains(&format!("watchdog: wrote {DROPIN}")));
        assert!(!r.notes.iter().any(|n| n.starts_with("watchdog:")), "{r:?}");
    }

    #[test]
    fn software_fallback_without_hardware() {
        let d = tempfile::tempdir().unwrap();
        // The defaults: enabled, /dev/watchdog, 60 s, software_fallback.
        let r = apply_twice(&yaml(""), &opts(d.path()));
        assert_eq!(
            dropin(d.path()).unwrap(),
            format!("{HEADER}[Manager]\nRuntimeWatchdogSec=60s\nWatchdogDevice=/dev/watchdog0\n")
        );
        // Not live: softdog is not loaded, and no note.
        assert!(!r.changes.iter().any(|c| c.contains("softdog")), "{r:?}");
        assert!(!r.notes.iter().any(|n| n.starts_with("watchdog:")), "{r:?}");

        // Once softdog is loaded, its /dev/watchdog is not taken for hardware.
        fs::create_dir_all(d.path().join("dev")).unwrap();
        fs::write(d.path().join("dev/watchdog"), "").unwrap();
        fs::create_dir_all(d.path().join("sys/module/softdog")).unwrap();
        let id = d.path().join("sys/class/watchdog/watchdog0");
        fs::create_dir_all(&id).unwrap();
        fs::write(id.join("identity"), "Software Watchdog\n").unwrap();
        let r = apply_twice(&yaml(""), &opts(d.path()));
        assert_eq!(r.changes, Vec::<String>::new());
        assert!(dropin(d.path())
            .unwrap()
            .contains("WatchdogDevice=/dev/watchdog0\n"));
        // Nor without the sysfs attribute, softdog being loaded.
        fs::remove_file(id.join("identity")).unwrap();
        let r = apply_twice(&yaml(""), &opts(d.path()));
        assert_eq!(r.changes, Vec::<String>::new());

        // Without the fallback: no watchdog, no drop-in.
        let r = apply_twice(
            &yaml("maculaos: {watchdog: {software_fallback: false}}"),
            &opts(d.path()),
        );
        assert!(dropin(d.path()).is_none());
        assert!(r.changes.contains(&format!("watchdog: removed {DROPIN}")));

        // A hardware watchdog came first: it is the one.
        fs::write(id.join("identity"), "iTCO_wdt\n").unwrap();
        apply_twice(&yaml(""), &opts(d.path()));
        assert!(dropin(d.path())
            .unwrap()
            .contains("WatchdogDevice=/dev/watchdog\n"));
    }

    #[test]
    fn notes_on_the_choice() {
        let c = yaml("maculaos: {watchdog: {software_fallback: false}}");
        let w = &c.maculaos.watchdog;
        assert_eq!(
            choice_note(&Choice::Software { load: true }, w).as_deref(),
            Some("no hardware watchdog at /dev/watchdog: using the kernel's software watchdog (softdog) as /dev/watchdog0")
        );
        assert_eq!(
            choice_note(&Choice::Missing, w).as_deref(),
            Some("no watchdog: /dev/watchdog not found and software_fallback is off")
        );
        assert_eq!(
            choice_note(&Choice::Hardware("/dev/watchdog".into()), w),
            None
        );
        let off = yaml("maculaos: {watchdog: {enabled: false}}");
        assert_eq!(choice_note(&Choice::Missing, &off.maculaos.watchdog), None);
    }

    #[test]
    fn disabled_removes_the_dropin() {
        let d = tempfile::tempdir().unwrap();
        apply_twice(&yaml(""), &opts(d.path()));
        assert!(dropin(d.path()).is_some());
        let r = apply_twice(
            &yaml("maculaos: {watchdog: {enabled: false}}"),
            &opts(d.path()),
        );
        assert!(dropin(d.path()).is_none());
        assert!(r.changes.contains(&format!("watchdog: removed {DROPIN}")));
        assert!(!r.notes.iter().any(|n| n.starts_with("watchdog:")), "{r:?}");
    }

    #[test]
    fn dry_run_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut o = opts(d.path());
        o.dry_run = true;
        let r = crate::apply(&yaml(""), &o);
        assert!(r
            .changes
            .contains(&format!("would write {DROPIN} (watchdog)")));
        assert!(dropin(d.path()).is_none());
    }
}
