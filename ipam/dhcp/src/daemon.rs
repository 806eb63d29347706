//! `dhcp daemon`: the reference's long-running half, with its flags (Go flag syntax),
//! socket (`/run/cni/dhcp.sock` under `-hostprefix`, or the one systemd passes with
//! LISTEN_FDS), pidfile and protocol (rpc). It keeps one lease per client ID
//! (`<containerID>/<network>/<ifname>`) until the plugin's DEL releases it.

use std::collections::HashMap;
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use libcni::CniResult;
use nix::sys::signal::{SigSet, Signal};

use crate::client::Timing;
use crate::conf::{self, DEFAULT_SOCKET};
use crate::lease::{Lease, Params};
use crate::rpc::{self, CmdArgs, Service};

/// The daemon's command line, as the reference's flag set reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Flags {
    pub pidfile: String,
    pub hostprefix: String,
    pub socketpath: String,
    pub timing: Timing,
}

impl PartialEq for Timing {
    fn eq(&self, o: &Timing) -> bool {
        (
            self.timeout,
            self.resend_max,
            self.resend_timeout,
            self.broadcast,
        ) == (o.timeout, o.resend_max, o.resend_timeout, o.broadcast)
    }
}

const USAGE: &str = "Usage of daemon:
  -broadcast\tbroadcast DHCP leases
  -hostprefix string\toptional prefix to host root
  -pidfile string\toptional path to write daemon PID to
  -resendmax duration\toptional dhcp client max resend delay between requests (default 1m2s)
  -resendtimeout duration\toptional dhcp client resend timeout, no more retries after this timeout (default 3m28s)
  -socketpath string\toptional dhcp server socketpath
  -timeout duration\toptional dhcp client timeout duration for each request (default 10s)";

/// Parses the flags after `daemon` (`-name value`, `-name=value`, `--name`; a bare
/// `-broadcast` is true; parsing stops at the first non-flag, as Go's flag package).
pub fn parse_flags(args: &[String]) -> Result<Flags, String> {
    let mut f = Flags {
        pidfile: String::new(),
        hostprefix: String::new(),
        socketpath: String::new(),
        timing: Timing {
            timeout: Duration::from_secs(10),
            resend_max: Duration::from_secs(62),
            resend_timeout: Duration::from_secs(208),
            broadcast: false,
        },
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        let Some(flag) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            break;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        if name == "broadcast" {
            f.timing.broadcast = match inline.as_deref() {
                None | Some("1" | "t" | "T" | "true" | "TRUE" | "True") => true,
                Some("0" | "f" | "F" | "false" | "FALSE" | "False") => false,
                Some(v) => return Err(format!("invalid boolean value {v:?} for -broadcast")),
            };
            continue;
        }
        if name == "h" || name == "help" {
            return Err(USAGE.into());
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("flag needs an argument: -{name}\n{USAGE}"))?,
        };
        let dur = |v: &str| {
            go_duration(v)
                .ok_or_else(|| format!("invalid value {v:?} for flag -{name}: parse error"))
        };
        match name {
            "pidfile" => f.pidfile = value,
            "hostprefix" => f.hostprefix = value,
            "socketpath" => f.socketpath = value,
            "timeout" => f.timing.timeout = dur(&value)?,
            "resendmax" => f.timing.resend_max = dur(&value)?,
            "resendtimeout" => f.timing.resend_timeout = dur(&value)?,
            _ => return Err(format!("flag provided but not defined: -{name}\n{USAGE}")),
        }
    }
    if f.socketpath.is_empty() {
        f.socketpath = DEFAULT_SOCKET.into();
    }
    Ok(f)
}

/// A Go duration: `300ms`, `1.5s`, `1m30s`, `2h` (units ns, us, µs, ms, s, m, h).
pub fn go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    // As Go: a duration is an int64 of nanoseconds; a longer one is refused, never a
    // deadline the lease thread cannot compute.
    Duration::try_from_secs_f64(total)
        .ok()
        .filter(|d| d.as_nanos() <= i64::MAX as u128)
}

struct Daemon {
    leases: Mutex<HashMap<String, Arc<Lease>>>,
    /// Client IDs whose lease a call is acquiring, and whether a release came meanwhile
    /// (the lease is then given back as soon as it is bound). Locked before `leases`.
    acquiring: Mutex<HashMap<String, bool>>,
    /// Signalled when an acquisition ends.
    acquired: Condvar,
    hostprefix: String,
    timing: Timing,
}

