//! Telemetry: OpenTelemetry traces exported over OTLP, the per-request record behind the
//! metrics and the access log, and the small span API the other phases call.
//!
//! # What a trace looks like
//! ```text
//! POST /v1/chat/completions   SERVER    (parent: the client's `traceparent`, if any)
//! ├── auth                    INTERNAL  the key check, when client auth is on (proxy)
//! ├── plugin <name>           INTERNAL  classify/adapt calls: plugins::Pass (plugin_span)
//! ├── route                   INTERNAL  the routing decision (route, backend, model)
//! ├── chat <upstream model>   CLIENT    one per upstream attempt, GenAI attributes;
//! │                                     its `traceparent` goes upstream
//! └── validate                INTERNAL  one per answer checked, with the verdict
//!     └── plugin <name>       INTERNAL  the validate plugins' calls
//! shadow chat <model>         INTERNAL  a trace root of its own, *linked* to the request's
//!                                       span (shadow::mirror: linked_span)
//! ```
//!
//! # The API for other phases
//! The gateway owns one [`Tracer`] (empty when tracing is off), made by [`init`] at start;
//! every request carries a [`RequestTelemetry`] started from it (`ctx.telemetry`). From it:
//! - [`child_span`]`(&t, "auth")` opens an INTERNAL child of the request's span. Call
//!   [`Span::set`] for attributes, [`Span::fail`] with an `error.type` on failure; the span
//!   ends when dropped (or at [`Span::end`]).
//! - [`RequestTelemetry::parent`] hands the request's span to parts of the path that cannot
//!   borrow the record (the plugin pass, the shadow job): [`plugin_span`], [`span_under`]
//!   and [`linked_span`] open spans from it; [`Span::as_parent`] nests under a child.
//! - [`AttemptSpan::start`] opens the CLIENT span of one upstream attempt (fallbacks call it
//!   once per attempt); [`AttemptSpan::inject`] writes its `traceparent` on the upstream
//!   request; [`AttemptSpan::succeeded`] / [`AttemptSpan::failed`] end it and feed the GenAI
//!   metrics.
//! - [`linked_span`] starts the span of work that must not extend the request's trace (the
//!   shadow call): a new trace root with a link back to the request.
//! - [`RequestTelemetry::set_principal`] records the API key id and team once auth knows
//!   them; [`RequestTelemetry::set_cost`] the cost once the ledger priced the request. Both
//!   appear in the access log and on the server span.
//!
//! # Cost
//! Without `[telemetry] otlp_endpoint` the tracer is empty: every span handle is an empty
//! `Option` and the span calls are a branch on it. A recording span holds its record and a
//! handle on the tracer it ends into, so no part of the path reaches for a global. With it, a span's attributes are encoded
//! to OTLP protobuf as they are set (from borrowed values: [`Span::set`] takes `&str`,
//! `&Arc<str>`, numbers), and the rest of the span when it ends, on the request's thread,
//! into a bounded queue (see `switchyard_otlp::record` and `switchyard_otlp::pipeline`). A
//! full queue drops the span and counts it in `switchyard_telemetry_spans_dropped_total`, so
//! exporting never blocks a request. One task on a background-priority thread of its own
//! batches the queue and exports (OTLP gRPC or HTTP/protobuf), so an export never waits in
//! front of a request on a runtime worker.
//!
//! Message content (`gen_ai.input.messages`, `gen_ai.output.messages`) is recorded only with
//! `[telemetry] capture_content = true`. Telemetry settings are read once at start; a config
//! reload does not change the exporter.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanProcessor;
pub use switchyard_otlp::AttrValue;
use switchyard_otlp::SpanRecord;

use switchyard_otlp::context::{
    child_context, new_span_id, new_trace_id, sample_bound, traceparent,
};

use super::metrics::Metrics;
use crate::base::Endpoint;
use crate::base::openai::{self, Usage};
use crate::config::{Peer, TelemetrySettings};

/// Finished spans waiting for export; beyond this they are dropped (and counted).
pub use switchyard_otlp::pipeline::QUEUE_CAPACITY;

