//! `[cache]` and a route's `cache = { ... }`, validated: the exact response cache.
//!
//! ```toml
//! [cache]
//! max_bytes = 67108864          # memory store: answers kept, least recently used evicted
//!
//! [[routes]]
//! model = "gpt-4o"
//! cache = { ttl_secs = 600 }    # this route's answers are cached for 10 minutes
//! ```
//!
//! With `[state] redis` set the entries live in Redis instead (shared by replicas, expired
//! by Redis), and `max_bytes` does not apply.

use std::time::Duration;

use super::Problem;
use super::schema;

/// Default `[cache] max_bytes`: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The longest `ttl_secs`: 30 days.
const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// `[cache]`, checked.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// The memory store's size, in bytes of cached answers.
    pub max_bytes: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// A route's `cache`, checked.
#[derive(Debug, Clone)]
pub struct RouteCache {
    pub ttl: Duration,
    /// Cache only requests whose answer should not vary (`temperature = 0` or a `seed`);
    /// `false` caches every request.
    pub deterministic_only: bool,
}

pub(super) fn validate_cache(
    s: &schema::CacheSection,
    problems: &mut Vec<Problem>,
) -> CacheSettings {
    let max_bytes = s.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    if max_bytes == 0 {
        problems.push(Problem::new(
            "cache.max_bytes",
            "must be at least 1 (leave the routes' cache out to cache nothing)",
        ));
    }
    CacheSettings { max_bytes }
}

pub(super) fn validate_route_cache(
    s: &schema::RouteCacheSection,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<RouteCache> {
    let Some(ttl) = s.ttl_secs else {
        problems.push(Problem::new(
            format!("{path}.cache.ttl_secs"),
            "is required: how long an answer is served from the cache, in seconds",
        ));
        return None;
    };
    if ttl == 0 || ttl > MAX_TTL_SECS {
        problems.push(Problem::new(
            format!("{path}.cache.ttl_secs"),
            format!("must be between 1 and {MAX_TTL_SECS} (30 days), got {ttl}"),
        ));
        return None;
    }
    Some(RouteCache {
        ttl: Duration::from_secs(ttl),
        deterministic_only: s.deterministic_only.unwrap_or(true),
    })
}
