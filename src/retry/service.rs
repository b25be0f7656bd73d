//! [`RetryLayer`], its builder, the [`Retry`] service and its future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Method, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::body::ReplayBody;
use super::budget::RetryBudget;
use crate::BoxError;
use crate::ConfigError;
use crate::classify::{Class, Classify, HttpClassifier};
use crate::duration::micros;

/// The error of a [`Retry`]: the last attempt's error, or what stopped the attempts.
#[derive(Debug)]
#[non_exhaustive]
pub enum RetryError<E> {
    /// The inner service's error (of the last attempt).
    Inner(E),
    /// The overall deadline, or the last attempt's timeout, passed without an answer.
    TimedOut,
    /// The request body failed while it was read for replay.
    Body(BoxError),
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryError::Inner(e) => e.fmt(f),
            RetryError::TimedOut => f.write_str("no answer within the retry deadline"),
            RetryError::Body(e) => write!(f, "request body failed: {e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RetryError::Inner(e) => Some(e),
            RetryError::TimedOut => None,
            RetryError::Body(e) => Some(&**e),
        }
    }
}

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

pub(crate) struct Shared<C> {
    pub(crate) max_attempts: u32,
    pub(crate) base_us: u64,
    pub(crate) max_backoff_us: u64,
    pub(crate) deadline: Option<Duration>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) retry_after_cap: Duration,
    pub(crate) body_cap: u64,
    pub(crate) budget: RetryBudget,
    pub(crate) classifier: C,
    pub(crate) jitter: crate::hash::Jitter,
    pub(crate) retried: OnceLock<::metrics::Counter>,
    pub(crate) exhausted: OnceLock<::metrics::Counter>,
}

impl<C> Shared<C> {
    /// Full jitter: uniform in [0, min(max, base × 2^(retry − 1))].
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .base_us
            .saturating_mul(1u64 << (retry.saturating_sub(1)).min(40))
            .min(self.max_backoff_us);
        Duration::from_micros(self.jitter.up_to(ceiling))
    }

    pub(crate) fn count(&self, slot: &OnceLock<::metrics::Counter>, name: &'static str) {
        slot.get_or_init(|| ::metrics::counter!(name)).increment(1);
    }
}

/// Applies [`Retry`] to a service. Clones share the budget.
pub struct RetryLayer<C = HttpClassifier> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for RetryLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C> fmt::Debug for RetryLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("RetryLayer")
            .field("max_attempts", &s.max_attempts)
            .field("deadline", &s.deadline)
            .field("attempt_timeout", &s.attempt_timeout)
            .field("budget", &s.budget)
            .finish_non_exhaustive()
    }
}

impl<S, C> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Retry<S, C> {
        Retry {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl RetryLayer {
    /// A builder with the defaults: 3 attempts, backoff with full jitter from 25 ms up to
    /// 1 s, no deadline, no per-attempt timeout, `Retry-After` honoured up to 5 s, bodies
    /// replayed up to 64 KiB, and a budget of 20% of requests plus 10 per second.
    pub fn builder() -> RetryLayerBuilder {
        RetryLayerBuilder {
            max_attempts: 3,
            base: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            deadline: None,
            attempt_timeout: None,
            retry_after_cap: Duration::from_secs(5),
            body_cap: 64 * 1024,
            budget: None,
            classifier: HttpClassifier::default(),
        }
    }
}

/// Builds a [`RetryLayer`].
#[must_use]
#[derive(Debug)]
pub struct RetryLayerBuilder<C = HttpClassifier> {
    max_attempts: u32,
    base: Duration,
    max_backoff: Duration,
    deadline: Option<Duration>,
    attempt_timeout: Option<Duration>,
    retry_after_cap: Duration,
    body_cap: u64,
    budget: Option<RetryBudget>,
    classifier: C,
}

impl<C> RetryLayerBuilder<C> {
    /// Attempts in all, the first included (default 3; 1 disables retries).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Backoff before retry n is uniform in [0, min(`max`, `base` × 2^(n − 1))] (full
    /// jitter; default 25 ms and 1 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base = base;
        self.max_backoff = max;
        self
    }

    /// The whole call, every attempt and backoff included, ends by then (default: none). No
    /// retry starts that could not begin before it.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// One attempt may take this long (default: none); a timed-out attempt is retried like
    /// a failed one.
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = Some(d);
        self
    }

