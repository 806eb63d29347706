//! flannel's etcd layout, so our nodes and flanneld nodes share one cluster:
//! `<prefix>/config` (the network, written by the administrator) with flannel's defaults,
//! and one lease per node at `<prefix>/subnets/<a.b.c.d>-<len>` holding
//! `{"PublicIP":…,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":…,"VtepMAC":…}}`.
//! A dual-stack network (EnableIPv6) keys a lease `<a.b.c.d>-<len>&<v6>-<len>` (the IPv6
//! part as Go prints an address) and adds `PublicIPv6` and `BackendV6Data`. A host-gw
//! network's leases say `"BackendType":"host-gw"` and carry no backend data.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use libcni::mac::{format_mac, parse_mac};
use serde::{Deserialize, Serialize};
use vxlan_overlay::config::{check_vni_names_a_link, check_vni_names_a_link6};
use vxlan_overlay::node::VXLAN_OVERHEAD;

/// `<prefix>/config`, as flannel reads it (names in any case, unknown ones ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    subnet_len: u32,
    #[serde(default)]
    subnet_min: Option<String>,
    #[serde(default)]
    subnet_max: Option<String>,
    #[serde(default)]
    backend: Option<RawBackend>,
    #[serde(rename = "EnableIPv4", default)]
    enable_ipv4: Option<bool>,
    #[serde(rename = "EnableIPv6", default)]
    enable_ipv6: bool,
    #[serde(rename = "IPv6Network", default)]
    ipv6_network: Option<String>,
    #[serde(rename = "IPv6SubnetLen", default)]
    ipv6_subnet_len: u32,
    #[serde(rename = "IPv6SubnetMin", default)]
    ipv6_subnet_min: Option<String>,
    #[serde(rename = "IPv6SubnetMax", default)]
    ipv6_subnet_max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawBackend {
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(rename = "VNI", default)]
    vni: Option<u32>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    direct_routing: bool,
    #[serde(rename = "MTU", default)]
    mtu: Option<u32>,
    #[serde(rename = "GBP", default)]
    gbp: bool,
    #[serde(default)]
    learning: bool,
}

/// The cluster network, with flannel's defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub network: Ipv4Network,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub vni: u32,
    /// The UDP port; flannel's 0 means the kernel's, 8472.
    pub port: u16,
    pub direct_routing: bool,
    /// Backend.MTU: the MTU on the wire (flannel since v0.21.3): the device and the pods
    /// get 50 less. None (absent or 0): the underlay interface's.
    pub wire_mtu: Option<u32>,
    /// Backend.GBP: the device's group-based policy extension.
    pub gbp: bool,
    /// Backend.Learning: the device learns source MACs (flannel programs the same peer
    /// entries either way).
    pub learning: bool,
    /// The IPv6 half of a dual-stack network (EnableIPv6), or an IPv6-only network.
    pub ipv6: Option<Net6>,
    /// EnableIPv4 (flannel's default true). An IPv6-only network (false) has, as in
    /// flanneld, the IPv4 "subnet" 0.0.0.0/0 for every node: `network` is 0.0.0.0/0 and
    /// every lease key `0.0.0.0-0&<v6>-<len>`.
    pub ipv4: bool,
    /// Backend.Type host-gw: routes via the peers' underlay addresses, no device; the
    /// VXLAN settings above are then unused (VNI only names a device left from before).
    pub host_gw: bool,
}

/// A dual-stack network's IPv6 part, with flannel's defaults: IPv6SubnetLen 64 for
/// networks of /62 or wider, else two longer; the first subnet skipped, the last used.
#[derive(Debug, Clone, PartialEq)]
pub struct Net6 {
    pub network: Ipv6Network,
    pub subnet_len: u8,
    pub subnet_min: Ipv6Addr,
    pub subnet_max: Ipv6Addr,
}

fn u32_of(ip: Ipv4Addr) -> u32 {
    u32::from(ip)
}

