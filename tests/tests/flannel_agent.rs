//! The agent as a drop-in for flanneld (issue 18, the agent's core): Backend.MTU as the
//! MTU on the wire, flanneld's 24 h lease TTL, reservations (subnet keys without an etcd
//! lease), a node that ran flanneld (its device, VTEP MAC and lease kept as they are),
//! and the GBP and Learning backend options. Underlays 192.168.91 and 192.168.92,
//! networks 10.231–10.233; every etcd and agent is stopped by PID, also when a test fails.

use std::time::Duration;

use cni_tests::agent_harness::*;
use cni_tests::*;
use serde_json::{json, Value};

/// The vxlan-overlay entry's store with no leaseTTL: the agent's default.
fn default_ttl_store(etcd: &Etcd) -> Value {
    json!({"store": {"type": "etcd", "endpoints": [etcd.url], "prefix": PREFIX}})
}

/// `key`'s etcd lease as etcd reports it (0: none) and its mod_revision.
fn lease_and_revision(etcd: &Etcd, key: &str) -> (i64, i64) {
    let out = etcd.ctl(&format!("get {key} -w json"));
    let v: Value = serde_json::from_str(&out).unwrap();
    let kv = &v["kvs"][0];
    assert!(kv.is_object(), "{key} is missing: {out}");
    (
        kv["lease"].as_i64().unwrap_or(0),
        kv["mod_revision"].as_i64().unwrap(),
    )
}

/// The TTL lease `id` was granted with, and what is left of it.
fn granted_and_left(etcd: &Etcd, id: i64) -> (i64, i64) {
    // "lease 694d… granted with TTL(86400s), remaining(86397s)"
    let out = etcd.ctl(&format!("lease timetolive {id:x}"));
    let secs = |after: &str| -> i64 {
        let rest = &out[out.find(after).unwrap_or_else(|| panic!("{out}")) + after.len()..];
        rest[..rest.find('s').unwrap()].parse().unwrap()
    };
    (secs("TTL("), secs("remaining("))
}

/// Two hosts on 192.168.92 and an etcd holding 10.232.0.0/16.
fn two_hosts_on_10_232() -> (Cluster, Etcd) {
    let c = Cluster::new(2, "192.168.92", 1500);
    let etcd = Etcd::start(&c);
    let net = r#"{"Network":"10.232.0.0/16","Backend":{"Type":"vxlan"}}"#;
    etcd.ctl(&format!("put {PREFIX}/config '{net}'"));
    (c, etcd)
}

fn subnet_env_mtu(a: &Agent) -> String {
    a.subnet_env()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_MTU="))
        .unwrap_or_default()
        .to_string()
}

fn mtu_of(h: &Ns, dev: &str) -> u64 {
    h.link(dev).and_then(|l| l["mtu"].as_u64()).unwrap_or(0)
}

#[test]
fn backend_mtu_is_the_mtu_on_the_wire_as_flannels() {
    let net = |mtu: u32| {
        format!(r#"{{"Network":"10.231.0.0/16","Backend":{{"Type":"vxlan","MTU":{mtu}}}}}"#)
    };
    let c = Cluster::new(1, "192.168.91", 1500);
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!("put {PREFIX}/config '{}'", net(1500)));
    let h = &c.hosts[0];
    let mut a = Agent::start(h, &etcd, 60, 1);
    a.subnet(20);
    let settled = |want: u64| {
        within(Duration::from_secs(10), || {
            mtu_of(h, "flannel.1") == want && subnet_env_mtu(&a) == want.to_string()
        })
        .is_some()
    };
    assert!(
        settled(1450),
        "MTU 1500 on a 1500 underlay: flannel.1 {} FLANNEL_MTU {:?}, exited {:?}; log:\n{}",
        mtu_of(h, "flannel.1"),
        subnet_env_mtu(&a),
        a.exited(),
        a.log()
    );
    let before = h.link("flannel.1").unwrap();
    etcd.ctl(&format!("put {PREFIX}/config '{}'", net(1400)));
    assert!(
        settled(1350),
        "MTU 1400: flannel.1 {} FLANNEL_MTU {:?}; log:\n{}",
        mtu_of(h, "flannel.1"),
        subnet_env_mtu(&a),
        a.log()
    );
    assert!(a.exited().is_none(), "{}", a.log());
    // The MTU is set in place: the device (flanneld's on a migrated node) and its MAC stay.
    let after = h.link("flannel.1").unwrap();
    for field in ["ifindex", "address"] {
        assert_eq!(after[field], before[field], "{field}; log:\n{}", a.log());
    }
}

