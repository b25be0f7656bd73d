//! The key extractors against requests: trusted proxies, IPv6 grouping, headers,
//! closures, escaping.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, Request};
use proptest::prelude::*;

use super::*;

fn req_from(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder();
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(()).unwrap();
    req.extensions_mut()
        .insert(peer.parse::<SocketAddr>().unwrap());
    req
}

fn lb() -> ClientIp {
    ClientIp::builder()
        .trust_cidrs("10.0.0.0/8, 192.168.0.0/16,::1/128")
        .build()
        .unwrap()
}

#[test]
fn client_ip_table() {
    struct Case {
        name: &'static str,
        peer: &'static str,
        headers: &'static [(&'static str, &'static str)],
        want: &'static str,
    }
    let cases = [
        Case {
            name: "untrusted peer ignores header",
            peer: "203.0.113.9:1",
            headers: &[("x-forwarded-for", "1.1.1.1")],
            want: "203.0.113.9",
        },
        Case {
            name: "trusted peer, one hop",
            peer: "10.0.0.1:1",
            headers: &[("x-forwarded-for", "198.51.100.4")],
            want: "198.51.100.4",
        },
        Case {
            name: "spoofed leftmost ignored",
            peer: "10.0.0.1:1",
            headers: &[("x-forwarded-for", "1.1.1.1, 198.51.100.4")],
            want: "198.51.100.4",
        },
        Case {
            name: "skips chain of trusted proxies",
            peer: "10.0.0.1:1",
            headers: &[(
                "x-forwarded-for",
                "1.1.1.1, 198.51.100.4, 192.168.1.1, 10.9.9.9",
            )],
            want: "198.51.100.4",
        },
        Case {
            name: "multiple header lines in order",
            peer: "10.0.0.1:1",
            headers: &[
                ("x-forwarded-for", "1.1.1.1, 198.51.100.4"),
                ("x-forwarded-for", "10.2.2.2"),
            ],
            want: "198.51.100.4",
        },
        Case {
            name: "ports and brackets",
            peer: "10.0.0.1:1",
            headers: &[("x-forwarded-for", "[2001:db8::1]:443")],
            want: "2001:db8::",
        },
        Case {
            name: "v4 with port",
            peer: "10.0.0.1:1",
            headers: &[("x-forwarded-for", "198.51.100.4:8080")],
            want: "198.51.100.4",
        },
        Case {
            name: "garbage stops walk at last trusted hop",
            peer: "10.0.0.1:1",
            headers: &[("x-forwarded-for", "garbage, 10.3.3.3")],
            want: "10.3.3.3",
        },
        Case {
            name: "no header: peer",
            peer: "10.0.0.1:1",
            headers: &[],
            want: "10.0.0.1",
        },
        Case {
            name: "empty header: peer",
            peer: "10.0.0.1:1",
            headers: &[("x-forwarded-for", "")],
            want: "10.0.0.1",
        },
        Case {
            name: "v4-mapped peer trusted",
            peer: "[::ffff:10.0.0.1]:1",
            headers: &[("x-forwarded-for", "198.51.100.4")],
            want: "198.51.100.4",
        },
        Case {
            name: "v6 loopback trusted",
            peer: "[::1]:1",
            headers: &[("x-forwarded-for", "198.51.100.4")],
            want: "198.51.100.4",
        },
        Case {
            name: "all trusted: leftmost trusted",
            peer: "10.0.0.1:1",
            headers: &[("x-forwarded-for", "10.5.5.5, 10.6.6.6")],
            want: "10.5.5.5",
        },
    ];
    let key = lb();
    for c in cases {
        let got = key.extract(&req_from(c.peer, c.headers)).unwrap();
        assert_eq!(got.to_string(), c.want, "case {}", c.name);
    }
}

