//! The node's firewall share, as flanneld keeps it: the forward accept for the cluster
//! network (unless `--iptables-forward-rules=false`), and with `--ip-masq` the node
//! masquerade (libcni::firewall::cluster
//! holds the rules). Put in place before the subnet file says FLANNEL_IPMASQ, and again
//! every [`RESYNC`] at the reconcile, as flanneld's `--iptables-resync`: a flushed table or
//! a lost iptables rule comes back. A failure is logged once and tried again at the next
//! reconcile.

use std::time::{Duration, Instant};

use libcni::firewall::{self, ClusterNet, ClusterRules};

use crate::log::log;

/// No nft or iptables run of one pass takes longer (each is bounded at 30 s itself).
const RULES_WAIT: Duration = Duration::from_secs(70);

/// flanneld's default `--iptables-resync` (a pass runs three processes: nft, iptables
/// and ip6tables).
const RESYNC: Duration = Duration::from_secs(5);

/// When the node's rules were last made whole, and the last failure said.
#[derive(Default)]
pub struct NodeRules {
    trouble: Option<String>,
    kept: Option<Instant>,
}

impl NodeRules {
    /// Adds the rules again (no pruning) when the last pass is [`RESYNC`] old or failed.
    pub async fn resync(&mut self, name: &str, nets: &[ClusterNet], rules: ClusterRules) {
        if self.kept.is_some_and(|t| t.elapsed() < RESYNC) {
            return;
        }
        self.pass(name, nets, rules, false).await;
    }

    /// Makes the rules of network `name` those of its cluster networks (one per family, with
    /// this node's subnet of each) as `rules` asks, and only those (a session's start: the subnet or `--ip-masq` may have changed).
    /// Whether they are in place.
    pub async fn keep(&mut self, name: &str, nets: &[ClusterNet], rules: ClusterRules) -> bool {
        self.pass(name, nets, rules, true).await;
        self.trouble.is_none()
    }

    async fn pass(&mut self, name: &str, nets: &[ClusterNet], rules: ClusterRules, prune: bool) {
        let (name, nets) = (name.to_string(), nets.to_vec());
        // nft and iptables are processes: run them off the runtime's only thread.
        let pass =
            tokio::task::spawn_blocking(move || firewall::sync_cluster(&name, &nets, rules, prune));
        let outcome = match tokio::time::timeout(RULES_WAIT, pass).await {
            Ok(Ok(r)) => r.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(format!("the firewall pass failed: {e}")),
            Err(_) => Err(format!("the firewall pass took over {RULES_WAIT:?}")),
        };
        match outcome {
            Ok(()) => {
                self.trouble = None;
                self.kept = Some(Instant::now());
            }
            Err(e) if self.trouble.as_ref() != Some(&e) => {
                log(&format!(
                    "firewall: {e}; trying again at the next reconcile"
                ));
                self.trouble = Some(e);
            }
            Err(_) => {}
        }
        if self.trouble.is_some() {
            self.kept = None;
        }
    }
}
