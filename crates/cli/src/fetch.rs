//! `maculaos upgrade --check`, `--download`, and `--apply` without `--from`:
//! updates from the source in `upgrade.url` (or `--url`), on the node's
//! channel (`upgrade.channel` or `--channel`).

use crate::slots::{apply_cmd, STATE_DIR, TRUSTED_KEYS};
use anyhow::{Context, Result};
use maculaos_bundle::{compare_versions, Channel, PublicKey, NODE_ARCH};
use maculaos_fetch::{Available, Source};
use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where to look: from the command line, else from the node's configuration.
pub struct Origin {
    pub source: Source,
    /// As written (`github://macula-io/macula-os`), for messages.
    pub url: String,
    pub channel: Channel,
}

/// The node's `maculaos.upgrade` section.
fn upgrade_config() -> maculaos_config::Upgrade {
    node_config().maculaos.upgrade
}

fn node_config() -> maculaos_config::Config {
    let loaded = maculaos_config::load(&maculaos_config::Paths::system());
    if !loaded.problems.is_empty() {
        eprintln!(
            "maculaos upgrade: the configuration has errors; upgrade.* and updates.* are taken from the last good one (see `maculaos config show`)"
        );
    }
    loaded.config
}

impl Origin {
    pub fn resolve(url: Option<&str>, channel: Option<Channel>) -> Result<Origin> {
        let upgrade = if url.is_some() && channel.is_some() {
            maculaos_config::Upgrade::default()
        } else {
            upgrade_config()
        };
        let url = url.map_or_else(|| upgrade.url.as_str().to_string(), str::to_string);
        let channel = channel.unwrap_or(match upgrade.channel {
            maculaos_config::Channel::Stable => Channel::Stable,
            maculaos_config::Channel::Beta => Channel::Beta,
            maculaos_config::Channel::Nightly => Channel::Nightly,
        });
        let source = Source::parse(&url)?;
        Ok(Origin {
            source,
            url,
            channel,
        })
    }

    /// The newest bundle on the channel, with what to do when the source
    /// cannot be asked.
    fn newest(&self) -> Result<Available> {
        maculaos_fetch::check(&self.source, self.channel, NODE_ARCH).with_context(|| {
            format!(
                "looking for the newest {} update on {}",
                self.channel, self.url
            )
        })
    }
}

fn running_version() -> String {
    maculaos_info::collect().version
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / 1048576.0)
}

/// Why `newest` is not worth fetching for a node running `running`, or None.
fn nothing_to_do(
    newest: &str,
    running: &str,
    channel: Channel,
    allow_downgrade: bool,
    force: bool,
) -> Option<String> {
    match compare_versions(newest, running) {
        Ordering::Equal if !force => Some(format!(
            "up to date: {running} is the newest on channel {channel} (--force to write it into the standby slot again)"
        )),
        Ordering::Less if !allow_downgrade => Some(format!(
            "the running {running} is newer than the newest on channel {channel} ({newest}): nothing to do (--allow-downgrade to go back to it)"
        )),
        _ => None,
    }
}

