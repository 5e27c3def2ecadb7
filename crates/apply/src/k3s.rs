//! k3s: `/etc/rancher/k3s/config.yaml` (always, so it is ready when k3s is
//! installed), and the server or agent unit enabled where k3s is installed.
//!
//! k3s reads every key of its config file as the command-line flag of the
//! same name (`node-label: [a=b]` is `--node-label=a=b`), so the
//! configuration's `args` are turned into keys the same way.

use crate::applier::{Applier, HEADER, ROOT_OWNER};
use maculaos_config::{Config, K3sRole};
use serde_yaml_ng::{Mapping, Value};
use std::path::Path;

const AREA: &str = "k3s";
pub(crate) const CONFIG_FILE: &str = "/etc/rancher/k3s/config.yaml";

/// Whether the k3s binary is installed under `root`.
pub fn k3s_installed(root: &Path) -> bool {
    ["usr/local/bin/k3s", "usr/bin/k3s"]
        .iter()
        .any(|p| root.join(p).is_file())
}

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    let (text, bad_args) = config_yaml(config)?;
    for e in bad_args {
        a.error(AREA, e);
    }
    // 0600: it may hold the cluster token.
    let changed = a.put_file(AREA, CONFIG_FILE, text.as_bytes(), 0o600, ROOT_OWNER)?;
    if !k3s_installed(&a.opts.root) {
        a.note(
            AREA,
            format!("not installed (config written to {CONFIG_FILE})"),
        );
        return Ok(());
    }
    if a.live() {
        manage_units(a, config.k3s_role(), changed);
    }
    Ok(())
}

/// Enable the unit of the role (and stop the other one's, if the role
/// changed); restart it when it runs and its config changed. `--no-block`:
/// at boot we run before the network is up, which k3s waits for.
fn manage_units(a: &mut Applier, role: K3sRole, changed: bool) {
    let (unit, other) = match role {
        K3sRole::Server => ("k3s.service", "k3s-agent.service"),
        K3sRole::Agent => ("k3s-agent.service", "k3s.service"),
    };
    if a.unit_enabled(other) {
        a.systemctl_unit(
            AREA,
            ("disable and stop", "disabled and stopped"),
            &["disable", "--now"],
            other,
        );
    }
    if !a.unit_enabled(unit) {
        a.systemctl_unit(
            AREA,
            ("enable and start", "enabled and started"),
            &["enable", "--now"],
            unit,
        );
    } else if changed && a.unit_active(unit) {
        a.systemctl_unit(AREA, ("restart", "restarted"), &["restart"], unit);
    }
}

/// The config file, and the `args` that could not be understood.
pub(crate) fn config_yaml(config: &Config) -> Result<(String, Vec<String>), String> {
    let k = &config.k3s;
    let mut keys = Keys::default();
    if let Some(url) = &k.server_url {
        keys.add("server", Value::String(url.clone()));
    }
    if let Some(token) = &k.token {
        keys.add("token", Value::String(token.clone()));
    }
    for (name, value) in config.node_labels() {
        keys.add("node-label", Value::String(format!("{name}={value}")));
    }
    for taint in &k.taints {
        keys.add("node-taint", Value::String(taint.clone()));
    }
    let bad = parse_args(&k.args, &mut keys);
    let yaml = serde_yaml_ng::to_string(&keys.into_mapping())
        .map_err(|e| format!("writing {CONFIG_FILE}: {e}"))?;
    Ok((format!("{HEADER}{yaml}"), bad))
}

/// Keys in the order first seen, each with all its values.
#[derive(Default)]
struct Keys(Vec<(String, Vec<Value>)>);

impl Keys {
    fn add(&mut self, key: &str, value: Value) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some((_, values)) => values.push(value),
            None => self.0.push((key.to_string(), vec![value])),
        }
    }

    /// One value stays a scalar, several become a list; labels and taints
    /// are lists always.
    fn into_mapping(self) -> Mapping {
        self.0
            .into_iter()
            .map(|(k, mut values)| {
                let always_list = k == "node-label" || k == "node-taint";
                let v = if values.len() == 1 && !always_list {
                    values.remove(0)
                } else {
                    Value::Sequence(values)
                };
                (Value::String(k), v)
            })
            .collect()
    }
}

