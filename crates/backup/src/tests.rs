use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use walkdir::WalkDir;

use super::*;
use crate::create::create_at;

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn set_mtime(p: &Path, secs: i64) {
    let t = TimeSpec::new(secs, 123_456_789);
    utimensat(
        None,
        p,
        &TimeSpec::UTIME_OMIT,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// The tree of the spec in seeds §4.13.2: config, user data, a cache that is
/// excluded, a missing include, a fifo that cannot be archived.
fn make_tree(root: &Path) {
    let data = root.join("var/lib/data");
    fs::create_dir_all(data.join("nested/deep")).unwrap();
    fs::create_dir_all(data.join("cache/blobs")).unwrap();
    fs::create_dir_all(root.join("var/lib/maculaos")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/hostname"), "node-1\n").unwrap();
    fs::write(data.join("a.txt"), "hello\n").unwrap();
    fs::write(data.join("empty"), "").unwrap();
    let bin: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(data.join("bin"), bin).unwrap();
    fs::write(data.join("nested/deep/x.txt"), "deep").unwrap();
    // Longer than a plain tar header holds: needs the GNU long-name member.
    fs::write(data.join("nested").join("l".repeat(120)), "long").unwrap();
    fs::write(data.join("secret"), "key").unwrap();
    fs::set_permissions(data.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    symlink("a.txt", data.join("link")).unwrap();
    fs::write(data.join("cache/blobs/junk"), "junk").unwrap();
    nix::unistd::mkfifo(&data.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    fs::write(root.join("var/lib/maculaos/config.yaml"), "x: 1\n").unwrap();
    if is_root() {
        std::os::unix::fs::lchown(data.join("a.txt"), Some(1234), Some(5678)).unwrap();
    }
    // Children before parents, so a directory's mtime is set last.
    let all: Vec<PathBuf> = WalkDir::new(root)
        .min_depth(1)
        .contents_first(true)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .collect();
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_600_000_000 + i as i64 * 1000);
    }
}

fn spec(root: &Path) -> Spec {
    Spec {
        include: vec![
            "/var/lib/maculaos".into(),
            "/var/lib/data/".into(),
            "/var/lib/missing".into(),
        ],
        exclude: vec!["/var/lib/data/cache".into()],
        root: root.to_path_buf(),
    }
}

/// Everything restore must bring back, per path under `root`.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        let md = e.path().symlink_metadata().unwrap();
        let what = if md.is_file() {
            hex::encode(Sha256::digest(fs::read(e.path()).unwrap()))
        } else if md.file_type().is_symlink() {
            format!("-> {}", fs::read_link(e.path()).unwrap().display())
        } else if md.is_dir() {
            "dir".to_string()
        } else {
            "other".to_string()
        };
        let owner = if is_root() {
            format!("{}:{}", md.uid(), md.gid())
        } else {
            String::new()
        };
        let line = format!(
            "{what} mode={:o} mtime={}.{} {owner}",
            md.mode(),
            md.mtime(),
            md.mtime_nsec()
        );
        out.insert(e.path().strip_prefix(root).unwrap().to_path_buf(), line);
    }
    out
}

/// A tree and a backup of it in another directory.
fn backed_up() -> (TempDir, TempDir, PathBuf) {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join(default_name("node-1", 1_705_312_800));
    create(&spec(src.path()), &dest, |_| {}).unwrap();
    (src, out, dest)
}

fn members(archive: &Path) -> Vec<(tar::Header, PathBuf, Vec<u8>)> {
    let mut ar = tar::Archive::new(GzDecoder::new(File::open(archive).unwrap()));
    ar.entries()
        .unwrap()
        .map(|m| {
            let mut m = m.unwrap();
            let mut data = Vec::new();
            m.read_to_end(&mut data).unwrap();
            (m.header().clone(), m.path().unwrap().into_owned(), data)
        })
        .collect()
}

/// Writes members back; headers as they are (so a test can put a name in
/// one that the tar crate would refuse), except that long names go through
/// append_data, which writes the GNU long-name member they need.
fn pack(archive: &Path, members: &[(tar::Header, PathBuf, Vec<u8>)]) {
    let gz = GzEncoder::new(File::create(archive).unwrap(), Compression::default());
    let mut b = tar::Builder::new(gz);
    for (h, path, data) in members {
        let mut h = h.clone();
        h.set_size(data.len() as u64);
        if path.as_os_str().len() > 99 {
            b.append_data(&mut h, path, data.as_slice()).unwrap();
        } else {
            h.set_cksum();
            b.append(&h, data.as_slice()).unwrap();
        }
    }
    b.into_inner().unwrap().finish().unwrap();
}

/// Restore must fail and leave `root` exactly as it was.
fn assert_refused(archive: &Path, root: &Path, expect: &str) {
    let before = snapshot(root);
    let err = restore(archive, root, |_| {}).unwrap_err().to_string();
    assert!(err.contains(expect), "error {err:?} should say {expect:?}");
    assert_eq!(snapshot(root), before, "a refused restore wrote something");
}

#[test]
fn round_trip_restores_contents_modes_mtimes_and_owners() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let before = snapshot(src.path());
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join(default_name("node-1", 1_705_312_800));
    let mut phases = Vec::new();
    let report = create(&spec(src.path()), &dest, |p| phases.push(p.phase)).unwrap();
    assert_eq!(report.files, 7);
    assert_eq!(report.dirs, 4);
    assert_eq!(report.symlinks, 1);
    assert_eq!(report.bytes, 6 + 200_000 + 4 + 4 + 3 + 5);
    assert_eq!(report.missing, vec![PathBuf::from("/var/lib/missing")]);
    assert_eq!(report.skipped, vec![PathBuf::from("/var/lib/data/pipe")]);
    assert!(phases.contains(&Phase::Hashing) && phases.contains(&Phase::Archiving));
    assert_eq!(fs::metadata(&dest).unwrap().mode() & 0o777, 0o600);
    let manifest = verify(&dest).unwrap();
    assert_eq!(manifest.hostname, "node-1");
    assert_eq!(
        members(&dest)[0].0.path().unwrap(),
        Path::new("manifest.json")
    );

    // Break the tree every way restore must undo.
    let data = src.path().join("var/lib/data");
    fs::write(data.join("a.txt"), "changed").unwrap();
    fs::remove_file(data.join("bin")).unwrap();
    fs::remove_dir_all(data.join("nested")).unwrap();
    fs::set_permissions(data.join("secret"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::remove_file(data.join("link")).unwrap();
    fs::write(data.join("link"), "not a link").unwrap();
    fs::write(data.join("extra.txt"), "made after the backup").unwrap();

    let mut phases = Vec::new();
    let report = restore(&dest, src.path(), |p| phases.push(p.phase)).unwrap();
    assert_eq!((report.files, report.dirs, report.symlinks), (7, 4, 1));
    assert!(phases.contains(&Phase::Verifying) && phases.contains(&Phase::Restoring));
    if is_root() {
        assert_eq!(report.owners_not_set, 0);
    }
    let mut after = snapshot(src.path());
    // Not in the backup, so left alone.
    assert!(after.remove(Path::new("var/lib/data/extra.txt")).is_some());
    assert_eq!(after, before);
}

#[test]
fn restore_into_an_empty_root() {
    let (src, _out, dest) = backed_up();
    let empty = tempfile::tempdir().unwrap();
    restore(&dest, empty.path(), |_| {}).unwrap();
    let backed: BTreeMap<_, _> = snapshot(src.path())
        .into_iter()
        .filter(|(p, _)| {
            (p.starts_with("var/lib/data") || p.starts_with("var/lib/maculaos"))
                && !p.starts_with("var/lib/data/cache")
                && !p.ends_with("pipe")
        })
        .collect();
    let restored: BTreeMap<_, _> = snapshot(empty.path())
        .into_iter()
        .filter(|(p, _)| p.starts_with("var/lib/data") || p.starts_with("var/lib/maculaos"))
        .collect();
    assert_eq!(restored, backed);
}

#[test]
fn excluded_subtree_is_not_in_the_archive() {
    let (_src, _out, dest) = backed_up();
    let manifest = verify(&dest).unwrap();
    assert!(manifest
        .entries
        .iter()
        .any(|e| e.path == "/var/lib/data/a.txt"));
    assert!(!manifest.entries.iter().any(|e| e.path.contains("cache")));
    let names: Vec<_> = members(&dest).into_iter().map(|(_, p, _)| p).collect();
    assert!(names.contains(&PathBuf::from("files/var/lib/data/a.txt")));
    assert!(!names.iter().any(|p| p.to_string_lossy().contains("cache")));
}

#[test]
fn flipped_byte_is_refused_and_nothing_is_written() {
    let (src, _out, dest) = backed_up();
    fs::write(src.path().join("var/lib/data/a.txt"), "changed").unwrap();
    let mut bytes = fs::read(&dest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&dest, bytes).unwrap();
    assert!(verify(&dest).is_err());
    assert_refused(&dest, src.path(), "");
}

#[test]
fn altered_manifest_hash_is_refused() {
    let (src, _out, dest) = backed_up();
    fs::write(src.path().join("var/lib/data/a.txt"), "changed").unwrap();
    let mut all = members(&dest);
    let mut manifest: Manifest = serde_json::from_slice(&all[0].2).unwrap();
    for e in &mut manifest.entries {
        if e.path == "/var/lib/data/bin" {
            e.sha256 = Some("0".repeat(64));
        }
    }
    all[0].2 = serde_json::to_vec(&manifest).unwrap();
    pack(&dest, &all);
    assert_refused(&dest, src.path(), "files/var/lib/data/bin: sha256 is ");
    let err = verify(&dest).unwrap_err().to_string();
    assert!(
        err.contains(&format!("manifest says {}", "0".repeat(64))),
        "{err}"
    );
}

#[test]
fn truncated_archive_is_refused() {
    let (src, _out, dest) = backed_up();
    fs::write(src.path().join("var/lib/data/a.txt"), "changed").unwrap();
    let whole = fs::read(&dest).unwrap();
    // In the middle, and just before the end (only the gzip trailer lost).
    for cut in [whole.len() / 2, whole.len() - 4] {
        fs::write(&dest, &whole[..cut]).unwrap();
        assert_refused(&dest, src.path(), "truncated");
    }
}

#[test]
fn archive_without_manifest_first_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("x.tar.gz");
    let mut h = tar::Header::new_gnu();
    h.set_path("hello.txt").unwrap();
    pack(&dest, &[(h, "hello.txt".into(), b"hi".to_vec())]);
    assert_refused(
        &dest,
        root.path(),
        "not a MaculaOS backup: no manifest.json first",
    );
}

#[test]
fn member_escaping_the_root_is_refused() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a.txt"), "hi").unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("b.tar.gz");
    let spec = Spec {
        include: vec!["/a.txt".into()],
        exclude: vec![],
        root: src.path().to_path_buf(),
    };
    create(&spec, &dest, |_| {}).unwrap();
    let good = members(&dest);
    assert_eq!(good[1].0.path().unwrap(), Path::new("files/a.txt"));
    for evil in [&b"files/../a.txt"[..], b"/files/a.txt"] {
        let mut all = good.clone();
        let name = &mut all[1].0.as_old_mut().name;
        name.fill(0);
        name[..evil.len()].copy_from_slice(evil);
        pack(&dest, &all);
        let target = tempfile::tempdir().unwrap();
        let inner = target.path().join("root");
        fs::create_dir(&inner).unwrap();
        assert_refused(&dest, &inner, "absolute or contains `..`");
        assert_eq!(snapshot(target.path()).len(), 1);
    }
}

