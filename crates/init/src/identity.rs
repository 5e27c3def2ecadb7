//! The node's identity, kept on the data partition so it survives root
//! updates and is never baked into an image shared by many nodes.

use crate::error::InitError;
use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// SSH host key types generated on first boot, in the order sshd offers them.
/// No RSA: every OpenSSH since 6.5 (2014) speaks ed25519, and generating a
/// 3072-bit RSA key is most of first boot's key time on a slow CPU.
pub const SSH_KEY_TYPES: [&str; 2] = ["ed25519", "ecdsa"];

/// A machine id as systemd wants it: 32 lowercase hex digits, not all zero.
pub fn is_valid_machine_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// Format 16 random bytes as a machine id, marked as a random (version 4)
/// UUID the way systemd makes its own, so tools that parse it as a UUID agree.
pub fn format_machine_id(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh machine id from the kernel's getrandom(2), which waits for the
/// random pool to be seeded: identical ids on cloned machines are what
/// this must never produce.
pub fn new_machine_id() -> Result<String, InitError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(InitError::Random)?;
    Ok(format_machine_id(bytes))
}

/// Where a machine id came from this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineIdOrigin {
    /// Read back from the state directory.
    Kept,
    /// None yet: made now (first boot).
    Created,
    /// The saved one was unreadable as an id and was replaced.
    Replaced,
}

/// Create `dir` (and parents) if needed and make it private: it holds the
/// host keys.
pub fn ensure_private_dir(dir: &Path) -> Result<(), InitError> {
    fs::create_dir_all(dir).map_err(InitError::io("creating directory", dir))?;
    fs::set_permissions(dir, Permissions::from_mode(0o700))
        .map_err(InitError::io("setting the mode of", dir))
}

/// The machine id saved in `state_dir/machine-id`, or a new one saved there.
pub fn ensure_machine_id(state_dir: &Path) -> Result<(String, MachineIdOrigin), InitError> {
    let path = state_dir.join("machine-id");
    let origin = match fs::read_to_string(&path) {
        Ok(text) if is_valid_machine_id(text.trim()) => {
            return Ok((text.trim().to_string(), MachineIdOrigin::Kept))
        }
        Ok(_) => MachineIdOrigin::Replaced,
        Err(e) if e.kind() == io::ErrorKind::NotFound => MachineIdOrigin::Created,
        Err(e) => return Err(InitError::io("reading", &path)(e)),
    };
    let id = new_machine_id()?;
    write_durably(&path, format!("{id}\n").as_bytes(), 0o444)?;
    Ok((id, origin))
}

/// Write a file so that after a power cut it holds either the old or the
/// new content: temporary file, fsync, rename, fsync of the directory.
pub fn write_durably(path: &Path, content: &[u8], mode: u32) -> Result<(), InitError> {
    let tmp = path.with_extension("new");
    // A leftover from an interrupted write may be read-only.
    let _ = fs::remove_file(&tmp);
    let mut f = File::create(&tmp).map_err(InitError::io("creating", &tmp))?;
    f.write_all(content)
        .map_err(InitError::io("writing", &tmp))?;
    f.set_permissions(Permissions::from_mode(mode))
        .map_err(InitError::io("setting the mode of", &tmp))?;
    f.sync_all().map_err(InitError::io("syncing", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(InitError::io("renaming to", path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(InitError::io("syncing directory", dir))?;
    }
    Ok(())
}

/// File name of a host key of this type.
pub fn host_key_name(key_type: &str) -> String {
    format!("ssh_host_{key_type}_key")
}

/// Key types whose private key is not in `ssh_dir` yet.
pub fn missing_host_keys(ssh_dir: &Path) -> Vec<&'static str> {
    SSH_KEY_TYPES
        .iter()
        .copied()
        .filter(|t| !ssh_dir.join(host_key_name(t)).exists())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn machine_id_format() {
        let id = format_machine_id([0xff; 16]);
        assert_eq!(id, "ffffffffffff4fffbfffffffffffffff");
        assert!(is_valid_machine_id(&id));
        assert!(!is_valid_machine_id("FFFFFFFFFFFF4FFFBFFFFFFFFFFFFFFF"));
        assert!(!is_valid_machine_id("00000000000000000000000000000000"));
        assert!(!is_valid_machine_id("uninitialized"));
        assert!(!is_valid_machine_id(""));
        let a = new_machine_id().unwrap();
        let b = new_machine_id().unwrap();
        assert!(is_valid_machine_id(&a) && a != b);
    }

    #[test]
    fn machine_id_is_created_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("var/lib/maculaos");
        ensure_private_dir(&state).unwrap();
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        let (id, origin) = ensure_machine_id(&state).unwrap();
        assert_eq!(origin, MachineIdOrigin::Created);
        assert_eq!(
            fs::read_to_string(state.join("machine-id")).unwrap(),
            format!("{id}\n")
        );
        assert!(!state.join("machine-id.new").exists());
        assert_eq!(
            ensure_machine_id(&state).unwrap(),
            (id, MachineIdOrigin::Kept)
        );
        fs::remove_file(state.join("machine-id")).unwrap();
        fs::write(state.join("machine-id"), "garbage\n").unwrap();
        let (id2, origin) = ensure_machine_id(&state).unwrap();
        assert_eq!(origin, MachineIdOrigin::Replaced);
        assert!(is_valid_machine_id(&id2));
    }

    #[test]
    fn missing_keys() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(missing_host_keys(dir.path()), SSH_KEY_TYPES);
        fs::write(dir.path().join("ssh_host_ed25519_key"), "k").unwrap();
        fs::write(dir.path().join("ssh_host_ecdsa_key.pub"), "k").unwrap();
        // A public key without its private key does not count.
        assert_eq!(missing_host_keys(dir.path()), ["ecdsa"]);
    }
}
