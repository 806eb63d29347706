//! `vxlan-overlay`: containers on different hosts reach each other over VXLAN, with the
//! node table in the config. ADD finds this node in the table by its underlay address,
//! makes sure of the VXLAN device and every peer's state (vxlan_overlay::node), then puts
//! the container on the node bridge with libcni's bridge attachment and an address from
//! host-local on the node's subnet (and its IPv6 subnet too, in a dual-stack network; that
//! alone in an IPv6-only one).
//! `vxlan-overlay teardown [--force]` (the config on stdin) removes this node's share of
//! the network.

use std::io::Read;

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use ipnetwork::{Ipv4Network, Ipv6Network};
use libcni::attachment::bridged::{self, BridgeSpec};
use libcni::attachment::{veth, Attachment, PendingLease, Rules};
use libcni::delegate::Delegate;
use libcni::firewall::{self, ClusterNet, ForwardPending, Label};
use libcni::net::{Kernel, Netlink, Vxlan};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::{code, CniResult, Error};
use serde_json::{json, Value};
use vxlan_overlay::config::{vtep6_name, vtep_name, Node, Overlay, Store};
use vxlan_overlay::ipam_store;
use vxlan_overlay::local::Local;
use vxlan_overlay::node::{self, Mesh, Peer, Underlay, VXLAN6_OVERHEAD, VXLAN_OVERHEAD};
use vxlan_overlay::subnet_env::SubnetEnv;

/// This node's share of the static store: its underlay and the peers to program (of
/// each family, in a dual-stack network).
struct Meshed {
    underlay: Underlay,
    /// This node's `Node::address`, which its VTEP MACs are derived from.
    address: IpAddr,
    peers: Vec<Peer>,
    peers6: Vec<Peer>,
}

/// Where this node's containers go: its subnet in the cluster network, with what the
/// store says of MTU and masquerade.
struct Here {
    overlay: Overlay,
    /// The cluster's IPv4 network and the node's subnet of it; None in an IPv6-only
    /// network (a subnet file with the IPv6 pair alone).
    network: Option<Ipv4Network>,
    subnet: Option<Ipv4Network>,
    /// The cluster's IPv6 network and the node's subnet of it, in a dual-stack or
    /// IPv6-only network (FLANNEL_IPV6_NETWORK, FLANNEL_IPV6_SUBNET).
    network6: Option<Ipv6Network>,
    subnet6: Option<Ipv6Network>,
    mtu: u32,
    ip_masq: bool,
    /// The static store's kernel work (the etcd store's is the agent's).
    meshed: Option<Meshed>,
}

impl Here {
    fn find(k: &Kernel, overlay: Overlay) -> Result<Here, Error> {
        match &overlay.store {
            Store::Static(_) => Here::in_table(k, overlay),
            Store::Etcd(_) | Store::SubnetFile => Here::from_subnet_file(overlay),
        }
    }

    /// Static store: this node is the table's entry with its underlay address (its IPv6
    /// one in an IPv6-only network, whose pods get the MTU of VXLAN over IPv6).
    fn in_table(k: &Kernel, overlay: Overlay) -> Result<Here, Error> {
        let v6_only = overlay.v6_only();
        let underlay = k
            .run(node::underlay(
                k.host(),
                overlay.underlay_interface.as_deref(),
                v6_only,
            ))
            .map_err(|e| {
                Error::config(format!("underlayInterface: {}", e.msg)).details(e.details)
            })?;
        let address = match underlay.ip6 {
            Some(ip6) if v6_only => IpAddr::V6(ip6.ip()),
            _ => IpAddr::V4(underlay.ip),
        };
        let me = overlay.node_at(address)?.clone();
        let overhead = if v6_only {
            VXLAN6_OVERHEAD
        } else {
            VXLAN_OVERHEAD
        };
        let fits = underlay.link.mtu.saturating_sub(overhead);
        let mtu = overlay.mtu.unwrap_or(fits);
        if mtu > fits {
            return Err(Error::config(format!(
                "mtu: {mtu} does not fit the underlay {} (MTU {}, at most {fits} in VXLAN)",
                underlay.link.name, underlay.link.mtu
            )));
        }
        if let Some(want) = me.underlay_ip6 {
            if underlay.ip6.map(|a| a.ip()) != Some(want) {
                return Err(Error::config(format!(
                    "store.nodes: this host's underlayIPv6 {want} is not the first global IPv6 address of {} ({:?})",
                    underlay.link.name, underlay.ip6
                )));
            }
        }
        let (peers, peers6) = peers_of(&overlay, &me);
        Ok(Here {
            network: overlay.network,
            subnet: me.subnet,
            network6: overlay.ipv6_network.filter(|_| me.subnet6.is_some()),
            subnet6: me.subnet6,
            mtu,
            ip_masq: overlay.ip_masq,
            meshed: Some(Meshed {
                underlay,
                address,
                peers,
                peers6,
            }),
            overlay,
        })
    }