#[test]
fn the_lease_lasts_flannels_24_hours_and_outlives_a_killed_agent() {
    let (c, etcd) = two_hosts_on_10_232();
    let mut a0 = Agent::start_with(&c.hosts[0], &etcd, 60, 1, default_ttl_store(&etcd));
    let a1 = Agent::start(&c.hosts[1], &etcd, 60, 1);
    let (s0, s1) = (a0.subnet(20), a1.subnet(20));
    let (id, _) = lease_and_revision(&etcd, &key(&s0));
    assert_ne!(id, 0, "the key has a lease");
    let (granted, _) = granted_and_left(&etcd, id);
    assert_eq!(granted, 86400, "flanneld's subnetTTL; log:\n{}", a0.log());
    let (id1, _) = lease_and_revision(&etcd, &key(&s1));
    assert_eq!(
        granted_and_left(&etcd, id1).0,
        60,
        "leaseTTL stays a choice"
    );

    let ip0 = c.underlay_ip(0);
    assert!(within(Duration::from_secs(10), || programmed(
        &c.hosts[1],
        &s0,
        &ip0
    ))
    .is_some());
    a0.sigkill();
    // Down for a while: the lease and the peers' routes to it stay.
    std::thread::sleep(Duration::from_secs(3));
    let (still, _) = lease_and_revision(&etcd, &key(&s0));
    assert_eq!(still, id);
    let (_, left) = granted_and_left(&etcd, id);
    assert!(left > 86000, "{left} s left");
    assert!(programmed(&c.hosts[1], &s0, &ip0), "{}", a1.log());
}

#[test]
fn a_reservation_is_used_as_it_is_and_another_nodes_is_a_peer() {
    // Three subnets in all: host 0's reservation, another node's, and one free.
    let net = r#"{"Network":"10.233.0.0/16","SubnetMin":"10.233.1.0","SubnetMax":"10.233.3.0","Backend":{"Type":"vxlan"}}"#;
    let c = Cluster::new(2, "192.168.91", 1500);
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!("put {PREFIX}/config '{net}'"));
    let (mine, theirs) = ("10.233.1.0/24", "10.233.2.0/24");
    let other = c.spare_ip(5);
    let ip0 = c.underlay_ip(0);
    etcd.ctl(&format!(
        "put {} '{}'",
        key(mine),
        lease_value(&ip0, "0e:2a:5b:00:01:01")
    ));
    etcd.ctl(&format!(
        "put {} '{}'",
        key(theirs),
        lease_value(&other, "0e:2a:5b:00:02:02")
    ));
    let mut a0 = Agent::start_with(&c.hosts[0], &etcd, 60, 1, default_ttl_store(&etcd));
    let mut a1 = Agent::start(&c.hosts[1], &etcd, 60, 1);
    assert_eq!(a0.subnet(20), mine, "{}", a0.log());
    let s1 = a1.subnet(20);
    assert_eq!(
        s1,
        "10.233.3.0/24",
        "the other reservation is taken; {}",
        a1.log()
    );
    let ip1 = c.underlay_ip(1);
    for (h, a) in [(&c.hosts[0], &a0), (&c.hosts[1], &a1)] {
        let ok = within(Duration::from_secs(10), || programmed(h, theirs, &other)).is_some();
        assert!(
            ok,
            "the other node's reservation is a peer; log:\n{}",
            a.log()
        );
    }
    assert!(within(Duration::from_secs(10), || programmed(
        &c.hosts[1],
        mine,
        &ip0
    ))
    .is_some());
    assert!(within(Duration::from_secs(10), || programmed(
        &c.hosts[0],
        &s1,
        &ip1
    ))
    .is_some());
    // The reservation now carries our VTEP MAC, still with no lease, also once stopped.
    let mac0 = c.hosts[0].link("flannel.1").unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let value = etcd.ctl(&format!("get {} --print-value-only", key(mine)));
    assert_eq!(value.trim(), lease_value(&ip0, &mac0));
    assert_eq!(lease_and_revision(&etcd, &key(mine)).0, 0, "{}", a0.log());
    assert!(a0.terminate().is_some());
    assert!(a1.terminate().is_some());
    assert_eq!(lease_and_revision(&etcd, &key(mine)).0, 0);
    assert_eq!(lease_and_revision(&etcd, &key(theirs)).0, 0);
    let theirs_value = etcd.ctl(&format!("get {} --print-value-only", key(theirs)));
    assert_eq!(
        theirs_value.trim(),
        lease_value(&other, "0e:2a:5b:00:02:02"),
        "another node's reservation is not touched"
    );
}

