//! [`Session`]: a request's session, loaded on first use.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::id::{RawCookies, SessionId};
use super::layer::Shared;
use super::store::{Op, Record};
use crate::StoreUnavailable;

/// The longest user name [`Session::login`] takes, in bytes: 64 characters of any script
/// (four bytes each at most in UTF-8).
pub const MAX_USER_BYTES: usize = 256;

/// What went wrong with a session.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionError {
    /// The store did not answer (Redis down or slow): answer 503.
    Unavailable(StoreUnavailable),
    /// The session would exceed the configured size cap: answer 413.
    TooLarge {
        /// The cap, in bytes.
        max: usize,
    },
    /// A key that is empty, longer than 128 bytes, or starts with `$` (reserved): a bug
    /// in the caller, answered 500.
    BadKey(String),
    /// A user name [`Session::login`] cannot take: empty, longer than [`MAX_USER_BYTES`],
    /// or holding a control character. Usually the client's input: answered 400.
    BadUser(String),
    /// A value that does not (de)serialise as JSON.
    Json(serde_json::Error),
    /// The session ended while this request ran (logged out elsewhere, expired, or its id
    /// rotated by a concurrent login), so a change that must reach the store at once
    /// ([`Session::increment`]) could not: answered 409, and the cookie is cleared.
    Ended,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Unavailable(e) => write!(f, "session store unavailable: {e}"),
            SessionError::TooLarge { max } => {
                write!(f, "session would exceed its size cap of {max} bytes")
            }
            SessionError::BadKey(k) => write!(
                f,
                "session key {k:?} is not allowed (1 to 128 bytes, not starting with `$`)"
            ),
            SessionError::BadUser(u) => write!(
                f,
                "user name {u:?} is not allowed (1 to {MAX_USER_BYTES} bytes, no control characters)"
            ),
            SessionError::Json(e) => write!(f, "session value is not valid JSON: {e}"),
            SessionError::Ended => f.write_str("the session ended while this request ran"),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Unavailable(e) => Some(e),
            SessionError::Json(e) => Some(e),
            _ => None,
        }
    }
}

