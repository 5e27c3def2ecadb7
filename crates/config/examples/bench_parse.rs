//! How long reading a large configuration takes: parse every source, merge,
//! read the typed `Config` and run the checks across keys, as `load` does.
//!
//! The configuration (about 1,000 lines) is made here, the same every run:
//! image defaults, the node's config.yaml, three config.d fragments and a
//! kernel command line.
//!
//!     cargo run --release -p maculaos-config --example bench_parse [ITERATIONS]
//!
//! ITERATIONS defaults to 200. Exits non-zero if any source has a problem.

use maculaos_boot::Cmdline;
use maculaos_config::error::render;
use maculaos_config::load::{check, merge};
use maculaos_config::sources::{from_cmdline, parse, Format, Source};
use maculaos_config::{Config, Problem};
use serde::Deserialize;
use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Append one formatted line.
macro_rules! l {
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(&format!($($arg)*));
        $out.push('\n');
    }};
}

/// How many of each the node's config.yaml has.
const NODE_LABELS: usize = 150;
const NODE_SYSCTLS: usize = 100;
const NODE_ENV: usize = 80;
const NODE_INTERFACES: usize = 16;
const NODE_FILES: usize = 30;

const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBenchmarkKeyDataBenchmarkKeyData";

/// `/usr/lib/maculaos/config.yaml`, as the image ships it, with more labels.
fn defaults() -> String {
    let mut s = String::new();
    l!(s, "# MaculaOS image defaults");
    l!(s, "maculaos:");
    l!(s, "  labels:");
    l!(s, "    macula.io/role: edge");
    l!(s, "    macula.io/arch: amd64");
    for i in 0..20 {
        l!(s, "    defaults.macula.io/key-{i:02}: default-{i}");
    }
    l!(s, "  modules:");
    for m in [
        "br_netfilter",
        "overlay",
        "nf_conntrack",
        "ip_tables",
        "vxlan",
    ] {
        l!(s, "    - {m}");
    }
    l!(s, "  sysctl:");
    for i in 0..15 {
        l!(s, "    kernel.bench.default_{i}: \"{i}\"");
    }
    l!(s, "  upgrade:");
    l!(s, "    channel: stable");
    l!(s, "    auto_check: true");
    l!(s, "k3s:");
    l!(s, "  args:");
    for a in [
        "server",
        "--disable=traefik",
        "--disable=servicelb",
        "--write-kubeconfig-mode=644",
        "--data-dir=/var/lib/rancher/k3s",
    ] {
        l!(s, "    - {a}");
    }
    l!(s, "  airgap: true");
    l!(s, "network:");
    l!(s, "  dhcp: true");
    s
}

/// `/var/lib/maculaos/config.yaml`: the bulk of the configuration.
fn node_config() -> String {
    let mut s = String::new();
    l!(s, "# Node configuration of edge-bench-01");
    l!(s, "maculaos:");
    l!(s, "  hostname: edge-bench-01");
    l!(
        s,
        "  dns_nameservers: [1.1.1.1, 9.9.9.9, \"2606:4700:4700::1111\"]"
    );
    l!(s, "  labels:");
    for i in 0..NODE_LABELS {
        l!(s, "    site.example.com/label-{i:03}: value-{i}");
    }
    l!(s, "  modules:");
    for i in 0..8 {
        l!(s, "    - bench_mod_{i}");
    }
    l!(s, "  sysctl:");
    for i in 0..NODE_SYSCTLS {
        l!(s, "    net.ipv4.conf.eth{i}.rp_filter: \"{}\"", i % 3);
    }
    l!(s, "    net.ipv4.ip_forward: 1");
    l!(s, "    vm.swappiness: 10");
    l!(s, "  environment:");
    for i in 0..NODE_ENV {
        l!(s, "    APP_SETTING_{i:02}: \"setting value {i}\"");
    }
    l!(s, "  network:");
    l!(s, "    dhcp: false");
    l!(s, "    interfaces:");
    for i in 0..NODE_INTERFACES {
        if i % 4 == 3 {
            l!(s, "      - mac: \"52:54:00:00:00:{i:02x}\"");
            l!(s, "        dhcp: true");
        } else {
            l!(s, "      - name: eth{i}");
            l!(s, "        address: 10.{i}.0.10/24");
            l!(s, "        addresses: [\"fd00:{i:x}::10/64\"]");
            l!(s, "        gateway: 10.{i}.0.1");
            l!(s, "        dns: [10.{i}.0.1, 10.{i}.0.2]");
        }
    }
    l!(s, "  ntp:");
    l!(s, "    servers:");
    for n in ["0.pool.ntp.org", "1.pool.ntp.org", "10.0.0.1"] {
        l!(s, "      - {n}");
    }
    l!(s, "  ssh:");
    l!(s, "    authorized_keys:");
    for i in 0..4 {
        l!(s, "      - ssh-ed25519 {KEY}{i} admin{i}@example");
    }
    l!(s, "  mesh:");
    l!(s, "    roles:");
    l!(s, "      bootstrap: true");
    l!(s, "      gateway: false");
    l!(s, "    realm: io.macula");
    l!(
        s,
        "    bootstrap_peers: [quic://203.0.113.10:4433, quic://203.0.113.11:4433]"
    );
    l!(s, "    tls_mode: production");
    l!(s, "    advertise_address: 203.0.113.20:4433");
    l!(s, "  install:");
    l!(s, "    device: /dev/sda");
    l!(s, "    force: true");
    l!(s, "  live:");
    l!(s, "    persistence: true");
    l!(s, "    persistence_size: 16G");
    l!(s, "k3s:");
    l!(s, "  role: agent");
    l!(s, "  server_url: https://10.0.0.2:6443");
    l!(s, "  token: K10benchmarktoken::server:secret");
    l!(s, "  args:");
    l!(s, "    - agent");
    l!(s, "    - --node-ip=10.0.0.10");
    l!(s, "  taints:");
    l!(s, "    - dedicated=edge:NoSchedule");
    l!(s, "ssh_authorized_keys:");
    l!(
        s,
        "  - ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQbench ops@example"
    );
    l!(s, "write_files:");
    for i in 0..NODE_FILES {
        l!(s, "  - path: /etc/maculaos/app-{i:02}.conf");
        l!(s, "    content: |");
        l!(s, "      # generated for app {i}");
        l!(s, "      listen = 0.0.0.0:{}", 8000 + i);
        l!(s, "    permissions: \"0640\"");
        l!(s, "    owner: root:root");
    }
    l!(s, "run_cmd:");
    for i in 0..8 {
        l!(s, "  - echo step {i} >> /run/bench-steps");
    }
    l!(s, "  - [systemctl, restart, k3s-agent]");
    l!(s, "boot_cmd:");
    l!(s, "  - [modprobe, dummy]");
    s
}

