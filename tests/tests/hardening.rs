//! Hostile input, retried and interrupted calls, damaged state (issue 12), against the
//! release binaries in namespaces of their own: hostile names never reach a script or a
//! path, a retried ADD never harms the live attachment, CNI_NETNS must be a network
//! namespace, what we create is private, a damaged, read-only or full store never hands
//! out an address in use and never fails a DEL, limits, and GC after a reboot.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cni_tests::*;
use serde_json::Value;

/// A bridge network named `name` on `bridge`, host-local in `data`.
fn net(data: &Path, name: &str, bridge: &str, subnet: &str, extra: Value) -> Value {
    let mut c = bridge_conf("1.0.0", data, subnet, extra);
    c["name"] = json!(name);
    c["bridge"] = json!(bridge);
    c
}

fn has_canary(host: &Ns) -> bool {
    host.nft_ruleset().contains("table inet canary")
}

#[test]
fn hostile_names_never_reach_a_script_or_a_path() {
    let host = Ns::new("h");
    host.sh("nft add table inet canary");
    let data = tempfile::tempdir().unwrap();
    let c = Ns::new("c");
    for name in [
        "x\"; flush ruleset; \"",
        "../escape",
        "a b",
        "-x",
        "n\nflush ruleset",
    ] {
        let conf = net(
            data.path(),
            name,
            "cnihost0",
            "10.40.0.0/24",
            json!({"ipMasq": true}),
        );
        for (plugin, cmd) in [("bridge", "ADD"), ("bridge", "DEL"), ("host-local", "ADD")] {
            let out = Call::new(plugin, cmd, &host, &c.path(), "h1").run(&conf);
            assert_eq!(out.code(), 7, "{plugin} {cmd} {name:?}: {}", out.stdout);
        }
    }
    assert!(
        host.link("cnihost0").is_none(),
        "a bad name created the bridge"
    );
    assert_eq!(std::fs::read_dir(data.path()).unwrap().count(), 0);

    // prevResult's interface names are claims: a bridge name that would end the quote
    let conf = json!({"cniVersion": "1.0.0", "name": "fwnet", "type": "firewall",
        "ingressPolicy": "same-bridge",
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "br\"; flush ruleset; \""}, {"name": "eth0", "sandbox": c.path()}],
            "ips": [{"address": "10.40.1.2/24", "interface": 1}]}});
    let out = Call::new("firewall", "ADD", &host, &c.path(), "h1").run(&conf);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert!(
        has_canary(&host),
        "the hostile name ran as nft: {}",
        host.nft_ruleset()
    );
    // ... and one that names no bridge of this host
    let mut conf = conf;
    conf["prevResult"]["interfaces"][0]["name"] = json!("nosuchbr0");
    let out = Call::new("firewall", "ADD", &host, &c.path(), "h1").run(&conf);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    let del = Call::new("firewall", "DEL", &host, &c.path(), "h1").run(&conf);
    del.expect_ok();
    assert!(has_canary(&host));
}

#[test]
fn long_names_fit_and_never_share_a_label() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let name = format!("n{}", "e".repeat(99));
    let conf = net(
        data.path(),
        &name,
        "cnilong0",
        "10.41.0.0/24",
        json!({"ipMasq": true, "macspoofchk": true}),
    );
    let common = "c".repeat(130);
    let (a, b) = (Ns::new("c"), Ns::new("c"));
    let (ida, idb) = (
        format!("{common}a{}", "x".repeat(20)),
        format!("{common}b{}", "x".repeat(20)),
    );
    Call::new("bridge", "ADD", &host, &a.path(), &ida)
        .run(&conf)
        .expect_ok();
    let rb = Call::new("bridge", "ADD", &host, &b.path(), &idb)
        .run(&conf)
        .expect_ok();
    let b_ip = first_ip(&rb);
    // DEL of a without prevResult finds its entries by label: b's must stay
    Call::new("bridge", "DEL", &host, &a.path(), &ida)
        .run(&conf)
        .expect_ok();
    let masq = host.sh("nft list set inet cni_rs masq4");
    assert!(
        masq.contains(&b_ip),
        "b's masquerade went with a's DEL: {masq}"
    );
    assert!(a.link("eth0").is_none());
    assert!(b.ping("10.41.0.1"));
    Call::new("bridge", "DEL", &host, &b.path(), &idb)
        .run(&conf)
        .expect_ok();
    assert!(!host.nft_ruleset().contains(&name[..40]));
    assert_eq!(store_allocations(data.path(), &name), 0);
}

