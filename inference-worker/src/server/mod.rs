//! The OpenAI-compatible HTTP server (hyper 1 on tokio).
//!
//! Request path: route (here) → `parse` (validate every parameter, a bad one is a 400 naming
//! it; build the prompt, the chat template for `/v1/chat/completions`; tokenize) → `respond`
//! (context check, too long is a 400 `context_length_exceeded`; submit to the engine; relay
//! its events as one JSON response or as server-sent events). `metrics` renders `/metrics`.
//! While the model loads, health, metrics and 503s are answered from the load progress.

mod embed;
mod metrics;
mod parse;
mod respond;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::chat::ChatTemplate;
use crate::engine::Engine;
use crate::launch::LoadProgress;
use crate::trace::{RequestSpan, Tracer};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Everything a handler needs once the model is loaded.
pub struct AppState {
    pub engine: Engine,
    pub template: ChatTemplate,
    pub model_name: String,
    pub started: u64,
}

/// What the server answers from: the load progress, then the loaded model.
pub struct Shared {
    app: std::sync::OnceLock<Arc<AppState>>,
    pub load: Arc<LoadProgress>,
    /// Where request spans go (`--otlp-endpoint`), if anywhere.
    tracer: Option<Arc<Tracer>>,
}

impl Shared {
    /// A server whose model is still loading.
    pub fn loading(tracer: Option<Arc<Tracer>>) -> Shared {
        Shared {
            app: std::sync::OnceLock::new(),
            load: Arc::new(LoadProgress::default()),
            tracer,
        }
    }

    /// The model is loaded: serve it from now on.
    pub fn set_ready(&self, app: Arc<AppState>) {
        let _ = self.app.set(app);
        self.load.set_ready();
    }
}

/// An OpenAI-format error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    fn bad(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }
    fn response(&self) -> Response<Body> {
        json_response(
            self.status,
            &json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}),
        )
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n:04x}", now())
}

/// Serves until the process ends (while the model loads, health, metrics and 503s).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let sh = shared.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper::service::service_fn(move |req| {
                let sh = sh.clone();
                async move {
                    Ok::<_, Infallible>(match sh.app.get() {
                        Some(st) => handle(req, st.clone(), &sh).await,
                        None => loading(&req, &sh),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

/// Answers while the model loads.
fn loading(req: &Request<Incoming>, sh: &Shared) -> Response<Body> {
    let (stage, progress) = (sh.load.stage(), sh.load.progress());
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "loading", "stage": stage, "progress": progress}),
        ),
        (&Method::GET, "/metrics") => metrics::loading(sh),
        _ => {
            let mut r = ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "the model is still loading ({stage}: {:.0}% done); retry shortly",
                    progress * 100.0
                ),
                kind: "server_error",
                param: None,
                code: Some("model_loading"),
            }
            .response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
    }
}

/// Binds `addr`, with a clear message when that fails.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "cannot listen on {addr}: address already in use (another server on that port?)"
            )
        } else {
            format!("cannot listen on {addr}: {e}")
        }
    })
}

async fn handle(req: Request<Incoming>, st: Arc<AppState>, sh: &Shared) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/metrics") => metrics::serving(&st, sh),
        (&Method::GET, "/v1/models") => json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [{
                "id": st.model_name, "object": "model", "created": st.started,
                "owned_by": "switchyard", "max_model_len": st.engine.n_ctx,
            }]}),
        ),
        (&Method::POST, "/tokenize") => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return ApiError::bad("body", format!("cannot read body: {e}")).response();
                }
            };
            match parse::tokenize(&body, &st) {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => e.response(),
            }
        }
        (&Method::POST, "/v1/embeddings") => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return ApiError::bad("body", format!("cannot read body: {e}")).response();
                }
            };
            match embed::embeddings(&body, &st).await {
                Ok(r) => r,
                Err(e) => e.response(),
            }
        }
        (&Method::POST, "/v1/chat/completions") | (&Method::POST, "/v1/completions") => {
            let chat = path.ends_with("chat/completions");
            let mut span = match &sh.tracer {
                Some(t) => t.request(
                    req.headers(),
                    if chat { "chat" } else { "text_completion" },
                    &st.model_name,
                ),
                None => RequestSpan::default(),
            };
            span.set("http.request.method", "POST");
            span.set(
                "http.route",
                if chat {
                    "/v1/chat/completions"
                } else {
                    "/v1/completions"
                },
            );
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    let e = ApiError::bad("body", format!("cannot read body: {e}"));
                    span.fail(e.kind, e.status.as_u16());
                    return e.response();
                }
            };
            match respond::completion(&body, chat, &st, span).await {
                Ok(r) => r,
                Err((e, mut span)) => {
                    span.fail(e.kind, e.status.as_u16());
                    e.response()
                }
            }
        }
        _ => ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no route for {} {path}", req.method()),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
        }
        .response(),
    }
}
