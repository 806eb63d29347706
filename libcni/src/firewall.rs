//! Our nftables rules in the host namespace: masquerade for `ipMasq`, the MAC spoof check
//! and port mappings, and what every user of our table shares (its name, rule labels,
//! listing, applying scripts). Each container gets chains of its own, named from
//! (network, containerID), so DEL finds them without prevResult. A container's rules are one script, applied as one
//! `nft -f -` transaction; [`apply`] starts it and the caller waits when it needs to, since
//! nft and the kernel's chain teardown take milliseconds the caller can spend elsewhere.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::process::{Child, Command, Stdio};

use ipnetwork::IpNetwork;

use crate::net::stable_hash;
use crate::spec::{code, Error};

/// Our table for NAT of IP traffic (both families).
pub const INET_TABLE: &str = "cni_rs";
/// Our table for layer-2 checks on bridge ports.
const BRIDGE_TABLE: &str = "cni_rs_br";

fn chain_name(kind: &str, network: &str, container_id: &str) -> String {
    format!("{kind}-{:016x}", stable_hash(&[network, container_id]))
}

/// A rule comment that tells a person whose rule this is (nft allows 128 bytes).
pub fn comment(network: &str, container_id: &str) -> String {
    let mut c = format!("{network}/{container_id}");
    c.retain(|ch| ch != '"' && ch != '\\');
    c.truncate(120);
    c
}

/// Script: masquerade traffic from the container's addresses to anything outside their
/// subnets (and not multicast), replacing the container's previous rules.
pub fn masquerade(network: &str, container_id: &str, addrs: &[IpNetwork]) -> String {
    let chain = chain_name("masq", network, container_id);
    let mut s = format!(
        "add table inet {INET_TABLE}\n\
         add chain inet {INET_TABLE} {chain} {{ type nat hook postrouting priority srcnat; }}\n\
         flush chain inet {INET_TABLE} {chain}\n"
    );
    let note = comment(network, container_id);
    for a in addrs {
        let (fam, mcast) = if a.is_ipv4() {
            ("ip", "224.0.0.0/4")
        } else {
            ("ip6", "ff00::/8")
        };
        let subnet = IpNetwork::new(a.network(), a.prefix()).expect("prefix from a valid address");
        s += &format!(
            "add rule inet {INET_TABLE} {chain} {fam} saddr {} {fam} daddr != {{ {subnet}, {mcast} }} masquerade comment \"{note}\"\n",
            a.ip()
        );
    }
    s
}

/// Script: drop frames entering the bridge from `host_veth` whose source MAC is not `mac`.
pub fn mac_spoof_check(network: &str, container_id: &str, host_veth: &str, mac: &str) -> String {
    let chain = chain_name("mac", network, container_id);
    format!(
        "add table bridge {BRIDGE_TABLE}\n\
         add chain bridge {BRIDGE_TABLE} {chain} {{ type filter hook prerouting priority -300; }}\n\
         flush chain bridge {BRIDGE_TABLE} {chain}\n\
         add rule bridge {BRIDGE_TABLE} {chain} iifname \"{host_veth}\" ether saddr != {mac} drop comment \"{}\"\n",
        comment(network, container_id)
    )
}

/// Script: remove the container's masquerade rules; nothing there is fine.
pub fn remove_masquerade(network: &str, container_id: &str) -> String {
    delete_chain(
        "inet",
        INET_TABLE,
        &chain_name("masq", network, container_id),
    )
}

