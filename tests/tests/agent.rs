//! vxlan-overlay on etcd (issue 10): an etcd of the test's own in a namespace on the
//! underlay, one vxlan-overlay-agent per host namespace, the plugin attaching containers
//! from the subnet file. Distinct subnets under contention, flannel's key and value
//! format, a joiner programmed from the watch, lease expiry after SIGKILL and the same
//! subnet and MAC after a restart, an etcd outage, reconcile of hand-deleted entries, a
//! lease written by hand as a flanneld node writes it, an etcd that wants TLS and client
//! certificates. Every etcd and agent is stopped by PID, also when a test fails.

use std::time::Duration;

use cni_tests::agent_harness::*;
use cni_tests::*;
use serde_json::Value;

#[test]
fn agents_claim_distinct_subnets_in_flannels_format_and_peers_follow_the_leases() {
    let net = r#"{"Network":"10.245.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let (mut c, etcd, mut agents, subnets) = start_cluster(3, "192.168.80", net, 60, 1);
    let mut distinct = subnets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{subnets:?}");

    // flannel's keys and values, byte for byte as flanneld writes them
    let leases = etcd.get_prefix(&format!("{PREFIX}/subnets/"));
    assert_eq!(leases.len(), 3, "{leases:?}");
    for (i, s) in subnets.iter().enumerate() {
        let mac = c.hosts[i].link("flannel.1").unwrap()["address"]
            .as_str()
            .unwrap()
            .to_string();
        let want = format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#,
            c.underlay_ip(i)
        );
        assert!(
            leases.contains(&(key(s), want.clone())),
            "{want} in {leases:?}"
        );
        let gw = s.replace(".0/24", ".1/24");
        assert_eq!(
            agents[i].subnet_env().unwrap(),
            format!("FLANNEL_NETWORK=10.245.0.0/16\nFLANNEL_SUBNET={gw}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
        );
    }

    // containers on every host reach each other; the plugin reads the subnet file
    let ctrs: Vec<(Ns, String)> = (0..3)
        .map(|h| attach(&c.hosts[h], &agents[h].conf(&etcd), &format!("a{h}")))
        .collect();
    for (h, (ns, _)) in ctrs.iter().enumerate() {
        assert!(
            in_subnet(&ctrs[h].1, &subnets[h]),
            "{} in {}",
            ctrs[h].1,
            subnets[h]
        );
        for (_, ip) in &ctrs {
            assert!(ns.ping(ip), "host {h}'s container -> {ip}");
        }
    }

    // a fourth host joins: the others program it from the watch (their reconcile is
    // slower than the second allowed here), and reach its container with no ADD
    let j = c.add_host();
    agents.push(Agent::start(&c.hosts[j], &etcd, 60, 30));
    let js = agents[j].subnet(20);
    let took = within(Duration::from_secs(1), || {
        (0..3).all(|h| programmed(&c.hosts[h], &js, &c.underlay_ip(j)))
    });
    assert!(
        took.is_some(),
        "joiner not programmed within 1 s:\n{}",
        agents[0].log()
    );
    let (_jc, jip) = attach(&c.hosts[j], &agents[j].conf(&etcd), "a3");
    for (ns, _) in &ctrs {
        assert!(ns.ping(&jip));
    }

    // entries deleted by hand on host 0 are put back by its reconcile (every second).
    // A tick may come between the deletion and any look at the kernel (it did in CI), so
    // what shows both is the reconcile reporting the route missing, and the entries back.
    let (s1, u1) = (&subnets[1], c.underlay_ip(1));
    let net1 = s1.split('/').next().unwrap();
    let h0 = &c.hosts[0];
    let mac1 = c.hosts[1].link("flannel.1").unwrap()["address"].clone();
    let logged = agents[0].log().len();
    h0.sh(&format!(
        "ip route del {s1} && ip neigh del {net1} dev flannel.1 && \
         bridge fdb del {} dev flannel.1 dst {u1}",
        mac1.as_str().unwrap()
    ));
    let reported = format!("route to {s1} is missing");
    assert!(
        within(Duration::from_secs(5), || {
            agents[0].log()[logged..].contains(&reported) && programmed(h0, s1, &u1)
        })
        .is_some(),
        "not reported and restored:\n{}",
        agents[0].log()
    );
    assert!(ctrs[0].0.ping(&ctrs[1].1));

    // a flanneld node: its device made by hand as flanneld makes it, its lease written by
    // hand in flannel's format; every agent programs it and containers reach it
    let f = c.add_host();
    let fu = c.underlay_ip(f);
    let fmac = "0e:11:22:33:44:55";
    c.hosts[f].sh(&format!(
        "ip link add flannel.1 address {fmac} type vxlan id 1 local {fu} dev ul0 dstport 8472 nolearning && \
         ip link set flannel.1 up && ip addr add 10.245.200.0/32 dev flannel.1 && \
         ip link add cni0 type bridge && ip link set cni0 up && ip addr add 10.245.200.1/24 dev cni0"
    ));
    let value = format!(
        r#"{{"PublicIP":"{fu}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{fmac}"}}}}"#
    );
    let lease = etcd.ctl("lease grant 60");
    let id = lease.split_whitespace().nth(1).unwrap();
    etcd.ctl(&format!(
        "put --lease={id} {} '{value}'",
        key("10.245.200.0/24")
    ));
    assert!(within(Duration::from_secs(5), || (0..3).all(|h| programmed(
        &c.hosts[h],
        "10.245.200.0/24",
        &fu
    )))
    .is_some());
    // the flanneld node knows host 0 as flanneld would: neighbour, FDB entry, route
    let (s0, net0) = (&subnets[0], subnets[0].split('/').next().unwrap());
    let mac0 = c.hosts[0].link("flannel.1").unwrap()["address"].clone();
    let mac0 = mac0.as_str().unwrap();
    c.hosts[f].sh(&format!(
        "ip neigh add {net0} lladdr {mac0} dev flannel.1 nud permanent && \
         bridge fdb append {mac0} dev flannel.1 dst {} self permanent && \
         ip route add {s0} via {net0} dev flannel.1 onlink",
        c.underlay_ip(0)
    ));
    assert!(
        ctrs[0].0.ping("10.245.200.1"),
        "a container reaches the flanneld node"
    );
    // ten idle seconds, and still one etcd session on every agent: nothing broke it
    // (etcd closes connections whose keepalive pings come too often)
    std::thread::sleep(Duration::from_secs(10));
    for a in &agents {
        assert_eq!(a.log().matches("holding ").count(), 1, "{}", a.log());
    }
    // the lease revoked, as when flanneld's node is gone: every agent forgets it
    etcd.ctl(&format!("lease revoke {id}"));
    assert!(within(Duration::from_secs(5), || (0..3).all(|h| forgotten(
        &c.hosts[h],
        "10.245.200.0/24",
        &fu
    )))
    .is_some());

    // leases no node should be programmed from: a key of the whole network's size, an
    // all-zero VTEP MAC (the device's default destination: every frame would go there)
    let lease = |ip: &str, mac: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    };
    etcd.ctl(&format!(
        "put {PREFIX}/subnets/10.245.0.0-16 '{}'",
        lease("192.168.80.77", "0e:00:00:00:00:01")
    ));
    etcd.ctl(&format!(
        "put {} '{}'",
        key("10.245.201.0/24"),
        lease("192.168.80.78", "00:00:00:00:00:00")
    ));
    // a new network config (VNI 2): every agent moves to flannel.2 at its next reconcile
    etcd.ctl(&format!(
        "put {PREFIX}/config '{{\"Network\":\"10.245.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\",\"VNI\":2}}}}'"
    ));
    let moved = within(Duration::from_secs(10), || {
        (0..4).all(|h| {
            c.hosts[h].link("flannel.2").is_some() && c.hosts[h].link("flannel.1").is_none()
        })
    });
    assert!(moved.is_some(), "{}", agents[0].log());
    assert!(within(Duration::from_secs(5), || ctrs[0].0.ping(&jip)).is_some());
    let h0 = &c.hosts[0];
    let routes = h0.sh("ip route show proto 73");
    assert!(
        !routes.contains("10.245.0.0/16") && !routes.contains("10.245.201.0"),
        "{routes}"
    );
    assert!(!h0
        .sh("bridge fdb show dev flannel.2")
        .contains("00:00:00:00:00:00"));
}

