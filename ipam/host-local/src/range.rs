//! Address ranges and range sets: parsing the reference plugin's `ranges` (and the legacy
//! single-range form), canonicalising them, and walking their addresses in order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use libcni::Error;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeConf {
    pub subnet: IpNetwork,
    #[serde(default)]
    pub range_start: Option<IpAddr>,
    #[serde(default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

/// One canonical range: every address in `start..=end` except the gateway is usable.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    /// The subnet with host bits cleared.
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(n: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(n))
    } else {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    }
}

impl Range {
    /// Applies the reference plugin's defaults: start after the network address, end
    /// before the broadcast address (IPv4) or at the last address (IPv6), gateway the
    /// first address.
    pub fn from_conf(c: &RangeConf) -> Result<Range, Error> {
        let subnet = IpNetwork::new(c.subnet.network(), c.subnet.prefix()).map_err(|e| {
            Error::config(format!("invalid subnet {}", c.subnet)).details(e.to_string())
        })?;
        let bits = if subnet.is_ipv4() { 32 } else { 128 };
        // The reference's text (podman shows it), with the subnet as written.
        if subnet.prefix() >= bits - 1 {
            return Err(Error::config(format!(
                "Network {} too small to allocate from",
                c.subnet
            )));
        }
        let v6 = subnet.is_ipv6();
        let first = from_u128(to_u128(subnet.network()) + 1, v6);
        let last = if v6 {
            subnet.broadcast_or_last()
        } else {
            from_u128(to_u128(subnet.broadcast_or_last()) - 1, v6)
        };
        let start = c.range_start.unwrap_or(first);
        let end = c.range_end.unwrap_or(last);
        for (what, ip) in [("rangeStart", start), ("rangeEnd", end)] {
            if !subnet.contains(ip) || to_u128(ip) < to_u128(first) || to_u128(ip) > to_u128(last) {
                return Err(Error::config(format!(
                    "{what} {ip} is not a usable address of {subnet}"
                )));
            }
        }
        if to_u128(start) > to_u128(end) {
            return Err(Error::config(format!(
                "rangeStart {start} is after rangeEnd {end} in {subnet}"
            )));
        }
        if let Some(gw) = c.gateway {
            if gw.is_ipv4() != subnet.is_ipv4() {
                return Err(Error::config(format!(
                    "gateway {gw} is not of the family of {subnet}"
                )));
            }
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway: Some(c.gateway.unwrap_or(first)),
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(ip))
    }

    /// The address as the result shows it: with the prefix length of the subnet.
    pub fn with_prefix(&self, ip: IpAddr) -> IpNetwork {
        IpNetwork::new(ip, self.subnet.prefix()).expect("prefix comes from a valid subnet")
    }

    fn overlaps(&self, o: &Range) -> bool {
        self.contains(o.start) || self.contains(o.end) || o.contains(self.start)
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}-{})", self.subnet, self.start, self.end)
    }
}

trait LastAddr {
    fn broadcast_or_last(&self) -> IpAddr;
}

impl LastAddr for IpNetwork {
    fn broadcast_or_last(&self) -> IpAddr {
        match self {
            IpNetwork::V4(n) => IpAddr::V4(n.broadcast()),
            IpNetwork::V6(n) => {
                let host = u128::MAX.checked_shr(u32::from(n.prefix())).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
            }
        }
    }
}

/// A set of ranges of one family; one address is taken from each set.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|r| r.contains(ip))
    }

    pub fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    /// Every usable address once, starting after `last` (round robin across the ranges),
    /// or from the first address when `last` is not in the set.
    pub fn walk_after(&self, last: Option<IpAddr>) -> impl Iterator<Item = (IpAddr, &Range)> + '_ {
        let (mut ri, mut next) = (0usize, to_u128(self.0[0].start));
        if let Some(l) = last {
            if let Some(i) = self.0.iter().position(|r| r.contains(l)) {
                if to_u128(l) < to_u128(self.0[i].end) {
                    (ri, next) = (i, to_u128(l) + 1);
                } else {
                    ri = (i + 1) % self.0.len();
                    next = to_u128(self.0[ri].start);
                }
            }
        }
        let total: u128 = self
            .0
            .iter()
            .map(|r| to_u128(r.end) - to_u128(r.start) + 1)
            .sum();
        let mut seen: u128 = 0;
        std::iter::from_fn(move || {
            while seen < total {
                seen += 1;
                let r = &self.0[ri];
                let ip = from_u128(next, r.start.is_ipv6());
                if next >= to_u128(r.end) {
                    ri = (ri + 1) % self.0.len();
                    next = to_u128(self.0[ri].start);
                } else {
                    next += 1;
                }
                if r.gateway != Some(ip) {
                    return Some((ip, r));
                }
            }
            None
        })
    }
}

