//! Where configuration comes from, the order sources are merged in, the
//! checks across keys, and the fall-back to the last good configuration.
//!
//! Order, lowest first (later sources win key by key; maps merge, lists and
//! single values replace, except SSH keys, which add up):
//! 1. image defaults `/usr/lib/maculaos/config.yaml`
//! 2. the node's `/var/lib/maculaos/config.yaml`
//! 3. `/var/lib/maculaos/config.d/*.yaml` in lexical order
//! 4. datasources: NoCloud `meta-data`, then `user-data`, then the `maculaos.config_url` copy
//! 5. the kernel command line (`maculaos.hostname=…`)

use crate::error::Problem;
use crate::schema::{Backup, CheckType, Config, Health, HealthCheck, K3sRole, MeshRole, Watchdog};
use crate::sources::{self, Format, Source};
use crate::values::{HostPort, Hostname};
use maculaos_boot::Cmdline;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Where every file of the configuration lives, under a root (`/` on a node).
#[derive(Debug, Clone, PartialEq)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Paths {
        Paths { root: root.into() }
    }
    /// The running system.
    pub fn system() -> Paths {
        Paths::new("/")
    }
    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    pub fn defaults(&self) -> PathBuf {
        self.at("usr/lib/maculaos/config.yaml")
    }
    pub fn node_config(&self) -> PathBuf {
        self.at("var/lib/maculaos/config.yaml")
    }
    pub fn config_d(&self) -> PathBuf {
        self.at("var/lib/maculaos/config.d")
    }
    /// Copies of the NoCloud drive's files, refreshed at each boot the drive is there.
    pub fn nocloud_dir(&self) -> PathBuf {
        self.at("var/lib/maculaos/datasource/nocloud")
    }
    /// Copy of the configuration fetched from `maculaos.config_url`.
    pub fn url_copy(&self) -> PathBuf {
        self.at("var/lib/maculaos/datasource/url/config.yaml")
    }
    pub fn last_good(&self) -> PathBuf {
        self.at("var/lib/maculaos/last-good.yaml")
    }
    pub fn cmdline(&self) -> PathBuf {
        self.at("proc/cmdline")
    }
    /// Present once the node is configured: the first-boot wizard stays off.
    pub fn configured_flag(&self) -> PathBuf {
        self.at(CONFIGURED_FLAG.trim_start_matches('/'))
    }
    /// Whether an operator gave this node a configuration of its own: a
    /// node config.yaml, a config.d file, a NoCloud drive or a config URL.
    /// The image defaults and the kernel command line (a boot-time tweak,
    /// such as a debug SSH key) do not count: the wizard still runs. The network settings a factory reset kept (`--keep-network`) do not
    /// count either: the node is to be paired again.
    pub fn has_operator_config(&self) -> bool {
        let kept = self.at("var").join(maculaos_boot::reset::KEPT_NETWORK);
        self.node_config().exists()
            || config_d_files(&self.config_d()).iter().any(|f| *f != kept)
            || self.nocloud_dir().join("user-data").exists()
            || self.nocloud_dir().join("meta-data").exists()
            || self.url_copy().exists()
    }
}

/// The first-boot flag of plan §5.2, on the node.
pub const CONFIGURED_FLAG: &str = "/var/lib/maculaos/.configured";

/// Which key came from which source (`maculaos.hostname` → its file).
pub type Provenance = BTreeMap<String, String>;

/// Read every source that exists, in merge order. Sources with errors are
/// left out and their problems returned.
pub fn read_sources(paths: &Paths) -> (Vec<Source>, Vec<Problem>) {
    let mut files: Vec<(PathBuf, Format)> = vec![
        (paths.defaults(), Format::Maculaos),
        (paths.node_config(), Format::Maculaos),
    ];
    files.extend(
        config_d_files(&paths.config_d())
            .into_iter()
            .map(|p| (p, Format::Maculaos)),
    );
    files.push((paths.nocloud_dir().join("meta-data"), Format::MetaData));
    files.push((paths.nocloud_dir().join("user-data"), Format::UserData));
    files.push((paths.url_copy(), Format::UserData));

    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (path, format) in files {
        let name = display_path(paths, &path);
        match fs::read_to_string(&path) {
            Ok(text) => match sources::parse(&name, &text, format) {
                Ok(s) => out.push(s),
                Err(p) => problems.push(p),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) if e.kind() == ErrorKind::PermissionDenied => problems.push(Problem::new(
                name,
                "cannot read it: permission denied (run the command with sudo)",
            )),
            Err(e) => problems.push(Problem::new(name, format!("cannot read it: {e}"))),
        }
    }
    let cmdline = Cmdline::parse(&fs::read_to_string(paths.cmdline()).unwrap_or_default());
    match sources::from_cmdline(&cmdline) {
        Ok(s) => out.push(s),
        Err(p) => problems.push(p),
    }
    (out, problems)
}

/// The path as it is on the node (without a test root in front).
fn display_path(paths: &Paths, p: &Path) -> String {
    match p.strip_prefix(&paths.root) {
        Ok(rel) if paths.root != Path::new("/") => format!("/{}", rel.display()),
        _ => p.display().to_string(),
    }
}

/// `config.d/*.yaml` and `*.yml`, in lexical order.
fn config_d_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Lists that add up across sources instead of replacing: SSH keys.
pub const ACCUMULATE: &[&str] = &["ssh_authorized_keys", "maculaos.ssh.authorized_keys"];

/// Merge sources in order: maps merge key by key, lists of [`ACCUMULATE`]
/// add up, anything else replaces.
pub fn merge(sources: &[Source]) -> (Value, Provenance) {
    let mut out = Mapping::new();
    let mut prov = Provenance::new();
    for s in sources {
        if let Value::Mapping(m) = &s.value {
            merge_map(&mut out, m, "", &s.name, &mut prov);
        }
    }
    (Value::Mapping(out), prov)
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

fn merge_map(dst: &mut Mapping, src: &Mapping, prefix: &str, source: &str, prov: &mut Provenance) {
    for (k, v) in src {
        let path = if prefix.is_empty() {
            key_text(k)
        } else {
            format!("{prefix}.{}", key_text(k))
        };
        match v {
            Value::Mapping(vm) => {
                let slot = dst
                    .entry(k.clone())
                    .or_insert_with(|| Value::Mapping(Mapping::new()));
                if !slot.is_mapping() {
                    *slot = Value::Mapping(Mapping::new());
                    forget_under(prov, &path);
                }
                if let Value::Mapping(dm) = slot {
                    merge_map(dm, vm, &path, source, prov);
                }
            }
            Value::Sequence(items) if ACCUMULATE.contains(&path.as_str()) => {
                // Access granted by one source is not taken away by another.
                let slot = dst
                    .entry(k.clone())
                    .or_insert_with(|| Value::Sequence(Vec::new()));
                let Value::Sequence(have) = slot else {
                    *slot = v.clone();
                    prov.insert(path, source.to_string());
                    continue;
                };
                for item in items {
                    if !have.contains(item) {
                        have.push(item.clone());
                    }
                }
                let entry = prov.entry(path).or_default();
                if !entry.is_empty() {
                    entry.push_str(" + ");
                }
                entry.push_str(source);
            }
            _ => {
                dst.insert(k.clone(), v.clone());
                forget_under(prov, &path);
                prov.insert(path, source.to_string());
            }
        }
    }
}

/// Drop what `prov` knows of `path` and every key below it. The keys below
/// are one range of the sorted map, so this costs no scan of the whole map.
fn forget_under(prov: &mut Provenance, path: &str) {
    prov.remove(path);
    let dot = format!("{path}.");
    let below: Vec<String> = prov
        .range(dot.clone()..)
        .take_while(|(k, _)| k.starts_with(&dot))
        .map(|(k, _)| k.clone())
        .collect();
    for k in below {
        prov.remove(&k);
    }
}

/// The source that set `path` or the nearest key above it.
pub fn source_of<'a>(prov: &'a Provenance, path: &str) -> Option<&'a str> {
    if let Some(s) = prov.get(path) {
        return Some(s);
    }
    let dot = format!("{path}.");
    if let Some((_, s)) = prov.iter().find(|(k, _)| k.starts_with(&dot)) {
        return Some(s);
    }
    let parent = path.rsplit_once('.')?.0;
    source_of(prov, parent)
}