#[test]
fn twenty_agents_started_at_once_claim_distinct_subnets() {
    // 31 subnets for 20 nodes: most first picks collide, and only the create-if-absent
    // transaction keeps them apart
    let net = r#"{"Network":"10.246.0.0/19","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
    let (c, etcd, agents, subnets) = start_cluster(20, "192.168.81", net, 60, 10);
    let leases = etcd.get_prefix(&format!("{PREFIX}/subnets/"));
    assert_eq!(leases.len(), 20, "{leases:?}");
    for (i, s) in subnets.iter().enumerate() {
        let (_, v) = leases
            .iter()
            .find(|(k, _)| *k == key(s))
            .expect("its lease");
        let v: Value = serde_json::from_str(v).unwrap();
        assert_eq!(v["PublicIP"], c.underlay_ip(i), "{s} is host {i}'s");
    }
    // and every host ends up with the other nineteen
    for (i, h) in c.hosts.iter().enumerate() {
        let all = within(Duration::from_secs(10), || {
            h.sh("ip route show proto 73").lines().count() == 19
        });
        assert!(all.is_some(), "host {i}:\n{}", agents[i].log());
    }
}

#[test]
fn a_killed_agent_expires_and_a_restarted_one_takes_back_its_subnet_and_mac() {
    let ttl = 3;
    let net = r#"{"Network":"10.247.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let (c, etcd, mut agents, subnets) = start_cluster(3, "192.168.82", net, ttl, 10);
    let (s2, u2) = (subnets[2].clone(), c.underlay_ip(2));
    let mac2 = c.hosts[2].link("flannel.1").unwrap()["address"].clone();
    for h in 0..2 {
        assert!(within(Duration::from_secs(5), || programmed(&c.hosts[h], &s2, &u2)).is_some());
    }

    // SIGTERM: out within a few seconds, the lease kept for a restart
    let took = agents[2].terminate().expect("exits on SIGTERM");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(etcd.get_prefix(&key(&s2)).len(), 1, "the lease stays");
    assert_eq!(agents[2].restart_and_wait(10), s2);
    assert!(
        agents[2].log().contains(&format!("took back {s2}")),
        "by its address"
    );

    // SIGKILL: after leaseTTL every other host drops its state
    agents[2].sigkill();
    let gone = within(Duration::from_secs(ttl + 5), || {
        (0..2).all(|h| forgotten(&c.hosts[h], &s2, &u2))
    });
    assert!(gone.is_some(), "{}", agents[0].log());
    assert!(etcd.get_prefix(&key(&s2)).is_empty(), "the lease expired");
    assert!(agents[0].log().contains(&format!("peer {s2} removed")));

    // restarted: the same subnet (saved on the node) and the same VTEP MAC
    assert_eq!(agents[2].restart_and_wait(10), s2);
    assert!(agents[2]
        .log()
        .contains(&format!("claimed {s2} for {u2}, as before")));
    assert_eq!(c.hosts[2].link("flannel.1").unwrap()["address"], mac2);
    for h in 0..2 {
        assert!(within(Duration::from_secs(5), || programmed(&c.hosts[h], &s2, &u2)).is_some());
    }
    let (a, _) = attach(&c.hosts[0], &agents[0].conf(&etcd), "k0");
    let (_b, bip) = attach(&c.hosts[2], &agents[2].conf(&etcd), "k2");
    assert!(a.ping(&bip));

    // while host 1's agent was away, another backend's node (a value we do not read)
    // took its subnet: the agent claims another one instead of trying that one forever
    let s1 = subnets[1].clone();
    agents[1].terminate();
    etcd.ctl(&format!("del {}", key(&s1)));
    etcd.ctl(&format!(
        r#"put {} '{{"PublicIP":"192.168.82.99","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"x"}}}}'"#,
        key(&s1)
    ));
    let again = agents[1].restart_and_wait(10);
    assert_ne!(again, s1, "{}", agents[1].log());
    assert!(!c.hosts[0].sh("ip route show proto 73").contains(&s1));
}

