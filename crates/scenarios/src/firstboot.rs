//! Zero-touch first boot (plan §5.1, §5.2): an unconfigured node shows a
//! pairing code and a QR code on its consoles and serves the wizard on port
//! 80; a browser loads it, wrong codes are refused and then rate limited,
//! the right one configures the node (hostname, SSH key) and the wizard is
//! gone for good while the dashboard answers. Two nodes on one virtual LAN
//! find each other with `maculaos discover`, and resolve each other's
//! `.local` names with avahi and nss-mdns.

use crate::harness::{ensure, wait_until, wait_vm_up, Ctx, BOOT_TIMEOUT, CMD_TIMEOUT};
use anyhow::{bail, Context, Result};
use maculaos_runner::Cmd;
use maculaos_vm::{Firmware, Ssh, Vm};
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

/// What the wizard prints on the consoles before its QR code.
const CODE_LINE: &str = "Pairing code: ";
/// The line after the QR code.
const QR_END: &str = "Scan the QR code";
/// The name the scenario pairs the node under.
const PAIRED: &str = "edge-one";

/// `curl` from the host: (HTTP status, body).
fn curl(args: &[&str]) -> Result<(u16, String)> {
    let out = Cmd::new("curl")
        .args(["-sS", "--max-time", "60", "-w", "\n%{http_code}"])
        .args(args)
        .quiet()
        .output()?;
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
    let code = code
        .trim()
        .parse()
        .with_context(|| format!("curl printed no status: {out}"))?;
    Ok((code, body.to_string()))
}

/// The pairing code and the QR code's text, from the last banner on the
/// serial console.
fn banner(serial: &str) -> Option<(String, String)> {
    let clean: String = serial.replace('\r', "");
    let at = clean.rfind(CODE_LINE)?;
    let rest = &clean[at + CODE_LINE.len()..];
    let code = rest.lines().next()?.trim().to_string();
    let end = rest.find(QR_END)?;
    let qr: Vec<&str> = rest[..end]
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty() || l.chars().count() > 10)
        .filter(|l| l.chars().all(|c| matches!(c, ' ' | '█' | '▀' | '▄')))
        .collect();
    Some((code, qr.join("\n")))
}

/// Decode the text QR code as a phone would decode the picture of it.
fn decode_qr(text: &str) -> Result<String> {
    let modules = maculaos_firstboot::qr::qr_modules_from_text(text);
    let rows = modules.len();
    let cols = modules.iter().map(Vec::len).max().unwrap_or(0);
    if rows == 0 || cols == 0 {
        bail!("no QR code on the serial console");
    }
    // Pixels of 4×4 per module with a white border of 4 modules.
    const S: usize = 4;
    const B: usize = 4;
    let (w, h) = ((cols + 2 * B) * S, (rows + 2 * B) * S);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
        let (mx, my) = ((x / S).wrapping_sub(B), (y / S).wrapping_sub(B));
        let dark = modules
            .get(my)
            .and_then(|r| r.get(mx))
            .copied()
            .unwrap_or(false);
        if dark {
            0
        } else {
            255
        }
    });
    let grids = img.detect_grids();
    let grid = grids
        .first()
        .context("no QR code found in the console text")?;
    let (_, content) = grid.decode().context("the QR code does not decode")?;
    Ok(content)
}

/// Chromium, headless, loads `url` and saves a screenshot.
fn screenshot(url: &str, png: &Path) -> Result<()> {
    let profile = png.with_extension("chromium-profile");
    Cmd::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1100,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .quiet()
        .run()?;
    let _ = std::fs::remove_dir_all(&profile);
    let size = std::fs::metadata(png).map(|m| m.len()).unwrap_or(0);
    ensure(size > 1000, || {
        format!("chromium wrote no screenshot of {url} ({size} bytes)")
    })
}

