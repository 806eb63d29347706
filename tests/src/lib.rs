//! Shared test harness: network namespaces that are always removed (also when a test
//! panics), plugin invocations exactly as a runtime makes them (`ip netns exec` into a
//! "host" namespace, CNI_* env, config on stdin), and readers for kernel state.
//! Nothing here touches the machine's root namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

pub use serde_json::json;

/// Where our release binaries are (`scripts/test.sh` builds them first).
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("CNI_RS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    for b in [
        "bridge",
        "host-local",
        "loopback",
        "tuning",
        "portmap",
        "firewall",
        "bandwidth",
        "macvlan",
        "ptp",
        "host-device",
        "static",
        "vxlan-overlay",
        "cnitool",
    ] {
        assert!(
            dir.join(b).is_file(),
            "{} missing: run scripts/test.sh, which builds the release binaries",
            dir.join(b).display()
        );
    }
    dir
}

/// Debian's containernetworking-plugins, for side-by-side comparison.
pub fn reference_dir() -> PathBuf {
    let dir = PathBuf::from("/usr/lib/cni");
    assert!(
        dir.join("bridge").is_file(),
        "reference plugins missing: apt-get install containernetworking-plugins"
    );
    dir
}

pub const VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The versions whose results have `interfaces` and `ips` (0.3.0 on).
pub const MODERN_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A name unique across the parallel tests of this run and across concurrent runs.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    out
}

fn must(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A network namespace of this test; deleted on drop with everything in it.
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(prefix: &str) -> Ns {
        let name = unique(prefix);
        must(Command::new("ip").args(["netns", "add", &name]));
        let ns = Ns { name };
        ns.sh("ip link set lo up");
        ns
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs a shell command inside the namespace; returns its output.
    pub fn exec(&self, script: &str) -> Output {
        run(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", script]))
    }

    /// Like `exec` but the command must succeed; returns stdout.
    pub fn sh(&self, script: &str) -> String {
        must(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", script]))
    }

    /// `ip -j -d <args>` in this namespace.
    pub fn ip_json(&self, args: &str) -> Value {
        let out = self.sh(&format!("ip -j -d {args}"));
        serde_json::from_str(&out).unwrap_or(Value::Array(vec![]))
    }

    /// One link by name, or None.
    pub fn link(&self, name: &str) -> Option<Value> {
        let out = self.exec(&format!("ip -j -d link show dev {name}"));
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()?
            .get(0)
            .cloned()
    }

    /// Names of all links but lo.
    pub fn link_names(&self) -> Vec<String> {
        self.ip_json("link show")
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .filter(|n| n != "lo")
            .collect()
    }

    /// Addresses of a link as "addr/prefix", link-local ones left out.
    pub fn addrs(&self, dev: &str) -> Vec<String> {
        let v = self.ip_json(&format!("addr show dev {dev}"));
        v[0]["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| i["scope"] != "link")
                    .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `dst via gw` strings of the main table for a family ("-4" or "-6").
    pub fn routes(&self, family: &str) -> Vec<String> {
        self.ip_json(&format!("{family} route show"))
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} via {}",
                    r["dst"].as_str().unwrap_or(""),
                    r["gateway"].as_str().unwrap_or("-")
                )
            })
            .collect()
    }

    /// Sends `count` pings with a bounded wait; true if any came back.
    pub fn ping(&self, addr: &str) -> bool {
        self.exec(&format!("ping -c 2 -i 0.2 -W 1 {addr}"))
            .status
            .success()
    }

    /// Puts `other` behind this namespace on a veth pair: `<prefix>.1/24` here and
    /// `<prefix>.2/24` there, and no route from there to anywhere else.
    pub fn veth_to(&self, other: &Ns, prefix: &str) {
        let (here, there) = (unique("vh"), unique("vo"));
        self.sh(&format!(
            "ip link add {here} type veth peer name {there} netns {}",
            other.name
        ));
        self.sh(&format!(
            "ip addr add {prefix}.1/24 dev {here} && ip link set {here} up"
        ));
        other.sh(&format!(
            "ip addr add {prefix}.2/24 dev {there} && ip link set {there} up"
        ));
    }

    /// The nftables ruleset as text.
    pub fn nft_ruleset(&self) -> String {
        self.sh("nft list ruleset")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// Host namespaces whose underlay links (`ul0`, `<prefix>.<10+i>/24`, a default route on
/// it) are ports of one bridge in a switch namespace: a cluster on one machine.
pub struct Cluster {
    pub hosts: Vec<Ns>,
    pub switch: Ns,
    prefix: String,
}

impl Cluster {
    pub fn new(n: usize, prefix: &str, mtu: u32) -> Cluster {
        let switch = Ns::new("sw");
        switch.sh(&format!(
            "ip link add sw0 mtu {mtu} type bridge && ip link set sw0 up"
        ));
        let hosts: Vec<Ns> = (0..n).map(|_| Ns::new("n")).collect();
        for (i, h) in hosts.iter().enumerate() {
            switch.sh(&format!(
                "ip link add swp{i} mtu {mtu} type veth peer name ul0 netns {} && \
                 ip link set swp{i} master sw0 up",
                h.name
            ));
            h.sh(&format!(
                "ip link set ul0 mtu {mtu} up && ip addr add {prefix}.{}/24 dev ul0 && \
                 ip route add default dev ul0",
                10 + i
            ));
        }
        Cluster {
            hosts,
            switch,
            prefix: prefix.to_string(),
        }
    }

    /// Host `i`'s underlay address.
    pub fn underlay_ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, 10 + i)
    }
}

/// What a plugin invocation returned.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The error code of a failed call.
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected a failure, got {}", self.stdout);
        self.json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error object on stdout: {:?}", self.stdout))
    }

    #[track_caller]
    pub fn expect_ok(self) -> Value {
        assert!(self.ok, "plugin failed: {} {}", self.stdout, self.stderr);
        self.json
    }
}

