//! `flannel`: a drop-in for flannel's CNI plugin (github.com/flannel-io/cni-plugin), the
//! meta-plugin kube-flannel's conflist names. ADD reads the subnet file flanneld (or our
//! vxlan-overlay-agent) writes, builds the delegate's config as flannel does (bridge with
//! host-local on the node's subnets by default), saves it as flannel's scratch file and
//! runs the delegate with the same CNI_* environment; its result is printed in the
//! config's version. DEL runs the delegate's DEL with the saved config and removes it;
//! nothing saved is nothing to do. CHECK, STATUS and GC do nothing, as flannel's.
//! `conf` reads the config, `subnet_env` the subnet file, `delegate_conf` builds the
//! delegate's config, `gojson` writes it as Go does, `scratch` keeps it.

mod cidr;
mod conf;
mod delegate_conf;
mod gojson;
mod scratch;
mod subnet_env;

use libcni::delegate::{self, Delegate};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::{CniResult, Error};
use serde::Deserialize;
use serde_json::Value;

use conf::NetConf;
use subnet_env::SubnetEnv;

struct Flannel;

impl Plugin for Flannel {
    /// The delegate checks the namespace; a meta-plugin never enters it.
    fn uses_netns(&self) -> bool {
        false
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let conf = NetConf::load(args)?;
        let env = SubnetEnv::read(&conf.subnet_file)?;
        let d = delegate_conf::build(&conf, &env)?;
        // Saved before the ADD, as flannel does: the runtime's DEL after a failed ADD
        // finds it and undoes whatever the delegate did.
        scratch::save(&conf.data_dir, &args.container_id, &d.config)?;
        // The delegate's error object is flannel's too (its skel unwraps it).
        let out = Delegate::with_bytes(&d.plugin, d.config).run("ADD", args)?;
        delegate::result(out, &d.plugin, args)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = NetConf::load(args)?;
        let Some(saved) = scratch::read(&conf.data_dir, &args.container_id)? else {
            // Deleted already, or never added.
            return Ok(());
        };
        let Some(plugin) = saved_type(&saved) else {
            // As flannel: the interface stays until the node reboots; the file stays too.
            eprintln!(
                "flannel: failed to parse netconf {}",
                conf.data_dir.join(&args.container_id).display()
            );
            return Ok(());
        };
        Delegate::with_bytes(&plugin, saved).run("DEL", args)?;
        // Kept when the delegate's DEL failed, so the runtime's retry still finds it.
        scratch::remove(&conf.data_dir, &args.container_id)
    }

    /// flannel's CHECK is a no-op (its cmdCheck returns nil): nothing is delegated.
    fn check(&self, _args: &CmdArgs) -> Result<(), Error> {
        Ok(())
    }
}

/// The delegate type of a saved config, read as flannel reads it into cni's
/// types.NetConf: None when that fails.
fn saved_type(saved: &[u8]) -> Option<String> {
    // Fields read only for their types: a wrong one fails Go's Unmarshal.
    #[derive(Deserialize)]
    struct Saved {
        #[serde(default, rename = "cniVersion")]
        _cni_version: String,
        #[serde(default, rename = "name")]
        _name: String,
        #[serde(default, rename = "type")]
        plugin: String,
        #[serde(default, rename = "capabilities")]
        _capabilities: std::collections::HashMap<String, bool>,
        #[serde(default, rename = "ipam")]
        _ipam: Option<Ipam>,
    }
    #[derive(Deserialize)]
    struct Ipam {
        #[serde(default, rename = "type")]
        _plugin: String,
    }
    let v: Value = serde_json::from_slice(saved).ok()?;
    let s: Saved = libcni::decode::from_value(&v).ok()?;
    Some(s.plugin)
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    skel::run(
        &Flannel,
        "CNI flannel plugin (cni-rs): flannel's meta-plugin, delegating to bridge",
    )
}
