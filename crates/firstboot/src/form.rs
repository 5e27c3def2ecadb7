//! The pairing request, its checks, and what a valid one gives the node.
//!
//! [`validate`] reports every invalid field at once, each with what to fix,
//! so an operator at the form corrects everything in one go. It does not
//! look at the pairing code: the wizard checks that first, before anything
//! else is looked at (see [`crate::server`]).

use base64::Engine;
use maculaos_config::load::{check, Provenance};
use maculaos_config::Config;
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Field name → what is wrong with it and how to fix it. The names are
/// those of [`PairRequest`] (`hostname`, `ssh_authorized_keys`…), with
/// `bundle.` before a value that came from the bundle, and `config` for
/// the node configuration as a whole.
pub type FieldErrors = BTreeMap<String, String>;

/// Where [`Pairing::files`] go: credentials live on the data partition, next
/// to the node's configuration, so they survive reboots and updates.
pub const CREDENTIALS_DIR: &str = "/var/lib/maculaos/credentials";

/// The body of `POST /api/v1/pair` (JSON); the HTML form posts the same
/// fields urlencoded (see [`parse_form`]). Every field but `code` may be
/// left out. Unknown fields are refused, so a misspelt one is an error
/// rather than a setting silently lost.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairRequest {
    /// The pairing code shown on the node's console.
    pub code: String,
    /// The node's new hostname (RFC 1123); empty keeps the current one.
    pub hostname: Option<String>,
    /// OpenSSH public keys for the admin user, one per item (an item
    /// holding several lines is read as one key a line).
    pub ssh_authorized_keys: Vec<String>,
    /// Extra mesh roles; peer is always on.
    pub mesh_roles: MeshRoles,
    /// The mesh realm in reverse domain notation (`io.macula`).
    pub realm: Option<String>,
    /// Peers to join the mesh through: `host:port`, `quic://host:port` or
    /// `https://host:port` (an item may hold several, separated by commas
    /// or line breaks).
    pub bootstrap_peers: Vec<String>,
    /// `none` (the default), `server` or `agent`.
    pub k3s_role: Option<String>,
    /// The k3s server to join, `https://host:port` (required for an agent).
    pub k3s_server_url: Option<String>,
    /// The cluster join token (required for an agent).
    pub k3s_token: Option<String>,
    /// A fleet server's pairing bundle: its values fill the fields above
    /// that are left empty.
    pub bundle: Option<PairingBundle>,
}

/// The mesh role toggles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshRoles {
    /// Serve as an entry point for new nodes.
    pub bootstrap: bool,
    /// Relay traffic for peers behind NAT.
    pub gateway: bool,
}

/// What a fleet server hands out to pair its nodes alike.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairingBundle {
    pub realm: Option<String>,
    pub bootstrap_peers: Vec<String>,
    pub certificates: Option<Certificates>,
    /// The Git repository the node's workloads come from.
    pub gitops_url: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
}

/// The node's mesh credentials, PEM text.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Certificates {
    /// The CA certificate(s) to trust.
    pub ca: Option<String>,
    /// The node's certificate (with `key`).
    pub cert: Option<String>,
    /// The private key of `cert` (not encrypted: nobody is there to type a
    /// passphrase at boot).
    pub key: Option<String>,
}

/// The k3s choice of a valid request.
#[derive(Clone, PartialEq, Eq)]
pub enum K3s {
    /// Nothing written under `k3s:`. The schema has no "off": where a k3s
    /// binary is installed it then runs as the schema's default, a server.
    None,
    /// A server; with `server_url` (and `token`) it joins an existing cluster.
    Server {
        server_url: Option<String>,
        token: Option<String>,
    },
    /// An agent of the server at `server_url`.
    Agent { server_url: String, token: String },
}

/// A valid pairing request, cleaned up: what the node is to become.
#[derive(Clone, PartialEq, Eq)]
pub struct Pairing {
    /// The new hostname, lowercase; `None` keeps the current one.
    pub hostname: Option<String>,
    /// At least one key (from the request, else from the bundle).
    pub ssh_authorized_keys: Vec<String>,
    /// Mesh roles besides peer.
    pub bootstrap: bool,
    pub gateway: bool,
    /// Lowercase, at least two labels.
    pub realm: Option<String>,
    /// As written (trimmed, without a trailing `/`).
    pub bootstrap_peers: Vec<String>,
    pub k3s: K3s,
    /// The bundle's certificates as (absolute path, PEM text ending with a
    /// line break, mode): `ca.pem` 0644, `cert.pem` 0644 and `key.pem` 0600
    /// under [`CREDENTIALS_DIR`]. Files, because the configuration schema
    /// has no keys for them yet.
    pub files: Vec<(PathBuf, String, u32)>,
    /// The bundle's GitOps repository: the schema has no key for it yet
    /// either, so the caller decides where it goes.
    pub gitops_url: Option<String>,
}

/// Without the join token: a `{:?}` may end up in a log.
impl fmt::Debug for K3s {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |t: &Option<String>| t.as_ref().map(|_| "…");
        match self {
            K3s::None => f.write_str("None"),
            K3s::Server { server_url, token } => f
                .debug_struct("Server")
                .field("server_url", server_url)
                .field("token", &hidden(token))
                .finish(),
            K3s::Agent { server_url, .. } => f
                .debug_struct("Agent")
                .field("server_url", server_url)
                .field("token", &"…")
                .finish(),
        }
    }
}

/// Without the secrets (the join token, the private key): a `{:?}` may end
/// up in a log.
impl fmt::Debug for Pairing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files: Vec<String> = self
            .files
            .iter()
            .map(|(path, _, mode)| format!("{} ({mode:o})", path.display()))
            .collect();
        f.debug_struct("Pairing")
            .field("hostname", &self.hostname)
            .field("ssh_authorized_keys", &self.ssh_authorized_keys)
            .field("bootstrap", &self.bootstrap)
            .field("gateway", &self.gateway)
            .field("realm", &self.realm)
            .field("bootstrap_peers", &self.bootstrap_peers)
            .field("k3s", &self.k3s)
            .field("files", &files)
            .field("gitops_url", &self.gitops_url)
            .finish()
    }
}

