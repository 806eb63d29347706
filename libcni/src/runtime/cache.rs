//! The result cache, in upstream libcni's format, so its runtimes and ours read each
//! other's files: `<cacheDir>/results/<network>-<containerID>-<ifname>`, JSON of kind
//! `cniCacheV1` with the network list base64-encoded and the last plugin's result.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{RuntimeConf, RuntimeError};

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

pub fn path(cache_dir: &Path, network: &str, rt: &RuntimeConf) -> PathBuf {
    results_dir(cache_dir).join(format!("{network}-{}-{}", rt.container_id, rt.ifname))
}

/// Records an attachment and its result; written to a temporary file and renamed, so a
/// reader never sees half a file.
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
    let file = path(cache_dir, network, rt);
    let io = |what: &str, e| RuntimeError::Io {
        what: format!("{what} {}", file.display()),
        source: e,
    };
    std::fs::create_dir_all(results_dir(cache_dir))
        .map_err(|e| io("creating the directory of", e))?;
    let tmp = file.with_extension("tmp");
    let bytes = serde_json::to_vec(&entry).expect("a cache entry always serializes");
    std::fs::write(&tmp, bytes).map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, &file).map_err(|e| io("writing", e))
}

/// The cached result of an attachment, if there is a readable entry.
pub fn result(cache_dir: &Path, network: &str, rt: &RuntimeConf) -> Option<Value> {
    read(&path(cache_dir, network, rt)).and_then(|e| e.result)
}

pub fn remove(cache_dir: &Path, network: &str, rt: &RuntimeConf) {
    let _ = std::fs::remove_file(path(cache_dir, network, rt));
}

fn read(file: &Path) -> Option<Entry> {
    let entry: Entry = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
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
