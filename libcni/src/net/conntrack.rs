//! Conntrack over nfnetlink: the one thing portmap needs, deleting the UDP flows whose
//! original destination port is a host port being mapped. A UDP flow keeps its DNAT to
//! the container it first reached for as long as packets keep coming, so a container
//! that replaces another on the same host port would never receive (the reference's
//! portmap deletes them on ADD, as we do). rtnetlink speaks only route netlink, so the
//! few messages are built here.

use super::nlattr::{attr, attribute, attributes, NLA_F_NESTED};
use super::socket::NetfilterSocket;
use super::Error;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_UDP: u8 = 17;
const HEADER: usize = 16 + 4; // nlmsghdr + nfgenmsg

fn io(what: &str, e: std::io::Error) -> Error {
    Error::io(format!("conntrack: {what}"), e)
}

fn message(kind: u16, flags: u16, family: u8, attrs: &[u8]) -> Vec<u8> {
    let len = (HEADER + attrs.len()) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&[0; 8]); // sequence, port id
    m.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: family, version 0, res_id 0
    m.extend_from_slice(attrs);
    m
}

/// Whether a flow's original tuple is UDP to `port`.
fn is_udp_to(tuple: &[u8], port: u16) -> bool {
    let Some(proto) = attribute(tuple, CTA_TUPLE_PROTO) else {
        return false;
    };
    attribute(proto, CTA_PROTO_NUM) == Some(&[IPPROTO_UDP][..])
        && attribute(proto, CTA_PROTO_DST_PORT) == Some(&port.to_be_bytes()[..])
}

fn connect() -> Result<NetfilterSocket, Error> {
    // Every wait bounded: the kernel answers at once, or not at all.
    NetfilterSocket::open(std::time::Duration::from_secs(5)).map_err(|e| io("opening a socket", e))
}

/// The netlink messages in one receive buffer: (type, payload after the headers).
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(rest[..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < 16 || len > rest.len() {
            return None;
        }
        let body = &rest[16..len];
        rest = &rest[((len + 3) & !3).min(rest.len())..];
        Some((kind, body))
    })
}

/// Deletes the UDP flows of one family (`v6`) whose original destination port is `port`,
/// whatever their addresses, as the reference's portmap does; returns how many.
pub fn delete_udp_flows_to(v6: bool, port: u16) -> Result<usize, Error> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
    let s = connect()?;
    s.send(
        &message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, family, &[]),
        0,
    )
    .map_err(|e| io("asking for the flows", e))?;
    // The flows to delete: their original tuple (and zone) as the kernel gave them.
    let mut stale: Vec<Vec<u8>> = Vec::new();
    'dump: loop {
        let (buf, _) = s.recv_from_full().map_err(|e| io("reading the flows", e))?;
        for (kind, body) in messages(&buf) {
            match kind {
                NLMSG_DONE => break 'dump,
                NLMSG_ERROR => {
                    let errno = body
                        .get(..4)
                        .map_or(0, |b| -i32::from_ne_bytes(b.try_into().unwrap_or_default()));
                    if errno != 0 {
                        return Err(io(
                            "listing the flows",
                            std::io::Error::from_raw_os_error(errno),
                        ));
                    }
                    break 'dump;
                }
                _ => {}
            }
            let Some(attrs) = body.get(4..) else { continue };
            let mut keep = Vec::new();
            let mut matches = false;
            for (k, value) in attributes(attrs) {
                if k == CTA_TUPLE_ORIG {
                    matches = is_udp_to(value, port);
                    attr(&mut keep, k | NLA_F_NESTED, value);
                } else if k == CTA_ZONE {
                    attr(&mut keep, k, value);
                }
            }
            if matches {
                stale.push(keep);
            }
        }
    }
    let mut deleted = 0;
    for tuple in &stale {
        s.send(
            &message(
                IPCTNL_MSG_CT_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                family,
                tuple,
            ),
            0,
        )
        .map_err(|e| io("deleting a flow", e))?;
        let (buf, _) = s.recv_from_full().map_err(|e| io("deleting a flow", e))?;
        let errno = messages(&buf)
            .find(|(k, _)| *k == NLMSG_ERROR)
            .and_then(|(_, b)| {
                b.get(..4)
                    .map(|b| -i32::from_ne_bytes(b.try_into().unwrap_or_default()))
            })
            .unwrap_or(0);
        match errno {
            0 => deleted += 1,
            // gone meanwhile
            libc::ENOENT => {}
            e => return Err(io("deleting a flow", std::io::Error::from_raw_os_error(e))),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        attr(&mut a, kind, value);
        a
    }

    #[test]
    fn matches_udp_to_the_port_only() {
        let tuple = |proto: u8, port: u16| {
            let p = [
                nla(CTA_PROTO_NUM, &[proto]),
                nla(CTA_PROTO_DST_PORT, &port.to_be_bytes()),
            ]
            .concat();
            nla(CTA_TUPLE_PROTO | 0x8000, &p)
        };
        assert!(is_udp_to(&tuple(17, 5000), 5000));
        assert!(!is_udp_to(&tuple(6, 5000), 5000));
        assert!(!is_udp_to(&tuple(17, 5001), 5000));
        assert!(!is_udp_to(&[1, 2], 5000));
    }
}
