//! `cnitool`: the runtime side as a command, with the usage of upstream cnitool. Prints the
//! result of `add` as JSON on stdout; errors go to stderr with a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use libcni::runtime::{self, Cni, RuntimeConf, RuntimeError};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha512};

#[derive(Parser)]
#[command(
    name = "cnitool",
    about = "Runs a CNI network configuration against a network namespace.",
    long_about = "Runs a CNI network configuration against an existing network namespace: \
adds, checks or deletes an interface, asks the plugins for their status, or garbage-collects \
attachments of the network. The container ID is derived from the namespace path, as upstream \
cnitool does, so either tool can delete what the other added.",
    after_help = "Environment:
  NETCONFPATH    directory of network configs (.conflist, .conf, .json); default /etc/cni/net.d
  CNI_PATH       plugin directories, separated by ':'
  CNI_IFNAME     interface name in the namespace when --ifname is not given; default eth0
  CNI_ARGS       extra arguments for the plugins, 'KEY=VALUE;KEY2=VALUE2'
  CAP_ARGS       capability arguments as a JSON object, e.g. '{\"portMappings\":[...]}'
  CNI_CACHE_DIR  result cache directory; default /var/lib/cni (results/ below it)

Examples:
  ip netns add demo
  CNI_PATH=/opt/cni/bin cnitool add mynet /var/run/netns/demo
  CNI_PATH=/opt/cni/bin cnitool del mynet /var/run/netns/demo"
)]
struct Args {
    /// What to do.
    command: Action,
    /// Network name, as in the config's "name".
    network: String,
    /// Path of the network namespace (e.g. /var/run/netns/NAME).
    netns: PathBuf,
    /// Interface name inside the namespace (default: $CNI_IFNAME or eth0).
    #[arg(short, long)]
    ifname: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Action {
    Add,
    Check,
    Del,
    Status,
    Gc,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// `cnitool-` and the first 10 bytes of SHA-512 of the namespace path, as upstream.
fn container_id(netns: &Path) -> String {
    let digest = Sha512::digest(netns.as_os_str().as_encoded_bytes());
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("cnitool-{hex}")
}

fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(';')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() && !v.contains('=') => {
                Ok((k.to_string(), v.to_string()))
            }
            _ => Err(format!("invalid CNI_ARGS pair {pair:?}")),
        })
        .collect()
}

fn run(args: Args) -> Result<Option<Value>, String> {
    let dir = PathBuf::from(env("NETCONFPATH").unwrap_or_else(|| "/etc/cni/net.d".into()));
    let list = runtime::load(&dir, &args.network).map_err(|e| e.to_string())?;
    let netns = std::path::absolute(&args.netns)
        .map_err(|e| format!("netns path {}: {e}", args.netns.display()))?;
    let capability_args: Map<String, Value> = match env("CAP_ARGS") {
        Some(s) => {
            serde_json::from_str(&s).map_err(|e| format!("CAP_ARGS is not a JSON object: {e}"))?
        }
        None => Map::new(),
    };
    let rt = RuntimeConf {
        container_id: container_id(&netns),
        netns: netns.display().to_string(),
        ifname: args
            .ifname
            .or_else(|| env("CNI_IFNAME"))
            .unwrap_or_else(|| "eth0".into()),
        args: env("CNI_ARGS")
            .map(|s| parse_cni_args(&s))
            .transpose()?
            .unwrap_or_default(),
        capability_args,
    };
    let mut cni = Cni::new(std::env::split_paths(&env("CNI_PATH").unwrap_or_default()).collect());
    if let Some(dir) = env("CNI_CACHE_DIR") {
        cni.cache_dir = dir.into();
    }
    let describe = |e: RuntimeError| match e.code() {
        Some(code) => format!("{e} (code {code})"),
        None => e.to_string(),
    };
    match args.command {
        Action::Add => {
            let r = cni.add(&list, &rt).map_err(describe)?;
            return r
                .to_json(&list.cni_version)
                .map(Some)
                .map_err(|e| e.to_string());
        }
        Action::Check => cni.check(&list, &rt).map(|_| None),
        Action::Del => cni.del(&list, &rt).map(|_| None),
        Action::Status => cni.status(&list).map(|_| None),
        Action::Gc => cni.gc(&list, None).map(|_| None),
    }
    .map_err(describe)
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(Some(result)) => {
            // Indented by four spaces, as upstream prints results.
            let mut out = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            result
                .serialize(&mut ser)
                .expect("a JSON value always serializes");
            println!("{}", String::from_utf8_lossy(&out));
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cnitool: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_id_matches_upstream() {
        // `echo -n /var/run/netns/demo | sha512sum`, first 10 bytes.
        let id = container_id(Path::new("/var/run/netns/demo"));
        assert_eq!(id, "cnitool-81e3a71f81544407538e");
    }

    #[test]
    fn cni_args_pairs() {
        assert_eq!(parse_cni_args("IP=10.0.0.5;K=V").unwrap().len(), 2);
        assert!(parse_cni_args("IP").is_err());
        assert!(parse_cni_args("A=B=C").is_err());
    }
}
