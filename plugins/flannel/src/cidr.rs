//! Addresses with a prefix length, read and printed as Go's net.ParseCIDR and
//! net.IPNet.String do, which is what flannel's plugin puts in the delegate's config.

use std::fmt;
use std::net::IpAddr;

/// An address and a prefix length; `ip` keeps its host bits until [`Cidr::network`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// As net.ParseCIDR: an address without a zone, '/', decimal digits no larger than
    /// the address's bits.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let invalid = || format!("invalid CIDR address: {s}");
        let (addr, len) = s.split_once('/').ok_or_else(invalid)?;
        let ip: IpAddr = addr.parse().map_err(|_| invalid())?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(prefix) if prefix <= bits => Ok(Cidr { ip, prefix }),
            _ => Err(invalid()),
        }
    }

    /// The network: host bits cleared (what net.ParseCIDR returns as its IPNet).
    pub fn network(self) -> Cidr {
        let ip = match self.ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Cidr { ip, ..self }
    }
}

/// Go prints an IPv4-mapped IPv6 address as IPv4.
pub fn go_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => a.to_string(),
        },
        v4 => v4.to_string(),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", go_ip(self.ip), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_go_parses_and_prints() {
        let c = Cidr::parse("10.238.1.1/24").unwrap();
        assert_eq!(c.to_string(), "10.238.1.1/24");
        assert_eq!(c.network().to_string(), "10.238.1.0/24");
        let c = Cidr::parse("fc00:238:0:1::1/64").unwrap();
        assert_eq!(c.network().to_string(), "fc00:238:0:1::/64");
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().network().prefix, 0);
        assert_eq!(
            Cidr::parse("10.0.0.0/0008").unwrap().to_string(),
            "10.0.0.0/8"
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            " 10.0.0.0/8",
            "010.0.0.0/8",
            "fe80::1%eth0/64",
            "10.0.0.0/8\r",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
