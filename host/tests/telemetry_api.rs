//! The span API other phases call (auth, plugins, shadow, fallback attempts), checked with
//! an in-memory span processor.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
use switchyard::base::Endpoint;
use switchyard::base::openai::Usage;
use switchyard::services::observe::metrics::Metrics;
use switchyard::services::observe::telemetry::{
    self, AnswerFacts, AttemptSpan, RequestParams, RequestTelemetry,
};

#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanProcessor for Collect {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}
    fn on_end(&self, span: SpanData) {
        self.0.lock().unwrap().push(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name}"))
}

#[test]
fn the_span_api_builds_one_tree_per_request() {
    let collected = Collect::default();
    let tracer = telemetry::init_with_processor(collected.clone(), 1.0, false);

    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let mut t = RequestTelemetry::start(&tracer, &Method::POST, "/v1/chat/completions", &headers);
    assert!(t.is_tracing());
    assert_eq!(
        t.trace_id().as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    t.set_principal(Arc::from("key_7"), Some(Arc::from("search")));

    telemetry::child_span(&t, "auth").end();
    let mut plugin = telemetry::plugin_span(&t.parent(), "pii-redact", "0a1b2c3d", "adapt");
    plugin.set("switchyard.plugin.outcome", "rejected");
    plugin.fail("rejected");
    plugin.end();
    telemetry::linked_span(&t.parent(), "shadow chat llama").end();

    let backend: Arc<str> = Arc::from("local");
    let model: Arc<str> = Arc::from("llama-3.1-8b");
    let attempt = AttemptSpan::start(
        &t,
        Endpoint::ChatCompletions,
        &backend,
        &switchyard::config::Peer::of("http://10.0.0.5:9001/v1"),
        switchyard::services::observe::telemetry::AttemptModel {
            sent: &model,
            metric_label: model.clone(),
        },
        RequestParams {
            max_tokens: Some(5),
            temperature: Some(0.0),
            ..RequestParams::default()
        },
    );
    let mut upstream_headers = HeaderMap::new();
    attempt.inject(&mut upstream_headers);
    let metrics = Metrics::default();
    attempt.succeeded(
        &metrics,
        AnswerFacts {
            response_model: Some("llama-3.1-8b-q4".into()),
            finish_reasons: vec!["length".into()],
            usage: Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 5,
                total_tokens: 17,
            }),
            ..AnswerFacts::default()
        },
    );
    t.finish_span(200, &Arc::from("gpt-4o"), &Arc::from("local"), None);

    let spans = collected.0.lock().unwrap().clone();
    let server = named(&spans, "POST /v1/chat/completions");
    assert_eq!(server.span_kind, SpanKind::Server);
    assert_eq!(
        server.parent_span_id.to_string(),
        "00f067aa0ba902b7",
        "continues the client's trace"
    );
    assert_eq!(
        attr(server, "switchyard.team"),
        Some(&Value::from("search"))
    );
    let trace = server.span_context.trace_id();
    let server_id = server.span_context.span_id();

    let auth = named(&spans, "auth");
    assert_eq!(auth.parent_span_id, server_id);
    assert_eq!(auth.span_context.trace_id(), trace);

    let plugin = named(&spans, "plugin pii-redact");
    assert_eq!(plugin.parent_span_id, server_id);
    assert_eq!(
        attr(plugin, "switchyard.plugin.stage"),
        Some(&Value::from("adapt"))
    );
    assert_eq!(attr(plugin, "error.type"), Some(&Value::from("rejected")));
    assert!(matches!(plugin.status, Status::Error { .. }));

    // The shadow span is a separate trace, linked to the request's span.
    let shadow = named(&spans, "shadow chat llama");
    assert_ne!(shadow.span_context.trace_id(), trace);
    let links: Vec<_> = shadow.links.iter().collect();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].span_context.span_id(), server_id);

    let chat = named(&spans, "chat llama-3.1-8b");
    assert_eq!(chat.span_kind, SpanKind::Client);
    assert_eq!(chat.parent_span_id, server_id);
    assert_eq!(attr(chat, "server.address"), Some(&Value::from("10.0.0.5")));
    assert_eq!(attr(chat, "server.port"), Some(&Value::I64(9001)));
    assert_eq!(
        attr(chat, "gen_ai.provider.name"),
        Some(&Value::from("local"))
    );
    assert_eq!(
        attr(chat, "gen_ai.request.max_tokens"),
        Some(&Value::I64(5))
    );
    assert_eq!(
        attr(chat, "gen_ai.response.model"),
        Some(&Value::from("llama-3.1-8b-q4"))
    );
    assert_eq!(
        attr(chat, "gen_ai.usage.output_tokens"),
        Some(&Value::I64(5))
    );
    let tp = upstream_headers["traceparent"].to_str().unwrap();
    assert_eq!(
        tp,
        format!("00-{}-{}-01", trace, chat.span_context.span_id()),
        "the upstream continues from the attempt span"
    );

    // The attempt fed the GenAI metrics.
    let text = metrics.render();
    assert!(text.contains("gen_ai_client_token_usage_sum{gen_ai_operation_name=\"chat\",gen_ai_request_model=\"llama-3.1-8b\",backend=\"local\",gen_ai_token_type=\"output\"} 5"), "{text}");
}
