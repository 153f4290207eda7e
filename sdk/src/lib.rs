//! `switchyard-sdk`: write Switchyard policies in Rust, build them as WebAssembly
//! components (`cargo build --target wasm32-wasip2`), drop the `.wasm` into `plugins/`.
//!
//! A policy implements one or more stages of the gateway's request path, each a trait:
//!
//! | stage | trait | export macro | runs |
//! | --- | --- | --- | --- |
//! | classify | [`Classify`] | [`export_classify!`] | before routing: may pick the route/target, add tags |
//! | adapt | [`Adapt`] | [`export_adapt!`] | after routing: may rewrite the request for the target |
//! | validate | [`Validate`] | [`export_validate!`] | on a complete answer: accept, reject, replace |
//! | chunks | `Chunks` | `export_chunks!` | on each piece of a streamed answer's text (contract `0.2`) |
//!
//! [`export_policy!`] exports all three from one type. The types ([`Request`], [`Message`],
//! [`Decision`], ...) are generated from `wit/plugin.wit`; [`host`] wraps what the gateway
//! offers (log, metrics, config, key-value store, per-request state); [`helpers`] has the reads most policies
//! need; [`testing`] lets you unit-test a policy natively, with `cargo test`, without Wasm.
//!
//! ```ignore
//! use switchyard_sdk::*;
//! struct Router;
//! impl Classify for Router {
//!     fn classify(req: Request, _who: Caller, _backends: Vec<BackendStatus>) -> Decision {
//!         let mut d = Decision::none();
//!         if helpers::estimate_tokens(&req) < 200 {
//!             d.target = Some(Target { backend: "local".into(), model: "llama-3.1-8b".into() });
//!         }
//!         d
//!     }
//! }
//! export_classify!(Router);
//! ```

/// Generated bindings, one module per world. The types live in `classifier` and are shared
/// by the others (`with`), so a `Request` is the same type whichever stage you implement.
///
/// By default a policy is built against the contract `switchyard:plugin@0.2.0`
/// (`wit/v0.2/plugin.wit`: per-request state and the `chunks` stage). The feature `wit-0-1`
/// builds it against `0.1.0` instead, for gateways that only know `0.1`.
#[doc(hidden)]
#[cfg(not(feature = "wit-0-1"))]
pub mod bindings {
    pub mod classifier {
        wit_bindgen::generate!({
            path: "../wit/v0.2",
            world: "classifier",
            pub_export_macro: true,
            export_macro_name: "export_classifier",
            default_bindings_module: "switchyard_sdk::bindings::classifier",
            generate_all,
        });
    }
    pub mod adapter {
        wit_bindgen::generate!({
            path: "../wit/v0.2",
            world: "adapter",
            pub_export_macro: true,
            export_macro_name: "export_adapter",
            default_bindings_module: "switchyard_sdk::bindings::adapter",
            with: {
                "switchyard:plugin/types@0.2.0": crate::bindings::classifier::switchyard::plugin::types,
                "switchyard:plugin/host@0.2.0": crate::bindings::classifier::switchyard::plugin::host,
            },
        });
    }
    pub mod validator {
        wit_bindgen::generate!({
            path: "../wit/v0.2",
            world: "validator",
            pub_export_macro: true,
            export_macro_name: "export_validator",
            default_bindings_module: "switchyard_sdk::bindings::validator",
            with: {
                "switchyard:plugin/types@0.2.0": crate::bindings::classifier::switchyard::plugin::types,
                "switchyard:plugin/host@0.2.0": crate::bindings::classifier::switchyard::plugin::host,
            },
        });
    }
    pub mod streamer {
        wit_bindgen::generate!({
            path: "../wit/v0.2",
            world: "streamer",
            pub_export_macro: true,
            export_macro_name: "export_streamer",
            default_bindings_module: "switchyard_sdk::bindings::streamer",
            with: {
                                "switchyard:plugin/host@0.2.0": crate::bindings::classifier::switchyard::plugin::host,
            },
        });
    }
}