/// Checks that need more than one key, or the whole merged configuration.
pub fn check(config: &Config, prov: &Provenance) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut bad = |path: &str, msg: String| {
        let src = source_of(prov, path).unwrap_or("configuration");
        out.push(Problem::new(src, format!("{path}: {msg}")));
    };
    if config.k3s_role() == K3sRole::Agent
        && (config.k3s.server_url.is_none() || config.k3s.token.is_none())
    {
        bad(
            "k3s",
            "an agent needs `server_url` and `token` to join its server".into(),
        );
    }
    if !config.maculaos.fleet.update.auto_rollback {
        bad(
            "maculaos.fleet.update.auto_rollback",
            "only `true`: a node whose new version fails its health checks always goes back to \
             the version before (boot counting), so nothing keeps a failing version running"
                .into(),
        );
    }
    for (i, iface) in config.network().interfaces.iter().enumerate() {
        if iface.name.is_empty() && iface.mac.is_none() {
            bad(
                &format!("maculaos.network.interfaces.{i}"),
                "give the interface a `name` (or a `mac`)".into(),
            );
        }
        if iface.dhcp == Some(false) && iface.all_addresses().is_empty() {
            bad(
                &format!("maculaos.network.interfaces.{i}"),
                format!(
                    "`{}` has DHCP off and no `address`: it would get no address",
                    iface.name
                ),
            );
        }
    }
    for (i, f) in config.write_files.iter().enumerate() {
        if !f.path.starts_with('/') {
            bad(
                &format!("write_files.{i}.path"),
                format!("`{}` is not an absolute path", f.path),
            );
        }
    }
    if let Some(realm) = &config.maculaos.mesh.realm {
        let ok = realm.split('.').count() >= 2 && Hostname::try_from(realm.clone()).is_ok();
        if !ok {
            bad(
                "maculaos.mesh.realm",
                format!("`{realm}` is not a realm in reverse domain notation, such as io.macula"),
            );
        }
    }
    let nats = &config.maculaos.nats;
    let roles = config.maculaos.mesh.effective_roles();
    let hub = roles
        .iter()
        .find(|r| matches!(r, MeshRole::Bootstrap | MeshRole::Gateway));
    if let (false, Some(r)) = (nats.enabled, hub) {
        bad(
            "maculaos.nats.enabled",
            format!(
                "the {} role needs the NATS server: set `enabled: true` or drop the role",
                r.name()
            ),
        );
    }
    let (host, _) = nats.listen.split();
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    if !loopback {
        bad(
            "maculaos.nats.listen",
            format!(
                "`{}` is not a loopback address: local clients connect without credentials, so \
                 the client port stays on this node (127.0.0.1:4222); other nodes reach it \
                 through the mesh (mutual TLS)",
                nats.listen
            ),
        );
    }
    if nats.cluster.enabled && !roles.contains(&MeshRole::Bootstrap) {
        bad(
            "maculaos.nats.cluster.enabled",
            "cluster routes come with the bootstrap role: set `maculaos.mesh.roles.bootstrap: true`".to_string(),
        );
    }
    if nats.cluster.port == 0 {
        bad("maculaos.nats.cluster.port", "0 is not a port".to_string());
    }
    // The only place maculaos-nats.service may write (ProtectSystem=strict).
    let store = std::path::Path::new(&nats.jetstream.store_dir);
    let inside = store.starts_with("/var/lib/maculaos/nats")
        && !store
            .components()
            .any(|c| c == std::path::Component::ParentDir);
    if !inside {
        bad(
            "maculaos.nats.jetstream.store_dir",
            format!(
                "`{}` is not under /var/lib/maculaos/nats, the only place the NATS server may write",
                nats.jetstream.store_dir
            ),
        );
    }
    for (i, p) in config.maculaos.mesh.bootstrap_peers.iter().enumerate() {
        let rest = p.split_once("://").map_or(p.as_str(), |(_, r)| r);
        let rest = rest.split('/').next().unwrap_or_default();
        let ok = !rest.is_empty()
            && (HostPort::try_from(rest.to_string()).is_ok()
                || Hostname::try_from(rest.to_string()).is_ok()
                || rest.parse::<std::net::IpAddr>().is_ok());
        if !ok {
            bad(
                &format!("maculaos.mesh.bootstrap_peers.{i}"),
                format!("`{p}` is not a host, host:port or URL such as bootstrap.macula.io:4433"),
            );
        }
    }
    for (key, list) in [
        ("maculaos.ntp.servers", &config.maculaos.ntp.servers),
        (
            "maculaos.edge.time_sync.servers",
            &config.maculaos.edge.time_sync.servers,
        ),
    ] {
        for s in list {
            if Hostname::try_from(s.clone()).is_err() && s.parse::<std::net::IpAddr>().is_err() {
                bad(key, format!("`{s}` is neither a host name nor an address"));
            }
        }
    }
    if let Some(d) = &config.maculaos.install.device {
        if !d.starts_with("/dev/") {
            bad(
                "maculaos.install.device",
                format!("`{d}` is not a device path such as /dev/sda"),
            );
        }
    }
    let size = &config.maculaos.live.persistence_size;
    let digits = size.trim_end_matches(['K', 'M', 'G', 'T']);
    if digits.is_empty() || digits.parse::<u64>().is_err() {
        bad(
            "maculaos.live.persistence_size",
            format!("`{size}` is not a size such as 512M or 4G"),
        );
    }
    check_health(&config.maculaos.health, &mut bad);
    check_service_health(config, &mut bad);
    for (host, a) in &config.maculaos.registry.auth {
        if a.username.is_empty() || a.username.contains(':') {
            bad(
                &format!("maculaos.registry.auth.{host}.username"),
                "a user name is not empty and has no ':'".into(),
            );
        }
    }
    check_watchdog(&config.maculaos.watchdog, &mut bad);
    check_backup(&config.maculaos.backup, &mut bad);
    check_monitoring(config, &mut bad);
    check_mqtt(config, &mut bad);
    check_gitops(config, &mut bad);
    check_time_sync(config, &mut bad);
    check_updates(config, &mut bad);
    check_logging(config, &mut bad);
    let mut names = Vec::new();
    for (i, a) in config.maculaos.alerts.iter().enumerate() {
        if names.contains(&a.name.as_str()) {
            bad(
                &format!("maculaos.alerts.{i}.name"),
                format!("alert `{}` is listed twice", a.name),
            );
        }
        names.push(a.name.as_str());
    }
    out
}

/// The metrics' port (node-exporter runs as its own user: no port below
/// 1024).
fn check_monitoring(config: &Config, bad: &mut impl FnMut(&str, String)) {
    let p = &config.maculaos.monitoring.prometheus;
    if p.port < 1024 {
        bad(
            "maculaos.monitoring.prometheus.port",
            format!(
                "{}: node-exporter does not run as root and cannot listen below 1024; \
                 the usual port is 9100",
                p.port
            ),
        );
    }
    if p.enabled {
        reserve_name(config, "metrics", "monitoring.prometheus", bad);
    }
}

