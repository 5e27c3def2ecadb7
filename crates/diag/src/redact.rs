//! Secrets out of configuration files before they go into a support bundle.
//!
//! The file is parsed and written back (its comments go: they can hold
//! anything), with:
//! * the value of every key whose name contains token, password, passwd,
//!   secret, key, private, credential or psk replaced by `<redacted>`,
//!   except `ssh_authorized_keys`/`authorized_keys` (public keys, wanted
//!   for support) and the names inside `labels` (label names are public
//!   and often contain `key`);
//! * the `content` of every `write_files` entry replaced (files written at
//!   boot carry passwords, certificates' keys, tokens), and every value of
//!   a service's `env` (its credentials, under any name);
//! * inside any string: `--token=…`/`K3S_TOKEN=…`, the word after a
//!   `--token`-like flag (also as the next list item, as in k3s `args`),
//!   after `Bearer`, and the user:password of a URL.
//!
//! A file that does not parse is not included at all, since it cannot be
//! redacted.

use serde_yaml_ng::{Mapping, Value};

/// What a secret becomes.
pub const REDACTED: &str = "<redacted>";

const SECRET_WORDS: &[&str] = &[
    "token",
    "password",
    "passwd",
    "secret",
    "key",
    "private",
    "credential",
    "psk",
    // `Authorization: Basic …` in a map of HTTP headers.
    "authorization",
];
/// Keys whose names match but hold public keys.
const PUBLIC: &[&str] = &["ssh_authorized_keys", "authorized_keys"];

fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    let n = n.trim_start_matches('-');
    !PUBLIC.contains(&n) && SECRET_WORDS.iter().any(|w| n.contains(w))
}

/// `config.yaml` with its secrets redacted, or a note saying it was left
/// out because it does not parse.
pub fn redact(yaml_text: &str) -> String {
    redact_file("config.yaml", yaml_text)
}

/// [`redact`] for a file named `name` (in the note when it does not parse).
pub fn redact_file(name: &str, yaml_text: &str) -> String {
    redact_checked(name, yaml_text).0
}

/// [`redact_file`], and whether the file parsed (false: the text is the note).
pub(crate) fn redact_checked(name: &str, yaml_text: &str) -> (String, bool) {
    let mut value: Value = match serde_yaml_ng::from_str(yaml_text) {
        Ok(v) => v,
        Err(e) => {
            // The location only: a parser message could quote the text.
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            let note = format!("{name} does not parse{at}; not included (it may hold secrets)\n");
            return (note, false);
        }
    };
    redact_value(&mut value);
    let header = format!(
        "# {name}, secrets replaced by {REDACTED} (and comments removed) by `maculaos diag`\n"
    );
    match &value {
        Value::Null => (header, true),
        v => match serde_yaml_ng::to_string(v) {
            Ok(text) => (header + &text, true),
            Err(_) => (
                format!("{name} could not be written back after redaction; not included\n"),
                false,
            ),
        },
    }
}

fn secret_value() -> Value {
    Value::String(REDACTED.into())
}