#[doc(hidden)]
#[cfg(feature = "wit-0-1")]
pub mod bindings {
    pub mod classifier {
        wit_bindgen::generate!({
            path: "../wit",
            world: "classifier",
            pub_export_macro: true,
            export_macro_name: "export_classifier",
            default_bindings_module: "switchyard_sdk::bindings::classifier",
            generate_all,
        });
    }
    pub mod adapter {
        wit_bindgen::generate!({
            path: "../wit",
            world: "adapter",
            pub_export_macro: true,
            export_macro_name: "export_adapter",
            default_bindings_module: "switchyard_sdk::bindings::adapter",
            with: {
                "switchyard:plugin/types@0.1.0": crate::bindings::classifier::switchyard::plugin::types,
                "switchyard:plugin/host@0.1.0": crate::bindings::classifier::switchyard::plugin::host,
            },
        });
    }
    pub mod validator {
        wit_bindgen::generate!({
            path: "../wit",
            world: "validator",
            pub_export_macro: true,
            export_macro_name: "export_validator",
            default_bindings_module: "switchyard_sdk::bindings::validator",
            with: {
                "switchyard:plugin/types@0.1.0": crate::bindings::classifier::switchyard::plugin::types,
                "switchyard:plugin/host@0.1.0": crate::bindings::classifier::switchyard::plugin::host,
            },
        });
    }
}

pub mod helpers;
pub mod host;
pub mod testing;

pub use bindings::classifier::switchyard::plugin::types::{
    BackendStatus, Caller, ContentPart, Decision, Endpoint, Health, JsonSchema, Message, Price,
    Request, Response, ResponseFormat, Role, Sampling, Target, Tool, ToolCall, Verdict,
};

/// Stage `adapt`: rewrite the request for the chosen target.
pub use bindings::adapter::exports::switchyard::plugin::adapt::Guest as Adapt;
/// Stage `classify`: decide route, target and tags before routing.
pub use bindings::classifier::exports::switchyard::plugin::classify::Guest as Classify;
/// Stage `chunks` (contract `0.2`): rewrite a streamed answer's text piece by piece.
#[cfg(not(feature = "wit-0-1"))]
pub use bindings::streamer::exports::switchyard::plugin::chunks::Guest as Chunks;
/// Stage `validate`: accept, reject or replace a complete answer.
pub use bindings::validator::exports::switchyard::plugin::validate::Guest as Validate;

impl Decision {
    /// A decision that changes nothing.
    pub fn none() -> Decision {
        Decision {
            route: None,
            target: None,
            tags: Vec::new(),
            reason: None,
        }
    }

    /// Send the request to `backend` with `model`.
    pub fn to(backend: &str, model: &str) -> Decision {
        Decision {
            target: Some(Target {
                backend: backend.to_string(),
                model: model.to_string(),
            }),
            ..Decision::none()
        }
    }

    /// Add a tag.
    pub fn tag(mut self, tag: &str) -> Decision {
        self.tags.push(tag.to_string());
        self
    }

    /// Say why.
    pub fn because(mut self, reason: &str) -> Decision {
        self.reason = Some(reason.to_string());
        self
    }
}

impl Message {
    /// A message with one text part.
    pub fn text(role: Role, text: &str) -> Message {
        Message {
            role,
            content: vec![ContentPart::Text(text.to_string())],
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            extra: "{}".to_string(),
        }
    }

    /// The text parts of the content, joined by newlines.
    pub fn text_content(&self) -> String {
        let mut out = String::new();
        for p in &self.content {
            if let ContentPart::Text(t) = p {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(t);
            }
        }
        out
    }
}

/// Export a [`Classify`] implementation as this component's `classify` stage.
#[macro_export]
macro_rules! export_classify {
    ($t:ident) => {
        // Native builds (unit tests with `testing`) have no component to export from.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::classifier::export_classifier!($t with_types_in $crate::bindings::classifier);
    };
}

/// Export an [`Adapt`] implementation as this component's `adapt` stage.
#[macro_export]
macro_rules! export_adapt {
    ($t:ident) => {
        // Native builds (unit tests with `testing`) have no component to export from.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::adapter::export_adapter!($t with_types_in $crate::bindings::adapter);
    };
}

/// Export a [`Validate`] implementation as this component's `validate` stage.
#[macro_export]
macro_rules! export_validate {
    ($t:ident) => {
        // Native builds (unit tests with `testing`) have no component to export from.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::validator::export_validator!($t with_types_in $crate::bindings::validator);
    };
}

/// Export a [`Chunks`] implementation as this component's `chunks` stage (contract `0.2`).
#[macro_export]
macro_rules! export_chunks {
    ($t:ident) => {
        // Native builds (unit tests with `testing`) have no component to export from.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::streamer::export_streamer!($t with_types_in $crate::bindings::streamer);
    };
}

/// Export one type implementing all three stages.
#[macro_export]
macro_rules! export_policy {
    ($t:ident) => {
        $crate::export_classify!($t);
        $crate::export_adapt!($t);
        $crate::export_validate!($t);
    };
}