    /// etcd store: what the node's agent (or flanneld) wrote; the config's network, if it
    /// names one, must agree.
    fn from_subnet_file(overlay: Overlay) -> Result<Here, Error> {
        let env = SubnetEnv::read(&overlay.subnet_file)?;
        if let Some(n) = overlay.network.filter(|n| Some(*n) != env.network()) {
            let theirs = env
                .network()
                .map_or("none (IPv6-only)".into(), |e| e.to_string());
            return Err(Error::config(format!(
                "network: {n} differs from the cluster's {theirs} ({})",
                overlay.subnet_file.display()
            )));
        }
        Ok(Here {
            network: env.network(),
            subnet: env.node_subnet(),
            network6: env.ipv6.map(|(network, _)| network),
            subnet6: env.node_subnet6(),
            mtu: overlay.mtu.unwrap_or(env.mtu),
            // As flannel's plugin: flanneld with --ip-masq masquerades itself.
            ip_masq: overlay.ip_masq && !env.ip_masq,
            meshed: None,
            overlay,
        })
    }

    /// The static store's device and peers, programmed.
    fn program(&self, k: &Kernel) -> Result<(), Error> {
        let Some(m) = &self.meshed else { return Ok(()) };
        // An IPv6-only network has no IPv4 side.
        if let (Some(mesh), Some(subnet)) = (self.mesh(), self.subnet) {
            let subnet = IpNetwork::V4(subnet);
            let vtep = k.run(node::ensure_vtep(k.host(), &self.vtep(m), subnet))?;
            k.run(node::program(
                k.host(),
                &mesh,
                &m.underlay,
                Some(&vtep),
                &m.peers,
            ))?;
        }
        let Some((mesh6, vtep6, subnet6)) = self.six(m) else {
            return Ok(());
        };
        let link6 = k.run(node::ensure_vtep(k.host(), &vtep6, subnet6))?;
        k.run(node::program(
            k.host(),
            &mesh6,
            &m.underlay,
            Some(&link6),
            &m.peers6,
        ))
    }

    /// The static store's forward accept for the cluster network (flanneld's FLANNEL-FWD;
    /// the etcd store's agent keeps it), started to run beside the attachment.
    fn start_forward(&self) -> Result<Option<ForwardPending>, Error> {
        if self.meshed.is_none() {
            return Ok(None);
        }
        let mut nets: Vec<ClusterNet> = (self.network.zip(self.subnet))
            .map(|(network, subnet)| ClusterNet {
                network: IpNetwork::V4(network),
                subnet: IpNetwork::V4(subnet),
            })
            .into_iter()
            .collect();
        if let (Some(network), Some(subnet)) = (self.network6, self.subnet6) {
            nets.push(ClusterNet {
                network: IpNetwork::V6(network),
                subnet: IpNetwork::V6(subnet),
            });
        }
        firewall::start_cluster_forward(&self.overlay.name, &nets).map(Some)
    }

    /// The static store's IPv6 side: its mesh, flannel-v6.N and this node's subnet.
    fn six(&self, m: &Meshed) -> Option<(Mesh, Vxlan, IpNetwork)> {
        let (network, subnet) = (self.network6?, self.subnet6?);
        let ip6 = m.underlay.ip6?;
        let vtep = Vxlan {
            name: vtep6_name(self.overlay.vni),
            local: IpAddr::V6(ip6.ip()),
            mac: self.overlay.vtep_mac6(m.address),
            mtu: (self.mtu).min(m.underlay.link.mtu.saturating_sub(VXLAN6_OVERHEAD)),
            ..self.vtep(m)
        };
        let mesh = Mesh {
            network: IpNetwork::V6(network),
            direct_routing: self.overlay.direct_routing,
            host_gw: false,
        };
        Some((mesh, vtep, IpNetwork::V6(subnet)))
    }

