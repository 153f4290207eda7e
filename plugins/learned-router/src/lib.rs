//! `learned-router` (stage `classify`): route each request by the label a trained model
//! predicts for it.
//!
//! The model comes from `switchyard router train --data labeled.jsonl --out router.json`
//! (hashed word and character n-grams of the messages, lengths, tool and JSON flags; a
//! logistic regression). When the model is at least `threshold` sure of a label, the
//! request goes to that label's target; below it the plugin decides nothing and the route's
//! own targets answer.
//!
//! Config keys (`[plugins.config.learned-router]`):
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `model` | (required) | the model file's text; write `model = { from_file = "router.json" }` to have the gateway read the file (again on every reload) |
//! | `threshold` | `0.7` | the least probability of the predicted label that routes; below it the route's default answers |
//! | `targets` | `{}` | per label: `{ backend = "...", model = "..." }` (a target) or `{ route = "..." }` (a route); a label without an entry names a backend, with the client's model |
//!
//! Tags: `router:<label>` when it routes, `router:uncertain` below the threshold. Metrics
//! (`switchyard_plugin_counter_total{plugin="learned-router"}`): `predicted_<label>`,
//! `uncertain`; the histogram `confidence`.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::Value;
use switchyard_router_model::{Input, Model, features};
use switchyard_sdk::host::{Level, config, config_or, counter_add, histogram_record, log};
use switchyard_sdk::{
    BackendStatus, Caller, Classify, ContentPart, Decision, Request, ResponseFormat, Role, Target,
};

pub struct LearnedRouter;

/// Where a label sends the request.
#[derive(Debug, Clone, PartialEq)]
enum Destination {
    Target {
        backend: String,
        model: String,
    },
    Route(String),
    /// The label is a backend's name; the client's model name goes with it.
    Backend(String),
}

/// The model and the settings, read once per instance (config values are fixed for as long
/// as the plugin is loaded).
struct Router {
    model: Model,
    threshold: f32,
    destinations: Vec<Destination>,
    /// Per label: its counter (`predicted_<label>`) and tag (`router:<label>`), named once.
    counters: Vec<String>,
    tags: Vec<String>,
}

fn load() -> Result<Router, String> {
    let text = config("model").ok_or("config key `model` is missing")?;
    let model = Model::from_json(&text).map_err(|e| format!("config key `model`: {e}"))?;
    let threshold = config_or("threshold", 0.7f32);
    if !(0.0..=1.0).contains(&threshold) {
        return Err(format!(
            "config key `threshold` must be from 0 to 1, got {threshold}"
        ));
    }
    let targets: Value = match config("targets") {
        None => Value::Object(Default::default()),
        Some(t) => serde_json::from_str(&t)
            .map_err(|_| "config key `targets` must be a table of labels".to_string())?,
    };
    let destinations = model
        .labels
        .iter()
        .map(|label| match targets.get(label) {
            None => Ok(Destination::Backend(label.clone())),
            Some(t) => {
                let s = |k: &str| t.get(k).and_then(Value::as_str).map(str::to_string);
                match (s("backend"), s("model"), s("route")) {
                    (Some(backend), Some(model), None) => {
                        Ok(Destination::Target { backend, model })
                    }
                    (None, None, Some(route)) => Ok(Destination::Route(route)),
                    _ => Err(format!(
                        "config key `targets.{label}` must be {{ backend, model }} or {{ route }}"
                    )),
                }
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Router {
        counters: model
            .labels
            .iter()
            .map(|l| format!("predicted_{l}"))
            .collect(),
        tags: model.labels.iter().map(|l| format!("router:{l}")).collect(),
        model,
        threshold,
        destinations,
    })
}

thread_local! {
    static ROUTER: RefCell<Option<Rc<Router>>> = const { RefCell::new(None) };
}

/// This instance's router, loaded on first use. A broken config traps the call (after
/// logging why), so the gateway counts it and applies the plugin's `on_error`.
fn router() -> Rc<Router> {
    ROUTER.with(|r| {
        if let Some(router) = r.borrow().as_ref() {
            return router.clone();
        }
        let router = match load() {
            Ok(router) => Rc::new(router),
            Err(e) => {
                log(Level::Error, &e);
                panic!("{e}");
            }
        };
        *r.borrow_mut() = Some(router.clone());
        router
    })
}

/// The model's input, read from the typed request exactly as training reads a request body.
fn input(req: &Request) -> Input<'_> {
    let mut input = Input {
        messages: req.messages.len(),
        has_tools: !req.tools.is_empty(),
        wants_json: matches!(
            req.response_format,
            Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema(_))
        ),
        ..Input::default()
    };
    for m in &req.messages {
        for p in &m.content {
            if let ContentPart::Text(t) = p {
                input.texts.push(t);
            }
        }
        input.has_tools |= !m.tool_calls.is_empty() || m.role == Role::Tool;
    }
    if let Some(p) = &req.prompt {
        input.texts.push(p);
    }
    input
}

