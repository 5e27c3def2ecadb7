//! `maculaos apply`: makes the node match its configuration.
//!
//! Today the only source is the kernel command line and the only setting is
//! `maculaos.ssh_authorized_keys="<key>[;<key>…]"`, which lets a VM or a
//! bootloader hand the admin user (`macula`) its SSH keys. The declarative
//! config.yaml with its datasources and applicators grows from here.

use maculaos_boot::Cmdline;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const ADMIN_USER: &str = "macula";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("user {user} is not in {passwd}: the image is missing its admin user")]
    NoUser { user: String, passwd: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ApplyError {
    let path = path.to_owned();
    move |source| ApplyError::Io { action, path, source }
}

/// SSH public keys from `maculaos.ssh_authorized_keys` (several separated by `;`).
pub fn ssh_keys_from_cmdline(c: &Cmdline) -> Vec<String> {
    c.get("maculaos.ssh_authorized_keys")
        .map(|v| {
            v.split(';')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A user's uid, gid and home from a passwd file.
pub fn lookup_user(passwd: &str, user: &str) -> Option<(u32, u32, PathBuf)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 6 && f[0] == user {
            Some((f[2].parse().ok()?, f[3].parse().ok()?, PathBuf::from(f[5])))
        } else {
            None
        }
    })
}

/// Make `home/.ssh/authorized_keys` hold `keys` (those not yet there are
/// appended; keys added by hand stay). Returns whether the file changed.
pub fn ensure_authorized_keys(home: &Path, uid: u32, gid: u32, keys: &[String]) -> Result<bool, ApplyError> {
    if keys.is_empty() {
        return Ok(false);
    }
    let dir = home.join(".ssh");
    let file = dir.join("authorized_keys");
    let existing = fs::read_to_string(&file).unwrap_or_default();
    let missing: Vec<&String> = keys.iter().filter(|k| !existing.lines().any(|l| l.trim() == k.as_str())).collect();
    if missing.is_empty() {
        return Ok(false);
    }
    fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io("setting mode of", &dir))?;
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for k in missing {
        text.push_str(k);
        text.push('\n');
    }
    let tmp = dir.join(".authorized_keys.new");
    fs::write(&tmp, text).map_err(io("writing", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(io("setting mode of", &tmp))?;
    chown(&dir, uid, gid)?;
    chown(&tmp, uid, gid)?;
    fs::rename(&tmp, &file).map_err(io("replacing", &file))?;
    Ok(true)
}

fn chown(p: &Path, uid: u32, gid: u32) -> Result<(), ApplyError> {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(io("changing owner of", p))
}

/// What one run changed, for the journal.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub changes: Vec<String>,
}

/// Apply everything, reading from `root` (`/` on a node).
pub fn apply(root: &Path) -> Result<Report, ApplyError> {
    let mut report = Report::default();
    let cmdline = Cmdline::parse(&fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default());
    let keys = ssh_keys_from_cmdline(&cmdline);
    if !keys.is_empty() {
        let passwd_path = root.join("etc/passwd");
        let passwd = fs::read_to_string(&passwd_path).map_err(io("reading", &passwd_path))?;
        let (uid, gid, home) = lookup_user(&passwd, ADMIN_USER)
            .ok_or_else(|| ApplyError::NoUser { user: ADMIN_USER.into(), passwd: passwd_path.clone() })?;
        let home = root.join(home.strip_prefix("/").unwrap_or(&home));
        if ensure_authorized_keys(&home, uid, gid, &keys)? {
            report.changes.push(format!("ssh: {} key(s) for {ADMIN_USER} from the kernel command line", keys.len()));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(p: &Path) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(p).unwrap();
        (m.uid(), m.gid())
    }

    #[test]
    fn keys_come_from_cmdline() {
        let c = Cmdline::parse("quiet maculaos.ssh_authorized_keys=\"ssh-ed25519 AAAA a@b; ssh-rsa BBBB c@d\"");
        assert_eq!(ssh_keys_from_cmdline(&c), vec!["ssh-ed25519 AAAA a@b", "ssh-rsa BBBB c@d"]);
        assert!(ssh_keys_from_cmdline(&Cmdline::parse("quiet")).is_empty());
    }

    #[test]
    fn passwd_lookup() {
        let p = "root:x:0:0:root:/root:/bin/bash\nmacula:x:1000:1000:MaculaOS admin:/home/macula:/bin/bash\n";
        assert_eq!(lookup_user(p, "macula"), Some((1000, 1000, PathBuf::from("/home/macula"))));
        assert_eq!(lookup_user(p, "nobody"), None);
    }

    #[test]
    fn keys_are_added_once_and_hand_added_keys_stay() {
        let d = tempfile::tempdir().unwrap();
        let (uid, gid) = owner(d.path());
        let f = d.path().join(".ssh/authorized_keys");
        fs::create_dir_all(d.path().join(".ssh")).unwrap();
        fs::write(&f, "ssh-ed25519 HAND x@y").unwrap();
        let keys = vec!["ssh-ed25519 AAAA a@b".to_string()];
        assert!(ensure_authorized_keys(d.path(), uid, gid, &keys).unwrap());
        assert!(!ensure_authorized_keys(d.path(), uid, gid, &keys).unwrap(), "second run changes nothing");
        let text = fs::read_to_string(&f).unwrap();
        assert_eq!(text, "ssh-ed25519 HAND x@y\nssh-ed25519 AAAA a@b\n");
        let mode = fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn apply_on_a_fake_root() {
        let d = tempfile::tempdir().unwrap();
        let (uid, gid) = owner(d.path());
        fs::create_dir_all(d.path().join("proc")).unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::create_dir_all(d.path().join("home/macula")).unwrap();
        fs::write(d.path().join("proc/cmdline"), "maculaos.ssh_authorized_keys=\"ssh-ed25519 K t\"").unwrap();
        fs::write(d.path().join("etc/passwd"), format!("macula:x:{uid}:{gid}::/home/macula:/bin/bash\n")).unwrap();
        let r = apply(d.path()).unwrap();
        assert_eq!(r.changes.len(), 1);
        assert_eq!(apply(d.path()).unwrap(), Report::default());
    }
}