impl Pairing {
    /// The node configuration fragment of the pairing, in config.yaml's
    /// schema: `maculaos.hostname`, `maculaos.ssh.authorized_keys`,
    /// `maculaos.mesh.roles.{bootstrap,gateway}` (always both: the operator
    /// chose them), `maculaos.mesh.realm`, `maculaos.mesh.bootstrap_peers`
    /// and `k3s.{role,server_url,token}`. Keys left empty are left out, so
    /// the node keeps its defaults for them.
    pub fn config_yaml(&self) -> Value {
        let mut m = Mapping::new();
        let s = |v: &str| Value::String(v.to_string());
        let list = |v: &[String]| Value::Sequence(v.iter().map(|x| s(x)).collect());
        if let Some(h) = &self.hostname {
            set(&mut m, &["maculaos", "hostname"], s(h));
        }
        if !self.ssh_authorized_keys.is_empty() {
            set(
                &mut m,
                &["maculaos", "ssh", "authorized_keys"],
                list(&self.ssh_authorized_keys),
            );
        }
        set(
            &mut m,
            &["maculaos", "mesh", "roles", "bootstrap"],
            Value::Bool(self.bootstrap),
        );
        set(
            &mut m,
            &["maculaos", "mesh", "roles", "gateway"],
            Value::Bool(self.gateway),
        );
        if let Some(r) = &self.realm {
            set(&mut m, &["maculaos", "mesh", "realm"], s(r));
        }
        if !self.bootstrap_peers.is_empty() {
            set(
                &mut m,
                &["maculaos", "mesh", "bootstrap_peers"],
                list(&self.bootstrap_peers),
            );
        }
        match &self.k3s {
            K3s::None => {}
            K3s::Server { server_url, token } => {
                set(&mut m, &["k3s", "role"], s("server"));
                if let Some(u) = server_url {
                    set(&mut m, &["k3s", "server_url"], s(u));
                }
                if let Some(t) = token {
                    set(&mut m, &["k3s", "token"], s(t));
                }
            }
            K3s::Agent { server_url, token } => {
                set(&mut m, &["k3s", "role"], s("agent"));
                set(&mut m, &["k3s", "server_url"], s(server_url));
                set(&mut m, &["k3s", "token"], s(token));
            }
        }
        Value::Mapping(m)
    }
}

/// Sets `path` in `m`, making the maps on the way.
fn set(m: &mut Mapping, path: &[&str], v: Value) {
    let Some((last, dirs)) = path.split_last() else {
        return;
    };
    let mut cur = m;
    for d in dirs {
        let key = Value::String((*d).to_string());
        if !matches!(cur.get(&key), Some(Value::Mapping(_))) {
            cur.insert(key.clone(), Value::Mapping(Mapping::new()));
        }
        cur = match cur.get_mut(&key) {
            Some(Value::Mapping(next)) => next,
            _ => return,
        };
    }
    cur.insert(Value::String((*last).to_string()), v);
}

/// Checks every field of `req` (not `code`) and returns the pairing, or
/// what is wrong with each invalid field. Once the fields are valid, their
/// configuration fragment must also read as a [`Config`] and pass the
/// configuration's own cross-key checks; a failure there is reported on
/// `config`.
pub fn validate(req: &PairRequest) -> Result<Pairing, FieldErrors> {
    let mut errors = FieldErrors::new();
    let empty_bundle = PairingBundle::default();
    let bundle = req.bundle.as_ref().unwrap_or(&empty_bundle);

    let hostname = match trimmed(&req.hostname) {
        None => None,
        Some(h) => match check_dns_name(h) {
            Ok(h) => Some(h),
            Err(()) => {
                errors.insert(
                    "hostname".into(),
                    format!(
                        "`{h}` is not a valid hostname: use letters, digits and '-', \
                         1 to 63 between dots and 253 in all, not starting or ending with '-'"
                    ),
                );
                None
            }
        },
    };

    let (keys, keys_field) = if has_lines(&req.ssh_authorized_keys) {
        (&req.ssh_authorized_keys, "ssh_authorized_keys")
    } else {
        (&bundle.ssh_authorized_keys, "bundle.ssh_authorized_keys")
    };
    let ssh_authorized_keys = match check_ssh_keys(keys) {
        Ok(k) if k.is_empty() => {
            errors.insert(
                "ssh_authorized_keys".into(),
                "add at least one SSH public key: the node has no password login".into(),
            );
            k
        }
        Ok(k) => k,
        Err(e) => {
            errors.insert(keys_field.into(), e);
            Vec::new()
        }
    };

    let (realm, realm_field) = match trimmed(&req.realm) {
        Some(r) => (Some(r), "realm"),
        None => (trimmed(&bundle.realm), "bundle.realm"),
    };
    let realm = match realm.map(check_realm) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            errors.insert(realm_field.into(), e);
            None
        }
    };

    let (peers, peers_field) = if has_items(&req.bootstrap_peers) {
        (&req.bootstrap_peers, "bootstrap_peers")
    } else {
        (&bundle.bootstrap_peers, "bundle.bootstrap_peers")
    };
    let mut bootstrap_peers = Vec::new();
    let mut bad_peers = Vec::new();
    for p in split_list(peers) {
        match check_peer(&p) {
            Ok(p) => bootstrap_peers.push(p),
            Err(e) => bad_peers.push(e),
        }
    }
    if !bad_peers.is_empty() {
        errors.insert(peers_field.into(), bad_peers.join("; "));
    }

    let k3s = check_k3s(req, &mut errors);

    let mut files = Vec::new();
    if let Some(c) = &bundle.certificates {
        match check_certificates(c) {
            Ok(f) => files = f,
            Err(e) => {
                errors.insert("bundle.certificates".into(), e);
            }
        }
    }
    let gitops_url = match trimmed(&bundle.gitops_url).map(check_git_url) {
        None => None,
        Some(Ok(u)) => Some(u),
        Some(Err(e)) => {
            errors.insert("bundle.gitops_url".into(), e);
            None
        }
    };

    if !errors.is_empty() {
        return Err(errors);
    }
    let pairing = Pairing {
        hostname,
        ssh_authorized_keys,
        bootstrap: req.mesh_roles.bootstrap,
        gateway: req.mesh_roles.gateway,
        realm,
        bootstrap_peers,
        k3s,
        files,
        gitops_url,
    };
    // The last word is the configuration's own: what it would refuse at
    // boot must not be written now.
    match config_refusal(&pairing) {
        None => Ok(pairing),
        Some(e) => {
            errors.insert("config".into(), e);
            Err(errors)
        }
    }
}

