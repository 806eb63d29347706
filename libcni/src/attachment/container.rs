//! The container side of an attachment, the same for every plugin that puts an interface
//! into a container (what the reference plugins share as pkg/ipam ConfigureIface): the
//! result's addresses, the link up, its routes (a route without a gateway goes via the
//! first gateway of its family), arp_notify; and CHECK's comparison of that interface
//! with prevResult.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use super::Attachment;
use crate::mac::format_mac;
use crate::net::{self, sysctl_set, Kernel, LinkInfo, Netlink, Netns, RouteSpec};
use crate::skel::CmdArgs;
use crate::spec::{CniResult, Error, IpConfig, Route};

fn gone(name: &str) -> net::Error {
    net::Error::io(
        format!("finding {name} in the container"),
        std::io::ErrorKind::NotFound.into(),
    )
}

/// The first address of the subnet of `a`: the gateway when none is given.
pub fn first_address(a: IpNetwork) -> Option<IpAddr> {
    match a {
        IpNetwork::V4(n) => n.nth(1).map(IpAddr::V4),
        IpNetwork::V6(n) => {
            let first = u128::from(n.network()).checked_add(1)?;
            Some(IpAddr::V6(first.into()))
        }
    }
}

/// The gateway a route without one goes through: the first of its family.
fn default_gateway(ips: &[IpConfig], v4: bool) -> Option<IpAddr> {
    ips.iter()
        .filter(|i| i.address.is_ipv4() == v4)
        .find_map(|i| i.gateway)
}

/// The kernel route for a result route out of link `oif`.
pub fn route_spec(rt: &Route, ips: &[IpConfig], oif: u32) -> RouteSpec {
    RouteSpec {
        gw: rt.gw.or_else(|| default_gateway(ips, rt.dst.is_ipv4())),
        metric: rt.priority,
        mtu: rt.mtu,
        advmss: rt.advmss,
        table: rt.table,
        scope: rt.scope.and_then(|s| u8::try_from(s).ok()),
        ..RouteSpec::new(rt.dst, None, oif)
    }
}

/// How a DEL takes away a link born in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Out of service at once (down, and renamed to the attachment's retired name, which
    /// frees its name for the next ADD) and deleted by a child not waited for: the kernel
    /// holds whoever deletes a link 15-25 ms while it unregisters it.
    Detached,
    /// Deleted before DEL returns, for a link whose presence even down keeps the next ADD
    /// from making its own (a passthru macvlan: one per master).
    Waited,
}

/// Deletes in line a link of `a`'s retired name that `ours` says is ours: what a DEL left
/// whose deleter never ran (killed in between). An ADD of the attachment calls it before
/// making its link, so the old one goes with the container's next use of the name.
pub fn delete_retired(
    k: &Kernel,
    inside: &Netlink,
    a: &Attachment,
    ours: impl Fn(&LinkInfo) -> bool,
) -> Result<(), Error> {
    match k.run(inside.link(&a.retired_name()))?.filter(ours) {
        Some(l) => k
            .run(inside.delete_link_index(l.index, &l.name))
            .map(|_| ()),
        None => Ok(()),
    }
}

/// DEL of a link born in the container (macvlan, tap, dummy): takes `a`'s interface
/// away when `ours` says the link there is the one ADD made, and a retired one a killed
/// DEL left ([`delete_retired`]); nothing there is fine. Whatever keeps the link from
/// being retired or its deleter from starting, it is deleted here instead.
pub fn delete_own(
    k: &Kernel,
    inside: &Netlink,
    netns: &Netns,
    a: &Attachment,
    removal: Removal,
    ours: impl Fn(&LinkInfo) -> bool,
) -> Result<(), Error> {
    if let Err(e) = delete_retired(k, inside, a, &ours) {
        eprintln!("a retired link stays: {}: {}", e.msg, e.details);
    }
    let Some(l) = k.run(inside.link(a.ifname()))?.filter(&ours) else {
        return Ok(());
    };
    if removal == Removal::Detached {
        let retired = a.retired_name();
        match k.run(inside.retire_link(l.index, &l.name, &retired)) {
            Ok(()) => match netns.run(|| net::delete_link_detached(l.index)) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => eprintln!("deleting {retired} here: cannot start its deleter ({e})"),
                Err(e) => eprintln!("deleting {retired} here: {e}"),
            },
            Err(e) => eprintln!("deleting {} here: {}: {}", l.name, e.msg, e.details),
        }
    }
    k.run(inside.delete_link_index(l.index, &l.name))
        .map(|_| ())
}

/// Duplicate address detection on the container's IPv6 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dad {
    /// Skipped: the addresses are usable at once (the reference's accept_dad 0).
    Off,
    /// Done (the bridge's `enabledad`: accept_dad and enhanced_dad 1), and waited for.
    On,
}

impl Dad {
    pub fn from_flag(on: bool) -> Dad {
        if on {
            Dad::On
        } else {
            Dad::Off
        }
    }
}

/// How long ADD waits for DAD to finish, and how often it looks (the reference's).
const DAD_SETTLE: Duration = Duration::from_secs(5);
const DAD_POLL: Duration = Duration::from_millis(50);

