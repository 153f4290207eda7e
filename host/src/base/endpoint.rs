//! The endpoints the gateway serves, spelled once.
//!
//! [`Endpoint`] is the OpenAI API a proxied request is for; it also indexes a backend URL's
//! upstream URIs and names the request's server span and access-log path. The paths of the
//! gateway's own endpoints are the constants below.

/// `GET /v1/models`: the models the gateway routes.
pub const MODELS: &str = "/v1/models";
/// `GET /healthz`: the process is up.
pub const HEALTHZ: &str = "/healthz";
/// `GET /readyz`: config and plugins are loaded and the listener is up.
pub const READYZ: &str = "/readyz";
/// `GET /metrics`: Prometheus text format.
pub const METRICS: &str = "/metrics";
/// Caller feedback on an answer (`app::feedback`).
pub const FEEDBACK: &str = "/v1/feedback";
/// Prefix of the admin API.
pub const ADMIN_PREFIX: &str = "/admin/";

/// Which OpenAI endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
    ];

    /// The endpoint a request path names, if it is one the gateway proxies.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }

    /// The path clients call, e.g. `/v1/chat/completions`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }

    /// The path below the API base (`/v1`), as appended to a backend's base URL.
    pub fn suffix(self) -> &'static str {
        &self.path()["/v1".len()..]
    }

    /// The GenAI operation name (`chat`, `text_completion`, `embeddings`).
    pub fn operation(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat",
            Endpoint::Completions => "text_completion",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_suffixes_agree() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(e.path()), Some(e));
            assert_eq!(format!("/v1{}", e.suffix()), e.path());
        }
        assert_eq!(Endpoint::ChatCompletions.suffix(), "/chat/completions");
        assert_eq!(Endpoint::from_path(MODELS), None);
    }
}
