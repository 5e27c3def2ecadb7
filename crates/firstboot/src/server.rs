//! The wizard's HTTP server: an HTML form for a browser, a JSON API for
//! tools, both behind the pairing code.
//!
//! Every request goes through [`Wizard::handle`], which needs no socket (the
//! unit tests call it directly); [`serve`] is the loop around it. The order
//! of a pairing attempt is fixed: refused outright while the rate limiter
//! says so, then the code, and only with the right code the fields; the
//! caller's `on_pair` (which writes the configuration) runs only when the
//! code is right and every field is valid.

use crate::code::PairingCode;
use crate::form::{self, FieldErrors, PairRequest, Pairing};
use serde::Serialize;
use std::fmt::Write as _;
use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// The largest request body read: a pairing request with a bundle is a few
/// KiB; more is not a pairing request.
pub const MAX_BODY: usize = 64 * 1024;

/// What the wizard shows about the node (on the page and at
/// `/api/v1/info`), gathered by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeFacts {
    /// The node's identity (its machine id, or what the fleet knows it by).
    pub id: String,
    /// The current hostname.
    pub hostname: String,
    /// The MaculaOS version.
    pub version: String,
    /// The machine, such as `/sys/class/dmi/id/product_name` tells it.
    pub hardware: String,
    /// The node's addresses, as they are to be shown.
    pub addresses: Vec<String>,
}

/// Refuses pairing attempts after too many wrong codes in a row.
///
/// After [`RateLimiter::FREE_TRIES`] consecutive wrong codes, every attempt
/// is refused (not even checked) for [`RateLimiter::FIRST_BACKOFF`]; each
/// further wrong code doubles that, up to [`RateLimiter::MAX_BACKOFF`]. A
/// right code resets it. The limit is for the node, not per client address:
/// a guesser can change addresses, and the code is worth ~49 bits anyway;
/// the cost is that a guesser can hold off the operator for at most the
/// current backoff.
#[derive(Debug, Clone, Default)]
pub struct RateLimiter {
    wrong: u32,
    until: Option<Instant>,
}

impl RateLimiter {
    /// Wrong codes in a row before attempts are refused.
    pub const FREE_TRIES: u32 = 5;
    /// The first refusal period.
    pub const FIRST_BACKOFF: Duration = Duration::from_secs(30);
    /// The longest refusal period.
    pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

    pub fn new() -> RateLimiter {
        RateLimiter::default()
    }

    /// `Err(time left)` while attempts are refused at `now`.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        match self.until {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a wrong code at `now`; from the fifth in a row, starts a
    /// refusal period.
    pub fn wrong_code(&mut self, now: Instant) {
        self.wrong = self.wrong.saturating_add(1);
        if self.wrong >= Self::FREE_TRIES {
            // 30 s · 2^5 is already past the cap: no need to shift further.
            let doublings = (self.wrong - Self::FREE_TRIES).min(5);
            let backoff = (Self::FIRST_BACKOFF * (1u32 << doublings)).min(Self::MAX_BACKOFF);
            self.until = Some(now + backoff);
        }
    }

    /// A right code: forget the wrong ones.
    pub fn right_code(&mut self) {
        *self = RateLimiter::default();
    }
}

/// An HTTP response, before it is put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Headers besides `Content-Type` (`Retry-After`, `Allow`, security
    /// headers).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: String) -> Response {
        // The pages may hold what the operator typed (a join token): never
        // cached; and the browser takes the content type as given.
        let headers = vec![
            ("Cache-Control".into(), "no-store".into()),
            ("X-Content-Type-Options".into(), "nosniff".into()),
        ];
        Response {
            status,
            content_type,
            headers,
            body,
        }
    }

    fn html(status: u16, body: String) -> Response {
        let mut r = Response::new(status, "text/html; charset=utf-8", body);
        // No scripts, no outside resources, not framed (a pairing form
        // inside someone else's page), forms only back to the wizard.
        r.headers.push((
            "Content-Security-Policy".into(),
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'"
                .into(),
        ));
        r
    }

    fn json(status: u16, body: &serde_json::Value) -> Response {
        Response::new(status, "application/json", body.to_string())
    }

    fn with_header(mut self, name: &str, value: String) -> Response {
        self.headers.push((name.into(), value));
        self
    }

    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A pairing that went through: what the caller's `on_pair` was given and
/// what it answered.
#[derive(Debug, Clone)]
pub struct PairOutcome {
    pub pairing: Pairing,
    /// The node's hostname from now on (the new one, else the current one).
    pub hostname: String,
    /// Where the node now is, as `on_pair` said.
    pub location: String,
}

/// "{hostname}: {location}", as the success page says it.
impl std::fmt::Display for PairOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.hostname, self.location)
    }
}

/// The wizard's state: the code, the node's facts, the rate limiter, and a
/// pairing once one succeeded.
pub struct Wizard {
    code: PairingCode,
    node: NodeFacts,
    limiter: RateLimiter,
    outcome: Option<PairOutcome>,
}

/// How a pairing attempt ended, whatever the request's format.
enum Attempt {
    Locked(Duration),
    NoCode,
    WrongCode,
    Invalid(FieldErrors),
    Failed(String),
    // Boxed: by far the largest, and made once per boot.
    Paired(Box<PairOutcome>),
}

