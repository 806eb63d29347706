//! A node's rules for its overlay's cluster network, as flanneld keeps them in iptables:
//! forwarding accepted to and from the cluster network (flanneld's FLANNEL-FWD), and,
//! when the node masquerades for its pods (flanneld `--ip-masq`), FLANNEL-POSTRTG's
//! masquerade with its exemptions. Here as elements of shared labelled sets under two
//! base chains of our table, so a node's share is element adds only and a network's share
//! is found again by its label; IPv6 networks go in the `6` sets.
//!
//! Forward: an nftables accept does not beat an iptables FORWARD policy of DROP at the
//! same hook, so what the chain accepts carries [`ACCEPTED_MARK`] and the one iptables
//! rule of [`super::iptables`] accepts it there.
//!
//! Masquerade, in flanneld's order: nothing marked by kube-proxy for its own masquerade
//! (0x4000), nothing from the cluster network to itself (never between pods); what the
//! cluster network sends elsewhere, multicast excepted, is masqueraded (fully random
//! ports, as flanneld's `--random-fully`, unless `--ip-masq-fully-random-disable`: then
//! the network is in the `_plain` set instead); what comes from outside to this node's
//! subnet is not; what the host sends to other nodes' pods is.

use ipnetwork::IpNetwork;

use super::iptables::{self, ACCEPTED_MARK};
use super::{apply_with_setup, delete_elements, labelled_elements, run, Label, INET_TABLE};
use crate::spec::Error;

/// kube-proxy's masquerade mark, which flanneld lets pass.
const KUBE_PROXY_MARK: u32 = 0x4000;

/// The sets per family: (suffix, key type, nft family keyword, multicast range).
const FAMILIES: [(&str, &str, &str, &str); 2] = [
    ("4", "ipv4_addr", "ip", "224.0.0.0/4"),
    ("6", "ipv6_addr", "ip6", "ff00::/8"),
];

/// One cluster network as a node holds it: the network and this node's subnet of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterNet {
    pub network: IpNetwork,
    pub subnet: IpNetwork,
}

/// What a node keeps for its cluster networks: flanneld's `--iptables-forward-rules`
/// (default true), `--ip-masq` and `--ip-masq-fully-random-disable` (inverted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterRules {
    pub forward: bool,
    pub masquerade: bool,
    pub fully_random: bool,
}

/// The label of a network's node-level elements ("~" is in no container ID).
pub fn cluster_label(network_name: &str) -> Label {
    Label::new(network_name, "~node")
}

fn suffix(n: &IpNetwork) -> &'static str {
    if n.is_ipv4() {
        "4"
    } else {
        "6"
    }
}

/// A network as nft lists it back: its address alone when it is a single host.
fn key(n: &IpNetwork) -> String {
    let net = IpNetwork::new(n.network(), n.prefix()).expect("prefix from a valid network");
    let full = if n.is_ipv4() { 32 } else { 128 };
    if n.prefix() == full {
        net.ip().to_string()
    } else {
        net.to_string()
    }
}

/// The (set, key) pairs a node holding `nets` needs.
fn wanted(nets: &[ClusterNet], r: ClusterRules) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for c in nets {
        let (f, n, s) = (suffix(&c.network), key(&c.network), key(&c.subnet));
        if r.forward {
            out.push((format!("cluster{f}"), n.clone()));
        }
        if r.masquerade {
            let plain = if r.fully_random { "" } else { "_plain" };
            out.push((format!("nodemasq{f}{plain}"), n.clone()));
            out.push((format!("nodemasq{f}_within"), format!("{n} . {n}")));
            out.push((format!("nodemasq{f}_subnet"), s));
        }
    }
    out
}

/// Whether a set is one of this module's.
fn is_ours(set: &str) -> bool {
    set.starts_with("cluster") || set.starts_with("nodemasq")
}

