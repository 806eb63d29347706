//! The caller side of CNI, for runtimes written in Rust and for `cnitool`: load network
//! configs, run plugin chains (ADD in order passing prevResult, DEL in reverse with the
//! cached result), CHECK, STATUS and GC, and keep the result cache upstream runtimes share.
//!
//! ```no_run
//! use std::path::Path;
//! use libcni::runtime::{self, Cni, RuntimeConf};
//!
//! let network = runtime::load(Path::new("/etc/cni/net.d"), "mynet")?;
//! let cni = Cni::new(vec!["/opt/cni/bin".into()]);
//! let rt = RuntimeConf {
//!     container_id: "ctr1".into(),
//!     netns: "/var/run/netns/ctr1".into(),
//!     ifname: "eth0".into(),
//!     ..Default::default()
//! };
//! let result = cni.add(&network, &rt)?;
//! for ip in &result.ips {
//!     println!("{} via {:?}", ip.address, ip.gateway);
//! }
//! cni.del(&network, &rt)?;
//! # Ok::<(), libcni::runtime::RuntimeError>(())
//! ```

mod cache;
mod conf;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

pub use cache::CachedAttachment;
pub use conf::{load, NetworkList};

use crate::exec;
use crate::spec::{self, CniResult, Version};

/// Upstream's default cache directory.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{file}: {msg}")]
    Config { file: String, msg: String },
    #[error("no network {name:?} in {}", dir.display())]
    NetworkNotFound { dir: PathBuf, name: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A plugin's error object, with its code and message kept.
    #[error("plugin {plugin} failed ({command}): {error}")]
    Plugin {
        plugin: String,
        command: String,
        error: Box<spec::Error>,
    },
    #[error("{0}")]
    Unsupported(String),
    /// A network name, container ID or interface name that breaks the spec's rules.
    #[error("{0}")]
    Invalid(String),
    /// Several attachments or plugins failed during GC.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Many(Vec<RuntimeError>),
}

