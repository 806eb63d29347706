//! The benchmark's floor, not a plugin: the least a bridge+host-local ADD or DEL must do,
//! measured beside ours and the reference by scripts/bench.sh so the targets can be put
//! as "within 1.5x of the floor on the machine at hand". Used only there.
//!
//! Driven like a CNI plugin (CNI_COMMAND ADD or DEL, CNI_CONTAINERID, CNI_NETNS,
//! CNI_IFNAME; the network config on stdin is read and not parsed), with its few fixed
//! parameters in the environment: FLOOR_BRIDGE (the bridge's name), FLOOR_SUBNET (an IPv4
//! /8 to /30, e.g. 10.50.0.0/16; the gateway is its first address) and FLOOR_DIR (the
//! reservation store, host-local's file format).
//!
//! ADD is two static process starts, as a plugin and its IPAM delegate are: process 1
//! re-executes itself (`/proc/self/exe ipam add`) first, and the reservation runs in that
//! process while process 1, on one route netlink socket, looks the bridge up (the first
//! ADD makes it, up, with the gateway address, and turns IPv4 forwarding on) and makes
//! the veth pair in one message: the host end up on the bridge, the peer named
//! CNI_IFNAME straight in the container's namespace. Then it reads the address the
//! reservation printed, enters the container's namespace and, on a socket there, looks
//! the interface up by name and sends "up", the address and the default route in one
//! write.
//! Process 2 takes `<dir>/lock` with flock, creates the next free `<dir>/<ip>` with
//! O_EXCL holding `<id>\r\n<ifname>`, links `<dir>/by-id/<id>.<ifname>` to it (a second
//! ADD of the same attachment is refused here), writes `<dir>/last_reserved_ip.0`,
//! prints the address and exits.
//!
//! DEL: process 2 (`ipam del`) follows the by-id link and removes both names under the
//! lock, while process 1 enters the container's namespace and forks a child without
//! stdio that deletes CNI_IFNAME with one RTM_DELLINK (the kernel removes the peer with
//! it); then it waits for process 2 alone. The kernel's unregistering of a veth pair
//! takes 15-25 ms in the caller's RTM_DELLINK whatever else is done; no DEL needs to wait
//! for it (ours does not), so the floor leaves it to the child as well.
//!
//! What it leaves out, a real plugin cannot: parsing and checking the config, checking
//! what it finds (the bridge's kind, the addresses on it), the MAC of the host end,
//! IPv6, cleaning up after a failure, a cache. Every error is a message on stderr and
//! exit status 1.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};

type Result<T> = std::result::Result<T, String>;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const NLA_F_NESTED: u16 = 0x8000;
const IFF_UP: u32 = 0x1;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const AF_INET: u8 = libc::AF_INET as u8;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let done = match args.first().map(String::as_str) {
        Some("ipam") => ipam(args.get(1).map(String::as_str)),
        _ => plugin(),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cni-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn var(name: &str) -> Result<String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

/// A name that becomes one path component: no separators, not `.` or `..`.
fn component(name: &str, what: &str) -> Result<String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!("{what} {name:?} cannot name a file"));
    }
    Ok(name.to_string())
}

/// FLOOR_SUBNET: (network address, prefix length).
fn subnet() -> Result<(u32, u8)> {
    let s = var("FLOOR_SUBNET")?;
    let bad = || format!("FLOOR_SUBNET {s:?} is not an IPv4 /8 to /30");
    let (net, len) = s.split_once('/').ok_or_else(bad)?;
    let net: Ipv4Addr = net.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&len) {
        return Err(bad());
    }
    let mask = u32::MAX << (32 - len);
    Ok((u32::from(net) & mask, len))
}

