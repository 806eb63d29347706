//! host-local on its own: requested addresses, DNS, routes, taking over a data dir the
//! reference plugin wrote, GC and STATUS.

use cni_tests::*;

fn conf(v: &str, data: &std::path::Path, ipam_extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({
        "cniVersion": v, "name": "hl", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "10.80.0.0/24", "gateway": "10.80.0.254"}], [{"subnet": "fd80::/120"}]]}
    });
    merge(c.get_mut("ipam").unwrap(), ipam_extra);
    c
}

#[test]
fn dual_stack_result_with_routes_and_dns() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let resolv = data.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.80.0.53\nsearch svc.local\n").unwrap();
    let c = conf(
        "0.4.0",
        data.path(),
        json!({"routes": [{"dst": "0.0.0.0/0"}], "resolvConf": resolv}),
    );
    let r = Call::new("host-local", "ADD", &host, "/x", "h1")
        .run(&c)
        .expect_ok();
    assert_eq!(
        r["ips"],
        json!([
            {"version": "4", "address": "10.80.0.1/24", "gateway": "10.80.0.254"},
            {"version": "6", "address": "fd80::2/120", "gateway": "fd80::1"}
        ])
    );
    assert_eq!(r["routes"], json!([{"dst": "0.0.0.0/0"}]));
    assert_eq!(
        r["dns"],
        json!({"nameservers": ["10.80.0.53"], "search": ["svc.local"]})
    );
    Call::new("host-local", "CHECK", &host, "/x", "h1")
        .run(&with_prev(&c, &r))
        .expect_ok();
    Call::new("host-local", "DEL", &host, "/x", "h1")
        .run(&c)
        .expect_ok();
    assert_eq!(
        Call::new("host-local", "CHECK", &host, "/x", "h1")
            .run(&with_prev(&c, &r))
            .code(),
        104
    );
}

#[test]
fn requested_addresses_from_args_and_runtime_config() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let c = conf("1.0.0", data.path(), json!({}));
    let r = Call::new("host-local", "ADD", &host, "/x", "r1")
        .env("CNI_ARGS", "IgnoreUnknown=1;IP=10.80.0.42")
        .run(&c)
        .expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.80.0.42/24");
    let mut rc = c.clone();
    rc["runtimeConfig"] = json!({"ips": ["10.80.0.43/24", "fd80::43"]});
    let r = Call::new("host-local", "ADD", &host, "/x", "r2")
        .run(&rc)
        .expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.80.0.43/24");
    assert_eq!(r["ips"][1]["address"], "fd80::43/120");
    // taken (106), the gateway and outside every range (invalid values: 7)
    for (ip, code) in [("10.80.0.42", 106), ("10.80.0.254", 7), ("10.81.0.1", 7)] {
        let e = Call::new("host-local", "ADD", &host, "/x", "r3")
            .env("CNI_ARGS", &format!("IP={ip}"))
            .run(&c);
        assert_eq!(e.code(), code, "{ip}: {}", e.stdout);
    }
    assert_eq!(store_allocations(data.path(), "hl"), 4);
}

#[test]
fn takes_over_a_data_dir_of_the_reference_plugin() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let c = conf("1.0.0", data.path(), json!({}));
    let mut theirs = Vec::new();
    for i in 0..3 {
        let r = Call::new("host-local", "ADD", &host, "/x", &format!("ref{i}"))
            .reference()
            .run(&c)
            .expect_ok();
        theirs.push(r["ips"][0]["address"].as_str().unwrap().to_string());
    }
    // free the middle one with the reference, so its round robin has moved past it
    Call::new("host-local", "DEL", &host, "/x", "ref1")
        .reference()
        .run(&c)
        .expect_ok();
    let mut ours = Vec::new();
    for i in 0..3 {
        let r = Call::new("host-local", "ADD", &host, "/x", &format!("ours{i}"))
            .run(&c)
            .expect_ok();
        ours.push(r["ips"][0]["address"].as_str().unwrap().to_string());
    }
    for held in [&theirs[0], &theirs[2]] {
        assert!(
            !ours.contains(held),
            "{held} of a running container handed out again: {ours:?}"
        );
    }
    assert_eq!(
        ours[0], "10.80.0.4/24",
        "allocation goes on after the reference's last reserved address"
    );
    // a container the reference added is released by our DEL
    Call::new("host-local", "DEL", &host, "/x", "ref0")
        .run(&c)
        .expect_ok();
    // dual-stack: ref2 and our three containers hold two addresses each
    assert_eq!(store_allocations(data.path(), "hl"), 8);
}

