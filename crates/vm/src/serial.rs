//! The serial console: QEMU's log file of it, a mark so a wait only sees
//! new output, and a connection for typing into it.

use crate::{Deadline, Result, VmError, ERROR_TAIL_LINES};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

/// How often a wait re-reads the serial log.
const POLL: Duration = Duration::from_millis(50);

/// A guest kernel that reports one CPU stuck this long is wedged: under TCG
/// a vCPU thread occasionally stops making progress (seen in CI: systemd-networkd
/// "stuck for 227s", then nothing more until the deadline). Shorter reports
/// happen on a loaded host and the guest recovers from them.
const WEDGED_AFTER_SECS: u64 = 120;

/// One boot's serial log file, as QEMU writes it.
#[derive(Debug, Clone)]
pub(crate) struct SerialLog {
    path: PathBuf,
    /// Byte offset: waits only look at text after it.
    mark: usize,
}

impl SerialLog {
    pub(crate) fn new(path: PathBuf) -> SerialLog {
        SerialLog { path, mark: 0 }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The log's bytes; a log QEMU has not created yet is empty.
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap_or_default()
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    pub(crate) fn mark_end(&mut self) {
        self.mark = self.bytes().len();
    }

    /// Index of the first pattern that occurs after the mark.
    fn find_after_mark(&self, patterns: &[&str]) -> Option<usize> {
        let bytes = self.bytes();
        let after = bytes.get(self.mark..).unwrap_or_default();
        let text = String::from_utf8_lossy(after);
        patterns.iter().position(|p| text.contains(p))
    }

    /// The kernel's report of a CPU stuck for [`WEDGED_AFTER_SECS`] or more
    /// (the line), anywhere in this boot's log.
    pub(crate) fn lockup(&self) -> Option<String> {
        wedged_line(&clean(&self.text()))
    }

    /// The last `n` lines, cleaned of terminal control sequences so an error
    /// message stays readable.
    pub(crate) fn tail(&self, n: usize) -> String {
        maculaos_runner::tail(&clean(&self.text()), n)
    }

    /// Poll until one of `patterns` appears after the mark, QEMU exits
    /// (`exited` returns its status) or the deadline passes.
    pub(crate) fn wait_for_any(
        &self,
        patterns: &[&str],
        timeout: Duration,
        mut exited: impl FnMut() -> Result<Option<ExitStatus>>,
    ) -> Result<usize> {
        let what = describe_patterns(patterns);
        let deadline = Deadline::after(timeout);
        loop {
            if let Some(i) = self.find_after_mark(patterns) {
                return Ok(i);
            }
            if let Some(status) = exited()? {
                // QEMU may have written the awaited text just before exiting.
                if let Some(i) = self.find_after_mark(patterns) {
                    return Ok(i);
                }
                return Err(VmError::Exited {
                    what,
                    status: status.to_string(),
                    log: self.path.clone(),
                    tail: self.tail(ERROR_TAIL_LINES),
                });
            }
            if let Some(line) = self.lockup() {
                return Err(VmError::GuestWedged {
                    what,
                    line,
                    log: self.path.clone(),
                    tail: self.tail(ERROR_TAIL_LINES),
                });
            }
            if deadline.expired() {
                return Err(VmError::Timeout {
                    what,
                    waited: deadline.waited(),
                    log: self.path.clone(),
                    tail: self.tail(ERROR_TAIL_LINES),
                });
            }
            deadline.pause(POLL);
        }
    }
}

/// The first "soft lockup - CPU#N stuck for Ss!" line with S at or over
/// [`WEDGED_AFTER_SECS`].
pub fn wedged_line(text: &str) -> Option<String> {
    text.lines()
        .find(|l| {
            l.contains("soft lockup - CPU#")
                && l.split("stuck for ")
                    .nth(1)
                    .and_then(|rest| rest.split('s').next())
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|secs| secs >= WEDGED_AFTER_SECS)
        })
        .map(|l| l.trim().to_string())
}

fn describe_patterns(patterns: &[&str]) -> String {
    let quoted: Vec<String> = patterns.iter().map(|p| format!("{p:?}")).collect();
    match quoted.len() {
        1 => format!("{} on the serial console", quoted.join("")),
        _ => format!("one of {} on the serial console", quoted.join(", ")),
    }
}

/// Drop ANSI escape sequences, carriage returns and other control characters
/// (firmware and GRUB repaint the screen with them).
pub(crate) fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                // CSI: parameters and intermediates up to a final byte @..~
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \
                Some(']') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            chars.next();
                            break;
                        }
                    }
                }
                // Two-character escapes (ESC c, ESC 7, ESC ( B …)
                Some('(') | Some(')') => {
                    chars.next();
                    chars.next();
                }
                Some(_) => {
                    chars.next();
                }
                None => {}
            },
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A connection to the serial socket for typing into the console. QEMU also
/// sends the console output down it; a thread throws that away (the log file
/// has it) so QEMU never stalls on a full socket.
pub(crate) struct SerialWriter {
    stream: UnixStream,
}