/// The fields of the HTML form that can carry an error message of their
/// own; errors on other names are listed at the top of the page.
const FORM_FIELDS: &[&str] = &[
    "code",
    "hostname",
    "ssh_authorized_keys",
    "realm",
    "bootstrap_peers",
    "k3s_role",
    "k3s_server_url",
    "k3s_token",
];

impl Wizard {
    pub fn new(code: PairingCode, node: NodeFacts) -> Wizard {
        Wizard {
            code,
            node,
            limiter: RateLimiter::new(),
            outcome: None,
        }
    }

    /// The pairing that succeeded, once (then `None`).
    pub fn take_outcome(&mut self) -> Option<PairOutcome> {
        self.outcome.take()
    }

    /// Answers one request: `method` and `target` (path and query) as sent,
    /// the `Content-Type` header, the body (more than [`MAX_BODY`] bytes is
    /// refused), the time now (for the rate limiter), and `on_pair`, called
    /// with a valid pairing to apply it. After a 200 from a pairing,
    /// [`Wizard::take_outcome`] holds it.
    pub fn handle(
        &mut self,
        method: &str,
        target: &str,
        content_type: Option<&str>,
        body: &[u8],
        now: Instant,
        on_pair: &mut dyn FnMut(&Pairing) -> anyhow::Result<String>,
    ) -> Response {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        match (path, method) {
            ("/", "GET") => {
                let prefill = PairRequest {
                    code: form::parse_form(query).code,
                    ..PairRequest::default()
                };
                Response::html(200, self.form_page(&prefill, &FieldErrors::new(), None))
            }
            ("/", "POST") => self.form_post(content_type, body, now, on_pair),
            ("/", _) => not_allowed("GET, POST"),
            ("/api/v1/pair", "POST") => self.api_pair(content_type, body, now, on_pair),
            ("/api/v1/pair", _) => not_allowed("POST"),
            ("/api/v1/info", "GET") => {
                Response::json(200, &serde_json::to_value(&self.node).unwrap_or_default())
            }
            ("/api/v1/info", _) => not_allowed("GET"),
            _ => Response::new(404, "text/plain; charset=utf-8", "not found\n".into()),
        }
    }

    /// The code first, then the fields, then `on_pair`.
    fn attempt(
        &mut self,
        req: &PairRequest,
        now: Instant,
        on_pair: &mut dyn FnMut(&Pairing) -> anyhow::Result<String>,
    ) -> Attempt {
        if let Err(left) = self.limiter.check(now) {
            return Attempt::Locked(left);
        }
        // An empty code is a slip, not a guess: it does not count.
        if req.code.trim().is_empty() {
            return Attempt::NoCode;
        }
        if !self.code.matches(&req.code) {
            self.limiter.wrong_code(now);
            // The attempt that starts a refusal period says so at once.
            return match self.limiter.check(now) {
                Err(left) => Attempt::Locked(left),
                Ok(()) => Attempt::WrongCode,
            };
        }
        self.limiter.right_code();
        let pairing = match form::validate(req) {
            Ok(p) => p,
            Err(e) => return Attempt::Invalid(e),
        };
        match on_pair(&pairing) {
            Ok(location) => {
                let hostname = pairing
                    .hostname
                    .clone()
                    .unwrap_or_else(|| self.node.hostname.clone());
                Attempt::Paired(Box::new(PairOutcome {
                    pairing,
                    hostname,
                    location,
                }))
            }
            Err(e) => Attempt::Failed(format!("{e:#}")),
        }
    }

