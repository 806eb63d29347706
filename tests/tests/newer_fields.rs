//! Config fields and behaviours the reference plugins gained after 1.1.1 (v1.2 to v1.9),
//! against the kernel: no newer reference can be built here, so each test checks the
//! reference's documented effect. docs/reference-fields.md lists them all.

use cni_tests::*;
use serde_json::Value;

/// A bridge network (host-local in `data`) on bridge `br0` of a host namespace.
struct Bridged {
    host: Ns,
    data: tempfile::TempDir,
}

impl Bridged {
    fn new() -> Bridged {
        Bridged {
            host: Ns::new("h"),
            data: tempfile::tempdir().unwrap(),
        }
    }

    fn conf(&self, subnet: &str, extra: Value) -> Value {
        let mut c = bridge_conf("1.1.0", self.data.path(), subnet, json!({"bridge": "br0"}));
        merge(&mut c, extra);
        c
    }

    fn call<'a>(&'a self, plugin: &'a str, cmd: &'a str, ctr: &Ns, cid: &str) -> Call<'a> {
        Call::new(plugin, cmd, &self.host, &ctr.path(), cid)
    }
}

fn sysctl(ns: &Ns, key: &str) -> String {
    ns.sh(&format!("cat /proc/sys/{key}")).trim().to_string()
}

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.contains(&json!(flag)))
}

#[test]
fn bridge_port_isolation_keeps_containers_apart_but_not_from_the_gateway() {
    let net = Bridged::new();
    let conf = net.conf("10.120.1.0/24", json!({"portIsolation": true}));
    let (c1, c2) = (Ns::new("c"), Ns::new("c"));
    let r1 = net
        .call("bridge", "ADD", &c1, "iso1")
        .run(&conf)
        .expect_ok();
    net.call("bridge", "ADD", &c2, "iso2")
        .run(&conf)
        .expect_ok();
    let veth = r1["interfaces"][1]["name"].as_str().unwrap();
    let port = net.host.link(veth).unwrap();
    assert_eq!(
        port["linkinfo"]["info_slave_data"]["isolated"], true,
        "{port}"
    );
    assert!(c1.ping("10.120.1.1"), "an isolated port reaches the bridge");
    assert!(
        !c1.ping("10.120.1.3"),
        "isolated ports do not reach each other"
    );

    // Without the field the ports are plain ones.
    let open = net.conf("10.120.2.0/24", json!({"bridge": "br1", "name": "open"}));
    let (c3, c4) = (Ns::new("c"), Ns::new("c"));
    let r3 = net
        .call("bridge", "ADD", &c3, "open1")
        .run(&open)
        .expect_ok();
    net.call("bridge", "ADD", &c4, "open2")
        .run(&open)
        .expect_ok();
    let veth3 = r3["interfaces"][1]["name"].as_str().unwrap();
    assert_eq!(
        net.host.link(veth3).unwrap()["linkinfo"]["info_slave_data"]["isolated"],
        false
    );
    assert!(c3.ping("10.120.2.3"));
}

#[test]
fn bridge_disable_container_interface_leaves_it_down_and_refuses_ipam() {
    let net = Bridged::new();
    let l2 = json!({"cniVersion": "1.1.0", "name": "l2", "type": "bridge", "bridge": "br0",
                    "disableContainerInterface": true});
    let c = Ns::new("c");
    let r = net.call("bridge", "ADD", &c, "down1").run(&l2).expect_ok();
    assert_eq!(r["interfaces"][2]["name"], "eth0", "{r}");
    let eth0 = c.link("eth0").expect("the container interface exists");
    assert!(!has_flag(&eth0, "UP"), "{eth0}");
    let veth = r["interfaces"][1]["name"].as_str().unwrap();
    assert_eq!(net.host.link(veth).unwrap()["master"], "br0");
    net.call("bridge", "DEL", &c, "down1").run(&l2).expect_ok();
    assert!(c.link("eth0").is_none());

    // With IPAM: the reference's error, nothing made, and its DEL still runs.
    let l3 = net.conf("10.120.3.0/24", json!({"disableContainerInterface": true}));
    let c2 = Ns::new("c");
    let out = net.call("bridge", "ADD", &c2, "down2").run(&l3);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert_eq!(
        out.json["msg"],
        "cannot use IPAM when DisableContainerInterface flag is set"
    );
    assert!(c2.link("eth0").is_none());
    assert_eq!(store_allocations(net.data.path(), "testnet"), 0);
    net.call("bridge", "DEL", &c2, "down2").run(&l3).expect_ok();
}

