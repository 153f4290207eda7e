//! `[[routes]]`, validated: each route's weighted targets, fallbacks, shadow, and its flags
//! (caller overrides, pin teams, retries), every target resolved to its backend.

use std::collections::HashSet;
use std::sync::Arc;

use http::HeaderName;

use super::Problem;
use super::backend::Backend;
use super::rollout::{Rollout, Sticky, validate_rollout};
use super::schema;

/// The rubric used when none is given: what a good answer is, and the reply format the
/// score is read from.
pub const DEFAULT_JUDGE_RUBRIC: &str = "You are grading an AI assistant's answer against a reference answer.

Question:
{question}

Reference answer:
{reference}

Answer to grade:
{answer}

Judge whether the answer is correct, complete and as useful as the reference. Ignore differences of wording and format that do not change the meaning. Score from 1 (wrong or useless) to 10 (as good as the reference or better).

Reply with one JSON object and nothing else: {\"score\": <1-10>, \"reason\": \"<one sentence>\"}";

/// A target of a route: a backend and the model name sent to it.
#[derive(Debug, Clone)]
pub struct Target {
    pub backend: Arc<Backend>,
    /// `None` sends the client's own model name.
    pub model: Option<Arc<str>>,
    pub weight: u32,
}

impl Target {
    /// The model name sent upstream: the target's, or the client's own when it names none.
    pub fn upstream_model<'a>(&'a self, client_model: &'a str) -> &'a str {
        self.model.as_deref().unwrap_or(client_model)
    }
}

/// A shadow (mirror) target.
#[derive(Debug, Clone)]
pub struct Shadow {
    pub target: Target,
    pub sample: f64,
    /// The judge scoring a sample of the pairs.
    pub judge: Option<ShadowJudge>,
}

/// `shadow.judge`, resolved: the judge's target, the share of pairs judged, the rubric text.
#[derive(Debug, Clone)]
pub struct ShadowJudge {
    pub target: Target,
    pub sample: f64,
    pub rubric: Arc<str>,
}

/// `capture`, resolved.
#[derive(Debug, Clone, Copy)]
pub struct Capture {
    pub sample: f64,
}

/// One `[[routes]]` entry, resolved.
#[derive(Debug)]
pub struct Route {
    /// The model name clients send (`*` for the catch-all).
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pub total_weight: u32,
    pub fallback: Vec<Target>,
    pub shadow: Option<Shadow>,
    /// Request/answer pairs stored for golden sets.
    pub capture: Option<Capture>,
    /// Overrides, pinning and retries.
    pub flags: RouteFlags,
    /// A staged rollout of a candidate target (`routes[].rollout`).
    pub rollout: Option<Arc<Rollout>>,
    /// Which caller identity keeps a caller on one target (`routes[].sticky`).
    pub sticky: Option<Sticky>,
    /// The exact response cache, when the route has one.
    pub cache: Option<super::cache::RouteCache>,
    /// Where a request too long for the chosen target's context window goes.
    pub context_fallback: Option<Target>,
    /// The context windows the route's targets declare (`context_window`).
    pub context_windows: Vec<ContextWindow>,
}

/// A target's declared context window.
#[derive(Debug, Clone)]
pub struct ContextWindow {
    pub backend: Arc<str>,
    pub model: Option<Arc<str>>,
    pub tokens: u64,
}

impl Route {
    /// The context window declared for `t`, if any.
    pub fn context_window(&self, t: &Target) -> Option<u64> {
        self.context_windows
            .iter()
            .find(|w| w.backend == t.backend.name && w.model == t.model)
            .map(|w| w.tokens)
    }
}

/// Check everything; on success the runtime, else every problem found.
/// A validated override rule.
#[derive(Debug, Clone)]
pub struct Override {
    pub team: Option<String>,
    pub key: Option<String>,
    pub header: Option<(HeaderName, Option<String>)>,
    pub targets: Vec<Target>,
    pub total_weight: u32,
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
    fn build(
        r: &schema::RouteSection,
        path: &str,
        problems: &mut Vec<Problem>,
        mut resolve: impl FnMut(&schema::TargetSection, &str, &mut Vec<Problem>) -> Option<Target>,
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

fn resolve_target(
    backend: Option<&str>,
    model: Option<&str>,
    weight: u32,
    path: &str,
    backends: &[Arc<Backend>],
    declared: &HashSet<&str>,
    problems: &mut Vec<Problem>,
) -> Option<Target> {
    let Some(name) = backend else {
        problems.push(Problem::new(format!("{path}.backend"), "is required"));
        return None;
    };
    if let Some(m) = model
        && m.trim().is_empty()
    {
        problems.push(Problem::new(format!("{path}.model"), "must not be empty"));
        return None;
    }
    match backends.iter().find(|b| &*b.name == name) {
        Some(b) => Some(Target {
            backend: b.clone(),
            model: model.map(Arc::from),
            weight,
        }),
        None => {
            // A backend that exists but failed its own validation is already reported.
            if !declared.contains(name) {
                let known: Vec<&str> = declared.iter().copied().collect();
                problems.push(Problem::new(
                    format!("{path}.backend"),
                    format!(
                        "no backend named \"{name}\" (known: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            None
        }
    }
}

pub(super) fn validate_route(
    r: &schema::RouteSection,
    path: &str,
    backends: &[Arc<Backend>],
    declared: &HashSet<&str>,
    problems: &mut Vec<Problem>,
) -> Option<Route> {
    let before = problems.len();
    let name = match r.model.as_deref() {
        Some(m) if !m.trim().is_empty() => m.to_string(),
        Some(_) => {
            problems.push(Problem::new(format!("{path}.model"), "must not be empty"));
            String::new()
        }
        None => {
            problems.push(Problem::new(
                format!("{path}.model"),
                "is required: the model name clients send, or \"*\" for all others",
            ));
            String::new()
        }
    };
    if r.targets.is_empty() {
        problems.push(Problem::new(
            format!("{path}.targets"),
            "must list at least one target",
        ));
    }
    let mut targets = Vec::new();
    for (j, t) in r.targets.iter().enumerate() {
        let tp = format!("{path}.targets[{j}]");
        if let Some(target) = resolve_target(
            t.backend.as_deref(),
            t.model.as_deref(),
            t.weight.unwrap_or(1),
            &tp,
            backends,
            declared,
            problems,
        ) {
            targets.push(target);
        }
    }
    let total_weight: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    if !targets.is_empty() && total_weight == 0 {
        problems.push(Problem::new(
            format!("{path}.targets"),
            "weights add up to 0: at least one target needs a positive weight",
        ));
    }
    let total_weight = match u32::try_from(total_weight) {
        Ok(w) => w,
        Err(_) => {
            problems.push(Problem::new(
                format!("{path}.targets"),
                "weights add up to more than 4294967295",
            ));
            0
        }
    };
    let mut fallback = Vec::new();
    for (j, f) in r.fallback.iter().enumerate() {
        let fp = format!("{path}.fallback[{j}]");
        if let Some(t) = resolve_target(
            f.backend.as_deref(),
            f.model.as_deref(),
            1,
            &fp,
            backends,
            declared,
            problems,
        ) {
            fallback.push(t);
        }
    }
    let shadow = r.shadow.as_ref().and_then(|s| {
        let sp = format!("{path}.shadow");
        let sample = s.sample.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample) {
            problems.push(Problem::new(
                format!("{sp}.sample"),
                format!("must be between 0.0 and 1.0, got {sample}"),
            ));
        }
        resolve_target(
            s.backend.as_deref(),
            s.model.as_deref(),
            1,
            &sp,
            backends,
            declared,
            problems,
        )
        .map(|target| Shadow {
            target,
            sample,
            judge: s.judge.as_ref().and_then(|j| {
                validate_judge(j, &format!("{sp}.judge"), backends, declared, problems)
            }),
        })
    });
    let capture = r.capture.as_ref().map(|c| {
        let sample = c.sample.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&sample) {
            problems.push(Problem::new(
                format!("{path}.capture.sample"),
                format!("must be between 0.0 and 1.0, got {sample}"),
            ));
        }
        Capture { sample }
    });
    let flags = RouteFlags::build(r, path, problems, |t, tp, problems| {
        resolve_target(
            t.backend.as_deref(),
            t.model.as_deref(),
            t.weight.unwrap_or(1),
            tp,
            backends,
            declared,
            problems,
        )
    });
    let sticky = r.sticky.as_deref().and_then(|s| match Sticky::parse(s) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(Problem::new(format!("{path}.sticky"), e));
            None
        }
    });
    let rollout = r.rollout.as_ref().and_then(|ro| {
        validate_rollout(
            ro,
            &format!("{path}.rollout"),
            r.shadow.is_some(),
            problems,
            |c, cp, problems| {
                resolve_target(
                    c.backend.as_deref(),
                    c.model.as_deref(),
                    1,
                    cp,
                    backends,
                    declared,
                    problems,
                )
            },
        )
    });
    let cache = r
        .cache
        .as_ref()
        .and_then(|c| super::cache::validate_route_cache(c, path, problems));
    let mut context_windows = Vec::new();
    let declared_windows = r
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                format!("{path}.targets[{i}]"),
                t.backend.as_deref(),
                t.model.as_deref(),
                t.context_window,
            )
        })
        .chain(r.fallback.iter().enumerate().map(|(j, f)| {
            (
                format!("{path}.fallback[{j}]"),
                f.backend.as_deref(),
                f.model.as_deref(),
                f.context_window,
            )
        }))
        .chain(r.context_fallback.iter().map(|f| {
            (
                format!("{path}.context_fallback"),
                f.backend.as_deref(),
                f.model.as_deref(),
                f.context_window,
            )
        }));
    for (at, backend, model, window) in declared_windows {
        match (window, backend) {
            (Some(0), _) => problems.push(Problem::new(
                format!("{at}.context_window"),
                "must be at least 1 token",
            )),
            (Some(tokens), Some(b)) => context_windows.push(ContextWindow {
                backend: Arc::from(b),
                model: model.map(Arc::from),
                tokens,
            }),
            _ => {}
        }
    }
    let context_fallback = r.context_fallback.as_ref().and_then(|f| {
        resolve_target(
            f.backend.as_deref(),
            f.model.as_deref(),
            1,
            &format!("{path}.context_fallback"),
            backends,
            declared,
            problems,
        )
    });
    if problems.len() > before {
        return None;
    }
    Some(Route {
        cache,
        context_fallback,
        context_windows,
        name: Arc::from(name),
        targets,
        total_weight,
        fallback,
        shadow,
        capture,
        flags,
        rollout: rollout.map(Arc::new),
        sticky,
    })
}

