//! flannel's own network config: `subnetFile` (default /run/flannel/subnet.env),
//! `dataDir` (default /var/lib/cni/flannel), `delegate` (the delegate's config without
//! name and ipam), `ipam` (what the delegate's IPAM starts from), `runtimeConfig` (passed
//! to the delegate). Read with Go's rules, as flannel's json.Unmarshal reads it.

use std::path::PathBuf;

use libcni::skel::CmdArgs;
use libcni::Error;
use serde::Deserialize;
use serde_json::{Map, Value};

pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub ipam: Option<Map<String, Value>>,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    pub delegate: Option<Map<String, Value>>,
    pub runtime_config: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    ipam: Option<Map<String, Value>>,
    #[serde(default, rename = "subnetFile")]
    subnet_file: Option<String>,
    #[serde(default, rename = "dataDir")]
    data_dir: Option<String>,
    #[serde(default)]
    delegate: Option<Map<String, Value>>,
    #[serde(default, rename = "runtimeConfig")]
    runtime_config: Option<Map<String, Value>>,
}

impl NetConf {
    pub fn load(args: &CmdArgs) -> Result<NetConf, Error> {
        let raw: Raw = args.parse_conf().map_err(|e| {
            Error::config("failed to load flannel netconf file: failed to load netconf")
                .details(e.details)
        })?;
        Ok(NetConf {
            cni_version: args.conf.cni_version.clone(),
            name: args.conf.name.clone(),
            ipam: raw.ipam,
            subnet_file: PathBuf::from(raw.subnet_file.as_deref().unwrap_or(DEFAULT_SUBNET_FILE)),
            data_dir: PathBuf::from(raw.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR)),
            delegate: raw.delegate,
            runtime_config: raw.runtime_config,
        })
    }
}