    /// A failed response's `Retry-After` (seconds or an HTTP date) is waited out if it is
    /// at most this (default 5 s); a longer one ends the retries there.
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// Request bodies up to this size are buffered so they can be sent again (default 64
    /// KiB); larger ones, and bodies of unknown size, are streamed once and not retried.
    pub fn body_cap(mut self, bytes: u64) -> Self {
        self.body_cap = bytes;
        self
    }

    /// The retry budget (default [`RetryBudget::default`]: 20% plus 10 per second over 10
    /// s). Pass one budget to several layers to share it.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// What a failure is (default [`HttpClassifier`]: 5xx and errors; 4xx are not retried).
    pub fn classifier<C2>(self, classifier: C2) -> RetryLayerBuilder<C2> {
        RetryLayerBuilder {
            max_attempts: self.max_attempts,
            base: self.base,
            max_backoff: self.max_backoff,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            retry_after_cap: self.retry_after_cap,
            body_cap: self.body_cap,
            budget: self.budget,
            classifier,
        }
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// Zero attempts, a zero backoff base or a maximum below it, a zero deadline or attempt
    /// timeout.
    pub fn build(self) -> Result<RetryLayer<C>, ConfigError> {
        Ok(RetryLayer {
            shared: Arc::new(self.shared()?),
        })
    }

    /// Validates the settings, for [`RetryAnyLayer`](super::RetryAnyLayer): retries for any
    /// service whose requests can be cloned (give it a classifier for its response and
    /// error types, e.g. [`ErrorIsFailure`](crate::classify::ErrorIsFailure)).
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    pub fn build_any(self) -> Result<super::RetryAnyLayer<C>, ConfigError> {
        Ok(super::RetryAnyLayer {
            shared: Arc::new(self.shared()?),
        })
    }

    fn shared(self) -> Result<Shared<C>, ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts", "must be at least 1"));
        }
        if self.base.is_zero()
            || self.max_backoff < self.base
            || self.max_backoff > Duration::from_secs(3600)
        {
            return Err(ConfigError::new(
                "backoff",
                "the base must be above zero, the maximum at least the base and at most 1 h",
            ));
        }
        if self.deadline.is_some_and(|d| d.is_zero())
            || self.attempt_timeout.is_some_and(|d| d.is_zero())
        {
            return Err(ConfigError::new(
                "deadline",
                "deadlines and timeouts must be longer than zero",
            ));
        }
        Ok(Shared {
            max_attempts: self.max_attempts,
            base_us: micros(self.base),
            max_backoff_us: micros(self.max_backoff),
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            retry_after_cap: self.retry_after_cap,
            body_cap: self.body_cap,
            budget: self.budget.unwrap_or_default(),
            classifier: self.classifier,
            jitter: crate::hash::Jitter::new(),
            retried: OnceLock::new(),
            exhausted: OnceLock::new(),
        })
    }
}

