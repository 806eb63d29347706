//! macvlan, ptp, host-device and static IPAM (issue 8), run as a runtime runs them in
//! namespaces of their own, and side by side with Debian's reference plugins.

use cni_tests::*;
use serde_json::Value;

/// A host namespace with a NIC to hang macvlans on: one end of a veth pair whose other
/// end stays in the host namespace too (this kernel has no dummy links).
fn host_with_nic(nic: &str) -> Ns {
    let host = Ns::new("h");
    host.sh(&format!(
        "ip link add {nic} type veth peer name {nic}p && ip link set {nic} up && ip link set {nic}p up"
    ));
    host
}

fn macvlan(name: &str, master: &str, mode: &str, subnet: &str, data: &std::path::Path) -> Value {
    json!({"cniVersion": "1.0.0", "name": name, "type": "macvlan", "master": master, "mode": mode,
        "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": subnet}]]}})
}

fn call<'a>(
    plugin: &'a str,
    cmd: &'a str,
    host: &'a Ns,
    netns: &str,
    cid: &str,
    dir: &std::path::Path,
) -> Call<'a> {
    let mut c = Call::new(plugin, cmd, host, netns, cid);
    c.bin_dir = dir.to_path_buf();
    c
}

#[test]
fn macvlan_bridge_and_private_modes() {
    let host = host_with_nic("mvnic0");
    // a macvlan of the host's own on the same NIC
    host.sh("ip link add mvhost link mvnic0 type macvlan mode bridge && ip addr add 10.82.0.200/24 dev mvhost && ip link set mvhost up");
    let data = tempfile::tempdir().unwrap();
    let conf = macvlan("mvnet", "mvnic0", "bridge", "10.82.0.0/24", data.path());
    let (c1, c2) = (Ns::new("c"), Ns::new("c"));
    let r1 = Call::new("macvlan", "ADD", &host, &c1.path(), "mv1")
        .run(&conf)
        .expect_ok();
    let r2 = Call::new("macvlan", "ADD", &host, &c2.path(), "mv2")
        .run(&conf)
        .expect_ok();
    assert_eq!(r1["interfaces"][0]["name"], "eth0");
    assert_eq!(r1["interfaces"][0]["sandbox"], c1.path());
    assert_eq!(r1["ips"][0]["interface"], 0);
    let eth0 = c1.link("eth0").unwrap();
    assert_eq!(eth0["linkinfo"]["info_kind"], "macvlan");
    assert_eq!(eth0["linkinfo"]["info_data"]["mode"], "bridge");
    assert_eq!(eth0["address"], r1["interfaces"][0]["mac"]);
    assert!(c1.ping(&first_ip(&r2)), "c1 -> c2");
    assert!(c2.ping("10.82.0.200"), "c2 -> the host's macvlan");
    // CHECK passes, then fails once tampered with
    let check = with_prev(&conf, &r1);
    Call::new("macvlan", "CHECK", &host, &c1.path(), "mv1")
        .run(&check)
        .expect_ok();
    c1.sh(&format!("ip addr del {}/24 dev eth0", first_ip(&r1)));
    assert_eq!(
        Call::new("macvlan", "CHECK", &host, &c1.path(), "mv1")
            .run(&check)
            .code(),
        104
    );
    for (c, id) in [(&c1, "mv1"), (&c2, "mv2")] {
        Call::new("macvlan", "DEL", &host, &c.path(), id)
            .run(&conf)
            .expect_ok();
        assert!(c.link("eth0").is_none());
    }

    // private: the two cannot reach each other
    let private = macvlan("mvpriv", "mvnic0", "private", "10.83.0.0/24", data.path());
    let p1 = Call::new("macvlan", "ADD", &host, &c1.path(), "p1")
        .run(&private)
        .expect_ok();
    let p2 = Call::new("macvlan", "ADD", &host, &c2.path(), "p2")
        .run(&private)
        .expect_ok();
    assert_eq!(
        c1.link("eth0").unwrap()["linkinfo"]["info_data"]["mode"],
        "private"
    );
    assert!(!c1.ping(&first_ip(&p2)), "private mode let c1 reach c2");
    let _ = p1;
    // DEL after the namespace is gone, and twice
    let path = c2.path();
    drop(c2);
    for _ in 0..2 {
        Call::new("macvlan", "DEL", &host, &path, "p2")
            .run(&private)
            .expect_ok();
    }
    Call::new("macvlan", "DEL", &host, &c1.path(), "p1")
        .run(&private)
        .expect_ok();
    assert_eq!(store_allocations(data.path(), "mvnet"), 0);
    assert_eq!(store_allocations(data.path(), "mvpriv"), 0);
}

