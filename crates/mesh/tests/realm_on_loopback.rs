//! Three real nats-servers on this host, configured as a node of each role
//! would be (two bootstrap nodes, one peer, mutual TLS from one realm CA),
//! each bound to its own loopback address: a publication on the peer
//! reaches subscribers on both bootstrap nodes, a bootstrap node's request
//! is answered on the peer, the peer stays in the realm through the other
//! bootstrap node when one dies, and a node with another realm's
//! certificate is refused. The scenarios show the same between VMs.

// A test: a failed step is the failure it reports.
#![allow(clippy::unwrap_used)]

use maculaos_mesh::client::{self, Client, Pong};
use maculaos_mesh::conf::{Endpoint, ServerPlan, TlsFiles};
use maculaos_mesh::{pki, status};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const REALM: &str = "io.macula.test";
const NATS_SERVER: &str = "/usr/sbin/nats-server";
const DEADLINE: Duration = Duration::from_secs(30);
// Not the ports a node uses: a nats-server the host runs itself (Debian's
// package starts one on 4222) must not be in the way.
const CLIENT_PORT: u16 = 24222;
const MONITOR_PORT: u16 = 28222;
const LEAF_PORT: u16 = 24433;
const CLUSTER_PORT: u16 = 26222;

struct Server {
    child: Child,
    ip: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn url(&self) -> String {
        format!("nats://{}:{CLIENT_PORT}", self.ip)
    }
    fn monitor(&self) -> String {
        format!("{}:{MONITOR_PORT}", self.ip)
    }
}

/// Give `name` at `ip` a key and a certificate from `ca`; returns what a
/// roster pins for it.
fn certify(dir: &Path, ca: &pki::CertAndKey, realm: &str, name: &str, ip: &str) -> String {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let key = pki::new_key().unwrap();
    let csr = pki::csr(&key, name).unwrap();
    let cert = pki::sign_node(ca, realm, name, &[], &[ip.parse().unwrap()], &csr).unwrap();
    std::fs::write(d.join("node.key"), key).unwrap();
    std::fs::write(d.join("node.crt"), &cert).unwrap();
    std::fs::write(d.join("ca.crt"), &ca.cert_pem).unwrap();
    pki::cert_info(&cert).unwrap().spki_sha256
}

/// Sign a certificate for `name` at `ip` and start its server.
fn start(
    dir: &Path,
    ca: &pki::CertAndKey,
    realm: &str,
    name: &str,
    ip: &str,
    bootstrap: bool,
    peers: &[&str],
) -> Server {
    certify(dir, ca, realm, name, ip);
    Spec {
        realm,
        name,
        ip,
        bootstrap,
        peers,
        ..Spec::default()
    }
    .start(dir)
}

/// A node's server: its realm, name, address and roles, the bootstrap
/// nodes and gateways it dials, the keys it pins.
#[derive(Default)]
struct Spec<'a> {
    realm: &'a str,
    name: &'a str,
    ip: &'a str,
    bootstrap: bool,
    gateway: bool,
    peers: &'a [&'a str],
    relays: &'a [&'a str],
    pinned: &'a [String],
}

