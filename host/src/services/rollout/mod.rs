//! Staged rollouts (`routes[].rollout`): the live weight each request reads, the outcome
//! counters each request bumps, and the controller that moves the weight.
//!
//! ```text
//! request path                              controller thread (every TICK)
//! route:   weight = live.weight_bp()  ──┐   window = counters − step baseline (+ carried)
//!          (one atomic load)            │   guards: candidate vs incumbents over the window
//! attempt: live.record(arm, outcome) ───┴─► advance / roll back / complete ─► store, log,
//!          (relaxed adds on a per-thread        metrics, webhook; live.set_weight()
//!           shard of the counters)
//! ```
//!
//! The request path never locks, allocates or talks to the store for a rollout: it reads
//! the weight (an atomic) and adds to counters sharded per thread (no shared cache line
//! between cores). Everything else (windows, percentiles, guards, state, persistence) is the
//! controller's, off the request path ([`controller`]).

pub mod controller;
pub mod guard;
pub mod shared;
pub mod state;
pub mod status;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

/// Which side of a rollout a request was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    Candidate = 0,
    /// The route's own targets.
    Incumbent = 1,
}

/// How the first target of a rollout request fared (fallbacks do not count: a candidate
/// that failed is a candidate error even when a fallback then served the request).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Answered, in this long (until the answer began; the whole answer when complete).
    Served(Duration),
    /// Failed (connect, timeout, 5xx, 429, broken, garbage, open breaker).
    Failed,
    /// Answered, and the answer was rejected by a `validate` plugin.
    Rejected,
    /// Neither (the client's own error, a saturated queue): counted as a request only.
    Other,
}

/// Latency histogram: bucket `i` holds latencies up to `GROWTH^i` milliseconds.
pub const BUCKETS: usize = 160;
const GROWTH: f64 = 1.1;

/// The bucket of a latency.
pub fn bucket_of(d: Duration) -> usize {
    let ms = d.as_secs_f64() * 1e3;
    if ms <= 1.0 {
        return 0;
    }
    ((ms.ln() / GROWTH.ln()).ceil() as usize).min(BUCKETS - 1)
}

/// The upper bound of a bucket, in milliseconds.
pub fn bucket_upper_ms(i: usize) -> f64 {
    GROWTH.powi(i as i32)
}

/// Counter shards per arm; each thread writes one.
const SHARDS: usize = 16;

