//! `maculaos-sdk test --target qemu`: unit tests, then the image, then every
//! scenario: each boots the image under QEMU (TCG) and checks behaviour
//! through real clients (ssh, sfdisk, grub-editenv). Each prints `PASS name`
//! or `FAIL name: reason`; the run ends with `N passed, N failed`.
//!
//! Scenarios run side by side (`--jobs`, by default one per core, each VM
//! with the cores shared out); each one's lines are printed together when
//! it ends. Scenarios that only need a running node start from the nodes
//! saved once per run (see `pool`) instead of booting.
//!
//! Serial logs of every boot stay in `<out>/scenarios/<name>/…/serial-N.log`;
//! timings go to `<out>/scenarios/report.json`, never into assertions.

mod config;
mod edge;
mod firewall;
mod firstboot;
mod guide;
mod harness;
mod install;
mod lan;
mod mesh;
mod metrics;
mod nats;
mod pool;
mod recovery;
mod registry;
mod rollout;
pub mod scan;
mod services;
mod slots;
mod suite;
mod support;
mod wireguard;

use anyhow::{bail, Result};
use clap::Args;
pub use config::nocloud_seed;
pub use harness::key_param;
use harness::{Ctx, Shared, Timing};
use maculaos_image::BuildOptions;
use maculaos_runner::Cmd;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Options of `maculaos-sdk test`.
#[derive(Args, Debug, Clone)]
pub struct TestArgs {
    /// Where to run: only `qemu` exists.
    #[arg(long, default_value = "qemu")]
    pub target: String,
    /// Run only scenarios whose name contains this word (or one of several, comma-separated).
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
    /// Scenarios run side by side [default: one per CPU core].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub jobs: Option<u32>,
    /// Virtual CPUs per VM [default: host cores / jobs, at least 1, at most 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub cpus: Option<u32>,
    /// Run the unit tests and each chosen scenario N times and name any
    /// whose result was not the same every time (FLAKY).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,
}

/// One scenario of the suite.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&mut Ctx) -> Result<()>,
    /// Starts from the saved nodes (`Ctx::restore`, `Ctx::nodes`).
    pub pool: bool,
}

/// The saved nodes, as far as the run has got with them.
enum PoolState {
    NotNeeded,
    Pending,
    Ready(Arc<pool::Pool>),
    Failed(String),
}

/// What the workers share: the jobs left, the pool, the results.
struct Queue {
    /// (scenario index, round); `None` is the job that makes the pool.
    jobs: Vec<Option<(usize, u32)>>,
    pool: PoolState,
    /// name → result of each round, in the order they ended.
    results: BTreeMap<&'static str, Vec<bool>>,
    timings: Vec<Timing>,
}

/// The slowest scenarios (measured on 2 cores), started first so that the
/// short ones fill the end of a run instead of one long one running alone;
/// the update scenarios lead, so that the shared v2 build starts while the
/// snapshot's nodes boot. The rest follow in the suite's order.
const FIRST: &[&str] = &[
    "fleet-rollout",
    "upgrade-usb",
    "upgrade-http",
    "upgrade-power-cut",
    "agent-backup-diag",
    "services-deploy",
    "services-registry",
    "firewall",
    "wireguard",
    "metrics",
    "edge-services",
    "factory-reset",
    "mesh-realm",
    "mesh-gateway",
    "live-persist",
    "install",
    "live-bios",
    "config-nocloud",
    "boot-uefi",
    "config-last-good",
    "trial-rollback",
    "recovery",
    "firstboot",
    "lan-nodes",
];

/// How many jobs by default: one per core the host has.
fn default_jobs() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(1))
        .unwrap_or(1)
}

