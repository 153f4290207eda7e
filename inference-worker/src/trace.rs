//! The worker's part of a request's trace: one SERVER span per generation request, parented
//! on the caller's W3C `traceparent` (the gateway's upstream attempt), with three children
//! that show where the time went.
//!
//! ```text
//! chat <served model>        SERVER    gen_ai.* request/response/usage attributes and the
//! │                                    latency breakdown in seconds (gen_ai.latency.*)
//! ├── queue                  INTERNAL  waiting for a slot in the running batch
//! ├── prefill                INTERNAL  admitted → first token sampled
//! └── decode                 INTERNAL  first token → generation ended
//! ```
//!
//! Spans go to a collector over OTLP (`--otlp-endpoint`), through the same encoder, bounded
//! queue and export task as the gateway's (`switchyard-otlp`): a slow or absent collector
//! costs dropped spans (counted on `/metrics`), never a slower request. A request with a
//! `traceparent` follows the caller's sampling decision; one without starts a new, sampled
//! trace. Prompts and answers are never recorded.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use http::HeaderMap;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;
use switchyard_otlp::context::{child_context, extract, new_span_id, new_trace_id};
use switchyard_otlp::{ExportEvents, Exporter, Pipeline, Protocol, QueueProcessor};

use crate::engine::{Finish, Timings};

/// A log line sink (stderr for the binary, the gateway's log for its local worker).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// Export counters shown on the worker's `/metrics`.
pub struct ExportCounters {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
    log: Log,
}

impl ExportEvents for ExportCounters {
    fn exported(&self, spans: u64) {
        self.exported.fetch_add(spans, Ordering::Relaxed);
    }

    fn dropped(&self, spans: u64) {
        self.dropped.fetch_add(spans, Ordering::Relaxed);
    }

    fn failed(&self, spans: u64) {
        self.failed.fetch_add(spans, Ordering::Relaxed);
    }

    fn outage(&self, error: &str, spans: u64) {
        (self.log)(&format!(
            "OTLP export failed ({spans} spans): {error}; spans are dropped until it recovers"
        ));
    }

    fn recovered(&self) {
        (self.log)("OTLP export works again");
    }
}

/// Where the worker's spans go.
pub struct Tracer {
    processor: QueueProcessor,
    pipeline: Pipeline,
    scope: InstrumentationScope,
    pub counters: Arc<ExportCounters>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracer")
    }
}

impl Tracer {
    /// Export to `endpoint` over `protocol` (the export task runs on a thread of its own).
    /// `instance` names this worker among its peers (`service.instance.id`, e.g. its listen
    /// address).
    pub fn start(
        endpoint: &str,
        protocol: Protocol,
        instance: &str,
        log: Log,
    ) -> Result<Tracer, String> {
        let resource = Resource::builder()
            .with_service_name("switchyard-worker")
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_attribute(KeyValue::new("service.instance.id", instance.to_string()))
            .build();
        let exporter = Exporter::new(
            endpoint,
            protocol,
            &resource,
            switchyard_otlp::pipeline::EXPORT_TIMEOUT,
        )?;
        let counters = Arc::new(ExportCounters {
            exported: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            log,
        });
        let (processor, pipeline) = Pipeline::start(exporter, counters.clone())
            .map_err(|e| format!("cannot start the OTLP export thread: {e}"))?;
        Ok(Tracer {
            processor,
            pipeline,
            scope: InstrumentationScope::builder("switchyard-worker")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            counters,
        })
    }

    /// Export what is queued (at shutdown); bounded wait.
    pub async fn flush(&self) {
        self.pipeline.flush().await;
    }

    /// Open the span of one request under the caller's `traceparent`, if any.
    pub fn request(
        self: &Arc<Self>,
        headers: &HeaderMap,
        operation: &'static str,
        model: &str,
    ) -> RequestSpan {
        let parent = extract(headers);
        let (trace_id, sampled, state) = if parent.is_valid() {
            (
                parent.trace_id(),
                parent.is_sampled(),
                parent.trace_state().clone(),
            )
        } else {
            (new_trace_id(), true, TraceState::NONE)
        };
        if !sampled {
            return RequestSpan::default();
        }
        let context = SpanContext::new(trace_id, new_span_id(), TraceFlags::SAMPLED, false, state);
        let attributes = vec![
            KeyValue::new("gen_ai.operation.name", operation),
            KeyValue::new("gen_ai.response.model", model.to_string()),
        ];
        let data = switchyard_otlp::record(
            context,
            parent.span_id(),
            parent.is_valid(),
            SpanKind::Server,
            Cow::Owned(format!("{operation} {model}")),
            attributes,
            &self.scope,
        );
        RequestSpan {
            open: Some(Box::new(Open {
                tracer: self.clone(),
                started: (Instant::now(), data.start_time),
                data,
            })),
        }
    }
}

