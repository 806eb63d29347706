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

pub mod agent_harness;

/// Where our release binaries are: `CNI_RS_BIN`, else where `scripts/build.sh` puts the
/// static musl build (`scripts/test.sh` builds them first).
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("CNI_RS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target")
                .join(format!("{}-unknown-linux-musl", std::env::consts::ARCH))
                .join("release")
        });
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

    /// Names of the host ends of live veth attachments (`veth<hash>`): not those of a
    /// pair DEL retired (alias `cni-rs-retired/...`), which its child is deleting.
    pub fn live_veths(&self) -> Vec<String> {
        self.ip_json("link show")
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| {
                let alias = l["ifalias"].as_str().unwrap_or("");
                !alias.starts_with("cni-rs-retired/")
            })
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .filter(|n| n.starts_with("veth"))
            .collect()
    }

    /// Names of the links named veth*, live or retired, once there are `count` of them or
    /// after 10 s: a retired pair is gone once the child its DEL started has deleted it.
    pub fn veths_settled(&self, count: usize) -> Vec<String> {
        let veths = || {
            let mut v = self.link_names();
            v.retain(|n| n.starts_with("veth"));
            v
        };
        for _ in 0..500 {
            if veths().len() == count {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        veths()
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
        let mut c = Cluster {
            hosts: Vec::new(),
            switch,
            prefix: prefix.to_string(),
        };
        for _ in 0..n {
            c.add_host();
        }
        c
    }

    /// One more host (a node joining); returns its index.
    pub fn add_host(&mut self) -> usize {
        let i = self.hosts.len();
        let h = Ns::new("n");
        self.plug(&h, &format!("swp{i}"), &self.underlay_ip(i));
        h.sh("ip route add default dev ul0");
        self.hosts.push(h);
        i
    }

    /// Gives `ns` an underlay link `ul0` with `ip`/24 on the switch (port `port`).
    pub fn plug(&self, ns: &Ns, port: &str, ip: &str) {
        let mtu = self.switch.link("sw0").expect("the switch")["mtu"].clone();
        self.switch.sh(&format!(
            "ip link add {port} mtu {mtu} type veth peer name ul0 netns {} && \
             ip link set {port} master sw0 up",
            ns.name
        ));
        ns.sh(&format!(
            "ip link set ul0 mtu {mtu} up && ip addr add {ip}/24 dev ul0"
        ));
    }

    /// Host `i`'s underlay address.
    pub fn underlay_ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, 10 + i)
    }

    /// An underlay address no host has (`.2` to `.9`).
    pub fn spare_ip(&self, n: u8) -> String {
        assert!((2..10).contains(&n));
        format!("{}.{n}", self.prefix)
    }
}

/// Makes `cmd`'s process die with the test thread that starts it: a daemon of a test
/// (etcd, an agent) never outlives a test run that is itself killed.
pub fn dies_with_test(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        })
    }
}

