//! The routes, by concern.

pub(crate) mod exports;
pub(crate) mod ops;
pub(crate) mod price;
pub(crate) mod products;
pub(crate) mod sessions;
