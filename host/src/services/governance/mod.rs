//! Governance: who is calling, may they, and what did it cost.
//!
//! [`Governance`] owns the store, the key cache and the limiter. The request path calls it
//! three times, in this order:
//! 1. [`Governance::authenticate`] before the body is read: the caller's virtual key (401
//!    otherwise);
//! 2. [`Governance::admit`] once the request is parsed and routed, before any upstream sees
//!    it: tags, the token and cost estimate, and the rate-limit and budget reservation (429
//!    otherwise), recorded in the request's [`Account`];
//! 3. [`Settler::settle`] when the answer ends, however it ends (complete, error, end of
//!    stream, client gone): the ledger row with the real usage (or an estimate, marked as
//!    such) and the correction of the reservations to the real tokens and cost.
//!
//! Token estimates where an upstream reports no usage: the prompt counted with the model's
//! tokenizer for OpenAI models, else `ceil(bytes / 4)` of the body sent upstream (see
//! [`tokens`]); for completions the number of content-bearing stream events (OpenAI streams
//! one token per event), or the generated text of a complete answer counted the same way as
//! a prompt. Rows with estimates have `estimated = 1`. Reservations at admission always use
//! the byte estimate of the whole body, which is cheap and errs high.

pub mod feedback;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod pg;
pub mod pg_tls;
pub mod store;
pub mod tokens;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::HeaderMap;

use super::observe::metrics::Metrics;
use super::upstream::traffic::Step;
use crate::base::clock::now_ms;
use crate::base::openai::{RequestBody, Usage};
use crate::base::{Endpoint, GatewayError};
use crate::config::governance::GovConfig;
use crate::config::{Runtime, StateSettings};
use crate::services::upstream::throughput::{self, LivePrices};
use keys::{KeyCache, KeyRecord};
use ledger::Row;
use limits::{Check, Held, Limiter, What};
use store::Store;

/// Request header carrying comma-separated tags for the ledger.
pub const HEADER_TAGS: http::HeaderName = http::HeaderName::from_static("x-switchyard-tags");
const MAX_TAGS: usize = 16;
const MAX_TAG_LEN: usize = 64;

/// Keys, limits, budgets and the ledger: the gateway's governance state beside the config.
pub struct Governance {
    pub store: Arc<Store>,
    pub keys: Arc<KeyCache>,
    pub limiter: Arc<Limiter>,
    /// Where each ledger row's cost and each shadow comparison is counted too.
    metrics: Arc<Metrics>,
    refused_auth: AtomicU64,
    refused_rate: AtomicU64,
    refused_budget: AtomicU64,
    /// Per-token prices derived from `gpu_hour_usd` and measured worker throughput.
    pub derived_prices: Arc<LivePrices>,
}

/// What governance knows about one request.
#[derive(Debug, Default)]
pub struct Account {
    /// The caller passed `authenticate` (with a key, or with client auth off). A request
    /// refused before that gets no ledger row: anyone can send those, as fast as they like,
    /// and `switchyard_refused_total{reason="auth"}` counts them.
    pub authenticated: bool,
    pub key: Option<Arc<KeyRecord>>,
    pub tags: Vec<String>,
    pub stream: bool,
    /// Prompt tokens estimated from the body sent upstream.
    pub prompt_estimate: u64,
    /// The client's body (a reference-counted handle), tokenized only if usage is missing.
    body: Option<bytes::Bytes>,
    endpoint: Option<Endpoint>,
    /// Token and budget reservations to correct at the end.
    held_tokens: Vec<(Held, i64)>,
    held_budget: Vec<(Held, i64)>,
    /// Usage read from a complete answer.
    pub usage: Option<Usage>,
    /// Completion tokens estimated from a complete answer without usage.
    pub completion_estimate: Option<u64>,
    /// The most tokens this request could have used; an upstream's report beyond it is
    /// clamped (and the row flagged `usage_clamped`).
    pub usage_cap: UsageCap,
    /// Which attempt answered (or failed last): primary, retry or fallback.
    pub kind: ledger::Kind,
    /// The request's `x-switchyard-request-id`, on each of its ledger rows.
    pub request_id: Option<Arc<str>>,
    settled: bool,
}