/// The gateway's instrumentation scope: a constant, which the export queue holds by
/// reference for its batches.
static SCOPE: LazyLock<InstrumentationScope> = LazyLock::new(|| {
    InstrumentationScope::builder("switchyard")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
});

/// The tracer behind a [`Tracer`] handle, present only when tracing is configured.
///
/// Spans are built here as `SpanRecord`s, their attributes encoded to OTLP as they are set
/// (see `switchyard_otlp::record`), without the SDK's tracer and span objects: those put
/// every span behind an `Arc<Mutex<..>>` inside a `Context`, run the sampler per span, and
/// copy the span once more when it ends, which at full load cost the gateway more than a
/// fifth of its throughput. A caller's own `SpanProcessor` gets the SDK's `SpanData`.
/// Sampling (parent-based, else by trace-id ratio), ids and W3C propagation follow the
/// OpenTelemetry specification as the SDK implements it.
struct Tracing {
    /// Where finished spans go: the export queue, or a caller's processor.
    sink: SpanSink,
    /// `[telemetry] sample_ratio`, as the bound on the trace id's random bits.
    sample_bound: u64,
    scope: &'static InstrumentationScope,
    capture_content: bool,
    /// The export task (absent with a caller's own processor).
    pipeline: Option<switchyard_otlp::Pipeline>,
}

/// The export queue is called directly, with the record by reference: it copies the span's
/// encoding and is done with it, so the record is neither moved again nor passed through a
/// vtable.
enum SpanSink {
    Queue(switchyard_otlp::QueueProcessor),
    Custom(Box<dyn SpanProcessor>),
}

impl Tracing {
    fn sampled_root(&self, trace_id: TraceId) -> bool {
        switchyard_otlp::context::sampled_root(self.sample_bound, trace_id)
    }

    /// End a span now and hand it to the processor.
    fn end(&self, mut record: SpanRecord) {
        record.end = SystemTime::now();
        match &self.sink {
            SpanSink::Queue(q) => q.push_record(&record, self.scope),
            SpanSink::Custom(p) => p.on_end(record.to_span_data(self.scope)),
        }
    }
}

/// The gateway's tracer: where its spans go, or nothing when tracing is off. Cloning it
/// clones a handle.
#[derive(Clone, Default)]
pub struct Tracer(Option<Arc<Tracing>>);

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Tracer(on)"
        } else {
            "Tracer(off)"
        })
    }
}

impl Tracer {
    /// No tracing: every span is a no-op.
    pub fn off() -> Tracer {
        Tracer(None)
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Export every queued span (bounded wait), at shutdown.
    pub async fn shutdown(&self) {
        if let Some(pipeline) = self.0.as_ref().and_then(|t| t.pipeline.as_ref()) {
            pipeline.flush().await;
        }
    }
}

/// The gateway's counters for the export pipeline, and its log lines for an outage.
struct GatewayExport(Arc<Metrics>);

impl switchyard_otlp::ExportEvents for GatewayExport {
    fn exported(&self, spans: u64) {
        self.0.spans_exported(spans);
    }

    fn dropped(&self, spans: u64) {
        self.0.spans_dropped(spans);
    }

    fn failed(&self, spans: u64) {
        self.0.span_export_failed(spans);
    }

    fn outage(&self, error: &str, spans: u64) {
        tracing::warn!(
            error,
            spans,
            "OTLP export failed; spans are dropped until it recovers"
        );
    }

