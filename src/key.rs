//! Client keys: who a request counts against.
//!
//! Rate limits, per-key caches and per-key circuit breakers all need to say *whose* request
//! this is. A [`KeyExtractor`] answers that from the request head. The stock extractors:
//!
//! | extractor | key | use when |
//! |---|---|---|
//! | [`PeerIp`] | the TCP peer's address | clients connect to you directly |
//! | [`ClientIp`] | the client address behind trusted proxies | you run behind load balancers / CDNs |
//! | [`HeaderKey`] | a header's value (an API key) | clients identify themselves |
//! | [`GlobalKey`] | one key for everybody | a global quota |
//! | `RouteKey` (feature `axum`) | the matched route template | per-route quotas or breakers |
//! | [`from_fn`] | whatever your closure returns | anything else |
//!
//! # Trusting proxies
//!
//! `X-Forwarded-For` and `Forwarded` are written by whoever sends them: the *leftmost* entry
//! is whatever the client chose to put there. [`ClientIp`] only believes entries appended by
//! proxies you list (as CIDRs): it walks the header from the right, skipping addresses of
//! trusted proxies, and takes the first address that is not one. A request whose TCP peer is
//! not a trusted proxy is keyed by that peer, whatever its headers say.
//!
//! # Examples
//!
//! ```
//! use tower_scale::key::{ClientIp, KeyExtractor};
//! use std::net::SocketAddr;
//!
//! let key = ClientIp::builder()
//!     .trust_cidr("10.0.0.0/8")
//!     .build()
//!     .unwrap();
//!
//! let mut req = http::Request::builder()
//!     .header("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.2.3")
//!     .body(())
//!     .unwrap();
//! // The load balancer at 10.0.0.1 connected to us.
//! req.extensions_mut().insert("10.0.0.1:40000".parse::<SocketAddr>().unwrap());
//!
//! // 10.1.2.3 is a trusted proxy; 203.0.113.7 is the first address it does not vouch for.
//! // "6.6.6.6" was written by the client itself and is ignored.
//! assert_eq!(key.extract(&req).unwrap().to_string(), "203.0.113.7");
//! ```

use std::borrow::Cow;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::{Extensions, HeaderMap, HeaderName, Method, Request, Uri};
use ipnet::IpNet;

use crate::ConfigError;

/// Says whose request this is.
///
/// Implementations must be cheap: they run on every request. They never panic on bad
/// input; a request they cannot key is a [`KeyError`], which each layer handles as its docs
/// say (a rate limiter, for instance, can refuse it or fall back to a shared key).
pub trait KeyExtractor: Clone + Send + Sync + 'static {
    /// The key. `Display` is how it is written into store keys (Redis), so it must be
    /// injective: two different keys must display differently.
    type Key: Clone + Eq + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static;

    /// Extracts the key from a request head.
    fn extract<B>(&self, req: &Request<B>) -> Result<Self::Key, KeyError>;
}

