//! The dashboard's HTTP server. It runs on a thread of its own and answers
//! one request at a time: gathering a status takes a moment (systemctl,
//! journalctl) and the dashboard has one reader, so requests wait their
//! turn instead of running those commands side by side. The agent never
//! waits for it: it only puts its results into a [`Feed`], a short lock
//! that no command runs under.
//!
//! - `GET /` — the page ([`crate::render_html`]);
//! - `GET /api/v1/status` — the [`Status`] as JSON;
//! - `GET /healthz` — `ok`, for a liveness probe (gathers nothing);
//! - `GET /fleet`, `GET /api/v1/fleet` — the realm's nodes as their
//!   heartbeats show them ([`crate::html::render_fleet_html`]), only to
//!   clients on the node itself (loopback: a process there, or an operator
//!   through an SSH tunnel) that name it by a loopback host (no web page
//!   rebinding a name to it): a client on the LAN gets 403, as the LAN has
//!   no business reading the fleet;
//! - `HEAD` like `GET` without the body; other paths 404, other methods 405.

use crate::html::render_fleet_html;
use crate::{collect, render_html, Collector, Status};
use anyhow::anyhow;
use maculaos_health::Check;
use std::io;
use std::net::TcpListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use tiny_http::{Header, Method, Request, Response, Server};

/// Where the dashboard listens unless configured otherwise: the node
/// itself only (reach it from elsewhere through an SSH tunnel).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9090";

/// What the agent tells the dashboard: its latest result of each check and
/// the realm it is configured for. Cheap to clone (one shared state); the
/// agent keeps one clone and [`spawn`] the other.
#[derive(Debug, Clone, Default)]
pub struct Feed {
    inner: Arc<Mutex<Fed>>,
}

#[derive(Debug, Default)]
struct Fed {
    checks: Vec<Check>,
    realm: Option<String>,
}

impl Feed {
    pub fn new() -> Feed {
        Feed::default()
    }

    fn lock(&self) -> MutexGuard<'_, Fed> {
        // A panic elsewhere while holding the lock leaves plain data
        // behind, still good to show.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A check's latest result: replaces the previous result of the check
    /// with that name, or comes after the others.
    pub fn record(&self, check: &Check) {
        let mut fed = self.lock();
        match fed.checks.iter_mut().find(|c| c.name == check.name) {
            Some(c) => *c = check.clone(),
            None => fed.checks.push(check.clone()),
        }
    }

    /// Replace all the results (e.g. in the configuration's order).
    pub fn set_checks(&self, checks: Vec<Check>) {
        self.lock().checks = checks;
    }

    /// Drop the results of the checks `keep` says no to (checks removed
    /// from the configuration).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().checks.retain(|c| keep(&c.name));
    }

    /// Take what the dashboard shows from the configuration (the realm).
    pub fn set_config(&self, config: &maculaos_config::Maculaos) {
        self.lock().realm = config.mesh.realm.clone();
    }

    pub fn checks(&self) -> Vec<Check> {
        self.lock().checks.clone()
    }

    pub fn realm(&self) -> Option<String> {
        self.lock().realm.clone()
    }
}

/// The agent feeds the dashboard as it goes: the configuration it loaded
/// (the realm; results of checks no longer configured are dropped) and
/// each check's result.
impl maculaos_health::agent::Observer for Feed {
    fn configured(&self, config: &maculaos_config::Maculaos, checks: &[String]) {
        self.set_config(config);
        self.retain(|name| checks.iter().any(|c| c == name));
    }

    fn checked(&self, check: &Check) {
        self.record(check);
    }
}

/// Listen on `addr` (`127.0.0.1:9090`), with an error that says what to do.
pub fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| bind_error(addr, &e))
}