    fn recovered(&self) {
        tracing::info!("OTLP export works again");
    }
}

/// The tracer for `[telemetry]`: exporting over OTLP when `otlp_endpoint` is set (the
/// export task and its connection run on a thread of their own), else off.
pub fn init(settings: Option<&TelemetrySettings>, metrics: Arc<Metrics>) -> Result<Tracer, String> {
    let Some(s) = settings else {
        return Ok(Tracer::off());
    };
    let Some(endpoint) = s.otlp_endpoint.as_deref() else {
        return Ok(Tracer::off());
    };
    let resource = Resource::builder()
        .with_service_name("switchyard")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    // Validation allowed only these two names.
    let protocol = switchyard_otlp::Protocol::parse(&s.otlp_protocol)
        .unwrap_or(switchyard_otlp::Protocol::Grpc);
    let exporter = switchyard_otlp::Exporter::new(
        endpoint,
        protocol,
        &resource,
        switchyard_otlp::pipeline::EXPORT_TIMEOUT,
    )
    .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
    let (processor, pipeline) =
        switchyard_otlp::Pipeline::start(exporter, Arc::new(GatewayExport(metrics)))
            .map_err(|e| format!("telemetry: cannot start the OTLP export thread: {e}"))?;
    let tracer = install(
        SpanSink::Queue(processor),
        resource,
        s.sample_ratio,
        s.capture_content,
        Some(pipeline),
    );
    tracing::info!(
        endpoint,
        protocol = %s.otlp_protocol,
        sample_ratio = s.sample_ratio,
        "exporting traces over OTLP"
    );
    Ok(tracer)
}

/// Trace with a span processor of the caller's choosing instead of the OTLP exporter: for
/// embedding Switchyard in a process that has its own pipeline, and for tests that read
/// spans in memory.
pub fn init_with_processor(
    processor: impl SpanProcessor + 'static,
    sample_ratio: f64,
    capture_content: bool,
) -> Tracer {
    let resource = Resource::builder().with_service_name("switchyard").build();
    install(
        SpanSink::Custom(Box::new(processor)),
        resource,
        sample_ratio,
        capture_content,
        None,
    )
}

fn install(
    mut sink: SpanSink,
    resource: Resource,
    sample_ratio: f64,
    capture_content: bool,
    pipeline: Option<switchyard_otlp::Pipeline>,
) -> Tracer {
    if let SpanSink::Custom(p) = &mut sink {
        p.set_resource(&resource);
    }
    Tracer(Some(Arc::new(Tracing {
        sink,
        sample_bound: sample_bound(sample_ratio),
        scope: &SCOPE,
        capture_content,
        pipeline,
    })))
}

/// A recording span: its record and the tracer it ends into.
#[derive(Debug)]
struct Open {
    record: SpanRecord,
    tracing: Arc<Tracing>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracing")
    }
}

/// A recording span, started now, under `parent` (`SpanId::INVALID` for a root), with room
/// for `attribute_bytes` of encoded attributes.
fn start_record(
    tracing: Arc<Tracing>,
    context: SpanContext,
    parent: SpanId,
    parent_is_remote: bool,
    name: Cow<'static, str>,
    kind: SpanKind,
    attribute_bytes: usize,
) -> Box<Open> {
    Box::new(Open {
        record: SpanRecord::new(
            context,
            parent,
            parent_is_remote,
            kind,
            name,
            attribute_bytes,
        ),
        tracing,
    })
}

/// An open span, or nothing when tracing is off or the trace is not sampled. Ends on drop.
///
/// The record is boxed: it is a few hundred bytes, and the span travels (in the request's
/// telemetry, in attempts, in the request path's futures) by value, traced or not.
#[derive(Debug, Default)]
pub struct Span(Option<Box<Open>>);

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(open) = self.0.take() {
            let Open { record, tracing } = *open;
            tracing.end(record);
        }
    }
}

