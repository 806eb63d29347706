//! The host half of a veth attachment (bridge, ptp, the overlay): the pair is created
//! with its container end already inside the container namespace (no move afterwards,
//! which costs the kernel 10-26 ms), named after the attachment, with its MAC.
//!
//! DEL retires the pair instead of waiting for its deletion: deleting a veth pair holds
//! the caller 15-25 ms in the kernel, while taking both ends down, off the bridge and
//! renaming them (`vdel` + the attachment's hash) takes microseconds. The container is
//! cut off and both names are free for a new ADD when DEL returns; a detached process
//! of the same binary (`<plugin> --reap-link <name>`, no stdio, its own session) then
//! deletes the pair. One that never ran leaves a retired pair that the next DEL of the
//! attachment or the network's GC deletes.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use super::Attachment;
use crate::net::{self, Kernel, LinkInfo, Netlink, Netns};

/// The argument that makes a plugin binary the reaper of one retired pair.
const REAP_ARG: &str = "--reap-link";

/// Set by [`serve_reaper`]: this binary answers [`REAP_ARG`]. A binary that does not
/// (libcni used elsewhere) deletes pairs in line.
static REAPER: AtomicBool = AtomicBool::new(false);

/// Makes this binary the reaper of the pairs its DELs retire; a plugin that retires pairs
/// calls it first in `main`. Started as `<binary> --reap-link <name>` (by such a DEL) it
/// deletes that pair and exits; otherwise it returns.
pub fn serve_reaper() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).take(3).collect();
    if let [flag, name] = argv.as_slice() {
        if flag.to_str() == Some(REAP_ARG) {
            std::process::exit(reap(name.to_str().unwrap_or("")));
        }
    }
    REAPER.store(true, Ordering::Relaxed);
}

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
/// by a reaper), or, when that is gone, by a container end that is still ours (a veth
/// with the attachment's MAC, deleted at once). Returns whether there was a pair.
pub async fn delete(
    host: &Netlink,
    container: Option<&Netlink>,
    a: &Attachment,
    mac: [u8; 6],
) -> Result<bool, net::Error> {
    let retired = retired_name(a);
    // An earlier retirement of this attachment whose reaper never ran.
    host.delete_link(&retired).await?;
    if let Some(h) = host.link(&a.host_veth()).await? {
        // Down first: the container is cut off before anything else. A pair that goes
        // meanwhile (its namespace being destroyed) is gone, which is what DEL wants.
        match host.retire_link(h.index, &h.name, &retired).await {
            Err(e) if e.is_not_found() => return Ok(true),
            r => r?,
        }
        if let Some(nl) = container {
            if let Some(c) = own_container_end(nl, a, mac).await? {
                match nl.retire_link(c.index, &c.name, &retired).await {
                    Err(e) if !e.is_not_found() => return Err(e),
                    _ => {}
                }
            }
        }
        let reaper = if REAPER.load(Ordering::Relaxed) {
            reap_later(&retired)
        } else {
            Err(std::io::ErrorKind::Unsupported.into())
        };
        if let Err(e) = reaper {
            eprintln!("deleting {retired} here: no reaper ({e})");
            host.delete_link(&retired).await?;
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

/// Starts this binary, detached, as the reaper of `name`: no stdio (the runtime's
/// pipes close when the plugin exits) and a session of its own.
fn reap_later(name: &str) -> std::io::Result<()> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(REAP_ARG)
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().map(drop)
}

/// The reaper: deletes the retired pair `name` in the namespace it was started in.
fn reap(name: &str) -> i32 {
    if !is_retired(name) {
        return 2;
    }
    let deleted = Kernel::new().and_then(|k| k.run(k.host().delete_link(name)));
    i32::from(deleted.is_err())
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