#[test]
fn owner_that_cannot_be_set_is_counted_not_fatal() {
    let (src, _out, dest) = backed_up();
    // Give a.txt an owner nobody but root may hand out; the hashes still hold.
    let mut all = members(&dest);
    let mut manifest: Manifest = serde_json::from_slice(&all[0].2).unwrap();
    let me = fs::metadata(src.path()).unwrap().uid();
    let other = if me == 4321 { 4322 } else { 4321 };
    for e in &mut manifest.entries {
        if e.path == "/var/lib/data/a.txt" {
            e.uid = other;
        }
    }
    all[0].2 = serde_json::to_vec(&manifest).unwrap();
    pack(&dest, &all);
    let report = restore(&dest, src.path(), |_| {}).unwrap();
    let a = src.path().join("var/lib/data/a.txt");
    assert_eq!(fs::read(&a).unwrap(), b"hello\n");
    if is_root() {
        assert_eq!(report.owners_not_set, 0);
        assert_eq!(fs::metadata(&a).unwrap().uid(), other);
    } else {
        assert!(report.owners_not_set >= 1);
    }
}

#[test]
fn directory_in_the_way_is_refused_before_writing() {
    let (src, _out, dest) = backed_up();
    let data = src.path().join("var/lib/data");
    fs::write(src.path().join("var/lib/maculaos/config.yaml"), "changed").unwrap();
    fs::remove_file(data.join("a.txt")).unwrap();
    fs::create_dir(data.join("a.txt")).unwrap();
    assert_refused(&dest, src.path(), "the disk has a directory");
}

