//! Drop-in for the reference plugins (issue 13): the inputs the reference accepts, run
//! against Debian's plugins and ours side by side with the same configs: containerd's
//! capability shapes (kubelet's path), spec versions 0.1.0 and 0.2.0, prevResults without
//! a version, what Go writes (field names in any case, null, `"ipam": {}`), host-local's
//! duplicate and impossible requests, the bridge's MAC, portmap over UDP, firewall on a
//! host whose iptables FORWARD policy is DROP, and a plugin run by hand with no CNI_COMMAND.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cni_tests::*;
use serde_json::Value;

/// The two sides: our plugins and Debian's (1.1.1), which speaks up to 1.0.0.
fn sides() -> [(&'static str, PathBuf); 2] {
    [("ours", bin_dir()), ("reference", reference_dir())]
}

fn versions_of(side: &str) -> &'static [&'static str] {
    if side == "ours" {
        VERSIONS
    } else {
        &VERSIONS[..6]
    }
}

/// What a chain through cnitool in `t` says for `args`, run with `side`'s plugins.
fn tool(
    t: &Cnitool,
    side: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let path = side.display().to_string();
    let mut all = vec![("CNI_PATH", path.as_str())];
    all.extend_from_slice(env);
    t.run(args, &all)
}

/// containerd's CRI passes the capabilities with Go's field names, and kubelet's pod
/// labels in CNI_ARGS behind IgnoreUnknown.
#[test]
fn kubelet_path_with_containerd_field_names() {
    let caps = r#"{"portMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}],
        "bandwidth":{"IngressRate":8000000,"IngressBurst":80000,"EgressRate":8000000,"EgressBurst":80000}}"#;
    let args =
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc";
    for (side, dir) in sides() {
        let t = Cnitool::new(json!({
            "cniVersion": "0.4.0", "name": "k8s-pod-network",
            "plugins": [
                {"type": "bridge", "bridge": "cnik8s0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
                 "ipam": {"type": "host-local", "dataDir": "@DATA@", "ranges": [[{"subnet": "10.74.0.0/24"}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "bandwidth", "capabilities": {"bandwidth": true}}
            ]
        }));
        let outside = Ns::new("o");
        t.host.veth_to(&outside, "10.74.9");
        let c = Ns::new("c");
        let env = [("CAP_ARGS", caps), ("CNI_ARGS", args)];
        let (ok, out, err) = tool(&t, &dir, &["add", "k8s-pod-network", &c.path()], &env);
        assert!(ok, "{side}: {err}");
        let r: Value = serde_json::from_str(&out).unwrap();
        let _server = Server::start(&c, 80);
        assert_eq!(
            fetch(&outside, "10.74.9.1", 8080).as_deref(),
            Some("hello from 10.74.9.2"),
            "{side}: hostPort 8080"
        );
        let veth = r["interfaces"][1]["name"].as_str().unwrap();
        let qdisc = t.host.sh(&format!("tc qdisc show dev {veth}"));
        assert!(
            qdisc.contains("tbf") && qdisc.contains("rate 8Mbit"),
            "{side}: {qdisc}"
        );
        let (ok, _, err) = tool(&t, &dir, &["del", "k8s-pod-network", &c.path()], &env);
        assert!(ok, "{side} DEL: {err}");
        let rules = t
            .host
            .sh("nft list ruleset; iptables-save -t nat 2>/dev/null || true");
        assert!(
            !rules.contains("dport 8080"),
            "{side}: the mapping stayed: {rules}"
        );
        assert!(t.host.live_veths().is_empty());
    }
}

/// The parts of a bridge result that must agree (MACs and veth names are random).
fn meaning(r: &Value) -> Value {
    let mut m = r.clone();
    m.as_object_mut().unwrap().remove("interfaces");
    m
}

#[test]
fn every_version_and_what_go_writes() {
    for (side, dir) in sides() {
        for v in versions_of(side) {
            let host = Ns::new("h");
            let c = Ns::new("c");
            let data = tempfile::tempdir().unwrap();
            // null where Go writes nil, keys in another case, CNI_ARGS as kubelet sets it
            let conf = json!({"cniVersion": v, "name": "gonet", "type": "bridge",
                "Bridge": "cnigo0", "isDefaultGateway": true, "mtu": null, "dns": {"nameservers": null},
                "ipam": {"type": "host-local", "dataDir": data.path(), "routes": null,
                         "Ranges": [[{"subnet": "10.75.0.0/24", "gateway": null}]]}});
            let mut call = Call::new("bridge", "ADD", &host, &c.path(), "go1")
                .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=x");
            call.bin_dir = dir.clone();
            let r = call.run(&conf).expect_ok();
            assert_eq!(r["cniVersion"], *v, "{side} {v}: {r}");
            if *v < "0.3.0" {
                assert_eq!(r["ip4"]["ip"], "10.75.0.2/24", "{side} {v}: {r}");
                assert_eq!(r["ip4"]["gateway"], "10.75.0.1", "{side} {v}: {r}");
            } else {
                assert_eq!(r["ips"][0]["address"], "10.75.0.2/24", "{side} {v}: {r}");
                assert_eq!(r["interfaces"][0]["name"], "cnigo0", "{side} {v}: {r}");
            }
            assert!(c.ping("10.75.0.1"), "{side} {v}");
            // a chained plugin fed that result, as a runtime passes it, and without a version
            let mut prev = r.clone();
            prev.as_object_mut().unwrap().remove("cniVersion");
            let tuning = json!({"cniVersion": v, "name": "gonet", "type": "tuning",
                "sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1"}, "prevResult": prev});
            let mut call = Call::new("tuning", "ADD", &host, &c.path(), "go1");
            call.bin_dir = dir.clone();
            let tuned = call.run(&tuning).expect_ok();
            assert_eq!(
                meaning(&tuned),
                meaning(&r),
                "{side} {v}: tuning passes the result on"
            );
            let mut call = Call::new("bridge", "DEL", &host, &c.path(), "go1");
            call.bin_dir = dir.clone();
            call.run(&conf).expect_ok();
            assert_eq!(store_allocations(data.path(), "gonet"), 0, "{side} {v}");
        }
    }
}

#[test]
fn legacy_results_match_the_references() {
    for v in ["0.1.0", "0.2.0"] {
        let results: Vec<Value> = sides()
            .iter()
            .map(|(side, dir)| {
                let host = Ns::new("h");
                let c = Ns::new("c");
                let data = tempfile::tempdir().unwrap();
                let mut conf = bridge_conf(v, data.path(), "10.76.0.0/24", json!({}));
                conf["ipam"]["ranges"] =
                    json!([[{"subnet": "10.76.0.0/24"}], [{"subnet": "fd76::/64"}]]);
                conf["ipam"]["routes"] =
                    json!([{"dst": "10.200.0.0/16"}, {"dst": "fd99::/64", "gw": "fd76::9"}]);
                let mut call = Call::new("bridge", "ADD", &host, &c.path(), "old1");
                call.bin_dir = dir.clone();
                let r = call.run(&conf).expect_ok();
                let mut call = Call::new("bridge", "DEL", &host, &c.path(), "old1");
                call.bin_dir = dir.clone();
                call.run(&conf).expect_ok();
                eprintln!("{side} {v}: {r}");
                r
            })
            .collect();
        assert_eq!(results[0], results[1], "{v}: ours, then the reference's");
    }
}

#[test]
fn podman_ipam_none_and_cni_args_a_plugin_does_not_read() {
    for (side, dir) in sides() {
        let host = Ns::new("h");
        let c = Ns::new("c");
        // podman network create --ipam-driver none writes exactly this
        let conf = json!({"cniVersion": "0.4.0", "name": "noipam", "type": "bridge",
            "bridge": "cninone0", "isGateway": true, "ipMasq": true, "hairpinMode": true, "ipam": {}});
        let mut call = Call::new("bridge", "ADD", &host, &c.path(), "n1");
        call.bin_dir = dir.clone();
        let r = call.run(&conf).expect_ok();
        assert!(r.get("ips").is_none(), "{side}: {r}");
        assert!(
            c.link("eth0").is_some() && host.addrs("cninone0").is_empty(),
            "{side}"
        );
        let mut call = Call::new("bridge", "DEL", &host, &c.path(), "n1");
        call.bin_dir = dir.clone();
        call.run(&conf).expect_ok();
        // loopback reads no CNI_ARGS, so it does not care what they are
        let lo = json!({"cniVersion": "0.4.0", "name": "lo", "type": "loopback"});
        let mut call = Call::new("loopback", "ADD", &host, &c.path(), "n1").env("CNI_ARGS", "none");
        call.bin_dir = dir.clone();
        call.run(&lo).expect_ok();
    }
}

#[test]
fn host_local_refuses_duplicate_and_impossible_requests_as_the_reference() {
    for (side, dir) in sides() {
        let host = Ns::new("h");
        let data = tempfile::tempdir().unwrap();
        let conf = json!({"cniVersion": "1.0.0", "name": "dup", "type": "host-local",
            "ipam": {"type": "host-local", "dataDir": data.path(),
                     "ranges": [[{"subnet": "10.77.0.0/24", "rangeEnd": "10.77.0.20"}]]}});
        let call = |cid: &str, args: &str| {
            let mut c = Call::new("host-local", "ADD", &host, "/x", cid).env("CNI_ARGS", args);
            c.bin_dir = dir.clone();
            c.run(&conf)
        };
        let first = call("d1", "").expect_ok();
        assert_eq!(first["ips"][0]["address"], "10.77.0.2/24");
        assert!(!call("d1", "").ok, "{side}: a second ADD of d1/eth0");
        for ip in ["10.77.0.2", "10.77.0.1", "10.78.0.5", "10.77.0.21"] {
            assert!(
                !call("d2", &format!("IP={ip}")).ok,
                "{side}: requested {ip}"
            );
        }
        assert_eq!(
            reservations(data.path(), "dup").len(),
            1,
            "{side}: nothing taken"
        );
        // another interface of the same container is another attachment
        let mut c = Call::new("host-local", "ADD", &host, "/x", "d1").ifname("eth1");
        c.bin_dir = dir.clone();
        c.run(&conf).expect_ok();
    }
}

/// A bridge made by someone else, without a MAC of its own, takes its first port's: the
/// result names the MAC the bridge has once the port is on it.
#[test]
fn the_bridge_mac_in_the_result_is_the_bridges_final_one() {
    for (side, dir) in sides() {
        let host = Ns::new("h");
        host.sh("ip link add cnimac0 type bridge && ip link set cnimac0 up");
        let c = Ns::new("c");
        let data = tempfile::tempdir().unwrap();
        let mut conf = bridge_conf("1.0.0", data.path(), "10.79.0.0/24", json!({}));
        conf["bridge"] = json!("cnimac0");
        conf["isGateway"] = json!(false);
        conf["isDefaultGateway"] = json!(false);
        let mut call = Call::new("bridge", "ADD", &host, &c.path(), "m1");
        call.bin_dir = dir.clone();
        let r = call.run(&conf).expect_ok();
        let now = host.link("cnimac0").unwrap()["address"].clone();
        assert_eq!(r["interfaces"][0]["mac"], now, "{side}: {r}");
    }
}

/// A UDP client that keeps sending from one source port (so its conntrack flow never
/// expires) and logs every reply; killed on drop.
struct UdpClient(Child, tempfile::NamedTempFile);

impl UdpClient {
    fn start(ns: &Ns, addr: &str, port: u16) -> UdpClient {
        let log = tempfile::NamedTempFile::new().unwrap();
        let script = format!(
            "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0', 40000)); s.settimeout(0.1)\nlog = open('{}', 'a')\n\
             end = time.time() + 30\nwhile time.time() < end:\n    s.sendto(b'ping', ('{addr}', {port}))\n    \
             try:\n        log.write(s.recv(100).decode() + '\\n'); log.flush()\n    \
             except OSError:\n        pass\n    time.sleep(0.05)\n",
            log.path().display()
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", &script])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        UdpClient(child, log)
    }

    /// Waits up to 6 s for a reply from `who`.
    fn heard(&self, who: &str) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(6) {
            if std::fs::read_to_string(self.1.path())
                .unwrap_or_default()
                .lines()
                .any(|l| l == who)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for UdpClient {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A UDP server in `ns` answering every datagram with `name`; killed on drop.
fn udp_server(ns: &Ns, port: u16, name: &str) -> Server {
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', {port}))\n\
         for _ in range(100000):\n    d, a = s.recvfrom(100); s.sendto(b'{name}', a)\n"
    );
    Server::spawn(ns, &script)
}

#[test]
fn a_container_replacing_another_on_a_udp_host_port_receives() {
    for (side, dir) in sides() {
        let t = Cnitool::new(json!({
            "cniVersion": "1.0.0", "name": "udpnet",
            "plugins": [
                {"type": "bridge", "bridge": "cniudp0", "isDefaultGateway": true,
                 "ipam": {"type": "host-local", "dataDir": "@DATA@", "ranges": [[{"subnet": "10.80.0.0/24"}]]}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        }));
        let outside = Ns::new("o");
        t.host.veth_to(&outside, "10.80.9");
        let caps = [(
            "CAP_ARGS",
            r#"{"portMappings":[{"hostPort":5300,"containerPort":53,"protocol":"udp"}]}"#,
        )];
        let old = Ns::new("c");
        let (ok, _, err) = tool(&t, &dir, &["add", "udpnet", &old.path()], &caps);
        assert!(ok, "{side}: {err}");
        let server = udp_server(&old, 53, "old");
        let client = UdpClient::start(&outside, "10.80.9.1", 5300);
        assert!(
            client.heard("old"),
            "{side}: the first container never answered"
        );
        drop(server);
        let (ok, _, err) = tool(&t, &dir, &["del", "udpnet", &old.path()], &caps);
        assert!(ok, "{side}: {err}");
        let new = Ns::new("c");
        let (ok, _, err) = tool(&t, &dir, &["add", "udpnet", &new.path()], &caps);
        assert!(ok, "{side}: {err}");
        let _server = udp_server(&new, 53, "new");
        assert!(
            client.heard("new"),
            "{side}: the stale flow still leads to the old container"
        );
        let (ok, _, err) = tool(&t, &dir, &["del", "udpnet", &new.path()], &caps);
        assert!(ok, "{side}: {err}");
    }
}

/// Docker sets iptables' FORWARD policy to DROP: the container's traffic must pass.
#[test]
fn firewall_passes_traffic_on_a_forward_drop_host() {
    for (side, dir) in sides() {
        let t = Cnitool::new(json!({
            "cniVersion": "1.0.0", "name": "dropnet",
            "plugins": [
                {"type": "bridge", "bridge": "cnidrop0", "isDefaultGateway": true, "ipMasq": true,
                 "ipam": {"type": "host-local", "dataDir": "@DATA@", "ranges": [[{"subnet": "10.81.0.0/24"}]]}},
                {"type": "firewall", "backend": "iptables"}
            ]
        }));
        t.host
            .sh("iptables -P FORWARD DROP && ip6tables -P FORWARD DROP");
        let outside = Ns::new("o");
        t.host.veth_to(&outside, "10.81.9");
        let c = Ns::new("c");
        assert!(!c.ping("10.81.9.2"), "no route yet");
        let (ok, _, err) = tool(&t, &dir, &["add", "dropnet", &c.path()], &[]);
        assert!(ok, "{side}: {err}");
        assert!(
            c.ping("10.81.9.2"),
            "{side}: FORWARD DROP stopped the container"
        );
        let (ok, _, err) = tool(&t, &dir, &["check", "dropnet", &c.path()], &[]);
        assert!(ok, "{side}: {err}");
        let (ok, _, err) = tool(&t, &dir, &["del", "dropnet", &c.path()], &[]);
        assert!(ok, "{side}: {err}");
    }
}

#[test]
fn a_plugin_run_by_hand_says_what_it_is_without_reading_stdin() {
    // A person (or an install script) runs the binary bare: the reference prints what it
    // is and the versions it speaks on stderr, exits 0 and does not wait for stdin.
    for (side, dir) in sides() {
        for plugin in [
            "bridge",
            "host-local",
            "loopback",
            "macvlan",
            "ptp",
            "host-device",
            "static",
            "tuning",
            "portmap",
            "firewall",
            "bandwidth",
        ] {
            let mut child = Command::new(dir.join(plugin))
                .env_clear()
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let t = Instant::now();
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break Some(s);
                }
                if t.elapsed() > Duration::from_secs(5) {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            drop(child.stdin.take());
            if status.is_none() {
                child.kill().unwrap();
            }
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            let what = format!("{side} {plugin}: {status:?} {err}");
            assert!(status.is_some_and(|s| s.success()), "{what}");
            assert!(out.stdout.is_empty(), "{what}");
            assert!(err.contains(&format!("CNI {plugin} plugin")), "{what}");
            assert!(err.contains("CNI protocol versions supported: "), "{what}");
        }
    }
}

// ---- Issue 19, behaviour: the bridge's MAC, ptp's dns, bandwidth's config over
// runtimeConfig, tuning's mac from the config, host-device's DEL and DPDK CHECK. ----

/// One call of `plugin` from `dir` in `host` for the container `c`.
fn call_in(
    dir: &std::path::Path,
    plugin: &str,
    cmd: &str,
    host: &Ns,
    c: &Ns,
    id: &str,
    conf: &Value,
) -> Outcome {
    let mut call = Call::new(plugin, cmd, host, &c.path(), id);
    call.bin_dir = dir.to_path_buf();
    call.run(conf)
}

/// A gateway bridge made without a MAC of its own (as the reference's ensureBridge and
/// `ip link add` make it) keeps the MAC it had while containers come and go, so their
/// gateway MAC does not change under them (upstream's "creates a bridge with a stable
/// MAC addresses").
#[test]
fn a_gateway_bridge_keeps_its_mac_while_ports_join_and_leave() {
    for (side, dir) in sides() {
        let host = Ns::new("h");
        host.sh("ip link add cnistab0 type bridge");
        let mac = || host.link("cnistab0").unwrap()["address"].clone();
        let before = mac();
        let data = tempfile::tempdir().unwrap();
        let mut conf = bridge_conf("1.0.0", data.path(), "10.100.0.0/24", json!({}));
        conf["bridge"] = json!("cnistab0");
        let (c1, c2) = (Ns::new("c"), Ns::new("c"));
        let r = call_in(&dir, "bridge", "ADD", &host, &c1, "st1", &conf).expect_ok();
        assert_eq!(mac(), before, "{side}: the first port joined");
        assert_eq!(r["interfaces"][0]["mac"], before, "{side}: {r}");
        call_in(&dir, "bridge", "ADD", &host, &c2, "st2", &conf).expect_ok();
        assert_eq!(mac(), before, "{side}: the second port joined");
        call_in(&dir, "bridge", "DEL", &host, &c1, "st1", &conf).expect_ok();
        assert_eq!(mac(), before, "{side}: the first port left");
        call_in(&dir, "bridge", "DEL", &host, &c2, "st2", &conf).expect_ok();
        assert_eq!(mac(), before, "{side}: the last port left");
    }
}

/// A bridge whose ports all left has the MAC 00:00:00:00:00:00, which no bridge can be
/// given: the reference fails there ("could not set bridge's mac"); ours fixes a random
/// one, which then stays.
#[test]
fn a_gateway_bridge_left_without_ports_gets_a_mac_that_stays() {
    for (side, dir) in sides() {
        let host = Ns::new("h");
        host.sh(
            "ip link add cnizero0 type bridge && ip link add zp0 type veth peer name zp1 && \
             ip link set zp0 master cnizero0 && ip link del zp0",
        );
        let mac = || host.link("cnizero0").unwrap()["address"].clone();
        assert_eq!(mac(), "00:00:00:00:00:00");
        let data = tempfile::tempdir().unwrap();
        let mut conf = bridge_conf("1.0.0", data.path(), "10.101.0.0/24", json!({}));
        conf["bridge"] = json!("cnizero0");
        let c = Ns::new("c");
        let added = call_in(&dir, "bridge", "ADD", &host, &c, "z1", &conf);
        if side == "reference" {
            assert!(!added.ok, "{side}: {}", added.stdout);
            continue;
        }
        let r = added.expect_ok();
        let fixed = mac();
        assert_ne!(fixed, "00:00:00:00:00:00");
        assert_eq!(r["interfaces"][0]["mac"], fixed, "{side}: {r}");
        call_in(&dir, "bridge", "DEL", &host, &c, "z1", &conf).expect_ok();
        assert_eq!(mac(), fixed, "{side}: the last port left");
    }
}

/// ptp's `dns` replaces IPAM's in the result when it gives any field, even an empty list;
/// absent or null, IPAM's stays.
#[test]
fn ptp_dns_in_the_config_replaces_ipams_also_with_empty_lists() {
    let resolv = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        resolv.path(),
        "nameserver 10.102.0.53\ndomain ipam.test\nsearch ipam.test\noptions ndots:2\n",
    )
    .unwrap();
    let cases = [
        None,
        Some(json!({"nameservers": null})),
        Some(json!({"nameservers": [], "search": [], "options": []})),
        Some(json!({"domain": "ptp.test"})),
        Some(json!({"nameservers": ["10.102.0.54"]})),
    ];
    for dns in cases {
        let seen: Vec<Value> = sides()
            .iter()
            .map(|(side, dir)| {
                let host = Ns::new("h");
                let c = Ns::new("c");
                let data = tempfile::tempdir().unwrap();
                let mut conf = json!({"cniVersion": "1.0.0", "name": "ptpdns", "type": "ptp",
                    "ipam": {"type": "host-local", "dataDir": data.path(), "resolvConf": resolv.path(),
                             "ranges": [[{"subnet": "10.102.0.0/24"}]]}});
                if let Some(d) = &dns {
                    conf["dns"] = d.clone();
                }
                let r = call_in(dir, "ptp", "ADD", &host, &c, "p1", &conf).expect_ok();
                call_in(dir, "ptp", "DEL", &host, &c, "p1", &conf).expect_ok();
                eprintln!("{side} {dns:?}: {r}");
                // Go prints an empty DNS as {}, we leave it out
                r.get("dns").cloned().unwrap_or(json!({}))
            })
            .collect();
        assert_eq!(seen[0], seen[1], "{dns:?}: ours, then the reference's");
        if dns.is_none() {
            assert_eq!(seen[0]["nameservers"], json!(["10.102.0.53"]), "IPAM's DNS");
        }
    }
}

/// The rate of the tbf on `dev` in `ns`, as tc shows it, or None.
fn tbf_rate(ns: &Ns, dev: &str) -> Option<String> {
    let out = ns.sh(&format!("tc qdisc show dev {dev}"));
    let line = out.lines().find(|l| l.contains("tbf"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "rate")?;
    words.next().map(str::to_string)
}

/// bandwidth: the config's own rates win over runtimeConfig's when the config names any
/// of them, null included (Go makes the reference's entry for any key of it).
#[test]
fn bandwidth_config_rates_win_over_runtime_config_whenever_named() {
    let cases = [
        (
            json!({"ingressRate": 4000000, "ingressBurst": 40000}),
            Some("4Mbit"),
        ),
        (json!({"ingressRate": null}), None),
        (json!({}), Some("8Mbit")),
    ];
    for (own, want) in cases {
        for (side, dir) in sides() {
            let host = Ns::new("h");
            let c = Ns::new("c");
            host.sh(&format!(
                "ip link add bwh0 type veth peer name eth0 netns {} && ip link set bwh0 up",
                c.name
            ));
            c.sh("ip link set eth0 up");
            let mut conf = json!({"cniVersion": "1.0.0", "name": "bwnet", "type": "bandwidth",
                "runtimeConfig": {"bandwidth": {"ingressRate": 8000000, "ingressBurst": 80000}},
                "prevResult": {"cniVersion": "1.0.0",
                    "interfaces": [{"name": "bwh0"}, {"name": "eth0", "sandbox": c.path()}],
                    "ips": [{"address": "10.103.0.2/24", "interface": 1}]}});
            merge(&mut conf, own.clone());
            call_in(&dir, "bandwidth", "ADD", &host, &c, "b1", &conf).expect_ok();
            assert_eq!(tbf_rate(&host, "bwh0").as_deref(), want, "{side} {own}");
            call_in(&dir, "bandwidth", "DEL", &host, &c, "b1", &conf).expect_ok();
        }
    }
}

/// tuning's `mac` from the config file is set and is in the result, for the interface
/// prevResult names, whatever sandbox path it gives; DEL puts the old MAC back.
#[test]
fn tuning_mac_from_the_config_file_is_in_the_result() {
    for (side, dir) in sides() {
        let host = Ns::new("h");
        let c = Ns::new("c");
        c.sh("ip link add eth0 type veth peer name tpeer0");
        let before = c.link("eth0").unwrap()["address"].clone();
        let data = tempfile::tempdir().unwrap();
        let mac = "c2:11:22:33:44:55";
        let conf = json!({"cniVersion": "1.0.0", "name": "tunemac", "type": "tuning",
            "mac": mac, "dataDir": data.path(),
            "prevResult": {"cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": "netns"}],
                "ips": [{"address": "10.104.0.2/24", "gateway": "10.104.0.1", "interface": 0}]}});
        let r = call_in(&dir, "tuning", "ADD", &host, &c, "t1", &conf).expect_ok();
        assert_eq!(r["interfaces"][0]["mac"], mac, "{side}: {r}");
        assert_eq!(c.link("eth0").unwrap()["address"], mac, "{side}");
        call_in(&dir, "tuning", "DEL", &host, &c, "t1", &conf).expect_ok();
        assert_eq!(c.link("eth0").unwrap()["address"], before, "{side}");
    }
}

/// host-device: a DEL that cannot give the device back (the host has a link of its name
/// meanwhile) fails and leaves it in the container as it was; once the name is free a DEL
/// gives it back (upstream's "ensures CmdDel is idempotent"); ours succeeds again after.
#[test]
fn host_device_del_is_retried_after_a_name_conflict() {
    for (side, dir) in sides() {
        let host = Ns::new("h");
        let c = Ns::new("c");
        host.sh("ip link add hdev0 type veth peer name hdpeer0 && ip link set hdev0 up");
        let mac = host.link("hdev0").unwrap()["address"].clone();
        let data = tempfile::tempdir().unwrap();
        let conf = json!({"cniVersion": "1.0.0", "name": "hdnet", "type": "host-device",
            "device": "hdev0", "dataDir": data.path()});
        call_in(&dir, "host-device", "ADD", &host, &c, "hd1", &conf).expect_ok();
        host.sh("ip link add hdev0 type veth peer name hdpeer1 && ip link set hdev0 up");
        let del = call_in(&dir, "host-device", "DEL", &host, &c, "hd1", &conf);
        assert!(!del.ok, "{side}: DEL with hdev0 taken on the host");
        let inside = c.link("eth0");
        let inside = inside.unwrap_or_else(|| panic!("{side}: eth0 left the container"));
        assert_eq!(inside["address"], mac, "{side}");
        assert!(
            inside["flags"].as_array().unwrap().contains(&json!("UP")),
            "{side}: {inside}"
        );
        host.sh("ip link del hdev0");
        call_in(&dir, "host-device", "DEL", &host, &c, "hd1", &conf).expect_ok();
        assert_eq!(host.link("hdev0").unwrap()["address"], mac, "{side}");
        assert!(c.link("eth0").is_none(), "{side}");
        if side == "ours" {
            // the reference fails here: it looks for eth0 in the container
            call_in(&dir, "host-device", "DEL", &host, &c, "hd1", &conf).expect_ok();
        }
    }
}

/// host-device with `pciBusID` naming a device bound to a userspace driver (DPDK): no
/// interface moves, and CHECK looks for none. The device is faked: each call runs in a
/// mount namespace of its own (`ip netns exec` makes one) with a tmpfs over
/// /sys/bus/pci holding 0000:00:00.1 bound to vfio-pci, as upstream's test fakes it.
#[test]
fn host_device_check_of_a_dpdk_device_looks_for_no_interface() {
    for (side, dir) in sides() {
        let fake = tempfile::tempdir().unwrap();
        let script = format!(
            "#!/bin/sh\nset -e\nmount -t tmpfs cni-test /sys/bus/pci\n\
             mkdir -p /sys/bus/pci/devices/0000:00:00.1 /sys/bus/pci/drivers/vfio-pci\n\
             ln -s ../../../../bus/pci/drivers/vfio-pci /sys/bus/pci/devices/0000:00:00.1/driver\n\
             exec {} \"$@\"\n",
            dir.join("host-device").display()
        );
        let wrapper = fake.path().join("host-device");
        std::fs::write(&wrapper, script).unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink(dir.join("static"), fake.path().join("static")).unwrap();
        let host = Ns::new("h");
        let c = Ns::new("c");
        let conf = json!({"cniVersion": "1.0.0", "name": "dpdknet", "type": "host-device",
            "pciBusID": "0000:00:00.1",
            "ipam": {"type": "static", "addresses": [{"address": "10.105.0.1/24", "gateway": "10.105.0.254"}]}});
        let r = call_in(fake.path(), "host-device", "ADD", &host, &c, "dp1", &conf).expect_ok();
        assert_eq!(r["ips"][0]["address"], "10.105.0.1/24", "{side}: {r}");
        assert!(c.link("eth0").is_none(), "{side}");
        let check = with_prev(&conf, &r);
        let checked = call_in(
            fake.path(),
            "host-device",
            "CHECK",
            &host,
            &c,
            "dp1",
            &check,
        );
        assert!(checked.ok, "{side}: {} {}", checked.stdout, checked.stderr);
        call_in(fake.path(), "host-device", "DEL", &host, &c, "dp1", &check).expect_ok();
    }
}

// ---- Issue 19, errors a caller sees (layer 2 on 0.1.0/0.2.0, CHECK before 0.4.0, static's
// CIDRs, bandwidth's rate and burst, host-local's requests and too small subnets): the
// reference's exact text; ours keeps its own code where it has one (the README says so).

/// Runs `plugin` `command` with `conf` and CNI_ARGS `cni_args` on each side, in fresh
/// namespaces where `setup` prepared the host one: (ours, the reference's).
fn on_both(
    plugin: &str,
    command: &str,
    conf: &Value,
    cni_args: &str,
    setup: impl Fn(&Ns),
) -> [Outcome; 2] {
    sides().map(|(_, dir)| {
        let host = Ns::new("h");
        setup(&host);
        let c = Ns::new("c");
        let mut call =
            Call::new(plugin, command, &host, &c.path(), "i19").env("CNI_ARGS", cni_args);
        call.bin_dir = dir;
        call.run(conf)
    })
}

/// Both sides refused with the same msg, ours with `ours_code`, the reference with
/// `reference_code`; the msg.
#[track_caller]
fn refused_alike(what: &str, outs: &[Outcome; 2], ours_code: u64, reference_code: u64) -> String {
    let [ours, reference] = outs;
    assert!(
        !reference.ok,
        "{what}: the reference accepted: {}",
        reference.stdout
    );
    assert!(!ours.ok, "{what}: ours accepted: {}", ours.stdout);
    assert_eq!(
        reference.code(),
        reference_code,
        "{what}: {}",
        reference.stdout
    );
    assert_eq!(
        ours.json["msg"], reference.json["msg"],
        "{what}: ours, then the reference's"
    );
    assert_eq!(ours.code(), ours_code, "{what}: {}", ours.stdout);
    ours.json["msg"].as_str().unwrap_or_default().to_string()
}

/// The interface stays after the refused ADD, as the reference leaves it (upstream's
/// specs look for it, with the MAC asked for), and DEL removes it.
#[test]
fn layer_2_results_on_0_1_0_and_0_2_0_are_refused_as_the_reference() {
    let mac = "c2:11:22:33:44:55";
    for v in ["0.1.0", "0.2.0", "0.3.1"] {
        let bridge = json!({"cniVersion": v, "name": "l2", "type": "bridge", "bridge": "cnil2b0"});
        let podman_none = json!({"cniVersion": v, "name": "l2", "type": "bridge",
            "bridge": "cnil2b0", "ipam": {}});
        let macvlan = json!({"cniVersion": v, "name": "l2", "type": "macvlan",
            "master": "i19par0", "ipam": {}});
        for (plugin, conf) in [
            ("bridge", bridge),
            ("bridge", podman_none),
            ("macvlan", macvlan),
        ] {
            let what = format!("{plugin} {v} {conf}");
            let mut outs = Vec::new();
            for (side, dir) in sides() {
                let host = Ns::new("h");
                host.sh(
                    "ip link add i19par0 type veth peer name i19par1 && ip link set i19par0 up",
                );
                let c = Ns::new("c");
                let call = |cmd| {
                    let mut call = Call::new(plugin, cmd, &host, &c.path(), "l2")
                        .env("CNI_ARGS", &format!("IgnoreUnknown=true;MAC={mac}"));
                    call.bin_dir = dir.clone();
                    call.run(&conf)
                };
                outs.push(call("ADD"));
                let link = c
                    .link("eth0")
                    .unwrap_or_else(|| panic!("{side} {what}: no eth0"));
                if plugin == "macvlan" {
                    assert_eq!(link["address"], mac, "{side} {what}");
                }
                assert!(c.addrs("eth0").is_empty(), "{side} {what}");
                call("DEL").expect_ok();
                assert!(c.link("eth0").is_none(), "{side} {what}: DEL left eth0");
            }
            let outs: [Outcome; 2] = outs.try_into().unwrap();
            if v == "0.3.1" {
                // the same config is fine where a result may have no address
                assert!(outs.iter().all(|o| o.ok), "{what}: {outs:?}");
                continue;
            }
            let msg = refused_alike(&what, &outs, 1, 999);
            assert_eq!(msg, "cannot convert: no valid IP addresses", "{what}");
        }
    }
}

#[test]
fn check_before_0_4_0_is_refused_as_the_reference() {
    for v in ["0.1.0", "0.2.0", "0.3.0", "0.3.1"] {
        for plugin in [
            "bridge",
            "macvlan",
            "ptp",
            "host-local",
            "static",
            "bandwidth",
        ] {
            let conf = json!({"cniVersion": v, "name": "chk", "type": plugin, "master": "eth0",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.111.0.0/24"}]]}});
            let what = format!("{plugin} {v}");
            let msg = refused_alike(&what, &on_both(plugin, "CHECK", &conf, "", |_| ()), 1, 1);
            assert_eq!(msg, "config version does not allow CHECK", "{what}");
        }
    }
}

#[test]
fn static_names_the_field_and_value_of_an_address_without_prefix() {
    let conf = |extra: Value| {
        let mut c = json!({"cniVersion": "1.0.0", "name": "st", "type": "bridge",
            "ipam": {"type": "static", "routes": [{"dst": "0.0.0.0/0"}]}});
        merge(&mut c, extra);
        c
    };
    let cases = [
        (
            conf(json!({"ipam": {"type": "static", "addresses": [{"address": "10.112.0.1"}]}})),
            "",
            "the 'address' field is expected to be in CIDR notation, got: '10.112.0.1'",
        ),
        (
            conf(json!({})),
            "IP=10.112.0.1",
            "the 'ip' field is expected to be in CIDR notation, got: '10.112.0.1'",
        ),
        (
            conf(json!({})),
            "IP=10.112.0.1/24,",
            "the 'ip' field is expected to be in CIDR notation, got: ''",
        ),
        (
            conf(json!({"args": {"cni": {"ips": ["10.112.0.1"]}}})),
            "",
            "an entry in the 'ips' field is NOT in CIDR notation, got: '10.112.0.1'",
        ),
        (
            conf(json!({"RuntimeConfig": {"ips": ["fd00:112::1"]}})),
            "",
            "an entry in the 'ips' field is NOT in CIDR notation, got: 'fd00:112::1'",
        ),
        // CNI_ARGS are read before the config's own addresses
        (
            conf(json!({"ipam": {"type": "static", "addresses": [{"address": "bad"}]}})),
            "IP=worse",
            "the 'ip' field is expected to be in CIDR notation, got: 'worse'",
        ),
    ];
    for (conf, cni_args, want) in cases {
        let what = format!("{conf} {cni_args}");
        let msg = refused_alike(
            &what,
            &on_both("static", "ADD", &conf, cni_args, |_| ()),
            7,
            999,
        );
        assert_eq!(msg, want, "{what}");
    }
    // addresses the runtime's `ips` replace are not read, so a bad one fails neither
    let replaced = conf(
        json!({"ipam": {"type": "static", "addresses": [{"address": "bad"}]},
        "runtimeConfig": {"ips": ["10.112.0.9/24"]}}),
    );
    let [ours, reference] = on_both("static", "ADD", &replaced, "", |_| ());
    assert!(reference.ok && ours.ok, "{reference:?} {ours:?}");
    assert_eq!(ours.json["ips"], reference.json["ips"]);
    // GATEWAY= sets the gateway of CNI_ARGS' addresses only, as the reference reads it
    let own =
        conf(json!({"ipam": {"type": "static", "addresses": [{"address": "10.112.1.2/24"}]}}));
    let args = "IP=10.112.2.2/24;GATEWAY=10.112.1.1,10.112.2.1";
    let [ours, reference] = on_both("static", "ADD", &own, args, |_| ());
    assert!(reference.ok && ours.ok, "{reference:?} {ours:?}");
    assert_eq!(ours.json["ips"], reference.json["ips"]);
}

#[test]
fn bandwidth_rate_and_burst_are_refused_as_the_reference() {
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "veth0"},
        {"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": "10.113.0.2/24", "interface": 1}]});
    let cases = [
        (
            json!({"ingressRate": 0, "ingressBurst": 123, "egressRate": 123, "egressBurst": 123}),
            "if burst is set, rate must also be set",
        ),
        (
            json!({"egressBurst": 800}),
            "if burst is set, rate must also be set",
        ),
        (
            json!({"ingressRate": 8000}),
            "if rate is set, burst must also be set",
        ),
        (
            json!({"runtimeConfig": {"bandwidth": {"egressRate": 8000}}}),
            "if rate is set, burst must also be set",
        ),
        (
            json!({"ingressRate": 8000, "ingressBurst": 34359738360u64}),
            "burst cannot be more than 4GB",
        ),
    ];
    for (fields, want) in cases {
        let mut conf = json!({"cniVersion": "1.0.0", "name": "bw", "type": "bandwidth",
            "prevResult": prev});
        merge(&mut conf, fields);
        let what = conf.to_string();
        let msg = refused_alike(
            &what,
            &on_both("bandwidth", "ADD", &conf, "", |_| ()),
            7,
            999,
        );
        assert_eq!(msg, want, "{what}");
    }
}

#[test]
fn host_local_names_the_requests_it_could_not_satisfy_as_the_reference() {
    let data = tempfile::tempdir().unwrap();
    let conf = |args: Value| {
        json!({"cniVersion": "1.0.0", "name": "req", "type": "bridge", "args": args,
            "ipam": {"type": "host-local", "dataDir": data.path(),
                     "ranges": [[{"subnet": "10.114.2.0/24"}], [{"subnet": "10.114.3.0/24"}]]}})
    };
    // outside every range: one left over, in CNI_ARGS and in args
    for (args, cni_args) in [
        (json!({}), "IP=10.115.0.5"),
        (json!({"cni": {"ips": ["10.114.2.5", "10.115.0.5"]}}), ""),
    ] {
        let c = conf(args);
        let what = format!("{c} {cni_args}");
        let msg = refused_alike(
            &what,
            &on_both("host-local", "ADD", &c, cni_args, |_| ()),
            7,
            999,
        );
        assert_eq!(
            msg, "failed to allocate all requested IPs: 10.115.0.5",
            "{what}"
        );
        assert_eq!(
            store_allocations(data.path(), "req"),
            0,
            "{what}: nothing stays taken"
        );
    }
    // two in one range set: the set takes one (the reference picks at random), the other
    // is named (upstream's "fails if a requested custom IP is not used")
    let c = conf(json!({"cni": {"ips": ["10.114.2.88", "10.114.2.77"]}}));
    let [ours, reference] = on_both("host-local", "ADD", &c, "", |_| ());
    assert_eq!((ours.code(), reference.code()), (7, 999));
    for out in [ours, reference] {
        let msg = out.json["msg"].as_str().unwrap_or_default();
        let left = msg.strip_prefix("failed to allocate all requested IPs: ");
        assert!(matches!(left, Some("10.114.2.88" | "10.114.2.77")), "{msg}");
    }
}

#[test]
fn host_local_refuses_a_subnet_too_small_as_the_reference() {
    let data = tempfile::tempdir().unwrap();
    let conf = |ipam: Value| {
        let mut c = json!({"cniVersion": "1.0.0", "name": "small", "type": "bridge",
            "bridge": "cnismall0", "isGateway": true,
            "ipam": {"type": "host-local", "dataDir": data.path()}});
        merge(&mut c["ipam"], ipam);
        c
    };
    let cases = [
        (
            json!({"ranges": [[{"subnet": "10.116.0.0/31"}]]}),
            0,
            "10.116.0.0/31",
        ),
        (
            json!({"ranges": [[{"subnet": "10.116.0.1/31"}]]}),
            0,
            "10.116.0.1/31",
        ),
        (
            json!({"ranges": [[{"subnet": "10.116.0.7/32"}]]}),
            0,
            "10.116.0.7/32",
        ),
        (json!({"subnet": "10.116.0.0/31"}), 0, "10.116.0.0/31"),
        (
            json!({"ranges": [[{"subnet": "10.116.1.0/24"}], [{"subnet": "fd00:116::/127"}]]}),
            1,
            "fd00:116::/127",
        ),
        (
            json!({"ranges": [[{"subnet": "fd00:116::1/128"}]]}),
            0,
            "fd00:116::1/128",
        ),
    ];
    for (ipam, set, net) in cases {
        let c = conf(ipam);
        let want = format!("invalid range set {set}: Network {net} too small to allocate from");
        // alone, and through the bridge as podman runs it (its user sees this text)
        for plugin in ["host-local", "bridge"] {
            let what = format!("{plugin} {c}");
            let msg = refused_alike(&what, &on_both(plugin, "ADD", &c, "", |_| ()), 7, 999);
            assert_eq!(msg, want, "{what}");
        }
    }
}
