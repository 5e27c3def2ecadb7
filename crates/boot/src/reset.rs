//! Factory reset: `maculaos factory-reset` leaves a request at the root of
//! the data partition and reboots; `maculaos-init` carries it out on the
//! next boot, after mounting the partition and before anything uses it.
//! Doing it from the initramfs means it works on a node too broken to
//! finish booting, and nothing running holds the files being removed.
//!
//! What goes: everything on the data partition (the node's configuration,
//! credentials and identity in `/var/lib/maculaos`, k3s state, logs, home
//! directories), which init then seeds again from the image as on a first
//! boot. What stays: both OS slots (not on this partition), `lost+found`,
//! with `keep_data` the user data in `/var/lib/data`, and with
//! `keep_network` the network settings, written back as a `config.d` file.
//!
//! The request is removed last: a power cut in the middle of a reset leaves
//! it in place, and the next boot simply wipes again.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The request, at the root of the data partition (`/var` on a running
/// node). Outside `/var/lib/maculaos` so that wiping that directory does not
/// lose it halfway.
pub const RESET_REQUEST: &str = ".maculaos-factory-reset.json";
/// Where the kept network settings go, relative to the data partition.
pub const KEPT_NETWORK: &str = "lib/maculaos/config.d/10-kept-network.yaml";
/// Kept with `keep_data`, relative to the data partition.
const USER_DATA: &str = "lib/data";

/// What the operator asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetRequest {
    /// Keep `/var/lib/data`.
    #[serde(default)]
    pub keep_data: bool,
    /// The network settings (YAML) to keep, when `--keep-network` was given.
    #[serde(default)]
    pub network_yaml: Option<String>,
    /// When it was asked (seconds since the epoch), for the log.
    #[serde(default)]
    pub requested_at: u64,
}

impl ResetRequest {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// What a reset removed and kept.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wiped {
    /// Top-level entries removed (paths relative to the data partition).
    pub removed: Vec<String>,
    /// Entries deliberately kept.
    pub kept: Vec<String>,
}

/// An error of the reset, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("factory reset: {action} {}: {source}", .path.display())]
pub struct ResetError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ResetError + 'a {
    move |source| ResetError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The request on the data partition mounted at `data`, if there is one.
/// A request that cannot be parsed is an error: a reset was asked for, and
/// skipping it silently would leave the operator's credentials in place.
pub fn read_request(data: &Path) -> Result<Option<ResetRequest>, ResetError> {
    let path = data.join(RESET_REQUEST);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| err("parsing", &path)(io::Error::new(io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err("reading", &path)(e)),
    }
}