/// `/var/lib/maculaos/config.d/NN-*.yaml`: maps that merge into the node's
/// config key by key.
fn fragments() -> Vec<(String, String)> {
    let mut labels = String::new();
    l!(labels, "# config.d/10-labels.yaml: the site's labels");
    l!(labels, "maculaos:");
    l!(labels, "  labels:");
    for i in (0..120).step_by(2) {
        l!(labels, "    site.example.com/label-{i:03}: override-{i}");
    }
    for i in 0..30 {
        l!(labels, "    rack.example.com/slot-{i:02}: slot-{i}");
    }
    l!(labels, "k3s:");
    l!(labels, "  labels:");
    for i in 0..20 {
        l!(
            labels,
            "    topology.example.com/zone-{i:02}: zone-{}",
            i % 4
        );
    }

    let mut sysctl = String::new();
    l!(
        sysctl,
        "# config.d/20-tuning.yaml: kernel tuning and proxies"
    );
    l!(sysctl, "maculaos:");
    l!(sysctl, "  sysctl:");
    for i in 0..50 {
        l!(sysctl, "    net.core.bench_{i:02}: \"{}\"", 1000 + i);
    }
    for i in (0..100).step_by(5) {
        l!(sysctl, "    net.ipv4.conf.eth{i}.rp_filter: \"2\"");
    }
    l!(sysctl, "  environment:");
    for i in 0..20 {
        l!(
            sysctl,
            "    PROXY_SETTING_{i:02}: http://proxy-{i}.example.com:3128"
        );
    }

    let mut ops = String::new();
    l!(ops, "# config.d/30-ops.yaml: updates, time and extra files");
    l!(ops, "maculaos:");
    l!(ops, "  ntp:");
    l!(ops, "    servers: [ntp1.example.com, ntp2.example.com]");
    l!(ops, "  upgrade:");
    l!(ops, "    channel: beta");
    l!(ops, "    auto_apply: false");
    l!(ops, "    url: https://updates.example.com/os/");
    l!(ops, "  environment:");
    for i in 0..30 {
        l!(ops, "    OPS_FLAG_{i:02}: \"{}\"", i % 2 == 0);
    }
    l!(ops, "  labels:");
    for i in 0..30 {
        l!(ops, "    ops.example.com/team-{i:02}: team-{}", i % 5);
    }
    l!(ops, "  mesh:");
    l!(ops, "    stun_port: 3478");
    l!(ops, "    turn_port: 3479");

    vec![
        ("/var/lib/maculaos/config.d/10-labels.yaml".into(), labels),
        ("/var/lib/maculaos/config.d/20-tuning.yaml".into(), sysctl),
        ("/var/lib/maculaos/config.d/30-ops.yaml".into(), ops),
    ]
}

fn cmdline() -> String {
    format!(
        "BOOT_IMAGE=/boot/vmlinuz root=LABEL=MACULA_A ro quiet console=ttyS0 \
         maculaos.slot=A maculaos.mode=disk maculaos.hostname=edge-bench-01 \
         maculaos.labels.bootsrc=cmdline maculaos.sysctl.vm/dirty_ratio=15 \
         maculaos.environment.BOOT_SOURCE=cmdline maculaos.install.reboot \
         maculaos.dns_nameservers=[1.1.1.1,9.9.9.9] \
         maculaos.ssh_authorized_keys=ssh-ed25519%20{KEY}x%20boot@example"
    )
}

