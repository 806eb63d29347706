//! The mixed cluster (issue 18): hosts running a real flanneld v0.20.2 next to hosts
//! running vxlan-overlay-agent, on one etcd of the test's own. Pods ping across every
//! pair of hosts; a host switched from flanneld to our agent and back keeps its subnet
//! (lease key), its VTEP MAC and its pods' addresses while peers' pods ping one of its
//! pods, and no peer loses replies for longer than a switch takes; in an EnableIPv6
//! cluster pods ping over IPv4 and IPv6 across every pair.
//!
//! flanneld is built by ../shared/tools/build-flanneld.sh: `FLANNELD` names it, default
//! /usr/local/lib/flannel/flanneld; where it is absent each test says `SKIP: <reason>` on
//! stderr and passes. Pods on a flanneld host are attached as on a flannel node: by
//! vxlan-overlay reading flanneld's subnet file (IPv4), or by bridge + host-local on
//! flanneld's subnets, the delegate flannel's CNI plugin builds (dual stack). Every etcd,
//! flanneld and agent is stopped by PID, also when a test fails. The tests of this file
//! run one at a time: one of them measures how long traffic stops.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cni_tests::agent_harness::*;
use cni_tests::*;
use serde_json::Value;

const DEFAULT_FLANNELD: &str = "/usr/local/lib/flannel/flanneld";
/// flanneld's lease TTL (24 h): our agent gets the same, as the equivalent of flanneld's
/// command line.
const TTL: u64 = 86_400;
/// Our agent's default reconcile period.
const RECONCILE: u64 = 10;
/// How long a freshly started flanneld needs before it sees every event.
const SETTLE: Duration = Duration::from_secs(1);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The flanneld to run, or None after saying why the test is skipped.
fn flanneld_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("FLANNELD")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_FLANNELD.into());
    if bin.is_file() {
        return Some(bin);
    }
    eprintln!(
        "SKIP: no flanneld at {} (FLANNELD or the default; build it with ../shared/tools/build-flanneld.sh)",
        bin.display()
    );
    None
}

/// What serves a host.
enum Daemon {
    Flanneld(Child),
    Agent(Agent),
}

/// One host of the mixed cluster. Its files (flannel's subnet file, the IPAM store, our
/// agent's state, flanneld's log) are in a directory of its own, shared by whichever
/// daemon serves it, as on a node that changes its daemon.
struct Node {
    i: usize,
    ip: String,
    dir: tempfile::TempDir,
    daemon: Option<Daemon>,
    flanneld: PathBuf,
    /// The logs of the agents that ran here before (each agent's log dies with it).
    past: String,
}

impl Node {
    fn new(c: &Cluster, i: usize, flanneld: &Path) -> Node {
        Node {
            i,
            ip: c.underlay_ip(i),
            dir: tempfile::tempdir().unwrap(),
            daemon: None,
            flanneld: flanneld.to_path_buf(),
            past: String::new(),
        }
    }

    fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    /// flanneld's command line: flannel's etcd layout, the underlay by name, the subnet
    /// file in the node's directory; everything else flanneld's defaults.
    fn flanneld_args(&self, etcd: &Etcd) -> Vec<String> {
        vec![
            format!("--etcd-endpoints={}", etcd.url),
            format!("--etcd-prefix={PREFIX}"),
            "--iface=ul0".into(),
            format!("--subnet-file={}", self.subnet_file().display()),
            "-v=2".into(),
        ]
    }

    /// The vxlan-overlay entry our agent runs from: flanneld's command line translated
    /// (same etcd, prefix, underlay, subnet file, lease TTL).
    fn agent_extra(&self) -> Value {
        json!({"dataDir": self.dir.path().join("data"), "subnetFile": self.subnet_file(),
               "underlayInterface": "ul0"})
    }

    /// The plugin config of this node's pods (vxlan-overlay reads only the subnet file).
    fn pod_conf(&self, etcd: &Etcd) -> Value {
        conf(self.dir.path(), etcd, TTL, json!({}))
    }