#[test]
fn gc_and_status() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let mut c = conf("1.1.0", data.path(), json!({}));
    c["ipam"]["ranges"] =
        json!([[{"subnet": "10.82.0.0/24", "rangeStart": "10.82.0.10", "rangeEnd": "10.82.0.11"}]]);
    Call::new("host-local", "STATUS", &host, "", "")
        .run(&c)
        .expect_ok();
    for id in ["g1", "g2"] {
        Call::new("host-local", "ADD", &host, "/x", id)
            .run(&c)
            .expect_ok();
    }
    assert_eq!(
        Call::new("host-local", "STATUS", &host, "", "")
            .run(&c)
            .code(),
        50
    );
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "g2", "ifname": "eth0"}]);
    Call::new("host-local", "GC", &host, "", "")
        .run(&gc)
        .expect_ok();
    assert_eq!(store_allocations(data.path(), "hl"), 1);
    Call::new("host-local", "STATUS", &host, "", "")
        .run(&c)
        .expect_ok();
    let r = Call::new("host-local", "ADD", &host, "/x", "g3")
        .run(&c)
        .expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.82.0.10/24");
}

#[test]
fn legacy_single_range_form() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let c = json!({
        "cniVersion": "0.3.1", "name": "legacy", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data.path(), "subnet": "10.83.0.0/24",
                 "rangeStart": "10.83.0.100", "rangeEnd": "10.83.0.101", "gateway": "10.83.0.254"}
    });
    let got: Vec<_> = ["a", "b"]
        .iter()
        .map(|id| {
            Call::new("host-local", "ADD", &host, "/x", id)
                .run(&c)
                .expect_ok()["ips"][0]
                .clone()
        })
        .collect();
    assert_eq!(
        got[0],
        json!({"version": "4", "address": "10.83.0.100/24", "gateway": "10.83.0.254"})
    );
    assert_eq!(got[1]["address"], "10.83.0.101/24");
    assert_eq!(
        Call::new("host-local", "ADD", &host, "/x", "c")
            .run(&c)
            .code(),
        103
    );
}

/// A store with an index (128 reservations or more) opens sled in every call, and sled's
/// first open builds its metrics: 41 histograms of 512 KB, zeroed. They must stay fresh,
/// untouched pages: host-local's peak RSS was 23 MB instead of 2 when the plugins'
/// allocator or a build for size turned their calloc into malloc and memset.
#[test]
fn an_indexed_store_keeps_host_local_small() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let c = json!({
        "cniVersion": "1.0.0", "name": "hl", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.81.0.0/16"}]]}
    });
    let store = data.path().join("hl");
    std::fs::create_dir_all(&store).unwrap();
    for i in 0..200u32 {
        let ip = format!("10.81.{}.{}", i / 250, i % 250 + 2);
        std::fs::write(store.join(ip), format!("fill{i}\r\neth0")).unwrap();
    }
    Call::new("host-local", "ADD", &host, "/x", "h0")
        .run(&c)
        .expect_ok();
    assert!(store.join("sled").is_dir(), "the store has an index");
    // One more ADD, its peak RSS as GNU time reports it (it forks, so its child's peak is
    // host-local's own, not a copy of a larger parent's).
    let mut child = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(bin_dir().join("host-local"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "h1")
        .env("CNI_NETNS", "/x")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(c.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the ADD succeeds");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let rss_kb: u64 = stderr.trim().lines().last().unwrap().parse().unwrap();
    assert!(rss_kb < 10 * 1024, "host-local peaked at {rss_kb} KB");
}
