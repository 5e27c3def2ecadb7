//! Metrics (guide "Remote Monitoring", issue 20): the guide's
//! `monitoring.prometheus` block, written as the guide writes it, starts
//! Debian's node-exporter with MaculaOS's own metrics beside the machine's;
//! another node on the LAN scrapes them, and the Prometheus client
//! library's own parser reads what it got; the port is closed before and
//! after, the service stopped once the block is gone.

use crate::firewall::{fetch_port, resolve};
use crate::harness::{ensure, Ctx, CMD_TIMEOUT};
use anyhow::{Context, Result};
use maculaos_vm::Ssh;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

const FILE: &str = "/var/lib/maculaos/config.d/60-metrics.yaml";
/// The guide's block, as written there.
const GUIDE: &str =
    "monitoring:\n  prometheus:\n    enabled: true\n    port: 9100\n    path: /metrics\n";
const UNIT: &str = "prometheus-node-exporter.service";

type Labels = BTreeMap<String, String>;
/// Samples by name: each one's labels and value.
type Samples = BTreeMap<String, Vec<(Labels, f64)>>;

/// `text` read by prometheus_client's parser (python3-prometheus-client on
/// the host), by sample name; a text it cannot read is an error.
fn parse(text: &str) -> Result<Samples> {
    // A raw string: Python's indentation must survive.
    const SCRIPT: &str = r#"import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.setdefault(s.name, []).append([s.labels, s.value])
print(json.dumps(out))
"#;
    // Debian's python3, which has the package (not another on PATH).
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running python3 (apt-get install python3-prometheus-client)")?;
    // A parser that stopped early says why on stderr: that, not the
    // broken pipe, is the error.
    let _ = child
        .stdin
        .take()
        .context("python3's stdin")?
        .write_all(text.as_bytes());
    let out = child.wait_with_output()?;
    ensure(out.status.success(), || {
        format!(
            "the Prometheus parser refused the metrics: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let v: BTreeMap<String, Vec<(Labels, Value)>> =
        serde_json::from_slice(&out.stdout).context("the parser's JSON")?;
    Ok(v.into_iter()
        .map(|(k, rows)| {
            let rows = rows
                .into_iter()
                .map(|(l, v)| (l, v.as_f64().unwrap_or(f64::NAN)))
                .collect();
            (k, rows)
        })
        .collect())
}

/// The value of `name` with the label `label` = `value` (or the only
/// sample when `label` is empty).
fn value(s: &Samples, name: &str, label: (&str, &str)) -> Option<f64> {
    s.get(name)?
        .iter()
        .find(|(l, _)| label.0.is_empty() || l.get(label.0).map(String::as_str) == Some(label.1))
        .map(|(_, v)| *v)
}

const ALERTS_FILE: &str = "/var/lib/maculaos/config.d/61-alerts.yaml";
const REALM_FILE: &str = "/var/lib/maculaos/config.d/61-realm.yaml";
const TOPIC: &str = "io.mycompany.alerts.memory";
/// What the subscriber got (`maculaos mesh sub`'s JSON lines).
const SUBSCRIBED: &str = "/var/tmp/alerts.jsonl";

/// The guide's alert block with `condition` and a hold of 1 s. (Memory,
/// not the guide's disk: a fresh data partition is 0.0% used.)
fn alert_yaml(condition: &str) -> String {
    format!(
        "alerts:\n  - name: memory_used\n    condition: {condition}\n    topic: {TOPIC}\n    for: 1s\n"
    )
}

/// Waits until `a`'s journal of the agent has `line` and the subscriber's
/// file has a message with `state`; returns how long it took.
fn wait_alert(a: &Ssh, line: &str, state: &str) -> Result<f64> {
    let t = Instant::now();
    a.check_timeout(
        &format!(
            "for i in $(seq 90); do journalctl -q -b -u maculaos-agent | grep -qF '{line}' && \
             grep -F 'memory_used' {SUBSCRIBED} | grep -qF '{state}' && exit 0; sleep 1; done; \
             echo 'no {state} event within 90 s'; journalctl -q -b -u maculaos-agent | tail -5; \
             cat {SUBSCRIBED}; exit 1"
        ),
        CMD_TIMEOUT,
    )?;
    Ok(t.elapsed().as_secs_f64())
}

/// The guide's alerts: on a realm of its own, the agent's firing and
/// resolved events reach a subscriber of the topic and the journal.
fn alerts(ctx: &mut Ctx, a: &Ssh) -> Result<()> {
    crate::config::put_file(
        a,
        REALM_FILE,
        "mesh:\n  realm: io.alerts.test\n  role: bootstrap\n",
    )?;
    a.check_timeout("sudo maculaos apply", CMD_TIMEOUT)?;
    // The subscriber, on the node's own server; ready once it gets a probe.
    a.check(&format!(
        "sudo rm -f {SUBSCRIBED}; for i in $(seq 60); do maculaos mesh pub probe x 2>/dev/null && break; \
         sleep 1; done; sudo systemd-run --quiet --unit=alert-sub -p StandardOutput=file:{SUBSCRIBED} \
         maculaos mesh sub {TOPIC} --timeout 900 && \
         for i in $(seq 60); do maculaos mesh pub {TOPIC} probe; grep -q probe {SUBSCRIBED} && exit 0; \
         sleep 1; done; echo 'the subscriber got no probe'; exit 1"
    ))?;
    // A bad condition is refused, naming the file.
    crate::config::apply_refuses(
        a,
        ALERTS_FILE,
        &alert_yaml("memory_usage > 1 percent"),
        "not an alert condition",
    )?;
    // Fires: more than 1% of the memory is in use.
    crate::config::put_file(a, ALERTS_FILE, &alert_yaml("memory_usage > 1%"))?;
    a.check_timeout("sudo maculaos apply", CMD_TIMEOUT)?;
    let took = wait_alert(a, "alert memory_used firing: memory_usage is", "firing")?;
    ctx.record(
        "metrics: alert written to its firing event on the mesh (s)",
        took,
    );
    // Resolved once its new condition no longer holds.
    crate::config::put_file(a, ALERTS_FILE, &alert_yaml("memory_usage > 99%"))?;
    let took = wait_alert(a, "alert memory_used resolved: memory_usage is", "resolved")?;
    ctx.record(
        "metrics: condition changed to its resolved event on the mesh (s)",
        took,
    );
    let got = a.check(&format!("cat {SUBSCRIBED}"))?;
    ensure(
        got.contains("macula-") && got.contains("memory_usage > 1%") && got.contains("value"),
        || format!("the events on the mesh lack the node, condition or value:\n{got}"),
    )?;
    a.check(&format!(
        "sudo rm {ALERTS_FILE} {REALM_FILE}; sudo systemctl stop alert-sub || true"
    ))?;
    Ok(())
}

/// What `b` gets from `addr:9100/metrics`, or `None` when nothing answers.
fn scrape(b: &Ssh, addr: &str) -> Result<Option<String>> {
    let out = b.run_timeout(
        &format!("curl -sf -m 10 http://{addr}:9100/metrics"),
        CMD_TIMEOUT,
    )?;
    Ok(out.success().then_some(out.stdout))
}

pub fn metrics(ctx: &mut Ctx) -> Result<()> {
    let lan = ctx.nodes(2)?;
    let target = lan.nodes[0].hostname;
    let a = lan.nodes[0].ssh.clone();
    let b = lan.nodes[1].ssh.clone();
    let addr = resolve(&b, target)?;

    // Off by default: the package's own enablement is undone in the image,
    // and the firewall drops the port.
    let state = a.run(&format!("systemctl is-active {UNIT}"))?;
    ensure(state.stdout.trim() == "inactive", || {
        format!("{UNIT} runs on a node that did not ask for it: {state:?}")
    })?;
    ensure(fetch_port(&b, &addr, 9100)? == 28, || {
        "port 9100 is not dropped before metrics are enabled".into()
    })?;

    // A bad path is refused, naming the file and the value.
    crate::config::apply_refuses(
        &a,
        FILE,
        &GUIDE.replace("/metrics", "metrics"),
        "not a URL path",
    )?;

    // The guide's block, at the top level where the guide puts it.
    crate::config::put_file(&a, FILE, GUIDE)?;
    let t = Instant::now();
    a.check_timeout("sudo maculaos apply", CMD_TIMEOUT)?;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if let Some(t) = scrape(&b, &addr)? {
            let s = parse(&t)?;
            let done = value(&s, "maculaos_health_check_passing", ("check", "metrics"));
            text = t;
            if done == Some(1.0) {
                break;
            }
        }
        ensure(Instant::now() < deadline, || {
            format!(
                "within 4 minutes of apply, the scrape from another node never showed the \
                 agent's `metrics` check passing; last scrape:\n{text}"
            )
        })?;
        std::thread::sleep(Duration::from_secs(2));
    }
    ctx.record(
        "metrics: apply to a scrape from the LAN with the agent's metrics check passing (s)",
        t.elapsed().as_secs_f64(),
    );
    ctx.record("metrics: one scrape (KiB)", text.len() as f64 / 1024.0);
    let s = parse(&text)?;
    // The machine's metrics, from node-exporter itself.
    for name in [
        "node_cpu_seconds_total",
        "node_memory_MemAvailable_bytes",
        "node_filesystem_avail_bytes",
    ] {
        ensure(s.contains_key(name), || {
            format!("no {name} in the scrape:\n{text}")
        })?;
    }
    // MaculaOS's own, read by node-exporter's textfile collector.
    ensure(
        value(&s, "node_textfile_scrape_error", ("", "")) == Some(0.0),
        || format!("node-exporter could not read the textfile:\n{text}"),
    )?;
    let info = crate::harness::info(&a)?;
    let own = s
        .get("maculaos_info")
        .and_then(|rows| rows.first())
        .map(|(l, _)| l.clone())
        .with_context(|| format!("no maculaos_info in the scrape:\n{text}"))?;
    ensure(
        own.get("version").map(String::as_str) == info["version"].as_str()
            && own.get("slot").map(String::as_str) == info["slot"].as_str()
            && own.get("mode").map(String::as_str) == Some("disk"),
        || format!("maculaos_info {own:?} does not match `maculaos info --json`: {info}"),
    )?;
    ensure(
        value(&s, "maculaos_boots_total", ("", "")).is_some_and(|n| n >= 1.0),
        || format!("no boot count in the scrape:\n{text}"),
    )?;
    ensure(
        value(&s, "maculaos_health_check_passing", ("check", "data-space")) == Some(1.0)
            && value(&s, "maculaos_health_checks_failing", ("", "")).is_some(),
        || format!("the health checks are not in the scrape:\n{text}"),
    )?;

    // Shown where the operator looks.
    let services = a.check("maculaos services")?;
    ensure(
        services.lines().any(|l| {
            l.starts_with("metrics ")
                && l.contains("running")
                && l.contains("healthy")
                && l.contains("9100/tcp")
        }),
        || format!("`maculaos services` does not show metrics running:\n{services}"),
    )?;
    let health = a.run("maculaos health")?;
    ensure(
        health.stdout.lines().any(|l| l.starts_with("✓ metrics ")),
        || format!("`maculaos health` has no passing metrics check: {health:?}"),
    )?;
    let shown = a.check("maculaos firewall show")?;
    ensure(
        shown
            .lines()
            .any(|l| l.contains("9100/tcp") && l.contains("maculaos.monitoring.prometheus")),
        || format!("`firewall show` does not say why 9100 is open:\n{shown}"),
    )?;
    let mem = a.check(&format!("systemctl show -p MemoryCurrent --value {UNIT}"))?;
    if let Ok(bytes) = mem.trim().parse::<f64>() {
        ctx.record(
            "metrics: node-exporter's memory after a few scrapes (MiB)",
            bytes / 1048576.0,
        );
    }

    alerts(ctx, &a)?;

    // Off again: the service stops and the port is dropped.
    a.check(&format!("sudo rm {FILE}"))?;
    a.check_timeout("sudo maculaos apply", CMD_TIMEOUT)?;
    // apply stops it without waiting (--no-block).
    a.check(&format!(
        "for i in $(seq 60); do systemctl is-active --quiet {UNIT} || exit 0; sleep 1; done; \
         echo '{UNIT} still runs 60 s after the block was removed'; exit 1"
    ))?;
    ensure(fetch_port(&b, &addr, 9100)? == 28, || {
        "port 9100 is not dropped after metrics were disabled".into()
    })?;
    // The agent, which checks it while it runs, does not start it again.
    let state = a.run(&format!("systemctl is-active {UNIT}"))?;
    ensure(state.stdout.trim() != "active", || {
        format!("{UNIT} was started again after it was disabled: {state:?}")
    })?;
    let shown = a.check("maculaos firewall show")?;
    ensure(!shown.contains("9100/tcp"), || {
        format!("`firewall show` still lists 9100 after metrics were disabled:\n{shown}")
    })?;
    Ok(())
}
