//! Shadow traffic: mirror a sample of a route's requests to another target, compare the
//! answers, record the pairs.
//!
//! ```text
//! request path:  served answer ─► sample? ─► try_send(job) onto a bounded queue ─► done
//!                                             (full: job dropped, counted)
//! background:    queue ─► shadow request (≤ 64 at once, I/O only) ─► store channel
//!                store thread ─► parse, compare, validate ─► SQLite `shadow_pairs`,
//!                one transaction per batch
//! ```
//!
//! The served answer is never delayed or altered: the request path does one random draw
//! and one non-blocking channel send, after the answer is known. The shadow request is
//! I/O on background tasks; everything that costs CPU (JSON parsing, the quadratic
//! similarity, the validate verdict, SQLite) runs on the store's own thread, never on the
//! runtime threads that serve requests. For a sampled streamed request the served stream keeps a copy of its
//! frames (only that request, only while it streams) and hands it to the shadow job when
//! it ends, so streamed answers are compared too; a stream that did not complete is
//! recorded without a comparison.

pub mod compare;
pub mod report;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};

use crate::config::{Endpoint, Route, Runtime, Shadow, Target};
use crate::openai::RequestBody;
use crate::{router, upstream};

/// Jobs waiting for a shadow request; beyond this, mirrors are dropped (and counted).
const QUEUE: usize = 1024;
/// Shadow requests in flight at once.
const CONCURRENCY: usize = 64;
/// Largest shadow answer read.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Counters exported on /metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub mirrored: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_store_full: AtomicU64,
    pub failed: AtomicU64,
    pub recorded: AtomicU64,
    pub store_errors: AtomicU64,
}

struct Engine {
    tx: tokio::sync::mpsc::Sender<Job>,
    stats: Arc<Stats>,
}

static ENGINE: OnceLock<Engine> = OnceLock::new();

/// One mirrored request, waiting to be sent.
struct Job {
    route: Arc<str>,
    endpoint: Endpoint,
    target: Target,
    model: Arc<str>,
    body: Bytes,
    headers: HeaderMap,
    stream: bool,
    primary_backend: Arc<str>,
    primary_model: String,
    served: Served,
    primary_latency: Duration,
    at: SystemTime,
    validator: Option<Validator>,
    /// The shadow call's span: its own trace, linked to the request's span.
    span: crate::telemetry::Span,
}

type Validator = Arc<Box<dyn crate::attempt::Validate>>;

/// The served answer, as the shadow job gets it.
pub enum Served {
    /// A complete answer's body.
    Complete(Option<Bytes>),
    /// A stream: its frames arrive when it ends.
    Stream(tokio::sync::oneshot::Receiver<StreamServed>),
}

/// A served stream, once it ended.
#[derive(Debug)]
pub struct StreamServed {
    /// The whole event stream, when it completed.
    pub sse: Option<Bytes>,
    /// From the request's start to the stream's end.
    pub took: Duration,
}

/// Where a served stream delivers its copy; shared by the attempts of one request (only
/// the one that gets served uses it).
pub type CaptureSlot = Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<StreamServed>>>>;

/// A capture slot and the receiving end for the shadow job.
pub fn capture_channel() -> (CaptureSlot, tokio::sync::oneshot::Receiver<StreamServed>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    (Arc::new(std::sync::Mutex::new(Some(tx))), rx)
}

/// Is this request mirrored? One draw; `false` when the shadow engine is not running.
pub fn sampled(shadow: &Shadow) -> bool {
    ENGINE.get().is_some() && (shadow.sample >= 1.0 || fastrand::f64() < shadow.sample)
}