#[test]
fn bridge_enabledad_runs_duplicate_address_detection() {
    let net = Bridged::new();
    let conf = net.conf(
        "fd00:120:4::/64",
        json!({"isGateway": false, "isDefaultGateway": false, "enabledad": true}),
    );
    let c = Ns::new("c");
    let r = net.call("bridge", "ADD", &c, "dad1").run(&conf).expect_ok();
    assert_eq!(r["ips"][0]["address"], "fd00:120:4::2/64");
    assert_eq!(sysctl(&c, "net/ipv6/conf/eth0/accept_dad"), "1");
    assert_eq!(sysctl(&c, "net/ipv6/conf/eth0/enhanced_dad"), "1");
    let addrs = c.ip_json("addr show dev eth0");
    let global = addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["local"] == "fd00:120:4::2")
        .cloned()
        .unwrap();
    assert!(global.get("nodad").is_none(), "{global}");
    assert!(
        global.get("tentative").is_none(),
        "ADD waited for DAD: {global}"
    );

    // An address someone on the segment already holds fails DAD, and so the ADD.
    net.host
        .sh("ip addr add fd00:120:4::3/64 dev br0 nodad && ip link set br0 up");
    let c2 = Ns::new("c");
    let out = net.call("bridge", "ADD", &c2, "dad2").run(&conf);
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.json["msg"].as_str().unwrap().contains("fd00:120:4::3"),
        "{}",
        out.stdout
    );
    assert!(c2.link("eth0").is_none(), "the failed ADD was undone");

    // Without it the address is usable at once (no DAD), as before.
    let plain = net.conf(
        "fd00:120:5::/64",
        json!({"bridge": "br1", "name": "plain", "isGateway": false, "isDefaultGateway": false}),
    );
    let c3 = Ns::new("c");
    net.call("bridge", "ADD", &c3, "dad3")
        .run(&plain)
        .expect_ok();
    assert_eq!(sysctl(&c3, "net/ipv6/conf/eth0/accept_dad"), "0");
}

#[test]
fn ip_masq_backend_takes_the_reference_values_and_refuses_others() {
    let net = Bridged::new();
    for (plugin, backend, subnet) in [
        ("bridge", "nftables", "10.120.6.0/24"),
        ("bridge", "iptables", "10.120.7.0/24"),
        ("ptp", "nftables", "10.120.8.0/24"),
    ] {
        let mut conf = net.conf(
            subnet,
            json!({"type": plugin, "ipMasq": true, "ipMasqBackend": backend,
                   "name": format!("m{}", &subnet[7..8]), "bridge": format!("br{}", &subnet[7..8])}),
        );
        if plugin == "ptp" {
            conf.as_object_mut().unwrap().remove("bridge");
        }
        let c = Ns::new("c");
        let r = net.call(plugin, "ADD", &c, "masq").run(&conf).expect_ok();
        let ip = first_ip(&r);
        let rules = net.host.nft_ruleset();
        assert!(
            rules.contains(&ip),
            "{plugin}/{backend}: {ip} not masqueraded: {rules}"
        );
        net.call(plugin, "DEL", &c, "masq").run(&conf).expect_ok();

        let mut bad = conf.clone();
        bad["ipMasqBackend"] = json!("bogus");
        let c2 = Ns::new("c");
        let out = net.call(plugin, "ADD", &c2, "masq2").run(&bad);
        assert_eq!(out.code(), 7, "{plugin}: {}", out.stdout);
        assert_eq!(out.json["msg"], "unknown ipmasq backend \"bogus\"");
        assert!(c2.link("eth0").is_none());
        // As the reference: read only when masquerading, and never on DEL.
        net.call(plugin, "DEL", &c2, "masq2").run(&bad).expect_ok();
        bad["ipMasq"] = json!(false);
        net.call(plugin, "ADD", &c2, "masq2").run(&bad).expect_ok();
    }
}

