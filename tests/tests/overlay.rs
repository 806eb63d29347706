//! vxlan-overlay across hosts (issue 9): three host namespaces on a switch namespace, the
//! same config on every host. Containers on each host reach the others' and their own
//! neighbours, a host reaches a container elsewhere, a TCP transfer arrives intact, the
//! MTU is the VXLAN one; the kernel holds exactly one neighbour, FDB entry and route per
//! peer, a second ADD changes nothing, a peer leaving the table leaves the kernel, a lost
//! device comes back with its MAC; directRouting; DEL and teardown leave nothing.

use std::io::Write;

use cni_tests::*;
use serde_json::Value;

fn overlay(c: &Cluster, data: &std::path::Path, extra: Value) -> Value {
    let nodes: Vec<Value> = (0..c.hosts.len())
        .map(
            |i| json!({"underlayIP": c.underlay_ip(i), "subnet": format!("10.244.{}.0/24", i + 1)}),
        )
        .collect();
    let mut conf = json!({"cniVersion": "1.1.0", "name": "cluster", "type": "vxlan-overlay",
        "network": "10.244.0.0/16", "dataDir": data, "ipam": {"dataDir": data},
        "store": {"type": "static", "nodes": nodes}});
    merge(&mut conf, extra);
    conf
}

/// Adds a container on host `h`; returns it with its address.
fn attach(c: &Cluster, h: usize, conf: &Value, cid: &str) -> (Ns, String) {
    let ns = Ns::new("c");
    let r = Call::new("vxlan-overlay", "ADD", &c.hosts[h], &ns.path(), cid)
        .run(conf)
        .expect_ok();
    (ns, first_ip(&r))
}

/// The overlay state of a host, as `ip` and `bridge` show it.
fn state(h: &Ns) -> (String, String, String) {
    (
        h.sh("ip neigh show dev flannel.1 nud permanent"),
        h.sh("bridge fdb show dev flannel.1"),
        h.sh("ip route show proto 73"),
    )
}

/// A TCP server in `ns` that sends `n` bytes of a fixed pattern to each client.
fn sender(ns: &Ns, n: usize) -> Server {
    Server::spawn(
        ns,
        &format!(
            "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', 5001)); s.listen(4)\ndata = bytes(range(256)) * ({n} // 256)\n\
             while True:\n    c, a = s.accept(); c.sendall(data); c.close()\n"
        ),
    )
}

/// How many bytes a client in `ns` got from `addr`, and whether they were the pattern.
fn receive(ns: &Ns, addr: &str) -> (usize, bool) {
    let script = format!(
        "import socket, time\nfor _ in range(30):\n    try:\n        s = socket.create_connection(('{addr}', 5001), timeout=5); break\n    \
         except OSError:\n        time.sleep(0.1)\nbuf = b''\nwhile True:\n    d = s.recv(65536)\n    if not d: break\n    buf += d\n\
         print(len(buf), buf == bytes(range(256)) * (len(buf) // 256))\n"
    );
    let out = ns.sh(&format!("python3 -c \"{script}\""));
    let mut words = out.split_whitespace();
    let n = words.next().unwrap_or("0").parse().unwrap_or(0);
    (n, words.next() == Some("True"))
}

