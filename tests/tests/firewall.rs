//! firewall chained after bridge, through cnitool: the container's forward-path rules come
//! and go with it, an administrator's rule in the admin chain overrides them, and the
//! `same-bridge` and `isolated` ingress policies stop real traffic between bridges and
//! between ports of one bridge.

use cni_tests::*;
use serde_json::Value;

fn network(name: &str, bridge: &str, subnet: &str, firewall: Value) -> Value {
    let mut fw = json!({"type": "firewall"});
    merge(&mut fw, firewall);
    json!({
        "cniVersion": "1.0.0", "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isDefaultGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "dataDir": "@DATA@", "ranges": [[{"subnet": subnet}]]}},
            fw
        ]
    })
}

/// Adds a container to `net` and returns it with its address.
fn attach(t: &Cnitool, net: &str) -> (Ns, String) {
    let c = Ns::new("c");
    let (ok, out, err) = t.run(&["add", net, &c.path()], &[]);
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    (c, first_ip(&r))
}

fn detach(t: &Cnitool, net: &str, c: &Ns) {
    let (ok, _, err) = t.run(&["del", net, &c.path()], &[]);
    assert!(ok, "{err}");
}

#[test]
fn forward_rules_follow_the_container_and_the_admin_chain_overrides_them() {
    let t = Cnitool::new(network("fwnet", "cnifw0", "10.67.0.0/24", json!({})));
    let outside = Ns::new("o");
    t.host.veth_to(&outside, "10.67.9");
    let (c, ip) = attach(&t, "fwnet");
    let (other, other_ip) = attach(&t, "fwnet");

    let rules = t.host.nft_ruleset();
    for rule in [
        "ip saddr @CNI-ADMIN-v4 meta mark set meta mark | 0x00200000 accept",
        "ip daddr @CNI-ADMIN-v4 ct state established,related meta mark set meta mark | 0x00200000 accept",
        "ip6 saddr @CNI-ADMIN-v6 meta mark set meta mark | 0x00200000 accept",
        "chain CNI-ADMIN",
        // iptables' FORWARD accepts what we accepted
        "meta mark & 0x00200000 == 0x00200000  counter packets",
    ] {
        assert!(rules.contains(rule), "{rule}: {rules}");
    }
    let allowed = t.host.sh("nft list set inet cni_rs CNI-ADMIN-v4");
    for addr in [&ip, &other_ip] {
        assert!(
            allowed.contains(&format!("{addr} comment \"fwnet/")),
            "{allowed}"
        );
    }
    assert!(c.ping("10.67.9.2"), "container -> outside");
    let (ok, _, err) = t.run(&["check", "fwnet", &c.path()], &[]);
    assert!(ok, "{err}");

    t.host.sh(&format!(
        "nft add rule inet cni_rs CNI-ADMIN ip saddr {ip} drop"
    ));
    assert!(!c.ping("10.67.9.2"), "the admin's drop wins");
    assert!(
        other.ping("10.67.9.2"),
        "only for the address the admin named"
    );
    t.host.sh("nft flush chain inet cni_rs CNI-ADMIN");
    assert!(c.ping("10.67.9.2"), "traffic flows again");

    t.host.sh(&format!(
        "nft delete element inet cni_rs CNI-ADMIN-v4 {{ {ip} }}"
    ));
    let (ok, out, _) = t.run(&["check", "fwnet", &c.path()], &[]);
    assert!(!ok && out.is_empty(), "CHECK passed without the address");
    let (c, ip) = {
        detach(&t, "fwnet", &c);
        attach(&t, "fwnet")
    };

    // the shared objects exist: a container's accept goes with no nft run
    let spy = tempfile::tempdir().unwrap();
    let (path, log) = nft_spy(spy.path());
    for _ in 0..2 {
        let (ok, _, err) = t.run(&["del", "fwnet", &c.path()], &[("PATH", &path)]);
        assert!(ok, "{err}");
    }
    let runs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(runs.is_empty(), "nft ran: {runs}");
    let allowed = t.host.sh("nft list set inet cni_rs CNI-ADMIN-v4");
    assert!(!allowed.contains(&format!("{ip} ")), "{allowed}");
    assert!(
        allowed.contains(&other_ip),
        "the other container keeps its rule"
    );
    detach(&t, "fwnet", &other);
    assert!(!t.host.nft_ruleset().contains("\"fwnet/"));
}