#[test]
fn a_retried_add_never_harms_the_live_attachment() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let conf = net(
        data.path(),
        "retry",
        "cniretry0",
        "10.42.0.0/24",
        json!({"ipMasq": true, "macspoofchk": true}),
    );
    let c = Ns::new("c");
    let r = Call::new("bridge", "ADD", &host, &c.path(), "r1")
        .run(&conf)
        .expect_ok();
    let again = Call::new("bridge", "ADD", &host, &c.path(), "r1").run(&conf);
    assert!(!again.ok, "a second ADD of a live attachment succeeded");
    let veth = r["interfaces"][1]["name"].as_str().unwrap();
    assert!(host.link(veth).is_some(), "the retry deleted the live veth");
    let held = reservations(data.path(), "retry");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        format!("{}/24", held[0].0),
        r["ips"][0]["address"].as_str().unwrap()
    );
    assert!(host
        .sh("nft list set inet cni_rs masq4")
        .contains(&held[0].0));
    assert!(c.ping("10.42.0.1"), "the live container lost its network");

    // bandwidth: the reference's ifb name leaves the interface out, so eth1 of the same
    // container collides with eth0's; its failure must not take eth0's ifb
    let eth1 = Call::new("bridge", "ADD", &host, &c.path(), "r1")
        .ifname("eth1")
        .run(&conf)
        .expect_ok();
    let bw = |prev: &Value| {
        json!({"cniVersion": "1.0.0", "name": "retry", "type": "bandwidth",
            "ingressRate": 8_000_000, "ingressBurst": 80_000,
            "egressRate": 8_000_000, "egressBurst": 80_000, "prevResult": prev})
    };
    let with_ifb = Call::new("bandwidth", "ADD", &host, &c.path(), "r1")
        .run(&bw(&r))
        .expect_ok();
    let ifb = with_ifb["interfaces"][3]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let second = Call::new("bandwidth", "ADD", &host, &c.path(), "r1")
        .ifname("eth1")
        .run(&bw(&eth1));
    assert!(!second.ok);
    assert!(
        host.link(&ifb).is_some(),
        "eth1's failed ADD deleted eth0's ifb"
    );
    for ifname in ["eth0", "eth1"] {
        Call::new("bridge", "DEL", &host, &c.path(), "r1")
            .ifname(ifname)
            .run(&conf)
            .expect_ok();
    }
    Call::new("bandwidth", "DEL", &host, &c.path(), "r1")
        .run(&bw(&r))
        .expect_ok();
    assert_eq!(store_allocations(data.path(), "retry"), 0);
}