#[test]
fn an_etcd_outage_leaves_traffic_and_adds_working_and_agents_reconnect() {
    let net = r#"{"Network":"10.248.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let (mut c, mut etcd, mut agents, _) = start_cluster(2, "192.168.83", net, 60, 1);
    let (a, _) = attach(&c.hosts[0], &agents[0].conf(&etcd), "o0");
    let (_b, bip) = attach(&c.hosts[1], &agents[1].conf(&etcd), "o1");
    assert!(a.ping(&bip));

    etcd.stop();
    std::thread::sleep(Duration::from_secs(2));
    assert!(a.ping(&bip), "existing traffic through the outage");
    let (a2, _) = attach(&c.hosts[0], &agents[0].conf(&etcd), "o2");
    assert!(a2.ping(&bip), "a new container during the outage");
    assert!(
        agents.iter_mut().all(|a| a.exited().is_none()),
        "agents keep running"
    );

    etcd.restart();
    let j = c.add_host();
    agents.push(Agent::start(&c.hosts[j], &etcd, 60, 1));
    let js = agents[j].subnet(20);
    let seen = within(Duration::from_secs(15), || {
        (0..2).all(|h| programmed(&c.hosts[h], &js, &c.underlay_ip(j)))
    });
    assert!(seen.is_some(), "{}\n{}", agents[0].log(), etcd.log());
    let (_jc, jip) = attach(&c.hosts[j], &agents[j].conf(&etcd), "o3");
    assert!(a.ping(&jip));

    // a plugin config that disagrees with etcd's network stops the agent with a reason
    let bad = Ns::new("n");
    c.plug(&bad, "swbad", &c.spare_ip(9));
    let mut wrong = Agent::start_with(&bad, &etcd, 60, 1, json!({"network": "10.99.0.0/16"}));
    let failed = within(Duration::from_secs(10), || wrong.exited().is_some());
    assert!(failed.is_some(), "{}", wrong.log());
    assert!(!wrong.exited().unwrap().success());
    assert!(
        wrong.log().contains("differs from etcd's 10.248.0.0/16"),
        "{}",
        wrong.log()
    );
}

