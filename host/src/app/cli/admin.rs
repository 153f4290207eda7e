//! `switchyard reload` and `switchyard rollback`: thin clients of the running gateway's
//! admin API (`POST /admin/reload`, `POST /admin/rollback`).

use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full};

use crate::base::error::error_chain;
use crate::config;
use crate::services::upstream::client::build_client;

/// Environment variable naming the admin URL for `switchyard rollback`/`reload`.
pub const ADMIN_URL_ENV: &str = "SWITCHYARD_ADMIN_URL";

/// `switchyard rollback` / `switchyard reload`: call the running gateway's admin API.
pub fn call(action: &str, config_path: Option<PathBuf>, url: Option<String>) -> ExitCode {
    match post(action, None, config_path, url) {
        Ok(v) => {
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
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// POST `/admin/{action}` (with a JSON `body`, if any) to the running gateway; its JSON
/// answer, or a message saying why not.
pub fn post(
    action: &str,
    body: Option<serde_json::Value>,
    config_path: Option<PathBuf>,
    url: Option<String>,
) -> Result<serde_json::Value, String> {
    let source = config::locate(config_path.as_deref());
    // Only the shape is needed (listen address, token variable): the running gateway
    // validates for itself, and this machine may lack the backends' API keys.
    let file = match &source {
        config::ConfigSource::File(p) => match std::fs::read_to_string(p) {
            Ok(t) => match config::parse(&t) {
                Ok(f) => Some(f),
                Err(e) => return Err(format!("{}: {}: {}", p.display(), e.path, e.message)),
            },
            Err(e) => {
                return Err(format!("{}: cannot read the config file: {e}", p.display()));
            }
        },
        config::ConfigSource::Embedded => None,
    };
    let base = url
        .or_else(|| std::env::var(ADMIN_URL_ENV).ok().filter(|v| !v.is_empty()))
        .or_else(|| {
            // The admin API's own listener (plain HTTP) when it has one.
            let admin_listen = file
                .as_ref()
                .and_then(|f| f.admin.as_ref())
                .and_then(|a| a.listen.clone());
            let listen = admin_listen
                .clone()
                .or_else(|| file.as_ref().and_then(|f| f.server.listen.clone()))
                .unwrap_or_else(|| "127.0.0.1:8080".to_string()); // the documented default
            let tls = admin_listen.is_none()
                && file.as_ref().is_some_and(|f| f.server.tls_cert.is_some());
            (!listen.ends_with(":0"))
                .then(|| format!("{}://{listen}", if tls { "https" } else { "http" }))
        });
    let Some(base) = base else {
        return Err(format!(
            "the config listens on port 0; pass --url http://HOST:PORT (or set {ADMIN_URL_ENV})"
        ));
    };
    let token_env = file
        .as_ref()
        .and_then(|f| f.admin.as_ref())
        .and_then(|a| a.token_env.clone());
    let Some(token_env) = token_env else {
        return Err(format!(
            "{source}: [admin] token_env is not set, so the gateway's admin API is off"
        ));
    };
    let Ok(token) = std::env::var(&token_env) else {
        return Err(format!(
            "environment variable {token_env} (from [admin] token_env) is not set"
        ));
    };
    let url = format!("{}/admin/{action}", base.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = rt.block_on(async {
        let native = rustls_native_certs::load_native_certs().certs;
        let client = build_client(std::time::Duration::from_secs(5), &native, &[])?;
        let payload = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let mut req = Request::new(Full::new(payload));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
        let auth = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| format!("{token_env} holds characters not allowed in a header"))?;
        req.headers_mut().insert(header::AUTHORIZATION, auth);
        let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
            .await
            .map_err(|_| format!("{url}: no answer within 30 s"))?
            .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
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
            Ok(serde_json::from_slice(&body).unwrap_or_default())
        }
        Ok((status, body)) => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let msg = v["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            Err(format!("{action} failed (HTTP {}): {msg}", status.as_u16()))
        }
        Err(e) => Err(format!("cannot reach the gateway's admin API: {e}")),
    }
}
