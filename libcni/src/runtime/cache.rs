//! The result cache, in upstream libcni's format, so its runtimes and ours read each
//! other's files: `<cacheDir>/results/<network>-<containerID>-<ifname>`, JSON of kind
//! `cniCacheV1` with the network list base64-encoded and the last plugin's result.
//!
//! Upstream's name is ambiguous ("a-b", "c" and "a", "b-c" share one) and can exceed a
//! file name's 255 bytes. An entry names its attachment, so a file is only ever read as
//! the attachment it names; when upstream's name is too long or held by another
//! attachment, the entry goes under a second name that cannot collide (shortened parts
//! and a hash, with '~', which no valid name holds). Files are private and written whole
//! (libcni::files).

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{RuntimeConf, RuntimeError};
use crate::files;
use crate::names::{short_part, stable_hash};

const KIND: &str = "cniCacheV1";

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    kind: String,
    #[serde(rename = "containerId")]
    container_id: String,
    /// The network list's bytes, base64 (Go's encoding of []byte).
    config: String,
    #[serde(rename = "ifName")]
    ifname: String,
    #[serde(rename = "networkName")]
    network: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    netns: String,
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    cni_args: Vec<[String; 2]>,
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    capability_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
}

/// One attachment found in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAttachment {
    pub network: String,
    pub runtime: RuntimeConf,
    /// The network list as it was when the attachment was added.
    pub config: Vec<u8>,
}

fn results_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("results")
}

/// Where an attachment's entry may be: upstream's name (when it fits), then ours.
fn candidates(cache_dir: &Path, network: &str, rt: &RuntimeConf) -> Vec<PathBuf> {
    let dir = results_dir(cache_dir);
    let upstream = format!("{network}-{}-{}", rt.container_id, rt.ifname);
    let ours = format!(
        "{}-{}-{}~{:016x}",
        short_part(network),
        short_part(&rt.container_id),
        rt.ifname,
        stable_hash(&[network, &rt.container_id, &rt.ifname])
    );
    let mut out = Vec::new();
    if upstream.len() <= 255 {
        out.push(dir.join(upstream));
    }
    out.push(dir.join(ours));
    out
}

fn names(e: &Entry, network: &str, rt: &RuntimeConf) -> bool {
    e.network == network && e.container_id == rt.container_id && e.ifname == rt.ifname
}

/// The file holding this attachment's entry, if there is one.
fn find(cache_dir: &Path, network: &str, rt: &RuntimeConf) -> Option<(PathBuf, Entry)> {
    candidates(cache_dir, network, rt)
        .into_iter()
        .find_map(|p| read(&p).filter(|e| names(e, network, rt)).map(|e| (p, e)))
}

/// Records an attachment and its result, replacing its previous entry.
pub fn write(
    cache_dir: &Path,
    network: &str,
    config: &[u8],
    rt: &RuntimeConf,
    result: &Value,
) -> Result<(), RuntimeError> {
    let entry = Entry {
        kind: KIND.to_string(),
        container_id: rt.container_id.clone(),
        config: base64::engine::general_purpose::STANDARD.encode(config),
        ifname: rt.ifname.clone(),
        network: network.to_string(),
        netns: rt.netns.clone(),
        cni_args: rt
            .args
            .iter()
            .map(|(k, v)| [k.clone(), v.clone()])
            .collect(),
        capability_args: rt.capability_args.clone(),
        result: Some(result.clone()),
    };
    // Our own entry's file, else the first name no other attachment's entry holds.
    let file = find(cache_dir, network, rt).map(|(p, _)| p).or_else(|| {
        candidates(cache_dir, network, rt)
            .into_iter()
            .find(|p| read(p).is_none())
    });
    let file = file.unwrap_or_else(|| {
        candidates(cache_dir, network, rt)
            .pop()
            .expect("always one candidate")
    });
    let io = |e: files::Error| RuntimeError::Io {
        what: format!("{} {}", e.what, e.path.display()),
        source: e.source,
    };
    files::private_dir(&results_dir(cache_dir)).map_err(io)?;
    let bytes = serde_json::to_vec(&entry).expect("a cache entry always serializes");
    files::replace(&file, &bytes).map_err(io)
}

/// The cached result of an attachment, if there is a readable entry.
pub fn result(cache_dir: &Path, network: &str, rt: &RuntimeConf) -> Option<Value> {
    find(cache_dir, network, rt).and_then(|(_, e)| e.result)
}

