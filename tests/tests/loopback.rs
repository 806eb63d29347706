//! loopback: lo up on ADD, down on DEL, DEL fine when the namespace is gone.

use cni_tests::*;

#[test]
fn loopback_up_down_and_gone() {
    for v in MODERN_VERSIONS {
        let host = Ns::new("h");
        let c = Ns::new("c");
        c.sh("ip link set lo down");
        let conf = json!({"cniVersion": v, "name": "lo", "type": "loopback"});
        let r = Call::new("loopback", "ADD", &host, &c.path(), "l1")
            .run(&conf)
            .expect_ok();
        assert_eq!(r["interfaces"][0]["name"], "lo");
        assert_eq!(r["ips"][0]["address"], "127.0.0.1/8");
        assert!(c.link("lo").unwrap()["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("UP")));
        assert!(c.ping("127.0.0.1"));
        if *v >= "0.4.0" {
            Call::new("loopback", "CHECK", &host, &c.path(), "l1")
                .run(&with_prev(&conf, &r))
                .expect_ok();
        }
        Call::new("loopback", "DEL", &host, &c.path(), "l1")
            .run(&conf)
            .expect_ok();
        assert!(!c.link("lo").unwrap()["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("UP")));
        if *v >= "0.4.0" {
            assert_eq!(
                Call::new("loopback", "CHECK", &host, &c.path(), "l1")
                    .run(&with_prev(&conf, &r))
                    .code(),
                104
            );
        }
        let path = c.path();
        drop(c);
        Call::new("loopback", "DEL", &host, &path, "l1")
            .run(&conf)
            .expect_ok();
    }
}
