//! One DHCP lease kept by the daemon: a thread of its own acquires it on the container's
//! interface (inside the container's namespace), renews it at T1 (unicast to its server),
//! rebinds at T2 (broadcast), brings the interface down when it expires unrenewed, stops
//! when the interface is gone, and releases it when stopped. The result handed to the
//! plugin is read from the latest ACK.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnetwork::{IpNetwork, Ipv4Network};
use libcni::net::{Kernel, Netns};
use libcni::spec::{IpConfig, Route};
use libcni::CniResult;

use crate::client::{self, Bound, Link, Options, Timing};
use crate::packet::{self, Message};

/// The lease time when the server gives none, as the reference's.
const DEFAULT_LEASE: Duration = Duration::from_secs(3600);
/// RT_SCOPE_LINK: a classless route without a router is on the link.
const SCOPE_LINK: u32 = 253;

#[derive(Default)]
struct Signals {
    stop: bool,
    check: bool,
}

pub struct Lease {
    latest: Mutex<Bound>,
    signals: Mutex<Signals>,
    wake: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the lease thread needs.
pub struct Params {
    pub client_id: String,
    pub netns: String,
    pub ifname: String,
    pub options: Options,
    pub timing: Timing,
}

impl Lease {
    /// Acquires a lease and keeps it in the background; returns once the server has
    /// acknowledged it (or the exchange failed).
    pub fn acquire(p: Params) -> Result<Arc<Lease>, String> {
        let (tx, rx) = mpsc::channel::<Result<Arc<Lease>, String>>();
        let name = format!("lease {}", p.client_id);
        let handle = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || run(p, tx))
            .map_err(|e| format!("starting the lease thread: {e}"))?;
        match rx.recv() {
            Ok(Ok(lease)) => {
                *lease.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
                Ok(lease)
            }
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => Err("the lease thread ended without an answer".into()),
        }
    }

    /// Whether the lease is still kept (its thread ends when the lease expired unrenewed
    /// or the interface went away).
    pub fn alive(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }

    /// Wakes the maintenance loop (the reference's Check on a repeated ADD or CHECK).
    pub fn check(&self) {
        self.signal(|s| s.check = true);
    }

