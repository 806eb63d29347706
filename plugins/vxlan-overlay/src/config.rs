//! The vxlan-overlay config, with flannel's defaults (VNI 1, UDP port 8472: the kernel's
//! and flannel's; 4789 would silently break interop with flannel nodes), checked before
//! anything is made: every mistake is a code 7 that names its field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnetwork::{Ipv4Network, Ipv6Network};
use libcni::names::stable_hash;
use libcni::skel::CmdArgs;
use libcni::Error;
use serde::Deserialize;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/vxlan-overlay";
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    name: String,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    ipv6_network: Option<String>,
    #[serde(default)]
    subnet_len: Option<u64>,
    #[serde(default)]
    vni: Option<u64>,
    #[serde(default)]
    port: Option<u64>,
    #[serde(default)]
    underlay_interface: Option<String>,
    #[serde(default)]
    direct_routing: bool,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    ip_masq: Option<bool>,
    #[serde(default)]
    hairpin_mode: Option<bool>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    subnet_file: Option<PathBuf>,
    #[serde(default)]
    store: Option<StoreConf>,
    #[serde(default)]
    ipam: Option<IpamConf>,
}

/// The part of host-local's config a user may set: where its store lives.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IpamConf {
    #[serde(default)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoreConf {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    nodes: Vec<NodeConf>,
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default, rename = "leaseTTL")]
    lease_ttl: Option<u64>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    trusted_ca_file: Option<PathBuf>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    ip_masq_fully_random_disable: bool,
    #[serde(default)]
    iptables_forward_rules: Option<bool>,
    #[serde(default)]
    ip_blackhole_route: bool,
}

/// Where the node table lives.
#[derive(Debug, Clone)]
pub enum Store {
    /// In the config: every node's underlay address and subnet.
    Static(Vec<Node>),
    /// In etcd, in flannel's layout, kept by the agent; the plugin reads the subnet file.
    Etcd(Etcd),
    /// No `store` in the config: the subnet file is all there is, written by a flanneld or
    /// an agent whose config this is not (as flannel's CNI plugin, no etcd endpoints).
    SubnetFile,
}

/// flanneld's subnet lease TTL (its subnetTTL, 24 h): a node whose agent is down keeps
/// its subnet and its peers' routes that long.
pub const DEFAULT_LEASE_TTL: u64 = 24 * 60 * 60;

/// The etcd store, with flannel's names and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Etcd {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// Seconds.
    pub lease_ttl: u64,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    /// etcd's user (flanneld's `--etcd-username`): when given, every call authenticates
    /// with `password` (empty when not given, as flanneld).
    pub username: Option<String>,
    pub password: Option<String>,
    /// The agent's node masquerade (flanneld's --ip-masq; `ipMasq` in the store).
    pub ip_masq: bool,
    /// Its ports not fully random (--ip-masq-fully-random-disable;
    /// `ipMasqFullyRandomDisable`).
    pub ip_masq_fully_random_disable: bool,
    /// The forward accept for the cluster network (--iptables-forward-rules, default
    /// true; `iptablesForwardRules`).
    pub forward_rules: bool,
    /// A blackhole route for the node's subnet of each family (--ip-blackhole-route;
    /// `ipBlackholeRoute`), for nodes without a bridge holding it (Canal's).
    pub blackhole_route: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeConf {
    #[serde(rename = "underlayIP", default)]
    underlay_ip: Option<String>,
    #[serde(default)]
    subnet: Option<String>,
    #[serde(rename = "underlayIPv6", default)]
    underlay_ipv6: Option<String>,
    #[serde(default)]
    ipv6_subnet: Option<String>,
}

/// A node of the cluster: where it is, and its subnet; in a dual-stack network its
/// IPv6 underlay address and IPv6 subnet too; in an IPv6-only one (`ipv6Network`
/// without `network`) those alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    pub underlay_ip: Option<Ipv4Addr>,
    pub subnet: Option<Ipv4Network>,
    pub underlay_ip6: Option<Ipv6Addr>,
    pub subnet6: Option<Ipv6Network>,
}

