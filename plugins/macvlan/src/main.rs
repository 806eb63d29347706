//! `macvlan`: puts the container straight on a NIC (`master`, default the interface of the
//! default route) through a macvlan link born inside the container, addressed by the IPAM
//! delegate (or up without an address when there is none). `linkInContainer`: the master
//! is a link of the container's own namespace; `bcqueuelen` sizes its broadcast queue. The steps are libcni's attachment layer.

use libcni::attachment::container::{self, Removal};
use libcni::attachment::{claim, Attachment, PendingLease, Undo};
use libcni::delegate::Delegate;
use libcni::mac::parse_mac;
use libcni::net::{self, Kernel, LinkInfo, MacVlanMode, MacvlanSettings, Netlink};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::spec::{Dns, Interface};
use libcni::{code, CniResult, Error};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conf {
    #[serde(default)]
    master: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    link_in_container: bool,
    /// v1.6+: the broadcast queue length (0: the kernel's).
    #[serde(default, rename = "bcqueuelen")]
    bc_queue_len: u32,
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

/// The config with the mode and the MAC the runtime asked for resolved.
struct Macvlan {
    conf: Conf,
    mode: MacVlanMode,
    /// As the reference: config `mac`, then CNI_ARGS `MAC=`, then runtimeConfig.
    mac: Option<[u8; 6]>,
}

impl Macvlan {
    fn load(args: &CmdArgs) -> Result<Macvlan, Error> {
        let mut conf: Conf = args.parse_conf()?;
        let mode = match conf.mode.as_str() {
            "" | "bridge" => MacVlanMode::Bridge,
            "private" => MacVlanMode::Private,
            "vepa" => MacVlanMode::Vepa,
            "passthru" => MacVlanMode::Passthrough,
            other => return Err(Error::config(format!("unknown macvlan mode: {other:?}"))),
        };
        let mut mac = conf.mac.take();
        if let Some((_, m)) = args.cni_args(&["MAC"])?.pop() {
            mac = Some(m);
        }
        mac = conf.runtime_config.mac.take().or(mac);
        let mac = mac
            .map(|m| parse_mac(&m).ok_or_else(|| Error::config(format!("invalid mac {m:?}"))))
            .transpose()?;
        if !conf.master.is_empty() && !libcni::names::is_ifname(&conf.master) {
            return Err(Error::config(format!("invalid master {:?}", conf.master)));
        }
        Ok(Macvlan { conf, mode, mac })
    }

    /// The MAC the macvlan gets: the asked one, else the attachment's own (so DEL knows it
    /// as ours); a passthru macvlan keeps its master's.
    fn mac_of(&self, a: &Attachment) -> Option<[u8; 6]> {
        match self.mode {
            MacVlanMode::Passthrough => self.mac,
            _ => Some(self.mac.unwrap_or_else(|| a.container_mac())),
        }
    }

    /// The master and the connection of its namespace (the host's, or the container's
    /// with `linkInContainer`).
    fn master_in<'a>(
        &self,
        k: &'a Kernel,
        inside: &'a Netlink,
    ) -> Result<(LinkInfo, &'a Netlink), Error> {
        let parent = if self.conf.link_in_container {
            inside
        } else {
            k.host()
        };
        Ok((k.run(self.master(parent))?, parent))
    }

    /// The master: the named link, or the one of the default route, in the namespace the
    /// config says; its MTU bounds ours (7 otherwise).
    async fn master(&self, nl: &Netlink) -> Result<LinkInfo, Error> {
        let master = if self.conf.master.is_empty() {
            nl.default_route_link().await?.ok_or_else(|| {
                Error::config("no master given and no default route interface found")
            })?
        } else {
            nl.link(&self.conf.master).await?.ok_or_else(|| {
                Error::config(format!("master {:?} does not exist", self.conf.master))
            })?
        };
        if self.conf.mtu > master.mtu {
            return Err(Error::config(format!(
                "invalid MTU {}, must be [0, master MTU({})]",
                self.conf.mtu, master.mtu
            )));
        }
        Ok(master)
    }
}

struct MacvlanPlugin;

