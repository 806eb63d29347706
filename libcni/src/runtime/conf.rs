//! Network configuration files as upstream libcni reads them: `.conflist` files first
//! (sorted by name), then single-plugin `.conf`/`.json` files wrapped into a list.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::RuntimeError;
use crate::spec::{Version, SUPPORTED_VERSIONS};

/// A network: its name, the version every plugin is called with, and the plugins in order.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    /// Each plugin's config object as written.
    pub plugins: Vec<Map<String, Value>>,
    /// The list as loaded (for single-plugin files: the wrapping list), kept in the cache.
    pub bytes: Vec<u8>,
}

impl NetworkList {
    /// Parses a conflist; `source` names it in errors.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<NetworkList, RuntimeError> {
        let bad = |msg: String| RuntimeError::Config {
            file: source.to_string(),
            msg,
        };
        let raw: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let name = match raw.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            Some(_) => return Err(bad("\"name\" must be a non-empty string".into())),
            None => return Err(bad("no \"name\"".into())),
        };
        let mut candidates: Vec<Version> = Vec::new();
        match raw.get("cniVersions") {
            None => {}
            Some(Value::Array(vs)) => {
                for v in vs {
                    let s = v
                        .as_str()
                        .ok_or_else(|| bad(format!("\"cniVersions\" entry {v} is not a string")))?;
                    let parsed = Version::parse(s).ok_or_else(|| {
                        bad(format!("\"cniVersions\" entry {s:?} is not a version"))
                    })?;
                    candidates.push(parsed);
                }
            }
            Some(_) => return Err(bad("\"cniVersions\" must be a list".into())),
        }
        let cni_version = match raw.get("cniVersion") {
            Some(Value::String(v)) => v.clone(),
            Some(_) => return Err(bad("\"cniVersion\" must be a string".into())),
            None => String::new(),
        };
        if let Some(v) = Version::parse(&cni_version) {
            candidates.push(v);
        }
        // 1.1: the highest listed version this library speaks.
        let cni_version = candidates
            .into_iter()
            .filter(|v| {
                SUPPORTED_VERSIONS
                    .iter()
                    .filter_map(|s| Version::parse(s))
                    .any(|s| s == *v)
            })
            .max()
            .map(|Version(a, b, c)| format!("{a}.{b}.{c}"))
            .unwrap_or(cni_version);
        let flag = |key: &str| -> Result<bool, RuntimeError> {
            match raw.get(key) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
                Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
                Some(v) => Err(bad(format!("invalid value {v} for \"{key}\""))),
            }
        };
        let plugins = match raw.get("plugins") {
            Some(Value::Array(ps)) if !ps.is_empty() => ps
                .iter()
                .enumerate()
                .map(|(i, p)| match p {
                    Value::Object(o)
                        if o.get("type")
                            .and_then(Value::as_str)
                            .is_some_and(|t| !t.is_empty()) =>
                    {
                        Ok(o.clone())
                    }
                    _ => Err(bad(format!("plugin {i} is not an object with a \"type\""))),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(Value::Array(_)) => return Err(bad("no plugins in list".into())),
            Some(_) => return Err(bad("\"plugins\" must be a list".into())),
            None => return Err(bad("no \"plugins\"".into())),
        };
        Ok(NetworkList {
            name,
            cni_version,
            disable_check: flag("disableCheck")?,
            disable_gc: flag("disableGC")?,
            plugins,
            bytes: bytes.to_vec(),
        })
    }

    /// Wraps a single plugin's config into a list, as upstream does for `.conf` files.
    pub fn from_plugin_bytes(bytes: &[u8], source: &str) -> Result<NetworkList, RuntimeError> {
        let bad = |msg: String| RuntimeError::Config {
            file: source.to_string(),
            msg,
        };
        let plugin: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let list = serde_json::json!({
            "name": plugin.get("name").cloned().unwrap_or(Value::Null),
            "cniVersion": plugin.get("cniVersion").cloned().unwrap_or(Value::Null),
            "plugins": [plugin],
        });
        NetworkList::from_bytes(list.to_string().as_bytes(), source)
    }
}

fn files_with(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, RuntimeError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(RuntimeError::Io {
                what: format!("reading {}", dir.display()),
                source: e,
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| exts.contains(&e))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn read(path: &Path) -> Result<Vec<u8>, RuntimeError> {
    std::fs::read(path).map_err(|e| RuntimeError::Io {
        what: format!("reading {}", path.display()),
        source: e,
    })
}

/// Finds network `name` in `dir`: conflists first, then single-plugin files.
pub fn load(dir: &Path, name: &str) -> Result<NetworkList, RuntimeError> {
    for f in files_with(dir, &["conflist"])? {
        let list = NetworkList::from_bytes(&read(&f)?, &f.display().to_string())?;
        if list.name == name {
            return Ok(list);
        }
    }
    for f in files_with(dir, &["conf", "json"])? {
        let list = NetworkList::from_plugin_bytes(&read(&f)?, &f.display().to_string())?;
        if list.name == name {
            return Ok(list);
        }
    }
    Err(RuntimeError::NetworkNotFound {
        dir: dir.to_path_buf(),
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_with_version_list_picks_highest_supported() {
        let l = NetworkList::from_bytes(
            br#"{"name":"n","cniVersion":"0.4.0","cniVersions":["1.0.0","9.9.9"],"disableCheck":"true","plugins":[{"type":"bridge"}]}"#,
            "t",
        )
        .unwrap();
        assert_eq!(l.cni_version, "1.0.0");
        assert!(l.disable_check && !l.disable_gc);
    }

    #[test]
    fn bad_lists_name_file_and_field() {
        for (bytes, field) in [
            (
                &br#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#[..],
                "name",
            ),
            (br#"{"name":"n","plugins":[]}"#, "no plugins"),
            (br#"{"name":"n","plugins":[{"nope":1}]}"#, "type"),
            (
                br#"{"name":"n","disableGC":3,"plugins":[{"type":"x"}]}"#,
                "disableGC",
            ),
            (
                br#"{"name":"n","cniVersions":"1.0.0","plugins":[{"type":"x"}]}"#,
                "cniVersions",
            ),
        ] {
            let e = NetworkList::from_bytes(bytes, "/etc/cni/net.d/10-x.conflist")
                .unwrap_err()
                .to_string();
            assert!(e.contains("10-x.conflist") && e.contains(field), "{e}");
        }
    }

    #[test]
    fn load_prefers_conflists_then_wraps_single_plugins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("20-a.conf"),
            r#"{"cniVersion":"0.4.0","name":"a","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("30-b.json"),
            r#"{"cniVersion":"0.3.1","name":"b","type":"loopback"}"#,
        )
        .unwrap();
        let a = load(dir.path(), "a").unwrap();
        assert_eq!((a.cni_version.as_str(), a.plugins.len()), ("1.0.0", 2));
        let b = load(dir.path(), "b").unwrap();
        assert_eq!(b.plugins[0]["type"], "loopback");
        assert_eq!(b.cni_version, "0.3.1");
        assert!(matches!(
            load(dir.path(), "c"),
            Err(RuntimeError::NetworkNotFound { .. })
        ));
    }
}
