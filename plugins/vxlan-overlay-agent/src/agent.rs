//! One node's agent. A session with etcd reads the network, claims this node's subnet
//! lease (its own again after a restart), makes the VXLAN device and the subnet file,
//! lists the leases and programs every peer, then follows the watch from the listed
//! revision while it renews the etcd lease and reconciles the kernel. When a session
//! fails (etcd down, a compacted watch, our lease gone, the network config changed) the
//! kernel stays as it is and the next one starts over after a bounded backoff. What the
//! kernel refuses is logged and tried again at the next reconcile; it never ends a
//! session.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, WatchResponse};
use ipnetwork::Ipv4Network;
use libcni::net::{format_mac, Netlink, Vxlan};
use vxlan_overlay::config::{vtep_name, Etcd, Overlay, Store};
use vxlan_overlay::local::Local;
use vxlan_overlay::node::{self, Mesh, Peer, Underlay, VXLAN_OVERHEAD};
use vxlan_overlay::subnet_env::SubnetEnv;

use crate::etcd;
use crate::flannel::{lease_key, subnet_of_key, LeaseAttrs, Network};

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

pub fn log(msg: &str) {
    eprintln!("vxlan-overlay-agent: {msg}");
}

/// What this node holds once a session has claimed its lease.
struct Held {
    net: Network,
    subnet: Ipv4Network,
    underlay: Underlay,
    vtep: Vxlan,
}

impl Held {
    fn mesh(&self) -> Mesh {
        Mesh {
            network: self.net.network,
            direct_routing: self.net.direct_routing,
        }
    }
}

pub struct Agent {
    overlay: Overlay,
    etcd: Etcd,
    options: ConnectOptions,
    nl: Netlink,
    local: Local,
    reconcile_every: Duration,
    held: Option<Held>,
    /// The peers as programmed, by subnet.
    peers: BTreeMap<Ipv4Network, Peer>,
    /// The etcd lease our key is bound to.
    lease: Option<i64>,
    /// The last kernel failure logged (each is said once, not at every reconcile).
    kernel_trouble: Option<String>,
}

