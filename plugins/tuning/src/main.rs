//! `tuning`: a chained plugin that sets net.* sysctls inside the container and the
//! container interface's MAC, MTU, promiscuous and all-multicast modes and queue length.
//! The link's previous settings are saved on ADD and put back on DEL, in the reference
//! plugin's backup file (`<dataDir>/<containerID>_<ifname>.json`, same fields), so a node
//! can switch between it and us without losing them.

mod guard;

use std::collections::BTreeMap;
use std::path::PathBuf;

use libcni::attachment::backup::Backups;
use libcni::attachment::Attachment;
use libcni::mac::{format_mac, parse_mac};
use libcni::net::{self, Kernel, LinkInfo, LinkTuning};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::{code, CniResult, Error};
use serde::{Deserialize, Serialize};

const DEFAULT_DATA_DIR: &str = "/run/cni/tuning";

/// The link settings and sysctls, as the config, `args.cni` and runtimeConfig give them.
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
    #[serde(default)]
    sysctl: BTreeMap<String, String>,
}

/// The rest of the config; its own settings are read as [`Settings`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conf {
    name: String,
    /// The config's sysctls and those of `args.cni` (resolved by `load`).
    #[serde(skip)]
    sysctl: BTreeMap<String, String>,
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

/// The reference's backup: the settings before ADD changed them (`txQLen` is ours; the
/// reference ignores fields it does not know).
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Backup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    promisc: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allmulti: Option<bool>,
    #[serde(default, rename = "txQLen", skip_serializing_if = "Option::is_none")]
    txqlen: Option<u32>,
}

impl Backup {
    fn tuning(&self) -> Result<LinkTuning, String> {
        let mac = self
            .mac
            .as_deref()
            .map(|m| {
                parse_mac(m)
                    .map(|m| m.to_vec())
                    .ok_or(format!("invalid mac {m:?}"))
            })
            .transpose()?;
        Ok(LinkTuning {
            mac,
            mtu: self.mtu,
            promisc: self.promisc,
            allmulti: self.allmulti,
            txqlen: self.txqlen,
        })
    }
}

impl Conf {
    /// As the reference: the config, then CNI_ARGS `MAC=`, then runtimeConfig, then
    /// `args.cni`; later wins. Sysctls of `args.cni` join the config's.
    fn load(args: &CmdArgs) -> Result<(Conf, LinkTuning), Error> {
        let mut c: Conf = args.parse_conf()?;
        let own: Settings = args.parse_conf()?;
        c.sysctl = own.sysctl;
        let mut mac = own.mac;
        if let Some((_, m)) = args.cni_args(&["MAC"])?.pop() {
            mac = Some(m);
        }
        let (mut mtu, mut promisc, mut allmulti, mut txqlen) =
            (own.mtu, own.promisc, own.allmulti, own.txqlen);
        let rc = std::mem::take(&mut c.runtime_config);
        mac = rc.mac.or(mac);
        if let Some(a) = c.args.take() {
            let s = a.cni;
            mac = s.mac.or(mac);
            mtu = s.mtu.or(mtu);
            promisc = s.promisc.or(promisc);
            allmulti = s.allmulti.or(allmulti);
            txqlen = s.txqlen.or(txqlen);
            c.sysctl.extend(s.sysctl);
        }
        let mac = mac
            .map(|m| parse_mac(&m).ok_or_else(|| Error::config(format!("invalid mac {m:?}"))))
            .transpose()?;
        if mtu == Some(0) {
            return Err(Error::config("mtu must be positive"));
        }
        let tuning = LinkTuning {
            mac: mac.map(|m| m.to_vec()),
            mtu,
            // As the reference: promisc false asks for nothing.
            promisc: promisc.filter(|p| *p),
            allmulti,
            txqlen,
        };
        Ok((c, tuning))
    }

    fn backups(&self) -> Backups {
        Backups::new(self.data_dir.as_deref(), DEFAULT_DATA_DIR)
    }
}

/// /proc/sys path of a sysctl key, only under net/ (`IFNAME` stands for the interface,
/// whose name may hold dots).
fn sysctl_path(key: &str, ifname: &str) -> Result<String, Error> {
    let parts: Vec<String> = key
        .split(['.', '/'])
        .map(|p| {
            if p == "IFNAME" {
                ifname.to_string()
            } else {
                p.to_string()
            }
        })
        .collect();
    let ok = parts.len() >= 2
        && parts[0] == "net"
        && parts
            .iter()
            .all(|p| !p.is_empty() && p != "." && p != ".." && !p.contains('\0'));
    if !ok {
        return Err(Error::config(format!(
            "invalid net sysctl key {key:?}: only net.* can be set"
        )));
    }
    Ok(parts.join("/"))
}

/// The settings `t` names, as the link has them now (for the backup and for CHECK).
fn current(link: &LinkInfo, t: &LinkTuning) -> LinkTuning {
    LinkTuning {
        mac: t.mac.as_ref().map(|_| link.mac.clone()),
        mtu: t.mtu.map(|_| link.mtu),
        promisc: t.promisc.map(|_| link.promisc),
        allmulti: t.allmulti.map(|_| link.allmulti),
        txqlen: t.txqlen.map(|_| link.txqlen),
    }
}

fn backup_of(link: &LinkInfo, t: &LinkTuning) -> Backup {
    let now = current(link, t);
    Backup {
        mac: now.mac.map(|m| format_mac(&m)),
        promisc: now.promisc,
        mtu: now.mtu,
        allmulti: now.allmulti,
        txqlen: now.txqlen,
    }
}

fn gone(name: &str) -> Error {
    Error::new(
        code::UNKNOWN_CONTAINER,
        format!("{name} is missing in the container"),
    )
}

struct Tuning;

