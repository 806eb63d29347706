//! The route netlink socket under [`super::Netlink`]: one request at a time, sent and
//! answered on the calling thread. A plugin makes a dozen requests in its life; an async
//! runtime and a connection task per socket cost it more (a runtime, an epoll set, a
//! wakeup and an extra read per answer) than the kernel's answers do (docs/DESIGN.md).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};

/// How long a request waits for the kernel's answer; past it, a try-again.
pub const KERNEL_WAIT: Duration = Duration::from_secs(60);

/// Room for one datagram: the kernel fills a dump's datagrams up to the reader's buffer,
/// never past 32 KiB, and a single answer of ours is a few KiB.
const DATAGRAM: usize = 32 << 10;

/// A netlink socket of `protocol` bound in the calling thread's namespace, talking to the
/// kernel only, every read bounded by `wait`.
pub fn open(protocol: isize, wait: Duration) -> io::Result<Socket> {
    let mut s = Socket::new(protocol)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    let timeout = libc::timeval {
        tv_sec: wait.as_secs() as _,
        tv_usec: wait.subsec_micros() as _,
    };
    // SAFETY: setsockopt with a valid timeval on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

/// A netfilter netlink socket (nf_tables, conntrack) whose last close is left to a
/// detached child ([`super::detached::close_detached`]): closing any such socket runs
/// nf_tables' release handler, which waits, holding the commit mutex, for the frees of
/// the last transaction that deleted anything, whoever made it (a grace period, 8-24 ms
/// on the bench VM). Its caller has nothing to wait for. For the plugins' short lives: the
/// child is reaped by whoever adopts it once the plugin has exited (a long-lived process
/// would have to reap it; the agent and the dhcp daemon open none).
pub struct NetfilterSocket(Option<Socket>);

impl NetfilterSocket {
    pub fn open(wait: Duration) -> io::Result<NetfilterSocket> {
        open(netlink_sys::protocols::NETLINK_NETFILTER, wait).map(|s| NetfilterSocket(Some(s)))
    }
}

impl std::ops::Deref for NetfilterSocket {
    type Target = Socket;

    fn deref(&self) -> &Socket {
        self.0.as_ref().expect("held until dropped")
    }
}

impl Drop for NetfilterSocket {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
            // SAFETY: into_raw_fd hands over the socket's descriptor, which nothing else
            // owns.
            let fd = unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) };
            // Should no child start, the descriptor is closed here, at the old cost.
            let _ = super::detached::close_detached(fd);
        }
    }
}

/// A route netlink socket and its receive buffer; requests from several threads take
/// turns.
pub struct RouteSocket {
    socket: Socket,
    sequence: AtomicU32,
    buffer: Mutex<Vec<u8>>,
}

impl RouteSocket {
    pub fn open() -> io::Result<RouteSocket> {
        Ok(RouteSocket {
            socket: open(NETLINK_ROUTE, KERNEL_WAIT)?,
            sequence: AtomicU32::new(1),
            // Only what a read writes is ever touched.
            buffer: Mutex::new(Vec::with_capacity(DATAGRAM)),
        })
    }

    /// Sends `msg` with the kernel's acknowledgement asked for; returns what the kernel
    /// answered before it, or its error.
    pub fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(msg, NLM_F_REQUEST | NLM_F_ACK | flags)
    }

    /// Asks for every object of `msg`'s kind (as filtered by the kernel) and returns them.
    pub fn dump(&self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(msg, NLM_F_REQUEST | NLM_F_DUMP)
    }

    fn exchange(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        req.header.sequence_number = sequence;
        req.finalize();
        let mut bytes = vec![0; req.buffer_len()];
        req.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        let mut answers = Vec::new();
        loop {
            let len = self.receive(&mut buffer)?;
            if let Some(end) = take_answers(&buffer[..len], sequence, &mut answers) {
                return end.map(|()| answers);
            }
        }
    }

    /// Reads one datagram into `buffer`; its length.
    fn receive(&self, buffer: &mut Vec<u8>) -> io::Result<usize> {
        buffer.clear();
        loop {
            // SAFETY: recv writes at most `capacity` bytes into the buffer we own, and
            // only the bytes it reports written are read.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.capacity(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > buffer.capacity() {
                return Err(malformed("an answer larger than 32 KiB"));
            }
            // SAFETY: the kernel wrote these n bytes.
            unsafe { buffer.set_len(n) };
            return Ok(n);
        }
    }
}