/// flannel's SubnetLen (`family` "" or "IPv6" names the fields) for a network of
/// `prefix` in `bits`-bit addresses: `given` if it leaves room for a host (at most
/// bits - 2) and four subnets; when not given, `default` for networks of default - 2 or
/// wider, else two longer than the network, which then must be at most bits - 4.
fn subnet_len(
    given: u32,
    prefix: u8,
    bits: u32,
    default: u32,
    family: &str,
) -> Result<u32, String> {
    let prefix = u32::from(prefix);
    match given {
        0 if prefix > bits - 4 => Err(format!(
            "{family}Network: too small, at least a /{}",
            bits - 4
        )),
        0 if prefix <= default - 2 => Ok(default),
        0 => Ok(prefix + 2),
        n if n > bits - 2 => Err(format!("{family}SubnetLen must be less than /{}", bits - 1)),
        n if n < prefix + 2 => Err(format!(
            "{family}SubnetLen: the network must hold at least four subnets"
        )),
        n => Ok(n),
    }
}

/// The first `n` blocks of `size` (aligned) from `min` to `max` that overlap none of
/// `taken` (first and last address of each), in order: both families' free subnets.
fn free_blocks(min: u128, max: u128, size: u128, taken: &[(u128, u128)], n: usize) -> Vec<u128> {
    let mut out = Vec::new();
    let mut at = min;
    while at <= max && out.len() < n {
        let end = at + (size - 1);
        if !taken.iter().any(|(a, b)| *a <= end && at <= *b) {
            out.push(at);
        }
        match at.checked_add(size) {
            Some(next) => at = next,
            None => break,
        }
    }
    out
}

/// flannel's IPv4 range: the Network, SubnetLen (24 for networks of /22 or wider, else
/// two longer), SubnetMin (the first subnet is not handed out) and SubnetMax (the last
/// is).
fn v4_range(raw: &RawConfig) -> Result<(Ipv4Network, u32, Ipv4Addr, Ipv4Addr), String> {
    let network: Ipv4Network = raw
        .network
        .as_deref()
        .ok_or("no Network")?
        .parse()
        .map_err(|e| format!("Network: {e}"))?;
    let network =
        Ipv4Network::new(network.network(), network.prefix()).map_err(|e| e.to_string())?;
    let subnet_len = subnet_len(raw.subnet_len, network.prefix(), 32, 24, "")?;
    let size = 1u32 << (32 - subnet_len);
    let aligned = |key: &str, s: Option<String>, default: u32| -> Result<Ipv4Addr, String> {
        let ip = match s {
            Some(s) => s.parse::<Ipv4Addr>().map_err(|e| format!("{key}: {e}"))?,
            None => Ipv4Addr::from(default),
        };
        if !network.contains(ip) {
            return Err(format!("{key} is not in the range of the Network"));
        }
        if !u32_of(ip).is_multiple_of(size) {
            return Err(format!("{key} is not on a SubnetLen boundary: {ip}"));
        }
        Ok(ip)
    };
    let first = u32_of(network.network());
    let last = u32_of(network.broadcast());
    let subnet_min = aligned("SubnetMin", raw.subnet_min.clone(), first + size)?;
    let subnet_max = aligned("SubnetMax", raw.subnet_max.clone(), last - size + 1)?;
    if subnet_min > subnet_max {
        return Err(format!(
            "SubnetMin {subnet_min} is above SubnetMax {subnet_max}"
        ));
    }
    Ok((network, subnet_len, subnet_min, subnet_max))
}

