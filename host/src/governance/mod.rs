//! Governance on the request path: who is calling, may they, and what did it cost.
//!
//! Three calls from `proxy`, in this order:
//! 1. [`authenticate`] before the body is read: the caller's virtual key (401 otherwise);
//! 2. [`admit`] once the request is parsed and routed, before any upstream sees it: tags,
//!    the token and cost estimate, and the rate-limit and budget reservation (429 otherwise);
//! 3. [`settle`] (through a [`settler`] captured for streams) when the answer ends, however
//!    it ends (complete, error, end of stream, client gone): the ledger row with the real
//!    usage (or an estimate, marked as such) and the correction of the reservations to the
//!    real tokens and cost.
//!
//! Token estimates where an upstream reports no usage: the prompt counted with the model's
//! tokenizer for OpenAI models, else `ceil(bytes / 4)` of the body sent upstream (see
//! [`tokens`]); for completions the number of content-bearing stream events (OpenAI streams
//! one token per event), or the generated text of a complete answer counted the same way as
//! a prompt. Rows with estimates have `estimated = 1`. Reservations at admission always use
//! the byte estimate of the whole body, which is cheap and errs high.

pub mod admin;
pub mod cli;
pub mod config;
pub mod tokens;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;

use crate::auth::{self, KeyCache, KeyRecord};
use crate::config::Runtime;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::ledger::{self, Row};
use crate::limits::{self, Check, Held, Limiter, What};
use crate::openai::{RequestBody, Usage};
use crate::proxy::RequestCtx;
use crate::sse::{StreamOutcome, StreamSummary};
use crate::store::Store;

/// Request header carrying comma-separated tags for the ledger.
pub const HEADER_TAGS: &str = "x-switchyard-tags";
/// Default `[state] path`.
pub const DEFAULT_STORE: &str = "switchyard.db";
const MAX_TAGS: usize = 16;
const MAX_TAG_LEN: usize = 64;

/// Process-wide governance state beside the config.
pub struct Governance {
    pub store: Arc<Store>,
    pub keys: Arc<KeyCache>,
    pub limiter: Arc<Limiter>,
    refused_auth: AtomicU64,
    refused_rate: AtomicU64,
    refused_budget: AtomicU64,
}

/// What governance knows about one request.
#[derive(Debug, Default)]
pub struct Account {
    pub key: Option<Arc<KeyRecord>>,
    pub tags: Vec<String>,
    pub stream: bool,
    /// Prompt tokens estimated from the body sent upstream.
    pub prompt_estimate: u64,
    /// The client's body (a reference-counted handle), tokenized only if usage is missing.
    body: Option<bytes::Bytes>,
    endpoint: Option<crate::config::Endpoint>,
    /// Token and budget reservations to correct at the end.
    held_tokens: Vec<(Held, i64)>,
    held_budget: Vec<(Held, i64)>,
    /// Usage read from a complete answer.
    pub usage: Option<Usage>,
    /// Completion tokens estimated from a complete answer without usage.
    pub completion_estimate: Option<u64>,
    /// Which attempt answered (or failed last): primary, retry or fallback.
    pub kind: ledger::Kind,
    settled: bool,
}

/// The store file of a config: `[state] path`, else `switchyard.db` in the working folder.
pub fn store_path(rt: &Runtime) -> PathBuf {
    rt.state
        .as_ref()
        .map(|s| s.path.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE))
}

impl Governance {
    /// Open the store, load keys, connect the limiter, seed budgets, refuse unsafe setups.
    pub async fn start(rt: &Runtime) -> Result<Arc<Governance>, String> {
        let path = store_path(rt);
        let store = Store::open(&path, crate::store::DEFAULT_QUEUE).map_err(|e| e.to_string())?;
        let keys = KeyCache::open(&path).map_err(|e| e.to_string())?;
        let gov_cfg = &rt.governance;
        let auth_on = gov_cfg.auth_required || keys.snapshot().any();
        if !auth_on && !rt.server.listen.ip().is_loopback() && !gov_cfg.allow_unauthenticated {
            return Err(format!(
                "refusing to listen on {} without client authentication: create a key \
                 (switchyard keys create --team T), set [auth] required = true, or set \
                 [auth] allow_unauthenticated = true to accept anyone",
                rt.server.listen
            ));
        }
        let redis = rt.state.as_ref().and_then(|s| s.redis.clone());
        let limiter = match &redis {
            Some(url) => Limiter::redis(url).await?,
            None => Limiter::memory(),
        };
        if !limiter.is_shared() {
            seed_budgets(&store, &limiter);
        }
        ledger::install(store.clone());
        tokens::warm(rt);
        tracing::info!(
            store = %path.display(),
            limits = if limiter.is_shared() { "redis" } else { "memory" },
            client_auth = auth_on,
            "governance ready"
        );
        Ok(Arc::new(Governance {
            store,
            keys,
            limiter,
            refused_auth: AtomicU64::new(0),
            refused_rate: AtomicU64::new(0),
            refused_budget: AtomicU64::new(0),
        }))
    }

