//! Sessions kept in a store, so any instance can serve any request and a restart logs
//! nobody out.
//!
//! [`SessionLayer`] reads the session cookie, puts a [`Session`] in the request's
//! extensions, and after the handler writes what changed and sets the cookie. With the
//! `axum` feature, `Session` is an extractor.
//!
//! - **Ids** are 256 bits from the OS CSPRNG, sent as 64 hex digits in a cookie that is
//!   `HttpOnly`, `Secure` and `SameSite=Lax` by default (name, domain, path and the
//!   `__Host-` prefix are configurable). The store keeps only the id's SHA-256, so reading
//!   the store yields no cookie anyone could send back.
//! - **Lazy**: a request that never touches its session costs the store nothing. Reading
//!   loads once (one round trip, which also pushes the idle expiry back, at most once per
//!   `touch_every`); writes are sent once, after the handler, and only if something changed
//!   (a second round trip).
//! - **Lifetimes**: an idle timeout (the store's TTL) and an absolute timeout, both enforced
//!   by the server whatever the cookie says.
//! - **Lifecycle**: [`Session::login`] records the user and issues a new id (the id sent
//!   before login stops working: fixation is useless; a session of another user is not
//!   carried over); [`Session::cycle_id`] does the same
//!   for other privilege changes; [`Session::destroy`] logs out;
//!   [`Session::log_out_everywhere`] ends every session of the user through a per-user
//!   index. A user has at most `max_sessions_per_user` sessions (default 64): a login past
//!   it ends the user's oldest, so logins in a loop cannot grow the store.
//! - **Concurrency**: changes merge per key. Two requests of one session that change
//!   different keys both keep their changes; for one key the last write wins;
//!   [`Session::increment`] adds atomically in the store and returns the stored result
//!   (50 concurrent increments add 50 and see 50 distinct values; integers are `i64` and
//!   saturate): it is the one change sent at once, in the round trip the layer would
//!   otherwise make after the handler. A write that arrives after its session ended
//!   (logged out, expired, or its id rotated by a concurrent login) is dropped, never
//!   written into a session brought back, and never silently: the response becomes a 409
//!   ([`SessionError::Ended`]) instead of the handler's, and the cookie is left as it is
//!   (a concurrent login may have just set a new one). Changes made through a clone of the handle after
//!   the handler returned (e.g. in a spawned task) are not written.
//! - **Bad input**: a missing, malformed, forged, unknown, expired or duplicated cookie is
//!   "no session", never an error (a duplicate can be planted from a sibling subdomain:
//!   use the `__Host-` prefix where it matters); a request that would make its session
//!   outgrow `max_bytes` is refused with [`SessionError::TooLarge`] (413), an insert or an
//!   increment alike. The cap is
//!   checked against the session as the request sees it, so concurrent requests that add
//!   different keys can together pass it.
//! - **Store down**: a handler that needs its session gets [`SessionError::Unavailable`]
//!   (503 with `Retry-After`); a request that does not touch it is unaffected; a write that
//!   fails after the handler turns the response into that 503.
//!
//! Stores: [`MemoryStore`] (this process) and, with `redis`, [`RedisSessionStore`].
//!
//! Metrics: `tower_scale.session.{loads,saves,created,destroyed,expired,store_errors}`
//! (counters; `expired` counts well-formed ids the store no longer knows); the Redis round
//! trips through the [backend](crate::redis).
//!
//! # Examples
//!
//! ```
//! use tower_scale::session::{MemoryStore, SessionLayer};
//!
//! let layer = SessionLayer::builder(MemoryStore::new())
//!     .host_prefix(true)
//!     .build()?;
//! # let _ = layer;
//! # Ok::<(), tower_scale::ConfigError>(())
//! ```

mod handle;
mod id;
mod layer;
#[cfg(feature = "redis")]
mod redis_store;
pub mod store;

pub use crate::cookie::SameSite;
pub use handle::{MAX_USER_BYTES, Session, SessionError};
pub use layer::{ResponseFuture, SessionLayer, SessionLayerBuilder, SessionManager};
#[cfg(feature = "redis")]
pub use redis_store::RedisSessionStore;
pub use store::MemoryStore;

/// Why a handler could not extract its [`Session`].
#[cfg(feature = "axum")]
#[derive(Debug, Clone, Copy)]
pub struct MissingSessionLayer;

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for MissingSessionLayer {
    fn into_response(self) -> axum::response::Response {
        crate::error::missing_layer(
            "no session: the route is not behind tower_scale::session::SessionLayer",
        )
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Session {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(MissingSessionLayer)
    }
}
