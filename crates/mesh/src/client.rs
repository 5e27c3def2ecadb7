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

/// Where the realm's CA holder answers with the signed roster
/// (`macula.rpc.<realm>.realm.*` is the mesh's own).
pub fn roster_subject(realm: &str) -> String {
    rpc_subject(realm, "realm.roster")
}

/// Where the realm's CA holder renews a node's certificate (see
/// [`crate::state::State::renew`]).
pub fn renew_subject(realm: &str) -> String {
    rpc_subject(realm, "realm.renew")
}

/// Where every node of the realm whose WireGuard overlay is on answers
/// with its signed overlay announcement (see [`crate::overlay`]).
pub fn overlay_subject(realm: &str) -> String {
    rpc_subject(realm, "realm.overlay")
}

/// The topic a new roster is published on (`macula.pub.<realm>.realm.roster`,
/// received on `macula.sub.<realm>.realm.roster`).
pub const ROSTER_TOPIC: &str = "realm.roster";

/// The subject node `node` answers pings on.
pub fn ping_subject(realm: &str, node: &str) -> String {
    rpc_subject(realm, &format!("node.{node}.ping"))
}

/// Where the nodes that run service `name` answer (plan §4.9.5's
/// discovery, `macula.discover.<realm>.<name>`); `*` for every name.
pub fn discover_subject(realm: &str, name: &str) -> String {
    format!("macula.discover.{realm}.{name}")
}

/// The most answers [`Client::gather`] keeps.
pub const GATHER_MAX: usize = 1000;

/// What a node answers for a service of its own that runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub node: String,
    pub service: String,
    pub image: String,
    /// Published ports as `services.NAME.ports` writes them (`8080:80`).
    pub ports: Vec<String>,
    /// Where the node is reached on its LAN (`NODE.local`).
    pub host: String,
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
    /// How long one operation may take.
    timeout: Duration,
}

/// A value of a key-value bucket, with its revision (the stream sequence
/// that wrote it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvValue {
    pub bucket: String,
    pub key: String,
    pub value: String,
    pub revision: u64,
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
        Ok(Client { rt, nats, timeout })
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
            let mut sub = self.subscription(subject, &what).await?;
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

    async fn subscription(
        &self,
        subject: &str,
        what: &str,
    ) -> Result<async_nats::Subscriber, ClientError> {
        self.nats
            .subscribe(subject.to_string())
            .await
            .map_err(|e| fail(what)(&e))
    }

    /// Answer requests on `subject` with `answer()` (nothing: no answer)
    /// and, every `tick`, publish what `news()` has (a subject and a
    /// payload), until the connection ends for good.
    pub fn serve_with_news(
        &self,
        subject: &str,
        tick: Duration,
        answer: impl Fn() -> Option<Vec<u8>>,
        mut news: impl FnMut() -> Option<(String, Vec<u8>)>,
    ) -> Result<(), ClientError> {
        let what = format!("answering on {subject}");
        self.rt.block_on(async {
            let mut sub = self.subscription(subject, &what).await?;
            loop {
                if let Some((subj, payload)) = news() {
                    self.nats
                        .publish(subj.clone(), payload.into())
                        .await
                        .map_err(|e| fail(&format!("publishing on {subj}"))(&e))?;
                }
                let until = tokio::time::Instant::now() + tick;
                loop {
                    match tokio::time::timeout_at(until, sub.next()).await {
                        Err(_) => break,
                        Ok(None) => {
                            return Err(ClientError(format!("{what}: the connection closed")))
                        }
                        Ok(Some(msg)) => {
                            if let (Some(reply), Some(body)) = (msg.reply, answer()) {
                                // A requester that left is not our problem.
                                let _ = self.nats.publish(reply, body.into()).await;
                            }
                        }
                    }
                }
            }
        })
    }

    /// Answer pings for `pong.node` until the connection ends for good.
    pub fn serve_ping(&self, pong: &Pong) -> Result<(), ClientError> {
        let body = serde_json::to_vec(pong).unwrap_or_default();
        self.serve(&ping_subject(&pong.realm, &pong.node), |_| {
            Some(body.clone())
        })
    }

    /// Answer each request on `subject` with `answer(payload)` (nothing:
    /// no answer), one at a time, until the connection ends for good.
    pub fn serve(
        &self,
        subject: &str,
        mut answer: impl FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        self.serve_subjects(subject, |_, payload| answer(payload))
    }

    /// [`Client::serve`] for a subject with wildcards: `answer` is given
    /// the subject each request came on.
    pub fn serve_subjects(
        &self,
        subject: &str,
        mut answer: impl FnMut(&str, &[u8]) -> Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let what = format!("answering on {subject}");
        self.rt.block_on(async {
            let mut sub = self.subscription(subject, &what).await?;
            while let Some(msg) = sub.next().await {
                if let (Some(reply), Some(body)) = (msg.reply, answer(&msg.subject, &msg.payload)) {
                    // A requester that left is not our problem.
                    let _ = self.nats.publish(reply, body.into()).await;
                }
            }
            Err(ClientError(format!("{what}: the connection closed")))
        })
    }
}

