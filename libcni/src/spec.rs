//! CNI spec types for versions 0.1.0 – 1.1.0: the common network config, results, the
//! error object, and conversion of a result into and out of the shape each version prints
//! (0.1.0/0.2.0 have `ip4`/`ip6` objects, 0.3.0 on `interfaces`/`ips`/`routes`).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Versions this suite speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
pub const LATEST_VERSION: &str = "1.1.0";

/// Error codes from the spec; ours start at 100.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    /// CNI_NETNS names the plugin's own namespace (the CNI library's ErrInvalidNetNS).
    pub const INVALID_NETNS: u32 = 8;
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// A bug: a panic or an impossible state.
    pub const INTERNAL: u32 = 100;
    /// A netlink request to the kernel failed.
    pub const NETLINK: u32 = 101;
    /// Installing or removing nftables rules failed.
    pub const FIREWALL: u32 = 102;
    /// An IPAM range set has no free address left.
    pub const NO_ADDRESS: u32 = 103;
    /// CHECK found the kernel or the store differing from prevResult.
    pub const CHECK_FAILED: u32 = 104;
    /// A delegated plugin failed without printing a CNI error object.
    pub const DELEGATE: u32 = 105;
    /// A specifically requested address is held by another container.
    pub const ADDRESS_IN_USE: u32 = 106;
}

