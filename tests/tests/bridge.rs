//! bridge + host-local, run as a runtime runs them, for every spec version: the kernel
//! state after ADD, real traffic, CHECK, DEL (also twice, also after the netns is gone).

use std::path::Path;

use cni_tests::*;
use serde_json::Value;

struct Net {
    host: Ns,
    data: tempfile::TempDir,
}

impl Net {
    fn new() -> Net {
        Net {
            host: Ns::new("h"),
            data: tempfile::tempdir().unwrap(),
        }
    }

    fn call<'a>(&'a self, cmd: &'a str, ctr: &str, cid: &str) -> Call<'a> {
        Call::new("bridge", cmd, &self.host, ctr, cid)
    }
}

#[test]
fn add_check_del_in_every_version() {
    for v in MODERN_VERSIONS {
        let net = Net::new();
        let conf = bridge_conf(v, net.data.path(), "10.91.0.0/24", json!({}));
        let (c1, c2) = (Ns::new("c"), Ns::new("c"));
        let r1 = net.call("ADD", &c1.path(), "ctr1").run(&conf).expect_ok();
        let r2 = net.call("ADD", &c2.path(), "ctr2").run(&conf).expect_ok();

        // the result, in the shape of the version asked for
        assert_eq!(r1["cniVersion"], *v);
        let ifaces = r1["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), 3, "{r1}");
        assert_eq!(ifaces[0]["name"], "cnitest0");
        assert_eq!(ifaces[2]["name"], "eth0");
        assert_eq!(ifaces[2]["sandbox"], c1.path());
        let ip = &r1["ips"][0];
        assert_eq!(ip["address"], "10.91.0.2/24");
        assert_eq!(ip["gateway"], "10.91.0.1");
        assert_eq!(ip["interface"], 2);
        assert_eq!(
            ip.get("version").is_some(),
            v.starts_with("0."),
            "{v}: {ip}"
        );
        assert_eq!(
            r1["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.91.0.1"}])
        );
        assert_eq!(r2["ips"][0]["address"], "10.91.0.3/24");

        // the kernel
        assert_eq!(c1.addrs("eth0"), ["10.91.0.2/24"]);
        assert!(c1
            .routes("-4")
            .contains(&"default via 10.91.0.1".to_string()));
        let eth0 = c1.link("eth0").unwrap();
        assert_eq!(eth0["address"], ifaces[2]["mac"]);
        assert!(eth0["flags"].as_array().unwrap().contains(&json!("UP")));
        assert_eq!(net.host.addrs("cnitest0"), ["10.91.0.1/24"]);
        let veth = ifaces[1]["name"].as_str().unwrap();
        assert_eq!(net.host.link(veth).unwrap()["master"], "cnitest0");
        assert_eq!(
            net.host.link("cnitest0").unwrap()["address"],
            ifaces[0]["mac"]
        );
        assert_eq!(net.host.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");

        // traffic
        assert!(c1.ping("10.91.0.3"), "{v}: c1 -> c2");
        assert!(c2.ping("10.91.0.2"), "{v}: c2 -> c1");
        assert!(c1.ping("10.91.0.1"), "{v}: c1 -> gateway");

        // CHECK passes, then fails once the container's address is gone
        if *v >= "0.4.0" {
            let check = with_prev(&conf, &r1);
            net.call("CHECK", &c1.path(), "ctr1")
                .run(&check)
                .expect_ok();
            c1.sh("ip addr del 10.91.0.2/24 dev eth0");
            let bad = net.call("CHECK", &c1.path(), "ctr1").run(&check);
            assert_eq!(bad.code(), 104, "{v}: {}", bad.stdout);
            assert!(bad.stdout.contains("10.91.0.2/24"), "{}", bad.stdout);
        } else {
            assert_eq!(
                net.call("CHECK", &c1.path(), "ctr1")
                    .run(&with_prev(&conf, &r1))
                    .code(),
                1
            );
        }

        // DEL removes everything, and again succeeds
        for _ in 0..2 {
            net.call("DEL", &c1.path(), "ctr1").run(&conf).expect_ok();
            net.call("DEL", &c2.path(), "ctr2").run(&conf).expect_ok();
        }
        assert!(
            net.host.live_veths().is_empty(),
            "{v}: {:?}",
            net.host.link_names()
        );
        assert!(c1.link("eth0").is_none());
        assert_eq!(store_allocations(net.data.path(), "testnet"), 0);
    }
}

