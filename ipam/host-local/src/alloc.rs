//! Choosing addresses: one per range set, the requested one where asked, otherwise the
//! next free one after the last reserved (round robin), and the same one again for a
//! container that already holds an address in the set.

use std::net::IpAddr;

use libcni::spec::IpConfig;
use libcni::{code, Error};

use crate::range::RangeSet;
use crate::store::Store;

/// Picks and records one address per set for (cid, ifname); all or nothing.
pub fn allocate(
    store: &Store,
    sets: &[RangeSet],
    cid: &str,
    ifname: &str,
    requested: &[IpAddr],
) -> Result<Vec<IpConfig>, Error> {
    if let Some(ip) = requested
        .iter()
        .find(|ip| !sets.iter().any(|s| s.contains(**ip)))
    {
        return Err(Error::new(
            code::ADDRESS_IN_USE,
            format!("requested IP address {ip} is not in any configured range"),
        ));
    }
    let held = store.ips_of(cid, ifname)?;
    let mut chosen: Vec<(usize, IpAddr)> = Vec::new();
    let mut out = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let ip = match (
            held.iter().find(|ip| set.contains(**ip)),
            requested.iter().find(|ip| set.contains(**ip)),
        ) {
            (Some(h), Some(r)) if h != r => {
                return Err(Error::new(
                    code::ADDRESS_IN_USE,
                    format!("{cid}/{ifname} already holds {h}, not the requested {r}"),
                ));
            }
            (Some(h), _) => *h,
            (None, Some(r)) => take_requested(store, set, *r)?,
            (None, None) => next_free(store, set, i)?,
        };
        let range = set.range_of(ip).expect("chosen from this set");
        chosen.push((i, ip));
        out.push(IpConfig {
            version: None,
            address: range.with_prefix(ip),
            gateway: range.gateway,
            interface: None,
        });
    }
    let fresh: Vec<_> = chosen
        .into_iter()
        .filter(|(_, ip)| !held.contains(ip))
        .collect();
    store.reserve(cid, ifname, &fresh)?;
    Ok(out)
}

fn take_requested(store: &Store, set: &RangeSet, ip: IpAddr) -> Result<IpAddr, Error> {
    let range = set.range_of(ip).expect("caller checked membership");
    if range.gateway == Some(ip) {
        return Err(Error::new(
            code::ADDRESS_IN_USE,
            format!("requested IP address {ip} is the gateway of {range}"),
        ));
    }
    if let Some((owner, ifname)) = store.owner(ip)? {
        return Err(Error::new(
            code::ADDRESS_IN_USE,
            format!("requested IP address {ip} is held by {owner}/{ifname}"),
        ));
    }
    Ok(ip)
}

pub fn next_free(store: &Store, set: &RangeSet, i: usize) -> Result<IpAddr, Error> {
    let last = store.last_reserved(i)?;
    for (ip, _) in set.walk_after(last) {
        if store.owner(ip)?.is_none() {
            return Ok(ip);
        }
    }
    Err(Error::new(
        code::NO_ADDRESS,
        format!("no IP addresses available in range set {set}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::{build_sets, RangeConf};

    fn sets(subnet: &str, start: &str, end: &str) -> Vec<RangeSet> {
        build_sets(&[vec![RangeConf {
            subnet: subnet.parse().unwrap(),
            range_start: Some(start.parse().unwrap()),
            range_end: Some(end.parse().unwrap()),
            gateway: None,
        }]])
        .unwrap()
    }

    #[test]
    fn round_robin_exhaustion_and_reuse_rules() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s = sets("10.9.0.0/24", "10.9.0.2", "10.9.0.4");
        let a = |cid: &str| {
            allocate(&store, &s, cid, "eth0", &[]).map(|r| r[0].address.ip().to_string())
        };
        assert_eq!(a("c1").unwrap(), "10.9.0.2");
        assert_eq!(a("c2").unwrap(), "10.9.0.3");
        // the same attachment gets its address again, nothing new is taken
        assert_eq!(a("c1").unwrap(), "10.9.0.2");
        store.release("c1", "eth0").unwrap();
        // a freed address is not handed out again at once
        assert_eq!(a("c3").unwrap(), "10.9.0.4");
        assert_eq!(a("c4").unwrap(), "10.9.0.2");
        let e = a("c5").unwrap_err();
        assert_eq!(e.code, code::NO_ADDRESS);
        assert!(e.msg.contains("10.9.0.0/24"), "{}", e.msg);
    }

    #[test]
    fn requested_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s = sets("10.9.0.0/24", "10.9.0.1", "10.9.0.50");
        let ip = |x: &str| x.parse::<IpAddr>().unwrap();
        let r = allocate(&store, &s, "c1", "eth0", &[ip("10.9.0.40")]).unwrap();
        assert_eq!(r[0].address.to_string(), "10.9.0.40/24");
        assert_eq!(r[0].gateway, Some(ip("10.9.0.1")));
        for bad in ["10.9.0.40", "10.9.0.1", "10.8.0.1"] {
            assert_eq!(
                allocate(&store, &s, "c2", "eth0", &[ip(bad)])
                    .unwrap_err()
                    .code,
                code::ADDRESS_IN_USE,
                "{bad}"
            );
        }
    }
}
