//! `maculaos-sdk build-image`: from Debian packages and this repository's
//! `image/` directory to a bootable GPT disk image, the slot image of one
//! version, and a manifest.
//!
//! Stages (each timed; cached ones say so):
//! 1. host tools — install what is missing
//! 2. binaries — release builds of `maculaos` and the static `maculaos-init`
//! 3. rootfs — Debian packages through mmdebstrap, cached per package set
//! 4. root — the rootfs plus image/overlay, our binaries, os-release, banner,
//!    kernel and our initramfs in /boot, packed as a reproducible zstd squashfs
//!    (cached per input hash). This squashfs is the slot image.
//! 5. esp — GRUB (BIOS and UEFI), grub.cfg, grubenv, slot A's kernel and initrd
//! 6. disk — the GPT disk image
//! 7. iso — the live/installer ISO (same kernel, initramfs and slot image)
//! 8. manifest — build-manifest.json with hashes, sizes and packages

pub use maculaos_boot::bios;
pub mod cpio;
pub mod disk;
pub mod hosttools;
pub mod initramfs;
pub mod iso;
pub use maculaos_boot::layout;
pub mod rootfs;
pub mod stages;
pub mod util;

use anyhow::{bail, Context, Result};
use maculaos_boot::Slot;
use maculaos_runner::Cmd;
use serde::{Deserialize, Serialize};
use stages::{fmt_duration, fmt_size, Stages};
use std::fs;
use std::path::{Path, PathBuf};
use util::KeyHasher;

pub const ARCH: &str = "amd64";
const INIT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Everything a build depends on.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The repository (holds `image/` and the Cargo workspace).
    pub repo: PathBuf,
    pub out: PathBuf,
    /// Downloaded .debs and cached stages; shared by builds and clones.
    pub cache: PathBuf,
    pub version: String,
    pub suite: String,
    pub mirror: String,
    pub source_date_epoch: u64,
    /// zstd level for the root squashfs.
    pub zstd_level: u32,
}

impl BuildOptions {
    pub fn image_dir(&self) -> PathBuf {
        self.repo.join("image")
    }

    pub fn disk_name(&self) -> String {
        format!("maculaos-{}-{ARCH}.img", self.version)
    }

    pub fn slot_name(&self) -> String {
        format!("maculaos-{}-{ARCH}.squashfs", self.version)
    }

    pub fn iso_name(&self) -> String {
        format!("maculaos-{}-{ARCH}.iso", self.version)
    }

    pub fn disk_path(&self) -> PathBuf {
        self.out.join(self.disk_name())
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.out.join(MANIFEST)
    }
}

pub const MANIFEST: &str = "build-manifest.json";

/// Default cache: $MACULAOS_CACHE, else ~/.cache/maculaos (outside the clone,
/// so fresh clones on the same machine reuse downloads and stages).
pub fn default_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("MACULAOS_CACHE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    base.join("maculaos")
}

/// SOURCE_DATE_EPOCH from the environment, else the last commit's time, else 0.
pub fn source_date_epoch(repo: &Path) -> u64 {
    if let Some(v) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
    Cmd::new("git")
        .arg("-C")
        .arg(repo)
        .args(["log", "-1", "--format=%ct"])
        .quiet()
        .output()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Hash of everything in the repository that goes into an image; the dev VM
/// rebuilds when it differs from the manifest's.
pub fn inputs_hash(opts: &BuildOptions) -> Result<String> {
    let mut k = KeyHasher::default();
    k.str("version", &opts.version)
        .str("suite", &opts.suite)
        .str("mirror", &opts.mirror)
        .str("zstd", &opts.zstd_level.to_string());
    k.tree(&opts.image_dir())?;
    for f in ["Cargo.toml", "Cargo.lock"] {
        let p = opts.repo.join(f);
        if p.exists() {
            k.file(&p)?;
        }
    }
    let crates = opts.repo.join("crates");
    for entry in fs::read_dir(&crates).with_context(|| format!("reading {}", crates.display()))? {
        let dir = entry?.path();
        if dir.join("src").is_dir() {
            k.tree(&dir.join("src"))?;
        }
        if dir.join("Cargo.toml").exists() {
            k.file(&dir.join("Cargo.toml"))?;
        }
    }
    Ok(k.finish())
}

/// One output file in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Output {
    pub name: String,
    pub kind: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub seconds: f64,
    pub note: String,
}

