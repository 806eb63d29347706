//! The plugin side of CNI: read the `CNI_*` environment and the config on stdin, check
//! them, dispatch to a [`Plugin`], and print exactly one result or error object on stdout.
//! A panic in a plugin unwinds (running the undo guards of what the call created) and is
//! reported as an error object too.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::names;
use crate::net::Netns;
use crate::spec::{code, CniResult, Error, NetConf, Version, SUPPORTED_VERSIONS};

/// The largest config we read: anything bigger is not a network config.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

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
    /// CNI_ARGS as the runtime passed it; read with [`CmdArgs::cni_args`] by the plugins
    /// that use it, so the others never fail on it.
    pub cni_args: String,
    pub path: Vec<PathBuf>,
    /// The raw config bytes, passed on unchanged to delegates.
    pub stdin: Vec<u8>,
    pub conf: NetConf,
    pub version: Version,
    /// The whole config, for plugin-specific fields.
    pub raw: Value,
    /// CNI_NETNS, opened and proven a network namespace before the plugin runs: always
    /// there for ADD and CHECK, for DEL when the namespace still exists.
    netns_handle: Option<Arc<Netns>>,
}

impl CmdArgs {
    /// Decodes the plugin's own view of the config; wrong types are code 7.
    pub fn parse_conf<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        crate::decode::from_value(&self.raw)
            .map_err(|e| Error::config("invalid network config").details(e.to_string()))
    }

    /// The container's namespace (ADD, CHECK; DEL when it still exists).
    pub fn netns(&self) -> Option<&Netns> {
        self.netns_handle.as_deref()
    }

    /// The container's namespace where the command cannot do without it.
    pub fn required_netns(&self) -> Result<&Netns, Error> {
        self.netns().ok_or_else(|| {
            Error::new(
                code::UNKNOWN_CONTAINER,
                format!("netns {:?} does not exist", self.netns),
            )
        })
    }

    /// prevResult converted from whatever version it was printed in (the config's when it
    /// names none).
    pub fn prev_result(&self) -> Result<Option<CniResult>, Error> {
        match &self.conf.prev_result {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::from_value_in(v.clone(), &self.conf.cni_version).map(Some),
        }
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

    /// CNI_ARGS read as the reference plugins read them (`K=V;K2=V2`): a pair without
    /// '=' is an error, and so is a key outside `known` unless `IgnoreUnknown` is set
    /// to 1 or true. Returns the known pairs.
    pub fn cni_args(&self, known: &[&str]) -> Result<Vec<(String, String)>, Error> {
        parse_cni_args(&self.cni_args, known)
    }
}

/// A plugin implements the commands; the skeleton has already validated env and config.
pub trait Plugin {
    /// The spec versions this plugin speaks (a chained plugin that needs interfaces in
    /// prevResult starts later, as the reference's do).
    fn versions(&self) -> &'static [&'static str] {
        SUPPORTED_VERSIONS
    }
    /// Whether the plugin works in the container's namespace; if so, CNI_NETNS is opened
    /// and checked before the plugin runs. An IPAM plugin does not touch it.
    fn uses_netns(&self) -> bool {
        true
    }
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
/// 1 with an error object. Without CNI_COMMAND (a person at a terminal) it says what it
/// is on stderr and exits 0 without reading stdin, as the reference's skel does.
pub fn run(plugin: &dyn Plugin, about: &str) -> ! {
    crate::trace::mark("main");
    // Whatever the caller's umask, what we create is ours alone.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o077) };
    // A panic is reported below as an error object; the hook only logs it.
    std::panic::set_hook(Box::new(|info| eprintln!("plugin panicked: {info}")));
    let env = |k: &str| std::env::var(k).ok();
    if env("CNI_COMMAND").unwrap_or_default().is_empty() {
        eprintln!("{about}");
        eprintln!(
            "CNI protocol versions supported: {}",
            crate::spec::SUPPORTED_VERSIONS.join(", ")
        );
        std::process::exit(0)
    }
    let outcome = read_config(std::io::stdin().lock()).and_then(|stdin| serve(plugin, &env, stdin));
    crate::trace::mark("done");
    match outcome {
        Ok(Some(out)) => {
            print_json(&out);
            crate::trace::mark("printed");
            std::process::exit(0)
        }
        Ok(None) => std::process::exit(0),
        Err(e) => print_error(e),
    }
}

/// One call of `plugin` with the environment `env` and the config `stdin`: what the
/// plugin's process would print, its error object, or a panic's (see [`run`]). A plugin
/// linked into another runs through this (`delegate::Linked`).
pub fn serve(
    plugin: &dyn Plugin,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: Vec<u8>,
) -> Result<Option<Value>, Error> {
    if stdin.len() > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    guarded(|| dispatch(plugin, env, stdin))
}

