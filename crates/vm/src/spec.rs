//! What machine to run, and the QEMU command line for it.

use crate::{Result, VmError};
use maculaos_boot::Firmware;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

pub const DEFAULT_MEMORY_MIB: u32 = 1536;
pub const DEFAULT_CPUS: u32 = 2;
/// Debian's OVMF build that works on the i440fx `pc` machine through `-bios`.
pub const DEFAULT_OVMF: &str = "/usr/share/ovmf/OVMF.fd";
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// The QEMU accelerator (`-accel`). TCG is the default because KVM hangs on
/// the project's build machines; `MACULAOS_QEMU_ACCEL=kvm` overrides it where
/// KVM works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accel(String);

impl Accel {
    /// The environment variable that overrides the accelerator.
    pub const ENV: &'static str = "MACULAOS_QEMU_ACCEL";

    /// `MACULAOS_QEMU_ACCEL` if set and not blank, otherwise `tcg`.
    pub fn from_env() -> Accel {
        match std::env::var(Self::ENV) {
            Ok(v) if !v.trim().is_empty() => Accel(v.trim().to_string()),
            _ => Accel::tcg(),
        }
    }

    pub fn tcg() -> Accel {
        Accel("tcg".to_string())
    }

    /// Any `-accel` value QEMU takes, e.g. `kvm` or `tcg,thread=single`.
    pub fn new(value: impl Into<String>) -> Accel {
        Accel(value.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `-cpu` model: `max` (the host's CPU) with a hardware
    /// accelerator; under TCG the plain `qemu64`. Why not `max` under TCG:
    /// guests then pick SSE4/AVX code paths (glibc's string functions, the
    /// kernel's crypto and zstd) that TCG emulates far slower than the
    /// SSE2 ones; a node booted to its login prompt in 44-48 s with
    /// `qemu64` against 55-67 s with `max` (-smp 1, same disk). Nothing
    /// in the image needs more than the x86-64 baseline Debian builds for.
    pub fn cpu(&self) -> &'static str {
        if self.0.split(',').next() == Some("tcg") {
            "qemu64"
        } else {
            "max"
        }
    }
}

impl Default for Accel {
    fn default() -> Self {
        Accel::from_env()
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A machine to boot. Start from [`VmSpec::new`] (or `Default`) and set the
/// public fields.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The raw boot disk (first virtio disk, `/dev/vda` in the guest).
    pub disk: PathBuf,
    pub firmware: Firmware,
    pub memory_mib: u32,
    pub cpus: u32,
    /// More raw disks, attached after the boot disk (`/dev/vdb`, …).
    pub extra_drives: Vec<PathBuf>,
    /// An ISO in a CD drive (IDE, `/dev/sr0`), booted before the disks.
    pub cdrom: Option<PathBuf>,
    /// Pass `-no-reboot`: a guest reboot makes QEMU exit, so the harness can
    /// inspect the disk and boot again with a fresh serial log.
    pub no_reboot: bool,
    /// Forward a free 127.0.0.1 port to the guest's port 22.
    pub ssh_forward: bool,
    /// More guest TCP ports to forward from free 127.0.0.1 ports.
    pub extra_forwards: Vec<u16>,
    /// Guest connections to `GUEST_SERVICE_ADDR:port` reach `127.0.0.1:host_port`
    /// on the host: (guest port, host port), one `socat` relay per connection.
    /// The only way out of the VM.
    pub host_services: Vec<(u16, u16)>,
    /// NICs after the first, each on its own isolated user network.
    pub extra_nics: u32,
    /// The first NIC's MAC (QEMU's default, 52:54:00:12:34:56, when None).
    /// Machines on one [`Lan`] need their own: the default hostname comes
    /// from it.
    pub mac: Option<String>,
    /// A NIC on a virtual LAN shared with other VMs on this host.
    pub lan: Option<Lan>,
    /// Resume this saved machine state ([`crate::Vm::save_state`] of a
    /// machine with the same devices, over a copy of its disk) instead of
    /// booting; later boots of the same `Vm` boot for real.
    pub incoming: Option<PathBuf>,
    /// An Intel 6300ESB watchdog (`/dev/watchdog` in the guest, driver
    /// i6300esb); when it fires QEMU resets the machine (with `no_reboot`:
    /// exits).
    pub watchdog: bool,
    /// Holds the sockets, the pidfile, `qemu.log` and the serial logs.
    pub run_dir: PathBuf,
    /// Put the serial console (multiplexed with the QEMU monitor, `Ctrl-A c`)
    /// on this process's terminal, still copied into the serial log.
    pub serial_stdio: bool,
    /// No display window (`-display none`); the guest still has a VGA card,
    /// so its tty1 exists.
    pub headless: bool,
    pub accel: Accel,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The UEFI firmware image used for [`Firmware::Uefi`].
    pub ovmf: PathBuf,
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            disk: PathBuf::new(),
            firmware: Firmware::Bios,
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: DEFAULT_CPUS,
            extra_drives: Vec::new(),
            cdrom: None,
            no_reboot: false,
            ssh_forward: false,
            extra_forwards: Vec::new(),
            host_services: Vec::new(),
            extra_nics: 0,
            mac: None,
            lan: None,
            incoming: None,
            watchdog: false,
            run_dir: PathBuf::new(),
            serial_stdio: false,
            headless: true,
            accel: Accel::from_env(),
            qemu: PathBuf::from(DEFAULT_QEMU),
            ovmf: PathBuf::from(DEFAULT_OVMF),
        }
    }
}

impl VmSpec {
    pub fn new(disk: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> VmSpec {
        VmSpec {
            disk: disk.into(),
            run_dir: run_dir.into(),
            ..VmSpec::default()
        }
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join("qmp.sock")
    }

    pub fn serial_socket(&self) -> PathBuf {
        self.run_dir.join("serial.sock")
    }

    pub fn pidfile(&self) -> PathBuf {
        self.run_dir.join("qemu.pid")
    }

    pub fn qemu_log(&self) -> PathBuf {
        self.run_dir.join("qemu.log")
    }

    /// The serial log of boot number `boot` (counted from 1).
    pub fn serial_log(&self, boot: u32) -> PathBuf {
        self.run_dir.join(format!("serial-{boot}.log"))
    }

    /// Catch what would only fail later inside QEMU with a vaguer message.
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |detail: String| VmError::Invalid {
            what: "VM spec".to_string(),
            detail,
        };
        if self.run_dir.as_os_str().is_empty() {
            return Err(invalid("run_dir is not set".to_string()));
        }
        for d in std::iter::once(&self.disk)
            .chain(&self.extra_drives)
            .chain(&self.cdrom)
            .chain(&self.incoming)
        {
            if !d.is_file() {
                return Err(invalid(format!(
                    "disk image {} does not exist",
                    d.display()
                )));
            }
        }
        if self.firmware == Firmware::Uefi && !self.ovmf.is_file() {
            return Err(invalid(format!(
                "UEFI firmware {} does not exist (apt-get install ovmf)",
                self.ovmf.display()
            )));
        }
        if self.memory_mib == 0 || self.cpus == 0 {
            return Err(invalid(format!(
                "memory_mib ({}) and cpus ({}) must be at least 1",
                self.memory_mib, self.cpus
            )));
        }
        if self.extra_forwards.contains(&0) {
            return Err(invalid("guest port 0 cannot be forwarded".to_string()));
        }
        // A Unix socket path must fit sockaddr_un.sun_path (108 bytes with NUL).
        for s in [self.qmp_socket(), self.serial_socket()] {
            if s.as_os_str().len() > 107 {
                return Err(invalid(format!(
                    "socket path {} is longer than 107 bytes: use a shorter run_dir",
                    s.display()
                )));
            }
        }
        Ok(())
    }
}

/// Host ports forwarded to the guest, all on 127.0.0.1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ports {
    pub ssh: Option<u16>,
    /// (guest port, host port)
    pub extra: Vec<(u16, u16)>,
}

