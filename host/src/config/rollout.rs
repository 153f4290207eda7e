//! `routes[].rollout` and `routes[].sticky`, validated.
//!
//! A rollout names a candidate target and the steps (percent of the route's traffic) the
//! gateway moves it through; its guards are the limits the candidate must hold against the
//! route's own targets (the incumbents) at every step. The rollout's identity is a digest of
//! its settings ([`Rollout::fingerprint`]): the durable state in the store belongs to one
//! fingerprint, so editing the rollout in the config starts a new one while a reload that
//! leaves it alone keeps its progress.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use sha2::{Digest, Sha256};

use super::Problem;
use super::route::Target;
use super::schema;

/// Which caller identity a sticky split hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// The virtual key's id (`x-switchyard-key` without client auth).
    Key,
    /// The caller's team (`x-switchyard-team` without client auth).
    Team,
    /// A request header's value.
    Header(HeaderName),
}

impl Sticky {
    pub fn parse(s: &str) -> Result<Sticky, String> {
        match s.trim() {
            "key" => Ok(Sticky::Key),
            "team" => Ok(Sticky::Team),
            other => match other.strip_prefix("header:") {
                Some(name) if !name.trim().is_empty() => {
                    HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
                        .map(Sticky::Header)
                        .map_err(|_| format!("\"{}\" is not a valid header name", name.trim()))
                }
                _ => Err(format!(
                    "must be \"key\", \"team\" or \"header:NAME\", got \"{other}\""
                )),
            },
        }
    }
}

/// The limits a candidate must hold; `None` is a guard not configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Guards {
    /// Candidate error rate minus the incumbents' (a fraction: 0.005 is half a point).
    pub max_error_rate: Option<f64>,
    /// Candidate p99 latency minus the incumbents', in milliseconds.
    pub max_p99_increase_ms: Option<f64>,
    /// Candidate `validate` rejection rate minus the incumbents'.
    pub max_reject_rate: Option<f64>,
    /// Share of mirrored pairs (shadow = candidate) whose answers agree.
    pub min_agreement: Option<f64>,
    /// Mean judge score of mirrored pairs (shadow = candidate).
    pub min_judge_score: Option<f64>,
    /// Mean caller feedback score (`POST /v1/feedback`) on the candidate's answers.
    pub min_feedback: Option<f64>,
}

/// A validated `routes[].rollout`.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub candidate: Target,
    /// Percent of the route's traffic at each step, increasing, the last at most 100.
    pub steps: Vec<f64>,
    pub step_time: Duration,
    /// Candidate requests a step must see before it may advance, and before any guard may
    /// roll the candidate back.
    pub min_requests: u64,
    pub guards: Guards,
    pub webhook: Option<Arc<str>>,
    /// Digest of the settings: a new fingerprint is a new rollout.
    pub fingerprint: Arc<str>,
}

