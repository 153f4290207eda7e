//! `[state]`, validated: the embedded store's file and the optional Redis shared by replicas.

use std::path::PathBuf;

use super::Problem;
use super::schema;

/// Default `[state] path`.
pub const DEFAULT_STORE: &str = "switchyard.db";

/// `[state]`, checked.
#[derive(Debug, Clone)]
pub struct StateSettings {
    pub path: PathBuf,
    pub redis: Option<String>,
}

impl StateSettings {
    /// The store file of a config: `[state] path`, else `switchyard.db` in the working folder.
    pub fn store_path(state: Option<&StateSettings>) -> PathBuf {
        state
            .map(|s| s.path.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE))
    }
}

pub(super) fn validate_state(
    s: &schema::StateSection,
    problems: &mut Vec<Problem>,
) -> StateSettings {
    let path = s
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE));
    if path.as_os_str().is_empty() {
        problems.push(Problem::new("state.path", "must not be empty"));
    }
    if let Some(r) = &s.redis
        && !(r.starts_with("redis://") || r.starts_with("rediss://") || r.starts_with("unix://"))
    {
        problems.push(Problem::new(
            "state.redis",
            "must be a redis://, rediss:// or unix:// URL",
        ));
    }
    StateSettings {
        path,
        redis: s.redis.clone(),
    }
}