/// Script: the shared sets and chains, made once: the forward accept always, the
/// masquerade's sets and nat chain only with `masquerade`. A nat base chain makes the
/// kernel track every connection of the namespace (conntrack), a cost to every packet
/// even with no rule of it ever matching (measured in bench/RESULTS.md: 5% of the
/// overlay path's cycles), so a node that masquerades nothing has none. The masquerade's
/// element adds fail while its sets are missing, which is when this runs again with it;
/// without it, a chain another network made is left as it is.
pub fn cluster_setup(masquerade: bool) -> String {
    let accept = format!("meta mark set meta mark or {ACCEPTED_MARK:#x} accept");
    let m = KUBE_PROXY_MARK;
    let mut s = format!(
        "add table inet {INET_TABLE}\n\
         add chain inet {INET_TABLE} cluster-forward {{ type filter hook forward priority filter - 5; }}\n\
         flush chain inet {INET_TABLE} cluster-forward\n"
    );
    if masquerade {
        s += &format!(
            "add chain inet {INET_TABLE} cluster-postrouting {{ type nat hook postrouting priority srcnat; }}\n\
             flush chain inet {INET_TABLE} cluster-postrouting\n\
             add rule inet {INET_TABLE} cluster-postrouting meta mark & {m:#x} == {m:#x} return\n"
        );
    }
    for (f, kind, fam, mcast) in FAMILIES {
        let (c, nm) = (format!("cluster{f}"), format!("nodemasq{f}"));
        s += &format!(
            "add set inet {INET_TABLE} {c} {{ type {kind}; flags interval; }}\n\
             add rule inet {INET_TABLE} cluster-forward {fam} saddr @{c} {accept}\n\
             add rule inet {INET_TABLE} cluster-forward {fam} daddr @{c} {accept}\n"
        );
        if masquerade {
            s += &format!(
                "add set inet {INET_TABLE} {nm} {{ type {kind}; flags interval; }}\n\
                 add set inet {INET_TABLE} {nm}_plain {{ type {kind}; flags interval; }}\n\
                 add set inet {INET_TABLE} {nm}_within {{ type {kind} . {kind}; flags interval; }}\n\
                 add set inet {INET_TABLE} {nm}_subnet {{ type {kind}; flags interval; }}\n\
                 add rule inet {INET_TABLE} cluster-postrouting {fam} saddr . {fam} daddr @{nm}_within return\n\
                 add rule inet {INET_TABLE} cluster-postrouting {fam} saddr @{nm} {fam} daddr != {mcast} masquerade fully-random\n\
                 add rule inet {INET_TABLE} cluster-postrouting {fam} saddr @{nm}_plain {fam} daddr != {mcast} masquerade\n\
                 add rule inet {INET_TABLE} cluster-postrouting {fam} daddr @{nm}_subnet return\n\
                 add rule inet {INET_TABLE} cluster-postrouting {fam} daddr @{nm} masquerade fully-random\n\
                 add rule inet {INET_TABLE} cluster-postrouting {fam} daddr @{nm}_plain masquerade\n"
            );
        }
    }
    s
}

fn adds(label: &Label, elements: &[(String, String)]) -> String {
    elements
        .iter()
        .map(|(set, k)| {
            format!("add element inet {INET_TABLE} {set} {{ {k} comment \"{label}\" }}\n")
        })
        .collect()
}

/// Makes the node's elements for `network_name` these, and the iptables rule present when
/// forwarding is accepted (the agent: a flushed table or a lost iptables rule comes back). With `prune` (a session's
/// start), stale elements of the network (an old subnet, masquerade turned off) go in the
/// same transaction as the new ones come; without it (a resync) nothing is listed, so a
/// pass costs one nft run and one iptables check per family.
pub fn sync_cluster(
    network_name: &str,
    nets: &[ClusterNet],
    rules: ClusterRules,
    prune: bool,
) -> Result<(), Error> {
    let label = cluster_label(network_name);
    let want = wanted(nets, rules);
    let listed = match prune {
        true => labelled_elements("inet", is_ours)?,
        false => Vec::new(),
    };
    let stale: Vec<_> = listed
        .into_iter()
        .filter(|e| e.note == label.as_str())
        .filter(|e| !want.iter().any(|(s, k)| e.set.as_str() == s && e.key == *k))
        .collect();
    let script = delete_elements("inet", &stale) + &adds(&label, &want);
    let what = format!("keeping the cluster network rules of {network_name}");
    apply_with_setup(&script, cluster_setup(rules.masquerade), what)?.wait()?;
    match rules.forward {
        true => iptables::accept_marked(),
        false => Ok(()),
    }
}

