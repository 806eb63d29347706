//! `portmap`: a chained plugin that forwards host ports (the `portMappings` capability) to
//! the container's addresses from prevResult, for traffic arriving at the host, made on it
//! (localhost included), and from the container to its own host port (hairpin). The rules
//! live in per-container nftables chains, so DEL needs no prevResult.

use std::net::IpAddr;

use libcni::firewall::{self, lock, Label, PortMapping, PortMasq};
use libcni::net::{self, Kernel};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::{code, CniResult, Error};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conf {
    name: String,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    /// Masquerade hairpin and localhost traffic (default true).
    #[serde(default)]
    snat: Option<bool>,
    #[serde(default)]
    masq_all: bool,
    /// v1.6+: `iptables` or `nftables`; both are our nftables chains (checked by `load`
    /// with the reference's rules about backend-specific fields).
    #[serde(default)]
    backend: Option<String>,
    /// iptables mark bits: nftables masquerades directly and needs no mark; checked only.
    #[serde(default)]
    mark_masq_bit: Option<i64>,
    #[serde(default)]
    external_set_mark_chain: Option<String>,
    /// iptables match syntax; refused rather than ignored.
    #[serde(default, rename = "conditionsV4")]
    conditions_v4: Option<Vec<String>>,
    #[serde(default, rename = "conditionsV6")]
    conditions_v6: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    #[serde(default)]
    port_mappings: Vec<PortMapping>,
}

impl Conf {
    fn load(args: &CmdArgs) -> Result<Conf, Error> {
        let c: Conf = args.parse_conf()?;
        if c.mark_masq_bit.is_some() && c.external_set_mark_chain.is_some() {
            return Err(Error::config(
                "cannot specify both externalSetMarkChain and markMasqBit",
            ));
        }
        if c.mark_masq_bit.is_some_and(|b| !(0..=31).contains(&b)) {
            return Err(Error::config("markMasqBit must be between 0 and 31"));
        }
        c.check_backend()?;
        if c.conditions_v4.as_ref().is_some_and(|v| !v.is_empty())
            || c.conditions_v6.as_ref().is_some_and(|v| !v.is_empty())
        {
            return Err(Error::new(
                code::UNSUPPORTED_FIELD,
                "conditionsV4/conditionsV6 (iptables matches) are not supported",
            ));
        }
        Ok(c)
    }

    /// The reference's backend rules: a field of one backend with the other one asked
    /// for is refused, then a backend that is neither.
    fn check_backend(&self) -> Result<(), Error> {
        let mut specific: [Vec<&str>; 2] = [Vec::new(), Vec::new()];
        if self.external_set_mark_chain.is_some() {
            specific[0].push("externalSetMarkChain");
        }
        for (field, conds) in [
            ("conditionsV4", &self.conditions_v4),
            ("conditionsV6", &self.conditions_v6),
        ] {
            // As the reference tells them apart: iptables matches start with - or !.
            match conds.as_deref().and_then(|c| c.first()).map(String::as_str) {
                None | Some("") => {}
                Some(c) if c.starts_with(['-', '!']) => specific[0].push(field),
                Some(_) => specific[1].push(field),
            }
        }
        let Some(backend) = self.backend.as_deref() else {
            return Ok(());
        };
        let (wrong, fields) = if backend == "iptables" {
            ("nftables", &specific[1])
        } else {
            ("iptables", &specific[0])
        };
        if !fields.is_empty() {
            return Err(Error::config(format!(
                "{backend} backend was requested but configuration contains {wrong}-specific options [{}]",
                fields.join(" ")
            )));
        }
        if backend != "iptables" && backend != "nftables" {
            return Err(Error::config(format!("unrecognized backend {backend:?}")));
        }
        Ok(())
    }

    fn masq(&self) -> PortMasq {
        match (self.masq_all, self.snat.unwrap_or(true)) {
            (true, _) => PortMasq::All,
            (false, true) => PortMasq::Hairpin,
            (false, false) => PortMasq::None,
        }
    }
}

/// The first IPv4 and first IPv6 address of the container interface in prevResult.
fn container_ips(r: &CniResult, ifname: &str) -> Vec<IpAddr> {
    let mine = |i: Option<usize>| {
        i.and_then(|i| r.interfaces.get(i))
            .is_none_or(|iface| iface.name == ifname && !iface.sandbox.is_empty())
    };
    let pick = |v4: bool| {
        r.ips
            .iter()
            .find(|ip| ip.address.is_ipv4() == v4 && mine(ip.interface))
            .map(|ip| ip.address.ip())
    };
    [pick(true), pick(false)].into_iter().flatten().collect()
}

