//! Our nftables rules in the host namespace: masquerade for `ipMasq` and the MAC spoof
//! check. Each container gets chains of its own, named from (network, containerID), so DEL
//! finds them without prevResult. A container's rules are one script, applied as one
//! `nft -f -` transaction; [`apply`] starts it and the caller waits when it needs to, since
//! nft and the kernel's chain teardown take milliseconds the caller can spend elsewhere.

use std::io::Write;
use std::process::{Child, Command, Stdio};

use ipnetwork::IpNetwork;

use crate::net::stable_hash;
use crate::spec::{code, Error};

/// Our table for NAT of IP traffic (both families).
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
