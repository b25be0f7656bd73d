//! The response future of [`RateLimit`](super::RateLimit).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response};
use pin_project_lite::pin_project;

/// What happens to the response once the decision is known.
pub(crate) enum Post {
    /// Nothing: pass the inner response through.
    Nothing,
    /// Add these headers to the inner response.
    Headers(Box<[(HeaderName, HeaderValue)]>),
    /// Refused: answer with this instead.
    Refuse(Box<Response<Bytes>>),
}

type Deciding<O> = Pin<Box<dyn Future<Output = (Option<O>, Post)> + Send>>;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<F, O> {
        #[pin]
        state: State<F, O>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, O> {
        // Decided in `call` (in-process store): the inner call is under way.
        Calling { #[pin] fut: F, post: Post },
        // Waiting for the store (Redis); the inner call follows in the same boxed future.
        Deciding { fut: Deciding<O> },
        // Refused in `call`.
        Refused { resp: Option<Box<Response<Bytes>>> },
    }
}

impl<F, O> std::fmt::Debug for ResponseFuture<F, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, O> ResponseFuture<F, O> {
    pub(crate) fn calling(fut: F, post: Post) -> Self {
        Self {
            state: State::Calling { fut, post },
        }
    }

    pub(crate) fn deciding(fut: Deciding<O>) -> Self {
        Self {
            state: State::Deciding { fut },
        }
    }

    pub(crate) fn refused(resp: Box<Response<Bytes>>) -> Self {
        Self {
            state: State::Refused { resp: Some(resp) },
        }
    }
}

fn add_headers<B>(resp: &mut Response<B>, post: Post) {
    if let Post::Headers(h) = post {
        // Append: a layer further in may have set its own RateLimit fields, and the two
        // lists together describe every quota that applied.
        let headers = resp.headers_mut();
        for (name, value) in h.into_vec() {
            headers.append(name, value);
        }
    }
}

fn refusal<B: From<Bytes>>(resp: Response<Bytes>) -> Response<B> {
    resp.map(B::from)
}

impl<F, B, E> Future for ResponseFuture<F, Result<Response<B>, E>>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<Bytes>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Calling { fut, post } => {
                if matches!(post, Post::Nothing) {
                    // The common case: the inner response as it is, straight through.
                    return fut.poll(cx);
                }
                let mut res = ready!(fut.poll(cx));
                if let Ok(resp) = &mut res {
                    add_headers(resp, std::mem::replace(post, Post::Nothing));
                }
                Poll::Ready(res)
            }
            StateProj::Deciding { fut } => {
                let (out, post) = ready!(fut.as_mut().poll(cx));
                match (out, post) {
                    (Some(mut res), post) => {
                        if let Ok(resp) = &mut res {
                            add_headers(resp, post);
                        }
                        Poll::Ready(res)
                    }
                    (None, Post::Refuse(resp)) => Poll::Ready(Ok(refusal(*resp))),
                    (None, _) => unreachable!("a request that was not called is always refused"),
                }
            }
            StateProj::Refused { resp } => {
                let resp = resp.take().expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(refusal(*resp)))
            }
        }
    }
}
