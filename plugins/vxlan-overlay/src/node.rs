//! One node's share of the overlay in the kernel: the underlay (its link, IPv4 address
//! and IPv6 address if it has one), the VXLAN device of one family (flannel.N over IPv4,
//! flannel-v6.N over IPv6), and the state of every peer of that family, programmed with
//! replace semantics so a second run changes nothing and whatever is no longer in the
//! table goes. Our routes carry [`ROUTE_PROTO`], so we find them again (and only them).

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use libcni::net::{self, LinkInfo, LinkTuning, Netlink, RouteSpec, Vxlan, VxlanState};

use crate::config::Overlay;

/// The cluster as this node programs it, one family: its network says which.
#[derive(Debug, Clone, Copy)]
pub struct Mesh {
    pub network: IpNetwork,
    pub direct_routing: bool,
    /// Every peer is routed via its underlay address on the underlay link, with no
    /// device (flannel's host-gw backend).
    pub host_gw: bool,
}

/// rtm_protocol of the overlay's routes.
pub const ROUTE_PROTO: u8 = 73;
/// What VXLAN over IPv4 adds to a frame: outer IP, UDP, VXLAN and inner Ethernet.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The same over IPv6 (a 40-byte outer header).
pub const VXLAN6_OVERHEAD: u32 = 70;

/// This node's underlay.
#[derive(Debug, Clone)]
pub struct Underlay {
    pub link: LinkInfo,
    pub ip: Ipv4Addr,
    /// The underlay's on-link network (for directRouting).
    pub net: Ipv4Network,
    /// Its first global IPv6 address, with the on-link prefix (dual stack, IPv6-only).
    pub ip6: Option<Ipv6Network>,
}

/// A peer node in one family, as the kernel is told of it: an IPv4 subnet behind an
/// IPv4 underlay address, or an IPv6 subnet behind an IPv6 one.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub subnet: IpNetwork,
    pub underlay_ip: IpAddr,
    pub mac: [u8; 6],
}

fn not_found(what: String) -> net::Error {
    net::Error::io(what, std::io::ErrorKind::NotFound.into())
}

/// The underlay: `name`, or the interface of the default route; its first IPv4 address
/// and its first global IPv6 one. An IPv6-only network's (`v6_only`) is the IPv6 default
/// route's interface and needs a global IPv6 address but no IPv4 one (0.0.0.0/32 stands
/// for it, and no IPv4 peer is ever programmed over it).
pub async fn underlay(
    nl: &Netlink,
    name: Option<&str>,
    v6_only: bool,
) -> Result<Underlay, net::Error> {
    let link = match name {
        Some(n) => nl
            .link(n)
            .await?
            .ok_or_else(|| not_found(format!("underlay interface {n}")))?,
        None => nl.default_route_link_of(v6_only).await?.ok_or_else(|| {
            let family = if v6_only { "IPv6 " } else { "" };
            not_found(format!("no underlayInterface and no {family}default route"))
        })?,
    };
    let addrs = nl.addresses(link.index, &link.name).await?;
    let ip6 = addrs.iter().find_map(|a| match a {
        IpNetwork::V6(v6) if !is_link_local(v6.ip()) => Some(*v6),
        _ => None,
    });
    let v4 = addrs.iter().find_map(|a| match a {
        IpNetwork::V4(v4) => Some(*v4),
        IpNetwork::V6(_) => None,
    });
    let addr = match v6_only {
        true if ip6.is_none() => {
            return Err(not_found(format!("a global IPv6 address on {}", link.name)))
        }
        true => Ipv4Network::from(Ipv4Addr::UNSPECIFIED),
        false => v4.ok_or_else(|| not_found(format!("an IPv4 address on {}", link.name)))?,
    };
    let net = Ipv4Network::new(addr.network(), addr.prefix()).expect("from a valid address");
    Ok(Underlay {
        link,
        ip: addr.ip(),
        net,
        ip6,
    })
}

/// `u` with its link's first global IPv6 address, if it has one (an underlay chosen by
/// its IPv4 address, flanneld's way).
pub async fn with_ipv6(nl: &Netlink, mut u: Underlay) -> Result<Underlay, net::Error> {
    u.ip6 = (nl.addresses(u.link.index, &u.link.name).await?)
        .into_iter()
        .find_map(|a| match a {
            IpNetwork::V6(v6) if !is_link_local(v6.ip()) => Some(v6),
            _ => None,
        });
    Ok(u)
}

