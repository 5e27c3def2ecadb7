//! The FleetLock protocol (Zincati's reboot coordination over HTTP) on
//! the node's loopback, over the realm's reboot slots ([`crate::slots`]):
//! `POST /v1/pre-reboot` takes a slot of the client's group for its id,
//! `POST /v1/steady-state` gives it back, both with the header
//! `fleet-lock-protocol: true` and the body
//! `{"client_params": {"id": "…", "group": "…"}}`. A group's slots are
//! the realm's, so every node's clients share them; a rollout's slots are
//! the group named by the rollout's id.
//!
//! Served by the health agent on [`LISTEN`] only: whoever can reach it can
//! take the realm's slots, so it is for the node's own processes (an
//! updater in a container with host networking, a script), never the LAN.

use crate::slots::{self, InBucket, Taken};
use serde::Deserialize;

/// Where the agent serves it: loopback only.
pub const LISTEN: &str = "127.0.0.1:9095";
/// The largest request body read (the protocol's is a few dozen bytes).
const MAX_BODY: u64 = 4096;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `pre-reboot`: take a slot of `group` for `id`.
    Lock { group: String, id: String },
    /// `steady-state`: give `id`'s slot of `group` back.
    Unlock { group: String, id: String },
}

/// An answer that is not a success: the status code and the protocol's
/// error body (`kind`, `value`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub kind: &'static str,
    pub value: String,
}

impl Refusal {
    fn new(status: u16, kind: &'static str, value: impl Into<String>) -> Refusal {
        Refusal {
            status,
            kind,
            value: value.into(),
        }
    }

    pub fn body(&self) -> String {
        serde_json::json!({"kind": self.kind, "value": self.value}).to_string()
    }
}

#[derive(Deserialize)]
struct Body {
    client_params: Params,
}

#[derive(Deserialize)]
struct Params {
    id: String,
    #[serde(default)]
    group: Option<String>,
}

/// A group or id as a key of the realm's bucket may hold it.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// The operation a request asks for: `method` and `path` as sent, whether
/// the protocol's header said `true`, and the body.
pub fn parse(method: &str, path: &str, header: Option<&str>, body: &[u8]) -> Result<Op, Refusal> {
    let lock = match path.split('?').next().unwrap_or_default() {
        "/v1/pre-reboot" => true,
        "/v1/steady-state" => false,
        other => {
            return Err(Refusal::new(
                404,
                "not_found",
                format!("{other}: this server answers POST /v1/pre-reboot and /v1/steady-state"),
            ))
        }
    };
    if method != "POST" {
        return Err(Refusal::new(405, "method_not_allowed", "use POST"));
    }
    if !header.is_some_and(|h| h.trim().eq_ignore_ascii_case("true")) {
        return Err(Refusal::new(
            400,
            "missing_header",
            "FleetLock requests carry the header `fleet-lock-protocol: true`",
        ));
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            400,
            "bad_body",
            format!("the body is not {{\"client_params\": {{\"id\": …, \"group\": …}}}}: {e}"),
        )
    })?;
    let group = b
        .client_params
        .group
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| slots::DEFAULT_GROUP.to_string());
    let id = b.client_params.id;
    for (what, v) in [("group", &group), ("id", &id)] {
        if !valid_name(v) {
            return Err(Refusal::new(
                400,
                "bad_body",
                format!(
                    "client_params.{what} {v:?}: letters, digits, '-' and '_' only, at most 128"
                ),
            ));
        }
    }
    Ok(if lock {
        Op::Lock { group, id }
    } else {
        Op::Unlock { group, id }
    })
}

/// Carry out `op` on the realm's slots; `max`: how many slots a group has
/// (asked only for a lock).
pub fn carry_out(
    client: &maculaos_mesh::client::Client,
    realm: &str,
    op: &Op,
    max: impl FnOnce() -> u32,
) -> Result<(), Refusal> {
    let (Op::Lock { group, .. } | Op::Unlock { group, .. }) = op;
    let store = InBucket {
        client,
        realm,
        bucket: crate::rollout::BUCKET,
        key: slots::key(group),
    };
    let unavailable = |e: String| Refusal::new(503, "unavailable", crate::explain(&e));
    match op {
        Op::Lock { id, .. } => {
            client
                // At least two copies: a realm's JetStream has two
                // bootstrap nodes or none, and a peer sees no route to
                // count them (growing a bucket's copies later is what
                // left a stream without a leader in nats-server 2.9).
                .kv_ensure(
                    realm,
                    crate::rollout::BUCKET,
                    crate::replicas(crate::jetstream_servers()).max(2),
                )
                .map_err(|e| unavailable(e.to_string()))?;
            let max = max();
            match slots::acquire(&store, id, max).map_err(unavailable)? {
                Taken::Yes => Ok(()),
                Taken::Full(holders) => Err(Refusal::new(
                    409,
                    "failed_lock",
                    format!(
                        "all {max} reboot slot(s) of group {group} are held: {}",
                        holders.join(", ")
                    ),
                )),
            }
        }
        Op::Unlock { id, .. } => match slots::release(&store, id) {
            Ok(()) => Ok(()),
            // No bucket: nobody ever held a slot, so neither does `id`.
            Err(e) if e.contains("no bucket") => Ok(()),
            Err(e) => Err(unavailable(e)),
        },
    }
}

