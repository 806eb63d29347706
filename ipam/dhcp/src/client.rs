//! The DHCP client of one lease: a packet socket on the container's interface, opened
//! inside the container's namespace (it stays bound there), and the exchanges:
//! DISCOVER/OFFER/REQUEST/ACK to acquire, REQUEST to renew (unicast to the server) or
//! rebind (broadcast), RELEASE. Each exchange resends as the reference does: every 2 s
//! (±1 s) four times, then from 4 s doubling up to `resend_max`, until `resend_timeout`.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use libcni::net::Netns;

use crate::packet::{self, Message};

/// The daemon's timing flags.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long one request waits for its answer.
    pub timeout: Duration,
    pub resend_max: Duration,
    pub resend_timeout: Duration,
    /// Ask the server to broadcast its answers.
    pub broadcast: bool,
}

const ETH_P_IP: u16 = 0x0800;
const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// A packet socket bound to one interface of a namespace.
pub struct Link {
    fd: OwnedFd,
    pub ifindex: i32,
    pub mac: [u8; 6],
}

fn os_error(what: String) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl Link {
    pub fn open(ns: &Netns, ifname: &str) -> Result<Link, String> {
        ns.run(|| Link::open_here(ifname))
            .map_err(|e| e.to_string())?
    }

    fn open_here(ifname: &str) -> Result<Link, String> {
        let name =
            std::ffi::CString::new(ifname).map_err(|_| format!("bad interface name {ifname:?}"))?;
        // SAFETY: a plain socket call; the fd is owned right after.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                (ETH_P_IP.to_be()) as i32,
            )
        };
        if raw < 0 {
            return Err(os_error(format!("opening a packet socket for {ifname}")));
        }
        // SAFETY: raw is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: if_nametoindex reads the NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(os_error(format!("error looking up {ifname:?}")));
        }
        // SAFETY: ifreq is plain data; SIOCGIFHWADDR fills ifr_hwaddr for the name we set.
        let mac = unsafe {
            let mut req: libc::ifreq = std::mem::zeroed();
            for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
                *d = *s as libc::c_char;
            }
            if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut req) != 0 {
                return Err(os_error(format!("reading the MAC of {ifname}")));
            }
            let mut mac = [0u8; 6];
            for (d, s) in mac.iter_mut().zip(req.ifr_ifru.ifru_hwaddr.sa_data.iter()) {
                *d = *s as u8;
            }
            mac
        };
        let sll = sockaddr_ll(ifindex, BROADCAST_MAC);
        // SAFETY: sll is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(os_error(format!("binding a packet socket to {ifname}")));
        }
        Ok(Link { fd, ifindex, mac })
    }

    fn send(
        &self,
        to_mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        m: &Message,
    ) -> Result<(), String> {
        let p = packet::frame(src, dst, &m.encode());
        let sll = sockaddr_ll(self.ifindex, to_mac);
        // SAFETY: p and sll outlive the call; sizes are theirs.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                p.as_ptr() as *const libc::c_void,
                p.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(os_error(format!("sending DHCP message to {dst}")));
        }
        Ok(())
    }

    /// The first server message until `deadline` that `want` accepts, with the MAC it
    /// came from.
    fn recv(
        &self,
        deadline: Instant,
        want: &dyn Fn(&Message) -> bool,
    ) -> Option<(Message, [u8; 6])> {
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, valid for the call.
            let ready =
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, 60_000) as i32) };
            if ready <= 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain data that recvfrom fills up to len.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and from are valid for the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let Some(m) = packet::unframe(&buf[..n as usize]).and_then(Message::decode) else {
                continue;
            };
            if m.op == 2 && m.chaddr == self.mac && want(&m) {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&from.sll_addr[..6]);
                return Some((m, mac));
            }
        }
    }
}

fn sockaddr_ll(ifindex: i32, mac: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_IP.to_be();
    sll.sll_ifindex = ifindex;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&mac);
    sll
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom fills the 4 bytes given.
    unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 4, 0) };
    u32::from_ne_bytes(b)
}

/// A lease the server acknowledged.
#[derive(Debug, Clone)]
pub struct Bound {
    pub ack: Message,
    pub addr: Ipv4Addr,
    pub server: Ipv4Addr,
    pub server_mac: [u8; 6],
    /// When the ACK came: the lease's times count from here.
    pub at: Instant,
}