/// Why the configuration would refuse the pairing's fragment: the schema
/// (read as a [`Config`]), then its checks across keys.
fn config_refusal(p: &Pairing) -> Option<String> {
    let why = match serde_yaml_ng::from_value::<Config>(p.config_yaml()) {
        Err(e) => e.to_string(),
        Ok(config) => {
            let problems = check(&config, &Provenance::new());
            if problems.is_empty() {
                return None;
            }
            let all: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            all.join("; ")
        }
    };
    Some(format!("the node configuration would be refused: {why}"))
}

/// The trimmed text, `None` when empty.
fn trimmed(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn has_lines(v: &[String]) -> bool {
    v.iter().any(|s| s.lines().any(|l| !l.trim().is_empty()))
}

fn has_items(v: &[String]) -> bool {
    !split_list(v).is_empty()
}

/// The items of `v`, each of which may hold several separated by commas or
/// line breaks (a textarea, or a list typed on one line), trimmed, without
/// empty ones.
fn split_list(v: &[String]) -> Vec<String> {
    v.iter()
        .flat_map(|s| s.split([',', '\n']))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// One DNS label of RFC 1123: 1 to 63 of [a-z0-9-], no '-' at either end.
fn is_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && !l.starts_with('-')
        && !l.ends_with('-')
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A name of RFC 1123 labels, lowercased (names are case-insensitive; the
/// node and its mDNS name use lowercase).
fn check_dns_name(s: &str) -> Result<String, ()> {
    if s.len() > 253 || !s.split('.').all(is_label) {
        return Err(());
    }
    Ok(s.to_ascii_lowercase())
}

fn check_realm(s: &str) -> Result<String, String> {
    match check_dns_name(s) {
        Ok(r) if r.split('.').count() >= 2 => Ok(r),
        _ => Err(format!(
            "`{s}` is not a realm in reverse domain notation, such as io.macula: \
             at least two names of letters, digits and '-' separated by dots"
        )),
    }
}

use maculaos_config::values::SSH_KEY_TYPES;

/// Every key line of `items` checked: the keys, or one message naming each
/// bad line. Blank lines and `#` comments (a pasted authorized_keys file)
/// are skipped.
fn check_ssh_keys(items: &[String]) -> Result<Vec<String>, String> {
    let lines: Vec<&str> = items
        .iter()
        .flat_map(|s| s.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // A private key pasted by mistake: one clear message rather than one
    // per line of it, and none that repeats any of it.
    if lines.iter().any(|l| l.contains("PRIVATE KEY")) {
        return Err(
            "this is a private key: paste the public key (the .pub file, such as \
             ~/.ssh/id_ed25519.pub) and keep the private key secret"
                .into(),
        );
    }
    let mut keys = Vec::new();
    let mut bad = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        match check_ssh_key(l) {
            Ok(()) => keys.push(l.to_string()),
            Err(e) => bad.push(format!("key {}: {e}", i + 1)),
        }
    }
    if bad.is_empty() {
        Ok(keys)
    } else {
        Err(bad.join("; "))
    }
}

/// An OpenSSH public key line: `TYPE BASE64 [COMMENT]`. The base64 blob is
/// a list of length-prefixed strings, the first being TYPE; its structure
/// is checked too, because a key cut short when copied from a terminal
/// still decodes, and would lock the operator out later.
fn check_ssh_key(line: &str) -> Result<(), String> {
    let short: String = line.chars().take(24).collect();
    let mut words = line.split_whitespace();
    let kind = words.next().unwrap_or("");
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "`{short}…` is not an SSH public key: it should start with a key type such as \
             ssh-ed25519 (paste the line of your ~/.ssh/id_ed25519.pub)"
        ));
    }
    let Some(b64) = words.next() else {
        return Err(format!("the key data after `{kind}` is missing"));
    };
    let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return Err(format!("the key data after `{kind}` is not valid base64"));
    };
    let cut = || {
        format!(
            "the `{kind}` key data is cut short or damaged: paste the whole line of the .pub file"
        )
    };
    let fields = ssh_strings(&blob).ok_or_else(cut)?;
    let inner = fields.first().copied().unwrap_or(&[]);
    if inner != kind.as_bytes() {
        return Err(format!(
            "the key data is of type `{}`, not `{kind}`",
            String::from_utf8_lossy(inner)
        ));
    }
    let ok = match kind {
        "ssh-ed25519" => fields.len() == 2 && fields[1].len() == 32,
        "sk-ssh-ed25519@openssh.com" => fields.len() == 3 && fields[1].len() == 32,
        "ssh-rsa" => fields.len() == 3 && !fields[1].is_empty() && !fields[2].is_empty(),
        // The curve name again, the point, then (security keys) the
        // application.
        "sk-ecdsa-sha2-nistp256@openssh.com" => {
            fields.len() == 4 && fields[1] == b"nistp256" && !fields[2].is_empty()
        }
        // ecdsa-sha2-nistpN, the only types left.
        _ => {
            let curve = kind.strip_prefix("ecdsa-sha2-").unwrap_or(kind);
            fields.len() == 3 && fields[1] == curve.as_bytes() && !fields[2].is_empty()
        }
    };
    if ok {
        Ok(())
    } else {
        Err(cut())
    }
}

/// The SSH wire strings (u32 big-endian length, then the bytes) that make up
/// `blob` exactly; `None` when one runs past the end.
fn ssh_strings(blob: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = blob;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let n = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if tail.len() < n {
            return None;
        }
        let (s, tail) = tail.split_at(n);
        out.push(s);
        rest = tail;
    }
    Some(out)
}

/// A host: a DNS name, an IPv4 address, or an IPv6 address in brackets.
fn is_host(h: &str) -> bool {
    if let Some(v6) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    h.parse::<std::net::Ipv4Addr>().is_ok() || check_dns_name(h).is_ok()
}

/// `host:port` with a port from 1 to 65535.
fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && matches!(port.parse::<u16>(), Ok(p) if p > 0);
    port_ok && is_host(host)
}

