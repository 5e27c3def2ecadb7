//! The WireGuard overlay (guide "WireGuard (VPN)", issue 18): two nodes
//! turn `maculaos.mesh.wireguard` on, make their keys, take each other as
//! peers and ping each other's overlay address. What crosses the LAN is
//! captured at the hub (the wire): the overlay's ping is only WireGuard
//! UDP there, while the same ping over the plain LAN shows its payload (the
//! capture can see it). A node that drops the other from its peers is no
//! longer reached. `maculaos network status --json` is checked field by
//! field; throughput over the overlay and over the plain LAN is reported.

use crate::harness::{ensure, Ctx, CMD_TIMEOUT};
use crate::pool::Nodes;
use anyhow::{Context, Result};
use maculaos_vm::Ssh;
use serde_json::Value;
use std::time::{Duration, Instant};

const DROPIN: &str = "/var/lib/maculaos/config.d/60-wireguard.yaml";
const PORT: u16 = 51820;
/// ping's payload pattern (`-p`): "macula-w", looked for on the wire.
const PATTERN_HEX: &str = "6d6163756c612d77";
const PATTERN: &[u8] = b"macula-wmacula-w";
/// The file fetched to measure throughput, and the port it is served on.
const BLOB_MIB: u32 = 16;
const WEB_PORT: u16 = 8081;
/// How long a new peering may take to pass a ping, or a removed one to stop.
const PEERING: Duration = Duration::from_secs(90);

/// The overlay on, the web port open, and these peers (`key`, `ip`).
fn dropin(peers: &[(&str, &str)]) -> String {
    let mut s = format!(
        "maculaos:\n  security:\n    firewall:\n      allow: [{WEB_PORT}/tcp]\n  mesh:\n    wireguard:\n      enabled: true\n"
    );
    if !peers.is_empty() {
        s.push_str("      peers:\n");
        for (key, ip) in peers {
            s.push_str(&format!(
                "        - public_key: \"{key}\"\n          endpoint: \"{ip}:{PORT}\"\n"
            ));
        }
    }
    s
}

fn configure(ssh: &Ssh, yaml: &str) -> Result<()> {
    crate::config::put_file(ssh, DROPIN, yaml)?;
    let out = ssh.run_timeout("sudo maculaos apply", CMD_TIMEOUT)?;
    ensure(out.success(), || {
        format!("maculaos apply failed:\n{}{}", out.stdout, out.stderr)
    })
}

pub(crate) fn status(ssh: &Ssh) -> Result<Value> {
    // Exit code 1 is a failed check (no way to the Internet here): the JSON
    // is what is looked at.
    let out = ssh.run_timeout("maculaos network status --json", CMD_TIMEOUT)?;
    serde_json::from_str(&out.stdout)
        .with_context(|| format!("`network status --json`: {}{}", out.stdout, out.stderr))
}

/// The overlay's public key and address in a `network status --json`.
pub(crate) fn key_and_address(s: &Value) -> (String, String) {
    let wg = &s["wireguard"];
    let key = wg["public_key"].as_str().unwrap_or_default().to_string();
    let addr = wg["addresses"][0]
        .as_str()
        .and_then(|a| a.split_once('/'))
        .map(|(a, _)| a.to_string())
        .unwrap_or_default();
    (key, addr)
}