/// Configures `ifname` inside the container from the result `r`.
pub async fn configure(
    nl: &Netlink,
    netns: &Netns,
    ifname: &str,
    r: &CniResult,
) -> Result<(), net::Error> {
    configure_with(nl, netns, ifname, r, Dad::Off).await
}

/// [`configure`], with or without DAD on the IPv6 addresses.
pub async fn configure_with(
    nl: &Netlink,
    netns: &Netns,
    ifname: &str,
    r: &CniResult,
    dad: Dad,
) -> Result<(), net::Error> {
    let link = nl.link(ifname).await?.ok_or_else(|| gone(ifname))?;
    if r.ips.iter().any(|i| i.address.is_ipv4()) {
        // Neighbours learn a moved address at once (the reference's arp_notify).
        let key = format!("net/ipv4/conf/{}/arp_notify", link.name);
        netns.run(|| sysctl_set(&key, "1"))??;
    }
    let v6 = r.ips.iter().any(|i| i.address.is_ipv6());
    if v6 {
        let conf = format!("net/ipv6/conf/{}", link.name);
        let settings: &[(&str, &str)] = match dad {
            Dad::Off => &[("accept_dad", "0")],
            Dad::On => &[("enhanced_dad", "1"), ("accept_dad", "1")],
        };
        // keep_addr_on_down: the addresses survive the link going down (reference v1.7).
        for (key, value) in settings.iter().chain(&[("keep_addr_on_down", "1")]) {
            let key = format!("{conf}/{key}");
            netns.run(|| sysctl_set(&key, value))??;
        }
    }
    for ip in &r.ips {
        nl.add_address_dad(link.index, ifname, ip.address, dad == Dad::On)
            .await?;
    }
    nl.set_up(link.index, ifname).await?;
    if v6 && dad == Dad::On {
        settle(nl, link.index, ifname).await?;
    }
    for rt in &r.routes {
        nl.add_route(&route_spec(rt, &r.ips, link.index)).await?;
    }
    Ok(())
}

/// Waits (bounded) until no IPv6 address of the link is tentative; one that failed DAD
/// is an error, as with the reference.
async fn settle(nl: &Netlink, index: u32, ifname: &str) -> Result<(), net::Error> {
    let deadline = Instant::now() + DAD_SETTLE;
    loop {
        let (tentative, failed) = nl.unsettled_addresses(index, ifname).await?;
        if let Some(a) = failed.first() {
            return Err(net::Error::io(
                format!("duplicate address detection on {ifname}: {a} is in use"),
                std::io::ErrorKind::AddrInUse.into(),
            ));
        }
        if tentative.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(net::Error::io(
                format!(
                    "duplicate address detection on {ifname}: {} still tentative after {}s",
                    tentative[0],
                    DAD_SETTLE.as_secs()
                ),
                std::io::ErrorKind::TimedOut.into(),
            ));
        }
        std::thread::sleep(DAD_POLL);
    }
}

/// What differs between `ifname` in the container and prevResult (empty: nothing).
pub async fn differences(
    nl: &Netlink,
    netns_path: &str,
    ifname: &str,
    prev: &CniResult,
) -> Result<Vec<String>, net::Error> {
    let mut problems = Vec::new();
    let Some(link) = nl.link(ifname).await? else {
        problems.push(format!("{ifname} is missing in {netns_path}"));
        return Ok(problems);
    };
    let want = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox == netns_path);
    if let Some(i) = want.map(|i| &prev.interfaces[i]) {
        if !i.mac.is_empty() && !i.mac.eq_ignore_ascii_case(&format_mac(&link.mac)) {
            problems.push(format!(
                "{ifname} has MAC {}, prevResult says {}",
                format_mac(&link.mac),
                i.mac
            ));
        }
    }
    if !link.up {
        problems.push(format!("{ifname} is down"));
    }
    let addrs = nl.addresses(link.index, ifname).await?;
    for ip in prev
        .ips
        .iter()
        .filter(|ip| want.is_none() || ip.interface.is_none() || ip.interface == want)
    {
        if !addrs.contains(&ip.address) {
            problems.push(format!("address {} is missing", ip.address));
        }
    }
    for v6 in [false, true] {
        let routes = nl.routes(v6).await?;
        for rt in prev.routes.iter().filter(|r| r.dst.is_ipv6() == v6) {
            let gw_ok = |g: Option<IpAddr>| rt.gw.is_none() || g == rt.gw;
            if !routes.iter().any(|k| k.dst == rt.dst && gw_ok(k.gw)) {
                problems.push(format!("route {} is missing", rt.dst));
            }
        }
    }
    Ok(problems)
}

/// CHECK's end: the plugin's own `problems` and what differs of the container interface
/// (seen through `inside`) from prevResult, as one error (104), or Ok when none.
pub fn check(
    k: &Kernel,
    inside: &Netlink,
    args: &CmdArgs,
    prev: &CniResult,
    mut problems: Vec<String>,
) -> Result<(), Error> {
    problems.extend(k.run(differences(inside, &args.netns, &args.ifname, prev))?);
    Error::check(
        &format!("{} differs from prevResult", args.ifname),
        problems,
    )
}
