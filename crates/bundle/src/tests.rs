use super::*;
use std::process::Command;
use tempfile::TempDir;

/// A fake slot image: 2.5 MiB of pseudo-random bytes (more than one copy chunk).
fn fake_payload(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..(5 << 19))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let p = dir.join("maculaos-0.2.0-amd64.squashfs");
    fs::write(&p, &data).unwrap();
    (p, data)
}

struct Fixture {
    dir: TempDir,
    payload: PathBuf,
    data: Vec<u8>,
    pk_path: PathBuf,
    sk_path: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (payload, data) = fake_payload(dir.path());
        let (pk_path, sk_path) = generate_keypair(&dir.path().join("keys"), "test").unwrap();
        Fixture {
            dir,
            payload,
            data,
            pk_path,
            sk_path,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn meta(&self) -> BundleMeta {
        BundleMeta {
            kernel: Some("6.1.0-test-amd64".into()),
            built_at: Some(1_700_000_000),
            ..BundleMeta::new("0.2.0", Channel::Stable)
        }
    }

    fn create(&self, meta: &BundleMeta) -> PathBuf {
        let out = self.path("out/maculaos-0.2.0-amd64.mos");
        create(&self.payload, &out, meta, &self.sk_path).unwrap();
        out
    }

    fn keys(&self) -> Vec<PublicKey> {
        vec![load_public_key(&self.pk_path).unwrap()]
    }
}

/// (name, data offset, size) of each entry, read with the tar crate's own reader.
fn entries(bundle: &Path) -> Vec<(String, u64, u64)> {
    let mut ar = tar::Archive::new(File::open(bundle).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.raw_file_position(),
                e.size(),
            )
        })
        .collect()
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

fn minisign_cli() -> bool {
    let ok = Command::new("minisign").arg("-v").output().is_ok();
    if !ok {
        eprintln!(
            "NOTE: `minisign` is not installed (apt-get install minisign): skipping this test"
        );
    }
    ok
}

fn extract(bundle: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    tar::Archive::new(File::open(bundle).unwrap())
        .unpack(dest)
        .unwrap();
}

#[test]
fn round_trip() {
    let fx = Fixture::new();
    let out = fx.create(&fx.meta());
    assert_eq!(out.file_name().unwrap(), "maculaos-0.2.0-amd64.mos");
    assert_eq!(
        bundle_file_name("0.2.0", "amd64"),
        "maculaos-0.2.0-amd64.mos"
    );
    assert!(!fx.path("out/maculaos-0.2.0-amd64.mos.partial").exists());

    // Layout: three entries in order, payload last and stored as is.
    let e = entries(&out);
    let names: Vec<&str> = e.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, [MANIFEST_ENTRY, SIGNATURE_ENTRY, PAYLOAD_ENTRY]);
    let raw = fs::read(&out).unwrap();
    let (_, off, size) = e[2];
    assert_eq!(&raw[off as usize..(off + size) as usize], &fx.data[..]);
    assert_eq!(&raw[257..263], b"ustar\0", "ustar headers");

    let opened = open(&out).unwrap();
    let m = opened.verify(&fx.keys()).unwrap().clone();
    assert_eq!(m.format, FORMAT);
    assert_eq!(m.os_version, "0.2.0");
    assert_eq!(m.arch, "amd64");
    assert_eq!(m.compatible, COMPATIBLE);
    assert_eq!(m.channel, Channel::Stable);
    assert_eq!(m.payload_size, fx.data.len() as u64);
    assert_eq!(m.payload_sha256, hex::encode(Sha256::digest(&fx.data)));
    assert_eq!(m.built_at, 1_700_000_000);
    assert_eq!(m.kernel.as_deref(), Some("6.1.0-test-amd64"));
    assert_eq!(
        opened.trusted_comment().as_deref(),
        Some("maculaos 0.2.0 amd64 stable")
    );
    assert_eq!(
        opened.signature_key_id(),
        key_id(&load_public_key(&fx.pk_path).unwrap())
    );
    // The manifest's JSON field names are the documented ones.
    let json: serde_json::Value = serde_json::from_slice(opened.manifest_bytes()).unwrap();
    for k in [
        "format",
        "os_version",
        "arch",
        "compatible",
        "channel",
        "payload_size",
        "payload_sha256",
        "built_at",
        "kernel",
    ] {
        assert!(json.get(k).is_some(), "manifest lacks {k}");
    }
    assert_eq!(json["channel"], "stable");

    let mut calls = Vec::new();
    let mut dest = Vec::new();
    let sha = copy_payload(opened, &mut dest, |d, t| calls.push((d, t))).unwrap();
    assert_eq!(sha, m.payload_sha256);
    assert_eq!(dest, fx.data);
    assert_eq!(calls.first(), Some(&(0, m.payload_size)));
    assert_eq!(calls.last(), Some(&(m.payload_size, m.payload_size)));
    assert!(calls.len() > 3, "progress per chunk: {calls:?}");
}

