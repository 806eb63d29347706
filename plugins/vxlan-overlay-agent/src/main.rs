//! `vxlan-overlay-agent --config FILE`: our flanneld, one per node, long-running. It holds
//! the node's subnet lease in etcd in flannel's layout (flannel.rs), owns the VXLAN
//! device, keeps the kernel's peer state equal to the leases it watches (agent.rs) and
//! writes flannel's subnet file, from which the plugin attaches containers. SIGTERM or
//! SIGINT ends it at once; its lease stays until its TTL, for a restart to take back.

mod agent;
mod etcd;
mod flannel;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use vxlan_overlay::config::Overlay;

use agent::{log, Agent};

#[derive(Parser)]
#[command(
    version,
    about = "vxlan-overlay's node agent: subnet lease and peers in etcd, in flannel's layout"
)]
struct Args {
    /// A CNI .conf or .conflist holding the vxlan-overlay entry (store type etcd).
    #[arg(long)]
    config: PathBuf,
    /// Seconds between checks that the kernel still holds every peer's state.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    reconcile_seconds: u64,
}

fn read_config(path: &Path) -> Result<Overlay, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(libcni::skel::MAX_CONFIG_BYTES as u64)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Overlay::from_conf_or_list(&v).map_err(|e| format!("{}: {e}", path.display()))
}

async fn serve(overlay: Overlay, reconcile: Duration) -> Result<(), String> {
    let mut agent = Agent::new(overlay, reconcile)?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    log(&agent.describe());
    tokio::select! {
        why = agent.run() => Err(why),
        _ = term.recv() => { log("SIGTERM: exiting, the lease stays for a restart"); Ok(()) }
        _ = int.recv() => { log("SIGINT: exiting, the lease stays for a restart"); Ok(()) }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let overlay = match read_config(&args.config) {
        Ok(o) => o,
        Err(e) => {
            log(&e);
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log(&format!("starting the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(overlay, Duration::from_secs(args.reconcile_seconds))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(&e);
            ExitCode::FAILURE
        }
    }
}
