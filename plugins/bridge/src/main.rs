//! `bridge`: connects a container to a Linux bridge in the host namespace through a veth
//! pair, addresses it through the IPAM delegate, and optionally makes the bridge the
//! gateway, masquerades, turns on hairpin or checks source MACs. The steps are libcni's
//! bridge attachment; this file maps the reference's config onto them.

mod config;

use libcni::attachment::bridged::{self, BridgeSpec};
use libcni::attachment::PendingLease;
use libcni::delegate::Delegate;
use libcni::net::Kernel;
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::{trace, CniResult, Error};

use config::BridgeConf;

struct Bridge;

fn spec(args: &CmdArgs) -> Result<BridgeSpec, Error> {
    spec_of(BridgeConf::load(args)?)
}

fn spec_of(c: BridgeConf) -> Result<BridgeSpec, Error> {
    Ok(BridgeSpec {
        mtu: c.mtu(),
        bridge: c.bridge,
        is_gateway: c.is_gateway,
        is_default_gateway: c.is_default_gateway,
        force_address: c.force_address,
        ip_masq: c.ip_masq,
        masq_exempt: Vec::new(),
        hairpin: c.hairpin_mode,
        promisc: c.promisc_mode,
        macspoofchk: c.macspoofchk,
        enable_dad: c.enable_dad,
        container_down: c.disable_container_interface,
        port_isolation: c.port_isolation,
        mac: c.mac,
        dns: c.dns,
    })
}

impl Plugin for Bridge {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let c = BridgeConf::load(args)?;
        c.check_for_add(args)?;
        let spec = spec_of(c)?;
        args.required_netns()?;
        // IPAM first: it runs while the veth is made.
        let ipam = Delegate::ipam(args);
        let pending = PendingLease::start_if(ipam.as_ref(), args)?;
        trace::mark("ipam started");
        let k = Kernel::new()?;
        bridged::add(&k, args, &spec, pending)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        bridged::del(
            &Kernel::new()?,
            args,
            &spec(args)?,
            Delegate::ipam(args).as_ref(),
        )
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        bridged::check(
            &Kernel::new()?,
            args,
            &spec(args)?,
            Delegate::ipam(args).as_ref(),
        )
    }

    fn status(&self, args: &CmdArgs) -> Result<(), Error> {
        match Delegate::ipam(args) {
            Some(i) => i.run("STATUS", args).map(|_| ()),
            None => Ok(()),
        }
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        bridged::gc(
            &Kernel::new()?,
            args,
            &spec(args)?,
            Delegate::ipam(args).as_ref(),
        )
    }
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    libcni::delegate::link(&host_local::LINKED);
    skel::run(&Bridge, "CNI bridge plugin (cni-rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_any_input_never_panics() {
        const FIELDS: &[&str] = &[
            "bridge",
            "isGateway",
            "isDefaultGateway",
            "forceAddress",
            "ipMasq",
            "mtu",
            "hairpinMode",
            "promiscMode",
            "macspoofchk",
            "enabledad",
            "disableContainerInterface",
            "portIsolation",
            "ipMasqBackend",
            "preserveDefaultVlan",
            "ipam",
            "dns",
            "vlan",
            "vlanTrunk",
            "runtimeConfig",
            "args",
            "mac",
        ];
        libcni::arbitrary::probe_reading(FIELDS, |a| spec(a).map(|_| ()));
    }
}
