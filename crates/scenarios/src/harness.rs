//! What scenarios share: a working copy of the image with the test key,
//! booting it, waiting for the system to be up, measuring boot times.

use anyhow::{bail, Context, Result};
use maculaos_vm::{disk, Firmware, Ssh, Vm, VmSpec};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Deadline for a boot under TCG, from QEMU start to multi-user.target.
/// Generous: a loaded 2-core CI machine is much slower than a laptop.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Deadline for one command in the guest.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a condition in the guest is checked again.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct Timing {
    pub scenario: String,
    pub what: String,
    pub seconds: f64,
}

/// What every scenario of a run shares: the build under test, the test
/// key, how many CPUs a VM gets.
pub struct Shared {
    /// `<out>/scenarios`
    pub dir: PathBuf,
    pub report: maculaos_image::BuildReport,
    pub build: maculaos_image::BuildOptions,
    pub key: PathBuf,
    pub pubkey: String,
    /// `-smp` of every VM: the cores shared out between the jobs.
    pub cpus: u32,
}

pub struct Ctx {
    pub name: &'static str,
    pub dir: PathBuf,
    image: PathBuf,
    /// The slot image (root squashfs) of the build under test.
    pub slot_image: PathBuf,
    /// The live/installer ISO of the build under test.
    pub iso: PathBuf,
    key: PathBuf,
    pubkey: String,
    pub timings: Vec<Timing>,
    vm: Option<Vm>,
    /// The LAN hub of a VM restored from the pool (its NIC needs a peer).
    hub: Option<maculaos_vm::Hub>,
    cpus: u32,
    pool: Option<std::sync::Arc<crate::pool::Pool>>,
    /// How the image under test was built (for scenarios that build again).
    pub build: maculaos_image::BuildOptions,
    pub manifest: maculaos_image::Manifest,
}

