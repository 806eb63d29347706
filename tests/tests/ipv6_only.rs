//! IPv6-only clusters (`"EnableIPv4": false, "EnableIPv6": true` in `<prefix>/config`) on
//! our agent, in flanneld's formats: every node's lease key `0.0.0.0-0&<v6>-<len>` (with
//! more than one node, which flanneld's etcd mode cannot give), its value with PublicIP
//! 0.0.0.0 and BackendV6Data only, flannel-v6.N alone over the IPv6 underlay, the subnet
//! file with the IPv6 pair alone; pods get an IPv6 address only and reach each other
//! across hosts. The plugin reads such a file without an agent too, and its static store
//! serves an IPv6-only network of its own (`ipv6Network` without `network`).
//! Underlays 192.168.103-106 and fd00:103-106::/64, cluster networks fc00:240-244::/48.

use std::time::Duration;

use cni_tests::agent_harness::*;
use cni_tests::*;
use serde_json::{json, Value};

fn v6_only_config(v6: &str) -> String {
    format!(
        r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"{v6}","Backend":{{"Type":"vxlan"}}}}"#
    )
}

/// The subnet of a `FLANNEL_IPV6_SUBNET` value (its gateway with the prefix), as a key
/// names it: `…::1/64` → `…::-64`.
fn key_part_of_gateway(gw: &str) -> String {
    let (ip, len) = gw.split_once('/').unwrap();
    let ip: std::net::Ipv6Addr = ip.parse().unwrap();
    format!("{}-{len}", std::net::Ipv6Addr::from(u128::from(ip) - 1))
}

/// Pings `addr` over IPv6 from `from` until it answers (peers may still be on their way).
fn reaches6(from: &Ns, addr: &str) -> bool {
    within(Duration::from_secs(15), || {
        (from
            .exec(&format!("ping -6 -c 2 -i 0.2 -W 1 {addr}"))
            .status)
            .success()
    })
    .is_some()
}

/// A pod on `host`: its namespace and its one address, which must be IPv6.
fn v6_pod(host: &Ns, conf: &Value, cid: &str) -> (Ns, String) {
    let ns = Ns::new("c");
    let r = Call::new("vxlan-overlay", "ADD", host, &ns.path(), cid)
        .run(conf)
        .expect_ok();
    let ips = all_ips(&r);
    assert!(
        ips.len() == 1 && ips[0].contains(':'),
        "one IPv6 address, no IPv4 one: {r}"
    );
    (ns, ips[0].clone())
}

