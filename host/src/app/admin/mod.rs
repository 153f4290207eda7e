//! The admin API: reload, rollback, versions and breakers, behind a bearer token.
//!
//! ```text
//! POST /admin/reload     validate the config file and swap it in (422 with every problem if not)
//! POST /admin/rollback   restore the previous kept version (409 when there is none)
//! GET  /admin/config     the kept versions and which one is in force
//! GET  /admin/breakers   breaker, health and load of every backend URL
//! GET  /admin/rollouts   every rollout's state, guards and history
//! POST /admin/rollouts/{pause,resume,promote,abort}   {"route": R}: act on R's rollout
//! ```
//!
//! The console (`/ui`, [`console`]) reads and acts through these same endpoints, plus the
//! read-only ones in [`console::api`]; it may send the token as a cookie instead.
//!
//! The token is read from the environment variable named by `[admin] token_env`; without
//! `[admin]` the API is off and answers 403 saying how to turn it on. Only the token's
//! SHA-256 is kept, and [`refusal`], the one gate in front of every `/admin/*` endpoint
//! (the governance ones too), compares digests, so response times say nothing about the
//! token's bytes.
//! Wrong tokens are throttled per client address ([`throttle`]). The API is served on
//! `[admin] listen` when set (and then not on the public port), else on `[server] listen`
//! to loopback clients only.
//! `switchyard rollback` and `switchyard reload` are thin clients of this API (`cli::admin`).

pub mod console;
pub mod keys;
pub mod throttle;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use http::{Method, Request, Response, StatusCode};

use super::gateway::Gateway;
use super::reload::{ControlError, Reloaded};
use crate::base::GatewayError;
use crate::base::body::GatewayBody;
use crate::base::respond;
use crate::config::Runtime;
use crate::services::rollout::controller::{ActError, Action};
use crate::services::rollout::status;
use crate::services::upstream::health;

fn json(status: StatusCode, v: serde_json::Value) -> Response<GatewayBody> {
    respond::json(status, v.to_string())
}

fn control_error(e: &ControlError) -> Response<GatewayBody> {
    let (status, code, problems) = match e {
        ControlError::Invalid(c) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            c.problems
                .iter()
                .map(|p| serde_json::json!({"path": p.path, "message": p.message}))
                .collect(),
        ),
        ControlError::NoFile => (StatusCode::CONFLICT, "no_config_file", vec![]),
        ControlError::NoPrevious => (StatusCode::CONFLICT, "no_previous_version", vec![]),
    };
    json(
        status,
        serde_json::json!({"error": {"message": e.to_string(), "type": "invalid_request_error", "param": null, "code": code, "problems": problems}}),
    )
}

/// Every `/admin/*` request, traffic and governance alike, from client address `peer`:
/// the failed-token throttle, the token check, then the endpoint.
pub async fn entry(
    gw: Arc<Gateway>,
    req: Request<hyper::body::Incoming>,
    peer: IpAddr,
) -> Response<GatewayBody> {
    if let Some(refused) = refusal(&gw, &gw.runtime(), &req, peer) {
        return refused;
    }
    let p = req.uri().path();
    let (method, path, query) = (
        req.method().clone(),
        p.to_string(),
        req.uri().query().unwrap_or("").to_string(),
    );
    if let Some(resp) = console::api::handle(&gw, &method, &path, &query).await {
        return resp;
    }
    let p = req.uri().path();
    if p.starts_with("/admin/keys") || p.starts_with("/admin/spend") {
        keys::handle(gw, req).await
    } else {
        handle(gw, req).await
    }
}

/// The gate in front of every `/admin/*` endpoint: the refusal to send (it is logged), or
/// `None` when the request carries the admin token and its address is not blocked.
fn refusal(
    gw: &Gateway,
    rt: &Runtime,
    req: &Request<hyper::body::Incoming>,
    peer: IpAddr,
) -> Option<Response<GatewayBody>> {
    let now = Instant::now();
    let e = match gw.admin_throttle.check(peer, now) {
        Err(retry_after_secs) => GatewayError::AdminThrottled { retry_after_secs },
        Ok(()) => {
            let token = rt.admin.as_ref().and_then(|a| a.token_sha256());
            match console::authenticate(req.method(), req.headers(), token) {
                Ok(()) => {
                    gw.admin_throttle.succeeded(peer);
                    return None;
                }
                Err(e) => {
                    if matches!(e, GatewayError::AdminUnauthorized) {
                        gw.admin_throttle.failed(peer, now);
                    }
                    e
                }
            }
        }
    };
    tracing::info!(path = %req.uri().path(), %peer, kind = e.kind(), "admin request refused");
    Some(e.to_response())
}

