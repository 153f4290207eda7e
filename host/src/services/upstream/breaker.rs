//! Circuit breaker per backend URL: stop sending to a target that is failing, find out
//! cheaply when it has recovered.
//!
//! The breaker counts outcomes in a rolling window of time buckets (the migration playbook's
//! rule: open at 2 % errors over 5 minutes, once a minimum number of requests were seen).
//! Open means skipped instantly by the attempt loop, without a connection attempt. After the
//! cool-down one request at a time is let through as a probe (half-open); a successful probe
//! closes the breaker with a fresh window, a failed one re-opens it for another cool-down.
//! The state lives with the URL's other live state (`pool::UrlState`), which every config
//! version naming that URL shares, so a config reload keeps it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::BreakerSettings;

/// Number of buckets the window is cut into: expiry is smooth to 1/20th of the window.
const BUCKETS: usize = 20;

/// What the breaker says about sending a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: send.
    Yes,
    /// Half-open: send, as the one probe.
    Probe,
    /// Open: skip this URL.
    No,
}

/// The breaker's state, as reported in metrics and on the admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> u8 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which window slot this bucket counts (bucket index since `epoch`).
    slot: u64,
    total: u64,
    failed: u64,
}

#[derive(Debug)]
struct Inner {
    state: State,
    buckets: [Bucket; BUCKETS],
    /// Open: when the next probe may go. Half-open: when the running probe is presumed lost.
    until: Instant,
    probe_in_flight: bool,
    opened_total: u64,
    last_change: Instant,
}

/// One URL's breaker.
#[derive(Debug)]
pub struct Breaker {
    epoch: Instant,
    inner: Mutex<Inner>,
}

impl Default for Breaker {
    fn default() -> Self {
        let now = Instant::now();
        Breaker {
            epoch: now,
            inner: Mutex::new(Inner {
                state: State::Closed,
                buckets: [Bucket::default(); BUCKETS],
                until: now,
                probe_in_flight: false,
                opened_total: 0,
                last_change: now,
            }),
        }
    }
}

/// A snapshot for metrics and the admin endpoint.
#[derive(Debug, Clone, Copy)]
pub struct BreakerReport {
    pub state: State,
    pub requests: u64,
    pub failures: u64,
    pub opened_total: u64,
    pub since: Duration,
    /// Open: time left until the next probe.
    pub retry_in: Option<Duration>,
}

