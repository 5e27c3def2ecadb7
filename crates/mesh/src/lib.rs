//! The Macula mesh plane (plan §4.4, §4.9.5): a nats-server on every node,
//! configured from its roles; the realm's CA and node certificates; joining
//! a realm with a one-time token; and what `maculaos mesh` shows and sends.

pub mod client;
pub mod conf;
pub mod join;
pub mod known;
pub mod order;
pub mod overlay;
pub mod pki;
pub mod renew;
pub mod roster;
pub mod state;
pub mod status;

/// How services on the node connect (`EnvironmentFile=` or `source`); also
/// what `maculaos mesh` and `maculaos diag mesh` read without root. Written
/// by `maculaos apply` (the mesh step).
pub const ENV: &str = "/etc/maculaos/mesh.env";

/// The `KEY=value` lines of [`ENV`] under `root` (empty when it is missing).
pub fn read_env(root: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(root.join(ENV.trim_start_matches('/')))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