impl Client {
    /// Ask on `subject` and gather every answer that comes within `wait`
    /// (a request that many may answer: no answer at all is an empty list),
    /// at most [`GATHER_MAX`].
    pub fn gather(
        &self,
        subject: &str,
        payload: &[u8],
        wait: Duration,
    ) -> Result<Vec<Received>, ClientError> {
        let what = format!("asking on {subject}");
        // Bounded as a whole: with the server gone, the publish and the
        // flush wait for a reconnect.
        let limit = wait + self.timeout;
        // The timer is made inside the runtime (it needs its clock).
        let all = self.rt.block_on(async {
            tokio::time::timeout(limit, async {
                let inbox = self.nats.new_inbox();
                let mut sub = self.subscription(&inbox, &what).await?;
                self.nats
                    .publish_with_reply(subject.to_string(), inbox, Bytes::copy_from_slice(payload))
                    .await
                    .map_err(|e| fail(&what)(&e))?;
                self.nats.flush().await.map_err(|e| fail(&what)(&e))?;
                let deadline = tokio::time::Instant::now() + wait;
                let mut out = Vec::new();
                while out.len() < GATHER_MAX {
                    let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await else {
                        break;
                    };
                    out.push(Received {
                        subject: msg.subject.to_string(),
                        payload: String::from_utf8_lossy(&msg.payload).into_owned(),
                    });
                }
                Ok(out)
            })
            .await
        });
        all.map_err(|_| {
            ClientError(format!(
                "{what}: no answer from the server within {limit:?}"
            ))
        })?
    }
}

impl Client {
    /// The realm's JetStream, wherever this node is: its API is addressed
    /// through the realm's domain (the bootstrap nodes run it), so a peer
    /// with a JetStream of its own still reaches the realm's.
    fn jetstream(&self, realm: &str) -> async_nats::jetstream::Context {
        // The context starts a task of its own: on this client's runtime.
        let _runtime = self.rt.enter();
        async_nats::jetstream::with_domain(self.nats.clone(), crate::conf::realm_token(realm))
    }

    /// Run `f` under this client's deadline.
    fn within<T, E: std::fmt::Display>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, ClientError> {
        self.rt.block_on(async {
            tokio::time::timeout(self.timeout, f)
                .await
                .map_err(|_| {
                    ClientError(format!(
                        "{what}: no answer in {:?} (is a bootstrap node of the realm reachable? `maculaos mesh status`)",
                        self.timeout
                    ))
                })?
                .map_err(|e| fail(what)(&e))
        })
    }

    /// Make key-value bucket `bucket` in the realm's JetStream, its values
    /// kept on `replicas` bootstrap nodes; a bucket that exists is used as
    /// it is (its settings are not changed). The bucket's stream is made here rather than
    /// by async-nats' `create_key_value`, which first reads the account's
    /// API level, a field nats-server 2.9 does not send; the settings are
    /// the ones a key-value bucket has (one value per key, rollups, direct
    /// reads from any replica).
    pub fn kv_create(&self, realm: &str, bucket: &str, replicas: usize) -> Result<(), ClientError> {
        use async_nats::jetstream::stream;
        let what = format!("making bucket {bucket} ({replicas} replicas)");
        if !valid_bucket(bucket) {
            return Err(ClientError(format!(
                "{what}: a bucket name is letters, digits, `-` and `_`"
            )));
        }
        let js = self.jetstream(realm);
        let config = stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: replicas.max(1),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        self.within(&what, js.get_or_create_stream(config))
            .map(|_| ())
    }

    /// Set `key` in `bucket`; returns the new revision.
    pub fn kv_put(
        &self,
        realm: &str,
        bucket: &str,
        key: &str,
        value: &[u8],
    ) -> Result<u64, ClientError> {
        let js = self.jetstream(realm);
        let what = format!("setting {key} in bucket {bucket}");
        self.within(&what, async {
            let store = js
                .get_key_value(bucket)
                .await
                .map_err(|e| no_bucket(bucket, e))?;
            store
                .put(key, Bytes::copy_from_slice(value))
                .await
                .map_err(|e| e.to_string())
        })
    }