/// Validate a route's `rollout`; `resolve` checks the candidate as a route target.
pub(super) fn validate_rollout(
    r: &schema::RolloutSection,
    path: &str,
    route_shadows: bool,
    problems: &mut Vec<Problem>,
    resolve: impl FnOnce(&schema::FallbackSection, &str, &mut Vec<Problem>) -> Option<Target>,
) -> Option<Rollout> {
    let before = problems.len();
    let candidate = match &r.candidate {
        Some(c) => resolve(c, &format!("{path}.candidate"), problems),
        None => {
            problems.push(Problem::new(
                format!("{path}.candidate"),
                "is required: the target the rollout moves traffic to",
            ));
            None
        }
    };
    if r.steps.is_empty() {
        problems.push(Problem::new(
            format!("{path}.steps"),
            "must list at least one step (percent of traffic), e.g. [1, 5, 20, 50, 100]",
        ));
    }
    let mut last = 0.0;
    for (i, s) in r.steps.iter().enumerate() {
        if !(s.is_finite() && *s > 0.0 && *s <= 100.0) {
            problems.push(Problem::new(
                format!("{path}.steps[{i}]"),
                format!("must be a percent above 0 and at most 100, got {s}"),
            ));
        } else if *s <= last {
            problems.push(Problem::new(
                format!("{path}.steps[{i}]"),
                format!("steps must increase: {s} follows {last}"),
            ));
        } else {
            last = *s;
        }
    }
    let step_secs = r.step_secs.unwrap_or(3600.0);
    if !(step_secs.is_finite() && step_secs > 0.0 && step_secs <= 30.0 * 86_400.0) {
        problems.push(Problem::new(
            format!("{path}.step_secs"),
            format!("must be above 0 and at most 30 days, got {step_secs}"),
        ));
    }
    let g = r.guard.clone().unwrap_or_default();
    let gp = format!("{path}.guard");
    let fraction = |v: Option<f64>, name: &str, problems: &mut Vec<Problem>| {
        if let Some(x) = v
            && !(x.is_finite() && (0.0..=1.0).contains(&x))
        {
            problems.push(Problem::new(
                format!("{gp}.{name}"),
                format!("must be between 0.0 and 1.0, got {x}"),
            ));
        }
    };
    fraction(g.max_error_rate, "max_error_rate", problems);
    fraction(g.max_reject_rate, "max_reject_rate", problems);
    fraction(g.min_agreement, "min_agreement", problems);
    fraction(g.min_judge_score, "min_judge_score", problems);
    fraction(g.min_feedback, "min_feedback", problems);
    if let Some(ms) = g.max_p99_increase_ms
        && !(ms.is_finite() && ms >= 0.0)
    {
        problems.push(Problem::new(
            format!("{gp}.max_p99_increase_ms"),
            format!("must be 0 or more, got {ms}"),
        ));
    }
    // Agreement and judge scores come from mirrored pairs: without a shadow they could never
    // have data, and a guard without data holds the rollout at its first step for good.
    for (set, name) in [
        (g.min_agreement.is_some(), "min_agreement"),
        (g.min_judge_score.is_some(), "min_judge_score"),
    ] {
        if set && !route_shadows {
            problems.push(Problem::new(
                format!("{gp}.{name}"),
                "needs the route's `shadow` (mirrored pairs are where this is measured)",
            ));
        }
    }
    if let Some(w) = &r.webhook
        && !(w.starts_with("http://") || w.starts_with("https://"))
    {
        problems.push(Problem::new(
            format!("{path}.webhook"),
            format!("must be an http:// or https:// URL, got \"{w}\""),
        ));
    }
    if problems.len() > before {
        return None;
    }
    let candidate = candidate?;
    let fingerprint = {
        let settings = serde_json::to_vec(r).unwrap_or_default();
        let digest = Sha256::digest(&settings);
        Arc::from(
            digest[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        )
    };
    Some(Rollout {
        candidate,
        steps: r.steps.clone(),
        step_time: Duration::from_secs_f64(step_secs),
        min_requests: r.min_requests.unwrap_or(200),
        guards: Guards {
            max_error_rate: g.max_error_rate,
            max_p99_increase_ms: g.max_p99_increase_ms,
            max_reject_rate: g.max_reject_rate,
            min_agreement: g.min_agreement,
            min_judge_score: g.min_judge_score,
            min_feedback: g.min_feedback,
        },
        webhook: r.webhook.as_deref().map(Arc::from),
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigSource, load_str};

    fn cfg(route_extra: &str) -> String {
        format!(
            r#"
[[backends]]
name = "old"
url = "http://127.0.0.1:1/v1"
[[backends]]
name = "new"
url = "http://127.0.0.1:2/v1"
[[routes]]
model = "m"
targets = [{{ backend = "old" }}]
{route_extra}
"#
        )
    }

    #[test]
    fn a_valid_rollout_and_sticky_are_resolved() {
        let rt = load_str(
            &cfg(
                r#"sticky = "header:X-User"
rollout = { candidate = { backend = "new", model = "llama" }, steps = [1, 5, 100], step_secs = 2, min_requests = 20, guard = { max_error_rate = 0.005, max_p99_increase_ms = 200 } }"#,
            ),
            ConfigSource::Embedded,
        )
        .unwrap();
        let r = rt.route_for("m").unwrap();
        let ro = r.rollout.as_ref().unwrap();
        assert_eq!(&*ro.candidate.backend.name, "new");
        assert_eq!(ro.steps, [1.0, 5.0, 100.0]);
        assert_eq!(ro.min_requests, 20);
        assert_eq!(ro.guards.max_p99_increase_ms, Some(200.0));
        assert_eq!(
            r.sticky,
            Some(super::Sticky::Header(http::HeaderName::from_static(
                "x-user"
            )))
        );
    }

    #[test]
    fn editing_the_rollout_changes_its_fingerprint() {
        let text = cfg(r#"rollout = { candidate = { backend = "new" }, steps = [10, 100] }"#);
        let a = load_str(&text, ConfigSource::Embedded).unwrap();
        let again = load_str(&text, ConfigSource::Embedded).unwrap();
        let b = load_str(
            &cfg(r#"rollout = { candidate = { backend = "new" }, steps = [20, 100] }"#),
            ConfigSource::Embedded,
        )
        .unwrap();
        let fp = |rt: &crate::config::Runtime| {
            rt.route_for("m")
                .unwrap()
                .rollout
                .as_ref()
                .unwrap()
                .fingerprint
                .clone()
        };
        assert_ne!(fp(&a), fp(&b));
        assert_eq!(fp(&a), fp(&again));
    }

    #[test]
    fn bad_rollouts_name_every_problem() {
        let e = load_str(
            &cfg(
                r#"sticky = "cookie"
rollout = { candidate = { backend = "nope" }, steps = [50, 10, 150], step_secs = 0, guard = { max_error_rate = 2, min_agreement = 0.9 }, webhook = "ftp://x" }"#,
            ),
            ConfigSource::Embedded,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "routes[0].sticky",
            "routes[0].rollout.candidate.backend",
            "routes[0].rollout.steps[1]",
            "routes[0].rollout.steps[2]",
            "routes[0].rollout.step_secs",
            "routes[0].rollout.guard.max_error_rate",
            "routes[0].rollout.guard.min_agreement: needs the route's `shadow`",
            "routes[0].rollout.webhook",
        ] {
            assert!(e.contains(needle), "missing {needle} in {e}");
        }
        let e = load_str(
            &cfg(r#"rollout = { candidate = { backend = "new" }, steps = [10], extra = 1 }"#),
            ConfigSource::Embedded,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("extra"), "{e}");
    }
}
