//! `maculaos backup create|list|restore`: archives of the paths named by
//! `maculaos.backup` (maculaos-backup), checked whole before a restore
//! writes anything, and encrypted to age keys when asked.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use maculaos_backup::{Age, BackupError, Phase, Progress, Spec};
use maculaos_config::values::AgeRecipient;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `maculaos backup [FILE]` (the user guide's form) or `maculaos backup
/// create|list|restore`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Write a backup to FILE (a name ending in .tar.gz, .tar.gz.age when
    /// encrypted) or into the directory FILE; default maculaos.backup.dir.
    #[arg(value_name = "FILE")]
    to: Option<PathBuf>,
    /// Encrypt the backup to this age public key (as `backup create`).
    #[arg(long = "encrypt-to", value_name = "RECIPIENT")]
    encrypt_to: Vec<AgeRecipient>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Archive the configured paths (maculaos.backup.include minus exclude).
    Create {
        /// A directory to write it in (default maculaos.backup.dir), or a
        /// file name ending in .tar.gz (.tar.gz.age when encrypted).
        #[arg(long)]
        to: Option<PathBuf>,
        /// Encrypt the backup to this age public key (age1…, or an
        /// ssh-ed25519/ssh-rsa public key); repeat for more keys. Replaces
        /// maculaos.backup.encrypt_to for this backup.
        #[arg(long = "encrypt-to", value_name = "RECIPIENT")]
        encrypt_to: Vec<AgeRecipient>,
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
        /// The private key (an age-keygen key file, or an SSH private key)
        /// to decrypt an encrypted backup (….tar.gz.age) with.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
}

/// What the configuration says about backups.
struct Settings {
    dir: PathBuf,
    include: Vec<PathBuf>,
    exclude: Vec<PathBuf>,
    retention: usize,
    encrypt_to: Vec<String>,
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
        encrypt_to: b.encrypt_to.iter().map(|r| r.to_string()).collect(),
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
            Phase::Encrypting => (2, "encrypting"),
            Phase::Decrypting => (3, "decrypting"),
            Phase::Verifying => (4, "verifying"),
            Phase::Restoring => (5, "restoring"),
        };
        let pct = maculaos_progress::percent(p.done, p.total);
        if steps.due(pass, pct) {
            eprintln!("  {what:<10} {pct:>3.0}%  {} / {} bytes", p.done, p.total);
        }
    }
}

impl Args {
    /// Everything but `list` reads what only root may read or writes.
    pub fn changes_the_system(&self) -> bool {
        !matches!(self.command, Some(Command::List { .. }))
    }

    /// Whether this is the short form writing to `path`.
    #[cfg(test)]
    pub fn is_short_form_to(&self, path: &str) -> bool {
        self.command.is_none() && self.to.as_deref() == Some(Path::new(path))
    }
}

/// `maculaos backup …`: a subcommand, or `create` by the guide's short form.
pub fn run_args(args: Args) -> Result<ExitCode> {
    run(args.command.unwrap_or(Command::Create {
        to: args.to,
        encrypt_to: args.encrypt_to,
    }))
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    let s = settings();
    match cmd {
        Command::Create { to, encrypt_to } => {
            // Given on the command line, the keys replace the configured
            // ones: a one-off backup for someone else's key.
            let recipients = if encrypt_to.is_empty() {
                s.encrypt_to.clone()
            } else {
                encrypt_to.iter().map(|r| r.to_string()).collect()
            };
            create(&s, to, &recipients)
        }
        Command::List { dir, json } => list(&dir.unwrap_or(s.dir), json),
        Command::Restore {
            file,
            latest,
            dir,
            identity,
        } => {
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
            restore(&file, identity.as_deref())
        }
    }
}

/// A `--to` that names the backup file rather than its directory; refused
/// when its ending says the other kind (plain or encrypted) than is made.
fn to_file(p: &Path, encrypted: bool) -> Result<bool> {
    let name = p.to_string_lossy();
    let (plain_name, age_name) = (name.ends_with(".tar.gz"), name.ends_with(".tar.gz.age"));
    if encrypted && plain_name {
        bail!(
            "{name}: the backup is encrypted (--encrypt-to or maculaos.backup.encrypt_to), so \
             its name must end in .tar.gz.age"
        );
    }
    if !encrypted && age_name {
        bail!(
            "{name}: a name ending in .age is for an encrypted backup: give the key to \
             encrypt to with --encrypt-to RECIPIENT, or name it ….tar.gz"
        );
    }
    Ok(plain_name || age_name)
}