fn too_large() -> Error {
    Error::config(format!(
        "network config is larger than {MAX_CONFIG_BYTES} bytes"
    ))
}

/// Reads the config, refusing more than [`MAX_CONFIG_BYTES`] (code 7).
fn read_config(input: impl Read) -> Result<Vec<u8>, Error> {
    let mut stdin = Vec::new();
    input
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut stdin)
        .map_err(|e| Error::new(code::IO, "reading stdin").details(e.to_string()))?;
    if stdin.len() > MAX_CONFIG_BYTES {
        return Err(too_large());
    }
    Ok(stdin)
}

/// Runs `f`, turning a panic into an internal error once it has unwound (so the guards of
/// what the call created have undone it).
fn guarded<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::new(code::INTERNAL, "internal error").details(what))
    })
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
        return Ok(Some(version_reply(&stdin, plugin.versions())));
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
        names::container_id(&container_id)?;
        names::ifname(&ifname)?;
    }
    let raw: Value = serde_json::from_slice(&stdin)
        .map_err(|e| Error::new(code::DECODE, "decoding network config").details(e.to_string()))?;
    let conf: NetConf = crate::decode::from_value(&raw)
        .map_err(|e| Error::config("invalid network config").details(e.to_string()))?;
    // As the reference: a command the config's version lacks is refused (with its text,
    // which callers compare) before the plugin's own versions are looked at.
    let allowed = |v: Version| match command {
        Command::Check => v.has_check(),
        Command::Status | Command::Gc => v.has_status_and_gc(),
        _ => true,
    };
    if Version::parse(&conf.cni_version).is_some_and(|v| !allowed(v)) {
        return Err(Error::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version does not allow {cmd_s}"),
        ));
    }
    let version = Version::supported_of(&conf.cni_version, plugin.versions())?;
    // As the reference's skel: every command but VERSION, DEL included.
    names::network_name(&conf.name)?;
    let netns = env("CNI_NETNS").unwrap_or_default();
    let netns_handle = match command {
        _ if !plugin.uses_netns() => None,
        Command::Add | Command::Check => Some(Arc::new(Netns::open_container(&netns)?)),
        Command::Del => Netns::open_if_present(&netns).map(Arc::new),
        _ => None,
    };
    let args = CmdArgs {
        command,
        container_id,
        netns,
        ifname,
        cni_args: env("CNI_ARGS").unwrap_or_default(),
        path: std::env::split_paths(&env("CNI_PATH").unwrap_or_default()).collect(),
        stdin,
        version,
        raw,
        conf,
        netns_handle,
    };
    let tag = |mut e: Error| {
        e.cni_version = args.conf.cni_version.clone();
        e
    };
    match command {
        Command::Add => {
            // Refused before anything is made (the reference's skel checks after ADD).
            own_netns_refused(&args.netns, env("CNI_NETNS_OVERRIDE")).map_err(tag)?;
            let r = plugin.add(&args).map_err(tag)?;
            r.to_json(&args.conf.cni_version).map(Some).map_err(tag)
        }
        Command::Del => {
            plugin.del(&args).map_err(tag)?;
            own_netns_refused(&args.netns, env("CNI_NETNS_OVERRIDE")).map_err(tag)?;
            Ok(None)
        }
        Command::Check => plugin.check(&args).map_err(tag).map(|_| None),
        Command::Status => plugin.status(&args).map_err(tag).map(|_| None),
        Command::Gc => plugin.gc(&args).map_err(tag).map(|_| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// The CNI library's rule since 1.2 (reference plugins v1.4): ADD and DEL fail when
/// CNI_NETNS is the plugin's own network namespace (a runtime's mistake that would
/// configure the host), unless CNI_NETNS_OVERRIDE is `true` (any case) or `1`.
fn own_netns_refused(netns: &str, over: Option<String>) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    if over.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1") || netns.is_empty() {
        return Ok(());
    }
    // stat only: nothing at the path is opened (a FIFO there cannot block us).
    let id = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    // The calling thread's: a plugin linked into another runs on a thread of its own.
    match (id(netns), id("/proc/thread-self/ns/net")) {
        (Some(a), Some(b)) if a == b => Err(Error::new(
            code::INVALID_NETNS,
            "plugin's netns and netns from CNI_NETNS should not be the same",
        )),
        _ => Ok(()),
    }
}

fn version_reply(stdin: &[u8], versions: &[&str]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| crate::spec::LATEST_VERSION.to_string());
    json!({"cniVersion": asked, "supportedVersions": versions})
}

fn missing_env(k: &str) -> Error {
    Error::new(
        code::INVALID_ENV,
        format!("required environment variable {k} is missing"),
    )
}

