//! `firewall`: a chained plugin that accepts the container's traffic on the host's forward
//! path after an administrator's override chain (see rules.rs), and with `ingressPolicy` isolates the
//! container's bridge from other isolated bridges (`same-bridge`) or from everything,
//! its own ports included (`isolated`). nftables only: the reference's `iptables` backend
//! name maps onto it, `firewalld` is refused.

use std::net::IpAddr;

use libcni::attachment::Attachment;
use libcni::firewall::Word;
use libcni::net::Kernel;
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::{code, CniResult, Error};
use serde::Deserialize;

mod rules;

const DEFAULT_ADMIN_CHAIN: &str = "CNI-ADMIN";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conf {
    #[serde(default)]
    backend: String,
    #[serde(default)]
    iptables_admin_chain_name: Option<String>,
    #[serde(default)]
    ingress_policy: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum IngressPolicy {
    Open,
    SameBridge,
    Isolated,
}

impl Conf {
    /// The config's ingress policy and admin chain name.
    fn load(args: &CmdArgs) -> Result<(IngressPolicy, Word), Error> {
        let c: Conf = args.parse_conf()?;
        match c.backend.as_str() {
            "" | "iptables" | "nftables" => {}
            "firewalld" => {
                return Err(Error::new(
                    code::UNSUPPORTED_FIELD,
                    "backend \"firewalld\" is not supported; this plugin uses nftables",
                ))
            }
            other => return Err(Error::config(format!("unknown backend {other:?}"))),
        }
        let name = c
            .iptables_admin_chain_name
            .as_deref()
            .unwrap_or(DEFAULT_ADMIN_CHAIN);
        let admin = Word::new(name)
            .filter(|_| name.len() <= 54 && name.starts_with(|ch: char| ch.is_ascii_alphabetic()))
            .filter(|_| name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'))
            .ok_or_else(|| {
                Error::config(format!(
                    "iptablesAdminChainName {name:?}: a letter, then up to 53 letters, digits, '-' or '_'"
                ))
            })?;
        let policy = match c.ingress_policy.as_str() {
            "" | "open" => IngressPolicy::Open,
            "same-bridge" => IngressPolicy::SameBridge,
            "isolated" => IngressPolicy::Isolated,
            other => return Err(Error::config(format!("unknown ingress policy {other:?}"))),
        };
        Ok((policy, admin))
    }
}

fn addresses(r: &CniResult) -> Vec<IpAddr> {
    r.ips.iter().map(|ip| ip.address.ip()).collect()
}

/// The bridge an isolation policy applies to: the first interface of prevResult, which
/// the bridge plugin reports first. That name is a claim: it must name a bridge the
/// kernel has, and be writable in a rule.
fn bridge_name(r: &CniResult, policy: IngressPolicy) -> Result<Option<Word>, Error> {
    if policy == IngressPolicy::Open {
        return Ok(None);
    }
    let claimed = match r.interfaces.first() {
        Some(i) if !i.name.is_empty() && i.sandbox.is_empty() => Word::ifname(&i.name)?,
        _ => {
            return Err(Error::config(
                "an ingress policy needs the bridge as the first interface of prevResult; \
                 chain firewall after bridge",
            ))
        }
    };
    let k = Kernel::new()?;
    match k.run(k.host().link(claimed.as_str()))? {
        Some(l) if l.kind.as_deref() == Some("bridge") => Ok(Some(claimed)),
        _ => Err(Error::config(format!(
            "prevResult's first interface {claimed} is not a bridge of this host"
        ))),
    }
}

struct Firewall;

impl Plugin for Firewall {
    /// prevResult must carry addresses: from 0.3.0 on (the reference's from 0.4.0).
    fn versions(&self) -> &'static [&'static str] {
        &libcni::spec::SUPPORTED_VERSIONS[2..]
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let (policy, admin) = Conf::load(args)?;
        let prev = args.required_prev_result()?;
        let addrs = addresses(&prev);
        let a = Attachment::of(args);
        rules::allow_forward(&a.label(), a.container_id(), &addrs, &admin)?;
        if let Some(bridge) = bridge_name(&prev, policy)? {
            rules::isolate_bridge(&bridge, policy == IngressPolicy::Isolated)?;
        }
        Ok(prev)
    }

    /// Removes the container's addresses from the accepted sets. A bridge's isolation
    /// stays: other containers may still be attached to it (as with the reference
    /// plugin). Only the network name is read, so a config that ADD refused still lets
    /// the runtime clean up.
    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        rules::remove_forward(&Attachment::of(args).label())
    }

    /// Removes the accepted addresses of this network's containers that are not valid.
    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        let valid = args.valid_container_ids()?;
        rules::remove_stale_forward(&args.conf.name, &valid)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let (policy, admin) = Conf::load(args)?;
        let prev = args.required_prev_result()?;
        let label = Attachment::of(args).label();
        let mut missing = rules::missing_forward(&label, &addresses(&prev), &admin)?;
        if !libcni::firewall::iptables::accepts_marked()? {
            missing.push("the iptables FORWARD rule accepting our marked packets".into());
        }
        if let Some(bridge) = bridge_name(&prev, policy)? {
            if !rules::is_isolated(&bridge)? {
                missing.push(format!("isolation of {bridge}"));
            }
        }
        Error::check("firewall rules missing", missing)
    }
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    skel::run(&Firewall, "CNI firewall plugin (cni-rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_any_input_never_panics() {
        const FIELDS: &[&str] = &["backend", "iptablesAdminChainName", "ingressPolicy"];
        libcni::arbitrary::probe_reading(FIELDS, |a| {
            Conf::load(a)?;
            addresses(&a.prev_result()?.unwrap_or_default());
            Ok(())
        });
    }
}