struct Open {
    tracer: Arc<Tracer>,
    /// The span's start on both clocks, to place the engine's `Instant`s in wall time.
    started: (Instant, SystemTime),
    data: SpanData,
}

/// The span of one request, or nothing (tracing off, or the caller's trace not sampled).
/// Ends when finished or dropped; dropped unfinished (the client went away) it is marked
/// `error.type = cancelled`.
#[derive(Default)]
pub struct RequestSpan {
    /// Boxed: the span record is large, and the handle moves through the request path.
    open: Option<Box<Open>>,
}

impl RequestSpan {
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(o) = &mut self.open {
            o.data.attributes.push(KeyValue::new(key, value));
        }
    }

    /// The request was refused or failed: `error.type` and the HTTP status it got.
    pub fn fail(&mut self, error_type: &'static str, status: u16) {
        if let Some(o) = &mut self.open {
            o.data
                .attributes
                .push(KeyValue::new("error.type", error_type));
            o.data.attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            o.data.status = Status::error(error_type);
        }
    }

    /// Generation ended: usage, finish reason, the latency breakdown and the phase children.
    pub fn finish(&mut self, finish: Finish, prompt: usize, completion: usize, t: &Timings) {
        let Some(mut o) = self.open.take() else {
            return;
        };
        let secs =
            |a: Instant, b: Instant| Value::F64(b.saturating_duration_since(a).as_secs_f64());
        let a = &mut o.data.attributes;
        a.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            Value::Array(vec![opentelemetry::StringValue::from(finish.as_str())].into()),
        ));
        a.push(KeyValue::new("gen_ai.usage.input_tokens", prompt as i64));
        a.push(KeyValue::new(
            "gen_ai.usage.output_tokens",
            completion as i64,
        ));
        a.push(KeyValue::new("http.response.status_code", 200));
        // The names vLLM uses for the same breakdown, so dashboards built for it read ours.
        a.push(KeyValue::new(
            "gen_ai.latency.time_in_queue",
            secs(t.arrived, t.admitted),
        ));
        let first = t.first_token.unwrap_or(t.finished);
        a.push(KeyValue::new(
            "gen_ai.latency.time_to_first_token",
            secs(t.arrived, first),
        ));
        a.push(KeyValue::new(
            "gen_ai.latency.time_in_model_prefill",
            secs(t.admitted, first),
        ));
        a.push(KeyValue::new(
            "gen_ai.latency.time_in_model_decode",
            secs(first, t.finished),
        ));
        a.push(KeyValue::new(
            "gen_ai.latency.e2e",
            secs(t.arrived, t.finished),
        ));
        let wall = |i: Instant| o.started.1 + i.saturating_duration_since(o.started.0);
        let parent = o.data.span_context.span_id();
        for (name, from, to) in [
            ("queue", t.arrived, t.admitted),
            ("prefill", t.admitted, first),
            ("decode", first, t.finished),
        ] {
            let context = child_context(&o.data.span_context);
            o.tracer
                .processor
                .push(child(&o, context, parent, name, wall(from), wall(to)));
        }
        end(o);
    }
}

fn child(
    o: &Open,
    context: SpanContext,
    parent: SpanId,
    name: &'static str,
    start: SystemTime,
    end: SystemTime,
) -> SpanData {
    let mut d = switchyard_otlp::record(
        context,
        parent,
        false,
        SpanKind::Internal,
        Cow::Borrowed(name),
        Vec::new(),
        &o.data.instrumentation_scope,
    );
    d.start_time = start;
    d.end_time = end.max(start);
    d
}

fn end(mut o: Box<Open>) {
    o.data.end_time = SystemTime::now();
    let data = o.data;
    o.tracer.processor.push(data);
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        if let Some(mut o) = self.open.take() {
            if o.data.status == Status::Unset {
                o.data
                    .attributes
                    .push(KeyValue::new("error.type", "cancelled"));
                o.data.status = Status::error("the client went away before the answer ended");
            }
            end(o);
        }
    }
}
