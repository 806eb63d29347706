//! `sbr`: source-based routing, chained after the plugin that made the interface. For
//! each address of prevResult on CNI_IFNAME: a `from <address>` rule to a table of its
//! own (the first from 100 that no rule and no route uses) holding a default route via
//! its gateway and the interface's main-table routes, which then leave the main table.
//! With `table` (newer reference releases) only the rules, to that table. DEL removes the
//! rules from the interface's addresses (of `table` only, when given); the tables' routes
//! go with the interface. Invocations on one namespace are serialised on its flock, as
//! the reference's are.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use libcni::attachment::Undo;
use libcni::files;
use libcni::net::{Kernel, Netlink, Netns};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::spec::IpConfig;
use libcni::{code, CniResult, Error};
use serde::Deserialize;

/// The main routing table (RT_TABLE_MAIN).
const MAIN_TABLE: u32 = 254;
/// The reference's first table.
const FIRST_TABLE: u32 = 100;
/// How long an invocation waits for another one on the same namespace.
const LOCK_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
struct Conf {
    #[serde(default)]
    table: Option<u32>,
}

impl Conf {
    fn load(args: &CmdArgs) -> Result<Conf, Error> {
        args.parse_conf()
    }
}

/// The addresses of prevResult on `ifname`: those whose interface index names it, is
/// out of range or is absent (the reference's reading).
fn addresses_on(prev: &CniResult, ifname: &str) -> Result<Vec<IpConfig>, Error> {
    if prev.ips.is_empty() {
        return Err(Error::config(format!(
            "No IP addresses supplied on interface: {ifname}"
        )));
    }
    Ok(prev
        .ips
        .iter()
        .filter(|ip| {
            ip.interface
                .and_then(|i| prev.interfaces.get(i))
                .is_none_or(|i| i.name == ifname)
        })
        .cloned()
        .collect())
}

/// Takes the exclusive flock of the namespace file, as the reference's sbr does to
/// serialise its calls on one namespace (so ours and its exclude each other); held while
/// `ns` is open.
fn locked(ns: &Netns) -> Result<(), Error> {
    let taken = files::flock_exclusive(&ns.fd(), LOCK_WAIT).map_err(|e| {
        Error::new(
            code::IO,
            format!("locking netns {}: {e}", ns.path().display()),
        )
    })?;
    if taken {
        Ok(())
    } else {
        Err(Error::new(
            code::TRY_AGAIN,
            format!(
                "another sbr call held {} for {LOCK_WAIT:?}",
                ns.path().display()
            ),
        ))
    }
}

fn no_table() -> Error {
    Error::new(code::NETLINK, "no free routing table left")
}

/// The first table from `from` on that is not in use.
fn free_table(used: &HashSet<u32>, from: u32) -> Result<u32, Error> {
    (from..=u32::MAX)
        .find(|t| !used.contains(t))
        .ok_or_else(no_table)
}

/// A table per address: its rule, its default route, the interface's routes that belong
/// to it; then those routes leave the main table (only at the end, so two addresses of
/// one subnet both get them). What it did is undone unless the call commits.
fn route_by_source<'a>(
    k: &'a Kernel,
    nl: &'a Netlink,
    undo: &mut Undo<'a>,
    ifname: &str,
    ips: &[IpConfig],
) -> Result<(), Error> {
    let used = k.run(nl.tables_in_use())?;
    let link = k.run(nl.link(ifname))?.ok_or_else(|| {
        Error::new(
            code::UNKNOWN_CONTAINER,
            format!("Cannot find network interface {ifname}"),
        )
    })?;
    let routes = k.run(nl.main_routes_of(link.index))?;
    let mut from = Some(FIRST_TABLE);
    for ip in ips {
        let table = free_table(&used, from.ok_or_else(no_table)?)?;
        from = table.checked_add(1);
        add_rule(k, nl, undo, ip.address.ip(), table)?;
        // The table was unused: what is in it through this link is ours.
        let index = link.index;
        undo.push(format!("emptying table {table}"), move || {
            k.run(nl.flush_table(table, index))
        });
        if let Some(gw) = ip.gateway {
            k.run(nl.add_table_default_route(gw, link.index, table))?;
        }
        let belongs = |a: Option<IpAddr>| a.is_some_and(|a| ip.address.contains(a));
        for r in &routes {
            // A route with neither source nor gateway is the interface's in general.
            if belongs(r.src) || belongs(r.gw) || (r.src.is_none() && r.gw.is_none()) {
                k.run(nl.copy_route(r, table))?;
            }
        }
    }
    for r in routes {
        k.run(nl.delete_listed_route(&r))?;
        undo.push(format!("putting route {} back", r.dst), move || {
            k.run(nl.copy_route(&r, MAIN_TABLE))
        });
    }
    Ok(())
}

