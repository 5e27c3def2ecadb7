//! A NATS client that is not MaculaOS's: async-nats, on the host, through
//! an SSH forward to a node's local NATS port (how an operator's program on
//! a laptop would reach it). The mesh scenario uses it to show that the
//! mesh speaks plain NATS: publish, request, answer, JetStream key-value.

use anyhow::{anyhow, Context, Result};
use maculaos_vm::Ssh;
use std::time::Duration;

/// How long one operation may take.
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Nats {
    rt: tokio::runtime::Runtime,
    client: async_nats::Client,
    url: String,
}

/// A runtime that keeps the connection alive between calls: its worker
/// answers the server's pings while the scenario waits on something else
/// (on a runtime driven only inside calls the server would drop an idle
/// client after its ping limit, ~30 s on a node).
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting a tokio runtime")
}

/// Run `f` on `rt` with [`TIMEOUT`].
fn within<T, E: std::fmt::Display>(
    rt: &tokio::runtime::Runtime,
    what: &str,
    f: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    rt.block_on(async { tokio::time::timeout(TIMEOUT, f).await })
        .map_err(|_| anyhow!("{what}: no answer in {TIMEOUT:?}"))?
        .map_err(|e| anyhow!("{what}: {e}"))
}

impl Nats {
    /// Connect to the node behind `ssh` (its NATS port on its loopback).
    pub fn connect(ssh: &Ssh) -> Result<Nats> {
        let port = ssh.forward("127.0.0.1:4222")?;
        let url = format!("nats://127.0.0.1:{port}");
        let rt = runtime()?;
        let client = within(
            &rt,
            &format!("connecting to {url} (forwarded to the node's 4222)"),
            async_nats::ConnectOptions::new()
                .name("scenario")
                .connection_timeout(TIMEOUT)
                .request_timeout(Some(TIMEOUT))
                .connect(&url),
        )?;
        Ok(Nats { rt, client, url })
    }

    pub fn publish(&self, subject: &str, payload: &str) -> Result<()> {
        let what = format!("publishing on {subject} through {}", self.url);
        within(&self.rt, &what, async {
            self.client
                .publish(subject.to_string(), payload.to_string().into())
                .await
                .map_err(|e| e.to_string())?;
            self.client.flush().await.map_err(|e| e.to_string())
        })
    }

    /// The answer to a request, as text.
    pub fn request(&self, subject: &str, payload: &str) -> Result<String> {
        let what = format!("request on {subject} through {}", self.url);
        let m = within(
            &self.rt,
            &what,
            self.client
                .request(subject.to_string(), payload.to_string().into()),
        )?;
        Ok(String::from_utf8_lossy(&m.payload).into_owned())
    }