    /// The static store's IPv4 mesh.
    fn mesh(&self) -> Option<Mesh> {
        Some(Mesh {
            network: IpNetwork::V4(self.network?),
            direct_routing: self.overlay.direct_routing,
            host_gw: false,
        })
    }

    fn vtep(&self, m: &Meshed) -> Vxlan {
        let mac = self.overlay.vtep_mac(m.address);
        node::vtep(&self.overlay, &m.underlay, mac, self.mtu)
    }

    /// The node bridge with the subnet's first address as every container's gateway; what
    /// leaves the cluster networks is masqueraded, traffic between nodes' subnets (of
    /// either family) never.
    fn bridge(&self) -> BridgeSpec {
        BridgeSpec {
            bridge: self.overlay.bridge.clone(),
            mtu: Some(self.mtu),
            is_gateway: true,
            is_default_gateway: true,
            ip_masq: self.ip_masq,
            masq_exempt: (self.network.map(IpNetwork::V4).into_iter())
                .chain(self.network6.map(IpNetwork::V6))
                .collect(),
            hairpin: self.overlay.hairpin_mode,
            ..BridgeSpec::default()
        }
    }

    /// host-local on this node's subnet (one range set per family), in flannel's CNI's store (host-local's default)
    /// or `ipam.dataDir`; the runtime's requests passed on. An old store of ours is moved
    /// in first (ipam_store).
    fn ipam(&self, args: &CmdArgs) -> Result<Delegate, Error> {
        ipam_store::adopt_old_store(&self.overlay)?;
        Ok(self.delegate(args))
    }

    /// host-local's config, without looking for an old store (a DEL goes on without it).
    fn delegate(&self, args: &CmdArgs) -> Delegate {
        // An IPv6-only network's pods get an IPv6 address only, as flannel's plugin gives.
        let ranges: Vec<_> = (self.subnet.map(IpNetwork::V4).into_iter())
            .chain(self.subnet6.map(IpNetwork::V6))
            .map(|s| json!([{"subnet": s.to_string()}]))
            .collect();
        let mut conf = json!({
            "cniVersion": args.conf.cni_version, "name": self.overlay.name, "type": "vxlan-overlay",
            "ipam": {"type": "host-local", "ranges": ranges}
        });
        if let Some(dir) = &self.overlay.ipam_data_dir {
            conf["ipam"]["dataDir"] = json!(dir);
        }
        for key in ["runtimeConfig", "args"] {
            if let Some(v) = args.raw.get(key) {
                conf[key] = v.clone();
            }
        }
        Delegate::with_config("host-local", &conf)
    }
}

/// The static table's other nodes as peers of each family, with the VTEP MACs derived
/// from their `Node::address`; an IPv6-only network's have no IPv4 side.
fn peers_of(overlay: &Overlay, me: &Node) -> (Vec<Peer>, Vec<Peer>) {
    let others = || overlay.nodes().iter().filter(|n| *n != me);
    let peers = others()
        .filter_map(|n| {
            Some(Peer {
                subnet: IpNetwork::V4(n.subnet?),
                underlay_ip: IpAddr::V4(n.underlay_ip?),
                mac: overlay.vtep_mac(n.address()?),
            })
        })
        .collect();
    let peers6 = others()
        .filter_map(|n| {
            Some(Peer {
                subnet: IpNetwork::V6(n.subnet6?),
                underlay_ip: IpAddr::V6(n.underlay_ip6?),
                mac: overlay.vtep_mac6(n.address()?),
            })
        })
        .collect();
    (peers, peers6)
}

struct VxlanOverlay;

