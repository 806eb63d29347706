//! The agent harness: one vxlan-overlay-agent per host namespace of a [`Cluster`], on
//! the etcd of the test's own, with readers for the kernel state a peer leaves on a host.
//! Every agent is stopped by PID when dropped, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::*;

pub const PREFIX: &str = "/coreos.com/network";

pub fn agent_bin() -> PathBuf {
    let b = bin_dir().join("vxlan-overlay-agent");
    assert!(b.is_file(), "{} missing: run scripts/test.sh", b.display());
    b
}

/// One host's agent and the files it works with; stopped by PID on drop.
pub struct Agent {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub host: String,
}

/// The plugin config of a host: dataDir, host-local's store and subnetFile under `dir`.
pub fn conf(dir: &Path, etcd: &Etcd, ttl: u64, extra: Value) -> Value {
    let mut c = json!({"cniVersion": "1.1.0", "name": "cluster", "type": "vxlan-overlay",
        "dataDir": dir.join("data"), "subnetFile": dir.join("subnet.env"),
        "ipam": {"dataDir": dir.join("data")},
        "store": {"type": "etcd", "endpoints": [etcd.url], "prefix": PREFIX, "leaseTTL": ttl}});
    merge(&mut c, extra);
    c
}

impl Agent {
    pub fn start(host: &Ns, etcd: &Etcd, ttl: u64, reconcile: u64) -> Agent {
        Agent::start_with(host, etcd, ttl, reconcile, json!({}))
    }

    /// Started on a config with `extra` merged into the vxlan-overlay entry.
    pub fn start_with(host: &Ns, etcd: &Etcd, ttl: u64, reconcile: u64, extra: Value) -> Agent {
        let mut a = Agent::prepare(host, etcd, ttl, extra);
        a.restart(reconcile);
        a
    }