/// An ADD's share in the static store, where no agent runs: the forward accept for the
/// cluster network, elements added only (an nft run, no wait for the kernel); the
/// iptables rule is put in when the chain had to be made. Wait with [`ForwardPending`].
pub fn start_cluster_forward(
    network_name: &str,
    nets: &[ClusterNet],
) -> Result<ForwardPending, Error> {
    let label = cluster_label(network_name);
    let forward = ClusterRules {
        forward: true,
        masquerade: false,
        fully_random: true,
    };
    let script = adds(&label, &wanted(nets, forward));
    let what = format!("accepting the forwarded traffic of the cluster network {network_name}");
    Ok(ForwardPending(apply_with_setup(
        &script,
        cluster_setup(false),
        what,
    )?))
}

/// [`start_cluster_forward`] under way.
pub struct ForwardPending(super::Pending);

impl ForwardPending {
    pub fn wait(self) -> Result<(), Error> {
        if self.0.wait_setup()? {
            iptables::accept_marked()?;
        }
        Ok(())
    }
}

/// Removes every node-level element of `network_name` (teardown).
pub fn remove_cluster(network_name: &str) -> Result<(), Error> {
    let label = cluster_label(network_name);
    let mine: Vec<_> = labelled_elements("inet", is_ours)?
        .into_iter()
        .filter(|e| e.note == label.as_str())
        .collect();
    run(
        &delete_elements("inet", &mine),
        format!("removing the cluster network rules of {network_name}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_per_family_and_masquerade() {
        let nets = [
            ClusterNet {
                network: "10.226.0.0/16".parse().unwrap(),
                subnet: "10.226.3.0/24".parse().unwrap(),
            },
            ClusterNet {
                network: "fd00:97::/56".parse().unwrap(),
                subnet: "fd00:97:0:3::/64".parse().unwrap(),
            },
        ];
        let rules = |masquerade, fully_random| ClusterRules {
            forward: true,
            masquerade,
            fully_random,
        };
        let fwd = wanted(&nets, rules(false, true));
        assert_eq!(
            fwd,
            vec![
                ("cluster4".into(), "10.226.0.0/16".into()),
                ("cluster6".into(), "fd00:97::/56".into())
            ]
        );
        let all = wanted(&nets, rules(true, true));
        assert!(all.contains(&(
            "nodemasq4_within".into(),
            "10.226.0.0/16 . 10.226.0.0/16".into()
        )));
        assert!(all.contains(&("nodemasq6_subnet".into(), "fd00:97:0:3::/64".into())));
        let plain = wanted(&nets, rules(true, false));
        assert!(plain.contains(&("nodemasq4_plain".into(), "10.226.0.0/16".into())));
        assert!(!plain.iter().any(|(set, _)| set == "nodemasq4"));
        let no_forward = ClusterRules {
            forward: false,
            ..rules(true, true)
        };
        assert!(!wanted(&nets, no_forward)
            .iter()
            .any(|(set, _)| set.starts_with("cluster")));
        assert_eq!(key(&"10.1.2.3/32".parse().unwrap()), "10.1.2.3");
        let s = cluster_setup(true);
        assert!(s.contains("meta mark & 0x4000 == 0x4000 return"), "{s}");
        assert!(
            s.contains("ip6 daddr != ff00::/8 masquerade fully-random"),
            "{s}"
        );
        // no nat chain (and so no conntrack) where nothing is masqueraded
        let fwd = cluster_setup(false);
        assert!(
            fwd.contains("cluster-forward") && fwd.contains(" cluster6 {"),
            "{fwd}"
        );
        assert!(
            !fwd.contains("type nat") && !fwd.contains("nodemasq"),
            "{fwd}"
        );
        assert!(is_ours("nodemasq4_subnet") && !is_ours("masq4"));
    }
}
