//! The node's mesh identity on the data partition
//! (`/var/lib/maculaos/mesh/`, kept across updates and reboots):
//!
//! | file | what | mode |
//! | --- | --- | --- |
//! | `node.key` | this node's private key (made here, never sent) | 0600 |
//! | `node.crt` | its certificate from the realm CA | 0644 |
//! | `ca.crt` | the realm CA's certificate | 0644 |
//! | `realm` | the realm the certificate is for | 0644 |
//! | `ca.key` | the realm CA's key, only on the node that made the realm | 0600 |
//! | `tokens.json` | join tokens this CA holder made: hashes, expiry, use | 0600 |
//! | `issued.json` | certificates this CA holder signed | 0600 |
//! | `roster.json` | the realm's roster, signed by its CA (see [`crate::roster`]) | 0644 |
//! | `known.json` | the realm's bootstrap and gateway nodes learnt of (see [`crate::known`]) | 0644 |
//! | `order.json` | an operator's order this node accepted, until its agent carries it out (see [`crate::order`]) | 0600 |
//! | `audit.log` | the realm operator's actions, on the CA holder | 0600 |
//!
//! Everything is root's, in a directory only root enters (0700).

use crate::known::{Known, KnownNode};
use crate::pki::{self, CertAndKey, CertInfo};
use crate::roster::{Member, Roster, Signed};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const KNOWN: &str = "known.json";
/// Made whenever something nats-server's configuration is made from
/// changes behind `maculaos apply`'s back (a roster, the known nodes, a
/// certificate from a join or a renewal); `maculaos-mesh-apply.path` runs
/// apply while it exists, and that service removes it first (a change
/// during the run makes it again, so nothing is missed).
pub const APPLY_PENDING: &str = "apply-pending";

/// Where the mesh identity lives on a node.
pub const MESH_DIR: &str = "/var/lib/maculaos/mesh";

/// A state failure: which file, and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The mesh directory of a node (or of a test tree).
#[derive(Debug, Clone)]
pub struct State {
    pub dir: PathBuf,
}

/// What the node's identity is, as `maculaos mesh status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The realm of the node's certificate.
    pub realm: Option<String>,
    pub certificate: Option<CertInfo>,
    pub ca: Option<CertInfo>,
    /// This node holds the realm CA's key (it made the realm; it signs joins).
    pub ca_holder: bool,
}

/// One join token, as the CA holder keeps it: only the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub sha256: String,
    /// Seconds since the epoch.
    pub expires: i64,
    /// The node that used it, once used.
    pub used_by: Option<String>,
    /// A name this token may take from the key that had it (a node
    /// reinstalled with a new key).
    #[serde(default)]
    pub replace: Option<String>,
}

/// A certificate the CA holder signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    pub node: String,
    pub sha256: String,
    /// Which key the certificate is for: a name stays with its key.
    #[serde(default)]
    pub key_sha256: String,
    pub serial: String,
    pub not_after: i64,
    pub revoked: bool,
    /// What the roster pins for it (see [`crate::roster`]).
    #[serde(default)]
    pub spki_sha256: String,
}

