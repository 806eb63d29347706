//! What a node switched from flanneld keeps doing at the packet path (issue 18): the
//! FORWARD accept for the cluster network on hosts whose iptables FORWARD policy is DROP
//! (static store: the plugin; etcd store: the agent, which puts it back), the node
//! masquerade of `--ip-masq` (FLANNEL_IPMASQ=true; pods keep their addresses between
//! nodes, the world sees the node's), hairpin through a host DNAT, host-local's store
//! where flannel's CNI keeps it (a flannel reservation and one of our old store are never
//! handed out again), and a config with no store that reads only the subnet file.

use std::path::Path;
use std::time::Duration;

use cni_tests::agent_harness::*;
use cni_tests::*;
use serde_json::Value;

/// The static-store config of cluster `c` on `network` (10.X.0.0/16; host i holds
/// 10.X.(i+1).0/24), every store under `dir`.
fn static_conf(c: &Cluster, name: &str, x: u8, dir: &Path) -> Value {
    let nodes: Vec<Value> = (0..c.hosts.len())
        .map(
            |i| json!({"underlayIP": c.underlay_ip(i), "subnet": format!("10.{x}.{}.0/24", i + 1)}),
        )
        .collect();
    json!({"cniVersion": "1.1.0", "name": name, "type": "vxlan-overlay",
        "network": format!("10.{x}.0.0/16"), "dataDir": dir.join("data"),
        "ipam": {"dataDir": dir.join("ipam")},
        "store": {"type": "static", "nodes": nodes}})
}

fn attach_to(host: &Ns, conf: &Value, cid: &str) -> (Ns, String) {
    let ns = Ns::new("c");
    let r = Call::new("vxlan-overlay", "ADD", host, &ns.path(), cid)
        .run(conf)
        .expect_ok();
    (ns, first_ip(&r))
}

fn drop_forwarding(h: &Ns) {
    h.sh("iptables -P FORWARD DROP && ip6tables -P FORWARD DROP");
}

#[test]
fn pods_cross_hosts_whose_forward_policy_is_drop_static_store() {
    let c = Cluster::new(2, "192.168.97", 1500);
    let dir = tempfile::tempdir().unwrap();
    for h in &c.hosts {
        drop_forwarding(h);
    }
    let conf = static_conf(&c, "fwdnet", 226, dir.path());
    let (a, a_ip) = attach_to(&c.hosts[0], &conf, "fw0");
    let (b, b_ip) = attach_to(&c.hosts[1], &conf, "fw1");
    assert!(
        a.ping(&b_ip),
        "pod on host 0 cannot reach {b_ip} through FORWARD DROP:\n{}\n{}",
        c.hosts[0].sh("iptables -S FORWARD"),
        c.hosts[0].nft_ruleset()
    );
    assert!(b.ping(&a_ip));
    for h in &c.hosts {
        assert!(h
            .sh("iptables -S FORWARD")
            .contains("accepted by inet cni_rs"));
    }
    for (h, ns, cid) in [(&c.hosts[0], &a, "fw0"), (&c.hosts[1], &b, "fw1")] {
        Call::new("vxlan-overlay", "DEL", h, &ns.path(), cid)
            .run(&conf)
            .expect_ok();
    }
    let out = overlay_teardown(&c.hosts[0], &conf, true);
    assert!(out.status.success(), "{out:?}");
    assert!(!c.hosts[0]
        .sh("nft list set inet cni_rs cluster4")
        .contains("10.226.0.0/16"));
}

