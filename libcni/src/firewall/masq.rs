//! `ipMasq`: one shared nat chain and sets of container addresses, labelled per container.

use ipnetwork::IpNetwork;

use super::{delete_elements, labelled_elements, Element, Label, INET_TABLE};
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

fn masq_keys(a: &IpNetwork) -> [(String, String); 2] {
    let set = masq_set(a);
    let subnet = IpNetwork::new(a.network(), a.prefix()).expect("prefix from a valid address");
    [
        (set.to_string(), a.ip().to_string()),
        (format!("{set}_local"), format!("{} . {subnet}", a.ip())),
    ]
}

/// Script: masquerade what the container's addresses send outside their subnets. Adds
/// set elements only, so it fails while the shared chain is missing: apply it with
/// [`apply_with_setup`] and [`masquerade_setup`].
pub fn masquerade(note: &Label, addrs: &[IpNetwork]) -> String {
    addrs
        .iter()
        .flat_map(masq_keys)
        .map(|(set, key)| {
            format!("add element inet {INET_TABLE} {set} {{ {key} comment \"{note}\" }}\n")
        })
        .collect()
}

/// Script: stop masquerading these addresses (the container's, from prevResult); fails
/// only when the shared sets are missing (apply it with [`apply_if_present`]).
pub fn remove_masquerade(addrs: &[IpNetwork]) -> String {
    addrs
        .iter()
        .flat_map(masq_keys)
        .map(|(set, key)| {
            format!(
                "add element inet {INET_TABLE} {set} {{ {key} }}\n\
                 delete element inet {INET_TABLE} {set} {{ {key} }}\n"
            )
        })
        .collect()
}

/// Script: stop masquerading the addresses whose labels `gone` accepts (for when their
/// addresses are unknown); empty when there are none.
pub fn remove_labelled_masquerade(gone: impl Fn(&str) -> bool) -> Result<String, Error> {
    let mine: Vec<Element> = labelled_elements("inet", |set| set.starts_with("masq"))?
        .into_iter()
        .filter(|e| gone(&e.note))
        .collect();
    Ok(delete_elements("inet", &mine))
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
        let s = masquerade(&Label::new("n", "c"), &addrs);
        for want in [
            "masq4 { 10.1.0.5 comment \"n/c\" }",
            "masq4_local { 10.1.0.5 . 10.1.0.0/24 comment \"n/c\" }",
            "masq6_local { fd00::5 . fd00::/64 comment \"n/c\" }",
        ] {
            assert!(s.contains(want), "{want}: {s}");
        }
        let r = remove_masquerade(&addrs);
        assert!(
            r.contains("delete element inet cni_rs masq6 { fd00::5 }"),
            "{r}"
        );
    }
}
