//! Shadow traffic: mirror a sample of a route's requests to another target, compare the
//! answers, record the pairs.
//!
//! ```text
//! request path:  served answer ─► sample? ─► try_send(job) onto a bounded queue ─► done
//!                                             (full: job dropped, counted)
//! background:    queue ─► shadow request (≤ 64 at once, I/O only, on the shadow-calls
//!                thread at background priority) ─► store channel
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
//!
//! With `shadow.judge`, a sample of the pairs whose both answers are in is scored by an LLM
//! judge in the same background task (reference = the served answer, answer = the
//! shadow's); the score and reason are stored with the pair, observed on
//! `switchyard_shadow_judge_score`, and the judge call is a ledger row of kind `judge`.

pub mod compare;
pub mod report;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};

use super::governance::{Governance, ShadowCall};
use super::judge;
use super::observe::telemetry::{self, SpanParent};
use super::upstream::{Upstream, client};
use crate::base::Endpoint;
use crate::base::error::snippet;
use crate::base::openai::RequestBody;
use crate::config::{Route, Runtime, Shadow, ShadowJudge, Target};

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
    /// Mirrors accepted and not yet handed to the store (or dropped): what a shutdown
    /// waits for before the store closes.
    pub pending: AtomicU64,
    /// Judge scores by (route, shadow backend).
    pub judge: std::sync::Mutex<std::collections::BTreeMap<(String, String), JudgeHistogram>>,
}

/// `switchyard_shadow_judge_score`: buckets at each whole score 1..=10.
#[derive(Debug, Default, Clone)]
pub struct JudgeHistogram {
    /// `le` = 1, 2, …, 10 (cumulative when rendered).
    pub buckets: [u64; 10],
    pub sum: f64,
    pub count: u64,
}

impl JudgeHistogram {
    pub fn observe(&mut self, score: f64) {
        if let Some(i) = (0..10).find(|i| score <= (i + 1) as f64) {
            self.buckets[i] += 1;
        }
        self.sum += score;
        self.count += 1;
    }
}

/// The mirror queue, owned by the gateway's services; its background task and the store
/// thread run until the process ends.
pub struct ShadowEngine {
    tx: tokio::sync::mpsc::Sender<Job>,
    stats: Arc<Stats>,
}

/// One mirrored request, waiting to be sent.
struct Job {
    route: Arc<str>,
    endpoint: Endpoint,
    /// The config version the mirrored request ran under (it prices the shadow call).
    config: Arc<Runtime>,
    upstream: Arc<Upstream>,
    model: Arc<str>,
    body: Bytes,
    headers: HeaderMap,
    stream: bool,
    primary_backend: Arc<str>,
    primary_model: String,
    served: Served,
    primary_latency: Duration,
    at: SystemTime,
    /// The shadow call's span: its own trace, linked to the request's span.
    span: telemetry::Span,
    /// The judge and its live backend, when the route's shadow has one.
    judge: Option<(ShadowJudge, Arc<Upstream>)>,
}

/// The served answer, as the shadow job gets it.
pub enum Served {
    /// A complete answer's body.
    Complete(Option<Bytes>),
    /// A stream: its frames arrive when it ends.
    Stream(tokio::sync::oneshot::Receiver<StreamServed>),
}

/// A served stream, once it ended.
#[derive(Debug, Clone)]
pub struct StreamServed {
    /// The whole event stream, when it completed.
    pub sse: Option<Bytes>,
    /// From the request's start to the stream's end.
    pub took: Duration,
}

/// Where a served stream delivers its copy (to the shadow job, the capture job, or both);
/// shared by the attempts of one request (only the one that gets served uses it).
pub type CaptureSlot = Arc<std::sync::Mutex<Vec<tokio::sync::oneshot::Sender<StreamServed>>>>;

/// A capture slot and the receiving end for the shadow job.
pub fn capture_channel() -> (CaptureSlot, tokio::sync::oneshot::Receiver<StreamServed>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    (Arc::new(std::sync::Mutex::new(vec![tx])), rx)
}

