//! `loopback`: sets `lo` up in the container namespace on ADD and down on DEL.

use libcni::net::{Kernel, Netns};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::spec::{Interface, IpConfig};
use libcni::{code, CniResult, Error};

struct Loopback;

/// Sets lo up or down in `ns`.
fn set_lo(ns: &Netns, up: bool) -> Result<(), Error> {
    let k = Kernel::new()?;
    let nl = k.connect_in(ns)?;
    let lo = k
        .run(nl.link("lo"))?
        .ok_or_else(|| Error::new(code::NETLINK, "lo is missing in the container"))?;
    if up {
        k.run(nl.set_up(lo.index, "lo"))
    } else {
        k.run(nl.set_down(lo.index, "lo"))
    }
}

impl Plugin for Loopback {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        set_lo(args.required_netns()?, true)?;
        let ip = |s: &str| IpConfig {
            version: None,
            address: s.parse().expect("valid literal"),
            gateway: None,
            interface: Some(0),
        };
        Ok(CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                mac: "00:00:00:00:00:00".into(),
                sandbox: args.netns.clone(),
                ..Default::default()
            }],
            ips: vec![ip("127.0.0.1/8"), ip("::1/128")],
            ..Default::default()
        })
    }

    /// The namespace may be gone already: nothing to do then.
    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        match args.netns() {
            Some(ns) => set_lo(ns, false),
            None => Ok(()),
        }
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let k = Kernel::new()?;
        let nl = k.connect_in(args.required_netns()?)?;
        if k.run(nl.link("lo"))?.is_some_and(|l| l.up) {
            Ok(())
        } else {
            Err(Error::new(code::CHECK_FAILED, "lo is down"))
        }
    }
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    skel::run(&Loopback, "CNI loopback plugin (cni-rs)")
}