/// Runs `call` with `conf`, killing it after `limit`; None if it did not finish.
fn bounded(call: &Call, conf: &Value, limit: Duration) -> Option<Outcome> {
    let mut child = call.spawn(conf.to_string().as_bytes());
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            return Some(Outcome {
                ok: out.status.success(),
                json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
                stdout,
                stderr: String::from_utf8_lossy(&out.stderr).to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn cni_netns_must_be_a_network_namespace() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let conf = net(
        data.path(),
        "nsnet",
        "cnins0",
        "10.43.0.0/24",
        json!({"ipMasq": true}),
    );
    let fifo = data.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let file = data.path().join("file");
    std::fs::write(&file, "not a namespace").unwrap();
    let uts = "/proc/self/ns/uts".to_string();
    for (netns, code) in [
        (fifo.display().to_string(), 4),
        (file.display().to_string(), 4),
        (data.path().display().to_string(), 4),
        (uts, 4),
        (data.path().join("none").display().to_string(), 3),
    ] {
        for plugin in ["bridge", "loopback"] {
            let call = Call::new(plugin, "ADD", &host, &netns, "ns1");
            let out = bounded(&call, &conf, Duration::from_secs(10))
                .unwrap_or_else(|| panic!("{plugin} ADD with CNI_NETNS={netns} never returned"));
            assert_eq!(out.code(), code, "{plugin} {netns}: {}", out.stdout);
        }
        let del = Call::new("bridge", "DEL", &host, &netns, "ns1");
        bounded(&del, &conf, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("DEL with CNI_NETNS={netns} never returned"))
            .expect_ok();
    }
    assert!(
        host.link("cnins0").is_none(),
        "a bridge was made before the check"
    );
    assert!(!host.nft_ruleset().contains("nsnet/"));
    assert_eq!(store_allocations(data.path(), "nsnet"), 0);
}

/// Modes of everything under `dir` that group or others could use.
fn exposed(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        if meta.permissions().mode() & 0o077 != 0 {
            out.push(format!(
                "{} {:o}",
                e.path().display(),
                meta.permissions().mode()
            ));
        }
        if meta.is_dir() {
            out.extend(exposed(&e.path()));
        }
    }
    out
}

#[test]
fn what_we_create_is_private_whatever_the_umask() {
    let t = Cnitool::new(json!({
        "cniVersion": "1.0.0", "name": "privnet",
        "plugins": [
            {"type": "bridge", "bridge": "cnipriv0", "isGateway": true,
             "ipam": {"type": "host-local", "dataDir": "@DATA@/ipam", "ranges": [[{"subnet": "10.44.0.0/24"}]]}},
            {"type": "tuning", "mtu": 1400, "dataDir": "@DATA@/tuning"}
        ]
    }));
    let c = Ns::new("c");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000 && exec ip netns exec {} {} add privnet {}",
            t.host.name,
            bin_dir().join("cnitool").display(),
            c.path()
        ))
        .env("NETCONFPATH", t.path("conf"))
        .env("CNI_PATH", bin_dir())
        .env("CNI_CACHE_DIR", t.path("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for dir in ["data", "cache"] {
        let open = exposed(&t.path(dir));
        assert!(open.is_empty(), "readable by others: {open:?}");
    }
    let backups: Vec<String> = std::fs::read_dir(t.path("data/tuning"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(backups.len(), 1);
    assert!(
        backups[0].ends_with("_eth0.json"),
        "the reference's name: {backups:?}"
    );

    // the namespace is gone: DEL succeeds and removes the backup, nothing else
    let path = c.path();
    drop(c);
    let (ok, _, err) = t.run(&["del", "privnet", &path], &[]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_dir(t.path("data/tuning")).unwrap().count(), 0);
}

#[test]
fn tuning_never_writes_through_a_planted_symlink() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let c = Ns::new("c");
    let conf = net(data.path(), "symnet", "cnisym0", "10.45.0.0/24", json!({}));
    let r = Call::new("bridge", "ADD", &host, &c.path(), "s1")
        .run(&conf)
        .expect_ok();
    let dir = data.path().join("tuning");
    std::fs::create_dir(&dir).unwrap();
    let precious = data.path().join("precious");
    std::fs::write(&precious, "keep me").unwrap();
    std::os::unix::fs::symlink(&precious, dir.join("s1_eth0.json")).unwrap();
    let tuning = json!({"cniVersion": "1.0.0", "name": "symnet", "type": "tuning",
        "mtu": 1300, "dataDir": dir, "prevResult": r});
    Call::new("tuning", "ADD", &host, &c.path(), "s1")
        .run(&tuning)
        .expect_ok();
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    // a file there that is no backup: DEL still succeeds and leaves it (issue 17: it
    // may be anyone's)
    std::fs::write(dir.join("s1_eth0.json"), "garbage").unwrap();
    Call::new("tuning", "DEL", &host, &c.path(), "s1")
        .run(&tuning)
        .expect_ok();
    assert!(dir.join("s1_eth0.json").exists());
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    Call::new("bridge", "DEL", &host, &c.path(), "s1")
        .run(&conf)
        .expect_ok();
}

fn host_local(data: &Path, extra: Value) -> Value {
    let mut c = json!({"cniVersion": "1.0.0", "name": "store", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "10.46.0.0/24"}]]}});
    merge(&mut c, extra);
    c
}

fn add_ip(host: &Ns, conf: &Value, cid: &str) -> String {
    let r = Call::new("host-local", "ADD", host, "/x", cid)
        .run(conf)
        .expect_ok();
    r["ips"][0]["address"].as_str().unwrap().to_string()
}

#[test]
fn a_damaged_store_never_hands_out_an_address_in_use() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let conf = host_local(data.path(), json!({}));
    // Enough reservations (of another range sharing the store) for host-local to index it.
    let store = data.path().join("store");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&store)
        .unwrap();
    for k in 0..300 {
        let other = format!("10.47.{}.{}", k / 250, k % 250 + 2);
        std::fs::write(store.join(other), format!("other{k}\r\neth0")).unwrap();
    }
    let mut held = vec![add_ip(&host, &conf, "d1"), add_ip(&host, &conf, "d2")];
    let db = store.join("sled");
    assert!(db.is_dir(), "no index made for 302 reservations");
    let damage: [&dyn Fn(); 3] = [
        &|| {
            for e in std::fs::read_dir(&db).unwrap().flatten() {
                if e.path().is_file() {
                    std::fs::write(e.path(), b"\0garbage").unwrap();
                }
            }
        },
        &|| std::fs::remove_dir_all(&db).unwrap(),
        &|| {
            std::fs::remove_dir_all(&db).unwrap();
            std::fs::write(&db, "not a database").unwrap();
        },
    ];
    for (i, hurt) in damage.iter().enumerate() {
        hurt();
        let ip = add_ip(&host, &conf, &format!("after{i}"));
        assert!(
            !held.contains(&ip),
            "{ip} handed out twice after damage {i}"
        );
        held.push(ip);
    }
    // the reference plugin shares the files: it sees ours, we see its
    let theirs = Call::new("host-local", "ADD", &host, "/x", "ref1")
        .reference()
        .run(&conf)
        .expect_ok()["ips"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!held.contains(&theirs), "the reference reissued {theirs}");
    let ours = add_ip(&host, &conf, "after-ref");
    assert_ne!(ours, theirs);
    Call::new("host-local", "DEL", &host, "/x", "d1")
        .reference()
        .run(&conf)
        .expect_ok();
    let check = Call::new("host-local", "CHECK", &host, "/x", "d1").run(&conf);
    assert_eq!(check.code(), 104, "our index missed the reference's DEL");
    Call::new("host-local", "DEL", &host, "/x", "ref1")
        .run(&conf)
        .expect_ok();
    assert!(!reservations(data.path(), "store")
        .iter()
        .any(|(_, cid, _)| cid == "ref1" || cid == "d1"));
}

