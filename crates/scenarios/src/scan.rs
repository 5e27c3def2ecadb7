//! A port scanner for the firewall scenario, run on one node of the
//! virtual LAN against another (`maculaos-sdk scan`, copied into the
//! guest: the host cannot reach the LAN). TCP: a connection to every port
//! in the range, many at a time, each given `timeout` (a port the firewall
//! drops never answers; a closed one answers with a reset at once). UDP: a
//! datagram to each port of a sample; an answer or an ICMP "port
//! unreachable" means the packet got through.

use anyhow::{Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args)]
pub struct ScanArgs {
    /// The address to scan.
    addr: IpAddr,
    /// TCP ports, `LOW-HIGH`.
    #[arg(long, default_value = "1-65535")]
    tcp: String,
    /// UDP ports to try, comma-separated.
    #[arg(long, value_delimiter = ',')]
    udp: Vec<u16>,
    /// How long each probe waits, in milliseconds.
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
    /// Probes in flight at once.
    #[arg(long, default_value_t = 2048)]
    parallel: usize,
}

/// `LOW-HIGH` → the ports.
fn range(s: &str) -> Result<std::ops::RangeInclusive<u16>> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    Ok(lo.parse().context("--tcp LOW-HIGH")?..=hi.parse().context("--tcp LOW-HIGH")?)
}

/// Prints `{"tcp_open": [...], "udp_reached": [...]}`.
pub fn scan(args: &ScanArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let ports = range(&args.tcp)?;
    let (open, reached) = rt.block_on(async {
        let gate = Arc::new(tokio::sync::Semaphore::new(args.parallel.max(1)));
        let mut tasks = Vec::new();
        for port in ports {
            let permit = gate.clone().acquire_owned().await?;
            let addr = SocketAddr::new(args.addr, port);
            tasks.push(tokio::spawn(async move {
                let ok = matches!(
                    tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
                    Ok(Ok(_))
                );
                drop(permit);
                ok.then_some(port)
            }));
        }
        let mut open = Vec::new();
        for t in tasks {
            if let Some(p) = t.await? {
                open.push(p);
            }
        }
        let mut reached = Vec::new();
        for &port in &args.udp {
            let bind: SocketAddr = if args.addr.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let sock = tokio::net::UdpSocket::bind(bind).await?;
            sock.connect(SocketAddr::new(args.addr, port)).await?;
            sock.send(b"maculaos-scan\n").await?;
            let mut buf = [0u8; 512];
            // Data back, or a refusal (the ICMP unreachable): it got through.
            if let Ok(r) = tokio::time::timeout(timeout * 2, sock.recv(&mut buf)).await {
                let through = match r {
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
                };
                if through {
                    reached.push(port);
                }
            }
        }
        anyhow::Ok((open, reached))
    })?;
    println!(
        "{}",
        serde_json::json!({ "tcp_open": open, "udp_reached": reached })
    );
    Ok(())
}
