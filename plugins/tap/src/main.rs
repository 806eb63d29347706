//! `tap`: a persistent tap device born in the container (for a VM or a userspace stack
//! there to open), with `mac` (also CNI_ARGS `MAC=`, runtimeConfig `mac`), `mtu`,
//! `multiQueue`, `owner`/`group` (who may open it), `bridge` (a bridge of the container's
//! namespace it joins), addressed by the IPAM delegate or up without an address.

use libcni::attachment::container::{self, Removal};
use libcni::attachment::{claim, Attachment, PendingLease, Undo};
use libcni::delegate::Delegate;
use libcni::mac::parse_mac;
use libcni::net::{self, Kernel, LinkInfo, LinkTuning, TapOptions};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::spec::{Dns, Interface};
use libcni::{code, CniResult, Error};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conf {
    #[serde(default)]
    multi_queue: bool,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    owner: Option<u32>,
    #[serde(default)]
    group: Option<u32>,
    #[serde(default)]
    selinux_context: Option<String>,
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    dns: Option<Dns>,
    #[serde(default)]
    runtime_config: MacArg,
}

#[derive(Debug, Default, Deserialize)]
struct MacArg {
    #[serde(default)]
    mac: Option<String>,
}

/// The config with the MAC the runtime asked for resolved.
struct Tap {
    conf: Conf,
    /// As the reference: config `mac`, then CNI_ARGS `MAC=`, then runtimeConfig.
    mac: Option<[u8; 6]>,
}

impl Tap {
    fn load(args: &CmdArgs) -> Result<Tap, Error> {
        let mut conf: Conf = args.parse_conf()?;
        let mut mac = conf.mac.take().filter(|m| !m.is_empty());
        if let Some((_, m)) = args
            .cni_args(&["MAC"])?
            .pop()
            .filter(|(_, m)| !m.is_empty())
        {
            mac = Some(m);
        }
        mac = conf
            .runtime_config
            .mac
            .take()
            .filter(|m| !m.is_empty())
            .or(mac);
        let mac = mac
            .map(|m| parse_mac(&m).ok_or_else(|| Error::config(format!("invalid mac {m:?}"))))
            .transpose()?;
        if let Some(b) = conf.bridge.as_deref().filter(|b| !b.is_empty()) {
            if !libcni::names::is_ifname(b) {
                return Err(Error::config(format!("invalid bridge {b:?}")));
            }
        }
        if conf
            .selinux_context
            .as_deref()
            .is_some_and(|c| !c.is_empty())
        {
            // The reference labels the tap by running `ip` under that exec label, which
            // needs SELinux; we never run `ip`, and this host has no SELinux to test it.
            return Err(Error::new(
                code::UNSUPPORTED_FIELD,
                "selinuxContext is not supported: the tap would be created unlabelled",
            ));
        }
        Ok(Tap { conf, mac })
    }

    /// The MAC the tap gets: the asked one, else the attachment's own (so DEL knows it).
    fn mac_of(&self, a: &Attachment) -> [u8; 6] {
        self.mac.unwrap_or_else(|| a.container_mac())
    }

    fn options(&self, mac: [u8; 6]) -> TapOptions {
        TapOptions {
            mac,
            multi_queue: self.conf.multi_queue,
            // The reference's flags when it makes the tap itself (owner and group given).
            vnet_hdr: self.conf.owner.is_some() && self.conf.group.is_some(),
            owner: self.conf.owner,
            group: self.conf.group,
        }
    }

    fn bridge(&self) -> Option<&str> {
        self.conf.bridge.as_deref().filter(|b| !b.is_empty())
    }
}

/// A tap with the MAC we gave it.
fn is_ours(l: &LinkInfo, mac: [u8; 6]) -> bool {
    l.kind.as_deref() == Some("tun") && l.mac == mac
}

struct TapPlugin;

