//! `ipMasq`: one shared nat chain and sets of container addresses, labelled per container.

use ipnetwork::IpNetwork;

use super::{labelled_set_elements, set_element, KeyPart, Label, INET_TABLE};
use crate::net::nftables::SetElement;
use crate::spec::Error;

/// The masquerade sets per family: (set of container addresses, their key type, nft
/// family keyword, multicast range that is never masqueraded).
const MASQ: [(&str, &str, &str, &str); 2] = [
    ("masq4", "ipv4_addr", "ip", "224.0.0.0/4"),
    ("masq6", "ipv6_addr", "ip6", "ff00::/8"),
];

fn masq_set(a: &IpNetwork) -> &'static str {
    if a.is_ipv4() {
        MASQ[0].0
    } else {
        MASQ[1].0
    }
}

/// Script: the shared masquerade, made once: one chain on the nat postrouting hook that
/// lets traffic from a container address to its own subnets pass (the `_local` sets of
/// (address . subnet)) and masquerades the rest of what the addresses in `masq4`/`masq6`
/// send, multicast excepted. Two set lookups per new connection, however many containers.
pub fn masquerade_setup() -> String {
    let mut s = format!(
        "add table inet {INET_TABLE}\n\
         add chain inet {INET_TABLE} postrouting {{ type nat hook postrouting priority srcnat; }}\n\
         flush chain inet {INET_TABLE} postrouting\n"
    );
    for (set, kind, fam, mcast) in MASQ {
        s += &format!(
            "add set inet {INET_TABLE} {set} {{ type {kind}; }}\n\
             add set inet {INET_TABLE} {set}_local {{ type {kind} . {kind}; flags interval; }}\n\
             add rule inet {INET_TABLE} postrouting {fam} saddr . {fam} daddr @{set}_local return\n\
             add rule inet {INET_TABLE} postrouting {fam} saddr @{set} {fam} daddr != {mcast} masquerade\n"
        );
    }
    s
}

/// The container address's elements: in the masquerade set, and with its subnet (or the
/// cluster network) in the exemption set.
fn masq_elements(a: &IpNetwork, note: Option<&Label>) -> [SetElement; 2] {
    let set = masq_set(a);
    [
        set_element("inet", set, &[KeyPart::Addr(a.ip())], false, note),
        set_element(
            "inet",
            &format!("{set}_local"),
            &[KeyPart::Addr(a.ip()), KeyPart::Net(*a)],
            true,
            note,
        ),
    ]
}

/// The elements that masquerade what the container's addresses send outside their
/// subnets. Add them with [`super::add_elements`] and [`masquerade_setup`]: they need the
/// shared chain.
pub fn masquerade(note: &Label, addrs: &[IpNetwork]) -> Vec<SetElement> {
    addrs
        .iter()
        .flat_map(|a| masq_elements(a, Some(note)))
        .collect()
}

/// The elements to delete ([`super::remove_elements`]) to stop masquerading these
/// addresses (the container's, from prevResult).
pub fn remove_masquerade(addrs: &[IpNetwork]) -> Vec<SetElement> {
    addrs.iter().flat_map(|a| masq_elements(a, None)).collect()
}

/// The masquerade elements whose labels `gone` accepts, to delete with
/// [`super::remove_elements`] when their addresses are unknown.
pub fn labelled_masquerade(gone: impl Fn(&str) -> bool) -> Result<Vec<SetElement>, Error> {
    labelled_set_elements("inet", |set| set.starts_with("masq"), gone)
}

/// The reference's `ipMasqBackend` (v1.6+): `iptables` or `nftables` (absent: its own
/// pick). Either means this masquerade; anything else is refused with its message.
pub fn check_masq_backend(backend: Option<&str>) -> Result<(), Error> {
    match backend {
        None | Some("iptables") | Some("nftables") => Ok(()),
        Some(other) => Err(Error::config(format!("unknown ipmasq backend {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_elements_cover_each_family() {
        let addrs: Vec<IpNetwork> = vec![
            "10.1.0.5/24".parse().unwrap(),
            "fd00::5/64".parse().unwrap(),
        ];
        let added = masquerade(&Label::new("n", "c"), &addrs);
        let sets: Vec<&str> = added.iter().map(|e| e.set.as_str()).collect();
        assert_eq!(sets, ["masq4", "masq4_local", "masq6", "masq6_local"]);
        assert!(added.iter().all(|e| e.comment.as_deref() == Some("n/c")));
        // 10.1.0.5 . 10.1.0.0/24: the address, then its subnet's first and last address
        assert_eq!(added[1].key, [10, 1, 0, 5, 10, 1, 0, 0]);
        assert_eq!(
            added[1].key_end.as_deref(),
            Some(&[10, 1, 0, 5, 10, 1, 0, 255][..])
        );
        assert_eq!((added[2].key.len(), added[2].key_end.as_ref()), (16, None));
        assert_eq!(added[3].key.len(), 32);
        let removed = remove_masquerade(&addrs);
        assert!(removed.iter().all(|e| e.comment.is_none()));
        assert_eq!(removed[3].key_end, added[3].key_end);
    }
}
