//! One node's agent. A session with etcd reads the network, claims this node's subnet
//! lease (its own again after a restart; a reservation or a flanneld's lease as it is;
//! in a dual-stack network an IPv6 subnet with it, in flannel's dual-stack key), keeps a
//! flanneld's VXLAN device as it is or makes one (and flannel-v6.N), writes the subnet file,
//! lists the leases and programs every peer, then follows the watch from the listed
//! revision while it renews the etcd lease and reconciles the kernel. When a session
//! fails (etcd down, a compacted watch, our lease gone, the network config changed) the
//! kernel stays as it is and the next one starts over after a bounded backoff. What the
//! kernel refuses is logged and tried again at the next reconcile; it never ends a
//! session.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use std::net::{IpAddr, Ipv6Addr};

use etcd_client::{Client, ConnectOptions, EventType, WatchResponse};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use libcni::mac::format_mac;
use libcni::net::{Netlink, RouteSpec, Vxlan};
use vxlan_overlay::config::{vtep6_name, vtep_name, Etcd, Overlay, Store};
use vxlan_overlay::local::Local;
use vxlan_overlay::node::{self, Mesh, Peer, Underlay, VXLAN6_OVERHEAD, VXLAN_OVERHEAD};
use vxlan_overlay::subnet_env::SubnetEnv;

use crate::etcd;
use crate::flannel::{lease_key, LeaseAttrs, Network, Subnets};
use crate::iface::Selection;
use crate::log::log;
use crate::notify;
use crate::rules::NodeRules;
use libcni::firewall::{ClusterNet, ClusterRules};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// flanneld's bound on claim attempts.
const CLAIM_TRIES: usize = 10;
/// No kernel request of one programming pass takes longer.
const KERNEL_WAIT: Duration = Duration::from_secs(30);

/// Why a session ended.
pub enum Stop {
    /// Try again after the backoff (etcd unreachable, watch compacted, lease lost).
    Retry(String),
    /// Nothing a retry can fix (the config disagrees with etcd's): the agent exits.
    Fatal(String),
}

fn retry(e: String) -> Stop {
    Stop::Retry(e)
}

/// What this node holds once a session has claimed its lease.
struct Held {
    net: Network,
    subnet: Ipv4Network,
    /// In a dual-stack network, the IPv6 subnet claimed with it.
    subnet6: Option<Ipv6Network>,
    /// Our lease's key (flannel's dual-stack form with an IPv6 subnet).
    key: String,
    underlay: Underlay,
    /// flannel.N, or flannel-v6.N in an IPv6-only network.
    vtep: Vxlan,
    /// flannel-v6.N, in a dual-stack network.
    vtep6: Option<Vxlan>,
}

impl Held {
    /// This node's subnet that keys it: the IPv4 one, or in an IPv6-only network the
    /// IPv6 one.
    fn own(&self) -> IpNetwork {
        self.net.primary((self.subnet, self.subnet6))
    }

    /// The mesh of that family (the device `vtep` and the peers' `peer` sides).
    fn mesh(&self) -> Mesh {
        let network = match (&self.net.ipv6, self.net.ipv4) {
            (Some(n), false) => IpNetwork::V6(n.network),
            _ => IpNetwork::V4(self.net.network),
        };
        Mesh {
            network,
            direct_routing: self.net.direct_routing,
            host_gw: self.net.host_gw,
        }
    }

    /// A dual-stack network's IPv6 mesh (`vtep6` and the peers' `peer6` sides).
    fn mesh6(&self) -> Option<Mesh> {
        if !self.net.ipv4 {
            return None;
        }
        Some(Mesh {
            network: IpNetwork::V6(self.net.ipv6.as_ref()?.network),
            direct_routing: self.net.direct_routing,
            host_gw: self.net.host_gw,
        })
    }

    /// The device to keep: none in host-gw.
    fn vxlan(&self) -> Option<&Vxlan> {
        Some(&self.vtep).filter(|_| !self.net.host_gw)
    }
}

/// One peer's change from a watch event: as it was programmed, and as it is now.
struct Change {
    old: Option<Peer>,
    new: Option<Peer>,
}

/// A peer, with the key it was read from: only that key changes or removes it. `peer6`
/// is its IPv6 side, in a dual-stack network, when its lease has a usable one; in an
/// IPv6-only network `peer` is the IPv6 side and `peer6` None.
#[derive(Debug, Clone, PartialEq)]
struct Known {
    key: String,
    peer: Peer,
    peer6: Option<Peer>,
}

impl Known {
    /// What programming `new` over `old` changes, per family.
    fn changes(old: Option<&Known>, new: Option<&Known>) -> Vec<Change> {
        let v4 = Change {
            old: old.map(|k| k.peer.clone()),
            new: new.map(|k| k.peer.clone()),
        };
        let v6 = Change {
            old: old.and_then(|k| k.peer6.clone()),
            new: new.and_then(|k| k.peer6.clone()),
        };
        [v4, v6].into_iter().filter(|c| c.old != c.new).collect()
    }
}

pub struct Agent {
    overlay: Overlay,
    etcd: Etcd,
    options: ConnectOptions,
    nl: Netlink,
    local: Local,
    reconcile_every: Duration,
    /// The underlay and the address published for it.
    select: Selection,
    held: Option<Held>,
    /// The peers as programmed, by subnet (`Network::primary`).
    peers: BTreeMap<IpNetwork, Known>,
    /// The etcd lease our key is bound to.
    lease: Option<i64>,
    /// The last kernel failure logged (each is said once, not at every reconcile).
    kernel_trouble: Option<String>,
    /// The forward accept and the node masquerade (flanneld's iptables rules).
    rules: NodeRules,
    /// Why `<prefix>/config` was last refused (said once).
    config_refused: Option<String>,
    /// `<prefix>/config` as last accepted, saved with the node's state once it is held.
    config_accepted: Option<String>,
}

