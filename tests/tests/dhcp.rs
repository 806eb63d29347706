//! The `dhcp` IPAM and its daemon against a real DHCP server (dnsmasq) in a namespace of
//! its own: a host namespace with a bridge, the server on it, containers added by the
//! bridge plugin with `"ipam": {"type": "dhcp"}`, the daemon started by the test in the
//! host namespace on a socket of its own (`-socketpath`, `daemonSocketPath`). Also run
//! against the reference's daemon and plugin (Debian's 1.1.1), each with the other side.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cni_tests::{bin_dir, dies_with_test, reference_dir, stop_child, unique, Call, Ns};
use serde_json::{json, Value};

/// The host namespace with bridge `br0`, dnsmasq on it at `<net>.1` handing out
/// `<net>.50`-`<net>.60`, and the daemons the test starts; all stopped by PID on drop.
struct Lab {
    host: Ns,
    _server: Ns,
    net: String,
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Lab {
    /// `extra`: more dnsmasq arguments (options to hand out).
    fn new(octet: u8, extra: &[&str]) -> Lab {
        let net = format!("10.140.{octet}");
        let host = Ns::new("dhh");
        let server = Ns::new("dhs");
        let dir = tempfile::tempdir().unwrap();
        host.sh("ip link add br0 type bridge && ip link set br0 up");
        host.sh(&format!(
            "ip link add srv0 type veth peer name srv netns {} && ip link set srv0 master br0 up",
            server.name
        ));
        server.sh(&format!(
            "ip addr add {net}.1/24 dev srv && ip link set srv up"
        ));
        let mut lab = Lab {
            host,
            _server: server,
            net,
            dir,
            children: Vec::new(),
        };
        let leases = lab.leases_path();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab._server.name, "dnsmasq", "--no-daemon"])
            .args([
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
                "--group=root",
            ])
            .args(["--interface=srv", "--bind-interfaces", "--log-dhcp"])
            .arg(format!(
                "--dhcp-range={0}.50,{0}.60,255.255.255.0,2m",
                lab.net
            ))
            .arg(format!("--dhcp-option=3,{}.1", lab.net))
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(lab.dir.path().join("dnsmasq.log")).unwrap());
        lab.children
            .push(dies_with_test(&mut cmd).spawn().expect("starting dnsmasq"));
        lab
    }

    fn leases_path(&self) -> PathBuf {
        self.dir.path().join("leases")
    }

    /// dnsmasq's lease file: (expiry, mac, address, hostname, client id) per line.
    fn leases(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.leases_path())
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').map(String::from).collect())
            .collect()
    }

    fn lease_of(&self, addr: &str) -> Option<Vec<String>> {
        self.leases()
            .into_iter()
            .find(|l| l.get(2).map(String::as_str) == Some(addr))
    }

    /// Starts `dhcp daemon` from `bin` in the host namespace on `<dir>/<name>.sock`.
    fn daemon(&mut self, bin: &Path, name: &str) -> String {
        let socket = self.dir.path().join(format!("{name}.sock"));
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host.name])
            .arg(bin.join("dhcp"))
            .args(["daemon", "-socketpath"])
            .arg(&socket)
            .arg("-pidfile")
            .arg(self.dir.path().join(format!("{name}.pid")))
            .args(["-timeout", "2s"])
            // The reference 1.1.1 has no -resendtimeout.
            .args(if name == "reference" {
                &[][..]
            } else {
                &["-resendtimeout", "20s"][..]
            })
            .stdout(Stdio::null())
            .stderr(log);
        self.children.push(
            dies_with_test(&mut cmd)
                .spawn()
                .expect("starting the dhcp daemon"),
        );
        let t = Instant::now();
        while !socket.exists() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            socket.exists(),
            "the {name} daemon made no socket: {}",
            self.log(name)
        );
        socket.to_string_lossy().into_owned()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn conf(&self, version: &str, socket: &str, ipam: Value) -> Value {
        let mut i = json!({"type": "dhcp", "daemonSocketPath": socket});
        for (k, v) in ipam.as_object().unwrap() {
            i[k] = v.clone();
        }
        json!({"cniVersion": version, "name": "dhnet", "type": "bridge", "bridge": "br0", "ipam": i})
    }

    /// ADD of a new container by `bin`'s bridge with the daemon at `socket`: the address
    /// is on its interface and leased at the server.
    fn add(&self, bin: &Path, version: &str, socket: &str) -> (Ns, String, Value, Value) {
        let (c, id) = (Ns::new("dhc"), unique("ctr"));
        let conf = self.conf(version, socket, json!({}));
        let r = call(bin, "ADD", &self.host, &c, &id).run(&conf).expect_ok();
        let ip = address(&r).split('/').next().unwrap().to_string();
        assert!(self.lease_of(&ip).is_some(), "{r} {:?}", self.leases());
        assert!(c.addrs("eth0").contains(&address(&r)), "{r}");
        (c, id, conf, r)
    }

    /// Waits up to `secs` for `f`.
    fn until(&self, secs: u64, f: impl Fn() -> bool) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        f()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            stop_child(c, Duration::from_secs(3));
        }
    }
}

