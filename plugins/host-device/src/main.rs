//! `host-device`: hands a link of the host (named by `device`, `hwaddr`, `kernelpath` or
//! `pciBusID`/runtimeConfig `deviceID`, a PCI address or an auxiliary-bus device) to the container under CNI_IFNAME, addressed by the
//! IPAM delegate if there is one, and back to the host under its old name on DEL. As the
//! reference, the old name travels in the link's alias; the host addresses the kernel
//! drops on the move, the old name and what makes the device known again in the container
//! (not its name) are saved (libcni's backups): DEL gives the host's addresses to that
//! device only. A device bound to a userspace (DPDK) driver has no link: only its IPAM
//! result is reported.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use libcni::attachment::backup::Backups;
use libcni::attachment::{container, Attachment, PendingLease, Undo};
use libcni::delegate::Delegate;
use libcni::mac::{format_mac, parse_mac};
use libcni::names;
use libcni::net::{Kernel, LinkInfo, Netlink, Netns};
use libcni::skel::{self, CmdArgs, Plugin};
use libcni::spec::{Dns, Interface};
use libcni::{code, CniResult, Error};
use serde::{Deserialize, Serialize};

const DEFAULT_DATA_DIR: &str = "/run/cni/host-device";
const USERSPACE_DRIVERS: &[&str] = &["vfio-pci", "uio_pci_generic", "igb_uio"];
const SYS_PCI: &str = "/sys/bus/pci/devices";
/// Sub-functions and other devices of the auxiliary bus (reference v1.5).
const SYS_AUX: &str = "/sys/bus/auxiliary/devices";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conf {
    #[serde(default)]
    device: String,
    #[serde(default)]
    hwaddr: String,
    #[serde(default)]
    kernelpath: String,
    #[serde(default, rename = "pciBusID")]
    pci_bus_id: String,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    #[serde(default)]
    dns: Option<Dns>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    #[serde(default, rename = "deviceID")]
    device_id: String,
}

/// How to find the device.
enum Device {
    Name(String),
    Mac([u8; 6]),
    /// A `/sys/devices/...` path whose `net/` holds the link.
    KernelPath(PathBuf),
    Pci(String),
    /// A device of the auxiliary bus, by its name there.
    Aux(String),
}

/// What DEL puts back on the host link, and on which link.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Saved {
    addresses: Vec<IpNetwork>,
    up: bool,
    /// The device ADD moved in. Without one (an older version's backup), DEL does what
    /// the reference does ([`give_back_by_alias`]) and gives no address back: no link in
    /// the container can be known to be the device.
    #[serde(default)]
    device: Option<Identity>,
}

/// The device ADD moved in, known by what the container cannot give a link of its own
/// while the device is there (its index in the container's namespace), with its MAC and
/// kind; never by its name or alias, which the container may change or copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Identity {
    /// Its name on the host, which it gets back.
    name: String,
    index: u32,
    mac: String,
    kind: Option<String>,
}

impl Identity {
    fn of(l: &LinkInfo) -> Identity {
        Identity {
            name: l.name.clone(),
            index: l.index,
            mac: format_mac(&l.mac),
            kind: l.kind.clone(),
        }
    }

    fn is(&self, l: &LinkInfo) -> bool {
        l.index == self.index && format_mac(&l.mac) == self.mac && l.kind == self.kind
    }
}

fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
}

/// runtimeConfig `deviceID`: a PCI address the PCI bus has, or a device of the auxiliary
/// bus (the reference's order); anything else is refused with the reference's message.
fn runtime_device(id: &str) -> Result<Device, Error> {
    if is_pci_address(id) && Path::new(SYS_PCI).join(id).exists() {
        return Ok(Device::Pci(id.to_string()));
    }
    // One plain path component only: the name is joined to a sysfs directory.
    let plain = id.len() <= 255 && !id.contains('/') && id != "." && id != "..";
    if plain && Path::new(SYS_AUX).join(id).exists() {
        return Ok(Device::Aux(id.to_string()));
    }
    Err(Error::config(format!(
        "runtime config DeviceID {id} not found or unsupported"
    )))
}