#[test]
fn the_agent_keeps_forwarding_and_masquerades_for_the_node_with_ip_masq() {
    let c = Cluster::new(2, "192.168.98", 1500);
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!(
        "put {PREFIX}/config '{{\"Network\": \"10.227.0.0/16\", \"Backend\": {{\"Type\": \"vxlan\"}}}}'"
    ));
    for h in &c.hosts {
        drop_forwarding(h);
    }
    let store = json!({"store": {"type": "etcd", "endpoints": [etcd.url], "prefix": PREFIX,
        "leaseTTL": 60, "ipMasq": true}});
    let agents: Vec<Agent> = c
        .hosts
        .iter()
        .map(|h| Agent::start_with(h, &etcd, 60, 1, store.clone()))
        .collect();
    let subnets: Vec<String> = agents.iter().map(|a| a.subnet(30)).collect();
    let confs: Vec<Value> = agents.iter().map(|a| a.conf(&etcd)).collect();
    let (a, a_ip) = attach(&c.hosts[0], &confs[0], "mq0");
    let (b, b_ip) = attach(&c.hosts[1], &confs[1], "mq1");
    assert!(in_subnet(&a_ip, &subnets[0]) && in_subnet(&b_ip, &subnets[1]));
    // The plugin leaves masquerade to the node.
    assert!(!c.hosts[0]
        .nft_ruleset()
        .contains(&format!("{a_ip} comment")));
    // Between pods: the sender's own address, through FORWARD DROP.
    let _srv_b = Server::start(&b, 7411);
    let got = fetch(&a, &b_ip, 7411);
    assert_eq!(
        got.as_deref(),
        Some(format!("hello from {a_ip}").as_str()),
        "{}\n{}",
        c.hosts[0].nft_ruleset(),
        agents[0].log()
    );
    let env = agents[0].subnet_env().unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");
    // The plugin leaves masquerade to the node.
    assert!(!c.hosts[0]
        .nft_ruleset()
        .contains(&format!("{a_ip} comment")));
    // Outside the cluster network: the node's address.
    let ext = Ns::new("x");
    c.hosts[0].veth_to(&ext, "192.168.97");
    let _srv_x = Server::start(&ext, 7412);
    assert_eq!(
        fetch(&a, "192.168.97.2", 7412).as_deref(),
        Some("hello from 192.168.97.1"),
        "{}",
        c.hosts[0].nft_ruleset()
    );
    // flanneld resyncs its rules: a lost iptables rule comes back at the next reconcile.
    let rule = "-m mark --mark 0x200000/0x200000 -m comment --comment \"cni-rs firewall: accepted by inet cni_rs\" -j ACCEPT";
    c.hosts[1].sh(&format!("iptables -D FORWARD {rule}"));
    let back = within(Duration::from_secs(10), || {
        c.hosts[1]
            .sh("iptables -S FORWARD")
            .contains("accepted by inet cni_rs")
    });
    assert!(back.is_some(), "{}", agents[1].log());
    assert!(a.ping(&b_ip));
}

#[test]
fn hairpin_through_a_host_dnat() {
    let c = Cluster::new(1, "192.168.97", 1500);
    let dir = tempfile::tempdir().unwrap();
    let conf = static_conf(&c, "hairnet", 228, dir.path());
    let h = &c.hosts[0];
    h.sh("sysctl -qw net.bridge.bridge-nf-call-iptables=1");
    let (p, p_ip) = attach_to(h, &conf, "hp0");
    // A Service address whose only endpoint is the pod, as kube-proxy makes it.
    h.sh(&format!(
        "nft -f - <<'EOF'\n\
         table ip svc {{\n\
           chain pre {{ type nat hook prerouting priority dstnat; ip daddr 10.96.0.10 dnat to {p_ip}; }}\n\
           chain post {{ type nat hook postrouting priority srcnat; ct status dnat ip saddr {p_ip} ip daddr {p_ip} masquerade; }}\n\
         }}\n\
         EOF"
    ));
    assert!(
        p.ping("10.96.0.10"),
        "{}",
        h.sh("ip -d link show master cni0")
    );
    let mut off = static_conf(&c, "hairnet", 228, dir.path());
    off["hairpinMode"] = json!(false);
    let (q, q_ip) = attach_to(h, &off, "hp1");
    h.sh(&format!(
        "nft add rule ip svc pre ip daddr 10.96.0.11 dnat to {q_ip} && \
         nft add rule ip svc post ct status dnat ip saddr {q_ip} ip daddr {q_ip} masquerade"
    ));
    assert!(!q.ping("10.96.0.11"), "hairpinMode false still hairpins");
}