    /// Answer every request on `subject` with `answer`, from a thread of
    /// its own with a connection of its own, for up to `for_at_most`;
    /// returns once the subscription is known to the server.
    pub fn answer(&self, subject: &str, answer: &str, for_at_most: Duration) -> Result<()> {
        let what = format!("answering on {subject} through {}", self.url);
        let (url, subject, answer) = (self.url.clone(), subject.to_string(), answer.to_string());
        let (ready, subscribed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => return drop(ready.send(Err(e.to_string()))),
            };
            rt.block_on(async {
                let setup = async {
                    let c = async_nats::connect(&url).await.map_err(|e| e.to_string())?;
                    let sub = c
                        .subscribe(subject.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                    c.flush().await.map_err(|e| e.to_string())?;
                    Ok::<_, String>((c, sub))
                };
                let (c, mut sub) = match tokio::time::timeout(TIMEOUT, setup).await {
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => return drop(ready.send(Err(e))),
                    Err(_) => return drop(ready.send(Err(format!("no answer in {TIMEOUT:?}")))),
                };
                let _ = ready.send(Ok(()));
                let serve = async {
                    use futures_util::StreamExt;
                    while let Some(m) = sub.next().await {
                        if let Some(reply) = m.reply {
                            let _ = c.publish(reply, answer.clone().into()).await;
                        }
                    }
                };
                let _ = tokio::time::timeout(for_at_most, serve).await;
            });
        });
        subscribed
            .recv_timeout(TIMEOUT * 2)
            .map_err(|_| anyhow!("the answering thread did not start"))?
            .map_err(|e| anyhow!("{what}: {e}"))
    }

    /// `key` in key-value bucket `bucket` of JetStream domain `domain`,
    /// read the standard way (async-nats' key-value store).
    pub fn kv_get(&self, domain: &str, bucket: &str, key: &str) -> Result<Option<String>> {
        let what = format!(
            "reading {key} in bucket {bucket} (domain {domain}) through {}",
            self.url
        );
        let js = {
            let _rt = self.rt.enter();
            async_nats::jetstream::with_domain(self.client.clone(), domain)
        };
        within(&self.rt, &what, async {
            let store = js.get_key_value(bucket).await.map_err(|e| e.to_string())?;
            let v = store.get(key).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
        })
    }

    /// Put every `(key, value)` in `bucket` at once (all published, then
    /// every acknowledgement awaited): a load of many writers.
    pub fn kv_put_many(
        &self,
        domain: &str,
        bucket: &str,
        items: &[(String, String)],
    ) -> Result<()> {
        let what = format!(
            "putting {} keys in bucket {bucket} (domain {domain}) through {}",
            items.len(),
            self.url
        );
        let js = {
            let _rt = self.rt.enter();
            async_nats::jetstream::with_domain(self.client.clone(), domain)
        };
        within(&self.rt, &what, async {
            let mut acks = Vec::with_capacity(items.len());
            for (k, v) in items {
                let ack = js
                    .publish(format!("$KV.{bucket}.{k}"), bytes::Bytes::from(v.clone()))
                    .await
                    .map_err(|e| e.to_string())?;
                acks.push(ack);
            }
            for ack in acks {
                ack.await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        })
    }

    /// Messages per second from this client to `to`'s: `count` messages of
    /// `size` bytes published here on `subject` and received there on
    /// `sub_subject` (the realm's mapping), timed from the first publish to
    /// the last message received. A benchmark for the report, not a check.
    pub fn throughput(
        &self,
        to: &Nats,
        subject: &str,
        sub_subject: &str,
        count: usize,
        size: usize,
    ) -> Result<f64> {
        use futures_util::StreamExt;
        let what = format!("{count} messages from {} to {}", self.url, to.url);
        let mut sub = within(&to.rt, &what, to.client.subscribe(sub_subject.to_string()))?;
        within(&to.rt, &what, to.client.flush())?;
        // Interest reaches the publisher's server over the mesh: probe until
        // one message gets through.
        let deadline = std::time::Instant::now() + TIMEOUT * 6;
        loop {
            self.publish(subject, "probe")?;
            let got = to.rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(500), sub.next()).await
            });
            if matches!(got, Ok(Some(_))) {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(anyhow!("{what}: no probe got through"));
            }
        }
        let body = bytes::Bytes::from(vec![b'x'; size]);
        let receive = to.rt.spawn(async move {
            let mut n = 0;
            while n < count {
                match tokio::time::timeout(TIMEOUT * 6, sub.next()).await {
                    Ok(Some(m)) if m.payload.len() == size => n += 1,
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            (n, std::time::Instant::now())
        });
        let start = std::time::Instant::now();
        within(&self.rt, &what, async {
            for _ in 0..count {
                self.client
                    .publish(subject.to_string(), body.clone())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            self.client.flush().await.map_err(|e| e.to_string())
        })?;
        let (n, end) = to
            .rt
            .block_on(receive)
            .map_err(|e| anyhow!("{what}: {e}"))?;
        if n < count {
            return Err(anyhow!("{what}: {n} arrived"));
        }
        Ok(count as f64 / end.duration_since(start).as_secs_f64())
    }
}