/// Retries failed calls of an HTTP service. Built by [`RetryLayer`].
pub struct Retry<S, C> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for Retry<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Retry<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// True for the methods that may be sent twice: GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl<S, B, RB, C> Service<Request<B>> for Retry<S, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    C: Classify<Response<RB>, S::Error>,
{
    type Response = Response<RB>;
    type Error = RetryError<S::Error>;
    type Future = ResponseFuture<S, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(RetryError::Inner)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &*self.shared;
        shared.budget.deposit();
        let retryable = shared.max_attempts > 1
            && (is_idempotent(req.method()) || req.headers().contains_key(IDEMPOTENCY_KEY));
        let started =
            (shared.deadline.is_some() || shared.attempt_timeout.is_some()).then(Instant::now);
        // The readiness `poll_ready` obtained belongs to `self.inner`: take it into the
        // future, leave a clone for the next request.
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let hint = req.body().size_hint();
        let (state, template) = if !retryable {
            let fut = svc.call(req.map(ReplayBody::stream));
            (State::calling(fut, attempt_timer(shared, started)), None)
        } else if req.body().is_end_stream() || hint.exact() == Some(0) {
            let (parts, _) = req.into_parts();
            let template = Box::new(Template {
                head: Request::from_parts(parts.clone(), ()),
                body: Bytes::new(),
            });
            let fut = svc.call(Request::from_parts(parts, ReplayBody::bytes(Bytes::new())));
            (
                State::calling(fut, attempt_timer(shared, started)),
                Some(template),
            )
        } else if hint.upper().is_some_and(|u| u <= shared.body_cap) {
            // The head waits in the template while the body is read into it.
            let (parts, body) = req.into_parts();
            (
                State::Buffering {
                    body: Box::pin(body),
                    buf: Vec::new(),
                    timer: deadline_timer(shared, started),
                },
                Some(Box::new(Template {
                    head: Request::from_parts(parts, ()),
                    body: Bytes::new(),
                })),
            )
        } else {
            // Too large, or of unknown size, to hold: sent once.
            let fut = svc.call(req.map(ReplayBody::stream));
            (State::calling(fut, attempt_timer(shared, started)), None)
        };
        ResponseFuture {
            svc,
            shared: Arc::clone(&self.shared),
            template,
            attempt: 1,
            started,
            state,
        }
    }
}

/// What a retry sends again. Boxed in the future: inline, its request head would make
/// every call's future (moved several times on its way to the executor) hundreds of bytes
/// larger.
struct Template {
    head: Request<()>,
    body: Bytes,
}

impl Template {
    fn request<B>(&self) -> Request<ReplayBody<B>> {
        self.head
            .clone()
            .map(|()| ReplayBody::bytes(self.body.clone()))
    }
}

/// The timer of the next attempt: its own timeout, or what is left of the deadline,
/// whichever ends first. `None` (no allocation) when neither is set.
/// The deadline's own timer, for the states with no attempt under way (buffering the
/// body, waiting for the inner service to be ready). `None` without a deadline.
pub(crate) fn deadline_timer<C>(
    shared: &Shared<C>,
    started: Option<Instant>,
) -> Option<Pin<Box<Sleep>>> {
    let end = shared
        .deadline
        .zip(started)
        .and_then(|(d, s)| s.checked_add(d))?;
    Some(Box::pin(tokio::time::sleep_until(end)))
}

