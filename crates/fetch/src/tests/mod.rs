//! No test touches the network: GitHub's answers are recorded fixtures in
//! the API's shape (tests/fixtures/), served from 127.0.0.1 where a real
//! HTTP exchange matters.

mod server;

use super::*;
use maculaos_bundle::{create, generate_keypair, BundleMeta};
use server::{files, serve, Reply};
use sha2::{Digest, Sha256};
use std::io;
use std::time::Duration;
use tempfile::TempDir;

const RELEASES: &str = include_str!("../../tests/fixtures/github-releases.json");
const RELEASES_STABLE_NEWER: &str =
    include_str!("../../tests/fixtures/github-releases-stable-newer.json");
const RELEASES_PRERELEASE_ONLY: &str =
    include_str!("../../tests/fixtures/github-releases-prerelease-only.json");
const RATE_LIMIT: &str = include_str!("../../tests/fixtures/github-rate-limit.json");
const NOT_FOUND: &str = include_str!("../../tests/fixtures/github-not-found.json");

const REPO: &str = "github://macula-io/macula-os";

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Bytes that are not all alike, so a misplaced range shows in the hash.
fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn pick_fixture(json: &str, channel: Channel, arch: &str) -> Result<Available> {
    let releases = github::parse_releases(json.as_bytes(), "fixture").unwrap();
    github::pick(&releases, channel, arch, REPO)
}

fn plenty(_: &Path) -> io::Result<u64> {
    Ok(u64::MAX / 2)
}

fn opts() -> DownloadOptions {
    DownloadOptions {
        free_space: plenty,
        reserve: 0,
        attempts: 1,
        retry_pause: Duration::ZERO,
    }
}

fn available(url: String, body: &[u8]) -> Available {
    Available {
        version: "0.2.0".into(),
        name: "maculaos-0.2.0-amd64.mos".into(),
        url,
        size: body.len() as u64,
        sha256: Some(sha(body)),
        channel: Channel::Stable,
    }
}

/// Collects every progress report.
fn recorder() -> (
    std::rc::Rc<std::cell::RefCell<Vec<Progress>>>,
    impl FnMut(Progress),
) {
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let s = seen.clone();
    (seen, move |p| s.borrow_mut().push(p))
}

/// A signed bundle `maculaos-<version>-<arch>.mos` in `dir`.
fn bundle(keys: &Path, dir: &Path, version: &str, arch: &str, channel: Channel) -> PathBuf {
    let secret = keys.join("test.key");
    if !secret.exists() {
        generate_keypair(keys, "test").unwrap();
    }
    let payload = keys.join(format!("payload-{version}"));
    std::fs::write(&payload, data(3000 + version.len())).unwrap();
    let mut meta = BundleMeta::new(version, channel);
    meta.arch = arch.to_string();
    meta.built_at = Some(1_700_000_000);
    let out = dir.join(maculaos_bundle::bundle_file_name(version, arch));
    create(&payload, &out, &meta, &secret).unwrap();
    out
}

// ---- sources ----

#[test]
fn parses_sources() {
    assert_eq!(
        Source::parse("github://macula-io/macula-os").unwrap(),
        Source::GitHub {
            owner: "macula-io".into(),
            repo: "macula-os".into(),
            api: GITHUB_API.into()
        }
    );
    assert_eq!(
        Source::parse("https://updates.example.com/os").unwrap(),
        Source::Http {
            base: "https://updates.example.com/os/".into()
        }
    );
    assert_eq!(
        Source::parse("http://10.0.0.1:8080/").unwrap(),
        Source::Http {
            base: "http://10.0.0.1:8080/".into()
        }
    );
    assert_eq!(
        Source::parse("file:///mnt/usb/").unwrap(),
        Source::Dir {
            path: "/mnt/usb/".into()
        }
    );
    assert_eq!(
        Source::parse("/mnt/usb").unwrap(),
        Source::Dir {
            path: "/mnt/usb".into()
        }
    );
    for bad in [
        "github://x",
        "github://a/b/c",
        "ftp://host/",
        "https://",
        "file://relative/dir",
        "",
    ] {
        let e = Source::parse(bad).unwrap_err().to_string();
        assert!(e.contains("github://OWNER/REPO"), "{bad}: {e}");
    }
    assert_eq!(
        Source::parse("github://macula-io/macula-os")
            .unwrap()
            .to_string(),
        REPO
    );
}

