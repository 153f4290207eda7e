//! Pools: the URLs of one backend (one worker per GPU), which one gets the next request,
//! and how many requests each may hold.
//!
//! Choice is power-of-two-choices over the URLs that are admissible (breaker not open,
//! not ejected, last health check passed), scoring each by `(in_flight + 1) × latency EWMA`:
//! a slow or busy worker gets less, without the herd effect of always picking the global
//! minimum. Health is learnt two ways: active checks (`GET` the models list or a configured
//! path, on an interval) and passive outlier ejection (a refused connection, or several
//! failures in a row, takes the URL out for a while). When every URL is out, the pool still
//! tries them ("panic mode"), because an unverified URL beats a certain error.
//!
//! Per-URL state lives in a process-wide registry keyed by backend name and base URL, so a
//! config reload keeps in-flight counts, latency history, breakers and health.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::Full;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::breaker::{Breaker, BreakerSection, BreakerSettings};
use crate::config::{Backend, BackendUrl, Problem};
use crate::gateway::Gateway;

/// `pool = { ... }` on a backend, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// Most requests one URL may hold at once; unset means no limit.
    pub max_in_flight: Option<usize>,
    /// Requests that may wait for a free slot on a URL before the gateway answers 503.
    pub queue: Option<usize>,
    /// Longest a request waits in that queue, in seconds. Default 5.
    pub queue_timeout_secs: Option<f64>,
    /// Active health checks: on by default for backends with several `urls`.
    pub health_checks: Option<bool>,
    /// Path checked on each URL's host, e.g. `/healthz`. Default: the base URL + `/models`.
    pub health_path: Option<String>,
    /// Seconds between health checks of one URL. Default 5.
    pub health_interval_secs: Option<f64>,
    /// Consecutive failures that eject a URL. Default 5 (a refused connection ejects at once).
    pub eject_after: Option<u32>,
    /// Seconds an ejected URL sits out (unless a health check passes sooner). Default 10.
    pub eject_secs: Option<f64>,
}

/// A backend's traffic settings and its URLs' shared state, parallel to `Backend::urls`.
#[derive(Debug)]
pub struct Pool {
    pub urls: Vec<Arc<UrlState>>,
    pub breaker: BreakerSettings,
    pub max_in_flight: Option<usize>,
    pub queue: usize,
    pub queue_timeout: Duration,
    /// The URI checked on each URL, or none when active checks are off.
    pub health: Option<Vec<Uri>>,
    pub health_interval: Duration,
    pub eject_after: u32,
    pub eject_for: Duration,
}

/// One upstream URL's live state, shared by every config version that names it.
#[derive(Debug)]
pub struct UrlState {
    pub backend: Arc<str>,
    pub base: String,
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
    freed: Notify,
    /// Latency EWMA in microseconds (f64 bits); 0 until the first answer.
    ewma_us: AtomicU64,
    pub breaker: Breaker,
    healthy: AtomicBool,
    ejected_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    last_check: Mutex<Option<Instant>>,
    pub served: AtomicU64,
}

fn epoch() -> Instant {
    static E: OnceLock<Instant> = OnceLock::new();
    *E.get_or_init(Instant::now)
}

fn millis(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_millis() as u64
}

type Registry = Mutex<HashMap<(String, String), Arc<UrlState>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The live state of `backend`'s URL `base` (created on first use).
pub fn url_state(backend: &str, base: &str) -> Arc<UrlState> {
    let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
    map.entry((backend.to_string(), base.to_string()))
        .or_insert_with(|| {
            Arc::new(UrlState {
                backend: Arc::from(backend),
                base: base.to_string(),
                in_flight: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                freed: Notify::new(),
                ewma_us: AtomicU64::new(0),
                breaker: Breaker::default(),
                healthy: AtomicBool::new(true),
                ejected_until_ms: AtomicU64::new(0),
                consecutive_failures: AtomicU32::new(0),
                last_check: Mutex::new(None),
                served: AtomicU64::new(0),
            })
        })
        .clone()
}

const EWMA_ALPHA: f64 = 0.3;

impl UrlState {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn ewma(&self) -> Duration {
        Duration::from_micros(f64::from_bits(self.ewma_us.load(Ordering::Relaxed)) as u64)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > millis(now)
    }

    fn score(&self) -> f64 {
        let ewma = f64::from_bits(self.ewma_us.load(Ordering::Relaxed)).max(1.0);
        (self.in_flight() as f64 + 1.0) * ewma
    }

