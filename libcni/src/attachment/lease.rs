//! The IPAM lease guard: the addresses a delegated ADD handed out in this call are given
//! back on every path that does not commit the ADD (an error, an early return, a panic
//! unwinding). Only what this call's ADD got is released: an ADD that the IPAM plugin
//! refused (a duplicate of a live attachment, say) leaves nothing to release, and an ADD
//! that finds the attachment's own interface already there ([`claim`]) leaves what the
//! IPAM plugin answered to that attachment, so a retried ADD never frees the address of
//! the attachment it collided with (an IPAM plugin may answer a duplicate with the live
//! lease). A name taken by anything else is no attachment: what this ADD got goes back.

use std::future::Future;

use crate::delegate::{self, Delegate};
use crate::exec::Running;
use crate::net::{self, libc_errno::EEXIST, Kernel};
use crate::skel::CmdArgs;
use crate::spec::{code, CniResult, Error};

/// An IPAM ADD under way, started so the plugin can build links meanwhile.
pub struct PendingLease<'a> {
    ipam: &'a Delegate,
    args: &'a CmdArgs,
    running: Option<Running>,
}

/// Addresses held for this ADD until [`Lease::commit`].
pub struct Lease<'a> {
    ipam: &'a Delegate,
    args: &'a CmdArgs,
    result: CniResult,
    committed: bool,
}

impl<'a> PendingLease<'a> {
    pub fn start(ipam: &'a Delegate, args: &'a CmdArgs) -> Result<PendingLease<'a>, Error> {
        Ok(PendingLease {
            ipam,
            args,
            running: Some(ipam.start("ADD", args)?),
        })
    }

    /// The IPAM ADD under way, if the config names an IPAM plugin (layer 2 otherwise).
    pub fn start_if(
        ipam: Option<&'a Delegate>,
        args: &'a CmdArgs,
    ) -> Result<Option<PendingLease<'a>>, Error> {
        ipam.map(|i| PendingLease::start(i, args)).transpose()
    }

    /// The lease, if one was under way, and the result the ADD of one container
    /// interface starts from ([`Lease::addressed`]; empty for layer 2).
    pub fn addressed(
        pending: Option<PendingLease<'a>>,
        index: usize,
    ) -> Result<(Option<Lease<'a>>, CniResult), Error> {
        let Some(lease) = pending.map(|p| p.wait()).transpose()? else {
            return Ok((None, CniResult::default()));
        };
        let r = lease.addressed(index)?;
        Ok((Some(lease), r))
    }

    /// The lease, once the IPAM plugin answered.
    pub fn wait(mut self) -> Result<Lease<'a>, Error> {
        let running = self.running.take().expect("waited for once");
        let printed = running.wait()?;
        let mut lease = Lease {
            ipam: self.ipam,
            args: self.args,
            result: Default::default(),
            committed: false,
        };
        // From here on, dropping the lease releases what the IPAM plugin handed out.
        lease.result = delegate::result(printed, self.ipam.plugin(), self.args)?;
        Ok(lease)
    }
}

/// Runs `create`, the creation of the attachment's own interface, whose name is its
/// claim. When the name is taken (EEXIST) and `live` (run only then) finds the
/// attachment itself there (a retried or duplicate ADD), the pending lease is waited for
/// and never released; taken by anything else, the lease is released when the caller
/// drops it, as on any failure.
pub fn claim<T>(
    k: &Kernel,
    pending: &mut Option<PendingLease>,
    create: impl Future<Output = Result<T, net::Error>>,
    live: impl Future<Output = Result<bool, net::Error>>,
) -> Result<T, Error> {
    let made = k.run(async { Ok::<_, net::Error>(create.await) })?;
    if made.as_ref().is_err_and(|e| e.errno() == Some(EEXIST)) {
        // Unsure counts as live: releasing a live attachment's lease is the worse mistake.
        let live = k.run(live).unwrap_or(true);
        if let Some(running) = pending
            .as_mut()
            .filter(|_| live)
            .and_then(|p| p.running.take())
        {
            drop(running.wait());
        }
    }
    made.map_err(Error::from)
}

impl Drop for PendingLease<'_> {
    /// The caller failed before waiting: the delegate may still have allocated.
    fn drop(&mut self) {
        if self.running.is_some() {
            let pending = PendingLease {
                ipam: self.ipam,
                args: self.args,
                running: self.running.take(),
            };
            drop(pending.wait());
        }
    }
}

impl Lease<'_> {
    pub fn result(&self) -> &CniResult {
        &self.result
    }

    /// The result the ADD of one container interface starts from: the IPAM plugin's,
    /// every address on interface `index`; refused (as by the reference) without one.
    pub fn addressed(&self, index: usize) -> Result<CniResult, Error> {
        let mut r = self.result.clone();
        if r.ips.is_empty() {
            return Err(Error::new(
                code::DELEGATE,
                "IPAM plugin returned missing IP config",
            ));
        }
        for ip in &mut r.ips {
            ip.interface = Some(index);
        }
        Ok(r)
    }

    /// The ADD succeeded: the addresses stay with the attachment.
    pub fn commit(mut self) -> CniResult {
        self.committed = true;
        std::mem::take(&mut self.result)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = self.ipam.run("DEL", self.args) {
                eprintln!(
                    "releasing the addresses of a failed ADD through {}: {e}",
                    self.ipam.plugin()
                );
            }
        }
    }
}