fn validate_judge(
    j: &schema::JudgeSection,
    path: &str,
    backends: &[Arc<Backend>],
    declared: &HashSet<&str>,
    problems: &mut Vec<Problem>,
) -> Option<ShadowJudge> {
    let sample = j.sample.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample) {
        problems.push(Problem::new(
            format!("{path}.sample"),
            format!("must be between 0.0 and 1.0, got {sample}"),
        ));
    }
    if j.model.as_deref().is_none() {
        problems.push(Problem::new(format!("{path}.model"), "is required"));
    }
    let rubric = match &j.rubric {
        None => DEFAULT_JUDGE_RUBRIC.to_string(),
        Some(f) => match std::fs::read_to_string(f) {
            Ok(t) if t.contains("{answer}") => t,
            Ok(_) => {
                problems.push(Problem::new(
                    format!("{path}.rubric"),
                    format!(
                        "{}: no {{answer}} placeholder: the judge would not see the answer",
                        f.display()
                    ),
                ));
                return None;
            }
            Err(e) => {
                problems.push(Problem::new(
                    format!("{path}.rubric"),
                    format!("{}: {e}", f.display()),
                ));
                return None;
            }
        },
    };
    let target = resolve_target(
        j.backend.as_deref(),
        j.model.as_deref(),
        1,
        path,
        backends,
        declared,
        problems,
    )?;
    Some(ShadowJudge {
        target,
        sample,
        rubric: Arc::from(rubric),
    })
}
