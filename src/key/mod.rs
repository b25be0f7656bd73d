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
//! | [`key_fn`] | whatever your closure returns | anything else |
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

mod extractor;
mod forwarded;
mod ip;
mod simple;
#[cfg(test)]
mod tests;

pub use extractor::{KeyError, KeyExtractor, RequestRef, escape_key_part, peer_addr};
pub use ip::{ClientIp, ClientIpBuilder, ForwardedHeader, PeerIp};
pub use simple::{FnKey, GlobalKey, HeaderKey, HeaderValueKey, key_fn};
#[cfg(feature = "axum")]
pub use simple::{RouteKey, RouteTemplate};