fn call<'a>(bin: &Path, command: &'a str, host: &'a Ns, c: &Ns, id: &str) -> Call<'a> {
    let mut call = Call::new("bridge", command, host, &c.path(), id);
    call.bin_dir = bin.to_path_buf();
    call
}

fn address(r: &Value) -> String {
    r["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn dhcp_acquires_renews_and_releases_through_our_daemon() {
    // T1 3 s, T2 5 s: the daemon renews within the test.
    let mut lab = Lab::new(1, &["--dhcp-option=58,3", "--dhcp-option=59,5"]);
    let bin = bin_dir();
    let socket = lab.daemon(&bin, "ours");
    // `ip netns exec` execs the daemon: the child's PID is the daemon's.
    let pid = std::fs::read_to_string(lab.dir.path().join("ours.pid")).unwrap_or_default();
    assert_eq!(pid, lab.children[1].id().to_string());
    let c = Ns::new("dhc");
    let id = unique("ctr");
    let conf = lab.conf("1.0.0", &socket, json!({}));
    let r = call(&bin, "ADD", &lab.host, &c, &id).run(&conf).expect_ok();
    let addr = address(&r);
    let ip = addr.split('/').next().unwrap().to_string();
    assert!(
        addr.starts_with(&format!("{}.", lab.net)) && addr.ends_with("/24"),
        "{r}"
    );
    assert_eq!(r["ips"][0]["gateway"], format!("{}.1", lab.net), "{r}");
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": format!("{}.1", lab.net)}])
    );
    assert!(c.addrs("eth0").contains(&addr), "{:?}", c.addrs("eth0"));
    assert!(c.ping(&format!("{}.1", lab.net)));
    // The server knows the lease under the reference's client ID.
    let lease = lab
        .lease_of(&ip)
        .unwrap_or_else(|| panic!("no lease for {ip}: {:?}", lab.leases()));
    let want_id: Vec<String> = std::iter::once(0u8)
        .chain(format!("{id}/dhnet/eth0").bytes())
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(lease[4], want_id.join(":"));
    // Renewal moves the lease's expiry on.
    let first_expiry: u64 = lease[0].parse().unwrap();
    assert!(
        lab.until(15, || lab
            .lease_of(&ip)
            .is_some_and(|l| l[0].parse::<u64>().unwrap() > first_expiry)),
        "the lease was not renewed: {:?}\n{}",
        lab.leases(),
        lab.log("ours")
    );
    assert!(lab.log("ours").contains("renewed"), "{}", lab.log("ours"));
    // CHECK finds the lease the daemon keeps; ADD again returns it.
    let prev = cni_tests::with_prev(&conf, &r);
    call(&bin, "CHECK", &lab.host, &c, &id)
        .run(&prev)
        .expect_ok();
    // DEL releases it at the server.
    call(&bin, "DEL", &lab.host, &c, &id).run(&conf).expect_ok();
    assert!(
        lab.until(5, || lab.lease_of(&ip).is_none()),
        "the lease was not released: {:?}\n{}",
        lab.leases(),
        lab.log("ours")
    );
    // A second DEL is fine.
    call(&bin, "DEL", &lab.host, &c, &id).run(&conf).expect_ok();
    // So is a DEL of a config that ADD refuses (an option nobody knows): it holds nothing.
    let unknown = json!({"provide": [{"option": "no-such-option", "value": "x"}]});
    let refused = lab.conf("1.0.0", &socket, unknown);
    assert_eq!(
        call(&bin, "ADD", &lab.host, &c, &id).run(&refused).code(),
        7
    );
    call(&bin, "DEL", &lab.host, &c, &id)
        .run(&refused)
        .expect_ok();
    // SIGTERM: the daemon removes its socket and pidfile.
    assert!(stop_child(&mut lab.children[1], Duration::from_secs(3)).is_some());
    assert!(!Path::new(&socket).exists());
    assert!(!lab.dir.path().join("ours.pid").exists());
}