impl SessionError {
    /// The status to answer with: 503, 413, 409, 400 or 500.
    pub fn status(&self) -> http::StatusCode {
        match self {
            SessionError::Ended => http::StatusCode::CONFLICT,
            SessionError::BadUser(_) => http::StatusCode::BAD_REQUEST,
            SessionError::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            SessionError::TooLarge { .. } => http::StatusCode::PAYLOAD_TOO_LARGE,
            SessionError::BadKey(_) | SessionError::Json(_) => {
                http::StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl SessionError {
    /// What to tell the client: a fixed message per kind (the store's own error text, which
    /// can name hosts or scripts, goes to logs, not to clients).
    pub fn public_message(&self) -> &'static str {
        match self {
            SessionError::Unavailable(_) => "session store unavailable; try again shortly",
            SessionError::TooLarge { .. } => "session too large",
            SessionError::BadUser(_) => {
                "user name not accepted: 1 to 256 bytes of UTF-8, no control characters"
            }
            SessionError::Ended => {
                "the session ended or changed during this request; its changes were not saved"
            }
            SessionError::BadKey(_) | SessionError::Json(_) => "session error",
        }
    }

    /// Logs the error at DEBUG: a store failure was logged at WARN where it happened (at
    /// most once every 10 s per layer, with how many were not logged).
    pub(crate) fn log(&self, what: &'static str) {
        tracing::debug!(error = %self, "{what}");
    }

    /// The answer for this error: its status and `{"error": "<public message>"}`, with
    /// `Retry-After: 1` when the store is down.
    pub(crate) fn response(&self) -> http::Response<bytes::Bytes> {
        let retry = matches!(self, SessionError::Unavailable(_))
            .then_some(std::time::Duration::from_secs(1));
        crate::refusal::json(self.status(), self.public_message(), retry)
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for SessionError {
    fn into_response(self) -> axum::response::Response {
        self.log("session error");
        self.response().map(axum::body::Body::from)
    }
}

/// The request's session. Cheap to clone; clones are the same session. Nothing is read
/// from the store until a method needs it, and nothing is written unless something
/// changed; the layer writes once, after the handler, and sets the cookie.
#[derive(Clone)]
pub struct Session {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The layer's settings and store, behind one reference count.
    pub(crate) shared: Arc<Shared>,
    /// Set by anything that will need a write: the layer's fast check after the handler.
    pub(crate) dirty: AtomicBool,
    /// The request's cookies, read for the id on first use and kept as long as the handle
    /// (for a request read by hyper, a reference count on its read buffer).
    raw: RawCookies,
    /// The state, made on first use: a request that never touches its session builds no
    /// state and reads no id. The lock itself is part of the handle's one allocation.
    ///
    /// futures-util's asynchronous lock, not tokio's: uncontended (the usual case: one
    /// handler, one extractor at a time) taking and giving it back is one atomic operation
    /// each, where tokio's also locked its list of waiters on every release. It is not
    /// fair (a task that finds it free may take it before one woken to take it), which
    /// matters only to uses of one request's handle that keep it busy from several tasks.
    state: futures_util::lock::Mutex<Option<State>>,
}

/// The state behind a [`Session`], locked.
pub(crate) type StateGuard<'a> = futures_util::lock::MappedMutexGuard<'a, Option<State>, State>;

impl Inner {
    /// Locks the state, making it on first use (reading the id out of the cookies).
    pub(crate) async fn state(&self) -> StateGuard<'_> {
        let guard = match self.state.try_lock() {
            Some(guard) => guard,
            None => self.state.lock().await,
        };
        futures_util::lock::MutexGuard::map(guard, |s| {
            s.get_or_insert_with(|| State::new(self.raw.id(self.shared.config.cookie.name())))
        })
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

pub(crate) struct State {
    /// The id the client sent, if well formed.
    pub(crate) sent: Option<SessionId>,
    /// `None` until loaded; then the values and owner (empty for no session).
    pub(crate) loaded: Option<Loaded>,
    /// The id to answer with, if it differs from the one sent (new or cycled).
    pub(crate) new_id: Option<SessionId>,
    pub(crate) ops: Vec<Op>,
    pub(crate) user: Option<String>,
    pub(crate) destroy: bool,
    pub(crate) log_out_everywhere: bool,
    /// A login by a different user: the old session ends, a new one starts.
    pub(crate) replace_old: bool,
    /// An id written to the store during the request (by an early write), for the cookie.
    pub(crate) issued: Option<SessionId>,
    /// An early write found the session gone: the cookie is cleared, nothing more written.
    pub(crate) ended: bool,
}

impl State {
    fn new(sent: Option<SessionId>) -> Self {
        State {
            sent,
            loaded: None,
            new_id: None,
            ops: Vec::new(),
            user: None,
            destroy: false,
            log_out_everywhere: false,
            replace_old: false,
            issued: None,
            ended: false,
        }
    }
}

pub(crate) struct Loaded {
    /// True if the store had a session for the id sent.
    pub(crate) existed: bool,
    /// The values and owner; `None` for no session. Shared with an in-process store until
    /// the request changes it (then copied: the store's own copy changes only when the
    /// layer writes).
    record: Option<Arc<Record>>,
    pub(crate) bytes: usize,
}

impl Loaded {
    fn value(&self, key: &str) -> Option<&String> {
        self.record.as_ref()?.values.get(key)
    }

    pub(crate) fn user(&self) -> Option<&str> {
        self.record.as_ref()?.user.as_deref()
    }

    fn values_mut(&mut self) -> &mut super::store::Values {
        &mut self.record_mut().values
    }

    pub(crate) fn record_mut(&mut self) -> &mut Record {
        Arc::make_mut(self.record.get_or_insert_with(Default::default))
    }
}

/// How many characters `n` takes in decimal (its JSON form).
fn decimal_len(n: i64) -> usize {
    let digits = n
        .unsigned_abs()
        .checked_ilog10()
        .map_or(1, |d| d as usize + 1);
    digits + usize::from(n < 0)
}

fn check_key(key: &str) -> Result<(), SessionError> {
    if key.is_empty() || key.len() > 128 || key.starts_with('$') {
        return Err(SessionError::BadKey(key.to_owned()));
    }
    Ok(())
}

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, raw: RawCookies) -> Self {
        Session {
            inner: Arc::new(Inner {
                shared,
                dirty: AtomicBool::new(false),
                raw,
                state: futures_util::lock::Mutex::new(None),
            }),
        }
    }

    /// True once anything read or changed this session during the request (or uses it
    /// right now): a response made then may hold the user's own data. The response cache
    /// asks, so as not to share it.
    #[cfg(feature = "cache")]
    pub(crate) fn was_used(&self) -> bool {
        self.inner.state.try_lock().is_none_or(|s| s.is_some())
    }

    async fn loaded(&self) -> Result<StateGuard<'_>, SessionError> {
        let mut s = self.inner.state().await;
        if s.loaded.is_none() {
            let record = match &s.sent {
                Some(id) => {
                    let key = id.storage_key_digits();
                    let (key, shared) = (key.as_str(), &self.inner.shared);
                    let life = shared.config.life;
                    let store = &shared.store;
                    let answer = match store.load_shared(key, life) {
                        Some(answer) => answer,
                        None => match store.load_now(key, life) {
                            Some(answer) => answer.map(|r| r.map(Arc::new)),
                            None => store.load(key, life).await.map(|r| r.map(Arc::new)),
                        },
                    };
                    answer.map_err(|e| shared.unavailable(e))?
                }
                None => None,
            };
            self.inner.shared.count_load();
            let existed = record.is_some();
            if s.sent.is_some() && !existed {
                // A well-formed id the store does not know: expired, or never issued.
                ::metrics::counter!("tower_scale.session.expired").increment(1);
            }
            let bytes = record
                .as_ref()
                .map_or(0, |r| r.values.iter().map(|(k, v)| k.len() + v.len()).sum());
            s.loaded = Some(Loaded {
                existed,
                record,
                bytes,
            });
        }
        Ok(s)
    }

    /// True if the request came with a session the store knows (loads it).
    ///
    /// # Errors
    ///
    /// [`SessionError::Unavailable`] if the store cannot be read.
    pub async fn exists(&self) -> Result<bool, SessionError> {
        let s = self.loaded().await?;
        Ok(s.loaded.as_ref().is_some_and(|l| l.existed) && !s.destroy)
    }

    /// The value under `key`, if any.
    ///
    /// # Errors
    ///
    /// The store cannot be read, the key is not allowed, or the value is not a `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        check_key(key)?;
        let s = self.loaded().await?;
        match s.loaded.as_ref().and_then(|l| l.value(key)) {
            Some(v) => serde_json::from_str(v)
                .map(Some)
                .map_err(SessionError::Json),
            None => Ok(None),
        }
    }

    /// Sets `key` (creating the session if there is none).
    ///
    /// # Errors
    ///
    /// The store cannot be read, the key is not allowed, the value does not serialise, or
    /// the session would exceed its size cap.
    pub async fn insert<T: Serialize>(&self, key: &str, value: &T) -> Result<(), SessionError> {
        check_key(key)?;
        let json = serde_json::to_string(value).map_err(SessionError::Json)?;
        let mut s = self.loaded().await?;
        let max = self.inner.shared.config.max_bytes;
        let l = s.loaded.as_mut().expect("loaded");
        let old = l.value(key).map_or(0, |v| key.len() + v.len());
        let bytes = l.bytes - old + key.len() + json.len();
        if bytes > max {
            return Err(SessionError::TooLarge { max });
        }
        l.bytes = bytes;
        l.values_mut().insert(key.to_owned(), json.clone());
        s.ops.push(Op::Set(key.to_owned(), json));
        self.ensure_id(&mut s);
        Ok(())
    }

    /// Adds `by` to the integer under `key` (0 if absent), atomically in the store, and
    /// returns the stored result: 50 concurrent requests each adding 1 add 50 and see 50
    /// distinct values. Integers are `i64` and saturate.
    ///
    /// This is the one change that does not wait for the end of the request: it is sent
    /// at once, together with whatever the request changed before it (one round trip, in
    /// place of the one the layer would make after the handler).
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert), and [`SessionError::Ended`] if the session ended while
    /// the request ran. A value that is not an integer counts as 0.
    pub async fn increment(&self, key: &str, by: i64) -> Result<i64, SessionError> {
        check_key(key)?;
        let mut s = self.loaded().await?;
        if s.destroy || s.ended {
            return Err(SessionError::Ended);
        }
        // The cap, checked as for `insert`, against the value this request expects: the
        // stored one may differ by what concurrent increments added, and the size is set
        // from the stored result below.
        let max = self.inner.shared.config.max_bytes;
        let l = s.loaded.as_ref().expect("loaded");
        let current = l.value(key);
        let expected = current
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
            .saturating_add(by);
        let old = current.map_or(0, |v| key.len() + v.len());
        if l.bytes - old + key.len() + decimal_len(expected) > max {
            return Err(SessionError::TooLarge { max });
        }
        let before = s.ops.clone();
        s.ops.push(Op::Increment(key.to_owned(), by));
        self.ensure_id(&mut s);
        let saved = match super::layer::write(&self.inner.shared, &mut s).await {
            Ok(Some(saved)) if saved.applied => saved,
            Ok(_) => return Err(SessionError::Ended),
            Err(e) => {
                // Not written: the earlier changes stay for the layer's write after the
                // handler; the increment, which the caller saw fail, does not.
                s.ops = before;
                return Err(e);
            }
        };
        let Some(&next) = saved.counts.last() else {
            return Err(SessionError::Ended);
        };
        let l = s.loaded.as_mut().expect("loaded");
        let json = next.to_string();
        let old = l.value(key).map_or(0, |v| key.len() + v.len());
        l.bytes = l.bytes - old + key.len() + json.len();
        l.values_mut().insert(key.to_owned(), json);
        Ok(next)
    }

    /// Removes `key`.
    ///
    /// # Errors
    ///
    /// The store cannot be read or the key is not allowed.
    pub async fn remove(&self, key: &str) -> Result<(), SessionError> {
        check_key(key)?;
        let mut s = self.loaded().await?;
        let l = s.loaded.as_mut().expect("loaded");
        if l.value(key).is_some()
            && let Some(v) = l.values_mut().remove(key)
        {
            l.bytes -= key.len() + v.len();
            s.ops.push(Op::Remove(key.to_owned()));
            self.mark();
        }
        Ok(())
    }

    /// The user this session belongs to, if it is logged in.
    ///
    /// # Errors
    ///
    /// The store cannot be read.
    pub async fn user(&self) -> Result<Option<String>, SessionError> {
        let s = self.loaded().await?;
        Ok(s.user
            .clone()
            .or_else(|| s.loaded.as_ref().and_then(|l| l.user().map(str::to_owned))))
    }

    /// Logs `user` in: records the owner (for [`log_out_everywhere`]) and gives the session
    /// a new id, so an id planted before login (fixation) is worthless after it. If the
    /// session belonged to another user, it is not carried over: that session ends and a
    /// fresh one starts, with nothing of the other user's in it.
    ///
    /// [`log_out_everywhere`]: Self::log_out_everywhere
    ///
    /// # Errors
    ///
    /// The store cannot be read, or `user` is empty, longer than [`MAX_USER_BYTES`] or
    /// holds a control character ([`SessionError::BadUser`], status 400).
    pub async fn login(&self, user: &str) -> Result<(), SessionError> {
        if user.is_empty() || user.len() > MAX_USER_BYTES || user.chars().any(char::is_control) {
            return Err(SessionError::BadUser(user.to_owned()));
        }
        let mut s = self.loaded().await?;
        let other = s
            .loaded
            .as_ref()
            .and_then(Loaded::user)
            .is_some_and(|u| u != user);
        if other {
            let l = s.loaded.as_mut().expect("loaded");
            l.values_mut().clear();
            l.bytes = 0;
            l.existed = false;
            s.ops.clear();
            s.replace_old = true;
        }
        s.user = Some(user.to_owned());
        s.new_id = Some(self.next_id(&s));
        self.mark();
        Ok(())
    }

    /// Gives the session a new id, keeping its values; the old id stops working. Call it
    /// on every privilege change.
    ///
    /// # Errors
    ///
    /// The store cannot be read.
    pub async fn cycle_id(&self) -> Result<(), SessionError> {
        let mut s = self.loaded().await?;
        s.new_id = Some(self.next_id(&s));
        self.mark();
        Ok(())
    }

    /// Ends the session (logout): the store forgets it and the cookie is cleared.
    pub async fn destroy(&self) {
        let mut s = self.inner.state().await;
        s.destroy = true;
        self.mark();
    }

    /// Ends every session of this session's user, this one included.
    ///
    /// # Errors
    ///
    /// The store cannot be read.
    pub async fn log_out_everywhere(&self) -> Result<(), SessionError> {
        let mut s = self.loaded().await?;
        s.log_out_everywhere = true;
        s.destroy = true;
        self.mark();
        Ok(())
    }

    /// The id a login or `cycle_id` gives: for a session that exists, cycled from the
    /// current one (the store renames it within one slot); else a fresh one.
    fn next_id(&self, s: &State) -> SessionId {
        let current = s.new_id.as_ref().or(s.sent.as_ref());
        match current {
            Some(id) if s.loaded.as_ref().is_some_and(|l| l.existed) => id.cycled(),
            _ => SessionId::random(),
        }
    }

    fn ensure_id(&self, s: &mut State) {
        let existed = s.loaded.as_ref().is_some_and(|l| l.existed);
        if !existed && s.new_id.is_none() {
            s.new_id = Some(SessionId::random());
        }
        self.mark();
    }

    fn mark(&self) {
        self.inner.dirty.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    /// A request allocates one handle, its state inside it (uninitialised until first use):
    /// one allocation whether or not the session is read. The size stays within what the
    /// allocator's per-thread cache serves without a lock (glibc's tcache: up to 1,032
    /// bytes), so one larger block costs what a small one did, and a read saves the
    /// second allocation the state used to take.
    #[test]
    fn the_handle_is_one_small_allocation() {
        let size = std::mem::size_of::<super::Inner>();
        eprintln!("session handle: {size} bytes, plus the reference counts");
        assert!(size <= 512, "{size} bytes");
    }
}
