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
//! Per-URL state is kept by [`super::Upstreams`] keyed by backend name and base URL, so a
//! config reload keeps in-flight counts, latency history, breakers and health.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Upstream;
use super::breaker::Breaker;
use crate::config::PoolSettings;

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
    /// When the EWMA last learnt something (ms since `epoch`).
    ewma_at_ms: AtomicU64,
    pub breaker: Breaker,
    healthy: AtomicBool,
    ejected_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    /// When the last active health check of this URL was started.
    pub(super) last_check: Mutex<Option<Instant>>,
    pub served: AtomicU64,
    /// The origin of the millisecond timestamps above.
    epoch: Instant,
}

const EWMA_ALPHA: f64 = 0.3;
/// How fast an unrefreshed latency estimate fades (seconds, e-folding): a URL that was slow
/// once and then got no traffic must not be shunned forever, so its cost decays until it
/// is picked again and measured afresh (as in Finagle's peak EWMA).
const EWMA_DECAY_SECS: f64 = 5.0;

impl UrlState {
    /// A URL nothing is known about yet: healthy, idle, breaker closed.
    pub(super) fn new(backend: &str, base: &str, epoch: Instant) -> UrlState {
        UrlState {
            backend: Arc::from(backend),
            base: base.to_string(),
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            ewma_us: AtomicU64::new(0),
            ewma_at_ms: AtomicU64::new(0),
            breaker: Breaker::default(),
            healthy: AtomicBool::new(true),
            ejected_until_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            last_check: Mutex::new(None),
            served: AtomicU64::new(0),
            epoch,
        }
    }

    fn millis(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

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
        self.ejected_until_ms.load(Ordering::Relaxed) > self.millis(now)
    }

    fn score(&self, now: Instant) -> f64 {
        let ewma = f64::from_bits(self.ewma_us.load(Ordering::Relaxed));
        let age_s = self
            .millis(now)
            .saturating_sub(self.ewma_at_ms.load(Ordering::Relaxed)) as f64
            / 1000.0;
        let cost = (ewma * (-age_s / EWMA_DECAY_SECS).exp()).max(1.0);
        (self.in_flight() as f64 + 1.0) * cost
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
        self.ewma_at_ms
            .store(self.millis(Instant::now()), Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    /// A failure: eject at once when the URL refused the connection, else after a streak.
    pub fn failure(&self, pool: &PoolSettings, refused: bool, now: Instant) {
        let streak = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if refused || streak >= pool.eject_after {
            let until = self.millis(now + pool.eject_for);
            let was = self.ejected_until_ms.swap(until, Ordering::Relaxed);
            if was <= self.millis(now) {
                tracing::warn!(backend = %self.backend, url = %self.base, streak, refused, eject_secs = pool.eject_for.as_secs_f64(), "URL ejected from its pool");
            }
        }
    }

    pub(super) fn set_health(&self, ok: bool) {
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        if ok {
            // A passing check ends an ejection early: the worker is back.
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            if !was {
                // Its latency history is from before it went away: start afresh.
                self.ewma_us.store(0, Ordering::Relaxed);
            }
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
    pub async fn acquire(self: &Arc<Self>, pool: &PoolSettings) -> Result<Slot, Saturated> {
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

impl Upstream {
    /// Choose a URL for the next attempt, never one in `exclude`; `None` when every
    /// remaining URL has its breaker open.
    pub fn pick(&self, exclude: &[usize], now: Instant) -> Option<usize> {
        let n = self.urls.len();
        let breaker = &self.backend.breaker;
        let candidate =
            |i: usize| !exclude.contains(&i) && !self.urls[i].breaker.is_open(breaker, now);
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
            } else if panic_pick.is_none_or(|f| self.urls[f].score(now) > self.urls[i].score(now)) {
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
        Some(if self.urls[a].score(now) <= self.urls[b].score(now) {
            a
        } else {
            b
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend with `n` URLs, its pool as given, built into its live state.
    fn pool(n: usize, pool: &str) -> Arc<Upstream> {
        let urls: Vec<String> = (0..n).map(|i| format!("\"http://u{i}/v1\"")).collect();
        let rt = crate::config::load_str(
            &format!(
                "[[backends]]\nname = \"b\"\nurls = [{}]\npool = {{ health_checks = false, eject_after = 3, queue_timeout_secs = 0.1{pool} }}\n[[routes]]\nmodel = \"m\"\ntargets = [{{ backend = \"b\" }}]\n",
                urls.join(", ")
            ),
            crate::config::ConfigSource::Embedded,
        )
        .unwrap();
        super::super::Upstreams::default().build(&rt).unwrap()[0].clone()
    }

    #[test]
    fn p2c_prefers_the_idle_url() {
        let p = pool(2, "");
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
    fn a_stale_slow_estimate_fades_so_the_url_is_tried_again() {
        let p = pool(2, "");
        p.urls[0].success(Duration::from_millis(20));
        p.urls[1].success(Duration::from_millis(10));
        let now = Instant::now();
        assert_eq!(p.pick(&[], now), Some(1));
        // A minute later URL 1 has just been measured again; URL 0's 20 ms is a minute old.
        let later = now + Duration::from_secs(60);
        p.urls[1]
            .ewma_at_ms
            .store(p.urls[1].millis(later), Ordering::Relaxed);
        assert_eq!(p.pick(&[], later), Some(0));
    }

    #[test]
    fn ejected_url_is_skipped_until_all_are_out() {
        let p = pool(2, "");
        let now = Instant::now();
        p.urls[0].failure(&p.backend.pool, true, now);
        for _ in 0..50 {
            assert_eq!(p.pick(&[], now), Some(1));
        }
        // Both out: panic mode still offers one rather than nothing.
        for _ in 0..3 {
            p.urls[1].failure(&p.backend.pool, false, now);
        }
        assert!(p.pick(&[], now).is_some());
        // A health check pass readmits at once.
        p.urls[0].set_health(true);
        assert_eq!(p.pick(&[], now), Some(0));
    }

    #[tokio::test]
    async fn in_flight_limit_queues_then_refuses() {
        let p = pool(1, ", max_in_flight = 1, queue = 1");
        let u = p.urls[0].clone();
        let first = u.acquire(&p.backend.pool).await.unwrap();
        // The second waits in the queue and gets the slot when the first is released.
        let (u2, p2) = (u.clone(), p.clone());
        let waiter = tokio::spawn(async move { u2.acquire(&p2.backend.pool).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The queue (1) is full now: a third is refused at once.
        assert!(u.acquire(&p.backend.pool).await.is_err());
        drop(first);
        assert!(waiter.await.unwrap());
        assert_eq!(u.in_flight(), 0);
    }
}