// ---- GitHub: channel rule and mapping (recorded API answers) ----

#[test]
fn release_channels() {
    use github::release_channel as rc;
    assert_eq!(rc(true, false, "v1.0.0"), None);
    assert_eq!(rc(true, true, "v1.0.0-nightly.1"), None);
    assert_eq!(rc(false, false, "v1.0.0"), Some(Channel::Stable));
    assert_eq!(rc(false, true, "v1.1.0-beta.1"), Some(Channel::Beta));
    assert_eq!(rc(false, true, "v1.1.0-rc.1"), Some(Channel::Beta));
    assert_eq!(
        rc(false, true, "v1.1.0-NIGHTLY.20250101"),
        Some(Channel::Nightly)
    );
    assert!(follows(Channel::Nightly, Channel::Stable));
    assert!(follows(Channel::Beta, Channel::Stable));
    assert!(!follows(Channel::Stable, Channel::Beta));
    assert!(!follows(Channel::Beta, Channel::Nightly));
}

#[test]
fn asset_names() {
    use github::asset_version as v;
    assert_eq!(v("maculaos-0.2.0-amd64.mos", "amd64"), Some("0.2.0"));
    assert_eq!(
        v("maculaos-0.3.0-beta.2-amd64.mos", "amd64"),
        Some("0.3.0-beta.2")
    );
    assert_eq!(v("maculaos-0.2.0-arm64.mos", "amd64"), None);
    assert_eq!(v("maculaos-0.2.0-amd64.img.zst", "amd64"), None);
    assert_eq!(v("maculaos--amd64.mos", "amd64"), None);
    assert_eq!(v("SHA256SUMS", "amd64"), None);
}

#[test]
fn github_stable_skips_drafts_and_prereleases() {
    // The newest entries are a draft 0.5.0, a nightly and a beta: stable
    // takes the newest plain release, with its digest.
    let a = pick_fixture(RELEASES, Channel::Stable, "amd64").unwrap();
    assert_eq!(a.version, "0.2.0");
    assert_eq!(a.name, "maculaos-0.2.0-amd64.mos");
    assert_eq!(
        a.url,
        "https://github.com/macula-io/macula-os/releases/download/v0.2.0/maculaos-0.2.0-amd64.mos"
    );
    assert_eq!(a.size, 301_989_888);
    assert_eq!(a.sha256.as_deref(), Some("ab".repeat(32).as_str()));
    assert_eq!(a.channel, Channel::Stable);
    // The arm64 node gets the arm64 asset of the same release.
    let arm = pick_fixture(RELEASES, Channel::Stable, "arm64").unwrap();
    assert_eq!(arm.name, "maculaos-0.2.0-arm64.mos");
}

#[test]
fn github_prereleases_by_channel() {
    let beta = pick_fixture(RELEASES, Channel::Beta, "amd64").unwrap();
    // beta.3 is still uploading (state "open"): not offered.
    assert_eq!(beta.version, "0.3.0-beta.2");
    assert_eq!(beta.channel, Channel::Beta);
    let nightly = pick_fixture(RELEASES, Channel::Nightly, "amd64").unwrap();
    assert_eq!(nightly.version, "0.4.0-nightly.20250609");
    assert_eq!(nightly.channel, Channel::Nightly);
    // Never the draft, on any channel.
    for c in Channel::ALL {
        assert_ne!(pick_fixture(RELEASES, c, "amd64").unwrap().version, "0.5.0");
    }
}

#[test]
fn github_beta_takes_a_newer_stable() {
    let a = pick_fixture(RELEASES_STABLE_NEWER, Channel::Beta, "amd64").unwrap();
    assert_eq!(a.version, "0.3.1");
    assert_eq!(a.channel, Channel::Stable);
    assert_eq!(a.sha256, None, "assets without a digest give no sha256");
}