/// `server`/`agent` first is the role (see `Config::k3s_role`); then
/// `--key=value`, `--key value` and `--flag` (true).
fn parse_args(args: &[String], keys: &mut Keys) -> Vec<String> {
    let mut bad = Vec::new();
    let mut rest = args;
    if matches!(rest.first().map(String::as_str), Some("server" | "agent")) {
        rest = &rest[1..];
    }
    let mut i = 0;
    while i < rest.len() {
        let arg = &rest[i];
        i += 1;
        let Some(opt) = arg.strip_prefix("--").filter(|o| !o.is_empty()) else {
            bad.push(format!(
                "args: `{arg}` is not an option: write --name=value or --flag"
            ));
            continue;
        };
        match opt.split_once('=') {
            Some((key, value)) => keys.add(key, Value::String(value.to_string())),
            None => match rest.get(i).filter(|next| !next.starts_with('-')) {
                Some(value) => {
                    keys.add(opt, Value::String(value.clone()));
                    i += 1;
                }
                None => keys.add(opt, Value::Bool(true)),
            },
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{apply_twice, opts, yaml};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn config_from_fields_labels_and_args() {
        let cfg = yaml(
            "maculaos: {labels: {zone: a}}\n\
             k3s:\n  server_url: https://10.0.0.1:6443\n  token: s3cret\n  labels: {gpu: 'true'}\n\
             \x20 taints: ['edge=true:NoSchedule']\n\
             \x20 args: [agent, --disable=traefik, --disable=servicelb, --write-kubeconfig-mode=0644, --protect-kernel-defaults, --node-ip, 10.0.0.5, -v]\n",
        );
        assert_eq!(cfg.k3s_role(), K3sRole::Agent);
        let (text, bad) = config_yaml(&cfg).unwrap();
        assert_eq!(
            bad,
            vec!["args: `-v` is not an option: write --name=value or --flag"]
        );
        let body = text.strip_prefix(HEADER).unwrap();
        assert_eq!(
            body,
            "server: https://10.0.0.1:6443\n\
             token: s3cret\n\
             node-label:\n- gpu=true\n- zone=a\n\
             node-taint:\n- edge=true:NoSchedule\n\
             disable:\n- traefik\n- servicelb\n\
             write-kubeconfig-mode: '0644'\n\
             protect-kernel-defaults: true\n\
             node-ip: 10.0.0.5\n"
        );
    }

    #[test]
    fn empty_config_is_an_empty_mapping() {
        let (text, bad) = config_yaml(&yaml("")).unwrap();
        assert!(bad.is_empty());
        assert_eq!(text, format!("{HEADER}{{}}\n"));
    }

    #[test]
    fn written_0600_with_a_note_when_not_installed() {
        let d = tempfile::tempdir().unwrap();
        let r = apply_twice(&yaml("k3s: {token: t}"), &opts(d.path()));
        assert!(r.notes.contains(
            &"k3s: not installed (config written to /etc/rancher/k3s/config.yaml)".to_string()
        ));
        assert!(r
            .changes
            .contains(&"k3s: wrote /etc/rancher/k3s/config.yaml".to_string()));
        let f = d.path().join("etc/rancher/k3s/config.yaml");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(fs::read_to_string(&f).unwrap().ends_with("token: t\n"));
    }

    #[test]
    fn installed_means_a_binary_in_usr() {
        let d = tempfile::tempdir().unwrap();
        assert!(!k3s_installed(d.path()));
        fs::create_dir_all(d.path().join("usr/local/bin")).unwrap();
        fs::write(d.path().join("usr/local/bin/k3s"), "").unwrap();
        assert!(k3s_installed(d.path()));
        let r = crate::apply(&yaml(""), &opts(d.path()));
        assert!(r.notes.iter().all(|n| !n.starts_with("k3s")), "{r:?}");
    }
}
