//! A container on a Linux bridge of the host: the `bridge` plugin's whole job, and the
//! container half of the overlay (whose node bridge is the same kind of bridge). ADD,
//! DEL, CHECK and GC here read as the steps a person would take; each step is a small
//! function over the netlink layer, the IPAM delegate, or our nftables sets.

use ipnetwork::IpNetwork;

use super::{claim, container, veth, Attachment, PendingLease, Rules, Undo};
use crate::delegate::Delegate;
use crate::net::{self, Kernel, LinkInfo, Netlink};
use crate::skel::CmdArgs;
use crate::spec::{code, CniResult, Dns, Error, Interface, IpConfig, Route};
use crate::trace;

/// How the container is put on the bridge: the reference bridge plugin's settings.
#[derive(Debug, Clone, Default)]
pub struct BridgeSpec {
    pub bridge: String,
    pub mtu: Option<u32>,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    /// Traffic to these networks is not masqueraded (for an address none holds: to the
    /// container's subnet).
    pub masq_exempt: Vec<IpNetwork>,
    pub hairpin: bool,
    pub promisc: bool,
    pub macspoofchk: bool,
    /// `enabledad`: the container's IPv6 addresses go through DAD (ADD waits for it).
    pub enable_dad: bool,
    /// `disableContainerInterface`: the container end stays down (layer 2 only).
    pub container_down: bool,
    /// `portIsolation`: the host end is an isolated port (isolated ports reach only
    /// non-isolated ones).
    pub port_isolation: bool,
    /// The container MAC the runtime asked for; otherwise the attachment's own.
    pub mac: Option<[u8; 6]>,
    /// The result's `dns` (the config's, as the reference reports it).
    pub dns: Option<Dns>,
}

impl BridgeSpec {
    fn container_mac(&self, a: &Attachment) -> [u8; 6] {
        self.mac.unwrap_or_else(|| a.container_mac())
    }

    fn rules(&self, a: &Attachment) -> Rules {
        Rules {
            masquerade: self.ip_masq,
            masquerade_exempt: self.masq_exempt.clone(),
            mac_check: self.macspoofchk.then(|| self.container_mac(a)),
        }
    }
}

/// ADD: the bridge, a veth with its container end born in the container, an address from
/// the IPAM lease `pending` (started by the caller before anything else, so it runs
/// meanwhile), masquerade and MAC checks, the container configured, the gateway on the
/// bridge. Whatever this call created is undone if a later step fails.
pub fn add(
    k: &Kernel,
    args: &CmdArgs,
    spec: &BridgeSpec,
    mut pending: Option<PendingLease<'_>>,
) -> Result<CniResult, Error> {
    let netns = args.required_netns()?;
    let a = Attachment::of(args);
    let mut undo = Undo::new();
    // As the reference: a gateway bridge's MAC is fixed before the port joins, so the
    // containers' gateway MAC never changes under them.
    let pin = spec.is_gateway && pending.is_some();
    let bridge = k.run(ensure_bridge(k.host(), spec, pin))?;
    trace::mark("bridge ensured");
    let mac = spec.container_mac(&a);
    let host = claim(
        k,
        &mut pending,
        veth::create(k.host(), &a, netns, mac, spec.mtu),
        veth::exists(k.host(), &a),
    )?;
    undo.delete_link(k, k.host(), &host.name);
    trace::mark("veth created");
    k.run(attach(k.host(), spec, &a, &host, &bridge))?;
    trace::mark("port attached");
    let lease = pending.map(|p| p.wait()).transpose()?;
    trace::mark("ipam answered");
    let mut r = lease
        .as_ref()
        .map(|l| l.result().clone())
        .unwrap_or_default();
    set_gateway_routes(spec, &mut r);
    if spec.rules(&a).add(&a, &r.ips)? {
        let (a, added) = (a.clone(), addrs(&r));
        undo.push("removing the rules", move || {
            spec.rules(&a).remove(&a, Some(&added))
        });
    }
    trace::mark("rules added");
    let inside = k.connect_in(netns)?;
    trace::mark("connected in the container");
    if !spec.container_down {
        let dad = container::Dad::from_flag(spec.enable_dad);
        k.run(container::configure_with(
            &inside,
            netns,
            a.ifname(),
            &r,
            dad,
        ))?;
    }
    trace::mark("container configured");
    if spec.is_gateway {
        k.run(set_gateways(k.host(), spec, &bridge, &r.ips))?;
        enable_forwarding(&r.ips)?;
    }
    trace::mark("gateway set");
    // The bridge's MAC as it is now that the port is on it: a bridge without a MAC of
    // its own takes its lowest port's. A pinned one keeps the MAC it was given.
    let bridge = match pin {
        true => bridge,
        false => k
            .run(k.host().link_by_index(bridge.index))?
            .unwrap_or(bridge),
    };
    r.interfaces = vec![
        Interface::host(&bridge.name, &bridge.mac),
        Interface::host(&host.name, &host.mac),
        Interface::container(a.ifname(), &mac, &args.netns),
    ];
    for ip in &mut r.ips {
        ip.interface = Some(2);
    }
    // The config's DNS when it gives any (else IPAM's), as the reference from v1.2.
    if let Some(d) = spec.dns.as_ref().filter(|d| !d.is_empty()) {
        r.dns = d.clone();
    }
    undo.commit();
    lease.map(|l| l.commit());
    Ok(r)
}