impl Plugin for VxlanOverlay {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let o = Overlay::load(args)?;
        args.required_netns()?;
        let k = Kernel::new()?;
        let here = Here::find(&k, o)?;
        let forward = here.start_forward()?;
        here.program(&k)?;
        let ipam = here.ipam(args)?;
        let pending = PendingLease::start(&ipam, args)?;
        let r = bridged::add(&k, args, &here.bridge(), Some(pending))?;
        forward.map(|f| f.wait()).transpose()?;
        Ok(r)
    }

    /// Detaches the container and frees its address; the node's device and peers stay.
    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let o = Overlay::load(args)?;
        let k = Kernel::new()?;
        let (here, known) = match Here::find(&k, o.clone()) {
            Ok(here) => (here, true),
            Err(_) => (lost(o), false),
        };
        let ipam = here.ipam(args).unwrap_or_else(|_| here.delegate(args));
        let detached = bridged::del(&k, args, &here.bridge(), Some(&ipam));
        // prevResult's addresses are keyed with the network's prefix, which a lost node
        // can only guess: the label finds every masquerade element of the attachment.
        let unmasked = match known {
            true => Ok(()),
            false => Rules {
                masquerade: true,
                ..Rules::default()
            }
            .remove(&Attachment::of(args), None),
        };
        detached.and(unmasked)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let o = Overlay::load(args)?;
        let k = Kernel::new()?;
        let here = Here::find(&k, o)?;
        if let Some(m) = &here.meshed {
            let mut problems = Vec::new();
            if let (Some(mesh), Some(subnet)) = (here.mesh(), here.subnet) {
                problems = k.run(node::differences(
                    k.host(),
                    &mesh,
                    &m.underlay,
                    Some(&here.vtep(m)),
                    IpNetwork::V4(subnet),
                    &m.peers,
                ))?;
            }
            if let Some((mesh6, vtep6, subnet6)) = here.six(m) {
                let (h, u) = (k.host(), &m.underlay);
                let six = node::differences(h, &mesh6, u, Some(&vtep6), subnet6, &m.peers6);
                problems.extend(k.run(six)?);
            }
            Error::check("the node's overlay state differs from the config", problems)?;
        }
        bridged::check(&k, args, &here.bridge(), Some(&here.ipam(args)?))
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        let o = Overlay::load(args)?;
        let k = Kernel::new()?;
        let here = Here::find(&k, o.clone()).unwrap_or_else(|_| lost(o));
        bridged::gc(&k, args, &here.bridge(), Some(&here.ipam(args)?))
    }
}

/// DEL and GC on a node that cannot find itself any more (its underlay gone or
/// renumbered, the subnet file gone): they still detach, since host-local releases by
/// container whatever subnet it is told and the bridge and masquerade are found by name
/// and label.
fn lost(overlay: Overlay) -> Here {
    let network = overlay.network.unwrap_or_else(|| {
        Ipv4Network::new(std::net::Ipv4Addr::new(10, 0, 0, 0), 8).expect("literal")
    });
    let subnet = (overlay.nodes().first())
        .and_then(|n| n.subnet)
        .unwrap_or(network);
    Here {
        network: Some(network),
        subnet: Some(subnet),
        network6: None,
        subnet6: None,
        mtu: 1500,
        ip_masq: overlay.ip_masq,
        meshed: None,
        overlay,
    }
}

