//! The service manager's commands (guide "Service Deployment"):
//! `maculaos deploy REF|FILE`, `services`, `service status NAME`, `stop`,
//! `start`, `restart`, `remove`. A deployed service is a definition in
//! `config.d/70-service-NAME.yaml`; `maculaos apply` makes its unit (see
//! `maculaos_apply::services`), so what `deploy` did survives reboots,
//! updates and rollbacks like the rest of the configuration.

use anyhow::{bail, Context, Result};
use maculaos_config::values::{EnvName, HttpUrl, ImageRef, PortMap, ServiceName, Size, VolumeMap};
use maculaos_config::{CheckType, PullPolicy, RestartPolicy, Service, ServiceHealth};
use maculaos_health::{latest_results, State};
use maculaos_runner::Cmd;
use maculaos_services::{container_name, stopped_marker, unit_name, STOPPED_DIR};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Where `deploy` writes definitions.
const CONFIG_D: &str = "/var/lib/maculaos/config.d";

/// How long `deploy`, `start` and `restart` wait for the container to run.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long it must run without a restart to count as running.
const STEADY: Duration = Duration::from_secs(3);

#[derive(clap::Args)]
pub struct DeployArgs {
    /// An OCI image reference (`ghcr.io/mycompany/myservice:latest`), or an
    /// OCI or docker archive file (`.tar`, `.tar.gz`) to load.
    target: String,
    /// The service's name (default: the image's name).
    #[arg(long)]
    name: Option<ServiceName>,
    /// Publish a port: HOST:CONTAINER[/udp] (repeat for more).
    #[arg(short, long = "port", value_name = "HOST:CONTAINER")]
    ports: Vec<PortMap>,
    /// Mount a directory under /var: HOST_DIR:CONTAINER_DIR[:ro] (repeat
    /// for more); a bare CONTAINER_DIR mounts the service's own data
    /// directory, /var/lib/maculaos/NAME.
    #[arg(short, long = "volume", value_name = "[HOST_DIR:]DIR")]
    volumes: Vec<String>,
    /// An environment variable KEY=VALUE (repeat for more). Not for
    /// secrets: a command line shows in the process list and in sudo's log;
    /// use --env-file for those.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Environment variables from a file of KEY=VALUE lines (blank lines
    /// and lines starting with # skipped): the place for secrets.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// Memory limit (256M, 1G).
    #[arg(long)]
    memory: Option<Size>,
    /// CPU limit in cores (0.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// When systemd starts it again.
    #[arg(long, value_enum, default_value = "always")]
    restart: Restart,
    /// Health check: an HTTP GET of this URL on the node must answer 2xx or
    /// 3xx (http://127.0.0.1:8080/health). The health agent restarts the
    /// service when it fails.
    #[arg(long, value_name = "URL", group = "check")]
    health_url: Option<HttpUrl>,
    /// Health check: this port on the node (127.0.0.1) must accept a TCP connection.
    #[arg(long, value_name = "PORT", group = "check")]
    health_tcp: Option<u16>,
    /// Health check: a command run in the container must exit 0 (its words
    /// split at spaces; for quoting, declare the service in config.yaml).
    #[arg(long, value_name = "COMMAND", group = "check")]
    health_cmd: Option<String>,
    /// How often the health check runs (30s).
    #[arg(long, value_name = "DURATION", requires = "check", value_parser = maculaos_config::values::Duration::parse)]
    health_interval: Option<maculaos_config::values::Duration>,
    /// The command to run instead of the image's (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Restart {
    Always,
    OnFailure,
    No,
}

/// The health check of `deploy`'s flags, if one is asked for.
fn health_of(args: &DeployArgs) -> Option<ServiceHealth> {
    let (kind, url, port, command) = if let Some(u) = &args.health_url {
        (CheckType::Http, Some(u.clone()), None, Vec::new())
    } else if let Some(p) = args.health_tcp {
        (CheckType::Tcp, None, Some(p), Vec::new())
    } else {
        let words = args
            .health_cmd
            .as_deref()?
            .split_whitespace()
            .map(str::to_string)
            .collect();
        (CheckType::Command, None, None, words)
    };
    let mut h = ServiceHealth::new(kind);
    h.url = url;
    h.port = port;
    h.command = command;
    if let Some(i) = args.health_interval {
        h.interval = i;
    }
    Some(h)
}