/// Write the request (for the CLI): to a temporary name, synced, then
/// renamed, so a half-written request never exists.
pub fn write_request(data: &Path, req: &ResetRequest) -> Result<PathBuf, ResetError> {
    let path = data.join(RESET_REQUEST);
    let tmp = data.join(format!("{RESET_REQUEST}.tmp"));
    {
        use std::io::Write;
        let mut f = fs::File::create(&tmp).map_err(err("creating", &tmp))?;
        f.write_all(req.to_json().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(err("writing", &tmp))?;
    }
    fs::rename(&tmp, &path).map_err(err("renaming to", &path))?;
    sync_dir(data)?;
    Ok(path)
}

/// Cancel a pending request; whether there was one.
pub fn cancel_request(data: &Path) -> Result<bool, ResetError> {
    let path = data.join(RESET_REQUEST);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(data).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(err("removing", &path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), ResetError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("syncing", dir))
}

/// Carry out `req` on the data partition mounted at `data`: remove all but
/// what is kept, write the kept network settings, then remove the request.
pub fn wipe(data: &Path, req: &ResetRequest) -> Result<Wiped, ResetError> {
    let mut out = Wiped::default();
    let keep_top = |name: &str| name == RESET_REQUEST || name == "lost+found";
    for entry in read_dir_sorted(data)? {
        let name = entry.to_string_lossy().into_owned();
        let path = data.join(&entry);
        if keep_top(&name) {
            continue;
        }
        if name == "lib" && req.keep_data && path.join("data").is_dir() {
            // Everything under lib/ but the user data.
            for sub in read_dir_sorted(&path)? {
                let rel = format!("lib/{}", sub.to_string_lossy());
                if rel == USER_DATA {
                    out.kept.push(rel);
                    continue;
                }
                remove(&path.join(&sub))?;
                out.removed.push(rel);
            }
            continue;
        }
        remove(&path)?;
        out.removed.push(name);
    }
    if let Some(yaml) = &req.network_yaml {
        let file = data.join(KEPT_NETWORK);
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir).map_err(err("creating directory", dir))?;
        }
        fs::write(&file, yaml).map_err(err("writing", &file))?;
        out.kept.push(KEPT_NETWORK.to_string());
    }
    sync_dir(data)?;
    cancel_request(data)?;
    Ok(out)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<std::ffi::OsString>, ResetError> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(err("reading", dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(err("reading", dir))?;
    names.sort();
    Ok(names)
}

/// Remove a file, symlink or whole tree (a symlink is removed, never
/// followed).
fn remove(path: &Path) -> Result<(), ResetError> {
    let meta = fs::symlink_metadata(path).map_err(err("reading", path))?;
    if meta.is_dir() {
        fs::remove_dir_all(path).map_err(err("removing", path))
    } else {
        fs::remove_file(path).map_err(err("removing", path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        for d in [
            "lib/maculaos/config.d",
            "lib/rancher/k3s/server",
            "lib/data/photos",
            "log/journal",
            "home/macula/.ssh",
            "lost+found",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for (f, c) in [
            ("lib/maculaos/config.yaml", "hostname: x"),
            ("lib/maculaos/ssh/ssh_host_ed25519_key", "secret"),
            ("lib/rancher/k3s/server/token", "k3s-token"),
            ("lib/data/photos/a.jpg", "user bytes"),
            ("log/journal/x", "log"),
            ("home/macula/.ssh/authorized_keys", "ssh-ed25519 AAAA"),
        ] {
            let p = root.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, c).unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", root.join("lib/link")).unwrap();
    }

    #[test]
    fn no_request_no_reset() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_request(d.path()).unwrap(), None);
        assert!(!cancel_request(d.path()).unwrap());
    }

    #[test]
    fn wipes_everything_but_lost_and_found() {
        let d = tempfile::tempdir().unwrap();
        tree(d.path());
        let req = ResetRequest::default();
        write_request(d.path(), &req).unwrap();
        assert_eq!(read_request(d.path()).unwrap(), Some(req.clone()));
        let w = wipe(d.path(), &req).unwrap();
        assert_eq!(w.removed, ["home", "lib", "log"]);
        let left: Vec<_> = read_dir_sorted(d.path()).unwrap();
        assert_eq!(left, ["lost+found"]);
        // The symlink's target was not followed.
        assert!(Path::new("/etc/passwd").exists());
    }

    #[test]
    fn keeps_user_data_and_network() {
        let d = tempfile::tempdir().unwrap();
        tree(d.path());
        let req = ResetRequest {
            keep_data: true,
            network_yaml: Some("network:\n  dhcp: false\n".into()),
            requested_at: 1,
        };
        write_request(d.path(), &req).unwrap();
        let w = wipe(d.path(), &read_request(d.path()).unwrap().unwrap()).unwrap();
        assert!(w.kept.contains(&"lib/data".to_string()), "{w:?}");
        assert_eq!(
            fs::read_to_string(d.path().join("lib/data/photos/a.jpg")).unwrap(),
            "user bytes"
        );
        assert!(!d.path().join("lib/maculaos/config.yaml").exists());
        assert!(!d.path().join("lib/maculaos/ssh").exists());
        assert!(!d.path().join("lib/rancher").exists());
        assert!(!d.path().join("home").exists());
        assert_eq!(
            fs::read_to_string(d.path().join(KEPT_NETWORK)).unwrap(),
            "network:\n  dhcp: false\n"
        );
        // Done: the request is gone, so the next boot does not wipe again.
        assert_eq!(read_request(d.path()).unwrap(), None);
    }

    #[test]
    fn a_damaged_request_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(RESET_REQUEST), "{not json").unwrap();
        let e = read_request(d.path()).unwrap_err().to_string();
        assert!(e.contains(RESET_REQUEST) && e.contains("parsing"), "{e}");
    }
}
