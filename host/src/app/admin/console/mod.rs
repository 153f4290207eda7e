//! The console: a page at `/ui` for the people running a migration, served from the
//! binary (three files, gzipped for clients that take it; no build step, no request
//! leaving the gateway's origin).
//!
//! ```text
//! GET  /ui, /ui/app.js, /ui/app.css   the page (no token needed: it holds no data)
//! GET  /ui/session                    {"signed_in": bool}: does the cookie hold the token
//! POST /ui/login  {"token": T}        T checked like a bearer token; sets the cookie
//! POST /ui/logout                     clears it
//! ```
//!
//! Everything the page shows or does goes through the admin API (`/admin/*`) the CLI uses,
//! so the page can do nothing the token cannot. The admin API takes the token as
//! `Authorization: Bearer` (scripts) or as the cookie the login sets: HttpOnly (page
//! scripts never see it), SameSite=Strict (another site's page cannot send it), Secure on a
//! TLS listener. A cookie-authenticated request that changes something must also carry
//! [`CONSOLE_HEADER`], which a cross-site form cannot add. The console is off, like the
//! admin API, without `[admin]`.

pub mod api;
pub mod history;

use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::app::gateway::Gateway;
use crate::base::GatewayError;
use crate::base::body::GatewayBody;
use crate::base::digest::sha256;
use crate::services::governance::keys::authenticate_admin;

/// Where the console is served.
pub const PREFIX: &str = "/ui";
/// The cookie holding the admin token (hex-encoded, so any token is a valid cookie value).
pub const COOKIE: &str = "switchyard_admin";
/// Header the page sends on every request; required with cookie auth on anything but GET.
pub const CONSOLE_HEADER: &str = "x-switchyard-console";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Nothing but the gateway's own origin: the page makes no request anywhere else, and an
/// injected script could not either.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// True for the console's paths.
pub fn is_console_path(path: &str) -> bool {
    path == PREFIX || path.starts_with("/ui/")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The token in the console's cookie, if the request carries one.
fn cookie_token(headers: &HeaderMap) -> Option<Vec<u8>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .and_then(|(_, v)| unhex(v.trim()))
}

/// The admin token check for every `/admin/*` request: `Authorization: Bearer` first, else
/// the console's cookie (with [`CONSOLE_HEADER`] unless the method only reads).
pub fn authenticate(
    method: &Method,
    headers: &HeaderMap,
    expected_sha256: Option<&[u8; 32]>,
) -> Result<(), GatewayError> {
    match authenticate_admin(headers, expected_sha256) {
        Err(GatewayError::AdminTokenMissing) if !headers.contains_key(header::AUTHORIZATION) => {}
        other => return other,
    }
    let reads = matches!(*method, Method::GET | Method::HEAD);
    let (Some(token), Some(expected)) = (cookie_token(headers), expected_sha256) else {
        return Err(GatewayError::AdminTokenMissing);
    };
    if !reads && !headers.contains_key(CONSOLE_HEADER) {
        return Err(GatewayError::AdminTokenMissing);
    }
    if &sha256(&token) == expected {
        Ok(())
    } else {
        Err(GatewayError::AdminUnauthorized)
    }
}

/// One of the page's files, and its gzip form, made at first request and kept.
struct Asset {
    content_type: &'static str,
    text: &'static str,
    gzip: OnceLock<Bytes>,
}

static INDEX: Asset = Asset::new("text/html; charset=utf-8", INDEX_HTML);
static JS: Asset = Asset::new("text/javascript; charset=utf-8", APP_JS);
static CSS: Asset = Asset::new("text/css; charset=utf-8", APP_CSS);

impl Asset {
    const fn new(content_type: &'static str, text: &'static str) -> Asset {
        Asset {
            content_type,
            text,
            gzip: OnceLock::new(),
        }
    }

    fn gzipped(&self) -> Option<Bytes> {
        let z = self.gzip.get_or_init(|| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            // Writing to a Vec cannot fail; an empty result means "serve it plain".
            match enc
                .write_all(self.text.as_bytes())
                .and_then(|()| enc.finish())
            {
                Ok(v) => Bytes::from(v),
                Err(_) => Bytes::new(),
            }
        });
        (!z.is_empty()).then(|| z.clone())
    }
}

/// Whether the client takes gzip (`Accept-Encoding`, without `gzip;q=0`).
fn takes_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';').map(str::trim);
            parts.next().is_some_and(|n| n.eq_ignore_ascii_case("gzip"))
                && !parts.any(|p| p.replace(' ', "").starts_with("q=0") && !p.contains('.'))
        })
}

