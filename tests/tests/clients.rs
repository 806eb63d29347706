//! Real runtimes against our binaries: containerd's `ctr run --cni` and podman on its CNI
//! backend (scripts and conflists in tests/clients/), each inside a host namespace of the
//! test's own and a private mount namespace, with a busybox-static rootfs built here (no
//! registry is reachable). After the container is gone the host namespace holds no veth,
//! no per-container chain, no cached result and no address allocation. cnitool runs the
//! same conflists.

use std::path::{Path, PathBuf};
use std::process::Command;

use cni_tests::*;
use serde_json::Value;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// A root filesystem with busybox-static's applets and a page for its httpd.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "www"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (Debian's busybox-static, installed by scripts/test.sh)");
    for applet in ["sh", "ip", "ping", "httpd", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("www/index.html"), "hello from cni-rs\n").unwrap();
    root
}

/// Runs a client script in `host`'s network namespace and a new private mount namespace.
fn run_client(host: &Ns, script: &str, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", host.name))
        .args(["unshare", "--mount", "--propagation", "private", "bash"])
        .arg(clients_dir().join(script))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{script}:\n{stdout}{stderr}");
    assert!(out.status.success(), "{script} failed");
    stdout
}

/// Nothing of a removed container left in the host namespace (no veth, no rule or set
/// element labelled with the network) or the runtime's /var/lib.
fn assert_nothing_left(host: &Ns, varlib: &Path, network: &str) {
    let veths = host.live_veths();
    assert!(veths.is_empty(), "veths left: {veths:?}");
    let rules = host.nft_ruleset();
    assert!(!rules.contains(&format!("\"{network}/")), "{rules}");
    assert!(!rules.contains("chain pm-"), "{rules}");
    let cached = std::fs::read_dir(varlib.join("cni/results"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(cached, 0, "cached results left");
    assert_eq!(
        store_allocations(&varlib.join("cni/networks"), network),
        0,
        "addresses still allocated"
    );
    assert_no_reaper_left();
}

/// DEL's detached reaper (a link's deletion) leaves no zombie under this runtime:
/// it is reaped by whoever adopts it (none of these runtimes is a child subreaper).
fn assert_no_reaper_left() {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let zombies = plugin_zombies();
        if zombies.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reapers left unreaped: {zombies:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Zombie processes of our plugins that delete links (pid, parent).
fn plugin_zombies() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let comm = head.split_once(" (").map_or("", |(_, c)| c);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let deleters = ["bridge", "ptp", "vxlan-overlay", "macvlan", "tap", "dummy"];
        if fields.first() == Some(&"Z") && deleters.contains(&comm) {
            out.push((
                entry.file_name().to_string_lossy().to_string(),
                fields[1].to_string(),
            ));
        }
    }
    out
}

/// A host namespace with a NIC for macvlans (one end of a veth pair, the other end there
/// too) and a macvlan of the host's own on it at `addr`, which the containers can reach.
fn host_with_macvlan_nic(prefix: &str, nic: &str, addr: &str) -> Ns {
    let host = Ns::new(prefix);
    host.sh(&format!(
        "ip link add {nic} type veth peer name {nic}p && ip link set {nic} up && ip link set {nic}p up && \
         ip link add {nic}h link {nic} type macvlan mode bridge && ip addr add {addr}/24 dev {nic}h && ip link set {nic}h up"
    ));
    host
}

#[test]
fn containerd_ctr_run_cni_gets_an_address_and_pings_its_gateway() {
    for (conflist, net, host, ping) in [
        ("ctr.conflist", "ctrnet", Ns::new("ctrh"), "10.71.0.1"),
        (
            "ctr-macvlan.conflist",
            "ctrmv",
            host_with_macvlan_nic("ctrm", "ctrnic0", "10.74.0.200"),
            "10.74.0.200",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = busybox_rootfs(dir.path());
        let work = dir.path().join("work");
        let out = run_client(
            &host,
            "containerd.sh",
            &[
                bin_dir().to_str().unwrap(),
                work.to_str().unwrap(),
                rootfs.to_str().unwrap(),
                conflist,
                ping,
            ],
        );
        let subnet = &ping[..ping.rfind('.').unwrap()];
        assert!(
            out.contains(&format!("inet {subnet}.2/24")),
            "{conflist}: address from host-local"
        );
        assert!(
            out.contains(&format!("default via {subnet}.1")),
            "{conflist}: default route"
        );
        assert!(out.contains("PING-OK"), "{conflist}: {ping} answered");
        assert_nothing_left(&host, &work.join("varlib"), net);
    }
}

#[test]
fn podman_run_publishes_a_port_through_the_default_chain() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let work = dir.path().join("work");
    let host = Ns::new("podh");
    let outside = Ns::new("podo");
    host.veth_to(&outside, "10.72.9");
    let out = run_client(
        &host,
        "podman.sh",
        &[
            bin_dir().to_str().unwrap(),
            work.to_str().unwrap(),
            rootfs.to_str().unwrap(),
            &outside.name,
            "podman.conflist",
            "10.72.9.1",
        ],
    );
    assert!(out.contains("container address: 10.72.0."), "{out}");
    assert!(
        out.contains("the web server answered: hello from cni-rs"),
        "{out}"
    );
    assert_nothing_left(&host, &work.join("varlib"), "podman");
}

#[test]
fn podman_run_on_a_macvlan_network() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let work = dir.path().join("work");
    let host = host_with_macvlan_nic("podm", "podnic0", "10.75.0.200");
    let out = run_client(
        &host,
        "podman.sh",
        &[
            bin_dir().to_str().unwrap(),
            work.to_str().unwrap(),
            rootfs.to_str().unwrap(),
            &host.name,
            "podman-macvlan.conflist",
        ],
    );
    assert!(out.contains("container address: 10.75.0."), "{out}");
    assert!(
        out.contains("the web server answered: hello from cni-rs"),
        "{out}"
    );
    assert_nothing_left(&host, &work.join("varlib"), "podman");
}

/// cnitool through the same conflists, with the IPAM data in a temporary directory.
#[test]
fn cnitool_runs_the_clients_conflists() {
    for (file, net) in [("ctr.conflist", "ctrnet"), ("podman.conflist", "podman")] {
        let mut conf: Value =
            serde_json::from_slice(&std::fs::read(clients_dir().join(file)).unwrap()).unwrap();
        conf["plugins"][0]["ipam"]["dataDir"] = json!("@DATA@");
        let t = Cnitool::new(conf);
        let c = Ns::new("c");
        let caps = r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}"#;
        for cmd in ["add", "check", "del"] {
            let (ok, _, err) = t.run(&[cmd, net, &c.path()], &[("CAP_ARGS", caps)]);
            assert!(ok, "{file} {cmd}: {err}");
        }
        let rules = t.host.nft_ruleset();
        assert!(!rules.contains(&format!("\"{net}/")), "{rules}");
        assert_eq!(store_allocations(&t.path("data"), net), 0);
        assert!(t.cache_files().is_empty());
        assert_no_reaper_left();
    }
}
