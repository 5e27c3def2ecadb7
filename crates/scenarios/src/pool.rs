//! Snapshots of booted nodes, and N nodes on one virtual LAN.
//!
//! Once per run, [`make`] boots [`NODES`] from fresh copies of the image,
//! together on one LAN hub, waits until each has finished its first boot
//! (`systemctl is-system-running --wait`), and saves each machine: its disk
//! and its memory ([`maculaos_vm::Vm::save_state`]). A scenario that needs
//! "a running node" then starts one with [`Ctx::restore`] or several with
//! [`Ctx::nodes`] in seconds: a sparse copy of the saved disk, the saved
//! memory loaded by QEMU, a new hub, new forwarded ports, new logs.
//!
//! Identities: every pool node did its own first boot with its own MACs,
//! so each has its own machine-id, hostname (`macula-XXXX` from its MAC),
//! SSH host keys and LAN addresses. A scenario with several nodes gets
//! distinct ones; two scenarios running side by side may both run a copy of
//! the same node, each on its own hub, never meeting.

use crate::harness::{ensure, wait_until, Ctx, BOOT_TIMEOUT};
use anyhow::{Context, Result};
use maculaos_vm::{disk, Firmware, Hub, Lan, Ssh, Vm, VmSpec};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A node of the pool: what differs between them.
pub struct NodeSpec {
    /// The hostname its first boot gives it (from the first NIC's MAC).
    pub hostname: &'static str,
    pub mac: &'static str,
    pub lan_mac: &'static str,
    /// An i6300esb hardware watchdog (the others use softdog).
    pub watchdog: bool,
}

/// The pool. Node 0 is the plain one single-node scenarios use; node 2 has
/// a hardware watchdog for the scenario that makes it fire.
pub const NODES: [NodeSpec; 3] = [
    NodeSpec {
        hostname: "macula-0a01",
        mac: "52:54:00:00:0a:01",
        lan_mac: "52:54:00:00:02:01",
        watchdog: false,
    },
    NodeSpec {
        hostname: "macula-0b02",
        mac: "52:54:00:00:0b:02",
        lan_mac: "52:54:00:00:02:02",
        watchdog: false,
    },
    NodeSpec {
        hostname: "macula-0c03",
        mac: "52:54:00:00:0c:03",
        lan_mac: "52:54:00:00:02:03",
        watchdog: true,
    },
];

/// A saved node: its disk and memory, and the machine they belong to.
pub struct Saved {
    pub hostname: &'static str,
    disk: PathBuf,
    state: PathBuf,
    /// The spec it ran with (its disk, run_dir and LAN port are replaced
    /// on restore; every device stays as it was, as loading requires).
    spec: VmSpec,
    /// The serial console of its first boot: the console history a
    /// restored copy would have shown.
    pub console: PathBuf,
}

/// The saved nodes of this run.
pub struct Pool {
    pub nodes: Vec<Saved>,
}

/// Boot every node of [`NODES`] on one LAN, wait for their first boots to
/// finish, save them in the context's directory (timings in its report).
pub fn make(ctx: &mut Ctx) -> Result<Pool> {
    let hub = Hub::new();
    let mut vms = Vec::new();
    for (i, n) in NODES.iter().enumerate() {
        let disk = ctx.disk_named(&format!("node-{i}.img"), true, "")?;
        let mut spec = ctx.spec(&disk, Firmware::Bios);
        spec.run_dir = ctx.dir.join(format!("node-{i}"));
        spec.mac = Some(n.mac.into());
        spec.watchdog = n.watchdog;
        let (_, hub_port) = hub.port()?;
        spec.lan = Some(Lan {
            hub_port,
            mac: n.lan_mac.into(),
        });
        vms.push(Vm::start(spec)?);
    }
    let started = Instant::now();
    let key = ctx.key().to_path_buf();
    let mut saved = Vec::new();
    for (i, vm) in vms.iter_mut().enumerate() {
        let ssh = crate::harness::wait_vm_up(vm, &key, "multi-user.target")?;
        ctx.record(
            format!("node {i}: first boot, QEMU start to multi-user (wall)"),
            started.elapsed().as_secs_f64(),
        );
        // The first boot's jobs all done (the boot checks, the wizard, the
        // agent's first round): the state every restore starts from.
        let state = ssh.run_timeout("systemctl is-system-running --wait", BOOT_TIMEOUT)?;
        ensure(state.stdout.trim() == "running", || {
            format!(
                "node {i} did not settle as `running` but {:?}; failed units:\n{}",
                state.stdout.trim(),
                ssh.run("systemctl --failed --no-legend --plain")
                    .map(|o| o.stdout)
                    .unwrap_or_default()
            )
        })?;
        let h = ssh.check("hostname")?;
        ensure(h.trim() == NODES[i].hostname, || {
            format!(
                "node {i} is called {h:?}, expected {} from its MAC",
                NODES[i].hostname
            )
        })?;
        // Three nodes with distinct names came up together on one LAN:
        // none may have had to give up its .local name. avahi's log stays
        // with the snapshot's logs either way.
        let avahi =
            ssh.check("sudo journalctl -b -u avahi-daemon -o short-monotonic --no-pager")?;
        let log = vm.run_dir().join("avahi-daemon.log");
        std::fs::write(&log, &avahi).with_context(|| format!("writing {}", log.display()))?;
        ensure(!avahi.contains("Host name conflict"), || {
            format!(
                "node {i}'s avahi-daemon saw a host name conflict on a LAN of distinct names (see {}):\n{}",
                log.display(),
                maculaos_runner::tail(&avahi, 15)
            )
        })?;
    }
    for (i, vm) in vms.iter_mut().enumerate() {
        let ssh = vm.ssh(&key, "macula")?;
        // Less memory to save and to load: the page cache is only a cache.
        ssh.check("sync && echo 3 | sudo tee /proc/sys/vm/drop_caches >/dev/null")?;
        // No SSH session saved with the node: a restore's connections are new.
        ssh.close_master();
        let t = Instant::now();
        let state = ctx.dir.join(format!("node-{i}.state"));
        vm.save_state(&state)
            .with_context(|| format!("saving node {i}"))?;
        ctx.record(
            format!("node {i}: saving its state"),
            t.elapsed().as_secs_f64(),
        );
        let spec = vm.spec().clone();
        saved.push(Saved {
            hostname: NODES[i].hostname,
            disk: spec.disk.clone(),
            state,
            console: spec.serial_log(1),
            spec,
        });
    }
    Ok(Pool { nodes: saved })
}