/// A bootstrap peer: `host:port`, `quic://host:port` or `https://host:port`.
fn check_peer(p: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "`{p}` is not a peer address: write host:port, quic://host:port or \
             https://host:port (an IPv6 address in brackets, a port from 1 to 65535)"
        )
    };
    let cleaned = p.strip_suffix('/').unwrap_or(p);
    let rest = match cleaned.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("quic") || scheme.eq_ignore_ascii_case("https") =>
        {
            rest
        }
        Some(_) => return Err(bad()),
        None => cleaned,
    };
    if is_host_port(rest) {
        Ok(cleaned.to_string())
    } else {
        Err(bad())
    }
}

/// `https://host:port`, with nothing after but an optional `/`.
fn check_https_host_port(u: &str) -> Result<String, ()> {
    let cleaned = u.strip_suffix('/').unwrap_or(u);
    let rest = cleaned
        .get(..8)
        .filter(|s| s.eq_ignore_ascii_case("https://"))
        .and_then(|_| cleaned.get(8..))
        .ok_or(())?;
    if is_host_port(rest) {
        Ok(cleaned.to_string())
    } else {
        Err(())
    }
}

fn check_k3s(req: &PairRequest, errors: &mut FieldErrors) -> K3s {
    let role = trimmed(&req.k3s_role)
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| "none".into());
    let url = trimmed(&req.k3s_server_url);
    let token = trimmed(&req.k3s_token);
    let mut bad = |field: &str, msg: String| {
        errors.insert(field.into(), msg);
    };
    let url = match url.map(|u| (u, check_https_host_port(u))) {
        None => None,
        Some((_, Ok(u))) => Some(u),
        Some((u, Err(()))) => {
            bad(
                "k3s_server_url",
                format!("`{u}` is not a k3s server URL: write https://host:port, such as https://10.0.0.1:6443"),
            );
            None
        }
    };
    let token = match token {
        Some(t) if t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            bad(
                "k3s_token",
                "a join token is one word, without spaces or line breaks".into(),
            );
            None
        }
        t => t.map(str::to_string),
    };
    let agent_url = "an agent needs the URL of its k3s server, such as https://10.0.0.1:6443";
    let agent_token =
        "an agent needs the cluster's join token (on the server: /var/lib/rancher/k3s/server/node-token)";
    match role.as_str() {
        "none" => {
            let unused =
                "k3s role is none: choose agent (or server) to use this, or leave it empty";
            if req
                .k3s_server_url
                .as_deref()
                .is_some_and(|s| !s.trim().is_empty())
            {
                bad("k3s_server_url", unused.into());
            }
            if req
                .k3s_token
                .as_deref()
                .is_some_and(|s| !s.trim().is_empty())
            {
                bad("k3s_token", unused.into());
            }
            K3s::None
        }
        "server" => {
            if url.is_some() && token.is_none() && !errors.contains_key("k3s_token") {
                errors.insert(
                    "k3s_token".into(),
                    "a server joining an existing cluster needs its join token".into(),
                );
            }
            K3s::Server {
                server_url: url,
                token,
            }
        }
        "agent" => {
            if req
                .k3s_server_url
                .as_deref()
                .is_none_or(|s| s.trim().is_empty())
            {
                bad("k3s_server_url", agent_url.into());
            }
            if req.k3s_token.as_deref().is_none_or(|s| s.trim().is_empty()) {
                bad("k3s_token", agent_token.into());
            }
            match (url, token) {
                (Some(server_url), Some(token)) => K3s::Agent { server_url, token },
                _ => K3s::None,
            }
        }
        other => {
            bad(
                "k3s_role",
                format!("`{other}` is not a k3s role: choose none, server or agent"),
            );
            K3s::None
        }
    }
}

/// The bundle's certificates as files to write: each is checked to be PEM
/// of the right kind, and a certificate comes with its key.
fn check_certificates(c: &Certificates) -> Result<Vec<(PathBuf, String, u32)>, String> {
    let dir = PathBuf::from(CREDENTIALS_DIR);
    let mut files = Vec::new();
    let mut bad = Vec::new();
    let ca = trimmed(&c.ca);
    let cert = trimmed(&c.cert);
    let key = trimmed(&c.key);
    let certs: &[&str] = &["CERTIFICATE"];
    let keys: &[&str] = &["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"];
    for (name, text, kinds, file, mode) in [
        ("ca", ca, certs, "ca.pem", 0o644),
        ("cert", cert, certs, "cert.pem", 0o644),
        ("key", key, keys, "key.pem", 0o600),
    ] {
        let Some(text) = text else { continue };
        match check_pem(text, kinds) {
            Ok(()) => files.push((dir.join(file), format!("{text}\n"), mode)),
            Err(e) => bad.push(format!("{name}: {e}")),
        }
    }
    match (cert, key) {
        (Some(_), None) => bad.push("cert: the node's certificate needs its `key`".into()),
        (None, Some(_)) => bad.push("key: a private key needs its certificate `cert`".into()),
        _ => {}
    }
    if bad.is_empty() {
        Ok(files)
    } else {
        Err(bad.join("; "))
    }
}

/// PEM text: at least one block, every block of one of `kinds`, its body
/// base64. Text between blocks (openssl's "Bag Attributes") is allowed.
fn check_pem(text: &str, kinds: &[&str]) -> Result<(), String> {
    let want = kinds.first().copied().unwrap_or("");
    let mut blocks = 0;
    let mut lines = text.lines().map(str::trim);
    while let Some(l) = lines.next() {
        let Some(label) = l
            .strip_prefix("-----BEGIN ")
            .and_then(|r| r.strip_suffix("-----"))
        else {
            continue;
        };
        if label == "ENCRYPTED PRIVATE KEY" {
            return Err(
                "the private key is encrypted: the node cannot type its passphrase; \
                 give it unencrypted (openssl pkey -in key.pem)"
                    .into(),
            );
        }
        if !kinds.contains(&label) {
            return Err(format!("holds a `{label}`, not a {want}"));
        }
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut closed = false;
        for l in lines.by_ref() {
            if l == end {
                closed = true;
                break;
            }
            body.push_str(l);
        }
        let decodes = base64::engine::general_purpose::STANDARD
            .decode(&body)
            .is_ok_and(|b| !b.is_empty());
        if !closed || !decodes {
            return Err(format!("the {label} is cut short or damaged PEM"));
        }
        blocks += 1;
    }
    if blocks == 0 {
        return Err(format!(
            "not PEM: expected -----BEGIN {want}----- … -----END {want}-----"
        ));
    }
    Ok(())
}