/// `--volume`s, a bare container directory given the service's data
/// directory (the guide's "Persistent Data" place).
fn volumes_of(args: &[String], name: &ServiceName) -> Result<Vec<VolumeMap>> {
    let own = format!("/var/lib/maculaos/{name}");
    let bare = args.iter().filter(|v| !v.contains(':')).count();
    // MaculaOS's own state: never a container's by default.
    const OURS: &[&str] = &[
        "credentials",
        "datasource",
        "mesh",
        "nats",
        "run",
        "services",
        "ssh",
        "updates",
        "backups",
    ];
    if bare > 0 && OURS.contains(&name.as_str()) {
        bail!(
            "--volume: {own} holds MaculaOS's own state, not a service's data; \
             give HOST_DIR:DIR, or deploy under another --name"
        );
    }
    if bare > 1 {
        bail!(
            "--volume: only one bare directory can take the service's data directory {own}; \
             give HOST_DIR:DIR for the others"
        );
    }
    args.iter()
        .map(|v| {
            let full = if v.contains(':') {
                v.clone()
            } else {
                format!("{own}:{v}")
            };
            full.parse()
                .map_err(|e: String| anyhow::anyhow!("--volume {v}: {e}"))
        })
        .collect()
}

/// The file `deploy` writes for `name`.
fn definition_path(name: &str) -> PathBuf {
    Path::new(CONFIG_D).join(format!("70-service-{name}.yaml"))
}

/// Whether `target` names a file rather than an image reference.
fn is_archive(target: &str) -> bool {
    target.starts_with(['/', '.'])
        || [".tar", ".tar.gz", ".tgz"]
            .iter()
            .any(|s| target.ends_with(s))
}

/// A service name from an image reference: its last path part, before the
/// tag or digest, in the characters a name may have.
fn name_from_image(image: &str) -> Option<ServiceName> {
    let last = image.rsplit('/').next().unwrap_or(image);
    let base = last.split(['@', ':']).next().unwrap_or(last);
    let clean: String = base
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    clean.trim_matches('-').parse().ok()
}

/// The image name `podman load` reported (`Loaded image: NAME`, or several
/// after `Loaded image(s): `).
fn loaded_image(out: &str) -> Option<String> {
    out.lines().rev().find_map(|l| {
        let rest = l
            .strip_prefix("Loaded image(s): ")
            .or_else(|| l.strip_prefix("Loaded image: "))?;
        rest.split(',')
            .next()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
}

/// Load an archive into podman's store; the image's reference.
fn load_archive(file: &Path) -> Result<String> {
    if !file.is_file() {
        bail!(
            "{}: no such file (an OCI or docker archive, .tar or .tar.gz)",
            file.display()
        );
    }
    eprintln!("loading {} into podman's store", file.display());
    let out = Cmd::new("podman")
        .args(["load", "--quiet", "--input"])
        .arg(file)
        .quiet()
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "{} is not an image archive podman can load (OCI or docker, .tar or .tar.gz): {}; nothing was changed",
                file.display(),
                one_line(&e.to_string())
            )
        })?;
    let image = loaded_image(&out).with_context(|| {
        format!(
            "podman loaded {} but named no image:\n{out}",
            file.display()
        )
    })?;
    if image.starts_with("sha256:") {
        bail!(
            "{}: the archive's image has no name; tag it when you make the archive \
             (podman save IMAGE:TAG), or load it and tag it yourself",
            file.display()
        );
    }
    Ok(image)
}

/// The last meaningful line of an error, for a one-line message.
fn one_line(s: &str) -> String {
    s.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(s)
        .to_string()
}