/// Start a copy of saved node `node` under `run_dir` (its disk copied next
/// to it, `<run_dir name>.img`), its LAN NIC on `hub_port`; returns once SSH answers, with the
/// guest's clock set to now (it resumes at the time it was saved).
/// `tweak` may change what lies outside the machine (forwards, host
/// services) but no device: loading the saved state needs the same ones.
pub fn restore(
    ctx: &mut Ctx,
    node: usize,
    run_dir: PathBuf,
    hub_port: u16,
    tweak: impl FnOnce(&mut VmSpec),
) -> Result<(Vm, Ssh)> {
    let pool = ctx.pool()?;
    let saved = pool
        .nodes
        .get(node)
        .with_context(|| format!("the pool has {} nodes, no node {node}", pool.nodes.len()))?;
    let started = Instant::now();
    let copy = ctx.dir.join(format!(
        "{}.img",
        run_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("node")
    ));
    disk::working_copy(&saved.disk, &copy)?;
    let mut spec = saved.spec.clone();
    spec.disk = copy;
    spec.run_dir = run_dir;
    spec.incoming = Some(saved.state.clone());
    if let Some(lan) = spec.lan.as_mut() {
        lan.hub_port = hub_port;
    }
    tweak(&mut spec);
    let hostname = saved.hostname;
    let mut vm = Vm::start(spec)?;
    let ssh = vm.ssh(ctx.key(), "macula")?;
    vm.wait_for_ssh(&ssh, BOOT_TIMEOUT)?;
    set_clock(&ssh)?;
    ctx.record(
        format!("{hostname}: restored, QEMU start to SSH (wall)"),
        started.elapsed().as_secs_f64(),
    );
    Ok((vm, ssh))
}

/// The guest's wall clock set to the host's: a restored guest resumes at
/// the time it was saved, minutes ago.
fn set_clock(ssh: &Ssh) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the host clock is before 1970")?;
    ssh.check(&format!(
        "sudo date -u -s @{}.{:03} >/dev/null",
        now.as_secs(),
        now.subsec_millis()
    ))?;
    Ok(())
}

/// One node of [`Nodes`].
pub struct Node {
    pub hostname: &'static str,
    pub vm: Vm,
    pub ssh: Ssh,
    /// Its port on the hub (for [`Nodes::cut`]).
    port: usize,
}

/// N restored nodes on one virtual LAN. Dropping it ends their QEMUs.
pub struct Nodes {
    pub hub: Hub,
    pub nodes: Vec<Node>,
    key: PathBuf,
}

impl Nodes {
    /// Cut node `i` off the LAN (its frames are dropped both ways), as if
    /// its cable were pulled; [`Nodes::reconnect`] plugs it back.
    pub fn cut(&self, i: usize) -> Result<()> {
        Ok(self.hub.set_cut(self.node(i)?.port, true)?)
    }

    pub fn reconnect(&self, i: usize) -> Result<()> {
        Ok(self.hub.set_cut(self.node(i)?.port, false)?)
    }

    /// Freeze node `i` (its CPUs stop, as in a hang) or let it run again.
    pub fn pause(&self, i: usize) -> Result<()> {
        Ok(self.node(i)?.vm.pause()?)
    }

    pub fn resume(&self, i: usize) -> Result<()> {
        Ok(self.node(i)?.vm.resume()?)
    }