pub fn firstboot_wizard(ctx: &mut Ctx) -> Result<()> {
    // No key on the command line: before pairing nobody can log in.
    let disk = ctx.disk_named("disk.img", false, "")?;
    let mut spec = ctx.spec(&disk, Firmware::Bios);
    spec.extra_forwards = vec![80];
    let started = Instant::now();
    let vm = ctx.start(spec)?;
    let port = vm.forwarded_port(80).context("no forward for port 80")?;
    let base = format!("http://127.0.0.1:{port}");
    vm.wait_for_serial(QR_END, BOOT_TIMEOUT)
        .context("waiting for the wizard's pairing code on the serial console")?;
    let mut page = String::new();
    wait_until(vm, "the wizard to answer HTTP", BOOT_TIMEOUT, || {
        let (code, body) = curl(&[&format!("{base}/")])?;
        page = body;
        Ok(code == 200)
    })?;
    let boot_to_wizard = started.elapsed().as_secs_f64();
    ctx.record("boot to the wizard answering HTTP (wall)", boot_to_wizard);
    ensure(
        page.contains("<form") && page.contains("name=\"code\""),
        || format!("the wizard's page has no pairing form:\n{page}"),
    )?;

    let serial = ctx.vm()?.serial_text();
    let (code, qr) =
        banner(&serial).context("no pairing code and QR code on the serial console")?;
    let decoded = decode_qr(&qr)?;
    let (_, info) = curl(&[&format!("{base}/api/v1/info")])?;
    let info: Value = serde_json::from_str(&info).context("/api/v1/info is not JSON")?;
    let hostname = info["hostname"].as_str().unwrap_or_default().to_string();
    ensure(
        decoded == format!("http://{hostname}.local/?code={code}"),
        || {
            format!("the QR code says {decoded:?}; expected the node's URL with code {code} (node {hostname})")
        },
    )?;
    ensure(!info.to_string().contains(&code), || {
        "/api/v1/info gives the pairing code away".to_string()
    })?;
    screenshot(&format!("{base}/?code={code}"), &ctx.dir.join("wizard.png"))?;

    // A wrong code: refused, nothing else looked at.
    let pair = format!("{base}/api/v1/pair");
    let json = |code: &str, hostname: &str, key: &str| {
        serde_json::json!({
            "code": code,
            "hostname": hostname,
            "ssh_authorized_keys": [key],
            "realm": "io.macula.test",
        })
        .to_string()
    };
    let post = |body: &str| {
        curl(&[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
            &pair,
        ])
    };
    let key = ctx.pubkey().to_string();
    let (status, body) = post(&json("WRONG-CODE1", PAIRED, &key))?;
    ensure(status == 403 && body.contains("code"), || {
        format!("a wrong code got {status}: {body}")
    })?;
    // The right code with invalid fields: every field named, nothing written.
    let (status, body) = post(&json(&code, "-bad_name-", "ssh-ed25519 not-base64!"))?;
    ensure(
        status == 400 && body.contains("hostname") && body.contains("ssh_authorized_keys"),
        || format!("invalid fields got {status}: {body}"),
    )?;
    // (The right code reset the count of wrong ones.) Five wrong codes in a
    // row: the next attempt, even with the right code, is told to wait.
    for _ in 0..5 {
        post(&json("WRONG-CODE1", PAIRED, &key))?;
    }
    let (status, body) = post(&json(&code, PAIRED, &key))?;
    ensure(status == 429 && body.contains("try again"), || {
        format!("after five wrong codes the wizard answered {status}: {body}")
    })?;
    // Pair through the HTML form, as the browser does, once the back-off ends.
    let form = format!(
        "code={}&hostname={PAIRED}&ssh_key={}&realm=io.macula.test&bootstrap=on&k3s_role=none",
        code,
        urlencode(&key)
    );
    let mut answer = String::new();
    let vm = ctx.vm()?;
    wait_until(
        vm,
        "the wizard to accept the right code after its back-off",
        BOOT_TIMEOUT,
        || {
            let (status, body) = curl(&["--data-binary", &form, &format!("{base}/")])?;
            answer = body;
            Ok(status == 200)
        },
    )?;
    ensure(answer.contains(PAIRED), || {
        format!("the success page does not say the node's new name:\n{answer}")
    })?;

    // The key from the form logs in; the node is who the form said.
    let key = ctx.key().to_path_buf();
    let ssh = wait_vm_up(ctx.vm()?, &key, "multi-user.target")?;
    let host = ssh.check("hostname")?;
    ensure(host.trim() == PAIRED, || {
        format!("hostname after pairing: {host}")
    })?;
    let config = ssh.check("sudo cat /var/lib/maculaos/config.yaml")?;
    ensure(
        config.contains("io.macula.test") && config.contains("bootstrap: true"),
        || format!("the stored configuration lacks the form's realm and role:\n{config}"),
    )?;
    ssh.check("sudo test -e /var/lib/maculaos/.configured")?;
    let mdns = ssh.check("cat /etc/avahi/services/macula.service")?;
    ensure(
        mdns.contains("configured=yes") && mdns.contains("role=peer,bootstrap"),
        || format!("the mDNS announcement after pairing:\n{mdns}"),
    )?;
    wait_until(
        ctx.vm()?,
        "the wizard to stop after pairing",
        CMD_TIMEOUT,
        || {
            let out = ssh.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/")?;
            Ok(out.stdout.trim() == "000")
        },
    )?;

    // After a reboot: no wizard, the dashboard answers.
    let ssh = ctx.reboot(&ssh, "after pairing, reboot")?;
    let wizard = ssh.check("systemctl show -p ConditionResult --value maculaos-firstboot")?;
    ensure(wizard.trim() == "no", || {
        format!("maculaos-firstboot ran again after pairing (ConditionResult={wizard})")
    })?;
    let (status, _) =
        curl(&["--max-time", "10", &format!("{base}/")]).unwrap_or((0, String::new()));
    ensure(status == 0 || status >= 500, || {
        format!("port 80 still answers after pairing ({status})")
    })?;
    dashboard(ctx, &ssh, PAIRED)?;
    Ok(())
}