impl RuntimeError {
    /// The CNI error code, where a plugin gave one.
    pub fn code(&self) -> Option<u32> {
        match self {
            RuntimeError::Plugin { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

/// What the runtime knows about one attachment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// CNI_ARGS pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `ips`, `mac`, `bandwidth`, ...); each plugin
    /// gets in `runtimeConfig` only those its config declares under `capabilities`.
    pub capability_args: Map<String, Value>,
}

/// Where plugins are found, where results are cached, how long a plugin may take.
#[derive(Debug, Clone)]
pub struct Cni {
    pub path: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    pub timeout: Duration,
}

impl Cni {
    pub fn new(path: Vec<PathBuf>) -> Cni {
        Cni {
            path,
            cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
            timeout: Duration::from_secs(60),
        }
    }

    /// Adds the attachment through every plugin in order and caches the final result.
    pub fn add(&self, list: &NetworkList, rt: &RuntimeConf) -> Result<CniResult, RuntimeError> {
        validate(list, rt)?;
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let conf = plugin_conf(list, plugin, prev.as_ref(), Some(rt));
            let out = self.run(plugin, "ADD", rt, &conf)?;
            prev = Some(out.ok_or_else(|| RuntimeError::Plugin {
                plugin: plugin_type(plugin).to_string(),
                command: "ADD".into(),
                error: Box::new(spec::Error::new(spec::code::DELEGATE, "printed no result")),
            })?);
        }
        let result = prev.unwrap_or_else(|| json!({"cniVersion": list.cni_version}));
        cache::write(&self.cache_dir, &list.name, &list.bytes, rt, &result)?;
        CniResult::from_value(result).map_err(|error| RuntimeError::Plugin {
            plugin: list
                .plugins
                .last()
                .map_or("", |p| plugin_type(p))
                .to_string(),
            command: "ADD".into(),
            error: Box::new(error),
        })
    }

    /// Deletes the attachment through every plugin in reverse order, passing the cached
    /// result (0.4.0 on), then forgets it. Plugins succeed on what is already gone. A DEL
    /// without capability arguments gets those the attachment was added with, so that
    /// portmap, say, still finds its mappings.
    pub fn del(&self, list: &NetworkList, rt: &RuntimeConf) -> Result<(), RuntimeError> {
        validate(list, rt)?;
        let cached_caps;
        let rt = if rt.capability_args.is_empty() {
            let cached = cache::attachments(&self.cache_dir, Some(&rt.container_id))
                .into_iter()
                .find(|a| a.network == list.name && a.runtime.ifname == rt.ifname);
            cached_caps = RuntimeConf {
                capability_args: cached
                    .map(|a| a.runtime.capability_args)
                    .unwrap_or_default(),
                ..rt.clone()
            };
            &cached_caps
        } else {
            rt
        };
        let prev = if version(list) >= Version(0, 4, 0) {
            self.cached_result(list, rt)
        } else {
            None
        };
        for plugin in list.plugins.iter().rev() {
            let conf = plugin_conf(list, plugin, prev.as_ref(), Some(rt));
            self.run(plugin, "DEL", rt, &conf)?;
        }
        cache::remove(&self.cache_dir, &list.name, rt);
        Ok(())
    }

    /// Checks the attachment against its cached result in every plugin.
    pub fn check(&self, list: &NetworkList, rt: &RuntimeConf) -> Result<(), RuntimeError> {
        validate(list, rt)?;
        if version(list) < Version(0, 4, 0) {
            return Err(RuntimeError::Unsupported(format!(
                "configuration version {} does not support the CHECK command",
                list.cni_version
            )));
        }
        if list.disable_check {
            return Ok(());
        }
        let prev = self.cached_result(list, rt).ok_or_else(|| {
            RuntimeError::Unsupported(format!(
                "no cached result for {} in network {}",
                rt.container_id, list.name
            ))
        })?;
        for plugin in &list.plugins {
            self.run(
                plugin,
                "CHECK",
                rt,
                &plugin_conf(list, plugin, Some(&prev), Some(rt)),
            )?;
        }
        Ok(())
    }

    /// Asks every plugin whether it can serve ADD (1.1.0 on; older lists are fine).
    pub fn status(&self, list: &NetworkList) -> Result<(), RuntimeError> {
        if version(list) < Version(1, 1, 0) {
            return Ok(());
        }
        for plugin in &list.plugins {
            self.run(
                plugin,
                "STATUS",
                &RuntimeConf::default(),
                &plugin_conf(list, plugin, None, None),
            )?;
        }
        Ok(())
    }

    /// Deletes every cached attachment of this network that is not in `valid`, then (1.1.0
    /// on) sends GC with the valid attachments to every plugin. `None` means none is valid.
    pub fn gc(
        &self,
        list: &NetworkList,
        valid: Option<&[(String, String)]>,
    ) -> Result<(), RuntimeError> {
        if list.disable_gc {
            return Ok(());
        }
        let keep: HashSet<&(String, String)> = valid.unwrap_or_default().iter().collect();
        let mut errors = Vec::new();
        for a in self.cached_attachments(None) {
            let id = (a.runtime.container_id.clone(), a.runtime.ifname.clone());
            if a.network == list.name && !keep.contains(&id) {
                if let Err(e) = self.del(list, &a.runtime) {
                    errors.push(e);
                }
            }
        }
        if version(list) >= Version(1, 1, 0) {
            for plugin in &list.plugins {
                let mut conf: Value =
                    serde_json::from_slice(&plugin_conf(list, plugin, None, None))
                        .expect("built from JSON");
                if let Some(valid) = valid {
                    let v: Vec<Value> = valid
                        .iter()
                        .map(|(c, i)| json!({"containerID": c, "ifname": i}))
                        .collect();
                    conf["cni.dev/valid-attachments"] = Value::Array(v.clone());
                    conf["cni.dev/attachments"] = Value::Array(v);
                }
                if let Err(e) = self.run(
                    plugin,
                    "GC",
                    &RuntimeConf::default(),
                    conf.to_string().as_bytes(),
                ) {
                    errors.push(e);
                }
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(RuntimeError::Many(errors)),
        }
    }

    /// The cached result of an attachment, in the list's version.
    pub fn cached_result(&self, list: &NetworkList, rt: &RuntimeConf) -> Option<Value> {
        let raw = cache::result(&self.cache_dir, &list.name, rt)?;
        CniResult::from_value(raw)
            .ok()
            .and_then(|r| r.to_json(&list.cni_version).ok())
    }

    /// Attachments in the cache, all or one container's.
    pub fn cached_attachments(&self, container_id: Option<&str>) -> Vec<CachedAttachment> {
        cache::attachments(&self.cache_dir, container_id)
    }

    fn run(
        &self,
        plugin: &Map<String, Value>,
        command: &str,
        rt: &RuntimeConf,
        conf: &[u8],
    ) -> Result<Option<Value>, RuntimeError> {
        let name = plugin_type(plugin);
        let fail = |error: spec::Error| RuntimeError::Plugin {
            plugin: name.to_string(),
            command: command.to_string(),
            error: Box::new(error),
        };
        let bin = exec::find(name, &self.path).map_err(fail)?;
        let args: Vec<String> = rt.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let path = std::env::join_paths(&self.path)
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        let env = [
            ("CNI_CONTAINERID", rt.container_id.clone()),
            ("CNI_NETNS", rt.netns.clone()),
            ("CNI_IFNAME", rt.ifname.clone()),
            ("CNI_ARGS", args.join(";")),
            ("CNI_PATH", path),
        ];
        exec::start(&bin, command, &env, conf)
            .and_then(|r| r.wait_timeout(self.timeout))
            .map_err(fail)
    }
}

/// The spec's rules for the names that reach plugins and the cache's file names.
fn validate(list: &NetworkList, rt: &RuntimeConf) -> Result<(), RuntimeError> {
    let bad = |e: spec::Error| RuntimeError::Invalid(e.to_string());
    crate::names::network_name(&list.name).map_err(bad)?;
    crate::names::container_id(&rt.container_id).map_err(bad)?;
    crate::names::ifname(&rt.ifname).map_err(bad)?;
    Ok(())
}

fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn version(list: &NetworkList) -> Version {
    Version::parse(&list.cni_version).unwrap_or(Version(0, 0, 0))
}

/// One plugin's stdin: its config with the list's name and version, prevResult, and the
/// capability arguments it declares as `runtimeConfig`.
fn plugin_conf(
    list: &NetworkList,
    plugin: &Map<String, Value>,
    prev: Option<&Value>,
    rt: Option<&RuntimeConf>,
) -> Vec<u8> {
    let mut conf = plugin.clone();
    conf.insert("name".into(), json!(list.name));
    conf.insert("cniVersion".into(), json!(list.cni_version));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    if let Some(rt) = rt {
        let declared = plugin.get("capabilities").and_then(Value::as_object);
        let runtime_config: Map<String, Value> = rt
            .capability_args
            .iter()
            .filter(|(cap, _)| {
                declared.and_then(|d| d.get(*cap)).and_then(Value::as_bool) == Some(true)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
    }
    serde_json::to_vec(&conf).expect("a JSON object always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_never_reach_a_plugin_or_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut cni = Cni::new(vec![dir.path().to_path_buf()]);
        cni.cache_dir = dir.path().join("cache");
        let list = |name: &str| {
            NetworkList::from_bytes(
                json!({"cniVersion": "1.0.0", "name": name, "plugins": [{"type": "x"}]})
                    .to_string()
                    .as_bytes(),
                "t",
            )
            .unwrap()
        };
        let rt = |cid: &str, ifname: &str| RuntimeConf {
            container_id: cid.into(),
            ifname: ifname.into(),
            ..Default::default()
        };
        for (net, r) in [
            ("../x", rt("c1", "eth0")),
            ("n", rt("../../etc", "eth0")),
            ("n", rt("c1", "eth/0")),
        ] {
            assert!(matches!(
                cni.add(&list(net), &r),
                Err(RuntimeError::Invalid(_))
            ));
            assert!(matches!(
                cni.del(&list(net), &r),
                Err(RuntimeError::Invalid(_))
            ));
        }
        assert!(!dir.path().join("cache").exists());
    }

    #[test]
    fn plugins_get_only_the_capabilities_they_declare() {
        let list = NetworkList::from_bytes(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
            "t",
        )
        .unwrap();
        let rt = RuntimeConf {
            capability_args: json!({"portMappings": [{"hostPort": 8080}], "bandwidth": {}})
                .as_object()
                .unwrap()
                .clone(),
            ..Default::default()
        };
        let prev = json!({"cniVersion": "1.0.0"});
        let bridge: Value =
            serde_json::from_slice(&plugin_conf(&list, &list.plugins[0], None, Some(&rt))).unwrap();
        assert!(bridge.get("runtimeConfig").is_none());
        assert_eq!(
            (bridge["name"].as_str(), bridge["cniVersion"].as_str()),
            (Some("n"), Some("1.0.0"))
        );
        let portmap: Value = serde_json::from_slice(&plugin_conf(
            &list,
            &list.plugins[1],
            Some(&prev),
            Some(&rt),
        ))
        .unwrap();
        assert_eq!(
            portmap["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080}]})
        );
        assert_eq!(portmap["prevResult"], prev);
    }
}
