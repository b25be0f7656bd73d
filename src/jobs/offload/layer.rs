//! [`OffloadLayer`], its builder, and the worker handler that runs stored requests.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderName;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use tower_layer::Layer;
use tower_service::Service;

use super::service::Offload;
use super::stored::{OffloadedRequest, StoredResponse};
use crate::jobs::{JobContext, JobId, Queue};
use crate::key::RequestRef;
use crate::{BoxError, ConfigError};

type When = dyn Fn(RequestRef<'_>) -> bool + Send + Sync;

/// Stores matched requests as jobs and answers `202 Accepted` at once; serves each job's
/// status, then its response, at `{status_path}/{id}`. See the [module docs](super).
#[derive(Clone)]
pub struct OffloadLayer {
    pub(crate) settings: Arc<Settings>,
}

pub(crate) struct Settings {
    pub(crate) queue: Queue<OffloadedRequest>,
    pub(crate) when: Option<Box<When>>,
    pub(crate) prefer: bool,
    /// The status resources' prefix, with its trailing `/`.
    pub(crate) status_prefix: String,
    pub(crate) max_body: usize,
    pub(crate) max_response: usize,
    pub(crate) headers: Vec<HeaderName>,
    pub(crate) retry_after: u32,
}

impl fmt::Debug for OffloadLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        f.debug_struct("OffloadLayer")
            .field("queue", &s.queue)
            .field("status_prefix", &s.status_prefix)
            .field("honours_prefer", &s.prefer)
            .field("max_body", &s.max_body)
            .field("max_response", &s.max_response)
            .field("headers", &s.headers)
            .finish_non_exhaustive()
    }
}

/// Builds an [`OffloadLayer`].
#[must_use]
pub struct OffloadLayerBuilder {
    queue: Queue<OffloadedRequest>,
    when: Option<Box<When>>,
    prefer: bool,
    status_path: String,
    max_body: usize,
    max_response: usize,
    headers: Vec<HeaderName>,
    retry_after: u32,
}

impl fmt::Debug for OffloadLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OffloadLayerBuilder")
            .field("queue", &self.queue)
            .field("status_path", &self.status_path)
            .finish_non_exhaustive()
    }
}

/// In the extensions of a request a worker runs: the job it belongs to. The layer passes
/// such a request through, so running it never offloads it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offloaded {
    /// The job.
    pub job: JobId,
}

/// The future of the worker handler [`OffloadLayer::handler`] returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<StoredResponse, String>> + Send>>;

impl OffloadLayer {
    /// Starts a builder that stores requests on `queue`.
    pub fn builder(queue: Queue<OffloadedRequest>) -> OffloadLayerBuilder {
        OffloadLayerBuilder {
            queue,
            when: None,
            prefer: true,
            status_path: "/jobs".into(),
            max_body: 64 * 1024,
            max_response: 1024 * 1024,
            headers: vec![
                http::header::CONTENT_TYPE,
                http::header::ACCEPT,
                http::header::ACCEPT_LANGUAGE,
            ],
            retry_after: 1,
        }
    }

    /// The queue requests are stored on: give it to a [`Worker`](crate::jobs::Worker)
    /// with [`handler`](Self::handler).
    pub fn queue(&self) -> &Queue<OffloadedRequest> {
        &self.settings.queue
    }

