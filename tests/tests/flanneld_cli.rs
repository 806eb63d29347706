//! vxlan-overlay-agent started as flanneld is (issue 18): a flanneld unit's command line
//! alone, translated flag by flag (a node behind NAT publishing `-public-ip`), etcd with
//! authentication (flags, FLANNELD_* environment, the CNI config's store fields), systemd's
//! readiness notification, the health endpoint, and the interface selection flags on
//! hosts with two links, and flanneld's Kubernetes mode refused by name. Underlays
//! 192.168.93/24 and 192.168.94/24, cluster networks 10.234/16 and 10.235/16. Every etcd
//! and agent is stopped by PID, also when a test fails.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use cni_tests::agent_harness::*;
use cni_tests::*;
use serde_json::Value;

const NET: &str = r#"{"Network":"10.234.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// A flanneld unit's flags for the test's etcd, with the subnet file in `dir`.
fn flanneld(etcd: &Etcd, dir: &Path, more: &[String]) -> Vec<String> {
    let mut args = vec![
        format!("-etcd-endpoints={}", etcd.url),
        format!("-etcd-prefix={PREFIX}"),
        format!("-subnet-file={}", dir.join("subnet.env").display()),
    ];
    args.extend_from_slice(more);
    args
}

/// The lease JSON under `key`, as etcd holds it (`ctl_user`: etcdctl's --user, if any).
fn lease(etcd: &Etcd, key: &str, ctl_user: &str) -> Value {
    let out = etcd.ctl(&format!("{ctl_user} get {key} --print-value-only"));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{key}: {out:?}: {e}"))
}

/// The local (source) address of a host's flannel.1.
fn vtep_local(h: &Ns) -> Value {
    h.link("flannel.1").expect("flannel.1")["linkinfo"]["info_data"]["local"].clone()
}

fn logs(agents: &[&Agent]) -> String {
    agents
        .iter()
        .map(|a| format!("--- {}\n{}", a.host, a.log()))
        .collect()
}

#[test]
fn a_flanneld_command_line_alone_claims_a_lease_publishing_its_public_ip() {
    let c = Cluster::new(2, "192.168.93", 1500);
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!("put {PREFIX}/config '{NET}'"));
    // ExecStart=/usr/bin/flanneld -etcd-endpoints=… -etcd-prefix=… -iface=<its address>
    //   -public-ip=<its NAT address> -subnet-file=…, with only the binary's name changed
    let nat = "192.168.93.200"; // on no interface anywhere
    let args = |d: &Path| {
        flanneld(
            &etcd,
            d,
            &[
                format!("-iface={}", c.underlay_ip(0)),
                format!("--public-ip={nat}"),
            ],
        )
    };
    let mut a0 = Agent::start_flags(&c.hosts[0], args, &[]);
    let a1 = Agent::start(&c.hosts[1], &etcd, 60, 1);
    let (s0, s1) = (a0.subnet(30), a1.subnet(30));
    assert_eq!(lease(&etcd, &key(&s0), "")["PublicIP"], nat);
    // the device sends from the interface's address; peers send to the published one
    assert_eq!(vtep_local(&c.hosts[0]), c.underlay_ip(0));
    let both = within(Duration::from_secs(10), || {
        programmed(&c.hosts[0], &s1, &c.underlay_ip(1)) && programmed(&c.hosts[1], &s0, nat)
    });
    assert!(both.is_some(), "{}", logs(&[&a0, &a1]));
    // its state went to the default dataDir (here under its own /var/lib)
    let state = a0
        .dir
        .path()
        .join("varlib/cni/vxlan-overlay/_agent/flannel.json");
    assert!(state.is_file(), "{}", a0.log());

    // Killed and started again from nothing but the same flags: the lease naming the
    // public address is its own, so it takes the subnet back.
    a0.sigkill();
    let again = Agent::start_flags(&c.hosts[0], args, &[]);
    assert_eq!(again.subnet(30), s0, "{}", again.log());
    assert!(again.log().contains("took back"), "{}", again.log());
}