/// Pull `image`, podman's progress shown as it goes.
fn pull(image: &str) -> Result<()> {
    eprintln!("pulling {image}");
    let status = std::process::Command::new("podman")
        .args(["pull", image])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running podman (is the image's podman missing?)")?;
    if !status.success() {
        bail!(
            "cannot pull {image} (podman's reason is above: a wrong reference, a registry \
             that cannot be reached, or one that wants credentials); nothing was changed"
        );
    }
    Ok(())
}

/// A port on the node that something other than `own` (the service being
/// redeployed) listens on.
fn port_taken(port: &PortMap, own: Option<&Service>) -> Option<String> {
    if own.is_some_and(|s| s.ports.contains(port)) {
        return None;
    }
    let (addr, number, proto) = port.host();
    let addr = addr.unwrap_or("0.0.0.0");
    let free = match proto {
        "udp" => std::net::UdpSocket::bind((addr, number)).is_ok(),
        _ => std::net::TcpListener::bind((addr, number)).is_ok(),
    };
    (!free).then(|| {
        format!(
            "port {number}/{proto} is already in use on this node (`ss -lntup` shows by what); \
             choose another with --port; nothing was changed"
        )
    })
}

/// The configured services, from the running configuration.
fn configured() -> BTreeMap<ServiceName, Service> {
    maculaos_config::load(&maculaos_config::Paths::system())
        .config
        .services
}

/// Run `maculaos apply`; its lines are shown.
pub(crate) fn apply() -> Result<bool> {
    let me = std::env::current_exe().unwrap_or_else(|_| "/usr/bin/maculaos".into());
    let status = std::process::Command::new(me)
        .arg("apply")
        .status()
        .context("running maculaos apply")?;
    Ok(status.success())
}

/// Wait until `name`'s unit runs and keeps running (active, and no restart
/// for [`STEADY`]: a container that crashes at once is not "running"); an
/// error with its last log lines when it fails or does not start in time.
fn wait_running(name: &ServiceName) -> Result<()> {
    let unit = unit_name(name);
    let started = Instant::now();
    let mut steady_since: Option<(Instant, u64)> = None;
    loop {
        let state = unit_state(&unit);
        match (state.active.as_str(), steady_since) {
            ("active", Some((since, restarts))) if restarts == state.restarts => {
                if since.elapsed() >= STEADY {
                    return Ok(());
                }
            }
            ("active", _) => steady_since = Some((Instant::now(), state.restarts)),
            ("failed", _) => break,
            _ => steady_since = None,
        }
        if started.elapsed() > START_TIMEOUT {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = Cmd::new("journalctl")
        .args(["--no-pager", "-n", "15", "-u", &unit])
        .quiet()
        .output()
        .unwrap_or_default();
    bail!(
        "{name} did not start ({}): its last log lines:\n{log}",
        unit_state(&unit).active
    )
}

pub fn deploy(args: &DeployArgs) -> Result<ExitCode> {
    let (image, pull_policy) = if is_archive(&args.target) {
        (load_archive(Path::new(&args.target))?, PullPolicy::Never)
    } else {
        let image: ImageRef = args
            .target
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        pull(image.as_str())?;
        (image.to_string(), PullPolicy::Missing)
    };
    let name = match &args.name {
        Some(n) => n.clone(),
        None => name_from_image(&image).with_context(|| {
            format!("cannot make a service name from {image}: give one with --name")
        })?,
    };
    let mut env = BTreeMap::new();
    let from_file = match &args.env_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading --env-file {}", f.display()))?,
        None => String::new(),
    };
    let lines = from_file
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| ("--env-file", l))
        .chain(args.env.iter().map(|e| ("--env", e.as_str())));
    for (flag, e) in lines {
        // The value is never repeated in an error: it may be a secret.
        let (k, v) = e
            .split_once('=')
            .with_context(|| format!("{flag}: a line without '=': write KEY=VALUE"))?;
        let k: EnvName = k
            .trim()
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{flag}: {e}"))?;
        env.insert(k, v.to_string());
    }
    let svc = Service {
        image: image.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        pull: pull_policy,
        command: args.command.clone(),
        env,
        ports: args.ports.clone(),
        volumes: volumes_of(&args.volumes, &name)?,
        memory: args.memory.clone(),
        cpus: args.cpus,
        restart: match args.restart {
            Restart::Always => RestartPolicy::Always,
            Restart::OnFailure => RestartPolicy::OnFailure,
            Restart::No => RestartPolicy::No,
        },
        health: health_of(args),
    };
    let problems = maculaos_services::problems(&name, &svc);
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    let elsewhere = declared_elsewhere(name.as_str());
    if !elsewhere.is_empty() {
        bail!(
            "services.{name} is declared in {}: change it there, or deploy under another --name; nothing was changed",
            elsewhere.join(", ")
        );
    }
    let before = configured();
    let own = before.get(&name);
    if let Some(why) = svc.ports.iter().find_map(|p| port_taken(p, own)) {
        bail!("{why}");
    }
    let mut doc = BTreeMap::new();
    doc.insert(name.clone(), svc.clone());
    let yaml = serde_yaml_ng::to_string(&serde_json::json!({ "services": doc }))?;
    let path = definition_path(name.as_str());
    let text =
        format!("# Written by `maculaos deploy`; `maculaos remove {name}` takes it away.\n{yaml}");
    let old = std::fs::read_to_string(&path).ok();
    write_definition(&path, &text)?;
    // The whole configuration must take it: a problem anywhere would make
    // apply fall back to the last good one, without this service.
    let loaded = maculaos_config::load(&maculaos_config::Paths::system());
    if loaded.using != maculaos_config::Using::Current
        || loaded.config.services.get(&name) != Some(&svc)
    {
        match &old {
            Some(text) => write_definition(&path, text)?,
            None => std::fs::remove_file(&path)
                .with_context(|| format!("removing {}", path.display()))?,
        }
        let why: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
        bail!(
            "the configuration does not take services.{name}{}; {} is as it was",
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", why.join("; "))
            },
            path.display()
        );
    }
    let _ = std::fs::remove_file(Path::new(&stopped_marker(name.as_str())));
    println!("{}: services.{name} written", path.display());
    if !apply()? {
        eprintln!("maculaos apply reported errors (above)");
    }
    // Started afresh whatever apply saw: the same reference may name a new
    // image (a new `latest`, an archive loaded again), and a unit that had
    // failed is given a clean slate.
    let unit = unit_name(&name);
    let _ = Cmd::new("systemctl")
        .args(["reset-failed", &unit])
        .quiet()
        .run();
    if let Err(e) = Cmd::new("systemctl").args(["restart", &unit]).quiet().run() {
        eprintln!("systemctl restart {unit}: {}", one_line(&e.to_string()));
    }
    wait_running(&name).with_context(|| {
        format!("it stays configured: fix it and deploy again, or `maculaos remove {name}`")
    })?;
    println!("{name} runs ({image}); `maculaos services` lists it");
    Ok(ExitCode::SUCCESS)
}

