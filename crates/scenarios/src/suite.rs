//! The scenarios. Each one starts from a fresh copy of the built image.

use crate::harness::{ensure, info, wait_until, Ctx, BOOT_TIMEOUT, CMD_TIMEOUT};
use crate::Scenario;
use anyhow::{Context, Result};
use maculaos_vm::{disk, Firmware, Ssh};
use std::time::Duration;

pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "boot-bios",
            about: "the snapshot's first boot under SeaBIOS reached multi-user: info says slot A, read-only root, no failed unit; softdog armed as systemd's watchdog",
            run: boot_bios,
            pool: true,
        },
        Scenario {
            name: "boot-uefi",
            about: "boots to multi-user under OVMF; info says slot A, read-only root",
            run: boot_uefi,
            pool: false,
        },
        Scenario {
            name: "immutable-root",
            about: "/usr is read-only; /etc resets on reboot; /var/lib and identity persist",
            run: immutable_root,
            pool: true,
        },
        Scenario {
            name: "grow-data",
            about: "on a disk grown before first boot, /var fills the disk",
            run: grow_data,
            pool: false,
        },
        Scenario {
            name: "missing-root",
            about: "a missing root label gets one clear line, then a reboot",
            run: missing_root,
            pool: false,
        },
        Scenario {
            name: "power-cut",
            about: "power cut while first boot formats the data partition: the next boot recovers",
            run: power_cut,
            pool: false,
        },
        Scenario {
            name: "debug-shell",
            about: "with maculaos.debug a boot failure opens a shell on the console",
            run: debug_shell,
            pool: false,
        },
        Scenario {
            name: "config-nocloud",
            about: "a cloud-localds seed and a config.d file configure the node; still true after reboot",
            run: crate::config::config_nocloud,
            pool: false,
        },
        Scenario {
            name: "config-last-good",
            about: "a config typo boots with the last good config; health, console and banner say where",
            run: crate::config::config_last_good,
            pool: false,
        },
        Scenario {
            name: "trial-good",
            about: "a slot on trial that boots healthy is marked good; grub-editenv agrees",
            run: crate::slots::trial_good,
            pool: false,
        },
        Scenario {
            name: "trial-rollback",
            about: "a slot on trial that never boots is tried 3 times, then GRUB goes back and says why",
            run: crate::slots::trial_rollback,
            pool: false,
        },
        Scenario {
            name: "upgrade-usb",
            about: "a signed v2 bundle on a stick plugged into a running node: --apply, reboot into v2 on trial, marked good; re-apply refused; a service deployed on v1 answers with its volume's data on v2, after a rollback to v1 and forward again",
            run: crate::slots::upgrade_usb,
            pool: true,
        },
        Scenario {
            name: "upgrade-http",
            about: "upgrade.url over HTTP: --check offers v2, --download is cut and resumed, --apply, reboot into v2",
            run: crate::slots::upgrade_http,
            pool: true,
        },
        Scenario {
            name: "upgrade-power-cut",
            about: "power cut while --apply writes slot B: v1 boots, B is empty, the next --apply completes",
            run: crate::slots::upgrade_power_cut,
            pool: true,
        },
        Scenario {
            name: "live-bios",
            about: "the ISO in a CD drive boots live under SeaBIOS: info says live, /var in memory, the blank disk untouched; install refuses a used disk, the medium, a small disk; the interactive installer, answered on stdin",
            run: crate::install::live_bios,
            pool: false,
        },
        Scenario {
            name: "live-uefi",
            about: "the ISO written to a USB stick boots live under OVMF; the blank disk untouched",
            run: crate::install::live_uefi,
            pool: false,
        },
        Scenario {
            name: "live-persist",
            about: "the ISO's persistent entry formats a blank MACULA_PERSIST partition; /var, /home, /root and identity survive a reboot; a foreign MACULA_PERSIST is refused and left byte-identical",
            run: crate::install::live_persist,
            pool: false,
        },
        Scenario {
            name: "install",
            about: "unattended install from the ISO (NoCloud install.device), then the disk boots alone (bios, uefi) with the config's hostname and key",
            run: crate::install::install_unattended,
            pool: false,
        },
        Scenario {
            name: "recovery",
            about: "maculaos recovery: root shells, SSH, no workloads, data unmounted; repair checks data, slots, rebuilds a garbled grubenv; then a normal boot",
            run: crate::recovery::recovery,
            pool: true,
        },
        Scenario {
            name: "factory-reset",
            about: "factory-reset --confirm --keep-data --keep-network from recovery mode: the next boot wipes config, credentials and identity, keeps /var/lib/data and the network settings; the wiped config's key no longer logs in; then the boot menu's reset entry",
            run: crate::recovery::factory_reset,
            pool: true,
        },
        Scenario {
            name: "agent-backup-diag",
            about: "the agent restarts a unit its http check finds down; systemd restarts a SIGSTOPped agent; backup, change, restore: byte-identical with modes, owners, times; a corrupted backup refused before writing; an age-encrypted backup restored only with its key; diag --full holds its files and no secret; a downed link brought back by the agent; the i6300esb resets a panicked kernel",
            run: crate::support::agent_backup_diag,
            pool: true,
        },
        Scenario {
            name: "services-deploy",
            about: "an image made in the test (busybox httpd: podman import, podman save) deployed from its archive with a port and a volume: the host's curl gets the volume's page; services and service status say running, logs shows it; a corrupt archive, a bad reference, an unreachable registry and a port in use are each refused with the reason, the running service untouched; stop, start, restart; running again after a reboot; remove takes the unit and keeps the data; a service declared in config.d runs, and deploy and remove refuse to touch it",
            run: crate::services::services_deploy,
            pool: true,
        },
        Scenario {
            name: "services-registry",
            about: "an image made in the test pushed to docker-registry on the host (password, plain HTTP) once maculaos.registry gives the credentials (root-only, hidden by config show); deployed by reference with a health check; the agent restarts it when its httpd dies inside a running container; it runs after a reboot; its check is skipped when stopped; a docker.io reference pulled from the configured mirror",
            run: crate::registry::services_registry,
            pool: true,
        },
        Scenario {
            name: "firewall",
            about: "a default node scanned from another node on the LAN (every TCP port, a UDP sample) shows only SSH though a web server listens on 8080; firewall allow 8080/tcp opens it, still after a reboot; deny drops it again; a bad network in firewall.allow is refused by the CLI, and in a file it is a configuration error apply and health name, the rules in force staying",
            run: crate::firewall::firewall,
            pool: true,
        },
        Scenario {
            name: "wireguard",
            about: "two nodes turn maculaos.mesh.wireguard on (keys made, root's only, never shown), take each other as peers and ping each other's overlay address; captured on the LAN's wire that ping is WireGuard UDP only while the same ping over the plain LAN shows its payload; network status --json checked field by field; a node that drops the other from its peers is no longer reached over the overlay; 16 MiB fetched over the overlay and over the plain LAN",
            run: crate::wireguard::wireguard,
            pool: true,
        },
        Scenario {
            name: "metrics",
            about: "the guide's monitoring.prometheus block, at the top level as the guide writes it, starts node-exporter; another node on the LAN scrapes it and the Prometheus client library's parser reads the machine's metrics and MaculaOS's own (version and slot as `info` says, boots, health checks: the agent's `metrics` check passing); services, health and firewall show list it; a bad path is refused naming the file; without the block the service stops and the port is dropped again, as before it was enabled",
            run: crate::metrics::metrics,
            pool: true,
        },
        Scenario {
            name: "edge-services",
            about: "maculaos.edge.mqtt and maculaos.gitops in one file start mosquitto and git's own sshd; from another node on the LAN a retained reading published with the user's password reaches a subscriber, anonymous clients and a wrong password are refused, port 9001 answers the WebSocket handshake for MQTT; a push creates a repository and the guide's git clone gets it; the git port runs nothing but git, the user git has no login on port 22, a path outside the repositories is refused; the password is kept hashed and hidden by config show; services and firewall show list both; after a reboot the retained reading and the repository are still served and health passes both; a broker without users is refused naming the file; without the file both stop and their ports are dropped",
            run: crate::edge::edge_services,
            pool: true,
        },
        Scenario {
            name: "guide-commands",
            about: "every node command of the user guide's code blocks, typed as written by the admin user: each does its job (backup to and restore from /mnt/usb, shell, logs network, network status) or fails only for a reason it states (no update server, empty slot B, repair outside recovery mode, factory without a terminal to ask); factory --yes --no-reboot is asked for and withdrawn",
            run: crate::guide::guide_commands,
            pool: true,
        },
        Scenario {
            name: "firstboot",
            about: "an unconfigured node: pairing code and QR on the serial console (decoded), wizard in headless chromium, wrong codes refused then rate limited, the form pairs it (hostname, key), the wizard is gone after reboot and the dashboard answers",
            run: crate::firstboot::firstboot_wizard,
            pool: false,
        },
        Scenario {
            name: "lan-discovery",
            about: "two nodes on one virtual LAN (socket netdev on 127.0.0.1): maculaos discover lists each from the other; avahi-resolve and getent resolve macula-XXXX.local; the wizard is announced and loads by name",
            run: crate::firstboot::lan_discovery,
            pool: true,
        },
        Scenario {
            name: "lan-nodes",
            about: "three saved nodes on one virtual LAN (a hub on 127.0.0.1): each reaches every other by its .local name over TCP; a node cut off the LAN, paused, or killed and booted again drops out and comes back with its identity",
            run: crate::lan::lan_nodes,
            pool: true,
        },
        Scenario {
            name: "mesh-realm",
            about: "three saved nodes form one realm: the first bootstrap node makes it, a second bootstrap node and a peer join with one-time tokens (a used token is refused); a publication on the peer reaches subscribers on both bootstrap nodes, both ping the peer; with the bootstrap node its leafnode goes to killed the peer stays in through the other, and the killed node rejoins after it boots; a node with another realm's certificate is refused and its mesh status says why",
            run: crate::mesh::mesh_realm,
            pool: true,
        },
        Scenario {
            name: "fleet-rollout",
            about: "the dashboard's fleet page lists a realm of three nodes; the three updated from an HTTP source by `maculaos fleet update`: rolling to v2 with one reboot slot, the nodes rebooting one after the other, all on v2 marked good; a canary rollout of a v3 that fails its boot checks: 3 failed tries on the canary, back on v2, v3 remembered bad and refused, the rollout stopped with the reason, no other node leaves v2; FleetLock clients on two nodes share one slot",
            run: crate::rollout::fleet_rollout,
            pool: true,
        },
        Scenario {
            name: "mesh-gateway",
            about: "a production realm (an operator CA made with openssl, imported on the bootstrap node; a wrong key refused), a gateway and a peer configured with no bootstrap node: both join with tokens, the peer finds the gateway by mDNS; with its route to the bootstrap node cut, the peer's leafnode goes to the gateway, a publication and a ping cross it both ways, the peer renews its certificate through it (openssl verify: OK); the login banner and the dashboard say connected",
            run: crate::mesh::mesh_gateway,
            pool: true,
        },
        Scenario {
            name: "mdns-conflict",
            about: "a second host takes a node's .local name: the node is announced as NAME-2 and info and discover say so; once that host is gone its agent claims the name back and the others resolve it to the node",
            run: crate::lan::mdns_conflict,
            pool: true,
        },
        Scenario {
            name: "reproducible",
            about: "rebuilding the root from the same inputs gives the same squashfs sha256",
            run: reproducible,
            pool: false,
        },
        Scenario {
            name: "build-errors",
            about: "unreachable mirror, full output disk: clear errors, no half-written image",
            run: build_errors,
            pool: false,
        },
    ]
}