#[test]
fn etcd_with_authentication_from_flags_environment_and_config() {
    let c = Cluster::new(3, "192.168.93", 1500);
    let etcd = Etcd::start(&c);
    etcd.ctl("user add root:pw");
    etcd.ctl("auth enable");
    etcd.ctl(&format!("--user root:pw put {PREFIX}/config '{NET}'"));
    // flanneld's flags, the password from the environment (an EnvironmentFile's)
    let a0 = Agent::start_flags(
        &c.hosts[0],
        |d| flanneld(&etcd, d, &["-etcd-username".into(), "root".into()]),
        &[("FLANNELD_ETCD_PASSWORD", "pw".into())],
    );
    // the CNI config's store fields
    let store = json!({"store": {"type": "etcd", "endpoints": [etcd.url], "prefix": PREFIX,
        "leaseTTL": 60, "username": "root", "password": "pw"}});
    let a1 = Agent::start_with(&c.hosts[1], &etcd, 60, 1, store);
    let (s0, s1) = (a0.subnet(30), a1.subnet(30));
    let both = within(Duration::from_secs(10), || {
        programmed(&c.hosts[0], &s1, &c.underlay_ip(1))
            && programmed(&c.hosts[1], &s0, &c.underlay_ip(0))
    });
    assert!(both.is_some(), "{}", logs(&[&a0, &a1]));
    assert_eq!(
        lease(&etcd, &key(&s0), "--user root:pw")["PublicIP"],
        c.underlay_ip(0)
    );
    // a wrong password claims nothing and says why
    let wrong = Agent::start_flags(
        &c.hosts[2],
        |d| {
            flanneld(
                &etcd,
                d,
                &["--etcd-username=root".into(), "--etcd-password=no".into()],
            )
        },
        &[],
    );
    let said = within(Duration::from_secs(10), || {
        wrong.log().contains("authentication failed")
    });
    assert!(said.is_some(), "{}", wrong.log());
    assert!(wrong.subnet_env().is_none());
}

#[test]
fn a_notify_socket_receives_ready_once_the_subnet_file_exists() {
    let c = Cluster::new(1, "192.168.93", 1500);
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!("put {PREFIX}/config '{NET}'"));
    // systemd's socket for a Type=notify unit: a datagram socket of the test's own
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let a = Agent::start_flags(
        &c.hosts[0],
        |d| flanneld(&etcd, d, &[]),
        &[("NOTIFY_SOCKET", path.display().to_string())],
    );
    let mut buf = [0u8; 256];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification: {e}\n{}", a.log()));
    assert!(a.subnet_env().is_some(), "READY=1 before the subnet file");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), "READY=1");
    // once: nothing more while it runs on
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(sock.recv(&mut buf).is_err(), "a second notification");
}

#[test]
fn the_health_endpoint_answers_as_flanneld() {
    let c = Cluster::new(1, "192.168.93", 1500);
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!("put {PREFIX}/config '{NET}'"));
    let h = &c.hosts[0];
    let get = |url: &str| h.sh(&format!("curl -s -i --max-time 5 {url} || true"));
    // flanneld's default address, 0.0.0.0
    let a = Agent::start_flags(
        h,
        |d| flanneld(&etcd, d, &["-healthz-port=8471".into()]),
        &[],
    );
    a.subnet(30);
    let ok = get(&format!("http://{}:8471/healthz", c.underlay_ip(0)));
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}\n{}", a.log());
    assert!(ok.ends_with("\r\n\r\nflanneld is running"), "{ok}");
    let other = get(&format!("http://{}:8471/metrics", c.underlay_ip(0)));
    assert!(other.starts_with("HTTP/1.1 404 Not Found\r\n"), "{other}");
    drop(a);
    // on the address given only
    let a = Agent::start_flags(
        h,
        |d| {
            flanneld(
                &etcd,
                d,
                &[
                    "--healthz-ip".into(),
                    "127.0.0.1".into(),
                    "--healthz-port=8472".into(),
                ],
            )
        },
        &[],
    );
    a.subnet(30);
    let ok = get("http://127.0.0.1:8472/healthz");
    assert!(ok.ends_with("flanneld is running"), "{ok}\n{}", a.log());
    assert_eq!(
        get(&format!("http://{}:8472/healthz", c.underlay_ip(0))),
        ""
    );
}

