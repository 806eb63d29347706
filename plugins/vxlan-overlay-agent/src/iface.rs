//! Which interface carries the overlay, and which address the node publishes, as
//! flanneld's LookupExtIface chooses them (IPv4): `--iface` entries in order (an address:
//! the interface holding it, with that address; a name: that interface, with its first
//! IPv4 address), then each `--iface-regex` (against every interface's IPv4 addresses,
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
    /// Published in the lease's PublicIPv6 (the IPv6 underlay itself is not chosen here).
    pub public_ipv6: Option<Ipv6Addr>,
}

/// Every link with its IPv4 addresses, in index order (Go's net.Interfaces()).
async fn links(nl: &Netlink) -> Result<Vec<(LinkInfo, Vec<Ipv4Network>)>, String> {
    let mut links = nl.links().await.map_err(|e| e.to_string())?;
    links.sort_by_key(|l| l.index);
    let mut out = Vec::with_capacity(links.len());
    for l in links {
        let v4 = v4_addresses(nl, &l).await?;
        out.push((l, v4));
    }
    Ok(out)
}

/// A link's IPv4 addresses, in the kernel's order.
async fn v4_addresses(nl: &Netlink, l: &LinkInfo) -> Result<Vec<Ipv4Network>, String> {
    let all = (nl.addresses(l.index, &l.name).await).map_err(|e| e.to_string())?;
    Ok(all
        .into_iter()
        .filter_map(|a| match a {
            IpNetwork::V4(v4) => Some(v4),
            IpNetwork::V6(_) => None,
        })
        .collect())
}

/// The underlay on `link`: with `addr` when given (it is on the link), else the link's
/// first IPv4 address.
fn on(link: &LinkInfo, addrs: &[Ipv4Network], addr: Option<Ipv4Addr>) -> Result<Underlay, String> {
    let a = match addr {
        Some(ip) => addrs.iter().find(|a| a.ip() == ip),
        None => addrs.first(),
    }
    .ok_or_else(|| format!("no IPv4 address on {}", link.name))?;
    Ok(Underlay {
        link: link.clone(),
        ip: a.ip(),
        net: Ipv4Network::new(a.network(), a.prefix()).expect("from a valid address"),
        // the agent reads it when the network is dual stack
        ip6: None,
    })
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

    /// The underlay this selection names now.
    pub async fn underlay(&self, nl: &Netlink) -> Result<Underlay, String> {
        if self.names_nothing() {
            return match self.public_ip {
                Some(ip) => by_address(nl, IpAddr::V4(ip)).await,
                None => vxlan_overlay::node::underlay(nl, None)
                    .await
                    .map_err(|e| e.to_string()),
            };
        }
        let mut why = Vec::new();
        for c in &self.ifaces {
            let found = match c {
                Choice::Address(ip) => by_address(nl, *ip).await,
                Choice::Name(n) => by_name(nl, n).await,
            };
            match found {
                Ok(u) => return Ok(u),
                Err(e) => why.push(e),
            }
        }
        for r in &self.regexes {
            match by_regex(nl, r).await {
                Ok(u) => return Ok(u),
                Err(e) => why.push(e),
            }
        }
        if let Some(ip) = self.can_reach {
            match by_route(nl, ip).await {
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

async fn by_address(nl: &Netlink, ip: IpAddr) -> Result<Underlay, String> {
    let IpAddr::V4(v4) = ip else {
        return Err(format!("{ip}: the underlay is IPv4"));
    };
    for (l, addrs) in links(nl).await? {
        if addrs.iter().any(|a| a.ip() == v4) {
            return on(&l, &addrs, Some(v4));
        }
    }
    Err(format!("no interface has the address {ip}"))
}

async fn by_name(nl: &Netlink, name: &str) -> Result<Underlay, String> {
    let link = (nl.link(name).await.map_err(|e| e.to_string()))?
        .ok_or_else(|| format!("no interface {name}"))?;
    let addrs = v4_addresses(nl, &link).await?;
    on(&link, &addrs, None)
}

/// Addresses first, over every interface; then names.
async fn by_regex(nl: &Netlink, r: &Regex) -> Result<Underlay, String> {
    let all = links(nl).await?;
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
/// set by hand on the route: then as a /32).
async fn by_route(nl: &Netlink, ip: IpAddr) -> Result<Underlay, String> {
    let (oif, src) = (nl.route_to(ip).await.map_err(|e| e.to_string()))?
        .ok_or_else(|| format!("no route to {ip}"))?;
    let link = (nl.link_by_index(oif).await.map_err(|e| e.to_string()))?
        .ok_or_else(|| format!("the route to {ip} names no interface"))?;
    let mut addrs = v4_addresses(nl, &link).await?;
    let src = match src {
        Some(IpAddr::V4(s)) => Some(s),
        _ => None,
    };
    if let Some(s) = src.filter(|s| !addrs.iter().any(|a| a.ip() == *s)) {
        addrs.insert(0, Ipv4Network::from(s));
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