    /// Its directory and config, not started yet (a test puts a node's state there
    /// first, then calls `restart`).
    pub fn prepare(host: &Ns, etcd: &Etcd, ttl: u64, extra: Value) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let a = Agent {
            child: None,
            dir,
            host: host.name.clone(),
        };
        let list = json!({"cniVersion": "1.1.0", "name": "cluster",
            "plugins": [conf(a.dir.path(), etcd, ttl, extra)]});
        std::fs::write(a.dir.path().join("cluster.conflist"), list.to_string()).unwrap();
        a
    }

    /// Started with a command line of flanneld's only (no `--config`): `args`, and `env`
    /// as a unit's Environment= gives it. Its state goes to the default dataDir under
    /// /var/lib, which is `<dir>/varlib` in the mount namespace `ip netns exec` makes
    /// for it alone (bound there, seen by no other process). `args` is given the agent's
    /// directory (for `-subnet-file`).
    pub fn start_flags(
        host: &Ns,
        args: impl FnOnce(&Path) -> Vec<String>,
        env: &[(&str, String)],
    ) -> Agent {
        let mut a = Agent {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            host: host.name.clone(),
        };
        let varlib = a.dir.path().join("varlib");
        std::fs::create_dir(&varlib).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &a.host, "sh", "-c"])
            .arg(r#"mount --bind "$0" /var/lib && exec "$@""#)
            .arg(varlib)
            .arg(agent_bin())
            .args(args(a.dir.path()))
            .envs(env.iter().map(|(k, v)| (k, v)));
        a.spawn(cmd);
        a
    }

    /// Runs `cmd` as this agent, its stderr appended to the agent's log.
    fn spawn(&mut self, mut cmd: Command) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = dies_with_test(&mut cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn restart(&mut self, reconcile: u64) {
        assert!(self.child.is_none());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host])
            .arg(agent_bin())
            .arg("--config")
            .arg(self.dir.path().join("cluster.conflist"))
            .args(["--reconcile-seconds", &reconcile.to_string()]);
        self.spawn(cmd);
    }

    pub fn conf(&self, etcd: &Etcd) -> Value {
        conf(self.dir.path(), etcd, 60, json!({}))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn subnet_env(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("subnet.env")).ok()
    }

    /// The subnet it holds, from the subnet file, waited for (at most `secs`).
    pub fn subnet(&self, secs: u64) -> String {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            if let Some(env) = self.subnet_env() {
                let gw = env
                    .lines()
                    .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
                    .unwrap_or_else(|| panic!("{env}\nagent log:\n{}", self.log()));
                let (ip, len) = gw.split_once('/').unwrap();
                let ip: std::net::Ipv4Addr = ip.parse().unwrap();
                return format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(ip) - 1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no subnet file in {secs} s; agent log:\n{}", self.log());
    }

    /// A variable of the subnet file, once the file has it (waited for at most `secs`).
    pub fn env_var(&self, var: &str, secs: u64) -> String {
        let prefix = format!("{var}=");
        let found = within(Duration::from_secs(secs), || {
            self.subnet_env()
                .is_some_and(|e| e.lines().any(|l| l.starts_with(&prefix)))
        });
        assert!(
            found.is_some(),
            "no {var} in {secs} s; agent log:\n{}",
            self.log()
        );
        let env = self.subnet_env().unwrap();
        env.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap()
            .to_string()
    }

    /// Restarted with the subnet file gone, and waited for until it holds a subnet again.
    pub fn restart_and_wait(&mut self, reconcile: u64) -> String {
        let sessions = self.log().matches("holding ").count();
        std::fs::remove_file(self.dir.path().join("subnet.env")).unwrap();
        self.restart(reconcile);
        let s = self.subnet(20);
        let held = within(Duration::from_secs(10), || {
            self.log().matches("holding ").count() > sessions
        });
        assert!(held.is_some(), "{}", self.log());
        s
    }

    pub fn sigkill(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM; how long it took to exit.
    pub fn terminate(&mut self) -> Option<Duration> {
        let mut c = self.child.take()?;
        stop_child(&mut c, Duration::from_secs(10))
    }

    /// The CPU time it has used, user and system (the kernel's netlink work is its own).
    pub fn cpu(&self) -> Duration {
        let pid = self.child.as_ref().expect("running").id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // after "(comm)": state is field 3; utime and stime are fields 14 and 15
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = rest
            .split(' ')
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        // in USER_HZ ticks, 100 a second on Linux
        Duration::from_millis((f[0] + f[1]) * 10)
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `10.245.3.0/24` → the lease key.
pub fn key(subnet: &str) -> String {
    format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

/// The widest network that holds subnet `a` and not subnet `b` (both /24s, distinct).
pub fn narrowest_holding(a: &str, b: &str) -> String {
    let ip = |s: &str| {
        u32::from(
            s.split('/')
                .next()
                .unwrap()
                .parse::<std::net::Ipv4Addr>()
                .unwrap(),
        )
    };
    let (a, b) = (ip(a), ip(b));
    let len = (a ^ b).leading_zeros() + 1;
    let net = a & (u32::MAX << (32 - len));
    format!("{}/{len}", std::net::Ipv4Addr::from(net))
}

/// Whether host `h` holds route, neighbour and FDB entry for a peer (subnet, underlay).
pub fn programmed(h: &Ns, subnet: &str, underlay: &str) -> bool {
    let net = subnet.split('/').next().unwrap();
    h.sh("ip route show proto 73").contains(subnet)
        && h.sh("ip neigh show dev flannel.1 nud permanent")
            .contains(net)
        && h.sh("bridge fdb show dev flannel.1")
            .contains(&format!("dst {underlay} "))
}

/// Whether host `h` holds none of a peer's state.
pub fn forgotten(h: &Ns, subnet: &str, underlay: &str) -> bool {
    let net = subnet.split('/').next().unwrap();
    !h.sh("ip route show proto 73").contains(subnet)
        && !h
            .sh("ip neigh show dev flannel.1")
            .contains(&format!("{net} "))
        && !h
            .sh("bridge fdb show dev flannel.1")
            .contains(&format!("dst {underlay} "))
}

/// Whether IPv4 address `ip` is in `subnet` (a.b.c.d/len).
pub fn in_subnet(ip: &str, subnet: &str) -> bool {
    let (net, len) = subnet.split_once('/').unwrap();
    let bits = |a: &str| u32::from(a.parse::<std::net::Ipv4Addr>().unwrap());
    let mask = u32::MAX
        .checked_shl(32 - len.parse::<u32>().unwrap())
        .unwrap_or(0);
    bits(ip) & mask == bits(net) & mask
}

/// Polls `f` every 20 ms for at most `limit`; returns how long it took.
pub fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if f() {
            return Some(t.elapsed());
        }
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A cluster of `n` hosts, its etcd holding `network`, an agent on every host; returns
/// them with the subnets the agents hold.
pub fn start_cluster(
    n: usize,
    prefix: &str,
    network: &str,
    ttl: u64,
    reconcile: u64,
) -> (Cluster, Etcd, Vec<Agent>, Vec<String>) {
    let c = Cluster::new(n, prefix, 1500);
    let etcd = Etcd::start(&c);
    etcd.ctl(&format!("put {PREFIX}/config '{network}'"));
    let agents: Vec<Agent> = c
        .hosts
        .iter()
        .map(|h| Agent::start(h, &etcd, ttl, reconcile))
        .collect();
    let subnets = agents.iter().map(|a| a.subnet(30)).collect();
    (c, etcd, agents, subnets)
}

/// Adds a container on `host` with the agent's config; returns it with its address.
pub fn attach(host: &Ns, conf: &Value, cid: &str) -> (Ns, String) {
    let ns = Ns::new("c");
    let r = Call::new("vxlan-overlay", "ADD", host, &ns.path(), cid)
        .run(conf)
        .expect_ok();
    (ns, first_ip(&r))
}

/// A lease value as a vxlan node writes it.
pub fn lease_value(ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

/// Gives every host of `c` the IPv6 underlay address `<prefix6>::<10+i>/64` on `ul0`
/// (a dual-stack underlay; `prefix6` like `fd00:95`), without duplicate detection.
pub fn ipv6_underlay(c: &Cluster, prefix6: &str) {
    for (i, h) in c.hosts.iter().enumerate() {
        h.sh(&format!(
            "ip -6 addr add {prefix6}::{}/64 dev ul0 nodad",
            10 + i
        ));
    }
}

/// The addresses of an ADD result, without prefix lengths.
pub fn all_ips(r: &Value) -> Vec<String> {
    (r["ips"].as_array().into_iter().flatten())
        .filter_map(|i| i["address"].as_str())
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .collect()
}