/// Runs `script` in a private mount namespace of the host namespace, with host-local's
/// environment; returns its output.
fn in_private_mounts(host: &Ns, script: &str) -> String {
    let out = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "ip",
            "netns",
            "exec",
            &host.name,
            "sh",
            "-c",
            script,
        ])
        .env("PLUGIN", bin_dir().join("host-local"))
        .env("CNI_CONTAINERID", "full1")
        .env("CNI_NETNS", "/x")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn a_full_or_read_only_disk_fails_add_clearly_and_never_del() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let conf = host_local(data.path(), json!({})).to_string();
    let script = format!(
        r#"mount -t tmpfs -o size=1m tmpfs {dir} || exit 1
run() {{ echo "$2" | CNI_COMMAND=$1 CNI_CONTAINERID=$3 $PLUGIN; echo " rc=$?"; }}
echo "== add1"; run ADD '{conf}' full1
dd if=/dev/zero of={dir}/filler bs=4k 2>/dev/null
echo "== add2"; run ADD '{conf}' full2
echo "== del1"; run DEL '{conf}' full1
echo "== files"; ls {dir}/store
mount -o remount,ro {dir}
echo "== add3"; run ADD '{conf}' full3
echo "== del2"; run DEL '{conf}' full2
"#
    );
    let out = in_private_mounts(&host, &script);
    let part = |name: &str| {
        out.split(&format!("== {name}\n"))
            .nth(1)
            .and_then(|s| s.split("\n== ").next())
            .unwrap_or_default()
            .to_string()
    };
    assert!(part("add1").contains("rc=0"), "{out}");
    let add2 = part("add2");
    assert!(
        add2.contains("rc=1") && add2.contains("\"code\""),
        "full disk ADD: {out}"
    );
    assert!(add2.contains(&dir), "the error names the path: {add2}");
    assert!(
        part("del1").contains("rc=0"),
        "full disk DEL must succeed: {out}"
    );
    assert!(
        !part("files").contains("10.46.0."),
        "DEL on a full disk freed nothing: {out}"
    );
    let add3 = part("add3");
    assert!(
        add3.contains("rc=1") && add3.contains(&dir),
        "read-only ADD: {out}"
    );
    assert!(
        part("del2").contains("rc=0"),
        "read-only DEL must succeed: {out}"
    );
}