impl Net6 {
    fn parse(raw: &RawConfig) -> Result<Option<Net6>, String> {
        if !raw.enable_ipv6 {
            return Ok(None);
        }
        let network = (raw.ipv6_network.as_deref())
            .ok_or("EnableIPv6 without an IPv6Network")?
            .parse::<Ipv6Network>()
            .map_err(|e| format!("IPv6Network: {e}"))?;
        let network =
            Ipv6Network::new(network.network(), network.prefix()).map_err(|e| e.to_string())?;
        // Go prints these as IPv4 addresses: no key could name such a subnet both ways.
        if network.network().to_ipv4_mapped().is_some() {
            return Err(format!("IPv6Network {network}: IPv4-mapped addresses"));
        }
        let given = raw.ipv6_subnet_len;
        let subnet_len = subnet_len(given, network.prefix(), 128, 64, "IPv6")?;
        let size = 1u128 << (128 - subnet_len);
        let aligned = |key: &str, s: &Option<String>, default: u128| -> Result<Ipv6Addr, String> {
            let ip = match s {
                Some(s) => s.parse::<Ipv6Addr>().map_err(|e| format!("{key}: {e}"))?,
                None => Ipv6Addr::from(default),
            };
            if !network.contains(ip) {
                return Err(format!("{key} is not in the range of the IPv6Network"));
            }
            if !u128::from(ip).is_multiple_of(size) {
                return Err(format!("{key} is not on a IPv6SubnetLen boundary: {ip}"));
            }
            Ok(ip)
        };
        let first = u128::from(network.network());
        let last = u128::from(network.broadcast());
        let subnet_min = aligned("IPv6SubnetMin", &raw.ipv6_subnet_min, first + size)?;
        let subnet_max = aligned("IPv6SubnetMax", &raw.ipv6_subnet_max, last - size + 1)?;
        if subnet_min > subnet_max {
            return Err(format!(
                "IPv6SubnetMin {subnet_min} is above IPv6SubnetMax {subnet_max}"
            ));
        }
        Ok(Some(Net6 {
            network,
            subnet_len: subnet_len as u8,
            subnet_min,
            subnet_max,
        }))
    }

    /// Whether `s` is one this network hands out.
    pub fn fits(&self, s: Ipv6Network) -> bool {
        s.prefix() == self.subnet_len
            && s.network() >= self.subnet_min
            && s.network() <= self.subnet_max
    }

    /// The first free subnets (at most `n`), in order, given those that are taken.
    pub fn free(&self, taken: &[Ipv6Network], n: usize) -> Vec<Ipv6Network> {
        let size = 1u128 << (128 - self.subnet_len);
        let taken: Vec<(u128, u128)> = (taken.iter())
            .map(|t| (u128::from(t.network()), u128::from(t.broadcast())))
            .collect();
        let (min, max) = (u128::from(self.subnet_min), u128::from(self.subnet_max));
        (free_blocks(min, max, size, &taken, n).into_iter())
            .map(|at| Ipv6Network::new(Ipv6Addr::from(at), self.subnet_len).expect("aligned"))
            .collect()
    }
}

