use super::*;
use maculaos_bundle::{generate_keypair, load_public_key, BundleMeta, Channel};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Duration;
use tempfile::TempDir;

const PARTITION_SIZE: u64 = 4 << 20;
/// More than one copy chunk (1 MiB), not a multiple of it.
const PAYLOAD_SIZE: usize = (3 << 19) + 123;
const NEW_KERNEL: &[u8] = b"new kernel";
const NEW_INITRD: &[u8] = b"new initrd";
const ARCH: &str = "amd64";

fn fake_payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn vars(pairs: &[(&str, &str)]) -> grubenv::Vars {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Fx {
    dir: TempDir,
    payload: Vec<u8>,
    keys: Vec<PublicKey>,
    secret: PathBuf,
    target: Target,
}

impl Fx {
    /// Running 1.0.0 in slot A (the good slot); slot B holds an old 0.9.0.
    fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (public, secret) = generate_keypair(&root.join("keys"), "test").unwrap();
        let keys = vec![load_public_key(&public).unwrap()];
        let payload = fake_payload(PAYLOAD_SIZE, 0x9E37_79B9_7F4A_7C15);
        let partition = root.join("vda4");
        fs::write(&partition, vec![0xEE; PARTITION_SIZE as usize]).unwrap();
        let esp = root.join("esp");
        fs::create_dir_all(esp.join("grub")).unwrap();
        grubenv::write(&esp.join("grub/grubenv"), &vars(&[("maculaos_slot", "A")])).unwrap();
        for (slot, ver) in [(Slot::A, "1.0.0"), (Slot::B, "0.9.0")] {
            let d = esp.join(format!("slots/{slot}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(KERNEL), format!("kernel {ver}")).unwrap();
            fs::write(d.join(INITRD), format!("initrd {ver}")).unwrap();
            fs::write(
                d.join(SLOT_CFG),
                slot_cfg(
                    slot,
                    ver,
                    &maculaos_slots::SlotImage {
                        size: 1,
                        sha256: "00".repeat(32),
                    },
                ),
            )
            .unwrap();
        }
        let target = Target {
            slot: Slot::B,
            running_slot: Slot::A,
            running_version: "1.0.0".into(),
            partition,
            partition_size: PARTITION_SIZE,
            esp,
            state_dir: root.join("state/updates"),
        };
        Fx {
            dir,
            payload,
            keys,
            secret,
            target,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A bundle of `version` holding `self.payload`, signed with the trusted key.
    fn bundle(&self, version: &str) -> PathBuf {
        self.bundle_signed(version, &self.secret)
    }

    fn bundle_signed(&self, version: &str, secret: &Path) -> PathBuf {
        let payload = self.path("payload.squashfs");
        fs::write(&payload, &self.payload).unwrap();
        let out = self.path(&format!("bundles/{}", version_file(version)));
        let meta = BundleMeta {
            built_at: Some(1_700_000_000),
            ..BundleMeta::new(version, Channel::Stable)
        };
        maculaos_bundle::create(&payload, &out, &meta, secret).unwrap();
        out
    }

    fn grubenv(&self) -> grubenv::Vars {
        grubenv::read(&self.target.grubenv()).unwrap()
    }

    fn set_grubenv(&self, pairs: &[(&str, &str)]) {
        grubenv::write(&self.target.grubenv(), &vars(pairs)).unwrap();
    }

    fn slot_file(&self, slot: Slot, name: &str) -> PathBuf {
        self.target.esp.join(format!("slots/{slot}/{name}"))
    }

    /// Everything apply may write, as bytes: the partition and every ESP file.
    fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        out.insert(
            "partition".into(),
            fs::read(&self.target.partition).unwrap(),
        );
        let mut stack = vec![self.target.esp.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let key = p.strip_prefix(&self.target.esp).unwrap().display();
                    out.insert(key.to_string(), fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    fn run(&self, bundle: &Path, opts: Options) -> Result<(Applied, Vec<Progress>)> {
        self.run_with(bundle, opts, &FakeBoot::new(self), &mut |_| {})
    }

    fn run_with(
        &self,
        bundle: &Path,
        opts: Options,
        boot: &dyn BootFiles,
        after_write: &mut dyn FnMut(&Path),
    ) -> Result<(Applied, Vec<Progress>)> {
        let mut seen = Vec::new();
        let applied = apply_inner(
            bundle,
            &self.keys,
            ARCH,
            &self.target,
            &opts,
            boot,
            &mut |p| seen.push(p),
            after_write,
        )?;
        Ok((applied, seen))
    }

    /// The standby slot cannot boot: no kernel on the ESP, not on trial.
    fn assert_unbootable(&self, slot: Slot) {
        assert!(!self.slot_file(slot, KERNEL).exists(), "slot {slot} kernel");
        assert!(!self.slot_file(slot, SLOT_CFG).exists());
        let st = State::from_vars(&self.grubenv());
        assert_ne!(st.trial, Some(slot), "slot {slot} must not be on trial");
    }

    /// The running slot A's boot files are as the fixture made them.
    fn assert_running_untouched(&self) {
        assert_eq!(
            fs::read(self.slot_file(Slot::A, KERNEL)).unwrap(),
            b"kernel 1.0.0"
        );
        assert_eq!(
            fs::read(self.slot_file(Slot::A, INITRD)).unwrap(),
            b"initrd 1.0.0"
        );
        assert_eq!(self.grubenv()["maculaos_slot"], "A");
    }
}

fn version_file(version: &str) -> String {
    maculaos_bundle::bundle_file_name(version, ARCH)
}

/// Writes known boot files, and checks the order of steps from the inside:
/// when it runs the partition holds the payload and the slot's kernel is gone.
struct FakeBoot {
    esp_kernel: PathBuf,
    payload: Vec<u8>,
    calls: Cell<u32>,
    write: bool,
}

impl FakeBoot {
    fn new(fx: &Fx) -> FakeBoot {
        FakeBoot {
            esp_kernel: fx.slot_file(fx.target.slot, KERNEL),
            payload: fx.payload.clone(),
            calls: Cell::new(0),
            write: true,
        }
    }
}

impl BootFiles for FakeBoot {
    fn extract(&self, partition: &Path, dest_dir: &Path) -> Result<()> {
        self.calls.set(self.calls.get() + 1);
        assert!(
            !self.esp_kernel.exists(),
            "the slot must be unbootable while it is written"
        );
        let written = fs::read(partition).unwrap();
        assert_eq!(&written[..self.payload.len()], &self.payload[..]);
        if self.write {
            fs::write(dest_dir.join(KERNEL), NEW_KERNEL).unwrap();
            fs::write(dest_dir.join(INITRD), NEW_INITRD).unwrap();
        }
        Ok(())
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn assert_progress(seen: &[Progress], phase: Phase, total: u64) {
    let p: Vec<&Progress> = seen.iter().filter(|p| p.phase == phase).collect();
    assert!(p.len() >= 3, "{phase:?}: {} reports", p.len());
    assert_eq!(p[0].done, 0);
    for w in p.windows(2) {
        assert!(w[1].done > w[0].done, "{phase:?} done must increase");
    }
    let last = p[p.len() - 1];
    assert_eq!((last.done, last.total), (total, total));
    assert!(p.iter().all(|x| x.total == total));
    assert_eq!(last.percent(), 100.0);
}

#[test]
fn happy_path() {
    let fx = Fx::new();
    let bundle = fx.bundle("2.0.0");
    let boot = FakeBoot::new(&fx);
    let (applied, seen) = fx
        .run_with(&bundle, Options::default(), &boot, &mut |_| {})
        .unwrap();

    let size = PAYLOAD_SIZE as u64;
    assert_eq!(
        applied,
        Applied {
            version: "2.0.0".into(),
            slot: Slot::B,
            bytes: size,
            seconds: applied.seconds,
            sha256: sha256_hex(&fx.payload),
        }
    );
    assert!(applied.seconds >= 0.0);
    assert_eq!(boot.calls.get(), 1);

    // The partition holds the payload; past it, what was there before.
    let part = fs::read(&fx.target.partition).unwrap();
    assert_eq!(part.len() as u64, PARTITION_SIZE);
    assert_eq!(&part[..PAYLOAD_SIZE], &fx.payload[..]);
    assert!(part[PAYLOAD_SIZE..].iter().all(|b| *b == 0xEE));

    // The ESP: new boot files and slot.cfg for B, nothing left over, A untouched.
    assert_eq!(fs::read(fx.slot_file(Slot::B, KERNEL)).unwrap(), NEW_KERNEL);
    assert_eq!(fs::read(fx.slot_file(Slot::B, INITRD)).unwrap(), NEW_INITRD);
    let cfg = fs::read_to_string(fx.slot_file(Slot::B, SLOT_CFG)).unwrap();
    assert_eq!(
        maculaos_slots::parse_slot_image(&cfg, Slot::B).map(|i| i.size),
        Some(PAYLOAD_SIZE as u64)
    );
    assert_eq!(
        maculaos_slots::parse_slot_cfg(&cfg, Slot::B).as_deref(),
        Some("2.0.0")
    );
    let mut names: Vec<String> = fs::read_dir(fx.target.slot_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [INITRD, SLOT_CFG, KERNEL]);
    fx.assert_running_untouched();

    // GRUB tries B at the next boot.
    let env = fx.grubenv();
    assert_eq!(env["maculaos_trial"], "B");
    assert_eq!(env["maculaos_tries"], "3");
    let st = State::from_vars(&env);
    assert_eq!(
        (st.good, st.next_boot(), st.bad, st.rollback),
        (Slot::A, Slot::B, None, None)
    );

    // What was applied is remembered; the temporary directory is gone.
    let rec = last_applied(&fx.target.state_dir).unwrap();
    assert_eq!(
        (
            rec.version.as_str(),
            rec.slot,
            rec.bytes,
            rec.from_version.as_str(),
            rec.from_slot
        ),
        ("2.0.0", Slot::B, size, "1.0.0", Slot::A)
    );
    assert_eq!(rec.sha256, applied.sha256);
    let left: Vec<_> = fs::read_dir(&fx.target.state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".boot-files-") || n.ends_with(".new"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    assert_progress(&seen, Phase::Verify, size);
    assert_progress(&seen, Phase::Write, size);
    assert_progress(&seen, Phase::ReadBack, size);
    // The passes come in order: verify, write, read back.
    let mut order: Vec<Phase> = seen.iter().map(|p| p.phase).collect();
    order.dedup();
    assert_eq!(order, [Phase::Verify, Phase::Write, Phase::ReadBack]);
}

#[test]
fn stale_trial_state_is_reset() {
    let fx = Fx::new();
    fx.set_grubenv(&[
        ("maculaos_slot", "A"),
        ("maculaos_trial", "B"),
        ("maculaos_tries", "0"),
        ("maculaos_bad", "B"),
        (
            "maculaos_rollback",
            "slot B was not marked good after 3 boots; booting slot A",
        ),
        ("maculaos_extra_cmdline", "maculaos.debug"),
    ]);
    fx.run(&fx.bundle("2.0.0"), Options::default()).unwrap();
    let env = fx.grubenv();
    assert_eq!(env["maculaos_trial"], "B");
    assert_eq!(env["maculaos_tries"], "3");
    assert_eq!(env["maculaos_bad"], "");
    assert_eq!(env["maculaos_rollback"], "");
    assert_eq!(
        env["maculaos_extra_cmdline"], "maculaos.debug",
        "other variables kept"
    );
    assert_eq!(env["maculaos_slot"], "A");
}

#[test]
fn bad_mark_of_the_other_slot_is_kept() {
    let fx = Fx::new();
    fx.set_grubenv(&[
        ("maculaos_slot", "A"),
        ("maculaos_bad", "A"),
        ("maculaos_rollback", "old news"),
    ]);
    fx.run(&fx.bundle("2.0.0"), Options::default()).unwrap();
    let env = fx.grubenv();
    assert_eq!(env["maculaos_bad"], "A");
    assert_eq!(env["maculaos_rollback"], "");
}

#[test]
fn running_slot_is_refused() {
    let mut fx = Fx::new();
    fx.target.slot = Slot::A;
    let bundle = fx.bundle("2.0.0");
    let before = fx.snapshot();
    let err = fx.run(&bundle, Options::default()).unwrap_err();
    assert!(
        matches!(err, UpgradeError::RunningSlot { slot: Slot::A }),
        "{err}"
    );
    assert!(err.to_string().contains("it is the running slot"), "{err}");
    assert_eq!(fx.snapshot(), before);
}

#[test]
fn fallback_slot_is_refused_while_running_slot_is_on_trial() {
    let mut fx = Fx::new();
    // B is running on trial; A is still the good slot GRUB falls back to.
    fx.target.slot = Slot::A;
    fx.target.running_slot = Slot::B;
    fx.set_grubenv(&[
        ("maculaos_slot", "A"),
        ("maculaos_trial", "B"),
        ("maculaos_tries", "2"),
    ]);
    let bundle = fx.bundle("2.0.0");
    let before = fx.snapshot();
    let err = fx
        .run(
            &bundle,
            Options {
                force: true,
                allow_downgrade: true,
            },
        )
        .unwrap_err();
    assert!(matches!(err, UpgradeError::FallbackSlot { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("is on trial and has not been marked good yet"),
        "{msg}"
    );
    assert_eq!(fx.snapshot(), before);
}

#[test]
fn downgrade_is_refused_unless_allowed() {
    let mut fx = Fx::new();
    fx.target.running_version = "3.0.0".into();
    let bundle = fx.bundle("2.0.0");
    let before = fx.snapshot();
    let err = fx.run(&bundle, Options::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "downgrade from 3.0.0 to 2.0.0 refused; --allow-downgrade to do it anyway"
    );
    assert_eq!(fx.snapshot(), before);
    // --force alone is not --allow-downgrade.
    let err = fx
        .run(
            &bundle,
            Options {
                force: true,
                allow_downgrade: false,
            },
        )
        .unwrap_err();
    assert!(matches!(err, UpgradeError::Downgrade { .. }), "{err}");

    let (applied, _) = fx
        .run(
            &bundle,
            Options {
                allow_downgrade: true,
                force: false,
            },
        )
        .unwrap();
    assert_eq!(applied.version, "2.0.0");
    assert_eq!(fx.grubenv()["maculaos_trial"], "B");
}

#[test]
fn same_version_is_refused_unless_forced() {
    let fx = Fx::new();
    let bundle = fx.bundle("1.0.0");
    let before = fx.snapshot();
    let err = fx.run(&bundle, Options::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "already running 1.0.0; --force to write it into slot B anyway"
    );
    assert_eq!(fx.snapshot(), before);
    fx.run(
        &bundle,
        Options {
            force: true,
            allow_downgrade: false,
        },
    )
    .unwrap();
    assert_eq!(
        maculaos_slots::parse_slot_cfg(
            &fs::read_to_string(fx.slot_file(Slot::B, SLOT_CFG)).unwrap(),
            Slot::B
        )
        .as_deref(),
        Some("1.0.0")
    );
}

#[test]
fn bad_version_is_refused_unless_forced() {
    let fx = Fx::new();
    let reason = "slot B was not marked good after 3 boots; booting slot A";
    state::remember_bad_at(&fx.target.state_dir, "2.0.0", reason, 1_700_000_000).unwrap();
    let bundle = fx.bundle("2.0.0");
    let before = fx.snapshot();
    let err = fx.run(&bundle, Options::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("2.0.0 failed its trial on 2023-11-14 22:13 UTC: {reason}; --force to try again")
    );
    assert_eq!(fx.snapshot(), before);
    // Another version is not affected.
    assert!(find_bad(&fx.target.state_dir, "2.0.1").is_none());
    fx.run(
        &bundle,
        Options {
            force: true,
            allow_downgrade: false,
        },
    )
    .unwrap();
    assert_eq!(fx.grubenv()["maculaos_trial"], "B");
}

#[test]
fn bad_versions_are_remembered() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("updates");
    assert!(bad_versions(&dir).is_empty());
    remember_bad(&dir, "2.0.0", "first").unwrap();
    state::remember_bad_at(&dir, "2.1.0", "other", 5).unwrap();
    state::remember_bad_at(&dir, " 2.0.0\n", "again", 7).unwrap();
    let list = bad_versions(&dir);
    assert_eq!(
        list,
        [
            BadVersion {
                version: "2.1.0".into(),
                reason: "other".into(),
                at: 5
            },
            BadVersion {
                version: "2.0.0".into(),
                reason: "again".into(),
                at: 7
            },
        ]
    );
    assert_eq!(find_bad(&dir, "2.0.0").unwrap().reason, "again");
    // A damaged file counts as empty and is replaced by the next remember_bad.
    fs::write(dir.join(BAD_VERSIONS_FILE), "{not json").unwrap();
    assert!(bad_versions(&dir).is_empty());
    remember_bad(&dir, "3.0.0", "x").unwrap();
    assert_eq!(bad_versions(&dir).len(), 1);
    assert!(!dir.join("bad-versions.json.new").exists());
}

#[test]
fn too_big_is_refused_before_writing() {
    let mut fx = Fx::new();
    fx.target.partition_size = PAYLOAD_SIZE as u64 - 1;
    let bundle = fx.bundle("2.0.0");
    let before = fx.snapshot();
    let hash_before = sha256_hex(&fs::read(&fx.target.partition).unwrap());
    let err = fx.run(&bundle, Options::default()).unwrap_err();
    assert!(matches!(err, UpgradeError::TooBig { .. }), "{err}");
    assert!(err.to_string().contains("Nothing was written"), "{err}");
    assert_eq!(
        sha256_hex(&fs::read(&fx.target.partition).unwrap()),
        hash_before
    );
    assert_eq!(fx.snapshot(), before, "ESP untouched too");
}

#[test]
fn untrusted_key_is_refused_before_writing() {
    let fx = Fx::new();
    let (_, other) = generate_keypair(&fx.path("other-keys"), "other").unwrap();
    let bundle = fx.bundle_signed("2.0.0", &other);
    let before = fx.snapshot();
    let err = fx.run(&bundle, Options::default()).unwrap_err();
    match &err {
        UpgradeError::Verify { source, .. } => assert!(
            matches!(
                source,
                maculaos_bundle::BundleError::UntrustedSignature { .. }
            ),
            "{source}"
        ),
        e => panic!("{e}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("is not accepted here") && msg.contains("not trusted here"),
        "{msg}"
    );
    assert_eq!(fx.snapshot(), before);
}

#[test]
fn wrong_arch_is_refused_before_writing() {
    let fx = Fx::new();
    let bundle = fx.bundle("2.0.0");
    let before = fx.snapshot();
    let err = apply(
        &bundle,
        &fx.keys,
        "arm64",
        &fx.target,
        &Options::default(),
        &FakeBoot::new(&fx),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("for architecture amd64, this system is arm64"),
        "{err}"
    );
    assert_eq!(fx.snapshot(), before);
}

#[test]
fn not_a_bundle_is_refused() {
    let fx = Fx::new();
    let junk = fx.path("junk.mos");
    fs::write(&junk, b"hello").unwrap();
    let before = fx.snapshot();
    let err = fx.run(&junk, Options::default()).unwrap_err();
    assert!(matches!(err, UpgradeError::Open(_)), "{err}");
    assert!(
        err.to_string().contains("is not a MaculaOS bundle"),
        "{err}"
    );
    assert_eq!(fx.snapshot(), before);
}

/// A damaged payload is found by the first pass, before the slot (usually
/// the way back) is touched: nothing changes, and a stale trial stays as it was.
#[test]
fn tampered_payload_is_refused_before_writing() {
    let fx = Fx::new();
    fx.set_grubenv(&[
        ("maculaos_slot", "A"),
        ("maculaos_trial", "B"),
        ("maculaos_tries", "2"),
    ]);
    let bundle = fx.bundle("2.0.0");
    let mut bytes = fs::read(&bundle).unwrap();
    let start = bytes
        .windows(64)
        .position(|w| w == &fx.payload[..64])
        .unwrap();
    bytes[start + PAYLOAD_SIZE - 10] ^= 0x40;
    fs::write(&bundle, bytes).unwrap();
    let before = fx.snapshot();

    let boot = FakeBoot::new(&fx);
    let mut phases = Vec::new();
    let err = apply(
        &bundle,
        &fx.keys,
        ARCH,
        &fx.target,
        &Options::default(),
        &boot,
        &mut |p| phases.push(p.phase),
    )
    .unwrap_err();
    match &err {
        UpgradeError::Verify { source, .. } => assert!(
            matches!(
                source,
                maculaos_bundle::BundleError::PayloadHashMismatch { .. }
            ),
            "{source}"
        ),
        e => panic!("{e}"),
    }
    assert!(!phases.is_empty() && phases.iter().all(|p| *p == Phase::Verify));
    assert_eq!(boot.calls.get(), 0, "no boot files from a bad payload");
    assert_eq!(fx.snapshot(), before, "nothing was written");
    assert!(last_applied(&fx.target.state_dir).is_none());
}

#[test]
fn read_back_mismatch_leaves_slot_unbootable() {
    let fx = Fx::new();
    let bundle = fx.bundle("2.0.0");
    let boot = FakeBoot::new(&fx);
    // The disk "loses" a byte between the write and the read-back.
    let mut damage = |p: &Path| {
        let mut b = fs::read(p).unwrap();
        b[1234] ^= 0xFF;
        fs::write(p, b).unwrap();
    };
    let err = fx
        .run_with(&bundle, Options::default(), &boot, &mut damage)
        .unwrap_err();
    assert!(
        matches!(err, UpgradeError::ReadBackMismatch { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&sha256_hex(&fx.payload)), "{msg}");
    assert!(msg.contains("left unbootable"), "{msg}");
    assert_eq!(boot.calls.get(), 0);
    fx.assert_unbootable(Slot::B);
    fx.assert_running_untouched();
}

#[test]
fn missing_boot_files_leave_slot_unbootable() {
    let fx = Fx::new();
    let bundle = fx.bundle("2.0.0");
    let boot = FakeBoot {
        write: false,
        ..FakeBoot::new(&fx)
    };
    let err = fx
        .run_with(&bundle, Options::default(), &boot, &mut |_| {})
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, UpgradeError::BootFiles { .. }), "{msg}");
    assert!(
        msg.contains("no /boot/initrd.img") && msg.contains("left unbootable"),
        "{msg}"
    );
    fx.assert_unbootable(Slot::B);
    fx.assert_running_untouched();
}

#[test]
fn one_apply_at_a_time() {
    let fx = Fx::new();
    let bundle = fx.bundle("2.0.0");
    let held = lock(&fx.target.state_dir).unwrap();
    let before = fx.snapshot();
    let err = fx.run(&bundle, Options::default()).unwrap_err();
    assert!(matches!(err, UpgradeError::Busy { .. }), "{err}");
    assert_eq!(fx.snapshot(), before);
    drop(held);
    fx.run(&bundle, Options::default()).unwrap();
}

#[test]
fn progress_rate_and_eta() {
    let p = Progress::new(Phase::Write, 50, 200, Duration::from_secs(2));
    assert_eq!(p.bytes_per_sec, 25.0);
    assert_eq!(p.eta, Some(Duration::from_secs(6)));
    assert_eq!(p.percent(), 25.0);
    let p = Progress::new(Phase::Write, 0, 200, Duration::from_secs(2));
    assert_eq!((p.bytes_per_sec, p.eta), (0.0, None));
    let p = Progress::new(Phase::ReadBack, 10, 10, Duration::ZERO);
    assert_eq!((p.eta, p.percent()), (None, 100.0));
}

#[test]
fn dates_are_utc() {
    assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
    assert_eq!(format_utc(951_782_400), "2000-02-29 00:00 UTC");
    assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13 UTC");
    assert_eq!(format_utc(4_107_542_399), "2100-02-28 23:59 UTC");
}
