//! `flannel`, the drop-in for flannel's CNI plugin: with a hand-written subnet file (IPv4,
//! IPv6, dual stack) pods get their addresses and routes to the cluster networks through
//! bridge and host-local; the scratch file under dataDir is byte for byte what flannel's
//! Go plugin writes for the same input (the expected text below is derived from its
//! source: cmdAdd, getDelegateIPAM, Go's json.Marshal; and compared with the Go binary
//! itself when /usr/local/lib/flannel/cni-flannel is installed); a pod added by one is
//! deleted by the other; kube-flannel's conflist works unchanged with our bridge,
//! host-local and portmap; every failure is one error object.
//! Addresses: 10.238.0.0/16, 10.239.0.0/16, fc00:238::/48.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cni_tests::*;
use serde_json::Value;

/// flannel's Go plugin, built from github.com/flannel-io/cni-plugin, if installed.
const GO_FLANNEL: &str = "/usr/local/lib/flannel/cni-flannel";

const V4_ENV: &str = "FLANNEL_NETWORK=10.238.0.0/16\nFLANNEL_SUBNET=10.238.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
const V6_ENV: &str = "FLANNEL_IPV6_NETWORK=fc00:238::/48\nFLANNEL_IPV6_SUBNET=fc00:238:0:2::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n";
const DUAL_ENV: &str = "FLANNEL_NETWORK=10.238.0.0/16,10.239.0.0/16\nFLANNEL_SUBNET=10.238.3.1/24\nFLANNEL_IPV6_NETWORK=fc00:238::/48\nFLANNEL_IPV6_SUBNET=fc00:238:0:3::1/64\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n";

/// A node's files in a temporary directory: the subnet file, flannel's dataDir and
/// host-local's.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new(subnet_env: &str) -> Node {
        let n = Node {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(n.path("subnet.env"), subnet_env).unwrap();
        n
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn scratch(&self, cid: &str) -> Option<String> {
        std::fs::read_to_string(self.path("flannel").join(cid)).ok()
    }

    /// flannel's config for this node: the subnet file, dataDir and host-local's dataDir
    /// here (through flannel's `ipam`, which it keeps), the bridge `bridge`.
    fn conf(&self, name: &str, bridge: &str) -> Value {
        json!({
            "cniVersion": "1.0.0", "name": name, "type": "flannel",
            "subnetFile": self.path("subnet.env"), "dataDir": self.path("flannel"),
            "ipam": {"dataDir": self.path("ipam")},
            "delegate": {"bridge": bridge, "hairpinMode": true}
        })
    }

    /// What flannel's Go plugin saves for [`Node::conf`] with this subnet file: the
    /// delegate map marshalled by Go (keys sorted), `ipam` with ranges and routes.
    fn go_scratch(&self, name: &str, bridge: &str, ranges: &str, routes: &str, mtu: u32) -> String {
        format!(
            r#"{{"bridge":"{bridge}","cniVersion":"1.0.0","hairpinMode":true,"ipMasq":false,"ipam":{{"dataDir":"{ipam}","ranges":{ranges},"routes":{routes},"type":"host-local"}},"isGateway":true,"mtu":{mtu},"name":"{name}","type":"bridge"}}"#,
            ipam = self.path("ipam").display()
        )
    }
}

fn add(host: &Ns, c: &Ns, cid: &str, conf: &Value) -> Value {
    Call::new("flannel", "ADD", host, &c.path(), cid)
        .run(conf)
        .expect_ok()
}

fn del(host: &Ns, c: &Ns, cid: &str, conf: &Value) {
    Call::new("flannel", "DEL", host, &c.path(), cid)
        .run(conf)
        .expect_ok();
}

