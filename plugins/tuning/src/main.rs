//! `tuning`: a chained plugin that sets net.* sysctls inside the container and the
//! container interface's MAC, MTU, promiscuous and all-multicast modes and queue length.
//! The link's previous settings are saved on ADD and put back on DEL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libcni::net::{self, block_on, format_mac, parse_mac, LinkTuning, Netlink, Netns};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::{code, CniResult, Error};
use serde::Deserialize;

const DEFAULT_DATA_DIR: &str = "/run/cni/tuning";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Settings {
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    promisc: Option<bool>,
    #[serde(default)]
    allmulti: Option<bool>,
    #[serde(default, rename = "txQLen")]
    txqlen: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conf {
    #[serde(default)]
    sysctl: BTreeMap<String, String>,
    #[serde(flatten)]
    settings: Settings,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    runtime_config: Settings,
    #[serde(default)]
    args: Option<Args>,
}

#[derive(Debug, Deserialize)]
struct Args {
    #[serde(default)]
    cni: Settings,
}

impl Conf {
    /// The config, then `args.cni`, then CNI_ARGS `MAC=`, then runtimeConfig: later wins.
    fn load(args: &CmdArgs) -> Result<(Conf, LinkTuning), Error> {
        let mut c: Conf = args.parse_conf()?;
        let mut s = std::mem::take(&mut c.settings);
        if let Some(a) = c.args.take() {
            merge(&mut s, a.cni);
        }
        if let Some(mac) = args.cni_arg("MAC") {
            s.mac = Some(mac.to_string());
        }
        merge(&mut s, std::mem::take(&mut c.runtime_config));
        let mac = s
            .mac
            .map(|m| parse_mac(&m).ok_or_else(|| Error::config(format!("invalid mac {m:?}"))))
            .transpose()?;
        if s.mtu == Some(0) {
            return Err(Error::config("mtu must be positive"));
        }
        let tuning = LinkTuning {
            mac,
            mtu: s.mtu,
            promisc: s.promisc,
            allmulti: s.allmulti,
            txqlen: s.txqlen,
        };
        Ok((c, tuning))
    }

    fn backup_file(&self, args: &CmdArgs) -> PathBuf {
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        dir.join(format!("{}-{}.json", args.container_id, args.ifname))
    }
}

fn merge(into: &mut Settings, from: Settings) {
    into.mac = from.mac.or(into.mac.take());
    into.mtu = from.mtu.or(into.mtu);
    into.promisc = from.promisc.or(into.promisc);
    into.allmulti = from.allmulti.or(into.allmulti);
    into.txqlen = from.txqlen.or(into.txqlen);
}

/// /proc/sys path of a sysctl key, only under net/ (`IFNAME` stands for the interface).
fn sysctl_path(key: &str, ifname: &str) -> Result<String, Error> {
    let path = key.replace('.', "/").replacen("IFNAME", ifname, 1);
    if !path.starts_with("net/") || path.split('/').any(|p| p.is_empty() || p == "..") {
        return Err(Error::config(format!(
            "invalid net sysctl key {key:?}: only net.* can be set"
        )));
    }
    Ok(path)
}

/// The settings `t` names, as the link has them now (for the backup and for CHECK).
fn current(link: &net::LinkInfo, t: &LinkTuning) -> LinkTuning {
    LinkTuning {
        mac: t.mac.as_ref().map(|_| link.mac.clone()),
        mtu: t.mtu.map(|_| link.mtu),
        promisc: t.promisc.map(|_| link.promisc),
        allmulti: t.allmulti.map(|_| link.allmulti),
        txqlen: t.txqlen.map(|_| link.txqlen),
    }
}

struct Tuning;

impl Plugin for Tuning {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let (conf, tuning) = Conf::load(args)?;
        let mut result = args.required_prev_result()?;
        let sysctls = conf
            .sysctl
            .iter()
            .map(|(k, v)| Ok((sysctl_path(k, &args.ifname)?, v.clone())))
            .collect::<Result<Vec<_>, Error>>()?;
        let netns = Netns::open_container(&args.netns)?;
        for (key, value) in &sysctls {
            netns.run(|| net::sysctl_set(key, value))??;
        }
        if tuning != LinkTuning::default() {
            let backup = conf.backup_file(args);
            block_on(async {
                let nl = Netlink::connect_in(&netns)?;
                let link = nl
                    .link(&args.ifname)
                    .await?
                    .ok_or_else(|| gone(&args.ifname))?;
                save_backup(&backup, &current(&link, &tuning))?;
                nl.tune_link(link.index, &args.ifname, &tuning).await
            })??;
        }
        if let Some(mac) = &tuning.mac {
            for i in result
                .interfaces
                .iter_mut()
                .filter(|i| i.name == args.ifname && i.sandbox == args.netns)
            {
                i.mac = format_mac(mac);
            }
        }
        Ok(result)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let (conf, _) = Conf::load(args)?;
        let backup = conf.backup_file(args);
        let Ok(text) = std::fs::read(&backup) else {
            return Ok(());
        };
        if let Ok(netns) = Netns::open(&args.netns) {
            let saved: LinkTuning = serde_json::from_slice(&text).map_err(|e| {
                Error::new(code::IO, format!("reading {}", backup.display())).details(e.to_string())
            })?;
            block_on(async {
                let nl = Netlink::connect_in(&netns)?;
                match nl.link(&args.ifname).await? {
                    Some(link) => nl.tune_link(link.index, &args.ifname, &saved).await,
                    None => Ok(()),
                }
            })??;
        }
        let _ = std::fs::remove_file(&backup);
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let (conf, tuning) = Conf::load(args)?;
        args.required_prev_result()?;
        let netns = Netns::open_container(&args.netns)?;
        let mut problems = Vec::new();
        for (key, want) in &conf.sysctl {
            let path = format!("/proc/sys/{}", sysctl_path(key, &args.ifname)?);
            let have = netns
                .run(|| std::fs::read_to_string(&path))?
                .unwrap_or_default();
            if have.trim() != want.trim() {
                problems.push(format!("sysctl {key} is {:?}, want {want:?}", have.trim()));
            }
        }
        let link = block_on(async { Netlink::connect_in(&netns)?.link(&args.ifname).await })??
            .ok_or_else(|| Error::new(code::CHECK_FAILED, format!("{} is missing", args.ifname)))?;
        if current(&link, &tuning) != tuning {
            problems.push(format!(
                "{} has {:?}, want {tuning:?}",
                args.ifname,
                current(&link, &tuning)
            ));
        }
        Error::check("tuning differs", problems)
    }
}

fn gone(name: &str) -> net::Error {
    net::Error::io(
        format!("finding {name}"),
        std::io::ErrorKind::NotFound.into(),
    )
}

fn save_backup(file: &Path, saved: &LinkTuning) -> Result<(), net::Error> {
    let io = |e| net::Error::io(format!("saving {}", file.display()), e);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(file, serde_json::to_vec(saved).expect("settings serialize")).map_err(io)
}

fn main() {
    skel::run(&Tuning, "CNI tuning plugin (cni-rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_net_sysctls() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.IFNAME.arp_filter", "eth0").unwrap(),
            "net/ipv4/conf/eth0/arp_filter"
        );
        assert_eq!(
            sysctl_path("net.core.somaxconn", "eth0").unwrap(),
            "net/core/somaxconn"
        );
        for bad in [
            "kernel.pid_max",
            "vm.swappiness",
            "net..core",
            "netfilter.x",
        ] {
            assert_eq!(sysctl_path(bad, "eth0").unwrap_err().code, 7, "{bad}");
        }
        assert!(sysctl_path("net.ipv4.conf.IFNAME.x", "..").is_err());
    }
}
