//! cnitool and the libcni runtime against our plugins: a conflist from NETCONFPATH, the
//! result printed, the cache written in upstream's format, CHECK, DEL, GC, STATUS,
//! capability arguments, and errors on stderr.

use std::path::Path;

use cni_tests::*;

fn conflist(version: &str) -> serde_json::Value {
    json!({
        "cniVersion": version, "name": "toolnet",
        "plugins": [{
            "type": "bridge", "bridge": "cnitool0", "isDefaultGateway": true,
            "capabilities": {"ips": true},
            "ipam": {"type": "host-local", "dataDir": "@DATA@", "ranges": [[{"subnet": "10.63.0.0/24"}]]}
        }]
    })
}

#[test]
fn add_check_del_with_cache() {
    let t = Cnitool::new(conflist("1.1.0"));
    let c = Ns::new("c");
    let (ok, out, err) = t.run(&["add", "toolnet", &c.path()], &[]);
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["ips"][0]["address"], "10.63.0.2/24");
    assert!(out.contains("\n    \""), "indented like upstream: {out}");
    assert_eq!(c.addrs("eth0"), ["10.63.0.2/24"]);

    let files = t.cache_files();
    assert_eq!(files.len(), 1);
    assert!(
        files[0].starts_with("toolnet-cnitool-") && files[0].ends_with("-eth0"),
        "{files:?}"
    );
    let entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path("cache/results").join(&files[0])).unwrap())
            .unwrap();
    assert_eq!(entry["kind"], "cniCacheV1");
    assert_eq!(entry["netns"], c.path());
    assert_eq!(entry["result"]["ips"][0]["address"], "10.63.0.2/24");

    assert!(t.run(&["check", "toolnet", &c.path()], &[]).0);
    c.sh("ip addr flush dev eth0");
    let (ok, _, err) = t.run(&["check", "toolnet", &c.path()], &[]);
    assert!(!ok && err.contains("code 104"), "{err}");

    assert!(t.run(&["status", "toolnet", &c.path()], &[]).0);
    let (ok, _, err) = t.run(&["del", "toolnet", &c.path()], &[]);
    assert!(ok, "{err}");
    assert!(t.cache_files().is_empty());
    assert!(t.host.live_veths().is_empty());
    assert_eq!(store_allocations(&t.path("data"), "toolnet"), 0);
    assert!(t.run(&["del", "toolnet", &c.path()], &[]).0, "DEL twice");
}

#[test]
fn capability_args_reach_the_plugins_that_declare_them() {
    let t = Cnitool::new(conflist("1.0.0"));
    let c = Ns::new("c");
    let (ok, out, err) = t.run(
        &["add", "toolnet", &c.path()],
        &[("CAP_ARGS", r#"{"ips":["10.63.0.77/24"],"portMappings":[]}"#)],
    );
    assert!(ok, "{err}");
    assert!(out.contains("10.63.0.77/24"), "{out}");
    assert!(t.run(&["del", "toolnet", &c.path()], &[]).0);
}

#[test]
fn gc_deletes_cached_attachments() {
    let t = Cnitool::new(conflist("1.1.0"));
    let (a, b) = (Ns::new("c"), Ns::new("c"));
    assert!(t.run(&["add", "toolnet", &a.path()], &[]).0);
    assert!(t.run(&["add", "toolnet", &b.path()], &[]).0);
    assert_eq!(t.cache_files().len(), 2);
    let (ok, _, err) = t.run(&["gc", "toolnet", &a.path()], &[]);
    assert!(ok, "{err}");
    assert!(t.cache_files().is_empty());
    assert!(a.link("eth0").is_none() && b.link("eth0").is_none());
    assert_eq!(store_allocations(&t.path("data"), "toolnet"), 0);
}

#[test]
fn single_plugin_conf_and_errors() {
    let t = Cnitool::new(conflist("1.0.0"));
    std::fs::write(
        t.path("conf/99-lo.conf"),
        r#"{"cniVersion":"0.4.0","name":"lonet","type":"loopback"}"#,
    )
    .unwrap();
    let c = Ns::new("c");
    c.sh("ip link set lo down");
    let (ok, out, err) = t.run(&["add", "lonet", &c.path(), "--ifname", "lo"], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("127.0.0.1/8"));
    assert!(t.run(&["del", "lonet", &c.path(), "-i", "lo"], &[]).0);

    let (ok, out, err) = t.run(&["add", "nosuchnet", &c.path()], &[]);
    assert!(!ok && out.is_empty() && err.contains("nosuchnet"), "{err}");
    std::fs::write(
        t.path("conf/05-broken.conflist"),
        r#"{"name":"x","plugins":"bridge"}"#,
    )
    .unwrap();
    let (ok, _, err) = t.run(&["add", "toolnet", &c.path()], &[]);
    assert!(
        !ok && err.contains("05-broken.conflist") && err.contains("plugins"),
        "{err}"
    );
    let (ok, _, err) = t.run(&["add"], &[]);
    assert!(!ok && err.contains("Usage"), "{err}");
    assert!(Path::new(&bin_dir().join("cnitool")).exists());
}
