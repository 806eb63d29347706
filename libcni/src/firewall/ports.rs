//! Port mappings (`portmap`): per-container nat chains DNATing host ports to the
//! container, made and removed over netlink; GC and CHECK read them with nft.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use super::{listed_table, Label, INET_TABLE};
use crate::names::stable_hash;
use crate::net::nftables::{self, Action, Family, Hook, Match, NatChain, Rule};
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

impl PortMapping {
    /// The one host address the mapping is restricted to, if any.
    fn host_ip(&self) -> Result<Option<IpAddr>, Error> {
        match self.host_ip.as_str() {
            "" => Ok(None),
            ip => ip
                .parse::<IpAddr>()
                .map(|ip| Some(ip).filter(|ip| !ip.is_unspecified()))
                .map_err(|_| Error::config(format!("invalid hostIP {ip:?}"))),
        }
    }

    /// Whether the mapping forwards to `container_ip`: a `hostIP` takes only the
    /// container's address of its own family.
    pub fn reaches(&self, container_ip: &IpAddr) -> bool {
        self.host_ip()
            .ok()
            .flatten()
            .is_none_or(|h| h.is_ipv4() == container_ip.is_ipv4())
    }
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

fn port_chains(network: &str, container_id: &str) -> [NatChain; 3] {
    let chain = |kind, hook, priority| NatChain {
        name: chain_name(kind, network, container_id),
        hook,
        priority,
    };
    [
        chain("pm-pre", Hook::Prerouting, -100), // dstnat
        chain("pm-out", Hook::Output, -100),
        chain("pm-post", Hook::Postrouting, 100), // srcnat
    ]
}

/// The rules: DNAT each mapping from the host's addresses (or its `hostIP`), for traffic
/// arriving and locally made (localhost too), to the container's address of the same
/// family, and masquerade what `masq` asks for.
pub fn port_mappings(
    network: &str,
    container_id: &str,
    mappings: &[PortMapping],
    container_ips: &[IpAddr],
    masq: PortMasq,
) -> Result<Vec<Rule>, Error> {
    let note = Label::new(network, container_id).as_str().to_string();
    let [pre, out, post] = port_chains(network, container_id).map(|c| c.name);
    let mut rules = Vec::new();
    let mut rule = |chain: &String, matches: Vec<Match>, action| {
        rules.push(Rule {
            chain: chain.clone(),
            matches,
            action,
            comment: note.clone(),
        })
    };
    for m in mappings {
        let proto = match m.protocol.to_ascii_lowercase().as_str() {
            "tcp" => libc::IPPROTO_TCP as u8,
            "udp" => libc::IPPROTO_UDP as u8,
            "sctp" => libc::IPPROTO_SCTP as u8,
            _ => {
                return Err(Error::config(format!(
                    "unsupported protocol {:?} in port mapping",
                    m.protocol
                )))
            }
        };
        if m.host_port == 0 || m.container_port == 0 {
            return Err(Error::config(format!(
                "invalid port mapping {}:{}",
                m.host_port, m.container_port
            )));
        }
        let host_ip = m.host_ip()?;
        for &ip in container_ips.iter().filter(|ip| m.reaches(ip)) {
            let v6 = ip.is_ipv6();
            let dest = match host_ip {
                Some(h) => vec![Match::Destination(h)],
                None => vec![Match::Family { v6 }, Match::LocalDestination],
            };
            let dnat = [Match::DestinationPort(proto, m.host_port)];
            for chain in [&pre, &out] {
                rule(
                    chain,
                    [&dest[..], &dnat].concat(),
                    Action::Dnat(ip, m.container_port),
                );
            }
            let to_container = [
                Match::Destination(ip),
                Match::DestinationPort(proto, m.container_port),
            ];
            // hairpin: from localhost or the container itself (one rule each, where nft
            // would take an anonymous set of both)
            let sources = match masq {
                PortMasq::All => vec![None],
                PortMasq::Hairpin => {
                    vec![Some(Match::LoopbackSource { v6 }), Some(Match::Source(ip))]
                }
                PortMasq::None => vec![],
            };
            for source in sources {
                let matches = [Match::Dnatted].into_iter().chain(source);
                rule(
                    &post,
                    matches.chain(to_container.clone()).collect(),
                    Action::Masquerade,
                );
            }
        }
    }
    Ok(rules)
}

/// Makes the container's chains hold exactly `rules`, over netlink (no nft run).
pub fn add_port_mappings(network: &str, container_id: &str, rules: &[Rule]) -> Result<(), Error> {
    let chains = port_chains(network, container_id);
    nftables::replace_nat_chains(Family::Inet, INET_TABLE, &chains, rules)
        .map_err(|e| super::netlink_error(&format!("forwarding ports to {container_id}"), e))
}

/// Removes the container's port mappings over netlink (no nft run); nothing there is
/// fine.
pub fn remove_port_mappings(network: &str, container_id: &str) -> Result<(), Error> {
    let chains = port_chains(network, container_id).map(|c| c.name);
    nftables::delete_chains(Family::Inet, INET_TABLE, &chains).map_err(|e| {
        super::netlink_error(&format!("removing the port mappings of {container_id}"), e)
    })
}

/// The container's DNAT rules as nft lists them (for CHECK); empty when there are none.
pub fn listed_port_mappings(network: &str, container_id: &str) -> String {
    let [pre, _, _] = port_chains(network, container_id);
    super::nft_output(&["list", "chain", "inet", INET_TABLE, &pre.name])
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
    fn port_mapping_rules() {
        let m = |p: &str, ip: &str| PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: p.into(),
            host_ip: ip.into(),
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let ips = [ip("10.1.0.5"), ip("fd00::5")];
        let [pre, out, post] = port_chains("n", "c").map(|c| c.name);
        let rules = port_mappings("n", "c", &[m("tcp", "")], &ips, PortMasq::Hairpin).unwrap();
        let local4 = vec![
            Match::Family { v6: false },
            Match::LocalDestination,
            Match::DestinationPort(6, 8080),
        ];
        let dnat4 = Action::Dnat(ip("10.1.0.5"), 80);
        assert!(rules
            .iter()
            .any(|r| r.chain == pre && r.matches == local4 && r.action == dnat4));
        assert!(rules
            .iter()
            .any(|r| r.chain == out && r.matches == local4 && r.action == dnat4));
        assert!(rules
            .iter()
            .any(|r| r.action == Action::Dnat(ip("fd00::5"), 80)));
        let hairpin = |source| {
            vec![
                Match::Dnatted,
                source,
                Match::Destination(ip("10.1.0.5")),
                Match::DestinationPort(6, 80),
            ]
        };
        for source in [
            Match::LoopbackSource { v6: false },
            Match::Source(ip("10.1.0.5")),
        ] {
            let want = hairpin(source);
            assert!(
                rules.iter().any(|r| r.chain == post && r.matches == want),
                "{rules:?}"
            );
        }
        assert!(rules
            .iter()
            .all(|r| r.comment == Label::new("n", "c").as_str()));
        // 2 families x (pre, out, 2 hairpin sources)
        assert_eq!(rules.len(), 8);

        let rules =
            port_mappings("n", "c", &[m("UDP", "192.168.1.1")], &ips, PortMasq::None).unwrap();
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!(
            rules[0].matches,
            vec![
                Match::Destination(ip("192.168.1.1")),
                Match::DestinationPort(17, 8080)
            ]
        );
        let all = port_mappings("n", "c", &[m("sctp", "")], &ips[..1], PortMasq::All).unwrap();
        assert_eq!(
            all[2].matches,
            vec![
                Match::Dnatted,
                Match::Destination(ip("10.1.0.5")),
                Match::DestinationPort(132, 80)
            ]
        );
        assert!(port_mappings("n", "c", &[m("icmp", "")], &ips, PortMasq::All).is_err());
        assert!(port_mappings("n", "c", &[m("tcp", "bogus")], &ips, PortMasq::All).is_err());
    }
}
