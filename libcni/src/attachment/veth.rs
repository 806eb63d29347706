//! The host half of a veth attachment (bridge, ptp, the overlay): the pair is created
//! with its container end already inside the container namespace (no move afterwards,
//! which costs the kernel 10-26 ms), named after the attachment, with its MAC.
//!
//! DEL retires the pair instead of waiting for its deletion: deleting a veth pair holds
//! the caller 15-25 ms in the kernel, while taking both ends down, off the bridge and
//! renaming them (`vdel` + the attachment's hash) takes microseconds. The container is
//! cut off and both names are free for a new ADD when DEL returns; a forked child with
//! no stdio and a session of its own (net::delete_link_detached) then deletes the pair.
//! One that never ran leaves a retired pair that the next DEL of the attachment or the
//! network's GC deletes.

use super::Attachment;
use crate::net::{self, LinkInfo, Netlink, Netns};

/// Creates the attachment's veth pair; returns the host end, down and unlabelled. Fails
/// with EEXIST when a pair of that name exists: an ADD must not take over (or undo) a
/// live attachment.
pub async fn create(
    nl: &Netlink,
    a: &Attachment,
    netns: &Netns,
    mac: [u8; 6],
    mtu: Option<u32>,
) -> Result<LinkInfo, net::Error> {
    let host = a.host_veth();
    nl.create_veth(&host, a.ifname(), &mac, netns, mtu).await?;
    nl.link(&host).await?.ok_or_else(|| {
        net::Error::io(
            format!("veth {host} vanished after creation"),
            std::io::ErrorKind::NotFound.into(),
        )
    })
}

/// Whether the attachment's pair is in place (its host end, the claim, exists).
pub async fn exists(nl: &Netlink, a: &Attachment) -> Result<bool, net::Error> {
    Ok(nl.link(&a.host_veth()).await?.is_some())
}

/// The name both ends of the attachment's pair carry once retired.
fn retired_name(a: &Attachment) -> String {
    format!("vdel{}", &a.host_veth()["veth".len()..])
}

/// Whether `name` is a retired pair's (`vdel` and 11 hex digits).
pub fn is_retired(name: &str) -> bool {
    name.len() == 15
        && name.starts_with("vdel")
        && name[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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
    let retired = retired_name(a);
    if let Some(h) = host.link(&a.host_veth()).await? {
        // The container's end first: down cuts the container off and takes its routes,
        // and its name is free at once. When it cannot be retired (the container holds a
        // link of the retired name), the pair still goes, from the host end.
        let mut cut_off = false;
        if let Some(nl) = container {
            if let Some(c) = own_container_end(nl, a, mac).await? {
                cut_off = match retire(host, nl, &c, &retired, true).await {
                    Err(e) if !e.is_not_found() => {
                        eprintln!("DEL: the container's end stays until the pair goes: {e}");
                        false
                    }
                    _ => true,
                };
            }
        }
        // A bridge port is only renamed: with its peer down it carries nothing. Without
        // the container's end in hand (no netns, a MAC changed since), it goes down too.
        match retire(host, host, &h, &retired, host_routed || !cut_off).await {
            Err(e) if e.is_not_found() => return Ok(true),
            r => r?,
        }
        if let Err(e) = net::delete_link_detached(&retired) {
            eprintln!("deleting {retired} here: cannot fork its deleter ({e})");
            host.delete_link(&retired).await?;
        }
        return Ok(true);
    }
    // A DEL killed once it had retired the pair: its deletion never ran.
    if host.delete_link(&retired).await? {
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

/// Renames one end of the pair `retired` (in `nl`); when that name is taken, by an
/// earlier retirement of this attachment whose deletion never ran, that pair is deleted
/// (by its host end) and the rename tried again.
async fn retire(
    host: &Netlink,
    nl: &Netlink,
    end: &LinkInfo,
    retired: &str,
    down: bool,
) -> Result<(), net::Error> {
    match nl.retire_link(end.index, &end.name, retired, down).await {
        Err(e) if e.errno() == Some(net::libc_errno::EEXIST) => {
            host.delete_link(retired).await?;
            nl.retire_link(end.index, &end.name, retired, down).await
        }
        r => r,
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

    #[test]
    fn retired_names_are_the_attachments_and_recognized() {
        let a = Attachment::new("net", "c1", "eth0");
        let r = retired_name(&a);
        assert_eq!(r.len(), 15);
        assert_eq!(&r[4..], &a.host_veth()[4..]);
        assert!(is_retired(&r));
        for other in [
            a.host_veth(),
            "vdelta0".into(),
            "vdel0123456789g".into(),
            "eth0".into(),
        ] {
            assert!(!is_retired(&other), "{other}");
        }
    }
}
