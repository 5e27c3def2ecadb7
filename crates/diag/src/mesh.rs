//! `maculaos diag mesh`: what is configured for the mesh (with where each
//! value comes from), then real checks: the node's certificate for its
//! realm, the NATS server answering on its monitoring port, and its
//! connections to the bootstrap nodes it should reach.

use crate::config::{self, lookup, scalar, strings};
use crate::Line;
use serde_yaml_ng::Value;
use std::path::Path;

/// `maculaos diag mesh`.
pub fn mesh(root: &Path) -> Vec<Line> {
    mesh_at(root, maculaos_mesh::conf::MONITOR)
}

/// [`mesh`] with the server's monitoring endpoint at `monitor`.
pub fn mesh_at(root: &Path, monitor: &str) -> Vec<Line> {
    let sources = config::sources(root);
    let mut lines = Vec::new();
    for s in &sources {
        if let Err(e) = &s.value {
            lines.push(Line::fail(
                "Config",
                format!("{} {e}: its mesh settings are not shown", s.name),
            ));
        }
    }
    let from = |name: &str| format!(" (from {name})");

    lines.push(match lookup(&sources, "maculaos.mesh.realm") {
        Some((v, src)) => Line::info(
            "Realm",
            format!(
                "{}{}",
                scalar(v).unwrap_or_else(|| "(not a string)".into()),
                from(src)
            ),
        ),
        None => Line::info("Realm", "not configured (maculaos.mesh.realm)"),
    });

    // Peer always; bootstrap and gateway when toggled on or named by `role`.
    let mut roles = vec!["peer".to_string()];
    let mut srcs: Vec<&str> = Vec::new();
    let role = lookup(&sources, "maculaos.mesh.role");
    for r in ["bootstrap", "gateway"] {
        let toggled = lookup(&sources, &format!("maculaos.mesh.roles.{r}"))
            .filter(|(v, _)| matches!(v, Value::Bool(true)));
        let named = role.filter(|(v, _)| scalar(v).as_deref() == Some(r));
        if let Some((_, src)) = toggled.or(named) {
            roles.push(r.to_string());
            if !srcs.contains(&src) {
                srcs.push(src);
            }
        }
    }
    lines.push(Line::info(
        "Roles",
        match srcs.is_empty() {
            true => "peer (the default)".to_string(),
            false => format!("{} (from {})", roles.join(", "), srcs.join(", ")),
        },
    ));

    let peers = lookup(&sources, "maculaos.mesh.bootstrap_peers")
        .or_else(|| lookup(&sources, "maculaos.mesh.bootstrap_nodes"));
    lines.push(match peers {
        Some((v, src)) if !strings(v).is_empty() => Line::info(
            "Bootstrap peers",
            format!("{}{}", strings(v).join(", "), from(src)),
        ),
        _ => Line::info("Bootstrap peers", "none configured"),
    });
    lines.extend(checks(root, monitor));
    lines
}