/// Forgets an attachment: its entry, and what a writer killed mid-write left for it.
pub fn remove(cache_dir: &Path, network: &str, rt: &RuntimeConf) {
    if let Some((p, _)) = find(cache_dir, network, rt) {
        let _ = files::remove(&p);
    }
    for p in candidates(cache_dir, network, rt) {
        let name = p.file_name().map(|n| n.to_string_lossy().to_string());
        for left in files::leftovers(&results_dir(cache_dir), name.as_deref()) {
            let _ = files::remove(&left);
        }
    }
}

fn read(file: &Path) -> Option<Entry> {
    let entry: Entry = serde_json::from_slice(&files::read(file).ok()??).ok()?;
    (entry.kind == KIND).then_some(entry)
}

/// Every attachment in the cache, or those of one container; unreadable files are skipped
/// as upstream does.
pub fn attachments(cache_dir: &Path, container_id: Option<&str>) -> Vec<CachedAttachment> {
    let Ok(entries) = std::fs::read_dir(results_dir(cache_dir)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    files
        .iter()
        .filter_map(|f| read(f))
        .filter(|e| !e.ifname.is_empty() && !e.network.is_empty())
        .filter(|e| container_id.is_none_or(|c| c == e.container_id))
        .map(|e| CachedAttachment {
            config: base64::engine::general_purpose::STANDARD
                .decode(&e.config)
                .unwrap_or_default(),
            network: e.network,
            runtime: RuntimeConf {
                container_id: e.container_id,
                netns: e.netns,
                ifname: e.ifname,
                args: e.cni_args.into_iter().map(|[k, v]| (k, v)).collect(),
                capability_args: e.capability_args,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> RuntimeConf {
        RuntimeConf {
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: vec![("IP".into(), "10.0.0.5".into())],
            capability_args: serde_json::json!({"portMappings": []})
                .as_object()
                .unwrap()
                .clone(),
        }
    }

    #[test]
    fn round_trip_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let result = serde_json::json!({"cniVersion": "1.0.0", "ips": []});
        write(dir.path(), "net", b"{\"name\":\"net\"}", &rt(), &result).unwrap();
        assert_eq!(result_of(dir.path()), Some(result));
        let all = attachments(dir.path(), None);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].runtime, rt());
        assert_eq!(all[0].config, b"{\"name\":\"net\"}");
        assert!(attachments(dir.path(), Some("other")).is_empty());
        remove(dir.path(), "net", &rt());
        assert!(attachments(dir.path(), None).is_empty());
    }

    fn result_of(dir: &Path) -> Option<Value> {
        result(dir, "net", &rt())
    }

    #[test]
    fn attachments_whose_upstream_names_collide_keep_their_own_entries() {
        let dir = tempfile::tempdir().unwrap();
        let one = |network: &str, cid: &str| {
            RuntimeConf {
                container_id: cid.into(),
                ifname: "eth0".into(),
                ..Default::default()
            }
            .with_network(network)
        };
        let (a, b) = (one("a-b", "c"), one("a", "b-c"));
        let long = one(&"n".repeat(200), &"c".repeat(100));
        for (net, rt) in [&a, &b, &long] {
            let result = serde_json::json!({"cniVersion": "1.0.0", "dns": {"domain": net}});
            write(dir.path(), net, b"{}", rt, &result).unwrap();
        }
        for (net, rt) in [&a, &b, &long] {
            assert_eq!(result(dir.path(), net, rt).unwrap()["dns"]["domain"], *net);
        }
        remove(dir.path(), &a.0, &a.1);
        assert!(result(dir.path(), &a.0, &a.1).is_none());
        assert!(result(dir.path(), &b.0, &b.1).is_some());
    }

    impl RuntimeConf {
        fn with_network(self, network: &str) -> (String, RuntimeConf) {
            (network.to_string(), self)
        }
    }

    #[test]
    fn reads_an_upstream_entry() {
        // As upstream libcni writes it: Go's []byte is base64.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("results")).unwrap();
        std::fs::write(
            dir.path().join("results/net-c1-eth0"),
            r#"{"kind":"cniCacheV1","containerId":"c1","config":"eyJuYW1lIjoibmV0In0=","ifName":"eth0","networkName":"net","netns":"/run/netns/x","cniArgs":[["IP","10.0.0.5"]],"capabilityArgs":{"portMappings":[]},"result":{"cniVersion":"1.0.0","ips":[]}}"#,
        )
        .unwrap();
        let a = attachments(dir.path(), Some("c1"));
        assert_eq!(a[0].runtime, rt());
        assert_eq!(a[0].config, b"{\"name\":\"net\"}");
        assert_eq!(result_of(dir.path()).unwrap()["cniVersion"], "1.0.0");
    }
}
