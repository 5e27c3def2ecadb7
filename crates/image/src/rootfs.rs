//! The root filesystem: Debian packages through mmdebstrap (cached per
//! package set), then MaculaOS's own files on top (every build).

use crate::util::KeyHasher;
use crate::BuildOptions;
use anyhow::{bail, Context, Result};
use maculaos_runner::Cmd;
use std::fs;
use std::path::{Path, PathBuf};

/// A Debian package and its version, as installed in the root.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// Packages named in a list file: one per line, `#` comments.
pub fn read_package_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn list_files(image: &Path) -> Result<Vec<PathBuf>> {
    let dir = image.join("packages");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading package lists in {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no package lists (*.txt) in {}", dir.display());
    }
    Ok(files)
}

/// SOURCE_DATE_EPOCH of the mmdebstrap stage. Fixed rather than the commit
/// time so a new commit does not rebuild the Debian root: only dates inside
/// files depend on it (e.g. /etc/shadow's last password change), and the
/// squashfs stage pins every file time to the build's own epoch anyway.
pub const ROOTFS_EPOCH: u64 = 1_700_000_000;

/// Cache key of the mmdebstrap stage: everything that changes its result.
pub fn rootfs_key(opts: &BuildOptions) -> Result<String> {
    let image = opts.image_dir();
    let mut k = KeyHasher::default();
    k.str("suite", &opts.suite)
        .str("mirror", &opts.mirror)
        .str("sde", &ROOTFS_EPOCH.to_string());
    for f in list_files(&image)? {
        k.file(&f)?;
    }
    k.file(&image.join("dpkg-excludes.txt"))?;
    k.file(&image.join("hooks/customize-rootfs.sh"))?;
    k.file(&image.join("hooks/system-ids.sh"))?;
    k.file(&image.join("system-ids.txt"))?;
    k.tree(&image.join("debs"))?;
    Ok(k.finish())
}

/// Build (or reuse) the Debian root for this package set. Returns its
/// directory in the cache and whether it was reused.
pub fn debian_root(opts: &BuildOptions, key: &str) -> Result<(PathBuf, bool)> {
    let base = opts.cache.join("rootfs");
    let dir = base.join(key);
    if dir.join(".complete").exists() {
        return Ok((dir, true));
    }
    fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    crate::util::require_space(&base, 2 << 30, "the Debian root filesystem")?;
    let partial = base.join(format!("{key}.partial"));
    unmount_under(&partial);
    remove_tree(&partial)?;
    let debs_cache = opts.cache.join("debs");
    fs::create_dir_all(&debs_cache)?;

    // Our stand-in for initramfs-tools, so linux-image does not pull it in.
    let work = opts.cache.join("work");
    fs::create_dir_all(&work)?;
    let no_initramfs = work.join("maculaos-no-initramfs.deb");
    Cmd::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(opts.image_dir().join("debs/maculaos-no-initramfs"))
        .arg(&no_initramfs)
        .quiet()
        .run()?;

    let image = opts.image_dir();
    let mut pkgs = Vec::new();
    for f in list_files(&image)? {
        let text = fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        pkgs.extend(read_package_list(&text));
    }
    let excludes = fs::read_to_string(image.join("dpkg-excludes.txt"))?;
    let log = opts.out.join("mmdebstrap.log");
    let _ = fs::remove_file(&log);
    let mut cmd = Cmd::new("mmdebstrap")
        .hint("apt-get install mmdebstrap")
        .env("SOURCE_DATE_EPOCH", ROOTFS_EPOCH.to_string())
        .args(["--variant=minbase", "--mode=root", "--format=directory"])
        .arg("--aptopt=Apt::Install-Recommends \"false\"")
        .arg(format!("--include={}", pkgs.join(",")))
        .arg(format!("--include={}", no_initramfs.display()))
        .arg("--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount")
        .arg("--skip=essential/unlink")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives/",
            debs_cache.display()
        ))
        .arg(format!(
            "--essential-hook={}",
            image.join("hooks/system-ids.sh").display()
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            debs_cache.display()
        ))
        .arg(format!(
            "--customize-hook={}",
            image.join("hooks/customize-rootfs.sh").display()
        ));
    for line in read_package_list(&excludes) {
        cmd = cmd.arg(format!("--dpkgopt={line}"));
    }
    let cmd = cmd
        .arg(&opts.suite)
        .arg(&partial)
        .arg(&opts.mirror)
        .log_to(&log);
    eprintln!(
        "    {} packages from {} (log: {})",
        pkgs.len(),
        opts.mirror,
        log.display()
    );
    if let Err(e) = cmd.run() {
        let text = fs::read_to_string(&log).unwrap_or_default();
        // mmdebstrap's file-mirror hook leaves its bind mount behind when apt fails.
        unmount_under(&partial);
        let _ = remove_tree(&partial);
        if mirror_unreachable(&text) {
            bail!(
                "cannot reach the Debian mirror {}: check the network, or set MACULAOS_MIRROR (or --mirror) to a reachable mirror (log: {})",
                opts.mirror,
                log.display()
            );
        }
        return Err(e.into());
    }
    let list = Cmd::new("chroot")
        .arg(&partial)
        .args(["dpkg-query", "-W", "-f", "${Package}\\t${Version}\\n"])
        .output()?;
    fs::write(partial.join(".packages.tsv"), list)?;
    fs::write(partial.join(".complete"), key)?;
    fs::rename(&partial, &dir)?;
    prune(&base, key, 2);
    Ok((dir, false))
}