#[test]
fn file_changed_between_passes_fails_and_leaves_no_archive() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("b.tar.gz");
    let a = src.path().join("var/lib/data/a.txt");
    let err = create(&spec(src.path()), &dest, |p| {
        if p.phase == Phase::Archiving && p.path == "/var/lib/data/a.txt" {
            fs::write(&a, "HELLO\n").unwrap();
        }
    })
    .unwrap_err();
    assert!(
        matches!(&err, BackupError::Changed { path } if *path == a),
        "{err}"
    );
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn archive_written_inside_an_included_tree_leaves_itself_out() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let backups = src.path().join("var/lib/data/backups");
    fs::create_dir(&backups).unwrap();
    let dest = backups.join("b.tar.gz");
    create(&spec(src.path()), &dest, |_| {}).unwrap();
    let manifest = verify(&dest).unwrap();
    assert!(manifest
        .entries
        .iter()
        .any(|e| e.path == "/var/lib/data/backups"));
    assert!(!manifest
        .entries
        .iter()
        .any(|e| e.path.starts_with("/var/lib/data/backups/")));
    let again = create(&spec(src.path()), &dest, |_| {}).unwrap_err();
    assert!(matches!(again, BackupError::Exists { .. }), "{again}");
}

#[test]
fn list_is_newest_first_and_prune_keeps_the_newest() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let name = |t| out.path().join(default_name("node-1", t));
    for t in [1_000, 3_000, 2_000] {
        create_at(&spec(src.path()), &name(t), t, |_| {}).unwrap();
    }
    let damaged = out
        .path()
        .join("maculaos-backup-node-1-20990101T000000Z.tar.gz");
    fs::write(&damaged, "this is text, not a gzip archive").unwrap();
    fs::write(out.path().join("notes.txt"), "").unwrap();
    fs::write(out.path().join(".maculaos-backup-x.partial"), "").unwrap();

    let listed = list(out.path()).unwrap();
    let created: Vec<_> = listed.iter().map(|l| l.created).collect();
    assert_eq!(created, [Some(3_000), Some(2_000), Some(1_000), None]);
    assert_eq!(listed[0].path, name(3_000));
    assert_eq!(listed[0].hostname.as_deref(), Some("node-1"));
    assert!(listed[0].size > 0);
    assert!(listed[3]
        .damaged
        .as_deref()
        .unwrap_or_default()
        .contains("damaged"));

    assert_eq!(prune(out.path(), 1).unwrap(), [name(2_000), name(1_000)]);
    let mut left: Vec<_> = fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    left.sort();
    let mut want = vec![
        name(3_000),
        damaged,
        out.path().join("notes.txt"),
        out.path().join(".maculaos-backup-x.partial"),
    ];
    want.sort();
    assert_eq!(left, want);
    assert!(prune(out.path(), 1).unwrap().is_empty());
}

