//! `switchyard health`: ask a running gateway whether it is up (`GET /healthz`) or ready
//! (`GET /readyz`), exit 0 when it answers 200.
//!
//! The container image has no shell and no curl (it is the static binary alone), so its
//! `HEALTHCHECK` is this command; it works as a probe anywhere else too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use crate::base::error::error_chain;
use crate::config;
use crate::services::upstream::client::build_client;

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Config file whose `[server] listen` is asked [default: $SWITCHYARD_CONFIG, then
    /// ./switchyard.toml, then built in]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The gateway's address, e.g. http://127.0.0.1:8080 [default: the config's listen]
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Ask `/readyz` (config loaded, listening, not shutting down) instead of `/healthz`.
    #[arg(long)]
    ready: bool,
    /// Seconds to wait for the answer.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    timeout: f64,
}

pub fn health(args: HealthArgs) -> ExitCode {
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let result = base_url(args.config, args.url).and_then(|base| {
        get(
            &format!("{}{path}", base.trim_end_matches('/')),
            args.timeout,
        )
    });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--url`, else `http(s)://` + the config's `[server] listen`, with an unspecified address
/// (`0.0.0.0`, `[::]`) asked on loopback.
fn base_url(config_path: Option<PathBuf>, url: Option<String>) -> Result<String, String> {
    if let Some(u) = url {
        return Ok(u);
    }
    let file = match config::locate(config_path.as_deref()) {
        config::ConfigSource::File(p) => {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| format!("{}: cannot read the config file: {e}", p.display()))?;
            Some(
                config::parse(&text)
                    .map_err(|e| format!("{}: {}: {}", p.display(), e.path, e.message))?,
            )
        }
        config::ConfigSource::Embedded => None,
    };
    let listen = file
        .as_ref()
        .and_then(|f| f.server.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".to_string()); // the documented default
    let mut addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("[server] listen = {listen:?} is not host:port; pass --url"))?;
    if addr.port() == 0 {
        return Err("the config listens on port 0; pass --url http://HOST:PORT".into());
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let tls = file.as_ref().is_some_and(|f| f.server.tls_cert.is_some());
    Ok(format!("{}://{addr}", if tls { "https" } else { "http" }))
}

/// GET `url`; `"URL: 200 BODY"` on a 200, else why not.
fn get(url: &str, timeout_secs: f64) -> Result<String, String> {
    let timeout = Duration::try_from_secs_f64(timeout_secs)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| format!("--timeout {timeout_secs}: must be a positive number of seconds"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(async {
        let native = rustls_native_certs::load_native_certs().certs;
        let client = build_client(timeout, &native, &[])?;
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
        let resp = tokio::time::timeout(timeout, client.request(req))
            .await
            .map_err(|_| format!("{url}: no answer within {timeout_secs} s"))?
            .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
        let status = resp.status();
        let body = tokio::time::timeout(timeout, resp.into_body().collect())
            .await
            .map_err(|_| format!("{url}: the answer did not end within {timeout_secs} s"))?
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        if status.as_u16() == 200 {
            Ok(format!("{url}: 200 {}", body.trim()))
        } else {
            Err(format!("{url}: HTTP {} {}", status.as_u16(), body.trim()))
        }
    })
}