/// One invocation of a plugin as a runtime makes it.
pub struct Call<'a> {
    pub bin_dir: PathBuf,
    pub plugin: &'a str,
    pub command: &'a str,
    pub host: &'a Ns,
    pub netns: String,
    pub container_id: String,
    pub ifname: &'a str,
    pub env: Vec<(String, String)>,
    /// The file creation mask the plugin starts with (the runtime's, say 000).
    pub umask: Option<u32>,
}

impl<'a> Call<'a> {
    pub fn new(
        plugin: &'a str,
        command: &'a str,
        host: &'a Ns,
        netns: &str,
        container_id: &str,
    ) -> Call<'a> {
        Call {
            bin_dir: bin_dir(),
            plugin,
            command,
            host,
            netns: netns.to_string(),
            container_id: container_id.to_string(),
            ifname: "eth0",
            env: Vec::new(),
            umask: None,
        }
    }

    pub fn ifname(mut self, ifname: &'a str) -> Self {
        self.ifname = ifname;
        self
    }

    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = Some(mask);
        self
    }

    pub fn reference(mut self) -> Self {
        self.bin_dir = reference_dir();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn run(&self, conf: &Value) -> Outcome {
        self.run_raw(conf.to_string().as_bytes())
    }

    pub fn run_raw(&self, stdin: &[u8]) -> Outcome {
        let out = self.spawn(stdin).wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        Outcome {
            ok: out.status.success(),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// Starts the plugin with its input written and returns without waiting. `ip netns
    /// exec` execs the plugin, so the child's pid is the plugin's.
    pub fn spawn(&self, stdin: &[u8]) -> std::process::Child {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host.name])
            .arg(self.bin_dir.join(self.plugin))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_NETNS", &self.netns)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", &self.bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        if let Some(mask) = self.umask {
            use std::os::unix::process::CommandExt;
            let mask = nix::sys::stat::Mode::from_bits_truncate(mask);
            // SAFETY: umask is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::stat::umask(mask);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawning plugin");
        let _ = child.stdin.take().unwrap().write_all(stdin);
        child
    }
}

/// cnitool run in a host namespace of its own, with a config directory, cache and IPAM
/// data under a temporary directory (`@DATA@` in the conflist stands for the data dir).
pub struct Cnitool {
    pub host: Ns,
    pub dir: tempfile::TempDir,
}

impl Cnitool {
    pub fn new(conflist: Value) -> Cnitool {
        let t = Cnitool {
            host: Ns::new("h"),
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(t.path("conf")).unwrap();
        t.add_network("10-tool", &conflist);
        t
    }

    /// Writes one more conflist into the config directory.
    pub fn add_network(&self, file: &str, conflist: &Value) {
        let text = conflist
            .to_string()
            .replace("@DATA@", self.path("data").to_str().unwrap());
        std::fs::write(self.path(&format!("conf/{file}.conflist")), text).unwrap();
    }

    pub fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.path().join(p)
    }

    pub fn run(&self, args: &[&str], extra_env: &[(&str, &str)]) -> (bool, String, String) {
        let out = self.command(args, extra_env).output().unwrap();
        let s = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        (out.status.success(), s(&out.stdout), s(&out.stderr))
    }

    /// Starts cnitool without waiting; `ip netns exec` execs it, so the pid is cnitool's.
    pub fn spawn(&self, args: &[&str], extra_env: &[(&str, &str)]) -> std::process::Child {
        self.command(args, extra_env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn command(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host.name])
            .arg(bin_dir().join("cnitool"))
            .args(args)
            .env("NETCONFPATH", self.path("conf"))
            .env("CNI_PATH", bin_dir())
            .env("CNI_CACHE_DIR", self.path("cache"))
            .envs(extra_env.iter().copied());
        cmd
    }

    pub fn cache_files(&self) -> Vec<String> {
        std::fs::read_dir(self.path("cache/results"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A bridge network config with host-local IPAM in `data_dir`.
pub fn bridge_conf(version: &str, data_dir: &Path, subnet: &str, extra: Value) -> Value {
    let mut conf = json!({
        "cniVersion": version,
        "name": "testnet",
        "type": "bridge",
        "bridge": "cnitest0",
        "isGateway": true,
        "isDefaultGateway": true,
        "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": subnet}]]}
    });
    merge(&mut conf, extra);
    conf
}

/// Shallow-merges `extra`'s keys into `conf`.
pub fn merge(conf: &mut Value, extra: Value) {
    if let (Some(c), Value::Object(e)) = (conf.as_object_mut(), extra) {
        c.extend(e);
    }
}

/// Adds the previous result to a config, as a runtime does for CHECK.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// Number of addresses host-local holds for `network` under `data_dir`: its reservation
/// files (the reference's format, which is the truth; sled only indexes them).
pub fn store_allocations(data_dir: &Path, network: &str) -> usize {
    reservations(data_dir, network).len()
}

/// host-local's reservations for `network`: (address, containerID, ifname), read under
/// the plugin's own lock so no plugin is halfway through a change.
pub fn reservations(data_dir: &Path, network: &str) -> Vec<(String, String, String)> {
    let dir = data_dir.join(network);
    let Ok(lock) = std::fs::File::open(dir.join("lock")) else {
        return Vec::new();
    };
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .expect("locking the store");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.parse::<std::net::IpAddr>().is_ok() {
            let content = std::fs::read_to_string(e.path()).unwrap_or_default();
            let (cid, ifname) = content.split_once("\r\n").unwrap_or((&content, ""));
            out.push((name, cid.to_string(), ifname.to_string()));
        }
    }
    out.sort();
    out
}

/// A server in a namespace (by default a TCP server that greets each client); killed on
/// drop.
pub struct Server(Child);

impl Server {
    pub fn start(ns: &Ns, port: u16) -> Server {
        let script = format!(
            "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', {port})); s.listen(8); s.settimeout(30)\n\
             while True:\n    c, a = s.accept(); c.sendall(b'hello from ' + a[0].encode()); c.close()\n"
        );
        Server::spawn(ns, &script)
    }

    /// Runs a Python `script` in `ns` until dropped.
    pub fn spawn(ns: &Ns, script: &str) -> Server {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", script])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the server said to a client in `ns` connecting to addr:port, retried for 3 s.
pub fn fetch(ns: &Ns, addr: &str, port: u16) -> Option<String> {
    let script = format!(
        "import socket, time\nfor _ in range(30):\n    try:\n        \
         s = socket.create_connection(('{addr}', {port}), timeout=1); print(s.recv(100).decode()); break\n    \
         except OSError:\n        time.sleep(0.1)\n"
    );
    let out = ns.exec(&format!("python3 -c \"{script}\""));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}