#[test]
fn macvlan_del_retires_the_link_and_a_later_del_or_add_deletes_what_a_killed_one_left() {
    let host = host_with_nic("mvnic3");
    host.sh("ip link add mvhost3 link mvnic3 type macvlan mode bridge && ip addr add 10.86.0.200/24 dev mvhost3 && ip link set mvhost3 up");
    let host_links = host.link_names();
    let data = tempfile::tempdir().unwrap();
    let conf = macvlan("mvret", "mvnic3", "bridge", "10.86.0.0/24", data.path());
    let c = Ns::new("c");
    let retired = retired_name("mvret", "rt1", "eth0");
    let call = |cmd| Call::new("macvlan", cmd, &host, &c.path(), "rt1");
    // DEL, and at once an ADD: the old link, down and renamed, frees the name and the MAC
    // for the new one, and its deleter, deleting by index in the container, spares it
    call("ADD").run(&conf).expect_ok();
    call("DEL").run(&conf).expect_ok();
    call("ADD").run(&conf).expect_ok();
    assert!(
        eventually(|| c.link(&retired).is_none()),
        "{:?}",
        c.link_names()
    );
    assert!(c.ping("10.86.0.200"), "the link added again works");
    assert_eq!(host.link_names(), host_links, "a host link went");
    call("DEL").run(&conf).expect_ok();
    assert!(c.link("eth0").is_none());
    if let Some(l) = c.link(&retired) {
        assert!(
            l["flags"].as_array().unwrap().iter().all(|f| f != "UP"),
            "{l}"
        );
    }
    assert!(
        eventually(|| c.link_names().is_empty()),
        "{:?}",
        c.link_names()
    );

    // what a DEL killed once it had retired the link leaves: the runtime's next DEL
    // deletes it and frees the address, or the attachment's next ADD deletes it
    let retire_by_hand = || {
        c.sh(&format!(
            "ip link set eth0 down && ip link set eth0 name {retired}"
        ))
    };
    call("ADD").run(&conf).expect_ok();
    retire_by_hand();
    call("DEL").run(&conf).expect_ok();
    assert!(c.link(&retired).is_none(), "the retired link is left");
    assert_eq!(store_allocations(data.path(), "mvret"), 0);
    call("ADD").run(&conf).expect_ok();
    retire_by_hand();
    // (that DEL had released the address before it was killed)
    Call::new("host-local", "DEL", &host, &c.path(), "rt1")
        .run(&conf)
        .expect_ok();
    call("ADD").run(&conf).expect_ok();
    assert!(c.link(&retired).is_none(), "the ADD left the retired link");
    assert!(c.ping("10.86.0.200"), "the link added again works");
    call("DEL").run(&conf).expect_ok();

    // a link of the retired name that is not ours (another kind, or a macvlan with
    // another MAC) stays, and the DEL still works
    for squat in [
        format!(
            "ip link add {retired} netns {0} type veth peer name squat0 netns {0}",
            c.name
        ),
        format!(
            "ip link add {retired} link mvnic3 netns {} type macvlan",
            c.name
        ),
    ] {
        host.sh(&squat);
        call("ADD").run(&conf).expect_ok();
        call("DEL").run(&conf).expect_ok();
        assert!(c.link("eth0").is_none());
        assert!(c.link(&retired).is_some(), "the container's own link stays");
        assert_eq!(store_allocations(data.path(), "mvret"), 0);
        c.sh(&format!("ip link del {retired}"));
    }

    // passthru (one macvlan per master): DEL deletes before it returns, so an ADD on the
    // same master can follow at once
    let nic = host_with_nic("mvnic4");
    let pass = macvlan("mvpass", "mvnic4", "passthru", "10.87.0.0/24", data.path());
    let p = Ns::new("c");
    for _ in 0..3 {
        Call::new("macvlan", "ADD", &nic, &p.path(), "pt1")
            .run(&pass)
            .expect_ok();
        Call::new("macvlan", "DEL", &nic, &p.path(), "pt1")
            .run(&pass)
            .expect_ok();
        assert!(p.link_names().is_empty(), "{:?}", p.link_names());
    }
}

