//! Which interface carries the overlay, and which address the node publishes, as
//! flanneld's LookupExtIface chooses them (IPv4; in an IPv6-only network IPv6, where
//! `--public-ipv6` and the IPv6 default route stand for the IPv4 ones): `--iface`
//! entries in order (an address: the interface holding it, with that address; a name:
//! that interface, with its first IPv4 address), then each `--iface-regex` (against every interface's IPv4 addresses,
//! then their names), then `--iface-can-reach` (the interface and source address of the
//! route to it); none given: the interface holding `--public-ip` if that is given, else
//! the default route's. The lease's PublicIP is `--public-ip` when given (a node behind
//! NAT), else the interface's address; the VXLAN device always sends from the latter.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use libcni::net::{LinkInfo, Netlink};
use regex::Regex;
use vxlan_overlay::node::Underlay;

/// One `--iface` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    Address(IpAddr),
    Name(String),
}

impl Choice {
    /// flanneld's reading: an IP address if it parses as one, else an interface name.
    pub fn parse(s: &str) -> Result<Choice, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Choice::Address(ip));
        }
        if libcni::names::is_ifname(s) {
            Ok(Choice::Name(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is neither an IP address nor an interface name"
            ))
        }
    }
}

/// How this node finds its underlay and what it publishes.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ifaces: Vec<Choice>,
    pub regexes: Vec<Regex>,
    pub can_reach: Option<IpAddr>,
    pub public_ip: Option<Ipv4Addr>,
    /// Published in the lease's PublicIPv6; in an IPv6-only network it also names the
    /// underlay when no other flag does.
    pub public_ipv6: Option<Ipv6Addr>,
}

/// Every link with its addresses of one family (`v6`), in index order (Go's
/// net.Interfaces()).
async fn links(nl: &Netlink, v6: bool) -> Result<Vec<(LinkInfo, Vec<IpNetwork>)>, String> {
    let mut links = nl.links().await.map_err(|e| e.to_string())?;
    links.sort_by_key(|l| l.index);
    let mut out = Vec::with_capacity(links.len());
    for l in links {
        let addrs = addresses(nl, &l, v6).await?;
        out.push((l, addrs));
    }
    Ok(out)
}

/// A link's addresses of one family, in the kernel's order; of IPv6 the global ones
/// (a link-local address carries no underlay).
async fn addresses(nl: &Netlink, l: &LinkInfo, v6: bool) -> Result<Vec<IpNetwork>, String> {
    let all = (nl.addresses(l.index, &l.name).await).map_err(|e| e.to_string())?;
    Ok(all
        .into_iter()
        .filter(|a| match a {
            IpNetwork::V4(_) => !v6,
            IpNetwork::V6(n) => v6 && n.ip().segments()[0] & 0xffc0 != 0xfe80,
        })
        .collect())
}

/// The underlay on `link`: with `addr` when given (it is on the link), else the link's
/// first address of the family. An IPv6 underlay (an IPv6-only network) has no IPv4
/// address: 0.0.0.0, which is what flanneld publishes as such a node's PublicIP.
fn on(link: &LinkInfo, addrs: &[IpNetwork], addr: Option<IpAddr>) -> Result<Underlay, String> {
    let a = match addr {
        Some(ip) => addrs.iter().find(|a| a.ip() == ip),
        None => addrs.first(),
    };
    let unspecified = Ipv4Network::from(Ipv4Addr::UNSPECIFIED);
    match a {
        Some(IpNetwork::V4(a)) => Ok(Underlay {
            link: link.clone(),
            ip: a.ip(),
            net: Ipv4Network::new(a.network(), a.prefix()).expect("from a valid address"),
            // the agent reads it when the network is dual stack
            ip6: None,
        }),
        Some(IpNetwork::V6(a)) => Ok(Underlay {
            link: link.clone(),
            ip: Ipv4Addr::UNSPECIFIED,
            net: unspecified,
            ip6: Some(*a),
        }),
        None => Err(format!("no usable address on {}", link.name)),
    }
}

impl Selection {
    /// No choice but the default route's interface.
    fn names_nothing(&self) -> bool {
        self.ifaces.is_empty() && self.regexes.is_empty() && self.can_reach.is_none()
    }

    /// The address the lease publishes for an underlay.
    pub fn public(&self, u: &Underlay) -> Ipv4Addr {
        self.public_ip.unwrap_or(u.ip)
    }

    /// The IPv6 address the lease publishes for an underlay, if it has one.
    pub fn public6(&self, u: &Underlay) -> Option<Ipv6Addr> {
        self.public_ipv6.or(u.ip6.map(|n| n.ip()))
    }

