//! The support bundle (`maculaos diag --full`): one tar.gz with what
//! support asks for first, so nobody has to walk an operator through a
//! dozen commands. Written to a temporary file next to its destination and
//! renamed into place when complete (mode 0600: it holds logs).
//!
//! Nothing that fails inside stops it: a missing tool, a command that
//! fails, a file that cannot be read each leave a note in the member's
//! place, and MANIFEST.txt lists every member with the exit status of the
//! command behind it.

use crate::config::{config_d_files, NODE_CONFIG};
use crate::network::network_with;
use crate::redact::redact_checked;
use crate::storage::storage_with;
use crate::tools::{display, Outcome, Tools};
use crate::{any_failed, mesh, render, DiagError, Line};
use flate2::write::GzEncoder;
use flate2::Compression;
use maculaos_info::Collector;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where `maculaos-upgrade` keeps its state (included when `maculaos
/// upgrade --status --json` cannot say).
const UPDATE_STATE: &str = "var/lib/maculaos/updates/state.json";

enum Body {
    Bytes(Vec<u8>),
    /// A command's output, streamed from the scratch directory (a journal
    /// can be large).
    File(PathBuf),
}

struct Member {
    name: String,
    body: Body,
    /// For MANIFEST.txt: where it came from and how that went.
    source: String,
}

/// Whether a command prints JSON (then nothing is added to its output).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Json,
}

struct Collect<'a> {
    root: &'a Path,
    tools: &'a Tools,
    scratch: &'a Path,
    members: Vec<Member>,
}

impl Collect<'_> {
    fn bytes(&mut self, name: &str, body: impl Into<Vec<u8>>, source: impl Into<String>) {
        self.members.push(Member {
            name: name.into(),
            body: Body::Bytes(body.into()),
            source: source.into(),
        });
    }

    /// A file of the node (the first of `paths` that exists).
    fn file(&mut self, name: &str, paths: &[&str]) {
        for p in paths {
            match fs::read(self.root.join(p)) {
                Ok(b) => return self.bytes(name, b, format!("/{p}")),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    return self.bytes(
                        name,
                        format!("/{p} cannot be read: {e}\n"),
                        format!("/{p}: cannot be read: {e}"),
                    )
                }
            }
        }
        let list = paths
            .iter()
            .map(|p| format!("/{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.bytes(
            name,
            format!("{list}: not present on this node\n"),
            format!("{list}: not present"),
        );
    }

    /// Run a command with its stdout to the scratch directory.
    fn run(&self, name: &str, program: &str, args: &[&str]) -> (Outcome, PathBuf) {
        let out = self.scratch.join(name.replace('/', "_"));
        (self.tools.run_to_file(program, args, &out), out)
    }

    /// A command's output as a member; when it is missing or fails, the
    /// member says so (after whatever it printed, for text).
    fn command(&mut self, name: &str, program: &str, args: &[&str], kind: Kind) -> Outcome {
        let cmdline = display(program, args);
        let (outcome, out) = self.run(name, program, args);
        let source = format!("`{cmdline}`: {}", outcome.status());
        let printed = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        match &outcome {
            Outcome::Ok => self.push_file(name, out, source),
            Outcome::Missing => self.bytes(
                name,
                format!(
                    "`{program}` is not installed on this node (not on PATH): nothing collected.\n"
                ),
                source,
            ),
            Outcome::Error(e) => {
                self.bytes(name, format!("`{cmdline}` could not run: {e}\n"), source)
            }
            Outcome::Failed { status, stderr } => {
                let note = format!("`{cmdline}` failed ({status}):\n{}\n", stderr.trim_end());
                if printed == 0 {
                    self.bytes(name, note, source);
                } else if kind == Kind::Json {
                    // Its JSON as printed (`maculaos health` exits 1 when a
                    // check fails); the status is in MANIFEST.txt.
                    self.push_file(name, out, source);
                } else {
                    let appended = fs::OpenOptions::new()
                        .append(true)
                        .open(&out)
                        .and_then(|mut f| write!(f, "\n--- {note}"));
                    match appended {
                        Ok(()) => self.push_file(name, out, source),
                        Err(_) => self.bytes(name, note, source),
                    }
                }
            }
        }
        outcome
    }

    fn push_file(&mut self, name: &str, path: PathBuf, source: String) {
        self.members.push(Member {
            name: name.into(),
            body: Body::File(path),
            source,
        });
    }

    fn previous_boot(&mut self) {
        const NAME: &str = "journal/previous-boot.txt";
        let args = ["-b", "-1", "--no-pager", "-o", "short-iso"];
        let cmdline = display("journalctl", &args);
        let (outcome, out) = self.run(NAME, "journalctl", &args);
        let text = fs::read_to_string(&out).unwrap_or_default();
        let empty = text.trim().is_empty() || text.trim() == "-- No entries --";
        if outcome == Outcome::Ok && !empty {
            return self.push_file(NAME, out, format!("`{cmdline}`: exit code 0"));
        }
        let why = match &outcome {
            Outcome::Ok => "it has no entries".to_string(),
            Outcome::Missing => "journalctl is not installed".to_string(),
            Outcome::Failed { stderr, .. } if !stderr.trim().is_empty() => {
                format!("journalctl says: {}", stderr.trim())
            }
            o => o.status(),
        };
        let keep = if self.root.join("var/log/journal").is_dir() {
            "The journal is kept on disk (/var/log/journal), so this is likely the first boot since it started."
        } else {
            "The journal is kept in memory only (no /var/log/journal), so earlier boots are never kept."
        };
        self.bytes(
            NAME,
            format!("No previous boot in the journal ({why}).\n{keep}\n"),
            format!(
                "`{cmdline}`: {} (no previous boot: a note instead)",
                outcome.status()
            ),
        );
    }

    fn config(&mut self) {
        let mut files = vec![(
            self.root.join(NODE_CONFIG),
            "config/config.yaml".to_string(),
        )];
        files.extend(config_d_files(self.root).into_iter().filter_map(|p| {
            let f = p.file_name()?.to_string_lossy().into_owned();
            Some((p, format!("config/config.d/{f}")))
        }));
        for (path, name) in files {
            let on_node = format!(
                "/{}",
                path.strip_prefix(self.root).unwrap_or(&path).display()
            );
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            match fs::read_to_string(&path) {
                Ok(text) => {
                    let (body, parsed) = redact_checked(&file, &text);
                    let how = if parsed {
                        "secrets redacted"
                    } else {
                        "does not parse: left out"
                    };
                    self.bytes(&name, body, format!("{on_node} ({how})"));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => self.bytes(
                    &name,
                    format!("{on_node}: not present on this node\n"),
                    format!("{on_node}: not present"),
                ),
                // Unreadable or not UTF-8: never copied as it is.
                Err(e) => self.bytes(
                    &name,
                    format!("{on_node} cannot be read ({e}); not included\n"),
                    format!("{on_node}: cannot be read: {e}"),
                ),
            }
        }
    }

    fn diag(&mut self, name: &str, what: &str, lines: Vec<Line>) {
        let failed = lines.iter().filter(|l| l.ok == Some(false)).count();
        let source = match any_failed(&lines) {
            true => format!("maculaos diag {what}: {failed} check(s) failed"),
            false => format!("maculaos diag {what}"),
        };
        self.bytes(name, render(&lines), source);
    }
}

