//! Deleting a link without waiting for the kernel: the kernel holds whoever deletes a
//! veth pair 15-25 ms while it unregisters it, so the request is made by a child process
//! that nobody waits for.
//!
//! The child shares the caller's memory (clone with CLONE_VM) rather than copying it (a
//! fork): the caller then pays no copy of its page tables and no copy-on-write fault for
//! each page it writes before it exits, and its exit leaves the memory to the child. The
//! child touches only what is its own from the clone on (a leaked block: its stack and
//! the request) and makes raw system calls, never libc's wrappers, which would write the
//! caller's errno.

use std::ffi::{c_int, c_void};
use std::io;

use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};

/// The child's stack: a few system calls and a 512-byte ack.
const STACK: usize = 16 * 1024;

/// Everything the child uses: leaked by the caller, who may exit before the child runs.
#[repr(C, align(16))]
struct Job {
    stack: [u8; STACK],
    req: [u8; 64],
    len: usize,
}

/// Deletes link `index` of the calling thread's namespace from a child with no stdio and
/// a session of its own, and returns at once: the runtime's pipes close when the caller
/// exits, and the child outlives it by the kernel's unregistering. By index, which the
/// kernel does not hand out again: a link of the same name made after this call returned
/// is not the child's to delete.
pub fn delete_link_detached(index: u32) -> io::Result<()> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelLink(link));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    req.finalize();
    let mut job = Box::new(Job {
        stack: [0; STACK],
        req: [0; 64],
        len: req.buffer_len(),
    });
    if job.len > job.req.len() {
        return Err(io::Error::other("RTM_DELLINK request larger than 64 bytes"));
    }
    req.serialize(&mut job.req[..job.len]);
    let job = Box::leak(job);
    let top = job.stack.as_mut_ptr_range().end.cast::<c_void>();
    // SAFETY: the child runs `reap` on its own stack and reads only the leaked job; it
    // shares nothing else the caller writes, and never returns into the caller's code.
    let pid = unsafe {
        libc::clone(
            reap,
            top,
            libc::CLONE_VM | libc::SIGCHLD,
            (job as *mut Job).cast(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The child: no descriptor of the caller (no stdio, and no lock or pipe kept open past
/// its exit), its own session, one netlink request, its ack, exit (libc's clone makes
/// the exit system call with what this returns).
extern "C" fn reap(job: *mut c_void) -> c_int {
    // SAFETY: `job` is the leaked Job, which no one else writes; every call below is a
    // raw system call on memory of that job or this stack.
    unsafe {
        let job = &*(job as *const Job);
        raw::call(libc::SYS_setsid, [0; 4]);
        if raw::call(libc::SYS_close_range, [0, u32::MAX as usize, 0, 0]) != 0 {
            for fd in 0..1024 {
                raw::call(libc::SYS_close, [fd, 0, 0, 0]);
            }
        }
        let s = raw::call(
            libc::SYS_socket,
            [
                libc::AF_NETLINK as usize,
                (libc::SOCK_RAW | libc::SOCK_CLOEXEC) as usize,
                libc::NETLINK_ROUTE as usize,
                0,
            ],
        );
        if s < 0 {
            return 1;
        }
        let req = &job.req[..job.len];
        let sent = raw::call(
            libc::SYS_sendto,
            [s as usize, req.as_ptr() as usize, req.len(), 0],
        );
        if sent != req.len() as isize {
            return 1;
        }
        // The deletion is done when sendto returns; the ack says how it went.
        let mut ack = [0u8; 512];
        let n = raw::call(
            libc::SYS_recvfrom,
            [s as usize, ack.as_mut_ptr() as usize, ack.len(), 0],
        );
        // nlmsghdr (16 bytes), then NLMSG_ERROR's errno: 0 is success
        let ok = n >= 20 && i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]) == 0;
        c_int::from(!ok)
    }
}

/// System calls without libc: the result, or -errno; nothing else is written.
mod raw {
    /// # Safety
    /// As the system call `n` with arguments `a` (the fifth and sixth are 0).
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn call(n: libc::c_long, a: [usize; 4]) -> isize {
        let r: isize;
        core::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => r,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2], in("r10") a[3],
            in("r8") 0usize, in("r9") 0usize,
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
        r
    }

    /// # Safety
    /// As the system call `n` with arguments `a` (the fifth and sixth are 0).
    #[cfg(target_arch = "aarch64")]
    pub unsafe fn call(n: libc::c_long, a: [usize; 4]) -> isize {
        let r: isize;
        core::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a[0] => r,
            in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") 0usize, in("x5") 0usize,
            options(nostack),
        );
        r
    }
}