impl Span {
    /// Whether attributes set on this span go anywhere (skip building costly values if not).
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// Set an attribute (replacing an earlier value of the key). Values are borrowed:
    /// `&str`, `&String`, `&Arc<str>`, `i64`, `f64`, `bool`, `&Vec<String>`, `&Value`.
    pub fn set<'a>(&mut self, key: &'static str, value: impl Into<AttrValue<'a>>) {
        if let Some(s) = &mut self.0 {
            s.record.set(key, value.into());
        }
    }

    /// Set an attribute the span cannot have yet (one of those it starts with): no search.
    fn add<'a>(&mut self, key: &'static str, value: impl Into<AttrValue<'a>>) {
        if let Some(s) = &mut self.0 {
            s.record.add(key, value.into());
        }
    }

    /// Mark the span failed with an `error.type` (a short, low-cardinality name).
    pub fn fail(&mut self, error_type: impl Into<Cow<'static, str>>) {
        if let Some(s) = &mut self.0 {
            let t = error_type.into();
            s.record.set("error.type", AttrValue::Str(&t));
            s.record.status = Status::error(t);
        }
    }

    /// Record an event (a point in time) on the span.
    pub fn event(&mut self, name: &'static str) {
        if let Some(s) = &mut self.0 {
            s.record.event(Cow::Borrowed(name), SystemTime::now());
        }
    }

    pub fn end(self) {
        drop(self);
    }

    fn context(&self) -> Option<&SpanContext> {
        self.0.as_ref().map(|s| &s.record.context)
    }

    /// Whether content capture (`[telemetry] capture_content`) applies to this span.
    fn captures_content(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.tracing.capture_content)
    }

    /// This span as the parent of spans opened under it.
    pub fn as_parent(&self) -> SpanParent {
        SpanParent(self.0.as_ref().map(|s| Parent {
            context: s.record.context.clone(),
            tracing: s.tracing.clone(),
        }))
    }

    /// Write this span's `traceparent` on an outgoing request (nothing when not recording),
    /// so the callee's spans join this span's trace.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Some(sc) = self.context()
            && sc.is_valid()
            && let Ok(v) = HeaderValue::from_bytes(&traceparent(sc))
        {
            headers.insert("traceparent", v);
        }
    }
}

/// Everything observability knows about one request: its server span, who asked, and the
/// figures the access log prints at the end.
#[derive(Debug, Default)]
pub struct RequestTelemetry {
    /// The server span's context (sampled or not) that children are parented on; `None`
    /// when tracing is off.
    cx: Option<SpanContext>,
    /// The server span (recording when the request is sampled; a request dropped before
    /// [`RequestTelemetry::finish_span`] still ends it).
    server: Span,
    /// `traceparent` trace id from the client when tracing is off (for the access log).
    client_trace_id: Option<Box<str>>,
    pub key_id: Option<Arc<str>>,
    pub team: Option<Arc<str>>,
    pub cost_usd: Option<f64>,
    /// The model the client asked for.
    pub request_model: Option<String>,
    pub usage: Option<Usage>,
    /// Time from the request's arrival to the first byte of a streamed answer.
    pub ttft: Option<Duration>,
    pub stream: bool,
}