/// Adds the rule `from <src> lookup <table>`, removed again unless the call commits.
fn add_rule<'a>(
    k: &'a Kernel,
    nl: &'a Netlink,
    undo: &mut Undo<'a>,
    src: IpAddr,
    table: u32,
) -> Result<(), Error> {
    k.run(nl.add_source_rule(src, table))?;
    undo.push(format!("removing rule from {src}"), move || {
        k.run(nl.delete_source_rule(src, table))
    });
    Ok(())
}

/// Removes the rules from the interface's addresses (to `table` only, when given); every
/// rule is tried, the last failure is returned.
async fn tidy_rules(nl: &Netlink, ifname: &str, table: Option<u32>) -> Result<(), Error> {
    let Some(link) = nl.link(ifname).await? else {
        return Ok(());
    };
    let addrs: Vec<IpAddr> = nl
        .addresses(link.index, ifname)
        .await?
        .iter()
        .map(|a| a.ip())
        .collect();
    let mut last = Ok(());
    for rule in nl.rules().await? {
        let from_ours = rule.src.is_some_and(|s| addrs.contains(&s.ip()));
        if from_ours && table.is_none_or(|t| t == rule.table) {
            if let Err(e) = nl.delete_rule(&rule).await {
                last = Err(e.into());
            }
        }
    }
    last
}

/// A /32 or /128: the only `from` prefix sbr makes.
fn is_host(n: ipnetwork::IpNetwork) -> bool {
    n.prefix() == if n.is_ipv4() { 32 } else { 128 }
}

struct Sbr;

impl Plugin for Sbr {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let conf = Conf::load(args)?;
        let prev = args
            .prev_result()?
            .ok_or_else(|| Error::config("This plugin must be called as chained plugin"))?;
        let ips = addresses_on(&prev, &args.ifname)?;
        let netns = args.required_netns()?;
        locked(netns)?;
        let k = Kernel::new()?;
        let inside = k.connect_in(netns)?;
        let mut undo = Undo::new();
        match conf.table {
            Some(table) => {
                for ip in &ips {
                    add_rule(&k, &inside, &mut undo, ip.address.ip(), table)?;
                }
            }
            None => route_by_source(&k, &inside, &mut undo, &args.ifname, &ips)?,
        }
        undo.commit();
        Ok(prev)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = Conf::load(args)?;
        let Some(netns) = args.netns() else {
            return Ok(());
        };
        locked(netns)?;
        let k = Kernel::new()?;
        let inside = k.connect_in(netns)?;
        k.run(tidy_rules(&inside, &args.ifname, conf.table))
    }

    /// Each address of prevResult on the interface has its `from` rule (to `table`, when
    /// given). The reference's CHECK checks nothing.
    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = Conf::load(args)?;
        let prev = args.required_prev_result()?;
        let ips = addresses_on(&prev, &args.ifname)?;
        let k = Kernel::new()?;
        let inside = k.connect_in(args.required_netns()?)?;
        let rules = k.run(inside.rules())?;
        let missing = ips
            .iter()
            .filter(|ip| {
                !rules.iter().any(|r| {
                    r.src
                        .is_some_and(|s| s.ip() == ip.address.ip() && is_host(s))
                        && conf.table.is_none_or(|t| t == r.table)
                })
            })
            .map(|ip| format!("no rule from {}", ip.address.ip()))
            .collect();
        Error::check(&format!("source-based routing of {}", args.ifname), missing)
    }
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    skel::run(&Sbr, "CNI sbr plugin (cni-rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_any_input_never_panics() {
        libcni::arbitrary::probe_reading(&["table"], |a| Conf::load(a).map(|_| ()));
    }

    #[test]
    fn tables_skip_what_is_used() {
        let used: HashSet<u32> = [100, 101, 103].into();
        assert_eq!(free_table(&used, 100).unwrap(), 102);
        assert_eq!(free_table(&used, 103).unwrap(), 104);
        assert!(free_table(&[u32::MAX].into(), u32::MAX).is_err());
    }
}
