//! What the dashboard asks systemd: the state of a few units (one
//! `systemctl show` for all of them) and the agent's recent events (its
//! journal). The commands go through `maculaos_runner::Cmd`; what they
//! print is parsed by pure functions tested on sample text.

use crate::{Event, Service};
use maculaos_runner::Cmd;
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

/// The unit whose journal holds the agent's event lines.
pub const AGENT_UNIT: &str = "maculaos-agent.service";
/// How many events the dashboard shows.
pub const MAX_EVENTS: usize = 20;
/// How many journal entries of the agent are searched for events: the
/// agent prints little else, so the last 20 events are well within them.
const JOURNAL_LINES: &str = "500";
/// What the agent prints before every event (`event: <key>: <message>`).
const EVENT_PREFIX: &str = "event: ";

/// The command that shows `units` (none: systemctl would show the manager's
/// own properties instead, so the caller does not run it).
pub fn systemctl_show(units: &[String]) -> Cmd {
    Cmd::new("systemctl")
        .args([
            "show",
            "--no-pager",
            "-p",
            "Id",
            "-p",
            "LoadState",
            "-p",
            "ActiveState",
            "-p",
            "SubState",
            "--",
        ])
        .args(units)
        .quiet()
}

/// The state of each of `units` from what [`systemctl_show`] printed: one
/// block of `Key=value` lines per unit, in the order asked, separated by
/// blank lines. A unit systemd does not know (`LoadState=not-found`) has
/// the state `not-found`. A unit without a block (systemctl printed less
/// than expected) is `unknown`.
pub fn parse_show(units: &[String], text: &str) -> Vec<Service> {
    let blocks = blocks(text);
    units
        .iter()
        .enumerate()
        .map(|(i, unit)| {
            // The blocks come in the order of the arguments; an alias shows
            // the unit it names (`sshd.service` gives `Id=ssh.service`), so
            // the position is what ties a block to its unit. Should the
            // counts differ, the Id is the next best thing.
            let block = if blocks.len() == units.len() {
                blocks.get(i)
            } else {
                blocks
                    .iter()
                    .find(|b| b.get("Id").map(String::as_str) == Some(unit))
            };
            match block {
                Some(b) if b.get("LoadState").map(String::as_str) == Some("not-found") => {
                    Service::new(unit, "not-found", "")
                }
                Some(b) => Service::new(
                    unit,
                    b.get("ActiveState").map_or("unknown", String::as_str),
                    b.get("SubState").map_or("", String::as_str),
                ),
                None => Service::new(unit, "unknown", ""),
            }
        })
        .collect()
}

fn blocks(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut current = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            current.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The last entries of the agent's journal in this boot, one JSON object a
/// line: JSON rather than a text format because the message and its time
/// come as fields, with nothing to guess about where one ends.
pub fn journalctl_agent() -> Cmd {
    Cmd::new("journalctl")
        .args([
            "-u",
            AGENT_UNIT,
            "-b",
            "-o",
            "json",
            "--no-pager",
            "-n",
            JOURNAL_LINES,
        ])
        .quiet()
}

/// The event lines among the journal entries `text` (one JSON object a
/// line, as `journalctl -o json` prints them), the last `limit` of them,
/// oldest first. Entries that are not events, or not JSON, are skipped.
pub fn parse_journal(text: &str, limit: usize) -> Vec<Event> {
    let mut events: Vec<Event> = text.lines().filter_map(journal_event).collect();
    let start = events.len().saturating_sub(limit);
    events.drain(..start);
    events
}

fn journal_event(line: &str) -> Option<Event> {
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    let message = match entry.get("MESSAGE")? {
        serde_json::Value::String(s) => s.clone(),
        // journald gives a message that is not valid UTF-8 (or has control
        // characters) as an array of bytes.
        serde_json::Value::Array(bytes) => {
            let bytes: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => return None,
    };
    let time = entry
        .get("__REALTIME_TIMESTAMP")
        .and_then(|t| t.as_str())
        .and_then(|t| t.parse::<u64>().ok())
        .map(|us| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_micros(us)).to_string()
        });
    event_from_message(time, message.trim_end())
}