/// fe80::/10: every IPv6 link has one; it is neither an underlay address nor ours.
fn is_link_local(ip: std::net::Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// The device this node's config asks for, with the MAC it keeps.
pub fn vtep(o: &Overlay, u: &Underlay, mac: [u8; 6], mtu: u32) -> Vxlan {
    Vxlan {
        name: o.vtep_name(),
        vni: o.vni,
        port: o.port,
        local: IpAddr::V4(u.ip),
        dev: u.link.index,
        mac,
        mtu,
        learning: false,
        gbp: false,
    }
}

/// Makes the device, or keeps the one there if it is as asked (VNI, port, local address,
/// underlay link, MAC, learning, GBP; its MTU is set in place, as a changed Backend.MTU
/// asks); one that is not is made anew. Its MAC is set at creation, never after. As flannel's, it carries the node subnet's network address
/// as a /32 (a /128 for IPv6), the source of what the host itself sends into the
/// overlay, and no other address of that family (an old subnet's would make a route via
/// that address, now another node's, invalid); an IPv6 device keeps its link-local one.
pub async fn ensure_vtep(
    nl: &Netlink,
    want: &Vxlan,
    subnet: IpNetwork,
) -> Result<LinkInfo, net::Error> {
    let l = ensure_device(nl, want).await?;
    let own = own_address(subnet);
    nl.add_address(l.index, &l.name, own).await?;
    for a in nl.addresses(l.index, &l.name).await? {
        if same_family(a, own) && a != own {
            nl.delete_address(l.index, &l.name, a).await?;
        }
    }
    Ok(l)
}

fn own_address(subnet: IpNetwork) -> IpNetwork {
    let host = if subnet.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(subnet.network(), host).expect("a host prefix is valid")
}

/// Whether `a` is of `own`'s family and not IPv6 link-local.
fn same_family(a: IpNetwork, own: IpNetwork) -> bool {
    match a {
        IpNetwork::V4(_) => own.is_ipv4(),
        IpNetwork::V6(v6) => own.is_ipv6() && !is_link_local(v6.ip()),
    }
}

/// Whether the link is the VXLAN device wanted, as made.
fn device_matches(l: &LinkInfo, s: &VxlanState, want: &Vxlan) -> bool {
    same_device(l, s, want) && l.mac == want.mac && l.mtu == want.mtu
}

/// Whether the link is a VXLAN device as wanted in all but its MAC and MTU, the two
/// settings a device is kept through (the MAC kept, the MTU set in place).
fn same_device(l: &LinkInfo, s: &VxlanState, want: &Vxlan) -> bool {
    l.kind.as_deref() == Some("vxlan")
        && s.vni == Some(want.vni)
        && s.port == Some(want.port)
        && s.local == Some(want.local)
        && s.link == Some(want.dev)
        && s.learning == Some(want.learning)
        && s.gbp == want.gbp
}

/// The MAC of the device there (flanneld's, or ours made before) when it is as wanted in
/// all but its MAC and MTU: that device is kept, as flanneld keeps it, and its MAC with
/// it.
pub async fn reusable_vtep_mac(nl: &Netlink, want: &Vxlan) -> Result<Option<[u8; 6]>, net::Error> {
    let Some(l) = nl.link(&want.name).await? else {
        return Ok(None);
    };
    let s = nl.vxlan_state(&want.name).await?.unwrap_or_default();
    let mac = <[u8; 6]>::try_from(&l.mac[..]).ok();
    let unicast = mac.filter(|m| m[0] & 1 == 0 && *m != [0; 6]);
    Ok(unicast.filter(|_| same_device(&l, &s, want)))
}

/// How a link named like the device serves.
enum Fit {
    /// It is the device wanted.
    Exact,
    /// It is, once its MTU is set.
    Mtu,
    /// It is something else.
    Other,
}

/// The link named like the device, and how it serves.
async fn existing(nl: &Netlink, want: &Vxlan) -> Result<Option<(LinkInfo, Fit)>, net::Error> {
    let Some(l) = nl.link(&want.name).await? else {
        return Ok(None);
    };
    let s = nl.vxlan_state(&want.name).await?.unwrap_or_default();
    let fit = if device_matches(&l, &s, want) {
        Fit::Exact
    } else if same_device(&l, &s, want) && l.mac == want.mac {
        Fit::Mtu
    } else {
        Fit::Other
    };
    Ok(Some((l, fit)))
}

async fn ensure_device(nl: &Netlink, want: &Vxlan) -> Result<LinkInfo, net::Error> {
    if let Some((mut l, fit)) = existing(nl, want).await? {
        if let Fit::Mtu = fit {
            // Re-creating it would drop every peer's FDB and neighbour entry on it.
            let mtu = LinkTuning {
                mtu: Some(want.mtu),
                ..LinkTuning::default()
            };
            nl.tune_link(l.index, &l.name, &mtu).await?;
            l.mtu = want.mtu;
        }
        if let Fit::Exact | Fit::Mtu = fit {
            if !l.up {
                nl.set_up(l.index, &l.name).await?;
            }
            return Ok(l);
        }
        nl.delete_link(&want.name).await?;
    }
    if let Err(e) = nl.create_vxlan(want).await {
        // Concurrent ADDs on a node without the device all make it; the first wins, and
        // what it made serves the others if it is the device they want.
        return match existing(nl, want).await? {
            Some((l, Fit::Exact)) if e.errno() == Some(libc::EEXIST) => Ok(l),
            _ => Err(e),
        };
    }
    nl.link(&want.name)
        .await?
        .ok_or_else(|| not_found(format!("{} after its creation", want.name)))
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// Whether `p` is reached directly over the underlay (host-gw; directRouting, on-link
/// peer).
fn direct(m: &Mesh, u: &Underlay, p: &Peer) -> bool {
    m.host_gw
        || m.direct_routing
            && match p.underlay_ip {
                IpAddr::V4(ip) => u.net.contains(ip),
                IpAddr::V6(ip) => u.ip6.is_some_and(|n| n.contains(ip)),
            }
}

/// The route to `p`'s subnet: via its underlay address, or through the device on-link
/// via the subnet's network address (which the neighbour entry resolves). Without a
/// device (host-gw) every route is direct.
fn route_to(m: &Mesh, u: &Underlay, vtep: Option<&LinkInfo>, p: &Peer) -> RouteSpec {
    let (gw, oif, onlink) = match vtep.filter(|_| !direct(m, u, p)) {
        None => (p.underlay_ip, u.link.index, false),
        Some(vtep) => (p.subnet.network(), vtep.index, true),
    };
    RouteSpec {
        onlink,
        protocol: Some(ROUTE_PROTO),
        ..RouteSpec::new(p.subnet, Some(gw), oif)
    }
}

/// Programs every peer (neighbour, FDB entry, route; or a direct route) and removes the
/// overlay state of anything not among `peers`. A peer the kernel refuses does not stop
/// the others: the first refusal is returned once everything else is done. `vtep` None:
/// host-gw, routes only.
pub async fn program(
    nl: &Netlink,
    m: &Mesh,
    u: &Underlay,
    vtep: Option<&LinkInfo>,
    peers: &[Peer],
) -> Result<(), net::Error> {
    let mut refused = None;
    let tunnelled: Vec<&Peer> = peers.iter().filter(|p| !direct(m, u, p)).collect();
    for p in peers {
        if let Err(e) = add_peer(nl, m, u, vtep, p).await {
            refused.get_or_insert(e);
        }
    }
    // What is ours and no longer wanted.
    for r in nl.routes(m.network.is_ipv6()).await? {
        let dst = r.dst;
        let ours =
            r.protocol == ROUTE_PROTO && m.network.contains(dst.network()) && dst != m.network;
        let wanted = peers.iter().any(|p| {
            let want = route_to(m, u, vtep, p);
            p.subnet == dst && r.gw == want.gw && r.oif == Some(want.oif)
        });
        if ours && !wanted {
            let spec = RouteSpec {
                protocol: Some(ROUTE_PROTO),
                ..RouteSpec::new(r.dst, r.gw, r.oif.unwrap_or_default())
            };
            nl.delete_route(&spec).await?;
        }
    }
    let Some(vtep) = vtep else {
        return refused.map_or(Ok(()), Err);
    };
    for n in nl.neighbours(vtep.index).await? {
        let wanted = tunnelled
            .iter()
            .any(|p| n.ip == Some(p.subnet.network()) && n.mac == p.mac);
        if let (false, Some(ip)) = (wanted, n.ip) {
            nl.delete_neighbour(vtep.index, ip).await?;
        }
    }
    for f in nl.fdb(vtep.index).await? {
        let wanted = tunnelled
            .iter()
            .any(|p| f.mac == p.mac && f.ip == Some(p.underlay_ip));
        if !wanted {
            nl.delete_fdb(vtep.index, &f).await?;
        }
    }
    refused.map_or(Ok(()), Err)
}

/// Programs one peer: neighbour, FDB entry and route, or a direct route.
pub async fn add_peer(
    nl: &Netlink,
    m: &Mesh,
    u: &Underlay,
    vtep: Option<&LinkInfo>,
    p: &Peer,
) -> Result<(), net::Error> {
    if let Some(vtep) = vtep.filter(|_| !direct(m, u, p)) {
        nl.replace_neighbour(vtep.index, p.subnet.network(), &p.mac)
            .await?;
        nl.replace_fdb(vtep.index, &p.mac, p.underlay_ip).await?;
    }
    nl.replace_route(&route_to(m, u, vtep, p)).await
}

/// Removes one peer's state, as [`add_peer`] made it; its FDB entry stays when `shared`
/// (another peer's is the same).
pub async fn remove_peer(
    nl: &Netlink,
    m: &Mesh,
    u: &Underlay,
    vtep: Option<&LinkInfo>,
    p: &Peer,
    shared: bool,
) -> Result<(), net::Error> {
    nl.delete_route(&route_to(m, u, vtep, p)).await?;
    let Some(vtep) = vtep.filter(|_| !direct(m, u, p)) else {
        return Ok(());
    };
    nl.delete_neighbour(vtep.index, p.subnet.network()).await?;
    if !shared {
        let entry = net::Entry {
            mac: p.mac.to_vec(),
            ip: Some(p.underlay_ip),
        };
        nl.delete_fdb(vtep.index, &entry).await?;
    }
    Ok(())
}

/// What CHECK finds missing of the device (with the address of `subnet`) and the peers'
/// state; `want` None: host-gw, no device, the peers' routes only.
pub async fn differences(
    nl: &Netlink,
    m: &Mesh,
    u: &Underlay,
    want: Option<&Vxlan>,
    subnet: IpNetwork,
    peers: &[Peer],
) -> Result<Vec<String>, net::Error> {
    let mut problems = Vec::new();
    let vtep = match want {
        None => None,
        Some(want) => match device_differences(nl, want, subnet, &mut problems).await? {
            Some(vtep) => Some(vtep),
            None => return Ok(problems),
        },
    };
    let routes = nl.routes(subnet.is_ipv6()).await?;
    let (neighbours, fdb) = match &vtep {
        Some(v) => (nl.neighbours(v.index).await?, nl.fdb(v.index).await?),
        None => (Vec::new(), Vec::new()),
    };
    for p in peers {
        let r = route_to(m, u, vtep.as_ref(), p);
        if !routes
            .iter()
            .any(|k| k.dst == p.subnet && k.gw == r.gw && k.oif == Some(r.oif))
        {
            problems.push(format!("route to {} is missing", p.subnet));
        }
        let Some(vtep) = vtep.as_ref().filter(|_| !direct(m, u, p)) else {
            continue;
        };
        let gw = p.subnet.network();
        if !neighbours
            .iter()
            .any(|n| n.ip == Some(gw) && n.mac == p.mac)
        {
            problems.push(format!("neighbour {gw} of {} is missing", vtep.name));
        }
        if !fdb
            .iter()
            .any(|f| f.mac == p.mac && f.ip == Some(p.underlay_ip))
        {
            problems.push(format!("FDB entry for {} is missing", p.underlay_ip));
        }
    }
    Ok(problems)
}

/// What differs of the device itself (its settings, its address of `subnet`); None when
/// it is missing.
async fn device_differences(
    nl: &Netlink,
    want: &Vxlan,
    subnet: IpNetwork,
    problems: &mut Vec<String>,
) -> Result<Option<LinkInfo>, net::Error> {
    let Some(vtep) = nl.link(&want.name).await? else {
        problems.push(format!("VXLAN device {} is missing", want.name));
        return Ok(None);
    };
    let s = nl.vxlan_state(&want.name).await?.unwrap_or_default();
    if !device_matches(&vtep, &s, want) {
        problems.push(format!(
            "{} is not a VXLAN device of VNI {} port {} from {} on #{} with MTU {}, learning {}, GBP {}",
            want.name, want.vni, want.port, want.local, want.dev, want.mtu,
            on_off(want.learning), on_off(want.gbp)
        ));
    }
    let own = own_address(subnet);
    let held: Vec<IpNetwork> = nl
        .addresses(vtep.index, &vtep.name)
        .await?
        .into_iter()
        .filter(|a| same_family(*a, own))
        .collect();
    if held != [own] {
        problems.push(format!("{} holds {held:?}, not just {own}", want.name));
    }
    Ok(Some(vtep))
}

/// Removes the device (its neighbours, FDB entries and routes go with it) and our direct
/// routes to subnets of `network`; none when the network is not known any more, since
/// another overlay's direct routes carry the same protocol.
pub async fn remove(
    nl: &Netlink,
    vtep: &str,
    network: Option<IpNetwork>,
) -> Result<(), net::Error> {
    nl.delete_link(vtep).await?;
    let Some(network) = network else {
        return Ok(());
    };
    for r in nl.routes(network.is_ipv6()).await? {
        if r.protocol == ROUTE_PROTO && network.contains(r.dst.network()) {
            let spec = RouteSpec {
                protocol: Some(ROUTE_PROTO),
                ..RouteSpec::new(r.dst, r.gw, r.oif.unwrap_or_default())
            };
            nl.delete_route(&spec).await?;
        }
    }
    Ok(())
}
