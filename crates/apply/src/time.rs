//! The node's clock (`maculaos.ntp`, `maculaos.edge.time_sync`): chrony's
//! sources, and its answering NTP for the LAN. The image ships chrony's
//! main file, which reads these; the sources file of the default
//! configuration ships too (the same text), so a default boot changes
//! nothing. A change restarts chrony when it runs (at boot, apply runs
//! before it starts).

use crate::applier::{Applier, HEADER, ROOT_OWNER};
use maculaos_config::Config;

/// The servers chrony asks.
pub(crate) const SOURCES: &str = "/etc/chrony/sources.d/maculaos.sources";
/// Serving the LAN: who may ask, and the local clock as the last resort.
pub(crate) const SERVE: &str = "/etc/chrony/conf.d/maculaos.conf";
pub(crate) const UNIT: &str = "chrony.service";
/// Debian's default, when the configuration names no server.
const DEFAULT_POOL: &str = "2.debian.pool.ntp.org";
const AREA: &str = "ntp";

/// The sources file's text (without the header).
pub(crate) fn sources(config: &Config) -> String {
    if !config.maculaos.edge.time_sync.enabled {
        return "# maculaos.edge.time_sync.enabled is false: the clock is not set from NTP.\n"
            .to_string();
    }
    let servers = config.time_servers();
    if servers.is_empty() {
        return format!("pool {DEFAULT_POOL} iburst\n");
    }
    servers
        .iter()
        // An address is one server; a name may stand for several (a
        // pool's), and is looked up again when its servers stop answering.
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(_) => format!("server {s} iburst\n"),
            Err(_) => format!("pool {s} iburst\n"),
        })
        .collect()
}

/// The serving file's text, when the node serves the LAN.
pub(crate) fn serve(config: &Config) -> Option<String> {
    let t = &config.maculaos.edge.time_sync;
    if !(t.enabled && t.serve_to_lan) {
        return None;
    }
    let mut text = String::new();
    if t.allow_from.is_empty() {
        text.push_str("allow\n");
    }
    for c in &t.allow_from {
        text.push_str(&format!("allow {c}\n"));
    }
    // Without a reachable server the LAN still gets one time, this node's,
    // marked as far from a reference clock (stratum 10) so that any
    // synchronised server a client also knows is preferred. A client that
    // asks too often gets fewer answers (chrony's default rate limit).
    text.push_str("local stratum 10\nratelimit\n");
    Some(text)
}

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    let text = format!("{HEADER}{}", sources(config));
    let mut changed = a.put_file(AREA, SOURCES, text.as_bytes(), 0o644, ROOT_OWNER)?;
    changed |= match serve(config) {
        Some(text) => {
            let text = format!("{HEADER}{text}");
            a.put_file(AREA, SERVE, text.as_bytes(), 0o644, ROOT_OWNER)?
        }
        None => a.remove_file(AREA, SERVE)?,
    };
    if changed && a.live() {
        a.restart_if_active(AREA, UNIT);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{apply_twice, opts, yaml};
    use std::fs;

    #[test]
    fn the_image_ships_the_default_sources() {
        // A default boot must find nothing to write (and chrony reads the
        // shipped file when apply could not run).
        let shipped = include_str!("../../../image/overlay/etc/chrony/sources.d/maculaos.sources");
        assert_eq!(shipped, format!("{HEADER}{}", sources(&yaml(""))));
        let main = include_str!("../../../image/overlay/etc/chrony/chrony.conf");
        assert!(
            main.contains("\nsourcedir /etc/chrony/sources.d\n"),
            "{main}"
        );
        assert!(main.contains("\nconfdir /etc/chrony/conf.d\n"), "{main}");
        assert!(!main.contains("\npool "), "{main}");
    }

    #[test]
    fn servers_from_either_list_and_serving_comes_and_goes() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        let at = |p: &str| d.path().join(p.trim_start_matches('/'));
        let r = apply_twice(
            &yaml("maculaos: {ntp: {servers: [ntp1.example.com, 10.0.0.1]}}"),
            &o,
        );
        assert!(fs::read_to_string(at(SOURCES))
            .unwrap()
            .ends_with("\npool ntp1.example.com iburst\nserver 10.0.0.1 iburst\n"));
        assert!(
            r.changes.contains(&format!("ntp: wrote {SOURCES}")),
            "{r:?}"
        );
        assert!(!at(SERVE).exists());

        apply_twice(
            &yaml("maculaos: {edge: {time_sync: {servers: ['fd00::1'], serve_to_lan: true, allow_from: [192.168.1.0/24]}}}"),
            &o,
        );
        assert!(fs::read_to_string(at(SOURCES))
            .unwrap()
            .ends_with("\nserver fd00::1 iburst\n"));
        assert!(fs::read_to_string(at(SERVE))
            .unwrap()
            .ends_with("\nallow 192.168.1.0/24\nlocal stratum 10\nratelimit\n"));

        let r = apply_twice(&yaml(""), &o);
        assert!(
            r.changes.contains(&format!("ntp: removed {SERVE}")),
            "{r:?}"
        );
        assert!(!at(SERVE).exists());
        assert!(fs::read_to_string(at(SOURCES))
            .unwrap()
            .ends_with("\npool 2.debian.pool.ntp.org iburst\n"));

        apply_twice(&yaml("maculaos: {edge: {time_sync: {enabled: false}}}"), &o);
        let off = fs::read_to_string(at(SOURCES)).unwrap();
        assert!(
            !off.contains("\npool") && !off.contains("\nserver"),
            "{off}"
        );
    }

    #[test]
    fn serving_everyone_is_one_allow() {
        let c = yaml("maculaos: {edge: {time_sync: {serve_to_lan: true}}}");
        assert_eq!(serve(&c).unwrap(), "allow\nlocal stratum 10\nratelimit\n");
    }
}
