//! `maculaos diag`: what an operator (or support) asks first when a node
//! misbehaves (plan §4.10.4).
//!
//! * [`network`]: interfaces, default gateway, DNS, time sync;
//! * [`storage`]: root and data partition, every mounted block filesystem,
//!   the running slot, SMART;
//! * [`mesh`]: the configured realm and roles (the mesh itself is not built
//!   yet, and the report says so);
//! * [`support_bundle`]: a tar.gz of all of it plus logs, the configuration
//!   with its secrets redacted ([`redact`]), health and update state.
//!
//! Files are read under `root` (`/` on a node, a directory in tests);
//! commands (`ip`, `ping`, `journalctl`…) describe the running system. Every
//! command goes through [`maculaos_runner::Cmd`]; a missing or failing one
//! becomes a line (or a note in the bundle) that says so, never a panic or
//! an abort.
//!
//! Each check is a [`Line`]: ✓ (passed), ✗ (failed) or - (information, or
//! not checked), with what was looked at and what was found.

mod bundle;
mod config;
mod mesh;
mod network;
mod redact;
mod status;
mod storage;
mod tools;

use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

pub use bundle::support_bundle;
pub use mesh::mesh;
pub use network::{
    default_resolve_name, hosts_file_has, network, network_resolving, parse_default_routes,
    parse_getent_hosts, parse_ip_addr, parse_ntp_synchronized, parse_resolv_conf, IfAddrs, Route,
};
pub use redact::{redact, redact_file, REDACTED};
pub use status::{
    network_status, parse_routes, render_status, NetworkStatus, RouteEntry, WgStatus,
};
pub use storage::{disk_of_partition, parse_smartctl, storage, usage_percent, SmartHealth};

/// One check of a diagnostic report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// `Some(true)` passed, `Some(false)` failed, `None` information or not
    /// checked (nothing to judge, or the tool to judge it is missing).
    pub ok: Option<bool>,
    /// What was looked at: `Interface eth0`, `DNS`, `SMART (sda)`.
    pub what: String,
    /// What was found: `UP, 10.0.2.15/24`.
    pub detail: String,
}

impl Line {
    pub fn pass(what: impl Into<String>, detail: impl Into<String>) -> Line {
        Line::new(Some(true), what, detail)
    }
    pub fn fail(what: impl Into<String>, detail: impl Into<String>) -> Line {
        Line::new(Some(false), what, detail)
    }
    pub fn info(what: impl Into<String>, detail: impl Into<String>) -> Line {
        Line::new(None, what, detail)
    }
    pub fn new(ok: Option<bool>, what: impl Into<String>, detail: impl Into<String>) -> Line {
        Line {
            ok,
            what: what.into(),
            detail: detail.into(),
        }
    }
    /// `✓`, `✗` or `-`.
    pub fn mark(&self) -> &'static str {
        match self.ok {
            Some(true) => "✓",
            Some(false) => "✗",
            None => "-",
        }
    }
}

/// `  ✓ Interface eth0: UP, 10.0.2.15/24`
impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "  {} {}", self.mark(), self.what)
        } else {
            write!(f, "  {} {}: {}", self.mark(), self.what, self.detail)
        }
    }
}

/// The report for the terminal: one line per check.
pub fn render(lines: &[Line]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Whether any check failed (for the exit code; `-` lines do not count).
pub fn any_failed(lines: &[Line]) -> bool {
    lines.iter().any(|l| l.ok == Some(false))
}

/// A failure that stops the support bundle from being written at all (a
/// tool that is missing or fails only leaves a note inside it).
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DiagError {
    fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> DiagError {
        let path = path.into();
        move |source| DiagError::Io { what, path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_render_like_the_plan() {
        let lines = vec![
            Line::pass("Interface eth0", "UP, 10.0.2.15/24"),
            Line::fail("DNS", "no nameserver configured"),
            Line::info("SMART", "not available (virtio disk)"),
            Line::info("Mesh status", ""),
        ];
        assert_eq!(
            render(&lines),
            "  ✓ Interface eth0: UP, 10.0.2.15/24\n  ✗ DNS: no nameserver configured\n  - SMART: not available (virtio disk)\n  - Mesh status\n"
        );
        assert!(any_failed(&lines));
        assert!(!any_failed(&lines[2..]));
    }

    #[test]
    fn lines_serialize_for_json() {
        let v = serde_json::to_value(vec![
            Line::pass("Interface eth0", "UP"),
            Line::info("SMART", "n/a"),
        ])
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"ok": true, "what": "Interface eth0", "detail": "UP"},
                {"ok": null, "what": "SMART", "detail": "n/a"}
            ])
        );
    }
}
