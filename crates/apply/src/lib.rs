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
    move |source| ApplyError::Io {
        action,
        path,
        source,
    }
}

/// SSH public keys from `maculaos.ssh_authorized_keys` (several separated by
/// `;`). Spaces may be written `%20`: GRUB escapes double quotes when it
/// builds the command line, so a quoted value with spaces cannot pass through it.
pub fn ssh_keys_from_cmdline(c: &Cmdline) -> Vec<String> {
    c.get("maculaos.ssh_authorized_keys")
        .map(|v| {
            percent_decode(v)
                .split(';')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Decode `%XX` escapes; anything malformed stays as it is.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
pub fn ensure_authorized_keys(
    home: &Path,
    uid: u32,
    gid: u32,
    keys: &[String],
) -> Result<bool, ApplyError> {
    if keys.is_empty() {
        return Ok(false);
    }
    let dir = home.join(".ssh");
    let file = dir.join("authorized_keys");
    let existing = fs::read_to_string(&file).unwrap_or_default();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !existing.lines().any(|l| l.trim() == k.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(io("setting mode of", &dir))?;
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
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
        .map_err(io("setting mode of", &tmp))?;
    chown(&dir, uid, gid)?;
    chown(&tmp, uid, gid)?;
    fs::rename(&tmp, &file).map_err(io("replacing", &file))?;
    Ok(true)
}

fn chown(p: &Path, uid: u32, gid: u32) -> Result<(), ApplyError> {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(io("changing owner of", p))
}

/// The default hostname `macula-XXXX`, XXXX the last four hex digits of the
/// primary MAC address (stable across reboots and reinstalls), else of the
/// machine-id.
pub fn default_hostname(primary_mac: Option<&str>, machine_id: &str) -> String {
    let hex: String = match primary_mac {
        Some(mac) => mac.chars().filter(|c| c.is_ascii_hexdigit()).collect(),
        None => machine_id
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .collect(),
    };
    let tail = if primary_mac.is_some() {
        &hex[hex.len().saturating_sub(4)..]
    } else {
        &hex[..hex.len().min(4)]
    };
    if tail.is_empty() {
        "macula".to_string()
    } else {
        format!("macula-{}", tail.to_ascii_lowercase())
    }
}

/// The MAC of the first wired interface backed by a device, by name order.
pub fn primary_mac(sys_class_net: &Path) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(sys_class_net)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().find_map(|n| {
        let dir = sys_class_net.join(&n);
        let is_ether = fs::read_to_string(dir.join("type")).is_ok_and(|t| t.trim() == "1");
        if !is_ether || !dir.join("device").exists() {
            return None;
        }
        let mac = fs::read_to_string(dir.join("address"))
            .ok()?
            .trim()
            .to_string();
        (mac != "00:00:00:00:00:00").then_some(mac)
    })
}

/// /etc/hosts that resolves the node's own name (sudo and others ask).
pub fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
}

/// Set the hostname (default `macula-XXXX`) in /etc/hostname, /etc/hosts and the kernel.
fn apply_hostname(root: &Path, report: &mut Report) -> Result<(), ApplyError> {
    // The NIC driver may still be loading (udev) when we start: give it a moment.
    let net = root.join("sys/class/net");
    let wait = if root == Path::new("/") { 10 } else { 0 };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    let mut mac = primary_mac(&net);
    while mac.is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        mac = primary_mac(&net);
    }
    let machine_id = fs::read_to_string(root.join("etc/machine-id")).unwrap_or_default();
    let name = default_hostname(mac.as_deref(), machine_id.trim());
    let hostname_file = root.join("etc/hostname");
    let current = fs::read_to_string(&hostname_file).unwrap_or_default();
    if current.trim() != name {
        fs::write(&hostname_file, format!("{name}\n")).map_err(io("writing", &hostname_file))?;
        report.changes.push(format!("hostname: {name}"));
    }
    let hosts = root.join("etc/hosts");
    if fs::read_to_string(&hosts).unwrap_or_default() != hosts_file(&name) {
        fs::write(&hosts, hosts_file(&name)).map_err(io("writing", &hosts))?;
    }
    if root == Path::new("/") {
        let running = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        if running.trim() != name {
            fs::write("/proc/sys/kernel/hostname", &name).map_err(io(
                "setting the hostname through",
                Path::new("/proc/sys/kernel/hostname"),
            ))?;
        }
    }
    Ok(())
}

/// What one run changed, for the journal.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub changes: Vec<String>,
}

