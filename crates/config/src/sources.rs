//! Reading each source of configuration into a YAML value, checked against
//! the schema on its own so that an error names the file it is in.

use crate::error::Problem;
use crate::schema::{
    Alert, Command, Config, K3s, Logging, Maculaos, Mesh, Monitoring, Updates, WriteFile,
};
use crate::values::{Hostname, SshKey};
use maculaos_boot::Cmdline;
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

/// How a source is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// MaculaOS `config.yaml`.
    Maculaos,
    /// A NoCloud `user-data`: `#cloud-config` (else read as MaculaOS config.yaml).
    UserData,
    /// A NoCloud `meta-data` (only `local-hostname` is used).
    MetaData,
}

/// One source, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// Where it came from, as shown to the user.
    pub name: String,
    pub value: Value,
}

/// Parse `text` (the contents of `name`) as `format`.
pub fn parse(name: &str, text: &str, format: Format) -> Result<Source, Problem> {
    let value = match format {
        Format::Maculaos => parse_maculaos(name, text)?,
        Format::UserData => parse_user_data(name, text)?,
        Format::MetaData => parse_meta_data(name, text)?,
    };
    Ok(Source {
        name: name.to_string(),
        value,
    })
}

/// The text as a YAML map (an empty file is an empty map).
fn yaml_map(name: &str, text: &str) -> Result<Mapping, Problem> {
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(Value::Null) => Ok(Mapping::new()),
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(_) => Err(Problem::new(
            name,
            "the file must be a map of keys (`maculaos:`, `k3s:`, …), not a single value or a list",
        )
        .at(1, 1)),
        Err(e) => Err(Problem::from_yaml(name, &e)),
    }
}

fn parse_maculaos(name: &str, text: &str) -> Result<Value, Problem> {
    let mut map = yaml_map(name, text)?;
    serde_yaml_ng::from_str::<Config>(text).map_err(|e| Problem::from_yaml(name, &e))?;
    hoist_guide_sections(name, &mut map)?;
    Ok(Value::Mapping(map))
}

/// Sections the user guide writes at the top level (`mesh:`, `monitoring:`)
/// that belong under `maculaos:`: moved there, so that the guide's examples
/// work as written and every other reader sees one place.
const GUIDE_SECTIONS: &[&str] = &[
    "mesh",
    "monitoring",
    "alerts",
    "updates",
    "logging",
    "fleet",
];

fn hoist_guide_sections(name: &str, map: &mut Mapping) -> Result<(), Problem> {
    for key in GUIDE_SECTIONS {
        let Some(v) = map.remove(*key) else {
            continue;
        };
        let under = map
            .get("maculaos")
            .and_then(Value::as_mapping)
            .is_some_and(|m| m.contains_key(*key));
        if under {
            return Err(Problem::new(
                name,
                format!(
                    "both `{key}:` and `maculaos.{key}:` are set in this file: they are the \
                     same section, keep one"
                ),
            ));
        }
        set_path(map, &["maculaos", key], v, true);
    }
    Ok(())
}

/// The `#cloud-config` keys MaculaOS honours (cloud-init's names).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read only to check the file
struct CloudConfig {
    #[serde(default)]
    hostname: Option<Hostname>,
    #[serde(default)]
    ssh_authorized_keys: Vec<SshKey>,
    #[serde(default)]
    write_files: Vec<WriteFile>,
    #[serde(default)]
    runcmd: Vec<Command>,
    #[serde(default)]
    bootcmd: Vec<Command>,
    #[serde(default)]
    maculaos: Maculaos,
    #[serde(default)]
    k3s: K3s,
    #[serde(default)]
    mesh: Option<Mesh>,
    #[serde(default)]
    monitoring: Option<Monitoring>,
    #[serde(default)]
    alerts: Option<Vec<Alert>>,
    #[serde(default)]
    updates: Option<Updates>,
    #[serde(default)]
    logging: Option<Logging>,
}