#[test]
fn portmap_backend_takes_the_reference_values_and_refuses_others() {
    let host = Ns::new("h");
    let c = Ns::new("c");
    let prev = json!({"cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": c.path()}],
        "ips": [{"address": "10.120.9.2/24", "interface": 0}]});
    let base = json!({"cniVersion": "1.1.0", "name": "pm", "type": "portmap",
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        "prevResult": prev});
    let call = |cmd, conf: &Value| Call::new("portmap", cmd, &host, &c.path(), "pm1").run(conf);
    for backend in ["iptables", "nftables"] {
        let mut conf = base.clone();
        conf["backend"] = json!(backend);
        call("ADD", &conf).expect_ok();
        let rules = host.nft_ruleset();
        assert!(rules.contains("10.120.9.2:80"), "{backend}: {rules}");
        call("DEL", &conf).expect_ok();
        assert!(!host.nft_ruleset().contains("10.120.9.2:80"));
    }
    for (extra, msg) in [
        (json!({"backend": "bogus"}), "unrecognized backend \"bogus\""),
        (
            json!({"backend": "nftables", "externalSetMarkChain": "KUBE-MARK-MASQ"}),
            "nftables backend was requested but configuration contains iptables-specific options [externalSetMarkChain]",
        ),
        (
            json!({"backend": "iptables", "conditionsV4": ["ip", "saddr", "1.2.3.4"]}),
            "iptables backend was requested but configuration contains nftables-specific options [conditionsV4]",
        ),
    ] {
        let mut conf = base.clone();
        merge(&mut conf, extra);
        let out = call("ADD", &conf);
        assert_eq!(out.code(), 7, "{}", out.stdout);
        assert_eq!(out.json["msg"], msg);
    }
    assert!(!host.nft_ruleset().contains("10.120.9.2"));
}

#[test]
fn macvlan_bcqueuelen_and_ndisc_notify() {
    let host = Ns::new("h");
    host.sh(
        "ip link add nic0 type veth peer name nic1 && ip link set nic0 up && ip link set nic1 up",
    );
    let data = tempfile::tempdir().unwrap();
    let conf = json!({"cniVersion": "1.1.0", "name": "mv", "type": "macvlan", "master": "nic0",
        "bcqueuelen": 123,
        "ipam": {"type": "host-local", "dataDir": data.path(),
                 "ranges": [[{"subnet": "fd00:121::/64"}]]}});
    let c = Ns::new("c");
    Call::new("macvlan", "ADD", &host, &c.path(), "mv1")
        .run(&conf)
        .expect_ok();
    let eth0 = c.link("eth0").unwrap();
    assert_eq!(eth0["linkinfo"]["info_data"]["bcqueuelen"], 123, "{eth0}");
    assert_eq!(sysctl(&c, "net/ipv6/conf/eth0/ndisc_notify"), "1");
    Call::new("macvlan", "DEL", &host, &c.path(), "mv1")
        .run(&conf)
        .expect_ok();
}

