//! Seeding the data partition from the root image: everything the image
//! ships under `/var`, `/home` and `/root` that the data partition does not
//! have yet is copied over, and nothing that is there is ever touched.
//!
//! This runs on every boot, so a new root image that adds, say, a package's
//! `/var/lib/<pkg>` skeleton gets it onto existing nodes, while state the
//! node wrote (logs, databases, changed files) stays as it is.

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::fs::{self, Metadata, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a seed copy did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeedStats {
    /// Files, directories and symlinks created.
    pub created: usize,
    /// Device nodes, FIFOs and sockets, which a filesystem image should not
    /// carry under /var and which are not copied.
    pub skipped_special: usize,
}

impl std::ops::AddAssign for SeedStats {
    fn add_assign(&mut self, o: SeedStats) {
        self.created += o.created;
        self.skipped_special += o.skipped_special;
    }
}

/// A failure while seeding, naming the step and the path.
#[derive(Debug, thiserror::Error)]
#[error("seeding the data partition: {action} {}: {source}", .path.display())]
pub struct SeedError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SeedError + 'a {
    move |source| SeedError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Copy into `dst` every entry of `src` (recursively) that `dst` lacks,
/// keeping mode, owner, times and symlink targets. Existing entries are
/// never overwritten; an existing directory is descended into. `dst` must
/// exist.
pub fn copy_missing(src: &Path, dst: &Path) -> Result<SeedStats, SeedError> {
    let mut stats = SeedStats::default();
    copy_entries(src, dst, &mut stats)?;
    Ok(stats)
}

/// [`copy_missing`] for a tree whose top directory may be missing too:
/// creates `dst` like `src` (or as 0755 root-owned when `src` does not
/// exist, so the mount point of a bind mount is always there).
pub fn seed_tree(src: &Path, dst: &Path) -> Result<SeedStats, SeedError> {
    let src_meta = match fs::symlink_metadata(src) {
        Ok(m) if m.is_dir() => Some(m),
        Ok(_) => None,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(err("reading", src)(e)),
    };
    let created = match fs::symlink_metadata(dst) {
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(dst).map_err(err("creating directory", dst))?;
            fs::set_permissions(dst, Permissions::from_mode(0o755))
                .map_err(err("setting the mode of", dst))?;
            true
        }
        Err(e) => return Err(err("reading", dst)(e)),
    };
    let mut stats = SeedStats::default();
    if let Some(meta) = &src_meta {
        copy_entries(src, dst, &mut stats)?;
        if created {
            apply_metadata(dst, meta, false)?;
        }
    }
    if created {
        stats.created += 1;
    }
    Ok(stats)
}

