//! The attempt loop: which target and URL get the request, and what happens when one fails.
//!
//! ```text
//! candidates = [chosen target, fallback 1, fallback 2, ...]
//! for each candidate:
//!     pick a URL (pool: p2c over admissible URLs; open breakers are skipped, costing nothing)
//!     every attempt after the first takes a token from the retry budget
//!     take an in-flight slot (bounded queue; full → next URL or candidate)
//!     exchange (`once`): connect, response head, for streams the first chunk
//!     ok → validate hook (complete answers) → served
//!     failed (connect, timeout, 5xx, 429, broken before the first byte, garbage, rejected)
//!         → breaker + pool learn it → next URL of the same pool, then `retries` repeats
//!           with jittered exponential backoff, then the next candidate
//!     client error (4xx other than 429) → answered as is: another target would say the same
//! ```
//!
//! A stream counts as served once its first chunk arrived: after that, bytes have reached
//! the client and no other target can take over. Every step is written into a [`Trail`],
//! which becomes the `x-switchyard-attempts` response header and the log line saying who
//! answered and why the others did not. The retry budget (a token bucket filled by a share
//! of requests plus a small floor per second) keeps a failing fleet from turning each
//! request into several: under a full outage retries stop, the breaker opens, and the
//! fallback is then reached without a wasted attempt.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;

use crate::breaker::Admit;
use crate::config::{Problem, Target};
use crate::error::GatewayError;
use crate::pool::Slot;

/// Response header listing every attempt: `backend@host:port outcome, ...`.
pub const HEADER_ATTEMPTS: &str = "x-switchyard-attempts";

/// `[traffic]`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSection {
    /// Retries allowed as a share of requests (token bucket refill per request). Default 0.2.
    pub retry_budget_ratio: Option<f64>,
    /// Retries always allowed per second, whatever the request rate. Default 10.
    pub retry_budget_min_per_sec: Option<f64>,
    /// First backoff before repeating a target, in milliseconds (jittered, doubling). Default 25.
    pub backoff_base_ms: Option<u64>,
    /// Longest backoff, in milliseconds. Default 1000.
    pub backoff_max_ms: Option<u64>,
}

/// `[traffic]`, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrafficSettings {
    pub retry_ratio: f64,
    pub retry_min_per_sec: f64,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for TrafficSettings {
    fn default() -> Self {
        TrafficSettings {
            retry_ratio: 0.2,
            retry_min_per_sec: 10.0,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
        }
    }
}

impl TrafficSettings {
    pub fn from_section(s: Option<&TrafficSection>, problems: &mut Vec<Problem>) -> Self {
        let mut out = TrafficSettings::default();
        let Some(s) = s else { return out };
        if let Some(r) = s.retry_budget_ratio {
            if (0.0..=10.0).contains(&r) {
                out.retry_ratio = r;
            } else {
                problems.push(Problem::new(
                    "traffic.retry_budget_ratio",
                    format!("must be between 0.0 and 10.0, got {r}"),
                ));
            }
        }
        if let Some(m) = s.retry_budget_min_per_sec {
            if m.is_finite() && m >= 0.0 {
                out.retry_min_per_sec = m;
            } else {
                problems.push(Problem::new(
                    "traffic.retry_budget_min_per_sec",
                    format!("must be 0 or more, got {m}"),
                ));
            }
        }
        if let Some(b) = s.backoff_base_ms {
            out.backoff_base = Duration::from_millis(b);
        }
        if let Some(m) = s.backoff_max_ms {
            out.backoff_max = Duration::from_millis(m);
        }
        if out.backoff_max < out.backoff_base {
            problems.push(Problem::new(
                "traffic.backoff_max_ms",
                "must not be below backoff_base_ms",
            ));
        }
        out
    }

    /// Full-jitter exponential backoff before the `n`th repeat (1-based) of a target.
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16));
        let cap = exp.min(self.backoff_max);
        cap.mul_f64(fastrand::f64())
    }
}

/// The process-wide retry budget: a token bucket.
#[derive(Debug)]
pub struct RetryBudget {
    inner: Mutex<(f64, Instant)>,
}

/// Most retries the bucket can hold: a burst after a quiet spell.
const BUDGET_CAP: f64 = 100.0;

impl RetryBudget {
    pub fn new() -> Self {
        RetryBudget {
            inner: Mutex::new((BUDGET_CAP, Instant::now())),
        }
    }

    fn refill(&self, g: &mut (f64, Instant), s: &TrafficSettings, add: f64) {
        let now = Instant::now();
        let dt = now.saturating_duration_since(g.1).as_secs_f64();
        g.1 = now;
        g.0 = (g.0 + add + dt * s.retry_min_per_sec).min(BUDGET_CAP);
    }

