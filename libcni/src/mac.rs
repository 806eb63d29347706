//! MAC addresses as text, `aa:bb:cc:dd:ee:ff`: how results, configs, nft elements and etcd
//! leases carry them. Below every other module: the CNI types use it as the netlink layer
//! does.

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2))
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_formats() {
        assert_eq!(format_mac(&[0x0a, 0, 0xff, 1, 2, 3]), "0a:00:ff:01:02:03");
        assert_eq!(
            parse_mac("0a:00:FF:01:02:03"),
            Some([0x0a, 0, 0xff, 1, 2, 3])
        );
        for bad in [
            "0a:00:ff:01:02",
            "0a:00:ff:01:02:03:04",
            "0a:0:ff:01:02:03",
            "zz:00:ff:01:02:03",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
