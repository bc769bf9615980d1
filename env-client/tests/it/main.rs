//! Integration tests of `env-client`: wire frames against the official captures, the client
//! against scripted in-test WebSocket servers, and the pool. Self-contained: no env-server,
//! no files read at run time (fixtures are compiled in).

// Test code: a panic is the failure report, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod frames;
mod pool;
mod support;
