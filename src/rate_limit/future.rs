//! The response future of [`RateLimit`](super::RateLimit).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::Full;
use pin_project_lite::pin_project;

use super::body::RateLimitBody;

/// What happens to the response once the decision is known.
pub(crate) enum Post {
    /// Nothing: pass the inner response through.
    Nothing,
    /// Add these headers to the inner response.
    Headers(Box<HeaderMap>),
    /// Refused: answer with this instead.
    Refuse(Box<Response<Full<Bytes>>>),
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
        Calling { #[pin] fut: F, post: Option<Post> },
        // Waiting for the store (Redis); the inner call follows in the same boxed future.
        Deciding { fut: Deciding<O> },
        // Refused in `call`.
        Refused { resp: Option<Box<Response<Full<Bytes>>>> },
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
            state: State::Calling {
                fut,
                post: Some(post),
            },
        }
    }

    pub(crate) fn deciding(fut: Deciding<O>) -> Self {
        Self {
            state: State::Deciding { fut },
        }
    }

    pub(crate) fn refused(resp: Box<Response<Full<Bytes>>>) -> Self {
        Self {
            state: State::Refused { resp: Some(resp) },
        }
    }
}

fn finish<B>(mut resp: Response<B>, post: Post) -> Response<RateLimitBody<B>> {
    if let Post::Headers(h) = post {
        // Append: a layer further in may have set its own RateLimit fields, and the two
        // lists together describe every quota that applied.
        for (name, value) in h.iter() {
            resp.headers_mut().append(name, value.clone());
        }
    }
    resp.map(RateLimitBody::inner)
}

impl<F, B, E> Future for ResponseFuture<F, Result<Response<B>, E>>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<RateLimitBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Calling { fut, post } => {
                let res = ready!(fut.poll(cx));
                let post = post.take().unwrap_or(Post::Nothing);
                Poll::Ready(res.map(|r| finish(r, post)))
            }
            StateProj::Deciding { fut } => {
                let (out, post) = ready!(fut.as_mut().poll(cx));
                match (out, post) {
                    (Some(res), post) => Poll::Ready(res.map(|r| finish(r, post))),
                    (None, Post::Refuse(resp)) => {
                        Poll::Ready(Ok((*resp).map(RateLimitBody::refusal)))
                    }
                    (None, _) => unreachable!("a request that was not called is always refused"),
                }
            }
            StateProj::Refused { resp } => {
                let resp = resp.take().expect("ResponseFuture polled after completion");
                Poll::Ready(Ok((*resp).map(RateLimitBody::refusal)))
            }
        }
    }
}
