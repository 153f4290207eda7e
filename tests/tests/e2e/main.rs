//! End-to-end tests: the real `switchyard` binary against in-repo mock upstreams.
//!
//! One test binary (one link) with a module per area.

mod cli;
mod concurrency;
mod errors;
mod lifecycle;
mod openai_sdk;
mod proxy;
mod streaming;
mod tls;
