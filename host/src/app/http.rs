//! The HTTP surface: which handler answers which path.
//!
//! The OpenAI endpoints the gateway proxies go to the request path (`request::handle`); the
//! gateway's own endpoints (`/v1/models`, `/v1/feedback`, `/healthz`, `/readyz`, `/metrics`) are answered
//! here, and `/admin/*` (and the console, `/ui`) goes to the admin API behind its token check: on `[admin] listen`
//! when it has a listener of its own (which serves nothing else), else on the public port to
//! loopback clients only.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::admin;
use super::feedback;
use super::gateway::Gateway;
use crate::base::GatewayError;
use crate::base::body::GatewayBody;
use crate::base::endpoint::{self, Endpoint};
use crate::base::openai;
use crate::base::protocols::{self, Protocol};
use crate::base::respond::{json, text};
use crate::request;
use crate::services::upstream::health;

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `[server] listen`: the OpenAI API, the gateway's own endpoints, and the admin API
    /// (to loopback clients) unless it has a listener of its own.
    Public,
    /// `[admin] listen`: the admin API only.
    Admin,
}

/// The connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub peer: SocketAddr,
    pub surface: Surface,
}

/// Entry point for every HTTP request the server accepts.
pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>, conn: Conn) -> Response<GatewayBody> {
    let method = req.method().clone();
    let path = req.uri().path();
    let is_admin =
        path.starts_with(endpoint::ADMIN_PREFIX) || admin::console::is_console_path(path);
    if conn.surface == Surface::Admin {
        if is_admin {
            return admin_request(gw, req, conn).await;
        }
        return not_found(&method, path);
    }
    if method == Method::POST
        && let Some(endpoint) = Endpoint::from_path(path)
    {
        return request::handle(&gw.services, req, endpoint).await;
    }
    if method == Method::POST {
        match path {
            endpoint::FEEDBACK => return feedback::handle(&gw.services, req).await,
            protocols::RESPONSES => {
                return request::handle_protocol(&gw.services, req, Protocol::Responses).await;
            }
            protocols::MESSAGES => {
                return request::handle_protocol(&gw.services, req, Protocol::Messages).await;
            }
            protocols::COUNT_TOKENS => {
                return request::protocol::count_tokens(&gw.services, req).await;
            }
            _ => {}
        }
    }
    if is_admin {
        // With a listener of its own, the admin API is not on the public port at all;
        // without one, only this machine's clients reach it.
        if gw.has_admin_listener() {
            return not_found(&method, path);
        }
        if !is_loopback(conn.peer.ip()) {
            return GatewayError::AdminNotLocal.to_response();
        }
        return admin_request(gw, req, conn).await;
    }
    match (path, &method) {
        (endpoint::MODELS, &Method::GET) => json(
            StatusCode::OK,
            openai::models_list(gw.runtime().model_names()),
        ),
        (endpoint::HEALTHZ, &Method::GET) => text(StatusCode::OK, "ok\n"),
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
            if let Some(capture) = &s.capture {
                capture.render_metrics(&mut text);
            }
            s.plugins.metrics.render(&mut text);
            s.cache.render_metrics(&mut text);
            s.context.render_metrics(&mut text);
            if let Some(g) = &s.governance {
                g.render_metrics(&mut text);
            }
            s.rollouts.render_metrics(&mut text);
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
                    protocols::RESPONSES | protocols::MESSAGES | protocols::COUNT_TOKENS
                )
                || matches!(
                    p,
                    endpoint::MODELS
                        | endpoint::HEALTHZ
                        | endpoint::READYZ
                        | endpoint::METRICS
                        | endpoint::FEEDBACK
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

/// An `/admin/*` request, once the listener allows it.
async fn admin_request(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    conn: Conn,
) -> Response<GatewayBody> {
    if admin::console::is_console_path(req.uri().path()) {
        // The admin listener is plain HTTP; the public one may be TLS.
        let secure = conn.surface == Surface::Public && gw.runtime().server.tls.is_some();
        return admin::console::serve(gw, req, conn.peer.ip(), secure).await;
    }
    admin::entry(gw, req, conn.peer.ip()).await
}

fn not_found(method: &Method, path: &str) -> Response<GatewayBody> {
    GatewayError::NotFound {
        method: method.to_string(),
        path: path.to_string(),
    }
    .to_response()
}

/// A client on this machine (an IPv4 loopback address seen through an IPv6 socket too).
fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_this_machine_in_either_family() {
        for ip in ["127.0.0.1", "127.8.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "0.0.0.0", "::ffff:10.0.0.1", "2001:db8::1"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }
}