impl RequestTelemetry {
    /// Open the server span for a request (parented on the client's `traceparent`).
    pub fn start(
        tracer: &Tracer,
        method: &http::Method,
        path: &'static str,
        headers: &HeaderMap,
    ) -> Self {
        let Some(t) = &tracer.0 else {
            return RequestTelemetry {
                client_trace_id: headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split('-').nth(1))
                    .filter(|id| id.len() == 32)
                    .map(Box::from),
                ..Default::default()
            };
        };
        let parent = switchyard_otlp::context::extract(headers);
        // Parent-based sampling: follow the client's decision, else the ratio on a new id.
        let (trace_id, sampled, state) = if parent.is_valid() {
            (
                parent.trace_id(),
                parent.is_sampled(),
                parent.trace_state().clone(),
            )
        } else {
            let id = new_trace_id();
            (id, t.sampled_root(id), TraceState::NONE)
        };
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let cx = SpanContext::new(trace_id, new_span_id(), flags, false, state);
        let mut server = Span(sampled.then(|| {
            start_record(
                t.clone(),
                cx.clone(),
                parent.span_id(),
                parent.is_valid(),
                server_span_name(method, path),
                SpanKind::Server,
                384,
            )
        }));
        server.add("http.request.method", method.as_str());
        server.add("http.route", path);
        server.add("url.path", path);
        RequestTelemetry {
            cx: Some(cx),
            server,
            ..Default::default()
        }
    }

    /// Whether this request is being traced (sampled, with an exporter).
    pub fn is_tracing(&self) -> bool {
        self.server.is_recording()
    }

    /// Whether prompts and answers are recorded on this request's spans.
    pub fn captures_content(&self) -> bool {
        self.server.captures_content()
    }

    /// The trace id (32 hex digits) for the access log: the gateway's trace when tracing is
    /// on, else the client's `traceparent` if it sent one.
    pub fn trace_id(&self) -> Option<String> {
        match &self.cx {
            Some(sc) => sc.is_valid().then(|| sc.trace_id().to_string()),
            None => self.client_trace_id.as_deref().map(str::to_owned),
        }
    }

    /// Set an attribute on the request's server span.
    pub fn set<'a>(&mut self, key: &'static str, value: impl Into<AttrValue<'a>>) {
        self.server.set(key, value);
    }

    /// Auth found the caller: its key id and team go in the access log and on the span.
    pub fn set_principal(&mut self, key_id: Arc<str>, team: Option<Arc<str>>) {
        self.set("switchyard.key_id", &key_id);
        if let Some(t) = &team {
            self.set("switchyard.team", t);
        }
        self.key_id = Some(key_id);
        self.team = team;
    }

    /// The ledger priced the request.
    pub fn set_cost(&mut self, usd: f64) {
        self.set("switchyard.cost_usd", usd);
        self.cost_usd = Some(usd);
    }

    /// A child of the server span (recording only when the request is traced), with room for
    /// `attribute_bytes` of attributes.
    fn child(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attribute_bytes: usize,
    ) -> Span {
        match &self.server.0 {
            Some(s) => child_of(&s.record.context, &s.tracing, name, kind, attribute_bytes),
            None => Span(None),
        }
    }

    /// The request's span as the parent of spans opened later, by a part of the request
    /// path that cannot borrow this record (the plugin pass, which the attempt loop owns).
    pub fn parent(&self) -> SpanParent {
        self.server.as_parent()
    }

    /// End the server span with the status the client got.
    pub fn finish_span(
        &mut self,
        status: u16,
        route: &Arc<str>,
        backend: &Arc<str>,
        error: Option<&str>,
    ) {
        let Some(open) = self.server.0.take() else {
            return;
        };
        let Open {
            mut record,
            tracing,
        } = *open;
        record.set("http.response.status_code", i64::from(status).into());
        record.set("switchyard.route", route.into());
        record.set("switchyard.backend", backend.into());
        if let Some(e) = error {
            record.set("error.type", e.into());
            if status >= 500 {
                record.status = Status::error(e.to_owned());
            }
        }
        tracing.end(record);
    }
}

/// A recording span's context and tracer, for opening its children later.
#[derive(Debug, Clone)]
struct Parent {
    context: SpanContext,
    tracing: Arc<Tracing>,
}

/// The context of a recording request span, for opening its children later; empty when the
/// request is not traced (then its children are no-ops too).
#[derive(Debug, Clone, Default)]
pub struct SpanParent(Option<Parent>);

impl SpanParent {
    fn child(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attribute_bytes: usize,
    ) -> Span {
        match &self.0 {
            Some(p) => child_of(&p.context, &p.tracing, name, kind, attribute_bytes),
            None => Span(None),
        }
    }
}

/// A recording child of `parent`, without copying the parent's context: the request's own
/// children take it straight from the server span.
fn child_of(
    parent: &SpanContext,
    tracing: &Arc<Tracing>,
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    attribute_bytes: usize,
) -> Span {
    Span(Some(start_record(
        tracing.clone(),
        child_context(parent),
        parent.span_id(),
        false,
        name.into(),
        kind,
        attribute_bytes,
    )))
}

