//! Dual stack in the agent and the plugin, in flannel's formats: a network with
//! EnableIPv6 gives every node an IPv6 subnet with its IPv4 one, in flannel's dual-stack
//! lease key, a flannel-v6.N device over the IPv6 underlay and FLANNEL_IPV6_* in the subnet
//! file; pods get both addresses and reach each other over both families; a node
//! flanneld ran dual stack is taken over with its subnets and its pods' addresses.
//! Underlays 192.168.95/96 and fd00:95/96::/64, cluster networks 10.236/10.237 and
//! fc00:236/fc00:237::/48.

use std::time::Duration;

use cni_tests::agent_harness::*;
use cni_tests::*;
use serde_json::{json, Value};

fn dual_config(v4: &str, v6: &str) -> String {
    format!(
        r#"{{"Network":"{v4}","EnableIPv6":true,"IPv6Network":"{v6}","Backend":{{"Type":"vxlan"}}}}"#
    )
}

/// The subnet of a `FLANNEL_*SUBNET` value (its gateway with the prefix): `::1/64` → `::/64`.
fn v6_subnet_of_gateway(gw: &str) -> String {
    let (ip, len) = gw.split_once('/').unwrap();
    let ip: std::net::Ipv6Addr = ip.parse().unwrap();
    format!("{}-{len}", std::net::Ipv6Addr::from(u128::from(ip) - 1))
}

/// Pings `addr` from `from` until it answers (the peers' state may still be on its way).
fn reaches(from: &Ns, addr: &str) -> bool {
    within(Duration::from_secs(15), || from.ping(addr)).is_some()
}

/// A pod on `host` with the agent's config: its namespace and its addresses (v4, v6).
fn dual_pod(host: &Ns, conf: &Value, cid: &str) -> (Ns, String, String) {
    let ns = Ns::new("c");
    let r = Call::new("vxlan-overlay", "ADD", host, &ns.path(), cid)
        .run(conf)
        .expect_ok();
    let ips = all_ips(&r);
    let v4 = ips.iter().find(|a| !a.contains(':')).cloned();
    let v6 = ips.iter().find(|a| a.contains(':')).cloned();
    let (Some(v4), Some(v6)) = (v4, v6) else {
        panic!("not both families in {r}");
    };
    (ns, v4, v6)
}

#[test]
fn dual_stack_cluster_in_flannels_format_pods_reach_each_other_over_both_families() {
    let c = Cluster::new(2, "192.168.95", 1500);
    ipv6_underlay(&c, "fd00:95");
    let etcd = Etcd::start(&c);
    let config = dual_config("10.236.0.0/16", "fc00:236::/48");
    etcd.ctl(&format!("put {PREFIX}/config '{config}'"));
    let agents: Vec<Agent> = (c.hosts.iter())
        .map(|h| Agent::start(h, &etcd, 60, 1))
        .collect();
    let mut pods = Vec::new();
    for (i, (h, a)) in c.hosts.iter().zip(&agents).enumerate() {
        let v6_net = a.env_var("FLANNEL_IPV6_NETWORK", 30);
        assert_eq!(v6_net, "fc00:236::/48", "{}", a.subnet_env().unwrap());
        let v4 = a.subnet(5);
        let v6 = v6_subnet_of_gateway(&a.env_var("FLANNEL_IPV6_SUBNET", 5));
        assert!(
            v6.starts_with("fc00:236:0:") && v6.ends_with("::-64"),
            "{v6}"
        );
        // flannel's dual-stack key, its value with the IPv6 side
        let key = format!("{}&{v6}", key(&v4));
        let value = etcd.ctl(&format!("get --print-value-only '{key}'"));
        let lease: Value = serde_json::from_str(value.trim())
            .unwrap_or_else(|_| panic!("no {key}: {:?}", etcd.get_prefix(PREFIX)));
        assert_eq!(lease["PublicIP"], c.underlay_ip(i), "{lease}");
        assert_eq!(
            lease["PublicIPv6"],
            format!("fd00:95::{}", 10 + i),
            "{lease}"
        );
        assert_eq!(lease["BackendType"], "vxlan");
        let mac6 = lease["BackendV6Data"]["VtepMAC"]
            .as_str()
            .unwrap_or_else(|| panic!("{lease}"));
        assert_eq!(lease["BackendV6Data"]["VNI"], 1);
        // flannel-v6.1 over the IPv6 underlay, with the MAC the lease says
        let dev = h
            .link("flannel-v6.1")
            .unwrap_or_else(|| panic!("{}", a.log()));
        assert_eq!(dev["address"], mac6);
        // iproute2 names an IPv6 local address local6
        let local = &dev["linkinfo"]["info_data"];
        let local = local.get("local6").unwrap_or(&local["local"]);
        assert_eq!(local, &format!("fd00:95::{}", 10 + i), "{dev}");
        let conf = a.conf(&etcd);
        pods.push(dual_pod(h, &conf, &format!("ds-{i}")));
    }
    let (p0, p1) = (&pods[0], &pods[1]);
    assert!(
        reaches(&p0.0, &p1.1),
        "IPv4 across hosts; {}",
        agents[0].log()
    );
    assert!(
        reaches(&p0.0, &p1.2),
        "IPv6 across hosts; {}",
        agents[0].log()
    );
    assert!(reaches(&p1.0, &p0.2), "IPv6 back; {}", agents[1].log());
    // Between pods the sender's own IPv6 address arrives: the plugin's ipMasq (on by
    // default) exempts the IPv6 cluster network as it does the IPv4 one.
    let _srv = Server::start_v6(&p1.0, 7413);
    assert_eq!(
        fetch(&p0.0, &p1.2, 7413).as_deref(),
        Some(format!("hello from {}", p0.2).as_str()),
        "{}",
        c.hosts[0].nft_ruleset()
    );
    // the v6 routes are the agent's, through flannel-v6.1
    let routes = c.hosts[0].sh("ip -6 route show proto 73");
    assert!(routes.contains("dev flannel-v6.1"), "{routes}");
}

