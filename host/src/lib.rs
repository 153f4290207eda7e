//! Switchyard: an OpenAI-compatible gateway that decides, per request, which backend and
//! model answer. See ARCHITECTURE.md for the request path; each phase is one module.

pub mod admin;
pub mod attempt;
pub mod auth;
pub mod body;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod error;
pub mod flags;
pub mod gateway;
pub mod governance;
pub mod held;
pub mod ledger;
pub mod limits;
pub mod local_worker;
pub mod metrics;
pub mod openai;
pub mod plugins;
pub mod pool;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod shadow;
pub mod sse;
pub mod store;
pub mod telemetry;
pub mod upstream;