/// The server span's name, `{method} {route}`, without allocating for the API's own routes.
fn server_span_name(method: &http::Method, path: &'static str) -> Cow<'static, str> {
    const POSTS: [(&str, &str); 3] = [
        ("/v1/chat/completions", "POST /v1/chat/completions"),
        ("/v1/completions", "POST /v1/completions"),
        ("/v1/embeddings", "POST /v1/embeddings"),
    ];
    match POSTS
        .iter()
        .find(|(p, _)| *method == http::Method::POST && *p == path)
    {
        Some((_, name)) => Cow::Borrowed(name),
        None => format!("{} {path}", method.as_str()).into(),
    }
}

/// An INTERNAL child span of the request (auth, validation, a gateway phase).
pub fn child_span(t: &RequestTelemetry, name: &'static str) -> Span {
    t.child(name, SpanKind::Internal, 256)
}

/// An INTERNAL child of `parent` (a request's span, or one of its children).
pub fn span_under(parent: &SpanParent, name: &'static str) -> Span {
    parent.child(name, SpanKind::Internal, 256)
}

/// The span of one plugin call, a child of the request's: named `plugin <name>`, with the
/// plugin, its version and its stage as attributes. The caller records
/// `switchyard.plugin.outcome` and `span.fail(kind)` on failure (see
/// `plugins::Pass`), and feeds `Metrics::plugin_call` with the duration.
pub fn plugin_span(parent: &SpanParent, plugin: &str, version: &str, stage: &'static str) -> Span {
    if parent.0.is_none() {
        return Span(None);
    }
    let mut span = parent.child(format!("plugin {plugin}"), SpanKind::Internal, 256);
    span.add("switchyard.plugin.name", plugin);
    span.add("switchyard.plugin.version", version);
    span.add("switchyard.plugin.stage", stage);
    span
}

/// A span for work done beside the request that must not hold its trace open (the shadow
/// call): a new trace root carrying a link to the request's span.
pub fn linked_span(request: &SpanParent, name: impl Into<Cow<'static, str>>) -> Span {
    let Some(server) = &request.0 else {
        return Span(None);
    };
    let cx = SpanContext::new(
        new_trace_id(),
        new_span_id(),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    let mut data = start_record(
        server.tracing.clone(),
        cx,
        SpanId::INVALID,
        false,
        name.into(),
        SpanKind::Internal,
        256,
    );
    data.record.link(server.context.clone());
    Span(Some(data))
}

/// The routing decision as a span: which route, which backend, which model.
pub fn routing_span(
    t: &RequestTelemetry,
    route: &Arc<str>,
    backend: &Arc<str>,
    upstream_model: Option<&Arc<str>>,
    started: SystemTime,
) -> Span {
    if !t.is_tracing() {
        return Span(None);
    }
    let mut span = t.child("route", SpanKind::Internal, 160);
    span.add("switchyard.route", route);
    span.add("switchyard.backend", backend);
    span.add(
        "switchyard.upstream_model",
        upstream_model.map_or("", |m| &**m),
    );
    if let Some(s) = &mut span.0 {
        s.record.start = started;
    }
    span
}

/// What the request asked for, as GenAI attributes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestParams<'a> {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Raw JSON of `messages` / `prompt` / `input` (recorded only with `capture_content`).
    pub input: Option<&'a str>,
}

/// The GenAI request attributes of `request`, read only when the request is traced.
pub fn request_params<'a>(
    t: &RequestTelemetry,
    request: &'a openai::RequestBody,
    endpoint: Endpoint,
) -> RequestParams<'a> {
    if !t.is_tracing() {
        return RequestParams::default();
    }
    let input_key = match endpoint {
        Endpoint::ChatCompletions => "messages",
        Endpoint::Completions => "prompt",
        Endpoint::Embeddings => "input",
    };
    RequestParams {
        max_tokens: request
            .get::<i64>("max_tokens")
            .or_else(|| request.get::<i64>("max_completion_tokens")),
        temperature: request.get::<f64>("temperature"),
        top_p: request.get::<f64>("top_p"),
        input: if t.captures_content() {
            request.raw(input_key)
        } else {
            None
        },
    }
}

/// What a complete answer said, from the probe the gateway read anyway: usage and model
/// always; id and finish reasons (and, with content capture, the raw `choices` of `body`,
/// the answer the probe read) only when the request is traced.
pub fn answer_facts(
    t: &RequestTelemetry,
    probe: openai::ResponseProbe<'_>,
    body: &[u8],
) -> AnswerFacts {
    let mut facts = AnswerFacts {
        response_model: probe.model,
        usage: probe.usage,
        ..AnswerFacts::default()
    };
    if !t.is_tracing() {
        return facts;
    }
    facts.response_id = probe.id.map(Cow::into_owned);
    facts.finish_reasons = probe
        .finish_reasons
        .0
        .into_iter()
        .map(Cow::into_owned)
        .collect();
    if t.captures_content() {
        facts.output = openai::raw_choices(body).map(str::to_owned);
    }
    facts
}

