//! bandwidth chained after bridge, through cnitool: token buckets on the host veth and on
//! an ifb for the other direction, with the rates asked for; real TCP transfers in both
//! directions run near the limit (an unshaped veth here moves gigabits); DEL removes the
//! ifb; bad limits are refused.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use cni_tests::*;
use serde_json::Value;

const LIMIT_BITS: u64 = 16_000_000;
const PAYLOAD: usize = 3_000_000;

fn conflist() -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "bwnet",
        "plugins": [
            {"type": "bridge", "bridge": "cnibw0", "isGateway": true,
             "ipam": {"type": "host-local", "dataDir": "@DATA@", "ranges": [[{"subnet": "10.70.0.0/24"}]]}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]
    })
}

/// Bits per second a TCP transfer of PAYLOAD bytes from `from` to `to_addr` (in `to`)
/// reached, timed by the receiver from first byte to end of stream.
fn transfer_rate(from: &Ns, to: &Ns, to_addr: &str) -> f64 {
    let server = format!(
        "import socket, time\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{to_addr}', 5001)); s.listen(1); s.settimeout(20); c, _ = s.accept(); c.settimeout(20)\n\
         n = len(c.recv(65536)); t = time.monotonic()\n\
         while True:\n    b = c.recv(65536)\n    if not b: break\n    n += len(b)\n\
         print(n, time.monotonic() - t)\n"
    );
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &to.name, "python3", "-c", &server])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let client = format!(
        "import socket, time\nfor _ in range(50):\n    try:\n        \
         s = socket.create_connection(('{to_addr}', 5001), timeout=1); break\n    \
         except OSError:\n        time.sleep(0.1)\n\
         s.settimeout(20); s.sendall(b'x' * {PAYLOAD}); s.close()\n"
    );
    let sent = from.exec(&format!("timeout 30 python3 -c \"{client}\""));
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let mut out = String::new();
    srv.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let _ = srv.wait();
    let mut f = out.split_whitespace();
    let bytes: f64 = f.next().and_then(|n| n.parse().ok()).expect(&out);
    let secs: f64 = f.next().and_then(|s| s.parse().ok()).expect(&out);
    assert_eq!(bytes as usize, PAYLOAD);
    bytes * 8.0 / secs.max(1e-6)
}

fn tc_qdiscs(ns: &Ns, dev: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(&ns.sh(&format!("tc -j qdisc show dev {dev}"))).unwrap();
    v.as_array().cloned().unwrap_or_default()
}

#[test]
fn limits_shape_real_transfers_in_both_directions() {
    let t = Cnitool::new(conflist());
    let c = Ns::new("c");
    let caps = json!({"bandwidth": {
        "ingressRate": LIMIT_BITS, "ingressBurst": 160_000,
        "egressRate": LIMIT_BITS, "egressBurst": 160_000}})
    .to_string();
    let (ok, out, err) = t.run(&["add", "bwnet", &c.path()], &[("CAP_ARGS", &caps)]);
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let ifaces = r["interfaces"].as_array().unwrap();
    let ifb = ifaces.last().unwrap()["name"].as_str().unwrap().to_string();
    assert!(ifb.starts_with("bwp") && ifb.len() == 15, "{r}");
    let veth = ifaces
        .iter()
        .find(|i| i["name"].as_str().unwrap().starts_with("veth"))
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();

    let on_veth = tc_qdiscs(&t.host, &veth);
    let tbf = on_veth
        .iter()
        .find(|q| q["kind"] == "tbf")
        .expect("tbf on the veth");
    assert_eq!(tbf["options"]["rate"], json!(LIMIT_BITS / 8), "{tbf}");
    assert_eq!(tbf["options"]["burst"], json!(20_000), "{tbf}");
    assert_eq!(
        tbf["options"]["lat"],
        json!(25_000),
        "queue of 25 ms: {tbf}"
    );
    assert!(
        on_veth.iter().any(|q| q["kind"] == "ingress"),
        "{on_veth:?}"
    );
    let filters = t.host.sh(&format!("tc filter show dev {veth} ingress"));
    assert!(
        filters.contains(&format!("Egress Redirect to device {ifb}")),
        "{filters}"
    );
    let on_ifb = tc_qdiscs(&t.host, &ifb);
    assert!(
        on_ifb
            .iter()
            .any(|q| q["kind"] == "tbf" && q["options"]["rate"] == json!(LIMIT_BITS / 8)),
        "{on_ifb:?}"
    );
    let (ok, _, err) = t.run(&["check", "bwnet", &c.path()], &[("CAP_ARGS", &caps)]);
    assert!(ok, "{err}");

    let limit = LIMIT_BITS as f64;
    let to_container = transfer_rate(&t.host, &c, "10.70.0.2");
    let from_container = transfer_rate(&c, &t.host, "10.70.0.1");
    eprintln!(
        "limit {:.1} Mbit/s: to the container {:.1}, from it {:.1}",
        limit / 1e6,
        to_container / 1e6,
        from_container / 1e6
    );
    for rate in [to_container, from_container] {
        assert!(rate < limit * 1.3, "{rate} bit/s is over the limit");
        assert!(
            rate > limit * 0.3,
            "{rate} bit/s: shaped far below the limit"
        );
    }

    t.host.sh(&format!("tc qdisc del dev {veth} root"));
    let (ok, out, _) = t.run(&["check", "bwnet", &c.path()], &[("CAP_ARGS", &caps)]);
    assert!(!ok && out.is_empty(), "CHECK passed without the tbf");

    for _ in 0..2 {
        let (ok, _, err) = t.run(&["del", "bwnet", &c.path()], &[("CAP_ARGS", &caps)]);
        assert!(ok, "{err}");
    }
    assert!(t.host.link(&ifb).is_none(), "ifb left behind");
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn no_limits_pass_the_result_through_and_bad_limits_are_refused() {
    let t = Cnitool::new(conflist());
    let c = Ns::new("c");
    let (ok, out, err) = t.run(&["add", "bwnet", &c.path()], &[]);
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert!(r["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| !i["name"].as_str().unwrap().starts_with("bwp")));
    assert!(!t.host.link_names().iter().any(|l| l.starts_with("bwp")));
    let (ok, _, err) = t.run(&["del", "bwnet", &c.path()], &[]);
    assert!(ok, "{err}");

    for (bw, code) in [
        (json!({"ingressRate": 1_000_000}), 7),
        (json!({"egressBurst": 1_000_000}), 7),
        (
            json!({"egressRate": 1_000_000, "egressBurst": 40_000_000_000u64}),
            7,
        ),
    ] {
        let caps = json!({ "bandwidth": bw }).to_string();
        let (ok, out, err) = t.run(&["add", "bwnet", &c.path()], &[("CAP_ARGS", &caps)]);
        assert!(!ok && out.is_empty(), "{bw}");
        assert!(err.contains(&format!("code {code}")), "{bw}: {err}");
        let (ok, _, err) = t.run(&["del", "bwnet", &c.path()], &[("CAP_ARGS", &caps)]);
        assert!(ok, "{bw}: {err}");
    }
    assert!(t.host.live_veths().is_empty());
    assert!(!t.host.link_names().iter().any(|l| l.starts_with("bwp")));
}
