//! A runtime may kill a plugin at any moment of ADD (a timeout). Whatever was done by then,
//! the store opens again, the DEL that follows leaves nothing behind, and no address leaks
//! or is handed out twice: 1,200 kills of host-local's own run and 1,040 of bridge's,
//! across eight seeds.

use std::path::Path;
use std::time::Duration;

use cni_tests::*;

/// Writes an executable shell script.
fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// What host-local holds, checked: every address once, and `live` (address -> owner)
/// each still held by its owner.
fn check_store(data: &Path, network: &str, live: &[(String, String)], when: &str) {
    let held = reservations(data, network);
    for (ip, cid) in live {
        assert!(
            held.iter().any(|(a, c, _)| a == ip && c == cid),
            "{when}: {cid} lost {ip}: {held:?}"
        );
    }
}

/// Kills `plugin`'s ADD at a random point (within twice the time of the quickest of the
/// four ADDs that are not killed, so most kills land while it works), then opens the store
/// through the DEL that follows, `rounds` times per seed, with live containers that must
/// keep their addresses throughout; at the end every address of the range is either live
/// or can be handed out again (none lost, none twice).
fn kill_rounds(plugin: &str, seeds: &[u64], rounds: usize) {
    let host = Ns::new("h");
    let ctr = Ns::new("c");
    let data = tempfile::tempdir().unwrap();
    let network = format!("kill{plugin}");
    let mut conf = bridge_conf(
        "1.0.0",
        data.path(),
        "10.61.0.0/26",
        json!({"ipMasq": true, "macspoofchk": true}),
    );
    conf["name"] = json!(network);
    conf["bridge"] = json!(format!("cnik{}0", &plugin[..1]));
    let netns = if plugin == "bridge" {
        ctr.path()
    } else {
        "/x".into()
    };
    let live_ns: Vec<Ns> = (0..4).map(|_| Ns::new("l")).collect();
    let mut live = Vec::new();
    let mut took = Vec::new();
    for (i, ns) in live_ns.iter().enumerate() {
        let p = if plugin == "bridge" {
            ns.path()
        } else {
            "/x".into()
        };
        let started = std::time::Instant::now();
        let r = Call::new(plugin, "ADD", &host, &p, &format!("live{i}"))
            .run(&conf)
            .expect_ok();
        took.push(started.elapsed().as_micros() as u64);
        live.push((first_ip(&r), format!("live{i}")));
    }
    let window = (2 * took.iter().min().unwrap()).clamp(1_000, 20_000);
    let (mut landed, mut completed) = (0, 0);
    for seed in seeds {
        let mut rng = Rng(*seed);
        for round in 0..rounds {
            let when = format!("seed {seed} round {round}");
            let cid = format!("k{seed}x{round}");
            let mut child =
                Call::new(plugin, "ADD", &host, &netns, &cid).spawn(conf.to_string().as_bytes());
            std::thread::sleep(Duration::from_micros(rng.below(window)));
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            if out.status.success() {
                completed += 1;
                // the address it printed is held by it and by no one else
                let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let ip = first_ip(&r);
                assert!(
                    !live.iter().any(|(a, _)| *a == ip),
                    "{when}: {ip} handed out twice"
                );
                check_store(data.path(), &network, &[(ip, cid.clone())], &when);
            } else {
                landed += 1;
            }
            check_store(data.path(), &network, &live, &when);
            Call::new(plugin, "DEL", &host, &netns, &cid)
                .run(&conf)
                .expect_ok();
            let held = reservations(data.path(), &network);
            assert!(
                !held.iter().any(|(_, c, _)| *c == cid),
                "{when}: DEL left {cid}'s address: {held:?}"
            );
            assert_eq!(held.len(), live.len(), "{when}: {held:?}");
            if plugin == "bridge" {
                assert!(ctr.link("eth0").is_none(), "{when}: eth0 left");
            }
        }
    }
    eprintln!(
        "{plugin}: {landed} kills landed during ADD, {completed} ADDs completed first \
         (kills within {window} µs)"
    );
    assert!(
        landed > rounds / 4,
        "too few kills landed during an ADD: {landed}"
    );
    let expected = if plugin == "bridge" { live.len() } else { 0 };
    assert_eq!(
        host.live_veths().len(),
        expected,
        "veths of killed ADDs left"
    );
    let all = host.veths_settled(expected);
    assert_eq!(all.len(), expected, "retired pairs left: {all:?}");
    assert!(!host.nft_ruleset().contains(&format!("\"{network}/k")));
    // nothing lost: the rest of the /26 (61 usable beside the gateway) can be handed out
    let free = 61 - live.len();
    for i in 0..free {
        Call::new("host-local", "ADD", &host, "/x", &format!("fill{i}"))
            .run(&conf)
            .expect_ok();
    }
    let full = Call::new("host-local", "ADD", &host, "/x", "fill-extra").run(&conf);
    assert_eq!(full.code(), 103, "{}", full.stdout);
}

#[test]
fn host_local_survives_kills_at_any_point() {
    kill_rounds("host-local", &[1, 2, 3, 4], 300);
}

#[test]
fn bridge_survives_kills_at_any_point() {
    kill_rounds("bridge", &[5, 6, 7, 8], 260);
}

#[test]
fn killed_plugin_takes_its_ipam_delegate_along() {
    let host = Ns::new("h");
    let ctr = Ns::new("c");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("delegate-finished");
    write_script(
        &dir.path().join("slow-ipam"),
        &format!("#!/bin/sh\nsleep 1\ntouch {}\n", marker.display()),
    );
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
