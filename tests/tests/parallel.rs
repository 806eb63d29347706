//! 100 containers added by 20 concurrent runtimes, while others run CHECK and GC (listing
//! all 100 as valid) alongside, then deleted the same way: every address unique, nothing
//! removed by the GCs, the store empty afterwards, no veth left.

use std::collections::HashSet;
use std::sync::Mutex;

use cni_tests::*;

const CONTAINERS: usize = 100;
const WORKERS: usize = 20;

#[test]
fn parallel_add_then_parallel_del() {
    let host = Ns::new("h");
    let data = tempfile::tempdir().unwrap();
    let conf = bridge_conf(
        "1.1.0",
        data.path(),
        "10.60.0.0/16",
        json!({"ipMasq": true, "macspoofchk": true}),
    );
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!((0..CONTAINERS)
        .map(|i| json!({"containerID": format!("par{i}"), "ifname": "eth0"}))
        .collect::<Vec<_>>());
    let ctrs: Vec<Ns> = (0..CONTAINERS).map(|_| Ns::new("p")).collect();
    let addrs = Mutex::new(Vec::new());
    let run_all = |cmd: &'static str| {
        std::thread::scope(|s| {
            if cmd == "ADD" {
                // GC and CHECK from other runtimes meanwhile
                let (host, gc, ctrs) = (&host, &gc, &ctrs);
                s.spawn(move || {
                    for i in 0..30 {
                        Call::new("bridge", "GC", host, "", "").run(gc).expect_ok();
                        let c = i * 3 % CONTAINERS;
                        let _ =
                            Call::new("bridge", "CHECK", host, &ctrs[c].path(), &format!("par{c}"))
                                .run(gc);
                    }
                });
            }
            for w in 0..WORKERS {
                let (ctrs, conf, host, addrs) = (&ctrs, &conf, &host, &addrs);
                s.spawn(move || {
                    for i in (w..CONTAINERS).step_by(WORKERS) {
                        let out =
                            Call::new("bridge", cmd, host, &ctrs[i].path(), &format!("par{i}"))
                                .run(conf)
                                .expect_ok();
                        if cmd == "ADD" {
                            addrs
                                .lock()
                                .unwrap()
                                .push(out["ips"][0]["address"].as_str().unwrap().to_string());
                        }
                    }
                });
            }
        });
    };
    run_all("ADD");
    let addrs = std::mem::take(&mut *addrs.lock().unwrap());
    let unique: HashSet<_> = addrs.iter().collect();
    assert_eq!(addrs.len(), CONTAINERS);
    assert_eq!(unique.len(), CONTAINERS, "an address was handed out twice");
    assert_eq!(store_allocations(data.path(), "testnet"), CONTAINERS);
    // the concurrent GCs, which listed every attachment, removed nothing
    let masq = host.sh("nft list set inet cni_rs masq4");
    assert_eq!(masq.matches("\"testnet/par").count(), CONTAINERS, "{masq}");
    let macs = host.sh("nft list set bridge cni_rs_br pairs");
    assert_eq!(macs.matches("\"testnet/par").count(), CONTAINERS, "{macs}");
    // every container really holds the address it was given
    let held: HashSet<String> = ctrs.iter().flat_map(|c| c.addrs("eth0")).collect();
    assert_eq!(held.len(), CONTAINERS);
    assert!(ctrs[0].ping(
        &addrs
            .iter()
            .find(|a| !ctrs[0].addrs("eth0").contains(a))
            .unwrap()
            .replace("/16", "")
    ));

    run_all("DEL");
    assert_eq!(store_allocations(data.path(), "testnet"), 0);
    let left = host.live_veths();
    assert!(left.is_empty(), "{left:?}");
    let retired = host.veths_settled(0);
    assert!(retired.is_empty(), "retired pairs left: {retired:?}");
}