#[test]
fn macvlan_mtu_master_and_link_in_container() {
    let host = host_with_nic("mvnic1");
    host.sh("ip link set mvnic1 mtu 1400");
    let data = tempfile::tempdir().unwrap();
    let c = Ns::new("c");
    for (extra, code) in [
        (json!({"mtu": 1500}), 7),
        (json!({"master": "nosuchnic"}), 7),
        (json!({"mode": "sideways"}), 7),
    ] {
        let mut conf = macvlan("mvbad", "mvnic1", "bridge", "10.84.0.0/24", data.path());
        merge(&mut conf, extra.clone());
        let out = Call::new("macvlan", "ADD", &host, &c.path(), "b1").run(&conf);
        assert_eq!(out.code(), code, "{extra}: {}", out.stdout);
        assert!(c.link("eth0").is_none(), "{extra}");
        assert_eq!(store_allocations(data.path(), "mvbad"), 0, "{extra}");
    }
    let mut conf = macvlan("mvmtu", "mvnic1", "bridge", "10.84.0.0/24", data.path());
    conf["mtu"] = json!(1300);
    Call::new("macvlan", "ADD", &host, &c.path(), "m1")
        .run(&conf)
        .expect_ok();
    assert_eq!(c.link("eth0").unwrap()["mtu"], 1300);
    Call::new("macvlan", "DEL", &host, &c.path(), "m1")
        .run(&conf)
        .expect_ok();

    // the master lives in the container
    let c2 = Ns::new("c");
    host.sh(&format!("ip link set mvnic1p netns {}", c2.name));
    c2.sh("ip link set mvnic1p up");
    let mut conf = macvlan("mvin", "mvnic1p", "bridge", "10.85.0.0/24", data.path());
    conf["linkInContainer"] = json!(true);
    conf["ipam"] = json!({});
    let r = Call::new("macvlan", "ADD", &host, &c2.path(), "in1")
        .run(&conf)
        .expect_ok();
    let eth0 = c2.link("eth0").unwrap();
    assert_eq!(eth0["link"], "mvnic1p", "{eth0}");
    assert!(
        r.get("ips").is_none() && c2.addrs("eth0").is_empty(),
        "no IPAM, no address"
    );
    assert!(eth0["flags"].as_array().unwrap().contains(&json!("UP")));
    Call::new("macvlan", "DEL", &host, &c2.path(), "in1")
        .run(&conf)
        .expect_ok();
    assert!(c2.link("eth0").is_none());
}

