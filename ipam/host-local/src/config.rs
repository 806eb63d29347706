//! The host-local config, field for field as the reference plugin reads it, and the
//! addresses a runtime asked for (runtimeConfig `ips`, `args.cni.ips`, CNI_ARGS `IP=`).

use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use libcni::skel::CmdArgs;
use libcni::spec::{Dns, Version};
use libcni::Error;
use serde::Deserialize;

use crate::range::{build_sets, RangeConf, RangeSet};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// More range sets than this is not a network config.
const MAX_RANGES: usize = 1024;
/// A resolv.conf larger than this is not one.
const MAX_RESOLV_CONF: u64 = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    name: String,
    #[serde(default)]
    ipam: IpamConf,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    #[serde(default)]
    args: Option<ArgsConf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    #[serde(default)]
    ips: Vec<String>,
    /// The `ipRanges` capability: range sets that come before the config's.
    #[serde(default)]
    ip_ranges: Vec<Vec<RangeConf>>,
}

#[derive(Debug, Deserialize)]
struct ArgsConf {
    #[serde(default)]
    cni: Option<RuntimeConfig>,
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
        let mut runtime = n.runtime_config;
        let mut confs = std::mem::take(&mut runtime.ip_ranges);
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
        let mut raw: Vec<String> = runtime.ips;
        raw.extend(
            n.args
                .and_then(|a| a.cni)
                .map(|c| c.ips)
                .unwrap_or_default(),
        );
        for (_, ip) in args.cni_args(&["IP"])? {
            if !ip.is_empty() {
                raw.push(ip);
            }
        }
        let requested = raw
            .iter()
            .map(|s| parse_requested(s))
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

/// "10.0.0.5" or "10.0.0.5/24"; the prefix is the range's anyway.
fn parse_requested(s: &str) -> Result<IpAddr, Error> {
    let addr = s.trim().split('/').next().unwrap_or_default();
    addr.parse()
        .map_err(|_| Error::config(format!("invalid requested IP address {s:?}")))
}

/// A resolv.conf-style file as the result's `dns`.
pub fn read_resolv_conf(path: &PathBuf) -> Result<Dns, Error> {
    let fail =
        |e: String| Error::config(format!("reading resolvConf {}", path.display())).details(e);
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_RESOLV_CONF + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    if text.len() as u64 > MAX_RESOLV_CONF {
        return Err(fail(format!("larger than {MAX_RESOLV_CONF} bytes")));
    }
    // As the reference reads it: `#` and `;` comments, one nameserver per line, search
    // and options lines add up.
    let mut dns = Dns::default();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let rest = || words[1..].iter().map(|w| w.to_string());
        match words[..] {
            ["nameserver", ns, ..] => dns.nameservers.push(ns.to_string()),
            ["domain", d, ..] => dns.domain = d.to_string(),
            ["search", _, ..] => dns.search.extend(rest()),
            ["options", _, ..] => dns.options.extend(rest()),
            _ => {}
        }
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