impl Ports {
    /// Free ports for what `spec` forwards. The listeners stay open until all
    /// are chosen so one call never hands out the same port twice; QEMU binds
    /// them moments later (a rare clash is retried by the caller).
    pub(crate) fn pick(spec: &VmSpec) -> Result<Ports> {
        let count = usize::from(spec.ssh_forward) + spec.extra_forwards.len();
        let mut listeners = Vec::with_capacity(count);
        let mut ports = Vec::with_capacity(count);
        for _ in 0..count {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(crate::io_err("binding a free port on", "127.0.0.1"))?;
            let port = l
                .local_addr()
                .map_err(crate::io_err("reading the free port on", "127.0.0.1"))?
                .port();
            ports.push(port);
            listeners.push(l);
        }
        let mut it = ports.into_iter();
        let ssh = if spec.ssh_forward { it.next() } else { None };
        let extra = spec.extra_forwards.iter().copied().zip(it).collect();
        Ok(Ports { ssh, extra })
    }

    fn forwards(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        self.ssh
            .map(|h| (22, h))
            .into_iter()
            .chain(self.extra.iter().copied())
    }
}

/// A path as a QEMU option value: UTF-8, with commas doubled because QEMU
/// splits options on single commas.
fn opt_path(p: &Path) -> Result<String> {
    p.to_str()
        .map(|s| s.replace(',', ",,"))
        .ok_or_else(|| VmError::Invalid {
            what: "QEMU option".to_string(),
            detail: format!("path {} is not UTF-8", p.display()),
        })
}

