//! [`RequestCtx`]: what the gateway knows about one request as it moves through the phases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;

use crate::base::Endpoint;
use crate::base::protocols::{Echo, Protocol};
use crate::config::{Route, Runtime, Target};
use crate::services::Snapshot;
use crate::services::governance::Account;
use crate::services::observe::metrics;
use crate::services::observe::telemetry::RequestTelemetry;
use crate::services::rollout::Arm;

/// One request's state, filled in by the phases in order.
pub struct RequestCtx {
    pub endpoint: Endpoint,
    /// The API the client called (its body is translated to `endpoint`'s when not OpenAI's).
    pub protocol: Protocol,
    /// What the translated answer repeats of the client's request.
    pub echo: Echo,
    /// The client's body as sent (Responses, Messages), for a target that takes the
    /// protocol natively (`backends[].api`).
    pub original: Option<bytes::Bytes>,
    /// The 400 the request gets unless passed through (stored Responses state).
    pub stateful: Option<crate::base::GatewayError>,
    /// The answer came from a backend in the client's protocol: served untranslated.
    pub passed_through: bool,
    pub started: Instant,
    /// The config version (with its live upstreams) this request runs under, start to finish.
    pub snapshot: Arc<Snapshot>,
    pub route: Option<Arc<Route>>,
    /// The target chosen by `route`; after `attempt`, the last one tried.
    pub target: Option<Target>,
    /// The model name sent upstream.
    pub upstream_model: Option<Arc<str>>,
    /// Time spent waiting on the upstream (for the gateway-overhead metric).
    pub upstream_time: Duration,
    /// The `x-switchyard-attempts` value, once the attempt loop ran.
    pub attempts: Option<HeaderValue>,
    /// Caller, tags and reservations (phases `authenticate` and `admit`), settled into the
    /// ledger by `finish`.
    pub account: Account,
    /// The request's server span and access-log record.
    pub telemetry: RequestTelemetry,
    /// Which side of the route's rollout the request was sent to (`route`), if it was part
    /// of one.
    pub rollout_arm: Option<Arm>,
    /// Answered from the response cache.
    pub cache_hit: bool,
    /// The target passed over for its context window (phase `fit`), for the attempts trail.
    pub context_skipped: Option<Arc<str>>,
}

impl RequestCtx {
    pub fn new(snapshot: Arc<Snapshot>, endpoint: Endpoint, telemetry: RequestTelemetry) -> Self {
        RequestCtx {
            endpoint,
            protocol: Protocol::OpenAi,
            echo: Echo::default(),
            original: None,
            stateful: None,
            passed_through: false,
            started: Instant::now(),
            snapshot,
            route: None,
            target: None,
            upstream_model: None,
            upstream_time: Duration::ZERO,
            attempts: None,
            account: Account::default(),
            telemetry,
            rollout_arm: None,
            cache_hit: false,
            context_skipped: None,
        }
    }

    /// The path the client called (for logs and spans).
    pub fn client_path(&self) -> &'static str {
        self.protocol.path().unwrap_or(self.endpoint.path())
    }

    /// The config this request runs under.
    pub fn config(&self) -> &Runtime {
        &self.snapshot.config
    }

    /// The route's name for metrics and logs (`none` before routing).
    pub fn route_label(&self) -> Arc<str> {
        self.route
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_else(|| Arc::from(metrics::NONE))
    }

    /// The backend's name for metrics and logs (`none` before routing).
    pub fn backend_label(&self) -> Arc<str> {
        self.target
            .as_ref()
            .map(|t| t.backend.name.clone())
            .unwrap_or_else(|| Arc::from(metrics::NONE))
    }
}