#[test]
fn limits_are_refused_before_anything_is_made() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let c = Ns::new("c");
    let mut huge = net(data.path(), "limits", "cnilim0", "10.47.0.0/24", json!({}));
    huge["padding"] = json!("x".repeat(1 << 20));
    for plugin in ["bridge", "host-local"] {
        let out = Call::new(plugin, "ADD", &host, &c.path(), "l1").run(&huge);
        assert_eq!(
            out.code(),
            7,
            "{plugin}: {}",
            &out.stdout[..out.stdout.len().min(200)]
        );
    }
    let mut many = net(data.path(), "limits", "cnilim0", "10.47.0.0/24", json!({}));
    many["ipam"]["ranges"] = json!((0..1025)
        .map(|i| json!([{"subnet": format!("10.{}.{}.0/24", 100 + i / 256, i % 256)}]))
        .collect::<Vec<_>>());
    assert_eq!(
        Call::new("bridge", "ADD", &host, &c.path(), "l1")
            .run(&many)
            .code(),
        7
    );
    let resolv = data.path().join("resolv.conf");
    std::fs::write(&resolv, "# x\n".repeat(20_000)).unwrap();
    let mut big_resolv = net(data.path(), "limits", "cnilim0", "10.47.0.0/24", json!({}));
    big_resolv["ipam"]["resolvConf"] = json!(resolv);
    assert_eq!(
        Call::new("bridge", "ADD", &host, &c.path(), "l1")
            .run(&big_resolv)
            .code(),
        7
    );
    assert!(
        host.link("cnilim0").is_none() || host.link_names().iter().all(|l| !l.starts_with("veth"))
    );
    assert_eq!(store_allocations(data.path(), "limits"), 0);

    // a token bucket of 0 bytes/s
    let ok = net(data.path(), "limits", "cnilim0", "10.47.0.0/24", json!({}));
    let r = Call::new("bridge", "ADD", &host, &c.path(), "l1")
        .run(&ok)
        .expect_ok();
    let bw = json!({"cniVersion": "1.0.0", "name": "limits", "type": "bandwidth",
        "ingressRate": 4, "ingressBurst": 4, "prevResult": r});
    assert_eq!(
        Call::new("bandwidth", "ADD", &host, &c.path(), "l1")
            .run(&bw)
            .code(),
        7
    );
    let veth = r["interfaces"][1]["name"].as_str().unwrap();
    assert!(!host
        .sh(&format!("tc qdisc show dev {veth}"))
        .contains("tbf"));
    Call::new("bridge", "DEL", &host, &c.path(), "l1")
        .run(&ok)
        .expect_ok();

    // a /8 and a /64 are used without walking them
    let mut wide = host_local(data.path(), json!({}));
    wide["ipam"]["ranges"] = json!([[{"subnet": "10.0.0.0/8"}], [{"subnet": "fd47::/64"}]]);
    let call = Call::new("host-local", "ADD", &host, "/x", "wide1");
    let r = bounded(&call, &wide, Duration::from_secs(20)).expect("ADD in a /8 and a /64");
    assert_eq!(r.expect_ok()["ips"][1]["address"], "fd47::2/64");
}

#[test]
fn two_requested_addresses_in_one_range_set_are_an_error() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let mut conf = host_local(data.path(), json!({}));
    conf["runtimeConfig"] = json!({"ips": ["10.46.0.5", "10.46.0.6"]});
    let out = Call::new("host-local", "ADD", &host, "/x", "two").run(&conf);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert_eq!(store_allocations(data.path(), "store"), 0);
}

#[test]
fn a_link_named_like_the_bridge_that_is_no_bridge_is_refused() {
    let host = Ns::new("h");
    host.sh("ip link add cninotbr type veth peer name cninotbr1");
    let data = tempfile::tempdir().unwrap();
    let c = Ns::new("c");
    let conf = net(data.path(), "notbr", "cninotbr", "10.48.0.0/24", json!({}));
    let out = Call::new("bridge", "ADD", &host, &c.path(), "nb1").run(&conf);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert!(host.link("cninotbr").unwrap()["master"].is_null());
    assert!(host.link_names().iter().all(|l| !l.starts_with("veth")));
    assert!(c.link("eth0").is_none());
    assert_eq!(store_allocations(data.path(), "notbr"), 0);
}

