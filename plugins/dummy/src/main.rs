//! `dummy`: a dummy interface born in the container, addressed by the IPAM delegate
//! (which it requires, as the reference). A kernel without the dummy driver refuses the
//! link kind: ADD then fails with one error that says so, and DEL still succeeds.

use libcni::attachment::container::{self, Removal};
use libcni::attachment::{claim, Attachment, PendingLease, Undo};
use libcni::delegate::Delegate;
use libcni::net::{self, Kernel, LinkInfo};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::spec::Interface;
use libcni::{code, CniResult, Error};

/// What a kernel without the link kind answers (EOPNOTSUPP, "Unknown device type").
const EOPNOTSUPP: i32 = 95;

fn ipam_of(args: &CmdArgs) -> Result<Delegate, Error> {
    Delegate::ipam(args)
        .ok_or_else(|| Error::config("dummy interface requires an IPAM configuration"))
}

/// The kernel's refusal of the link kind, said as what it is.
fn explain(e: net::Error) -> Error {
    Error::new(
        code::NETLINK,
        format!(
            "{}: this kernel lacks the dummy module (link kind \"dummy\": Unknown device type)",
            e.what
        ),
    )
    .details(e.source.to_string())
}

/// A dummy with the attachment's MAC: the one ADD made.
fn is_ours(l: &LinkInfo, a: &Attachment) -> bool {
    l.kind.as_deref() == Some("dummy") && l.mac == a.container_mac()
}

struct Dummy;

impl Plugin for Dummy {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let ipam = ipam_of(args)?;
        let netns = args.required_netns()?;
        let a = Attachment::of(args);
        let k = Kernel::new()?;
        let inside = k.connect_in(netns)?;
        let mut pending = Some(PendingLease::start(&ipam, args)?);
        let mut undo = Undo::new();
        // The refusal of the link kind is an answer, not a failure of the claim.
        let create = async {
            match inside.create_dummy(a.ifname(), a.container_mac()).await {
                Err(e) if e.errno() == Some(EOPNOTSUPP) => Ok(Err(explain(e))),
                made => made.map(Ok),
            }
        };
        let live = async {
            Ok(inside
                .link(a.ifname())
                .await?
                .is_some_and(|l| is_ours(&l, &a)))
        };
        container::delete_retired(&k, &inside, &a, |l| is_ours(l, &a))?;
        claim(&k, &mut pending, create, live)??;
        undo.delete_link(&k, &inside, a.ifname());
        let lease = pending.expect("kept unless the claim failed").wait()?;
        let mut r = lease.addressed(0)?;
        k.run(container::configure(&inside, netns, a.ifname(), &r))?;
        r.interfaces = vec![Interface::container(
            a.ifname(),
            &a.container_mac(),
            &args.netns,
        )];
        undo.commit();
        lease.commit();
        Ok(r)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let ipam = ipam_of(args)?;
        let a = Attachment::of(args);
        ipam.run("DEL", args)?;
        let Some(ns) = args.netns() else {
            return Ok(());
        };
        let k = Kernel::new()?;
        let inside = k.connect_in(ns)?;
        container::delete_own(&k, &inside, ns, &a, Removal::Detached, |l| is_ours(l, &a))
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let ipam = ipam_of(args)?;
        let netns = args.required_netns()?;
        ipam.run("CHECK", args)?;
        let prev = args.required_prev_result()?;
        let k = Kernel::new()?;
        let inside = k.connect_in(netns)?;
        let mut problems = Vec::new();
        if let Some(l) = k.run(inside.link(&args.ifname))? {
            if l.kind.as_deref() != Some("dummy") {
                problems.push(format!("{} is not of type dummy", args.ifname));
            }
        }
        container::check(&k, &inside, args, &prev, problems)
    }

    fn status(&self, args: &CmdArgs) -> Result<(), Error> {
        ipam_of(args)?.run("STATUS", args).map(|_| ())
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        ipam_of(args)?.run("GC", args).map(|_| ())
    }
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    skel::run(&Dummy, "CNI dummy plugin (cni-rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_any_input_never_panics() {
        libcni::arbitrary::probe_reading(&["ipam", "dns"], |a| ipam_of(a).map(|_| ()));
    }
}