#[test]
fn same_bridge_and_isolated_policies_stop_traffic_between_bridges() {
    let same = json!({"ingressPolicy": "same-bridge"});
    let t = Cnitool::new(network("isoa", "cniisoa", "10.68.1.0/24", same.clone()));
    t.add_network("20-b", &network("isob", "cniisob", "10.68.2.0/24", same));
    t.add_network(
        "30-c",
        &network(
            "isoc",
            "cniisoc",
            "10.68.3.0/24",
            json!({"ingressPolicy": "isolated"}),
        ),
    );
    t.add_network(
        "40-open",
        &network("open", "cniopen", "10.68.4.0/24", json!({})),
    );
    let (a1, a1_ip) = attach(&t, "isoa");
    let (a2, a2_ip) = attach(&t, "isoa");
    let (b1, b1_ip) = attach(&t, "isob");
    let (c1, c1_ip) = attach(&t, "isoc");
    let (c2, c2_ip) = attach(&t, "isoc");
    let (o1, o1_ip) = attach(&t, "open");

    assert!(a1.ping(&a2_ip), "same-bridge: ports of one bridge talk");
    assert!(!a1.ping(&b1_ip), "same-bridge: a -> b dropped");
    assert!(!b1.ping(&a1_ip), "same-bridge: b -> a dropped");
    assert!(!c1.ping(&c2_ip), "isolated: ports of one bridge dropped");
    assert!(!c1.ping(&a1_ip), "isolated -> same-bridge dropped");
    assert!(
        a2.ping("10.68.1.1") && c2.ping("10.68.3.1"),
        "the host answers"
    );
    assert!(
        o1.ping(&a1_ip),
        "a bridge without a policy reaches an isolated one"
    );
    assert!(a1.ping(&o1_ip), "and back");
    let (ok, _, err) = t.run(&["check", "isoc", &c1.path()], &[]);
    assert!(ok, "{err}");

    for (net, c) in [
        ("isoa", &a1),
        ("isoa", &a2),
        ("isob", &b1),
        ("isoc", &c1),
        ("isoc", &c2),
        ("open", &o1),
    ] {
        detach(&t, net, c);
    }
    let rules = t.host.nft_ruleset();
    assert!(
        !rules.contains(&c1_ip) && !rules.contains("\"iso"),
        "{rules}"
    );
}

#[test]
fn bad_firewall_configs_are_refused_with_codes() {
    for (fw, code) in [
        (json!({"backend": "firewalld"}), 2),
        (json!({"backend": "pf"}), 7),
        (json!({"ingressPolicy": "closed"}), 7),
        (json!({"iptablesAdminChainName": "x; flush ruleset"}), 7),
    ] {
        let t = Cnitool::new(network("badfw", "cnibadfw0", "10.69.0.0/24", fw.clone()));
        let c = Ns::new("c");
        let (ok, out, err) = t.run(&["add", "badfw", &c.path()], &[]);
        assert!(!ok && out.is_empty(), "{fw}: {out}");
        assert!(
            err.contains(&format!("code {code}")) || err.contains(&format!("\"code\":{code}")),
            "{fw}: {err}"
        );
        let (ok, _, err) = t.run(&["del", "badfw", &c.path()], &[]);
        assert!(ok, "{fw}: DEL after a refused ADD: {err}");
        assert!(t.host.live_veths().is_empty(), "{fw}: cleaned up");
    }
}

#[test]
fn a_named_admin_chain_and_a_flushed_ruleset_are_handled() {
    let t = Cnitool::new(network(
        "fwadm",
        "cnifwadm0",
        "10.67.5.0/24",
        json!({"iptablesAdminChainName": "SITE-ADMIN"}),
    ));
    let outside = Ns::new("o");
    t.host.veth_to(&outside, "10.67.8");
    let (c, ip) = attach(&t, "fwadm");
    let rules = t.host.nft_ruleset();
    assert!(rules.contains("chain SITE-ADMIN-forward") && rules.contains("jump SITE-ADMIN"));
    t.host.sh(&format!(
        "nft add rule inet cni_rs SITE-ADMIN ip saddr {ip} drop"
    ));
    assert!(!c.ping("10.67.8.2"), "the named admin chain's drop wins");

    // Someone flushes the whole ruleset: the next ADD makes the shared objects again.
    t.host.sh("nft flush ruleset");
    let (ok, out, _) = t.run(&["check", "fwadm", &c.path()], &[]);
    assert!(!ok && out.is_empty(), "CHECK passed after the flush");
    let (c2, ip2) = attach(&t, "fwadm");
    let listed = t.host.sh("nft list set inet cni_rs SITE-ADMIN-v4");
    assert!(listed.contains(&ip2), "{listed}");
    assert!(c2.ping("10.67.8.2"));
    for c in [&c, &c2] {
        detach(&t, "fwadm", c);
    }
    assert!(!t.host.nft_ruleset().contains("\"fwadm/"));
}