/// Every source as text, in merge order.
struct Inputs {
    files: Vec<(String, String)>,
    cmdline: String,
}

impl Inputs {
    fn new() -> Inputs {
        let mut files = vec![
            ("/usr/lib/maculaos/config.yaml".to_string(), defaults()),
            ("/var/lib/maculaos/config.yaml".to_string(), node_config()),
        ];
        files.extend(fragments());
        Inputs {
            files,
            cmdline: cmdline(),
        }
    }

    fn lines(&self) -> usize {
        self.files
            .iter()
            .map(|(_, t)| t.lines().count())
            .sum::<usize>()
            + self.cmdline.lines().count()
    }
}

/// Time spent in each step of one read.
#[derive(Default, Clone, Copy)]
struct Phases {
    parse: Duration,
    merge: Duration,
    deserialize: Duration,
    check: Duration,
}

impl Phases {
    fn total(&self) -> Duration {
        self.parse + self.merge + self.deserialize + self.check
    }
    fn add(&mut self, o: &Phases) {
        self.parse += o.parse;
        self.merge += o.merge;
        self.deserialize += o.deserialize;
        self.check += o.check;
    }
}

/// One full read: parse all, merge, deserialize, check.
fn read_all(inputs: &Inputs, t: &mut Phases) -> Result<Config, Vec<Problem>> {
    let start = Instant::now();
    let mut sources: Vec<Source> = Vec::with_capacity(inputs.files.len() + 1);
    let mut problems = Vec::new();
    for (name, text) in &inputs.files {
        match parse(name, text, Format::Maculaos) {
            Ok(s) => sources.push(s),
            Err(p) => problems.push(p),
        }
    }
    match from_cmdline(&Cmdline::parse(&inputs.cmdline)) {
        Ok(s) => sources.push(s),
        Err(p) => problems.push(p),
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let parsed = Instant::now();
    t.parse = parsed - start;
    let (value, prov) = merge(&sources);
    let merged = Instant::now();
    t.merge = merged - parsed;
    let config = Config::deserialize(value)
        .map_err(|e| vec![Problem::from_yaml("merged configuration", &e)])?;
    let read = Instant::now();
    t.deserialize = read - merged;
    let problems = check(&config, &prov);
    t.check = read.elapsed();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> ExitCode {
    let iterations: u32 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 200,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: bench_parse [ITERATIONS > 0]");
            return ExitCode::from(2);
        }
    };
    let inputs = Inputs::new();

    // Once to check the result: every source valid and everything merged.
    let mut phases = Phases::default();
    let config = match read_all(&inputs, &mut phases) {
        Ok(c) => c,
        Err(problems) => {
            eprint!(
                "the benchmark configuration has problems:\n{}",
                render(&problems)
            );
            return ExitCode::FAILURE;
        }
    };
    let expect = [
        // Fragments override some keys and add others; the command line adds one.
        (
            "labels",
            config.node_labels().len(),
            2 + 20 + NODE_LABELS + 30 + 20 + 30 + 1,
        ),
        (
            "sysctls",
            config.maculaos.sysctl.len(),
            15 + NODE_SYSCTLS + 2 + 50 + 1,
        ),
        (
            "environment entries",
            config.maculaos.environment.len(),
            NODE_ENV + 20 + 30 + 1,
        ),
        (
            "interfaces",
            config.network().interfaces.len(),
            NODE_INTERFACES,
        ),
        ("write_files", config.write_files.len(), NODE_FILES),
    ];
    let mut wrong = false;
    for (what, got, want) in expect {
        if got != want {
            eprintln!("merged configuration: {got} {what}, expected {want}");
            wrong = true;
        }
    }
    if wrong {
        return ExitCode::FAILURE;
    }

    let mut sum = Phases::default();
    let mut min = Duration::MAX;
    for _ in 0..iterations {
        let r = read_all(black_box(&inputs), &mut phases);
        if r.is_err() {
            eprintln!("a problem appeared during the run");
            return ExitCode::FAILURE;
        }
        black_box(r.ok());
        sum.add(&phases);
        min = min.min(phases.total());
    }
    let mean = |d: Duration| us(d) / f64::from(iterations);
    println!(
        "bench_parse: {} lines in {} sources, {iterations} iterations",
        inputs.lines(),
        inputs.files.len() + 1
    );
    println!(
        "parse+merge+deserialize+check: mean {:.1} µs, min {:.1} µs per iteration",
        mean(sum.total()),
        us(min)
    );
    println!(
        "  mean per step: parse {:.1} µs, merge {:.1} µs, deserialize {:.1} µs, check {:.1} µs",
        mean(sum.parse),
        mean(sum.merge),
        mean(sum.deserialize),
        mean(sum.check)
    );
    ExitCode::SUCCESS
}