#[test]
fn ipv6_only_cluster_of_three_in_flannels_format_pods_reach_each_other() {
    let c = Cluster::new(3, "192.168.103", 1500);
    ipv6_underlay(&c, "fd00:103");
    // The underlay is the IPv6 default route's interface, as flanneld picks it.
    for h in &c.hosts {
        h.sh("ip -6 route add default dev ul0");
    }
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!(
        "put {PREFIX}/config '{}'",
        v6_only_config("fc00:240::/48")
    ));
    let agents: Vec<Agent> = (c.hosts.iter())
        .map(|h| Agent::start(h, &etcd, 60, 1))
        .collect();
    let mut pods = Vec::new();
    let mut subnets = Vec::new();
    for (i, (h, a)) in c.hosts.iter().zip(&agents).enumerate() {
        let gw = a.env_var("FLANNEL_IPV6_SUBNET", 30);
        let v6 = key_part_of_gateway(&gw);
        assert!(
            v6.starts_with("fc00:240:0:") && v6.ends_with("::-64"),
            "{v6}"
        );
        // flanneld's IPv6-only subnet file: the IPv6 pair alone; pods get the MTU of
        // VXLAN over IPv6 (70 bytes)
        assert_eq!(
            a.subnet_env().unwrap(),
            format!("FLANNEL_IPV6_NETWORK=fc00:240::/48\nFLANNEL_IPV6_SUBNET={gw}\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"),
            "{}",
            a.log()
        );
        // flanneld's key and value for an IPv6-only node
        let key = format!("{PREFIX}/subnets/0.0.0.0-0&{v6}");
        let value = etcd.ctl(&format!("get --print-value-only '{key}'"));
        let lease: Value = serde_json::from_str(value.trim())
            .unwrap_or_else(|_| panic!("no {key}: {:?}\n{}", etcd.get_prefix(PREFIX), a.log()));
        let mac6 = lease["BackendV6Data"]["VtepMAC"]
            .as_str()
            .unwrap_or_else(|| panic!("{lease}"))
            .to_string();
        assert_eq!(
            lease,
            json!({"PublicIP": "0.0.0.0", "PublicIPv6": format!("fd00:103::{}", 10 + i),
                "BackendType": "vxlan", "BackendV6Data": {"VNI": 1, "VtepMAC": mac6}}),
            "no BackendData, as flanneld writes it"
        );
        // flannel-v6.1 over the IPv6 underlay, with the lease's MAC; no flannel.1
        let dev = h
            .link("flannel-v6.1")
            .unwrap_or_else(|| panic!("{}", a.log()));
        assert_eq!(dev["address"], mac6);
        let local = &dev["linkinfo"]["info_data"];
        let local = local.get("local6").unwrap_or(&local["local"]);
        assert_eq!(local, &format!("fd00:103::{}", 10 + i), "{dev}");
        assert!(h.link("flannel.1").is_none(), "{}", a.log());
        subnets.push(v6);
        pods.push(v6_pod(h, &a.conf(&etcd), &format!("v6o-{i}")));
    }
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 3, "one IPv6 subnet per node: {subnets:?}");
    for (i, (ns, _)) in pods.iter().enumerate() {
        for (j, (_, addr)) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(
                reaches6(ns, addr),
                "pod {i} to pod {j} ({addr}); {}",
                agents[i].log()
            );
        }
    }
    // the peers' routes go through flannel-v6.1; the node's rules are IPv6 ones only
    let routes = c.hosts[0].sh("ip -6 route show proto 73");
    assert_eq!(routes.matches("dev flannel-v6.1").count(), 2, "{routes}");
    assert_eq!(c.hosts[0].sh("ip -4 route show proto 73").trim(), "");
    let rules = c.hosts[0].nft_ruleset();
    assert!(rules.contains("fc00:240::/48"), "{rules}");
    assert!(!rules.contains("0.0.0.0/0"), "{rules}");
}

/// A node restarted keeps its IPv6 subnet and its key; a lease of another node is never
/// taken for ours (every PublicIP is 0.0.0.0: the node is told by its PublicIPv6).
#[test]
fn ipv6_only_node_restarted_keeps_its_subnet_and_others_keep_theirs() {
    let c = Cluster::new(2, "192.168.104", 1500);
    ipv6_underlay(&c, "fd00:104");
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!(
        "put {PREFIX}/config '{}'",
        v6_only_config("fc00:241::/48")
    ));
    // no IPv6 default route: the underlay is underlayInterface (flanneld's --iface),
    // with its first global IPv6 address
    let iface = json!({"underlayInterface": "ul0"});
    let mut a0 = Agent::start_with(&c.hosts[0], &etcd, 60, 1, iface.clone());
    let a1 = Agent::start_with(&c.hosts[1], &etcd, 60, 1, iface);
    let gw0 = a0.env_var("FLANNEL_IPV6_SUBNET", 30);
    let gw1 = a1.env_var("FLANNEL_IPV6_SUBNET", 30);
    assert_ne!(gw0, gw1);
    let (pod1, addr1) = v6_pod(&c.hosts[1], &a1.conf(&etcd), "v6r-1");
    // restarted without its subnet file: its lease, found by its PublicIPv6, gives it back
    a0.terminate();
    std::fs::remove_file(a0.dir.path().join("subnet.env")).unwrap();
    a0.restart(1);
    assert_eq!(a0.env_var("FLANNEL_IPV6_SUBNET", 20), gw0, "{}", a0.log());
    assert_eq!(a1.env_var("FLANNEL_IPV6_SUBNET", 1), gw1, "{}", a1.log());
    let keys: Vec<String> = (etcd.get_prefix(&format!("{PREFIX}/subnets/")).into_iter())
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}\n{}", a0.log());
    let (pod0, addr0) = v6_pod(&c.hosts[0], &a0.conf(&etcd), "v6r-0");
    assert!(reaches6(&pod0, &addr1), "{}", a0.log());
    assert!(reaches6(&pod1, &addr0), "{}", a1.log());
}

