//! `services:` (guide "Service Deployment"): one podman container per
//! entry, run by its unit `maculaos-svc-NAME.service` (see
//! `maculaos_services` for the unit). This step writes each unit and its
//! root-only environment file, enables it, makes the volumes' directories,
//! starts what does not run and restarts what changed; a unit whose
//! service left the configuration is stopped and removed (its image and
//! its volumes' data stay). A service the operator stopped with `maculaos
//! stop` stays stopped until `maculaos start`.
//!
//! /etc is rebuilt at every boot: the units are written again by the boot's
//! apply, and started then (`--no-block`: apply runs before the targets
//! that podman's units come after).

use crate::applier::{io_msg, systemctl, Applier, ROOT_OWNER};
use crate::watchdog::systemd_runs;
use maculaos_config::Config;
use maculaos_runner::Cmd;
use maculaos_services::{
    env_file, env_text, problems, service_of_unit, stopped_marker, unit_name, unit_text, UNIT_DIR,
};
use std::collections::BTreeSet;

const AREA: &str = "services";

/// systemd's ActiveState of `unit` (`active`, `activating`, `failed`,
/// `inactive`…); empty when systemctl cannot tell.
fn active_state(unit: &str) -> String {
    Cmd::new("systemctl")
        .args(["show", "-p", "ActiveState", "--value", unit])
        .quiet()
        .output()
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    let mut files_changed = false;
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let mut good: Vec<String> = Vec::new();
    for (name, svc) in &config.services {
        let wrong = problems(name, svc);
        if !wrong.is_empty() {
            for p in wrong {
                a.error(AREA, p);
            }
            continue;
        }
        for v in &svc.volumes {
            let dir = a.path(v.host_dir());
            // A file or a directory someone put there is left as it is.
            if !dir.exists() {
                a.act(AREA, ("make", "made"), v.host_dir(), || {
                    std::fs::create_dir_all(&dir).map_err(|e| io_msg("making", &dir, &e))
                });
            }
        }
        let unit = unit_name(name);
        let mut c = if svc.env.is_empty() {
            a.remove_file(AREA, &env_file(name.as_str()))?
        } else {
            a.put_file(
                AREA,
                &env_file(name.as_str()),
                env_text(svc).as_bytes(),
                0o600,
                ROOT_OWNER,
            )?
        };
        let unit_path = format!("{UNIT_DIR}/{unit}");
        c |= a.put_file(
            AREA,
            &unit_path,
            unit_text(name, svc).as_bytes(),
            0o644,
            ROOT_OWNER,
        )?;
        files_changed |= c;
        files_changed |= a.put_symlink(
            AREA,
            &format!("{UNIT_DIR}/multi-user.target.wants/{unit}"),
            &unit_path,
        )?;
        if c {
            changed.insert(unit.clone());
        }
        good.push(unit);
    }
    // Units of services that left the configuration.
    let wanted: BTreeSet<&str> = config.services.keys().map(|n| n.as_str()).collect();
    let mut gone: Vec<String> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(a.path(UNIT_DIR)) {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = service_of_unit(&file) {
                if !wanted.contains(name) {
                    gone.push(file);
                }
            }
        }
    }
    gone.sort();
    let live = systemd_runs(a);
    for unit in &gone {
        // Whatever its state (running, pulling, waiting to restart after a
        // crash): stopped before its file goes, or it would go on without one.
        if live && !matches!(active_state(unit).as_str(), "inactive" | "") {
            a.act(AREA, ("stop", "stopped"), unit, || {
                systemctl(&["stop", unit])
            });
            if !a.dry_run() {
                let _ = systemctl(&["reset-failed", unit]);
            }
        }
        let name = service_of_unit(unit).unwrap_or_default().to_string();
        a.remove_file(AREA, &stopped_marker(&name))?;
        a.remove_file(AREA, &format!("{UNIT_DIR}/multi-user.target.wants/{unit}"))?;
        a.remove_file(AREA, &format!("{UNIT_DIR}/{unit}"))?;
        a.remove_file(AREA, &env_file(&name))?;
        files_changed = true;
    }
    if !live {
        return Ok(());
    }
    if files_changed {
        a.act(AREA, ("reload", "reloaded"), "systemd", || {
            systemctl(&["daemon-reload"])
        });
    }
    for unit in &good {
        let name = service_of_unit(unit).unwrap_or_default();
        if a.path(&stopped_marker(name)).exists() {
            a.note(
                AREA,
                format!(
                    "{name} stays stopped (`maculaos stop`); `maculaos start {name}` starts it"
                ),
            );
            continue;
        }
        let active = a.unit_active(unit);
        let verbs = match (active, changed.contains(unit)) {
            (false, _) => ("start", "started"),
            (true, true) => ("restart", "restarted"),
            (true, false) => continue,
        };
        a.systemctl_unit(AREA, verbs, &[verbs.0], unit);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::tests::{apply_twice, opts, yaml};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_service_gets_its_unit_env_file_and_volume_and_loses_them_when_removed() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        let at = |p: &str| d.path().join(p.trim_start_matches('/'));
        let r = apply_twice(
            &yaml(
                "services:\n  web:\n    image: localhost/web:1\n    env: {TOKEN: s3cret}\n    \
                 volumes: [/var/lib/maculaos/web:/www]\n",
            ),
            &o,
        );
        assert!(
            r.changes.iter().any(|c| c.starts_with("services:")),
            "{r:?}"
        );
        let unit = fs::read_to_string(at("/etc/systemd/system/maculaos-svc-web.service")).unwrap();
        assert!(unit.contains("localhost/web:1"));
        assert!(!unit.contains("s3cret"));
        let env = at("/etc/maculaos/services/web.env");
        assert_eq!(fs::read_to_string(&env).unwrap(), "TOKEN=s3cret\n");
        assert_eq!(
            fs::metadata(&env).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            at("/etc/systemd/system/multi-user.target.wants/maculaos-svc-web.service")
                .symlink_metadata()
                .is_ok()
        );
        assert!(at("/var/lib/maculaos/web").is_dir());

        // Gone from the configuration: the unit, its link and env file go;
        // the volume's data stays.
        fs::write(at("/var/lib/maculaos/web/index.html"), "kept").unwrap();
        apply_twice(&yaml(""), &o);
        assert!(!at("/etc/systemd/system/maculaos-svc-web.service").exists());
        assert!(!env.exists());
        assert!(
            at("/etc/systemd/system/multi-user.target.wants/maculaos-svc-web.service")
                .symlink_metadata()
                .is_err()
        );
        assert!(at("/var/lib/maculaos/web/index.html").exists());
    }

    #[test]
    fn a_service_podman_cannot_take_is_an_error_and_gets_no_unit() {
        let d = tempfile::tempdir().unwrap();
        let r = crate::apply(
            &yaml("services:\n  bad:\n    image: busybox\n    cpus: 0\n"),
            &opts(d.path()),
        );
        assert!(
            r.errors.iter().any(|e| e.contains("services.bad.cpus")),
            "{r:?}"
        );
        assert!(!d
            .path()
            .join("etc/systemd/system/maculaos-svc-bad.service")
            .exists());
    }
}
