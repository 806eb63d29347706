//! Deleting a link, and closing a socket, without waiting for the kernel: the kernel
//! holds whoever deletes a veth pair 15-25 ms while it unregisters it, and whoever closes
//! the last descriptor of a netfilter socket while nf_tables has frees pending from any
//! transaction that deleted something, its own or another process's (a flush of its
//! deferred work, an RCU grace period: 8-24 ms on the bench VM). So the request, or the
//! last close, is made by a child process that nobody waits for.
//!
//! The child shares the caller's memory (clone with CLONE_VM) rather than copying it (a
//! fork): the caller then pays no copy of its page tables and no copy-on-write fault for
//! each page it writes before it exits, and its exit leaves the memory to the child. The
//! child touches only what is its own from the clone on (a leaked block: its stack and
//! the request) and makes raw system calls, never libc's wrappers, which would write the
//! caller's errno.

use std::ffi::{c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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
    let top = job.stack.as_mut_ptr_range().end.cast();
    // SAFETY: `reap` reads only the leaked job and runs on its stack.
    unsafe { start_child(reap, top, (job as *mut Job).cast()) }
}

/// Starts `entry(job)` in a child sharing this process's memory, on the stack that ends
/// at `top` (in the leaked job, so it outlives the caller).
///
/// # Safety
/// `job` and the stack must be leaked; `entry` must touch only `job` and its own stack,
/// and make raw system calls only: it shares nothing else the caller writes, and never
/// returns into the caller's code.
unsafe fn start_child(
    entry: extern "C" fn(*mut c_void) -> c_int,
    top: *mut c_void,
    job: *mut c_void,
) -> io::Result<()> {
    // SAFETY: as the caller promises.
    if unsafe { libc::clone(entry, top, libc::CLONE_VM | libc::SIGCHLD, job) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// membarrier(2): a barrier on every CPU, by way of an RCU grace period.
const MEMBARRIER_CMD_GLOBAL: usize = 1;

/// What the closing child uses: leaked by the caller, as [`Job`] is.
#[repr(C, align(16))]
struct CloseJob {
    stack: [u8; STACK],
    fd: c_int,
    read_end: c_int,
    write_end: c_int,
}

/// Closes `fd` in a child that holds the last copy of it, with no stdio and a session of
/// its own, and returns at once. The child closes it only once this process has closed
/// its own copies (a pipe's end tells it), so the kernel's wait falls to the child.
pub fn close_detached(fd: OwnedFd) -> io::Result<()> {
    let mut ends = [0 as c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned these two descriptors, which nothing else owns.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let job = Box::leak(Box::new(CloseJob {
        stack: [0; STACK],
        fd: fd.as_raw_fd(),
        read_end: read_end.as_raw_fd(),
        write_end: write_end.as_raw_fd(),
    }));
    let top = job.stack.as_mut_ptr_range().end.cast();
    // SAFETY: `close_last` reads only the leaked job and runs on its stack.
    unsafe { start_child(close_last, top, (job as *mut CloseJob).cast())? };
    // Ours first, then the pipe: the child's copy is the last one.
    drop(fd);
    drop(write_end);
    drop(read_end);
    Ok(())
}

/// The closing child: every descriptor but the socket and the pipe's read end closed,
/// then it waits for the caller's copies to go (end of file on the pipe) and closes the
/// socket.
extern "C" fn close_last(job: *mut c_void) -> c_int {
    // SAFETY: `job` is the leaked CloseJob; raw system calls only, as in `reap`.
    unsafe {
        let job = &*(job as *const CloseJob);
        raw::call(libc::SYS_setsid, [0; 4]);
        let keep = [job.fd.min(job.read_end), job.fd.max(job.read_end)];
        let mut from = 0usize;
        for k in keep {
            if k as usize > from {
                close_all(from, k as usize - 1);
            }
            from = k as usize + 1;
        }
        close_all(from, u32::MAX as usize);
        let mut byte = [0u8; 1];
        // 0 (end of file) once the caller's write end is closed, by it or by its exit
        while raw::call(
            libc::SYS_read,
            [job.read_end as usize, byte.as_mut_ptr() as usize, 1, 0],
        ) == -(libc::EINTR as isize)
        {}
        // nf_tables' release handler flushes its pending frees with its commit mutex held,
        // and the next plugin's transaction waits for that mutex. One grace period here,
        // holding nothing, lets that work start on its own first (it was queued at the
        // commit), so the close mostly finds nothing to flush: back-to-back DELs of
        // bridge with ipMasq took a median 11-12 ms without it, 3-9 ms with it.
        raw::call(libc::SYS_membarrier, [MEMBARRIER_CMD_GLOBAL, 0, 0, 0]);
        raw::call(libc::SYS_close, [job.fd as usize, 0, 0, 0]);
        0
    }
}

/// Closes descriptors `first..=last` with raw system calls.
unsafe fn close_all(first: usize, last: usize) {
    if raw::call(libc::SYS_close_range, [first, last, 0, 0]) != 0 {
        for fd in first..=last.min(1023) {
            raw::call(libc::SYS_close, [fd, 0, 0, 0]);
        }
    }
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
        close_all(0, u32::MAX as usize);
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
