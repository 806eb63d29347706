//! Traffic control over netlink, for the bandwidth plugin: a token bucket (tbf) as a
//! link's root qdisc, an ifb device, and the ingress qdisc + u32 filter that redirects a
//! link's incoming traffic to that ifb (where its own tbf shapes it).
//! netlink-packet-route has no tbf type, so its options are encoded here.

use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::link::InfoKind;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

use super::link::nl_err;
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

impl Netlink {
    async fn tc_request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<(), Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut responses = self
            .handle
            .clone()
            .request(req)
            .map_err(|e| nl_err(what, e))?;
        while let Some(m) = responses.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                return Err(nl_err(what, rtnetlink::Error::NetlinkError(e)));
            }
        }
        Ok(())
    }

    /// Makes `tbf` the root qdisc of link `index`, replacing what was there.
    pub async fn set_root_tbf(&self, index: u32, name: &str, tbf: Tbf) -> Result<(), Error> {
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = TcHandle::ROOT;
        m.header.handle = TcHandle { major: 1, minor: 0 };
        m.attributes.push(TcAttribute::Kind("tbf".into()));
        m.attributes.push(TcAttribute::Options(tbf.options()));
        self.tc_request(
            RouteNetlinkMessage::NewQueueDiscipline(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("setting a tbf qdisc on {name}"),
        )
        .await
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
        self.handle
            .qdisc()
            .replace(index as i32)
            .ingress()
            .execute()
            .await
            .map_err(|e| nl_err(format!("adding an ingress qdisc to {name}"), e))?;
        self.handle
            .traffic_filter(index as i32)
            .add()
            .parent(TcHandle::INGRESS.into())
            .priority(1)
            .protocol(ETH_P_ALL.to_be())
            .redirect(to)
            .map_err(|e| nl_err(format!("building the redirect filter of {name}"), e))?
            .execute()
            .await
            .map_err(|e| nl_err(format!("adding the redirect filter to {name}"), e))
    }

    /// The qdiscs of link `index` (the kernel's defaults included).
    pub async fn qdiscs(&self, index: u32) -> Result<Vec<Qdisc>, Error> {
        let msgs: Vec<TcMessage> = self
            .handle
            .qdisc()
            .get()
            .index(index as i32)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err(format!("listing the qdiscs of link #{index}"), e))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.index == index as i32)
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