#[test]
fn dual_stack_with_mtu_hairpin_and_promisc() {
    let net = Net::new();
    let mut conf = bridge_conf(
        "1.0.0",
        net.data.path(),
        "10.92.0.0/24",
        json!({"mtu": 1400, "hairpinMode": true}),
    );
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.92.0.0/24"}], [{"subnet": "fd92::/64"}]]);
    let (c1, c2) = (Ns::new("c"), Ns::new("c"));
    // as the reference: hairpin and promiscuous mode exclude each other
    let mut both = conf.clone();
    both["promiscMode"] = json!(true);
    assert_eq!(net.call("ADD", &c1.path(), "d1").run(&both).code(), 7);
    let r = net.call("ADD", &c1.path(), "d1").run(&conf).expect_ok();
    let mut promisc = conf.clone();
    promisc["hairpinMode"] = json!(false);
    promisc["promiscMode"] = json!(true);
    net.call("ADD", &c2.path(), "d2").run(&promisc).expect_ok();
    assert_eq!(r["ips"][1]["address"], "fd92::2/64");
    assert_eq!(c1.addrs("eth0"), ["10.92.0.2/24", "fd92::2/64"]);
    assert!(
        c1.routes("-6").contains(&"default via fd92::1".to_string()),
        "{:?}",
        c1.routes("-6")
    );
    assert_eq!(c1.link("eth0").unwrap()["mtu"], 1400);
    let veth = r["interfaces"][1]["name"].as_str().unwrap();
    let host_end = net.host.link(veth).unwrap();
    assert_eq!(host_end["mtu"], 1400);
    assert_eq!(
        host_end["linkinfo"]["info_slave_data"]["hairpin"], true,
        "{host_end}"
    );
    assert!(
        net.host.link("cnitest0").unwrap()["promiscuity"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(c1.ping("fd92::3"), "IPv6 c1 -> c2");
    assert!(c1.ping("fd92::1"), "IPv6 c1 -> gateway");
    net.call("DEL", &c1.path(), "d1").run(&conf).expect_ok();
    net.call("DEL", &c2.path(), "d2").run(&conf).expect_ok();
    assert_eq!(store_allocations(net.data.path(), "testnet"), 0);
}

#[test]
fn ip_masq_hides_containers_behind_the_host() {
    let net = Net::new();
    // a third namespace behind the host, with no route back to the container subnet
    let outside = Ns::new("o");
    net.host.veth_to(&outside, "10.93.9");
    outside.sh("nft add table ip t && nft add chain ip t in '{ type filter hook input priority 0; }' && nft add rule ip t in ip saddr 10.93.9.1 icmp type echo-request counter");

    let conf = bridge_conf(
        "1.0.0",
        net.data.path(),
        "10.93.0.0/24",
        json!({"ipMasq": true}),
    );
    let c = Ns::new("c");
    net.call("ADD", &c.path(), "m1").run(&conf).expect_ok();
    let masq = net.host.sh("nft list set inet cni_rs masq4");
    assert!(masq.contains("10.93.0.2 comment \"testnet/m1\""), "{masq}");
    assert!(
        c.ping("10.93.9.2"),
        "container reaches the outside namespace"
    );
    let counted = outside.sh("nft list chain ip t in");
    assert!(
        !counted.contains("packets 0 "),
        "outside saw no echo requests from the host address: {counted}"
    );

    net.call("DEL", &c.path(), "m1").run(&conf).expect_ok();
    assert!(
        !net.host.nft_ruleset().contains("10.93.0.2"),
        "{}",
        net.host.nft_ruleset()
    );
    net.call("DEL", &c.path(), "m1").run(&conf).expect_ok();
}

#[test]
fn mac_spoof_check_follows_the_containers() {
    let net = Net::new();
    let conf = bridge_conf(
        "1.0.0",
        net.data.path(),
        "10.94.0.0/24",
        json!({"macspoofchk": true}),
    );
    let (c, other) = (Ns::new("c"), Ns::new("c"));
    let r = net.call("ADD", &c.path(), "s1").run(&conf).expect_ok();
    net.call("ADD", &other.path(), "s2").run(&conf).expect_ok();
    let veth = r["interfaces"][1]["name"].as_str().unwrap();
    let mac = r["interfaces"][2]["mac"].as_str().unwrap();
    let rules = net.host.nft_ruleset();
    assert!(
        rules.contains("iifname @ports iifname . ether saddr != @pairs drop")
            && rules.contains(&format!("\"{veth}\" . {mac}")),
        "{rules}"
    );
    assert!(c.ping("10.94.0.1") && other.ping("10.94.0.1"));
    // a forged source MAC is dropped, the other container is not affected
    c.sh("ip link set eth0 address 02:00:00:00:00:99");
    assert!(!c.ping("10.94.0.1"), "spoofed frames must be dropped");
    assert!(other.ping("10.94.0.1"));
    // the same attachment gets the same MAC again, so DEL finds its entry
    net.call("DEL", &c.path(), "s1").run(&conf).expect_ok();
    let again = net.call("ADD", &c.path(), "s1").run(&conf).expect_ok();
    assert_eq!(again["interfaces"][2]["mac"], json!(mac));
    assert!(c.ping("10.94.0.1"));
    for (ns, cid) in [(&c, "s1"), (&other, "s2"), (&other, "s2")] {
        net.call("DEL", &ns.path(), cid).run(&conf).expect_ok();
    }
    let rules = net.host.nft_ruleset();
    assert!(!rules.contains("elements"), "{rules}");
}

/// Once the shared chains and sets exist, an attachment's masquerade and MAC check are
/// set elements added, listed and deleted over netlink: no nft run on its ADD or DEL
/// (with prevResult or without), and the elements read back in nft as nft itself would
/// have written them.
#[test]
fn masquerade_and_mac_check_elements_need_no_nft_run() {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = nft_spy(dir.path());
    let mut conf = bridge_conf(
        "1.0.0",
        net.data.path(),
        "10.95.0.0/24",
        json!({"ipMasq": true, "macspoofchk": true}),
    );
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.95.0.0/24"}], [{"subnet": "fd95::/64"}]]);
    let (c1, c2) = (Ns::new("c"), Ns::new("c"));
    net.call("ADD", &c1.path(), "e1").run(&conf).expect_ok();
    let r = (net.call("ADD", &c2.path(), "e2"))
        .env("PATH", &path)
        .run(&conf)
        .expect_ok();
    let (veth, mac) = (&r["interfaces"][1]["name"], &r["interfaces"][2]["mac"]);
    let sets = net.host.sh("nft list sets");
    for want in [
        "10.95.0.3 comment \"testnet/e2\"".to_string(),
        "10.95.0.3 . 10.95.0.0/24 comment \"testnet/e2\"".to_string(),
        "fd95::3 . fd95::/64 comment \"testnet/e2\"".to_string(),
        format!("{veth} comment \"testnet/e2\""),
        format!("{veth} . {} comment \"testnet/e2\"", mac.as_str().unwrap()),
    ] {
        assert!(sets.contains(&want), "{want} missing:\n{sets}");
    }
    assert!(c2.ping("10.95.0.1"));
    for _ in 0..2 {
        (net.call("DEL", &c2.path(), "e2"))
            .env("PATH", &path)
            .run(&with_prev(&conf, &r))
            .expect_ok();
    }
    let sets = net.host.sh("nft list sets");
    assert!(
        !sets.contains("testnet/e2") && sets.contains("testnet/e1"),
        "{sets}"
    );
    // without prevResult the elements are found by their label
    (net.call("DEL", &c1.path(), "e1"))
        .env("PATH", &path)
        .run(&conf)
        .expect_ok();
    let sets = net.host.sh("nft list sets");
    assert!(!sets.contains("testnet/e1"), "{sets}");
    let runs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(runs.is_empty(), "nft ran: {runs}");
}

#[test]
fn del_after_the_netns_is_gone() {
    let net = Net::new();
    let conf = bridge_conf(
        "1.1.0",
        net.data.path(),
        "10.95.0.0/24",
        json!({"ipMasq": true}),
    );
    let c = Ns::new("c");
    let path = c.path();
    net.call("ADD", &path, "g1").run(&conf).expect_ok();
    drop(c);
    net.call("DEL", &path, "g1").run(&conf).expect_ok();
    net.call("DEL", "", "g1").run(&conf).expect_ok();
    assert!(net.host.live_veths().is_empty());
    assert!(!net.host.nft_ruleset().contains("\"testnet/"));
    assert_eq!(store_allocations(net.data.path(), "testnet"), 0);
}

#[test]
fn bridge_address_of_another_subnet_needs_force_address() {
    let net = Net::new();
    net.host
        .sh("ip link add cnitest0 type bridge && ip addr add 10.96.99.1/24 dev cnitest0");
    let c = Ns::new("c");
    let conf = bridge_conf("1.0.0", net.data.path(), "10.96.0.0/24", json!({}));
    let e = net.call("ADD", &c.path(), "f1").run(&conf);
    assert_eq!(e.code(), 7, "{}", e.stdout);
    assert!(e.stdout.contains("forceAddress"), "{}", e.stdout);
    // the failed ADD left nothing behind
    assert!(net.host.live_veths().is_empty());
    assert!(c.link("eth0").is_none());
    assert_eq!(store_allocations(net.data.path(), "testnet"), 0);
    assert_eq!(net.host.addrs("cnitest0"), ["10.96.99.1/24"]);

    let forced = bridge_conf(
        "1.0.0",
        net.data.path(),
        "10.96.0.0/24",
        json!({"forceAddress": true}),
    );
    net.call("ADD", &c.path(), "f1").run(&forced).expect_ok();
    assert_eq!(net.host.addrs("cnitest0"), ["10.96.0.1/24"]);
    net.call("DEL", &c.path(), "f1").run(&forced).expect_ok();
    // An address beside the gateway the bridge already has goes too.
    net.host.sh("ip addr add 10.96.99.1/24 dev cnitest0");
    net.call("ADD", &c.path(), "f2").run(&forced).expect_ok();
    assert_eq!(net.host.addrs("cnitest0"), ["10.96.0.1/24"]);
    net.call("DEL", &c.path(), "f2").run(&forced).expect_ok();
}

#[test]
fn exhausted_range_fails_cleanly() {
    let net = Net::new();
    let mut conf = bridge_conf("1.0.0", net.data.path(), "10.97.0.0/24", json!({}));
    conf["ipam"]["ranges"] =
        json!([[{"subnet": "10.97.0.0/24", "rangeStart": "10.97.0.10", "rangeEnd": "10.97.0.10"}]]);
    let (c1, c2) = (Ns::new("c"), Ns::new("c"));
    net.call("ADD", &c1.path(), "e1").run(&conf).expect_ok();
    let e = net.call("ADD", &c2.path(), "e2").run(&conf);
    assert_eq!(e.code(), 103);
    assert!(e.stdout.contains("10.97.0.10"), "{}", e.stdout);
    assert_eq!(net.host.live_veths().len(), 1);
    assert!(c2.link("eth0").is_none());
    net.call("DEL", &c1.path(), "e1").run(&conf).expect_ok();
}

#[test]
fn gc_removes_what_the_runtime_no_longer_lists() {
    let net = Net::new();
    let conf = bridge_conf(
        "1.1.0",
        net.data.path(),
        "10.98.0.0/24",
        json!({"ipMasq": true}),
    );
    let (c1, c2) = (Ns::new("c"), Ns::new("c"));
    let r1 = net.call("ADD", &c1.path(), "k1").run(&conf).expect_ok();
    let r2 = net.call("ADD", &c2.path(), "k2").run(&conf).expect_ok();
    let veth = |r: &serde_json::Value| r["interfaces"][1]["name"].as_str().unwrap().to_string();
    assert_eq!(
        net.host.link(&veth(&r2)).unwrap()["ifalias"],
        "cni-rs/k2/eth0/testnet"
    );
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "k1", "ifname": "eth0"}]);
    net.call("GC", "", "").run(&gc).expect_ok();
    assert_eq!(store_allocations(net.data.path(), "testnet"), 1);
    assert!(net.host.link(&veth(&r2)).is_none(), "stale veth left");
    assert!(c2.link("eth0").is_none());
    let rules = net.host.nft_ruleset();
    assert!(
        rules.contains("testnet/k1") && !rules.contains("testnet/k2"),
        "{rules}"
    );
    assert!(c1.ping("10.98.0.1"), "the listed attachment still works");
    assert!(net.host.link(&veth(&r1)).is_some());
    net.call("STATUS", "", "").run(&conf).expect_ok();
    net.call("DEL", &c1.path(), "k1").run(&conf).expect_ok();
    net.call("DEL", &c2.path(), "k2").run(&conf).expect_ok();
}

