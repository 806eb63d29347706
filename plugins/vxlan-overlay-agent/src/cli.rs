//! The command line: flanneld's (etcd mode), so a flanneld unit's ExecStart works with
//! the binary name swapped, plus our `--config FILE` and `--reconcile-seconds N`.
//! Go's flag syntax, as flanneld parses it: `-name` or `--name`, the value after `=` or
//! in the next argument, booleans bare or as `-name=false`, parsing stops at the first
//! argument that is not a flag (or after `--`). Every flag not on the command line is
//! read from `FLANNELD_<NAME>` (upper case, `-` as `_`; empty is unset), as flanneld's
//! flagutil.SetFlagsFromEnv does. How flags and `--config` combine: without `--config`
//! the flags (given or flanneld's defaults) make a vxlan-overlay entry of their own; with
//! it, the flags given override the matching fields of its vxlan-overlay entry (see
//! [`CONF_FIELDS`]) and the others keep the file's values.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde_json::{json, Value};
use vxlan_overlay::config::Overlay;

use crate::iface::{Choice, Selection};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Text,
    Int,
    Bool,
    /// Repeatable: every value kept, in order.
    List,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Role {
    Serve,
    /// Accepted so a flanneld unit starts, with no effect here (klog's level flags: the
    /// agent logs every change it makes; iptables' resync period: the rules are checked
    /// at every reconcile, at most every 5 s).
    Accept,
    /// A flag of flanneld's Kubernetes mode: set to anything but its default, it stops
    /// the agent (exit code 2) naming the flag.
    Refuse,
}

struct Flag {
    name: &'static str,
    kind: Kind,
    default: &'static str,
    role: Role,
    help: &'static str,
}

const fn flag(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    role: Role,
    help: &'static str,
) -> Flag {
    Flag {
        name,
        kind,
        default,
        role,
        help,
    }
}

use Kind::*;
use Role::*;

/// Every flag, with flanneld's name and default (v0.20.2 to master). A new flag is one
/// line here and, when it feeds a config field, one in [`CONF_FIELDS`] or
/// [`Given::options`].
const FLAGS: &[Flag] = &[
    flag("etcd-endpoints", Text, "http://127.0.0.1:4001,http://127.0.0.1:2379", Serve,
        "a comma-delimited list of etcd endpoints"),
    flag("etcd-prefix", Text, "/coreos.com/network", Serve, "etcd prefix"),
    flag("etcd-keyfile", Text, "", Serve, "SSL key file used to secure etcd communication"),
    flag("etcd-certfile", Text, "", Serve,
        "SSL certification file used to secure etcd communication"),
    flag("etcd-cafile", Text, "", Serve,
        "SSL Certificate Authority file used to secure etcd communication"),
    flag("etcd-username", Text, "", Serve, "username for BasicAuth to etcd"),
    flag("etcd-password", Text, "", Serve, "password for BasicAuth to etcd"),
    flag("iface", List, "", Serve,
        "interface to use (IP or name) for inter-host communication; repeatable, tried in order"),
    flag("iface-regex", List, "", Serve,
        "regex matched against interfaces' IPv4 addresses, then names; repeatable, tried in order after --iface"),
    flag("iface-can-reach", Text, "", Serve,
        "the interface of the route to this IP address (`ip route get`), tried last"),
    flag("subnet-file", Text, "/run/flannel/subnet.env", Serve,
        "filename where env variables (subnet, MTU, ... ) will be written to"),
    flag("public-ip", Text, "", Serve,
        "IP accessible by other nodes for inter-host communication (published in the lease)"),
    flag("public-ipv6", Text, "", Serve,
        "IPv6 accessible by other nodes for inter-host communication (published in the lease)"),
    flag("subnet-lease-renew-margin", Int, "60", Serve,
        "subnet lease renewal margin, in minutes, ranging from 1 to 1439"),
    flag("healthz-ip", Text, "0.0.0.0", Serve, "the IP address for healthz server to listen"),
    flag("healthz-port", Int, "0", Serve, "the port for healthz server to listen (0 to disable)"),
    flag("iptables-resync", Int, "5", Accept,
        "resync period for iptables rules, in seconds (ours: every reconcile, at most every 5 s)"),
    flag("iptables-forward-rules", Bool, "true", Serve,
        "add default accept rules to FORWARD chain in iptables"),
    flag("ip-masq-fully-random-disable", Bool, "false", Serve,
        "disable fully-random mode for MASQUERADE"),
    flag("ip-blackhole-route", Bool, "false", Serve,
        "add blackhole route on the node for the local podCIDR"),
    flag("v", Text, "0", Accept, "klog's verbosity"),
    flag("vmodule", Text, "", Accept, "klog's per-file verbosity"),
    flag("log_backtrace_at", Text, "", Accept, "klog's backtrace location"),
    flag("kube-subnet-mgr", Bool, "false", Refuse, "flanneld's Kubernetes subnet manager"),
    flag("kube-api-url", Text, "", Refuse, "flanneld's Kubernetes mode"),
    flag("kube-annotation-prefix", Text, "flannel.alpha.coreos.com", Refuse,
        "flanneld's Kubernetes mode"),
    flag("kubeconfig-file", Text, "", Refuse, "flanneld's Kubernetes mode"),
    flag("net-config-path", Text, "/etc/kube-flannel/net-conf.json", Refuse,
        "flanneld's Kubernetes mode"),
    flag("set-node-network-unavailable", Bool, "true", Refuse, "flanneld's Kubernetes mode"),
    flag("ip-masq", Bool, "false", Serve,
        "setup IP masquerade rule for traffic destined outside of overlay network"),
    flag("version", Bool, "false", Serve, "print version and exit"),
    flag("config", Text, "", Serve,
        "ours: a CNI .conf or .conflist with the vxlan-overlay entry; the flags given override its fields"),
    flag("reconcile-seconds", Int, "10", Serve,
        "ours: seconds between checks that the kernel still holds every peer's state (1 to 3600)"),
];