/// Run the suite; returns the process exit code.
pub fn run(args: &TestArgs, build: &BuildOptions) -> Result<i32> {
    if args.target != "qemu" {
        bail!("unknown target {:?}: only `qemu` is supported", args.target);
    }
    let all = suite::all();
    let mut chosen: Vec<usize> = (0..all.len())
        .filter(|&i| {
            args.filter
                .as_deref()
                .is_none_or(|f| f.split(',').any(|w| all[i].name.contains(w)))
        })
        .collect();
    // Stable: the ones not in FIRST keep the suite's order.
    chosen.sort_by_key(|&i| {
        FIRST
            .iter()
            .position(|n| *n == all[i].name)
            .unwrap_or(FIRST.len())
    });
    if args.list {
        for s in &all {
            let from = if s.pool { "saved nodes" } else { "boots" };
            println!("{:<20} [{from}] {}", s.name, s.about);
        }
        return Ok(0);
    }
    maculaos_image::hosttools::ensure(maculaos_image::hosttools::BUILD)?;
    maculaos_image::hosttools::ensure(maculaos_image::hosttools::VM)?;
    maculaos_image::hosttools::ensure(maculaos_image::hosttools::TEST)?;
    let suite_start = Instant::now();
    let dir = build.out.join("scenarios");
    std::fs::create_dir_all(&dir)?;

    // The unit tests run beside the image build: both are mostly waiting
    // on different things (the compiler, the disk).
    let unit = (!args.no_unit).then(|| {
        let (repo, log, repeat) = (build.repo.clone(), dir.join("unit-tests.log"), args.repeat);
        std::thread::spawn(move || unit_tests(&repo, &log, repeat))
    });

    let mut passed = 0;
    let mut failed = 0;
    let mut flaky = Vec::new();
    let mut timings: Vec<Timing> = Vec::new();
    if chosen.is_empty() {
        eprintln!("no scenario matches {:?}", args.filter);
    } else {
        eprintln!("==> building the image for the scenarios");
        let built = maculaos_image::build(build).and_then(|report| {
            let (key, pubkey) = maculaos_vm::test_key(&dir)?;
            Ok((report, key, pubkey))
        });
        let (report, key, pubkey) = match built {
            Ok(b) => b,
            Err(e) => {
                // The unit tests' verdict is still worth having.
                if let Some(unit) = unit {
                    for r in unit.join().unwrap_or_default() {
                        match r {
                            Ok(()) => println!("PASS unit-tests"),
                            Err(e) => println!("FAIL unit-tests: {e}"),
                        }
                    }
                }
                return Err(e);
            }
        };
        let cores = default_jobs();
        // Up to 16 side by side by default: each may run three VMs.
        let jobs = args.jobs.unwrap_or_else(|| cores.min(16));
        let shared = Shared {
            dir: dir.clone(),
            report,
            build: build.clone(),
            key,
            pubkey,
            cpus: args
                .cpus
                .unwrap_or_else(|| (cores / jobs).clamp(1, maculaos_vm::DEFAULT_CPUS)),
        };
        let needs_pool = chosen.iter().any(|&i| all[i].pool);
        let mut queue: Vec<Option<(usize, u32)>> = Vec::new();
        if needs_pool {
            queue.push(None);
        }
        for round in 1..=args.repeat {
            queue.extend(chosen.iter().map(|&i| Some((i, round))));
        }
        eprintln!(
            "==> {} scenario runs, {jobs} side by side, {} CPU(s) per VM",
            queue.len() - usize::from(needs_pool),
            shared.cpus
        );
        let state = Arc::new((
            Mutex::new(Queue {
                jobs: queue,
                pool: if needs_pool {
                    PoolState::Pending
                } else {
                    PoolState::NotNeeded
                },
                results: BTreeMap::new(),
                timings: Vec::new(),
            }),
            Condvar::new(),
        ));
        std::thread::scope(|scope| {
            for _ in 0..jobs {
                let (state, shared, all) = (state.clone(), &shared, &all);
                scope.spawn(move || worker(&state, shared, all, args.repeat));
            }
        });
        let mut q = state
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("a scenario worker panicked"))?;
        if let PoolState::Failed(_) = q.pool {
            failed += 1;
        } else if needs_pool {
            passed += 1;
        }
        // The saved nodes are gigabytes: gone once nobody needs them.
        harness::remove_disks(&dir.join("snapshot"));
        for (name, rounds) in &q.results {
            passed += rounds.iter().filter(|ok| **ok).count();
            failed += rounds.iter().filter(|ok| !**ok).count();
            if rounds.iter().any(|ok| *ok) && rounds.iter().any(|ok| !*ok) {
                flaky.push(format!(
                    "FLAKY {name}: passed {} of {} runs",
                    rounds.iter().filter(|ok| **ok).count(),
                    rounds.len()
                ));
            }
        }
        timings.append(&mut q.timings);
        timings.push(Timing {
            scenario: "suite".into(),
            what: "scenarios, wall".into(),
            seconds: suite_start.elapsed().as_secs_f64(),
        });
        harness::write_report(&dir.join("report.json"), &shared.report.manifest, &timings)?;
    }
    if let Some(unit) = unit {
        let rounds = unit
            .join()
            .map_err(|_| anyhow::anyhow!("the unit test thread panicked"))?;
        let ok = rounds.iter().filter(|r| r.is_ok()).count();
        for r in &rounds {
            match r {
                Ok(()) => println!("PASS unit-tests"),
                Err(e) => println!("FAIL unit-tests: {e}"),
            }
        }
        passed += ok;
        failed += rounds.len() - ok;
        if ok > 0 && ok < rounds.len() {
            flaky.push(format!(
                "FLAKY unit-tests: passed {ok} of {} runs",
                rounds.len()
            ));
        }
    }
    slowest_table(&timings, suite_start.elapsed().as_secs_f64());
    for f in &flaky {
        println!("{f}");
    }
    if args.repeat > 1 && flaky.is_empty() {
        println!(
            "every run of every test gave the same result ({} rounds)",
            args.repeat
        );
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 && flaky.is_empty() {
        0
    } else {
        1
    })
}