/// `maculaos upgrade --check [--json]`.
pub fn check_cmd(url: Option<&str>, channel: Option<Channel>, json: bool) -> Result<ExitCode> {
    let origin = Origin::resolve(url, channel)?;
    let running = running_version();
    let newest = origin.newest()?;
    let order = compare_versions(&newest.version, &running);
    let downloaded = Path::new(STATE_DIR).join(&newest.name);
    let downloaded = downloaded.is_file().then_some(downloaded);
    let bad = maculaos_upgrade::find_bad(Path::new(STATE_DIR), &newest.version);
    if json {
        let out = serde_json::json!({
            "running": running,
            "url": origin.url,
            "channel": origin.channel,
            "available": newest,
            "newer": order == Ordering::Greater,
            "downloaded": downloaded,
            "failed_trial": bad,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("running:  {running}");
    println!("source:   {} (channel {})", origin.url, origin.channel);
    let published = if newest.channel == origin.channel {
        String::new()
    } else {
        format!(", a {} release", newest.channel)
    };
    println!(
        "newest:   {} ({}, {}{published})",
        newest.version,
        newest.name,
        mib(newest.size)
    );
    if let Some(p) = &downloaded {
        println!("downloaded: {}", p.display());
    }
    if let Some(b) = &bad {
        println!(
            "note: {} failed its trial on {}: {}; applying it again needs --force",
            b.version,
            b.date(),
            b.reason
        );
    }
    match nothing_to_do(&newest.version, &running, origin.channel, false, false) {
        Some(why) => println!("{why}"),
        None => println!(
            "{} is newer than the running {running}. Next: `sudo maculaos upgrade --download` \
             (download and check it), or `sudo maculaos upgrade --apply` (download if needed, \
             write it into the standby slot; then reboot)",
            newest.version
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `--download` and `--apply` (without `--from`) were asked for.
pub struct Wanted<'a> {
    pub url: Option<&'a str>,
    pub channel: Option<Channel>,
    /// Only this version (`--version`).
    pub version: Option<&'a str>,
    pub allow_downgrade: bool,
    pub force: bool,
}

/// The newest bundle of the source, unless it is not worth fetching (then
/// says why and returns None). With `--version`, the newest must be that
/// version.
fn worth_fetching(want: &Wanted) -> Result<Option<Available>> {
    let origin = Origin::resolve(want.url, want.channel)?;
    let running = running_version();
    let newest = origin.newest()?;
    if let Some(v) = want.version {
        if compare_versions(&newest.version, v) != Ordering::Equal {
            anyhow::bail!(
                "{} offers {} on channel {}, not {v}: publish {v} there (`maculaos-sdk publish`) or point upgrade.url at a source that has it",
                origin.url,
                newest.version,
                origin.channel
            );
        }
    }
    if let Some(why) = nothing_to_do(
        &newest.version,
        &running,
        origin.channel,
        want.allow_downgrade,
        want.force,
    ) {
        // Asked for one version: not writing it is a failure, which a
        // rollout's node must not take for a done update.
        if want.version.is_some() {
            anyhow::bail!("{why}");
        }
        println!("maculaos upgrade: {why}");
        return Ok(None);
    }
    Ok(Some(newest))
}

/// `maculaos upgrade --download`.
pub fn download_cmd(want: &Wanted) -> Result<ExitCode> {
    let Some(newest) = worth_fetching(want)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let trusted = trusted_keys()?;
    let (path, key) = download_verified(&newest, &trusted)?;
    println!(
        "maculaos upgrade: {} is downloaded and its signature checked (key {key}): {}. \
         Apply it with `sudo maculaos upgrade --apply` (then reboot)",
        newest.version,
        path.display()
    );
    if let Some(b) = maculaos_upgrade::find_bad(Path::new(STATE_DIR), &newest.version) {
        println!(
            "note: {} failed its trial on {}: {}; applying it again needs --force",
            b.version,
            b.date(),
            b.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `maculaos upgrade --apply` without `--from`: the newest bundle on the
/// channel, downloaded unless it already is, then the `--from` path.
pub fn apply_latest_cmd(want: &Wanted) -> Result<ExitCode> {
    let found = worth_fetching(want);
    // A pinned version (a rollout's) must not be sent to another bundle.
    let found = if want.version.is_some() {
        found
    } else {
        found.with_context(|| {
            format!("to apply a bundle already downloaded, run `sudo maculaos upgrade --apply --from {STATE_DIR}`")
        })
    };
    let Some(newest) = found? else {
        return Ok(ExitCode::SUCCESS);
    };
    let trusted = trusted_keys()?;
    let path = match downloaded(&trusted)
        .into_iter()
        .find(|(v, _)| compare_versions(v, &newest.version) == Ordering::Equal)
    {
        Some((_, p)) => {
            println!(
                "maculaos upgrade: {} is already downloaded and verified: {}",
                newest.version,
                p.display()
            );
            p
        }
        None => {
            let (path, key) = download_verified(&newest, &trusted)?;
            println!(
                "maculaos upgrade: {} is downloaded and its signature checked (key {key})",
                newest.version
            );
            path
        }
    };
    apply_cmd(&path, want.allow_downgrade, want.force)
}

fn trusted_keys() -> Result<Vec<PublicKey>> {
    maculaos_bundle::load_trusted_keys(Path::new(TRUSTED_KEYS))
        .with_context(|| format!("reading the trusted keys in {TRUSTED_KEYS}"))
}

/// The bundles in the state directory that verify with `trusted`, newest first.
fn downloaded(trusted: &[PublicKey]) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == maculaos_bundle::EXTENSION)
        })
        .filter_map(|p| {
            let b = maculaos_bundle::open(&p).ok()?;
            let v = b.verify(trusted).ok()?.os_version.clone();
            Some((v, p))
        })
        .collect();
    found.sort_by(|a, b| compare_versions(&b.0, &a.0));
    found
}

/// Delete the downloaded bundles (other than `keep`) of versions that are
/// not newer than the running one, before a download: they were applied
/// already or are behind, and a second bundle must not find /var full of
/// the first (a node keeps a whole slot image per bundle).
fn prune_obsolete(trusted: &[PublicKey], keep: &str) {
    let running = running_version();
    for (version, path) in downloaded(trusted) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == keep || compare_versions(&version, &running) == Ordering::Greater {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => println!(
                "maculaos upgrade: deleted {} ({version} is not newer than the running {running})",
                path.display()
            ),
            Err(e) => eprintln!("maculaos upgrade: could not delete {}: {e}", path.display()),
        }
    }
}

/// Download `newest` into the state directory, then check its signature.
/// A bundle that does not verify, or is not the version the source named,
/// is deleted: nothing unverified stays where `--apply` looks.
fn download_verified(newest: &Available, trusted: &[PublicKey]) -> Result<(PathBuf, String)> {
    let there = Path::new(STATE_DIR).join(&newest.name).is_file();
    if !there {
        prune_obsolete(trusted, &newest.name);
    }
    if there {
        println!(
            "maculaos upgrade: {} is already in {STATE_DIR}: checking it",
            newest.name
        );
    } else {
        println!(
            "maculaos upgrade: downloading {} ({}) from {} into {STATE_DIR}",
            newest.name,
            mib(newest.size),
            newest.url
        );
    }
    let mut steps = maculaos_progress::Steps::default();
    let mut progress = |p: maculaos_fetch::Progress| {
        if !there && steps.due(0, p.percent()) {
            crate::slots::show(&maculaos_progress::line(
                "downloading",
                p.done,
                p.total,
                p.bytes_per_sec,
                p.eta,
            ));
        }
    };
    let path = maculaos_fetch::download(newest, Path::new(STATE_DIR), &mut progress)?;
    let discard = |why: String| -> anyhow::Error {
        let _ = std::fs::remove_file(&path);
        anyhow::anyhow!("{why}; {} was deleted", path.display())
    };
    let opened = maculaos_bundle::open(&path).map_err(|e| discard(e.to_string()))?;
    let manifest = opened
        .verify(trusted)
        .map_err(|e| discard(format!("the downloaded bundle is not accepted here: {e}")))?;
    if compare_versions(&manifest.os_version, &newest.version) != Ordering::Equal {
        return Err(discard(format!(
            "{} named version {}, but the bundle it served holds {}: the source is inconsistent; tell whoever publishes it",
            newest.url, newest.version, manifest.os_version
        )));
    }
    Ok((path.clone(), opened.signature_key_id()))
}

/// `maculaos upgrade --auto` (maculaos-upgrade-check.timer: at boot and
/// daily, or on `updates.schedule`). Reports only, unless
/// `upgrade.auto_apply` or `updates.automatic`; then reboots into the new
/// version with `updates.auto_reboot`. A source that cannot
/// be reached is reported and is not a failure: the node is fine, and the
/// next run tries again.
pub fn auto_cmd() -> Result<ExitCode> {
    let config = node_config();
    let upgrade = &config.maculaos.upgrade;
    let auto_apply = config.auto_apply();
    if !upgrade.auto_check && !auto_apply {
        println!(
            "maculaos upgrade: upgrade.auto_check, upgrade.auto_apply and updates.automatic are off: nothing to do"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let origin = Origin::resolve(None, None)?;
    let running = running_version();
    let newest = match origin.newest() {
        Ok(n) => n,
        Err(e) => {
            println!("maculaos upgrade: could not check for updates: {e:#}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Some(why) = nothing_to_do(&newest.version, &running, origin.channel, false, false) {
        println!("maculaos upgrade: {why}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(b) = maculaos_upgrade::find_bad(Path::new(STATE_DIR), &newest.version) {
        println!(
            "maculaos upgrade: {} is available but failed its trial on {} ({}): not applied again automatically",
            b.version,
            b.date(),
            b.reason
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !auto_apply {
        println!(
            "maculaos upgrade: {} is available on channel {} (running {running}). \
             Apply it with `sudo maculaos upgrade --apply`, then reboot",
            newest.version, origin.channel
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "maculaos upgrade: {} is available (running {running}); automatic updates are on: applying it",
        newest.version
    );
    let code = apply_latest_cmd(&Wanted {
        url: None,
        channel: None,
        version: None,
        allow_downgrade: false,
        force: false,
    })?;
    if code == ExitCode::SUCCESS && config.maculaos.updates.auto_reboot {
        // The new slot is on trial: a version that fails its boot checks
        // is rolled back by the boot counting, as after any update.
        println!(
            "maculaos upgrade: rebooting into {} (updates.auto_reboot)",
            newest.version
        );
        maculaos_runner::Cmd::new("systemctl")
            .arg("reboot")
            .run()
            .context("rebooting into the new version (updates.auto_reboot)")?;
    }
    Ok(code)
}