/// The flags that are fields of the vxlan-overlay entry: (flag, path of the field).
/// `etcd-endpoints` is split at commas into the list.
const CONF_FIELDS: &[(&str, &[&str])] = &[
    ("etcd-endpoints", &["store", "endpoints"]),
    ("etcd-prefix", &["store", "prefix"]),
    ("etcd-keyfile", &["store", "keyFile"]),
    ("etcd-certfile", &["store", "certFile"]),
    ("etcd-cafile", &["store", "trustedCAFile"]),
    ("etcd-username", &["store", "username"]),
    ("etcd-password", &["store", "password"]),
    ("subnet-file", &["subnetFile"]),
    ("ip-masq", &["store", "ipMasq"]),
    (
        "ip-masq-fully-random-disable",
        &["store", "ipMasqFullyRandomDisable"],
    ),
    ("iptables-forward-rules", &["store", "iptablesForwardRules"]),
    ("ip-blackhole-route", &["store", "ipBlackholeRoute"]),
];

/// The network name of an agent run on flags alone (it names the agent's saved state,
/// `<dataDir>/_agent/flannel.json`).
pub const FLAGS_ONLY_NAME: &str = "flannel";

/// Why the agent ends before it starts: `code` 0 for help and version, 2 for a usage
/// error (Go's flag package exits 2 too).
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub msg: String,
}

fn usage_error(msg: impl Into<String>) -> Exit {
    Exit {
        code: 2,
        msg: msg.into(),
    }
}

/// The flags as given: by name, their values in order (from the command line, else from
/// the environment), and what was wrong in the environment (said, not fatal, as flanneld).
#[derive(Debug, Default)]
pub struct Given {
    values: BTreeMap<&'static str, Vec<String>>,
    pub warnings: Vec<String>,
}

/// Go's strconv.ParseBool.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A value checked against its flag's kind, as Go's flag.Value.Set does.
fn check(f: &Flag, v: &str) -> Result<(), String> {
    match f.kind {
        Int if v.parse::<i64>().is_err() => Err(format!("invalid value {v:?}: not an integer")),
        Bool if parse_bool(v).is_none() => Err(format!("invalid value {v:?}: not a boolean")),
        _ => Ok(()),
    }
}