impl Node {
    /// The address that names the node: its IPv4 underlay address, or in an IPv6-only
    /// network its IPv6 one (its VTEP MACs are derived from it).
    pub fn address(&self) -> Option<IpAddr> {
        (self.underlay_ip.map(IpAddr::V4)).or(self.underlay_ip6.map(IpAddr::V6))
    }
}

/// The network, checked. In the etcd store, `network` and `subnet_len` are the config's
/// when it names them (etcd's `<prefix>/config` rules, and must agree).
#[derive(Debug, Clone)]
pub struct Overlay {
    /// The network name (the one VTEP MACs are derived from).
    pub name: String,
    pub network: Option<Ipv4Network>,
    /// The static store's IPv6 cluster network (dual stack, or IPv6-only without
    /// `network`); every node then has an `underlayIPv6` and an `ipv6Subnet` in it.
    pub ipv6_network: Option<Ipv6Network>,
    pub subnet_len: Option<u8>,
    pub vni: u32,
    pub port: u16,
    pub underlay_interface: Option<String>,
    pub direct_routing: bool,
    pub mtu: Option<u32>,
    pub bridge: String,
    pub ip_masq: bool,
    /// Hairpin on the containers' bridge ports (default true, as kube-flannel's conflist):
    /// a pod reaches a Service whose only endpoint is itself.
    pub hairpin_mode: bool,
    pub data_dir: PathBuf,
    /// host-local's dataDir (`ipam.dataDir`); None: host-local's default, as flannel's.
    pub ipam_data_dir: Option<PathBuf>,
    pub subnet_file: PathBuf,
    pub store: Store,
}

fn field(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::config(format!("{name}: {msg}"))
}

impl Overlay {
    pub fn load(args: &CmdArgs) -> Result<Overlay, Error> {
        Overlay::from_raw(args.parse_conf()?)
    }

    /// The config read outside a CNI call (teardown, the agent): a network config, or a
    /// list's vxlan-overlay entry with the list's name.
    pub fn from_conf_or_list(v: &serde_json::Value) -> Result<Overlay, Error> {
        let Some(plugins) = v.get("plugins").and_then(serde_json::Value::as_array) else {
            return Overlay::from_json(v);
        };
        let mut entry = plugins
            .iter()
            .find(|p| p["type"] == "vxlan-overlay")
            .cloned()
            .ok_or_else(|| Error::config("no vxlan-overlay entry in the list"))?;
        entry["name"] = v["name"].clone();
        Overlay::from_json(&entry)
    }

    /// One network config read outside a CNI call.
    pub fn from_json(v: &serde_json::Value) -> Result<Overlay, Error> {
        let raw: Raw = libcni::decode::from_value(v)
            .map_err(|e| Error::config("invalid network config").details(e.to_string()))?;
        libcni::names::network_name(&raw.name)?;
        Overlay::from_raw(raw)
    }