/// The most tokens a request could have used, set at admission: what an upstream reports
/// beyond it is not believed. Without a cap (a request never admitted) nothing is clamped.
#[derive(Debug, Clone, Copy)]
pub struct UsageCap {
    pub prompt: u64,
    pub completion: u64,
}

impl Default for UsageCap {
    fn default() -> Self {
        UsageCap {
            prompt: u64::MAX,
            completion: u64::MAX,
        }
    }
}

/// Prompt tokens believed beyond one per byte of the body: chat-template tokens and images
/// sent by URL cost tokens that the body's bytes do not show.
pub const PROMPT_SLACK_TOKENS: u64 = 65_536;
/// Completion tokens believed per choice when the request sets no `max_tokens` (no model
/// writes more in one answer).
pub const MAX_COMPLETION_TOKENS: u64 = 1 << 20;
/// Choices (`n`) believed per request.
const MAX_CHOICES: u64 = 128;

impl UsageCap {
    /// The cap for a body of `body_len` bytes asking for `max_out` tokens per choice (the
    /// client's `max_tokens`, if any) and `n` choices.
    pub fn of(body_len: usize, max_out: Option<u64>, n: Option<u64>) -> UsageCap {
        let per_choice = max_out
            .unwrap_or(MAX_COMPLETION_TOKENS)
            .min(MAX_COMPLETION_TOKENS);
        UsageCap {
            prompt: (body_len as u64).saturating_add(PROMPT_SLACK_TOKENS),
            completion: per_choice.saturating_mul(n.unwrap_or(1).clamp(1, MAX_CHOICES)),
        }
    }

    /// `u` within the cap, and whether it had to be clamped.
    pub fn apply(&self, u: Usage) -> (Usage, bool) {
        let prompt = u.prompt_tokens.min(self.prompt);
        let completion = u.completion_tokens.min(self.completion);
        let clamped = prompt != u.prompt_tokens || completion != u.completion_tokens;
        let total = if clamped {
            prompt.saturating_add(completion)
        } else {
            u.total_tokens
        };
        (
            Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: total,
            },
            clamped,
        )
    }
}