#[test]
fn macvlan_with_static_ipam_gets_exactly_the_config() {
    let host = host_with_nic("mvnic2");
    let c = Ns::new("c");
    let conf = json!({"cniVersion": "1.0.0", "name": "stnet", "type": "macvlan", "master": "mvnic2",
        "ipam": {"type": "static",
                 "addresses": [{"address": "10.86.0.10/24", "gateway": "10.86.0.1"},
                               {"address": "fd86::10/64", "gateway": "fd86::1"}],
                 "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.200.0.0/16", "gw": "10.86.0.254"}],
                 "dns": {"nameservers": ["10.86.0.53"], "domain": "example.org"}}});
    let r = Call::new("macvlan", "ADD", &host, &c.path(), "s1")
        .run(&conf)
        .expect_ok();
    assert_eq!(
        r["ips"],
        json!([{"address": "10.86.0.10/24", "gateway": "10.86.0.1", "interface": 0},
               {"address": "fd86::10/64", "gateway": "fd86::1", "interface": 0}])
    );
    assert_eq!(
        r["routes"][1],
        json!({"dst": "10.200.0.0/16", "gw": "10.86.0.254"})
    );
    assert_eq!(c.addrs("eth0"), ["10.86.0.10/24", "fd86::10/64"]);
    let routes = c.routes("-4");
    assert!(
        routes.contains(&"default via 10.86.0.1".to_string()),
        "{routes:?}"
    );
    assert!(
        routes.contains(&"10.200.0.0/16 via 10.86.0.254".to_string()),
        "{routes:?}"
    );
    // the IPAM plugin's own DNS is not the result's: the config's `dns` is (none here)
    assert!(r.get("dns").is_none(), "{r}");
    // runtimeConfig ips replace the config's, CNI_ARGS add to them
    let c2 = Ns::new("c");
    let mut rc = conf.clone();
    rc["runtimeConfig"] = json!({"ips": ["10.86.0.77/24"]});
    let r2 = Call::new("macvlan", "ADD", &host, &c2.path(), "s2")
        .run(&rc)
        .expect_ok();
    assert_eq!(r2["ips"].as_array().unwrap().len(), 1);
    assert_eq!(c2.addrs("eth0"), ["10.86.0.77/24"]);
    Call::new("macvlan", "DEL", &host, &c2.path(), "s2")
        .run(&rc)
        .expect_ok();
    let c3 = Ns::new("c");
    let r3 = Call::new("macvlan", "ADD", &host, &c3.path(), "s3")
        .env(
            "CNI_ARGS",
            "IgnoreUnknown=1;IP=10.86.1.5/24,10.86.2.5/24;GATEWAY=10.86.1.1",
        )
        .run(&conf)
        .expect_ok();
    assert_eq!(r3["ips"].as_array().unwrap().len(), 4, "{r3}");
    assert_eq!(
        r3["ips"][2],
        json!({"address": "10.86.1.5/24", "gateway": "10.86.1.1", "interface": 0})
    );
    // static's CHECK and a bad address
    let check = with_prev(&conf, &r);
    Call::new("static", "CHECK", &host, &c.path(), "s1")
        .run(&check)
        .expect_ok();
    let mut bad = conf.clone();
    bad["ipam"]["addresses"][0]["address"] = json!("10.86.0.10");
    let c4 = Ns::new("c");
    assert_eq!(
        Call::new("macvlan", "ADD", &host, &c4.path(), "s4")
            .run(&bad)
            .code(),
        7
    );
    assert!(c4.link("eth0").is_none(), "the failed ADD left its macvlan");
}

