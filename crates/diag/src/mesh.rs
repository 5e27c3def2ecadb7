//! `maculaos diag mesh`. The Macula mesh does not run on MaculaOS yet, so
//! this shows what is configured for it and says plainly that nothing is
//! connected: no peers, no latency, no status made up.

use crate::config::{self, lookup, scalar, strings};
use crate::Line;
use serde_yaml_ng::Value;
use std::path::Path;

/// `maculaos diag mesh`.
pub fn mesh(root: &Path) -> Vec<Line> {
    let sources = config::sources(root);
    let mut lines = vec![Line::info(
        "Mesh status",
        "not built yet (MaculaOS does not run the Macula mesh yet; nothing is connected)",
    )];
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
            "  - Mesh status: not built yet (MaculaOS does not run the Macula mesh yet; nothing is connected)\n  \
             - Realm: io.macula (from /var/lib/maculaos/config.yaml)\n  \
             - Roles: peer, bootstrap (from /var/lib/maculaos/config.yaml)\n  \
             - Bootstrap peers: quic://boot.macula.io:4433 (from /var/lib/maculaos/config.yaml)\n"
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
    fn a_broken_config_is_named() {
        let d = root_with("maculaos:\n  mesh: [\n");
        let lines = mesh(d.path());
        assert!(lines.iter().any(|l| l.ok == Some(false)
            && l.detail
                .starts_with("/var/lib/maculaos/config.yaml does not parse")));
    }
}