/// build-manifest.json
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: String,
    pub arch: String,
    pub kernel: String,
    pub source_date_epoch: u64,
    pub inputs: String,
    pub outputs: Vec<Output>,
    pub slot_size: u64,
    pub stages: Vec<StageRecord>,
    pub packages: Vec<rootfs::Package>,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn output(&self, kind: &str) -> Option<&Output> {
        self.outputs.iter().find(|o| o.kind == kind)
    }
}

/// What a finished build produced.
pub struct BuildReport {
    pub manifest: Manifest,
    pub disk: PathBuf,
    pub slot: PathBuf,
    pub iso: PathBuf,
}

struct Binaries {
    cli: PathBuf,
    init: PathBuf,
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

fn target_dir(repo: &Path) -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(d));
    }
    let meta = Cmd::new(cargo())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(repo)
        .quiet()
        .output()?;
    let v: serde_json::Value = serde_json::from_str(&meta).context("parsing cargo metadata")?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

fn build_binaries(repo: &Path) -> Result<Binaries> {
    let target = target_dir(repo)?;
    Cmd::new(cargo())
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "maculaos-cli",
            "--bin",
            "maculaos",
        ])
        .current_dir(repo)
        .run()?;
    // maculaos-init runs before any root is mounted: link it statically so
    // the initramfs needs no C library.
    Cmd::new(cargo())
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "maculaos-init",
            "--bin",
            "maculaos-init",
            "--target",
            INIT_TARGET,
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(repo)
        .run()?;
    Ok(Binaries {
        cli: target.join("release/maculaos"),
        init: target.join(INIT_TARGET).join("release/maculaos-init"),
    })
}

/// The cached result of the root stage.
struct Root {
    dir: PathBuf,
    squashfs: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    kver: String,
}

/// Where a node finds the public keys it trusts for update bundles.
pub const TRUSTED_KEYS_DIR: &str = "/usr/share/maculaos/keys";

/// The public keys the image will trust: `image/keys/*.pub`, or, when there
/// is none, the development key (made on first use), with a loud warning.
fn trusted_keys(opts: &BuildOptions) -> Result<Vec<PathBuf>> {
    let dir = opts.image_dir().join("keys");
    let mut keys: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pub"))
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    for k in &keys {
        maculaos_bundle::load_public_key(k)
            .map_err(|e| anyhow::anyhow!("{}: not a minisign public key: {e}", k.display()))?;
    }
    if keys.is_empty() {
        let (public, _) = maculaos_bundle::dev_keypair(&opts.cache)?;
        eprintln!(
            "WARNING: no key in {}: this image trusts only the development key {} — \
             it is dev-signed and must not be released",
            dir.display(),
            public.display()
        );
        keys.push(public);
    }
    Ok(keys)
}

fn root_key(
    opts: &BuildOptions,
    rootfs_key: &str,
    bins: &Binaries,
    keys: &[PathBuf],
) -> Result<String> {
    let image = opts.image_dir();
    let mut k = KeyHasher::default();
    k.str("rootfs", rootfs_key)
        .str("version", &opts.version)
        .str("sde", &opts.source_date_epoch.to_string())
        .str("zstd", &opts.zstd_level.to_string());
    for d in ["overlay", "templates", "initramfs"] {
        k.tree(&image.join(d))?;
    }
    k.file(&image.join("hooks/finalize.sh"))?;
    for key in keys {
        k.file(key)?;
    }
    k.str("cli", &util::sha256_file(&bins.cli)?);
    k.str("init", &util::sha256_file(&bins.init)?);
    Ok(k.finish())
}

