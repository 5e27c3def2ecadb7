//! Every way a node reads configuration text, on arbitrary input: the three
//! file formats, the kernel command line, and — for what parses — the merge,
//! the typed read and the checks across keys. None of it may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use maculaos_boot::Cmdline;
use maculaos_config::load::{check, merge};
use maculaos_config::sources::{from_cmdline, parse, Format, Source};
use maculaos_config::{Config, Problem};
use serde::Deserialize;

/// Merge, read as a `Config`, check; render whatever is wrong the way the
/// CLI does, and write the merged value back out as `save_last_good` would.
fn merge_and_check(sources: &[Source]) {
    let (value, prov) = merge(sources);
    match Config::deserialize(value.clone()) {
        Ok(config) => {
            let problems = check(&config, &prov);
            let _ = maculaos_config::error::render(&problems);
            let _ = config.network();
            let _ = config.ssh_keys();
            let _ = config.node_labels();
            let _ = config.k3s_role();
            let _ = config.maculaos.mesh.effective_roles();
            if problems.is_empty() {
                let _ = serde_yaml_ng::to_string(&value);
            }
        }
        Err(e) => {
            let _ = Problem::from_yaml("merged configuration", &e).to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parsed = Vec::new();
    for (name, format) in [
        ("/var/lib/maculaos/config.yaml", Format::Maculaos),
        ("user-data", Format::UserData),
        ("meta-data", Format::MetaData),
    ] {
        match parse(name, &text, format) {
            Ok(source) => {
                merge_and_check(std::slice::from_ref(&source));
                parsed.push(source);
            }
            Err(p) => {
                let _ = p.to_string();
            }
        }
    }
    match from_cmdline(&Cmdline::parse(&text)) {
        Ok(source) => {
            merge_and_check(std::slice::from_ref(&source));
            parsed.push(source);
        }
        Err(p) => {
            let _ = p.to_string();
        }
    }
    // All that parsed, in merge order, as `load` would merge them.
    if parsed.len() > 1 {
        merge_and_check(&parsed);
    }
});
