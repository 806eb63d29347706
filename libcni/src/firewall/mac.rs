//! `macspoofchk`: one shared bridge chain and sets of (port, MAC) pairs.

use super::{comment, BRIDGE_TABLE};

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

/// Script: only `mac` may send from `host_veth`. Adds set elements only, so it fails
/// while the shared check is missing: apply it with [`apply_with_setup`] and
/// [`mac_spoof_setup`].
pub fn mac_spoof_check(network: &str, container_id: &str, host_veth: &str, mac: &str) -> String {
    let note = comment(network, container_id);
    format!(
        "add element bridge {BRIDGE_TABLE} ports {{ \"{host_veth}\" comment \"{note}\" }}\n\
         add element bridge {BRIDGE_TABLE} pairs {{ \"{host_veth}\" . {mac} comment \"{note}\" }}\n"
    )
}

/// Script: lift the check of `host_veth`; fails only when the shared sets are missing
/// (apply it with [`apply_if_present`]).
pub fn remove_mac_spoof_check(host_veth: &str, mac: &str) -> String {
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