/// flanneld's IPv6-only subnet file, read by the plugin without an agent (the
/// subnet-file mode) and in the etcd store: the pod gets an IPv6 address only.
#[test]
fn plugin_gives_an_ipv6_address_only_from_an_ipv6_only_subnet_file() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let env = data.path().join("subnet.env");
    std::fs::write(
        &env,
        "FLANNEL_IPV6_NETWORK=fc00:242::/48\nFLANNEL_IPV6_SUBNET=fc00:242:0:7::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let etcd = json!({"type": "etcd", "endpoints": ["http://192.0.2.1:2379"]});
    for (i, store) in [None, Some(etcd)].into_iter().enumerate() {
        let mut conf = json!({"cniVersion": "1.1.0", "name": format!("v6file{i}"),
            "type": "vxlan-overlay", "dataDir": data.path(), "bridge": format!("v6br{i}"),
            "ipam": {"dataDir": data.path()}, "subnetFile": env});
        if let Some(s) = store {
            conf["store"] = s;
        }
        let c = Ns::new("c");
        let cid = format!("v6f{i}");
        let r = Call::new("vxlan-overlay", "ADD", &host, &c.path(), &cid)
            .run(&conf)
            .expect_ok();
        let ips = all_ips(&r);
        assert_eq!(ips.len(), 1, "{r}");
        assert!(ips[0].starts_with("fc00:242:0:7::"), "{r}");
        let mtu = c.link("eth0").unwrap()["mtu"].clone();
        assert_eq!(mtu, 1430);
        Call::new("vxlan-overlay", "DEL", &host, &c.path(), &cid)
            .run(&with_prev(&conf, &r))
            .expect_ok();
        assert!(c.link("eth0").is_none());
    }
}

/// host-gw in an IPv6-only network: no device, a route to each peer's IPv6 subnet via its
/// PublicIPv6 on the underlay, leases of BackendType host-gw without backend data.
#[test]
fn ipv6_only_host_gw_routes_via_the_peers_ipv6_addresses() {
    let c = Cluster::new(2, "192.168.105", 1500);
    ipv6_underlay(&c, "fd00:105");
    let etcd = Etcd::start(&c);
    let config = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:243::/48","Backend":{"Type":"host-gw"}}"#;
    etcd.ctl(&format!("put {PREFIX}/config '{config}'"));
    let iface = json!({"underlayInterface": "ul0"});
    let agents: Vec<Agent> = (c.hosts.iter())
        .map(|h| Agent::start_with(h, &etcd, 60, 1, iface.clone()))
        .collect();
    let mut pods = Vec::new();
    let mut keys = Vec::new();
    for (i, (h, a)) in c.hosts.iter().zip(&agents).enumerate() {
        let gw = a.env_var("FLANNEL_IPV6_SUBNET", 30);
        assert_eq!(a.env_var("FLANNEL_MTU", 1), "1500", "the underlay's");
        let key = format!("{PREFIX}/subnets/0.0.0.0-0&{}", key_part_of_gateway(&gw));
        let value = etcd.ctl(&format!("get --print-value-only '{key}'"));
        let lease: Value = serde_json::from_str(value.trim())
            .unwrap_or_else(|_| panic!("no {key}: {:?}\n{}", etcd.get_prefix(PREFIX), a.log()));
        assert_eq!(
            lease,
            json!({"PublicIP": "0.0.0.0", "PublicIPv6": format!("fd00:105::{}", 10 + i),
                "BackendType": "host-gw"})
        );
        assert!(h.link("flannel-v6.1").is_none() && h.link("flannel.1").is_none());
        keys.push(key);
        pods.push(v6_pod(h, &a.conf(&etcd), &format!("v6g-{i}")));
    }
    assert_ne!(keys[0], keys[1]);
    let routes = c.hosts[0].sh("ip -6 route show proto 73");
    assert!(routes.contains("via fd00:105::11 dev ul0"), "{routes}");
    assert!(reaches6(&pods[0].0, &pods[1].1), "{}", agents[0].log());
    assert!(reaches6(&pods[1].0, &pods[0].1), "{}", agents[1].log());
}