#[test]
fn reads_from_a_plain_stream() {
    // The node may read a bundle from a pipe or an HTTP body: no Seek needed.
    let fx = Fixture::new();
    let out = fx.create(&fx.meta());
    let bytes = fs::read(&out).unwrap();
    let opened = Reader::new(&bytes[..], "stdin").open().unwrap();
    opened.verify(&fx.keys()).unwrap();
    let mut dest = Vec::new();
    copy_payload(opened, &mut dest, |_, _| {}).unwrap();
    assert_eq!(dest, fx.data);
}

#[test]
fn tampered_payload_is_a_hash_mismatch() {
    let fx = Fixture::new();
    let out = fx.create(&fx.meta());
    let (_, off, size) = entries(&out)[2];
    flip_byte(&out, off + size / 2);
    let opened = open(&out).unwrap();
    opened.verify(&fx.keys()).unwrap();
    let expected = opened.manifest().payload_sha256.clone();
    let err = copy_payload(opened, &mut io::sink(), |_, _| {}).unwrap_err();
    match err {
        BundleError::PayloadHashMismatch {
            expected: e,
            actual,
        } => {
            assert_eq!(e, expected);
            assert_ne!(actual, expected);
        }
        e => panic!("{e}"),
    }
}

#[test]
fn truncated_payload_is_a_size_mismatch() {
    let fx = Fixture::new();
    let out = fx.create(&fx.meta());
    let (_, off, size) = entries(&out)[2];
    let bytes = fs::read(&out).unwrap();
    fs::write(&out, &bytes[..(off + size / 3) as usize]).unwrap();
    let opened = open(&out).unwrap();
    opened.verify(&fx.keys()).unwrap();
    let err = copy_payload(opened, &mut io::sink(), |_, _| {}).unwrap_err();
    assert!(
        matches!(err, BundleError::PayloadSizeMismatch { expected, actual } if expected == size && actual == size / 3),
        "{err}"
    );
}

#[test]
fn tampered_manifest_fails_the_signature() {
    let fx = Fixture::new();
    let out = fx.create(&fx.meta());
    let (_, off, size) = entries(&out)[0];
    let raw = fs::read(&out).unwrap();
    let manifest = &raw[off as usize..(off + size) as usize];
    // "0.2.0" -> "0.3.0": still valid JSON, still parses, but not what was signed.
    let at = manifest.windows(7).position(|w| w == b"\"0.2.0\"").unwrap();
    flip_byte(&out, off + at as u64 + 3);
    let opened = open(&out).unwrap();
    assert_eq!(opened.manifest().os_version, "0.3.0");
    let err = opened.verify(&fx.keys()).unwrap_err();
    assert!(matches!(err, BundleError::BadSignature { .. }), "{err}");
    assert!(err.to_string().contains("do not install it"), "{err}");
    // And nothing can be copied from it.
    let err = copy_payload(opened, &mut io::sink(), |_, _| {}).unwrap_err();
    assert!(matches!(err, BundleError::NotVerified), "{err}");
}

