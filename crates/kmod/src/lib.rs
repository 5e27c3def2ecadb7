//! Kernel modules without modprobe: the `modules.*` index depmod writes into
//! `/lib/modules/<kver>/`, and a loader built on `finit_module(2)`.
//!
//! The image builder uses [`ModuleIndex::closure`] and
//! [`ModuleIndex::subset_index`] to copy just the modules the initramfs needs,
//! with a consistent small index; `maculaos-init` uses [`Loader`] to load
//! filesystem modules by name and hardware drivers by modalias (coldplug).
//!
//! Module names are normalised the way the kernel does (`-` and `_` are the
//! same, `_` is kept), so `virtio-blk`, `virtio_blk` and
//! `kernel/drivers/block/virtio_blk.ko.xz` all name the module `virtio_blk`.

mod glob;
mod loader;

pub use glob::glob_match;
pub use loader::Loader;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::path::{Path, PathBuf};

/// File name extensions a module file can have; longest first so `.ko.xz`
/// is stripped whole.
const MODULE_EXTENSIONS: [&str; 4] = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"];

/// A failure reading the module index or loading a module.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("reading {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}, line {line}: {reason}", .file.display())]
    Parse {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("module {name} is unknown: it is neither in modules.dep nor built into the kernel (not built for this kernel, or not copied into this initramfs)")]
    UnknownModule { name: String },
    #[error("modules.dep lists {} as a dependency of {module} but has no entry for it", .dep.display())]
    MissingDependency { module: String, dep: PathBuf },
    #[error("modules.dep has a dependency loop through {module}")]
    DependencyLoop { module: String },
    #[error("loading module {name}: opening {}: {source}", .path.display())]
    Open {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading module {name} ({}) failed: {errno}{}", .path.display(), errno_hint(*.errno))]
    Insert {
        name: String,
        path: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("scanning {} for device modaliases: {source}", .path.display())]
    Scan {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What the usual `finit_module` errors mean, since the bare errno names
/// ("No such file or directory" for an unresolved symbol) mislead.
fn errno_hint(errno: nix::errno::Errno) -> &'static str {
    use nix::errno::Errno;
    match errno {
        Errno::ENOEXEC => " (not a module for this kernel: wrong version or corrupt file)",
        Errno::ENOENT => " (unknown symbol: a dependency is missing or was built for another kernel)",
        Errno::ENODEV => " (the driver found no hardware it supports)",
        Errno::EKEYREJECTED | Errno::EKEYREVOKED | Errno::ENOKEY => {
            " (module signature rejected)"
        }
        Errno::EPERM => " (not allowed: module loading is disabled or we are not root)",
        Errno::EINVAL => " (invalid module, parameters or flags; compressed modules need a kernel with module decompression)",
        _ => "",
    }
}

/// The normalised module name of a name or a module file path:
/// `kernel/fs/fuse/fuse.ko.zst` → `fuse`, `virtio-blk` → `virtio_blk`.
pub fn module_name(name_or_path: &str) -> String {
    let base = name_or_path.rsplit('/').next().unwrap_or(name_or_path);
    let stem = MODULE_EXTENSIONS
        .iter()
        .find_map(|ext| base.strip_suffix(ext))
        .unwrap_or(base);
    stem.replace('-', "_")
}

fn path_name(path: &Path) -> String {
    module_name(&path.to_string_lossy())
}

/// One line of modules.dep.
#[derive(Debug, Clone)]
struct Module {
    /// Relative to the modules directory, as depmod wrote it.
    path: PathBuf,
    /// Every module this one needs (depmod lists them transitively), in
    /// depmod's order: the last one is loaded first.
    deps: Vec<PathBuf>,
}

/// Soft dependencies of one module (modules.softdep): names or aliases to
/// load before and after it, whose failure does not stop it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Softdep {
    pre: Vec<String>,
    post: Vec<String>,
}