/// The configuration files other than `deploy`'s own that declare
/// `services.NAME` (or part of it), read one by one: the merged view only
/// names the last file to set each key, and after a broken edit anywhere
/// it is the last good configuration's.
fn declared_elsewhere(name: &str) -> Vec<String> {
    let (sources, _) = maculaos_config::load::read_sources(&maculaos_config::Paths::system());
    let own = definition_path(name);
    let mut out: Vec<String> = sources
        .iter()
        .filter(|src| Path::new(&src.name) != own)
        .filter(|src| {
            src.value
                .get("services")
                .and_then(|s| s.get(name))
                .is_some()
        })
        .map(|src| src.name.clone())
        .collect();
    out.dedup();
    out
}

/// Write `text` to `path` (0600: environment values may be secrets).
pub(crate) fn write_definition(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    let tmp = path.with_extension("yaml.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// What systemd says of a unit.
#[derive(Debug, Default)]
struct UnitState {
    active: String,
    sub: String,
    restarts: u64,
    since_monotonic_us: u64,
}

fn unit_state(unit: &str) -> UnitState {
    let out = Cmd::new("systemctl")
        .args([
            "show",
            "-p",
            "ActiveState,SubState,NRestarts,ActiveEnterTimestampMonotonic",
            unit,
        ])
        .quiet()
        .output()
        .unwrap_or_default();
    let mut st = UnitState::default();
    for l in out.lines() {
        match l.split_once('=') {
            Some(("ActiveState", v)) => st.active = v.to_string(),
            Some(("SubState", v)) => st.sub = v.to_string(),
            Some(("NRestarts", v)) => st.restarts = v.parse().unwrap_or(0),
            Some(("ActiveEnterTimestampMonotonic", v)) => {
                st.since_monotonic_us = v.parse().unwrap_or(0)
            }
            _ => {}
        }
    }
    st
}

/// One service as `maculaos services` shows it.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    image: String,
    /// The image's ID podman runs (sha256), when it runs.
    image_id: Option<String>,
    /// running, stopped (by `maculaos stop`), starting, failed, inactive.
    state: String,
    uptime_s: Option<u64>,
    restarts: u64,
    ports: Vec<String>,
    /// healthy, unhealthy, "not checked" (not running, or no result yet),
    /// or "-" (no `health` check).
    health: String,
    /// The check's latest message.
    health_message: Option<String>,
    /// Whether the realm finds it (`maculaos mesh discover NAME`), or why not.
    discovery: String,
}

fn uptime_now_us() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1e6) as u64)
        .unwrap_or(0)
}