#[test]
fn agents_reach_an_etcd_that_wants_tls_through_flannels_certificate_fields() {
    let net = r#"{"Network":"10.248.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
    let mut c = Cluster::new(2, "192.168.84", 1500);
    let etcd = Etcd::start_tls(&c);
    etcd.ctl(&format!("put {PREFIX}/config '{net}'"));
    let store = |ca: &str, client: bool| {
        let mut s = json!({"type": "etcd", "endpoints": [etcd.url], "prefix": PREFIX,
            "leaseTTL": 60, "trustedCAFile": etcd.pki(ca)});
        if client {
            merge(
                &mut s,
                json!({"certFile": etcd.pki("client.pem"), "keyFile": etcd.pki("client.key")}),
            );
        }
        json!({ "store": s })
    };
    let agents: Vec<Agent> = c
        .hosts
        .iter()
        .map(|h| Agent::start_with(h, &etcd, 60, 10, store("ca.pem", true)))
        .collect();
    let subnets: Vec<String> = agents.iter().map(|a| a.subnet(30)).collect();
    assert_ne!(subnets[0], subnets[1]);
    for (i, h) in c.hosts.iter().enumerate() {
        let (j, peer) = (1 - i, &subnets[1 - i]);
        let seen = within(Duration::from_secs(10), || {
            programmed(h, peer, &c.underlay_ip(j))
        });
        assert!(seen.is_some(), "host {i}:\n{}", agents[i].log());
    }
    // an agent that trusts another CA, and one without a client certificate, get nothing
    let mut refused = Vec::new();
    for (ca, client) in [("other-ca.pem", true), ("ca.pem", false)] {
        let i = c.add_host();
        refused.push(Agent::start_with(
            &c.hosts[i],
            &etcd,
            60,
            10,
            store(ca, client),
        ));
    }
    std::thread::sleep(Duration::from_secs(5));
    for a in &refused {
        assert!(a.subnet_env().is_none(), "{}", a.log());
        // the agent says why: the server's chain (UnknownIssuer) or its own (BadCertificate)
        assert!(
            a.log().to_lowercase().contains("certificate"),
            "{}",
            a.log()
        );
    }
    assert_eq!(etcd.get_prefix(&format!("{PREFIX}/subnets/")).len(), 2);
}

#[test]
fn a_vni_changed_while_stopped_and_teardown_follow_etcds_vni() {
    // etcd says VNI 4 and the plugin config names none: the config's default (1) would
    // name a device that is not there
    let net = r#"{"Network":"10.249.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":4}}"#;
    let (c, etcd, mut agents, _) = start_cluster(2, "192.168.85", net, 60, 10);
    let h = &c.hosts[0];
    let ready = within(Duration::from_secs(10), || {
        h.link("flannel.4").is_some() && h.sh("ip route show proto 73").lines().count() == 1
    });
    assert!(ready.is_some(), "{}", agents[0].log());
    // the VNI changes while the agent is stopped: the restarted one drops the old device
    assert!(agents[0].terminate().is_some(), "{}", agents[0].log());
    etcd.ctl(&format!(
        "put {PREFIX}/config '{}'",
        net.replace("\"VNI\":4", "\"VNI\":5")
    ));
    agents[0].restart_and_wait(10);
    let moved = within(Duration::from_secs(10), || {
        h.link("flannel.5").is_some() && h.link("flannel.4").is_none()
    });
    assert!(moved.is_some(), "{:?}\n{}", h.link_names(), agents[0].log());
    // teardown after the agent stops removes the device of etcd's VNI and this
    // network's routes (the subnet file names it: the config does not), and leaves
    // another network's route and a bridge another network still uses
    h.sh(
        "ip link add fport0 type veth peer name fport1 && ip link add cni0 type bridge \
          && ip link set fport0 master cni0 && ip link set ul0 up \
          && ip route add 10.250.1.0/24 via 192.168.85.9 dev ul0 proto 73",
    );
    let conf = agents[0].conf(&etcd);
    assert!(agents[0].terminate().is_some(), "{}", agents[0].log());
    let out = overlay_teardown(h, &conf, false);
    assert!(out.status.success(), "{out:?}");
    assert!(h.link("flannel.5").is_none(), "{:?}", h.link_names());
    let routes = h.sh("ip route show proto 73");
    assert_eq!(
        routes.trim(),
        "10.250.1.0/24 via 192.168.85.9 dev ul0",
        "{routes}"
    );
    assert!(h.link("cni0").is_some(), "another network's port is on it");
}