impl Conf {
    fn load(args: &CmdArgs) -> Result<(Conf, Device), Error> {
        let c: Conf = args.parse_conf()?;
        // As the reference: read (and refused when unknown) whatever else is given.
        let from_runtime = (!c.runtime_config.device_id.is_empty())
            .then(|| runtime_device(&c.runtime_config.device_id))
            .transpose()?;
        let pci = c.pci_bus_id.clone();
        let device = if !c.device.is_empty() {
            if !libcni::names::is_ifname(&c.device) {
                return Err(Error::config(format!("invalid device {:?}", c.device)));
            }
            Device::Name(c.device.clone())
        } else if !c.hwaddr.is_empty() {
            Device::Mac(parse_mac(&c.hwaddr).ok_or_else(|| {
                Error::config(format!("failed to parse MAC address {:?}", c.hwaddr))
            })?)
        } else if !c.kernelpath.is_empty() {
            let p = Path::new(&c.kernelpath);
            let plain = p.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            });
            if !plain || !c.kernelpath.starts_with("/sys/devices/") {
                return Err(Error::config(format!(
                    "kernel device path {:?} must be absolute and begin with /sys/devices/",
                    c.kernelpath
                )));
            }
            Device::KernelPath(p.to_path_buf())
        } else if let Some(d) = from_runtime {
            d
        } else if !pci.is_empty() {
            if !is_pci_address(&pci) {
                return Err(Error::config(format!("invalid PCI address {pci:?}")));
            }
            Device::Pci(pci)
        } else {
            return Err(Error::config(
                "specify either \"device\", \"hwaddr\", \"kernelpath\" or \"pciBusID\"",
            ));
        };
        Ok((c, device))
    }

    fn backups(&self) -> Backups {
        Backups::new(self.data_dir.as_deref(), DEFAULT_DATA_DIR)
    }
}

impl Device {
    /// A device bound to a userspace driver: it has no link to move.
    fn is_dpdk(&self) -> bool {
        let Device::Pci(pci) = self else { return false };
        std::fs::read_link(Path::new(SYS_PCI).join(pci).join("driver"))
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().to_string()))
            .is_some_and(|d| USERSPACE_DRIVERS.contains(&d.as_str()))
    }

    /// The names under a sysfs `net/` directory of the device.
    fn sysfs_names(&self) -> Vec<String> {
        let dirs: Vec<PathBuf> = match self {
            Device::KernelPath(p) => vec![p.join("net")],
            Device::Aux(name) => vec![Path::new(SYS_AUX).join(name).join("net")],
            Device::Pci(pci) => {
                let base = Path::new(SYS_PCI).join(pci);
                let mut d = vec![base.join("net")];
                // virtio devices keep it one level down
                if let Ok(entries) = std::fs::read_dir(&base) {
                    d.extend(
                        entries
                            .flatten()
                            .filter(|e| e.file_name().to_string_lossy().starts_with("virtio"))
                            .map(|e| e.path().join("net")),
                    );
                }
                d
            }
            _ => Vec::new(),
        };
        dirs.iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
            })
            .collect()
    }

    async fn find(&self, nl: &Netlink) -> Result<LinkInfo, Error> {
        let found = match self {
            Device::Name(n) => nl.link(n).await?,
            Device::Mac(mac) => nl.links().await?.into_iter().find(|l| l.mac == mac),
            _ => {
                let names = self.sysfs_names();
                nl.links()
                    .await?
                    .into_iter()
                    .find(|l| names.contains(&l.name))
            }
        };
        found.ok_or_else(|| Error::new(code::INVALID_CONFIG, "failed to find the host device"))
    }
}

struct HostDevice;