/// The static store, IPv6-only: `ipv6Network` without `network`, nodes with
/// `underlayIPv6` and `ipv6Subnet` alone, hosts whose underlay has no IPv4 address (it is
/// the IPv6 default route's interface). Pods get an IPv6 address only and the MTU of
/// VXLAN over IPv6; flannel-v6.1 goes over the IPv6 underlay with a neighbour, FDB entry
/// and route per peer, its MAC derived from the node's IPv6 address as its peers derive
/// it; CHECK finds the state; teardown removes it.
#[test]
fn static_store_ipv6_only_pods_reach_each_other() {
    let c = Cluster::new(2, "192.168.106", 1500);
    ipv6_underlay(&c, "fd00:106");
    for h in &c.hosts {
        h.sh("ip route del default dev ul0 && ip -4 addr flush dev ul0 && ip -6 route add default dev ul0");
    }
    let data = tempfile::tempdir().unwrap();
    let nodes: Vec<Value> = (0..2)
        .map(|i| {
            json!({"underlayIPv6": format!("fd00:106::{}", 10 + i),
                   "ipv6Subnet": format!("fc00:244:0:{}::/64", i + 1)})
        })
        .collect();
    let conf = json!({"cniVersion": "1.1.0", "name": "v6static", "type": "vxlan-overlay",
        "ipv6Network": "fc00:244::/48", "dataDir": data.path(),
        "ipam": {"dataDir": data.path()}, "store": {"type": "static", "nodes": nodes}});
    let pods: Vec<(Ns, String)> = (c.hosts.iter().enumerate())
        .map(|(i, h)| v6_pod(h, &conf, &format!("v6s-{i}")))
        .collect();
    for (i, (ns, addr)) in pods.iter().enumerate() {
        assert!(
            addr.starts_with(&format!("fc00:244:0:{}::", i + 1)),
            "{addr}"
        );
        assert_eq!(ns.link("eth0").unwrap()["mtu"], 1430, "VXLAN over IPv6");
    }
    assert!(reaches6(&pods[0].0, &pods[1].1), "pod 0 to pod 1");
    assert!(reaches6(&pods[1].0, &pods[0].1), "pod 1 to pod 0");
    let macs: Vec<String> = (c.hosts.iter().enumerate())
        .map(|(i, h)| {
            assert!(h.link("flannel.1").is_none(), "no IPv4 device");
            let dev = h.link("flannel-v6.1").expect("flannel-v6.1");
            let local = &dev["linkinfo"]["info_data"];
            let local = local.get("local6").unwrap_or(&local["local"]);
            assert_eq!(local, &format!("fd00:106::{}", 10 + i), "{dev}");
            dev["address"].as_str().unwrap().to_string()
        })
        .collect();
    assert_ne!(macs[0], macs[1]);
    // host 0 knows host 1's MAC without asking it: both derive it from fd00:106::11
    let h0 = &c.hosts[0];
    let fdb = h0.sh("bridge fdb show dev flannel-v6.1");
    assert!(
        fdb.lines()
            .any(|l| l.starts_with(&macs[1]) && l.contains("dst fd00:106::11 ")),
        "{fdb}"
    );
    let neigh = h0.sh("ip -6 neigh show dev flannel-v6.1");
    assert!(
        neigh.contains(&format!("fc00:244:0:2:: lladdr {} PERMANENT", macs[1])),
        "{neigh}"
    );
    let routes = h0.sh("ip -6 route show proto 73");
    assert!(
        routes.contains("fc00:244:0:2::/64 via fc00:244:0:2:: dev flannel-v6.1"),
        "{routes}"
    );
    assert_eq!(h0.sh("ip -4 route show proto 73").trim(), "");
    let check = Call::new("vxlan-overlay", "CHECK", h0, &pods[0].0.path(), "v6s-0");
    let prev = json!({"cniVersion": "1.1.0", "interfaces": [], "ips": []});
    check.run(&with_prev(&conf, &prev)).expect_ok();
    h0.sh(&format!(
        "bridge fdb del {} dev flannel-v6.1 dst fd00:106::11",
        macs[1]
    ));
    let code = check.run(&with_prev(&conf, &prev)).code();
    assert_eq!(code, 104, "CHECK sees the lost FDB entry");
    for (i, (h, (ns, _))) in c.hosts.iter().zip(&pods).enumerate() {
        Call::new("vxlan-overlay", "DEL", h, &ns.path(), &format!("v6s-{i}"))
            .run(&conf)
            .expect_ok();
    }
    let out = overlay_teardown(h0, &conf, false);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !said.contains("unknown"),
        "an IPv6-only network is known: {said}"
    );
    assert!(
        h0.link("flannel-v6.1").is_none(),
        "teardown leaves flannel-v6.1"
    );
    assert_eq!(h0.sh("ip -6 route show proto 73"), "");
}
