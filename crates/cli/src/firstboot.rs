//! `maculaos firstboot`: the first-boot wizard (plan §5.2), run by
//! maculaos-firstboot.service while /var/lib/maculaos/.configured is
//! absent. It shows a pairing code and a QR code on the consoles, announces
//! itself as `_http._tcp` over mDNS, serves the pairing page on port 80
//! (maculaos-firstboot), and on a valid pairing writes the configuration,
//! sets the flag, applies it and stops.

use anyhow::{Context, Result};
use maculaos_config::Paths;
use maculaos_firstboot::{Pairing, PairingCode};
use maculaos_runner::Cmd;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Print this boot's pairing code, the wizard's address and its QR code
    /// (root only), instead of running the wizard.
    #[arg(long)]
    show_code: bool,
    /// Where the wizard listens.
    #[arg(long, default_value = "0.0.0.0:80")]
    listen: String,
}

/// This boot's code and address, for `--show-code` (root only: 0600).
const STATE: &str = "/run/maculaos/firstboot.json";
/// The wizard's `_http._tcp` announcement, there while it runs (the unit
/// removes it too when stopped).
const HTTP_SERVICE: &str = "/etc/avahi/services/macula-wizard.service";
/// Where the banner goes besides the journal: the serial console and the
/// first virtual terminal (what a monitor shows).
const CONSOLES: &[&str] = &["/dev/ttyS0", "/dev/tty1"];

