//! `bridge`: connects a container to a Linux bridge in the host namespace through a veth
//! pair, addresses it through the IPAM delegate, and optionally makes the bridge the
//! gateway, masquerades, turns on hairpin or checks source MACs.

mod config;

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use libcni::net::{self, attachment_alias, block_on, format_mac, host_veth_name, Netlink, Netns};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::spec::{Interface, IpConfig, Route};
use libcni::{code, delegate, firewall, CniResult, Error};

use config::BridgeConf;

struct Bridge;

/// What ADD created so far, for undoing it when a later step fails.
struct Created<'a> {
    args: &'a CmdArgs,
    conf: &'a BridgeConf,
    host_veth: String,
    ipam_done: bool,
}

impl Created<'_> {
    fn undo(&self) {
        if self.ipam_done {
            if let Some(p) = self.conf.ipam_plugin() {
                if let Err(e) = delegate::exec(p, "DEL", self.args) {
                    eprintln!("bridge: releasing addresses after a failed ADD: {e}");
                }
            }
        }
        let veth = self.host_veth.clone();
        let res = block_on(async move { Netlink::connect()?.delete_link(&veth).await });
        if let Ok(Err(e)) = res {
            eprintln!(
                "bridge: removing {} after a failed ADD: {e}",
                self.host_veth
            );
        }
        let attachment = (self.args.container_id.as_str(), self.args.ifname.as_str());
        let removed = start_rule_removal(self.conf, &[attachment], None).and_then(wait_all);
        if let Err(e) = removed {
            eprintln!("bridge: removing rules after a failed ADD: {e}");
        }
    }
}

impl Plugin for Bridge {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let conf = BridgeConf::load(args)?;
        let netns = Netns::open_container(&args.netns)?;
        let mut created = Created {
            args,
            conf: &conf,
            host_veth: host_veth_name(&conf.name, &args.container_id, &args.ifname),
            ipam_done: false,
        };
        // host-local runs while we build the links.
        let ipam = conf
            .ipam_plugin()
            .map(|p| delegate::spawn(p, "ADD", args))
            .transpose()?;
        let links = block_on(create_links(&conf, &netns, args, &created.host_veth))
            .and_then(|r| r.map_err(Error::from));
        let ipam_result = ipam.map(delegate::result).transpose();
        created.ipam_done = matches!(ipam_result, Ok(Some(_)));
        let outcome = links.and_then(|links| {
            let ipam_result = ipam_result?.unwrap_or_default();
            finish_add(&conf, args, &netns, links, ipam_result)
        });
        outcome.inspect_err(|_| created.undo())
    }

    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = BridgeConf::load(args)?;
        let ipam = conf
            .ipam_plugin()
            .map(|p| delegate::spawn(p, "DEL", args))
            .transpose()?;
        // Every step runs even when one fails, so the IPAM delegate is always waited for.
        let addrs: Option<Vec<IpNetwork>> = args
            .prev_result()
            .ok()
            .flatten()
            .map(|r| r.ips.iter().map(|i| i.address).collect());
        let rules = start_rule_removal(
            &conf,
            &[(&args.container_id, &args.ifname)],
            addrs.as_deref(),
        );
        let veth = host_veth_name(&conf.name, &args.container_id, &args.ifname);
        let links = block_on(async {
            let host = Netlink::connect()?;
            if host.delete_link(&veth).await? {
                return Ok(());
            }
            // Not ours by name: remove the container side if its namespace still exists.
            match Netns::open(&args.netns) {
                Ok(ns) => Netlink::connect_in(&ns)?
                    .delete_link(&args.ifname)
                    .await
                    .map(|_| ()),
                Err(_) => Ok(()),
            }
        })
        .and_then(|r: Result<(), net::Error>| r.map_err(Error::from));
        let ipam = ipam.map(|r| r.wait()).transpose();
        let rules = rules.and_then(wait_all);
        links.and(rules).and(ipam.map(|_| ()))
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = BridgeConf::load(args)?;
        let prev = args.required_prev_result()?;
        if let Some(p) = conf.ipam_plugin() {
            delegate::exec(p, "CHECK", args)?;
        }
        let netns = Netns::open_container(&args.netns)?;
        let veth = host_veth_name(&conf.name, &args.container_id, &args.ifname);
        let problems =
            block_on(check_kernel(&conf, args, &netns, &veth, &prev))?.map_err(Error::from)?;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                code::CHECK_FAILED,
                format!("{} differs from prevResult", args.ifname),
            )
            .details(problems.join("; ")))
        }
    }

    fn status(&self, args: &CmdArgs) -> Result<(), Error> {
        delegate_plain(args, "STATUS")
    }

    /// Removes the host veths and rules of attachments of this network that the runtime no
    /// longer lists (left by a runtime that lost track of them), then GC in IPAM.
    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = BridgeConf::load(args)?;
        let valid = args.valid_attachments()?;
        let stale = block_on(async {
            Netlink::connect()?
                .delete_stale_attachments("veth", &conf.name, &valid)
                .await
        })?
        .map_err(Error::from)?;
        let stale: Vec<(&str, &str)> = stale
            .iter()
            .map(|(cid, ifname)| (cid.as_str(), ifname.as_str()))
            .collect();
        wait_all(start_rule_removal(&conf, &stale, None)?)?;
        delegate_plain(args, "GC")
    }
}

