//! The shape of `config.yaml`: every key a node understands, with the names
//! of the seeds (plan §4.3, §4.4, §4.7, §4.8; guide "Configuration").
//!
//! Every struct refuses unknown keys, so a typo is an error, never a silently
//! ignored setting. Values that have a syntax (hostnames, addresses, SSH keys,
//! file modes…) are checked while they are read, through the newtypes in
//! [`crate::values`]: their errors carry the file, line and column.

pub use crate::values::MqttUser;
use crate::values::{
    AbsPath, AgeRecipient, BackupTarget, Cidr, Duration, EnvName, FileMode, FirewallPort, Host,
    HostPort, Hostname, HttpUrl, IfName, ImageRef, IpAddr, LogTarget, ModuleName, Owner, Percent,
    PortMap, Portion, RegistryEndpoint, RegistryHost, Schedule, ServiceName, Size, SshKey,
    SysctlKey, SysctlValue, UnitName, UpgradeUrl, UrlPath, VarDir, VolumeMap, WgKey,
};
pub use crate::values::{AlertCondition, AlertMetric, AlertName, AlertOp, MeshTopic};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A whole node configuration (all sources merged, or one source alone).
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// OS settings of the node.
    pub maculaos: Maculaos,
    /// k3s, the node's Kubernetes (configured only where its binary is installed).
    pub k3s: K3s,
    /// The same as `maculaos.network` (plan §4.3 puts it here); `maculaos.network` wins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// `maculaos.mesh` where the guide writes it ("Mesh Roles"): moved there
    /// when the file is read (a file may not have both).
    #[serde(skip_serializing)]
    pub mesh: Option<Mesh>,
    /// `maculaos.monitoring` where the guide writes it ("Remote
    /// Monitoring"): moved there when the file is read.
    #[serde(skip_serializing)]
    pub monitoring: Option<Monitoring>,
    /// `maculaos.alerts` where the guide writes it ("Alerting"): moved
    /// there when the file is read.
    #[serde(skip_serializing)]
    pub alerts: Option<Vec<Alert>>,
    /// `maculaos.updates` where the guide writes it ("Automatic Updates"):
    /// moved there when the file is read.
    #[serde(skip_serializing)]
    pub updates: Option<Updates>,
    /// `maculaos.logging` where the guide writes it ("fluent-bit
    /// (Logging)"): moved there when the file is read.
    #[serde(skip_serializing)]
    pub logging: Option<Logging>,
    /// `maculaos.fleet` where the plan writes it (§4.12.3): moved there
    /// when the file is read.
    #[serde(skip_serializing)]
    pub fleet: Option<Fleet>,
    /// SSH public keys for the admin user `macula`, added to those of `maculaos.ssh.authorized_keys`.
    pub ssh_authorized_keys: Vec<SshKey>,
    /// Files written at every boot (before `boot_cmd`).
    pub write_files: Vec<WriteFile>,
    /// Commands run once per change of this list, after the network is configured.
    pub run_cmd: Vec<Command>,
    /// Commands run at every boot, early, before the network is configured.
    pub boot_cmd: Vec<Command>,
    /// The node's workloads: OCI containers run by podman, one systemd unit
    /// each (`maculaos deploy` writes them to `config.d`).
    pub services: BTreeMap<ServiceName, Service>,
}

/// The `maculaos:` section.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Maculaos {
    /// Hostname; default `macula-XXXX`, XXXX the last four hex digits of the primary MAC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    /// DNS servers used for every interface, besides those DHCP hands out.
    pub dns_nameservers: Vec<IpAddr>,
    /// Node labels (given to k3s as `node-label`).
    pub labels: BTreeMap<String, String>,
    /// Kernel modules loaded at boot.
    pub modules: Vec<ModuleName>,
    /// Kernel parameters, as `sysctl` names them (`net.ipv4.ip_forward: 1`).
    pub sysctl: BTreeMap<SysctlKey, SysctlValue>,
    /// Variables written to `/etc/environment`.
    pub environment: BTreeMap<EnvName, String>,
    /// Network interfaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Time synchronisation.
    pub ntp: Ntp,
    /// SSH access.
    pub ssh: Ssh,
    /// Macula mesh membership (plan §4.4).
    pub mesh: Mesh,
    /// The node's NATS server, the mesh plane (plan §4.9.5).
    pub nats: Nats,
    /// Updates (plan §4.8).
    pub upgrade: Upgrade,
    /// Unattended installation (read by `maculaos install`).
    pub install: Install,
    /// Live mode (plan §4.7).
    pub live: Live,
    /// Service health checks (plan §4.17.2), shown by `maculaos health`.
    pub health: Health,
    /// The hardware watchdog (plan §4.17.1).
    pub watchdog: Watchdog,
    /// Built-in repairs (plan §4.17.4).
    pub auto_heal: AutoHeal,
    /// Scheduled backups (plan §4.13.2).
    pub backup: Backup,
    /// The local health dashboard of the agent (guide "Health Dashboard").
    pub dashboard: Dashboard,
    /// Where podman pulls the images of `services:` from (plan §4.9.2).
    pub registry: Registry,
    /// Network security (plan §4.9.4).
    pub security: Security,
    /// The node's metrics for a Prometheus server (guide "Remote Monitoring").
    pub monitoring: Monitoring,
    /// Edge services (plan §4.9.6): the MQTT broker.
    pub edge: Edge,
    /// The local git server (plan §4.9.1, guide "Embedded Services").
    pub gitops: Gitops,
    /// Conditions over the node's metrics that the health agent watches
    /// (guide "Alerting").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Alert>,
    /// When and how updates are applied unattended (guide "Automatic
    /// Updates"; `upgrade` says where they come from).
    pub updates: Updates,
    /// Forwarding the journal to a central receiver.
    pub logging: Logging,
    /// How `maculaos fleet update` rolls a version out over the realm.
    pub fleet: Fleet,
}

/// `maculaos.fleet` (the plan's top-level `fleet:`): read where the
/// operator runs `maculaos fleet update` (the realm CA's holder), as the
/// rollout's defaults; the command's options win.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Fleet {
    pub update: FleetUpdate,
}

/// How a rollout goes (plan §4.12.3).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FleetUpdate {
    /// `rolling`: every node in turn; `canary`: `canary.percentage` of the
    /// nodes first, the others once enough of those succeeded.
    pub strategy: RolloutStrategy,
    /// Nodes updating at once (between taking a reboot slot and running
    /// the new version healthy for `health_check_wait`): a number, or a
    /// share of the fleet (`10%`, at least one node).
    pub max_unavailable: Portion,
    /// How long a node runs the new version, marked good and with no
    /// failing check, before its slot goes to the next node.
    pub health_check_wait: Duration,
    /// A node whose new version fails its health checks goes back to the
    /// version before by itself (its boot counting) and the version is
    /// never tried on it again. Only `true`: nothing keeps a failing
    /// version running.
    pub auto_rollback: bool,
    pub canary: Canary,
}

impl Default for FleetUpdate {
    fn default() -> FleetUpdate {
        FleetUpdate {
            strategy: RolloutStrategy::Rolling,
            max_unavailable: Portion::Count(1),
            health_check_wait: Duration::from_secs(60),
            auto_rollback: true,
            canary: Canary::default(),
        }
    }
}

/// `rolling` or `canary` (the plan's `blue-green` needs twice the nodes,
/// which an edge site does not have).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RolloutStrategy {
    Rolling,
    Canary,
}