/// Shared checks of a healthy first boot.
fn check_booted(ssh: &Ssh, firmware: &str) -> Result<()> {
    let i = info(ssh)?;
    ensure(i["slot"] == "A", || {
        format!("maculaos info: slot is {}, expected A\n{i:#}", i["slot"])
    })?;
    ensure(i["mode"] == "disk", || {
        format!("maculaos info: mode is {}, expected disk", i["mode"])
    })?;
    ensure(i["firmware"] == firmware, || {
        format!(
            "maculaos info: firmware is {}, expected {firmware}",
            i["firmware"]
        )
    })?;
    ensure(i["root"]["read_only"] == true, || {
        format!("maculaos info: root is not read-only: {}", i["root"])
    })?;
    ensure(i["root"]["fstype"] == "squashfs", || {
        format!("root is {}, expected squashfs", i["root"]["fstype"])
    })?;
    ensure(i["data"]["size_bytes"].as_u64().unwrap_or(0) > 0, || {
        format!("no data partition on /var: {}", i["data"])
    })?;
    let failed = ssh.check("systemctl --failed --no-legend --plain")?;
    ensure(failed.trim().is_empty(), || {
        format!("units failed during boot:\n{failed}")
    })?;
    let ptype = ssh.check("sudo sfdisk --part-type /dev/vda 5")?;
    ensure(
        ptype
            .trim()
            .eq_ignore_ascii_case(maculaos_boot::TYPE_LINUX_FS),
        || {
            format!(
                "MACULA_DATA's partition type after first boot is {}, expected Linux filesystem",
                ptype.trim()
            )
        },
    )?;
    let human = ssh.check("maculaos info")?;
    ensure(human.contains("read-only"), || {
        format!("maculaos info (text) does not say read-only:\n{human}")
    })?;
    Ok(())
}

