//! Telemetry: OpenTelemetry traces exported over OTLP, the per-request record behind the
//! metrics and the access log, and the small span API the other phases call.
//!
//! # What a trace looks like
//! ```text
//! POST /v1/chat/completions            SERVER  (parent: the client's `traceparent`, if any)
//! ├── auth                             INTERNAL  telemetry::child_span(&ctx.telemetry, "auth")
//! ├── plugin <name>                    INTERNAL  telemetry::plugin_span(&ctx.telemetry, name, stage)
//! ├── route                            INTERNAL  the routing decision (route, backend, model)
//! ├── chat <upstream model>            CLIENT    one per upstream attempt, GenAI attributes;
//! │                                              its `traceparent` goes upstream
//! └── validate                         INTERNAL  telemetry::child_span(&ctx.telemetry, "validate")
//! shadow chat <model>                  (own trace root, *linked* to the request's span)
//!                                                telemetry::linked_span(&ctx.telemetry, name)
//! ```
//!
//! # The API for other phases
//! Every request carries a [`RequestTelemetry`] (`ctx.telemetry`). From it:
//! - [`child_span`]`(&t, "auth")` and [`plugin_span`]`(&t, plugin, stage)` open an INTERNAL
//!   child of the request's span. Call [`Span::set`] for attributes, [`Span::fail`] with an
//!   `error.type` on failure; the span ends when dropped (or at [`Span::end`]).
//! - [`Attempt::start`] opens the CLIENT span of one upstream attempt (fallbacks call it once
//!   per attempt); [`Attempt::inject`] writes its `traceparent` on the upstream request;
//!   [`Attempt::succeeded`] / [`Attempt::failed`] end it and feed the GenAI metrics.
//! - [`linked_span`] starts the span of work that must not extend the request's trace (the
//!   shadow call): a new trace root with a link back to the request.
//! - [`RequestTelemetry::set_principal`] records the API key id and team once auth knows
//!   them; [`RequestTelemetry::set_cost`] the cost once the ledger priced the request. Both
//!   appear in the access log.
//!
//! # Cost
//! Without `[telemetry] otlp_endpoint` no tracer exists: every span handle is an empty
//! `Option` and the span calls are a branch on it. With it, finished spans go to a bounded
//! queue with `try_send`; a full queue drops the span and counts it in
//! `switchyard_telemetry_spans_dropped_total`, so exporting never blocks a request. One task
//! on the gateway's runtime batches the queue and exports (OTLP gRPC or HTTP/protobuf).
//!
//! Message content (`gen_ai.input.messages`, `gen_ai.output.messages`) is recorded only with
//! `[telemetry] capture_content = true`. Telemetry settings are read once at start; a config
//! reload does not change the exporter.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks, SpanProcessor};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Endpoint, TelemetrySettings};
use crate::metrics::Metrics;
use crate::openai::Usage;

/// Finished spans waiting for export; beyond this they are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 8192;
/// Spans sent per export call.
const MAX_BATCH: usize = 512;
/// How long a finished span waits at most before it is exported.
const EXPORT_INTERVAL: Duration = Duration::from_millis(500);
/// One export call may take this long; a slow collector then costs dropped spans, not time.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// `[telemetry] log_format`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    #[default]
    Auto,
    Json,
    Text,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "auto" => Some(LogFormat::Auto),
            "json" => Some(LogFormat::Json),
            "text" => Some(LogFormat::Text),
            _ => None,
        }
    }

    /// Whether lines are JSON. `SWITCHYARD_LOG_FORMAT=json|text` overrides the config.
    pub fn json(self) -> bool {
        let chosen = match std::env::var("SWITCHYARD_LOG_FORMAT").as_deref() {
            Ok(v) => LogFormat::parse(v).unwrap_or(self),
            Err(_) => self,
        };
        match chosen {
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => !std::io::stderr().is_terminal(),
        }
    }
}

