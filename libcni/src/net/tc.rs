//! Traffic control over netlink, for the bandwidth plugin: a token bucket (tbf) as a
//! link's root qdisc, an ifb device, and the ingress qdisc + u32 filter that redirects a
//! link's incoming traffic to that ifb (where its own tbf shapes it).
//! netlink-packet-route has no tbf type, so its options are encoded here.

use netlink_packet_route::link::InfoKind;
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{DefaultNla, Nla, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

use super::{Error, Netlink};

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// The kernel's scheduler tick is 64 ns (PSCHED_SHIFT 6).
const NS_PER_TICK: u64 = 64;
const ETH_P_ALL: u16 = 0x0003;

/// A token bucket: `rate` and `burst` in bytes (per second), `limit` the queue in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tbf {
    pub rate: u64,
    pub burst: u32,
    pub limit: u32,
}

/// A qdisc as read back: kind, and its token bucket when it is a tbf.
#[derive(Debug, Clone, PartialEq)]
pub struct Qdisc {
    pub kind: String,
    pub parent: u32,
    pub tbf: Option<Tbf>,
}

impl Tbf {
    /// TCA_OPTIONS of a tbf: struct tc_tbf_qopt, the 64-bit rate when it does not fit,
    /// and the burst in bytes (which the kernel prefers over the buffer time).
    fn options(&self) -> Vec<TcOption> {
        let rate32 = u32::try_from(self.rate).unwrap_or(u32::MAX);
        let buffer_ticks =
            (u64::from(self.burst) * 1_000_000_000 / self.rate.max(1) / NS_PER_TICK) as u32;
        let mut parms = Vec::with_capacity(36);
        // rate: cell_log, linklayer, overhead, cell_align, mpu, rate
        parms.extend_from_slice(&[0, TC_LINKLAYER_ETHERNET, 0, 0, 0, 0, 0, 0]);
        parms.extend_from_slice(&rate32.to_ne_bytes());
        parms.extend_from_slice(&[0; 12]); // no peak rate
        parms.extend_from_slice(&self.limit.to_ne_bytes());
        parms.extend_from_slice(&buffer_ticks.to_ne_bytes());
        parms.extend_from_slice(&0u32.to_ne_bytes()); // mtu: peak rate only
        let mut opts = vec![TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, parms))];
        if rate32 == u32::MAX {
            opts.push(TcOption::Other(DefaultNla::new(
                TCA_TBF_RATE64,
                self.rate.to_ne_bytes().to_vec(),
            )));
        }
        opts.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_BURST,
            self.burst.to_ne_bytes().to_vec(),
        )));
        opts
    }

    /// Reads tc_tbf_qopt back from the nested attributes of a dumped tbf qdisc.
    fn parse(nested: &[u8]) -> Option<Tbf> {
        let mut parms = None;
        let mut rate64 = None;
        let mut rest = nested;
        while rest.len() >= 4 {
            let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
            let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
            if len < 4 || len > rest.len() {
                break;
            }
            let value = &rest[4..len];
            match kind {
                TCA_TBF_PARMS if value.len() >= 36 => parms = Some(value.to_vec()),
                TCA_TBF_RATE64 if value.len() >= 8 => {
                    rate64 = Some(u64::from_ne_bytes(value[..8].try_into().ok()?))
                }
                _ => {}
            }
            rest = &rest[((len + 3) & !3).min(rest.len())..];
        }
        let p = parms?;
        let u32_at = |o: usize| u32::from_ne_bytes(p[o..o + 4].try_into().unwrap());
        let rate = rate64.unwrap_or(u64::from(u32_at(8)));
        let buffer_ns = u64::from(u32_at(28)) * NS_PER_TICK;
        Some(Tbf {
            rate,
            burst: (buffer_ns * rate / 1_000_000_000) as u32,
            limit: u32_at(24),
        })
    }
}