#[test]
fn ipv6_addresses_are_kept_when_the_container_link_goes_down() {
    let net = Bridged::new();
    let mut conf = net.conf("fd00:122::/64", json!({"type": "ptp"}));
    conf.as_object_mut().unwrap().remove("bridge");
    let c = Ns::new("c");
    net.call("ptp", "ADD", &c, "kd").run(&conf).expect_ok();
    assert_eq!(sysctl(&c, "net/ipv6/conf/eth0/keep_addr_on_down"), "1");
    c.sh("ip link set eth0 down");
    assert!(c.addrs("eth0").iter().any(|a| a.starts_with("fd00:122::")));
}

#[test]
fn bridge_result_dns_is_ipams_unless_the_config_gives_one() {
    let net = Bridged::new();
    let resolv = net.data.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.120.10.53\nsearch ipam.test\n").unwrap();
    let mut conf = net.conf("10.120.10.0/24", json!({}));
    conf["ipam"]["resolvConf"] = json!(resolv);
    let c = Ns::new("c");
    let r = net.call("bridge", "ADD", &c, "dns1").run(&conf).expect_ok();
    assert_eq!(r["dns"]["nameservers"], json!(["10.120.10.53"]), "{r}");
    assert_eq!(r["dns"]["search"], json!(["ipam.test"]), "{r}");

    conf["dns"] = json!({"nameservers": ["10.120.10.54"]});
    let c2 = Ns::new("c");
    let r2 = net
        .call("bridge", "ADD", &c2, "dns2")
        .run(&conf)
        .expect_ok();
    assert_eq!(r2["dns"], json!({"nameservers": ["10.120.10.54"]}), "{r2}");
}

#[test]
fn host_local_routes_keep_their_cni_1_1_fields() {
    let net = Bridged::new();
    let mut conf = net.conf("10.120.11.0/24", json!({"isDefaultGateway": false}));
    conf["ipam"]["routes"] = json!([
        {"dst": "10.120.12.0/24", "priority": 77},
        {"dst": "10.120.13.0/24", "table": 120},
    ]);
    let c = Ns::new("c");
    let r = net.call("bridge", "ADD", &c, "rt1").run(&conf).expect_ok();
    assert_eq!(r["routes"][0]["priority"], 77, "{r}");
    assert_eq!(r["routes"][1]["table"], 120, "{r}");
    let main = c.ip_json("-4 route show 10.120.12.0/24");
    assert_eq!(main[0]["metric"], 77, "{main}");
    let t = c.ip_json("-4 route show table 120");
    assert_eq!(t[0]["dst"], "10.120.13.0/24", "{t}");
}

/// Removes the node's tuning allowlist this test wrote, also when it fails.
struct Allowlist(&'static str);

impl Allowlist {
    fn write(text: &str) -> Allowlist {
        let path = "/etc/cni/tuning/allowlist.conf";
        assert!(
            !std::path::Path::new(path).exists(),
            "{path} exists already; not replacing it"
        );
        std::fs::create_dir_all("/etc/cni/tuning").unwrap();
        std::fs::write(path, text).unwrap();
        Allowlist(path)
    }
}

impl Drop for Allowlist {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
        let _ = std::fs::remove_dir("/etc/cni/tuning");
    }
}