impl std::fmt::Display for RolloutStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RolloutStrategy::Rolling => "rolling",
            RolloutStrategy::Canary => "canary",
        })
    }
}

/// The canary stage of a rollout.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Canary {
    /// The share of the nodes that go first (at least one node).
    pub percentage: Percent,
    /// The share of nodes that must succeed: of the canary nodes before
    /// the others start, and of all of them; below it the rollout stops.
    pub success_threshold: Percent,
}

impl Default for Canary {
    fn default() -> Canary {
        Canary {
            percentage: Percent::known(5),
            success_threshold: Percent::known(95),
        }
    }
}

/// `maculaos.logging` (the guide's top-level `logging:`): the journal sent
/// to a receiver by Debian's systemd-journal-upload, which keeps its
/// place (a cursor on /var): what is logged while the receiver is away
/// arrives once it is back, as long as the journal (kept in memory, so not
/// across a reboot) still holds it.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Logging {
    /// The receiver: `host:port` or `http://host:port` (a
    /// systemd-journal-remote, whose port is usually 19532); unset: the
    /// journal stays on the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_to: Option<LogTarget>,
    /// What is sent: `journal` (the journal's export format, every field
    /// kept; the default). The guide's `json` (Fluentd's forward protocol)
    /// is not built yet and is refused.
    pub format: LogFormat,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Journal,
    Json,
}

/// `maculaos.updates` (the guide's top-level `updates:`): the update check
/// of `maculaos-upgrade-check.timer`, made automatic, on a schedule, with a
/// reboot into the new version.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Updates {
    /// Apply a newer version when the check finds one: the same as
    /// `upgrade.auto_apply` (two different answers are refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub automatic: Option<bool>,
    /// When the check runs: a daily time (`"04:00"`), a systemd
    /// `OnCalendar=` expression or a cron line; unset: 10 minutes after
    /// boot, then daily.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Reboot into the version just applied (default false: it waits for
    /// the next reboot).
    pub auto_reboot: bool,
    /// An address to tell (the guide's `admin@example.com`): accepted, not
    /// sent yet; the updates' events are in the journal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
}

/// One alert (guide "Alerting"): while `condition` holds for `for`, it
/// fires; once it has not held for `for`, it is resolved. Both events go
/// to the journal, and to the mesh on `topic` when the node has a realm.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    pub name: AlertName,
    /// `METRIC OP VALUE`: `disk_usage > 90%`, `memory_usage >= 80%`,
    /// `cpu_usage > 95%`, `load > 4`, `failing_checks > 0`.
    pub condition: AlertCondition,
    /// Where the events are published (`macula.pub.<realm>.TOPIC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<MeshTopic>,
    /// How long the condition must hold before the alert fires, and be
    /// gone before it is resolved (default 1m): no flapping.
    #[serde(default = "Alert::default_hold", rename = "for")]
    pub hold: Duration,
}

impl Alert {
    fn default_hold() -> Duration {
        Duration::from_secs(60)
    }
}

/// `maculaos.edge` (plan §4.9.6).
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Edge {
    /// An MQTT broker for the LAN's devices.
    pub mqtt: Mqtt,
    /// The node's clock, and an NTP server for the LAN.
    pub time_sync: TimeSync,
}

/// `maculaos.edge.time_sync`: chrony keeps the node's clock, from
/// `servers` (or `maculaos.ntp.servers`; neither: Debian's pool), and with
/// `serve_to_lan` answers NTP for the LAN's devices, from its own clock
/// when no server can be reached (a site whose uplink is down keeps one
/// time). NTP is not authenticated: `allow_from` says who may ask.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TimeSync {
    /// Set the clock from NTP servers (default true; false: the node keeps
    /// its clock as it runs, and the agent does not restart chrony).
    pub enabled: bool,
    /// NTP servers (names or addresses); the same list as
    /// `maculaos.ntp.servers`, which may be given instead.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// Serve NTP (UDP 123) to the LAN (default false); the port is opened
    /// in the firewall while this is on.
    pub serve_to_lan: bool,
    /// Networks that may ask for the time; empty (the default): any
    /// address that reaches the node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<Cidr>,
}

impl Default for TimeSync {
    fn default() -> TimeSync {
        TimeSync {
            enabled: true,
            servers: Vec::new(),
            serve_to_lan: false,
            allow_from: Vec::new(),
        }
    }
}

/// `maculaos.edge.mqtt`: Debian's mosquitto. Clients authenticate with a
/// user and password from `users` (kept hashed on the node); anonymous
/// clients only when `allow_anonymous` says so.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Mqtt {
    /// Run the broker (default false).
    pub enabled: bool,
    /// MQTT's TCP port (default 1883), opened in the firewall while enabled.
    pub port: u16,
    /// MQTT over WebSocket, for browsers (default 9001; `null`: none).
    pub websocket_port: Option<u16>,
    /// Clients that may connect, by name and password.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<MqttAccount>,
    /// Let clients connect without a user (default false).
    pub allow_anonymous: bool,
    /// Networks that may reach the ports through the firewall; empty (the
    /// default): any address that reaches the node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<Cidr>,
}

impl Default for Mqtt {
    fn default() -> Mqtt {
        Mqtt {
            enabled: false,
            port: 1883,
            websocket_port: Some(9001),
            users: Vec::new(),
            allow_anonymous: false,
            allow_from: Vec::new(),
        }
    }
}

/// `maculaos.edge.mqtt.users[]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttAccount {
    pub name: MqttUser,
    /// Its password; the node keeps only a salted hash (PBKDF2-SHA512, as
    /// mosquitto_passwd makes it).
    pub password: String,
}

/// `maculaos.gitops`: a git server over SSH (the guide's
/// `git clone ssh://git@NODE:23231/REPO.git`), run by a second sshd that
/// lets the user `git` do nothing but fetch and push repositories. A push
/// to a repository that does not exist creates it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Gitops {
    /// Run the git server (default false).
    pub enabled: bool,
    /// Its SSH port (default 23231), opened in the firewall while enabled.
    pub port: u16,
    /// Where the repositories are kept (default /var/lib/git).
    pub data_path: VarDir,
    /// Keys that may fetch and push; empty: the admin's keys
    /// (`maculaos.ssh.authorized_keys` and `ssh_authorized_keys`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub authorized_keys: Vec<SshKey>,
    /// Networks that may reach the port through the firewall; empty (the
    /// default): any address that reaches the node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<Cidr>,
}

impl Default for Gitops {
    fn default() -> Gitops {
        Gitops {
            enabled: false,
            port: 23231,
            data_path: VarDir::known("/var/lib/git"),
            authorized_keys: Vec::new(),
            allow_from: Vec::new(),
        }
    }
}

/// `maculaos.monitoring` (guide "Remote Monitoring"; the guide writes it at
/// the top level, which is read as if it were here).
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Monitoring {
    /// Metrics in Prometheus's format.
    pub prometheus: Prometheus,
}

/// `maculaos.monitoring.prometheus`: Debian's prometheus-node-exporter
/// serves the machine's metrics and MaculaOS's own (`maculaos_*`: version,
/// slot, updates, health checks, mesh). Not authenticated: the metrics are
/// read-only; `allow_from` says who may reach them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Prometheus {
    /// Serve the metrics (default false).
    pub enabled: bool,
    /// TCP port (default 9100), opened in the firewall while enabled.
    pub port: u16,
    /// Where the metrics are served (default `/metrics`).
    pub path: UrlPath,
    /// Networks that may reach the port through the firewall; empty (the
    /// default): any address that reaches the node.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<Cidr>,
}