/// `tc filter add dev #index parent ffff: pref 1 protocol all u32 match u8 0 0 action
/// mirred egress redirect dev #to`.
fn redirect_filter(index: u32, to: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    m.header.parent = TcHandle::INGRESS;
    // The filter's priority (major) and protocol (minor, network order).
    m.header.info = u32::from(TcHandle {
        major: 1,
        minor: ETH_P_ALL.to_be(),
    });
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    m.attributes
        .push(TcAttribute::Kind(TcFilterU32::KIND.to_string()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    m
}

impl Netlink {
    /// Makes `tbf` the root qdisc of link `index`, replacing what was there.
    pub async fn set_root_tbf(&self, index: u32, name: &str, tbf: Tbf) -> Result<(), Error> {
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = TcHandle::ROOT;
        m.header.handle = TcHandle { major: 1, minor: 0 };
        m.attributes.push(TcAttribute::Kind("tbf".into()));
        m.attributes.push(TcAttribute::Options(tbf.options()));
        self.request(
            RouteNetlinkMessage::NewQueueDiscipline(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("setting a tbf qdisc on {name}"),
        )
        .map(drop)
    }

    /// Creates an ifb device labelled with `alias`, up, and returns its index.
    pub async fn create_ifb(&self, name: &str, mtu: u32, alias: &str) -> Result<u32, Error> {
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Ifb)
            .name(name)
            .mtu(mtu)
            .build();
        self.add_link(msg, || format!("creating ifb {name}"))
            .await?;
        let l = self.link(name).await?.ok_or_else(|| {
            Error::io(
                format!("ifb {name} vanished after creation"),
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
        // The kernel ignores an alias given at creation.
        let msg = LinkUnspec::new_with_index(l.index)
            .alias(alias)
            .up()
            .build();
        self.set_link(msg, || format!("labelling ifb {name} and setting it up"))
            .await?;
        Ok(l.index)
    }

    /// Redirects everything arriving on link `index` to link `to`: an ingress qdisc and a
    /// u32 match-all filter with a mirred egress redirect action.
    pub async fn redirect_ingress(&self, index: u32, name: &str, to: u32) -> Result<(), Error> {
        let mut qdisc = TcMessage::with_index(index as i32);
        qdisc.header.parent = TcHandle::INGRESS;
        qdisc.header.handle = TcHandle::from(0xffff_0000);
        qdisc.attributes.push(TcAttribute::Kind("ingress".into()));
        self.request(
            RouteNetlinkMessage::NewQueueDiscipline(qdisc),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("adding an ingress qdisc to {name}"),
        )?;
        self.request(
            RouteNetlinkMessage::NewTrafficFilter(redirect_filter(index, to)),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("adding the redirect filter to {name}"),
        )
        .map(drop)
    }

    /// The qdiscs of link `index` (the kernel's defaults included).
    pub async fn qdiscs(&self, index: u32) -> Result<Vec<Qdisc>, Error> {
        let answers = self.dump(
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::with_index(index as i32)),
            || format!("listing the qdiscs of link #{index}"),
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(q) if q.header.index == index as i32 => {
                    Some(q)
                }
                _ => None,
            })
            .map(|m| {
                let kind = m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        TcAttribute::Kind(k) => Some(k.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let tbf = (kind == "tbf")
                    .then(|| {
                        m.attributes.iter().find_map(|a| match a {
                            TcAttribute::Options(o) => o.iter().find_map(|o| match o {
                                TcOption::Other(nla) => {
                                    let mut buf = vec![0; nla.value_len()];
                                    nla.emit_value(&mut buf);
                                    Tbf::parse(&buf)
                                }
                                _ => None,
                            }),
                            _ => None,
                        })
                    })
                    .flatten();
                Qdisc {
                    kind,
                    parent: m.header.parent.into(),
                    tbf,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_options_read_back() {
        let t = Tbf {
            rate: 125_000,
            burst: 12_500,
            limit: 15_625,
        };
        let mut nested = Vec::new();
        for o in t.options() {
            if let TcOption::Other(nla) = o {
                let mut v = vec![0; nla.value_len()];
                nla.emit_value(&mut v);
                let len = (4 + v.len()) as u16;
                nested.extend_from_slice(&len.to_ne_bytes());
                nested.extend_from_slice(&nla.kind().to_ne_bytes());
                nested.extend_from_slice(&v);
                nested.resize((nested.len() + 3) & !3, 0);
            }
        }
        let back = Tbf::parse(&nested).unwrap();
        assert_eq!((back.rate, back.limit), (t.rate, t.limit));
        assert!(back.burst.abs_diff(t.burst) < 10, "{back:?}");
        let big = Tbf {
            rate: 10_000_000_000,
            ..t
        };
        assert_eq!(big.options().len(), 3, "64-bit rate attribute");
    }
}