/// The process-wide tracer, present only when an OTLP endpoint is configured.
///
/// Spans are built here as the SDK's own `SpanData` records and handed to a `SpanProcessor`
/// when they end, without the SDK's tracer and span objects: those put every span behind an
/// `Arc<Mutex<..>>` inside a `Context`, run the sampler per span, and copy the span once more
/// when it ends, which at full load cost the gateway more than a fifth of its throughput.
/// Sampling (parent-based, else by trace-id ratio), ids and W3C propagation follow the
/// OpenTelemetry specification as the SDK implements it.
struct Tracing {
    /// Where finished spans go: the export queue, or a caller's processor.
    processor: Box<dyn SpanProcessor>,
    /// `[telemetry] sample_ratio`, as the bound on the trace id's random bits.
    sample_bound: u64,
    scope: InstrumentationScope,
    capture_content: bool,
    /// Asks the export task to send what is queued now (absent with a caller's own processor).
    flush: Option<mpsc::Sender<oneshot::Sender<()>>>,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();

fn tracing_on() -> Option<&'static Tracing> {
    TRACING.get()
}

/// Finished spans between the request path and the export task.
///
/// A plain vector behind a mutex rather than a channel: a channel wakes the export task for
/// nearly every span (tens of thousands of cross-thread wake-ups a second at full load, which
/// cost more than the spans), while here a request only appends. The export task wakes when a
/// batch is full (one wake-up per [`MAX_BATCH`] spans) or on its [`EXPORT_INTERVAL`] tick.
#[derive(Debug)]
struct SpanQueue {
    spans: std::sync::Mutex<Vec<SpanData>>,
    batch_full: tokio::sync::Notify,
    metrics: Arc<Metrics>,
}

impl SpanQueue {
    fn new(metrics: Arc<Metrics>) -> SpanQueue {
        SpanQueue {
            spans: std::sync::Mutex::new(Vec::with_capacity(MAX_BATCH)),
            batch_full: tokio::sync::Notify::new(),
            metrics,
        }
    }

    /// Everything queued so far (the queue starts again empty).
    fn take(&self) -> Vec<SpanData> {
        let mut q = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *q, Vec::with_capacity(MAX_BATCH))
    }
}

/// Hands finished spans to the export task without ever waiting for it.
#[derive(Debug)]
struct QueueProcessor(Arc<SpanQueue>);

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let len = {
            let mut q = self.0.spans.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= QUEUE_CAPACITY {
                drop(q);
                self.0.metrics.spans_dropped(1);
                return;
            }
            q.push(span);
            q.len()
        };
        if len == MAX_BATCH {
            self.0.batch_full.notify_one();
        }
    }

    // Flushing is asynchronous ([`Telemetry::shutdown`]); these run on runtime threads and
    // must not block them.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Handle returned by [`init`]; [`Telemetry::shutdown`] exports what is still queued.
#[derive(Debug)]
pub struct Telemetry {
    _private: (),
}

impl Telemetry {
    /// Export every queued span (bounded wait), at shutdown.
    pub async fn shutdown(self) {
        let Some(queue) = tracing_on().and_then(|t| t.flush.as_ref()) else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        if queue.send(tx).await.is_ok() {
            let _ = tokio::time::timeout(EXPORT_TIMEOUT, rx).await;
        }
    }
}

