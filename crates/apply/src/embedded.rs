//! The embedded services (`maculaos_embedded`): each enabled one gets its
//! drop-in and is enabled and started, restarted when its settings
//! changed; each other one is disabled and stopped, its drop-in removed.
//! Their firewall ports follow in the `firewall` step.

use crate::applier::{Applier, HEADER};
use maculaos_config::Config;

const AREA: &str = "embedded";

pub(crate) fn apply(config: &Config, a: &mut Applier) -> Result<(), String> {
    for e in maculaos_embedded::all(config) {
        let dropin = maculaos_embedded::dropin_path(e.unit);
        let text = e.enabled.then(|| format!("{HEADER}{}", e.dropin));
        let switched = crate::units::switch(
            a,
            &crate::units::Switch {
                area: AREA,
                unit: e.unit,
                dropin: &dropin,
                on: text.as_deref(),
                restart_on_change: true,
            },
        );
        // One service's failure does not stop the others.
        if let Err(why) = switched {
            a.error(AREA, format!("{} ({}): {why}", e.name, e.key));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{apply_twice, opts, yaml};
    use std::fs;

    const DROPIN: &str = "/etc/systemd/system/prometheus-node-exporter.service.d/50-maculaos.conf";

    #[test]
    fn metrics_on_then_off() {
        let d = tempfile::tempdir().unwrap();
        let o = opts(d.path());
        let at = d.path().join(DROPIN.trim_start_matches('/'));
        let r = apply_twice(&yaml(""), &o);
        assert!(!at.exists());
        assert!(
            !r.changes.iter().any(|c| c.starts_with("embedded:")),
            "{r:?}"
        );

        let r = apply_twice(
            &yaml("maculaos: {monitoring: {prometheus: {enabled: true, port: 9200}}}"),
            &o,
        );
        let text = fs::read_to_string(&at).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(text.contains("--web.listen-address=:9200 "), "{text}");
        // The firewall opens its port in the same run.
        assert_eq!(
            r.changes,
            vec![
                format!("embedded: wrote {DROPIN}"),
                "firewall: wrote /etc/maculaos/firewall.nft".to_string()
            ]
        );
        let rules = fs::read_to_string(d.path().join("etc/maculaos/firewall.nft")).unwrap();
        assert!(rules.contains("tcp dport 9200 accept"), "{rules}");

        let r = apply_twice(
            &yaml("maculaos: {monitoring: {prometheus: {enabled: false}}}"),
            &o,
        );
        assert!(!at.exists());
        assert_eq!(r.changes[0], format!("embedded: removed {DROPIN}"));
        let rules = fs::read_to_string(d.path().join("etc/maculaos/firewall.nft")).unwrap();
        assert!(!rules.contains("9200"), "{rules}");
    }
}
