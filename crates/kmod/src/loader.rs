//! Loading modules into the running kernel with `finit_module(2)`.

use crate::{module_name, KmodError, ModuleIndex};
use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};
use std::collections::{BTreeSet, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};

/// `MODULE_INIT_COMPRESSED_FILE` from linux/module.h (Linux 5.17+): the
/// kernel decompresses the file itself. nix does not name it.
const MODULE_INIT_COMPRESSED_FILE: std::ffi::c_uint = 4;

/// Why inserting one module file failed, before it becomes a [`KmodError`]
/// naming the module.
#[derive(Debug)]
pub(crate) enum InsertFailure {
    Open(std::io::Error),
    Kernel(Errno),
}

type Inserter = Box<dyn FnMut(&Path) -> Result<(), InsertFailure>>;

/// Loads modules and their dependencies into the running kernel, like
/// modprobe, and remembers what it loaded.
pub struct Loader {
    index: ModuleIndex,
    modules_dir: PathBuf,
    sysfs: PathBuf,
    insert: Inserter,
    loaded: Vec<String>,
    /// Modules whose insertion failed: not retried by coldplug, so a driver
    /// that rejects its hardware warns once, not on every rescan.
    failed: BTreeSet<String>,
    /// Modalias strings already matched: a rescan only matches new devices.
    seen_modaliases: HashSet<String>,
    /// Modules being loaded (guards against soft-dependency loops).
    in_progress: Vec<String>,
    warnings: Vec<KmodError>,
}