    /// Write everything queued; called once the server has drained.
    pub fn close(&self) {
        self.store.close();
    }

    /// Prometheus lines for governance.
    pub fn render_metrics(&self, out: &mut String) {
        crate::store::render_metrics(&self.store.stats, out);
        let _ = writeln!(
            out,
            "# HELP switchyard_refused_total Requests refused by governance.\n# TYPE switchyard_refused_total counter"
        );
        for (reason, c) in [
            ("auth", &self.refused_auth),
            ("rate_limit", &self.refused_rate),
            ("budget", &self.refused_budget),
        ] {
            let _ = writeln!(
                out,
                "switchyard_refused_total{{reason=\"{reason}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
    }
}

/// Budgets in memory start from the ledger's spend this day and month, so a restart does
/// not hand out a fresh budget.
fn seed_budgets(store: &Store, limiter: &Limiter) {
    let now = ledger::now_ms();
    let (day_start, month_start) = limits::period_starts(now);
    let Ok(conn) = store.connect() else { return };
    for (since, monthly) in [(day_start, false), (month_start, true)] {
        let Ok(rows) = ledger::spend_by_key_and_team(&conn, since) else {
            continue;
        };
        let mut teams: std::collections::HashMap<String, i64> = Default::default();
        for (key, team, micros) in rows {
            if let Some(k) = key {
                let c = budget_check_for(&format!("key:{k}"), monthly, 0, 0, now);
                limiter.seed(&c.name, c.bucket, micros);
            }
            if let Some(t) = team {
                *teams.entry(t).or_default() += micros;
            }
        }
        for (t, micros) in teams {
            let c = budget_check_for(&format!("team:{t}"), monthly, 0, 0, now);
            limiter.seed(&c.name, c.bucket, micros);
        }
    }
}

fn budget_check_for(who: &str, monthly: bool, limit: i64, cost: i64, now: i64) -> Check {
    let p = if monthly { "m" } else { "d" };
    limits::budget_check(
        format!("usd:{p}:{who}"),
        who.replacen(':', " ", 1),
        monthly,
        limit,
        cost,
        now,
    )
}

fn micros(usd: f64) -> i64 {
    (usd * 1e6).round() as i64
}

/// Phase `auth`: identify the caller from `Authorization: Bearer sk-sy-…`.
/// Whether client auth is on: keys exist, or `[auth] required` asks for one anyway.
pub fn client_auth_on(gw: &Gateway, ctx: &RequestCtx) -> bool {
    gw.governance
        .as_ref()
        .is_some_and(|g| ctx.runtime.governance.auth_required || g.keys.snapshot().any())
}

pub fn authenticate(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    headers: &HeaderMap,
) -> Result<(), GatewayError> {
    let Some(gov) = &gw.governance else {
        return Ok(());
    };
    let snap = gov.keys.snapshot();
    match auth::authenticate(headers, &snap, ctx.runtime.governance.auth_required) {
        Ok(key) => {
            ctx.account.key = key;
            Ok(())
        }
        Err(e) => {
            gov.refused_auth.fetch_add(1, Ordering::Relaxed);
            Err(e)
        }
    }
}

/// Tags from the key, the `x-switchyard-tags` header and the body's `metadata`
/// (`metadata.tags` as a comma-separated list, every other string member as `name:value`).
fn collect_tags(
    key: Option<&KeyRecord>,
    headers: &HeaderMap,
    request: &RequestBody,
) -> Vec<String> {
    let mut tags: Vec<String> = key.map(|k| k.tags.clone()).unwrap_or_default();
    let mut add = |t: &str| {
        let t = t.trim();
        if !t.is_empty()
            && t.len() <= MAX_TAG_LEN
            && tags.len() < MAX_TAGS
            && !tags.iter().any(|x| x == t)
        {
            tags.push(t.to_string());
        }
    };
    for v in headers.get_all(HEADER_TAGS) {
        if let Ok(s) = v.to_str() {
            s.split(',').for_each(&mut add);
        }
    }
    if let Some(meta) = request.get::<serde_json::Map<String, serde_json::Value>>("metadata") {
        for (k, v) in meta {
            match (k.as_str(), v) {
                ("tags", serde_json::Value::String(s)) => s.split(',').for_each(&mut add),
                ("tags", serde_json::Value::Array(a)) => {
                    a.iter().filter_map(|t| t.as_str()).for_each(&mut add)
                }
                (_, serde_json::Value::String(s)) => add(&format!("{k}:{s}")),
                _ => {}
            }
        }
    }
    tags
}

/// `ceil(bytes / 4)`: the byte-based token estimate.
pub fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// Phase `admit`: tags, estimates, and the rate-limit and budget reservation.
pub async fn admit(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    headers: &HeaderMap,
    request: &RequestBody,
    upstream_body_len: usize,
) -> Result<(), GatewayError> {
    let Some(gov) = &gw.governance else {
        return Ok(());
    };
    let cfg = &ctx.runtime.governance;
    let acct = &mut ctx.account;
    acct.stream = request.stream;
    acct.tags = collect_tags(acct.key.as_deref(), headers, request);
    acct.prompt_estimate = estimate_tokens(upstream_body_len);
    acct.body = Some(request.bytes().clone());
    acct.endpoint = Some(ctx.endpoint);
    let Some(key) = acct.key.clone() else {
        return Ok(());
    };
    let team = cfg.teams.get(&key.team).copied().unwrap_or_default();
    let max_out = if ctx.endpoint == crate::config::Endpoint::Embeddings {
        0
    } else {
        request
            .get::<u64>("max_completion_tokens")
            .or_else(|| request.get::<u64>("max_tokens"))
            .unwrap_or(cfg.reserve_tokens)
    };
    let reserve_tokens = acct.prompt_estimate + max_out;
    let price = match (&ctx.target, &ctx.upstream_model) {
        (Some(t), Some(m)) => cfg.price(&t.backend.name, m),
        _ => None,
    };
    let reserve_usd = price
        .map(|p| p.cost(acct.prompt_estimate, max_out))
        .unwrap_or(0.0);
    let now = ledger::now_ms();
    let mut checks = Vec::new();
    for (who, l) in [
        (format!("key:{}", key.id), key.limits),
        (format!("team:{}", key.team), team),
    ] {
        let scope = who.replacen(':', " ", 1);
        if let Some(rpm) = l.rpm {
            checks.push(limits::window_check(
                format!("rpm:{who}"),
                scope.clone(),
                What::Requests,
                rpm,
                1,
                now,
            ));
        }
        if let Some(tpm) = l.tpm {
            checks.push(limits::window_check(
                format!("tpm:{who}"),
                scope.clone(),
                What::Tokens,
                tpm,
                reserve_tokens,
                now,
            ));
        }
        if let Some(b) = l.budget_daily {
            checks.push(budget_check_for(
                &who,
                false,
                micros(b),
                micros(reserve_usd),
                now,
            ));
        }
        if let Some(b) = l.budget_monthly {
            checks.push(budget_check_for(
                &who,
                true,
                micros(b),
                micros(reserve_usd),
                now,
            ));
        }
    }
    match gov.limiter.admit(&checks).await {
        Err(e) => Err(GatewayError::LimitsUnavailable(e.0)),
        Ok(Ok(held)) => {
            for (h, c) in held.into_iter().zip(&checks) {
                match c.what {
                    What::Tokens => acct.held_tokens.push((h, 0)),
                    What::Budget { .. } => acct.held_budget.push((h, 0)),
                    What::Requests => {}
                }
            }
            Ok(())
        }
        Ok(Err(r)) => {
            let retry_after_secs = r.retry_after_secs;
            let scope = r.check.scope.clone();
            Err(match r.check.what {
                What::Budget { period, .. } => {
                    gov.refused_budget.fetch_add(1, Ordering::Relaxed);
                    GatewayError::BudgetExceeded {
                        scope,
                        period,
                        budget_usd: r.check.limit as f64 / 1e6,
                        retry_after_secs,
                    }
                }
                What::Requests | What::Tokens => {
                    gov.refused_rate.fetch_add(1, Ordering::Relaxed);
                    let what = if r.check.what == What::Requests {
                        "requests"
                    } else {
                        "tokens"
                    };
                    GatewayError::RateLimited {
                        scope,
                        what,
                        limit: r.check.limit as u64,
                        requested: r.check.cost as u64,
                        retry_after_secs,
                    }
                }
            })
        }
    }
}

/// How a request ended, for [`settle`].
pub struct Ending {
    pub status: u16,
    pub outcome: String,
    pub usage: Option<Usage>,
    pub completion_estimate: Option<u64>,
    pub ttft_ms: Option<f64>,
    /// The upstream was reached (so the prompt was sent and may be billed).
    pub reached_upstream: bool,
}

/// The request's labels, captured for settling after `ctx` is gone (streams).
pub struct Settler {
    gov: Arc<Governance>,
    runtime: Arc<Runtime>,
    account: Account,
    route: String,
    backend: Option<String>,
    model: Option<String>,
    started: std::time::Instant,
    ts_ms: i64,
}

/// Capture what settling needs from `ctx` (moves the account out).
pub fn settler(gw: &Gateway, ctx: &mut RequestCtx) -> Option<Settler> {
    let gov = gw.governance.clone()?;
    let account = std::mem::take(&mut ctx.account);
    if account.settled {
        return None;
    }
    let age = ctx.started.elapsed();
    Some(Settler {
        gov,
        runtime: ctx.runtime.clone(),
        account,
        route: ctx
            .route
            .as_ref()
            .map(|r| r.name.to_string())
            .unwrap_or_else(|| "-".into()),
        backend: ctx.target.as_ref().map(|t| t.backend.name.to_string()),
        model: ctx.upstream_model.as_ref().map(|m| m.to_string()),
        started: ctx.started,
        ts_ms: ledger::now_ms() - i64::try_from(age.as_millis()).unwrap_or(0),
    })
}

impl Settler {
    /// Write the ledger row and correct the reservations; the request's cost in USD.
    pub fn settle(mut self, end: Ending) -> f64 {
        self.account.settled = true;
        let a = &self.account;
        let (tokens_in, tokens_out, estimated) = match (end.usage, end.reached_upstream) {
            (Some(u), _) => (u.prompt_tokens, u.completion_tokens, false),
            (None, false) => (0, 0, false),
            (None, true) => match end.completion_estimate {
                // Something was generated (or the upstream answered): bill the prompt too.
                Some(out) => {
                    let counted = match (&self.model, a.endpoint, &a.body) {
                        (Some(m), Some(ep), Some(b)) => tokens::count_prompt(m, ep, b),
                        _ => None,
                    };
                    (counted.unwrap_or(a.prompt_estimate), out, true)
                }
                // Failed before answering: nothing to bill.
                None => (0, 0, false),
            },
        };
        let mut row = Row::new(&self.route, end.status);
        row.ts_ms = self.ts_ms;
        row.key_id = a.key.as_ref().map(|k| k.id.clone());
        row.team = a.key.as_ref().map(|k| k.team.clone());
        row.tags = a.tags.clone();
        row.backend = self.backend.clone();
        row.model = self.model.clone();
        row.stream = a.stream;
        row.kind = a.kind;
        row.tokens_in = tokens_in;
        row.tokens_out = tokens_out;
        price_row(&self.runtime, &mut row);
        let cost = row.cost_usd;
        row.latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        row.ttft_ms = end.ttft_ms;
        row.outcome = end.outcome;
        row.estimated = estimated;
        write_row(row);

        let tokens = i64::try_from(tokens_in + tokens_out).unwrap_or(i64::MAX);
        let cost_micros = micros(cost);
        let corrections: Vec<(Held, i64)> = a
            .held_tokens
            .iter()
            .map(|(h, _)| (h.clone(), tokens - h.cost))
            .chain(
                a.held_budget
                    .iter()
                    .map(|(h, _)| (h.clone(), cost_micros - h.cost)),
            )
            .filter(|(_, d)| *d != 0)
            .collect();
        if corrections.is_empty() {
            return cost;
        }
        let limiter = self.gov.limiter.clone();
        if limiter.is_shared() {
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move { limiter.adjust(&corrections).await });
            }
        } else {
            // In memory the future completes at once; no task needed.
            let fut = limiter.adjust(&corrections);
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            let mut fut = std::pin::pin!(fut);
            let _ = fut.as_mut().poll(&mut cx);
        }
        cost
    }
}

