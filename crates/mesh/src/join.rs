//! Joining a realm with a one-time token.
//!
//! 1. On the bootstrap node that holds the realm CA, an operator runs
//!    `maculaos mesh token create`: a random secret, kept there only as its
//!    hash with an expiry, and a token to hand to the new node. The token
//!    carries the realm, where to reach the join service, the SHA-256 of the
//!    service's certificate, and the secret.
//! 2. On the new node, `maculaos mesh join TOKEN` makes a signing request
//!    for the node's own key (made on the node; it never leaves) and sends it
//!    with the secret over TLS to the join service ([`JOIN_PORT`]), trusting
//!    only the certificate the token pins.
//! 3. The service takes the token (known, unexpired, unused: it is marked
//!    used before the answer), signs a certificate naming the node and the
//!    realm, and answers with it, the realm CA and the bootstrap nodes.
//!
//! One JSON line each way, at most [`MAX_LINE`] bytes; a connection has
//! [`IO_TIMEOUT`] in all to send its request; at most [`MAX_JOINS`] are
//! served at once; a refused caller waits a second for its answer.

use crate::state::{State, TokenRecord};
use base64::Engine as _;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// The port of the join service, on the bootstrap node that holds the CA.
pub const JOIN_PORT: u16 = 4434;
/// The longest request or answer line.
pub const MAX_LINE: u64 = 64 * 1024;
/// How long a connection attempt, a whole request, or the answer may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How many joins are served at once; more wait for a free slot.
pub const MAX_JOINS: usize = 4;
/// How long a joining node waits for its answer: long enough to wait out
/// callers that hold every slot until their deadline.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a token is good for unless said otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
const PREFIX: &str = "MACULA-JOIN-1:";

/// What a join token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub realm: String,
    /// `host:port` of the join service, in the order to try them.
    pub addrs: Vec<String>,
    /// SHA-256 of the join service's certificate, hex.
    pub pin: String,
    /// The one-time secret, hex.
    pub secret: String,
}

impl Token {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    pub fn decode(s: &str) -> Result<Token, String> {
        let bad = || {
            "this is not a join token: copy the whole line `maculaos mesh token create` printed (it starts with MACULA-JOIN-1:)".to_string()
        };
        let body = s.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| bad())?;
        let t: Token = serde_json::from_slice(&json).map_err(|_| bad())?;
        if t.addrs.is_empty() || t.pin.len() != 64 || t.secret.len() != 64 {
            return Err(bad());
        }
        Ok(t)
    }
}

/// SHA-256 of a secret, hex: what the CA holder keeps.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Compare two hex strings in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Make a token on the CA holder: keeps its hash, returns the token.
pub fn create_token(
    state: &State,
    addrs: Vec<String>,
    ttl: Duration,
    replace: Option<String>,
) -> Result<Token, String> {
    let id = state.identity().map_err(|e| e.to_string())?;
    let realm = id.realm.filter(|_| id.ca_holder).ok_or(
        "this node does not hold a realm CA: make tokens on the first bootstrap node of the realm",
    )?;
    let pin = id
        .certificate
        .ok_or("this node has no certificate yet: run `maculaos apply`")?
        .sha256;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| format!("random number generator: {e}"))?;
    let secret = hex::encode(raw);
    state
        .add_token(TokenRecord {
            sha256: secret_hash(&secret),
            expires: crate::state::now() + ttl.as_secs() as i64,
            used_by: None,
            replace,
        })
        .map_err(|e| e.to_string())?;
    Ok(Token {
        realm,
        addrs,
        pin,
        secret,
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    secret: String,
    node: String,
    csr: String,
}

/// What the join service answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub realm: String,
    #[serde(default)]
    pub ca: String,
    #[serde(default)]
    pub cert: String,
    /// The realm's bootstrap nodes (leafnode `host:port`).
    #[serde(default)]
    pub bootstrap_peers: Vec<String>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node name: what a hostname may be (letters, digits, `-`), 1–63 long.
pub fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && !n.starts_with('-')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The join service: answers joins on `listener` until it fails.
/// `bootstrap_peers` goes into every answer.
pub fn serve(
    state: &State,
    listener: TcpListener,
    bootstrap_peers: &dyn Fn() -> Vec<String>,
) -> Result<(), String> {
    let certs = CertificateDer::pem_file_iter(state.node_cert())
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", state.node_cert().display()))?;
    let key = PrivateKeyDer::from_pem_file(state.node_key())
        .map_err(|e| format!("{}: {e}", state.node_key().display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the node's certificate and key: {e}"))?;
    let config = Arc::new(config);
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        // A slow or silent caller holds one slot for IO_TIMEOUT at most.
        while busy.load(std::sync::atomic::Ordering::SeqCst) >= MAX_JOINS {
            std::thread::sleep(Duration::from_millis(50));
        }
        busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let slot = Slot(busy.clone());
        let (state, config) = (state.clone(), config.clone());
        let peers = bootstrap_peers();
        std::thread::spawn(move || {
            let _slot = slot;
            let peer = tcp.peer_addr().ok();
            match handle(&state, &config, tcp, peer, &peers) {
                Ok(node) => eprintln!("mesh join: signed a certificate for {node:?} ({peer:?})"),
                Err(e) => eprintln!("mesh join: refused {peer:?}: {e}"),
            }
        });
    }
    Err("the join listener closed".into())
}

/// The join service's socket: every read (the TLS handshake's and the
/// request's alike) gets only what is left of one deadline, so bytes
/// trickling in cannot hold a slot past it.
struct DeadlineSock {
    tcp: TcpStream,
    deadline: std::time::Instant,
}

impl Read for DeadlineSock {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self
            .deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "took too long"))?;
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.read(buf)
    }
}

