//! The delegate's config, built as flannel's plugin builds it (cmdAdd, doCmdAdd,
//! getDelegateIPAM) and written as Go marshals it: the `delegate` map as given, plus
//! `runtimeConfig` when the config has one, `name` the network's, `type` bridge unless
//! given, `ipMasq` = !FLANNEL_IPMASQ and `mtu` = FLANNEL_MTU unless given, `isGateway`
//! true for bridge unless given, `cniVersion` the config's when it has one, and `ipam`:
//! the config's `ipam` (type host-local unless given) with `ranges` one per subnet in the
//! file (IPv4, then IPv6) and `routes` the config's followed by one per network.

use libcni::{decode, Error};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::cidr::{go_ip, Cidr};
use crate::conf::NetConf;
use crate::gojson::{as_go_floats, marshal, Go};
use crate::subnet_env::SubnetEnv;

/// What to run and the exact bytes it reads (also what the scratch file keeps).
#[derive(Debug, Clone, PartialEq)]
pub struct DelegateConf {
    pub plugin: String,
    pub config: Vec<u8>,
}

pub fn build(conf: &NetConf, env: &SubnetEnv) -> Result<DelegateConf, Error> {
    let mut d = match &conf.delegate {
        None => Map::new(),
        Some(given) => {
            if given.get("type").is_some_and(|t| !t.is_string()) {
                return Err(Error::config(
                    "'delegate' dictionary, if present, must have (string) 'type' field",
                ));
            }
            if given.contains_key("name") {
                return Err(Error::config(
                    "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
                ));
            }
            if given.contains_key("ipam") {
                return Err(Error::config(
                    "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel",
                ));
            }
            go_map(given)
        }
    };
    if let Some(rc) = &conf.runtime_config {
        d.insert("runtimeConfig".into(), Value::Object(go_map(rc)));
    }
    d.insert("name".into(), json!(conf.name));
    d.entry("type").or_insert_with(|| json!("bridge"));
    d.entry("ipMasq").or_insert_with(|| json!(!env.ip_masq));
    d.entry("mtu").or_insert_with(|| json!(env.mtu));
    let plugin = d["type"].as_str().unwrap_or("bridge").to_string();
    if plugin == "bridge" {
        d.entry("isGateway").or_insert_with(|| json!(true));
    }
    if !conf.cni_version.is_empty() {
        d.insert("cniVersion".into(), json!(conf.cni_version));
    }

    // Routes are read as cni's types.Route (ints stay ints), the rest as Go maps.
    let mut routes = match conf.ipam.as_ref().and_then(|m| m.get("routes")) {
        Some(given) => given_routes(given)?,
        None => Vec::new(),
    };
    let mut ipam = conf.ipam.as_ref().map(go_map).unwrap_or_default();
    ipam.remove("routes");
    ipam.entry("type").or_insert_with(|| json!("host-local"));
    let ranges: Vec<Value> = [env.subnet, env.ipv6_subnet]
        .into_iter()
        .flatten()
        .map(|s| json!([{"subnet": s.to_string()}]))
        .collect();
    ipam.insert("ranges".into(), Value::Array(ranges));
    for n in env.networks.iter().chain(&env.ipv6_networks) {
        routes.push(vec![("dst", json!(n.to_string()))]);
    }

    let mut ipam_go: Vec<(&str, Go)> = ipam
        .iter()
        .map(|(k, v)| (k.as_str(), Go::Json(v)))
        .collect();
    ipam_go.push((
        "routes",
        Go::List(routes.into_iter().map(Go::Struct).collect()),
    ));
    let mut top: Vec<(&str, Go)> = d.iter().map(|(k, v)| (k.as_str(), Go::Json(v))).collect();
    top.push(("ipam", Go::Map(ipam_go)));
    Ok(DelegateConf {
        plugin,
        config: marshal(&Go::Map(top)),
    })
}

