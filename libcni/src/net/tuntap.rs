//! Tap devices: made persistent through /dev/net/tun (the kernel creates tun/tap devices
//! only by ioctl, never by rtnetlink), in the network namespace of the calling thread.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use super::libc_errno::EEXIST;
use super::Error;

/// linux/if_tun.h: _IOW('T', n, int).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
/// linux/sockios.h; the tun device answers it on its own descriptor.
const SIOCSIFHWADDR: libc::c_ulong = 0x8924;
const ARPHRD_ETHER: u16 = 1;
const IFF_TAP: i16 = 0x0002;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
/// Fail instead of attaching to a device of that name that already exists.
const IFF_TUN_EXCL: i16 = -0x8000;

/// How the tap is made.
#[derive(Debug, Clone, Default)]
pub struct TapOptions {
    pub multi_queue: bool,
    /// Carries virtio-net headers (the reference's choice when owner and group are given).
    pub vnet_hdr: bool,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    /// Set before the tap is made persistent, so a tap that outlives a killed ADD already
    /// has the MAC its DEL looks for.
    pub mac: [u8; 6],
}

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags, padded to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// `struct ifreq` as SIOCSIFHWADDR reads it: the name and a `struct sockaddr`.
#[repr(C)]
struct IfReqHw {
    name: [u8; 16],
    family: u16,
    data: [u8; 14],
    _pad: [u8; 8],
}

fn ioctl_err(what: String) -> Error {
    let e = std::io::Error::last_os_error();
    // EBUSY is the kernel's answer to IFF_TUN_EXCL: the name is taken.
    if e.raw_os_error() == Some(libc::EBUSY) {
        return Error::io(what, std::io::Error::from_raw_os_error(EEXIST));
    }
    Error::io(what, e)
}

/// Creates the persistent tap `name` with `o.mac` in the calling thread's namespace; it
/// stays after this returns (down) until deleted. Until it is persistent it goes with
/// the descriptor, so a kill before leaves nothing.
pub fn create_tap(name: &str, o: &TapOptions) -> Result<(), Error> {
    let what = |op: &str| format!("{op} tap {name}");
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 15 || bytes.contains(&0) {
        return Err(Error::io(
            what("naming"),
            std::io::ErrorKind::InvalidInput.into(),
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| Error::io(what("opening /dev/net/tun for"), e))?;
    let fd = tun.as_raw_fd();
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_TUN_EXCL,
        _pad: [0; 22],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    req.flags |= if o.vnet_hdr { IFF_VNET_HDR } else { IFF_NO_PI };
    if o.multi_queue {
        req.flags |= IFF_MULTI_QUEUE | IFF_NO_PI;
    }
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is, for the call only.
    if unsafe { libc::ioctl(fd, TUNSETIFF as _, &mut req as *mut IfReq) } < 0 {
        return Err(ioctl_err(what("creating")));
    }
    // SAFETY: these take an integer argument and touch no memory of ours.
    let set = |op, arg: libc::c_ulong| unsafe { libc::ioctl(fd, op as _, arg) } >= 0;
    if let Some(uid) = o.owner {
        if !set(TUNSETOWNER, libc::c_ulong::from(uid)) {
            return Err(ioctl_err(what(&format!("setting owner {uid} of"))));
        }
    }
    if let Some(gid) = o.group {
        if !set(TUNSETGROUP, libc::c_ulong::from(gid)) {
            return Err(ioctl_err(what(&format!("setting group {gid} of"))));
        }
    }
    let mut hw = IfReqHw {
        name: req.name,
        family: ARPHRD_ETHER,
        data: [0; 14],
        _pad: [0; 8],
    };
    hw.data[..6].copy_from_slice(&o.mac);
    // SAFETY: SIOCSIFHWADDR reads one ifreq, which `hw` is, for the call only.
    if unsafe { libc::ioctl(fd, SIOCSIFHWADDR as _, &mut hw as *mut IfReqHw) } < 0 {
        return Err(ioctl_err(what("setting the MAC of")));
    }
    if !set(TUNSETPERSIST, 1) {
        return Err(ioctl_err(what("making persistent")));
    }
    Ok(())
}