/// Settle a request whose answer is complete (or that failed) while `ctx` is at hand; its
/// cost, when the ledger priced it.
pub fn settle(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    status: u16,
    error: Option<&GatewayError>,
) -> Option<f64> {
    let reached = ctx.upstream_time > std::time::Duration::ZERO;
    let usage = ctx.account.usage;
    let completion_estimate = if error.is_none() {
        ctx.account.completion_estimate.or(Some(0))
    } else {
        None
    };
    let outcome = error
        .map(|e| e.kind().to_string())
        .unwrap_or_else(|| "ok".into());
    settler(gw, ctx).map(|s| {
        s.settle(Ending {
            status,
            outcome,
            usage,
            completion_estimate,
            ttft_ms: None,
            reached_upstream: reached && error.is_none(),
        })
    })
}

/// The end-of-stream half of settling: usage from the stream, or an estimate from what was
/// relayed when the client went away or the upstream broke off. Returns the cost.
pub fn settle_stream(s: Settler, summary: &StreamSummary) -> f64 {
    let (status, outcome) = match &summary.outcome {
        StreamOutcome::Completed => (200, "ok"),
        StreamOutcome::ClientGone => (499, "cancelled"),
        StreamOutcome::UpstreamFailed(_) => (502, "stream_failed"),
    };
    s.settle(Ending {
        status,
        outcome: outcome.into(),
        usage: summary.usage,
        completion_estimate: Some(summary.content_events),
        ttft_ms: summary.first_byte.map(|d| d.as_secs_f64() * 1000.0),
        reached_upstream: true,
    })
}

