//! The HTTP surface: which handler answers which path.
//!
//! The OpenAI endpoints the gateway proxies go to the request path (`request::handle`); the
//! gateway's own endpoints (`/v1/models`, `/healthz`, `/readyz`, `/metrics`) are answered
//! here, and `/admin/*` goes to the admin API behind its token check.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::admin;
use super::gateway::Gateway;
use crate::base::GatewayError;
use crate::base::body::GatewayBody;
use crate::base::endpoint::{self, Endpoint};
use crate::base::openai;
use crate::base::respond::{json, text};
use crate::request;
use crate::services::upstream::health;

/// Entry point for every HTTP request the server accepts.
pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>) -> Response<GatewayBody> {
    let method = req.method().clone();
    let path = req.uri().path();
    if method == Method::POST
        && let Some(endpoint) = Endpoint::from_path(path)
    {
        return request::handle(&gw.services, req, endpoint).await;
    }
    match (path, &method) {
        (endpoint::MODELS, &Method::GET) => json(
            StatusCode::OK,
            openai::models_list(gw.runtime().model_names()),
        ),
        (endpoint::HEALTHZ, &Method::GET) => text(StatusCode::OK, "ok\n"),
        (p, _) if p.starts_with(endpoint::ADMIN_PREFIX) => {
            if let Some(refusal) = admin::refusal(&gw.runtime(), &req) {
                return refusal;
            }
            if p.starts_with("/admin/keys") || p.starts_with("/admin/spend") {
                admin::keys::handle(gw, req).await
            } else {
                admin::handle(gw, req).await
            }
        }
        (endpoint::READYZ, &Method::GET) => {
            if gw.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (endpoint::METRICS, &Method::GET) => {
            let s = &gw.services;
            let mut text = s.metrics.render();
            health::render_metrics(&gw.snapshot().upstreams, &mut text);
            s.upstreams.traffic.render_metrics(&mut text);
            if let Some(shadow) = &s.shadow {
                shadow.render_metrics(&mut text);
            }
            s.plugins.metrics.render(&mut text);
            if let Some(g) = &s.governance {
                g.render_metrics(&mut text);
            }
            let mut r = Response::new(GatewayBody::from(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (p, &Method::GET) if p.starts_with("/v1/models/") => {
            let id = &p[endpoint::MODELS.len() + 1..];
            let rt = gw.runtime();
            match rt.model_names().find(|n| *n == id) {
                Some(n) => json(
                    StatusCode::OK,
                    Bytes::from(
                        serde_json::json!({"id": n, "object": "model", "created": 0, "owned_by": "switchyard"})
                            .to_string(),
                    ),
                ),
                None => GatewayError::UnknownModel(id.to_string()).to_response(),
            }
        }
        (p, _)
            if Endpoint::from_path(p).is_some()
                || matches!(
                    p,
                    endpoint::MODELS | endpoint::HEALTHZ | endpoint::READYZ | endpoint::METRICS
                ) =>
        {
            GatewayError::MethodNotAllowed {
                method: method.to_string(),
                path: path.to_string(),
            }
            .to_response()
        }
        _ => GatewayError::NotFound {
            method: method.to_string(),
            path: path.to_string(),
        }
        .to_response(),
    }
}
