//! A runtime may kill a plugin at any moment of ADD (a timeout). Whatever was done by then,
//! the DEL that follows leaves nothing behind, and no address leaks or is handed out twice.

use std::time::Duration;

use cni_tests::*;

#[test]
fn kill_during_add_then_del_leaves_nothing() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let conf = bridge_conf(
        "1.0.0",
        data.path(),
        "10.61.0.0/24",
        json!({"ipMasq": true, "macspoofchk": true}),
    );
    let ctr = Ns::new("c");
    let mut completed = 0;
    for delay_us in (0..12_000).step_by(400) {
        let cid = format!("kill{delay_us}");
        let mut child =
            Call::new("bridge", "ADD", &host, &ctr.path(), &cid).spawn(conf.to_string().as_bytes());
        std::thread::sleep(Duration::from_micros(delay_us));
        let _ = child.kill();
        if child.wait().unwrap().success() {
            completed += 1;
        }
        Call::new("bridge", "DEL", &host, &ctr.path(), &cid)
            .run(&conf)
            .expect_ok();
        let veths: Vec<_> = host
            .link_names()
            .into_iter()
            .filter(|l| l.starts_with("veth"))
            .collect();
        assert!(veths.is_empty(), "killed after {delay_us}us: {veths:?}");
        assert!(
            ctr.link("eth0").is_none(),
            "killed after {delay_us}us: eth0 left"
        );
        assert_eq!(
            store_allocations(data.path(), "testnet"),
            0,
            "killed after {delay_us}us: address leaked"
        );
        let rules = host.nft_ruleset();
        assert!(
            !rules.contains("\"testnet/"),
            "killed after {delay_us}us: rule left: {rules}"
        );
    }
    assert!(completed < 30, "no kill landed during an ADD");
    // the store survived every kill: two more containers get distinct addresses
    let (a, b) = (Ns::new("c"), Ns::new("c"));
    let ra = Call::new("bridge", "ADD", &host, &a.path(), "after1")
        .run(&conf)
        .expect_ok();
    let rb = Call::new("bridge", "ADD", &host, &b.path(), "after2")
        .run(&conf)
        .expect_ok();
    assert_ne!(ra["ips"][0]["address"], rb["ips"][0]["address"]);
    assert!(a.ping(
        rb["ips"][0]["address"]
            .as_str()
            .unwrap()
            .trim_end_matches("/24")
    ));
    Call::new("bridge", "DEL", &host, &a.path(), "after1")
        .run(&conf)
        .expect_ok();
    Call::new("bridge", "DEL", &host, &b.path(), "after2")
        .run(&conf)
        .expect_ok();
}

#[test]
fn killed_plugin_takes_its_ipam_delegate_along() {
    let host = Ns::new("h");
    let ctr = Ns::new("c");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("delegate-finished");
    let slow = dir.path().join("slow-ipam");
    std::fs::write(
        &slow,
        format!("#!/bin/sh\nsleep 1\ntouch {}\n", marker.display()),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&slow)
        .status()
        .unwrap();
    let mut conf = bridge_conf("1.0.0", dir.path(), "10.62.0.0/24", json!({}));
    conf["ipam"] = json!({"type": "slow-ipam"});
    let path = format!("{}:{}", bin_dir().display(), dir.path().display());
    let call = Call::new("bridge", "ADD", &host, &ctr.path(), "orphan1").env("CNI_PATH", &path);
    let mut child = call.spawn(conf.to_string().as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !marker.exists(),
        "the IPAM delegate outlived the killed plugin"
    );
}
