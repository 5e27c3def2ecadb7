//! A minimal QEMU Machine Protocol client: one JSON object per line over the
//! `-qmp unix:…` socket; greeting, `qmp_capabilities`, then commands.

use crate::{Deadline, Result, VmError};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one QMP reply may take. QEMU answers from its main loop, which
/// stays responsive even when TCG keeps the guest CPUs busy.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// An open, negotiated QMP connection.
pub struct Qmp {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect, retrying until `timeout` while the socket is not there yet or
    /// refuses (QEMU still starting, or another client holds the monitor).
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Deadline::after(timeout);
        loop {
            match Qmp::connect_once(socket) {
                Ok(q) => return Ok(q),
                Err(e) if deadline.expired() => return Err(e),
                Err(_) => deadline.pause(Duration::from_millis(50)),
            }
        }
    }

    /// One connection attempt: read the greeting and leave negotiation mode.
    pub fn connect_once(socket: &Path) -> Result<Qmp> {
        let stream = UnixStream::connect(socket)
            .map_err(crate::io_err("connecting to the QMP socket", socket))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(crate::io_err("setting a timeout on the QMP socket", socket))?;
        let writer = stream
            .try_clone()
            .map_err(crate::io_err("cloning the QMP socket", socket))?;
        let mut q = Qmp {
            socket: socket.to_owned(),
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = q
            .read_message()?
            .ok_or_else(|| q.err("closed before its greeting"))?;
        if greeting.get("QMP").is_none() {
            return Err(q.err(format!("unexpected greeting {greeting}")));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn err(&self, detail: impl Into<String>) -> VmError {
        VmError::Qmp {
            socket: self.socket.clone(),
            detail: detail.into(),
        }
    }

    /// The next message, `None` when QEMU closed the connection.
    fn read_message(&mut self) -> Result<Option<Value>> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|e| {
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                self.err(format!("no reply within {}s", REPLY_TIMEOUT.as_secs()))
            } else {
                self.err(format!("reading: {e}"))
            }
        })?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| self.err(format!("unreadable message {:?}: {e}", line.trim_end())))
    }

    /// Run `command` and return its `return` value. Asynchronous events that
    /// arrive meanwhile are skipped.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| self.err(format!("sending {command}: {e}")))?;
        loop {
            let Some(reply) = self.read_message()? else {
                return Err(self.err(format!(
                    "QEMU closed the connection before answering {command}"
                )));
            };
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(error) = reply.get("error") {
                let class = error.get("class").and_then(Value::as_str).unwrap_or("?");
                let desc = error.get("desc").and_then(Value::as_str).unwrap_or("");
                return Err(self.err(format!("{command} failed: {class}: {desc}")));
            }
        }
    }

    /// The run state, e.g. `running`, `paused`, `shutdown`.
    pub fn query_status(&mut self) -> Result<String> {
        let ret = self.execute("query-status", None)?;
        ret.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.err(format!("query-status returned no status: {ret}")))
    }

    /// Press the ACPI power button; the guest decides whether to shut down.
    pub fn powerdown(&mut self) -> Result<()> {
        self.execute("system_powerdown", None).map(|_| ())
    }

    /// Make QEMU exit at once, as if the power cord were pulled.
    pub fn quit(&mut self) -> Result<()> {
        match self.execute("quit", None) {
            Ok(_) => Ok(()),
            // QEMU may close the socket on its way out before replying.
            Err(VmError::Qmp { detail, .. }) if detail.starts_with("QEMU closed") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A stand-in QEMU answering a scripted conversation.
    fn fake_qemu(
        socket: &Path,
        replies: Vec<&'static str>,
    ) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .unwrap();
            let mut seen = Vec::new();
            for reply in replies {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                seen.push(line.trim_end().to_string());
                w.write_all(reply.as_bytes()).unwrap();
            }
            seen
        })
    }

    #[test]
    fn negotiates_skips_events_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let server = fake_qemu(
            &sock,
            vec![
                "{\"return\": {}}\r\n",
                "{\"event\": \"RESUME\", \"timestamp\": {}}\r\n{\"return\": {\"status\": \"running\", \"running\": true}}\r\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\r\n",
            ],
        );
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        assert_eq!(q.query_status().unwrap(), "running");
        let e = q.powerdown().unwrap_err().to_string();
        assert!(
            e.contains("system_powerdown failed: GenericError: nope"),
            "{e}"
        );
        assert!(e.contains("qmp.sock"), "{e}");
        let seen = server.join().unwrap();
        assert_eq!(
            seen,
            [
                r#"{"execute":"qmp_capabilities"}"#,
                r#"{"execute":"query-status"}"#,
                r#"{"execute":"system_powerdown"}"#
            ]
        );
    }

    #[test]
    fn quit_accepts_a_closed_connection() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let server = fake_qemu(&sock, vec!["{\"return\": {}}\r\n", ""]);
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        q.quit().unwrap();
        server.join().unwrap();
    }

    #[test]
    fn missing_socket_times_out_naming_it() {
        let e = Qmp::connect(
            Path::new("/nonexistent/qmp.sock"),
            Duration::from_millis(100),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("/nonexistent/qmp.sock"), "{e}");
    }
}
