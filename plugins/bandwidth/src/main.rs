//! `bandwidth`: a chained plugin that limits the container's traffic with token buckets
//! on the host side of its veth. Traffic to the container is shaped by a tbf root qdisc
//! on the host veth; traffic from it is redirected to an ifb device (named like the
//! reference plugin's, from network and container ID) whose tbf shapes it. Rates are in
//! bits per second and bursts in bits, from the config or the `bandwidth` capability.
//! The ifb carries the attachment in its alias, so GC finds those of gone containers.

use libcni::attachment::{self, Attachment, Undo};
use libcni::net::{Kernel, LinkInfo, Netlink, Qdisc, Tbf};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::spec::Interface;
use libcni::{code, CniResult, Error};
use serde::Deserialize;
use sha2::{Digest, Sha512};

/// The queue a tbf holds beyond its burst, as time at the rate (the reference's 25 ms).
const LATENCY_MS: u64 = 25;

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Limits {
    #[serde(default)]
    ingress_rate: u64,
    #[serde(default)]
    ingress_burst: u64,
    #[serde(default)]
    egress_rate: u64,
    #[serde(default)]
    egress_burst: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conf {
    name: String,
    #[serde(default)]
    ingress_rate: Option<u64>,
    #[serde(default)]
    ingress_burst: Option<u64>,
    #[serde(default)]
    egress_rate: Option<u64>,
    #[serde(default)]
    egress_burst: Option<u64>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    #[serde(default)]
    unshaped_subnets: Vec<String>,
    #[serde(default)]
    shaped_subnets: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default)]
    bandwidth: Option<Limits>,
}

impl Conf {
    /// The limits to apply: the config's own when it names any, else the capability's
    /// (as the reference, which ignores the capability then). Named means the key is
    /// there, null included: Go makes the reference's entry for any key of it.
    fn load(args: &CmdArgs) -> Result<(Conf, Limits), Error> {
        let c: Conf = args.parse_conf()?;
        if !c.unshaped_subnets.is_empty() || !c.shaped_subnets.is_empty() {
            return Err(Error::new(
                code::UNSUPPORTED_FIELD,
                "unshapedSubnets/shapedSubnets are not supported",
            ));
        }
        let named = args.raw.as_object().is_some_and(|m| {
            m.keys().any(|k| {
                ["ingressRate", "ingressBurst", "egressRate", "egressBurst"]
                    .iter()
                    .any(|f| k.eq_ignore_ascii_case(f))
            })
        });
        let limits = match c.runtime_config.bandwidth {
            Some(cap) if !named => cap,
            _ => Limits {
                ingress_rate: c.ingress_rate.unwrap_or(0),
                ingress_burst: c.ingress_burst.unwrap_or(0),
                egress_rate: c.egress_rate.unwrap_or(0),
                egress_burst: c.egress_burst.unwrap_or(0),
            },
        };
        for (what, rate, burst) in [
            ("ingress", limits.ingress_rate, limits.ingress_burst),
            ("egress", limits.egress_rate, limits.egress_burst),
        ] {
            // The reference's texts, which its callers compare.
            if rate != 0 && burst == 0 {
                return Err(Error::config("if rate is set, burst must also be set"));
            }
            if rate == 0 && burst != 0 {
                return Err(Error::config("if burst is set, rate must also be set"));
            }
            if burst / 8 >= u64::from(u32::MAX) {
                return Err(Error::config("burst cannot be more than 4GB"));
            }
            // A token bucket of 0 bytes per second, or of 0 bytes, passes nothing.
            if rate > 0 && (rate / 8 == 0 || burst / 8 == 0) {
                return Err(Error::config(format!(
                    "{what}Rate and {what}Burst must be at least 8 bits (one byte)"
                )));
            }
        }
        Ok((c, limits))
    }
}

/// A token bucket for `rate` bits/s and `burst` bits, or None for no limit.
fn bucket(rate: u64, burst: u64) -> Option<Tbf> {
    (rate > 0).then(|| {
        let (rate, burst) = (rate / 8, (burst / 8) as u32);
        let queued = rate * LATENCY_MS / 1000;
        Tbf {
            rate,
            burst,
            limit: u32::try_from(queued + u64::from(burst)).unwrap_or(u32::MAX),
        }
    })
}

/// "bwp" and 12 hex digits of sha512(network + containerID), as the reference names it.
fn ifb_name(network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("bwp{hex}")
}

/// The host end of the container's veth: the link whose index the container interface
/// names as its peer, which must be a host interface of prevResult.
async fn host_veth(
    args: &CmdArgs,
    prev: &CniResult,
    host: &Netlink,
    inside: &Netlink,
) -> Result<LinkInfo, Error> {
    let peer = inside
        .link(&args.ifname)
        .await?
        .and_then(|l| l.peer)
        .ok_or_else(|| {
            Error::config(format!(
                "container interface {} has no veth peer",
                args.ifname
            ))
        })?;
    let link = host.link_by_index(peer).await?;
    match link {
        Some(l)
            if prev
                .interfaces
                .iter()
                .any(|i| i.sandbox.is_empty() && i.name == l.name) =>
        {
            Ok(l)
        }
        _ => Err(Error::config(format!(
            "the veth peer of {} is not a host interface of prevResult",
            args.ifname
        ))),
    }
}

