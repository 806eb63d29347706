//! Who may change an attachment's nftables state at a time. A runtime that times out
//! kills only the plugin's PID, so an `nft -f -` that a killed ADD started could still
//! commit after the DEL that followed had removed the attachment's elements by label.
//! Every process that changes an attachment's state first takes its stripe (one of
//! [`STRIPES`] lock files, chosen by the label's hash) and keeps it until it exits, and
//! every nft it starts inherits the lock: a DEL waits until the killed ADD's nft has
//! either committed or died, then finds everything by label. The nft children also die
//! with their parent (PR_SET_PDEATHSIG), so that wait is short.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::Label;
use crate::names::stable_hash;
use crate::spec::{code, Error};

/// Where the stripes are.
const LOCK_DIR: &str = "/run/cni-rs/nft";
/// Fixed files, never removed (no race between unlinking a lock and taking it); two
/// attachments sharing a stripe only wait for each other's nft runs.
const STRIPES: u64 = 64;
/// Longer than any nft run is allowed ([`super::NFT_WAIT`]).
const LOCK_WAIT: Duration = Duration::from_secs(35);

/// The stripes this process holds, by number; held until the process exits.
static HELD: Mutex<Vec<(u64, File)>> = Mutex::new(Vec::new());

/// Takes the stripe of `label`: what this process and its nft children do to that
/// attachment's state cannot interleave with another process's.
pub fn hold(label: &Label) -> Result<(), Error> {
    take(&[stable_hash(&[label.as_str()]) % STRIPES])
}

/// Takes every stripe, in order (GC and teardown act on many attachments at once).
pub fn hold_all() -> Result<(), Error> {
    take(&(0..STRIPES).collect::<Vec<_>>())
}

/// The descriptors every nft child inherits.
pub(super) fn held_fds() -> Vec<RawFd> {
    HELD.lock()
        .map(|h| h.iter().map(|(_, f)| f.as_raw_fd()).collect())
        .unwrap_or_default()
}

fn take(stripes: &[u64]) -> Result<(), Error> {
    let mut held = HELD
        .lock()
        .map_err(|_| Error::new(code::INTERNAL, "nft lock table poisoned"))?;
    let dir = Path::new(LOCK_DIR);
    crate::files::private_dir(dir)?;
    for &n in stripes {
        if held.iter().any(|(h, _)| *h == n) {
            continue;
        }
        let path = dir.join(format!("stripe-{n}"));
        let file = crate::files::lock_exclusive(&path, LOCK_WAIT)?.ok_or_else(|| {
            Error::new(
                code::TRY_AGAIN,
                format!("{} is held by another invocation's nft", path.display()),
            )
        })?;
        held.push((n, file));
    }
    Ok(())
}

/// Run in an nft child between fork and exec: dies with its parent, and keeps the held
/// stripes (their descriptors lose close-on-exec in the child only).
pub(super) fn in_child(parent: u32, fds: &[RawFd]) -> std::io::Result<()> {
    crate::exec::die_with_parent(parent)?;
    for &fd in fds {
        // SAFETY: fcntl on a descriptor inherited from the parent; async-signal-safe.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
