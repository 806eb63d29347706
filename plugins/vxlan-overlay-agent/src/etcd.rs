//! The agent's etcd calls, each bounded in time and each failing with a line that says
//! which call failed: connect (TLS from flannel's file fields, etcd's user and password),
//! read the network config, list the leases with the revision they were read at, claim a
//! subnet (create if absent), renew or remove a lease key, keep an etcd lease alive, and
//! watch.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KvClient,
    LeaseKeepAliveResponse, LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};
use ipnetwork::{Ipv4Network, Ipv6Network};
use tokio::time::error::Elapsed;
use vxlan_overlay::config::Etcd;

use crate::flannel::{LeaseAttrs, Network};
use crate::log::log;

/// No single call waits longer; an etcd that does not answer is an outage.
pub const CALL_WAIT: Duration = Duration::from_secs(5);

pub type Result<T> = std::result::Result<T, String>;

async fn bounded<T>(
    what: &str,
    f: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    outcome(what, tokio::time::timeout(CALL_WAIT, f).await)
}

/// A call's outcome within CALL_WAIT, as a line naming the call when it failed.
fn outcome<T>(
    what: &str,
    r: std::result::Result<std::result::Result<T, etcd_client::Error>, Elapsed>,
) -> Result<T> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("etcd {what}: {e}")),
        Err(_) => Err(format!("etcd {what}: no answer within {CALL_WAIT:?}")),
    }
}

/// The most one response may hold (gRPC's default, 4 MiB, is four lease-sized values of
/// etcd's largest): anyone may write large values, so listings go in pages below it.
const MAX_RESPONSE: usize = 16 << 20;
/// A lease value is about 150 bytes, a network config a few hundred: anything over this
/// is neither, and is ignored.
pub const MAX_VALUE: usize = 64 << 10;
/// Keys per page of a listing; halved while a page is over MAX_RESPONSE.
const PAGE: i64 = 512;

/// The KV calls, with responses up to MAX_RESPONSE.
fn kv(c: &Client) -> KvClient {
    c.kv_client().max_decoding_message_size(MAX_RESPONSE)
}

/// Whether a call failed because its response was over MAX_RESPONSE (tonic's check).
fn too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("message length too large"))
}

/// A value, unless it is over MAX_VALUE (then said in a log line naming the key).
pub fn bounded_value<'a>(key: &str, value: &'a [u8]) -> Option<&'a [u8]> {
    if value.len() > MAX_VALUE {
        log(&format!(
            "ignoring {key}: its value is {} bytes, over {MAX_VALUE}",
            value.len()
        ));
        return None;
    }
    Some(value)
}

/// The key after `key` in etcd's order.
fn after(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

/// The end of the range of keys starting with `prefix`.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// HTTP/2 pings: a silent etcd ends the session within interval + timeout. etcd closes
/// a connection pinged more often than every 5 s (`--grpc-keepalive-min-time`).
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_WAIT: Duration = Duration::from_secs(5);

/// The connection options: keepalive pings, and TLS when the store names certificates.
/// Read once, at start.
pub fn options(e: &Etcd) -> Result<ConnectOptions> {
    // An etcd member cut off from its leader answers nothing: refused, so we move on.
    let opts = ConnectOptions::new()
        .with_connect_timeout(CALL_WAIT)
        .with_keep_alive(PING_EVERY, PING_WAIT)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    // etcd's auth tokens expire (simple tokens after 5 minutes unused): renewed on demand
    // rather than ending the session.
    let opts = match &e.username {
        Some(user) => opts
            .with_user(user.clone(), e.password.clone().unwrap_or_default())
            .with_auto_token_refresh(true),
        None => opts,
    };
    if e.cert_file.is_none() && e.key_file.is_none() && e.trusted_ca_file.is_none() {
        if let Some(tls) = e.endpoints.iter().find(|u| u.starts_with("https://")) {
            return Err(format!(
                "store.endpoints: {tls} needs trustedCAFile (no system roots are read)"
            ));
        }
        return Ok(opts);
    }
    if let Some(plain) = e.endpoints.iter().find(|u| u.starts_with("http://")) {
        return Err(format!(
            "store.endpoints: {plain} is plain http but the store names certificates"
        ));
    }
    let read = |p: &Path| std::fs::read(p).map_err(|err| format!("reading {}: {err}", p.display()));
    let mut tls = TlsOptions::new();
    if let Some(ca) = &e.trusted_ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    match (&e.cert_file, &e.key_file) {
        (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?)),
        (None, None) => {}
        _ => return Err("store: certFile and keyFile go together".into()),
    }
    Ok(opts.with_tls(tls))
}

