//! The same configs through Debian's reference plugins and through ours: the results have
//! the same shape and meaning, and the kernel ends up the same.

use cni_tests::*;

/// Versions the reference plugins (1.1.x) speak.
const SHARED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

struct Side {
    host: Ns,
    ctr: Ns,
    data: tempfile::TempDir,
    reference: bool,
}

impl Side {
    fn new(reference: bool) -> Side {
        Side {
            host: Ns::new("h"),
            ctr: Ns::new("c"),
            data: tempfile::tempdir().unwrap(),
            reference,
        }
    }

    fn call(&self, cmd: &'static str, conf: &serde_json::Value) -> Outcome {
        let c = Call::new("bridge", cmd, &self.host, &self.ctr.path(), "cmp1");
        if self.reference { c.reference() } else { c }.run(conf)
    }
}

/// The parts of a result that must agree; MACs and the host veth name are random.
fn meaning(r: &serde_json::Value, side: &Side) -> serde_json::Value {
    let ifaces = r["interfaces"].as_array().unwrap();
    json!({
        "cniVersion": r["cniVersion"],
        "interfaces": ifaces.iter().map(|i| json!({
            "name_is_veth": i["name"].as_str().unwrap().starts_with("veth"),
            "has_mac": i["mac"].as_str().is_some_and(|m| m.len() == 17),
            "sandbox_is_ctr": i["sandbox"] == side.ctr.path(),
        })).collect::<Vec<_>>(),
        "bridge": ifaces[0]["name"],
        "ctr_if": ifaces[2]["name"],
        "ips": r["ips"],
        "routes": r["routes"],
        "dns": if r["dns"].is_null() { json!({}) } else { r["dns"].clone() },
    })
}

#[test]
fn results_and_kernel_state_match_the_reference() {
    for v in SHARED_VERSIONS {
        for extra in [
            json!({}),
            json!({"ipMasq": true, "hairpinMode": true, "mtu": 1450}),
        ] {
            let (ours, theirs) = (Side::new(false), Side::new(true));
            let conf_of = |s: &Side| {
                let mut c = bridge_conf(v, s.data.path(), "10.70.0.0/24", extra.clone());
                c["ipam"]["routes"] = json!([{"dst": "10.200.0.0/16"}]);
                c
            };
            let a = ours.call("ADD", &conf_of(&ours)).expect_ok();
            let b = theirs.call("ADD", &conf_of(&theirs)).expect_ok();
            assert_eq!(
                meaning(&a, &ours),
                meaning(&b, &theirs),
                "{v} {extra}:\nours {a}\nreference {b}"
            );

            assert_eq!(ours.ctr.addrs("eth0"), theirs.ctr.addrs("eth0"));
            let mut ra = ours.ctr.routes("-4");
            let mut rb = theirs.ctr.routes("-4");
            ra.sort();
            rb.sort();
            assert_eq!(ra, rb, "{v}: container routes");
            assert_eq!(ours.host.addrs("cnitest0"), theirs.host.addrs("cnitest0"));
            assert_eq!(
                ours.ctr.link("eth0").unwrap()["mtu"],
                theirs.ctr.link("eth0").unwrap()["mtu"]
            );
            assert!(ours.ctr.ping("10.70.0.1") && theirs.ctr.ping("10.70.0.1"));

            // Only ours: the reference's CHECK rejects its own result when an IPAM route has
            // no gw (it installs the route via the gateway, then looks for one without).
            if *v >= "0.4.0" {
                ours.call("CHECK", &with_prev(&conf_of(&ours), &a))
                    .expect_ok();
            }
            ours.call("DEL", &conf_of(&ours)).expect_ok();
            theirs.call("DEL", &conf_of(&theirs)).expect_ok();
            assert_eq!(
                ours.host.link_names(),
                theirs.host.link_names(),
                "{v}: host links after DEL"
            );
        }
    }
}