/// Retries `attempt` with the reference's schedule until it succeeds, `resend_timeout`
/// passes or `stop` says so.
fn with_resends<T>(
    t: &Timing,
    stop: &dyn Fn() -> bool,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let end = Instant::now() + t.resend_timeout;
    let mut fast_left = 4;
    let mut delay = Duration::from_secs(4);
    loop {
        let e = match attempt() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let jitter = Duration::from_millis((random_u32() % 2000) as u64);
        let wait = if fast_left > 0 {
            fast_left -= 1;
            Duration::from_secs(1) + jitter
        } else {
            let w = delay + jitter - Duration::from_secs(1);
            if delay < t.resend_max {
                delay = (delay * 2).min(t.resend_max.max(Duration::from_secs(4)));
            }
            w
        };
        let resume = Instant::now() + wait;
        if resume >= end {
            return Err(format!("no more tries: {e}"));
        }
        while Instant::now() < resume {
            if stop() {
                return Err(format!("stopped: {e}"));
            }
            std::thread::sleep(Duration::from_millis(100).min(resume - Instant::now()));
        }
    }
}

/// The options every message of this lease carries (client ID, provided, requested).
pub type Options = Vec<(u8, Vec<u8>)>;

fn message(link: &Link, kind: u8, xid: u32, t: &Timing, opts: &Options) -> Message {
    let mut m = Message::client(kind, xid, link.mac, t.broadcast);
    for (c, v) in opts {
        m.set(*c, v.clone());
    }
    m
}

/// DISCOVER, OFFER, REQUEST, ACK.
pub fn acquire(
    link: &Link,
    t: &Timing,
    opts: &Options,
    stop: &dyn Fn() -> bool,
) -> Result<Bound, String> {
    with_resends(t, stop, || {
        let xid = random_u32();
        let discover = message(link, packet::DISCOVER, xid, t, opts);
        link.send(
            BROADCAST_MAC,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            &discover,
        )?;
        let (offer, _) = link
            .recv(Instant::now() + t.timeout, &|m| {
                m.xid == xid && m.kind() == Some(packet::OFFER)
            })
            .ok_or("no DHCPOFFER before the timeout")?;
        let server = offer
            .addr(packet::OPT_SERVER_ID)
            .ok_or("DHCPOFFER without a server identifier")?;
        let mut request = message(link, packet::REQUEST, xid, t, opts);
        request.set(packet::OPT_REQUESTED_IP, offer.yiaddr.octets().to_vec());
        request.set(packet::OPT_SERVER_ID, server.octets().to_vec());
        link.send(
            BROADCAST_MAC,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            &request,
        )?;
        answer(link, t, xid, server)
    })
}

/// Waits for the server's ACK (or NAK) of request `xid`.
fn answer(link: &Link, t: &Timing, xid: u32, server: Ipv4Addr) -> Result<Bound, String> {
    let (reply, mac) = link
        .recv(Instant::now() + t.timeout, &|m| {
            m.xid == xid && matches!(m.kind(), Some(packet::ACK | packet::NAK))
        })
        .ok_or("no DHCPACK before the timeout")?;
    if reply.kind() == Some(packet::NAK) {
        return Err(format!("the server {server} refused the request (DHCPNAK)"));
    }
    Ok(Bound {
        addr: reply.yiaddr,
        server: reply.addr(packet::OPT_SERVER_ID).unwrap_or(server),
        server_mac: mac,
        ack: reply,
        at: Instant::now(),
    })
}

/// REQUEST for the address we hold: to the server that gave it (renewing) or to any
/// server (rebinding).
pub fn renew(
    link: &Link,
    t: &Timing,
    opts: &Options,
    held: &Bound,
    rebinding: bool,
    stop: &dyn Fn() -> bool,
) -> Result<Bound, String> {
    with_resends(t, stop, || {
        let xid = random_u32();
        let mut request = message(link, packet::REQUEST, xid, t, opts);
        request.ciaddr = held.addr;
        if rebinding {
            link.send(BROADCAST_MAC, held.addr, Ipv4Addr::BROADCAST, &request)?;
        } else {
            link.send(held.server_mac, held.addr, held.server, &request)?;
        }
        answer(link, t, xid, held.server)
    })
}

/// RELEASE, sent once: the server does not answer it.
pub fn release(link: &Link, t: &Timing, opts: &Options, held: &Bound) -> Result<(), String> {
    let mut m = message(link, packet::RELEASE, random_u32(), t, opts);
    m.options
        .retain(|(c, _)| *c == packet::OPT_MESSAGE_TYPE || *c == packet::OPT_CLIENT_ID);
    m.ciaddr = held.addr;
    m.set(packet::OPT_SERVER_ID, held.server.octets().to_vec());
    link.send(held.server_mac, held.addr, held.server, &m)
}
