//! The label of our rules and set elements: which network and container they are for,
//! so DEL, GC and teardown find them again from those names alone.

use crate::names::short_part;

/// "network/containerID" on rules and set elements, each part shortened when long: at
/// most 121 bytes of letters, digits and `_.-~/`, so it fits an nft comment as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label(String);

impl Label {
    /// From a validated network name and container ID.
    pub fn new(network: &str, container_id: &str) -> Label {
        Label(format!(
            "{}/{}",
            short_part(network),
            short_part(container_id)
        ))
    }

    /// What every label of `network` starts with.
    pub fn network_prefix(network: &str) -> String {
        format!("{}/", short_part(network))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
