//! The `dhcp` IPAM config (`ipam.daemonSocketPath`, `provide`, `request`, `priority`) and
//! the DHCP options it makes, read as the reference reads them.

use serde::Deserialize;

use crate::client::Options;
use crate::packet;

pub const DEFAULT_SOCKET: &str = "/run/cni/dhcp.sock";

#[derive(Debug, Default, Deserialize)]
pub struct NetConf {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ipam: Option<IpamConf>,
}

#[derive(Debug, Default, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "daemonSocketPath", default)]
    pub daemon_socket_path: String,
    #[serde(default)]
    pub provide: Vec<Provide>,
    #[serde(default)]
    pub request: Vec<Request>,
    /// The metric of the routes.
    #[serde(default)]
    pub priority: i64,
}

#[derive(Debug, Default, Deserialize)]
pub struct Provide {
    #[serde(default)]
    pub option: String,
    #[serde(default)]
    pub value: String,
    #[serde(rename = "fromArg", default)]
    pub from_arg: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Request {
    #[serde(rename = "skipDefault", default)]
    pub skip_default: bool,
    #[serde(default)]
    pub option: String,
}

/// Reads the config as Go does (any letter case, null as absent).
pub fn parse(stdin: &[u8]) -> Result<NetConf, String> {
    let v: serde_json::Value =
        serde_json::from_slice(stdin).map_err(|e| format!("error parsing netconf: {e}"))?;
    libcni::decode::from_value(&v).map_err(|e| format!("error parsing netconf: {e}"))
}

impl NetConf {
    pub fn socket_path(&self) -> &str {
        match &self.ipam {
            Some(i) if !i.daemon_socket_path.is_empty() => &i.daemon_socket_path,
            _ => DEFAULT_SOCKET,
        }
    }
}

/// The reference's client ID: `<containerID>/<network>/<ifname>`, at most 254 bytes.
pub fn client_id(container_id: &str, network: &str, ifname: &str) -> String {
    let mut id = format!("{container_id}/{network}/{ifname}");
    let mut cut = id.len().min(254);
    while !id.is_char_boundary(cut) {
        cut -= 1;
    }
    id.truncate(cut);
    id
}

/// Option names the reference knows (dhcp-options(5)); anything else is a code 0-255.
fn option_code(name: &str) -> Result<u8, String> {
    Ok(match name {
        "dhcp-client-identifier" => packet::OPT_CLIENT_ID,
        "subnet-mask" => packet::OPT_SUBNET_MASK,
        "routers" => packet::OPT_ROUTER,
        "host-name" => 12,
        "user-class" => 77,
        "vendor-class-identifier" => 60,
        n => n
            .parse::<u8>()
            .map_err(|e| format!("Can not parse option {n:?}: Can not parse option: {e}"))?,
    })
}

/// The options of every message of a lease: the client ID, then the provided values
/// (which may replace it), then the parameter request list.
pub fn options(client_id: &str, cni_args: &str, ipam: &IpamConf) -> Result<Options, String> {
    let mut opts: Options = Vec::new();
    let mut set = |code: u8, v: Vec<u8>| match opts.iter_mut().find(|(c, _)| *c == code) {
        Some(o) => o.1 = v,
        None => opts.push((code, v)),
    };
    let mut id = vec![0u8];
    id.extend_from_slice(client_id.as_bytes());
    set(packet::OPT_CLIENT_ID, id);
    let args: Vec<(&str, &str)> = cni_args
        .split(';')
        .filter_map(|p| p.split_once('='))
        .collect();
    for p in &ipam.provide {
        let code = option_code(&p.option)?;
        if !p.value.is_empty() {
            if p.value.len() > 255 {
                return Err(format!(
                    "value too long for option {:?}: {:?}",
                    p.option, p.value
                ));
            }
            set(code, p.value.as_bytes().to_vec());
        }
        if let Some((_, v)) = args.iter().rev().find(|(k, _)| *k == p.from_arg) {
            if v.len() > 255 {
                return Err(format!(
                    "value too long for option {:?} from CNI_ARGS {:?}",
                    p.option, p.from_arg
                ));
            }
            set(code, v.as_bytes().to_vec());
        }
    }
    let mut params: Vec<u8> = Vec::new();
    let mut skip_default = false;
    for r in &ipam.request {
        skip_default |= r.skip_default;
        if r.option.is_empty() {
            continue;
        }
        let code = option_code(&r.option)?;
        if !params.contains(&code) {
            params.push(code);
        }
    }
    if !skip_default {
        for code in [packet::OPT_ROUTER, packet::OPT_SUBNET_MASK] {
            if !params.contains(&code) {
                params.push(code);
            }
        }
    }
    if !params.is_empty() {
        set(packet::OPT_PARAMS, params);
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provided_values_and_requests_become_options() {
        let ipam: IpamConf = serde_json::from_str(
            r#"{"provide":[{"option":"host-name","fromArg":"K8S_POD_NAME"},{"option":"60","value":"cni"}],
                "request":[{"option":"121"}]}"#,
        )
        .unwrap();
        let o = options("c/n/eth0", "IgnoreUnknown=1;K8S_POD_NAME=web-1", &ipam).unwrap();
        assert_eq!(o[0], (61, b"\0c/n/eth0".to_vec()));
        assert!(o.contains(&(12, b"web-1".to_vec())));
        assert!(o.contains(&(60, b"cni".to_vec())));
        assert!(o.contains(&(55, vec![121, 3, 1])));
        let skip: IpamConf = serde_json::from_str(r#"{"request":[{"skipDefault":true}]}"#).unwrap();
        assert!(!options("x", "", &skip)
            .unwrap()
            .iter()
            .any(|(c, _)| *c == 55));
        let bad: IpamConf = serde_json::from_str(r#"{"request":[{"option":"nope"}]}"#).unwrap();
        assert!(options("x", "", &bad).is_err());
    }

    #[test]
    fn client_ids_fit_an_option() {
        assert_eq!(client_id("a", "n", "eth0"), "a/n/eth0");
        assert_eq!(client_id(&"é".repeat(200), "n", "eth0").len(), 254);
    }
}