    /// Set `key` in `bucket` only while its revision is `revision` (0: it
    /// never had a value): a compare-and-set, checked by JetStream. Returns
    /// the new revision, or `None` when another writer came first (read it
    /// again and decide again).
    pub fn kv_swap(
        &self,
        realm: &str,
        bucket: &str,
        key: &str,
        value: &[u8],
        revision: u64,
    ) -> Result<Option<u64>, ClientError> {
        use async_nats::jetstream::kv::UpdateErrorKind;
        let js = self.jetstream(realm);
        let what = format!("changing {key} in bucket {bucket}");
        self.within(&what, async {
            let store = js
                .get_key_value(bucket)
                .await
                .map_err(|e| no_bucket(bucket, e))?;
            match store
                .update(key, Bytes::copy_from_slice(value), revision)
                .await
            {
                Ok(r) => Ok(Some(r)),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    /// The value of `key` in `bucket`, or `None` where it has none.
    pub fn kv_get(
        &self,
        realm: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Option<KvValue>, ClientError> {
        let js = self.jetstream(realm);
        let what = format!("reading {key} in bucket {bucket}");
        self.within(&what, async {
            let store = js
                .get_key_value(bucket)
                .await
                .map_err(|e| no_bucket(bucket, e))?;
            let entry = store.entry(key).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(entry.map(|e| KvValue {
                bucket: bucket.to_string(),
                key: key.to_string(),
                value: String::from_utf8_lossy(&e.value).into_owned(),
                revision: e.revision,
            }))
        })
    }
}

impl Client {
    /// Make bucket `bucket` as [`Client::kv_create`] does, or, where it
    /// exists with fewer than `replicas` replicas, keep it on more
    /// bootstrap nodes (a realm's first bootstrap node makes its buckets
    /// before the others have joined). Never fewer: a bootstrap node that
    /// is down is still one of the realm's. Returns whether it changed.
    pub fn kv_ensure(
        &self,
        realm: &str,
        bucket: &str,
        replicas: usize,
    ) -> Result<bool, ClientError> {
        self.kv_create(realm, bucket, replicas)?;
        let js = self.jetstream(realm);
        let what = format!("keeping bucket {bucket} on {replicas} bootstrap nodes");
        self.within(&what, async {
            let mut stream = js
                .get_stream(format!("KV_{bucket}"))
                .await
                .map_err(|e| e.to_string())?;
            let mut config = stream
                .info()
                .await
                .map_err(|e| e.to_string())?
                .config
                .clone();
            if config.num_replicas >= replicas {
                return Ok(false);
            }
            config.num_replicas = replicas;
            js.update_stream(config).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(true)
        })
    }

    /// Every key of `bucket` that has a value, with the value, sorted by
    /// key: the keys from the stream's subjects (one request), then every
    /// key's last value by direct reads, all at once. Not an ordered
    /// consumer: nats-server 2.9 left one of those delivering the last
    /// values without ever saying it was done, on a loaded node (seen in
    /// QEMU), and it needs the stream's leader where direct reads do not.
    pub fn kv_entries(&self, realm: &str, bucket: &str) -> Result<Vec<KvEntry>, ClientError> {
        use async_nats::jetstream::kv::Operation;
        let js = self.jetstream(realm);
        let what = format!("listing bucket {bucket}");
        self.within(&what, async {
            let store = js
                .get_key_value(bucket)
                .await
                .map_err(|e| no_bucket(bucket, e))?;
            let stream = js
                .get_stream(format!("KV_{bucket}"))
                .await
                .map_err(|e| e.to_string())?;
            let prefix = format!("$KV.{bucket}.");
            let mut subjects = stream
                .info_with_subjects(format!("{prefix}>"))
                .await
                .map_err(|e| e.to_string())?;
            let mut keys = Vec::new();
            while let Some(s) = subjects.next().await {
                let (subject, _) = s.map_err(|e| e.to_string())?;
                if let Some(k) = subject.strip_prefix(&prefix) {
                    keys.push(k.to_string());
                }
            }
            let read = keys.iter().map(|k| store.entry(k.clone()));
            let mut out = Vec::new();
            for e in futures_util::future::join_all(read).await {
                let Some(e) = e.map_err(|e| e.to_string())? else {
                    continue;
                };
                if e.operation == Operation::Put {
                    out.push(KvEntry {
                        stored: e.created.unix_timestamp(),
                        key: e.key,
                        value: e.value.to_vec(),
                        revision: e.revision,
                    });
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok::<_, String>(out)
        })
    }

    /// Remove `key` from `bucket` (a delete marker: watchers see it go).
    pub fn kv_delete(&self, realm: &str, bucket: &str, key: &str) -> Result<(), ClientError> {
        let js = self.jetstream(realm);
        let what = format!("removing {key} from bucket {bucket}");
        self.within(&what, async {
            let store = js
                .get_key_value(bucket)
                .await
                .map_err(|e| no_bucket(bucket, e))?;
            store.delete(key).await.map_err(|e| e.to_string())
        })
    }
}

/// The latest value of one key, as [`Client::kv_entries`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub revision: u64,
    /// When the realm's JetStream stored it (unix seconds, the server's
    /// clock, not the writer's).
    pub stored: i64,
}

/// What JetStream takes as a bucket name.
fn valid_bucket(b: &str) -> bool {
    !b.is_empty()
        && b.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A bucket that could not be opened, with what to do where it is missing.
fn no_bucket(bucket: &str, e: async_nats::jetstream::context::KeyValueError) -> String {
    if e.kind() == async_nats::jetstream::context::KeyValueErrorKind::GetBucket
        && e.to_string().contains("not found")
    {
        format!("there is no bucket {bucket} in the realm: make it with `maculaos mesh kv create {bucket}`")
    } else {
        e.to_string()
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
