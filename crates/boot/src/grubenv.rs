//! GRUB's environment block (`/grub/grubenv` on the ESP): how the node and
//! GRUB talk about which slot to boot. The format is GRUB's: a 1024-byte
//! file starting with `# GRUB Environment Block`, then `name=value` lines,
//! padded with `#`. GRUB's `load_env`/`save_env` and `grub-editenv` read and
//! write it; we read and write it too, so the node needs no GRUB tools.
//!
//! Writes replace the file whole (write a sibling, fsync, rename, fsync the
//! directory): a power cut leaves the old block or the new one, never a mix.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

pub const SIGNATURE: &str = "# GRUB Environment Block\n";
/// GRUB's fixed block size; `save_env` only rewrites a file of this size in place.
pub const SIZE: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrubenvError {
    #[error("{path}: not a GRUB environment block (no `# GRUB Environment Block` header)")]
    NoSignature { path: String },
    #[error("{path}: {len} bytes, not {SIZE}: GRUB would refuse to save to it")]
    BadSize { path: String, len: usize },
    #[error("grubenv: `{name}` is not a variable name (letters, digits, '_')")]
    BadName { name: String },
    #[error("grubenv: the value of {name} holds a newline or a backslash, which we never write")]
    BadValue { name: String },
    #[error("grubenv: the variables take {needed} bytes, more than the {SIZE}-byte block holds")]
    TooBig { needed: usize },
    #[error("{action} {path}: {message}")]
    Io {
        action: &'static str,
        path: String,
        message: String,
    },
}

/// The variables of a block, sorted by name.
pub type Vars = BTreeMap<String, String>;

/// Parse a block. Values GRUB escaped (`\\`, `\` newline) are unescaped.
pub fn parse(bytes: &[u8], path: &str) -> Result<Vars, GrubenvError> {
    if !bytes.starts_with(SIGNATURE.as_bytes()) {
        return Err(GrubenvError::NoSignature { path: path.into() });
    }
    let text = String::from_utf8_lossy(&bytes[SIGNATURE.len()..]);
    let mut vars = Vars::new();
    let mut line = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    line.push(n);
                }
            }
            '\n' => {
                take_line(&line, &mut vars);
                line.clear();
            }
            c => line.push(c),
        }
    }
    Ok(vars)
}

fn take_line(line: &str, vars: &mut Vars) {
    if line.starts_with('#') {
        return;
    }
    if let Some((k, v)) = line.split_once('=') {
        vars.insert(k.to_string(), v.to_string());
    }
}

fn check(vars: &Vars) -> Result<(), GrubenvError> {
    for (k, v) in vars {
        let name_ok = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(GrubenvError::BadName { name: k.clone() });
        }
        if v.contains(['\n', '\\']) {
            return Err(GrubenvError::BadValue { name: k.clone() });
        }
    }
    Ok(())
}

/// The 1024-byte block for `vars`.
pub fn render(vars: &Vars) -> Result<Vec<u8>, GrubenvError> {
    check(vars)?;
    let mut out = SIGNATURE.as_bytes().to_vec();
    for (k, v) in vars {
        out.extend_from_slice(format!("{k}={v}\n").as_bytes());
    }
    if out.len() > SIZE {
        return Err(GrubenvError::TooBig { needed: out.len() });
    }
    out.resize(SIZE, b'#');
    Ok(out)
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GrubenvError {
    let path = path.display().to_string();
    move |e| GrubenvError::Io {
        action,
        path,
        message: e.to_string(),
    }
}

/// Read the block at `path`.
pub fn read(path: &Path) -> Result<Vars, GrubenvError> {
    let bytes = fs::read(path).map_err(io("reading", path))?;
    let name = path.display().to_string();
    if bytes.len() != SIZE {
        return Err(GrubenvError::BadSize {
            path: name,
            len: bytes.len(),
        });
    }
    parse(&bytes, &name)
}

/// Replace the block at `path` with `vars`, atomically and durably.
pub fn write(path: &Path, vars: &Vars) -> Result<(), GrubenvError> {
    let bytes = render(vars)?;
    let tmp = path.with_extension("new");
    {
        let mut f = fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io("replacing", path))?;
    if let Some(dir) = path.parent() {
        // The rename is durable only once the directory is.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Read, change with `f`, write back.
pub fn update(path: &Path, f: impl FnOnce(&mut Vars)) -> Result<Vars, GrubenvError> {
    let mut vars = read(path)?;
    f(&mut vars);
    write(path, &vars)?;
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn round_trip() {
        let v = vars(&[("maculaos_slot", "B"), ("maculaos_extra_cmdline", "a b=c")]);
        let b = render(&v).unwrap();
        assert_eq!(b.len(), SIZE);
        assert!(b.starts_with(SIGNATURE.as_bytes()));
        assert_eq!(parse(&b, "x").unwrap(), v);
    }

    #[test]
    fn refuses_what_grub_could_not_read_back() {
        assert!(matches!(
            render(&vars(&[("a b", "1")])),
            Err(GrubenvError::BadName { .. })
        ));
        assert!(matches!(
            render(&vars(&[("a", "x\ny")])),
            Err(GrubenvError::BadValue { .. })
        ));
        let big = "x".repeat(1100);
        assert!(matches!(
            render(&vars(&[("a", &big)])),
            Err(GrubenvError::TooBig { .. })
        ));
        assert!(matches!(
            parse(b"hello", "f"),
            Err(GrubenvError::NoSignature { .. })
        ));
    }

    #[test]
    fn unescapes_what_grub_escaped() {
        let mut b = SIGNATURE.as_bytes().to_vec();
        b.extend_from_slice(b"a=x\\\\y\nb=1\\\n2\n");
        b.resize(SIZE, b'#');
        let v = parse(&b, "f").unwrap();
        assert_eq!(v["a"], "x\\y");
        assert_eq!(v["b"], "1\n2");
    }

    #[test]
    fn file_size_is_checked_and_writes_are_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("grubenv");
        fs::write(&p, b"# GRUB Environment Block\n").unwrap();
        assert!(matches!(read(&p), Err(GrubenvError::BadSize { .. })));
        write(&p, &vars(&[("k", "v")])).unwrap();
        let v = update(&p, |v| {
            v.insert("k2".into(), "v2".into());
        })
        .unwrap();
        assert_eq!(read(&p).unwrap(), v);
        assert!(!d.path().join("grubenv.new").exists());
    }

    /// What we write, grub-editenv reads; what it writes, we read.
    #[test]
    fn interoperates_with_grub_editenv() {
        let have = std::process::Command::new("grub-editenv")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have {
            eprintln!("grub-editenv not installed: interop test skipped");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("grubenv");
        write(&p, &vars(&[("maculaos_slot", "B"), ("x", "1 2")])).unwrap();
        let out = std::process::Command::new("grub-editenv")
            .arg(&p)
            .arg("list")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "maculaos_slot=B\nx=1 2\n"
        );
        let st = std::process::Command::new("grub-editenv")
            .arg(&p)
            .args(["set", "maculaos_try=3", "y=a\\b"])
            .status()
            .unwrap();
        assert!(st.success());
        let v = read(&p).unwrap();
        assert_eq!(v["maculaos_try"], "3");
        assert_eq!(v["y"], "a\\b");
        assert_eq!(v["maculaos_slot"], "B");
    }
}
