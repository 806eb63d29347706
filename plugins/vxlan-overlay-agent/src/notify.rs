//! systemd's readiness protocol (sd_notify), as flanneld speaks it: once the subnet file
//! is written, `READY=1` goes as one datagram to the unix socket `$NOTIFY_SOCKET` names
//! (a leading `@` names an abstract socket), so a `Type=notify` unit starts what waits
//! for the node's network. Sent once per process; without the variable, nothing is sent.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::log::log;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("notify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let by_path = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), b"READY=1").unwrap();
        let mut buf = [0u8; 16];
        let n = by_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();

        let name = format!("vxlan-overlay-agent-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_ = UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), b"READY=1").unwrap();
        let n = abstract_.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