#[test]
fn a_flannel_reservation_and_our_old_store_are_not_handed_out_again() {
    let c = Cluster::new(1, "192.168.97", 1500);
    let dir = tempfile::tempdir().unwrap();
    let conf = static_conf(&c, "keepnet", 228, dir.path());
    // flannel's CNI (host-local with no dataDir) holds .2; our old store (<dataDir>/<name>) .3.
    let store = dir.path().join("ipam/keepnet");
    let old = dir.path().join("data/keepnet");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(store.join("10.228.1.2"), "flannelpod\neth0").unwrap();
    std::fs::write(old.join("10.228.1.3"), "olderpod\r\neth0").unwrap();
    let (_p, ip) = attach_to(&c.hosts[0], &conf, "kp0");
    assert_eq!(ip, "10.228.1.4", "a live address handed out again");
    assert!(store.join("10.228.1.3").is_file() && !old.exists());
    // The moved allocation is released by its container's DEL.
    let gone = Ns::new("c");
    Call::new(
        "vxlan-overlay",
        "DEL",
        &c.hosts[0],
        &gone.path(),
        "olderpod",
    )
    .run(&conf)
    .expect_ok();
    assert!(!store.join("10.228.1.3").exists());
    assert!(store.join("10.228.1.2").is_file());
}

#[test]
fn a_config_without_a_store_reads_the_subnet_file_alone() {
    // As flanneld writes it; no etcd anywhere.
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("subnet.env");
    let lines = [
        "FLANNEL_NETWORK=10.228.0.0/16",
        "FLANNEL_SUBNET=10.228.5.1/24",
        "FLANNEL_MTU=1400",
        "FLANNEL_IPMASQ=false",
    ];
    std::fs::write(&env, lines.join("\n") + "\n").unwrap();
    let h = Ns::new("n");
    let conf = json!({"cniVersion": "1.1.0", "name": "filenet", "type": "vxlan-overlay",
        "subnetFile": env, "dataDir": dir.path().join("data"),
        "ipam": {"dataDir": dir.path().join("ipam")}});
    let (p, ip) = attach_to(&h, &conf, "sf0");
    assert!(in_subnet(&ip, "10.228.5.0/24"), "{ip}");
    assert_eq!(p.link("eth0").unwrap()["mtu"], 1400);
    assert!(p.ping("10.228.5.1"));
    Call::new("vxlan-overlay", "DEL", &h, &p.path(), "sf0")
        .run(&conf)
        .expect_ok();
    assert_eq!(store_allocations(&dir.path().join("ipam"), "filenet"), 0);
}

#[test]
fn ip_masq_is_left_to_the_pods_while_the_nodes_masquerade_failed() {
    let c = Cluster::new(1, "192.168.97", 1500);
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!(
        "put {PREFIX}/config '{{\"Network\": \"10.226.0.0/16\", \"Backend\": {{\"Type\": \"vxlan\"}}}}'"
    ));
    // an nft that always fails: the node's masquerade cannot be put in place
    let bin = tempfile::tempdir().unwrap();
    let nft = bin.path().join("nft");
    std::fs::write(
        &nft,
        "#!/bin/sh\necho 'nft: refused by the test' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.path().display());
    let a = Agent::start_flags(
        &c.hosts[0],
        |d| {
            vec![
                format!("-etcd-endpoints={}", etcd.url),
                format!("-etcd-prefix={PREFIX}"),
                format!("-subnet-file={}", d.join("subnet.env").display()),
                "-ip-masq".into(),
            ]
        },
        &[("PATH", path)],
    );
    a.subnet(30);
    let env = a.subnet_env().unwrap();
    // the plugin keeps masquerading per pod: nothing would otherwise
    assert!(env.contains("FLANNEL_IPMASQ=false"), "{env}\n{}", a.log());
    assert!(a.log().contains("refused by the test"), "{}", a.log());
}
