//! Boots real QEMU to prove the command line `Vm` builds is valid, under both
//! firmwares. Slow (TCG) and needs qemu-system-x86_64 and OVMF, so it is
//! ignored by default: `cargo test -p maculaos-vm --test smoke -- --ignored`.
#![allow(clippy::unwrap_used)]

use maculaos_vm::{Firmware, StopHow, Vm, VmSpec};
use std::time::{Duration, Instant};

fn boot_empty_disk(firmware: Firmware) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("empty.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mut spec = VmSpec::new(&disk, dir.path().join("run"));
    spec.firmware = firmware;
    spec.memory_mib = 256;
    spec.no_reboot = true;
    spec.ssh_forward = true;
    spec.extra_forwards = vec![8080];
    let mut vm = Vm::start(spec).unwrap();
    eprintln!("{firmware}: {}", vm.command_line());
    assert!(vm.ssh_port().is_some());
    assert!(vm.forwarded_port(8080).is_some());
    assert_eq!(vm.query_status().unwrap(), "running");

    match firmware {
        // OVMF writes its boot manager's messages to the serial port.
        Firmware::Uefi => {
            // Typing connects to the serial socket (nothing in the guest
            // reads it here); the log must keep recording while connected.
            vm.send_serial("\r").unwrap();
            vm.wait_for_serial("BdsDxe", Duration::from_secs(40))
                .unwrap();
        }
        // SeaBIOS prints to the VGA console only: a wait must time out and
        // say what it waited for.
        Firmware::Bios => {
            let e = vm
                .wait_for_serial("SeaBIOS", Duration::from_secs(2))
                .unwrap_err()
                .to_string();
            assert!(e.contains("timed out after "), "{e}");
            assert!(e.contains("\"SeaBIOS\" on the serial console"), "{e}");

            // The forward exists but no sshd answers: the wait gives up in
            // time and names the port.
            let (key, _) = maculaos_vm::test_key(dir.path()).unwrap();
            let ssh = vm.ssh(key, "root").unwrap();
            let e = vm
                .wait_for_ssh(&ssh, Duration::from_secs(3))
                .unwrap_err()
                .to_string();
            eprintln!("{e}");
            assert!(e.contains(&format!("SSH on 127.0.0.1:{}", ssh.port)), "{e}");
        }
    }

    // With -no-reboot a reset makes QEMU exit, as a guest reboot would.
    vm.qmp().unwrap().execute("system_reset", None).unwrap();
    let status = vm.wait_exit(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{status}");

    vm.boot_again().unwrap();
    assert_eq!(vm.boot_number(), 2);
    assert!(vm.serial_log_path().ends_with("serial-2.log"));
    assert_eq!(vm.serial_log_paths().len(), 2);
    assert_eq!(vm.query_status().unwrap(), "running");

    // No OS answers the power button, so stop falls back to quit.
    let stopped = vm.stop(Duration::from_secs(1)).unwrap();
    assert_eq!(stopped.how, StopHow::Quit);
    assert!(!vm.is_running().unwrap());
    let e = vm.send_serial("x").unwrap_err().to_string();
    assert!(e.contains("QEMU exited"), "{e}");
    eprintln!("{firmware}: smoke test took {:?}", started.elapsed());
}

#[test]
#[ignore = "boots QEMU under TCG; run with --ignored"]
fn bios_command_line_boots() {
    boot_empty_disk(Firmware::Bios);
}

#[test]
#[ignore = "boots QEMU under TCG; run with --ignored"]
fn uefi_command_line_boots() {
    boot_empty_disk(Firmware::Uefi);
}

#[test]
#[ignore = "boots QEMU under TCG; run with --ignored"]
fn drop_kills_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("empty.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut spec = VmSpec::new(&disk, dir.path().join("run"));
    spec.memory_mib = 128;
    let vm = Vm::start(spec).unwrap();
    let pid = vm.pid();
    drop(vm);
    // A reaped child has no /proc entry left.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}