fn boot_with(ctx: &mut Ctx, firmware: Firmware) -> Result<Ssh> {
    let disk = ctx.disk("")?;
    let ssh = ctx.boot(
        ctx.spec(&disk, firmware),
        &format!("first boot ({firmware})"),
    )?;
    check_booted(&ssh, &firmware.to_string())?;
    Ok(ssh)
}

/// The pool's first boot, checked: node 0 as it was saved right after it.
fn boot_bios(ctx: &mut Ctx) -> Result<()> {
    let ssh = ctx.restore(0)?;
    check_booted(&ssh, &Firmware::Bios.to_string())?;
    // This machine has no hardware watchdog: softdog stands in, and the
    // health agent arms systemd's runtime watchdog on it once D-Bus is up.
    let mut armed = String::new();
    wait_until(
        ctx.vm()?,
        "systemd's runtime watchdog armed on softdog",
        CMD_TIMEOUT,
        || {
            armed = ssh
                .run("cat /sys/class/watchdog/watchdog0/identity; systemctl show -p RuntimeWatchdogUSec --value")?
                .stdout;
            let usec = armed.lines().last().unwrap_or_default().trim();
            Ok(armed.starts_with("Software Watchdog\n") && !matches!(usec, "" | "0" | "infinity"))
        },
    )
    .with_context(|| format!("watchdog identity and RuntimeWatchdogUSec:\n{armed}"))
}