#[test]
fn github_no_asset_for_arch() {
    let e = pick_fixture(RELEASES, Channel::Stable, "riscv64").unwrap_err();
    assert!(matches!(e, FetchError::NoAsset { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("no stable release of github://macula-io/macula-os has a bundle for riscv64"),
        "{msg}"
    );
    assert!(msg.contains("v0.2.0"), "{msg}");
    assert!(
        msg.contains("maculaos-0.2.0-amd64.mos, maculaos-0.2.0-arm64.mos"),
        "{msg}"
    );
    assert!(msg.contains("maculaos-<version>-riscv64.mos"), "{msg}");
}

#[test]
fn github_no_release_on_channel() {
    let e = pick_fixture(RELEASES_PRERELEASE_ONLY, Channel::Stable, "amd64").unwrap_err();
    assert!(matches!(e, FetchError::NoRelease { .. }), "{e:?}");
    assert!(e.to_string().contains("has no stable release"), "{e}");
    // The same list has what beta wants.
    let a = pick_fixture(RELEASES_PRERELEASE_ONLY, Channel::Beta, "amd64").unwrap();
    assert_eq!(a.version, "0.3.0-beta.2");
}

#[test]
fn github_error_answers() {
    let url = "https://api.github.com/repos/macula-io/macula-os/releases?per_page=100";
    let now = 1_750_000_000;
    let reset = (now + 600).to_string();
    let e = github::api_error(
        url,
        403,
        Some("0"),
        Some(&reset),
        RATE_LIMIT.as_bytes(),
        now,
    );
    assert!(
        matches!(
            e,
            FetchError::RateLimited {
                reset_in_secs: Some(600),
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("rate limit exceeded"), "{msg}");
    assert!(msg.contains("resets in about 10 min"), "{msg}");
    assert!(msg.contains("mirror"), "{msg}");
    // Recognised from the body alone too (a secondary limit, 429).
    let e = github::api_error(url, 429, None, None, RATE_LIMIT.as_bytes(), now);
    assert!(
        matches!(
            e,
            FetchError::RateLimited {
                reset_in_secs: None,
                ..
            }
        ),
        "{e:?}"
    );
    // A 403 that is not about the rate limit stays an HTTP error.
    let e = github::api_error(
        url,
        403,
        Some("42"),
        None,
        br#"{"message":"Forbidden"}"#,
        now,
    );
    assert!(matches!(e, FetchError::Http { status: 403, .. }), "{e:?}");
    assert!(e.to_string().contains("(Forbidden)"), "{e}");
    let e = github::api_error(url, 404, Some("59"), None, NOT_FOUND.as_bytes(), now);
    assert!(e.to_string().contains("no such GitHub repository"), "{e}");
}

#[test]
fn github_check_over_http() {
    let srv = serve(|req, _| {
        if req.target == "/repos/macula-io/macula-os/releases?per_page=100" {
            Reply::new(200, RELEASES)
        } else {
            Reply::new(404, NOT_FOUND)
        }
    });
    let source = Source::GitHub {
        owner: "macula-io".into(),
        repo: "macula-os".into(),
        api: srv.base.clone(),
    };
    let a = Client::direct()
        .check(&source, Channel::Stable, "amd64")
        .unwrap();
    assert_eq!(a.version, "0.2.0");
    let req = &srv.requests()[0];
    assert_eq!(req.header("accept"), Some("application/vnd.github+json"));
    assert!(
        req.header("user-agent").is_some(),
        "GitHub requires a User-Agent"
    );

    let missing = Source::GitHub {
        owner: "macula-io".into(),
        repo: "nope".into(),
        api: srv.base.clone(),
    };
    let e = Client::direct()
        .check(&missing, Channel::Stable, "amd64")
        .unwrap_err();
    assert!(e.to_string().contains("no such GitHub repository"), "{e}");
}

#[test]
fn github_rate_limited_over_http() {
    let srv = serve(|_, _| {
        Reply::new(403, RATE_LIMIT)
            .header("x-ratelimit-limit", 60)
            .header("x-ratelimit-remaining", 0)
            // 29.5 min: "about 30 min" for half a minute either way of
            // the test's clock, whenever the client reads its own.
            .header("x-ratelimit-reset", unix_now() + 1770)
    });
    let source = Source::GitHub {
        owner: "macula-io".into(),
        repo: "macula-os".into(),
        api: srv.base.clone(),
    };
    let e = Client::direct()
        .check(&source, Channel::Stable, "amd64")
        .unwrap_err();
    assert!(matches!(e, FetchError::RateLimited { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&srv.base), "names the URL: {msg}");
    assert!(msg.contains("resets in about 30 min"), "{msg}");
}

// ---- channel indexes ----

fn index_json(bundle: &str, arch: &str, channel: &str, format: u32, sha: &str) -> String {
    format!(
        r#"{{"format":{format},"version":"0.2.0","arch":"{arch}","channel":"{channel}","bundle":"{bundle}","size":1234,"sha256":"{sha}"}}"#
    )
}

#[test]
fn index_checks() {
    let ok_sha = "AB".repeat(32);
    let parse = |j: String| {
        parse_index(
            j.as_bytes(),
            "http://h/stable/latest.json",
            Channel::Stable,
            "amd64",
        )
    };
    let i = parse(index_json(
        "maculaos-0.2.0-amd64.mos",
        "amd64",
        "stable",
        1,
        &ok_sha,
    ))
    .unwrap();
    assert_eq!(i.sha256, "ab".repeat(32), "hex is normalised to lower case");
    let abs = parse(index_json(
        "https://cdn.example.com/b/maculaos-0.2.0-amd64.mos",
        "amd64",
        "stable",
        1,
        &ok_sha,
    ))
    .unwrap();
    assert_eq!(index::resolve("http://h/stable/", &abs.bundle), abs.bundle);
    assert_eq!(
        index::resolve("http://h/stable/", "maculaos-0.2.0-amd64.mos"),
        "http://h/stable/maculaos-0.2.0-amd64.mos"
    );

    let cases: [(String, &str); 6] = [
        (
            index_json("maculaos-0.2.0-amd64.mos", "arm64", "stable", 1, &ok_sha),
            "offers an arm64 bundle, this node is amd64",
        ),
        (
            index_json("maculaos-0.2.0-amd64.mos", "amd64", "beta", 1, &ok_sha),
            "is for channel beta, not stable",
        ),
        (
            index_json("maculaos-0.2.0-amd64.mos", "amd64", "stable", 2, &ok_sha),
            "is format 2; this node reads format 1",
        ),
        (
            index_json("maculaos-0.2.0-amd64.mos", "amd64", "stable", 1, "abc"),
            "is not 64 hex digits",
        ),
        (
            index_json(
                "/srv/maculaos-0.2.0-amd64.mos",
                "amd64",
                "stable",
                1,
                &ok_sha,
            ),
            "neither a path relative to the index nor an absolute URL",
        ),
        (
            index_json("payload.squashfs", "amd64", "stable", 1, &ok_sha),
            "does not end with .mos",
        ),
    ];
    for (json, want) in cases {
        let e = parse(json.clone()).unwrap_err().to_string();
        assert!(e.contains(want), "{json}\n=> {e}");
        if !want.contains(".mos") {
            assert!(
                e.contains("http://h/stable/latest.json"),
                "names the index: {e}"
            );
        }
    }
    let e = parse("not json".into()).unwrap_err().to_string();
    assert!(e.contains("maculaos-sdk publish"), "{e}");
}

#[test]
fn write_index_then_check_http_and_dir() {
    let tmp = TempDir::new().unwrap();
    let keys = tmp.path().join("keys");
    let site = tmp.path().join("site");
    let stable = site.join("stable");
    std::fs::create_dir_all(&stable).unwrap();
    let b = bundle(&keys, &stable, "0.2.0", "amd64", Channel::Stable);
    let index = write_index(&stable, &b).unwrap();
    let bytes = std::fs::read(&b).unwrap();
    assert_eq!(index.version, "0.2.0");
    assert_eq!(index.bundle, "maculaos-0.2.0-amd64.mos");
    assert_eq!(index.size, bytes.len() as u64);
    assert_eq!(index.sha256, sha(&bytes));
    let json = std::fs::read_to_string(stable.join(INDEX_FILE)).unwrap();
    assert!(json.contains(r#""format": 1"#), "{json}");

    // The bundle must sit next to the index.
    let elsewhere = bundle(&keys, tmp.path(), "0.2.0", "amd64", Channel::Stable);
    let e = write_index(&stable, &elsewhere).unwrap_err().to_string();
    assert!(e.contains("copy it there first"), "{e}");

    // Over HTTP.
    let srv = serve(files(
        vec![
            ("/os/stable/latest.json", json.clone().into_bytes()),
            ("/os/stable/maculaos-0.2.0-amd64.mos", bytes.clone()),
        ],
        true,
        None,
    ));
    let source = Source::parse(&format!("{}/os", srv.base)).unwrap();
    let a = Client::direct()
        .check(&source, Channel::Stable, "amd64")
        .unwrap();
    assert_eq!(
        a.url,
        format!("{}/os/stable/maculaos-0.2.0-amd64.mos", srv.base)
    );
    assert_eq!(a.sha256.as_deref(), Some(index.sha256.as_str()));
    let dest = tmp.path().join("updates");
    let got = Client::direct()
        .download(&a, &dest, &opts(), &mut |_| {})
        .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), bytes);

    // A beta node reads beta/latest.json (not published: 404) and the
    // stable one, and is offered the stable release.
    let a = Client::direct()
        .check(&source, Channel::Beta, "amd64")
        .unwrap();
    assert_eq!((a.version.as_str(), a.channel), ("0.2.0", Channel::Stable));
    let paths: Vec<String> = srv.requests().iter().map(|r| r.target.clone()).collect();
    assert!(
        paths.contains(&"/os/beta/latest.json".to_string()),
        "{paths:?}"
    );

    // No index at all: 404 with what to do.
    let empty = Source::parse(&format!("{}/elsewhere/", srv.base)).unwrap();
    let e = Client::direct()
        .check(&empty, Channel::Stable, "amd64")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/elsewhere/stable/latest.json does not exist (HTTP 404)"),
        "{e}"
    );
    assert!(e.contains("maculaos-sdk publish"), "{e}");

    // From the directory itself.
    let a = check(
        &Source::parse(site.to_str().unwrap()).unwrap(),
        Channel::Stable,
        "amd64",
    )
    .unwrap();
    assert_eq!(
        a.url,
        format!("file://{}/stable/maculaos-0.2.0-amd64.mos", site.display())
    );
    let dest2 = tmp.path().join("updates2");
    let got = Client::direct()
        .download(&a, &dest2, &opts(), &mut |_| {})
        .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), bytes);
}

#[test]
fn dir_of_bundles() {
    let tmp = TempDir::new().unwrap();
    let keys = tmp.path().join("keys");
    let usb = tmp.path().join("usb");
    std::fs::create_dir_all(&usb).unwrap();
    bundle(&keys, &usb, "0.2.0", "amd64", Channel::Stable);
    bundle(&keys, &usb, "0.10.0", "amd64", Channel::Stable);
    bundle(&keys, &usb, "0.11.0-beta.1", "amd64", Channel::Beta);
    bundle(&keys, &usb, "0.12.0", "arm64", Channel::Stable);
    std::fs::write(usb.join("broken.mos"), b"not a bundle").unwrap();
    let source = Source::Dir { path: usb.clone() };

    let a = check(&source, Channel::Stable, "amd64").unwrap();
    assert_eq!(a.version, "0.10.0", "version order, not name order");
    assert_eq!(a.name, "maculaos-0.10.0-amd64.mos");
    assert_eq!(a.sha256, None);
    assert_eq!(
        check(&source, Channel::Beta, "amd64").unwrap().version,
        "0.11.0-beta.1"
    );

    let e = check(&source, Channel::Stable, "riscv64").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, FetchError::NoBundle { .. }), "{e:?}");
    assert!(
        msg.contains("holds no stable update bundle for riscv64"),
        "{msg}"
    );
    assert!(
        msg.contains("maculaos-0.12.0-arm64.mos is for arm64"),
        "{msg}"
    );
    assert!(msg.contains("broken.mos: "), "{msg}");

    let e = check(
        &Source::Dir {
            path: tmp.path().join("nothing"),
        },
        Channel::Stable,
        "amd64",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("is it mounted?"), "{e}");
}

