//! A tiny HTTP/1.1 server on 127.0.0.1 for the tests: one thread, one
//! request per connection (`Connection: close`), answers chosen by a
//! handler, every request recorded.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Request {
    /// Path and query (`/stable/latest.json`).
    pub target: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send only this many bytes of the body (after a Content-Length for
    /// all of it), then close: a connection lost mid-body.
    pub cut: Option<usize>,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            cut: None,
        }
    }

    pub fn header(mut self, k: &str, v: impl ToString) -> Reply {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
}

pub struct Server {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

/// Serve with `handler(request, n)`, `n` counting requests from 0. The
/// thread lives until the test process ends.
pub fn serve(handler: impl Fn(&Request, usize) -> Reply + Send + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { continue };
            let Some(req) = read_request(&conn) else {
                continue;
            };
            log.lock().unwrap().push(req.clone());
            let reply = handler(&req, n);
            write_reply(conn, &reply);
        }
    });
    Server { base, requests }
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some(Request { target, headers })
}

fn write_reply(mut conn: TcpStream, reply: &Reply) {
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let body = match reply.cut {
        Some(n) => &reply.body[..n.min(reply.body.len())],
        None => &reply.body[..],
    };
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
}

/// A static file server over `files` (path → content).
/// `ranges`: answer `Range: bytes=N-` with 206 (else ignore it, 200).
/// `cut_first`: the first answer of a file stops after that many bytes.
pub fn files(
    files: Vec<(&str, Vec<u8>)>,
    ranges: bool,
    cut_first: Option<usize>,
) -> impl Fn(&Request, usize) -> Reply + Send + 'static {
    let files: HashMap<String, Vec<u8>> =
        files.into_iter().map(|(p, b)| (p.to_string(), b)).collect();
    let served = Mutex::new(0usize);
    move |req, _| {
        let Some(body) = files.get(&req.target) else {
            return Reply::new(404, "not found");
        };
        let mut count = served.lock().unwrap();
        *count += 1;
        let cut = if *count == 1 { cut_first } else { None };
        let start = req
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|s| s.parse::<usize>().ok());
        match start {
            Some(s) if ranges && s < body.len() => {
                let mut r = Reply::new(206, body[s..].to_vec()).header(
                    "Content-Range",
                    format!("bytes {s}-{}/{}", body.len() - 1, body.len()),
                );
                r.cut = cut;
                r
            }
            Some(_) if ranges => {
                Reply::new(416, "").header("Content-Range", format!("bytes */{}", body.len()))
            }
            _ => {
                let mut r = Reply::new(200, body.clone());
                r.cut = cut;
                r
            }
        }
    }
}