/// A map of the config as Go holds it after reading it into map[string]interface{}.
fn go_map(m: &Map<String, Value>) -> Map<String, Value> {
    match as_go_floats(Value::Object(m.clone())) {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// cni's types.Route as Go reads it (keys matched ignoring case, ints Go ints).
#[derive(Deserialize)]
struct GivenRoute {
    #[serde(default)]
    dst: Option<String>,
    #[serde(default)]
    gw: Option<String>,
    #[serde(default)]
    mtu: i64,
    #[serde(default)]
    advmss: i64,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    table: Option<i64>,
    #[serde(default)]
    scope: Option<i64>,
}

/// The config's `ipam.routes`, each written back as types.Route marshals itself: fields
/// in declaration order, empty ones left out, the destination with its host bits.
fn given_routes(given: &Value) -> Result<Vec<Vec<(&'static str, Value)>>, Error> {
    let invalid = |why: String| {
        Error::config("failed to assemble Delegate IPAM: failed to read IPAM routes")
            .details(format!("failed to parse ipam.routes: {why}"))
    };
    let routes: Vec<GivenRoute> = decode::from_value(given).map_err(|e| invalid(e.to_string()))?;
    routes
        .into_iter()
        .map(|r| {
            let dst = r.dst.ok_or_else(|| invalid("a route without dst".into()))?;
            let dst = Cidr::parse(&dst).map_err(invalid)?;
            let mut fields = vec![("dst", json!(dst.to_string()))];
            if let Some(gw) = r.gw.filter(|g| !g.is_empty()) {
                let ip = gw
                    .parse()
                    .map_err(|_| invalid(format!("invalid IP address: {gw}")))?;
                fields.push(("gw", json!(go_ip(ip))));
            }
            for (k, v) in [
                ("mtu", r.mtu),
                ("advmss", r.advmss),
                ("priority", r.priority),
            ] {
                if v != 0 {
                    fields.push((k, json!(v)));
                }
            }
            for (k, v) in [("table", r.table), ("scope", r.scope)] {
                if let Some(v) = v {
                    fields.push((k, json!(v)));
                }
            }
            Ok(fields)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn conf(delegate: Value, ipam: Value) -> NetConf {
        NetConf {
            cni_version: "0.3.1".into(),
            name: "cbr0".into(),
            ipam: ipam.as_object().cloned(),
            subnet_file: PathBuf::from("/x"),
            data_dir: PathBuf::from("/y"),
            delegate: delegate.as_object().cloned(),
            runtime_config: None,
        }
    }

    fn env(text: &str) -> SubnetEnv {
        SubnetEnv::parse(text, "subnet.env").unwrap()
    }

    const DUAL: &str = "FLANNEL_NETWORK=10.238.0.0/16\nFLANNEL_SUBNET=10.238.1.1/24\nFLANNEL_IPV6_NETWORK=fc00:238::/48\nFLANNEL_IPV6_SUBNET=fc00:238:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn kube_flannels_delegate_as_go_writes_it() {
        let c = conf(
            json!({"hairpinMode": true, "isDefaultGateway": true}),
            Value::Null,
        );
        let d = build(&c, &env(DUAL)).unwrap();
        assert_eq!(d.plugin, "bridge");
        assert_eq!(
            String::from_utf8(d.config).unwrap(),
            r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.238.1.0/24"}],[{"subnet":"fc00:238:0:1::/64"}]],"routes":[{"dst":"10.238.0.0/16"},{"dst":"fc00:238::/48"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#
        );
    }

    #[test]
    fn given_fields_stay_routes_come_first() {
        let mut c = conf(
            json!({"type": "ptp", "mtu": 1400, "ipMasq": true, "x": [1.5, "<"]}),
            json!({"type": "static", "dataDir": "/d",
                   "routes": [{"Dst": "10.1.2.3/8", "gw": "::ffff:10.0.0.1", "mtu": 1300, "table": 0, "scope": null}]}),
        );
        c.runtime_config = json!({"portMappings": []}).as_object().cloned();
        c.cni_version = String::new();
        let d = build(&c, &env(DUAL)).unwrap();
        assert_eq!(d.plugin, "ptp");
        assert_eq!(
            String::from_utf8(d.config).unwrap(),
            r#"{"ipMasq":true,"ipam":{"dataDir":"/d","ranges":[[{"subnet":"10.238.1.0/24"}],[{"subnet":"fc00:238:0:1::/64"}]],"routes":[{"dst":"10.1.2.3/8","gw":"10.0.0.1","mtu":1300,"table":0},{"dst":"10.238.0.0/16"},{"dst":"fc00:238::/48"}],"type":"static"},"mtu":1400,"name":"cbr0","runtimeConfig":{"portMappings":[]},"type":"ptp","x":[1.5,"\u003c"]}"#
        );
    }

    #[test]
    fn refused_as_flannel_refuses() {
        let e = env(DUAL);
        for bad in [
            json!({"type": 1}),
            json!({"name": "x"}),
            json!({"ipam": {}}),
        ] {
            assert_eq!(
                build(&conf(bad.clone(), Value::Null), &e).unwrap_err().code,
                7,
                "{bad}"
            );
        }
        for routes in [
            json!([{"gw": "10.0.0.1"}]),
            json!([{"dst": "x"}]),
            json!("r"),
            json!([{"dst": "10.0.0.0/8", "mtu": 1.5}]),
        ] {
            let c = conf(Value::Null, json!({"routes": routes}));
            assert_eq!(build(&c, &e).unwrap_err().code, 7, "{routes}");
        }
        let c = conf(Value::Null, json!({"routes": null}));
        assert!(build(&c, &e).is_ok());
    }
}
