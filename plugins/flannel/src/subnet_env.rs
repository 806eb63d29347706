//! flannel's subnet file (`subnetFile`, default /run/flannel/subnet.env) read as flannel's
//! plugin reads it: `KEY=value` lines, the last of a key winning; FLANNEL_NETWORK and
//! FLANNEL_IPV6_NETWORK comma-separated networks (duplicates dropped), FLANNEL_SUBNET and
//! FLANNEL_IPV6_SUBNET the node's subnets (host bits cleared), FLANNEL_MTU, FLANNEL_IPMASQ
//! (`true` or anything else for false). One network and one subnet of either family, the
//! MTU and IPMASQ must be there; other keys are ignored. No check beyond flannel's: what
//! is in the file reaches host-local, which checks its ranges.

use std::path::Path;

use libcni::{code, files, Error};

use crate::cidr::Cidr;

/// The most the file may hold; flanneld's is a few hundred bytes.
pub const MAX_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone, PartialEq)]
pub struct SubnetEnv {
    pub networks: Vec<Cidr>,
    pub subnet: Option<Cidr>,
    pub ipv6_networks: Vec<Cidr>,
    pub ipv6_subnet: Option<Cidr>,
    pub mtu: u32,
    pub ip_masq: bool,
}

/// flannel's wording around every failure to load the file.
fn failed(msg: String) -> String {
    format!(
        "failed to load flannel 'subnet.env' file: {msg}. Check the flannel pod log for this node."
    )
}

impl SubnetEnv {
    /// The file at `path`; a missing one is code 11 (try again: flanneld writes it once it
    /// has a lease), an unreadable one code 5, a wrong one code 7.
    pub fn read(path: &Path) -> Result<SubnetEnv, Error> {
        let bytes = files::read_bounded(path, MAX_BYTES)
            .map_err(|e| Error::new(e.code, failed(e.msg)).details(e.details))?
            .ok_or_else(|| {
                Error::new(
                    code::TRY_AGAIN,
                    failed(format!(
                        "open {}: no such file or directory",
                        path.display()
                    )),
                )
            })?;
        SubnetEnv::parse(
            &String::from_utf8_lossy(&bytes),
            &path.display().to_string(),
        )
        .map_err(|e| Error::config(failed(e)))
    }

