//! End-to-end tests: the real `switchyard` binary against in-repo mock upstreams.
//!
//! One test binary (one link) with a module per area.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod abuse;
mod anthropic_sdk;
mod cache;
mod capture;
mod cli;
mod concurrency;
mod console;
mod context_window;
mod deploy;
mod errors;
mod eval;
mod first_party;
mod governance;
mod gpu_cost;
mod lifecycle;
mod local_worker;
mod openai_sdk;
mod passthrough;
mod plugins;
mod postgres;
mod protocols;
mod proxy;
mod rollout;
mod server_limits;
mod shadow_judge;
mod stream_faults;
mod streaming;
mod telemetry;
mod tls;
mod traffic;