impl Agent {
    /// The agent of `overlay`'s etcd store: its connection options, saved state and
    /// netlink connection, made before anything is claimed.
    pub fn new(overlay: Overlay, reconcile_every: Duration) -> Result<Agent, String> {
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
            held: None,
            peers: BTreeMap::new(),
            lease: None,
            kernel_trouble: None,
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
        let net = self.network(&mut c).await?;
        let underlay = node::underlay(&self.nl, self.overlay.underlay_interface.as_deref())
            .await
            .map_err(|e| retry(format!("underlay: {e}")))?;
        let lease = self.etcd_lease(&mut c).await?;
        let listing = etcd::leases(&mut c, &prefix).await.map_err(retry)?;
        let (subnet, listing) = self.claim(&mut c, &net, &underlay, lease, listing).await?;
        self.settle(net, underlay, subnet).await?;
        self.set_peers(&listing);
        self.program().await;
        let mut watch = etcd::watch(&mut c, &prefix, listing.revision + 1)
            .await
            .map_err(retry)?;
        let (mut keeper, mut kept) = etcd::keep_alive(&mut c, lease).await.map_err(retry)?;
        log(&format!(
            "holding {subnet}, {} peers, watching from revision {}",
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
                    if self.apply(&resp)? {
                        self.program().await;
                    }
                }
                _ = renew.tick() => {
                    // Two renewals unanswered: the lease is at risk, start over.
                    if answered.elapsed() > ttl * 2 / 3 {
                        return Err(retry(format!("etcd has not renewed our lease for {:?}", answered.elapsed())));
                    }
                    keeper.keep_alive().await.map_err(|e| retry(format!("etcd lease keep-alive: {e}")))?;
                }
                k = kept.message() => {
                    let r = k
                        .map_err(|e| retry(format!("etcd lease keep-alive: {e}")))?
                        .ok_or_else(|| retry("etcd ended the lease keep-alive".into()))?;
                    if r.ttl() <= 0 {
                        self.lease = None;
                        return Err(retry(format!("our etcd lease {lease:x} expired; claiming {subnet} again")));
                    }
                    answered = Instant::now();
                }
                _ = reconcile.tick() => {
                    self.reconcile().await;
                    self.own_key_present(&mut c, subnet).await?;
                    self.same_network(&mut c).await?;
                }
            }
        }
    }

    /// `<prefix>/config` as this session read it: a change starts a new session, which
    /// applies it (or stops the agent if our subnet is no longer in it). The watch sees
    /// changes at once; this catches one made between the session's read and its list.
    async fn same_network(&self, c: &mut Client) -> Result<(), Stop> {
        let net = self.network(c).await?;
        match &self.held {
            Some(h) if h.net != net => Err(retry(format!(
                "{}/config changed; starting over",
                self.etcd.prefix
            ))),
            _ => Ok(()),
        }
    }

    /// `<prefix>/config`, with flannel's defaults, checked against the plugin config.
    async fn network(&self, c: &mut Client) -> Result<Network, Stop> {
        let key = format!("{}/config", self.etcd.prefix);
        let raw = etcd::get(c, &key).await.map_err(retry)?.ok_or_else(|| {
            retry(format!(
                "{key} is not written yet (etcdctl put {key} '{{\"Network\":…}}')"
            ))
        })?;
        let net = Network::parse(&raw).map_err(|e| retry(format!("{key}: {e}")))?;
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
        if let Some(h) = self.held.as_ref().filter(|h| !net.fits(h.subnet)) {
            return Err(Stop::Fatal(format!(
                "{key} changed: this node's {} is no longer one of its subnets",
                h.subnet
            )));
        }
        Ok(net)
    }

    /// The etcd lease our key lives under: the one we had while etcd still has it.
    async fn etcd_lease(&mut self, c: &mut Client) -> Result<i64, Stop> {
        if let Some(id) = self.lease {
            if etcd::alive(c, id).await.map_err(retry)? {
                return Ok(id);
            }
        }
        let ttl = i64::try_from(self.etcd.lease_ttl).unwrap_or(i64::MAX);
        let id = etcd::grant(c, ttl).await.map_err(retry)?;
        self.lease = Some(id);
        Ok(id)
    }

    /// The subnet this node had before: the one it saved, or the one in the subnet file
    /// (a node moving from flanneld keeps its subnet).
    fn previous_subnet(&self) -> Option<Ipv4Network> {
        self.local.subnet.or_else(|| {
            SubnetEnv::read(&self.overlay.subnet_file)
                .ok()
                .map(|e| e.node_subnet())
        })
    }

    /// flanneld's order: the lease holding our underlay address; else our previous subnet
    /// if free; else one at random among the first hundred free. Created only if absent.
    async fn claim(
        &mut self,
        c: &mut Client,
        net: &Network,
        underlay: &Underlay,
        lease: i64,
        mut listing: etcd::Listing,
    ) -> Result<(Ipv4Network, etcd::Listing), Stop> {
        let prefix = self.etcd.prefix.clone();
        let attrs = LeaseAttrs::vxlan(underlay.ip, net.vni, self.local.mac()).to_json();
        // Subnets another node took while we tried: not tried again in this claim.
        let mut lost: Vec<Ipv4Network> = Vec::new();
        for _ in 0..CLAIM_TRIES {
            let ours: Vec<&etcd::Listed> = listing
                .leases
                .iter()
                .filter(|l| l.attrs.as_ref().is_some_and(|a| a.public_ip == underlay.ip))
                .collect();
            if let Some(l) = ours.iter().find(|l| net.fits(l.subnet)) {
                let key = lease_key(&prefix, l.subnet);
                if etcd::replace(c, &key, &attrs, lease, l.mod_revision)
                    .await
                    .map_err(retry)?
                {
                    log(&format!(
                        "took back {}: its lease names {}",
                        l.subnet, underlay.ip
                    ));
                    return Ok((l.subnet, listing));
                }
                listing = etcd::leases(c, &prefix).await.map_err(retry)?;
                continue;
            } else {
                for l in ours {
                    log(&format!(
                        "removing our lease {}: not a subnet of the network any more",
                        l.subnet
                    ));
                    etcd::delete(c, &lease_key(&prefix, l.subnet))
                        .await
                        .map_err(retry)?;
                }
            }
            let mut taken = listing.taken();
            taken.extend(&lost);
            let previous = self
                .previous_subnet()
                .filter(|s| net.fits(*s) && !taken.iter().any(|t| t.contains(s.network())));
            let pick = previous.or_else(|| pick_one(&net.free(&taken, 100)));
            let Some(s) = pick else {
                return Err(retry(format!(
                    "no free /{} left in {}",
                    net.subnet_len, net.network
                )));
            };
            if etcd::create(c, &lease_key(&prefix, s), &attrs, lease)
                .await
                .map_err(retry)?
            {
                let how = if previous == Some(s) {
                    ", as before"
                } else {
                    ""
                };
                log(&format!("claimed {s} for {}{how}", underlay.ip));
                return Ok((s, listing));
            }
            log(&format!(
                "{s} was claimed by another node meanwhile; listing again"
            ));
            lost.push(s);
            listing = etcd::leases(c, &prefix).await.map_err(retry)?;
        }
        Err(retry(format!("no subnet claimed in {CLAIM_TRIES} tries")))
    }

    /// Makes the device and the subnet file match what this node holds, and saves it.
    async fn settle(
        &mut self,
        net: Network,
        underlay: Underlay,
        subnet: Ipv4Network,
    ) -> Result<(), Stop> {
        if let Some(h) = self.held.as_ref().filter(|h| h.subnet != subnet) {
            log(&format!(
                "this node's subnet changed from {} to {subnet}: containers on the old one lose the overlay",
                h.subnet
            ));
        }
        let fits = underlay.link.mtu.saturating_sub(VXLAN_OVERHEAD);
        let mtu = net.mtu.or(self.overlay.mtu).unwrap_or(fits);
        if mtu > fits {
            return Err(Stop::Fatal(format!(
                "MTU {mtu} does not fit the underlay {} (MTU {}, at most {fits} in VXLAN)",
                underlay.link.name, underlay.link.mtu
            )));
        }
        let vtep = Vxlan {
            name: vtep_name(net.vni),
            vni: net.vni,
            port: net.port,
            local: underlay.ip,
            dev: underlay.link.index,
            mac: self.local.mac(),
            mtu,
        };
        // A VNI change renames the device: the old one goes, with its peers' state, also
        // when the change happened while we were stopped (the saved VNI names it).
        let old = (self.held.as_ref().map(|h| h.vtep.name.clone()))
            .or(self.local.vni.map(vtep_name))
            .filter(|old| *old != vtep.name);
        if let Some(old) = old {
            if let Err(e) = self.nl.delete_link(&old).await {
                log(&format!("removing the old {old}: {e}"));
            }
        }
        if self.local.subnet != Some(subnet) || self.local.vni != Some(net.vni) {
            self.local.subnet = Some(subnet);
            self.local.vni = Some(net.vni);
            // Not saved: a restart claims by our address's lease first anyway, and
            // teardown falls back to the config's VNI.
            if let Err(e) = self.local.save(&Local::path(&self.overlay)) {
                log(&format!("saving our state: {e}"));
            }
        }
        // FLANNEL_SUBNET is the gateway (the first address) with the subnet's prefix.
        let gateway = Ipv4Network::new(subnet.nth(1).unwrap_or(subnet.network()), subnet.prefix())
            .expect("a prefix from a subnet");
        let env = SubnetEnv {
            network: net.network,
            subnet: gateway,
            mtu,
            // Masquerade is the plugin's (ipMasq), as with flanneld without --ip-masq.
            ip_masq: false,
        };
        if SubnetEnv::read(&self.overlay.subnet_file).ok().as_ref() != Some(&env) {
            env.write(&self.overlay.subnet_file)
                .map_err(|e| retry(e.to_string()))?;
            log(&format!("wrote {}", self.overlay.subnet_file.display()));
        }
        self.held = Some(Held {
            net,
            subnet,
            underlay,
            vtep,
        });
        Ok(())
    }

    /// The peer a lease names: another node's vxlan lease of one of the network's
    /// subnets, with a unicast VTEP MAC (an all-zero one would be the device's default
    /// destination: every unknown frame would go there).
    fn peer(&self, s: Ipv4Network, a: &LeaseAttrs) -> Option<Peer> {
        let h = self.held.as_ref()?;
        let of_network = s.prefix() == h.net.subnet_len && h.net.network.contains(s.network());
        let ip = a.public_ip;
        let routable =
            !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast());
        if s == h.subnet || ip == h.underlay.ip || !of_network || !routable {
            return None;
        }
        let mac = a.vtep_mac().filter(|m| m[0] & 1 == 0 && *m != [0; 6])?;
        Some(Peer {
            subnet: s,
            underlay_ip: a.public_ip,
            mac,
        })
    }

    /// Replaces the peer table, logging each change.
    fn set_peers(&mut self, listing: &etcd::Listing) {
        let new: BTreeMap<Ipv4Network, Peer> = listing
            .leases
            .iter()
            .filter_map(|l| Some((l.subnet, self.peer(l.subnet, l.attrs.as_ref()?)?)))
            .collect();
        for (s, p) in &new {
            if self.peers.get(s) != Some(p) {
                log(&added(p));
            }
        }
        for s in self.peers.keys().filter(|s| !new.contains_key(s)) {
            log(&format!("peer {s} removed"));
        }
        self.peers = new;
    }

    /// One watch response: leases put or gone; whether the peer table changed. Our own
    /// key gone or taken ends the session (the next one claims it again), and so does a
    /// new network config (the next one applies it).
    fn apply(&mut self, resp: &WatchResponse) -> Result<bool, Stop> {
        if resp.canceled() || resp.compact_revision() > 0 {
            return Err(retry(format!(
                "etcd canceled the watch (compacted at {}: {}); listing again",
                resp.compact_revision(),
                resp.cancel_reason()
            )));
        }
        let own = self.held.as_ref().map(|h| (h.subnet, h.underlay.ip));
        let mut changed = false;
        let config = format!("{}/config", self.etcd.prefix);
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = std::str::from_utf8(kv.key()).unwrap_or_default();
            if key == config {
                return Err(retry(format!("{config} changed; starting over")));
            }
            let Some(s) = subnet_of_key(&self.etcd.prefix, key) else {
                continue;
            };
            let attrs = match ev.event_type() {
                EventType::Put => LeaseAttrs::parse(kv.value()),
                EventType::Delete => None,
            };
            if let Some((_, ip)) = own.filter(|(subnet, _)| *subnet == s) {
                if attrs.as_ref().is_none_or(|a| a.public_ip != ip) {
                    return Err(retry(format!(
                        "our lease {s} was deleted or taken; claiming again"
                    )));
                }
                continue;
            }
            match attrs.and_then(|a| self.peer(s, &a)) {
                Some(p) => {
                    if self.peers.get(&s) != Some(&p) {
                        log(&added(&p));
                        self.peers.insert(s, p);
                        changed = true;
                    }
                }
                None => {
                    if self.peers.remove(&s).is_some() {
                        log(&format!("peer {s} removed"));
                        changed = true;
                    }
                }
            }
        }
        Ok(changed)
    }

    /// The device and every peer's state, as the table says. What the kernel refuses is
    /// logged (once) and left to the next reconcile.
    async fn program(&mut self) {
        let Some(h) = &self.held else { return };
        let peers: Vec<Peer> = self.peers.values().cloned().collect();
        let pass = async {
            let link = node::ensure_vtep(&self.nl, &h.vtep, h.subnet).await?;
            node::program(&self.nl, &h.mesh(), &h.underlay, &link, &peers).await
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
        let peers: Vec<Peer> = self.peers.values().cloned().collect();
        let mesh = h.mesh();
        let check = node::differences(&self.nl, &mesh, &h.underlay, &h.vtep, h.subnet, &peers);
        let missing = match tokio::time::timeout(KERNEL_WAIT, check).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => vec![format!("reading the kernel: {e}")],
            Err(_) => vec!["the kernel did not answer".into()],
        };
        if !missing.is_empty() || self.kernel_trouble.is_some() {
            if !missing.is_empty() {
                log(&format!("reconcile: {}; restoring", missing.join("; ")));
            }
            self.program().await;
        }
    }

    /// Our key is still there and still ours (one read per reconcile).
    async fn own_key_present(&self, c: &mut Client, subnet: Ipv4Network) -> Result<(), Stop> {
        let key = lease_key(&self.etcd.prefix, subnet);
        let value = etcd::get(c, &key).await.map_err(retry)?;
        let ip = self.held.as_ref().map(|h| h.underlay.ip);
        match value.as_deref().and_then(LeaseAttrs::parse) {
            Some(a) if Some(a.public_ip) == ip => Ok(()),
            _ => Err(retry(format!("our lease {subnet} is gone; claiming again"))),
        }
    }
}

fn added(p: &Peer) -> String {
    format!(
        "peer {} at {} (VTEP {}) added",
        p.subnet,
        p.underlay_ip,
        format_mac(&p.mac)
    )
}

/// One of `free` at random (flanneld spreads claims so nodes starting together rarely
/// race for the same subnet).
fn pick_one(free: &[Ipv4Network]) -> Option<Ipv4Network> {
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