#[test]
fn containers_on_three_hosts_reach_each_other() {
    let c = Cluster::new(3, "192.168.70", 1500);
    let data: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let conf = |h: usize| overlay(&c, data[h].path(), json!({}));
    let ctrs: Vec<Vec<(Ns, String)>> = (0..3)
        .map(|h| {
            (0..2)
                .map(|j| attach(&c, h, &conf(h), &format!("h{h}c{j}")))
                .collect()
        })
        .collect();
    assert_eq!(
        ctrs[1][0].1, "10.244.2.2",
        "host 1's subnet, host-local's first address"
    );
    for h in 0..3 {
        let (a, _) = &ctrs[h][0];
        for (g, peers) in ctrs.iter().enumerate() {
            for (_, ip) in peers {
                assert!(a.ping(ip), "host {h}'s container -> {ip} on host {g}");
            }
        }
        assert_eq!(a.link("eth0").unwrap()["mtu"], 1450, "VXLAN MTU");
    }
    assert!(
        c.hosts[0].ping(&ctrs[2][1].1),
        "host 0 -> a container on host 2"
    );
    // a few MB across hosts, intact
    let _server = sender(&ctrs[1][0].0, 4 << 20);
    assert_eq!(receive(&ctrs[0][1].0, &ctrs[1][0].1), (4 << 20, true));
    // the MTU: a DF datagram of 1450 bytes crosses, one of 1451 does not
    let (a, far) = (&ctrs[0][0].0, &ctrs[2][0].1);
    assert!(a
        .exec(&format!("ping -c 1 -W 2 -M do -s 1422 {far}"))
        .status
        .success());
    assert!(!a
        .exec(&format!("ping -c 1 -W 2 -M do -s 1423 {far}"))
        .status
        .success());

    // per host: one device, learning off, one neighbour, FDB entry and route per peer
    for h in &c.hosts {
        let dev = h.link("flannel.1").unwrap();
        assert_eq!(dev["linkinfo"]["info_data"]["learning"], false, "{dev}");
        assert_eq!(dev["linkinfo"]["info_data"]["port"], 8472, "{dev}");
        assert_eq!(dev["mtu"], 1450);
        let (neigh, fdb, routes) = state(h);
        assert_eq!(neigh.lines().count(), 2, "{neigh}");
        assert_eq!(
            fdb.lines().filter(|l| l.contains(" dst ")).count(),
            2,
            "{fdb}"
        );
        assert!(
            !fdb.contains("00:00:00:00:00:00"),
            "an all-zero FDB entry: {fdb}"
        );
        assert_eq!(routes.lines().count(), 2, "{routes}");
        assert!(
            routes
                .lines()
                .all(|l| l.contains("onlink") && l.contains("dev flannel.1")),
            "{routes}"
        );
    }
    // a second ADD changes none of it
    let before = state(&c.hosts[0]);
    let (_extra, _) = attach(&c, 0, &conf(0), "h0c9");
    assert_eq!(state(&c.hosts[0]), before);

    // host 2 leaves the table: its state goes on host 0's next ADD
    let mut two = conf(0);
    two["store"]["nodes"].as_array_mut().unwrap().truncate(2);
    let (_last, _) = attach(&c, 0, &two, "h0c8");
    let (neigh, fdb, routes) = state(&c.hosts[0]);
    assert_eq!(
        (neigh.lines().count(), routes.lines().count()),
        (1, 1),
        "{neigh}{routes}"
    );
    assert!(!fdb.contains(&c.underlay_ip(2)), "{fdb}");
    assert!(!routes.contains("10.244.3.0"), "{routes}");
}

#[test]
fn a_lost_device_comes_back_with_its_mac() {
    let c = Cluster::new(2, "192.168.71", 1500);
    let data: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, a_ip) = attach(&c, 0, &overlay(&c, data[0].path(), json!({})), "l0");
    let (b, _) = attach(&c, 1, &overlay(&c, data[1].path(), json!({})), "l1");
    assert!(b.ping(&a_ip));
    let mac = c.hosts[0].link("flannel.1").unwrap()["address"].clone();
    // a reboot, say: the device is gone
    c.hosts[0].sh("ip link del flannel.1");
    assert!(!b.ping(&a_ip));
    let (_again, _) = attach(&c, 0, &overlay(&c, data[0].path(), json!({})), "l2");
    assert_eq!(c.hosts[0].link("flannel.1").unwrap()["address"], mac);
    assert!(b.ping(&a_ip), "the peer reaches the node again, untouched");
    assert!(a.ping("10.244.2.2"));

    // host 0 renumbered to another subnet: its device keeps only the new /32 (the old
    // one, another node's some day, would make the route via it invalid)
    let mut moved = overlay(&c, data[0].path(), json!({}));
    moved["store"]["nodes"][0]["subnet"] = json!("10.244.9.0/24");
    c.hosts[0].sh("ip link del cni0"); // the old gateway goes with the old subnet
    let (_moved, _) = attach(&c, 0, &moved, "l3");
    assert_eq!(c.hosts[0].addrs("flannel.1"), ["10.244.9.0/32"]);
}