/// The broker's users: each named once, with a password; a broker that
/// nobody could use is refused.
fn check_mqtt(config: &Config, bad: &mut impl FnMut(&str, String)) {
    let m = &config.maculaos.edge.mqtt;
    let mut seen = Vec::new();
    for (i, u) in m.users.iter().enumerate() {
        if seen.contains(&u.name.as_str()) {
            bad(
                &format!("maculaos.edge.mqtt.users.{i}.name"),
                format!("user `{}` is listed twice", u.name),
            );
        }
        seen.push(u.name.as_str());
        if u.password.is_empty() {
            bad(
                &format!("maculaos.edge.mqtt.users.{i}.password"),
                format!("user `{}` has an empty password", u.name),
            );
        }
    }
    if m.websocket_port == Some(m.port) {
        bad(
            "maculaos.edge.mqtt.websocket_port",
            format!("{}: the same port as `port`; the usual one is 9001", m.port),
        );
    }
    if !m.enabled {
        return;
    }
    if m.users.is_empty() && !m.allow_anonymous {
        bad(
            "maculaos.edge.mqtt",
            "enabled with no `users` and `allow_anonymous: false`: no client could connect; \
             add users (`users: [{name: sensor, password: ...}]`) or allow anonymous clients"
                .into(),
        );
    }
    reserve_name(config, "mqtt", "edge.mqtt", bad);
}

/// NTP servers in one of the two lists (each is a name or an address:
/// checked with the other values); serving the LAN needs the clock kept.
fn check_time_sync(config: &Config, bad: &mut impl FnMut(&str, String)) {
    let t = &config.maculaos.edge.time_sync;
    let ntp = &config.maculaos.ntp.servers;
    if !ntp.is_empty() && !t.servers.is_empty() && *ntp != t.servers {
        bad(
            "maculaos.edge.time_sync.servers",
            "differs from maculaos.ntp.servers: both name the node's NTP servers; give the list once"
                .into(),
        );
    }
    if t.serve_to_lan && !t.enabled {
        bad(
            "maculaos.edge.time_sync.serve_to_lan",
            "serving the LAN needs time sync on (maculaos.edge.time_sync.enabled: true)".into(),
        );
    }
}

/// `updates.automatic` and `upgrade.auto_apply` say the same thing: once,
/// or alike.
fn check_updates(config: &Config, bad: &mut impl FnMut(&str, String)) {
    let u = &config.maculaos.updates;
    let apply = config.maculaos.upgrade.auto_apply;
    if u.automatic == Some(false) && apply {
        bad(
            "maculaos.updates.automatic",
            "is false while maculaos.upgrade.auto_apply is true: both say whether updates \
             are applied unattended; give one"
                .into(),
        );
    }
    if let Some(n) = &u.notify {
        if n.trim().is_empty() || n.chars().any(char::is_control) {
            bad(
                "maculaos.updates.notify",
                format!("`{n}` is not an address to tell"),
            );
        }
    }
}

/// The guide's `format: json` is Fluentd's forward protocol, not built.
fn check_logging(config: &Config, bad: &mut impl FnMut(&str, String)) {
    let l = &config.maculaos.logging;
    if l.format == crate::schema::LogFormat::Json {
        bad(
            "maculaos.logging.format",
            "json (Fluentd's forward protocol, as on port 24224) is not built yet; send the \
             journal to a systemd-journal-remote receiver: `forward_to: http://HOST:19532` \
             with `format: journal`"
                .into(),
        );
    }
    if l.forward_to.is_some() {
        reserve_name(config, "log-forward", "logging", bad);
    }
}

/// The git server's port (not SSH's own), and someone who may use it.
fn check_gitops(config: &Config, bad: &mut impl FnMut(&str, String)) {
    let g = &config.maculaos.gitops;
    if g.port == 22 || g.port == 0 {
        bad(
            "maculaos.gitops.port",
            format!(
                "{}: not a port the git server can have (SSH has 22); the usual one is 23231",
                g.port
            ),
        );
    }
    // /var/lib/maculaos is root's only: the user git could not reach it.
    let p = g.data_path.as_str();
    if p == "/var/lib/maculaos" || p.starts_with("/var/lib/maculaos/") {
        bad(
            "maculaos.gitops.data_path",
            format!(
                "`{}`: /var/lib/maculaos is root's only and the git server runs as the user \
                 git; use another directory under /var, such as /var/lib/git",
                g.data_path
            ),
        );
    }
    if !g.enabled {
        return;
    }
    if config.git_keys().is_empty() {
        bad(
            "maculaos.gitops",
            "enabled with no key that may use it: add `authorized_keys`, or give the admin \
             user keys (`maculaos.ssh.authorized_keys`)"
                .into(),
        );
    }
    reserve_name(config, "git", "gitops", bad);
}

/// An enabled embedded service's name, which its health check and its row
/// in `maculaos services` use: a check or a service of the same name would
/// be mistaken for it.
fn reserve_name(config: &Config, name: &str, key: &str, bad: &mut impl FnMut(&str, String)) {
    let why = format!("is the name of the built-in service `maculaos.{key}` runs; choose another");
    for (i, c) in config.maculaos.health.checks.iter().enumerate() {
        if c.name.trim() == name {
            bad(
                &format!("maculaos.health.checks.{i}"),
                format!("check `{name}` {why}"),
            );
        }
    }
    if config.services.keys().any(|n| n.as_str() == name) {
        bad(
            &format!("services.{name}"),
            format!("service `{name}` {why}"),
        );
    }
}

/// The keys a check of each type needs, and those it may have.
fn check_health(health: &Health, bad: &mut impl FnMut(&str, String)) {
    let mut seen: Vec<&str> = Vec::new();
    for (i, c) in health.checks.iter().enumerate() {
        let at = format!("maculaos.health.checks.{i}");
        let name = c.name.trim();
        if name.is_empty() {
            bad(&at, "give the check a `name`".into());
        } else if c.name.contains(['\n', '\r']) {
            bad(&at, format!("check `{name}`: a name is one line"));
        } else if seen.contains(&c.name.as_str()) {
            bad(
                &at,
                format!(
                    "check `{}`: another check has that name; names must be unique",
                    c.name
                ),
            );
        } else {
            seen.push(&c.name);
        }
        check_keys(&at, c, bad);
    }
}

/// The `services:` health checks: the keys of their type, as for
/// `maculaos.health.checks` (a service's check restarts the service).
fn check_service_health(config: &Config, bad: &mut impl FnMut(&str, String)) {
    for (name, svc) in &config.services {
        let Some(h) = &svc.health else { continue };
        let at = format!("services.{name}.health");
        if !matches!(
            h.kind,
            CheckType::Http | CheckType::Tcp | CheckType::Command
        ) {
            bad(
                &at,
                format!(
                    "a service's check is of type http, tcp or command, not {}",
                    h.kind
                ),
            );
            continue;
        }
        if h.kind == CheckType::Tcp {
            let why = match (h.port, &h.address) {
                (Some(_), Some(_)) => "give `port` or `address`, not both",
                (None, None) => "`port` is missing: the port on the node to connect to (or `address: HOST:PORT`)",
                (Some(0), None) => "`port` 0 is not a port",
                _ => "",
            };
            if !why.is_empty() {
                bad(&at, why.into());
                continue;
            }
        }
        let check = h.check(name.as_str(), "service.service", &["podman", "exec"]);
        check_keys(&at, &check, bad);
    }
}