impl Spec<'_> {
    /// Start the server of a node certified already.
    fn start(&self, dir: &Path) -> Server {
        let (name, ip) = (self.name, self.ip);
        let d = dir.join(name);
        let endpoints = |l: &[&str]| -> Vec<Endpoint> {
            l.iter()
                .map(|p| Endpoint::parse(p, LEAF_PORT).unwrap())
                .collect()
        };
        let plan = ServerPlan {
            node: name.into(),
            realm: Some(self.realm.into()),
            bootstrap: self.bootstrap,
            gateway: self.gateway,
            listen: format!("{ip}:{CLIENT_PORT}"),
            max_payload: 1 << 20,
            bootstrap_peers: endpoints(self.peers),
            relays: endpoints(self.relays),
            tls: Some(TlsFiles {
                cert: d.join("node.crt"),
                key: d.join("node.key"),
                ca: d.join("ca.crt"),
            }),
            jetstream: false,
            jetstream_dir: d.join("js"),
            jetstream_max_file: 64 << 20,
            leaf_port: LEAF_PORT,
            cluster_port: CLUSTER_PORT,
            monitor: format!("{ip}:{MONITOR_PORT}"),
            bind: ip.into(),
            advertise: ip.into(),
            pinned: self.pinned.to_vec(),
        };
        let conf = d.join("nats.conf");
        std::fs::write(&conf, plan.render()).unwrap();
        assert!(
            Path::new(NATS_SERVER).exists(),
            "apt-get install nats-server"
        );
        let child = Command::new(NATS_SERVER)
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(d.join("nats.log"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let s = Server {
            child,
            ip: ip.into(),
        };
        let t = Instant::now();
        while let Err(e) = status::varz(&s.monitor()) {
            let log = std::fs::read_to_string(d.join("nats.log")).unwrap_or_default();
            assert!(
                t.elapsed() < DEADLINE,
                "{name}'s server does not answer: {e}\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }
}

/// `mode` in the `settings` bucket, read on bootstrap node `s`.
fn b2c_kv(s: &Server) -> client::KvValue {
    connect(s)
        .kv_get(REALM, "settings", "mode")
        .unwrap()
        .unwrap()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connect(s: &Server) -> Client {
    Client::connect(&s.url(), "test", Duration::from_secs(5)).unwrap()
}

/// Subscribe on `s` in a thread; the receiver gets each payload.
fn subscriber(s: &Server, subject: String) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let url = s.url();
    std::thread::spawn(move || {
        let c = Client::connect(&url, "sub", Duration::from_secs(5)).unwrap();
        let _ = c.subscribe(
            &subject,
            0,
            Some(DEADLINE * 2),
            || ready_tx.send(()).unwrap(),
            |m| {
                let _ = tx.send(m.payload);
            },
        );
    });
    ready_rx.recv_timeout(DEADLINE).unwrap();
    rx
}

fn ping(from: &Client, node: &str) -> Result<Pong, String> {
    let (m, _) = from
        .request(
            &client::ping_subject(REALM, node),
            b"",
            Duration::from_secs(2),
        )
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&m.payload).map_err(|e| e.to_string())
}

fn responder(s: &Server, node: &str) {
    let (url, pong) = (
        s.url(),
        Pong {
            node: node.into(),
            realm: REALM.into(),
            version: "test".into(),
        },
    );
    std::thread::spawn(move || {
        let c = Client::connect(&url, "pong", Duration::from_secs(5)).unwrap();
        let _ = c.serve_ping(&pong);
    });
}

/// Answers discovery requests for service `web` only, as `node`.
fn web_offerer(s: &Server, node: &str) {
    let (url, node) = (s.url(), node.to_string());
    std::thread::spawn(move || {
        let c = Client::connect(&url, "offer", Duration::from_secs(5)).unwrap();
        let _ = c.serve_subjects(&client::discover_subject(REALM, "*"), |subject, _| {
            subject.ends_with(".web").then(|| node.clone().into_bytes())
        });
    });
}

#[test]
fn two_bootstrap_nodes_and_a_peer_form_one_realm() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::create_ca(REALM).unwrap();
    let b1 = start(dir.path(), &ca, REALM, "b1", "127.0.0.11", true, &[]);
    let b2 = start(
        dir.path(),
        &ca,
        REALM,
        "b2",
        "127.0.0.12",
        true,
        &["127.0.0.11:24433"],
    );
    let mut b1 = Some(b1);
    let p = start(
        dir.path(),
        &ca,
        REALM,
        "p",
        "127.0.0.13",
        false,
        &["127.0.0.11:24433", "127.0.0.12:24433"],
    );
    wait_for("the peer's leafnode connection", || {
        status::leafz(&p.monitor()).is_ok_and(|l| l.leafs.len() == 1)
    });
    wait_for("the bootstrap nodes' route", || {
        status::routez(&b2.monitor()).is_ok_and(|r| r.routes.len() == 1)
    });

    // A publication on the peer reaches subscribers on both bootstrap nodes.
    let b1_ref = b1.as_ref().unwrap();
    let subs = [
        subscriber(b1_ref, client::sub_subject(REALM, "x")),
        subscriber(&b2, client::sub_subject(REALM, "x")),
    ];
    let pc = connect(&p);
    let mut got = [false, false];
    wait_for(
        "both bootstrap nodes to receive the peer's publication",
        || {
            pc.publish(&client::pub_subject(REALM, "x"), b"hello")
                .unwrap();
            for (i, rx) in subs.iter().enumerate() {
                while let Ok(m) = rx.try_recv() {
                    assert_eq!(m, "hello");
                    got[i] = true;
                }
            }
            got == [true, true]
        },
    );

    // A request from a bootstrap node is answered on the peer.
    responder(&p, "p");
    let b2c = connect(&b2);
    wait_for("b2's ping to be answered by p", || {
        ping(&b2c, "p").is_ok_and(|pong| pong.node == "p")
    });

    // Service discovery: each node that runs `web` answers, the asker
    // gathers every answer; a service nobody runs gets none.
    web_offerer(&p, "p");
    web_offerer(b1_ref, "b1");
    let ask = |name: &str| {
        let mut nodes: Vec<String> = b2c
            .gather(
                &client::discover_subject(REALM, name),
                b"",
                Duration::from_secs(1),
            )
            .unwrap()
            .into_iter()
            .map(|m| m.payload)
            .collect();
        nodes.sort();
        nodes
    };
    wait_for("both offers of web", || ask("web") == ["b1", "p"]);
    assert!(ask("db").is_empty());

    // The realm's key-value store from the peer: its JetStream API goes to
    // the bootstrap nodes through the realm's domain. The bucket is kept
    // on both (the cluster elects its leader once the route is up).
    wait_for("a bucket kept on both bootstrap nodes", || {
        pc.kv_create(REALM, "settings", 2).is_ok()
    });
    let e = pc.kv_get(REALM, "missing", "k").unwrap_err().to_string();
    assert!(e.contains("maculaos mesh kv create missing"), "{e}");
    let rev = pc.kv_put(REALM, "settings", "mode", b"eco").unwrap();
    let v = pc.kv_get(REALM, "settings", "mode").unwrap().unwrap();
    assert_eq!((v.value.as_str(), v.revision), ("eco", rev));
    assert_eq!(pc.kv_get(REALM, "settings", "unset").unwrap(), None);
    // Compare-and-set: from the revision read only, never over a writer
    // that came first, whichever bootstrap node each asks.
    let first = pc.kv_swap(REALM, "settings", "slots", b"a", 0).unwrap();
    let first = first.expect("made from revision 0");
    assert_eq!(
        pc.kv_swap(REALM, "settings", "slots", b"b", 0).unwrap(),
        None
    );
    let second = b2c
        .kv_swap(REALM, "settings", "slots", b"b", first)
        .unwrap();
    assert!(second.is_some_and(|r| r > first));
    assert_eq!(
        pc.kv_swap(REALM, "settings", "slots", b"c", first).unwrap(),
        None
    );
    let v = pc.kv_get(REALM, "settings", "slots").unwrap().unwrap();
    assert_eq!((v.value.as_str(), Some(v.revision)), ("b", second));
    // Made again with the same settings: the same bucket, value kept.
    pc.kv_create(REALM, "settings", 2).unwrap();
    let v = b2c_kv(&b2);
    assert_eq!(v.value, "eco");
    // A bucket made on one bootstrap node is kept on both once asked, its
    // values listed in one go from the peer, a removed key left out.
    let bc = connect(b1.as_ref().unwrap());
    bc.kv_create(REALM, "reg", 1).unwrap();
    bc.kv_put(REALM, "reg", "n1", b"one").unwrap();
    assert!(pc.kv_ensure(REALM, "reg", 2).unwrap());
    assert!(!pc.kv_ensure(REALM, "reg", 2).unwrap());
    assert!(
        !pc.kv_ensure(REALM, "reg", 1).unwrap(),
        "never fewer copies"
    );
    // The new copy catches up before the bucket takes writes again.
    for k in ["n2", "n3"] {
        wait_for("a write to the bucket kept on two nodes", || {
            pc.kv_put(REALM, "reg", k, k.as_bytes()).is_ok()
        });
    }
    pc.kv_delete(REALM, "reg", "n2").unwrap();
    let listed: Vec<(String, Vec<u8>)> = pc
        .kv_entries(REALM, "reg")
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    assert_eq!(
        listed,
        [
            ("n1".to_string(), b"one".to_vec()),
            ("n3".into(), b"n3".to_vec())
        ]
    );
    pc.kv_create(REALM, "empty", 2).unwrap();
    assert!(pc.kv_entries(REALM, "empty").unwrap().is_empty());

    // b1 dies: the peer reaches the realm through b2.
    drop(b1.take());
    wait_for("p to be answered from b2 once b1 is gone", || {
        ping(&b2c, "p").is_ok()
            && status::leafz(&p.monitor())
                .is_ok_and(|l| l.leafs.iter().any(|c| c.ip == "127.0.0.12"))
    });

    // A node whose certificate comes from another realm's CA is refused.
    let other = pki::create_ca("io.elsewhere").unwrap();
    let stranger = start(
        dir.path(),
        &other,
        "io.elsewhere",
        "s",
        "127.0.0.14",
        false,
        &["127.0.0.12:24433"],
    );
    responder(&stranger, "s");
    let log = dir.path().join("s/nats.log");
    wait_for("the stranger's TLS error", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("certificate"))
    });
    assert!(
        ping(&b2c, "s").is_err(),
        "a node of another realm was let in"
    );
    let l = status::leafz(&stranger.monitor()).unwrap();
    assert!(l.leafs.is_empty(), "{l:?}");
}