/// Adds to `answers` what one datagram answers request `sequence`; `Some` once the
/// kernel's acknowledgement, the end of a dump or an error has come.
fn take_answers(
    datagram: &[u8],
    sequence: u32,
    answers: &mut Vec<RouteNetlinkMessage>,
) -> Option<io::Result<()>> {
    let mut rest = datagram;
    while rest.len() >= 16 {
        let size = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if size < 16 || size > rest.len() {
            return Some(Err(malformed("a message length past its datagram")));
        }
        let m = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..size]) {
            Ok(m) => m,
            Err(e) => return Some(Err(malformed(&e.to_string()))),
        };
        rest = &rest[((size + 3) & !3).min(rest.len())..];
        if m.header.sequence_number != sequence {
            continue;
        }
        match m.payload {
            NetlinkPayload::Error(e) if e.code.is_some() => return Some(Err(e.to_io())),
            // A dump the kernel could not finish ends with its errno.
            NetlinkPayload::Done(d) if d.code < 0 => {
                return Some(Err(io::Error::from_raw_os_error(-d.code)))
            }
            NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Some(Ok(())),
            NetlinkPayload::InnerMessage(inner) => answers.push(inner),
            _ => {}
        }
    }
    None
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the kernel's answer cannot be read: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkMessage;
    use rtnetlink::packet_core::{DoneMessage, ErrorMessage};

    fn datagram(messages: Vec<(u32, NetlinkPayload<RouteNetlinkMessage>)>) -> Vec<u8> {
        let mut out = Vec::new();
        for (sequence, payload) in messages {
            let mut m = NetlinkMessage::new(Default::default(), payload);
            m.header.sequence_number = sequence;
            m.finalize();
            let mut bytes = vec![0; m.buffer_len()];
            m.serialize(&mut bytes);
            out.extend_from_slice(&bytes);
            out.resize((out.len() + 3) & !3, 0);
        }
        out
    }

    fn link(index: u32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut l = LinkMessage::default();
        l.header.index = index;
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l))
    }

    fn error(errno: i32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut e = ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(-errno);
        NetlinkPayload::Error(e)
    }

    #[test]
    fn answers_end_at_the_ack_or_the_dump_end_and_skip_other_requests() {
        let mut answers = Vec::new();
        let d = datagram(vec![(6, link(1)), (7, link(2)), (7, link(3))]);
        assert!(take_answers(&d, 7, &mut answers).is_none());
        assert_eq!(answers.len(), 2);
        let d = datagram(vec![(7, error(0))]);
        assert!(matches!(take_answers(&d, 7, &mut answers), Some(Ok(()))));
        let d = datagram(vec![(7, NetlinkPayload::Done(DoneMessage::default()))]);
        assert!(matches!(take_answers(&d, 7, &mut answers), Some(Ok(()))));
    }

    #[test]
    fn a_dump_that_ends_with_an_errno_fails() {
        let mut answers = Vec::new();
        let mut done = DoneMessage::default();
        done.code = -libc::EINTR;
        let d = datagram(vec![(2, link(1)), (2, NetlinkPayload::Done(done))]);
        let e = take_answers(&d, 2, &mut answers).unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINTR));
    }

    #[test]
    fn an_error_is_the_kernels_errno_and_a_torn_datagram_is_refused() {
        let mut answers = Vec::new();
        let d = datagram(vec![(3, error(libc::ENODEV))]);
        let e = take_answers(&d, 3, &mut answers).unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        let mut d = datagram(vec![(3, link(1))]);
        d[0] = 0xff;
        let e = take_answers(&d, 3, &mut answers).unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