/// Start exporting traces if `[telemetry] otlp_endpoint` is set. Must run inside the tokio
/// runtime (the export task and the gRPC channel live there). Called once per process.
pub fn init(
    settings: Option<&TelemetrySettings>,
    metrics: Arc<Metrics>,
) -> Result<Option<Telemetry>, String> {
    let Some(s) = settings else { return Ok(None) };
    let Some(endpoint) = s.otlp_endpoint.as_deref() else {
        return Ok(None);
    };
    // The exporter is built without TLS: collectors usually run beside the gateway (an
    // agent or sidecar), and a silent failure on every export would be worse than saying so.
    if endpoint.starts_with("https://") {
        return Err(format!(
            "telemetry.otlp_endpoint: \"{endpoint}\": OTLP over TLS is not supported yet; \
             send to a local collector over http://"
        ));
    }
    let resource = Resource::builder()
        .with_service_name("switchyard")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let exporter = build_exporter(endpoint, &s.otlp_protocol, &resource)?;
    let queue = Arc::new(SpanQueue::new(metrics));
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(export_loop(exporter, queue.clone(), rx));
    install(
        QueueProcessor(queue),
        resource,
        s.sample_ratio,
        s.capture_content,
        Some(tx),
    )?;
    tracing::info!(
        endpoint,
        protocol = %s.otlp_protocol,
        sample_ratio = s.sample_ratio,
        "exporting traces over OTLP"
    );
    Ok(Some(Telemetry { _private: () }))
}

/// Trace with a span processor of the caller's choosing instead of the OTLP exporter: for
/// embedding Switchyard in a process that has its own pipeline, and for tests that read
/// spans in memory. Once per process, instead of [`init`].
pub fn init_with_processor(
    processor: impl SpanProcessor + 'static,
    sample_ratio: f64,
    capture_content: bool,
) -> Result<(), String> {
    let resource = Resource::builder().with_service_name("switchyard").build();
    install(processor, resource, sample_ratio, capture_content, None)
}

fn install(
    mut processor: impl SpanProcessor + 'static,
    resource: Resource,
    sample_ratio: f64,
    capture_content: bool,
    flush: Option<mpsc::Sender<oneshot::Sender<()>>>,
) -> Result<(), String> {
    processor.set_resource(&resource);
    TRACING
        .set(Tracing {
            processor: Box::new(processor),
            sample_bound: sample_bound(sample_ratio),
            scope: InstrumentationScope::builder("switchyard")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            capture_content,
            flush,
        })
        .map_err(|_| "telemetry was already started".to_string())
}

/// The trace-id ratio sampler's threshold, as the SDK computes it: a root trace is sampled
/// when the low 63 bits of its id's last 8 bytes fall below `ratio * 2^63`.
fn sample_bound(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else {
        // Saturating float-to-int conversion; the ratio was validated to be in 0..=1.
        (ratio.max(0.0) * (1u64 << 63) as f64) as u64
    }
}

fn sampled_root(t: &Tracing, trace_id: TraceId) -> bool {
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    t.sample_bound == u64::MAX || (u64::from_be_bytes(low) >> 1) < t.sample_bound
}

/// Random, non-zero trace and span ids from a per-thread generator (SplitMix64 seeded from
/// the standard library's per-process random keys), as cheap as the SDK's.
fn random_u64() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x5377_6974_6368_7964);
            h.finish()
        });
    }
    STATE.with(|st| {
        loop {
            let x = st.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            st.set(x);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    })
}

fn new_span_id() -> SpanId {
    SpanId::from(random_u64())
}

/// The context of a new span under `parent`: same trace, flags and state, a new span id.
fn child_context(parent: &SpanContext) -> SpanContext {
    SpanContext::new(
        parent.trace_id(),
        new_span_id(),
        parent.trace_flags(),
        false,
        parent.trace_state().clone(),
    )
}

fn new_trace_id() -> TraceId {
    TraceId::from((u128::from(random_u64()) << 64) | u128::from(random_u64()))
}

/// A recording span: its record, started now, under `parent` (`SpanId::INVALID` for a root).
fn start_record(
    t: &Tracing,
    context: SpanContext,
    parent: SpanId,
    parent_is_remote: bool,
    name: Cow<'static, str>,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
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
        instrumentation_scope: t.scope.clone(),
    }
}

/// End a span now and hand it to the processor.
fn end_record(mut data: SpanData) {
    if let Some(t) = tracing_on() {
        data.end_time = SystemTime::now();
        t.processor.on_end(data);
    }
}