    /// A request arrived: it earns `retry_ratio` of a retry.
    pub fn deposit(&self, s: &TrafficSettings) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut g, s, s.retry_ratio);
    }

    /// Spend one retry, if the budget holds one.
    pub fn withdraw(&self, s: &TrafficSettings) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut g, s, 0.0);
        if g.0 >= 1.0 {
            g.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new()
    }
}

fn budget() -> &'static RetryBudget {
    static B: OnceLock<RetryBudget> = OnceLock::new();
    B.get_or_init(RetryBudget::new)
}

/// What a `validate` plugin (or any answer check) says about an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Reject(String),
}

/// An answer check run on every complete answer before it is served. A rejection sends
/// the request on to the next fallback, as a failed attempt would. The plugin host
/// implements this for `validate` plugins.
pub trait Validate: Send + Sync {
    fn validate(&self, target: &Target, body: &Bytes) -> Verdict;
}

/// An answer the loop can look into for validation.
pub trait Answer {
    /// The complete body, when the answer is not streamed.
    fn complete_body(&self) -> Option<&Bytes>;
}

/// One step of the loop, for the header and the log.
#[derive(Debug, Clone)]
pub struct Step {
    pub backend: std::sync::Arc<str>,
    pub url: Option<String>,
    pub outcome: String,
}

/// Every step the loop took for one request.
#[derive(Debug, Clone, Default)]
pub struct Trail {
    pub steps: Vec<Step>,
    /// Index (0 = the chosen target) of the candidate that answered.
    pub answered_by: Option<usize>,
}

impl Trail {
    fn push(&mut self, target: &Target, url: Option<usize>, outcome: impl Into<String>) {
        self.steps.push(Step {
            backend: target.backend.name.clone(),
            url: url.and_then(|i| target.backend.urls.get(i).map(|u| u.authority.clone())),
            outcome: outcome.into(),
        });
    }

    /// The `x-switchyard-attempts` value: `backend@host:port outcome, ...`.
    pub fn header_value(&self) -> String {
        let mut s = String::with_capacity(48 * self.steps.len());
        for (i, st) in self.steps.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = match &st.url {
                Some(u) => write!(s, "{}@{} {}", st.backend, u, st.outcome),
                None => write!(s, "{} {}", st.backend, st.outcome),
            };
        }
        s
    }

    /// True when the first attempt did not simply succeed.
    pub fn eventful(&self) -> bool {
        self.steps.len() > 1 || self.steps.first().is_some_and(|s| s.outcome != "ok")
    }
}

/// The outcome word for an error, as it appears in the header.
fn outcome_of(e: &GatewayError) -> String {
    match e {
        GatewayError::UpstreamError { status, .. } => format!("http_{}", status.as_u16()),
        GatewayError::UpstreamStatus { status, .. } => format!("http_{status}"),
        GatewayError::UpstreamConnect { .. } => "connect_failed".into(),
        GatewayError::UpstreamTimeout { .. } => "timeout".into(),
        GatewayError::UpstreamBroken { .. } => "broken".into(),
        GatewayError::UpstreamGarbage { .. } => "invalid_answer".into(),
        other => other.kind().into(),
    }
}

/// Errors another target (or another try) might not have.
fn retryable(e: &GatewayError) -> bool {
    e.is_upstream_failure() || matches!(e, GatewayError::Saturated { .. })
}

/// Does this failure say the URL is unwell (breaker, ejection)? A 429 says it is busy.
fn counts_against_url(e: &GatewayError) -> bool {
    match e {
        GatewayError::UpstreamError { status, .. } => status.as_u16() != 429,
        GatewayError::UpstreamStatus { status, .. } => *status != 429,
        GatewayError::Saturated { .. } => false,
        _ => true,
    }
}

