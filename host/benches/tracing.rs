//! Tracing benchmark: what a traced request's spans cost on the thread that serves it.
//!
//! ```text
//! cargo bench -p switchyard --bench tracing [-- --iterations 200000] [-- --off]
//! ```
//!
//! Runs, in a loop on one thread, the span work the proxy does for a plain chat request: the
//! server span from the client's headers, the routing span, the request's GenAI parameters,
//! the attempt's CLIENT span with its `traceparent` on the upstream headers, the answer's
//! facts on it, and the server span's end; the spans go to the OTLP export queue (encoded on
//! this thread, as in the gateway) and from there to a collector that is not listening, so
//! the export thread does no network work. Prints ns per request, median over rounds. With
//! `--off` the same code runs without tracing (metrics still on), the baseline to subtract.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use switchyard::base::Endpoint;
use switchyard::base::openai::{RequestBody, ResponseProbe};
use switchyard::config::{LogFormat, Peer, TelemetrySettings};
use switchyard::services::observe::metrics::Metrics;
use switchyard::services::observe::telemetry::{
    self, AttemptModel, AttemptSpan, RequestTelemetry, Tracer,
};

const REQUEST: &str = r#"{"model":"gpt-4o","max_tokens":64,"temperature":0.3,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"What is the capital of France?"}]}"#;
const ANSWER: &str = r#"{"id":"chatcmpl-mock","object":"chat.completion","created":1,"model":"llama-3.1-8b","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}],"usage":{"prompt_tokens":29,"completion_tokens":5,"total_tokens":34}}"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iterations: usize = args
        .iter()
        .position(|a| a == "--iterations")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let off = args.iter().any(|a| a == "--off");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let metrics = Arc::new(Metrics::default());
    let _guard = rt.enter();
    let tracer = if off {
        Tracer::off()
    } else {
        let settings = TelemetrySettings {
            // Nothing listens there: exports fail fast and are counted, off this thread.
            otlp_endpoint: Some("http://127.0.0.1:9".into()),
            otlp_protocol: "grpc".into(),
            sample_ratio: 1.0,
            capture_content: false,
            log_format: LogFormat::parse("text").expect("log format"),
        };
        telemetry::init(Some(&settings), metrics.clone()).expect("tracing")
    };

    let body = RequestBody::parse(
        Bytes::from_static(REQUEST.as_bytes()),
        Endpoint::ChatCompletions,
    )
    .expect("request");
    let answer = Bytes::from_static(ANSWER.as_bytes());
    let mut client_headers = HeaderMap::new();
    client_headers.insert("content-type", "application/json".parse().expect("header"));
    let route: Arc<str> = "gpt-4o".into();
    let backend: Arc<str> = "mock".into();
    let model: Arc<str> = "llama-3.1-8b".into();
    let method = http::Method::POST;
    let peer = Peer::of("http://127.0.0.1:8080/v1");

    let one = || {
        let mut t =
            RequestTelemetry::start(&tracer, &method, "/v1/chat/completions", &client_headers);
        telemetry::routing_span(
            &t,
            &route,
            &backend,
            Some(&model),
            std::time::SystemTime::now(),
        )
        .end();
        let params = telemetry::request_params(&t, &body, Endpoint::ChatCompletions);
        let attempt = AttemptSpan::start(
            &t,
            Endpoint::ChatCompletions,
            &backend,
            &peer,
            AttemptModel {
                sent: &model,
                metric_label: model.clone(),
            },
            params,
        );
        let mut upstream = HeaderMap::new();
        attempt.inject(&mut upstream);
        let probe = ResponseProbe::read(&answer).expect("answer");
        let facts = telemetry::answer_facts(&t, probe, &answer);
        attempt.succeeded(&metrics, facts);
        t.set_cost(0.0);
        t.finish_span(200, &route, &backend, None);
        std::hint::black_box(upstream);
    };

    // Warm up, then rounds of a fixed size; the median round is the figure.
    for _ in 0..iterations / 10 {
        one();
    }
    let rounds = 20;
    let per_round = (iterations / rounds).max(1);
    let mut ns: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_round {
                one();
            }
            start.elapsed().as_nanos() as f64 / per_round as f64
        })
        .collect();
    ns.sort_by(f64::total_cmp);
    println!(
        "span work per request ({}): median {:.0} ns, best {:.0} ns ({} rounds of {per_round})",
        if off {
            "tracing off"
        } else {
            "traced, sampling 1.0"
        },
        ns[rounds / 2],
        ns[0],
        rounds
    );
}
