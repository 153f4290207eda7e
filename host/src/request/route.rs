//! Phase `route`: from the client's `model` (or a `classify` decision) to a route and a
//! target.
//!
//! A route's targets are a weighted split (a canary is `weight = 90` / `weight = 10`); the
//! choice is one draw from a thread-local RNG, no locks. A route may carry override rules
//! (`overrides = [{ team = "beta", targets = [...] }]`): the first rule whose conditions all
//! match the caller replaces the route's split, which is how a feature flag sends one team,
//! one key or one feature (a request header) to the new model. A caller may also pin a
//! target with the `x-switchyard-target: backend[:model]` header, honoured only when the
//! route lists the caller's team in `pin_teams`; anyone else gets 403, so a pin can never be
//! used to bypass a migration.
//!
//! A route with a `rollout` first sends the candidate its share (the controller's weight,
//! one atomic load); the rest goes through the route's own split. With `sticky` both draws
//! come from a hash of the caller, so a caller keeps its target (and only ever moves to the
//! candidate as a rollout's weight grows); pinned and overridden requests are not part of a
//! rollout.
//!
//! With virtual keys the caller is the authenticated key, and identity headers are ignored
//! (any client could set them); without keys the gateway trusts its network and takes the
//! caller from `x-switchyard-team` / `x-switchyard-key`.

use std::sync::Arc;

use http::HeaderMap;

use super::context::RequestCtx;
use crate::base::GatewayError;
use crate::base::openai::RequestBody;
use crate::config::rollout::Sticky;
use crate::config::route::Override;
use crate::config::{Backend, Route, Runtime, Target};
use crate::services::plugins::Decision;
use crate::services::rollout::{Arm, Rollouts, StickyPoint};

/// The route and target this request goes to.
pub fn route(
    rollouts: &Rollouts,
    ctx: &mut RequestCtx,
    decision: Decision,
    request: &RequestBody,
    headers: &HeaderMap,
) -> Result<Target, GatewayError> {
    let route = match decision.route {
        Some(r) => r,
        None => find_route(ctx.config(), &request.model)?.clone(),
    };
    ctx.route = Some(route.clone());
    let caller = match &ctx.account.key {
        Some(k) => Caller {
            key_id: Some(k.id.clone()),
            team: Some(k.team.clone()),
        },
        None => Caller::from_headers(headers),
    };
    let chosen = match decision.target {
        Some(t) => t,
        None => match flagged(&route, &caller, headers, &ctx.config().backends)? {
            Some(t) => t,
            None => {
                let weight_bp = match &route.rollout {
                    Some(_) => rollouts.weight_bp(&route.name),
                    None => 0,
                };
                let (t, arm) = split(&route, &caller, headers, weight_bp);
                ctx.rollout_arm = arm;
                t
            }
        },
    };
    ctx.upstream_model = Some(Arc::from(chosen.upstream_model(&request.model)));
    ctx.target = Some(chosen.clone());
    Ok(chosen)
}

/// The route for a client's model name, or a `model_not_found` error.
pub fn find_route<'a>(rt: &'a Runtime, model: &str) -> Result<&'a Arc<Route>, GatewayError> {
    rt.route_for(model)
        .ok_or_else(|| GatewayError::UnknownModel(model.to_string()))
}

/// Request header pinning a target: `backend` or `backend:model`.
pub const HEADER_PIN: http::HeaderName = http::HeaderName::from_static("x-switchyard-target");
/// Caller identity headers, trusted only while client auth is off (no keys).
pub const HEADER_TEAM: http::HeaderName = http::HeaderName::from_static("x-switchyard-team");
pub const HEADER_KEY: http::HeaderName = http::HeaderName::from_static("x-switchyard-key");

/// Who is calling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The virtual key's id (never the secret).
    pub key_id: Option<String>,
    pub team: Option<String>,
}