/// A request could not be keyed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// What the extractor needs is not in the request (no peer address, no header).
    Missing(&'static str),
    /// It is there but unusable (a header that is not valid text, say).
    Invalid(&'static str),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Missing(what) => write!(f, "cannot key request: no {what}"),
            KeyError::Invalid(what) => write!(f, "cannot key request: invalid {what}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// A borrowed view of a request head, handed to [`from_fn`] closures.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestRef<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions (peer address, matched route, session...).
    pub extensions: &'a Extensions,
}

impl<'a, B> From<&'a Request<B>> for RequestRef<'a> {
    fn from(req: &'a Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }
}

/// The TCP peer's address, as the server recorded it in the request extensions.
///
/// Looks for axum's `ConnectInfo<SocketAddr>` (feature `axum`; serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`), then for a bare [`SocketAddr`]
/// extension (what a hand-written hyper accept loop would insert).
pub fn peer_addr(extensions: &Extensions) -> Option<SocketAddr> {
    #[cfg(feature = "axum")]
    if let Some(ci) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(ci.0);
    }
    extensions.get::<SocketAddr>().copied()
}

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
/// Built with [`ClientIp::builder`]. See the [module docs](self) for the rule it applies.
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

    fn is_trusted(&self, ip: IpAddr) -> bool {
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
                    ForwardedHeader::XForwardedFor => parse_xff_bytes(raw),
                    ForwardedHeader::Forwarded => std::str::from_utf8(raw)
                        .ok()
                        .and_then(parse_forwarded_element),
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

/// Parses one `X-Forwarded-For` entry: an IPv4 or IPv6 address, optionally with a port
/// (`1.2.3.4:80`, `[::1]:80`) or in brackets. Anything else is `None`.
pub(crate) fn parse_xff_entry(entry: &str) -> Option<IpAddr> {
    parse_node(entry.trim())
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// One `X-Forwarded-For` entry as bytes: the plain dotted quad that nearly every entry is
/// takes a byte-level path; anything else goes through [`parse_xff_entry`].
fn parse_xff_bytes(raw: &[u8]) -> Option<IpAddr> {
    if let Some(v4) = parse_dotted_quad(raw.trim_ascii()) {
        return Some(IpAddr::V4(v4));
    }
    std::str::from_utf8(raw).ok().and_then(parse_xff_entry)
}

/// Exactly `a.b.c.d` as the standard library reads it (1 to 3 digits per octet, at most
/// 255, no leading zero), or `None` for anything else, including forms the general
/// parser accepts (ports, IPv6): it is only ever a shortcut in front of that parser.
fn parse_dotted_quad(b: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (k, octet) in octets.iter_mut().enumerate() {
        if k > 0 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut v: u32 = 0;
        while i < b.len() && i - start < 3 && b[i].is_ascii_digit() {
            v = v * 10 + u32::from(b[i] - b'0');
            i += 1;
        }
        let len = i - start;
        if len == 0 || v > 255 || (len > 1 && b[start] == b'0') {
            return None;
        }
        *octet = v as u8;
    }
    (i == b.len()).then(|| std::net::Ipv4Addr::from(octets))
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

/// Parses the `for=` parameter of one RFC 7239 `Forwarded` element
/// (`for=192.0.2.60;proto=http;by=203.0.113.43`, `for="[2001:db8::17]:4711"`).
/// `unknown`, obfuscated identifiers (`_hidden`) and anything malformed are `None`.
pub(crate) fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
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

/// Keys a request by a header's value, e.g. an API key.
///
/// The key displays as the value when it is visible ASCII, else as `hex:` and its bytes in
/// hex, so it can be written into a store key without ambiguity.
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys by the value of `name`.
    pub fn new(name: HeaderName) -> Self {
        Self { name }
    }

    /// Keys by the header called `name`; errors if it is not a valid header name.
    pub fn named(name: &str) -> Result<Self, ConfigError> {
        HeaderName::from_bytes(name.as_bytes())
            .map(Self::new)
            .map_err(|_| ConfigError::new("header", format!("`{name}` is not a valid header name")))
    }
}

/// The value of a header, as a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderValueKey(http::HeaderValue);

impl HeaderValueKey {
    /// The raw header value.
    pub fn value(&self) -> &http::HeaderValue {
        &self.0
    }
}

impl fmt::Display for HeaderValueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0.as_bytes();
        if bytes.iter().all(|b| b.is_ascii_graphic()) && !bytes.starts_with(b"hex:") {
            // Visible ASCII is valid UTF-8.
            f.write_str(std::str::from_utf8(bytes).unwrap_or_default())
        } else {
            f.write_str("hex:")?;
            for b in bytes {
                write!(f, "{b:02x}")?;
            }
            Ok(())
        }
    }
}

impl KeyExtractor for HeaderKey {
    type Key = HeaderValueKey;

    fn extract<B>(&self, req: &Request<B>) -> Result<HeaderValueKey, KeyError> {
        match req.headers().get(&self.name) {
            Some(v) if !v.is_empty() => Ok(HeaderValueKey(v.clone())),
            Some(_) => Err(KeyError::Invalid("header value (empty)")),
            None => Err(KeyError::Missing("key header")),
        }
    }
}

/// One key for every request: a global quota or breaker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GlobalKey;

impl fmt::Display for GlobalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("global")
    }
}

impl KeyExtractor for GlobalKey {
    type Key = GlobalKey;

    fn extract<B>(&self, _req: &Request<B>) -> Result<GlobalKey, KeyError> {
        Ok(GlobalKey)
    }
}

/// Keys a request by the route template axum matched (`/products/{id}`), never the raw path.
#[cfg(feature = "axum")]
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteKey;

/// A route template, as a key.
#[cfg(feature = "axum")]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteTemplate(Arc<str>);

#[cfg(feature = "axum")]
impl fmt::Display for RouteTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(feature = "axum")]
impl KeyExtractor for RouteKey {
    type Key = RouteTemplate;

    fn extract<B>(&self, req: &Request<B>) -> Result<RouteTemplate, KeyError> {
        req.extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|m| RouteTemplate(Arc::from(m.as_str())))
            .ok_or(KeyError::Missing(
                "matched route (apply the layer with Router::layer or route_layer)",
            ))
    }
}

