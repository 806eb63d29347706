//! The overlay, flannel's model: a cluster network cut into one subnet per node; on each
//! node a bridge with the subnet's first address and a VXLAN device (learning off, no
//! group) that holds, per peer node, one permanent neighbour, one permanent FDB entry and
//! one on-link route, or with `directRouting` a plain route via an on-link peer's underlay
//! address. `config` reads and checks the network, `node` programs the kernel, `local`
//! is what the agent keeps on the node, `ipam_store` where host-local keeps addresses; the plugin (main.rs) attaches containers to the
//! node bridge through libcni's bridge attachment.

pub mod config;
pub mod ipam_store;
pub mod local;
pub mod node;
pub mod subnet_env;