pub async fn connect(e: &Etcd, opts: &ConnectOptions) -> Result<Client> {
    bounded("connect", Client::connect(&e.endpoints, Some(opts.clone()))).await
}

/// One lease as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The key as written (a dual-stack key names more than the subnet).
    pub key: String,
    pub subnet: Ipv4Network,
    /// The IPv6 subnet of a dual-stack key.
    pub subnet6: Option<Ipv6Network>,
    /// None when the value is not one we read (another backend's, or damaged): the
    /// subnet is taken all the same.
    pub attrs: Option<LeaseAttrs>,
    pub mod_revision: i64,
    /// Of two keys naming one subnet, the older one holds it.
    pub create_revision: i64,
    /// The etcd lease the key is bound to; 0: none, a reservation (flannel's: written by
    /// an administrator, it lasts until deleted).
    pub lease: i64,
}

/// Every lease, and the revision they were read at (the watch starts after it).
pub struct Listing {
    pub leases: Vec<Listed>,
    pub revision: i64,
}

impl Listing {
    pub fn taken(&self) -> Vec<Ipv4Network> {
        self.leases.iter().map(|l| l.subnet).collect()
    }

    pub fn taken6(&self) -> Vec<Ipv6Network> {
        self.leases.iter().filter_map(|l| l.subnet6).collect()
    }
}

/// The leases of `net` under `<prefix>/subnets/`, read in pages at one revision; keys
/// that name none of its subnets exactly, and values over MAX_VALUE, are passed over,
/// each with a log line.
pub async fn leases(c: &mut Client, prefix: &str, net: &Network) -> Result<Listing> {
    let dir = format!("{prefix}/subnets/");
    let end = range_end(&dir);
    let mut kvc = kv(c);
    let mut from = dir.clone().into_bytes();
    let (mut revision, mut limit) = (0, PAGE);
    let mut leases = Vec::new();
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(limit);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let what = format!("list {dir} from {}", String::from_utf8_lossy(&from));
        let r = match tokio::time::timeout(CALL_WAIT, kvc.get(from.clone(), Some(opts))).await {
            Ok(Err(e)) if too_large(&e) && limit > 1 => {
                limit /= 2;
                continue;
            }
            Ok(Err(e)) if too_large(&e) => {
                // One key and value over MAX_RESPONSE: passed over by its key.
                let opts = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(1)
                    .with_keys_only()
                    .with_revision(revision);
                let r = bounded(&what, kvc.get(from.clone(), Some(opts))).await?;
                let Some(kv) = r.kvs().first() else { break };
                let key = String::from_utf8_lossy(kv.key());
                log(&format!("ignoring {key}: over {MAX_RESPONSE} bytes"));
                from = after(kv.key());
                continue;
            }
            r => outcome(&what, r)?,
        };
        if revision == 0 {
            revision = r.header().map_or(0, |h| h.revision());
        }
        for kv in r.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            match net.lease_of_key(prefix, &key) {
                Some(Ok((subnet, subnet6))) => leases.push(Listed {
                    attrs: bounded_value(&key, kv.value()).and_then(LeaseAttrs::parse),
                    key: key.into_owned(),
                    subnet,
                    subnet6,
                    mod_revision: kv.mod_revision(),
                    create_revision: kv.create_revision(),
                    lease: kv.lease(),
                }),
                Some(Err(why)) => log(&format!("ignoring {key}: {why}")),
                None => {}
            }
        }
        match r.kvs().last() {
            Some(last) if r.more() => from = after(last.key()),
            _ => break,
        }
        limit = PAGE;
    }
    Ok(Listing { leases, revision })
}