fn boot_uefi(ctx: &mut Ctx) -> Result<()> {
    boot_with(ctx, Firmware::Uefi).map(|_| ())
}

fn immutable_root(ctx: &mut Ctx) -> Result<()> {
    let ssh = ctx.restore(0)?;
    let w = ssh.run("sudo touch /usr/maculaos-test")?;
    ensure(!w.success(), || {
        "writing /usr succeeded: the root is writable".into()
    })?;
    ensure(w.stderr.contains("Read-only file system"), || {
        format!("writing /usr failed, but not as read-only: {}", w.stderr)
    })?;
    ssh.check("echo transient | sudo tee /etc/maculaos-test >/dev/null")?;
    ssh.check("echo kept | sudo tee /var/lib/maculaos-test >/dev/null")?;
    let ident = "cat /etc/machine-id; sudo cat /var/lib/maculaos/ssh/ssh_host_ed25519_key.pub";
    let before = ssh.check(ident)?;
    let ssh = ctx.reboot(&ssh, "second boot")?;
    let etc = ssh.run("test -e /etc/maculaos-test")?;
    ensure(!etc.success(), || {
        "/etc/maculaos-test survived the reboot: /etc is not reset at boot".into()
    })?;
    let kept = ssh.check("cat /var/lib/maculaos-test")?;
    ensure(kept.trim() == "kept", || {
        format!("/var/lib/maculaos-test after reboot: {kept:?}")
    })?;
    let after = ssh.check(ident)?;
    ensure(before == after, || {
        format!(
            "machine-id or SSH host key changed across reboot:\nbefore:\n{before}\nafter:\n{after}"
        )
    })?;
    Ok(())
}

