//! tuning chained after bridge, through cnitool: sysctls and link settings in the
//! container, the MAC from the `mac` capability in the result, CHECK, and the old link
//! settings back after DEL.

use cni_tests::*;

fn chain(data_extra: serde_json::Value) -> serde_json::Value {
    let mut tuning = json!({
        "type": "tuning",
        "capabilities": {"mac": true},
        "sysctl": {"net.core.somaxconn": "1234", "net.ipv4.conf.IFNAME.arp_ignore": "1"},
        "mtu": 1400, "promisc": true, "txQLen": 333, "dataDir": "@DATA@/tuning"
    });
    merge(&mut tuning, data_extra);
    json!({
        "cniVersion": "1.0.0", "name": "tunenet",
        "plugins": [
            {"type": "bridge", "bridge": "cnitune0", "isGateway": true,
             "ipam": {"type": "host-local", "dataDir": "@DATA@", "ranges": [[{"subnet": "10.64.0.0/24"}]]}},
            tuning
        ]
    })
}

#[test]
fn tunes_the_container_interface_and_checks_it() {
    let t = Cnitool::new(chain(json!({})));
    let c = Ns::new("c");
    let (ok, out, err) = t.run(
        &["add", "tunenet", &c.path()],
        &[("CAP_ARGS", r#"{"mac":"02:11:22:33:44:55"}"#)],
    );
    assert!(ok, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["interfaces"][2]["mac"], "02:11:22:33:44:55", "{r}");
    let eth0 = c.link("eth0").unwrap();
    assert_eq!(eth0["address"], "02:11:22:33:44:55");
    assert_eq!(eth0["mtu"], 1400);
    assert_eq!(eth0["txqlen"], 333);
    assert!(eth0["promiscuity"].as_u64().unwrap() > 0);
    assert_eq!(c.sh("cat /proc/sys/net/core/somaxconn").trim(), "1234");
    assert_eq!(
        c.sh("cat /proc/sys/net/ipv4/conf/eth0/arp_ignore").trim(),
        "1"
    );
    assert!(
        c.ping("10.64.0.1"),
        "still reaches its gateway with the new MAC"
    );

    assert!(t.run(&["check", "tunenet", &c.path()], &[]).0);
    c.sh("ip link set eth0 mtu 1300");
    let (ok, _, err) = t.run(&["check", "tunenet", &c.path()], &[]);
    assert!(!ok && err.contains("code 104"), "{err}");

    assert!(t.run(&["del", "tunenet", &c.path()], &[]).0);
    assert!(c.link("eth0").is_none());
    assert!(
        std::fs::read_dir(t.path("data/tuning"))
            .unwrap()
            .next()
            .is_none(),
        "backup left"
    );
}

#[test]
fn del_puts_the_old_link_settings_back() {
    let host = Ns::new("h");
    let c = Ns::new("c");
    let data = tempfile::tempdir().unwrap();
    c.sh("ip link add eth0 type veth peer name peer0 && ip link set eth0 mtu 1500");
    let before = c.link("eth0").unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "t", "type": "tuning", "mtu": 1280, "mac": "02:aa:bb:cc:dd:ee",
        "allmulti": true, "dataDir": data.path(),
        "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": c.path()}]}
    });
    let r = Call::new("tuning", "ADD", &host, &c.path(), "t1")
        .run(&conf)
        .expect_ok();
    assert_eq!(r["interfaces"][0]["mac"], "02:aa:bb:cc:dd:ee");
    assert_eq!(c.link("eth0").unwrap()["mtu"], 1280);
    Call::new("tuning", "DEL", &host, &c.path(), "t1")
        .run(&conf)
        .expect_ok();
    let after = c.link("eth0").unwrap();
    assert_eq!(
        (after["mtu"].clone(), after["address"].clone()),
        (before["mtu"].clone(), before["address"].clone())
    );
    assert!(!after["flags"]
        .as_array()
        .unwrap()
        .contains(&json!("ALLMULTI")));
    Call::new("tuning", "DEL", &host, &c.path(), "t1")
        .run(&conf)
        .expect_ok();
}

#[test]
fn refuses_what_it_must_not_touch() {
    let host = Ns::new("h");
    let c = Ns::new("c");
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}]});
    for (extra, code) in [
        (
            json!({"sysctl": {"kernel.pid_max": "100"}, "prevResult": prev}),
            7,
        ),
        (json!({"mac": "not-a-mac", "prevResult": prev}), 7),
        (json!({"mtu": 1400}), 7),
    ] {
        let mut conf = json!({"cniVersion": "1.0.0", "name": "t", "type": "tuning"});
        merge(&mut conf, extra.clone());
        assert_eq!(
            Call::new("tuning", "ADD", &host, &c.path(), "t2")
                .run(&conf)
                .code(),
            code,
            "{extra}"
        );
    }
    assert_ne!(c.sh("cat /proc/sys/kernel/pid_max").trim(), "100");
}

/// The dataDir may be shared: a file named like a backup that is none (an application's
/// `app_config.json`) is neither acted on nor removed by a DEL, even with the netns gone.
#[test]
fn del_leaves_a_file_that_is_no_backup() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "tunekeep", "type": "tuning", "mtu": 1400,
        "dataDir": data.path()
    });
    let files = [
        ("app_config.json", "{\"listen\": \"0.0.0.0:80\"}"),
        ("app_settings.json", "not json at all"),
    ];
    for (name, text) in files {
        std::fs::write(data.path().join(name), text).unwrap();
    }
    for ifname in ["config", "settings"] {
        Call::new(
            "tuning",
            "DEL",
            &host,
            "/var/run/netns/gone-tunekeep",
            "app",
        )
        .ifname(ifname)
        .run(&conf)
        .expect_ok();
    }
    for (name, text) in files {
        assert_eq!(
            std::fs::read_to_string(data.path().join(name))
                .ok()
                .as_deref(),
            Some(text),
            "{name} was touched"
        );
    }
}
