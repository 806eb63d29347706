//! The bridge config, with the reference plugin's field names and defaults.

use libcni::mac::parse_mac;
use libcni::skel::CmdArgs;
use libcni::spec::Dns;
use libcni::{code, Error};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub force_address: bool,
    #[serde(default)]
    pub ip_masq: bool,
    /// v1.6+: `iptables` or `nftables`; both mean our nftables masquerade (checked by
    /// `load` when `ipMasq` is on, where the reference reads it).
    #[serde(default)]
    ip_masq_backend: Option<String>,
    /// 0 or absent: the kernel's default.
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub promisc_mode: bool,
    #[serde(default)]
    pub macspoofchk: bool,
    /// Already in 1.1.1 (Go tag `enabledad`): DAD on the container's IPv6 addresses.
    #[serde(default, rename = "enabledad")]
    pub enable_dad: bool,
    /// v1.4.1+: the container interface is left down (layer 2 only).
    #[serde(default)]
    pub disable_container_interface: bool,
    /// v1.7+: the host port is an isolated bridge port.
    #[serde(default)]
    pub port_isolation: bool,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(default)]
    runtime_config: MacArg,
    #[serde(default)]
    args: Option<Args>,
    /// Reference fields we do not implement; refused rather than silently ignored, since
    /// ignoring them would drop the isolation they ask for.
    #[serde(default)]
    vlan: u16,
    #[serde(default, rename = "vlanTrunk")]
    vlan_trunk: Vec<serde_json::Value>,
    /// v1.3+: only acts on the VLANs above; accepted alone, as the reference does.
    #[serde(default, rename = "preserveDefaultVlan")]
    _preserve_default_vlan: bool,
    /// The container MAC the runtime asked for, if any (resolved by `load`).
    #[serde(skip)]
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, Default, Deserialize)]
struct MacArg {
    #[serde(default)]
    mac: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Args {
    #[serde(default)]
    cni: MacArg,
}

fn default_bridge() -> String {
    "cni0".to_string()
}

impl BridgeConf {
    pub fn load(args: &CmdArgs) -> Result<BridgeConf, Error> {
        let mut c: BridgeConf = args.parse_conf()?;
        if !libcni::names::is_ifname(&c.bridge) {
            return Err(Error::config(format!("invalid bridge name {:?}", c.bridge)));
        }
        if c.vlan != 0 || !c.vlan_trunk.is_empty() {
            return Err(Error::new(
                code::UNSUPPORTED_FIELD,
                "bridge VLANs (\"vlan\", \"vlanTrunk\") are not supported: this kernel has no 8021q nor bridge VLAN filtering",
            ));
        }
        if c.hairpin_mode && c.promisc_mode {
            return Err(Error::config(
                "cannot set hairpin mode and promiscuous mode at the same time",
            ));
        }
        if c.is_default_gateway {
            c.is_gateway = true;
        }
        // As the reference: CNI_ARGS MAC, then args.cni.mac, then runtimeConfig.mac.
        let from_env = args.cni_args(&["MAC"])?.pop().map(|(_, v)| v);
        let asked = [
            c.runtime_config.mac.take(),
            c.args.take().and_then(|a| a.cni.mac),
            from_env,
        ]
        .into_iter()
        .flatten()
        .next();
        c.mac = asked
            .map(|m| parse_mac(&m).ok_or_else(|| Error::config(format!("invalid mac {m:?}"))))
            .transpose()?;
        Ok(c)
    }

    /// What the reference refuses only on ADD (a DEL or CHECK of such a config runs).
    pub fn check_for_add(&self, args: &CmdArgs) -> Result<(), Error> {
        if self.disable_container_interface && libcni::delegate::Delegate::ipam(args).is_some() {
            return Err(Error::config(
                "cannot use IPAM when DisableContainerInterface flag is set",
            ));
        }
        if self.ip_masq {
            libcni::firewall::check_masq_backend(self.ip_masq_backend.as_deref())?;
        }
        Ok(())
    }

    pub fn mtu(&self) -> Option<u32> {
        (self.mtu != 0).then_some(self.mtu)
    }
}
