//! Reading client addresses out of `X-Forwarded-For` entries and RFC 7239 `Forwarded`
//! elements: pure functions of their text, with the standard library's address parser.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// One `X-Forwarded-For` entry: an IPv4 or IPv6 address, optionally with a port
/// (`1.2.3.4:80`, `[::1]:80`) or in brackets; surrounding whitespace is ignored. Anything
/// else (including bytes that are not UTF-8) is `None`.
pub(crate) fn parse_xff_entry(raw: &[u8]) -> Option<IpAddr> {
    parse_node(std::str::from_utf8(raw).ok()?.trim())
}

/// The `for=` parameter of one RFC 7239 `Forwarded` element
/// (`for=192.0.2.60;proto=http;by=203.0.113.43`, `for="[2001:db8::17]:4711"`).
/// `unknown`, obfuscated identifiers (`_hidden`) and anything malformed are `None`.
pub(crate) fn parse_forwarded_element(raw: &[u8]) -> Option<IpAddr> {
    let element = std::str::from_utf8(raw).ok()?;
    for pair in element.split(';') {
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("for") {
            continue;
        }
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(rest) => rest.strip_suffix('"')?,
            None => value,
        };
        return parse_node(value);
    }
    None
}

/// An address, an address with a port, or `[v6]`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if s.len() > 64 {
        return None;
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    // `[v6]` without a port.
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn entries() {
        for (s, want) in [
            ("198.51.100.4", Some("198.51.100.4")),
            (" 198.51.100.4\t", Some("198.51.100.4")),
            ("198.51.100.4:8080", Some("198.51.100.4")),
            ("[2001:db8::1]:443", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("256.1.1.1", None),
            ("01.2.3.4", None),
            ("1.2.3", None),
            ("unknown", None),
            ("", None),
        ] {
            assert_eq!(
                parse_xff_entry(s.as_bytes()),
                want.map(|w| w.parse().unwrap()),
                "{s:?}"
            );
        }
        assert_eq!(parse_xff_entry(b"\xff1.2.3.4"), None, "not UTF-8");
        for (s, want) in [
            (
                "for=192.0.2.60;proto=http;by=203.0.113.43",
                Some("192.0.2.60"),
            ),
            ("For = \"[2001:db8::17]:4711\"", Some("2001:db8::17")),
            ("proto=https", None),
            ("for=unknown", None),
            ("for=_hidden", None),
            ("for=\"192.0.2.60", None),
        ] {
            assert_eq!(
                parse_forwarded_element(s.as_bytes()),
                want.map(|w| w.parse().unwrap()),
                "{s:?}"
            );
        }
    }

    proptest! {
        // Arbitrary bytes never panic either parser.
        #[test]
        fn parsers_never_panic(s in any::<Vec<u8>>()) {
            let _ = parse_xff_entry(&s);
            let _ = parse_forwarded_element(&s);
        }

        // Where std reads a dotted quad, so does an entry.
        #[test]
        fn dotted_quads_read_as_std_reads_them(s in "(0|[1-9][0-9]{0,3}|0[0-9]{1,2})(\\.(0|[1-9][0-9]{0,3}|0[0-9]{1,2})){3}") {
            prop_assert_eq!(parse_xff_entry(s.as_bytes()), s.parse::<IpAddr>().ok());
        }

        #[test]
        fn v6_round_trip_with_port(bits in any::<u128>(), port in any::<u16>()) {
            let ip = Ipv6Addr::from(bits);
            prop_assert_eq!(parse_xff_entry(format!("[{ip}]:{port}").as_bytes()), Some(IpAddr::V6(ip)));
            let quoted = format!("for=\"[{ip}]:{port}\"");
            prop_assert_eq!(parse_forwarded_element(quoted.as_bytes()), Some(IpAddr::V6(ip)));
        }
    }
}
