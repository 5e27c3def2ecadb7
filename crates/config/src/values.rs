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

/// Key types OpenSSH accepts in authorized_keys.
const SSH_KEY_TYPES: &[&str] = &[
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
