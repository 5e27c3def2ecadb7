//! `maculaos diag network|storage|mesh` (✓/✗ lines, maculaos-diag),
//! `maculaos diag --full -o FILE` (the support bundle) and `maculaos logs`.

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Area {
    Network,
    Storage,
    Mesh,
}

#[derive(ClapArgs)]
pub struct Args {
    /// What to check (all three when left out).
    area: Option<Area>,
    /// Write a support bundle (tar.gz: system info, journals of this and the
    /// previous boot, the config with secrets redacted, health, slots and
    /// updates, dmesg) instead; `-o -` writes it to standard output.
    #[arg(long, requires = "output", conflicts_with = "area")]
    full: bool,
    /// Where the support bundle goes.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// For the network checks: the name to resolve (default: the first
    /// bootstrap peer, else the update server).
    #[arg(long)]
    resolve: Option<String>,
    /// Machine-readable output.
    #[arg(long, conflicts_with = "full")]
    json: bool,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let root = Path::new("/");
    if args.full {
        return bundle(args.output.as_deref().unwrap_or(Path::new("-")));
    }
    let areas: Vec<(&str, Vec<maculaos_diag::Line>)> = [Area::Network, Area::Storage, Area::Mesh]
        .into_iter()
        .filter(|a| args.area.is_none_or(|want| want == *a))
        .map(|a| match a {
            Area::Network => (
                "network",
                maculaos_diag::network_resolving(root, args.resolve.as_deref()),
            ),
            Area::Storage => ("storage", maculaos_diag::storage(root)),
            Area::Mesh => ("mesh", maculaos_diag::mesh(root)),
        })
        .collect();
    let failed = areas.iter().any(|(_, l)| maculaos_diag::any_failed(l));
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> = areas
            .iter()
            .map(|(n, l)| Ok(((*n).to_string(), serde_json::to_value(l)?)))
            .collect::<Result<_, serde_json::Error>>()?;
        println!("{}", serde_json::to_string_pretty(&map)?);
    } else {
        for (name, lines) in &areas {
            println!("{name}:");
            print!("{}", maculaos_diag::render(lines));
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `maculaos network status`: interfaces, routes, DNS, the WireGuard
/// overlay and its peers, the firewall, and the checks of `diag network`;
/// exit code 1 when a check fails.
pub fn network_status(resolve: Option<&str>, json: bool) -> Result<ExitCode> {
    let s = maculaos_diag::network_status(Path::new("/"), resolve);
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        print!("{}", maculaos_diag::render_status(&s, now));
    }
    Ok(if maculaos_diag::any_failed(&s.checks) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn bundle(out: &Path) -> Result<ExitCode> {
    let to_stdout = out == Path::new("-");
    let tmp_dir;
    let path = if to_stdout {
        tmp_dir = tempfile::tempdir().context("making a scratch directory")?;
        tmp_dir.path().join("support-bundle.tar.gz")
    } else {
        out.to_path_buf()
    };
    // Progress on stderr, so `-o -` keeps stdout for the archive.
    let members = maculaos_diag::support_bundle(Path::new("/"), &path, |step| {
        eprintln!("  {step}");
    })?;
    if to_stdout {
        let mut f = std::fs::File::open(&path)?;
        std::io::copy(&mut f, &mut std::io::stdout().lock()).context("writing the bundle")?;
    } else {
        eprintln!("wrote {} with:", path.display());
        for m in &members {
            eprintln!("  {m}");
        }
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(ClapArgs)]
pub struct LogsArgs {
    /// A deployed service, a unit (`ssh`, `maculaos-apply`…), or `network` for the units that
    /// bring the network up and name the node on it; all of the journal
    /// when left out.
    unit: Option<String>,
    /// Keep printing new entries.
    #[arg(short, long)]
    follow: bool,
    /// How many recent lines.
    #[arg(short = 'n', long, default_value_t = 100)]
    lines: u32,
    /// Only this boot.
    #[arg(short, long)]
    boot: bool,
}

/// The journal units `maculaos logs NAME` shows: a group's, or NAME itself.
fn units_of(name: Option<&str>) -> Vec<&str> {
    match name {
        None => Vec::new(),
        Some("network") => NETWORK_UNITS.to_vec(),
        Some(unit) => vec![unit],
    }
}

/// `maculaos logs NAME` for a deployed service: its unit.
fn service_unit(name: &str) -> Option<String> {
    let unit = format!("{}{name}.service", maculaos_services::UNIT_PREFIX);
    Path::new(maculaos_services::UNIT_DIR)
        .join(&unit)
        .exists()
        .then_some(unit)
}

/// `maculaos logs network`: addresses and links, names, time, mDNS.
const NETWORK_UNITS: &[&str] = &[
    "systemd-networkd",
    "systemd-resolved",
    "chrony",
    "avahi-daemon",
];

/// `maculaos logs [UNIT] [-f]`: the journal, through journalctl (its exit
/// status is ours).
pub fn logs(args: &LogsArgs) -> Result<ExitCode> {
    let mut cmd = std::process::Command::new("journalctl");
    cmd.args(["--no-pager", "-n", &args.lines.to_string()]);
    let service = args.unit.as_deref().and_then(service_unit);
    match &service {
        Some(unit) => {
            cmd.args(["-u", unit]);
        }
        None => {
            for u in units_of(args.unit.as_deref()) {
                cmd.args(["-u", u]);
            }
        }
    }
    if args.follow {
        cmd.arg("-f");
    }
    if args.boot {
        cmd.args(["-b", "0"]);
    }
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => bail!("running journalctl: {e} (is systemd's journal installed?)"),
    };
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