/// Run the loop over `candidates` (the chosen target first, then fallbacks). `once` does
/// one exchange with one URL of one target, holding the in-flight slot for as long as the
/// answer lives (for streams, until the stream ends).
pub async fn run<A, F, Fut>(
    candidates: &[Target],
    retries: u32,
    settings: &TrafficSettings,
    validator: Option<&dyn Validate>,
    mut once: F,
) -> (Result<A, GatewayError>, Trail)
where
    A: Answer,
    F: FnMut(Target, usize, Slot) -> Fut,
    Fut: Future<Output = Result<A, GatewayError>>,
{
    let budget = budget();
    budget.deposit(settings);
    let mut trail = Trail::default();
    let mut last_err: Option<GatewayError> = None;
    let mut attempts = 0u32;
    'candidates: for (ci, target) in candidates.iter().enumerate() {
        let pool = &target.backend.pool;
        let mut tried: Vec<usize> = Vec::new();
        let mut repeats = 0u32;
        loop {
            let now = Instant::now();
            let idx = match pool.pick(&tried, now) {
                Some(i) => i,
                None if tried.is_empty() => {
                    trail.push(target, None, "skipped_breaker_open");
                    last_err.get_or_insert(GatewayError::CircuitOpen {
                        backend: target.backend.name.to_string(),
                    });
                    continue 'candidates;
                }
                None => {
                    // Every URL of this target was tried: repeat it after a backoff, if
                    // the route allows repeats.
                    if repeats >= retries {
                        continue 'candidates;
                    }
                    repeats += 1;
                    tokio::time::sleep(settings.backoff(repeats)).await;
                    tried.clear();
                    match pool.pick(&tried, Instant::now()) {
                        Some(i) => i,
                        None => continue 'candidates,
                    }
                }
            };
            let url = &pool.urls[idx];
            if attempts > 0 && !budget.withdraw(settings) {
                trail.push(target, Some(idx), "retry_budget_exhausted");
                tracing::warn!(backend = %target.backend.name, "retry budget exhausted: not trying further targets");
                break 'candidates;
            }
            if url.breaker.admit(&pool.breaker, now) == Admit::No {
                trail.push(target, Some(idx), "skipped_breaker_open");
                tried.push(idx);
                last_err.get_or_insert(GatewayError::CircuitOpen {
                    backend: target.backend.name.to_string(),
                });
                continue;
            }
            attempts += 1;
            let slot = match url.acquire(pool).await {
                Ok(s) => s,
                Err(sat) => {
                    trail.push(target, Some(idx), "saturated");
                    tried.push(idx);
                    last_err = Some(GatewayError::Saturated {
                        backend: target.backend.name.to_string(),
                        max: sat.max,
                        queue: sat.queue,
                    });
                    continue;
                }
            };
            let sent = Instant::now();
            match once(target.clone(), idx, slot).await {
                Ok(answer) => {
                    let now = Instant::now();
                    url.breaker.record(&pool.breaker, true, now);
                    url.success(now.duration_since(sent));
                    if let (Some(v), Some(body)) = (validator, answer.complete_body())
                        && let Verdict::Reject(why) = v.validate(target, body)
                    {
                        trail.push(target, Some(idx), "rejected_by_validate");
                        last_err = Some(GatewayError::AnswerRejected {
                            backend: target.backend.name.to_string(),
                            reason: why,
                        });
                        continue 'candidates;
                    }
                    trail.push(target, Some(idx), "ok");
                    trail.answered_by = Some(ci);
                    return (Ok(answer), trail);
                }
                Err(e) if retryable(&e) => {
                    let now = Instant::now();
                    if counts_against_url(&e) {
                        url.breaker.record(&pool.breaker, false, now);
                        let refused = matches!(e, GatewayError::UpstreamConnect { .. });
                        url.failure(pool, refused, now);
                    }
                    trail.push(target, Some(idx), outcome_of(&e));
                    tried.push(idx);
                    last_err = Some(e);
                }
                Err(e) => {
                    // The upstream is alive and refused the request itself.
                    let now = Instant::now();
                    url.breaker.record(&pool.breaker, true, now);
                    url.success(now.duration_since(sent));
                    trail.push(target, Some(idx), outcome_of(&e));
                    return (Err(e), trail);
                }
            }
        }
    }
    let err = last_err.unwrap_or_else(|| GatewayError::Internal("no target to try".into()));
    (Err(err), trail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, load_str};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A route `m` with targets on backends `{p}a` (two URLs) and `{p}b`, fallback `{p}b`.
    fn candidates(p: &str) -> Vec<Target> {
        let rt = load_str(
            &format!(
                r#"
[[backends]]
name = "{p}a"
urls = ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"]
pool = {{ health_checks = false }}
[[backends]]
name = "{p}b"
url = "http://127.0.0.1:3/v1"
[[routes]]
model = "m"
targets = [{{ backend = "{p}a" }}]
fallback = [{{ backend = "{p}b" }}]
"#
            ),
            ConfigSource::Embedded,
        )
        .unwrap();
        let r = rt.route_for("m").unwrap();
        let mut c = vec![r.targets[0].clone()];
        c.extend(r.fallback.iter().cloned());
        c
    }

    struct Ok200;
    impl Answer for Ok200 {
        fn complete_body(&self) -> Option<&Bytes> {
            None
        }
    }

    struct Body(Bytes);
    impl Answer for Body {
        fn complete_body(&self) -> Option<&Bytes> {
            Some(&self.0)
        }
    }

    fn refused(t: &Target) -> GatewayError {
        GatewayError::UpstreamConnect {
            backend: t.backend.name.to_string(),
            detail: "refused".into(),
        }
    }

    #[tokio::test]
    async fn other_url_then_fallback_then_served() {
        let c = candidates("loop1");
        let calls = AtomicUsize::new(0);
        let (r, trail) = run(&c, 0, &TrafficSettings::default(), None, |t, _, _slot| {
            calls.fetch_add(1, Ordering::Relaxed);
            let fail = t.backend.name.ends_with('a');
            async move { if fail { Err(refused(&t)) } else { Ok(Ok200) } }
        })
        .await;
        assert!(r.is_ok());
        // Both URLs of the pool, then the fallback.
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        assert_eq!(trail.answered_by, Some(1));
        let h = trail.header_value();
        assert!(h.starts_with("loop1a@127.0.0.1:"), "{h}");
        assert!(h.contains("connect_failed"), "{h}");
        assert!(h.ends_with("loop1b@127.0.0.1:3 ok"), "{h}");
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let c = candidates("loop2");
        let calls = AtomicUsize::new(0);
        let (r, trail) = run(&c, 3, &TrafficSettings::default(), None, |t, _, _slot| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move {
                Err::<Ok200, _>(GatewayError::UpstreamError {
                    backend: t.backend.name.to_string(),
                    status: http::StatusCode::BAD_REQUEST,
                    body: Bytes::from_static(b"{}"),
                    retry_after: None,
                })
            }
        })
        .await;
        assert_eq!(r.err().map(|e| e.status().as_u16()), Some(400));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(trail.steps.len(), 1);
    }

    #[tokio::test]
    async fn retries_repeat_a_target_with_backoff_before_the_fallback() {
        let c = candidates("loop3");
        let on_a = AtomicUsize::new(0);
        let settings = TrafficSettings {
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
            ..TrafficSettings::default()
        };
        let (r, _) = run(&c, 2, &settings, None, |t, _, _slot| {
            let a = t.backend.name.ends_with('a');
            if a {
                on_a.fetch_add(1, Ordering::Relaxed);
            }
            async move {
                if a {
                    Err(GatewayError::UpstreamTimeout {
                        backend: t.backend.name.to_string(),
                        phase: "test",
                        secs: 1.0,
                    })
                } else {
                    Ok(Ok200)
                }
            }
        })
        .await;
        assert!(r.is_ok());
        // 2 URLs × (1 + 2 repeats).
        assert_eq!(on_a.load(Ordering::Relaxed), 6);
    }

    struct RejectShort;
    impl Validate for RejectShort {
        fn validate(&self, _t: &Target, body: &Bytes) -> Verdict {
            if body.len() < 5 {
                Verdict::Reject("too short".into())
            } else {
                Verdict::Accept
            }
        }
    }

    #[tokio::test]
    async fn a_validate_rejection_moves_to_the_fallback() {
        let c = candidates("loop4");
        let (r, trail) = run(
            &c,
            0,
            &TrafficSettings::default(),
            Some(&RejectShort),
            |t, _, _slot| {
                let body = if t.backend.name.ends_with('a') {
                    Bytes::from_static(b"no")
                } else {
                    Bytes::from_static(b"a long enough answer")
                };
                async move { Ok(Body(body)) }
            },
        )
        .await;
        assert_eq!(
            r.ok().map(|b| b.0),
            Some(Bytes::from_static(b"a long enough answer"))
        );
        assert!(
            trail.header_value().contains("rejected_by_validate"),
            "{}",
            trail.header_value()
        );
        // Rejected everywhere: a 502 that says why.
        let (r, _) = run(
            &c,
            0,
            &TrafficSettings::default(),
            Some(&RejectShort),
            |_, _, _slot| async move { Ok(Body(Bytes::from_static(b"no"))) },
        )
        .await;
        let e = r.err().unwrap();
        assert_eq!(e.status().as_u16(), 502);
        assert!(e.to_string().contains("too short"));
    }

    #[test]
    fn budget_limits_retries_to_a_share_of_requests() {
        let s = TrafficSettings {
            retry_ratio: 0.2,
            retry_min_per_sec: 0.0,
            ..TrafficSettings::default()
        };
        let b = RetryBudget::new();
        // Drain the initial burst.
        while b.withdraw(&s) {}
        let mut granted = 0;
        for _ in 0..1000 {
            b.deposit(&s);
            if b.withdraw(&s) {
                granted += 1;
            }
        }
        assert!((195..=200).contains(&granted), "granted {granted}");
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let s = TrafficSettings::default();
        for n in 1..20 {
            let d = s.backoff(n);
            assert!(d <= s.backoff_max);
            assert!(d <= s.backoff_base * (1 << (n - 1).min(16)));
        }
        let draws: std::collections::HashSet<u128> =
            (0..50).map(|_| s.backoff(3).as_micros()).collect();
        assert!(draws.len() > 10, "backoff is not jittered");
    }
}