    /// The underlay this selection names now: by its IPv4 address, or (`v6`, an
    /// IPv6-only network, as flanneld's LookupExtIface for that stack) by its IPv6 one,
    /// with `--public-ipv6` and the IPv6 default route where IPv4 has `--public-ip` and
    /// its default route.
    pub async fn underlay(&self, nl: &Netlink, v6: bool) -> Result<Underlay, String> {
        if self.names_nothing() {
            let public = match v6 {
                true => self.public_ipv6.map(IpAddr::V6),
                false => self.public_ip.map(IpAddr::V4),
            };
            return match public {
                Some(ip) => by_address(nl, ip, v6).await,
                None if v6 => default6(nl).await,
                None => vxlan_overlay::node::underlay(nl, None, false)
                    .await
                    .map_err(|e| e.to_string()),
            };
        }
        let mut why = Vec::new();
        for c in &self.ifaces {
            let found = match c {
                Choice::Address(ip) => by_address(nl, *ip, v6).await,
                Choice::Name(n) => by_name(nl, n, v6).await,
            };
            match found {
                Ok(u) => return Ok(u),
                Err(e) => why.push(e),
            }
        }
        for r in &self.regexes {
            match by_regex(nl, r, v6).await {
                Ok(u) => return Ok(u),
                Err(e) => why.push(e),
            }
        }
        if let Some(ip) = self.can_reach {
            match by_route(nl, ip, v6).await {
                Ok(u) => return Ok(u),
                Err(e) => why.push(e),
            }
        }
        Err(format!(
            "no interface matches --iface/--iface-regex/--iface-can-reach: {}",
            why.join("; ")
        ))
    }
}

/// The interface of the IPv6 default route, with its first global IPv6 address.
async fn default6(nl: &Netlink) -> Result<Underlay, String> {
    let link = (nl
        .default_route_link_of(true)
        .await
        .map_err(|e| e.to_string()))?
    .ok_or("no IPv6 default route")?;
    let addrs = addresses(nl, &link, true).await?;
    on(&link, &addrs, None)
}

/// The interface holding `ip`: with it when it is of the underlay's family (`v6`), else
/// with the interface's first address of that family.
async fn by_address(nl: &Netlink, ip: IpAddr, v6: bool) -> Result<Underlay, String> {
    for (l, addrs) in links(nl, ip.is_ipv6()).await? {
        if addrs.iter().any(|a| a.ip() == ip) {
            if ip.is_ipv6() == v6 {
                return on(&l, &addrs, Some(ip));
            }
            return on(&l, &addresses(nl, &l, v6).await?, None);
        }
    }
    Err(format!("no interface has the address {ip}"))
}

async fn by_name(nl: &Netlink, name: &str, v6: bool) -> Result<Underlay, String> {
    let link = (nl.link(name).await.map_err(|e| e.to_string()))?
        .ok_or_else(|| format!("no interface {name}"))?;
    let addrs = addresses(nl, &link, v6).await?;
    on(&link, &addrs, None)
}

/// Addresses first, over every interface; then names.
async fn by_regex(nl: &Netlink, r: &Regex, v6: bool) -> Result<Underlay, String> {
    let all = links(nl, v6).await?;
    for (l, addrs) in &all {
        if let Some(a) = addrs.iter().find(|a| r.is_match(&a.ip().to_string())) {
            return on(l, addrs, Some(a.ip()));
        }
    }
    if let Some((l, addrs)) = all.iter().find(|(l, _)| r.is_match(&l.name)) {
        return on(l, addrs, None);
    }
    let seen: Vec<String> = (all.iter())
        .map(|(l, a)| {
            let ips: Vec<String> = a.iter().map(|a| a.ip().to_string()).collect();
            format!("{}:[{}]", l.name, ips.join(" "))
        })
        .collect();
    Err(format!(
        "the pattern {} matches none of the interfaces ({})",
        r.as_str(),
        seen.join(", ")
    ))
}

/// The route's interface with the route's source address (on that interface, unless
/// set by hand on the route: then as a host prefix), of the underlay's family.
async fn by_route(nl: &Netlink, ip: IpAddr, v6: bool) -> Result<Underlay, String> {
    if ip.is_ipv6() != v6 {
        return Err(format!(
            "{ip}: the underlay is {}",
            if v6 { "IPv6" } else { "IPv4" }
        ));
    }
    let (oif, src) = (nl.route_to(ip).await.map_err(|e| e.to_string()))?
        .ok_or_else(|| format!("no route to {ip}"))?;
    let link = (nl.link_by_index(oif).await.map_err(|e| e.to_string()))?
        .ok_or_else(|| format!("the route to {ip} names no interface"))?;
    let mut addrs = addresses(nl, &link, v6).await?;
    let src = src.filter(|s| s.is_ipv6() == v6);
    if let Some(s) = src.filter(|s| !addrs.iter().any(|a| a.ip() == *s)) {
        addrs.insert(0, IpNetwork::from(s));
    }
    on(&link, &addrs, src)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_iface_entry_is_an_address_or_a_name() {
        assert_eq!(
            Choice::parse("192.168.93.10").unwrap(),
            Choice::Address("192.168.93.10".parse().unwrap())
        );
        assert_eq!(Choice::parse("eth0").unwrap(), Choice::Name("eth0".into()));
        assert!(Choice::parse("a/b").is_err());
        assert!(Choice::parse("0123456789abcdefg").is_err());
    }
}