    fn from_raw(r: Raw) -> Result<Overlay, Error> {
        let network = r
            .network
            .as_deref()
            .map(|n| n.parse::<Ipv4Network>().map_err(|e| field("network", e)))
            .transpose()?;
        if let Some(n) = network.filter(|n| n.network() != n.ip()) {
            return Err(field("network", format!("{n} has host bits set")));
        }
        let subnet_len = match (r.subnet_len, network) {
            (Some(len), Some(n)) if len <= u64::from(n.prefix()) || len > 30 => {
                return Err(field(
                    "subnetLen",
                    format!(
                        "{len} must be longer than the network's /{} and at most 30",
                        n.prefix()
                    ),
                ))
            }
            (Some(len), _) if len > 30 => {
                return Err(field("subnetLen", format!("{len} is longer than 30")))
            }
            (len, _) => len.map(|l| l as u8),
        };
        let vni = r.vni.unwrap_or(1);
        if vni > 0xff_ffff {
            return Err(field(
                "vni",
                format!("{vni} is not a 24-bit VXLAN network identifier"),
            ));
        }
        check_vni_names_a_link(vni as u32).map_err(|e| field("vni", e))?;
        let port = r.port.unwrap_or(8472);
        if port == 0 || port > 65535 {
            return Err(field("port", format!("{port} is not a UDP port")));
        }
        if let Some(i) = &r.underlay_interface {
            if !libcni::names::is_ifname(i) {
                return Err(field(
                    "underlayInterface",
                    format!("{i:?} is not an interface name"),
                ));
            }
        }
        let bridge = r.bridge.unwrap_or_else(|| "cni0".into());
        if !libcni::names::is_ifname(&bridge) {
            return Err(field(
                "bridge",
                format!("{bridge:?} is not an interface name"),
            ));
        }
        if r.mtu.is_some_and(|m| m < 576) {
            return Err(field("mtu", "must be at least 576"));
        }
        let ipv6_network = (r.ipv6_network.as_deref())
            .map(|n| {
                n.parse::<Ipv6Network>()
                    .map_err(|e| field("ipv6Network", e))
            })
            .transpose()?;
        if let Some(n) = ipv6_network.filter(|n| n.network() != n.ip()) {
            return Err(field("ipv6Network", format!("{n} has host bits set")));
        }
        if ipv6_network.is_some() {
            check_vni_names_a_link6(vni as u32).map_err(|e| field("vni", e))?;
        }
        let store = match r.store {
            None if ipv6_network.is_some() => return Err(only_static_ipv6()),
            None => Store::SubnetFile,
            Some(s) => store(s, network, subnet_len, ipv6_network)?,
        };
        // The static store's IPv4 subnets are /24 unless told; an IPv6-only one has none.
        let static_v4 = matches!(store, Store::Static(_)) && network.is_some();
        Ok(Overlay {
            name: r.name,
            subnet_len: subnet_len.or(static_v4.then_some(24)),
            network,
            ipv6_network,
            vni: vni as u32,
            port: port as u16,
            underlay_interface: r.underlay_interface,
            direct_routing: r.direct_routing,
            mtu: r.mtu,
            bridge,
            ip_masq: r.ip_masq.unwrap_or(true),
            hairpin_mode: r.hairpin_mode.unwrap_or(true),
            data_dir: r.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            ipam_data_dir: r.ipam.and_then(|i| i.data_dir),
            subnet_file: r.subnet_file.unwrap_or_else(|| DEFAULT_SUBNET_FILE.into()),
            store,
        })
    }

    /// The static node table (empty in the etcd store).
    pub fn nodes(&self) -> &[Node] {
        match &self.store {
            Store::Static(nodes) => nodes,
            Store::Etcd(_) | Store::SubnetFile => &[],
        }
    }

    /// The node whose underlay address (`Node::address`) is `ip`.
    pub fn node_at(&self, ip: IpAddr) -> Result<&Node, Error> {
        self.nodes()
            .iter()
            .find(|n| n.address() == Some(ip))
            .ok_or_else(|| {
                field(
                    "store.nodes",
                    format!("no node has this host's underlay address {ip}"),
                )
            })
    }

    /// A node's VTEP MAC: derived from (network, underlay address), so every node knows
    /// its peers' with no exchange, and a node gets its own back after a reboot.
    pub fn vtep_mac(&self, underlay_ip: IpAddr) -> [u8; 6] {
        self.derived_mac("vtep", underlay_ip)
    }

    /// A node's flannel-v6.N MAC, derived likewise.
    pub fn vtep_mac6(&self, underlay_ip: IpAddr) -> [u8; 6] {
        self.derived_mac("vtep6", underlay_ip)
    }

    /// Whether the static store's network is IPv6-only (`ipv6Network` alone).
    pub fn v6_only(&self) -> bool {
        self.network.is_none() && self.ipv6_network.is_some()
    }

    fn derived_mac(&self, device: &str, underlay_ip: IpAddr) -> [u8; 6] {
        let h = stable_hash(&[device, &self.name, &underlay_ip.to_string()]).to_be_bytes();
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&h[..6]);
        mac[0] = (mac[0] & 0xfe) | 0x02;
        mac
    }

    /// The VXLAN device's name for the config's VNI.
    pub fn vtep_name(&self) -> String {
        vtep_name(self.vni)
    }
}

