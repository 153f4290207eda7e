//! The gateway's one error type and its single mapping to the wire.
//!
//! Every failure on the request path becomes a `GatewayError`. `GatewayError::status` and
//! `GatewayError::to_body` are the only places that decide what a client sees: OpenAI's
//! error shape `{"error": {"message", "type", "param", "code"}}` with the matching HTTP
//! status, so OpenAI SDKs raise the same exception classes they would against OpenAI.
//! Messages name what is wrong and where; they never contain secrets (API keys are never
//! formatted into an error, and upstream bodies are truncated).

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

/// What went wrong while handling one request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("request body is not valid JSON: {detail} (line {line}, column {column})")]
    BadJson {
        detail: String,
        line: usize,
        column: usize,
    },
    #[error("request body must be a JSON object")]
    NotAnObject,
    #[error("missing required parameter: '{param}'")]
    MissingParam { param: &'static str },
    #[error("invalid type for '{param}': expected {expected}")]
    InvalidParam {
        param: &'static str,
        expected: &'static str,
    },
    /// A top-level member named twice: the gateway and the upstream could read different
    /// values (JSON parsers disagree on which one wins), so neither is trusted.
    #[error("request body has the top-level key '{0}' more than once; send each member once")]
    DuplicateKey(String),
    #[error("'{param}' is longer than the limit of {max} bytes")]
    ParamTooLong { param: &'static str, max: usize },
    /// A value of the right type that is out of range or blank (admin API inputs).
    #[error("invalid value for '{param}': {reason}")]
    InvalidValue { param: &'static str, reason: String },
    /// A member of a translated protocol (Responses, Anthropic Messages) the gateway cannot
    /// carry to the chosen target; `param` is its path in the client's body.
    #[error("'{param}': {reason}")]
    Unsupported { param: String, reason: String },
    /// The prompt and the completion asked for do not fit the target's context window, and
    /// the route has no `context_fallback` that they fit.
    #[error(
        "This model's maximum context length is {window} tokens. However, you requested {requested} tokens ({prompt} in the messages, {completion} in the completion). Please reduce the length of the messages or completion."
    )]
    ContextLengthExceeded {
        window: u64,
        requested: u64,
        prompt: u64,
        completion: u64,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("failed to read the request body: {0}")]
    BodyRead(String),
    #[error(
        "the request body did not arrive within {secs:.1}s (the server's body_read_timeout_ms); send the whole body promptly"
    )]
    BodyTimeout { secs: f64 },
    #[error(
        "The model `{0}` does not exist or is not routed by this gateway (GET /v1/models lists the models it serves)"
    )]
    UnknownModel(String),
    #[error("Unknown request URL: {method} {path}")]
    NotFound { method: String, path: String },
    #[error("Method {method} is not allowed for {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("backend `{backend}` could not be reached: {detail}")]
    UpstreamConnect { backend: String, detail: String },
    #[error("backend `{backend}` did not answer within {secs:.1}s ({phase})")]
    UpstreamTimeout {
        backend: String,
        phase: &'static str,
        secs: f64,
    },
    #[error("backend `{backend}` answered HTTP {status}: {snippet}")]
    UpstreamStatus {
        backend: String,
        status: u16,
        snippet: String,
    },
    /// The upstream answered with an OpenAI-shaped error of its own: relayed as it came.
    #[error("backend `{backend}` answered HTTP {status} with an error")]
    UpstreamError {
        backend: String,
        status: StatusCode,
        body: Bytes,
        retry_after: Option<HeaderValue>,
    },
    #[error("backend `{backend}` broke off the exchange: {detail}")]
    UpstreamBroken { backend: String, detail: String },
    #[error("backend `{backend}` sent an invalid response: {detail}")]
    UpstreamGarbage { backend: String, detail: String },
    #[error(
        "every URL of backend `{backend}` is at its limit of {max} requests in flight with {queue} waiting; try again shortly"
    )]
    Saturated {
        backend: String,
        max: usize,
        queue: usize,
    },
    #[error(
        "backend `{backend}` is failing and its circuit breaker is open; no fallback could answer"
    )]
    CircuitOpen { backend: String },
    #[error("the answer from backend `{backend}` was rejected by validation: {reason}")]
    AnswerRejected { backend: String, reason: String },
    #[error(
        "this caller may not pin a target on route `{route}` (x-switchyard-target needs a team listed in the route's pin_teams)"
    )]
    PinNotAllowed { route: String },
    #[error("x-switchyard-target names no backend \"{0}\"")]
    PinUnknownBackend(String),
    /// A plugin call failed and `[plugins] on_error = "reject"`.
    #[error("plugin `{plugin}` failed at stage {stage} ({detail})")]
    PluginFailed {
        plugin: String,
        stage: &'static str,
        detail: String,
    },
    /// A `validate` plugin rejected the answer and no fallback served one.
    #[error("plugin `{plugin}` rejected the answer: {reason}")]
    PluginRejected { plugin: String, reason: String },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error(
        "You didn't provide an API key. Send your Switchyard key as 'Authorization: Bearer sk-sy-...'"
    )]
    AuthMissing,
    #[error(
        "The Authorization header is malformed: expected 'Bearer sk-sy-' followed by 48 hex digits"
    )]
    AuthMalformed,
    #[error("Incorrect API key provided: this key is not known to this gateway")]
    AuthUnknown,
    #[error("The API key {key_id} has been revoked")]
    AuthRevoked { key_id: String },
    #[error(
        "the admin API is off: set [admin] token_env to the name of an environment variable holding a token of at least 16 characters"
    )]
    AdminDisabled,
    #[error(
        "the admin API needs 'Authorization: Bearer <token>', with the token from the environment variable named by [admin] token_env"
    )]
    AdminTokenMissing,
    #[error("Incorrect admin token")]
    AdminUnauthorized,
    #[error(
        "the admin API answers only clients on this machine here; set [admin] listen to serve it on an address of its own"
    )]
    AdminNotLocal,
    #[error("too many failed admin tokens from this address; retry after {retry_after_secs}s")]
    AdminThrottled { retry_after_secs: u64 },
    #[error(
        "Rate limit reached for {scope}: {limit} {what} per minute, this request needs {requested}. Retry after {retry_after_secs}s"
    )]
    RateLimited {
        scope: String,
        what: &'static str,
        limit: u64,
        requested: u64,
        retry_after_secs: u64,
    },
    #[error(
        "Budget exceeded for {scope}: the {period} budget of ${budget_usd:.2} is spent (or this request would exceed it)"
    )]
    BudgetExceeded {
        scope: String,
        period: &'static str,
        budget_usd: f64,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    LimitsUnavailable(String),
    /// `POST /v1/feedback` names a request that is not the caller's (or does not exist):
    /// the same answer either way, so ids of other callers' requests cannot be probed.
    #[error(
        "no request `{0}` of yours: feedback names the x-switchyard-request-id of one of your own requests"
    )]
    UnknownRequestId(String),
    /// An admin action on a rollout that does not exist or cannot take it.
    #[error("{0}")]
    RolloutNotFound(String),
    #[error("{0}")]
    RolloutConflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    /// The HTTP status a client sees for this error.
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            BadJson { .. }
            | NotAnObject
            | MissingParam { .. }
            | InvalidParam { .. }
            | DuplicateKey(_)
            | ParamTooLong { .. }
            | InvalidValue { .. }
            | Unsupported { .. }
            | ContextLengthExceeded { .. } => StatusCode::BAD_REQUEST,
            BodyRead(_) => StatusCode::BAD_REQUEST,
            BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            UnknownModel(_) | NotFound { .. } | UnknownRequestId(_) | RolloutNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            RolloutConflict(_) => StatusCode::CONFLICT,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            UpstreamConnect { .. }
            | UpstreamBroken { .. }
            | UpstreamStatus { .. }
            | UpstreamGarbage { .. } => StatusCode::BAD_GATEWAY,
            UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError { status, .. } => *status,
            Saturated { .. } | CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AnswerRejected { .. } => StatusCode::BAD_GATEWAY,
            PinNotAllowed { .. } => StatusCode::FORBIDDEN,
            PinUnknownBackend(_) => StatusCode::BAD_REQUEST,
            ShuttingDown | LimitsUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AuthMissing
            | AuthMalformed
            | AuthUnknown
            | AuthRevoked { .. }
            | AdminTokenMissing
            | AdminUnauthorized => StatusCode::UNAUTHORIZED,
            AdminDisabled | AdminNotLocal => StatusCode::FORBIDDEN,
            RateLimited { .. } | BudgetExceeded { .. } | AdminThrottled { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            PluginFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            PluginRejected { .. } => StatusCode::BAD_GATEWAY,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type` for this error.
    fn error_type(&self) -> &'static str {
        use GatewayError::*;
        match self {
            BadJson { .. }
            | NotAnObject
            | MissingParam { .. }
            | InvalidParam { .. }
            | DuplicateKey(_)
            | ParamTooLong { .. }
            | InvalidValue { .. }
            | Unsupported { .. }
            | ContextLengthExceeded { .. }
            | BodyTooLarge { .. }
            | BodyRead(_)
            | BodyTimeout { .. }
            | UnknownModel(_)
            | NotFound { .. }
            | MethodNotAllowed { .. }
            | UnknownRequestId(_)
            | RolloutNotFound(_)
            | RolloutConflict(_)
            | PinUnknownBackend(_) => "invalid_request_error",
            PinNotAllowed { .. } | AdminDisabled | AdminNotLocal => "permission_error",
            AnswerRejected { .. } => "upstream_error",
            Saturated { .. } | CircuitOpen { .. } => "server_error",
            UpstreamConnect { .. }
            | UpstreamBroken { .. }
            | UpstreamTimeout { .. }
            | UpstreamStatus { .. }
            | UpstreamGarbage { .. }
            | UpstreamError { .. } => "upstream_error",
            ShuttingDown | Internal(_) | LimitsUnavailable(_) => "server_error",
            AuthMissing
            | AuthMalformed
            | AuthUnknown
            | AuthRevoked { .. }
            | AdminTokenMissing
            | AdminUnauthorized => "invalid_request_error",
            AdminThrottled { .. } => "requests",
            RateLimited { what, .. } => what,
            BudgetExceeded { .. } => "insufficient_quota",
            PluginRejected { .. } => "upstream_error",
            PluginFailed { .. } => "server_error",
        }
    }

    /// OpenAI's `error.code` for this error, where one applies.
    fn code(&self) -> Option<&'static str> {
        use GatewayError::*;
        Some(match self {
            BadJson { .. } | NotAnObject => "invalid_json",
            MissingParam { .. } => "missing_required_parameter",
            InvalidParam { .. } => "invalid_type",
            DuplicateKey(_) => "duplicate_key",
            ParamTooLong { .. } => "string_above_max_length",
            InvalidValue { .. } => "invalid_value",
            Unsupported { .. } => "unsupported_parameter",
            ContextLengthExceeded { .. } => "context_length_exceeded",
            BodyTooLarge { .. } => "request_too_large",
            BodyTimeout { .. } => "request_timeout",
            UnknownModel(_) => "model_not_found",
            NotFound { .. } => "unknown_url",
            UnknownRequestId(_) => "request_not_found",
            RolloutNotFound(_) => "rollout_not_found",
            RolloutConflict(_) => "rollout_state",
            UpstreamConnect { .. } => "upstream_unreachable",
            UpstreamBroken { .. } => "upstream_connection_broken",
            UpstreamTimeout { .. } => "upstream_timeout",
            UpstreamStatus { .. } => "upstream_http_error",
            UpstreamGarbage { .. } => "upstream_invalid_response",
            Saturated { .. } => "backend_saturated",
            CircuitOpen { .. } => "circuit_open",
            AnswerRejected { .. } => "answer_rejected",
            PinNotAllowed { .. } => "pin_not_allowed",
            PinUnknownBackend(_) => "unknown_backend",
            ShuttingDown => "shutting_down",
            AuthMissing => "missing_api_key",
            AuthMalformed | AuthUnknown => "invalid_api_key",
            AuthRevoked { .. } => "revoked_api_key",
            AdminDisabled => "admin_disabled",
            AdminNotLocal => "admin_not_local",
            AdminTokenMissing => "missing_admin_token",
            AdminUnauthorized => "invalid_admin_token",
            AdminThrottled { .. } => "admin_throttled",
            RateLimited { .. } => "rate_limit_exceeded",
            BudgetExceeded { .. } => "budget_exceeded",
            LimitsUnavailable(_) => "limits_unavailable",
            PluginFailed { .. } => "plugin_failed",
            PluginRejected { .. } => "answer_rejected",
            _ => return None,
        })
    }

    /// OpenAI's `error.param`: the request field at fault, where one is.
    fn param(&self) -> Option<&str> {
        use GatewayError::*;
        match self {
            MissingParam { param }
            | InvalidParam { param, .. }
            | ParamTooLong { param, .. }
            | InvalidValue { param, .. } => Some(param),
            DuplicateKey(key) | Unsupported { param: key, .. } => Some(key),
            UnknownModel(_) => Some("model"),
            UnknownRequestId(_) => Some("request_id"),
            ContextLengthExceeded { .. } => Some("messages"),
            _ => None,
        }
    }

    /// A short label for metrics and logs (`error.type` in traces).
    pub fn kind(&self) -> &'static str {
        use GatewayError::*;
        match self {
            BadJson { .. } | NotAnObject => "bad_json",
            MissingParam { .. }
            | InvalidParam { .. }
            | DuplicateKey(_)
            | ParamTooLong { .. }
            | InvalidValue { .. }
            | Unsupported { .. } => "bad_request",
            ContextLengthExceeded { .. } => "context_length_exceeded",
            BodyTooLarge { .. } => "body_too_large",
            BodyRead(_) => "body_read",
            BodyTimeout { .. } => "body_timeout",
            UnknownModel(_) => "unknown_model",
            NotFound { .. } | MethodNotAllowed { .. } | UnknownRequestId(_) => "not_found",
            RolloutNotFound(_) | RolloutConflict(_) => "rollout",
            UpstreamConnect { .. } => "upstream_connect",
            UpstreamBroken { .. } => "upstream_broken",
            UpstreamTimeout { .. } => "upstream_timeout",
            UpstreamStatus { .. } | UpstreamError { .. } => "upstream_status",
            UpstreamGarbage { .. } => "upstream_garbage",
            Saturated { .. } => "saturated",
            CircuitOpen { .. } => "circuit_open",
            AnswerRejected { .. } => "answer_rejected",
            PinNotAllowed { .. } | PinUnknownBackend(_) => "bad_pin",
            ShuttingDown => "shutting_down",
            PluginFailed { .. } => "plugin_failed",
            PluginRejected { .. } => "answer_rejected",
            Internal(_) => "internal",
            AuthMissing | AuthMalformed | AuthUnknown | AuthRevoked { .. } => "unauthorized",
            AdminDisabled | AdminTokenMissing | AdminUnauthorized | AdminNotLocal => {
                "admin_unauthorized"
            }
            AdminThrottled { .. } => "admin_throttled",
            RateLimited { .. } => "rate_limited",
            BudgetExceeded { .. } => "budget_exceeded",
            LimitsUnavailable(_) => "limits_unavailable",
        }
    }

    /// True when another target might succeed where this one failed (fallback material).
    pub fn is_upstream_failure(&self) -> bool {
        use GatewayError::*;
        match self {
            UpstreamConnect { .. }
            | UpstreamBroken { .. }
            | UpstreamTimeout { .. }
            | UpstreamStatus { .. }
            | UpstreamGarbage { .. }
            | AnswerRejected { .. } => true,
            UpstreamError { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// The error body as OpenAI shapes it.
    pub fn to_body(&self) -> Bytes {
        if let GatewayError::UpstreamError { body, .. } = self {
            return body.clone();
        }
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.error_type(),
                "param": self.param(),
                "code": self.code(),
            }
        });
        Bytes::from(body.to_string())
    }

    /// The complete HTTP response for this error.
    pub fn to_response<B>(&self) -> http::Response<B>
    where
        B: From<Bytes>,
    {
        let mut resp = http::Response::new(B::from(self.to_body()));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let GatewayError::UpstreamError {
            retry_after: Some(v),
            ..
        } = self
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v.clone());
        }
        if let GatewayError::RateLimited {
            retry_after_secs, ..
        }
        | GatewayError::BudgetExceeded {
            retry_after_secs, ..
        }
        | GatewayError::AdminThrottled { retry_after_secs } = self
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        resp
    }

    /// The error as one SSE event, for failures after a stream has started: the client's
    /// SDK raises it as an API error instead of seeing a silently truncated stream.
    pub fn to_sse_event(&self) -> Bytes {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.to_body());
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

/// Shorten an upstream body for an error message: at most `max` bytes, valid UTF-8.
pub fn snippet(body: &[u8], max: usize) -> String {
    let cut = body.len().min(max);
    let mut s = String::from_utf8_lossy(&body[..cut]).into_owned();
    if body.len() > max {
        s.push('…');
    }
    s.replace(['\n', '\r'], " ")
}

/// An error with its chain of sources, each said once: what hyper and rustls errors need to
/// be understood ("connection error: tls handshake: invalid peer certificate").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = GatewayError::MissingParam { param: "messages" };
        let v: serde_json::Value = serde_json::from_slice(&e.to_body()).unwrap();
        assert_eq!(v["error"]["param"], "messages");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "missing_required_parameter");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn unknown_model_is_404_model_not_found() {
        let e = GatewayError::UnknownModel("gpt-9".into());
        let v: serde_json::Value = serde_json::from_slice(&e.to_body()).unwrap();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(v["error"]["code"], "model_not_found");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
    }

    #[test]
    fn snippet_truncates_on_char_boundary_safely() {
        let s = snippet("héllo\nworld".as_bytes(), 3);
        assert!(s.ends_with('…'));
        assert!(!s.contains('\n'));
    }
}