/// Sends SIGTERM to `child` and waits up to `grace` for it, then SIGKILL; returns how
/// long it took to exit on its own, if it did.
pub fn stop_child(child: &mut Child, grace: std::time::Duration) -> Option<std::time::Duration> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let t = std::time::Instant::now();
    if let Ok(Some(_)) = child.try_wait() {
        return Some(t.elapsed());
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    while t.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(t.elapsed());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// An etcd of the test's own (Debian's etcd-server), in a namespace on a cluster's
/// underlay at `<prefix>.2`; stopped by PID when dropped.
pub struct Etcd {
    pub ns: Ns,
    pub url: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: bool,
}

impl Etcd {
    pub fn start(c: &Cluster) -> Etcd {
        Etcd::start_with(c, false)
    }

    /// An etcd that speaks only TLS and wants a client certificate: a CA, a server
    /// certificate for its address and a client certificate, made with openssl in its
    /// directory (see [`Etcd::pki`]).
    pub fn start_tls(c: &Cluster) -> Etcd {
        Etcd::start_with(c, true)
    }

    fn start_with(c: &Cluster, tls: bool) -> Etcd {
        let ns = Ns::new("etcd");
        let ip = c.spare_ip(2);
        c.plug(&ns, &unique("swe"), &ip);
        let scheme = if tls { "https" } else { "http" };
        let mut e = Etcd {
            ns,
            url: format!("{scheme}://{ip}:2379"),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            tls,
        };
        if tls {
            make_pki(&e.pki(""), &ip);
        }
        e.restart();
        e
    }

    /// A file of the TLS material: `ca.pem`, `server.pem`/`server.key`,
    /// `client.pem`/`client.key`, and `other-ca.pem` (a CA that signed nothing here).
    pub fn pki(&self, file: &str) -> PathBuf {
        self.dir.path().join("pki").join(file)
    }

    /// Starts etcd on its data dir (again, after [`Etcd::stop`]) and waits until it
    /// answers (at most 20 s).
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        // `ip netns exec` execs etcd: the child's pid is etcd's.
        let child = dies_with_test(&mut Command::new("ip"))
            .args(["netns", "exec", &self.ns.name, "etcd", "--name", "t"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &self.url,
                "--advertise-client-urls",
                &self.url,
            ])
            .args(if self.tls {
                vec![
                    "--client-cert-auth".into(),
                    "--trusted-ca-file".into(),
                    self.pki("ca.pem"),
                    "--cert-file".into(),
                    self.pki("server.pem"),
                    "--key-file".into(),
                    self.pki("server.key"),
                ]
            } else {
                vec![]
            })
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-cluster", "t=http://127.0.0.1:2380"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd (apt-get install etcd-server)");
        self.child = Some(child);
        for _ in 0..100 {
            if self.try_ctl("endpoint health").is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!("etcd did not answer within 20 s: {}", self.log());
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, std::time::Duration::from_secs(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn try_ctl(&self, args: &str) -> Option<String> {
        let tls = if self.tls {
            format!(
                "--cacert {} --cert {} --key {}",
                self.pki("ca.pem").display(),
                self.pki("client.pem").display(),
                self.pki("client.key").display()
            )
        } else {
            String::new()
        };
        let out = self.ns.exec(&format!(
            "ETCDCTL_API=3 etcdctl --dial-timeout 2s --command-timeout 5s --endpoints {} {tls} {args}",
            self.url
        ));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// `etcdctl <args>` against this etcd; must succeed.
    pub fn ctl(&self, args: &str) -> String {
        self.try_ctl(args)
            .unwrap_or_else(|| panic!("etcdctl {args} failed"))
    }

    /// Every key under `prefix` with its value.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.ctl(&format!("get --prefix '{prefix}'"));
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .map(|kv| (kv[0].to_string(), kv.get(1).unwrap_or(&"").to_string()))
            .collect()
    }
}

/// A CA and the certificates an etcd at `ip` and its clients use, as an operator makes
/// them with openssl: P-256 keys, the server's with its IP address as subject
/// alternative name; and a second CA, for a client that trusts the wrong one.
fn make_pki(dir: &Path, ip: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let script = format!(
        r#"set -e
key() {{ openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }}
ca() {{ key "$1.key"; openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 2 -subj "/CN=$1" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign; }}
leaf() {{ key "$1.key"; openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr"
  printf '%s\n' "$2" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null; }}
ca ca; ca other-ca
leaf server 'subjectAltName=IP:{ip}
extendedKeyUsage=serverAuth'
leaf client 'extendedKeyUsage=clientAuth'
"#
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("running openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "making the test PKI: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `vxlan-overlay teardown [--force]` run in `host` with `conf` on stdin.
pub fn overlay_teardown(host: &Ns, conf: &Value, force: bool) -> Output {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &host.name])
        .arg(bin_dir().join("vxlan-overlay"))
        .arg("teardown");
    if force {
        cmd.arg("--force");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(conf.to_string().as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// A result's first address, without its prefix length.
pub fn first_ip(r: &Value) -> String {
    let a = r["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {r}"));
    a.split('/').next().unwrap_or(a).to_string()
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
        let mut child = self.start();
        let _ = child.stdin.take().unwrap().write_all(stdin);
        child
    }

    /// Starts the plugin with its stdin open: it waits for its input, so calls started
    /// this way run together once their inputs are written.
    pub fn start(&self) -> std::process::Child {
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
        cmd.spawn().expect("spawning plugin")
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

/// An `nft` in `dir` that logs its arguments to `<dir>/nft-runs` and runs the real one:
/// returns a PATH that finds it first, and the log.
pub fn nft_spy(dir: &Path) -> (String, PathBuf) {
    let log = dir.join("nft-runs");
    let spy = dir.join("nft");
    std::fs::write(
        &spy,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec /usr/sbin/nft \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&spy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (
        format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", dir.display()),
        log,
    )
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

    /// The same over IPv6 only: it says the client's IPv6 address.
    pub fn start_v6(ns: &Ns, port: u16) -> Server {
        let script = format!(
            "import socket\ns=socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('::', {port})); s.listen(8); s.settimeout(30)\n\
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

/// Polls for at most 5 s until `f` holds.
pub fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// The name our plugins give an attachment's container link when DEL retires it: `vdel`
/// and the low 11 hex digits of FNV-1a over the network name, container ID and ifname,
/// each ended by a NUL (libcni's Attachment::retired_name).
pub fn retired_name(network: &str, cid: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in [network, cid, ifname]
        .iter()
        .flat_map(|p| p.bytes().chain([0]))
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("vdel{:011x}", h & 0xfff_ffff_ffff)
}