/// DEL: the veth pair, the rules and the addresses; each step runs even when another
/// fails, so the IPAM delegate is always waited for; what is already gone is fine.
pub fn del(
    k: &Kernel,
    args: &CmdArgs,
    spec: &BridgeSpec,
    ipam: Option<&Delegate>,
) -> Result<(), Error> {
    let a = Attachment::of(args);
    let first = ipam.is_some_and(Delegate::needs_interface);
    let mut ipam = ipam.map(|i| i.start("DEL", args)).transpose()?;
    trace::mark("ipam started");
    let released = first.then(|| ipam.take().map(|r| r.wait()).transpose());
    let prev_addrs = args.prev_result().ok().flatten().map(|r| addrs(&r));
    let rules = spec.rules(&a).remove(&a, prev_addrs.as_deref());
    trace::mark("rules removed");
    let links = args
        .netns()
        .map(|ns| k.connect_in(ns))
        .transpose()
        .map_err(Error::from)
        .and_then(|inside| {
            k.run(veth::delete(
                k.host(),
                inside.as_ref(),
                &a,
                spec.container_mac(&a),
                false,
            ))
        });
    trace::mark("links deleted");
    let ipam = released.unwrap_or_else(|| ipam.map(|r| r.wait()).transpose());
    trace::mark("ipam answered");
    links.and(rules).and(ipam.map(|_| ()))
}

/// CHECK: the bridge and the host veth on it, the container's interface as prevResult
/// says, and the IPAM plugin's own CHECK.
pub fn check(
    k: &Kernel,
    args: &CmdArgs,
    spec: &BridgeSpec,
    ipam: Option<&Delegate>,
) -> Result<(), Error> {
    let prev = args.required_prev_result()?;
    if let Some(i) = ipam {
        i.run("CHECK", args)?;
    }
    let netns = args.required_netns()?;
    let a = Attachment::of(args);
    let problems = k.run(host_differences(k.host(), spec, &a))?;
    container::check(k, &k.connect_in(netns)?, args, &prev, problems)
}

/// GC: the host veths and rules of this network's attachments that the runtime no longer
/// lists (their namespaces may be long gone: the rules are found by label), then the
/// IPAM plugin's GC.
pub fn gc(
    k: &Kernel,
    args: &CmdArgs,
    spec: &BridgeSpec,
    ipam: Option<&Delegate>,
) -> Result<(), Error> {
    let valid = args.valid_attachments()?;
    k.run(super::delete_stale(
        k.host(),
        "veth",
        &args.conf.name,
        &valid,
    ))?;
    // Any attachment's rules carry the MAC check's set entries, whatever its MAC.
    let rules = Rules {
        mac_check: spec.macspoofchk.then_some([0; 6]),
        ..spec.rules(&Attachment::of(args))
    };
    // The IPAM plugin's GC first: the rules' removal holds every nft stripe until this
    // process exits, which no ADD or DEL of the node should wait out.
    if let Some(i) = ipam {
        i.run("GC", args)?;
    }
    rules.remove_stale(&args.conf.name, &args.valid_container_ids()?)
}

fn addrs(r: &CniResult) -> Vec<IpNetwork> {
    r.ips.iter().map(|i| i.address).collect()
}

/// The bridge, made if missing, its MAC fixed with `pin`; a link of that name that is
/// not a bridge is refused.
async fn ensure_bridge(nl: &Netlink, spec: &BridgeSpec, pin: bool) -> Result<LinkInfo, Error> {
    let mut bridge = nl.ensure_bridge(&spec.bridge, spec.mtu).await?;
    if bridge.kind.as_deref() != Some("bridge") {
        return Err(Error::config(format!(
            "{:?} already exists but is not a bridge",
            spec.bridge
        )));
    }
    if spec.promisc && !bridge.promisc {
        nl.set_promisc(bridge.index, &bridge.name).await?;
    }
    if pin {
        bridge = nl.pin_bridge_mac(bridge).await?;
    }
    Ok(bridge)
}