impl Loader {
    /// A loader for the modules under `modules_dir` (`/lib/modules/<kver>`),
    /// described by `index`. Loaded modules are looked up in `/sys/module`.
    pub fn new(index: ModuleIndex, modules_dir: impl Into<PathBuf>) -> Loader {
        Loader {
            index,
            modules_dir: modules_dir.into(),
            sysfs: PathBuf::from("/sys"),
            insert: Box::new(insert_file),
            loaded: Vec::new(),
            failed: BTreeSet::new(),
            seen_modaliases: HashSet::new(),
            in_progress: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Where sysfs is mounted, if not at `/sys` (for `/sys/module`).
    pub fn with_sysfs(mut self, sysfs_root: impl Into<PathBuf>) -> Loader {
        self.sysfs = sysfs_root.into();
        self
    }

    #[cfg(test)]
    pub(crate) fn with_inserter(
        mut self,
        f: impl FnMut(&Path) -> Result<(), InsertFailure> + 'static,
    ) -> Loader {
        self.insert = Box::new(f);
        self
    }

    pub fn index(&self) -> &ModuleIndex {
        &self.index
    }

    /// Modules this loader inserted, in load order.
    pub fn loaded(&self) -> &[String] {
        &self.loaded
    }

    /// Failures that did not stop anything (coldplug drivers, soft
    /// dependencies), oldest first; the list is emptied.
    pub fn take_warnings(&mut self) -> Vec<KmodError> {
        std::mem::take(&mut self.warnings)
    }

    /// Whether the kernel has this module now (loaded or built in).
    pub fn is_loaded(&self, name: &str) -> bool {
        let name = module_name(name);
        self.loaded.contains(&name)
            || self.index.is_builtin(&name)
            || self.sysfs.join("module").join(&name).exists()
    }

    /// Load a module by name or, like modprobe, by alias (every module the
    /// alias matches), with dependencies first and soft dependencies around
    /// it. Returns how many modules were newly inserted. Built-in or already
    /// loaded modules need nothing; a name that is neither a module nor an
    /// alias is [`KmodError::UnknownModule`].
    pub fn load(&mut self, name_or_alias: &str) -> Result<usize, KmodError> {
        let name = module_name(name_or_alias);
        if self.index.is_builtin(&name) {
            return Ok(0);
        }
        if self.index.contains(&name) {
            return self.load_module(&name);
        }
        let modules = self.index.aliases_for(name_or_alias);
        if modules.is_empty() {
            return Err(KmodError::UnknownModule { name });
        }
        // An alias can match several drivers (crc32c: generic and
        // CPU-specific); any one of them loading is success.
        let mut count = 0;
        let mut errors = Vec::new();
        let mut any_ok = false;
        for m in modules {
            match self.load_module(&m) {
                Ok(n) => {
                    count += n;
                    any_ok = true;
                }
                Err(e) => errors.push(e),
            }
        }
        if !any_ok && !errors.is_empty() {
            let first = errors.remove(0);
            self.warnings.extend(errors);
            return Err(first);
        }
        self.warnings.extend(errors);
        Ok(count)
    }

    /// Load one module (a modules.dep name): soft pre-dependencies, then
    /// its dependencies (each with its own soft dependencies, as modprobe
    /// does), then the module, then soft post-dependencies.
    fn load_module(&mut self, name: &str) -> Result<usize, KmodError> {
        if self.is_loaded(name) {
            return Ok(0);
        }
        let order = self.index.deps_in_load_order(name)?;
        let Some((own, deps)) = order.split_last() else {
            return Ok(0);
        };
        self.in_progress.push(name.to_string());
        let result = self.load_module_steps(name, own, deps);
        self.in_progress.pop();
        result
    }

    fn load_module_steps(
        &mut self,
        name: &str,
        own: &Path,
        deps: &[PathBuf],
    ) -> Result<usize, KmodError> {
        let (pre, post) = self.index.softdeps_of(name);
        let mut count = self.load_soft(&pre);
        for dep in deps {
            count += self.load_module(&module_name(&dep.to_string_lossy()))?;
        }
        count += self.insert_one(name, own)?;
        count += self.load_soft(&post);
        Ok(count)
    }

    /// Soft dependencies: failures become warnings.
    fn load_soft(&mut self, names: &[String]) -> usize {
        let mut count = 0;
        for n in names {
            if self.in_progress.contains(n) || self.is_loaded(n) {
                continue;
            }
            match self.load_module(n) {
                Ok(k) => count += k,
                Err(e) => self.warnings.push(e),
            }
        }
        count
    }

    fn insert_one(&mut self, name: &str, rel: &Path) -> Result<usize, KmodError> {
        let path = self.modules_dir.join(rel);
        match (self.insert)(&path) {
            Ok(()) => {
                self.loaded.push(name.to_string());
                Ok(1)
            }
            // Someone (the kernel itself, racing a request_module) loaded it
            // between our check and the call: what we wanted is there.
            Err(InsertFailure::Kernel(Errno::EEXIST)) => Ok(0),
            Err(f) => {
                self.failed.insert(name.to_string());
                Err(match f {
                    InsertFailure::Open(source) => KmodError::Open {
                        name: name.to_string(),
                        path,
                        source,
                    },
                    InsertFailure::Kernel(errno) => KmodError::Insert {
                        name: name.to_string(),
                        path,
                        errno,
                    },
                })
            }
        }
    }

    /// Load drivers for the devices present: read every
    /// `<sysfs_root>/bus/*/devices/*/modalias`, and load the modules whose
    /// aliases match, skipping modalias strings seen by an earlier call and
    /// modules that failed before. A driver that fails to load is a warning
    /// ([`take_warnings`](Self::take_warnings)), not an error: hardware the
    /// system does not need may have drivers that refuse it. Returns how
    /// many modules were newly inserted; call again after loading bus
    /// drivers, since their devices appear only then.
    pub fn coldplug(&mut self, sysfs_root: &Path) -> Result<usize, KmodError> {
        let bus_dir = sysfs_root.join("bus");
        let mut modaliases = Vec::new();
        for bus in sorted_entries(&bus_dir).map_err(|source| KmodError::Scan {
            path: bus_dir.clone(),
            source,
        })? {
            // A bus without a readable device list (or a device that went
            // away while we looked) simply offers nothing to load.
            let Ok(devices) = sorted_entries(&bus.join("devices")) else {
                continue;
            };
            for dev in devices {
                if let Ok(text) = std::fs::read_to_string(dev.join("modalias")) {
                    let alias = text.trim().to_string();
                    if !alias.is_empty() && self.seen_modaliases.insert(alias.clone()) {
                        modaliases.push(alias);
                    }
                }
            }
        }
        let mut count = 0;
        for alias in modaliases {
            for module in self.index.aliases_for(&alias) {
                if self.failed.contains(&module) || self.is_loaded(&module) {
                    continue;
                }
                match self.load_module(&module) {
                    Ok(n) => count += n,
                    Err(e) => self.warnings.push(e),
                }
            }
        }
        Ok(count)
    }
}

fn sorted_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        v.push(e?.path());
    }
    v.sort();
    Ok(v)
}