/// Starts installing the container's masquerade and MAC spoof entries, where the config
/// has them, as one transaction (with the shared chains made first if they are missing).
fn start_rules(
    conf: &BridgeConf,
    args: &CmdArgs,
    links: &Links,
    ips: &[IpConfig],
) -> Result<Option<firewall::Pending>, Error> {
    let mut script = String::new();
    let mut setup = String::new();
    if conf.ip_masq {
        let addrs: Vec<IpNetwork> = ips.iter().map(|i| i.address).collect();
        script += &firewall::masquerade(&conf.name, &args.container_id, &addrs);
        setup += &firewall::masquerade_setup();
    }
    if conf.macspoofchk {
        script += &firewall::mac_spoof_check(
            &conf.name,
            &args.container_id,
            &links.host.name,
            &links.container_mac,
        );
        setup += &firewall::mac_spoof_setup();
    }
    if script.is_empty() {
        return Ok(None);
    }
    let what = format!("installing the rules of {}", args.container_id);
    firewall::apply_with_setup(&script, setup, what).map(Some)
}

/// Starts removing the masquerade and MAC spoof entries of these attachments
/// ((containerID, ifname)), where the config has them. `addrs` are their addresses when
/// known (prevResult); otherwise the masquerade entries are found by their labels.
fn start_rule_removal(
    conf: &BridgeConf,
    attachments: &[(&str, &str)],
    addrs: Option<&[IpNetwork]>,
) -> Result<Vec<firewall::Pending>, Error> {
    let ids: Vec<&str> = attachments.iter().map(|(cid, _)| *cid).collect();
    let mut script = String::new();
    if conf.ip_masq {
        script += &match addrs {
            Some(addrs) => firewall::remove_masquerade(addrs),
            None => firewall::remove_labelled_masquerade(&conf.name, &ids)?,
        };
    }
    let mut mac = String::new();
    if conf.macspoofchk {
        for (cid, ifname) in attachments {
            let veth = host_veth_name(&conf.name, cid, ifname);
            let addr = format_mac(&net::container_mac(&conf.name, cid, ifname));
            mac += &firewall::remove_mac_spoof_check(&veth, &addr);
        }
    }
    // Separate transactions: either table may be missing, which fails only its own.
    let what = format!("removing the rules of {}", ids.join(", "));
    let mut pending = Vec::new();
    for s in [script, mac] {
        if !s.is_empty() {
            pending.push(firewall::apply_if_present(&s, what.clone())?);
        }
    }
    Ok(pending)
}

/// Waits for every transaction (none is left running); the first failure is the result.
fn wait_all(pending: Vec<firewall::Pending>) -> Result<(), Error> {
    let mut outcome = Ok(());
    for p in pending {
        let r = p.wait();
        if outcome.is_ok() {
            outcome = r;
        }
    }
    outcome
}

fn delegate_plain(args: &CmdArgs, command: &str) -> Result<(), Error> {
    match BridgeConf::load(args)?.ipam_plugin() {
        Some(p) => delegate::exec(p, command, args).map(|_| ()),
        None => Ok(()),
    }
}