impl Ctx {
    /// A scenario's context in `<shared.dir>/<dir_name>` (emptied first);
    /// `pool`, when the scenario starts from saved nodes.
    pub fn new(
        name: &'static str,
        dir_name: &str,
        shared: &Shared,
        pool: Option<std::sync::Arc<crate::pool::Pool>>,
    ) -> Result<Ctx> {
        let dir = shared.dir.join(dir_name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        let report = &shared.report;
        Ok(Ctx {
            name,
            dir,
            image: report.disk.clone(),
            slot_image: report.slot.clone(),
            iso: report.iso.clone(),
            build: shared.build.clone(),
            manifest: report.manifest.clone(),
            key: shared.key.clone(),
            pubkey: shared.pubkey.clone(),
            timings: Vec::new(),
            vm: None,
            hub: None,
            cpus: shared.cpus,
            pool,
        })
    }

    /// The saved nodes (only for scenarios that asked for them).
    pub fn pool(&self) -> Result<std::sync::Arc<crate::pool::Pool>> {
        self.pool
            .clone()
            .context("this scenario was not given the pool of saved nodes (set `pool: true`)")
    }

    /// Make `vm` (restored from the pool, its NIC on `hub`) this
    /// scenario's VM.
    pub(crate) fn adopt(&mut self, vm: Vm, hub: maculaos_vm::Hub) {
        self.vm = Some(vm);
        self.hub = Some(hub);
    }

    /// A fresh sparse copy of the image whose GRUB environment gives the
    /// admin user the test key (the kernel command line route of `maculaos
    /// apply`) plus `extra` kernel parameters; a short menu timeout.
    pub fn disk(&self, extra: &str) -> Result<PathBuf> {
        self.disk_named("disk.img", true, extra)
    }

    /// A fresh sparse copy of the image named `name` in the scenario's
    /// directory, with `extra` kernel parameters and, unless `with_key` is
    /// false, the test key (a node nobody can log into until it is paired).
    pub fn disk_named(&self, name: &str, with_key: bool, extra: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        disk::working_copy(&self.image, &path)?;
        let key = if with_key {
            key_param(&[self.pubkey.trim()])
        } else {
            String::new()
        };
        let cmdline = format!("{key} {extra}");
        disk::grubenv_set(
            &path,
            &[
                ("maculaos_extra_cmdline", cmdline.trim()),
                ("maculaos_timeout", "1"),
            ],
        )?;
        Ok(path)
    }

    /// The test private key.
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// The test public key (one line), for configs the scenario writes.
    pub fn pubkey(&self) -> &str {
        self.pubkey.trim()
    }

    pub fn spec(&self, disk: &Path, firmware: Firmware) -> VmSpec {
        let mut spec = VmSpec::new(disk, self.dir.join("vm"));
        spec.firmware = firmware;
        spec.no_reboot = true;
        spec.ssh_forward = true;
        spec.cpus = self.cpus;
        spec
    }

    pub fn start(&mut self, spec: VmSpec) -> Result<&mut Vm> {
        self.shutdown();
        let vm = Vm::start(spec)?;
        Ok(self.vm.insert(vm))
    }

    pub fn vm(&mut self) -> Result<&mut Vm> {
        self.vm
            .as_mut()
            .context("no VM is running in this scenario")
    }

    pub fn record(&mut self, what: impl Into<String>, seconds: f64) {
        self.timings.push(Timing {
            scenario: self.name.into(),
            what: what.into(),
            seconds,
        });
    }

    /// Boot (the VM must have just been started or restarted) until SSH works
    /// and multi-user.target is active; records wall time and guest uptime.
    pub fn wait_up(&mut self, label: &str) -> Result<Ssh> {
        self.wait_up_for(label, "multi-user.target")
    }

    /// [`Ctx::wait_up`] for a boot that ends in another systemd target
    /// (recovery mode's).
    pub fn wait_up_for(&mut self, label: &str, target: &str) -> Result<Ssh> {
        let started = Instant::now();
        let key = self.key.clone();
        let ssh = wait_vm_up(self.vm()?, &key, target)?;
        let wall = started.elapsed().as_secs_f64();
        let uptime: f64 = ssh
            .check("cut -d' ' -f1 /proc/uptime")?
            .trim()
            .parse()
            .unwrap_or(0.0);
        let t = target.trim_end_matches(".target");
        self.record(format!("{label}: QEMU start to {t} (wall)"), wall);
        self.record(format!("{label}: guest uptime at {t}"), uptime);
        Ok(ssh)
    }

    /// Start a VM for `spec` and wait until it is up.
    pub fn boot(&mut self, spec: VmSpec, label: &str) -> Result<Ssh> {
        self.start(spec)?;
        self.wait_up(label)
    }

    /// Reboot from inside the guest; QEMU (-no-reboot) exits, and the same
    /// machine boots again with a new serial log.
    pub fn reboot(&mut self, ssh: &Ssh, label: &str) -> Result<Ssh> {
        self.reboot_by(ssh, "sudo systemctl reboot", label, "multi-user.target")
    }

    /// Run `command` (one that reboots or powers off the guest: `maculaos
    /// recovery --reboot`, `factory-reset --confirm`), wait for QEMU to
    /// exit, boot the same machine again and wait for systemd's `target`.
    pub fn reboot_by(
        &mut self,
        ssh: &Ssh,
        command: &str,
        label: &str,
        target: &str,
    ) -> Result<Ssh> {
        // The connection may drop before ssh reports the command's status.
        let _ = ssh.run(command);
        let vm = self.vm()?;
        vm.wait_exit(BOOT_TIMEOUT)
            .with_context(|| format!("waiting for QEMU to exit after `{command}` ({label})"))?;
        vm.boot_again()?;
        self.wait_up_for(label, target)
    }

    pub fn shutdown(&mut self) {
        if let Some(mut vm) = self.vm.take() {
            let _ = vm.stop(Duration::from_secs(60));
        }
        self.hub = None;
    }
}

/// Wait until `vm` (one the scenario runs besides its [`Ctx`] one) answers
/// SSH with `key` and systemd's `target` is active.
pub fn wait_vm_up(vm: &mut Vm, key: &Path, target: &str) -> Result<Ssh> {
    let ssh = vm.ssh(key, "macula")?;
    vm.wait_for_ssh(&ssh, BOOT_TIMEOUT)?;
    wait_until(vm, &format!("{target} to be active"), BOOT_TIMEOUT, || {
        Ok(ssh
            .run(&format!("systemctl is-active {target}"))?
            .stdout
            .trim()
            == "active")
    })?;
    Ok(ssh)
}

/// Poll `cond` until it holds or `timeout` passes; fails early if QEMU exits.
pub fn wait_until(
    vm: &mut Vm,
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    let mut last_err = String::new();
    loop {
        match cond() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = format!(" (last error: {e:#})"),
        }
        if !vm.is_running()? {
            bail!(
                "QEMU exited while waiting for {what}{last_err}\n{}",
                vm.serial_tail(40)
            );
        }
        if start.elapsed() >= timeout {
            bail!(
                "timed out after {:.0}s waiting for {what}{last_err}\n{}",
                timeout.as_secs_f64(),
                vm.serial_tail(40)
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Remove the working disk images (`*.img`) and saved machine states
/// (`*.state`) in a scenario's directory.
pub fn remove_disks(dir: &Path) {
    for f in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if f.path()
            .extension()
            .is_some_and(|e| e == "img" || e == "state")
        {
            let _ = std::fs::remove_file(f.path());
        }
    }
}

/// Whether a scenario failed because the emulated machine wedged
/// ([`maculaos_vm::VmError::GuestWedged`], or a wedge report in one of its
/// serial logs when a command timed out first) rather than through MaculaOS.
pub fn is_wedged(e: &anyhow::Error, dir: &Path) -> bool {
    let typed = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<maculaos_vm::VmError>(),
            Some(maculaos_vm::VmError::GuestWedged { .. })
        )
    });
    // Every VM's run directory: `vm/`, or `node-N/` of the snapshot and of
    // several nodes.
    let logged = || {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|d| d.path().is_dir())
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .filter(|f| f.file_name().to_string_lossy().starts_with("serial-"))
            .any(|f| {
                let text = String::from_utf8_lossy(&std::fs::read(f.path()).unwrap_or_default())
                    .into_owned();
                maculaos_vm::wedged_line(&text).is_some()
            })
    };
    typed || logged()
}