#[test]
fn tampered_trusted_comment_fails_the_signature() {
    let fx = Fixture::new();
    let out = fx.create(&fx.meta());
    let (_, off, size) = entries(&out)[1];
    let raw = fs::read(&out).unwrap();
    let sig = &raw[off as usize..(off + size) as usize];
    let at = sig.windows(6).position(|w| w == b"stable").unwrap();
    flip_byte(&out, off + at as u64);
    let err = open(&out).unwrap().verify(&fx.keys()).unwrap_err();
    assert!(matches!(err, BundleError::BadSignature { .. }), "{err}");
}

#[test]
fn wrong_key_is_untrusted() {
    let fx = Fixture::new();
    let out = fx.create(&fx.meta());
    let (other_pub, _) = generate_keypair(&fx.path("other"), "other").unwrap();
    let other = load_public_key(&other_pub).unwrap();
    let opened = open(&out).unwrap();
    let err = opened.verify(std::slice::from_ref(&other)).unwrap_err();
    match &err {
        BundleError::UntrustedSignature {
            signature_key,
            trusted,
        } => {
            assert_eq!(*signature_key, opened.signature_key_id());
            assert_eq!(*trusted, vec![key_id(&other)]);
        }
        e => panic!("{e}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&opened.signature_key_id()) && msg.contains(&key_id(&other)));

    let err = opened.verify(&[]).unwrap_err();
    assert!(matches!(err, BundleError::NoTrustedKeys { .. }), "{err}");

    // Any one trusted key is enough.
    opened.verify(&[other, fx.keys()[0].clone()]).unwrap();
}

#[test]
fn wrong_arch_is_refused() {
    let fx = Fixture::new();
    let meta = BundleMeta {
        arch: "arm64".into(),
        ..fx.meta()
    };
    let out = fx.create(&meta);
    let err = open(&out).unwrap().verify(&fx.keys()).unwrap_err();
    match err {
        BundleError::WrongArch { bundle, node } => {
            assert_eq!(bundle, "arm64");
            assert_eq!(node, NODE_ARCH);
        }
        e => panic!("{e}"),
    }
    // verify_for: the same bundle is fine for an arm64 system.
    open(&out)
        .unwrap()
        .verify_for(&fx.keys(), "arm64", COMPATIBLE)
        .unwrap();
}

/// A manifest for fx's payload with some fields changed, signed with fx's
/// key and assembled into a bundle.
fn custom_bundle(fx: &Fixture, edit: impl FnOnce(&mut BundleManifest)) -> PathBuf {
    let mut m = BundleManifest {
        format: FORMAT,
        os_version: "0.2.0".into(),
        arch: NODE_ARCH.into(),
        compatible: COMPATIBLE.into(),
        channel: Channel::Beta,
        payload_size: fx.data.len() as u64,
        payload_sha256: hex::encode(Sha256::digest(&fx.data)),
        built_at: 1,
        kernel: None,
    };
    edit(&mut m);
    let bytes = serde_json::to_vec(&m).unwrap();
    let sig = sign_manifest(&bytes, &fx.sk_path).unwrap();
    let out = fx.path("custom.mos");
    assemble(&bytes, &sig, &fx.payload, &out).unwrap();
    out
}

#[test]
fn incompatible_is_refused() {
    let fx = Fixture::new();
    let out = custom_bundle(&fx, |m| m.compatible = "maculaos-x86_64-mbr-v0".into());
    let err = open(&out).unwrap().verify(&fx.keys()).unwrap_err();
    match &err {
        BundleError::Incompatible { bundle, node } => {
            assert_eq!(bundle, "maculaos-x86_64-mbr-v0");
            assert_eq!(node, COMPATIBLE);
        }
        e => panic!("{e}"),
    }
}

#[test]
fn unknown_format_is_refused() {
    let fx = Fixture::new();
    let out = custom_bundle(&fx, |m| m.format = 2);
    let err = open(&out).unwrap().verify(&fx.keys()).unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::UnknownFormat {
                found: 2,
                supported: 1
            }
        ),
        "{err}"
    );
}

