//! The admin API: reload, rollback, versions and breakers, behind a bearer token.
//!
//! ```text
//! POST /admin/reload     validate the config file and swap it in (422 with every problem if not)
//! POST /admin/rollback   restore the previous kept version (409 when there is none)
//! GET  /admin/config     the kept versions and which one is in force
//! GET  /admin/breakers   breaker, health and load of every backend URL
//! ```
//!
//! The token is read from the environment variable named by `[admin] token_env`; without
//! `[admin]` the API is off and answers 403 saying how to turn it on. Only the token's
//! SHA-256 is kept, and [`refusal`], the one gate in front of every `/admin/*` endpoint
//! (the governance ones too), compares digests, so response times say nothing about the
//! token's bytes.
//! `switchyard rollback` and `switchyard reload` are thin clients of this API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

use crate::body::GatewayBody;
use crate::config::{self, Problem};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::reload::{ControlError, Reloaded};

/// Environment variable naming the admin URL for `switchyard rollback`/`reload`.
pub const ADMIN_URL_ENV: &str = "SWITCHYARD_ADMIN_URL";

/// `[admin]`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Name of the environment variable holding the admin bearer token.
    pub token_env: Option<String>,
    /// Config versions kept for rollback. Default 10.
    pub keep_versions: Option<usize>,
    /// Reload when the config file changes. Default true.
    pub watch: Option<bool>,
}

/// `[admin]`, validated.
#[derive(Clone)]
pub struct AdminSettings {
    /// SHA-256 of the token; `None` when the variable is unset or too short (reported).
    token_sha256: Option<[u8; 32]>,
    pub keep_versions: usize,
    pub watch: bool,
}

impl std::fmt::Debug for AdminSettings {
    // Hand-written so the token never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("token", &self.token_sha256.map(|_| "<redacted>"))
            .field("keep_versions", &self.keep_versions)
            .field("watch", &self.watch)
            .finish()
    }
}

impl AdminSettings {
    /// The token's digest, `None` when the admin API is off.
    pub fn token_sha256(&self) -> Option<&[u8; 32]> {
        self.token_sha256.as_ref()
    }

    pub fn from_section(s: Option<&AdminSection>, problems: &mut Vec<Problem>) -> Option<Self> {
        let s = s?;
        let token_sha256 = s
            .token_env
            .as_deref()
            .and_then(|var| match std::env::var(var) {
                Ok(v) if v.trim().len() >= 16 => Some(crate::auth::sha256(v.trim().as_bytes())),
                Ok(_) => {
                    problems.push(Problem::new(
                        "admin.token_env",
                        format!(
                            "environment variable {var} must hold a token of at least 16 characters"
                        ),
                    ));
                    None
                }
                Err(_) => {
                    problems.push(Problem::new(
                        "admin.token_env",
                        format!("environment variable {var} is not set"),
                    ));
                    None
                }
            });
        let keep_versions = s
            .keep_versions
            .unwrap_or(crate::reload::DEFAULT_KEEP_VERSIONS);
        if keep_versions < 2 {
            problems.push(Problem::new(
                "admin.keep_versions",
                "must be at least 2 (the current version and one to roll back to)",
            ));
        }
        Some(AdminSettings {
            token_sha256,
            keep_versions,
            watch: s.watch.unwrap_or(true),
        })
    }
}