#[test]
fn a_key_that_names_no_subnet_exactly_moves_no_route() {
    // directRouting: a peer's route is a plain route via its address, the kind of route
    // the node's own subnet has through cni0; any etcd writer can write these keys
    let net = r#"{"Network":"10.250.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
    let (c, etcd, agents, subnets) = start_cluster(2, "192.168.86", net, 60, 1);
    let (a, aip) = attach(&c.hosts[0], &agents[0].conf(&etcd), "x0");
    let (b, bip) = attach(&c.hosts[1], &agents[1].conf(&etcd), "x1");
    assert!(a.ping(&bip) && b.ping(&aip));
    let writer = c.spare_ip(5);
    let hostile = [
        // host 1's subnet and host 0's own, with host bits
        key(&subnets[1]).replace(".0-24", ".7-24"),
        key(&subnets[0]).replace(".0-24", ".7-24"),
        // host 1's subnet with a leading zero, and as a dual-stack key younger than its own
        key(&subnets[1]).replace("-24", "-024"),
        format!("{}&fc00::-64", key(&subnets[1])),
    ];
    let intact = |when: &str| {
        let h0 = &c.hosts[0];
        let routes = h0.sh("ip route");
        let to1 = format!("{} via {} dev ul0 proto 73", subnets[1], c.underlay_ip(1));
        assert!(
            routes.contains(&to1),
            "{when}: {routes}\n{}",
            agents[0].log()
        );
        assert!(!routes.contains(&writer), "{when}: {routes}");
        assert!(
            h0.sh("ip route show dev cni0").contains(&subnets[0]),
            "{when}: host 0's own subnet route: {routes}\n{}",
            agents[0].log()
        );
        assert!(a.ping(&bip) && b.ping(&aip), "{when}");
    };
    for k in &hostile {
        etcd.ctl(&format!(
            "put '{k}' '{}'",
            lease_value(&writer, "0e:00:00:00:00:07")
        ));
    }
    // the watch delivers in milliseconds; a reconcile (every second) runs too
    std::thread::sleep(Duration::from_secs(2));
    intact("after the puts");
    for k in &hostile {
        etcd.ctl(&format!("del '{k}'"));
    }
    std::thread::sleep(Duration::from_secs(2));
    intact("after the deletes");
    for k in &hostile {
        assert!(
            agents[0].log().contains(&format!("ignoring {k}: ")),
            "{k}: {}",
            agents[0].log()
        );
    }
    assert_eq!(agents[0].log().matches("holding ").count(), 1);
}

#[test]
fn a_dual_stack_key_of_flanneld_is_read_by_its_ipv4_part() {
    let net = r#"{"Network":"10.251.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let c = Cluster::new(2, "192.168.87", 1500);
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!("put {PREFIX}/config '{net}'"));
    // flanneld ran dual stack: host 0's lease and another node's are dual-stack keys
    let ds = |ip: &str, v6: &str, mac: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":"{v6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    };
    let lease = etcd.ctl("lease grant 60");
    let id = lease.split_whitespace().nth(1).unwrap();
    let (own, other) = (
        format!("{}&fc00:0:0:7::-64", key("10.251.7.0/24")),
        format!("{}&fc00:0:0:9::-64", key("10.251.9.0/24")),
    );
    let u0 = c.underlay_ip(0);
    let flanneld = c.spare_ip(5);
    etcd.ctl(&format!(
        "put --lease={id} '{own}' '{}'",
        ds(&u0, "fc00::10", "0e:00:00:00:00:10")
    ));
    etcd.ctl(&format!(
        "put --lease={id} '{other}' '{}'",
        ds(&flanneld, "fc00::5", "0e:00:00:00:00:05")
    ));
    let agents: Vec<Agent> = c
        .hosts
        .iter()
        .map(|h| Agent::start(h, &etcd, 60, 10))
        .collect();
    assert_eq!(agents[0].subnet(20), "10.251.7.0/24", "{}", agents[0].log());
    assert!(
        agents[0].log().contains("took back 10.251.7.0/24"),
        "{}",
        agents[0].log()
    );
    assert!(!agents[0].log().contains("no subnet claimed"));
    // the lease moved to the plain key the agent renews; the other stays flanneld's
    let keys: Vec<String> = etcd
        .get_prefix(&format!("{PREFIX}/subnets/"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        keys.contains(&key("10.251.7.0/24")) && !keys.contains(&own),
        "{keys:?}"
    );
    assert!(keys.contains(&other), "{keys:?}");
    let s1 = agents[1].subnet(20);
    let seen = within(Duration::from_secs(5), || {
        programmed(&c.hosts[1], "10.251.7.0/24", &u0)
            && (0..2).all(|h| programmed(&c.hosts[h], "10.251.9.0/24", &flanneld))
            && programmed(&c.hosts[0], &s1, &c.underlay_ip(1))
    });
    assert!(seen.is_some(), "{}\n{}", agents[0].log(), agents[1].log());
    for a in &agents {
        assert_eq!(a.log().matches("holding ").count(), 1, "{}", a.log());
    }
}

