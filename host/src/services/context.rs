//! Context windows: those backends report for their models (the worker's `/v1/models` says
//! `max_model_len`), discovered off the request path, and how often a request too long for
//! its target went to the route's `context_fallback` or was refused.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};

use super::upstream::Upstream;
use crate::config::Runtime;

/// What a request too long for its target's window became.
#[derive(Debug, Clone, Copy)]
pub enum Overflow {
    /// Sent to the route's `context_fallback`.
    Fallback,
    /// Refused with 400 `context_length_exceeded`.
    Rejected,
}

/// How long the gateway waits for a backend's `/tokenize` before estimating instead.
const TOKENIZE_TIMEOUT: Duration = Duration::from_secs(2);

/// A counter's labels: the route and what became of the request.
type OverflowLabels = (Arc<str>, &'static str);

#[derive(Default)]
pub struct ContextWindows {
    /// Backend name → (model id → window), as the backend reported them.
    discovered: RwLock<HashMap<Arc<str>, HashMap<String, u64>>>,
    /// Backends whose `POST /tokenize` failed: not asked again (the estimate is used).
    no_tokenize: RwLock<std::collections::HashSet<Arc<str>>>,
    counts: Mutex<HashMap<OverflowLabels, Arc<AtomicU64>>>,
}

impl ContextWindows {
    /// The window `backend` reported for `model` (or for its only model: a worker serves
    /// one and answers to any name).
    pub fn discovered(&self, backend: &str, model: &str) -> Option<u64> {
        let map = self.discovered.read().ok()?;
        let models = map.get(backend)?;
        models.get(model).copied().or_else(|| {
            (models.len() == 1)
                .then(|| models.values().next().copied())
                .flatten()
        })
    }

    /// Ask the backends whose windows matter for their models' context windows: those of
    /// routes with a `context_fallback`, and the `[local_worker]`'s. Other backends are not
    /// asked (a request the gateway did not need is traffic an upstream did not expect).
    /// A backend that is not up yet (the local worker loads after the gateway starts) is
    /// asked again every 2 s for up to 5 minutes.
    pub fn discover(self: &Arc<Self>, rt: &Runtime, upstreams: &[Arc<Upstream>]) {
        let mut wanted: HashSet<&str> = HashSet::new();
        for r in rt.routes.iter().filter(|r| r.context_fallback.is_some()) {
            for t in r
                .targets
                .iter()
                .chain(&r.fallback)
                .chain(&r.context_fallback)
            {
                wanted.insert(&t.backend.name);
            }
        }
        if let Some(lw) = &rt.local_worker {
            let at = lw.listen.to_string();
            for b in &rt.backends {
                if b.urls.iter().any(|u| u.authority == at) {
                    wanted.insert(&b.name);
                }
            }
        }
        for up in upstreams
            .iter()
            .filter(|u| wanted.contains(&*u.backend.name))
        {
            let (this, up) = (self.clone(), up.clone());
            tokio::spawn(async move {
                for _ in 0..150 {
                    if let Some(body) = models_list(&up).await {
                        this.learn(&up, &body);
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            });
        }
    }

    fn learn(&self, up: &Upstream, body: &[u8]) {
        {
            let windows = windows_in(body);
            if windows.is_empty() {
                return;
            }
            tracing::info!(backend = %up.backend.name, ?windows, "context windows discovered");
            if let Ok(mut map) = self.discovered.write() {
                map.insert(up.backend.name.clone(), windows);
            }
        }
    }

    /// The prompt's tokens as the backend itself counts them (`POST /tokenize`, which the
    /// worker and vLLM serve), for backends that reported their window; `None` to estimate.
    pub async fn count_remote(&self, up: &Upstream, body: &Bytes) -> Option<u64> {
        let name = &up.backend.name;
        if !self.discovered.read().ok()?.contains_key(name)
            || self.no_tokenize.read().ok()?.contains(name)
        {
            return None;
        }
        let models = &up.backend.urls.first()?.models_uri;
        let uri = http::Uri::builder()
            .scheme(models.scheme()?.clone())
            .authority(models.authority()?.clone())
            .path_and_query("/tokenize")
            .build()
            .ok()?;
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Some(auth) = &up.backend.auth {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, auth.clone());
        }
        let counted = async {
            let resp = up.client().request(req).await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).ok()?["count"].as_u64()
        };
        match tokio::time::timeout(TOKENIZE_TIMEOUT, counted).await {
            Ok(Some(n)) => Some(n),
            _ => {
                tracing::info!(backend = %name, "the backend's /tokenize did not answer; its prompts are estimated from now on");
                if let Ok(mut s) = self.no_tokenize.write() {
                    s.insert(name.clone());
                }
                None
            }
        }
    }

    pub fn count(&self, route: &Arc<str>, what: Overflow) {
        let label = match what {
            Overflow::Fallback => "fallback",
            Overflow::Rejected => "rejected",
        };
        let c = {
            let Ok(mut m) = self.counts.lock() else {
                return;
            };
            m.entry((route.clone(), label)).or_default().clone()
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render_metrics(&self, out: &mut String) {
        let Ok(m) = self.counts.lock() else { return };
        if m.is_empty() {
            return;
        }
        let mut rows: Vec<_> = m.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        out.push_str("# HELP switchyard_context_overflow_total Requests longer than their target's context window, by what became of them (fallback or rejected).\n# TYPE switchyard_context_overflow_total counter\n");
        for ((route, what), n) in rows {
            let _ = writeln!(
                out,
                "switchyard_context_overflow_total{{route=\"{}\",outcome=\"{what}\"}} {}",
                route.replace('\\', "\\\\").replace('"', "\\\""),
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// A backend's `GET /v1/models` answer (its first URL), or `None` while it does not give one.
async fn models_list(up: &Upstream) -> Option<Bytes> {
    let url = up.backend.urls.first()?;
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = url.models_uri.clone();
    if let Some(auth) = &up.backend.auth {
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, auth.clone());
    }
    let resp = tokio::time::timeout(Duration::from_secs(5), up.client().request(req))
        .await
        .ok()?
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .ok()?
        .ok()?;
    Some(body.to_bytes())
}

/// Model id → context window from a `/v1/models` answer: `max_model_len` (the worker,
/// vLLM), `context_length` or `context_window` (other servers).
fn windows_in(body: &[u8]) -> HashMap<String, u64> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let mut out = HashMap::new();
    for m in v["data"].as_array().into_iter().flatten() {
        let (Some(id), Some(n)) = (
            m["id"].as_str(),
            ["max_model_len", "context_length", "context_window"]
                .iter()
                .find_map(|k| m[*k].as_u64()),
        ) else {
            continue;
        };
        out.insert(id.to_owned(), n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_read_from_a_models_list() {
        let w = windows_in(
            br#"{"object":"list","data":[{"id":"smollm2","object":"model","max_model_len":2048},{"id":"x"}]}"#,
        );
        assert_eq!(w.get("smollm2"), Some(&2048));
        assert_eq!(w.len(), 1);
        let c = ContextWindows::default();
        c.discovered.write().unwrap().insert(Arc::from("local"), w);
        assert_eq!(c.discovered("local", "any-name"), Some(2048));
        assert_eq!(c.discovered("other", "smollm2"), None);
    }
}