/// A unit's state in the words of `maculaos services`.
fn state_word(st: &UnitState, stopped: bool) -> &'static str {
    // A stop can leave the unit failed (a container that ignores SIGTERM
    // is killed): the operator's stop is what counts then.
    match (st.active.as_str(), stopped) {
        ("active", _) => "running",
        ("activating", _) if st.sub == "auto-restart" => "restarting",
        ("activating", _) | ("reloading", _) => "starting",
        (_, true) => "stopped",
        ("failed", _) => "failed",
        _ => "inactive",
    }
}

/// An embedded service the configuration switches on (`metrics`), as a
/// row: its Debian unit for an image, its ports, its built-in check.
fn embedded_row(e: &maculaos_embedded::Embedded, seen: &Seen) -> Row {
    let st = unit_state(e.unit);
    let state = state_word(&st, false);
    let (health, health_message) = health_word(seen.results.get(e.name));
    Row {
        name: e.name.to_string(),
        image: format!("built in: {}", e.unit.trim_end_matches(".service")),
        image_id: None,
        state: state.to_string(),
        uptime_s: (state == "running" && st.since_monotonic_us > 0)
            .then(|| uptime_now_us().saturating_sub(st.since_monotonic_us) / 1_000_000),
        restarts: st.restarts,
        ports: e.ports.iter().map(|p| p.port.to_string()).collect(),
        health,
        health_message,
        discovery: format!("not announced: built in ({})", e.key),
    }
}

/// What the health agent last found of `name`'s check.
fn health_of_row(
    name: &ServiceName,
    svc: &Service,
    results: &BTreeMap<String, (State, String)>,
) -> (String, Option<String>) {
    if svc.health.is_none() {
        return ("-".into(), None);
    }
    health_word(results.get(&maculaos_services::check_name(name.as_str())))
}

/// A check's latest result in the words of `maculaos services`.
fn health_word(result: Option<&(State, String)>) -> (String, Option<String>) {
    match result {
        Some((State::Pass, m)) => ("healthy".into(), Some(m.clone())),
        Some((State::Fail, m)) => ("unhealthy".into(), Some(m.clone())),
        Some((_, m)) => ("not checked".into(), Some(m.clone())),
        None => (
            "not checked".into(),
            Some("the health agent has not run it yet".into()),
        ),
    }
}

/// What `services` and `service status` read once for every row: the
/// health agent's results, and the realm services are announced in.
struct Seen {
    results: BTreeMap<String, (State, String)>,
    mesh: Result<String, String>,
}

impl Seen {
    fn now(config: &maculaos_config::Config) -> Seen {
        Seen {
            results: latest_results(&maculaos_config::Paths::system()),
            mesh: mesh_of(config),
        }
    }
}

