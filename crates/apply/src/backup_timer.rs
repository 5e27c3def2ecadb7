//! Scheduled backups (plan §4.13.2): `maculaos-backup.timer` (in the image,
//! not enabled there) runs `maculaos backup create` on
//! `maculaos.backup.schedule`.
//!
//! With `maculaos.backup.enabled`, the schedule goes into a drop-in of the
//! timer, and on the running node the timer is enabled and started (see
//! `crate::units`). Disabled: the drop-in goes, and the timer is disabled
//! and stopped if it was on.

use crate::applier::{Applier, HEADER};
use maculaos_config::Config;

const AREA: &str = "backup";
pub(crate) const DROPIN: &str = "/etc/systemd/system/maculaos-backup.timer.d/schedule.conf";
pub(crate) const TIMER: &str = "maculaos-backup.timer";

/// The drop-in for `on_calendar` (already an `OnCalendar=` expression:
/// the configuration turns cron lines into one).
pub(crate) fn dropin_text(on_calendar: &str) -> String {
    // An empty OnCalendar= first drops the unit's own (`daily`): timers add
    // up their OnCalendar= lines.
    format!("{HEADER}[Timer]\nOnCalendar=\nOnCalendar={on_calendar}\n")
}

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    let b = &config.maculaos.backup;
    let text = b.enabled.then(|| dropin_text(b.schedule.on_calendar()));
    crate::units::switch(
        a,
        &crate::units::Switch {
            area: AREA,
            unit: TIMER,
            dropin: DROPIN,
            on: text.as_deref(),
            restart_on_change: false,
            files_changed: false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{apply_twice, opts, yaml};
    use std::fs;

    fn dropin(root: &std::path::Path) -> Option<String> {
        fs::read_to_string(root.join(DROPIN.trim_start_matches('/'))).ok()
    }

    #[test]
    fn dropin_for_the_schedule() {
        assert_eq!(
            dropin_text("daily"),
            format!("{HEADER}[Timer]\nOnCalendar=\nOnCalendar=daily\n")
        );
    }

    #[test]
    fn enabled_writes_the_schedule_disabled_removes_it() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        // Off by default: nothing.
        let r = apply_twice(&yaml(""), &o);
        assert!(dropin(d.path()).is_none());
        assert!(!r.changes.iter().any(|c| c.starts_with("backup:")), "{r:?}");

        let r = apply_twice(
            &yaml("maculaos: {backup: {enabled: true, schedule: '30 2 * * *'}}"),
            &o,
        );
        assert_eq!(
            dropin(d.path()).unwrap(),
            format!("{HEADER}[Timer]\nOnCalendar=\nOnCalendar=*-*-* 02:30:00\n")
        );
        // Not live: the timer is left alone.
        let backup: Vec<&String> = r
            .changes
            .iter()
            .filter(|c| c.starts_with("backup:"))
            .collect();
        assert_eq!(backup, [&format!("backup: wrote {DROPIN}")]);

        apply_twice(&yaml("maculaos: {backup: {enabled: true}}"), &o);
        assert!(dropin(d.path())
            .unwrap()
            .ends_with("\nOnCalendar=\nOnCalendar=daily\n"));

        let r = apply_twice(&yaml("maculaos: {backup: {enabled: false}}"), &o);
        assert!(dropin(d.path()).is_none());
        assert_eq!(r.changes, vec![format!("backup: removed {DROPIN}")]);
    }

    #[test]
    fn dry_run_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut o = opts(d.path());
        o.dry_run = true;
        let r = crate::apply(
            &yaml("maculaos: {backup: {enabled: true, schedule: weekly}}"),
            &o,
        );
        assert!(r
            .changes
            .contains(&format!("would write {DROPIN} (backup)")));
        assert!(dropin(d.path()).is_none());
    }
}