/// `Pending`, unless `timer` has run out: then the call has timed out.
pub(crate) fn expired<T, E>(
    timer: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, RetryError<E>>> {
    if timer
        .as_mut()
        .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    {
        Poll::Ready(Err(RetryError::TimedOut))
    } else {
        Poll::Pending
    }
}

#[inline]
pub(crate) fn attempt_timer<C>(
    shared: &Shared<C>,
    started: Option<Instant>,
) -> Option<Pin<Box<Sleep>>> {
    let by_deadline = shared
        .deadline
        .zip(started)
        .and_then(|(d, s)| s.checked_add(d))
        .map(|end| end.saturating_duration_since(Instant::now()));
    let limit = match (shared.attempt_timeout, by_deadline) {
        (Some(a), Some(d)) => Some(a.min(d)),
        (a, d) => a.or(d),
    }?;
    Some(Box::pin(tokio::time::sleep(limit)))
}

pin_project! {
    #[project = StateProj]
    enum State<F, B>
    where
        B: Body,
    {
        // Boxed, as is the request of `Ready`: only bodies to buffer and retries use them,
        // and inline they would make every call's future larger.
        Buffering {
            body: Pin<Box<B>>,
            buf: Vec<u8>,
            timer: Option<Pin<Box<Sleep>>>,
        },
        Ready { req: Option<Box<Request<ReplayBody<B>>>>, timer: Option<Pin<Box<Sleep>>> },
        Calling { #[pin] fut: F, timer: Option<Pin<Box<Sleep>>> },
        Backoff { sleep: Pin<Box<Sleep>> },
    }
}

impl<F, B: Body> State<F, B> {
    fn calling(fut: F, timer: Option<Pin<Box<Sleep>>>) -> Self {
        State::Calling { fut, timer }
    }
}

pin_project! {
    /// Response future of [`Retry`].
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<Request<ReplayBody<B>>>,
        B: Body,
    {
        svc: S,
        shared: Arc<Shared<C>>,
        template: Option<Box<Template>>,
        attempt: u32,
        started: Option<Instant>,
        #[pin]
        state: State<S::Future, B>,
    }
}

impl<S, B, C> fmt::Debug for ResponseFuture<S, B, C>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Why an attempt failed, when it did.
pub(crate) enum Failed {
    /// A failure response; its `Retry-After`, if any.
    Status(Option<Duration>),
    Error,
    TimedOut,
}

/// `Retry-After` as seconds or as an HTTP date (a date in the past is "now"). Anything
/// else is ignored, and the backoff applies.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

impl<S, B, RB, C> Future for ResponseFuture<S, B, C>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<RB>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    C: Classify<Response<RB>, S::Error>,
{
    type Output = Result<Response<RB>, RetryError<S::Error>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Buffering { body, buf, timer } => {
                    // Read to the end, within the cap whatever the size hint said (trailers
                    // are not kept).
                    loop {
                        match body.as_mut().poll_frame(cx) {
                            Poll::Ready(Some(Ok(frame))) => {
                                if let Ok(data) = frame.into_data() {
                                    if (buf.len() + data.len()) as u64 > this.shared.body_cap {
                                        return Poll::Ready(Err(RetryError::Body(
                                            "request body is larger than its size hint said".into(),
                                        )));
                                    }
                                    buf.extend_from_slice(&data);
                                }
                            }
                            Poll::Ready(Some(Err(e))) => {
                                return Poll::Ready(Err(RetryError::Body(e.into())));
                            }
                            Poll::Ready(None) => break,
                            Poll::Pending => return expired(timer, cx),
                        }
                    }
                    let template = this.template.as_mut().expect("buffering has a template");
                    template.body = Bytes::from(std::mem::take(buf));
                    let req = template.request();
                    let timer = timer.take();
                    this.state.set(State::Ready {
                        req: Some(Box::new(req)),
                        timer,
                    });
                }
                StateProj::Ready { req, timer } => {
                    match this.svc.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(RetryError::Inner(e))),
                        Poll::Pending => return expired(timer, cx),
                    }
                    let req = req.take().expect("sent once");
                    let fut = this.svc.call(*req);
                    let timer = attempt_timer(this.shared, *this.started);
                    this.state.set(State::Calling { fut, timer });
                }
                StateProj::Calling { fut, timer } => {
                    let res = ready!(poll_attempt(fut, timer, cx));
                    let shared = &**this.shared;
                    let failed = match &res {
                        None => Failed::TimedOut,
                        Some(Ok(resp)) => {
                            #[cfg(feature = "circuit-breaker")]
                            if resp
                                .extensions()
                                .get::<crate::circuit_breaker::CircuitOpen>()
                                .is_some()
                            {
                                // The breaker refused: an answer, not a failure to retry.
                                return Poll::Ready(answer(res));
                            }
                            if shared.classifier.classify(Ok(resp)) == Class::Success {
                                return Poll::Ready(answer(res));
                            }
                            Failed::Status(retry_after(resp.headers()))
                        }
                        Some(Err(e)) => {
                            if shared.classifier.classify(Err(e)) == Class::Success {
                                return Poll::Ready(answer(res));
                            }
                            Failed::Error
                        }
                    };
                    let replayable = this.template.is_some();
                    match backoff(shared, replayable, this.attempt, *this.started, &failed) {
                        // The failed attempt (and its body) is dropped before the wait.
                        Some(sleep) => this.state.set(State::Backoff { sleep }),
                        None => return Poll::Ready(answer(res)),
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    let req = this
                        .template
                        .as_ref()
                        .expect("only replayable requests back off")
                        .request();
                    let timer = deadline_timer(this.shared, *this.started);
                    this.state.set(State::Ready {
                        req: Some(Box::new(req)),
                        timer,
                    });
                }
            }
        }
    }
}