/// Start the mirror queue and the store writer (once per process). Pairs go to
/// `[state] path` (default `switchyard.db`) as it is at start.
pub fn start(rt: &Runtime) {
    if ENGINE.get().is_some() {
        return;
    }
    let path = rt
        .state
        .as_ref()
        .map(|s| s.path.clone())
        .unwrap_or_else(|| std::path::PathBuf::from(store::DEFAULT_PATH));
    let stats = Arc::new(Stats::default());
    let store_tx = store::spawn_writer(path, stats.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    tokio::spawn(dispatch(rx, store_tx, stats.clone()));
    let _ = ENGINE.set(Engine { tx, stats });
}

/// Mirror this (sampled) request to the route's shadow. Never waits.
#[allow(clippy::too_many_arguments)]
pub fn mirror(
    route: &Route,
    shadow: &Shadow,
    endpoint: Endpoint,
    request: &RequestBody,
    headers: &HeaderMap,
    served_by: &Target,
    served: Served,
    primary_latency: Duration,
    validator: Option<Validator>,
    trace: &crate::telemetry::SpanParent,
) {
    let Some(engine) = ENGINE.get() else { return };
    let model: Arc<str> = Arc::from(router::upstream_model(&shadow.target, &request.model));
    let mut span =
        crate::telemetry::linked_span(trace, format!("shadow {} {model}", endpoint.operation()));
    if span.is_recording() {
        span.set("switchyard.route", &route.name);
        span.set("switchyard.backend", &shadow.target.backend.name);
        span.set("gen_ai.request.model", &model);
    }
    let job = Job {
        route: route.name.clone(),
        endpoint,
        target: shadow.target.clone(),
        body: request.upstream_body(&model, request.stream),
        model,
        headers: headers.clone(),
        stream: request.stream,
        primary_backend: served_by.backend.name.clone(),
        primary_model: router::upstream_model(served_by, &request.model).to_string(),
        served,
        primary_latency,
        at: SystemTime::now(),
        validator,
        span,
    };
    match engine.tx.try_send(job) {
        Ok(()) => {
            engine.stats.mirrored.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            engine
                .stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn dispatch(
    mut rx: tokio::sync::mpsc::Receiver<Job>,
    store: std::sync::mpsc::SyncSender<Finished>,
    stats: Arc<Stats>,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    while let Some(job) = rx.recv().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let store = store.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let finished = run(job).await;
            if store.try_send(finished).is_err() {
                stats.dropped_store_full.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
}

/// A mirrored exchange whose answers are in, to be compared and stored (on the store
/// thread: parsing and comparing cost CPU the serving threads should not give up).
pub struct Finished {
    pair: store::Pair,
    served: Option<Bytes>,
    shadow: Option<Bytes>,
    validator: Option<Validator>,
    target: Target,
}

/// Send one shadow request and wait for the served answer to be complete.
async fn run(mut job: Job) -> Finished {
    let served = std::mem::replace(&mut job.served, Served::Complete(None));
    let validator = job.validator.take();
    let target = job.target.clone();
    let mut span = std::mem::take(&mut job.span);
    span.inject(&mut job.headers);
    let (mut pair, shadow) = ask_shadow(job).await;
    if let Some(status) = pair.shadow_status {
        span.set("http.response.status_code", i64::from(status));
    }
    if pair.shadow_error.is_some() {
        span.fail("shadow_failed");
    }
    // Ends when the shadow's answer is in, not with the request it mirrors.
    span.end();
    // The served side, once it is complete (a stream may still be running).
    let served = match served {
        Served::Complete(b) => b,
        Served::Stream(rx) => match tokio::time::timeout(Duration::from_secs(3600), rx).await {
            Ok(Ok(s)) => {
                pair.primary_latency_ms = s.took.as_secs_f64() * 1000.0;
                s.sse
            }
            _ => None,
        },
    };
    Finished {
        pair,
        served,
        shadow,
        validator,
        target,
    }
}

/// Parse both answers, compare them, ask the validator: the row to store.
pub fn finish(f: Finished, stats: &Stats) -> store::Pair {
    let Finished {
        mut pair,
        served,
        shadow,
        validator,
        target,
    } = f;
    let extract = |b: &[u8]| {
        if pair.stream {
            Some(compare::extract_stream(b))
        } else {
            compare::extract(b)
        }
    };
    let primary = served.as_deref().and_then(extract);
    let shadow_x = shadow.as_deref().and_then(extract);
    if let Some(bytes) = &shadow {
        match &shadow_x {
            None => {
                pair.shadow_error = Some(format!(
                    "not a JSON answer: {}",
                    crate::error::snippet(bytes, 120)
                ));
            }
            Some(sx) => {
                if let Some(v) = &validator {
                    // The validate plugins' verdict on the shadow answer: would it have been served?
                    pair.validate_verdict = Some(match v.validate(&target, bytes) {
                        crate::attempt::Verdict::Accept => "accept".to_string(),
                        crate::attempt::Verdict::Reject(why) => format!("reject: {why}"),
                    });
                }
                pair.shadow_answer = Some(sx.text.clone());
                pair.shadow_prompt_tokens = sx.prompt_tokens;
                pair.shadow_completion_tokens = sx.completion_tokens;
            }
        }
    }
    if let Some(p) = &primary {
        pair.primary_answer = Some(p.text.clone());
        pair.primary_prompt_tokens = p.prompt_tokens;
        pair.primary_completion_tokens = p.completion_tokens;
        if let Some(s) = &shadow_x {
            pair.comparison = Some(compare::compare(p, s));
        }
    }
    if pair.shadow_error.is_some() {
        stats.failed.fetch_add(1, Ordering::Relaxed);
    }
    // The shadow call is a ledger row too, priced at the shadow target, now that its
    // answer has been parsed (here, on the store thread, off the serving threads).
    crate::governance::record_shadow(&pair);
    pair
}

/// Send the shadow request and read its answer.
async fn ask_shadow(job: Job) -> (store::Pair, Option<Bytes>) {
    let backend = &job.target.backend;
    let mut pair = store::Pair {
        ts_ms: job
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        route: job.route.to_string(),
        endpoint: job.endpoint.operation().to_string(),
        stream: job.stream,
        primary_backend: job.primary_backend.to_string(),
        primary_model: job.primary_model.clone(),
        shadow_backend: backend.name.to_string(),
        shadow_model: job.model.to_string(),
        primary_latency_ms: job.primary_latency.as_secs_f64() * 1000.0,
        ..store::Pair::default()
    };
    let idx = backend.pool.pick(&[], Instant::now()).unwrap_or(0);
    let Some(url) = backend.urls.get(idx) else {
        pair.shadow_error = Some("backend has no URL".into());
        return (pair, None);
    };
    let req = match upstream::build_request(backend, url.uri(job.endpoint), job.body, &job.headers)
    {
        Ok(r) => r,
        Err(e) => {
            pair.shadow_error = Some(e.to_string());
            return (pair, None);
        }
    };
    let sent = Instant::now();
    let resp = match upstream::send(backend, url, req).await {
        Ok(r) => r,
        Err(e) => {
            pair.shadow_error = Some(e.to_string());
            return (pair, None);
        }
    };
    let status = resp.status();
    pair.shadow_status = Some(status.as_u16());
    let read = tokio::time::timeout(
        backend.timeout,
        Limited::new(resp.into_body(), MAX_ANSWER).collect(),
    )
    .await;
    let bytes = match read {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) => {
            pair.shadow_error = Some(format!("reading the answer: {e}"));
            return (pair, None);
        }
        Err(_) => {
            pair.shadow_error = Some("timed out reading the answer".into());
            return (pair, None);
        }
    };
    pair.shadow_latency_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
    if !status.is_success() {
        pair.shadow_error = Some(format!(
            "HTTP {}: {}",
            status.as_u16(),
            crate::error::snippet(&bytes, 200)
        ));
        return (pair, None);
    }
    (pair, Some(bytes))
}

/// Prometheus lines for the shadow counters.
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write;
    let Some(e) = ENGINE.get() else { return };
    let s = &e.stats;
    let _ = write!(
        out,
        "# HELP switchyard_shadow_mirrored_total Requests mirrored to a shadow target.\n# TYPE switchyard_shadow_mirrored_total counter\nswitchyard_shadow_mirrored_total {}\n\
# HELP switchyard_shadow_dropped_total Mirrors dropped, by reason (the served answer is never affected).\n# TYPE switchyard_shadow_dropped_total counter\nswitchyard_shadow_dropped_total{{reason=\"queue_full\"}} {}\nswitchyard_shadow_dropped_total{{reason=\"store_full\"}} {}\n\
# HELP switchyard_shadow_failed_total Shadow requests that failed (error, timeout, bad answer).\n# TYPE switchyard_shadow_failed_total counter\nswitchyard_shadow_failed_total {}\n\
# HELP switchyard_shadow_recorded_total Shadow pairs written to the store.\n# TYPE switchyard_shadow_recorded_total counter\nswitchyard_shadow_recorded_total {}\n\
# HELP switchyard_shadow_store_errors_total Failed writes of shadow pairs.\n# TYPE switchyard_shadow_store_errors_total counter\nswitchyard_shadow_store_errors_total {}\n",
        s.mirrored.load(Ordering::Relaxed),
        s.dropped_queue_full.load(Ordering::Relaxed),
        s.dropped_store_full.load(Ordering::Relaxed),
        s.failed.load(Ordering::Relaxed),
        s.recorded.load(Ordering::Relaxed),
        s.store_errors.load(Ordering::Relaxed),
    );
}
