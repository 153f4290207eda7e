//! OTLP trace export shared by the gateway (`switchyard`) and the inference worker
//! (`switchyard-worker`), so that one request's trace runs from the client through the
//! gateway into the worker, each process exporting its own spans to the same collector.
//!
//! - [`record`](mod@record): the gateway's span record, its attributes encoded as they are set.
//! - [`wire`]: the OTLP protobuf encoding, written straight from a [`SpanRecord`] or the
//!   SDK's `SpanData` (the worker's spans).
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
pub mod record;
pub mod wire;

pub use export::{Exporter, Protocol};
pub use pipeline::{ExportEvents, Pipeline, QueueProcessor};
pub use record::{AttrValue, SpanRecord};

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

/// A span record started (and, until its end is set, ended) now: `context` under `parent`
/// (`SpanId::INVALID` for a root; `parent_is_remote` when it came from another process).
pub fn record(
    context: SpanContext,
    parent: SpanId,
    parent_is_remote: bool,
    kind: SpanKind,
    name: Cow<'static, str>,
    attributes: Vec<KeyValue>,
    scope: &InstrumentationScope,
) -> SpanData {
    let now = SystemTime::now();
    SpanData {
        span_context: context,
        parent_span_id: parent,
        parent_span_is_remote: parent_is_remote,
        span_kind: kind,
        name,
        start_time: now,
        end_time: now,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    }
}