#[test]
fn client_bytes_in_an_appended_line_cannot_hide_the_client() {
    // A proxy appended the client's address to the line the client sent, which holds
    // bytes that are not text: the appended entry still wins.
    let peer: SocketAddr = "10.0.0.1:1".parse().unwrap();
    let mut req = Request::new(());
    req.headers_mut().insert(
        "x-forwarded-for",
        http::HeaderValue::from_bytes(b"\xff\xfe junk, 203.0.113.7").unwrap(),
    );
    req.extensions_mut().insert(peer);
    assert_eq!(lb().extract(&req).unwrap().to_string(), "203.0.113.7");
    // Non-text in the entry that matters stops the walk at the last trusted hop.
    let mut req = Request::new(());
    req.headers_mut().insert(
        "x-forwarded-for",
        http::HeaderValue::from_bytes(b"203.0.113.7, \xff, 10.2.2.2").unwrap(),
    );
    req.extensions_mut().insert(peer);
    assert_eq!(lb().extract(&req).unwrap().to_string(), "10.2.2.2");
}

#[test]
fn mapped_cidrs_and_multiple_forwarded_lines() {
    let key = ClientIp::builder()
        .trust_cidr("::ffff:10.0.0.0/104")
        .build()
        .unwrap();
    assert!(key.is_trusted("10.9.8.7".parse().unwrap()));
    assert!(key.is_trusted("::ffff:10.9.8.7".parse().unwrap()));
    assert!(!key.is_trusted("11.0.0.1".parse().unwrap()));
    let fwd = ClientIp::builder()
        .trust_cidr("10.0.0.0/8")
        .header(ForwardedHeader::Forwarded)
        .build()
        .unwrap();
    let req = req_from(
        "10.0.0.1:1",
        &[
            ("forwarded", "for=1.1.1.1, for=198.51.100.4"),
            ("forwarded", "for=10.7.7.7"),
        ],
    );
    assert_eq!(fwd.extract(&req).unwrap().to_string(), "198.51.100.4");
}

#[test]
fn forwarded_header_table() {
    let key = ClientIp::builder()
        .trust_cidr("10.0.0.0/8")
        .header(ForwardedHeader::Forwarded)
        .build()
        .unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("plain", "for=198.51.100.4", "198.51.100.4"),
        (
            "params and case",
            "For=198.51.100.4;proto=https;by=10.0.0.1",
            "198.51.100.4",
        ),
        (
            "quoted v6 with port",
            "for=\"[2001:db8:cafe::17]:4711\"",
            "2001:db8:cafe::",
        ),
        (
            "spoofed leftmost",
            "for=1.1.1.1, for=198.51.100.4, for=10.1.1.1",
            "198.51.100.4",
        ),
        (
            "obfuscated stops walk",
            "for=_hidden, for=10.1.1.1",
            "10.1.1.1",
        ),
        ("unknown stops walk", "for=unknown", "10.0.0.1"),
        ("no for param", "proto=http", "10.0.0.1"),
        ("unterminated quote", "for=\"198.51.100.4", "10.0.0.1"),
    ];
    for (name, value, want) in cases {
        let got = key
            .extract(&req_from("10.0.0.1:9", &[("forwarded", value)]))
            .unwrap();
        assert_eq!(got.to_string(), *want, "case {name}");
    }
}

#[test]
fn bad_config_is_an_error() {
    let e = ClientIp::builder()
        .trust_cidr("10.0.0.0/33")
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "trusted_proxies");
    assert!(e.to_string().contains("10.0.0.0/33"));
    assert!(ClientIp::builder().trust_cidr("nonsense").build().is_err());
    assert!(ClientIp::builder().ipv6_prefix(0).build().is_err());
    assert!(ClientIp::builder().ipv6_prefix(129).build().is_err());
    assert!(PeerIp::ipv6_prefix(200).is_err());
    assert!(HeaderKey::named("bad header").is_err());
    // A bare address is a /32 (or /128).
    let k = ClientIp::builder().trust_cidr("192.0.2.1").build().unwrap();
    assert!(k.is_trusted("192.0.2.1".parse().unwrap()));
    assert!(!k.is_trusted("192.0.2.2".parse().unwrap()));
}

#[test]
fn missing_peer_is_a_key_error() {
    let req = Request::new(());
    assert!(matches!(
        PeerIp::new().extract(&req),
        Err(KeyError::Missing(_))
    ));
    assert!(matches!(lb().extract(&req), Err(KeyError::Missing(_))));
}