impl Plugin for Tuning {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        guard::no_duplicate_keys(&args.stdin)?;
        let (conf, tuning) = Conf::load(args)?;
        guard::allowed(conf.sysctl.keys(), guard::ALLOWLIST)?;
        let mut result = args.required_prev_result()?;
        let a = Attachment::of(args);
        let sysctls = conf
            .sysctl
            .iter()
            .map(|(k, v)| Ok((sysctl_path(k, a.ifname())?, v.clone())))
            .collect::<Result<Vec<_>, Error>>()?;
        let netns = args.required_netns()?;
        for (key, value) in &sysctls {
            netns.run(|| net::sysctl_set(key, value))??;
        }
        if tuning != LinkTuning::default() {
            let k = Kernel::new()?;
            let nl = k.connect_in(netns)?;
            let link = k
                .run(nl.link(a.ifname()))?
                .ok_or_else(|| gone(a.ifname()))?;
            conf.backups().save(&a, &backup_of(&link, &tuning))?;
            k.run(nl.tune_link(link.index, a.ifname(), &tuning))?;
        }
        if let Some(mac) = &tuning.mac {
            // As the reference, by name: prevResult may say the sandbox otherwise than
            // CNI_NETNS does; a host interface of that name is another link.
            for i in result
                .interfaces
                .iter_mut()
                .filter(|i| i.name == args.ifname && !i.sandbox.is_empty())
            {
                i.mac = format_mac(mac);
            }
        }
        Ok(result)
    }

    /// Puts the saved settings back and removes the backup. A backup that cannot be
    /// applied (a namespace already gone, say) is only logged: DEL succeeds and removes
    /// this attachment's backup. A file in its place that is no backup (the dataDir is
    /// shared, and `<containerID>_<ifname>.json` can name anything) is left as it is.
    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let (conf, _) = Conf::load(args)?;
        let a = Attachment::of(args);
        let backups = conf.backups();
        let saved = match backups.load::<Backup>(&a) {
            Ok(Some(b)) if b != Backup::default() => b.tuning(),
            Ok(None) => return Ok(()),
            Ok(Some(_)) | Err(_) => {
                eprintln!(
                    "tuning DEL: {} is not a backup of ours; left as it is",
                    backups.file(&a).display()
                );
                return Ok(());
            }
        };
        let restored = saved.map_err(Error::config).and_then(|saved| {
            let Some(netns) = args.netns() else {
                return Ok(());
            };
            let k = Kernel::new()?;
            let nl = k.connect_in(netns)?;
            match k.run(nl.link(a.ifname()))? {
                Some(link) => k.run(nl.tune_link(link.index, a.ifname(), &saved)),
                None => Ok(()),
            }
        });
        if let Err(e) = restored {
            eprintln!(
                "tuning DEL: not restoring {}: {e}",
                backups.file(&a).display()
            );
        }
        backups.remove(&a)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        guard::no_duplicate_keys(&args.stdin)?;
        let (conf, tuning) = Conf::load(args)?;
        args.required_prev_result()?;
        let netns = args.required_netns()?;
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
        let k = Kernel::new()?;
        let nl = k.connect_in(netns)?;
        let link = k
            .run(nl.link(&args.ifname))?
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

    /// Removes the backups this network wrote for attachments the runtime no longer
    /// lists (their namespaces are gone: nothing to restore). Backups of other networks,
    /// and the reference's (which name no network), are left alone.
    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        let (conf, _) = Conf::load(args)?;
        conf.backups()
            .remove_stale(&conf.name, &args.valid_attachments()?)
    }
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    skel::run(&Tuning, "CNI tuning plugin (cni-rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_any_input_never_panics() {
        const FIELDS: &[&str] = &[
            "sysctl",
            "mac",
            "mtu",
            "promisc",
            "allmulti",
            "txQLen",
            "dataDir",
            "runtimeConfig",
            "args",
            "cni",
        ];
        libcni::arbitrary::probe_reading(FIELDS, |a| {
            let (conf, _) = Conf::load(a)?;
            for key in conf.sysctl.keys() {
                sysctl_path(key, &a.ifname)?;
            }
            Ok(())
        });
    }

    #[test]
    fn only_net_sysctls() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.IFNAME.arp_filter", "eth0").unwrap(),
            "net/ipv4/conf/eth0/arp_filter"
        );
        assert_eq!(
            sysctl_path("net.ipv4.conf.IFNAME.arp_filter", "eth0.100").unwrap(),
            "net/ipv4/conf/eth0.100/arp_filter"
        );
        assert_eq!(
            sysctl_path("net/core/somaxconn", "eth0").unwrap(),
            "net/core/somaxconn"
        );
        for bad in [
            "kernel.pid_max",
            "vm.swappiness",
            "net..core",
            "netfilter.x",
            "net",
            "net/../kernel/hostname",
            "net.IFNAME.x",
        ] {
            let ifname = if bad.contains("IFNAME") { ".." } else { "eth0" };
            assert_eq!(sysctl_path(bad, ifname).unwrap_err().code, 7, "{bad}");
        }
    }

    #[test]
    fn backup_reads_the_references() {
        let theirs = "{\n \"mac\": \"82:b9:3d:0c:37:26\",\n \"promisc\": false,\n \"mtu\": 1500,\n \"allmulti\": false\n}";
        let b: Backup = serde_json::from_str(theirs).unwrap();
        let t = b.tuning().unwrap();
        assert_eq!(t.mtu, Some(1500));
        assert_eq!(t.mac, Some(vec![0x82, 0xb9, 0x3d, 0x0c, 0x37, 0x26]));
        let ours = serde_json::to_value(Backup {
            mtu: Some(9000),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ours, serde_json::json!({"mtu": 9000}));
    }
}
