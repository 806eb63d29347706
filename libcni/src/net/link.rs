//! The thin netlink layer: one `Netlink` handle per namespace, and small requests named
//! after what they do to the kernel. Errors name the object and the operation.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
pub use netlink_packet_route::link::MacVlanMode;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoMacVlan, InfoVeth, LinkAttribute, LinkFlags,
    LinkInfo as NlInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::{
    AddressMessageBuilder, LinkBridge, LinkBridgePort, LinkDummy, LinkMacVlan, LinkMessageBuilder,
    LinkUnspec, RouteMessageBuilder,
};

use super::libc_errno::{EADDRNOTAVAIL, EEXIST, EHOSTUNREACH, ENETUNREACH, ESRCH};
use super::socket::RouteSocket;
use super::{Error, Netns};

/// What we read back about a link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub promisc: bool,
    pub allmulti: bool,
    pub txqlen: u32,
    pub controller: Option<u32>,
    pub kind: Option<String>,
    pub alias: Option<String>,
    /// For a veth, its peer's index (in the peer's namespace).
    pub peer: Option<u32>,
}

/// A new macvlan's own settings; `None`: the kernel's default.
#[derive(Debug, Clone, Default)]
pub struct MacvlanSettings {
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// Broadcast/multicast queue length (`bcqueuelen`).
    pub bc_queue_len: Option<u32>,
}

/// Link settings to change; `None` leaves a setting alone.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinkTuning {
    pub mac: Option<Vec<u8>>,
    pub mtu: Option<u32>,
    pub promisc: Option<bool>,
    pub allmulti: Option<bool>,
    pub txqlen: Option<u32>,
}

/// A route as read back from a table.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteInfo {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub protocol: u8,
}

/// A route to add, replace or delete, with the 1.1.0 result's extras.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RouteSpec {
    pub dst: Option<IpNetwork>,
    pub gw: Option<IpAddr>,
    pub oif: u32,
    /// Via a gateway the kernel cannot see on the link (a peer's VTEP address).
    pub onlink: bool,
    pub metric: Option<u32>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
    /// The source address for traffic the route sends.
    pub src: Option<IpAddr>,
    /// Who made the route (rtm_protocol), so its maker can find its routes again.
    pub protocol: Option<u8>,
    /// A blackhole route: what it matches is dropped (no gateway, no link).
    pub blackhole: bool,
}

