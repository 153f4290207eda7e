//! The last hour of per-URL backend state and per-route traffic, for the console's charts.
//!
//! A background task copies counters the gateway keeps anyway (the breaker report of every
//! pooled URL, the finished-request counters by route and backend) into a ring of samples
//! every [`STEP`]; the request path does no extra work for it. Reading the history is a
//! lock and a copy, on admin requests only.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::app::gateway::Gateway;
use crate::base::clock::now_ms;
use crate::services::upstream::health;

/// Time between two samples.
pub const STEP: Duration = Duration::from_secs(10);
/// Samples kept: one hour.
const KEEP: usize = 360;

/// One pooled URL at one sample.
#[derive(Debug, Clone)]
struct UrlPoint {
    backend: String,
    url: String,
    state: String,
    error_rate: f64,
    latency_ms: f64,
    in_flight: f64,
    healthy: bool,
}

/// Everything read at one tick.
#[derive(Debug, Clone)]
struct Sample {
    t_ms: i64,
    urls: Vec<UrlPoint>,
    /// Finished requests so far, by (route, backend).
    requests: Counts,
}

/// Finished requests by (route, backend).
pub type Counts = BTreeMap<(String, String), u64>;

/// The ring of samples.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

fn read_urls(breakers: &Value) -> Vec<UrlPoint> {
    let list = breakers["breakers"].as_array().cloned().unwrap_or_default();
    list.iter()
        .map(|b| UrlPoint {
            backend: b["backend"].as_str().unwrap_or("").to_string(),
            url: b["url"].as_str().unwrap_or("").to_string(),
            state: b["state"].as_str().unwrap_or("").to_string(),
            error_rate: b["error_rate"].as_f64().unwrap_or(0.0),
            latency_ms: b["latency_ewma_ms"].as_f64().unwrap_or(0.0),
            in_flight: b["in_flight"].as_f64().unwrap_or(0.0),
            healthy: b["healthy"].as_bool().unwrap_or(true),
        })
        .collect()
}

fn request_totals(gw: &Gateway) -> Counts {
    gw.services
        .metrics
        .request_totals()
        .into_iter()
        .map(|(r, b, n)| ((r.to_string(), b.to_string()), n))
        .collect()
}

impl History {
    /// Take one sample now.
    pub fn sample(&self, gw: &Gateway) {
        let s = Sample {
            t_ms: now_ms(),
            urls: read_urls(&health::breakers_json(&gw.snapshot().upstreams)),
            requests: request_totals(gw),
        };
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= KEEP {
            q.pop_front();
        }
        q.push_back(s);
    }

    fn copy(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// `GET /admin/series/backends`: per URL, one value per sample (null where the URL did
    /// not exist yet).
    pub fn backends_json(&self) -> Value {
        let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let n = q.len();
        // One column per URL, filled in one pass over the samples.
        let mut index: std::collections::HashMap<(&str, &str), usize> = Default::default();
        let mut cols: Vec<Vec<Option<&UrlPoint>>> = Vec::new();
        for (i, s) in q.iter().enumerate() {
            for u in &s.urls {
                let k = *index
                    .entry((u.backend.as_str(), u.url.as_str()))
                    .or_insert_with(|| {
                        cols.push(vec![None; n]);
                        cols.len() - 1
                    });
                cols[k][i] = Some(u);
            }
        }
        let urls: Vec<Value> = cols
            .iter()
            .filter_map(|col| {
                let first = col.iter().flatten().next()?;
                let values = |f: &dyn Fn(&UrlPoint) -> Value| -> Vec<Value> {
                    col.iter().map(|u| u.map_or(Value::Null, f)).collect()
                };
                Some(json!({
                    "backend": first.backend,
                    "url": first.url,
                    "state": values(&|u| json!(u.state)),
                    "error_rate": values(&|u| json!(u.error_rate)),
                    "latency_ms": values(&|u| json!(u.latency_ms)),
                    "in_flight": values(&|u| json!(u.in_flight)),
                    "healthy": values(&|u| json!(u.healthy)),
                }))
            })
            .collect();
        json!({
            "step_secs": STEP.as_secs(),
            "t": q.iter().map(|s| s.t_ms).collect::<Vec<_>>(),
            "urls": urls,
        })
    }

    /// Requests finished per (route, backend) in each step, and over the last `window` up to
    /// `now_totals` (read at the call, so the live share moves between samples too).
    pub fn route_traffic(&self, gw: &Gateway, window: Duration) -> RouteTraffic {
        let samples = self.copy();
        let now = request_totals(gw);
        let t_now = now_ms();
        let cutoff = t_now - window.as_millis() as i64;
        // The oldest sample inside the window (or the oldest there is).
        let base = samples
            .iter()
            .find(|s| s.t_ms >= cutoff)
            .or(samples.first());
        let mut live = Counts::new();
        for (k, n) in &now {
            let before = base.and_then(|b| b.requests.get(k)).copied().unwrap_or(0);
            live.insert(k.clone(), n.saturating_sub(before));
        }
        let mut steps: Vec<(i64, Counts)> = Vec::new();
        for w in samples.windows(2) {
            let mut d = BTreeMap::new();
            for (k, n) in &w[1].requests {
                let before = w[0].requests.get(k).copied().unwrap_or(0);
                d.insert(k.clone(), n.saturating_sub(before));
            }
            steps.push((w[1].t_ms, d));
        }
        RouteTraffic {
            window_secs: base.map_or(0, |b| ((t_now - b.t_ms).max(0) / 1000) as u64),
            live,
            steps,
        }
    }
}

/// What [`History::route_traffic`] returns.
pub struct RouteTraffic {
    /// How long `live` covers, in seconds (0 before the first sample).
    pub window_secs: u64,
    pub live: Counts,
    pub steps: Vec<(i64, Counts)>,
}

/// Sample every [`STEP`] for the life of the process.
pub fn spawn(gw: &Arc<Gateway>) {
    let gw = gw.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            gw.console.sample(&gw);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(backend: &str, url: &str, state: &str, error_rate: f64) -> UrlPoint {
        UrlPoint {
            backend: backend.into(),
            url: url.into(),
            state: state.into(),
            error_rate,
            latency_ms: 1.0,
            in_flight: 0.0,
            healthy: true,
        }
    }

    #[test]
    fn a_url_added_later_has_nulls_before_it_existed() {
        let h = History::default();
        {
            let mut q = h.samples.lock().unwrap();
            q.push_back(Sample {
                t_ms: 1000,
                urls: vec![point("a", "http://a", "closed", 0.0)],
                requests: Counts::new(),
            });
            q.push_back(Sample {
                t_ms: 11_000,
                urls: vec![
                    point("a", "http://a", "open", 0.6),
                    point("b", "http://b", "closed", 0.1),
                ],
                requests: Counts::new(),
            });
        }
        let v = h.backends_json();
        assert_eq!(v["t"], json!([1000, 11_000]));
        assert_eq!(v["urls"][0]["backend"], "a");
        assert_eq!(v["urls"][0]["state"], json!(["closed", "open"]));
        assert_eq!(v["urls"][0]["error_rate"], json!([0.0, 0.6]));
        assert_eq!(v["urls"][1]["url"], "http://b");
        assert_eq!(v["urls"][1]["error_rate"], json!([null, 0.1]));
    }
}