impl Plugin for MacvlanPlugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let m = Macvlan::load(args)?;
        let netns = args.required_netns()?;
        let a = Attachment::of(args);
        let k = Kernel::new()?;
        let inside = k.connect_in(netns)?;
        let (master, parent) = m.master_in(&k, &inside)?;
        let ipam = Delegate::ipam(args);
        let mut pending = PendingLease::start_if(ipam.as_ref(), args)?;
        let mut undo = Undo::new();
        let mtu = (m.conf.mtu != 0).then_some(m.conf.mtu);
        let settings = MacvlanSettings {
            mac: m.mac_of(&a),
            mtu,
            bc_queue_len: (m.conf.bc_queue_len != 0).then_some(m.conf.bc_queue_len),
        };
        let create = parent.create_macvlan(a.ifname(), &master, m.mode, &settings, netns);
        let mac = m.mac_of(&a);
        let live = async {
            Ok(inside
                .link(a.ifname())
                .await?
                .is_some_and(|l| is_ours(&l, mac)))
        };
        container::delete_retired(&k, &inside, &a, |l| is_ours(l, mac))?;
        claim(&k, &mut pending, create, live)?;
        undo.delete_link(&k, &inside, a.ifname());
        let (lease, mut r) = PendingLease::addressed(pending, 0)?;
        if r.ips.iter().any(|i| i.address.is_ipv6()) {
            // Neighbours learn the new link's IPv6 addresses at once (reference v1.4).
            let key = format!("net/ipv6/conf/{}/ndisc_notify", a.ifname());
            netns.run(|| net::sysctl_set(&key, "1"))??;
        }
        k.run(container::configure(&inside, netns, a.ifname(), &r))?;
        let link = k
            .run(inside.link(a.ifname()))?
            .ok_or_else(|| Error::new(code::NETLINK, format!("{} vanished", a.ifname())))?;
        r.interfaces = vec![Interface::container(a.ifname(), &link.mac, &args.netns)];
        r.dns = m.conf.dns.clone().unwrap_or_default();
        undo.commit();
        lease.map(|l| l.commit());
        Ok(r)
    }

    /// Releases the addresses and deletes the macvlan if it is still there and ours (a
    /// macvlan with our MAC); the namespace may be gone already.
    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let m = Macvlan::load(args)?;
        let a = Attachment::of(args);
        let delegate = Delegate::ipam(args);
        let first = delegate.as_ref().is_some_and(Delegate::needs_interface);
        let mut ipam = delegate.map(|i| i.start("DEL", args)).transpose()?;
        let released = first.then(|| ipam.take().map(|r| r.wait()).transpose());
        // One passthru macvlan per master: the next ADD's cannot wait for a child.
        let removal = match m.mode {
            MacVlanMode::Passthrough => Removal::Waited,
            _ => Removal::Detached,
        };
        let link = args.netns().map(|ns| {
            let k = Kernel::new()?;
            let inside = k.connect_in(ns)?;
            container::delete_own(&k, &inside, ns, &a, removal, |l| is_ours(l, m.mac_of(&a)))
        });
        let ipam = released.unwrap_or_else(|| ipam.map(|r| r.wait()).transpose());
        link.unwrap_or(Ok(())).and(ipam.map(|_| ()))
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let m = Macvlan::load(args)?;
        let prev = args.required_prev_result()?;
        let ipam = Delegate::ipam(args);
        if let Some(i) = &ipam {
            i.run("CHECK", args)?;
        }
        let netns = args.required_netns()?;
        let a = Attachment::of(args);
        let k = Kernel::new()?;
        let inside = k.connect_in(netns)?;
        let (master, _) = m.master_in(&k, &inside)?;
        let mut problems = Vec::new();
        if let Some(l) = k.run(inside.link(a.ifname()))? {
            if l.kind.as_deref() != Some("macvlan") || l.peer != Some(master.index) {
                problems.push(format!(
                    "{} is not a macvlan on {}",
                    a.ifname(),
                    master.name
                ));
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

/// A macvlan with the MAC we gave it (any macvlan, for passthru, which keeps its master's).
fn is_ours(l: &LinkInfo, mac: Option<[u8; 6]>) -> bool {
    l.kind.as_deref() == Some("macvlan") && mac.is_none_or(|m| l.mac == m)
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    libcni::delegate::link(&host_local::LINKED);
    skel::run(&MacvlanPlugin, "CNI macvlan plugin (cni-rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_any_input_never_panics() {
        const FIELDS: &[&str] = &[
            "master",
            "mode",
            "mtu",
            "mac",
            "linkInContainer",
            "bcqueuelen",
            "ipam",
            "dns",
            "runtimeConfig",
        ];
        libcni::arbitrary::probe_reading(FIELDS, |a| Macvlan::load(a).map(|_| ()));
    }
}