impl Plugin for HostDevice {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        let (conf, device) = Conf::load(args)?;
        let netns = args.required_netns()?;
        let a = Attachment::of(args);
        let ipam = Delegate::ipam(args);
        let mut r = CniResult::default();
        let k = Kernel::new()?;
        let inside = k.connect_in(netns)?;
        // Index of the device in the container, known once it is there.
        let index = Cell::new(0);
        let mut undo = Undo::new();
        if !device.is_dpdk() {
            let dev = k.run(device.find(k.host()))?;
            // The name is the claim: a link there already (a live attachment's device, the
            // container's own) and its backup are not this call's to touch.
            if k.run(inside.link(a.ifname()))?.is_some() {
                return Err(Error::new(
                    code::INVALID_ENV,
                    format!("{} already exists in {}", a.ifname(), args.netns),
                ));
            }
            index.set(dev.index);
            let saved = Saved {
                addresses: k.run(k.host().addresses(dev.index, &dev.name))?,
                up: dev.up,
                device: Some(Identity::of(&dev)),
            };
            let backups = conf.backups();
            if !backups.create(&a, &saved)? {
                return Err(Error::new(
                    code::INVALID_ENV,
                    format!(
                        "{} exists: {}/{} holds a device already",
                        backups.file(&a).display(),
                        a.container_id(),
                        a.ifname()
                    ),
                ));
            }
            undo.push("removing the backup", || conf.backups().remove(&a));
            // Pushed before the move: a move whose rename fails leaves the device inside.
            let (kernel, inner, index, back) = (&k, &inside, &index, saved.clone());
            undo.push(format!("moving {} back", dev.name), move || {
                let device = back.device.clone().map(|d| Identity {
                    index: index.get(),
                    ..d
                });
                give_back(kernel, inner, &Saved { device, ..back }).map(|_| ())
            });
            // As the reference: the old name rides along in the alias.
            k.run(
                k.host()
                    .move_link(dev.index, a.ifname(), Some(&dev.name), netns),
            )?;
            let moved = k
                .run(inside.link(a.ifname()))?
                .filter(|l| l.mac == dev.mac && l.kind == dev.kind)
                .ok_or_else(|| {
                    Error::new(
                        code::NETLINK,
                        format!("{} vanished after the move", a.ifname()),
                    )
                })?;
            // The kernel keeps the index unless the container's namespace has it taken.
            if moved.index != dev.index {
                index.set(moved.index);
                let device = saved.device.map(|d| Identity {
                    index: moved.index,
                    ..d
                });
                backups.save(&a, &Saved { device, ..saved })?;
            }
            r.interfaces = vec![Interface::container(a.ifname(), &moved.mac, &args.netns)];
        }
        let lease = ipam
            .as_ref()
            .map(|i| PendingLease::start(i, args))
            .transpose()?;
        let lease = lease.map(|p| p.wait()).transpose()?;
        if let Some(l) = &lease {
            let got = l.result();
            if got.ips.is_empty() {
                return Err(Error::new(
                    code::DELEGATE,
                    "IPAM plugin returned missing IP config",
                ));
            }
            r.ips = got.ips.clone();
            r.routes = got.routes.clone();
            for ip in &mut r.ips {
                ip.interface = (!r.interfaces.is_empty()).then_some(0);
            }
        }
        if !r.interfaces.is_empty() {
            k.run(container::configure(&inside, netns, a.ifname(), &r))?;
        }
        r.dns = conf.dns.clone().unwrap_or_default();
        undo.commit();
        lease.map(|l| l.commit());
        Ok(r)
    }

    /// Releases the addresses and gives the device back to the host under its old name,
    /// with its addresses; with the namespace gone the kernel has given it back already.
    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        // The device itself is not looked up: a VF or sub-function removed from its bus
        // must not keep DEL from releasing the address and dropping the backup.
        let conf: Conf = args.parse_conf()?;
        let a = Attachment::of(args);
        let ipam = Delegate::ipam(args)
            .map(|i| i.start("DEL", args))
            .transpose()?;
        // Whether the backup has served: the device is back, or no longer in there.
        let served = args.netns().map(|ns| -> Result<bool, Error> {
            let k = Kernel::new()?;
            let inside = k.connect_in(ns)?;
            let saved = conf.backups().load::<Saved>(&a).unwrap_or_else(|e| {
                eprintln!("reading the backup of {}: {e}", a.ifname());
                None
            });
            let recorded = saved.as_ref().and_then(|s| s.device.as_ref());
            let back = match (&saved, recorded) {
                (Some(saved), Some(_)) => give_back(&k, &inside, saved)?,
                _ => give_back_by_alias(&k, &inside, a.ifname())?,
            };
            if back {
                return Ok(true);
            }
            if k.run(inside.link(a.ifname()))?.is_some() {
                eprintln!(
                    "{} in the container is not the device ADD moved in: left where it is",
                    a.ifname()
                );
            }
            // A link still at the device's index that no longer looks like it (its MAC
            // changed in there): the backup stays, for a DEL once it is itself again, or
            // for GC once the namespace is gone.
            Ok(match recorded {
                Some(id) => k.run(inside.link_by_index(id.index))?.is_none(),
                None => true,
            })
        });
        let served = served.unwrap_or(Ok(true));
        let ipam = ipam.map(|r| r.wait()).transpose();
        // the backup goes only once it has served: a retried DEL still needs it
        let restored = served.and_then(|done| match done {
            true => conf.backups().remove(&a),
            false => Ok(()),
        });
        restored.and(ipam.map(|_| ()))
    }

    /// The IPAM plugin's CHECK, then the container's interface against prevResult; a
    /// device bound to a userspace driver has no interface to look at (as the reference).
    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        let (_, device) = Conf::load(args)?;
        let prev = args.required_prev_result()?;
        if let Some(i) = Delegate::ipam(args) {
            i.run("CHECK", args)?;
        }
        if device.is_dpdk() {
            return Ok(());
        }
        let k = Kernel::new()?;
        let inside = k.connect_in(args.required_netns()?)?;
        container::check(&k, &inside, args, &prev, Vec::new())
    }

    fn status(&self, args: &CmdArgs) -> Result<(), Error> {
        match Delegate::ipam(args) {
            Some(i) => i.run("STATUS", args).map(|_| ()),
            None => Ok(()),
        }
    }

    /// The backups of attachments the runtime no longer lists (their devices went back
    /// with their namespaces), then the IPAM plugin's GC.
    fn gc(&self, args: &CmdArgs) -> Result<(), Error> {
        let (conf, _) = Conf::load(args)?;
        conf.backups()
            .remove_stale(&args.conf.name, &args.valid_attachments()?)?;
        match Delegate::ipam(args) {
            Some(i) => i.run("GC", args).map(|_| ()),
            None => Ok(()),
        }
    }
}