fn errno(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

// ---------------------------------------------------------------------------------------
// Process 2: the reservation.

fn ipam(op: Option<&str>) -> Result<()> {
    let dir = PathBuf::from(var("FLOOR_DIR")?);
    let id = component(&var("CNI_CONTAINERID")?, "CNI_CONTAINERID")?;
    let ifname = component(&var("CNI_IFNAME")?, "CNI_IFNAME")?;
    let by_id = dir.join("by-id").join(format!("{id}.{ifname}"));
    match op {
        Some("add") => {
            let _lock = lock(&dir, true)?.ok_or("no store")?;
            let ip = reserve(&dir, &by_id, &id, &ifname)?;
            drop(_lock);
            let mut out = io::stdout().lock();
            writeln!(out, "{ip}").map_err(|e| format!("writing the address: {e}"))
        }
        Some("del") => {
            let Some(_lock) = lock(&dir, false)? else {
                return Ok(()); // no store, nothing reserved
            };
            release(&dir, &by_id)
        }
        _ => Err("usage: cni-floor ipam add|del".into()),
    }
}

/// `<dir>/lock`, held with flock until dropped; None when DEL finds no store.
fn lock(dir: &Path, create: bool) -> Result<Option<File>> {
    let path = dir.join("lock");
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
    };
    let f = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir.join("by-id"))
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            open().map_err(|e| format!("opening {}: {e}", path.display()))?
        }
        Err(e) => return Err(format!("opening {}: {e}", path.display())),
    };
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(errno("flock"));
    }
    Ok(Some(f))
}

fn reserve(dir: &Path, by_id: &Path, id: &str, ifname: &str) -> Result<Ipv4Addr> {
    let (net, len) = subnet()?;
    let size = 1u32 << (32 - len);
    // .1 is the gateway, the last the broadcast address: hosts are net+2 ..= net+size-2
    let (first, count) = (net + 2, size - 3);
    let last_file = dir.join("last_reserved_ip.0");
    let start = match fs::read_to_string(&last_file) {
        Ok(s) => match s.trim().parse::<Ipv4Addr>() {
            Ok(a) if u32::from(a).wrapping_sub(first) < count => (u32::from(a) - first + 1) % count,
            _ => 0,
        },
        Err(_) => 0,
    };
    for k in 0..count {
        let ip = Ipv4Addr::from(first + (start + k) % count);
        let path = dir.join(ip.to_string());
        let mut f = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("creating {}: {e}", path.display())),
        };
        f.write_all(format!("{id}\r\n{ifname}").as_bytes())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        drop(f);
        if let Err(e) = symlink(ip.to_string(), by_id) {
            let _ = fs::remove_file(&path);
            return Err(if e.kind() == io::ErrorKind::AlreadyExists {
                format!("{id} {ifname} already has an address")
            } else {
                format!("linking {}: {e}", by_id.display())
            });
        }
        fs::write(&last_file, ip.to_string())
            .map_err(|e| format!("writing {}: {e}", last_file.display()))?;
        return Ok(ip);
    }
    Err("no address left in FLOOR_SUBNET".into())
}

fn release(dir: &Path, by_id: &Path) -> Result<()> {
    let ip = match fs::read_link(by_id) {
        Ok(ip) => ip,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("reading {}: {e}", by_id.display())),
    };
    let ip = component(&ip.to_string_lossy(), "a reservation")?;
    for path in [dir.join(ip), by_id.to_path_buf()] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing {}: {e}", path.display())),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Process 1: the plugin.

fn plugin() -> Result<()> {
    let command = var("CNI_COMMAND")?;
    let ifname = var("CNI_IFNAME")?;
    if ifname.is_empty() || ifname.len() > 15 {
        return Err(format!("CNI_IFNAME {ifname:?} is not an interface name"));
    }
    // The runtime writes the network config; the floor takes its parameters from the
    // environment and only drains it.
    let mut conf = Vec::new();
    io::stdin()
        .read_to_end(&mut conf)
        .map_err(|e| format!("reading stdin: {e}"))?;
    match command.as_str() {
        "ADD" => add(&ifname),
        "DEL" => del(&ifname),
        "VERSION" => {
            println!(r#"{{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}}"#);
            Ok(())
        }
        other => Err(format!("CNI_COMMAND {other:?} is not ADD, DEL or VERSION")),
    }
}

/// Process 2, started before anything else so the reservation runs beside the links.
fn spawn_ipam(op: &str, stdout: Stdio) -> Result<Child> {
    Command::new("/proc/self/exe")
        .args(["ipam", op])
        .stdin(Stdio::null())
        .stdout(stdout)
        .spawn()
        .map_err(|e| format!("starting the reservation: {e}"))
}

fn wait_ipam(mut child: Child) -> Result<String> {
    let mut out = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_string(&mut out)
            .map_err(|e| format!("reading the reservation: {e}"))?;
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the reservation: {e}"))?;
    if !status.success() {
        return Err(format!("the reservation failed ({status})"));
    }
    Ok(out)
}

fn open_netns(path: &str) -> Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| format!("CNI_NETNS {path:?}"))?;
    // SAFETY: a NUL-terminated path; the descriptor is owned right away.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno(&format!("opening {path}")));
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Moves this thread (process 1 has no other) into the namespace of `fd`.
fn enter(fd: RawFd) -> Result<()> {
    // SAFETY: setns on a namespace descriptor; only this thread changes namespace.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(errno("entering CNI_NETNS"));
    }
    Ok(())
}