#[test]
fn tuning_refuses_duplicate_sysctls_and_keys_outside_the_allowlist() {
    let host = Ns::new("h");
    let c = Ns::new("c");
    let data = tempfile::tempdir().unwrap();
    let prev = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "lo", "sandbox": c.path()}],
                      "ips": [{"address": "10.120.14.2/24", "interface": 0}]});
    let call = |cmd| Call::new("tuning", cmd, &host, &c.path(), "tu1").ifname("lo");
    let raw = format!(
        r#"{{"cniVersion": "1.1.0", "name": "tu", "type": "tuning", "dataDir": {:?},
            "sysctl": {{"net.ipv4.conf.IFNAME.arp_ignore": "1", "net.ipv4.conf.IFNAME.arp_ignore": "2"}},
            "prevResult": {prev}}}"#,
        data.path()
    );
    let out = call("ADD").run_raw(raw.as_bytes());
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert_eq!(out.json["msg"], "duplicated sysctl keys are not allowed");
    assert_eq!(
        c.sh("cat /proc/sys/net/ipv4/conf/lo/arp_ignore").trim(),
        "0"
    );

    let conf = json!({"cniVersion": "1.1.0", "name": "tu", "type": "tuning", "dataDir": data.path(),
        "sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1", "net.core.somaxconn": "999"},
        "prevResult": prev});
    let list = Allowlist::write("^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]*$\n\n");
    let out = call("ADD").run(&conf);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert_eq!(
        out.json["msg"],
        "Sysctl net.core.somaxconn is not allowed. Only the following sysctls are allowed: [^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]*$]"
    );
    assert_ne!(c.sh("cat /proc/sys/net/core/somaxconn").trim(), "999");
    let mut allowed = conf.clone();
    allowed["sysctl"] = json!({"net.ipv4.conf.IFNAME.arp_ignore": "1"});
    call("ADD").run(&allowed).expect_ok();
    assert_eq!(
        c.sh("cat /proc/sys/net/ipv4/conf/lo/arp_ignore").trim(),
        "1"
    );
    call("DEL").run(&allowed).expect_ok();
    drop(list);
}

#[test]
fn host_device_refuses_a_runtime_device_id_no_bus_has() {
    let host = Ns::new("h");
    host.sh("ip link add nic0 type veth peer name nic1");
    let c = Ns::new("c");
    let data = tempfile::tempdir().unwrap();
    for id in ["mlx5_core.sf.4", "0000:ff:1f.7", "../../devices"] {
        let conf = json!({"cniVersion": "1.1.0", "name": "hd", "type": "host-device",
            "device": "nic0", "dataDir": data.path(), "runtimeConfig": {"deviceID": id}});
        let out = Call::new("host-device", "ADD", &host, &c.path(), "nfhd1").run(&conf);
        assert_eq!(out.code(), 7, "{id}: {}", out.stdout);
        assert_eq!(
            out.json["msg"],
            format!("runtime config DeviceID {id} not found or unsupported")
        );
        assert!(host.link("nic0").is_some(), "{id}: nic0 stays on the host");
        // A device gone from its bus does not keep DEL from succeeding.
        Call::new("host-device", "DEL", &host, &c.path(), "nfhd1")
            .run(&conf)
            .expect_ok();
    }
}

#[test]
fn add_and_del_refuse_the_plugins_own_namespace_unless_overridden() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let conf = json!({"cniVersion": "1.1.0", "name": "own", "type": "ptp",
        "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.120.15.0/24"}]]}});
    let msg = "plugin's netns and netns from CNI_NETNS should not be the same";
    let out = Call::new("ptp", "ADD", &host, &host.path(), "own1").run(&conf);
    assert_eq!(out.code(), 8, "{}", out.stdout);
    assert_eq!(out.json["msg"], msg);
    assert!(
        !host.link_names().iter().any(|n| n.starts_with("veth")),
        "nothing made"
    );
    assert_eq!(store_allocations(data.path(), "own"), 0);
    let out = Call::new("ptp", "DEL", &host, &host.path(), "own1").run(&conf);
    assert_eq!(out.code(), 8, "{}", out.stdout);

    // loopback, told it is intended: brings up the namespace's lo, as asked.
    let lo = json!({"cniVersion": "1.1.0", "name": "own", "type": "loopback"});
    for over in ["true", "TRUE", "1"] {
        Call::new("loopback", "ADD", &host, &host.path(), "own2")
            .ifname("lo")
            .env("CNI_NETNS_OVERRIDE", over)
            .run(&lo)
            .expect_ok();
    }
    let out = Call::new("loopback", "ADD", &host, &host.path(), "own2")
        .ifname("lo")
        .env("CNI_NETNS_OVERRIDE", "yes")
        .run(&lo);
    assert_eq!(out.code(), 8, "{}", out.stdout);
}
