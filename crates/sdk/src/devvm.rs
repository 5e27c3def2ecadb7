//! `maculaos-sdk vm start|stop|ssh`: the development VM of plan section 4.14.1.
//! Its state lives in `<out>/vm/`: the working disk (kept across starts), the
//! SSH key, the serial logs and `vm.json` (pid, ports) while it runs.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use maculaos_image::{BuildOptions, Manifest};
use maculaos_vm::{disk, qmp::Qmp, Firmware, Vm, VmSpec};
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum VmCommand {
    /// Build the image if missing or stale, then boot it with SSH on 127.0.0.1.
    Start {
        #[command(flatten)]
        build: crate::BuildArgs,
        /// Run in the background (for scripts): wait for SSH, print how to reach it, return.
        #[arg(long)]
        headless: bool,
        /// Boot through UEFI (OVMF) instead of BIOS (SeaBIOS).
        #[arg(long)]
        uefi: bool,
        /// Size of the VM's disk; the data partition grows into it on first boot.
        #[arg(long, default_value = "16G")]
        disk_size: String,
        /// Start from a fresh copy of the image (discards the VM's data).
        #[arg(long)]
        fresh: bool,
        /// Memory in MiB.
        #[arg(long, default_value_t = 2048)]
        memory: u32,
        /// Boot the live ISO from a CD drive instead, with a blank disk
        /// (`iso-disk.img`, --disk-size) to try `sudo maculaos install` on.
        #[arg(long)]
        iso: bool,
    },
    /// Power the VM off (ACPI), killing it if it does not stop in time.
    Stop {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run ssh into the VM (an interactive shell, or COMMAND).
    Ssh {
        #[arg(long)]
        out: Option<PathBuf>,
        /// Command to run instead of a shell.
        command: Vec<String>,
    },
}

const HEADLESS_BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn vm_dir(out: &Path) -> PathBuf {
    out.join("vm")
}

/// Parse sizes like 16G, 512M, 10737418240.
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('G' | 'g') => (&s[..s.len() - 1], 1u64 << 30),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("disk size {s:?}: expected a number with optional M, G or T"))?;
    Ok(n * mult)
}

fn read_state(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&fs::read_to_string(dir.join("vm.json")).ok()?).ok()
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("qemu"))
}

/// Build when the image is missing or was built from other inputs.
fn ensure_image(opts: &BuildOptions) -> Result<PathBuf> {
    let disk = opts.disk_path();
    let fresh = Manifest::load(&opts.manifest_path()).ok().map(|m| {
        m.inputs == maculaos_image::inputs_hash(opts).unwrap_or_default()
            && disk.exists()
            && opts.out.join(opts.iso_name()).exists()
    });
    match fresh {
        Some(true) => eprintln!("==> image {} is up to date", disk.display()),
        Some(false) => {
            eprintln!("==> image is stale (sources changed): rebuilding");
            maculaos_image::build(opts)?;
        }
        None => {
            eprintln!("==> no image yet: building");
            maculaos_image::build(opts)?;
        }
    }
    Ok(disk)
}

/// Keys the VM's admin user accepts: the VM's own key plus the user's.
fn authorized_keys(dir: &Path) -> Result<(PathBuf, Vec<String>)> {
    let (key, pubkey) = maculaos_vm::test_key(dir)?;
    let mut keys = vec![pubkey.trim().to_string()];
    if let Some(home) = std::env::var_os("HOME") {
        for name in ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"] {
            if let Ok(k) = fs::read_to_string(Path::new(&home).join(".ssh").join(name)) {
                keys.push(k.trim().to_string());
            }
        }
    }
    Ok((key, keys))
}

/// The dev VM booting the disk image: a working copy (kept across starts
/// unless the image is newer or --fresh) whose GRUB environment gives
/// `macula` the keys.
fn disk_spec(
    image: &Path,
    dir: &Path,
    keys: &[&str],
    disk_size: &str,
    fresh: bool,
) -> Result<VmSpec> {
    let work = dir.join("disk.img");
    let stale = fs::metadata(&work)
        .and_then(|w| Ok(w.modified()? < fs::metadata(image)?.modified()?))
        .unwrap_or(true);
    if fresh || stale {
        eprintln!(
            "==> new working disk {} from {}",
            work.display(),
            image.display()
        );
        disk::working_copy(image, &work)?;
        let size = parse_size(disk_size)?;
        if size > fs::metadata(&work)?.len() {
            disk::resize(&work, size)?;
        }
    } else {
        eprintln!(
            "==> reusing working disk {} (--fresh to start over)",
            work.display()
        );
    }
    let cmdline = maculaos_scenarios::key_param(keys);
    disk::grubenv_set(&work, &[("maculaos_extra_cmdline", &cmdline)])?;
    Ok(VmSpec::new(&work, dir))
}

/// The dev VM booting the live ISO: the keys come on a NoCloud seed (the
/// ISO's boot menu cannot be changed), a blank disk is there to install on.
fn iso_spec(
    opts: &BuildOptions,
    dir: &Path,
    keys: &[&str],
    disk_size: &str,
    fresh: bool,
) -> Result<VmSpec> {
    let blank = dir.join("iso-disk.img");
    if fresh || !blank.exists() {
        eprintln!("==> new blank disk {} ({disk_size})", blank.display());
        let f =
            fs::File::create(&blank).with_context(|| format!("creating {}", blank.display()))?;
        f.set_len(parse_size(disk_size)?)?;
    }
    let seed_dir = dir.join("seed");
    fs::create_dir_all(&seed_dir)?;
    let user_data = format!(
        "#cloud-config\nssh_authorized_keys:\n{}",
        keys.iter()
            .map(|k| format!("  - {k}\n"))
            .collect::<String>()
    );
    let seed = maculaos_scenarios::nocloud_seed(&seed_dir, &user_data, "instance-id: dev-vm\n")?;
    let mut spec = VmSpec::new(&blank, dir);
    spec.cdrom = Some(opts.out.join(opts.iso_name()));
    spec.extra_drives = vec![seed];
    eprintln!("==> live ISO {}", opts.out.join(opts.iso_name()).display());
    Ok(spec)
}

