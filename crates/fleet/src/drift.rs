//! Configuration drift (plan §4.12.4): the realm's desired configuration,
//! set by the operator on the realm CA's holder for every node (`all`) or
//! one (`node.NAME`), signed with the realm CA and kept in the bucket
//! [`BUCKET`]. Each node's agent compares its configuration in force with
//! what is desired for it, key by key, and says in its heartbeat which keys
//! differ and which source set them (never their values: a key may hold a
//! secret). `maculaos fleet drift-fix --apply` orders the drifting nodes to
//! take the desired configuration: written to [`FIX_FILE`], the last file
//! of `config.d`, so it wins over the files before it, then applied.

use maculaos_config::load::Provenance;
use maculaos_config::Paths;
use maculaos_mesh::client::Client;
use maculaos_mesh::order::Signed;
use maculaos_mesh::state::State;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

/// The realm's bucket of desired configurations.
pub const BUCKET: &str = "fleet-desired";
/// Where a node writes the desired configuration it was told to take.
pub const FIX_FILE: &str = "/var/lib/maculaos/config.d/99-fleet-desired.yaml";

/// A desired configuration as the operator set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub realm: String,
    /// The node it is for; `None`: every node of the realm.
    pub node: Option<String>,
    /// A configuration file's text (as a `config.d` file).
    pub yaml: String,
    /// When and by whom it was set.
    pub set_at: u64,
    pub by: String,
}

/// The bucket's key for `node` (`None`: every node).
pub fn key(node: Option<&str>) -> String {
    match node {
        Some(n) => format!("node.{n}"),
        None => "all".into(),
    }
}

/// A key of the configuration in force that is not as desired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drifted {
    /// Dotted path (`maculaos.environment.SITE`).
    pub key: String,
    /// The source that set it (a file, the kernel command line), or
    /// `None` where nothing did.
    pub set_by: Option<String>,
}

/// Parse `yaml` as a configuration source (as a `config.d` file is read,
/// the guide's top-level sections moved under `maculaos:`), checked as a
/// configuration on its own; the error names `name`.
pub fn parse(name: &str, yaml: &str) -> Result<Value, String> {
    let source =
        maculaos_config::sources::parse(name, yaml, maculaos_config::sources::Format::Maculaos)
            .map_err(|p| p.to_string())?;
    let config = <maculaos_config::Config as serde::Deserialize>::deserialize(source.value.clone())
        .map_err(|e| format!("{name}: {e}"))?;
    let problems = maculaos_config::load::check(&config, &Provenance::new());
    if let Some(p) = problems.first() {
        return Err(format!("{name}: {p}"));
    }
    Ok(source.value)
}

