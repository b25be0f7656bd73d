//! [`Offload`]: the service the layer builds, and its response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use serde_json::json;
use tower_service::Service;

use super::layer::{Offloaded, Settings};
use super::stored::{OffloadedRequest, StoredResponse};
use crate::BoxError;
use crate::jobs::{Enqueue, JobError, JobId, JobState};
use crate::key::RequestRef;

/// The response body: the inner service's, or one the layer wrote.
pub type OffloadBody<B> = Either<B, Full<Bytes>>;

/// The service of an [`OffloadLayer`](super::OffloadLayer).
#[derive(Clone)]
pub struct Offload<S> {
    pub(crate) inner: S,
    pub(crate) settings: Arc<Settings>,
}

impl<S> fmt::Debug for Offload<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offload")
            .field("status_prefix", &self.settings.status_prefix)
            .finish_non_exhaustive()
    }
}

type Own = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

pin_project! {
    /// The response future of [`Offload`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = Proj]
    enum Kind<F> {
        // Passed through to the inner service.
        Inner { #[pin] fut: F },
        // Answered by the layer: a 202, a status, a stored response or a refusal.
        Own { fut: Own },
    }
}

impl<F> ResponseFuture<F> {
    fn inner(fut: F) -> Self {
        Self {
            kind: Kind::Inner { fut },
        }
    }

    fn own(fut: impl Future<Output = Response<Full<Bytes>>> + Send + 'static) -> Self {
        Self {
            kind: Kind::Own { fut: Box::pin(fut) },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<OffloadBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            Proj::Inner { fut } => Poll::Ready(ready!(fut.poll(cx)).map(|r| r.map(Either::Left))),
            Proj::Own { fut } => Poll::Ready(Ok(ready!(fut.as_mut().poll(cx)).map(Either::Right))),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Offload<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<OffloadBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let s = &self.settings;
        if req.extensions().get::<Offloaded>().is_some() {
            return ResponseFuture::inner(self.inner.call(req));
        }
        if req.method() == Method::GET
            && let Some(id) = req.uri().path().strip_prefix(s.status_prefix.as_str())
        {
            let id = JobId::parse(id);
            return ResponseFuture::own(status(Arc::clone(s), id));
        }
        let prefer = s.prefer && prefers_async(req.headers());
        if prefer || s.when.as_ref().is_some_and(|f| f(RequestRef::from(&req))) {
            return ResponseFuture::own(offload(Arc::clone(s), req, prefer));
        }
        ResponseFuture::inner(self.inner.call(req))
    }
}

/// `Prefer: respond-async` among the request's preferences (RFC 7240: comma-separated,
/// each with optional `;`-parameters, names case-insensitive).
fn prefers_async(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::HeaderName::from_static("prefer"))
        .iter()
        .any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',').any(|p| {
                    let name = p.split([';', '=']).next().unwrap_or("").trim();
                    name.eq_ignore_ascii_case("respond-async")
                })
            })
        })
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// A refusal: `{"error": ...}`, as every layer of the crate answers them.
fn error(status: StatusCode, message: impl fmt::Display) -> Response<Full<Bytes>> {
    crate::refusal::json(status, &message.to_string(), None).map(Full::new)
}

fn unavailable(e: &JobError) -> Response<Full<Bytes>> {
    tracing::warn!(error = %e, "offload queue unavailable");
    crate::refusal::json(
        StatusCode::SERVICE_UNAVAILABLE,
        "the job queue is unavailable; try again shortly",
        Some(std::time::Duration::from_secs(1)),
    )
    .map(Full::new)
}

async fn offload<B>(s: Arc<Settings>, req: Request<B>, prefer: bool) -> Response<Full<Bytes>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, s.max_body).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format_args!("a request run later may carry at most {} bytes", s.max_body),
            );
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format_args!("the request body could not be read: {e}"),
            );
        }
    };
    let mut options = Enqueue::new();
    if let Some(key) = parts.headers.get("idempotency-key") {
        // One key per method and path: the same key sent to another route is another job.
        let key = key
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 200);
        let Some(key) = key else {
            return error(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1..=200 visible ASCII characters",
            );
        };
        // Hashed: a fixed length whatever the method and path, and a key sent to another
        // route (or method) is another job.
        let scoped = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            for part in [parts.method.as_str(), parts.uri.path(), key] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
            crate::hex::encode(&h.finalize())
        };
        options = options.idempotency_key(scoped);
    }
    let stored = OffloadedRequest::new(&parts, &s.headers, &body);
    let id = match s.queue.enqueue_with(&stored, options).await {
        Ok(e) => e.id,
        Err(JobError::TooLarge { limit, .. }) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format_args!("the stored request would exceed the queue's {limit} bytes"),
            );
        }
        Err(e @ JobError::Store(_)) => return unavailable(&e),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    super::super::metrics::offloaded(s.queue.name());
    let location = format!("{}{id}", s.status_prefix);
    let mut res = json_response(
        StatusCode::ACCEPTED,
        json!({ "job": id.as_str(), "status": location }),
    );
    let h = res.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("a validated path and hex digits"),
    );
    h.insert(header::RETRY_AFTER, HeaderValue::from(s.retry_after));
    if prefer {
        h.insert(
            header::HeaderName::from_static("preference-applied"),
            HeaderValue::from_static("respond-async"),
        );
    }
    res
}

async fn status(s: Arc<Settings>, id: Option<JobId>) -> Response<Full<Bytes>> {
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            "no such job: unknown, or finished longer ago than its retention",
        )
    };
    let Some(id) = id else { return not_found() };
    let st = match s.queue.status(&id).await {
        Ok(Some(st)) => st,
        Ok(None) => return not_found(),
        Err(e) => return unavailable(&e),
    };
    match st.state {
        JobState::Succeeded => {
            let stored = st
                .result_as::<StoredResponse>()
                .map_err(|e| e.to_string())
                .and_then(|r| r.to_response());
            match stored {
                Ok(res) => res.map(Full::new),
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "stored response unreadable");
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the job's stored response is unreadable",
                    )
                }
            }
        }
        JobState::Dead => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({
                "error": format!("the request failed on each of its {} attempts", st.attempts),
                "job": id.as_str(),
                "state": "dead",
                "last_error": st.error,
            }),
        ),
        state => {
            let mut body = json!({
                "job": id.as_str(),
                "state": state.as_str(),
                "progress": st.progress.unwrap_or(0),
                "attempts": st.attempts,
            });
            if let Some(e) = st.error {
                body["last_error"] = json!(e);
            }
            let mut res = json_response(StatusCode::ACCEPTED, body);
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s.retry_after));
            res
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefers_async;

    #[test]
    fn prefer_is_read_as_rfc_7240_says() {
        let has = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("prefer", v.parse().unwrap());
            prefers_async(&h)
        };
        assert!(has("respond-async"));
        assert!(has("Respond-Async"));
        assert!(has("wait=10, respond-async"));
        assert!(has("respond-async; foo=bar"));
        assert!(!has("return=minimal"));
        assert!(!has("respond-asyncx"));
        assert!(!has("x-respond-async"));
    }
}