/// Whether `[telemetry] capture_content` allows recording prompts and answers.
pub fn capture_content() -> bool {
    tracing_on().is_some_and(|t| t.capture_content)
}

fn build_exporter(
    endpoint: &str,
    protocol: &str,
    resource: &Resource,
) -> Result<crate::otlp::Exporter, String> {
    let protocol = if protocol == "http" {
        crate::otlp::Protocol::HttpProtobuf
    } else {
        crate::otlp::Protocol::Grpc
    };
    crate::otlp::Exporter::new(endpoint, protocol, resource, EXPORT_TIMEOUT)
}

/// Export the queue when a batch is full, on a tick, and when asked to flush; never
/// touched by request handling.
async fn export_loop(
    exporter: crate::otlp::Exporter,
    queue: Arc<SpanQueue>,
    mut flush: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut tick = tokio::time::interval(EXPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let done = tokio::select! {
            asked = flush.recv() => match asked {
                Some(done) => Some(done),
                None => {
                    export_all(&exporter, &queue, &mut failing).await;
                    return;
                }
            },
            () = queue.batch_full.notified() => None,
            _ = tick.tick() => None,
        };
        export_all(&exporter, &queue, &mut failing).await;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// Export everything queued, [`MAX_BATCH`] spans per call.
async fn export_all(exporter: &crate::otlp::Exporter, queue: &SpanQueue, failing: &mut bool) {
    let mut spans = queue.take();
    while !spans.is_empty() {
        let rest = spans.split_off(spans.len().min(MAX_BATCH));
        export(exporter, &mut spans, &queue.metrics, failing).await;
        spans = rest;
    }
}

async fn export(
    exporter: &crate::otlp::Exporter,
    batch: &mut Vec<SpanData>,
    metrics: &Metrics,
    failing: &mut bool,
) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    let error = exporter.export(batch).await.err();
    batch.clear();
    match error {
        None => {
            metrics.spans_exported(n);
            if *failing {
                tracing::info!("OTLP export works again");
                *failing = false;
            }
        }
        Some(e) => {
            metrics.span_export_failed(n);
            // Once per outage, not once per batch.
            if !*failing {
                tracing::warn!(error = %e, spans = n, "OTLP export failed; spans are dropped until it recovers");
                *failing = true;
            }
        }
    }
}

/// An open span, or nothing when tracing is off or the trace is not sampled. Ends on drop.
#[derive(Debug, Default)]
pub struct Span(Option<SpanData>);

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(data) = self.0.take() {
            end_record(data);
        }
    }
}

impl Span {
    /// Whether attributes set on this span go anywhere (skip building costly values if not).
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(s) = &mut self.0 {
            set_attribute(&mut s.attributes, KeyValue::new(key, value));
        }
    }

    /// Mark the span failed with an `error.type` (a short, low-cardinality name).
    pub fn fail(&mut self, error_type: impl Into<Cow<'static, str>>) {
        if let Some(s) = &mut self.0 {
            let t = error_type.into();
            set_attribute(&mut s.attributes, KeyValue::new("error.type", t.clone()));
            s.status = Status::error(t);
        }
    }

    /// Record an event (a point in time) on the span.
    pub fn event(&mut self, name: &'static str) {
        if let Some(s) = &mut self.0 {
            s.events
                .events
                .push(Event::new(name, SystemTime::now(), Vec::new(), 0));
        }
    }

    pub fn end(self) {
        drop(self);
    }

    fn context(&self) -> Option<&SpanContext> {
        self.0.as_ref().map(|s| &s.span_context)
    }
}

/// Set an attribute, replacing an earlier value of the same key (as the SDK does).
fn set_attribute(attrs: &mut Vec<KeyValue>, kv: KeyValue) {
    match attrs.iter_mut().find(|a| a.key == kv.key) {
        Some(old) => *old = kv,
        None => attrs.push(kv),
    }
}

