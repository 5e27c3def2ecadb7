//! The configuration the installed node starts with: checked by the config
//! crate exactly as the node will read it, and stored on its data
//! partition as `/var/lib/maculaos/config.yaml`.

use crate::error::{io_err, InstallError};
use maculaos_config::load::{check, merge, read_sources, redact};
use maculaos_config::sources::{self, Format};
use maculaos_config::{Config, Install, Paths, Problem};
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};
use std::path::Path;

fn config_err(problems: &[Problem]) -> InstallError {
    InstallError::Config {
        problems: maculaos_config::error::render(problems)
            .trim_end()
            .to_string(),
    }
}

/// Parse and check `text` as a MaculaOS `config.yaml` named `name`, the
/// way the node reads `/var/lib/maculaos/config.yaml` (the schema, then the
/// checks across keys). Errors carry `name:line:column`.
pub fn check_text(name: &str, text: &str) -> Result<Config, InstallError> {
    let source = sources::parse(name, text, Format::Maculaos).map_err(|p| config_err(&[p]))?;
    let (value, prov) = merge(std::slice::from_ref(&source));
    let config =
        Config::deserialize(value).map_err(|e| config_err(&[Problem::from_yaml(name, &e)]))?;
    let problems = check(&config, &prov);
    if !problems.is_empty() {
        return Err(config_err(&problems));
    }
    Ok(config)
}

/// A configuration file given with `maculaos install --config FILE`.
#[derive(Debug, Clone)]
pub struct FileConfig {
    /// The file as it is: what the installed node stores, comments and all.
    pub text: String,
    pub config: Config,
}

impl FileConfig {
    pub fn install(&self) -> &Install {
        &self.config.maculaos.install
    }
}

/// Read and check `path` (see [`check_text`]).
pub fn from_file(path: &Path) -> Result<FileConfig, InstallError> {
    let text = std::fs::read_to_string(path).map_err(io_err(format!(
        "reading the configuration {}",
        path.display()
    )))?;
    let config = check_text(&path.display().to_string(), &text)?;
    Ok(FileConfig { text, config })
}

/// The running (live) system's configuration, for `maculaos install --auto`.
#[derive(Debug, Clone)]
pub struct Effective {
    /// Everything in effect (image defaults included): its `install:` drives the install.
    pub config: Config,
    /// What the installed node stores: the sources the user gave (the
    /// node's files, config.d, NoCloud, the kernel command line; not the
    /// image defaults, which the installed node has anyway), merged, without
    /// `maculaos.install`, as YAML.
    pub stored: String,
}

impl Effective {
    pub fn install(&self) -> &Install {
        &self.config.maculaos.install
    }
}

/// Load the configuration of the running system through the loader every
/// `maculaos` command uses. Any problem in a source is an error here: the
/// installer does not fall back to an older configuration as `apply` does.
pub fn effective(paths: &Paths) -> Result<Effective, InstallError> {
    let loaded = maculaos_config::load(paths);
    if !loaded.problems.is_empty() {
        return Err(config_err(&loaded.problems));
    }
    let defaults = Paths::system().defaults().display().to_string();
    let (mut given, _) = read_sources(paths);
    given.retain(|s| s.name != defaults);
    let (mut value, _) = merge(&given);
    remove_install(&mut value);
    let stored = stored_yaml(
        &value,
        "from the configuration of the installer (maculaos install --auto)",
    )?;
    check_text("the configuration to store", &stored)?;
    Ok(Effective {
        config: loaded.config,
        stored,
    })
}

/// Drop `maculaos.install` (and `maculaos:` if nothing else is left in it):
/// the installed node has no use for how it was installed.
pub fn remove_install(value: &mut Value) {
    let Value::Mapping(top) = value else { return };
    let key = Value::String("maculaos".into());
    let empty = match top.get_mut(&key) {
        Some(Value::Mapping(m)) => {
            m.remove("install");
            m.is_empty()
        }
        _ => false,
    };
    if empty {
        top.remove(&key);
    }
}

/// `value` as the YAML file the node stores, with a header saying where it
/// came from.
pub fn stored_yaml(value: &Value, origin: &str) -> Result<String, InstallError> {
    let body = match value {
        Value::Mapping(m) if m.is_empty() => String::new(),
        Value::Null => String::new(),
        v => serde_yaml_ng::to_string(v).map_err(|e| InstallError::Config {
            problems: format!("the configuration cannot be written as YAML: {e}"),
        })?,
    };
    Ok(format!(
        "# This node's configuration (/var/lib/maculaos/config.yaml), written by\n\
         # `maculaos install` {origin}.\n\
         # Change it, then run `sudo maculaos apply`.\n{body}"
    ))
}