#[test]
fn indexes_follow_more_stable_channels() {
    let tmp = TempDir::new().unwrap();
    let keys = tmp.path().join("keys");
    let site = tmp.path().join("site");
    let mut served = Vec::new();
    for (version, channel) in [
        ("0.3.0", Channel::Stable),
        ("0.3.0-beta.1", Channel::Beta),
        ("0.4.0-nightly.1", Channel::Nightly),
    ] {
        let dir = site.join(channel.as_str());
        std::fs::create_dir_all(&dir).unwrap();
        let b = bundle(&keys, &dir, version, "amd64", channel);
        write_index(&dir, &b).unwrap();
        served.push((
            format!("/{channel}/latest.json"),
            std::fs::read(dir.join(INDEX_FILE)).unwrap(),
        ));
    }
    let srv = serve(files(
        served
            .iter()
            .map(|(p, b)| (p.as_str(), b.clone()))
            .collect(),
        true,
        None,
    ));
    let http = Source::parse(&srv.base).unwrap();
    let dir = Source::Dir { path: site.clone() };
    for source in [&http, &dir] {
        let got = |c| Client::direct().check(source, c, "amd64").unwrap();
        // beta: the stable 0.3.0 is newer than 0.3.0-beta.1.
        assert_eq!(
            (got(Channel::Beta).version, got(Channel::Beta).channel),
            ("0.3.0".into(), Channel::Stable)
        );
        assert_eq!(got(Channel::Stable).version, "0.3.0");
        assert_eq!(got(Channel::Nightly).version, "0.4.0-nightly.1");
    }
    // A stable node never reads the other channels.
    let before = srv.requests().len();
    Client::direct()
        .check(&http, Channel::Stable, "amd64")
        .unwrap();
    let after = srv.requests();
    assert_eq!(after.len(), before + 1);
    assert_eq!(after[before].target, "/stable/latest.json");
}