#[test]
fn ptp_routes_without_a_bridge() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": "ptpnet", "type": "ptp", "ipMasq": true, "mtu": 1400,
        "ipam": {"type": "host-local", "dataDir": data.path(),
                 "ranges": [[{"subnet": "10.87.0.0/24"}], [{"subnet": "fd87::/64"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]}});
    let (c1, c2) = (Ns::new("c"), Ns::new("c"));
    let r1 = Call::new("ptp", "ADD", &host, &c1.path(), "p1")
        .run(&conf)
        .expect_ok();
    let r2 = Call::new("ptp", "ADD", &host, &c2.path(), "p2")
        .run(&conf)
        .expect_ok();
    assert_eq!(r1["interfaces"][1]["name"], "eth0");
    assert_eq!(r1["ips"][0]["interface"], 1);
    let veth = r1["interfaces"][0]["name"].as_str().unwrap();
    assert!(host.link(veth).unwrap()["master"].is_null(), "no bridge");
    assert!(host
        .ip_json("link show type bridge")
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(host.addrs(veth), ["10.87.0.1/32", "fd87::1/128"]);
    let host_routes = host.routes("-4");
    assert!(
        host_routes.contains(&format!("{} via -", first_ip(&r1))),
        "{host_routes:?}"
    );
    assert_eq!(c1.link("eth0").unwrap()["mtu"], 1400);
    let routes = c1.routes("-4");
    for want in [
        "10.87.0.1 via -",
        "10.87.0.0/24 via 10.87.0.1",
        "default via 10.87.0.1",
    ] {
        assert!(routes.contains(&want.to_string()), "{want}: {routes:?}");
    }
    assert!(c1.ping(&first_ip(&r2)), "c1 -> c2 through the host");
    assert!(host.ping(&first_ip(&r1)), "host -> c1");
    assert!(c2.ping("fd87::2"), "IPv6 c2 -> c1");
    assert!(host
        .sh("nft list set inet cni_rs masq4")
        .contains(&first_ip(&r1)));
    let check = with_prev(&conf, &r1);
    Call::new("ptp", "CHECK", &host, &c1.path(), "p1")
        .run(&check)
        .expect_ok();
    for (c, id) in [(&c1, "p1"), (&c2, "p2")] {
        Call::new("ptp", "DEL", &host, &c.path(), id)
            .run(&conf)
            .expect_ok();
    }
    assert!(host.link(veth).is_none());
    assert!(
        !host.routes("-4").iter().any(|r| r.starts_with("10.87.")),
        "{:?}",
        host.routes("-4")
    );
    assert!(!host.nft_ruleset().contains("ptpnet/"));
    assert_eq!(store_allocations(data.path(), "ptpnet"), 0);
}

#[test]
fn host_device_goes_in_and_comes_back() {
    let host = Ns::new("h");
    host.sh("ip link add hdev0 type veth peer name hdev0p && ip addr add 10.88.0.5/24 dev hdev0 && ip link set hdev0 up && ip link set hdev0p up");
    let mac = host.link("hdev0").unwrap()["address"].clone();
    let c = Ns::new("c");
    let conf = json!({"cniVersion": "1.0.0", "name": "hdnet", "type": "host-device", "device": "hdev0",
        "ipam": {"type": "static", "addresses": [{"address": "10.88.1.5/24"}]}});
    let r = Call::new("host-device", "ADD", &host, &c.path(), "hd1")
        .run(&conf)
        .expect_ok();
    assert_eq!(
        r["interfaces"][0],
        json!({"name": "eth0", "mac": mac, "sandbox": c.path()})
    );
    assert!(host.link("hdev0").is_none());
    assert_eq!(c.addrs("eth0"), ["10.88.1.5/24"]);
    Call::new("host-device", "CHECK", &host, &c.path(), "hd1")
        .run(&with_prev(&conf, &r))
        .expect_ok();
    Call::new("host-device", "DEL", &host, &c.path(), "hd1")
        .run(&conf)
        .expect_ok();
    assert!(c.link("eth0").is_none());
    assert_eq!(
        host.addrs("hdev0"),
        ["10.88.0.5/24"],
        "name and address back"
    );
    assert!(host.link("hdev0").unwrap()["flags"]
        .as_array()
        .unwrap()
        .contains(&json!("UP")));
    Call::new("host-device", "DEL", &host, &c.path(), "hd1")
        .run(&conf)
        .expect_ok();

    // found by MAC; then the namespace goes away with it (a veth end dies with it)
    let by_mac =
        json!({"cniVersion": "1.0.0", "name": "hdnet", "type": "host-device", "hwaddr": mac});
    Call::new("host-device", "ADD", &host, &c.path(), "hd2")
        .run(&by_mac)
        .expect_ok();
    let path = c.path();
    drop(c);
    Call::new("host-device", "DEL", &host, &path, "hd2")
        .run(&by_mac)
        .expect_ok();
    for bad in [
        json!({}),
        json!({"kernelpath": "/etc/../sys/devices"}),
        json!({"device": "nosuchdev"}),
    ] {
        let mut conf = json!({"cniVersion": "1.0.0", "name": "hdnet", "type": "host-device"});
        merge(&mut conf, bad.clone());
        let c = Ns::new("c");
        assert_eq!(
            Call::new("host-device", "ADD", &host, &c.path(), "hd3")
                .run(&conf)
                .code(),
            7,
            "{bad}"
        );
    }
}

