//! LAN discovery (plan §5.1): avahi-daemon publishes the hostname as
//! `<hostname>.local` by itself; this step writes the `_macula._tcp`
//! service it announces beside it, with TXT records other nodes read
//! (`maculaos discover`): id, version, role, realm, configured.
//!
//! avahi-daemon watches /etc/avahi/services and re-announces on a change,
//! so a new realm or the end of the first-boot wizard is seen on the LAN
//! without a restart.

use crate::applier::{Applier, ROOT_OWNER};
use maculaos_config::{Config, CONFIGURED_FLAG};
use std::fs;

const AREA: &str = "mdns";
/// The service file this step owns.
pub const SERVICE_FILE: &str = "/etc/avahi/services/macula.service";
/// The service type MaculaOS nodes announce.
pub const SERVICE_TYPE: &str = "_macula._tcp";
/// The port in the announcement: SSH's, the one service every node runs.
const PORT: u16 = 22;

/// A short, stable id for the node: the first 12 hex digits of its
/// machine-id (kept on the data partition across reboots and updates).
pub fn node_id(machine_id: &str) -> String {
    machine_id.trim().chars().take(12).collect()
}

/// What the node announces in its TXT records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub id: String,
    pub version: String,
    /// Mesh roles in effect, comma separated (`peer,gateway`).
    pub role: String,
    pub realm: String,
    pub configured: bool,
}

impl Announcement {
    /// The TXT records, `key=value`, in a fixed order.
    pub fn txt(&self) -> Vec<String> {
        vec![
            format!("id={}", self.id),
            format!("version={}", self.version),
            format!("role={}", self.role),
            format!("realm={}", self.realm),
            format!("configured={}", if self.configured { "yes" } else { "no" }),
        ]
    }

    /// The avahi service file (avahi.service(5)); `%h` is the hostname.
    pub fn service_file(&self) -> String {
        let mut s = String::from(
            "<?xml version=\"1.0\" standalone='no'?>\n\
             <!DOCTYPE service-group SYSTEM \"avahi-service.dtd\">\n\
             <!-- Written by maculaos apply (mdns step): changes are overwritten. -->\n\
             <service-group>\n  <name replace-wildcards=\"yes\">%h</name>\n  <service>\n",
        );
        s.push_str(&format!(
            "    <type>{SERVICE_TYPE}</type>\n    <port>{PORT}</port>\n"
        ));
        for t in self.txt() {
            s.push_str(&format!(
                "    <txt-record>{}</txt-record>\n",
                maculaos_web::escape(&t)
            ));
        }
        s.push_str("  </service>\n</service-group>\n");
        s
    }
}

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    // No avahi in this root (an image stage, a test tree): nothing listens.
    if !a.path("/etc/avahi").is_dir() {
        return Ok(());
    }
    let machine_id = fs::read_to_string(a.path("/etc/machine-id")).unwrap_or_default();
    let version = fs::read_to_string(a.path("/etc/os-release"))
        .ok()
        .and_then(|t| maculaos_info::os_release_value(&t, "VERSION_ID"))
        .unwrap_or_else(|| "unknown".into());
    let mesh = &config.maculaos.mesh;
    let role = mesh
        .effective_roles()
        .iter()
        .map(|r| r.name())
        .collect::<Vec<_>>()
        .join(",");
    let ann = Announcement {
        id: node_id(&machine_id),
        version,
        role,
        realm: mesh.realm.clone().unwrap_or_default(),
        configured: a.path(CONFIGURED_FLAG).exists(),
    };
    a.put_file(
        AREA,
        SERVICE_FILE,
        ann.service_file().as_bytes(),
        0o644,
        ROOT_OWNER,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{apply_twice, opts, yaml};

    #[test]
    fn announces_roles_realm_and_the_configured_flag() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc/avahi/services")).unwrap();
        fs::create_dir_all(root.join("var/lib/maculaos")).unwrap();
        fs::write(
            root.join("etc/machine-id"),
            "0f3e9a77c0d1aabbccddeeff00112233\n",
        )
        .unwrap();
        fs::write(
            root.join("etc/os-release"),
            "NAME=MaculaOS\nVERSION_ID=\"1.2.3\"\n",
        )
        .unwrap();
        let c = yaml("maculaos:\n  mesh:\n    roles: {gateway: true}\n    realm: io.macula\n");
        apply_twice(&c, &opts(root));
        let text = fs::read_to_string(root.join("etc/avahi/services/macula.service")).unwrap();
        for want in [
            "<type>_macula._tcp</type>",
            "<txt-record>id=0f3e9a77c0d1</txt-record>",
            "<txt-record>version=1.2.3</txt-record>",
            "<txt-record>role=peer,gateway</txt-record>",
            "<txt-record>realm=io.macula</txt-record>",
            "<txt-record>configured=no</txt-record>",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        fs::write(root.join("var/lib/maculaos/.configured"), "").unwrap();
        apply_twice(&c, &opts(root));
        let text = fs::read_to_string(root.join("etc/avahi/services/macula.service")).unwrap();
        assert!(text.contains("configured=yes"), "{text}");
    }

    #[test]
    fn no_avahi_no_file() {
        let dir = tempfile::tempdir().unwrap();
        apply_twice(&yaml(""), &opts(dir.path()));
        assert!(!dir.path().join("etc/avahi").exists());
    }

    #[test]
    fn txt_values_are_escaped() {
        let a = Announcement {
            id: "x".into(),
            version: "1".into(),
            role: "peer".into(),
            realm: "a<b>&".into(),
            configured: false,
        };
        assert!(a.service_file().contains("realm=a&lt;b&gt;&amp;"));
    }
}
