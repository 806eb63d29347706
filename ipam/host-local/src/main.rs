//! `host-local` IPAM: hands out addresses from the configured ranges and remembers them per
//! (containerID, ifname) under `<dataDir>/<network>`: the reference plugin's reservation
//! files, indexed in sled (see store.rs).

mod alloc;
mod config;
mod range;
mod store;

use libcni::skel::{self, CmdArgs, Plugin};
use libcni::spec::Route;
use libcni::{code, CniResult, Error};

use config::Config;
use store::Store;

struct HostLocal;

impl Plugin for HostLocal {
    fn uses_netns(&self) -> bool {
        false
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let conf = Config::load(args)?;
        let dns = conf
            .resolv_conf
            .as_ref()
            .map(config::read_resolv_conf)
            .transpose()?
            .unwrap_or_default();
        let store = Store::open(&conf.dir)?;
        let ips = alloc::allocate(
            &store,
            &conf.sets,
            &args.container_id,
            &args.ifname,
            &conf.requested,
        )?;
        let routes = conf
            .routes
            .iter()
            .map(|r| Route::new(r.dst, r.gw))
            .collect();
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

fn main() {
    skel::run(&HostLocal, "CNI host-local IPAM plugin (cni-rs)")
}
