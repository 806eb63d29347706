//! Our nftables rules in the host namespace: masquerade for `ipMasq` and the MAC spoof
//! check. Each container gets chains of its own, named from (network, containerID), so DEL
//! finds them without prevResult; each change is one `nft -f -` transaction.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnetwork::IpNetwork;

use crate::net::stable_hash;
use crate::spec::{code, Error};

/// Our table for NAT and filtering of IP traffic (both families).
const INET_TABLE: &str = "cni_rs";
/// Our table for layer-2 checks on bridge ports.
const BRIDGE_TABLE: &str = "cni_rs_br";

fn chain_name(kind: &str, network: &str, container_id: &str) -> String {
    format!("{kind}-{:016x}", stable_hash(&[network, container_id]))
}

/// A rule comment that tells a person whose rule this is (nft allows 128 bytes).
fn comment(network: &str, container_id: &str) -> String {
    let mut c = format!("{network}/{container_id}");
    c.retain(|ch| ch != '"' && ch != '\\');
    c.truncate(120);
    c
}

/// Masquerades traffic from the container's addresses to anything outside their subnets
/// (and not multicast). Replaces the container's previous rules, if any.
pub fn add_masquerade(network: &str, container_id: &str, addrs: &[IpNetwork]) -> Result<(), Error> {
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
        let subnet =
            IpNetwork::new(a.network(), a.prefix()).map_err(|e| Error::config(e.to_string()))?;
        s += &format!(
            "add rule inet {INET_TABLE} {chain} {fam} saddr {} {fam} daddr != {{ {subnet}, {mcast} }} masquerade comment \"{note}\"\n",
            a.ip()
        );
    }
    nft(
        &s,
        &format!("installing masquerade rules for {container_id}"),
    )
}

/// Removes the container's masquerade rules; nothing there is fine.
pub fn del_masquerade(network: &str, container_id: &str) -> Result<(), Error> {
    let chain = chain_name("masq", network, container_id);
    nft(
        &delete_chain_script("inet", INET_TABLE, &chain),
        &format!("removing masquerade rules of {container_id}"),
    )
}

/// Drops frames entering the bridge from `host_veth` whose source MAC is not `mac`.
pub fn add_mac_spoof_check(
    network: &str,
    container_id: &str,
    host_veth: &str,
    mac: &str,
) -> Result<(), Error> {
    let chain = chain_name("mac", network, container_id);
    let s = format!(
        "add table bridge {BRIDGE_TABLE}\n\
         add chain bridge {BRIDGE_TABLE} {chain} {{ type filter hook prerouting priority -300; }}\n\
         flush chain bridge {BRIDGE_TABLE} {chain}\n\
         add rule bridge {BRIDGE_TABLE} {chain} iifname \"{host_veth}\" ether saddr != {mac} drop comment \"{}\"\n",
        comment(network, container_id)
    );
    nft(
        &s,
        &format!("installing MAC spoof check for {container_id}"),
    )
}

pub fn del_mac_spoof_check(network: &str, container_id: &str) -> Result<(), Error> {
    let chain = chain_name("mac", network, container_id);
    nft(
        &delete_chain_script("bridge", BRIDGE_TABLE, &chain),
        &format!("removing MAC spoof check of {container_id}"),
    )
}

/// `add` first so that deleting what is not there succeeds (nft 1.0.6 has no `destroy`).
fn delete_chain_script(family: &str, table: &str, chain: &str) -> String {
    format!(
        "add table {family} {table}\nadd chain {family} {table} {chain}\n\
         flush chain {family} {table} {chain}\ndelete chain {family} {table} {chain}\n"
    )
}

fn nft(script: &str, what: &str) -> Result<(), Error> {
    let fail = |d: String| Error::new(code::FIREWALL, what.to_string()).details(d);
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
    let out = child
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
}