/// Whether a value holds nothing worth hiding (kept, so support sees an
/// empty token for what it is).
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn redact_value(v: &mut Value) {
    match v {
        Value::Mapping(m) => redact_mapping(m),
        Value::Sequence(items) => redact_sequence(items),
        Value::String(s) => {
            if let Some(r) = redact_string(s) {
                *s = r;
            }
        }
        Value::Tagged(t) => redact_value(&mut t.value),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn redact_mapping(m: &mut Mapping) {
    for (k, v) in m.iter_mut() {
        let name = match k {
            Value::String(s) => s.as_str(),
            _ => {
                redact_value(v);
                continue;
            }
        };
        if PUBLIC.contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        if is_secret_name(name) {
            if !is_empty(v) {
                *v = secret_value();
            }
            continue;
        }
        match name {
            "labels" => {
                // Label names are not secret; their values may still carry
                // a URL with a password.
                if let Value::Mapping(labels) = v {
                    for (_, lv) in labels.iter_mut() {
                        redact_value(lv);
                    }
                } else {
                    redact_value(v);
                }
            }
            "write_files" => {
                if let Value::Sequence(files) = v {
                    for f in files.iter_mut() {
                        if let Value::Mapping(f) = f {
                            if let Some(c) = f.get_mut("content") {
                                if !is_empty(c) {
                                    *c = secret_value();
                                }
                            }
                        }
                        redact_value(f);
                    }
                } else {
                    redact_value(v);
                }
            }
            "services" => {
                // A service's environment is where its credentials go,
                // under any name: every value is hidden, the names stay.
                if let Value::Mapping(services) = v {
                    for (_, svc) in services.iter_mut() {
                        if let Value::Mapping(svc) = svc {
                            if let Some(Value::Mapping(env)) = svc.get_mut("env") {
                                for (_, ev) in env.iter_mut() {
                                    if !is_empty(ev) {
                                        *ev = secret_value();
                                    }
                                }
                            }
                        }
                        redact_value(svc);
                    }
                } else {
                    redact_value(v);
                }
            }
            _ => redact_value(v),
        }
    }
}

/// A list: each item, and the item after a `--token`-like flag.
fn redact_sequence(items: &mut [Value]) {
    let mut after_flag = false;
    for item in items.iter_mut() {
        if after_flag {
            after_flag = false;
            if let Value::String(s) = item {
                if !s.starts_with('-') {
                    *s = REDACTED.into();
                    continue;
                }
            }
        }
        if let Value::String(s) = item {
            after_flag = is_secret_flag(s);
        }
        redact_value(item);
    }
}

/// `--token`, `--agent-token`, `-password` (a flag alone, its value next).
fn is_secret_flag(word: &str) -> bool {
    word.starts_with('-') && !word.contains('=') && is_secret_name(word)
}

/// Secrets inside one string (a command line, an argument, a URL). None if
/// nothing changed.
fn redact_string(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    let mut hide_next = false;
    // Words and the whitespace between them, kept as they are.
    let mut rest = s;
    while !rest.is_empty() {
        let ws = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..ws]);
        rest = &rest[ws..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        rest = &rest[end..];
        if word.is_empty() {
            continue;
        }
        if hide_next {
            hide_next = false;
            if !word.starts_with('-') {
                // Keep a closing quote so the command still reads right.
                let quotes = word.len() - word.trim_end_matches(['"', '\'']).len();
                out.push_str(REDACTED);
                out.push_str(&word[word.len() - quotes..]);
                changed = true;
                continue;
            }
        }
        let w = redact_word(word);
        changed |= w != word;
        hide_next = is_secret_flag(word) || word.eq_ignore_ascii_case("bearer");
        out.push_str(&w);
    }
    changed.then_some(out)
}

/// `--token=x` / `K3S_TOKEN=x` → value hidden; `scheme://user:pw@host` →
/// user information hidden.
fn redact_word(word: &str) -> String {
    if let Some((name, _)) = word.split_once('=') {
        if !name.is_empty() && !name.contains("://") && is_secret_name(name) {
            return format!("{name}={REDACTED}");
        }
    }
    redact_url_userinfo(word)
}

fn redact_url_userinfo(word: &str) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', '#']).unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRETS: &[&str] = &[
        "s3cr3t",
        "hunter2",
        "MIIEvQIBADANBgkq",
        "agent-s3cr3t",
        "pw123",
        "envtok",
        "bearertok",
        "flagtok",
        "wifipass",
        "svc-db-pass",
    ];

    const CONFIG: &str = r#"
# a comment that could say anything: s3cr3t
maculaos:
  hostname: edge-1
  labels:
    example.com/keyring: public-label
  k3s:
    token: s3cr3t
  mesh:
    realm: io.macula
    tls:
      private_key: |
        -----BEGIN PRIVATE KEY-----
        MIIEvQIBADANBgkq
        -----END PRIVATE KEY-----
  ssh:
    authorized_keys:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey1 admin@laptop
  environment:
    API_TOKEN: envtok
  upgrade:
    url: https://deploy:pw123@updates.example.com/
  wifi:
    - ssid: site
      psk: wifipass
k3s:
  token: ""
  args:
    - --agent-token
    - agent-s3cr3t
    - --node-label=zone=a
ssh_authorized_keys:
  - ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQKey2 ops@desk
