//! The one rule we keep in iptables' own table. An nftables accept ends only its own base
//! chain: on a host whose iptables FORWARD policy is DROP (every host running Docker) the
//! packets our forward chain accepts would still be dropped there. So our chain marks what
//! it accepts with [`ACCEPTED_MARK`], and one rule at the top of iptables' FORWARD (and
//! ip6tables') accepts what carries the mark, as the reference's CNI-FORWARD jump does.
//! Made together with our shared chain; the `iptables` tool speaks whichever backend the
//! host uses (nft or legacy), so the host's own tools keep reading their table.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::spec::{code, Error};

/// The packet mark bit our forward chain sets on what it accepts (bit 21; the reference's
/// portmap uses bit 13, kube-proxy bits 14 and 15).
pub const ACCEPTED_MARK: u32 = 0x0020_0000;

fn rule() -> Vec<String> {
    let mark = format!("{ACCEPTED_MARK:#x}/{ACCEPTED_MARK:#x}");
    [
        "FORWARD",
        "-m",
        "mark",
        "--mark",
        &mark,
        "-m",
        "comment",
        "--comment",
        "cni-rs firewall: accepted by inet cni_rs",
        "-j",
        "ACCEPT",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs `tool` with `args`; None when the tool is not installed (then no iptables policy
/// can drop anything either).
fn run(tool: &str, args: &[String]) -> Result<Option<bool>, Error> {
    let child = match Command::new(tool)
        .args(["-w", "5"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::new(code::FIREWALL, format!("running {tool}")).details(e.to_string()))
        }
    };
    let out = crate::exec::wait_bounded(child, Duration::from_secs(30), tool)?;
    Ok(Some(out.status.success()))
}

/// Puts the rule at the top of FORWARD in iptables and ip6tables unless it is there.
pub fn accept_marked() -> Result<(), Error> {
    for tool in ["iptables", "ip6tables"] {
        let check = [vec!["-C".to_string()], rule()].concat();
        if run(tool, &check)? != Some(false) {
            continue;
        }
        let mut insert = vec!["-I".to_string()];
        insert.extend(rule().into_iter().take(1));
        insert.push("1".into());
        insert.extend(rule().into_iter().skip(1));
        if run(tool, &insert)? == Some(false) {
            return Err(Error::new(
                code::FIREWALL,
                format!("{tool}: inserting the rule that accepts our marked packets in FORWARD"),
            ));
        }
    }
    Ok(())
}

/// Whether the rule is in place wherever the tool exists (for CHECK).
pub fn accepts_marked() -> Result<bool, Error> {
    let check = [vec!["-C".to_string()], rule()].concat();
    for tool in ["iptables", "ip6tables"] {
        if run(tool, &check)? == Some(false) {
            return Ok(false);
        }
    }
    Ok(true)
}
