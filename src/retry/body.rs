//! [`ReplayBody`]: a request body the retry layer can send more than once.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body the retry layer hands the inner service: the request's bytes, buffered so
    /// each attempt can send them again, or (a body larger than the cap, or of unknown
    /// size) the original stream, sent once.
    #[derive(Debug)]
    pub struct ReplayBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Bytes { data: Option<Bytes> },
        Stream { #[pin] body: B },
    }
}

impl<B> ReplayBody<B> {
    pub(crate) fn bytes(data: Bytes) -> Self {
        Self {
            kind: Kind::Bytes {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn stream(body: B) -> Self {
        Self {
            kind: Kind::Stream { body },
        }
    }

    /// True if this is the original stream (sent once, never replayed).
    pub fn is_stream(&self) -> bool {
        matches!(self.kind, Kind::Stream { .. })
    }
}

impl<B: Body<Data = Bytes>> Body for ReplayBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Bytes { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Stream { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Bytes { data } => data.is_none(),
            Kind::Stream { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Bytes { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Stream { body } => body.size_hint(),
        }
    }
}
