//! Input generators for the property tests of libcni and the plugins (feature
//! `arbitrary`, tests only): hostile strings (quotes, slashes, newlines, non-ASCII,
//! maximum lengths), JSON documents shaped like configs and prevResults whose field
//! values are anything at all, and CNI_ARGS strings.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::spec::SUPPORTED_VERSIONS;

/// `cases` cases, nothing written into the source tree, a bounded time in CI.
pub fn bounded(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_time: 10_000,
        ..ProptestConfig::default()
    }
}

/// Strings a runtime, an operator or another plugin might hand us.
pub fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,12}",
        "[a-zA-Z0-9_.-]{1,300}",
        r#"[ -~]{0,40}"#,
        "[\\PC]{0,20}",
        Just("..".to_string()),
        Just("a\"; flush ruleset; \"".to_string()),
        Just("../../etc/passwd".to_string()),
        Just("x\ny".to_string()),
        Just(String::new()),
        Just("é".repeat(8)),
        Just("x".repeat(16)),
    ]
}

/// Any JSON value, nested a few levels, with object keys from `keys` or anywhere.
pub fn json_value(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        hostile_string().prop_map(Value::from),
        address().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(keys), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn key(keys: &'static [&'static str]) -> BoxedStrategy<String> {
    if keys.is_empty() {
        return hostile_string().boxed();
    }
    prop_oneof![
        3 => prop::sample::select(keys).prop_map(str::to_string),
        1 => hostile_string(),
    ]
    .boxed()
}

/// Addresses and prefixes, well-formed or nearly.
pub fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=33)
            .prop_map(|(a, p)| format!("{}.{}.{}.{}/{p}", a[0], a[1], a[2], a[3])),
        any::<[u8; 4]>().prop_map(|a| format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])),
        (any::<u16>(), 0u8..=129).prop_map(|(x, p)| format!("fd00::{x:x}/{p}")),
        Just("10.1.0.0/16".to_string()),
        Just("10.1.0.5/24".to_string()),
        Just("0.0.0.0/0".to_string()),
    ]
}

/// A config object: a version from the spec's list (or not), a name (valid or not), and
/// any subset of `fields` with any values.
pub fn config(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let version = prop_oneof![
        4 => prop::sample::select(SUPPORTED_VERSIONS).prop_map(Value::from),
        1 => json_value(&[]),
    ];
    let name =
        prop_oneof![3 => Just(Value::from("net1")), 1 => hostile_string().prop_map(Value::from)];
    (
        version,
        name,
        prop::collection::vec((prop::sample::select(fields), json_value(fields)), 0..8),
    )
        .prop_map(|(v, n, extra)| {
            let mut m: Map<String, Value> =
                extra.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            m.insert("cniVersion".into(), v);
            m.insert("name".into(), n);
            m.entry("type").or_insert(json!("plugin"));
            Value::Object(m)
        })
}

/// The keys a prevResult of any version may have.
pub const RESULT_KEYS: &[&str] = &[
    "cniVersion",
    "interfaces",
    "ips",
    "routes",
    "dns",
    "name",
    "mac",
    "sandbox",
    "mtu",
    "address",
    "gateway",
    "interface",
    "version",
    "dst",
    "gw",
    "priority",
    "table",
    "scope",
    "advmss",
    "ip4",
    "ip6",
    "ip",
    "nameservers",
    "search",
    "options",
    "domain",
];

/// CNI_ARGS as a runtime, or anyone, might set it.
pub fn cni_args() -> impl Strategy<Value = String> {
    let pair = prop_oneof![
        ("[A-Za-z_]{1,10}", hostile_string()).prop_map(|(k, v)| format!("{k}={v}")),
        Just("IgnoreUnknown=1".to_string()),
        Just("IP=10.1.0.5".to_string()),
        Just("MAC=02:00:00:00:00:01".to_string()),
        hostile_string(),
    ];
    prop::collection::vec(pair, 0..5).prop_map(|p| p.join(";"))
}

/// Runs one command through the skeleton as a runtime would (the test's own network
/// namespace as CNI_NETNS, which a probe must not change) and checks the two promises:
/// no panic, and a failure is an error object with a code of the spec or ours.
pub fn check_dispatch(
    plugin: &dyn crate::skel::Plugin,
    command: &str,
    conf: &Value,
    cni_args: &str,
) -> Result<(), TestCaseError> {
    let env = |k: &str| match k {
        "CNI_COMMAND" => Some(command.to_string()),
        "CNI_CONTAINERID" => Some("c1".to_string()),
        "CNI_NETNS" => Some("/proc/self/ns/net".to_string()),
        // The test's own namespace, on purpose.
        "CNI_NETNS_OVERRIDE" => Some("1".to_string()),
        "CNI_IFNAME" => Some("eth0".to_string()),
        "CNI_PATH" => Some("/nonexistent".to_string()),
        "CNI_ARGS" => Some(cni_args.to_string()),
        _ => None,
    };
    let stdin = conf.to_string().into_bytes();
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::skel::dispatch(plugin, &env, stdin)
    }));
    prop_assert!(out.is_ok(), "panicked on {conf}");
    if let Err(e) = out.unwrap() {
        prop_assert!(matches!(e.code, 1..=8 | 11 | 50 | 100..=106), "{e:?}");
        prop_assert!(!e.msg.is_empty());
    }
    Ok(())
}

/// A plugin whose every command only reads its input with `read` (the plugin's own
/// config, prevResult and CNI_ARGS reading) and never touches the kernel.
struct Probe<F>(F);

impl<F: Fn(&crate::skel::CmdArgs) -> Result<(), crate::spec::Error>> crate::skel::Plugin
    for Probe<F>
{
    fn add(&self, a: &crate::skel::CmdArgs) -> Result<crate::spec::CniResult, crate::spec::Error> {
        (self.0)(a)?;
        Ok(a.prev_result()?.unwrap_or_default())
    }
    fn del(&self, a: &crate::skel::CmdArgs) -> Result<(), crate::spec::Error> {
        (self.0)(a)
    }
    fn check(&self, a: &crate::skel::CmdArgs) -> Result<(), crate::spec::Error> {
        (self.0)(a)
    }
}

/// Property test of a plugin's reading of its input: configs with any of `fields`
/// holding anything, any prevResult, any CNI_ARGS, every command; never a panic, every
/// rejection an error object.
pub fn probe_reading(
    fields: &'static [&'static str],
    read: impl Fn(&crate::skel::CmdArgs) -> Result<(), crate::spec::Error>,
) {
    let commands = prop::sample::select(&["ADD", "DEL", "CHECK", "GC", "STATUS"][..]);
    let input = (
        config(fields),
        json_value(RESULT_KEYS),
        cni_args(),
        commands,
    );
    let probe = Probe(read);
    proptest::test_runner::TestRunner::new(bounded(256))
        .run(&input, |(mut conf, prev, args, cmd)| {
            conf["prevResult"] = prev;
            check_dispatch(&probe, cmd, &conf, &args)
        })
        .unwrap();
}