    /// The job handler that runs a stored request through `inner` (the service this layer
    /// wraps, or an equivalent one) and keeps its response, up to the response cap, as
    /// the job's result. An error from `inner`, or a body that fails while it is read,
    /// fails the attempt (retried after the worker's backoff); any response, whatever its
    /// status, is the result, and one over the cap is kept as a `502` saying so (the
    /// request is not run again).
    ///
    /// ```
    /// # use tower_scale::jobs::offload::{OffloadLayer, OffloadedRequest};
    /// # use tower_scale::jobs::{MemoryJobStore, Queue, Worker};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let queue: Queue<OffloadedRequest> =
    ///     Queue::builder("http").store(MemoryJobStore::new()).build()?;
    /// let offload = OffloadLayer::builder(queue).build()?;
    /// let app = axum::Router::new().route("/report", axum::routing::post(|| async { "done" }));
    /// let workers = Worker::builder(offload.queue().clone()).spawn(offload.handler(app.clone()));
    /// let app = app.layer(offload);
    /// # drop((app, workers)); Ok(()) }
    /// ```
    pub fn handler<W, B>(
        &self,
        inner: W,
    ) -> impl Fn(JobContext<OffloadedRequest>) -> HandlerFuture + Send + Sync + 'static
    where
        W: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        W::Future: Send,
        W::Error: fmt::Display,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let max = self.settings.max_response;
        move |job: JobContext<OffloadedRequest>| -> HandlerFuture {
            let mut svc = inner.clone();
            Box::pin(async move {
                let req = job
                    .payload()
                    .to_request()
                    .map_err(|e| format!("the stored request is damaged: {e}"))?;
                let mut req = req.map(Full::new);
                req.extensions_mut().insert(Offloaded {
                    job: job.id().clone(),
                });
                std::future::poll_fn(|cx| svc.poll_ready(cx))
                    .await
                    .map_err(|e| format!("the service is not ready: {e}"))?;
                let res = svc
                    .call(req)
                    .await
                    .map_err(|e| format!("the service failed: {e}"))?;
                let (parts, body) = res.into_parts();
                match Limited::new(body, max).collect().await {
                    Ok(body) => Ok(StoredResponse::new(&parts, &body.to_bytes())),
                    // The request ran: running it again would not make its answer smaller.
                    // The client gets a 502 saying so, once.
                    Err(e)
                        if e.downcast_ref::<http_body_util::LengthLimitError>()
                            .is_some() =>
                    {
                        Ok(StoredResponse::too_large(max))
                    }
                    Err(e) => Err(format!("the response body could not be read: {e}")),
                }
            })
        }
    }
}

impl OffloadLayerBuilder {
    /// Offloads the requests `f` matches (default: none; only those that send
    /// `Prefer: respond-async`).
    pub fn when(mut self, f: impl Fn(RequestRef<'_>) -> bool + Send + Sync + 'static) -> Self {
        self.when = Some(Box::new(f));
        self
    }

    /// Whether a request with `Prefer: respond-async` (RFC 7240) is offloaded whether or
    /// not [`when`](Self::when) matches it (default true).
    pub fn honour_prefer(mut self, on: bool) -> Self {
        self.prefer = on;
        self
    }

    /// Where the status resources live: `GET {path}/{job}` (default `/jobs`).
    pub fn status_path(mut self, path: impl Into<String>) -> Self {
        self.status_path = path.into();
        self
    }

    /// The largest request body stored (default 64 KiB); a larger one is answered 413.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The largest response body kept (default 1 MiB); a larger one fails the job.
    pub fn max_response(mut self, bytes: usize) -> Self {
        self.max_response = bytes;
        self
    }

    /// Also stores this request header (the default keeps `Content-Type`, `Accept` and
    /// `Accept-Language`). Stored headers sit in the job store until the retention ends:
    /// add `Authorization` or `Cookie` only if the inner service needs them and the store
    /// may hold credentials.
    pub fn keep_header(mut self, name: HeaderName) -> Self {
        if !self.headers.contains(&name) {
            self.headers.push(name);
        }
        self
    }

    /// The `Retry-After` (seconds) of the 202 and of a pending status (default 1).
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = secs;
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a status path that is not `/` followed by a path without a
    /// trailing `/`, `?` or `#`.
    pub fn build(self) -> Result<OffloadLayer, ConfigError> {
        let p = &self.status_path;
        if !p.starts_with('/')
            || p.len() < 2
            || p.ends_with('/')
            || p.contains(['?', '#'])
            || p.parse::<http::Uri>().is_err()
        {
            return Err(ConfigError::new(
                "status_path",
                format!("`{p}`: use an absolute path such as /jobs, without a trailing slash"),
            ));
        }
        Ok(OffloadLayer {
            settings: Arc::new(Settings {
                status_prefix: format!("{p}/"),
                queue: self.queue,
                when: self.when,
                prefer: self.prefer,
                max_body: self.max_body,
                max_response: self.max_response,
                headers: self.headers,
                retry_after: self.retry_after,
            }),
        })
    }
}

impl<S> Layer<S> for OffloadLayer {
    type Service = Offload<S>;

    fn layer(&self, inner: S) -> Offload<S> {
        Offload {
            inner,
            settings: Arc::clone(&self.settings),
        }
    }
}