/// The public keys of the overlay's peers in a `network status --json`.
pub(crate) fn peer_keys(s: &Value) -> Vec<String> {
    s["wireguard"]["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["public_key"].as_str().map(str::to_string))
        .collect()
}

/// What a node says of itself: (public key, overlay address), with every
/// field of `network status --json` checked on the way.
fn own(ssh: &Ssh, name: &str) -> Result<(String, String)> {
    let s = status(ssh)?;
    let wg = &s["wireguard"];
    let (key, addr) = key_and_address(&s);
    let interfaces: Vec<&str> = s["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str())
        .collect();
    let open: Vec<&str> = s["firewall"]["openings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["port"].as_str())
        .collect();
    let checks_ok = s["checks"].as_array().is_some_and(|c| {
        c.iter()
            .any(|l| l["what"] == "WireGuard wg-macula" && l["ok"] == true)
    });
    let ok = wg["interface"] == "wg-macula"
        && wg["up"] == true
        && key.len() == 44
        && key.ends_with('=')
        && addr
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|a| a.segments()[0] >> 8 == 0xfd)
        && wg["addresses"][0]
            .as_str()
            .is_some_and(|a| a.ends_with("/64"))
        && wg["listen_port"] == PORT
        && wg["error"].is_null()
        && interfaces.contains(&"wg-macula")
        && !interfaces.contains(&"lo")
        && s["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["destination"] == "default"))
        && s["dns"].as_array().is_some_and(|d| !d.is_empty())
        && s["firewall"]["enabled"] == true
        && s["firewall"]["policy"] == "drop"
        && s["firewall"]["overlay"] == "wg-macula"
        && open.contains(&"51820/udp")
        && open.contains(&"8081/tcp")
        && checks_ok;
    ensure(ok, || {
        format!("{name}'s `network status --json` with the overlay on:\n{s:#}")
    })?;
    Ok((key, addr))
}

/// Whether `from` gets an answer from `addr` (`-6` or `-4`) in time.
pub(crate) fn pings(from: &Ssh, addr: &str) -> Result<bool> {
    let v = if addr.contains(':') { "-6" } else { "-4" };
    Ok(from
        .run_timeout(&format!("ping {v} -c 1 -W 2 {addr}"), CMD_TIMEOUT)?
        .success())
}

/// An IP packet's header as far as the capture looks: (version, protocol
/// or next header, source, destination, UDP ports if UDP).
type Header = (
    u8,
    u8,
    std::net::IpAddr,
    std::net::IpAddr,
    Option<(u16, u16)>,
);

/// The IP packet of an Ethernet frame. IPv6 extension headers are not
/// followed (nothing here sends them).
fn ip_of(frame: &[u8]) -> Option<Header> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let udp = |l4: &[u8]| -> Option<(u16, u16)> {
        Some((
            u16::from_be_bytes([*l4.first()?, *l4.get(1)?]),
            u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]),
        ))
    };
    match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let proto = *ip.get(9)?;
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            let ports = if proto == 17 {
                udp(ip.get(ihl..)?)
            } else {
                None
            };
            Some((4, proto, src.into(), dst.into(), ports))
        }
        0x86dd => {
            let next = *ip.get(6)?;
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            let ports = if next == 17 { udp(ip.get(40..)?) } else { None };
            Some((6, next, src.into(), dst.into(), ports))
        }
        _ => None,
    }
}

/// What a capture showed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    /// Frames with the ping pattern in clear: between the LAN addresses
    /// over IPv4 (the control), and any other.
    clear_on_lan: usize,
    clear_elsewhere: usize,
    /// Frames naming an overlay address as IP source or destination.
    overlay_in_clear: usize,
    /// WireGuard datagrams between the two LAN addresses.
    wireguard: usize,
}

fn look(frames: &[Vec<u8>], lan: [std::net::IpAddr; 2], overlay: [std::net::IpAddr; 2]) -> Seen {
    let mut s = Seen::default();
    for f in frames {
        let ip = ip_of(f);
        if let Some((_, _, src, dst, ports)) = ip {
            if overlay.contains(&src) || overlay.contains(&dst) {
                s.overlay_in_clear += 1;
            }
            let between = lan.contains(&src) && lan.contains(&dst) && src != dst;
            if between && ports.is_some_and(|(a, b)| a == PORT || b == PORT) {
                s.wireguard += 1;
            }
        }
        if f.windows(PATTERN.len()).any(|w| w == PATTERN) {
            match ip {
                Some((4, 1, src, dst, _)) if lan.contains(&src) && lan.contains(&dst) => {
                    s.clear_on_lan += 1
                }
                _ => s.clear_elsewhere += 1,
            }
        }
    }
    s
}

/// Seconds `from` takes to fetch the blob at `url` (curl's own timer).
fn fetch_seconds(from: &Ssh, url: &str) -> Result<f64> {
    let out = from.check_timeout(
        &format!("curl -sf -g -o /dev/null -w '%{{time_total}} %{{size_download}}' {url}"),
        CMD_TIMEOUT,
    )?;
    let mut w = out.split_whitespace();
    let secs: f64 = w
        .next()
        .and_then(|s| s.parse().ok())
        .context("curl's time")?;
    let size: u64 = w
        .next()
        .and_then(|s| s.parse().ok())
        .context("curl's size")?;
    ensure(size == u64::from(BLOB_MIB) << 20, || {
        format!("{url} gave {size} bytes, not {BLOB_MIB} MiB")
    })?;
    Ok(secs)
}

