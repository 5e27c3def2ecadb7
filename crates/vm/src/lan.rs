//! A virtual Ethernet segment for several VMs on this host: a hub in this
//! process on 127.0.0.1. Each VM's LAN NIC is a QEMU UDP socket netdev
//! sending its frames to its own hub port; the hub repeats every frame to
//! every other connected VM and never back to its sender, the way a real
//! hub does (an echo would look to avahi like a second host claiming the
//! node's own name). Nothing leaves 127.0.0.1.
//!
//! A port can be cut off the segment (its frames dropped both ways) and
//! reconnected, to test what a node does when its LAN goes away.

use crate::{Result, VmError};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The largest Ethernet frame QEMU sends (jumbo frames included).
const MAX_FRAME: usize = 65536;
/// How long a port thread blocks in recv before it checks for shutdown.
const RECV_TICK: Duration = Duration::from_millis(200);

struct Port {
    socket: UdpSocket,
    /// Where this port's VM sends from, learned from its last frame (a VM
    /// that restarts comes back from a new port).
    peer: Mutex<Option<SocketAddr>>,
    cut: AtomicBool,
    /// Frames from this port's VM the hub has dealt with (repeated, or
    /// dropped while cut).
    received: AtomicU64,
}

/// The most frames one capture keeps (later ones are counted, not kept).
const MAX_CAPTURED: usize = 200_000;

/// What the hub saw while capturing: every frame it repeated, as it went
/// over the wire (what `tcpdump` on the LAN would show).
#[derive(Default)]
struct Capture {
    on: bool,
    frames: Vec<Vec<u8>>,
    missed: u64,
}