/// The lease and devices flanneld leaves on a dual-stack node: `…&…` key, flannel.1 and
/// flannel-v6.1, subnet.env with FLANNEL_IPV6_*.
#[test]
fn a_node_flanneld_ran_dual_stack_is_taken_over_with_its_subnets_and_pods() {
    let c = Cluster::new(2, "192.168.96", 1500);
    ipv6_underlay(&c, "fd00:96");
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!(
        "put {PREFIX}/config '{}'",
        dual_config("10.237.0.0/16", "fc00:237::/48")
    ));
    let h0 = &c.hosts[0];
    let (mac, mac6) = ("6e:1b:5f:6a:2c:01", "6e:1b:5f:6a:2c:02");
    let key0 = format!("{PREFIX}/subnets/10.237.5.0-24&fc00:237:0:5::-64");
    let value = format!(
        r#"{{"PublicIP":"192.168.96.10","PublicIPv6":"fd00:96::10","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
    );
    etcd.ctl(&format!("put '{key0}' '{value}'"));
    h0.sh(&format!(
        "ip link add flannel.1 address {mac} type vxlan id 1 local 192.168.96.10 dev ul0 dstport 8472 nolearning && \
         ip link set flannel.1 mtu 1450 up && ip addr add 10.237.5.0/32 dev flannel.1 && \
         ip link add flannel-v6.1 address {mac6} type vxlan id 1 local fd00:96::10 dev ul0 dstport 8472 nolearning && \
         ip link set flannel-v6.1 mtu 1430 up && ip addr add fc00:237:0:5::/128 dev flannel-v6.1 nodad"
    ));
    let index6 = h0.link("flannel-v6.1").unwrap()["ifindex"].clone();
    let mut a0 = Agent::prepare(h0, &etcd, 60, json!({}));
    let env = "FLANNEL_NETWORK=10.237.0.0/16\nFLANNEL_SUBNET=10.237.5.1/24\nFLANNEL_IPV6_NETWORK=fc00:237::/48\nFLANNEL_IPV6_SUBNET=fc00:237:0:5::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
    std::fs::write(a0.dir.path().join("subnet.env"), env).unwrap();
    // a pod attached while flanneld ran: the plugin reads only the subnet file
    let conf0 = a0.conf(&etcd);
    let (pod0, v4, v6) = dual_pod(h0, &conf0, "fl-0");
    assert!(
        v4.starts_with("10.237.5.") && v6.starts_with("fc00:237:0:5::"),
        "{v4} {v6}"
    );
    a0.restart(1);
    let a1 = Agent::start(&c.hosts[1], &etcd, 60, 1);
    let held = within(Duration::from_secs(20), || a0.log().contains("holding "));
    assert!(held.is_some(), "{}", a0.log());
    assert_eq!(a0.subnet(5), "10.237.5.0/24", "{}", a0.log());
    assert_eq!(a0.env_var("FLANNEL_IPV6_SUBNET", 5), "fc00:237:0:5::1/64");
    // the dual-stack key stays, now renewed by our agent (its value in flannel's form)
    let keys: Vec<String> = (etcd.get_prefix(&format!("{PREFIX}/subnets/")).into_iter())
        .map(|(k, _)| k)
        .collect();
    assert!(keys.contains(&key0), "{keys:?}\n{}", a0.log());
    assert!(!keys.contains(&key("10.237.5.0/24")), "{keys:?}");
    let got = etcd.ctl(&format!("get --print-value-only '{key0}'"));
    let lease: Value = serde_json::from_str(got.trim()).unwrap();
    assert_eq!(lease["PublicIPv6"], "fd00:96::10", "{lease}");
    // both devices kept as they are, with their MACs, which the lease keeps saying
    assert_eq!(lease["BackendData"]["VtepMAC"], mac, "{lease}");
    assert_eq!(
        lease["BackendV6Data"]["VtepMAC"],
        mac6,
        "{lease}\n{}",
        a0.log()
    );
    let dev6 = h0.link("flannel-v6.1").unwrap();
    assert_eq!(dev6["address"], mac6, "{}", a0.log());
    assert_eq!(dev6["ifindex"], index6, "flannel-v6.1 was made again");
    assert_eq!(h0.link("flannel.1").unwrap()["address"], mac);
    // the pod from before reaches a new pod on the other node over both families
    let (pod1, v4_1, v6_1) = dual_pod(&c.hosts[1], &a1.conf(&etcd), "fl-1");
    assert!(reaches(&pod0, &v4_1), "{}", a0.log());
    assert!(reaches(&pod0, &v6_1), "{}\n{}", a0.log(), a1.log());
    assert!(reaches(&pod1, &v6), "{}", a1.log());
}

