//! nf_tables over nfnetlink: listing the elements of a table's sets, adding and deleting
//! elements of sets that exist, filling nat chains with rules ([`rule`]), deleting a
//! chain with its rules; one batch (one transaction: all or nothing) per call. What an
//! `nft -f -` run costs for the same is a process, its libraries and a cache of every
//! table in the namespace (docs/DESIGN.md). Shared sets and chains are still made by
//! nft, once.

use std::io;

use super::socket::NetfilterSocket;
use super::Error;

mod rule;
mod wire;

use super::nlattr::{attr, attr_u32, attribute, attributes, nested, NLA_F_NESTED};
pub use rule::{Action, Match, Rule};
use wire::{comment, comment_udata, nul_terminated, string_attr, NFTA_DATA_VALUE, NFTA_LIST_ELEM};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
/// The closing element of a range in a single-field interval set (not one of ours).
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;

/// The nf_tables family of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet = 1,
    Bridge = 7,
}

/// One element of a set: its key as the kernel stores it (each field of a concatenation
/// padded to 4 bytes), the end of its range in an interval set, and its comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElement {
    pub family: Family,
    pub table: &'static str,
    pub set: String,
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub comment: Option<String>,
}

/// What to do with an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Adds it; one that is there already is left as it is.
    Add,
    /// Deletes it; fails with ENOENT when it is not there.
    Delete,
}

/// Applies `changes` in one transaction on a socket of the calling thread's namespace.
/// ENOENT means a table, a set, or an element to delete is missing; nothing changed then.
pub fn commit(changes: &[(Change, &SetElement)]) -> Result<(), Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let requests =
        requests(changes).map_err(|e| Error::io("nftables: building the set elements", e))?;
    transact(&requests).map_err(|e| Error::io("nftables: changing the set elements", e))
}

/// One message per change.
fn requests(changes: &[(Change, &SetElement)]) -> io::Result<Vec<Request>> {
    changes
        .iter()
        .map(|(change, e)| {
            let (kind, flags) = match change {
                Change::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE),
                Change::Delete => (NFT_MSG_DELSETELEM, 0),
            };
            Ok(Request {
                kind,
                flags,
                family: e.family,
                body: element_list(e)?,
            })
        })
        .collect()
}

/// Where a base chain hooks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Output = 3,
    Postrouting = 4,
}

/// A base chain of type nat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatChain {
    pub name: String,
    pub hook: Hook,
    pub priority: i32,
}

/// Makes `table` and its nat `chains` where they are missing, and leaves the chains
/// holding `rules` and nothing else, in one transaction (`nft -f` of `add table`, `add
/// chain`, `flush chain`, `add rule`).
pub fn replace_nat_chains(
    family: Family,
    table: &str,
    chains: &[NatChain],
    rules: &[Rule],
) -> Result<(), Error> {
    let fail = |e: io::Error| Error::io(format!("nftables: filling chains of {table}"), e);
    let mut requests = vec![Request {
        kind: NFT_MSG_NEWTABLE,
        flags: NLM_F_CREATE,
        family,
        body: {
            let mut b = Vec::new();
            attr(
                &mut b,
                NFTA_TABLE_NAME,
                &nul_terminated(table).map_err(fail)?,
            );
            b
        },
    }];
    for chain in chains {
        let mut body =
            two_names((NFTA_CHAIN_TABLE, table), (NFTA_CHAIN_NAME, &chain.name)).map_err(fail)?;
        nested(&mut body, NFTA_CHAIN_HOOK, |h| {
            attr_u32(h, NFTA_HOOK_HOOKNUM, chain.hook as u32);
            attr_u32(h, NFTA_HOOK_PRIORITY, chain.priority as u32);
        });
        attr(&mut body, NFTA_CHAIN_TYPE, b"nat\0");
        requests.push(Request {
            kind: NFT_MSG_NEWCHAIN,
            flags: NLM_F_CREATE,
            family,
            body,
        });
        requests.push(Request {
            kind: NFT_MSG_DELRULE,
            flags: 0,
            family,
            body: two_names((NFTA_RULE_TABLE, table), (NFTA_RULE_CHAIN, &chain.name))
                .map_err(fail)?,
        });
    }
    for rule in rules {
        let mut body =
            two_names((NFTA_RULE_TABLE, table), (NFTA_RULE_CHAIN, &rule.chain)).map_err(fail)?;
        rule.attributes(&mut body).map_err(fail)?;
        requests.push(Request {
            kind: NFT_MSG_NEWRULE,
            flags: NLM_F_CREATE | NLM_F_APPEND,
            family,
            body,
        });
    }
    transact(&requests).map_err(fail)
}