#[test]
fn default_name_is_utc() {
    assert_eq!(
        default_name("node-1", 0),
        "maculaos-backup-node-1-19700101T000000Z.tar.gz"
    );
    assert_eq!(
        default_name("node-1", 1_705_312_800 + 3_661),
        "maculaos-backup-node-1-20240115T110101Z.tar.gz"
    );
    // Leap day, and a hostname with a character a file name must not hold.
    assert_eq!(
        default_name("a/b", 951_782_400),
        "maculaos-backup-a-b-20000229T000000Z.tar.gz"
    );
}

// ---------------------------------------------------------------------------
// Encrypted backups. A stand-in for `age` (a shell script) tests the control
// flow everywhere; the real tool is tried too where it is installed.

/// Parses age's arguments; then the caller's lines act. Every run appends
/// its input path to `<script>.log`, so a test can check that the plain
/// archive it was given is gone. It also fails unless what it reads or
/// writes next to the backup is in a private (0700) directory.
const FAKE_AGE_ARGS: &str = r#"#!/bin/sh
mode=; recipients=; identity=; out=; in=
while [ $# -gt 0 ]; do
  case "$1" in
    -e) mode=e ;;
    -d) mode=d ;;
    -r) recipients="$recipients [$2]"; shift ;;
    -i) identity=$2; shift ;;
    -o) out=$2; shift ;;
    *) in=$1 ;;
  esac
  shift
