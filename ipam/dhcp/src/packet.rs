//! DHCPv4 messages (RFC 2131/2132) and the IPv4/UDP framing they travel in over a packet
//! socket: the client has no address yet, so it writes whole IP datagrams itself.

use std::net::Ipv4Addr;

pub const DISCOVER: u8 = 1;
pub const OFFER: u8 = 2;
pub const REQUEST: u8 = 3;
pub const ACK: u8 = 5;
pub const NAK: u8 = 6;
pub const RELEASE: u8 = 7;

pub const OPT_SUBNET_MASK: u8 = 1;
pub const OPT_ROUTER: u8 = 3;
pub const OPT_STATIC_ROUTES: u8 = 33;
pub const OPT_REQUESTED_IP: u8 = 50;
pub const OPT_LEASE_TIME: u8 = 51;
pub const OPT_MESSAGE_TYPE: u8 = 53;
pub const OPT_SERVER_ID: u8 = 54;
pub const OPT_PARAMS: u8 = 55;
pub const OPT_RENEWAL_TIME: u8 = 58;
pub const OPT_REBINDING_TIME: u8 = 59;
pub const OPT_CLIENT_ID: u8 = 61;
pub const OPT_CLASSLESS_ROUTES: u8 = 121;
const OPT_PAD: u8 = 0;
const OPT_END: u8 = 255;

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const BOOTP_LEN: usize = 236;
pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;
/// Broadcast bit of the flags: asks the server to broadcast its answers.
const FLAG_BROADCAST: u16 = 0x8000;

/// A DHCP message: the BOOTP fields we use and the options in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub op: u8,
    pub xid: u32,
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Message {
    /// A client's message of `kind`.
    pub fn client(kind: u8, xid: u32, chaddr: [u8; 6], broadcast: bool) -> Message {
        Message {
            op: 1,
            xid,
            broadcast,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            options: vec![(OPT_MESSAGE_TYPE, vec![kind])],
        }
    }

    /// Sets an option, replacing one of the same code (a later setting wins, as the
    /// reference's options.Update).
    pub fn set(&mut self, code: u8, value: Vec<u8>) {
        match self.options.iter_mut().find(|(c, _)| *c == code) {
            Some(o) => o.1 = value,
            None => self.options.push((code, value)),
        }
    }

    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    pub fn kind(&self) -> Option<u8> {
        self.get(OPT_MESSAGE_TYPE).and_then(|v| v.first().copied())
    }

    pub fn addr(&self, code: u8) -> Option<Ipv4Addr> {
        self.addrs(code).into_iter().next()
    }

    /// An option holding addresses (routers: the first is the gateway).
    pub fn addrs(&self, code: u8) -> Vec<Ipv4Addr> {
        self.get(code)
            .map(|v| {
                v.chunks_exact(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn seconds(&self, code: u8) -> Option<u32> {
        let v = self.get(code)?;
        Some(u32::from_be_bytes(v.try_into().ok()?))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BOOTP_LEN];
        b[0] = self.op;
        b[1] = 1; // Ethernet
        b[2] = 6;
        b[4..8].copy_from_slice(&self.xid.to_be_bytes());
        if self.broadcast {
            b[10..12].copy_from_slice(&FLAG_BROADCAST.to_be_bytes());
        }
        b[12..16].copy_from_slice(&self.ciaddr.octets());
        b[16..20].copy_from_slice(&self.yiaddr.octets());
        b[28..34].copy_from_slice(&self.chaddr);
        b.extend_from_slice(&MAGIC);
        for (code, value) in &self.options {
            // An option longer than 255 bytes goes in pieces (RFC 3396); ours never are.
            for piece in value.chunks(255).take(1) {
                b.push(*code);
                b.push(piece.len() as u8);
                b.extend_from_slice(piece);
            }
        }
        b.push(OPT_END);
        // Some servers drop a BOOTP message under 300 bytes.
        if b.len() < 300 {
            b.resize(300, 0);
        }
        b
    }

    /// Reads a message; anything malformed is `None` (it is someone else's packet).
    pub fn decode(b: &[u8]) -> Option<Message> {
        if b.len() < BOOTP_LEN + 4 || b[BOOTP_LEN..BOOTP_LEN + 4] != MAGIC {
            return None;
        }
        let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        let mut m = Message {
            op: b[0],
            xid: u32::from_be_bytes(b[4..8].try_into().ok()?),
            broadcast: u16::from_be_bytes([b[10], b[11]]) & FLAG_BROADCAST != 0,
            ciaddr: ip(12),
            yiaddr: ip(16),
            chaddr: b[28..34].try_into().ok()?,
            options: Vec::new(),
        };
        let mut at = BOOTP_LEN + 4;
        while at < b.len() {
            let code = b[at];
            at += 1;
            match code {
                OPT_PAD => continue,
                OPT_END => break,
                _ => {}
            }
            let len = *b.get(at)? as usize;
            let value = b.get(at + 1..at + 1 + len)?;
            at += 1 + len;
            // Repeated options concatenate (RFC 3396).
            match m.options.iter_mut().find(|(c, _)| *c == code) {
                Some(o) => o.1.extend_from_slice(value),
                None => m.options.push((code, value.to_vec())),
            }
        }
        Some(m)
    }
}

/// An IPv4 datagram carrying `payload` in UDP from client to server port.
pub fn frame(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0x10]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let ip_sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    p.extend_from_slice(&SERVER_PORT.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    // The pseudo header: addresses, protocol, UDP length.
    let mut pseudo = 0u32;
    for c in src.octets().chunks(2).chain(dst.octets().chunks(2)) {
        pseudo += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    pseudo += 17 + udp_len as u32;
    let sum = match checksum(&p[20..], pseudo) {
        0 => 0xffff,
        s => s,
    };
    p[26..28].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The DHCP payload of a datagram to the client port, or `None`.
pub fn unframe(p: &[u8]) -> Option<&[u8]> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 17 {
        return None;
    }
    let ihl = (p[0] & 0x0f) as usize * 4;
    let total = (u16::from_be_bytes([p[2], p[3]]) as usize).min(p.len());
    let udp = p.get(ihl..total)?;
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != CLIENT_PORT {
        return None;
    }
    let len = (u16::from_be_bytes([udp[4], udp[5]]) as usize).clamp(8, udp.len());
    udp.get(8..len)
}

fn checksum(b: &[u8], start: u32) -> u16 {
    let mut sum = start;
    for c in b.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reads_back_through_its_frame() {
        let mut m = Message::client(DISCOVER, 0x1234_5678, [2, 0, 0, 0, 0, 1], true);
        m.set(OPT_CLIENT_ID, b"\0abc/net/eth0".to_vec());
        m.set(OPT_PARAMS, vec![3, 1]);
        let f = frame(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, &m.encode());
        assert_eq!(checksum(&f[..20], 0), 0);
        // A reply to the client port reads back; the frame's ports are the other way.
        let mut reply = f.clone();
        reply[20..24].copy_from_slice(&[0, 67, 0, 68]);
        let back = Message::decode(unframe(&reply).unwrap()).unwrap();
        assert_eq!(back, m);
        assert!(unframe(&f).is_none());
    }

    #[test]
    fn truncated_options_are_refused() {
        let mut b = Message::client(OFFER, 1, [0; 6], false).encode();
        b.truncate(BOOTP_LEN + 4);
        b.extend_from_slice(&[OPT_ROUTER, 8, 10, 0]);
        assert!(Message::decode(&b).is_none());
    }
}