/// Deletes `chains` of `table` with their rules, in one transaction when all are there;
/// those that are not there are fine.
pub fn delete_chains(family: Family, table: &str, chains: &[String]) -> Result<(), Error> {
    let fail = |e: io::Error| Error::io(format!("nftables: deleting chains of {table}"), e);
    let mut requests = Vec::new();
    for chain in chains {
        let rules = two_names((NFTA_RULE_TABLE, table), (NFTA_RULE_CHAIN, chain)).map_err(fail)?;
        let named = two_names((NFTA_CHAIN_TABLE, table), (NFTA_CHAIN_NAME, chain)).map_err(fail)?;
        // no rule handle: every rule of the chain
        requests.push(Request {
            kind: NFT_MSG_DELRULE,
            flags: 0,
            family,
            body: rules,
        });
        requests.push(Request {
            kind: NFT_MSG_DELCHAIN,
            flags: 0,
            family,
            body: named,
        });
    }
    let gone = |r: io::Result<()>| match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        other => other.map(|()| true),
    };
    if chains.is_empty() || gone(transact(&requests)).map_err(fail)? {
        return Ok(());
    }
    // One was missing, so nothing changed: each on its own.
    for pair in requests.chunks(2) {
        gone(transact(pair)).map_err(fail)?;
    }
    Ok(())
}

/// A body of two name attributes: a table's and its object's.
fn two_names(table: (u16, &str), object: (u16, &str)) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    attr(&mut body, table.0, &nul_terminated(table.1)?);
    attr(&mut body, object.0, &nul_terminated(object.1)?);
    Ok(body)
}

/// One message of a batch.
struct Request {
    kind: u16,
    flags: u16,
    family: Family,
    body: Vec<u8>,
}

/// Every wait bounded: the kernel answers a batch or a dump at once, or not at all.
fn open() -> io::Result<NetfilterSocket> {
    NetfilterSocket::open(std::time::Duration::from_secs(10))
}

/// Sends `requests` as one batch on a socket of the calling thread's namespace and reads
/// the kernel's answers.
fn transact(requests: &[Request]) -> io::Result<()> {
    let socket = open()?;
    socket.send(&batch(requests), 0)?;
    let last = requests.len() as u32;
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        if let Some(done) = answered(&datagram, last) {
            return done;
        }
    }
}

/// The elements, with their comments, of the sets of `table` in `family` whose names
/// `wanted` accepts; none when the table does not exist. An element that only closes a
/// range (single-field interval sets, which we do not keep elements in) is left out.
pub fn list_elements(
    family: Family,
    table: &'static str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<SetElement>, Error> {
    let fail = |what: &str, e: io::Error| Error::io(format!("nftables: {what} of {table}"), e);
    let socket = open().map_err(|e| fail("opening a socket", e))?;
    let mut body = Vec::new();
    attr(
        &mut body,
        NFTA_SET_TABLE,
        &nul_terminated(table).map_err(|e| fail("naming", e))?,
    );
    let sets = match dump(&socket, NFT_MSG_GETSET, family, &body) {
        Ok(sets) => sets,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(fail("listing the sets", e)),
    };
    let mut out = Vec::new();
    for set in sets {
        let Some(name) = string_attr(&set, NFTA_SET_NAME).filter(|n| wanted(n)) else {
            continue;
        };
        let body = two_names(
            (NFTA_SET_ELEM_LIST_TABLE, table),
            (NFTA_SET_ELEM_LIST_SET, &name),
        )
        .map_err(|e| fail("naming", e))?;
        let listed = match dump(&socket, NFT_MSG_GETSETELEM, family, &body) {
            Ok(listed) => listed,
            // the set went meanwhile
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(fail(&format!("listing the elements of {name}"), e)),
        };
        for message in listed {
            let Some(list) = attribute(&message, NFTA_SET_ELEM_LIST_ELEMENTS) else {
                continue;
            };
            for (kind, elem) in attributes(list) {
                if kind != NFTA_LIST_ELEM {
                    continue;
                }
                if let Some(e) = element(family, table, &name, elem) {
                    out.push(e);
                }
            }
        }
    }
    Ok(out)
}

