//! What an overlay needs of the kernel beyond links and routes: a VXLAN device (its VNI,
//! port, local address and MAC fixed at creation), and the permanent neighbour and FDB
//! entries that tell it, per peer, which MAC stands behind an address and which underlay
//! address that MAC lives at.

use std::net::IpAddr;

use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo as NlInfo};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use rtnetlink::LinkVxlan;

use super::{Error, Netlink};
use crate::mac::format_mac;

/// A VXLAN device as we make it: no multicast group; learning and group-based policy
/// (GBP) only when asked (flannel's Backend options, both off by default).
#[derive(Debug, Clone, PartialEq)]
pub struct Vxlan {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The underlay address: IPv4 (flannel.N) or IPv6 (flannel-v6.N).
    pub local: IpAddr,
    /// The underlay link.
    pub dev: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub learning: bool,
    pub gbp: bool,
}

/// What a VXLAN device has, read back.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VxlanState {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<IpAddr>,
    pub learning: Option<bool>,
    /// The underlay link it sends through.
    pub link: Option<u32>,
    pub gbp: bool,
}

/// A permanent entry of a device's neighbour table or FDB.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub mac: Vec<u8>,
    /// The address behind the MAC (neighbour), or where the MAC lives (FDB).
    pub ip: Option<IpAddr>,
}

/// An entry's address; in a bridge-family (FDB) dump it comes as plain bytes.
fn ip_of(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(&b[..]).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(&b[..]).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A permanent entry of `family` on link `index`, its addresses still to add.
fn permanent(index: u32, family: AddressFamily) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unspec;
    m
}

impl Netlink {
    /// Creates the device, up.
    pub async fn create_vxlan(&self, v: &Vxlan) -> Result<(), Error> {
        let b = LinkVxlan::new(&v.name, v.vni).port(v.port);
        let mut b = match v.local {
            IpAddr::V4(ip) => b.local(ip),
            IpAddr::V6(ip) => b.local6(ip),
        }
        .dev(v.dev)
        .learning(v.learning);
        if v.gbp {
            b = b.gbp();
        }
        let msg = b.address(v.mac.to_vec()).mtu(v.mtu).up().build();
        self.add_link(msg, || format!("creating vxlan {} (VNI {})", v.name, v.vni))
            .await
    }

    /// The VXLAN settings of link `name`; None when there is no such link.
    pub async fn vxlan_state(&self, name: &str) -> Result<Option<VxlanState>, Error> {
        let Some(msg) = self.link_message(name)? else {
            return Ok(None);
        };
        let mut s = VxlanState::default();
        for a in msg.attributes {
            let LinkAttribute::LinkInfo(infos) = a else {
                continue;
            };
            for i in infos {
                let NlInfo::Data(InfoData::Vxlan(attrs)) = i else {
                    continue;
                };
                for x in attrs {
                    match x {
                        InfoVxlan::Id(v) => s.vni = Some(v),
                        InfoVxlan::Port(p) => s.port = Some(p),
                        InfoVxlan::Local(l) => s.local = Some(IpAddr::V4(l)),
                        InfoVxlan::Local6(l) => s.local = Some(IpAddr::V6(l)),
                        InfoVxlan::Learning(l) => s.learning = Some(l),
                        InfoVxlan::Link(i) => s.link = Some(i),
                        InfoVxlan::Gbp => s.gbp = true,
                        _ => {}
                    }
                }
            }
        }
        Ok(Some(s))
    }

    /// Sets the neighbour `ip` -> `mac` on link `index`, permanent, replacing what was.
    pub async fn replace_neighbour(&self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<(), Error> {
        let mut m = permanent(index, family_of(ip));
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(ip)));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("setting neighbour {ip} -> {} on #{index}", format_mac(mac)),
        )
        .map(drop)
    }

    /// Sets the FDB entry `mac` -> `dst` on link `index` (the device's own, permanent),
    /// replacing what was.
    pub async fn replace_fdb(&self, index: u32, mac: &[u8], dst: IpAddr) -> Result<(), Error> {
        let mut m = permanent(index, AddressFamily::Bridge);
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(dst)));
        self.request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("setting FDB {} -> {dst} on #{index}", format_mac(mac)),
        )
        .map(drop)
    }

    async fn neighbour_messages(
        &self,
        family: AddressFamily,
        index: u32,
    ) -> Result<Vec<NeighbourMessage>, Error> {
        let mut filter = NeighbourMessage::default();
        filter.header.family = family;
        let answers = self.dump(RouteNetlinkMessage::GetNeighbour(filter), || {
            format!("listing the neighbours of #{index}")
        })?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => Some(n),
                _ => None,
            })
            .collect())
    }

    fn entries(msgs: &[NeighbourMessage]) -> Vec<Entry> {
        msgs.iter()
            .filter(|m| m.header.state == NeighbourState::Permanent)
            .map(|m| {
                let mut e = Entry {
                    mac: Vec::new(),
                    ip: None,
                };
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::LinkLayerAddress(mac) => e.mac = mac.clone(),
                        NeighbourAttribute::Destination(d) => e.ip = ip_of(d),
                        _ => {}
                    }
                }
                e
            })
            .collect()
    }

    /// The permanent neighbours of link `index` (both families).
    pub async fn neighbours(&self, index: u32) -> Result<Vec<Entry>, Error> {
        let mut msgs = self.neighbour_messages(AddressFamily::Inet, index).await?;
        msgs.extend(self.neighbour_messages(AddressFamily::Inet6, index).await?);
        Ok(Self::entries(&msgs))
    }

    /// The permanent FDB entries of link `index`.
    pub async fn fdb(&self, index: u32) -> Result<Vec<Entry>, Error> {
        Ok(Self::entries(
            &self
                .neighbour_messages(AddressFamily::Bridge, index)
                .await?,
        ))
    }

    pub async fn delete_neighbour(&self, index: u32, ip: IpAddr) -> Result<(), Error> {
        let mut m = NeighbourMessage::default();
        m.header.family = family_of(ip);
        m.header.ifindex = index;
        m.attributes
            .push(NeighbourAttribute::Destination(neighbour_address(ip)));
        self.delete_entry(m, format!("deleting neighbour {ip} of #{index}"))
            .await
    }

    pub async fn delete_fdb(&self, index: u32, e: &Entry) -> Result<(), Error> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(e.mac.clone()));
        if let Some(ip) = e.ip {
            m.attributes
                .push(NeighbourAttribute::Destination(neighbour_address(ip)));
        }
        self.delete_entry(
            m,
            format!("deleting FDB {} of #{index}", format_mac(&e.mac)),
        )
        .await
    }

    /// Deletes an entry; one already gone is fine.
    async fn delete_entry(&self, m: NeighbourMessage, what: String) -> Result<(), Error> {
        match self.request(RouteNetlinkMessage::DelNeighbour(m), 0, || what) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}