#[test]
fn direct_routing_uses_the_underlay_for_on_link_peers() {
    let c = Cluster::new(2, "192.168.72", 1500);
    let data: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let conf = |h: usize| overlay(&c, data[h].path(), json!({"directRouting": true}));
    let (a, _) = attach(&c, 0, &conf(0), "d0");
    let (_b, b_ip) = attach(&c, 1, &conf(1), "d1");
    assert!(a.ping(&b_ip), "across hosts, directly");
    let (neigh, fdb, routes) = state(&c.hosts[0]);
    assert!(
        neigh.trim().is_empty() && !fdb.contains(" dst "),
        "{neigh}{fdb}"
    );
    assert!(
        routes.contains(&format!("10.244.2.0/24 via {} dev ul0", c.underlay_ip(1))),
        "{routes}"
    );
    // the pod MTU stays the VXLAN one: a peer off the underlay's subnet would tunnel
    assert_eq!(a.link("eth0").unwrap()["mtu"], 1450);
}

#[test]
fn del_twice_and_teardown_leave_nothing() {
    let c = Cluster::new(2, "192.168.73", 1500);
    let data = tempfile::tempdir().unwrap();
    let conf = overlay(&c, data.path(), json!({}));
    let (a, _) = attach(&c, 0, &conf, "t0");
    let (_b, _) = attach(&c, 0, &conf, "t1");
    let h = &c.hosts[0];
    let check = Call::new("vxlan-overlay", "CHECK", h, &a.path(), "t0");
    let r = Call::new("vxlan-overlay", "ADD", h, &a.path(), "t0").run(&conf);
    assert!(!r.ok, "a second ADD of a live attachment");
    let prev = json!({"cniVersion": "1.1.0", "interfaces": [], "ips": []});
    check.run(&with_prev(&conf, &prev)).expect_ok();
    h.sh("ip neigh del 10.244.2.0 dev flannel.1");
    assert_eq!(
        check.run(&with_prev(&conf, &prev)).code(),
        104,
        "CHECK sees the lost neighbour"
    );
    for _ in 0..2 {
        Call::new("vxlan-overlay", "DEL", h, &a.path(), "t0")
            .run(&conf)
            .expect_ok();
    }
    assert!(a.link("eth0").is_none());
    assert!(
        h.link("flannel.1").is_some(),
        "shared: the other container still uses it"
    );
    let teardown = |force: bool| overlay_teardown(h, &conf, force);
    let refused = teardown(false);
    assert!(
        !refused.status.success(),
        "teardown with a container attached"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    Call::new("vxlan-overlay", "DEL", h, &_b.path(), "t1")
        .run(&conf)
        .expect_ok();
    assert!(teardown(false).status.success());
    assert!(h.link("flannel.1").is_none() && h.link("cni0").is_none());
    assert!(h.sh("ip route show proto 73").trim().is_empty());
    assert!(!h.nft_ruleset().contains("\"cluster/"));
    assert!(!data.path().join("cluster").exists());
    assert!(h.live_veths().is_empty());
    // a forced teardown with containers attached
    let (_c, _) = attach(&c, 0, &conf, "t2");
    assert!(teardown(true).status.success());
    assert!(h.link("flannel.1").is_none());
}

#[test]
fn teardown_deletes_only_a_bridge() {
    let c = Cluster::new(1, "192.168.74", 1500);
    let data = tempfile::tempdir().unwrap();
    let h = &c.hosts[0];
    // a mistaken `bridge`: the underlay's veth
    let conf = overlay(&c, data.path(), json!({"bridge": "ul0"}));
    let out = overlay_teardown(h, &conf, false);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(h.link("ul0").is_some(), "teardown deleted ul0: {said}");
    assert!(said.contains("ul0 is not a bridge"), "{said}");
    assert_eq!(h.addrs("ul0"), [format!("{}/24", c.underlay_ip(0))]);
}

#[test]
fn teardown_without_a_known_network_leaves_other_overlays_routes() {
    let c = Cluster::new(1, "192.168.75", 1500);
    let h = &c.hosts[0];
    let data = tempfile::tempdir().unwrap();
    // another overlay's direct route: same protocol as ours
    h.sh(&format!(
        "ip route add 10.250.2.0/24 via {} dev ul0 proto 73",
        c.spare_ip(3)
    ));
    // the etcd store, no network in the config and no subnet file
    let conf = json!({"cniVersion": "1.1.0", "name": "lostnet", "type": "vxlan-overlay",
        "dataDir": data.path(), "ipam": {"dataDir": data.path()}, "subnetFile": data.path().join("absent.env"),
        "store": {"type": "etcd", "endpoints": [format!("http://{}:2379", c.spare_ip(2))]}});
    let out = overlay_teardown(h, &conf, false);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let routes = h.sh("ip route show proto 73");
    assert!(routes.contains("10.250.2.0/24"), "{routes} {said}");
}

#[test]
fn del_on_a_node_that_lost_its_subnet_file_removes_the_masquerade_by_label() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let env = data.path().join("subnet.env");
    std::fs::write(
        &env,
        "FLANNEL_NETWORK=10.246.0.0/16\nFLANNEL_SUBNET=10.246.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let conf = json!({"cniVersion": "1.1.0", "name": "lostmasq", "type": "vxlan-overlay",
        "dataDir": data.path(), "ipam": {"dataDir": data.path()}, "subnetFile": env,
        "store": {"type": "etcd", "endpoints": ["http://192.0.2.1:2379"]}});
    let c = Ns::new("c");
    let r = Call::new("vxlan-overlay", "ADD", &host, &c.path(), "lm1")
        .run(&conf)
        .expect_ok();
    let ours = || host.nft_ruleset().matches("\"lostmasq/lm1\"").count();
    assert_eq!(
        ours(),
        2,
        "masquerade and exemption: {}",
        host.nft_ruleset()
    );
    std::fs::remove_file(&env).unwrap();
    Call::new("vxlan-overlay", "DEL", &host, &c.path(), "lm1")
        .run(&with_prev(&conf, &r))
        .expect_ok();
    assert_eq!(ours(), 0, "{}", host.nft_ruleset());
    assert!(c.link("eth0").is_none());
}