/// After a reboot the runtime knows only the survivors: GC with them as the valid
/// attachments removes every address, set element, chain, ifb and backup of the others,
/// whose veths went with their namespaces.
#[test]
fn gc_after_a_reboot_removes_everything_of_the_gone() {
    let t = Cnitool::new(json!({
        "cniVersion": "1.1.0", "name": "reboot",
        "plugins": [
            {"type": "bridge", "bridge": "cnirb0", "isDefaultGateway": true, "ipMasq": true,
             "macspoofchk": true,
             "ipam": {"type": "host-local", "dataDir": "@DATA@", "ranges": [[{"subnet": "10.49.0.0/24"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "firewall"},
            {"type": "tuning", "mtu": 1400, "dataDir": "@DATA@/tuning"},
            {"type": "bandwidth", "ingressRate": 8000000, "ingressBurst": 80000,
             "egressRate": 8000000, "egressBurst": 80000}
        ]
    }));
    let caps = r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}"#;
    let (gone, kept) = (Ns::new("c"), Ns::new("c"));
    let mut ids = Vec::new();
    for c in [&gone, &kept] {
        let before = t.cache_files();
        let (ok, _, err) = t.run(&["add", "reboot", &c.path()], &[("CAP_ARGS", caps)]);
        assert!(ok, "{err}");
        let file = t
            .cache_files()
            .into_iter()
            .find(|f| !before.contains(f))
            .unwrap();
        let entry: Value = serde_json::from_str(
            &std::fs::read_to_string(t.path("cache/results").join(file)).unwrap(),
        )
        .unwrap();
        ids.push(entry["containerId"].as_str().unwrap().to_string());
    }
    drop(gone);
    let (lost, kept_id) = (&ids[0], &ids[1]);
    let conf: Value =
        serde_json::from_str(&std::fs::read_to_string(t.path("conf/10-tool.conflist")).unwrap())
            .unwrap();
    for plugin in conf["plugins"].as_array().unwrap().iter().rev() {
        let mut p: Value = serde_json::from_str(
            &plugin
                .to_string()
                .replace("@DATA@", t.path("data").to_str().unwrap()),
        )
        .unwrap();
        p["name"] = json!("reboot");
        p["cniVersion"] = json!("1.1.0");
        p["cni.dev/valid-attachments"] = json!([{"containerID": kept_id, "ifname": "eth0"}]);
        let kind = p["type"].as_str().unwrap().to_string();
        Call::new(&kind, "GC", &t.host, "", "").run(&p).expect_ok();
    }
    let rules = t.host.nft_ruleset();
    assert!(!rules.contains(&format!("reboot/{lost}")), "{rules}");
    assert!(rules.contains(&format!("reboot/{kept_id}")), "{rules}");
    assert_eq!(rules.matches("chain pm-pre-").count(), 1, "{rules}");
    let ifbs: Vec<String> = t
        .host
        .link_names()
        .into_iter()
        .filter(|l| l.starts_with("bwp"))
        .collect();
    assert_eq!(ifbs.len(), 1, "{ifbs:?}");
    let backups: Vec<String> = std::fs::read_dir(t.path("data/tuning"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(backups, [format!("{kept_id}_eth0.json")]);
    let held = reservations(&t.path("data"), "reboot");
    assert_eq!(held.len(), 1);
    assert_eq!(&held[0].1, kept_id);
    assert!(kept.ping("10.49.0.1"));
    let (ok, _, err) = t.run(&["del", "reboot", &kept.path()], &[("CAP_ARGS", caps)]);
    assert!(ok, "{err}");
}

#[test]
fn a_retried_add_leaves_the_live_lease_to_its_attachment() {
    // An IPAM plugin that answers a duplicate ADD with the live lease (as a DHCP client
    // daemon does) and logs every call: the retried ADD collides with the live
    // attachment's interface and must not send it a DEL.
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("calls");
    for p in ["bridge", "ptp"] {
        std::os::unix::fs::symlink(bin_dir().join(p), bin.path().join(p)).unwrap();
    }
    let script = format!(
        "#!/bin/sh\ncat >/dev/null\necho \"$CNI_COMMAND\" >> {}\n\
         [ \"$CNI_COMMAND\" = ADD ] && printf '%s' \
         '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.43.0.5/24\",\"gateway\":\"10.43.0.1\"}}]}}'\n\
         exit 0\n",
        log.display()
    );
    let ipam = bin.path().join("leasing");
    std::fs::write(&ipam, script).unwrap();
    std::fs::set_permissions(&ipam, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let host = Ns::new("h");
    for conf in [
        json!({"cniVersion": "1.0.0", "name": "leasebr", "type": "bridge",
            "bridge": "cnilease0", "ipam": {"type": "leasing"}}),
        json!({"cniVersion": "1.0.0", "name": "leaseptp", "type": "ptp",
            "ipam": {"type": "leasing"}}),
    ] {
        let _ = std::fs::remove_file(&log);
        let plugin = conf["type"].as_str().unwrap();
        let c = Ns::new("c");
        let call = |cmd| {
            let mut call = Call::new(plugin, cmd, &host, &c.path(), "l1");
            call.bin_dir = bin.path().to_path_buf();
            call.run(&conf)
        };
        call("ADD").expect_ok();
        assert!(
            !call("ADD").ok,
            "{plugin}: a second ADD of a live attachment succeeded"
        );
        let calls = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            calls, "ADD\nADD\n",
            "{plugin}: the retry released the live lease"
        );
        call("DEL").expect_ok();
        assert!(std::fs::read_to_string(&log).unwrap().ends_with("DEL\n"));
    }
}

/// An ADD that fails because the container's interface name is taken by a link that is
/// no attachment of ours gives back the address it got (the reference, which asks its
/// IPAM only once the interface exists, allocates nothing), for every plugin that starts
/// its IPAM beside the interface's creation.
#[test]
fn an_add_failing_on_a_foreign_ifname_releases_its_address() {
    let host = Ns::new("h");
    host.sh("ip link add fnic0 type veth peer name fnic0p && ip link set fnic0 up");
    let data = tempfile::tempdir().unwrap();
    let ipam = |subnet: &str| json!({"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": subnet}]]});
    let confs = [
        json!({"cniVersion": "1.0.0", "name": "foreignbr", "type": "bridge",
            "bridge": "cniforeign0", "ipam": ipam("10.44.1.0/24")}),
        json!({"cniVersion": "1.0.0", "name": "foreignptp", "type": "ptp",
            "ipam": ipam("10.44.2.0/24")}),
        json!({"cniVersion": "1.0.0", "name": "foreignmv", "type": "macvlan",
            "master": "fnic0", "ipam": ipam("10.44.3.0/24")}),
    ];
    for conf in confs {
        let network = conf["name"].as_str().unwrap();
        let c = Ns::new("c");
        // a link of the container's own under the name the runtime asks for
        c.sh("ip link add eth0 type veth peer name eth0p");
        let out = Call::new(
            conf["type"].as_str().unwrap(),
            "ADD",
            &host,
            &c.path(),
            "f1",
        )
        .run(&conf);
        assert!(!out.ok, "{network}: ADD over a foreign eth0 succeeded");
        assert!(
            reservations(data.path(), network).is_empty(),
            "{network}: the failed ADD kept its address: {:?}",
            reservations(data.path(), network)
        );
        assert!(
            c.link("eth0").is_some() && c.link("eth0p").is_some(),
            "{network}: the foreign link was touched"
        );
    }
}

/// A host namespace with `dev` (a veth end, as this kernel has no dummy links) holding
/// `addr`, up; returns it with the device's MAC.
fn host_with_device(dev: &str, addr: &str) -> (Ns, Value) {
    let host = Ns::new("h");
    host.sh(&format!(
        "ip link add {dev} type veth peer name {dev}p && ip addr add {addr} dev {dev} && \
         ip link set {dev} up && ip link set {dev}p up"
    ));
    let mac = host.link(dev).unwrap()["address"].clone();
    (host, mac)
}

fn is_up(link: &Value) -> bool {
    link["flags"].as_array().unwrap().contains(&json!("UP"))
}

#[test]
fn host_device_del_gives_the_hosts_addresses_only_to_the_device_it_moved_in() {
    let (host, mac) = host_with_device("hdid0", "10.95.0.5/24");
    let data = tempfile::tempdir().unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": "hdid", "type": "host-device",
        "device": "hdid0", "dataDir": data.path()});
    let c = Ns::new("c");
    Call::new("host-device", "ADD", &host, &c.path(), "hdi1")
        .run(&conf)
        .expect_ok();
    // the container (NET_ADMIN) renames the device and plants a veth pair in its place,
    // with the device's MAC and the alias that names the host's link
    c.sh(&format!(
        "ip link set eth0 name kept0 && ip link add eth0 address {} type veth peer name planted && \
         ip link set eth0 alias hdid0",
        mac.as_str().unwrap()
    ));
    for _ in 0..2 {
        Call::new("host-device", "DEL", &host, &c.path(), "hdi1")
            .run(&conf)
            .expect_ok();
    }
    let back = host.link("hdid0").expect("the device is back on the host");
    assert_eq!(back["linkinfo"]["info_kind"], "veth");
    assert_eq!(
        back["link"].as_str(),
        Some("hdid0p"),
        "the host's own link, not the planted one: {back}"
    );
    assert_eq!(host.addrs("hdid0"), ["10.95.0.5/24"]);
    assert!(is_up(&back));
    assert!(
        c.link("kept0").is_none(),
        "the device stayed in the container"
    );
    let planted = c.link("eth0").expect("the planted link stays where it is");
    assert!(!is_up(&planted) && c.link("planted").is_some());
    assert!(c.addrs("eth0").is_empty());

    // the planted link alone: DEL succeeds and gives the host nothing
    let c2 = Ns::new("c");
    Call::new("host-device", "ADD", &host, &c2.path(), "hdi2")
        .run(&conf)
        .expect_ok();
    c2.sh("ip link set eth0 name kept0 && ip link add eth0 type veth peer name planted && ip link set eth0 alias hdid0");
    c2.sh("ip link del kept0"); // the device goes (and its host peer with it)
    Call::new("host-device", "DEL", &host, &c2.path(), "hdi2")
        .run(&conf)
        .expect_ok();
    assert!(host.link("hdid0").is_none(), "{:?}", host.link_names());
    assert!(c2.link("eth0").is_some() && c2.link("planted").is_some());
    let held = host.sh("ip -4 addr show");
    assert!(!held.contains("10.95.0.5"), "{held}");
}

