//! A rule as nf_tables keeps it: what it matches and what it does, written as the very
//! expressions nft 1.0 makes of the same text (as `nft --debug=netlink` prints them), so
//! `nft list` shows a rule made here as that text. Only what our rules say is here.

use std::io;
use std::net::{IpAddr, Ipv6Addr};

use super::wire::{comment_udata, NFTA_DATA_VALUE, NFTA_LIST_ELEM};
use crate::net::nlattr::{attr, attr_u32, nested, NLA_F_NESTED};

/// The first two of the 16-byte registers; an IPv6 address fits in one.
const REG_1: u32 = 1;
const REG_2: u32 = 2;

/// What a rule matches (all of them, in order). A match on an address is preceded by the
/// check of the packet's family, once, as nft does in an inet table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `meta nfproto ipv4|ipv6`
    Family { v6: bool },
    /// `fib daddr type local`: addressed to one of the host's own addresses.
    LocalDestination,
    /// `ip|ip6 daddr ADDR`
    Destination(IpAddr),
    /// `ip|ip6 saddr ADDR`
    Source(IpAddr),
    /// `ip saddr 127.0.0.0/8` or `ip6 saddr ::1`
    LoopbackSource { v6: bool },
    /// `tcp|udp|sctp dport PORT` (the IP protocol number, the port)
    DestinationPort(u8, u16),
    /// `ct status dnat`: a connection whose destination was translated.
    Dnatted,
}

/// What a rule does with a packet that matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `dnat ip|ip6 to ADDR:PORT`
    Dnat(IpAddr, u16),
    /// `masquerade`
    Masquerade,
}

/// One rule of a chain, labelled with a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub matches: Vec<Match>,
    pub action: Action,
    pub comment: String,
}

impl Rule {
    /// The rule's expressions and comment, as attributes of a rule message.
    pub(super) fn attributes(&self, out: &mut Vec<u8>) -> io::Result<()> {
        const NFTA_RULE_EXPRESSIONS: u16 = 4;
        const NFTA_RULE_USERDATA: u16 = 7;
        let mut exprs = Expressions::default();
        for m in &self.matches {
            exprs.matching(m);
        }
        exprs.acting(&self.action);
        attr(out, NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, &exprs.list);
        attr(out, NFTA_RULE_USERDATA, &comment_udata(&self.comment)?);
        Ok(())
    }
}

/// The list being written, and the family the rule has checked so far.
#[derive(Default)]
struct Expressions {
    list: Vec<u8>,
    family: Option<bool>,
}

impl Expressions {
    fn expr(&mut self, name: &str, fill: impl FnOnce(&mut Vec<u8>)) {
        const NFTA_EXPR_NAME: u16 = 1;
        const NFTA_EXPR_DATA: u16 = 2;
        nested(&mut self.list, NFTA_LIST_ELEM, |e| {
            attr(e, NFTA_EXPR_NAME, &[name.as_bytes(), b"\0"].concat());
            nested(e, NFTA_EXPR_DATA, fill);
        });
    }

    fn matching(&mut self, m: &Match) {
        match *m {
            Match::Family { v6 } => self.family(v6),
            Match::LocalDestination => {
                const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
                const NFTA_FIB_F_DADDR: u32 = 1 << 1;
                const RTN_LOCAL: u32 = 2;
                self.expr("fib", |d| {
                    attr_u32(d, 1, REG_1); // NFTA_FIB_DREG
                    attr_u32(d, 2, NFT_FIB_RESULT_ADDRTYPE); // NFTA_FIB_RESULT
                    attr_u32(d, 3, NFTA_FIB_F_DADDR); // NFTA_FIB_FLAGS
                });
                self.cmp(CMP_EQ, &RTN_LOCAL.to_ne_bytes());
            }
            Match::Destination(ip) => self.address(ip, if ip.is_ipv4() { 16 } else { 24 }),
            Match::Source(ip) => self.source(&octets(ip), ip.is_ipv6()),
            Match::LoopbackSource { v6: false } => self.source(&[127], false),
            Match::LoopbackSource { v6: true } => self.source(&Ipv6Addr::LOCALHOST.octets(), true),
            Match::DestinationPort(proto, port) => {
                const NFT_META_L4PROTO: u32 = 16;
                self.meta(NFT_META_L4PROTO);
                self.cmp(CMP_EQ, &[proto]);
                self.payload(PAYLOAD_TRANSPORT, 2, 2);
                self.cmp(CMP_EQ, &port.to_be_bytes());
            }
            Match::Dnatted => {
                const NFT_CT_STATUS: u32 = 2;
                const IPS_DST_NAT: u32 = 1 << 5;
                self.expr("ct", |d| {
                    attr_u32(d, 1, REG_1); // NFTA_CT_DREG
                    attr_u32(d, 2, NFT_CT_STATUS); // NFTA_CT_KEY
                });
                self.bitwise(&IPS_DST_NAT.to_ne_bytes());
                self.cmp(CMP_NEQ, &0u32.to_ne_bytes());
            }
        }
    }