/// The admin token's digest in force, `None` when the admin API is off.
pub fn token_sha256(rt: &crate::config::Runtime) -> Option<&[u8; 32]> {
    rt.admin.as_ref().and_then(AdminSettings::token_sha256)
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
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

/// The gate in front of every `/admin/*` endpoint, traffic and governance alike: the
/// refusal to send (it is logged), or `None` when the request carries the admin token.
pub fn refusal(
    rt: &crate::config::Runtime,
    req: &Request<hyper::body::Incoming>,
) -> Option<Response<GatewayBody>> {
    let e = crate::auth::authenticate_admin(req.headers(), token_sha256(rt)).err()?;
    tracing::info!(path = %req.uri().path(), kind = e.kind(), "admin request refused");
    Some(e.to_response())
}

/// Answer one traffic `/admin/...` request (the token already checked: [`refusal`]).
pub async fn handle(
    gw: Arc<Gateway>,
    req: Request<hyper::body::Incoming>,
) -> Response<GatewayBody> {
    let path = req.uri().path().to_string();
    match (path.as_str(), req.method()) {
        ("/admin/breakers", &Method::GET) => {
            json(StatusCode::OK, crate::pool::breakers_json(&gw.runtime()))
        }
        ("/admin/config", &Method::GET) => {
            let (versions, current) = gw.control.versions();
            let list: Vec<serde_json::Value> = versions
                .iter()
                .map(|v| {
                    serde_json::json!({
                        "version": v.id,
                        "origin": v.origin,
                        "loaded_at_unix": v.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                        "routes": v.runtime.routes.iter().map(|r| r.name.to_string()).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json(
                StatusCode::OK,
                serde_json::json!({"current": current, "versions": list}),
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
        (p, m) => GatewayError::NotFound {
            method: m.to_string(),
            path: p.to_string(),
        }
        .to_response(),
    }
}

/// `switchyard rollback` / `switchyard reload`: call the running gateway's admin API.
pub fn cli(action: &str, config_path: Option<PathBuf>, url: Option<String>) -> ExitCode {
    let source = config::locate(config_path.as_deref());
    // Only the shape is needed (listen address, token variable): the running gateway
    // validates for itself, and this machine may lack the backends' API keys.
    let file = match &source {
        config::ConfigSource::File(p) => match std::fs::read_to_string(p) {
            Ok(t) => match config::parse(&t) {
                Ok(f) => Some(f),
                Err(e) => {
                    eprintln!("error: {}: {}: {}", p.display(), e.path, e.message);
                    return ExitCode::FAILURE;
                }
            },
            Err(e) => {
                eprintln!("error: {}: cannot read the config file: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
        config::ConfigSource::Embedded => None,
    };
    let base = url
        .or_else(|| std::env::var(ADMIN_URL_ENV).ok().filter(|v| !v.is_empty()))
        .or_else(|| {
            let listen = file
                .as_ref()
                .and_then(|f| f.server.listen.clone())
                .unwrap_or_else(|| "127.0.0.1:8080".to_string()); // the documented default
            let tls = file.as_ref().is_some_and(|f| f.server.tls_cert.is_some());
            (!listen.ends_with(":0"))
                .then(|| format!("{}://{listen}", if tls { "https" } else { "http" }))
        });
    let Some(base) = base else {
        eprintln!(
            "error: the config listens on port 0; pass --url http://HOST:PORT (or set {ADMIN_URL_ENV})"
        );
        return ExitCode::FAILURE;
    };
    let token_env = file
        .as_ref()
        .and_then(|f| f.admin.as_ref())
        .and_then(|a| a.token_env.clone());
    let Some(token_env) = token_env else {
        eprintln!(
            "error: {source}: [admin] token_env is not set, so the gateway's admin API is off"
        );
        return ExitCode::FAILURE;
    };
    let Ok(token) = std::env::var(&token_env) else {
        eprintln!("error: environment variable {token_env} (from [admin] token_env) is not set");
        return ExitCode::FAILURE;
    };
    let url = format!("{}/admin/{action}", base.trim_end_matches('/'));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let client = crate::upstream::client(std::time::Duration::from_secs(5), None, &[])?;
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
        let auth = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| format!("{token_env} holds characters not allowed in a header"))?;
        req.headers_mut().insert(header::AUTHORIZATION, auth);
        let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
            .await
            .map_err(|_| format!("{url}: no answer within 30 s"))?
            .map_err(|e| format!("{url}: {}", crate::upstream::error_chain(&e)))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    });
    match result {
        Ok((status, body)) if status.is_success() => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            match action {
                "rollback" => println!(
                    "rolled back: config version {} is in force (was {})",
                    v["version"], v["from"]
                ),
                _ if v["reloaded"] == true => println!(
                    "reloaded: config version {} is in force (was {})",
                    v["version"], v["previous"]
                ),
                _ => println!("unchanged: config version {} is in force", v["version"]),
            }
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let msg = v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            eprintln!("error: {action} failed (HTTP {}): {msg}", status.as_u16());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: cannot reach the gateway's admin API: {e}");
            ExitCode::FAILURE
        }
    }
}