#[test]
fn layer2_only_without_gateway_or_ipam() {
    let net = Net::new();
    let conf = json!({"cniVersion": "1.0.0", "name": "l2", "type": "bridge", "bridge": "cnil2"});
    let (c1, c2) = (Ns::new("c"), Ns::new("c"));
    let r = net.call("ADD", &c1.path(), "l1").run(&conf).expect_ok();
    net.call("ADD", &c2.path(), "l2").run(&conf).expect_ok();
    assert!(r.get("ips").is_none(), "{r}");
    assert!(net.host.addrs("cnil2").is_empty());
    // the runtime (or a later plugin) addresses the interfaces; the bridge carries the frames
    c1.sh("ip addr add 192.168.77.1/24 dev eth0");
    c2.sh("ip addr add 192.168.77.2/24 dev eth0");
    assert!(c1.ping("192.168.77.2"));
    net.call("DEL", &c1.path(), "l1").run(&conf).expect_ok();
    net.call("DEL", &c2.path(), "l2").run(&conf).expect_ok();
}

#[test]
fn del_retires_the_pair_and_leftover_retired_pairs_are_cleaned() {
    let net = Net::new();
    let conf = bridge_conf("1.1.0", net.data.path(), "10.99.0.0/24", json!({}));
    let (c1, c2) = (Ns::new("c"), Ns::new("c"));
    let veth = |r: &Value| r["interfaces"][1]["name"].as_str().unwrap().to_string();
    let retired = |r: &Value| veth(r).replacen("veth", "vdel", 1);
    // An ADD and its DEL: the container cut off (its end down) and its interface's name
    // free at once, the host end labelled retired until the child DEL started has
    // deleted the pair, shortly after.
    let added_and_deleted = || {
        let r = net.call("ADD", &c1.path(), "r1").run(&conf).expect_ok();
        net.call("DEL", &c1.path(), "r1").run(&conf).expect_ok();
        assert!(net.host.live_veths().is_empty() && c1.link("eth0").is_none());
        if let Some(c) = c1.link(&retired(&r)) {
            assert!(
                c["flags"].as_array().unwrap().iter().all(|f| f != "UP"),
                "{c}"
            );
        }
        assert!(eventually(|| net.host.link(&veth(&r)).is_none()));
        assert!(
            eventually(|| c1.link_names().is_empty()),
            "{:?}",
            c1.link_names()
        );
    };
    added_and_deleted();

    // What a DEL killed once it had retired the pair leaves: its child never ran.
    let retire_by_hand = |c: &Ns, r: &Value| {
        let v = veth(r);
        let alias = net.host.link(&v).unwrap()["ifalias"]
            .as_str()
            .unwrap()
            .replacen("cni-rs/", "cni-rs-retired/", 1);
        net.host.sh(&format!("ip link set {v} alias {alias}"));
        c.sh(&format!(
            "ip link set eth0 down && ip link set eth0 name {}",
            retired(r)
        ));
    };
    // a DEL and at once an ADD of the same attachment: the new pair has the old one's
    // names, and the old pair's child, deleting by index, leaves it alone
    let r = net.call("ADD", &c1.path(), "r1").run(&conf).expect_ok();
    net.call("DEL", &c1.path(), "r1").run(&conf).expect_ok();
    net.call("ADD", &c1.path(), "r1").run(&conf).expect_ok();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(net.host.live_veths(), [veth(&r)]);
    assert!(c1.ping("10.99.0.1"), "the attachment added again works");
    net.call("DEL", &c1.path(), "r1").run(&conf).expect_ok();
    assert!(eventually(|| net.host.link(&veth(&r)).is_none()));
    // the runtime's next DEL deletes the pair and frees the address
    let r = net.call("ADD", &c1.path(), "r1").run(&conf).expect_ok();
    retire_by_hand(&c1, &r);
    net.call("DEL", &c1.path(), "r1").run(&conf).expect_ok();
    assert!(eventually(|| net.host.link(&veth(&r)).is_none()));
    assert!(eventually(|| c1.link(&retired(&r)).is_none()));
    assert_eq!(store_allocations(net.data.path(), "testnet"), 0);

    // an ADD of the attachment again, its retired pair still there: the ADD deletes it
    let r = net.call("ADD", &c1.path(), "r1").run(&conf).expect_ok();
    retire_by_hand(&c1, &r);
    Call::new("host-local", "DEL", &net.host, &c1.path(), "r1")
        .run(&conf)
        .expect_ok();
    net.call("ADD", &c1.path(), "r1").run(&conf).expect_ok();
    assert!(c1.link(&retired(&r)).is_none(), "the retired pair is gone");
    assert!(c1.ping("10.99.0.1"), "the attachment added again works");

    // GC deletes a retired pair although its label names a listed attachment; the live
    // attachment beside it stays
    let r2 = net.call("ADD", &c2.path(), "r2").run(&conf).expect_ok();
    retire_by_hand(&c2, &r2);
    Call::new("host-local", "DEL", &net.host, &c2.path(), "r2")
        .run(&conf)
        .expect_ok();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "r1", "ifname": "eth0"},
        {"containerID": "r2", "ifname": "eth0"}
    ]);
    net.call("GC", "", "").run(&gc).expect_ok();
    assert!(net.host.link(&veth(&r2)).is_none(), "leftover retired pair");
    assert_eq!(
        net.host.live_veths(),
        [veth(&r)],
        "the live attachment stays"
    );
    assert!(c1.ping("10.99.0.1"));

    // a container holding a link of the retired name cannot keep its DEL from working:
    // the pair goes from the host end, the container's own link stays
    c1.sh(&format!(
        "ip link add {} type veth peer name squat0",
        retired(&r)
    ));
    net.call("DEL", &c1.path(), "r1").run(&conf).expect_ok();
    assert!(net.host.live_veths().is_empty());
    assert!(eventually(|| c1.link("eth0").is_none()));
    assert!(eventually(|| net.host.link(&veth(&r)).is_none()));
    assert!(
        c1.link(&retired(&r)).is_some(),
        "the container's own link stays"
    );
    c1.sh(&format!("ip link del {}", retired(&r)));
    added_and_deleted();
}

