//! Values with a syntax of their own, checked while the YAML is read so that
//! a bad one is reported at its file, line and column.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// A string newtype checked by `$check` (which returns why a value is refused).
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:path, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<$name, String> {
                $check(&s)?;
                Ok($name(s))
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                $name::try_from(s.to_string())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let s = d.deserialize_any(ScalarString($what))?;
                $name::try_from(s).map_err(de::Error::custom)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "description": $what })
            }
        }
    };
}

/// Reads a YAML scalar as a string: `1` and `true` are fine where text is
/// expected (a sysctl value, a hostname made of digits), a list or a map is not.
struct ScalarString(&'static str);

impl Visitor<'_> for ScalarString {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

fn check_hostname(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "`{s}` is not a valid hostname: use letters, digits and '-', at most 63 \
             between dots and 253 in all, not starting or ending with '-'"
        )
    };
    if s.is_empty() || s.len() > 253 {
        return Err(bad());
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

checked_string!(
    /// An RFC 1123 hostname.
    Hostname,
    check_hostname,
    "a hostname (letters, digits, '-')"
);

fn check_ip(s: &str) -> Result<(), String> {
    s.parse::<std::net::IpAddr>()
        .map(|_| ())
        .map_err(|_| format!("`{s}` is not an IPv4 or IPv6 address"))
}

checked_string!(
    /// An IPv4 or IPv6 address.
    IpAddr,
    check_ip,
    "an IPv4 or IPv6 address"
);

fn check_cidr(s: &str) -> Result<(), String> {
    let bad = || format!("`{s}` is not an address with a prefix length, such as 192.168.1.10/24");
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("`{s}`: the prefix length is at most {max}"));
    }
    Ok(())
}

checked_string!(
    /// An address with its prefix length (`192.168.1.10/24`).
    Cidr,
    check_cidr,
    "an address with a prefix length (192.168.1.10/24)"
);

impl Cidr {
    /// The address and the prefix length.
    pub fn split(&self) -> (std::net::IpAddr, u8) {
        let (a, p) = self.0.split_once('/').unwrap_or((&self.0, "0"));
        (
            a.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
            p.parse().unwrap_or(0),
        )
    }
}

/// `tcp` or `udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// `PORT/PROTO` or `LOW-HIGH/PROTO`: ports 1-65535, `tcp` or `udp`.
fn parse_firewall_port(s: &str) -> Result<(u16, u16, Proto), String> {
    let bad = || {
        format!(
            "`{s}` is not a port such as 8080/tcp, 53/udp or 9000-9010/tcp (1-65535, tcp or udp)"
        )
    };
    let (ports, proto) = s.split_once('/').ok_or_else(bad)?;
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return Err(bad()),
    };
    let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if lo == 0 || hi < lo {
        return Err(bad());
    }
    Ok((lo, hi, proto))
}

fn check_firewall_port(s: &str) -> Result<(), String> {
    parse_firewall_port(s).map(|_| ())
}

checked_string!(
    /// A port or a range with its protocol (`8080/tcp`, `9000-9010/udp`).
    FirewallPort,
    check_firewall_port,
    "a port with its protocol, such as 8080/tcp"
);

impl FirewallPort {
    /// The first and last port, and the protocol.
    pub fn range(&self) -> (u16, u16, Proto) {
        parse_firewall_port(&self.0).unwrap_or((1, 1, Proto::Tcp))
    }
}

/// Key types OpenSSH accepts in authorized_keys.
pub const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

fn check_ssh_key(s: &str) -> Result<(), String> {
    let short: String = s.chars().take(40).collect();
    if s.contains('\n') {
        return Err(format!(
            "`{short}…` holds a line break: give one key per list item"
        ));
    }
    let words: Vec<&str> = s.split_whitespace().collect();
    let Some(i) = words.iter().position(|w| SSH_KEY_TYPES.contains(w)) else {
        return Err(format!(
            "`{short}` is not an SSH public key: it should start with a key type \
             such as ssh-ed25519 (copy it from ~/.ssh/id_ed25519.pub)"
        ));
    };
    let b64 = words.get(i + 1).copied().unwrap_or("");
    let b64_ok = b64.len() >= 16
        && b64
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='));
    if !b64_ok {
        return Err(format!(
            "`{short}`: the key data after `{}` is missing or not base64",
            words[i]
        ));
    }
    Ok(())
}

checked_string!(
    /// An SSH public key line (`ssh-ed25519 AAAA… comment`).
    SshKey,
    check_ssh_key,
    "an SSH public key (ssh-ed25519 AAAA… comment)"
);

fn check_module(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a kernel module name (letters, digits, '_' and '-')"
        ))
    }
}

checked_string!(
    /// A kernel module name.
    ModuleName,
    check_module,
    "a kernel module name"
);

fn check_sysctl_key(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split(['.', '/']).collect();
    let ok = parts.len() >= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a sysctl name such as net.ipv4.ip_forward"
        ))
    }
}

checked_string!(
    /// A sysctl name (`net.ipv4.ip_forward`).
    SysctlKey,
    check_sysctl_key,
    "a sysctl name (net.ipv4.ip_forward)"
);

fn check_sysctl_value(s: &str) -> Result<(), String> {
    if s.contains('\n') {
        Err("a sysctl value is one line".into())
    } else {
        Ok(())
    }
}

checked_string!(
    /// A sysctl value (numbers and words are both fine).
    SysctlValue,
    check_sysctl_value,
    "a sysctl value"
);

fn check_env_name(s: &str) -> Result<(), String> {
    let mut c = s.chars();
    let ok = c
        .next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a variable name (letters, digits and '_', not starting with a digit)"
        ))
    }
}

checked_string!(
    /// An environment variable name.
    EnvName,
    check_env_name,
    "an environment variable name"
);

fn check_owner(s: &str) -> Result<(), String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 32
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    let (u, g) = s.split_once(':').unwrap_or((s, ""));
    if name_ok(u) && (g.is_empty() && !s.contains(':') || name_ok(g)) {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not an owner: write `user` or `user:group`"
        ))
    }
}

checked_string!(
    /// `user` or `user:group`.
    Owner,
    check_owner,
    "user or user:group"
);

impl Default for Owner {
    fn default() -> Owner {
        Owner("root:root".into())
    }
}

impl Owner {
    /// The user and group names (the group defaults to the user's name).
    pub fn split(&self) -> (&str, &str) {
        self.0.split_once(':').unwrap_or((&self.0, &self.0))
    }
}

/// The update sources of plan §4.8.
pub const DEFAULT_UPGRADE_URL: &str = "github://macula-io/macula-os";

fn check_upgrade_url(s: &str) -> Result<(), String> {
    if let Some(rest) = s.strip_prefix("github://") {
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        if parts.len() == 2 && parts.iter().all(|p| !p.is_empty()) {
            return Ok(());
        }
        return Err(format!("`{s}`: write github://OWNER/REPO"));
    }
    let host_ok = |rest: &str| !rest.is_empty() && !rest.starts_with('/');
    if let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    {
        if host_ok(rest) {
            return Ok(());
        }
    }
    if s.starts_with("file:///") {
        return Ok(());
    }
    Err(format!(
        "`{s}` is not an update source: use github://OWNER/REPO, https://HOST/PATH/, \
         http://HOST/PATH/ or file:///DIR/"
    ))
}

checked_string!(
    /// Where updates come from.
    UpgradeUrl,
    check_upgrade_url,
    "github://OWNER/REPO, https://…/, http://…/ or file:///…"
);

