//! The agent's log: one line per change or trouble on stderr (journald keeps it), below
//! every other module of the agent.

pub fn log(msg: &str) {
    eprintln!("vxlan-overlay-agent: {msg}");
}