impl Network {
    /// Reads `<prefix>/config` with flannel's rules: SubnetLen 24 for networks of /22 or
    /// wider, else two longer; the first subnet is not handed out (SubnetMin), the last is
    /// (SubnetMax); VNI 1; the vxlan and host-gw backends (host-gw reads no other
    /// Backend field, as flannel's).
    pub fn parse(json: &[u8]) -> Result<Network, String> {
        let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let raw: RawConfig = libcni::decode::from_value(&v).map_err(|e| e.to_string())?;
        let ipv6 = Net6::parse(&raw)?;
        let ipv4 = raw.enable_ipv4 != Some(false);
        let (network, subnet_len, subnet_min, subnet_max) = match ipv4 {
            true => v4_range(&raw)?,
            false if ipv6.is_none() => {
                return Err("EnableIPv4 false without EnableIPv6: no network at all".into())
            }
            false => {
                let any = Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0");
                (any, 0, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED)
            }
        };
        let backend = raw.backend.unwrap_or_default();
        if backend.kind.eq_ignore_ascii_case("host-gw") {
            return Ok(Network {
                network,
                subnet_len: subnet_len as u8,
                subnet_min,
                subnet_max,
                vni: 1,
                port: 8472,
                direct_routing: false,
                wire_mtu: None,
                gbp: false,
                learning: false,
                ipv6,
                ipv4,
                host_gw: true,
            });
        }
        if !backend.kind.eq_ignore_ascii_case("vxlan") {
            return Err(format!(
                "Backend.Type {:?}: only vxlan and host-gw are served",
                backend.kind
            ));
        }
        if backend.vni.is_some_and(|v| v > 0xff_ffff) {
            return Err("Backend.VNI: not a 24-bit VXLAN network identifier".into());
        }
        // Pods get at least the 576 bytes every IPv4 host must take.
        let wire_mtu = backend.mtu.filter(|m| *m != 0);
        if wire_mtu.is_some_and(|m| m < 576 + VXLAN_OVERHEAD) {
            return Err(format!(
                "Backend.MTU: the MTU on the wire, at least {} (pods get {VXLAN_OVERHEAD} less)",
                576 + VXLAN_OVERHEAD
            ));
        }
        if let Some(vni) = backend.vni.filter(|_| ipv4) {
            check_vni_names_a_link(vni).map_err(|e| format!("Backend.VNI: {e}"))?;
        }
        if ipv6.is_some() {
            check_vni_names_a_link6(backend.vni.unwrap_or(1))
                .map_err(|e| format!("Backend.VNI: {e}"))?;
        }
        Ok(Network {
            network,
            subnet_len: subnet_len as u8,
            subnet_min,
            subnet_max,
            vni: backend.vni.unwrap_or(1),
            port: backend.port.filter(|p| *p != 0).unwrap_or(8472),
            direct_routing: backend.direct_routing,
            wire_mtu,
            gbp: backend.gbp,
            learning: backend.learning,
            ipv6,
            ipv4,
            host_gw: false,
        })
    }

    /// The subnet of a lease's two that keys it: the IPv4 one, or in an IPv6-only
    /// network (every IPv4 part 0.0.0.0/0) the IPv6 one.
    pub fn primary(&self, (s, s6): Subnets) -> IpNetwork {
        match (self.ipv4, s6) {
            (false, Some(s6)) => IpNetwork::V6(s6),
            _ => IpNetwork::V4(s),
        }
    }

    /// Whether `s` is one this network hands out.
    pub fn fits(&self, s: Ipv4Network) -> bool {
        s.prefix() == self.subnet_len
            && u32_of(s.network()) >= u32_of(self.subnet_min)
            && u32_of(s.network()) <= u32_of(self.subnet_max)
    }

    /// The subnets a lease key names, if they are this network's: inside it and of its
    /// SubnetLen (any other is no lease of this network, whoever wrote it); in a
    /// dual-stack network the IPv6 part, if there is one, likewise.
    pub fn lease_of_key(&self, prefix: &str, key: &str) -> Option<Result<Subnets, String>> {
        Some(subnet_of_key(prefix, key)?.and_then(|(s, s6)| {
            if s.prefix() != self.subnet_len || !self.network.contains(s.network()) {
                return Err(format!(
                    "{s} is not a /{} of {}",
                    self.subnet_len, self.network
                ));
            }
            match (&self.ipv6, s6) {
                // An IPv6-only network's every key is `0.0.0.0-0&<v6>-<len>`.
                (_, None) if !self.ipv4 => Err(format!("{s} names no IPv6 subnet")),
                (Some(n), Some(s6))
                    if s6.prefix() != n.subnet_len || !n.network.contains(s6.network()) =>
                {
                    Err(format!("{s6} is not a /{} of {}", n.subnet_len, n.network))
                }
                _ => Ok((s, s6)),
            }
        }))
    }

    /// The first free subnets (at most `n`), in order, given those that are taken.
    pub fn free(&self, taken: &[Ipv4Network], n: usize) -> Vec<Ipv4Network> {
        let size = 1u128 << (32 - self.subnet_len);
        let taken: Vec<(u128, u128)> = (taken.iter())
            .map(|t| (u32_of(t.network()).into(), u32_of(t.broadcast()).into()))
            .collect();
        let (min, max) = (
            u32_of(self.subnet_min).into(),
            u32_of(self.subnet_max).into(),
        );
        (free_blocks(min, max, size, &taken, n).into_iter())
            .map(|at| {
                Ipv4Network::new(Ipv4Addr::from(at as u32), self.subnet_len).expect("aligned")
            })
            .collect()
    }
}