#[derive(Serialize, Deserialize)]
struct State {
    code: String,
    url: String,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    if args.show_code {
        return show_code();
    }
    let paths = Paths::system();
    let flag = paths.configured_flag();
    if flag.exists() {
        println!(
            "maculaos firstboot: this node is configured ({} exists): no wizard",
            flag.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let hostname = running_hostname();
    let code = PairingCode::generate()?;
    let url = code.url(&format!("{hostname}.local"));
    let listener = std::net::TcpListener::bind(&args.listen).with_context(|| {
        format!(
            "the wizard cannot listen on {}: is another web server running? \
             (`ss -ltnp` shows who holds the port)",
            args.listen
        )
    })?;
    write_atomic(
        Path::new(STATE),
        &serde_json::to_vec(&State {
            code: code.to_string(),
            url: url.clone(),
        })?,
        0o600,
    )?;
    announce(true);
    let banner = banner(&hostname, &code.to_string(), &url)?;
    show_on_consoles(&banner);
    println!(
        "maculaos firstboot: waiting for pairing at http://{hostname}.local/ \
         (the code is on the consoles and in `sudo maculaos firstboot --show-code`)"
    );
    let facts = node_facts(&hostname);
    let wizard = maculaos_firstboot::Wizard::new(code, facts);
    let outcome = maculaos_firstboot::serve(listener, wizard, |p| pair(&paths, p));
    announce(false);
    let _ = fs::remove_file(STATE);
    let where_now = outcome?;
    println!("maculaos firstboot: paired; the node is now {where_now}");
    show_on_consoles(&format!(
        "\nMaculaOS: this node is paired and configured: {where_now}\n"
    ));
    Ok(ExitCode::SUCCESS)
}

fn show_code() -> Result<ExitCode> {
    let text = match fs::read(STATE) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!(
                "no pairing code: the wizard is not running (the node is configured, \
                 or maculaos-firstboot.service is stopped: `systemctl status maculaos-firstboot`)"
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            anyhow::bail!(
                "{STATE} is readable by root only: run `sudo maculaos firstboot --show-code`"
            )
        }
        Err(e) => return Err(e).with_context(|| format!("reading {STATE}")),
    };
    let state: State =
        serde_json::from_slice(&text).with_context(|| format!("{STATE} is garbled"))?;
    print!("{}", banner(&running_hostname(), &state.code, &state.url)?);
    Ok(ExitCode::SUCCESS)
}

/// The text for the consoles: where to go, the code, the QR code (the URL
/// with the code), and a line after it that says what the QR is for.
fn banner(hostname: &str, code: &str, url: &str) -> Result<String> {
    let addresses = addresses();
    let also = if addresses.is_empty() {
        String::new()
    } else {
        format!(
            " (or {})",
            addresses
                .iter()
                .map(|a| format!("http://{a}/"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let qr = maculaos_firstboot::qr::qr_text(url)?;
    Ok(format!(
        "\n==== MaculaOS first boot: pair this node ====\n\
         Open http://{hostname}.local/{also}\n\
         Pairing code: {code}\n\
         {qr}\n\
         Scan the QR code to open the page with the code filled in.\n\n"
    ))
}

/// One write per console, so other console output does not split the QR
/// code. A console that cannot be opened (no serial port) is skipped.
fn show_on_consoles(text: &str) {
    let crlf = text.replace('\n', "\r\n");
    for c in CONSOLES {
        if let Ok(mut f) = fs::OpenOptions::new().write(true).open(c) {
            let _ = f.write_all(crlf.as_bytes());
        }
    }
}

/// The node's IPv4 addresses (not loopback), for people without mDNS.
pub(crate) fn addresses() -> Vec<String> {
    Cmd::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .quiet()
        .output()
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split_whitespace().nth(3))
                .filter_map(|a| a.split('/').next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn node_facts(hostname: &str) -> maculaos_firstboot::NodeFacts {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default().trim().to_string();
    let machine_id = read("/etc/machine-id");
    let info = maculaos_info::collect();
    let hardware = [
        read("/sys/class/dmi/id/sys_vendor"),
        read("/sys/class/dmi/id/product_name"),
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    maculaos_firstboot::NodeFacts {
        id: maculaos_apply::mdns::node_id(&machine_id),
        hostname: hostname.to_string(),
        version: info.version,
        hardware: if hardware.is_empty() {
            "unknown".into()
        } else {
            hardware
        },
        addresses: addresses(),
    }
}

/// Announce the wizard as `_http._tcp` (or withdraw it): avahi-daemon
/// picks the file up by itself.
fn announce(on: bool) {
    if !on {
        let _ = fs::remove_file(HTTP_SERVICE);
        return;
    }
    let text = "<?xml version=\"1.0\" standalone='no'?>\n\
        <!DOCTYPE service-group SYSTEM \"avahi-service.dtd\">\n\
        <!-- The first-boot wizard (maculaos firstboot): removed once the node is paired. -->\n\
        <service-group>\n  <name replace-wildcards=\"yes\">MaculaOS wizard on %h</name>\n  <service>\n    \
        <type>_http._tcp</type>\n    <port>80</port>\n    <txt-record>path=/</txt-record>\n  </service>\n</service-group>\n";
    if let Some(dir) = Path::new(HTTP_SERVICE).parent() {
        if dir.is_dir() {
            let _ = fs::write(HTTP_SERVICE, text);
        }
    }
}

/// A valid pairing: merge its settings into the node's config.yaml, write
/// the bundle's credentials, set the flag, apply. Returns where the node
/// now is.
fn pair(paths: &Paths, p: &Pairing) -> Result<String> {
    let node = paths.node_config();
    let mut value = match fs::read_to_string(&node) {
        Ok(text) => serde_yaml_ng::from_str::<Value>(&text)
            .with_context(|| format!("{} cannot be read as YAML", node.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Mapping(Default::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", node.display())),
    };
    merge(&mut value, p.config_yaml());
    let text = format!(
        "# Written by the first-boot wizard (maculaos firstboot); edit freely.\n{}",
        serde_yaml_ng::to_string(&value)?
    );
    write_atomic(&node, text.as_bytes(), 0o600)?;
    for (path, content, mode) in &p.files {
        write_atomic(path, content.as_bytes(), *mode)?;
    }
    let flag = paths.configured_flag();
    fs::write(&flag, b"").with_context(|| format!("creating {}", flag.display()))?;
    let exe = std::env::current_exe().unwrap_or_else(|_| "/usr/bin/maculaos".into());
    if let Err(e) = Cmd::new(exe).arg("apply").quiet().run() {
        // The configuration is stored and valid: the next boot applies it
        // again; say what failed now.
        println!("maculaos firstboot: applying the new configuration reported errors: {e}");
    }
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    Ok(format!(
        "{}.local (ssh macula@{}.local)",
        hostname.trim(),
        hostname.trim()
    ))
}

/// The kernel's hostname now (apply may just have changed it).
fn running_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Maps merge key by key; anything else in `add` replaces.
fn merge(base: &mut Value, add: Value) {
    match (base, add) {
        (Value::Mapping(b), Value::Mapping(a)) => {
            for (k, v) in a {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, a) => *b = a,
    }
}

/// Write `data` to `path` with `mode`, atomically (made under a temporary
/// name with its mode from the start, then renamed).
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("a file path without a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    // A temporary file left by a crash keeps its old mode through open().
    f.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|_| f.write_all(data))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pairing_settings_merge_into_an_existing_config() {
        let mut base: Value =
            serde_yaml_ng::from_str("maculaos:\n  hostname: old\n  ntp: {servers: [a]}\n").unwrap();
        let add: Value =
            serde_yaml_ng::from_str("maculaos:\n  hostname: new\n  mesh: {realm: io.x}\n").unwrap();
        merge(&mut base, add);
        let text = serde_yaml_ng::to_string(&base).unwrap();
        assert!(
            text.contains("hostname: new") && text.contains("realm: io.x"),
            "{text}"
        );
        assert!(text.contains("servers:"), "{text}");
    }
}
