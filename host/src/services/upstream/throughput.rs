//! The real cost of a self-hosted backend: `backends[].gpu_hour_usd` (what one worker's GPU
//! costs an hour) spread over the tokens the worker processed while busy.
//!
//! Each worker reports on `/metrics` the prompt tokens it processed, the tokens it generated
//! and the seconds its engine was busy (`switchyard_worker_busy_seconds_total`). Over a
//! window, the busy seconds cost `gpu_hour_usd / 3600` each; dividing that by every token
//! processed in the window gives one price per token, prompt or generated. Summed over the
//! window's requests, the ledger then adds up to exactly the GPU time the worker was busy,
//! which is what "40 % of the cost" must compare against. Idle time is not charged to
//! requests (an idle GPU is a capacity decision, not a request's cost).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};

use super::Upstream;
use crate::config::governance::Price;
use crate::config::{Backend, Runtime, Target};

/// Counters one scrape of a worker's `/metrics` gives.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub prompt_tokens: f64,
    pub generated_tokens: f64,
    pub busy_seconds: f64,
}

impl Sample {
    /// Add another URL's counters (a backend's workers together).
    fn add(&mut self, o: Sample) {
        self.prompt_tokens += o.prompt_tokens;
        self.generated_tokens += o.generated_tokens;
        self.busy_seconds += o.busy_seconds;
    }
}

/// Read the counters from a `/metrics` text; `None` when the worker does not report them.
pub fn parse_metrics(text: &str) -> Option<Sample> {
    let mut s = Sample::default();
    let mut busy = false;
    for line in text.lines() {
        let Some((name, value)) = line.split_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        match name {
            "switchyard_worker_prompt_tokens_total" => s.prompt_tokens = v,
            "switchyard_worker_generation_tokens_total" => s.generated_tokens = v,
            "switchyard_worker_busy_seconds_total" => {
                s.busy_seconds = v;
                busy = true;
            }
            _ => {}
        }
    }
    busy.then_some(s)
}

/// USD per token over the window from `before` to `after`: `None` when the worker did no
/// work in it (nothing to spread the cost over).
pub fn per_token_usd(gpu_hour_usd: f64, before: Sample, after: Sample) -> Option<f64> {
    let tokens = (after.prompt_tokens - before.prompt_tokens)
        + (after.generated_tokens - before.generated_tokens);
    let busy = after.busy_seconds - before.busy_seconds;
    (tokens > 0.0 && busy > 0.0).then(|| gpu_hour_usd / 3600.0 * busy / tokens)
}

/// The same price for a prompt and a generated token, per million.
pub fn price_of(per_token: f64) -> Price {
    Price {
        input_per_1m: per_token * 1e6,
        output_per_1m: per_token * 1e6,
    }
}

/// `/metrics` on the host of a backend URL (`http://host:port/v1` → `http://host:port/metrics`).
pub fn metrics_uri(base: &str) -> Option<Uri> {
    let uri: Uri = base.parse().ok()?;
    format!("{}://{}/metrics", uri.scheme_str()?, uri.authority()?)
        .parse()
        .ok()
}

/// Scrape one URL of `up`.
pub async fn scrape_url(up: &Upstream, base: &str) -> Result<Sample, String> {
    let uri = metrics_uri(base).ok_or_else(|| format!("{base}: no /metrics URL"))?;
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri.clone();
    if let Some(auth) = &up.backend.auth {
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, auth.clone());
    }
    let resp = tokio::time::timeout(Duration::from_secs(5), up.client().request(req))
        .await
        .map_err(|_| format!("{uri}: timed out"))?
        .map_err(|e| format!("{uri}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{uri}: HTTP {}", resp.status().as_u16()));
    }
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        Limited::new(resp.into_body(), 4 * 1024 * 1024).collect(),
    )
    .await
    .map_err(|_| format!("{uri}: timed out"))?
    .map_err(|e| format!("{uri}: {e}"))?
    .to_bytes();
    parse_metrics(&String::from_utf8_lossy(&body)).ok_or_else(|| {
        format!("{uri}: no switchyard_worker_busy_seconds_total (is it a switchyard-worker?)")
    })
}

/// Every URL of `up`, summed.
pub async fn scrape(up: &Upstream) -> Result<Sample, String> {
    let mut total = Sample::default();
    for u in &up.backend.urls {
        total.add(scrape_url(up, &u.base).await?);
    }
    Ok(total)
}

/// Derived prices by backend name.
#[derive(Debug, Clone, Default)]
pub struct Derived {
    prices: HashMap<String, Price>,
}

impl Derived {
    pub fn price(&self, backend: &str) -> Option<Price> {
        self.prices.get(backend).copied()
    }
}

/// Throughput meters around a run (`switchyard eval`): a scrape of each priced backend
/// before, one after.
pub struct Meters {
    before: Vec<(Arc<Upstream>, f64, Sample)>,
}

impl Meters {
    /// Scrape every backend among `targets` that has `gpu_hour_usd`. A worker that cannot
    /// be scraped is left unpriced (and said so on stderr).
    pub async fn start<'a>(
        upstreams: &[Arc<Upstream>],
        targets: impl Iterator<Item = &'a Target>,
    ) -> Meters {
        let mut before = Vec::new();
        let mut seen = Vec::new();
        for t in targets {
            let Some(gpu) = t.backend.gpu_hour_usd else {
                continue;
            };
            if seen.contains(&t.backend.index) {
                continue;
            }
            seen.push(t.backend.index);
            let up = upstreams[t.backend.index].clone();
            match scrape(&up).await {
                Ok(s) => before.push((up, gpu, s)),
                Err(e) => eprintln!(
                    "warning: backend {}: gpu_hour_usd set, but its throughput cannot be read: {e}",
                    t.backend.name
                ),
            }
        }
        Meters { before }
    }

    /// Scrape again: the per-token price of each backend over the run.
    pub async fn finish(self) -> Derived {
        let mut prices = HashMap::new();
        for (up, gpu, before) in self.before {
            if let Ok(after) = scrape(&up).await
                && let Some(c) = per_token_usd(gpu, before, after)
            {
                prices.insert(up.backend.name.to_string(), price_of(c));
            }
        }
        Derived { prices }
    }
}