done
echo "$in" >> "$0.log"
[ "$(stat -c %a "$(dirname "$out")")" = 700 ] || { echo "age: error: $out is not private" >&2; exit 3; }
"#;

/// "Encrypts" by base64 after an age header and a line naming the
/// recipients; "decrypts" only with an identity file holding one of them.
const FAKE_AGE: &str = r#"
if [ "$mode" = e ]; then
  [ "$(stat -c %a "$(dirname "$in")")" = 700 ] || { echo "age: error: $in is not private" >&2; exit 3; }
  { echo age-encryption.org/v1; echo "-> fake$recipients"; base64 "$in"; } > "$out"
else
  key=$(cat "$identity") || exit 1
  sed -n 2p "$in" | grep -qF "[$key]" || { echo "age: error: no identity matched any of the recipients" >&2; exit 1; }
  tail -n +3 "$in" | base64 -d > "$out"
fi
"#;

/// Fails half-way, leaving a partial output as a crashing tool would.
const FAILING_AGE: &str = r#"
echo partial > "$out"
echo "age: error: write failed: no space left on device" >&2
exit 1
"#;

/// Written by a child process: a file descriptor of ours open for writing
/// could leak into a process another test forks at that moment, and running
/// the script would then fail with "text file busy" (ETXTBSY).
fn fake_age(dir: &Path, name: &str, body: &str) -> (Age, PathBuf) {
    let path = dir.join(name);
    maculaos_runner::Cmd::new("/bin/sh")
        .args(["-c", "cat >\"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(&path)
        .stdin(format!("{FAKE_AGE_ARGS}{body}"))
        .quiet()
        .run()
        .unwrap();
    (Age::at(&path), dir.join(format!("{name}.log")))
}

/// The inputs the stand-in was given (all plain archives when encrypting).
fn inputs(log: &Path) -> Vec<PathBuf> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(PathBuf::from)
        .collect()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

const RECIPIENTS: [&str; 2] = [
    "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB admin@laptop",
];

fn recipients() -> Vec<String> {
    RECIPIENTS.iter().map(|r| r.to_string()).collect()
}

fn encrypted_name(t: u64) -> String {
    format!("{}.age", default_name("node-1", t))
}

/// A tree, an encrypted backup of it (made with the stand-in) and the
/// stand-in's directory.
fn encrypted_backup() -> (TempDir, TempDir, PathBuf, TempDir, Age) {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join(encrypted_name(1_705_312_800));
    let tools = tempfile::tempdir().unwrap();
    let (age, _) = fake_age(tools.path(), "age", FAKE_AGE);
    create_encrypted(&age, &spec(src.path()), &dest, &recipients(), |_| {}).unwrap();
    (src, out, dest, tools, age)
}

fn key_file(dir: &Path, key: &str) -> PathBuf {
    let path = dir.join(format!("key-{}", key.len()));
    fs::write(&path, format!("{key}\n")).unwrap();
    path
}

#[test]
fn encrypted_backup_leaves_no_plain_copy_and_restores_with_a_key() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let before = snapshot(src.path());
    let out = tempfile::tempdir().unwrap();
    let name = encrypted_name(1_705_312_800);
    let dest = out.path().join(&name);
    let tools = tempfile::tempdir().unwrap();
    let (age, log) = fake_age(tools.path(), "age", FAKE_AGE);
    let mut phases = Vec::new();
    let report = create_encrypted(&age, &spec(src.path()), &dest, &recipients(), |p| {
        phases.push(p.phase)
    })
    .unwrap();
    assert_eq!((report.files, report.dirs, report.symlinks), (7, 4, 1));
    for phase in [Phase::Hashing, Phase::Archiving, Phase::Encrypting] {
        assert!(phases.contains(&phase), "{phase:?} not reported");
    }
    // Only the encrypted backup is left, private; the plain archive is gone.
    assert_eq!(names_in(out.path()), std::slice::from_ref(&name));
    assert_eq!(fs::metadata(&dest).unwrap().mode() & 0o777, 0o600);
    let text = fs::read_to_string(&dest).unwrap();
    assert!(
        text.starts_with("age-encryption.org/v1\n-> fake [age1ql3z"),
        "{text:.80}"
    );
    assert!(text.contains("[ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB admin@laptop]"));
    let plain = inputs(&log);
    assert_eq!(plain.len(), 1);
    assert!(!plain[0].exists() && !plain[0].parent().unwrap().exists());

    // Break the tree, then restore with the SSH key's "private half".
    let data = src.path().join("var/lib/data");
    fs::write(data.join("a.txt"), "changed").unwrap();
    fs::remove_dir_all(data.join("nested")).unwrap();
    let identity = key_file(tools.path(), RECIPIENTS[1]);
    let mut phases = Vec::new();
    let report =
        restore_encrypted(&age, &dest, &identity, src.path(), |p| phases.push(p.phase)).unwrap();
    assert_eq!((report.files, report.dirs, report.symlinks), (7, 4, 1));
    assert_eq!(snapshot(src.path()), before);
    for phase in [Phase::Decrypting, Phase::Verifying, Phase::Restoring] {
        assert!(phases.contains(&phase), "{phase:?} not reported");
    }
    // The decrypted copy is gone too.
    assert_eq!(names_in(out.path()), [name]);
    let decrypted = inputs(&log);
    assert_eq!(decrypted[1], dest);
    let manifest = verify_encrypted(&age, &dest, &identity).unwrap();
    assert_eq!(manifest.hostname, "node-1");
    assert_eq!(names_in(out.path()).len(), 1);
}

#[test]
fn failed_encryption_leaves_nothing_behind() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join(encrypted_name(1_705_312_800));
    let tools = tempfile::tempdir().unwrap();
    let (age, log) = fake_age(tools.path(), "age", FAILING_AGE);
    let err = create_encrypted(&age, &spec(src.path()), &dest, &recipients(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("cannot encrypt {}: `", dest.display())),
        "{err}"
    );
    assert!(err.contains("no space left on device"), "{err}");
    assert!(
        names_in(out.path()).is_empty(),
        "{:?}",
        names_in(out.path())
    );
    let plain = inputs(&log);
    assert_eq!(plain.len(), 1);
    assert!(!plain[0].exists());
}

