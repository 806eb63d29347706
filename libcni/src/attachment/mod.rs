//! The attachment layer: what every plugin that puts an interface into a container
//! shares. Here: one attachment's identity (network, containerID, ifname) and every name
//! derived from it (host veth, container MAC, link alias, rule labels), in this one place,
//! so DEL and GC find it again from those three strings alone and two attachments never
//! share a derived name. `lease` guards an ADD's IPAM allocation, `undo` what an ADD
//! created, `container` configures and checks the container's interface, `veth` the host
//! half of a veth, `rules` its masquerade and MAC check, `bridged` all of it on a bridge.

pub mod backup;
pub mod bridged;
pub mod container;
mod lease;
mod rules;
mod undo;
pub mod veth;

pub use lease::{claim, Lease, PendingLease};
pub use rules::Rules;
pub use undo::Undo;

use std::collections::HashSet;

use crate::firewall::Label;
use crate::names::{short_part, stable_hash};
use crate::net::{self, Netlink};
use crate::skel::CmdArgs;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    network: String,
    container_id: String,
    ifname: String,
}

/// Our prefix in link aliases.
const ALIAS_PREFIX: &str = "cni-rs/";
/// The prefix of a retired veth's alias (attachment::veth): DEL's, its deletion pending.
const RETIRED_PREFIX: &str = "cni-rs-retired/";

impl Attachment {
    /// The attachment of an invocation; the skeleton has validated all three names.
    pub fn of(args: &CmdArgs) -> Attachment {
        Attachment::new(&args.conf.name, &args.container_id, &args.ifname)
    }

    /// An attachment named by a runtime (GC's valid list, or a DEL's arguments).
    pub fn new(network: &str, container_id: &str, ifname: &str) -> Attachment {
        Attachment {
            network: network.to_string(),
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        }
    }

    pub fn network(&self) -> &str {
        &self.network
    }

    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The host-side veth name: `veth` and 11 hex digits, 15 characters.
    pub fn host_veth(&self) -> String {
        let h = stable_hash(&[&self.network, &self.container_id, &self.ifname]);
        format!("veth{:011x}", h & 0xfff_ffff_ffff)
    }

    /// The name the attachment's container link takes when DEL retires it (the
    /// container's end of a veth pair, a macvlan, a tap): `vdel` and the host veth's digits.
    pub fn retired_name(&self) -> String {
        format!("vdel{}", &self.host_veth()["veth".len()..])
    }

    /// The container interface's MAC: locally administered unicast, so DEL knows it
    /// without the container (the MAC spoof check is keyed by it).
    pub fn container_mac(&self) -> [u8; 6] {
        let h = stable_hash(&["mac", &self.network, &self.container_id, &self.ifname]);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&h.to_be_bytes()[..6]);
        mac[0] = (mac[0] & 0xfe) | 0x02;
        mac
    }

    /// The alias our host-side links carry, for GC: `cni-rs/<cid>/<ifname>/<network>`,
    /// long names shortened (an alias holds at most 255 bytes).
    pub fn alias(&self) -> String {
        format!("{ALIAS_PREFIX}{}", self.alias_body())
    }

    /// The alias both ends of the attachment's veth pair carry once DEL retired them.
    pub fn retired_alias(&self) -> String {
        format!("{RETIRED_PREFIX}{}", self.alias_body())
    }

    fn alias_body(&self) -> String {
        format!(
            "{}/{}/{}",
            short_part(&self.container_id),
            self.ifname,
            short_part(&self.network)
        )
    }

    /// Whether `alias` names an attachment of `network`, live or retired.
    pub fn alias_in_network(alias: &str, network: &str) -> bool {
        (alias.starts_with(ALIAS_PREFIX) || is_retired_alias(alias))
            && alias.ends_with(&format!("/{}", short_part(network)))
    }

    /// The label of the container's rules and set elements.
    pub fn label(&self) -> Label {
        Label::new(&self.network, &self.container_id)
    }
}

/// Whether `alias` is a retired veth's (attachment::veth).
pub fn is_retired_alias(alias: &str) -> bool {
    alias.starts_with(RETIRED_PREFIX)
}

/// Deletes the links of `kind` whose alias names an attachment of `network` that is not
/// among `valid` (containerID, ifname), and the network's retired veths whose deletion
/// never ran (GC); returns how many it deleted.
pub async fn delete_stale(
    nl: &Netlink,
    kind: &str,
    network: &str,
    valid: &HashSet<(String, String)>,
) -> Result<usize, net::Error> {
    let keep: HashSet<String> = valid
        .iter()
        .map(|(cid, ifname)| Attachment::new(network, cid, ifname).alias())
        .collect();
    let mut deleted = 0;
    for link in nl.links().await? {
        let alias = link.alias.as_deref();
        let ours = alias.is_some_and(|a| Attachment::alias_in_network(a, network));
        let kept = alias.is_some_and(|a| keep.contains(a)) && !veth::is_retired(&link);
        let stale = link.kind.as_deref() == Some(kind) && ours && !kept;
        // By index: the name may be a new pair's by now (a retired host end keeps its
        // name until its child has deleted it, and an ADD may follow).
        if stale && nl.delete_link_index(link.index, &link.name).await? {
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_are_stable_and_distinct() {
        let a = Attachment::new("net", "c1", "eth0");
        assert_eq!(
            a.host_veth(),
            Attachment::new("net", "c1", "eth0").host_veth()
        );
        assert_eq!(a.host_veth().len(), 15);
        assert_ne!(
            a.host_veth(),
            Attachment::new("net", "c1", "eth1").host_veth()
        );
        assert_ne!(
            Attachment::new("ne", "tc1", "eth0").host_veth(),
            a.host_veth()
        );
        let mac = a.container_mac();
        assert_eq!(mac[0] & 0x03, 0x02);
        assert_ne!(mac, Attachment::new("net", "c2", "eth0").container_mac());
    }

    #[test]
    fn long_names_fit_and_stay_distinct() {
        let net = "n".repeat(200);
        let (a, b) = (
            Attachment::new(&net, &"c".repeat(300), "eth0"),
            Attachment::new(&net, &format!("{}d", "c".repeat(300)), "eth0"),
        );
        assert!(a.alias().len() <= 255, "{}", a.alias());
        assert!(a.label().as_str().len() <= 127);
        assert_ne!(a.label(), b.label());
        assert_ne!(a.alias(), b.alias());
        assert!(Attachment::alias_in_network(&a.alias(), &net));
        assert!(!Attachment::alias_in_network(&a.alias(), "n"));
        assert!(a.label().as_str().starts_with(&Label::network_prefix(&net)));
        let retired = a.retired_alias();
        assert!(retired.len() <= 255, "{retired}");
        assert!(is_retired_alias(&retired) && !is_retired_alias(&a.alias()));
        assert!(Attachment::alias_in_network(&retired, &net));
        assert!(!Attachment::alias_in_network(&retired, "n"));
    }
}
