//! The plugin side of CNI: read the `CNI_*` environment and the config on stdin, check
//! them, dispatch to a [`Plugin`], and print exactly one result or error object on stdout.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::spec::{code, CniResult, Error, NetConf, Version, SUPPORTED_VERSIONS};

/// What one invocation was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// Everything an invocation received, checked.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    pub command: Command,
    pub container_id: String,
    /// Empty when the runtime passed none (allowed for DEL, STATUS, GC).
    pub netns: String,
    pub ifname: String,
    /// CNI_ARGS as `key=value` pairs.
    pub args: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
    /// The raw config bytes, passed on unchanged to delegates.
    pub stdin: Vec<u8>,
    pub conf: NetConf,
    pub version: Version,
    /// The whole config, for plugin-specific fields.
    pub raw: Value,
}

impl CmdArgs {
    /// Decodes the plugin's own view of the config; wrong types are code 7.
    pub fn parse_conf<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_value(self.raw.clone())
            .map_err(|e| Error::config("invalid network config").details(e.to_string()))
    }

    /// prevResult converted from whatever version it was printed in.
    pub fn prev_result(&self) -> Result<Option<CniResult>, Error> {
        self.conf
            .prev_result
            .clone()
            .map(CniResult::from_value)
            .transpose()
    }

    /// prevResult, which this command cannot do without (code 7 when missing).
    pub fn required_prev_result(&self) -> Result<CniResult, Error> {
        self.prev_result()?
            .ok_or_else(|| Error::config(format!("{:?} needs prevResult", self.command)))
    }

    /// GC's `cni.dev/valid-attachments` as (containerID, ifname) pairs.
    pub fn valid_attachments(&self) -> Result<HashSet<(String, String)>, Error> {
        #[derive(serde::Deserialize)]
        struct Attachment {
            #[serde(rename = "containerID")]
            container_id: String,
            ifname: String,
        }
        #[derive(serde::Deserialize)]
        struct Gc {
            #[serde(rename = "cni.dev/valid-attachments", default)]
            valid: Vec<Attachment>,
        }
        let gc: Gc = self.parse_conf()?;
        Ok(gc
            .valid
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect())
    }

    /// The container IDs of GC's `cni.dev/valid-attachments`.
    pub fn valid_container_ids(&self) -> Result<HashSet<String>, Error> {
        Ok(self
            .valid_attachments()?
            .into_iter()
            .map(|(cid, _)| cid)
            .collect())
    }

    pub fn cni_arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A plugin implements the commands; the skeleton has already validated env and config.
pub trait Plugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error>;
    fn del(&self, args: &CmdArgs) -> Result<(), Error>;
    fn check(&self, args: &CmdArgs) -> Result<(), Error>;
    fn status(&self, _args: &CmdArgs) -> Result<(), Error> {
        Ok(())
    }
    fn gc(&self, _args: &CmdArgs) -> Result<(), Error> {
        Ok(())
    }
}

/// Runs the plugin for this process and exits: 0 with a result (or nothing) on stdout,
/// 1 with an error object. `about` goes to stderr when CNI_COMMAND is missing.
pub fn run(plugin: &dyn Plugin, about: &str) -> ! {
    install_panic_hook();
    let env = |k: &str| std::env::var(k).ok();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => dispatch(plugin, &env, stdin),
        Err(e) => Err(Error::new(code::IO, "reading stdin").details(e.to_string())),
    };
    match outcome {
        Ok(Some(out)) => {
            print_json(&out);
            std::process::exit(0)
        }
        Ok(None) => std::process::exit(0),
        Err(e) => {
            if e.code == code::INVALID_ENV && env("CNI_COMMAND").is_none() {
                eprintln!("{about}");
            }
            print_error(e)
        }
    }
}

fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, v);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn print_error(mut e: Error) -> ! {
    if e.cni_version.is_empty() {
        e.cni_version = crate::spec::LATEST_VERSION.to_string();
    }
    print_json(&serde_json::to_value(&e).unwrap_or_else(|_| json!({"code": e.code})));
    std::process::exit(1)
}

/// A panic must still reach the runtime as an error object, never as a trace on stdout.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("plugin panicked: {info}");
        print_error(Error::new(code::INTERNAL, "internal error").details(info.to_string()))
    }));
}