/// The serving gateway's derived prices: each `gpu_hour_usd` backend's workers scraped every
/// [`POLL`], the price taken over the samples of the last [`WINDOW`] (at the first scrape,
/// over the worker's life so far). Read by the ledger when it prices a row; a backend
/// whose worker has not been read yet, or has done no work, has no price (cost 0, not
/// marked derived) rather than an invented one.
#[derive(Debug, Default)]
pub struct LivePrices {
    prices: RwLock<HashMap<String, Price>>,
}

/// How often a priced worker is scraped.
pub const POLL: Duration = Duration::from_secs(10);
/// The window the price is measured over.
pub const WINDOW: Duration = Duration::from_secs(300);

impl LivePrices {
    pub fn price(&self, backend: &str) -> Option<Price> {
        self.prices
            .read()
            .ok()
            .and_then(|m| m.get(backend).copied())
    }

    /// `switchyard_derived_price_usd_per_1m_tokens{backend}`: the price in force.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let prices = self.prices.read().map(|m| m.clone()).unwrap_or_default();
        if prices.is_empty() {
            return;
        }
        out.push_str("# HELP switchyard_derived_price_usd_per_1m_tokens Price per million tokens (prompt or generated) derived from gpu_hour_usd and the workers' measured throughput.\n# TYPE switchyard_derived_price_usd_per_1m_tokens gauge\n");
        let mut names: Vec<_> = prices.iter().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (b, p) in names {
            let _ = writeln!(
                out,
                "switchyard_derived_price_usd_per_1m_tokens{{backend=\"{b}\"}} {}",
                p.input_per_1m
            );
        }
    }

    fn set(&self, backend: &str, p: Price) {
        if let Ok(mut m) = self.prices.write() {
            m.insert(backend.to_string(), p);
        }
    }

    /// Scrape the `gpu_hour_usd` backends of the config in force (`current`, called each
    /// round so a reload's backends are followed) until the process ends.
    pub fn spawn(self: &Arc<Self>, current: impl Fn() -> Vec<Arc<Upstream>> + Send + 'static) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut history: HashMap<String, Vec<(Instant, Sample)>> = HashMap::new();
            loop {
                for up in current() {
                    let Some(gpu) = up.backend.gpu_hour_usd else {
                        continue;
                    };
                    let Ok(s) = scrape(&up).await else { continue };
                    let now = Instant::now();
                    let h = history.entry(up.backend.name.to_string()).or_default();
                    // A worker restart resets its counters: start the window again.
                    if h.last()
                        .is_some_and(|(_, l)| s.busy_seconds < l.busy_seconds)
                    {
                        h.clear();
                    }
                    h.push((now, s));
                    h.retain(|(t, _)| now.duration_since(*t) <= WINDOW);
                    let from = match h.as_slice() {
                        [_] => Sample::default(),
                        [(_, first), ..] => *first,
                        [] => continue,
                    };
                    // A window without work keeps the last price.
                    if let Some(c) = per_token_usd(gpu, from, s) {
                        me.set(&up.backend.name, price_of(c));
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        });
    }
}

/// For `check`: the price over the worker's whole life so far (its counters since start).
pub async fn lifetime_price(
    up: &Upstream,
    gpu_hour_usd: f64,
) -> Result<Option<(Price, Sample)>, String> {
    let s = scrape(up).await?;
    Ok(per_token_usd(gpu_hour_usd, Sample::default(), s).map(|c| (price_of(c), s)))
}

/// Whether `b` is priced by its throughput (it has `gpu_hour_usd`).
pub fn derived(b: &Backend) -> bool {
    b.gpu_hour_usd.is_some()
}

/// The price of `model` on `backend` for a ledger row: `[[prices]]` first, else the derived
/// price (`true`).
pub fn price(
    rt: &Runtime,
    live: Option<&LivePrices>,
    backend: &str,
    model: &str,
) -> Option<(Price, bool)> {
    if let Some(p) = rt.governance.price(backend, model) {
        return Some((p, false));
    }
    rt.backend(backend)
        .filter(|b| derived(b))
        .and_then(|_| live?.price(backend))
        .map(|p| (p, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_cost_is_spread_over_every_token_of_the_window() {
        let text = "# TYPE x counter\nswitchyard_worker_prompt_tokens_total 1000\nswitchyard_worker_generation_tokens_total 500\nswitchyard_worker_busy_seconds_total 30\n";
        let after = parse_metrics(text).unwrap();
        let before = Sample {
            prompt_tokens: 400.0,
            generated_tokens: 100.0,
            busy_seconds: 12.0,
        };
        // 18 busy seconds at $3.60/h = $0.018, over 1000 tokens.
        let c = per_token_usd(3.6, before, after).unwrap();
        assert!((c - 0.018 / 1000.0).abs() < 1e-15);
        assert_eq!(per_token_usd(3.6, after, after), None);
        assert!(parse_metrics("switchyard_worker_prompt_tokens_total 3\n").is_none());
        assert_eq!(
            metrics_uri("http://10.0.0.5:9001/v1").unwrap().to_string(),
            "http://10.0.0.5:9001/metrics"
        );
    }
}
