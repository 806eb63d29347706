//! The bridge config, with the reference plugin's field names and defaults.

use libcni::skel::CmdArgs;
use libcni::spec::Dns;
use libcni::{code, Error};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    pub name: String,
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
    /// 0 or absent: the kernel's default.
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub promisc_mode: bool,
    #[serde(default)]
    pub macspoofchk: bool,
    #[serde(default)]
    pub ipam: Option<Ipam>,
    #[serde(default)]
    pub dns: Option<Dns>,
    /// Reference fields we do not implement; refused rather than silently ignored, since
    /// ignoring them would drop the isolation they ask for.
    #[serde(default)]
    vlan: u16,
    #[serde(default, rename = "vlanTrunk")]
    vlan_trunk: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct Ipam {
    #[serde(rename = "type", default)]
    pub plugin: String,
}

fn default_bridge() -> String {
    "cni0".to_string()
}

impl BridgeConf {
    pub fn load(args: &CmdArgs) -> Result<BridgeConf, Error> {
        let mut c: BridgeConf = args.parse_conf()?;
        libcni::skel::validate_ifname(&c.bridge)
            .map_err(|_| Error::config(format!("invalid bridge name {:?}", c.bridge)))?;
        if c.vlan != 0 || !c.vlan_trunk.is_empty() {
            return Err(Error::new(
                code::UNSUPPORTED_FIELD,
                "bridge VLANs (\"vlan\", \"vlanTrunk\") are not supported",
            ));
        }
        if c.is_default_gateway {
            c.is_gateway = true;
        }
        if c.ipam.as_ref().is_some_and(|i| i.plugin.is_empty()) {
            return Err(Error::config("ipam has no \"type\""));
        }
        Ok(c)
    }

    pub fn mtu(&self) -> Option<u32> {
        (self.mtu != 0).then_some(self.mtu)
    }

    pub fn ipam_plugin(&self) -> Option<&str> {
        self.ipam.as_ref().map(|i| i.plugin.as_str())
    }
}