fn lookup(name: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.name == name)
}

pub fn usage() -> String {
    let mut s = String::from(
        "Usage: vxlan-overlay-agent [OPTION]...\n\
         flanneld's flags (etcd mode) and ours; each also from FLANNELD_<NAME>.\n",
    );
    for f in FLAGS {
        let default = if f.default.is_empty() || f.kind == Bool {
            String::new()
        } else {
            format!(" (default {})", f.default)
        };
        let role = match f.role {
            Serve => "",
            Accept => " [accepted, no effect]",
            Refuse => " [refused: not served]",
        };
        s.push_str(&format!(
            "  --{}\n    \t{}{default}{role}\n",
            f.name, f.help
        ));
    }
    s
}

/// Reads the command line (without the program name), then the environment.
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Given, Exit> {
    let mut given = Given::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            break;
        }
        let Some(body) = a.strip_prefix('-').filter(|b| !b.is_empty()) else {
            // The first argument that is not a flag ends them, as in Go.
            break;
        };
        let body = body.strip_prefix('-').unwrap_or(body);
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(usage_error(format!("bad flag syntax: {a}")));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            return Err(Exit {
                code: 0,
                msg: usage(),
            });
        }
        let f = lookup(name).ok_or_else(|| {
            usage_error(format!(
                "flag provided but not defined: -{name} (see --help)"
            ))
        })?;
        let value = match (inline, f.kind) {
            (Some(v), _) => v,
            (None, Bool) => "true".into(),
            (None, _) => {
                let v = args
                    .get(i)
                    .ok_or_else(|| usage_error(format!("flag needs an argument: -{name}")))?;
                i += 1;
                v.clone()
            }
        };
        check(f, &value).map_err(|e| usage_error(format!("-{name}: {e}")))?;
        given.set(f, value);
    }
    if given.bool("version") {
        return Err(Exit {
            code: 0,
            msg: format!("vxlan-overlay-agent {}", env!("CARGO_PKG_VERSION")),
        });
    }
    for f in FLAGS {
        if given.values.contains_key(f.name) {
            continue;
        }
        let key = format!("FLANNELD_{}", f.name.to_uppercase().replace('-', "_"));
        let Some(v) = env(&key).filter(|v| !v.is_empty()) else {
            continue;
        };
        match check(f, &v) {
            Ok(()) => given.set(f, v),
            Err(e) => given.warnings.push(format!("{key}: {e}; ignored")),
        }
    }
    Ok(given)
}

/// What the agent runs with.
#[derive(Debug)]
pub struct Options {
    pub overlay: Overlay,
    pub select: Selection,
    pub reconcile: Duration,
    pub healthz: Option<SocketAddr>,
}

impl Given {
    fn set(&mut self, f: &'static Flag, v: String) {
        let values = self.values.entry(f.name).or_default();
        if f.kind != List {
            values.clear();
        }
        values.push(v);
    }

    /// The value given (the last one), if any.
    fn given(&self, name: &str) -> Option<&str> {
        self.values.get(name)?.last().map(String::as_str)
    }

    /// The value given, else flanneld's default.
    fn value(&self, name: &str) -> &str {
        self.given(name)
            .unwrap_or_else(|| lookup(name).map_or("", |f| f.default))
    }

    fn list(&self, name: &str) -> &[String] {
        self.values.get(name).map_or(&[], Vec::as_slice)
    }

    fn bool(&self, name: &str) -> bool {
        parse_bool(self.value(name)).unwrap_or(false)
    }