pub fn run(cmd: VmCommand) -> Result<()> {
    match cmd {
        VmCommand::Start {
            build,
            headless,
            uefi,
            disk_size,
            fresh,
            memory,
            iso,
        } => {
            maculaos_image::hosttools::ensure(maculaos_image::hosttools::VM)?;
            let opts = build.options();
            let dir = vm_dir(&opts.out);
            fs::create_dir_all(&dir)?;
            if let Some(pid) = read_state(&dir).and_then(|s| s["pid"].as_u64()) {
                if pid_alive(pid) {
                    bail!("the dev VM already runs (pid {pid}): `maculaos-sdk vm stop` first, or `maculaos-sdk vm ssh`");
                }
            }
            let image = ensure_image(&opts)?;
            let (key, keys) = authorized_keys(&dir)?;
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let mut spec = if iso {
                iso_spec(&opts, &dir, &keys, &disk_size, fresh)?
            } else {
                disk_spec(&image, &dir, &keys, &disk_size, fresh)?
            };
            spec.firmware = if uefi { Firmware::Uefi } else { Firmware::Bios };
            spec.ssh_forward = true;
            spec.serial_stdio = !headless;
            spec.memory_mib = memory;
            let mut vm = Vm::start(spec)?;
            let port = vm
                .ssh_port()
                .context("QEMU started without an SSH forward")?;
            fs::write(
                dir.join("vm.json"),
                serde_json::to_string_pretty(
                    &json!({"pid": vm.pid(), "ssh_port": port, "key": key, "qmp": dir.join("qmp.sock")}),
                )?,
            )?;
            let ssh_line = format!("ssh -i {} -p {port} macula@127.0.0.1", key.display());
            eprintln!("==> QEMU: {}", vm.command_line());
            eprintln!("==> SSH:  {ssh_line}");
            if headless {
                let start = Instant::now();
                let ssh = vm.ssh(&key, "macula")?;
                vm.wait_for_ssh(&ssh, HEADLESS_BOOT_TIMEOUT)?;
                eprintln!(
                    "==> up after {:.0}s; serial log: {}",
                    start.elapsed().as_secs_f64(),
                    vm.serial_log_path().display()
                );
                println!("{ssh_line}");
                // Leave QEMU running after we exit: Vm's Drop would stop it.
                std::mem::forget(vm);
            } else {
                eprintln!("==> serial console follows (Ctrl-A X quits QEMU, Ctrl-A C the monitor)");
                vm.wait_exit(Duration::MAX)?;
                let _ = fs::remove_file(dir.join("vm.json"));
            }
            Ok(())
        }
        VmCommand::Stop { out } => {
            let dir = vm_dir(&crate::out_dir(out.as_deref()));
            let Some(state) = read_state(&dir) else {
                eprintln!("no dev VM is running ({} has no vm.json)", dir.display());
                return Ok(());
            };
            let pid = state["pid"].as_u64().unwrap_or(0);
            if pid == 0 || !pid_alive(pid) {
                eprintln!("the dev VM is not running");
                let _ = fs::remove_file(dir.join("vm.json"));
                return Ok(());
            }
            let qmp_path = dir.join("qmp.sock");
            let wait_gone = |limit: Duration| {
                let t = Instant::now();
                while pid_alive(pid) && t.elapsed() < limit {
                    std::thread::sleep(Duration::from_millis(200));
                }
                !pid_alive(pid)
            };
            eprintln!("==> powering off the dev VM (pid {pid})");
            if let Ok(mut q) = Qmp::connect(&qmp_path, Duration::from_secs(5)) {
                let _ = q.powerdown();
                if !wait_gone(Duration::from_secs(90)) {
                    eprintln!("    no shutdown after 90 s: quitting QEMU");
                    let _ = q.quit();
                }
            }
            if !wait_gone(Duration::from_secs(10)) {
                maculaos_runner::Cmd::new("kill")
                    .arg(pid.to_string())
                    .quiet()
                    .run()?;
                wait_gone(Duration::from_secs(10));
            }
            let _ = fs::remove_file(dir.join("vm.json"));
            eprintln!("==> stopped");
            Ok(())
        }
        VmCommand::Ssh { out, command } => {
            let dir = vm_dir(&crate::out_dir(out.as_deref()));
            let state = read_state(&dir)
                .context("no dev VM is running: `maculaos-sdk vm start --headless` first")?;
            let port = state["ssh_port"]
                .as_u64()
                .context("vm.json has no ssh_port")?;
            let key = state["key"].as_str().context("vm.json has no key")?;
            // One connection per invocation: an interactive session must not
            // leave a shared connection behind it.
            let ssh = maculaos_vm::Ssh::new(port as u16, key, "macula").fresh();
            let mut args = ssh.args(&command.join(" "));
            if command.is_empty() {
                // An interactive shell: a terminal, and no remote command.
                args.retain(|a| a != "-T");
                args.truncate(args.len().saturating_sub(2));
            }
            let status = std::process::Command::new("ssh")
                .args(args)
                .status()
                .context("running ssh")?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16G").unwrap(), 16 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("lots").is_err());
    }
}
