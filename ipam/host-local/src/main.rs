//! `host-local` IPAM: hands out addresses from the configured ranges and remembers them per
//! (containerID, ifname) in a sled store under `<dataDir>/<network>`.

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
        store.flush()?;
        let routes = conf
            .routes
            .iter()
            .map(|r| Route::new(r.dst, r.gw))
            .collect();
        Ok(CniResult {
            cni_version: String::new(),
            interfaces: Vec::new(),
            ips,
            routes,
            dns,
        })
    }

    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = Config::load(args)?;
        let store = Store::open(&conf.dir)?;
        store.release(&args.container_id, &args.ifname)?;
        store.flush()
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

    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = Config::load(args)?;
        let valid = args.valid_attachments()?;
        let store = Store::open(&conf.dir)?;
        for (cid, ifname) in store.attachments()?.difference(&valid) {
            store.release(cid, ifname)?;
        }
        store.flush()
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