/// flanneld's move of a dual-stack key to the plain one (one transaction: put the plain
/// key, delete the dual-stack key) keeps the peer on a node that watches it happen.
#[test]
fn a_peer_whose_key_moves_in_one_transaction_stays() {
    let net = r#"{"Network":"10.241.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let c = Cluster::new(1, "192.168.81", 1500);
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!("put {PREFIX}/config '{net}'"));
    let peer = c.spare_ip(5);
    let value = format!(
        r#"{{"PublicIP":"{peer}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:00:05"}}}}"#
    );
    let dual = format!("{}&fc00:0:0:9::-64", key("10.241.9.0/24"));
    etcd.ctl(&format!("put '{dual}' '{value}'"));
    let agent = Agent::start(&c.hosts[0], &etcd, 60, 3600);
    agent.subnet(20);
    let seen = within(Duration::from_secs(10), || {
        programmed(&c.hosts[0], "10.241.9.0/24", &peer)
    });
    assert!(seen.is_some(), "{}", agent.log());
    let txn = tempfile::NamedTempFile::new().unwrap();
    let quoted = serde_json::to_string(&value).unwrap();
    std::fs::write(
        txn.path(),
        // no compares, then the success requests, then no failure requests
        format!("\nput {} {quoted}\ndel {dual}\n\n\n", key("10.241.9.0/24")),
    )
    .unwrap();
    etcd.ctl(&format!("txn < {}", txn.path().display()));
    let keys: Vec<String> = etcd
        .get_prefix(&format!("{PREFIX}/subnets/"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        keys.contains(&key("10.241.9.0/24")) && !keys.contains(&dual),
        "{keys:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        programmed(&c.hosts[0], "10.241.9.0/24", &peer),
        "{}",
        agent.log()
    );
}

#[test]
fn no_content_of_the_config_key_costs_a_node_its_lease_or_routes() {
    let ttl = 3;
    let net = r#"{"Network":"10.252.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let (mut c, etcd, mut agents, subnets) = start_cluster(2, "192.168.88", net, ttl, 1);
    let (a, _) = attach(&c.hosts[0], &agents[0].conf(&etcd), "g0");
    let (_b, bip) = attach(&c.hosts[1], &agents[1].conf(&etcd), "g1");
    assert!(a.ping(&bip));
    // damaged, another network (no node's subnet is in it), an MTU the underlay cannot
    // carry, another backend, then deleted: each held for longer than a lease lasts
    for bad in [
        "{not json",
        r#"{"Network":"10.99.0.0/16","Backend":{"Type":"vxlan"}}"#,
        r#"{"Network":"10.252.0.0/16","Backend":{"Type":"vxlan","MTU":9000}}"#,
        r#"{"Network":"10.252.0.0/16","Backend":{"Type":"udp"}}"#,
    ] {
        etcd.ctl(&format!("put {PREFIX}/config '{bad}'"));
        std::thread::sleep(Duration::from_millis(1500));
    }
    // a valid network narrowed to hold host 0's subnet and not host 1's: adopted live,
    // it would drop host 1 from host 0 while host 1 keeps the old one
    let narrowed = narrowest_holding(&subnets[0], &subnets[1]);
    etcd.ctl(&format!(
        "put {PREFIX}/config '{{\"Network\":\"{narrowed}\",\"SubnetLen\":24,\"Backend\":{{\"Type\":\"vxlan\"}}}}'"
    ));
    std::thread::sleep(Duration::from_millis(1500));
    etcd.ctl(&format!("del {PREFIX}/config"));
    std::thread::sleep(Duration::from_secs(2 * ttl + 1));
    let leases = etcd.get_prefix(&format!("{PREFIX}/subnets/"));
    for (i, s) in subnets.iter().enumerate() {
        assert!(
            leases.iter().any(|(k, _)| *k == key(s)),
            "host {i}'s lease {s} in {leases:?}\n{}",
            agents[i].log()
        );
        assert!(agents[i].exited().is_none(), "{}", agents[i].log());
    }
    assert!(programmed(&c.hosts[0], &subnets[1], &c.underlay_ip(1)));
    assert!(programmed(&c.hosts[1], &subnets[0], &c.underlay_ip(0)));
    assert!(a.ping(&bip));
    assert!(
        agents[0]
            .log()
            .contains(&format!("refusing {PREFIX}/config")),
        "{}",
        agents[0].log()
    );
    // a fresh agent has no good config to keep: it waits, and claims once there is one
    let j = c.add_host();
    agents.push(Agent::start(&c.hosts[j], &etcd, ttl, 1));
    std::thread::sleep(Duration::from_secs(3));
    assert!(agents[j].subnet_env().is_none(), "{}", agents[j].log());
    assert!(agents[j].exited().is_none(), "{}", agents[j].log());
    etcd.ctl(&format!("put {PREFIX}/config '{net}'"));
    let js = agents[j].subnet(15);
    let seen = within(Duration::from_secs(5), || {
        (0..2).all(|h| programmed(&c.hosts[h], &js, &c.underlay_ip(j)))
    });
    assert!(seen.is_some(), "{}", agents[0].log());
    // no session of the first two ended through all this
    for a in &agents[..2] {
        assert_eq!(a.log().matches("holding ").count(), 1, "{}", a.log());
    }
}