impl Agent {
    /// The agent of `overlay`'s etcd store: its connection options, saved state and
    /// netlink connection, made before anything is claimed.
    pub fn new(
        overlay: Overlay,
        reconcile_every: Duration,
        select: Selection,
    ) -> Result<Agent, String> {
        let Store::Etcd(etcd) = overlay.store.clone() else {
            return Err(
                "store: the agent serves the etcd store (a static one needs no agent)".into(),
            );
        };
        Ok(Agent {
            options: etcd::options(&etcd)?,
            local: Local::load_or_create(&Local::path(&overlay), log).map_err(|e| e.to_string())?,
            nl: Netlink::connect().map_err(|e| e.to_string())?,
            overlay,
            etcd,
            reconcile_every,
            select,
            held: None,
            peers: BTreeMap::new(),
            lease: None,
            kernel_trouble: None,
            rules: NodeRules::default(),
            config_refused: None,
            config_accepted: None,
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "network {} in etcd {} at {}",
            self.overlay.name,
            self.etcd.endpoints.join(","),
            self.etcd.prefix
        )
    }

    /// Runs sessions until one is fatal.
    pub async fn run(&mut self) -> String {
        let mut backoff = MIN_BACKOFF;
        let mut last = String::new();
        loop {
            let started = Instant::now();
            let why = match self.session().await {
                Err(Stop::Fatal(why)) => return why,
                Err(Stop::Retry(why)) => why,
                Ok(never) => match never {},
            };
            // A session that lasted is not part of a run of failures.
            if started.elapsed() > MAX_BACKOFF * 2 {
                backoff = MIN_BACKOFF;
            }
            if why != last {
                log(&format!("{why}; retrying (backoff up to {MAX_BACKOFF:?})"));
                last = why;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            // etcd may be gone for long: the kernel still gets its reconcile.
            self.reconcile().await;
        }
    }

    async fn session(&mut self) -> Result<Infallible, Stop> {
        let prefix = self.etcd.prefix.clone();
        let mut c = etcd::connect(&self.etcd, &self.options)
            .await
            .map_err(retry)?;
        let config = self.config(&mut c).await?;
        // An IPv6-only network's underlay is chosen by its IPv6 address: of the network
        // `judge` will serve (the one held, else etcd's, else the one saved).
        let key = format!("{prefix}/config");
        let v6_only = match &self.held {
            Some(h) => !h.net.ipv4,
            None => (config.as_deref().and_then(|r| Network::parse(r).ok()))
                .or_else(|| self.saved_network(&key, None))
                .is_some_and(|n| !n.ipv4),
        };
        let underlay = match self.select.underlay(&self.nl, v6_only).await {
            Ok(u) => u,
            Err(e) => {
                // A plugin config that etcd's contradicts stops the agent all the same.
                self.judge(config.as_deref(), None)?;
                return Err(retry(format!("underlay: {e}")));
            }
        };
        let net = self.judge(config.as_deref(), Some(&underlay))?;
        if net.ipv4 == v6_only {
            return Err(retry(format!(
                "{prefix}/config changed between two reads; starting over"
            )));
        }
        let underlay = match net.ipv6 {
            Some(_) if net.ipv4 => (node::with_ipv6(&self.nl, underlay).await)
                .map_err(|e| retry(format!("underlay: {e}")))?,
            _ => underlay,
        };
        if net.ipv6.is_some() && underlay.ip6.is_none() {
            return Err(retry(format!(
                "{prefix}/config has EnableIPv6 but the underlay {} has no global IPv6 address",
                underlay.link.name
            )));
        }
        self.adopt_vtep(&net, &underlay).await;
        let listing = etcd::leases(&mut c, &prefix, &net).await.map_err(retry)?;
        let (subnets, listing, lease) = self.claim(&mut c, &net, &underlay, listing).await?;
        let (subnet, key) = (subnets.0, lease_key(&prefix, subnets.0, subnets.1));
        self.settle(net, underlay, subnets).await?;
        self.set_peers(&listing);
        self.program(None).await;
        // The subnet file is written: what a Type=notify unit waits for.
        notify::ready();
        let mut watch = etcd::watch(&mut c, &prefix, listing.revision + 1)
            .await
            .map_err(retry)?;
        // A reservation has no lease to keep alive.
        let (mut keeper, mut kept) = match lease {
            Some(id) => {
                let (k, s) = etcd::keep_alive(&mut c, id).await.map_err(retry)?;
                (Some(k), Some(s))
            }
            None => (None, None),
        };
        let v6 = subnets.1.map(|s| format!(" and {s}")).unwrap_or_default();
        log(&format!(
            "holding {subnet}{v6}{}, {} peers, watching from revision {}",
            if lease.is_none() { " (reserved)" } else { "" },
            self.peers.len(),
            listing.revision + 1
        ));
        let ttl = Duration::from_secs(self.etcd.lease_ttl);
        let mut renew = tokio::time::interval((ttl / 3).max(Duration::from_secs(1)));
        let mut answered = Instant::now();
        let mut reconcile = tokio::time::interval(self.reconcile_every);
        reconcile.tick().await;
        loop {
            tokio::select! {
                m = watch.message() => {
                    let resp = m
                        .map_err(|e| retry(format!("etcd watch: {e}")))?
                        .ok_or_else(|| retry("etcd ended the watch".into()))?;
                    let changes = self.apply(&resp)?;
                    if !changes.is_empty() {
                        self.program(Some(&changes)).await;
                    }
                }
                _ = renew.tick(), if keeper.is_some() => {
                    // Two renewals unanswered: the lease is at risk, start over.
                    if answered.elapsed() > ttl * 2 / 3 {
                        return Err(retry(format!("etcd has not renewed our lease for {:?}", answered.elapsed())));
                    }
                    if let Some(k) = keeper.as_mut() {
                        k.keep_alive().await.map_err(|e| retry(format!("etcd lease keep-alive: {e}")))?;
                    }
                }
                k = etcd::next_kept(&mut kept) => {
                    let r = k
                        .map_err(|e| retry(format!("etcd lease keep-alive: {e}")))?
                        .ok_or_else(|| retry("etcd ended the lease keep-alive".into()))?;
                    if r.ttl() <= 0 {
                        self.lease = None;
                        return Err(retry(format!("our etcd lease {:x} expired; claiming {subnet} again", r.id())));
                    }
                    answered = Instant::now();
                }
                _ = reconcile.tick() => {
                    self.reconcile().await;
                    self.own_key_present(&mut c, &key).await?;
                    self.same_network(&mut c).await?;
                }
            }
        }
    }

    /// `<prefix>/config` as this session read it: a change starts a new session, which
    /// applies it. The watch sees changes at once; this catches one made between the
    /// session's read and its list.
    async fn same_network(&mut self, c: &mut Client) -> Result<(), Stop> {
        let Some(underlay) = self.held.as_ref().map(|h| h.underlay.clone()) else {
            return Ok(());
        };
        let config = self.config(c).await?;
        let net = self.judge(config.as_deref(), Some(&underlay))?;
        match &self.held {
            Some(h) if h.net != net => Err(retry(format!(
                "{}/config changed; starting over",
                self.etcd.prefix
            ))),
            _ => Ok(()),
        }
    }

    /// `<prefix>/config` as etcd holds it (None: not there), for [`Agent::judge`].
    async fn config(&self, c: &mut Client) -> Result<Option<Vec<u8>>, Stop> {
        let key = format!("{}/config", self.etcd.prefix);
        etcd::get(c, &key).await.map_err(retry)
    }

    /// The network this node serves, given `<prefix>/config`'s content (None: deleted).
    /// Anyone may write that key: once this node holds a subnet, content it cannot serve
    /// (damaged, deleted, another network, an MTU the underlay cannot carry) is refused
    /// with one log line and the network it holds stays, with its lease and its kernel
    /// state (flanneld reads the config once). A restarted agent keeps the config it
    /// saved the same way. Before that, the session fails and is retried with the
    /// backoff, or the agent stops if the plugin config disagrees.
    /// Without `underlay` the MTU is not checked.
    fn judge(&mut self, raw: Option<&[u8]>, underlay: Option<&Underlay>) -> Result<Network, Stop> {
        let key = format!("{}/config", self.etcd.prefix);
        let held = match &self.held {
            Some(h) => Some(h.net.clone()),
            None => self.saved_network(&key, underlay),
        };
        let (net, refused) = match (self.read_network(&key, raw, underlay), held) {
            (Ok(net), _) => {
                if self.config_refused.take().is_some() {
                    log(&format!("{key} is one this node serves again"));
                }
                self.config_accepted = raw.map(|r| String::from_utf8_lossy(r).into_owned());
                return Ok(net);
            }
            (Err(Stop::Retry(why) | Stop::Fatal(why)), Some(net)) => (net, why),
            (Err(stop), None) => return Err(stop),
        };
        if self.config_refused.as_ref() != Some(&refused) {
            log(&format!(
                "refusing {key}: {refused}; keeping {} as this node holds it",
                net.network
            ));
            self.config_refused = Some(refused);
        }
        Ok(net)
    }

    /// The network of the config this node saved when it last held a subnet, if it
    /// still fits the plugin config and the underlay.
    fn saved_network(&self, key: &str, underlay: Option<&Underlay>) -> Option<Network> {
        self.local.subnet?;
        let saved = self.local.config.as_deref()?;
        self.read_network(key, Some(saved.as_bytes()), underlay)
            .ok()
    }

    /// `<prefix>/config`, with flannel's defaults, checked against the plugin config and
    /// the underlay.
    fn read_network(
        &self,
        key: &str,
        raw: Option<&[u8]>,
        underlay: Option<&Underlay>,
    ) -> Result<Network, Stop> {
        let raw = raw.ok_or_else(|| {
            retry(format!(
                "{key} is not written (etcdctl put {key} '{{\"Network\":…}}')"
            ))
        })?;
        if raw.len() > etcd::MAX_VALUE {
            return Err(retry(format!(
                "{key}: {} bytes, over {}",
                raw.len(),
                etcd::MAX_VALUE
            )));
        }
        let net = Network::parse(raw).map_err(|e| retry(format!("{key}: {e}")))?;
        if let Some(n) = self.overlay.network.filter(|n| *n != net.network) {
            return Err(Stop::Fatal(format!(
                "network: the config's {n} differs from etcd's {} ({key})",
                net.network
            )));
        }
        if let Some(l) = self.overlay.subnet_len.filter(|l| *l != net.subnet_len) {
            return Err(Stop::Fatal(format!(
                "subnetLen: the config's {l} differs from etcd's {} ({key})",
                net.subnet_len
            )));
        }
        // As flanneld, a node serves the network it claimed in until it restarts: one
        // narrowed or moved live would drop peers outside it while nodes that cannot
        // serve it keep the old one, splitting the cluster. IPv6 turned on or off, or
        // its network changed, likewise.
        let v6 = |n: &Network| n.ipv6.as_ref().map(|v| (v.network, v.subnet_len));
        if let Some(h) = self.held.as_ref().filter(|h| {
            (h.net.network, h.net.subnet_len) != (net.network, net.subnet_len)
                || !net.fits(h.subnet)
                || v6(&h.net) != v6(&net)
                || (h.subnet6.zip(net.ipv6.as_ref())).is_some_and(|(s, n)| !n.fits(s))
        }) {
            return Err(retry(format!(
                "Network {} with SubnetLen {} (IPv6 {:?}) is not the {} with SubnetLen {} (IPv6 {:?}) this node holds {} in (a new network applies when the agent restarts)",
                net.network, net.subnet_len, v6(&net), h.net.network, h.net.subnet_len, v6(&h.net), h.subnet
            )));
        }
        if let Some(u) = underlay {
            self.mtu(&net, u).map_err(Stop::Fatal)?;
        }
        Ok(net)
    }

    /// The device's (and the pods') MTU: etcd's Backend.MTU, the MTU on the wire, less
    /// VXLAN's 50 bytes (flannel's rule since v0.21.3); else the plugin config's `mtu`
    /// (the pods'); else what the underlay carries. host-gw adds nothing to a packet: the
    /// underlay's MTU, as flanneld writes it.
    /// flanneld's firewall flags, as the store gives them.
    fn cluster_rules(&self) -> ClusterRules {
        ClusterRules {
            forward: self.etcd.forward_rules,
            masquerade: self.etcd.ip_masq,
            fully_random: !self.etcd.ip_masq_fully_random_disable,
        }
    }

    /// flanneld's `--ip-blackhole-route`: a blackhole route for each subnet of this node,
    /// so what is sent to its unassigned addresses is dropped here instead of following
    /// the default route (nodes where no bridge holds the subnet, Canal's). As flanneld's:
    /// the kernel's defaults (one there already is fine), never removed, a failure
    /// logged.
    async fn blackhole(&self, nets: &[ClusterNet]) {
        for n in nets {
            let r = RouteSpec {
                blackhole: true,
                ..RouteSpec::new(n.subnet, None, 0)
            };
            if let Err(e) = self.nl.add_route(&r).await {
                log(&format!("adding the blackhole route for {}: {e}", n.subnet));
            }
        }
    }

    fn mtu(&self, net: &Network, underlay: &Underlay) -> Result<u32, String> {
        if net.host_gw {
            return Ok(underlay.link.mtu);
        }
        let fits = underlay.link.mtu.saturating_sub(VXLAN_OVERHEAD);
        let (mtu, what) = match net.wire_mtu {
            Some(wire) => (wire - VXLAN_OVERHEAD, format!("Backend.MTU {wire}")),
            None => match self.overlay.mtu {
                Some(m) => (m, format!("mtu {m}")),
                None => return Ok(fits),
            },
        };
        if mtu > fits {
            return Err(format!(
                "{what} does not fit the underlay {} (MTU {}, at most {fits} in VXLAN)",
                underlay.link.name, underlay.link.mtu
            ));
        }
        Ok(mtu)
    }

    /// leaseTTL, in etcd's terms.
    fn ttl(&self) -> i64 {
        i64::try_from(self.etcd.lease_ttl).unwrap_or(i64::MAX)
    }

    /// The etcd lease our key lives under: the one we had while etcd still has it.
    async fn etcd_lease(&mut self, c: &mut Client) -> Result<i64, Stop> {
        if let Some(id) = self.lease {
            if etcd::alive(c, id).await.map_err(retry)? {
                return Ok(id);
            }
        }
        let id = etcd::grant(c, self.ttl()).await.map_err(retry)?;
        self.lease = Some(id);
        Ok(id)
    }

    /// The subnet this node had before: the one it saved, or the one in the subnet file
    /// (a node moving from flanneld keeps its subnet).
    fn previous_subnet(&self) -> Option<Ipv4Network> {
        self.local.subnet.or_else(|| {
            SubnetEnv::read(&self.overlay.subnet_file)
                .ok()?
                .node_subnet()
        })
    }

    /// The device flannel.<VNI> found on the node (flanneld's, or ours), kept as it is
    /// when it is as wanted in all but its MAC: its MAC becomes ours (saved), so the
    /// device is not made anew and the lease publishes the MAC peers already hold.
    async fn adopt_vtep(&mut self, net: &Network, underlay: &Underlay) {
        // host-gw keeps no device.
        let Ok(mtu) = self.mtu(net, underlay) else {
            return;
        };
        if net.host_gw {
            return;
        }
        let want = self.vtep(net, underlay, mtu);
        let mut kept = false;
        // An IPv6-only network has no flannel.N.
        if net.ipv4 {
            if let Some(mac) = reusable_mac(&self.nl, &want).await {
                self.local.set_mac(mac);
                kept = true;
            }
        }
        // flannel-v6.N, in a dual-stack network: its own MAC, kept the same way.
        if let Some(want6) = self.vtep6(net, underlay, &want) {
            if let Some(mac) = reusable_mac(&self.nl, &want6).await {
                self.local.set_mac6(mac);
                kept = true;
            }
        }
        if kept {
            if let Err(e) = self.local.save(&Local::path(&self.overlay)) {
                log(&format!("saving our state: {e}"));
            }
        }
    }

    /// flannel-v6.N over the underlay's IPv6 address, with a MAC of its own: in a
    /// dual-stack vxlan network on an underlay with an IPv6 address.
    fn vtep6(&self, net: &Network, underlay: &Underlay, vtep: &Vxlan) -> Option<Vxlan> {
        let ip6 = underlay
            .ip6
            .filter(|_| net.ipv6.is_some() && !net.host_gw)?;
        Some(Vxlan {
            name: vtep6_name(net.vni),
            local: IpAddr::V6(ip6.ip()),
            mac: self.local.mac6(),
            mtu: vtep
                .mtu
                .min(underlay.link.mtu.saturating_sub(VXLAN6_OVERHEAD)),
            ..vtep.clone()
        })
    }

    /// The device this node wants.
    fn vtep(&self, net: &Network, underlay: &Underlay, mtu: u32) -> Vxlan {
        Vxlan {
            name: vtep_name(net.vni),
            vni: net.vni,
            port: net.port,
            local: IpAddr::V4(underlay.ip),
            dev: underlay.link.index,
            mac: self.local.mac(),
            mtu,
            learning: net.learning,
            gbp: net.gbp,
        }
    }

    /// How this node holds `l`, a key naming its address: None for a reservation (no
    /// etcd lease: it stays one); else the key's own lease when the key holds the value
    /// we would write and etcd keeps that lease with our TTL (flanneld's, or ours before
    /// a restart: nothing is written), or ours.
    async fn hold(
        &mut self,
        c: &mut Client,
        l: &etcd::Listed,
        plain: bool,
        attrs: &LeaseAttrs,
    ) -> Result<(Option<i64>, bool), Stop> {
        if l.lease == 0 {
            return Ok((None, plain && l.attrs.as_ref() == Some(attrs)));
        }
        if plain && l.attrs.as_ref() == Some(attrs) {
            let (left, granted) = etcd::time_to_live(c, l.lease).await.map_err(retry)?;
            if left > 0 && granted == self.ttl() {
                self.lease = Some(l.lease);
                return Ok((Some(l.lease), true));
            }
        }
        Ok((Some(self.etcd_lease(c).await?), false))
    }

    /// The IPv6 subnet this node had before, likewise (FLANNEL_IPV6_SUBNET).
    fn previous_subnet6(&self) -> Option<Ipv6Network> {
        self.local.subnet6.or_else(|| {
            SubnetEnv::read(&self.overlay.subnet_file)
                .ok()
                .and_then(|e| e.node_subnet6())
        })
    }

    /// flanneld's order: the lease holding our underlay address (a reservation too: used
    /// as it is, never bound to a lease); else our previous subnet if free; else one at
    /// random among the first hundred free. Created only if absent. Returns the etcd
    /// lease the key is bound to, None for a reservation.
    /// In a dual-stack network the lease holds an IPv6 subnet too, picked the same way
    /// (flanneld's allocateSubnet): a lease of ours without one is replaced.
    async fn claim(
        &mut self,
        c: &mut Client,
        net: &Network,
        underlay: &Underlay,
        mut listing: etcd::Listing,
    ) -> Result<(Subnets, etcd::Listing, Option<i64>), Stop> {
        let prefix = self.etcd.prefix.clone();
        let public = self.select.public(underlay);
        let mut ours_attrs = match net.host_gw {
            true => LeaseAttrs::host_gw(public),
            false => LeaseAttrs::vxlan(public, net.vni, self.local.mac()),
        };
        ours_attrs.public_ipv6 = self.select.public_ipv6.map(|v6| v6.to_string());
        if let (Some(_), Some(ip6)) = (&net.ipv6, self.select.public6(underlay)) {
            ours_attrs = match net.ipv4 {
                true => ours_attrs.with_v6(ip6, self.local.mac6()),
                false => ours_attrs.v6_only(ip6, self.local.mac6()),
            };
        }
        let attrs = ours_attrs.to_json();
        // Whether a lease's IPv6 part is one this network wants of ours.
        let fits6 = |s6: Option<Ipv6Network>| match &net.ipv6 {
            None => true,
            Some(n) => s6.is_some_and(|s| n.fits(s)),
        };
        // Subnets another node took while we tried: not tried again in this claim.
        let mut lost: Vec<IpNetwork> = Vec::new();
        for _ in 0..CLAIM_TRIES {
            let mine = |l: &&etcd::Listed| {
                l.attrs
                    .as_ref()
                    .is_some_and(|a| self.names_us(net, underlay, a))
                    && !lost.contains(&net.primary((l.subnet, l.subnet6)))
                    && net.fits(l.subnet)
            };
            // Ours but without an IPv6 subnet of the network (a key from before
            // EnableIPv6): replaced, as flanneld does, its IPv4 subnet kept if free.
            let single: Vec<String> = (listing.leases.iter())
                .filter(mine)
                .filter(|l| !fits6(l.subnet6))
                .map(|l| l.key.clone())
                .collect();
            for key in single {
                log(&format!(
                    "replacing our lease {key}: it holds no IPv6 subnet of the network"
                ));
                etcd::delete(c, &key).await.map_err(retry)?;
                listing.leases.retain(|l| l.key != key);
            }
            let mut ours: Vec<&etcd::Listed> = (listing.leases.iter())
                .filter(mine)
                .filter(|l| fits6(l.subnet6))
                .collect();
            // Several keys name our address (anyone may write one): the subnet this node
            // holds or held stays; else the oldest key. Never the first in key order, or a
            // key written for us would move the node's pods to another subnet.
            let known = (self.held.as_ref().map(|h| h.own()))
                .or((self.local.subnet).map(|s| net.primary((s, self.local.subnet6))));
            ours.sort_by_key(|l| {
                let held = Some(net.primary((l.subnet, l.subnet6))) == known;
                (!held, l.create_revision)
            });
            if let Some(l) = ours.first().map(|l| (*l).clone()) {
                // Without EnableIPv6 a dual-stack key (flanneld's) moves to the plain key
                // we keep renewing; with it, the dual-stack key stays.
                let subnet6 = l.subnet6.filter(|_| net.ipv6.is_some());
                let (from, subnet) = (l.key.clone(), l.subnet);
                let key = lease_key(&prefix, subnet, subnet6);
                let (lease, as_is) = self.hold(c, &l, from == key, &ours_attrs).await?;
                let what = if lease.is_none() {
                    "reservation"
                } else {
                    "lease"
                };
                if as_is {
                    log(&format!(
                        "took back {subnet}: its {what} {from} names {public} as we would"
                    ));
                    return Ok(((subnet, subnet6), listing, lease));
                }
                if etcd::replace(c, &from, &key, &attrs, lease, l.mod_revision)
                    .await
                    .map_err(retry)?
                {
                    log(&format!(
                        "took back {subnet}: its {what} {from} names {public}"
                    ));
                    listing.leases.retain(|l| l.key != from || from == key);
                    return Ok(((subnet, subnet6), listing, lease));
                }
                // Changed since listed, or its plain key is someone else's: not ours to
                // try again in this claim (a key tried forever would be a spin).
                log(&format!("{from} changed meanwhile; listing again"));
                lost.push(net.primary((subnet, subnet6)));
                listing = etcd::leases(c, &prefix, net).await.map_err(retry)?;
                continue;
            } else {
                for l in ours {
                    log(&format!(
                        "removing our lease {}: not a subnet of the network any more",
                        l.key
                    ));
                    etcd::delete(c, &l.key).await.map_err(retry)?;
                }
            }
            let mut taken = listing.taken();
            taken.extend(lost.iter().filter_map(|n| match n {
                IpNetwork::V4(n) => Some(*n),
                IpNetwork::V6(_) => None,
            }));
            let previous = self
                .previous_subnet()
                .filter(|s| net.fits(*s) && !taken.iter().any(|t| t.contains(s.network())));
            // An IPv6-only network's IPv4 part is 0.0.0.0/0 for every node (flanneld's
            // allocator finds it taken by the first: it serves one node); the key, and so
            // create-if-absent, still tells the IPv6 subnets apart.
            let pick = match net.ipv4 {
                true => previous.or_else(|| pick_one(&net.free(&taken, 100))),
                false => Some(net.network),
            };
            let Some(s) = pick else {
                return Err(retry(format!(
                    "no free /{} left in {}",
                    net.subnet_len, net.network
                )));
            };
            let s6 = match &net.ipv6 {
                None => None,
                Some(n) => {
                    let mut taken6 = listing.taken6();
                    taken6.extend(lost.iter().filter_map(|n| match n {
                        IpNetwork::V6(n) => Some(*n),
                        IpNetwork::V4(_) => None,
                    }));
                    let free = |s: &Ipv6Network| !taken6.iter().any(|t| t.contains(s.network()));
                    let previous = self.previous_subnet6().filter(|s| n.fits(*s) && free(s));
                    let pick = previous.or_else(|| pick_one(&n.free(&taken6, 100)));
                    Some(pick.ok_or_else(|| {
                        retry(format!("no free /{} left in {}", n.subnet_len, n.network))
                    })?)
                }
            };
            let lease = self.etcd_lease(c).await?;
            if etcd::create(c, &lease_key(&prefix, s, s6), &attrs, lease)
                .await
                .map_err(retry)?
            {
                let how = if previous == Some(s) {
                    ", as before"
                } else {
                    ""
                };
                let v6 = s6.map(|s| format!(" and {s}")).unwrap_or_default();
                log(&format!("claimed {s}{v6} for {public}{how}"));
                return Ok(((s, s6), listing, Some(lease)));
            }
            let s = net.primary((s, s6));
            log(&format!(
                "{s} was claimed by another node meanwhile; listing again"
            ));
            lost.push(s);
            listing = etcd::leases(c, &prefix, net).await.map_err(retry)?;
        }
        Err(retry(format!("no subnet claimed in {CLAIM_TRIES} tries")))
    }

    /// Makes the devices and the subnet file match what this node holds, and saves it.
    async fn settle(
        &mut self,
        net: Network,
        underlay: Underlay,
        (subnet, subnet6): Subnets,
    ) -> Result<(), Stop> {
        let own = net.primary((subnet, subnet6));
        if let Some(h) = self.held.as_ref().filter(|h| h.own() != own) {
            log(&format!(
                "this node's subnet changed from {} to {own}: containers on the old one lose the overlay",
                h.own()
            ));
        }
        let mtu = self.mtu(&net, &underlay).map_err(Stop::Fatal)?;
        let v4 = self.vtep(&net, &underlay, mtu);
        let v6 = subnet6.and_then(|_| self.vtep6(&net, &underlay, &v4));
        // An IPv6-only network's one device is flannel-v6.N (as flanneld's), and the
        // pods get its MTU: VXLAN over IPv6 takes 70 bytes.
        let (vtep, vtep6, mtu) = match (net.ipv4, v6) {
            (false, Some(v6)) => (v6.clone(), None, v6.mtu),
            (_, v6) => (v4, v6, mtu),
        };
        // A VNI change renames the device: the old one goes, with its peers' state, also
        // when the change happened while we were stopped (the saved VNI names it).
        // host-gw keeps none: the device of before goes.
        let old = (self.held.as_ref().map(|h| h.vtep.name.clone()))
            .or(self.local.vni.map(vtep_name))
            .or(net.host_gw.then(|| vtep.name.clone()))
            .filter(|old| *old != vtep.name || net.host_gw);
        let old_vni = (self.held.as_ref().map(|h| h.net.vni)).or(self.local.vni);
        // The old flannel-v6.N too, and ours when this network is no longer dual stack.
        let old6 = old_vni
            .map(vtep6_name)
            .filter(|old| Some(old) != vtep6.as_ref().map(|v| &v.name))
            .filter(|old| *old != vtep.name || net.host_gw);
        for old in old.into_iter().chain(old6) {
            if let Err(e) = self.nl.delete_link(&old).await {
                log(&format!("removing the old {old}: {e}"));
            }
        }
        let config = self.config_accepted.clone().or(self.local.config.clone());
        if self.local.subnet != Some(subnet)
            || self.local.subnet6 != subnet6
            || self.local.vni != Some(net.vni)
            || self.local.config != config
        {
            self.local.subnet = Some(subnet);
            self.local.subnet6 = subnet6;
            self.local.vni = Some(net.vni);
            self.local.config = config;
            // Not saved: a restart claims by our address's lease first anyway, and
            // teardown falls back to the config's VNI.
            if let Err(e) = self.local.save(&Local::path(&self.overlay)) {
                log(&format!("saving our state: {e}"));
            }
        }
        // FLANNEL_SUBNET is the gateway (the first address) with the subnet's prefix.
        let gateway = Ipv4Network::new(subnet.nth(1).unwrap_or(subnet.network()), subnet.prefix())
            .expect("a prefix from a subnet");
        // An IPv6-only network's file has only the IPv6 pair, as flanneld's.
        let ipv4 = net.ipv4.then_some((net.network, gateway));
        // With ipMasq (flanneld's --ip-masq) the node masquerades and the plugin does not;
        // without it, or while the node's rules failed (said in the log), the plugin's
        // ipMasq does, per container: FLANNEL_IPMASQ=true only once they are in place.
        let nets = cluster_nets(&net, subnet, subnet6);
        let kept = (self.rules)
            .keep(&self.overlay.name, &nets, self.cluster_rules())
            .await;
        let ip_masq = self.etcd.ip_masq && kept;
        if self.etcd.blackhole_route {
            self.blackhole(&nets).await;
        }
        let ipv6 = (net.ipv6.as_ref().zip(subnet6)).map(|(n, s)| {
            let first = u128::from(s.network()) + 1;
            let gateway =
                Ipv6Network::new(first.into(), s.prefix()).expect("a prefix from a subnet");
            (n.network, gateway)
        });
        let env = SubnetEnv {
            ipv4,
            ipv6,
            mtu,
            ip_masq,
        };
        if SubnetEnv::read(&self.overlay.subnet_file).ok().as_ref() != Some(&env) {
            env.write(&self.overlay.subnet_file)
                .map_err(|e| retry(e.to_string()))?;
            log(&format!("wrote {}", self.overlay.subnet_file.display()));
        }
        self.held = Some(Held {
            key: lease_key(&self.etcd.prefix, subnet, subnet6),
            net,
            subnet,
            subnet6,
            underlay,
            vtep,
            vtep6,
        });
        Ok(())
    }

    /// The peer a lease names: another node's vxlan lease, with a unicast VTEP MAC (an
    /// all-zero one would be the device's default destination: every unknown frame would
    /// go there). The subnet is one of the network's (`Network::lease_of_key`). Its IPv6
    /// side is programmed when both it and this node are dual stack.
    fn peer(&self, (s, s6): Subnets, a: Option<&LeaseAttrs>) -> Result<Known, String> {
        let h = self.held.as_ref().ok_or("no subnet held yet")?;
        let own = h.own();
        if h.net.primary((s, s6)) == own {
            return Err(format!("it names this node's subnet {own}"));
        }
        let a = a.ok_or("its value is not a lease we read")?;
        // host-gw routes via the address alone; a lease of another backend is not
        // reachable that way (flannel ignores it likewise).
        let host_gw = h.net.host_gw;
        if host_gw && !a.is_host_gw() {
            return Err(format!("BackendType {:?} is not host-gw", a.backend_type));
        }
        let public6 = self.select.public6(&h.underlay);
        if !h.net.ipv4 {
            return Ok(Known {
                key: String::new(),
                peer: side6(h, public6, s6, a)?,
                peer6: None,
            });
        }
        let ip = a.public_ip;
        if ip == h.underlay.ip || ip == self.select.public(&h.underlay) {
            return Err(format!("it names this node's address {ip}"));
        }
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
            return Err(format!("PublicIP {ip} is not a node's address"));
        }
        let mac = match host_gw {
            true => [0; 6],
            false => (a.vtep_mac())
                .filter(unicast)
                .ok_or("no vxlan lease with a unicast VtepMAC")?,
        };
        Ok(Known {
            key: String::new(),
            peer: Peer {
                subnet: IpNetwork::V4(s),
                underlay_ip: IpAddr::V4(ip),
                mac,
            },
            peer6: side6(h, public6, s6, a).ok(),
        })
    }

    /// Whether a lease names this node: by its PublicIP, or in an IPv6-only network
    /// (where every PublicIP is 0.0.0.0) by its PublicIPv6.
    fn names_us(&self, net: &Network, u: &Underlay, a: &LeaseAttrs) -> bool {
        match net.ipv4 {
            true => a.public_ip == self.select.public(u),
            false => a
                .public_ipv6()
                .is_some_and(|ip| Some(ip) == self.select.public6(u)),
        }
    }

    /// Replaces the peer table, logging each change. Of two keys naming one subnet (a
    /// dual-stack one and a plain one), the older holds it.
    fn set_peers(&mut self, listing: &etcd::Listing) {
        let own = self.held.as_ref().map(|h| h.key.clone());
        let mut leases: Vec<&etcd::Listed> = (listing.leases.iter())
            .filter(|l| Some(&l.key) != own.as_ref())
            .collect();
        leases.sort_by_key(|l| l.create_revision);
        let mut new: BTreeMap<IpNetwork, Known> = BTreeMap::new();
        let Some(net) = self.held.as_ref().map(|h| h.net.clone()) else {
            return;
        };
        for l in leases {
            let s = net.primary((l.subnet, l.subnet6));
            if let Some(k) = new.get(&s) {
                log(&format!("ignoring {}: {} holds {s}", l.key, k.key));
                continue;
            }
            match self.peer((l.subnet, l.subnet6), l.attrs.as_ref()) {
                Ok(mut k) => {
                    k.key = l.key.clone();
                    held6(&new, &mut k);
                    new.insert(s, k);
                }
                Err(why) => log(&format!("ignoring {}: {why}", l.key)),
            }
        }
        for (s, k) in &new {
            if self.peers.get(s) != Some(k) {
                log(&added(k));
            }
        }
        for s in self.peers.keys().filter(|s| !new.contains_key(s)) {
            log(&format!("peer {s} removed"));
        }
        self.peers = new;
    }

    /// One watch response: leases put or gone; what it changed of the peer table. Our
    /// own key gone or taken ends the session (the next one claims it again), and so
    /// does a new network config (the next one applies it).
    fn apply(&mut self, resp: &WatchResponse) -> Result<Vec<Change>, Stop> {
        if resp.canceled() || resp.compact_revision() > 0 {
            return Err(retry(format!(
                "etcd canceled the watch (compacted at {}: {}); listing again",
                resp.compact_revision(),
                resp.cancel_reason()
            )));
        }
        let Some(h) = self.held.as_ref() else {
            return Ok(Vec::new());
        };
        let (net, underlay) = (h.net.clone(), h.underlay.clone());
        let own = h.key.clone();
        let mut changes = Vec::new();
        let config = format!("{}/config", self.etcd.prefix);
        // Within one revision (a transaction), deletes first: moving a dual-stack key to
        // the plain one deletes the key that holds the subnet and puts the one that takes
        // it over, and a put seen first would be ignored as a second key for the subnet.
        let mut events: Vec<_> = resp.events().iter().collect();
        events.sort_by_key(|ev| {
            let revision = ev.kv().map_or(0, |kv| kv.mod_revision());
            (revision, ev.event_type() == EventType::Put)
        });
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key());
            let put = ev.event_type() == EventType::Put;
            if key == config {
                // A new network starts a new session, which applies it; one this node
                // cannot serve is refused and changes nothing.
                if self.judge(put.then(|| kv.value()), Some(&underlay))? != net {
                    return Err(retry(format!("{config} changed; starting over")));
                }
                continue;
            }
            let subnets = match net.lease_of_key(&self.etcd.prefix, &key) {
                None => continue,
                Some(Err(why)) => {
                    log(&format!("ignoring {key}: {why}"));
                    continue;
                }
                Some(Ok(subnets)) => subnets,
            };
            let s = net.primary(subnets);
            let attrs = put
                .then(|| etcd::bounded_value(&key, kv.value()).and_then(LeaseAttrs::parse))
                .flatten();
            if key == own {
                if attrs.is_none_or(|a| !self.names_us(&net, &underlay, &a)) {
                    return Err(retry(format!(
                        "our lease {s} was deleted or taken; claiming again"
                    )));
                }
                continue;
            }
            if let Some(k) = self.peers.get(&s).filter(|k| k.key != key) {
                if put {
                    log(&format!("ignoring {key}: {} holds {s}", k.key));
                }
                continue;
            }
            match self.peer(subnets, attrs.as_ref()) {
                Ok(mut k) => {
                    k.key = key.into_owned();
                    let others: BTreeMap<IpNetwork, Known> = (self.peers.iter())
                        .filter(|(o, _)| **o != s)
                        .map(|(o, k)| (*o, k.clone()))
                        .collect();
                    held6(&others, &mut k);
                    if self.peers.get(&s) != Some(&k) {
                        log(&added(&k));
                        let old = self.peers.insert(s, k.clone());
                        changes.extend(Known::changes(old.as_ref(), Some(&k)));
                    }
                }
                Err(why) => {
                    if put {
                        log(&format!("ignoring {key}: {why}"));
                    }
                    if let Some(k) = self.peers.remove(&s) {
                        log(&format!("peer {s} removed"));
                        changes.extend(Known::changes(Some(&k), None));
                    }
                }
            }
        }
        Ok(changes)
    }

    /// The device and the peers' state, as the table says: every peer (`changes` None:
    /// a new table, a reconcile), or only what a watch event changed, so an event costs
    /// what it changes, not the size of the cluster. What the kernel refuses is logged
    /// (once) and left to the next reconcile.
    async fn program(&mut self, changes: Option<&[Change]>) {
        let Some(h) = &self.held else { return };
        let (nl, u) = (&self.nl, &h.underlay);
        let pass = async {
            let link = match h.vxlan() {
                Some(v) => Some(node::ensure_vtep(nl, v, h.own()).await?),
                None => None,
            };
            let six = match (&h.vtep6, h.subnet6, h.mesh6()) {
                (Some(v), Some(s), Some(m)) => {
                    Some((m, Some(node::ensure_vtep(nl, v, IpNetwork::V6(s)).await?)))
                }
                (None, Some(_), Some(m)) if h.net.host_gw => Some((m, None)),
                _ => None,
            };
            let Some(changes) = changes else {
                let peers: Vec<Peer> = self.peers.values().map(|k| k.peer.clone()).collect();
                let v4 = node::program(nl, &h.mesh(), u, link.as_ref(), &peers).await;
                if let Some((m, link6)) = &six {
                    let peers6: Vec<Peer> = self
                        .peers
                        .values()
                        .filter_map(|k| k.peer6.clone())
                        .collect();
                    node::program(nl, m, u, link6.as_ref(), &peers6).await?;
                }
                return v4;
            };
            for c in changes {
                let Some(p) = c.old.as_ref().or(c.new.as_ref()) else {
                    continue;
                };
                let (mesh, link) = match (&p.subnet, &six) {
                    (s, _) if s.is_ipv4() == h.own().is_ipv4() => (h.mesh(), link.as_ref()),
                    (IpNetwork::V6(_), Some((m, link6))) => (*m, link6.as_ref()),
                    _ => continue,
                };
                if let Some(old) = &c.old {
                    // Its FDB entry stays while another peer (or its new self) uses it.
                    let shared = (self.peers.values())
                        .flat_map(|k| std::iter::once(&k.peer).chain(&k.peer6))
                        .any(|k| k.mac == old.mac && k.underlay_ip == old.underlay_ip);
                    node::remove_peer(nl, &mesh, u, link, old, shared).await?;
                }
                if let Some(new) = &c.new {
                    node::add_peer(nl, &mesh, u, link, new).await?;
                }
            }
            Ok(())
        };
        let outcome = match tokio::time::timeout(KERNEL_WAIT, pass).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("the kernel did not answer within {KERNEL_WAIT:?}")),
        };
        match outcome {
            Ok(()) => self.kernel_trouble = None,
            Err(e) if self.kernel_trouble.as_ref() != Some(&e) => {
                log(&format!("kernel: {e}; trying again at the next reconcile"));
                self.kernel_trouble = Some(e);
            }
            Err(_) => {}
        }
    }

    /// Puts back what is missing from the kernel (a hand-deleted entry, a removed device,
    /// what it refused before).
    async fn reconcile(&mut self) {
        let Some(h) = &self.held else { return };
        let nets = cluster_nets(&h.net, h.subnet, h.subnet6);
        let peers: Vec<Peer> = self.peers.values().map(|k| k.peer.clone()).collect();
        let peers6: Vec<Peer> = self
            .peers
            .values()
            .filter_map(|k| k.peer6.clone())
            .collect();
        let (nl, u) = (&self.nl, &h.underlay);
        let check = async {
            let mut m = node::differences(nl, &h.mesh(), u, h.vxlan(), h.own(), &peers).await?;
            if let (Some(s), Some(mesh6)) = (h.subnet6, h.mesh6()) {
                if h.vtep6.is_some() || h.net.host_gw {
                    let v6 = IpNetwork::V6(s);
                    let d = node::differences(nl, &mesh6, u, h.vtep6.as_ref(), v6, &peers6);
                    m.extend(d.await?);
                }
            }
            Ok::<_, libcni::net::Error>(m)
        };
        let missing = match tokio::time::timeout(KERNEL_WAIT, check).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => vec![format!("reading the kernel: {e}")],
            Err(_) => vec!["the kernel did not answer".into()],
        };
        if !missing.is_empty() || self.kernel_trouble.is_some() {
            if !missing.is_empty() {
                log(&format!("reconcile: {}; restoring", missing.join("; ")));
            }
            self.program(None).await;
        }
        (self.rules)
            .resync(&self.overlay.name, &nets, self.cluster_rules())
            .await;
    }

    /// Our key is still there and still ours (one read per reconcile).
    async fn own_key_present(&self, c: &mut Client, key: &str) -> Result<(), Stop> {
        let value = etcd::get(c, key).await.map_err(retry)?;
        let value = value.filter(|v| v.len() <= etcd::MAX_VALUE);
        let ours = |a: &LeaseAttrs| {
            (self.held.as_ref()).is_some_and(|h| self.names_us(&h.net, &h.underlay, a))
        };
        match value.as_deref().and_then(LeaseAttrs::parse) {
            Some(a) if ours(&a) => Ok(()),
            _ => Err(retry(format!("our lease {key} is gone; claiming again"))),
        }
    }
}