// ---- downloads ----

const SIZE: usize = 700_000;

#[test]
fn full_download() {
    let body = data(SIZE);
    let srv = serve(files(vec![("/b.mos", body.clone())], true, None));
    let tmp = TempDir::new().unwrap();
    let a = available(format!("{}/b.mos", srv.base), &body);
    let (seen, mut rec) = recorder();
    let path = Client::direct()
        .download(&a, tmp.path(), &opts(), &mut rec)
        .unwrap();
    assert_eq!(path, tmp.path().join("maculaos-0.2.0-amd64.mos"));
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert!(!tmp.path().join("maculaos-0.2.0-amd64.mos.part").exists());
    let seen = seen.borrow();
    assert_eq!(seen.first().unwrap().done, 0);
    assert_eq!(seen.last().unwrap().done, SIZE as u64);
    assert_eq!(seen.last().unwrap().percent(), 100.0);
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
    assert!(srv.requests()[0].header("range").is_none());

    // Already there and whole: kept, nothing fetched.
    let again = Client::direct()
        .download(&a, tmp.path(), &opts(), &mut |_| {})
        .unwrap();
    assert_eq!(again, path);
    assert_eq!(srv.requests().len(), 1);
}

#[test]
fn resumes_after_a_cut_connection() {
    let body = data(SIZE);
    let cut = 300_000;
    let srv = serve(files(vec![("/b.mos", body.clone())], true, Some(cut)));
    let tmp = TempDir::new().unwrap();
    let a = available(format!("{}/b.mos", srv.base), &body);
    let part = tmp.path().join("maculaos-0.2.0-amd64.mos.part");

    let e = Client::direct()
        .download(&a, tmp.path(), &opts(), &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, FetchError::Interrupted { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("stopped after {cut} of {SIZE} bytes")),
        "{msg}"
    );
    assert!(msg.contains("Run the same command again"), "{msg}");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), cut as u64);
    assert!(!tmp.path().join("maculaos-0.2.0-amd64.mos").exists());

    let (seen, mut rec) = recorder();
    let path = Client::direct()
        .download(&a, tmp.path(), &opts(), &mut rec)
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    let reqs = srv.requests();
    assert_eq!(
        reqs[1].header("range"),
        Some(format!("bytes={cut}-").as_str())
    );
    let first = seen.borrow()[0];
    assert_eq!((first.done, first.resumed_from), (cut as u64, cut as u64));
}

