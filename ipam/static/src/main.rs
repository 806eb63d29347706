//! `static` IPAM: hands out exactly the addresses (with their gateways), routes and DNS of
//! the config, as the reference does: CNI_ARGS `IP=` (CIDR, comma-separated) adds
//! addresses and `GATEWAY=` sets the gateway of those of them whose subnet holds it;
//! `args.cni.ips` and then runtimeConfig `ips` replace them. Nothing is persisted.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use libcni::ipam::Requests;
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::spec::{Dns, IpConfig, Route, Version};
use libcni::{CniResult, Error};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct NetConf {
    ipam: Option<IpamConf>,
}

#[derive(Debug, Default, Deserialize)]
struct IpamConf {
    #[serde(default)]
    addresses: Vec<AddressConf>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

#[derive(Debug, Deserialize)]
struct AddressConf {
    address: String,
    #[serde(default)]
    gateway: Option<IpAddr>,
}

/// An address with its prefix, "10.0.0.5/24", or what the reference says of `what`.
fn cidr(s: &str, what: &str) -> Result<IpNetwork, Error> {
    s.contains('/')
        .then(|| s.parse::<IpNetwork>().ok())
        .flatten()
        .ok_or_else(|| Error::config(format!("{what}, got: '{s}'")))
}

const NOT_CIDR_IP: &str = "the 'ip' field is expected to be in CIDR notation";
const NOT_CIDR_IPS: &str = "an entry in the 'ips' field is NOT in CIDR notation";
const NOT_CIDR_ADDRESS: &str = "the 'address' field is expected to be in CIDR notation";

/// One address of the config or of a request; the config's are read only if no request
/// replaced them, as the reference reads them.
enum Entry<'a> {
    Conf(&'a AddressConf),
    Parsed(IpConfig),
}

/// The addresses to hand out, with the routes and DNS; the reference's order, so the
/// first bad entry is the one it names.
fn load(args: &CmdArgs) -> Result<(Vec<IpConfig>, Vec<Route>, Dns), Error> {
    let n: NetConf = args.parse_conf()?;
    let ipam = n
        .ipam
        .ok_or_else(|| Error::config("IPAM config missing 'ipam' key"))?;
    let mut entries: Vec<Entry> = ipam.addresses.iter().map(Entry::Conf).collect();
    let r = Requests::of(args, true)?;
    for s in &r.cni_args {
        entries.push(Entry::Parsed(ip_config(cidr(s, NOT_CIDR_IP)?, None)));
    }
    for g in &r.gateways {
        let gw: IpAddr = g
            .parse()
            .map_err(|_| Error::config(format!("invalid gateway address: {g}")))?;
        for e in &mut entries {
            if let Entry::Parsed(a) = e {
                if a.address.contains(gw) {
                    a.gateway = Some(gw);
                }
            }
        }
    }
    for replacing in [&r.args, &r.runtime_config] {
        if !replacing.is_empty() {
            entries = replacing
                .iter()
                .map(|s| Ok(Entry::Parsed(ip_config(cidr(s, NOT_CIDR_IPS)?, None))))
                .collect::<Result<_, Error>>()?;
        }
    }
    let addrs = entries
        .into_iter()
        .map(|e| match e {
            Entry::Conf(a) => Ok(ip_config(cidr(&a.address, NOT_CIDR_ADDRESS)?, a.gateway)),
            Entry::Parsed(a) => Ok(a),
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let v4 = addrs.iter().filter(|a| a.address.is_ipv4()).count();
    if args.version < Version(0, 3, 0) && (v4 > 1 || addrs.len() - v4 > 1) {
        return Err(Error::config(format!(
            "CNI version {} does not support more than 1 address per family",
            args.conf.cni_version
        )));
    }
    Ok((addrs, ipam.routes, ipam.dns))
}

fn ip_config(address: IpNetwork, gateway: Option<IpAddr>) -> IpConfig {
    IpConfig {
        version: None,
        address,
        gateway,
        interface: None,
    }
}

struct Static;

impl Plugin for Static {
    fn uses_netns(&self) -> bool {
        false
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let (ips, routes, dns) = load(args)?;
        Ok(CniResult {
            ips,
            routes,
            dns,
            ..Default::default()
        })
    }

    /// Nothing was allocated.
    fn del(&self, _: &CmdArgs) -> Result<(), Error> {
        Ok(())
    }

    /// Each configured address is in prevResult, with its gateway where one is set.
    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let (ips, _, _) = load(args)?;
        let prev = args.required_prev_result()?;
        let missing: Vec<String> = ips
            .iter()
            .filter(|want| {
                !prev.ips.iter().any(|have| {
                    have.address.ip() == want.address.ip()
                        && (want.gateway.is_none() || have.gateway == want.gateway)
                })
            })
            .map(|want| format!("static: address {} is not in prevResult", want.address))
            .collect();
        Error::check(
            &format!("static addresses of {} differ", args.ifname),
            missing,
        )
    }
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    skel::run(&Static, "CNI static plugin (cni-rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_any_input_never_panics() {
        const FIELDS: &[&str] = &[
            "ipam",
            "addresses",
            "address",
            "gateway",
            "routes",
            "dns",
            "runtimeConfig",
            "ips",
            "args",
            "cni",
        ];
        libcni::arbitrary::probe_reading(FIELDS, |a| load(a).map(|_| ()));
    }
}
