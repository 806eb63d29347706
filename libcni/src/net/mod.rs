//! Linux plumbing every plugin needs: namespaces, a thin netlink layer, sysctls, names.

mod link;
mod netns;
mod tc;

use std::io;

pub use link::{random_mac, LinkInfo, LinkTuning, Netlink, RouteInfo};
pub use netns::Netns;
pub use tc::{Qdisc, Tbf};

use crate::spec::{code, Error as CniError};

/// A failed kernel operation: what we were doing to which object, and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct Error {
    pub what: String,
    #[source]
    pub source: io::Error,
}

impl Error {
    pub fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error {
            what: what.into(),
            source,
        }
    }

    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc_errno::ENODEV | libc_errno::ENOENT | libc_errno::ESRCH)
        ) || self.source.kind() == io::ErrorKind::NotFound
    }
}

pub(crate) mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const EADDRNOTAVAIL: i32 = 99;
}

impl From<Error> for CniError {
    fn from(e: Error) -> CniError {
        CniError::new(code::NETLINK, e.what).details(e.source.to_string())
    }
}

/// Writes a sysctl in the namespace of the calling thread, e.g. `net/ipv4/ip_forward`.
pub fn sysctl_set(key: &str, value: &str) -> Result<(), Error> {
    let path = format!("/proc/sys/{key}");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|e| Error::io(format!("setting sysctl {key}={value}"), e))
}

/// FNV-1a over the parts with a separator: a stable short hash for names derived from
/// (network, containerID, ifname).
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// The host-side veth name for an attachment: 15 characters, found again from the same
/// (network, containerID, ifname) at DEL even without prevResult.
pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    format!(
        "veth{:011x}",
        stable_hash(&[network, container_id, ifname]) & 0xfff_ffff_ffff
    )
}

/// The alias our host-side links carry: whose attachment they are, for GC. The container
/// ID cannot contain '/', nor can an interface name, so the network name comes last.
pub fn attachment_alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("cni-rs/{container_id}/{ifname}/{network}")
}

/// The container interface's MAC: locally administered unicast, derived from the
/// attachment, so DEL knows it without the container (the MAC spoof check is keyed by it).
pub fn container_mac(network: &str, container_id: &str, ifname: &str) -> Vec<u8> {
    let h = stable_hash(&["mac", network, container_id, ifname]).to_be_bytes();
    let mut mac = h[..6].to_vec();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// (network, containerID, ifname) from an alias made by [`attachment_alias`].
pub fn parse_attachment_alias(alias: &str) -> Option<(&str, &str, &str)> {
    let (cid, rest) = alias.strip_prefix("cni-rs/")?.split_once('/')?;
    let (ifname, network) = rest.split_once('/')?;
    Some((network, cid, ifname))
}

/// Runs a future on a current_thread runtime: enough for a plugin, and safe with setns.
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, CniError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| {
            CniError::new(code::IO, "starting the async runtime").details(e.to_string())
        })?;
    Ok(rt.block_on(f))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2))
        .collect::<Option<_>>()?;
    (bytes.len() == 6).then_some(bytes)
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_macs_are_stable_unicast_and_local() {
        let a = container_mac("n", "c1", "eth0");
        assert_eq!(a, container_mac("n", "c1", "eth0"));
        assert_ne!(a, container_mac("n", "c2", "eth0"));
        assert_eq!(a[0] & 0x03, 0x02, "{a:?}");
    }

    #[test]
    fn veth_name_is_stable_and_short() {
        let a = host_veth_name("net", "c1", "eth0");
        assert_eq!(a, host_veth_name("net", "c1", "eth0"));
        assert_eq!(a.len(), 15);
        assert_ne!(a, host_veth_name("net", "c1", "eth1"));
        assert_ne!(
            host_veth_name("ne", "tc1", "eth0"),
            host_veth_name("net", "c1", "eth0")
        );
    }

    #[test]
    fn attachment_alias_round_trips() {
        let a = attachment_alias("my/net work", "c-1.x", "eth0");
        assert_eq!(
            parse_attachment_alias(&a),
            Some(("my/net work", "c-1.x", "eth0"))
        );
        assert_eq!(parse_attachment_alias("something else"), None);
    }

    #[test]
    fn mac_formats() {
        assert_eq!(format_mac(&[0x0a, 0, 0xff, 1, 2, 3]), "0a:00:ff:01:02:03");
        assert_eq!(
            parse_mac("0a:00:FF:01:02:03"),
            Some(vec![0x0a, 0, 0xff, 1, 2, 3])
        );
        for bad in [
            "0a:00:ff:01:02",
            "0a:00:ff:01:02:03:04",
            "0a:0:ff:01:02:03",
            "zz:00:ff:01:02:03",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
