//! The agent's etcd calls, each bounded in time and each failing with a line that says
//! which call failed: connect (TLS from flannel's file fields), read the network config,
//! list the leases with the revision they were read at, claim a subnet (create if
//! absent), renew or remove a lease key, keep an etcd lease alive, and watch.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use ipnetwork::Ipv4Network;
use vxlan_overlay::config::Etcd;

use crate::flannel::{subnet_of_key, LeaseAttrs};

/// No single call waits longer; an etcd that does not answer is an outage.
pub const CALL_WAIT: Duration = Duration::from_secs(5);

pub type Result<T> = std::result::Result<T, String>;

async fn bounded<T>(
    what: &str,
    f: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(CALL_WAIT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("etcd {what}: {e}")),
        Err(_) => Err(format!("etcd {what}: no answer within {CALL_WAIT:?}")),
    }
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
    pub subnet: Ipv4Network,
    /// None when the value is not one we read (another backend's, or damaged): the
    /// subnet is taken all the same.
    pub attrs: Option<LeaseAttrs>,
    pub mod_revision: i64,
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
}

/// The leases under `<prefix>/subnets/`; keys that are not flannel's are passed over.
pub async fn leases(c: &mut Client, prefix: &str) -> Result<Listing> {
    let dir = format!("{prefix}/subnets/");
    let r = bounded(
        &format!("list {dir}"),
        c.get(dir.as_str(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let leases = r
        .kvs()
        .iter()
        .filter_map(|kv| {
            Some(Listed {
                subnet: subnet_of_key(prefix, std::str::from_utf8(kv.key()).ok()?)?,
                attrs: LeaseAttrs::parse(kv.value()),
                mod_revision: kv.mod_revision(),
            })
        })
        .collect();
    let revision = r.header().map_or(0, |h| h.revision());
    Ok(Listing { leases, revision })
}

pub async fn grant(c: &mut Client, ttl: i64) -> Result<i64> {
    Ok(bounded("lease grant", c.lease_grant(ttl, None)).await?.id())
}

/// Whether etcd still holds lease `id`.
pub async fn alive(c: &mut Client, id: i64) -> Result<bool> {
    Ok(
        bounded("lease time-to-live", c.lease_time_to_live(id, None))
            .await?
            .ttl()
            > 0,
    )
}

pub async fn keep_alive(c: &mut Client, id: i64) -> Result<(LeaseKeeper, LeaseKeepAliveStream)> {
    bounded("lease keep-alive", c.lease_keep_alive(id)).await
}

/// Writes `key` only if no one holds it: two nodes never get one subnet.
pub async fn create(c: &mut Client, key: &str, value: &str, lease: i64) -> Result<bool> {
    let unheld = Compare::version(key, CompareOp::Equal, 0);
    put_if(c, unheld, key, value, lease, "create").await
}

/// Writes `key` if it is still as listed (`mod_revision`): our own lease, found by our
/// underlay address, and not someone's newer claim.
pub async fn replace(
    c: &mut Client,
    key: &str,
    value: &str,
    lease: i64,
    mod_revision: i64,
) -> Result<bool> {
    let as_listed = Compare::mod_revision(key, CompareOp::Equal, mod_revision);
    put_if(c, as_listed, key, value, lease, "replace").await
}

/// Puts `key` under `lease` in one transaction if `cmp` holds; whether it did.
async fn put_if(
    c: &mut Client,
    cmp: Compare,
    key: &str,
    value: &str,
    lease: i64,
    what: &str,
) -> Result<bool> {
    let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
    let txn = Txn::new().when([cmp]).and_then([put]);
    Ok(bounded(&format!("{what} {key}"), c.txn(txn))
        .await?
        .succeeded())
}

pub async fn delete(c: &mut Client, key: &str) -> Result<()> {
    bounded(&format!("delete {key}"), c.delete(key, None)).await?;
    Ok(())
}

pub async fn get(c: &mut Client, key: &str) -> Result<Option<Vec<u8>>> {
    let r = bounded(&format!("get {key}"), c.get(key, None)).await?;
    Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
}

/// Every change under `<prefix>/` (the leases and the network config) from `revision` on.
pub async fn watch(c: &mut Client, prefix: &str, revision: i64) -> Result<WatchStream> {
    let dir = format!("{prefix}/");
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision);
    bounded(&format!("watch {dir}"), c.watch(dir.as_str(), Some(opts))).await
}