/// A Git repository: `https://`, `http://` or `ssh://` URL with a valid
/// host, or scp-like `user@host:path`.
fn check_git_url(u: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "`{u}` is not a Git repository URL: use https://host/org/repo.git or \
             git@host:org/repo.git"
        )
    };
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let host_ok = |authority: &str| {
        let hp = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        is_host(hp) || is_host_port(hp)
    };
    let ok = match u.split_once("://") {
        Some((scheme, rest)) => {
            let scheme = scheme.to_ascii_lowercase();
            let authority = rest.split('/').next().unwrap_or("");
            matches!(scheme.as_str(), "https" | "http" | "ssh") && host_ok(authority)
        }
        None => match u.split_once(':') {
            Some((authority, path)) => {
                authority.contains('@') && host_ok(authority) && !path.is_empty()
            }
            None => false,
        },
    };
    if ok {
        Ok(u.to_string())
    } else {
        Err(bad())
    }
}

/// The fields of an `application/x-www-form-urlencoded` body (the wizard's
/// HTML form) as a request. The form's names are those of [`PairRequest`],
/// except `ssh_key` (a textarea, one key a line) and the checkboxes
/// `bootstrap` and `gateway` (on when sent with any value but `off`, as a
/// browser sends "on"). Unknown fields are ignored; empty ones are unset.
pub fn parse_form(body: &str) -> PairRequest {
    let mut r = PairRequest::default();
    let opt = |v: String| Some(v).filter(|v| !v.trim().is_empty());
    for pair in body.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k), percent_decode(v));
        let lines = || {
            v.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        match k.as_str() {
            "code" => r.code = v,
            "hostname" => r.hostname = opt(v),
            "ssh_key" | "ssh_authorized_keys" => r.ssh_authorized_keys.extend(lines()),
            "bootstrap" => r.mesh_roles.bootstrap = v != "off",
            "gateway" => r.mesh_roles.gateway = v != "off",
            "realm" => r.realm = opt(v),
            "bootstrap_peers" => r.bootstrap_peers.extend(lines()),
            "k3s_role" => r.k3s_role = opt(v),
            "k3s_server_url" => r.k3s_server_url = opt(v),
            "k3s_token" => r.k3s_token = opt(v),
            _ => {}
        }
    }
    r
}

