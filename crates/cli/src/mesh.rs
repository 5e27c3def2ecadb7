//! `maculaos mesh`: the node's place in the Macula mesh (maculaos-mesh).
//! `status` and `peers` read the local nats-server's monitoring endpoint;
//! `ping`, `pub`, `sub` and `request` talk NATS to the local server;
//! `token create` and `join` bring a node into a realm; `serve` is
//! maculaos-meshd.service (ping responder, and the join service on the
//! node that holds the realm CA).

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use maculaos_config::values::ServiceName;
use maculaos_config::{Config, MeshRole, Paths};
use maculaos_mesh::client::{self, Client, Offer, Pong};
use maculaos_mesh::conf::MONITOR;
use maculaos_mesh::join::{self, Token, JOIN_PORT};
use maculaos_mesh::known::KnownNode;
use maculaos_mesh::state::{self, Identity, State};
use maculaos_mesh::status;
use maculaos_runner::Cmd;
use serde::Serialize;
use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// How long a mesh command waits for the local server or an answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The configuration file `mesh join` writes the realm into.
const JOIN_DROPIN: &str = "/var/lib/maculaos/config.d/50-mesh-join.yaml";

#[derive(Subcommand)]
pub enum Command {
    /// Roles, realm, certificate, the server, its connections with their
    /// state and round trip, JetStream on bootstrap nodes, recent errors.
    Status {
        #[arg(long)]
        json: bool,
        /// One line (`Mesh: connected (1 leafnode, 0 routes); realm …`),
        /// from mesh.env and the server's counters only: what the login
        /// banner shows. Needs no root.
        #[arg(long, conflicts_with = "json")]
        brief: bool,
    },
    /// The nodes this one is connected to (leafnodes and routes).
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// Ask a node of the realm to answer over the mesh (request/reply) and
    /// show the round trip. NODE is its name (a `.local` or domain suffix is
    /// dropped).
    Ping {
        node: String,
        /// How many requests.
        #[arg(short, long, default_value_t = 1)]
        count: u32,
        #[arg(long)]
        json: bool,
    },
    /// Publish MESSAGE on TOPIC (`macula.pub.<realm>.TOPIC`).
    Pub {
        topic: String,
        #[arg(default_value = "")]
        message: String,
        /// TOPIC is a whole NATS subject.
        #[arg(long)]
        subject: bool,
    },
    /// Print what is published on PATTERN (`macula.sub.<realm>.PATTERN`; `*`
    /// and `>` as in NATS), one JSON line per message.
    Sub {
        pattern: String,
        /// Stop after this many messages (0: no limit).
        #[arg(long, default_value_t = 0)]
        count: usize,
        /// Stop after this many seconds (0: no limit).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        /// PATTERN is a whole NATS subject.
        #[arg(long)]
        subject: bool,
    },
    /// Call PROCEDURE (`macula.rpc.<realm>.PROCEDURE`) and print the answer.
    Request {
        procedure: String,
        #[arg(default_value = "")]
        message: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
        /// PROCEDURE is a whole NATS subject.
        #[arg(long)]
        subject: bool,
    },
    /// The nodes of the realm that run service SERVICE (`maculaos deploy`,
    /// `services:`): each answers on `macula.discover.<realm>.SERVICE`
    /// while it runs there.
    Discover {
        service: ServiceName,
        /// Seconds to wait for answers.
        #[arg(long, default_value_t = 2)]
        wait: u64,
        #[arg(long)]
        json: bool,
    },
    /// Join tokens (on the bootstrap node that holds the realm CA).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The realm CA (`tls_mode: production`: the operator's).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Renew this node's certificate now, from the realm's CA holder over
    /// the mesh (maculaos-meshd does it by itself once a third of its life
    /// is left). Same key, same name; a revoked node is refused.
    Renew {
        #[arg(long)]
        json: bool,
    },
    /// Cut NODE off the realm (on the bootstrap node that holds the realm
    /// CA): its certificates are revoked and it leaves the realm's roster;
    /// every bootstrap and gateway node refuses it once it has the new
    /// roster (seconds; within a minute for one that was down). NODE is
    /// back only by joining again, with a new token.
    Revoke {
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// The realm roster this node keeps (bootstrap and gateway nodes: the
    /// node keys they let in), and whether nats-server runs with it.
    Roster {
        /// Exit status 1 unless nats-server's configuration pins the roster
        /// kept, dials the known nodes kept and has the node's certificate.
        #[arg(long)]
        check: bool,
        #[arg(long)]
        json: bool,
    },
    /// The realm's key-value buckets (JetStream on the bootstrap nodes),
    /// from any node of the realm.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Join the realm of TOKEN: this node's key signs a request, the realm
    /// CA answers with a certificate; the realm goes into config.d and the
    /// mesh restarts with it. `-` reads the token from standard input (it
    /// then stays out of the process list and the shell's history).
    Join { token: String },
    /// The mesh daemon (maculaos-meshd.service).
    Serve,
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Make this node, a bootstrap node with `tls_mode: production`, the
    /// first of its realm with the operator's CA (ECDSA P-256): the CA is
    /// checked, kept here (the key as root's, 0600) and signs this node's
    /// certificate; other nodes join with tokens made here, as in
    /// development mode.
    Import {
        /// The CA certificate (PEM).
        #[arg(long)]
        cert: std::path::PathBuf,
        /// Its private key (PEM): remove the file once imported.
        #[arg(long)]
        key: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// A one-time token for one node to join this realm.
    Create {
        /// How long it is good for (`1h`, `30m`, `2d`).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// The node that joins with it may take NAME from the key that had it
        /// (NAME reinstalled, with a new key); the old certificates are
        /// marked revoked.
        #[arg(long, value_name = "NAME")]
        replace: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum KvCommand {
    /// Make bucket BUCKET (letters, digits, `-`, `_`); one that exists is
    /// used as it is.
    Create {
        bucket: String,
        /// On how many bootstrap nodes its values are kept (at most as many
        /// as the realm has; writes need a majority of them up).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// Set KEY to VALUE in BUCKET; prints the new revision.
    Put {
        bucket: String,
        key: String,
        value: String,
    },
    /// Print KEY's value in BUCKET (exit status 1 where it has none).
    Get {
        bucket: String,
        key: String,
        #[arg(long)]
        json: bool,
    },
}

fn load() -> Config {
    maculaos_config::load(&Paths::system()).config
}

fn node_name(config: &Config) -> String {
    maculaos_apply::mesh::node_name_under(config, Path::new("/"))
}

/// What `maculaos apply` wrote for services and for this command
/// (`/etc/maculaos/mesh.env`: readable without root, unlike the
/// configuration and the node's identity).
fn facts() -> std::collections::BTreeMap<String, String> {
    maculaos_apply::mesh::read_env(Path::new("/"))
}

fn realm() -> Result<String> {
    facts()
        .get("MACULA_REALM")
        .filter(|r| !r.is_empty())
        .cloned()
        .context(
            "this node has no realm: set maculaos.mesh.realm in the configuration, or join one with `maculaos mesh join TOKEN`",
        )
}

fn connect() -> Result<Client> {
    Ok(Client::connect(
        &client::local_url(),
        "maculaos-cli",
        TIMEOUT,
    )?)
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Status { brief: true, .. } => {
            let b = status::Brief::of_node(Path::new("/"), true);
            println!("Mesh:         {}", b.line());
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json, .. } => {
            let s = collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", render(&s));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Peers { json } => {
            let s = collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&s.connections)?);
            } else if s.connections.is_empty() {
                println!("no connections to other nodes");
            } else {
                for c in &s.connections {
                    println!("{}", connection_line(c));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ping { node, count, json } => ping(&node, count, json),
        Command::Pub {
            topic,
            message,
            subject,
        } => {
            let subj = subject_for(&topic, subject, client::pub_subject)?;
            connect()?.publish(&subj, message.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sub {
            pattern,
            count,
            timeout,
            subject,
        } => {
            let subj = subject_for(&pattern, subject, client::sub_subject)?;
            let timeout = (timeout > 0).then(|| Duration::from_secs(timeout));
            let n = connect()?.subscribe(
                &subj,
                count,
                timeout,
                || eprintln!("listening on {subj}"),
                |m| println!("{}", serde_json::to_string(&m).unwrap_or_default()),
            )?;
            Ok(if count > 0 && n < count {
                eprintln!("{n} of {count} messages before the timeout");
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Request {
            procedure,
            message,
            timeout,
            subject,
        } => {
            let subj = subject_for(&procedure, subject, client::rpc_subject)?;
            let (m, rtt) = connect()?.request(
                &subj,
                message.as_bytes(),
                Duration::from_secs(timeout.max(1)),
            )?;
            println!("{}", m.payload);
            eprintln!("answered in {:.1} ms", rtt.as_secs_f64() * 1000.0);
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::Create { ttl, replace, json }) => {
            token_create(&ttl, replace, json)
        }
        Command::Discover {
            service,
            wait,
            json,
        } => discover(&service, wait, json),
        Command::Kv(kv) => kv_cmd(kv),
        Command::Revoke { node, json } => revoke(&node, json),
        Command::Roster { check, json } => roster(check, json),
        Command::Join { token } => join_cmd(&token),
        Command::Ca(CaCommand::Import { cert, key }) => ca_import(&cert, &key),
        Command::Renew { json } => renew_cmd(json),
        Command::Serve => serve(),
    }
}

/// `mesh discover SERVICE`: every node's answer, sorted by node; exit
/// code 1 when none runs it.
fn discover(service: &ServiceName, wait: u64, json: bool) -> Result<ExitCode> {
    let realm = realm()?;
    let subject = client::discover_subject(&realm, service.as_str());
    let answers = connect()?.gather(&subject, b"", Duration::from_secs(wait.max(1)))?;
    let mut offers: Vec<Offer> = answers
        .iter()
        .filter_map(|m| serde_json::from_str(&m.payload).ok())
        .collect();
    offers.sort_by(|a, b| a.node.cmp(&b.node));
    if json {
        println!("{}", serde_json::to_string_pretty(&offers)?);
    } else if offers.is_empty() {
        eprintln!("no node of realm {realm} runs {service} (asked on {subject})");
    } else {
        for o in &offers {
            println!(
                "{:<20} {:<24} ports {:<16} {}",
                o.node,
                o.host,
                if o.ports.is_empty() {
                    "-".to_string()
                } else {
                    o.ports.join(",")
                },
                o.image
            );
        }
    }
    Ok(if offers.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// maculaos-meshd: answer `macula.discover.<realm>.NAME` for each service
/// of this node's configuration that runs (the configuration is read at
/// each request: deploy and remove need no restart of meshd).
fn spawn_service_directory(realm: String, node: String) {
    std::thread::spawn(move || {
        let subject = client::discover_subject(&realm, "*");
        loop {
            match Client::connect(&client::local_url(), "maculaos-meshd-discover", TIMEOUT) {
                Ok(c) => {
                    println!("maculaos-meshd: answering for this node's services on {subject}");
                    let r = c.serve_subjects(&subject, |subj, _| {
                        let name = subj.rsplit('.').next()?;
                        let offer = crate::services::offer(name, &node)?;
                        serde_json::to_vec(&offer).ok()
                    });
                    if let Err(e) = r {
                        eprintln!("maculaos-meshd: services: {e}");
                    }
                }
                Err(e) => eprintln!("maculaos-meshd: services: {e}"),
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    });
}

/// Orders from the realm's operator to this node (`maculaos fleet
/// decommission` on the CA holder): checked against the realm CA, kept for
/// the health agent to carry out (this daemon may not reset the node), and
/// answered either way.
fn spawn_order_service(st: State, realm: String, node: String) {
    use maculaos_mesh::order::{self, Answer, Signed};
    std::thread::spawn(move || {
        let subject = order::subject(&realm, &node);
        loop {
            match Client::connect(&client::local_url(), "maculaos-meshd-orders", TIMEOUT) {
                Ok(c) => {
                    println!("maculaos-meshd: taking the operator's orders on {subject}");
                    let r = c.serve(&subject, |payload| {
                        let checked = Signed::from_json(payload).and_then(|s| {
                            let o = st.open_order(&s, &realm, &node)?;
                            if !st.first_time(&s).map_err(|e| e.to_string())? {
                                return Err(
                                    "this order was taken before (a recorded order sent again)"
                                        .into(),
                                );
                            }
                            st.keep_order(&s).map_err(|e| e.to_string())?;
                            Ok(o)
                        });
                        let answer = match checked {
                            Ok(o) => {
                                println!(
                                    "maculaos-meshd: order accepted from {}: {}",
                                    o.by,
                                    serde_json::to_string(&o.action).unwrap_or_default()
                                );
                                Answer {
                                    accepted: true,
                                    message: format!(
                                        "accepted: {node}'s agent carries it out within about {} s",
                                        2 * maculaos_fleet::EVERY.as_secs()
                                    ),
                                }
                            }
                            Err(why) => {
                                println!("maculaos-meshd: order refused: {why}");
                                Answer {
                                    accepted: false,
                                    message: format!("refused by {node}: {why}"),
                                }
                            }
                        };
                        serde_json::to_vec(&answer).ok()
                    });
                    if let Err(e) = r {
                        eprintln!("maculaos-meshd: orders: {e}");
                    }
                }
                Err(e) => eprintln!("maculaos-meshd: orders: {e}"),
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    });
}

/// How often meshd asks the realm for overlay announcements: often while
/// it has just started (nodes of a site tend to come up together), then
/// less.
const OVERLAY_EARLY: Duration = Duration::from_secs(10);
const OVERLAY_LATER: Duration = Duration::from_secs(60);
const OVERLAY_EARLY_FOR: Duration = Duration::from_secs(600);
/// How long the answers to one ask are waited for.
const OVERLAY_WAIT: Duration = Duration::from_secs(3);

/// This node's overlay announcement, signed, while its overlay is on.
fn own_announcement(st: &State, realm: &str, node: &str, host: &str) -> Option<Vec<u8>> {
    use maculaos_mesh::overlay::{Announcement, Own, OWN_FILE};
    let own: Own = serde_json::from_str(&fs::read_to_string(OWN_FILE).ok()?).ok()?;
    let cert = fs::read_to_string(st.node_cert()).ok()?;
    let key = st.key_pem().ok()?;
    let a = Announcement {
        realm: realm.to_string(),
        node: node.to_string(),
        public_key: own.public_key,
        port: own.port,
        host: host.to_string(),
    };
    serde_json::to_vec(&a.sign(&key, &cert).ok()?).ok()
}

/// `host:port` as `ip:port`, IPv4 first; `None` when it does not resolve.
fn resolve_endpoint(host: &str, port: u16) -> Option<String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<std::net::SocketAddr> = (host, port).to_socket_addrs().ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .map(ToString::to_string)
}

/// maculaos-meshd, on a node of a realm: answer the realm's overlay asks
/// with this node's signed announcement (while its overlay is on), and ask
/// the realm for everyone's, keeping those the realm CA and roster vouch
/// for (see `maculaos_mesh::overlay`): each change makes apply set the
/// WireGuard peers. A node that stops answering stays a peer; a node
/// revoked leaves with the roster.
fn spawn_overlay(st: State, realm: String, node: String, host: String) {
    let subject = client::overlay_subject(&realm);
    {
        let (st, realm, node, host, subject) = (
            st.clone(),
            realm.clone(),
            node.clone(),
            host.clone(),
            subject.clone(),
        );
        std::thread::spawn(move || loop {
            match Client::connect(&client::local_url(), "maculaos-meshd-overlay", TIMEOUT) {
                Ok(c) => {
                    println!(
                        "maculaos-meshd: answering for this node's WireGuard overlay on {subject}"
                    );
                    let r = c.serve(&subject, |_| own_announcement(&st, &realm, &node, &host));
                    if let Err(e) = r {
                        eprintln!("maculaos-meshd: overlay: {e}");
                    }
                }
                Err(e) => eprintln!("maculaos-meshd: overlay: {e}"),
            }
            std::thread::sleep(Duration::from_secs(2));
        });
    }
    std::thread::spawn(move || {
        use maculaos_mesh::overlay::{in_roster, OverlayPeer, Signed, OWN_FILE};
        let started = std::time::Instant::now();
        let mut client: Option<Client> = None;
        let mut refused: Vec<String> = Vec::new();
        loop {
            std::thread::sleep(if started.elapsed() < OVERLAY_EARLY_FOR {
                OVERLAY_EARLY
            } else {
                OVERLAY_LATER
            });
            // Off, or not in the realm yet: nothing to ask.
            let roster = st.read_roster().map(|(_, r)| r);
            let ca = fs::read_to_string(st.ca_cert()).ok();
            let (Some(roster), Some(ca), true) = (roster, ca, Path::new(OWN_FILE).exists()) else {
                continue;
            };
            if client.is_none() {
                client = Client::connect(&client::local_url(), "maculaos-meshd-overlay", TIMEOUT)
                    .map_err(|e| eprintln!("maculaos-meshd: overlay: {e}"))
                    .ok();
            }
            let Some(c) = &client else { continue };
            let answers = match c.gather(&subject, b"", OVERLAY_WAIT) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("maculaos-meshd: overlay: {e}");
                    client = None;
                    continue;
                }
            };
            let mut peers = in_roster(&st.overlay_peers(), &roster);
            let mut now_refused = Vec::new();
            for m in &answers {
                let opened = serde_json::from_str::<Signed>(&m.payload)
                    .map_err(|e| format!("an overlay answer does not parse: {e}"))
                    .and_then(|s| s.open(&ca, &roster));
                let (a, spki) = match opened {
                    Ok(x) => x,
                    Err(e) => {
                        now_refused.push(e);
                        continue;
                    }
                };
                if a.node == node {
                    continue;
                }
                let before = peers.iter().position(|p| p.node == a.node);
                let endpoint = resolve_endpoint(&a.host, a.port).or_else(|| {
                    // Not resolved this time: the last address found stays.
                    before.and_then(|i| peers[i].endpoint.clone())
                });
                let p = OverlayPeer {
                    node: a.node,
                    public_key: a.public_key,
                    spki_sha256: spki,
                    endpoint,
                };
                match before {
                    Some(i) => peers[i] = p,
                    None => peers.push(p),
                }
            }
            // Each refusal once, not every round.
            for e in now_refused.iter().filter(|e| !refused.contains(e)) {
                eprintln!("maculaos-meshd: overlay: refused: {e}");
            }
            refused = now_refused;
            match st.keep_overlay_peers(peers) {
                Ok(true) => println!(
                    "maculaos-meshd: the realm's WireGuard peers changed: {}",
                    st.overlay_peers()
                        .iter()
                        .map(|p| format!(
                            "{} at {}",
                            p.node,
                            p.endpoint.as_deref().unwrap_or("(unresolved)")
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Ok(false) => {}
                Err(e) => eprintln!("maculaos-meshd: overlay: keeping the peers: {e}"),
            }
        }
    });
}

fn kv_cmd(cmd: KvCommand) -> Result<ExitCode> {
    let realm = realm()?;
    let c = connect()?;
    match cmd {
        KvCommand::Create { bucket, replicas } => {
            c.kv_create(&realm, &bucket, replicas)?;
            eprintln!("bucket {bucket} is in realm {realm} ({replicas} replicas asked for)");
        }
        KvCommand::Put { bucket, key, value } => {
            let rev = c.kv_put(&realm, &bucket, &key, value.as_bytes())?;
            println!("{rev}");
        }
        KvCommand::Get { bucket, key, json } => match c.kv_get(&realm, &bucket, &key)? {
            Some(v) if json => println!("{}", serde_json::to_string(&v)?),
            Some(v) => println!("{}", v.value),
            None => {
                eprintln!("{key} has no value in bucket {bucket}");
                return Ok(ExitCode::FAILURE);
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn subject_for(arg: &str, raw: bool, f: fn(&str, &str) -> String) -> Result<String> {
    if raw {
        return Ok(arg.to_string());
    }
    if arg.is_empty() || arg.contains(char::is_whitespace) {
        bail!("`{arg}` is not a topic: give dot-separated words, such as sensors.temp");
    }
    Ok(f(&realm()?, arg))
}

fn ping(node: &str, count: u32, json: bool) -> Result<ExitCode> {
    let name = node.split('.').next().unwrap_or(node);
    let realm = realm()?;
    let c = connect()?;
    let subject = client::ping_subject(&realm, name);
    let mut answered = 0;
    let mut results = Vec::new();
    for _ in 0..count.max(1) {
        match c.request(&subject, b"", TIMEOUT) {
            Ok((m, rtt)) => {
                answered += 1;
                let pong: Option<Pong> = serde_json::from_str(&m.payload).ok();
                let ms = rtt.as_secs_f64() * 1000.0;
                if !json {
                    println!(
                        "answer from {name} (version {}): {ms:.1} ms",
                        pong.as_ref().map_or("?", |p| p.version.as_str())
                    );
                }
                results.push(serde_json::json!({"node": name, "rtt_ms": ms, "pong": pong}));
            }
            Err(e) => {
                if !json {
                    println!("no answer from {name}: {e}");
                }
                results.push(serde_json::json!({"node": name, "error": e.to_string()}));
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(if answered > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One connection to another node.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    /// `leafnode` (a peer's link to a bootstrap or gateway node) or `route`
    /// (between bootstrap nodes).
    pub kind: &'static str,
    /// The other node's name, where the server knows it.
    pub name: String,
    pub address: String,
    pub rtt: String,
    pub state: &'static str,
}

/// What `maculaos mesh status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct MeshStatus {
    pub node: String,
    pub realm: Option<String>,
    pub roles: Vec<String>,
    /// [`status::state_word`], `down` or `disabled`.
    pub state: String,
    pub identity: Identity,
    /// Why the identity could not be read (not root).
    pub identity_error: Option<String>,
    pub server: Option<status::Varz>,
    pub server_error: Option<String>,
    pub connections: Vec<Connection>,
    pub jetstream: Option<status::Jsz>,
    /// The other bootstrap nodes this node connects to (routes of a
    /// bootstrap node, leafnode addresses of a peer).
    pub connects_to: Vec<String>,
    /// The server's latest errors (connections refused, TLS failures).
    pub errors: Vec<String>,
    /// The realm's roster this node keeps (bootstrap and gateway nodes:
    /// the keys they let in; root only).
    pub roster: Option<maculaos_mesh::roster::Roster>,
    /// The roster version the running nats-server pins.
    pub roster_applied: Option<u64>,
    /// The realm's bootstrap and gateway nodes this node learnt of (its
    /// join answer, mDNS), what it dials when the configuration names
    /// none (root only).
    pub known: Vec<KnownNode>,
}

fn collect() -> MeshStatus {
    let f = facts();
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    let list = |k: &str| -> Vec<String> {
        get(k)
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let roles = list("MACULA_ROLES");
    let realm = Some(get("MACULA_REALM")).filter(|r| !r.is_empty());
    let joined = get("MACULA_JOINED") == "yes";
    let bootstrap = roles.iter().any(|r| r == "bootstrap");
    let connects_to = list("MACULA_CONNECTS_TO");
    // The identity is root's to read; without it the rest still shows.
    let st = State::under(Path::new("/"));
    let identity = st.identity();
    let mut s = MeshStatus {
        roster: st.read_roster().map(|(_, r)| r),
        roster_applied: None,
        known: st
            .known()
            .ok()
            .filter(|k| realm.as_deref() == Some(k.realm.as_str()))
            .map(|k| k.nodes)
            .unwrap_or_default(),
        node: get("MACULA_NODE"),
        realm: realm.clone(),
        roles,
        state: String::new(),
        identity: identity.as_ref().ok().cloned().unwrap_or_default(),
        identity_error: identity
            .err()
            .map(|e| format!("{e} (run as root to see the certificate)")),
        server: None,
        server_error: None,
        connections: Vec::new(),
        jetstream: None,
        connects_to: connects_to.clone(),
        errors: recent_errors(),
    };
    if f.is_empty() {
        s.state = "disabled".into();
        return s;
    }
    match status::varz(MONITOR) {
        Ok(v) => s.server = Some(v),
        Err(e) => {
            s.server_error = Some(e.to_string());
            s.state = "down".into();
            return s;
        }
    }
    s.roster_applied = roster_in_force(s.server.as_ref());
    if let Ok(l) = status::leafz(MONITOR) {
        // nats-server 2.9 does not name the other end: a leafnode this
        // node dialled is named after the bootstrap node at its address.
        let names = if l.leafs.is_empty() {
            Default::default()
        } else {
            names_by_address(&connects_to)
        };
        s.connections
            .extend(l.leafs.into_iter().map(|l| Connection {
                kind: "leafnode",
                name: names.get(&l.ip).cloned().unwrap_or(l.name),
                address: format!("{}:{}", l.ip, l.port),
                rtt: l.rtt,
                state: "connected",
            }));
    }
    if let Ok(r) = status::routez(MONITOR) {
        s.connections
            .extend(r.routes.into_iter().map(|r| Connection {
                kind: "route",
                name: r.remote_name,
                address: format!("{}:{}", r.ip, r.port),
                rtt: r.rtt,
                state: "connected",
            }));
    }
    if bootstrap && joined {
        s.jetstream = status::jsz(MONITOR).ok();
    }
    let leafs = s.connections.iter().any(|c| c.kind == "leafnode");
    let routes = s.connections.iter().any(|c| c.kind == "route");
    s.state = status::state_word(
        realm.is_some(),
        joined,
        bootstrap,
        !connects_to.is_empty(),
        leafs,
        routes,
    )
    .to_string();
    s
}

/// The hosts of `urls` (`nats-leaf://b1.local:4433`) by the addresses they
/// resolve to (mDNS names through nss-mdns), as node names (`b1`). A name
/// that does not resolve within two seconds (its node is down) is left out.
fn names_by_address(urls: &[String]) -> std::collections::HashMap<String, String> {
    use std::net::ToSocketAddrs;
    let (tx, rx) = std::sync::mpsc::channel();
    for url in urls {
        let Ok(e) = maculaos_mesh::conf::Endpoint::parse(url, 0) else {
            continue;
        };
        let tx = tx.clone();
        std::thread::spawn(move || {
            let name = e.host.strip_suffix(".local").unwrap_or(&e.host).to_string();
            if let Ok(addrs) = (e.host.as_str(), e.port.max(1)).to_socket_addrs() {
                for a in addrs {
                    let _ = tx.send((a.ip().to_string(), name.clone()));
                }
            }
        });
    }
    drop(tx);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut names = std::collections::HashMap::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((ip, name)) => {
                names.insert(ip, name);
            }
            Err(_) => break,
        }
    }
    names
}

/// The last few errors nats-server logged this boot.
fn recent_errors() -> Vec<String> {
    let out = Cmd::new("journalctl")
        .args([
            "-u",
            "maculaos-nats.service",
            "-b",
            "-n",
            "300",
            "-o",
            "cat",
            "--no-pager",
        ])
        .quiet()
        .output()
        .unwrap_or_default();
    let errs: Vec<String> = out
        .lines()
        .filter(|l| l.contains("[ERR]"))
        .map(|l| l.split_once("[ERR] ").map_or(l, |(_, m)| m).to_string())
        .collect();
    errs[errs.len().saturating_sub(3)..].to_vec()
}

fn connection_line(c: &Connection) -> String {
    let name = if c.name.is_empty() { "?" } else { &c.name };
    format!(
        "  {:<9} {:<24} {:<22} rtt {:<10} {}",
        c.kind, name, c.address, c.rtt, c.state
    )
}

fn render(s: &MeshStatus) -> String {
    let mut o = String::new();
    let mut line = |k: &str, v: String| o.push_str(&format!("{k:<14}{v}\n"));
    line("Node:", s.node.clone());
    line("Realm:", s.realm.clone().unwrap_or_else(|| "(none)".into()));
    line("Roles:", s.roles.join(", "));
    line("State:", s.state.clone());
    let cert = match &s.identity.certificate {
        Some(c) => {
            let days = (c.not_after - state::now()) / 86_400;
            format!(
                "{} in realm {}, expires in {days} days{}",
                c.common_name,
                c.realm.as_deref().unwrap_or("?"),
                if s.identity.ca_holder {
                    " (this node holds the realm CA)"
                } else {
                    ""
                }
            )
        }
        None => match &s.identity_error {
            Some(e) => e.clone(),
            None => "none (join a realm: maculaos mesh join TOKEN)".into(),
        },
    };
    line("Certificate:", cert);
    if let Some(r) = &s.roster {
        line("Roster:", r.summary());
    }
    match (&s.server, &s.server_error) {
        (Some(v), _) => line(
            "Server:",
            format!(
                "nats-server {}, up {}, {} local clients, {} MiB",
                v.version,
                v.uptime,
                v.connections,
                v.mem >> 20
            ),
        ),
        (None, Some(e)) => line("Server:", format!("not answering: {e}")),
        (None, None) => line("Server:", "disabled (maculaos.nats.enabled: false)".into()),
    }
    if !s.connects_to.is_empty() {
        line("Connects to:", s.connects_to.join(", "));
    }
    if !s.known.is_empty() {
        let k: Vec<String> = s
            .known
            .iter()
            .map(|k| format!("{} ({}, from {})", k.address, k.role, k.source))
            .collect();
        line("Known nodes:", k.join(", "));
    }
    if let Some(js) = &s.jetstream {
        let meta = js.meta_cluster.clone().unwrap_or_default();
        line(
            "JetStream:",
            format!(
                "domain {}, {} streams, leader {}, {} servers",
                js.config.domain,
                js.streams,
                if meta.leader.is_empty() {
                    "none"
                } else {
                    &meta.leader
                },
                meta.cluster_size
            ),
        );
    }
    o.push_str("Connections:\n");
    if s.connections.is_empty() {
        o.push_str("  none\n");
    }
    for c in &s.connections {
        o.push_str(&connection_line(c));
        o.push('\n');
    }
    if !s.errors.is_empty() {
        o.push_str("Recent errors:\n");
        for e in &s.errors {
            o.push_str(&format!("  {e}\n"));
        }
    }
    o
}

/// The roster version the running nats-server pins: the one its
/// configuration names, if the server started after that was written (an
/// apply writes the file, then restarts the server).
fn roster_in_force(server: Option<&status::Varz>) -> Option<u64> {
    let started = humantime::parse_rfc3339_weak(&server?.start).ok()?;
    let written = fs::metadata(maculaos_apply::mesh::CONF)
        .ok()?
        .modified()
        .ok()?;
    (started >= written).then(|| maculaos_apply::mesh::applied_roster(Path::new("/")))?
}

fn roster(check: bool, json: bool) -> Result<ExitCode> {
    let st = State::under(Path::new("/"));
    let config = load();
    let kept = st.read_roster().map(|(_, r)| r);
    let applied = maculaos_apply::mesh::applied_roster(Path::new("/"));
    // Only a bootstrap or gateway node's listeners pin the roster; a peer
    // keeps it to check what mDNS finds.
    let roles = config.maculaos.mesh.effective_roles();
    let listener = roles.contains(&MeshRole::Bootstrap) || roles.contains(&MeshRole::Gateway);
    let in_force = !listener || kept.as_ref().is_none_or(|r| applied == Some(r.version));
    // The known nodes a node dials when its configuration names none.
    let known = maculaos_apply::mesh::dial_list(&config, &st).2;
    let known_applied = maculaos_apply::mesh::applied_known(Path::new("/"));
    let known_in_force = known.is_none() || known_applied == known;
    // The node's certificate (renewed by maculaos-meshd): apply records
    // its SHA-256 in nats.conf.
    let cert_in_force = st
        .identity()
        .ok()
        .and_then(|i| i.certificate)
        .is_none_or(|c| {
            fs::read_to_string(maculaos_apply::mesh::CONF).map_or(true, |t| t.contains(&c.sha256))
        });
    if !cert_in_force {
        eprintln!("nats-server's configuration does not have this node's current certificate (`sudo maculaos apply` writes it)");
    }
    if !known_in_force {
        eprintln!(
            "nats-server's configuration dials other nodes than the ones this node knows now (`sudo maculaos apply` writes them)"
        );
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "roster": kept,
                "applied_version": applied,
                "in_force": in_force,
            }))?
        );
    } else {
        match &kept {
            None => println!(
                "no roster kept here (a peer, a node not in a realm, or a realm whose listeners let in any certificate from its CA)"
            ),
            Some(r) => {
                println!("{}", r.summary());
                for m in &r.members {
                    println!("  {}  {}", m.node, m.spki_sha256);
                }
                println!(
                    "nats-server pins it: {}",
                    if !listener {
                        "no need (a peer: it takes no connections; the roster checks what mDNS finds)".to_string()
                    } else if in_force {
                        "yes".to_string()
                    } else {
                        format!(
                            "no (its configuration has version {}; `sudo maculaos apply` writes it)",
                            applied.map_or("none".into(), |v| v.to_string())
                        )
                    }
                );
            }
        }
    }
    Ok(if check && !(in_force && known_in_force && cert_in_force) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn revoke(node: &str, json: bool) -> Result<ExitCode> {
    let name = node.split('.').next().unwrap_or(node);
    let st = State::under(Path::new("/"));
    let (gone, roster) = st.revoke(name).map_err(anyhow::Error::msg)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "node": name,
                "revoked": gone,
                "roster_version": roster.version,
            }))?
        );
    } else {
        for i in &gone {
            println!("revoked certificate {} of {}", i.serial, i.node);
        }
        eprintln!(
            "{name} is out of the realm's roster ({}). maculaos-meshd publishes it now; each \
             bootstrap and gateway node refuses {name} once it has applied it (`maculaos mesh \
             status` there shows the roster). To let {name} back in, it joins again with a new \
             token (`maculaos mesh token create`).",
            roster.summary()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn token_create(ttl: &str, replace: Option<String>, json: bool) -> Result<ExitCode> {
    let ttl = maculaos_config::values::Duration::parse(ttl).map_err(anyhow::Error::msg)?;
    let node = node_name(&load());
    let mut addrs = vec![format!("{node}.local:{JOIN_PORT}")];
    addrs.extend(
        crate::firstboot::addresses()
            .into_iter()
            .map(|a| format!("{a}:{JOIN_PORT}")),
    );
    let st = State::under(Path::new("/"));
    let token = join::create_token(&st, addrs, ttl.get(), replace).map_err(anyhow::Error::msg)?;
    let text = token.encode();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "token": text,
                "realm": token.realm,
                "expires_in_seconds": ttl.get().as_secs(),
            }))?
        );
    } else {
        println!("{text}");
        eprintln!(
            "One node may join realm {} with this token within {}: on it, run\n  sudo maculaos mesh join {text}",
            token.realm,
            humantime::format_duration(ttl.get())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Before the token is spent: a realm set by a source that wins over
/// `config.d/50-mesh-join.yaml` (a later config.d file, a datasource, the
/// kernel command line) would keep the node out of the realm it joins.
fn refuse_overridden_realm(loaded: &maculaos_config::Loaded, realm: &str) -> Result<()> {
    let Some(current) = loaded.config.maculaos.mesh.realm.as_deref() else {
        return Ok(());
    };
    if current == realm {
        return Ok(());
    }
    let paths = Paths::system();
    let src = maculaos_config::load::source_of(&loaded.provenance, "maculaos.mesh.realm")
        .unwrap_or_default();
    let loses = Path::new(src) == paths.node_config()
        || Path::new(src) == paths.defaults()
        || Path::new(src).parent() == Some(paths.config_d().as_path())
            && Path::new(src).file_name() <= Path::new(JOIN_DROPIN).file_name();
    if !loses {
        bail!(
            "this token is for realm {realm}, but {src} sets realm {current}, and it wins over \
             what `join` writes ({JOIN_DROPIN}): change it there first"
        );
    }
    Ok(())
}

fn ca_import(cert: &Path, key: &Path) -> Result<ExitCode> {
    let config = load();
    let mesh = &config.maculaos.mesh;
    let realm = mesh.realm.clone().context(
        "no realm is configured: set maculaos.mesh.realm, tls_mode: production and role: bootstrap first",
    )?;
    if mesh.tls_mode != maculaos_config::TlsMode::Production {
        bail!(
            "maculaos.mesh.tls_mode is development: this node makes realm {realm}'s CA itself; \
             set tls_mode: production to use the operator's"
        );
    }
    if !mesh.effective_roles().contains(&MeshRole::Bootstrap) {
        bail!("the realm CA goes on a bootstrap node: set maculaos.mesh.role: bootstrap");
    }
    let read = |p: &Path| fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let ca = maculaos_mesh::pki::CertAndKey {
        cert_pem: read(cert)?,
        key_pem: read(key)?,
    };
    let node = node_name(&config);
    let st = State::under(Path::new("/"));
    // One CA holder per realm: a bootstrap node that names others joins.
    if !maculaos_apply::mesh::plan(&config, &node, &st).knows_no_other_bootstrap_node() {
        bail!(
            "this node's configuration names other bootstrap nodes (maculaos.mesh.bootstrap_peers): \
             the CA goes on the realm's first bootstrap node only; join this one with a token made there"
        );
    }
    let (names, ips) = maculaos_apply::mesh::advertised(&config, &node);
    let days = st
        .import_realm(&realm, &node, &names, &ips, &ca)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    println!(
        "realm {realm}: this node holds the operator's CA ({days} days left) and a certificate from it"
    );
    if days < maculaos_mesh::pki::NODE_DAYS as i64 {
        eprintln!(
            "warning: the CA expires in {days} days, before the certificates it signs now (a year): plan its replacement"
        );
    }
    eprintln!(
        "the CA's key is kept in {}/ca.key (root only): remove {} now",
        state::MESH_DIR,
        key.display()
    );
    apply_now(false)
}

fn renew_cmd(json: bool) -> Result<ExitCode> {
    let realm = realm()?;
    let st = State::under(Path::new("/"));
    let c = connect()?;
    let new = maculaos_mesh::renew::renew(&st, &c, &realm).map_err(anyhow::Error::msg)?;
    let days = (new.not_after - state::now()) / 86_400;
    if json {
        println!("{}", serde_json::to_string_pretty(&new)?);
    } else {
        println!(
            "renewed: certificate {} for {}, expires in {days} days",
            new.serial, new.common_name
        );
    }
    apply_now(json)
}

/// `maculaos apply`, so that a new identity is in force at once. With
/// `json`, its report goes to standard error: standard output is the
/// command's JSON alone.
fn apply_now(json: bool) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("finding the maculaos binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("apply");
    if json {
        cmd.stdout(std::io::stderr());
    }
    let status = cmd.status().context("running maculaos apply")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn join_cmd(arg: &str) -> Result<ExitCode> {
    let text = if arg == "-" {
        let mut t = String::new();
        std::io::stdin()
            .read_line(&mut t)
            .context("reading the token from standard input")?;
        t
    } else {
        arg.to_string()
    };
    let token = Token::decode(&text).map_err(anyhow::Error::msg)?;
    let loaded = maculaos_config::load(&Paths::system());
    refuse_overridden_realm(&loaded, &token.realm)?;
    let config = loaded.config;
    let node = node_name(&config);
    let st = State::under(Path::new("/"));
    let answer = join::join(&st, &token, &node).map_err(anyhow::Error::msg)?;
    println!("joined realm {} as {node}", answer.realm);
    // The realm goes into config.d; the bootstrap nodes the answer lists
    // into the nodes this one knows (mDNS adds those it sees on the LAN),
    // which it dials unless the configuration names some.
    let learnt: Vec<KnownNode> = answer
        .bootstrap_peers
        .iter()
        .map(|p| KnownNode {
            address: p.clone(),
            role: "bootstrap".into(),
            source: "join".into(),
        })
        .collect();
    st.learn(&answer.realm, &learnt, true)
        .map_err(|e| anyhow::anyhow!("keeping the realm's bootstrap nodes: {e}"))?;
    let mut mesh = serde_yaml_ng::Mapping::new();
    mesh.insert("realm".into(), answer.realm.clone().into());
    let mut maculaos = serde_yaml_ng::Mapping::new();
    maculaos.insert("mesh".into(), mesh.into());
    let mut doc = serde_yaml_ng::Mapping::new();
    doc.insert("maculaos".into(), maculaos.into());
    let text = format!(
        "# Written by `maculaos mesh join`: the realm this node joined.\n{}",
        serde_yaml_ng::to_string(&doc)?
    );
    let path = Path::new(JOIN_DROPIN);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("yaml.tmp");
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, path))
        .with_context(|| format!("writing {JOIN_DROPIN}"))?;
    println!("wrote {JOIN_DROPIN}");
    // A realm set where config.d does not win (the kernel command line, a
    // datasource) would keep the node out of the realm it just joined.
    let now = load();
    if now.maculaos.mesh.realm.as_deref() != Some(answer.realm.as_str()) {
        bail!(
            "joined realm {}, but the configuration still says realm {} (set by a source that \
             wins over config.d: `maculaos config show --sources` names it); change it there",
            answer.realm,
            now.maculaos.mesh.realm.unwrap_or_default()
        );
    }
    apply_now(false)
}

/// maculaos-meshd: answers pings for this node; on the node that holds the
/// realm CA, also the join service. Exits 0 when there is nothing to do.
/// How often the CA holder looks for a new roster to publish, and a
/// listener asks for the roster in case it missed one.
const ROSTER_TICK: Duration = Duration::from_secs(5);
const ROSTER_ASK: Duration = Duration::from_secs(60);
const ROSTER_REPEAT: Duration = Duration::from_secs(15);

/// On the CA holder: answer roster requests, and publish each new roster
/// (a join, a renewal, `mesh revoke`) at once, and the current one again
/// every [`ROSTER_REPEAT`]: a new roster restarts the servers it reaches,
/// and a listener busy restarting misses what is published meanwhile.
fn spawn_roster_service(st: State, realm: String) {
    std::thread::spawn(move || {
        let subject = client::roster_subject(&realm);
        let push = client::pub_subject(&realm, client::ROSTER_TOPIC);
        let mut published = 0;
        let mut last = std::time::Instant::now();
        loop {
            match Client::connect(&client::local_url(), "maculaos-meshd-roster", TIMEOUT) {
                Ok(c) => {
                    println!("maculaos-meshd: serving the realm roster on {subject}");
                    let r = c.serve_with_news(
                        &subject,
                        ROSTER_TICK,
                        || st.read_roster().map(|(s, _)| s.to_json().into_bytes()),
                        || {
                            // Also what a failed refresh after a join, or
                            // an expiry, left to do.
                            if let Err(e) = st.refresh_roster() {
                                eprintln!("maculaos-meshd: the roster: {e}");
                            }
                            let (signed, r) = st.read_roster()?;
                            if r.version == published && last.elapsed() < ROSTER_REPEAT {
                                return None;
                            }
                            last = std::time::Instant::now();
                            if r.version != published {
                                println!("maculaos-meshd: publishing the roster, {}", r.summary());
                            }
                            published = r.version;
                            Some((push.clone(), signed.to_json().into_bytes()))
                        },
                    );
                    if let Err(e) = r {
                        eprintln!("maculaos-meshd: roster: {e}");
                    }
                    // A new connection publishes again: a listener may
                    // have missed it while the server was down.
                    published = 0;
                }
                Err(e) => eprintln!("maculaos-meshd: roster: {e}"),
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    });
}

/// On a node that does not hold the CA: keep the newest roster the CA
/// signed (asked for at start and every minute, and taken as it is
/// published). Keeping it makes maculaos-mesh-apply.path run `maculaos
/// apply`, which pins its keys on a bootstrap or gateway node's listeners
/// (a peer's server, which takes no connections, is left as it is).
fn spawn_roster_follower(st: State, realm: String, listener: bool) {
    std::thread::spawn(move || {
        let ask = client::roster_subject(&realm);
        let pushed = client::sub_subject(&realm, client::ROSTER_TOPIC);
        let take = |text: &str| match maculaos_mesh::roster::Signed::from_json(text)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                // A listener pins the roster's keys; a node whose overlay
                // is on drops a revoked node's WireGuard peer: both apply.
                let overlay = Path::new(maculaos_mesh::overlay::OWN_FILE).exists();
                st.accept_roster(&s, listener || overlay)
                    .map_err(|e| e.to_string())
            }) {
            Ok(Some(r)) => println!("maculaos-meshd: new roster, {}", r.summary()),
            Ok(None) => {}
            Err(e) => eprintln!("maculaos-meshd: a roster was refused: {e}"),
        };
        loop {
            match Client::connect(&client::local_url(), "maculaos-meshd-roster", TIMEOUT) {
                // The client reconnects by itself; a subscription that
                // fails outright starts over with a new one.
                Ok(c) => loop {
                    if let Ok((m, _)) = c.request(&ask, b"", TIMEOUT) {
                        take(&m.payload);
                    }
                    let r = c.subscribe(&pushed, 0, Some(ROSTER_ASK), || {}, |m| take(&m.payload));
                    if let Err(e) = r {
                        eprintln!("maculaos-meshd: roster: {e}");
                        std::thread::sleep(Duration::from_secs(2));
                        break;
                    }
                },
                Err(e) => {
                    eprintln!("maculaos-meshd: roster: {e}");
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
        }
    });
}

/// How long each look at the LAN lasts; how often while meshd has just
/// started (nodes of a site tend to come up together), and after that.
const DISCOVER_FOR: Duration = Duration::from_secs(3);
const DISCOVER_EARLY: Duration = Duration::from_secs(20);
const DISCOVER_LATER: Duration = Duration::from_secs(300);
const DISCOVER_EARLY_FOR: Duration = Duration::from_secs(600);

/// On a node whose configuration names no bootstrap nodes: the bootstrap
/// and gateway nodes of its realm announced on the LAN join the nodes it
/// knows (`known.json`), which maculaos-mesh-apply.path applies.
fn spawn_discovery(st: State, realm: String) {
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut last_error = String::new();
        loop {
            let me = maculaos_discover::ThisNode::running();
            match maculaos_discover::browse(DISCOVER_FOR, &me) {
                Ok(nodes) => {
                    // Only nodes the realm roster lets in (none before this
                    // node has a roster; checked under the state's lock, so
                    // a roster that revoked one meanwhile wins): a revoked
                    // node announcing itself is not dialled.
                    let mut names = Vec::new();
                    let r = st.learn_announced(&realm, |members| {
                        let found: Vec<KnownNode> = nodes
                            .iter()
                            .filter(|n| !n.local)
                            .filter_map(|n| {
                                KnownNode::announced(&realm, &n.host, &n.role, &n.realm, members)
                            })
                            .collect();
                        names = found
                            .iter()
                            .map(|k| format!("{} ({})", k.address, k.role))
                            .collect();
                        found
                    });
                    match r {
                        Ok(Some(v)) => {
                            println!(
                                "maculaos-meshd: on the LAN: {} (known nodes version {v})",
                                names.join(", ")
                            );
                        }
                        Ok(None) => {}
                        Err(e) => {
                            eprintln!("maculaos-meshd: keeping the nodes seen on the LAN: {e}")
                        }
                    }
                    last_error.clear();
                }
                Err(e) => {
                    // Once per new error, not every round.
                    let e = e.to_string();
                    if e != last_error {
                        eprintln!("maculaos-meshd: looking for bootstrap nodes on the LAN: {e}");
                        last_error = e;
                    }
                }
            }
            std::thread::sleep(if started.elapsed() < DISCOVER_EARLY_FOR {
                DISCOVER_EARLY
            } else {
                DISCOVER_LATER
            });
        }
    });
}

/// How often a node looks at its certificate's expiry.
const RENEW_CHECK: Duration = Duration::from_secs(3600);

/// On the CA holder: renew the certificates of the realm's nodes.
fn spawn_renewal_service(st: State, realm: String) {
    std::thread::spawn(move || loop {
        let subject = client::renew_subject(&realm);
        match Client::connect(&client::local_url(), "maculaos-meshd-renew", TIMEOUT) {
            Ok(c) => {
                println!("maculaos-meshd: renewing certificates on {subject}");
                let r = c.serve(&subject, |p| {
                    let (a, log) = maculaos_mesh::renew::answer(&st, p);
                    println!("maculaos-meshd: {log}");
                    Some(a)
                });
                if let Err(e) = r {
                    eprintln!("maculaos-meshd: renewals: {e}");
                }
            }
            Err(e) => eprintln!("maculaos-meshd: renewals: {e}"),
        }
        std::thread::sleep(Duration::from_secs(2));
    });
}

/// On a node of the realm (not the CA holder): renew its certificate once
/// a third of its life is left, trying again every [`RENEW_CHECK`] until it
/// works. The new certificate restarts the server
/// (maculaos-mesh-apply.path runs apply).
fn spawn_renewer(st: State, realm: String) {
    std::thread::spawn(move || loop {
        if st.needs_renewal() {
            let r = Client::connect(&client::local_url(), "maculaos-meshd-renew", TIMEOUT)
                .map_err(|e| e.to_string())
                .and_then(|c| maculaos_mesh::renew::renew(&st, &c, &realm));
            match r {
                Ok(c) => println!(
                    "maculaos-meshd: renewed this node's certificate (serial {})",
                    c.serial
                ),
                Err(e) => eprintln!("maculaos-meshd: renewing this node's certificate: {e}"),
            }
        }
        std::thread::sleep(RENEW_CHECK);
    });
}

fn serve() -> Result<ExitCode> {
    let config = load();
    if !config.maculaos.nats.enabled {
        println!("maculaos-meshd: the NATS server is disabled; nothing to do");
        return Ok(ExitCode::SUCCESS);
    }
    let Some(realm) = config.maculaos.mesh.realm.clone() else {
        println!("maculaos-meshd: no realm configured; nothing to do");
        return Ok(ExitCode::SUCCESS);
    };
    let node = node_name(&config);
    let st = State::under(Path::new("/"));
    let id = st.identity().unwrap_or_default();
    if st.joined(&realm) && id.ca_holder {
        let listener = std::net::TcpListener::bind(("0.0.0.0", JOIN_PORT))
            .with_context(|| format!("listening on port {JOIN_PORT} for joins"))?;
        let mut peers: Vec<String> = config.maculaos.mesh.bootstrap_peers.clone();
        let me = format!(
            "{}:{}",
            maculaos_apply::mesh::advertise_host(&config, &node),
            maculaos_mesh::conf::LEAF_PORT
        );
        if config
            .maculaos
            .mesh
            .effective_roles()
            .contains(&MeshRole::Bootstrap)
        {
            peers.insert(0, me);
        }
        let st = st.clone();
        println!("maculaos-meshd: join service on port {JOIN_PORT} (realm {realm})");
        std::thread::spawn(move || {
            if let Err(e) = join::serve(&st, listener, &|| peers.clone()) {
                eprintln!("maculaos-meshd: join service: {e}");
                std::process::exit(1);
            }
        });
    }
    let roles = config.maculaos.mesh.effective_roles();
    if config.maculaos.mesh.bootstrap_peers.is_empty() && !roles.contains(&MeshRole::Bootstrap) {
        spawn_discovery(st.clone(), realm.clone());
    }
    if st.joined(&realm) {
        if id.ca_holder {
            spawn_roster_service(st.clone(), realm.clone());
            spawn_renewal_service(st.clone(), realm.clone());
        } else {
            spawn_renewer(st.clone(), realm.clone());
        }
        // Every node keeps the roster: listeners pin its keys, and every
        // node dials only roster members it found by mDNS.
        if !id.ca_holder {
            let listener =
                roles.contains(&MeshRole::Bootstrap) || roles.contains(&MeshRole::Gateway);
            spawn_roster_follower(st.clone(), realm.clone(), listener);
        }
    }
    spawn_service_directory(realm.clone(), node.clone());
    if st.joined(&realm) && !id.ca_holder {
        spawn_order_service(st.clone(), realm.clone(), node.clone());
    }
    if st.joined(&realm) {
        let host = maculaos_apply::mesh::advertise_host(&config, &node);
        spawn_overlay(st.clone(), realm.clone(), node.clone(), host);
    }
    let version = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| maculaos_info::os_release_value(&t, "VERSION_ID"))
        .unwrap_or_else(|| "unknown".into());
    let pong = Pong {
        node: node.clone(),
        realm: realm.clone(),
        version,
    };
    // The server starts beside this daemon: retry until it answers; the
    // client then reconnects by itself.
    loop {
        match Client::connect(&client::local_url(), "maculaos-meshd", TIMEOUT) {
            Ok(c) => {
                println!(
                    "maculaos-meshd: answering pings on {}",
                    client::ping_subject(&realm, &node)
                );
                if let Err(e) = c.serve_ping(&pong) {
                    eprintln!("maculaos-meshd: {e}");
                }
            }
            Err(e) => eprintln!("maculaos-meshd: {e}"),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
