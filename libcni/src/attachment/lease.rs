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

/// An IPAM ADD under way, started so the plugin can build links meanwhile; or, for an
/// IPAM plugin that speaks on the container's interface (dhcp, whose daemon looks the
/// interface up at once: the reference's does not wait for it), started only when the
/// plugin waits for it, once the interface is there, as the reference orders it.
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
        let running = match ipam.needs_interface() {
            true => None,
            false => Some(ipam.start("ADD", args)?),
        };
        Ok(PendingLease {
            ipam,
            args,
            running,
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
        let running = match self.running.take() {
            Some(running) => running,
            None => self.ipam.start("ADD", self.args)?,
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skel::{dispatch, Plugin};
    use std::sync::Mutex;

    /// An ADD that starts its IPAM lease and then waits for it, noting how each went.
    struct Leasing(Mutex<Vec<String>>);

    impl Plugin for Leasing {
        fn uses_netns(&self) -> bool {
            false
        }
        fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
            let ipam = Delegate::ipam(args).expect("an ipam section");
            let note = |what: &str, r: Result<(), Error>| {
                let outcome = r.map_or_else(|e| e.msg, |()| "ok".to_string());
                self.0.lock().unwrap().push(format!("{what}: {outcome}"));
            };
            match PendingLease::start(&ipam, args) {
                Ok(pending) => {
                    note("start", Ok(()));
                    note("wait", pending.wait().map(|_| ()));
                }
                Err(e) => note("start", Err(e)),
            }
            Ok(CniResult::default())
        }
        fn del(&self, _: &CmdArgs) -> Result<(), Error> {
            Ok(())
        }
        fn check(&self, _: &CmdArgs) -> Result<(), Error> {
            Ok(())
        }
    }

    /// dhcp's daemon looks the container's interface up as soon as it is asked (the
    /// reference's does not wait for it), so dhcp is started only when the plugin waits
    /// for the lease, which it does once the interface is made; host-local at once. With
    /// nothing on CNI_PATH, where the lookup fails tells when the start happened.
    #[test]
    fn dhcp_starts_when_waited_for_and_host_local_at_once() {
        let empty = tempfile::tempdir().unwrap();
        let path = empty.path().to_string_lossy().to_string();
        for (ipam, expected) in [
            ("dhcp", ["start: ok", "wait: "]),
            ("host-local", ["start: ", ""]),
        ] {
            let env = |k: &str| {
                Some(match k {
                    "CNI_COMMAND" => "ADD".to_string(),
                    "CNI_CONTAINERID" => "c1".to_string(),
                    "CNI_NETNS" => "/nonexistent/netns".to_string(),
                    "CNI_IFNAME" => "eth0".to_string(),
                    "CNI_PATH" => path.clone(),
                    _ => return None,
                })
            };
            let conf = format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam":{{"type":"{ipam}"}}}}"#
            );
            let plugin = Leasing(Mutex::new(Vec::new()));
            dispatch(&plugin, &env, conf.into_bytes()).unwrap();
            let notes = plugin.0.into_inner().unwrap();
            assert_eq!(
                notes.len(),
                expected.iter().filter(|e| !e.is_empty()).count()
            );
            for (note, want) in notes.iter().zip(expected) {
                assert!(note.starts_with(want), "{ipam}: {notes:?}");
            }
            // the failed lookup is the last step in either case
            assert!(notes.last().unwrap().contains(ipam), "{ipam}: {notes:?}");
        }
    }
}
