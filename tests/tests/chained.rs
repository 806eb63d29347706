//! The chained plugins (portmap, firewall, tuning, bandwidth) behind bridge in one list,
//! through cnitool, for every spec version: ADD prints the version asked for and keeps
//! bridge's interfaces and addresses, CHECK passes (from 0.4.0), DEL leaves nothing. And
//! the reference plugins given the same list shape traffic with the same tc parameters.

use cni_tests::*;
use serde_json::Value;

fn chain(version: &str, bridge: &str) -> Value {
    json!({
        "cniVersion": version, "name": "chain",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "dataDir": "@DATA@", "ranges": [[{"subnet": "10.73.0.0/24"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "firewall"},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.IFNAME.arp_notify": "1"}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]
    })
}

const CAPS: &str = r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],
    "bandwidth":{"ingressRate":8000000,"ingressBurst":80000,"egressRate":4000000,"egressBurst":40000}}"#;

#[test]
fn every_version_adds_checks_and_deletes_the_whole_chain() {
    for version in MODERN_VERSIONS {
        let t = Cnitool::new(chain(version, "cnich0"));
        let c = Ns::new("c");
        let (ok, out, err) = t.run(&["add", "chain", &c.path()], &[("CAP_ARGS", CAPS)]);
        assert!(ok, "{version}: {err}");
        let r: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["cniVersion"], json!(version), "{r}");
        let names: Vec<&str> = r["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names[0], "cnich0", "{version}: {names:?}");
        assert_eq!(names[2], "eth0", "{version}: {names:?}");
        assert!(names[3].starts_with("bwp"), "{version}: {names:?}");
        assert!(r["ips"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("10.73.0."));
        assert_eq!(c.sh("sysctl -n net.ipv4.conf.eth0.arp_notify").trim(), "1");
        if *version >= "0.4.0" {
            let (ok, _, err) = t.run(&["check", "chain", &c.path()], &[("CAP_ARGS", CAPS)]);
            assert!(ok, "{version} CHECK: {err}");
        }
        let (ok, _, err) = t.run(&["del", "chain", &c.path()], &[("CAP_ARGS", CAPS)]);
        assert!(ok, "{version} DEL: {err}");
        assert_nothing_left(&t, version);
    }
}

/// No veth, ifb, labelled rule or element, DNAT, address or cached result of the network.
fn assert_nothing_left(t: &Cnitool, when: &str) {
    let mut left = t.host.live_veths();
    left.extend(
        t.host
            .link_names()
            .into_iter()
            .filter(|l| l.starts_with("bwp")),
    );
    assert!(left.is_empty(), "{when}: {left:?}");
    let rules = t.host.nft_ruleset();
    assert!(
        !rules.contains("\"chain/") && !rules.contains("dnat"),
        "{when}: {rules}"
    );
    assert_eq!(
        store_allocations(&t.path("data"), "chain"),
        0,
        "{when}: address leaked"
    );
    assert!(t.cache_files().is_empty(), "{when}: cached result left");
}

/// (kind, rate, burst, lat) of the tbf qdiscs on the container's host veth and its ifb.
fn buckets(t: &Cnitool, r: &Value) -> Vec<(String, Value, Value, Value)> {
    let mut out = Vec::new();
    for i in r["interfaces"].as_array().unwrap() {
        let dev = i["name"].as_str().unwrap();
        if !(dev.starts_with("veth") || dev.starts_with("bwp")) {
            continue;
        }
        let qdiscs: Value =
            serde_json::from_str(&t.host.sh(&format!("tc -j qdisc show dev {dev}"))).unwrap();
        for q in qdiscs.as_array().unwrap() {
            if q["kind"] == "tbf" {
                let o = &q["options"];
                let side = if dev.starts_with("bwp") {
                    "ifb"
                } else {
                    "veth"
                };
                out.push((
                    side.to_string(),
                    o["rate"].clone(),
                    o["burst"].clone(),
                    o["lat"].clone(),
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn bandwidth_sets_the_same_token_buckets_as_the_reference() {
    let mut seen = Vec::new();
    for cni_path in [bin_dir(), reference_dir()] {
        let t = Cnitool::new(chain("1.0.0", "cnichref0"));
        let c = Ns::new("c");
        let env = [("CAP_ARGS", CAPS), ("CNI_PATH", cni_path.to_str().unwrap())];
        let (ok, out, err) = t.run(&["add", "chain", &c.path()], &env);
        assert!(ok, "{}: {err}", cni_path.display());
        seen.push(buckets(&t, &serde_json::from_str(&out).unwrap()));
        let (ok, _, err) = t.run(&["del", "chain", &c.path()], &env);
        assert!(ok, "{}: {err}", cni_path.display());
    }
    assert_eq!(seen[0].len(), 2, "{:?}", seen[0]);
    assert_eq!(seen[0], seen[1], "ours, then the reference's");
}

/// The container ID cnitool gave the attachment in `netns` (from its cache file name).
fn cached_container_id(t: &Cnitool, before: &[String]) -> String {
    let name = t
        .cache_files()
        .into_iter()
        .find(|f| !before.contains(f))
        .expect("a new cache entry");
    name.strip_prefix("chain-")
        .and_then(|n| n.strip_suffix("-eth0"))
        .unwrap()
        .to_string()
}

#[test]
fn gc_removes_what_the_runtime_lost_track_of_and_keeps_the_rest() {
    let t = Cnitool::new(chain("1.1.0", "cnichgc0"));
    let (c1, c2) = (Ns::new("c"), Ns::new("c"));
    let mut ids = Vec::new();
    for c in [&c1, &c2] {
        let before = t.cache_files();
        let (ok, _, err) = t.run(&["add", "chain", &c.path()], &[("CAP_ARGS", CAPS)]);
        assert!(ok, "{err}");
        ids.push(cached_container_id(&t, &before));
    }
    let (lost, kept) = (&ids[0], &ids[1]);
    let conf: Value =
        serde_json::from_str(&std::fs::read_to_string(t.path("conf/10-tool.conflist")).unwrap())
            .unwrap();
    for plugin in conf["plugins"].as_array().unwrap().iter().rev() {
        let mut p = plugin.clone();
        p["name"] = json!("chain");
        p["cniVersion"] = json!("1.1.0");
        p["cni.dev/valid-attachments"] = json!([{"containerID": kept, "ifname": "eth0"}]);
        let kind = p["type"].as_str().unwrap().to_string();
        Call::new(&kind, "GC", &t.host, "", "").run(&p).expect_ok();
    }

    let rules = t.host.nft_ruleset();
    assert!(!rules.contains(&format!("chain/{lost}")), "{rules}");
    let allowed = t.host.sh("nft list set inet cni_rs CNI-ADMIN-v4");
    assert!(allowed.contains(&format!("chain/{kept}")), "{allowed}");
    let masq = t.host.sh("nft list set inet cni_rs masq4");
    assert!(masq.contains(&format!("chain/{kept}")), "{masq}");
    for kind in ["pm-pre-", "pm-out-", "pm-post-"] {
        assert_eq!(
            rules.matches(&format!("chain {kind}")).count(),
            1,
            "{kind}: {rules}"
        );
    }
    let aliases: Vec<String> = t
        .host
        .ip_json("link show")
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifalias"].as_str().map(String::from))
        .collect();
    assert!(
        aliases.iter().all(|a| !a.contains(lost.as_str())),
        "{aliases:?}"
    );
    assert_eq!(
        aliases.iter().filter(|a| a.contains(kept.as_str())).count(),
        2,
        "the kept container's veth and ifb: {aliases:?}"
    );
    assert_eq!(store_allocations(&t.path("data"), "chain"), 1);

    for c in [&c1, &c2] {
        let (ok, _, err) = t.run(&["del", "chain", &c.path()], &[("CAP_ARGS", CAPS)]);
        assert!(ok, "{err}");
    }
    assert!(!t.host.nft_ruleset().contains("\"chain/"));
    assert_eq!(store_allocations(&t.path("data"), "chain"), 0);
}

/// A runtime may kill the whole chain at any moment of ADD (a timeout): cnitool dies and
/// takes the running plugin along. The DEL that follows, without a cached result, leaves
/// no veth, ifb, rule, set element or address behind.
#[test]
fn killing_the_chain_during_add_then_del_leaves_nothing() {
    let t = Cnitool::new(chain("1.0.0", "cnichkill0"));
    let c = Ns::new("c");
    let mut completed = 0;
    for delay_ms in (0..60).step_by(3) {
        let mut child = t.spawn(&["add", "chain", &c.path()], &[("CAP_ARGS", CAPS)]);
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        if child.wait().unwrap().success() {
            completed += 1;
        }
        let (ok, _, err) = t.run(&["del", "chain", &c.path()], &[("CAP_ARGS", CAPS)]);
        assert!(ok, "killed after {delay_ms} ms, DEL: {err}");
        assert!(c.link("eth0").is_none(), "killed after {delay_ms} ms: eth0");
        assert_nothing_left(&t, &format!("killed after {delay_ms} ms"));
    }
    eprintln!("{completed} of 20 ADDs completed before the kill");
    assert!(completed < 20, "no kill landed during an ADD");
}
