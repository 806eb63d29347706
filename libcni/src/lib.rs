//! libcni: everything the plugins share. `spec` holds the CNI types, `skel` the plugin
//! side of the protocol, `delegate` running another plugin, `net` the Linux plumbing and
//! `firewall` our nftables rules.

pub mod delegate;
pub mod firewall;
pub mod net;
pub mod skel;
pub mod spec;

pub use spec::{code, CniResult, Error};