fn parse_user_data(name: &str, text: &str) -> Result<Value, Problem> {
    let first = text.lines().next().unwrap_or("").trim();
    if first.starts_with("#!") {
        return Err(Problem::new(
            name,
            "user-data is a script; MaculaOS reads only `#cloud-config` user-data \
             (put the script in `runcmd:`)",
        )
        .at(1, 1));
    }
    if first != "#cloud-config" {
        return parse_maculaos(name, text);
    }
    let mut map = yaml_map(name, text)?;
    serde_yaml_ng::from_str::<CloudConfig>(text).map_err(|e| Problem::from_yaml(name, &e))?;
    // cloud-init's names → ours.
    for (from, to) in [("runcmd", "run_cmd"), ("bootcmd", "boot_cmd")] {
        if let Some(v) = map.remove(from) {
            map.insert(to.into(), v);
        }
    }
    if let Some(h) = map.remove("hostname") {
        set_path(&mut map, &["maculaos", "hostname"], h, false);
    }
    hoist_guide_sections(name, &mut map)?;
    Ok(Value::Mapping(map))
}

fn parse_meta_data(name: &str, text: &str) -> Result<Value, Problem> {
    let meta = yaml_map(name, text)?;
    let mut map = Mapping::new();
    if let Some(h) = meta.get("local-hostname") {
        let s = match h {
            Value::String(s) => s.clone(),
            other => serde_yaml_ng::to_string(other)
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        Hostname::try_from(s.clone())
            .map_err(|e| Problem::new(name, format!("local-hostname: {e}")))?;
        set_path(&mut map, &["maculaos", "hostname"], Value::String(s), true);
    }
    Ok(Value::Mapping(map))
}

/// Set `path` in `map`, making the maps on the way; `overwrite` false keeps
/// a value that is already there.
pub fn set_path(map: &mut Mapping, path: &[&str], v: Value, overwrite: bool) {
    let Some((last, init)) = path.split_last() else {
        return;
    };
    let mut cur = map;
    for k in init {
        let entry = cur
            .entry(Value::String(k.to_string()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if !entry.is_mapping() {
            *entry = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = entry else { return };
        cur = m;
    }
    let key = Value::String(last.to_string());
    if overwrite || !cur.contains_key(&key) {
        cur.insert(key, v);
    }
}

/// Kernel parameters that belong to the boot, not to the configuration:
/// listed by the boot contract, beside the parser that reads them.
pub use maculaos_boot::BOOT_PARAMS;

/// The deepest a kernel parameter may reach into the configuration.
const MAX_KEY_PARTS: usize = 8;

/// The name of the kernel command line as a source.
pub const CMDLINE: &str = "kernel command line";

/// Configuration given on the kernel command line: `maculaos.KEY=VALUE`
/// sets `maculaos.KEY` (dots go deeper: `maculaos.install.device=/dev/sda`).
/// The value is YAML, so `[a,b]` is a list and `true` a switch; a bare
/// `maculaos.KEY` is `true`. `%XX` escapes are decoded first, since GRUB
/// escapes quotes. `maculaos.ssh_authorized_keys` takes keys separated by `;`.
pub fn from_cmdline(c: &Cmdline) -> Result<Source, Problem> {
    let mut map = Mapping::new();
    for (key, val) in c.maculaos_params() {
        if BOOT_PARAMS.contains(&key) {
            continue;
        }
        let raw = val.map(percent_decode);
        let value = if key == "maculaos.ssh_authorized_keys" {
            let keys = raw.unwrap_or_default();
            Value::Sequence(
                keys.split(';')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(|k| Value::String(k.to_string()))
                    .collect(),
            )
        } else {
            match raw {
                None => Value::Bool(true),
                Some(r) => cmdline_value(&r),
            }
        };
        let path: Vec<&str> = if key == "maculaos.ssh_authorized_keys" {
            vec!["ssh_authorized_keys"]
        } else {
            key.split('.').collect()
        };
        if path.iter().any(|p| p.is_empty()) {
            return Err(Problem::new(CMDLINE, format!("`{key}`: empty key part")));
        }
        // No key of the schema is deeper; a longer one is a mistake (and a
        // deep enough one would exhaust the stack of the YAML value code).
        if path.len() > MAX_KEY_PARTS {
            return Err(Problem::new(
                CMDLINE,
                format!("`{key}`: no configuration key has more than {MAX_KEY_PARTS} parts"),
            ));
        }
        set_path(&mut map, &path, value, true);
    }
    let value = Value::Mapping(map);
    Config::deserialize(value.clone()).map_err(|e| {
        Problem::new(
            CMDLINE,
            format!(
                "{} (kernel parameter maculaos.…)",
                Problem::from_yaml("", &e).message
            ),
        )
    })?;
    Ok(Source {
        name: CMDLINE.into(),
        value,
    })
}

/// A command-line value: flow lists and maps and true/false are YAML,
/// everything else stays text (so `maculaos.hostname=0123` is a name).
fn cmdline_value(raw: &str) -> Value {
    let t = raw.trim();
    let structured = t.starts_with('[') || t.starts_with('{') || t == "true" || t == "false";
    if structured {
        if let Ok(v) = serde_yaml_ng::from_str::<Value>(t) {
            return v;
        }
    }
    Value::String(raw.to_string())
}

/// Decode `%XX` escapes; anything malformed stays as it is.
pub fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                // Two hex digits: at most 0xff.
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
        path.split('.').try_fold(v, |v, k| v.get(k))
    }

    #[test]
    fn maculaos_file() {
        let s = parse("f", "maculaos:\n  hostname: edge-1\n", Format::Maculaos).unwrap();
        assert_eq!(get(&s.value, "maculaos.hostname").unwrap(), "edge-1");
        let s = parse("f", "# only a comment\n", Format::Maculaos).unwrap();
        assert_eq!(s.value, Value::Mapping(Mapping::new()));
        let p = parse("f", "- a\n- b\n", Format::Maculaos).unwrap_err();
        assert!(p.message.contains("must be a map"), "{p}");
        let p = parse("f", "maculaos:\n  hostname: [\n", Format::Maculaos).unwrap_err();
        assert_eq!(p.source, "f");
        assert!(p.line.is_some(), "{p}");
    }

    #[test]
    fn guide_sections_at_the_top_level_move_under_maculaos() {
        let text = "mesh:\n  role: bootstrap\nmonitoring:\n  prometheus:\n    enabled: true\n";
        let s = parse("f", text, Format::Maculaos).unwrap();
        assert_eq!(get(&s.value, "maculaos.mesh.role").unwrap(), "bootstrap");
        assert_eq!(
            get(&s.value, "maculaos.monitoring.prometheus.enabled").unwrap(),
            &Value::Bool(true)
        );
        assert!(get(&s.value, "mesh").is_none() && get(&s.value, "monitoring").is_none());
        let text = "maculaos:\n  hostname: a\n  mesh:\n    realm: r\nmesh:\n  role: peer\n";
        let p = parse("f", text, Format::Maculaos).unwrap_err();
        assert!(
            p.to_string().contains("both `mesh:` and `maculaos.mesh:`"),
            "{p}"
        );
        let p = parse(
            "f",
            "monitoring:\n  prometheus:\n    port: x\n",
            Format::Maculaos,
        )
        .unwrap_err();
        assert!(p.to_string().starts_with("f:3:"), "{p}");
    }

    #[test]
    fn the_plans_fleet_block_as_written() {
        let text = "fleet:\n  update:\n    strategy: rolling # rolling, blue-green, canary\n    \
                    max_unavailable: 10% # Max nodes updating at once\n    health_check_wait: 60s\n    \
                    auto_rollback: true\n    canary:\n      percentage: 5%\n      success_threshold: 95%\n";
        let s = parse("f", text, Format::Maculaos).unwrap();
        let c = Config::deserialize(s.value).unwrap();
        let u = &c.maculaos.fleet.update;
        assert_eq!(u.max_unavailable.of(47), 4);
        assert_eq!(u.health_check_wait.get().as_secs(), 60);
        assert_eq!(u.canary.success_threshold.get(), 95);
        assert!(crate::load::check(&c, &crate::load::Provenance::new()).is_empty());
        let p = parse(
            "f",
            "fleet:\n  update:\n    strategy: blue-green\n",
            Format::Maculaos,
        )
        .unwrap_err();
        assert!(p.to_string().contains("rolling"), "{p}");
        let s = parse(
            "f",
            "fleet:\n  update:\n    auto_rollback: false\n",
            Format::Maculaos,
        )
        .unwrap();
        let c = Config::deserialize(s.value).unwrap();
        let problems = crate::load::check(&c, &crate::load::Provenance::new());
        assert!(
            problems[0]
                .to_string()
                .contains("auto_rollback: only `true`"),
            "{problems:?}"
        );
    }

    #[test]
    fn cloud_config_maps_to_our_names() {
        let text = "#cloud-config\nhostname: node-7\nruncmd:\n  - echo hi\nbootcmd:\n  - [touch, /x]\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB me\nmaculaos:\n  modules: [dummy]\n";
        let s = parse("user-data", text, Format::UserData).unwrap();
        assert_eq!(get(&s.value, "maculaos.hostname").unwrap(), "node-7");
        assert!(get(&s.value, "run_cmd").is_some());
        assert!(get(&s.value, "boot_cmd").is_some());
        assert!(get(&s.value, "runcmd").is_none());
        assert!(get(&s.value, "hostname").is_none());
        let c = Config::deserialize(s.value).unwrap();
        assert_eq!(c.maculaos.modules.len(), 1);
    }

    #[test]
    fn cloud_config_hostname_does_not_override_maculaos_block() {
        let text = "#cloud-config\nhostname: a\nmaculaos:\n  hostname: b\n";
        let s = parse("u", text, Format::UserData).unwrap();
        assert_eq!(get(&s.value, "maculaos.hostname").unwrap(), "b");
    }

    #[test]
    fn cloud_config_takes_the_guide_sections_too() {
        let text = "#cloud-config\nmonitoring:\n  prometheus:\n    enabled: true\nalerts:\n  - {name: d, condition: disk_usage > 90%}\n";
        let s = parse("user-data", text, Format::UserData).unwrap();
        assert_eq!(
            get(&s.value, "maculaos.monitoring.prometheus.enabled").unwrap(),
            &Value::Bool(true)
        );
        assert!(get(&s.value, "maculaos.alerts").is_some());
    }

    #[test]
    fn cloud_config_errors() {
        let p = parse("u", "#cloud-config\nruncmds: []\n", Format::UserData).unwrap_err();
        assert!(p.message.contains("did you mean `runcmd`?"), "{p}");
        assert_eq!(p.line, Some(2));
        let p = parse("u", "#!/bin/sh\necho\n", Format::UserData).unwrap_err();
        assert!(p.message.contains("script"), "{p}");
    }

    #[test]
    fn meta_data_hostname() {
        let s = parse(
            "m",
            "instance-id: i-1\nlocal-hostname: box-2\n",
            Format::MetaData,
        )
        .unwrap();
        assert_eq!(get(&s.value, "maculaos.hostname").unwrap(), "box-2");
        let p = parse("m", "local-hostname: bad_name\n", Format::MetaData).unwrap_err();
        assert!(p.message.contains("local-hostname"), "{p}");
        let s = parse("m", "instance-id: i-1\n", Format::MetaData).unwrap();
        assert_eq!(s.value, Value::Mapping(Mapping::new()));
    }

    #[test]
    fn cmdline_sets_paths() {
        let c = Cmdline::parse(
            "quiet maculaos.slot=A maculaos.factory_reset=keep-data maculaos.hostname=edge-9 maculaos.install.force \
             maculaos.dns_nameservers=[1.1.1.1,9.9.9.9] \
             maculaos.ssh_authorized_keys=ssh-ed25519%20AAAAC3NzaC1lZDI1NTE5AAAAIB%20a;",
        );
        let s = from_cmdline(&c).unwrap();
        assert_eq!(get(&s.value, "maculaos.hostname").unwrap(), "edge-9");
        assert_eq!(
            get(&s.value, "maculaos.install.force").unwrap(),
            &Value::Bool(true)
        );
        assert!(get(&s.value, "maculaos.slot").is_none());
        assert!(get(&s.value, "maculaos.factory_reset").is_none());
        let c = Config::deserialize(s.value).unwrap();
        assert_eq!(c.maculaos.dns_nameservers.len(), 2);
        assert_eq!(c.ssh_authorized_keys.len(), 1);
    }

    #[test]
    fn cmdline_keys_have_a_depth_limit() {
        let deep = format!("maculaos.{}b=1", "a.".repeat(20000));
        let p = from_cmdline(&Cmdline::parse(&deep)).unwrap_err();
        assert!(p.message.contains("more than 8 parts"), "{p}");
    }

    #[test]
    fn cmdline_digits_stay_text() {
        let s = from_cmdline(&Cmdline::parse("maculaos.hostname=0123")).unwrap();
        assert_eq!(get(&s.value, "maculaos.hostname").unwrap(), "0123");
    }

    #[test]
    fn cmdline_errors_name_the_command_line() {
        let p = from_cmdline(&Cmdline::parse("maculaos.hostnme=x")).unwrap_err();
        assert_eq!(p.source, CMDLINE);
        assert!(p.message.contains("did you mean `hostname`?"), "{p}");
        let p = from_cmdline(&Cmdline::parse("maculaos.hostname=a_b")).unwrap_err();
        assert!(p.message.contains("not a valid hostname"), "{p}");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2Bc"), "a b+c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%+1"), "%+1");
        assert_eq!(percent_decode("%aé%C3%A9"), "%aéé");
    }
}
