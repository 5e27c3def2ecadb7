//! `/etc/environment` (read by pam_env at every login), owned whole by the
//! configuration's `maculaos.environment`.

use crate::applier::{Applier, HEADER, ROOT_OWNER};
use maculaos_config::Config;

const AREA: &str = "environment";
const FILE: &str = "/etc/environment";

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    let mut lines = String::new();
    for (name, value) in &config.maculaos.environment {
        if value.contains(['\n', '\r']) {
            a.error(
                AREA,
                format!("{name}: the value holds a line break, which /etc/environment cannot hold"),
            );
            continue;
        }
        lines.push_str(&format!("{name}=\"{}\"\n", escape(value)));
    }
    if lines.is_empty() {
        // Emptied rather than removed: the image may ship the file, and an
        // empty one is what Debian has by default.
        if a.path(FILE).exists() {
            a.put_file(AREA, FILE, b"", 0o644, ROOT_OWNER)?;
        }
        return Ok(());
    }
    let text = format!("{HEADER}{lines}");
    a.put_file(AREA, FILE, text.as_bytes(), 0o644, ROOT_OWNER)?;
    Ok(())
}

/// Inside double quotes, `"` and `\` need a backslash.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use crate::tests::{apply_twice, opts, yaml};
    use std::fs;

    #[test]
    fn variables_are_quoted_and_escaped() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        let r = apply_twice(
            &yaml(r#"maculaos: {environment: {HTTP_PROXY: 'http://p:3128', MSG: 'say "hi" \o/'}}"#),
            &o,
        );
        assert!(r
            .changes
            .contains(&"environment: wrote /etc/environment".to_string()));
        let text = fs::read_to_string(d.path().join("etc/environment")).unwrap();
        assert!(
            text.ends_with("HTTP_PROXY=\"http://p:3128\"\nMSG=\"say \\\"hi\\\" \\\\o/\"\n"),
            "{text}"
        );
        let r = apply_twice(&yaml(""), &o);
        assert!(r
            .changes
            .contains(&"environment: wrote /etc/environment".to_string()));
        assert_eq!(
            fs::read_to_string(d.path().join("etc/environment")).unwrap(),
            ""
        );
    }

    #[test]
    fn a_line_break_is_refused_and_the_rest_written() {
        let d = tempfile::tempdir().unwrap();
        let r = crate::apply(
            &yaml("maculaos: {environment: {A: \"x\\ny\", B: ok}}"),
            &opts(d.path()),
        );
        assert_eq!(
            r.errors,
            vec![
                "environment: A: the value holds a line break, which /etc/environment cannot hold"
            ]
        );
        let text = fs::read_to_string(d.path().join("etc/environment")).unwrap();
        assert!(text.ends_with("B=\"ok\"\n"));
    }
}