pub fn wireguard(ctx: &mut Ctx) -> Result<()> {
    let mut lan: Nodes = ctx.nodes(2)?;
    let (a, b) = (lan.nodes[0].ssh.clone(), lan.nodes[1].ssh.clone());
    let (name_a, name_b) = (lan.nodes[0].hostname, lan.nodes[1].hostname);

    // On, without peers: each node makes its key (root's only) and says it.
    let t = Instant::now();
    for ssh in [&a, &b] {
        configure(ssh, &dropin(&[]))?;
    }
    ctx.record(
        "wireguard: overlay on, 2 nodes (wall)",
        t.elapsed().as_secs_f64(),
    );
    let (key_a, mesh_a) = own(&a, name_a)?;
    let (key_b, mesh_b) = own(&b, name_b)?;
    ensure(key_a != key_b && mesh_a != mesh_b, || {
        "the two nodes have the same key or overlay address".into()
    })?;
    // How long loading the node's ruleset takes (one `nft -f`, as apply
    // does), timed inside the node.
    let ns = a.check(
        "s=$(date +%s%N); sudo nft -f /etc/maculaos/firewall.nft; e=$(date +%s%N); echo $((e - s))",
    )?;
    if let Ok(ns) = ns.trim().parse::<f64>() {
        ctx.record("firewall: nft -f of the ruleset, in the node (s)", ns / 1e9);
    }
    let mode = a.check("sudo stat -c %a:%U /var/lib/maculaos/wireguard/private.key")?;
    ensure(mode.trim() == "600:root", || {
        format!("the node's private key file is {mode}")
    })?;
    let private = a.check("sudo cat /var/lib/maculaos/wireguard/private.key")?;
    let shown = a.check("maculaos network status; sudo maculaos config show")?;
    ensure(!shown.contains(private.trim()), || {
        "network status or config show prints the private key".into()
    })?;

    // Peers of each other: the overlay's ping passes.
    let lan_a = crate::firewall::resolve(&b, name_a)?;
    let lan_b = crate::firewall::resolve(&a, name_b)?;
    let t = Instant::now();
    configure(&a, &dropin(&[(&key_b, &lan_b)]))?;
    configure(&b, &dropin(&[(&key_a, &lan_a)]))?;
    lan.wait_until(0, "a ping over the overlay to pass", PEERING, |s| {
        pings(s, &mesh_b)
    })?;
    ctx.record(
        "wireguard: peers configured to the first ping over the overlay (wall)",
        t.elapsed().as_secs_f64(),
    );
    let s = status(&a)?;
    let peers = s["wireguard"]["peers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let peer = peers.first().cloned().unwrap_or_default();
    ensure(
        peers.len() == 1
            && peer["public_key"] == key_b.as_str()
            && peer["endpoint"] == format!("{lan_b}:{PORT}").as_str()
            && peer["allowed_ips"] == serde_json::json!([format!("{mesh_b}/128")])
            && peer["latest_handshake"].as_u64().is_some_and(|t| t > 0)
            && peer["rx_bytes"].as_u64().is_some_and(|n| n > 0)
            && peer["tx_bytes"].as_u64().is_some_and(|n| n > 0),
        || format!("{name_a}'s peers after a ping:\n{:#}", s["wireguard"]),
    )?;
    let text = a.check("maculaos network status || true")?;
    ensure(
        text.contains(&format!("peer {key_b} at {lan_b}:{PORT}"))
            && text.contains("last handshake"),
        || format!("`network status`:\n{text}"),
    )?;

    // On the wire: the overlay's ping is WireGuard UDP only; the same ping
    // over the plain LAN shows its payload, so the capture would have seen it.
    lan.hub.start_capture()?;
    a.check(&format!(
        "ping -6 -c 5 -i 0.3 -W 2 -p {PATTERN_HEX} {mesh_b}"
    ))?;
    a.check(&format!(
        "ping -4 -c 3 -i 0.3 -W 2 -p {PATTERN_HEX} {lan_b}"
    ))?;
    let (frames, missed) = lan.hub.take_capture()?;
    let ip = |s: &str| s.parse::<std::net::IpAddr>().context("an address");
    let seen = look(
        &frames,
        [ip(&lan_a)?, ip(&lan_b)?],
        [ip(&mesh_a)?, ip(&mesh_b)?],
    );
    ensure(
        missed == 0
            && seen.clear_on_lan >= 6
            && seen.clear_elsewhere == 0
            && seen.overlay_in_clear == 0
            && seen.wireguard >= 10,
        || {
            format!(
                "on the wire during 5 pings over the overlay and 3 over the LAN ({} frames, {missed} \
                 not kept): {seen:?}; wanted the payload in clear only in the LAN's 6 frames, no \
                 overlay address, 10 or more WireGuard datagrams",
                frames.len()
            )
        },
    )?;

    // Throughput: the same file over the plain LAN and over the overlay.
    b.check(&format!(
        "sudo mkdir -p /var/tmp/www && sudo head -c {BLOB_MIB}M /dev/urandom | sudo tee /var/tmp/www/blob >/dev/null && \
         sudo systemd-run --quiet --unit=wg-web busybox httpd -f -p {WEB_PORT} -h /var/tmp/www && \
         for i in $(seq 50); do curl -sf -m 2 -o /dev/null http://127.0.0.1:{WEB_PORT}/blob && exit 0; sleep 0.2; done; exit 1"
    ))?;
    let plain = fetch_seconds(&a, &format!("http://{lan_b}:{WEB_PORT}/blob"))?;
    let over = fetch_seconds(&a, &format!("http://[{mesh_b}]:{WEB_PORT}/blob"))?;
    ctx.record(
        format!("wireguard: {BLOB_MIB} MiB over the plain LAN (s)"),
        plain,
    );
    ctx.record(
        format!("wireguard: {BLOB_MIB} MiB over wg-macula (s)"),
        over,
    );

    // B drops A from its peers: A no longer reaches B over the overlay.
    configure(&b, &dropin(&[]))?;
    let s = status(&b)?;
    ensure(
        s["wireguard"]["peers"]
            .as_array()
            .is_some_and(Vec::is_empty),
        || format!("{name_b} still has peers:\n{:#}", s["wireguard"]),
    )?;
    lan.wait_until(0, "the removed peer to be unreachable", PEERING, |s| {
        Ok(!pings(s, &mesh_b)?)
    })?;
    ensure(pings(&a, &lan_b)?, || {
        "the plain LAN stopped working too".into()
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertype: u16, ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend(ethertype.to_be_bytes());
        f.extend(ip);
        f
    }

    fn v4(proto: u8, src: [u8; 4], dst: [u8; 4], rest: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        p.extend(src);
        p.extend(dst);
        p.extend(rest);
        frame(0x0800, &p)
    }

    #[test]
    fn frames_are_sorted_into_what_was_seen() {
        let (a, b) = ([10, 0, 3, 1], [10, 0, 3, 2]);
        let lan = [a.into(), b.into()];
        let ov: [std::net::IpAddr; 2] = ["fd00::1".parse().unwrap(), "fd00::2".parse().unwrap()];
        let mut payload = vec![0u8; 8];
        payload.extend(PATTERN);
        let wg = v4(17, a, b, &[0xca, 0x6c, 0xca, 0x6c, 0, 8, 0, 0, 0xde, 0xad]);
        let clear = v4(1, a, b, &payload);
        let mut six = vec![0x60, 0, 0, 0, 0, 8, 58, 64];
        six.extend(
            ov[0]
                .to_string()
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        six.extend(
            ov[1]
                .to_string()
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        six.extend(&payload);
        let leaked = frame(0x86dd, &six);
        let s = look(&[wg.clone(), wg, clear, leaked, vec![1, 2, 3]], lan, ov);
        assert_eq!(
            s,
            Seen {
                clear_on_lan: 1,
                clear_elsewhere: 1,
                overlay_in_clear: 1,
                wireguard: 2,
            }
        );
    }
}