/// A NIC on a virtual Ethernet segment shared by VMs on this host: QEMU's
/// UDP socket netdev talking to a [`crate::Hub`] port on 127.0.0.1 (nothing
/// leaves the host). Frames, multicast (mDNS) included, reach every other
/// VM on the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lan {
    /// The hub's 127.0.0.1 UDP port for this VM ([`crate::Hub::port`]).
    pub hub_port: u16,
    /// The MAC of this VM's NIC on the segment.
    pub mac: String,
}

/// The address in the guest's user network where [`VmSpec::host_services`]
/// answer (restrict=on keeps every other address unreachable).
pub const GUEST_SERVICE_ADDR: &str = "10.0.2.100";

/// The MAC address of extra NIC `i` (1-based), so tests can match it.
pub fn extra_nic_mac(i: u32) -> String {
    format!("52:54:00:00:01:{:02x}", i % 256)
}

/// The QEMU arguments (without the program) for boot number `boot`.
pub(crate) fn qemu_args(spec: &VmSpec, ports: &Ports, boot: u32) -> Result<Vec<String>> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", "maculaos"]);
    // i440fx works with both SeaBIOS and OVMF-through-`-bios`, unlike q35
    // with a read-only OVMF image needing pflash variables.
    push(&["-machine", "pc"]);
    push(&["-accel", spec.accel.as_str()]);
    push(&["-cpu", spec.accel.cpu()]);
    push(&["-m", &spec.memory_mib.to_string()]);
    push(&["-smp", &spec.cpus.to_string()]);
    // Entropy from the host: without it a TCG guest can wait minutes for its
    // random pool, and first-boot key generation with it.
    push(&["-device", "virtio-rng-pci"]);
    if spec.firmware == Firmware::Uefi {
        push(&["-bios", &opt_path(&spec.ovmf)?]);
    }
    for d in std::iter::once(&spec.disk).chain(&spec.extra_drives) {
        // discard=unmap lets guest TRIM punch holes, keeping working copies sparse.
        let drive = format!("file={},format=raw,if=virtio,discard=unmap", opt_path(d)?);
        push(&["-drive", &drive]);
    }
    if let Some(iso) = &spec.cdrom {
        // bootindex puts the CD first for SeaBIOS and OVMF alike; the
        // disks (no bootindex) come after it.
        push(&[
            "-drive",
            &format!(
                "file={},if=none,id=cd0,media=cdrom,readonly=on",
                opt_path(iso)?
            ),
            "-device",
            "ide-cd,drive=cd0,bootindex=0",
        ]);
    }
    if spec.watchdog {
        push(&["-device", "i6300esb"]);
    }
    // restrict=on isolates the guest from the host's networks; only the
    // explicit 127.0.0.1 forwards reach it.
    let mut netdev = "user,id=n0,restrict=on".to_string();
    for (guest, host) in ports.forwards() {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    for (guest, host) in &spec.host_services {
        // `cmd:` starts one relay per guest connection; a `tcp:` target would
        // be one host connection made at start-up, shared by every guest
        // connection (a second HTTP request would find it closed).
        netdev.push_str(&format!(
            ",guestfwd=tcp:{GUEST_SERVICE_ADDR}:{guest}-cmd:socat - TCP:127.0.0.1:{host}"
        ));
    }
    push(&["-netdev", &netdev]);
    // No option ROM: a disk that does not boot should fail fast instead of
    // spending a minute in iPXE network boot.
    let mac = spec
        .mac
        .as_ref()
        .map(|m| format!(",mac={m}"))
        .unwrap_or_default();
    push(&[
        "-device",
        &format!("virtio-net-pci,netdev=n0,romfile={mac}"),
    ]);
    if let Some(lan) = &spec.lan {
        // The kernel picks this end's port (localaddr :0); the hub learns it
        // from the first frame, so no port is chosen here and raced for.
        push(&[
            "-netdev",
            &format!(
                "socket,id=lan0,udp=127.0.0.1:{},localaddr=127.0.0.1:0",
                lan.hub_port
            ),
            "-device",
            &format!("virtio-net-pci,netdev=lan0,mac={},romfile=", lan.mac),
        ]);
    }
    // More NICs, each on its own isolated user network with no forwards:
    // for static-address configuration tests.
    for i in 1..=spec.extra_nics {
        push(&["-netdev", &format!("user,id=n{i},restrict=on")]);
        let mac = extra_nic_mac(i);
        push(&[
            "-device",
            &format!("virtio-net-pci,netdev=n{i},mac={mac},romfile="),
        ]);
    }
    if spec.headless {
        push(&["-display", "none"]);
    }
    // Nothing else may claim the terminal or invent extra consoles.
    push(&["-monitor", "none", "-parallel", "none"]);
    let log = opt_path(&spec.serial_log(boot))?;
    if spec.serial_stdio {
        // What `-serial mon:stdio` does, plus the log file: the monitor is
        // reachable with Ctrl-A c, and Ctrl-C goes to the guest (signal=off).
        push(&[
            "-chardev",
            &format!("stdio,id=ser0,mux=on,signal=off,logfile={log}"),
            "-serial",
            "chardev:ser0",
            "-mon",
            "chardev=ser0,mode=readline",
        ]);
    } else {
        let sock = opt_path(&spec.serial_socket())?;
        push(&[
            "-chardev",
            &format!("socket,id=ser0,path={sock},server=on,wait=off,logfile={log}"),
            "-serial",
            "chardev:ser0",
        ]);
    }
    let qmp = opt_path(&spec.qmp_socket())?;
    push(&["-qmp", &format!("unix:{qmp},server=on,wait=off")]);
    push(&["-pidfile", &opt_path(&spec.pidfile())?]);
    if spec.no_reboot {
        push(&["-no-reboot"]);
    }
    if let (Some(state), 1) = (&spec.incoming, boot) {
        // exec: reads the file through a shell. The guest was saved paused
        // and stays so once loaded, until `Vm::start` lets it run.
        let path = state.to_str().ok_or_else(|| VmError::Invalid {
            what: "QEMU option".to_string(),
            detail: format!("path {} is not UTF-8", state.display()),
        })?;
        push(&[
            "-incoming",
            &format!("exec:cat {}", maculaos_runner::shell_quote(path)),
        ]);
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            accel: Accel::tcg(),
            ..VmSpec::new("/img/disk,1.raw", "/run/vm")
        }
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn bios_test_vm_command_line() {
        let mut s = spec();
        s.extra_drives.push("/img/extra.raw".into());
        s.no_reboot = true;
        let ports = Ports {
            ssh: Some(40022),
            extra: vec![(8080, 40080)],
        };
        let a = qemu_args(&s, &ports, 2).unwrap();
        assert_eq!(value_of(&a, "-machine"), ["pc"]);
        assert_eq!(value_of(&a, "-accel"), ["tcg"]);
        assert_eq!(value_of(&a, "-cpu"), ["qemu64"]);
        assert_eq!(value_of(&a, "-m"), ["1536"]);
        assert_eq!(value_of(&a, "-smp"), ["2"]);
        assert!(value_of(&a, "-bios").is_empty());
        assert_eq!(
            value_of(&a, "-drive"),
            [
                "file=/img/disk,,1.raw,format=raw,if=virtio,discard=unmap",
                "file=/img/extra.raw,format=raw,if=virtio,discard=unmap"
            ]
        );
        assert_eq!(
            value_of(&a, "-netdev"),
            ["user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40080-:8080"]
        );
        assert_eq!(
            value_of(&a, "-chardev"),
            ["socket,id=ser0,path=/run/vm/serial.sock,server=on,wait=off,logfile=/run/vm/serial-2.log"]
        );
        assert_eq!(
            value_of(&a, "-qmp"),
            ["unix:/run/vm/qmp.sock,server=on,wait=off"]
        );
        assert_eq!(value_of(&a, "-display"), ["none"]);
        assert_eq!(value_of(&a, "-pidfile"), ["/run/vm/qemu.pid"]);
        assert!(a.iter().any(|x| x == "-no-reboot"));
    }

    #[test]
    fn uefi_interactive_command_line() {
        let mut s = spec();
        s.firmware = Firmware::Uefi;
        s.serial_stdio = true;
        s.headless = false;
        s.accel = Accel::new("kvm");
        let a = qemu_args(&s, &Ports::default(), 1).unwrap();
        assert_eq!(value_of(&a, "-bios"), [DEFAULT_OVMF]);
        assert_eq!(value_of(&a, "-accel"), ["kvm"]);
        assert_eq!(value_of(&a, "-cpu"), ["max"]);
        assert_eq!(value_of(&a, "-netdev"), ["user,id=n0,restrict=on"]);
        assert_eq!(
            value_of(&a, "-chardev"),
            ["stdio,id=ser0,mux=on,signal=off,logfile=/run/vm/serial-1.log"]
        );
        assert_eq!(value_of(&a, "-mon"), ["chardev=ser0,mode=readline"]);
        assert!(value_of(&a, "-display").is_empty());
        assert!(!a.iter().any(|x| x == "-no-reboot"));
    }

    #[test]
    fn lan_link_on_loopback_with_own_macs() {
        let mut s = spec();
        s.mac = Some("52:54:00:00:00:0a".into());
        s.lan = Some(Lan {
            hub_port: 40100,
            mac: "52:54:00:00:02:0a".into(),
        });
        let a = qemu_args(&s, &Ports::default(), 1).unwrap();
        assert_eq!(
            value_of(&a, "-netdev"),
            [
                "user,id=n0,restrict=on",
                "socket,id=lan0,udp=127.0.0.1:40100,localaddr=127.0.0.1:0"
            ]
        );
        assert_eq!(
            value_of(&a, "-device"),
            [
                "virtio-rng-pci",
                "virtio-net-pci,netdev=n0,romfile=,mac=52:54:00:00:00:0a",
                "virtio-net-pci,netdev=lan0,mac=52:54:00:00:02:0a,romfile="
            ]
        );
    }

    #[test]
    fn a_saved_state_is_loaded_on_the_first_boot_only() {
        let mut s = spec();
        s.incoming = Some("/snap/node 1.state".into());
        let first = qemu_args(&s, &Ports::default(), 1).unwrap();
        assert_eq!(
            value_of(&first, "-incoming"),
            ["exec:cat '/snap/node 1.state'"]
        );
        let again = qemu_args(&s, &Ports::default(), 2).unwrap();
        assert!(value_of(&again, "-incoming").is_empty());
    }

    #[test]
    fn picked_ports_are_distinct_and_mapped() {
        let mut s = spec();
        s.ssh_forward = true;
        s.extra_forwards = vec![80, 443];
        let p = Ports::pick(&s).unwrap();
        let ssh = p.ssh.unwrap();
        assert_eq!(p.extra.len(), 2);
        assert_eq!((p.extra[0].0, p.extra[1].0), (80, 443));
        let mut all = vec![ssh, p.extra[0].1, p.extra[1].1];
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|&x| x != 0));
    }

    #[test]
    fn validation_names_the_problem() {
        let e = spec().validate().unwrap_err().to_string();
        assert!(e.contains("/img/disk,1.raw does not exist"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.raw");
        std::fs::write(&disk, b"").unwrap();
        let mut s = VmSpec::new(&disk, dir.path().join("x".repeat(120)));
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("longer than 107 bytes"), "{e}");
        s.run_dir = dir.path().join("run");
        s.validate().unwrap();
        s.ovmf = dir.path().join("no-ovmf.fd");
        s.firmware = Firmware::Uefi;
        assert!(s.validate().unwrap_err().to_string().contains("no-ovmf.fd"));
    }

    #[test]
    fn accel_defaults_to_tcg() {
        assert_eq!(Accel::tcg().as_str(), "tcg");
        // The env var is process-global; only check that reading never panics
        // and yields something usable.
        assert!(!Accel::from_env().as_str().is_empty());
    }
}