/// A traced call's marks: (ns, pid, program, phase) in the order written.
type Marks = Vec<(u128, u32, String, String)>;

/// One traced ADD (CNI_RS_TRACE, inherited by a host-local process) with `path` as
/// CNI_PATH, and the marks it left.
fn traced_add(net: &Net, conf: &Value, c: &Ns, cid: &str, path: &Path) -> (Marks, String) {
    let trace = net.data.path().join(format!("trace-{cid}"));
    let r = (net.call("ADD", &c.path(), cid))
        .env("CNI_RS_TRACE", trace.to_str().unwrap())
        .env("CNI_PATH", path.to_str().unwrap())
        .run(conf);
    r.expect_ok();
    let text = std::fs::read_to_string(&trace).expect("a trace file");
    let marks = text
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let ns = f.next().unwrap().parse().unwrap();
            let pid = f.next().unwrap().parse().unwrap();
            let program = f.next().unwrap().to_string();
            (ns, pid, program, f.next().unwrap().to_string())
        })
        .collect();
    (marks, text)
}

fn phases<'m>(marks: &'m Marks, program: &str) -> Vec<&'m str> {
    (marks.iter())
        .filter(|m| m.2 == program)
        .map(|m| m.3.as_str())
        .collect()
}

/// With CNI_RS_TRACE, one ADD leaves the timestamps of its phases on one clock: what
/// `scripts/bench.sh trace` breaks an ADD down with. The host-local on CNI_PATH is this
/// build, so bridge runs it in its own process, on a thread named after it.
#[test]
fn a_traced_add_marks_the_phases_of_bridge_and_its_host_local() {
    let net = Net::new();
    let conf = bridge_conf("1.0.0", net.data.path(), "10.91.0.0/24", json!({}));
    let c = Ns::new("c");
    let (marks, text) = traced_add(&net, &conf, &c, "ctr1", &bin_dir());
    assert_eq!(
        phases(&marks, "bridge"),
        [
            "main",
            "ipam started",
            "bridge ensured",
            "veth created",
            "port attached",
            "ipam answered",
            "rules added",
            "connected in the container",
            "container configured",
            "gateway set",
            "done",
            "printed"
        ],
        "{text}"
    );
    assert_eq!(
        phases(&marks, "host-local"),
        ["flock taken", "store opened", "addresses reserved"],
        "{text}"
    );
    let at = |p: &str, phase: &str| marks.iter().find(|m| m.2 == p && m.3 == phase).unwrap().0;
    assert!(
        at("bridge", "main") <= at("host-local", "flock taken"),
        "{text}"
    );
    assert!(
        at("host-local", "addresses reserved") <= at("bridge", "ipam answered"),
        "{text}"
    );
    // One clock: each thread's marks in the order it made them (two threads' lines may
    // reach the file in the other order than their clock readings).
    for p in ["bridge", "host-local"] {
        let times: Vec<u128> = marks.iter().filter(|m| m.2 == p).map(|m| m.0).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "one clock: {text}");
    }
    net.call("DEL", &c.path(), "ctr1").run(&conf).expect_ok();
}