impl Default for Prometheus {
    fn default() -> Prometheus {
        Prometheus {
            enabled: false,
            port: 9100,
            path: UrlPath::known("/metrics"),
            allow_from: Vec::new(),
        }
    }
}

/// `maculaos.security` (plan §4.9.4).
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    /// The node's firewall (nftables).
    pub firewall: Firewall,
}

/// `maculaos.security.firewall`: what may reach the node. Besides what is
/// listed here, answers to the node's own traffic, ICMP, DHCP and mDNS
/// come in, and the ports `services:` publish.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Firewall {
    /// Load the firewall (default true); false removes it.
    pub enabled: bool,
    /// What happens to the rest: `drop` (default) or `accept`.
    pub default_policy: FirewallPolicy,
    /// Open the mesh's ports the node's roles need (bootstrap: 4433 and
    /// 6222, gateway: 4433, the realm CA's holder: 4434 for joins).
    pub allow_mesh: bool,
    /// Open SSH (22/tcp, new connections rate-limited per address).
    pub allow_ssh: bool,
    /// More ports: `8080/tcp`, or `{port: 8080/tcp, from: [10.0.0.0/8]}`.
    pub allow: Vec<AllowRule>,
}

impl Default for Firewall {
    fn default() -> Firewall {
        Firewall {
            enabled: true,
            default_policy: FirewallPolicy::Drop,
            allow_mesh: true,
            allow_ssh: true,
            allow: Vec::new(),
        }
    }
}

/// `maculaos.security.firewall.default_policy`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FirewallPolicy {
    #[default]
    Drop,
    Accept,
}

/// One entry of `maculaos.security.firewall.allow`: a port, and the
/// networks that may reach it (none listed: anyone). Written as
/// `8080/tcp` alone or as a map.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllowRule {
    pub port: FirewallPort,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Cidr>,
}