/// Form decoding: `+` is a space and `%XX` a byte; a `%` not followed by
/// two hex digits stays as it is. Bytes that are not UTF-8 become U+FFFD.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Two hex digits exactly (from_str_radix alone would take "+1").
                let hex = b
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A well-formed ed25519 public key line (its 32 key bytes are 100..132).
    pub(crate) const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGRlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn+AgYKD me@laptop";

    /// An SSH key line of `kind` with `fields` after the type.
    fn key_line(kind: &str, fields: &[&[u8]]) -> String {
        let mut blob = Vec::new();
        for f in std::iter::once(kind.as_bytes()).chain(fields.iter().copied()) {
            blob.extend_from_slice(&(f.len() as u32).to_be_bytes());
            blob.extend_from_slice(f);
        }
        format!(
            "{kind} {} test",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    pub(crate) fn good() -> PairRequest {
        PairRequest {
            code: "ABCDE-FGHJK".into(),
            hostname: Some("Edge-01".into()),
            ssh_authorized_keys: vec![ED25519.into()],
            ..PairRequest::default()
        }
    }

    fn errors(req: &PairRequest) -> FieldErrors {
        validate(req).unwrap_err()
    }

    fn pem(label: &str, body: &str) -> String {
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----")
    }

    #[test]
    fn the_test_key_is_well_formed() {
        assert_eq!(check_ssh_key(ED25519), Ok(()));
    }

    #[test]
    fn a_minimal_request_pairs() {
        let p = validate(&good()).unwrap();
        assert_eq!(p.hostname.as_deref(), Some("edge-01"));
        assert_eq!(p.ssh_authorized_keys, [ED25519]);
        assert_eq!(p.k3s, K3s::None);
        assert!(p.files.is_empty() && p.gitops_url.is_none());
        let y = serde_yaml_ng::to_string(&p.config_yaml()).unwrap();
        assert_eq!(
            y,
            format!(
                "maculaos:\n  hostname: edge-01\n  ssh:\n    authorized_keys:\n    - {ED25519}\n  mesh:\n    roles:\n      bootstrap: false\n      gateway: false\n"
            )
        );
    }

    #[test]
    fn a_full_request_makes_the_configuration_fragment() {
        let req = PairRequest {
            mesh_roles: MeshRoles {
                bootstrap: true,
                gateway: true,
            },
            realm: Some(" IO.Macula ".into()),
            bootstrap_peers: vec![
                "boot1.macula.io:4433, quic://10.0.0.1:4433".into(),
                "https://[fd00::1]:443/".into(),
            ],
            k3s_role: Some("agent".into()),
            k3s_server_url: Some("https://10.0.0.1:6443".into()),
            k3s_token: Some("K10abc::server:secret".into()),
            ..good()
        };
        let p = validate(&req).unwrap();
        let c: Config = serde_yaml_ng::from_value(p.config_yaml()).unwrap();
        assert_eq!(c.maculaos.hostname.unwrap().as_str(), "edge-01");
        assert_eq!(c.maculaos.ssh.authorized_keys[0].as_str(), ED25519);
        assert!(c.maculaos.mesh.roles.bootstrap && c.maculaos.mesh.roles.gateway);
        assert_eq!(c.maculaos.mesh.realm.as_deref(), Some("io.macula"));
        assert_eq!(
            c.maculaos.mesh.bootstrap_peers,
            [
                "boot1.macula.io:4433",
                "quic://10.0.0.1:4433",
                "https://[fd00::1]:443"
            ]
        );
        assert_eq!(c.k3s.role, Some(maculaos_config::K3sRole::Agent));
        assert_eq!(c.k3s.server_url.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(c.k3s.token.as_deref(), Some("K10abc::server:secret"));
        // The token stays out of Debug.
        assert!(!format!("{p:?}").contains("secret"));
    }

    #[test]
    fn hostnames() {
        for ok in ["a", "node-1", "EDGE", "a.b.c", &"a".repeat(63)] {
            let req = PairRequest {
                hostname: Some(ok.into()),
                ..good()
            };
            let p = validate(&req).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
            assert_eq!(p.hostname, Some(ok.to_ascii_lowercase()));
        }
        let long = vec!["a".repeat(63); 4].join("."); // 255
        for bad in [
            "-a",
            "a-",
            "a_b",
            "a..b",
            "<script>",
            "é",
            &"a".repeat(64),
            &long,
            "a.",
        ] {
            let req = PairRequest {
                hostname: Some(bad.into()),
                ..good()
            };
            let e = errors(&req);
            assert!(
                e["hostname"].contains("not a valid hostname"),
                "{bad}: {e:?}"
            );
            assert_eq!(e.len(), 1, "{e:?}");
        }
        // Empty keeps the current hostname.
        let req = PairRequest {
            hostname: Some("  ".into()),
            ..good()
        };
        assert_eq!(validate(&req).unwrap().hostname, None);
    }

    #[test]
    fn ssh_keys_of_every_type() {
        let p256 = [4u8; 65];
        let cases = [
            key_line("ssh-ed25519", &[&[7; 32]]),
            key_line("ssh-rsa", &[&[1, 0, 1], &[9; 257]]),
            key_line("ecdsa-sha2-nistp256", &[b"nistp256", &p256]),
            key_line("ecdsa-sha2-nistp384", &[b"nistp384", &[4; 97]]),
            key_line("ecdsa-sha2-nistp521", &[b"nistp521", &[4; 133]]),
            key_line("sk-ssh-ed25519@openssh.com", &[&[7; 32], b"ssh:"]),
            key_line(
                "sk-ecdsa-sha2-nistp256@openssh.com",
                &[b"nistp256", &p256, b"ssh:"],
            ),
        ];
        for k in &cases {
            assert_eq!(check_ssh_key(k), Ok(()), "{k}");
        }
        // All at once, with a comment line and blank lines between.
        let req = PairRequest {
            ssh_authorized_keys: vec![
                format!("# mine\n{}\n\n{}", cases[0], cases[1]),
                cases[2].clone(),
            ],
            ..good()
        };
        assert_eq!(validate(&req).unwrap().ssh_authorized_keys.len(), 3);
    }

    #[test]
    fn bad_ssh_keys_say_which_and_why() {
        let ed = key_line("ssh-ed25519", &[&[7; 32]]);
        let b64 = ed.split(' ').nth(1).unwrap().to_string();
        let cases = [
            ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "is not an SSH public key"),
            ("hello", "is not an SSH public key"),
            ("ssh-ed25519", "the key data after `ssh-ed25519` is missing"),
            ("ssh-ed25519 not*base64", "not valid base64"),
            (
                &format!("ssh-rsa {b64}"),
                "of type `ssh-ed25519`, not `ssh-rsa`",
            ),
            // Cut when copied: still base64, no longer whole.
            (
                &format!("ssh-ed25519 {}", &b64[..40]),
                "cut short or damaged",
            ),
            (
                &key_line("ssh-ed25519", &[&[7; 31]]),
                "cut short or damaged",
            ),
            (
                &key_line("ecdsa-sha2-nistp256", &[b"nistp384", &[4; 65]]),
                "cut short",
            ),
            (&key_line("ssh-rsa", &[&[1, 0, 1]]), "cut short"),
        ];
        for (line, want) in cases {
            let e = check_ssh_key(line).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
        let req = PairRequest {
            ssh_authorized_keys: vec![format!("{ED25519}\nhello"), "ssh-ed25519 !!".into()],
            ..good()
        };
        let e = errors(&req);
        let msg = &e["ssh_authorized_keys"];
        assert!(
            msg.starts_with("key 2: `hello…` is not an SSH public key"),
            "{msg}"
        );
        assert!(
            msg.contains("; key 3: the key data after `ssh-ed25519` is not valid base64"),
            "{msg}"
        );
    }

    #[test]
    fn a_private_key_is_refused_without_echoing_it() {
        let req = PairRequest {
            ssh_authorized_keys: vec![
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----".into(),
            ],
            ..good()
        };
        let e = errors(&req);
        assert!(e["ssh_authorized_keys"].starts_with("this is a private key"));
        assert!(!e["ssh_authorized_keys"].contains("b3Bl"));
    }

    #[test]
    fn at_least_one_ssh_key_unless_the_bundle_gives_one() {
        let req = PairRequest {
            ssh_authorized_keys: vec!["\n  \n".into()],
            ..good()
        };
        assert_eq!(
            errors(&req)["ssh_authorized_keys"],
            "add at least one SSH public key: the node has no password login"
        );
        let req = PairRequest {
            ssh_authorized_keys: vec![],
            bundle: Some(PairingBundle {
                ssh_authorized_keys: vec![ED25519.into()],
                ..PairingBundle::default()
            }),
            ..good()
        };
        assert_eq!(validate(&req).unwrap().ssh_authorized_keys, [ED25519]);
        let req = PairRequest {
            ssh_authorized_keys: vec![],
            bundle: Some(PairingBundle {
                ssh_authorized_keys: vec!["nope".into()],
                ..PairingBundle::default()
            }),
            ..good()
        };
        assert!(errors(&req)["bundle.ssh_authorized_keys"].contains("key 1: `nope…`"));
    }

    #[test]
    fn realms() {
        for (ok, want) in [
            ("io.macula", "io.macula"),
            ("IO.Macula.Edge-1", "io.macula.edge-1"),
        ] {
            let req = PairRequest {
                realm: Some(ok.into()),
                ..good()
            };
            assert_eq!(validate(&req).unwrap().realm.as_deref(), Some(want));
        }
        for bad in [
            "macula",
            "io..macula",
            "io.-macula",
            "io.macula.",
            "io macula",
            "io_x.y",
        ] {
            let req = PairRequest {
                realm: Some(bad.into()),
                ..good()
            };
            let e = errors(&req);
            assert!(
                e["realm"].contains("reverse domain notation"),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn bootstrap_peers() {
        for ok in [
            "boot.macula.io:4433",
            "10.0.0.1:1",
            "[fd00::1]:65535",
            "quic://boot.macula.io:4433",
            "QUIC://boot:4433",
            "https://boot.macula.io:443/",
        ] {
            assert!(check_peer(ok).is_ok(), "{ok}");
        }
        for bad in [
            "boot.macula.io",
            "boot:0",
            "boot:65536",
            "boot:-1",
            "boot:",
            ":4433",
            "fd00::1:4433",
            "[nope]:4433",
            "http://boot:4433",
            "quic://boot:4433/path",
            "quic://",
            "bad_host:1",
        ] {
            assert!(check_peer(bad).is_err(), "{bad}");
        }
        let req = PairRequest {
            bootstrap_peers: vec!["good:1, bad\nworse:0".into()],
            ..good()
        };
        let e = errors(&req);
        let msg = &e["bootstrap_peers"];
        assert!(
            msg.contains("`bad` is not a peer address") && msg.contains("`worse:0`"),
            "{msg}"
        );
        assert!(!msg.contains("`good:1`"), "{msg}");
    }

    #[test]
    fn k3s_roles() {
        let k = |role: Option<&str>, url: Option<&str>, token: Option<&str>| PairRequest {
            k3s_role: role.map(Into::into),
            k3s_server_url: url.map(Into::into),
            k3s_token: token.map(Into::into),
            ..good()
        };
        assert_eq!(validate(&k(None, None, None)).unwrap().k3s, K3s::None);
        assert_eq!(
            validate(&k(Some("none"), None, None)).unwrap().k3s,
            K3s::None
        );
        assert_eq!(
            validate(&k(Some("Server"), None, None)).unwrap().k3s,
            K3s::Server {
                server_url: None,
                token: None
            }
        );
        assert_eq!(
            validate(&k(
                Some("agent"),
                Some("https://k3s.lan:6443/"),
                Some("t0k")
            ))
            .unwrap()
            .k3s,
            K3s::Agent {
                server_url: "https://k3s.lan:6443".into(),
                token: "t0k".into()
            }
        );
        // An agent needs both, and says so for each.
        let e = errors(&k(Some("agent"), None, None));
        assert!(e["k3s_server_url"].starts_with("an agent needs the URL"));
        assert!(e["k3s_token"].starts_with("an agent needs the cluster's join token"));
        for bad in [
            "http://k3s:6443",
            "https://k3s",
            "https://k3s:6443/v1",
            "k3s:6443",
            "https://:6443",
        ] {
            let e = errors(&k(Some("agent"), Some(bad), Some("t")));
            assert!(
                e["k3s_server_url"].contains("is not a k3s server URL"),
                "{bad}: {e:?}"
            );
        }
        let e = errors(&k(Some("agent"), Some("https://k3s:6443"), Some("a b")));
        assert!(e["k3s_token"].contains("one word"));
        let e = errors(&k(Some("master"), None, None));
        assert_eq!(
            e["k3s_role"],
            "`master` is not a k3s role: choose none, server or agent"
        );
        let e = errors(&k(Some("none"), Some("https://k3s:6443"), Some("t")));
        assert!(e["k3s_server_url"].starts_with("k3s role is none"));
        assert!(e["k3s_token"].starts_with("k3s role is none"));
        let e = errors(&k(Some("server"), Some("https://k3s:6443"), None));
        assert!(e["k3s_token"].contains("join token"));
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let req = PairRequest {
            code: String::new(),
            hostname: Some("bad_name".into()),
            ssh_authorized_keys: vec!["nope".into()],
            realm: Some("macula".into()),
            bootstrap_peers: vec!["x".into()],
            k3s_role: Some("agent".into()),
            bundle: Some(PairingBundle {
                gitops_url: Some("not a url".into()),
                ..PairingBundle::default()
            }),
            ..PairRequest::default()
        };
        let e = errors(&req);
        let fields: Vec<&str> = e.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            [
                "bootstrap_peers",
                "bundle.gitops_url",
                "hostname",
                "k3s_server_url",
                "k3s_token",
                "realm",
                "ssh_authorized_keys"
            ]
        );
    }

    #[test]
    fn the_bundle_fills_what_the_request_leaves_empty() {
        let cert = pem("CERTIFICATE", "TUlJQmFrZQ==");
        let key = pem("PRIVATE KEY", "TUlJRXZRSUJBREFO");
        let bundle = PairingBundle {
            realm: Some("io.fleet".into()),
            bootstrap_peers: vec!["fleet:4433".into()],
            certificates: Some(Certificates {
                ca: Some(format!("{cert}\n{cert}\n")),
                cert: Some(cert.clone()),
                key: Some(key.clone()),
            }),
            gitops_url: Some("git@github.com:org/fleet.git".into()),
            ssh_authorized_keys: vec!["ignored: the request has keys".into()],
        };
        let req = PairRequest {
            bundle: Some(bundle.clone()),
            ..good()
        };
        let p = validate(&req).unwrap();
        assert_eq!(p.realm.as_deref(), Some("io.fleet"));
        assert_eq!(p.bootstrap_peers, ["fleet:4433"]);
        assert_eq!(p.ssh_authorized_keys, [ED25519]);
        assert_eq!(
            p.gitops_url.as_deref(),
            Some("git@github.com:org/fleet.git")
        );
        let files: Vec<(String, u32)> = p
            .files
            .iter()
            .map(|(path, _, mode)| (path.display().to_string(), *mode))
            .collect();
        assert_eq!(
            files,
            [
                ("/var/lib/maculaos/credentials/ca.pem".to_string(), 0o644),
                ("/var/lib/maculaos/credentials/cert.pem".to_string(), 0o644),
                ("/var/lib/maculaos/credentials/key.pem".to_string(), 0o600),
            ]
        );
        assert_eq!(p.files[2].1, format!("{key}\n"));
        assert!(!format!("{p:?}").contains("TUlJRXZ"));
        // The request wins where it says something.
        let req = PairRequest {
            realm: Some("io.mine".into()),
            bootstrap_peers: vec!["mine:1".into()],
            bundle: Some(bundle),
            ..good()
        };
        let p = validate(&req).unwrap();
        assert_eq!(p.realm.as_deref(), Some("io.mine"));
        assert_eq!(p.bootstrap_peers, ["mine:1"]);
    }

    #[test]
    fn bad_bundle_values_are_named_as_the_bundle_s() {
        let cert = pem("CERTIFICATE", "TUlJQmFrZQ==");
        let req = PairRequest {
            bundle: Some(PairingBundle {
                realm: Some("fleet".into()),
                bootstrap_peers: vec!["fleet".into()],
                certificates: Some(Certificates {
                    ca: Some("hello".into()),
                    cert: Some(cert),
                    key: None,
                }),
                gitops_url: Some("ftp://x/y".into()),
                ssh_authorized_keys: vec![],
            }),
            ..good()
        };
        let e = errors(&req);
        assert!(e["bundle.realm"].contains("`fleet` is not a realm"));
        assert!(e["bundle.bootstrap_peers"].contains("`fleet` is not a peer"));
        assert!(e["bundle.gitops_url"].contains("not a Git repository URL"));
        let c = &e["bundle.certificates"];
        assert!(
            c.contains("ca: not PEM") && c.contains("cert: the node's certificate needs its `key`"),
            "{c}"
        );
    }

    #[test]
    fn pem_checks() {
        let certs: &[&str] = &["CERTIFICATE"];
        let keys: &[&str] = &["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"];
        assert!(check_pem(&pem("CERTIFICATE", "TUlJ\nQmFrZQ=="), certs).is_ok());
        assert!(check_pem(
            &format!("Bag Attributes\n{}", pem("EC PRIVATE KEY", "TUlJ")),
            keys
        )
        .is_ok());
        let e = check_pem(&pem("PRIVATE KEY", "TUlJ"), certs).unwrap_err();
        assert_eq!(e, "holds a `PRIVATE KEY`, not a CERTIFICATE");
        assert!(check_pem(&pem("CERTIFICATE", "!!!"), certs)
            .unwrap_err()
            .contains("damaged"));
        assert!(check_pem("-----BEGIN CERTIFICATE-----\nTUlJ\n", certs)
            .unwrap_err()
            .contains("cut short"));
        assert!(check_pem(&pem("ENCRYPTED PRIVATE KEY", "TUlJ"), keys)
            .unwrap_err()
            .contains("encrypted"));
    }

    #[test]
    fn git_urls() {
        for ok in [
            "https://github.com/org/fleet.git",
            "http://git.lan:3000/org/fleet",
            "ssh://git@git.lan:2222/org/fleet.git",
            "git@github.com:org/fleet.git",
        ] {
            assert!(check_git_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://x/y",
            "github.com/org/fleet",
            "https://bad host/x",
            "git@:x",
            "git@host:",
            "https:///x",
        ] {
            assert!(check_git_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_configuration_has_the_last_word() {
        // The wizard's own checks are at least as strict as the schema's,
        // so no request reaches this; build the pairings by hand.
        let good = validate(&good()).unwrap();
        assert_eq!(config_refusal(&good), None);
        let p = Pairing {
            hostname: Some("bad name".into()),
            ssh_authorized_keys: vec![],
            bootstrap: false,
            gateway: false,
            realm: None,
            bootstrap_peers: vec![],
            k3s: K3s::None,
            files: vec![],
            gitops_url: None,
        };
        let e = config_refusal(&p).unwrap();
        assert!(
            e.starts_with("the node configuration would be refused: "),
            "{e}"
        );
        assert!(e.contains("`bad name` is not a valid hostname"), "{e}");
        let p = Pairing {
            hostname: None,
            realm: Some("macula".into()),
            ..good
        };
        let e = config_refusal(&p).unwrap();
        assert!(e.contains("maculaos.mesh.realm"), "{e}");
    }

    #[test]
    fn form_parsing_with_percent_escapes() {
        let body = "code=abcde+fghjk&hostname=Edge%2D01&ssh_key=ssh-ed25519+AAAA%2B%2F%3D+me%40laptop%0D%0A%0D%0Assh-rsa+BBBB\
                    &bootstrap=on&realm=io.macula&bootstrap_peers=a%3A1%2C+b%3A2%0Ac%3A3\
                    &k3s_role=agent&k3s_server_url=https%3A%2F%2Fk%3A6443&k3s_token=t%25%zz%4&unknown=1&novalue";
        let r = parse_form(body);
        assert_eq!(r.code, "abcde fghjk");
        assert_eq!(r.hostname.as_deref(), Some("Edge-01"));
        assert_eq!(
            r.ssh_authorized_keys,
            ["ssh-ed25519 AAAA+/= me@laptop", "ssh-rsa BBBB"]
        );
        assert_eq!(
            r.mesh_roles,
            MeshRoles {
                bootstrap: true,
                gateway: false
            }
        );
        assert_eq!(r.realm.as_deref(), Some("io.macula"));
        assert_eq!(r.bootstrap_peers, ["a:1, b:2", "c:3"]);
        assert_eq!(split_list(&r.bootstrap_peers), ["a:1", "b:2", "c:3"]);
        assert_eq!(r.k3s_role.as_deref(), Some("agent"));
        assert_eq!(r.k3s_server_url.as_deref(), Some("https://k:6443"));
        assert_eq!(r.k3s_token.as_deref(), Some("t%%zz%4"));
        let r = parse_form("hostname=&realm=+&gateway=on&bootstrap=off");
        assert_eq!((r.hostname, r.realm), (None, None));
        assert!(r.mesh_roles.gateway && !r.mesh_roles.bootstrap);
        assert_eq!(percent_decode("%C3%A9%e2%82%AC%FF"), "é€\u{fffd}");
        assert_eq!(percent_decode("%+1%-1%"), "% 1%-1%");
    }

    #[test]
    fn a_form_post_validates_like_json() {
        let body = format!(
            "code=x&hostname=n1&ssh_key={}",
            ED25519
                .replace('+', "%2B")
                .replace(' ', "+")
                .replace('=', "%3D")
                .replace('@', "%40")
        );
        let p = validate(&parse_form(&body)).unwrap();
        assert_eq!(p.ssh_authorized_keys, [ED25519]);
        assert_eq!(p.hostname.as_deref(), Some("n1"));
    }

    #[test]
    fn json_requests_refuse_unknown_fields() {
        let r: PairRequest = serde_json::from_str(
            r#"{"code":"x","mesh_roles":{"bootstrap":true},"bundle":{"realm":"io.a"}}"#,
        )
        .unwrap();
        assert!(r.mesh_roles.bootstrap);
        assert!(serde_json::from_str::<PairRequest>(r#"{"code":"x","hostnme":"a"}"#).is_err());
    }
}