fn make_root(
    opts: &BuildOptions,
    debian: &Path,
    bins: &Binaries,
    keys: &[PathBuf],
    key: &str,
) -> Result<(Root, String)> {
    let base = opts.cache.join("root");
    let dir = base.join(key);
    let root = |kver: String| Root {
        squashfs: dir.join("root.squashfs"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        dir: dir.clone(),
        kver,
    };
    if dir.join(".complete").exists() {
        let kver = fs::read_to_string(dir.join("kernel-version"))?
            .trim()
            .to_string();
        return Ok((root(kver), "cached".into()));
    }
    fs::create_dir_all(&base)?;
    util::require_space(&base, 3 << 30, "the root filesystem stage")?;
    let work = opts.cache.join("work/root");
    rootfs::remove_tree(&work)?;
    fs::create_dir_all(work.parent().unwrap_or(&base))?;
    Cmd::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(debian)
        .arg(&work)
        .quiet()
        .run()?;
    for f in [".complete", ".packages.tsv"] {
        let _ = fs::remove_file(work.join(f));
    }
    let image = opts.image_dir();
    let n = rootfs::copy_overlay(&image.join("overlay"), &work)?;
    let install = |src: &Path, dst: &str| -> Result<()> {
        let d = work.join(dst.trim_start_matches('/'));
        fs::copy(src, &d).with_context(|| format!("installing {} as {dst}", src.display()))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
        Ok(())
    };
    install(&bins.cli, "/usr/bin/maculaos")?;
    let keys_dir = work.join(TRUSTED_KEYS_DIR.trim_start_matches('/'));
    fs::create_dir_all(&keys_dir)?;
    for k in keys {
        let name = k.file_name().context("a key file without a name")?;
        fs::copy(k, keys_dir.join(name))
            .with_context(|| format!("installing {} into {TRUSTED_KEYS_DIR}", k.display()))?;
    }

    // Identity and banner.
    let tpl = |name: &str| -> Result<String> {
        let p = image.join("templates").join(name);
        fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let build_id = &key[..12];
    let vars = [("VERSION", opts.version.as_str()), ("BUILD_ID", build_id)];
    let logo = rootfs::render(&tpl("logo.txt")?, &vars);
    let logo = logo.trim_end();
    fs::write(
        work.join("usr/lib/os-release"),
        rootfs::render(&tpl("os-release")?, &vars),
    )?;
    let issue =
        rootfs::render(&tpl("issue")?, &vars).replace("@LOGO@", &rootfs::escape_issue(logo));
    fs::write(work.join("etc/issue"), issue)?;
    fs::write(
        work.join("etc/motd"),
        rootfs::render(&tpl("motd")?, &vars).replace("@LOGO@", logo),
    )?;
    fs::create_dir_all(work.join("usr/share/maculaos"))?;
    fs::write(
        work.join("usr/share/maculaos/logo.txt"),
        format!("{logo}\n"),
    )?;

    Cmd::new("chroot")
        .arg(&work)
        .args(["/bin/sh", "-s"])
        .stdin(fs::read(image.join("hooks/finalize.sh"))?)
        .quiet()
        .run()
        .context("running image/hooks/finalize.sh in the root")?;

    // Kernel and initramfs: /boot holds exactly vmlinuz and initrd.img.
    let kver = rootfs::kernel_version(&work)?;
    let boot = work.join("boot");
    fs::rename(boot.join(format!("vmlinuz-{kver}")), boot.join("vmlinuz"))
        .with_context(|| format!("finding the kernel /boot/vmlinuz-{kver}"))?;
    for e in fs::read_dir(&boot)? {
        let p = e?.path();
        if p.file_name().is_some_and(|n| n != "vmlinuz") {
            rootfs::remove_tree(&p)?;
        }
    }
    for link in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        let _ = fs::remove_file(work.join(link));
    }
    let spec = fs::read_to_string(image.join("initramfs/modules.txt"))?;
    let stats = initramfs::build(
        &work,
        &kver,
        &bins.init,
        &spec,
        opts.source_date_epoch,
        &boot.join("initrd.img"),
    )?;

    // Pack. -all-time/-mkfs-time pin every timestamp, so equal inputs give
    // an equal squashfs.
    let partial = base.join(format!("{key}.partial"));
    rootfs::remove_tree(&partial)?;
    fs::create_dir_all(&partial)?;
    let sde = opts.source_date_epoch.to_string();
    Cmd::new("mksquashfs")
        .hint("apt-get install squashfs-tools")
        .arg(&work)
        .arg(partial.join("root.squashfs"))
        .args(["-noappend", "-no-progress", "-quiet", "-comp", "zstd"])
        .args(["-Xcompression-level", &opts.zstd_level.to_string()])
        .args(["-b", "1M", "-mkfs-time", &sde, "-all-time", &sde])
        // mksquashfs refuses SOURCE_DATE_EPOCH together with the options above.
        .env_remove("SOURCE_DATE_EPOCH")
        .quiet()
        .run()?;
    fs::copy(boot.join("vmlinuz"), partial.join("vmlinuz"))?;
    fs::copy(boot.join("initrd.img"), partial.join("initrd.img"))?;
    fs::write(partial.join("kernel-version"), &kver)?;
    fs::write(partial.join(".complete"), key)?;
    rootfs::remove_tree(&dir)?;
    fs::rename(&partial, &dir)?;
    rootfs::remove_tree(&work)?;
    // Each changed input makes a new entry of ~200 MiB: keep the last few.
    rootfs::prune(&base, key, 3);
    let note = format!(
        "{n} overlay files, initramfs {} modules ({} compressed)",
        stats.modules,
        fmt_size(fs::metadata(dir.join("initrd.img"))?.len())
    );
    Ok((root(kver), note))
}

/// Run the whole build.
/// The image defaults are the configuration every node falls back to: an
/// image whose defaults do not pass validation is never built.
fn check_default_config(image: &Path) -> Result<()> {
    use maculaos_config::load::{check, merge};
    use maculaos_config::sources::{parse, Format};
    let path = image.join("overlay/usr/lib/maculaos/config.yaml");
    let name = path.display().to_string();
    let text = fs::read_to_string(&path).with_context(|| format!("reading {name}"))?;
    let source = parse(&name, &text, Format::Maculaos)
        .map_err(|p| anyhow::anyhow!("the image's default configuration is invalid: {p}"))?;
    let (value, prov) = merge(std::slice::from_ref(&source));
    let config = <maculaos_config::Config as serde::Deserialize>::deserialize(value)
        .with_context(|| format!("{name}: does not match the schema"))?;
    let problems = check(&config, &prov);
    if !problems.is_empty() {
        bail!(
            "the image's default configuration is invalid:\n{}",
            maculaos_config::error::render(&problems)
        );
    }
    Ok(())
}

pub fn build(opts: &BuildOptions) -> Result<BuildReport> {
    if opts.version.is_empty()
        || !opts
            .version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-+~_".contains(c))
    {
        bail!(
            "version {:?} is not valid: use letters, digits and . - + ~ _ (e.g. 1.2.0)",
            opts.version
        );
    }
    check_default_config(&opts.image_dir())?;
    fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating output directory {}", opts.out.display()))?;
    fs::create_dir_all(&opts.cache)
        .with_context(|| format!("creating cache {}", opts.cache.display()))?;
    let mut st = Stages::new(8);

    st.run("host-tools", "checking host tools", || {
        let before = hosttools::missing(hosttools::BUILD);
        hosttools::ensure(hosttools::BUILD)?;
        Ok((
            (),
            if before.is_empty() {
                String::new()
            } else {
                format!("installed {}", before.join(" "))
            },
        ))
    })?;
    let bins = st.run(
        "binaries",
        "cargo build --release (maculaos, maculaos-init)",
        || Ok((build_binaries(&opts.repo)?, String::new())),
    )?;
    let rkey = rootfs::rootfs_key(opts)?;
    let (debian, cached) = st.run("rootfs", "Debian packages (mmdebstrap)", || {
        let (d, cached) = rootfs::debian_root(opts, &rkey)?;
        Ok((
            (d, cached),
            if cached {
                "cached".into()
            } else {
                String::new()
            },
        ))
    })?;
    let _ = cached;
    let keys = trusted_keys(opts)?;
    let key = root_key(opts, &rkey, &bins, &keys)?;
    let root = st.run("root", "MaculaOS files, initramfs, squashfs", || {
        make_root(opts, &debian, &bins, &keys, &key)
    })?;

    let layout = layout::Layout::default();
    let work = opts.cache.join("work");
    fs::create_dir_all(&work)?;
    util::require_space(
        &opts.out,
        fs::metadata(&root.squashfs)?.len() * 3 + layout.esp_size,
        "the outputs",
    )?;
    let esp = work.join("esp.img");
    let grub = st.run(
        "esp",
        "GRUB for BIOS and UEFI, EFI system partition",
        || {
            let grub = disk::make_grub(&opts.image_dir(), &work)?;
            disk::make_esp(
                &opts.image_dir(),
                &work,
                &grub,
                &[disk::SlotBoot {
                    slot: Slot::A,
                    version: &opts.version,
                    kernel: &root.kernel,
                    initrd: &root.initrd,
                    image: maculaos_slots::SlotImage {
                        size: fs::metadata(&root.squashfs)?.len(),
                        sha256: util::sha256_file(&root.squashfs)?,
                    },
                }],
                layout.esp_size,
                &esp,
            )?;
            Ok((grub, String::new()))
        },
    )?;
    let disk_path = opts.disk_path();
    let slot_path = opts.out.join(opts.slot_name());
    st.run("disk", "GPT disk image", || {
        disk::make_disk(&layout, &grub, &esp, &root.squashfs, &disk_path)?;
        let part = util::Partial::new(&slot_path);
        Cmd::new("cp")
            .args(["--reflink=auto"])
            .arg(&root.squashfs)
            .arg(part.path())
            .quiet()
            .run()?;
        part.commit()?;
        Ok(((), String::new()))
    })?;
    let iso_path = opts.out.join(opts.iso_name());
    st.run("iso", "live and installer ISO (grub-mkrescue)", || {
        iso::make_iso(
            &opts.image_dir(),
            &work,
            &iso::IsoInputs {
                version: &opts.version,
                kernel: &root.kernel,
                initrd: &root.initrd,
                squashfs: &root.squashfs,
                grub: &grub,
            },
            &iso_path,
        )?;
        Ok(((), String::new()))
    })?;
    let inputs = inputs_hash(opts)?;
    let manifest = st.run("manifest", "hashing outputs", || {
        let mut outputs = Vec::new();
        for (path, kind) in [
            (&disk_path, "disk"),
            (&slot_path, "slot"),
            (&iso_path, "iso"),
        ] {
            outputs.push(Output {
                name: path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                kind: kind.into(),
                size: fs::metadata(path)?.len(),
                sha256: util::sha256_file(path)?,
            });
        }
        let m = Manifest {
            version: opts.version.clone(),
            arch: ARCH.into(),
            kernel: root.kver.clone(),
            source_date_epoch: opts.source_date_epoch,
            inputs: inputs.clone(),
            outputs,
            slot_size: layout.slot_size,
            stages: Vec::new(),
            packages: rootfs::read_packages(&debian)?,
        };
        Ok((m, String::new()))
    })?;
    let mut manifest = manifest;
    manifest.stages = st
        .times()
        .iter()
        .map(|t| StageRecord {
            name: t.name.into(),
            seconds: t.took.as_secs_f64(),
            note: t.note.clone(),
        })
        .collect();
    let mpart = util::Partial::new(&opts.manifest_path());
    fs::write(mpart.path(), serde_json::to_string_pretty(&manifest)?)?;
    mpart.commit()?;
    print_summary(&st, &manifest, opts, &root);
    Ok(BuildReport {
        manifest,
        disk: disk_path,
        slot: slot_path,
        iso: iso_path,
    })
}

fn print_summary(st: &Stages, m: &Manifest, opts: &BuildOptions, root: &Root) {
    let total: f64 = st.times().iter().map(|t| t.took.as_secs_f64()).sum();
    eprintln!(
        "\nMaculaOS {} ({}) built in {}",
        m.version,
        m.kernel,
        fmt_duration(std::time::Duration::from_secs_f64(total))
    );
    eprintln!("  {:<12} {:>9}  note", "stage", "time");
    for t in st.times() {
        eprintln!("  {:<12} {:>9}  {}", t.name, fmt_duration(t.took), t.note);
    }
    eprintln!("  {:<36} {:>10} {:>12}", "output", "size", "on disk");
    for o in &m.outputs {
        let p = opts.out.join(&o.name);
        eprintln!(
            "  {:<36} {:>10} {:>12}",
            o.name,
            fmt_size(o.size),
            fmt_size(util::allocated(&p))
        );
    }
    let sz = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "  kernel {}, initramfs {}, {} packages",
        fmt_size(sz(&root.kernel)),
        fmt_size(sz(&root.initrd)),
        m.packages.len()
    );
    eprintln!(
        "  squashfs sha256 {}",
        m.output("slot").map(|o| o.sha256.as_str()).unwrap_or("?")
    );
    eprintln!("  in {}", opts.out.display());
    let _ = &root.dir;
}