/// The checks on what runs (after the configuration lines).
fn checks(root: &Path, monitor: &str) -> Vec<Line> {
    use maculaos_mesh::{state::State, status};
    let env = maculaos_mesh::read_env(root);
    if env.is_empty() {
        return vec![Line::info(
            "NATS server",
            "not configured (maculaos.nats.enabled is false, or apply has not run)",
        )];
    }
    let mut lines = Vec::new();
    let realm = env.get("MACULA_REALM").filter(|r| !r.is_empty());
    match (realm, State::under(root).identity()) {
        (None, _) => lines.push(Line::info("Certificate", "no realm, none needed")),
        (Some(_), Err(e)) => lines.push(Line::info(
            "Certificate",
            format!("cannot read the node's identity: {e} (run as root)"),
        )),
        (Some(r), Ok(id)) => lines.push(match id.certificate.filter(|_| id.realm.as_ref() == Some(r)) {
            None => Line::fail(
                "Certificate",
                format!("none for realm {r}: join it with `maculaos mesh join TOKEN` (a token from `maculaos mesh token create` on its first bootstrap node)"),
            ),
            Some(c) => {
                let days = (c.not_after - maculaos_mesh::state::now()) / 86_400;
                let text = format!("{} in realm {r}, expires in {days} days", c.common_name);
                if days < 30 {
                    Line::fail("Certificate", format!("{text}: renew it (join again with a new token)"))
                } else {
                    Line::pass("Certificate", text)
                }
            }
        }),
    }
    match status::varz(monitor) {
        Err(e) => {
            lines.push(Line::fail(
                "NATS server",
                format!(
                    "{e}: see `systemctl status maculaos-nats` and `maculaos logs maculaos-nats`"
                ),
            ));
            return lines;
        }
        Ok(v) => lines.push(Line::pass(
            "NATS server",
            format!(
                "nats-server {} up {}, {} local clients",
                v.version, v.uptime, v.connections
            ),
        )),
    }
    let leafs = status::leafz(monitor).map(|l| l.leafs).unwrap_or_default();
    let routes = status::routez(monitor)
        .map(|r| r.routes)
        .unwrap_or_default();
    let wanted: Vec<&str> = env
        .get("MACULA_CONNECTS_TO")
        .map(|c| c.split(',').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let have = format!(
        "{} leafnode, {} route connections",
        leafs.len(),
        routes.len()
    );
    let joined = env.get("MACULA_JOINED").is_some_and(|j| j == "yes");
    lines.push(if wanted.is_empty() || !joined {
        Line::info("Connections", have)
    } else if leafs.is_empty() && routes.is_empty() {
        Line::fail(
            "Connections",
            format!(
                "none to {}: see the errors in `maculaos mesh status`",
                wanted.join(", ")
            ),
        )
    } else {
        Line::pass("Connections", have)
    });
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn root_with(config: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join(config::NODE_CONFIG);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, config).unwrap();
        d
    }

    #[test]
    fn configured_mesh_is_shown_and_nothing_pretended() {
        let d = root_with(
            "maculaos:\n  mesh:\n    realm: io.macula\n    roles:\n      bootstrap: true\n      gateway: false\n    bootstrap_peers: [quic://boot.macula.io:4433]\n",
        );
        let lines = mesh(d.path());
        let text = crate::render(&lines);
        assert_eq!(
            text,
            "  - Realm: io.macula (from /var/lib/maculaos/config.yaml)\n  \
             - Roles: peer, bootstrap (from /var/lib/maculaos/config.yaml)\n  \
             - Bootstrap peers: quic://boot.macula.io:4433 (from /var/lib/maculaos/config.yaml)\n  \
             - NATS server: not configured (maculaos.nats.enabled is false, or apply has not run)\n"
        );
        assert!(
            lines.iter().all(|l| l.ok != Some(true)),
            "nothing is checked, so nothing passes"
        );
    }

    #[test]
    fn role_by_name_and_defaults() {
        let d = root_with("maculaos:\n  mesh:\n    role: gateway\n");
        let text = crate::render(&mesh(d.path()));
        assert!(text.contains("- Roles: peer, gateway"), "{text}");
        assert!(text.contains("- Realm: not configured"), "{text}");
        assert!(
            text.contains("- Bootstrap peers: none configured"),
            "{text}"
        );

        let empty = tempfile::tempdir().unwrap();
        let text = crate::render(&mesh(empty.path()));
        assert!(text.contains("- Roles: peer (the default)"), "{text}");
    }

    #[test]
    fn a_node_that_has_not_joined_and_a_server_that_is_down_fail() {
        let d = root_with("maculaos:\n  mesh:\n    realm: io.macula\n");
        let env = d.path().join(maculaos_mesh::ENV.trim_start_matches('/'));
        fs::create_dir_all(env.parent().unwrap()).unwrap();
        fs::write(&env, "MACULA_REALM=io.macula\nMACULA_JOINED=no\n").unwrap();
        // Port 9 on loopback: nothing listens there.
        let text = crate::render(&mesh_at(d.path(), "127.0.0.1:9"));
        assert!(
            text.contains(
                "✗ Certificate: none for realm io.macula: join it with `maculaos mesh join TOKEN`"
            ),
            "{text}"
        );
        assert!(
            text.contains("✗ NATS server: asking nats-server at http://127.0.0.1:9/varz"),
            "{text}"
        );
    }

    #[test]
    fn a_broken_config_is_named() {
        let d = root_with("maculaos:\n  mesh: [\n");
        let lines = mesh(d.path());
        assert!(lines.iter().any(|l| l.ok == Some(false)
            && l.detail
                .starts_with("/var/lib/maculaos/config.yaml does not parse")));
    }
}