impl RouteSpec {
    /// A route to `dst` via `gw` (None: directly) out of link `oif`.
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>, oif: u32) -> RouteSpec {
        RouteSpec {
            dst: Some(dst),
            gw,
            oif,
            ..Default::default()
        }
    }

    fn dst(&self) -> IpNetwork {
        self.dst
            .unwrap_or_else(|| "0.0.0.0/0".parse().expect("literal"))
    }

    fn describe(&self, op: &str) -> String {
        if self.blackhole {
            return format!("{op} blackhole route {}", self.dst());
        }
        let via = self.gw.map_or(String::new(), |g| format!(" via {g}"));
        format!("{op} route {}{via} dev #{}", self.dst(), self.oif)
    }

    fn message(&self) -> Result<RouteMessage, Error> {
        let bad = |e: String| Error::io(self.describe("building"), std::io::Error::other(e));
        let dst = self.dst();
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .map_err(|e| bad(e.to_string()))?;
        b = match self.blackhole {
            true => b.kind(RouteType::BlackHole),
            false => b.output_interface(self.oif),
        };
        if let Some(gw) = self.gw {
            b = b.gateway(gw).map_err(|e| bad(e.to_string()))?;
        }
        if self.onlink {
            b = b.onlink();
        }
        if let Some(m) = self.metric {
            b = b.priority(m);
        }
        if let Some(t) = self.table {
            b = b.table_id(t);
        }
        if let Some(s) = self.scope {
            b = b.scope(RouteScope::from(s));
        }
        if let Some(src) = self.src {
            b = b.pref_source(src).map_err(|e| bad(e.to_string()))?;
        }
        if let Some(p) = self.protocol {
            b = b.protocol(RouteProtocol::from(p));
        }
        let mut msg = b.build();
        let metrics: Vec<RouteMetric> = [
            self.mtu.map(RouteMetric::Mtu),
            self.advmss.map(RouteMetric::Advmss),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !metrics.is_empty() {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
        Ok(msg)
    }
}

/// A route netlink connection bound to the namespace it was opened in.
pub struct Netlink {
    socket: RouteSocket,
}

fn tolerate(res: Result<(), Error>, errno: i32) -> Result<bool, Error> {
    match res {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(errno) => Ok(false),
        Err(e) => Err(e),
    }
}

impl Netlink {
    /// Opens a connection in the calling thread's namespace.
    pub fn connect() -> Result<Netlink, Error> {
        let socket = RouteSocket::open().map_err(|e| Error::io("opening a netlink socket", e))?;
        Ok(Netlink { socket })
    }

    /// Opens a connection inside `ns`; the socket stays bound there after we leave.
    pub fn connect_in(ns: &Netns) -> Result<Netlink, Error> {
        ns.run(Netlink::connect)?
    }

    /// Sends `msg` (with `flags` besides request and ack) and returns the kernel's answers.
    pub(super) fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        self.socket
            .request(msg, flags)
            .map_err(|e| Error::io(what(), e))
    }

    /// Every object the kernel lists for `msg`.
    pub(super) fn dump(
        &self,
        msg: RouteNetlinkMessage,
        what: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        self.socket.dump(msg).map_err(|e| Error::io(what(), e))
    }

    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, Error> {
        Ok(self.link_message(name)?.map(link_info))
    }

    /// The kernel's message about link `name`; None when there is none.
    pub(super) fn link_message(&self, name: &str) -> Result<Option<LinkMessage>, Error> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.first_link(msg, || format!("looking up link {name}"))
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, Error> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        Ok(self
            .first_link(msg, || format!("looking up link #{index}"))?
            .map(link_info))
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, Error> {
        let answers = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), || {
            "listing links".into()
        })?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_info(l)),
                _ => None,
            })
            .collect())
    }

    fn first_link(
        &self,
        msg: LinkMessage,
        what: impl FnOnce() -> String,
    ) -> Result<Option<LinkMessage>, Error> {
        match self.request(RouteNetlinkMessage::GetLink(msg), 0, what) {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the bridge if missing (a concurrent creator is fine) and brings it up. A new
    /// bridge gets a fixed MAC so it does not change as ports come and go. A link of that
    /// name that is not a bridge is returned untouched: the caller refuses it.
    pub async fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<LinkInfo, Error> {
        if let Some(l) = self.link(name).await? {
            if l.kind.as_deref() != Some("bridge") {
                return Ok(l);
            }
            return self.ensure_up(l).await;
        }
        let mut b = LinkBridge::new(name).address(random_mac()?);
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        let res = self
            .add_link(b.build(), || format!("creating bridge {name}"))
            .await;
        tolerate(res, EEXIST)?;
        let l = self.link(name).await?.ok_or_else(|| {
            Error::io(
                format!("bridge {name} vanished after creation"),
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
        if l.kind.as_deref() != Some("bridge") {
            return Ok(l);
        }
        self.ensure_up(l).await
    }

    async fn ensure_up(&self, mut l: LinkInfo) -> Result<LinkInfo, Error> {
        if !l.up {
            self.set_up(l.index, &l.name).await?;
            l.up = true;
        }
        Ok(l)
    }

    /// Fixes the MAC of `bridge` where the kernel does not keep it yet, so it no longer
    /// follows its lowest port's as ports come and go (as a MAC given at creation does):
    /// the MAC it has now, or a random one for the all-zero MAC of a bridge whose ports
    /// all left. Only then: setting a MAC, even the same, flushes the link's neighbours.
    pub async fn pin_bridge_mac(&self, bridge: LinkInfo) -> Result<LinkInfo, Error> {
        if mac_is_set(&bridge) == Some(true) {
            return Ok(bridge);
        }
        let mac = if bridge.mac.iter().all(|b| *b == 0) {
            random_mac()?
        } else {
            bridge.mac.clone()
        };
        let msg = LinkUnspec::new_with_index(bridge.index)
            .address(mac.clone())
            .build();
        self.set_link(msg, || format!("fixing the MAC of bridge {}", bridge.name))
            .await?;
        Ok(LinkInfo { mac, ..bridge })
    }

    /// Creates a veth pair whose peer, with MAC `peer_mac`, is born inside `peer_ns` (no
    /// move afterwards).
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_mac: &[u8],
        peer_ns: &Netns,
        mtu: Option<u32>,
    ) -> Result<(), Error> {
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer)
            .address(peer_mac.to_vec())
            .setns_by_fd(peer_ns.fd());
        let mut msg =
            LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth).name(host);
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
            msg = msg.mtu(mtu);
        }
        let msg = msg
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        self.add_link(msg, || {
            format!(
                "creating veth {host} with peer {peer} in {}",
                peer_ns.path().display()
            )
        })
        .await
    }

    /// Creates a macvlan on `master` (a link of this connection's namespace) named `name`
    /// and born inside `ns` (no move afterwards), with the settings given.
    pub async fn create_macvlan(
        &self,
        name: &str,
        master: &LinkInfo,
        mode: MacVlanMode,
        set: &MacvlanSettings,
        ns: &Netns,
    ) -> Result<(), Error> {
        let mut b = LinkMacVlan::new(name, master.index, mode).setns_by_fd(ns.fd());
        if let Some(q) = set.bc_queue_len {
            b = b.append_info_data(InfoMacVlan::BcQueueLen(q));
        }
        if let Some(mac) = set.mac {
            b = b.address(mac.to_vec());
        }
        if let Some(mtu) = set.mtu {
            b = b.mtu(mtu);
        }
        self.add_link(b.build(), || {
            format!(
                "creating macvlan {name} on {} in {}",
                master.name,
                ns.path().display()
            )
        })
        .await
    }

    /// Moves link `index` into `ns`, down, under the name `name` (and `alias`, if given),
    /// in one request. The kernel moves it under its current name when that is free in
    /// `ns` and renames it there after: `name` must be known free in `ns` (else see
    /// [`Netlink::move_link_renamed_first`]).
    pub async fn move_link(
        &self,
        index: u32,
        name: &str,
        alias: Option<&str>,
        ns: &Netns,
    ) -> Result<(), Error> {
        let mut msg = LinkUnspec::new_with_index(index)
            .down()
            .name(name.to_string())
            .setns_by_fd(ns.fd());
        if let Some(alias) = alias {
            msg = msg.alias(alias);
        }
        let msg = msg.build();
        self.set_link(msg, || {
            format!("moving link #{index} to {} as {name}", ns.path().display())
        })
        .await
    }

    /// Moves `link` into `ns` as `name`, all or nothing: down and renamed here first, then
    /// moved under that name, which fails cleanly where `ns` has a link of that name; then
    /// it gets its name and state back here. (In one request the kernel moves a link
    /// under its current name when that is free there and fails only at the rename after,
    /// leaving the link moved under the wrong name.)
    pub async fn move_link_renamed_first(
        &self,
        link: &LinkInfo,
        name: &str,
        ns: &Netns,
    ) -> Result<(), Error> {
        let msg = LinkUnspec::new_with_index(link.index)
            .down()
            .name(name.to_string())
            .build();
        self.set_link(msg, || format!("renaming {} to {name}", link.name))
            .await?;
        let msg = LinkUnspec::new_with_index(link.index)
            .setns_by_fd(ns.fd())
            .build();
        let moved = self
            .set_link(msg, || format!("moving {name} to {}", ns.path().display()))
            .await;
        if moved.is_err() {
            let mut back = LinkUnspec::new_with_index(link.index).name(link.name.clone());
            if link.up {
                back = back.up();
            }
            let undone = self
                .set_link(back.build(), || {
                    format!("giving {name} its name {} back", link.name)
                })
                .await;
            if let Err(e) = undone {
                eprintln!("{e}");
            }
        }
        moved
    }

    /// Creates a dummy link with `mac` in this connection's namespace. A kernel without
    /// the dummy driver answers EOPNOTSUPP ("Unknown device type").
    pub async fn create_dummy(&self, name: &str, mac: [u8; 6]) -> Result<(), Error> {
        let msg = LinkDummy::new(name).address(mac.to_vec()).build();
        self.add_link(msg, || format!("creating dummy {name}"))
            .await
    }

    /// Makes link `index` a port of `controller` (a bridge of the same namespace).
    pub async fn set_controller(
        &self,
        index: u32,
        name: &str,
        controller: &LinkInfo,
    ) -> Result<(), Error> {
        let msg = LinkUnspec::new_with_index(index)
            .controller(controller.index)
            .build();
        self.set_link(msg, || {
            format!("making {name} a port of {}", controller.name)
        })
        .await
    }

    /// The interface of this namespace's IPv4 default route (the reference's choice of
    /// a master or underlay when none is named).
    pub async fn default_route_link(&self) -> Result<Option<LinkInfo>, Error> {
        self.default_route_link_of(false).await
    }

    /// The interface of this namespace's IPv4 or (`v6`) IPv6 default route.
    pub async fn default_route_link_of(&self, v6: bool) -> Result<Option<LinkInfo>, Error> {
        let default = self
            .routes(v6)
            .await?
            .into_iter()
            .find(|r| r.dst.prefix() == 0)
            .and_then(|r| r.oif);
        match default {
            Some(i) => self.link_by_index(i).await,
            None => Ok(None),
        }
    }

    /// Labels a host-side link with `alias`, puts it under `controller` if given, and
    /// brings it up, in one request (the kernel ignores an alias given at creation).
    pub async fn label_and_up(
        &self,
        index: u32,
        name: &str,
        alias: &str,
        controller: Option<u32>,
    ) -> Result<(), Error> {
        let mut msg = LinkUnspec::new_with_index(index).alias(alias).up();
        if let Some(c) = controller {
            msg = msg.controller(c);
        }
        self.set_link(msg.build(), || match controller {
            Some(c) => format!("attaching {name} to #{c}"),
            None => format!("labelling {name} and setting it up"),
        })
        .await
    }

    pub async fn set_up(&self, index: u32, name: &str) -> Result<(), Error> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set_link(msg, || format!("setting {name} up")).await
    }

    pub async fn set_down(&self, index: u32, name: &str) -> Result<(), Error> {
        let msg = LinkUnspec::new_with_index(index).down().build();
        self.set_link(msg, || format!("setting {name} down")).await
    }

    /// Labels link `index` with `alias` and, with `down`, takes it down, in one request:
    /// how DEL marks a veth pair whose deletion it leaves to a child (attachment::veth).
    pub async fn relabel(
        &self,
        index: u32,
        name: &str,
        alias: &str,
        down: bool,
    ) -> Result<(), Error> {
        let mut msg = LinkUnspec::new_with_index(index).alias(alias);
        if down {
            msg = msg.down();
        }
        self.set_link(msg.build(), || format!("labelling {name} {alias}"))
            .await
    }

    /// Takes link `index` (called `name`) down and renames it, in one request: the kernel
    /// renames before it changes flags. A kernel before 6.2 renames no link that is up
    /// (EBUSY): there the link goes down first, in a request of its own.
    pub async fn retire_link(&self, index: u32, name: &str, new_name: &str) -> Result<(), Error> {
        let what = || format!("renaming {name} to {new_name}");
        let msg = LinkUnspec::new_with_index(index)
            .name(new_name)
            .down()
            .build();
        match self.set_link(msg, what).await {
            Err(e) if e.errno() == Some(super::libc_errno::EBUSY) => {
                self.set_down(index, name).await?;
                let msg = LinkUnspec::new_with_index(index).name(new_name).build();
                self.set_link(msg, what).await
            }
            r => r,
        }
    }

    pub async fn set_promisc(&self, index: u32, name: &str) -> Result<(), Error> {
        let msg = LinkUnspec::new_with_index(index).promiscuous(true).build();
        self.set_link(msg, || format!("setting {name} promiscuous"))
            .await
    }

    /// Applies the given settings to a link in one request; `None` leaves one as it is.
    pub async fn tune_link(&self, index: u32, name: &str, t: &LinkTuning) -> Result<(), Error> {
        let mut msg = LinkUnspec::new_with_index(index);
        if let Some(mac) = &t.mac {
            msg = msg.address(mac.clone());
        }
        if let Some(mtu) = t.mtu {
            msg = msg.mtu(mtu);
        }
        if let Some(on) = t.promisc {
            msg = msg.promiscuous(on);
        }
        if let Some(on) = t.allmulti {
            msg = msg.allmulticast(on);
        }
        if let Some(q) = t.txqlen {
            msg = msg.txqueuelen(q);
        }
        self.set_link(msg.build(), || format!("tuning {name} ({t:?})"))
            .await
    }

    pub(super) async fn add_link(
        &self,
        msg: LinkMessage,
        what: impl FnOnce() -> String,
    ) -> Result<(), Error> {
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            what,
        )
        .map(drop)
    }

    pub(super) async fn set_link(
        &self,
        msg: LinkMessage,
        what: impl FnOnce() -> String,
    ) -> Result<(), Error> {
        self.request(RouteNetlinkMessage::SetLink(msg), 0, what)
            .map(drop)
    }

    /// Lets a bridge port send frames back out the port they came in on.
    pub async fn set_hairpin(&self, index: u32, name: &str) -> Result<(), Error> {
        let what = format!("setting hairpin on {name}");
        self.set_port(index, InfoBridgePort::HairpinMode(true), what)
            .await
    }

    /// Makes a bridge port isolated: it exchanges frames with non-isolated ports only.
    pub async fn set_isolated(&self, index: u32, name: &str) -> Result<(), Error> {
        let what = format!("setting {name} isolated");
        self.set_port(index, InfoBridgePort::Isolated(true), what)
            .await
    }

    /// Sets one bridge-port attribute of the port `index`.
    async fn set_port(&self, index: u32, attr: InfoBridgePort, what: String) -> Result<(), Error> {
        let msg = LinkBridgePort::new(index).append_info_data(attr).build();
        self.request(RouteNetlinkMessage::NewLink(msg), 0, || what)
            .map(drop)
    }

    /// Deletes a link by name; `Ok(false)` when it was already gone.
    pub async fn delete_link(&self, name: &str) -> Result<bool, Error> {
        let Some(l) = self.link(name).await? else {
            return Ok(false);
        };
        self.delete_link_index(l.index, name).await
    }

    /// Deletes link `index` (called `name`); `Ok(false)` when it is gone already.
    pub async fn delete_link_index(&self, index: u32, name: &str) -> Result<bool, Error> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.request(RouteNetlinkMessage::DelLink(msg), 0, || {
            format!("deleting link {name}")
        }) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds an address; `Ok(false)` when the link already had it. IPv6 addresses skip
    /// duplicate address detection, so they are usable at once.
    pub async fn add_address(
        &self,
        index: u32,
        name: &str,
        addr: IpNetwork,
    ) -> Result<bool, Error> {
        self.add_address_dad(index, name, addr, false).await
    }

    /// [`Self::add_address`], an IPv6 address going through DAD when `dad`.
    pub async fn add_address_dad(
        &self,
        index: u32,
        name: &str,
        addr: IpNetwork,
        dad: bool,
    ) -> Result<bool, Error> {
        let mut msg = match addr.ip() {
            IpAddr::V4(ip) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
                .index(index)
                .address(ip, addr.prefix())
                .build(),
            IpAddr::V6(ip) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
                .index(index)
                .address(ip, addr.prefix())
                .build(),
        };
        if addr.is_ipv6() && !dad {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        let res = self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("adding address {addr} to {name}"),
        );
        tolerate(res.map(drop), EEXIST)
    }

    pub async fn delete_address(
        &self,
        index: u32,
        name: &str,
        addr: IpNetwork,
    ) -> Result<(), Error> {
        for m in self.address_messages(index, name).await? {
            if address_of(&m).is_some_and(|a| a == addr) {
                let res = self.request(RouteNetlinkMessage::DelAddress(m), 0, || {
                    format!("removing {addr} from {name}")
                });
                tolerate(res.map(drop), EADDRNOTAVAIL)?;
            }
        }
        Ok(())
    }

    /// Addresses on a link, with their prefix lengths.
    pub async fn addresses(&self, index: u32, name: &str) -> Result<Vec<IpNetwork>, Error> {
        Ok(self
            .address_messages(index, name)
            .await?
            .iter()
            .filter_map(address_of)
            .collect())
    }

    /// The IPv6 addresses of a link still in duplicate address detection, and those
    /// that failed it.
    pub async fn unsettled_addresses(
        &self,
        index: u32,
        name: &str,
    ) -> Result<(Vec<IpNetwork>, Vec<IpNetwork>), Error> {
        let (mut tentative, mut failed) = (Vec::new(), Vec::new());
        for m in self.address_messages(index, name).await? {
            let Some(a) = address_of(&m).filter(IpNetwork::is_ipv6) else {
                continue;
            };
            if m.header.flags.contains(AddressHeaderFlags::Dadfailed) {
                failed.push(a);
            } else if m.header.flags.contains(AddressHeaderFlags::Tentative) {
                tentative.push(a);
            }
        }
        Ok((tentative, failed))
    }

    async fn address_messages(
        &self,
        index: u32,
        name: &str,
    ) -> Result<Vec<netlink_packet_route::address::AddressMessage>, Error> {
        let mut filter = netlink_packet_route::address::AddressMessage::default();
        filter.header.index = index;
        let answers = self.dump(RouteNetlinkMessage::GetAddress(filter), || {
            format!("listing addresses of {name}")
        })?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => Some(a),
                _ => None,
            })
            .collect())
    }

    /// Adds a route; an identical route already present is fine.
    pub async fn add_route(&self, r: &RouteSpec) -> Result<(), Error> {
        let res = self.request(
            RouteNetlinkMessage::NewRoute(r.message()?),
            NLM_F_CREATE | NLM_F_EXCL,
            || r.describe("adding"),
        );
        tolerate(res.map(drop), EEXIST).map(drop)
    }

    /// Adds a route or replaces the one to the same destination (and metric, table).
    pub async fn replace_route(&self, r: &RouteSpec) -> Result<(), Error> {
        self.request(
            RouteNetlinkMessage::NewRoute(r.message()?),
            NLM_F_CREATE | NLM_F_REPLACE,
            || r.describe("replacing"),
        )
        .map(drop)
    }

    /// Deletes a route: of `r.protocol` when it names one, else whoever made it (the
    /// kernel's prefix routes too); one already gone is fine.
    pub async fn delete_route(&self, r: &RouteSpec) -> Result<(), Error> {
        let mut msg = r.message()?;
        if r.protocol.is_none() {
            msg.header.protocol = RouteProtocol::Unspec;
        }
        let res = self.request(RouteNetlinkMessage::DelRoute(msg), 0, || {
            r.describe("deleting")
        });
        tolerate(res.map(drop), ESRCH).map(drop)
    }

    /// The route the kernel picks for `dst` (`ip route get`): its output link and
    /// preferred source address; None when `dst` is unreachable.
    pub async fn route_to(&self, dst: IpAddr) -> Result<Option<(u32, Option<IpAddr>)>, Error> {
        let mut msg = RouteMessage::default();
        let (family, len, addr) = match dst {
            IpAddr::V4(v4) => (AddressFamily::Inet, 32, RouteAddress::Inet(v4)),
            IpAddr::V6(v6) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(v6)),
        };
        msg.header.address_family = family;
        msg.header.destination_prefix_length = len;
        msg.attributes.push(RouteAttribute::Destination(addr));
        // With a destination this is one lookup, not a dump.
        let answers = self.request(RouteNetlinkMessage::GetRoute(msg), 0, || {
            format!("looking up the route to {dst}")
        });
        let found = match answers {
            Ok(answers) => answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            }),
            Err(e) => {
                return match e.errno() {
                    Some(ENETUNREACH | EHOSTUNREACH) => Ok(None),
                    _ => Err(e),
                };
            }
        };
        Ok(found.map(|m| {
            let oif = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            let src = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::PrefSource(s) => route_ip(s),
                _ => None,
            });
            (oif.unwrap_or(0), src)
        }))
    }

    /// Routes of the main table for one address family.
    pub async fn routes(&self, v6: bool) -> Result<Vec<RouteInfo>, Error> {
        let msgs = self.route_messages(v6).await?;
        Ok(msgs.iter().filter_map(route_info).collect())
    }

    /// Every route of one address family, of every table, as the kernel lists them.
    pub(super) async fn route_messages(&self, v6: bool) -> Result<Vec<RouteMessage>, Error> {
        let mut filter = RouteMessage::default();
        filter.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let answers = self.dump(RouteNetlinkMessage::GetRoute(filter), || {
            format!("listing {} routes", if v6 { "IPv6" } else { "IPv4" })
        })?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .collect())
    }
}

