//! The embedded services (`maculaos_embedded`): each enabled one gets its
//! files and drop-in and is enabled and started, restarted when its
//! settings changed; each other one is disabled and stopped, its drop-in
//! and files removed. Their firewall ports follow in the `firewall` step.

use crate::applier::{Applier, HEADER};
use maculaos_config::values::Owner;
use maculaos_config::Config;
use maculaos_embedded::{Content, Embedded};

const AREA: &str = "embedded";

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    for e in maculaos_embedded::all(config) {
        let dropin = maculaos_embedded::dropin_path(e.unit);
        let text = e.enabled.then(|| format!("{HEADER}{}", e.dropin));
        let files_changed = if e.enabled {
            put_files(a, &e)
        } else {
            Ok(false)
        };
        let switched = files_changed.and_then(|files_changed| {
            crate::units::switch(
                a,
                &crate::units::Switch {
                    area: AREA,
                    unit: e.unit,
                    dropin: &dropin,
                    on: text.as_deref(),
                    restart_on_change: true,
                    files_changed,
                },
            )
        });
        // Off: its files go after the unit stopped.
        let switched = switched.and_then(|()| {
            if !e.enabled {
                for f in &e.files {
                    a.remove_file(AREA, f.path)?;
                }
            }
            Ok(())
        });
        // One service's failure does not stop the others.
        if let Err(why) = switched {
            a.error(AREA, format!("{} ({}): {why}", e.name, e.key));
        }
    }
    Ok(())
}

/// Writes `e`'s files; whether any changed.
fn put_files(a: &mut Applier, e: &Embedded) -> Result<bool, String> {
    let mut changed = false;
    for f in &e.files {
        let owner: Owner = f.owner.parse()?;
        let ids = crate::users::resolve_owner(&a.path("/"), &owner)?;
        let text = match &f.content {
            Content::Text(t) => format!("{HEADER}{t}"),
            Content::MqttPasswords(users) => {
                let existing = std::fs::read_to_string(a.path(f.path)).unwrap_or_default();
                maculaos_embedded::mqtt::passwords(
                    users,
                    &existing,
                    maculaos_embedded::mqtt::random_salt,
                )
            }
        };
        changed |= a.put_file(AREA, f.path, text.as_bytes(), f.mode, Some(ids))?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{apply_twice, opts, yaml};
    use std::fs;

    const DROPIN: &str = "/etc/systemd/system/prometheus-node-exporter.service.d/50-maculaos.conf";

    #[test]
    fn metrics_on_then_off() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        let at = d.path().join(DROPIN.trim_start_matches('/'));
        let r = apply_twice(&yaml(""), &o);
        assert!(!at.exists());
        assert!(
            !r.changes.iter().any(|c| c.starts_with("embedded:")),
            "{r:?}"
        );

        let r = apply_twice(
            &yaml("maculaos: {monitoring: {prometheus: {enabled: true, port: 9200}}}"),
            &o,
        );
        let text = fs::read_to_string(&at).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(text.contains("--web.listen-address=:9200 "), "{text}");
        // The firewall opens its port in the same run.
        assert_eq!(
            r.changes,
            vec![
                format!("embedded: wrote {DROPIN}"),
                "firewall: wrote /etc/maculaos/firewall.nft".to_string()
            ]
        );
        let rules = fs::read_to_string(d.path().join("etc/maculaos/firewall.nft")).unwrap();
        assert!(rules.contains("tcp dport 9200 accept"), "{rules}");

        let r = apply_twice(
            &yaml("maculaos: {monitoring: {prometheus: {enabled: false}}}"),
            &o,
        );
        assert!(!at.exists());
        assert_eq!(r.changes[0], format!("embedded: removed {DROPIN}"));
        let rules = fs::read_to_string(d.path().join("etc/maculaos/firewall.nft")).unwrap();
        assert!(!rules.contains("9200"), "{rules}");
    }

    #[test]
    fn mqtt_and_git_files_on_then_off() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/group"), "root:x:0:\nmosquitto:x:107:\n").unwrap();
        let on = yaml(
            "maculaos:\n  edge:\n    mqtt:\n      enabled: true\n      users: [{name: sensor, password: pw}]\n  gitops:\n    enabled: true\n    authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb2Q3M5dG7d8m1oQ6pP0c3W0uW2mGq0mY8m6r8b9Vq3 b']\n",
        );
        // The password file keeps its hash while the password is the same:
        // the second run changes nothing.
        let r = apply_twice(&on, &o);
        let read = |p: &str| fs::read_to_string(d.path().join(p.trim_start_matches('/'))).unwrap();
        let passwd = read("/etc/mosquitto/maculaos.passwd");
        assert!(passwd.starts_with("sensor:$7$101$"), "{passwd}");
        assert!(maculaos_embedded::mqtt::verify(
            passwd.trim().split_once(':').unwrap().1,
            "pw"
        ));
        let conf = read("/etc/mosquitto/maculaos.conf");
        assert!(conf.starts_with(HEADER), "{conf}");
        for line in [
            "allow_anonymous false\n",
            "password_file /etc/mosquitto/maculaos.passwd\n",
            "listener 1883\nprotocol mqtt\n",
            "listener 9001\nprotocol websockets\n",
        ] {
            assert!(conf.contains(line), "{line} in {conf}");
        }
        let sshd = read("/etc/maculaos/git/sshd_config");
        assert!(
            sshd.contains("Port 23231\n") && sshd.contains("AllowUsers git\n"),
            "{sshd}"
        );
        assert!(
            sshd.contains("ForceCommand /usr/bin/maculaos git-serve /var/lib/git\n"),
            "{sshd}"
        );
        assert!(read("/etc/maculaos/git/authorized_keys").ends_with(" b\n"));
        let rules = read("/etc/maculaos/firewall.nft");
        for port in ["1883", "9001", "23231"] {
            assert!(
                rules.contains(&format!("tcp dport {port} accept")),
                "{rules}"
            );
        }
        assert!(
            r.changes.contains(
                &"embedded: wrote /etc/systemd/system/maculaos-git.service.d/50-maculaos.conf"
                    .to_string()
            ),
            "{r:?}"
        );

        // Off: drop-ins and files gone, ports closed.
        let r = apply_twice(&yaml(""), &o);
        for p in [
            "/etc/mosquitto/maculaos.passwd",
            "/etc/mosquitto/maculaos.conf",
            "/etc/maculaos/git/sshd_config",
            "/etc/maculaos/git/authorized_keys",
            "/etc/systemd/system/mosquitto.service.d/50-maculaos.conf",
        ] {
            assert!(
                !d.path().join(p.trim_start_matches('/')).exists(),
                "{p}: {r:?}"
            );
        }
        let rules = read("/etc/maculaos/firewall.nft");
        assert!(
            !rules.contains("1883") && !rules.contains("23231"),
            "{rules}"
        );
    }
}