impl JsonSchema for AllowRule {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AllowRule".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let port = g.subschema_for::<FirewallPort>();
        let from = g.subschema_for::<Vec<Cidr>>();
        schemars::json_schema!({
            "description": "A port (`8080/tcp`), or `{port: 8080/tcp, from: [10.0.0.0/8]}`",
            "anyOf": [
                port,
                {
                    "type": "object",
                    "properties": { "port": port, "from": from },
                    "required": ["port"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

impl<'de> Deserialize<'de> for AllowRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AllowRule, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            port: FirewallPort,
            #[serde(default)]
            from: Vec<Cidr>,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AllowRule;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port such as 8080/tcp, or {port: 8080/tcp, from: [10.0.0.0/8]}")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<AllowRule, E> {
                Ok(AllowRule {
                    port: s.parse().map_err(E::custom)?,
                    from: Vec::new(),
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<AllowRule, A::Error> {
                let f = Full::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(AllowRule {
                    port: f.port,
                    from: f.from,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `maculaos.registry`: mirrors, registries without TLS, credentials.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Registry {
    /// Mirrors of a registry, tried in order before the registry itself
    /// (`docker.io: [http://10.0.0.5:5000]`; `http://` for plain HTTP).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub mirrors: BTreeMap<RegistryHost, Vec<RegistryEndpoint>>,
    /// Registries reached over plain HTTP, or over TLS without checking
    /// the certificate (`10.0.0.5:5000`): only on a network you trust.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub insecure: Vec<RegistryHost>,
    /// Credentials by registry (`ghcr.io: {username: me, password: TOKEN}`),
    /// kept in a file only root can read.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub auth: BTreeMap<RegistryHost, RegistryAuth>,
}

/// `maculaos.registry.auth.HOST`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

/// Network interfaces.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// DHCP on every wired interface not listed in `interfaces`.
    pub dhcp: bool,
    /// Per-interface settings.
    pub interfaces: Vec<Interface>,
}

impl Default for Network {
    fn default() -> Network {
        Network {
            dhcp: true,
            interfaces: Vec::new(),
        }
    }
}

/// One interface: DHCP, or static addresses with an optional gateway.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Interface {
    /// Interface name (`eth0`, `enp0s4`; a glob such as `en*` is allowed).
    pub name: String,
    /// Or match the interface by its MAC address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Get an address by DHCP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<bool>,
    /// A static address with its prefix (`192.168.1.100/24`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Cidr>,
    /// More static addresses.
    pub addresses: Vec<Cidr>,
    /// Default gateway for this interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// DNS servers for this interface.
    pub dns: Vec<IpAddr>,
}

impl Interface {
    /// All static addresses, `address` first.
    pub fn all_addresses(&self) -> Vec<&Cidr> {
        self.address.iter().chain(self.addresses.iter()).collect()
    }
    /// DHCP unless told otherwise or given a static address.
    pub fn uses_dhcp(&self) -> bool {
        self.dhcp.unwrap_or(self.all_addresses().is_empty())
    }
}

/// Time synchronisation (chrony; see also `maculaos.edge.time_sync`).
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Ntp {
    /// NTP servers (names or addresses); empty: Debian's pool.
    pub servers: Vec<String>,
}

/// SSH access (guide "Configuration").
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Ssh {
    /// Public keys of the admin user `macula`.
    pub authorized_keys: Vec<SshKey>,
}

/// Macula mesh membership (plan §4.4, guide "Mesh Roles").
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Mesh {
    /// Extra roles; peer is always on.
    pub roles: MeshRoles,
    /// One role, as the guide writes it (`peer`, `bootstrap` or `gateway`); added to `roles`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<MeshRole>,
    /// Realm, in reverse domain notation (`io.macula`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// Peers to join through (also accepted as `bootstrap_nodes`).
    #[serde(alias = "bootstrap_nodes")]
    pub bootstrap_peers: Vec<String>,
    /// `development` (self-signed certificates) or `production` (verified).
    pub tls_mode: TlsMode,
    /// Address other nodes reach a bootstrap node at (`203.0.113.10:4433`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_address: Option<String>,
    /// Gateway STUN port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stun_port: Option<u16>,
    /// Gateway TURN port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_port: Option<u16>,
    /// The encrypted overlay between nodes (guide "WireGuard (VPN)").
    pub wireguard: Wireguard,
}

/// `maculaos.mesh.wireguard`: a WireGuard interface (`wg-macula`) whose
/// peers are the other nodes. Each node has an address on the overlay
/// made from its public key (see `maculaos_wireguard`), so no two nodes
/// need to agree on one beforehand.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Wireguard {
    /// Bring the interface up (default false: it opens a UDP port).
    pub enabled: bool,
    /// The interface's name (also accepted as `mesh_interface`, plan §4.9.4).
    #[serde(alias = "mesh_interface")]
    pub interface: IfName,
    /// The UDP port it listens on (opened in the firewall while enabled).
    pub port: u16,
    /// The node's private key; left out, the node makes one and keeps it
    /// (`/var/lib/maculaos/wireguard/private.key`, never shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<WgKey>,
    /// The node's address on the overlay, with its prefix (default: the
    /// one its public key gives, in the realm's /64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Cidr>,
    /// The other ends.
    pub peers: Vec<WireguardPeer>,
}

impl Default for Wireguard {
    fn default() -> Wireguard {
        Wireguard {
            enabled: false,
            interface: IfName::known("wg-macula"),
            port: 51820,
            private_key: None,
            address: None,
            peers: Vec::new(),
        }
    }
}

/// A node at the other end of the overlay.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WireguardPeer {
    /// Its public key (`wg pubkey`; `maculaos network status` shows a node's).
    pub public_key: WgKey,
    /// Where to reach it (`host:port`); left out, it must reach this node first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<HostPort>,
    /// What it may send from and is sent to (default: its overlay address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<Cidr>,
    /// Seconds between keepalives, for a peer behind NAT (0 or left out: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
}

impl Mesh {
    /// The roles in effect: peer always, plus those toggled on or named.
    pub fn effective_roles(&self) -> Vec<MeshRole> {
        let mut r = vec![MeshRole::Peer];
        if self.roles.bootstrap || self.role == Some(MeshRole::Bootstrap) {
            r.push(MeshRole::Bootstrap);
        }
        if self.roles.gateway || self.role == Some(MeshRole::Gateway) {
            r.push(MeshRole::Gateway);
        }
        r
    }
}

/// The node's NATS server (plan §4.9.5). Other nodes reach it only through
/// the mesh ports (mutual TLS with the realm's certificates); `listen` is
/// for services on this node.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Nats {
    /// Run the server (the mesh needs it; bootstrap and gateway nodes must).
    pub enabled: bool,
    /// Where local clients connect: a loopback address (`127.0.0.1:4222`).
    pub listen: HostPort,
    /// The largest message (`1MB`).
    pub max_payload: Size,
    /// Persistent streams (always on for bootstrap nodes: the realm's).
    pub jetstream: NatsJetStream,
    /// Cluster routes (bootstrap nodes only: they route to each other).
    pub cluster: NatsCluster,
}

impl Default for Nats {
    fn default() -> Nats {
        Nats {
            enabled: true,
            listen: HostPort::known("127.0.0.1:4222"),
            max_payload: Size::known("1M"),
            jetstream: NatsJetStream::default(),
            cluster: NatsCluster::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NatsJetStream {
    /// On a node that is not bootstrap: a JetStream of its own (domain = node name).
    pub enabled: bool,
    /// Where streams are kept.
    pub store_dir: String,
    /// The most disk the streams may use (`1GB`).
    pub max_file: Size,
}

impl Default for NatsJetStream {
    fn default() -> NatsJetStream {
        NatsJetStream {
            enabled: false,
            store_dir: "/var/lib/maculaos/nats/jetstream".into(),
            max_file: Size::known("1G"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NatsCluster {
    /// Only meaningful with the bootstrap role (which turns it on).
    pub enabled: bool,
    /// The port bootstrap nodes route to each other on.
    pub port: u16,
}

impl Default for NatsCluster {
    fn default() -> NatsCluster {
        NatsCluster {
            enabled: false,
            port: 6222,
        }
    }
}

/// The role toggles of plan §4.4.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MeshRoles {
    /// Serve as a DHT entry point for new nodes.
    pub bootstrap: bool,
    /// Relay traffic for peers behind NAT.
    pub gateway: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MeshRole {
    Peer,
    Bootstrap,
    Gateway,
}

impl MeshRole {
    /// The role as the configuration writes it.
    pub fn name(self) -> &'static str {
        match self {
            MeshRole::Peer => "peer",
            MeshRole::Bootstrap => "bootstrap",
            MeshRole::Gateway => "gateway",
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Development,
    Production,
}

/// Updates (plan §4.8).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Upgrade {
    /// `stable`, `beta` or `nightly`.
    pub channel: Channel,
    /// Check for updates at boot and daily (report only).
    pub auto_check: bool,
    /// Apply updates without asking.
    pub auto_apply: bool,
    /// Where updates come from: `github://owner/repo`, `https://…/`, `http://…/` or `file:///…`.
    pub url: UpgradeUrl,
}

impl Default for Upgrade {
    fn default() -> Upgrade {
        Upgrade {
            channel: Channel::Stable,
            auto_check: true,
            auto_apply: false,
            url: UpgradeUrl::default(),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    #[default]
    Stable,
    Beta,
    Nightly,
}

/// Unattended installation (the k3OS names).
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Install {
    /// Disk to install to (`/dev/sda`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Install even if the disk holds partitions.
    pub force: bool,
    /// Reboot when done.
    pub reboot: bool,
    /// Configuration to fetch and store on the installed node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_url: Option<String>,
    /// Ask nothing.
    pub silent: bool,
}

/// Live mode (plan §4.7).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Live {
    /// Keep writes across reboots on a partition labelled `MACULA_PERSIST`.
    pub persistence: bool,
    /// `auto` or a device path.
    pub persistence_device: String,
    /// Size of the persistence partition when it is made (`4G`).
    pub persistence_size: String,
}

impl Default for Live {
    fn default() -> Live {
        Live {
            persistence: false,
            persistence_device: "auto".into(),
            persistence_size: "4G".into(),
        }
    }
}

/// Service health checks (plan §4.17.2).
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Health {
    /// Checks run besides the built-in ones, in this order.
    pub checks: Vec<HealthCheck>,
}

/// One configured health check. Which keys it needs depends on its `type`
/// (checked across keys by [`crate::load::check`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Name shown by `maculaos health`; unique among the checks.
    pub name: String,
    /// `process` or `unit` (a systemd unit is active), `http`, `tcp` or `disk`.
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// The systemd unit (`process`, `unit`); for `http` and `tcp`, the unit
    /// restarted on failure. `.service` is implied without a suffix. Also
    /// accepted as `process`.
    #[serde(default, alias = "process", skip_serializing_if = "Option::is_none")]
    pub unit: Option<UnitName>,
    /// `http`: the URL to GET; 2xx and 3xx pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<HttpUrl>,
    /// `tcp`: the host to connect to (with `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Host>,
    /// `tcp`: the port to connect to (with `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `tcp`: `host:port`, instead of `host` and `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<HostPort>,
    /// `disk`: a path on the filesystem to watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<AbsPath>,
    /// `disk`: fail when the filesystem is this full (default 90%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Percent>,
    /// `disk`: `alert` (default) or `cleanup` (also run the disk cleanup of `auto_heal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<DiskAction>,
    /// `command`: the program and its arguments; it passes when it exits 0
    /// within `timeout` (it is killed after that).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// How often the check runs.
    #[serde(default = "HealthCheck::default_interval")]
    pub interval: Duration,
    /// How long the check may take (http, tcp).
    #[serde(default = "HealthCheck::default_timeout")]
    pub timeout: Duration,
    /// Restart `unit` when the check fails.
    #[serde(default)]
    pub restart_on_failure: bool,
    /// Restarts within `cooldown` before giving up.
    #[serde(default = "HealthCheck::default_max_restarts")]
    pub max_restarts: u32,
    /// After giving up, wait this long since the last restart before trying again.
    #[serde(default = "HealthCheck::default_cooldown")]
    pub cooldown: Duration,
    /// Run the probe only while `unit` is active, else skip it: set for the
    /// checks of `services:` (a service stopped on purpose is not failing,
    /// and one that crashed is systemd's to start again). Not a key.
    #[serde(skip)]
    #[schemars(skip)]
    pub only_while_active: bool,
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_MAX_RESTARTS: u32 = 3;
    pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(300);
    pub const DEFAULT_THRESHOLD: u8 = 90;

    fn default_interval() -> Duration {
        Self::DEFAULT_INTERVAL
    }
    fn default_timeout() -> Duration {
        Self::DEFAULT_TIMEOUT
    }
    fn default_max_restarts() -> u32 {
        Self::DEFAULT_MAX_RESTARTS
    }
    fn default_cooldown() -> Duration {
        Self::DEFAULT_COOLDOWN
    }

    /// The full name of the unit checked or restarted (`k3s` → `k3s.service`).
    pub fn unit_name(&self) -> Option<String> {
        self.unit.as_ref().map(UnitName::unit)
    }

    /// `tcp`: the host and port, from `host` + `port` or from `address`.
    pub fn tcp_target(&self) -> Option<(String, u16)> {
        if let Some(a) = &self.address {
            let (h, p) = a.split();
            return Some((h.to_string(), p));
        }
        Some((self.host.as_ref()?.to_string(), self.port?))
    }

    /// `disk`: the threshold in effect.
    pub fn disk_threshold(&self) -> Percent {
        self.threshold
            .unwrap_or(Percent::known(Self::DEFAULT_THRESHOLD))
    }

    /// `disk`: the action in effect.
    pub fn disk_action(&self) -> DiskAction {
        self.action.unwrap_or_default()
    }
}

/// What a health check looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    /// A systemd unit is active (the seed's name; the same as `unit`).
    Process,
    /// A systemd unit is active.
    Unit,
    /// An HTTP GET answers 2xx or 3xx within `timeout`.
    Http,
    /// A TCP connection opens within `timeout`.
    Tcp,
    /// A filesystem is less full than `threshold`.
    Disk,
    /// A command exits 0 within `timeout`.
    Command,
}

impl std::fmt::Display for CheckType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckType::Process => "process",
            CheckType::Unit => "unit",
            CheckType::Http => "http",
            CheckType::Tcp => "tcp",
            CheckType::Disk => "disk",
            CheckType::Command => "command",
        })
    }
}

/// What a failing `disk` check does besides reporting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskAction {
    /// Report only.
    #[default]
    Alert,
    /// Also clean up (old journal, unused container images).
    Cleanup,
}

/// The hardware watchdog (plan §4.17.1): systemd feeds it, and the machine
/// reboots when it is not fed for `timeout`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Watchdog {
    /// Use a watchdog.
    pub enabled: bool,
    /// The hardware watchdog device.
    pub device: AbsPath,
    /// Reboot when not fed for this long (a number of seconds or a duration).
    pub timeout: Duration,
    /// Use the kernel's software watchdog (softdog) when there is no hardware one.
    pub software_fallback: bool,
}

impl Default for Watchdog {
    fn default() -> Watchdog {
        Watchdog {
            enabled: true,
            device: AbsPath::known("/dev/watchdog"),
            timeout: Duration::from_secs(60),
            software_fallback: true,
        }
    }
}

/// The read-only health dashboard `maculaos agent` serves (page and
/// `GET /api/v1/status`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Dashboard {
    /// Serve it.
    pub enabled: bool,
    /// Address and port; the default keeps it on the node itself. Open it
    /// to the LAN with `0.0.0.0:9090`.
    pub listen: std::net::SocketAddr,
}

impl Default for Dashboard {
    fn default() -> Dashboard {
        Dashboard {
            enabled: true,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// Built-in repairs (plan §4.17.4). The actions are not configurable: disk
/// cleanup, restart of a unit whose health check fails (`restart_on_failure`),
/// and a time sync when the clock is not synchronised.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AutoHeal {
    /// Repair without asking.
    pub enabled: bool,
    /// Clean up when `/var` is this full; the `data-space` health check fails from here.
    pub disk_threshold: Percent,
    /// The disk cleanup shrinks the journal to this size.
    pub journal_max: Size,
    /// Restart systemd-networkd when the `network` check has failed this
    /// long, and wait this long again before the next restart.
    pub network_grace: Duration,
}

impl AutoHeal {
    /// Long enough for DHCP to answer after a link comes up, or for a
    /// cable to be plugged back, before the network stack is restarted.
    pub const DEFAULT_NETWORK_GRACE: Duration = Duration::from_secs(120);
}

impl Default for AutoHeal {
    fn default() -> AutoHeal {
        AutoHeal {
            enabled: true,
            disk_threshold: Percent::known(90),
            journal_max: Size::known("200M"),
            network_grace: AutoHeal::DEFAULT_NETWORK_GRACE,
        }
    }
}

/// Scheduled backups (plan §4.13.2), kept on the node.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Backup {
    /// Make backups on `schedule`.
    pub enabled: bool,
    /// A systemd OnCalendar expression (`daily`), or a cron line `0 2 * * *`.
    pub schedule: Schedule,
    /// How many backups to keep (at least 1).
    #[serde(deserialize_with = "at_least_one")]
    #[schemars(range(min = 1))]
    pub retention: u32,
    /// Where backups go: only `local` (`mesh` and `s3` are not supported yet).
    pub target: BackupTarget,
    /// The directory `local` backups are kept in (outside /var/lib/maculaos, which a factory reset wipes).
    pub dir: AbsPath,
    /// What to back up.
    pub include: Vec<AbsPath>,
    /// What to leave out of `include`.
    pub exclude: Vec<AbsPath>,
    /// Encrypt each backup to these age public keys (`age1…`, or SSH public
    /// keys `ssh-ed25519 …`/`ssh-rsa …`): it is written as `….tar.gz.age`,
    /// and restoring it needs one of the private keys. Empty: not encrypted.
    pub encrypt_to: Vec<AgeRecipient>,
}

impl Default for Backup {
    fn default() -> Backup {
        Backup {
            enabled: false,
            schedule: Schedule::default(),
            retention: 7,
            target: BackupTarget::Local,
            dir: AbsPath::known("/var/lib/maculaos-backups"),
            include: vec![
                AbsPath::known("/var/lib/maculaos"),
                AbsPath::known("/var/lib/data"),
            ],
            exclude: Vec::new(),
            encrypt_to: Vec::new(),
        }
    }
}

fn at_least_one<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom(
            "`retention: 0`: keep at least 1 backup",
        ));
    }
    Ok(n)
}

/// k3s (plan §4.3).
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct K3s {
    /// `server` or `agent`; default: the first of `args`, else `server`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<K3sRole>,
    /// Server to join (agents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    /// Cluster join token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Extra arguments to k3s (`--disable=traefik`).
    pub args: Vec<String>,
    /// Node labels, added to `maculaos.labels`.
    pub labels: BTreeMap<String, String>,
    /// Node taints (`key=value:NoSchedule`).
    pub taints: Vec<String>,
    /// Use the images preloaded on the node (no registry pulls).
    pub airgap: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum K3sRole {
    Server,
    Agent,
}

/// A file written at boot (cloud-init's `write_files`).
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WriteFile {
    /// Absolute path.
    pub path: String,
    /// The content (decoded according to `encoding`).
    pub content: String,
    /// Empty for plain text, or `b64`/`base64`.
    pub encoding: Encoding,
    /// Octal mode, `"0644"` by default.
    pub permissions: FileMode,
    /// `user:group`, `root:root` by default.
    pub owner: Owner,
    /// Append to the file instead of replacing it.
    pub append: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Encoding {
    #[default]
    #[serde(rename = "")]
    Text,
    #[serde(rename = "b64", alias = "base64")]
    Base64,
}

/// One workload (guide "Service Deployment"): a container from `image`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The OCI image (`ghcr.io/mycompany/myservice:latest`; `localhost/NAME:TAG`
    /// for one loaded from an archive).
    pub image: ImageRef,
    /// When to pull the image: `missing` (default: once), `always` (at every
    /// start), `never` (an image loaded from an archive).
    #[serde(default)]
    pub pull: PullPolicy,
    /// The command, instead of the image's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment variables of the container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<EnvName, String>,
    /// Published ports: `8080:80`, `8080:80/udp`, `127.0.0.1:8080:80`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMap>,
    /// Directories under /var mounted into the container
    /// (`/var/lib/maculaos/myservice:/app/data`); made when missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMap>,
    /// Memory limit (`256M`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// CPU limit, in cores (`0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// When systemd starts it again: `always` (default), `on-failure`, `no`.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// A check the health agent runs while the service runs; when it fails,
    /// the agent restarts the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<ServiceHealth>,
}

/// `services.NAME.health`: an HTTP GET, a TCP connection, or a command run
/// inside the container (`podman exec`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceHealth {
    /// `http`, `tcp` or `command`.
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// `http`: the URL to GET on the node (`http://127.0.0.1:8080/health`);
    /// 2xx and 3xx pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<HttpUrl>,
    /// `tcp`: a port on the node (127.0.0.1) that must accept a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `tcp`: `host:port`, instead of `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<HostPort>,
    /// `command`: run in the container; it passes when it exits 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// How often the check runs.
    #[serde(default = "HealthCheck::default_interval")]
    pub interval: Duration,
    /// How long the check may take.
    #[serde(default = "HealthCheck::default_timeout")]
    pub timeout: Duration,
    /// Restarts within `cooldown` before giving up.
    #[serde(default = "HealthCheck::default_max_restarts")]
    pub max_restarts: u32,
    /// After giving up, wait this long since the last restart before trying again.
    #[serde(default = "HealthCheck::default_cooldown")]
    pub cooldown: Duration,
}

impl ServiceHealth {
    /// A check of `kind` with the defaults of every other key (as if only
    /// its `type` had been written).
    pub fn new(kind: CheckType) -> ServiceHealth {
        ServiceHealth {
            kind,
            url: None,
            port: None,
            address: None,
            command: Vec::new(),
            interval: HealthCheck::default_interval(),
            timeout: HealthCheck::default_timeout(),
            max_restarts: HealthCheck::default_max_restarts(),
            cooldown: HealthCheck::default_cooldown(),
        }
    }

    /// The health agent's check for it: named `name`, restarting `unit`; a
    /// command runs after `exec` (`podman exec CONTAINER`).
    pub fn check(&self, name: &str, unit: &str, exec: &[&str]) -> HealthCheck {
        let command = if self.command.is_empty() {
            Vec::new()
        } else {
            exec.iter()
                .map(|s| s.to_string())
                .chain(self.command.iter().cloned())
                .collect()
        };
        let host = (self.kind == CheckType::Tcp && self.port.is_some() && self.address.is_none())
            .then(|| "127.0.0.1".parse().ok())
            .flatten();
        HealthCheck {
            name: name.to_string(),
            kind: self.kind,
            unit: unit.parse().ok(),
            url: self.url.clone(),
            host,
            port: self.port,
            address: self.address.clone(),
            path: None,
            threshold: None,
            action: None,
            command,
            interval: self.interval,
            timeout: self.timeout,
            restart_on_failure: true,
            max_restarts: self.max_restarts,
            cooldown: self.cooldown,
            only_while_active: true,
        }
    }
}

/// `services.NAME.pull`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    #[default]
    Missing,
    Always,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Missing => "missing",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        }
    }
}