#[test]
fn bad_hash_in_signed_manifest_is_refused() {
    let fx = Fixture::new();
    let bytes = serde_json::to_vec(&BundleManifest {
        format: FORMAT,
        os_version: "0.2.0".into(),
        arch: NODE_ARCH.into(),
        compatible: COMPATIBLE.into(),
        channel: Channel::Beta,
        payload_size: fx.data.len() as u64,
        payload_sha256: "ABC".into(),
        built_at: 1,
        kernel: None,
    })
    .unwrap();
    let sig = sign_manifest(&bytes, &fx.sk_path).unwrap();
    // assemble itself refuses a payload that does not match, and leaves nothing.
    let out = fx.path("bad.mos");
    let err = assemble(&bytes, &sig, &fx.payload, &out).unwrap_err();
    assert!(
        matches!(err, BundleError::PayloadHashMismatch { .. }),
        "{err}"
    );
    assert!(!out.exists());
    assert!(!fx.path("bad.mos.partial").exists());
}

#[test]
fn assemble_refuses_a_payload_of_another_size() {
    let fx = Fixture::new();
    let out = custom_bundle(&fx, |_| {});
    let opened = open(&out).unwrap();
    let bytes = opened.manifest_bytes().to_vec();
    let sig = opened.signature_text().into_bytes();
    fs::write(&fx.payload, b"short").unwrap();
    let err = assemble(&bytes, &sig, &fx.payload, &fx.path("x.mos")).unwrap_err();
    assert!(
        matches!(err, BundleError::PayloadSizeMismatch { actual: 5, .. }),
        "{err}"
    );
}

#[test]
fn not_a_bundle() {
    let fx = Fixture::new();
    // Not a tar at all.
    let err = open(&fx.payload).err().unwrap();
    assert!(matches!(err, BundleError::NotABundle { .. }), "{err}");
    assert!(err.to_string().contains("not a MaculaOS bundle"), "{err}");
    // Empty file.
    let empty = fx.path("empty.mos");
    fs::write(&empty, b"").unwrap();
    let err = open(&empty).err().unwrap();
    assert!(err.to_string().contains("ends before"), "{err}");
    // A tar with the entries in another order.
    let wrong = fx.path("wrong.mos");
    let mut b = tar::Builder::new(File::create(&wrong).unwrap());
    b.append(&entry_header(PAYLOAD_ENTRY, 3, 0).unwrap(), &b"abc"[..])
        .unwrap();
    b.into_inner().unwrap();
    let err = open(&wrong).err().unwrap();
    assert!(
        err.to_string()
            .contains("expected entry manifest.json, found \"payload.squashfs\""),
        "{err}"
    );
}

#[test]
fn keygen_refuses_to_overwrite() {
    let fx = Fixture::new();
    let keys = fx.path("keys");
    let err = generate_keypair(&keys, "test").unwrap_err();
    assert!(matches!(err, BundleError::KeyExists { .. }), "{err}");
    // Even when only one half is there.
    fs::remove_file(&fx.pk_path).unwrap();
    let err = generate_keypair(&keys, "test").unwrap_err();
    assert!(matches!(err, BundleError::KeyExists { .. }), "{err}");
    assert!(generate_keypair(&keys, "../evil").is_err());

    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&fx.sk_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = fs::read_to_string(&fx.sk_path).unwrap();
    assert!(text.starts_with("untrusted comment: "));
}