fn row(name: &ServiceName, svc: &Service, seen: &Seen) -> Row {
    let unit = unit_name(name);
    let st = unit_state(&unit);
    let stopped = Path::new(&stopped_marker(name.as_str())).exists();
    let state = state_word(&st, stopped);
    let image_id = (state == "running")
        .then(|| {
            Cmd::new("podman")
                .args(["inspect", "--format", "{{.Image}}", &container_name(name)])
                .quiet()
                .output()
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .flatten();
    let (health, health_message) = health_of_row(name, svc, &seen.results);
    Row {
        name: name.to_string(),
        image: svc.image.to_string(),
        image_id,
        state: state.to_string(),
        uptime_s: (state == "running" && st.since_monotonic_us > 0)
            .then(|| uptime_now_us().saturating_sub(st.since_monotonic_us) / 1_000_000),
        restarts: st.restarts,
        ports: svc.ports.iter().map(|p| p.to_string()).collect(),
        health,
        health_message,
        discovery: discovery(name, state == "running", &seen.mesh),
    }
}

/// The realm this node's meshd announces services in, or why none (read
/// once for all the rows).
fn mesh_of(config: &maculaos_config::Config) -> Result<String, String> {
    if !config.maculaos.nats.enabled {
        return Err("the NATS server is disabled".into());
    }
    let realm = config
        .maculaos
        .mesh
        .realm
        .clone()
        .ok_or("no mesh realm configured")?;
    if !maculaos_mesh::state::State::under(Path::new("/")).joined(&realm) {
        return Err(format!("this node has not joined realm {realm} yet"));
    }
    if unit_state("maculaos-meshd.service").active != "active" {
        return Err("maculaos-meshd is not running".into());
    }
    Ok(realm)
}

fn discovery(name: &ServiceName, running: bool, mesh: &Result<String, String>) -> String {
    match (mesh, running) {
        (Ok(realm), true) => format!(
            "announced on {}",
            maculaos_mesh::client::discover_subject(realm, name.as_str())
        ),
        (Ok(_), false) => "not announced: it does not run".into(),
        (Err(why), _) => format!("not announced: {why}"),
    }
}

/// What maculaos-meshd answers for service `name` of this node: `None`
/// unless it is configured here and runs.
pub fn offer(name: &str, node: &str) -> Option<maculaos_mesh::client::Offer> {
    let (n, svc) = configured().into_iter().find(|(n, _)| n.as_str() == name)?;
    if unit_state(&unit_name(&n)).active != "active" {
        return None;
    }
    Some(maculaos_mesh::client::Offer {
        node: node.to_string(),
        service: n.to_string(),
        image: svc.image.to_string(),
        ports: svc.ports.iter().map(|p| p.to_string()).collect(),
        host: format!("{node}.local"),
    })
}

fn human_uptime(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

pub fn list(json: bool) -> Result<ExitCode> {
    let config = maculaos_config::load(&maculaos_config::Paths::system()).config;
    let seen = Seen::now(&config);
    let mut rows: Vec<Row> = config
        .services
        .iter()
        .map(|(n, s)| row(n, s, &seen))
        .collect();
    let deployed = rows.len();
    rows.extend(
        maculaos_embedded::enabled(&config)
            .iter()
            .map(|e| embedded_row(e, &seen)),
    );
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no services: `maculaos deploy IMAGE|FILE` adds one");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<10} {:<11} {:>8} {:>8}  {:<18} IMAGE",
        "NAME", "STATE", "HEALTH", "UPTIME", "RESTARTS", "PORTS"
    );
    for r in &rows {
        println!(
            "{:<16} {:<10} {:<11} {:>8} {:>8}  {:<18} {}{}",
            r.name,
            r.state,
            r.health,
            r.uptime_s.map(human_uptime).unwrap_or_else(|| "-".into()),
            r.restarts,
            if r.ports.is_empty() {
                "-".into()
            } else {
                r.ports.join(",")
            },
            r.image,
            r.image_id
                .as_deref()
                .map(|id| format!(" ({})", &id[..id.len().min(12)]))
                .unwrap_or_default()
        );
    }
    if let Some(r) = rows.first().filter(|_| deployed > 0) {
        if let Some(why) = r.discovery.strip_prefix("not announced: ") {
            if !why.contains("does not run") {
                println!("(not announced on the mesh: {why})");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The configured service `name`, or an error that says what there is.
fn find(name: &str) -> Result<(ServiceName, Service)> {
    let all = configured();
    all.iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(n, s)| (n.clone(), s.clone()))
        .with_context(|| {
            let names: Vec<&str> = all.keys().map(|n| n.as_str()).collect();
            if names.is_empty() {
                format!("no service {name}: none is deployed (`maculaos deploy IMAGE|FILE`)")
            } else {
                format!("no service {name}: there are {}", names.join(", "))
            }
        })
}

pub fn status(name: &str, json: bool) -> Result<ExitCode> {
    let (n, svc) = find(name)?;
    let config = maculaos_config::load(&maculaos_config::Paths::system()).config;
    let r = row(&n, &svc, &Seen::now(&config));
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("Service:   {}", r.name);
        println!("State:     {}", r.state);
        match &r.health_message {
            Some(m) => println!("Health:    {} ({m})", r.health),
            None => println!("Health:    - (no health check)"),
        }
        println!("Image:     {}", r.image);
        if let Some(id) = &r.image_id {
            println!("Image ID:  {id}");
        }
        println!(
            "Uptime:    {}",
            r.uptime_s.map(human_uptime).unwrap_or_else(|| "-".into())
        );
        println!("Restarts:  {}", r.restarts);
        println!(
            "Ports:     {}",
            if r.ports.is_empty() {
                "-".into()
            } else {
                r.ports.join(", ")
            }
        );
        for v in &svc.volumes {
            println!("Volume:    {v}");
        }
        println!("Unit:      {}", unit_name(&n));
        println!("Discovery: {}", r.discovery);
    }
    Ok(if r.state == "running" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `maculaos stop|start|restart NAME`.
pub fn control(verb: &str, name: &str) -> Result<ExitCode> {
    let (n, _) = find(name)?;
    let unit = unit_name(&n);
    let marker = PathBuf::from(stopped_marker(n.as_str()));
    if verb == "stop" {
        std::fs::create_dir_all(STOPPED_DIR).with_context(|| format!("making {STOPPED_DIR}"))?;
        std::fs::write(&marker, b"stopped by maculaos stop\n")
            .with_context(|| format!("writing {}", marker.display()))?;
    } else {
        let _ = std::fs::remove_file(&marker);
    }
    Cmd::new("systemctl")
        .args([verb, &unit])
        .run()
        .map_err(|e| anyhow::anyhow!("systemctl {verb} {unit}: {}", one_line(&e.to_string())))?;
    if verb == "stop" {
        println!("{n} is stopped, and stays stopped across reboots until `maculaos start {n}`");
    } else {
        wait_running(&n)?;
        println!("{n} runs");
    }
    Ok(ExitCode::SUCCESS)
}

/// `maculaos remove NAME`: the definition `deploy` wrote goes, and apply
/// stops and removes the unit; the image and the volumes' data stay.
pub fn remove(name: &str) -> Result<ExitCode> {
    let (n, _) = find(name)?;
    let path = definition_path(n.as_str());
    let elsewhere = declared_elsewhere(n.as_str());
    if !path.exists() || !elsewhere.is_empty() {
        bail!(
            "services.{n} is declared in {}: remove it there; nothing was changed",
            elsewhere.join(", ")
        );
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    let _ = std::fs::remove_file(Path::new(&stopped_marker(n.as_str())));
    println!("{}: removed", path.display());
    let ok = apply()?;
    println!("{n} is removed; its image and its volumes' data stay (podman image prune removes unused images)");
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_volume_is_the_services_data_directory() {
        let name: ServiceName = "web".parse().unwrap();
        let v = volumes_of(&["/data".into(), "/var/lib/x:/x:ro".into()], &name).unwrap();
        assert_eq!(v[0].to_string(), "/var/lib/maculaos/web:/data");
        assert_eq!(v[1].to_string(), "/var/lib/x:/x:ro");
        assert!(volumes_of(&["/a".into(), "/b".into()], &name).is_err());
        assert!(volumes_of(&["/etc:/x".into()], &name).is_err());
        let ssh: ServiceName = "ssh".parse().unwrap();
        assert!(volumes_of(&["/data".into()], &ssh).is_err());
    }

    #[test]
    fn files_and_references_are_told_apart() {
        assert!(is_archive("/path/to/myservice.tar.gz"));
        assert!(is_archive("./web.tar"));
        assert!(is_archive("web.tgz"));
        assert!(!is_archive("ghcr.io/mycompany/myservice:latest"));
        assert!(!is_archive("busybox"));
    }

    #[test]
    fn a_name_comes_from_the_image() {
        let n = |s: &str| name_from_image(s).map(|n| n.to_string());
        assert_eq!(
            n("ghcr.io/mycompany/myservice:latest").as_deref(),
            Some("myservice")
        );
        assert_eq!(n("localhost/My_Web@sha256:abc").as_deref(), Some("my-web"));
        assert_eq!(n("127.0.0.1:5000/web").as_deref(), Some("web"));
    }

    #[test]
    fn the_loaded_image_is_read_from_podmans_answer() {
        assert_eq!(
            loaded_image("Loaded image: localhost/web:1\n").as_deref(),
            Some("localhost/web:1")
        );
        assert_eq!(
            loaded_image("Loaded image(s): localhost/a:1,localhost/b:2\n").as_deref(),
            Some("localhost/a:1")
        );
        assert_eq!(loaded_image("Getting image source signatures\n"), None);
    }

    #[test]
    fn uptimes_read_short() {
        assert_eq!(human_uptime(5), "5s");
        assert_eq!(human_uptime(125), "2m");
        assert_eq!(human_uptime(3 * 3600 + 120), "3h2m");
        assert_eq!(human_uptime(2 * 86400 + 3600), "2d1h");
    }
}