fn addresses(r: &Value) -> Vec<String> {
    r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn ipv4_pod_gets_its_address_and_flannels_scratch_file() {
    let node = Node::new(V4_ENV);
    let (host, c) = (Ns::new("flh"), Ns::new("flc"));
    let (name, bridge) = ("flv4", unique("flb"));
    let conf = node.conf(name, &bridge);
    let r = add(&host, &c, "fl-v4", &conf);
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(addresses(&r), ["10.238.1.2/24"]);
    assert_eq!(c.addrs("eth0"), ["10.238.1.2/24"]);
    assert!(c
        .routes("-4")
        .contains(&"10.238.0.0/16 via 10.238.1.1".to_string()));
    assert_eq!(host.addrs(&bridge), ["10.238.1.1/24"]);
    let mtu = |ns: &Ns, dev: &str| ns.link(dev).unwrap()["mtu"].clone();
    assert_eq!(mtu(&c, "eth0"), 1450, "FLANNEL_MTU reaches the pod");
    assert_eq!(
        node.scratch("fl-v4").expect("scratch file saved"),
        node.go_scratch(
            name,
            &bridge,
            r#"[[{"subnet":"10.238.1.0/24"}]]"#,
            r#"[{"dst":"10.238.0.0/16"}]"#,
            1450
        )
    );
    del(&host, &c, "fl-v4", &conf);
    assert_eq!(node.scratch("fl-v4"), None, "DEL consumes the scratch file");
    assert_eq!(store_allocations(&node.path("ipam"), name), 0);
    assert!(c.link("eth0").is_none());
    del(&host, &c, "fl-v4", &conf);
}

#[test]
fn ipv6_and_dual_stack_pods_get_their_addresses() {
    for (env, name, want, ranges, routes, mtu) in [
        (
            V6_ENV,
            "flv6",
            vec!["fc00:238:0:2::2/64"],
            r#"[[{"subnet":"fc00:238:0:2::/64"}]]"#,
            r#"[{"dst":"fc00:238::/48"}]"#,
            1430,
        ),
        (
            DUAL_ENV,
            "fldual",
            vec!["10.238.3.2/24", "fc00:238:0:3::2/64"],
            r#"[[{"subnet":"10.238.3.0/24"}],[{"subnet":"fc00:238:0:3::/64"}]]"#,
            r#"[{"dst":"10.238.0.0/16"},{"dst":"10.239.0.0/16"},{"dst":"fc00:238::/48"}]"#,
            1400,
        ),
    ] {
        let node = Node::new(env);
        let (host, c) = (Ns::new("flh"), Ns::new("flc"));
        let bridge = unique("flb");
        let conf = node.conf(name, &bridge);
        let r = add(&host, &c, "fl-6", &conf);
        assert_eq!(addresses(&r), want, "{name}");
        let mut have = c.addrs("eth0");
        have.sort();
        assert_eq!(have, want, "{name}");
        let v6_gw = want[want.len() - 1].replace("::2/64", "::1");
        assert!(
            c.routes("-6")
                .contains(&format!("fc00:238::/48 via {v6_gw}")),
            "{name}: {:?}",
            c.routes("-6")
        );
        if want.len() == 2 {
            assert!(c
                .routes("-4")
                .contains(&"10.239.0.0/16 via 10.238.3.1".to_string()));
        }
        assert_eq!(
            node.scratch("fl-6").unwrap(),
            node.go_scratch(name, &bridge, ranges, routes, mtu),
            "{name}"
        );
        del(&host, &c, "fl-6", &conf);
        assert_eq!(node.scratch("fl-6"), None, "{name}");
        assert_eq!(store_allocations(&node.path("ipam"), name), 0, "{name}");
    }
}

/// flannel's DEL as its source does it: the scratch file read, its `type` found, the
/// delegate's DEL run with the file's bytes, the file removed.
fn go_style_del(host: &Ns, c: &Ns, node: &Node, cid: &str) {
    let saved = node.scratch(cid).expect("a scratch file to consume");
    let conf: Value = serde_json::from_str(&saved).unwrap();
    let plugin = conf["type"].as_str().unwrap().to_string();
    Call::new(&plugin, "DEL", host, &c.path(), cid)
        .run_raw(saved.as_bytes())
        .expect_ok();
    std::fs::remove_file(node.path("flannel").join(cid)).unwrap();
}

#[test]
fn a_pod_added_by_one_plugin_is_deleted_by_the_other() {
    let node = Node::new(V4_ENV);
    let (host, c) = (Ns::new("flh"), Ns::new("flc"));
    let bridge = unique("flb");
    let conf = node.conf("flx", &bridge);

    // Added by flannel's Go plugin, as its source does it (scratch saved in Go's format,
    // then the delegate's ADD with those bytes), deleted by ours.
    let go_saved = node.go_scratch(
        "flx",
        &bridge,
        r#"[[{"subnet":"10.238.1.0/24"}]]"#,
        r#"[{"dst":"10.238.0.0/16"}]"#,
        1450,
    );
    std::fs::create_dir_all(node.path("flannel")).unwrap();
    std::fs::write(node.path("flannel/go-pod"), &go_saved).unwrap();
    Call::new("bridge", "ADD", &host, &c.path(), "go-pod")
        .run_raw(go_saved.as_bytes())
        .expect_ok();
    assert_eq!(store_allocations(&node.path("ipam"), "flx"), 1);
    del(&host, &c, "go-pod", &conf);
    assert_eq!(node.scratch("go-pod"), None);
    assert_eq!(store_allocations(&node.path("ipam"), "flx"), 0, "released");
    assert!(c.link("eth0").is_none());

    // Added by ours, deleted as flannel's Go plugin deletes.
    add(&host, &c, "rs-pod", &conf);
    go_style_del(&host, &c, &node, "rs-pod");
    assert_eq!(store_allocations(&node.path("ipam"), "flx"), 0, "released");
    assert!(c.link("eth0").is_none());
}

/// Runs flannel's Go plugin (CNI_PATH our binaries) like Call runs ours.
fn go_call(command: &str, host: &Ns, c: &Ns, cid: &str, conf: &Value) -> Outcome {
    let mut call = Call::new("flannel", command, host, &c.path(), cid);
    let go_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(GO_FLANNEL, go_dir.path().join("flannel")).unwrap();
    for entry in std::fs::read_dir(bin_dir()).unwrap().flatten() {
        if entry.file_name() != "flannel" {
            std::os::unix::fs::symlink(entry.path(), go_dir.path().join(entry.file_name()))
                .unwrap();
        }
    }
    call.bin_dir = go_dir.path().to_path_buf();
    call.run(conf)
}

#[test]
fn with_flannels_go_plugin_same_scratch_and_crossed_del() {
    let ours = bin_dir().join("flannel");
    assert!(ours.is_file(), "{} missing", ours.display());
    if !Path::new(GO_FLANNEL).is_file() {
        eprintln!(
            "SKIP: {GO_FLANNEL} is not installed (flannel's cni-plugin has no vendor/ and \
             needs Go 1.24; build it there to compare against the binary itself)"
        );
        return;
    }
    let node = Node::new(DUAL_ENV);
    let (host, c) = (Ns::new("flh"), Ns::new("flc"));
    let bridge = unique("flb");
    let conf = node.conf("flgo", &bridge);
    go_call("ADD", &host, &c, "go-1", &conf).expect_ok();
    let go_saved = node.scratch("go-1").unwrap();
    del(&host, &c, "go-1", &conf);
    assert_eq!(store_allocations(&node.path("ipam"), "flgo"), 0);
    add(&host, &c, "rs-1", &conf);
    assert_eq!(node.scratch("rs-1").unwrap(), go_saved, "same scratch file");
    go_call("DEL", &host, &c, "rs-1", &conf).expect_ok();
    assert_eq!(node.scratch("rs-1"), None);
    assert_eq!(store_allocations(&node.path("ipam"), "flgo"), 0);
}

#[test]
fn failures_are_flannels_and_error_objects() {
    let node = Node::new(V4_ENV);
    let (host, c) = (Ns::new("flh"), Ns::new("flc"));
    let conf = node.conf("flerr", &unique("flb"));
    let call = |cmd: &'static str, conf: &Value| {
        Call::new("flannel", cmd, &host, &c.path(), "fl-err").run(conf)
    };

    let mut missing = conf.clone();
    missing["subnetFile"] = json!(node.path("none.env"));
    let out = call("ADD", &missing);
    assert_eq!(out.code(), 11, "no subnet file yet: try again");
    assert!(
        out.json["msg"]
            .as_str()
            .unwrap()
            .starts_with("failed to load flannel 'subnet.env' file"),
        "{}",
        out.stdout
    );

    std::fs::write(
        node.path("partial.env"),
        "FLANNEL_NETWORK=10.238.0.0/16\nFLANNEL_SUBNET=10.238.1.1/24\n",
    )
    .unwrap();
    let mut partial = conf.clone();
    partial["subnetFile"] = json!(node.path("partial.env"));
    let out = call("ADD", &partial);
    assert_eq!(out.code(), 7);
    assert!(
        out.stdout
            .contains("is missing FLANNEL_MTU, FLANNEL_IPMASQ"),
        "{}",
        out.stdout
    );

    // a symlink, a FIFO: refused, never followed or blocked on
    std::os::unix::fs::symlink(node.path("subnet.env"), node.path("link.env")).unwrap();
    nix::unistd::mkfifo(&node.path("fifo.env"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    for f in ["link.env", "fifo.env"] {
        let mut bad = conf.clone();
        bad["subnetFile"] = json!(node.path(f));
        assert!(!call("ADD", &bad).ok, "{f}");
    }

    for (delegate, what) in [
        (
            json!({"name": "x"}),
            "'delegate' dictionary must not have 'name' field",
        ),
        (
            json!({"ipam": {}}),
            "'delegate' dictionary must not have 'ipam' field",
        ),
        (json!({"type": 7}), "must have (string) 'type' field"),
    ] {
        let mut bad = conf.clone();
        bad["delegate"] = delegate;
        let out = call("ADD", &bad);
        assert_eq!(out.code(), 7);
        assert!(out.stdout.contains(what), "{}", out.stdout);
    }
    // DEL without an ADD: nothing to do
    assert!(call("DEL", &conf).ok);
    // the scratch file is saved before the delegate runs, as flannel's
    let mut bad = conf.clone();
    bad["delegate"] = json!({"type": "no-such-plugin"});
    assert!(!call("ADD", &bad).ok);
    assert!(node.scratch("fl-err").unwrap().contains("no-such-plugin"));
    assert!(
        !call("DEL", &conf).ok,
        "the delegate of the saved config is missing"
    );
    assert!(
        node.scratch("fl-err").is_some(),
        "kept for the runtime's retry"
    );

    // a scratch file that is not a config: nothing to do
    std::fs::write(node.path("flannel/fl-err"), "{\"type\": 5}").unwrap();
    assert!(call("DEL", &conf).ok);
    assert!(
        node.scratch("fl-err").is_some(),
        "kept, as flannel keeps it"
    );
    std::fs::remove_file(node.path("flannel/fl-err")).unwrap();
    std::os::unix::fs::symlink(node.path("subnet.env"), node.path("flannel/fl-err")).unwrap();
    assert!(!call("DEL", &conf).ok, "a planted symlink is not followed");
    assert_eq!(
        std::fs::read_to_string(node.path("subnet.env")).unwrap(),
        V4_ENV
    );

    // CHECK does nothing, as flannel's
    assert!(call("CHECK", &conf).ok);
    assert!(
        Call::new("flannel", "ADD", &host, &c.path(), "../x")
            .run(&conf)
            .code()
            == 4
    );
}

/// cnitool on a node whose /run and /var/lib are the test's: in a private mount
/// namespace /run is a directory of the test (with the machine's /run/netns mounted
/// back) and /var/lib another, so flannel's defaults (/run/flannel/subnet.env,
/// /var/lib/cni/flannel) and host-local's (/var/lib/cni/networks) are the test's.
struct KubeNode {
    tool: Cnitool,
    root: tempfile::TempDir,
}

impl KubeNode {
    fn new(conflist: Value, subnet_env: &str) -> KubeNode {
        let n = KubeNode {
            tool: Cnitool::new(conflist),
            root: tempfile::tempdir().unwrap(),
        };
        for d in ["run/netns", "run/flannel", "netns", "varlib"] {
            std::fs::create_dir_all(n.root.path().join(d)).unwrap();
        }
        std::fs::write(n.root.path().join("run/flannel/subnet.env"), subnet_env).unwrap();
        n
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let script = "set -e; r=$1; shift; \
            mount --rbind /run/netns \"$r/netns\"; mount --bind \"$r/run\" /run; \
            mount --rbind \"$r/netns\" /run/netns; mount --bind \"$r/varlib\" /var/lib; \
            exec \"$@\"";
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(self.root.path())
            .args(["ip", "netns", "exec", &self.tool.host.name])
            .arg(bin_dir().join("cnitool"))
            .args(args)
            .env("NETCONFPATH", self.tool.path("conf"))
            .env("CNI_PATH", bin_dir())
            .env("CNI_CACHE_DIR", self.tool.path("cache"))
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    fn var_lib(&self, p: &str) -> PathBuf {
        self.root.path().join("varlib").join(p)
    }
}

#[test]
fn kube_flannels_conflist_unchanged_with_portmap() {
    let conflist = json!({"name":"cbr0","cniVersion":"0.3.1","plugins":[
        {"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},
        {"type":"portmap","capabilities":{"portMappings":true}}]});
    let node = KubeNode::new(conflist, "FLANNEL_NETWORK=10.239.0.0/16\nFLANNEL_SUBNET=10.239.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n");
    let host = &node.tool.host;
    let outside = Ns::new("flo");
    host.veth_to(&outside, "10.239.250");
    let c = Ns::new("flc");
    let caps = r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}"#;
    let out = node.run(&["add", "cbr0", &c.path()], &[("CAP_ARGS", caps)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["cniVersion"], "0.3.1");
    assert_eq!(addresses(&r), ["10.239.5.2/24"]);
    assert_eq!(
        host.addrs("cni0"),
        ["10.239.5.1/24"],
        "bridge's default name"
    );
    assert!(
        c.routes("-4")
            .contains(&"default via 10.239.5.1".to_string()),
        "isDefaultGateway kept: {:?}",
        c.routes("-4")
    );
    let saved: Vec<_> = std::fs::read_dir(node.var_lib("cni/flannel"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(
        saved,
        [
            r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.239.5.0/24"}]],"routes":[{"dst":"10.239.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#
        ],
        "in /var/lib/cni/flannel"
    );
    assert_eq!(store_allocations(&node.var_lib("cni/networks"), "cbr0"), 1);

    let _server = Server::start(&c, 80);
    assert_eq!(
        fetch(&outside, "10.239.250.1", 8080).as_deref(),
        Some("hello from 10.239.250.2"),
        "portmap: outside -> host port -> pod"
    );

    let out = node.run(&["del", "cbr0", &c.path()], &[("CAP_ARGS", caps)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(node.var_lib("cni/flannel"))
            .unwrap()
            .count(),
        0,
        "scratch file consumed"
    );
    assert_eq!(store_allocations(&node.var_lib("cni/networks"), "cbr0"), 0);
    assert!(!host.nft_ruleset().contains("dnat"), "portmap's DNAT gone");
    assert!(c.link("eth0").is_none());
}