/// A hub: [`Hub::port`] hands each VM its own 127.0.0.1 UDP port.
pub struct Hub {
    ports: Arc<Mutex<Vec<Arc<Port>>>>,
    stop: Arc<AtomicBool>,
    capture: Arc<Mutex<Capture>>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            ports: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            capture: Arc::new(Mutex::new(Capture::default())),
        }
    }

    /// A new port on the segment: the 127.0.0.1 UDP port a VM's
    /// [`crate::Lan::hub_port`] sends to. Numbered from 0 in call order.
    pub fn port(&self) -> Result<(usize, u16)> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(crate::io_err("binding a LAN hub port on", "127.0.0.1"))?;
        let addr = socket
            .local_addr()
            .map_err(crate::io_err("reading the LAN hub port on", "127.0.0.1"))?;
        socket
            .set_read_timeout(Some(RECV_TICK))
            .map_err(crate::io_err(
                "setting a timeout on the LAN hub port",
                "127.0.0.1",
            ))?;
        let port = Arc::new(Port {
            socket,
            peer: Mutex::new(None),
            cut: AtomicBool::new(false),
            received: AtomicU64::new(0),
        });
        let index = {
            let mut ports = self.ports.lock().map_err(|_| poisoned())?;
            ports.push(port.clone());
            ports.len() - 1
        };
        let (all, stop, capture) = (self.ports.clone(), self.stop.clone(), self.capture.clone());
        std::thread::Builder::new()
            .name(format!("lan-hub-{}", addr.port()))
            .spawn(move || repeat(&port, &all, &stop, &capture))
            .map_err(crate::io_err(
                "starting the LAN hub thread for",
                "127.0.0.1",
            ))?;
        Ok((index, addr.port()))
    }

    /// How many frames from the VM on port `index` the hub has dealt with.
    pub fn frames_from(&self, index: usize) -> Result<u64> {
        Ok(self.get(index)?.received.load(Ordering::SeqCst))
    }

    fn get(&self, index: usize) -> Result<Arc<Port>> {
        let ports = self.ports.lock().map_err(|_| poisoned())?;
        ports.get(index).cloned().ok_or_else(|| VmError::Invalid {
            what: "a LAN hub port".to_string(),
            detail: format!("the hub has {} ports, no port {index}", ports.len()),
        })
    }

    /// Start keeping every frame the hub repeats (a capture on the wire).
    pub fn start_capture(&self) -> Result<()> {
        let mut c = self.capture.lock().map_err(|_| poisoned())?;
        *c = Capture {
            on: true,
            ..Capture::default()
        };
        Ok(())
    }

    /// Stop capturing: the frames kept since [`Hub::start_capture`], in
    /// the order the hub repeated them, and how many more it could not keep.
    pub fn take_capture(&self) -> Result<(Vec<Vec<u8>>, u64)> {
        let mut c = self.capture.lock().map_err(|_| poisoned())?;
        let taken = std::mem::take(&mut *c);
        Ok((taken.frames, taken.missed))
    }

    /// Cut port `index` off the segment (`true`) or connect it again.
    pub fn set_cut(&self, index: usize, cut: bool) -> Result<()> {
        self.get(index)?.cut.store(cut, Ordering::SeqCst);
        Ok(())
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn poisoned() -> VmError {
    VmError::Invalid {
        what: "the LAN hub".to_string(),
        detail: "a hub thread panicked".to_string(),
    }
}

/// One port's loop: every frame its VM sends goes out of every other
/// connected port, to that port's VM.
fn repeat(
    me: &Arc<Port>,
    all: &Mutex<Vec<Arc<Port>>>,
    stop: &AtomicBool,
    capture: &Mutex<Capture>,
) {
    let mut buf = vec![0u8; MAX_FRAME];
    while !stop.load(Ordering::SeqCst) {
        let (n, from) = match me.socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue, // the tick: look at `stop` again
        };
        if let Ok(mut peer) = me.peer.lock() {
            *peer = Some(from);
        }
        if !me.cut.load(Ordering::SeqCst) {
            let Ok(ports) = all.lock().map(|p| p.clone()) else {
                return;
            };
            if let Ok(mut c) = capture.lock() {
                if c.on && c.frames.len() < MAX_CAPTURED {
                    c.frames.push(buf[..n].to_vec());
                } else if c.on {
                    c.missed += 1;
                }
            }
            for other in ports.iter().filter(|p| !Arc::ptr_eq(p, me)) {
                if other.cut.load(Ordering::SeqCst) {
                    continue;
                }
                let dest = other.peer.lock().ok().and_then(|p| *p);
                if let Some(dest) = dest {
                    // A VM that is gone just loses the frame, as on a wire.
                    let _ = other.socket.send_to(&buf[..n], dest);
                }
            }
        }
        // Counted once the frame is dealt with (sent on or dropped).
        me.received.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Instant;

    fn vm_socket(hub_port: u16) -> UdpSocket {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        s.connect((Ipv4Addr::LOCALHOST, hub_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// The next frame that is not a hello (those are repeated at times
    /// the test does not control).
    fn recv(s: &UdpSocket) -> Vec<u8> {
        let mut b = [0u8; 64];
        loop {
            let n = s.recv(&mut b).unwrap();
            if &b[..n] != b"hello" {
                return b[..n].to_vec();
            }
        }
    }

    /// Wait (with a deadline) until the hub has taken `count` frames from
    /// port `index`.
    fn taken(hub: &Hub, index: usize, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while hub.frames_from(index).unwrap() < count {
            assert!(
                Instant::now() < deadline,
                "the hub never took frame {count} of port {index}"
            );
            std::thread::yield_now();
        }
    }

    /// Every VM says hello: a hub learns where a VM is from its first
    /// frame, as it does from QEMU's NICs at boot.
    fn hello(hub: &Hub, socks: &[&UdpSocket]) {
        for (i, s) in socks.iter().enumerate() {
            s.send(b"hello").unwrap();
            taken(hub, i, 1);
        }
    }

    #[test]
    fn frames_reach_every_other_port_and_never_echo() {
        let hub = Hub::new();
        let (_, pa) = hub.port().unwrap();
        let (_, pb) = hub.port().unwrap();
        let (_, pc) = hub.port().unwrap();
        let (a, b, c) = (vm_socket(pa), vm_socket(pb), vm_socket(pc));
        hello(&hub, &[&a, &b, &c]);
        a.send(b"frame-from-a").unwrap();
        assert_eq!(recv(&b), b"frame-from-a");
        assert_eq!(recv(&c), b"frame-from-a");
        // A's own frame never comes back to it: the next thing A gets is B's.
        b.send(b"frame-from-b").unwrap();
        assert_eq!(recv(&a), b"frame-from-b");
        assert_eq!(recv(&c), b"frame-from-b");
    }

    #[test]
    fn a_capture_keeps_what_went_over_the_wire_while_it_ran() {
        let hub = Hub::new();
        let (_, pa) = hub.port().unwrap();
        let (ib, pb) = hub.port().unwrap();
        let (a, b) = (vm_socket(pa), vm_socket(pb));
        hello(&hub, &[&a, &b]);
        a.send(b"before").unwrap();
        assert_eq!(recv(&b), b"before");
        hub.start_capture().unwrap();
        a.send(b"during").unwrap();
        assert_eq!(recv(&b), b"during");
        b.send(b"reply").unwrap();
        assert_eq!(recv(&a), b"reply");
        let (frames, missed) = hub.take_capture().unwrap();
        assert_eq!(frames, [b"during".to_vec(), b"reply".to_vec()]);
        assert_eq!(missed, 0);
        // Stopped: nothing more is kept.
        b.send(b"after").unwrap();
        taken(&hub, ib, 3);
        assert!(hub.take_capture().unwrap().0.is_empty());
    }

    #[test]
    fn a_cut_port_neither_sends_nor_receives() {
        let hub = Hub::new();
        let (ia, pa) = hub.port().unwrap();
        let (ib, pb) = hub.port().unwrap();
        let (a, b) = (vm_socket(pa), vm_socket(pb));
        hello(&hub, &[&a, &b]);
        hub.set_cut(ia, true).unwrap();
        a.send(b"lost").unwrap();
        b.send(b"also-lost").unwrap();
        taken(&hub, ia, 2);
        taken(&hub, ib, 2);
        // Back on the segment: the next frames pass, the cut ones never do.
        hub.set_cut(ia, false).unwrap();
        a.send(b"after").unwrap();
        assert_eq!(recv(&b), b"after");
        b.send(b"reply").unwrap();
        assert_eq!(recv(&a), b"reply");
        assert!(hub.set_cut(7, true).is_err());
    }
}