/// The VXLAN device's name: flannel's, so a node moving between flanneld and us keeps its
/// device and its tools.
pub fn vtep_name(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// The IPv6 VXLAN device's name (dual stack), flannel's too.
pub fn vtep6_name(vni: u32) -> String {
    format!("flannel-v6.{vni}")
}

/// VNIs from 10,000,000 up fit 24 bits but not a link name (15 bytes) after "flannel.".
pub fn check_vni_names_a_link(vni: u32) -> Result<(), String> {
    check_names_a_link(vni, vtep_name(vni))
}

/// In a dual-stack network, flannel-v6.N must be a link name too (VNIs up to 9999).
pub fn check_vni_names_a_link6(vni: u32) -> Result<(), String> {
    check_names_a_link(vni, vtep6_name(vni))
}

fn check_names_a_link(vni: u32, name: String) -> Result<(), String> {
    if libcni::names::is_ifname(&name) {
        Ok(())
    } else {
        Err(format!(
            "{vni}: its device {name} would be longer than a link name"
        ))
    }
}

/// `ipv6Network` is the static store's: elsewhere the subnet file says it.
fn only_static_ipv6() -> Error {
    field(
        "ipv6Network",
        "the static store's (etcd's <prefix>/config says IPv6Network, the subnet file FLANNEL_IPV6_NETWORK)",
    )
}

/// The `store` section, checked. A static table without `network` but with
/// `ipv6Network` is an IPv6-only network's.
fn store(
    s: StoreConf,
    network: Option<Ipv4Network>,
    subnet_len: Option<u8>,
    ipv6_network: Option<Ipv6Network>,
) -> Result<Store, Error> {
    Ok(match s.kind.as_str() {
        "static" if network.is_none() && ipv6_network.is_some() => {
            if subnet_len.is_some() {
                return Err(field(
                    "subnetLen",
                    "the IPv4 subnets' length, given without a network (an IPv6-only network's nodes name their ipv6Subnet)",
                ));
            }
            nodes6(&s.nodes, &nodes_without_ipv4(&s.nodes)?, ipv6_network)?
        }
        "static" => {
            let network = network.ok_or_else(|| {
                field(
                    "network",
                    "missing (the cluster network, e.g. 10.244.0.0/16; an IPv6-only one has ipv6Network alone)",
                )
            })?;
            let len = subnet_len.unwrap_or(24);
            if len <= network.prefix() {
                return Err(field(
                    "subnetLen",
                    format!(
                        "{len} must be longer than the network's /{}",
                        network.prefix()
                    ),
                ));
            }
            nodes6(&s.nodes, &nodes(&s.nodes, network, len)?, ipv6_network)?
        }
        "etcd" if ipv6_network.is_some() => return Err(only_static_ipv6()),
        "etcd" => Store::Etcd(etcd(s)?),
        other => {
            return Err(field(
                "store.type",
                format!("{other:?} is not a known store (static, etcd)"),
            ))
        }
    })
}

fn etcd(s: StoreConf) -> Result<Etcd, Error> {
    if s.endpoints.is_empty() {
        return Err(field(
            "store.endpoints",
            "missing (e.g. [\"http://10.0.0.5:2379\"])",
        ));
    }
    for e in &s.endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(field(
                "store.endpoints",
                format!("{e:?} is not an http(s) URL"),
            ));
        }
    }
    let prefix = s.prefix.unwrap_or_else(|| DEFAULT_PREFIX.into());
    if !prefix.starts_with('/') || prefix.ends_with('/') {
        return Err(field(
            "store.prefix",
            format!("{prefix:?} must start with '/' and not end with one"),
        ));
    }
    let lease_ttl = s.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
    // etcd refuses leases over 9e9 s: a larger TTL would be a retry loop, not an error
    if !(2..=9_000_000_000).contains(&lease_ttl) {
        return Err(field("store.leaseTTL", "2 to 9,000,000,000 seconds"));
    }
    Ok(Etcd {
        endpoints: s.endpoints,
        prefix,
        lease_ttl,
        cert_file: s.cert_file,
        key_file: s.key_file,
        trusted_ca_file: s.trusted_ca_file,
        username: s.username.filter(|u| !u.is_empty()),
        password: s.password,
        ip_masq: s.ip_masq,
        ip_masq_fully_random_disable: s.ip_masq_fully_random_disable,
        forward_rules: s.iptables_forward_rules.unwrap_or(true),
        blackhole_route: s.ip_blackhole_route,
    })
}

