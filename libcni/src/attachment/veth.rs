//! The host half of a veth attachment (bridge, ptp, the overlay): the pair is created
//! with its container end already inside the container namespace (no move afterwards,
//! which costs the kernel 10-26 ms), named after the attachment, with its MAC.

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

/// Removes the attachment's veth pair: by its host end, or, when that is gone, by a
/// container end that is still ours (a veth with the attachment's MAC). Returns whether
/// anything was deleted.
pub async fn delete(
    host: &Netlink,
    container: Option<&Netlink>,
    a: &Attachment,
    mac: [u8; 6],
) -> Result<bool, net::Error> {
    if host.delete_link(&a.host_veth()).await? {
        return Ok(true);
    }
    let Some(nl) = container else {
        return Ok(false);
    };
    match nl.link(a.ifname()).await? {
        Some(l) if l.kind.as_deref() == Some("veth") && l.mac == mac => {
            nl.delete_link(a.ifname()).await
        }
        _ => Ok(false),
    }
}