#[test]
fn a_failed_host_device_add_leaves_the_device_and_the_live_backup() {
    let (host, _) = host_with_device("hdfa0", "10.96.0.5/24");
    host.sh("ip link add hdfa1 type veth peer name hdfa1p && ip addr add 10.96.1.5/24 dev hdfa1 && ip link set hdfa1 up");
    let data = tempfile::tempdir().unwrap();
    let conf = |dev: &str| {
        json!({"cniVersion": "1.0.0", "name": "hdfail", "type": "host-device",
            "device": dev, "dataDir": data.path()})
    };
    let c = Ns::new("c");
    Call::new("host-device", "ADD", &host, &c.path(), "hdf1")
        .run(&conf("hdfa0"))
        .expect_ok();
    // a retried ADD of the live attachment with another device: eth0 is taken
    let again = Call::new("host-device", "ADD", &host, &c.path(), "hdf1").run(&conf("hdfa1"));
    assert!(!again.ok, "a second device under a taken name");
    let other = host
        .link("hdfa1")
        .expect("the other device is back on the host");
    assert_eq!(host.addrs("hdfa1"), ["10.96.1.5/24"]);
    assert!(is_up(&other));
    assert_eq!(c.link_names(), ["eth0"]);
    // the container's own link under the name: the same
    let c2 = Ns::new("c");
    c2.sh("ip link add eth0 type veth peer name own");
    let taken = Call::new("host-device", "ADD", &host, &c2.path(), "hdf2").run(&conf("hdfa1"));
    assert!(!taken.ok);
    assert_eq!(host.addrs("hdfa1"), ["10.96.1.5/24"]);
    // the live attachment's backup is whole: its device comes back with its address
    Call::new("host-device", "DEL", &host, &c.path(), "hdf1")
        .run(&conf("hdfa0"))
        .expect_ok();
    assert_eq!(host.addrs("hdfa0"), ["10.96.0.5/24"]);
    assert!(is_up(&host.link("hdfa0").unwrap()));
}