impl Plugin for TapPlugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let t = Tap::load(args)?;
        let netns = args.required_netns()?;
        let a = Attachment::of(args);
        let mac = t.mac_of(&a);
        let k = Kernel::new()?;
        let inside = k.connect_in(netns)?;
        let ipam = Delegate::ipam(args);
        let mut pending = PendingLease::start_if(ipam.as_ref(), args)?;
        let mut undo = Undo::new();
        let options = t.options(mac);
        let create = async { netns.run(|| net::create_tap(a.ifname(), &options))? };
        let live = async {
            Ok(inside
                .link(a.ifname())
                .await?
                .is_some_and(|l| is_ours(&l, mac)))
        };
        container::delete_retired(&k, &inside, &a, |l| is_ours(l, mac))?;
        claim(&k, &mut pending, create, live)?;
        undo.delete_link(&k, &inside, a.ifname());
        let tap = k
            .run(inside.link(a.ifname()))?
            .ok_or_else(|| Error::new(code::NETLINK, format!("tap {} vanished", a.ifname())))?;
        let tuning = LinkTuning {
            mtu: (t.conf.mtu != 0).then_some(t.conf.mtu),
            ..LinkTuning::default()
        };
        k.run(inside.tune_link(tap.index, a.ifname(), &tuning))?;
        if let Some(b) = t.bridge() {
            let bridge = k.run(inside.link(b))?.ok_or_else(|| {
                Error::config(format!("failed to get bridge {b}: not in the container"))
            })?;
            k.run(inside.set_controller(tap.index, a.ifname(), &bridge))?;
        }
        let (lease, mut r) = PendingLease::addressed(pending, 0)?;
        // Addresses, routes and up; without IPAM only up.
        k.run(container::configure(&inside, netns, a.ifname(), &r))?;
        r.interfaces = vec![Interface::container(a.ifname(), &mac, &args.netns)];
        r.dns = t.conf.dns.clone().unwrap_or_default();
        undo.commit();
        lease.map(|l| l.commit());
        Ok(r)
    }

    /// Releases the addresses and deletes the tap if it is still there and ours; the
    /// namespace may be gone already.
    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let t = Tap::load(args)?;
        let a = Attachment::of(args);
        if let Some(i) = Delegate::ipam(args) {
            i.run("DEL", args)?;
        }
        let Some(ns) = args.netns() else {
            return Ok(());
        };
        let k = Kernel::new()?;
        let inside = k.connect_in(ns)?;
        container::delete_own(&k, &inside, ns, &a, Removal::Detached, |l| {
            is_ours(l, t.mac_of(&a))
        })
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let t = Tap::load(args)?;
        let netns = args.required_netns()?;
        if let Some(i) = Delegate::ipam(args) {
            i.run("CHECK", args)?;
        }
        let prev = args.required_prev_result()?;
        if !prev
            .interfaces
            .iter()
            .any(|i| i.name == args.ifname && i.sandbox == args.netns)
        {
            return Err(Error::new(
                code::CHECK_FAILED,
                format!(
                    "prevResult has no interface {} in netns {}",
                    args.ifname, args.netns
                ),
            ));
        }
        let k = Kernel::new()?;
        let inside = k.connect_in(netns)?;
        let mut problems = Vec::new();
        if let Some(l) = k.run(inside.link(&args.ifname))? {
            if l.kind.as_deref() != Some("tun") {
                problems.push(format!("{} is not a tap", args.ifname));
            }
            if let Some(b) = t.bridge() {
                let bridge = k.run(inside.link(b))?;
                if bridge.is_none_or(|b| l.controller != Some(b.index)) {
                    problems.push(format!("{} is not a port of {b}", args.ifname));
                }
            }
        }
        container::check(&k, &inside, args, &prev, problems)
    }

    fn status(&self, args: &CmdArgs) -> Result<(), Error> {
        Delegate::run_ipam("STATUS", args)
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        Delegate::run_ipam("GC", args)
    }
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    skel::run(&TapPlugin, "CNI tap plugin (cni-rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_any_input_never_panics() {
        const FIELDS: &[&str] = &[
            "multiQueue",
            "mtu",
            "mac",
            "owner",
            "group",
            "selinuxContext",
            "bridge",
            "ipam",
            "dns",
            "runtimeConfig",
        ];
        libcni::arbitrary::probe_reading(FIELDS, |a| Tap::load(a).map(|_| ()));
    }
}