/// Another receiver of the served stream's copy on `slot`.
pub fn also_deliver(slot: &CaptureSlot) -> tokio::sync::oneshot::Receiver<StreamServed> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if let Ok(mut g) = slot.lock() {
        g.push(tx);
    }
    rx
}

/// One mirrored request, as the request path hands it over.
pub struct Mirror<'a> {
    pub route: &'a Route,
    pub shadow: &'a Shadow,
    /// The shadow target's live backend (of the request's config version).
    pub upstream: Arc<Upstream>,
    pub config: Arc<Runtime>,
    pub endpoint: Endpoint,
    pub request: &'a RequestBody,
    pub headers: &'a HeaderMap,
    pub served_by: &'a Target,
    pub served: Served,
    pub primary_latency: Duration,
    pub trace: &'a SpanParent,
    /// The judge's live backend (of the request's config version), when `shadow.judge` is set.
    pub judge_upstream: Option<Arc<Upstream>>,
}

impl ShadowEngine {
    /// Start the mirror queue and the store writer. Pairs go to `store_path`; each shadow
    /// call is also a ledger row when `governance` is on.
    pub fn start(store_path: PathBuf, governance: Option<Arc<Governance>>) -> ShadowEngine {
        let stats = Arc::new(Stats::default());
        let store_tx = store::spawn_writer(store_path, stats.clone(), governance);
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let dispatch_stats = stats.clone();
        // Shadow and judge calls run on a thread of their own at background priority, with
        // connections of their own: a mirrored call never takes a core or a pooled
        // connection from a served request. When the CPU is saturated they fall behind, the
        // queue fills and samples are dropped and counted, which is the right trade for
        // traffic nobody waits for.
        let spawned = std::thread::Builder::new()
            .name("shadow-calls".into())
            .spawn(move || {
                let _ = switchyard_otlp::pipeline::lower_thread_priority();
                crate::base::shard::enter(crate::base::shard::BACKGROUND);
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(dispatch(rx, store_tx, dispatch_stats)),
                    Err(e) => tracing::error!(error = %e, "cannot start the shadow call runtime; shadow requests will not be sent"),
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the shadow call thread; shadow requests will not be sent");
        }
        ShadowEngine { tx, stats }
    }

    /// Is this request mirrored? One draw.
    pub fn sampled(&self, shadow: &Shadow) -> bool {
        shadow.sample >= 1.0 || fastrand::f64() < shadow.sample
    }

    /// Mirror this (sampled) request to the route's shadow. Never waits.
    pub fn mirror(&self, m: Mirror<'_>) {
        let shadow = m.shadow;
        let model: Arc<str> = Arc::from(shadow.target.upstream_model(&m.request.model));
        let mut span = telemetry::linked_span(
            m.trace,
            format!("shadow {} {model}", m.endpoint.operation()),
        );
        if span.is_recording() {
            span.set("switchyard.route", &m.route.name);
            span.set("switchyard.backend", &shadow.target.backend.name);
            span.set("gen_ai.request.model", &model);
        }
        let job = Job {
            route: m.route.name.clone(),
            endpoint: m.endpoint,
            config: m.config,
            upstream: m.upstream,
            body: m.request.upstream_body(&model, m.request.stream),
            model,
            headers: m.headers.clone(),
            stream: m.request.stream,
            primary_backend: m.served_by.backend.name.clone(),
            primary_model: m.served_by.upstream_model(&m.request.model).to_string(),
            served: m.served,
            primary_latency: m.primary_latency,
            at: SystemTime::now(),
            span,
            judge: shadow.judge.clone().zip(m.judge_upstream),
        };
        // Counted before the hand-over: the writer may finish the pair before `try_send`
        // returns.
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => {
                self.stats.mirrored.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.pending.fetch_sub(1, Ordering::Relaxed);
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Mirrors accepted whose pair has not reached the store yet (calls in flight, pairs
    /// waiting for their batch).
    pub fn pending(&self) -> u64 {
        self.stats.pending.load(Ordering::Relaxed)
    }

    /// Prometheus lines for the shadow counters.
    pub fn render_metrics(&self, out: &mut String) {
        render_stats(&self.stats, out);
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
                stats.pending.fetch_sub(1, Ordering::Relaxed);
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
    config: Arc<Runtime>,
    /// The judge call, for its ledger row.
    judge_call: Option<JudgeCall>,
}

/// One judge call, as the ledger records it.
struct JudgeCall {
    backend: String,
    model: String,
    tokens_in: u64,
    tokens_out: u64,
    latency_ms: f64,
    status: Option<u16>,
    failed: bool,
}

/// Send one shadow request and wait for the served answer to be complete.
async fn run(mut job: Job) -> Finished {
    let served = std::mem::replace(&mut job.served, Served::Complete(None));
    let config = job.config.clone();
    let judge_job = job
        .judge
        .take()
        .filter(|(j, _)| j.sample >= 1.0 || fastrand::f64() < j.sample)
        .map(|j| (j, job.body.clone()));
    let mut span = std::mem::take(&mut job.span);
    // The gateway's own trace context, set on the request after the client's headers are
    // filtered (a backend's `forward_headers` need not list `traceparent`).
    let mut trace = http::HeaderMap::new();
    span.inject(&mut trace);
    let (mut pair, shadow) = ask_shadow(job, trace).await;
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
    let judge_call = match (judge_job, &served, &shadow) {
        (Some(((j, up), request)), Some(s), Some(sh)) => {
            Some(judge_pair(&j, &up, &request, (s, sh), &mut pair).await)
        }
        _ => None,
    };
    Finished {
        pair,
        served,
        shadow,
        config,
        judge_call,
    }
}

/// Ask the judge to score the shadow's answer against the served one; the verdict goes on
/// the pair. Only pairs whose both answers are in are judged.
async fn judge_pair(
    j: &ShadowJudge,
    up: &Upstream,
    request: &Bytes,
    (served, shadow): (&Bytes, &Bytes),
    pair: &mut store::Pair,
) -> JudgeCall {
    let text = |b: &[u8]| {
        if pair.stream {
            Some(compare::extract_stream(b).answer_text())
        } else {
            compare::extract(b).map(|x| x.answer_text())
        }
    };
    let model = j.target.model.as_deref().unwrap_or_default().to_string();
    let mut call = JudgeCall {
        backend: j.target.backend.name.to_string(),
        model: model.clone(),
        tokens_in: 0,
        tokens_out: 0,
        latency_ms: 0.0,
        status: None,
        failed: true,
    };
    let (Some(reference), Some(answer)) = (text(served), text(shadow)) else {
        pair.judge_error = Some("an answer could not be read".into());
        return call;
    };
    let question = question_of(request);
    let prompt = judge::render(&j.rubric, &question, &reference, &answer);
    match judge::call(
        up,
        crate::base::Endpoint::ChatCompletions,
        judge::request_body(&model, &prompt),
        &HeaderMap::new(),
    )
    .await
    {
        Err(e) => pair.judge_error = Some(e),
        Ok(c) => {
            call.status = Some(c.status);
            call.latency_ms = c.latency_ms;
            match judge::answer_text(&c.body) {
                Err(e) => pair.judge_error = Some(e),
                Ok((reply, usage)) => {
                    if let Some(u) = usage {
                        call.tokens_in = u.prompt_tokens;
                        call.tokens_out = u.completion_tokens;
                    }
                    call.failed = false;
                    match judge::parse_verdict(&reply) {
                        Ok(v) => {
                            pair.judge_score = Some(v.score);
                            pair.judge_reason = Some(v.reason);
                        }
                        Err(e) => pair.judge_error = Some(e),
                    }
                }
            }
        }
    }
    call
}

/// The last user message of a chat request (the question the judge is shown).
fn question_of(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    let Some(msgs) = v["messages"].as_array() else {
        return v["prompt"].as_str().unwrap_or_default().to_string();
    };
    msgs.iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| match &m["content"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        })
        .unwrap_or_default()
}

/// Parse both answers and compare them: the row to store. The shadow call's ledger row is
/// written too (with `governance`).
pub fn finish(f: Finished, stats: &Stats, governance: Option<&Governance>) -> store::Pair {
    let Finished {
        mut pair,
        served,
        shadow,
        config,
        judge_call,
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
                pair.shadow_error = Some(format!("not a JSON answer: {}", snippet(bytes, 120)));
            }
            Some(sx) => {
                pair.shadow_answer = Some(sx.answer_text());
                pair.shadow_prompt_tokens = sx.prompt_tokens;
                pair.shadow_completion_tokens = sx.completion_tokens;
            }
        }
    }
    if let Some(p) = &primary {
        pair.primary_answer = Some(p.answer_text());
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
    if let Some(g) = governance {
        g.record_shadow(
            &config,
            ShadowCall {
                route: &pair.route,
                backend: &pair.shadow_backend,
                model: &pair.shadow_model,
                ts_ms: pair.ts_ms,
                stream: pair.stream,
                status: pair.shadow_status,
                tokens_in: pair.shadow_prompt_tokens.unwrap_or(0),
                tokens_out: pair.shadow_completion_tokens.unwrap_or(0),
                latency_ms: pair.shadow_latency_ms.unwrap_or(0.0),
                failed: pair.shadow_error.is_some(),
                agreed: pair.comparison.as_ref().map(|c| c.agree),
            },
        );
        if let Some(j) = &judge_call {
            g.record_judge(
                &config,
                ShadowCall {
                    route: &pair.route,
                    backend: &j.backend,
                    model: &j.model,
                    ts_ms: pair.ts_ms,
                    stream: false,
                    status: j.status,
                    tokens_in: j.tokens_in,
                    tokens_out: j.tokens_out,
                    latency_ms: j.latency_ms,
                    failed: j.failed,
                    agreed: None,
                },
            );
        }
    }
    if let Some(score) = pair.judge_score
        && let Ok(mut h) = stats.judge.lock()
    {
        h.entry((pair.route.clone(), pair.shadow_backend.clone()))
            .or_default()
            .observe(score);
    }
    pair
}

/// Send the shadow request and read its answer.
async fn ask_shadow(job: Job, trace: http::HeaderMap) -> (store::Pair, Option<Bytes>) {
    let backend = &job.upstream.backend;
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
    let idx = job.upstream.pick(&[], Instant::now()).unwrap_or(0);
    let Some(url) = backend.urls.get(idx) else {
        pair.shadow_error = Some("backend has no URL".into());
        return (pair, None);
    };
    let req = match client::build_request(backend, url.uri(job.endpoint), job.body, &job.headers) {
        Ok(mut r) => {
            r.headers_mut().extend(trace);
            r
        }
        Err(e) => {
            pair.shadow_error = Some(e.to_string());
            return (pair, None);
        }
    };
    let sent = Instant::now();
    let resp = match client::send(&job.upstream, url, req).await {
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
            snippet(&bytes, 200)
        ));
        return (pair, None);
    }
    (pair, Some(bytes))
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_stats(s: &Stats, out: &mut String) {
    use std::fmt::Write;
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
    let hist = s.judge.lock().map(|h| h.clone()).unwrap_or_default();
    out.push_str("# HELP switchyard_shadow_judge_score The shadow judge's scores (1-10) of shadow answers against the served ones, by route and shadow backend.\n# TYPE switchyard_shadow_judge_score histogram\n");
    for ((route, backend), h) in &hist {
        let labels = format!(
            "route=\"{}\",backend=\"{}\"",
            escape_label(route),
            escape_label(backend)
        );
        let mut cum = 0;
        for (i, n) in h.buckets.iter().enumerate() {
            cum += n;
            let _ = writeln!(
                out,
                "switchyard_shadow_judge_score_bucket{{{labels},le=\"{}\"}} {cum}",
                i + 1
            );
        }
        let _ = writeln!(
            out,
            "switchyard_shadow_judge_score_bucket{{{labels},le=\"+Inf\"}} {}\nswitchyard_shadow_judge_score_sum{{{labels}}} {}\nswitchyard_shadow_judge_score_count{{{labels}}} {}",
            h.count, h.sum, h.count
        );
    }
}
