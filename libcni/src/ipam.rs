//! What IPAM plugins share: the addresses a runtime asks for (the `ips` capability in
//! runtimeConfig, `args.cni.ips`, CNI_ARGS `IP=` and `GATEWAY=`), read as the reference
//! reads them, and a resolv.conf read into a result's `dns`. Each IPAM plugin combines the
//! requests its own way (host-local adds them up, static lets the later replace).

use std::io::Read;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use crate::skel::CmdArgs;
use crate::spec::{Dns, Error};

/// A resolv.conf larger than this is not one.
const MAX_RESOLV_CONF: u64 = 64 * 1024;

/// The requests of one invocation, by where they came from.
#[derive(Debug, Default, PartialEq)]
pub struct Requests {
    /// CNI_ARGS `IP=` (comma-separated).
    pub cni_args: Vec<String>,
    /// CNI_ARGS `GATEWAY=` (comma-separated).
    pub gateways: Vec<String>,
    /// `args.cni.ips`.
    pub args: Vec<String>,
    /// `runtimeConfig.ips` (the `ips` capability).
    pub runtime_config: Vec<String>,
}

#[derive(Default, Deserialize)]
struct Ips {
    #[serde(default)]
    ips: Vec<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sources {
    #[serde(default)]
    runtime_config: Ips,
    #[serde(default)]
    args: Option<ArgsCni>,
}

#[derive(Default, Deserialize)]
struct ArgsCni {
    #[serde(default)]
    cni: Ips,
}

/// A comma-separated CNI_ARGS value, as the reference splits it: an empty value is no
/// entry, an empty entry is one (which then fails to parse, as there).
fn list(s: &str) -> Vec<String> {
    if s.is_empty() {
        return Vec::new();
    }
    s.split(',').map(|x| x.trim().to_string()).collect()
}

impl Requests {
    /// Reads the requests; CNI_ARGS by the reference's rules (keys `IP` and, where
    /// `gateways` is allowed, `GATEWAY`).
    pub fn of(args: &CmdArgs, with_gateways: bool) -> Result<Requests, Error> {
        let known: &[&str] = if with_gateways {
            &["IP", "GATEWAY"]
        } else {
            &["IP"]
        };
        let mut r = Requests::default();
        for (k, v) in args.cni_args(known)? {
            if k == "IP" {
                r.cni_args.extend(list(&v));
            } else {
                r.gateways.extend(list(&v));
            }
        }
        let s: Sources = args.parse_conf()?;
        r.runtime_config = s.runtime_config.ips;
        r.args = s.args.map(|a| a.cni.ips).unwrap_or_default();
        Ok(r)
    }
}

/// An address as host-local takes it: "10.0.0.5" or "10.0.0.5/24" (the prefix is the
/// range's anyway).
pub fn parse_address(s: &str) -> Result<IpAddr, Error> {
    let addr = s.trim().split('/').next().unwrap_or_default();
    addr.parse()
        .map_err(|_| Error::config(format!("invalid requested IP address {s:?}")))
}

/// A resolv.conf-style file as the result's `dns`, read as the reference reads it: `#`
/// and `;` comments, one nameserver per line, search and options lines add up.
pub fn read_resolv_conf(path: &Path) -> Result<Dns, Error> {
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
        std::fs::write(&p, "# c\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain ex.com\nsearch a.ex b.ex\nsearch c.ex\n; x\noptions ndots:2\n").unwrap();
        let d = read_resolv_conf(&p).unwrap();
        assert_eq!(d.nameservers, ["10.0.0.53", "fd00::53"]);
        assert_eq!(d.domain, "ex.com");
        assert_eq!(d.search, ["a.ex", "b.ex", "c.ex"]);
        assert_eq!(d.options, ["ndots:2"]);
    }

    #[test]
    fn addresses_as_each_plugin_takes_them() {
        assert_eq!(
            parse_address("10.0.0.5/24").unwrap().to_string(),
            "10.0.0.5"
        );
        assert_eq!(parse_address("nope").unwrap_err().code, 7);
    }
}