#[test]
fn resumes_within_one_call() {
    let body = data(SIZE);
    let srv = serve(files(vec![("/b.mos", body.clone())], true, Some(123_457)));
    let tmp = TempDir::new().unwrap();
    let a = available(format!("{}/b.mos", srv.base), &body);
    let o = DownloadOptions {
        attempts: 2,
        ..opts()
    };
    let path = Client::direct()
        .download(&a, tmp.path(), &o, &mut |_| {})
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(srv.requests()[1].header("range"), Some("bytes=123457-"));
}

#[test]
fn server_without_range_support_restarts() {
    let body = data(SIZE);
    let srv = serve(files(vec![("/b.mos", body.clone())], false, None));
    let tmp = TempDir::new().unwrap();
    // What an interrupted earlier run left.
    let part = tmp.path().join("maculaos-0.2.0-amd64.mos.part");
    std::fs::write(&part, &body[..200_000]).unwrap();
    let a = available(format!("{}/b.mos", srv.base), &body);
    let path = Client::direct()
        .download(&a, tmp.path(), &opts(), &mut |_| {})
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(srv.requests()[0].header("range"), Some("bytes=200000-"));
    assert!(!part.exists());
}

#[test]
fn part_that_is_not_a_prefix_fails_the_hash_and_is_dropped() {
    let body = data(SIZE);
    let srv = serve(files(vec![("/b.mos", body.clone())], true, None));
    let tmp = TempDir::new().unwrap();
    let part = tmp.path().join("maculaos-0.2.0-amd64.mos.part");
    std::fs::write(&part, vec![0u8; 1000]).unwrap();
    let a = available(format!("{}/b.mos", srv.base), &body);
    let e = Client::direct()
        .download(&a, tmp.path(), &opts(), &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, FetchError::ShaMismatch { .. }), "{e:?}");
    assert!(!part.exists());
    // The next run starts over and succeeds.
    let path = Client::direct()
        .download(&a, tmp.path(), &opts(), &mut |_| {})
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
}