/// Script: remove the container's MAC spoof check; nothing there is fine.
pub fn remove_mac_spoof_check(network: &str, container_id: &str) -> String {
    delete_chain(
        "bridge",
        BRIDGE_TABLE,
        &chain_name("mac", network, container_id),
    )
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
    let note = comment(network, container_id);
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

/// Script: remove the container's port mappings; nothing there is fine.
pub fn remove_port_mappings(network: &str, container_id: &str) -> String {
    port_chains(network, container_id)
        .iter()
        .map(|(chain, _)| delete_chain("inet", INET_TABLE, chain))
        .collect()
}

/// The container's DNAT rules as nft lists them (for CHECK); empty when there are none.
pub fn listed_port_mappings(network: &str, container_id: &str) -> String {
    let [(pre, _), _, _] = port_chains(network, container_id);
    Command::new("nft")
        .args(["list", "chain", "inet", INET_TABLE, &pre])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

/// Our table as nft's JSON items; empty when the table does not exist.
pub fn listed_table() -> Result<Vec<serde_json::Value>, Error> {
    nft_json(&["list", "table", "inet", INET_TABLE])
}

/// Our table's sets with their elements, without the chains (for quick lookups).
pub fn listed_sets() -> Result<Vec<serde_json::Value>, Error> {
    let mut sets = nft_json(&["list", "sets", "inet"])?;
    sets.retain(|i| i["set"]["table"] == INET_TABLE);
    Ok(sets)
}

/// The items of nft's JSON output for `args`; empty when what they name is missing.
fn nft_json(args: &[&str]) -> Result<Vec<serde_json::Value>, Error> {
    let out = Command::new("nft")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| Error::new(code::FIREWALL, "running nft").details(e.to_string()))?;
    if !out.status.success() {
        return Ok(Vec::new());
    }
    let mut listed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::new(code::FIREWALL, "reading nft's listing").details(e.to_string()))?;
    Ok(match listed["nftables"].take() {
        serde_json::Value::Array(items) => items,
        _ => Vec::new(),
    })
}

/// Script: remove the port mappings of `network`'s containers that are not in `valid`.
pub fn remove_stale_port_mappings(network: &str, valid: &HashSet<String>) -> Result<String, Error> {
    remove_stale(network, &["pm-pre", "pm-out", "pm-post"], valid)
}

/// Script deleting the `kinds` chains whose rules' comments name a container of
/// `network` that is not in `valid` (container IDs); empty when there are none.
fn remove_stale(network: &str, kinds: &[&str], valid: &HashSet<String>) -> Result<String, Error> {
    let ours = comment(network, "");
    let keep: HashSet<String> = valid.iter().map(|c| comment(network, c)).collect();
    let mut stale = BTreeSet::new();
    for rule in listed_table()?.iter().filter_map(|i| i.get("rule")) {
        let (Some(chain), Some(note)) = (rule["chain"].as_str(), rule["comment"].as_str()) else {
            continue;
        };
        let Some((kind, hash)) = chain.rsplit_once('-') else {
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

/// An nft transaction under way.
pub struct Pending {
    child: Child,
    what: String,
}

/// Starts `script` as one nft transaction; `what` names it in errors.
pub fn apply(script: &str, what: impl Into<String>) -> Result<Pending, Error> {
    let what = what.into();
    let fail = |d: String| Error::new(code::FIREWALL, what.clone()).details(d);
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("running nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| fail(format!("writing to nft: {e}")))?;
    }
    Ok(Pending { child, what })
}

/// Applies `script` and waits for it; an empty script does nothing.
pub fn run(script: &str, what: impl Into<String>) -> Result<(), Error> {
    if script.is_empty() {
        return Ok(());
    }
    apply(script, what)?.wait()
}

impl Pending {
    pub fn wait(self) -> Result<(), Error> {
        let fail = |d: String| Error::new(code::FIREWALL, self.what.clone()).details(d);
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| fail(format!("waiting for nft: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(fail(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_per_container() {
        assert_ne!(chain_name("masq", "n", "a"), chain_name("masq", "n", "b"));
        assert_eq!(chain_name("masq", "n", "a"), chain_name("masq", "n", "a"));
    }

    #[test]
    fn comment_is_bounded_and_unquoted() {
        let c = comment("n\"et", &"x".repeat(300));
        assert!(c.len() <= 120 && !c.contains('"'));
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

    #[test]
    fn masquerade_script_covers_each_family() {
        let s = masquerade(
            "n",
            "c",
            &[
                "10.1.0.5/24".parse().unwrap(),
                "fd00::5/64".parse().unwrap(),
            ],
        );
        assert!(
            s.contains("ip saddr 10.1.0.5 ip daddr != { 10.1.0.0/24, 224.0.0.0/4 } masquerade"),
            "{s}"
        );
        assert!(
            s.contains("ip6 saddr fd00::5 ip6 daddr != { fd00::/64, ff00::/8 } masquerade"),
            "{s}"
        );
    }
}