    fn int(&self, name: &str, range: std::ops::RangeInclusive<i64>) -> Result<i64, Exit> {
        let v = self.value(name);
        v.parse::<i64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                usage_error(format!(
                    "--{name}: {v} is out of range ({} to {})",
                    range.start(),
                    range.end()
                ))
            })
    }

    /// A flag's value parsed as `T`, None when empty.
    fn parsed<T: std::str::FromStr>(&self, name: &str, what: &str) -> Result<Option<T>, Exit> {
        match self.value(name) {
            "" => Ok(None),
            v => v
                .parse()
                .map(Some)
                .map_err(|_| usage_error(format!("--{name}: {v:?} is not {what}"))),
        }
    }

    /// The flags of a mode that is not served, when set to anything but the default.
    fn refused(&self) -> Result<(), Exit> {
        for f in FLAGS.iter().filter(|f| f.role == Refuse) {
            let Some(v) = self.given(f.name) else {
                continue;
            };
            let default = match f.kind {
                Bool => parse_bool(v) == parse_bool(f.default),
                _ => v == f.default,
            };
            if !default {
                return Err(usage_error(format!(
                    "--{}: flanneld's Kubernetes mode is not served; this agent is flanneld in etcd mode (--etcd-endpoints, --etcd-prefix)",
                    f.name
                )));
            }
        }
        Ok(())
    }

    /// The vxlan-overlay entry's fields the flags set: all of them (given or default)
    /// when `all`, else only those given.
    fn conf_patch(&self, all: bool) -> Value {
        let mut patch = json!({});
        for (name, path) in CONF_FIELDS {
            let v = if all {
                self.value(name)
            } else {
                match self.given(name) {
                    Some(v) => v,
                    None => continue,
                }
            };
            if v.is_empty() {
                continue;
            }
            let v = match *name {
                "etcd-endpoints" => {
                    json!(v.split(',').filter(|e| !e.is_empty()).collect::<Vec<_>>())
                }
                // flanneld joins keys to the prefix with Go's path.Join, which drops a
                // trailing or doubled '/'.
                "etcd-prefix" => json!(clean_prefix(v)),
                _ if lookup(name).is_some_and(|f| f.kind == Bool) => json!(parse_bool(v)),
                _ => json!(v),
            };
            let mut at = &mut patch;
            for p in &path[..path.len() - 1] {
                at = at
                    .as_object_mut()
                    .expect("objects all the way")
                    .entry(p.to_string())
                    .or_insert_with(|| json!({}));
            }
            at[path[path.len() - 1]] = v;
        }
        patch
    }

    /// The agent's options: the config (the flags', or `--config`'s with the flags given
    /// over it, read by `read`), the interface selection, the periods and the endpoint.
    pub fn options(&self, read: impl Fn(&Path) -> Result<Value, String>) -> Result<Options, Exit> {
        self.refused()?;
        // Checked as flanneld checks it; our etcd lease is renewed every TTL/3, ahead
        // of any margin, so it changes nothing here.
        self.int("subnet-lease-renew-margin", 1..=1439)?;
        let reconcile = Duration::from_secs(self.int("reconcile-seconds", 1..=3600)? as u64);
        let port = self.int("healthz-port", 0..=65535)? as u16;
        let healthz_ip: Option<IpAddr> = self.parsed("healthz-ip", "an IP address")?;
        let healthz = (port > 0)
            .then(|| SocketAddr::new(healthz_ip.unwrap_or(Ipv4Addr::UNSPECIFIED.into()), port));
        let public_ip = match self.parsed::<IpAddr>("public-ip", "an IP address")? {
            Some(IpAddr::V6(v6)) => {
                return Err(usage_error(format!(
                    "--public-ip: {v6} is IPv6 (the IPv6 one goes in --public-ipv6)"
                )))
            }
            Some(IpAddr::V4(v4)) => Some(v4),
            None => None,
        };
        let public_ipv6: Option<Ipv6Addr> = self.parsed("public-ipv6", "an IPv6 address")?;
        let ifaces = (self.list("iface").iter())
            .map(|s| Choice::parse(s).map_err(|e| usage_error(format!("--iface: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let regexes = (self.list("iface-regex").iter())
            .map(|s| Regex::new(s).map_err(|e| usage_error(format!("--iface-regex {s:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let can_reach: Option<IpAddr> = self.parsed("iface-can-reach", "an IP address")?;

        let (conf, whence) = match self.given("config").filter(|c| !c.is_empty()) {
            Some(path) => {
                let path = PathBuf::from(path);
                let mut v = read(&path).map_err(usage_error)?;
                merge_into_entry(&mut v, self.conf_patch(false))
                    .map_err(|e| usage_error(format!("{}: {e}", path.display())))?;
                (v, path.display().to_string())
            }
            None => {
                let mut v = json!({"cniVersion": "1.0.0", "name": FLAGS_ONLY_NAME,
                    "type": "vxlan-overlay", "store": {"type": "etcd"}});
                merge(&mut v, self.conf_patch(true));
                (v, "the flanneld flags".to_string())
            }
        };
        let overlay =
            Overlay::from_conf_or_list(&conf).map_err(|e| usage_error(format!("{whence}: {e}")))?;
        let mut select = Selection {
            ifaces,
            regexes,
            can_reach,
            public_ip,
            public_ipv6,
        };
        // The config's underlayInterface is an --iface the flags may override.
        if select.ifaces.is_empty() && select.regexes.is_empty() && select.can_reach.is_none() {
            if let Some(name) = &overlay.underlay_interface {
                select.ifaces.push(Choice::Name(name.clone()));
            }
        }
        Ok(Options {
            overlay,
            select,
            reconcile,
            healthz,
        })
    }
}

/// The etcd prefix as flanneld's path.Join uses it: no doubled or trailing '/'.
fn clean_prefix(p: &str) -> String {
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    let joined = parts.join("/");
    if p.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Merges `patch` into `v`, objects field by field.
fn merge(v: &mut Value, patch: Value) {
    match (v, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, pv) in b {
                merge(a.entry(k).or_insert(Value::Null), pv);
            }
        }
        (slot, p) => *slot = p,
    }
}

/// Merges `patch` into a conf, or into a list's vxlan-overlay entry.
fn merge_into_entry(v: &mut Value, patch: Value) -> Result<(), String> {
    let Some(plugins) = v.get_mut("plugins").and_then(Value::as_array_mut) else {
        merge(v, patch);
        return Ok(());
    };
    let entry = (plugins.iter_mut())
        .find(|p| p["type"] == "vxlan-overlay")
        .ok_or("no vxlan-overlay entry in the list")?;
    merge(entry, patch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vxlan_overlay::config::Store;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn options(line: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Options, Exit> {
        parse(&args(line), env)?.options(|_| Err("no file here".into()))
    }

    fn etcd(o: &Options) -> vxlan_overlay::config::Etcd {
        match &o.overlay.store {
            Store::Etcd(e) => e.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flanneld_defaults() {
        let o = options("", &no_env).unwrap();
        let e = etcd(&o);
        assert_eq!(
            e.endpoints,
            ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(e.prefix, "/coreos.com/network");
        assert_eq!(e.username, None);
        assert_eq!(
            o.overlay.subnet_file,
            PathBuf::from("/run/flannel/subnet.env")
        );
        assert_eq!(o.healthz, None);
        assert_eq!(o.reconcile, Duration::from_secs(10));
        assert!(o.select.ifaces.is_empty() && o.select.public_ip.is_none());
    }

    #[test]
    fn go_flag_syntax() {
        let line =
            "-etcd-endpoints=http://10.0.0.5:2379 --etcd-prefix /x/net/ -iface 192.168.93.10 \
                    --iface=eth1 -iface-regex ^10\\. --public-ip=203.0.113.7 -v=2 --v 3 \
                    -healthz-port 8471 --etcd-username root --etcd-password=pw \
                    -kube-subnet-mgr=false positional --ignored-after-it";
        let o = options(line, &no_env).unwrap();
        let e = etcd(&o);
        assert_eq!(e.endpoints, ["http://10.0.0.5:2379"]);
        assert_eq!(e.prefix, "/x/net");
        assert_eq!(
            (e.username.as_deref(), e.password.as_deref()),
            (Some("root"), Some("pw"))
        );
        assert_eq!(
            o.select.ifaces,
            [
                Choice::Address("192.168.93.10".parse().unwrap()),
                Choice::Name("eth1".into())
            ]
        );
        assert_eq!(o.select.regexes[0].as_str(), "^10\\.");
        assert_eq!(o.select.public_ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(o.healthz, Some("0.0.0.0:8471".parse().unwrap()));
    }

    #[test]
    fn the_environment_fills_what_the_command_line_does_not_give() {
        let env = |k: &str| match k {
            "FLANNELD_ETCD_ENDPOINTS" => Some("http://10.0.0.6:2379,http://10.0.0.7:2379".into()),
            "FLANNELD_ETCD_PREFIX" => Some("/from/env".into()),
            "FLANNELD_IFACE" => Some("eth9".into()),
            "FLANNELD_HEALTHZ_PORT" => Some("not-a-port".into()),
            "FLANNELD_PUBLIC_IP" => Some(String::new()),
            _ => None,
        };
        let g = parse(&args("--etcd-prefix=/from/args"), &env).unwrap();
        assert_eq!(g.warnings.len(), 1, "{:?}", g.warnings);
        let o = g.options(|_| Err("none".into())).unwrap();
        let e = etcd(&o);
        assert_eq!(
            e.endpoints,
            ["http://10.0.0.6:2379", "http://10.0.0.7:2379"]
        );
        assert_eq!(e.prefix, "/from/args");
        assert_eq!(o.select.ifaces, [Choice::Name("eth9".into())]);
        assert_eq!((o.healthz, o.select.public_ip), (None, None));
    }

    #[test]
    fn kubernetes_mode_is_refused_by_name() {
        for line in [
            "--kube-subnet-mgr",
            "-kube-subnet-mgr=true",
            "--kube-api-url=https://k:6443",
            "--kubeconfig-file /etc/k",
        ] {
            let e = options(line, &no_env).unwrap_err();
            let name = line
                .trim_start_matches('-')
                .split(['=', ' '])
                .next()
                .unwrap();
            assert_eq!(e.code, 2, "{line}");
            assert!(e.msg.contains(&format!("--{name}")), "{line}: {}", e.msg);
        }
        let env = |k: &str| (k == "FLANNELD_KUBE_SUBNET_MGR").then(|| "true".to_string());
        assert_eq!(options("", &env).unwrap_err().code, 2);
    }

    #[test]
    fn mistakes_are_usage_errors() {
        for line in [
            "--no-such-flag",
            "--etcd-endpoints",
            "--healthz-port=x",
            "--healthz-port=70000",
            "--subnet-lease-renew-margin=1440",
            "--subnet-lease-renew-margin=0",
            "--public-ip=fc00::1",
            "--public-ip=nope",
            "--iface-regex=(",
            "--iface=a/b",
            "--iface-can-reach=x",
            "---etcd-prefix=/x",
            "--etcd-prefix=relative",
        ] {
            let e = options(line, &no_env).unwrap_err();
            assert_eq!(e.code, 2, "{line}: {}", e.msg);
        }
        for line in ["-h", "--help", "-version"] {
            assert_eq!(options(line, &no_env).unwrap_err().code, 0, "{line}");
        }
    }

    #[test]
    fn flags_given_override_the_config_file_and_defaults_do_not() {
        let file = json!({"cniVersion": "1.0.0", "name": "cluster", "plugins": [
            {"type": "vxlan-overlay", "underlayInterface": "ul1", "subnetFile": "/tmp/s.env",
             "store": {"type": "etcd", "endpoints": ["http://10.0.0.5:2379"],
                       "prefix": "/conf/net", "leaseTTL": 30}}]});
        let read = |_: &Path| Ok(file.clone());
        let o = parse(
            &args("--config /c.conflist --etcd-prefix=/flag/net"),
            &no_env,
        )
        .unwrap()
        .options(read)
        .unwrap();
        let e = etcd(&o);
        assert_eq!(
            (e.endpoints.as_slice(), e.prefix.as_str(), e.lease_ttl),
            (&["http://10.0.0.5:2379".to_string()][..], "/flag/net", 30)
        );
        assert_eq!(o.overlay.name, "cluster");
        assert_eq!(o.overlay.subnet_file, PathBuf::from("/tmp/s.env"));
        assert_eq!(o.select.ifaces, [Choice::Name("ul1".into())]);
        let o = parse(&args("--config /c --iface-can-reach 10.0.0.5"), &no_env)
            .unwrap()
            .options(read)
            .unwrap();
        assert!(
            o.select.ifaces.is_empty(),
            "the flags' choice replaces underlayInterface"
        );
    }
}