impl Daemon {
    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Lease>>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn acquiring(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.acquiring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live lease of `id`, once no other call is acquiring one for it (two exchanges
    /// under one client ID get one address, and dropping either would release it); None
    /// when this call is to acquire it, marked as acquiring.
    fn begin_acquiring(&self, id: &str) -> Option<Arc<Lease>> {
        let mut acquiring = self.acquiring();
        while acquiring.contains_key(id) {
            // Bounded: an acquisition ends within the daemon's exchange timeouts.
            acquiring = (self.acquired.wait(acquiring)).unwrap_or_else(|e| e.into_inner());
        }
        let live = self.leases().get(id).filter(|l| l.alive()).cloned();
        if live.is_none() {
            acquiring.insert(id.to_string(), false);
        }
        live
    }

    fn allocate(&self, args: CmdArgs) -> Result<CniResult, String> {
        let conf = conf::parse(&args.stdin)?;
        let ipam = conf.ipam.unwrap_or_default();
        let id = conf::client_id(&args.container_id, &conf.name, &args.ifname);
        let options = conf::options(&id, &args.args, &ipam)?;
        let lease = match self.begin_acquiring(&id) {
            Some(l) => {
                l.check();
                l
            }
            None => {
                let fresh = Lease::acquire(Params {
                    client_id: id.clone(),
                    netns: format!("{}{}", self.hostprefix, args.netns),
                    ifname: args.ifname.clone(),
                    options,
                    timing: self.timing,
                });
                let mut acquiring = self.acquiring();
                let released = acquiring.remove(&id).unwrap_or(false);
                let kept = fresh.as_ref().ok().filter(|_| !released);
                if let Some(l) = kept {
                    self.leases().insert(id.clone(), l.clone());
                }
                drop(acquiring);
                self.acquired.notify_all();
                let fresh = fresh?;
                if released {
                    fresh.stop();
                    return Err(format!("{id}: released while its lease was acquired"));
                }
                fresh
            }
        };
        lease.result(ipam.priority)
    }

    fn release(&self, args: CmdArgs) -> Result<(), String> {
        let conf = conf::parse(&args.stdin)?;
        let id = conf::client_id(&args.container_id, &conf.name, &args.ifname);
        let lease = {
            let mut acquiring = self.acquiring();
            if let Some(released) = acquiring.get_mut(&id) {
                *released = true;
            }
            self.leases().remove(&id)
        };
        if let Some(l) = lease {
            l.stop();
        }
        Ok(())
    }
}

impl Service for Daemon {
    fn call(&self, method: &str, args: CmdArgs) -> Result<Option<CniResult>, String> {
        if method == "DHCP.Allocate" {
            self.allocate(args).map(Some)
        } else {
            self.release(args).map(|_| None)
        }
    }
}

/// The socket systemd passed (LISTEN_PID is us, LISTEN_FDS=1: fd 3), else our own.
fn listener(path: &str) -> Result<(UnixListener, String), String> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let fds = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    if ours && fds == 1 {
        // SAFETY: systemd hands us fd 3, a listening socket we own from here on.
        let l = unsafe { UnixListener::from_raw_fd(3) };
        return Ok((l, "the socket systemd passed".into()));
    }
    if ours && fds > 1 {
        return Err(format!(
            "Too many ({fds}) FDs passed through socket activation"
        ));
    }
    let p = std::path::Path::new(path);
    if let Some(dir) = p.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    // A socket left by a daemon that died: nobody answers on it.
    if UnixStream::connect(p).is_err()
        && std::fs::symlink_metadata(p)
            .map(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            })
            .unwrap_or(false)
    {
        let _ = std::fs::remove_file(p);
    }
    UnixListener::bind(p)
        .map(|l| (l, path.to_string()))
        .map_err(|e| format!("listen unix {path}: {e}"))
}

/// Runs the daemon until SIGINT or SIGTERM; returns the exit code.
pub fn run(args: &[String]) -> i32 {
    let f = match parse_flags(args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    // The signals are waited for on a thread of their own; no other thread takes them.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    if let Err(e) = sigs.thread_block() {
        eprintln!("blocking signals: {e}");
        return 1;
    }
    if !f.pidfile.is_empty() {
        if !f.pidfile.starts_with('/') {
            eprintln!("Error writing pidfile {:?}: path not absolute", f.pidfile);
            return 1;
        }
        if let Err(e) = std::fs::write(&f.pidfile, std::process::id().to_string()) {
            eprintln!("Error writing pidfile {:?}: {e}", f.pidfile);
            return 1;
        }
    }
    let socket = format!("{}{}", f.hostprefix, f.socketpath);
    let (l, listening) = match listener(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("Error getting listener: {e}");
            return 1;
        }
    };
    let (pidfile, sock) = (f.pidfile.clone(), socket.clone());
    std::thread::spawn(move || {
        let _ = sigs.wait();
        let _ = std::fs::remove_file(&sock);
        if !pidfile.is_empty() {
            let _ = std::fs::remove_file(&pidfile);
        }
        std::process::exit(0);
    });
    let daemon = Arc::new(Daemon {
        leases: Mutex::new(HashMap::new()),
        acquiring: Mutex::new(HashMap::new()),
        acquired: Condvar::new(),
        hostprefix: f.hostprefix,
        timing: f.timing,
    });
    eprintln!("dhcp daemon listening on {listening}");
    for conn in l.incoming() {
        let Ok(stream) = conn else { continue };
        let d = daemon.clone();
        let spawned = std::thread::Builder::new()
            .name("rpc".into())
            .spawn(move || {
                if let Err(e) = rpc::serve(stream, d.as_ref()) {
                    eprintln!("rpc: {e}");
                }
            });
        if let Err(e) = spawned {
            eprintln!("starting an rpc thread: {e}");
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_as_go_reads_them() {
        let a = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let f = parse_flags(&a(
            "-socketpath /tmp/x.sock --timeout=2s -resendmax 1m2s -broadcast -pidfile=/p",
        ))
        .unwrap();
        assert_eq!(f.socketpath, "/tmp/x.sock");
        assert_eq!(f.timing.timeout, Duration::from_secs(2));
        assert_eq!(f.timing.resend_max, Duration::from_secs(62));
        assert!(f.timing.broadcast);
        assert_eq!(f.pidfile, "/p");
        assert_eq!(parse_flags(&[]).unwrap().socketpath, DEFAULT_SOCKET);
        assert!(parse_flags(&a("-nope 1")).is_err());
        assert!(parse_flags(&a("-timeout soon")).is_err());
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("3m28s"), Some(Duration::from_secs(208)));
        // Go's longest duration is about 2562047h47m.
        assert!(go_duration("2562047h").is_some());
        assert_eq!(go_duration("2562048h"), None);
        assert!(parse_flags(&a("-timeout 9999999999h")).is_err());
    }
}
