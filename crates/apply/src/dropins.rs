//! DNS servers (systemd-resolved): a drop-in, removed when the list is
//! empty so the image's defaults apply.

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
    fn dns_dropin_comes_and_goes() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        let r = apply_twice(
            &yaml("maculaos: {dns_nameservers: [1.1.1.1, '2606:4700::1111']}"),
            &o,
        );
        let resolved = d
            .path()
            .join("etc/systemd/resolved.conf.d/90-maculaos.conf");
        assert!(fs::read_to_string(&resolved)
            .unwrap()
            .ends_with("[Resolve]\nDNS=1.1.1.1 2606:4700::1111\n"));
        assert!(r
            .changes
            .contains(&"dns: wrote /etc/systemd/resolved.conf.d/90-maculaos.conf".to_string()));
        apply_twice(&yaml(""), &o);
        assert!(!resolved.exists());
    }
}