/// The module index of one kernel.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    modules: BTreeMap<String, Module>,
    /// (pattern, module name) in file order.
    aliases: Vec<(String, String)>,
    builtin: BTreeSet<String>,
    softdeps: BTreeMap<String, Softdep>,
}

impl ModuleIndex {
    /// Read the index of `/lib/modules/<kver>`: `modules.dep` is required;
    /// `modules.alias`, `modules.builtin` and `modules.softdep` are optional
    /// (a trimmed initramfs may carry no aliases, a kernel may build nothing in).
    pub fn load(dir: &Path) -> Result<ModuleIndex, KmodError> {
        let dep_path = dir.join("modules.dep");
        let dep = std::fs::read_to_string(&dep_path).map_err(|source| KmodError::Read {
            path: dep_path.clone(),
            source,
        })?;
        let alias_path = dir.join("modules.alias");
        let builtin_path = dir.join("modules.builtin");
        let softdep_path = dir.join("modules.softdep");
        let mut index = ModuleIndex::default();
        index.parse_dep(&dep, &dep_path)?;
        index.parse_alias(&read_optional(&alias_path)?, &alias_path)?;
        index.parse_builtin(&read_optional(&builtin_path)?);
        index.parse_softdep(&read_optional(&softdep_path)?, &softdep_path)?;
        Ok(index)
    }

    /// Build an index from the text of `modules.dep`, `modules.alias` and
    /// `modules.builtin`.
    pub fn parse(dep: &str, alias: &str, builtin: &str) -> Result<ModuleIndex, KmodError> {
        let mut index = ModuleIndex::default();
        index.parse_dep(dep, Path::new("modules.dep"))?;
        index.parse_alias(alias, Path::new("modules.alias"))?;
        index.parse_builtin(builtin);
        Ok(index)
    }

    /// Add the soft dependencies of a `modules.softdep` text (`load` reads
    /// the file itself).
    pub fn with_softdeps(mut self, softdep: &str) -> Result<ModuleIndex, KmodError> {
        self.parse_softdep(softdep, Path::new("modules.softdep"))?;
        Ok(self)
    }

