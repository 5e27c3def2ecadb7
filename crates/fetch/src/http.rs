//! The HTTP client: ureq with rustls, the system's CA roots, timeouts, and
//! errors that name the URL.

use crate::error::{FetchError, Result};
use std::time::Duration;
use ureq::http::{HeaderMap, Response};
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::{Agent, Body};

/// Largest JSON answer read (an index, a page of GitHub releases with their
/// release notes): anything bigger is not what we asked for.
const MAX_SMALL_BODY: u64 = 16 << 20;

/// Connecting (DNS and TCP) and the start of an answer must be quick; a
/// download may take an hour on a slow link, so its whole body has no limit,
/// but it must not stall: each read waits at most [`READ_TIMEOUT`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Finds and downloads updates. One client per command: it keeps its
/// connections for the requests of that command.
pub struct Client {
    agent: Agent,
    /// Why https cannot work, when the system has no CA certificates.
    no_roots: Option<String>,
}

impl Client {
    /// A client for the node: proxy from `https_proxy`/`http_proxy`/`no_proxy`
    /// (as curl reads them), CA roots from the system (`/etc/ssl/certs`,
    /// Debian's ca-certificates; `SSL_CERT_FILE`/`SSL_CERT_DIR` override).
    ///
    /// Why the system's roots and not a list compiled in: an operator who
    /// adds a company CA with update-ca-certificates expects every tool on
    /// the node, curl and this, to trust it.
    pub fn new() -> Client {
        let loaded = rustls_native_certs::load_native_certs();
        let certs: Vec<Certificate<'static>> = loaded
            .certs
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let no_roots = certs.is_empty().then(|| {
            if loaded.errors.is_empty() {
                "none found".to_string()
            } else {
                loaded
                    .errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        });
        let config = Agent::config_builder()
            .tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::new_with_certs(&certs))
                    .build(),
            )
            .http_status_as_error(false)
            .user_agent(format!("maculaos/{}", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_per_read(Some(READ_TIMEOUT))
            .build();
        Client {
            agent: config.into(),
            no_roots,
        }
    }

    /// A client that ignores proxy settings: the tests' servers are on
    /// 127.0.0.1, whatever the environment says.
    #[cfg(test)]
    pub(crate) fn direct() -> Client {
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_recv_response(Some(Duration::from_secs(10)))
            .timeout_per_read(Some(Duration::from_secs(10)))
            .build();
        Client {
            agent: config.into(),
            no_roots: None,
        }
    }

    /// GET `url` with `headers`; any HTTP status is an answer, only not
    /// getting one is an error.
    pub(crate) fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response<Body>> {
        if url.starts_with("https://") {
            if let Some(reason) = &self.no_roots {
                return Err(FetchError::NoCaCertificates {
                    reason: reason.clone(),
                });
            }
        }
        let mut req = self.agent.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.call().map_err(|e| FetchError::Network {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }

    /// GET a small document: status, headers and the whole body.
    pub(crate) fn get_small(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, HeaderMap, Vec<u8>)> {
        let resp = self.get(url, headers)?;
        let status = resp.status().as_u16();
        let (parts, mut body) = resp.into_parts();
        let bytes = body
            .with_config()
            .limit(MAX_SMALL_BODY)
            .read_to_vec()
            .map_err(|e| FetchError::Network {
                url: url.to_string(),
                reason: format!("reading the answer: {e}"),
            })?;
        Ok((status, parts.headers, bytes))
    }
}

impl Default for Client {
    fn default() -> Client {
        Client::new()
    }
}

/// A header's value as text, if it is there and is text.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