    /// The file's text; `name` names it in errors.
    pub fn parse(text: &str, name: &str) -> Result<SubnetEnv, String> {
        let mut networks = Vec::new();
        let mut subnet = None;
        let mut ipv6_networks = Vec::new();
        let mut ipv6_subnet = None;
        let mut mtu = None;
        let mut ip_masq = None;
        // Lines as bufio.ScanLines cuts them: at \n, one trailing \r dropped.
        let body = text.strip_suffix('\n').unwrap_or(text);
        for line in body.split('\n').filter(|_| !text.is_empty()) {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let (key, value) = match line.split_once('=') {
                Some(kv) => kv,
                None => (line, ""),
            };
            let known = matches!(
                key,
                "FLANNEL_NETWORK"
                    | "FLANNEL_SUBNET"
                    | "FLANNEL_IPV6_NETWORK"
                    | "FLANNEL_IPV6_SUBNET"
                    | "FLANNEL_MTU"
                    | "FLANNEL_IPMASQ"
            );
            if known && !line.contains('=') {
                return Err(format!("{name}: {key} has no '='"));
            }
            match key {
                "FLANNEL_NETWORK" => networks = network_list(value)?,
                "FLANNEL_IPV6_NETWORK" => ipv6_networks = network_list(value)?,
                "FLANNEL_SUBNET" => subnet = Some(Cidr::parse(value)?.network()),
                "FLANNEL_IPV6_SUBNET" => ipv6_subnet = Some(Cidr::parse(value)?.network()),
                "FLANNEL_MTU" => mtu = Some(parse_mtu(value)?),
                "FLANNEL_IPMASQ" => ip_masq = Some(value == "true"),
                _ => {}
            }
        }
        let mut missing: Vec<&str> = Vec::new();
        if networks.is_empty() && ipv6_networks.is_empty() {
            missing.extend(["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]);
        }
        if subnet.is_none() && ipv6_subnet.is_none() {
            missing.extend(["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]);
        }
        if mtu.is_none() {
            missing.push("FLANNEL_MTU");
        }
        if ip_masq.is_none() {
            missing.push("FLANNEL_IPMASQ");
        }
        match (mtu, ip_masq) {
            (Some(mtu), Some(ip_masq)) if missing.is_empty() => Ok(SubnetEnv {
                networks,
                subnet,
                ipv6_networks,
                ipv6_subnet,
                mtu,
                ip_masq,
            }),
            _ => Err(format!("{name} is missing {}", missing.join(", "))),
        }
    }
}

/// Comma-separated networks, host bits cleared, each once.
fn network_list(value: &str) -> Result<Vec<Cidr>, String> {
    let mut list: Vec<Cidr> = Vec::new();
    for s in value.split(',') {
        let n = Cidr::parse(s)?.network();
        if !list.contains(&n) {
            list.push(n);
        }
    }
    Ok(list)
}

/// As strconv.ParseUint(s, 10, 32).
fn parse_mtu(value: &str) -> Result<u32, String> {
    let syntax = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse::<u32>() {
        Ok(mtu) if syntax => Ok(mtu),
        _ if syntax => Err(format!(
            "strconv.ParseUint: parsing {value:?}: value out of range"
        )),
        _ => Err(format!(
            "strconv.ParseUint: parsing {value:?}: invalid syntax"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SubnetEnv, String> {
        SubnetEnv::parse(text, "subnet.env")
    }

    #[test]
    fn reads_what_flanneld_writes() {
        let s = parse("FLANNEL_NETWORK=10.238.0.0/16\nFLANNEL_SUBNET=10.238.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
        assert_eq!(s.networks[0].to_string(), "10.238.0.0/16");
        assert_eq!(s.subnet.unwrap().to_string(), "10.238.1.0/24");
        assert_eq!((s.mtu, s.ip_masq, s.ipv6_subnet), (1450, true, None));

        let s = parse("FLANNEL_IPV6_NETWORK=fc00:238::/48\r\nFLANNEL_IPV6_SUBNET=fc00:238:0:1::1/64\r\nFLANNEL_MTU=1430\r\nFLANNEL_IPMASQ=false\r\n").unwrap();
        assert_eq!(s.ipv6_subnet.unwrap().to_string(), "fc00:238:0:1::/64");
        assert!(s.networks.is_empty() && s.subnet.is_none() && !s.ip_masq);

        let s = parse("FLANNEL_NETWORK=10.238.0.0/16,10.239.0.0/16,10.238.0.0/16\nFLANNEL_NETWORK=10.238.0.0/16,10.239.0.0/16,10.238.0.5/16\nFLANNEL_SUBNET=10.238.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=yes\nOTHER\n").unwrap();
        assert_eq!(s.networks.len(), 2);
        assert!(!s.ip_masq);
    }

    #[test]
    fn flannels_errors() {
        assert_eq!(
            parse("FLANNEL_MTU=1450\n").unwrap_err(),
            "subnet.env is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ"
        );
        let base =
            "FLANNEL_NETWORK=10.238.0.0/16\nFLANNEL_SUBNET=10.238.1.1/24\nFLANNEL_IPMASQ=true\n";
        assert_eq!(
            parse(&format!("{base}FLANNEL_MTU=+1450\n")).unwrap_err(),
            "strconv.ParseUint: parsing \"+1450\": invalid syntax"
        );
        assert!(parse(&format!("{base}FLANNEL_MTU=4294967296\n"))
            .unwrap_err()
            .contains("out of range"));
        assert!(parse(&format!("{base}FLANNEL_MTU=1450 \n")).is_err());
        assert!(parse(&format!("{base}FLANNEL_MTU\n")).is_err());
        assert_eq!(
            parse(&format!("FLANNEL_SUBNET=x\n{base}")).unwrap_err(),
            "invalid CIDR address: x"
        );
        assert!(parse("FLANNEL_NETWORK=\n").is_err());
    }
}
