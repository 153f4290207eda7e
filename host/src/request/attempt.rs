//! Phase `attempt`: which target and URL get the request, and what happens when one fails.
//!
//! [`attempt`] is the phase: the chosen target and the route's fallbacks become
//! [`Candidate`]s, each try is an `exchange` adapted for its target, and the [`Trail`] of
//! attempts becomes the `x-switchyard-attempts` header and the failed tries' ledger rows.
//! [`run`] is the loop itself, generic over what one try does:
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

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http::HeaderValue;

use super::context::RequestCtx;
use super::exchange::{Exchange, Exchanged, StreamEnd, exchange};
use super::validate::PluginValidator;
use crate::base::GatewayError;
use crate::base::openai::RequestBody;
use crate::config::{Target, TrafficSettings};
use crate::services::Services;
use crate::services::plugins::Pass;
use crate::services::rollout::Outcome;
use crate::services::upstream::Upstream;
use crate::services::upstream::breaker::Admit;
use crate::services::upstream::pool::Slot;
use crate::services::upstream::traffic::{Traffic, Trail};

/// What a `validate` plugin (or any answer check) says about an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Reject(String),
}

/// An answer check run on every complete answer before it is served. A rejection sends
/// the request on to the next fallback, as a failed attempt would. Phase `validate`
/// implements it for `validate` plugins.
pub trait Validate: Send + Sync {
    fn validate(&self, target: &Target, body: &Bytes) -> Verdict;
}

/// An answer the loop can look into for validation.
pub trait Answer {
    /// The complete body, when the answer is not streamed.
    fn complete_body(&self) -> Option<&Bytes>;
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

/// A target the loop may try, with its live upstream.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub target: Target,
    pub upstream: Arc<Upstream>,
}

/// What the loop runs over.
pub struct Loop<'a> {
    /// The chosen target first, then the fallbacks.
    pub candidates: &'a [Candidate],
    /// Repeats of a failed target (after its other URLs) before the next candidate.
    pub retries: u32,
    pub settings: &'a TrafficSettings,
    /// The retry budget and the attempt counters.
    pub traffic: &'a Traffic,
    pub validator: Option<&'a dyn Validate>,
}

