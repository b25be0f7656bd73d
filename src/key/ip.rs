//! [`PeerIp`] and [`ClientIp`]: keys by the client's address, directly or behind trusted
//! proxies.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Request};
use ipnet::IpNet;

use super::extractor::{KeyError, KeyExtractor, peer_addr};
use super::forwarded::{parse_forwarded_element, parse_xff_entry};
use crate::ConfigError;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Groups IPv6 clients by network prefix.
///
/// An IPv6 client usually controls a whole /64, so keying by the full /128 lets it mint
/// billions of keys. Both IP extractors key IPv6 addresses by their first `ipv6_prefix`
/// bits (default 64; 128 keys each address alone). IPv4-mapped IPv6 addresses
/// (`::ffff:a.b.c.d`) are keyed as the IPv4 address they are.
fn normalise(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if ipv6_prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(ipv6_prefix))
            };
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

fn check_prefix(ipv6_prefix: u8) -> Result<u8, ConfigError> {
    if (1..=128).contains(&ipv6_prefix) {
        Ok(ipv6_prefix)
    } else {
        Err(ConfigError::new(
            "ipv6_prefix",
            format!(
                "{ipv6_prefix} is not a prefix length; use 1..=128 (64 is one customer network)"
            ),
        ))
    }
}

/// Keys a request by its TCP peer's IP address.
///
/// # Examples
///
/// ```
/// use tower_scale::key::{KeyExtractor, PeerIp};
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert("[2001:db8::1]:443".parse::<std::net::SocketAddr>().unwrap());
/// // IPv6 clients are grouped by /64 by default.
/// assert_eq!(PeerIp::new().extract(&req).unwrap().to_string(), "2001:db8::");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIp {
    ipv6_prefix: u8,
}

impl Default for PeerIp {
    fn default() -> Self {
        Self { ipv6_prefix: 64 }
    }
}

impl PeerIp {
    /// Keys by peer IP, grouping IPv6 addresses by /64.
    pub fn new() -> Self {
        Self::default()
    }

    /// Groups IPv6 addresses by their first `bits` bits instead (1..=128).
    pub fn ipv6_prefix(bits: u8) -> Result<Self, ConfigError> {
        Ok(Self {
            ipv6_prefix: check_prefix(bits)?,
        })
    }
}

impl KeyExtractor for PeerIp {
    type Key = IpAddr;

    fn extract<B>(&self, req: &Request<B>) -> Result<IpAddr, KeyError> {
        peer_addr(req.extensions())
            .map(|a| normalise(a.ip(), self.ipv6_prefix))
            .ok_or(KeyError::Missing("peer address (serve with connect info)"))
    }
}

/// Which header the trusted proxies write the client address into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// Keys a request by the client's IP address behind proxies you trust.
///
/// Built with [`ClientIp::builder`]. See the [module docs](super) for the rule it applies.
/// With no trusted proxies it behaves exactly like [`PeerIp`].
#[derive(Debug, Clone)]
pub struct ClientIp {
    inner: Arc<ClientIpInner>,
}

#[derive(Debug)]
struct ClientIpInner {
    /// The trusted networks as masks, for a compare per check.
    masks: Box<[Mask]>,
    header: ForwardedHeader,
    ipv6_prefix: u8,
}

/// Builds a [`ClientIp`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientIpBuilder {
    trusted: Vec<Result<IpNet, String>>,
    header: ForwardedHeader,
    ipv6_prefix: u8,
}

impl ClientIp {
    /// Starts a builder with no trusted proxies, `X-Forwarded-For`, IPv6 grouped by /64.
    pub fn builder() -> ClientIpBuilder {
        ClientIpBuilder {
            trusted: Vec::new(),
            header: ForwardedHeader::XForwardedFor,
            ipv6_prefix: 64,
        }
    }