/// Gives the device of `saved` back to the host under its old name, with the addresses
/// and state it had there; false when the container holds no link that is that device.
fn give_back(k: &Kernel, inside: &Netlink, saved: &Saved) -> Result<bool, Error> {
    let Some(id) = &saved.device else {
        return Ok(false);
    };
    let Some(link) = k.run(inside.link_by_index(id.index))?.filter(|l| id.is(l)) else {
        return Ok(false);
    };
    let host = this_netns()?;
    k.run(inside.move_link_renamed_first(&link, &id.name, &host))?;
    restore(k, &id.name, saved)?;
    Ok(true)
}

/// No record of the device (handed in by the reference plugin, or by an older version of
/// ours): as the reference, the link the container calls `ifname` goes back to the host,
/// down, under the name its alias holds, unless the host has a link of that name. Nothing
/// of the host's (addresses, up) is given to it, since it may be any link the container
/// made.
fn give_back_by_alias(k: &Kernel, inside: &Netlink, ifname: &str) -> Result<bool, Error> {
    let Some(link) = k.run(inside.link(ifname))? else {
        return Ok(false);
    };
    let Some(name) = link.alias.as_deref().filter(|a| names::is_ifname(a)) else {
        return Ok(false);
    };
    if k.run(k.host().link(name))?.is_some() {
        // The device is back already (a repeated DEL): this is another link.
        return Ok(false);
    }
    let host = this_netns()?;
    k.run(inside.move_link_renamed_first(&link, name, &host))?;
    eprintln!("{ifname} went back as {name}, as its alias says, without addresses: no record of the device");
    Ok(true)
}

/// The namespace this thread is in (the host's).
fn this_netns() -> Result<Netns, Error> {
    Netns::open("/proc/thread-self/ns/net")
        .map_err(|e| Error::new(code::IO, format!("opening this namespace: {e:?}")))
}

/// The addresses and state the host link had before it was handed in.
fn restore(k: &Kernel, name: &str, saved: &Saved) -> Result<(), Error> {
    let Some(link) = k.run(k.host().link(name))? else {
        return Ok(());
    };
    for addr in &saved.addresses {
        k.run(k.host().add_address(link.index, name, *addr))?;
    }
    if saved.up {
        k.run(k.host().set_up(link.index, name))?;
    }
    Ok(())
}

/// Plugins live for milliseconds: see libcni::arena.
#[global_allocator]
static ALLOC: libcni::arena::Arena = libcni::arena::Arena::new();

fn main() {
    skel::run(&HostDevice, "CNI host-device plugin (cni-rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert!(is_pci_address("0000:00:1f.6"));
        for bad in ["0000:00:1f", "../../../etc", "0000:00:1f.8", "zzzz:00:1f.6"] {
            assert!(!is_pci_address(bad), "{bad}");
        }
    }

    #[test]
    fn reading_any_input_never_panics() {
        const FIELDS: &[&str] = &[
            "device",
            "hwaddr",
            "kernelpath",
            "pciBusID",
            "runtimeConfig",
            "deviceID",
            "ipam",
            "dns",
            "dataDir",
        ];
        libcni::arbitrary::probe_reading(FIELDS, |a| Conf::load(a).map(|_| ()));
    }
}