#[test]
fn ipv6_prefix_grouping() {
    let req = req_from("[2001:db8:1:2:3:4:5:6]:1", &[]);
    assert_eq!(
        PeerIp::new().extract(&req).unwrap().to_string(),
        "2001:db8:1:2::"
    );
    let full = PeerIp::ipv6_prefix(128).unwrap();
    assert_eq!(
        full.extract(&req).unwrap().to_string(),
        "2001:db8:1:2:3:4:5:6"
    );
}

#[test]
fn header_key_display_is_injective_and_safe() {
    let k = HeaderKey::named("x-api-key").unwrap();
    let a = k
        .extract(&req_from("1.1.1.1:1", &[("x-api-key", "abc")]))
        .unwrap();
    assert_eq!(a.to_string(), "abc");
    let spaced = k
        .extract(&req_from("1.1.1.1:1", &[("x-api-key", "a b")]))
        .unwrap();
    assert_eq!(spaced.to_string(), "hex:612062");
    // A literal value starting with "hex:" cannot collide with an encoded one.
    let tricky = k
        .extract(&req_from("1.1.1.1:1", &[("x-api-key", "hex:612062")]))
        .unwrap();
    assert_ne!(tricky.to_string(), spaced.to_string());
    assert!(matches!(
        k.extract(&Request::new(())),
        Err(KeyError::Missing(_))
    ));
    assert!(matches!(
        k.extract(&req_from("1.1.1.1:1", &[("x-api-key", "")])),
        Err(KeyError::Invalid(_))
    ));
}

#[test]
fn global_and_closure() {
    assert_eq!(
        GlobalKey.extract(&Request::new(())).unwrap().to_string(),
        "global"
    );
    let f = key_fn(|r: RequestRef<'_>| r.uri.path().strip_prefix("/t/").map(str::to_owned));
    let req = Request::builder().uri("/t/acme").body(()).unwrap();
    assert_eq!(f.extract(&req).unwrap(), "acme");
    assert!(f.extract(&Request::new(())).is_err());
}

#[test]
fn escape_is_injective_on_examples() {
    assert_eq!(escape_key_part("a:b"), "a:b");
    assert_eq!(escape_key_part("{x}"), "%7Bx%7D");
    assert_ne!(escape_key_part("%7B"), escape_key_part("{"));
}

proptest! {
    // Whatever a client sends, an untrusted peer is keyed by its own address.
    #[test]
    fn untrusted_peer_wins_over_any_header(xff in ".{0,300}", fwd in ".{0,300}", a in any::<[u8; 4]>()) {
        let peer = IpAddr::from(a);
        prop_assume!(!lb().is_trusted(peer));
        let mut h = HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&xff) { h.insert("x-forwarded-for", v); }
        if let Ok(v) = http::HeaderValue::from_str(&fwd) { h.insert("forwarded", v); }
        prop_assert_eq!(lb().client_ip(peer, &h), peer);
    }

    // Behind a trusted proxy, whatever the client prepends, the answer is the address
    // the trusted proxy appended.
    #[test]
    fn client_prefix_cannot_change_key(junk in "[ -~]{0,200}", a in any::<[u8; 4]>()) {
        let client = IpAddr::from(a);
        prop_assume!(!lb().is_trusted(client));
        let mut h = HeaderMap::new();
        let v = format!("{junk}, {client}");
        if let Ok(v) = http::HeaderValue::from_str(&v) { h.insert("x-forwarded-for", v); }
        else { return Ok(()); }
        prop_assert_eq!(lb().client_ip("10.0.0.1".parse().unwrap(), &h), client);
    }

    // Arbitrary bytes never panic either parser, and what they accept is an address.
    #[test]
    fn escape_injective(a in ".{0,20}", b in ".{0,20}") {
        prop_assume!(a != b);
        prop_assert_ne!(escape_key_part(&a), escape_key_part(&b));
    }

    #[test]
    fn escaped_has_no_braces(a in ".{0,40}") {
        let e = escape_key_part(&a);
        prop_assert!(!e.contains(['{', '}']), "braces left in {}", e);
    }
}