static GATEWAY: std::sync::OnceLock<std::sync::Weak<Gateway>> = std::sync::OnceLock::new();

/// Remember the serving gateway, so rows made away from a request (shadow calls) are
/// priced with the config in force when they are written.
pub fn install_gateway(gw: &Arc<Gateway>) {
    let _ = GATEWAY.set(Arc::downgrade(gw));
}

/// Write a ledger row and add its cost to `switchyard_cost_usd_total{backend,model}`.
fn write_row(row: Row) {
    if row.cost_usd > 0.0
        && let (Some(b), Some(m)) = (&row.backend, &row.model)
        && let Some(gw) = GATEWAY.get().and_then(std::sync::Weak::upgrade)
    {
        gw.metrics
            .cost(&Arc::from(b.as_str()), &Arc::from(m.as_str()), row.cost_usd);
    }
    ledger::record(row);
}

/// The ledger row of one shadow call: what mirroring cost, at the shadow target's price.
pub fn record_shadow(pair: &crate::shadow::store::Pair) {
    let Some(gw) = GATEWAY.get().and_then(std::sync::Weak::upgrade) else {
        return;
    };
    let status = pair.shadow_status.unwrap_or(502);
    let mut row = Row::new(&pair.route, status);
    row.ts_ms = pair.ts_ms;
    row.backend = Some(pair.shadow_backend.clone());
    row.model = Some(pair.shadow_model.clone());
    row.kind = ledger::Kind::Shadow;
    row.stream = pair.stream;
    row.tokens_in = pair.shadow_prompt_tokens.unwrap_or(0);
    row.tokens_out = pair.shadow_completion_tokens.unwrap_or(0);
    row.latency_ms = pair.shadow_latency_ms.unwrap_or(0.0);
    row.outcome = if pair.shadow_error.is_some() {
        "shadow_failed".into()
    } else {
        "ok".into()
    };
    price_row(&gw.runtime(), &mut row);
    // Shadow agreement, by route and shadow backend.
    let result = match (&pair.shadow_error, &pair.comparison) {
        (Some(_), _) => Some("error"),
        (None, Some(c)) if c.agree => Some("agree"),
        (None, Some(_)) => Some("disagree"),
        (None, None) => None,
    };
    if let Some(result) = result {
        gw.metrics.shadow_result(
            &Arc::from(pair.route.as_str()),
            &Arc::from(pair.shadow_backend.as_str()),
            result,
        );
    }
    write_row(row);
}