/// Reads W3C trace context from the client's request headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
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
    pub fn start(method: &http::Method, path: &'static str, headers: &HeaderMap) -> Self {
        let Some(t) = tracing_on() else {
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
        let parent = if headers.contains_key("traceparent") {
            TraceContextPropagator::new()
                .extract(&HeaderExtractor(headers))
                .span()
                .span_context()
                .clone()
        } else {
            SpanContext::empty_context()
        };
        // Parent-based sampling: follow the client's decision, else the ratio on a new id.
        let (trace_id, sampled, state) = if parent.is_valid() {
            (
                parent.trace_id(),
                parent.is_sampled(),
                parent.trace_state().clone(),
            )
        } else {
            let id = new_trace_id();
            (id, sampled_root(t, id), TraceState::NONE)
        };
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let cx = SpanContext::new(trace_id, new_span_id(), flags, false, state);
        let server = Span(sampled.then(|| {
            let mut attrs = Vec::with_capacity(10);
            attrs.push(KeyValue::new("http.request.method", method_name(method)));
            attrs.push(KeyValue::new("http.route", path));
            attrs.push(KeyValue::new("url.path", path));
            start_record(
                t,
                cx.clone(),
                parent.span_id(),
                parent.is_valid(),
                server_span_name(method, path),
                SpanKind::Server,
                attrs,
            )
        }));
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

    /// The trace id (32 hex digits) for the access log: the gateway's trace when tracing is
    /// on, else the client's `traceparent` if it sent one.
    pub fn trace_id(&self) -> Option<String> {
        match &self.cx {
            Some(sc) => sc.is_valid().then(|| sc.trace_id().to_string()),
            None => self.client_trace_id.as_deref().map(str::to_owned),
        }
    }

    /// Set an attribute on the request's server span.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.server.set(key, value);
    }

    /// Auth found the caller: its key id and team go in the access log and on the span.
    pub fn set_principal(&mut self, key_id: Arc<str>, team: Option<Arc<str>>) {
        self.set("switchyard.key_id", key_id.clone());
        if let Some(t) = &team {
            self.set("switchyard.team", t.clone());
        }
        self.key_id = Some(key_id);
        self.team = team;
    }

    /// The ledger priced the request.
    pub fn set_cost(&mut self, usd: f64) {
        self.set("switchyard.cost_usd", usd);
        self.cost_usd = Some(usd);
    }

    /// A child of the server span (recording only when the request is traced).
    fn child(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Span {
        match (&self.server.0, tracing_on()) {
            (Some(server), Some(t)) => {
                let p = &server.span_context;
                Span(Some(start_record(
                    t,
                    child_context(p),
                    p.span_id(),
                    false,
                    name.into(),
                    kind,
                    attributes,
                )))
            }
            _ => Span(None),
        }
    }

    /// End the server span with the status the client got.
    pub fn finish_span(
        &mut self,
        status: u16,
        route: &Arc<str>,
        backend: &Arc<str>,
        error: Option<&str>,
    ) {
        let Some(mut span) = self.server.0.take() else {
            return;
        };
        let attrs = &mut span.attributes;
        set_attribute(
            attrs,
            KeyValue::new("http.response.status_code", i64::from(status)),
        );
        set_attribute(attrs, KeyValue::new("switchyard.route", route.clone()));
        set_attribute(attrs, KeyValue::new("switchyard.backend", backend.clone()));
        if let Some(e) = error {
            set_attribute(attrs, KeyValue::new("error.type", e.to_owned()));
            if status >= 500 {
                span.status = Status::error(e.to_owned());
            }
        }
        end_record(span);
    }
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

/// `http.request.method` without allocating for the usual methods.
fn method_name(m: &http::Method) -> Value {
    const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"];
    match KNOWN.iter().find(|k| **k == m.as_str()) {
        Some(k) => Value::from(*k),
        None => Value::from(m.as_str().to_owned()),
    }
}

/// An INTERNAL child span of the request (auth, validation, a gateway phase).
pub fn child_span(t: &RequestTelemetry, name: &'static str) -> Span {
    t.child(name, SpanKind::Internal, Vec::new())
}

/// The span of one plugin call: named `plugin <name>`, with the plugin and its stage as
/// attributes. Record the outcome with `span.set("switchyard.plugin.outcome", "...")` and
/// `span.fail(kind)` on failure; feed `Metrics::plugin_call` with the duration.
pub fn plugin_span(t: &RequestTelemetry, plugin: &str, stage: &'static str) -> Span {
    if !t.is_tracing() {
        return Span(None);
    }
    t.child(
        format!("plugin {plugin}"),
        SpanKind::Internal,
        vec![
            KeyValue::new("switchyard.plugin.name", plugin.to_owned()),
            KeyValue::new("switchyard.plugin.stage", stage),
        ],
    )
}

/// A span for work done beside the request that must not hold its trace open (the shadow
/// call): a new trace root carrying a link to the request's span.
pub fn linked_span(t: &RequestTelemetry, name: impl Into<Cow<'static, str>>) -> Span {
    let (Some(server), Some(tr)) = (&t.server.0, tracing_on()) else {
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
        tr,
        cx,
        SpanId::INVALID,
        false,
        name.into(),
        SpanKind::Internal,
        Vec::new(),
    );
    data.links
        .links
        .push(Link::with_context(server.span_context.clone()));
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
    let mut span = t.child(
        "route",
        SpanKind::Internal,
        vec![
            KeyValue::new("switchyard.route", route.clone()),
            KeyValue::new("switchyard.backend", backend.clone()),
            KeyValue::new(
                "switchyard.upstream_model",
                upstream_model.map_or(Value::from(""), |m| Value::from(m.clone())),
            ),
        ],
    );
    if let Some(s) = &mut span.0 {
        s.start_time = started;
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
    request: &'a crate::openai::RequestBody,
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
        input: if capture_content() {
            request.raw(input_key)
        } else {
            None
        },
    }
}

/// What a complete answer said, from the probe the gateway read anyway: usage and model
/// always; id and finish reasons (and, with content capture, the raw `choices`) only when the
/// request is traced. An answer whose `choices` are not what OpenAI sends just yields no
/// finish reasons.
pub fn answer_facts(t: &RequestTelemetry, probe: crate::openai::ResponseProbe<'_>) -> AnswerFacts {
    let mut facts = AnswerFacts {
        response_model: probe.model,
        usage: probe.usage,
        ..AnswerFacts::default()
    };
    if !t.is_tracing() {
        return facts;
    }
    #[derive(serde::Deserialize)]
    struct Choice<'a> {
        #[serde(borrow, default)]
        finish_reason: Option<Cow<'a, str>>,
    }
    facts.response_id = probe.id.map(Cow::into_owned);
    if let Some(raw) = probe.choices {
        if let Ok(choices) = serde_json::from_str::<Vec<Choice<'_>>>(raw.get()) {
            facts.finish_reasons = choices
                .into_iter()
                .filter_map(|c| c.finish_reason.map(Cow::into_owned))
                .collect();
        }
        if capture_content() {
            facts.output = Some(raw.get().to_owned());
        }
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
pub struct Attempt {
    span: Span,
    /// For a request that is not sampled: the context the upstream gets, so it learns the
    /// decision.
    unsampled: Option<SpanContext>,
    started: Instant,
    operation: &'static str,
    model: Arc<str>,
    backend: Arc<str>,
}

impl Attempt {
    /// Open the span `chat <model>` (or `text_completion`/`embeddings <model>`).
    pub fn start(
        t: &RequestTelemetry,
        endpoint: Endpoint,
        backend: &Arc<str>,
        backend_url: &str,
        model: &Arc<str>,
        params: RequestParams<'_>,
    ) -> Attempt {
        let operation = endpoint.operation();
        let span = if t.is_tracing() {
            let (host, port) = host_port(backend_url);
            let mut attrs = Vec::with_capacity(10);
            attrs.push(KeyValue::new("gen_ai.operation.name", operation));
            attrs.push(KeyValue::new(
                "gen_ai.provider.name",
                provider_name(host, backend),
            ));
            attrs.push(KeyValue::new("gen_ai.request.model", model.clone()));
            attrs.push(KeyValue::new("server.address", host.to_owned()));
            if let Some(p) = port {
                attrs.push(KeyValue::new("server.port", i64::from(p)));
            }
            attrs.push(KeyValue::new("switchyard.backend", backend.clone()));
            if let Some(v) = params.max_tokens {
                attrs.push(KeyValue::new("gen_ai.request.max_tokens", v));
            }
            if let Some(v) = params.temperature {
                attrs.push(KeyValue::new("gen_ai.request.temperature", v));
            }
            if let Some(v) = params.top_p {
                attrs.push(KeyValue::new("gen_ai.request.top_p", v));
            }
            if let Some(i) = params.input
                && capture_content()
            {
                attrs.push(KeyValue::new("gen_ai.input.messages", i.to_owned()));
            }
            t.child(format!("{operation} {model}"), SpanKind::Client, attrs)
        } else {
            Span(None)
        };
        let unsampled = match (&span.0, &t.cx) {
            (None, Some(cx)) => Some(child_context(cx)),
            _ => None,
        };
        Attempt {
            span,
            unsampled,
            started: Instant::now(),
            operation,
            model: model.clone(),
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
            let s = &mut self.span;
            if let Some(m) = facts.response_model {
                s.set("gen_ai.response.model", m);
            }
            if let Some(id) = facts.response_id {
                s.set("gen_ai.response.id", id);
            }
            if !facts.finish_reasons.is_empty() {
                let v: Vec<opentelemetry::StringValue> =
                    facts.finish_reasons.into_iter().map(Into::into).collect();
                s.set(
                    "gen_ai.response.finish_reasons",
                    Value::Array(opentelemetry::Array::from(v)),
                );
            }
            if let Some(u) = facts.usage {
                s.set("gen_ai.usage.input_tokens", u.prompt_tokens as i64);
                s.set("gen_ai.usage.output_tokens", u.completion_tokens as i64);
            }
            if let Some(ft) = facts.first_token {
                s.set("gen_ai.server.time_to_first_token", ft.as_secs_f64());
            }
            if let Some(o) = facts.output
                && capture_content()
            {
                s.set("gen_ai.output.messages", o);
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

    /// The attempt's span, for extra attributes.
    pub fn span(&mut self) -> &mut Span {
        &mut self.span
    }
}

/// The W3C `traceparent` value of `sc`: `00-{trace id}-{span id}-{flags}` in lowercase hex
/// (written by hand: this runs on every upstream attempt).
fn traceparent(sc: &SpanContext) -> [u8; 55] {
    fn hex(out: &mut [u8], bytes: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xf)];
        }
    }
    let mut tp = [b'-'; 55];
    tp[..2].copy_from_slice(b"00");
    hex(&mut tp[3..35], &sc.trace_id().to_bytes());
    hex(&mut tp[36..52], &sc.span_id().to_bytes());
    hex(&mut tp[53..55], &[sc.trace_flags().to_u8()]);
    tp
}

/// Host and port of a backend base URL (`http://host:port/v1`).
fn host_port(url: &str) -> (&str, Option<u16>) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority
        .rsplit_once('@')
        .map(|(_, a)| a)
        .unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']').unwrap_or((v6, ""));
        return (h, p.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()),
        None => (authority, None),
    }
}