    /// A success: feed the latency EWMA, clear the failure streak.
    pub fn success(&self, latency: Duration) {
        let sample = latency.as_micros() as f64;
        let _ = self
            .ewma_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let old = f64::from_bits(bits);
                let new = if old == 0.0 {
                    sample
                } else {
                    old + EWMA_ALPHA * (sample - old)
                };
                Some(new.to_bits())
            });
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    /// A failure: eject at once when the URL refused the connection, else after a streak.
    pub fn failure(&self, pool: &Pool, refused: bool, now: Instant) {
        let streak = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if refused || streak >= pool.eject_after {
            let until = millis(now + pool.eject_for);
            let was = self.ejected_until_ms.swap(until, Ordering::Relaxed);
            if was <= millis(now) {
                tracing::warn!(backend = %self.backend, url = %self.base, streak, refused, eject_secs = pool.eject_for.as_secs_f64(), "URL ejected from its pool");
            }
        }
    }

    fn set_health(&self, ok: bool) {
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        if ok {
            // A passing check ends an ejection early: the worker is back.
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
        if was != ok {
            if ok {
                tracing::info!(backend = %self.backend, url = %self.base, "health check passed: URL back in its pool");
            } else {
                tracing::warn!(backend = %self.backend, url = %self.base, "health check failed: URL out of its pool");
            }
        }
    }

    /// Take a slot on this URL, waiting in its bounded queue when it is full.
    pub async fn acquire(self: &Arc<Self>, pool: &Pool) -> Result<Slot, Saturated> {
        let Some(max) = pool.max_in_flight else {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            return Ok(Slot(self.clone()));
        };
        if self.try_take(max) {
            return Ok(Slot(self.clone()));
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= pool.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Saturated {
                max,
                queue: pool.queue,
            });
        }
        let deadline = tokio::time::Instant::now() + pool.queue_timeout;
        let result = loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Register before checking, so a release between the check and the wait is seen.
            freed.as_mut().enable();
            if self.try_take(max) {
                break Ok(Slot(self.clone()));
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break Err(Saturated {
                    max,
                    queue: pool.queue,
                });
            }
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        result
    }

    fn try_take(&self, max: usize) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }
}

/// Every URL that could take the request is at its in-flight limit with a full queue.
#[derive(Debug, Clone, Copy)]
pub struct Saturated {
    pub max: usize,
    pub queue: usize,
}

