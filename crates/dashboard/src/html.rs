//! The dashboard page: one self-contained HTML document (inline CSS, no
//! scripts, no external assets: the node may have no internet, and the
//! page must work in any browser pointed at an SSH tunnel). It reloads
//! itself every few seconds with a meta refresh, which needs no script.
//! Every value from the node is escaped: hostnames, unit names, check
//! messages and journal lines are not ours to trust.

use crate::{CheckResult, Disk, FleetView, Status};
use maculaos_info::{human_size, human_uptime};
use std::fmt::Write;

/// How often the page reloads itself, in seconds.
pub const REFRESH_SECONDS: u32 = 5;

pub use maculaos_web::escape;

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:60em;padding:0 1em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
.banner{padding:.6em 1em;border-radius:4px;font-weight:bold;margin:.6em 0}\
.ok{background:#d8f0dc;color:#14532d}.bad{background:#fbdada;color:#7f1d1d}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25em .6em;border-bottom:1px solid #ddd;vertical-align:top}\
.bar{background:#e5e5e5;border-radius:3px;height:.9em;width:16em;display:inline-block;vertical-align:middle}\
.bar span{display:block;height:100%;border-radius:3px}\
.low{background:#4caf50}.mid{background:#f0a020}.high{background:#d93025}.ro{background:#9e9e9e}\
.pass{color:#15803d}.fail{color:#b91c1c;font-weight:bold}.skip{color:#777}.warn{color:#b45309}\
.muted{color:#777}pre{white-space:pre-wrap;margin:0;font-family:inherit}\
";

/// The whole page for `status`.
pub fn render_html(status: &Status) -> String {
    let mut h = String::new();
    let host = escape(&status.hostname);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>MaculaOS — {host}</title><style>{STYLE}</style></head><body>\n\
         <h1>MaculaOS — {host}</h1>\n"
    );
    banner(&mut h, status);
    system(&mut h, status);
    resources(&mut h, status);
    services(&mut h, status);
    checks(&mut h, &status.checks);
    let _ = writeln!(h, "<h2>Mesh</h2><p>{}</p>", escape(&status.mesh.detail));
    events(&mut h, status);
    if !status.notes.is_empty() {
        h.push_str("<h2>Notes</h2><ul class=\"muted\">");
        for n in &status.notes {
            let _ = write!(h, "<li>{}</li>", escape(n));
        }
        h.push_str("</ul>\n");
    }
    let _ = write!(
        h,
        "<p class=\"muted\">Generated {}; refreshes every {REFRESH_SECONDS} s. \
         JSON: <a href=\"/api/v1/status\">/api/v1/status</a>; the realm's nodes: \
         <a href=\"/fleet\">/fleet</a></p>\n</body></html>\n",
        escape(&status.generated_at)
    );
    h
}

/// The fleet page (plan §4.12.2): the realm's summary line and one row per
/// node, from `fleet`; or why it could not be read.
pub fn render_fleet_html(fleet: Result<&FleetView, &str>) -> String {
    let mut h = String::new();
    let realm = escape(fleet.map(|f| f.realm.as_str()).unwrap_or("no fleet"));
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>MaculaOS fleet — {realm}</title><style>{STYLE}</style></head><body>\n\
         <h1>MaculaOS fleet — {realm}</h1>\n"
    );
    match fleet {
        Err(why) => {
            let _ = writeln!(h, "<div class=\"banner bad\">{}</div>", escape(why));
        }
        Ok(f) => {
            let _ = writeln!(
                h,
                "<div class=\"banner {}\">{}</div>",
                if f.all_healthy { "ok" } else { "bad" },
                escape(&f.summary)
            );
            if let Some(w) = &f.warning {
                let _ = writeln!(h, "<p class=\"warn\">{}</p>", escape(w));
            }
            h.push_str(
                "<table><tr><th>Node</th><th>Status</th><th>Version</th><th>Slot</th>\
                 <th>CPU</th><th>Memory</th><th>Disk</th><th>Last seen</th><th>Why</th></tr>",
            );
            for r in &f.rows {
                let class = match r.status.as_str() {
                    "healthy" => "pass",
                    "degraded" => "warn",
                    _ => "fail",
                };
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td class=\"{class}\">{}</td>",
                    escape(&r.node),
                    escape(&r.status)
                );
                for v in [
                    &r.version,
                    &r.slot,
                    &r.cpu,
                    &r.memory,
                    &r.disk,
                    &r.last_seen,
                    &r.why,
                ] {
                    let _ = write!(h, "<td>{}</td>", escape(v));
                }
                h.push_str("</tr>");
            }
            h.push_str("</table>\n");
        }
    }
    let _ = write!(
        h,
        "<p class=\"muted\">Refreshes every {REFRESH_SECONDS} s. JSON: \
         <a href=\"/api/v1/fleet\">/api/v1/fleet</a>; this node: <a href=\"/\">/</a></p>\n</body></html>\n"
    );
    h
}

fn banner(h: &mut String, s: &Status) {
    if s.healthy {
        h.push_str("<div class=\"banner ok\">✓ Healthy</div>\n");
        return;
    }
    let failing: Vec<&str> = s
        .checks
        .iter()
        .filter(|c| c.state == "fail")
        .map(|c| c.name.as_str())
        .collect();
    let _ = writeln!(
        h,
        "<div class=\"banner bad\">✗ Unhealthy: {} failing check(s): {}</div>",
        failing.len(),
        escape(&failing.join(", "))
    );
}

fn system(h: &mut String, s: &Status) {
    let or_dash = |v: &Option<String>| escape(v.as_deref().unwrap_or("–"));
    let _ = writeln!(
        h,
        "<table><tr><th>Version</th><td>MaculaOS {}</td></tr>\
         <tr><th>Slot</th><td>{}</td></tr>\
         <tr><th>Boot mode</th><td>{}</td></tr>\
         <tr><th>Uptime</th><td>{}</td></tr></table>",
        escape(&s.version),
        or_dash(&s.slot),
        or_dash(&s.mode),
        escape(&human_uptime(s.uptime_seconds)),
    );
}

/// A bar `pct` full, coloured by how worrying that is.
fn bar(pct: f64, read_only: bool) -> String {
    let class = match pct {
        _ if read_only => "ro",
        p if p >= 90.0 => "high",
        p if p >= 75.0 => "mid",
        _ => "low",
    };
    format!(
        "<span class=\"bar\"><span class=\"{class}\" style=\"width:{:.1}%\"></span></span>",
        pct.clamp(0.0, 100.0)
    )
}

fn resources(h: &mut String, s: &Status) {
    let c = &s.cpu;
    let busy = match (c.busy_percent, c.busy_window_seconds) {
        (Some(p), Some(w)) => format!("{} {p:.1}% busy over the last {w:.0} s", bar(p, false)),
        (Some(p), None) => format!("{} {p:.1}% busy", bar(p, false)),
        _ => "<span class=\"muted\">busy share on the next refresh</span>".into(),
    };
    let m = &s.memory;
    let _ = write!(
        h,
        "<h2>Resources</h2><table>\
         <tr><th>CPU</th><td>{} core(s), load {:.2} {:.2} {:.2}</td><td>{busy}</td></tr>\
         <tr><th>Memory</th><td>{} used of {} ({} available)</td><td>{} {:.1}%</td></tr>",
        c.cores,
        c.load1,
        c.load5,
        c.load15,
        escape(&human_size(m.used_bytes)),
        escape(&human_size(m.total_bytes)),
        escape(&human_size(m.available_bytes)),
        bar(m.used_percent, false),
        m.used_percent,
    );
    for d in &s.disks {
        disk(h, d);
    }
    h.push_str("</table>\n");
}

fn disk(h: &mut String, d: &Disk) {
    let what = if d.read_only {
        format!("{} (read-only)", human_size(d.size_bytes))
    } else {
        format!(
            "{} used of {} ({} free)",
            human_size(d.used_bytes),
            human_size(d.size_bytes),
            human_size(d.available_bytes)
        )
    };
    let _ = write!(
        h,
        "<tr><th>Disk {}</th><td>{}</td><td>{} {:.1}%</td></tr>",
        escape(&d.mountpoint),
        escape(&what),
        bar(d.used_percent, d.read_only),
        d.used_percent
    );
}

fn services(h: &mut String, s: &Status) {
    if s.services.is_empty() {
        return;
    }
    h.push_str("<h2>Services</h2><table><tr><th>Unit</th><th>State</th></tr>");
    for u in &s.services {
        let class = match u.active_state.as_str() {
            "active" => "pass",
            "failed" => "fail",
            "activating" | "deactivating" | "reloading" => "warn",
            _ => "skip",
        };
        let sub = if u.sub_state.is_empty() {
            String::new()
        } else {
            format!(" ({})", escape(&u.sub_state))
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"{class}\">{}{sub}</td></tr>",
            escape(&u.unit),
            escape(&u.active_state)
        );
    }
    h.push_str("</table>\n");
}

fn checks(h: &mut String, checks: &[CheckResult]) {
    h.push_str("<h2>Checks</h2>");
    if checks.is_empty() {
        h.push_str("<p class=\"muted\">No results yet.</p>\n");
        return;
    }
    h.push_str("<table><tr><th></th><th>Check</th><th>Result</th></tr>");
    for c in checks {
        let (mark, class) = match c.state.as_str() {
            "pass" => ("✓", "pass"),
            "fail" => ("✗", "fail"),
            "warn" => ("!", "warn"),
            _ => ("–", "skip"),
        };
        let _ = write!(
            h,
            "<tr><td class=\"{class}\" title=\"{}\">{mark}</td><td>{}</td><td><pre>{}</pre></td></tr>",
            escape(&c.state),
            escape(&c.name),
            escape(&c.message)
        );
    }
    h.push_str("</table>\n");
}

fn events(h: &mut String, s: &Status) {
    h.push_str("<h2>Recent events</h2>");
    if s.events.is_empty() {
        h.push_str("<p class=\"muted\">None in this boot.</p>\n");
        return;
    }
    h.push_str("<table><tr><th>Time</th><th>Event</th><th></th></tr>");
    for e in &s.events {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(e.time.as_deref().unwrap_or("–")),
            escape(e.key.as_deref().unwrap_or("")),
            escape(&e.message)
        );
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{checks, fake_root};
    use crate::{collect, Collector, Event};

    #[test]
    fn escaping() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_page_escapes_what_the_node_says_and_refreshes() {
        let d = fake_root();
        let mut c = Collector::new(d.path(), vec!["<evil>.service".into()]);
        let mut s = collect(&mut c, &checks());
        s.hostname = "node<script>".into();
        s.events.push(Event {
            time: Some("2024-01-01T00:00:00Z".into()),
            key: Some("restart".into()),
            message: "restarting \"a&b\"".into(),
        });
        let page = render_html(&s);
        assert!(
            page.contains("<meta http-equiv=\"refresh\" content=\"5\">"),
            "{page}"
        );
        assert!(page.contains("<title>MaculaOS — node&lt;script&gt;</title>"));
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<evil>"));
        assert!(page.contains("&lt;evil&gt;.service"));
        assert!(page.contains("GET http://127.0.0.1/ &lt;refused&gt;"));
        assert!(page.contains("restarting &quot;a&amp;b&quot;"));
        assert!(page.contains("✗ Unhealthy: 1 failing check(s): web"));
        for mark in ["✓</td>", "✗</td>", "–</td>", "!</td>"] {
            assert!(page.contains(mark), "{mark}");
        }
        assert!(page.contains("MaculaOS 1.2.3"));
        assert!(page.contains("1 h 2 min"), "uptime");
        assert!(page.contains("Disk /var"));
        assert!(page.contains("no NATS server on this node"));
        assert!(page.contains("busy share on the next refresh"));
        assert!(page.ends_with("</html>\n"));
    }

    #[test]
    fn a_healthy_page() {
        let d = fake_root();
        let mut c = Collector::new(d.path(), Vec::new());
        let s = collect(&mut c, &checks()[..1]);
        let page = render_html(&s);
        assert!(page.contains("banner ok\">✓ Healthy"));
        assert!(!page.contains("<h2>Services</h2>"));
        assert!(page.contains("None in this boot."));
    }

    #[test]
    fn bars() {
        assert!(bar(95.0, false).contains("class=\"high\" style=\"width:95.0%\""));
        assert!(bar(80.0, false).contains("\"mid\""));
        assert!(bar(10.0, false).contains("\"low\""));
        assert!(bar(100.0, true).contains("\"ro\""));
        assert!(bar(150.0, false).contains("width:100.0%"));
    }
}