/// The keys a check of its type needs, and none of another type's.
fn check_keys(at: &str, c: &HealthCheck, bad: &mut impl FnMut(&str, String)) {
    {
        let at = at.to_string();
        let who = format!("check `{}` (type {})", c.name, c.kind);
        let mut missing = |field: &str, what: &str| {
            bad(&at, format!("{who}: `{field}` is missing: {what}"));
        };
        let tcp_split = c.host.is_some() || c.port.is_some();
        match c.kind {
            CheckType::Process | CheckType::Unit => {
                if c.unit.is_none() {
                    missing("unit", "the systemd unit to check (or `process`)");
                }
            }
            CheckType::Http => {
                if c.url.is_none() {
                    missing(
                        "url",
                        "the URL to GET, such as http://localhost:8080/health",
                    );
                }
            }
            CheckType::Tcp => {
                if c.address.is_none() && !tcp_split {
                    missing(
                        "host",
                        "where to connect: `host` and `port`, or `address: HOST:PORT`",
                    );
                } else if c.address.is_none() && c.host.is_none() {
                    missing("host", "the host to connect to, with `port`");
                } else if c.address.is_none() && c.port.is_none() {
                    missing("port", "the port to connect to, with `host`");
                } else if c.port == Some(0) {
                    bad(&at, format!("{who}: `port` 0 is not a port"));
                } else if c.address.is_some() && tcp_split {
                    bad(
                        &at,
                        format!("{who}: give `address` or `host` and `port`, not both"),
                    );
                }
            }
            CheckType::Disk => {
                if c.path.is_none() {
                    missing("path", "a path on the filesystem to watch, such as /var");
                }
            }
            CheckType::Command => {
                if c.command.is_empty() {
                    missing(
                        "command",
                        "the program and its arguments, such as [curl, -fs, http://localhost/]",
                    );
                }
            }
        }
        // Keys of another type: most likely a mistake, never silently ignored.
        let mut foreign = Vec::new();
        let http = c.kind == CheckType::Http;
        let tcp = c.kind == CheckType::Tcp;
        let disk = c.kind == CheckType::Disk;
        let command = c.kind == CheckType::Command;
        for (set, key, ok) in [
            (!c.command.is_empty(), "command", command),
            (c.url.is_some(), "url", http),
            (c.host.is_some(), "host", tcp),
            (c.port.is_some(), "port", tcp),
            (c.address.is_some(), "address", tcp),
            (c.path.is_some(), "path", disk),
            (c.threshold.is_some(), "threshold", disk),
            (c.action.is_some(), "action", disk),
            (c.unit.is_some(), "unit", !disk),
            (c.restart_on_failure, "restart_on_failure", !disk),
        ] {
            if set && !ok {
                foreign.push(format!("`{key}`"));
            }
        }
        if !foreign.is_empty() {
            bad(
                &at,
                format!(
                    "{who}: {} not used by a {} check",
                    foreign.join(", "),
                    c.kind
                ),
            );
        }
        if c.restart_on_failure && (http || tcp || command) && c.unit.is_none() {
            bad(
                &at,
                format!("{who}: `restart_on_failure` needs `unit`, the systemd unit to restart"),
            );
        }
    }
}

fn check_watchdog(w: &Watchdog, bad: &mut impl FnMut(&str, String)) {
    if !w.device.as_str().starts_with("/dev/") {
        bad(
            "maculaos.watchdog.device",
            format!("`{}` is not a device such as /dev/watchdog", w.device),
        );
    }
    let t = w.timeout.get();
    if t.subsec_nanos() != 0 || t.as_secs() > 3600 {
        bad(
            "maculaos.watchdog.timeout",
            format!("`{}`: give whole seconds, from 1 to 3600", w.timeout),
        );
    }
}

fn check_backup(b: &Backup, bad: &mut impl FnMut(&str, String)) {
    let dir = b.dir.as_path();
    let state = Path::new(maculaos_boot::STATE_DIR);
    if dir.starts_with(state) {
        bad(
            "maculaos.backup.dir",
            format!(
                "`{}` is inside {}, which a factory reset wipes: keep backups elsewhere \
                 (default /var/lib/maculaos-backups)",
                b.dir,
                state.display()
            ),
        );
    }
    if dir == Path::new("/") {
        bad(
            "maculaos.backup.dir",
            "`/` is not a backup directory".into(),
        );
    }
    let excluded = b.exclude.iter().any(|e| dir.starts_with(e.as_path()));
    if let Some(inc) = b.include.iter().find(|i| dir.starts_with(i.as_path())) {
        if !excluded {
            bad(
                "maculaos.backup.dir",
                format!(
                    "`{}` is inside the included `{inc}`: each backup would hold the ones \
                     before it (add it to `exclude`, or move it)",
                    b.dir
                ),
            );
        }
    }
    if b.enabled && b.include.is_empty() {
        bad(
            "maculaos.backup.include",
            "backups are enabled but `include` is empty: nothing to back up".into(),
        );
    }
}

/// What the node runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Using {
    /// The sources as they are now: all valid.
    Current,
    /// Some source is invalid: the last configuration that was valid.
    LastGood,
    /// Some source is invalid and no earlier one was ever valid: the image defaults.
    Defaults,
}

/// The configuration in effect, and why.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The merged sources, as YAML.
    pub value: Value,
    pub provenance: Provenance,
    /// Everything wrong with the current sources (empty when `Current`).
    pub problems: Vec<Problem>,
    pub using: Using,
}

/// Read, merge and check every source; on any problem fall back to the last
/// good configuration, else to the image defaults.
pub fn load(paths: &Paths) -> Loaded {
    let (sources, mut problems) = read_sources(paths);
    if problems.is_empty() {
        let (value, provenance) = merge(&sources);
        match Config::deserialize(value.clone()) {
            Ok(config) => {
                problems.extend(check(&config, &provenance));
                if problems.is_empty() {
                    return Loaded {
                        config,
                        value,
                        provenance,
                        problems,
                        using: Using::Current,
                    };
                }
            }
            Err(e) => problems.push(Problem::new(
                "merged configuration",
                Problem::from_yaml("", &e).message,
            )),
        }
    }
    fallback(paths, problems)
}

fn fallback(paths: &Paths, problems: Vec<Problem>) -> Loaded {
    let from_file = |path: PathBuf, using: Using| -> Option<Loaded> {
        let name = display_path(paths, &path);
        let text = fs::read_to_string(&path).ok()?;
        let source = sources::parse(&name, &text, Format::Maculaos).ok()?;
        let (value, provenance) = merge(std::slice::from_ref(&source));
        let config = Config::deserialize(value.clone()).ok()?;
        Some(Loaded {
            config,
            value,
            provenance,
            problems: problems.clone(),
            using,
        })
    };
    from_file(paths.last_good(), Using::LastGood)
        .or_else(|| from_file(paths.defaults(), Using::Defaults))
        .unwrap_or_else(|| Loaded {
            config: Config::default(),
            value: Value::Mapping(Mapping::new()),
            provenance: Provenance::new(),
            problems: problems.clone(),
            using: Using::Defaults,
        })
}

/// Keep `loaded` as the last good configuration (only a `Current` one).
/// Returns whether the file changed.
pub fn save_last_good(paths: &Paths, loaded: &Loaded) -> std::io::Result<bool> {
    if loaded.using != Using::Current {
        return Ok(false);
    }
    let body = serde_yaml_ng::to_string(&loaded.value)
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
    let text = format!(
        "# The last configuration that passed validation, merged from all sources.\n\
         # Written by `maculaos apply`; used when a source has an error. Do not edit.\n{body}"
    );
    let path = paths.last_good();
    if fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("yaml.new");
    fs::write(&tmp, text)?;
    // It may hold a k3s token: root only.
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, &path)?;
    Ok(true)
}