impl Default for UpgradeUrl {
    fn default() -> UpgradeUrl {
        UpgradeUrl(DEFAULT_UPGRADE_URL.into())
    }
}

/// An octal file mode. Written as a quoted string (`"0644"`); an unquoted
/// `0644` or `644`, which YAML reads as a decimal number, is taken digit for
/// digit as octal too, since that is what everyone means by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl Default for FileMode {
    fn default() -> FileMode {
        FileMode(0o644)
    }
}

impl FileMode {
    fn parse(s: &str) -> Result<FileMode, String> {
        let digits = s.trim_start_matches("0o");
        match u32::from_str_radix(digits, 8) {
            Ok(m) if !digits.is_empty() && m <= 0o7777 => Ok(FileMode(m)),
            _ => Err(format!(
                "`{s}` is not a file mode: write octal digits in quotes, such as \"0644\""
            )),
        }
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FileMode, D::Error> {
        let s = d.deserialize_any(ScalarString("an octal file mode such as \"0644\""))?;
        FileMode::parse(&s).map_err(de::Error::custom)
    }
}

impl JsonSchema for FileMode {
    fn schema_name() -> Cow<'static, str> {
        "FileMode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["string", "integer"],
            "description": "octal file mode, such as \"0644\"",
            "pattern": "^(0o)?[0-7]{1,4}$"
        })
    }
}

// ---------------------------------------------------------------------------
// Health checks, watchdog, auto-heal and backup (plan §4.13.2, §4.17).

fn check_abs_path(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!(
            "`{s}` is not an absolute path (it must start with /)"
        ));
    }
    if s.contains(['\n', '\0']) {
        return Err("a path is one line".into());
    }
    if s.split('/').any(|c| c == "..") {
        return Err(format!("`{s}`: a path may not contain `..`"));
    }
    Ok(())
}

checked_string!(
    /// An absolute path (`/var/lib/data`).
    AbsPath,
    check_abs_path,
    "an absolute path"
);

impl AbsPath {
    /// A path known to be good (the defaults).
    pub(crate) fn known(s: &str) -> AbsPath {
        AbsPath(s.to_string())
    }
    pub fn as_path(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

fn check_url_path(s: &str) -> Result<(), String> {
    let ok = s.len() > 1
        && s.len() <= 200
        && s.starts_with('/')
        && !s.contains("//")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '.' | '_' | '~'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a URL path such as /metrics (a '/' then letters, digits and \
             '/-._~', no query, not `/` alone)"
        ))
    }
}

checked_string!(
    /// The path part of a URL (`/metrics`).
    UrlPath,
    check_url_path,
    "a URL path (/metrics)"
);

impl UrlPath {
    /// A path known to be good (the defaults).
    pub(crate) fn known(s: &str) -> UrlPath {
        UrlPath(s.to_string())
    }
}

fn check_mqtt_user(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not an MQTT user name: 1 to 64 letters, digits and '-._@'"
        ))
    }
}

checked_string!(
    /// The name of an MQTT broker's user (`sensor-1`).
    MqttUser,
    check_mqtt_user,
    "an MQTT user name (letters, digits, '-._@')"
);

fn check_var_dir(s: &str) -> Result<(), String> {
    let ok = s.len() > "/var/".len()
        && s.len() <= 200
        && s.starts_with("/var/")
        && !s.ends_with('/')
        && !s.contains("//")
        && !s.split('/').any(|part| part == "." || part == "..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a directory under /var (such as /var/lib/git): only /var \
             survives updates; letters, digits and '/-._', no `..`"
        ))
    }
}

checked_string!(
    /// A directory on the data partition (`/var/lib/git`).
    VarDir,
    check_var_dir,
    "a directory under /var (/var/lib/git)"
);

impl VarDir {
    /// A directory known to be good (the defaults).
    pub(crate) fn known(s: &str) -> VarDir {
        VarDir(s.to_string())
    }
}

fn check_alert_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not an alert name: 1 to 64 letters, digits, '-' and '_' (disk_full)"
        ))
    }
}

checked_string!(
    /// An alert's name (`disk_full`).
    AlertName,
    check_alert_name,
    "an alert name (letters, digits, '-', '_')"
);

fn check_mesh_topic(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 200
        && s.split('.').all(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a mesh topic such as io.mycompany.alerts.disk_full: words of \
             letters, digits, '-' and '_' joined by '.', no wildcards"
        ))
    }
}

checked_string!(
    /// A topic of the mesh's pub/sub (`io.mycompany.alerts.disk_full`),
    /// published on `macula.pub.<realm>.<topic>`.
    MeshTopic,
    check_mesh_topic,
    "a mesh topic (io.mycompany.alerts.disk_full)"
);

/// What an alert condition looks at (guide "Alerting").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertMetric {
    /// The data partition (/var), percent used.
    DiskUsage,
    /// Memory in use (not available without swapping), percent.
    MemoryUsage,
    /// The CPUs' busy time since the previous evaluation, percent.
    CpuUsage,
    /// The 1-minute load average.
    Load,
    /// How many health checks fail.
    FailingChecks,
}

impl AlertMetric {
    pub const ALL: [(&'static str, AlertMetric); 5] = [
        ("disk_usage", AlertMetric::DiskUsage),
        ("memory_usage", AlertMetric::MemoryUsage),
        ("cpu_usage", AlertMetric::CpuUsage),
        ("load", AlertMetric::Load),
        ("failing_checks", AlertMetric::FailingChecks),
    ];
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("?", |(n, _)| n)
    }
    /// Whether its values are percentages (`90%`).
    pub fn percent(self) -> bool {
        matches!(
            self,
            AlertMetric::DiskUsage | AlertMetric::MemoryUsage | AlertMetric::CpuUsage
        )
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertOp {
    Above,
    AtLeast,
    Below,
    AtMost,
}

impl AlertOp {
    pub fn symbol(self) -> &'static str {
        match self {
            AlertOp::Above => ">",
            AlertOp::AtLeast => ">=",
            AlertOp::Below => "<",
            AlertOp::AtMost => "<=",
        }
    }
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            AlertOp::Above => value > threshold,
            AlertOp::AtLeast => value >= threshold,
            AlertOp::Below => value < threshold,
            AlertOp::AtMost => value <= threshold,
        }
    }
}

/// `disk_usage > 90%`: a metric, a comparison and a threshold.
fn parse_alert_condition(s: &str) -> Result<(AlertMetric, AlertOp, f64), String> {
    let names: Vec<&str> = AlertMetric::ALL.iter().map(|(n, _)| *n).collect();
    let bad = |why: String| {
        format!(
            "`{s}` is not an alert condition such as `disk_usage > 90%`: {why} (metrics: {}; \
             comparisons: > >= < <=)",
            names.join(", ")
        )
    };
    let t = s.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(t.len());
    let (metric, rest) = t.split_at(end);
    let metric = AlertMetric::ALL
        .iter()
        .find(|(n, _)| *n == metric)
        .map(|(_, m)| *m)
        .ok_or_else(|| bad(format!("no metric `{metric}`")))?;
    let rest = rest.trim_start();
    let (op, rest) = [
        (">=", AlertOp::AtLeast),
        ("<=", AlertOp::AtMost),
        (">", AlertOp::Above),
        ("<", AlertOp::Below),
    ]
    .iter()
    .find_map(|(sym, op)| rest.strip_prefix(sym).map(|r| (*op, r.trim())))
    .ok_or_else(|| bad("no comparison after the metric".into()))?;
    let (number, pct) = match rest.strip_suffix('%') {
        Some(n) => (n.trim(), true),
        None => (rest, false),
    };
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| bad(format!("`{rest}` is not a number")))?;
    if pct && !metric.percent() {
        return Err(bad(format!("{} is not a percentage", metric.name())));
    }
    if metric.percent() && !(0.0..=100.0).contains(&value) {
        return Err(bad(format!("{value}% is not between 0 and 100")));
    }
    Ok((metric, op, value))
}

