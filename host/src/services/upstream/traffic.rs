//! Traffic accounting shared by every request: the retry budget and the attempt counters.
//!
//! The retry budget keeps a failing fleet from turning each request into several: every
//! request earns a share of a retry, a small floor refills it per second, and every attempt
//! after a request's first spends one. Under a full outage retries stop, breakers open, and
//! the fallback is reached without a wasted attempt.

use crate::base::CounterMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::{Backend, TrafficSettings};

/// The retry budget every request shares, and the attempts made, by backend and outcome.
#[derive(Debug, Default)]
pub struct Traffic {
    pub budget: RetryBudget,
    attempts: CounterMap<(Arc<str>, String), AtomicU64>,
}

impl Traffic {
    /// Count one attempt (or skipped attempt) of `backend` with `outcome`.
    pub fn count(&self, backend: &Arc<str>, outcome: &str) {
        if let Some(c) = self.attempts.get(&(backend.clone(), outcome.to_string())) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.attempts
            .entry((backend.clone(), outcome.to_string()))
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus lines: every attempt the loop made or skipped, by backend and outcome.
    pub fn render_metrics(&self, out: &mut String) {
        out.push_str("# HELP switchyard_attempts_total Upstream attempts by backend and outcome (ok, http_500, timeout, skipped_breaker_open, ...); more than one per request means retries or fallback.\n# TYPE switchyard_attempts_total counter\n");
        let mut rows: Vec<(String, String, u64)> = self
            .attempts
            .iter()
            .map(|e| {
                (
                    e.key().0.to_string(),
                    e.key().1.clone(),
                    e.value().load(Ordering::Relaxed),
                )
            })
            .collect();
        rows.sort();
        for (b, o, n) in rows {
            let _ = writeln!(
                out,
                "switchyard_attempts_total{{backend=\"{b}\",outcome=\"{o}\"}} {n}"
            );
        }
    }
}

/// The retry budget: a token bucket, filled by a share of requests plus a floor per second.
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

/// One step of the loop, for the header and the log.
#[derive(Debug, Clone)]
pub struct Step {
    pub backend: Arc<str>,
    pub url: Option<String>,
    pub outcome: String,
}

/// Every step the loop took for one request.
#[derive(Debug, Clone, Default)]
pub struct Trail {
    pub steps: Vec<Step>,
    /// Index (0 = the chosen target) of the candidate that answered.
    pub answered_by: Option<usize>,
    /// The chosen target failed (or its breaker was open), whoever answered in the end.
    pub chosen_failed: bool,
    /// The chosen target's answer was rejected by a `validate` check.
    pub chosen_rejected: bool,
}

impl Trail {
    /// Record (and count in `traffic`) an attempt of `backend`'s URL `url` (`None`: no URL
    /// was tried) with `outcome`.
    pub fn push(
        &mut self,
        traffic: &Traffic,
        backend: &Backend,
        url: Option<usize>,
        outcome: impl Into<String>,
    ) {
        let outcome = outcome.into();
        traffic.count(&backend.name, &outcome);
        self.steps.push(Step {
            backend: backend.name.clone(),
            url: url.and_then(|i| backend.urls.get(i).map(|u| u.authority.clone())),
            outcome,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
