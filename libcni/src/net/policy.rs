//! Policy routing, for sbr: source rules (`from <ip> lookup <table>`), the tables they
//! point to, and a link's main-table routes copied into such a table.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_route::route::{RouteAttribute, RouteFlags, RouteHeader, RouteMessage};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};

use super::libc_errno::{ENOENT, ESRCH};
use super::link::route_ip;
use super::{Error, Netlink, RouteSpec};

const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;
/// rtm_protocol "boot": what the reference's netlink library marks its routes with.
const RTPROT_BOOT: u8 = 3;

/// A policy rule as the kernel lists it.
#[derive(Debug, Clone)]
pub struct Rule {
    pub table: u32,
    /// The `from` prefix, when the rule has one.
    pub src: Option<IpNetwork>,
    msg: RuleMessage,
}

/// A route of one table as the kernel lists it, kept whole so it can be copied.
#[derive(Debug, Clone)]
pub struct TableRoute {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    /// The preferred source address (RTA_PREFSRC).
    pub src: Option<IpAddr>,
    msg: RouteMessage,
}

fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn rule_of(msg: RuleMessage) -> Rule {
    let mut table = u32::from(msg.header.table);
    let mut src = None;
    for a in &msg.attributes {
        match a {
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Source(ip) => src = IpNetwork::new(*ip, msg.header.src_len).ok(),
            _ => {}
        }
    }
    Rule { table, src, msg }
}

fn table_route(msg: RouteMessage) -> Option<TableRoute> {
    let v6 = msg.header.address_family == AddressFamily::Inet6;
    let (mut dst, mut gw, mut src) = (None, None, None);
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_ip(d),
            RouteAttribute::Gateway(g) => gw = route_ip(g),
            RouteAttribute::PrefSource(s) => src = route_ip(s),
            _ => {}
        }
    }
    let any: IpAddr = if v6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let dst = IpNetwork::new(dst.unwrap_or(any), msg.header.destination_prefix_length).ok()?;
    Some(TableRoute { dst, gw, src, msg })
}

/// The rule `from <src>/32 (/128) lookup <table>`.
fn source_rule(src: IpAddr, table: u32) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = match src {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.src_len = if src.is_ipv4() { 32 } else { 128 };
    msg.header.action = RuleAction::ToTable;
    msg.attributes.push(RuleAttribute::Source(src));
    msg.attributes.push(RuleAttribute::Table(table));
    msg
}

impl Netlink {
    /// Every rule of both families.
    pub async fn rules(&self) -> Result<Vec<Rule>, Error> {
        let mut all = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut filter = RuleMessage::default();
            filter.header.family = family;
            let answers = self.dump(RouteNetlinkMessage::GetRule(filter), || {
                "listing rules".into()
            })?;
            all.extend(answers.into_iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => Some(rule_of(r)),
                _ => None,
            }));
        }
        Ok(all)
    }

    /// Adds `from <src>/32 (/128) lookup <table>`, with the priority the kernel picks.
    pub async fn add_source_rule(&self, src: IpAddr, table: u32) -> Result<(), Error> {
        let msg = source_rule(src, table);
        self.request(
            RouteNetlinkMessage::NewRule(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("adding rule from {src} lookup {table}"),
        )
        .map(drop)
    }

    /// Deletes the rule `from <src>/32 (/128) lookup <table>`; one already gone is fine.
    pub async fn delete_source_rule(&self, src: IpAddr, table: u32) -> Result<(), Error> {
        let msg = source_rule(src, table);
        let src = IpNetwork::new(src, msg.header.src_len).ok();
        self.delete_rule(&Rule { table, src, msg }).await
    }

    /// Deletes a listed rule; one already gone is fine.
    pub async fn delete_rule(&self, r: &Rule) -> Result<(), Error> {
        let what = format!("deleting rule from {:?} lookup {}", r.src, r.table);
        match self.request(RouteNetlinkMessage::DelRule(r.msg.clone()), 0, || what) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn all_routes(&self) -> Result<Vec<RouteMessage>, Error> {
        let mut all = self.route_messages(false).await?;
        all.extend(self.route_messages(true).await?);
        Ok(all)
    }

    /// The tables that hold a route or that a rule points to.
    pub async fn tables_in_use(&self) -> Result<HashSet<u32>, Error> {
        let mut used: HashSet<u32> = self.rules().await?.iter().map(|r| r.table).collect();
        used.extend(self.all_routes().await?.iter().map(route_table));
        Ok(used)
    }

    /// The main table's routes out of link `index`, both families.
    pub async fn main_routes_of(&self, index: u32) -> Result<Vec<TableRoute>, Error> {
        Ok(self
            .all_routes()
            .await?
            .into_iter()
            .filter(|m| route_table(m) == RT_TABLE_MAIN)
            .filter(|m| !m.header.flags.contains(RouteFlags::Cloned))
            .filter(|m| m.attributes.contains(&RouteAttribute::Oif(index)))
            .filter_map(table_route)
            .collect())
    }

    /// Puts a copy of `r` into `table` (replacing a route there to the same place).
    pub async fn copy_route(&self, r: &TableRoute, table: u32) -> Result<(), Error> {
        let mut msg = r.msg.clone();
        // What the kernel reports but does not take back: cache data, the old table.
        msg.attributes
            .retain(|a| !matches!(a, RouteAttribute::CacheInfo(_) | RouteAttribute::Table(_)));
        msg.attributes.push(RouteAttribute::Table(table));
        msg.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        msg.header.flags = RouteFlags::empty();
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("copying route {} to table {table}", r.dst),
        )
        .map(drop)
    }

    /// Deletes every route of `table` out of link `oif`.
    pub async fn flush_table(&self, table: u32, oif: u32) -> Result<(), Error> {
        for m in self.all_routes().await? {
            if route_table(&m) == table && m.attributes.contains(&RouteAttribute::Oif(oif)) {
                if let Some(r) = table_route(m) {
                    self.delete_listed_route(&r).await?;
                }
            }
        }
        Ok(())
    }

    /// Deletes a listed route; one already gone is fine.
    pub async fn delete_listed_route(&self, r: &TableRoute) -> Result<(), Error> {
        match self.request(RouteNetlinkMessage::DelRoute(r.msg.clone()), 0, || {
            format!("deleting route {}", r.dst)
        }) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(ESRCH) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A default route of `gw`'s family via `gw` out of link `oif` in `table`.
    pub async fn add_table_default_route(
        &self,
        gw: IpAddr,
        oif: u32,
        table: u32,
    ) -> Result<(), Error> {
        let any: IpAddr = match gw {
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let dst = IpNetwork::new(any, 0).expect("a /0 is always valid");
        self.add_route(&RouteSpec {
            table: Some(table),
            protocol: Some(RTPROT_BOOT),
            ..RouteSpec::new(dst, Some(gw), oif)
        })
        .await
    }
}