#[test]
fn concurrent_adds_on_a_node_without_its_device_all_succeed() {
    let c = Cluster::new(1, "192.168.76", 1500);
    let h = &c.hosts[0];
    let data = tempfile::tempdir().unwrap();
    // a /22 for the node: room for every container of every round
    let nodes = json!([{"underlayIP": c.underlay_ip(0), "subnet": "10.244.4.0/22"}]);
    let conf = overlay(
        &c,
        data.path(),
        json!({"subnetLen": 22, "store": {"type": "static", "nodes": nodes}}),
    )
    .to_string();
    let ifnames: Vec<String> = (0..16).map(|i| format!("eth{i}")).collect();
    let rounds = 60;
    let mut failed = Vec::new();
    for round in 0..rounds {
        // a node without its device (a reboot, say), then a burst of ADDs
        let _ = h.exec("ip link del flannel.1");
        let ctr = Ns::new("c");
        let cid = format!("burst{round}");
        let mut children: Vec<_> = ifnames
            .iter()
            .map(|i| {
                Call::new("vxlan-overlay", "ADD", h, &ctr.path(), &cid)
                    .ifname(i)
                    .start()
            })
            .collect();
        // each waits for its config: written to all at once, they run together
        for child in &mut children {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(conf.as_bytes()).unwrap();
        }
        for child in children {
            let out = child.wait_with_output().unwrap();
            if !out.status.success() {
                failed.push(String::from_utf8_lossy(&out.stdout).to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} ADDs failed: {failed:?}",
        failed.len(),
        rounds * ifnames.len()
    );
    let dev = h.link("flannel.1").unwrap();
    assert_eq!(dev["linkinfo"]["info_data"]["learning"], false, "{dev}");
}