    fn acting(&mut self, a: &Action) {
        match *a {
            Action::Dnat(ip, port) => {
                const NFT_NAT_DNAT: u32 = 1;
                const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 1 << 1;
                self.immediate(REG_1, &octets(ip));
                self.immediate(REG_2, &port.to_be_bytes());
                self.expr("nat", |d| {
                    attr_u32(d, 1, NFT_NAT_DNAT); // NFTA_NAT_TYPE
                    attr_u32(d, 2, nfproto(ip.is_ipv6())); // NFTA_NAT_FAMILY
                    attr_u32(d, 3, REG_1); // NFTA_NAT_REG_ADDR_MIN
                    attr_u32(d, 5, REG_2); // NFTA_NAT_REG_PROTO_MIN
                    attr_u32(d, 7, NF_NAT_RANGE_PROTO_SPECIFIED); // NFTA_NAT_FLAGS
                });
            }
            Action::Masquerade => self.expr("masq", |_| {}),
        }
    }

    /// `meta nfproto`, once per rule.
    fn family(&mut self, v6: bool) {
        if self.family == Some(v6) {
            return;
        }
        const NFT_META_NFPROTO: u32 = 15;
        self.meta(NFT_META_NFPROTO);
        self.cmp(CMP_EQ, &[nfproto(v6) as u8]);
        self.family = Some(v6);
    }

    /// The address at `offset` in the network header is `ip`.
    fn address(&mut self, ip: IpAddr, offset: u32) {
        self.prefix(&octets(ip), ip.is_ipv6(), offset);
    }

    /// The source address starts with `bytes` (a whole address, or 127 for 127.0.0.0/8).
    fn source(&mut self, bytes: &[u8], v6: bool) {
        self.prefix(bytes, v6, if v6 { 8 } else { 12 });
    }

    /// The bytes at `offset` in the network header are `bytes`: nft loads only as many
    /// as a prefix covers.
    fn prefix(&mut self, bytes: &[u8], v6: bool, offset: u32) {
        self.family(v6);
        self.payload(PAYLOAD_NETWORK, offset, bytes.len() as u32);
        self.cmp(CMP_EQ, bytes);
    }

    fn meta(&mut self, key: u32) {
        self.expr("meta", |d| {
            attr_u32(d, 2, key); // NFTA_META_KEY
            attr_u32(d, 1, REG_1); // NFTA_META_DREG
        });
    }

    fn payload(&mut self, base: u32, offset: u32, len: u32) {
        self.expr("payload", |d| {
            attr_u32(d, 1, REG_1); // NFTA_PAYLOAD_DREG
            attr_u32(d, 2, base); // NFTA_PAYLOAD_BASE
            attr_u32(d, 3, offset); // NFTA_PAYLOAD_OFFSET
            attr_u32(d, 4, len); // NFTA_PAYLOAD_LEN
        });
    }

    fn cmp(&mut self, op: u32, value: &[u8]) {
        self.expr("cmp", |d| {
            attr_u32(d, 1, REG_1); // NFTA_CMP_SREG
            attr_u32(d, 2, op); // NFTA_CMP_OP
            nested(d, 3, |v| attr(v, NFTA_DATA_VALUE, value)); // NFTA_CMP_DATA
        });
    }

    /// Register 1 = register 1 & `mask` (^ 0).
    fn bitwise(&mut self, mask: &[u8]) {
        self.expr("bitwise", |d| {
            attr_u32(d, 1, REG_1); // NFTA_BITWISE_SREG
            attr_u32(d, 2, REG_1); // NFTA_BITWISE_DREG
            attr_u32(d, 3, mask.len() as u32); // NFTA_BITWISE_LEN
            nested(d, 4, |v| attr(v, NFTA_DATA_VALUE, mask)); // NFTA_BITWISE_MASK
            nested(d, 5, |v| attr(v, NFTA_DATA_VALUE, &vec![0; mask.len()])); // XOR
        });
    }

    fn immediate(&mut self, reg: u32, value: &[u8]) {
        self.expr("immediate", |d| {
            attr_u32(d, 1, reg); // NFTA_IMMEDIATE_DREG
            nested(d, 2, |v| attr(v, NFTA_DATA_VALUE, value)); // NFTA_IMMEDIATE_DATA
        });
    }
}

const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;

fn nfproto(v6: bool) -> u32 {
    if v6 {
        10 // NFPROTO_IPV6
    } else {
        2 // NFPROTO_IPV4
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}