/// `vxlan-overlay teardown [--force]`: removes this node's VXLAN device, peer state,
/// bridge, masquerade entries and data; refuses while containers hold addresses unless
/// forced.
fn teardown(force: bool) -> Result<(), Error> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(skel::MAX_CONFIG_BYTES as u64)
        .read_to_end(&mut input)
        .map_err(|e| Error::new(code::IO, "reading the config on stdin").details(e.to_string()))?;
    let v: Value = serde_json::from_slice(&input)
        .map_err(|e| Error::new(code::DECODE, "decoding the config").details(e.to_string()))?;
    let o = Overlay::from_conf_or_list(&v)?;
    let held = ipam_store::held(&o);
    if held > 0 && !force {
        return Err(Error::new(
            code::TRY_AGAIN,
            format!(
                "{held} containers are still attached to {} (use --force)",
                o.name
            ),
        ));
    }
    let k = Kernel::new()?;
    let network = network_of(&o);
    let from_file = || SubnetEnv::read(&o.subnet_file).ok()?.ipv6.map(|(n, _)| n);
    let network6 = o.ipv6_network.or_else(from_file);
    // An IPv6-only network has no IPv4 routes to leave.
    if network.is_none() && network6.is_none() {
        eprintln!(
            "vxlan-overlay teardown: the cluster network is unknown (no network in the config, {} unreadable): direct routes are left",
            o.subnet_file.display()
        );
    }
    // A static IPv6-only network never makes flannel.N: one there is another network's.
    if !o.v6_only() {
        k.run(node::remove(
            k.host(),
            &vtep_of(&o)?,
            network.map(IpNetwork::V4),
        ))?;
    }
    // A dual-stack or IPv6-only node's flannel-v6.N and IPv6 routes, as its config or
    // subnet file names them.
    if let Some(network6) = network6 {
        let vni = Local::read(&Local::path(&o))?
            .and_then(|l| l.vni)
            .unwrap_or(o.vni);
        let network6 = Some(IpNetwork::V6(network6));
        k.run(node::remove(k.host(), &vtep6_name(vni), network6))?;
    }
    k.run(delete_bridge(k.host(), &o.bridge, force))?;
    let prefix = Label::network_prefix(&o.name);
    firewall::lock::hold_all()?;
    let masq = firewall::labelled_masquerade(|n| n.starts_with(&prefix))?;
    firewall::remove_elements(&masq, "removing the network's masquerade")?;
    firewall::remove_cluster(&o.name)?;
    ipam_store::remove(&o)
}

/// This node's VXLAN device: in the etcd store the agent's, made for etcd's VNI and saved
/// in its state; otherwise (or before an agent ran) the config's.
fn vtep_of(o: &Overlay) -> Result<String, Error> {
    if let Store::Etcd(_) = o.store {
        if let Some(vni) = Local::read(&Local::path(o))?.and_then(|l| l.vni) {
            return Ok(vtep_name(vni));
        }
    }
    Ok(o.vtep_name())
}

/// The cluster network whose routes are ours: the config's, or in the etcd store the
/// subnet file's; None when neither says.
fn network_of(o: &Overlay) -> Option<Ipv4Network> {
    let from_file = || SubnetEnv::read(&o.subnet_file).ok()?.network();
    o.network.or_else(from_file)
}

/// Deletes the node bridge. Unforced, none of our containers is left, so a port it still
/// has is another network's (`cni0` is the bridge plugin's default too): it stays. A
/// retired pair's host end (DEL's, its deletion under way or lost) is no one's: it goes
/// with the bridge. A link of that name that is no bridge was never ours (a mistaken
/// `bridge`): it stays too.
async fn delete_bridge(nl: &Netlink, name: &str, force: bool) -> Result<(), libcni::net::Error> {
    let Some(bridge) = nl.link(name).await? else {
        return Ok(());
    };
    if bridge.kind.as_deref() != Some("bridge") {
        eprintln!(
            "vxlan-overlay teardown: {name} is not a bridge (kind {}): left alone",
            bridge.kind.as_deref().unwrap_or("none")
        );
        return Ok(());
    }
    let shared = !force
        && nl
            .links()
            .await?
            .iter()
            .any(|l| l.controller == Some(bridge.index) && !veth::is_retired(l));
    if !shared {
        nl.delete_link(name).await?;
    }
    Ok(())
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    libcni::delegate::link(&host_local::LINKED);
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("teardown") {
        let force = argv.iter().skip(2).any(|a| a == "--force");
        match teardown(force) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("vxlan-overlay teardown: {e}");
                std::process::exit(1)
            }
        }
    }
    skel::run(&VxlanOverlay, "CNI vxlan-overlay plugin (cni-rs); `vxlan-overlay teardown [--force]` with the config on stdin removes this node's share")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_any_input_never_panics() {
        const FIELDS: &[&str] = &[
            "network",
            "subnetLen",
            "vni",
            "port",
            "underlayInterface",
            "directRouting",
            "mtu",
            "bridge",
            "ipMasq",
            "hairpinMode",
            "dataDir",
            "store",
            "nodes",
            "type",
            "underlayIP",
            "subnet",
            "ipv6Network",
            "underlayIPv6",
            "ipv6Subnet",
        ];
        libcni::arbitrary::probe_reading(FIELDS, |a| Overlay::load(a).map(|_| ()));
    }
}