/// The host veth labelled with the attachment, on the bridge, up (and hairpin).
async fn attach(
    nl: &Netlink,
    spec: &BridgeSpec,
    a: &Attachment,
    host: &LinkInfo,
    bridge: &LinkInfo,
) -> Result<(), net::Error> {
    nl.label_and_up(host.index, &host.name, &a.alias(), Some(bridge.index))
        .await?;
    if spec.hairpin {
        nl.set_hairpin(host.index, &host.name).await?;
    }
    if spec.port_isolation {
        nl.set_isolated(host.index, &host.name).await?;
    }
    Ok(())
}

/// The reference's gateway rules: with isGateway an address without a gateway gets its
/// subnet's first address; with isDefaultGateway each family gets a default route via
/// its first gateway unless the result already has one with a gateway.
fn set_gateway_routes(spec: &BridgeSpec, r: &mut CniResult) {
    if spec.is_gateway {
        for ip in r.ips.iter_mut().filter(|i| i.gateway.is_none()) {
            ip.gateway = container::first_address(ip.address);
        }
    }
    if !spec.is_default_gateway {
        return;
    }
    for v4 in [true, false] {
        let Some(gw) = r
            .ips
            .iter()
            .filter(|i| i.address.is_ipv4() == v4)
            .find_map(|i| i.gateway)
        else {
            continue;
        };
        let any: IpNetwork = if v4 { "0.0.0.0/0" } else { "::/0" }
            .parse()
            .expect("literal");
        if !r.routes.iter().any(|rt| rt.dst == any && rt.gw.is_some()) {
            r.routes.push(Route::new(any, Some(gw)));
        }
    }
}

/// Puts each gateway on the bridge; an IPv4 address of another subnet there is replaced
/// with `forceAddress` and refused without it.
async fn set_gateways(
    nl: &Netlink,
    spec: &BridgeSpec,
    bridge: &LinkInfo,
    ips: &[IpConfig],
) -> Result<(), Error> {
    for ip in ips {
        let Some(gw) = ip.gateway else { continue };
        let gw_net = IpNetwork::new(gw, ip.address.prefix()).map_err(|e| {
            Error::config(format!("gateway {gw} does not fit address {}", ip.address))
                .details(e.to_string())
        })?;
        // Present already, as after the bridge's first ADD: the reference too is done
        // once it meets the gateway among the bridge's addresses. forceAddress still
        // clears the others away.
        let added = nl.add_address(bridge.index, &bridge.name, gw_net).await?;
        if gw.is_ipv6() || !(added || spec.force_address) {
            continue;
        }
        let others: Vec<IpNetwork> = nl
            .addresses(bridge.index, &bridge.name)
            .await?
            .into_iter()
            .filter(|a| a.is_ipv4() && *a != gw_net)
            .collect();
        if others.is_empty() {
            continue;
        }
        if !spec.force_address {
            nl.delete_address(bridge.index, &bridge.name, gw_net)
                .await?;
            return Err(Error::new(
                code::INVALID_CONFIG,
                format!(
                    "bridge {} already has address {}, not {gw_net} (set forceAddress to replace it)",
                    bridge.name, others[0]
                ),
            ));
        }
        for old in others {
            nl.delete_address(bridge.index, &bridge.name, old).await?;
        }
        // Once more: a secondary address goes with the primary it was added under.
        nl.add_address(bridge.index, &bridge.name, gw_net).await?;
    }
    Ok(())
}

fn enable_forwarding(ips: &[IpConfig]) -> Result<(), Error> {
    if ips.iter().any(|i| i.address.is_ipv4()) {
        net::sysctl_set("net/ipv4/ip_forward", "1")?;
    }
    if ips.iter().any(|i| i.address.is_ipv6()) {
        net::sysctl_set("net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// What CHECK finds wrong on the host side: the bridge, and the host veth on it.
async fn host_differences(
    nl: &Netlink,
    spec: &BridgeSpec,
    a: &Attachment,
) -> Result<Vec<String>, net::Error> {
    let veth = a.host_veth();
    let mut problems = Vec::new();
    match (nl.link(&spec.bridge).await?, nl.link(&veth).await?) {
        (None, _) => problems.push(format!("bridge {} is missing", spec.bridge)),
        (_, None) => problems.push(format!("host veth {veth} is missing")),
        (Some(b), Some(h)) if h.controller != Some(b.index) => {
            problems.push(format!("{veth} is not attached to {}", b.name))
        }
        _ => {}
    }
    Ok(problems)
}