    fn flanneld_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("flanneld.log")).unwrap_or_default()
    }

    fn log(&self) -> String {
        let now = match &self.daemon {
            Some(Daemon::Agent(a)) => a.log(),
            _ => String::new(),
        };
        format!(
            "flanneld log:\n{}agent logs:\n{}{now}",
            self.flanneld_log(),
            self.past
        )
    }

    fn what(&self) -> &'static str {
        match &self.daemon {
            Some(Daemon::Agent(_)) => "agent",
            Some(Daemon::Flanneld(_)) => "flanneld",
            None => "nothing",
        }
    }

    /// Starts flanneld and waits (at most 30 s) until it wrote the subnet file and
    /// watches the leases.
    fn start_flanneld(&mut self, host: &Ns, etcd: &Etcd) {
        assert!(self.daemon.is_none());
        let ready = |n: &Node| {
            n.flanneld_log()
                .matches("watching for new subnet leases")
                .count()
        };
        let before = ready(self);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("flanneld.log"))
            .unwrap();
        // `ip netns exec` execs flanneld: the child's pid is flanneld's.
        let child = dies_with_test(&mut Command::new("ip"))
            .args(["netns", "exec", &host.name])
            .arg(&self.flanneld)
            .args(self.flanneld_args(etcd))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting flanneld");
        self.daemon = Some(Daemon::Flanneld(child));
        let up = within(Duration::from_secs(30), || {
            ready(self) > before && self.subnet_file().exists()
        });
        assert!(
            up.is_some(),
            "flanneld on host {} not ready in 30 s:\n{}",
            self.i,
            self.log()
        );
    }

    /// Starts our agent and waits (at most 30 s) until it holds a subnet.
    fn start_agent(&mut self, host: &Ns, etcd: &Etcd) {
        assert!(self.daemon.is_none());
        let a = Agent::start_with(host, etcd, TTL, RECONCILE, self.agent_extra());
        let up = within(Duration::from_secs(30), || a.log().contains("holding "));
        let log = a.log();
        self.daemon = Some(Daemon::Agent(a));
        assert!(
            up.is_some(),
            "agent on host {} holds nothing after 30 s:\n{log}",
            self.i
        );
    }

    /// Stops the daemon by PID (SIGTERM, as systemd does).
    fn stop(&mut self) {
        match self.daemon.take() {
            Some(Daemon::Flanneld(mut child)) => {
                stop_child(&mut child, Duration::from_secs(10));
            }
            Some(Daemon::Agent(mut a)) => {
                a.terminate();
                self.past += &a.log();
            }
            None => {}
        }
    }

    /// A value of the subnet file.
    fn env(&self, key: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.subnet_file()).ok()?;
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))?;
        Some(line.to_string())
    }

    /// The node's IPv4 subnet (FLANNEL_SUBNET is its first address with the prefix).
    fn subnet(&self) -> String {
        let gw = self.env("FLANNEL_SUBNET").expect("FLANNEL_SUBNET");
        network_of(&gw)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `10.1.2.1/24` → `10.1.2.0/24`; `fc00:0:0:5::1/64` → `fc00:0:0:5::/64`.
fn network_of(cidr: &str) -> String {
    let (ip, len) = cidr.split_once('/').unwrap();
    let len: u32 = len.parse().unwrap();
    match ip.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(a) & mask))
        }
        std::net::IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            format!("{}/{len}", std::net::Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// The MAC of a host's VXLAN device.
fn device_mac(h: &Ns, dev: &str) -> Option<String> {
    Some(h.link(dev)?["address"].as_str()?.to_string())
}

/// Whether host `h` sends to a peer (subnet, underlay, VTEP MAC) over `dev`: route,
/// permanent neighbour and FDB entry, whoever made them (flanneld's routes are proto
/// boot, ours 73).
fn knows(h: &Ns, dev: &str, subnet: &str, underlay: &str, mac: &str) -> bool {
    if mac.is_empty() {
        return false;
    }
    let net = subnet.split('/').next().unwrap();
    // `ip route show` lists IPv4 unless told otherwise, whatever the prefix
    let family = if subnet.contains(':') { "-6" } else { "-4" };
    let route = h.exec(&format!("ip {family} route show {subnet} dev {dev}"));
    let neigh = h.exec(&format!("ip neigh show {net} dev {dev}"));
    let fdb = h.exec(&format!("bridge fdb show dev {dev}"));
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();
    !text(&route).trim().is_empty()
        && text(&neigh).contains(mac)
        && text(&fdb)
            .lines()
            .any(|l| l.starts_with(mac) && l.contains(&format!("dst {underlay} ")))
}

/// Every host's VXLAN state, and every daemon's log.
fn diagnose(c: &Cluster, nodes: &[Node]) -> String {
    let mut out = String::new();
    for n in nodes {
        let h = &c.hosts[n.i];
        out += &format!(
            "--- host {} ({}, {}):\n{}{}\n",
            n.i,
            n.what(),
            n.ip,
            String::from_utf8_lossy(
                &h.exec(
                    "ip -d link show type vxlan; ip route; ip -6 route; \
                     ip neigh show nud permanent; bridge fdb show | grep dst"
                )
                .stdout
            ),
            n.log()
        );
    }
    out
}

/// One family of the overlay: the device and subnet file key that carry it.
#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn device(self) -> &'static str {
        match self {
            Family::V4 => "flannel.1",
            Family::V6 => "flannel-v6.1",
        }
    }

    fn subnet_key(self) -> &'static str {
        match self {
            Family::V4 => "FLANNEL_SUBNET",
            Family::V6 => "FLANNEL_IPV6_SUBNET",
        }
    }
}

