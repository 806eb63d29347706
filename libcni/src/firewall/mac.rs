//! `macspoofchk`: one shared bridge chain and sets of (port, MAC) pairs.

use super::{labelled_set_elements, set_element, KeyPart, Label, Word, BRIDGE_TABLE};
use crate::net::nftables::SetElement;
use crate::spec::Error;

/// Script: the shared MAC spoof check, made once: a chain on the bridge prerouting hook
/// drops frames from a port in the set `ports` whose (port, source MAC) pair is not in
/// the set `pairs`. One lookup per frame however many containers there are.
pub fn mac_spoof_setup() -> String {
    format!(
        "add table bridge {BRIDGE_TABLE}\n\
         add set bridge {BRIDGE_TABLE} ports {{ type ifname; }}\n\
         add set bridge {BRIDGE_TABLE} pairs {{ type ifname . ether_addr; }}\n\
         add chain bridge {BRIDGE_TABLE} mac_check {{ type filter hook prerouting priority -300; }}\n\
         flush chain bridge {BRIDGE_TABLE} mac_check\n\
         add rule bridge {BRIDGE_TABLE} mac_check iifname @ports iifname . ether saddr != @pairs drop\n"
    )
}

/// The elements by which only `mac` (the container's) may send from the bridge port
/// `host_veth`, labelled `note` when given. Add them with [`super::add_elements`] and
/// [`mac_spoof_setup`]: they need the shared check.
pub fn mac_spoof_check(host_veth: &Word, note: Option<&Label>, mac: [u8; 6]) -> Vec<SetElement> {
    vec![
        set_element("bridge", "ports", &[KeyPart::Name(host_veth)], false, note),
        set_element(
            "bridge",
            "pairs",
            &[KeyPart::Name(host_veth), KeyPart::Mac(mac)],
            false,
            note,
        ),
    ]
}

/// The MAC check elements whose labels `gone` accepts, to delete with
/// [`super::remove_elements`] (GC, when the veth is gone).
pub fn labelled_mac_spoof_checks(gone: impl Fn(&str) -> bool) -> Result<Vec<SetElement>, Error> {
    labelled_set_elements("bridge", |set| set == "ports" || set == "pairs", gone)
}
