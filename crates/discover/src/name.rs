//! The host name avahi-daemon announces for this node, and how it compares
//! with the hostname.
//!
//! avahi-daemon announces the kernel's hostname as `NAME.local`; when
//! another host on the LAN already holds that name it renames itself
//! (`macula-0b02` becomes `macula-0b02-2`) and keeps the new name even once
//! the other host is gone. [`announced_host_name`] asks it, over D-Bus,
//! which name it announces now: `maculaos info`, `maculaos discover` and the
//! health agent's `mdns-name` check all use it.

use maculaos_runner::{Cmd, RunError};
use std::time::Duration;

/// How long busctl waits for avahi-daemon's answer (its `--timeout`).
const BUS_TIMEOUT: &str = "3s";
/// busctl is killed after this long, should it hang before its own timeout.
const KILL_AFTER: Duration = Duration::from_secs(5);

/// Why the announced name is unknown.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    /// avahi-daemon is not on the system bus: not installed, stopped or
    /// masked (a node without avahi is fine).
    #[error("avahi-daemon is not running")]
    NoDaemon,
    /// busctl answered, but not with one string.
    #[error("busctl printed {0}")]
    Unexpected(String),
    /// busctl is missing, or failed for another reason (no system bus).
    #[error(transparent)]
    Run(#[from] RunError),
}

/// The host name avahi-daemon announces (without `.local`), asked with
/// `busctl --system call org.freedesktop.Avahi / org.freedesktop.Avahi.Server
/// GetHostName`. With `--auto-start=no`, so that asking never starts an
/// avahi-daemon that was stopped on purpose (the bus would activate it),
/// and bounded in time.
pub fn announced_host_name() -> Result<String, NameError> {
    let out = Cmd::new("busctl")
        .args([
            "--system",
            "--auto-start=no",
            &format!("--timeout={BUS_TIMEOUT}"),
            "call",
            "org.freedesktop.Avahi",
            "/",
            "org.freedesktop.Avahi.Server",
            "GetHostName",
        ])
        .hint("busctl comes with systemd")
        .output_for(KILL_AFTER);
    host_name_answer(out)
}

/// The announced name from what busctl did: its output, or its failure.
pub fn host_name_answer(out: Result<String, RunError>) -> Result<String, NameError> {
    match out {
        Ok(text) => parse_host_name_reply(&text),
        Err(RunError::Failed { tail, .. }) if no_daemon(&tail) => Err(NameError::NoDaemon),
        Err(e) => Err(NameError::Run(e)),
    }
}

/// Whether busctl's error says that nobody owns avahi's bus name.
fn no_daemon(stderr: &str) -> bool {
    [
        // dbus-daemon, for a call that may not start the service.
        "does not exist",
        // dbus-daemon, when the service is not installed at all.
        "was not provided by any .service files",
        "not activatable",
        // A masked or removed avahi-daemon.service behind the bus name.
        "dbus-org.freedesktop.Avahi.service",
        "NameHasNoOwner",
        "ServiceUnknown",
    ]
    .iter()
    .any(|s| stderr.contains(s))
}

/// The string of busctl's reply: `s "macula-0b02-2"` (busctl's C-style
/// escapes undone). Anything else is [`NameError::Unexpected`].
pub fn parse_host_name_reply(text: &str) -> Result<String, NameError> {
    let unexpected = |what: String| Err(NameError::Unexpected(what));
    let text = text.trim();
    if text.is_empty() {
        return unexpected("nothing".into());
    }
    let shown = || {
        let first = text.lines().next().unwrap_or_default();
        let mut s: String = first.chars().take(80).collect();
        if s.len() < first.len() || text.lines().nth(1).is_some() {
            s.push('…');
        }
        format!("`{s}`")
    };
    let Some(quoted) = text.strip_prefix("s ") else {
        return unexpected(format!("{}, not a string", shown()));
    };
    let Some(name) = unquote(quoted.trim_start()) else {
        return unexpected(format!("{}, not one quoted string", shown()));
    };
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return unexpected(format!("{}, not a host name", shown()));
    }
    Ok(name)
}

