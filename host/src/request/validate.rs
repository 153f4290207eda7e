//! Phase `validate`: `validate` plugins judge each complete answer inside the attempt loop,
//! so a rejected answer moves the request on to the next fallback as a failed attempt
//! would, and a replacement is served in the answer's place.

use bytes::Bytes;

use super::attempt::{Validate, Verdict};
use crate::base::openai::RequestBody;
use crate::config::Target;
use crate::services::observe::telemetry;
use crate::services::plugins::{Pass, ValidateOutcome};

/// `validate` plugins as the attempt loop's answer check: a rejection moves the request to
/// the next fallback; a replacement is kept and served once the loop has its answer.
pub struct PluginValidator<'a> {
    pass: &'a Pass,
    client_model: String,
    replaced: std::sync::Mutex<Option<Bytes>>,
}

impl<'a> PluginValidator<'a> {
    pub fn new(pass: &'a Pass, request: &RequestBody) -> PluginValidator<'a> {
        PluginValidator {
            pass,
            client_model: request.model.to_string(),
            replaced: std::sync::Mutex::new(None),
        }
    }

    /// The answer a `validate` plugin put in place of the one the loop accepted, if any.
    pub fn replacement(self) -> Option<Bytes> {
        self.replaced.into_inner().ok().flatten()
    }
}

impl Validate for PluginValidator<'_> {
    /// One `validate` span per answer checked (under the request's span, the plugin calls
    /// under it), with the backend and the verdict.
    fn validate(&self, target: &Target, body: &Bytes) -> Verdict {
        let model = target.upstream_model(&self.client_model);
        let mut span = telemetry::span_under(self.pass.trace(), "validate");
        if span.is_recording() {
            span.set("switchyard.backend", &target.backend.name);
        }
        let outcome = self
            .pass
            .validate(&span.as_parent(), body, &target.backend.name, model);
        let (verdict, label) = match outcome {
            Ok(ValidateOutcome::Accept) => (Verdict::Accept, "accepted"),
            Ok(ValidateOutcome::Replace { body, plugin }) => {
                span.set("switchyard.validate.plugin", &plugin);
                if let Ok(mut r) = self.replaced.lock() {
                    *r = Some(body);
                }
                (Verdict::Accept, "replaced")
            }
            Ok(ValidateOutcome::Reject { plugin, reason }) => {
                span.set("switchyard.validate.plugin", &plugin);
                span.set("switchyard.validate.reason", &reason);
                let why = format!("plugin `{plugin}`: {reason}");
                (Verdict::Reject(why), "rejected")
            }
            // `on_error = "reject"`: a failing validator does not let the answer through.
            Err(e) => {
                span.fail(e.kind());
                (Verdict::Reject(e.to_string()), "failed")
            }
        };
        span.set("switchyard.validate.verdict", label);
        verdict
    }
}
