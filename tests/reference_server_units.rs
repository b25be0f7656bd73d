//! Unit tests of the reference server's own modules (configuration parsing, the embedded
//! catalogue). The example is built as a plain binary, so its modules are compiled here
//! a second time with their `#[cfg(test)]` parts.

#[allow(dead_code)]
#[path = "../examples/reference_server/config.rs"]
mod config;

#[allow(dead_code)]
#[path = "../examples/reference_server/catalog.rs"]
mod catalog;