/// Lets localhost traffic DNATed to the container leave through the host interfaces of
/// prevResult. Their names are claims: only links the kernel knows by that name are
/// touched, under the name the kernel reports.
fn enable_localnet_routing(r: &CniResult) -> Result<(), Error> {
    let k = Kernel::new()?;
    for iface in r.interfaces.iter().filter(|i| i.sandbox.is_empty()) {
        if !libcni::names::is_ifname(&iface.name) {
            continue;
        }
        if let Some(link) = k.run(k.host().link(&iface.name))? {
            net::sysctl_set(&format!("net/ipv4/conf/{}/route_localnet", link.name), "1")?;
        }
    }
    Ok(())
}

/// A container that replaces another on a UDP host port would never receive while the
/// old flows live: deletes them, as the reference does (a failure is only logged).
fn forget_stale_udp_flows(mappings: &[PortMapping], ips: &[IpAddr]) {
    for m in mappings
        .iter()
        .filter(|m| m.protocol.eq_ignore_ascii_case("udp"))
    {
        for v6 in [false, true] {
            if ips.iter().any(|ip| ip.is_ipv6() == v6) {
                if let Err(e) = net::conntrack::delete_udp_flows_to(v6, m.host_port) {
                    eprintln!("portmap: flows to UDP port {} kept: {e}", m.host_port);
                }
            }
        }
    }
}

struct Portmap;

impl Plugin for Portmap {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let conf = Conf::load(args)?;
        let prev = args.required_prev_result()?;
        let mappings = &conf.runtime_config.port_mappings;
        if mappings.is_empty() {
            return Ok(prev);
        }
        let ips = container_ips(&prev, &args.ifname);
        if ips.is_empty() {
            return Err(Error::config(format!(
                "prevResult has no address on {} to forward ports to",
                args.ifname
            )));
        }
        let rules =
            firewall::port_mappings(&conf.name, &args.container_id, mappings, &ips, conf.masq())?;
        lock::hold(&Label::new(&conf.name, &args.container_id))?;
        firewall::add_port_mappings(&conf.name, &args.container_id, &rules)?;
        if conf.masq() == PortMasq::Hairpin && ips.iter().any(IpAddr::is_ipv4) {
            enable_localnet_routing(&prev)?;
        }
        forget_stale_udp_flows(mappings, &ips);
        Ok(prev)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = Conf::load(args)?;
        lock::hold(&Label::new(&conf.name, &args.container_id))?;
        // Whether or not the runtime still has the mappings: the chains are named by
        // network and container, and a chain that is not there costs the kernel nothing.
        firewall::remove_port_mappings(&conf.name, &args.container_id)
    }

    /// Removes the rules of this network's containers that are not valid any more.
    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        let valid = args.valid_container_ids()?;
        lock::hold_all()?;
        let script = firewall::remove_stale_port_mappings(&args.conf.name, &valid)?;
        firewall::run(&script, "removing stale port mappings")
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = Conf::load(args)?;
        let prev = args.required_prev_result()?;
        let listed = firewall::listed_port_mappings(&conf.name, &args.container_id);
        let mut missing = Vec::new();
        for m in &conf.runtime_config.port_mappings {
            for ip in container_ips(&prev, &args.ifname)
                .into_iter()
                .filter(|ip| m.reaches(ip))
            {
                let to = if ip.is_ipv4() {
                    format!("{ip}:{}", m.container_port)
                } else {
                    format!("[{ip}]:{}", m.container_port)
                };
                let rule = format!(
                    "dport {} dnat {} to {to}",
                    m.host_port,
                    if ip.is_ipv4() { "ip" } else { "ip6" }
                );
                if !listed.contains(&rule) {
                    missing.push(format!("{} {} -> {to}", m.protocol, m.host_port));
                }
            }
        }
        Error::check("port mappings missing", missing)
    }
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    skel::run(&Portmap, "CNI portmap plugin (cni-rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_any_input_never_panics() {
        const FIELDS: &[&str] = &[
            "runtimeConfig",
            "portMappings",
            "hostPort",
            "containerPort",
            "protocol",
            "hostIP",
            "snat",
            "masqAll",
            "markMasqBit",
            "backend",
            "externalSetMarkChain",
            "conditionsV4",
            "conditionsV6",
        ];
        libcni::arbitrary::probe_reading(FIELDS, |a| {
            let conf = Conf::load(a)?;
            let prev = a.prev_result()?.unwrap_or_default();
            let ips = container_ips(&prev, &a.ifname);
            let mappings = &conf.runtime_config.port_mappings;
            firewall::port_mappings(&conf.name, &a.container_id, mappings, &ips, conf.masq())?;
            Ok(())
        });
    }
}