    /// Stops maintenance and releases the lease at the server; waits for it.
    pub fn stop(&self) {
        self.signal(|s| s.stop = true);
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    fn signal(&self, f: impl FnOnce(&mut Signals)) {
        f(&mut self.signals.lock().unwrap_or_else(|e| e.into_inner()));
        self.wake.notify_all();
    }

    fn stopping(&self) -> bool {
        self.signals.lock().unwrap_or_else(|e| e.into_inner()).stop
    }

    /// Waits until `until`, a check or a stop; true when stopped.
    fn sleep(&self, until: Instant) -> bool {
        let mut s = self.signals.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if s.stop {
                return true;
            }
            if std::mem::take(&mut s.check) {
                return false;
            }
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return false;
            };
            s = self
                .wake
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn latest(&self) -> Bound {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The plugin's result from the latest ACK; route metrics from `priority`.
    pub fn result(&self, priority: i64) -> Result<CniResult, String> {
        result_of(&self.latest().ack, priority)
    }
}

/// The lease's times from an ACK: renewal (T1), rebinding (T2), expiry.
fn times(b: &Bound) -> (Instant, Instant, Instant) {
    let secs = |code| b.ack.seconds(code).map(|s| Duration::from_secs(s as u64));
    let (t1, t2, lease) = renewal_times(
        secs(packet::OPT_LEASE_TIME),
        secs(packet::OPT_RENEWAL_TIME),
        secs(packet::OPT_REBINDING_TIME),
    );
    (b.at + t1, b.at + t2, b.at + lease)
}

/// The shortest time between two renewals, whatever the server says (a lease time or T1
/// of 0 would have the daemon renew in a loop).
const MIN_RENEWAL: Duration = Duration::from_secs(1);

/// T1, T2 and the lease time from the server's options: T1 ≤ T2 ≤ lease time as the
/// reference clamps them (defaults half and 85% of the lease), T1 at least
/// [`MIN_RENEWAL`].
fn renewal_times(
    lease: Option<Duration>,
    t1: Option<Duration>,
    t2: Option<Duration>,
) -> (Duration, Duration, Duration) {
    let lease = lease.unwrap_or(DEFAULT_LEASE);
    let t2 = t2.unwrap_or(lease * 85 / 100).min(lease);
    let t1 = t1.unwrap_or(lease / 2).min(t2).max(MIN_RENEWAL);
    (t1, t2.max(t1), lease)
}

fn run(p: Params, tx: mpsc::Sender<Result<Arc<Lease>, String>>) {
    let ns = match Netns::open(&p.netns) {
        Ok(ns) => ns,
        Err(e) => {
            let _ = tx.send(Err(format!("opening netns {}: {e:?}", p.netns)));
            return;
        }
    };
    let stop_never = || false;
    let started = wait_for_link(&ns, &p.ifname, p.timing.timeout)
        .and_then(|_| Link::open(&ns, &p.ifname))
        .and_then(|link| {
            client::acquire(&link, &p.timing, &p.options, &stop_never).map(|b| (link, b))
        });
    let (link, bound) = match started {
        Ok(v) => v,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    if let Err(e) = result_of(&bound.ack, 0) {
        // The server bound the address: give it back rather than leave it to expire.
        if let Err(r) = client::release(&link, &p.timing, &p.options, &bound) {
            eprintln!("{}: failed to release DHCP lease: {r}", p.client_id);
        }
        let _ = tx.send(Err(e));
        return;
    }
    eprintln!("{}: lease acquired: {}", p.client_id, bound.addr);
    let lease = Arc::new(Lease {
        latest: Mutex::new(bound),
        signals: Mutex::new(Signals::default()),
        wake: Condvar::new(),
        thread: Mutex::new(None),
    });
    if tx.send(Ok(lease.clone())).is_err() {
        return;
    }
    maintain(&lease, &ns, &link, &p);
}

/// Renews at T1 and rebinds at T2 until stopped, expired or the interface is gone.
fn maintain(lease: &Lease, ns: &Netns, link: &Link, p: &Params) {
    let id = &p.client_id;
    let stopping = || lease.stopping();
    loop {
        if !link_exists(ns, link.ifindex) {
            eprintln!(
                "{id}: interface {} no longer exists, ending lease maintenance",
                p.ifname
            );
            return;
        }
        let held = lease.latest();
        let (t1, t2, expiry) = times(&held);
        let now = Instant::now();
        if now >= t1 {
            let rebinding = now >= t2;
            match client::renew(link, &p.timing, &p.options, &held, rebinding, &stopping) {
                Ok(b) => {
                    eprintln!("{id}: lease renewed: {}", b.addr);
                    *lease.latest.lock().unwrap_or_else(|e| e.into_inner()) = b;
                    continue;
                }
                Err(e) => {
                    eprintln!("{id}: renewing: {e}");
                    if Instant::now() >= expiry {
                        eprintln!("{id}: lease expired, bringing {} down", p.ifname);
                        if let Err(e) = set_down(ns, &p.ifname) {
                            eprintln!("{id}: {e}");
                        }
                        return;
                    }
                }
            }
        }
        let next = if Instant::now() < t1 {
            t1
        } else {
            Instant::now() + Duration::from_secs(1)
        };
        if lease.sleep(next) {
            break;
        }
    }
    eprintln!("{id}: releasing lease");
    if let Err(e) = client::release(link, &p.timing, &p.options, &lease.latest()) {
        eprintln!("{id}: failed to release DHCP lease: {e}");
    }
}

fn link_exists(ns: &Netns, ifindex: i32) -> bool {
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into the buffer.
    ns.run(|| unsafe {
        let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
        !libc::if_indextoname(ifindex as u32, buf.as_mut_ptr()).is_null()
    })
    .unwrap_or(false)
}

/// The plugin that calls us may still be creating the interface (ours start IPAM and the
/// link together): wait for it, bounded, then bring it up.
fn wait_for_link(ns: &Netns, ifname: &str, wait: Duration) -> Result<(), String> {
    let end = Instant::now() + wait;
    loop {
        match set_up(ns, ifname) {
            Err(e) if Instant::now() < end && e.contains("no such interface") => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other,
        }
    }
}

/// Brings the interface up if it is down, as the reference does before a DHCP exchange.
fn set_up(ns: &Netns, ifname: &str) -> Result<(), String> {
    let k = Kernel::new().map_err(|e| e.to_string())?;
    let nl = k.connect_in(ns).map_err(|e| e.to_string())?;
    let link = k
        .run(nl.link(ifname))
        .map_err(|e| format!("error looking up {ifname:?}: {e}"))?
        .ok_or_else(|| format!("error looking up {ifname:?}: no such interface"))?;
    if !link.up {
        k.run(nl.set_up(link.index, ifname))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn set_down(ns: &Netns, ifname: &str) -> Result<(), String> {
    let k = Kernel::new().map_err(|e| e.to_string())?;
    let nl = k.connect_in(ns).map_err(|e| e.to_string())?;
    if let Some(link) = k.run(nl.link(ifname)).map_err(|e| e.to_string())? {
        k.run(nl.set_down(link.index, ifname))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The address, gateway and routes an ACK gives, as the reference reads them.
pub fn result_of(ack: &Message, priority: i64) -> Result<CniResult, String> {
    let mask = ack
        .addr(packet::OPT_SUBNET_MASK)
        .ok_or("DHCP option Subnet Mask not found in DHCPACK")?;
    let prefix = ipnetwork::ipv4_mask_to_prefix(mask)
        .map_err(|e| format!("DHCP subnet mask {mask}: {e}"))?;
    let address = Ipv4Network::new(ack.yiaddr, prefix).map_err(|e| e.to_string())?;
    let gateway = ack.addr(packet::OPT_ROUTER).map(IpAddr::V4);
    let mut routes = Vec::new();
    let classless = ack
        .get(packet::OPT_CLASSLESS_ROUTES)
        .map(classless_routes)
        .unwrap_or_default();
    if !classless.is_empty() {
        // RFC 3442: these replace the static routes and the router.
        routes = classless;
    } else {
        for pair in ack
            .get(packet::OPT_STATIC_ROUTES)
            .unwrap_or(&[])
            .chunks_exact(8)
        {
            let dst = Ipv4Addr::new(pair[0], pair[1], pair[2], pair[3]);
            let gw = Ipv4Addr::new(pair[4], pair[5], pair[6], pair[7]);
            let prefix = match pair[0] {
                0..=127 => 8,
                128..=191 => 16,
                192..=223 => 24,
                _ => 32,
            };
            if let Ok(n) = Ipv4Network::new(dst, prefix) {
                routes.push(Route::new(IpNetwork::V4(n), Some(IpAddr::V4(gw))));
            }
        }
        if let Some(gw) = gateway {
            routes.push(Route::new(
                "0.0.0.0/0".parse().expect("a literal network"),
                Some(gw),
            ));
        }
    }
    if priority > 0 {
        for r in &mut routes {
            r.priority = u32::try_from(priority).ok();
        }
    }
    Ok(CniResult {
        ips: vec![IpConfig {
            version: None,
            address: IpNetwork::V4(address),
            gateway,
            interface: None,
        }],
        routes,
        ..Default::default()
    })
}

/// Option 121: (prefix length, the significant octets of the destination, router)*.
fn classless_routes(mut b: &[u8]) -> Vec<Route> {
    let mut out = Vec::new();
    while let Some((&width, rest)) = b.split_first() {
        if width > 32 {
            break;
        }
        let n = (width as usize).div_ceil(8);
        if rest.len() < n + 4 {
            break;
        }
        let mut dst = [0u8; 4];
        dst[..n].copy_from_slice(&rest[..n]);
        let gw = Ipv4Addr::new(rest[n], rest[n + 1], rest[n + 2], rest[n + 3]);
        if let Ok(net) = Ipv4Network::new(Ipv4Addr::from(dst), width) {
            let mut r = Route::new(IpNetwork::V4(net), Some(IpAddr::V4(gw)));
            if gw.is_unspecified() {
                r.scope = Some(SCOPE_LINK);
            }
            out.push(r);
        }
        b = &rest[n + 4..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// T1 ≤ T2 ≤ lease time, and never a renewal loop on a lease time or T1 of 0.
    #[test]
    fn renewal_times_are_ordered_and_never_zero() {
        let s = Duration::from_secs;
        assert_eq!(
            renewal_times(Some(s(100)), None, None),
            (s(50), s(85), s(100))
        );
        assert_eq!(
            renewal_times(Some(s(100)), Some(s(300)), Some(s(200))),
            (s(100), s(100), s(100))
        );
        assert_eq!(
            renewal_times(Some(s(100)), Some(s(90)), Some(s(60))),
            (s(60), s(60), s(100))
        );
        assert_eq!(renewal_times(Some(s(0)), None, None), (s(1), s(1), s(0)));
        assert_eq!(renewal_times(Some(s(10)), Some(s(0)), None).0, s(1));
    }

    fn ack(opts: &[(u8, &[u8])]) -> Message {
        let mut m = Message::client(packet::ACK, 1, [0; 6], false);
        m.yiaddr = Ipv4Addr::new(10, 140, 1, 50);
        for (c, v) in opts {
            m.set(*c, v.to_vec());
        }
        m
    }

    #[test]
    fn an_ack_becomes_a_result() {
        let r = result_of(&ack(&[(1, &[255, 255, 255, 0]), (3, &[10, 140, 1, 1])]), 0).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.140.1.50/24");
        assert_eq!(r.ips[0].gateway, Some("10.140.1.1".parse().unwrap()));
        assert_eq!(
            r.routes,
            vec![Route::new(
                "0.0.0.0/0".parse().unwrap(),
                Some("10.140.1.1".parse().unwrap())
            )]
        );
        assert!(result_of(&ack(&[]), 0).is_err());
    }

    #[test]
    fn classless_routes_replace_the_router() {
        let r = result_of(
            &ack(&[
                (1, &[255, 255, 255, 0]),
                (3, &[10, 140, 1, 1]),
                (
                    121,
                    &[16, 10, 141, 10, 140, 1, 2, 24, 10, 142, 7, 0, 0, 0, 0],
                ),
            ]),
            7,
        )
        .unwrap();
        assert_eq!(r.routes.len(), 2);
        assert_eq!(r.routes[0].dst.to_string(), "10.141.0.0/16");
        assert_eq!(r.routes[1].scope, Some(SCOPE_LINK));
        assert!(r.routes.iter().all(|r| r.priority == Some(7)));
    }
}
