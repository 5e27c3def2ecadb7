//! `maculaos apply`: refresh the datasources, load and check the
//! configuration, tell the operator about errors where they will look
//! (console, login banner), and run the applicators.

use anyhow::Result;
use maculaos_config::datasource;
use maculaos_config::{Paths, Using};
use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Print what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Boot-time run: also runs `boot_cmd` (maculaos-apply.service).
    #[arg(long)]
    boot: bool,
    /// Fetch the configuration named by `maculaos.config_url=` first
    /// (maculaos-config-url.service, once the network is up).
    #[arg(long)]
    fetch_url: bool,
}

/// Shown at SSH login (pam_motd) while the configuration has errors.
const MOTD: &str = "/run/motd.d/50-maculaos-config";
/// Shown above the console login prompt (agetty).
const ISSUE: &str = "/etc/issue.d/50-maculaos-config.issue";

/// Held for a whole run: two applies at once (an operator's and one a new
/// mesh roster started) would each write what they loaded, and the one
/// that finished last, possibly from the older configuration, would win.
const LOCK: &str = "/run/maculaos/apply.lock";

/// Wait for any other apply to finish; the lock goes with the process.
fn lock() -> Result<nix::fcntl::Flock<fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::OpenOptionsExt;
    let path = Path::new(LOCK);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let open = || {
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
    };
    let f = open().map_err(|e| anyhow::anyhow!("{LOCK}: {e}"))?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((f, _)) => {
            println!("maculaos apply: waiting for another apply to finish");
            Flock::lock(f, FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow::anyhow!("locking {LOCK}: {e}"))
        }
    }
}

pub fn run(args: &Args) -> Result<ExitCode> {
    // Before the configuration is loaded: a run that waited loads what the
    // one before it left.
    let _lock = if args.dry_run { None } else { Some(lock()?) };
    let started = Instant::now();
    let paths = Paths::system();
    let mut failed = false;
    if !args.dry_run {
        failed |= refresh_datasources(&paths, args.fetch_url);
    }
    let loaded = maculaos_config::load(&paths);
    let config_time = started.elapsed();
    if !loaded.problems.is_empty() {
        failed = true;
        let using = match loaded.using {
            Using::LastGood => "the last good configuration",
            _ => "the image defaults",
        };
        println!("maculaos apply: CONFIGURATION ERROR — applying {using} instead:");
        for p in &loaded.problems {
            println!("maculaos apply:   {p}");
        }
    }
    if !args.dry_run {
        banners(&loaded.problems);
        match maculaos_config::save_last_good(&paths, &loaded) {
            Ok(true) => println!("maculaos apply: saved as the last good configuration"),
            Ok(false) => {}
            Err(e) => {
                failed = true;
                println!(
                    "maculaos apply: cannot save {}: {e}",
                    paths.last_good().display()
                );
            }
        }
    }
    if !args.dry_run {
        failed |= mark_configured(&paths);
    }
    let opts = maculaos_apply::Options::for_root(Path::new("/"), args.dry_run, args.boot);
    let report = maculaos_apply::apply(&loaded.config, &opts);
    for c in &report.changes {
        println!("maculaos apply: {c}");
    }
    for n in &report.notes {
        println!("maculaos apply: {n}");
    }
    for e in &report.errors {
        println!("maculaos apply: ERROR: {e}");
    }
    failed |= !report.errors.is_empty();
    if report.changes.is_empty() {
        println!("maculaos apply: nothing to change");
    }
    let mut timings = vec![("config", config_time)];
    timings.extend(report.timings.iter().copied());
    if let Some(slow) = slow_steps(&timings) {
        println!("maculaos apply: slowest steps: {slow}");
    }
    println!(
        "maculaos apply: done in {} ms",
        started.elapsed().as_millis()
    );
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The steps that took at least half a second, slowest first
/// (`hostname 1.2 s, config 0.6 s`): where a slow boot's time went.
fn slow_steps(timings: &[(&str, Duration)]) -> Option<String> {
    let mut slow: Vec<_> = timings
        .iter()
        .filter(|(_, d)| *d >= Duration::from_millis(500))
        .collect();
    slow.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
    (!slow.is_empty()).then(|| {
        slow.iter()
            .map(|(name, d)| format!("{name} {:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Copy the NoCloud drive and, when asked, the config URL into the node's
/// datasource copies. Returns whether anything failed.
/// A node an operator configured (a config file, a NoCloud drive, a URL)
/// needs no first-boot wizard: set its flag. Returns whether that failed.
fn mark_configured(paths: &Paths) -> bool {
    let flag = paths.configured_flag();
    if flag.exists() || !paths.has_operator_config() {
        return false;
    }
    match fs::write(&flag, b"") {
        Ok(()) => {
            println!(
                "maculaos apply: the node has a configuration: first-boot wizard off ({})",
                flag.display()
            );
            false
        }
        Err(e) => {
            println!("maculaos apply: cannot create {}: {e}", flag.display());
            true
        }
    }
}

fn refresh_datasources(paths: &Paths, fetch_url: bool) -> bool {
    let mut r = datasource::Refresh::default();
    if let Some(dev) = datasource::find_nocloud_device() {
        let x = datasource::refresh_nocloud(paths, &dev, Path::new("/run/maculaos/cidata"));
        r.notes.extend(x.notes);
        r.errors.extend(x.errors);
    }
    if fetch_url {
        let cmdline =
            maculaos_boot::Cmdline::parse(&fs::read_to_string(paths.cmdline()).unwrap_or_default());
        match cmdline.get("maculaos.config_url") {
            Some(url) => {
                let url = maculaos_config::sources::percent_decode(url);
                let x = datasource::refresh_url(paths, &url, Duration::from_secs(60));
                r.notes.extend(x.notes);
                r.errors.extend(x.errors);
            }
            None => r
                .notes
                .push("no maculaos.config_url on the kernel command line".into()),
        }
    }
    for n in &r.notes {
        println!("maculaos apply: {n}");
    }
    for e in &r.errors {
        println!("maculaos apply: ERROR: {e}");
    }
    !r.errors.is_empty()
}

/// Put the configuration errors in the login banners, or take them away.
fn banners(problems: &[maculaos_config::Problem]) {
    let files = [Path::new(MOTD), Path::new(ISSUE)];
    if problems.is_empty() {
        for f in files {
            let _ = fs::remove_file(f);
        }
        return;
    }
    let mut text = String::from(
        "\n*** MaculaOS: the configuration has errors; the node runs with its last good one.\n",
    );
    for p in problems {
        text.push_str(&format!("***   {p}\n"));
    }
    text.push_str("*** Details: `maculaos health`; fix the file, then `sudo maculaos apply`.\n\n");
    for f in files {
        if let Some(dir) = f.parent() {
            let _ = fs::create_dir_all(dir);
        }
        // agetty reads backslash escapes in issue files: keep them literal.
        let body = if f == Path::new(ISSUE) {
            text.replace('\\', "\\\\")
        } else {
            text.clone()
        };
        if let Err(e) = fs::write(f, body) {
            println!("maculaos apply: cannot write {}: {e}", f.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_steps_slowest_first() {
        let ms = Duration::from_millis;
        assert_eq!(slow_steps(&[("config", ms(100)), ("ssh", ms(499))]), None);
        assert_eq!(
            slow_steps(&[("config", ms(600)), ("ssh", ms(10)), ("modules", ms(1250))]).as_deref(),
            Some("modules 1.2 s, config 0.6 s")
        );
    }
}