/// What a lease key names: the IPv4 subnet, and the IPv6 one of a dual-stack key.
pub type Subnets = (Ipv4Network, Option<Ipv6Network>);

/// A lease's key below the prefix: `subnets/10.244.1.0-24`, or flannel's dual-stack
/// `subnets/10.244.1.0-24&fc00:0:0:1::-64` (Rust prints an IPv6 address as Go does,
/// IPv4-mapped ones aside, which a network never holds).
pub fn lease_key(prefix: &str, s: Ipv4Network, s6: Option<Ipv6Network>) -> String {
    let v6 = s6
        .map(|s6| format!("&{}-{}", s6.network(), s6.prefix()))
        .unwrap_or_default();
    format!("{prefix}/subnets/{}-{}{v6}", s.network(), s.prefix())
}

/// The subnets a key under `<prefix>/subnets/` names: `a.b.c.d-len`, or flannel's
/// dual-stack `a.b.c.d-len&<v6>-len`. None for a key elsewhere; an error
/// for one that does not name a subnet exactly, written as flannel writes it (network
/// address, no host bits, no leading zeros): `10.244.91.7-24` is not 10.244.91.0/24,
/// and reading it so would let one key take over another node's subnet.
pub fn subnet_of_key(prefix: &str, key: &str) -> Option<Result<Subnets, String>> {
    let rest = key.strip_prefix(prefix)?.strip_prefix("/subnets/")?;
    let (v4, v6) = match rest.split_once('&') {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (rest, None),
    };
    // The IPv6 part only has to be a subnet: Go and Rust may abbreviate one differently.
    let exact = |part: &str, canonical: bool| -> Result<IpNetwork, String> {
        let (ip, len) = part
            .split_once('-')
            .ok_or_else(|| format!("{part:?} is not <address>-<length>"))?;
        let net = ip
            .parse()
            .ok()
            .zip(len.parse().ok())
            .and_then(|(ip, len)| IpNetwork::new(ip, len).ok())
            .ok_or_else(|| format!("{part:?} is not <address>-<length>"))?;
        let named = if canonical {
            format!("{}-{}", net.network(), net.prefix()) == part
        } else {
            net.network() == net.ip()
        };
        if !named {
            return Err(format!(
                "{part:?} does not name its subnet {}/{} exactly",
                net.network(),
                net.prefix()
            ));
        }
        Ok(net)
    };
    let check = || -> Result<Subnets, String> {
        let s6 = match v6 {
            Some(v6) => match exact(v6, false)? {
                IpNetwork::V6(n) => Some(n),
                IpNetwork::V4(_) => return Err(format!("{v6:?} is not an IPv6 subnet")),
            },
            None => None,
        };
        match exact(v4, true)? {
            IpNetwork::V4(n) => Ok((n, s6)),
            IpNetwork::V6(_) => Err(format!("{v4:?} is not an IPv4 subnet")),
        }
    };
    Some(check())
}

/// A lease's value, with flannel's field names and order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<String>,
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<VxlanData>,
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<VxlanData>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VxlanData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
}