/// bridge runs host-local in its own process only when the host-local on CNI_PATH is the
/// build linked into it; any other binary of that name (here a script in front of ours)
/// runs as its own process, as a runtime would run it.
#[test]
fn host_local_runs_in_bridges_process_only_when_it_is_the_same_build() {
    let net = Net::new();
    let conf = bridge_conf("1.0.0", net.data.path(), "10.91.0.0/24", json!({}));
    let (c1, c2) = (Ns::new("c"), Ns::new("c"));
    let pids = |marks: &Marks, program: &str| -> Vec<u32> {
        let mut p: Vec<u32> = marks
            .iter()
            .filter(|m| m.2 == program)
            .map(|m| m.1)
            .collect();
        p.dedup();
        p
    };

    let (marks, text) = traced_add(&net, &conf, &c1, "ctr1", &bin_dir());
    assert_eq!(pids(&marks, "host-local"), pids(&marks, "bridge"), "{text}");

    let other = tempfile::tempdir().unwrap();
    let wrapped = other.path().join("host-local");
    let ours = bin_dir().join("host-local");
    std::fs::write(
        &wrapped,
        format!("#!/bin/sh\nexec {} \"$@\"\n", ours.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapped,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (marks, text) = traced_add(&net, &conf, &c2, "ctr2", other.path());
    assert_eq!(phases(&marks, "host-local")[0], "main", "{text}");
    let (b, h) = (pids(&marks, "bridge"), pids(&marks, "host-local"));
    assert!(b.len() == 1 && h.len() == 1 && b != h, "{text}");
    assert!(c2.ping("10.91.0.2"), "ctr2 reaches ctr1 on the bridge");

    for (c, cid) in [(&c1, "ctr1"), (&c2, "ctr2")] {
        net.call("DEL", &c.path(), cid).run(&conf).expect_ok();
    }
}