/// What an answer said, for the attempt span and the GenAI metrics.
#[derive(Debug, Clone, Default)]
pub struct AnswerFacts {
    pub response_model: Option<String>,
    pub response_id: Option<String>,
    pub finish_reasons: Vec<String>,
    pub usage: Option<Usage>,
    /// For streams: time from the attempt's start to the first chunk.
    pub first_token: Option<Duration>,
    /// Raw JSON of the answer's `choices` (recorded only with `capture_content`).
    pub output: Option<String>,
}

/// One upstream attempt: its CLIENT span and the clock for the GenAI metrics.
#[derive(Debug)]
pub struct AttemptSpan {
    span: Span,
    /// For a request that is not sampled: the context the upstream gets, so it learns the
    /// decision.
    unsampled: Option<SpanContext>,
    started: Instant,
    operation: &'static str,
    /// The model's metric label (never the client's free text: see [`AttemptModel`]).
    model: Arc<str>,
    backend: Arc<str>,
}

/// The model of one attempt: the name sent upstream, which the span carries, and the label
/// the GenAI metrics use for it (`Runtime::metric_model`), so a client cannot mint series.
pub struct AttemptModel<'a> {
    pub sent: &'a Arc<str>,
    pub metric_label: Arc<str>,
}

impl AttemptSpan {
    /// Open the span `chat <model>` (or `text_completion`/`embeddings <model>`).
    pub fn start(
        t: &RequestTelemetry,
        endpoint: Endpoint,
        backend: &Arc<str>,
        peer: &Peer,
        model: AttemptModel<'_>,
        params: RequestParams<'_>,
    ) -> AttemptSpan {
        let AttemptModel {
            sent: model,
            metric_label,
        } = model;
        let operation = endpoint.operation();
        let span = if t.is_tracing() {
            // Room for everything `succeeded` adds too, so the buffer never grows (unless
            // content is captured).
            let mut s = t.child(format!("{operation} {model}"), SpanKind::Client, 768);
            s.add("gen_ai.operation.name", operation);
            s.add("gen_ai.provider.name", peer.provider.unwrap_or(&**backend));
            s.add("gen_ai.request.model", model);
            s.add("server.address", &peer.address);
            if let Some(p) = peer.port {
                s.add("server.port", i64::from(p));
            }
            s.add("switchyard.backend", backend);
            if let Some(v) = params.max_tokens {
                s.add("gen_ai.request.max_tokens", v);
            }
            if let Some(v) = params.temperature {
                s.add("gen_ai.request.temperature", v);
            }
            if let Some(v) = params.top_p {
                s.add("gen_ai.request.top_p", v);
            }
            if let Some(i) = params.input
                && s.captures_content()
            {
                s.add("gen_ai.input.messages", i);
            }
            s
        } else {
            Span(None)
        };
        let unsampled = match (&span.0, &t.cx) {
            (None, Some(cx)) => Some(child_context(cx)),
            _ => None,
        };
        AttemptSpan {
            span,
            unsampled,
            started: Instant::now(),
            operation,
            model: metric_label,
            backend: backend.clone(),
        }
    }