#[test]
fn the_subnet_file_is_read_bounded_in_size_and_time() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let env = data.path().join("subnet.env");
    let conf = json!({"cniVersion": "1.1.0", "name": "sfnet", "type": "vxlan-overlay",
        "dataDir": data.path(), "ipam": {"dataDir": data.path()}, "subnetFile": env,
        "store": {"type": "etcd", "endpoints": ["http://192.0.2.1:2379"]}});
    let good = "FLANNEL_NETWORK=10.247.0.0/16\nFLANNEL_SUBNET=10.247.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
    let path = env.display().to_string();
    let c = Ns::new("c");
    // the FIFO first: the old code blocked on it before /dev/zero could take its memory
    for (what, make) in [
        ("a FIFO", format!("mkfifo {path}")),
        (
            "a file over 64 KiB",
            format!(
                "printf '{}' > {path} && head -c 70000 /dev/zero | tr '\\0' '#' >> {path}",
                good.replace('\n', "\\n")
            ),
        ),
        ("/dev/zero's device", format!("mknod {path} c 1 5")),
    ] {
        let _ = std::fs::remove_file(&env);
        host.sh(&make);
        let add = Call::new("vxlan-overlay", "ADD", &host, &c.path(), "sf1");
        let out = bounded(&add, &conf, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("ADD with {what} as subnet file never returned"));
        assert_eq!(out.code(), 7, "{what}: {}", out.stdout);
        assert!(
            out.json["msg"].as_str().unwrap().contains(&path),
            "{}",
            out.stdout
        );
        let del = Call::new("vxlan-overlay", "DEL", &host, &c.path(), "sf1");
        bounded(&del, &conf, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("DEL with {what} as subnet file never returned"))
            .expect_ok();
    }
    assert!(c.link("eth0").is_none());
    std::fs::remove_file(&env).unwrap();
    std::fs::write(&env, good).unwrap();
    Call::new("vxlan-overlay", "ADD", &host, &c.path(), "sf1")
        .run(&conf)
        .expect_ok();
    Call::new("vxlan-overlay", "DEL", &host, &c.path(), "sf1")
        .run(&conf)
        .expect_ok();
}

/// A device whose MAC the container changed is not recognised by DEL, which leaves it;
/// its backup (the host's addresses) stays for a later DEL or GC instead of being lost.
#[test]
fn host_device_del_keeps_the_backup_of_a_device_it_did_not_give_back() {
    let (host, _) = host_with_device("hdmac0", "10.97.0.5/24");
    let data = tempfile::tempdir().unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": "hdmac", "type": "host-device",
        "device": "hdmac0", "dataDir": data.path()});
    let c = Ns::new("c");
    Call::new("host-device", "ADD", &host, &c.path(), "hm1")
        .run(&conf)
        .expect_ok();
    let backup = data.path().join("hm1_eth0.json");
    assert!(backup.exists(), "no backup where expected");
    c.sh("ip link set eth0 address 02:00:00:00:77:01");
    Call::new("host-device", "DEL", &host, &c.path(), "hm1")
        .run(&conf)
        .expect_ok();
    assert!(c.link("eth0").is_some());
    assert!(
        backup.exists(),
        "the backup of a device still in the container went"
    );
}
