//! Port mappings (`portmap`): per-container nat chains DNATing host ports to the container.

use std::collections::{BTreeSet, HashSet};

use super::{listed_table, Label, INET_TABLE};
use crate::names::stable_hash;
use crate::net::nftables::{self, Family};
use crate::spec::Error;

fn chain_name(kind: &str, network: &str, container_id: &str) -> String {
    format!("{kind}-{:016x}", stable_hash(&[network, container_id]))
}

/// One `portMappings` entry, as runtimes pass it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Empty, 0.0.0.0 or :: mean every host address.
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

fn default_protocol() -> String {
    "tcp".to_string()
}

/// How port-mapped traffic is source-NATed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PortMasq {
    /// Only hairpin (the container to its own host port) and localhost traffic (`snat`).
    Hairpin,
    /// Everything that was DNATed to the container (`masqAll`).
    All,
    None,
}

fn port_chains(network: &str, container_id: &str) -> [(String, &'static str); 3] {
    [
        (
            chain_name("pm-pre", network, container_id),
            "type nat hook prerouting priority dstnat;",
        ),
        (
            chain_name("pm-out", network, container_id),
            "type nat hook output priority -100;",
        ),
        (
            chain_name("pm-post", network, container_id),
            "type nat hook postrouting priority srcnat;",
        ),
    ]
}

/// Script: DNAT each mapping from the host's addresses (or its `hostIP`), for traffic
/// arriving and locally made (localhost too), to the container's address of the same
/// family, replacing the container's previous mappings.
pub fn port_mappings(
    network: &str,
    container_id: &str,
    mappings: &[PortMapping],
    container_ips: &[std::net::IpAddr],
    masq: PortMasq,
) -> Result<String, Error> {
    let note = Label::new(network, container_id);
    let [(pre, pre_hook), (out, out_hook), (post, post_hook)] = port_chains(network, container_id);
    let mut s = format!("add table inet {INET_TABLE}\n");
    for (chain, hook) in [(&pre, pre_hook), (&out, out_hook), (&post, post_hook)] {
        s += &format!("add chain inet {INET_TABLE} {chain} {{ {hook} }}\nflush chain inet {INET_TABLE} {chain}\n");
    }
    for m in mappings {
        let proto = m.protocol.to_ascii_lowercase();
        if !["tcp", "udp", "sctp"].contains(&proto.as_str()) {
            return Err(Error::config(format!(
                "unsupported protocol {:?} in port mapping",
                m.protocol
            )));
        }
        if m.host_port == 0 || m.container_port == 0 {
            return Err(Error::config(format!(
                "invalid port mapping {}:{}",
                m.host_port, m.container_port
            )));
        }
        let host_ip: Option<std::net::IpAddr> = match m.host_ip.as_str() {
            "" => None,
            ip => Some(
                ip.parse::<std::net::IpAddr>()
                    .map_err(|_| Error::config(format!("invalid hostIP {ip:?}")))?,
            )
            .filter(|ip: &std::net::IpAddr| !ip.is_unspecified()),
        };
        for ip in container_ips
            .iter()
            .filter(|ip| host_ip.is_none_or(|h| h.is_ipv4() == ip.is_ipv4()))
        {
            let (fam, to, local) = if ip.is_ipv4() {
                ("ip", format!("{ip}:{}", m.container_port), "127.0.0.0/8")
            } else {
                ("ip6", format!("[{ip}]:{}", m.container_port), "::1")
            };
            let dest = match host_ip {
                Some(h) => format!("{fam} daddr {h}"),
                None => format!(
                    "meta nfproto {} fib daddr type local",
                    if ip.is_ipv4() { "ipv4" } else { "ipv6" }
                ),
            };
            for chain in [&pre, &out] {
                s += &format!(
                    "add rule inet {INET_TABLE} {chain} {dest} {proto} dport {} dnat {fam} to {to} comment \"{note}\"\n",
                    m.host_port
                );
            }
            let source = match masq {
                PortMasq::All => String::new(),
                PortMasq::Hairpin => format!("{fam} saddr {{ {local}, {ip} }} "),
                PortMasq::None => continue,
            };
            s += &format!(
                "add rule inet {INET_TABLE} {post} ct status dnat {source}{fam} daddr {ip} {proto} dport {} masquerade comment \"{note}\"\n",
                m.container_port
            );
        }
    }
    Ok(s)
}

/// Removes the container's port mappings over netlink (no nft run); nothing there is
/// fine.
pub fn remove_port_mappings(network: &str, container_id: &str) -> Result<(), Error> {
    let chains = port_chains(network, container_id).map(|(chain, _)| chain);
    nftables::delete_chains(Family::Inet, INET_TABLE, &chains).map_err(|e| {
        super::netlink_error(&format!("removing the port mappings of {container_id}"), e)
    })
}

/// The container's DNAT rules as nft lists them (for CHECK); empty when there are none.
pub fn listed_port_mappings(network: &str, container_id: &str) -> String {
    let [(pre, _), _, _] = port_chains(network, container_id);
    super::nft_output(&["list", "chain", "inet", INET_TABLE, &pre])
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

/// Script: remove the port mappings of `network`'s containers that are not in `valid`.
pub fn remove_stale_port_mappings(network: &str, valid: &HashSet<String>) -> Result<String, Error> {
    remove_stale(network, &["pm-pre", "pm-out", "pm-post"], valid)
}

/// Script deleting the `kinds` chains whose rules' comments name a container of
/// `network` that is not in `valid` (container IDs); empty when there are none.
fn remove_stale(network: &str, kinds: &[&str], valid: &HashSet<String>) -> Result<String, Error> {
    let ours = Label::network_prefix(network);
    let keep: HashSet<String> = valid
        .iter()
        .map(|c| Label::new(network, c).as_str().to_string())
        .collect();
    let mut stale = BTreeSet::new();
    for rule in listed_table()?.iter().filter_map(|i| i.get("rule")) {
        let (Some(chain), Some(note)) = (rule["chain"].as_str(), rule["comment"].as_str()) else {
            continue;
        };
        let Some((kind, hash)) = chain
            .rsplit_once('-')
            .filter(|(_, h)| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        else {
            continue;
        };
        if kinds.contains(&kind) && note.starts_with(&ours) && !keep.contains(note) {
            stale.insert(hash.to_string());
        }
    }
    Ok(stale
        .iter()
        .flat_map(|h| {
            kinds
                .iter()
                .map(move |k| delete_chain("inet", INET_TABLE, &format!("{k}-{h}")))
        })
        .collect())
}

/// `add` first so that deleting what is not there succeeds (nft 1.0.6 has no `destroy`).
fn delete_chain(family: &str, table: &str, chain: &str) -> String {
    format!(
        "add table {family} {table}\nadd chain {family} {table} {chain}\n\
         flush chain {family} {table} {chain}\ndelete chain {family} {table} {chain}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_per_container() {
        assert_ne!(
            chain_name("pm-pre", "n", "a"),
            chain_name("pm-pre", "n", "b")
        );
        assert_eq!(
            chain_name("pm-pre", "n", "a"),
            chain_name("pm-pre", "n", "a")
        );
    }

    #[test]
    fn port_mapping_script() {
        let m = |p: &str, ip: &str| PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: p.into(),
            host_ip: ip.into(),
        };
        let ips: Vec<std::net::IpAddr> =
            vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let s = port_mappings("n", "c", &[m("tcp", "")], &ips, PortMasq::Hairpin).unwrap();
        assert!(
            s.contains(
                "meta nfproto ipv4 fib daddr type local tcp dport 8080 dnat ip to 10.1.0.5:80"
            ),
            "{s}"
        );
        assert!(s.contains("dnat ip6 to [fd00::5]:80"), "{s}");
        assert!(s.contains("ct status dnat ip saddr { 127.0.0.0/8, 10.1.0.5 } ip daddr 10.1.0.5 tcp dport 80 masquerade"), "{s}");
        let s = port_mappings("n", "c", &[m("UDP", "192.168.1.1")], &ips, PortMasq::None).unwrap();
        assert!(
            s.contains("ip daddr 192.168.1.1 udp dport 8080 dnat ip to 10.1.0.5:80")
                && !s.contains("fd00::5"),
            "{s}"
        );
        assert!(!s.contains("masquerade"));
        assert!(port_mappings("n", "c", &[m("icmp", "")], &ips, PortMasq::All).is_err());
        assert!(port_mappings("n", "c", &[m("tcp", "bogus")], &ips, PortMasq::All).is_err());
    }
}
