//! Problems found in a configuration, each naming where it is and what to do.

use serde::Serialize;
use std::fmt;

/// One thing wrong with one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file (or `kernel command line`, or the datasource) it is in.
    pub source: String,
    /// 1-based line and column, when the source is a file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// What is wrong, starting with the key path (`maculaos.mesh.role: …`).
    pub message: String,
}

impl Problem {
    pub fn new(source: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            source: source.into(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    pub fn at(mut self, line: usize, column: usize) -> Problem {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    /// A problem from a YAML parse or type error, made readable: the
    /// position moves out of the text, an unknown key or value gets the
    /// nearest known one as a suggestion.
    pub fn from_yaml(source: &str, err: &serde_yaml_ng::Error) -> Problem {
        let p = Problem::new(source, readable(&err.to_string()));
        match err.location() {
            Some(l) => p.at(l.line(), l.column()),
            None => p,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.source, self.message),
            _ => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

/// Render a list of problems, one per line.
pub fn render(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("{p}\n")).collect()
}

fn readable(msg: &str) -> String {
    let msg = match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => &msg[..i],
        _ => msg,
    };
    let (path, rest) = match msg.split_once(": ") {
        Some((p, r)) if !p.contains(' ') => (Some(p), r),
        _ => (None, msg),
    };
    let rest = if let Some(r) = rest.strip_prefix("unknown field ") {
        unknown("key", path, r)
    } else if let Some(r) = rest.strip_prefix("unknown variant ") {
        unknown("value", path, r)
    } else if rest.starts_with("data did not match any variant of untagged enum Command") {
        "a command is a string (run by sh -c) or a list of strings (run as it is)".to_string()
    } else {
        plain_types(rest)
    };
    match path {
        Some(p) if !rest.starts_with(p) => format!("{p}: {rest}"),
        _ => rest,
    }
}

/// "`hostnme`, expected one of `hostname`, `labels`" → a sentence with the
/// nearest candidate.
fn unknown(what: &str, path: Option<&str>, r: &str) -> String {
    let (name, expected) = r.split_once(", expected").unwrap_or((r, ""));
    let name = name.trim_matches('`');
    if what == "key" {
        if let Some((.., why)) = NOT_SUPPORTED
            .iter()
            .find(|(p, k, _)| path == Some(*p) && name == *k)
        {
            return why.to_string();
        }
    }
    let candidates: Vec<&str> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| !c.is_empty())
        .collect();
    let place = path.map(|p| format!(" in `{p}`")).unwrap_or_default();
    let mut out = format!("unknown {what} `{name}`{place}");
    if let Some(best) = suggest(name, &candidates) {
        out.push_str(&format!(" — did you mean `{best}`?"));
    } else if !candidates.is_empty() {
        out.push_str(&format!("; known {what}s here: {}", candidates.join(", ")));
    }
    out
}

/// Keys of the plan (the seeds) that are known but not supported: refused
/// with the reason, not as a typo.
const NOT_SUPPORTED: &[(&str, &str, &str)] = &[
    (
        "maculaos.backup",
        "mesh",
        "`mesh`: backups to mesh peers are not supported yet; only `target: local` is",
    ),
    (
        "maculaos.backup",
        "s3",
        "`s3`: backups to S3 are not supported yet; only `target: local` is",
    ),
    (
        "maculaos.auto_heal",
        "actions",
        "`actions` cannot be configured: the auto-heal actions are built in (disk cleanup, \
         restart of a unit whose check has `restart_on_failure`, time sync, network restart); \
         `auto_heal` takes `enabled`, `disk_threshold`, `journal_max` and `network_grace`",
    ),
];

/// The candidate nearest to `name`, if it is near enough to be a typo.
pub fn suggest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(name, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// serde's type words in the words of a YAML file.
fn plain_types(s: &str) -> String {
    let mut out = s
        .replace("sequence", "list")
        .replace("a map", "a map of keys");
    if let Some(i) = out.find("expected struct ") {
        let end = out[i + 16..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(out.len(), |e| i + 16 + e);
        out.replace_range(i..end, "expected a map of keys");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml_err(text: &str) -> Problem {
        let e = serde_yaml_ng::from_str::<crate::Config>(text).unwrap_err();
        Problem::from_yaml("/x/config.yaml", &e)
    }

    #[test]
    fn unknown_key_suggests_nearest() {
        let p = yaml_err("maculaos:\n  hostnme: x\n");
        assert_eq!(
            p.to_string(),
            "/x/config.yaml:2:3: maculaos: unknown key `hostnme` in `maculaos` — did you mean `hostname`?"
        );
    }

    #[test]
    fn unknown_key_far_from_all_lists_them() {
        let p = yaml_err("k3s:\n  zzzzzz: 1\n");
        assert!(
            p.message.contains("known keys here: role, server_url"),
            "{p}"
        );
    }

    #[test]
    fn unknown_value_suggests_nearest() {
        let p = yaml_err("maculaos:\n  mesh:\n    role: bootstrapp\n");
        assert_eq!(p.line, Some(3));
        assert!(p.message.contains("did you mean `bootstrap`?"), "{p}");
    }

    #[test]
    fn type_errors_in_yaml_words() {
        let p = yaml_err("maculaos: [1]\n");
        assert_eq!(
            p.message,
            "maculaos: invalid type: list, expected a map of keys"
        );
        let p = yaml_err("run_cmd:\n  - {a: 1}\n");
        assert!(p.message.contains("a command is a string"), "{p}");
        let p = yaml_err("maculaos:\n  mesh:\n    stun_port: abc\n");
        assert_eq!(p.line, Some(3));
        assert!(p
            .message
            .starts_with("maculaos.mesh.stun_port: invalid type"));
    }

    #[test]
    fn value_errors_carry_position() {
        let p = yaml_err(
            "maculaos:\n  network:\n    interfaces:\n      - name: x\n        address: 10.0.0.1\n",
        );
        assert_eq!(p.line, Some(4));
        assert!(p.message.contains("not an address with a prefix length"));
    }

    #[test]
    fn no_position_without_one() {
        assert_eq!(
            Problem::new("kernel command line", "bad").to_string(),
            "kernel command line: bad"
        );
    }
}