/// The real insertion: open the file and hand it to the kernel.
fn insert_file(path: &Path) -> Result<(), InsertFailure> {
    let file = File::open(path).map_err(InsertFailure::Open)?;
    let name = path.to_string_lossy();
    let compressed = [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|ext| name.ends_with(ext));
    // Compressed files are decompressed by the kernel (CONFIG_MODULE_DECOMPRESS);
    // a kernel without it answers EINVAL, which the error explains.
    let flags = if compressed {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    finit_module(&file, &CString::default(), flags).map_err(InsertFailure::Kernel)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/gpu/bad_gpu.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
";
    const ALIAS: &str = "\
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias pci:v000010DEd*sv*sd*bc03sc*i* bad_gpu
alias crc32c crc32c_generic
alias crc32c crc32c_intel
";

    struct Fake {
        sysfs: tempfile::TempDir,
        calls: Rc<RefCell<Vec<String>>>,
    }

    impl Fake {
        fn new() -> Fake {
            let sysfs = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(sysfs.path().join("module")).unwrap();
            std::fs::create_dir_all(sysfs.path().join("bus")).unwrap();
            Fake {
                sysfs,
                calls: Rc::default(),
            }
        }

        fn device(&self, bus: &str, dev: &str, modalias: &str) {
            let d = self
                .sysfs
                .path()
                .join("bus")
                .join(bus)
                .join("devices")
                .join(dev);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("modalias"), format!("{modalias}\n")).unwrap();
        }

        /// A loader whose "kernel" records calls, fails modules named
        /// bad_* and crc32c_intel (ENODEV), and creates /sys/module entries.
        fn loader(&self, softdep: &str) -> Loader {
            let index = ModuleIndex::parse(DEP, ALIAS, "kernel/fs/overlayfs/overlay.ko\n")
                .unwrap()
                .with_softdeps(softdep)
                .unwrap();
            let calls = self.calls.clone();
            let sys_module = self.sysfs.path().join("module");
            Loader::new(index, "/lib/modules/6.1.0")
                .with_sysfs(self.sysfs.path())
                .with_inserter(move |path| {
                    assert!(path.starts_with("/lib/modules/6.1.0/kernel"));
                    let name = module_name(&path.to_string_lossy());
                    calls.borrow_mut().push(name.clone());
                    if name.starts_with("bad_") || name == "crc32c_intel" {
                        return Err(InsertFailure::Kernel(Errno::ENODEV));
                    }
                    std::fs::create_dir_all(sys_module.join(name)).unwrap();
                    Ok(())
                })
        }

        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    #[test]
    fn load_inserts_dependencies_first_and_skips_loaded() {
        let f = Fake::new();
        let mut l = f.loader("");
        assert_eq!(l.load("virtio-pci").unwrap(), 2);
        assert_eq!(f.calls(), ["virtio_ring", "virtio_pci"]);
        assert_eq!(l.load("virtio_blk").unwrap(), 1);
        assert_eq!(f.calls(), ["virtio_ring", "virtio_pci", "virtio_blk"]);
        assert_eq!(l.loaded(), ["virtio_ring", "virtio_pci", "virtio_blk"]);
        // Built in, or already loaded by someone else: nothing to do.
        assert_eq!(l.load("overlay").unwrap(), 0);
        std::fs::create_dir_all(f.sysfs.path().join("module/jbd2")).unwrap();
        assert_eq!(l.load("ext4").unwrap(), 1);
        assert_eq!(f.calls().last().unwrap(), "ext4");
        assert!(matches!(
            l.load("btrfs").unwrap_err(),
            KmodError::UnknownModule { .. }
        ));
    }

    #[test]
    fn eexist_counts_as_success() {
        let f = Fake::new();
        let index = ModuleIndex::parse(DEP, "", "").unwrap();
        let mut l = Loader::new(index, "/m")
            .with_sysfs(f.sysfs.path())
            .with_inserter(|_| Err(InsertFailure::Kernel(Errno::EEXIST)));
        assert_eq!(l.load("jbd2").unwrap(), 0);
        assert!(l.take_warnings().is_empty());
    }

    #[test]
    fn failures_name_the_module_and_explain_errno() {
        let f = Fake::new();
        let mut l = f.loader("");
        let e = l.load("bad_gpu").unwrap_err();
        assert_eq!(
            e.to_string(),
            "loading module bad_gpu (/lib/modules/6.1.0/kernel/drivers/gpu/bad_gpu.ko) failed: \
             ENODEV: No such device (the driver found no hardware it supports)"
        );
        let index = ModuleIndex::parse(DEP, "", "").unwrap();
        let mut l = Loader::new(index, "/nonexistent-modules").with_sysfs(f.sysfs.path());
        let e = l.load("jbd2").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "loading module jbd2: opening /nonexistent-modules/kernel/fs/jbd2/jbd2.ko:"
            ),
            "{e}"
        );
    }

    #[test]
    fn aliases_and_softdeps_load_what_they_can() {
        let f = Fake::new();
        let mut l = f.loader("softdep ext4 pre: crc32c\n");
        // crc32c_intel fails (ENODEV) but crc32c_generic loads: ext4 loads,
        // the failure is a warning.
        assert_eq!(l.load("ext4").unwrap(), 3);
        assert_eq!(
            f.calls(),
            ["crc32c_generic", "crc32c_intel", "jbd2", "ext4"]
        );
        let w = l.take_warnings();
        assert_eq!(w.len(), 1);
        assert!(w[0].to_string().contains("crc32c_intel"));
        // By alias directly: one of two loading is success.
        let f = Fake::new();
        let mut l = f.loader("");
        assert_eq!(l.load("crc32c").unwrap(), 1);
        assert_eq!(l.take_warnings().len(), 1);
        // Post soft dependencies come after the module.
        let f = Fake::new();
        let mut l = f.loader("softdep virtio_pci post: virtio_blk\n");
        assert_eq!(l.load("virtio_pci").unwrap(), 3);
        assert_eq!(f.calls(), ["virtio_ring", "virtio_pci", "virtio_blk"]);
        // Soft dependency loops end.
        let f = Fake::new();
        let mut l = f.loader("softdep jbd2 pre: ext4\nsoftdep ext4 pre: jbd2\n");
        assert_eq!(l.load("ext4").unwrap(), 2);
    }

    #[test]
    fn coldplug_loads_matching_drivers_and_rescans_new_devices() {
        let f = Fake::new();
        f.device(
            "pci",
            "0000:00:04.0",
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
        );
        f.device(
            "pci",
            "0000:00:02.0",
            "pci:v000010DEd00001234sv0sd0bc03sc00i00",
        );
        f.device(
            "pci",
            "0000:00:01.0",
            "pci:v00008086d00007000sv0sd0bc06sc01i00",
        );
        std::fs::create_dir_all(f.sysfs.path().join("bus/platform")).unwrap();
        let mut l = f.loader("");
        assert_eq!(l.coldplug(f.sysfs.path()).unwrap(), 2);
        let w = l.take_warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].to_string().contains("bad_gpu"));
        // The virtio bus driver is in: its devices appear, the next scan
        // loads their drivers and does not retry the failed one.
        f.device("virtio", "virtio0", "virtio:d00000002v00001AF4");
        assert_eq!(l.coldplug(f.sysfs.path()).unwrap(), 1);
        assert!(l.take_warnings().is_empty());
        assert_eq!(
            f.calls(),
            ["bad_gpu", "virtio_ring", "virtio_pci", "virtio_blk"]
        );
        assert_eq!(l.coldplug(f.sysfs.path()).unwrap(), 0);
        let e = l.coldplug(&f.sysfs.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing/bus"), "{e}");
    }
}