#[test]
fn trusted_keys_from_a_directory() {
    let fx = Fixture::new();
    let dir = fx.path("trusted");
    fs::create_dir_all(&dir).unwrap();
    assert!(load_trusted_keys(&dir).unwrap().is_empty());
    let (b, _) = generate_keypair(&fx.path("k"), "b").unwrap();
    let (a, _) = generate_keypair(&fx.path("k"), "a").unwrap();
    fs::copy(&b, dir.join("b.pub")).unwrap();
    fs::copy(&a, dir.join("a.pub")).unwrap();
    fs::write(dir.join("README.md"), "not a key").unwrap();
    let keys = load_trusted_keys(&dir).unwrap();
    let ids: Vec<String> = keys.iter().map(key_id).collect();
    assert_eq!(
        ids,
        [
            key_id(&load_public_key(&a).unwrap()),
            key_id(&load_public_key(&b).unwrap())
        ]
    );
    fs::write(dir.join("c.pub"), "untrusted comment: x\nnot-base64\n").unwrap();
    let err = load_trusted_keys(&dir).unwrap_err();
    assert!(err.to_string().contains("c.pub"), "{err}");
    assert!(load_trusted_keys(&fx.path("missing")).is_err());
}

#[test]
fn encrypted_or_broken_secret_keys_are_refused() {
    use base64::Engine;
    let fx = Fixture::new();
    let text = fs::read_to_string(&fx.sk_path).unwrap();
    let line = text.lines().nth(1).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut bytes = b64.decode(line).unwrap();

    // Marked as scrypt-encrypted.
    bytes[2..4].copy_from_slice(b"Sc");
    let enc = fx.path("enc.key");
    fs::write(
        &enc,
        format!("untrusted comment: x\n{}\n", b64.encode(&bytes)),
    )
    .unwrap();
    let err = create(&fx.payload, &fx.path("o.mos"), &fx.meta(), &enc).unwrap_err();
    assert!(matches!(err, BundleError::EncryptedKey { .. }), "{err}");

    // A damaged seed or public half: signing checks itself against the public half.
    bytes[2..4].copy_from_slice(&[0, 0]);
    for at in [70, 100] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0xff;
        let broken = fx.path("broken.key");
        fs::write(
            &broken,
            format!("untrusted comment: x\n{}\n", b64.encode(&damaged)),
        )
        .unwrap();
        let err = create(&fx.payload, &fx.path("o.mos"), &fx.meta(), &broken).unwrap_err();
        assert!(
            matches!(err, BundleError::BadKey { .. }),
            "byte {at}: {err}"
        );
        assert!(!fx.path("o.mos").exists());
    }

    // A public key where a secret key belongs.
    let err = create(&fx.payload, &fx.path("o.mos"), &fx.meta(), &fx.pk_path).unwrap_err();
    assert!(matches!(err, BundleError::BadKey { .. }), "{err}");
}

#[test]
fn bad_versions_are_refused() {
    let fx = Fixture::new();
    for v in ["", "0.2 0", "0.2\n", "../0.2"] {
        let meta = BundleMeta::new(v, Channel::Stable);
        let err = create(&fx.payload, &fx.path("o.mos"), &meta, &fx.sk_path).unwrap_err();
        assert!(
            matches!(err, BundleError::InvalidName { .. }),
            "{v:?}: {err}"
        );
    }
}

#[test]
fn channel_names() {
    for c in Channel::ALL {
        assert_eq!(c.as_str().parse::<Channel>().unwrap(), c);
    }
    assert!("lts".parse::<Channel>().unwrap_err().contains("stable"));
}