/// Run the loop. `once` does one exchange with one URL of one candidate, holding the
/// in-flight slot for as long as the answer lives (for streams, until the stream ends).
pub async fn run<A, F, Fut>(l: Loop<'_>, mut once: F) -> (Result<A, GatewayError>, Trail)
where
    A: Answer,
    F: FnMut(Candidate, usize, Slot) -> Fut,
    Fut: Future<Output = Result<A, GatewayError>>,
{
    let Loop {
        candidates,
        retries,
        settings,
        traffic,
        validator,
    } = l;
    let budget = &traffic.budget;
    budget.deposit(settings);
    let mut trail = Trail::default();
    let mut last_err: Option<GatewayError> = None;
    let mut attempts = 0u32;
    'candidates: for (ci, candidate) in candidates.iter().enumerate() {
        let (target, up) = (&candidate.target, &candidate.upstream);
        let backend = &*up.backend;
        let pool = &backend.pool;
        let mut tried: Vec<usize> = Vec::new();
        let mut repeats = 0u32;
        loop {
            let now = Instant::now();
            let idx = match up.pick(&tried, now) {
                Some(i) => i,
                None if tried.is_empty() => {
                    trail.chosen_failed |= ci == 0;
                    trail.push(traffic, backend, None, "skipped_breaker_open");
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
                    match up.pick(&tried, Instant::now()) {
                        Some(i) => i,
                        None => continue 'candidates,
                    }
                }
            };
            let url = &up.urls[idx];
            if attempts > 0 && !budget.withdraw(settings) {
                trail.push(traffic, backend, Some(idx), "retry_budget_exhausted");
                tracing::warn!(backend = %target.backend.name, "retry budget exhausted: not trying further targets");
                break 'candidates;
            }
            if url.breaker.admit(&backend.breaker, now) == Admit::No {
                trail.chosen_failed |= ci == 0;
                trail.push(traffic, backend, Some(idx), "skipped_breaker_open");
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
                    trail.push(traffic, backend, Some(idx), "saturated");
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
            match once(candidate.clone(), idx, slot).await {
                Ok(answer) => {
                    let now = Instant::now();
                    url.breaker.record(&backend.breaker, true, now);
                    url.success(now.duration_since(sent));
                    if let (Some(v), Some(body)) = (validator, answer.complete_body())
                        && let Verdict::Reject(why) = v.validate(target, body)
                    {
                        trail.chosen_rejected |= ci == 0;
                        trail.push(traffic, backend, Some(idx), "rejected_by_validate");
                        last_err = Some(GatewayError::AnswerRejected {
                            backend: target.backend.name.to_string(),
                            reason: why,
                        });
                        continue 'candidates;
                    }
                    trail.push(traffic, backend, Some(idx), "ok");
                    trail.answered_by = Some(ci);
                    return (Ok(answer), trail);
                }
                Err(e) if retryable(&e) => {
                    let now = Instant::now();
                    if counts_against_url(&e) {
                        url.breaker.record(&backend.breaker, false, now);
                        let refused = matches!(e, GatewayError::UpstreamConnect { .. });
                        url.failure(pool, refused, now);
                    }
                    trail.chosen_failed |= ci == 0;
                    trail.push(traffic, backend, Some(idx), outcome_of(&e));
                    tried.push(idx);
                    last_err = Some(e);
                }
                Err(e) => {
                    // The upstream is alive and refused the request itself.
                    let now = Instant::now();
                    url.breaker.record(&backend.breaker, true, now);
                    url.success(now.duration_since(sent));
                    trail.push(traffic, backend, Some(idx), outcome_of(&e));
                    return (Err(e), trail);
                }
            }
        }
    }
    let err = last_err.unwrap_or_else(|| GatewayError::Internal("no target to try".into()));
    (Err(err), trail)
}

/// How the chosen target fared, for its rollout arm: a failure counts even when a fallback
/// then served the request; the latency is the chosen target's answer (the whole answer
/// when complete, its start when streamed), measured from the loop's start.
fn rollout_outcome(trail: &Trail, started: Instant) -> Outcome {
    if trail.chosen_failed {
        Outcome::Failed
    } else if trail.chosen_rejected {
        Outcome::Rejected
    } else if trail.answered_by == Some(0) {
        Outcome::Served(started.elapsed())
    } else {
        Outcome::Other
    }
}

/// What the attempt phase works with.
pub struct AttemptPhase<'a> {
    pub services: &'a Services,
    pub ctx: &'a mut RequestCtx,
    pub request: &'a RequestBody,
    pub headers: &'a HeaderMap,
    pub pass: &'a Pass,
    pub validator: Option<&'a PluginValidator<'a>>,
    pub stream_end: Arc<StreamEnd>,
}