fn copy_entries(src: &Path, dst: &Path, stats: &mut SeedStats) -> Result<(), SeedError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(src).map_err(err("reading directory", src))? {
        names.push(entry.map_err(err("reading directory", src))?.file_name());
    }
    // Sorted so a failure always stops at the same place.
    names.sort();
    for name in names {
        let s = src.join(&name);
        let d = dst.join(&name);
        let meta = fs::symlink_metadata(&s).map_err(err("reading", &s))?;
        match fs::symlink_metadata(&d) {
            Ok(existing) => {
                if meta.is_dir() && existing.is_dir() {
                    copy_entries(&s, &d, stats)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => copy_new(&s, &d, &meta, stats)?,
            Err(e) => return Err(err("reading", &d)(e)),
        }
    }
    Ok(())
}

fn copy_new(s: &Path, d: &Path, meta: &Metadata, stats: &mut SeedStats) -> Result<(), SeedError> {
    let ft = meta.file_type();
    if ft.is_dir() {
        fs::create_dir(d).map_err(err("creating directory", d))?;
        copy_entries(s, d, stats)?;
        // After the contents, so their creation does not change its mtime.
        apply_metadata(d, meta, false)?;
    } else if ft.is_file() {
        fs::copy(s, d).map_err(err("copying to", d))?;
        apply_metadata(d, meta, false)?;
    } else if ft.is_symlink() {
        let target = fs::read_link(s).map_err(err("reading symlink", s))?;
        std::os::unix::fs::symlink(&target, d).map_err(err("creating symlink", d))?;
        apply_metadata(d, meta, true)?;
    } else {
        stats.skipped_special += 1;
        return Ok(());
    }
    stats.created += 1;
    Ok(())
}

/// Owner first, then mode (chown clears set-id bits), then times.
fn apply_metadata(path: &Path, meta: &Metadata, is_symlink: bool) -> Result<(), SeedError> {
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
        .map_err(err("setting the owner of", path))?;
    if !is_symlink {
        fs::set_permissions(path, Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(err("setting the mode of", path))?;
    }
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(None, path, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| err("setting the times of", path)(io::Error::from(e)))
}

/// Seed a freshly mounted data partition at `data` from the root at
/// `sysroot`: `/var` into `data`, `/home` into `data/home`, `/root` into
/// `data/roothome` (bind-mounted back over `/home` and `/root` later).
pub fn seed_data(sysroot: &Path, data: &Path) -> Result<SeedStats, SeedError> {
    let mut stats = copy_missing(&sysroot.join("var"), data)?;
    stats += seed_tree(&sysroot.join("home"), &data.join("home"))?;
    stats += seed_tree(&sysroot.join("root"), &data.join("roothome"))?;
    Ok(stats)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn mtime(p: &Path) -> (i64, i64) {
        let m = fs::symlink_metadata(p).unwrap();
        (m.mtime(), m.mtime_nsec())
    }

    fn set_mtime(p: &Path, secs: i64) {
        let t = TimeSpec::new(secs, 123);
        utimensat(None, p, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
    }

    #[test]
    fn copies_missing_entries_with_metadata() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("var");
        let dst = root.path().join("data");
        fs::create_dir_all(src.join("lib/apt/lists")).unwrap();
        fs::create_dir_all(src.join("tmp")).unwrap();
        fs::set_permissions(src.join("tmp"), Permissions::from_mode(0o1777)).unwrap();
        fs::write(src.join("lib/apt/lists/lock"), "").unwrap();
        fs::write(src.join("lib/state"), "from image").unwrap();
        fs::set_permissions(src.join("lib/state"), Permissions::from_mode(0o640)).unwrap();
        symlink("/run", src.join("run")).unwrap();
        set_mtime(&src.join("lib/state"), 1_000_000);
        set_mtime(&src.join("run"), 2_000_000);
        set_mtime(&src.join("lib/apt"), 3_000_000);
        fs::create_dir(&dst).unwrap();

        let stats = copy_missing(&src, &dst).unwrap();
        assert_eq!(stats.created, 7, "{stats:?}");
        assert_eq!(
            fs::read_to_string(dst.join("lib/state")).unwrap(),
            "from image"
        );
        assert_eq!(mode(&dst.join("lib/state")), 0o640);
        assert_eq!(mode(&dst.join("tmp")), 0o1777);
        assert_eq!(fs::read_link(dst.join("run")).unwrap(), Path::new("/run"));
        assert_eq!(mtime(&dst.join("lib/state")), (1_000_000, 123));
        assert_eq!(mtime(&dst.join("run")), (2_000_000, 123));
        assert_eq!(mtime(&dst.join("lib/apt")), (3_000_000, 123));
        let (s, d) = (
            fs::metadata(src.join("lib/state")).unwrap(),
            fs::metadata(dst.join("lib/state")).unwrap(),
        );
        assert_eq!((s.uid(), s.gid()), (d.uid(), d.gid()));
    }

    #[test]
    fn never_overwrites_and_fills_in_new_entries() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("var");
        let dst = root.path().join("data");
        fs::create_dir_all(src.join("lib/new-pkg")).unwrap();
        fs::write(src.join("lib/new-pkg/db"), "skeleton").unwrap();
        fs::write(src.join("lib/state"), "from image").unwrap();
        fs::write(src.join("log"), "a file in the image").unwrap();
        symlink("/run/lock", src.join("lock")).unwrap();
        fs::create_dir_all(dst.join("lib")).unwrap();
        fs::write(dst.join("lib/state"), "node state").unwrap();
        fs::set_permissions(dst.join("lib/state"), Permissions::from_mode(0o600)).unwrap();
        fs::create_dir(dst.join("log")).unwrap();
        fs::write(dst.join("lock"), "not a link").unwrap();
        fs::set_permissions(dst.join("lib"), Permissions::from_mode(0o750)).unwrap();

        let stats = copy_missing(&src, &dst).unwrap();
        assert_eq!(stats.created, 2, "{stats:?}");
        assert_eq!(
            fs::read_to_string(dst.join("lib/state")).unwrap(),
            "node state"
        );
        assert_eq!(mode(&dst.join("lib/state")), 0o600);
        assert!(dst.join("log").is_dir());
        assert_eq!(fs::read_to_string(dst.join("lock")).unwrap(), "not a link");
        assert_eq!(
            fs::read_to_string(dst.join("lib/new-pkg/db")).unwrap(),
            "skeleton"
        );
        // An existing directory keeps its own metadata.
        assert_eq!(mode(&dst.join("lib")), 0o750);
        // A second run has nothing to do.
        assert_eq!(copy_missing(&src, &dst).unwrap(), SeedStats::default());
    }

    #[test]
    fn special_files_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("var");
        let dst = root.path().join("data");
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&dst).unwrap();
        nix::unistd::mkfifo(
            &src.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let stats = copy_missing(&src, &dst).unwrap();
        assert_eq!(stats.skipped_special, 1);
        assert!(!dst.join("fifo").exists());
    }

    #[test]
    fn seeds_var_and_homes() {
        let root = tempfile::tempdir().unwrap();
        let sysroot = root.path().join("sysroot");
        let data = root.path().join("data");
        fs::create_dir_all(sysroot.join("var/lib")).unwrap();
        fs::create_dir_all(sysroot.join("home/macula")).unwrap();
        fs::write(sysroot.join("home/macula/.profile"), "# profile").unwrap();
        fs::create_dir_all(sysroot.join("root")).unwrap();
        fs::set_permissions(sysroot.join("root"), Permissions::from_mode(0o700)).unwrap();
        fs::create_dir(&data).unwrap();

        let stats = seed_data(&sysroot, &data).unwrap();
        assert_eq!(stats.created, 5, "{stats:?}");
        assert!(data.join("lib").is_dir());
        assert_eq!(
            fs::read_to_string(data.join("home/macula/.profile")).unwrap(),
            "# profile"
        );
        assert_eq!(mode(&data.join("roothome")), 0o700);
        assert_eq!(mode(&data.join("home")), mode(&sysroot.join("home")));

        // An image without /home still gets a mount point for it.
        let bare = root.path().join("bare");
        let data2 = root.path().join("data2");
        fs::create_dir_all(bare.join("var")).unwrap();
        fs::create_dir(&data2).unwrap();
        seed_data(&bare, &data2).unwrap();
        assert_eq!(mode(&data2.join("home")), 0o755);
        assert!(data2.join("roothome").is_dir());
    }

    #[test]
    fn errors_name_the_path() {
        let root = tempfile::tempdir().unwrap();
        let e = copy_missing(&root.path().join("missing"), root.path()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("seeding the data partition: reading directory "),
            "{e}"
        );
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