fn grow_data(ctx: &mut Ctx) -> Result<()> {
    let disk_path = ctx.disk("")?;
    let before = std::fs::metadata(&disk_path)?.len();
    let grown = before + (4 << 30);
    disk::resize(&disk_path, grown)?;
    let ssh = ctx.boot(
        ctx.spec(&disk_path, Firmware::Bios),
        "first boot (grown disk)",
    )?;
    let disk_bytes: u64 = ssh
        .check("echo $(( $(cat /sys/class/block/vda/size) * 512 ))")?
        .trim()
        .parse()?;
    ensure(disk_bytes == grown, || {
        format!("guest sees a {disk_bytes}-byte disk, expected {grown}")
    })?;
    let df = ssh.check("df -B1 --output=size /var | tail -n1")?;
    let fs_bytes: u64 = df
        .trim()
        .parse()
        .with_context(|| format!("df printed {df:?}"))?;
    let end =
        ssh.check("p=/sys/class/block/vda5; echo $(( ($(cat $p/start) + $(cat $p/size)) * 512 ))")?;
    let end: u64 = end.trim().parse()?;
    // The partition must end at the disk's end, less the backup GPT (<= 1 MiB).
    ensure(grown - end <= 1 << 20, || {
        format!("MACULA_DATA ends at {end}, the disk at {grown}: not grown to fill it")
    })?;
    // ext4 keeps a few percent for its own metadata.
    let part_start = ssh
        .check("echo $(( $(cat /sys/class/block/vda5/start) * 512 ))")?
        .trim()
        .parse::<u64>()?;
    let part = end - part_start;
    ensure(fs_bytes > part / 100 * 90, || {
        format!("/var is {fs_bytes} bytes on a {part}-byte partition")
    })?;
    ensure(fs_bytes > 4 << 30, || {
        format!("/var is only {fs_bytes} bytes after growing the disk by 4 GiB")
    })?;
    Ok(())
}

/// Boot a copy whose slot A partition was renamed (with the real
/// partitioning tool) until init reports the missing label.
fn boot_without_root<'a>(ctx: &'a mut Ctx, extra: &str) -> Result<&'a mut maculaos_vm::Vm> {
    let disk_path = ctx.disk(extra)?;
    maculaos_runner::Cmd::new("sfdisk")
        .args(["--part-label"])
        .arg(&disk_path)
        .args(["3", "NOT_A_MACULA_ROOT"])
        .quiet()
        .run()?;
    let vm = ctx.start(ctx.spec(&disk_path, Firmware::Bios))?;
    vm.wait_for_serial("no partition labelled MACULA_ROOT_A", BOOT_TIMEOUT)?;
    Ok(vm)
}

fn missing_root(ctx: &mut Ctx) -> Result<()> {
    let vm = boot_without_root(ctx, "maculaos.rootwait=5")?;
    vm.wait_for_serial("rebooting", BOOT_TIMEOUT)?;
    // -no-reboot: the guest's reboot ends QEMU.
    let vm = ctx.vm()?;
    vm.wait_exit(BOOT_TIMEOUT)
        .context("the guest did not reboot after the failure")?;
    let text = ctx.vm()?.serial_text();
    ensure(text.contains("NOT_A_MACULA_ROOT"), || {
        "the failure message does not list the partitions it saw".into()
    })?;
    Ok(())
}

fn power_cut(ctx: &mut Ctx) -> Result<()> {
    let disk_path = ctx.disk("")?;
    let vm = ctx.start(ctx.spec(&disk_path, Firmware::Bios))?;
    vm.wait_for_serial("formatting MACULA_DATA", BOOT_TIMEOUT)?;
    // Pull the plug: QEMU ends at once, nothing is flushed or unmounted.
    vm.quit()?;
    vm.wait_exit(Duration::from_secs(60))?;
    vm.boot_again()?;
    let ssh = ctx.wait_up("boot after the power cut")?;
    check_booted(&ssh, "BIOS")?;
    let id = ssh.check("sudo test -s /var/lib/maculaos/machine-id && echo ok")?;
    ensure(id.trim() == "ok", || {
        "no machine-id on the data partition after recovery".into()
    })?;
    Ok(())
}

fn debug_shell(ctx: &mut Ctx) -> Result<()> {
    let vm = boot_without_root(ctx, "maculaos.rootwait=3 maculaos.debug")?;
    vm.wait_for_serial("debug shell", BOOT_TIMEOUT)?;
    vm.mark_serial();
    // The shell computes; the console echoes input, so look for the result only.
    vm.send_serial("echo shell-says-$((6*7))\n")?;
    vm.wait_for_serial("shell-says-42", Duration::from_secs(60))?;
    vm.send_serial("exit\n")?;
    let vm = ctx.vm()?;
    vm.wait_exit(BOOT_TIMEOUT)
        .context("leaving the debug shell did not reboot")?;
    Ok(())
}

