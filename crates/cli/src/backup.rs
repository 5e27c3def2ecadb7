//! `maculaos backup create|list|restore`: archives of the paths named by
//! `maculaos.backup` (maculaos-backup), checked whole before a restore
//! writes anything.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use maculaos_backup::{BackupError, Phase, Progress, Spec};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum Command {
    /// Archive the configured paths (maculaos.backup.include minus exclude).
    Create {
        /// A directory to write it in (default maculaos.backup.dir), or a
        /// file name ending in .tar.gz.
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// The backups in a directory, newest first.
    List {
        /// Default: maculaos.backup.dir.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check a backup whole, then put its files back with their owners,
    /// modes and times. Files that are not in the backup are left alone.
    Restore {
        /// The archive to restore.
        #[arg(required_unless_present = "latest")]
        file: Option<PathBuf>,
        /// The newest backup in maculaos.backup.dir (or --dir).
        #[arg(long, conflicts_with = "file")]
        latest: bool,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// What the configuration says about backups.
struct Settings {
    dir: PathBuf,
    include: Vec<PathBuf>,
    exclude: Vec<PathBuf>,
    retention: usize,
}

fn settings() -> Settings {
    let loaded = maculaos_config::load(&maculaos_config::Paths::system());
    let b = &loaded.config.maculaos.backup;
    Settings {
        dir: b.dir.as_path().to_path_buf(),
        include: b
            .include
            .iter()
            .map(|p| p.as_path().to_path_buf())
            .collect(),
        exclude: b
            .exclude
            .iter()
            .map(|p| p.as_path().to_path_buf())
            .collect(),
        retention: b.retention as usize,
    }
}

/// One line per 5 % of each phase: readable on a terminal, over SSH and
/// in the journal alike.
fn progress_printer() -> impl FnMut(Progress) {
    let mut steps = maculaos_progress::Steps::default();
    move |p: Progress| {
        let (pass, what) = match p.phase {
            Phase::Hashing => (0, "hashing"),
            Phase::Archiving => (1, "archiving"),
            Phase::Verifying => (2, "verifying"),
            Phase::Restoring => (3, "restoring"),
        };
        let pct = maculaos_progress::percent(p.done, p.total);
        if steps.due(pass, pct) {
            eprintln!("  {what:<9} {pct:>3.0}%  {} / {} entries", p.done, p.total);
        }
    }
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    let s = settings();
    match cmd {
        Command::Create { to } => create(&s, to),
        Command::List { dir, json } => list(&dir.unwrap_or(s.dir), json),
        Command::Restore { file, latest, dir } => {
            let file = match (file, latest) {
                (Some(f), _) => f,
                (None, _) => {
                    let dir = dir.unwrap_or(s.dir);
                    let all = maculaos_backup::list(&dir)?;
                    all.into_iter()
                        .find(|l| l.damaged.is_none())
                        .map(|l| l.path)
                        .with_context(|| {
                            format!(
                                "no readable backup in {}: nothing to restore",
                                dir.display()
                            )
                        })?
                }
            };
            restore(&file)
        }
    }
}

fn create(s: &Settings, to: Option<PathBuf>) -> Result<ExitCode> {
    if s.include.is_empty() {
        bail!("maculaos.backup.include is empty: there is nothing to back up");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = maculaos_backup::default_name(host.trim(), now);
    let (dir, dest, prune) = match to {
        Some(p) if p.to_string_lossy().ends_with(".tar.gz") => {
            let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
            (dir, p, false)
        }
        Some(d) => (d.clone(), d.join(&name), false),
        // Retention applies to the configured directory only: a directory
        // given by hand may hold backups someone wants to keep.
        None => (s.dir.clone(), s.dir.join(&name), true),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let spec = Spec {
        include: s.include.clone(),
        exclude: s.exclude.clone(),
        root: PathBuf::from("/"),
    };
    eprintln!(
        "backing up {} to {}",
        s.include
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        dest.display()
    );
    let report = maculaos_backup::create(&spec, &dest, progress_printer())?;
    for m in &report.missing {
        eprintln!("note: {} does not exist; skipped", m.display());
    }
    for m in &report.skipped {
        eprintln!(
            "note: {} is a socket, FIFO or device; not backed up",
            m.display()
        );
    }
    let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: {} files, {} directories, {} symlinks, {} bytes of data, archive {} bytes",
        dest.display(),
        report.files,
        report.dirs,
        report.symlinks,
        report.bytes,
        size
    );
    if prune {
        for gone in maculaos_backup::prune(&dir, s.retention)? {
            println!(
                "removed {} (maculaos.backup.retention: {})",
                gone.display(),
                s.retention
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(dir: &Path, json: bool) -> Result<ExitCode> {
    let all = maculaos_backup::list(dir)?;
    if json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|l| {
                serde_json::json!({
                    "path": l.path,
                    "size": l.size,
                    "created": l.created,
                    "hostname": l.hostname,
                    "damaged": l.damaged,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if all.is_empty() {
        println!("no backups in {}", dir.display());
    } else {
        for l in &all {
            match &l.damaged {
                None => println!("{}  {} bytes", l.path.display(), l.size),
                Some(why) => println!("{}  DAMAGED: {why}", l.path.display()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn restore(file: &Path) -> Result<ExitCode> {
    eprintln!("checking {} before restoring anything", file.display());
    let report = match maculaos_backup::restore(file, Path::new("/"), progress_printer()) {
        Ok(r) => r,
        Err(e @ (BackupError::Invalid { .. } | BackupError::Conflict { .. })) => {
            bail!("{e}\nrefused before anything was written")
        }
        Err(e) => bail!(
            "{e}\nthe restore stopped part-way: each file restored so far is whole (written, then renamed into place); run it again once the cause is fixed"
        ),
    };
    if report.owners_not_set > 0 {
        eprintln!(
            "note: the owners of {} entries could not be set (run as root)",
            report.owners_not_set
        );
    }
    println!(
        "restored {}: {} files, {} directories, {} symlinks",
        file.display(),
        report.files,
        report.dirs,
        report.symlinks
    );
    Ok(ExitCode::SUCCESS)
}
