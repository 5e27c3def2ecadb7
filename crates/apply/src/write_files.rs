//! `write_files` (cloud-init's): files with a content, mode and owner.

use crate::applier::{io_msg, Applier};
use crate::users::resolve_owner;
use base64::Engine;
use maculaos_config::values::{FileMode, Owner};
use maculaos_config::{Config, Encoding, WriteFile};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

const AREA: &str = "write_files";

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    for f in &config.write_files {
        if let Err(e) = write_one(a, f) {
            a.error(AREA, format!("{}: {e}", f.path));
        }
    }
    Ok(())
}

fn write_one(a: &mut Applier, f: &WriteFile) -> Result<(), String> {
    check_path(&f.path)?;
    let data = decode(f)?;
    let (uid, gid) =
        resolve_owner(&a.opts.root, &f.owner).map_err(|e| format!("owner `{}`: {e}", f.owner))?;
    let mut mode = f.permissions.0;
    let mut owner = (uid, gid);
    let content = if f.append {
        let path = a.path(&f.path);
        match fs::read(&path) {
            Ok(existing) => {
                // Keep an existing file's mode and owner unless told
                // otherwise: appending to a 0440 sudoers file must not
                // make it 0644 just because that is the default.
                let meta = fs::metadata(&path).map_err(|e| io_msg("reading", &path, &e))?;
                if f.permissions == FileMode::default() {
                    mode = meta.mode() & 0o7777;
                }
                if f.owner == Owner::default() {
                    owner = (meta.uid(), meta.gid());
                }
                appended(existing, &data)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => data,
            Err(e) => return Err(io_msg("reading", &path, &e)),
        }
    } else {
        data
    };
    a.put_file(AREA, &f.path, &content, mode, Some(owner))?;
    Ok(())
}

/// Absolute and without `..`, so it lands where it says under the root.
fn check_path(p: &str) -> Result<(), String> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err("the path must be absolute (start with /)".into());
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err("the path must not contain `..`".into());
    }
    if p.ends_with('/') {
        return Err("the path names a directory: give a file name".into());
    }
    Ok(())
}

fn decode(f: &WriteFile) -> Result<Vec<u8>, String> {
    match f.encoding {
        Encoding::Text => Ok(f.content.as_bytes().to_vec()),
        Encoding::Base64 => {
            // Long base64 is often wrapped over several lines in YAML.
            let compact: String = f.content.split_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|e| format!("the content is not valid base64 ({e})"))
        }
    }
}

/// The file with `data` appended, unless it already ends with it (so that
/// applying twice appends once).
fn appended(mut existing: Vec<u8>, data: &[u8]) -> Vec<u8> {
    if !existing.ends_with(data) {
        existing.extend_from_slice(data);
    }
    existing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{apply_twice, opts, yaml};
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn text_and_base64_files_with_modes() {
        let d = tempfile::tempdir().unwrap();
        let cfg = yaml(
            "write_files:\n\
             - {path: /etc/app/app.conf, content: \"a=1\\n\", permissions: '0600'}\n\
             - {path: /opt/bin/hello, encoding: b64, content: \"IyEvYmluL3NoCmVj\\n  aG8gaGkK\", permissions: '0755'}\n",
        );
        let r = apply_twice(&cfg, &opts(d.path()));
        assert_eq!(
            r.changes
                .iter()
                .filter(|c| c.starts_with("write_files"))
                .collect::<Vec<_>>(),
            vec![
                "write_files: wrote /etc/app/app.conf",
                "write_files: wrote /opt/bin/hello"
            ]
        );
        let conf = d.path().join("etc/app/app.conf");
        assert_eq!(fs::read_to_string(&conf).unwrap(), "a=1\n");
        assert_eq!(mode(&conf), 0o600);
        assert_eq!(mode(conf.parent().unwrap()), 0o755);
        let hello = d.path().join("opt/bin/hello");
        assert_eq!(fs::read_to_string(&hello).unwrap(), "#!/bin/sh\necho hi\n");
        assert_eq!(mode(&hello), 0o755);
    }

    #[test]
    fn append_happens_once_and_keeps_the_mode() {
        let d = tempfile::tempdir().unwrap();
        let sudoers = d.path().join("etc/sudoers.d/x");
        fs::create_dir_all(sudoers.parent().unwrap()).unwrap();
        fs::write(&sudoers, "# x\n").unwrap();
        fs::set_permissions(&sudoers, fs::Permissions::from_mode(0o440)).unwrap();
        let cfg = yaml(
            "write_files:\n\
             - {path: /etc/sudoers.d/x, content: \"ops ALL=(ALL) ALL\\n\", append: true}\n\
             - {path: /etc/new.log, content: \"line\\n\", append: true}\n",
        );
        apply_twice(&cfg, &opts(d.path()));
        assert_eq!(
            fs::read_to_string(&sudoers).unwrap(),
            "# x\nops ALL=(ALL) ALL\n"
        );
        assert_eq!(mode(&sudoers), 0o440);
        assert_eq!(
            fs::read_to_string(d.path().join("etc/new.log")).unwrap(),
            "line\n"
        );
        assert_eq!(appended(b"ab".to_vec(), b"b"), b"ab");
        assert_eq!(appended(b"ab".to_vec(), b"c"), b"abc");
    }

    #[test]
    fn owners_come_from_the_roots_passwd() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            "app:x:1234:1234::/:/bin/false\n",
        )
        .unwrap();
        fs::write(d.path().join("etc/group"), "web:x:33:\n").unwrap();
        let cfg = yaml("write_files: [{path: /srv/a, content: x, owner: 'app:web'}]");
        apply_twice(&cfg, &opts(d.path()));
        let meta = fs::metadata(d.path().join("srv/a")).unwrap();
        // chown needs root; as another user the file stays ours.
        if crate::applier::running_as_root() {
            assert_eq!((meta.uid(), meta.gid()), (1234, 33));
        }
    }

    #[test]
    fn bad_entries_name_the_file_and_the_rest_is_written() {
        let d = tempfile::tempdir().unwrap();
        let cfg = yaml(
            "write_files:\n\
             - {path: etc/rel, content: x}\n\
             - {path: /etc/../x, content: x}\n\
             - {path: /etc/o, content: x, owner: 'bob:bob'}\n\
             - {path: /etc/b, content: '%%%', encoding: base64}\n\
             - {path: /etc/good, content: x}\n",
        );
        let r = crate::apply(&cfg, &opts(d.path()));
        assert_eq!(
            r.errors,
            vec![
                "write_files: etc/rel: the path must be absolute (start with /)",
                "write_files: /etc/../x: the path must not contain `..`",
                "write_files: /etc/o: owner `bob:bob`: no user `bob` in /etc/passwd \
                 (create it first, or give a numeric uid)",
                "write_files: /etc/b: the content is not valid base64 (Invalid symbol 37, offset 0.)",
            ]
        );
        assert!(d.path().join("etc/good").exists());
        assert!(!d.path().join("etc/o").exists());
    }
}