/// A cache that shares the downloaded packages and the Debian root with the
/// main one but has no root stage, so the root is built again from scratch.
fn fresh_root_cache(ctx: &Ctx, name: &str, share_rootfs: bool) -> Result<std::path::PathBuf> {
    let cache = ctx.dir.join(name);
    std::fs::create_dir_all(&cache)?;
    // The same development key (an input of the image, when image/keys/ is empty).
    let mut shared = vec!["debs", "dev-keys"];
    if share_rootfs {
        shared.push("rootfs");
    }
    for d in shared {
        let src = ctx.build.cache.join(d);
        std::fs::create_dir_all(&src)?;
        std::os::unix::fs::symlink(&src, cache.join(d))
            .with_context(|| format!("linking {}", src.display()))?;
    }
    Ok(cache)
}

fn reproducible(ctx: &mut Ctx) -> Result<()> {
    let mut opts = ctx.build.clone();
    opts.cache = fresh_root_cache(ctx, "cache", true)?;
    opts.out = ctx.dir.join("out");
    let again = crate::harness::build_image(&opts)?;
    let first = ctx
        .manifest
        .output("slot")
        .context("first build has no slot image")?;
    let second = again
        .manifest
        .output("slot")
        .context("second build has no slot image")?;
    ensure(first.sha256 == second.sha256, || {
        format!(
            "squashfs differs between two builds of the same inputs: {} vs {}",
            first.sha256, second.sha256
        )
    })?;
    let _ = std::fs::remove_dir_all(&opts.out);
    let _ = std::fs::remove_dir_all(&opts.cache);
    Ok(())
}

fn image_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.ends_with(".img")
                        || n.ends_with(".iso")
                        || n.ends_with(".squashfs")
                        || n.ends_with(".partial")
                })
                .collect()
        })
        .unwrap_or_default()
}

fn build_errors(ctx: &mut Ctx) -> Result<()> {
    // 1. No route to the mirror: a port on this machine where nothing listens.
    let mut opts = ctx.build.clone();
    opts.mirror = "http://127.0.0.1:9/debian".into();
    opts.cache = fresh_root_cache(ctx, "cache-nomirror", false)?;
    opts.out = ctx.dir.join("out-nomirror");
    let err = match crate::harness::build_image(&opts) {
        Ok(_) => anyhow::bail!("a build from an unreachable mirror succeeded"),
        Err(e) => format!("{e:#}"),
    };
    ensure(
        err.contains("cannot reach the Debian mirror http://127.0.0.1:9/debian"),
        || format!("unreachable mirror: unclear error: {err}"),
    )?;
    let left = image_files(&opts.out);
    ensure(left.is_empty(), || {
        format!("failed build left {left:?} in {}", opts.out.display())
    })?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dir = ctx.dir.display().to_string();
    ensure(!mounts.contains(&dir), || {
        format!("the failed build left a mount under {dir}")
    })?;

    // 2. A full output disk: a 64 MiB tmpfs.
    let full = ctx.dir.join("full");
    std::fs::create_dir_all(&full)?;
    maculaos_runner::Cmd::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "maculaos-test-full"])
        .arg(&full)
        .quiet()
        .run()
        .context("mounting a small tmpfs (the scenario runs as root, like the image build)")?;
    let mut opts = ctx.build.clone();
    opts.out = full.clone();
    let result = crate::harness::build_image(&opts);
    let left = image_files(&full);
    let _ = maculaos_runner::Cmd::new("umount").arg(&full).quiet().run();
    let err = match result {
        Ok(_) => anyhow::bail!("a build into a 64 MiB directory succeeded"),
        Err(e) => format!("{e:#}"),
    };
    ensure(
        err.contains("not enough disk space") && err.contains(&full.display().to_string()),
        || format!("full disk: unclear error: {err}"),
    )?;
    ensure(left.is_empty(), || {
        format!("failed build left {left:?} in {}", full.display())
    })?;
    Ok(())
}
