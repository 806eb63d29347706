//! Deleting a link without waiting for the kernel: the kernel holds whoever deletes a
//! veth pair 15-25 ms while it unregisters it, so the request is made by a forked child
//! that nobody waits for.

use std::io;

use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};

/// Deletes link `name` of the calling thread's namespace from a forked child with no
/// stdio and a session of its own, and returns at once: the runtime's pipes close when
/// the caller exits, and the child outlives it by the kernel's unregistering. The
/// request is built before the fork; the child only makes system calls (all that is
/// safe after forking a threaded process) and exits.
pub fn delete_link_detached(name: &str) -> io::Result<()> {
    let mut link = LinkMessage::default();
    link.attributes
        .push(LinkAttribute::IfName(name.to_string()));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelLink(link));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    // SAFETY: the child runs only async-signal-safe system calls on memory prepared
    // before the fork, then _exit.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => unsafe { send_and_exit(&buf) },
        _ => Ok(()),
    }
}

/// The forked child: no descriptor of the parent (no stdio, and no lock or pipe kept
/// open past the parent's exit: a fork, unlike an exec, would keep even close-on-exec
/// ones), its own session, one netlink request, its ack, _exit.
///
/// # Safety
/// Only in the child of a fork; never returns.
unsafe fn send_and_exit(req: &[u8]) -> ! {
    libc::setsid();
    if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
        for fd in 0..1024 {
            libc::close(fd);
        }
    }
    let s = libc::socket(
        libc::AF_NETLINK,
        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
        libc::NETLINK_ROUTE,
    );
    let mut ok = false;
    if s >= 0 && libc::send(s, req.as_ptr().cast(), req.len(), 0) == req.len() as isize {
        // The deletion is done when send returns; the ack says how it went.
        let mut ack = [0u8; 512];
        let n = libc::recv(s, ack.as_mut_ptr().cast(), ack.len(), 0);
        // nlmsghdr (16 bytes), then NLMSG_ERROR's errno: 0 is success
        ok = n >= 20 && i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]) == 0;
    }
    libc::_exit(if ok { 0 } else { 1 })
}