/// Phase `attempt`: the chosen target, then the route's fallbacks, through the attempt
/// loop; each try is an `exchange`, adapted for its target by the `adapt` plugins. The trail
/// of attempts becomes the `x-switchyard-attempts` header and the ledger rows of the failed
/// tries.
pub async fn attempt(a: AttemptPhase<'_>) -> Result<Exchanged, GatewayError> {
    let AttemptPhase {
        services,
        ctx,
        request,
        headers,
        pass,
        validator,
        stream_end,
    } = a;
    let (Some(route), Some(chosen)) = (ctx.route.clone(), ctx.target.clone()) else {
        return Err(GatewayError::Internal("no route chosen".into()));
    };
    let snapshot = ctx.snapshot.clone();
    let candidate = |t: &crate::config::Target| Candidate {
        target: t.clone(),
        upstream: snapshot.upstream(&t.backend).clone(),
    };
    let mut candidates = Vec::with_capacity(1 + route.fallback.len());
    candidates.push(candidate(&chosen));
    // A fallback that cannot take this request (an Anthropic-only backend for a chat
    // client, a translating one for stored Responses state) is no fallback for it.
    candidates.extend(
        route
            .fallback
            .iter()
            .filter(|t| super::protocol::serves(ctx, t))
            .map(candidate),
    );
    let x = Exchange {
        services,
        config: &snapshot.config,
        endpoint: ctx.endpoint,
        client_path: ctx.client_path(),
        started: ctx.started,
        route: route.name.clone(),
        request,
        client_headers: headers,
        telemetry: &ctx.telemetry,
        stream_end,
        // A stream is held until complete when a `validate` plugin asks to judge streams.
        hold_stream: request.stream && pass.validates() && pass.holds_streams(),
        chunks: request.stream.then(|| pass.chunk_hook()).flatten(),
        max_event: snapshot.config.server.max_event_bytes,
        max_answer: snapshot.config.server.max_answer_bytes,
        native: ctx.original.as_ref().map(|b| (ctx.protocol, b)),
        stateful: ctx.stateful.is_some(),
    };
    let last_tried = std::sync::Mutex::new(None);
    let loop_started = std::time::Instant::now();
    let (result, trail) = run(
        Loop {
            candidates: &candidates,
            retries: route.flags.retries,
            settings: &snapshot.config.traffic,
            traffic: &services.upstreams.traffic,
            validator: validator.map(|v| v as &dyn Validate),
        },
        |cand, url, slot| {
            if let Ok(mut l) = last_tried.lock() {
                *l = Some(cand.target.clone());
            }
            // Phase adapt, per attempt: a fallback to another model family gets its own
            // rewrite of the client's original request.
            let model = cand.target.upstream_model(&request.model).to_owned();
            let adapted = pass.adapt(&cand.target, &model);
            exchange(&x, cand, url, slot, adapted)
        },
    )
    .await;
    drop(x);
    if let Ok(Some(t)) = last_tried.into_inner() {
        ctx.upstream_model = Some(Arc::from(t.upstream_model(&request.model)));
        ctx.target = Some(t);
    }
    if let Some(arm) = ctx.rollout_arm {
        services
            .rollouts
            .record(&route.name, arm, rollout_outcome(&trail, loop_started));
    }
    if let Some(gov) = &services.governance {
        gov.record_attempts(Some(&route.name), &mut ctx.account, &trail.steps);
    }
    if trail.eventful() {
        tracing::info!(route = %route.name, attempts = %trail.header_value(), answered = result.is_ok(), "fallback: more than one attempt");
    }
    ctx.attempts = HeaderValue::from_str(&trail.header_value()).ok();
    let exchanged = result?;
    ctx.upstream_time = exchanged.upstream_time;
    ctx.passed_through = exchanged.native;
    Ok(exchanged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, load_str};
    use crate::services::upstream::Upstreams;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A route `m` with targets on backends `{p}a` (two URLs) and `{p}b`, fallback `{p}b`.
    fn candidates(p: &str) -> Vec<Candidate> {
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
        let ups = Upstreams::default().build(&rt).unwrap();
        let r = rt.route_for("m").unwrap();
        std::iter::once(&r.targets[0])
            .chain(&r.fallback)
            .map(|t| Candidate {
                target: t.clone(),
                upstream: ups[t.backend.index].clone(),
            })
            .collect()
    }

    fn lp<'a>(
        c: &'a [Candidate],
        retries: u32,
        settings: &'a TrafficSettings,
        traffic: &'a Traffic,
        validator: Option<&'a dyn Validate>,
    ) -> Loop<'a> {
        Loop {
            candidates: c,
            retries,
            settings,
            traffic,
            validator,
        }
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
        let (s, tr) = (TrafficSettings::default(), Traffic::default());
        let (r, trail) = run(lp(&c, 0, &s, &tr, None), |cand, _, _slot| {
            let t = cand.target;
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
        let (s, tr) = (TrafficSettings::default(), Traffic::default());
        let (r, trail) = run(lp(&c, 3, &s, &tr, None), |cand, _, _slot| {
            let t = cand.target;
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
        let tr = Traffic::default();
        let (r, _) = run(lp(&c, 2, &settings, &tr, None), |cand, _, _slot| {
            let t = cand.target;
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
        let (s, tr) = (TrafficSettings::default(), Traffic::default());
        let (r, trail) = run(lp(&c, 0, &s, &tr, Some(&RejectShort)), |cand, _, _slot| {
            let t = cand.target;
            let body = if t.backend.name.ends_with('a') {
                Bytes::from_static(b"no")
            } else {
                Bytes::from_static(b"a long enough answer")
            };
            async move { Ok(Body(body)) }
        })
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
            lp(&c, 0, &s, &tr, Some(&RejectShort)),
            |_, _, _slot| async move { Ok(Body(Bytes::from_static(b"no"))) },
        )
        .await;
        let e = r.err().unwrap();
        assert_eq!(e.status().as_u16(), 502);
        assert!(e.to_string().contains("too short"));
    }
}