struct Links {
    bridge: net::LinkInfo,
    host: net::LinkInfo,
    /// Derived from the attachment and set at creation, so the MAC spoof check can go in
    /// before the container's interface is configured and DEL can find it.
    container_mac: String,
}

/// Host side: the bridge, the veth pair with its peer born in the container namespace, and
/// the host end attached and up.
async fn create_links(
    conf: &BridgeConf,
    netns: &Netns,
    args: &CmdArgs,
    veth: &str,
) -> Result<Links, net::Error> {
    let nl = Netlink::connect()?;
    let bridge = nl.ensure_bridge(&conf.bridge, conf.mtu()).await?;
    if conf.promisc_mode && !bridge.promisc {
        nl.set_promisc(bridge.index, &bridge.name).await?;
    }
    let container_mac = net::container_mac(&conf.name, &args.container_id, &args.ifname);
    nl.create_veth(veth, &args.ifname, &container_mac, netns, conf.mtu())
        .await?;
    let host = nl.link(veth).await?.ok_or_else(|| gone(veth))?;
    let alias = attachment_alias(&conf.name, &args.container_id, &args.ifname);
    nl.attach_port(host.index, veth, bridge.index, &alias)
        .await?;
    if conf.hairpin_mode {
        nl.set_hairpin(host.index, veth).await?;
    }
    Ok(Links {
        bridge,
        host,
        container_mac: format_mac(&container_mac),
    })
}

fn gone(name: &str) -> net::Error {
    net::Error::io(
        format!("link {name} vanished"),
        std::io::ErrorKind::NotFound.into(),
    )
}

fn finish_add(
    conf: &BridgeConf,
    args: &CmdArgs,
    netns: &Netns,
    links: Links,
    mut r: CniResult,
) -> Result<CniResult, Error> {
    if conf.is_default_gateway {
        for ip in &r.ips {
            let gw = ip.gateway.ok_or_else(|| {
                Error::config(format!(
                    "isDefaultGateway needs a gateway for {}",
                    ip.address
                ))
            })?;
            let any = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            let dst: IpNetwork = any.parse().expect("valid literal");
            if !r.routes.iter().any(|rt| rt.dst == dst) {
                r.routes.push(Route::new(dst, Some(gw)));
            }
        }
    }
    for ip in &mut r.ips {
        ip.interface = Some(2);
    }
    let rules = start_rules(conf, args, &links, &r.ips)?;
    let kernel = block_on(async {
        configure_container(netns, &args.ifname, &r.ips, &r.routes).await?;
        if conf.is_gateway {
            set_gateways(conf, &links.bridge, &r.ips).await?;
        }
        Ok::<_, net::Error>(())
    })
    .and_then(|res| res.map_err(Error::from));
    // Waited for even when the kernel work failed, so the undo that follows does not race it.
    let rules = rules.map_or(Ok(()), firewall::Pending::wait);
    kernel?;
    rules?;
    if conf.is_gateway {
        enable_forwarding(&r.ips)?;
    }
    if conf.dns.as_ref().is_some_and(|d| !d.is_empty()) {
        r.dns = conf.dns.clone().unwrap_or_default();
    }
    r.interfaces = vec![
        Interface {
            name: links.bridge.name.clone(),
            mac: format_mac(&links.bridge.mac),
            ..Default::default()
        },
        Interface {
            name: links.host.name.clone(),
            mac: format_mac(&links.host.mac),
            ..Default::default()
        },
        Interface {
            name: args.ifname.clone(),
            mac: links.container_mac.clone(),
            sandbox: args.netns.clone(),
            ..Default::default()
        },
    ];
    Ok(r)
}

/// Inside the container: addresses, link up, routes.
async fn configure_container(
    netns: &Netns,
    ifname: &str,
    ips: &[IpConfig],
    routes: &[Route],
) -> Result<(), net::Error> {
    let nl = Netlink::connect_in(netns)?;
    let link = nl.link(ifname).await?.ok_or_else(|| gone(ifname))?;
    for ip in ips {
        nl.add_address(link.index, ifname, ip.address).await?;
    }
    nl.set_up(link.index, ifname).await?;
    for rt in routes {
        let gw = rt.gw.or_else(|| {
            ips.iter()
                .find(|i| i.address.is_ipv4() == rt.dst.is_ipv4())
                .and_then(|i| i.gateway)
        });
        nl.add_route(link.index, ifname, rt.dst, gw).await?;
    }
    Ok(())
}