/// The static store, dual stack: `ipv6Network`, and per node `underlayIPv6` and
/// `ipv6Subnet`; ADD makes flannel-v6.1 and the IPv6 peers; CHECK finds them; teardown
/// removes them.
#[test]
fn static_store_dual_stack_pods_reach_each_other_over_both_families() {
    let c = Cluster::new(2, "192.168.95", 1500);
    ipv6_underlay(&c, "fd00:95");
    let data = tempfile::tempdir().unwrap();
    let nodes: Vec<Value> = (0..2)
        .map(|i| {
            json!({"underlayIP": c.underlay_ip(i), "subnet": format!("10.236.{}.0/24", i + 1),
                   "underlayIPv6": format!("fd00:95::{}", 10 + i),
                   "ipv6Subnet": format!("fc00:236:0:{}::/64", i + 1)})
        })
        .collect();
    let conf = json!({"cniVersion": "1.1.0", "name": "cluster", "type": "vxlan-overlay",
        "network": "10.236.0.0/16", "ipv6Network": "fc00:236::/48", "dataDir": data.path(),
        "store": {"type": "static", "nodes": nodes}});
    let pods: Vec<(Ns, String, String)> = (0..2)
        .map(|i| dual_pod(&c.hosts[i], &conf, &format!("st-{i}")))
        .collect();
    assert!(pods[0].2.starts_with("fc00:236:0:1::"), "{}", pods[0].2);
    assert!(reaches(&pods[0].0, &pods[1].1), "IPv4 across hosts");
    assert!(reaches(&pods[0].0, &pods[1].2), "IPv6 across hosts");
    assert!(reaches(&pods[1].0, &pods[0].2), "IPv6 back");
    let h0 = &c.hosts[0];
    let dev = h0.link("flannel-v6.1").expect("flannel-v6.1");
    let fdb = h0.sh("bridge fdb show dev flannel-v6.1");
    assert!(fdb.contains("dst fd00:95::11 "), "{fdb}\n{dev}");
    let check = Call::new("vxlan-overlay", "CHECK", h0, &pods[0].0.path(), "st-0");
    let prev = json!({"cniVersion": "1.1.0", "interfaces": [], "ips": []});
    check.run(&with_prev(&conf, &prev)).expect_ok();
    h0.sh("ip -6 neigh del fc00:236:0:2:: dev flannel-v6.1");
    let code = check.run(&with_prev(&conf, &prev)).code();
    assert_eq!(code, 104, "CHECK sees the lost IPv6 neighbour");
    for (i, (h, p)) in c.hosts.iter().zip(&pods).enumerate() {
        Call::new("vxlan-overlay", "DEL", h, &p.0.path(), &format!("st-{i}"))
            .run(&conf)
            .expect_ok();
    }
    let out = overlay_teardown(h0, &conf, false);
    assert!(out.status.success(), "{out:?}");
    assert!(
        h0.link("flannel-v6.1").is_none(),
        "teardown leaves flannel-v6.1"
    );
    assert_eq!(h0.sh("ip -6 route show proto 73"), "");
}
