//! DNS servers (systemd-resolved) and NTP servers (systemd-timesyncd): one
//! drop-in each, removed when the list is empty so the image's defaults apply.

use crate::applier::{Applier, HEADER, ROOT_OWNER};
use maculaos_config::Config;

pub(crate) fn dns(config: &Config, a: &mut Applier) -> Result<(), String> {
    let servers: Vec<String> = config
        .maculaos
        .dns_nameservers
        .iter()
        .map(|s| s.to_string())
        .collect();
    dropin(
        a,
        "dns",
        &DropIn {
            path: "/etc/systemd/resolved.conf.d/90-maculaos.conf",
            section: "Resolve",
            key: "DNS",
            unit: "systemd-resolved",
        },
        &servers,
    )
}

pub(crate) fn ntp(config: &Config, a: &mut Applier) -> Result<(), String> {
    let servers = &config.maculaos.ntp.servers;
    // NTP= is a space-separated list: a server with a space would become two.
    if let Some(bad) = servers
        .iter()
        .find(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(format!(
            "`{bad}` is not a server name or address (one server per list item)"
        ));
    }
    dropin(
        a,
        "ntp",
        &DropIn {
            path: "/etc/systemd/timesyncd.conf.d/90-maculaos.conf",
            section: "Time",
            key: "NTP",
            unit: "systemd-timesyncd",
        },
        servers,
    )
}

struct DropIn {
    path: &'static str,
    section: &'static str,
    key: &'static str,
    /// Restarted (when running) to read the changed file.
    unit: &'static str,
}

fn dropin(a: &mut Applier, area: &str, d: &DropIn, values: &[String]) -> Result<(), String> {
    let changed = if values.is_empty() {
        a.remove_file(area, d.path)?
    } else {
        let text = format!("{HEADER}[{}]\n{}={}\n", d.section, d.key, values.join(" "));
        a.put_file(area, d.path, text.as_bytes(), 0o644, ROOT_OWNER)?
    };
    if changed && a.live() {
        a.restart_if_active(area, d.unit);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::tests::{apply_twice, opts, yaml};
    use std::fs;

    #[test]
    fn dns_and_ntp_dropins_come_and_go() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        let r = apply_twice(
            &yaml("maculaos: {dns_nameservers: [1.1.1.1, '2606:4700::1111'], ntp: {servers: [ntp1.example.com, 10.0.0.1]}}"),
            &o,
        );
        let resolved = d
            .path()
            .join("etc/systemd/resolved.conf.d/90-maculaos.conf");
        let timesyncd = d
            .path()
            .join("etc/systemd/timesyncd.conf.d/90-maculaos.conf");
        assert!(fs::read_to_string(&resolved)
            .unwrap()
            .ends_with("[Resolve]\nDNS=1.1.1.1 2606:4700::1111\n"));
        assert!(fs::read_to_string(&timesyncd)
            .unwrap()
            .ends_with("[Time]\nNTP=ntp1.example.com 10.0.0.1\n"));
        assert!(r
            .changes
            .contains(&"dns: wrote /etc/systemd/resolved.conf.d/90-maculaos.conf".to_string()));
        let r = apply_twice(&yaml(""), &o);
        assert!(r
            .changes
            .contains(&"ntp: removed /etc/systemd/timesyncd.conf.d/90-maculaos.conf".to_string()));
        assert!(!resolved.exists() && !timesyncd.exists());
    }

    #[test]
    fn an_ntp_server_with_a_space_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let r = crate::apply(
            &yaml("maculaos: {ntp: {servers: ['a b']}}"),
            &opts(d.path()),
        );
        assert_eq!(
            r.errors,
            vec!["ntp: `a b` is not a server name or address (one server per list item)"]
        );
    }
}