fn link_info(m: LinkMessage) -> LinkInfo {
    let mut l = LinkInfo {
        index: m.header.index,
        name: String::new(),
        mac: Vec::new(),
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        promisc: m.header.flags.contains(LinkFlags::Promisc),
        allmulti: m.header.flags.contains(LinkFlags::Allmulti),
        txqlen: 0,
        controller: None,
        kind: None,
        alias: None,
        peer: None,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Address(mac) => l.mac = mac,
            LinkAttribute::Mtu(mtu) => l.mtu = mtu,
            LinkAttribute::TxQueueLen(q) => l.txqlen = q,
            LinkAttribute::Controller(c) => l.controller = Some(c),
            LinkAttribute::IfAlias(a) => l.alias = Some(a),
            LinkAttribute::Link(p) => l.peer = Some(p),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn address_of(m: &netlink_packet_route::address::AddressMessage) -> Option<IpNetwork> {
    let ip = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })?;
    IpNetwork::new(ip, m.header.prefix_len).ok()
}

pub(super) fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_info(m: &RouteMessage) -> Option<RouteInfo> {
    if m.header.table != RouteMessage::default().header.table && m.header.table != 254 {
        return None;
    }
    let v6 = m.header.address_family == AddressFamily::Inet6;
    let protocol = u8::from(m.header.protocol);
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_ip(d),
            RouteAttribute::Gateway(g) => gw = route_ip(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let unspecified: IpAddr = if v6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let dst = IpNetwork::new(
        dst.unwrap_or(unspecified),
        m.header.destination_prefix_length,
    )
    .ok()?;
    Some(RouteInfo {
        dst,
        gw,
        oif,
        protocol,
    })
}

/// Whether the kernel keeps `link`'s MAC as set (addr_assign_type NET_ADDR_SET, which
/// netlink does not report), as sysfs says where its entry is this link: /sys may be
/// another namespace's, so its index and MAC must match. None: cannot tell.
fn mac_is_set(link: &LinkInfo) -> Option<bool> {
    // The kernel's name of a link: no '/', never "." or "..".
    let dir = std::path::Path::new("/sys/class/net").join(&link.name);
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let same = read("ifindex")? == link.index.to_string()
        && read("address")? == crate::mac::format_mac(&link.mac);
    same.then(|| read("addr_assign_type").as_deref() == Some("3"))
}

/// A random locally administered unicast MAC.
pub fn random_mac() -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let mut mac = vec![0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut mac))
        .map_err(|e| Error::io("reading /dev/urandom for a bridge MAC", e))?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}
