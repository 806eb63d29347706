//! The host-local config, field for field as the reference plugin reads it, and the
//! addresses a runtime asked for (runtimeConfig `ips`, `args.cni.ips`, CNI_ARGS `IP=`).

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use libcni::skel::CmdArgs;
use libcni::spec::Dns;
use libcni::Error;
use serde::Deserialize;

use crate::range::{build_sets, RangeConf, RangeSet};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    name: String,
    ipam: IpamConf,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    #[serde(default)]
    args: Option<ArgsConf>,
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default)]
    ips: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ArgsConf {
    #[serde(default)]
    cni: Option<RuntimeConfig>,
}

#[derive(Debug, Deserialize)]
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
    routes: Vec<RouteConf>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    resolv_conf: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RouteConf {
    pub dst: IpNetwork,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

/// Everything host-local needs, checked.
#[derive(Debug)]
pub struct Config {
    pub sets: Vec<RangeSet>,
    pub routes: Vec<RouteConf>,
    /// `<dataDir>/<network name>`
    pub dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
    pub requested: Vec<IpAddr>,
}

impl Config {
    pub fn load(args: &CmdArgs) -> Result<Config, Error> {
        let n: NetConf = args.parse_conf()?;
        if n.name.is_empty() || n.name.contains('/') || n.name.starts_with('.') {
            return Err(Error::config(format!("invalid network name {:?}", n.name)));
        }
        let mut confs = n.ipam.ranges;
        if let Some(subnet) = n.ipam.subnet {
            confs.insert(
                0,
                vec![RangeConf {
                    subnet,
                    range_start: n.ipam.range_start,
                    range_end: n.ipam.range_end,
                    gateway: n.ipam.gateway,
                }],
            );
        }
        let sets = build_sets(&confs)?;
        let mut raw: Vec<String> = n.runtime_config.ips;
        raw.extend(
            n.args
                .and_then(|a| a.cni)
                .map(|c| c.ips)
                .unwrap_or_default(),
        );
        if let Some(ips) = args.cni_arg("IP") {
            raw.extend(ips.split(',').map(str::to_string));
        }
        let requested = raw
            .iter()
            .map(|s| parse_requested(s))
            .collect::<Result<Vec<_>, _>>()?;
        let dir = n
            .ipam
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
            .join(&n.name);
        Ok(Config {
            sets,
            routes: n.ipam.routes,
            dir,
            resolv_conf: n.ipam.resolv_conf,
            requested,
        })
    }
}

/// "10.0.0.5" or "10.0.0.5/24"; the prefix is the range's anyway.
fn parse_requested(s: &str) -> Result<IpAddr, Error> {
    let addr = s.trim().split('/').next().unwrap_or_default();
    addr.parse()
        .map_err(|_| Error::config(format!("invalid requested IP address {s:?}")))
}

/// A resolv.conf-style file as the result's `dns`.
pub fn read_resolv_conf(path: &PathBuf) -> Result<Dns, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!("reading resolvConf {}", path.display())).details(e.to_string())
    })?;
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let rest = || words.clone().skip(1).map(str::to_string);
        match words.clone().next() {
            Some("nameserver") => dns.nameservers.extend(rest()),
            Some("domain") => dns.domain = rest().next().unwrap_or_default(),
            Some("search") => dns.search.extend(rest()),
            Some("options") => dns.options.extend(rest()),
            _ => {}
        }
        words.next();
    }
    Ok(dns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        std::fs::write(&p, "# c\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain ex.com\nsearch a.ex b.ex\noptions ndots:2\n").unwrap();
        let d = read_resolv_conf(&p).unwrap();
        assert_eq!(d.nameservers, ["10.0.0.53", "fd00::53"]);
        assert_eq!(d.domain, "ex.com");
        assert_eq!(d.search, ["a.ex", "b.ex"]);
        assert_eq!(d.options, ["ndots:2"]);
    }

    #[test]
    fn requested_ips_accept_prefix() {
        assert_eq!(
            parse_requested("10.0.0.5/24").unwrap().to_string(),
            "10.0.0.5"
        );
        assert_eq!(parse_requested("nope").unwrap_err().code, 7);
    }
}
