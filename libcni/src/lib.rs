//! libcni: everything the plugins share. `spec` holds the CNI types, `decode` reads JSON
//! as Go does, `skel` the plugin side of the protocol, `names` the rules for names we get
//! and make, `attachment` one container interface's identity, `delegate` running another
//! plugin, `ipam` what IPAM plugins share, `net` the Linux plumbing and `firewall` our nftables rules, `runtime` the caller
//! side (chains, cache) for runtimes; `trace` timestamps of a call's phases; `elf` reads
//! the build ID of a binary on CNI_PATH.

#[cfg(any(test, feature = "arbitrary"))]
pub mod arbitrary;
pub mod arena;
pub mod attachment;
pub mod decode;
pub mod delegate;
pub mod elf;
pub mod exec;
pub mod files;
pub mod firewall;
pub mod ipam;
pub mod mac;
pub mod names;
pub mod net;
pub mod runtime;
pub mod skel;
pub mod spec;
pub mod trace;

pub use spec::{code, CniResult, Error};