/// A stable host-side name per attachment: veth + 8 hex digits of FNV-1a(id, ifname).
fn host_veth(id: &str, ifname: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes().chain([0]).chain(ifname.bytes()) {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    format!("veth{h:08x}")
}

fn add(ifname: &str) -> Result<()> {
    let child = spawn_ipam("add", Stdio::piped())?;
    let id = var("CNI_CONTAINERID")?;
    let netns_path = var("CNI_NETNS")?;
    let bridge = var("FLOOR_BRIDGE")?;
    let (net, len) = subnet()?;
    let gateway = Ipv4Addr::from(net + 1);
    let netns = open_netns(&netns_path)?;
    let host = Netlink::open()?;

    let (br_index, br_mac) = match host.link(&bridge)? {
        Some(link) => link,
        None => make_bridge(&host, &bridge, gateway, len)?,
    };
    let veth = host_veth(&id, ifname);
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK);
    m.ifinfo(0, IFF_UP);
    m.attr(IFLA_IFNAME, &cstr(&veth));
    m.attr(IFLA_MASTER, &br_index.to_ne_bytes());
    let info = m.begin(IFLA_LINKINFO);
    m.attr(IFLA_INFO_KIND, b"veth");
    let data = m.begin(IFLA_INFO_DATA);
    let peer = m.begin(VETH_INFO_PEER);
    m.ifinfo(0, 0); // up only once the pair is whole (veth_open: -ENOTCONN before)
    m.attr(IFLA_IFNAME, &cstr(ifname));
    m.attr(IFLA_NET_NS_FD, &netns.as_raw_fd().to_ne_bytes());
    m.end(peer);
    m.end(data);
    m.end(info);
    host.ack(&mut [m], "creating the veth pair")?;

    let reserved = wait_ipam(child)?;
    let ip: Ipv4Addr = reserved
        .trim()
        .parse()
        .map_err(|_| format!("the reservation printed {reserved:?}"))?;

    enter(netns.as_raw_fd())?;
    let cont = Netlink::open()?;
    let (index, mac) = cont
        .link(ifname)?
        .ok_or_else(|| format!("{ifname} is not in {netns_path}"))?;
    let broadcast = Ipv4Addr::from(net | !(u32::MAX << (32 - len)));
    let mut up = Msg::new(RTM_NEWLINK, NLM_F_ACK);
    up.ifinfo(index as i32, IFF_UP);
    let addr = address_msg(index, ip, len, Some(broadcast));
    let mut route = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK);
    route.rtmsg();
    route.attr(RTA_GATEWAY, &gateway.octets());
    route.attr(RTA_OIF, &index.to_ne_bytes());
    cont.ack(
        &mut [up, addr, route],
        "configuring the container's interface",
    )?;

    let sandbox = netns_path.replace('\\', "\\\\").replace('"', "\\\"");
    println!(
        concat!(
            r#"{{"cniVersion":"1.0.0","interfaces":[{{"name":"{}","mac":"{}"}},{{"name":"{}"}},"#,
            r#"{{"name":"{}","mac":"{}","sandbox":"{}"}}],"ips":[{{"interface":2,"#,
            r#""address":"{}/{}","gateway":"{}"}}],"routes":[{{"dst":"0.0.0.0/0","gw":"{}"}}],"#,
            r#""dns":{{}}}}"#
        ),
        bridge, br_mac, veth, ifname, mac, sandbox, ip, len, gateway, gateway
    );
    Ok(())
}