/// The MAC of the device `want` names when the device there (flanneld's) is as wanted in
/// all but its MAC: it stays as it is, with its MAC.
async fn reusable_mac(nl: &Netlink, want: &Vxlan) -> Option<[u8; 6]> {
    match node::reusable_vtep_mac(nl, want).await {
        Ok(Some(mac)) if mac != want.mac => {
            log(&format!(
                "keeping {} as it is, with its VTEP MAC {}",
                want.name,
                format_mac(&mac)
            ));
            Some(mac)
        }
        Ok(_) => None,
        Err(e) => {
            log(&format!("reading {}: {e}", want.name));
            None
        }
    }
}

/// The node's share of each family's cluster network, for the forward accept and the
/// node masquerade.
fn cluster_nets(
    net: &Network,
    subnet: Ipv4Network,
    subnet6: Option<Ipv6Network>,
) -> Vec<ClusterNet> {
    // An IPv6-only network's rules are IPv6 ones only.
    let mut nets: Vec<ClusterNet> = (net.ipv4.then_some(ClusterNet {
        network: IpNetwork::V4(net.network),
        subnet: IpNetwork::V4(subnet),
    }))
    .into_iter()
    .collect();
    if let (Some(n), Some(s)) = (&net.ipv6, subnet6) {
        nets.push(ClusterNet {
            network: IpNetwork::V6(n.network),
            subnet: IpNetwork::V6(s),
        });
    }
    nets
}