/// A held in-flight slot; released on drop (for streams, when the stream ends).
#[derive(Debug)]
pub struct Slot(Arc<UrlState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl Pool {
    /// Validate a backend's `breaker` and `pool` tables and attach its URLs' live state.
    pub fn build(
        name: &str,
        urls: &[BackendUrl],
        breaker: Option<&BreakerSection>,
        pool: Option<&PoolSection>,
        path: &str,
        problems: &mut Vec<Problem>,
    ) -> Pool {
        let breaker = BreakerSettings::from_section(breaker, &format!("{path}.breaker"), problems);
        let p = pool.cloned().unwrap_or_default();
        let pp = format!("{path}.pool");
        let mut secs = |key: &str, v: Option<f64>, default: f64| -> Duration {
            let v = v.unwrap_or(default);
            if v.is_finite() && v > 0.0 && v < 1e7 {
                Duration::from_secs_f64(v)
            } else {
                problems.push(Problem::new(
                    format!("{pp}.{key}"),
                    format!("must be a positive number of seconds, got {v}"),
                ));
                Duration::from_secs_f64(default)
            }
        };
        let queue_timeout = secs("queue_timeout_secs", p.queue_timeout_secs, 5.0);
        let health_interval = secs("health_interval_secs", p.health_interval_secs, 5.0);
        let eject_for = secs("eject_secs", p.eject_secs, 10.0);
        if p.max_in_flight == Some(0) {
            problems.push(Problem::new(
                format!("{pp}.max_in_flight"),
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        let checks = p.health_checks.unwrap_or(urls.len() > 1);
        let health = if checks {
            let mut uris = Vec::new();
            for u in urls {
                match &p.health_path {
                    None => uris.push(u.models_uri.clone()),
                    Some(hp) if hp.starts_with('/') => {
                        let scheme = if u.base.starts_with("https://") {
                            "https"
                        } else {
                            "http"
                        };
                        match format!("{scheme}://{}{hp}", u.authority).parse::<Uri>() {
                            Ok(uri) => uris.push(uri),
                            Err(e) => {
                                problems.push(Problem::new(
                                    format!("{pp}.health_path"),
                                    format!("\"{hp}\" is not a valid path: {e}"),
                                ));
                                break;
                            }
                        }
                    }
                    Some(hp) => {
                        problems.push(Problem::new(
                            format!("{pp}.health_path"),
                            format!("must start with '/', got \"{hp}\""),
                        ));
                        break;
                    }
                }
            }
            Some(uris)
        } else {
            None
        };
        Pool {
            urls: urls.iter().map(|u| url_state(name, &u.base)).collect(),
            breaker,
            max_in_flight: p.max_in_flight,
            queue: p.queue.unwrap_or(64),
            queue_timeout,
            health,
            health_interval,
            eject_after: p.eject_after.unwrap_or(5).max(1),
            eject_for,
        }
    }

    /// Choose a URL for the next attempt, never one in `exclude`; `None` when every
    /// remaining URL has its breaker open.
    pub fn pick(&self, exclude: &[usize], now: Instant) -> Option<usize> {
        let n = self.urls.len();
        let candidate =
            |i: usize| !exclude.contains(&i) && !self.urls[i].breaker.is_open(&self.breaker, now);
        let admissible = |i: usize| {
            let u = &self.urls[i];
            u.is_healthy() && !u.is_ejected(now)
        };
        if n == 1 {
            // One URL: health and ejection cannot send the request elsewhere.
            return candidate(0).then_some(0);
        }
        // Two passes instead of a collected list: no allocation on the request path.
        let mut k = 0;
        let mut panic_pick: Option<usize> = None;
        for i in 0..n {
            if !candidate(i) {
                continue;
            }
            if admissible(i) {
                k += 1;
            } else if panic_pick.is_none_or(|f| self.urls[f].score() > self.urls[i].score()) {
                panic_pick = Some(i);
            }
        }
        if k == 0 {
            return panic_pick;
        }
        let nth = |rank: usize| (0..n).filter(|&i| candidate(i) && admissible(i)).nth(rank);
        if k == 1 {
            return nth(0);
        }
        let a = fastrand::usize(0..k);
        let mut b = fastrand::usize(0..k - 1);
        if b >= a {
            b += 1;
        }
        let (a, b) = (nth(a)?, nth(b)?);
        Some(if self.urls[a].score() <= self.urls[b].score() {
            a
        } else {
            b
        })
    }
}

/// Run active health checks for the config in force, forever.
pub fn spawn_health_checks(gw: Arc<Gateway>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let rt = gw.runtime();
            let now = Instant::now();
            for b in &rt.backends {
                let Some(uris) = &b.pool.health else {
                    continue;
                };
                for (i, u) in b.pool.urls.iter().enumerate() {
                    let due = {
                        let mut last = u.last_check.lock().unwrap_or_else(|p| p.into_inner());
                        let due =
                            last.is_none_or(|t| now.duration_since(t) >= b.pool.health_interval);
                        if due {
                            *last = Some(now);
                        }
                        due
                    };
                    if due && let Some(uri) = uris.get(i) {
                        tokio::spawn(check_one(b.clone(), u.clone(), uri.clone()));
                    }
                }
            }
        }
    });
}

async fn check_one(backend: Arc<Backend>, url: Arc<UrlState>, uri: Uri) {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    if let Some(auth) = &backend.auth {
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, auth.clone());
    }
    let timeout = backend.pool.health_interval.min(Duration::from_secs(2));
    let ok = matches!(
        tokio::time::timeout(timeout, backend.client.request(req)).await,
        Ok(Ok(r)) if r.status().is_success()
    );
    url.set_health(ok);
}

/// Prometheus lines for every URL of the config in force: breaker state, in-flight,
/// latency EWMA, health.
pub fn render_metrics(rt: &crate::config::Runtime, out: &mut String) {
    use std::fmt::Write;
    let now = Instant::now();
    out.push_str("# HELP switchyard_breaker_state Circuit breaker per backend URL: 0 closed, 1 open, 2 half-open.\n# TYPE switchyard_breaker_state gauge\n");
    for b in &rt.backends {
        for u in &b.pool.urls {
            let s = u.breaker.snapshot(&b.pool.breaker, now);
            let _ = writeln!(
                out,
                "switchyard_breaker_state{{backend=\"{}\",url=\"{}\"}} {}",
                b.name,
                u.base,
                s.state.gauge()
            );
        }
    }
    out.push_str("# HELP switchyard_upstream_in_flight Requests held by each backend URL.\n# TYPE switchyard_upstream_in_flight gauge\n");
    for b in &rt.backends {
        for u in &b.pool.urls {
            let _ = writeln!(
                out,
                "switchyard_upstream_in_flight{{backend=\"{}\",url=\"{}\"}} {}",
                b.name,
                u.base,
                u.in_flight()
            );
        }
    }
    out.push_str("# HELP switchyard_upstream_healthy 1 when a backend URL is in its pool (health check passing, not ejected).\n# TYPE switchyard_upstream_healthy gauge\n");
    for b in &rt.backends {
        for u in &b.pool.urls {
            let up = u.is_healthy() && !u.is_ejected(now);
            let _ = writeln!(
                out,
                "switchyard_upstream_healthy{{backend=\"{}\",url=\"{}\"}} {}",
                b.name,
                u.base,
                u8::from(up)
            );
        }
    }
    out.push_str("# HELP switchyard_upstream_latency_ewma_seconds Latency EWMA per backend URL (time to response start).\n# TYPE switchyard_upstream_latency_ewma_seconds gauge\n");
    for b in &rt.backends {
        for u in &b.pool.urls {
            let _ = writeln!(
                out,
                "switchyard_upstream_latency_ewma_seconds{{backend=\"{}\",url=\"{}\"}} {:.6}",
                b.name,
                u.base,
                u.ewma().as_secs_f64()
            );
        }
    }
}

