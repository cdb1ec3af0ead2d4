//! Address helpers the network setup code uses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 address with its dotted netmask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ipv4Cidr {
    pub address: String,
    pub netmask: String,
}

// LXC.pm parse_ipv4_cidr: "a.b.c.d/N" with 7 < N <= 32; the mask comes from
// PVE::Network's $ipv4_reverse_mask table.
pub(crate) fn parse_ipv4_cidr(cidr: &str) -> Result<Ipv4Cidr, String> {
    let err = || "unable to parse ipv4 address/mask".to_owned();
    let (addr, bits) = cidr.split_once('/').ok_or_else(err)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
    if !bits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let bits: u32 = bits.parse().map_err(|_| err())?;
    if !(8..=32).contains(&bits) {
        return Err(err());
    }
    let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - bits).unwrap_or(0));
    Ok(Ipv4Cidr {
        address: addr.to_string(),
        netmask: mask.to_string(),
    })
}

/// Whether "a/N" is an IPv6 address with a prefix length (the
/// `^($IPV6RE)/(\d+)$` check of Debian.pm `setup_network`).
pub(crate) fn split_ipv6_cidr(cidr: &str) -> Option<(String, String)> {
    let (addr, bits) = cidr.rsplit_once('/')?;
    addr.parse::<Ipv6Addr>().ok()?;
    if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((addr.to_owned(), bits.to_owned()))
}

// PVE::Network is_ip_in_cidr: whether `ip` lies inside the network `cidr`
// (of the given IP version); anything unparsable is "not inside".
pub(crate) fn is_ip_in_cidr(ip: &str, cidr: &str, version: u8) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    let Ok(bits) = bits.parse::<u32>() else {
        return false;
    };
    match (ip.parse::<IpAddr>(), net.parse::<IpAddr>(), version) {
        (Ok(IpAddr::V4(ip)), Ok(IpAddr::V4(net)), 4) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (Ok(IpAddr::V6(ip)), Ok(IpAddr::V6(net)), 6) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Whether a nameserver is an IPv4 (4) or IPv6 (6) address.
pub(crate) fn ip_version(ip: &str) -> Option<u8> {
    match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) => Some(4),
        IpAddr::V6(_) => Some(6),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cidr_parsing() {
        let c = parse_ipv4_cidr("192.168.2.21/24").unwrap();
        assert_eq!(c.address, "192.168.2.21");
        assert_eq!(c.netmask, "255.255.255.0");
        assert_eq!(
            parse_ipv4_cidr("10.1.2.3/32").unwrap().netmask,
            "255.255.255.255"
        );
        assert!(parse_ipv4_cidr("10.1.2.3/7").is_err());
        assert!(parse_ipv4_cidr("10.1.2.3").is_err());
        assert!(split_ipv6_cidr("fd00::5/64").is_some());
        assert!(split_ipv6_cidr("fd00::5").is_none());
    }

    #[test]
    fn in_cidr() {
        assert!(is_ip_in_cidr("192.168.2.1", "192.168.2.21/24", 4));
        assert!(!is_ip_in_cidr("192.168.3.1", "192.168.2.21/24", 4));
        assert!(is_ip_in_cidr("fe80::1", "fe80::/10", 6));
        assert!(!is_ip_in_cidr("fd00:1::1", "fd00::5/64", 6));
    }
}