/// `yaml` with tokens and passwords replaced by `<redacted>`, for showing.
pub fn redacted(yaml: &str) -> String {
    match serde_yaml_ng::from_str::<Value>(yaml) {
        Ok(Value::Null) => "{}\n".to_string(),
        Ok(v) => serde_yaml_ng::to_string(&redact(&v)).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// `install.config_url` is not supported yet: say so rather than ignore it.
pub fn refuse_config_url(install: &Install) -> Result<(), InstallError> {
    match &install.config_url {
        Some(_) => Err(InstallError::ConfigUrlUnsupported),
        None => Ok(()),
    }
}

/// Set `path` in a YAML map, e.g. `(["maculaos", "hostname"], "x")`,
/// making the maps on the way (the config crate's own helper).
pub(crate) fn set(map: &mut Mapping, path: &[&str], v: Value) {
    maculaos_config::sources::set_path(map, path, v, true);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB me@host";

    #[test]
    fn errors_carry_file_line_and_column() {
        let e = check_text("/tmp/install.yaml", "maculaos:\n  hostnme: x\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the configuration has errors; nothing was written:\n\
             /tmp/install.yaml:2:3: maculaos: unknown key `hostnme` in `maculaos` — did you mean `hostname`?"
        );
        let e = check_text("f.yaml", "k3s:\n  role: agent\n").unwrap_err();
        assert!(e.to_string().contains("f.yaml: k3s: an agent needs"), "{e}");
        let e = check_text("f.yaml", "maculaos:\n  install:\n    device: sda\n").unwrap_err();
        assert!(e.to_string().contains("not a device path"), "{e}");
    }

    #[test]
    fn a_file_is_kept_as_it_is() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("install.yaml");
        let text = format!(
            "# my node\nmaculaos:\n  hostname: edge-1\n  install:\n    device: /dev/vda\n    force: true\nssh_authorized_keys:\n  - {KEY}\n"
        );
        fs::write(&p, &text).unwrap();
        let f = from_file(&p).unwrap();
        assert_eq!(f.text, text);
        assert_eq!(f.install().device.as_deref(), Some("/dev/vda"));
        assert!(f.install().force && !f.install().silent);
        assert!(from_file(&d.path().join("nope.yaml"))
            .unwrap_err()
            .to_string()
            .starts_with("reading the configuration"));
    }

    #[test]
    fn the_effective_config_without_defaults_and_install() {
        let root = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = root.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        };
        w(
            "usr/lib/maculaos/config.yaml",
            "maculaos:\n  modules: [overlay]\n",
        );
        w(
            "var/lib/maculaos/datasource/nocloud/user-data",
            &format!("#cloud-config\nhostname: edge-7\nssh_authorized_keys: ['{KEY}']\nruncmd: [echo hi]\n"),
        );
        w(
            "proc/cmdline",
            "maculaos.mode=install maculaos.install.device=/dev/vda maculaos.install.force console=ttyS0",
        );
        let e = effective(&Paths::new(root.path())).unwrap();
        assert_eq!(e.install().device.as_deref(), Some("/dev/vda"));
        assert!(e.install().force);
        assert_eq!(e.config.maculaos.modules.len(), 1, "defaults are in effect");
        let stored = check_text("stored", &e.stored).unwrap();
        assert_eq!(
            stored.maculaos.hostname.as_ref().unwrap().as_str(),
            "edge-7"
        );
        assert_eq!(stored.ssh_keys(), [KEY]);
        assert_eq!(stored.run_cmd.len(), 1);
        assert!(stored.maculaos.modules.is_empty(), "{}", e.stored);
        assert_eq!(stored.maculaos.install, Install::default());
        assert!(!e.stored.contains("install:"), "{}", e.stored);
        assert!(e.stored.starts_with("# This node's configuration"));
    }

    #[test]
    fn a_broken_running_config_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().join("var/lib/maculaos/config.yaml");
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, "maculaos:\n  hostname: -bad\n").unwrap();
        let e = effective(&Paths::new(root.path())).unwrap_err();
        assert!(
            e.to_string().contains("/var/lib/maculaos/config.yaml:2:"),
            "{e}"
        );
    }

    #[test]
    fn nothing_given_stores_an_empty_config() {
        let root = tempfile::tempdir().unwrap();
        let e = effective(&Paths::new(root.path())).unwrap();
        assert_eq!(e.install().device, None);
        assert_eq!(check_text("x", &e.stored).unwrap(), Config::default());
    }

    #[test]
    fn install_is_removed_and_empty_maculaos_too() {
        let mut v: Value = serde_yaml_ng::from_str(
            "maculaos:\n  install:\n    device: /dev/sda\nk3s:\n  role: server\n",
        )
        .unwrap();
        remove_install(&mut v);
        assert_eq!(
            serde_yaml_ng::to_string(&v).unwrap(),
            "k3s:\n  role: server\n"
        );
        let mut v: Value =
            serde_yaml_ng::from_str("maculaos:\n  hostname: a\n  install:\n    silent: true\n")
                .unwrap();
        remove_install(&mut v);
        assert_eq!(
            serde_yaml_ng::to_string(&v).unwrap(),
            "maculaos:\n  hostname: a\n"
        );
    }

    #[test]
    fn secrets_are_not_shown() {
        let r = redacted("k3s:\n  role: agent\n  token: s3cret\n");
        assert!(r.contains("<redacted>") && !r.contains("s3cret"), "{r}");
        assert_eq!(redacted("# nothing\n"), "{}\n");
    }

    #[test]
    fn config_url_is_refused() {
        let i = Install {
            config_url: Some("https://example.test/c.yaml".into()),
            ..Install::default()
        };
        assert_eq!(
            refuse_config_url(&i).unwrap_err().to_string(),
            "install.config_url is not supported yet; put the configuration in the install config itself"
        );
        assert!(refuse_config_url(&Install::default()).is_ok());
    }
}