/// `2024-05-01T12:00:00Z` for seconds since the epoch (UTC, no leap seconds).
fn utc(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// Write the support bundle of the node under `root` to `out` (a tar.gz),
/// telling `progress` what it collects. Returns the member names, in the
/// archive's order.
pub fn support_bundle(
    root: &Path,
    out: &Path,
    progress: impl FnMut(&str),
) -> Result<Vec<String>, DiagError> {
    bundle_with(root, out, &Tools::system(), progress)
}

pub(crate) fn bundle_with(
    root: &Path,
    out: &Path,
    tools: &Tools,
    mut progress: impl FnMut(&str),
) -> Result<Vec<String>, DiagError> {
    const WRITING: &str = "writing the support bundle to";
    if out.is_dir() {
        return Err(DiagError::Io {
            what: WRITING,
            path: out.into(),
            source: ErrorKind::IsADirectory.into(),
        });
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let scratch = tempfile::Builder::new()
        .prefix(".maculaos-diag-")
        .tempdir_in(dir)
        .map_err(DiagError::io(WRITING, out))?;
    let mut c = Collect {
        root,
        tools,
        scratch: scratch.path(),
        members: Vec::new(),
    };

    progress("system information");
    let info = Collector::new(root).collect();
    match serde_json::to_vec_pretty(&info) {
        Ok(mut j) => {
            j.push(b'\n');
            c.bytes("system/info.json", j, "maculaos info");
        }
        Err(e) => c.bytes(
            "system/info.json",
            format!("cannot be written: {e}\n"),
            "maculaos info: failed",
        ),
    }
    c.command("system/uname.txt", "uname", &["-a"], Kind::Text);
    c.file(
        "system/os-release",
        &["etc/os-release", "usr/lib/os-release"],
    );
    c.file("system/mounts.txt", &["proc/self/mountinfo"]);
    c.command(
        "system/lsblk.json",
        "lsblk",
        &[
            "-J",
            "-b",
            "-o",
            "NAME,SIZE,TYPE,FSTYPE,LABEL,PARTLABEL,MOUNTPOINT",
        ],
        Kind::Json,
    );
    progress("kernel log");
    c.command("system/dmesg.txt", "dmesg", &[], Kind::Text);

    progress("journal of this boot");
    c.command(
        "journal/this-boot.txt",
        "journalctl",
        &["-b", "0", "--no-pager", "-o", "short-iso"],
        Kind::Text,
    );
    progress("journal of the previous boot");
    c.previous_boot();

    progress("configuration (secrets redacted)");
    c.config();

    progress("network diagnostics");
    c.diag(
        "diag/network.txt",
        "network",
        network_with(root, tools, None),
    );
    progress("storage diagnostics");
    c.diag("diag/storage.txt", "storage", storage_with(root, tools));
    c.diag("diag/mesh.txt", "mesh", mesh(root));

    progress("health checks");
    c.command(
        "health/health.json",
        "maculaos",
        &["health", "--json"],
        Kind::Json,
    );
    progress("update status");
    let status = c.command(
        "updates/status.json",
        "maculaos",
        &["upgrade", "--status", "--json"],
        Kind::Json,
    );
    if status != Outcome::Ok && root.join(UPDATE_STATE).is_file() {
        c.file("updates/state.json", &[UPDATE_STATE]);
    }
    progress("failed units");
    c.command(
        "systemd/failed.txt",
        "systemctl",
        &["--failed", "--no-pager"],
        Kind::Text,
    );

    // MANIFEST.txt first, so `tar tzf` and a reader meet it first.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let width = c
        .members
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(0)
        .max(12);
    let mut manifest = format!(
        "MaculaOS support bundle\n\
         Created:  {}\n\
         Hostname: {}\n\
         Version:  {}\n\
         Slot:     {} (boot mode {})\n\n\
         Configuration files have their secrets replaced by <redacted>; one that\n\
         does not parse is left out. Commands ran on the node; after each, its\n\
         exit status (a member whose command is missing or failed says so).\n\n",
        utc(now),
        info.hostname,
        info.version,
        info.slot.as_deref().unwrap_or("none"),
        info.mode.as_deref().unwrap_or("unknown"),
    );
    manifest.push_str(&format!("{:<width$}  {}\n", "MANIFEST.txt", "this list"));
    for m in &c.members {
        manifest.push_str(&format!("{:<width$}  {}\n", m.name, m.source));
    }
    let mut members = vec![Member {
        name: "MANIFEST.txt".into(),
        body: Body::Bytes(manifest.into_bytes()),
        source: String::new(),
    }];
    members.append(&mut c.members);

    progress(&format!("writing {}", out.display()));
    let tmp = tempfile::Builder::new()
        .prefix(".support-bundle-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(DiagError::io(WRITING, out))?;
    write_archive(tmp.as_file(), &members, now).map_err(DiagError::io(WRITING, out))?;
    tmp.persist(out)
        .map_err(|e| DiagError::io(WRITING, out)(e.error))?;
    Ok(members.into_iter().map(|m| m.name).collect())
}

fn write_archive(file: &File, members: &[Member], mtime: u64) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(GzEncoder::new(file, Compression::default()));
    for m in members {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        match &m.body {
            Body::Bytes(b) => {
                h.set_size(b.len() as u64);
                tar.append_data(&mut h, &m.name, b.as_slice())?;
            }
            Body::File(p) => {
                let f = File::open(p)?;
                h.set_size(f.metadata()?.len());
                tar.append_data(&mut h, &m.name, f)?;
            }
        }
    }
    let gz = tar.into_inner()?;
    gz.finish()?.sync_all()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::CONFIG_D;
    use flate2::read::GzDecoder;
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    /// An executable `dir/name` running `body` with /bin/sh. Written by a
    /// child process, so no file descriptor of ours open for writing can
    /// leak into a fork made by another test and make it "text file busy".
    pub(crate) fn fake_tool(dir: &Path, name: &str, body: &str) {
        maculaos_runner::Cmd::new("/bin/sh")
            .args(["-c", "cat >\"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(dir.join(name))
            .stdin(format!("#!/bin/sh\n{body}\n"))
            .quiet()
            .run()
            .unwrap();
    }

    fn unpack(path: &Path) -> (Vec<String>, BTreeMap<String, String>) {
        let mut a = tar::Archive::new(GzDecoder::new(File::open(path).unwrap()));
        let mut names = Vec::new();
        let mut files = BTreeMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            names.push(name.clone());
            files.insert(name, s);
        }
        (names, files)
    }

    fn fake_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let f = d.path().join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, s).unwrap();
        };
        w(
            "etc/os-release",
            "NAME=\"MaculaOS\"\nVERSION_ID=\"0.3.0\"\n",
        );
        w(
            "proc/self/mountinfo",
            "22 1 254:3 / / ro,relatime - squashfs /dev/vda3 ro\n",
        );
        w("proc/cmdline", "maculaos.mode=disk maculaos.slot=B");
        w("proc/sys/kernel/hostname", "macula-ab12\n");
        w(
            NODE_CONFIG,
            "maculaos:\n  k3s:\n    token: s3cr3t\n  mesh:\n    realm: io.macula\n    tls: {private_key: PRIVKEYDATA}\n\
             ssh_authorized_keys: [ssh-ed25519 AAAAPUBLIC admin@laptop]\n\
             write_files:\n  - path: /etc/x\n    content: \"password=hunter2\"\n",
        );
        w(
            &format!("{CONFIG_D}/10-net.yaml"),
            "maculaos:\n  wifi: {psk: wifipass}\n",
        );
        w(
            &format!("{CONFIG_D}/20-broken.yaml"),
            "token: brokensecret\n  bad: [\n",
        );
        d
    }

    #[test]
    fn bundle_with_missing_and_failing_tools() {
        let root = fake_root();
        let bin = tempfile::tempdir().unwrap();
        fake_tool(
            bin.path(),
            "uname",
            "echo 'Linux macula-ab12 6.1.0-50-amd64 x86_64 GNU/Linux'",
        );
        fake_tool(
            bin.path(),
            "journalctl",
            "if [ \"$2\" = -1 ]; then echo 'Data from the specified boot (-1) is not available: No such boot ID in journal' >&2; exit 1; fi\necho '2024-05-01T12:00:00+0000 macula-ab12 kernel: Linux version 6.1'",
        );
        fake_tool(
            bin.path(),
            "maculaos",
            "case \"$1\" in\nhealth) printf '[{\"name\":\"config\",\"state\":\"fail\",\"message\":\"x\"}]\\n'; exit 1;;\n*) echo 'cannot mount the ESP: permission denied' >&2; exit 1;;\nesac",
        );
        fake_tool(
            bin.path(),
            "systemctl",
            "echo '0 loaded units listed.'; echo 'warn' >&2; exit 1",
        );

        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("support.tar.gz");
        let mut steps = Vec::new();
        let names = bundle_with(root.path(), &out, &Tools::with_path(bin.path()), |s| {
            steps.push(s.to_string())
        })
        .unwrap();
        assert!(
            steps.iter().any(|s| s == "journal of this boot"),
            "{steps:?}"
        );

        let (in_tar, files) = unpack(&out);
        assert_eq!(in_tar, names);
        assert_eq!(
            names,
            [
                "MANIFEST.txt",
                "system/info.json",
                "system/uname.txt",
                "system/os-release",
                "system/mounts.txt",
                "system/lsblk.json",
                "system/dmesg.txt",
                "journal/this-boot.txt",
                "journal/previous-boot.txt",
                "config/config.yaml",
                "config/config.d/10-net.yaml",
                "config/config.d/20-broken.yaml",
                "diag/network.txt",
                "diag/storage.txt",
                "diag/mesh.txt",
                "health/health.json",
                "updates/status.json",
                "systemd/failed.txt",
            ]
        );

        // Only the bundle is left, readable by its owner only.
        let left: Vec<_> = fs::read_dir(out_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["support.tar.gz"]);
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let manifest = &files["MANIFEST.txt"];
        for n in &names[1..] {
            assert!(manifest.contains(n.as_str()), "{n} not in\n{manifest}");
        }
        assert!(
            manifest.contains("Slot:     B (boot mode disk)"),
            "{manifest}"
        );
        assert!(manifest.contains("`uname -a`: exit code 0"), "{manifest}");
        assert!(
            manifest.contains("`dmesg`: not found (not installed)"),
            "{manifest}"
        );
        assert!(
            manifest.contains(
                "`lsblk -J -b -o NAME,SIZE,TYPE,FSTYPE,LABEL,PARTLABEL,MOUNTPOINT`: not found"
            ),
            "{manifest}"
        );
        assert!(
            manifest.contains("`maculaos health --json`: exit code 1"),
            "{manifest}"
        );
        assert!(
            manifest
                .contains("`maculaos upgrade --status --json`: exit code 1: cannot mount the ESP"),
            "{manifest}"
        );
        assert!(
            manifest.contains("(no previous boot: a note instead)"),
            "{manifest}"
        );
        assert!(
            manifest.contains("/var/lib/maculaos/config.yaml (secrets redacted)"),
            "{manifest}"
        );
        assert!(
            manifest.contains("20-broken.yaml (does not parse: left out)"),
            "{manifest}"
        );

        assert!(files["system/uname.txt"].starts_with("Linux macula-ab12"));
        assert!(files["system/os-release"].contains("VERSION_ID=\"0.3.0\""));
        assert!(files["system/dmesg.txt"].contains("`dmesg` is not installed"));
        let info: serde_json::Value = serde_json::from_str(&files["system/info.json"]).unwrap();
        assert_eq!(info["slot"], "B");
        assert!(files["journal/this-boot.txt"].contains("Linux version 6.1"));
        assert!(files["journal/previous-boot.txt"].starts_with("No previous boot in the journal"));
        assert!(files["journal/previous-boot.txt"].contains("in memory only"));
        // A failing JSON command: its JSON as printed.
        let health: serde_json::Value = serde_json::from_str(&files["health/health.json"]).unwrap();
        assert_eq!(health[0]["state"], "fail");
        assert!(files["updates/status.json"].contains("failed (exit code 1)"));
        // A failing text command: its output, then what failed.
        assert!(files["systemd/failed.txt"].starts_with("0 loaded units listed.\n\n--- `systemctl --failed --no-pager` failed (exit code 1):\nwarn"));

        // Secrets: gone from every member; public keys kept.
        for (n, body) in &files {
            for s in [
                "s3cr3t",
                "PRIVKEYDATA",
                "hunter2",
                "wifipass",
                "brokensecret",
            ] {
                assert!(!body.contains(s), "{s} in {n}:\n{body}");
            }
        }
        assert!(files["config/config.yaml"].contains("ssh-ed25519 AAAAPUBLIC admin@laptop"));
        assert!(files["config/config.yaml"].contains("realm: io.macula"));
        assert_eq!(
            files["config/config.d/20-broken.yaml"],
            "20-broken.yaml does not parse (line 2, column 6); not included (it may hold secrets)\n"
        );

        assert!(
            files["diag/network.txt"].contains("ip is not installed"),
            "{}",
            files["diag/network.txt"]
        );
        assert!(files["diag/storage.txt"].contains("Root: /dev/vda3 squashfs, read-only, slot B"));
        assert!(files["diag/mesh.txt"].contains("NATS server: not configured"));
        assert!(files["diag/mesh.txt"].contains("Realm: io.macula"));
    }

    #[test]
    fn bundle_without_any_tool_or_file() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("var/lib/maculaos/updates")).unwrap();
        fs::write(root.path().join(UPDATE_STATE), "{\"pending\":null}\n").unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("b.tar.gz");
        // An older bundle there is replaced.
        fs::write(&out, "old").unwrap();
        let names = bundle_with(
            root.path(),
            &out,
            &Tools::with_path(root.path().join("none")),
            |_| {},
        )
        .unwrap();
        let (_, files) = unpack(&out);
        assert!(
            names.contains(&"updates/state.json".to_string()),
            "{names:?}"
        );
        assert_eq!(files["updates/state.json"], "{\"pending\":null}\n");
        assert!(files["config/config.yaml"].contains("not present on this node"));
        assert!(files["system/os-release"].contains("not present"));
        assert!(files["health/health.json"].contains("`maculaos` is not installed"));
        let manifest = &files["MANIFEST.txt"];
        assert!(
            manifest.contains("`journalctl -b 0 --no-pager -o short-iso`: not found"),
            "{manifest}"
        );
        assert!(
            manifest.contains("`systemctl --failed --no-pager`: not found"),
            "{manifest}"
        );
    }

    #[test]
    fn bundle_errors_name_the_destination() {
        let root = tempfile::tempdir().unwrap();
        let err = bundle_with(
            root.path(),
            &root.path().join("no/such/dir/b.tar.gz"),
            &Tools::with_path(root.path()),
            |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("no/such/dir/b.tar.gz"), "{err}");
        let err = bundle_with(
            root.path(),
            root.path(),
            &Tools::with_path(root.path()),
            |_| {},
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("writing the support bundle to"),
            "{err}"
        );
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_714_564_800 + 3661), "2024-05-01T13:01:01Z");
    }
}
