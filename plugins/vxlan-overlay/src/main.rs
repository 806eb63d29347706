//! `vxlan-overlay`: containers on different hosts reach each other over VXLAN, with the
//! node table in the config. ADD finds this node in the table by its underlay address,
//! makes sure of the VXLAN device and every peer's state (vxlan_overlay::node), then puts
//! the container on the node bridge with libcni's bridge attachment and an address from
//! host-local on the node's subnet. `vxlan-overlay teardown [--force]` (the config on
//! stdin) removes this node's share of the network.

use std::io::Read;

use ipnetwork::IpNetwork;
use libcni::attachment::bridged::{self, BridgeSpec};
use libcni::delegate::Delegate;
use libcni::firewall::{self, Label};
use libcni::net::{Kernel, Vxlan};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::{code, CniResult, Error};
use serde_json::{json, Value};
use vxlan_overlay::config::{Node, Overlay};
use vxlan_overlay::node::{self, Peer, Underlay, VXLAN_OVERHEAD};

/// This node as the kernel and the table see it.
struct Here {
    overlay: Overlay,
    underlay: Underlay,
    me: Node,
    mtu: u32,
}

impl Here {
    fn find(k: &Kernel, overlay: Overlay) -> Result<Here, Error> {
        let underlay = k
            .run(node::underlay(
                k.host(),
                overlay.underlay_interface.as_deref(),
            ))
            .map_err(|e| {
                Error::config(format!("underlayInterface: {}", e.msg)).details(e.details)
            })?;
        let me = overlay.node_at(underlay.ip)?.clone();
        let fits = underlay.link.mtu.saturating_sub(VXLAN_OVERHEAD);
        let mtu = overlay.mtu.unwrap_or(fits);
        if mtu > fits {
            return Err(Error::config(format!(
                "mtu: {mtu} does not fit the underlay {} (MTU {}, at most {fits} in VXLAN)",
                underlay.link.name, underlay.link.mtu
            )));
        }
        Ok(Here {
            overlay,
            underlay,
            me,
            mtu,
        })
    }

    /// For DEL on a node that is not in the table as it is now.
    fn lost(k: &Kernel, overlay: Overlay) -> Option<Here> {
        let underlay = k
            .run(node::underlay(
                k.host(),
                overlay.underlay_interface.as_deref(),
            ))
            .ok()?;
        let me = overlay.nodes.first()?.clone();
        Some(Here {
            mtu: underlay.link.mtu,
            overlay,
            underlay,
            me,
        })
    }

    fn vtep(&self) -> Vxlan {
        node::vtep(&self.overlay, &self.underlay, self.mtu)
    }

    fn peers(&self) -> Vec<Peer> {
        let o = &self.overlay;
        o.nodes
            .iter()
            .filter(|n| **n != self.me)
            .map(|n| Peer {
                subnet: n.subnet,
                underlay_ip: n.underlay_ip,
                mac: o.vtep_mac(n.underlay_ip),
            })
            .collect()
    }

    /// The node bridge with the subnet's first address as every container's gateway; what
    /// leaves the cluster network is masqueraded, traffic between nodes' subnets never.
    fn bridge(&self) -> BridgeSpec {
        BridgeSpec {
            bridge: self.overlay.bridge.clone(),
            mtu: Some(self.mtu),
            is_gateway: true,
            is_default_gateway: true,
            ip_masq: self.overlay.ip_masq,
            masq_exempt: Some(IpNetwork::V4(self.overlay.network)),
            ..BridgeSpec::default()
        }
    }

    /// host-local on this node's subnet, in our data dir; the runtime's requests passed on.
    fn ipam(&self, args: &CmdArgs) -> Delegate {
        let mut conf = json!({
            "cniVersion": args.conf.cni_version, "name": self.overlay.name, "type": "vxlan-overlay",
            "ipam": {"type": "host-local", "dataDir": self.overlay.data_dir,
                     "ranges": [[{"subnet": self.me.subnet.to_string()}]]}
        });
        for key in ["runtimeConfig", "args"] {
            if let Some(v) = args.raw.get(key) {
                conf[key] = v.clone();
            }
        }
        Delegate::with_config("host-local", &conf)
    }
}

struct VxlanOverlay;

impl Plugin for VxlanOverlay {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let o = Overlay::load(args)?;
        args.required_netns()?;
        let k = Kernel::new()?;
        let here = Here::find(&k, o)?;
        let vtep = k.run(node::ensure_vtep(k.host(), &here.vtep()))?;
        k.run(node::program(
            k.host(),
            &here.overlay,
            &here.underlay,
            &vtep,
            &here.peers(),
        ))?;
        bridged::add(&k, args, &here.bridge(), Some(&here.ipam(args)))
    }

    /// Detaches the container and frees its address; the node's device and peers stay.
    /// A node that cannot find itself any more (its underlay gone or renumbered) still
    /// detaches: host-local releases by container, whatever subnet it is told.
    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let o = Overlay::load(args)?;
        let k = Kernel::new()?;
        let here = Here::find(&k, o.clone()).or_else(|e| Here::lost(&k, o).ok_or(e))?;
        bridged::del(&k, args, &here.bridge(), Some(&here.ipam(args)))
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let o = Overlay::load(args)?;
        let k = Kernel::new()?;
        let here = Here::find(&k, o)?;
        let problems = k.run(node::differences(
            k.host(),
            &here.overlay,
            &here.underlay,
            &here.vtep(),
            &here.peers(),
        ))?;
        Error::check("the node's overlay state differs from the config", problems)?;
        bridged::check(&k, args, &here.bridge(), Some(&here.ipam(args)))
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        let o = Overlay::load(args)?;
        let k = Kernel::new()?;
        let here = Here::find(&k, o)?;
        bridged::gc(&k, args, &here.bridge(), Some(&here.ipam(args)))
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
    // A conflist: its vxlan-overlay entry, with the list's name.
    let v = match v.get("plugins").and_then(Value::as_array) {
        Some(plugins) => {
            let mut p = plugins
                .iter()
                .find(|p| p["type"] == "vxlan-overlay")
                .cloned()
                .ok_or_else(|| Error::config("no vxlan-overlay entry in the list"))?;
            p["name"] = v["name"].clone();
            p
        }
        None => v,
    };
    let o = Overlay::from_json(&v)?;
    let store = o.data_dir.join(&o.name);
    let held = std::fs::read_dir(&store)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0);
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
    k.run(node::remove(k.host(), &o))?;
    k.run(k.host().delete_link(&o.bridge))?;
    let prefix = Label::network_prefix(&o.name);
    let masq = firewall::remove_labelled_masquerade(|n| n.starts_with(&prefix))?;
    firewall::apply_if_present(&masq, "removing the network's masquerade")?.wait()?;
    match std::fs::remove_dir_all(&store) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::new(
            code::IO,
            format!("removing {}", store.display()),
        )
        .details(e.to_string())),
        _ => Ok(()),
    }
}

fn main() {
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
            "dataDir",
            "store",
            "nodes",
            "type",
            "underlayIP",
            "subnet",
        ];
        libcni::arbitrary::probe_reading(FIELDS, |a| Overlay::load(a).map(|_| ()));
    }
}