/// The first ADD: the bridge, up, with the gateway address; IPv4 forwarding on.
fn make_bridge(nl: &Netlink, name: &str, gateway: Ipv4Addr, len: u8) -> Result<(u32, String)> {
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK);
    m.ifinfo(0, IFF_UP);
    m.attr(IFLA_IFNAME, &cstr(name));
    let info = m.begin(IFLA_LINKINFO);
    m.attr(IFLA_INFO_KIND, b"bridge");
    m.end(info);
    // another ADD may have made it meanwhile
    nl.ack_or(&mut [m], libc::EEXIST, "creating the bridge")?;
    let (index, mac) = nl.link(name)?.ok_or("the bridge vanished")?;
    let mut addr = address_msg(index, gateway, len, None);
    nl.ack_or(
        std::slice::from_mut(&mut addr),
        libc::EEXIST,
        "the gateway address",
    )?;
    fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| format!("turning IPv4 forwarding on: {e}"))?;
    Ok((index, mac))
}

fn address_msg(index: u32, ip: Ipv4Addr, len: u8, broadcast: Option<Ipv4Addr>) -> Msg {
    let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK);
    m.buf
        .extend_from_slice(&[AF_INET, len, 0, RT_SCOPE_UNIVERSE]);
    m.buf.extend_from_slice(&index.to_ne_bytes());
    m.attr(IFA_LOCAL, &ip.octets());
    m.attr(IFA_ADDRESS, &ip.octets());
    if let Some(b) = broadcast {
        m.attr(IFA_BROADCAST, &b.octets());
    }
    m
}

fn del(ifname: &str) -> Result<()> {
    let child = spawn_ipam("del", Stdio::null())?;
    let netns_path = std::env::var("CNI_NETNS").unwrap_or_default();
    // DEL must succeed when the namespace is already gone
    if !netns_path.is_empty() && Path::new(&netns_path).exists() {
        let netns = open_netns(&netns_path)?;
        enter(netns.as_raw_fd())?;
        delete_detached(ifname)?;
    }
    wait_ipam(child)?;
    Ok(())
}

