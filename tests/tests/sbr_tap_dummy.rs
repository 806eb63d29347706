//! The plugins of newer reference releases (issue 19): `sbr` side by side with Debian's
//! (1.1.1) where that one has the behaviour, and alone for what came later (`table`,
//! DEL without the interface); `tap` (added after 1.1.1) and `dummy` against the kernel,
//! which here lacks the dummy link kind.

use std::path::{Path, PathBuf};

use cni_tests::*;
use serde_json::Value;

fn sides() -> [(&'static str, PathBuf); 2] {
    [("ours", bin_dir()), ("reference", reference_dir())]
}

fn call<'a>(dir: &Path, plugin: &'a str, cmd: &'a str, host: &'a Ns, c: &Ns) -> Call<'a> {
    let mut call = Call::new(plugin, cmd, host, &c.path(), "sbr1");
    call.bin_dir = dir.to_path_buf();
    call
}

/// A container with `eth0` (a veth whose peer stays there, down-to-earth routes):
/// 10.130.1.5/24 and fd00:130::5/64, default routes via .1 and ::1.
fn container() -> Ns {
    let c = Ns::new("c");
    c.sh("ip link add eth0 type veth peer name p0 && \
         ip addr add 10.130.1.5/24 dev eth0 && ip addr add fd00:130::5/64 dev eth0 nodad && \
         ip link set eth0 up && ip link set p0 up && \
         ip route add default via 10.130.1.1 dev eth0 && \
         ip -6 route add default via fd00:130::1 dev eth0");
    for _ in 0..100 {
        if c.sh("ip -6 route show dev eth0").contains("fe80::/64") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    c
}

fn sbr_conf(extra: Value, c: &Ns) -> Value {
    let mut conf = json!({
        "cniVersion": "1.0.0", "name": "sbrnet", "type": "sbr",
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": c.path()}],
            "ips": [
                {"address": "10.130.1.5/24", "gateway": "10.130.1.1", "interface": 0},
                {"address": "fd00:130::5/64", "gateway": "fd00:130::1", "interface": 0}
            ],
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    });
    merge(&mut conf, extra);
    conf
}

/// Rules and routes of every table but `local`, sorted, as `ip -j` shows them.
fn routing(c: &Ns) -> Vec<String> {
    let mut all = Vec::new();
    for f in ["-4", "-6"] {
        for r in c.ip_json(&format!("{f} rule show")).as_array().unwrap() {
            all.push(format!("rule {r}"));
        }
        for r in c
            .ip_json(&format!("{f} route show table all"))
            .as_array()
            .unwrap()
        {
            if r["table"] != "local" {
                all.push(format!("route {r}"));
            }
        }
    }
    all.sort();
    all
}

fn has(state: &[String], parts: &[&str]) -> bool {
    state.iter().any(|l| parts.iter().all(|p| l.contains(p)))
}

/// One table per address (100, 101) with its default route and the interface's routes,
/// a `from` rule to each, nothing of eth0 left in the main table: as the reference.
#[test]
fn sbr_routes_each_address_through_its_own_table_as_the_reference() {
    let mut seen = Vec::new();
    for (side, dir) in sides() {
        let (host, c) = (Ns::new("h"), container());
        let conf = sbr_conf(json!({}), &c);
        let r = call(&dir, "sbr", "ADD", &host, &c).run(&conf).expect_ok();
        assert_eq!(
            r["ips"], conf["prevResult"]["ips"],
            "{side}: passes prevResult on"
        );
        let state = routing(&c);
        assert!(
            has(&state, &[r#""src":"10.130.1.5""#, r#""table":"100""#])
                && has(&state, &[r#""src":"fd00:130::5""#, r#""table":"101""#]),
            "{side}: {state:#?}"
        );
        assert!(
            has(
                &state,
                &[
                    "route",
                    r#""dst":"default""#,
                    r#""gateway":"10.130.1.1""#,
                    r#""table":"100""#
                ]
            ) && has(
                &state,
                &["route", r#""dst":"10.130.1.0/24""#, r#""table":"100""#]
            ) && has(
                &state,
                &["route", r#""gateway":"fd00:130::1""#, r#""table":"101""#]
            ),
            "{side}: {state:#?}"
        );
        assert!(
            !has(&state, &["route", r#""dev":"eth0""#, r#""table":"main""#]),
            "{side}: eth0's routes left the main table: {state:#?}"
        );
        // The sandbox differs, and Go prints an empty "dns" we leave out.
        let result = json!([r["ips"], r["routes"], r["interfaces"][0]["name"]]);
        seen.push((result, state));
    }
    assert_eq!(seen[0], seen[1], "ours, then the reference's");
}

/// A table a rule already uses is skipped, as by the reference.
#[test]
fn sbr_skips_a_table_in_use_as_the_reference() {
    let mut seen = Vec::new();
    for (side, dir) in sides() {
        let (host, c) = (Ns::new("h"), container());
        c.sh("ip rule add from 10.130.9.9 lookup 100");
        let conf = sbr_conf(json!({}), &c);
        call(&dir, "sbr", "ADD", &host, &c).run(&conf).expect_ok();
        let state = routing(&c);
        assert!(
            has(&state, &[r#""src":"10.130.1.5""#, r#""table":"101""#])
                && has(&state, &[r#""src":"fd00:130::5""#, r#""table":"102""#]),
            "{side}: {state:#?}"
        );
        seen.push(state);
    }
    assert_eq!(seen[0], seen[1], "ours, then the reference's");
}

/// DEL removes the `from` rules of the interface's addresses and leaves the tables to
/// go with the interface, as the reference.
#[test]
fn sbr_del_removes_the_rules_as_the_reference() {
    let mut seen = Vec::new();
    for (side, dir) in sides() {
        let (host, c) = (Ns::new("h"), container());
        let conf = sbr_conf(json!({}), &c);
        call(&dir, "sbr", "ADD", &host, &c).run(&conf).expect_ok();
        call(&dir, "sbr", "DEL", &host, &c).run(&conf).expect_ok();
        let state = routing(&c);
        assert!(
            !has(&state, &["rule", r#""src":"10.130.1.5""#])
                && !has(&state, &["rule", r#""src":"fd00:130::5""#]),
            "{side}: {state:#?}"
        );
        assert!(
            has(&state, &["route", r#""table":"100""#]),
            "{side}: {state:#?}"
        );
        seen.push(state);
    }
    assert_eq!(seen[0], seen[1], "ours, then the reference's");
}

/// Without prevResult, or with no address in it, ADD fails with the reference's words.
#[test]
fn sbr_needs_a_prev_result_with_addresses_as_the_reference() {
    for (side, dir) in sides() {
        let (host, c) = (Ns::new("h"), container());
        let mut conf = sbr_conf(json!({}), &c);
        conf.as_object_mut().unwrap().remove("prevResult");
        let out = call(&dir, "sbr", "ADD", &host, &c).run(&conf);
        assert!(
            !out.ok && out.json["msg"] == "This plugin must be called as chained plugin",
            "{side}: {}",
            out.stdout
        );
        let conf = sbr_conf(
            json!({"prevResult": {"cniVersion": "1.0.0", "ips": []}}),
            &c,
        );
        let out = call(&dir, "sbr", "ADD", &host, &c).run(&conf);
        assert!(
            !out.ok && out.json["msg"] == "No IP addresses supplied on interface: eth0",
            "{side}: {}",
            out.stdout
        );
        assert!(!has(&routing(&c), &["rule", "10.130.1.5"]), "{side}");
    }
}

/// `table` (newer releases): only the `from` rules, to that table, the routes untouched;
/// DEL removes only that table's rules.
#[test]
fn sbr_table_field_adds_only_the_rules() {
    let (host, c) = (Ns::new("h"), container());
    let before = routing(&c);
    c.sh("ip rule add from 10.130.1.5 lookup 400");
    let conf = sbr_conf(json!({"table": 300}), &c);
    let dir = bin_dir();
    call(&dir, "sbr", "ADD", &host, &c).run(&conf).expect_ok();
    let state = routing(&c);
    assert!(
        has(
            &state,
            &["rule", r#""src":"10.130.1.5""#, r#""table":"300""#]
        ) && has(
            &state,
            &["rule", r#""src":"fd00:130::5""#, r#""table":"300""#]
        ),
        "{state:#?}"
    );
    let routes = |s: &[String]| {
        s.iter()
            .filter(|l| l.starts_with("route"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(routes(&state), routes(&before), "routes untouched");
    call(&dir, "sbr", "DEL", &host, &c).run(&conf).expect_ok();
    let state = routing(&c);
    assert!(!has(&state, &["rule", r#""table":"300""#]), "{state:#?}");
    assert!(
        has(
            &state,
            &["rule", r#""src":"10.130.1.5""#, r#""table":"400""#]
        ),
        "another table's rule stays: {state:#?}"
    );
}

/// A table that holds routes but has no rule is not taken (the reference's stated
/// intent; its listing sees only the main table).
#[test]
fn sbr_skips_a_table_holding_routes() {
    let (host, c) = (Ns::new("h"), container());
    c.sh("ip route add 10.130.7.0/24 dev p0 table 100");
    let conf = sbr_conf(json!({}), &c);
    call(&bin_dir(), "sbr", "ADD", &host, &c)
        .run(&conf)
        .expect_ok();
    let state = routing(&c);
    assert!(
        has(
            &state,
            &["rule", r#""src":"10.130.1.5""#, r#""table":"101""#]
        ) && !has(&state, &["route", "10.130.1.0/24", r#""table":"100""#]),
        "{state:#?}"
    );
}

/// DEL succeeds when the interface or the namespace is gone (newer releases ignore a
/// missing link; 1.1.1 fails).
#[test]
fn sbr_del_without_the_interface_or_namespace_succeeds() {
    let (host, c) = (Ns::new("h"), container());
    let conf = sbr_conf(json!({}), &c);
    let dir = bin_dir();
    call(&dir, "sbr", "ADD", &host, &c).run(&conf).expect_ok();
    c.sh("ip link del eth0");
    call(&dir, "sbr", "DEL", &host, &c).run(&conf).expect_ok();
    let gone = Call::new(
        "sbr",
        "DEL",
        &host,
        "/var/run/netns/cni-rs-no-such-ns",
        "sbr1",
    );
    gone.run(&conf).expect_ok();
}

/// CHECK finds a missing rule (the reference's CHECK checks nothing).
#[test]
fn sbr_check_finds_a_missing_rule() {
    let (host, c) = (Ns::new("h"), container());
    let conf = sbr_conf(json!({}), &c);
    let dir = bin_dir();
    call(&dir, "sbr", "ADD", &host, &c).run(&conf).expect_ok();
    call(&dir, "sbr", "CHECK", &host, &c).run(&conf).expect_ok();
    c.sh("ip rule del from 10.130.1.5 lookup 100");
    let out = call(&dir, "sbr", "CHECK", &host, &c).run(&conf);
    assert!(
        out.code() == 104 && out.stdout.contains("10.130.1.5"),
        "{}",
        out.stdout
    );
}

fn tap_call<'a>(cmd: &'a str, host: &'a Ns, c: &Ns) -> Call<'a> {
    Call::new("tap", cmd, host, &c.path(), "tap1")
}

/// A layer-2 tap: multi-queue, owner and group, MAC and MTU as asked, up, in the result.
#[test]
fn tap_layer2_with_its_fields() {
    let (host, c) = (Ns::new("h"), Ns::new("c"));
    let conf = json!({"cniVersion": "1.0.0", "name": "tapnet", "type": "tap",
        "multiQueue": true, "owner": 54321, "group": 54322, "mtu": 1400, "mac": "02:13:10:00:00:05"});
    let r = tap_call("ADD", &host, &c).run(&conf).expect_ok();
    assert_eq!(r["interfaces"][0]["mac"], "02:13:10:00:00:05", "{r}");
    assert_eq!(r["interfaces"][0]["sandbox"], c.path(), "{r}");
    let l = c.link("eth0").expect("the tap is in the container");
    let info = &l["linkinfo"]["info_data"];
    assert_eq!(l["linkinfo"]["info_kind"], "tun", "{l}");
    assert_eq!(info["type"], "tap", "{l}");
    assert_eq!(info["multi_queue"], true, "{l}");
    assert_eq!(info["persist"], true, "{l}");
    // Numbers, as no user or group of the machine has these IDs.
    assert_eq!(
        (info["user"].clone(), info["group"].clone()),
        (json!(54321), json!(54322)),
        "{l}"
    );
    assert_eq!(l["mtu"], 1400, "{l}");
    assert_eq!(l["address"], "02:13:10:00:00:05", "{l}");
    assert!(l["flags"].as_array().unwrap().contains(&json!("UP")), "{l}");
    tap_call("DEL", &host, &c).run(&conf).expect_ok();
    assert!(c.link("eth0").is_none(), "DEL removes the tap");
    tap_call("DEL", &host, &c).run(&conf).expect_ok();
}

/// With IPAM and `bridge`: the tap joins the container's bridge and carries the address;
/// CHECK sees it and sees it go; DEL releases the address and removes the tap.
#[test]
fn tap_with_ipam_on_a_bridge_checks_and_deletes() {
    let (host, c) = (Ns::new("h"), Ns::new("c"));
    c.sh("ip link add tapbr0 type bridge && ip link set tapbr0 up");
    let data = tempfile::tempdir().unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": "tapnet", "type": "tap", "bridge": "tapbr0",
        "ipam": {"type": "host-local", "dataDir": data.path(),
                 "ranges": [[{"subnet": "10.131.0.0/24"}]], "routes": [{"dst": "10.131.8.0/24"}]}});
    let r = tap_call("ADD", &host, &c).run(&conf).expect_ok();
    assert_eq!(r["ips"][0]["address"], "10.131.0.2/24", "{r}");
    assert_eq!(c.addrs("eth0"), vec!["10.131.0.2/24".to_string()]);
    let l = c.link("eth0").unwrap();
    assert_eq!(l["master"], "tapbr0", "{l}");
    assert!(c
        .routes("-4")
        .contains(&"10.131.8.0/24 via 10.131.0.1".to_string()));
    let checked = with_prev(&conf, &r);
    tap_call("CHECK", &host, &c).run(&checked).expect_ok();
    c.sh("ip addr del 10.131.0.2/24 dev eth0");
    assert_eq!(tap_call("CHECK", &host, &c).run(&checked).code(), 104);
    tap_call("DEL", &host, &c).run(&conf).expect_ok();
    assert!(c.link("eth0").is_none());
    assert_eq!(store_allocations(data.path(), "tapnet"), 0);
}

/// A name already taken in the container (here by a tap someone else made) is not
/// attached to: ADD fails and leaves it, and no address stays allocated.
#[test]
fn tap_never_takes_over_an_existing_device() {
    let (host, c) = (Ns::new("h"), Ns::new("c"));
    c.sh("ip tuntap add mode tap name eth0");
    let before = c.link("eth0").unwrap()["address"].clone();
    let data = tempfile::tempdir().unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": "tapnet", "type": "tap",
        "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.131.1.0/24"}]]}});
    let out = tap_call("ADD", &host, &c).run(&conf);
    assert!(!out.ok && out.stdout.contains("eth0"), "{}", out.stdout);
    assert_eq!(c.link("eth0").unwrap()["address"], before);
    assert_eq!(store_allocations(data.path(), "tapnet"), 0);
}

fn dummy_conf(data: &std::path::Path) -> Value {
    json!({"cniVersion": "1.0.0", "name": "dumnet", "type": "dummy",
        "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "10.132.0.0/24"}]]}})
}

/// Whether this kernel makes dummy links (tried in a namespace of the test).
fn kernel_has_dummy() -> bool {
    let probe = Ns::new("d");
    probe.exec("ip link add dprobe type dummy").status.success()
}

/// On a kernel without the dummy driver ADD fails with one error that says so, releases
/// the address and leaves nothing; DEL succeeds. Where the kernel has it, the dummy
/// carries the address and DEL removes it.
#[test]
fn dummy_says_when_the_kernel_lacks_it_and_del_succeeds() {
    let (host, c) = (Ns::new("h"), Ns::new("c"));
    let data = tempfile::tempdir().unwrap();
    let conf = dummy_conf(data.path());
    let out = Call::new("dummy", "ADD", &host, &c.path(), "dum1").run(&conf);
    if kernel_has_dummy() {
        let r = out.expect_ok();
        assert_eq!(r["ips"][0]["address"], "10.132.0.2/24", "{r}");
        assert_eq!(c.link("eth0").unwrap()["linkinfo"]["info_kind"], "dummy");
    } else {
        assert_eq!(out.code(), 101, "{}", out.stdout);
        let msg = out.json["msg"].as_str().unwrap_or_default();
        assert!(msg.contains("lacks the dummy module"), "{}", out.stdout);
        assert!(c.link("eth0").is_none());
        assert_eq!(store_allocations(data.path(), "dumnet"), 0);
    }
    let del = Call::new("dummy", "DEL", &host, &c.path(), "dum1");
    del.run(&conf).expect_ok();
    del.run(&conf).expect_ok();
    assert!(c.link("eth0").is_none());
    assert_eq!(store_allocations(data.path(), "dumnet"), 0);
}

/// dummy requires IPAM, as the reference.
#[test]
fn dummy_requires_ipam() {
    let (host, c) = (Ns::new("h"), Ns::new("c"));
    let conf = json!({"cniVersion": "1.0.0", "name": "dumnet", "type": "dummy"});
    let out = Call::new("dummy", "ADD", &host, &c.path(), "dum1").run(&conf);
    assert!(
        out.code() == 7 && out.json["msg"] == "dummy interface requires an IPAM configuration",
        "{}",
        out.stdout
    );
}

/// A failed ADD (here a gateway the interface cannot reach, after the first rule and
/// table are made) leaves the rules and routes as they were; the reference leaves its
/// rule behind.
#[test]
fn sbr_failed_add_leaves_nothing() {
    let (host, c) = (Ns::new("h"), container());
    let before = routing(&c);
    let mut conf = sbr_conf(json!({}), &c);
    conf["prevResult"]["ips"][1]["gateway"] = json!("fd00:139::1");
    let out = call(&bin_dir(), "sbr", "ADD", &host, &c).run(&conf);
    assert!(
        !out.ok && out.stdout.contains("fd00:139::1"),
        "{}",
        out.stdout
    );
    assert_eq!(routing(&c), before);
}