fn nodes(confs: &[NodeConf], network: Ipv4Network, len: u8) -> Result<Vec<Node>, Error> {
    if confs.is_empty() {
        return Err(field(
            "store.nodes",
            "empty: the table must name this node at least",
        ));
    }
    let mut nodes: Vec<Node> = Vec::new();
    for (i, n) in confs.iter().enumerate() {
        let at = |what: &str| format!("store.nodes[{i}].{what}");
        let underlay_ip =
            (n.underlay_ip.as_deref()).ok_or_else(|| field(&at("underlayIP"), "missing"))?;
        let underlay_ip: Ipv4Addr = underlay_ip.parse().map_err(|_| {
            field(
                &at("underlayIP"),
                format!("{underlay_ip:?} is not an IPv4 address"),
            )
        })?;
        let subnet = n
            .subnet
            .as_deref()
            .ok_or_else(|| field(&at("subnet"), "missing"))?;
        let subnet: Ipv4Network = subnet.parse().map_err(|e| field(&at("subnet"), e))?;
        if subnet.prefix() != len || subnet.network() != subnet.ip() {
            return Err(field(
                &at("subnet"),
                format!("{subnet} is not a /{len} network"),
            ));
        }
        if !network.contains(subnet.network()) {
            return Err(field(
                &at("subnet"),
                format!("{subnet} is outside the network {network}"),
            ));
        }
        if let Some(j) = nodes.iter().position(|o| o.subnet == Some(subnet)) {
            return Err(field(&at("subnet"), format!("{subnet} is node {j}'s too")));
        }
        if let Some(j) = (nodes.iter()).position(|o| o.underlay_ip == Some(underlay_ip)) {
            return Err(field(
                &at("underlayIP"),
                format!("{underlay_ip} is node {j}'s too"),
            ));
        }
        nodes.push(Node {
            underlay_ip: Some(underlay_ip),
            subnet: Some(subnet),
            underlay_ip6: None,
            subnet6: None,
        });
    }
    Ok(nodes)
}

/// An IPv6-only table's nodes before their IPv6 side: none names an IPv4 address or
/// subnet, which would have no network to be in.
fn nodes_without_ipv4(confs: &[NodeConf]) -> Result<Vec<Node>, Error> {
    if confs.is_empty() {
        return Err(field(
            "store.nodes",
            "empty: the table must name this node at least",
        ));
    }
    for (i, n) in confs.iter().enumerate() {
        let given =
            (n.underlay_ip.as_ref().map(|_| "underlayIP")).or(n.subnet.as_ref().map(|_| "subnet"));
        if let Some(what) = given {
            return Err(field(
                &format!("store.nodes[{i}].{what}"),
                "given without a network (an IPv6-only network's nodes have underlayIPv6 and ipv6Subnet alone)",
            ));
        }
    }
    Ok(vec![Node::default(); confs.len()])
}