    fn api_pair(
        &mut self,
        content_type: Option<&str>,
        body: &[u8],
        now: Instant,
        on_pair: &mut dyn FnMut(&Pairing) -> anyhow::Result<String>,
    ) -> Response {
        let refuse = |status: u16, field: &str, msg: String| {
            Response::json(
                status,
                &serde_json::json!({ "ok": false, "errors": { field: msg } }),
            )
        };
        if body.len() > MAX_BODY {
            return refuse(413, "request", "the request is larger than 64 KiB".into());
        }
        if media_type(content_type) != "application/json" {
            return refuse(
                415,
                "request",
                "send the request as application/json".into(),
            );
        }
        if let Err(left) = self.limiter.check(now) {
            return locked_json(left);
        }
        let req: PairRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return refuse(400, "request", format!("not a pairing request: {e}")),
        };
        match self.attempt(&req, now, on_pair) {
            Attempt::Locked(left) => locked_json(left),
            Attempt::NoCode => refuse(400, "code", no_code().into()),
            Attempt::WrongCode => refuse(403, "code", "wrong pairing code".into()),
            Attempt::Invalid(errors) => {
                Response::json(400, &serde_json::json!({ "ok": false, "errors": errors }))
            }
            Attempt::Failed(e) => refuse(500, "pairing", failed(&e)),
            Attempt::Paired(outcome) => {
                let r = Response::json(
                    200,
                    &serde_json::json!({
                        "ok": true,
                        "hostname": outcome.hostname,
                        "location": outcome.location,
                    }),
                );
                self.outcome = Some(*outcome);
                r
            }
        }
    }

    fn form_post(
        &mut self,
        content_type: Option<&str>,
        body: &[u8],
        now: Instant,
        on_pair: &mut dyn FnMut(&Pairing) -> anyhow::Result<String>,
    ) -> Response {
        if body.len() > MAX_BODY {
            return Response::html(413, message_page("The form is larger than 64 KiB."));
        }
        if media_type(content_type) != "application/x-www-form-urlencoded" {
            return Response::html(
                415,
                message_page("Send the form as application/x-www-form-urlencoded."),
            );
        }
        let req = form::parse_form(&String::from_utf8_lossy(body));
        let one = |field: &str, msg: String| FieldErrors::from([(field.to_string(), msg)]);
        match self.attempt(&req, now, on_pair) {
            Attempt::Locked(left) => {
                let page = self.form_page(&req, &one("code", locked_message(left)), None);
                Response::html(429, page).with_header("Retry-After", retry_after(left))
            }
            Attempt::NoCode => Response::html(
                400,
                self.form_page(&req, &one("code", no_code().into()), None),
            ),
            Attempt::WrongCode => {
                let msg = "wrong pairing code: copy it from the node's console".to_string();
                Response::html(403, self.form_page(&req, &one("code", msg), None))
            }
            Attempt::Invalid(errors) => Response::html(400, self.form_page(&req, &errors, None)),
            Attempt::Failed(e) => Response::html(
                500,
                self.form_page(&req, &FieldErrors::new(), Some(&failed(&e))),
            ),
            Attempt::Paired(outcome) => {
                let page = paired_page(&outcome);
                self.outcome = Some(*outcome);
                Response::html(200, page)
            }
        }
    }

    /// The form, filled with `req`, each error next to its field, `banner`
    /// (a failure of the pairing itself) on top.
    fn form_page(&self, req: &PairRequest, errors: &FieldErrors, banner: Option<&str>) -> String {
        let n = &self.node;
        let addresses = if n.addresses.is_empty() {
            "none yet".to_string()
        } else {
            n.addresses
                .iter()
                .map(|a| esc(a))
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let mut h = head("MaculaOS — pair this node");
        let _ = write!(
            h,
            "<h1>Pair this node</h1>\n<dl>\
             <dt>Node</dt><dd>{}</dd><dt>Hostname</dt><dd>{}</dd>\
             <dt>Version</dt><dd>{}</dd><dt>Hardware</dt><dd>{}</dd>\
             <dt>Addresses</dt><dd>{}</dd></dl>\n",
            esc(&n.id),
            esc(&n.hostname),
            esc(&n.version),
            esc(&n.hardware),
            addresses
        );
        if let Some(b) = banner {
            let _ = writeln!(h, "<div class=\"errors\"><p>{}</p></div>", esc(b));
        }
        if !errors.is_empty() {
            let _ = write!(
                h,
                "<div class=\"errors\"><p>Nothing was changed: fix what is marked below.</p>"
            );
            let others: Vec<_> = errors
                .iter()
                .filter(|(k, _)| !FORM_FIELDS.contains(&k.as_str()))
                .collect();
            if !others.is_empty() {
                h.push_str("<ul>");
                for (k, v) in others {
                    let _ = write!(h, "<li><b>{}</b>: {}</li>", esc(k), esc(v));
                }
                h.push_str("</ul>");
            }
            h.push_str("</div>\n");
        }
        let err = |field: &str| match errors.get(field) {
            Some(m) => format!("<p class=\"error\" id=\"{field}-error\">{}</p>", esc(m)),
            None => String::new(),
        };
        let opt = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
        let checked = |on: bool| if on { " checked" } else { "" };
        let role = req
            .k3s_role
            .as_deref()
            .unwrap_or("none")
            .trim()
            .to_ascii_lowercase();
        let selected = |r: &str| if role == r { " selected" } else { "" };
        let _ = write!(
            h,
            r#"<form method="post" action="/">
<label for="code">Pairing code</label>
<p class="hint">Shown on the node's console: two groups of five letters and digits.</p>
<input type="text" id="code" name="code" value="{code}" autocomplete="off" autocapitalize="characters" spellcheck="false" required>
{code_err}
<label for="hostname">Hostname</label>
<p class="hint">Letters, digits and '-'; empty keeps {current}.</p>
<input type="text" id="hostname" name="hostname" value="{hostname}" autocapitalize="none" spellcheck="false">
{hostname_err}
<label for="ssh_key">SSH public keys</label>
<p class="hint">One a line, such as the line of ~/.ssh/id_ed25519.pub. The node has no password login.</p>
<textarea id="ssh_key" name="ssh_key" rows="4" spellcheck="false">{keys}</textarea>
{keys_err}
<fieldset><legend>Mesh roles</legend>
<label class="check"><input type="checkbox" checked disabled> peer (always on)</label>
<label class="check"><input type="checkbox" name="bootstrap" value="on"{bootstrap}> bootstrap: an entry point for new nodes</label>
<label class="check"><input type="checkbox" name="gateway" value="on"{gateway}> gateway: relays for peers behind NAT</label>
<label for="realm">Realm</label>
<p class="hint">Reverse domain notation, such as io.macula.</p>
<input type="text" id="realm" name="realm" value="{realm}" autocapitalize="none" spellcheck="false">
{realm_err}
<label for="bootstrap_peers">Bootstrap peers</label>
<p class="hint">host:port, quic://host:port or https://host:port; one a line or separated by commas.</p>
<textarea id="bootstrap_peers" name="bootstrap_peers" rows="3" spellcheck="false">{peers}</textarea>
{peers_err}
</fieldset>
<fieldset><legend>k3s</legend>
<label for="k3s_role">Role</label>
<select id="k3s_role" name="k3s_role">
<option value="none"{sel_none}>none</option>
<option value="server"{sel_server}>server</option>
<option value="agent"{sel_agent}>agent</option>
</select>
{role_err}
<label for="k3s_server_url">Server URL</label>
<p class="hint">For an agent: https://host:6443.</p>
<input type="text" id="k3s_server_url" name="k3s_server_url" value="{url}" autocapitalize="none" spellcheck="false">
{url_err}
<label for="k3s_token">Join token</label>
<p class="hint">For an agent: the server's /var/lib/rancher/k3s/server/node-token.</p>
<input type="password" id="k3s_token" name="k3s_token" value="{token}" autocomplete="off">
{token_err}
</fieldset>
<button type="submit">Pair</button>
</form>
"#,
            code = esc(&req.code),
            code_err = err("code"),
            current = esc(&n.hostname),
            hostname = opt(&req.hostname),
            hostname_err = err("hostname"),
            keys = esc(&req.ssh_authorized_keys.join("\n")),
            keys_err = err("ssh_authorized_keys"),
            bootstrap = checked(req.mesh_roles.bootstrap),
            gateway = checked(req.mesh_roles.gateway),
            realm = opt(&req.realm),
            realm_err = err("realm"),
            peers = esc(&req.bootstrap_peers.join("\n")),
            peers_err = err("bootstrap_peers"),
            sel_none = selected("none"),
            sel_server = selected("server"),
            sel_agent = selected("agent"),
            role_err = err("k3s_role"),
            url = opt(&req.k3s_server_url),
            url_err = err("k3s_server_url"),
            token = opt(&req.k3s_token),
            token_err = err("k3s_token"),
        );
        h.push_str(TAIL);
        h
    }
}

