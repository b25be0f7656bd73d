//! [`RetryError`]: what a [`Retry`](super::Retry)(super::Retry) answers when it gives up.

use std::fmt;

use crate::BoxError;

/// The error of a [`Retry`](super::Retry): the last attempt's error, or what stopped the attempts.
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
