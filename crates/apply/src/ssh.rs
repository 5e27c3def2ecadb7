//! SSH keys of the admin user.
//!
//! The configuration's keys go to `/etc/ssh/authorized_keys.d/macula`, a file
//! the configuration owns whole: a key removed from the configuration is gone
//! at the next apply. sshd reads it besides `~/.ssh/authorized_keys`
//! (`AuthorizedKeysFile` in the image's sshd_config.d/10-maculaos.conf), so
//! keys added there by hand keep working and are never touched.

use crate::applier::{Applier, HEADER, ROOT_OWNER};
use crate::ADMIN_USER;
use maculaos_config::Config;

const AREA: &str = "ssh";

/// Where the admin user's configured keys live.
pub(crate) fn keys_path() -> String {
    format!("/etc/ssh/authorized_keys.d/{ADMIN_USER}")
}

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    let keys = config.ssh_keys();
    let path = keys_path();
    if keys.is_empty() {
        a.remove_file(AREA, &path)?;
        return Ok(());
    }
    let mut text = format!("{HEADER}# Keys added by hand belong in ~/.ssh/authorized_keys.\n");
    for k in &keys {
        text.push_str(k);
        text.push('\n');
    }
    // Root-owned and not writable by others, or sshd (StrictModes) ignores it.
    a.put_file(AREA, &path, text.as_bytes(), 0o644, ROOT_OWNER)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::tests::{apply_twice, opts, yaml};
    use std::fs;

    const K1: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB one@host";
    const K2: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB two@host";

    #[test]
    fn config_keys_are_written_whole_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        let file = d.path().join("etc/ssh/authorized_keys.d/macula");
        let both = format!("maculaos: {{ssh: {{authorized_keys: ['{K1}']}}}}\nssh_authorized_keys: ['{K2}', '{K1}']");
        let r = apply_twice(&yaml(&both), &o);
        assert!(r
            .changes
            .contains(&"ssh: wrote /etc/ssh/authorized_keys.d/macula".to_string()));
        let text = fs::read_to_string(&file).unwrap();
        assert!(text.ends_with(&format!("{K1}\n{K2}\n")), "{text}");
        assert!(text.starts_with("# Written by `maculaos apply`"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o644
        );

        apply_twice(&yaml(&format!("ssh_authorized_keys: ['{K2}']")), &o);
        assert!(
            !fs::read_to_string(&file).unwrap().contains(K1),
            "removed key is gone"
        );

        let r = apply_twice(&yaml(""), &o);
        assert!(r
            .changes
            .contains(&"ssh: removed /etc/ssh/authorized_keys.d/macula".to_string()));
        assert!(!file.exists());
    }

    #[test]
    fn sshd_reads_the_config_keys_and_the_hand_added_ones() {
        let conf = include_str!("../../../image/overlay/etc/ssh/sshd_config.d/10-maculaos.conf");
        assert!(conf
            .lines()
            .any(|l| l == "AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys.d/%u"));
    }
}
