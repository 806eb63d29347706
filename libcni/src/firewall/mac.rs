//! `macspoofchk`: one shared bridge chain and sets of (port, MAC) pairs.

use super::{delete_elements, labelled_elements, Label, Word, BRIDGE_TABLE};
use crate::mac::format_mac;
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

/// Script: only `mac` (the container's) may send from the bridge port `host_veth`, the
/// attachment labelled `note`. Adds set elements only, so it fails while the shared check
/// is missing: apply it with [`super::apply_with_setup`] and [`mac_spoof_setup`].
pub fn mac_spoof_check(host_veth: &Word, note: &Label, mac: [u8; 6]) -> String {
    let (host_veth, mac, note) = (host_veth.as_str(), format_mac(&mac), note.as_str());
    format!(
        "add element bridge {BRIDGE_TABLE} ports {{ \"{host_veth}\" comment \"{note}\" }}\n\
         add element bridge {BRIDGE_TABLE} pairs {{ \"{host_veth}\" . {mac} comment \"{note}\" }}\n"
    )
}

/// Script: lift the check of the bridge port `host_veth`; fails only when the shared sets
/// are missing (apply it with [`super::apply_if_present`]).
pub fn remove_mac_spoof_check(host_veth: &Word, mac: [u8; 6]) -> String {
    let (host_veth, mac) = (host_veth.as_str(), format_mac(&mac));
    let mut s = String::new();
    for (set, key) in [
        ("ports", format!("\"{host_veth}\"")),
        ("pairs", format!("\"{host_veth}\" . {mac}")),
    ] {
        s += &format!(
            "add element bridge {BRIDGE_TABLE} {set} {{ {key} }}\n\
             delete element bridge {BRIDGE_TABLE} {set} {{ {key} }}\n"
        );
    }
    s
}

/// Script: lift the checks whose labels `gone` accepts (for GC, when the veth is gone).
pub fn remove_labelled_mac_spoof_checks(gone: impl Fn(&str) -> bool) -> Result<String, Error> {
    let mine: Vec<_> = labelled_elements("bridge", |set| set == "ports" || set == "pairs")?
        .into_iter()
        .filter(|e| gone(&e.note))
        .collect();
    Ok(delete_elements("bridge", &mine))
}
