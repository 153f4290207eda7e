//! Routing: from the client's `model` to a target (backend + upstream model) and a URL.
//!
//! A route's targets are a weighted split (a canary is `weight = 90` / `weight = 10`);
//! the choice is one draw from a thread-local RNG, no locks. Within a backend, the URL is
//! drawn uniformly; load-aware balancing across a pool replaces this in the pool module.

use crate::config::{BackendUrl, Route, Runtime, Target};
use crate::error::GatewayError;
use std::sync::Arc;

/// The route for a client's model name, or a `model_not_found` error.
pub fn route<'a>(rt: &'a Runtime, model: &str) -> Result<&'a Arc<Route>, GatewayError> {
    rt.route_for(model)
        .ok_or_else(|| GatewayError::UnknownModel(model.to_string()))
}

/// Draw one target by weight.
pub fn choose_target(route: &Route) -> &Target {
    if route.targets.len() == 1 {
        return &route.targets[0];
    }
    let mut draw = fastrand::u32(0..route.total_weight.max(1));
    for t in &route.targets {
        if draw < t.weight {
            return t;
        }
        draw -= t.weight;
    }
    &route.targets[route.targets.len() - 1]
}

/// The model name sent upstream: the target's, or the client's own when it names none.
pub fn upstream_model<'a>(target: &'a Target, client_model: &'a str) -> &'a str {
    target.model.as_deref().unwrap_or(client_model)
}

/// Pick one of the backend's URLs.
pub fn pick_url(target: &Target) -> &BackendUrl {
    let urls = &target.backend.urls;
    if urls.len() == 1 {
        &urls[0]
    } else {
        &urls[fastrand::usize(0..urls.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, load_str};

    #[test]
    fn weighted_choice_follows_weights() {
        let rt = load_str(
            r#"
[[backends]]
name = "a"
url = "http://127.0.0.1:1/v1"
[[backends]]
name = "b"
url = "http://127.0.0.1:2/v1"
[[routes]]
model = "m"
targets = [{ backend = "a", weight = 90 }, { backend = "b", weight = 10 }, { backend = "b", model = "never", weight = 0 }]
"#,
            ConfigSource::Embedded,
        )
        .unwrap();
        let r = route(&rt, "m").unwrap();
        let n = 20_000;
        let mut a = 0;
        for _ in 0..n {
            let t = choose_target(r);
            assert_ne!(t.model.as_deref(), Some("never"));
            if &*t.backend.name == "a" {
                a += 1;
            }
        }
        let share = a as f64 / n as f64;
        assert!((0.88..0.92).contains(&share), "share of a = {share}");
        assert!(matches!(
            route(&rt, "x"),
            Err(GatewayError::UnknownModel(_))
        ));
    }
}