/// The agent's dashboard on 127.0.0.1:9090: JSON status and a page that
/// refreshes itself; records the agent's memory.
fn dashboard(ctx: &mut Ctx, ssh: &Ssh, hostname: &str) -> Result<()> {
    let mut status = Value::Null;
    wait_until(ctx.vm()?, "the dashboard to answer", CMD_TIMEOUT, || {
        let out = ssh.run("curl -sf http://127.0.0.1:9090/api/v1/status")?;
        if !out.success() {
            return Ok(false);
        }
        status = serde_json::from_str(&out.stdout)?;
        Ok(true)
    })?;
    ensure(
        status["hostname"] == hostname && status["version"] == ctx.manifest.version.as_str(),
        || format!("the dashboard's status names another node:\n{status:#}"),
    )?;
    for key in [
        "cpu",
        "memory",
        "disks",
        "services",
        "checks",
        "mesh",
        "events",
        "slot",
        "uptime_seconds",
    ] {
        ensure(!status[key].is_null(), || {
            format!("the dashboard's status has no {key}:\n{status:#}")
        })?;
    }
    let page = ssh.check("curl -sf http://127.0.0.1:9090/")?;
    ensure(
        page.contains("http-equiv=\"refresh\"") && page.contains(hostname),
        || format!("the dashboard page does not refresh itself or name the node:\n{page}"),
    )?;
    let lan =
        ssh.run("curl -s -o /dev/null --max-time 5 http://$(hostname -I | cut -d' ' -f1):9090/")?;
    ensure(!lan.success(), || {
        "the dashboard answers on the LAN address by default".to_string()
    })?;
    let rss = ssh.check("ps -o rss=,args= -C maculaos | awk '/ agent/ {print $1}'")?;
    if let Ok(kib) = rss.trim().parse::<f64>() {
        ctx.record("RSS of maculaos agent (MiB)", kib / 1024.0);
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `maculaos discover --json` on `ssh` until it lists `name` with an
/// address; returns that node's JSON.
fn discover(vm: &mut Vm, ssh: &Ssh, name: &str) -> Result<Value> {
    let mut found = Value::Null;
    let mut last = String::new();
    let res = wait_until(
        vm,
        &format!("maculaos discover to list {name}"),
        BOOT_TIMEOUT,
        || {
            let out = ssh.check_timeout("maculaos discover --json --timeout 4", CMD_TIMEOUT)?;
            last = out.clone();
            let nodes: Value = serde_json::from_str(&out)?;
            if let Some(n) = nodes.as_array().into_iter().flatten().find(|n| {
                n["name"] == name && n["addresses"].as_array().is_some_and(|a| !a.is_empty())
            }) {
                found = n.clone();
                return Ok(true);
            }
            Ok(false)
        },
    );
    res.with_context(|| format!("last `maculaos discover --json`: {last}"))?;
    Ok(found)
}

pub fn lan_discovery(ctx: &mut Ctx) -> Result<()> {
    // Two saved nodes on one LAN: each did its own first boot, so each has
    // its own MACs, hostname, machine-id and keys.
    let mut lan = ctx.nodes(2)?;
    let (name_a, name_b) = (lan.nodes[0].hostname, lan.nodes[1].hostname);
    let (ssh_a, ssh_b) = (lan.nodes[0].ssh.clone(), lan.nodes[1].ssh.clone());
    for (ssh, name) in [(&ssh_a, name_a), (&ssh_b, name_b)] {
        let h = ssh.check("hostname")?;
        ensure(h.trim() == name, || {
            format!("hostname {h:?}, expected {name} from the MAC")
        })?;
    }

    let started = Instant::now();
    let seen_b = discover(&mut lan.nodes[0].vm, &ssh_a, name_b)?;
    ctx.record(
        "maculaos discover on A lists B (wall, both up)",
        started.elapsed().as_secs_f64(),
    );
    let seen_a = discover(&mut lan.nodes[1].vm, &ssh_b, name_a)?;
    let version = ctx.manifest.version.clone();
    for (n, name) in [(&seen_b, name_b), (&seen_a, name_a)] {
        ensure(
            n["version"] == version.as_str()
                && n["role"] == "peer"
                && n["configured"] == false
                && n["id"].as_str().is_some_and(|id| id.len() == 12),
            || format!("{name} as discovered: {n:#}"),
        )?;
    }
    let table = ssh_a.check("maculaos discover --timeout 3")?;
    ensure(
        table.contains(name_b) && table.contains(&format!("{name_a} (this node)")),
        || format!("`maculaos discover` on A:\n{table}"),
    )?;

    // Standard tools resolve the other node's name: avahi, and nss-mdns
    // through getent; the address is B's on the LAN link.
    let b_addrs = crate::harness::ipv4_addresses(&ssh_b)?;
    let resolved =
        ssh_a.check_timeout(&format!("avahi-resolve -4 -n {name_b}.local"), CMD_TIMEOUT)?;
    let addr = resolved
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    ensure(
        !addr.is_empty() && b_addrs.lines().any(|l| l.trim() == addr),
        || format!("avahi-resolve on A: {resolved:?}; B's addresses: {b_addrs}"),
    )?;
    let getent = ssh_a.check_timeout(&format!("getent hosts {name_b}.local"), CMD_TIMEOUT)?;
    ensure(getent.contains(&addr), || {
        format!("getent hosts {name_b}.local on A: {getent:?}")
    })?;

    // B waits in its wizard (only a kernel-command-line key): A finds it
    // as _http._tcp and loads its page by name, as an operator's laptop would.
    let http = ssh_a.check_timeout("avahi-browse -rpt -k _http._tcp", CMD_TIMEOUT)?;
    ensure(
        http.lines()
            .any(|l| l.starts_with('=') && l.contains(name_b)),
        || format!("B's wizard is not announced as _http._tcp:\n{http}"),
    )?;
    let page = ssh_a.check_timeout(&format!("curl -sf http://{name_b}.local/"), CMD_TIMEOUT)?;
    ensure(page.contains("<form"), || {
        format!("B's wizard page, loaded by name from A:\n{page}")
    })?;
    // The operator at B's console (or with SSH) asks for the code again.
    let shown = ssh_b.check("sudo maculaos firstboot --show-code")?;
    // B's console history is that of its first boot, before it was saved.
    let (on_serial, _) =
        banner(&ctx.console_of(1)?).context("no pairing code on B's serial console")?;
    ensure(shown.contains(&format!("{CODE_LINE}{on_serial}")), || {
        format!("`maculaos firstboot --show-code` on B does not show the code {on_serial} of its console:\n{shown}")
    })?;
    let rss = ssh_b.check("ps -o rss=,args= -C maculaos | awk '/firstboot/ {print $1}'")?;
    if let Ok(kib) = rss.trim().parse::<f64>() {
        ctx.record("RSS of maculaos firstboot (MiB)", kib / 1024.0);
    }
    Ok(())
}