/// `cargo test --workspace`, `repeat` times, its output in `log`.
fn unit_tests(repo: &std::path::Path, log: &std::path::Path, repeat: u32) -> Vec<Result<()>> {
    let _ = std::fs::remove_file(log);
    eprintln!(
        "==> unit tests (cargo test --workspace; output in {})",
        log.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    (0..repeat)
        .map(|_| {
            Cmd::new(&cargo)
                .args(["test", "--workspace"])
                .current_dir(repo)
                .log_to(log)
                .run()
                .map_err(anyhow::Error::from)
        })
        .collect()
}

/// One worker: take the next job that can run, run it, print its lines.
fn worker(state: &(Mutex<Queue>, Condvar), shared: &Shared, all: &[Scenario], repeat: u32) {
    let (lock, ready) = state;
    loop {
        let (job, pool) = {
            let Ok(mut q) = lock.lock() else { return };
            loop {
                if q.jobs.is_empty() {
                    return;
                }
                let pool_known = !matches!(q.pool, PoolState::Pending);
                let pick = q.jobs.iter().position(|j| match j {
                    None => true,
                    Some((i, _)) => !all[*i].pool || pool_known,
                });
                if let Some(at) = pick {
                    let job = q.jobs.remove(at);
                    let pool = match &q.pool {
                        PoolState::Ready(p) => Ok(Some(p.clone())),
                        PoolState::Failed(e) => Err(e.clone()),
                        _ => Ok(None),
                    };
                    break (job, pool);
                }
                let Ok(next) = ready.wait(q) else { return };
                q = next;
            }
        };
        // A panic in a job must neither leave the pool pending (the others
        // would wait for ever) nor lose the job's result.
        match job {
            None => {
                let made =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| make_pool(shared)));
                let (result, mut timings) = made.unwrap_or_else(|_| {
                    print_block("FAIL snapshot: the snapshot step panicked\n");
                    (Err("the snapshot step panicked".to_string()), Vec::new())
                });
                if let Ok(mut q) = lock.lock() {
                    q.pool = match result {
                        Ok(p) => PoolState::Ready(Arc::new(p)),
                        Err(e) => PoolState::Failed(e),
                    };
                    q.timings.append(&mut timings);
                }
                ready.notify_all();
            }
            Some((i, round)) => {
                let s = &all[i];
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_scenario(s, round, repeat, shared, pool)
                }));
                let (ok, mut timings) = ran.unwrap_or_else(|_| {
                    print_block(&format!("FAIL {}: the scenario panicked\n", s.name));
                    (false, Vec::new())
                });
                if let Ok(mut q) = lock.lock() {
                    q.results.entry(s.name).or_default().push(ok);
                    q.timings.append(&mut timings);
                }
            }
        }
    }
}