/// Serve FleetLock on [`LISTEN`] (a thread of the agent), while the node
/// is in a realm; a group has `fleet.update.max_unavailable` of the
/// realm's nodes as slots, read from the configuration at each lock.
pub fn spawn(paths: maculaos_config::Paths) -> std::io::Result<std::thread::JoinHandle<()>> {
    let server = tiny_http::Server::http(LISTEN)
        .map_err(|e| std::io::Error::other(format!("listening on {LISTEN}: {e}")))?;
    std::thread::Builder::new()
        .name("fleetlock".into())
        .spawn(move || {
            for mut request in server.incoming_requests() {
                let header = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("fleet-lock-protocol"))
                    .map(|h| h.value.as_str().to_string());
                let mut body = Vec::new();
                let read = std::io::Read::read_to_end(
                    &mut std::io::Read::take(request.as_reader(), MAX_BODY),
                    &mut body,
                );
                let outcome = read
                    .map_err(|e| Refusal::new(400, "bad_body", e.to_string()))
                    .and_then(|_| {
                        parse(
                            request.method().as_str(),
                            request.url(),
                            header.as_deref(),
                            &body,
                        )
                    })
                    .and_then(|op| answer(&paths, &op).map(|()| op));
                let (status, text) = match &outcome {
                    Ok(op) => {
                        println!("event: fleetlock: {op:?}: done");
                        (200, "{}".to_string())
                    }
                    Err(r) => (r.status, r.body()),
                };
                let json = tiny_http::Header::from_bytes("Content-Type", "application/json")
                    .expect("a valid header");
                let _ = request.respond(
                    tiny_http::Response::from_string(text)
                        .with_status_code(status)
                        .with_header(json),
                );
            }
        })
}

fn answer(paths: &maculaos_config::Paths, op: &Op) -> Result<(), Refusal> {
    let me = crate::InRealm::of_node(&paths.root).ok_or_else(|| {
        Refusal::new(
            503,
            "unavailable",
            "this node is in no realm: there are no reboot slots to share",
        )
    })?;
    let client =
        maculaos_mesh::client::Client::connect(&me.url, "maculaos-fleetlock", crate::TIMEOUT)
            .map_err(|e| Refusal::new(503, "unavailable", e.to_string()))?;
    carry_out(&client, &me.realm, op, || {
        let fleet_size = crate::list(&client, &me.realm, 0)
            .map(|f| f.members.len())
            .unwrap_or(1);
        maculaos_config::load(paths)
            .config
            .maculaos
            .fleet
            .update
            .max_unavailable
            .of(fleet_size)
            .max(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"client_params": {"id": "c0ffee", "group": "workers"}}"#;

    #[test]
    fn lock_and_unlock_as_zincati_sends_them() {
        assert_eq!(
            parse("POST", "/v1/pre-reboot", Some("true"), BODY),
            Ok(Op::Lock {
                group: "workers".into(),
                id: "c0ffee".into()
            })
        );
        assert_eq!(
            parse(
                "POST",
                "/v1/steady-state",
                Some("true"),
                br#"{"client_params": {"id": "c0ffee"}}"#
            ),
            Ok(Op::Unlock {
                group: "default".into(),
                id: "c0ffee".into()
            })
        );
    }

    #[test]
    fn refusals_say_what_was_wrong() {
        let r = parse("POST", "/v1/pre-reboot", None, BODY).unwrap_err();
        assert_eq!((r.status, r.kind), (400, "missing_header"));
        let r = parse("GET", "/v1/pre-reboot", Some("true"), BODY).unwrap_err();
        assert_eq!(r.status, 405);
        let r = parse("POST", "/v2/lock", Some("true"), BODY).unwrap_err();
        assert_eq!(r.status, 404);
        let r = parse("POST", "/v1/pre-reboot", Some("true"), b"{}").unwrap_err();
        assert_eq!((r.status, r.kind), (400, "bad_body"));
        let r = parse(
            "POST",
            "/v1/pre-reboot",
            Some("true"),
            br#"{"client_params": {"id": "a.b>c"}}"#,
        )
        .unwrap_err();
        assert!(r.value.contains("client_params.id"), "{r:?}");
        let body: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(body["kind"], "bad_body");
    }
}
