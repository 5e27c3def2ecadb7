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