/// A node's agent restarted while `<prefix>/config` holds something it cannot serve
/// (an upgrade during an administrator's mistake) keeps serving the config it saved:
/// its lease and its peers' routes stay.
#[test]
fn a_restart_during_a_bad_config_keeps_the_lease() {
    let ttl = 3;
    let net = r#"{"Network":"10.254.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let (c, etcd, mut agents, subnets) = start_cluster(2, "192.168.87", net, ttl, 1);
    agents[0].sigkill();
    etcd.ctl(&format!("put {PREFIX}/config '{{not json'"));
    assert_eq!(
        agents[0].restart_and_wait(1),
        subnets[0],
        "{}",
        agents[0].log()
    );
    std::thread::sleep(Duration::from_secs(2 * ttl + 1));
    let leases = etcd.get_prefix(&format!("{PREFIX}/subnets/"));
    assert!(
        leases.iter().any(|(k, _)| *k == key(&subnets[0])),
        "the restarted node's lease {} expired: {leases:?}\n{}",
        subnets[0],
        agents[0].log()
    );
    assert!(agents[0].exited().is_none(), "{}", agents[0].log());
    assert!(programmed(&c.hosts[1], &subnets[0], &c.underlay_ip(0)));
    assert!(programmed(&c.hosts[0], &subnets[1], &c.underlay_ip(1)));
}

/// A key written for a node (its PublicIP, a subnet that sorts first) does not move
/// that node to another subnet when its agent starts a new session: it keeps its own.
#[test]
fn a_key_written_for_a_node_does_not_move_it() {
    let net = r#"{"Network":"10.242.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let (c, etcd, mut agents, subnets) = start_cluster(2, "192.168.84", net, 60, 10);
    // 10.242.1.0-24 sorts before every other key of the network
    let planted = "10.242.1.0/24";
    let victim = subnets.iter().position(|s| s != planted).unwrap();
    let ip = c.underlay_ip(victim);
    etcd.ctl(&format!(
        "put {} '{{\"PublicIP\":\"{ip}\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{{\"VNI\":1,\"VtepMAC\":\"02:00:00:00:00:42\"}}}}'",
        key(planted)
    ));
    agents[victim].sigkill();
    assert_eq!(
        agents[victim].restart_and_wait(10),
        subnets[victim],
        "{}",
        agents[victim].log()
    );
}