impl std::fmt::Display for RangeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(Range::to_string).collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// Canonicalises all range sets and rejects empty sets, mixed families and overlaps.
pub fn build_sets(confs: &[Vec<RangeConf>]) -> Result<Vec<RangeSet>, Error> {
    if confs.is_empty() {
        return Err(Error::config(
            "ipam has no ranges (neither \"ranges\" nor \"subnet\")",
        ));
    }
    let mut sets = Vec::new();
    for (i, set) in confs.iter().enumerate() {
        let ranges = set
            .iter()
            .map(Range::from_conf)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|mut e| {
                e.msg = format!("invalid range set {i}: {}", e.msg);
                e
            })?;
        let Some(first) = ranges.first() else {
            return Err(Error::config("ipam range set is empty"));
        };
        if ranges
            .iter()
            .any(|r| r.subnet.is_ipv4() != first.subnet.is_ipv4())
        {
            return Err(Error::config("a range set mixes IPv4 and IPv6 ranges"));
        }
        sets.push(RangeSet(ranges));
    }
    let all: Vec<&Range> = sets.iter().flat_map(|s| s.0.iter()).collect();
    for (i, a) in all.iter().enumerate() {
        if let Some(b) = all[i + 1..].iter().find(|b| a.overlaps(b)) {
            return Err(Error::config(format!("ranges {a} and {b} overlap")));
        }
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(subnet: &str) -> RangeConf {
        RangeConf {
            subnet: subnet.parse().unwrap(),
            range_start: None,
            range_end: None,
            gateway: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_skip_network_broadcast_and_gateway() {
        let r = Range::from_conf(&rc("10.1.2.77/24")).unwrap();
        assert_eq!(r.subnet.to_string(), "10.1.2.0/24");
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("10.1.2.1"), ip("10.1.2.254"), Some(ip("10.1.2.1")))
        );
        let set = RangeSet(vec![r]);
        let all: Vec<_> = set.walk_after(None).map(|(i, _)| i).collect();
        assert_eq!(all.len(), 253);
        assert_eq!(all[0], ip("10.1.2.2"));
        assert!(!all.contains(&ip("10.1.2.255")) && !all.contains(&ip("10.1.2.1")));
    }

    #[test]
    fn walk_resumes_after_last_and_wraps_across_ranges() {
        let mut a = rc("10.0.0.0/29");
        a.range_start = Some(ip("10.0.0.4"));
        let set = RangeSet(vec![
            Range::from_conf(&a).unwrap(),
            Range::from_conf(&rc("10.0.1.0/30")).unwrap(),
        ]);
        let order: Vec<String> = set
            .walk_after(Some(ip("10.0.0.5")))
            .map(|(i, _)| i.to_string())
            .collect();
        assert_eq!(order, ["10.0.0.6", "10.0.1.2", "10.0.0.4", "10.0.0.5"]);
    }

    #[test]
    fn ipv6_range_defaults() {
        let r = Range::from_conf(&rc("fd00:1::/120")).unwrap();
        assert_eq!((r.start, r.end), (ip("fd00:1::1"), ip("fd00:1::ff")));
    }

    #[test]
    fn bad_ranges_are_config_errors() {
        let mut bad = rc("10.0.0.0/24");
        bad.range_start = Some(ip("10.0.1.5"));
        let mut inverted = rc("10.0.0.0/24");
        inverted.range_start = Some(ip("10.0.0.9"));
        inverted.range_end = Some(ip("10.0.0.3"));
        for c in [rc("10.0.0.0/31"), bad, inverted] {
            assert_eq!(Range::from_conf(&c).unwrap_err().code, 7);
        }
        assert!(build_sets(&[vec![rc("10.0.0.0/24")], vec![rc("10.0.0.0/25")]]).is_err());
        assert!(build_sets(&[vec![rc("10.0.0.0/24"), rc("fd00::/64")]]).is_err());
        assert!(build_sets(&[]).is_err());
        assert!(build_sets(&[vec![rc("10.0.0.0/24")], vec![rc("fd00::/64")]]).is_ok());
    }
}