fn create(s: &Settings, to: Option<PathBuf>, recipients: &[String]) -> Result<ExitCode> {
    if s.include.is_empty() {
        bail!("maculaos.backup.include is empty: there is nothing to back up");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let encrypted = !recipients.is_empty();
    let mut name = maculaos_backup::default_name(host.trim(), now);
    if encrypted {
        name.push_str(".age");
    }
    let is_file = match &to {
        Some(p) => to_file(p, encrypted)?,
        None => false,
    };
    let (dir, dest, prune) = match to {
        Some(p) if is_file => {
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
    let report = if encrypted {
        eprintln!("encrypting it to {} age key(s)", recipients.len());
        maculaos_backup::create_encrypted(
            &Age::default(),
            &spec,
            &dest,
            recipients,
            progress_printer(),
        )?
    } else {
        maculaos_backup::create(&spec, &dest, progress_printer())?
    };
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
        "{}: {} files, {} directories, {} symlinks, {} bytes of data, archive {} bytes{}",
        dest.display(),
        report.files,
        report.dirs,
        report.symlinks,
        report.bytes,
        size,
        if encrypted { ", encrypted" } else { "" }
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
                    "encrypted": l.encrypted,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if all.is_empty() {
        println!("no backups in {}", dir.display());
    } else {
        for l in &all {
            println!("{}", list_line(l));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `PATH  SIZE bytes  TIME  HOST`; an encrypted backup's host is out of
/// reach without its key, and its time is the file's.
fn list_line(l: &maculaos_backup::Listed) -> String {
    let path = l.path.display();
    if let Some(why) = &l.damaged {
        return format!("{path}  DAMAGED: {why}");
    }
    let time = l.created.map(maculaos_backup::utc).unwrap_or_default();
    if l.encrypted {
        format!("{path}  {} bytes  {time} (file time)  encrypted", l.size)
    } else {
        let host = l.hostname.as_deref().unwrap_or_default();
        format!("{path}  {} bytes  {time}  {host}", l.size)
    }
}

fn restore(file: &Path, identity: Option<&Path>) -> Result<ExitCode> {
    eprintln!("checking {} before restoring anything", file.display());
    let root = Path::new("/");
    let result = match identity {
        Some(key) if maculaos_backup::is_encrypted(file) => {
            eprintln!("decrypting it with {}", key.display());
            maculaos_backup::restore_encrypted(&Age::default(), file, key, root, progress_printer())
        }
        // Without a key an encrypted backup is refused, saying to give one.
        _ => {
            if identity.is_some() {
                eprintln!(
                    "note: {} is not encrypted: --identity is not needed",
                    file.display()
                );
            }
            maculaos_backup::restore(file, root, progress_printer())
        }
    };
    let report = match result {
        Ok(r) => r,
        Err(
            e @ (BackupError::Invalid { .. }
            | BackupError::Conflict { .. }
            | BackupError::Encrypted { .. }
            | BackupError::WrongKey { .. }
            | BackupError::Age { .. }),
        ) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_names_a_file_of_the_right_kind() {
        assert!(!to_file(Path::new("/mnt/usb"), false).unwrap());
        assert!(!to_file(Path::new("/mnt/usb"), true).unwrap());
        assert!(to_file(Path::new("/mnt/b.tar.gz"), false).unwrap());
        assert!(to_file(Path::new("/mnt/b.tar.gz.age"), true).unwrap());
        let err = to_file(Path::new("/mnt/b.tar.gz"), true).unwrap_err();
        assert!(err.to_string().contains("must end in .tar.gz.age"), "{err}");
        let err = to_file(Path::new("/mnt/b.tar.gz.age"), false).unwrap_err();
        assert!(err.to_string().contains("--encrypt-to RECIPIENT"), "{err}");
    }

    #[test]
    fn list_lines() {
        let plain = maculaos_backup::Listed {
            path: "/b/p.tar.gz".into(),
            size: 10,
            created: Some(0),
            hostname: Some("node-1".into()),
            damaged: None,
            encrypted: false,
        };
        assert_eq!(
            list_line(&plain),
            "/b/p.tar.gz  10 bytes  1970-01-01T00:00:00Z  node-1"
        );
        let encrypted = maculaos_backup::Listed {
            path: "/b/p.tar.gz.age".into(),
            hostname: None,
            encrypted: true,
            ..plain
        };
        assert_eq!(
            list_line(&encrypted),
            "/b/p.tar.gz.age  10 bytes  1970-01-01T00:00:00Z (file time)  encrypted"
        );
    }
}
