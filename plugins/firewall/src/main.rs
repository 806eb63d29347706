//! `firewall`: a chained plugin that accepts the container's traffic on the host's forward
//! path after an administrator's override chain (see rules.rs), and with `ingressPolicy` isolates the
//! container's bridge from other isolated bridges (`same-bridge`) or from everything,
//! its own ports included (`isolated`). nftables only: the reference's `iptables` backend
//! name maps onto it, `firewalld` is refused.

use std::net::IpAddr;

use libcni::skel::{self, CmdArgs, Plugin};
use libcni::{code, CniResult, Error};
use serde::Deserialize;

mod rules;

const DEFAULT_ADMIN_CHAIN: &str = "CNI-ADMIN";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conf {
    name: String,
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
    fn load(args: &CmdArgs) -> Result<(Conf, IngressPolicy), Error> {
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
        if let Some(name) = &c.iptables_admin_chain_name {
            let valid = name.len() <= 54
                && name.starts_with(|ch: char| ch.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
            if !valid {
                return Err(Error::config(format!(
                    "iptablesAdminChainName {name:?}: a letter, then up to 53 letters, digits, '-' or '_'"
                )));
            }
        }
        let policy = match c.ingress_policy.as_str() {
            "" | "open" => IngressPolicy::Open,
            "same-bridge" => IngressPolicy::SameBridge,
            "isolated" => IngressPolicy::Isolated,
            other => return Err(Error::config(format!("unknown ingress policy {other:?}"))),
        };
        Ok((c, policy))
    }

    fn admin_chain(&self) -> &str {
        self.iptables_admin_chain_name
            .as_deref()
            .unwrap_or(DEFAULT_ADMIN_CHAIN)
    }
}

fn addresses(r: &CniResult) -> Vec<IpAddr> {
    r.ips.iter().map(|ip| ip.address.ip()).collect()
}

/// The bridge an isolation policy applies to: the first interface of prevResult, which
/// the bridge plugin reports first.
fn bridge_name(r: &CniResult, policy: IngressPolicy) -> Result<Option<&str>, Error> {
    if policy == IngressPolicy::Open {
        return Ok(None);
    }
    match r.interfaces.first() {
        Some(i) if !i.name.is_empty() && i.sandbox.is_empty() => Ok(Some(&i.name)),
        _ => Err(Error::config(
            "an ingress policy needs the bridge as the first interface of prevResult; \
             chain firewall after bridge",
        )),
    }
}

struct Firewall;

impl Plugin for Firewall {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let (conf, policy) = Conf::load(args)?;
        let prev = args.required_prev_result()?;
        let addrs = addresses(&prev);
        rules::allow_forward(&conf.name, &args.container_id, &addrs, conf.admin_chain())?;
        if let Some(bridge) = bridge_name(&prev, policy)? {
            rules::isolate_bridge(bridge, policy == IngressPolicy::Isolated)?;
        }
        Ok(prev)
    }

    /// Removes the container's addresses from the accepted sets. A bridge's isolation
    /// stays: other containers may still be attached to it (as with the reference
    /// plugin). Only the network name is read, so a config that ADD refused still lets
    /// the runtime clean up.
    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        rules::remove_forward(&args.conf.name, &args.container_id)
    }

    /// Removes the accepted addresses of this network's containers that are not valid.
    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        let valid = args.valid_container_ids()?;
        rules::remove_stale_forward(&args.conf.name, &valid)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let (conf, policy) = Conf::load(args)?;
        let prev = args.required_prev_result()?;
        let mut missing = rules::missing_forward(
            &conf.name,
            &args.container_id,
            &addresses(&prev),
            conf.admin_chain(),
        )?;
        if let Some(bridge) = bridge_name(&prev, policy)? {
            if !rules::is_isolated(bridge)? {
                missing.push(format!("isolation of {bridge}"));
            }
        }
        Error::check("firewall rules missing", missing)
    }
}

fn main() {
    skel::run(&Firewall, "CNI firewall plugin (cni-rs)")
}