impl Caller {
    /// The identity a gateway without keys trusts: `x-switchyard-team` / `x-switchyard-key`.
    pub fn from_headers(h: &HeaderMap) -> Caller {
        let get = |n: http::HeaderName| {
            h.get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        Caller {
            key_id: get(HEADER_KEY),
            team: get(HEADER_TEAM),
        }
    }
}

/// Whether an override rule applies to this caller and request.
fn matches(o: &Override, caller: &Caller, headers: &HeaderMap) -> bool {
    if let Some(t) = &o.team
        && caller.team.as_ref() != Some(t)
    {
        return false;
    }
    if let Some(k) = &o.key
        && caller.key_id.as_ref() != Some(k)
    {
        return false;
    }
    if let Some((name, value)) = &o.header {
        match (headers.get(name), value) {
            (None, _) => return false,
            (Some(v), Some(want)) => {
                if v.to_str().ok().map(str::trim) != Some(want.as_str()) {
                    return false;
                }
            }
            (Some(_), None) => {}
        }
    }
    true
}

/// Which target serves this request: a permitted pin, else the first matching override's
/// split, else the route's own split (without a rollout).
pub fn choose(
    route: &Route,
    caller: &Caller,
    headers: &HeaderMap,
    backends: &[Arc<Backend>],
) -> Result<Target, GatewayError> {
    match flagged(route, caller, headers, backends)? {
        Some(t) => Ok(t),
        None => Ok(split(route, caller, headers, 0).0),
    }
}

/// A permitted pin, else the first matching override's split; `None` when neither applies
/// (pinned and overridden requests are not part of a rollout's split).
fn flagged(
    route: &Route,
    caller: &Caller,
    headers: &HeaderMap,
    backends: &[Arc<Backend>],
) -> Result<Option<Target>, GatewayError> {
    if let Some(pin) = headers.get(HEADER_PIN) {
        let pin = pin.to_str().unwrap_or("").trim();
        let allowed = caller
            .team
            .as_ref()
            .is_some_and(|t| route.flags.pin_teams.iter().any(|p| p == t));
        if !allowed {
            return Err(GatewayError::PinNotAllowed {
                route: route.name.to_string(),
            });
        }
        let (backend, model) = match pin.split_once(':') {
            Some((b, m)) if !m.is_empty() => (b, Some(m)),
            _ => (pin, None),
        };
        let Some(b) = backends.iter().find(|b| &*b.name == backend) else {
            return Err(GatewayError::PinUnknownBackend(backend.to_string()));
        };
        return Ok(Some(Target {
            backend: b.clone(),
            model: model.map(Arc::from),
            weight: 1,
        }));
    }
    for o in &route.flags.overrides {
        if matches(o, caller, headers) {
            return Ok(Some(
                weighted(
                    &o.targets,
                    o.total_weight,
                    fastrand::u32(0..o.total_weight.max(1)),
                )
                .clone(),
            ));
        }
    }
    Ok(None)
}

/// The caller's identity a sticky route hashes, if the request carries one.
fn sticky_identity<'a>(
    sticky: &Sticky,
    caller: &'a Caller,
    headers: &'a HeaderMap,
) -> Option<&'a [u8]> {
    match sticky {
        Sticky::Key => caller.key_id.as_deref().map(str::as_bytes),
        Sticky::Team => caller.team.as_deref().map(str::as_bytes),
        Sticky::Header(name) => headers
            .get(name)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty()),
    }
}

/// The route's own split: the rollout's candidate for a share of `weight_bp` (hundredths of
/// a percent), else one of the route's targets by weight. A sticky route places each caller
/// at a fixed point of both draws, so a caller keeps its target while the weights stay, and
/// moves only from the incumbents to the candidate as a rollout's weight grows. Without
/// `sticky` (or without the identity it names) each request draws afresh.
fn split(
    route: &Route,
    caller: &Caller,
    headers: &HeaderMap,
    weight_bp: u32,
) -> (Target, Option<Arm>) {
    let point = route
        .sticky
        .as_ref()
        .and_then(|s| sticky_identity(s, caller, headers))
        .map(StickyPoint::of);
    let arm = match &route.rollout {
        Some(ro) => {
            let at = point.map_or_else(|| fastrand::u32(0..10_000), StickyPoint::rollout_bp);
            if at < weight_bp {
                return (ro.candidate.clone(), Some(Arm::Candidate));
            }
            Some(Arm::Incumbent)
        }
        None => None,
    };
    if route.targets.len() == 1 {
        return (route.targets[0].clone(), arm);
    }
    let total = route.total_weight.max(1);
    let draw = point.map_or_else(|| fastrand::u32(0..total), |p| p.target_draw(total));
    (
        weighted(&route.targets, route.total_weight, draw).clone(),
        arm,
    )
}

