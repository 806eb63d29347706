//! flannel's subnet file (`/run/flannel/subnet.env`): what a node's agent tells the plugin.
//! Written by our agent or by a real flanneld; the plugin in the etcd store reads only this,
//! so it keeps attaching containers while etcd is down. A dual-stack network adds
//! FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET after the IPv4 pair, as flanneld writes them;
//! an IPv6-only network's file has the IPv6 pair alone.

use std::path::Path;

use ipnetwork::{Ipv4Network, Ipv6Network};
use libcni::{code, files, Error};

/// The most a subnet file may hold; flannel's is about 100 bytes.
pub const MAX_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone, PartialEq)]
pub struct SubnetEnv {
    /// FLANNEL_NETWORK (the cluster network) and FLANNEL_SUBNET (the node's subnet,
    /// written as its gateway (first address) with the subnet's prefix, e.g.
    /// 10.244.1.1/24); None in an IPv6-only network.
    pub ipv4: Option<(Ipv4Network, Ipv4Network)>,
    /// FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET (the gateway, `…::1/64`), in a
    /// dual-stack or IPv6-only network.
    pub ipv6: Option<(Ipv6Network, Ipv6Network)>,
    pub mtu: u32,
    pub ip_masq: bool,
}

impl SubnetEnv {
    /// The node's IPv4 subnet, unless the network is IPv6-only.
    pub fn node_subnet(&self) -> Option<Ipv4Network> {
        let (_, gw) = self.ipv4?;
        Some(Ipv4Network::new(gw.network(), gw.prefix()).expect("from a valid network"))
    }

    /// The cluster's IPv4 network, unless it is IPv6-only.
    pub fn network(&self) -> Option<Ipv4Network> {
        self.ipv4.map(|(n, _)| n)
    }

    /// The node's IPv6 subnet, in a dual-stack or IPv6-only network.
    pub fn node_subnet6(&self) -> Option<Ipv6Network> {
        let (_, gw) = self.ipv6?;
        Some(Ipv6Network::new(gw.network(), gw.prefix()).expect("from a valid network"))
    }

    pub fn read(path: &Path) -> Result<SubnetEnv, Error> {
        let text = files::read_bounded(path, MAX_BYTES)?.ok_or_else(|| {
            Error::new(
                code::TRY_AGAIN,
                format!("{} does not exist yet", path.display()),
            )
            .details("is the node's agent (vxlan-overlay-agent or flanneld) running?")
        })?;
        SubnetEnv::parse(&String::from_utf8_lossy(&text))
            .map_err(|e| Error::config(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<SubnetEnv, String> {
        let get = |key: &str| {
            text.lines()
                .filter_map(|l| l.trim().split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.trim().to_string())
                .ok_or_else(|| format!("no {key}"))
        };
        let net = |key: &str| {
            get(key)?
                .parse::<Ipv4Network>()
                .map_err(|e| format!("{key}: {e}"))
        };
        let net6 = |key: &str| {
            get(key)?
                .parse::<Ipv6Network>()
                .map_err(|e| format!("{key}: {e}"))
        };
        let ipv6 = match get("FLANNEL_IPV6_NETWORK") {
            Ok(_) => Some((net6("FLANNEL_IPV6_NETWORK")?, net6("FLANNEL_IPV6_SUBNET")?)),
            Err(_) => None,
        };
        // flanneld writes no IPv4 pair for an IPv6-only network; a file has one family.
        let ipv4 = match (get("FLANNEL_NETWORK"), ipv6) {
            (Err(_), Some(_)) => None,
            _ => Some((net("FLANNEL_NETWORK")?, net("FLANNEL_SUBNET")?)),
        };
        let env = SubnetEnv {
            ipv4,
            ipv6,
            mtu: get("FLANNEL_MTU")?
                .parse()
                .map_err(|e| format!("FLANNEL_MTU: {e}"))?,
            ip_masq: get("FLANNEL_IPMASQ")? == "true",
        };
        // What reaches host-local, the bridge and the masquerade exemption must make sense.
        if let Some((network, subnet)) = env.ipv4 {
            if !network.contains(subnet.ip()) || subnet.prefix() < network.prefix() {
                return Err(format!(
                    "FLANNEL_SUBNET {subnet} is not in FLANNEL_NETWORK {network}"
                ));
            }
            if subnet.prefix() > 30 {
                return Err(format!("FLANNEL_SUBNET {subnet} holds no containers"));
            }
        }
        if let Some((network, subnet)) = env.ipv6 {
            if !network.contains(subnet.ip()) || subnet.prefix() < network.prefix() {
                return Err(format!(
                    "FLANNEL_IPV6_SUBNET {subnet} is not in FLANNEL_IPV6_NETWORK {network}"
                ));
            }
            if subnet.prefix() > 126 {
                return Err(format!("FLANNEL_IPV6_SUBNET {subnet} holds no containers"));
            }
        }
        if env.mtu < 576 {
            return Err(format!("FLANNEL_MTU {} is below 576", env.mtu));
        }
        Ok(env)
    }

    pub fn render(&self) -> String {
        let v4 = (self.ipv4)
            .map(|(n, s)| format!("FLANNEL_NETWORK={n}\nFLANNEL_SUBNET={s}\n"))
            .unwrap_or_default();
        let v6 = (self.ipv6)
            .map(|(n, s)| format!("FLANNEL_IPV6_NETWORK={n}\nFLANNEL_IPV6_SUBNET={s}\n"))
            .unwrap_or_default();
        format!(
            "{v4}{v6}FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ip_masq
        )
    }

    /// Writes the file whole (a reader never sees half of it).
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        if let Some(dir) = path.parent() {
            files::private_dir(dir)?;
        }
        files::replace(path, self.render().as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_flanneld_writes() {
        let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let s = SubnetEnv::parse(text).unwrap();
        assert_eq!(s.node_subnet().unwrap().to_string(), "10.244.1.0/24");
        assert_eq!(s.ipv4.unwrap().1.ip().to_string(), "10.244.1.1");
        assert_eq!((s.mtu, s.ip_masq), (1450, true));
        assert_eq!(s.render(), text);
        assert!(SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0/16\n").is_err());
        // flanneld's dual-stack file
        let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:5::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        let s = SubnetEnv::parse(text).unwrap();
        assert_eq!(s.node_subnet6().unwrap().to_string(), "fc00:0:0:5::/64");
        assert_eq!(s.render(), text);
        assert!(SubnetEnv::parse(&text.replace("fc00:0:0:5::1/64", "fd00::1/64")).is_err());
        // flanneld's IPv6-only file: the IPv6 pair alone
        let text = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:5::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n";
        let s = SubnetEnv::parse(text).unwrap();
        assert_eq!((s.ipv4, s.node_subnet()), (None, None));
        assert_eq!(s.node_subnet6().unwrap().to_string(), "fc00:0:0:5::/64");
        assert_eq!(s.render(), text);
        assert!(SubnetEnv::parse("FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n").is_err());
        for bad in [
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.9.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/31\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=0\nFLANNEL_IPMASQ=true\n",
        ] {
            assert!(SubnetEnv::parse(bad).is_err(), "{bad}");
        }
    }
}