checked_string!(
    /// An alert's condition (`disk_usage > 90%`).
    AlertCondition,
    check_alert_condition,
    "an alert condition (disk_usage > 90%)"
);

fn check_alert_condition(s: &str) -> Result<(), String> {
    parse_alert_condition(s).map(|_| ())
}

impl AlertCondition {
    /// Its metric, comparison and threshold (checked when it was read).
    pub fn parts(&self) -> (AlertMetric, AlertOp, f64) {
        parse_alert_condition(&self.0).unwrap_or((AlertMetric::Load, AlertOp::Above, f64::INFINITY))
    }
}

/// Suffixes of systemd unit types: a name without one is a service.
const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".target",
    ".timer",
    ".mount",
    ".automount",
    ".path",
    ".swap",
    ".slice",
    ".scope",
    ".device",
];

fn check_unit_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '@' | '\\'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a systemd unit name such as k3s or k3s.service \
             (letters, digits, ':', '_', '.', '-', '@')"
        ))
    }
}

checked_string!(
    /// A systemd unit (`k3s`, `k3s.service`); a name without a unit suffix is a service.
    UnitName,
    check_unit_name,
    "a systemd unit name (.service implied)"
);

impl UnitName {
    /// The full unit name: `.service` added when the name has no unit suffix.
    pub fn unit(&self) -> String {
        if UNIT_SUFFIXES.iter().any(|s| self.0.ends_with(s)) {
            self.0.clone()
        } else {
            format!("{}.service", self.0)
        }
    }
}

fn check_http_url(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !s.contains(char::is_whitespace) => {
            Ok(())
        }
        _ => Err(format!(
            "`{s}` is not an http:// or https:// URL such as http://localhost:8080/health"
        )),
    }
}

checked_string!(
    /// An `http://` or `https://` URL.
    HttpUrl,
    check_http_url,
    "an http:// or https:// URL"
);

fn check_host(s: &str) -> Result<(), String> {
    if check_hostname(s).is_ok() || check_ip(s).is_ok() {
        Ok(())
    } else {
        Err(format!("`{s}` is neither a host name nor an address"))
    }
}

checked_string!(
    /// A host name or an IP address.
    Host,
    check_host,
    "a host name or an IP address"
);

/// `host:port` or `[v6 address]:port` → the host and the port.
fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let bad =
        || format!("`{s}` is not an address with a port, such as localhost:6443 or [fd00::1]:6443");
    let (host, port) = match s.strip_prefix('[') {
        Some(v6) => {
            let (h, rest) = v6.split_once(']').ok_or_else(bad)?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad());
            }
            (h, rest.strip_prefix(':').ok_or_else(bad)?)
        }
        None => {
            let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
            // An IPv6 address needs its brackets: `fd00::1:80` is ambiguous.
            if h.contains(':') {
                return Err(bad());
            }
            check_host(h).map_err(|_| bad())?;
            (h, p)
        }
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host, p)),
        _ => Err(bad()),
    }
}

fn check_host_port(s: &str) -> Result<(), String> {
    split_host_port(s).map(|_| ())
}

checked_string!(
    /// `host:port` (`localhost:6443`, `[fd00::1]:6443`).
    HostPort,
    check_host_port,
    "host:port"
);

impl HostPort {
    pub(crate) fn known(s: &str) -> HostPort {
        HostPort(s.to_string())
    }
    /// The host (without brackets) and the port.
    pub fn split(&self) -> (&str, u16) {
        split_host_port(&self.0).unwrap_or((&self.0, 0))
    }
}

/// A log receiver: `host:port` or `http://host:port` (the scheme is the
/// only one built: journal export over HTTP, what systemd-journal-remote
/// reads).
fn check_log_target(s: &str) -> Result<(), String> {
    if s.starts_with("https://") {
        return Err(format!(
            "`{s}`: sending the journal over https (which needs the receiver's CA and a client \
             certificate) is not built yet; use http://HOST:19532 on a trusted network or \
             over the WireGuard overlay"
        ));
    }
    let rest = log_target_host_port(s);
    if rest.contains("://") || split_host_port(rest).is_err() {
        return Err(format!(
            "`{s}` is not a log receiver: write host:port or http://host:port, \
             such as http://logs.example.com:19532"
        ));
    }
    Ok(())
}

/// `host:port` of a log target, without `http://` and a trailing `/`.
fn log_target_host_port(s: &str) -> &str {
    let rest = s.strip_prefix("http://").unwrap_or(s);
    rest.strip_suffix('/').unwrap_or(rest)
}

checked_string!(
    /// Where the journal is sent: `host:port` or `http://host:port`.
    LogTarget,
    check_log_target,
    "host:port or http://host:port"
);

impl LogTarget {
    /// The receiver's URL: `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", log_target_host_port(&self.0))
    }
}

/// `1M` and `1MB` are the same size (the seeds write both).
fn without_b(s: &str) -> &str {
    match s.strip_suffix('B') {
        Some(r) if r.ends_with(['K', 'M', 'G', 'T']) => r,
        _ => s,
    }
}

fn check_size(s: &str) -> Result<(), String> {
    let s = without_b(s);
    let digits = s.strip_suffix(['K', 'M', 'G', 'T']).unwrap_or(s);
    match digits.parse::<u64>() {
        Ok(n) if n > 0 && digits.chars().all(|c| c.is_ascii_digit()) => Ok(()),
        _ => Err(format!(
            "`{s}` is not a size such as 200M or 1G (a number of bytes, or K, M, G, T)"
        )),
    }
}

checked_string!(
    /// A size in bytes with an optional K, M, G or T (powers of 1024), as journald writes it.
    Size,
    check_size,
    "a size such as 200M or 1G"
);

impl Size {
    pub(crate) fn known(s: &str) -> Size {
        Size(s.to_string())
    }
    /// The size in bytes.
    pub fn bytes(&self) -> u64 {
        let s = without_b(&self.0);
        let (digits, shift) = match s.as_bytes().last() {
            Some(b'K') => (&s[..s.len() - 1], 10),
            Some(b'M') => (&s[..s.len() - 1], 20),
            Some(b'G') => (&s[..s.len() - 1], 30),
            Some(b'T') => (&s[..s.len() - 1], 40),
            _ => (s, 0),
        };
        digits
            .parse::<u64>()
            .unwrap_or(0)
            .saturating_mul(1u64 << shift)
    }
}