/// A parsed `major.minor.patch` version, ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u16, pub u16, pub u16);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.').map(|p| p.parse::<u16>().ok());
        let v = Version(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(v)
    }

    /// Parses `s` and accepts it only if it is one of [`SUPPORTED_VERSIONS`].
    pub fn supported(s: &str) -> Result<Version, Error> {
        Version::supported_of(s, SUPPORTED_VERSIONS)
    }

    /// Parses `s` and accepts it only if it is one of `versions`.
    pub fn supported_of(s: &str, versions: &[&str]) -> Result<Version, Error> {
        match Version::parse(s) {
            Some(v) if versions.contains(&s) => Ok(v),
            _ => Err(Error::new(
                code::INCOMPATIBLE_VERSION,
                format!("incompatible CNI version {s:?}"),
            )
            .details(format!("supported versions: {}", versions.join(", ")))),
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version(0, 4, 0)
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn has_status_and_gc(self) -> bool {
        self >= Version(1, 1, 0)
    }
}

/// The CNI error object. `Display` gives `msg: details`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct Error {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl Error {
    pub fn new(code: u32, msg: impl Into<String>) -> Error {
        Error {
            cni_version: String::new(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn details(mut self, details: impl Into<String>) -> Error {
        self.details = details.into();
        self
    }

    pub fn config(msg: impl Into<String>) -> Error {
        Error::new(code::INVALID_CONFIG, msg)
    }

    /// CHECK's verdict: fine when nothing differs, else code 104 listing what does.
    pub fn check(msg: &str, differences: Vec<String>) -> Result<(), Error> {
        if differences.is_empty() {
            Ok(())
        } else {
            Err(Error::new(code::CHECK_FAILED, msg).details(differences.join("; ")))
        }
    }
}

/// The fields every plugin config has. Plugin-specific fields are read from the raw JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default)]
    pub runtime_config: Option<Value>,
}

/// A result in its version-neutral form (the 1.1.0 shape); see [`CniResult::to_json`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

impl Interface {
    /// An interface of the host namespace.
    pub fn host(name: &str, mac: &[u8]) -> Interface {
        Interface {
            name: name.to_string(),
            mac: crate::mac::format_mac(mac),
            ..Default::default()
        }
    }

    /// The interface in the container whose namespace is `sandbox` (CNI_NETNS).
    pub fn container(name: &str, mac: &[u8], sandbox: &str) -> Interface {
        Interface {
            sandbox: sandbox.to_string(),
            ..Interface::host(name, mac)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" or "6"; printed only for results older than 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address with the prefix length of its subnet, e.g. 10.1.0.5/24.
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    /// A route to `dst` via `gw`, without the 1.1.0 extras.
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A 0.1.0/0.2.0 result's `ip4` or `ip6`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LegacyIp {
    ip: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
}

/// A 0.1.0/0.2.0 result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LegacyResult {
    #[serde(default)]
    cni_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip4: Option<LegacyIp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<LegacyIp>,
    /// Always printed, as the reference does.
    #[serde(default)]
    dns: Dns,
}

fn is_legacy(v: Version) -> bool {
    v < Version(0, 3, 0)
}

impl CniResult {
    /// Reads a result printed in any supported version (a delegate's output).
    pub fn from_value(v: Value) -> Result<CniResult, Error> {
        CniResult::from_value_in(v, "")
    }

    /// Reads a result printed in any supported version; one that names no version (a
    /// prevResult written by hand or by a test) is read in `default_version`.
    pub fn from_value_in(v: Value, default_version: &str) -> Result<CniResult, Error> {
        let version = match v.get("cniVersion").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => default_version.to_string(),
        };
        let parsed = Version::supported(&version)?;
        let decoding = |e: serde_json::Error| {
            Error::new(code::DECODE, "decoding result").details(e.to_string())
        };
        if is_legacy(parsed) {
            let old: LegacyResult = crate::decode::from_value(&v).map_err(decoding)?;
            let mut r = CniResult {
                dns: old.dns,
                ..Default::default()
            };
            for ip in [old.ip4, old.ip6].into_iter().flatten() {
                r.ips.push(IpConfig {
                    version: None,
                    address: ip.ip,
                    gateway: ip.gateway,
                    interface: None,
                });
                r.routes.extend(ip.routes);
            }
            return Ok(r);
        }
        let mut r: CniResult = crate::decode::from_value(&v).map_err(decoding)?;
        for ip in &mut r.ips {
            ip.version = None;
        }
        Ok(r)
    }

    /// The result as `version` prints it: 0.1.0/0.2.0 as `ip4`/`ip6` (which needs an
    /// address), 0.3.x/0.4.0 with an IP `version`, 1.0.0 without the 1.1.0 route and
    /// interface fields.
    pub fn to_json(&self, version: &str) -> Result<Value, Error> {
        let v = Version::parse(version).unwrap_or(Version(1, 1, 0));
        if is_legacy(v) {
            return self.to_legacy_json(version);
        }
        let mut r = self.clone();
        r.cni_version = version.to_string();
        for ip in &mut r.ips {
            ip.version = (v < Version(1, 0, 0))
                .then(|| if ip.address.is_ipv4() { "4" } else { "6" }.to_string());
        }
        if v < Version(1, 1, 0) {
            for i in &mut r.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for rt in &mut r.routes {
                (rt.mtu, rt.advmss, rt.priority, rt.table, rt.scope) =
                    (None, None, None, None, None);
            }
        }
        serde_json::to_value(r).map_err(|e| Error::new(code::INTERNAL, e.to_string()))
    }

    /// The first address of each family with its gateway and the routes of its family.
    fn to_legacy_json(&self, version: &str) -> Result<Value, Error> {
        let of = |v4: bool| {
            self.ips
                .iter()
                .find(|ip| ip.address.is_ipv4() == v4)
                .map(|ip| LegacyIp {
                    ip: ip.address,
                    gateway: ip.gateway,
                    routes: self
                        .routes
                        .iter()
                        .filter(|r| r.dst.is_ipv4() == v4)
                        .map(|r| Route::new(r.dst, r.gw))
                        .collect(),
                })
        };
        let old = LegacyResult {
            cni_version: version.to_string(),
            ip4: of(true),
            ip6: of(false),
            dns: self.dns.clone(),
        };
        // 0.1.0/0.2.0 results need an address; the reference's text for a layer 2 one.
        if old.ip4.is_none() && old.ip6.is_none() {
            return Err(Error::new(
                code::INCOMPATIBLE_VERSION,
                "cannot convert: no valid IP addresses",
            ));
        }
        serde_json::to_value(old).map_err(|e| Error::new(code::INTERNAL, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_parse_and_order() {
        assert!(Version::parse("0.4.0").unwrap().has_check());
        assert!(!Version::parse("0.3.1").unwrap().has_check());
        assert!(Version::parse("1.1.0").unwrap().has_status_and_gc());
        assert!(!Version::parse("1.0.0").unwrap().has_status_and_gc());
        assert_eq!(Version::parse("1.0"), None);
        assert_eq!(Version::parse("1.0.0.0"), None);
        assert_eq!(
            Version::supported("0.5.0").unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        assert!(Version::supported("0.1.0").is_ok() && Version::supported("0.2.0").is_ok());
    }

    fn sample() -> CniResult {
        CniResult::from_value(json!({
            "cniVersion": "0.3.1",
            "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"}],
            "ips": [
                {"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0},
                {"version": "6", "address": "fd00::5/64", "interface": 0}
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
            "dns": {"nameservers": ["10.1.0.1"]}
        }))
        .unwrap()
    }

    #[test]
    fn old_results_print_ip_version_new_ones_do_not() {
        let r = sample();
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let j = r.to_json(v).unwrap();
            assert_eq!(j["cniVersion"], v);
            assert_eq!(j["ips"][0]["version"], "4");
            assert_eq!(j["ips"][1]["version"], "6");
        }
        for v in ["1.0.0", "1.1.0"] {
            let j = r.to_json(v).unwrap();
            assert!(j["ips"][0].get("version").is_none());
            assert_eq!(j["ips"][0]["address"], "10.1.0.5/24");
            assert_eq!(j["routes"][0]["gw"], "10.1.0.1");
        }
    }

    #[test]
    fn newer_route_fields_only_in_1_1() {
        let mut r = sample();
        r.routes[0].mtu = Some(1400);
        assert_eq!(r.to_json("1.1.0").unwrap()["routes"][0]["mtu"], 1400);
        assert!(r.to_json("1.0.0").unwrap()["routes"][0]
            .get("mtu")
            .is_none());
    }

    #[test]
    fn result_round_trips_through_every_version() {
        let r = sample();
        for v in &SUPPORTED_VERSIONS[2..] {
            let back = CniResult::from_value(r.to_json(v).unwrap()).unwrap();
            assert_eq!(back.ips, r.ips);
            assert_eq!(back.interfaces, r.interfaces);
        }
    }

    #[test]
    fn legacy_results_have_ip4_and_ip6() {
        let r = sample();
        for v in ["0.1.0", "0.2.0"] {
            let j = r.to_json(v).unwrap();
            assert_eq!(
                j,
                json!({"cniVersion": v,
                    "ip4": {"ip": "10.1.0.5/24", "gateway": "10.1.0.1",
                            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]},
                    "ip6": {"ip": "fd00::5/64"},
                    "dns": {"nameservers": ["10.1.0.1"]}})
            );
            let back = CniResult::from_value(j).unwrap();
            assert_eq!(
                back.ips.iter().map(|i| i.address).collect::<Vec<_>>(),
                r.ips.iter().map(|i| i.address).collect::<Vec<_>>()
            );
            assert_eq!(back.routes, r.routes);
        }
        let empty = CniResult::default().to_json("0.2.0").unwrap_err();
        assert_eq!(empty.code, code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn result_without_version_is_read_in_the_given_one() {
        let v = json!({"ips": [{"address": "10.1.0.5/24"}]});
        assert_eq!(CniResult::from_value(v.clone()).unwrap_err().code, 1);
        assert_eq!(CniResult::from_value_in(v, "1.0.0").unwrap().ips.len(), 1);
        let old = json!({"ip4": {"ip": "10.1.0.5/24"}, "routes": null});
        assert_eq!(CniResult::from_value_in(old, "0.2.0").unwrap().ips.len(), 1);
        let e = CniResult::from_value(json!({"cniVersion": "0.9.0"})).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn error_displays_details() {
        let e = Error::new(7, "bad subnet").details("10.0.0.0/33");
        assert_eq!(e.to_string(), "bad subnet: 10.0.0.0/33");
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(
            j,
            json!({"code": 7, "msg": "bad subnet", "details": "10.0.0.0/33"})
        );
    }
}