impl Governance {
    /// Open the store, load keys, connect the limiter, seed budgets, refuse unsafe setups.
    pub async fn start(rt: &Runtime, metrics: Arc<Metrics>) -> Result<Arc<Governance>, String> {
        let target = StateSettings::store_target(rt.state.as_ref());
        // On the blocking pool: the PostgreSQL client blocks (and may not run on an async
        // worker at all).
        let opening = target.clone();
        let (store, keys) = tokio::task::spawn_blocking(move || {
            let store = Store::open_target(&opening, store::DEFAULT_QUEUE)?;
            let keys = KeyCache::open_target(&opening)?;
            Ok::<_, store::StoreError>((store, keys))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let gov_cfg = &rt.governance;
        let snap = keys.snapshot();
        if let Some(why) = missing_keys(gov_cfg.auth_required, &snap, &target.describe()) {
            return Err(why);
        }
        let auth_on = gov_cfg.auth_required || snap.any();
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
            let (st, lim) = (store.clone(), limiter.clone());
            let _ = tokio::task::spawn_blocking(move || seed_budgets(&st, &lim)).await;
        }
        tokens::warm(rt);
        tracing::info!(
            store = %target.describe(),
            limits = if limiter.is_shared() { "redis" } else { "memory" },
            client_auth = auth_on,
            "governance ready"
        );
        Ok(Arc::new(Governance {
            store,
            keys,
            limiter,
            metrics,
            refused_auth: AtomicU64::new(0),
            refused_rate: AtomicU64::new(0),
            refused_budget: AtomicU64::new(0),
            derived_prices: Arc::new(LivePrices::default()),
        }))
    }

    /// Write everything queued; called once the server has drained.
    pub fn close(&self) {
        self.store.close();
    }

    /// Prometheus lines for governance.
    pub fn render_metrics(&self, out: &mut String) {
        store::render_metrics(&self.store.stats, out);
        self.derived_prices.render_metrics(out);
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

/// Why the gateway must not start: keys are expected (`[auth] required`, or the store
/// recorded that a key was created in it) but the store holds none. Starting would either
/// refuse every caller or, worse, serve everyone unauthenticated after a store was lost,
/// emptied or replaced.
fn missing_keys(required: bool, snap: &keys::KeySnapshot, store: &str) -> Option<String> {
    if !snap.is_empty() {
        return None;
    }
    if snap.auth_recorded() {
        return Some(format!(
            "refusing to start: the store {store} recorded that client auth is on (keys were \
             created in it) but it holds no keys now; restore the store's keys, or create one \
             (switchyard keys create --team T)"
        ));
    }
    required.then(|| {
        format!(
            "refusing to start: [auth] required = true but the store {store} holds no keys; \
             create one first (switchyard keys create --team T), or point [state] path at the \
             store that holds them"
        )
    })
}

/// Budgets in memory start from the ledger's spend this day and month, so a restart does
/// not hand out a fresh budget.
fn seed_budgets(store: &Store, limiter: &Limiter) {
    let now = now_ms();
    let (day_start, month_start) = limits::period_starts(now);
    let Ok(mut conn) = store.conn() else { return };
    for (since, monthly) in [(day_start, false), (month_start, true)] {
        let Ok(rows) = ledger::spend_by_key_and_team_in(&mut conn, since) else {
            continue;
        };
        let mut teams: std::collections::HashMap<String, i64> = Default::default();
        for (key, team, micros) in rows {
            if let Some(k) = key {
                let c = budget_check_for(&format!("key:{k}"), monthly, 0, 0, now);
                limiter.seed(&c.name, c.bucket, micros);
            }
            if let Some(t) = team {
                let sum = teams.entry(t).or_default();
                *sum = sum.saturating_add(micros);
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

impl Account {
    /// Add tags decided after admission's own (a `classify` plugin's), under the same limits
    /// as the key's, header's and metadata's tags, so the ledger row carries them.
    pub fn add_tags(&mut self, more: &[String]) {
        for t in more {
            let t = t.trim();
            if !t.is_empty()
                && t.len() <= MAX_TAG_LEN
                && self.tags.len() < MAX_TAGS
                && !self.tags.iter().any(|x| x == t)
            {
                self.tags.push(t.to_string());
            }
        }
    }
}

/// `ceil(bytes / 4)`: the byte-based token estimate.
pub fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// What admission looks at: the request, where it goes, and the config it runs under.
pub struct Admission<'a> {
    pub config: &'a GovConfig,
    pub endpoint: Endpoint,
    pub headers: &'a HeaderMap,
    pub request: &'a RequestBody,
    /// Bytes of the body sent upstream (the prompt's token estimate).
    pub upstream_body_len: usize,
    /// The chosen target's backend and upstream model (they price the reservation).
    pub backend: &'a str,
    pub model: &'a str,
}

impl Governance {
    /// Whether client auth is on: keys exist, or `[auth] required` asks for one anyway.
    pub fn client_auth_on(&self, cfg: &GovConfig) -> bool {
        cfg.auth_required || self.keys.snapshot().any()
    }

    /// Identify the caller from `Authorization: Bearer sk-sy-…`: its key, or `None` when
    /// client auth is off.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        cfg: &GovConfig,
    ) -> Result<Option<Arc<KeyRecord>>, GatewayError> {
        let snap = self.keys.snapshot();
        keys::authenticate(headers, &snap, cfg.auth_required).inspect_err(|_| {
            self.refused_auth.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Tags, estimates, and the rate-limit and budget reservation, into `acct`.
    pub async fn admit(&self, a: Admission<'_>, acct: &mut Account) -> Result<(), GatewayError> {
        admit(self, a, acct).await
    }
}

async fn admit(gov: &Governance, a: Admission<'_>, acct: &mut Account) -> Result<(), GatewayError> {
    let (cfg, request) = (a.config, a.request);
    acct.stream = request.stream;
    acct.tags = collect_tags(acct.key.as_deref(), a.headers, request);
    acct.prompt_estimate = estimate_tokens(a.upstream_body_len);
    acct.body = Some(request.bytes().clone());
    acct.endpoint = Some(a.endpoint);
    let client_max = if a.endpoint == Endpoint::Embeddings {
        Some(0)
    } else {
        request
            .get::<u64>("max_completion_tokens")
            .or_else(|| request.get::<u64>("max_tokens"))
    };
    acct.usage_cap = UsageCap::of(a.upstream_body_len, client_max, request.get::<u64>("n"));
    let Some(key) = acct.key.clone() else {
        return Ok(());
    };
    let team = cfg.teams.get(&key.team).copied().unwrap_or_default();
    let max_out = client_max.unwrap_or(cfg.reserve_tokens);
    // Saturating: a `max_tokens` near 2^64 must be refused, not wrap to a small reservation.
    let reserve_tokens = acct.prompt_estimate.saturating_add(max_out);
    let price = cfg.price(a.backend, a.model);
    let reserve_usd = price
        .map(|p| p.cost(acct.prompt_estimate, max_out))
        .unwrap_or(0.0);
    let now = now_ms();
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

/// One shadow call, as the ledger and the agreement metric record it.
pub struct ShadowCall<'a> {
    pub route: &'a str,
    pub backend: &'a str,
    pub model: &'a str,
    pub ts_ms: i64,
    pub stream: bool,
    /// The shadow's HTTP status, when it answered.
    pub status: Option<u16>,
    /// The tokens it reported (0 when it reported none).
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub latency_ms: f64,
    /// It failed (error, timeout, unusable answer).
    pub failed: bool,
    /// Whether its answer agreed with the served one, when they were compared.
    pub agreed: Option<bool>,
}

/// How a request ended, for [`Settler::settle`].
pub struct Ending {
    pub status: u16,
    pub outcome: String,
    pub usage: Option<Usage>,
    pub completion_estimate: Option<u64>,
    pub ttft_ms: Option<f64>,
    /// The upstream was reached (so the prompt was sent and may be billed).
    pub reached_upstream: bool,
    /// Answered from the response cache: nothing is billed, and what the answer would have
    /// cost is the row's saving.
    pub cached: bool,
}

/// A request's account and labels, held until its answer ends (a stream settles when it
/// ends, long after the request path moved on).
pub struct Settler {
    gov: Arc<Governance>,
    runtime: Arc<Runtime>,
    account: Account,
    route: String,
    backend: Option<String>,
    model: Option<String>,
    started: Instant,
    ts_ms: i64,
}

/// Who and what a settled request was: its route, the backend and model that answered.
pub struct Labels<'a> {
    pub runtime: &'a Arc<Runtime>,
    pub route: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub model: Option<&'a str>,
    pub started: Instant,
}

impl Governance {
    /// Take the request's account for settling; `None` when it is already settled.
    pub fn settler(self: &Arc<Self>, account: &mut Account, labels: Labels<'_>) -> Option<Settler> {
        let account = std::mem::take(account);
        if account.settled || !account.authenticated {
            return None;
        }
        let age = labels.started.elapsed();
        Some(Settler {
            gov: self.clone(),
            runtime: labels.runtime.clone(),
            account,
            route: labels.route.unwrap_or("-").to_string(),
            backend: labels.backend.map(str::to_string),
            model: labels.model.map(str::to_string),
            started: labels.started,
            ts_ms: now_ms() - i64::try_from(age.as_millis()).unwrap_or(0),
        })
    }
}

impl Settler {
    /// Write the ledger row and correct the reservations; the request's cost in USD.
    pub fn settle(mut self, end: Ending) -> f64 {
        self.account.settled = true;
        let a = &self.account;
        let reported = end.usage.map(|u| a.usage_cap.apply(u));
        let clamped = reported.is_some_and(|(_, c)| c);
        if clamped && let Some(u) = end.usage {
            tracing::warn!(
                backend = self.backend.as_deref().unwrap_or("-"),
                prompt_tokens = u.prompt_tokens,
                completion_tokens = u.completion_tokens,
                cap_prompt = a.usage_cap.prompt,
                cap_completion = a.usage_cap.completion,
                "upstream reported more tokens than the request could use; clamped"
            );
        }
        let (tokens_in, tokens_out, estimated) = match (reported, end.reached_upstream) {
            (Some((u, _)), _) => (u.prompt_tokens, u.completion_tokens, false),
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
        price_row(&self.runtime, Some(&self.gov.derived_prices), &mut row);
        if end.cached {
            row.kind = ledger::Kind::Cache;
            row.saved_usd = row.cost_usd;
            row.cost_usd = 0.0;
        }
        let cost = row.cost_usd;
        row.latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        row.ttft_ms = end.ttft_ms;
        row.outcome = end.outcome;
        row.estimated = estimated;
        row.usage_clamped = clamped;
        row.request_id = a.request_id.as_deref().map(str::to_string);
        self.gov.write_row(&self.runtime, row);

        let tokens = i64::try_from(tokens_in.saturating_add(tokens_out)).unwrap_or(i64::MAX);
        let cost_micros = micros(cost);
        let corrections: Vec<(Held, i64)> = a
            .held_tokens
            .iter()
            .map(|(h, _)| (h.clone(), tokens.saturating_sub(h.cost)))
            .chain(
                a.held_budget
                    .iter()
                    .map(|(h, _)| (h.clone(), cost_micros.saturating_sub(h.cost))),
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

impl Governance {
    /// Write a ledger row and add its cost to `switchyard_cost_usd_total{backend,model}`,
    /// the model labelled as `rt` names it (`Runtime::metric_model`).
    fn write_row(&self, rt: &Runtime, row: Row) {
        if row.cost_usd > 0.0
            && let (Some(b), Some(m)) = (&row.backend, &row.model)
        {
            self.metrics
                .cost(&Arc::from(b.as_str()), &rt.metric_model(m), row.cost_usd);
        }
        ledger::record(&self.store, row);
    }

    /// The ledger row of one shadow call: what mirroring cost, at the shadow target's price
    /// in `rt` (the config the mirrored request ran under).
    pub fn record_shadow(&self, rt: &Runtime, call: ShadowCall<'_>) {
        let mut row = Row::new(call.route, call.status.unwrap_or(502));
        row.ts_ms = call.ts_ms;
        row.backend = Some(call.backend.to_string());
        row.model = Some(call.model.to_string());
        row.kind = ledger::Kind::Shadow;
        row.stream = call.stream;
        row.tokens_in = call.tokens_in;
        row.tokens_out = call.tokens_out;
        row.latency_ms = call.latency_ms;
        row.outcome = if call.failed {
            "shadow_failed".into()
        } else {
            "ok".into()
        };
        price_row(rt, Some(&self.derived_prices), &mut row);
        // Shadow agreement, by route and shadow backend.
        let result = match (call.failed, call.agreed) {
            (true, _) => Some("error"),
            (false, Some(true)) => Some("agree"),
            (false, Some(false)) => Some("disagree"),
            (false, None) => None,
        };
        if let Some(result) = result {
            self.metrics
                .shadow_result(&Arc::from(call.route), &Arc::from(call.backend), result);
        }
        self.write_row(rt, row);
    }
}

impl Governance {
    /// The ledger row of one shadow-judge call, priced at the judge's backend and model.
    pub fn record_judge(&self, rt: &Runtime, call: ShadowCall<'_>) {
        let mut row = Row::new(call.route, call.status.unwrap_or(502));
        row.ts_ms = call.ts_ms;
        row.backend = Some(call.backend.to_string());
        row.model = Some(call.model.to_string());
        row.kind = ledger::Kind::Judge;
        row.tokens_in = call.tokens_in;
        row.tokens_out = call.tokens_out;
        row.latency_ms = call.latency_ms;
        row.outcome = if call.failed {
            "judge_failed".into()
        } else {
            "ok".into()
        };
        price_row(rt, Some(&self.derived_prices), &mut row);
        self.write_row(rt, row);
    }
}

/// Attempts that spent nothing upstream: not ledger rows.
fn skipped(outcome: &str) -> bool {
    matches!(
        outcome,
        "skipped_breaker_open" | "retry_budget_exhausted" | "saturated"
    )
}

impl Governance {
    /// After the attempt loop: one row for every attempt before the last (failed tries and
    /// the fallbacks that followed them; an upstream that failed bills no tokens), and the
    /// kind (primary, retry, fallback) of the last attempt, whose row [`Settler::settle`]
    /// writes.
    pub fn record_attempts(&self, route: Option<&str>, acct: &mut Account, steps: &[Step]) {
        record_attempts(self, route, acct, steps);
    }
}

fn record_attempts(gov: &Governance, route: Option<&str>, acct: &mut Account, steps: &[Step]) {
    let real: Vec<&Step> = steps.iter().filter(|s| !skipped(&s.outcome)).collect();
    let Some(first) = real.first() else { return };
    let kind_of = |i: usize, s: &Step| {
        if i == 0 {
            ledger::Kind::Primary
        } else if s.backend == first.backend {
            ledger::Kind::Retry
        } else {
            ledger::Kind::Fallback
        }
    };
    let route = route.unwrap_or("-");
    let a = &*acct;
    for (i, s) in real.iter().enumerate().take(real.len() - 1) {
        let status = match s.outcome.strip_prefix("http_").map(str::parse::<u16>) {
            Some(Ok(code)) => code,
            _ if s.outcome == "timeout" => 504,
            _ if s.outcome == "rejected_by_validate" => 200,
            _ => 502,
        };
        let mut row = Row::new(route, status);
        row.key_id = a.key.as_ref().map(|k| k.id.clone());
        row.team = a.key.as_ref().map(|k| k.team.clone());
        row.tags = a.tags.clone();
        row.backend = Some(s.backend.to_string());
        row.kind = kind_of(i, s);
        row.stream = a.stream;
        row.outcome = s.outcome.clone();
        row.request_id = a.request_id.as_deref().map(str::to_string);
        // No model and no cost: nothing to count beside the row.
        ledger::record(&gov.store, row);
    }
    if let Some(last) = real.last() {
        acct.kind = kind_of(real.len() - 1, last);
    }
}

/// Fill `row.cost_usd` and `row.baseline_usd` from the config's prices (else, for a
/// `gpu_hour_usd` backend, the price derived from its workers' throughput): set `route`,
/// `backend`, `model` and the token counts first.
pub fn price_row(rt: &Runtime, derived: Option<&LivePrices>, row: &mut Row) {
    let cfg = &rt.governance;
    let price = match (&row.backend, &row.model) {
        (Some(b), Some(m)) => throughput::price(rt, derived, b, m),
        _ => None,
    };
    row.cost_derived = price.is_some_and(|(_, d)| d);
    row.cost_usd = price
        .map(|(p, _)| p.cost(row.tokens_in, row.tokens_out))
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