    fn parse_dep(&mut self, text: &str, file: &Path) -> Result<(), KmodError> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                return Err(parse_error(file, i, "expected `path: dependencies`"));
            };
            let path = path.trim();
            if path.is_empty() {
                return Err(parse_error(file, i, "empty module path"));
            }
            let module = Module {
                path: PathBuf::from(path),
                deps: deps.split_whitespace().map(PathBuf::from).collect(),
            };
            self.modules.insert(module_name(path), module);
        }
        Ok(())
    }

    fn parse_alias(&mut self, text: &str, file: &Path) -> Result<(), KmodError> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["alias", pattern, module] => self
                    .aliases
                    .push((pattern.to_string(), module_name(module))),
                _ => return Err(parse_error(file, i, "expected `alias PATTERN MODULE`")),
            }
        }
        Ok(())
    }

    fn parse_builtin(&mut self, text: &str) {
        self.builtin.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(module_name),
        );
    }

    fn parse_softdep(&mut self, text: &str, file: &Path) -> Result<(), KmodError> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some("softdep"), Some(module)) = (words.next(), words.next()) else {
                return Err(parse_error(
                    file,
                    i,
                    "expected `softdep MODULE pre: … post: …`",
                ));
            };
            let entry = self.softdeps.entry(module_name(module)).or_default();
            let mut post = None;
            for w in words {
                match w {
                    "pre:" => post = Some(false),
                    "post:" => post = Some(true),
                    name => match post {
                        Some(false) => entry.pre.push(name.to_string()),
                        Some(true) => entry.post.push(name.to_string()),
                        // Real kernels ship such lines (`softdep cifs gcm`, from
                        // a MODULE_SOFTDEP without "pre:"); modprobe ignores
                        // the words, and so do we.
                        None => {}
                    },
                }
            }
        }
        Ok(())
    }

    /// Whether the kernel has this module built in (nothing to load).
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&module_name(name))
    }

    /// Whether modules.dep has this module (it can be loaded from a file).
    pub fn contains(&self, name: &str) -> bool {
        self.modules.contains_key(&module_name(name))
    }

    /// Every module in modules.dep as (name, file relative to the modules
    /// directory), sorted by name: lets the image builder pick modules by
    /// directory (`kernel/drivers/ata/`).
    pub fn modules(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.modules
            .iter()
            .map(|(n, m)| (n.as_str(), m.path.as_path()))
    }

    /// The module file of `name`, relative to the modules directory.
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.modules
            .get(&module_name(name))
            .map(|m| m.path.as_path())
    }

    /// The files to load for `name`, dependencies first, each once, the
    /// module itself last; empty for a built-in module.
    pub fn deps_in_load_order(&self, name: &str) -> Result<Vec<PathBuf>, KmodError> {
        let name = module_name(name);
        if !self.modules.contains_key(&name) {
            if self.builtin.contains(&name) {
                return Ok(Vec::new());
            }
            return Err(KmodError::UnknownModule { name });
        }
        let mut out = Vec::new();
        let mut done = HashSet::new();
        let mut stack = Vec::new();
        self.visit(&name, &name, &mut out, &mut done, &mut stack)?;
        Ok(out)
    }

    fn visit(
        &self,
        name: &str,
        parent: &str,
        out: &mut Vec<PathBuf>,
        done: &mut HashSet<String>,
        stack: &mut Vec<String>,
    ) -> Result<(), KmodError> {
        if done.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            return Err(KmodError::DependencyLoop {
                module: name.to_string(),
            });
        }
        let Some(module) = self.modules.get(name) else {
            // depmod never lists built-in modules as dependencies, but a
            // hand-made index might: nothing to load for them.
            if self.builtin.contains(name) {
                return Ok(());
            }
            return Err(KmodError::MissingDependency {
                module: parent.to_string(),
                dep: self.dep_path_in(parent, name),
            });
        };
        stack.push(name.to_string());
        // modprobe loads the last listed dependency first; following it keeps
        // our order the one every other tool uses.
        for dep in module.deps.iter().rev() {
            self.visit(&path_name(dep), name, out, done, stack)?;
        }
        stack.pop();
        done.insert(name.to_string());
        out.push(module.path.clone());
        Ok(())
    }

    /// The path under which `parent`'s line names the dependency `name`.
    fn dep_path_in(&self, parent: &str, name: &str) -> PathBuf {
        self.modules
            .get(parent)
            .and_then(|m| m.deps.iter().find(|d| path_name(d) == name))
            .cloned()
            .unwrap_or_else(|| PathBuf::from(name))
    }

    /// Module names whose alias pattern matches a device's `modalias`, in
    /// the order of modules.alias, each once.
    pub fn aliases_for(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (pattern, module) in &self.aliases {
            if !out.contains(module) && glob_match(pattern, modalias) {
                out.push(module.clone());
            }
        }
        out
    }

    /// The modules a name stands for, the way modprobe reads its argument:
    /// a module (or built-in, which needs nothing: empty), else an alias.
    /// Empty when nothing matches.
    pub fn resolve(&self, name_or_alias: &str) -> Vec<String> {
        let name = module_name(name_or_alias);
        if self.modules.contains_key(&name) {
            vec![name]
        } else if self.builtin.contains(&name) {
            Vec::new()
        } else {
            self.aliases_for(name_or_alias)
        }
    }

    /// Soft dependencies of a module, resolved to module names: (pre, post).
    /// Names that match nothing are dropped: they are soft.
    pub fn softdeps_of(&self, name: &str) -> (Vec<String>, Vec<String>) {
        let Some(soft) = self.softdeps.get(&module_name(name)) else {
            return (Vec::new(), Vec::new());
        };
        let resolve_all = |names: &[String]| -> Vec<String> {
            let mut out: Vec<String> = Vec::new();
            for n in names {
                for m in self.resolve(n) {
                    if !out.contains(&m) {
                        out.push(m);
                    }
                }
            }
            out
        };
        (resolve_all(&soft.pre), resolve_all(&soft.post))
    }

    /// Every module file needed to load `names`: their dependencies and
    /// soft dependencies (with theirs). Built-in names add nothing; an
    /// unknown name is an error, an unknown soft dependency is skipped.
    pub fn closure(&self, names: &[&str]) -> Result<BTreeSet<PathBuf>, KmodError> {
        let mut files = BTreeSet::new();
        let mut seen = HashSet::new();
        let mut todo: Vec<(String, bool)> = names.iter().map(|n| (module_name(n), true)).collect();
        while let Some((name, required)) = todo.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            let order = match self.deps_in_load_order(&name) {
                Ok(order) => order,
                Err(e) if required => return Err(e),
                Err(_) => continue,
            };
            for path in order {
                let (pre, post) = self.softdeps_of(&path_name(&path));
                todo.extend(pre.into_iter().chain(post).map(|m| (m, false)));
                files.insert(path);
            }
        }
        Ok(files)
    }

    /// `modules.dep` and `modules.alias` for just these module files (paths
    /// as [`closure`](Self::closure) returns them), sorted so the same set
    /// always gives the same bytes. Files the index does not know are left out.
    pub fn subset_index(&self, files: &BTreeSet<PathBuf>) -> (String, String) {
        let mut dep_lines: Vec<String> = self
            .modules
            .values()
            .filter(|m| files.contains(&m.path))
            .map(|m| {
                let mut line = format!("{}:", m.path.display());
                for d in &m.deps {
                    line.push(' ');
                    line.push_str(&d.display().to_string());
                }
                line
            })
            .collect();
        dep_lines.sort();
        let names = self.names_of(files);
        let mut alias_lines: Vec<String> = self
            .aliases
            .iter()
            .filter(|(_, m)| names.contains(m))
            .map(|(p, m)| format!("alias {p} {m}"))
            .collect();
        alias_lines.sort();
        alias_lines.dedup();
        (join_lines(&dep_lines), join_lines(&alias_lines))
    }

    /// `modules.softdep` for just these module files, sorted; to be written
    /// next to [`subset_index`](Self::subset_index)'s files.
    pub fn subset_softdep(&self, files: &BTreeSet<PathBuf>) -> String {
        let names = self.names_of(files);
        let lines: Vec<String> = self
            .softdeps
            .iter()
            .filter(|(m, _)| names.contains(*m))
            .map(|(m, s)| {
                let mut line = format!("softdep {m}");
                if !s.pre.is_empty() {
                    line.push_str(" pre: ");
                    line.push_str(&s.pre.join(" "));
                }
                if !s.post.is_empty() {
                    line.push_str(" post: ");
                    line.push_str(&s.post.join(" "));
                }
                line
            })
            .collect();
        join_lines(&lines)
    }

    fn names_of(&self, files: &BTreeSet<PathBuf>) -> BTreeSet<String> {
        self.modules
            .iter()
            .filter(|(_, m)| files.contains(&m.path))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

fn join_lines(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn parse_error(file: &Path, index: usize, reason: &str) -> KmodError {
    KmodError::Parse {
        file: file.to_path_buf(),
        line: index + 1,
        reason: reason.to_string(),
    }
}

fn read_optional(path: &Path) -> Result<String, KmodError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(KmodError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/fs/squashfs/squashfs.ko.xz:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio-ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio-ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio-ring.ko
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/usb/storage/usb-storage.ko: kernel/drivers/scsi/sd_mod.ko kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/scsi/scsi_mod.ko:
";
    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage
alias fs-ext4 ext4
";
    const BUILTIN: &str = "kernel/fs/overlayfs/overlay.ko\nkernel/drivers/ata/libata.ko\n";
    // As depmod writes it, including a line real kernels have that names
    // a module before any `pre:`.
    const SOFTDEP: &str = "# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crc32c
softdep cifs gcm
softdep sd_mod post: ghost
";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(DEP, ALIAS, BUILTIN)
            .unwrap()
            .with_softdeps(SOFTDEP)
            .unwrap()
    }

    fn paths(v: &[PathBuf]) -> Vec<String> {
        v.iter().map(|p| p.display().to_string()).collect()
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(
            module_name("kernel/drivers/virtio/virtio-ring.ko"),
            "virtio_ring"
        );
        assert_eq!(module_name("squashfs.ko.xz"), "squashfs");
        assert_eq!(module_name("a/b/fuse.ko.zst"), "fuse");
        assert_eq!(module_name("x.ko.gz"), "x");
        assert_eq!(module_name("usb-storage"), "usb_storage");
        let i = index();
        assert!(i.contains("virtio-ring"));
        assert!(i.contains("usb_storage"));
        assert!(i.is_builtin("overlay"));
        let scsi: Vec<&str> = i
            .modules()
            .filter(|(_, p)| p.starts_with("kernel/drivers/scsi"))
            .map(|(n, _)| n)
            .collect();
        assert_eq!(scsi, ["scsi_mod", "sd_mod"]);
        assert_eq!(
            i.path_of("crc32c_intel"),
            Some(Path::new("kernel/arch/x86/crypto/crc32c-intel.ko"))
        );
    }

    #[test]
    fn load_order_puts_dependencies_first_once() {
        let i = index();
        assert_eq!(
            paths(&i.deps_in_load_order("ext4").unwrap()),
            [
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/ext4/ext4.ko"
            ]
        );
        assert_eq!(
            paths(&i.deps_in_load_order("usb-storage").unwrap()),
            [
                "kernel/drivers/scsi/scsi_mod.ko",
                "kernel/drivers/scsi/sd_mod.ko",
                "kernel/drivers/usb/storage/usb-storage.ko"
            ]
        );
        assert_eq!(
            paths(&i.deps_in_load_order("squashfs").unwrap()),
            ["kernel/fs/squashfs/squashfs.ko.xz"]
        );
    }

    #[test]
    fn builtin_needs_nothing_and_unknown_is_an_error() {
        let i = index();
        assert!(i.deps_in_load_order("overlay").unwrap().is_empty());
        let e = i.deps_in_load_order("btrfs").unwrap_err();
        assert!(matches!(e, KmodError::UnknownModule { ref name } if name == "btrfs"));
        assert!(e.to_string().contains("module btrfs is unknown"));
    }

    #[test]
    fn missing_dependency_and_loops_are_reported() {
        let i = ModuleIndex::parse("a.ko: b.ko\n", "", "").unwrap();
        let e = i.deps_in_load_order("a").unwrap_err();
        assert_eq!(
            e.to_string(),
            "modules.dep lists b.ko as a dependency of a but has no entry for it"
        );
        let i = ModuleIndex::parse("a.ko: b.ko\nb.ko: a.ko\n", "", "").unwrap();
        assert!(matches!(
            i.deps_in_load_order("a").unwrap_err(),
            KmodError::DependencyLoop { .. }
        ));
    }

    #[test]
    fn parse_errors_say_file_and_line() {
        let e = ModuleIndex::parse("a.ko:\nnonsense\n", "", "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "modules.dep, line 2: expected `path: dependencies`"
        );
        let e = ModuleIndex::parse("", "alias x\n", "").unwrap_err();
        assert!(e.to_string().starts_with("modules.alias, line 1:"), "{e}");
        let e = ModuleIndex::default()
            .with_softdeps("softdep\n")
            .unwrap_err();
        assert!(e.to_string().starts_with("modules.softdep, line 1:"), "{e}");
    }

    #[test]
    fn aliases_match_modaliases() {
        let i = index();
        assert_eq!(
            i.aliases_for("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"),
            ["virtio_pci"]
        );
        assert_eq!(i.aliases_for("virtio:d00000002v00001AF4"), ["virtio_blk"]);
        assert_eq!(i.aliases_for("crc32c"), ["crc32c_generic", "crc32c_intel"]);
        assert!(i
            .aliases_for("pci:v00008086d00001234sv0sd0bc01sc00i00")
            .is_empty());
        assert_eq!(
            i.aliases_for("usb:v0781p5567d0100dc00dsc00dp00ic08isc06ip50in00"),
            ["usb_storage"]
        );
    }

    #[test]
    fn resolve_reads_names_then_aliases() {
        let i = index();
        assert_eq!(i.resolve("virtio-blk"), ["virtio_blk"]);
        assert!(i.resolve("overlay").is_empty());
        assert_eq!(i.resolve("fs-ext4"), ["ext4"]);
        assert!(i.resolve("nothing").is_empty());
        assert_eq!(
            i.softdeps_of("ext4"),
            (
                vec!["crc32c_generic".to_string(), "crc32c_intel".to_string()],
                vec![]
            )
        );
    }

    #[test]
    fn closure_collects_dependencies_and_softdeps() {
        let i = index();
        let c = i.closure(&["ext4", "overlay", "virtio_blk"]).unwrap();
        let got: Vec<String> = c.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            got,
            [
                "kernel/arch/x86/crypto/crc32c-intel.ko",
                "kernel/crypto/crc32c_generic.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/drivers/virtio/virtio-ring.ko",
                "kernel/fs/ext4/ext4.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko",
            ]
        );
        assert!(i.closure(&["ext4", "nope"]).is_err());
        // A soft dependency nobody provides is skipped, not an error.
        let i = ModuleIndex::parse("a.ko:\n", "", "")
            .unwrap()
            .with_softdeps("softdep a pre: ghost\n")
            .unwrap();
        assert_eq!(i.closure(&["a"]).unwrap().len(), 1);
    }

    #[test]
    fn subset_index_is_consistent_and_sorted() {
        let i = index();
        let c = i.closure(&["virtio_blk", "virtio_pci"]).unwrap();
        let (dep, alias) = i.subset_index(&c);
        assert_eq!(
            dep,
            "\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio-ring.ko
kernel/drivers/virtio/virtio-ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio-ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
"
        );
        assert_eq!(
            alias,
            "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\nalias virtio:d00000002v* virtio_blk\n"
        );
        // The subset parses back into an index that loads the same way.
        let small = ModuleIndex::parse(&dep, &alias, "").unwrap();
        assert_eq!(
            small.deps_in_load_order("virtio_pci").unwrap(),
            i.deps_in_load_order("virtio_pci").unwrap()
        );
        let ext4 = i.closure(&["ext4"]).unwrap();
        assert_eq!(i.subset_softdep(&ext4), "softdep ext4 pre: crc32c\n");
        assert_eq!(i.subset_softdep(&c), "");
        let usb = i.closure(&["usb-storage"]).unwrap();
        assert_eq!(i.subset_softdep(&usb), "softdep sd_mod post: ghost\n");
        // What the subset says parses back.
        assert!(ModuleIndex::default()
            .with_softdeps(&i.subset_softdep(&ext4))
            .is_ok());
    }

    #[test]
    fn load_reads_a_directory_with_optional_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), DEP).unwrap();
        let i = ModuleIndex::load(dir.path()).unwrap();
        assert!(i.contains("ext4"));
        assert!(i.aliases_for("crc32c").is_empty());
        std::fs::write(dir.path().join("modules.alias"), ALIAS).unwrap();
        std::fs::write(dir.path().join("modules.builtin"), BUILTIN).unwrap();
        std::fs::write(dir.path().join("modules.softdep"), SOFTDEP).unwrap();
        let i = ModuleIndex::load(dir.path()).unwrap();
        assert!(i.is_builtin("libata"));
        assert_eq!(i.softdeps_of("ext4").0.len(), 2);
        let e = ModuleIndex::load(&dir.path().join("nope")).unwrap_err();
        assert!(e.to_string().contains("nope/modules.dep"), "{e}");
    }
}
