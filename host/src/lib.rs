//! Switchyard: an OpenAI-compatible gateway that decides, per request, which backend and
//! model answer. See ARCHITECTURE.md for the request path; each phase is one module.

pub mod body;
pub mod cli;
pub mod config;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod openai;
pub mod proxy;
pub mod router;
pub mod server;
pub mod sse;
pub mod telemetry;
pub mod upstream;
