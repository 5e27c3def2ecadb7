//! Users and groups, looked up in the files of the root being configured
//! (not through NSS: the root may not be the running system).

use maculaos_config::values::Owner;
use std::fs;
use std::path::{Path, PathBuf};

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

/// A group's gid from a group file.
pub fn lookup_group(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 3 && f[0] == name {
            f[2].parse().ok()
        } else {
            None
        }
    })
}

/// The uid and gid of `user[:group]` under `root`. Without a group, the
/// user's primary group. Numeric ids are accepted when no name matches.
pub(crate) fn resolve_owner(root: &Path, owner: &Owner) -> Result<(u32, u32), String> {
    let s = owner.as_str();
    let (user, group) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let (uid, primary_gid) = if user == "root" {
        (0, 0)
    } else {
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
        match lookup_user(&passwd, user) {
            Some((uid, gid, _)) => (uid, gid),
            None => match user.parse::<u32>() {
                Ok(uid) => (uid, uid),
                Err(_) => {
                    return Err(format!(
                        "no user `{user}` in /etc/passwd (create it first, or give a numeric uid)"
                    ))
                }
            },
        }
    };
    let gid = match group {
        None => primary_gid,
        Some("root") => 0,
        Some(g) => {
            let groups = fs::read_to_string(root.join("etc/group")).unwrap_or_default();
            match (lookup_group(&groups, g), g.parse::<u32>()) {
                (Some(gid), _) | (None, Ok(gid)) => gid,
                (None, Err(_)) => {
                    return Err(format!(
                        "no group `{g}` in /etc/group (create it first, or give a numeric gid)"
                    ))
                }
            }
        }
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let p = "root:x:0:0:root:/root:/bin/bash\nmacula:x:1000:1000:MaculaOS admin:/home/macula:/bin/bash\n";
        assert_eq!(
            lookup_user(p, "macula"),
            Some((1000, 1000, PathBuf::from("/home/macula")))
        );
        assert_eq!(lookup_user(p, "nobody"), None);
        assert_eq!(lookup_group("adm:x:4:\nweb:x:33:a,b\n", "web"), Some(33));
        assert_eq!(lookup_group("adm:x:4:\n", "web"), None);
    }

    #[test]
    fn owners_resolve_in_the_root() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            "macula:x:1000:1001::/home/macula:/bin/bash\n",
        )
        .unwrap();
        fs::write(d.path().join("etc/group"), "web:x:33:\n").unwrap();
        let o = |s: &str| resolve_owner(d.path(), &s.parse().unwrap());
        assert_eq!(o("root:root"), Ok((0, 0)));
        assert_eq!(o("macula"), Ok((1000, 1001)));
        assert_eq!(o("macula:web"), Ok((1000, 33)));
        assert_eq!(o("500:600"), Ok((500, 600)));
        assert!(o("bob").unwrap_err().contains("no user `bob`"));
        assert!(o("macula:nogroup")
            .unwrap_err()
            .contains("no group `nogroup`"));
    }
}