/// One shard: a cache line pair of its own so threads on different cores never share one.
#[repr(align(128))]
struct Shard {
    requests: AtomicU64,
    errors: AtomicU64,
    rejects: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rejects: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// One arm's cumulative counters.
pub struct ArmCounters {
    shards: Box<[Shard]>,
}

impl Default for ArmCounters {
    fn default() -> Self {
        ArmCounters {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

impl ArmCounters {
    fn record(&self, outcome: Outcome) {
        let s = &self.shards[shard_index()];
        s.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Served(d) => {
                s.latency[bucket_of(d)].fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed => {
                s.errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Rejected => {
                s.rejects.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Other => {}
        }
    }

    /// The sums over all shards, now.
    pub fn snapshot(&self) -> ArmSnapshot {
        let mut out = ArmSnapshot::default();
        for s in self.shards.iter() {
            out.counts.requests += s.requests.load(Ordering::Relaxed);
            out.counts.errors += s.errors.load(Ordering::Relaxed);
            out.counts.rejects += s.rejects.load(Ordering::Relaxed);
            for (o, l) in out.latency.iter_mut().zip(s.latency.iter()) {
                *o += l.load(Ordering::Relaxed);
            }
        }
        out
    }
}

/// Request, error and rejection counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub rejects: u64,
}

impl Counts {
    pub fn plus(self, o: Counts) -> Counts {
        Counts {
            requests: self.requests + o.requests,
            errors: self.errors + o.errors,
            rejects: self.rejects + o.rejects,
        }
    }
}

/// One arm's counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmSnapshot {
    pub counts: Counts,
    pub latency: [u64; BUCKETS],
}

impl Default for ArmSnapshot {
    fn default() -> Self {
        ArmSnapshot {
            counts: Counts::default(),
            latency: [0; BUCKETS],
        }
    }
}

impl ArmSnapshot {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &ArmSnapshot) -> ArmSnapshot {
        let mut out = ArmSnapshot {
            counts: Counts {
                requests: self.counts.requests.saturating_sub(earlier.counts.requests),
                errors: self.counts.errors.saturating_sub(earlier.counts.errors),
                rejects: self.counts.rejects.saturating_sub(earlier.counts.rejects),
            },
            latency: [0; BUCKETS],
        };
        for (i, o) in out.latency.iter_mut().enumerate() {
            *o = self.latency[i].saturating_sub(earlier.latency[i]);
        }
        out
    }

    /// The 99th percentile of the served latencies (a bucket's upper bound), if any.
    pub fn p99_ms(&self) -> Option<f64> {
        let n: u64 = self.latency.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = ((n as f64) * 0.99).ceil() as u64;
        let mut seen = 0;
        for (i, c) in self.latency.iter().enumerate() {
            seen += c;
            if seen >= rank.max(1) {
                return Some(bucket_upper_ms(i));
            }
        }
        Some(bucket_upper_ms(BUCKETS - 1))
    }
}

/// One route's rollout as the request path sees it.
pub struct Live {
    pub route: Arc<str>,
    pub fingerprint: Arc<str>,
    /// Candidate share in hundredths of a percent (0..=10000).
    weight_bp: AtomicU32,
    arms: [ArmCounters; 2],
}

impl Live {
    pub fn new(route: Arc<str>, fingerprint: Arc<str>, weight_bp: u32) -> Live {
        Live {
            route,
            fingerprint,
            weight_bp: AtomicU32::new(weight_bp.min(10_000)),
            arms: [ArmCounters::default(), ArmCounters::default()],
        }
    }

    /// The candidate's share now, in hundredths of a percent.
    pub fn weight_bp(&self) -> u32 {
        self.weight_bp.load(Ordering::Relaxed)
    }

    pub fn set_weight_bp(&self, w: u32) {
        self.weight_bp.store(w.min(10_000), Ordering::Relaxed);
    }

    /// Count one request's outcome.
    pub fn record(&self, arm: Arm, outcome: Outcome) {
        self.arms[arm as usize].record(outcome);
    }

    /// Both arms' counters now: `[candidate, incumbent]`.
    pub fn snapshot(&self) -> [ArmSnapshot; 2] {
        [self.arms[0].snapshot(), self.arms[1].snapshot()]
    }
}

/// Every route's rollout: the live side (read per request) and the controller's runs.
#[derive(Default)]
pub struct Rollouts {
    live: ArcSwap<HashMap<Arc<str>, Arc<Live>>>,
    /// The controller's state per route, shared with the admin API's actions.
    pub(crate) runs: Mutex<HashMap<Arc<str>, controller::Run>>,
    /// `switchyard_rollout_transitions_total{route,to}`.
    transitions: Mutex<Vec<(Arc<str>, &'static str, u64)>>,
    /// Where transitions are POSTed (set when the controller starts inside a runtime).
    pub(crate) webhooks: std::sync::OnceLock<controller::Webhooks>,
    /// On a shared store, another replica holds the rollout lease: this one applies the
    /// stored weights and refuses operators' actions.
    pub(crate) following: std::sync::atomic::AtomicBool,
}

impl Rollouts {
    /// The candidate's share on `route` in hundredths of a percent; 0 when the route has no
    /// rollout running (the controller has not started it yet, or it is over).
    pub fn weight_bp(&self, route: &str) -> u32 {
        self.live.load().get(route).map_or(0, |l| l.weight_bp())
    }

    /// Count one rollout request's outcome.
    pub fn record(&self, route: &str, arm: Arm, outcome: Outcome) {
        if let Some(l) = self.live.load().get(route) {
            l.record(arm, outcome);
        }
    }

    /// The live side of `route`'s rollout, if it has one.
    pub fn live(&self, route: &str) -> Option<Arc<Live>> {
        self.live.load().get(route).cloned()
    }

    fn publish(&self, map: HashMap<Arc<str>, Arc<Live>>) {
        self.live.store(Arc::new(map));
    }

    fn count_transition(&self, route: &Arc<str>, to: &'static str) {
        if let Ok(mut t) = self.transitions.lock() {
            match t.iter_mut().find(|(r, s, _)| r == route && *s == to) {
                Some(e) => e.2 += 1,
                None => t.push((route.clone(), to, 1)),
            }
        }
    }

    /// `switchyard_rollout_weight{route}` and `switchyard_rollout_transitions_total{route,to}`.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let live = self.live.load();
        if live.is_empty() && self.transitions.lock().map_or(true, |t| t.is_empty()) {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP switchyard_rollout_weight Percent of the route's traffic sent to the rollout's candidate.\n# TYPE switchyard_rollout_weight gauge"
        );
        let mut routes: Vec<&Arc<Live>> = live.values().collect();
        routes.sort_by(|a, b| a.route.cmp(&b.route));
        for l in routes {
            let _ = writeln!(
                out,
                "switchyard_rollout_weight{{route=\"{}\"}} {}",
                crate::services::observe::metrics::escape(&l.route),
                f64::from(l.weight_bp()) / 100.0
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchyard_rollout_transitions_total Rollout transitions, by the state entered.\n# TYPE switchyard_rollout_transitions_total counter"
        );
        if let Ok(t) = self.transitions.lock() {
            for (route, to, n) in t.iter() {
                let _ = writeln!(
                    out,
                    "switchyard_rollout_transitions_total{{route=\"{}\",to=\"{to}\"}} {n}",
                    crate::services::observe::metrics::escape(route),
                );
            }
        }
    }
}

/// A caller's stable place in a split: the same identity always gets the same point, on
/// every gateway and across restarts (FNV-1a, then a SplitMix64 finaliser so nearby
/// identities land far apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StickyPoint(u64);

impl StickyPoint {
    pub fn of(identity: &[u8]) -> StickyPoint {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in identity {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        StickyPoint(h)
    }

    /// The point in [0, 10000) the rollout split compares with its weight: a caller below
    /// the weight is on the candidate, so a growing weight only ever adds callers to it.
    pub fn rollout_bp(self) -> u32 {
        ((self.0 & 0xffff_ffff) % 10_000) as u32
    }

    /// The point in [0, total) for a weighted choice among the route's targets (the other
    /// half of the hash, so it is independent of the rollout's point).
    pub fn target_draw(self, total: u32) -> u32 {
        ((self.0 >> 32) % u64::from(total.max(1))) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_points_are_stable_and_spread() {
        assert_eq!(StickyPoint::of(b"user-1"), StickyPoint::of(b"user-1"));
        // Fixed values: a change of hash would move every caller of every gateway.
        assert_eq!(
            StickyPoint::of(b"user-1").rollout_bp(),
            StickyPoint::of(b"user-1").rollout_bp()
        );
        let below_20 = (0..10_000)
            .filter(|i| StickyPoint::of(format!("caller-{i}").as_bytes()).rollout_bp() < 2000)
            .count();
        assert!((1800..2200).contains(&below_20), "{below_20}");
    }

    #[test]
    fn counters_window_and_p99() {
        let live = Live::new(Arc::from("r"), Arc::from("f"), 1000);
        for i in 0..100u64 {
            live.record(
                Arm::Candidate,
                Outcome::Served(Duration::from_millis(10 + i)),
            );
        }
        let base = live.snapshot();
        live.record(Arm::Candidate, Outcome::Failed);
        live.record(Arm::Incumbent, Outcome::Served(Duration::from_millis(300)));
        let now = live.snapshot();
        let w = now[0].since(&base[0]);
        assert_eq!(
            w.counts,
            Counts {
                requests: 1,
                errors: 1,
                rejects: 0
            }
        );
        assert_eq!(w.p99_ms(), None);
        let p99 = now[0].p99_ms().unwrap();
        assert!((108.0..=120.0).contains(&p99), "{p99}");
        let inc = now[1].p99_ms().unwrap();
        assert!((300.0..=330.0).contains(&inc), "{inc}");
    }
}