/// Print one finished job's lines together.
fn print_block(lines: &str) {
    use std::io::Write;
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = out.write_all(lines.as_bytes());
    let _ = out.flush();
}

/// Boot and save the pool's nodes; the error as text for the scenarios
/// that needed them.
fn make_pool(shared: &Shared) -> (Result<pool::Pool, String>, Vec<Timing>) {
    eprintln!(
        "==> start snapshot: boot {} nodes, save them",
        pool::NODES.len()
    );
    let started = Instant::now();
    let mut block = format!(
        "==> snapshot: {} nodes booted together on one LAN, saved for the scenarios that start from them\n",
        pool::NODES.len()
    );
    let (result, dir, mut timings) =
        attempt("snapshot", "snapshot", shared, None, &mut block, pool::make);
    let secs = started.elapsed().as_secs_f64();
    let result = match result {
        Ok(p) => {
            block.push_str("PASS snapshot\n");
            Ok(p)
        }
        Err(e) => {
            block.push_str(&format!("FAIL snapshot: {e:#}\n"));
            Err(format!("{e:#}"))
        }
    };
    timings.push(Timing {
        scenario: "snapshot".into(),
        what: "scenario total".into(),
        seconds: secs,
    });
    block.push_str(&timing_lines(&timings));
    block.push_str(&format!("    ({secs:.0}s; logs in {})\n", dir.display()));
    print_block(&block);
    (result, timings)
}

/// Run `f` in a fresh context; a guest that wedged under TCG gets one
/// more try from scratch, said in a RETRY line. Returns the result, the
/// context's directory and its timings.
fn attempt<T>(
    name: &'static str,
    dir_name: &str,
    shared: &Shared,
    pool: Option<Arc<pool::Pool>>,
    block: &mut String,
    f: impl Fn(&mut Ctx) -> Result<T>,
) -> (Result<T>, PathBuf, Vec<Timing>) {
    let started = Instant::now();
    let mut timings = Vec::new();
    let mut ctx = match Ctx::new(name, dir_name, shared, pool.clone()) {
        Ok(c) => c,
        Err(e) => return (Err(e), shared.dir.join(dir_name), timings),
    };
    let mut result = f(&mut ctx);
    ctx.shutdown();
    // A wedged emulator says nothing about MaculaOS: once more from
    // scratch, and say so. A second wedge fails it.
    if let Err(e) = &result {
        if harness::is_wedged(e, &ctx.dir) {
            block.push_str(&format!("RETRY {name}: {e:#}\n"));
            let wedged_dir = shared.dir.join(format!("{dir_name}.wedged"));
            let _ = std::fs::remove_dir_all(&wedged_dir);
            harness::remove_disks(&ctx.dir);
            let _ = std::fs::rename(&ctx.dir, &wedged_dir);
            timings.push(Timing {
                scenario: name.into(),
                what: "retried: the guest wedged under TCG".into(),
                seconds: started.elapsed().as_secs_f64(),
            });
            match Ctx::new(name, dir_name, shared, pool) {
                Ok(c) => {
                    ctx = c;
                    result = f(&mut ctx);
                    ctx.shutdown();
                }
                Err(e) => result = Err(e),
            }
        }
    }
    timings.append(&mut ctx.timings);
    (result, ctx.dir.clone(), timings)
}

