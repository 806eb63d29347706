//! Linux plumbing every plugin needs: namespaces, a thin netlink layer, sysctls, names.

pub mod conntrack;
mod detached;
mod link;
mod netns;
mod policy;
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
        CniError::new(code::NETLINK, e.what).details(e.source.to_string())
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

/// The kernel as one plugin invocation sees it: one current-thread runtime (enough for a
/// plugin, and safe with setns) and the host namespace's netlink connection, kept for the
/// whole invocation; connections into container namespaces are made on it too.
pub struct Kernel {
    rt: tokio::runtime::Runtime,
    host: Netlink,
}

/// No request to the kernel takes this long; past it, the runtime may try again.
const KERNEL_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Kernel {
    pub fn new() -> Result<Kernel, CniError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| {
                CniError::new(code::IO, "starting the async runtime").details(e.to_string())
            })?;
        let host = {
            let _ctx = rt.enter();
            Netlink::connect()?
        };
        Ok(Kernel { rt, host })
    }

    /// [`Kernel::new`] on another thread while `f` runs on this one: the runtime and the
    /// netlink connection take ~0.4 ms that `f` (starting a delegate, whose spawn returns
    /// only once the child has exec'd) need not wait for. `f` stays on the calling thread,
    /// which outlives what it starts: a child's parent-death signal follows the thread
    /// that forked it. Without a thread to spare, one after the other.
    pub fn new_beside<T>(f: impl FnOnce() -> T) -> (Result<Kernel, CniError>, T) {
        std::thread::scope(
            |s| match std::thread::Builder::new().spawn_scoped(s, Kernel::new) {
                Ok(kernel) => {
                    let t = f();
                    let k = kernel.join().unwrap_or_else(|_| {
                        Err(CniError::new(
                            code::IO,
                            "starting the async runtime panicked",
                        ))
                    });
                    (k, t)
                }
                Err(_) => {
                    let t = f();
                    (Kernel::new(), t)
                }
            },
        )
    }

    /// The host namespace (the one the plugin was started in).
    pub fn host(&self) -> &Netlink {
        &self.host
    }

    /// A connection inside `ns`; the socket stays bound there after we leave.
    pub fn connect_in(&self, ns: &Netns) -> Result<Netlink, Error> {
        let _ctx = self.rt.enter();
        Netlink::connect_in(ns)
    }

    /// Runs `f` to its end, bounded: a kernel that does not answer is a try-again (11).
    pub fn run<T, E>(
        &self,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, CniError>
    where
        CniError: From<E>,
    {
        // The timer is made inside the runtime, which it needs.
        match self
            .rt
            .block_on(async { tokio::time::timeout(KERNEL_WAIT, f).await })
        {
            Ok(r) => r.map_err(CniError::from),
            Err(_) => Err(CniError::new(
                code::TRY_AGAIN,
                format!("the kernel did not answer within {KERNEL_WAIT:?}"),
            )),
        }
    }
}