/// Puts each gateway on the bridge; an IPv4 address of another subnet there is replaced
/// with `forceAddress` and refused without it.
async fn set_gateways(
    conf: &BridgeConf,
    bridge: &net::LinkInfo,
    ips: &[IpConfig],
) -> Result<(), net::Error> {
    let nl = Netlink::connect()?;
    let existing = nl.addresses(bridge.index, &bridge.name).await?;
    for ip in ips {
        let Some(gw) = ip.gateway else { continue };
        let gw_net = IpNetwork::new(gw, ip.address.prefix()).map_err(|e| {
            net::Error::io(
                format!("gateway {gw} does not fit address {}", ip.address),
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
            )
        })?;
        if gw.is_ipv4() {
            for old in existing.iter().filter(|a| a.is_ipv4() && **a != gw_net) {
                if !conf.force_address {
                    return Err(net::Error::io(
                        format!("bridge {} already has address {old}, not {gw_net} (set forceAddress to replace it)", bridge.name),
                        std::io::ErrorKind::AlreadyExists.into(),
                    ));
                }
                nl.delete_address(bridge.index, &bridge.name, *old).await?;
            }
        }
        nl.add_address(bridge.index, &bridge.name, gw_net).await?;
    }
    Ok(())
}

fn enable_forwarding(ips: &[IpConfig]) -> Result<(), Error> {
    if ips.iter().any(|i| i.address.is_ipv4()) {
        net::sysctl_set("net/ipv4/ip_forward", "1")?;
    }
    if ips.iter().any(|i| i.address.is_ipv6()) {
        net::sysctl_set("net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// Compares the kernel with prevResult; returns what differs.
async fn check_kernel(
    conf: &BridgeConf,
    args: &CmdArgs,
    netns: &Netns,
    veth: &str,
    prev: &CniResult,
) -> Result<Vec<String>, net::Error> {
    let mut problems = Vec::new();
    let host = Netlink::connect()?;
    let bridge = host.link(&conf.bridge).await?;
    match (&bridge, host.link(veth).await?) {
        (None, _) => problems.push(format!("bridge {} is missing", conf.bridge)),
        (_, None) => problems.push(format!("host veth {veth} is missing")),
        (Some(b), Some(h)) if h.controller != Some(b.index) => {
            problems.push(format!("{veth} is not attached to {}", b.name))
        }
        _ => {}
    }
    let nl = Netlink::connect_in(netns)?;
    let Some(link) = nl.link(&args.ifname).await? else {
        problems.push(format!("{} is missing in {}", args.ifname, args.netns));
        return Ok(problems);
    };
    let want = prev
        .interfaces
        .iter()
        .position(|i| i.name == args.ifname && i.sandbox == args.netns);
    if let Some(i) = want.map(|i| &prev.interfaces[i]) {
        if !i.mac.is_empty() && i.mac != format_mac(&link.mac) {
            problems.push(format!(
                "{} has MAC {}, prevResult says {}",
                args.ifname,
                format_mac(&link.mac),
                i.mac
            ));
        }
    }
    if !link.up {
        problems.push(format!("{} is down", args.ifname));
    }
    let addrs = nl.addresses(link.index, &args.ifname).await?;
    for ip in prev
        .ips
        .iter()
        .filter(|ip| want.is_none() || ip.interface == want)
    {
        if !addrs.contains(&ip.address) {
            problems.push(format!("address {} is missing", ip.address));
        }
    }
    for v6 in [false, true] {
        let routes = nl.routes(v6).await?;
        for rt in prev.routes.iter().filter(|r| r.dst.is_ipv6() == v6) {
            let gw_ok = |g: Option<IpAddr>| rt.gw.is_none() || g == rt.gw;
            if !routes.iter().any(|k| k.dst == rt.dst && gw_ok(k.gw)) {
                problems.push(format!("route {} is missing", rt.dst));
            }
        }
    }
    Ok(problems)
}

fn main() {
    skel::run(&Bridge, "CNI bridge plugin (cni-rs)")
}