#[test]
fn a_node_that_ran_flanneld_keeps_its_device_mac_and_lease_as_they_are() {
    let (c, etcd) = two_hosts_on_10_232();
    // flanneld's state on host 0, made by hand as flanneld makes it.
    let (h0, ip0) = (&c.hosts[0], c.underlay_ip(0));
    let (subnet, mac) = ("10.232.77.0/24", "0e:2a:5b:91:77:01");
    h0.sh(&format!(
        "ip link add flannel.1 address {mac} mtu 1450 type vxlan id 1 local {ip0} dev ul0 \
         dstport 8472 nolearning && ip addr add 10.232.77.0/32 dev flannel.1 && \
         ip link set flannel.1 up"
    ));
    let index = h0.link("flannel.1").unwrap()["ifindex"].as_u64().unwrap();
    let granted = etcd.ctl("lease grant 86400");
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    etcd.ctl(&format!(
        "put --lease={id} {} '{}'",
        key(subnet),
        lease_value(&ip0, mac)
    ));
    let (_, revision) = lease_and_revision(&etcd, &key(subnet));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("subnet.env"),
        "FLANNEL_NETWORK=10.232.0.0/16\nFLANNEL_SUBNET=10.232.77.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let list = json!({"cniVersion": "1.1.0", "name": "cluster",
        "plugins": [conf(dir.path(), &etcd, 60, default_ttl_store(&etcd))]});
    std::fs::write(dir.path().join("cluster.conflist"), list.to_string()).unwrap();
    let mut a0 = Agent {
        child: None,
        dir,
        host: h0.name.clone(),
    };
    a0.restart(1);
    let a1 = Agent::start(&c.hosts[1], &etcd, 60, 1);
    let s1 = a1.subnet(20);
    let ip1 = c.underlay_ip(1);
    let held = within(Duration::from_secs(20), || a0.log().contains("holding "));
    assert!(held.is_some(), "{}", a0.log());
    assert_eq!(a0.subnet(5), subnet);
    assert!(within(Duration::from_secs(10), || programmed(h0, &s1, &ip1)).is_some());
    assert!(within(Duration::from_secs(10), || programmed(
        &c.hosts[1],
        subnet,
        &ip0
    ))
    .is_some());
    // Two reconciles later: the device is flanneld's, untouched, and so is the key.
    std::thread::sleep(Duration::from_millis(2500));
    let l = h0.link("flannel.1").unwrap();
    assert_eq!(l["ifindex"].as_u64(), Some(index), "{}", a0.log());
    assert_eq!(l["address"].as_str(), Some(mac));
    let (lease, now) = lease_and_revision(&etcd, &key(subnet));
    // Its value is ours and its lease has our TTL: not written at all.
    assert_eq!(
        now,
        revision,
        "the key was written again; log:\n{}",
        a0.log()
    );
    assert_ne!(lease, 0);
    let value = etcd.ctl(&format!("get {} --print-value-only", key(subnet)));
    assert_eq!(value.trim(), lease_value(&ip0, mac));
    assert!(programmed(&c.hosts[1], subnet, &ip0), "{}", a1.log());
    assert!(a0.log().matches("holding ").count() == 1, "{}", a0.log());
    // A restart keeps it all again: our saved MAC is flanneld's.
    assert!(a0.terminate().is_some());
    a0.restart_and_wait(1);
    let l = h0.link("flannel.1").unwrap();
    assert_eq!(l["ifindex"].as_u64(), Some(index), "{}", a0.log());
    assert_eq!(l["address"].as_str(), Some(mac));
    assert_eq!(lease_and_revision(&etcd, &key(subnet)), (lease, revision));
}

#[test]
fn gbp_and_learning_are_set_on_the_device_as_flannel_sets_them() {
    let net =
        r#"{"Network":"10.233.0.0/16","Backend":{"Type":"vxlan","GBP":true,"Learning":true}}"#;
    let (c, _etcd, agents, subnets) = start_cluster(2, "192.168.92", net, 60, 1);
    for (i, h) in c.hosts.iter().enumerate() {
        let l = h.link("flannel.1").unwrap();
        let data = &l["linkinfo"]["info_data"];
        assert_eq!(data["gbp"], json!(true), "{l}");
        assert_eq!(data["learning"], json!(true), "{l}");
        // and the peers are programmed as without learning
        let (j, s) = (1 - i, &subnets[1 - i]);
        let ok = within(Duration::from_secs(10), || {
            programmed(h, s, &c.underlay_ip(j))
        });
        assert!(ok.is_some(), "{}", agents[i].log());
    }
}
