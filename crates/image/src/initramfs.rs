//! The initramfs: maculaos-init as /init, the kernel modules it needs to find
//! and mount the root (from image/initramfs/modules.txt plus dependencies), a
//! small module index, and busybox for the `maculaos.debug` shell.

use crate::cpio::{write_newc, Entry};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Module names for `spec` (names, or `kernel/dir/` prefixes) given the
/// `modules.dep` text of the kernel.
pub fn expand_module_spec(spec: &str, modules_dep: &str) -> Result<Vec<String>> {
    let all: Vec<&str> = modules_dep
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|p| !p.is_empty())
        .collect();
    let mut names = BTreeSet::new();
    for line in spec.lines() {
        let item = line.split('#').next().unwrap_or("").trim();
        if item.is_empty() {
            continue;
        }
        if item.ends_with('/') {
            let matched: Vec<&&str> = all.iter().filter(|p| p.starts_with(item)).collect();
            if matched.is_empty() {
                bail!("image/initramfs/modules.txt: no modules under {item}");
            }
            for p in matched {
                names.insert(module_name(p));
            }
        } else {
            names.insert(item.replace('-', "_"));
        }
    }
    Ok(names.into_iter().collect())
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Build the initramfs for the root at `root` (kernel `kver`), gzip it into `out`.
pub fn build(
    root: &Path,
    kver: &str,
    init_bin: &Path,
    spec: &str,
    mtime: u64,
    out: &Path,
) -> Result<Stats> {
    let moddir = root.join("lib/modules").join(kver);
    let dep_text = fs::read_to_string(moddir.join("modules.dep"))
        .with_context(|| format!("reading {}", moddir.join("modules.dep").display()))?;
    let builtin = fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let index = maculaos_kmod::ModuleIndex::load(&moddir)
        .with_context(|| format!("reading the module index in {}", moddir.display()))?;
    let wanted = expand_module_spec(spec, &dep_text)?;
    let builtin_names: BTreeSet<String> = builtin.lines().map(module_name).collect();
    let loadable: Vec<&str> = wanted
        .iter()
        .filter(|n| !builtin_names.contains(*n))
        .map(String::as_str)
        .collect();
    let files: BTreeSet<PathBuf> = index
        .closure(&loadable)
        .context("resolving initramfs module dependencies (image/initramfs/modules.txt)")?;
    let (sub_dep, sub_alias) = index.subset_index(&files);
    let sub_softdep = index.subset_softdep(&files);

    let mut tree: BTreeMap<String, Entry> = BTreeMap::new();
    let mut add = |e: Entry| {
        let path = e.path().to_string();
        // Parent directories first (BTreeMap orders "a" before "a/b").
        let mut acc = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            tree.entry(acc.clone()).or_insert(Entry::Dir {
                path: acc.clone(),
                mode: 0o755,
            });
        }
        tree.insert(path, e);
    };
    for d in ["proc", "sys", "dev", "run", "sysroot", "data", "tmp", "etc"] {
        add(Entry::Dir {
            path: d.into(),
            mode: 0o755,
        });
    }
    add(Entry::CharDev {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    add(Entry::CharDev {
        path: "dev/null".into(),
        mode: 0o666,
        major: 1,
        minor: 3,
    });
    let init = fs::read(init_bin).with_context(|| format!("reading {}", init_bin.display()))?;
    add(Entry::File {
        path: "init".into(),
        mode: 0o755,
        data: init,
    });
    let busybox = root.join("bin/busybox");
    let bb = fs::read(&busybox).with_context(|| {
        format!(
            "reading {} (is busybox-static in image/packages?)",
            busybox.display()
        )
    })?;
    add(Entry::File {
        path: "bin/busybox".into(),
        mode: 0o755,
        data: bb,
    });
    add(Entry::Symlink {
        path: "bin/sh".into(),
        target: "busybox".into(),
    });
    let mbase = format!("lib/modules/{kver}");
    let mut module_bytes = 0u64;
    for f in &files {
        let data =
            fs::read(moddir.join(f)).with_context(|| format!("reading module {}", f.display()))?;
        module_bytes += data.len() as u64;
        add(Entry::File {
            path: format!("{mbase}/{}", f.display()),
            mode: 0o644,
            data,
        });
    }
    for (name, text) in [
        ("modules.dep", sub_dep),
        ("modules.alias", sub_alias),
        ("modules.softdep", sub_softdep),
        ("modules.builtin", builtin),
    ] {
        add(Entry::File {
            path: format!("{mbase}/{name}"),
            mode: 0o644,
            data: text.into_bytes(),
        });
    }

    let entries: Vec<Entry> = tree.into_values().collect();
    let mut raw = Vec::new();
    write_newc(&mut raw, &entries, mtime)?;
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    // gzip: every kernel can unpack it, and flate2 output is deterministic.
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(file, flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &raw)
        .with_context(|| format!("writing {}", out.display()))?;
    gz.finish()?;
    Ok(Stats {
        modules: files.len(),
        module_bytes,
        uncompressed: raw.len() as u64,
    })
}

#[derive(Debug, Clone)]
pub struct Stats {
    pub modules: usize,
    pub module_bytes: u64,
    pub uncompressed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libahci.ko\nkernel/drivers/ata/libahci.ko:\nkernel/fs/squashfs/squashfs.ko:\nkernel/drivers/usb-storage/usb-storage.ko:\n";

    #[test]
    fn spec_expands_directories_and_normalises_names() {
        let names = expand_module_spec(
            "# c\nkernel/drivers/ata/\nusb-storage\nsquashfs # fs\n",
            DEP,
        )
        .unwrap();
        assert_eq!(names, vec!["ahci", "libahci", "squashfs", "usb_storage"]);
    }

    #[test]
    fn empty_directory_is_an_error() {
        let e = expand_module_spec("kernel/drivers/nothing/\n", DEP).unwrap_err();
        assert!(e.to_string().contains("kernel/drivers/nothing/"));
    }
}