/// A listener that pins the roster's keys takes a member's leafnode and
/// refuses a node of the same realm whose key left the roster (revoked):
/// nats-server 2.9 enforces `pinned_certs` on the leafnode listener.
#[test]
fn a_listener_refuses_a_key_the_roster_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::create_ca(REALM).unwrap();
    let b = certify(d, &ca, REALM, "b", "127.0.0.21");
    let member = certify(d, &ca, REALM, "m", "127.0.0.22");
    certify(d, &ca, REALM, "r", "127.0.0.23");
    let pinned = [b, member];
    let b = Spec {
        realm: REALM,
        name: "b",
        ip: "127.0.0.21",
        bootstrap: true,
        pinned: &pinned,
        ..Spec::default()
    }
    .start(d);
    let leaf = ["127.0.0.21:24433"];
    let node = |name, ip| Spec {
        realm: REALM,
        name,
        ip,
        peers: &leaf,
        ..Spec::default()
    };
    let m = node("m", "127.0.0.22").start(d);
    let r = node("r", "127.0.0.23").start(d);
    wait_for("the member's leafnode", || {
        status::leafz(&m.monitor()).is_ok_and(|l| l.leafs.len() == 1)
    });
    let log = d.join("b/nats.log");
    wait_for("the listener's refusal of the revoked key", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("pinned"))
    });
    let l = status::leafz(&r.monitor()).unwrap();
    assert!(
        l.leafs.is_empty(),
        "a key the roster left out got in: {l:?}"
    );
    let l = status::leafz(&b.monitor()).unwrap();
    assert_eq!(l.leafs.len(), 1, "{l:?}");
}