#[test]
fn missing_age_says_to_install_it() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join(encrypted_name(1_705_312_800));
    let age = Age::at(out.path().join("no-such-age"));
    let err = create_encrypted(&age, &spec(src.path()), &dest, &recipients(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("install the `age` package"), "{err}");
    assert!(names_in(out.path()).is_empty());
}

#[test]
fn encrypted_backup_without_a_key_is_refused() {
    let (src, _out, dest, _tools, _age) = encrypted_backup();
    fs::write(src.path().join("var/lib/data/a.txt"), "changed").unwrap();
    let want = format!(
        "{} is encrypted to an age key: give the private key with --identity FILE",
        dest.display()
    );
    assert_eq!(verify(&dest).unwrap_err().to_string(), want);
    assert_refused(&dest, src.path(), &want);
    // Renamed by hand, it is still known by its header.
    let renamed = dest.with_file_name("renamed.tar.gz");
    fs::rename(&dest, &renamed).unwrap();
    assert!(is_encrypted(&renamed));
    assert_refused(&renamed, src.path(), "is encrypted to an age key");
}

#[test]
fn wrong_key_is_refused_before_anything_is_written() {
    let (src, out, dest, tools, age) = encrypted_backup();
    fs::write(src.path().join("var/lib/data/a.txt"), "changed").unwrap();
    let before = snapshot(src.path());
    let other = key_file(tools.path(), "AGE-SECRET-KEY-1SOMEONEELSE");
    let err = restore_encrypted(&age, &dest, &other, src.path(), |_| {}).unwrap_err();
    assert!(matches!(err, BackupError::WrongKey { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.starts_with(&dest.display().to_string()), "{msg}");
    assert!(msg.contains("the key does not match"), "{msg}");
    assert_eq!(
        snapshot(src.path()),
        before,
        "a refused restore wrote something"
    );
    assert_eq!(names_in(out.path()).len(), 1, "{:?}", names_in(out.path()));
    // A key file that is not there is named as such, not left to age.
    let err = restore_encrypted(&age, &dest, &tools.path().join("nope"), src.path(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cannot read the private key file"), "{err}");
}

#[test]
fn damaged_encrypted_backup_is_refused_under_its_own_name() {
    let (src, out, dest, tools, age) = encrypted_backup();
    fs::write(src.path().join("var/lib/data/a.txt"), "changed").unwrap();
    // Decrypts fine (the stand-in has no MAC) but the archive is cut short.
    let text = fs::read_to_string(&dest).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.truncate(lines.len() / 2);
    fs::write(&dest, lines.join("\n") + "\n").unwrap();
    let identity = key_file(tools.path(), RECIPIENTS[0]);
    let before = snapshot(src.path());
    let err = restore_encrypted(&age, &dest, &identity, src.path(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("{}: archive is truncated", dest.display())),
        "{err}"
    );
    assert_eq!(snapshot(src.path()), before);
    assert_eq!(names_in(out.path()).len(), 1);
}

#[test]
fn encrypted_names_and_recipients_are_checked() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let tools = tempfile::tempdir().unwrap();
    let (age, log) = fake_age(tools.path(), "age", FAKE_AGE);
    let plain_name = out.path().join(default_name("node-1", 1));
    let err =
        create_encrypted(&age, &spec(src.path()), &plain_name, &recipients(), |_| {}).unwrap_err();
    assert!(err.to_string().contains("must end in .age"), "{err}");
    let age_name = out.path().join(encrypted_name(1));
    let err = create_encrypted(&age, &spec(src.path()), &age_name, &[], |_| {}).unwrap_err();
    assert!(matches!(err, BackupError::NoRecipients { .. }), "{err}");
    let err = create(&spec(src.path()), &age_name, |_| {}).unwrap_err();
    assert!(
        err.to_string().contains("marks an encrypted backup"),
        "{err}"
    );
    fs::write(&age_name, "").unwrap();
    let err =
        create_encrypted(&age, &spec(src.path()), &age_name, &recipients(), |_| {}).unwrap_err();
    assert!(matches!(err, BackupError::Exists { .. }), "{err}");
    assert!(inputs(&log).is_empty());
    assert_eq!(names_in(out.path()).len(), 1);
}

#[test]
fn encrypted_backup_inside_an_included_tree_leaves_its_work_out() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let backups = src.path().join("var/lib/data/backups");
    fs::create_dir(&backups).unwrap();
    let tools = tempfile::tempdir().unwrap();
    let (age, _) = fake_age(tools.path(), "age", FAKE_AGE);
    let dest = backups.join(encrypted_name(1));
    create_encrypted(&age, &spec(src.path()), &dest, &recipients(), |_| {}).unwrap();
    let identity = key_file(tools.path(), RECIPIENTS[0]);
    let manifest = verify_encrypted(&age, &dest, &identity).unwrap();
    assert!(manifest
        .entries
        .iter()
        .any(|e| e.path == "/var/lib/data/backups"));
    assert!(!manifest
        .entries
        .iter()
        .any(|e| e.path.starts_with("/var/lib/data/backups/")));
}

#[test]
fn leftovers_of_a_killed_run_are_swept() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    // No process has this pid (above the kernel's largest pid_max).
    let dead = out
        .path()
        .join(".maculaos-backup-999999999-AbCdEf.encrypting");
    fs::create_dir(&dead).unwrap();
    fs::write(dead.join("backup.tar.gz"), "plain secrets").unwrap();
    let alive = out.path().join(format!(
        ".maculaos-backup-{}-AbCdEf.decrypting",
        std::process::id()
    ));
    fs::create_dir(&alive).unwrap();
    let tools = tempfile::tempdir().unwrap();
    let (age, _) = fake_age(tools.path(), "age", FAKE_AGE);
    let dest = out.path().join(encrypted_name(1));
    create_encrypted(&age, &spec(src.path()), &dest, &recipients(), |_| {}).unwrap();
    assert!(!dead.exists());
    assert!(alive.exists(), "a running process's directory was deleted");
}

#[test]
fn list_shows_encrypted_backups_and_prune_counts_them() {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let out = tempfile::tempdir().unwrap();
    let tools = tempfile::tempdir().unwrap();
    let (age, _) = fake_age(tools.path(), "age", FAKE_AGE);
    let plain = |t| out.path().join(default_name("node-1", t));
    let enc = |t| out.path().join(encrypted_name(t));
    for t in [1_000, 3_000] {
        create_at(&spec(src.path()), &plain(t), t, |_| {}).unwrap();
    }
    for t in [2_000, 4_000] {
        create_encrypted(&age, &spec(src.path()), &enc(t), &recipients(), |_| {}).unwrap();
        // Their time is the file's: make it the backup's.
        set_mtime(&enc(t), t as i64);
    }
    let damaged = out.path().join(encrypted_name(5_000));
    fs::write(&damaged, "not encrypted at all").unwrap();
    fs::write(out.path().join("notes.txt.age"), "").unwrap();

    let listed = list(out.path()).unwrap();
    let rows: Vec<_> = listed
        .iter()
        .map(|l| (l.path.clone(), l.created, l.encrypted))
        .collect();
    assert_eq!(
        rows,
        [
            (enc(4_000), Some(4_000), true),
            (plain(3_000), Some(3_000), false),
            (enc(2_000), Some(2_000), true),
            (plain(1_000), Some(1_000), false),
            (damaged.clone(), None, true),
        ]
    );
    assert_eq!(listed[0].hostname, None);
    assert!(listed[0].damaged.is_none() && listed[0].size > 0);
    assert_eq!(listed[1].hostname.as_deref(), Some("node-1"));
    assert!(listed[4]
        .damaged
        .as_deref()
        .unwrap_or_default()
        .contains("not an age-encrypted file"));

    assert_eq!(prune(out.path(), 2).unwrap(), [enc(2_000), plain(1_000)]);
    assert_eq!(
        names_in(out.path()),
        [
            encrypted_name(4_000),
            default_name("node-1", 3_000),
            encrypted_name(5_000),
            "notes.txt.age".to_string(),
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
}

/// With the real `age` and `age-keygen` where they are installed.
#[test]
fn real_age_round_trip() {
    if !(maculaos_runner::have("age") && maculaos_runner::have("age-keygen")) {
        eprintln!("skipped: `age` and `age-keygen` are not installed (apt-get install age)");
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let keygen = |name: &str| {
        let path = keys.path().join(name);
        maculaos_runner::Cmd::new("age-keygen")
            .arg("-o")
            .arg(&path)
            .quiet()
            .run()
            .unwrap();
        let public = maculaos_runner::Cmd::new("age-keygen")
            .arg("-y")
            .arg(&path)
            .output()
            .unwrap();
        (path, public.trim().to_string())
    };
    let (mine, my_public) = keygen("mine.txt");
    let (theirs, _) = keygen("theirs.txt");
    let (src, _out, dest) = {
        let src = tempfile::tempdir().unwrap();
        make_tree(src.path());
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join(encrypted_name(1_705_312_800));
        create_encrypted(
            &Age::default(),
            &spec(src.path()),
            &dest,
            &[my_public],
            |_| {},
        )
        .unwrap();
        (src, out, dest)
    };
    assert!(fs::read(&dest)
        .unwrap()
        .starts_with(b"age-encryption.org/v1\n"));
    assert_eq!(list(dest.parent().unwrap()).unwrap()[0].damaged, None);

    let empty = tempfile::tempdir().unwrap();
    let err = restore_encrypted(&Age::default(), &dest, &theirs, empty.path(), |_| {}).unwrap_err();
    assert!(matches!(err, BackupError::WrongKey { .. }), "{err}");
    assert!(snapshot(empty.path()).is_empty());

    restore_encrypted(&Age::default(), &dest, &mine, empty.path(), |_| {}).unwrap();
    let backed = snapshot(src.path());
    assert_eq!(
        snapshot(empty.path()).get(Path::new("var/lib/data/bin")),
        backed.get(Path::new("var/lib/data/bin"))
    );
    assert_eq!(names_in(dest.parent().unwrap()).len(), 1);

    // An SSH key as recipient: one argument with spaces in it.
    if !maculaos_runner::have("ssh-keygen") {
        eprintln!("SSH recipients not tried: ssh-keygen is not installed");
        return;
    }
    let ssh = keys.path().join("id_ed25519");
    maculaos_runner::Cmd::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "admin@laptop", "-f"])
        .arg(&ssh)
        .quiet()
        .run()
        .unwrap();
    let public = fs::read_to_string(ssh.with_extension("pub")).unwrap();
    let dest = dest.with_file_name(encrypted_name(1_705_312_801));
    create_encrypted(
        &Age::default(),
        &spec(src.path()),
        &dest,
        &[public.trim().to_string()],
        |_| {},
    )
    .unwrap();
    verify_encrypted(&Age::default(), &dest, &ssh).unwrap();
}
