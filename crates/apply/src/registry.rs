//! `maculaos.registry` (plan §4.9.2): where podman pulls images from.
//! Mirrors and registries without TLS go into a drop-in of podman's
//! registries.conf; credentials into the auth file podman reads for root
//! (`/run/containers/0/auth.json`, 0600), used by `maculaos deploy`'s pull
//! and by the units of `services:` alike.
//!
//! With `auth` set, that file is this step's: a `podman login` made by hand
//! is replaced at the next apply. Without it, the file is left alone.

use crate::applier::{Applier, ROOT_OWNER};
use base64::Engine;
use maculaos_config::{Config, Registry};

const AREA: &str = "registry";
/// A drop-in of /etc/containers/registries.conf (read after the image's own).
pub(crate) const CONF: &str = "/etc/containers/registries.conf.d/50-maculaos.conf";
/// Where podman looks for root's credentials when XDG_RUNTIME_DIR is unset
/// (systemd's units, sudo).
pub(crate) const AUTH: &str = "/run/containers/0/auth.json";

/// The registries.conf drop-in for `r` (TOML). Hosts and mirrors have no
/// quotes or backslashes (`RegistryHost`, `RegistryEndpoint`): they go into
/// TOML strings as they are.
fn conf_text(r: &Registry) -> String {
    let mut out = String::from(
        "# Written by maculaos apply from maculaos.registry: change that, not this file.\n",
    );
    let mut hosts: Vec<&str> = r.mirrors.keys().map(|h| h.as_str()).collect();
    for h in &r.insecure {
        if !hosts.contains(&h.as_str()) {
            hosts.push(h.as_str());
        }
    }
    for host in hosts {
        let insecure = r.insecure.iter().any(|h| h.as_str() == host);
        out.push_str(&format!(
            "\n[[registry]]\nprefix = \"{host}\"\nlocation = \"{host}\"\ninsecure = {insecure}\n"
        ));
        let mirrors = r
            .mirrors
            .iter()
            .find(|(h, _)| h.as_str() == host)
            .map(|(_, m)| m.as_slice())
            .unwrap_or_default();
        for m in mirrors {
            let (location, plain) = m.location();
            let insecure = plain || r.insecure.iter().any(|h| h.as_str() == location);
            out.push_str(&format!(
                "\n[[registry.mirror]]\nlocation = \"{location}\"\ninsecure = {insecure}\n"
            ));
        }
    }
    out
}

/// The auth file: `{"auths": {HOST: {"auth": base64(user:password)}}}`.
fn auth_text(r: &Registry) -> String {
    let auths: serde_json::Map<String, serde_json::Value> = r
        .auth
        .iter()
        .map(|(host, a)| {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", a.username, a.password));
            (host.to_string(), serde_json::json!({ "auth": token }))
        })
        .collect();
    serde_json::json!({ "auths": auths }).to_string()
}

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    let r = &config.maculaos.registry;
    if r.mirrors.is_empty() && r.insecure.is_empty() {
        a.remove_file(AREA, CONF)?;
    } else {
        a.put_file(AREA, CONF, conf_text(r).as_bytes(), 0o644, ROOT_OWNER)?;
    }
    if let Some((host, _)) = r.auth.iter().find(|(_, x)| x.username.contains(':')) {
        return Err(format!(
            "maculaos.registry.auth.{host}.username: a user name cannot hold ':'"
        ));
    }
    if !r.auth.is_empty() {
        a.put_file(AREA, AUTH, auth_text(r).as_bytes(), 0o600, ROOT_OWNER)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{apply_twice, opts, yaml};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn mirrors_insecure_registries_and_credentials_reach_podman() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        let at = |p: &str| d.path().join(p.trim_start_matches('/'));
        apply_twice(
            &yaml(
                "maculaos:\n  registry:\n    mirrors:\n      docker.io: [http://10.0.2.100:5000, https://mirror.example.com/v2]\n    \
                 insecure: [10.0.2.100:5000]\n    auth:\n      10.0.2.100:5000: {username: ci, password: s3cret}\n",
            ),
            &o,
        );
        let conf = fs::read_to_string(at(CONF)).unwrap();
        assert_eq!(
            conf,
            "# Written by maculaos apply from maculaos.registry: change that, not this file.\n\
             \n[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\ninsecure = false\n\
             \n[[registry.mirror]]\nlocation = \"10.0.2.100:5000\"\ninsecure = true\n\
             \n[[registry.mirror]]\nlocation = \"mirror.example.com/v2\"\ninsecure = false\n\
             \n[[registry]]\nprefix = \"10.0.2.100:5000\"\nlocation = \"10.0.2.100:5000\"\ninsecure = true\n"
        );
        let auth = at(AUTH);
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&auth).unwrap()).unwrap();
        assert_eq!(v["auths"]["10.0.2.100:5000"]["auth"], "Y2k6czNjcmV0");
        assert_eq!(
            fs::metadata(&auth).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // Gone from the configuration: the drop-in goes; the auth file is
        // left (it may be a `podman login` of the operator's).
        apply_twice(&yaml(""), &o);
        assert!(!at(CONF).exists());
    }
}
