//! Switchyard: an OpenAI-compatible gateway that decides, per request, which backend and
//! model answer. ARCHITECTURE.md draws the layout; in short, five layers, each importing
//! only from those before it:
//!
//! ```text
//! base ─► config ─► services ─► request ─► app
//! ```
//!
//! `base` is what everything speaks (errors, the wire format), `config` the validated
//! settings (data only), `services` the long-lived state built from them, `request` the
//! request path (one file per phase), `app` the binary's top (CLI, server, admin, reload).

pub mod app;
pub mod base;
pub mod config;
pub mod request;
pub mod services;