/// `services.NAME.restart`, as systemd's `Restart=` names it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    No,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::No => "no",
        }
    }
}

/// A command: one string run by `sh -c`, or a list run as it is.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl Command {
    /// The argv to run.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Command::Argv(a) => a.clone(),
        }
    }
    /// How it is shown in logs.
    pub fn display(&self) -> String {
        match self {
            Command::Shell(s) => s.clone(),
            Command::Argv(a) => a.join(" "),
        }
    }
}

impl Config {
    /// The network section in effect (`maculaos.network` over the top-level one).
    pub fn network(&self) -> Network {
        self.maculaos
            .network
            .clone()
            .or_else(|| self.network.clone())
            .unwrap_or_default()
    }
    /// All SSH keys for the admin user, each once.
    pub fn ssh_keys(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for k in self
            .maculaos
            .ssh
            .authorized_keys
            .iter()
            .chain(self.ssh_authorized_keys.iter())
        {
            if !out.iter().any(|o| o == k.as_str()) {
                out.push(k.as_str().to_string());
            }
        }
        out
    }
    /// The keys that may use the git server: `maculaos.gitops.authorized_keys`,
    /// or the admin's when it lists none.
    pub fn git_keys(&self) -> Vec<String> {
        let own = &self.maculaos.gitops.authorized_keys;
        if own.is_empty() {
            return self.ssh_keys();
        }
        let mut out: Vec<String> = Vec::new();
        for k in own {
            if !out.iter().any(|o| o == k.as_str()) {
                out.push(k.as_str().to_string());
            }
        }
        out
    }
    /// The NTP servers the node asks: `maculaos.edge.time_sync.servers`, or
    /// `maculaos.ntp.servers` (the checks refuse two different lists);
    /// empty: Debian's pool.
    pub fn time_servers(&self) -> &[String] {
        let own = &self.maculaos.edge.time_sync.servers;
        if own.is_empty() {
            &self.maculaos.ntp.servers
        } else {
            own
        }
    }
    /// Whether a newer version is applied when found: `upgrade.auto_apply`
    /// or `updates.automatic`.
    pub fn auto_apply(&self) -> bool {
        self.maculaos.updates.automatic.unwrap_or(false) || self.maculaos.upgrade.auto_apply
    }
    /// Node labels: `maculaos.labels` then `k3s.labels`.
    pub fn node_labels(&self) -> BTreeMap<String, String> {
        let mut l = self.maculaos.labels.clone();
        l.extend(self.k3s.labels.clone());
        l
    }
    /// The k3s role in effect.
    pub fn k3s_role(&self) -> K3sRole {
        self.k3s
            .role
            .unwrap_or_else(|| match self.k3s.args.first().map(String::as_str) {
                Some("agent") => K3sRole::Agent,
                _ => K3sRole::Server,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Problem;
    use std::time::Duration as StdDuration;

    #[test]
    fn a_service_check_made_in_code_is_one_read_with_its_type_only() {
        let read: ServiceHealth = serde_yaml_ng::from_str("type: tcp").unwrap();
        assert_eq!(ServiceHealth::new(CheckType::Tcp), read);
    }

    fn parse(text: &str) -> Config {
        serde_yaml_ng::from_str(text).unwrap()
    }

    fn problem(text: &str) -> String {
        let e = serde_yaml_ng::from_str::<Config>(text).unwrap_err();
        Problem::from_yaml("/x/config.yaml", &e).to_string()
    }

    /// Plan §4.17.2, as written there.
    const SEED_HEALTH: &str = "\
maculaos:
  health:
    checks:
      - name: k3s
        type: process
        process: k3s-server
        restart_on_failure: true
        max_restarts: 3

      - name: mesh
        type: http
        url: http://localhost:8080/health
        interval: 30s
        timeout: 5s
        restart_on_failure: true

      - name: disk
        type: disk
        path: /var/lib
        threshold: 90% # Alert at 90% full
        action: alert # alert or cleanup
";

    #[test]
    fn seed_health_checks() {
        let c = parse(SEED_HEALTH);
        let checks = &c.maculaos.health.checks;
        assert_eq!(checks.len(), 3);
        let k3s = &checks[0];
        assert_eq!((k3s.name.as_str(), k3s.kind), ("k3s", CheckType::Process));
        assert_eq!(k3s.unit_name().as_deref(), Some("k3s-server.service"));
        assert!(k3s.restart_on_failure);
        assert_eq!(k3s.max_restarts, 3);
        assert_eq!(k3s.interval.get(), StdDuration::from_secs(30));
        assert_eq!(k3s.timeout.get(), StdDuration::from_secs(5));
        assert_eq!(k3s.cooldown.get(), StdDuration::from_secs(300));
        let mesh = &checks[1];
        assert_eq!(mesh.kind, CheckType::Http);
        assert_eq!(
            mesh.url.as_ref().map(|u| u.as_str()),
            Some("http://localhost:8080/health")
        );
        let disk = &checks[2];
        assert_eq!(disk.kind, CheckType::Disk);
        assert_eq!(disk.path.as_ref().map(|p| p.as_str()), Some("/var/lib"));
        assert_eq!(disk.disk_threshold().get(), 90);
        assert_eq!(disk.disk_action(), DiskAction::Alert);
    }

    #[test]
    fn every_check_type_and_its_keys() {
        let c = parse(
            "maculaos:
  health:
    checks:
      - {name: net, type: unit, unit: systemd-networkd.service, interval: 1m, cooldown: 10m}
      - {name: api, type: tcp, host: 127.0.0.1, port: 6443, timeout: 500ms}
      - {name: api6, type: tcp, address: '[fd00::1]:6443'}
      - {name: reg, type: tcp, address: 'registry.local:5000', unit: registry}
      - {name: var, type: disk, path: /var, threshold: 80, action: cleanup}
",
        );
        let h = &c.maculaos.health.checks;
        assert_eq!(
            h[0].unit_name().as_deref(),
            Some("systemd-networkd.service")
        );
        assert_eq!(h[0].interval.get(), StdDuration::from_secs(60));
        assert_eq!(h[0].cooldown.get(), StdDuration::from_secs(600));
        assert_eq!(h[1].tcp_target(), Some(("127.0.0.1".into(), 6443)));
        assert_eq!(h[1].timeout.get(), StdDuration::from_millis(500));
        assert_eq!(h[2].tcp_target(), Some(("fd00::1".into(), 6443)));
        assert_eq!(h[3].tcp_target(), Some(("registry.local".into(), 5000)));
        assert_eq!(h[3].unit_name().as_deref(), Some("registry.service"));
        assert_eq!(h[4].disk_threshold().get(), 80);
        assert_eq!(h[4].disk_action(), DiskAction::Cleanup);
    }

    /// Plan §4.17.1, as written there.
    #[test]
    fn seed_watchdog() {
        let c = parse(
            "maculaos:
  watchdog:
    enabled: true
    device: /dev/watchdog # Hardware watchdog
    timeout: 60 # Reboot if not fed for 60s

    # Software watchdog (if no hardware)
    software_fallback: true
",
        );
        assert_eq!(c.maculaos.watchdog, Watchdog::default());
        let c = parse("maculaos:\n  watchdog: {timeout: 2m, device: /dev/watchdog1}\n");
        assert_eq!(
            c.maculaos.watchdog.timeout.get(),
            StdDuration::from_secs(120)
        );
        assert_eq!(c.maculaos.watchdog.device.as_str(), "/dev/watchdog1");
        assert!(c.maculaos.watchdog.enabled && c.maculaos.watchdog.software_fallback);
    }

    #[test]
    fn defaults_of_the_new_sections() {
        let c = Config::default();
        let w = &c.maculaos.watchdog;
        assert!(w.enabled && w.software_fallback);
        assert_eq!(w.device.as_str(), "/dev/watchdog");
        assert_eq!(w.timeout.get(), StdDuration::from_secs(60));
        let a = &c.maculaos.auto_heal;
        assert!(a.enabled);
        assert_eq!(a.disk_threshold.get(), 90);
        assert_eq!(a.journal_max.bytes(), 200 << 20);
        assert_eq!(a.network_grace.get(), StdDuration::from_secs(120));
        let b = &c.maculaos.backup;
        assert!(!b.enabled);
        assert_eq!(b.schedule.on_calendar(), "daily");
        assert_eq!(b.retention, 7);
        assert_eq!(b.target, crate::values::BackupTarget::Local);
        assert_eq!(b.dir.as_str(), "/var/lib/maculaos-backups");
        let inc: Vec<&str> = b.include.iter().map(|p| p.as_str()).collect();
        assert_eq!(inc, ["/var/lib/maculaos", "/var/lib/data"]);
        assert!(b.exclude.is_empty());
        assert!(b.encrypt_to.is_empty());
        assert!(c.maculaos.health.checks.is_empty());
        // An empty section is its defaults.
        let c = parse("maculaos:\n  watchdog: {}\n  auto_heal: {}\n  backup: {}\n  health: {}\n");
        assert_eq!(c, Config::default());
    }

    /// Plan §4.17.4 without its `actions:` block (built in, not configurable).
    #[test]
    fn seed_auto_heal() {
        let c = parse(
            "maculaos:\n  auto_heal:\n    enabled: true\n    disk_threshold: 85%\n    journal_max: 100M\n",
        );
        assert!(c.maculaos.auto_heal.enabled);
        assert_eq!(c.maculaos.auto_heal.disk_threshold.get(), 85);
        assert_eq!(c.maculaos.auto_heal.journal_max.bytes(), 100 << 20);
        let c = parse("maculaos:\n  auto_heal:\n    network_grace: 5m\n");
        assert_eq!(
            c.maculaos.auto_heal.network_grace.get(),
            StdDuration::from_secs(300)
        );
        let p = problem(
            "maculaos:
  auto_heal:
    enabled: true

    actions:
      disk_cleanup:
        trigger: disk_usage > 90%
",
        );
        assert!(
            p.starts_with("/x/config.yaml:5:5: maculaos.auto_heal: `actions` cannot be configured: the auto-heal actions are built in (disk cleanup,"),
            "{p}"
        );
    }

    /// Plan §4.13.2 with `target: local` and without the `mesh:` and `s3:` blocks.
    #[test]
    fn seed_backup() {
        let c = parse(
            "maculaos:
  backup:
    enabled: true
    schedule: \"0 2 * * *\" # Daily at 2 AM
    retention: 7 # Keep 7 backups
    target: local # mesh, s3, local

    # What to backup
    include:
      - /var/lib/maculaos/ # Config, credentials
      - /var/lib/data/ # User data
    exclude:
      - /var/lib/rancher/k3s/agent/containerd/ # Container layers (re-pullable)
",
        );
        let b = &c.maculaos.backup;
        assert!(b.enabled);
        assert_eq!(b.schedule.on_calendar(), "*-*-* 02:00:00");
        assert_eq!(b.retention, 7);
        assert_eq!(b.include.len(), 2);
        assert_eq!(
            b.exclude[0].as_str(),
            "/var/lib/rancher/k3s/agent/containerd/"
        );
        let c = parse("maculaos:\n  backup:\n    schedule: Mon *-*-* 03:30:00\n");
        assert_eq!(
            c.maculaos.backup.schedule.on_calendar(),
            "Mon *-*-* 03:30:00"
        );
    }

    #[test]
    fn backup_encrypt_to() {
        let c = parse(
            "maculaos:
  backup:
    encrypt_to:
      - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB admin@laptop
",
        );
        let to: Vec<&str> = c
            .maculaos
            .backup
            .encrypt_to
            .iter()
            .map(|r| r.as_str())
            .collect();
        assert_eq!(
            to,
            [
                "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB admin@laptop"
            ]
        );
        let text = serde_yaml_ng::to_string(&c).unwrap();
        assert_eq!(parse(&text), c, "{text}");
        let p = problem(
            "maculaos:\n  backup:\n    encrypt_to:\n      - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\n      - AGE-SECRET-KEY-1XYZ\n",
        );
        assert!(
            p.contains("maculaos.backup.encrypt_to: `AGE-SECRET-KEY-1XYZ` is not an age recipient: give a public key"),
            "{p}"
        );
        let p = problem("maculaos:\n  backup:\n    encrypt_to: age1abc\n");
        assert!(p.contains("maculaos.backup.encrypt_to"), "{p}");
    }

    #[test]
    fn seed_backup_targets_not_supported_yet() {
        let p = problem(
            "maculaos:\n  backup:\n    enabled: true\n    target: mesh # mesh, s3, local\n",
        );
        assert_eq!(
            p,
            "/x/config.yaml:3:5: maculaos.backup: backups to `mesh` are not supported yet: only `target: local` is"
        );
        let p = problem("maculaos:\n  backup:\n    target: s3\n");
        assert!(p.contains("backups to `s3` are not supported yet"), "{p}");
        let p = problem("maculaos:\n  backup:\n    target: nfs\n");
        assert!(
            p.contains("`nfs` is not a backup target: only `local` is supported"),
            "{p}"
        );
        let p = problem("maculaos:\n  backup:\n    mesh:\n      replication_factor: 2\n");
        assert_eq!(
            p,
            "/x/config.yaml:3:5: maculaos.backup: `mesh`: backups to mesh peers are not supported yet; only `target: local` is"
        );
        let p = problem("maculaos:\n  backup:\n    s3:\n      bucket: b\n");
        assert!(
            p.contains("`s3`: backups to S3 are not supported yet"),
            "{p}"
        );
    }

    #[test]
    fn value_errors_name_their_line() {
        let cases = [
            ("maculaos:\n  backup:\n    retention: 0\n", "3:5: maculaos.backup: `retention: 0`: keep at least 1 backup"),
            ("maculaos:\n  backup:\n    dir: backups\n", "3:5: maculaos.backup: `backups` is not an absolute path (it must start with /)"),
            ("maculaos:\n  backup:\n    include: [/a, b/c]\n", "3:14: maculaos.backup.include: `b/c` is not an absolute path"),
            ("maculaos:\n  backup:\n    exclude: [/a/../b]\n", "maculaos.backup.exclude: `/a/../b`: a path may not contain `..`"),
            ("maculaos:\n  backup:\n    schedule: '*/5 * * * *'\n", "in a cron line only a number or `*` is supported for the minute"),
            ("maculaos:\n  backup:\n    schedule: '0 2 * * 1'\n", "only `*` for the day of month, month and day of week"),
            ("maculaos:\n  backup:\n    schedule: '0 24 * * *'\n", "the hour `24` is not from 0 to 23"),
            ("maculaos:\n  backup:\n    schedule: '0 2 * *'\n", "looks like a cron line but has 4 fields"),
            ("maculaos:\n  backup:\n    schedule: 'daily; rm -rf /'\n", "is not a schedule"),
            ("maculaos:\n  watchdog:\n    timeout: soon\n", "3:5: maculaos.watchdog: `soon` is not a duration: write a number with a unit"),
            ("maculaos:\n  watchdog:\n    timeout: 0\n", "`0`: a duration must be more than zero"),
            ("maculaos:\n  auto_heal:\n    disk_threshold: 120%\n", "3:5: maculaos.auto_heal: `120%` is not a percentage from 1% to 100%, such as 90%"),
            ("maculaos:\n  auto_heal:\n    disk_threshold: 0%\n", "`0%` is not a percentage"),
            ("maculaos:\n  auto_heal:\n    journal_max: lots\n", "`lots` is not a size such as 200M"),
            ("maculaos:\n  auto_heal:\n    network_grace: 0\n", "3:5: maculaos.auto_heal: `0`: a duration must be more than zero"),
            ("maculaos:\n  auto_heal:\n    network_grace: soon\n", "`soon` is not a duration"),
            ("maculaos:\n  health:\n    checks:\n      - {name: a, type: disk, path: /, threshold: 101%}\n", "4:9: maculaos.health.checks[0]: `101%` is not a percentage"),
            ("maculaos:\n  health:\n    checks:\n      - {name: a, type: http, url: localhost:8080}\n", "is not an http:// or https:// URL"),
            ("maculaos:\n  health:\n    checks:\n      - {name: a, type: unit, unit: 'k3s server'}\n", "`k3s server` is not a systemd unit name"),
            ("maculaos:\n  health:\n    checks:\n      - {name: a, type: tcp, address: localhost}\n", "`localhost` is not an address with a port"),
            ("maculaos:\n  health:\n    checks:\n      - {name: a, type: tcp, host: 'a b', port: 1}\n", "`a b` is neither a host name nor an address"),
            ("maculaos:\n  health:\n    checks:\n      - {name: a, type: unit, unit: x, interval: 30}\n", ""),
            ("maculaos:\n  health:\n    checks:\n      - {name: a, type: unit, unit: x, interval: 1m30}\n", "`1m30` is not a duration"),
            ("maculaos:\n  health:\n    checks:\n      - {name: a, type: socket, unit: x}\n", "4:25: maculaos.health.checks[0].type: unknown value `socket` in `maculaos.health.checks[0].type`; known values here: process, unit, http, tcp, disk"),
            ("maculaos:\n  health:\n    checks:\n      - {name: a, unit: x}\n", "maculaos.health.checks[0]: missing field `type`"),
            ("maculaos:\n  health:\n    checks:\n      - {type: unit, unit: x}\n", "4:9: maculaos.health.checks[0]: missing field `name`"),
        ];
        for (text, want) in cases {
            match serde_yaml_ng::from_str::<Config>(text) {
                Ok(_) => assert!(want.is_empty(), "{text} was accepted, wanted {want}"),
                Err(e) => {
                    let p = Problem::from_yaml("/x/config.yaml", &e).to_string();
                    assert!(
                        !want.is_empty() && p.contains(want),
                        "{text}\n got: {p}\nwant: {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_new_sections_round_trip() {
        let c = parse(SEED_HEALTH);
        let text = serde_yaml_ng::to_string(&c).unwrap();
        assert_eq!(parse(&text), c, "{text}");
        let c = parse("maculaos:\n  backup: {schedule: '30 * * * *', retention: 3}\n  watchdog: {timeout: 90}\n");
        let text = serde_yaml_ng::to_string(&c).unwrap();
        assert!(text.contains("schedule: '*-*-* *:30:00'"), "{text}");
        assert!(text.contains("timeout: 90s"), "{text}");
        assert_eq!(parse(&text), c);
    }

    #[test]
    fn json_schema_has_the_new_sections() {
        let s = crate::json_schema().to_string();
        for key in [
            "\"health\"",
            "\"watchdog\"",
            "\"auto_heal\"",
            "\"backup\"",
            "\"restart_on_failure\"",
            "\"journal_max\"",
            "\"network_grace\"",
        ] {
            assert!(s.contains(key), "{key}");
        }
    }
}