/// A closure as a [`KeyExtractor`]; see [`from_fn`].
#[derive(Clone)]
pub struct FnKey<F> {
    f: F,
}

impl<F> fmt::Debug for FnKey<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnKey").finish_non_exhaustive()
    }
}

/// Keys requests with a closure; `None` means the request cannot be keyed.
///
/// ```
/// use tower_scale::key::{from_fn, KeyExtractor, RequestRef};
/// let tenant = from_fn(|req: RequestRef<'_>| {
///     req.headers.get("x-tenant")?.to_str().ok().map(str::to_owned)
/// });
/// let req = http::Request::builder().header("x-tenant", "acme").body(()).unwrap();
/// assert_eq!(tenant.extract(&req).unwrap(), "acme");
/// ```
pub fn from_fn<F, K>(f: F) -> FnKey<F>
where
    F: Fn(RequestRef<'_>) -> Option<K> + Clone + Send + Sync + 'static,
{
    FnKey { f }
}

impl<F, K> KeyExtractor for FnKey<F>
where
    F: Fn(RequestRef<'_>) -> Option<K> + Clone + Send + Sync + 'static,
    K: Clone + Eq + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static,
{
    type Key = K;

    fn extract<B>(&self, req: &Request<B>) -> Result<K, KeyError> {
        (self.f)(RequestRef::from(req)).ok_or(KeyError::Missing("key (closure returned None)"))
    }
}

/// Writes a key so it can be embedded in a store key without clashing with the store's own
/// separators: `%`, `{`, `}` are percent-encoded (braces would break Redis Cluster hash tags).
/// The encoding is injective.
pub fn escape_key_part(part: &str) -> Cow<'_, str> {
    if !part.bytes().any(|b| matches!(b, b'%' | b'{' | b'}')) {
        return Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() + 8);
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    proptest! {
        // The byte-level shortcut reads exactly what the general parser reads, or defers.
        #[test]
        fn dotted_quad_shortcut_agrees(s in "[ \t]{0,2}[0-9]{0,4}(\\.[0-9]{0,4}){0,4}(:[0-9]{1,5})?[ \t]{0,2}") {
            let general = parse_xff_entry(&s);
            prop_assert_eq!(parse_xff_bytes(s.as_bytes()), general);
            if let Some(v4) = parse_dotted_quad(s.as_bytes().trim_ascii()) {
                prop_assert_eq!(Some(IpAddr::V4(v4)), general);
            }
        }

        // Where the shortcut decides alone (plain quads, most of them valid), it decides as
        // the standard library does.
        #[test]
        fn dotted_quad_matches_std(s in "(0|[1-9][0-9]{0,3}|0[0-9]{1,2})(\\.(0|[1-9][0-9]{0,3}|0[0-9]{1,2})){3}") {
            prop_assert_eq!(parse_dotted_quad(s.as_bytes()), s.parse::<std::net::Ipv4Addr>().ok());
        }
    }

    #[test]
    fn dotted_quad_shortcut_cases() {
        for (s, want) in [
            ("198.51.100.4", Some("198.51.100.4")),
            ("0.0.0.0", Some("0.0.0.0")),
            ("255.255.255.255", Some("255.255.255.255")),
            ("256.1.1.1", None),
            ("01.2.3.4", None),
            ("1.2.3", None),
            ("1.2.3.4.5", None),
            ("1.2.3.4:80", None),
            ("1..3.4", None),
            ("1234.1.1.1", None),
            ("", None),
        ] {
            assert_eq!(
                parse_dotted_quad(s.as_bytes()),
                want.map(|w| w.parse().unwrap()),
                "{s}"
            );
        }
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
        let f = from_fn(|r: RequestRef<'_>| r.uri.path().strip_prefix("/t/").map(str::to_owned));
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
        fn parsers_never_panic(s in any::<String>()) {
            let _ = parse_xff_entry(&s);
            let _ = parse_forwarded_element(&s);
        }

        #[test]
        fn v6_round_trip_with_port(bits in any::<u128>(), port in any::<u16>()) {
            let ip = Ipv6Addr::from(bits);
            prop_assert_eq!(parse_xff_entry(&format!("[{ip}]:{port}")), Some(IpAddr::V6(ip)));
            let quoted = format!("for=\"[{ip}]:{port}\"");
            prop_assert_eq!(parse_forwarded_element(&quoted), Some(IpAddr::V6(ip)));
        }

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
}