/// `gen_ai.provider.name`: the well-known value for known hosted APIs, else the backend's
/// name (a self-hosted OpenAI-compatible server has no registered provider name).
fn provider_name(host: &str, backend: &Arc<str>) -> Value {
    let known = [
        ("api.openai.com", "openai"),
        (".openai.azure.com", "azure.ai.openai"),
        ("api.anthropic.com", "anthropic"),
        ("api.mistral.ai", "mistral_ai"),
        ("api.groq.com", "groq"),
        ("api.deepseek.com", "deepseek"),
        ("api.x.ai", "x_ai"),
        ("generativelanguage.googleapis.com", "gcp.gemini"),
    ];
    for (suffix, name) in known {
        if host == suffix.trim_start_matches('.') || host.ends_with(suffix) {
            return Value::from(name);
        }
    }
    Value::from(backend.clone())
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
    fn host_and_port_of_backend_urls() {
        assert_eq!(
            host_port("http://127.0.0.1:9001/v1"),
            ("127.0.0.1", Some(9001))
        );
        assert_eq!(
            host_port("https://api.openai.com/v1"),
            ("api.openai.com", None)
        );
        assert_eq!(host_port("http://[::1]:8080/v1"), ("::1", Some(8080)));
    }

    #[test]
    fn traceparent_is_w3c_lowercase_hex() {
        let sc = SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
            SpanId::from(0xb7ad6b7169203331_u64),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        assert_eq!(
            &traceparent(&sc)[..],
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let unsampled = SpanContext::new(
            TraceId::from(1_u128),
            SpanId::from(2_u64),
            TraceFlags::default(),
            false,
            TraceState::NONE,
        );
        assert_eq!(
            &traceparent(&unsampled)[..],
            b"00-00000000000000000000000000000001-0000000000000002-00"
        );
    }

    #[test]
    fn provider_names() {
        let b: Arc<str> = Arc::from("local");
        assert_eq!(provider_name("api.openai.com", &b), Value::from("openai"));
        assert_eq!(
            provider_name("myres.openai.azure.com", &b),
            Value::from("azure.ai.openai")
        );
        assert_eq!(provider_name("10.0.0.7", &b), Value::from("local"));
    }

    #[test]
    fn telemetry_keys_are_validated_with_their_paths() {
        let text = "[telemetry]\notlp_protocol = \"udp\"\nsample_ratio = 2.0\nlog_format = \"xml\"\ncapture_content = true\n";
        let err = crate::config::load_str(text, crate::config::ConfigSource::Embedded)
            .expect_err("three problems");
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"telemetry.otlp_protocol"), "{err}");
        assert!(paths.contains(&"telemetry.sample_ratio"), "{err}");
        assert!(paths.contains(&"telemetry.log_format"), "{err}");
        let ok = crate::config::load_str(
            "[[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:1/v1\"\n[[routes]]\nmodel = \"m\"\ntargets = [{ backend = \"b\" }]\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\notlp_protocol = \"http\"\ncapture_content = true\nlog_format = \"json\"\n",
            crate::config::ConfigSource::Embedded,
        )
        .expect("valid");
        let t = ok.telemetry.expect("telemetry");
        assert!(t.capture_content);
        assert_eq!(t.log_format, LogFormat::Json);
    }

    #[test]
    fn log_format_names() {
        assert_eq!(LogFormat::parse("json"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("yaml"), None);
    }

    #[test]
    fn spans_are_inert_without_an_exporter() {
        let t = RequestTelemetry::start(
            &http::Method::POST,
            "/v1/chat/completions",
            &HeaderMap::new(),
        );
        let mut s = plugin_span(&t, "pii", "adapt");
        assert!(!s.is_recording());
        s.set("x", 1);
        let mut h = HeaderMap::new();
        let b: Arc<str> = Arc::from("b");
        let a = Attempt::start(
            &t,
            Endpoint::ChatCompletions,
            &b,
            "http://h:1/v1",
            &b,
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
        let t = RequestTelemetry::start(&http::Method::POST, "/v1/chat/completions", &h);
        assert_eq!(
            t.trace_id().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }
}