/// Every leaf of `v` (maps are walked, anything else is one value) with
/// its dotted path.
fn leaves(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Mapping(m) if !m.is_empty() || prefix.is_empty() => {
            for (k, v) in m {
                let k = match k {
                    Value::String(s) => s.clone(),
                    other => serde_json::to_string(other).unwrap_or_default(),
                };
                let path = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &path, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

/// The value at `path` in `v`, following the same keys [`leaves`] made.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    let mut rest = path;
    'outer: while !rest.is_empty() {
        let Value::Mapping(m) = cur else {
            return None;
        };
        // A key may hold dots itself (a sysctl name): the longest key that
        // matches first.
        let mut best: Option<(&Value, usize)> = None;
        for (k, child) in m {
            let Value::String(k) = k else { continue };
            if (rest == k || rest.starts_with(&format!("{k}.")))
                && best.is_none_or(|(_, n)| k.len() > n)
            {
                best = Some((child, k.len()));
            }
        }
        match best {
            Some((child, n)) => {
                cur = child;
                rest = rest.get(n + 1..).unwrap_or("");
                continue 'outer;
            }
            None => return None,
        }
    }
    Some(cur)
}

/// The keys of `desired` whose value in `effective` (the merged
/// configuration in force) differs, with who set them there.
pub fn compare(desired: &Value, effective: &Value, prov: &Provenance) -> Vec<Drifted> {
    let mut want = Vec::new();
    leaves(desired, "", &mut want);
    want.into_iter()
        .filter(|(path, v)| at(effective, path) != Some(v))
        .map(|(path, _)| Drifted {
            set_by: set_by(prov, &path),
            key: path,
        })
        .collect()
}

/// The source that set `path`, or the key above it that holds it whole.
fn set_by(prov: &Provenance, path: &str) -> Option<String> {
    let mut p = path;
    loop {
        if let Some(s) = prov.get(p) {
            return Some(s.clone());
        }
        p = p.rsplit_once('.')?.0;
    }
}

/// Merge the desired configurations for one node: `all`, then its own.
pub fn merged(all: Option<&Value>, own: Option<&Value>) -> Option<Value> {
    let sources: Vec<maculaos_config::sources::Source> = [all, own]
        .into_iter()
        .flatten()
        .map(|v| maculaos_config::sources::Source {
            name: "desired".into(),
            value: v.clone(),
        })
        .collect();
    if sources.is_empty() {
        return None;
    }
    Some(maculaos_config::load::merge(&sources).0)
}

/// The desired configuration the realm holds for node `node`, each part
/// checked against the realm CA; `None` when there is none.
pub fn desired_for(
    client: &Client,
    st: &State,
    realm: &str,
    node: &str,
) -> Result<Option<Value>, String> {
    let mut parts = Vec::new();
    for k in [key(None), key(Some(node))] {
        let got = match client.kv_get(realm, BUCKET, &k) {
            Ok(v) => v,
            // No bucket: nothing was ever desired.
            Err(e) if e.to_string().contains("no bucket") => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let Some(v) = got else {
            parts.push(None);
            continue;
        };
        let signed = Signed::from_json(v.value.as_bytes())?;
        let text = st.verified_text(&signed, &format!("the desired configuration {k}"))?;
        let d: Desired = serde_json::from_str(&text)
            .map_err(|e| format!("the desired configuration {k}: {e}"))?;
        // The text names what it is for: one node's configuration copied
        // under `all` (or another node's key) is refused.
        let meant = if k == key(None) { None } else { Some(node) };
        if d.realm != realm || d.node.as_deref() != meant {
            return Err(format!(
                "the desired configuration {k} is for another realm or node"
            ));
        }
        parts.push(Some(parse(&format!("desired configuration {k}"), &d.yaml)?));
    }
    Ok(merged(parts[0].as_ref(), parts[1].as_ref()))
}

/// This node's drift: `None` when nothing is desired for it.
pub fn of_node(
    client: &Client,
    paths: &Paths,
    realm: &str,
    node: &str,
) -> Result<Option<Vec<Drifted>>, String> {
    let st = State::under(&paths.root);
    let Some(desired) = desired_for(client, &st, realm, node)? else {
        return Ok(None);
    };
    let loaded = maculaos_config::load(paths);
    Ok(Some(compare(&desired, &loaded.value, &loaded.provenance)))
}

/// Carry out `drift-fix`: the desired configuration, fetched and checked
/// again, written to [`FIX_FILE`] and applied (through
/// maculaos-mesh-apply, as a renewed certificate is).
pub fn fix(paths: &Paths) -> Result<(), String> {
    let me = crate::InRealm::of_node(&paths.root).ok_or("this node is in no realm")?;
    let client = Client::connect(&me.url, "maculaos-agent-fleet-fix", crate::TIMEOUT)
        .map_err(|e| e.to_string())?;
    let st = State::under(&paths.root);
    let desired = desired_for(&client, &st, &me.realm, &me.node)?
        .ok_or("the realm holds no desired configuration for this node")?;
    let text = format!(
        "# Written by `maculaos fleet drift-fix --apply` on the realm's CA holder: the\n\
         # realm's desired configuration for this node. It wins over the files before it.\n{}",
        serde_yaml_ng::to_string(&desired).map_err(|e| e.to_string())?
    );
    let path = paths.root.join(FIX_FILE.trim_start_matches('/'));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("yaml.tmp");
    // Root's only, as the configuration may hold secrets.
    let written = (|| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    written.map_err(|e| format!("writing {}: {e}", path.display()))?;
    st.request_apply().map_err(|e| e.to_string())?;
    println!("event: fleet: the realm's desired configuration written to {FIX_FILE}; applying it");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml_ng::from_str(s).unwrap()
    }

    #[test]
    fn only_the_desired_keys_that_differ_with_their_source() {
        let desired = yaml(
            "maculaos:\n  environment: {SITE: hq, ZONE: a}\n  sysctl: {net.ipv4.ip_forward: '1'}\n",
        );
        let effective = yaml(
            "maculaos:\n  hostname: n1\n  environment: {SITE: lab, ZONE: a}\n  sysctl: {net.ipv4.ip_forward: '1'}\n",
        );
        let mut prov = Provenance::new();
        prov.insert(
            "maculaos.environment.SITE".into(),
            "/var/lib/maculaos/config.d/70-hand.yaml".into(),
        );
        assert_eq!(
            compare(&desired, &effective, &prov),
            vec![Drifted {
                key: "maculaos.environment.SITE".into(),
                set_by: Some("/var/lib/maculaos/config.d/70-hand.yaml".into()),
            }]
        );
        // A key nothing set is drift too, set by nobody.
        let d = compare(&yaml("maculaos: {timezone: UTC}\n"), &effective, &prov);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].set_by, None);
        // Lists are one value.
        let d = compare(&yaml("run_cmd: [a]\n"), &yaml("run_cmd: [a, b]\n"), &prov);
        assert_eq!(d[0].key, "run_cmd");
        assert!(compare(&desired, &desired, &prov).is_empty());
    }

    #[test]
    fn a_node_of_its_own_wins_over_all() {
        let all = yaml("maculaos: {environment: {SITE: hq, ZONE: a}}\n");
        let own = yaml("maculaos: {environment: {ZONE: b}}\n");
        let m = merged(Some(&all), Some(&own)).unwrap();
        assert_eq!(m, yaml("maculaos: {environment: {SITE: hq, ZONE: b}}\n"));
        assert_eq!(merged(None, None), None);
    }

    #[test]
    fn a_desired_file_is_checked_as_a_configuration() {
        assert!(parse("d.yaml", "maculaos: {environment: {SITE: hq}}\n").is_ok());
        let e = parse("d.yaml", "maculaos: {no_such_key: 1}\n").unwrap_err();
        assert!(e.contains("d.yaml"), "{e}");
        // The guide's top-level sections are moved as a file's would be.
        let v = parse("d.yaml", "monitoring: {prometheus: {enabled: true}}\n").unwrap();
        assert!(
            at(&v, "maculaos.monitoring.prometheus.enabled").is_some(),
            "{v:?}"
        );
    }
}