fn no_code() -> &'static str {
    "the pairing code is missing: it is shown on the node's console"
}

fn failed(e: &str) -> String {
    format!("the pairing could not be applied: {e}")
}

/// Whole seconds, rounded up: "try again in 0 s" would be a lie.
fn seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn retry_after(left: Duration) -> String {
    seconds(left).to_string()
}

fn locked_message(left: Duration) -> String {
    format!("too many wrong codes: try again in {} s", seconds(left))
}

fn locked_json(left: Duration) -> Response {
    Response::json(
        429,
        &serde_json::json!({ "ok": false, "errors": { "code": locked_message(left) } }),
    )
    .with_header("Retry-After", retry_after(left))
}

fn not_allowed(allow: &str) -> Response {
    Response::new(
        405,
        "text/plain; charset=utf-8",
        "method not allowed\n".into(),
    )
    .with_header("Allow", allow.into())
}

/// The media type of a `Content-Type` header, lowercase, without parameters.
fn media_type(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

use maculaos_web::escape as esc;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}\
main{max-width:40rem;margin:0 auto;padding:1rem 1.5rem}\
h1{font-size:1.4rem}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;background:#fff;padding:1rem;border-radius:6px}\
dt{font-weight:600}dd{margin:0;font-family:monospace;overflow-wrap:anywhere}\
label{display:block;font-weight:600;margin-top:1rem}\
label.check{font-weight:normal;margin-top:.4rem}\
input[type=text],input[type=password],textarea,select{width:100%;box-sizing:border-box;padding:.4rem;font:inherit}\
textarea{font-family:monospace}\
fieldset{margin-top:1.2rem;border:1px solid #ccd;border-radius:6px}\
.hint{color:#555;font-size:.9rem;margin:.2rem 0}\
.error{color:#b00020;font-weight:600;margin:.3rem 0}\
.errors{background:#fde8eb;padding:.2rem 1rem;border-radius:6px;margin-top:1rem}\
button{margin-top:1.5rem;padding:.6rem 2rem;font:inherit}";

/// The start of every page, up to inside `<main>`.
fn head(title: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head>\n<body><main>\n",
        esc(title)
    )
}

const TAIL: &str = "</main></body></html>\n";

fn message_page(text: &str) -> String {
    let mut h = head("MaculaOS — pair this node");
    let _ = write!(h, "<h1>Pair this node</h1>\n<p>{}</p>\n", esc(text));
    h.push_str(TAIL);
    h
}

fn paired_page(o: &PairOutcome) -> String {
    let place = if o.location.starts_with("http://") || o.location.starts_with("https://") {
        format!("<a href=\"{0}\">{0}</a>", esc(&o.location))
    } else {
        esc(&o.location)
    };
    let mut h = head("MaculaOS — paired");
    let _ = write!(
        h,
        "<h1>Paired.</h1>\n<p>This node is now {}: {}</p>\n",
        esc(&o.hostname),
        place
    );
    h.push_str(TAIL);
    h
}

/// How long a client may take to send a request body. The body is read
/// apart from the serving loop, so a client that stops half-way (a laptop
/// gone to sleep, a half-open connection) costs a thread, not the wizard.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the wizard on `listener` until a pairing succeeds, then returns
/// it (after its success response was sent). `on_pair` applies a valid
/// pairing and says where the node now is (`http://macula-new.local/`);
/// when it fails, the client gets a 500 with its message, and the wizard
/// goes on serving so the operator can try again.
pub fn serve(
    listener: TcpListener,
    wizard: Wizard,
    on_pair: impl FnMut(&Pairing) -> anyhow::Result<String>,
) -> anyhow::Result<PairOutcome> {
    serve_with(listener, wizard, on_pair, BODY_TIMEOUT)
}

fn serve_with(
    listener: TcpListener,
    mut wizard: Wizard,
    mut on_pair: impl FnMut(&Pairing) -> anyhow::Result<String>,
    body_timeout: Duration,
) -> anyhow::Result<PairOutcome> {
    let start = |l: TcpListener| {
        tiny_http::Server::from_listener(l, None)
            .map_err(|e| anyhow::anyhow!("cannot serve the pairing wizard: {e}"))
    };
    // Kept to start over: tiny_http's accept thread ends at the first
    // accept that fails (out of file descriptors, a connection aborted
    // before it was accepted), and the wizard must outlive that.
    let spare = listener
        .try_clone()
        .map_err(|e| anyhow::anyhow!("cannot serve the pairing wizard: {e}"))?;
    let mut server = start(listener)?;
    loop {
        let request = match server.recv() {
            Ok(r) => r,
            Err(_) => {
                // A pause, so a failure that lasts does not spin.
                std::thread::sleep(Duration::from_millis(200));
                let again = spare
                    .try_clone()
                    .map_err(|e| anyhow::anyhow!("cannot serve the pairing wizard: {e}"))?;
                server = start(again)?;
                continue;
            }
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut request = request;
            // One byte more than allowed is enough to know it is too much.
            let mut body = Vec::new();
            let read = request
                .as_reader()
                .take(MAX_BODY as u64 + 1)
                .read_to_end(&mut body)
                .map(|_| body);
            // Nobody listens any more when the client was too slow: its
            // request is dropped (tiny_http answers 500 if it still can).
            let _ = tx.send((request, read));
        });
        let Ok((request, body)) = rx.recv_timeout(body_timeout) else {
            continue;
        };
        let content_type = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Content-Type"))
            .map(|h| h.value.as_str().to_string());
        let response = match body {
            Ok(body) => wizard.handle(
                request.method().as_str(),
                request.url(),
                content_type.as_deref(),
                &body,
                Instant::now(),
                &mut on_pair,
            ),
            Err(e) => Response::new(
                400,
                "text/plain; charset=utf-8",
                format!("cannot read the request: {e}\n"),
            ),
        };
        // A client that left before its answer is its own problem.
        let _ = request.respond(to_wire(response));
        if let Some(outcome) = wizard.take_outcome() {
            return Ok(outcome);
        }
    }
}

fn to_wire(r: Response) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut out = tiny_http::Response::from_string(r.body).with_status_code(r.status);
    let headers = std::iter::once(("Content-Type", r.content_type))
        .chain(r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    for (k, v) in headers {
        // Our own names and values: always ASCII, so this never skips one.
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            out.add_header(h);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::form::tests::ED25519;
    use std::io::Write;

    const CODE: &str = "ABCDE-FGHJK";

    fn wizard() -> Wizard {
        Wizard::new(
            CODE.parse().unwrap(),
            NodeFacts {
                id: "0f3e9a77".into(),
                hostname: "macula-ab12".into(),
                version: "0.1.0".into(),
                hardware: "QEMU Standard PC (i440FX + PIIX, 1996)".into(),
                addresses: vec!["10.0.2.15".into(), "fe80::1".into()],
            },
        )
    }

    /// on_pair that records what it was given.
    struct Recorder(Vec<Pairing>);

    impl Recorder {
        fn call(&mut self) -> impl FnMut(&Pairing) -> anyhow::Result<String> + '_ {
            |p: &Pairing| {
                self.0.push(p.clone());
                Ok("http://macula-new.local/".into())
            }
        }
    }

    fn json(w: &mut Wizard, body: &str, now: Instant, rec: &mut Recorder) -> Response {
        w.handle(
            "POST",
            "/api/v1/pair",
            Some("application/json"),
            body.as_bytes(),
            now,
            &mut rec.call(),
        )
    }

    fn post_form(w: &mut Wizard, body: &str, now: Instant, rec: &mut Recorder) -> Response {
        w.handle(
            "POST",
            "/",
            Some("application/x-www-form-urlencoded"),
            body.as_bytes(),
            now,
            &mut rec.call(),
        )
    }

    fn body_json(r: &Response) -> serde_json::Value {
        serde_json::from_str(&r.body).unwrap()
    }

    fn good_json(code: &str) -> String {
        serde_json::json!({
            "code": code,
            "hostname": "macula-new",
            "ssh_authorized_keys": [ED25519],
        })
        .to_string()
    }

    fn urlencode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                    char::from(b).to_string()
                }
                b' ' => "+".into(),
                b => format!("%{b:02X}"),
            })
            .collect()
    }

    #[test]
    fn get_shows_the_facts_and_the_form_without_the_code() {
        let mut w = wizard();
        let mut rec = Recorder(vec![]);
        let r = w.handle("GET", "/", None, b"", Instant::now(), &mut rec.call());
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type, "text/html; charset=utf-8");
        assert!(r.header("Content-Security-Policy").is_some());
        let b = &r.body;
        assert!(b.contains("<title>MaculaOS — pair this node</title>"));
        for fact in [
            "0f3e9a77",
            "macula-ab12",
            "0.1.0",
            "QEMU Standard PC (i440FX + PIIX, 1996)",
            "10.0.2.15<br>fe80::1",
        ] {
            assert!(b.contains(fact), "{fact}");
        }
        for name in [
            "code",
            "hostname",
            "ssh_key",
            "bootstrap",
            "gateway",
            "realm",
            "bootstrap_peers",
            "k3s_role",
            "k3s_server_url",
            "k3s_token",
        ] {
            assert!(b.contains(&format!("name=\"{name}\"")), "{name}");
        }
        assert!(b.contains("<form method=\"post\" action=\"/\">"));
        assert!(!b.contains("ABCDE") && !b.contains("<script"));
        // The QR code's URL fills in the code.
        let r = w.handle(
            "GET",
            "/?code=abcde-fghjk",
            None,
            b"",
            Instant::now(),
            &mut rec.call(),
        );
        assert!(r.body.contains("value=\"abcde-fghjk\""));
        let r = w.handle(
            "GET",
            "/?code=%22%3E%3Cscript%3E",
            None,
            b"",
            Instant::now(),
            &mut rec.call(),
        );
        assert!(r.body.contains("value=\"&quot;&gt;&lt;script&gt;\""));
        assert!(rec.0.is_empty());
    }

    #[test]
    fn info_is_the_facts_without_the_code() {
        let mut w = wizard();
        let mut rec = Recorder(vec![]);
        let r = w.handle(
            "GET",
            "/api/v1/info",
            None,
            b"",
            Instant::now(),
            &mut rec.call(),
        );
        assert_eq!((r.status, r.content_type), (200, "application/json"));
        let v = body_json(&r);
        assert_eq!(v["hostname"], "macula-ab12");
        assert_eq!(v["hardware"], "QEMU Standard PC (i440FX + PIIX, 1996)");
        assert_eq!(v["addresses"][1], "fe80::1");
        assert!(!r.body.contains("ABCDE"));
    }

    #[test]
    fn unknown_paths_and_wrong_methods() {
        let mut w = wizard();
        let mut rec = Recorder(vec![]);
        let now = Instant::now();
        let mut h = |m: &str, t: &str| w.handle(m, t, None, b"", now, &mut rec.call());
        assert_eq!(h("GET", "/nope").status, 404);
        assert_eq!(h("GET", "/api/v1/pair/").status, 404);
        let r = h("GET", "/api/v1/pair");
        assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));
        let r = h("PUT", "/");
        assert_eq!((r.status, r.header("Allow")), (405, Some("GET, POST")));
        assert_eq!(h("POST", "/api/v1/info").status, 405);
        assert_eq!(h("DELETE", "/api/v1/info?x").status, 405);
    }

    #[test]
    fn api_pairs_with_the_right_code() {
        let mut w = wizard();
        let mut rec = Recorder(vec![]);
        let r = json(&mut w, &good_json("abcde fghjk"), Instant::now(), &mut rec);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            body_json(&r),
            serde_json::json!({"ok": true, "hostname": "macula-new", "location": "http://macula-new.local/"})
        );
        assert_eq!(rec.0.len(), 1);
        assert_eq!(rec.0[0].hostname.as_deref(), Some("macula-new"));
        let o = w.take_outcome().unwrap();
        assert_eq!(
            (o.hostname.as_str(), o.location.as_str()),
            ("macula-new", "http://macula-new.local/")
        );
        assert!(w.take_outcome().is_none());
    }

    #[test]
    fn api_refusals() {
        let mut w = wizard();
        let mut rec = Recorder(vec![]);
        let now = Instant::now();
        // Wrong code: nothing else looked at, even invalid fields.
        let r = json(
            &mut w,
            r#"{"code":"ZZZZZ-ZZZZZ","hostname":"<bad>"}"#,
            now,
            &mut rec,
        );
        assert_eq!(r.status, 403);
        assert_eq!(
            body_json(&r),
            serde_json::json!({"ok": false, "errors": {"code": "wrong pairing code"}})
        );
        // Right code, invalid fields: all of them.
        let r = json(
            &mut w,
            &format!(r#"{{"code":"{CODE}","hostname":"-x","realm":"x"}}"#),
            now,
            &mut rec,
        );
        assert_eq!(r.status, 400);
        let v = body_json(&r);
        assert_eq!(v["ok"], false);
        let fields: Vec<&String> = v["errors"].as_object().unwrap().keys().collect();
        assert_eq!(fields, ["hostname", "realm", "ssh_authorized_keys"]);
        // No code.
        let r = json(&mut w, r#"{"hostname":"x"}"#, now, &mut rec);
        assert_eq!(r.status, 400);
        assert!(body_json(&r)["errors"]["code"]
            .as_str()
            .unwrap()
            .contains("missing"));
        // Not JSON, not a request, too large.
        let r = w.handle(
            "POST",
            "/api/v1/pair",
            Some("text/plain"),
            b"{}",
            now,
            &mut rec.call(),
        );
        assert_eq!(r.status, 415);
        let r = w.handle("POST", "/api/v1/pair", None, b"{}", now, &mut rec.call());
        assert_eq!(r.status, 415);
        let r = w.handle(
            "POST",
            "/api/v1/pair",
            Some("Application/JSON; charset=utf-8"),
            b"[1]",
            now,
            &mut rec.call(),
        );
        assert_eq!(r.status, 400);
        assert!(body_json(&r)["errors"]["request"]
            .as_str()
            .unwrap()
            .starts_with("not a pairing request"));
        let r = json(&mut w, r#"{"code":"x","hostnme":"a"}"#, now, &mut rec);
        assert!(r.body.contains("unknown field `hostnme`"), "{}", r.body);
        let big = format!(
            r#"{{"code":"{CODE}","hostname":"{}"}}"#,
            "a".repeat(MAX_BODY)
        );
        assert_eq!(json(&mut w, &big, now, &mut rec).status, 413);
        assert!(rec.0.is_empty());
        assert!(w.take_outcome().is_none());
    }

    #[test]
    fn wrong_codes_are_rate_limited_and_a_right_code_resets() {
        let mut w = wizard();
        let mut rec = Recorder(vec![]);
        let t0 = Instant::now();
        for _ in 0..4 {
            assert_eq!(
                json(&mut w, &good_json("ZZZZZ-ZZZZZ"), t0, &mut rec).status,
                403
            );
        }
        // The fifth wrong code starts a 30 s refusal.
        let r = json(&mut w, &good_json("ZZZZZ-ZZZZZ"), t0, &mut rec);
        assert_eq!(r.status, 429);
        assert_eq!(r.header("Retry-After"), Some("30"));
        assert_eq!(
            body_json(&r)["errors"]["code"],
            "too many wrong codes: try again in 30 s"
        );
        // Even the right code is refused meanwhile, and not looked at.
        let t = t0 + Duration::from_millis(10_500);
        let r = json(&mut w, &good_json(CODE), t, &mut rec);
        assert_eq!((r.status, r.header("Retry-After")), (429, Some("20")));
        assert!(rec.0.is_empty());
        // After it, a wrong code doubles the refusal.
        let t = t0 + Duration::from_secs(30);
        let r = json(&mut w, &good_json("ZZZZZ-ZZZZZ"), t, &mut rec);
        assert_eq!((r.status, r.header("Retry-After")), (429, Some("60")));
        // After that, the right code works and resets the count.
        let t = t + Duration::from_secs(60);
        let r = json(
            &mut w,
            &serde_json::json!({"code": CODE}).to_string(),
            t,
            &mut rec,
        );
        assert_eq!(r.status, 400, "right code, invalid fields: {}", r.body);
        for _ in 0..4 {
            assert_eq!(
                json(&mut w, &good_json("ZZZZZ-ZZZZZ"), t, &mut rec).status,
                403
            );
        }
        assert_eq!(json(&mut w, &good_json(CODE), t, &mut rec).status, 200);
        assert_eq!(rec.0.len(), 1);
    }

    #[test]
    fn backoff_doubles_up_to_fifteen_minutes() {
        let mut l = RateLimiter::new();
        let t = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..12 {
            l.wrong_code(t);
            seen.push(l.check(t).err().map_or(0, |d| d.as_secs()));
        }
        assert_eq!(seen, [0, 0, 0, 0, 30, 60, 120, 240, 480, 900, 900, 900]);
        l.right_code();
        assert_eq!(l.check(t), Ok(()));
        assert_eq!(seconds(Duration::from_millis(1)), 1);
    }

    #[test]
    fn the_form_pairs_and_says_where_the_node_is() {
        let mut w = wizard();
        let mut rec = Recorder(vec![]);
        let body = format!(
            "code={CODE}&hostname=Macula-New&ssh_key={}&bootstrap=on&k3s_role=none",
            urlencode(ED25519)
        );
        let r = post_form(&mut w, &body, Instant::now(), &mut rec);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains(
            "This node is now macula-new: <a href=\"http://macula-new.local/\">http://macula-new.local/</a>"
        ));
        assert!(rec.0[0].bootstrap && !rec.0[0].gateway);
        assert!(w.take_outcome().is_some());
    }

    #[test]
    fn a_wrong_code_in_the_form_calls_nothing_and_keeps_the_values() {
        let mut w = wizard();
        let mut rec = Recorder(vec![]);
        let body = format!(
            "code=ZZZZZ-ZZZZZ&hostname=bad_name&ssh_key={}&gateway=on",
            urlencode(ED25519)
        );
        let r = post_form(&mut w, &body, Instant::now(), &mut rec);
        assert_eq!(r.status, 403);
        assert!(r.body.contains("wrong pairing code"));
        assert!(r.body.contains("value=\"bad_name\""));
        // The hostname was not checked: no message about it.
        assert!(!r.body.contains("hostname-error"));
        assert!(r.body.contains("name=\"gateway\" value=\"on\" checked"));
        assert!(rec.0.is_empty());
        assert!(w.take_outcome().is_none());
    }

    #[test]
    fn invalid_fields_in_the_form_call_nothing_and_are_escaped() {
        let mut w = wizard();
        let mut rec = Recorder(vec![]);
        let body = format!(
            "code={CODE}&hostname={}&ssh_key={}&realm={}&k3s_role=agent&k3s_token=t",
            urlencode("<script>alert(1)</script>"),
            urlencode("<img src=x onerror=alert(1)>"),
            urlencode("\"><b>x"),
        );
        let r = post_form(&mut w, &body, Instant::now(), &mut rec);
        assert_eq!(r.status, 400);
        assert!(rec.0.is_empty());
        let b = &r.body;
        assert!(
            !b.contains("<script>") && !b.contains("<img") && !b.contains("\"><b>"),
            "{b}"
        );
        assert!(b.contains("value=\"&lt;script&gt;alert(1)&lt;/script&gt;\""));
        assert!(b.contains("&lt;img src=x onerror=alert(1)&gt;</textarea>"));
        assert!(b.contains("value=\"&quot;&gt;&lt;b&gt;x\""));
        // A message next to each invalid field, the message escaped too.
        assert!(b.contains("<p class=\"error\" id=\"hostname-error\">`&lt;script&gt;alert(1)&lt;/script&gt;` is not a valid hostname"));
        for f in ["ssh_authorized_keys", "realm", "k3s_server_url"] {
            assert!(b.contains(&format!("id=\"{f}-error\"")), "{f}");
        }
        assert!(!b.contains("id=\"k3s_token-error\""));
        assert!(b.contains("<option value=\"agent\" selected>"));
        assert!(b.contains("value=\"t\""));
    }

    #[test]
    fn form_rate_limit_and_content_type() {
        let mut w = wizard();
        let mut rec = Recorder(vec![]);
        let now = Instant::now();
        for _ in 0..4 {
            assert_eq!(
                post_form(&mut w, "code=22222-22222", now, &mut rec).status,
                403
            );
        }
        let r = post_form(&mut w, "code=22222-22222", now, &mut rec);
        assert_eq!((r.status, r.header("Retry-After")), (429, Some("30")));
        assert!(r.body.contains("too many wrong codes: try again in 30 s"));
        assert_eq!(post_form(&mut w, "code=", now, &mut rec).status, 429);
        let r = w.handle(
            "POST",
            "/",
            Some("multipart/form-data; boundary=x"),
            b"",
            now,
            &mut rec.call(),
        );
        assert_eq!(r.status, 415);
        let big = vec![b'a'; MAX_BODY + 1];
        let r = w.handle(
            "POST",
            "/",
            Some("application/x-www-form-urlencoded"),
            &big,
            now,
            &mut rec.call(),
        );
        assert_eq!(r.status, 413);
        let later = now + Duration::from_secs(31);
        let r = post_form(&mut w, "code=", later, &mut rec);
        assert_eq!(r.status, 400);
        assert!(r.body.contains("the pairing code is missing"));
    }

    #[test]
    fn a_failing_on_pair_is_a_500_and_the_wizard_goes_on() {
        let mut w = wizard();
        let now = Instant::now();
        let mut fail =
            |_: &Pairing| -> anyhow::Result<String> { Err(anyhow::anyhow!("disk full <oops>")) };
        let r = w.handle(
            "POST",
            "/api/v1/pair",
            Some("application/json"),
            good_json(CODE).as_bytes(),
            now,
            &mut fail,
        );
        assert_eq!(r.status, 500);
        assert_eq!(
            body_json(&r)["errors"]["pairing"],
            "the pairing could not be applied: disk full <oops>"
        );
        assert!(w.take_outcome().is_none());
        let body = format!("code={CODE}&ssh_key={}", urlencode(ED25519));
        let r = w.handle(
            "POST",
            "/",
            Some("application/x-www-form-urlencoded"),
            body.as_bytes(),
            now,
            &mut fail,
        );
        assert_eq!(r.status, 500);
        assert!(r.body.contains("disk full &lt;oops&gt;"));
        let mut rec = Recorder(vec![]);
        assert_eq!(json(&mut w, &good_json(CODE), now, &mut rec).status, 200);
    }

    /// Sends `request` and reads the whole answer.
    fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_client_that_stalls_its_body_does_not_stop_the_wizard() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            serve_with(
                listener,
                wizard(),
                |_| Ok("there".into()),
                Duration::from_millis(300),
            )
        });
        // Promises 5000 bytes, sends none, stays connected. (tiny_http
        // itself waits for bodies of up to 1 KiB before handing the request
        // over; a larger one is read by the wizard.) `Expect: 100-continue`
        // makes tiny_http answer `100 Continue` when the wizard starts
        // reading the body: then the stalled request is the one the wizard
        // waits for, and the next one is queued behind it.
        let mut stalled = std::net::TcpStream::connect(addr).unwrap();
        stalled
            .write_all(b"POST /api/v1/pair HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        stalled
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut interim = Vec::new();
        let mut byte = [0u8; 1];
        while !interim.ends_with(b"\r\n\r\n") {
            stalled.read_exact(&mut byte).unwrap();
            interim.push(byte[0]);
        }
        let interim = String::from_utf8_lossy(&interim);
        assert!(interim.starts_with("HTTP/1.1 100 "), "{interim}");
        let body = good_json(CODE);
        let r = exchange(
            addr,
            &format!(
                "POST /api/v1/pair HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        // Answered although the stalled one came first and never finished.
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert_eq!(server.join().unwrap().unwrap().location, "there");
        drop(stalled);
    }

    #[test]
    fn serve_answers_on_a_socket_until_paired() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut calls = 0;
            let out = serve(listener, wizard(), |p| {
                calls += 1;
                Ok(format!(
                    "http://{}.local/",
                    p.hostname.clone().unwrap_or_default()
                ))
            });
            (out, calls)
        });
        let info = exchange(
            addr,
            "GET /api/v1/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(info.starts_with("HTTP/1.1 200"), "{info}");
        assert!(info.contains("Content-Type: application/json"), "{info}");
        assert!(info.contains("\"hostname\":\"macula-ab12\""), "{info}");
        let wrong = good_json("ZZZZZ-ZZZZZ");
        let r = exchange(
            addr,
            &format!(
                "POST /api/v1/pair HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{wrong}",
                wrong.len()
            ),
        );
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        let body = good_json(CODE);
        let r = exchange(
            addr,
            &format!(
                "POST /api/v1/pair HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(
            r.contains("\"location\":\"http://macula-new.local/\""),
            "{r}"
        );
        let (out, calls) = server.join().unwrap();
        let out = out.unwrap();
        assert_eq!(calls, 1);
        assert_eq!(out.hostname, "macula-new");
        assert_eq!(out.location, "http://macula-new.local/");
        assert_eq!(out.to_string(), "macula-new: http://macula-new.local/");
    }
}