    /// Kill node `i`'s QEMU at once (a power cut).
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.node_mut(i)?.vm.kill()?;
        Ok(())
    }

    /// Boot node `i` again from its disk after it was killed or powered
    /// off (a real boot, on the same LAN port), until multi-user.
    pub fn boot_again(&mut self, i: usize) -> Result<()> {
        let key = self.key.clone();
        let n = self.node_mut(i)?;
        n.vm.boot_again()?;
        n.ssh = crate::harness::wait_vm_up(&mut n.vm, &key, "multi-user.target")?;
        Ok(())
    }

    /// Wait for node `i` to reboot by itself (its QEMU runs with
    /// `-no-reboot`, so it exits), then boot it again until multi-user.
    pub fn rebooted(&mut self, i: usize, why: &str) -> Result<()> {
        self.node_mut(i)?
            .vm
            .wait_exit(crate::harness::BOOT_TIMEOUT)
            .with_context(|| format!("waiting for node {i} to reboot ({why})"))?;
        self.boot_again(i)
    }

    fn node(&self, i: usize) -> Result<&Node> {
        self.nodes
            .get(i)
            .with_context(|| format!("there are {} nodes, no node {i}", self.nodes.len()))
    }

    fn node_mut(&mut self, i: usize) -> Result<&mut Node> {
        let n = self.nodes.len();
        self.nodes
            .get_mut(i)
            .with_context(|| format!("there are {n} nodes, no node {i}"))
    }

    /// Poll `cond` on node `i` until it holds (see [`wait_until`]).
    pub fn wait_until(
        &mut self,
        i: usize,
        what: &str,
        timeout: Duration,
        cond: impl FnMut(&Ssh) -> Result<bool>,
    ) -> Result<()> {
        let n = self.node_mut(i)?;
        let ssh = n.ssh.clone();
        let mut cond = cond;
        wait_until(&mut n.vm, what, timeout, || cond(&ssh))
    }
}

impl Ctx {
    /// Start `count` nodes of the pool (`count` ≤ [`NODES`]`.len()`) on one
    /// new virtual LAN; returns once each answers SSH.
    pub fn nodes(&mut self, count: usize) -> Result<Nodes> {
        self.nodes_with(count, |_| {})
    }

    /// [`Ctx::nodes`] with `tweak` applied to what lies outside each
    /// machine (see [`restore`]).
    pub fn nodes_with(&mut self, count: usize, tweak: impl Fn(&mut VmSpec)) -> Result<Nodes> {
        ensure(count <= NODES.len(), || {
            format!("the pool has {} nodes, {count} asked for", NODES.len())
        })?;
        let hub = Hub::new();
        let mut nodes = Vec::new();
        // One after the other: each takes seconds.
        let started = Instant::now();
        for (i, spec) in NODES.iter().enumerate().take(count) {
            let (port, hub_port) = hub.port()?;
            let run_dir = self.dir.join(format!("node-{i}"));
            let (mut vm, ssh) = restore(self, i, run_dir, hub_port, &tweak)?;
            // The hub learns where a VM is from the first frame it sends.
            // A restored node may send nothing on its own for minutes (the
            // saved one had announced everything already), and until then
            // every frame for it is lost: another node's mDNS probe for
            // its name went unanswered, so both kept the name. One ping to
            // all-nodes on each link, until the hub has heard from it.
            wait_until(
                &mut vm,
                &format!("{}'s first frame on the LAN", spec.hostname),
                Duration::from_secs(60),
                || {
                    ssh.run(
                        "for n in $(ls /sys/class/net); do [ \"$n\" = lo ] || \
                         sudo ping -6 -q -c 1 -W 1 -I \"$n\" ff02::1 >/dev/null 2>&1; done; true",
                    )?;
                    Ok(hub.frames_from(port)? > 0)
                },
            )?;
            nodes.push(Node {
                hostname: spec.hostname,
                vm,
                ssh,
                port,
            });
        }
        self.record(
            format!("{count} nodes restored, first QEMU start to the last SSH (wall)"),
            started.elapsed().as_secs_f64(),
        );
        Ok(Nodes {
            hub,
            nodes,
            key: self.key().to_path_buf(),
        })
    }

    /// Start node `node` of the pool as this scenario's VM (what
    /// [`Ctx::vm`] and [`Ctx::reboot`] work on), alone on its LAN.
    pub fn restore(&mut self, node: usize) -> Result<Ssh> {
        self.restore_with(node, |_| {})
    }

    /// [`Ctx::restore`] with `tweak` applied to what lies outside the
    /// machine, e.g. a host service the guest reaches
    /// ([`VmSpec::host_services`]).
    pub fn restore_with(&mut self, node: usize, tweak: impl FnOnce(&mut VmSpec)) -> Result<Ssh> {
        self.shutdown();
        let hub = Hub::new();
        let (_, hub_port) = hub.port()?;
        let run_dir = self.dir.join("vm");
        let (vm, ssh) = restore(self, node, run_dir, hub_port, tweak)?;
        self.adopt(vm, hub);
        Ok(ssh)
    }

    /// The console text of saved node `node`'s first boot.
    pub fn console_of(&self, node: usize) -> Result<String> {
        let pool = self.pool()?;
        let saved = pool.nodes.get(node).context("no such node in the pool")?;
        Ok(String::from_utf8_lossy(
            &std::fs::read(&saved.console)
                .with_context(|| format!("reading {}", saved.console.display()))?,
        )
        .into_owned())
    }
}
