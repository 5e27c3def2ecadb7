//! `maculaos-sdk test --target qemu`: unit tests, then the image, then every
//! scenario: each boots the image under QEMU (TCG) and checks behaviour
//! through real clients (ssh, sfdisk, grub-editenv). Each prints `PASS name`
//! or `FAIL name: reason`; the run ends with `N passed, N failed`.
//!
//! Serial logs of every boot stay in `<out>/scenarios/<name>/serial-N.log`;
//! timings go to `<out>/scenarios/report.json`, never into assertions.

mod config;
mod firstboot;
mod harness;
mod install;
mod recovery;
mod slots;
mod suite;
mod support;

use anyhow::{bail, Result};
use clap::Args;
pub use config::nocloud_seed;
pub use harness::key_param;
use harness::{Ctx, Timing};
use maculaos_image::BuildOptions;
use maculaos_runner::Cmd;
use std::path::PathBuf;
use std::time::Instant;

/// Options of `maculaos-sdk test`.
#[derive(Args, Debug, Clone)]
pub struct TestArgs {
    /// Where to run: only `qemu` exists.
    #[arg(long, default_value = "qemu")]
    pub target: String,
    /// Run only scenarios whose name contains this word.
    #[arg(long)]
    pub filter: Option<String>,
    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// Skip `cargo test` (the unit tests).
    #[arg(long)]
    pub no_unit: bool,
    /// Output directory (image, scenario logs) [default: out/ in the repository].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One scenario of the suite.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&mut Ctx) -> Result<()>,
}

/// Run the suite; returns the process exit code.
pub fn run(args: &TestArgs, build: &BuildOptions) -> Result<i32> {
    if args.target != "qemu" {
        bail!("unknown target {:?}: only `qemu` is supported", args.target);
    }
    let all = suite::all();
    let chosen: Vec<&Scenario> = all
        .iter()
        .filter(|s| args.filter.as_deref().is_none_or(|f| s.name.contains(f)))
        .collect();
    if args.list {
        for s in &all {
            println!("{:<20} {}", s.name, s.about);
        }
        return Ok(0);
    }
    maculaos_image::hosttools::ensure(maculaos_image::hosttools::BUILD)?;
    maculaos_image::hosttools::ensure(maculaos_image::hosttools::VM)?;
    maculaos_image::hosttools::ensure(maculaos_image::hosttools::TEST)?;

    let mut passed = 0;
    let mut failed = 0;
    if !args.no_unit {
        eprintln!("==> unit tests (cargo test --workspace)");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        match Cmd::new(cargo)
            .args(["test", "--workspace"])
            .current_dir(&build.repo)
            .run()
        {
            Ok(()) => {
                println!("PASS unit-tests");
                passed += 1;
            }
            Err(e) => {
                println!("FAIL unit-tests: {e}");
                failed += 1;
            }
        }
    }
    if chosen.is_empty() {
        eprintln!("no scenario matches {:?}", args.filter);
    } else {
        eprintln!("==> building the image for the scenarios");
        let report = maculaos_image::build(build)?;
        let dir = build.out.join("scenarios");
        std::fs::create_dir_all(&dir)?;
        let (key, pubkey) = maculaos_vm::test_key(&dir)?;
        let mut timings: Vec<Timing> = Vec::new();
        for s in chosen {
            eprintln!("==> scenario {}: {}", s.name, s.about);
            let started = Instant::now();
            let mut ctx = Ctx::new(s.name, &dir, &report, build, &key, &pubkey)?;
            let mut result = (s.run)(&mut ctx);
            ctx.shutdown();
            // A wedged emulator says nothing about MaculaOS: run the scenario
            // once more from scratch, and say so. A second wedge fails it.
            if let Err(e) = &result {
                if harness::is_wedged(e, &ctx.dir) {
                    println!("RETRY {}: {e:#}", s.name);
                    let wedged_dir = dir.join(format!("{}.wedged", s.name));
                    let _ = std::fs::remove_dir_all(&wedged_dir);
                    harness::remove_disks(&ctx.dir);
                    let _ = std::fs::rename(&ctx.dir, &wedged_dir);
                    timings.push(Timing {
                        scenario: s.name.into(),
                        what: "retried: the guest wedged under TCG".into(),
                        seconds: started.elapsed().as_secs_f64(),
                    });
                    ctx = Ctx::new(s.name, &dir, &report, build, &key, &pubkey)?;
                    result = (s.run)(&mut ctx);
                    ctx.shutdown();
                }
            }
            let secs = started.elapsed().as_secs_f64();
            match result {
                Ok(()) => {
                    println!("PASS {}", s.name);
                    passed += 1;
                    // Logs stay; the multi-GiB working disks only when it failed.
                    harness::remove_disks(&ctx.dir);
                }
                Err(e) => {
                    println!("FAIL {}: {e:#}", s.name);
                    failed += 1;
                }
            }
            eprintln!("    ({:.0}s; logs in {})", secs, ctx.dir.display());
            timings.append(&mut ctx.timings);
            timings.push(Timing {
                scenario: s.name.into(),
                what: "scenario total".into(),
                seconds: secs,
            });
        }
        harness::write_report(&dir.join("report.json"), &report.manifest, &timings)?;
        for t in &timings {
            // Most are seconds; a few are memory, named "(MiB)".
            let unit = if t.what.ends_with("(MiB)") { "" } else { "s" };
            eprintln!(
                "    timing {:<18} {:<44} {:>7.1}{unit}",
                t.scenario, t.what, t.seconds
            );
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}
