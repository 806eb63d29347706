//! Choosing addresses as the reference plugin does: one per range set, the requested one
//! where the runtime asked (it must be in a range, free, and not the gateway), otherwise
//! the next free one after the last reserved (round robin). A second ADD of an attachment
//! that already holds an address in a set is refused, as the reference refuses it.

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
    // As the reference: each set takes the first request it holds; a request no set took
    // (outside every range, or a second one in a set) fails the call after the sets did.
    let mut left: Vec<IpAddr> = Vec::new();
    for ip in requested {
        if !left.contains(ip) {
            left.push(*ip);
        }
    }
    let held = store.ips_of(cid, ifname)?;
    let mut chosen: Vec<(usize, IpAddr)> = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let asked = left
            .iter()
            .position(|ip| set.contains(*ip))
            .map(|p| left.remove(p));
        let ip = match asked {
            None => {
                if let Some(h) = held.iter().find(|ip| set.contains(**ip)) {
                    return Err(Error::new(
                        code::ADDRESS_IN_USE,
                        format!(
                            "failed to allocate for range {i}: {h} has been allocated to {cid}, duplicate allocation is not allowed"
                        ),
                    ));
                }
                next_free(store, set, i)?
            }
            Some(ip) => take_requested(store, set, i, ip)?,
        };
        chosen.push((i, ip));
    }
    if !left.is_empty() {
        let ips: Vec<String> = left.iter().map(IpAddr::to_string).collect();
        return Err(Error::config(format!(
            "failed to allocate all requested IPs: {}",
            ips.join(" ")
        )));
    }
    store.reserve(cid, ifname, &chosen)?;
    Ok(chosen
        .iter()
        .map(|(i, ip)| {
            let range = sets[*i].range_of(*ip).unwrap_or(&sets[*i].0[0]);
            IpConfig {
                version: None,
                address: range.with_prefix(*ip),
                gateway: range.gateway,
                interface: None,
            }
        })
        .collect())
}

fn take_requested(store: &Store, set: &RangeSet, i: usize, ip: IpAddr) -> Result<IpAddr, Error> {
    if set.range_of(ip).is_some_and(|r| r.gateway == Some(ip)) {
        return Err(Error::config(format!(
            "failed to allocate for range {i}: requested ip {ip} is subnet's gateway"
        )));
    }
    if let Some(h) = store.holder(ip)? {
        return Err(Error::new(
            code::ADDRESS_IN_USE,
            format!(
                "failed to allocate for range {i}: requested IP address {ip} is not available in range set {set} (held by {})",
                h.container_id
            ),
        ));
    }
    Ok(ip)
}

pub fn next_free(store: &Store, set: &RangeSet, i: usize) -> Result<IpAddr, Error> {
    let last = store.last_reserved(i)?;
    for (ip, _) in set.walk_after(last) {
        if store.is_free(ip)? {
            return Ok(ip);
        }
    }
    Err(Error::new(
        code::NO_ADDRESS,
        format!("failed to allocate for range {i}: no IP addresses available in range set {set}"),
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
    fn round_robin_exhaustion_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let s = sets("10.9.0.0/24", "10.9.0.2", "10.9.0.4");
        let a = |cid: &str| {
            allocate(&store, &s, cid, "eth0", &[]).map(|r| r[0].address.ip().to_string())
        };
        assert_eq!(a("c1").unwrap(), "10.9.0.2");
        assert_eq!(a("c2").unwrap(), "10.9.0.3");
        // a second ADD of a live attachment is refused and takes nothing
        assert_eq!(a("c1").unwrap_err().code, code::ADDRESS_IN_USE);
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
        for (bad, code) in [
            (&["10.9.0.40"][..], code::ADDRESS_IN_USE),
            (&["10.9.0.1"], code::INVALID_CONFIG),
            (&["10.8.0.1"], code::INVALID_CONFIG),
            (&["10.9.0.5", "10.9.0.6"], code::INVALID_CONFIG),
        ] {
            let asked: Vec<IpAddr> = bad.iter().map(|s| ip(s)).collect();
            let e = allocate(&store, &s, "c2", "eth0", &asked).unwrap_err();
            assert_eq!(e.code, code, "{bad:?}: {}", e.msg);
        }
        assert!(store.ips_of("c2", "eth0").unwrap().is_empty());
        // the reference's text: what no set took, after the sets took theirs
        let asked = [
            ip("10.9.0.5"),
            ip("10.9.0.6"),
            ip("10.8.0.1"),
            ip("10.9.0.5"),
        ];
        let e = allocate(&store, &s, "c2", "eth0", &asked).unwrap_err();
        assert_eq!(
            e.msg,
            "failed to allocate all requested IPs: 10.9.0.6 10.8.0.1"
        );
    }
}