#[test]
fn iface_regex_and_iface_can_reach_choose_the_second_link() {
    let c = Cluster::new(3, "192.168.93", 1500);
    let etcd = Etcd::start(&c);
    let net = r#"{"Network":"10.235.0.0/16","Backend":{"Type":"vxlan"}}"#;
    etcd.ctl(&format!("put {PREFIX}/config '{net}'"));
    // a second underlay, 192.168.94.0/24 on a switch of its own, as link ul1 of every
    // host; the default route stays on ul0
    let sw = Ns::new("sw");
    sw.sh("ip link add sw1 type bridge && ip link set sw1 up");
    let second = |i: usize| format!("192.168.94.{}", 10 + i);
    for (i, h) in c.hosts.iter().enumerate() {
        sw.sh(&format!(
            "ip link add p{i} type veth peer name ul1 netns {} && ip link set p{i} master sw1 up",
            h.name
        ));
        h.sh(&format!(
            "ip link set ul1 up && ip addr add {}/24 dev ul1",
            second(i)
        ));
    }
    let choices: [Vec<String>; 3] = [
        // by name (no address matches it)
        vec!["-iface-regex=^ul1$".into()],
        // an --iface naming nothing is passed over; the regex matches ul1's address
        vec![
            "-iface=nope0".into(),
            r"-iface-regex=^192\.168\.94\.".into(),
        ],
        // the link of the route to an address of that network
        vec!["-iface-can-reach=192.168.94.99".into()],
    ];
    let agents: Vec<Agent> = (c.hosts.iter().zip(&choices))
        .map(|(h, more)| Agent::start_flags(h, |d| flanneld(&etcd, d, more), &[]))
        .collect();
    let subnets: Vec<String> = agents.iter().map(|a| a.subnet(30)).collect();
    let all: Vec<&Agent> = agents.iter().collect();
    for (i, s) in subnets.iter().enumerate() {
        assert_eq!(
            lease(&etcd, &key(s), "")["PublicIP"],
            second(i),
            "{}",
            logs(&all)
        );
        assert_eq!(vtep_local(&c.hosts[i]), second(i));
    }
    let meshed = within(Duration::from_secs(10), || {
        (0..3).all(|i| {
            (0..3)
                .filter(|j| *j != i)
                .all(|j| programmed(&c.hosts[i], &subnets[j], &second(j)))
        })
    });
    assert!(meshed.is_some(), "{}", logs(&all));
}

#[test]
fn kubernetes_mode_flags_stop_the_agent_naming_the_flag() {
    let h = Ns::new("n");
    for flag in ["--kube-subnet-mgr", "-kube-api-url=https://10.0.0.1:6443"] {
        let out = h.exec(&format!(
            "timeout 10 {} {flag} -etcd-endpoints=http://127.0.0.1:1",
            agent_bin().display()
        ));
        let err = String::from_utf8_lossy(&out.stderr);
        let name = flag.trim_start_matches('-').split('=').next().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(
            err.contains(&format!("--{name}")) && err.contains("Kubernetes mode is not served"),
            "{flag}: {err}"
        );
    }
}

/// flanneld's newer firewall and route flags: `-iptables-forward-rules=false` leaves the
/// FORWARD accept out, `-ip-masq-fully-random-disable` masquerades without fully random
/// ports, `-ip-blackhole-route` adds a blackhole route for the node's subnet.
#[test]
fn forward_rules_off_masquerade_not_fully_random_and_a_blackhole_route() {
    let c = Cluster::new(1, "192.168.93", 1500);
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!("put {PREFIX}/config '{NET}'"));
    let h = &c.hosts[0];
    let more = [
        "-ip-masq",
        "-ip-masq-fully-random-disable",
        "-iptables-forward-rules=false",
        "--ip-blackhole-route",
    ]
    .map(String::from);
    let a = Agent::start_flags(h, |d| flanneld(&etcd, d, &more), &[]);
    let s = a.subnet(30);
    let env = within(Duration::from_secs(10), || {
        a.subnet_env()
            .is_some_and(|e| e.contains("FLANNEL_IPMASQ=true"))
    });
    assert!(env.is_some(), "{}", a.log());
    let set = |name: &str| h.sh(&format!("nft list set inet cni_rs {name}"));
    let net = "10.234.0.0/16";
    assert!(set("nodemasq4_plain").contains(net), "{}", h.nft_ruleset());
    assert!(!set("nodemasq4").contains(net), "{}", h.nft_ruleset());
    assert!(!set("cluster4").contains(net), "{}", h.nft_ruleset());
    let routes: Value = serde_json::from_str(&h.sh("ip -j route show type blackhole")).unwrap();
    let held = routes
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["dst"] == s.as_str());
    assert!(
        held,
        "no blackhole route for {s}: {routes}; log:\n{}",
        a.log()
    );
}