/// The static table's IPv6 side: with `ipv6Network`, every node's `underlayIPv6` and
/// `ipv6Subnet` (a network in it, disjoint from the others'); without, none.
fn nodes6(
    confs: &[NodeConf],
    nodes: &[Node],
    network: Option<Ipv6Network>,
) -> Result<Store, Error> {
    let mut out: Vec<Node> = Vec::new();
    for (i, (n, node)) in confs.iter().zip(nodes).enumerate() {
        let at = |what: &str| format!("store.nodes[{i}].{what}");
        let Some(network) = network else {
            if n.underlay_ipv6.is_some() || n.ipv6_subnet.is_some() {
                return Err(field(&at("ipv6Subnet"), "given without an ipv6Network"));
            }
            out.push(node.clone());
            continue;
        };
        let (Some(ip), Some(subnet)) = (&n.underlay_ipv6, &n.ipv6_subnet) else {
            return Err(field(
                &at("underlayIPv6"),
                "missing (with ipv6Network every node has underlayIPv6 and ipv6Subnet)",
            ));
        };
        let ip: Ipv6Addr = (ip.parse()).map_err(|_| {
            field(
                &at("underlayIPv6"),
                format!("{ip:?} is not an IPv6 address"),
            )
        })?;
        let subnet: Ipv6Network = subnet.parse().map_err(|e| field(&at("ipv6Subnet"), e))?;
        if subnet.network() != subnet.ip()
            || subnet.prefix() <= network.prefix()
            || subnet.prefix() > 126
            || !network.contains(subnet.network())
        {
            return Err(field(
                &at("ipv6Subnet"),
                format!("{subnet} is not a network of at most /126 inside {network}"),
            ));
        }
        let overlaps = |o: &Node| {
            o.subnet6
                .is_some_and(|s| s.contains(subnet.network()) || subnet.contains(s.network()))
        };
        if let Some(j) = out.iter().position(overlaps) {
            return Err(field(
                &at("ipv6Subnet"),
                format!("{subnet} overlaps node {j}'s"),
            ));
        }
        if let Some(j) = out.iter().position(|o| o.underlay_ip6 == Some(ip)) {
            return Err(field(
                &at("underlayIPv6"),
                format!("{ip} is node {j}'s too"),
            ));
        }
        out.push(Node {
            underlay_ip6: Some(ip),
            subnet6: Some(subnet),
            ..node.clone()
        });
    }
    Ok(Store::Static(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"cniVersion": "1.1.0", "name": "cluster", "type": "vxlan-overlay",
            "network": "10.244.0.0/16",
            "store": {"type": "static", "nodes": [
                {"underlayIP": "192.168.1.10", "subnet": "10.244.1.0/24"},
                {"underlayIP": "192.168.1.11", "subnet": "10.244.2.0/24"}]}});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    #[test]
    fn an_etcd_lease_ttl_etcd_would_refuse_is_a_config_error() {
        let store = |ttl: u64| {
            conf(
                json!({"store": {"type": "etcd", "endpoints": ["http://10.0.0.5:2379"],
                "leaseTTL": ttl}}),
            )
        };
        assert!(Overlay::from_json(&store(9_000_000_000)).is_ok());
        let flannels =
            conf(json!({"store": {"type": "etcd", "endpoints": ["http://10.0.0.5:2379"]}}));
        match Overlay::from_json(&flannels).unwrap().store {
            Store::Etcd(e) => assert_eq!(e.lease_ttl, 86400, "flanneld's 24 h"),
            other => panic!("{other:?}"),
        }
        for bad in [1, 9_000_000_001] {
            assert_eq!(
                Overlay::from_json(&store(bad)).unwrap_err().code,
                7,
                "{bad}"
            );
        }
    }

    #[test]
    fn a_vni_whose_device_name_is_too_long_is_a_config_error() {
        assert!(Overlay::from_json(&conf(json!({"vni": 9_999_999}))).is_ok());
        let e = Overlay::from_json(&conf(json!({"vni": 10_000_000}))).unwrap_err();
        assert_eq!(e.code, 7, "{e}");
        assert!(e.to_string().contains("flannel.10000000"), "{e}");
    }

    #[test]
    fn flannels_defaults() {
        let o = Overlay::from_json(&conf(json!({}))).unwrap();
        assert_eq!(
            (
                o.vni,
                o.port,
                o.subnet_len,
                o.bridge.as_str(),
                o.ip_masq,
                o.hairpin_mode
            ),
            (1, 8472, Some(24), "cni0", true, true)
        );
        assert_eq!(o.vtep_name(), "flannel.1");
        let mac = o.vtep_mac("192.168.1.10".parse().unwrap());
        assert_eq!(mac[0] & 3, 2);
        assert_ne!(mac, o.vtep_mac("192.168.1.11".parse().unwrap()));
    }

    /// `ipv6Network` without `network`: nodes with underlayIPv6 and ipv6Subnet alone, told
    /// and their MACs derived by their IPv6 address; no IPv4 side at all.
    #[test]
    fn a_static_ipv6_only_network_has_nodes_of_ipv6_alone() {
        let node = |i: u8| json!({"underlayIPv6": format!("fd00::{i}"), "ipv6Subnet": format!("fc00:0:0:{i}::/64")});
        let v6_only = |nodes: serde_json::Value, extra: serde_json::Value| {
            let mut c = json!({"cniVersion": "1.1.0", "name": "cluster", "type": "vxlan-overlay",
                "ipv6Network": "fc00::/48", "store": {"type": "static", "nodes": nodes}});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            Overlay::from_json(&c)
        };
        let o = v6_only(json!([node(1), node(2)]), json!({})).unwrap();
        assert!(o.v6_only());
        assert_eq!((o.network, o.subnet_len), (None, None));
        let me = o.node_at("fd00::2".parse().unwrap()).unwrap();
        assert_eq!(
            (me.underlay_ip, me.subnet, me.subnet6),
            (None, None, Some("fc00:0:0:2::/64".parse().unwrap()))
        );
        assert_eq!(me.address(), Some("fd00::2".parse().unwrap()));
        let (a, b) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        assert_ne!(o.vtep_mac6(a), o.vtep_mac6(b));
        assert_eq!(o.vtep_mac6(a)[0] & 3, 2, "unicast, locally administered");
        for (nodes, extra, field) in [
            (json!([]), json!({}), "store.nodes"),
            (
                json!([{"underlayIP": "192.168.1.10", "underlayIPv6": "fd00::1", "ipv6Subnet": "fc00:0:0:1::/64"}]),
                json!({}),
                "store.nodes[0].underlayIP",
            ),
            (
                json!([node(1), {"subnet": "10.244.1.0/24", "underlayIPv6": "fd00::2", "ipv6Subnet": "fc00:0:0:2::/64"}]),
                json!({}),
                "store.nodes[1].subnet",
            ),
            (
                json!([{"underlayIPv6": "fd00::1"}]),
                json!({}),
                "store.nodes[0].underlayIPv6",
            ),
            (
                json!([node(1), {"underlayIPv6": "fd00::1", "ipv6Subnet": "fc00:0:0:2::/64"}]),
                json!({}),
                "store.nodes[1].underlayIPv6",
            ),
            (json!([node(1)]), json!({"subnetLen": 24}), "subnetLen"),
            (json!([node(1)]), json!({"vni": 10000}), "vni"),
        ] {
            let e = v6_only(nodes.clone(), extra.clone()).unwrap_err();
            assert_eq!(e.code, 7, "{nodes} {extra}");
            assert!(e.msg.starts_with(field), "{nodes} {extra}: {}", e.msg);
        }
        // a dual-stack table's nodes are still told, and their MACs derived, by IPv4
        let dual = json!({"underlayIP": "192.168.1.10", "subnet": "10.244.1.0/24",
            "underlayIPv6": "fd00::1", "ipv6Subnet": "fc00:0:0:1::/64"});
        let o = v6_only(json!([dual]), json!({"network": "10.244.0.0/16"})).unwrap();
        assert!(!o.v6_only());
        assert_eq!(o.subnet_len, Some(24));
        let me = o.node_at("192.168.1.10".parse().unwrap()).unwrap();
        assert_eq!(me.address(), Some("192.168.1.10".parse().unwrap()));
    }

    #[test]
    fn mistakes_name_their_field() {
        let node = |ip: &str, subnet: &str| json!({"underlayIP": ip, "subnet": subnet});
        let dual = |ip: &str, ip6: &str, subnet6: &str| {
            let subnet = format!("10.244.{}.0/24", ip.rsplit('.').next().unwrap_or("1"));
            json!({"underlayIP": ip, "subnet": subnet, "underlayIPv6": ip6, "ipv6Subnet": subnet6})
        };
        for (extra, field) in [
            (json!({"vni": 16777216}), "vni"),
            (json!({"port": 0}), "port"),
            (json!({"port": 70000}), "port"),
            (json!({"subnetLen": 16}), "subnetLen"),
            (json!({"network": "10.244.0.1/16"}), "network"),
            (
                json!({"store": {"type": "static", "nodes": [node("192.168.1.10", "10.99.1.0/24")]}}),
                "store.nodes[0].subnet",
            ),
            (
                json!({"store": {"type": "static", "nodes": [node("192.168.1.10", "10.244.1.0/24"), node("192.168.1.11", "10.244.1.0/24")]}}),
                "store.nodes[1].subnet",
            ),
            (
                json!({"store": {"type": "static", "nodes": [node("192.168.1.10", "10.244.1.0/24"), node("192.168.1.10", "10.244.2.0/24")]}}),
                "store.nodes[1].underlayIP",
            ),
            (
                json!({"store": {"type": "static", "nodes": [node("192.168.1.10", "10.244.1.0/25")]}}),
                "store.nodes[0].subnet",
            ),
            (
                json!({"store": {"type": "static", "nodes": [{"subnet": "10.244.1.0/24"}]}}),
                "store.nodes[0].underlayIP",
            ),
            (
                json!({"store": {"type": "static", "nodes": [{"underlayIP": "192.168.1.10"}]}}),
                "store.nodes[0].subnet",
            ),
            (json!({"store": {"type": "other"}}), "store.type"),
            (json!({"store": {"type": "etcd"}}), "store.endpoints"),
            (
                json!({"store": {"type": "etcd", "endpoints": ["10.0.0.5:2379"]}}),
                "store.endpoints",
            ),
            (
                json!({"store": {"type": "etcd", "endpoints": ["http://e:2379"], "prefix": "x"}}),
                "store.prefix",
            ),
            (json!({"ipv6Network": "fc00::1/48"}), "ipv6Network"),
            (
                json!({"ipv6Network": "fc00::/48", "store": {"type": "etcd", "endpoints": ["http://e:2379"]}}),
                "ipv6Network",
            ),
            (
                json!({"ipv6Network": "fc00::/48"}),
                "store.nodes[0].underlayIPv6",
            ),
            (
                json!({"store": {"type": "static", "nodes": [dual("192.168.1.10", "fd00::10", "fc00:0:0:1::/64")]}}),
                "store.nodes[0].ipv6Subnet",
            ),
            (
                json!({"ipv6Network": "fc00::/48", "store": {"type": "static", "nodes": [dual("192.168.1.10", "fd00::10", "fc01:0:0:1::/64")]}}),
                "store.nodes[0].ipv6Subnet",
            ),
            (
                json!({"ipv6Network": "fc00::/48", "store": {"type": "static", "nodes": [dual("192.168.1.10", "fd00::10", "fc00:0:0:1::/64"), dual("192.168.1.11", "fd00::11", "fc00:0:0:1::/96")]}}),
                "store.nodes[1].ipv6Subnet",
            ),
            (
                json!({"ipv6Network": "fc00::/48", "vni": 10000, "store": {"type": "static", "nodes": [dual("192.168.1.10", "fd00::10", "fc00:0:0:1::/64")]}}),
                "vni",
            ),
        ] {
            let e = Overlay::from_json(&conf(extra.clone())).unwrap_err();
            assert_eq!(e.code, 7, "{extra}");
            assert!(e.msg.starts_with(field), "{extra}: {}", e.msg);
        }
        let o = Overlay::from_json(&conf(json!({}))).unwrap();
        assert!(o
            .node_at("192.168.1.99".parse().unwrap())
            .unwrap_err()
            .msg
            .starts_with("store.nodes"));
    }
}