/// The target at `draw` (in [0, total)) of a weighted list (no draw for a single target).
fn weighted(targets: &[Target], total: u32, draw: u32) -> &Target {
    if targets.len() == 1 {
        return &targets[0];
    }
    let mut draw = draw.min(total.saturating_sub(1));
    for t in targets {
        if draw < t.weight {
            return t;
        }
        draw -= t.weight;
    }
    &targets[targets.len() - 1]
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
        let r = find_route(&rt, "m").unwrap();
        let n = 20_000;
        let mut a = 0;
        for _ in 0..n {
            let t = weighted(&r.targets, r.total_weight, fastrand::u32(0..r.total_weight));
            assert_ne!(t.model.as_deref(), Some("never"));
            if &*t.backend.name == "a" {
                a += 1;
            }
        }
        let share = a as f64 / n as f64;
        assert!((0.88..0.92).contains(&share), "share of a = {share}");
        assert!(matches!(
            find_route(&rt, "x"),
            Err(GatewayError::UnknownModel(_))
        ));
    }
    const CFG: &str = r#"
[[backends]]
name = "old"
url = "http://127.0.0.1:1/v1"
[[backends]]
name = "new"
url = "http://127.0.0.1:2/v1"
[[routes]]
model = "m"
targets = [{ backend = "old" }]
pin_teams = ["sre"]
overrides = [
  { team = "beta", targets = [{ backend = "new", model = "llama" }] },
  { header = "x-feature: summarise-v2", targets = [{ backend = "new" }] },
]
"#;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn overrides_route_by_team_and_header() {
        let rt = load_str(CFG, ConfigSource::Embedded).unwrap();
        let r = rt.route_for("m").unwrap();
        let pick = |h: &HeaderMap| {
            choose(r, &Caller::from_headers(h), h, &rt.backends)
                .unwrap()
                .backend
                .name
                .to_string()
        };
        assert_eq!(pick(&headers(&[])), "old");
        assert_eq!(pick(&headers(&[("x-switchyard-team", "beta")])), "new");
        assert_eq!(pick(&headers(&[("x-switchyard-team", "other")])), "old");
        assert_eq!(pick(&headers(&[("x-feature", "summarise-v2")])), "new");
        assert_eq!(pick(&headers(&[("x-feature", "summarise-v1")])), "old");
    }

    #[test]
    fn sticky_callers_keep_one_of_the_plain_weighted_targets() {
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
sticky = "header:x-user"
targets = [{ backend = "a", weight = 70 }, { backend = "b", weight = 30 }]
"#,
            ConfigSource::Embedded,
        )
        .unwrap();
        let r = rt.route_for("m").unwrap();
        let mut on_b = 0;
        for u in 0..1000 {
            let mut h = headers(&[]);
            h.insert("x-user", format!("user-{u}").parse().unwrap());
            let caller = Caller::from_headers(&h);
            let first = choose(r, &caller, &h, &rt.backends)
                .unwrap()
                .backend
                .name
                .clone();
            for _ in 0..5 {
                assert_eq!(
                    choose(r, &caller, &h, &rt.backends).unwrap().backend.name,
                    first
                );
            }
            if &*first == "b" {
                on_b += 1;
            }
        }
        assert!((240..360).contains(&on_b), "{on_b} of 1000 callers on b");
        // Without the header each request draws afresh.
        let h = headers(&[]);
        let names: std::collections::HashSet<_> = (0..200)
            .map(|_| {
                choose(r, &Caller::default(), &h, &rt.backends)
                    .unwrap()
                    .backend
                    .name
                    .clone()
            })
            .collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn pin_only_for_allowed_teams() {
        let rt = load_str(CFG, ConfigSource::Embedded).unwrap();
        let r = rt.route_for("m").unwrap();
        let h = headers(&[("x-switchyard-target", "new:qwen")]);
        let e = choose(r, &Caller::from_headers(&h), &h, &rt.backends).unwrap_err();
        assert!(matches!(e, GatewayError::PinNotAllowed { .. }));
        let h = headers(&[
            ("x-switchyard-target", "new:qwen"),
            ("x-switchyard-team", "sre"),
        ]);
        let t = choose(r, &Caller::from_headers(&h), &h, &rt.backends).unwrap();
        assert_eq!(&*t.backend.name, "new");
        assert_eq!(t.model.as_deref(), Some("qwen"));
        let h = headers(&[
            ("x-switchyard-target", "nope"),
            ("x-switchyard-team", "sre"),
        ]);
        assert!(matches!(
            choose(r, &Caller::from_headers(&h), &h, &rt.backends),
            Err(GatewayError::PinUnknownBackend(_))
        ));
    }
}