/// Apply everything, reading from `root` (`/` on a node).
pub fn apply(root: &Path) -> Result<Report, ApplyError> {
    let mut report = Report::default();
    apply_hostname(root, &mut report)?;
    let cmdline =
        Cmdline::parse(&fs::read_to_string(root.join("proc/cmdline")).unwrap_or_default());
    let keys = ssh_keys_from_cmdline(&cmdline);
    if !keys.is_empty() {
        let passwd_path = root.join("etc/passwd");
        let passwd = fs::read_to_string(&passwd_path).map_err(io("reading", &passwd_path))?;
        let (uid, gid, home) =
            lookup_user(&passwd, ADMIN_USER).ok_or_else(|| ApplyError::NoUser {
                user: ADMIN_USER.into(),
                passwd: passwd_path.clone(),
            })?;
        let home = root.join(home.strip_prefix("/").unwrap_or(&home));
        if ensure_authorized_keys(&home, uid, gid, &keys)? {
            report.changes.push(format!(
                "ssh: {} key(s) for {ADMIN_USER} from the kernel command line",
                keys.len()
            ));
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
        let c = Cmdline::parse(
            "quiet maculaos.ssh_authorized_keys=\"ssh-ed25519 AAAA a@b; ssh-rsa BBBB c@d\"",
        );
        assert_eq!(
            ssh_keys_from_cmdline(&c),
            vec!["ssh-ed25519 AAAA a@b", "ssh-rsa BBBB c@d"]
        );
        assert!(ssh_keys_from_cmdline(&Cmdline::parse("quiet")).is_empty());
        let c = Cmdline::parse(
            "maculaos.ssh_authorized_keys=ssh-ed25519%20AAAA%20a@b;ssh-rsa%20BB%2BB",
        );
        assert_eq!(
            ssh_keys_from_cmdline(&c),
            vec!["ssh-ed25519 AAAA a@b", "ssh-rsa BB+B"]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn hostname_from_mac_or_machine_id() {
        assert_eq!(
            default_hostname(Some("52:54:00:12:AB:56"), "x"),
            "macula-ab56"
        );
        assert_eq!(default_hostname(None, "0f3e9a77c0d1"), "macula-0f3e");
        assert_eq!(default_hostname(None, ""), "macula");
    }

    #[test]
    fn primary_mac_skips_virtual_and_loopback() {
        let d = tempfile::tempdir().unwrap();
        let mk = |n: &str, t: &str, mac: &str, dev: bool| {
            let p = d.path().join(n);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("type"), t).unwrap();
            fs::write(p.join("address"), mac).unwrap();
            if dev {
                fs::create_dir_all(p.join("device")).unwrap();
            }
        };
        mk("lo", "772", "00:00:00:00:00:00", false);
        mk("br0", "1", "aa:aa:aa:aa:aa:aa", false);
        mk("enp0s3", "1", "52:54:00:12:34:56\n", true);
        mk("enp1s0", "1", "52:54:00:ff:ff:ff", true);
        assert_eq!(primary_mac(d.path()).as_deref(), Some("52:54:00:12:34:56"));
    }

    #[test]
    fn passwd_lookup() {
        let p = "root:x:0:0:root:/root:/bin/bash\nmacula:x:1000:1000:MaculaOS admin:/home/macula:/bin/bash\n";
        assert_eq!(
            lookup_user(p, "macula"),
            Some((1000, 1000, PathBuf::from("/home/macula")))
        );
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
        assert!(
            !ensure_authorized_keys(d.path(), uid, gid, &keys).unwrap(),
            "second run changes nothing"
        );
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
        fs::write(
            d.path().join("proc/cmdline"),
            "maculaos.ssh_authorized_keys=\"ssh-ed25519 K t\"",
        )
        .unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            format!("macula:x:{uid}:{gid}::/home/macula:/bin/bash\n"),
        )
        .unwrap();
        let r = apply(d.path()).unwrap();
        assert_eq!(r.changes.len(), 2, "{r:?}");
        assert_eq!(
            fs::read_to_string(d.path().join("etc/hostname")).unwrap(),
            "macula\n"
        );
        assert_eq!(apply(d.path()).unwrap(), Report::default());
    }
}