/// A length of time: a number with a unit (`500ms`, `30s`, `5m`, `2h`,
/// `1d`), several run together (`1m30s`), or a bare number of seconds (`60`).
/// Never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_secs(s: u64) -> Duration {
        Duration(std::time::Duration::from_secs(s))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }

    pub fn parse(s: &str) -> Result<Duration, String> {
        let bad = || {
            format!(
                "`{s}` is not a duration: write a number with a unit, such as 30s, 5m or 1h \
                 (ms, s, m, h, d; a bare number is seconds)"
            )
        };
        let text = s.trim();
        let mut ms: u64 = 0;
        if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
            let secs: u64 = text.parse().map_err(|_| bad())?;
            ms = secs.checked_mul(1000).ok_or_else(bad)?;
        } else {
            let mut rest = text;
            if rest.is_empty() {
                return Err(bad());
            }
            while !rest.is_empty() {
                let n_end = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
                let u_end = rest[n_end..]
                    .find(|c: char| !c.is_ascii_alphabetic())
                    .map_or(rest.len(), |e| n_end + e);
                let n: u64 = rest[..n_end].parse().map_err(|_| bad())?;
                let unit: u64 = match &rest[n_end..u_end] {
                    "ms" => 1,
                    "s" | "sec" => 1000,
                    "m" | "min" => 60_000,
                    "h" => 3_600_000,
                    "d" => 86_400_000,
                    _ => return Err(bad()),
                };
                let part = n.checked_mul(unit).ok_or_else(bad)?;
                ms = ms.checked_add(part).ok_or_else(bad)?;
                rest = &rest[u_end..];
            }
        }
        if ms == 0 {
            return Err(format!("`{s}`: a duration must be more than zero"));
        }
        Ok(Duration(std::time::Duration::from_millis(ms)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let s = ms / 1000;
        match s {
            _ if s.is_multiple_of(86_400) => write!(f, "{}d", s / 86_400),
            _ if s.is_multiple_of(3_600) => write!(f, "{}h", s / 3_600),
            _ if s.is_multiple_of(60) => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = d.deserialize_any(ScalarString("a duration such as 30s or 5m"))?;
        Duration::parse(&s).map_err(de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["string", "integer"],
            "description": "a duration such as 30s, 5m, 1h30m (ms, s, m, h, d), or a number of seconds",
            "pattern": "^([0-9]+|([0-9]+(ms|s|sec|m|min|h|d))+)$"
        })
    }
}

/// A percentage from 1 to 100 (`90%`; a bare `90` is the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(u8);

impl Percent {
    pub fn new(p: u8) -> Result<Percent, String> {
        if (1..=100).contains(&p) {
            Ok(Percent(p))
        } else {
            Err(format!("`{p}%` is not a percentage from 1% to 100%"))
        }
    }

    pub(crate) const fn known(p: u8) -> Percent {
        Percent(p)
    }

    pub fn get(self) -> u8 {
        self.0
    }

    pub fn parse(s: &str) -> Result<Percent, String> {
        let digits = s.trim();
        let digits = digits.strip_suffix('%').unwrap_or(digits).trim_end();
        match digits.parse::<u8>() {
            Ok(p) if digits.chars().all(|c| c.is_ascii_digit()) && (1..=100).contains(&p) => {
                Ok(Percent(p))
            }
            _ => Err(format!(
                "`{s}` is not a percentage from 1% to 100%, such as 90%"
            )),
        }
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Percent, D::Error> {
        let s = d.deserialize_any(ScalarString("a percentage such as 90%"))?;
        Percent::parse(&s).map_err(de::Error::custom)
    }
}

impl JsonSchema for Percent {
    fn schema_name() -> Cow<'static, str> {
        "Percent".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["string", "integer"],
            "description": "a percentage from 1% to 100%, such as 90%",
            "pattern": "^[0-9]{1,3}%?$"
        })
    }
}

/// A number of nodes (`2`), or a share of a fleet (`10%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Portion {
    Count(u32),
    Share(Percent),
}

impl Portion {
    pub fn parse(s: &str) -> Result<Portion, String> {
        let t = s.trim();
        if t.ends_with('%') {
            return Percent::parse(t).map(Portion::Share);
        }
        match t.parse::<u32>() {
            Ok(n) if n > 0 && t.chars().all(|c| c.is_ascii_digit()) => Ok(Portion::Count(n)),
            _ => Err(format!(
                "`{s}` is neither a number of nodes (at least 1) nor a share of them such as 10%"
            )),
        }
    }

    /// How many of `n` nodes: a share rounds down, but is at least one.
    pub fn of(self, n: usize) -> u32 {
        match self {
            Portion::Count(c) => c,
            Portion::Share(p) => u32::try_from((n * usize::from(p.get())) / 100)
                .unwrap_or(u32::MAX)
                .max(1),
        }
    }
}

impl fmt::Display for Portion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Portion::Count(c) => write!(f, "{c}"),
            Portion::Share(p) => write!(f, "{p}"),
        }
    }
}

impl Serialize for Portion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Portion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Portion, D::Error> {
        let s = d.deserialize_any(ScalarString("a number of nodes, or a share such as 10%"))?;
        Portion::parse(&s).map_err(de::Error::custom)
    }
}

impl JsonSchema for Portion {
    fn schema_name() -> Cow<'static, str> {
        "Portion".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["string", "integer"],
            "description": "a number of nodes (at least 1), or a share of them such as 10%",
            "pattern": "^[0-9]+%?$"
        })
    }
}

/// When backups run: a systemd `OnCalendar=` expression (`daily`,
/// `*-*-* 02:00:00`), or a five-field cron line whose minute and hour are a
/// number or `*` and whose day, month and weekday are `*` (`0 2 * * *`),
/// turned into the `OnCalendar=` expression it means.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Schedule(String);

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule("daily".into())
    }
}

/// A field of a cron line that could be one: digits and `* / , -`.
fn cron_like(field: &str) -> bool {
    field
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '*' | '/' | ',' | '-'))
}

impl Schedule {
    /// The `OnCalendar=` expression.
    pub fn on_calendar(&self) -> &str {
        &self.0
    }

    pub fn parse(s: &str) -> Result<Schedule, String> {
        let text = s.trim();
        let fields: Vec<&str> = text.split_whitespace().collect();
        if let Some(macro_name) = text.strip_prefix('@') {
            return match macro_name {
                "hourly" | "daily" | "weekly" | "monthly" | "yearly" => {
                    Ok(Schedule(macro_name.into()))
                }
                "midnight" => Ok(Schedule("daily".into())),
                "annually" => Ok(Schedule("yearly".into())),
                _ => Err(format!(
                    "`{s}` is not a schedule: use @hourly, @daily, @weekly, @monthly or @yearly"
                )),
            };
        }
        if fields.len() == 5 && fields.iter().all(|f| cron_like(f)) {
            return Self::from_cron(s, &fields);
        }
        if fields.len() >= 3 && fields.iter().all(|f| cron_like(f)) {
            return Err(format!(
                "`{s}` looks like a cron line but has {} fields; cron has 5 \
                 (minute hour day-of-month month day-of-week), such as `0 2 * * *`",
                fields.len()
            ));
        }
        let ok = !text.is_empty()
            && text.len() <= 256
            && text.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, ' ' | '*' | ':' | '-' | ',' | '.' | '/' | '~' | '+' | '_')
            });
        if !ok {
            return Err(format!(
                "`{s}` is not a schedule: write a systemd OnCalendar expression such as \
                 `daily` or `*-*-* 02:00:00`, or a cron line such as `0 2 * * *`"
            ));
        }
        Ok(Schedule(fields.join(" ")))
    }

    fn from_cron(s: &str, f: &[&str]) -> Result<Schedule, String> {
        let unsupported = || {
            format!(
                "`{s}`: in a cron line only a number or `*` is supported for the minute and \
                 the hour, and only `*` for the day of month, month and day of week; write a \
                 systemd OnCalendar expression instead, such as `Mon *-*-* 02:00:00`"
            )
        };
        let part = |field: &str, max: u32, what: &str| -> Result<String, String> {
            if field == "*" {
                return Ok("*".into());
            }
            if !field.chars().all(|c| c.is_ascii_digit()) {
                return Err(unsupported());
            }
            match field.parse::<u32>() {
                Ok(n) if n <= max => Ok(format!("{n:02}")),
                _ => Err(format!(
                    "`{s}`: the {what} `{field}` is not from 0 to {max}"
                )),
            }
        };
        let minute = part(f[0], 59, "minute")?;
        let hour = part(f[1], 23, "hour")?;
        if f[2..].iter().any(|x| *x != "*") {
            return Err(unsupported());
        }
        Ok(Schedule(format!("*-*-* {hour}:{minute}:00")))
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Schedule, D::Error> {
        let s = d.deserialize_any(ScalarString(
            "a systemd OnCalendar expression or a cron line",
        ))?;
        Schedule::parse(&s).map_err(de::Error::custom)
    }
}