#[test]
fn minisign_cli_verifies_our_signature() {
    if !minisign_cli() {
        return;
    }
    let fx = Fixture::new();
    let out = fx.create(&fx.meta());
    let x = fx.path("x");
    extract(&out, &x);
    let o = Command::new("minisign")
        .args(["-V", "-m", "manifest.json", "-p"])
        .arg(&fx.pk_path)
        .current_dir(&x)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "minisign -V failed: {text}");
    assert!(
        text.contains("Trusted comment: maculaos 0.2.0 amd64 stable"),
        "{text}"
    );

    // And it rejects a changed manifest.
    let m = x.join("manifest.json");
    let changed = fs::read_to_string(&m).unwrap().replace("0.2.0", "0.3.0");
    fs::write(&m, changed).unwrap();
    let o = Command::new("minisign")
        .args(["-V", "-q", "-m", "manifest.json", "-p"])
        .arg(&fx.pk_path)
        .current_dir(&x)
        .output()
        .unwrap();
    assert!(!o.status.success());
}

/// `minisign -G -W` keys and `minisign -S` signatures work with our code.
#[test]
fn minisign_cli_signature_is_accepted() {
    if !minisign_cli() {
        return;
    }
    let fx = Fixture::new();
    let cli = fx.path("cli");
    fs::create_dir_all(&cli).unwrap();
    let st = Command::new("minisign")
        .args(["-G", "-W", "-p", "cli.pub", "-s", "cli.key"])
        .current_dir(&cli)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");

    // Manifest signed by the CLI, bundle assembled from parts.
    let m = BundleManifest {
        format: FORMAT,
        os_version: "0.2.0".into(),
        arch: NODE_ARCH.into(),
        compatible: COMPATIBLE.into(),
        channel: Channel::Nightly,
        payload_size: fx.data.len() as u64,
        payload_sha256: hex::encode(Sha256::digest(&fx.data)),
        built_at: 1,
        kernel: None,
    };
    fs::write(cli.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let st = Command::new("minisign")
        .args(["-S", "-s", "cli.key", "-m", "manifest.json", "-t"])
        .arg(m.trusted_comment())
        .current_dir(&cli)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    let out = fx.path("cli.mos");
    assemble(
        &fs::read(cli.join("manifest.json")).unwrap(),
        &fs::read(cli.join("manifest.json.minisig")).unwrap(),
        &fx.payload,
        &out,
    )
    .unwrap();
    let cli_pub = load_public_key(&cli.join("cli.pub")).unwrap();
    let opened = open(&out).unwrap();
    assert_eq!(opened.verify(std::slice::from_ref(&cli_pub)).unwrap(), &m);
    let mut dest = Vec::new();
    copy_payload(opened, &mut dest, |_, _| {}).unwrap();
    assert_eq!(dest, fx.data);
    // Not with our own key, of course.
    let err = open(&out).unwrap().verify(&fx.keys()).unwrap_err();
    assert!(
        matches!(err, BundleError::UntrustedSignature { .. }),
        "{err}"
    );

    // Our keys sign with the CLI too.
    let st = Command::new("minisign")
        .args(["-S", "-x", "ours.minisig", "-m", "manifest.json", "-s"])
        .arg(&fx.sk_path)
        .current_dir(&cli)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    let ours = fx.path("ours.mos");
    assemble(
        &fs::read(cli.join("manifest.json")).unwrap(),
        &fs::read(cli.join("ours.minisig")).unwrap(),
        &fx.payload,
        &ours,
    )
    .unwrap();
    open(&ours).unwrap().verify(&fx.keys()).unwrap();

    // A `minisign -G -W` secret key (all-zero checksum in minisign 0.11) signs with `create`.
    let out2 = fx.path("cli2.mos");
    create(&fx.payload, &out2, &fx.meta(), &cli.join("cli.key")).unwrap();
    open(&out2).unwrap().verify(&[cli_pub]).unwrap();
}

#[test]
fn assemble_refuses_a_non_signature() {
    let fx = Fixture::new();
    let out = custom_bundle(&fx, |_| {});
    let bytes = open(&out).unwrap().manifest_bytes().to_vec();
    let err = assemble(&bytes, b"not a signature\n", &fx.payload, &fx.path("y.mos")).unwrap_err();
    assert!(matches!(err, BundleError::BadSignatureFile { .. }), "{err}");
    assert!(!fx.path("y.mos").exists());
}