#[test]
fn not_found() {
    let srv = serve(files(vec![], true, None));
    let tmp = TempDir::new().unwrap();
    let a = available(format!("{}/gone.mos", srv.base), &data(10));
    let e = Client::direct()
        .download(&a, tmp.path(), &opts(), &mut |_| {})
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("{}/gone.mos does not exist (HTTP 404)", srv.base)),
        "{msg}"
    );
    assert!(!tmp.path().join("maculaos-0.2.0-amd64.mos.part").exists());
    assert!(!tmp.path().join("maculaos-0.2.0-amd64.mos").exists());

    let srv = serve(|_, _| Reply::new(503, "busy"));
    let e = Client::direct()
        .download(
            &available(format!("{}/b.mos", srv.base), &data(10)),
            tmp.path(),
            &opts(),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("answered HTTP 503 (Service Unavailable)"),
        "{e}"
    );
}

#[test]
fn unreachable_server() {
    // A port nobody listens on: held on 127.0.0.1 for the whole test, so
    // nobody takes it, and asked for on 127.0.0.2, where nothing listens (a
    // port freed by closing its listener could be taken again at once).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let tmp = TempDir::new().unwrap();
    let url = format!("http://127.0.0.2:{port}/b.mos");
    let e = Client::direct()
        .download(
            &available(url.clone(), &data(10)),
            tmp.path(),
            &opts(),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(e, FetchError::Network { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with(&format!("cannot reach {url}")),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "no empty part left"
    );
    drop(held);
}

#[test]
fn sha_mismatch_deletes_the_part() {
    let body = data(SIZE);
    let srv = serve(files(vec![("/b.mos", body.clone())], true, None));
    let tmp = TempDir::new().unwrap();
    let mut a = available(format!("{}/b.mos", srv.base), &body);
    a.sha256 = Some("00".repeat(32));
    let e = Client::direct()
        .download(&a, tmp.path(), &opts(), &mut |_| {})
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, FetchError::ShaMismatch { .. }), "{e:?}");
    assert!(msg.contains(&sha(&body)), "{msg}");
    assert!(msg.contains("partial file was deleted"), "{msg}");
    assert!(!tmp.path().join("maculaos-0.2.0-amd64.mos.part").exists());
    assert!(!tmp.path().join("maculaos-0.2.0-amd64.mos").exists());
}