    pub(super) fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.inner.masks.iter().any(|m| m.contains(ip))
    }

    /// The client address for a request from `peer` carrying `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let name = match self.inner.header {
            ForwardedHeader::XForwardedFor => &X_FORWARDED_FOR,
            ForwardedHeader::Forwarded => &http::header::FORWARDED,
        };
        // Several header lines form one list, in order; walk them from the last line back.
        // Entries are split as bytes: proxies append to the client's own line, so a line
        // may hold bytes the client chose; only the entry that holds them is unusable, and
        // the walk stops there, never before it reaches what a trusted proxy appended.
        let mut last_trusted = peer;
        for value in headers.get_all(name).iter().rev() {
            for raw in value.as_bytes().rsplit(|b| *b == b',') {
                let parsed = match self.inner.header {
                    ForwardedHeader::XForwardedFor => parse_xff_entry(raw),
                    ForwardedHeader::Forwarded => parse_forwarded_element(raw),
                };
                match parsed {
                    Some(ip) if self.is_trusted(ip) => last_trusted = ip,
                    Some(ip) => return ip,
                    // Garbage, `unknown` or an obfuscated identifier: nothing to its left can
                    // be vouched for, so the closest hop we can name is the answer.
                    None => return last_trusted,
                }
            }
        }
        last_trusted
    }
}

impl ClientIpBuilder {
    /// Trusts `X-Forwarded-For`/`Forwarded` entries appended by peers in this CIDR
    /// (`10.0.0.0/8`, `::1/128`) or address (`192.0.2.1`). Errors surface in [`build`](Self::build).
    pub fn trust_cidr(mut self, cidr: &str) -> Self {
        let cidr = cidr.trim();
        let parsed = cidr
            .parse::<IpNet>()
            .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| cidr.to_owned());
        self.trusted.push(parsed);
        self
    }

    /// Trusts every CIDR in a comma-separated list, e.g. the `TRUSTED_PROXIES` variable.
    pub fn trust_cidrs(mut self, list: &str) -> Self {
        for part in list.split(',').filter(|p| !p.trim().is_empty()) {
            self = self.trust_cidr(part);
        }
        self
    }

    /// Reads the client address from this header (default `X-Forwarded-For`).
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Groups IPv6 clients by their first `bits` bits (default 64).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits;
        self
    }

    /// Validates the configuration.
    pub fn build(self) -> Result<ClientIp, ConfigError> {
        let mut trusted = Vec::with_capacity(self.trusted.len());
        for t in self.trusted {
            match t {
                Ok(net) => trusted.push(canonical_net(net).trunc()),
                Err(bad) => {
                    return Err(ConfigError::new(
                        "trusted_proxies",
                        format!(
                            "`{bad}` is not a CIDR or IP address; write e.g. `10.0.0.0/8` or `2001:db8::/32`"
                        ),
                    ));
                }
            }
        }
        Ok(ClientIp {
            inner: Arc::new(ClientIpInner {
                masks: trusted.into_iter().map(Mask::new).collect(),
                header: self.header,
                ipv6_prefix: check_prefix(self.ipv6_prefix)?,
            }),
        })
    }
}

impl KeyExtractor for ClientIp {
    type Key = IpAddr;

    fn extract<B>(&self, req: &Request<B>) -> Result<IpAddr, KeyError> {
        let peer = peer_addr(req.extensions())
            .ok_or(KeyError::Missing("peer address (serve with connect info)"))?;
        let ip = self.client_ip(peer.ip(), req.headers());
        Ok(normalise(ip, self.inner.ipv6_prefix))
    }
}

/// Writes an IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 network it is,
/// since addresses are compared in canonical form.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n);
    }
    net
}

/// A trusted network as a mask and the bits an address must have under it.
#[derive(Clone, Copy)]
enum Mask {
    V4 { mask: u32, net: u32 },
    V6 { mask: u128, net: u128 },
}

impl fmt::Debug for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Mask::V4 { mask, net } => {
                write!(f, "{}/{}", std::net::Ipv4Addr::from(net), mask.count_ones())
            }
            Mask::V6 { mask, net } => write!(f, "{}/{}", Ipv6Addr::from(net), mask.count_ones()),
        }
    }
}

impl Mask {
    fn new(net: IpNet) -> Self {
        match net {
            IpNet::V4(n) => Mask::V4 {
                mask: u32::from(n.netmask()),
                net: u32::from(n.network()),
            },
            IpNet::V6(n) => Mask::V6 {
                mask: u128::from(n.netmask()),
                net: u128::from(n.network()),
            },
        }
    }

    #[inline]
    fn contains(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Mask::V4 { mask, net }, IpAddr::V4(a)) => u32::from(a) & mask == net,
            (Mask::V6 { mask, net }, IpAddr::V6(a)) => u128::from(a) & mask == net,
            _ => false,
        }
    }
}