/// A peer that cannot reach a bootstrap node (nothing answers at the one
/// it knows) reaches the realm through a gateway, which relays it over its
/// own leafnode: the peer's publication reaches the bootstrap node, and
/// the bootstrap node's request is answered on the peer.
#[test]
fn a_gateway_relays_a_peer_that_reaches_no_bootstrap_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::create_ca(REALM).unwrap();
    let b = start(d, &ca, REALM, "b", "127.0.0.31", true, &[]);
    certify(d, &ca, REALM, "g", "127.0.0.32");
    let g = Spec {
        realm: REALM,
        name: "g",
        ip: "127.0.0.32",
        gateway: true,
        peers: &["127.0.0.31:24433"],
        ..Spec::default()
    }
    .start(d);
    certify(d, &ca, REALM, "p", "127.0.0.33");
    // 127.0.0.34 runs no server: the bootstrap node the peer cannot reach.
    let p = Spec {
        realm: REALM,
        name: "p",
        ip: "127.0.0.33",
        peers: &["127.0.0.34:24433"],
        relays: &["127.0.0.32:24433"],
        ..Spec::default()
    }
    .start(d);
    wait_for("the peer's leafnode to the gateway", || {
        status::leafz(&p.monitor()).is_ok_and(|l| l.leafs.iter().any(|c| c.ip == "127.0.0.32"))
    });
    wait_for("the gateway's leafnode to the bootstrap node", || {
        status::leafz(&b.monitor()).is_ok_and(|l| l.leafs.len() == 1)
    });
    let sub = subscriber(&b, client::sub_subject(REALM, "x"));
    let pc = connect(&p);
    wait_for(
        "the bootstrap node to receive the peer's publication",
        || {
            pc.publish(&client::pub_subject(REALM, "x"), b"relayed")
                .unwrap();
            sub.try_recv().is_ok_and(|m| m == "relayed")
        },
    );
    responder(&p, "p");
    let bc = connect(&b);
    wait_for("b's ping to be answered by p through g", || {
        ping(&bc, "p").is_ok_and(|pong| pong.node == "p")
    });
    drop(g);
}