/// Attempts that spent nothing upstream: not ledger rows.
fn skipped(outcome: &str) -> bool {
    matches!(
        outcome,
        "skipped_breaker_open" | "retry_budget_exhausted" | "saturated"
    )
}

/// After the attempt loop: one row for every attempt before the last (failed tries and the
/// fallbacks that followed them; an upstream that failed bills no tokens), and the kind
/// (primary, retry, fallback) of the last attempt, whose row [`settle`] writes.
pub fn record_attempts(gw: &Gateway, ctx: &mut RequestCtx, trail: &crate::attempt::Trail) {
    if gw.governance.is_none() {
        return;
    }
    let real: Vec<&crate::attempt::Step> = trail
        .steps
        .iter()
        .filter(|s| !skipped(&s.outcome))
        .collect();
    let Some(first) = real.first() else { return };
    let kind_of = |i: usize, s: &crate::attempt::Step| {
        if i == 0 {
            ledger::Kind::Primary
        } else if s.backend == first.backend {
            ledger::Kind::Retry
        } else {
            ledger::Kind::Fallback
        }
    };
    let route = ctx
        .route
        .as_ref()
        .map(|r| r.name.to_string())
        .unwrap_or_else(|| "-".into());
    let a = &ctx.account;
    for (i, s) in real.iter().enumerate().take(real.len() - 1) {
        let status = match s.outcome.strip_prefix("http_").map(str::parse::<u16>) {
            Some(Ok(code)) => code,
            _ if s.outcome == "timeout" => 504,
            _ if s.outcome == "rejected_by_validate" => 200,
            _ => 502,
        };
        let mut row = Row::new(&route, status);
        row.key_id = a.key.as_ref().map(|k| k.id.clone());
        row.team = a.key.as_ref().map(|k| k.team.clone());
        row.tags = a.tags.clone();
        row.backend = Some(s.backend.to_string());
        row.kind = kind_of(i, s);
        row.stream = a.stream;
        row.outcome = s.outcome.clone();
        write_row(row);
    }
    if let Some(last) = real.last() {
        ctx.account.kind = kind_of(real.len() - 1, last);
    }
}