/// A lease's IPv6 side, for a node holding an IPv6 subnet: another subnet than ours, a
/// node's PublicIPv6 (not ours: `public6` is what we publish), flannel-v6.N's unicast
/// MAC (vxlan).
fn side6(
    h: &Held,
    public6: Option<Ipv6Addr>,
    s6: Option<Ipv6Network>,
    a: &LeaseAttrs,
) -> Result<Peer, String> {
    let (own, own_ip) = (h.subnet6.zip(h.underlay.ip6)).ok_or("this node has no IPv6 side")?;
    let s6 = s6.ok_or("its key names no IPv6 subnet")?;
    if s6 == own {
        return Err(format!("it names this node's subnet {s6}"));
    }
    let ip = a.public_ipv6().ok_or("no PublicIPv6")?;
    if ip == own_ip.ip() || Some(ip) == public6 {
        return Err(format!("it names this node's address {ip}"));
    }
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return Err(format!("PublicIPv6 {ip} is not a node's address"));
    }
    let mac = match h.net.host_gw {
        true => [0; 6],
        false => (a.vtep_mac6().filter(unicast)).ok_or("no unicast VtepMAC in BackendV6Data")?,
    };
    Ok(Peer {
        subnet: IpNetwork::V6(s6),
        underlay_ip: IpAddr::V6(ip),
        mac,
    })
}

