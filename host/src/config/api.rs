//! `backends[].api`: which request API a backend speaks natively, so a client calling that
//! same API is passed through instead of translated to chat/completions.
//!
//! | value | the backend answers | passed through |
//! | --- | --- | --- |
//! | `"chat"` (default) | chat/completions, completions, embeddings | nothing: Responses and Messages requests are translated |
//! | `"responses"` (default for `api.openai.com`) | the Responses API as well as chat/completions | `POST /v1/responses` |
//! | `"anthropic"` | only Anthropic's Messages API | `POST /v1/messages` |
//!
//! A backend marked `"anthropic"` has no chat/completions to translate to, so only
//! Messages requests may be sent to it; the request path refuses anything else with a 400
//! naming the route and backend, and skips such a backend among a route's fallbacks.

use http::{HeaderMap, HeaderValue, header};

use super::Problem;
use super::backend::{Backend, BackendUrl};
use crate::base::protocols::Protocol;

/// The API a backend speaks natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    #[default]
    Chat,
    Responses,
    Anthropic,
}

/// The `anthropic-version` sent to an `api = "anthropic"` backend when the client named none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

impl Api {
    /// The config word for it.
    pub fn name(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Responses => "responses",
            Api::Anthropic => "anthropic",
        }
    }

    /// Whether a request in client protocol `p` goes to this backend as the client sent it.
    pub fn passes_through(self, p: Protocol) -> bool {
        matches!(
            (self, p),
            (Api::Responses, Protocol::Responses) | (Api::Anthropic, Protocol::Messages)
        )
    }

    /// Whether this backend can answer a request in client protocol `p` at all: natively, or
    /// translated to chat/completions (which an Anthropic-only backend does not serve).
    pub fn serves(self, p: Protocol) -> bool {
        self != Api::Anthropic || p == Protocol::Messages
    }
}

impl Backend {
    /// Put the backend's key on an upstream request in the header its API reads: Anthropic's
    /// `x-api-key` (with an `anthropic-version` unless one is there), else `Authorization`.
    pub fn authorize(&self, headers: &mut HeaderMap) {
        if let Some(key) = &self.x_api_key {
            headers.remove(header::AUTHORIZATION);
            headers.insert("x-api-key", key.clone());
            if !headers.contains_key("anthropic-version") {
                headers.insert(
                    "anthropic-version",
                    HeaderValue::from_static(ANTHROPIC_VERSION),
                );
            }
        } else if let Some(auth) = &self.auth {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
    }
}

/// `backends[i].api`, validated; unset, OpenAI's own API is detected by its URL.
pub(super) fn resolve(
    raw: Option<&str>,
    urls: &[BackendUrl],
    path: &str,
    problems: &mut Vec<Problem>,
) -> Api {
    match raw {
        Some("chat") => Api::Chat,
        Some("responses") => Api::Responses,
        Some("anthropic") => Api::Anthropic,
        Some(other) => {
            problems.push(Problem::new(
                format!("{path}.api"),
                format!("must be \"chat\", \"responses\" or \"anthropic\", got \"{other}\""),
            ));
            Api::Chat
        }
        None if !urls.is_empty()
            && urls
                .iter()
                .all(|u| u.peer.address.as_ref() == "api.openai.com") =>
        {
            Api::Responses
        }
        None => Api::Chat,
    }
}

/// The key as Anthropic's API takes it (`x-api-key: <key>`), from the backend's
/// `Authorization: Bearer <key>`.
pub(super) fn x_api_key(api: Api, auth: Option<&HeaderValue>) -> Option<HeaderValue> {
    if api != Api::Anthropic {
        return None;
    }
    let key = auth?.to_str().ok()?.strip_prefix("Bearer ")?;
    let mut h = HeaderValue::from_str(key).ok()?;
    h.set_sensitive(true);
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::backend::backend_url;

    fn of(raw: Option<&str>, url: &str) -> (Api, Vec<Problem>) {
        let mut problems = Vec::new();
        let urls = vec![backend_url(url).unwrap()];
        (resolve(raw, &urls, "backends[0]", &mut problems), problems)
    }

    #[test]
    fn openais_url_speaks_responses_unless_told_otherwise() {
        assert_eq!(of(None, "https://api.openai.com/v1").0, Api::Responses);
        assert_eq!(of(Some("chat"), "https://api.openai.com/v1").0, Api::Chat);
        assert_eq!(of(None, "http://10.0.0.5:9001/v1").0, Api::Chat);
        assert_eq!(
            of(Some("anthropic"), "https://api.anthropic.com/v1").0,
            Api::Anthropic
        );
        let (_, problems) = of(Some("messages"), "http://h/v1");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "backends[0].api");
        assert!(problems[0].message.contains("\"messages\""));
    }

    #[test]
    fn an_anthropic_backend_serves_only_messages() {
        assert!(Api::Anthropic.serves(Protocol::Messages));
        assert!(!Api::Anthropic.serves(Protocol::OpenAi));
        assert!(!Api::Anthropic.serves(Protocol::Responses));
        assert!(Api::Responses.passes_through(Protocol::Responses));
        assert!(!Api::Responses.passes_through(Protocol::Messages));
        assert!(Api::Chat.serves(Protocol::Responses));
    }
}