/// An event from one line the agent printed (`event: <key>: <message>`).
pub fn event_from_message(time: Option<String>, line: &str) -> Option<Event> {
    let rest = line.strip_prefix(EVENT_PREFIX)?;
    let (key, message) = match rest.split_once(": ") {
        // Keys are short kebab-case words (`check-failed`); anything else
        // before a colon is part of the message.
        Some((k, m))
            if !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            (Some(k.to_string()), m)
        }
        _ => (None, rest),
    };
    Some(Event {
        time,
        key,
        message: message.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn show_blocks_in_the_order_asked_with_missing_units() {
        let text = "\
Id=ssh.service
LoadState=loaded
ActiveState=active
SubState=running

LoadState=not-found
ActiveState=inactive
SubState=dead
Id=k3s.service

Id=maculaos-agent.service
LoadState=loaded
ActiveState=failed
SubState=failed
";
        let got = parse_show(
            &units(&["sshd.service", "k3s.service", "maculaos-agent.service"]),
            text,
        );
        assert_eq!(
            got,
            vec![
                Service::new("sshd.service", "active", "running"),
                Service::new("k3s.service", "not-found", ""),
                Service::new("maculaos-agent.service", "failed", "failed"),
            ]
        );
        // Fewer blocks than units: matched by Id, the rest unknown.
        let got = parse_show(
            &units(&["a.service", "b.service"]),
            "Id=b.service\nLoadState=loaded\nActiveState=activating\nSubState=start\n",
        );
        assert_eq!(
            got,
            vec![
                Service::new("a.service", "unknown", ""),
                Service::new("b.service", "activating", "start"),
            ]
        );
        assert_eq!(
            parse_show(&units(&["a.service"]), ""),
            vec![Service::new("a.service", "unknown", "")]
        );
    }

    #[test]
    fn the_commands() {
        assert_eq!(
            systemctl_show(&units(&["ssh.service", "k3s.service"])).display(),
            "systemctl show --no-pager -p Id -p LoadState -p ActiveState -p SubState -- ssh.service k3s.service"
        );
        assert_eq!(
            journalctl_agent().display(),
            "journalctl -u maculaos-agent.service -b -o json --no-pager -n 500"
        );
    }

    #[test]
    fn journal_events_newest_last() {
        let mut text = String::new();
        text.push_str(
            r#"{"__REALTIME_TIMESTAMP":"1700000000000000","MESSAGE":"maculaos agent: watching 3 checks (auto_heal on)"}"#,
        );
        text.push('\n');
        text.push_str("not json\n");
        for i in 0..25 {
            text.push_str(&format!(
                r#"{{"__REALTIME_TIMESTAMP":"{}","MESSAGE":"event: check-failed: check web{i} failed (refused)"}}"#,
                1_700_000_000_000_000u64 + i * 1_000_000
            ));
            text.push('\n');
        }
        // Bytes for a message with a control character; no timestamp.
        let bytes: Vec<String> = "event: restart: a\u{1b}b"
            .bytes()
            .map(|b| b.to_string())
            .collect();
        text.push_str(&format!(r#"{{"MESSAGE":[{}]}}"#, bytes.join(",")));
        text.push('\n');
        let events = parse_journal(&text, MAX_EVENTS);
        assert_eq!(events.len(), 20);
        assert_eq!(events[0].message, "check web6 failed (refused)");
        assert_eq!(events[0].key.as_deref(), Some("check-failed"));
        assert_eq!(events[0].time.as_deref(), Some("2023-11-14T22:13:26Z"));
        assert_eq!(events[18].message, "check web24 failed (refused)");
        let last = &events[19];
        assert_eq!(
            (
                last.time.as_deref(),
                last.key.as_deref(),
                last.message.as_str()
            ),
            (None, Some("restart"), "a\u{1b}b")
        );
        assert!(parse_journal("", MAX_EVENTS).is_empty());
    }

    #[test]
    fn event_lines() {
        let e = event_from_message(None, "event: gave-up: web: 3 restarts").unwrap();
        assert_eq!(e.key.as_deref(), Some("gave-up"));
        assert_eq!(e.message, "web: 3 restarts");
        let e = event_from_message(None, "event: Something odd: x").unwrap();
        assert_eq!((e.key, e.message.as_str()), (None, "Something odd: x"));
        assert!(event_from_message(None, "maculaos agent: configuration reloaded").is_none());
        assert!(event_from_message(None, " event: x: y").is_none());
    }
}