/// Polls an attempt against its timer: `Ready(None)` if the timer ran out first.
#[inline]
pub(crate) fn poll_attempt<F: Future>(
    fut: Pin<&mut F>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<Option<F::Output>> {
    match fut.poll(cx) {
        Poll::Ready(res) => Poll::Ready(Some(res)),
        Poll::Pending
            if timer
                .as_mut()
                .is_some_and(|t| t.as_mut().poll(cx).is_ready()) =>
        {
            Poll::Ready(None)
        }
        Poll::Pending => Poll::Pending,
    }
}

/// The last attempt's result as the caller gets it (`None`: it timed out).
#[inline]
pub(crate) fn answer<T, E>(res: Option<Result<T, E>>) -> Result<T, RetryError<E>> {
    match res {
        Some(r) => r.map_err(RetryError::Inner),
        None => Err(RetryError::TimedOut),
    }
}

/// After a failed attempt: the wait before the next one (the attempt and the retry
/// counted), or `None` to stop and answer with this one.
pub(crate) fn backoff<C>(
    shared: &Shared<C>,
    replayable: bool,
    attempt: &mut u32,
    started: Option<Instant>,
    failed: &Failed,
) -> Option<Pin<Box<Sleep>>> {
    let delay = next_delay(shared, replayable, *attempt, started, failed)?;
    *attempt += 1;
    shared.count(&shared.retried, "tower_scale.retry.retries");
    Some(Box::pin(tokio::time::sleep(delay)))
}

/// How long to wait before the next attempt, or `None` to stop here.
fn next_delay<C>(
    shared: &Shared<C>,
    replayable: bool,
    attempt: u32,
    started: Option<Instant>,
    failed: &Failed,
) -> Option<Duration> {
    if !replayable || attempt >= shared.max_attempts {
        return None;
    }
    let delay = match failed {
        Failed::Status(Some(after)) if *after > shared.retry_after_cap => return None,
        Failed::Status(Some(after)) => *after,
        Failed::Status(None) | Failed::Error | Failed::TimedOut => shared.backoff(attempt),
    };
    if let (Some(d), Some(s)) = (shared.deadline, started)
        && let Some(end) = s.checked_add(d)
        && Instant::now()
            .checked_add(delay)
            .is_none_or(|resume| resume >= end)
    {
        return None;
    }
    if !shared.budget.withdraw() {
        shared.count(&shared.exhausted, "tower_scale.retry.budget_exhausted");
        tracing::debug!("retry budget spent; not retrying");
        return None;
    }
    Some(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The future every call returns is moved several times on its way to the executor:
    /// the request copy for a retry lives boxed so that it stays small (it was 560 bytes
    /// with the copy inline).
    #[test]
    fn the_response_future_stays_small() {
        type Body = http_body_util::Full<Bytes>;
        type Ready = std::future::Ready<Result<Response<Body>, std::convert::Infallible>>;
        type Svc = tower::util::ServiceFn<fn(Request<ReplayBody<Body>>) -> Ready>;
        let size = std::mem::size_of::<ResponseFuture<Svc, Body, HttpClassifier>>();
        eprintln!("retry response future: {size} bytes");
        assert!(size <= 320, "{size} bytes");
    }

    #[test]
    fn retry_after_forms() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::RETRY_AFTER, v.parse().unwrap());
            retry_after(&m)
        };
        assert_eq!(h("3"), Some(Duration::from_secs(3)));
        assert_eq!(h(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            h("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "past: now"
        );
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let d = h(&soon).unwrap();
        assert!(
            d > Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(h("-1"), None);
        assert_eq!(h("soon"), None);
        assert_eq!(retry_after(&http::HeaderMap::new()), None);
    }
}