impl JsonSchema for Schedule {
    fn schema_name() -> Cow<'static, str> {
        "Schedule".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "a systemd OnCalendar expression (daily, *-*-* 02:00:00) or a cron line \
                            with a number or * for minute and hour and * for the rest (0 2 * * *)"
        })
    }
}

/// Where backups go. Only `local` exists; the seed's `mesh` and `s3` are
/// refused with a message saying so, not taken for `local`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackupTarget {
    /// A directory on the node (`backup.dir`).
    #[default]
    Local,
}

impl BackupTarget {
    pub fn parse(s: &str) -> Result<BackupTarget, String> {
        match s {
            "local" => Ok(BackupTarget::Local),
            "mesh" | "s3" => Err(format!(
                "backups to `{s}` are not supported yet: only `target: local` is"
            )),
            _ => Err(format!(
                "`{s}` is not a backup target: only `local` is supported (`mesh` and `s3` \
                 are not supported yet)"
            )),
        }
    }
}

impl fmt::Display for BackupTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupTarget::Local => "local",
        })
    }
}

impl Serialize for BackupTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for BackupTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BackupTarget, D::Error> {
        let s = d.deserialize_any(ScalarString("a backup target (local)"))?;
        BackupTarget::parse(&s).map_err(de::Error::custom)
    }
}

impl JsonSchema for BackupTarget {
    fn schema_name() -> Cow<'static, str> {
        "BackupTarget".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "enum": ["local"],
            "description": "where backups go: only local (mesh and s3 are not supported yet)"
        })
    }
}

/// What an age recipient may start with besides `age1`: the SSH key types
/// `age` itself encrypts to (it refuses ECDSA and security keys).
const AGE_SSH_TYPES: &[&str] = &["ssh-ed25519", "ssh-rsa"];

/// The characters of bech32 data, in the order of their values.
const BECH32: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

/// An age public key (`age1` and 58 bech32 characters) or an SSH public key
/// `age` accepts. The bech32 checksum is checked too: a key cut short or
/// mistyped while copying is refused here, not at 2 a.m. by the backup.
fn check_age_recipient(s: &str) -> Result<(), String> {
    let first = s.split_whitespace().next().unwrap_or_default();
    if AGE_SSH_TYPES.contains(&first) {
        return check_ssh_key(s);
    }
    if SSH_KEY_TYPES.contains(&first) {
        return Err(format!(
            "`{first}` keys cannot be used by age: give an age1… key, or an ssh-ed25519 \
             or ssh-rsa public key"
        ));
    }
    let short: String = s.chars().take(70).collect();
    let what = "give a public key (age1…: `age-keygen -y KEYFILE` prints it) or an \
                ssh-ed25519 or ssh-rsa public key";
    if !s.starts_with("age1") {
        return Err(format!("`{short}` is not an age recipient: {what}"));
    }
    if s.len() != 62 || !s.bytes().skip(4).all(|b| BECH32.contains(&b)) {
        return Err(format!(
            "`{short}` is not a whole age public key (age1 and 58 lowercase letters and \
             digits, 62 in all): copy it again"
        ));
    }
    if !bech32_checksum_ok("age", &s[4..]) {
        return Err(format!(
            "`{short}`: the checksum of this age public key is wrong (a character was \
             mistyped): copy it again"
        ));
    }
    Ok(())
}

/// BIP-173's checksum over the human-readable part and the data characters
/// (which the caller has checked are all in [`BECH32`]).
fn bech32_checksum_ok(hrp: &str, data: &str) -> bool {
    const GEN: [u32; 5] = [
        0x3b6a_57b2,
        0x2650_8e6d,
        0x1ea1_19fa,
        0x3d42_33dd,
        0x2a14_62b3,
    ];
    let values = hrp
        .bytes()
        .map(|c| c >> 5)
        .chain([0])
        .chain(hrp.bytes().map(|c| c & 31))
        .chain(
            data.bytes()
                .filter_map(|c| BECH32.iter().position(|&b| b == c).map(|v| v as u8)),
        );
    let mut chk: u32 = 1;
    for v in values {
        let top = chk >> 25;
        chk = ((chk & 0x01ff_ffff) << 5) ^ u32::from(v);
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk == 1
}

checked_string!(
    /// A public key a backup is encrypted to: `age1…`, or an SSH public key
    /// (`ssh-ed25519 …`, `ssh-rsa …`).
    AgeRecipient,
    check_age_recipient,
    "an age recipient (age1…, or an ssh-ed25519 or ssh-rsa public key)"
);

fn check_wg_key(s: &str) -> Result<(), String> {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(s) {
        Ok(k) if k.len() == 32 => Ok(()),
        // The value is not repeated: it may be a private key mistyped.
        _ if s.starts_with("${") => Err(
            "a variable such as ${WIREGUARD_PRIVATE_KEY} is not a WireGuard key: \
             config.yaml does not expand variables; write the key itself (`wg genkey` \
             prints one), or leave `private_key` out and the node makes its own"
                .into(),
        ),
        _ => Err(format!(
            "this value ({} characters) is not a WireGuard key (44 characters of base64, \
             as `wg genkey` and `wg pubkey` print)",
            s.chars().count()
        )),
    }
}

checked_string!(
    /// A WireGuard key: 32 bytes in base64 (`wg genkey`, `wg pubkey`).
    WgKey,
    check_wg_key,
    "a WireGuard key (44 characters of base64)"
);

impl WgKey {
    /// The key's 32 bytes.
    pub fn bytes(&self) -> [u8; 32] {
        use base64::Engine;
        let mut out = [0u8; 32];
        if let Ok(k) = base64::engine::general_purpose::STANDARD.decode(&self.0) {
            if k.len() == 32 {
                out.copy_from_slice(&k);
            }
        }
        out
    }
}

fn check_ifname(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a network interface name (1 to 15 letters, digits, '-', '_' or '.')"
        ))
    }
}

checked_string!(
    /// A network interface name (`wg-macula`): what the kernel takes.
    IfName,
    check_ifname,
    "a network interface name (at most 15 characters)"
);

