//! `loopback`: sets `lo` up in the container namespace on ADD and down on DEL.

use libcni::net::{block_on, Netlink, Netns};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::spec::{Interface, IpConfig};
use libcni::{code, CniResult, Error};

struct Loopback;

/// Sets lo up or down; `Ok(false)` when the namespace is gone.
fn set_lo(netns: &str, up: bool) -> Result<bool, Error> {
    let ns = match Netns::open(netns) {
        Ok(ns) => ns,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    block_on(async {
        let nl = Netlink::connect_in(&ns)?;
        let lo = nl.link("lo").await?.ok_or_else(|| {
            libcni::net::Error::io("finding lo", std::io::ErrorKind::NotFound.into())
        })?;
        if up {
            nl.set_up(lo.index, "lo").await
        } else {
            nl.set_down(lo.index, "lo").await
        }
    })?
    .map(|_| true)
    .map_err(Error::from)
}

impl Plugin for Loopback {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        if !set_lo(&args.netns, true)? {
            return Err(Error::new(
                code::UNKNOWN_CONTAINER,
                format!("netns {} does not exist", args.netns),
            ));
        }
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

    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        if !args.netns.is_empty() {
            set_lo(&args.netns, false)?;
        }
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let ns = Netns::open_container(&args.netns)?;
        let up = block_on(async {
            let nl = Netlink::connect_in(&ns)?;
            Ok::<_, libcni::net::Error>(nl.link("lo").await?.is_some_and(|l| l.up))
        })??;
        if up {
            Ok(())
        } else {
            Err(Error::new(code::CHECK_FAILED, "lo is down"))
        }
    }
}

fn main() {
    skel::run(&Loopback, "CNI loopback plugin (cni-rs)")
}