fn bind_error(addr: &str, e: &io::Error) -> anyhow::Error {
    const SETTING: &str = "set maculaos.dashboard.listen to another address";
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
        None => (addr, "?"),
    };
    match e.kind() {
        io::ErrorKind::AddrInUse => anyhow!(
            "cannot serve the dashboard: port {port} on {host} is in use \
             (`ss -ltnp 'sport = :{port}'` shows by what): {SETTING}"
        ),
        io::ErrorKind::PermissionDenied => anyhow!(
            "cannot serve the dashboard on {addr}: not allowed ({e}; ports below 1024 \
             need root): {SETTING}"
        ),
        io::ErrorKind::AddrNotAvailable => anyhow!(
            "cannot serve the dashboard on {addr}: {host} is not an address of this node: \
             {SETTING}"
        ),
        _ => anyhow!(
            "cannot serve the dashboard on `{addr}`: {e} (write it as HOST:PORT, such as \
             {DEFAULT_LISTEN})"
        ),
    }
}

/// Serve the dashboard on `listener` from a thread of its own: each status
/// request gathers a fresh [`Status`] with `collector`, the checks and the
/// realm that the agent last put into `feed` (the feed's realm replaces
/// the collector's: the agent follows the configuration, the collector
/// was made once).
pub fn spawn(
    listener: TcpListener,
    mut collector: Collector,
    feed: Feed,
    fleet: FleetSource,
) -> io::Result<JoinHandle<()>> {
    spawn_with(
        listener,
        move || {
            let checks = feed.checks();
            collector.realm = feed.realm();
            collect(&mut collector, &checks)
        },
        Some(fleet),
    )
}

/// The realm's name and its fleet, for the fleet page; the error says why
/// there is none (no realm, JetStream unreachable).
pub type FleetSource = Box<dyn FnMut() -> Result<crate::FleetView, String> + Send + 'static>;

/// Serve the dashboard on `listener` with the status that `source` gives
/// (called once per page or JSON request, never for `/healthz`), and the
/// fleet `fleet` gives (none: the fleet pages answer 404).
pub fn spawn_with(
    listener: TcpListener,
    source: impl FnMut() -> Status + Send + 'static,
    fleet: Option<FleetSource>,
) -> io::Result<JoinHandle<()>> {
    let server = Server::from_listener(listener, None).map_err(io::Error::other)?;
    std::thread::Builder::new()
        .name("maculaos-dashboard".into())
        .spawn(move || serve(&server, source, fleet))
}

