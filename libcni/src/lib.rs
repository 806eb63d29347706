//! libcni: everything the plugins share. `spec` holds the CNI types, `skel` the plugin
//! side of the protocol, `delegate` running another plugin, `net` the Linux plumbing and
//! `firewall` our nftables rules, `runtime` the caller side (chains, cache) for runtimes.

pub mod delegate;
pub mod exec;
pub mod firewall;
pub mod net;
pub mod runtime;
pub mod skel;
pub mod spec;

pub use spec::{code, CniResult, Error};