/// Validates the environment and config and runs one command. Separate from [`run`] so
/// it can be tested without a process.
pub fn dispatch(
    plugin: &dyn Plugin,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: Vec<u8>,
) -> Result<Option<Value>, Error> {
    let cmd_s = env("CNI_COMMAND").ok_or_else(|| missing_env("CNI_COMMAND"))?;
    let command = Command::parse(&cmd_s)
        .ok_or_else(|| Error::new(code::INVALID_ENV, format!("unknown CNI_COMMAND: {cmd_s}")))?;
    if command == Command::Version {
        return Ok(Some(version_reply(&stdin)));
    }
    let needed: &[&str] = match command {
        Command::Add | Command::Check => {
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
        }
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
        _ => &["CNI_PATH"],
    };
    for k in needed {
        if env(k).is_none_or(|v| v.is_empty()) {
            return Err(missing_env(k));
        }
    }
    let container_id = env("CNI_CONTAINERID").unwrap_or_default();
    let ifname = env("CNI_IFNAME").unwrap_or_default();
    if matches!(command, Command::Add | Command::Check | Command::Del) {
        validate_container_id(&container_id)?;
        validate_ifname(&ifname)?;
    }
    let raw: Value = serde_json::from_slice(&stdin)
        .map_err(|e| Error::new(code::DECODE, "decoding network config").details(e.to_string()))?;
    let conf: NetConf = serde_json::from_value(raw.clone())
        .map_err(|e| Error::config("invalid network config").details(e.to_string()))?;
    let version = Version::supported(&conf.cni_version)?;
    let allowed = match command {
        Command::Check => version.has_check(),
        Command::Status | Command::Gc => version.has_status_and_gc(),
        _ => true,
    };
    if !allowed {
        return Err(Error::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version {} does not allow {cmd_s}", conf.cni_version),
        ));
    }
    let args = CmdArgs {
        command,
        container_id,
        netns: env("CNI_NETNS").unwrap_or_default(),
        ifname,
        args: parse_cni_args(&env("CNI_ARGS").unwrap_or_default())?,
        path: std::env::split_paths(&env("CNI_PATH").unwrap_or_default()).collect(),
        stdin,
        version,
        raw,
        conf,
    };
    let tag = |mut e: Error| {
        e.cni_version = args.conf.cni_version.clone();
        e
    };
    match command {
        Command::Add => {
            let r = plugin.add(&args).map_err(tag)?;
            Ok(Some(r.to_json(&args.conf.cni_version)))
        }
        Command::Del => plugin.del(&args).map_err(tag).map(|_| None),
        Command::Check => plugin.check(&args).map_err(tag).map(|_| None),
        Command::Status => plugin.status(&args).map_err(tag).map(|_| None),
        Command::Gc => plugin.gc(&args).map_err(tag).map(|_| None),
        Command::Version => unreachable!("answered above"),
    }
}

fn version_reply(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| crate::spec::LATEST_VERSION.to_string());
    json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS})
}

fn missing_env(k: &str) -> Error {
    Error::new(
        code::INVALID_ENV,
        format!("required environment variable {k} is missing"),
    )
}

fn validate_container_id(id: &str) -> Result<(), Error> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::new(code::INVALID_ENV, "invalid characters in CNI_CONTAINERID").details(id))
    }
}

/// The kernel's rules for interface names.
pub fn validate_ifname(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Error::new(code::INVALID_ENV, "invalid interface name in CNI_IFNAME").details(name))
    }
}

/// CNI_ARGS is `K=V;K2=V2`.
fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, Error> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Error::new(code::INVALID_ENV, "invalid CNI_ARGS pair").details(p))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Echo;
    impl Plugin for Echo {
        fn add(&self, a: &CmdArgs) -> Result<CniResult, Error> {
            if a.cni_arg("PANIC").is_some() {
                return Err(Error::new(code::INTERNAL, "asked"));
            }
            Ok(CniResult::default())
        }
        fn del(&self, _: &CmdArgs) -> Result<(), Error> {
            Ok(())
        }
        fn check(&self, _: &CmdArgs) -> Result<(), Error> {
            Ok(())
        }
    }

    fn call(vars: &[(&str, &str)], stdin: &str) -> Result<Option<Value>, Error> {
        let mut m: HashMap<String, String> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in vars {
            if v.is_empty() {
                m.remove(*k);
            } else {
                m.insert(k.to_string(), v.to_string());
            }
        }
        dispatch(&Echo, &|k| m.get(k).cloned(), stdin.as_bytes().to_vec())
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"n","type":"echo"}"#;

    #[test]
    fn add_prints_result_in_config_version() {
        let out = call(&[], CONF).unwrap().unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
    }

    #[test]
    fn env_errors_are_code_4() {
        for (k, v) in [
            ("CNI_COMMAND", ""),
            ("CNI_COMMAND", "BOGUS"),
            ("CNI_NETNS", ""),
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_IFNAME", "waytoolonginterfacename"),
            ("CNI_ARGS", "novalue"),
        ] {
            assert_eq!(call(&[(k, v)], CONF).unwrap_err().code, 4, "{k}={v}");
        }
    }

    #[test]
    fn del_needs_no_netns() {
        assert!(call(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")], CONF).is_ok());
    }

    #[test]
    fn decode_and_config_errors() {
        assert_eq!(call(&[], "{not json").unwrap_err().code, 6);
        assert_eq!(call(&[], r#"{"cniVersion":3}"#).unwrap_err().code, 7);
        let old = r#"{"cniVersion":"0.2.0","name":"n","type":"echo"}"#;
        assert_eq!(call(&[], old).unwrap_err().code, 1);
    }

    #[test]
    fn commands_gated_by_version() {
        let v031 = r#"{"cniVersion":"0.3.1","name":"n","type":"echo"}"#;
        assert_eq!(call(&[("CNI_COMMAND", "CHECK")], v031).unwrap_err().code, 1);
        assert_eq!(call(&[("CNI_COMMAND", "GC")], CONF).unwrap_err().code, 1);
        assert_eq!(
            call(&[("CNI_COMMAND", "STATUS")], CONF).unwrap_err().code,
            1
        );
        let v11 = r#"{"cniVersion":"1.1.0","name":"n","type":"echo"}"#;
        assert!(call(&[("CNI_COMMAND", "GC")], v11).is_ok());
        assert!(call(&[("CNI_COMMAND", "CHECK")], CONF).is_ok());
    }

    #[test]
    fn version_command_lists_versions() {
        let out = call(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(out["supportedVersions"].as_array().unwrap().len(), 5);
        let out = call(&[("CNI_COMMAND", "VERSION")], "").unwrap().unwrap();
        assert_eq!(out["cniVersion"], "1.1.0");
    }

    #[test]
    fn plugin_errors_carry_config_version() {
        let e = call(&[("CNI_ARGS", "PANIC=1")], CONF).unwrap_err();
        assert_eq!((e.code, e.cni_version.as_str()), (100, "1.0.0"));
    }
}