/// Keys whose values are secrets: shown as `<redacted>` unless asked.
const SECRET_KEYS: &[&str] = &["token", "password", "secret", "private_key"];

/// A copy of `value` (the whole configuration) with secrets replaced:
/// keys named like secrets anywhere, and every value of a service's `env`
/// (its credentials, under any name).
pub fn redact(value: &Value) -> Value {
    let mut out = redact_keys(value);
    if let Some(Value::Mapping(services)) = out.get_mut("services") {
        for (_, svc) in services.iter_mut() {
            if let Some(Value::Mapping(env)) = svc.get_mut("env") {
                for (_, v) in env.iter_mut() {
                    if !v.is_null() {
                        *v = Value::String("<redacted>".into());
                    }
                }
            }
        }
    }
    out
}

fn redact_keys(value: &Value) -> Value {
    match value {
        Value::Mapping(m) => Value::Mapping(
            m.iter()
                .map(|(k, v)| {
                    let secret = k.as_str().is_some_and(|k| SECRET_KEYS.contains(&k));
                    let v = if secret && !v.is_null() {
                        Value::String("<redacted>".into())
                    } else {
                        redact_keys(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Sequence(s) => Value::Sequence(s.iter().map(redact_keys).collect()),
        other => other.clone(),
    }
}

/// One line per key: `path = value    # source`, for `config show --sources`.
pub fn render_with_sources(value: &Value, prov: &Provenance) -> String {
    let mut lines = Vec::new();
    leaves(value, "", &mut lines);
    let width = lines
        .iter()
        .map(|(p, v)| p.len() + v.len() + 3)
        .max()
        .unwrap_or(0);
    lines
        .into_iter()
        .map(|(p, v)| {
            let src = source_of(prov, &p).unwrap_or("?");
            let left = format!("{p} = {v}");
            format!("{left:width$}  # {src}\n")
        })
        .collect()
}

fn leaves(v: &Value, prefix: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    key_text(k)
                } else {
                    format!("{prefix}.{}", key_text(k))
                };
                leaves(v, &path, out);
            }
        }
        other => out.push((
            prefix.to_string(),
            serde_json::to_string(other).unwrap_or_default(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Node {
        dir: tempfile::TempDir,
    }

    impl Node {
        fn new() -> Node {
            Node {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn paths(&self) -> Paths {
            Paths::new(self.dir.path())
        }
        fn write(&self, rel: &str, text: &str) {
            let p = self.dir.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB me@host";

    #[test]
    fn nothing_at_all_is_a_valid_empty_config() {
        let n = Node::new();
        let l = load(&n.paths());
        assert_eq!(l.using, Using::Current);
        assert!(l.problems.is_empty());
        assert_eq!(l.config, Config::default());
    }

    #[test]
    fn precedence_follows_the_documented_order() {
        let n = Node::new();
        n.write(
            "usr/lib/maculaos/config.yaml",
            "maculaos:\n  hostname: from-defaults\n  modules: [overlay]\n",
        );
        n.write(
            "var/lib/maculaos/config.yaml",
            "maculaos:\n  hostname: from-node\n",
        );
        n.write(
            "var/lib/maculaos/config.d/20-b.yaml",
            "maculaos:\n  hostname: from-d20\n",
        );
        n.write(
            "var/lib/maculaos/config.d/10-a.yaml",
            "maculaos:\n  hostname: from-d10\n  sysctl:\n    vm.swappiness: 10\n",
        );
        n.write(
            "var/lib/maculaos/config.d/ignored.txt",
            "not: yaml: at: all: [",
        );
        let l = load(&n.paths());
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(
            l.config.maculaos.hostname.as_ref().unwrap().as_str(),
            "from-d20"
        );
        assert_eq!(
            l.provenance["maculaos.hostname"],
            format!("/var/lib/maculaos/config.d/20-b.yaml")
        );
        assert_eq!(
            l.provenance["maculaos.modules"],
            "/usr/lib/maculaos/config.yaml"
        );
        assert_eq!(
            l.provenance["maculaos.sysctl.vm.swappiness"],
            "/var/lib/maculaos/config.d/10-a.yaml"
        );

        n.write(
            "var/lib/maculaos/datasource/nocloud/meta-data",
            "local-hostname: from-meta\n",
        );
        let l = load(&n.paths());
        assert_eq!(
            l.config.maculaos.hostname.as_ref().unwrap().as_str(),
            "from-meta"
        );
        n.write(
            "var/lib/maculaos/datasource/nocloud/user-data",
            "#cloud-config\nhostname: from-user-data\n",
        );
        let l = load(&n.paths());
        assert_eq!(
            l.config.maculaos.hostname.as_ref().unwrap().as_str(),
            "from-user-data"
        );
        n.write(
            "var/lib/maculaos/datasource/url/config.yaml",
            "maculaos:\n  hostname: from-url\n",
        );
        let l = load(&n.paths());
        assert_eq!(
            l.config.maculaos.hostname.as_ref().unwrap().as_str(),
            "from-url"
        );
        n.write("proc/cmdline", "quiet maculaos.hostname=from-cmdline\n");
        let l = load(&n.paths());
        assert_eq!(
            l.config.maculaos.hostname.as_ref().unwrap().as_str(),
            "from-cmdline"
        );
        assert_eq!(l.provenance["maculaos.hostname"], "kernel command line");
        // Lists replace, they do not append.
        assert_eq!(l.config.maculaos.modules.len(), 1);
    }

    #[test]
    fn lists_replace_and_maps_merge() {
        let a = sources::parse(
            "a",
            "maculaos:\n  modules: [a, b]\n  labels: {x: '1'}\n",
            Format::Maculaos,
        )
        .unwrap();
        let b = sources::parse(
            "b",
            "maculaos:\n  modules: [c]\n  labels: {y: '2'}\n",
            Format::Maculaos,
        )
        .unwrap();
        let (v, prov) = merge(&[a, b]);
        let c = Config::deserialize(v).unwrap();
        assert_eq!(c.maculaos.modules.len(), 1);
        assert_eq!(c.maculaos.labels.len(), 2);
        assert_eq!(prov["maculaos.labels.x"], "a");
        assert_eq!(prov["maculaos.labels.y"], "b");
    }

    #[test]
    fn ssh_keys_add_up_across_sources() {
        let k2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC other@host";
        let a = sources::parse(
            "a",
            &format!("ssh_authorized_keys: ['{KEY}']\n"),
            Format::Maculaos,
        )
        .unwrap();
        let b = sources::parse(
            "b",
            &format!("ssh_authorized_keys: ['{k2}', '{KEY}']\n"),
            Format::Maculaos,
        )
        .unwrap();
        let (v, prov) = merge(&[a, b]);
        let c = Config::deserialize(v).unwrap();
        assert_eq!(c.ssh_keys(), vec![KEY.to_string(), k2.to_string()]);
        assert_eq!(prov["ssh_authorized_keys"], "a + b");
    }

    #[test]
    fn a_bad_source_falls_back_to_the_last_good_config() {
        let n = Node::new();
        n.write(
            "var/lib/maculaos/config.yaml",
            &format!("maculaos:\n  hostname: good\nssh_authorized_keys: ['{KEY}']\n"),
        );
        let l = load(&n.paths());
        assert_eq!(l.using, Using::Current);
        assert!(save_last_good(&n.paths(), &l).unwrap());
        assert!(
            !save_last_good(&n.paths(), &l).unwrap(),
            "unchanged the second time"
        );

        n.write(
            "var/lib/maculaos/config.d/50-typo.yaml",
            "maculaos:\n  hostnme: oops\n",
        );
        let l = load(&n.paths());
        assert_eq!(l.using, Using::LastGood);
        assert_eq!(
            l.config.maculaos.hostname.as_ref().unwrap().as_str(),
            "good"
        );
        assert_eq!(l.problems.len(), 1);
        assert_eq!(
            l.problems[0].to_string(),
            "/var/lib/maculaos/config.d/50-typo.yaml:2:3: maculaos: unknown key `hostnme` in `maculaos` — did you mean `hostname`?"
        );
        // The last good copy is not overwritten by a failing load.
        assert!(!save_last_good(&n.paths(), &l).unwrap());
    }

    #[test]
    fn without_a_last_good_config_the_defaults_are_used() {
        let n = Node::new();
        n.write(
            "usr/lib/maculaos/config.yaml",
            "maculaos:\n  modules: [overlay]\n",
        );
        n.write(
            "var/lib/maculaos/config.yaml",
            "maculaos:\n  modules: [over lay]\n",
        );
        let l = load(&n.paths());
        assert_eq!(l.using, Using::Defaults);
        assert_eq!(l.config.maculaos.modules.len(), 1);
        assert_eq!(l.config.maculaos.modules[0].as_str(), "overlay");
        assert!(l.problems[0].message.contains("not a kernel module name"));
    }

    #[test]
    fn every_problem_is_reported_not_only_the_first_source() {
        let n = Node::new();
        n.write("var/lib/maculaos/config.yaml", "k3s:\n  rol: agent\n");
        n.write(
            "var/lib/maculaos/config.d/a.yaml",
            "maculaos:\n  hostname: -x\n",
        );
        n.write("proc/cmdline", "maculaos.mesh.realm=x");
        let l = load(&n.paths());
        assert_eq!(l.problems.len(), 2, "{:?}", l.problems);
    }

    #[test]
    fn cross_key_checks_name_the_source() {
        let n = Node::new();
        n.write("var/lib/maculaos/config.yaml", "k3s:\n  role: agent\n");
        n.write(
            "var/lib/maculaos/config.d/net.yaml",
            "maculaos:\n  network:\n    interfaces:\n      - name: eth1\n        dhcp: false\n  mesh:\n    realm: macula\n",
        );
        n.write(
            "var/lib/maculaos/config.d/files.yaml",
            "write_files:\n  - path: etc/x\n",
        );
        let l = load(&n.paths());
        let all: Vec<String> = l.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(all.len(), 4, "{all:#?}");
        assert!(all[0].starts_with("/var/lib/maculaos/config.yaml: k3s: an agent needs"));
        assert!(all.iter().any(|p| p.contains("eth1` has DHCP off")));
        assert!(all
            .iter()
            .any(|p| p.starts_with("/var/lib/maculaos/config.d/files.yaml: write_files.0.path")));
        assert!(all.iter().any(|p| p.contains("reverse domain")));
    }

    /// The problems of `maculaos:` + `text` (one file), as the CLI shows them.
    fn cross_key(text: &str) -> Vec<String> {
        let n = Node::new();
        n.write(
            "var/lib/maculaos/config.yaml",
            &format!("maculaos:\n{text}"),
        );
        let l = load(&n.paths());
        l.problems.iter().map(|p| p.to_string()).collect()
    }

    const AT: &str = "/var/lib/maculaos/config.yaml: ";

    #[test]
    fn a_registry_user_name_has_no_colon() {
        let p =
            cross_key("  registry:\n    auth:\n      ghcr.io: {username: 'a:b', password: x}\n");
        assert_eq!(
            p,
            [format!(
                "{AT}maculaos.registry.auth.ghcr.io.username: a user name is not empty and has no ':'"
            )]
        );
    }

    #[test]
    fn service_checks_need_the_keys_of_their_type() {
        let n = Node::new();
        n.write(
            "var/lib/maculaos/config.yaml",
            "services:
  a: {image: busybox, health: {type: tcp}}
  b: {image: busybox, health: {type: command}}
  c: {image: busybox, health: {type: disk}}
  d: {image: busybox, health: {type: http, url: 'http://127.0.0.1:8080/', port: 80}}
  ok1: {image: busybox, health: {type: tcp, port: 8080}}
  ok2: {image: busybox, health: {type: command, command: [wget, -q, 'http://127.0.0.1/']}}
",
        );
        let p: Vec<String> = load(&n.paths())
            .problems
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            p,
            [
                "services.a.health: `port` is missing: the port on the node to connect to (or `address: HOST:PORT`)",
                "services.b.health: check `b` (type command): `command` is missing: the program and its arguments, such as [curl, -fs, http://localhost/]",
                "services.c.health: a service's check is of type http, tcp or command, not disk",
                "services.d.health: check `d` (type http): `port` not used by a http check",
            ]
            .map(|m| format!("{AT}{m}"))
        );
    }

    #[test]
    fn health_checks_need_the_keys_of_their_type() {
        let p = cross_key(
            "  health:
    checks:
      - {name: k3s, type: process}
      - {name: mesh, type: http}
      - {name: api, type: tcp}
      - {name: api2, type: tcp, host: localhost}
      - {name: api3, type: tcp, port: 6443}
      - {name: var, type: disk}
",
        );
        assert_eq!(
            p,
            [
                "maculaos.health.checks.0: check `k3s` (type process): `unit` is missing: the systemd unit to check (or `process`)",
                "maculaos.health.checks.1: check `mesh` (type http): `url` is missing: the URL to GET, such as http://localhost:8080/health",
                "maculaos.health.checks.2: check `api` (type tcp): `host` is missing: where to connect: `host` and `port`, or `address: HOST:PORT`",
                "maculaos.health.checks.3: check `api2` (type tcp): `port` is missing: the port to connect to, with `host`",
                "maculaos.health.checks.4: check `api3` (type tcp): `host` is missing: the host to connect to, with `port`",
                "maculaos.health.checks.5: check `var` (type disk): `path` is missing: a path on the filesystem to watch, such as /var",
            ]
            .map(|m| format!("{AT}{m}"))
        );
    }

    #[test]
    fn health_check_names_are_unique_and_not_empty() {
        let p = cross_key(
            "  health:
    checks:
      - {name: a, type: unit, unit: x}
      - {name: '', type: unit, unit: y}
      - {name: a, type: unit, unit: z}
",
        );
        assert_eq!(
            p,
            [
                format!("{AT}maculaos.health.checks.1: give the check a `name`"),
                format!("{AT}maculaos.health.checks.2: check `a`: another check has that name; names must be unique"),
            ]
        );
    }

    #[test]
    fn health_check_keys_of_another_type_are_refused() {
        let p = cross_key(
            "  health:
    checks:
      - {name: a, type: disk, path: /var, url: 'http://x/', unit: k3s, restart_on_failure: true}
      - {name: b, type: http, url: 'http://x/', threshold: 50%}
      - {name: c, type: tcp, address: 'x:1', host: x, port: 1}
      - {name: d, type: tcp, host: x, port: 0}
",
        );
        assert_eq!(
            p,
            [
                "maculaos.health.checks.0: check `a` (type disk): `url`, `unit`, `restart_on_failure` not used by a disk check",
                "maculaos.health.checks.1: check `b` (type http): `threshold` not used by a http check",
                "maculaos.health.checks.2: check `c` (type tcp): give `address` or `host` and `port`, not both",
                "maculaos.health.checks.3: check `d` (type tcp): `port` 0 is not a port",
            ]
            .map(|m| format!("{AT}{m}"))
        );
    }

    #[test]
    fn restarting_after_an_http_or_tcp_check_needs_a_unit() {
        // The seed's `mesh` check: nothing says which unit to restart.
        let p = cross_key(
            "  health:
    checks:
      - name: mesh
        type: http
        url: http://localhost:8080/health
        interval: 30s
        timeout: 5s
        restart_on_failure: true
",
        );
        assert_eq!(
            p,
            [format!("{AT}maculaos.health.checks.0: check `mesh` (type http): `restart_on_failure` needs `unit`, the systemd unit to restart")]
        );
        let p = cross_key(
            "  health:\n    checks:\n      - {name: mesh, type: http, url: 'http://localhost:8080/health', unit: macula-mesh, restart_on_failure: true}\n",
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn nats_and_mesh_checks() {
        // The seed's block (plan §4.9.5) as written there.
        let seed = "  nats:
    enabled: true
    listen: 127.0.0.1:4222
    max_payload: 1MB
    jetstream:
      enabled: false
      store_dir: /var/lib/maculaos/nats/jetstream
      max_file: 1GB
    cluster:
      enabled: false
      port: 6222
";
        assert!(cross_key(seed).is_empty(), "{:?}", cross_key(seed));
        let p = cross_key(
            "  mesh:
    role: bootstrap
    bootstrap_peers: ['b1.local:4433', 'https://boot.macula.io:443', 'bad host']
  nats:
    enabled: false
    listen: 0.0.0.0:4222
",
        );
        assert_eq!(
            p,
            [
                format!("{AT}maculaos.nats.enabled: the bootstrap role needs the NATS server: set `enabled: true` or drop the role"),
                format!("{AT}maculaos.nats.listen: `0.0.0.0:4222` is not a loopback address: local clients connect without credentials, so the client port stays on this node (127.0.0.1:4222); other nodes reach it through the mesh (mutual TLS)"),
                format!("{AT}maculaos.mesh.bootstrap_peers.2: `bad host` is not a host, host:port or URL such as bootstrap.macula.io:4433"),
            ]
        );
        let p = cross_key(
            "  nats:
    cluster: {enabled: true}
",
        );
        assert!(
            p[0].contains("cluster routes come with the bootstrap role"),
            "{p:?}"
        );
    }

    #[test]
    fn monitoring_checks() {
        let p = cross_key("  monitoring:\n    prometheus: {port: 80}\n");
        assert!(p[0].contains("cannot listen below 1024"), "{p:?}");
        let p = cross_key(
            "  monitoring:\n    prometheus: {enabled: true}\n  health:\n    checks:\n      - {name: metrics, type: unit, unit: x}\n",
        );
        assert!(
            p[0].contains("check `metrics` is the name of the built-in"),
            "{p:?}"
        );
        assert!(cross_key(
            "  monitoring:\n    prometheus: {enabled: false}\n  health:\n    checks:\n      - {name: metrics, type: unit, unit: x}\n",
        )
        .is_empty());
    }

    #[test]
    fn mqtt_checks() {
        let p = cross_key("  edge:\n    mqtt: {enabled: true}\n");
        assert_eq!(
            p,
            [format!("{AT}maculaos.edge.mqtt: enabled with no `users` and `allow_anonymous: false`: no client could connect; add users (`users: [{{name: sensor, password: ...}}]`) or allow anonymous clients")]
        );
        assert!(
            cross_key("  edge:\n    mqtt: {enabled: true, allow_anonymous: true}\n").is_empty()
        );
        let p = cross_key(
            "  edge:\n    mqtt:\n      enabled: true\n      websocket_port: 1883\n      users:\n        - {name: a, password: x}\n        - {name: a, password: ''}\n",
        );
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[0].contains("users.1.name: user `a` is listed twice"),
            "{p:?}"
        );
        assert!(
            p[1].contains("users.1.password: user `a` has an empty password"),
            "{p:?}"
        );
        assert!(
            p[2].contains("websocket_port: 1883: the same port as `port`"),
            "{p:?}"
        );
        // A name the YAML reader refuses, at its line.
        let n = Node::new();
        n.write(
            "var/lib/maculaos/config.yaml",
            "maculaos:\n  edge:\n    mqtt:\n      users:\n        - {name: 'a:b', password: x}\n",
        );
        let l = load(&n.paths());
        assert!(
            l.problems[0]
                .to_string()
                .contains("`a:b` is not an MQTT user name"),
            "{:?}",
            l.problems
        );
        let p = cross_key(
            "  edge:\n    mqtt: {enabled: true, allow_anonymous: true}\n  health:\n    checks:\n      - {name: mqtt, type: unit, unit: x}\n",
        );
        assert!(
            p[0].contains("check `mqtt` is the name of the built-in service `maculaos.edge.mqtt`"),
            "{p:?}"
        );
    }

    #[test]
    fn alerts_as_the_guide_writes_them() {
        let n = Node::new();
        const GUIDE: &str = "alerts:\n  - name: disk_full\n    condition: disk_usage > 90%\n    topic: io.mycompany.alerts.disk_full\n";
        n.write("var/lib/maculaos/config.yaml", GUIDE);
        let l = load(&n.paths());
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        let a = &l.config.maculaos.alerts;
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].condition.as_str(), "disk_usage > 90%");
        assert_eq!(
            a[0].topic.as_ref().map(|t| t.as_str()),
            Some("io.mycompany.alerts.disk_full")
        );
        n.write(
            "var/lib/maculaos/config.yaml",
            &format!("{GUIDE}  - {{name: disk_full, condition: load > 3}}\n"),
        );
        let l = load(&n.paths());
        let p: Vec<String> = l.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            p,
            [format!(
                "{AT}maculaos.alerts.1.name: alert `disk_full` is listed twice"
            )]
        );
        n.write(
            "var/lib/maculaos/config.yaml",
            "alerts:\n  - {name: x, condition: disk_usage > 90 percent}\n",
        );
        let l = load(&n.paths());
        assert!(
            l.problems[0]
                .to_string()
                .contains("is not an alert condition such as `disk_usage > 90%`"),
            "{:?}",
            l.problems
        );
    }

    #[test]
    fn gitops_checks() {
        let p = cross_key("  gitops: {enabled: true}\n");
        assert!(
            p[0].contains("maculaos.gitops: enabled with no key that may use it"),
            "{p:?}"
        );
        // The admin's keys are enough.
        assert!(cross_key(
            "  gitops: {enabled: true}\n  ssh:\n    authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb2Q3M5dG7d8m1oQ6pP0c3W0uW2mGq0mY8m6r8b9Vq3 op']\n",
        )
        .is_empty());
        for dir in ["/var/lib/maculaos/git", "/var/lib/maculaos"] {
            let p = cross_key(&format!("  gitops: {{data_path: {dir}}}\n"));
            assert!(p[0].contains("/var/lib/maculaos is root's only"), "{p:?}");
        }
        let p = cross_key("  gitops: {port: 22}\n");
        assert!(
            p[0].contains("maculaos.gitops.port: 22: not a port the git server can have"),
            "{p:?}"
        );
        let n = Node::new();
        n.write(
            "var/lib/maculaos/config.yaml",
            "maculaos:\n  gitops:\n    data_path: /etc/git\n",
        );
        let l = load(&n.paths());
        assert!(
            l.problems[0]
                .to_string()
                .contains("`/etc/git` is not a directory under /var"),
            "{:?}",
            l.problems
        );
    }

    #[test]
    fn time_sync_checks() {
        assert!(cross_key(
            "  ntp: {servers: [a.example]}\n  edge: {time_sync: {servers: [a.example]}}\n"
        )
        .is_empty());
        let p = cross_key(
            "  ntp: {servers: [a.example]}\n  edge: {time_sync: {servers: [b.example]}}\n",
        );
        assert!(
            p[0].contains("maculaos.edge.time_sync.servers: differs from maculaos.ntp.servers"),
            "{p:?}"
        );
        let p = cross_key("  edge: {time_sync: {servers: ['a b']}}\n");
        assert_eq!(
            p,
            [format!(
                "{AT}maculaos.edge.time_sync.servers: `a b` is neither a host name nor an address"
            )]
        );
        let p = cross_key("  edge: {time_sync: {enabled: false, serve_to_lan: true}}\n");
        assert!(p[0].contains("serving the LAN needs time sync on"), "{p:?}");
    }

    #[test]
    fn the_guides_updates_and_logging_blocks() {
        let n = Node::new();
        n.write(
            "var/lib/maculaos/config.yaml",
            "updates:\n  automatic: true\n  schedule: \"04:00\"\n  auto_reboot: true\n  \
             notify: admin@example.com\nlogging:\n  forward_to: logs.example.com:19532\n",
        );
        let l = load(&n.paths());
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        let c = &l.config;
        assert!(c.auto_apply() && c.maculaos.updates.auto_reboot);
        assert_eq!(
            c.maculaos.updates.schedule.as_ref().unwrap().on_calendar(),
            "04:00"
        );
        assert_eq!(
            c.maculaos.logging.forward_to.as_ref().unwrap().url(),
            "http://logs.example.com:19532"
        );
        // The guide's json (Fluentd on 24224) is refused, saying what works.
        let p = cross_key("  logging: {forward_to: 'logs.example.com:24224', format: json}\n");
        assert!(
            p[0].contains("maculaos.logging.format: json (Fluentd's forward protocol")
                && p[0].contains("forward_to: http://HOST:19532"),
            "{p:?}"
        );
        for bad in [
            "https://logs.example.com:19532",
            "logs.example.com",
            "ftp://x:1",
        ] {
            let p = cross_key(&format!("  logging: {{forward_to: '{bad}'}}\n"));
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
        }
        let p = cross_key("  updates: {automatic: false}\n  upgrade: {auto_apply: true}\n");
        assert!(
            p[0].contains("maculaos.updates.automatic: is false"),
            "{p:?}"
        );
    }

    #[test]
    fn watchdog_checks() {
        let p = cross_key("  watchdog:\n    device: /var/watchdog\n    timeout: 1500ms\n");
        assert_eq!(
            p,
            [
                format!("{AT}maculaos.watchdog.device: `/var/watchdog` is not a device such as /dev/watchdog"),
                format!("{AT}maculaos.watchdog.timeout: `1500ms`: give whole seconds, from 1 to 3600"),
            ]
        );
        assert!(cross_key("  watchdog:\n    timeout: 2h\n")[0].contains("from 1 to 3600"));
        assert!(cross_key("  watchdog:\n    enabled: false\n    timeout: 30s\n").is_empty());
    }

    #[test]
    fn backup_checks() {
        let p = cross_key("  backup:\n    dir: /var/lib/maculaos/backups\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(
            p[0],
            format!("{AT}maculaos.backup.dir: `/var/lib/maculaos/backups` is inside /var/lib/maculaos, which a factory reset wipes: keep backups elsewhere (default /var/lib/maculaos-backups)")
        );
        assert_eq!(
            p[1],
            format!("{AT}maculaos.backup.dir: `/var/lib/maculaos/backups` is inside the included `/var/lib/maculaos`: each backup would hold the ones before it (add it to `exclude`, or move it)")
        );
        // A path prefix that is not a parent directory is not inside it.
        assert!(cross_key("  backup:\n    dir: /var/lib/maculaos-old\n").is_empty());
        assert!(cross_key(
            "  backup:\n    dir: /var/lib/data/bk\n    exclude: [/var/lib/data/bk]\n"
        )
        .is_empty());
        let p = cross_key("  backup:\n    enabled: true\n    include: []\n");
        assert_eq!(
            p,
            [format!("{AT}maculaos.backup.include: backups are enabled but `include` is empty: nothing to back up")]
        );
        assert_eq!(
            cross_key("  backup:\n    dir: /\n    include: [/srv]\n"),
            [format!(
                "{AT}maculaos.backup.dir: `/` is not a backup directory"
            )]
        );
    }

    #[test]
    fn the_seed_sections_load_without_problems() {
        let p = cross_key(
            "  watchdog:
    enabled: true
    device: /dev/watchdog
    timeout: 60
    software_fallback: true
  health:
    checks:
      - name: k3s
        type: process
        process: k3s-server
        restart_on_failure: true
        max_restarts: 3
      - name: disk
        type: disk
        path: /var/lib
        threshold: 90%
        action: alert
  auto_heal:
    enabled: true
  backup:
    enabled: true
    schedule: \"0 2 * * *\"
    retention: 7
    target: local
    include:
      - /var/lib/maculaos/
      - /var/lib/data/
    exclude:
      - /var/lib/rancher/k3s/agent/containerd/
",
        );
        assert!(p.is_empty(), "{p:#?}");
    }

    #[test]
    fn the_fuzz_seed_of_the_new_sections_is_valid() {
        let text = include_str!("../fuzz/corpus/parse/seed-resilience.yaml");
        let n = Node::new();
        n.write("var/lib/maculaos/config.yaml", text);
        let l = load(&n.paths());
        assert!(l.problems.is_empty(), "{:#?}", l.problems);
        assert_eq!(l.config.maculaos.health.checks.len(), 4);
    }

    #[test]
    fn secrets_are_redacted() {
        let v: Value = serde_yaml_ng::from_str("k3s:\n  token: abc\n  args: [x]\n").unwrap();
        let r = serde_yaml_ng::to_string(&redact(&v)).unwrap();
        assert!(r.contains("<redacted>") && !r.contains("abc"), "{r}");
        let v: Value =
            serde_yaml_ng::from_str("services:\n  web:\n    image: a\n    env: {DB: pw1}\n")
                .unwrap();
        let r = serde_yaml_ng::to_string(&redact(&v)).unwrap();
        assert!(r.contains("DB: <redacted>") && !r.contains("pw1"), "{r}");
    }

    #[test]
    fn show_with_sources() {
        let a = sources::parse(
            "a.yaml",
            "maculaos:\n  hostname: x\n  modules: [m]\n",
            Format::Maculaos,
        )
        .unwrap();
        let (v, prov) = merge(&[a]);
        let out = render_with_sources(&v, &prov);
        assert!(out.contains("maculaos.hostname = \"x\""), "{out}");
        assert!(out.contains("# a.yaml"), "{out}");
        assert!(out.contains("maculaos.modules = [\"m\"]"), "{out}");
    }

    #[test]
    fn operator_config_turns_the_wizard_off() {
        let dir = tempfile::tempdir().unwrap();
        let p = Paths::new(dir.path());
        assert!(!p.has_operator_config());
        fs::create_dir_all(p.config_d()).unwrap();
        fs::write(
            dir.path()
                .join("var")
                .join(maculaos_boot::reset::KEPT_NETWORK),
            "x: 1\n",
        )
        .unwrap();
        assert!(
            !p.has_operator_config(),
            "kept network settings are not a configuration"
        );
        fs::write(p.config_d().join("50-node.yaml"), "maculaos: {}\n").unwrap();
        assert!(p.has_operator_config());
        assert_eq!(
            p.configured_flag(),
            dir.path().join("var/lib/maculaos/.configured")
        );
    }
}