impl Breaker {
    fn slot(&self, now: Instant, s: &BreakerSettings) -> u64 {
        let width = (s.window.as_nanos() / BUCKETS as u128).max(1);
        (now.saturating_duration_since(self.epoch).as_nanos() / width) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counts inconsistent enough to
        // matter; keep serving rather than poisoning every later request.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request go to this URL now?
    pub fn admit(&self, s: &BreakerSettings, now: Instant) -> Admit {
        if !s.enabled {
            return Admit::Yes;
        }
        let mut g = self.lock();
        match g.state {
            State::Closed => Admit::Yes,
            State::Open if now >= g.until => {
                g.state = State::HalfOpen;
                g.last_change = now;
                g.probe_in_flight = true;
                // A probe that never reports (client gone) must not wedge the breaker.
                g.until = now + s.cooldown.max(Duration::from_secs(1));
                Admit::Probe
            }
            State::Open => Admit::No,
            State::HalfOpen if !g.probe_in_flight || now >= g.until => {
                g.probe_in_flight = true;
                g.until = now + s.cooldown.max(Duration::from_secs(1));
                Admit::Probe
            }
            State::HalfOpen => Admit::No,
        }
    }

    /// Would `admit` say no right now? (Read-only, for choosing among URLs.)
    pub fn is_open(&self, s: &BreakerSettings, now: Instant) -> bool {
        if !s.enabled {
            return false;
        }
        let g = self.lock();
        match g.state {
            State::Closed => false,
            State::Open => now < g.until,
            State::HalfOpen => g.probe_in_flight && now < g.until,
        }
    }

    /// Record the outcome of a request that was admitted.
    pub fn record(&self, s: &BreakerSettings, ok: bool, now: Instant) {
        if !s.enabled {
            return;
        }
        let slot = self.slot(now, s);
        let mut g = self.lock();
        match g.state {
            State::HalfOpen => {
                g.probe_in_flight = false;
                g.last_change = now;
                if ok {
                    g.state = State::Closed;
                    g.buckets = [Bucket::default(); BUCKETS];
                } else {
                    g.state = State::Open;
                    g.until = now + s.cooldown;
                }
                return;
            }
            // Answers to requests sent before the breaker opened do not move it.
            State::Open => return,
            State::Closed => {}
        }
        let b = &mut g.buckets[(slot % BUCKETS as u64) as usize];
        if b.slot != slot {
            *b = Bucket {
                slot,
                total: 0,
                failed: 0,
            };
        }
        b.total += 1;
        if !ok {
            b.failed += 1;
            let (total, failed) = window_counts(&g.buckets, slot);
            if total >= s.min_requests && failed as f64 > s.error_rate * total as f64 {
                g.state = State::Open;
                g.until = now + s.cooldown;
                g.opened_total += 1;
                g.last_change = now;
                tracing::warn!(
                    failed,
                    total,
                    threshold = s.error_rate,
                    cooldown_secs = s.cooldown.as_secs_f64(),
                    "circuit breaker opened"
                );
            }
        }
    }

    pub fn report(&self, s: &BreakerSettings, now: Instant) -> BreakerReport {
        let slot = self.slot(now, s);
        let g = self.lock();
        let (requests, failures) = window_counts(&g.buckets, slot);
        let state = if !s.enabled { State::Closed } else { g.state };
        BreakerReport {
            state,
            requests,
            failures,
            opened_total: g.opened_total,
            since: now.saturating_duration_since(g.last_change),
            retry_in: (state == State::Open).then(|| g.until.saturating_duration_since(now)),
        }
    }
}

fn window_counts(buckets: &[Bucket; BUCKETS], slot: u64) -> (u64, u64) {
    let oldest = slot.saturating_sub(BUCKETS as u64 - 1);
    buckets
        .iter()
        .filter(|b| b.slot >= oldest && b.slot <= slot && b.total > 0)
        .fold((0, 0), |(t, f), b| (t + b.total, f + b.failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            enabled: true,
            error_rate: 0.02,
            window: Duration::from_secs(300),
            min_requests: 50,
            cooldown: Duration::from_secs(10),
        }
    }

    #[test]
    fn opens_past_threshold_only_with_enough_requests() {
        let s = settings();
        let b = Breaker::default();
        let t0 = Instant::now();
        // 10 failures out of 10: too few requests to judge.
        for _ in 0..10 {
            b.record(&s, false, t0);
        }
        assert_eq!(b.admit(&s, t0), Admit::Yes);
        // 1 more failure in 100 successes + 10 failures = 11/111 > 2%: open.
        for _ in 0..100 {
            b.record(&s, true, t0);
        }
        b.record(&s, false, t0);
        assert_eq!(b.report(&s, t0).state, State::Open);
        assert_eq!(b.admit(&s, t0), Admit::No);
    }

    #[test]
    fn stays_closed_under_threshold() {
        let s = settings();
        let b = Breaker::default();
        let t0 = Instant::now();
        for i in 0..1000 {
            b.record(&s, i % 100 != 0, t0); // 1 % errors
        }
        assert_eq!(b.report(&s, t0).state, State::Closed);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let s = settings();
        let b = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..49 {
            b.record(&s, true, t0);
        }
        b.record(&s, false, t0); // 1/50 = 2 %, not above
        assert_eq!(b.report(&s, t0).state, State::Closed);
        let later = t0 + Duration::from_secs(301);
        assert_eq!(b.report(&s, later).requests, 0);
        for _ in 0..60 {
            b.record(&s, true, later);
        }
        b.record(&s, false, later);
        assert_eq!(b.report(&s, later).state, State::Closed);
    }

    #[test]
    fn half_open_probe_closes_or_reopens() {
        let s = BreakerSettings {
            min_requests: 5,
            ..settings()
        };
        let b = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            b.record(&s, false, t0);
        }
        assert_eq!(b.admit(&s, t0 + Duration::from_secs(5)), Admit::No);
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(b.admit(&s, t1), Admit::Probe);
        // Only one probe at a time.
        assert_eq!(b.admit(&s, t1), Admit::No);
        b.record(&s, false, t1);
        assert_eq!(b.report(&s, t1).state, State::Open);
        let t2 = t1 + Duration::from_secs(11);
        assert_eq!(b.admit(&s, t2), Admit::Probe);
        b.record(&s, true, t2);
        assert_eq!(b.report(&s, t2).state, State::Closed);
        assert_eq!(b.admit(&s, t2), Admit::Yes);
        assert_eq!(b.report(&s, t2).opened_total, 1);
    }
}
