//! The host-local config, field for field as the reference plugin reads it, with the
//! addresses a runtime asked for (libcni::ipam), all of them added up.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use libcni::ipam::{self, Requests};
use libcni::skel::CmdArgs;
use libcni::spec::{Route, Version};
use libcni::Error;
use serde::Deserialize;

use crate::range::{build_sets, RangeConf, RangeSet};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// More range sets than this is not a network config.
const MAX_RANGES: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    name: String,
    #[serde(default)]
    ipam: IpamConf,
    #[serde(default)]
    runtime_config: RuntimeConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    /// The `ipRanges` capability: range sets that come before the config's.
    #[serde(default)]
    ip_ranges: Vec<Vec<RangeConf>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IpamConf {
    #[serde(default)]
    ranges: Vec<Vec<RangeConf>>,
    #[serde(default)]
    subnet: Option<IpNetwork>,
    #[serde(default)]
    range_start: Option<IpAddr>,
    #[serde(default)]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    resolv_conf: Option<PathBuf>,
}

/// Everything host-local needs, checked.
#[derive(Debug)]
pub struct Config {
    pub sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    /// `<dataDir>/<network name>`
    pub dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
    pub requested: Vec<IpAddr>,
}

impl Config {
    pub fn load(args: &CmdArgs) -> Result<Config, Error> {
        let n: NetConf = args.parse_conf()?;
        let mut confs = n.runtime_config.ip_ranges;
        if let Some(subnet) = n.ipam.subnet {
            confs.push(vec![RangeConf {
                subnet,
                range_start: n.ipam.range_start,
                range_end: n.ipam.range_end,
                gateway: n.ipam.gateway,
            }]);
        }
        confs.extend(n.ipam.ranges);
        if confs.iter().map(Vec::len).sum::<usize>() > MAX_RANGES {
            return Err(Error::config(format!("more than {MAX_RANGES} ranges")));
        }
        let sets = build_sets(&confs)?;
        if args.version < Version(0, 3, 0) {
            let v4 = sets.iter().filter(|s| s.0[0].subnet.is_ipv4()).count();
            if v4 > 1 || sets.len() - v4 > 1 {
                return Err(Error::config(format!(
                    "CNI version {} does not support more than 1 address per family",
                    args.conf.cni_version
                )));
            }
        }
        let r = Requests::of(args, false)?;
        let requested = [r.runtime_config, r.args, r.cni_args]
            .concat()
            .iter()
            .map(|s| ipam::parse_address(s))
            .collect::<Result<Vec<_>, _>>()?;
        let dir = n
            .ipam
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
            .join(libcni::names::network_name(&n.name)?);
        Ok(Config {
            sets,
            routes: n.ipam.routes,
            dir,
            resolv_conf: n.ipam.resolv_conf,
            requested,
        })
    }
}
