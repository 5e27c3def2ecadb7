//! `maculaos.security.firewall` (plan §4.9.4): the node's nftables
//! ruleset (see `maculaos_firewall`), from the configuration, the node's
//! mesh roles and whether it is paired yet. Loaded in one transaction, so
//! there is never a moment without a firewall or with half of one, and a
//! ruleset nft refuses is an error that leaves the rules in force (SSH
//! keeps working): no separate `nft -c` pass is needed for that.

use crate::applier::{io_msg, run, write_atomic, Applier, ROOT_OWNER};
use maculaos_config::{Config, FirewallPolicy, CONFIGURED_FLAG};
use maculaos_firewall::{openings, ruleset, Applied, Facts, RULESET_PATH, STATE_PATH, TABLE};
use maculaos_runner::Cmd;

const AREA: &str = "firewall";

/// Whether nft can be run on this system (the running node, as root).
fn nft_here(a: &Applier) -> bool {
    a.live() && !a.dry_run() && a.path("/usr/sbin/nft").exists()
}

fn table_loaded() -> bool {
    Cmd::new("nft")
        .args(["list", "table", "inet", TABLE])
        .quiet()
        .output()
        .is_ok()
}

/// Record what is in force, for `maculaos firewall show`.
fn record(a: &mut Applier, applied: &Applied) {
    if a.dry_run() {
        return;
    }
    let path = a.path(STATE_PATH);
    let text = serde_json::to_vec_pretty(applied).unwrap_or_default();
    if let Err(e) = write_atomic(&path, &text, 0o644, ROOT_OWNER) {
        a.error(AREA, e);
    }
}

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    let fw = &config.maculaos.security.firewall;
    let policy = match fw.default_policy {
        FirewallPolicy::Drop => "drop",
        FirewallPolicy::Accept => "accept",
    };
    if !fw.enabled {
        let removed = a.remove_file(AREA, RULESET_PATH)?;
        if nft_here(a) && table_loaded() {
            a.act(AREA, ("remove", "removed"), "the firewall", || {
                run(Cmd::new("nft").args(["delete", "table", "inet", TABLE]))
            });
        } else if removed {
            a.note(AREA, "the firewall is off (enabled: false)");
        }
        record(
            a,
            &Applied {
                enabled: false,
                policy: "accept".into(),
                openings: Vec::new(),
                overlay: None,
            },
        );
        return Ok(());
    }
    let (mesh_ports, join_port) = crate::mesh::firewall_ports(config, a);
    let facts = Facts {
        mesh_ports,
        join_port,
        unconfigured: !a.path(CONFIGURED_FLAG).exists(),
    };
    let open = openings(config, &facts);
    let overlay = maculaos_firewall::overlay(config);
    let text = ruleset(policy == "drop", &open, overlay.as_deref());
    if nft_here(a) {
        // Loaded from a file of its own; only a ruleset in force is
        // written to RULESET_PATH (which the next apply compares with):
        // one nft refuses leaves the rules in force and is tried again at
        // the next apply.
        let same = std::fs::read_to_string(a.path(RULESET_PATH)).is_ok_and(|t| t == text);
        if !same || !table_loaded() {
            let tmp = a.path("/run/maculaos/firewall.nft.new");
            if let Some(dir) = tmp.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io_msg("making", dir, &e))?;
            }
            std::fs::write(&tmp, &text).map_err(|e| io_msg("writing", &tmp, &e))?;
            let what = format!("the firewall ({} ports open, policy {policy})", open.len());
            let loaded = a.act(AREA, ("load", "loaded"), &what, || {
                run(Cmd::new("nft").arg("-f").arg(&tmp)).map_err(|e| {
                    format!("nft refused the new ruleset, so the rules in force stay: {e}")
                })
            });
            let _ = std::fs::remove_file(&tmp);
            if !loaded {
                return Ok(());
            }
        }
    }
    a.put_file(AREA, RULESET_PATH, text.as_bytes(), 0o644, ROOT_OWNER)?;
    record(
        a,
        &Applied {
            enabled: true,
            policy: policy.into(),
            openings: open,
            overlay,
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::tests::{apply_twice, opts, yaml};
    use std::fs;

    #[test]
    fn the_ruleset_and_what_is_open_are_written() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        let at = |p: &str| d.path().join(p.trim_start_matches('/'));
        apply_twice(
            &yaml("maculaos:\n  security:\n    firewall:\n      allow: [8080/tcp]\n"),
            &o,
        );
        let rules = fs::read_to_string(at(maculaos_firewall::RULESET_PATH)).unwrap();
        assert!(rules.contains("tcp dport 8080 accept"), "{rules}");
        // Not paired yet: the wizard's port is open.
        assert!(rules.contains("tcp dport 80 accept"), "{rules}");
        let state: maculaos_firewall::Applied =
            serde_json::from_slice(&fs::read(at(maculaos_firewall::STATE_PATH)).unwrap()).unwrap();
        assert_eq!(state.policy, "drop");
        assert_eq!(state.openings.len(), 3);

        apply_twice(
            &yaml("maculaos:\n  security:\n    firewall: {enabled: false}\n"),
            &o,
        );
        assert!(!at(maculaos_firewall::RULESET_PATH).exists());
    }
}
