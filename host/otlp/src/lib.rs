//! OTLP trace export shared by the gateway (`switchyard`) and the inference worker
//! (`switchyard-worker`), so that one request's trace runs from the client through the
//! gateway into the worker, each process exporting its own spans to the same collector.
//!
//! - [`wire`]: the OTLP protobuf encoding, written straight from the SDK's `SpanData`.
//! - [`export`]: the gRPC and HTTP/protobuf transports.
//! - [`pipeline`]: the bounded queue between the request path and one export task;
//!   exporting never blocks a request, a full queue drops spans and counts them.
//! - [`context`]: span and trace ids, W3C `traceparent` in and out.
//!
//! # Why our own exporter
//! With every request traced, the gateway benchmark spent about half of the tracing cost in
//! the generic `opentelemetry-otlp` exporter (an owned copy of every span's message tree
//! before encoding). Encoding in place halves that; the end-to-end tests decode what we send
//! with the official generated types (`opentelemetry-proto`).

pub mod context;
pub mod export;
pub mod pipeline;
pub mod wire;

pub use export::{Exporter, Protocol};
pub use pipeline::{ExportEvents, Pipeline, QueueProcessor};