/// One listed element; None for a range's closing element or one without a key.
fn element(family: Family, table: &'static str, set: &str, elem: &[u8]) -> Option<SetElement> {
    let flags = attribute(elem, NFTA_SET_ELEM_FLAGS)
        .and_then(|f| f.try_into().ok())
        .map_or(0, u32::from_be_bytes);
    if flags & NFT_SET_ELEM_INTERVAL_END != 0 {
        return None;
    }
    let value = |kind| attribute(attribute(elem, kind)?, NFTA_DATA_VALUE).map(<[u8]>::to_vec);
    Some(SetElement {
        family,
        table,
        set: set.to_string(),
        key: value(NFTA_SET_ELEM_KEY)?,
        key_end: value(NFTA_SET_ELEM_KEY_END),
        comment: attribute(elem, NFTA_SET_ELEM_USERDATA).and_then(comment),
    })
}

/// Sends dump request `kind` with `body` and returns the attributes of every answer.
fn dump(
    socket: &NetfilterSocket,
    kind: u16,
    family: Family,
    body: &[u8],
) -> io::Result<Vec<Vec<u8>>> {
    let mut request = Vec::new();
    message(
        &mut request,
        (NFNL_SUBSYS_NFTABLES << 8) | kind,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        [family as u8, 0],
        [0, 0],
        body,
    );
    socket.send(&request, 0)?;
    let mut out = Vec::new();
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        let mut rest = &datagram[..];
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len < 16 || len > rest.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a message length past its datagram",
                ));
            }
            match u16::from_ne_bytes([rest[4], rest[5]]) {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = rest
                        .get(16..20)
                        .map_or(0, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                    return match code {
                        0 => Ok(out),
                        c => Err(io::Error::from_raw_os_error(-c)),
                    };
                }
                _ => out.push(rest.get(20..len).unwrap_or_default().to_vec()),
            }
            rest = &rest[((len + 3) & !3).min(rest.len())..];
        }
    }
}

/// The batch: begin (sequence 0), one message per change (sequences 1..=n, each
/// acknowledged), end.
fn batch(requests: &[Request]) -> Vec<u8> {
    let mut out = Vec::new();
    let res_id = NFNL_SUBSYS_NFTABLES.to_be_bytes();
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        0,
        [0, 0],
        res_id,
        &[],
    );
    for (seq, r) in (1..).zip(requests) {
        message(
            &mut out,
            (NFNL_SUBSYS_NFTABLES << 8) | r.kind,
            NLM_F_REQUEST | NLM_F_ACK | r.flags,
            seq,
            [r.family as u8, 0],
            [0, 0],
            &r.body,
        );
    }
    let end = requests.len() as u32 + 1;
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        end,
        [0, 0],
        res_id,
        &[],
    );
    out
}

/// Appends one message: netlink header, nfgenmsg (family, version 0, resource id), body.
fn message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family_version: [u8; 2],
    res_id: [u8; 2],
    body: &[u8],
) {
    let len = (16 + 4 + body.len()) as u32;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    out.extend_from_slice(&family_version);
    out.extend_from_slice(&res_id);
    out.extend_from_slice(body);
    out.resize((out.len() + 3) & !3, 0);
}

/// The body of a set element message holding one element.
fn element_list(e: &SetElement) -> io::Result<Vec<u8>> {
    let mut elem = Vec::new();
    let mut data = Vec::new();
    attr(&mut data, NFTA_DATA_VALUE, &e.key);
    attr(&mut elem, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &data);
    if let Some(end) = &e.key_end {
        let mut data = Vec::new();
        attr(&mut data, NFTA_DATA_VALUE, end);
        attr(&mut elem, NFTA_SET_ELEM_KEY_END | NLA_F_NESTED, &data);
    }
    if let Some(text) = &e.comment {
        attr(&mut elem, NFTA_SET_ELEM_USERDATA, &comment_udata(text)?);
    }
    let mut list = Vec::new();
    attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &elem);
    let mut body = two_names(
        (NFTA_SET_ELEM_LIST_TABLE, e.table),
        (NFTA_SET_ELEM_LIST_SET, &e.set),
    )?;
    attr(&mut body, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list);
    Ok(body)
}