/// Whether an mmdebstrap log says the mirror could not be reached.
pub fn mirror_unreachable(log: &str) -> bool {
    [
        "Temporary failure resolving",
        "Could not resolve",
        "Could not connect",
        "Failed to fetch",
        "Unable to connect",
        "Connection refused",
    ]
    .iter()
    .any(|s| log.contains(s))
}

/// Lazily unmount every mount at or below `dir` (deepest first).
pub fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Cmd::new("umount").args(["-l", &p]).quiet().run();
    }
}

/// Keep the `keep` newest cache entries in `base` (and `current`).
pub(crate) fn prune(base: &Path, current: &str, keep: usize) {
    let Ok(rd) = fs::read_dir(base) else { return };
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != current)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    entries.sort();
    entries.reverse();
    for (_, p) in entries.into_iter().skip(keep.saturating_sub(1)) {
        let _ = remove_tree(&p);
    }
}

pub fn read_packages(root: &Path) -> Result<Vec<Package>> {
    let text = fs::read_to_string(root.join(".packages.tsv"))
        .with_context(|| format!("reading package list of {}", root.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, v)| Package {
            name: n.to_string(),
            version: v.to_string(),
        })
        .collect())
}

pub fn remove_tree(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))
        }
        Ok(_) => fs::remove_file(p).with_context(|| format!("removing {}", p.display())),
        Err(_) => Ok(()),
    }
}

/// Copy `src` over `dst` (directories merged, files replaced), keeping modes
/// and symlinks. Used for image/overlay.
pub fn copy_overlay(src: &Path, dst: &Path) -> Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let mut n = 0;
    for e in walkdir::WalkDir::new(src).sort_by_file_name() {
        let e = e.with_context(|| format!("reading {}", src.display()))?;
        let rel = e.path().strip_prefix(src).unwrap_or(e.path());
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dst.join(rel);
        let ft = e.file_type();
        if ft.is_dir() {
            if !target.is_dir() {
                fs::create_dir_all(&target)
                    .with_context(|| format!("creating {}", target.display()))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(0o755))?;
            }
        } else {
            let _ = fs::remove_file(&target);
            if ft.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(e.path())?, &target)?;
            } else {
                fs::copy(e.path(), &target).with_context(|| {
                    format!("copying {} to {}", e.path().display(), target.display())
                })?;
                let exec = fs::metadata(e.path())?.permissions().mode() & 0o111 != 0;
                fs::set_permissions(
                    &target,
                    fs::Permissions::from_mode(if exec { 0o755 } else { 0o644 }),
                )?;
            }
            n += 1;
        }
    }
    Ok(n)
}

/// Fill `@NAME@` placeholders.
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("@{k}@"), v);
    }
    s
}

/// agetty treats backslashes in /etc/issue as escapes; the logo has some.
pub fn escape_issue(text: &str) -> String {
    text.replace('\\', "\\\\")
}

/// Kernel version of the single kernel in `root`.
pub fn kernel_version(root: &Path) -> Result<String> {
    let dir = root.join("lib/modules");
    let mut versions: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    match versions.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no kernel in the root filesystem ({} is empty): is linux-image-amd64 in image/packages?", dir.display()),
        many => bail!("more than one kernel in the root filesystem: {}", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_lists_skip_comments_and_blanks() {
        let l = read_package_list("# head\nsystemd\n\n  vim  # editor\n");
        assert_eq!(l, vec!["systemd", "vim"]);
    }

    #[test]
    fn mirror_errors_are_recognised() {
        assert!(mirror_unreachable("W: Failed to fetch http://127.0.0.1:9/debian/dists/bookworm/InRelease  Could not connect to 127.0.0.1:9"));
        assert!(!mirror_unreachable("E: Unable to locate package vimm"));
    }

    #[test]
    fn render_and_escape() {
        assert_eq!(
            render("v@VERSION@ @X@", &[("VERSION", "1.0"), ("X", "y")]),
            "v1.0 y"
        );
        assert_eq!(escape_issue("/│\\"), "/│\\\\");
    }

    #[test]
    fn overlay_copy_merges_and_sets_modes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let dst = d.path().join("dst");
        fs::create_dir_all(src.join("etc/x")).unwrap();
        fs::write(src.join("etc/x/a"), "new").unwrap();
        fs::write(src.join("run.sh"), "#!/bin/sh").unwrap();
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir_all(dst.join("etc/x")).unwrap();
        fs::write(dst.join("etc/x/a"), "old").unwrap();
        fs::write(dst.join("etc/x/keep"), "keep").unwrap();
        assert_eq!(copy_overlay(&src, &dst).unwrap(), 2);
        assert_eq!(fs::read_to_string(dst.join("etc/x/a")).unwrap(), "new");
        assert_eq!(fs::read_to_string(dst.join("etc/x/keep")).unwrap(), "keep");
        let mode = fs::metadata(dst.join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755);
    }
}