/// Waits (at most 30 s) until every host sends to every other over the family's device.
fn converge(c: &Cluster, nodes: &[Node], f: Family) -> Result<(), String> {
    let peers: Vec<(usize, Option<String>, String, String)> = nodes
        .iter()
        .map(|n| {
            let mac = device_mac(&c.hosts[n.i], f.device()).unwrap_or_default();
            let subnet = n.env(f.subnet_key()).map(|s| network_of(&s));
            let underlay = match f {
                Family::V4 => n.ip.clone(),
                Family::V6 => underlay6(n.i),
            };
            (n.i, subnet, underlay, mac)
        })
        .collect();
    let all = || {
        nodes.iter().all(|n| {
            (peers.iter().filter(|p| p.0 != n.i)).all(|(_, s, ip, mac)| {
                s.as_ref()
                    .is_some_and(|s| knows(&c.hosts[n.i], f.device(), s, ip, mac))
            })
        })
    };
    match within(Duration::from_secs(30), all) {
        Some(_) => Ok(()),
        None => Err(format!(
            "{f:?}: hosts do not know each other after 30 s (host, subnet, underlay, VTEP MAC: {peers:?}):\n{}",
            diagnose(c, nodes)
        )),
    }
}

/// Pings `addr` from `from`, retried for up to 5 s (a fresh IPv6 address is tentative
/// for a while).
fn reaches(from: &Ns, addr: &str) -> bool {
    within(Duration::from_secs(5), || from.ping(addr)).is_some()
}

/// Every pod pings every other host's pods at `addrs[pod]` (one address per pod);
/// the pairs that failed.
fn unreachable_pairs(pods: &[(usize, Ns)], addrs: &[Option<String>]) -> Vec<String> {
    let mut failed = Vec::new();
    for (a, (ha, ns)) in pods.iter().enumerate() {
        for (b, (hb, _)) in pods.iter().enumerate() {
            let Some(addr) = addrs[b].as_deref().filter(|_| ha != hb) else {
                continue;
            };
            if !reaches(ns, addr) {
                failed.push(format!(
                    "pod {a} (host {ha}) -> pod {b} (host {hb}) at {addr}"
                ));
            }
        }
    }
    failed
}

