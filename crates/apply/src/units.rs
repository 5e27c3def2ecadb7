//! Units of the image that the configuration switches on and off (the
//! backup timer, the embedded services): a drop-in holds the settings, and
//! on the running node the unit is enabled and started, or disabled and
//! stopped. `systemctl enable` links the unit into /etc, which is rebuilt
//! at every boot: the step that calls this links it again at every boot.
//! systemctl is run only live with systemd running the system under the
//! root (see `crate::watchdog`), with `--no-block`: at boot this runs
//! before sysinit.target, which the unit's start waits for.

use crate::applier::{systemctl, Applier, ROOT_OWNER};
use crate::watchdog::systemd_runs;

/// What to do with a unit.
pub(crate) struct Switch<'a> {
    pub area: &'a str,
    pub unit: &'a str,
    pub dropin: &'a str,
    /// The drop-in's text when the unit is wanted; `None`: off.
    pub on: Option<&'a str>,
    /// Restart the running unit when its drop-in changed (a service reads
    /// its settings when it starts; a timer's are read by the reload).
    pub restart_on_change: bool,
    /// Files the unit reads changed (written by the caller): restart it
    /// too, when `restart_on_change`.
    pub files_changed: bool,
}

pub(crate) fn switch(a: &mut Applier, s: &Switch) -> Result<(), String> {
    let Some(text) = s.on else {
        let removed = a.remove_file(s.area, s.dropin)?;
        // At boot /etc is the image's, where every unit switched here is
        // disabled (image/hooks/finalize.sh), and nothing runs yet: nothing
        // to switch off, and no `systemctl` to ask (0.2 s of CPU each).
        if !systemd_runs(a) || a.opts.boot {
            return Ok(());
        }
        let on = a.unit_enabled(s.unit) || a.unit_active(s.unit);
        if on {
            // Reloads systemd too.
            systemctl_unit(
                a,
                s,
                ("disable and stop", "disabled and stopped"),
                &["disable", "--now"],
            );
        } else if removed {
            daemon_reload(a, s.area);
        }
        return Ok(());
    };
    let dropin_changed = a.put_file(s.area, s.dropin, text.as_bytes(), 0o644, ROOT_OWNER)?;
    let changed = dropin_changed || s.files_changed;
    if !systemd_runs(a) {
        return Ok(());
    }
    let active = a.unit_active(s.unit);
    if !a.unit_enabled(s.unit) {
        // `enable` also reloads systemd, which reads the new drop-in.
        systemctl_unit(
            a,
            s,
            ("enable and start", "enabled and started"),
            &["enable", "--now"],
        );
        if active && changed && s.restart_on_change {
            systemctl_unit(a, s, ("restart", "restarted"), &["restart"]);
        }
        return Ok(());
    }
    if dropin_changed {
        daemon_reload(a, s.area);
    }
    if !active {
        systemctl_unit(a, s, ("start", "started"), &["start"]);
    } else if changed && s.restart_on_change {
        systemctl_unit(a, s, ("restart", "restarted"), &["restart"]);
    }
    Ok(())
}

/// `systemctl ARGS --no-block UNIT`.
fn systemctl_unit(a: &mut Applier, s: &Switch, verbs: (&str, &str), args: &[&str]) {
    a.systemctl_unit(s.area, verbs, args, s.unit);
}

pub(crate) fn daemon_reload(a: &mut Applier, area: &str) {
    a.act(
        area,
        ("reload", "reloaded"),
        "systemd's units (a drop-in changed)",
        || {
            systemctl(&["daemon-reload"])
                .map_err(|e| format!("systemctl daemon-reload failed: {e}"))
        },
    );
}