impl Classify for LearnedRouter {
    fn classify(req: Request, _who: Caller, _backends: Vec<BackendStatus>) -> Decision {
        let r = router();
        let p = r.model.predict(&features(&input(&req), r.model.dim));
        histogram_record("confidence", f64::from(p.confidence));
        let label = &r.model.labels[p.label];
        if p.confidence < r.threshold {
            counter_add("uncertain", 1);
            return Decision::none().tag("router:uncertain").because(&format!(
                "learned-router: {label} at {:.2}, below {:.2}",
                p.confidence, r.threshold
            ));
        }
        counter_add(&r.counters[p.label], 1);
        let mut d = match &r.destinations[p.label] {
            Destination::Target { backend, model } => Decision::to(backend, model),
            Destination::Route(route) => Decision {
                route: Some(route.clone()),
                ..Decision::none()
            },
            Destination::Backend(backend) => Decision {
                target: Some(Target {
                    backend: backend.clone(),
                    model: req.model.clone(),
                }),
                ..Decision::none()
            },
        };
        d.tags.push(r.tags[p.label].clone());
        d.because(&format!("learned-router: {label} at {:.2}", p.confidence))
    }
}

switchyard_sdk::export_classify!(LearnedRouter);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_router_model::{Example, TrainOptions, train};
    use switchyard_sdk::testing::*;

    fn model_json() -> String {
        let labels = vec!["local".to_string(), "premium".to_string()];
        let mk = |t: &str, label| Example {
            features: features(
                &Input {
                    texts: vec![t],
                    messages: 1,
                    ..Input::default()
                },
                512,
            ),
            label,
        };
        let mut data = Vec::new();
        for i in 0..30 {
            data.push(mk(&format!("where is my order {i}"), 0));
            data.push(mk(&format!("debug the webhook signature race {i}"), 1));
        }
        let refs: Vec<&Example> = data.iter().collect();
        let o = TrainOptions {
            dim: 512,
            ..TrainOptions::default()
        };
        train(&refs, &labels, &o).to_json()
    }

    fn ask(text: &str) -> Decision {
        LearnedRouter::classify(chat(&[(Role::User, text)]), caller(), vec![])
    }

    #[test]
    fn routes_by_the_predicted_label_to_its_target() {
        reset();
        set_config("model", &model_json());
        set_config(
            "targets",
            r#"{"local":{"backend":"local","model":"llama-3.1-8b"},"premium":{"route":"gpt-4o"}}"#,
        );
        let d = ask("where is my order please");
        assert_eq!(d.target.unwrap().model, "llama-3.1-8b");
        assert!(d.tags.contains(&"router:local".to_string()));
        let d = ask("debug the webhook signature race");
        assert_eq!(d.route.as_deref(), Some("gpt-4o"));
        assert_eq!(counter("predicted_premium"), 1);
    }

    #[test]
    fn below_the_threshold_the_route_decides() {
        reset();
        set_config("model", &model_json());
        set_config("threshold", "1.0");
        let d = ask("where is my order please");
        assert!(d.target.is_none() && d.route.is_none());
        assert_eq!(d.tags, vec!["router:uncertain".to_string()]);
    }

    #[test]
    fn a_label_without_a_target_names_a_backend() {
        reset();
        set_config("model", &model_json());
        let d = ask("where is my order please");
        let t = d.target.unwrap();
        assert_eq!((t.backend.as_str(), t.model.as_str()), ("local", "gpt-4o"));
    }
}
