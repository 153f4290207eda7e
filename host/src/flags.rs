//! Flags and overrides: who is calling, and whether that changes where the request goes.
//!
//! A route may carry override rules (`overrides = [{ team = "beta", targets = [...] }]`):
//! the first rule whose conditions all match the caller replaces the route's weighted
//! split, which is how a feature flag sends one team, one key or one feature (a request
//! header) to the new model. A caller may also pin a target with the `x-switchyard-target:
//! backend[:model]` header, honoured only when the route lists the caller's team in
//! `pin_teams`; anyone else gets 403, so a pin can never be used to bypass a migration.
//!
//! [`Caller`] is filled from headers for now (`x-switchyard-team`, `x-switchyard-key`);
//! the governance layer fills it from the virtual key once keys exist, and nothing here
//! changes.

use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use serde::Deserialize;

use crate::config::{Backend, Problem, Route, Target};
use crate::error::GatewayError;

/// Request header pinning a target: `backend` or `backend:model`.
pub const HEADER_PIN: &str = "x-switchyard-target";
/// Interim caller identity headers, until virtual keys fill [`Caller`].
pub const HEADER_TEAM: &str = "x-switchyard-team";
pub const HEADER_KEY: &str = "x-switchyard-key";

/// Who is calling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The virtual key's id (never the secret).
    pub key_id: Option<String>,
    pub team: Option<String>,
}

impl Caller {
    /// The interim identity: taken from `x-switchyard-team` / `x-switchyard-key`.
    pub fn from_headers(h: &HeaderMap) -> Caller {
        let get = |n: &str| {
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

/// One override rule, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideSection {
    /// Matches callers of this team.
    pub team: Option<String>,
    /// Matches this virtual key id.
    pub key: Option<String>,
    /// Matches requests carrying this header, `"name: value"` (or just `"name"`).
    pub header: Option<String>,
    #[serde(default)]
    pub targets: Vec<crate::config::schema::TargetSection>,
}

/// A validated override rule.
#[derive(Debug, Clone)]
pub struct Override {
    pub team: Option<String>,
    pub key: Option<String>,
    pub header: Option<(HeaderName, Option<String>)>,
    pub targets: Vec<Target>,
    pub total_weight: u32,
}

impl Override {
    fn matches(&self, caller: &Caller, headers: &HeaderMap) -> bool {
        if let Some(t) = &self.team
            && caller.team.as_ref() != Some(t)
        {
            return false;
        }
        if let Some(k) = &self.key
            && caller.key_id.as_ref() != Some(k)
        {
            return false;
        }
        if let Some((name, value)) = &self.header {
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
}

/// A route's flag settings.
#[derive(Debug, Clone, Default)]
pub struct RouteFlags {
    pub overrides: Vec<Override>,
    /// Teams allowed to pin a target with `x-switchyard-target`.
    pub pin_teams: Vec<String>,
    /// Repeats of a failed target (after its other URLs) before moving to the fallback.
    pub retries: u32,
}

impl RouteFlags {
    /// Validate a route's `overrides`, `pin_teams` and `retries`; `resolve` checks a target
    /// the same way the route's own targets are checked.
    pub fn build(
        r: &crate::config::schema::RouteSection,
        path: &str,
        problems: &mut Vec<Problem>,
        mut resolve: impl FnMut(
            &crate::config::schema::TargetSection,
            &str,
            &mut Vec<Problem>,
        ) -> Option<Target>,
    ) -> RouteFlags {
        let mut overrides = Vec::new();
        for (j, o) in r.overrides.iter().enumerate() {
            let op = format!("{path}.overrides[{j}]");
            if o.team.is_none() && o.key.is_none() && o.header.is_none() {
                problems.push(Problem::new(
                    op.clone(),
                    "needs at least one condition: team, key or header",
                ));
            }
            let header = match o.header.as_deref().map(parse_header_condition) {
                None => None,
                Some(Ok(h)) => Some(h),
                Some(Err(e)) => {
                    problems.push(Problem::new(format!("{op}.header"), e));
                    None
                }
            };
            if o.targets.is_empty() {
                problems.push(Problem::new(
                    format!("{op}.targets"),
                    "must list at least one target",
                ));
            }
            let targets: Vec<Target> = o
                .targets
                .iter()
                .enumerate()
                .filter_map(|(k, t)| resolve(t, &format!("{op}.targets[{k}]"), problems))
                .collect();
            let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
            if !targets.is_empty() && total == 0 {
                problems.push(Problem::new(
                    format!("{op}.targets"),
                    "weights add up to 0: at least one target needs a positive weight",
                ));
            }
            overrides.push(Override {
                team: o.team.clone(),
                key: o.key.clone(),
                header,
                targets,
                total_weight: u32::try_from(total).unwrap_or(u32::MAX),
            });
        }
        let retries = r.retries.unwrap_or(0);
        if retries > 10 {
            problems.push(Problem::new(
                format!("{path}.retries"),
                format!("at most 10 repeats of one target, got {retries}"),
            ));
        }
        RouteFlags {
            overrides,
            pin_teams: r.pin_teams.clone(),
            retries,
        }
    }
}

/// Parse an override's `header` condition.
pub fn parse_header_condition(s: &str) -> Result<(HeaderName, Option<String>), String> {
    let (name, value) = match s.split_once(':') {
        Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
        None => (s.trim(), None),
    };
    let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("\"{name}\" is not a valid header name"))?;
    Ok((name, value))
}

/// Which target serves this request: a permitted pin, else the first matching override's
/// split, else the route's own split.
pub fn choose(
    route: &Route,
    caller: &Caller,
    headers: &HeaderMap,
    backends: &[Arc<Backend>],
) -> Result<Target, GatewayError> {
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
        return Ok(Target {
            backend: b.clone(),
            model: model.map(Arc::from),
            weight: 1,
        });
    }
    for o in &route.flags.overrides {
        if o.matches(caller, headers) {
            return Ok(weighted(&o.targets, o.total_weight).clone());
        }
    }
    Ok(crate::router::choose_target(route).clone())
}

fn weighted(targets: &[Target], total: u32) -> &Target {
    let mut draw = fastrand::u32(0..total.max(1));
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
