//! The table in testdata/bad/cases.json: each bad input gets a CNI error object with the
//! expected code and a non-zero exit, and leaves nothing in the kernel or the store.

use std::path::Path;

use cni_tests::*;

#[test]
fn bad_inputs_give_error_objects_and_leave_nothing() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/bad");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let host = Ns::new("h");
    let ctr = Ns::new("c");
    let data = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let conf = std::fs::read_to_string(dir.join(case["config"].as_str().unwrap()))
            .unwrap()
            .replace("@DATADIR@", data.path().to_str().unwrap());
        let plugin = case["plugin"].as_str().unwrap_or("bridge");
        let mut call = Call::new(plugin, "ADD", &host, &ctr.path(), "bad1");
        for (k, v) in case["env"].as_object().into_iter().flatten() {
            call = call.env(k, v.as_str().unwrap());
        }
        let out = call.run_raw(conf.as_bytes());
        let want = case["code"].as_u64().unwrap();
        if out.ok || out.json["code"].as_u64() != Some(want) {
            failures.push(format!(
                "{name}: want code {want}, got ok={} stdout={:?}",
                out.ok, out.stdout
            ));
        }
        if out.json["msg"].as_str().is_none_or(str::is_empty) {
            failures.push(format!(
                "{name}: error object without msg: {:?}",
                out.stdout
            ));
        }
        if out.stdout.contains("panicked") || out.stderr.contains("panicked") {
            failures.push(format!("{name}: panicked: {}", out.stderr));
        }
        let left = host.live_veths();
        if !left.is_empty() || !ctr.link_names().is_empty() {
            failures.push(format!(
                "{name}: left links {left:?} {:?}",
                ctr.link_names()
            ));
        }
        if store_allocations(data.path(), "badnet") != 0 {
            failures.push(format!("{name}: left an allocation in the store"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn version_command_answers_without_other_env() {
    let host = Ns::new("h");
    for plugin in ["bridge", "host-local", "loopback"] {
        let out = Call::new(plugin, "VERSION", &host, "", "")
            .env("CNI_CONTAINERID", "")
            .env("CNI_NETNS", "")
            .env("CNI_IFNAME", "")
            .env("CNI_PATH", "")
            .run(&json!({"cniVersion": "0.4.0"}))
            .expect_ok();
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(out["supportedVersions"], json!(VERSIONS));
    }
}