/// Builds of the image from scenarios running side by side share the
/// build cache and cargo's target directory: one at a time.
static BUILD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`maculaos_image::build`] for a scenario, never two at once.
pub fn build_image(opts: &maculaos_image::BuildOptions) -> Result<maculaos_image::BuildReport> {
    let _one = BUILD_LOCK
        .lock()
        .map_err(|_| anyhow::anyhow!("a scenario panicked while building the image"))?;
    maculaos_image::build(opts)
}

/// The guest's IPv4 addresses, one a line (to compare with what another
/// node resolves its name to).
pub fn ipv4_addresses(ssh: &Ssh) -> Result<String> {
    Ok(ssh.check("ip -4 -o addr show | awk '{print $4}' | cut -d/ -f1")?)
}

/// `maculaos info --json` from the guest.
pub fn info(ssh: &Ssh) -> Result<serde_json::Value> {
    let out = ssh.check_timeout("maculaos info --json", CMD_TIMEOUT)?;
    serde_json::from_str(&out)
        .with_context(|| format!("maculaos info --json printed no JSON: {out}"))
}

/// The kernel parameter that gives `macula` these SSH keys. Spaces become
/// `%20` and `%` `%25`: GRUB would mangle quotes (see maculaos-apply).
pub fn key_param(keys: &[&str]) -> String {
    let enc: Vec<String> = keys
        .iter()
        .map(|k| k.replace('%', "%25").replace(' ', "%20"))
        .collect();
    format!("maculaos.ssh_authorized_keys={}", enc.join(";"))
}

pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        bail!(msg())
    }
}

pub fn write_report(path: &Path, m: &maculaos_image::Manifest, timings: &[Timing]) -> Result<()> {
    let v = json!({
        "version": m.version,
        "kernel": m.kernel,
        "outputs": m.outputs,
        "build_stages": m.stages,
        "timings": timings.iter().map(|t| json!({"scenario": t.scenario, "what": t.what, "seconds": t.seconds})).collect::<Vec<_>>(),
    });
    std::fs::write(path, serde_json::to_string_pretty(&v)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// A tiny HTTP server on 127.0.0.1 answering every GET with one body: what a
/// guest reaches through [`maculaos_vm::VmSpec::host_services`]. It lives
/// until the test process ends.
pub struct HttpServer {
    pub port: u16,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HttpServer {
    pub fn serve(body: String) -> Result<HttpServer> {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut req = [0u8; 4096];
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = conn.read(&mut req);
                counter.fetch_add(1, Ordering::SeqCst);
                let reply = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/yaml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        Ok(HttpServer { port, hits })
    }

    /// How many requests it has answered.
    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A static file server on 127.0.0.1 for update sources: GET of files under
/// `root`, with `Range: bytes=N-` (206). With `cut_once_after`, the first
/// full GET of a `.mos` file sends that many body bytes and drops the
/// connection: a download cut half-way. Every request line (with its Range)
/// is kept for the scenario to check.
pub struct DirServer {
    pub port: u16,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl DirServer {
    pub fn serve(root: PathBuf, cut_once_after: Option<u64>) -> Result<DirServer> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let cut_done = Arc::new(AtomicBool::new(cut_once_after.is_none()));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (root, log, cut_done) = (root.clone(), log.clone(), cut_done.clone());
                std::thread::spawn(move || {
                    let cut = cut_once_after.filter(|_| !cut_done.load(Ordering::SeqCst));
                    let _ = answer_file(conn, &root, cut, &cut_done, &log);
                });
            }
        });
        Ok(DirServer { port, requests })
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// One request of [`DirServer`], logged as "GET /path [range=N-]".
fn answer_file(
    mut conn: std::net::TcpStream,
    root: &Path,
    cut: Option<u64>,
    cut_done: &std::sync::atomic::AtomicBool,
    log: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Read, Seek, Write};
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut range_from = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range_from = v
                    .trim()
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse::<u64>().ok());
            }
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let line = format!(
        "GET {path}{}",
        range_from
            .map(|n| format!(" range={n}-"))
            .unwrap_or_default()
    );
    if let Ok(mut l) = log.lock() {
        l.push(line);
    }
    let file = root.join(path.trim_start_matches('/'));
    let Some(mut f) = std::fs::File::open(&file)
        .ok()
        .filter(|_| !path.contains(".."))
    else {
        return conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let size = f.metadata()?.len();
    let from = range_from.filter(|n| *n <= size).unwrap_or(0);
    let head = if range_from.is_some() {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{size}\r\n",
            size.saturating_sub(1)
        )
    } else {
        "HTTP/1.1 200 OK\r\n".to_string()
    };
    conn.write_all(
        format!(
            "{head}Content-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
            size - from
        )
        .as_bytes(),
    )?;
    f.seek(std::io::SeekFrom::Start(from))?;
    let limit = match cut {
        Some(n) if range_from.is_none() && path.ends_with(".mos") => {
            cut_done.store(true, std::sync::atomic::Ordering::SeqCst);
            n
        }
        _ => u64::MAX,
    };
    std::io::copy(&mut f.take(limit), &mut conn)?;
    Ok(())
}