pub async fn grant(c: &mut Client, ttl: i64) -> Result<i64> {
    Ok(bounded("lease grant", c.lease_grant(ttl, None)).await?.id())
}

/// Lease `id`'s remaining and granted TTL, in seconds (the remaining one is not
/// positive once etcd has dropped it).
pub async fn time_to_live(c: &mut Client, id: i64) -> Result<(i64, i64)> {
    let r = bounded("lease time-to-live", c.lease_time_to_live(id, None)).await?;
    Ok((r.ttl(), r.granted_ttl()))
}

/// Whether etcd still holds lease `id`.
pub async fn alive(c: &mut Client, id: i64) -> Result<bool> {
    Ok(time_to_live(c, id).await?.0 > 0)
}

/// The next keep-alive answer; never, when no lease is kept alive (a reservation).
pub async fn next_kept(
    kept: &mut Option<LeaseKeepAliveStream>,
) -> std::result::Result<Option<LeaseKeepAliveResponse>, etcd_client::Error> {
    match kept {
        Some(s) => s.message().await,
        None => std::future::pending().await,
    }
}

pub async fn keep_alive(c: &mut Client, id: i64) -> Result<(LeaseKeeper, LeaseKeepAliveStream)> {
    bounded("lease keep-alive", c.lease_keep_alive(id)).await
}

/// Writes `key` only if no one holds it: two nodes never get one subnet.
pub async fn create(c: &mut Client, key: &str, value: &str, lease: i64) -> Result<bool> {
    let unheld = Compare::version(key, CompareOp::Equal, 0);
    put_if(c, vec![unheld], key, value, Some(lease), None, "create").await
}

/// Writes `key` if `listed` is still as listed (`mod_revision`): our own lease, found by
/// our underlay address, and not someone's newer claim. When `listed` is another key
/// naming the subnet (flanneld's dual-stack key), it goes in the same transaction, and
/// only if no one holds `key`. `lease` None: a reservation, written without a lease.
pub async fn replace(
    c: &mut Client,
    listed: &str,
    key: &str,
    value: &str,
    lease: Option<i64>,
    mod_revision: i64,
) -> Result<bool> {
    let as_listed = Compare::mod_revision(listed, CompareOp::Equal, mod_revision);
    if listed == key {
        return put_if(c, vec![as_listed], key, value, lease, None, "replace").await;
    }
    let unheld = Compare::version(key, CompareOp::Equal, 0);
    let moved = TxnOp::delete(listed, None);
    put_if(
        c,
        vec![as_listed, unheld],
        key,
        value,
        lease,
        Some(moved),
        "replace",
    )
    .await
}

/// Puts `key` under `lease` (None: with no lease) and runs `also`, in one transaction if
/// `cmp` holds; whether it did.
async fn put_if(
    c: &mut Client,
    cmp: Vec<Compare>,
    key: &str,
    value: &str,
    lease: Option<i64>,
    also: Option<TxnOp>,
    what: &str,
) -> Result<bool> {
    let put = TxnOp::put(key, value, lease.map(|l| PutOptions::new().with_lease(l)));
    let ops: Vec<TxnOp> = std::iter::once(put).chain(also).collect();
    let txn = Txn::new().when(cmp).and_then(ops);
    Ok(bounded(&format!("{what} {key}"), c.txn(txn))
        .await?
        .succeeded())
}

pub async fn delete(c: &mut Client, key: &str) -> Result<()> {
    bounded(&format!("delete {key}"), c.delete(key, None)).await?;
    Ok(())
}

pub async fn get(c: &mut Client, key: &str) -> Result<Option<Vec<u8>>> {
    let r = bounded(&format!("get {key}"), kv(c).get(key, None)).await?;
    Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
}

/// Every change under `<prefix>/` (the leases and the network config) from `revision` on.
pub async fn watch(c: &mut Client, prefix: &str, revision: i64) -> Result<WatchStream> {
    let dir = format!("{prefix}/");
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision);
    let mut w = c.watch_client().max_decoding_message_size(MAX_RESPONSE);
    bounded(&format!("watch {dir}"), w.watch(dir.as_str(), Some(opts))).await
}