struct Bandwidth;

impl Plugin for Bandwidth {
    /// prevResult must name the host veth: from 0.3.0 on, as the reference's.
    fn versions(&self) -> &'static [&'static str] {
        &libcni::spec::SUPPORTED_VERSIONS[2..]
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let (conf, limits) = Conf::load(args)?;
        let mut result = args.required_prev_result()?;
        if limits == Limits::default() {
            return Ok(result);
        }
        let a = Attachment::of(args);
        let ifb = ifb_name(&conf.name, a.container_id());
        let k = Kernel::new()?;
        let inside = k.connect_in(args.required_netns()?)?;
        let nl = k.host();
        let veth = k.run(host_veth(args, &result, nl, &inside))?;
        if let Some(tbf) = bucket(limits.ingress_rate, limits.ingress_burst) {
            k.run(nl.set_root_tbf(veth.index, &veth.name, tbf))?;
        }
        if let Some(tbf) = bucket(limits.egress_rate, limits.egress_burst) {
            // Created by this call, so undone by it when a later step fails; an ifb of that
            // name that exists already is another attachment's (the reference's name
            // leaves the interface out) and is never touched.
            let index = k.run(nl.create_ifb(&ifb, veth.mtu, &a.alias()))?;
            let mut undo = Undo::new();
            undo.push(format!("deleting {ifb}"), || {
                k.run(nl.delete_link(&ifb)).map(|_| ())
            });
            k.run(nl.redirect_ingress(veth.index, &veth.name, index))?;
            k.run(nl.set_root_tbf(index, &ifb, tbf))?;
            let mac = k
                .run(nl.link_by_index(index))?
                .map(|l| l.mac)
                .unwrap_or_default();
            undo.commit();
            result.interfaces.push(Interface {
                name: ifb.clone(),
                mac: libcni::mac::format_mac(&mac),
                ..Default::default()
            });
        }
        Ok(result)
    }

    /// Deletes the ifb; the veth's own qdisc goes with the veth. Only the network name is
    /// read, so DEL cleans up even after a config that ADD refused.
    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let ifb = ifb_name(&args.conf.name, &args.container_id);
        let k = Kernel::new()?;
        k.run(k.host().delete_link(&ifb)).map(|_| ())
    }

    /// Deletes this network's ifb devices whose attachment is not valid any more.
    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        let valid = args.valid_attachments()?;
        let k = Kernel::new()?;
        k.run(attachment::delete_stale(
            k.host(),
            "ifb",
            &args.conf.name,
            &valid,
        ))
        .map(|_| ())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let (conf, limits) = Conf::load(args)?;
        let prev = args.required_prev_result()?;
        if limits == Limits::default() {
            return Ok(());
        }
        let k = Kernel::new()?;
        let inside = k.connect_in(args.required_netns()?)?;
        k.run(async {
            let nl = k.host();
            let veth = host_veth(args, &prev, nl, &inside).await?;
            let mut missing = Vec::new();
            let has = |qdiscs: &[Qdisc], want: Tbf| {
                qdiscs.iter().any(|q| {
                    q.tbf
                        .is_some_and(|t| t.rate == want.rate && t.limit == want.limit)
                })
            };
            let veth_qdiscs = nl.qdiscs(veth.index).await?;
            if let Some(want) = bucket(limits.ingress_rate, limits.ingress_burst) {
                if !has(&veth_qdiscs, want) {
                    missing.push(format!("ingress tbf on {}", veth.name));
                }
            }
            if let Some(want) = bucket(limits.egress_rate, limits.egress_burst) {
                let ifb = ifb_name(&conf.name, &args.container_id);
                let shaped = match nl.link(&ifb).await? {
                    Some(l) => has(&nl.qdiscs(l.index).await?, want),
                    None => false,
                };
                if !shaped || !veth_qdiscs.iter().any(|q| q.kind == "ingress") {
                    missing.push(format!("egress redirect to {ifb} with its tbf"));
                }
            }
            Error::check("bandwidth limits missing", missing)
        })
    }
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    skel::run(&Bandwidth, "CNI bandwidth plugin (cni-rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_any_input_never_panics() {
        const FIELDS: &[&str] = &[
            "ingressRate",
            "ingressBurst",
            "egressRate",
            "egressBurst",
            "runtimeConfig",
            "bandwidth",
            "shapedSubnets",
            "unshapedSubnets",
        ];
        libcni::arbitrary::probe_reading(FIELDS, |a| {
            let (_, l) = Conf::load(a)?;
            bucket(l.ingress_rate, l.ingress_burst);
            bucket(l.egress_rate, l.egress_burst);
            Ok(())
        });
    }

    #[test]
    fn ifb_name_fits_a_link_name() {
        let n = ifb_name("net", "c1");
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("bwp"));
        assert_ne!(n, ifb_name("net", "c2"));
    }

    #[test]
    fn bucket_in_bytes_with_25ms_queue() {
        let t = bucket(8_000_000, 80_000).unwrap();
        assert_eq!((t.rate, t.burst, t.limit), (1_000_000, 10_000, 35_000));
        assert!(bucket(0, 0).is_none());
    }
}