#[test]
fn size_differs_from_the_source() {
    let body = data(SIZE);
    let srv = serve(files(vec![("/b.mos", body.clone())], true, None));
    let tmp = TempDir::new().unwrap();
    let mut a = available(format!("{}/b.mos", srv.base), &body);
    a.size = 1000;
    let e = Client::direct()
        .download(&a, tmp.path(), &opts(), &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(e, FetchError::SizeMismatch { expected: 1000, .. }),
        "{e:?}"
    );
    assert!(!tmp.path().join("maculaos-0.2.0-amd64.mos.part").exists());
}

#[test]
fn not_enough_space() {
    fn tight(_: &Path) -> io::Result<u64> {
        Ok(5 << 20)
    }
    let srv = serve(files(vec![], true, None));
    let tmp = TempDir::new().unwrap();
    let body = data(SIZE);
    let a = available(format!("{}/b.mos", srv.base), &body);
    let o = DownloadOptions {
        free_space: tight,
        reserve: 64 << 20,
        ..opts()
    };
    let e = Client::direct()
        .download(&a, tmp.path(), &o, &mut |_| {})
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, FetchError::NoSpace { .. }), "{e:?}");
    assert!(
        msg.contains(&format!("not enough space in {}", tmp.path().display())),
        "{msg}"
    );
    assert!(msg.contains("needs 0.7 MiB more, 5.0 MiB is free"), "{msg}");
    assert!(msg.contains("reserve of 64.0 MiB"), "{msg}");
    assert!(srv.requests().is_empty(), "nothing fetched");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "nothing written"
    );
    // The real check works on a real directory.
    assert!(free_space(tmp.path()).unwrap() > 0);
}

#[test]
fn one_download_at_a_time() {
    let body = data(SIZE);
    let srv = serve(files(vec![("/b.mos", body.clone())], true, None));
    let tmp = TempDir::new().unwrap();
    let part = tmp.path().join("maculaos-0.2.0-amd64.mos.part");
    let held = nix::fcntl::Flock::lock(
        std::fs::File::create(&part).unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .unwrap();
    let a = available(format!("{}/b.mos", srv.base), &body);
    let e = Client::direct()
        .download(&a, tmp.path(), &opts(), &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, FetchError::Busy { .. }), "{e:?}");
    drop(held);
    Client::direct()
        .download(&a, tmp.path(), &opts(), &mut |_| {})
        .unwrap();
}

#[test]
fn refuses_unsafe_names() {
    let tmp = TempDir::new().unwrap();
    let mut a = available("http://127.0.0.1:9/x.mos".into(), b"x");
    for bad in ["../etc/passwd.mos", ".hidden.mos", "x.tar", "a b.mos"] {
        a.name = bad.into();
        let e = Client::direct()
            .download(&a, tmp.path(), &opts(), &mut |_| {})
            .unwrap_err();
        assert!(matches!(e, FetchError::BadName { .. }), "{bad}: {e:?}");
    }
}