write_files:
  - path: /etc/app.conf
    permissions: "0600"
    content: |
      password=hunter2
services:
  web:
    image: localhost/web:1
    env:
      DATABASE: svc-db-pass
run_cmd:
  - curl -H "Authorization: Bearer bearertok" https://x.example.com
  - [k3s, agent, --token, flagtok]
"#;

    #[test]
    fn secrets_go_and_public_keys_stay() {
        let out = redact(CONFIG);
        for s in SECRETS {
            assert!(!out.contains(s), "{s} leaked:\n{out}");
        }
        for kept in [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey1 admin@laptop",
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQKey2 ops@desk",
            "example.com/keyring: public-label",
            "realm: io.macula",
            "hostname: edge-1",
            "path: /etc/app.conf",
            "--node-label=zone=a",
            "https://<redacted>@updates.example.com/",
            "ssid: site",
            "image: localhost/web:1",
            "DATABASE: <redacted>",
        ] {
            assert!(out.contains(kept), "{kept} missing:\n{out}");
        }
        let v: Value = serde_yaml_ng::from_str(&out).unwrap();
        assert_eq!(v["maculaos"]["k3s"]["token"], Value::from(REDACTED));
        assert_eq!(
            v["maculaos"]["mesh"]["tls"]["private_key"],
            Value::from(REDACTED)
        );
        assert_eq!(v["maculaos"]["wifi"][0]["psk"], Value::from(REDACTED));
        assert_eq!(v["write_files"][0]["content"], Value::from(REDACTED));
        assert_eq!(
            v["k3s"]["token"],
            Value::from(""),
            "an empty token stays visible"
        );
        assert_eq!(v["k3s"]["args"][1], Value::from(REDACTED));
        assert_eq!(v["run_cmd"][1][3], Value::from(REDACTED));
        assert_eq!(
            v["maculaos"]["environment"]["API_TOKEN"],
            Value::from(REDACTED)
        );
        assert!(out.starts_with("# config.yaml, secrets replaced"), "{out}");
    }

    #[test]
    fn strings_carry_secrets_too() {
        assert_eq!(
            redact_string("k3s server --token=abc --disable traefik").as_deref(),
            Some("k3s server --token=<redacted> --disable traefik")
        );
        assert_eq!(
            redact_string("K3S_TOKEN=abc  k3s agent\n--token abc").as_deref(),
            Some("K3S_TOKEN=<redacted>  k3s agent\n--token <redacted>")
        );
        assert_eq!(redact_string("nothing to see --keep-going"), None);
        assert_eq!(
            redact_string("curl -H \"Authorization: Bearer tok\" x").as_deref(),
            Some("curl -H \"Authorization: Bearer <redacted>\" x")
        );
        assert_eq!(
            redact_string("git clone https://u:p@git.example.com/r.git x").as_deref(),
            Some("git clone https://<redacted>@git.example.com/r.git x")
        );
        assert_eq!(redact_string("mailto user@example.com"), None);
    }

    #[test]
    fn a_file_that_does_not_parse_is_left_out() {
        let out = redact("maculaos:\n  k3s:\n    token: s3cr3t\n  bad: [\n");
        assert!(!out.contains("s3cr3t"));
        assert!(
            out.starts_with("config.yaml does not parse (line "),
            "{out}"
        );
        assert!(out.contains("not included (it may hold secrets)"));
        assert!(
            redact_file("config.d/10-x.yaml", "{").starts_with("config.d/10-x.yaml does not parse")
        );
    }

    #[test]
    fn empty_files_stay_empty() {
        let out = redact("# only a comment\n");
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.starts_with('#'));
    }

    #[test]
    fn names() {
        for s in [
            "token",
            "K3S_TOKEN",
            "password",
            "db_passwd",
            "client_secret",
            "private_key",
            "api-key",
            "credentials",
            "psk",
            "--agent-token",
        ] {
            assert!(is_secret_name(s), "{s}");
        }
        for s in [
            "ssh_authorized_keys",
            "authorized_keys",
            "labels",
            "realm",
            "hostname",
            "monkeys-business",
        ] {
            assert_eq!(is_secret_name(s), s == "monkeys-business", "{s}");
        }
    }
}
