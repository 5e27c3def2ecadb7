//! A loose read of the configuration files, for the few keys the
//! diagnostics mention (realm, roles, bootstrap peers, update URL). The
//! real merge and checks are `maculaos-config`'s; this only needs to show
//! what is written, even in a configuration that would not validate.

use serde_yaml_ng::Value;
use std::fs;
use std::path::{Path, PathBuf};

/// The node's configuration file, under a root.
pub(crate) const NODE_CONFIG: &str = "var/lib/maculaos/config.yaml";
/// Its drop-in directory.
pub(crate) const CONFIG_D: &str = "var/lib/maculaos/config.d";
/// The image defaults.
const DEFAULTS: &str = "usr/lib/maculaos/config.yaml";

/// One configuration file: its path on the node and its YAML, or why it
/// could not be read.
pub(crate) struct Source {
    pub name: String,
    pub value: Result<Value, String>,
}

/// `config.d/*.yaml` and `*.yml`, in lexical order (the order they merge in).
pub(crate) fn config_d_files(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(root.join(CONFIG_D))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The configuration files that exist, lowest first: image defaults, the
/// node's config.yaml, config.d.
pub(crate) fn sources(root: &Path) -> Vec<Source> {
    let mut files = vec![root.join(DEFAULTS), root.join(NODE_CONFIG)];
    files.extend(config_d_files(root));
    files
        .into_iter()
        .filter_map(|p| {
            let name = format!("/{}", p.strip_prefix(root).unwrap_or(&p).display());
            let value = match fs::read_to_string(&p) {
                Ok(text) => {
                    serde_yaml_ng::from_str::<Value>(&text).map_err(|e| match e.location() {
                        Some(l) => {
                            format!("does not parse (line {}, column {})", l.line(), l.column())
                        }
                        None => "does not parse".to_string(),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => Err(format!("cannot be read: {e}")),
            };
            Some(Source { name, value })
        })
        .collect()
}

/// The value at a dotted path (`maculaos.mesh.realm`) of one document.
pub(crate) fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// The value at `path` in effect: the last source that sets it (not null),
/// with that source's name.
pub(crate) fn lookup<'a>(sources: &'a [Source], path: &str) -> Option<(&'a Value, &'a str)> {
    sources.iter().rev().find_map(|s| {
        let v = get(s.value.as_ref().ok()?, path)?;
        (!v.is_null()).then_some((v, s.name.as_str()))
    })
}

/// A scalar as text (`true`, `4433`, `io.macula`).
pub(crate) fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A list of strings, or one string alone.
pub(crate) fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(s) => s.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_sources_win_and_broken_ones_are_named() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let f = d.path().join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, s).unwrap();
        };
        w(DEFAULTS, "maculaos:\n  mesh:\n    realm: io.default\n");
        w(
            NODE_CONFIG,
            "maculaos:\n  mesh:\n    realm: io.node\n    roles: {gateway: true}\n",
        );
        w(
            "var/lib/maculaos/config.d/20-b.yaml",
            "maculaos:\n  mesh:\n    realm: io.dropin\n",
        );
        w("var/lib/maculaos/config.d/10-a.yml", "maculaos: [\n");
        w("var/lib/maculaos/config.d/30-c.txt", "ignored");
        let s = sources(d.path());
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "/usr/lib/maculaos/config.yaml",
                "/var/lib/maculaos/config.yaml",
                "/var/lib/maculaos/config.d/10-a.yml",
                "/var/lib/maculaos/config.d/20-b.yaml"
            ]
        );
        assert!(s[2]
            .value
            .as_ref()
            .unwrap_err()
            .starts_with("does not parse (line"));
        let (v, from) = lookup(&s, "maculaos.mesh.realm").unwrap();
        assert_eq!(
            (scalar(v).unwrap().as_str(), from),
            ("io.dropin", "/var/lib/maculaos/config.d/20-b.yaml")
        );
        let (v, from) = lookup(&s, "maculaos.mesh.roles.gateway").unwrap();
        assert_eq!(
            (v, from),
            (&Value::Bool(true), "/var/lib/maculaos/config.yaml")
        );
        assert!(lookup(&s, "maculaos.mesh.roles.bootstrap").is_none());
    }
}
