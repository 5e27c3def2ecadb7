//! `maculaos firewall show|allow|deny` (guide "Security: Firewall"). What
//! is open comes from what `maculaos apply` loaded (`maculaos_firewall`);
//! `allow` and `deny` change `maculaos.security.firewall.allow` in
//! `config.d/80-firewall.yaml`, so a change survives reboots like the rest
//! of the configuration, and apply loads it.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use maculaos_config::values::{Cidr, FirewallPort};
use maculaos_config::{AllowRule, Paths, Using};
use maculaos_firewall::{Applied, STATE_PATH};
use std::path::Path;
use std::process::ExitCode;

/// Where `allow` and `deny` keep the list.
const FILE: &str = "/var/lib/maculaos/config.d/80-firewall.yaml";

#[derive(Subcommand)]
pub enum Command {
    /// The ports open on this node: who may reach each, and why (a role,
    /// SSH, the wizard, `firewall.allow`).
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Open PORT/PROTO (`8080/tcp`, `9000-9010/udp`) to anyone, or to the
    /// networks given with --from.
    Allow {
        port: FirewallPort,
        /// A source network (`10.0.0.0/8`); repeat for more.
        #[arg(long, value_name = "CIDR")]
        from: Vec<Cidr>,
    },
    /// Close PORT/PROTO again (what `allow` opened; every entry for it).
    Deny { port: FirewallPort },
}

pub fn needs_root(cmd: &Command) -> bool {
    !matches!(cmd, Command::Show { .. })
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Show { json } => show(json),
        Command::Allow { port, from } => change(|list| {
            let rule = AllowRule {
                port: port.clone(),
                from: from.clone(),
            };
            if list.contains(&rule) {
                return Err(format!("{} is already allowed", describe(&rule)));
            }
            list.push(rule);
            Ok(format!(
                "allowed {}",
                describe(list.last().expect("just pushed"))
            ))
        }),
        Command::Deny { port } => change(|list| {
            let before = list.len();
            list.retain(|r| r.port != port);
            if list.len() == before {
                return Err(format!(
                    "{port} is not in firewall.allow (`maculaos firewall show` says what opened each port)"
                ));
            }
            Ok(format!("denied {port}"))
        }),
    }
}

fn describe(r: &AllowRule) -> String {
    if r.from.is_empty() {
        format!("{} from anyone", r.port)
    } else {
        let from: Vec<String> = r.from.iter().map(|c| c.to_string()).collect();
        format!("{} from {}", r.port, from.join(", "))
    }
}

/// Change the effective `allow` list with `edit`, keep it in [`FILE`],
/// check that the configuration takes it (else put the file back), apply.
fn change(edit: impl FnOnce(&mut Vec<AllowRule>) -> Result<String, String>) -> Result<ExitCode> {
    let paths = Paths::system();
    let loaded = maculaos_config::load(&paths);
    if loaded.using != Using::Current {
        bail!(
            "the configuration has problems (`maculaos config check`): fix them first; nothing was changed"
        );
    }
    let mut list = loaded.config.maculaos.security.firewall.allow.clone();
    let said = edit(&mut list).map_err(|e| anyhow::anyhow!(e))?;
    let doc = serde_json::json!({"maculaos": {"security": {"firewall": {"allow": list}}}});
    let text = format!(
        "# Written by `maculaos firewall allow/deny`: the whole list, which replaces any\n\
         # `maculaos.security.firewall.allow` of config.yaml (lists replace).\n{}",
        serde_yaml_ng::to_string(&doc)?
    );
    let path = Path::new(FILE);
    let old = std::fs::read_to_string(path).ok();
    crate::services::write_definition(path, &text)?;
    let again = maculaos_config::load(&paths);
    if again.using != Using::Current || again.config.maculaos.security.firewall.allow != list {
        match &old {
            Some(t) => crate::services::write_definition(path, t)?,
            None => std::fs::remove_file(path)
                .with_context(|| format!("removing {}", path.display()))?,
        }
        let why: Vec<String> = again.problems.iter().map(|p| p.to_string()).collect();
        bail!(
            "the configuration does not take it ({}); {FILE} is as it was",
            why.join("; ")
        );
    }
    println!("{FILE}: {said}");
    if !crate::services::apply()? {
        bail!("maculaos apply reported errors (above): the firewall may not have changed");
    }
    Ok(ExitCode::SUCCESS)
}

fn show(json: bool) -> Result<ExitCode> {
    let text = match std::fs::read_to_string(STATE_PATH) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no firewall was loaded on this boot: `sudo maculaos apply` loads it (its errors say why not)")
        }
        Err(e) => return Err(e).with_context(|| format!("reading {STATE_PATH}")),
    };
    let applied: Applied =
        serde_json::from_str(&text).with_context(|| format!("reading {STATE_PATH}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&applied)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !applied.enabled {
        println!("Firewall: off (maculaos.security.firewall.enabled: false): every port is open");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Firewall: on; what is not listed is {}",
        if applied.policy == "drop" {
            "dropped"
        } else {
            "let in (default_policy: accept)"
        }
    );
    println!("{:<16} {:<24} WHY", "PORT", "FROM");
    for o in &applied.openings {
        let from = if o.from.is_empty() {
            "anyone".to_string()
        } else {
            o.from
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let limit = o
            .limit_per_minute
            .map(|n| format!(" ({n} new connections a minute per address)"))
            .unwrap_or_default();
        println!("{:<16} {:<24} {}{limit}", o.port.to_string(), from, o.why);
    }
    if let Some(i) = &applied.overlay {
        println!(
            "{:<16} {:<24} mesh: the WireGuard overlay (its peers are the keys maculaos.mesh.wireguard.peers lists)",
            format!("all on {i}"),
            "its peers"
        );
    }
    println!(
        "Always let in: answers to the node's own traffic, loopback, ICMP (echo \
         rate-limited), DHCP, mDNS (5353/udp), and the ports services publish \
         (`maculaos services`)."
    );
    Ok(ExitCode::SUCCESS)
}
