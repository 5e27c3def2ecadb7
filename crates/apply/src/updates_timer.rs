//! When the update check runs (`maculaos.updates.schedule`, the guide's
//! `schedule: "04:00"`): `maculaos-upgrade-check.timer` (in the image,
//! enabled there: at boot and daily) gets a drop-in that replaces its
//! boot-relative times with the schedule, so that an automatic update,
//! and its reboot, happen in the operator's window. No schedule: the
//! drop-in goes, and the image's times apply.

use crate::applier::{Applier, HEADER, ROOT_OWNER};
use maculaos_config::Config;

const AREA: &str = "updates";
pub(crate) const DROPIN: &str =
    "/etc/systemd/system/maculaos-upgrade-check.timer.d/50-maculaos.conf";
pub(crate) const TIMER: &str = "maculaos-upgrade-check.timer";

/// The drop-in for `on_calendar` (an `OnCalendar=` expression).
pub(crate) fn dropin_text(on_calendar: &str) -> String {
    // Empty assignments drop the unit's own times (they add up otherwise).
    // The image's random delay stays: a fleet does not reboot at once.
    format!("{HEADER}[Timer]\nOnBootSec=\nOnUnitActiveSec=\nOnCalendar={on_calendar}\n")
}

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    let u = &config.maculaos.updates;
    if let Some(to) = &u.notify {
        a.note(
            AREA,
            format!(
                "updates.notify: nothing is sent to {to} yet (the node has no mail \
                 transport); the updates' events are in `maculaos logs maculaos-upgrade-check`"
            ),
        );
    }
    let changed = match &u.schedule {
        Some(s) => {
            let text = dropin_text(s.on_calendar());
            a.put_file(AREA, DROPIN, text.as_bytes(), 0o644, ROOT_OWNER)?
        }
        None => a.remove_file(AREA, DROPIN)?,
    };
    if changed && crate::watchdog::systemd_runs(a) {
        crate::units::daemon_reload(a, AREA);
        // A timer computes its next run when it starts.
        a.restart_if_active(AREA, TIMER);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{apply_twice, opts, yaml};
    use std::fs;

    #[test]
    fn the_schedule_replaces_the_boot_times_and_goes() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        let at = d.path().join(DROPIN.trim_start_matches('/'));
        let r = apply_twice(&yaml("maculaos: {updates: {schedule: '04:00'}}"), &o);
        assert_eq!(
            fs::read_to_string(&at).unwrap(),
            format!("{HEADER}[Timer]\nOnBootSec=\nOnUnitActiveSec=\nOnCalendar=04:00\n")
        );
        assert!(
            r.changes.contains(&format!("updates: wrote {DROPIN}")),
            "{r:?}"
        );
        let r = apply_twice(
            &yaml("maculaos: {updates: {notify: admin@example.com}}"),
            &o,
        );
        assert!(!at.exists());
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("nothing is sent to admin@example.com")),
            "{r:?}"
        );
    }
}