/// What one datagram says of the batch whose last message is `last`: `Some` once an
/// error has come (the kernel then undoes the whole batch) or `last` was acknowledged.
fn answered(datagram: &[u8], last: u32) -> Option<io::Result<()>> {
    let mut rest = datagram;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < 16 || len > rest.len() {
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a message length past its datagram",
            )));
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if kind == NLMSG_ERROR && len >= 20 {
            let code = i32::from_ne_bytes([rest[16], rest[17], rest[18], rest[19]]);
            if code < 0 {
                return Some(Err(io::Error::from_raw_os_error(-code)));
            }
            if seq == last {
                return Some(Ok(()));
            }
        }
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(comment: Option<&str>) -> SetElement {
        SetElement {
            family: Family::Inet,
            table: "cni_rs",
            set: "masq4_local".into(),
            key: vec![10, 0, 0, 5, 10, 0, 0, 0],
            key_end: Some(vec![10, 0, 0, 5, 10, 0, 0, 255]),
            comment: comment.map(str::to_string),
        }
    }

    fn ack(seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&[0; 2]);
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&[0; 16]); // the header of the message answered
        m
    }

    #[test]
    fn a_listed_element_reads_back_as_written() {
        let e = element(Some("net/c1"));
        let body = element_list(&e).unwrap();
        let list = attribute(&body, NFTA_SET_ELEM_LIST_ELEMENTS).unwrap();
        let (kind, elem) = attributes(list).next().unwrap();
        assert_eq!(kind, NFTA_LIST_ELEM);
        assert_eq!(
            super::element(Family::Inet, "cni_rs", "masq4_local", elem),
            Some(e)
        );
        // a range's closing element (flags INTERVAL_END) is none of ours
        let mut closing = elem.to_vec();
        attr(
            &mut closing,
            NFTA_SET_ELEM_FLAGS,
            &NFT_SET_ELEM_INTERVAL_END.to_be_bytes(),
        );
        assert_eq!(super::element(Family::Inet, "cni_rs", "s", &closing), None);
        // other user data before the comment, a comment cut short
        assert_eq!(comment(b"\x01\x01x\x00\x03ab\0").as_deref(), Some("ab"));
        assert_eq!(comment(b"\x00\x09ab"), None);
    }

    #[test]
    fn batch_frames_each_change_between_begin_and_end() {
        let e = element(Some("net/c1"));
        let b = batch(&requests(&[(Change::Add, &e), (Change::Delete, &e)]).unwrap());
        let mut kinds = Vec::new();
        let mut rest = &b[..];
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            let flags = u16::from_ne_bytes([rest[6], rest[7]]);
            let seq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
            kinds.push((kind, flags, seq, rest[16]));
            rest = &rest[(len + 3) & !3..];
        }
        assert_eq!(
            kinds,
            vec![
                (0x10, 0x1, 0, 0),
                (0x0a0c, 0x405, 1, 1),
                (0x0a0e, 0x5, 2, 1),
                (0x11, 0x1, 3, 0)
            ]
        );
        let comment = b"\0\x07net/c1\0";
        assert!(b.windows(comment.len()).any(|w| w == comment));
    }

    #[test]
    fn hostile_names_and_long_comments_are_refused() {
        let mut e = element(Some(&"x".repeat(129)));
        assert!(requests(&[(Change::Add, &e)]).is_err());
        e.comment = None;
        e.set = "a\0b".into();
        assert!(requests(&[(Change::Add, &e)]).is_err());
    }

    #[test]
    fn the_batch_ends_at_the_last_ack_or_the_first_error() {
        assert!(answered(&ack(1, 0), 2).is_none());
        assert!(matches!(
            answered(&[ack(1, 0), ack(2, 0)].concat(), 2),
            Some(Ok(()))
        ));
        let e = answered(&[ack(1, -2), ack(2, 0)].concat(), 2)
            .unwrap()
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(2));
        assert!(matches!(answered(&ack(2, 0)[..20], 2), Some(Err(_))));
    }
}