#[test]
fn large_values_in_etcd_cost_no_node_its_lease() {
    let net = r#"{"Network":"10.253.0.0/16","Backend":{"Type":"vxlan"}}"#;
    let (c, etcd, mut agents, subnets) = start_cluster(2, "192.168.89", net, 60, 10);
    // values of 1.2 MB (etcd takes up to 1.5 MiB a request): four are over gRPC's
    // default 4 MiB response, sixteen over the agent's 16 MiB; under lease keys and
    // under other keys
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), vec![b'x'; 1_200_000]).unwrap();
    let mut keys = vec![key("10.253.200.0/24"), key("10.253.201.0/24")];
    keys.extend((0..14).map(|i| format!("{PREFIX}/subnets/junk-{i}")));
    for k in &keys {
        etcd.ctl(&format!("put '{k}' < {}", big.path().display()));
    }
    // a restarted agent lists them all and takes back its subnet
    agents[1].sigkill();
    assert_eq!(
        agents[1].restart_and_wait(10),
        subnets[1],
        "{}",
        agents[1].log()
    );
    assert!(
        agents[1]
            .log()
            .contains(&format!("ignoring {}: its value is 1200000 bytes", keys[0])),
        "{}",
        agents[1].log()
    );
    let seen = within(Duration::from_secs(5), || {
        programmed(&c.hosts[1], &subnets[0], &c.underlay_ip(0))
            && programmed(&c.hosts[0], &subnets[1], &c.underlay_ip(1))
    });
    assert!(seen.is_some(), "{}\n{}", agents[0].log(), agents[1].log());
    assert!(!c.hosts[0]
        .sh("ip route show proto 73")
        .contains("10.253.200."));
    assert_eq!(
        agents[0].log().matches("holding ").count(),
        1,
        "{}",
        agents[0].log()
    );
}

/// Puts the leases of fake vxlan peers i in `range`: `10.254.<128 + i/16>.<i%16 * 16>/28`
/// at 10.9.<i/250>.<i%250 + 1>, each its own put (its own watch event) `gap_ms` apart,
/// through etcd's JSON gateway (etcdctl would start a process per key).
fn put_fake_peers(etcd: &Etcd, range: std::ops::Range<u32>, gap_ms: u32) {
    let script = format!(
        r#"python3 - <<'EOF'
import base64, json, time, urllib.request
b = lambda s: base64.b64encode(s.encode()).decode()
for i in range({}, {}):
    key = "{PREFIX}/subnets/10.254.%d.%d-28" % (128 + i // 16, (i % 16) * 16)
    value = json.dumps({{"PublicIP": "10.9.%d.%d" % (i // 250, i % 250 + 1), "PublicIPv6": None,
        "BackendType": "vxlan", "BackendData": {{"VNI": 1, "VtepMAC": "0e:00:00:00:%02x:%02x" % (i // 256, i % 256)}}}})
    req = urllib.request.Request("{}/v3/kv/put", data=json.dumps({{"key": b(key), "value": b(value)}}).encode())
    urllib.request.urlopen(req, timeout=5).read()
    time.sleep({gap_ms} / 1000)
EOF"#,
        range.start, range.end, etcd.url
    );
    let out = etcd.ns.exec(&script);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_watch_event_costs_what_it_changes() {
    // 2,000 peers listed at start, then 21 events: each may cost its own peer's few
    // netlink requests, not a pass over the 2,000 (the agent picks its own subnet low in
    // the network, below the fake peers')
    let net = r#"{"Network":"10.254.0.0/16","SubnetLen":28,"Backend":{"Type":"vxlan"}}"#;
    let c = Cluster::new(1, "192.168.90", 1500);
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!("put {PREFIX}/config '{net}'"));
    put_fake_peers(&etcd, 0..2000, 0);
    let agent = Agent::start(&c.hosts[0], &etcd, 60, 3600);
    let routes = |n: usize| {
        within(Duration::from_secs(30), || {
            c.hosts[0].sh("ip route show proto 73").lines().count() == n
        })
    };
    assert!(routes(2000).is_some(), "{}", agent.log());
    // "holding" is said once the first whole pass (and its stale sweep) is done
    let settled = within(Duration::from_secs(60), || agent.log().contains("holding "));
    assert!(settled.is_some(), "{}", agent.log());
    std::thread::sleep(Duration::from_millis(200));
    let before = agent.cpu();
    put_fake_peers(&etcd, 2000..2020, 50);
    assert!(routes(2020).is_some(), "{}", agent.log());
    // and one removed: only its state goes
    etcd.ctl(&format!("del {PREFIX}/subnets/10.254.254.48-28"));
    assert!(routes(2019).is_some(), "{}", agent.log());
    let spent = agent.cpu() - before;
    eprintln!("21 watch events at 2,000 peers: {spent:?} of the agent's CPU");
    assert!(
        spent < Duration::from_millis(200),
        "21 events cost {spent:?} of CPU"
    );
    assert!(!c.hosts[0]
        .sh("ip route show proto 73")
        .contains("10.254.254.48/28"));
    assert!(programmed(&c.hosts[0], "10.254.254.32/28", "10.9.8.19"));
}
