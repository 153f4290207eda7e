//! The top: the command line, `serve`'s startup, the HTTP surface and the server, the
//! config history (reload, rollback), the admin API, feedback, and the in-process inference
//! worker.

pub mod admin;
pub mod cli;
pub mod eval;
pub mod feedback;
pub mod gateway;
pub mod http;
#[cfg(feature = "local-worker")]
pub mod local_worker;
pub mod reload;
pub mod serve;
pub mod server;
