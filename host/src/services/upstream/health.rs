//! Health: active checks of every pooled URL, and the per-URL state as `/metrics` and the
//! admin API report it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::Full;

use super::Upstream;
use super::pool::UrlState;

/// Run active health checks of the backends `current` returns (those of the config in
/// force), forever.
pub fn spawn(current: impl Fn() -> Arc<[Arc<Upstream>]> + Send + 'static) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let upstreams = current();
            let now = Instant::now();
            for up in upstreams.iter() {
                let Some(uris) = &up.backend.pool.health else {
                    continue;
                };
                for (i, u) in up.urls.iter().enumerate() {
                    let due = {
                        let mut last = u.last_check.lock().unwrap_or_else(|p| p.into_inner());
                        let due = last.is_none_or(|t| {
                            now.duration_since(t) >= up.backend.pool.health_interval
                        });
                        if due {
                            *last = Some(now);
                        }
                        due
                    };
                    if due && let Some(uri) = uris.get(i) {
                        tokio::spawn(check_one(up.clone(), u.clone(), uri.clone()));
                    }
                }
            }
        }
    });
}

async fn check_one(up: Arc<Upstream>, url: Arc<UrlState>, uri: Uri) {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    up.backend.authorize(req.headers_mut());
    let timeout = up.backend.pool.health_interval.min(Duration::from_secs(2));
    let ok = matches!(
        tokio::time::timeout(timeout, up.client().request(req)).await,
        Ok(Ok(r)) if r.status().is_success()
    );
    url.set_health(ok);
}

/// Prometheus lines for every URL of `upstreams` (those of the config in force): breaker
/// state, in-flight, latency EWMA, health.
pub fn render_metrics(upstreams: &[Arc<Upstream>], out: &mut String) {
    use std::fmt::Write;
    let now = Instant::now();
    out.push_str("# HELP switchyard_breaker_state Circuit breaker per backend URL: 0 closed, 1 open, 2 half-open.\n# TYPE switchyard_breaker_state gauge\n");
    for up in upstreams {
        let b = &up.backend;
        for u in &up.urls {
            let s = u.breaker.report(&b.breaker, now);
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
    for up in upstreams {
        let b = &up.backend;
        for u in &up.urls {
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
    for up in upstreams {
        let b = &up.backend;
        for u in &up.urls {
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
    for up in upstreams {
        let b = &up.backend;
        for u in &up.urls {
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
pub fn breakers_json(upstreams: &[Arc<Upstream>]) -> serde_json::Value {
    let now = Instant::now();
    let mut list = Vec::new();
    for up in upstreams {
        let b = &up.backend;
        for u in &up.urls {
            let s = u.breaker.report(&b.breaker, now);
            list.push(serde_json::json!({
                "backend": &*b.name,
                "url": u.base,
                "state": s.state.as_str(),
                "window_requests": s.requests,
                "window_failures": s.failures,
                "error_rate": if s.requests > 0 { s.failures as f64 / s.requests as f64 } else { 0.0 },
                "threshold": b.breaker.error_rate,
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
