//! An attachment's entries in our shared nftables sets: masquerade of what its addresses
//! send out of their subnets (`ipMasq`, bridge and ptp) and the MAC spoof check of its
//! host veth (`macspoofchk`, bridge). Added in one transaction per ADD, removed by address
//! (prevResult) or by label, and by label for GC, whose attachments may be long gone; all
//! over netlink (firewall::add_elements, firewall::remove_elements).

use std::collections::HashSet;

use ipnetwork::IpNetwork;

use super::Attachment;
use crate::firewall::{self, Label};
use crate::spec::{Error, IpConfig};

/// Which entries an attachment has.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub masquerade: bool,
    /// Traffic to these networks passes unmasqueraded (an overlay's cluster networks, one
    /// per family); for an address none holds, traffic to its own subnet.
    pub masquerade_exempt: Vec<IpNetwork>,
    /// The container MAC that alone may send from the host veth.
    pub mac_check: Option<[u8; 6]>,
}

impl Rules {
    /// The addresses as the masquerade entries key them: with the prefix of the network
    /// that is exempt, where one is set and holds them.
    fn keyed(&self, addrs: impl Iterator<Item = IpNetwork>) -> Vec<IpNetwork> {
        addrs
            .map(
                |a| match self.masquerade_exempt.iter().find(|n| n.contains(a.ip())) {
                    Some(n) => IpNetwork::new(a.ip(), n.prefix()).unwrap_or(a),
                    None => a,
                },
            )
            .collect()
    }

    /// Adds the attachment's entries (and the shared chains, should they be missing); false
    /// when it has none.
    pub fn add(&self, a: &Attachment, ips: &[IpConfig]) -> Result<bool, Error> {
        let mut elements = Vec::new();
        let mut setup = String::new();
        if self.masquerade {
            let addrs = self.keyed(ips.iter().map(|i| i.address));
            elements.extend(firewall::masquerade(&a.label(), &addrs));
            setup += &firewall::masquerade_setup();
        }
        if let Some(mac) = self.mac_check {
            let port = firewall::Word::ifname(&a.host_veth())?;
            elements.extend(firewall::mac_spoof_check(&port, Some(&a.label()), mac));
            setup += &firewall::mac_spoof_setup();
        }
        if elements.is_empty() {
            return Ok(false);
        }
        firewall::lock::hold(&a.label())?;
        let what = format!("installing the rules of {}", a.container_id());
        firewall::add_elements(&elements, &setup, &what)?;
        Ok(true)
    }

    /// Removes the attachment's entries: the masquerade by `addrs` when known (prevResult),
    /// else by label.
    pub fn remove(&self, a: &Attachment, addrs: Option<&[IpNetwork]>) -> Result<(), Error> {
        if !self.masquerade && self.mac_check.is_none() {
            return Ok(());
        }
        // Before listing: another process may be changing this attachment's entries.
        firewall::lock::hold(&a.label())?;
        let mut gone = Vec::new();
        match (self.masquerade, addrs) {
            (false, _) => {}
            (true, Some(addrs)) => gone.extend(firewall::remove_masquerade(
                &self.keyed(addrs.iter().copied()),
            )),
            (true, None) => {
                let label = a.label();
                gone.extend(firewall::labelled_masquerade(|n| n == label.as_str())?);
            }
        }
        if let Some(mac) = self.mac_check {
            let port = firewall::Word::ifname(&a.host_veth())?;
            gone.extend(firewall::mac_spoof_check(&port, None, mac));
        }
        let what = format!("removing the rules of {}", a.container_id());
        firewall::remove_elements(&gone, &what)
    }

    /// Removes the entries of `network`'s attachments whose containers are not in `valid`
    /// (GC), found by label: their veths may be long gone.
    pub fn remove_stale(&self, network: &str, valid: &HashSet<String>) -> Result<(), Error> {
        let keep: HashSet<String> = valid
            .iter()
            .map(|cid| Label::new(network, cid).as_str().to_string())
            .collect();
        let prefix = Label::network_prefix(network);
        let stale = |note: &str| note.starts_with(&prefix) && !keep.contains(note);
        firewall::lock::hold_all()?;
        let mut gone = Vec::new();
        if self.masquerade {
            gone.extend(firewall::labelled_masquerade(stale)?);
        }
        if self.mac_check.is_some() {
            gone.extend(firewall::labelled_mac_spoof_checks(stale)?);
        }
        firewall::remove_elements(&gone, "removing stale rules")
    }
}
