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
pub fn masquerade(network: &str, container_id: &str, addrs: &[IpNetwork]) -> String {
    let note = comment(network, container_id);
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

/// Script: stop masquerading the addresses labelled with these containers of `network`
/// (for when their addresses are unknown); empty when there are none.
pub fn remove_labelled_masquerade(network: &str, container_ids: &[&str]) -> Result<String, Error> {
    let notes: HashSet<String> = container_ids.iter().map(|c| comment(network, c)).collect();
    let mine: Vec<Element> = labelled_elements("inet", |set| set.starts_with("masq"))?
        .into_iter()
        .filter(|e| notes.contains(&e.note))
        .collect();
    Ok(delete_elements("inet", &mine))
}

/// Script: the shared MAC spoof check, made once: a chain on the bridge prerouting hook
/// drops frames from a port in the set `ports` whose (port, source MAC) pair is not in
/// the set `pairs`. One lookup per frame however many containers there are.
pub fn mac_spoof_setup() -> String {
    format!(
        "add table bridge {BRIDGE_TABLE}\n\
         add set bridge {BRIDGE_TABLE} ports {{ type ifname; }}\n\
         add set bridge {BRIDGE_TABLE} pairs {{ type ifname . ether_addr; }}\n\
         add chain bridge {BRIDGE_TABLE} mac_check {{ type filter hook prerouting priority -300; }}\n\
         flush chain bridge {BRIDGE_TABLE} mac_check\n\
         add rule bridge {BRIDGE_TABLE} mac_check iifname @ports iifname . ether saddr != @pairs drop\n"
    )
}

/// Script: only `mac` may send from `host_veth`. Adds set elements only, so it fails
/// while the shared check is missing: apply it with [`apply_with_setup`] and
/// [`mac_spoof_setup`].
pub fn mac_spoof_check(network: &str, container_id: &str, host_veth: &str, mac: &str) -> String {
    let note = comment(network, container_id);
    format!(
        "add element bridge {BRIDGE_TABLE} ports {{ \"{host_veth}\" comment \"{note}\" }}\n\
         add element bridge {BRIDGE_TABLE} pairs {{ \"{host_veth}\" . {mac} comment \"{note}\" }}\n"
    )
}

/// Script: lift the check of `host_veth`; fails only when the shared sets are missing
/// (apply it with [`apply_if_present`]).
pub fn remove_mac_spoof_check(host_veth: &str, mac: &str) -> String {
    let mut s = String::new();
    for (set, key) in [
        ("ports", format!("\"{host_veth}\"")),
        ("pairs", format!("\"{host_veth}\" . {mac}")),
    ] {
        s += &format!(
            "add element bridge {BRIDGE_TABLE} {set} {{ {key} }}\n\
             delete element bridge {BRIDGE_TABLE} {set} {{ {key} }}\n"
        );
    }
    s
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

/// A labelled element of one of our sets: its key as nft writes it, and its label.
pub struct Element {
    pub set: String,
    pub key: String,
    pub note: String,
}

/// The labelled elements of those sets of our table in `family` ("inet" or "bridge")
/// whose names `wanted` accepts.
pub fn labelled_elements(
    family: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<Element>, Error> {
    let table = if family == "bridge" {
        BRIDGE_TABLE
    } else {
        INET_TABLE
    };
    let mut out = Vec::new();
    for item in nft_json(&["list", "sets", family])? {
        let set = &item["set"];
        let Some(name) = set["name"].as_str() else {
            continue;
        };
        if set["table"] != table || !wanted(name) {
            continue;
        }
        for e in set["elem"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let e = &e["elem"];
            if let (Some(key), Some(note)) = (element_key(&e["val"]), e["comment"].as_str()) {
                out.push(Element {
                    set: name.to_string(),
                    key,
                    note: note.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// An element's key in nft's syntax, from its JSON form.
fn element_key(v: &serde_json::Value) -> Option<String> {
    if let Some(s) = v.as_str() {
        return Some(quote_if_name(s));
    }
    if let Some(parts) = v["concat"].as_array() {
        let keys: Option<Vec<String>> = parts.iter().map(element_key).collect();
        return keys.map(|k| k.join(" . "));
    }
    if let (Some(addr), Some(len)) = (v["prefix"]["addr"].as_str(), v["prefix"]["len"].as_u64()) {
        return Some(format!("{addr}/{len}"));
    }
    if let Some([a, b]) = v["range"].as_array().map(Vec::as_slice) {
        return Some(format!("{}-{}", element_key(a)?, element_key(b)?));
    }
    None
}

/// Interface names are strings in nft's syntax; IP and MAC addresses are not.
fn quote_if_name(s: &str) -> String {
    if s.parse::<std::net::IpAddr>().is_ok() || s.contains(':') {
        s.to_string()
    } else {
        format!("\"{s}\"")
    }
}

/// Script deleting these elements from our table in `family`.
pub fn delete_elements(family: &str, elements: &[Element]) -> String {
    let table = if family == "bridge" {
        BRIDGE_TABLE
    } else {
        INET_TABLE
    };
    elements
        .iter()
        .map(|e| {
            format!(
                "delete element {family} {table} {} {{ {} }}\n",
                e.set, e.key
            )
        })
        .collect()
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
    script: String,
    recovery: Recovery,
}

/// What [`Pending::wait`] does when the transaction fails.
enum Recovery {
    Fail,
    /// Run this setup and the script again, as one transaction.
    Setup(String),
    /// Succeed if what the script names does not exist (nothing to remove).
    MissingIsFine,
}

/// Starts `script` as one nft transaction; `what` names it in errors.
pub fn apply(script: &str, what: impl Into<String>) -> Result<Pending, Error> {
    start(script, what.into(), Recovery::Fail)
}

/// Starts `script`, which only adds to shared objects; should it fail, [`Pending::wait`]
/// runs `setup` with it. Re-declaring existing objects costs the kernel an RCU grace
/// period, so the setup is paid only when it is missing.
pub fn apply_with_setup(
    script: &str,
    setup: String,
    what: impl Into<String>,
) -> Result<Pending, Error> {
    start(script, what.into(), Recovery::Setup(setup))
}

/// Starts a removal `script` that fails only when its table or sets do not exist, which
/// counts as done.
pub fn apply_if_present(script: &str, what: impl Into<String>) -> Result<Pending, Error> {
    start(script, what.into(), Recovery::MissingIsFine)
}

fn start(script: &str, what: String, recovery: Recovery) -> Result<Pending, Error> {
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
    Ok(Pending {
        child,
        what,
        script: script.to_string(),
        recovery,
    })
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
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        match self.recovery {
            Recovery::Fail => Err(fail(stderr)),
            Recovery::Setup(setup) => run(&(setup + &self.script), self.what),
            Recovery::MissingIsFine if stderr.contains("No such file or directory") => Ok(()),
            Recovery::MissingIsFine => Err(fail(stderr)),
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
    fn masquerade_elements_cover_each_family() {
        let addrs: Vec<IpNetwork> = vec![
            "10.1.0.5/24".parse().unwrap(),
            "fd00::5/64".parse().unwrap(),
        ];
        let s = masquerade("n", "c", &addrs);
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

    #[test]
    fn element_keys_in_nft_syntax() {
        let v: serde_json::Value = serde_json::json!({"concat": [
            "fd00::5", {"prefix": {"addr": "fd00::", "len": 64}}]});
        assert_eq!(element_key(&v).unwrap(), "fd00::5 . fd00::/64");
        let v = serde_json::json!({"concat": ["veth0123", "02:00:00:00:00:01"]});
        assert_eq!(element_key(&v).unwrap(), "\"veth0123\" . 02:00:00:00:00:01");
    }
}
