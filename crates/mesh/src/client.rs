//! The NATS client the node uses (async-nats on a small runtime of its
//! own, so the rest of the CLI stays blocking): publish, subscribe, request,
//! and the node's ping responder.
//!
//! Subjects follow plan §4.9.5: `macula.pub.<realm>.<topic>` to publish,
//! `macula.sub.<realm>.<pattern>` to subscribe (the server maps one to the
//! other), `macula.rpc.<realm>.<procedure>` for requests. Every node answers
//! `macula.rpc.<realm>.node.<name>.ping`.

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Where a service on the node connects by default; [`local_url`] says
/// where it does.
pub const LOCAL_URL: &str = "nats://127.0.0.1:4222";

/// Where this node's server takes local clients: `NATS_URL` from
/// [`crate::ENV`] (it follows `nats.listen`), else [`LOCAL_URL`].
pub fn local_url() -> String {
    crate::read_env(std::path::Path::new("/"))
        .remove("NATS_URL")
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| LOCAL_URL.to_string())
}

/// The subject a publication on `topic` goes to.
pub fn pub_subject(realm: &str, topic: &str) -> String {
    format!("macula.pub.{realm}.{topic}")
}

/// The subject subscribers of `pattern` listen on.
pub fn sub_subject(realm: &str, pattern: &str) -> String {
    format!("macula.sub.{realm}.{pattern}")
}

/// The subject of a remote procedure.
pub fn rpc_subject(realm: &str, procedure: &str) -> String {
    format!("macula.rpc.{realm}.{procedure}")
}

/// The subject node `node` answers pings on.
pub fn ping_subject(realm: &str, node: &str) -> String {
    rpc_subject(realm, &format!("node.{node}.ping"))
}

/// What a node answers a ping with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub node: String,
    pub realm: String,
    pub version: String,
}

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Received {
    pub subject: String,
    pub payload: String,
}

/// A connection to the node's NATS server.
pub struct Client {
    rt: tokio::runtime::Runtime,
    nats: async_nats::Client,
}

/// A mesh operation that failed, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

fn fail(what: &str) -> impl Fn(&dyn std::fmt::Display) -> ClientError + '_ {
    move |e| ClientError(format!("{what}: {e}"))
}

impl Client {
    /// Connect to `url` (the local server), giving up after `timeout`.
    pub fn connect(url: &str, name: &str, timeout: Duration) -> Result<Client, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail("starting the NATS client")(&e))?;
        let opts = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(timeout)
            .request_timeout(Some(timeout));
        let nats = rt
            .block_on(async { tokio::time::timeout(timeout, opts.connect(url)).await })
            .map_err(|_| ClientError(format!("connecting to {url}: no answer in {timeout:?}")))?
            .map_err(|e| {
                ClientError(format!(
                    "connecting to {url}: {e} (is maculaos-nats.service running? `systemctl status maculaos-nats`)"
                ))
            })?;
        Ok(Client { rt, nats })
    }

    /// Publish `payload` on `subject` and wait until the server has it.
    pub fn publish(&self, subject: &str, payload: &[u8]) -> Result<(), ClientError> {
        let what = format!("publishing on {subject}");
        self.rt.block_on(async {
            self.nats
                .publish(subject.to_string(), Bytes::copy_from_slice(payload))
                .await
                .map_err(|e| fail(&what)(&e))?;
            self.nats.flush().await.map_err(|e| fail(&what)(&e))
        })
    }

    /// Send a request and wait up to `timeout` for the first answer; also
    /// returns the round trip.
    pub fn request(
        &self,
        subject: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<(Received, Duration), ClientError> {
        let what = format!("request on {subject}");
        self.rt.block_on(async {
            let started = Instant::now();
            let req = self
                .nats
                .request(subject.to_string(), Bytes::copy_from_slice(payload));
            let msg = tokio::time::timeout(timeout, req)
                .await
                .map_err(|_| ClientError(format!("{what}: no answer in {timeout:?}")))?
                .map_err(|e| fail(&what)(&e))?;
            Ok((received(&msg), started.elapsed()))
        })
    }

    /// Receive up to `count` messages on `subject` (0: no limit) until
    /// `timeout` (None: forever), handing each to `each`. `ready` runs once
    /// the subscription is known to the server, before any message.
    pub fn subscribe(
        &self,
        subject: &str,
        count: usize,
        timeout: Option<Duration>,
        ready: impl FnOnce(),
        mut each: impl FnMut(Received),
    ) -> Result<usize, ClientError> {
        let what = format!("subscribing to {subject}");
        self.rt.block_on(async {
            let mut sub = self
                .nats
                .subscribe(subject.to_string())
                .await
                .map_err(|e| fail(&what)(&e))?;
            self.nats.flush().await.map_err(|e| fail(&what)(&e))?;
            ready();
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            let mut n = 0;
            while count == 0 || n < count {
                let next = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, sub.next()).await {
                        Ok(m) => m,
                        Err(_) => break,
                    },
                    None => sub.next().await,
                };
                let Some(msg) = next else { break };
                each(received(&msg));
                n += 1;
            }
            Ok(n)
        })
    }

    /// Answer pings for `pong.node` until the connection ends for good.
    pub fn serve_ping(&self, pong: &Pong) -> Result<(), ClientError> {
        let subject = ping_subject(&pong.realm, &pong.node);
        let what = format!("answering pings on {subject}");
        let body = Bytes::from(serde_json::to_vec(pong).unwrap_or_default());
        self.rt.block_on(async {
            let mut sub = self
                .nats
                .subscribe(subject.clone())
                .await
                .map_err(|e| fail(&what)(&e))?;
            while let Some(msg) = sub.next().await {
                if let Some(reply) = msg.reply {
                    // A requester that left is not our problem.
                    let _ = self.nats.publish(reply, body.clone()).await;
                }
            }
            Err(ClientError(format!("{what}: the connection closed")))
        })
    }
}

fn received(m: &async_nats::Message) -> Received {
    Received {
        subject: m.subject.to_string(),
        payload: String::from_utf8_lossy(&m.payload).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_plan() {
        assert_eq!(
            pub_subject("io.macula", "temp"),
            "macula.pub.io.macula.temp"
        );
        assert_eq!(sub_subject("io.macula", "t.>"), "macula.sub.io.macula.t.>");
        assert_eq!(
            ping_subject("io.macula", "edge-01"),
            "macula.rpc.io.macula.node.edge-01.ping"
        );
    }
}