impl Write for DeadlineSock {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// Gives a join slot back however its thread ends.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn handle(
    state: &State,
    config: &Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    peer: Option<SocketAddr>,
    bootstrap_peers: &[String],
) -> Result<String, String> {
    tcp.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let conn = rustls::ServerConnection::new(config.clone()).map_err(|e| e.to_string())?;
    let sock = DeadlineSock {
        tcp,
        deadline: std::time::Instant::now() + IO_TIMEOUT,
    };
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let line = read_line(&mut tls)?;
    let node = serde_json::from_str::<Request>(&line)
        .map(|r| r.node.chars().take(64).collect::<String>())
        .unwrap_or_default();
    let answer = match answer(state, &line, peer.map(|p| p.ip()), bootstrap_peers) {
        Ok(a) => a,
        Err(e) => {
            // Guessing costs the guesser a second (and nobody else).
            std::thread::sleep(Duration::from_secs(1));
            Answer {
                ok: false,
                error: e,
                ..Answer::default()
            }
        }
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    tls.write_all(&out).map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    tls.conn.send_close_notify();
    let _ = tls.flush();
    if answer.ok {
        // Only now: the new roster restarts the server and this daemon.
        state
            .refresh_roster()
            .map_err(|e| format!("{node} joined, but the roster: {e}"))?;
        Ok(node)
    } else {
        Err(answer.error)
    }
}

fn read_line(r: &mut impl Read) -> Result<String, String> {
    let mut line = String::new();
    BufReader::new(r.take(MAX_LINE))
        .read_line(&mut line)
        .map_err(|e| format!("reading: {e}"))?;
    if !line.ends_with('\n') {
        return Err(format!("no complete line within {MAX_LINE} bytes"));
    }
    Ok(line)
}

fn answer(
    state: &State,
    line: &str,
    peer: Option<IpAddr>,
    bootstrap_peers: &[String],
) -> Result<Answer, String> {
    let req: Request = serde_json::from_str(line).map_err(|_| "not a join request".to_string())?;
    if !valid_node_name(&req.node) {
        return Err(format!(
            "{:?} is not a node name",
            req.node.chars().take(64).collect::<String>()
        ));
    }
    let ips: Vec<IpAddr> = peer.into_iter().filter(|ip| !ip.is_loopback()).collect();
    let (realm, ca, cert) = state
        .redeem(&secret_hash(&req.secret), &req.node, &ips, &req.csr)
        .map_err(|e| e.to_string())?;
    Ok(Answer {
        ok: true,
        realm,
        ca,
        cert,
        bootstrap_peers: bootstrap_peers.to_vec(),
        ..Answer::default()
    })
}

/// Trusts exactly the certificate the token pins (and checks the handshake
/// was signed by its key).
#[derive(Debug)]
struct Pinned {
    sha256: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if same(&crate::pki::sha256_hex(end_entity), &self.sha256) {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the join service's certificate is not the one the token names".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Join with `token` as `node`: ask each address in turn; the first answer
/// counts. On success the realm's CA and this node's certificate are
/// installed; the answer is returned (for its bootstrap nodes).
pub fn join(state: &State, token: &Token, node: &str) -> Result<Answer, String> {
    if !valid_node_name(node) {
        return Err(format!("`{node}` is not a node name"));
    }
    // Before the token is spent: a CA holder cannot take it.
    state.refuse_if_ca_holder().map_err(|e| e.to_string())?;
    state.ensure_key().map_err(|e| e.to_string())?;
    let csr = crate::pki::csr(&state.key_pem().map_err(|e| e.to_string())?, node)
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(&Request {
        secret: token.secret.clone(),
        node: node.to_string(),
        csr,
    })
    .unwrap_or_default();
    line.push(b'\n');
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            sha256: token.pin.clone(),
            provider,
        }))
        .with_no_client_auth();
    let config = Arc::new(config);
    let mut errors = Vec::new();
    for addr in &token.addrs {
        match ask(&config, addr, &line) {
            Ok(a) if a.ok => {
                if a.realm != token.realm {
                    return Err(format!(
                        "the join service answered for realm {}, the token is for {}",
                        a.realm, token.realm
                    ));
                }
                state
                    .install_join(&a.realm, &a.ca, &a.cert)
                    .map_err(|e| e.to_string())?;
                return Ok(a);
            }
            // The service looked at the token and said no: asking another
            // address of the same service cannot change that.
            Ok(a) => return Err(format!("{addr} refused the join: {}", a.error)),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(format!(
        "no join service answered ({}); is the bootstrap node up, and this node on its network?",
        errors.join("; ")
    ))
}

fn ask(config: &Arc<rustls::ClientConfig>, addr: &str, line: &[u8]) -> Result<Answer, String> {
    let sockaddrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolving: {e}"))?
        .collect();
    let mut last = "no address".to_string();
    for sa in sockaddrs {
        let tcp = match TcpStream::connect_timeout(&sa, IO_TIMEOUT) {
            Ok(t) => t,
            Err(e) => {
                last = format!("connecting to {sa}: {e}");
                continue;
            }
        };
        tcp.set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("macula-join").map_err(|e| e.to_string())?;
        let conn =
            rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(line).map_err(|e| e.to_string())?;
        tls.flush().map_err(|e| e.to_string())?;
        let answer = read_line(&mut tls)?;
        return serde_json::from_str(&answer).map_err(|_| "not a join answer".to_string());
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_holder(dir: &std::path::Path) -> State {
        let s = State::new(dir.join("b1"));
        s.create_realm("io.macula", "b1", &[], &[]).unwrap();
        s
    }

    fn service(s: &State) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let s = s.clone();
        std::thread::spawn(move || {
            let _ = serve(&s, l, &|| vec!["b1.local:4433".into()]);
        });
        addr
    }

    #[test]
    fn a_token_joins_one_node_once() {
        let dir = tempfile::tempdir().unwrap();
        let b1 = ca_holder(dir.path());
        let addr = service(&b1);
        let token = create_token(&b1, vec![addr], DEFAULT_TTL, None).unwrap();
        let text = token.encode();
        assert_eq!(Token::decode(&text).unwrap(), token);
        // The hash is kept, not the secret.
        let kept = std::fs::read_to_string(b1.path("tokens.json")).unwrap();
        assert!(!kept.contains(&token.secret));

        let p1 = State::new(dir.path().join("p1"));
        let a = join(&p1, &token, "p1").unwrap();
        assert_eq!(a.bootstrap_peers, ["b1.local:4433"]);
        assert!(p1.joined("io.macula"));
        let cert = p1.identity().unwrap().certificate.unwrap();
        assert_eq!(cert.common_name, "p1");

        let p2 = State::new(dir.path().join("p2"));
        let e = join(&p2, &token, "p2").unwrap_err();
        assert!(e.contains("already used (by p1)"), "{e}");
        assert!(!p2.joined("io.macula"));
    }

    #[test]
    fn a_forged_or_redirected_token_gets_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b1 = ca_holder(dir.path());
        let addr = service(&b1);
        let good = create_token(&b1, vec![addr.clone()], DEFAULT_TTL, None).unwrap();
        let p = State::new(dir.path().join("p"));
        // A guessed secret.
        let mut forged = good.clone();
        forged.secret = "0".repeat(64);
        let e = join(&p, &forged, "p").unwrap_err();
        assert!(e.contains("unknown join token"), "{e}");
        // A token that pins another certificate: the service is not trusted.
        let mut other = good.clone();
        other.pin = "1".repeat(64);
        let e = join(&p, &other, "p").unwrap_err();
        assert!(e.contains("no join service answered"), "{e}");
        // The good token still works after both.
        join(&p, &good, "p").unwrap();
        assert!(Token::decode("MACULA-JOIN-1:@@@").is_err());
        assert!(Token::decode("hello")
            .unwrap_err()
            .contains("not a join token"));
    }

    #[test]
    fn a_caller_that_trickles_bytes_loses_its_slot_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let b1 = ca_holder(dir.path());
        let addr = service(&b1);
        // MAX_JOINS callers that send one byte of a handshake and stall.
        let stalled: Vec<TcpStream> = (0..MAX_JOINS)
            .map(|_| {
                let mut t = TcpStream::connect(&addr).unwrap();
                t.write_all(&[0x16]).unwrap();
                t
            })
            .collect();
        // A real join still gets through once their deadline has passed
        // (were the slots held for good, it would fail after ANSWER_TIMEOUT).
        let token = create_token(&b1, vec![addr], DEFAULT_TTL, None).unwrap();
        let p = State::new(dir.path().join("p"));
        join(&p, &token, "p").unwrap();
        assert!(p.joined("io.macula"));
        drop(stalled);
    }

    #[test]
    fn names_are_hostnames() {
        assert!(valid_node_name("macula-0a01"));
        assert!(!valid_node_name("a.b"));
        assert!(!valid_node_name("-a"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name(&"a".repeat(64)));
    }
}