/// Fill `row.cost_usd` and `row.baseline_usd` from the config's prices, for rows other
/// modules write with [`ledger::record`] (fallback and retry attempts, shadow calls): set
/// `route`, `backend`, `model` and the token counts first.
pub fn price_row(rt: &Runtime, row: &mut Row) {
    let cfg = &rt.governance;
    row.cost_usd = match (&row.backend, &row.model) {
        (Some(b), Some(m)) => cfg
            .price(b, m)
            .map(|p| p.cost(row.tokens_in, row.tokens_out)),
        _ => None,
    }
    .unwrap_or(0.0);
    row.baseline_usd = cfg
        .baseline(&row.route)
        .map(|p| p.cost(row.tokens_in, row.tokens_out))
        .unwrap_or(row.cost_usd);
}

/// Completion tokens of a complete answer that carries no usage: the generated text
/// (message content, tool-call arguments, completion text) counted for `model`.
pub fn estimate_completion(model: &str, body: &[u8]) -> u64 {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0;
    };
    let mut n = 0;
    for c in v["choices"].as_array().into_iter().flatten() {
        let texts = [c["text"].as_str(), c["message"]["content"].as_str()];
        n += texts
            .into_iter()
            .flatten()
            .map(|t| tokens::count_text(model, t))
            .sum::<u64>();
        for t in c["message"]["tool_calls"].as_array().into_iter().flatten() {
            n += t["function"]["arguments"]
                .as_str()
                .map_or(0, |a| tokens::count_text(model, a));
        }
    }
    n
}