impl LeaseAttrs {
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, mac: [u8; 6]) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(VxlanData {
                vni,
                vtep_mac: format_mac(&mac),
            }),
            backend_v6_data: None,
        }
    }

    /// A host-gw node's lease: its address only, no backend data.
    pub fn host_gw(public_ip: Ipv4Addr) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// Whether the lease is a host-gw node's.
    pub fn is_host_gw(&self) -> bool {
        self.backend_type.eq_ignore_ascii_case("host-gw")
    }

    /// An IPv6-only node's lease, as flanneld writes it: PublicIP 0.0.0.0, no
    /// BackendData, its IPv6 address and flannel-v6.N's MAC.
    pub fn v6_only(self, public_ipv6: Ipv6Addr, mac: [u8; 6]) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            backend_data: None,
            ..self.with_v6(public_ipv6, mac)
        }
    }

    /// A dual-stack node's lease: its IPv6 address and flannel-v6.N's MAC added (none
    /// for host-gw, which has no backend data).
    pub fn with_v6(mut self, public_ipv6: Ipv6Addr, mac: [u8; 6]) -> LeaseAttrs {
        self.public_ipv6 = Some(public_ipv6.to_string());
        self.backend_v6_data = (self.backend_data.as_ref()).map(|d| VxlanData {
            vni: d.vni,
            vtep_mac: format_mac(&mac),
        });
        self
    }

    /// The node's IPv6 address, if it names one.
    pub fn public_ipv6(&self) -> Option<Ipv6Addr> {
        self.public_ipv6.as_deref()?.parse().ok()
    }

    /// The peer's flannel-v6.N MAC, for a dual-stack vxlan lease.
    pub fn vtep_mac6(&self) -> Option<[u8; 6]> {
        if !self.backend_type.eq_ignore_ascii_case("vxlan") {
            return None;
        }
        parse_mac(&self.backend_v6_data.as_ref()?.vtep_mac)
    }

    pub fn parse(value: &[u8]) -> Option<LeaseAttrs> {
        let v: serde_json::Value = serde_json::from_slice(value).ok()?;
        libcni::decode::from_value(&v).ok()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("lease attributes always serialize")
    }

    /// The peer's VTEP MAC, for a vxlan lease.
    pub fn vtep_mac(&self) -> Option<[u8; 6]> {
        if !self.backend_type.eq_ignore_ascii_case("vxlan") {
            return None;
        }
        parse_mac(&self.backend_data.as_ref()?.vtep_mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_gw() {
        let n = Network::parse(
            br#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw","VNI":99999999,"MTU":1}}"#,
        )
        .unwrap();
        assert!(n.host_gw, "host-gw reads no other Backend field");
        let vxlan =
            Network::parse(br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert!(!vxlan.host_gw);
        let a = LeaseAttrs::host_gw(Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"192.168.1.2","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
        let six = a.with_v6("fd00::2".parse().unwrap(), [2, 0, 0, 0, 0, 1]);
        assert!(six.is_host_gw() && six.backend_v6_data.is_none() && six.vtep_mac().is_none());
    }

    #[test]
    fn flannels_defaults() {
        let n =
            Network::parse(br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(n.subnet_len, 24);
        assert_eq!(
            n.subnet_min.to_string(),
            "10.244.1.0",
            "the first subnet is skipped"
        );
        assert_eq!(n.subnet_max.to_string(), "10.244.255.0", "the last is used");
        assert_eq!((n.vni, n.port, n.direct_routing), (1, 8472, false));
        let small = Network::parse(
            br#"{"network":"10.9.0.0/24","backend":{"type":"vxlan","port":4789,"vni":7}}"#,
        )
        .unwrap();
        assert_eq!((small.subnet_len, small.vni, small.port), (26, 7, 4789));
        assert_eq!((n.wire_mtu, n.gbp, n.learning), (None, false, false));
        let opts = Network::parse(
            br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":1400,"GBP":true,"Learning":true}}"#,
        )
        .unwrap();
        assert_eq!(
            (opts.wire_mtu, opts.gbp, opts.learning),
            (Some(1400), true, true)
        );
        let zero =
            Network::parse(br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":0}}"#)
                .unwrap();
        assert_eq!(zero.wire_mtu, None, "0 is the underlay's");
        for bad in [
            r#"{"Network":"10.9.0.0/29","Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.244.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.5","Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#,
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":10000000}}"#,
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":600}}"#,
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.2.0","Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.244.0.0/16"}"#,
        ] {
            assert!(Network::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn flannels_ipv6_defaults() {
        let n = Network::parse(br#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#).unwrap();
        let v6 = n.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min.to_string(), "fc00:0:0:1::");
        assert_eq!(v6.subnet_max.to_string(), "fc00:0:0:ffff::");
        let small = Network::parse(br#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/120","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(small.ipv6.unwrap().subnet_len, 122);
        let off = Network::parse(
            br#"{"Network":"10.244.0.0/16","IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert_eq!(off.ipv6, None, "EnableIPv6 is off by default");
        for bad in [
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/125","Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127,"Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":49,"Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:1::1","Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMax":"fc01::","Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"::ffff:0:0/96","Backend":{"Type":"vxlan"}}"#,
        ] {
            assert!(Network::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let taken: Vec<Ipv6Network> = vec!["fc00:0:0:1::/64".parse().unwrap()];
        let free: Vec<String> = v6.free(&taken, 2).iter().map(|s| s.to_string()).collect();
        assert_eq!(free, ["fc00:0:0:2::/64", "fc00:0:0:3::/64"]);
    }

    #[test]
    fn ipv6_only_as_flanneld_keys_and_writes_it() {
        let n = Network::parse(br#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:240::/48","Backend":{"Type":"vxlan","VNI":4096}}"#).unwrap();
        assert!(!n.ipv4);
        assert_eq!(n.network.to_string(), "0.0.0.0/0");
        let p = "/coreos.com/network";
        let s6: Ipv6Network = "fc00:240:0:7::/64".parse().unwrap();
        // MakeSubnetKey of an empty IP4Net and the IPv6 subnet
        let key = lease_key(p, n.network, Some(s6));
        assert_eq!(
            key,
            "/coreos.com/network/subnets/0.0.0.0-0&fc00:240:0:7::-64"
        );
        assert_eq!(n.lease_of_key(p, &key), Some(Ok((n.network, Some(s6)))));
        assert_eq!(n.primary((n.network, Some(s6))), IpNetwork::V6(s6));
        for bad in [
            "0.0.0.0-0",
            "10.1.0.0-24&fc00:240:0:7::-64",
            "0.0.0.0-0&fc00:9::-64",
        ] {
            let key = format!("{p}/subnets/{bad}");
            assert!(matches!(n.lease_of_key(p, &key), Some(Err(_))), "{bad}");
        }
        let a = LeaseAttrs::vxlan(Ipv4Addr::new(192, 168, 1, 2), 1, [2, 0, 0, 0, 0, 1])
            .v6_only("fd00:103::10".parse().unwrap(), [2, 0, 0, 0, 0, 7]);
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:103::10","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:07"}}"#
        );
        for bad in [
            r#"{"EnableIPv4":false,"Backend":{"Type":"vxlan"}}"#,
            r#"{"EnableIPv4":false,"EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#,
            r#"{"EnableIPv6":true,"IPv6Network":"fc00:240::/48","Backend":{"Type":"vxlan"}}"#,
        ] {
            assert!(Network::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn free_subnets_skip_the_taken() {
        let n = Network::parse(br#"{"Network":"10.9.0.0/24","Backend":{"Type":"vxlan"}}"#).unwrap();
        let taken: Vec<Ipv4Network> = vec!["10.9.0.64/26".parse().unwrap()];
        let free: Vec<String> = n.free(&taken, 10).iter().map(|s| s.to_string()).collect();
        assert_eq!(free, ["10.9.0.128/26", "10.9.0.192/26"]);
    }

    #[test]
    fn leases_in_flannels_format() {
        let a = LeaseAttrs::vxlan(
            "192.168.1.10".parse().unwrap(),
            1,
            [0x6e, 0x1b, 0x5f, 0x6a, 0x2c, 0x9e],
        );
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:1b:5f:6a:2c:9e"}}"#
        );
        assert_eq!(LeaseAttrs::parse(a.to_json().as_bytes()), Some(a.clone()));
        assert_eq!(a.vtep_mac(), Some([0x6e, 0x1b, 0x5f, 0x6a, 0x2c, 0x9e]));
        // flannel's own test fixture: no backend
        let bare = LeaseAttrs::parse(br#"{"PublicIP":"1.2.3.4","PublicIPv6":null}"#).unwrap();
        assert_eq!(bare.vtep_mac(), None);
        let p = "/coreos.com/network";
        let s: Ipv4Network = "10.244.1.0/24".parse().unwrap();
        assert_eq!(
            lease_key(p, s, None),
            "/coreos.com/network/subnets/10.244.1.0-24"
        );
        assert_eq!(
            subnet_of_key(p, &lease_key(p, s, None)),
            Some(Ok((s, None)))
        );
        let s6: Ipv6Network = "fc00::/64".parse().unwrap();
        assert_eq!(
            subnet_of_key(p, "/coreos.com/network/subnets/10.244.1.0-24&fc00::-64"),
            Some(Ok((s, Some(s6))))
        );
        // as flanneld writes a dual-stack node's key (Go's net.IP String())
        let s6: Ipv6Network = "fc00:0:0:5::/64".parse().unwrap();
        assert_eq!(
            lease_key(p, s, Some(s6)),
            "/coreos.com/network/subnets/10.244.1.0-24&fc00:0:0:5::-64"
        );
        let dual = a
            .clone()
            .with_v6("fd00:95::10".parse().unwrap(), [2, 0, 0, 0, 0, 7]);
        assert_eq!(
            dual.to_json(),
            r#"{"PublicIP":"192.168.1.10","PublicIPv6":"fd00:95::10","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:1b:5f:6a:2c:9e"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:07"}}"#
        );
        assert_eq!(dual.vtep_mac6(), Some([2, 0, 0, 0, 0, 7]));
        assert_eq!(dual.public_ipv6(), "fd00:95::10".parse().ok());
        assert_eq!(subnet_of_key(p, "/coreos.com/network/config"), None);
    }

    #[test]
    fn a_key_names_one_subnet_exactly_or_nothing() {
        let p = "/coreos.com/network";
        let n =
            Network::parse(br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        let key = |rest: &str| format!("{p}/subnets/{rest}");
        for bad in [
            "10.244.91.7-24",
            "10.244.091.0-24",
            "10.244.91.0-024",
            "10.244.91.0-+24",
            "10.244.91.0-33",
            "10.244.91.0",
            "10.244.91.0-24&fc00::1-64",
            "10.244.91.0-24&10.1.0.0-16",
            "fc00::-64",
            "10.244.91.0-24 ",
        ] {
            assert!(
                matches!(n.lease_of_key(p, &key(bad)), Some(Err(_))),
                "{bad}"
            );
        }
        for other in ["10.244.0.0-16", "10.245.1.0-24", "10.244.1.0-25"] {
            assert!(
                matches!(n.lease_of_key(p, &key(other)), Some(Err(_))),
                "{other}"
            );
        }
        let s: Ipv4Network = "10.244.91.0/24".parse().unwrap();
        let s6: Ipv6Network = "fc00:0:0:5b::/64".parse().unwrap();
        assert_eq!(
            n.lease_of_key(p, &key("10.244.91.0-24")),
            Some(Ok((s, None)))
        );
        assert_eq!(
            n.lease_of_key(p, &key("10.244.91.0-24&fc00:0:0:5b::-64")),
            Some(Ok((s, Some(s6))))
        );
        // a dual-stack network checks the IPv6 part too
        let d = Network::parse(br#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(
            d.lease_of_key(p, &key("10.244.91.0-24&fc00:0:0:5b::-64")),
            Some(Ok((s, Some(s6))))
        );
        for bad in [
            "10.244.91.0-24&fc01:0:0:5b::-64",
            "10.244.91.0-24&fc00:0:0:5b::-80",
        ] {
            assert!(
                matches!(d.lease_of_key(p, &key(bad)), Some(Err(_))),
                "{bad}"
            );
        }
        assert_eq!(n.lease_of_key(p, &format!("{p}/config")), None);
    }
}