fn asset(a: &Asset, headers: &HeaderMap) -> Response<GatewayBody> {
    let gz = takes_gzip(headers).then(|| a.gzipped()).flatten();
    let mut r = match &gz {
        Some(z) => Response::new(GatewayBody::from(z.clone())),
        None => Response::new(GatewayBody::from(a.text)),
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gz.is_some() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn no_content(cookie: String) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::from(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Serve one `/ui` request from client `peer`; `secure`: the connection is TLS (the
/// cookie is then marked Secure).
pub async fn serve(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    peer: IpAddr,
    secure: bool,
) -> Response<GatewayBody> {
    let rt = gw.runtime();
    let Some(expected) = rt.admin.as_ref().and_then(|a| a.token_sha256()).copied() else {
        return GatewayError::AdminDisabled.to_response();
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match (&method, path.as_str()) {
        (&Method::GET, "/ui" | "/ui/" | "/ui/index.html") => asset(&INDEX, req.headers()),
        (&Method::GET, "/ui/app.js") => asset(&JS, req.headers()),
        (&Method::GET, "/ui/app.css") => asset(&CSS, req.headers()),
        (&Method::GET, "/ui/session") => session(&gw, &req, peer, &expected),
        (&Method::POST, "/ui/login") => login(&gw, req, peer, secure, &expected).await,
        (&Method::POST, "/ui/logout") => no_content(format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if secure { "; Secure" } else { "" }
        )),
        _ => GatewayError::NotFound {
            method: method.to_string(),
            path,
        }
        .to_response(),
    }
}

/// `GET /ui/session`: whether the request's cookie (or bearer token) is the admin token,
/// as 200 either way so the page can choose between the login form and the console
/// without a failed request.
fn session(
    gw: &Gateway,
    req: &Request<Incoming>,
    peer: IpAddr,
    expected: &[u8; 32],
) -> Response<GatewayBody> {
    let now = Instant::now();
    let signed_in = gw.admin_throttle.check(peer, now).is_ok()
        && match authenticate(&Method::GET, req.headers(), Some(expected)) {
            Ok(()) => true,
            Err(GatewayError::AdminUnauthorized) => {
                gw.admin_throttle.failed(peer, now);
                false
            }
            Err(_) => false,
        };
    let mut r = crate::base::respond::json(
        StatusCode::OK,
        serde_json::json!({ "signed_in": signed_in }).to_string(),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `POST /ui/login`: the token is checked like a bearer token, under the same failed-token
/// throttle, and kept in the cookie.
async fn login(
    gw: &Gateway,
    req: Request<Incoming>,
    peer: IpAddr,
    secure: bool,
    expected: &[u8; 32],
) -> Response<GatewayBody> {
    let now = Instant::now();
    if let Err(retry_after_secs) = gw.admin_throttle.check(peer, now) {
        return GatewayError::AdminThrottled { retry_after_secs }.to_response();
    }
    let body = match Limited::new(req.into_body(), 16 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return GatewayError::MissingParam { param: "token" }.to_response(),
    };
    let token = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["token"].as_str().map(|t| t.trim().to_string()))
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return GatewayError::MissingParam { param: "token" }.to_response();
    };
    if &sha256(token.as_bytes()) != expected {
        gw.admin_throttle.failed(peer, now);
        tracing::info!(%peer, "console login refused");
        return GatewayError::AdminUnauthorized.to_response();
    }
    gw.admin_throttle.succeeded(peer);
    tracing::info!(%peer, "console login");
    no_content(format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{}",
        hex(token.as_bytes()),
        if secure { "; Secure" } else { "" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn gzip_only_for_clients_that_take_it_and_it_round_trips() {
        for (accept, gz) in [
            ("gzip, deflate, br", true),
            ("br;q=1.0, GZIP;q=0.5", true),
            ("gzip;q=0", false),
            ("deflate", false),
            ("", false),
        ] {
            assert_eq!(
                takes_gzip(&headers(&[("accept-encoding", accept)])),
                gz,
                "{accept}"
            );
        }
        let z = JS.gzipped().unwrap();
        assert!(z.len() < APP_JS.len() / 2);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&z[..]), &mut out).unwrap();
        assert_eq!(out, APP_JS);
    }

    #[test]
    fn the_cookie_authenticates_reads_and_console_writes_only() {
        let token = "0123456789abcdef-token";
        let expected = sha256(token.as_bytes());
        let cookie = format!("other=1; {COOKIE}={}", hex(token.as_bytes()));
        let h = headers(&[("cookie", &cookie)]);
        assert!(authenticate(&Method::GET, &h, Some(&expected)).is_ok());
        // A write from a plain form (no console header) is refused.
        assert!(matches!(
            authenticate(&Method::POST, &h, Some(&expected)),
            Err(GatewayError::AdminTokenMissing)
        ));
        let h2 = headers(&[("cookie", &cookie), (CONSOLE_HEADER, "1")]);
        assert!(authenticate(&Method::POST, &h2, Some(&expected)).is_ok());
        let wrong = headers(&[(
            "cookie",
            &format!("{COOKIE}={}", hex(b"nope-nope-nope-nope")),
        )]);
        assert!(matches!(
            authenticate(&Method::GET, &wrong, Some(&expected)),
            Err(GatewayError::AdminUnauthorized)
        ));
        // The bearer header wins over the cookie, and the API off stays off.
        let bearer = headers(&[
            ("authorization", "Bearer wrong-token-xxxxxxx"),
            ("cookie", &cookie),
        ]);
        assert!(authenticate(&Method::GET, &bearer, Some(&expected)).is_err());
        assert!(matches!(
            authenticate(&Method::GET, &h, None),
            Err(GatewayError::AdminDisabled)
        ));
    }
}
