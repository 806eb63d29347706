//! `ptp`: a veth per container and no bridge. The host end carries each gateway as a
//! host address and a host route to each container address; the container reaches its
//! gateway as an on-link host route and its subnet (and the IPAM routes) through it, so
//! all traffic goes through the host's routing. `ipMasq` and `mtu` as the reference's.

use ipnetwork::IpNetwork;
use libcni::attachment::{self, claim, container, veth, Attachment, PendingLease, Rules, Undo};
use libcni::delegate::Delegate;
use libcni::net::{self, Kernel, LinkInfo, Netlink, RouteSpec};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::spec::{Dns, Interface, IpConfig};
use libcni::{CniResult, Error};
use serde::Deserialize;

/// Route scopes (linux/rtnetlink.h).
const SCOPE_LINK: u8 = 253;
const SCOPE_ANY: u8 = 255;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conf {
    #[serde(default)]
    ip_masq: bool,
    /// v1.6+: `iptables` or `nftables`, both our nftables masquerade.
    #[serde(default)]
    ip_masq_backend: Option<String>,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    dns: DnsConf,
}

/// The config's `dns` as Go reads it: a list given, even empty, is set; a missing or
/// null one is not.
#[derive(Debug, Default, Deserialize)]
struct DnsConf {
    #[serde(default)]
    nameservers: Option<Vec<String>>,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    search: Option<Vec<String>>,
    #[serde(default)]
    options: Option<Vec<String>>,
}

impl DnsConf {
    /// The DNS that replaces IPAM's in the result, as the reference's dnsConfSet: any
    /// field set replaces all of it (empty lists included); none set keeps IPAM's.
    fn replacement(&self) -> Option<Dns> {
        let set = self.nameservers.is_some()
            || self.search.is_some()
            || self.options.is_some()
            || !self.domain.is_empty();
        set.then(|| Dns {
            nameservers: self.nameservers.clone().unwrap_or_default(),
            domain: self.domain.clone(),
            search: self.search.clone().unwrap_or_default(),
            options: self.options.clone().unwrap_or_default(),
        })
    }
}

impl Conf {
    fn load(args: &CmdArgs) -> Result<(Conf, Delegate), Error> {
        let c: Conf = args.parse_conf()?;
        let ipam = Delegate::ipam(args)
            .ok_or_else(|| Error::config("ptp needs an IPAM plugin (\"ipam\" with a \"type\")"))?;
        Ok((c, ipam))
    }

    fn rules(&self) -> Rules {
        Rules {
            masquerade: self.ip_masq,
            ..Rules::default()
        }
    }
}

fn host_prefix(ip: std::net::IpAddr) -> IpNetwork {
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(ip, bits).expect("a host prefix is always valid")
}

/// Host side: each gateway as a host address of the veth, a host route to each address.
async fn route_to_container(
    nl: &Netlink,
    host: &LinkInfo,
    ips: &[IpConfig],
) -> Result<(), net::Error> {
    for ip in ips {
        if let Some(gw) = ip.gateway {
            nl.add_address(host.index, &host.name, host_prefix(gw))
                .await?;
        }
        let to = RouteSpec::new(host_prefix(ip.address.ip()), None, host.index);
        nl.add_route(&to).await?;
    }
    Ok(())
}

/// Container side, once it is configured: the subnet is not on the link but behind the
/// gateway, which is on the link.
async fn route_through_gateway(
    nl: &Netlink,
    ifname: &str,
    ips: &[IpConfig],
) -> Result<(), net::Error> {
    let link = nl.link(ifname).await?.ok_or_else(|| {
        net::Error::io(
            format!("finding {ifname}"),
            std::io::ErrorKind::NotFound.into(),
        )
    })?;
    for ip in ips {
        let Some(gw) = ip.gateway else { continue };
        let subnet = IpNetwork::new(ip.address.network(), ip.address.prefix())
            .expect("a network of a valid prefix is valid");
        let on_link = RouteSpec {
            scope: Some(SCOPE_ANY),
            ..RouteSpec::new(subnet, None, link.index)
        };
        nl.delete_route(&on_link).await?;
        let gateway = RouteSpec {
            scope: Some(SCOPE_LINK),
            src: Some(ip.address.ip()),
            ..RouteSpec::new(host_prefix(gw), None, link.index)
        };
        nl.add_route(&gateway).await?;
        let via = RouteSpec {
            src: Some(ip.address.ip()),
            ..RouteSpec::new(subnet, Some(gw), link.index)
        };
        nl.add_route(&via).await?;
    }
    Ok(())
}

fn enable_forwarding(ips: &[IpConfig]) -> Result<(), Error> {
    for (v4, key) in [
        (true, "net/ipv4/ip_forward"),
        (false, "net/ipv6/conf/all/forwarding"),
    ] {
        if ips.iter().any(|i| i.address.is_ipv4() == v4) {
            net::sysctl_set(key, "1")?;
        }
    }
    Ok(())
}