/// An order this node accepted, until its agent carries it out.
pub const ORDER_FILE: &str = "order.json";
/// The orders this node took lately (their digests), so that none is
/// taken twice.
pub const ORDERS_SEEN: &str = "orders-seen.json";
/// The realm operator's actions on the CA holder, one JSON line each.
pub const AUDIT_FILE: &str = "audit.log";

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl State {
    pub fn new(dir: impl Into<PathBuf>) -> State {
        State { dir: dir.into() }
    }

    /// The node's state under `root` (`/` on a node).
    pub fn under(root: &Path) -> State {
        State::new(root.join(MESH_DIR.trim_start_matches('/')))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn node_key(&self) -> PathBuf {
        self.path("node.key")
    }
    pub fn node_cert(&self) -> PathBuf {
        self.path("node.crt")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.path("ca.crt")
    }
    fn ca_key(&self) -> PathBuf {
        self.path("ca.key")
    }

    fn read(&self, name: &str) -> Result<Option<String>, StateError> {
        let p = self.path(name);
        match fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// Write `name` atomically with `mode`.
    fn write(&self, name: &str, data: &[u8], mode: u32) -> Result<(), StateError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.path(name);
        // Per process: two writers never share (or remove) one temp file.
        // Per process and per call: two writers (processes, or threads of
        // maculaos-meshd) never share (or remove) one temp file.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.path(&format!(".{name}.{}.{seq}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Ask for a `maculaos apply` ([`APPLY_PENDING`]): after a renewed
    /// certificate is installed (a join runs apply itself, once its
    /// configuration is written).
    pub fn request_apply(&self) -> Result<(), StateError> {
        self.mark_pending()
    }

    fn mark_pending(&self) -> Result<(), StateError> {
        self.write(APPLY_PENDING, b"", 0o644)
    }

    /// The node's key, made now if it has none. Returns whether it was made.
    pub fn ensure_key(&self) -> Result<bool, StateError> {
        if self.node_key().exists() {
            return Ok(false);
        }
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(io(&self.dir))?;
        self.write("node.key", pki::new_key()?.as_bytes(), 0o600)?;
        Ok(true)
    }

    pub fn key_pem(&self) -> Result<String, StateError> {
        self.read("node.key")?
            .ok_or_else(|| StateError::Invalid(format!("{} is missing", self.node_key().display())))
    }

    /// What the node's identity is.
    pub fn identity(&self) -> Result<Identity, StateError> {
        let cert = self.read("node.crt")?;
        let ca = self.read("ca.crt")?;
        Ok(Identity {
            realm: self.read("realm")?.map(|r| r.trim().to_string()),
            certificate: cert.as_deref().and_then(pki::cert_info),
            ca: ca.as_deref().and_then(pki::cert_info),
            ca_holder: self.ca_key().exists(),
        })
    }

    /// Whether the node holds a certificate for `realm` it can present.
    pub fn joined(&self, realm: &str) -> bool {
        self.identity().is_ok_and(|i| {
            i.realm.as_deref() == Some(realm) && i.certificate.is_some() && i.ca.is_some()
        })
    }

    fn ca(&self) -> Result<CertAndKey, StateError> {
        match (self.read("ca.crt")?, self.read("ca.key")?) {
            (Some(cert_pem), Some(key_pem)) => Ok(CertAndKey { cert_pem, key_pem }),
            _ => Err(StateError::Invalid(
                "this node does not hold the realm CA: certificates are signed on the bootstrap node that made the realm".into(),
            )),
        }
    }

    /// Sign `order` with the realm CA's key (CA holder only): the realm
    /// operator's credential.
    pub fn sign_order(
        &self,
        order: &crate::order::Order,
    ) -> Result<crate::order::Signed, StateError> {
        Ok(order.sign(&self.ca()?.key_pem)?)
    }

    /// `text` signed with the realm CA's key (CA holder only).
    pub fn sign_text(&self, text: String) -> Result<crate::order::Signed, StateError> {
        Ok(crate::order::sign_text(&self.ca()?.key_pem, text)?)
    }

    /// The text of `signed`, if this node's realm CA signed it.
    pub fn verified_text(
        &self,
        signed: &crate::order::Signed,
        what: &str,
    ) -> Result<String, String> {
        let ca = self
            .read("ca.crt")
            .map_err(|e| e.to_string())?
            .ok_or("this node has no realm CA to check signatures with")?;
        signed.verified(&ca, what).map(str::to_string)
    }

    /// `signed`, if this node's realm CA signed it for `realm` and `node`
    /// within [`crate::order::TTL`] of now.
    pub fn open_order(
        &self,
        signed: &crate::order::Signed,
        realm: &str,
        node: &str,
    ) -> Result<crate::order::Order, String> {
        let ca = self
            .read("ca.crt")
            .map_err(|e| e.to_string())?
            .ok_or("this node has no realm CA to check the order with")?;
        signed.open(&ca, realm, node, now().max(0) as u64)
    }

    /// Keep an order this node accepted ([`ORDER_FILE`], root's only)
    /// for the health agent, which carries it out (maculaos-meshd, which
    /// takes it, may not reset the node).
    pub fn keep_order(&self, signed: &crate::order::Signed) -> Result<(), StateError> {
        self.write(ORDER_FILE, signed.to_json().as_bytes(), 0o600)
    }

    /// The order kept by [`State::keep_order`], removed as it is read: an
    /// order is carried out once.
    pub fn take_order(&self) -> Option<Result<crate::order::Signed, String>> {
        // Moved aside before it is read: an order meshd keeps meanwhile is
        // a new file, taken next time, not one removed unread.
        let taking = self.path(&format!("{ORDER_FILE}.taking"));
        std::fs::rename(self.path(ORDER_FILE), &taking).ok()?;
        let text = std::fs::read_to_string(&taking);
        let _ = std::fs::remove_file(&taking);
        Some(
            text.map_err(|e| e.to_string())
                .and_then(|t| crate::order::Signed::from_json(t.as_bytes())),
        )
    }

    /// Remember that `signed` was taken, until it expires: an order is
    /// taken once (a recorded one sent again is refused). `false` when it
    /// was taken before.
    pub fn first_time(&self, signed: &crate::order::Signed) -> Result<bool, StateError> {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(signed.text.as_bytes()));
        let now = now();
        self.locked(|| {
            let mut seen: std::collections::BTreeMap<String, i64> = self
                .read(ORDERS_SEEN)?
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            // Kept past the window either way: older orders are refused anyway.
            seen.retain(|_, at| now - *at <= 2 * crate::order::TTL as i64);
            if seen.contains_key(&digest) {
                return Ok(false);
            }
            seen.insert(digest, now);
            self.save(ORDERS_SEEN, &seen, 0o600)?;
            Ok(true)
        })
    }

    /// Add one line to the realm operator's audit log ([`AUDIT_FILE`],
    /// root's only): who did what, when.
    pub fn audit(&self, line: &serde_json::Value) -> Result<(), StateError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(AUDIT_FILE);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        writeln!(f, "{line}").map_err(io(&path))?;
        f.sync_all().map_err(io(&path))
    }

    /// Run `f` holding the mesh directory's lock: the CLI (tokens), the
    /// join service (tokens, issued certificates) and apply (renewals)
    /// read, change and write the same files.
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, StateError>) -> Result<T, StateError> {
        use nix::fcntl::{Flock, FlockArg};
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.path(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        let _lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io(&path)(std::io::Error::from(e)))?;
        f()
    }

    /// Make a new realm here (development mode): its CA, and this node's
    /// certificate from it. A CA this node already holds is never replaced
    /// (every node of its realm depends on it).
    pub fn create_realm(
        &self,
        realm: &str,
        node: &str,
        names: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<(), StateError> {
        self.refuse_second_ca()?;
        let ca = pki::create_ca(realm)?;
        self.start_realm(realm, node, names, ips, &ca)
    }

    /// Make a realm here with the operator's CA (`tls_mode: production`),
    /// checked first ([`pki::check_operator_ca`]); returns the days the CA
    /// has left.
    pub fn import_realm(
        &self,
        realm: &str,
        node: &str,
        names: &[String],
        ips: &[std::net::IpAddr],
        ca: &CertAndKey,
    ) -> Result<i64, StateError> {
        let days = pki::check_operator_ca(&ca.cert_pem, &ca.key_pem)
            .map_err(|e| StateError::Invalid(format!("the operator's CA: {e}")))?;
        self.refuse_second_ca()?;
        if self.identity()?.certificate.is_some() {
            return Err(StateError::Invalid(
                "this node is in a realm already (it joined one): a CA goes on a new realm's first bootstrap node".into(),
            ));
        }
        self.start_realm(realm, node, names, ips, ca)?;
        Ok(days)
    }

    fn refuse_second_ca(&self) -> Result<(), StateError> {
        if self.ca_key().exists() {
            let held = self.identity()?.realm.unwrap_or_default();
            return Err(StateError::Invalid(format!(
                "this node holds the CA of realm {held}, which its nodes depend on: it does not take \
                 another (to start over, factory-reset the node or remove {})",
                self.dir.display()
            )));
        }
        Ok(())
    }

    fn start_realm(
        &self,
        realm: &str,
        node: &str,
        names: &[String],
        ips: &[std::net::IpAddr],
        ca: &CertAndKey,
    ) -> Result<(), StateError> {
        self.ensure_key()?;
        self.write("ca.key", ca.key_pem.as_bytes(), 0o600)?;
        self.write("ca.crt", ca.cert_pem.as_bytes(), 0o644)?;
        self.write("realm", format!("{realm}\n").as_bytes(), 0o644)?;
        for f in ["tokens.json", "issued.json", "roster.json"] {
            let _ = fs::remove_file(self.path(f));
        }
        self.sign_own(realm, node, names, ips)
    }

    /// A new certificate for this node from the CA it holds (a new realm, a
    /// renewal, a new name), with extra DNS `names` (its advertised name).
    pub fn sign_own(
        &self,
        realm: &str,
        node: &str,
        names: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<(), StateError> {
        self.locked(|| {
            let ca = self.ca()?;
            let csr = pki::csr(&self.key_pem()?, node)?;
            let cert = pki::sign_node(&ca, realm, node, names, ips, &csr)?;
            self.record_issued(node, &cert)?;
            self.write("node.crt", cert.as_bytes(), 0o644)?;
            self.write_roster(&self.issued()?).map(|_| ())
        })
    }

    /// Whether this node's certificate carries the DNS name or address `name`.
    pub fn certificate_names(&self, name: &str) -> bool {
        self.read("node.crt")
            .ok()
            .flatten()
            .is_some_and(|c| pki::san_names(&c).iter().any(|n| n == name))
    }

    /// Whether this node's certificate has less than a third of its life left.
    pub fn needs_renewal(&self) -> bool {
        self.identity()
            .ok()
            .and_then(|i| i.certificate)
            .is_some_and(|c| c.not_after - now() < (pki::NODE_DAYS as i64 * 86_400) / 3)
    }

    /// Keep what a join brought: the realm, its CA and this node's certificate.
    /// A CA this node held before is dropped: it is in another realm now.
    pub fn install_join(
        &self,
        realm: &str,
        ca_pem: &str,
        cert_pem: &str,
    ) -> Result<(), StateError> {
        self.refuse_if_ca_holder()?;
        let key = self.key_pem()?;
        if !pki::signed_by(cert_pem, ca_pem) {
            return Err(StateError::Invalid(
                "the certificate received is not signed by the realm CA received with it".into(),
            ));
        }
        if !pki::same_public_key(cert_pem, &key) {
            return Err(StateError::Invalid(
                "the certificate received is not for this node's key".into(),
            ));
        }
        self.write("ca.crt", ca_pem.as_bytes(), 0o644)?;
        self.write("node.crt", cert_pem.as_bytes(), 0o644)?;
        self.write("realm", format!("{realm}\n").as_bytes(), 0o644)
    }

    /// A node that holds its realm's CA does not join another realm: the
    /// nodes of its own would be orphaned.
    pub fn refuse_if_ca_holder(&self) -> Result<(), StateError> {
        if self.ca_key().exists() {
            let held = self.identity()?.realm.unwrap_or_default();
            return Err(StateError::Invalid(format!(
                "this node holds the CA of realm {held} and signs its nodes' certificates: it cannot \
                 join a realm (to start over, factory-reset the node or remove {})",
                self.dir.display()
            )));
        }
        Ok(())
    }

    fn load<T: for<'de> Deserialize<'de> + Default>(&self, name: &str) -> Result<T, StateError> {
        match self.read(name)? {
            None => Ok(T::default()),
            Some(s) => serde_json::from_str(&s)
                .map_err(|e| StateError::Invalid(format!("{}: {e}", self.path(name).display()))),
        }
    }

    fn save<T: Serialize>(&self, name: &str, v: &T, mode: u32) -> Result<(), StateError> {
        let text = serde_json::to_vec_pretty(v).unwrap_or_default();
        self.write(name, &text, mode)
    }

    /// The bootstrap and gateway nodes this node has learnt of (an empty
    /// list when there is no file yet).
    pub fn known(&self) -> Result<Known, StateError> {
        self.load(KNOWN)
    }

    /// Add to [`State::known`] (`switch`: a join, which may start the list
    /// for another realm); returns the new version if anything changed.
    pub fn learn(
        &self,
        realm: &str,
        new: &[KnownNode],
        switch: bool,
    ) -> Result<Option<u64>, StateError> {
        self.update_known(|k| k.learn(realm, new, switch))
    }

    /// The names the realm roster this node keeps lets in (none without a
    /// roster).
    pub fn roster_members(&self) -> Vec<String> {
        self.read_roster()
            .map(|(_, r)| r.members.into_iter().map(|m| m.node).collect())
            .unwrap_or_default()
    }

    /// Add what mDNS found: only nodes the roster kept now lets in (read
    /// under the lock, so a roster that revoked one meanwhile wins).
    pub fn learn_announced(
        &self,
        realm: &str,
        found: impl FnOnce(&[String]) -> Vec<KnownNode>,
    ) -> Result<Option<u64>, StateError> {
        self.locked(|| {
            let new = found(&self.roster_members());
            self.update_known_locked(|k| k.learn(realm, &new, false))
        })
    }

    fn update_known(&self, f: impl FnOnce(&mut Known) -> bool) -> Result<Option<u64>, StateError> {
        self.locked(|| self.update_known_locked(f))
    }

    /// [`State::update_known`] for a caller that holds the lock.
    fn update_known_locked(
        &self,
        f: impl FnOnce(&mut Known) -> bool,
    ) -> Result<Option<u64>, StateError> {
        // A file that does not parse is replaced, not kept forever.
        let mut k = self.known().unwrap_or_default();
        if !f(&mut k) {
            return Ok(None);
        }
        self.save(KNOWN, &k, 0o644)?;
        self.mark_pending()?;
        Ok(Some(k.version))
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StateError> {
        self.load("tokens.json")
    }

    /// Keep a new token's hash; expired ones are dropped.
    pub fn add_token(&self, rec: TokenRecord) -> Result<(), StateError> {
        self.ca()?;
        self.locked(|| {
            let mut all = self.tokens()?;
            let t = now();
            all.retain(|r| r.expires > t);
            all.push(rec);
            self.save("tokens.json", &all, 0o600)
        })
    }

    /// Sign a joining node's request with the token whose secret hashes to
    /// `sha256`: the token must be known, unexpired and unused, and the
    /// name must not belong to another key. The token is used up only once
    /// the certificate is made (a bad request does not burn it), under the
    /// lock (two joins cannot both use it). Returns (realm, CA, certificate).
    pub fn redeem(
        &self,
        sha256: &str,
        node: &str,
        ips: &[std::net::IpAddr],
        csr_pem: &str,
    ) -> Result<(String, String, String), StateError> {
        self.locked(|| {
            let mut all = self.tokens()?;
            let t = now();
            let Some(i) = all
                .iter()
                .position(|r| crate::join::same(&r.sha256, sha256))
            else {
                return Err(StateError::Invalid("unknown join token".into()));
            };
            if all[i].expires <= t {
                return Err(StateError::Invalid(
                    "the join token has expired: make a new one with `maculaos mesh token create`".into(),
                ));
            }
            if let Some(by) = &all[i].used_by {
                return Err(StateError::Invalid(format!(
                    "the join token was already used (by {by}): tokens are for one node"
                )));
            }
            let ca = self.ca()?;
            let realm = self
                .identity()?
                .realm
                .ok_or_else(|| StateError::Invalid("this node has no realm".into()))?;
            let cert = pki::sign_node(&ca, &realm, node, &[], ips, csr_pem)?;
            let key = pki::cert_info(&cert).map(|c| c.key_sha256).unwrap_or_default();
            let replacing = all[i].replace.as_deref() == Some(node);
            let mut issued = self.issued()?;
            if let Some(other) = issued.iter().find(|i| {
                i.node == node
                    && !i.revoked
                    && i.not_after > t
                    && !i.key_sha256.is_empty()
                    && i.key_sha256 != key
                    && !replacing
            }) {
                return Err(StateError::Invalid(format!(
                    "the name {node} belongs to another node's key (certificate {}): give this node \
                     another hostname, or make its token with `maculaos mesh token create --replace {node}` \
                     if it is that node, reinstalled",
                    other.serial
                )));
            }
            if replacing {
                for old in issued.iter_mut().filter(|i| i.node == node && i.key_sha256 != key) {
                    old.revoked = true;
                }
                // The roster follows once the join is answered
                // (refresh_roster).
                self.save("issued.json", &issued, 0o600)?;
            }
            all[i].used_by = Some(node.to_string());
            self.save("tokens.json", &all, 0o600)?;
            self.record_issued(node, &cert)?;
            Ok((realm, ca.cert_pem, cert))
        })
    }

    /// On the CA holder: a new certificate for a node that holds a valid
    /// one from this CA (renewal before it expires, over the mesh). The
    /// request must be signed by the certificate's key, and the new
    /// certificate names what the old one did (a new name is a new join).
    /// A revoked or expired certificate is not renewed: that node joins
    /// again with a token. The older records of that node's key make way
    /// for the new one (the roster pins keys, so revoking the key still
    /// covers every certificate of it).
    pub fn renew(&self, cert_pem: &str, csr_pem: &str) -> Result<String, StateError> {
        let bad = |why: &str| StateError::Invalid(why.to_string());
        self.locked(|| {
            let ca = self.ca()?;
            let realm = self
                .identity()?
                .realm
                .ok_or_else(|| bad("this node has no realm"))?;
            let info = pki::cert_info(cert_pem)
                .ok_or_else(|| bad("the certificate to renew does not parse"))?;
            if !pki::signed_by(cert_pem, &ca.cert_pem) {
                return Err(bad("the certificate to renew is not from this realm's CA"));
            }
            if info.not_after <= now() {
                return Err(bad(
                    "the certificate has expired: join again with a new token (`maculaos mesh join`)",
                ));
            }
            // By key and name, not by this exact certificate: a node whose
            // last answer was lost still holds the one before (renewals
            // keep one record per key).
            let mut issued = self.issued()?;
            let mine = |i: &&Issued| i.node == info.common_name && i.key_sha256 == info.key_sha256;
            // The newest record decides: revoked, or joined again since.
            let rec = issued
                .iter()
                .filter(mine)
                .max_by_key(|i| i.not_after)
                .cloned()
                .filter(|i| i.not_after > now())
                .ok_or_else(|| bad("this CA has no valid certificate on record for that node and key"))?;
            if rec.revoked {
                return Err(bad(
                    "the certificate is revoked: this node is out of the realm until it joins again with a new token",
                ));
            }
            if pki::csr_key_sha256(csr_pem).as_deref() != Some(info.key_sha256.as_str()) {
                return Err(bad(
                    "the renewal request is not signed by the certificate's key",
                ));
            }
            let (names, ips) = extra_names(cert_pem, &rec.node);
            let cert = pki::sign_node(&ca, &realm, &rec.node, &names, &ips, csr_pem)?;
            issued.retain(|i| !(i.node == rec.node && i.key_sha256 == info.key_sha256));
            self.save("issued.json", &issued, 0o600)?;
            self.record_issued(&rec.node, &cert)?;
            Ok(cert)
        })
    }

    pub fn issued(&self) -> Result<Vec<Issued>, StateError> {
        self.load("issued.json")
    }

    fn record_issued(&self, node: &str, cert_pem: &str) -> Result<(), StateError> {
        let info = pki::cert_info(cert_pem).ok_or_else(|| {
            StateError::Invalid("the certificate just signed does not parse".into())
        })?;
        let mut all = self.issued()?;
        all.push(Issued {
            node: node.to_string(),
            sha256: info.sha256,
            key_sha256: info.key_sha256,
            serial: info.serial,
            not_after: info.not_after,
            revoked: false,
            spki_sha256: info.spki_sha256,
        });
        self.save("issued.json", &all, 0o600)
    }

    /// Bring the roster up to date with what was issued (CA holder), one
    /// version past the last one where it differs. The join service calls
    /// this once its answer is sent: the new roster restarts the server,
    /// and this daemon with it.
    pub fn refresh_roster(&self) -> Result<(), StateError> {
        self.locked(|| {
            let issued = self.issued()?;
            self.write_roster(&issued).map(|_| ())
        })
    }

    /// Make and sign the roster from what was issued (CA holder, under the
    /// lock): every certificate neither revoked nor expired. A roster that
    /// lets in the same nodes as the last one is not written again.
    /// `None` while a valid certificate recorded before rosters existed has
    /// no key hash to pin and no newer record of the same key covers it: a
    /// roster would lock that node out (`revoke` then says which nodes).
    fn write_roster(&self, issued: &[Issued]) -> Result<Option<Roster>, StateError> {
        let ca = self.ca()?;
        let realm = self
            .identity()?
            .realm
            .ok_or_else(|| StateError::Invalid("this node has no realm".into()))?;
        if !uncovered_legacy(issued).is_empty() {
            return Ok(None);
        }
        let t = now();
        let members: Vec<Member> = issued
            .iter()
            .filter(|i| !i.revoked && i.not_after > t && !i.spki_sha256.is_empty())
            .map(|i| Member {
                node: i.node.clone(),
                spki_sha256: i.spki_sha256.clone(),
            })
            .collect();
        let mut revoked: Vec<String> = issued
            .iter()
            .filter(|i| i.revoked && !members.iter().any(|m| m.node == i.node))
            .map(|i| i.node.clone())
            .collect();
        revoked.sort();
        revoked.dedup();
        let last = self.read_roster().map(|(_, r)| r);
        if let Some(last) = last
            .as_ref()
            .filter(|l| l.members == members && l.revoked == revoked)
        {
            return Ok(Some(last.clone()));
        }
        // Never below the clock: a roster.json lost or damaged here must
        // not restart the count below what the listeners kept (they would
        // ignore every roster from then on).
        let version = last
            .map_or(0, |l| l.version + 1)
            .max(u64::try_from(t).unwrap_or(0));
        let roster = Roster {
            realm,
            version,
            members,
            revoked,
        };
        let signed = roster.sign(&ca.key_pem)?;
        self.write("roster.json", signed.to_json().as_bytes(), 0o644)?;
        self.mark_pending()?;
        Ok(Some(roster))
    }

    /// The overlay peers meshd took from the realm (none when it took none).
    pub fn overlay_peers(&self) -> Vec<crate::overlay::OverlayPeer> {
        self.read(crate::overlay::PEERS_FILE)
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Keep `peers` (sorted by node) as the overlay's realm peers; when they
    /// differ from those kept, ask for an apply (which makes them
    /// WireGuard peers). Returns whether they changed.
    pub fn keep_overlay_peers(
        &self,
        mut peers: Vec<crate::overlay::OverlayPeer>,
    ) -> Result<bool, StateError> {
        peers.sort_by(|a, b| a.node.cmp(&b.node));
        self.locked(|| {
            if self.overlay_peers() == peers {
                return Ok(false);
            }
            let text = serde_json::to_vec_pretty(&peers).unwrap_or_default();
            self.write(crate::overlay::PEERS_FILE, &text, 0o644)?;
            self.mark_pending()?;
            Ok(true)
        })
    }

    /// The roster this node keeps, signed and opened, if its CA's signature
    /// holds and it is for this node's realm.
    pub fn read_roster(&self) -> Option<(Signed, Roster)> {
        let text = self.read("roster.json").ok()??;
        let signed = Signed::from_json(&text).ok()?;
        let ca = self.read("ca.crt").ok()??;
        let realm = self.identity().ok()?.realm?;
        let roster = signed.open(&ca, &realm).ok()?;
        Some((signed, roster))
    }

    /// Keep `signed` if the realm CA signed it for this node's realm and it
    /// is newer than the roster kept here; returns the roster kept.
    pub fn accept_roster(
        &self,
        signed: &Signed,
        listener: bool,
    ) -> Result<Option<Roster>, StateError> {
        let ca = self
            .read("ca.crt")?
            .ok_or_else(|| StateError::Invalid("this node has no realm CA".into()))?;
        let realm = self
            .identity()?
            .realm
            .ok_or_else(|| StateError::Invalid("this node has no realm".into()))?;
        let roster = signed.open(&ca, &realm).map_err(StateError::Invalid)?;
        self.locked(|| {
            let newer = self
                .read_roster()
                .is_none_or(|(_, kept)| kept.version < roster.version);
            if newer {
                self.write("roster.json", signed.to_json().as_bytes(), 0o644)?;
                // Only a listener's server pins it; a peer's is left alone.
                if listener {
                    self.mark_pending()?;
                }
            }
            // A node revoked since is no longer dialled where mDNS found it
            // (again at every roster received: an earlier failure is not
            // left standing).
            let members = self.roster_members();
            self.update_known_locked(|k| k.keep_members(&members))?;
            Ok(newer.then_some(roster))
        })
    }

    /// Revoke every certificate of `node` (CA holder), and every other
    /// certificate for the same key (the node renamed and joined again): it
    /// leaves the roster, so the realm's listeners refuse it once they have
    /// the new one. Returns the certificates revoked now and the roster.
    pub fn revoke(&self, node: &str) -> Result<(Vec<Issued>, Roster), StateError> {
        self.ca()?;
        self.locked(|| {
            let own_key = self
                .identity()?
                .certificate
                .map(|c| c.key_sha256)
                .unwrap_or_default();
            let mut issued = self.issued()?;
            let keys: Vec<String> = issued
                .iter()
                .filter(|i| i.node == node)
                .map(|i| i.key_sha256.clone())
                .filter(|k| !k.is_empty())
                .collect();
            if !issued.iter().any(|i| i.node == node) {
                return Err(StateError::Invalid(format!(
                    "this realm never issued a certificate to {node} (`maculaos mesh status` lists the nodes connected)"
                )));
            }
            if keys.contains(&own_key) {
                return Err(StateError::Invalid(format!(
                    "{node} is this node's key, which holds the realm CA: it cannot revoke itself"
                )));
            }
            let legacy = uncovered_legacy(&issued);
            if !legacy.is_empty() {
                return Err(StateError::Invalid(format!(
                    "the certificates of {} were made before rosters existed and cannot be pinned, \
                     so no node can be refused yet: give each a new token (`maculaos mesh token create`) \
                     and `maculaos mesh join` it again, then revoke {node}",
                    legacy.join(", ")
                )));
            }
            let mut now_revoked = Vec::new();
            for i in issued
                .iter_mut()
                .filter(|i| !i.revoked && (i.node == node || keys.contains(&i.key_sha256)))
            {
                i.revoked = true;
                now_revoked.push(i.clone());
            }
            if now_revoked.is_empty() {
                return Err(StateError::Invalid(format!(
                    "every certificate of {node} is revoked already"
                )));
            }
            self.save("issued.json", &issued, 0o600)?;
            let roster = self.write_roster(&issued)?.ok_or_else(|| {
                StateError::Invalid("the roster could not be made after revoking".into())
            })?;
            Ok((now_revoked, roster))
        })
    }
}

/// Nodes with a valid certificate recorded before rosters existed (no key
/// hash to pin) that no newer record of the same key covers.
/// The DNS names (besides `node` and `node.local`) and addresses a
/// certificate carries: what a renewal keeps.
fn extra_names(cert_pem: &str, node: &str) -> (Vec<String>, Vec<std::net::IpAddr>) {
    let (mut names, mut ips) = (Vec::new(), Vec::new());
    for n in pki::san_names(cert_pem) {
        match n.parse::<std::net::IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) if n != node && n != format!("{node}.local") => names.push(n),
            Err(_) => {}
        }
    }
    (names, ips)
}

fn uncovered_legacy(issued: &[Issued]) -> Vec<String> {
    let t = now();
    let valid = |i: &&Issued| !i.revoked && i.not_after > t;
    let mut v: Vec<String> = issued
        .iter()
        .filter(valid)
        .filter(|i| i.spki_sha256.is_empty())
        .filter(|old| {
            !issued.iter().filter(valid).any(|i| {
                !i.spki_sha256.is_empty()
                    && !old.key_sha256.is_empty()
                    && i.key_sha256 == old.key_sha256
            })
        })
        .map(|i| i.node.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_realm_made_here_holds_its_ca_and_a_certificate_for_this_node() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::new(dir.path().join("mesh"));
        assert!(!s.joined("io.macula"));
        s.create_realm("io.macula", "b1", &[], &[]).unwrap();
        assert!(s.joined("io.macula"));
        assert!(!s.joined("io.other"));
        let id = s.identity().unwrap();
        assert!(id.ca_holder);
        assert_eq!(id.certificate.unwrap().common_name, "b1");
        let mode = |f: &str| fs::metadata(s.path(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("node.key"), 0o600);
        assert!(!s.needs_renewal());
        assert_eq!(s.issued().unwrap().len(), 1);
    }

    #[test]
    fn a_realm_with_the_operators_ca_is_checked_first_and_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::new(dir.path().join("mesh"));
        let op = pki::create_ca("operator").unwrap();
        let wrong = CertAndKey {
            cert_pem: op.cert_pem.clone(),
            key_pem: pki::new_key().unwrap(),
        };
        let e = s
            .import_realm("io.macula", "b1", &[], &[], &wrong)
            .unwrap_err();
        assert!(
            e.to_string().contains("the operator's CA: the key is not"),
            "{e}"
        );
        assert!(
            !s.path("ca.key").exists(),
            "nothing is kept from a refused CA"
        );
        let days = s.import_realm("io.macula", "b1", &[], &[], &op).unwrap();
        assert!(days > 3000);
        assert!(s.joined("io.macula") && s.identity().unwrap().ca_holder);
        assert!(pki::signed_by(
            &fs::read_to_string(s.node_cert()).unwrap(),
            &op.cert_pem
        ));
        let e = s
            .import_realm("io.macula", "b1", &[], &[], &op)
            .unwrap_err();
        assert!(e.to_string().contains("does not take another"), "{e}");
        // A node that joined a realm is no place for a new one's CA.
        let joined = State::new(dir.path().join("other"));
        joined.create_realm("io.x", "n", &[], &[]).unwrap();
        fs::remove_file(joined.path("ca.key")).unwrap();
        let e = joined.import_realm("io.y", "n", &[], &[], &op).unwrap_err();
        assert!(e.to_string().contains("in a realm already"), "{e}");
    }

    fn token(s: &State, secret_hash: &str, expires: i64) {
        s.add_token(TokenRecord {
            sha256: secret_hash.into(),
            expires,
            used_by: None,
            replace: None,
        })
        .unwrap();
    }

    fn request(node: &str) -> String {
        pki::csr(&pki::new_key().unwrap(), node).unwrap()
    }

    #[test]
    fn a_token_is_used_once_and_not_after_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::new(dir.path());
        // Only a CA holder keeps tokens.
        let rec = TokenRecord {
            sha256: "aa".into(),
            expires: now() + 60,
            used_by: None,
            replace: None,
        };
        assert!(s.add_token(rec).is_err());
        s.create_realm("io.macula", "b1", &[], &[]).unwrap();
        token(&s, "aa", now() + 60);
        token(&s, "bb", now() - 1);
        // A request that cannot be signed does not use the token up.
        let e = s.redeem("aa", "p1", &[], "not a request").unwrap_err();
        assert!(e.to_string().contains("signing request"), "{e}");
        s.redeem("aa", "p1", &[], &request("p1")).unwrap();
        let again = s
            .redeem("aa", "p2", &[], &request("p2"))
            .unwrap_err()
            .to_string();
        assert!(again.contains("already used (by p1)"), "{again}");
        let e = s
            .redeem("bb", "p2", &[], &request("p2"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expired"), "{e}");
        // Expired tokens are dropped when the next one is added.
        token(&s, "dd", now() + 60);
        let e = s
            .redeem("bb", "p2", &[], &request("p2"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown"), "{e}");
    }

    #[test]
    fn tokens_made_and_used_at_once_are_all_kept_and_used_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::new(dir.path());
        s.create_realm("io.macula", "b1", &[], &[]).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || token(&s, &format!("t{i}"), now() + 60))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.tokens().unwrap().len(), 8);
        let joins: Vec<_> = (0..4)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    s.redeem("t0", &format!("p{i}"), &[], &request(&format!("p{i}")))
                        .is_ok()
                })
            })
            .collect();
        let ok = joins
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(ok, 1, "one token let {ok} nodes in");
    }

    #[test]
    fn a_name_stays_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::new(dir.path());
        s.create_realm("io.macula", "b1", &[], &[]).unwrap();
        let key = pki::new_key().unwrap();
        for t in ["t1", "t2", "t3"] {
            token(&s, t, now() + 60);
        }
        s.redeem("t1", "p1", &[], &pki::csr(&key, "p1").unwrap())
            .unwrap();
        // The same node again (a renewal) is fine; another key is not.
        s.redeem("t2", "p1", &[], &pki::csr(&key, "p1").unwrap())
            .unwrap();
        let e = s
            .redeem("t3", "p1", &[], &request("p1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to another node's key"), "{e}");
        // Nor may another node take the CA holder's own name.
        let e = s
            .redeem("t3", "b1", &[], &request("b1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to another node's key"), "{e}");
    }

    #[test]
    fn what_changes_behind_applys_back_asks_for_an_apply() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::new(dir.path().join("b1"));
        s.create_realm("io.macula", "b1", &[], &[]).unwrap();
        let pending = s.path(APPLY_PENDING);
        // A new roster (here: the realm's first), the known nodes, a join's
        // certificate each make the file; what changes nothing does not.
        assert!(pending.exists());
        fs::remove_file(&pending).unwrap();
        let b2 = KnownNode {
            address: "b2.local:4433".into(),
            role: "bootstrap".into(),
            source: "join".into(),
        };
        s.learn("io.macula", std::slice::from_ref(&b2), true)
            .unwrap();
        assert!(pending.exists());
        fs::remove_file(&pending).unwrap();
        s.learn("io.macula", &[b2], true).unwrap();
        assert!(!pending.exists());
        s.refresh_roster().unwrap();
        assert!(!pending.exists(), "the same roster again");
    }

    #[test]
    fn a_valid_certificate_is_renewed_for_its_own_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::new(dir.path().join("b1"));
        s.create_realm("io.macula", "b1", &[], &[]).unwrap();
        token(&s, "t1", now() + 60);
        let key = pki::new_key().unwrap();
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let (_, _, cert) = s
            .redeem("t1", "p1", &[ip], &pki::csr(&key, "p1").unwrap())
            .unwrap();
        s.refresh_roster().unwrap();
        let (_, before) = s.read_roster().unwrap();
        // Someone else's key, or a name asked for, changes nothing.
        let e = s.renew(&cert, &request("p1")).unwrap_err();
        assert!(
            e.to_string()
                .contains("not signed by the certificate's key"),
            "{e}"
        );
        let new = s.renew(&cert, &pki::csr(&key, "other").unwrap()).unwrap();
        let info = pki::cert_info(&new).unwrap();
        assert_eq!(info.common_name, "p1");
        assert!(pki::san_names(&new).contains(&"192.0.2.7".to_string()));
        assert_ne!(info.sha256, pki::cert_info(&cert).unwrap().sha256);
        // One record per key: renewals do not pile up; the roster (keys)
        // stays as it was.
        let p1: Vec<_> = s
            .issued()
            .unwrap()
            .into_iter()
            .filter(|i| i.node == "p1")
            .collect();
        assert_eq!(p1.len(), 1);
        assert_eq!(p1[0].sha256, info.sha256);
        s.refresh_roster().unwrap();
        assert_eq!(s.read_roster().unwrap().1.version, before.version);
        // The answer was lost: the node asks again with the certificate it
        // still has, and gets one; still one record for its key.
        let again = s.renew(&cert, &pki::csr(&key, "p1").unwrap()).unwrap();
        assert_ne!(again, new);
        let n = s
            .issued()
            .unwrap()
            .iter()
            .filter(|i| i.node == "p1")
            .count();
        assert_eq!(n, 1);
        // A revoked node is not renewed, with any of its certificates.
        s.revoke("p1").unwrap();
        for c in [&cert, &new, &again] {
            let e = s.renew(c, &pki::csr(&key, "p1").unwrap()).unwrap_err();
            assert!(e.to_string().contains("revoked"), "{e}");
        }
        // A certificate of another realm's CA.
        let other = pki::create_ca("io.other").unwrap();
        let foreign = pki::sign_node(
            &other,
            "io.other",
            "p1",
            &[],
            &[],
            &pki::csr(&key, "p1").unwrap(),
        )
        .unwrap();
        let e = s
            .renew(&foreign, &pki::csr(&key, "p1").unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("not from this realm's CA"), "{e}");
    }

    #[test]
    fn a_revoked_node_leaves_the_roster_every_listener_takes_only_newer() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::new(dir.path().join("b1"));
        s.create_realm("io.macula", "b1", &[], &[]).unwrap();
        let (_, first) = s.read_roster().unwrap();
        assert_eq!(
            (first.members.len(), first.members[0].node.as_str()),
            (1, "b1")
        );
        token(&s, "t1", now() + 60);
        let key = pki::new_key().unwrap();
        s.redeem("t1", "p1", &[], &pki::csr(&key, "p1").unwrap())
            .unwrap();
        s.refresh_roster().unwrap();
        // Nothing new: the same roster.
        s.refresh_roster().unwrap();
        let (with_p1, r) = s.read_roster().unwrap();
        assert!(r.version > first.version, "{r:?}");
        assert_eq!(r.pins().len(), 2);

        // Another listener of the realm keeps the roster, and only a newer one.
        let other = State::new(dir.path().join("b2"));
        fs::create_dir_all(&other.dir).unwrap();
        fs::copy(s.ca_cert(), other.ca_cert()).unwrap();
        fs::write(other.path("realm"), "io.macula\n").unwrap();
        assert!(other.accept_roster(&with_p1, true).unwrap().is_some());
        assert!(other.accept_roster(&with_p1, true).unwrap().is_none());

        let (gone, r) = s.revoke("p1").unwrap();
        assert_eq!(gone.len(), 1);
        let (without_p1, kept) = s.read_roster().unwrap();
        assert_eq!(r, kept);
        assert!(r.version > 2);
        assert!(!r.members.iter().any(|m| m.node == "p1"), "{r:?}");
        assert_eq!(r.revoked, ["p1"]);
        let kept = other.accept_roster(&without_p1, true).unwrap().unwrap();
        assert_eq!(kept.revoked, ["p1"]);
        // The old roster replayed does not let p1 back in.
        assert!(other.accept_roster(&with_p1, true).unwrap().is_none());
        assert_eq!(other.read_roster().unwrap().1.version, r.version);
        // A roster signed by another CA is refused.
        let forged = Roster {
            realm: "io.macula".into(),
            version: 99,
            ..Roster::default()
        }
        .sign(&pki::create_ca("io.macula").unwrap().key_pem)
        .unwrap();
        let e = other.accept_roster(&forged, true).unwrap_err().to_string();
        assert!(e.contains("not signed by this realm's CA"), "{e}");

        for (who, why) in [
            ("p1", "revoked already"),
            ("b1", "cannot revoke itself"),
            ("nobody", "never issued"),
        ] {
            let e = s.revoke(who).unwrap_err().to_string();
            assert!(e.contains(why), "{who}: {e}");
        }
    }

    #[test]
    fn a_ca_holder_keeps_its_ca_and_does_not_join() {
        let dir = tempfile::tempdir().unwrap();
        let s = State::new(dir.path());
        s.create_realm("io.macula", "b1", &[], &[]).unwrap();
        let before = fs::read(s.path("ca.key")).unwrap();
        // A realm renamed in the configuration: no second CA.
        let e = s
            .create_realm("io.other", "b1", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds the CA of realm io.macula"), "{e}");
        let other = pki::create_ca("io.other").unwrap();
        let e = s
            .install_join("io.other", &other.cert_pem, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot join a realm"), "{e}");
        assert_eq!(fs::read(s.path("ca.key")).unwrap(), before);
    }

    #[test]
    fn a_join_installs_only_a_certificate_for_this_nodes_key_from_that_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca_node = State::new(dir.path().join("b1"));
        ca_node.create_realm("io.macula", "b1", &[], &[]).unwrap();
        for t in ["t1", "t2"] {
            token(&ca_node, t, now() + 60);
        }
        let joiner = State::new(dir.path().join("p1"));
        joiner.ensure_key().unwrap();
        let csr = pki::csr(&joiner.key_pem().unwrap(), "p1").unwrap();
        let (realm, ca, cert) = ca_node.redeem("t1", "p1", &[], &csr).unwrap();
        // Someone else's certificate is refused.
        let (_, _, other) = ca_node.redeem("t2", "p2", &[], &request("p2")).unwrap();
        let e = joiner.install_join(&realm, &ca, &other).unwrap_err();
        assert!(e.to_string().contains("not for this node's key"), "{e}");
        let foreign = pki::create_ca("io.macula").unwrap();
        let e = joiner
            .install_join(&realm, &foreign.cert_pem, &cert)
            .unwrap_err();
        assert!(e.to_string().contains("not signed by the realm CA"), "{e}");
        joiner.install_join(&realm, &ca, &cert).unwrap();
        let id = joiner.identity().unwrap();
        assert_eq!(id.realm.as_deref(), Some("io.macula"));
        assert!(!id.ca_holder);
        assert_eq!(ca_node.issued().unwrap().len(), 3);
    }
}
