//! End-to-end tests: the real `switchyard` binary against in-repo mock upstreams.
//!
//! One test binary (one link) with a module per area.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod abuse;
mod cli;
mod concurrency;
mod errors;
mod first_party;
mod governance;
mod lifecycle;
mod local_worker;
mod openai_sdk;
mod plugins;
mod proxy;
mod server_limits;
mod stream_faults;
mod streaming;
mod telemetry;
mod tls;
mod traffic;
