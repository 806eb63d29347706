//! The firewall plugin's nftables objects, in our table `inet cni_rs`.
//!
//! Forward path, per admin chain name A (default `CNI-ADMIN`): sets `A-v4` and `A-v6`
//! of container addresses, each labelled "network/containerID"; a base chain
//! `A-forward` on the forward hook that jumps to A (the administrator's, never flushed,
//! so a drop there wins) and then accepts what the set addresses send and replies to
//! them. A packet costs one set lookup however many containers there are.
//!
//! ADD only adds set elements, over netlink (no nft run); touching or deleting existing
//! objects waits for an RCU grace period (10-20 ms), so the shared objects are made (by
//! nft) only when that first transaction fails for want of them.
//!
//! An nftables accept ends only its own base chain: a drop in another table (an iptables
//! FORWARD policy of DROP, say) still wins over it.

use std::collections::HashSet;
use std::net::IpAddr;

use libcni::firewall::iptables::{self, ACCEPTED_MARK};
use libcni::firewall::{
    add_elements, labelled_set_elements, listed_sets, listed_table, lock, remove_elements, run,
    set_element, KeyPart, Label, SetElement, Word, INET_TABLE,
};
use libcni::Error;

fn set_name(admin: &Word, ip: &IpAddr) -> String {
    format!("{admin}-{}", if ip.is_ipv4() { "v4" } else { "v6" })
}

/// Accepts the container's traffic on the forward path, creating the shared chains and
/// sets behind `admin` when they are missing.
pub fn allow_forward(
    note: &Label,
    container_id: &str,
    addrs: &[IpAddr],
    admin: &Word,
) -> Result<(), Error> {
    let elements: Vec<_> = addrs
        .iter()
        .map(|ip| {
            let set = set_name(admin, ip);
            set_element("inet", &set, &[KeyPart::Addr(*ip)], false, Some(note))
        })
        .collect();
    if elements.is_empty() {
        return Ok(());
    }
    lock::hold(note)?;
    let what = format!("accepting the forwarded traffic of {container_id}");
    if add_elements(&elements, &forward_setup(admin), &what)? {
        iptables::accept_marked()?;
    }
    Ok(())
}

/// Script: the shared chain and sets behind `admin`, and `admin` itself when missing.
fn forward_setup(admin: &Word) -> String {
    let chain = format!("{admin}-forward");
    // marked, so iptables' FORWARD accepts it too (see libcni::firewall::iptables)
    let accept = format!("meta mark set meta mark or {ACCEPTED_MARK:#x} accept");
    let mut setup = format!(
        "add table inet {INET_TABLE}\n\
         add chain inet {INET_TABLE} {admin}\n\
         add chain inet {INET_TABLE} {chain} {{ type filter hook forward priority filter - 5; }}\n\
         flush chain inet {INET_TABLE} {chain}\n\
         add rule inet {INET_TABLE} {chain} jump {admin}\n"
    );
    for (fam, kind, probe) in [
        ("ip", "ipv4_addr", IpAddr::from([0, 0, 0, 0])),
        ("ip6", "ipv6_addr", IpAddr::from([0u16; 8])),
    ] {
        let set = set_name(admin, &probe);
        setup += &format!(
            "add set inet {INET_TABLE} {set} {{ type {kind}; }}\n\
             add rule inet {INET_TABLE} {chain} {fam} daddr @{set} ct state established,related {accept}\n\
             add rule inet {INET_TABLE} {chain} {fam} saddr @{set} {accept}\n"
        );
    }
    setup
}

/// The elements of our forward sets whose labels `labelled` accepts.
fn elements(labelled: impl Fn(&str) -> bool) -> Result<Vec<SetElement>, Error> {
    labelled_set_elements(
        "inet",
        |set| set.ends_with("-v4") || set.ends_with("-v6"),
        labelled,
    )
}

/// Removes the container's addresses from our sets, whichever admin chain they are under.
pub fn remove_forward(note: &Label) -> Result<(), Error> {
    lock::hold(note)?;
    remove_elements(
        &elements(|l| l == note.as_str())?,
        &format!("removing the forward rules of {note}"),
    )
}

/// Removes the addresses of `network`'s containers whose IDs are not in `valid`.
pub fn remove_stale_forward(network: &str, valid: &HashSet<String>) -> Result<(), Error> {
    lock::hold_all()?;
    let ours = Label::network_prefix(network);
    let keep: HashSet<String> = valid
        .iter()
        .map(|c| Label::new(network, c).as_str().to_string())
        .collect();
    remove_elements(
        &elements(|l| l.starts_with(&ours) && !keep.contains(l))?,
        "removing stale forward rules",
    )
}

/// What CHECK misses of the container's forward rules under `admin`.
pub fn missing_forward(note: &Label, addrs: &[IpAddr], admin: &Word) -> Result<Vec<String>, Error> {
    let listed = elements(|l| l == note.as_str())?;
    let chain_exists = listed_table()?
        .iter()
        .any(|i| i["chain"]["name"] == format!("{admin}-forward").as_str());
    let mut missing: Vec<String> = addrs
        .iter()
        .filter(|ip| {
            let want = set_element(
                "inet",
                &set_name(admin, ip),
                &[KeyPart::Addr(**ip)],
                false,
                None,
            );
            !listed
                .iter()
                .any(|e| e.set == want.set && e.key == want.key)
        })
        .map(|ip| format!("accept for {ip}"))
        .collect();
    if !chain_exists {
        missing.push(format!("chain {admin}-forward"));
    }
    Ok(missing)
}

/// Isolates `bridge` from the other isolated bridges: traffic between two bridges in the
/// set is dropped, and with `strict` also traffic between ports of `bridge` itself
/// (routed or, with br_netfilter, bridged). Shared by all containers of the bridge and
/// kept on DEL, since other containers may still use it.
pub fn isolate_bridge(bridge: &Word, strict: bool) -> Result<(), Error> {
    let same = format!("{{ \"{bridge}\" . \"{bridge}\" }}");
    let mut s = format!(
        "add table inet {INET_TABLE}\n\
         add set inet {INET_TABLE} isolated {{ type ifname; }}\n\
         add set inet {INET_TABLE} isolated_same {{ type ifname . ifname; }}\n\
         add element inet {INET_TABLE} isolated {{ \"{bridge}\" }}\n\
         add element inet {INET_TABLE} isolated_same {same}\n"
    );
    if strict {
        s += &format!("delete element inet {INET_TABLE} isolated_same {same}\n");
    }
    s += &format!(
        "add chain inet {INET_TABLE} isolation {{ type filter hook forward priority -20; }}\n\
         flush chain inet {INET_TABLE} isolation\n\
         add rule inet {INET_TABLE} isolation iifname . oifname @isolated_same accept\n\
         add rule inet {INET_TABLE} isolation iifname @isolated oifname @isolated drop\n"
    );
    run(&s, format!("isolating bridge {bridge}"))
}

/// Whether `bridge` is in the set of isolated bridges (for CHECK).
pub fn is_isolated(bridge: &Word) -> Result<bool, Error> {
    Ok(listed_sets("inet")?.iter().any(|i| {
        i["set"]["name"] == "isolated"
            && i["set"]["elem"]
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v == bridge.as_str()))
    }))
}