/// JSON for `GET /admin/breakers`.
pub fn breakers_json(rt: &crate::config::Runtime) -> serde_json::Value {
    let now = Instant::now();
    let mut list = Vec::new();
    for b in &rt.backends {
        for u in &b.pool.urls {
            let s = u.breaker.snapshot(&b.pool.breaker, now);
            list.push(serde_json::json!({
                "backend": &*b.name,
                "url": u.base,
                "state": s.state.as_str(),
                "window_requests": s.requests,
                "window_failures": s.failures,
                "error_rate": if s.requests > 0 { s.failures as f64 / s.requests as f64 } else { 0.0 },
                "threshold": b.pool.breaker.error_rate,
                "opened_total": s.opened_total,
                "state_for_secs": s.since.as_secs_f64(),
                "probe_in_secs": s.retry_in.map(|d| d.as_secs_f64()),
                "in_flight": u.in_flight(),
                "healthy": u.is_healthy(),
                "ejected": u.is_ejected(now),
                "latency_ewma_ms": u.ewma().as_secs_f64() * 1000.0,
            }));
        }
    }
    serde_json::json!({ "breakers": list })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, n: usize, max: Option<usize>, queue: usize) -> Pool {
        Pool {
            urls: (0..n)
                .map(|i| url_state(name, &format!("http://u{i}")))
                .collect(),
            breaker: BreakerSettings::default(),
            max_in_flight: max,
            queue,
            queue_timeout: Duration::from_millis(100),
            health: None,
            health_interval: Duration::from_secs(5),
            eject_after: 3,
            eject_for: Duration::from_secs(10),
        }
    }

    #[test]
    fn p2c_prefers_the_idle_url() {
        let p = pool("p2c", 2, None, 0);
        p.urls[0].success(Duration::from_millis(10));
        p.urls[1].success(Duration::from_millis(10));
        p.urls[0].in_flight.store(5, Ordering::Relaxed);
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(p.pick(&[], now), Some(1));
        }
        // A slower URL loses to an equally idle fast one.
        p.urls[0].in_flight.store(0, Ordering::Relaxed);
        p.urls[1].success(Duration::from_millis(200));
        assert_eq!(p.pick(&[], now), Some(0));
        assert_eq!(p.pick(&[0], now), Some(1));
        assert_eq!(p.pick(&[0, 1], now), None);
    }

    #[test]
    fn ejected_url_is_skipped_until_all_are_out() {
        let p = pool("eject", 2, None, 0);
        let now = Instant::now();
        p.urls[0].failure(&p, true, now);
        for _ in 0..50 {
            assert_eq!(p.pick(&[], now), Some(1));
        }
        // Both out: panic mode still offers one rather than nothing.
        for _ in 0..3 {
            p.urls[1].failure(&p, false, now);
        }
        assert!(p.pick(&[], now).is_some());
        // A health check pass readmits at once.
        p.urls[0].set_health(true);
        assert_eq!(p.pick(&[], now), Some(0));
    }

    #[tokio::test]
    async fn in_flight_limit_queues_then_refuses() {
        let p = pool("limit", 1, Some(1), 1);
        let u = p.urls[0].clone();
        let first = u.acquire(&p).await.unwrap();
        // The second waits in the queue and gets the slot when the first is released.
        let u2 = u.clone();
        let p2 = pool("limit", 1, Some(1), 1);
        let waiter = tokio::spawn(async move { u2.acquire(&p2).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The queue (1) is full now: a third is refused at once.
        assert!(u.acquire(&p).await.is_err());
        drop(first);
        assert!(waiter.await.unwrap());
        assert_eq!(u.in_flight(), 0);
    }
}
