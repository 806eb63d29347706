//! `dhcp` IPAM, a drop-in for the reference's: as a plugin it asks the daemon (`dhcp
//! daemon`, same binary) over its unix socket, in the reference's protocol, to acquire
//! (ADD, CHECK) or release (DEL) a lease for the container's interface; the daemon runs
//! the DHCP client inside the container's namespace and renews the lease until DEL.

mod client;
mod conf;
mod daemon;
mod gob;
mod lease;
mod packet;
mod rpc;

use std::time::Duration;

use libcni::skel::{self, CmdArgs, Plugin};
use libcni::spec::code;
use libcni::{CniResult, Error};

/// How long the plugin waits for the daemon: its default resend timeout (208 s) and then
/// some; the reference's plugin waits without bound.
const DAEMON_WAIT: Duration = Duration::from_secs(300);

struct Dhcp;

const RELEASE: &str = "DHCP.Release";

impl Dhcp {
    fn call(&self, method: &str, args: &CmdArgs) -> Result<Option<CniResult>, Error> {
        let conf = conf::parse(&args.stdin).map_err(Error::config)?;
        // A config the daemon would refuse is a config error here (7). A release reads no
        // options: ADD refused such a config, so nothing is held, and DEL must not fail.
        if let Some(ipam) = conf.ipam.as_ref().filter(|_| method != RELEASE) {
            conf::options("", &args.cni_args, ipam).map_err(Error::config)?;
        }
        // The daemon may run in another working directory.
        let netns = if args.netns.is_empty() || args.netns.starts_with('/') {
            args.netns.clone()
        } else {
            std::env::current_dir()
                .map(|d| d.join(&args.netns).to_string_lossy().into_owned())
                .unwrap_or_else(|_| args.netns.clone())
        };
        let path = std::env::join_paths(&args.path)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rpc_args = rpc::CmdArgs {
            container_id: args.container_id.clone(),
            netns,
            ifname: args.ifname.clone(),
            args: args.cni_args.clone(),
            path,
            stdin: args.stdin.clone(),
        };
        rpc::call(conf.socket_path(), method, &rpc_args, DAEMON_WAIT)
    }
}

impl Plugin for Dhcp {
    /// The daemon enters the namespace; the plugin only passes its path on.
    fn uses_netns(&self) -> bool {
        false
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult, Error> {
        self.call("DHCP.Allocate", args)?
            .ok_or_else(|| Error::new(code::INTERNAL, "the DHCP daemon returned no result"))
    }

    /// Without a daemon at the socket nothing holds a lease: nothing to release.
    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = conf::parse(&args.stdin).map_err(Error::config)?;
        if let Err(e) = std::os::unix::net::UnixStream::connect(conf.socket_path()) {
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) {
                eprintln!(
                    "no DHCP daemon at {}: {e}; nothing to release",
                    conf.socket_path()
                );
                return Ok(());
            }
        }
        self.call(RELEASE, args).map(|_| ())
    }

    /// As the reference: the daemon's Allocate finds the lease it keeps and checks it.
    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        self.call("DHCP.Allocate", args).map(|_| ())
    }

    /// Ready when the daemon answers on its socket.
    fn status(&self, args: &CmdArgs) -> Result<(), Error> {
        let conf = conf::parse(&args.stdin).map_err(Error::config)?;
        std::os::unix::net::UnixStream::connect(conf.socket_path())
            .map(|_| ())
            .map_err(|e| {
                Error::new(
                    code::NOT_AVAILABLE,
                    format!("DHCP daemon not reachable at {}: {e}", conf.socket_path()),
                )
            })
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("daemon") {
        std::process::exit(daemon::run(&argv[1..]));
    }
    skel::run(&Dhcp, "CNI dhcp plugin (cni-rs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the plugin and the daemon read of a config: never a panic.
    #[test]
    fn reading_any_input_never_panics() {
        const FIELDS: &[&str] = &[
            "ipam",
            "daemonSocketPath",
            "provide",
            "option",
            "value",
            "fromArg",
            "request",
            "skipDefault",
            "priority",
        ];
        libcni::arbitrary::probe_reading(FIELDS, |a| {
            let conf = conf::parse(&a.stdin).map_err(Error::config)?;
            if let Some(ipam) = &conf.ipam {
                conf::options(
                    &conf::client_id(&a.container_id, &conf.name, &a.ifname),
                    &a.cni_args,
                    ipam,
                )
                .map_err(Error::config)?;
            }
            Ok(())
        });
    }
}