/// The parts of a result that must agree between the two: addresses, routes, DNS, and
/// the interfaces' names and sandboxes (MACs and host veth names are random there).
fn meaning(r: &Value) -> Value {
    let mut m = r.clone();
    if m["dns"] == json!({}) {
        m.as_object_mut().unwrap().remove("dns");
    }
    if let Some(ifaces) = m["interfaces"].as_array_mut() {
        for i in ifaces {
            i.as_object_mut().unwrap().remove("mac");
            if i.get("sandbox").is_some() {
                i["sandbox"] = json!("the container");
            }
            if i["name"].as_str().is_some_and(|n| n.starts_with("veth")) {
                i["name"] = json!("veth");
            }
        }
    }
    m
}

#[test]
fn same_meaning_as_the_reference() {
    let both = [bin_dir(), reference_dir()];
    for v in &VERSIONS[2..6] {
        let results: Vec<Vec<Value>> = both
            .iter()
            .map(|dir| {
                let host = host_with_nic("cmpnic0");
                let data = tempfile::tempdir().unwrap();
                let c = Ns::new("c");
                let mut out = Vec::new();
                for (plugin, conf) in [
                    ("macvlan", macvlan("cmpmv", "cmpnic0", "bridge", "10.89.0.0/24", data.path())),
                    ("ptp", json!({"name": "cmpptp", "type": "ptp", "ipMasq": false,
                        "ipam": {"type": "host-local", "dataDir": data.path(),
                                 "ranges": [[{"subnet": "10.90.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}})),
                    ("macvlan", json!({"name": "cmpst", "type": "macvlan", "master": "cmpnic0",
                        "ipam": {"type": "static", "addresses": [{"address": "10.91.0.9/24", "gateway": "10.91.0.1"}],
                                 "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.91.0.53"]}}})),
                ] {
                    let mut conf = conf;
                    conf["cniVersion"] = json!(v);
                    let r = call(plugin, "ADD", &host, &c.path(), "cmp1", dir).run(&conf).expect_ok();
                    out.push(meaning(&r));
                    call(plugin, "DEL", &host, &c.path(), "cmp1", dir).run(&conf).expect_ok();
                    assert!(c.link("eth0").is_none(), "{plugin} {v}");
                }
                out
            })
            .collect();
        assert_eq!(results[0], results[1], "{v}: ours, then the reference's");
    }
}

/// A device handed in by the reference plugin (a node that switched to ours meanwhile)
/// goes back on our DEL as the reference would send it: under the name its alias holds.
#[test]
fn host_device_del_gives_back_a_device_the_reference_handed_in() {
    let host = host_with_nic("hdref0");
    let c = Ns::new("c");
    let data = tempfile::tempdir().unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": "hdref", "type": "host-device",
        "device": "hdref0", "dataDir": data.path()});
    Call::new("host-device", "ADD", &host, &c.path(), "hr1")
        .reference()
        .run(&conf)
        .expect_ok();
    assert!(host.link("hdref0").is_none() && c.link("eth0").is_some());
    Call::new("host-device", "DEL", &host, &c.path(), "hr1")
        .run(&conf)
        .expect_ok();
    assert!(
        host.link("hdref0").is_some(),
        "the device stayed in the container"
    );
    assert!(c.link("eth0").is_none());
}