/// What a switch of daemon must keep of a host: its lease key (and every key naming its
/// address, with the VtepMAC it publishes), its device's MAC and address, its subnet
/// file's subnet, its pods' addresses.
#[derive(Debug, Clone, PartialEq)]
struct Identity {
    subnet: String,
    leases: Vec<(String, String)>,
    device_mac: Option<String>,
    device_addrs: Vec<String>,
    pods: Vec<Vec<String>>,
}

fn identity(c: &Cluster, etcd: &Etcd, n: &Node, pods: &[&Ns]) -> Identity {
    let leases = etcd
        .get_prefix(&format!("{PREFIX}/subnets/"))
        .into_iter()
        .filter_map(|(k, v)| {
            let v: Value = serde_json::from_str(&v).ok()?;
            (v["PublicIP"] == n.ip.as_str()).then(|| {
                let mac = v["BackendData"]["VtepMAC"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string();
                (k, mac)
            })
        })
        .collect();
    Identity {
        subnet: n.subnet(),
        leases,
        device_mac: device_mac(&c.hosts[n.i], "flannel.1"),
        device_addrs: c.hosts[n.i].addrs("flannel.1"),
        pods: pods.iter().map(|p| p.addrs("eth0")).collect(),
    }
}

/// A ping from a pod every 100 ms until stopped, each reply stamped (`-D`), its output
/// in a file.
struct Pinger {
    child: Child,
    out: tempfile::NamedTempFile,
    started: f64,
    what: String,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

impl Pinger {
    fn start(from: &Ns, addr: &str, what: String) -> Pinger {
        let out = tempfile::NamedTempFile::new().unwrap();
        let started = now();
        // `ip netns exec` execs ping; -w bounds it should the test never stop it
        let child = dies_with_test(&mut Command::new("ip"))
            .args(["netns", "exec", &from.name, "ping", "-n", "-D", "-i", "0.1"])
            .args(["-W", "1", "-w", "300", addr])
            .stdin(Stdio::null())
            .stdout(File::create(out.path()).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Pinger {
            child,
            out,
            started,
            what,
        }
    }

    /// Stops it (SIGINT) and returns the longest time without a reply (counting from its
    /// start and up to its stop) and the number of replies.
    fn stop(mut self) -> (f64, usize, String) {
        use nix::sys::signal::{kill, Signal};
        let stopped = now();
        let _ = kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGINT,
        );
        let _ = self.child.wait();
        let text = std::fs::read_to_string(self.out.path()).unwrap_or_default();
        let mut stamps: Vec<f64> = text
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.strip_prefix('[')?.split_once(']')?.0.parse().ok())
            .collect();
        let replies = stamps.len();
        stamps.insert(0, self.started);
        stamps.push(stopped);
        let longest = stamps.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
        (longest, replies, text)
    }
}

/// Starts the hosts' daemons one at a time, flanneld on `flanneld`'s hosts and our
/// agent on the others. flanneld v0.20.2 reopens its watch from "now" after each event
/// and misses what happens in between; its first event (its own lease) comes at once,
/// so the next node starts once that window has closed.
fn start_all(c: &Cluster, etcd: &Etcd, nodes: &mut [Node], flanneld: &[usize]) {
    for n in nodes.iter_mut() {
        if flanneld.contains(&n.i) {
            n.start_flanneld(&c.hosts[n.i], etcd);
            std::thread::sleep(SETTLE);
        } else {
            n.start_agent(&c.hosts[n.i], etcd);
        }
    }
}

/// Stops a node's daemon and starts the other one; how long it took until the new one
/// serves (holds its lease and wrote the subnet file).
fn switch(n: &mut Node, host: &Ns, etcd: &Etcd, to_agent: bool) -> Duration {
    let t = Instant::now();
    n.stop();
    if to_agent {
        n.start_agent(host, etcd);
    } else {
        n.start_flanneld(host, etcd);
    }
    t.elapsed()
}

#[test]
fn flanneld_and_agent_hosts_mix_and_a_host_moves_to_the_agent_and_back_keeping_its_identity() {
    let Some(flanneld) = flanneld_bin() else {
        return;
    };
    let _one = one_at_a_time();
    // host 0 moves (flanneld → agent → flanneld), host 1 stays on flanneld, host 2 runs
    // our agent: every pair of daemons meets, flanneld–flanneld, flanneld–agent and
    // agent–agent
    let c = Cluster::new(3, "192.168.101", 1500);
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!(
        "put {PREFIX}/config '{{\"Network\":\"10.230.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'"
    ));
    let mut nodes: Vec<Node> = (0..3).map(|i| Node::new(&c, i, &flanneld)).collect();
    start_all(&c, &etcd, &mut nodes, &[0, 1]);
    converge(&c, &nodes, Family::V4).unwrap_or_else(|e| panic!("{e}"));

    // two pods on the moving host, one on each other host, attached from the subnet file
    let pods: Vec<(usize, Ns)> = [0, 0, 1, 2]
        .iter()
        .enumerate()
        .map(|(k, &h)| {
            let (ns, _) = attach(&c.hosts[h], &nodes[h].pod_conf(&etcd), &format!("p{k}"));
            (h, ns)
        })
        .collect();
    let addrs: Vec<Option<String>> = pods
        .iter()
        .map(|(_, ns)| {
            let a = ns.addrs("eth0");
            a.first().map(|a| a.split('/').next().unwrap().to_string())
        })
        .collect();
    let failed = unreachable_pairs(&pods, &addrs);
    assert!(
        failed.is_empty(),
        "before any switch: {failed:#?}\n{}",
        diagnose(&c, &nodes)
    );

    let moving: Vec<&Ns> = pods.iter().filter(|p| p.0 == 0).map(|p| &p.1).collect();
    let before = identity(&c, &etcd, &nodes[0], &moving);
    assert_eq!(before.leases.len(), 1, "{before:?}");
    assert_eq!(
        before.leases[0].1,
        before.device_mac.clone().unwrap(),
        "{before:?}"
    );

    // pods on host 1 (flanneld) and host 2 (agent) ping host 0's first pod throughout
    let target = addrs[0].clone().unwrap();
    let pingers = vec![
        Pinger::start(&pods[2].1, &target, "host 1's pod (flanneld)".into()),
        Pinger::start(&pods[3].1, &target, "host 2's pod (agent)".into()),
    ];
    std::thread::sleep(Duration::from_secs(2));
    let mut problems = Vec::new();
    let mut switches = Vec::new();
    let mut dwell = Duration::ZERO;
    for (to_agent, name) in [(true, "flanneld → agent"), (false, "agent → flanneld")] {
        let took = switch(&mut nodes[0], &c.hosts[0], &etcd, to_agent);
        switches.push(took);
        // long enough that a peer that never learns a new MAC loses more than the bound
        dwell = switches.iter().max().copied().unwrap() + Duration::from_secs(3);
        std::thread::sleep(dwell);
        let now = identity(&c, &etcd, &nodes[0], &moving);
        if now != before {
            problems.push(format!(
                "after {name} (took {took:?}): host 0 was {before:?}, is {now:?}"
            ));
        }
        let failed = unreachable_pairs(&pods, &addrs);
        if !failed.is_empty() {
            problems.push(format!("after {name}: {failed:#?}"));
        }
    }
    let bound = switches.iter().max().copied().unwrap() + Duration::from_secs(1);
    for p in pingers {
        let what = p.what.clone();
        let (longest, replies, text) = p.stop();
        eprintln!("{what}: longest time without a reply {longest:.2} s, {replies} replies; switches took {switches:?}");
        if longest > bound.as_secs_f64() {
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            problems.push(format!(
                "{what} got no reply from {target} for {longest:.2} s (switches took {switches:?}, bound {bound:?}; {replies} replies; last lines {tail:?})"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{problems:#?}\ndwell {dwell:?}\n{}",
        diagnose(&c, &nodes)
    );
}

/// Host `i`'s IPv6 underlay address.
fn underlay6(i: usize) -> String {
    format!("fd00:99::{}", 10 + i)
}

/// The delegate flannel's CNI plugin builds from a flanneld's subnet file: bridge `cni0`
/// with host-local on the node's subnets (both families), gateway and default routes;
/// no masquerade here, so a pod sees the other pod's own address.
fn flannel_delegate(n: &Node) -> Value {
    let mut ranges = vec![json!([{"subnet": n.subnet()}])];
    if let Some(s6) = n.env("FLANNEL_IPV6_SUBNET") {
        ranges.push(json!([{ "subnet": network_of(&s6) }]));
    }
    let mtu: u32 = n.env("FLANNEL_MTU").unwrap().parse().unwrap();
    json!({"cniVersion": "1.0.0", "name": "cbr0", "type": "bridge", "bridge": "cni0",
        "isGateway": true, "isDefaultGateway": true, "hairpinMode": true, "ipMasq": false,
        "mtu": mtu,
        "ipam": {"type": "host-local", "dataDir": n.dir.path().join("ipam"), "ranges": ranges}})
}

#[test]
fn a_dual_stack_mixed_cluster_pings_over_ipv4_and_ipv6_across_every_pair() {
    let Some(flanneld) = flanneld_bin() else {
        return;
    };
    let _one = one_at_a_time();
    // hosts 0 and 1 run flanneld, hosts 2 and 3 our agent; the underlay has both
    // families, a default route for each on ul0 (flanneld looks for both)
    let c = Cluster::new(4, "192.168.99", 1500);
    for (i, h) in c.hosts.iter().enumerate() {
        h.sh(&format!(
            "ip addr add {}/64 dev ul0 nodad && ip -6 route add default dev ul0",
            underlay6(i)
        ));
    }
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!(
        "put {PREFIX}/config '{{\"EnableIPv6\":true,\"Network\":\"10.229.0.0/16\",\"IPv6Network\":\"fc00:229::/48\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'"
    ));
    let mut nodes: Vec<Node> = (0..4).map(|i| Node::new(&c, i, &flanneld)).collect();
    start_all(&c, &etcd, &mut nodes, &[0, 1]);
    let mut problems = Vec::new();
    for f in [Family::V4, Family::V6] {
        if let Err(e) = converge(&c, &nodes, f) {
            problems.push(e);
        }
    }
    // a pod per host: flannel's delegate on flanneld's hosts, vxlan-overlay on ours
    let pods: Vec<(usize, Ns)> = nodes
        .iter()
        .map(|n| {
            let h = &c.hosts[n.i];
            let cid = format!("d{}", n.i);
            if n.i < 2 {
                let ns = Ns::new("c");
                Call::new("bridge", "ADD", h, &ns.path(), &cid)
                    .run(&flannel_delegate(n))
                    .expect_ok();
                (n.i, ns)
            } else {
                let (ns, _) = attach(h, &n.pod_conf(&etcd), &cid);
                (n.i, ns)
            }
        })
        .collect();
    let family = |v6: bool| -> Vec<Option<String>> {
        pods.iter()
            .map(|(_, ns)| {
                let a = ns.addrs("eth0");
                let a = a.iter().find(|a| a.contains(':') == v6)?;
                Some(a.split('/').next().unwrap().to_string())
            })
            .collect()
    };
    let (v4, v6) = (family(false), family(true));
    for (k, (h, _)) in pods.iter().enumerate() {
        if v4[k].is_none() || v6[k].is_none() {
            problems.push(format!(
                "pod {k} on host {h} ({}) has IPv4 {:?} and IPv6 {:?}",
                nodes[*h].what(),
                v4[k],
                v6[k]
            ));
        }
    }
    for (name, addrs) in [("IPv4", &v4), ("IPv6", &v6)] {
        let failed = unreachable_pairs(&pods, addrs);
        if !failed.is_empty() {
            problems.push(format!("{name}: {failed:#?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{problems:#?}\nsubnet files: {:?}\n{}",
        nodes
            .iter()
            .map(|n| std::fs::read_to_string(n.subnet_file()).unwrap_or_default())
            .collect::<Vec<_>>(),
        diagnose(&c, &nodes)
    );
}