fn added(k: &Known) -> String {
    let side = |p: &Peer| {
        format!(
            "{} at {} (VTEP {})",
            p.subnet,
            p.underlay_ip,
            format_mac(&p.mac)
        )
    };
    let v6 = k.peer6.as_ref().map(|p| format!(" and {}", side(p)));
    format!("peer {}{} added", side(&k.peer), v6.unwrap_or_default())
}

/// A VTEP MAC a peer may have: unicast and not all zeroes (that would be the device's
/// default destination: every unknown frame would go there).
fn unicast(m: &[u8; 6]) -> bool {
    m[0] & 1 == 0 && *m != [0; 6]
}

/// Drops `k`'s IPv6 side when another peer of `others` has its IPv6 subnet: a key
/// written for a subnet someone holds takes nothing over.
fn held6(others: &BTreeMap<IpNetwork, Known>, k: &mut Known) {
    let Some(p6) = &k.peer6 else { return };
    if let Some(o) =
        (others.values()).find(|o| o.peer6.as_ref().map(|p| p.subnet) == Some(p6.subnet))
    {
        log(&format!(
            "ignoring the IPv6 side of {}: {} holds {}",
            k.key, o.key, p6.subnet
        ));
        k.peer6 = None;
    }
}

/// One of `free` at random (flanneld spreads claims so nodes starting together rarely
/// race for the same subnet).
fn pick_one<T: Copy>(free: &[T]) -> Option<T> {
    use std::hash::{BuildHasher, Hasher};
    if free.is_empty() {
        return None;
    }
    // std's per-process random hasher keys are the randomness; no crate needed for this.
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    free.get((r % free.len() as u64) as usize).copied()
}
