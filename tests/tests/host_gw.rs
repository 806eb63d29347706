//! vxlan-overlay-agent with flannel's host-gw backend (`Backend.Type "host-gw"`): leases
//! of BackendType host-gw with no backend data, no VXLAN device, a route to every peer's
//! subnet via its underlay address on the underlay link, a lease of another backend
//! ignored, the subnet file with the underlay's MTU, pods reaching each other; dual
//! stack likewise, IPv6 subnets routed via the peers' PublicIPv6.

use std::time::Duration;

use cni_tests::agent_harness::*;
use cni_tests::*;

#[test]
fn host_gw_routes_peers_via_their_underlay_addresses_without_a_device() {
    let net = r#"{"Network":"10.225.0.0/16","Backend":{"Type":"host-gw"}}"#;
    let (c, etcd, agents, subnets) = start_cluster(3, "192.168.102", net, 60, 1);
    let distinct: std::collections::BTreeSet<&String> = subnets.iter().collect();
    assert_eq!(distinct.len(), 3, "{subnets:?}");

    // flanneld's host-gw lease: the address and the backend type, no backend data
    let leases = etcd.get_prefix(&format!("{PREFIX}/subnets/"));
    assert_eq!(leases.len(), subnets.len(), "one lease a node: {leases:?}");
    for (i, (s, agent)) in subnets.iter().zip(&agents).enumerate() {
        let value = format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"host-gw"}}"#,
            c.underlay_ip(i)
        );
        let lease = (key(s), value);
        assert!(leases.contains(&lease), "{lease:?} in {leases:?}");
        let env = agent.subnet_env().unwrap();
        let gw = s.replace(".0/24", ".1/24");
        let want = format!("FLANNEL_NETWORK=10.225.0.0/16\nFLANNEL_SUBNET={gw}\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n");
        assert_eq!(
            env, want,
            "the underlay's MTU, as flanneld writes it for host-gw"
        );
    }

    // every host routes every peer's subnet via the peer's underlay address, no device
    let routed = |h: usize, p: usize| {
        c.hosts[h].sh("ip route show proto 73").contains(&format!(
            "{} via {} dev ul0",
            subnets[p],
            c.underlay_ip(p)
        ))
    };
    let all = within(Duration::from_secs(5), || {
        (0..3).all(|h| (0..3).filter(|p| *p != h).all(|p| routed(h, p)))
    });
    for (h, host) in c.hosts.iter().enumerate() {
        assert!(
            all.is_some(),
            "host {h}: {}\n{}",
            host.sh("ip route"),
            agents[h].log()
        );
        assert!(host.link("flannel.1").is_none(), "host {h} has flannel.1");
        assert!(
            !host.sh("ip route show proto 73").contains(&subnets[h]),
            "host {h} routes its own subnet"
        );
    }

    // pods on every host reach each other's (the plugin reads the subnet file)
    let mut pods = Vec::new();
    for (h, host) in c.hosts.iter().enumerate() {
        let (ns, ip) = attach(host, &agents[h].conf(&etcd), &format!("hg{h}"));
        assert!(in_subnet(&ip, &subnets[h]), "pod {ip} of host {h}");
        pods.push((ns, ip));
    }
    for (from, (ns, _)) in pods.iter().enumerate() {
        let unreached: Vec<&String> = (pods.iter().map(|p| &p.1))
            .filter(|ip| !ns.ping(ip))
            .collect();
        assert!(unreached.is_empty(), "host {from}'s pod -> {unreached:?}");
    }

    // a vxlan node's lease is no host-gw peer: ignored, as flanneld does
    let stranger = "10.225.200.0/24";
    etcd.ctl(&format!(
        "put {} '{}'",
        key(stranger),
        lease_value("192.168.102.250", "0a:58:0a:e1:c8:00")
    ));
    let logged = within(Duration::from_secs(5), || {
        agents[0].log().contains("is not host-gw")
    });
    assert!(logged.is_some(), "{}", agents[0].log());
    for h in &c.hosts {
        assert!(!h.sh("ip route show proto 73").contains(stranger));
    }

    // a hand-deleted route comes back at the next reconcile
    c.hosts[0].sh(&format!("ip route del {}", subnets[1]));
    let back = within(Duration::from_secs(5), || routed(0, 1));
    assert!(back.is_some(), "{}", agents[0].log());
}

#[test]
fn host_gw_dual_stack_routes_ipv6_subnets_via_the_peers_ipv6_addresses() {
    let c = Cluster::new(2, "192.168.102", 1500);
    ipv6_underlay(&c, "fd00:102");
    let etcd = Etcd::start(&c);
    let config = r#"{"Network":"10.225.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:225::/48","Backend":{"Type":"host-gw"}}"#;
    etcd.ctl(&format!("put {PREFIX}/config '{config}'"));
    let agents: Vec<Agent> = (c.hosts.iter())
        .map(|h| Agent::start(h, &etcd, 60, 1))
        .collect();
    let mut v6 = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let gw = a.env_var("FLANNEL_IPV6_SUBNET", 30);
        let ip: std::net::Ipv6Addr = gw.split('/').next().unwrap().parse().unwrap();
        v6.push(format!(
            "{}/64",
            std::net::Ipv6Addr::from(u128::from(ip) - 1)
        ));
        assert!(c.hosts[i].link("flannel-v6.1").is_none(), "host {i}");
        assert!(c.hosts[i].link("flannel.1").is_none(), "host {i}");
    }
    let leases = etcd.get_prefix(&format!("{PREFIX}/subnets/"));
    for i in 0..2 {
        let want = format!(
            r#"{{"PublicIP":"{}","PublicIPv6":"fd00:102::{}","BackendType":"host-gw"}}"#,
            c.underlay_ip(i),
            10 + i
        );
        assert!(
            leases.iter().any(|(_, v)| *v == want),
            "{want} in {leases:?}"
        );
    }
    let routed = within(Duration::from_secs(5), || {
        (0..2).all(|h| {
            let p = 1 - h;
            c.hosts[h]
                .sh("ip -6 route show proto 73")
                .contains(&format!("{} via fd00:102::{} dev ul0", v6[p], 10 + p))
        })
    });
    assert!(
        routed.is_some(),
        "{}\n{}",
        c.hosts[0].sh("ip -6 route"),
        agents[0].log()
    );
    // pods reach each other over both families
    let pods: Vec<(Ns, Vec<String>)> = (0..2)
        .map(|h| {
            let ns = Ns::new("c");
            let cid = format!("hg6{h}");
            let r = Call::new("vxlan-overlay", "ADD", &c.hosts[h], &ns.path(), &cid)
                .run(&agents[h].conf(&etcd))
                .expect_ok();
            let ips = all_ips(&r);
            assert_eq!(ips.len(), 2, "both families in {r}");
            (ns, ips)
        })
        .collect();
    for (h, (ns, _)) in pods.iter().enumerate() {
        for ip in &pods[1 - h].1 {
            let ok = within(Duration::from_secs(10), || ns.ping(ip));
            assert!(ok.is_some(), "host {h}'s pod -> {ip}");
        }
    }
}