impl SerialWriter {
    pub(crate) fn connect(socket: &Path) -> Result<SerialWriter> {
        let stream = UnixStream::connect(socket)
            .map_err(crate::io_err("connecting to the serial socket", socket))?;
        let mut reader = stream
            .try_clone()
            .map_err(crate::io_err("cloning the serial socket", socket))?;
        std::thread::Builder::new()
            .name("serial-drain".to_string())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                // Ends when QEMU closes the socket or the writer shuts it down.
                while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
            })
            .map_err(crate::io_err("starting the serial reader for", socket))?;
        Ok(SerialWriter { stream })
    }

    pub(crate) fn send(&mut self, data: &[u8], socket: &Path) -> Result<()> {
        self.stream
            .write_all(data)
            .and_then(|_| self.stream.flush())
            .map_err(crate::io_err("writing to the serial socket", socket))
    }
}

impl Drop for SerialWriter {
    fn drop(&mut self) {
        // Wakes the drain thread so it ends.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn clean_strips_escapes_and_carriage_returns() {
        let raw = "\u{1b}[2J\u{1b}[01;01H\u{1b}[=3hBdsDxe: loading\r\n\u{1b}[1m\u{1b}[37mGRUB\u{1b}[0m x\u{8}\n";
        assert_eq!(clean(raw), "BdsDxe: loading\nGRUB x\n");
    }

    #[test]
    fn wait_sees_only_text_after_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial-1.log");
        std::fs::write(&path, "login: \n").unwrap();
        let mut log = SerialLog::new(path.clone());
        assert_eq!(
            log.wait_for_any(&["login:"], Duration::from_secs(1), || Ok(None))
                .unwrap(),
            0
        );
        log.mark_end();
        let err = log
            .wait_for_any(&["login:"], Duration::from_millis(200), || Ok(None))
            .unwrap_err();
        let msg = err.to_string();
        // The time it says is the time it took: not part of the assertion.
        assert!(msg.starts_with("timed out after "), "{msg}");
        assert!(msg.contains("\"login:\" on the serial console"), "{msg}");
        assert!(msg.contains("serial-1.log"), "{msg}");

        // Text appended by "QEMU" while waiting is found: it is written
        // after the wait's first look (from its first check on QEMU), so
        // only a later look can find it.
        let mut written = false;
        let i = log
            .wait_for_any(&["login:", "Kernel panic"], Duration::from_secs(10), || {
                if !written {
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .unwrap();
                    f.write_all(b"Kernel panic\n").unwrap();
                    written = true;
                }
                Ok(None)
            })
            .unwrap();
        assert!(written);
        assert_eq!(i, 1);
    }

    #[test]
    fn exit_ends_the_wait_with_the_log_tail() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial-3.log");
        let lines: String = (1..=100).map(|i| format!("line {i}\r\n")).collect();
        std::fs::write(&path, lines).unwrap();
        let log = SerialLog::new(path);
        let err = log
            .wait_for_any(&["never"], Duration::from_secs(60), || {
                Ok(Some(ExitStatus::from_raw(0)))
            })
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("QEMU exited (exit status: 0) while waiting for \"never\""),
            "{msg}"
        );
        assert!(
            msg.contains("line 61\nline 62") && msg.ends_with("line 100"),
            "{msg}"
        );
        assert!(!msg.contains("line 60\n"), "{msg}");
    }

    #[test]
    fn only_a_long_lockup_means_wedged() {
        let short = "[ 50.1] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [systemd:1]\n";
        assert_eq!(wedged_line(short), None);
        let long = format!(
            "{short}[ 272.5] watchdog: BUG: soft lockup - CPU#1 stuck for 227s! [systemd-network:218]\n"
        );
        assert_eq!(
            wedged_line(&long).as_deref(),
            Some(
                "[ 272.5] watchdog: BUG: soft lockup - CPU#1 stuck for 227s! [systemd-network:218]"
            )
        );
        assert_eq!(
            wedged_line("Kernel panic - not syncing: sysrq triggered crash"),
            None
        );
    }

    #[test]
    fn missing_log_reads_empty() {
        let log = SerialLog::new(PathBuf::from("/nonexistent/serial-1.log"));
        assert_eq!(log.text(), "");
        let err = log
            .wait_for_any(&["x"], Duration::ZERO, || Ok(None))
            .unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
    }
}
