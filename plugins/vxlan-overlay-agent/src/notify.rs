//! systemd's readiness protocol (sd_notify), as flanneld speaks it: once the subnet file
//! is written, `READY=1` goes as one datagram to the unix socket `$NOTIFY_SOCKET` names
//! (a leading `@` names an abstract socket), so a `Type=notify` unit starts what waits
//! for the node's network. Sent once per process; without the variable, nothing is sent.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::agent::log;

static SENT: AtomicBool = AtomicBool::new(false);

/// Tells the supervisor the node is ready, the first time only; a failure is logged (a
/// supervisor that is gone does not stop the agent, as with flanneld).
pub fn ready() {
    if SENT.swap(true, Ordering::SeqCst) {
        return;
    }
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    match send(&path, b"READY=1") {
        Ok(()) => log(&format!("told {path}: READY=1")),
        Err(e) => log(&format!("sending READY=1 to NOTIFY_SOCKET {path}: {e}")),
    }
}

fn send(path: &str, msg: &[u8]) -> std::io::Result<()> {
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(msg, &addr)?;
    Ok(())
}