/// CNI_ARGS as the reference's `types.LoadArgs` reads it into a struct with the fields
/// `known`.
fn parse_cni_args(s: &str, known: &[&str]) -> Result<Vec<(String, String)>, Error> {
    let invalid = |msg: String| Error::new(code::INVALID_ENV, format!("CNI_ARGS: {msg}"));
    let mut pairs = Vec::new();
    let mut ignore_unknown = false;
    for p in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = match p.split('=').collect::<Vec<_>>()[..] {
            [k, v] => (k, v),
            _ => return Err(invalid(format!("invalid pair {p:?}"))),
        };
        if k == "IgnoreUnknown" {
            ignore_unknown = match v.to_ascii_lowercase().as_str() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => return Err(invalid(format!("invalid boolean in {p:?}"))),
            };
        } else {
            pairs.push((k.to_string(), v.to_string()));
        }
    }
    let unknown: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !unknown.is_empty() && !ignore_unknown {
        return Err(invalid(format!("unknown args {unknown:?}")));
    }
    pairs.retain(|(k, _)| known.contains(&k.as_str()));
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::HashMap;

    thread_local! {
        static UNDONE: Cell<bool> = const { Cell::new(false) };
    }

    /// Undoes "what the call created" when dropped, as the plugins' guards do.
    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            UNDONE.set(true);
        }
    }

    struct Echo;
    impl Plugin for Echo {
        fn add(&self, a: &CmdArgs) -> Result<CniResult, Error> {
            let _created = Guard;
            let args = a.cni_args(&["PANIC", "FAIL"])?;
            if args.iter().any(|(k, _)| k == "PANIC") {
                panic!("asked to");
            }
            if args.iter().any(|(k, _)| k == "FAIL") {
                return Err(Error::new(code::INTERNAL, "asked"));
            }
            std::mem::forget(_created);
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
            // The test's own namespace: a real one, which Echo does not touch (hence
            // the override).
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_NETNS_OVERRIDE", "1"),
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
        guarded(|| dispatch(&Echo, &|k| m.get(k).cloned(), stdin.as_bytes().to_vec()))
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"n","type":"echo"}"#;

    #[test]
    fn own_namespace_is_refused_on_add_and_del_unless_overridden() {
        for cmd in ["ADD", "DEL"] {
            let e = call(&[("CNI_COMMAND", cmd), ("CNI_NETNS_OVERRIDE", "")], CONF).unwrap_err();
            assert_eq!(e.code, code::INVALID_NETNS, "{cmd}");
            let no = call(&[("CNI_COMMAND", cmd), ("CNI_NETNS_OVERRIDE", "yes")], CONF);
            assert!(no.is_err(), "{cmd}");
            assert!(call(
                &[("CNI_COMMAND", cmd), ("CNI_NETNS_OVERRIDE", "True")],
                CONF
            )
            .is_ok());
        }
        let check = [("CNI_COMMAND", "CHECK"), ("CNI_NETNS_OVERRIDE", "")];
        let v04 = r#"{"cniVersion":"0.4.0","name":"n","type":"echo","prevResult":{"cniVersion":"0.4.0"}}"#;
        assert!(call(&check, v04).is_ok());
    }

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
            ("CNI_NETNS", "/proc/self/ns/uts"),
            ("CNI_NETNS", "/dev/null"),
        ] {
            assert_eq!(call(&[(k, v)], CONF).unwrap_err().code, 4, "{k}={v}");
        }
        let gone = call(&[("CNI_NETNS", "/run/netns/cni-rs-none")], CONF).unwrap_err();
        assert_eq!(gone.code, 3);
    }

    #[test]
    fn cni_args_as_the_reference_reads_them() {
        // only a plugin that reads CNI_ARGS fails on them, with the reference's rules
        assert_eq!(call(&[("CNI_ARGS", "novalue")], CONF).unwrap_err().code, 4);
        assert_eq!(
            call(&[("CNI_ARGS", "K8S_POD_NAME=x")], CONF)
                .unwrap_err()
                .code,
            4
        );
        assert!(call(&[("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=x")], CONF).is_ok());
        assert!(call(&[("CNI_ARGS", "IgnoreUnknown=TRUE;A=b")], CONF).is_ok());
        for bad in ["A=b=c", "IgnoreUnknown=yes", "ignoreunknown=1;A=b"] {
            assert_eq!(
                call(&[("CNI_ARGS", bad)], CONF).unwrap_err().code,
                4,
                "{bad}"
            );
        }
        let known = parse_cni_args("IP=10.0.0.5;IgnoreUnknown=1;X=y", &["IP"]).unwrap();
        assert_eq!(known, vec![("IP".to_string(), "10.0.0.5".to_string())]);
    }

    #[test]
    fn del_needs_no_netns() {
        assert!(call(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")], CONF).is_ok());
        assert!(call(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "/dev/null")], CONF).is_ok());
    }

    #[test]
    fn decode_and_config_errors() {
        assert_eq!(call(&[], "{not json").unwrap_err().code, 6);
        assert_eq!(call(&[], r#"{"cniVersion":3}"#).unwrap_err().code, 7);
        let future = r#"{"cniVersion":"0.5.0","name":"n","type":"echo"}"#;
        assert_eq!(call(&[], future).unwrap_err().code, 1);
        let old = r#"{"cniVersion":"0.2.0","name":"n","type":"echo"}"#;
        assert!(call(&[], old).is_err(), "a 0.2.0 result needs an address");
    }

    #[test]
    fn network_names_are_checked_by_every_command() {
        for bad in ["a/b", "../x", "a\"b", "", "-x"] {
            let conf = json!({"cniVersion": "1.0.0", "name": bad, "type": "echo"}).to_string();
            for cmd in ["ADD", "DEL", "CHECK"] {
                let e = call(&[("CNI_COMMAND", cmd)], &conf).unwrap_err();
                assert_eq!(e.code, 7, "{cmd} {bad:?}");
            }
        }
    }

    #[test]
    fn oversized_config_is_refused() {
        let big = vec![b' '; MAX_CONFIG_BYTES + 1];
        assert_eq!(read_config(&big[..]).unwrap_err().code, 7);
        assert!(read_config(&big[..MAX_CONFIG_BYTES]).is_ok());
    }

    #[test]
    fn a_panic_is_an_error_object_after_the_undo() {
        UNDONE.set(false);
        let e = call(&[("CNI_ARGS", "PANIC=1")], CONF).unwrap_err();
        assert_eq!((e.code, e.details.as_str()), (100, "asked to"));
        assert!(UNDONE.get(), "the guard did not run");
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
        assert_eq!(out["supportedVersions"].as_array().unwrap().len(), 7);
        let out = call(&[("CNI_COMMAND", "VERSION")], "").unwrap().unwrap();
        assert_eq!(out["cniVersion"], "1.1.0");
    }

    #[test]
    fn plugin_errors_carry_config_version() {
        let e = call(&[("CNI_ARGS", "FAIL=1")], CONF).unwrap_err();
        assert_eq!((e.code, e.cni_version.as_str()), (100, "1.0.0"));
    }

    mod properties {
        use super::*;
        use crate::arbitrary::{
            check_dispatch, cni_args, config, hostile_string, json_value, RESULT_KEYS,
        };
        use proptest::prelude::*;

        /// Reads everything a plugin reads: prevResult, CNI_ARGS, its own fields.
        struct Probe;
        impl Plugin for Probe {
            fn add(&self, a: &CmdArgs) -> Result<CniResult, Error> {
                let _ = a.cni_args(&["IP", "MAC", "GATEWAY"])?;
                let _ = a.valid_attachments();
                Ok(a.prev_result()?.unwrap_or_default())
            }
            fn del(&self, a: &CmdArgs) -> Result<(), Error> {
                self.add(a).map(|_| ())
            }
            fn check(&self, a: &CmdArgs) -> Result<(), Error> {
                a.required_prev_result().map(|_| ())
            }
        }

        const FIELDS: &[&str] = &[
            "prevResult",
            "ipam",
            "dns",
            "runtimeConfig",
            "args",
            "cni.dev/valid-attachments",
            "capabilities",
        ];

        proptest! {
            #![proptest_config(crate::arbitrary::bounded(512))]

            /// Never a panic; every rejection an error object with a code of the spec or ours.
            #[test]
            fn dispatch_never_panics(
                mut conf in config(FIELDS),
                prev in json_value(RESULT_KEYS),
                args in cni_args(),
                cmd in prop::sample::select(&["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "X"][..]),
            ) {
                conf["prevResult"] = prev;
                check_dispatch(&Probe, cmd, &conf, &args)?;
            }

            /// Hostile container IDs and interface names are refused, never used.
            #[test]
            fn names_from_the_environment(cid in hostile_string(), ifname in hostile_string()) {
                let out = call(&[("CNI_CONTAINERID", &cid), ("CNI_IFNAME", &ifname)], CONF);
                let valid = names::is_container_id(&cid) && names::is_ifname(&ifname);
                prop_assert_eq!(out.is_ok(), valid);
            }

            /// Any prevResult either fails to decode or prints in every version.
            #[test]
            fn results_convert_or_refuse(v in json_value(RESULT_KEYS), version in prop::sample::select(SUPPORTED_VERSIONS)) {
                if let Ok(r) = CniResult::from_value_in(v, version) {
                    for to in SUPPORTED_VERSIONS {
                        let _ = r.to_json(to);
                    }
                }
            }
        }
    }
}
