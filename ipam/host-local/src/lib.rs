//! `host-local` IPAM: hands out addresses from the configured ranges and remembers them per
//! (containerID, ifname) under `<dataDir>/<network>`: the reference plugin's reservation
//! files, indexed in sled (see store.rs). A library as well as the binary (main.rs), so
//! that the plugins that delegate to it can run it in their own process when the
//! host-local on CNI_PATH is this same build ([`LINKED`]).

mod alloc;
mod config;
mod range;
mod store;

use libcni::skel::{CmdArgs, Plugin};
use libcni::trace;
use libcni::{code, CniResult, Error};

use config::Config;
use store::Store;

/// The plugin, as the binary serves it.
pub struct HostLocal;

/// What this build's sources hash to (build.rs): the binary carries it in its ELF section
/// `.cni_rs_build`, where a plugin linked with this library finds it.
pub const BUILD: [u8; 16] = include!(concat!(env!("OUT_DIR"), "/build_id.rs"));

/// host-local as a plugin links it in (`libcni::delegate::link`).
pub static LINKED: libcni::delegate::Linked = libcni::delegate::Linked {
    plugin: "host-local",
    build: BUILD,
    serve: &HostLocal,
};

impl Plugin for HostLocal {
    fn uses_netns(&self) -> bool {
        false
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let conf = Config::load(args)?;
        let dns = conf
            .resolv_conf
            .as_ref()
            .map(|p| libcni::ipam::read_resolv_conf(p))
            .transpose()?
            .unwrap_or_default();
        let store = Store::open(&conf.dir)?;
        trace::mark("store opened");
        let ips = alloc::allocate(
            &store,
            &conf.sets,
            &args.container_id,
            &args.ifname,
            &conf.requested,
        )?;
        trace::mark("addresses reserved");
        // Whole, with the CNI 1.1 fields (mtu, advmss, priority, table, scope), as the
        // reference passes them on since v1.6.
        let routes = conf.routes.clone();
        Ok(CniResult {
            ips,
            routes,
            dns,
            ..Default::default()
        })
    }

    /// Frees the attachment's addresses. Never fails because of the store, as the
    /// reference: a release that cannot be recorded (a read-only or full disk) is said on
    /// stderr, and the files, which are the truth, go first.
    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = Config::load(args)?;
        let released =
            Store::open(&conf.dir).and_then(|s| s.release(&args.container_id, &args.ifname));
        if let Err(e) = released {
            eprintln!(
                "host-local: DEL of {}/{} could not record its release: {e}",
                args.container_id, args.ifname
            );
        }
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = Config::load(args)?;
        let store = Store::open(&conf.dir)?;
        let held = store.ips_of(&args.container_id, &args.ifname)?;
        if held.is_empty() {
            return Err(Error::new(
                code::CHECK_FAILED,
                format!(
                    "host-local holds no address for {}/{}",
                    args.container_id, args.ifname
                ),
            ));
        }
        let prev = args.prev_result()?.unwrap_or_default();
        for ip in prev.ips.iter().map(|c| c.address.ip()) {
            if conf.sets.iter().any(|s| s.contains(ip)) && !held.contains(&ip) {
                return Err(Error::new(
                    code::CHECK_FAILED,
                    format!(
                        "{ip} from prevResult is not held by {}/{}",
                        args.container_id, args.ifname
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Frees the addresses of every attachment the runtime no longer lists.
    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = Config::load(args)?;
        let valid = args.valid_attachments()?;
        let store = Store::open(&conf.dir)?;
        for h in store.attachments()? {
            let listed = valid.iter().any(|(cid, ifname)| {
                *cid == h.container_id && (*ifname == h.ifname || h.ifname.is_empty())
            });
            if !listed {
                store.release(&h.container_id, &h.ifname)?;
            }
        }
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = Config::load(args)?;
        let store = Store::open(&conf.dir)?;
        for (i, set) in conf.sets.iter().enumerate() {
            alloc::next_free(&store, set, i).map_err(|e| match e.code {
                code::NO_ADDRESS => Error::new(code::NOT_AVAILABLE, e.msg),
                _ => e,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use libcni::arbitrary::{address, cni_args, hostile_string, json_value};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const IPAM_KEYS: &[&str] = &[
        "subnet",
        "rangeStart",
        "rangeEnd",
        "gateway",
        "ranges",
        "routes",
        "dst",
        "gw",
        "resolvConf",
        "ips",
    ];

    /// A range as written by hand: any subnet (IPv4 or IPv6, any prefix), sometimes with
    /// start, end and gateway anywhere.
    fn range() -> impl Strategy<Value = Value> {
        let v6 = (any::<u16>(), 0u8..=128).prop_map(|(x, p)| format!("{x:x}::/{p}"));
        let subnet = prop_oneof![address(), v6];
        (
            subnet,
            proptest::option::of(address()),
            proptest::option::of(address()),
            proptest::option::of(address()),
        )
            .prop_map(|(s, a, b, g)| {
                let mut r = json!({"subnet": s});
                let bare =
                    |x: String| Value::from(x.split('/').next().unwrap_or_default().to_string());
                if let Some(a) = a {
                    r["rangeStart"] = bare(a);
                }
                if let Some(b) = b {
                    r["rangeEnd"] = bare(b);
                }
                if let Some(g) = g {
                    r["gateway"] = bare(g);
                }
                r
            })
    }

    proptest! {
        #![proptest_config(libcni::arbitrary::bounded(256))]

        /// Any config, requested addresses and CNI_ARGS: never a panic, every rejection an
        /// error object; the store is a temporary directory.
        #[test]
        fn host_local_never_panics(
            sets in prop::collection::vec(prop::collection::vec(range(), 0..3), 0..4),
            extra in json_value(IPAM_KEYS),
            ips in prop::collection::vec(prop_oneof![address(), hostile_string()], 0..3),
            args in cni_args(),
            cmd in prop::sample::select(&["ADD", "DEL", "CHECK", "GC", "STATUS"][..]),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut ipam = json!({"type": "host-local", "ranges": sets});
            if let Value::Object(m) = extra {
                for (k, v) in m {
                    ipam[k] = v;
                }
            }
            ipam["dataDir"] = json!(dir.path());
            let conf = json!({"cniVersion": "1.1.0", "name": "prop", "type": "host-local",
                "ipam": ipam, "runtimeConfig": {"ips": ips}});
            libcni::arbitrary::check_dispatch(&HostLocal, cmd, &conf, &args)?;
        }
    }
}