#[test]
fn dhcp_provides_and_requests_options() {
    // Classless routes (121) when asked for; the host name the config provides.
    let mut lab = Lab::new(
        2,
        &["--dhcp-option=121,10.141.0.0/16,10.140.2.2,0.0.0.0/0,10.140.2.1"],
    );
    let bin = bin_dir();
    let socket = lab.daemon(&bin, "ours");
    let c = Ns::new("dhc");
    let id = unique("ctr");
    // Route priorities print from CNI 1.1.0 on.
    let conf = lab.conf(
        "1.1.0",
        &socket,
        json!({
            "provide": [{"option": "host-name", "fromArg": "K8S_POD_NAME"}],
            "request": [{"option": "121"}],
            "priority": 7
        }),
    );
    let r = call(&bin, "ADD", &lab.host, &c, &id)
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web-1")
        .run(&conf)
        .expect_ok();
    assert_eq!(
        r["routes"],
        json!([
            {"dst": "10.141.0.0/16", "gw": "10.140.2.2", "priority": 7},
            {"dst": "0.0.0.0/0", "gw": "10.140.2.1", "priority": 7}
        ]),
        "{r}"
    );
    let ip = address(&r).split('/').next().unwrap().to_string();
    let lease = lab
        .lease_of(&ip)
        .unwrap_or_else(|| panic!("no lease: {:?}", lab.leases()));
    assert_eq!(lease[3], "web-1", "{lease:?}");
    // An option name the reference does not know is refused.
    let bad = lab.conf(
        "1.0.0",
        &socket,
        json!({"request": [{"option": "no-such-option"}]}),
    );
    let out = call(&bin, "ADD", &lab.host, &Ns::new("dhc"), &unique("ctr")).run(&bad);
    assert_eq!(out.code(), 7);
    assert!(
        out.stdout.contains("Can not parse option"),
        "{}",
        out.stdout
    );
    call(&bin, "DEL", &lab.host, &c, &id).run(&conf).expect_ok();
    assert!(
        lab.until(5, || lab.lease_of(&ip).is_none()),
        "{:?}",
        lab.leases()
    );
    // STATUS: ready while the daemon answers, 50 without one; DEL without a daemon
    // has nothing to release.
    let status = |socket: &str| {
        Call::new("dhcp", "STATUS", &lab.host, "", "").run(&lab.conf("1.1.0", socket, json!({})))
    };
    assert!(status(&socket).ok);
    let none = lab
        .dir
        .path()
        .join("none.sock")
        .to_string_lossy()
        .into_owned();
    assert_eq!(status(&none).code(), 50);
    call(&bin, "DEL", &lab.host, &c, &id)
        .run(&lab.conf("1.1.0", &none, json!({})))
        .expect_ok();
}

#[test]
fn dhcp_interoperates_with_the_reference_daemon_and_plugin() {
    let mut lab = Lab::new(3, &[]);
    let (ours, reference) = (bin_dir(), reference_dir());
    let our_socket = lab.daemon(&ours, "ours");
    let ref_socket = lab.daemon(&reference, "reference");

    // The reference's plugin (run by the reference's bridge) with our daemon.
    let (c1, id1, conf1, r1) = lab.add(&reference, "0.4.0", &our_socket);
    assert_eq!(r1["ips"][0]["gateway"], "10.140.3.1", "{r1}");
    // The reference's bridge deletes the interface before its IPAM DEL, so no RELEASE
    // can be sent (nor by the reference's daemon): the daemon stops keeping the lease.
    call(&reference, "DEL", &lab.host, &c1, &id1)
        .run(&conf1)
        .expect_ok();

    // Our plugin (run by our bridge) with the reference's daemon.
    let (c2, id2, conf2, r2) = lab.add(&ours, "1.0.0", &ref_socket);
    let ip2 = address(&r2).split('/').next().unwrap().to_string();
    assert_eq!(
        r2["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.140.3.1"}]),
        "{r2}"
    );
    // Our bridge runs IPAM DEL first: the reference's daemon releases.
    call(&ours, "DEL", &lab.host, &c2, &id2)
        .run(&conf2)
        .expect_ok();
    assert!(
        lab.until(5, || lab.lease_of(&ip2).is_none()),
        "{:?}\n{}",
        lab.leases(),
        lab.log("reference")
    );

    // Side by side, each with its own daemon: the same shape of result.
    let shape = |r: &Value| {
        let a = address(r);
        json!([a.rsplit('/').next(), r["ips"][0]["gateway"], r["routes"]])
    };
    let (_c3, _, _, theirs) = lab.add(&reference, "1.0.0", &ref_socket);
    let (_c4, _, _, mine) = lab.add(&ours, "1.0.0", &our_socket);
    assert_eq!(shape(&mine), shape(&theirs), "{mine}\n{theirs}");
}

#[test]
fn dhcp_leases_for_a_macvlan_and_releases_before_it_goes() {
    let mut lab = Lab::new(4, &[]);
    let bin = bin_dir();
    let socket = lab.daemon(&bin, "ours");
    let c = Ns::new("dhc");
    let id = unique("ctr");
    let mut conf = lab.conf("1.0.0", &socket, json!({}));
    conf["type"] = json!("macvlan");
    conf["master"] = json!("br0");
    let mut add = Call::new("macvlan", "ADD", &lab.host, &c.path(), &id);
    add.bin_dir = bin.clone();
    let r = add.run(&conf).expect_ok();
    let ip = address(&r).split('/').next().unwrap().to_string();
    assert!(address(&r).starts_with("10.140.4."), "{r}");
    assert!(c.addrs("eth0").contains(&address(&r)));
    assert!(lab.lease_of(&ip).is_some(), "{:?}", lab.leases());
    let mut del = Call::new("macvlan", "DEL", &lab.host, &c.path(), &id);
    del.bin_dir = bin;
    del.run(&conf).expect_ok();
    assert!(
        lab.until(5, || lab.lease_of(&ip).is_none()),
        "{:?}\n{}",
        lab.leases(),
        lab.log("ours")
    );
}
