//! portmap chained after bridge, through cnitool: a TCP server in the container answers on
//! the host port from a namespace behind the host, from the host's localhost and from the
//! container itself (hairpin, which with br_netfilter needs the bridge's hairpinMode, as
//! for the reference plugins); CHECK; DEL removes the forwarding. The rules are made and
//! removed over netlink, and nft lists them as the text they stand for.

use cni_tests::*;

#[test]
fn host_port_reaches_the_container_from_outside_localhost_and_itself() {
    let t = Cnitool::new(json!({
        "cniVersion": "1.0.0", "name": "pmnet",
        "plugins": [
            {"type": "bridge", "bridge": "cnipm0", "isDefaultGateway": true, "hairpinMode": true,
             "ipam": {"type": "host-local", "dataDir": "@DATA@", "ranges": [[{"subnet": "10.66.0.0/24"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    }));
    let outside = Ns::new("o");
    t.host.veth_to(&outside, "10.66.9");

    let c = Ns::new("c");
    let caps = r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}"#;
    let (ok, _, err) = t.run(&["add", "pmnet", &c.path()], &[("CAP_ARGS", caps)]);
    assert!(ok, "{err}");
    let _server = Server::start(&c, 80);

    let from_outside = fetch(&outside, "10.66.9.1", 8080);
    assert_eq!(
        from_outside.as_deref(),
        Some("hello from 10.66.9.2"),
        "outside -> host port"
    );
    let from_localhost = fetch(&t.host, "127.0.0.1", 8080);
    assert!(
        from_localhost.is_some_and(|s| s.starts_with("hello from 10.66.0.")),
        "localhost -> host port"
    );
    let hairpin = fetch(&c, "10.66.9.1", 8080);
    assert_eq!(
        hairpin.as_deref(),
        Some("hello from 10.66.0.1"),
        "container -> its own host port, masqueraded"
    );

    assert!(t.run(&["check", "pmnet", &c.path()], &[]).0);
    assert!(t.run(&["del", "pmnet", &c.path()], &[]).0);
    let rules = t.host.nft_ruleset();
    assert!(!rules.contains("dnat"), "{rules}");
    let refused = t.host.exec(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', 8080), timeout=1)\"",
    );
    assert!(
        !refused.status.success(),
        "the host port still answers after DEL"
    );
}

#[test]
fn host_ip_restricts_and_bad_mappings_are_refused() {
    let host = Ns::new("h");
    let c = Ns::new("c");
    let prev = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": c.path()}],
        "ips": [{"address": "10.67.0.2/24", "interface": 0},
                {"address": "fd67::2/64", "interface": 0}]});
    let conf = |maps: serde_json::Value| {
        json!({"cniVersion": "1.0.0", "name": "pm", "type": "portmap",
        "runtimeConfig": {"portMappings": maps}, "prevResult": prev})
    };
    let ok = conf(json!([
        {"hostPort": 9090, "containerPort": 90, "protocol": "udp", "hostIP": "192.168.50.1"},
        {"hostPort": 7070, "containerPort": 70, "protocol": "sctp", "hostIP": "fd67::1"},
        {"hostPort": 8080, "containerPort": 80}
    ]));
    // The rules go over netlink: no nft run on an ADD either (the table is new here).
    let spy = tempfile::tempdir().unwrap();
    let (path, log) = nft_spy(spy.path());
    Call::new("portmap", "ADD", &host, &c.path(), "p1")
        .env("PATH", &path)
        .run(&ok)
        .expect_ok();
    let runs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(runs.is_empty(), "nft ran on ADD: {runs}");
    // nft lists them as the text they stand for; a hostIP takes only its own family.
    let rules = host.nft_ruleset();
    for rule in [
        "ip daddr 192.168.50.1 udp dport 9090 dnat ip to 10.67.0.2:90 comment \"pm/p1\"",
        "ip6 daddr fd67::1 sctp dport 7070 dnat ip6 to [fd67::2]:70 comment \"pm/p1\"",
        "meta nfproto ipv4 fib daddr type local tcp dport 8080 dnat ip to 10.67.0.2:80",
        "meta nfproto ipv6 fib daddr type local tcp dport 8080 dnat ip6 to [fd67::2]:80",
        "ct status dnat ip saddr 127.0.0.0/8 ip daddr 10.67.0.2 udp dport 90 masquerade",
        "ct status dnat ip saddr 10.67.0.2 ip daddr 10.67.0.2 tcp dport 80 masquerade",
        "ct status dnat ip6 saddr ::1 ip6 daddr fd67::2 sctp dport 70 masquerade",
        "ct status dnat ip6 saddr fd67::2 ip6 daddr fd67::2 tcp dport 80 masquerade",
    ] {
        assert!(rules.contains(rule), "{rule} missing from\n{rules}");
    }
    assert!(!rules.contains("dnat ip6 to [fd67::2]:90"), "{rules}");
    assert!(!rules.contains("dnat ip to 10.67.0.2:70"), "{rules}");
    Call::new("portmap", "CHECK", &host, &c.path(), "p1")
        .run(&ok)
        .expect_ok();
    // ADD again with fewer mappings: the container's chains hold only the new ones.
    let fewer = conf(json!([{"hostPort": 8080, "containerPort": 80}]));
    Call::new("portmap", "ADD", &host, &c.path(), "p1")
        .run(&fewer)
        .expect_ok();
    let again = host.nft_ruleset();
    assert!(!again.contains("dport 9090"), "{again}");
    assert_eq!(
        again.matches("tcp dport 8080 dnat ip to").count(),
        2,
        "{again}"
    );
    Call::new("portmap", "ADD", &host, &c.path(), "p1")
        .run(&ok)
        .expect_ok();
    // A runtime that lost the mappings (no cache, no capability args) still removes
    // them; DEL of a container that had none is a no-op.
    // One of the container's chains gone by hand: DEL still removes the others.
    let out_chain = (rules.lines())
        .find_map(|l| l.trim().strip_prefix("chain pm-out-"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the container's output chain");
    host.sh(&format!("nft delete chain inet cni_rs pm-out-{out_chain}"));
    // Chains go over netlink: no nft run on a DEL.
    let mut forgotten = ok.clone();
    forgotten.as_object_mut().unwrap().remove("runtimeConfig");
    for cid in ["p1", "p1", "never-added"] {
        Call::new("portmap", "DEL", &host, &c.path(), cid)
            .env("PATH", &path)
            .run(&forgotten)
            .expect_ok();
    }
    assert!(!host.nft_ruleset().contains("dnat"));
    let runs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(runs.is_empty(), "nft ran: {runs}");
    assert_eq!(
        Call::new("portmap", "CHECK", &host, &c.path(), "p1")
            .run(&ok)
            .code(),
        104
    );
    for bad in [
        json!([{"hostPort": 0, "containerPort": 90}]),
        json!([{"hostPort": 70000, "containerPort": 90}]),
        json!([{"hostPort": 1, "containerPort": 90, "protocol": "icmp"}]),
    ] {
        assert_eq!(
            Call::new("portmap", "ADD", &host, &c.path(), "p2")
                .run(&conf(bad.clone()))
                .code(),
            7,
            "{bad}"
        );
    }
    let mut cond = conf(json!([{"hostPort": 1, "containerPort": 2}]));
    cond["conditionsV4"] = json!(["-s", "1.2.3.4"]);
    assert_eq!(
        Call::new("portmap", "ADD", &host, &c.path(), "p3")
            .run(&cond)
            .code(),
        2
    );
    assert!(!host.nft_ruleset().contains("dnat"));
}