/// Deletes `ifname` of the current namespace in a forked child that holds no stdio (the
/// caller waits for EOF on stdout, not for it) and is not waited for.
fn delete_detached(ifname: &str) -> Result<()> {
    let mut m = Msg::new(RTM_DELLINK, NLM_F_ACK);
    m.ifinfo(0, 0);
    m.attr(IFLA_IFNAME, &cstr(ifname));
    // SAFETY: process 1 is single-threaded; the child only makes syscalls and _exits.
    match unsafe { libc::fork() } {
        -1 => Err(errno("forking the deleter")),
        0 => {
            // SAFETY: closing our own standard descriptors in the child.
            unsafe {
                libc::setsid();
                for fd in 0..3 {
                    libc::close(fd);
                }
            }
            let ok = Netlink::open()
                .and_then(|nl| nl.ack_or(&mut [m], libc::ENODEV, "deleting the interface"))
                .is_ok();
            // SAFETY: leaves the child without running the parent's exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Route netlink, by hand: one blocking socket, messages built in place.

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0; 4]); // length, set when sent
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&[0; 8]); // sequence, set when sent; port id
        Msg { buf }
    }

    /// struct ifinfomsg: AF_UNSPEC, the index, the flags to set (and only those changed).
    fn ifinfo(&mut self, index: i32, flags: u32) {
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
    }

    /// struct rtmsg of an IPv4 default route in the main table.
    fn rtmsg(&mut self) {
        self.buf.extend_from_slice(&[
            AF_INET,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
        ]);
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
    }

    fn attr(&mut self, kind: u16, value: &[u8]) {
        self.buf
            .extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn begin(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

struct Netlink {
    fd: OwnedFd,
}

/// What the kernel answered one request with: an errno (0 an ack), or a message.
enum Reply {
    Error(i32),
    Message(Vec<u8>),
}

impl Netlink {
    /// A route netlink socket in this thread's namespace (the kernel binds it on send).
    fn open() -> Result<Netlink> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(errno("opening a netlink socket"));
        }
        // SAFETY: fd is a fresh descriptor nothing else owns.
        Ok(Netlink {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends the messages in one write; one reply each, in order.
    fn send(&self, msgs: &mut [Msg]) -> Result<Vec<Reply>> {
        let mut out = Vec::new();
        for (seq, m) in msgs.iter_mut().enumerate() {
            let len = m.buf.len() as u32;
            m.buf[0..4].copy_from_slice(&len.to_ne_bytes());
            m.buf[8..12].copy_from_slice(&(seq as u32 + 1).to_ne_bytes());
            out.extend_from_slice(&m.buf);
        }
        // SAFETY: a buffer this function owns, its length.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), out.as_ptr().cast(), out.len(), 0) };
        if sent < 0 || sent as usize != out.len() {
            return Err(errno("netlink send"));
        }
        let mut replies: Vec<Option<Reply>> = msgs.iter().map(|_| None).collect();
        let mut buf = vec![0u8; 32768];
        // each datagram carries at least one of the replies
        for _ in 0..msgs.len() * 4 {
            if replies.iter().all(Option::is_some) {
                break;
            }
            // SAFETY: a buffer this function owns, its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(errno("netlink recv"));
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if len < 16 || len > rest.len() {
                    break;
                }
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
                let body = &rest[16..len];
                if let Some(slot) = seq.checked_sub(1).and_then(|k| replies.get_mut(k)) {
                    *slot = Some(if kind == NLMSG_ERROR && body.len() >= 4 {
                        Reply::Error(-i32::from_ne_bytes([body[0], body[1], body[2], body[3]]))
                    } else {
                        Reply::Message(body.to_vec())
                    });
                }
                rest = &rest[((len + 3) & !3).min(rest.len())..];
            }
        }
        replies
            .into_iter()
            .map(|r| r.ok_or_else(|| "netlink: a reply is missing".to_string()))
            .collect()
    }

    /// Every message acknowledged, or errno `fine`.
    fn ack_or(&self, msgs: &mut [Msg], fine: i32, what: &str) -> Result<()> {
        for r in self.send(msgs)? {
            match r {
                Reply::Error(0) => {}
                Reply::Error(e) if e == fine => {}
                Reply::Error(e) => {
                    return Err(format!("{what}: {}", io::Error::from_raw_os_error(e)))
                }
                Reply::Message(_) => return Err(format!("{what}: not an acknowledgement")),
            }
        }
        Ok(())
    }

    fn ack(&self, msgs: &mut [Msg], what: &str) -> Result<()> {
        self.ack_or(msgs, 0, what)
    }

    /// RTM_GETLINK by name: (index, MAC), None when there is no such link.
    fn link(&self, name: &str) -> Result<Option<(u32, String)>> {
        let mut m = Msg::new(RTM_GETLINK, 0);
        m.ifinfo(0, 0);
        m.attr(IFLA_IFNAME, &cstr(name));
        match self.send(&mut [m])?.pop() {
            Some(Reply::Error(libc::ENODEV)) => Ok(None),
            Some(Reply::Error(e)) => Err(format!(
                "looking {name} up: {}",
                io::Error::from_raw_os_error(e)
            )),
            Some(Reply::Message(body)) if body.len() >= 16 => {
                let index = u32::from_ne_bytes([body[4], body[5], body[6], body[7]]);
                let mut mac = String::new();
                let mut rest = &body[16..];
                while rest.len() >= 4 {
                    let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
                    let kind = u16::from_ne_bytes([rest[2], rest[3]]);
                    if len < 4 || len > rest.len() {
                        break;
                    }
                    if kind == IFLA_ADDRESS {
                        let hex: Vec<String> =
                            rest[4..len].iter().map(|b| format!("{b:02x}")).collect();
                        mac = hex.join(":");
                    }
                    rest = &rest[((len + 3) & !3).min(rest.len())..];
                }
                Ok(Some((index, mac)))
            }
            _ => Err(format!("looking {name} up: no answer")),
        }
    }
}
