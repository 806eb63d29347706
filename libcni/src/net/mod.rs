//! Linux plumbing every plugin needs: namespaces, a thin netlink layer, sysctls, names.

pub mod conntrack;
mod detached;
mod link;
mod netns;
pub mod nftables;
mod nlattr;
mod policy;
mod socket;
mod tc;
mod tuntap;
mod vxlan;

use std::io;

pub use detached::delete_link_detached;
pub use link::{
    random_mac, LinkInfo, LinkTuning, MacVlanMode, MacvlanSettings, Netlink, RouteInfo, RouteSpec,
};
pub use netns::{Netns, OpenError};
pub use policy::{Rule, TableRoute};
pub use tc::{Qdisc, Tbf};
pub use tuntap::{create_tap, TapOptions};
pub use vxlan::{Entry, Vxlan, VxlanState};

use crate::spec::{code, Error as CniError};

/// A failed kernel operation: what we were doing to which object, and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct Error {
    pub what: String,
    #[source]
    pub source: io::Error,
}

impl Error {
    pub fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error {
            what: what.into(),
            source,
        }
    }

    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc_errno::ENODEV | libc_errno::ENOENT | libc_errno::ESRCH)
        ) || self.source.kind() == io::ErrorKind::NotFound
    }
}

pub(crate) mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const EADDRNOTAVAIL: i32 = 99;
    pub const ENETUNREACH: i32 = 101;
    pub const EHOSTUNREACH: i32 = 113;
}

impl From<Error> for CniError {
    fn from(e: Error) -> CniError {
        // A socket read that timed out: the kernel did not answer (socket::KERNEL_WAIT).
        let code = match e.source.kind() {
            io::ErrorKind::WouldBlock => code::TRY_AGAIN,
            _ => code::NETLINK,
        };
        CniError::new(code, e.what).details(e.source.to_string())
    }
}

/// Writes a sysctl in the namespace of the calling thread, e.g. `net/ipv4/ip_forward`.
pub fn sysctl_set(key: &str, value: &str) -> Result<(), Error> {
    let path = format!("/proc/sys/{key}");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|e| Error::io(format!("setting sysctl {key}={value}"), e))
}

/// The kernel as one plugin invocation sees it: the host namespace's netlink socket,
/// kept for the whole invocation; sockets in container namespaces are made beside it.
/// Every request is answered on the calling thread (socket.rs), so the attachment
/// layer's async steps run to their end when polled once.
pub struct Kernel {
    host: Netlink,
}

impl Kernel {
    pub fn new() -> Result<Kernel, CniError> {
        Ok(Kernel {
            host: Netlink::connect()?,
        })
    }

    /// The host namespace (the one the plugin was started in).
    pub fn host(&self) -> &Netlink {
        &self.host
    }

    /// A connection inside `ns`; the socket stays bound there after we leave.
    pub fn connect_in(&self, ns: &Netns) -> Result<Netlink, Error> {
        Netlink::connect_in(ns)
    }

    /// Runs the steps `f` to their end.
    pub fn run<T, E>(
        &self,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, CniError>
    where
        CniError: From<E>,
    {
        futures::executor::block_on(f).map_err(CniError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_that_does_not_answer_is_a_try_again() {
        // A read past the socket's receive timeout fails with EAGAIN.
        let timed_out = Error::io("adding a route", io::Error::from_raw_os_error(libc::EAGAIN));
        assert_eq!(CniError::from(timed_out).code, code::TRY_AGAIN);
        let refused = Error::io("adding a route", io::Error::from_raw_os_error(libc::EEXIST));
        assert_eq!(CniError::from(refused).code, code::NETLINK);
    }
}
