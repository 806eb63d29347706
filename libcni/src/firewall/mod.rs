//! Our nftables state in the host namespace, and what every user of it shares: the table
//! names, the labels ([`Label`]: network and container) on rules and set elements, listing them,
//! and applying scripts as one `nft -f -` transaction each ([`apply`] starts one; the
//! caller waits when it needs to, since nft and the kernel take milliseconds the caller
//! can spend elsewhere). An attachment's own entries, elements of shared sets, are added
//! and deleted over netlink instead ([`add_elements`], [`remove_elements`]), and so are
//! portmap's per-container chains ([`add_port_mappings`]): no nft run on an ADD once the
//! shared objects exist. The rules themselves are in one module per
//! concern; [`lock`] keeps a killed call's nft from committing after the DEL that follows it.
//!
//! Scripts are text, so nothing from input is pasted into them: every string in a script
//! is a [`Word`] (letters, digits and `_.-~/` only, checked when made), a [`Label`], or a
//! typed address, port or MAC. None of them can close a quote or start a statement.

mod cluster;
pub mod iptables;
mod label;
pub mod lock;
mod mac;
mod masq;
mod ports;

pub use cluster::*;
pub use label::Label;
pub use mac::*;
pub use masq::*;
pub use ports::*;

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use ipnetwork::IpNetwork;

pub use crate::net::nftables::SetElement;
use crate::net::nftables::{self, Change, Family};
use crate::spec::{code, Error};

/// Our table for NAT of IP traffic (both families).
pub const INET_TABLE: &str = "cni_rs";
/// Our table for layer-2 checks on bridge ports.
const BRIDGE_TABLE: &str = "cni_rs_br";

/// A string that may stand in a script, bare or in quotes: 1-128 letters, digits or
/// `_.-~/`. The only way to put a name from input into a script.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Word(String);