/// `"text"` with busctl's escapes (systemd's `cescape`: `\\`, `\"`, `\n`…
/// and `\xHH` for other bytes) undone; `None` unless the whole input is one
/// quoted string.
fn unquote(s: &str) -> Option<String> {
    let body = s.strip_prefix('"')?;
    let b = body.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    loop {
        match *b.get(i)? {
            b'"' => {
                // Nothing may follow the closing quote.
                return (i + 1 == b.len())
                    .then(|| String::from_utf8(out).ok())
                    .flatten();
            }
            b'\\' => {
                let byte = match *b.get(i + 1)? {
                    b'\\' => b'\\',
                    b'"' => b'"',
                    b'\'' => b'\'',
                    b'a' => 0x07,
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'v' => 0x0b,
                    b'x' => {
                        let hex = std::str::from_utf8(b.get(i + 2..i + 4)?).ok()?;
                        i += 2;
                        u8::from_str_radix(hex, 16).ok()?
                    }
                    _ => return None,
                };
                out.push(byte);
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
}

/// How the announced name compares with the hostname.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// The hostname, as it should be.
    AsHostname,
    /// The hostname with avahi's `-N` suffix: another host on the LAN held
    /// the name when avahi-daemon probed for it.
    Renamed,
    /// Some other name (avahi-daemon kept an old hostname).
    Other,
}

/// The label avahi announces for `hostname`: its first label (avahi drops
/// a domain), without surrounding whitespace.
pub fn host_label(hostname: &str) -> &str {
    let h = hostname.trim();
    h.split('.').next().unwrap_or(h)
}

/// Compare `announced` with `hostname` (mDNS names are case-insensitive).
pub fn compare(hostname: &str, announced: &str) -> Announced {
    let host = host_label(hostname).to_ascii_lowercase();
    let announced = announced.trim().to_ascii_lowercase();
    if announced == host {
        return Announced::AsHostname;
    }
    let renamed = announced
        .strip_prefix(&host)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if renamed {
        Announced::Renamed
    } else {
        Announced::Other
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn failed(tail: &str) -> RunError {
        RunError::Failed {
            command: "busctl --system call org.freedesktop.Avahi / …".into(),
            status: "exit status: 1".into(),
            tail: tail.into(),
            log: None,
        }
    }

    #[test]
    fn busctl_replies_are_parsed() {
        let ok = |t: &str| parse_host_name_reply(t).unwrap();
        assert_eq!(ok("s \"macula-0b02-2\"\n"), "macula-0b02-2");
        assert_eq!(ok("  s \"macula-0b02\"  \n\n"), "macula-0b02");
        assert_eq!(ok("s  \"edge\""), "edge");
        // busctl's escapes: a UTF-8 name comes as \xHH bytes.
        assert_eq!(ok(r#"s "caf\xc3\xa9""#), "café");
        assert_eq!(ok(r#"s "a\\b""#), "a\\b");
    }

    #[test]
    fn odd_busctl_replies_are_errors() {
        let err = |t: &str| match parse_host_name_reply(t) {
            Err(NameError::Unexpected(what)) => what,
            other => panic!("{t:?}: {other:?}"),
        };
        assert_eq!(err(""), "nothing");
        assert_eq!(err(" \n"), "nothing");
        assert_eq!(err("i 3"), "`i 3`, not a string");
        assert_eq!(err("s macula"), "`s macula`, not one quoted string");
        assert_eq!(err("s \"macula"), "`s \"macula`, not one quoted string");
        assert_eq!(
            err("s \"a\" \"b\""),
            "`s \"a\" \"b\"`, not one quoted string"
        );
        assert_eq!(err("s \"a\"\ns \"b\""), "`s \"a\"…`, not one quoted string");
        assert_eq!(err("s \"\""), "`s \"\"`, not a host name");
        assert_eq!(err("s \"two words\""), "`s \"two words\"`, not a host name");
        assert_eq!(err(r#"s "bad\q""#), r#"`s "bad\q"`, not one quoted string"#);
        assert_eq!(
            err(r#"s "cut\x4""#),
            r#"`s "cut\x4"`, not one quoted string"#
        );
        assert_eq!(err(r#"s "\xff""#), r#"`s "\xff"`, not one quoted string"#);
        let long = format!("s {}", "x".repeat(200));
        assert!(err(&long).ends_with("…`, not one quoted string"));
        assert_eq!(
            NameError::Unexpected("nothing".into()).to_string(),
            "busctl printed nothing"
        );
    }

    #[test]
    fn busctl_failures() {
        assert_eq!(
            host_name_answer(Ok("s \"x\"\n".into())).unwrap(),
            "x".to_string()
        );
        for stopped in [
            "Call failed: Name \"org.freedesktop.Avahi\" does not exist",
            "Call failed: The name org.freedesktop.Avahi was not provided by any .service files",
            "Call failed: Unit dbus-org.freedesktop.Avahi.service is masked.",
        ] {
            assert!(
                matches!(
                    host_name_answer(Err(failed(stopped))),
                    Err(NameError::NoDaemon)
                ),
                "{stopped}"
            );
        }
        assert_eq!(
            NameError::NoDaemon.to_string(),
            "avahi-daemon is not running"
        );
        let e =
            host_name_answer(Err(failed("Failed to connect to bus: No such file"))).unwrap_err();
        assert!(matches!(e, NameError::Run(_)), "{e:?}");
        assert!(e.to_string().contains("Failed to connect to bus"), "{e}");
        let e = host_name_answer(Err(RunError::NotFound {
            program: "busctl".into(),
            hint: "busctl comes with systemd".into(),
        }))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`busctl` was not found: install it (busctl comes with systemd)"
        );
    }

    #[test]
    fn names_compare() {
        assert_eq!(compare("macula-0b02", "macula-0b02"), Announced::AsHostname);
        assert_eq!(
            compare("macula-0b02\n", "Macula-0B02"),
            Announced::AsHostname
        );
        assert_eq!(
            compare("macula-0b02.example.org", "macula-0b02"),
            Announced::AsHostname
        );
        assert_eq!(compare("macula-0b02", "macula-0b02-2"), Announced::Renamed);
        assert_eq!(compare("macula-0b02", "macula-0b02-13"), Announced::Renamed);
        assert_eq!(compare("edge-2", "edge-2-2"), Announced::Renamed);
        assert_eq!(compare("macula-0b02", "macula-0b02-"), Announced::Other);
        assert_eq!(compare("macula-0b02", "macula-0b02-x"), Announced::Other);
        assert_eq!(compare("edge-one", "macula-0b02"), Announced::Other);
        assert_eq!(compare("edge", "edge2"), Announced::Other);
        assert_eq!(host_label(" a.b.c "), "a");
    }
}
