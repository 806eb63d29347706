//! `vxlan-overlay-agent`: our flanneld, one per node, long-running, started with
//! flanneld's flags (etcd mode), `--config FILE`, or both (cli.rs). It holds the node's
//! subnet lease in etcd in flannel's layout (flannel.rs) from the underlay it selects as
//! flanneld does (iface.rs), owns the VXLAN device, keeps the kernel's peer state equal
//! to the leases it watches (agent.rs), writes flannel's subnet file, from which the
//! plugin attaches containers, then tells systemd it is ready (notify.rs), and answers
//! flanneld's health endpoint (healthz.rs). SIGTERM or SIGINT ends it at once; its lease
//! stays until its TTL, for a restart to take back.

mod agent;
mod cli;
mod etcd;
mod flannel;
mod healthz;
mod iface;
mod log;
mod notify;
mod rules;

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};

use agent::Agent;
use cli::Options;
use log::log;

/// A config file as JSON (its vxlan-overlay entry is read after the flags are merged in).
fn read_config(path: &Path) -> Result<serde_json::Value, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(libcni::skel::MAX_CONFIG_BYTES as u64)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

async fn serve(o: Options) -> Result<(), String> {
    // Bound before anything else, as flanneld does: a port in use stops the agent.
    let healthz = match o.healthz {
        Some(at) => Some(healthz::bind(at).await?),
        None => None,
    };
    let mut agent = Agent::new(o.overlay, o.reconcile, o.select)?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    log(&agent.describe());
    if let Some(l) = healthz {
        tokio::spawn(healthz::serve(l));
    }
    tokio::select! {
        why = agent.run() => Err(why),
        _ = term.recv() => { log("SIGTERM: exiting, the lease stays for a restart"); Ok(()) }
        _ = int.recv() => { log("SIGINT: exiting, the lease stays for a restart"); Ok(()) }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let given = cli::parse(&args, &|k| std::env::var(k).ok());
    if let Ok(g) = &given {
        g.warnings.iter().for_each(|w| log(w));
    }
    let options = match given.and_then(|g| g.options(read_config)) {
        Ok(o) => o,
        Err(exit) => {
            if exit.code == 0 {
                eprintln!("{}", exit.msg);
            } else {
                log(&exit.msg);
            }
            return ExitCode::from(exit.code);
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
    match rt.block_on(serve(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log(&e);
            ExitCode::FAILURE
        }
    }
}
