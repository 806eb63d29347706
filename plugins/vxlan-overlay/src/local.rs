//! What the agent keeps on the node across restarts: the subnet it held and its IPv6
//! subnet (to take them back, as flanneld does from its subnet file), its VTEP MACs of
//! flannel.N and flannel-v6.N (random once, or the one of a flanneld's device it kept, so
//! peers keep their FDB entries when it restarts) and the VNI of the device it made (etcd's, which
//! `teardown` cannot ask), and the last `<prefix>/config` it served (so a restart while
//! that key holds something it cannot serve keeps the node's lease and network, as a
//! running agent does). `<dataDir>/_agent/<network>.json`, replaced whole; `_agent`
//! is no network's name, so it never meets host-local's store.

use std::path::{Path, PathBuf};

use crate::config::Overlay;
use ipnetwork::{Ipv4Network, Ipv6Network};
use libcni::mac::{format_mac, parse_mac};
use libcni::net::random_mac;
use libcni::{files, Error};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Local {
    #[serde(default)]
    pub subnet: Option<Ipv4Network>,
    #[serde(rename = "vtepMAC")]
    vtep_mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Network>,
    /// flannel-v6.N's; made when a state saved before dual stack is loaded.
    #[serde(rename = "vtepMACv6", default)]
    vtep_mac6: String,
    #[serde(default)]
    pub vni: Option<u32>,
    /// `<prefix>/config` as last served, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

impl Local {
    pub fn path(o: &Overlay) -> PathBuf {
        o.data_dir.join("_agent").join(format!("{}.json", o.name))
    }

    /// The saved state, if there is a readable one.
    pub fn read(path: &Path) -> Result<Option<Local>, Error> {
        Ok(files::read(path)?.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// The saved state, or a new one with a fresh MAC, saved before it is used. A damaged
    /// file is replaced (said through `warn`): the node gets a new MAC, which its lease
    /// then publishes to every peer.
    pub fn load_or_create(path: &Path, warn: impl Fn(&str)) -> Result<Local, Error> {
        if let Some(bytes) = files::read(path)? {
            let saved = serde_json::from_slice::<Local>(&bytes)
                .ok()
                .filter(|l| parse_mac(&l.vtep_mac).is_some());
            match saved {
                Some(l) if parse_mac(&l.vtep_mac6).is_some() => return Ok(l),
                Some(mut l) => {
                    l.vtep_mac6 = format_mac(&random_mac()?);
                    l.save(path)?;
                    return Ok(l);
                }
                None => warn(&format!(
                    "{} is damaged; starting with a new VTEP MAC",
                    path.display()
                )),
            }
        }
        let local = Local {
            subnet: None,
            vtep_mac: format_mac(&random_mac()?),
            subnet6: None,
            vtep_mac6: format_mac(&random_mac()?),
            vni: None,
            config: None,
        };
        local.save(path)?;
        Ok(local)
    }

    pub fn save(&self, path: &Path) -> Result<(), Error> {
        if let Some(dir) = path.parent() {
            files::private_dir(dir)?;
        }
        let json = serde_json::to_vec(self).expect("plain data always serializes");
        files::replace(path, &json)?;
        Ok(())
    }

    /// Takes `mac`, the one of the device found on the node (flanneld's): the device and
    /// its MAC stay as they are.
    pub fn set_mac(&mut self, mac: [u8; 6]) {
        self.vtep_mac = format_mac(&mac);
    }

    /// The same for flannel-v6.N's.
    pub fn set_mac6(&mut self, mac: [u8; 6]) {
        self.vtep_mac6 = format_mac(&mac);
    }

    pub fn mac(&self) -> [u8; 6] {
        parse_mac(&self.vtep_mac).expect("checked when loaded or made")
    }

    pub fn mac6(&self) -> [u8; 6] {
        parse_mac(&self.vtep_mac6).expect("checked when loaded or made")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_kept() {
        let dir = std::env::temp_dir().join(format!("agent-local-{}", std::process::id()));
        let path = dir.join("_agent").join("net.json");
        let quiet = |m: &str| panic!("unexpected warning: {m}");
        let mut first = Local::load_or_create(&path, quiet).unwrap();
        assert_eq!(first.mac()[0] & 0x03, 0x02, "locally administered unicast");
        first.subnet = Some("10.244.3.0/24".parse().unwrap());
        first.save(&path).unwrap();
        assert_eq!(Local::load_or_create(&path, quiet).unwrap(), first);
        std::fs::write(&path, b"{\"vtepMAC\":\"nonsense\"}").unwrap();
        let warned = std::cell::Cell::new(false);
        let again = Local::load_or_create(&path, |_| warned.set(true)).unwrap();
        assert!(warned.get() && again.subnet.is_none());
        assert_eq!(
            Local::load_or_create(&path, quiet).unwrap(),
            again,
            "saved anew"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
