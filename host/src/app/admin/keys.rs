//! The admin API, behind the admin token (`[admin] token_env`):
//!
//! | request | does |
//! | --- | --- |
//! | `GET /admin/keys` | list keys (never secrets) |
//! | `POST /admin/keys` `{"team", "tags", "rpm", "tpm", "budget_daily", "budget_monthly"}` | create a key; the answer holds the secret, once |
//! | `DELETE /admin/keys/{id}` | revoke a key |
//! | `GET /admin/spend?by=team&since=24h` | the `switchyard spend` report as JSON |
//!
//! Store work runs on the blocking pool; a change to keys takes effect at once on this
//! replica (the cache is refreshed) and within a second on others sharing the store.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::app::cli::keys::{parse_since, report_json};
use crate::app::gateway::Gateway;
use crate::base::GatewayError;
use crate::base::body::GatewayBody;
use crate::base::clock::now_ms;
use crate::base::respond;
use crate::config::governance::Limits;
use crate::services::governance::Governance;
use crate::services::governance::keys::{self as auth, NewKey};
use crate::services::governance::ledger;
use crate::services::governance::store::Conn;

fn json(status: StatusCode, v: serde_json::Value) -> Response<GatewayBody> {
    respond::json(status, v.to_string())
}

fn bad(msg: String) -> Response<GatewayBody> {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({"error": {"message": msg, "type": "invalid_request_error", "param": null, "code": null}}),
    )
}

/// Serve one `/admin/keys` or `/admin/spend` request (the admin token already checked, by
/// [`super::refusal`]).
pub async fn handle(gw: Arc<Gateway>, req: Request<Incoming>) -> Response<GatewayBody> {
    let Some(gov) = gw.services.governance.clone() else {
        return GatewayError::AdminDisabled.to_response();
    };
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/admin/keys") => {
            blocking(gov, false, |conn| {
                let keys = auth::list(conn)?;
                let data: Vec<_> = keys.iter().map(|k| k.to_json()).collect();
                Ok((
                    StatusCode::OK,
                    serde_json::json!({"object": "list", "data": data}),
                ))
            })
            .await
        }
        (Method::POST, "/admin/keys") => {
            let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return bad("the request body could not be read (64 KiB at most)".into()),
            };
            let new = match parse_new_key(&body) {
                Ok(n) => n,
                Err(m) => return bad(m),
            };
            if let Err(e) = new.check() {
                return e.to_response();
            }
            blocking(gov, true, move |conn| {
                let (rec, secret) = auth::create(conn, &new)?;
                let mut v = rec.to_json();
                v["key"] = serde_json::Value::String(secret);
                Ok((StatusCode::CREATED, v))
            })
            .await
        }
        (Method::DELETE, p) if p.starts_with("/admin/keys/") => {
            let id = p["/admin/keys/".len()..].to_string();
            blocking(gov, true, move |conn| {
                match auth::revoke(conn, &id)? {
                    Some(rec) => {
                        tracing::info!(key = %rec.id, team = %rec.team, "key revoked (admin API)");
                        Ok((StatusCode::OK, rec.to_json()))
                    }
                    None => Ok((
                        StatusCode::NOT_FOUND,
                        serde_json::json!({"error": {"message": format!("no key with id {id}"), "type": "invalid_request_error", "param": "id", "code": "key_not_found"}}),
                    )),
                }
            })
            .await
        }
        (Method::GET, "/admin/spend") => {
            let mut by = None;
            let mut since = 0;
            for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
                match k {
                    "by" => match ledger::GroupBy::parse(v) {
                        Some(b) => by = Some(b),
                        None => return bad(format!("by: unknown grouping \"{v}\"")),
                    },
                    "since" => match parse_since(v, now_ms()) {
                        Ok(t) => since = t,
                        Err(m) => return bad(format!("since: {m}")),
                    },
                    _ => {}
                }
            }
            blocking(gov, false, move |conn| {
                let lines = ledger::spend_in(conn, by, since)?;
                Ok((StatusCode::OK, report_json(by, since, &lines)))
            })
            .await
        }
        (m, p) => GatewayError::NotFound {
            method: m.to_string(),
            path: p.to_string(),
        }
        .to_response(),
    }
}

fn parse_new_key(body: &[u8]) -> Result<NewKey, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        team: String,
        #[serde(default)]
        tags: Vec<String>,
        rpm: Option<u64>,
        tpm: Option<u64>,
        budget_daily: Option<f64>,
        budget_monthly: Option<f64>,
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| format!("invalid key request: {e}"))?;
    // Ranges are checked by `NewKey::check`, for the CLI too.
    Ok(NewKey {
        team: b.team,
        tags: b.tags,
        limits: Limits {
            rpm: b.rpm,
            tpm: b.tpm,
            budget_daily: b.budget_daily,
            budget_monthly: b.budget_monthly,
        },
    })
}

/// Run `f` on a store connection on the blocking pool (the PostgreSQL client blocks);
/// `refresh`: the call changed keys, which take effect on this replica before it answers.
async fn blocking<F>(gov: Arc<Governance>, refresh: bool, f: F) -> Response<GatewayBody>
where
    F: FnOnce(&mut Conn) -> Result<(StatusCode, serde_json::Value), String> + Send + 'static,
{
    let res = tokio::task::spawn_blocking(move || {
        let mut conn = gov.store.conn().map_err(|e| e.to_string())?;
        let out = f(&mut conn);
        if refresh {
            gov.keys.refresh();
        }
        out
    })
    .await;
    match res {
        Ok(Ok((status, v))) => json(status, v),
        Ok(Err(e)) => GatewayError::Internal(e).to_response(),
        Err(e) => GatewayError::Internal(e.to_string()).to_response(),
    }
}