impl IfName {
    pub(crate) fn known(s: &str) -> IfName {
        IfName(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths() {
        for good in ["/metrics", "/a/b-c.d_e~f"] {
            assert!(check_url_path(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/", "metrics", "/a b", "/a?b", "/a#b", "/a//b", "/a%20", "/$x", "/a\"b", "/a'b",
        ] {
            assert!(
                check_url_path(bad).unwrap_err().contains("not a URL path"),
                "{bad}"
            );
        }
    }

    #[test]
    fn wireguard_keys_and_interface_names() {
        let key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
        assert!(check_wg_key(key).is_ok());
        assert_eq!(key.parse::<WgKey>().unwrap().bytes()[0], 0xc8);
        for bad in [
            "",
            "${WIREGUARD_PRIVATE_KEY}",
            "abc",
            "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3f",
        ] {
            let e = check_wg_key(bad).unwrap_err();
            assert!(e.contains("not a WireGuard key"), "{bad}: {e}");
            // A bad key, perhaps a private one, is never repeated.
            assert!(
                bad.len() < 4 || bad.starts_with("${") || !e.contains(bad),
                "{e}"
            );
        }
        assert!(check_wg_key("${WIREGUARD_PRIVATE_KEY}")
            .unwrap_err()
            .contains("does not expand variables"));
        assert!(check_ifname("wg-macula").is_ok());
        for bad in ["", "wg macula", "a/b", "0123456789abcdef", ".."] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostnames() {
        for ok in ["edge-node-01", "a", "node.example.com", "1234"] {
            assert!(check_hostname(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "x-", "a_b", "a..b", &"x".repeat(64)] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert!(check_ip("10.0.0.1").is_ok());
        assert!(check_ip("fe80::1").is_ok());
        assert!(check_ip("10.0.0.300").is_err());
        assert!(check_cidr("192.168.1.10/24").is_ok());
        assert!(check_cidr("fd00::1/64").is_ok());
        assert!(check_cidr("192.168.1.10").is_err());
        assert!(check_cidr("192.168.1.10/33")
            .unwrap_err()
            .contains("at most 32"));
    }

    #[test]
    fn ssh_keys() {
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB me@host";
        assert!(check_ssh_key(k).is_ok());
        assert!(check_ssh_key(&format!("from=\"10.0.0.0/8\" {k}")).is_ok());
        assert!(check_ssh_key("AAAAC3Nza me@host")
            .unwrap_err()
            .contains("key type"));
        assert!(check_ssh_key("ssh-ed25519").unwrap_err().contains("base64"));
        assert!(check_ssh_key("ssh-ed25519 AAAA\nssh-rsa BBBB").is_err());
    }

    #[test]
    fn small_names() {
        assert!(check_module("br_netfilter").is_ok());
        assert!(check_module("br netfilter").is_err());
        assert!(check_sysctl_key("net.ipv4.ip_forward").is_ok());
        assert!(check_sysctl_key("net/ipv4/conf/eth0/rp_filter").is_ok());
        assert!(check_sysctl_key("swappiness").is_err());
        assert!(check_sysctl_key("net..x").is_err());
        assert!(check_env_name("HTTP_PROXY").is_ok());
        assert!(check_env_name("1X").is_err());
        assert!(check_owner("root:root").is_ok());
        assert!(check_owner("macula").is_ok());
        assert!(check_owner("a:").is_err());
        assert!(check_owner("a b").is_err());
    }

    #[test]
    fn upgrade_urls() {
        for ok in [
            "github://macula-io/macula-os",
            "https://updates.example.com/",
            "http://10.0.0.1:8080/os/",
            "file:///mnt/usb/",
        ] {
            assert!(check_upgrade_url(ok).is_ok(), "{ok}");
        }
        for bad in ["github://x", "ftp://x/", "https://", "/mnt/usb"] {
            assert!(check_upgrade_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_modes() {
        assert_eq!(FileMode::parse("0644"), Ok(FileMode(0o644)));
        assert_eq!(FileMode::parse("755"), Ok(FileMode(0o755)));
        assert_eq!(FileMode::parse("0o600"), Ok(FileMode(0o600)));
        assert!(FileMode::parse("0999").is_err());
        assert!(FileMode::parse("").is_err());
        assert!(FileMode::parse("77777").is_err());
        let m: FileMode = serde_yaml_ng::from_str("0644").unwrap();
        assert_eq!(m, FileMode(0o644));
        let m: FileMode = serde_yaml_ng::from_str("\"0600\"").unwrap();
        assert_eq!(m, FileMode(0o600));
    }

    #[test]
    fn durations() {
        let d = |s: &str| Duration::parse(s).map(|d| d.get());
        use std::time::Duration as D;
        assert_eq!(d("30s"), Ok(D::from_secs(30)));
        assert_eq!(d("5m"), Ok(D::from_secs(300)));
        assert_eq!(d("5min"), Ok(D::from_secs(300)));
        assert_eq!(d("2h"), Ok(D::from_secs(7200)));
        assert_eq!(d("1d"), Ok(D::from_secs(86400)));
        assert_eq!(d("1m30s"), Ok(D::from_secs(90)));
        assert_eq!(d("500ms"), Ok(D::from_millis(500)));
        assert_eq!(d("60"), Ok(D::from_secs(60)));
        assert_eq!(d(" 10s "), Ok(D::from_secs(10)));
        for bad in [
            "",
            "s",
            "5x",
            "1m30",
            "-5s",
            "5 s",
            "1.5s",
            "+5s",
            "99999999999999999999d",
        ] {
            assert!(d(bad).is_err(), "{bad}");
        }
        assert_eq!(
            d("0s").unwrap_err(),
            "`0s`: a duration must be more than zero"
        );
        let shown: Vec<String> = ["90", "5m", "1h", "2d", "1500ms", "1m30s"]
            .iter()
            .map(|s| Duration::parse(s).unwrap().to_string())
            .collect();
        assert_eq!(shown, ["90s", "5m", "1h", "2d", "1500ms", "90s"]);
        let v: Duration = serde_yaml_ng::from_str("45").unwrap();
        assert_eq!(v.get(), D::from_secs(45));
    }

    #[test]
    fn portions() {
        assert_eq!(Portion::parse("1"), Ok(Portion::Count(1)));
        assert_eq!(
            Portion::parse("10%"),
            Ok(Portion::Share(Percent::known(10)))
        );
        assert!(Portion::parse("0").unwrap_err().contains("at least 1"));
        assert!(Portion::parse("-1").is_err());
        assert!(Portion::parse("1.5").is_err());
        assert!(Portion::parse("150%").is_err());
        assert_eq!(Portion::Share(Percent::known(10)).of(47), 4);
        assert_eq!(Portion::Share(Percent::known(10)).of(4), 1);
        assert_eq!(Portion::Count(2).of(4), 2);
        let y: Portion = serde_yaml_ng::from_str("25%").unwrap();
        assert_eq!(y, Portion::Share(Percent::known(25)));
        let y: Portion = serde_yaml_ng::from_str("3").unwrap();
        assert_eq!((y, y.to_string()), (Portion::Count(3), "3".to_string()));
    }

    #[test]
    fn percents() {
        assert_eq!(Percent::parse("90%").map(Percent::get), Ok(90));
        assert_eq!(Percent::parse("90").map(Percent::get), Ok(90));
        assert_eq!(Percent::parse("100%").map(Percent::get), Ok(100));
        assert_eq!(Percent::parse("1 %").map(Percent::get), Ok(1));
        for bad in [
            "0%", "101%", "-5%", "+5%", "%", "", "ninety", "9 0%", "1000%",
        ] {
            assert!(Percent::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Percent::parse("150%").unwrap_err(),
            "`150%` is not a percentage from 1% to 100%, such as 90%"
        );
        assert!(Percent::new(0).is_err() && Percent::new(100).is_ok());
        let p: Percent = serde_yaml_ng::from_str("85").unwrap();
        assert_eq!(p.to_string(), "85%");
    }

    #[test]
    fn sizes() {
        let b = |s: &str| Size::try_from(s.to_string()).map(|s| s.bytes());
        assert_eq!(b("200M"), Ok(200 << 20));
        assert_eq!(b("1G"), Ok(1 << 30));
        assert_eq!(b("512K"), Ok(512 << 10));
        // As the seeds write them (`max_payload: 1MB`).
        assert_eq!(b("1MB"), Ok(1 << 20));
        assert_eq!(b("1GB"), Ok(1 << 30));
        assert!(b("1B").is_err() && b("MB").is_err());
        assert_eq!(b("2T"), Ok(2 << 40));
        assert_eq!(b("4096"), Ok(4096));
        for bad in ["", "M", "0M", "2KiB", "1.5G", "+1G", "-1G", "200m"] {
            assert!(b(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schedules() {
        let s = |s: &str| Schedule::parse(s).map(|s| s.on_calendar().to_string());
        assert_eq!(s("0 2 * * *").as_deref(), Ok("*-*-* 02:00:00"));
        assert_eq!(s("30 * * * *").as_deref(), Ok("*-*-* *:30:00"));
        assert_eq!(s("* * * * *").as_deref(), Ok("*-*-* *:*:00"));
        assert_eq!(s("5  14 * * *").as_deref(), Ok("*-*-* 14:05:00"));
        assert_eq!(s("daily").as_deref(), Ok("daily"));
        assert_eq!(s("@weekly").as_deref(), Ok("weekly"));
        assert_eq!(s("@midnight").as_deref(), Ok("daily"));
        assert_eq!(
            s("Mon..Fri *-*-* 02:00:00").as_deref(),
            Ok("Mon..Fri *-*-* 02:00:00")
        );
        assert_eq!(
            s("*-*-* 02:00:00 Europe/Berlin").as_deref(),
            Ok("*-*-* 02:00:00 Europe/Berlin")
        );
        assert_eq!(
            s("Sat *-*-1..7 18:00:00").as_deref(),
            Ok("Sat *-*-1..7 18:00:00")
        );
        for bad in [
            "0 2 * * 1-5",
            "0 2 1 * *",
            "*/15 * * * *",
            "0 1,13 * * *",
            "60 2 * * *",
            "0 2 * *",
            "0 0 2 * * *",
            "",
            "daily\nExecStart=/bin/sh",
            "%H daily",
            "@reboot",
        ] {
            assert!(s(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            s("60 2 * * *").unwrap_err(),
            "`60 2 * * *`: the minute `60` is not from 0 to 59"
        );
    }

    #[test]
    fn age_recipients() {
        // The public key of the example in age's README.
        let key = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        assert_eq!(check_age_recipient(key), Ok(()));
        assert!(check_age_recipient("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB me@host").is_ok());
        assert!(check_age_recipient("ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB me@host").is_ok());
        let bad = |s: &str| check_age_recipient(s).unwrap_err();
        assert!(bad("AGE-SECRET-KEY-1QQQ").contains("is not an age recipient"));
        assert!(bad("").contains("is not an age recipient"));
        assert!(bad(&key[..61]).contains("is not a whole age public key"));
        assert!(bad(&key.to_uppercase()).contains("is not an age recipient"));
        assert!(bad(&format!("age1{}", key[4..].to_uppercase())).contains("not a whole"));
        // One character changed: the checksum catches it.
        let typo = key.replacen("ql3z", "ql4z", 1);
        assert!(bad(&typo).contains("checksum"), "{}", bad(&typo));
        assert!(bad("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY x")
            .contains("cannot be used by age"));
        assert!(bad("ssh-ed25519 x").contains("base64"));
        assert!(bad(&format!("{key}\n{key}")).contains("not a whole"));
    }

    #[test]
    fn units_hosts_and_paths() {
        let u = |s: &str| UnitName::try_from(s.to_string()).map(|u| u.unit());
        assert_eq!(u("k3s-server").as_deref(), Ok("k3s-server.service"));
        assert_eq!(u("k3s.service").as_deref(), Ok("k3s.service"));
        assert_eq!(
            u("maculaos-backup.timer").as_deref(),
            Ok("maculaos-backup.timer")
        );
        assert_eq!(u("getty@tty1").as_deref(), Ok("getty@tty1.service"));
        for bad in ["", "a b", ".service", "x;reboot"] {
            assert!(u(bad).is_err(), "{bad}");
        }
        let hp = |s: &str| split_host_port(s).map(|(h, p)| (h.to_string(), p));
        assert_eq!(hp("localhost:6443"), Ok(("localhost".into(), 6443)));
        assert_eq!(hp("10.0.0.1:22"), Ok(("10.0.0.1".into(), 22)));
        assert_eq!(hp("[fd00::1]:6443"), Ok(("fd00::1".into(), 6443)));
        for bad in [
            "localhost",
            "x:0",
            "x:70000",
            ":80",
            "fd00::1:80",
            "[x]:80",
            "[fd00::1]",
        ] {
            assert!(hp(bad).is_err(), "{bad}");
        }
        assert!(check_http_url("http://localhost:8080/health").is_ok());
        assert!(check_http_url("https://example.com").is_ok());
        for bad in [
            "localhost:8080",
            "http://",
            "http:///x",
            "ftp://x/",
            "http://a b/",
        ] {
            assert!(check_http_url(bad).is_err(), "{bad}");
        }
        assert!(check_abs_path("/var/lib/data/").is_ok());
        assert!(check_abs_path("var").is_err());
        assert!(check_abs_path("/var/../etc").is_err());
        assert!(BackupTarget::parse("local").is_ok());
        assert!(BackupTarget::parse("mesh")
            .unwrap_err()
            .contains("not supported yet"));
    }
}

fn check_service_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a service name: 1 to 40 lowercase letters, digits and '-', \
             starting with a letter (it names the container and its unit)"
        ))
    }
}

checked_string!(
    /// A service's name (`myservice`): its container is `maculaos-NAME`, its
    /// unit `maculaos-svc-NAME.service`.
    ServiceName,
    check_service_name,
    "a service name (lowercase letters, digits, '-')"
);

fn check_image_ref(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && !s.starts_with(['-', '/', '.', ':', '@'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not an OCI image reference such as ghcr.io/mycompany/myservice:latest"
        ))
    }
}

checked_string!(
    /// An OCI image reference (`ghcr.io/mycompany/myservice:latest`).
    ImageRef,
    check_image_ref,
    "an OCI image reference (registry/name:tag or @sha256:digest)"
);

/// A registry's host with an optional port (`docker.io`, `10.0.0.5:5000`),
/// as podman's registries.conf names it.
fn check_registry_host(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && !s.starts_with(['-', '.', ':'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a registry host such as docker.io or 10.0.0.5:5000 (no scheme, no path)"
        ))
    }
}

checked_string!(
    /// A registry's host and optional port (`docker.io`, `10.0.0.5:5000`).
    RegistryHost,
    check_registry_host,
    "a registry host such as docker.io or 10.0.0.5:5000"
);

/// `[http://|https://]HOST[:PORT][/PATH]`: where a mirror answers.
fn check_registry_endpoint(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .unwrap_or(s);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path_ok = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
    if check_registry_host(host).is_ok() && path_ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a mirror such as https://mirror.example.com or http://10.0.0.5:5000              (http:// for a mirror without TLS)"
        ))
    }
}

checked_string!(
    /// A mirror: `https://mirror.example.com`, `http://10.0.0.5:5000`
    /// (plain HTTP), or `HOST[:PORT][/PATH]` (HTTPS).
    RegistryEndpoint,
    check_registry_endpoint,
    "a registry mirror such as https://mirror.example.com or http://10.0.0.5:5000"
);

impl RegistryEndpoint {
    /// The location without its scheme, and whether it is plain HTTP.
    pub fn location(&self) -> (&str, bool) {
        match self.0.strip_prefix("http://") {
            Some(l) => (l.trim_end_matches('/'), true),
            None => (
                self.0
                    .strip_prefix("https://")
                    .unwrap_or(&self.0)
                    .trim_end_matches('/'),
                false,
            ),
        }
    }
}

/// `HOST:CONTAINER[/tcp|/udp]` or `ADDR:HOST:CONTAINER[/…]`, each port 1-65535.
fn check_port_map(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "`{s}` is not a port mapping such as 8080:80, 8080:80/udp or 127.0.0.1:8080:80 \
             (host port, then the container's)"
        )
    };
    let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    if !matches!(proto, "tcp" | "udp") {
        return Err(bad());
    }
    let (addr, host, container) = match ports.rsplitn(3, ':').collect::<Vec<_>>()[..] {
        [c, h] => (None, h, c),
        [c, h, a] => (Some(a), h, c),
        _ => return Err(bad()),
    };
    if let Some(a) = addr {
        a.parse::<std::net::IpAddr>().map_err(|_| bad())?;
    }
    for p in [host, container] {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(bad()),
        }
    }
    Ok(())
}

checked_string!(
    /// A published port: `8080:80`, `8080:80/udp`, `127.0.0.1:8080:80`.
    PortMap,
    check_port_map,
    "a port mapping HOST:CONTAINER[/tcp|udp]"
);

impl PortMap {
    /// The host side: (address if one is given, port, protocol).
    pub fn host(&self) -> (Option<&str>, u16, &str) {
        let (ports, proto) = self.0.split_once('/').unwrap_or((&self.0, "tcp"));
        let parts: Vec<&str> = ports.rsplitn(3, ':').collect();
        let port = parts.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        (parts.get(2).copied(), port, proto)
    }
}

/// `/host/dir:/container/dir[:ro]`, both absolute.
fn check_volume_map(s: &str) -> Result<(), String> {
    let bad = |why: &str| {
        format!("`{s}` is not a volume such as /var/lib/maculaos/myservice:/app/data[:ro]: {why}")
    };
    let mut parts = s.split(':');
    let (Some(host), Some(inside)) = (parts.next(), parts.next()) else {
        return Err(bad("a host path and a container path, separated by ':'"));
    };
    match parts.next() {
        None | Some("ro") | Some("rw") => {}
        Some(_) => return Err(bad("the only options are ro and rw")),
    }
    if parts.next().is_some() {
        return Err(bad("too many ':'"));
    }
    check_abs_path(host).map_err(|e| bad(&e))?;
    check_abs_path(inside).map_err(|e| bad(&e))?;
    let parts: Vec<&str> = host.split('/').skip(1).collect();
    if parts.iter().any(|p| p.is_empty() || *p == ".") {
        return Err(bad(
            "write the host path plainly (no `//`, no `.` parts, no trailing `/`)",
        ));
    }
    if parts.len() < 2 {
        return Err(bad("a directory under /var, not /var itself"));
    }
    if !host.starts_with("/var/")
        || ["/var/run", "/var/lock"]
            .iter()
            .any(|r| host == *r || host.starts_with(&format!("{r}/")))
    {
        return Err(bad(
            "the host path must be under /var, not /var/run or /var/lock (the only place that persists; the root is read-only)",
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(bad("no control characters"));
    }
    Ok(())
}

checked_string!(
    /// A volume: a directory under /var mounted into the container.
    VolumeMap,
    check_volume_map,
    "a volume HOST_DIR:CONTAINER_DIR[:ro]"
);

impl VolumeMap {
    /// The directory on the node.
    pub fn host_dir(&self) -> &str {
        self.0.split(':').next().unwrap_or_default()
    }
}

#[cfg(test)]
mod service_value_tests {
    use super::*;

    #[test]
    fn service_names_ports_and_volumes() {
        assert!("web-1".parse::<ServiceName>().is_ok());
        for bad in ["", "Web", "1web", "web-", "a/b", "a b"] {
            assert!(bad.parse::<ServiceName>().is_err(), "{bad:?}");
        }
        for good in ["8080:80", "8080:80/udp", "127.0.0.1:8080:80"] {
            assert!(good.parse::<PortMap>().is_ok(), "{good}");
        }
        for bad in ["80", "0:80", "8080:80/sctp", "x:8080:80", "70000:80"] {
            assert!(bad.parse::<PortMap>().is_err(), "{bad}");
        }
        let p: PortMap = "127.0.0.1:8080:80/udp".parse().unwrap();
        assert_eq!(p.host(), (Some("127.0.0.1"), 8080, "udp"));
        assert!("/var/lib/maculaos/web:/data:ro"
            .parse::<VolumeMap>()
            .is_ok());
        for bad in [
            "/etc:/data",
            "/var:/data",
            "/var/run/x:/data",
            "/var/lock:/data",
            "/var//run/x:/data",
            "/var/./run:/data",
            "/var/lib/x/:/data",
            "/var/lib/x:/data:rx",
            "/var/lib/x:data",
            "/var/lib/../etc:/data",
        ] {
            assert!(bad.parse::<VolumeMap>().is_err(), "{bad}");
        }
    }

    #[test]
    fn alert_conditions() {
        let c: AlertCondition = "disk_usage > 90%".parse().unwrap();
        assert_eq!(c.parts(), (AlertMetric::DiskUsage, AlertOp::Above, 90.0));
        let c: AlertCondition = "load>=2.5".parse().unwrap();
        assert_eq!(c.parts(), (AlertMetric::Load, AlertOp::AtLeast, 2.5));
        let c: AlertCondition = "memory_usage <= 50".parse().unwrap();
        assert_eq!(c.parts(), (AlertMetric::MemoryUsage, AlertOp::AtMost, 50.0));
        assert_eq!(
            "failing_checks > 0"
                .parse::<AlertCondition>()
                .unwrap()
                .parts()
                .0,
            AlertMetric::FailingChecks
        );
        for (bad, why) in [
            ("disk > 90%", "no metric `disk`"),
            ("disk_usage = 90%", "no comparison"),
            ("disk_usage > lots", "`lots` is not a number"),
            ("load > 2%", "load is not a percentage"),
            ("cpu_usage > 120%", "120% is not between 0 and 100"),
            ("disk_usage > NaN", "is not a number"),
        ] {
            let e = bad.parse::<AlertCondition>().unwrap_err();
            assert!(
                e.contains(why) && e.contains("such as `disk_usage > 90%`"),
                "{bad}: {e}"
            );
        }
        assert!("io.mycompany.alerts.disk_full".parse::<MeshTopic>().is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "a b"] {
            assert!(bad.parse::<MeshTopic>().is_err(), "{bad}");
        }
    }
}
