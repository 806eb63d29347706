//! The host half of a veth attachment (bridge, ptp, the overlay): the pair is created
//! with its container end already inside the container namespace (no move afterwards,
//! which costs the kernel 10-26 ms), named after the attachment, with its MAC.
//!
//! DEL retires the pair instead of waiting for its deletion, which holds the caller
//! 15-25 ms in the kernel. The container's end goes down (which cuts the container off
//! and takes its routes) and is renamed `vdel` + the attachment's hash (its name free
//! when DEL returns, as after the reference's DEL), in one request. The host end is
//! labelled retired (its alias); it goes down too where it carries routes (ptp's) or its
//! container end could not be retired. A child with no stdio and a session of its own
//! (net::delete_link_detached) then deletes the pair by its index. Until then the host
//! end keeps its name: an ADD of the attachment that finds it retired deletes the pair at
//! once and goes on. A pair whose deleter never ran is deleted by the next DEL of the
//! attachment, an ADD of it, or the network's GC.

use super::{is_retired_alias, Attachment};
use crate::net::{self, libc_errno::EEXIST, LinkInfo, Netlink, Netns};

/// Creates the attachment's veth pair; returns the host end, down and unlabelled. Fails
/// with EEXIST when a pair of that name exists: an ADD must not take over (or undo) a
/// live attachment. A retired pair of the attachment is deleted first.
pub async fn create(
    nl: &Netlink,
    a: &Attachment,
    netns: &Netns,
    mac: [u8; 6],
    mtu: Option<u32>,
) -> Result<LinkInfo, net::Error> {
    let host = a.host_veth();
    if let Err(e) = nl.create_veth(&host, a.ifname(), &mac, netns, mtu).await {
        if e.errno() != Some(EEXIST) {
            return Err(e);
        }
        // A pair DEL retired keeps the host end's name until its child has deleted it:
        // deleted here, or gone since.
        match nl.link(&host).await? {
            Some(h) if is_retired(&h) => {
                nl.delete_link_index(h.index, &h.name).await?;
            }
            Some(_) => return Err(e),
            None => {}
        }
        nl.create_veth(&host, a.ifname(), &mac, netns, mtu).await?;
    }
    nl.link(&host).await?.ok_or_else(|| {
        net::Error::io(
            format!("veth {host} vanished after creation"),
            std::io::ErrorKind::NotFound.into(),
        )
    })
}

/// Whether the attachment's pair is in place (its host end, the claim, exists and is
/// not retired).
pub async fn exists(nl: &Netlink, a: &Attachment) -> Result<bool, net::Error> {
    Ok(nl
        .link(&a.host_veth())
        .await?
        .is_some_and(|l| !is_retired(&l)))
}

/// Whether `link` is the host end of a retired pair: labelled so, or, retired by a build
/// before the label, named `vdel` and 11 hex digits.
pub fn is_retired(link: &LinkInfo) -> bool {
    let n = &link.name;
    let renamed = n.len() == 15
        && n.starts_with("vdel")
        && n[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    link.kind.as_deref() == Some("veth")
        && (renamed || link.alias.as_deref().is_some_and(is_retired_alias))
}

/// Removes the attachment's veth pair from service: by its host end (retired, deleted
/// by a child not waited for), or, when that is gone, by a container end that is still
/// ours (a veth with the attachment's MAC, deleted at once). A host end that carries
/// routes (`host_routed`: ptp's) goes down too, so that they go with it. Returns whether
/// there was a pair.
pub async fn delete(
    host: &Netlink,
    container: Option<&Netlink>,
    a: &Attachment,
    mac: [u8; 6],
    host_routed: bool,
) -> Result<bool, net::Error> {
    if let Some(h) = host.link(&a.host_veth()).await? {
        // Retired already: a DEL that was killed before its child was started, or whose
        // child is still at work (a second deletion of the index is harmless).
        if !is_retired(&h) {
            // When the container's end cannot be retired (no netns, a MAC changed since,
            // the container holds a link of the retired name), the host end goes down to
            // cut it off, and the pair still goes.
            let mut cut_off = false;
            if let Some(nl) = container {
                if let Some(c) = own_container_end(nl, a, mac).await? {
                    cut_off = match nl.retire_link(c.index, &c.name, &a.retired_name()).await {
                        Err(e) if !e.is_not_found() => {
                            eprintln!("DEL: the container's end stays until the pair goes: {e}");
                            false
                        }
                        _ => true,
                    };
                }
            }
            let down = host_routed || !cut_off;
            match host
                .relabel(h.index, &h.name, &a.retired_alias(), down)
                .await
            {
                Err(e) if e.is_not_found() => return Ok(true),
                r => r?,
            }
        }
        if let Err(e) = net::delete_link_detached(h.index) {
            eprintln!("deleting {} here: cannot start its deleter ({e})", h.name);
            host.delete_link_index(h.index, &h.name).await?;
        }
        return Ok(true);
    }
    let Some(nl) = container else {
        return Ok(false);
    };
    match own_container_end(nl, a, mac).await? {
        Some(c) => nl.delete_link(&c.name).await,
        None => Ok(false),
    }
}

/// The container's interface, if it is this attachment's veth.
async fn own_container_end(
    nl: &Netlink,
    a: &Attachment,
    mac: [u8; 6],
) -> Result<Option<LinkInfo>, net::Error> {
    Ok(nl
        .link(a.ifname())
        .await?
        .filter(|l| l.kind.as_deref() == Some("veth") && l.mac == mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: &str, alias: Option<&str>) -> LinkInfo {
        LinkInfo {
            index: 7,
            name: name.into(),
            mac: vec![2, 0, 0, 0, 0, 1],
            mtu: 1500,
            up: true,
            promisc: false,
            allmulti: false,
            txqlen: 1000,
            controller: None,
            kind: Some(kind.into()),
            alias: alias.map(str::to_string),
            peer: None,
        }
    }

    #[test]
    fn retired_host_ends_are_known_by_their_label_or_an_earlier_builds_name() {
        let a = Attachment::new("net", "c1", "eth0");
        let (live, retired) = (a.alias(), a.retired_alias());
        assert!(is_retired(&link(&a.host_veth(), "veth", Some(&retired))));
        assert!(!is_retired(&link(&a.host_veth(), "veth", Some(&live))));
        assert!(!is_retired(&link(&a.host_veth(), "veth", None)));
        // retired by the build before the label: renamed vdel<hash>
        assert!(is_retired(&link(&a.retired_name(), "veth", Some(&live))));
        for other in ["vdelta0", "vdel0123456789g", "eth0"] {
            assert!(!is_retired(&link(other, "veth", Some(&live))), "{other}");
        }
        // only a veth: another kind of link labelled so is someone else's
        assert!(!is_retired(&link(&a.host_veth(), "bridge", Some(&retired))));
    }
}