impl Word {
    pub fn new(s: &str) -> Option<Word> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '~' | '/'));
        ok.then(|| Word(s.to_string()))
    }

    /// An interface name that may appear in a script; other (legal) names are refused.
    pub fn ifname(s: &str) -> Result<Word, Error> {
        Word::new(s)
            .filter(|_| crate::names::is_ifname(s) && !s.contains('~'))
            .ok_or_else(|| {
                Error::config(format!(
                    "interface name {s:?} cannot be used in a firewall rule"
                ))
                .details("allowed: letters, digits, '_', '.', '-'")
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&Label> for Word {
    fn from(l: &Label) -> Word {
        // A label is made of checked names, '/' and '~' only.
        Word(l.as_str().to_string())
    }
}

/// Our table as nft's JSON items; empty when the table does not exist.
pub fn listed_table() -> Result<Vec<serde_json::Value>, Error> {
    nft_json(&["list", "table", "inet", INET_TABLE])
}

/// Our table of `family` ("inet" or "bridge").
fn table_of(family: &str) -> &'static str {
    if family == "bridge" {
        BRIDGE_TABLE
    } else {
        INET_TABLE
    }
}

/// The sets of our table in `family`, with their elements, without the chains.
pub fn listed_sets(family: &str) -> Result<Vec<serde_json::Value>, Error> {
    let mut sets = nft_json(&["list", "sets", family])?;
    sets.retain(|i| i["set"]["table"] == table_of(family));
    Ok(sets)
}

/// A labelled element of one of our sets: its key in nft's syntax (made of checked
/// parts only), and its label.
pub struct Element {
    pub set: Word,
    pub key: String,
    pub note: String,
}

/// The labelled elements of those sets of our table in `family` ("inet" or "bridge")
/// whose names `wanted` accepts.
pub fn labelled_elements(
    family: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<Element>, Error> {
    let mut out = Vec::new();
    for item in listed_sets(family)? {
        let set = &item["set"];
        let Some(name) = set["name"]
            .as_str()
            .filter(|n| wanted(n))
            .and_then(Word::new)
        else {
            continue;
        };
        for e in set["elem"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let e = &e["elem"];
            if let (Some(key), Some(note)) = (element_key(&e["val"]), e["comment"].as_str()) {
                out.push(Element {
                    set: name.clone(),
                    key,
                    note: note.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// An element's key in nft's syntax, from its JSON form; None for a key with a part we
/// would not write ourselves.
fn element_key(v: &serde_json::Value) -> Option<String> {
    if let Some(s) = v.as_str() {
        return key_part(s);
    }
    if let Some(parts) = v["concat"].as_array() {
        let keys: Option<Vec<String>> = parts.iter().map(element_key).collect();
        return keys.map(|k| k.join(" . "));
    }
    if let (Some(addr), Some(len)) = (v["prefix"]["addr"].as_str(), v["prefix"]["len"].as_u64()) {
        let addr: std::net::IpAddr = addr.parse().ok()?;
        return Some(format!("{addr}/{len}"));
    }
    if let Some([a, b]) = v["range"].as_array().map(Vec::as_slice) {
        return Some(format!("{}-{}", element_key(a)?, element_key(b)?));
    }
    None
}

/// An address or a MAC as it is; a name quoted, if it is a [`Word`].
fn key_part(s: &str) -> Option<String> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Some(ip.to_string());
    }
    if let Some(mac) = crate::mac::parse_mac(s) {
        return Some(crate::mac::format_mac(&mac));
    }
    Word::new(s).map(|w| format!("\"{w}\""))
}

/// A part of the key of an element of our sets.
pub enum KeyPart<'a> {
    Addr(IpAddr),
    /// In an interval set, the range of the network's addresses.
    Net(IpNetwork),
    /// An interface name (nft's `ifname`: 16 bytes, zero-filled).
    Name(&'a Word),
    Mac([u8; 6]),
}

impl KeyPart<'_> {
    /// The first and the last key this part stands for, as the kernel stores them.
    fn bounds(&self) -> (Vec<u8>, Vec<u8>) {
        let octets = |ip: IpAddr| match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        match self {
            KeyPart::Addr(ip) => (octets(*ip), octets(*ip)),
            KeyPart::Net(n) => (octets(n.network()), octets(n.broadcast())),
            KeyPart::Name(w) => {
                let mut name = w.as_str().as_bytes().to_vec();
                name.resize(16, 0);
                (name.clone(), name)
            }
            KeyPart::Mac(m) => (m.to_vec(), m.to_vec()),
        }
    }
}

/// An element of our set `set` in `family` ("inet" or "bridge") keyed by `parts` (one,
/// or a concatenation), labelled `note` when given; an interval set's element is a range.
pub fn set_element(
    family: &str,
    set: &str,
    parts: &[KeyPart],
    interval: bool,
    note: Option<&Label>,
) -> SetElement {
    let (mut key, mut end) = (Vec::new(), Vec::new());
    for part in parts {
        let (first, last) = part.bounds();
        key.extend_from_slice(&first);
        end.extend_from_slice(&last);
        if parts.len() > 1 {
            // each field of a concatenation takes whole 32-bit registers
            key.resize((key.len() + 3) & !3, 0);
            end.resize((end.len() + 3) & !3, 0);
        }
    }
    SetElement {
        family: family_of(family),
        table: table_of(family),
        set: set.to_string(),
        key,
        key_end: interval.then_some(end),
        comment: note.map(|l| l.as_str().to_string()),
    }
}

fn family_of(family: &str) -> Family {
    if family == "bridge" {
        Family::Bridge
    } else {
        Family::Inet
    }
}

/// The elements of our sets in `family` whose set names `wanted` accepts and whose labels
/// `labelled` accepts (an element without a label is none of ours), listed over netlink.
pub fn labelled_set_elements(
    family: &str,
    wanted: impl Fn(&str) -> bool,
    labelled: impl Fn(&str) -> bool,
) -> Result<Vec<SetElement>, Error> {
    let listed = nftables::list_elements(family_of(family), table_of(family), wanted)
        .map_err(|e| netlink_error("listing our set elements", e))?;
    Ok(listed
        .into_iter()
        .filter(|e| e.comment.as_deref().is_some_and(&labelled))
        .collect())
}

/// A failed nfnetlink exchange of `what`; one the kernel never answered is a try-again.
fn netlink_error(what: &str, e: crate::net::Error) -> Error {
    let code = match e.source.kind() {
        std::io::ErrorKind::WouldBlock => code::TRY_AGAIN,
        _ => code::FIREWALL,
    };
    Error::new(code, what.to_string()).details(e.to_string())
}

/// Adds `elements` to our shared sets in one transaction. When a table or set is missing,
/// applies `setup` (the shared objects) with nft first, and adds them again; true then.
pub fn add_elements(elements: &[SetElement], setup: &str, what: &str) -> Result<bool, Error> {
    let adds: Vec<_> = elements.iter().map(|e| (Change::Add, e)).collect();
    match nftables::commit(&adds) {
        Ok(()) => Ok(false),
        Err(e) if e.errno() == Some(libc::ENOENT) => {
            run(setup, what)?;
            nftables::commit(&adds).map_err(|e| netlink_error(what, e))?;
            Ok(true)
        }
        Err(e) => Err(netlink_error(what, e)),
    }
}

/// Deletes `elements` from our sets, in one transaction per table; what is not there
/// (the element, its set, its table) counts as deleted.
pub fn remove_elements(elements: &[SetElement], what: &str) -> Result<(), Error> {
    for family in [Family::Inet, Family::Bridge] {
        let mine: Vec<&SetElement> = elements.iter().filter(|e| e.family == family).collect();
        let bare: Vec<SetElement> = mine
            .iter()
            .map(|e| SetElement {
                comment: None,
                ..(*e).clone()
            })
            .collect();
        // Each added first, so the deletion cannot fail for want of the element alone.
        let changes: Vec<_> = mine
            .iter()
            .zip(&bare)
            .flat_map(|(e, b)| [(Change::Add, b), (Change::Delete, *e)])
            .collect();
        match nftables::commit(&changes) {
            Err(e) if e.errno() != Some(libc::ENOENT) => return Err(netlink_error(what, e)),
            _ => {}
        }
    }
    Ok(())
}

/// Script deleting these elements from our table in `family`.
pub fn delete_elements(family: &str, elements: &[Element]) -> String {
    let table = table_of(family);
    elements
        .iter()
        .map(|e| {
            format!(
                "delete element {family} {table} {} {{ {} }}\n",
                e.set, e.key
            )
        })
        .collect()
}

/// What `nft args` prints, waited for at most [`NFT_WAIT`].
pub(crate) fn nft_output(args: &[&str]) -> Result<std::process::Output, Error> {
    let child = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(code::FIREWALL, "running nft").details(e.to_string()))?;
    crate::exec::wait_bounded(child, NFT_WAIT, "nft")
}

/// The items of nft's JSON output for `args`; empty when what they name is missing.
fn nft_json(args: &[&str]) -> Result<Vec<serde_json::Value>, Error> {
    let out = nft_output(&[&["-j"], args].concat())?;
    if !out.status.success() {
        return Ok(Vec::new());
    }
    let mut listed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::new(code::FIREWALL, "reading nft's listing").details(e.to_string()))?;
    Ok(match listed["nftables"].take() {
        serde_json::Value::Array(items) => items,
        _ => Vec::new(),
    })
}

/// An nft transaction under way. Dropped unwaited (the caller failed), it is still waited
/// for, so an undo that follows never races it.
pub struct Pending {
    child: Option<Child>,
    what: String,
    script: String,
    recovery: Recovery,
    /// nft closed its input before it had the whole script.
    unread: bool,
}

/// No nft run takes this long.
const NFT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What [`Pending::wait`] does when the transaction fails.
enum Recovery {
    Fail,
    /// Run this setup and the script again, as one transaction.
    Setup(String),
}

/// Starts `script` as one nft transaction; `what` names it in errors.
pub fn apply(script: &str, what: impl Into<String>) -> Result<Pending, Error> {
    start(script, what.into(), Recovery::Fail)
}

/// Starts `script`, which only adds to shared objects; should it fail, [`Pending::wait`]
/// runs `setup` with it. Re-declaring existing objects costs the kernel an RCU grace
/// period, so the setup is paid only when it is missing.
pub fn apply_with_setup(
    script: &str,
    setup: String,
    what: impl Into<String>,
) -> Result<Pending, Error> {
    start(script, what.into(), Recovery::Setup(setup))
}

fn start(script: &str, what: String, recovery: Recovery) -> Result<Pending, Error> {
    start_program("nft", script, what, recovery)
}

fn start_program(
    program: &str,
    script: &str,
    what: String,
    recovery: Recovery,
) -> Result<Pending, Error> {
    let fail = |d: String| Error::new(code::FIREWALL, what.clone()).details(d);
    let mut cmd = Command::new(program);
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (parent, fds) = (std::process::id(), lock::held_fds());
    // SAFETY: only async-signal-safe calls (prctl, getppid, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || lock::in_child(parent, &fds));
    }
    let mut child = cmd.spawn().map_err(|e| fail(format!("running nft: {e}")))?;
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(script.as_bytes()),
        None => Ok(()),
    };
    // An nft that failed before reading all of it closed the pipe: its exit status and
    // its stderr say why, once waited for.
    let unread = match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => true,
        Err(e) => return Err(fail(format!("writing to nft: {e}"))),
        Ok(()) => false,
    };
    Ok(Pending {
        child: Some(child),
        what,
        script: script.to_string(),
        recovery,
        unread,
    })
}

/// Applies `script` and waits for it; an empty script does nothing.
pub fn run(script: &str, what: impl Into<String>) -> Result<(), Error> {
    if script.is_empty() {
        return Ok(());
    }
    apply(script, what)?.wait()
}

impl Pending {
    pub fn wait(self) -> Result<(), Error> {
        self.wait_setup().map(|_| ())
    }

    /// Like [`Pending::wait`]; true when the shared objects had to be made first.
    pub fn wait_setup(mut self) -> Result<bool, Error> {
        let child = self.child.take().expect("waited for once");
        let out = crate::exec::wait_bounded(child, NFT_WAIT, "nft")?;
        let fail = |d: String| Error::new(code::FIREWALL, self.what.clone()).details(d);
        if out.status.success() && self.unread {
            return Err(fail("nft exited without reading its whole script".into()));
        }
        if out.status.success() {
            return Ok(false);
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        match std::mem::replace(&mut self.recovery, Recovery::Fail) {
            Recovery::Fail => Err(fail(stderr)),
            Recovery::Setup(setup) => run(&(setup + &self.script), self.what.clone()).map(|_| true),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = crate::exec::wait_bounded(child, NFT_WAIT, "nft");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_cannot_break_out_of_a_script() {
        for bad in [
            "a\"b",
            "a b",
            "a;b",
            "a\nb",
            "",
            "{x}",
            "a\\b",
            &"x".repeat(129),
        ] {
            assert!(Word::new(bad).is_none(), "{bad:?}");
        }
        assert!(Word::ifname("br-0.1").is_ok());
        assert!(Word::ifname("br\"0").is_err() && Word::ifname("a/b").is_err());
        let hostile = serde_json::json!({"concat": ["veth\" ; flush ruleset", "10.0.0.1"]});
        assert_eq!(element_key(&hostile), None);
    }

    #[test]
    fn an_nft_that_fails_before_reading_its_script_reports_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let nft = dir.path().join("nft");
        std::fs::write(&nft, "#!/bin/sh\necho 'refused by the test' >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        // larger than a pipe holds, so the write meets the closed pipe
        let script = "add table inet t\n".repeat(16 << 10);
        let pending = start_program(nft.to_str().unwrap(), &script, "x".into(), Recovery::Fail);
        let e = pending.expect("started").wait().unwrap_err();
        assert!(e.details.contains("refused by the test"), "{e:?}");
    }

    #[test]
    fn an_unanswered_nfnetlink_request_is_a_try_again() {
        let timeout = std::io::Error::from(std::io::ErrorKind::WouldBlock);
        let e = netlink_error("x", crate::net::Error::io("reading", timeout));
        assert_eq!(e.code, code::TRY_AGAIN);
        let refused = std::io::Error::from_raw_os_error(libc::EPERM);
        let e = netlink_error("x", crate::net::Error::io("sending", refused));
        assert_eq!(e.code, code::FIREWALL);
    }

    #[test]
    fn element_keys_in_nft_syntax() {
        let v: serde_json::Value = serde_json::json!({"concat": [
            "fd00::5", {"prefix": {"addr": "fd00::", "len": 64}}]});
        assert_eq!(element_key(&v).unwrap(), "fd00::5 . fd00::/64");
        let v = serde_json::json!({"concat": ["veth0123", "02:00:00:00:00:01"]});
        assert_eq!(element_key(&v).unwrap(), "\"veth0123\" . 02:00:00:00:00:01");
    }
}
