//! The shape of `config.yaml`: every key a node understands, with the names
//! of the seeds (plan §4.3, §4.4, §4.7, §4.8; guide "Configuration").
//!
//! Every struct refuses unknown keys, so a typo is an error, never a silently
//! ignored setting. Values that have a syntax (hostnames, addresses, SSH keys,
//! file modes…) are checked while they are read, through the newtypes in
//! [`crate::values`]: their errors carry the file, line and column.

use crate::values::{
    Cidr, EnvName, FileMode, Hostname, IpAddr, ModuleName, Owner, SshKey, SysctlKey, SysctlValue,
    UpgradeUrl,
};
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
    /// SSH public keys for the admin user `macula`, added to those of `maculaos.ssh.authorized_keys`.
    pub ssh_authorized_keys: Vec<SshKey>,
    /// Files written at every boot (before `boot_cmd`).
    pub write_files: Vec<WriteFile>,
    /// Commands run once per change of this list, after the network is configured.
    pub run_cmd: Vec<Command>,
    /// Commands run at every boot, early, before the network is configured.
    pub boot_cmd: Vec<Command>,
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
    /// Updates (plan §4.8).
    pub upgrade: Upgrade,
    /// Unattended installation (read by `maculaos install`).
    pub install: Install,
    /// Live mode (plan §4.7).
    pub live: Live,
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

/// Time synchronisation (systemd-timesyncd).
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