/// Whether a request from `remote` naming `host` may read the fleet: from
/// the node itself (the kernel drops LAN packets claiming a loopback
/// source), by a loopback name, or none (HTTP/1.0).
fn fleet_allowed(remote: Option<std::net::SocketAddr>, host: Option<&str>) -> bool {
    let local = remote.is_some_and(|r| r.ip().to_canonical().is_loopback());
    let name = host.map(|h| {
        // `[::1]:9090`, `127.0.0.1:9090`, `localhost`
        let h = h.trim();
        match h.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default().to_string(),
            None => h.split(':').next().unwrap_or_default().to_ascii_lowercase(),
        }
    });
    local
        && name.is_none_or(|n| {
            n == "localhost"
                || n.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
}

/// The fleet page or JSON, or why not.
fn fleet_reply(route: Route, fleet: Option<&mut FleetSource>, allowed: bool) -> Reply {
    let Some(fleet) = fleet else {
        return Reply::text(404, "this dashboard shows no fleet\n".into());
    };
    if !allowed {
        return Reply::text(
            403,
            "the fleet is shown only on the node itself: from elsewhere, through an SSH tunnel \
             (ssh -L 9090:127.0.0.1:PORT NODE, then http://127.0.0.1:9090/fleet)\n"
                .into(),
        );
    }
    match catch_unwind(AssertUnwindSafe(fleet)) {
        Ok(Ok(f)) if route == Route::FleetPage => Reply::html(render_fleet_html(Ok(&f))),
        Ok(Ok(f)) => match serde_json::to_string_pretty(&f.json) {
            Ok(json) => Reply::json(json),
            Err(e) => Reply::text(500, format!("cannot encode the fleet: {e}\n")),
        },
        Ok(Err(why)) if route == Route::FleetPage => {
            let mut r = Reply::html(render_fleet_html(Err(&why)));
            r.code = 503;
            r
        }
        Ok(Err(why)) => Reply::text(503, format!("{why}\n")),
        Err(_) => Reply::text(500, "reading the fleet failed\n".into()),
    }
}

fn serve(server: &Server, mut source: impl FnMut() -> Status, mut fleet: Option<FleetSource>) {
    // tiny_http reads and parses each request on its own threads and hands
    // over only well-formed ones (it answers bad ones with 400 itself).
    for request in server.incoming_requests() {
        let route = route(request.method(), request.url());
        let response = match route {
            Route::FleetPage | Route::FleetJson => {
                let host = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Host"))
                    .map(|h| h.value.as_str().to_string());
                let allowed = fleet_allowed(request.remote_addr().copied(), host.as_deref());
                fleet_reply(route, fleet.as_mut(), allowed)
            }
            Route::Page | Route::Json => {
                // A bug while gathering costs this request a 500, not the
                // dashboard its thread.
                match catch_unwind(AssertUnwindSafe(&mut source)) {
                    Ok(status) if route == Route::Page => Reply::html(render_html(&status)),
                    Ok(status) => match serde_json::to_string_pretty(&status) {
                        Ok(json) => Reply::json(json),
                        Err(e) => Reply::text(500, format!("cannot encode the status: {e}\n")),
                    },
                    Err(_) => Reply::text(500, "gathering the status failed\n".into()),
                }
            }
            Route::Healthz => Reply::text(200, "ok\n".into()),
            Route::NotFound => Reply::text(
                404,
                "not found: the dashboard has /, /api/v1/status, /fleet, /api/v1/fleet and /healthz\n"
                    .into(),
            ),
            Route::NotAllowed => Reply::text(405, "only GET: the dashboard is read-only\n".into()),
        };
        respond(request, response);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Page,
    Json,
    FleetPage,
    FleetJson,
    Healthz,
    NotFound,
    NotAllowed,
}

fn route(method: &Method, url: &str) -> Route {
    if !matches!(method, Method::Get | Method::Head) {
        return Route::NotAllowed;
    }
    // A query string (a cache buster) changes nothing.
    let path = url.split(['?', '#']).next().unwrap_or("");
    match path {
        "/" | "/index.html" => Route::Page,
        "/api/v1/status" => Route::Json,
        "/fleet" => Route::FleetPage,
        "/api/v1/fleet" => Route::FleetJson,
        "/healthz" => Route::Healthz,
        _ => Route::NotFound,
    }
}

struct Reply {
    code: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn html(body: String) -> Reply {
        Reply {
            code: 200,
            content_type: "text/html; charset=utf-8",
            body,
        }
    }

    fn json(body: String) -> Reply {
        Reply {
            code: 200,
            content_type: "application/json",
            body,
        }
    }

    fn text(code: u16, body: String) -> Reply {
        Reply {
            code,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }
}

fn respond(request: Request, reply: Reply) {
    let mut response = Response::from_string(reply.body).with_status_code(reply.code);
    let headers = [
        ("Content-Type", reply.content_type),
        // Every answer is the state of the moment.
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ];
    for (k, v) in headers {
        if let Ok(h) = Header::from_bytes(k, v) {
            response.add_header(h);
        }
    }
    if reply.code == 405 {
        if let Ok(h) = Header::from_bytes("Allow", "GET, HEAD") {
            response.add_header(h);
        }
    }
    // A client that went away is no concern of the next one.
    let _ = request.respond(response);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{checks, fake_root};
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn get(addr: std::net::SocketAddr, request: &str) -> (String, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    #[test]
    fn serves_the_status_the_page_and_errors() {
        let d = fake_root();
        let collector = Collector::new(d.path(), vec!["ssh.service".into()]);
        let feed = Feed::new();
        let listener = bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fleet: FleetSource = Box::new(|| Err("this node is in no realm".into()));
        spawn(listener, collector, feed.clone(), fleet).unwrap();
        // The agent's results arrive after the server started.
        for c in checks() {
            feed.record(&c);
        }
        feed.record(&Check::new("web", maculaos_health::State::Pass, "200 OK"));
        let mut config = maculaos_config::Maculaos::default();
        config.mesh.realm = Some("io.macula".into());
        feed.set_config(&config);

        let (head, body) = get(addr, "GET /api/v1/status HTTP/1.0\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        assert_eq!(header(&head, "Content-Type"), Some("application/json"));
        assert_eq!(header(&head, "Cache-Control"), Some("no-store"));
        let status: Status = serde_json::from_str(&body).unwrap();
        assert_eq!(status.hostname, "macula-ab12");
        assert_eq!(status.checks.len(), 4);
        assert_eq!(status.checks[1].state, "pass", "replaced by name");
        assert!(status.healthy);
        assert_eq!(status.mesh.realm.as_deref(), Some("io.macula"));

        // 100 ticks later, 50 of them busy.
        crate::tests::write(d.path(), "proc/stat", "cpu  150 0 100 750 100 0 0 0 0 0\n");
        let (head, body) = get(addr, "GET /?x=1 HTTP/1.0\r\nHost: localhost\r\n\r\n");
        assert!(head.contains(" 200 "), "{head}");
        assert_eq!(
            header(&head, "Content-Type"),
            Some("text/html; charset=utf-8")
        );
        assert!(body.contains("<title>MaculaOS — macula-ab12</title>"));
        assert!(body.contains("content=\"5\""));
        // The second request had a CPU sample to compare with.
        assert!(body.contains("50.0% busy over the last"), "{body}");

        let (head, body) = get(addr, "GET /healthz HTTP/1.0\r\n\r\n");
        assert!(head.contains(" 200 "), "{head}");
        assert_eq!(body, "ok\n");
        let (head, _) = get(addr, "GET /nope HTTP/1.0\r\n\r\n");
        assert!(head.contains(" 404 "), "{head}");
        let (head, _) = get(
            addr,
            "POST /api/v1/status HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}",
        );
        assert!(head.contains(" 405 "), "{head}");
        assert_eq!(header(&head, "Allow"), Some("GET, HEAD"));
        // Garbage does not stop the server.
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(b"\x00\x01 nonsense\r\n\r\n");
        drop(s);
        let (head, _) = get(addr, "GET /healthz HTTP/1.0\r\n\r\n");
        assert!(head.contains(" 200 "), "{head}");
    }

    #[test]
    fn a_panicking_source_costs_one_request() {
        let listener = bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut calls = 0;
        let d = fake_root();
        let mut collector = Collector::new(d.path(), Vec::new());
        spawn_with(
            listener,
            move || {
                calls += 1;
                if calls == 1 {
                    panic!("a bug");
                }
                collect(&mut collector, &[])
            },
            None,
        )
        .unwrap();
        let (head, _) = get(addr, "GET /api/v1/status HTTP/1.0\r\n\r\n");
        assert!(head.contains(" 500 "), "{head}");
        let (head, _) = get(addr, "GET /api/v1/status HTTP/1.0\r\n\r\n");
        assert!(head.contains(" 200 "), "{head}");
    }

    fn a_fleet() -> crate::FleetView {
        crate::FleetView {
            realm: "io.macula".into(),
            summary: "1 node │ 1 healthy │ 0 degraded │ 0 offline".into(),
            all_healthy: true,
            warning: None,
            rows: vec![crate::FleetRow {
                node: "edge-<01>".into(),
                status: "healthy".into(),
                ..crate::FleetRow::default()
            }],
            json: serde_json::json!({"summary": {"healthy": 1}}),
        }
    }

    fn serve_fleet(listen: &str) -> std::net::SocketAddr {
        let listener = bind(listen).unwrap();
        let mut addr = listener.local_addr().unwrap();
        let d = fake_root();
        let mut collector = Collector::new(d.path(), Vec::new());
        let fleet: FleetSource = Box::new(|| Ok(a_fleet()));
        spawn_with(listener, move || collect(&mut collector, &[]), Some(fleet)).unwrap();
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        addr
    }

    #[test]
    fn the_fleet_only_on_loopback() {
        let addr = serve_fleet("127.0.0.1:0");
        let (head, body) = get(addr, "GET /fleet HTTP/1.0\r\n\r\n");
        assert!(head.contains(" 200 "), "{head}");
        assert!(
            body.contains("1 node │ 1 healthy │ 0 degraded │ 0 offline"),
            "{body}"
        );
        // Node names are escaped.
        assert!(
            body.contains("edge-&lt;01&gt;") && !body.contains("edge-<01>"),
            "{body}"
        );
        let (head, body) = get(addr, "GET /api/v1/fleet HTTP/1.0\r\n\r\n");
        assert!(head.contains(" 200 "), "{head}");
        let f: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(f["summary"]["healthy"], 1);
        // A web page that had its name point at the node: refused.
        let (head, body) = get(
            addr,
            "GET /api/v1/fleet HTTP/1.1\r\nHost: evil.example:9090\r\nConnection: close\r\n\r\n",
        );
        assert!(head.contains(" 403 "), "{head}");
        assert!(body.contains("ssh -L"), "{body}");
    }

    #[test]
    fn the_fleet_is_for_the_node_itself() {
        let at = |s: &str| Some(s.parse::<std::net::SocketAddr>().unwrap());
        assert!(fleet_allowed(at("127.0.0.1:5555"), Some("127.0.0.1:9090")));
        assert!(fleet_allowed(at("[::1]:5555"), Some("[::1]:9090")));
        assert!(fleet_allowed(
            at("[::ffff:127.0.0.1]:5555"),
            Some("LOCALHOST")
        ));
        assert!(fleet_allowed(at("127.0.0.1:5555"), None));
        // From the LAN, whatever it names.
        assert!(!fleet_allowed(at("192.168.1.20:5555"), Some("127.0.0.1")));
        assert!(!fleet_allowed(None, None));
        // From the node, by a name that is not loopback's.
        assert!(!fleet_allowed(
            at("127.0.0.1:5555"),
            Some("macula-0a01.local:9090")
        ));
    }

    #[test]
    fn routes() {
        assert_eq!(route(&Method::Get, "/fleet"), Route::FleetPage);
        assert_eq!(route(&Method::Get, "/api/v1/fleet?x"), Route::FleetJson);
        assert_eq!(route(&Method::Get, "/"), Route::Page);
        assert_eq!(route(&Method::Head, "/api/v1/status?t=1"), Route::Json);
        assert_eq!(route(&Method::Get, "/healthz"), Route::Healthz);
        assert_eq!(route(&Method::Get, "/api/v1/status/"), Route::NotFound);
        assert_eq!(route(&Method::Delete, "/"), Route::NotAllowed);
    }

    #[test]
    fn bind_errors_say_what_to_do() {
        let taken = bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = bind(&format!("127.0.0.1:{port}")).unwrap_err().to_string();
        assert!(
            e.contains(&format!("port {port} on 127.0.0.1 is in use")),
            "{e}"
        );
        assert!(
            e.ends_with("set maculaos.dashboard.listen to another address"),
            "{e}"
        );
        let e = bind("nonsense").unwrap_err().to_string();
        assert!(e.contains("HOST:PORT"), "{e}");
    }

    #[test]
    fn the_feed_keeps_the_latest_result_of_each_check() {
        let f = Feed::new();
        for c in checks() {
            f.record(&c);
        }
        f.retain(|n| n != "k3s");
        let names: Vec<String> = f.checks().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["config", "web", "time-sync"]);
        f.set_checks(Vec::new());
        assert!(f.checks().is_empty());
        assert_eq!(f.realm(), None);
    }
}