    /// Write this attempt's `traceparent` on the upstream request, replacing the client's,
    /// so the upstream's spans become children of this one.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let Some(sc) = self.span.context().or(self.unsampled.as_ref()) else {
            return;
        };
        if !sc.is_valid() {
            return;
        }
        if let Ok(v) = HeaderValue::from_bytes(&traceparent(sc)) {
            headers.insert("traceparent", v);
        }
    }

    /// Time since the attempt started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The attempt produced an answer (for streams: the stream ended, however it ended).
    pub fn succeeded(mut self, metrics: &Metrics, facts: AnswerFacts) {
        let took = self.started.elapsed();
        metrics.genai_operation(self.operation, &self.model, &self.backend, None, took);
        if let Some(u) = facts.usage {
            metrics.genai_tokens(self.operation, &self.model, &self.backend, u);
        }
        if let Some(ft) = facts.first_token {
            metrics.genai_first_token(self.operation, &self.model, &self.backend, ft);
            if let Some(u) = facts.usage
                && u.completion_tokens > 1
            {
                let after_first = u32::try_from(u.completion_tokens - 1).unwrap_or(u32::MAX);
                let per = took.saturating_sub(ft) / after_first;
                metrics.genai_time_per_output_token(
                    self.operation,
                    &self.model,
                    &self.backend,
                    per,
                );
            }
        }
        if self.span.is_recording() {
            // Keys no other part of the attempt sets (`succeeded` takes the attempt): added
            // without looking for an earlier value.
            let s = &mut self.span;
            if let Some(m) = &facts.response_model {
                s.add("gen_ai.response.model", m);
            }
            if let Some(id) = &facts.response_id {
                s.add("gen_ai.response.id", id);
            }
            if !facts.finish_reasons.is_empty() {
                s.add("gen_ai.response.finish_reasons", &facts.finish_reasons);
            }
            if let Some(u) = facts.usage {
                s.add("gen_ai.usage.input_tokens", u.prompt_tokens as i64);
                s.add("gen_ai.usage.output_tokens", u.completion_tokens as i64);
            }
            if let Some(ft) = facts.first_token {
                s.add("gen_ai.server.time_to_first_token", ft.as_secs_f64());
            }
            if let Some(o) = &facts.output
                && s.captures_content()
            {
                s.add("gen_ai.output.messages", o);
            }
        }
    }

    /// The attempt failed: `error_type` is the gateway's error kind (or the HTTP status).
    pub fn failed(mut self, metrics: &Metrics, error_type: &'static str, status: Option<u16>) {
        let took = self.started.elapsed();
        metrics.genai_operation(
            self.operation,
            &self.model,
            &self.backend,
            Some(error_type),
            took,
        );
        if let Some(st) = status {
            self.span.set("http.response.status_code", i64::from(st));
        }
        self.span.fail(error_type);
    }
}

/// Everything one access-log line says. Written with target `access`, so
/// `SWITCHYARD_LOG=info,access=off` silences it.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub backend: &'a str,
    pub upstream_model: &'a str,
    pub status: u16,
    pub latency: Duration,
    pub upstream: Option<Duration>,
    pub error: Option<&'a str>,
}

/// Write the access-log line of a finished request.
pub fn access_log(t: &RequestTelemetry, r: &AccessRecord<'_>) {
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    let trace_id = t.trace_id();
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    tracing::info!(
        target: "access",
        trace_id = trace_id.as_deref().unwrap_or("-"),
        method = r.method,
        path = r.path,
        route = r.route,
        backend = r.backend,
        model = t.request_model.as_deref().unwrap_or("-"),
        upstream_model = r.upstream_model,
        status = r.status,
        stream = t.stream,
        input_tokens = t.usage.map(|u| u.prompt_tokens),
        output_tokens = t.usage.map(|u| u.completion_tokens),
        latency_ms = ms(r.latency),
        upstream_ms = r.upstream.map(ms),
        ttft_ms = t.ttft.map(ms),
        key_id = t.key_id.as_deref(),
        team = t.team.as_deref(),
        cost_usd = t.cost_usd,
        error = r.error,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_inert_without_an_exporter() {
        let t = RequestTelemetry::start(
            &Tracer::off(),
            &http::Method::POST,
            "/v1/chat/completions",
            &HeaderMap::new(),
        );
        let mut s = plugin_span(&t.parent(), "pii", "1", "adapt");
        assert!(!s.is_recording());
        s.set("x", 1_i64);
        let mut h = HeaderMap::new();
        let b: Arc<str> = Arc::from("b");
        let a = AttemptSpan::start(
            &t,
            Endpoint::ChatCompletions,
            &b,
            &Peer::of("http://h:1/v1"),
            AttemptModel {
                sent: &b,
                metric_label: b.clone(),
            },
            RequestParams::default(),
        );
        a.inject(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn client_trace_id_is_kept_for_the_log_when_tracing_is_off() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let t = RequestTelemetry::start(
            &Tracer::off(),
            &http::Method::POST,
            "/v1/chat/completions",
            &h,
        );
        assert_eq!(
            t.trace_id().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }
}