struct Ptp;

impl Plugin for Ptp {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let (conf, ipam) = Conf::load(args)?;
        if conf.ip_masq {
            // Refused on ADD only, where the reference reads it.
            libcni::firewall::check_masq_backend(conf.ip_masq_backend.as_deref())?;
        }
        let netns = args.required_netns()?;
        let a = Attachment::of(args);
        let k = Kernel::new()?;
        let mut pending = Some(PendingLease::start(&ipam, args)?);
        let mut undo = Undo::new();
        let mtu = (conf.mtu != 0).then_some(conf.mtu);
        let create = veth::create(k.host(), &a, netns, a.container_mac(), mtu);
        let host = claim(&k, &mut pending, create, veth::exists(k.host(), &a))?;
        undo.delete_link(&k, k.host(), &host.name);
        k.run(
            k.host()
                .label_and_up(host.index, &host.name, &a.alias(), None),
        )?;
        let lease = pending.expect("kept unless the claim failed").wait()?;
        let mut r = lease.addressed(1)?;
        for ip in &mut r.ips {
            ip.gateway = ip.gateway.or_else(|| container::first_address(ip.address));
        }
        enable_forwarding(&r.ips)?;
        if r.ips.iter().any(|i| i.address.is_ipv6()) {
            // The host end's link-local address answers neighbour solicitations at once.
            net::sysctl_set(&format!("net/ipv6/conf/{}/accept_dad", host.name), "0")?;
        }
        let masq = conf.rules();
        if masq.add(&a, &r.ips)? {
            let (a, added) = (
                a.clone(),
                r.ips.iter().map(|i| i.address).collect::<Vec<_>>(),
            );
            undo.push("removing the rules", move || masq.remove(&a, Some(&added)));
        }
        let inside = k.connect_in(netns)?;
        k.run(container::configure(&inside, netns, a.ifname(), &r))?;
        k.run(route_through_gateway(&inside, a.ifname(), &r.ips))?;
        k.run(route_to_container(k.host(), &host, &r.ips))?;
        r.interfaces = vec![
            Interface::host(&host.name, &host.mac),
            Interface::container(a.ifname(), &a.container_mac(), &args.netns),
        ];
        if let Some(dns) = conf.dns.replacement() {
            r.dns = dns;
        }
        undo.commit();
        lease.commit();
        Ok(r)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let (conf, ipam) = Conf::load(args)?;
        let a = Attachment::of(args);
        let ipam = ipam.start("DEL", args)?;
        let prev_addrs: Option<Vec<IpNetwork>> = args
            .prev_result()
            .ok()
            .flatten()
            .map(|r| r.ips.iter().map(|i| i.address).collect());
        let links = Kernel::new().and_then(|k| {
            let inside = args.netns().map(|ns| k.connect_in(ns)).transpose()?;
            k.run(veth::delete(
                k.host(),
                inside.as_ref(),
                &a,
                a.container_mac(),
                true,
            ))
        });
        let rules = conf.rules().remove(&a, prev_addrs.as_deref());
        links.and(rules).and(ipam.wait().map(|_| ()))
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let (_, ipam) = Conf::load(args)?;
        let prev = args.required_prev_result()?;
        ipam.run("CHECK", args)?;
        let a = Attachment::of(args);
        let k = Kernel::new()?;
        let mut problems = Vec::new();
        if k.run(k.host().link(&a.host_veth()))?.is_none() {
            problems.push(format!("host veth {} is missing", a.host_veth()));
        }
        let inside = k.connect_in(args.required_netns()?)?;
        container::check(&k, &inside, args, &prev, problems)
    }

    fn status(&self, args: &CmdArgs) -> Result<(), Error> {
        Conf::load(args)?.1.run("STATUS", args).map(|_| ())
    }

    /// The host veths and masquerade entries of attachments the runtime no longer lists,
    /// then the IPAM plugin's GC.
    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        let (conf, ipam) = Conf::load(args)?;
        let valid = args.valid_attachments()?;
        let k = Kernel::new()?;
        k.run(attachment::delete_stale(
            k.host(),
            "veth",
            &args.conf.name,
            &valid,
        ))?;
        // IPAM first: the rules' removal holds every nft stripe until this process exits.
        ipam.run("GC", args)?;
        conf.rules()
            .remove_stale(&args.conf.name, &args.valid_container_ids()?)
    }
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    libcni::delegate::link(&host_local::LINKED);
    skel::run(&Ptp, "CNI ptp plugin (cni-rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_any_input_never_panics() {
        const FIELDS: &[&str] = &["ipMasq", "ipMasqBackend", "mtu", "ipam", "dns"];
        libcni::arbitrary::probe_reading(FIELDS, |a| Conf::load(a).map(|_| ()));
    }
}