/// `POST /admin/rollouts/{pause|resume|promote|abort}` with `{"route": "..."}`.
const ROLLOUT_ACTION: &str = "/admin/rollouts/";

/// An operator's action on a route's rollout; the rollout's status after it.
async fn rollout_action(
    gw: &Gateway,
    action: &str,
    req: Request<hyper::body::Incoming>,
) -> Response<GatewayBody> {
    let Some(act) = Action::parse(action) else {
        return GatewayError::NotFound {
            method: "POST".into(),
            path: format!("{ROLLOUT_ACTION}{action}"),
        }
        .to_response();
    };
    let rt = gw.runtime();
    let (parts, body) = req.into_parts();
    let body = match crate::request::parse::read_body(
        body,
        &parts.headers,
        64 * 1024,
        rt.server.body_read_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return e.to_response(),
    };
    let route = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["route"].as_str().map(str::to_string));
    let Some(route) = route else {
        return GatewayError::MissingParam { param: "route" }.to_response();
    };
    let store = gw.services.governance.as_ref().map(|g| g.store.clone());
    match gw.services.rollouts.act(&route, act, store.as_deref()) {
        Ok((rec, history)) => json(StatusCode::OK, status::to_json(&rec, &history)),
        Err(e @ ActError::NoRollout(_)) => {
            GatewayError::RolloutNotFound(e.to_string()).to_response()
        }
        Err(e) => GatewayError::RolloutConflict(e.to_string()).to_response(),
    }
}

/// How many of the shared config history's latest changes `GET /admin/config` lists.
const CONFIG_HISTORY_SHOWN: i64 = 50;

/// Answer one traffic `/admin/...` request (the token already checked: [`refusal`]).
async fn handle(gw: Arc<Gateway>, req: Request<hyper::body::Incoming>) -> Response<GatewayBody> {
    let path = req.uri().path().to_string();
    match (path.as_str(), req.method()) {
        ("/admin/breakers", &Method::GET) => json(
            StatusCode::OK,
            health::breakers_json(&gw.snapshot().upstreams),
        ),
        ("/admin/config", &Method::GET) => {
            let (versions, current) = gw.control.versions();
            let list: Vec<serde_json::Value> = versions
                .iter()
                .map(|v| {
                    serde_json::json!({
                        "version": v.id,
                        "origin": v.origin,
                        "loaded_at_unix": v.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                        "routes": v.snapshot.config.routes.iter().map(|r| r.name.to_string()).collect::<Vec<_>>(),
                    })
                })
                .collect();
            // Every replica's changes, from the store they share (this one's alone on SQLite).
            let history = match gw.services.governance.clone() {
                Some(g) => tokio::task::spawn_blocking(move || {
                    let mut conn = g.store.conn().map_err(|e| e.to_string())?;
                    crate::services::config_history::recent(&mut conn, CONFIG_HISTORY_SHOWN)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r),
                None => Ok(Vec::new()),
            };
            let history = match history {
                Ok(h) => h,
                Err(e) => {
                    return GatewayError::Internal(format!("config history: {e}")).to_response();
                }
            };
            json(
                StatusCode::OK,
                serde_json::json!({
                    "current": current,
                    "versions": list,
                    "replica": crate::services::config_history::replica_name(),
                    "history": history,
                }),
            )
        }
        ("/admin/reload", &Method::POST) => {
            let gw2 = gw.clone();
            let r = tokio::task::spawn_blocking(move || gw2.control.reload(&gw2, "admin")).await;
            match r {
                Ok(Ok(Reloaded::Applied { version, previous })) => json(
                    StatusCode::OK,
                    serde_json::json!({"reloaded": true, "version": version, "previous": previous}),
                ),
                Ok(Ok(Reloaded::Unchanged { version })) => json(
                    StatusCode::OK,
                    serde_json::json!({"reloaded": false, "version": version}),
                ),
                Ok(Err(e)) => control_error(&e),
                Err(e) => GatewayError::Internal(format!("reload task failed: {e}")).to_response(),
            }
        }
        ("/admin/rollback", &Method::POST) => match gw.control.rollback(&gw) {
            Ok((version, from)) => json(
                StatusCode::OK,
                serde_json::json!({"rolled_back": true, "version": version, "from": from}),
            ),
            Err(e) => control_error(&e),
        },
        ("/admin/rollouts", &Method::GET) => json(
            StatusCode::OK,
            status::list_json(&gw.services.rollouts.statuses()),
        ),
        (p, &Method::POST) if p.starts_with(ROLLOUT_ACTION) => {
            rollout_action(&gw, &p[ROLLOUT_ACTION.len()..], req).await
        }
        (p, m) => GatewayError::NotFound {
            method: m.to_string(),
            path: p.to_string(),
        }
        .to_response(),
    }
}