/// Run one round of one scenario; whether it passed, and its timings.
fn run_scenario(
    s: &Scenario,
    round: u32,
    repeat: u32,
    shared: &Shared,
    pool: Result<Option<Arc<pool::Pool>>, String>,
) -> (bool, Vec<Timing>) {
    let dir_name = if repeat > 1 {
        format!("{}.{round}", s.name)
    } else {
        s.name.to_string()
    };
    eprintln!("==> start {dir_name}");
    let started = Instant::now();
    let mut block = format!("==> scenario {}: {}\n", s.name, s.about);
    let (result, dir, mut timings) = match pool {
        Err(why) if s.pool => (
            Err(anyhow::anyhow!(
                "the saved nodes it starts from were not made: {why}"
            )),
            shared.dir.join(&dir_name),
            Vec::new(),
        ),
        pool => {
            let pool = pool.ok().flatten().filter(|_| s.pool);
            attempt(s.name, &dir_name, shared, pool, &mut block, s.run)
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let ok = match result {
        Ok(()) => {
            block.push_str(&format!("PASS {}\n", s.name));
            // Logs stay; the multi-GiB working disks only when it failed.
            harness::remove_disks(&dir);
            true
        }
        Err(e) => {
            block.push_str(&format!("FAIL {}: {e:#}\n", s.name));
            false
        }
    };
    timings.push(Timing {
        scenario: dir_name,
        what: "scenario total".into(),
        seconds: secs,
    });
    block.push_str(&timing_lines(&timings));
    block.push_str(&format!("    ({secs:.0}s; logs in {})\n", dir.display()));
    print_block(&block);
    (ok, timings)
}

fn timing_lines(timings: &[Timing]) -> String {
    timings
        .iter()
        .map(|t| {
            // Most are seconds; a few are benchmarks whose name ends in
            // their unit: "(MiB)", "(KiB)", "(ms)", "(msgs/s)", "(lines/s)", "(bytes)".
            let unit = if ["(MiB)", "(KiB)", "(ms)", "(msgs/s)", "(lines/s)", "(bytes)"]
                .iter()
                .any(|u| t.what.ends_with(u))
            {
                ""
            } else {
                "s"
            };
            format!(
                "    timing {:<18} {:<44} {:>7.1}{unit}\n",
                t.scenario, t.what, t.seconds
            )
        })
        .collect()
}

/// The ten slowest scenarios and the whole run's wall time.
fn slowest_table(timings: &[Timing], wall: f64) {
    let mut totals: Vec<&Timing> = timings
        .iter()
        .filter(|t| t.what == "scenario total")
        .collect();
    if totals.is_empty() {
        return;
    }
    totals.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    let mut table = String::from("slowest scenarios:\n");
    for t in totals.iter().take(10) {
        table.push_str(&format!("  {:<24} {:>7.1}s\n", t.scenario, t.seconds));
    }
    let sum: f64 = totals.iter().map(|t| t.seconds).sum();
    table.push_str(&format!(
        "  {:<24} {:>7.1}s ({} scenario runs adding up to {:.1}s)\n",
        "whole run, wall",
        wall,
        totals.len(),
        sum
    ));
    print_block(&table);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_names_scenarios_that_exist() {
        let all = suite::all();
        for name in FIRST {
            assert!(
                all.iter().any(|s| s.name == *name),
                "FIRST names {name}, which is not a scenario"
            );
        }
    }

    #[test]
    fn scenario_names_are_unique() {
        let all = suite::all();
        let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }
}
