//! Governance config: `[auth]`, `[admin]`, `[[teams]]`, `[[prices]]` and a route's
//! `baseline`, parsed strictly and validated into [`GovConfig`].
//!
//! ```toml
//! [auth]
//! required = true                 # ask for a key even before any key exists
//! allow_unauthenticated = false   # needed to listen beyond loopback without client keys
//! reserve_tokens = 1024           # completion tokens reserved when a request sets no max_tokens
//!
//! [admin]
//! token_env = "SWITCHYARD_ADMIN_TOKEN"   # env var holding the admin token for /admin/*
//!
//! [[teams]]
//! name = "search"
//! rpm = 600
//! tpm = 200000
//! budget_daily = 50.0             # USD
//! budget_monthly = 1000.0
//!
//! [[prices]]
//! backend = "openai"
//! model = "gpt-4o"                # "*" prices every model of the backend
//! input_per_1m = 2.50             # USD per 1M prompt tokens
//! output_per_1m = 10.00
//!
//! [[routes]]
//! model = "gpt-4o"
//! baseline = { input_per_1m = 2.50, output_per_1m = 10.00 }   # premium price, for savings
//! ```

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::Problem;
use super::schema::ConfigFile;

/// Default `[auth] reserve_tokens`.
pub const DEFAULT_RESERVE_TOKENS: u64 = 1024;

/// `[auth]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Require a virtual key on every request, even before any key exists.
    pub required: Option<bool>,
    /// Allow listening beyond loopback without client keys.
    pub allow_unauthenticated: Option<bool>,
    /// Completion tokens reserved at admission when a request sets no `max_tokens`.
    pub reserve_tokens: Option<u64>,
}

/// One `[[teams]]` entry: limits shared by every key of the team.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSection {
    pub name: Option<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub budget_daily: Option<f64>,
    pub budget_monthly: Option<f64>,
}

/// One `[[prices]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSection {
    pub backend: Option<String>,
    pub model: Option<String>,
    pub input_per_1m: Option<f64>,
    pub output_per_1m: Option<f64>,
}

/// A route's `baseline`: the premium price the route's traffic is compared against.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSection {
    pub input_per_1m: Option<f64>,
    pub output_per_1m: Option<f64>,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    pub input_per_1m: f64,
    pub output_per_1m: f64,
}

impl Price {
    /// Cost in USD of these token counts.
    pub fn cost(&self, tokens_in: u64, tokens_out: u64) -> f64 {
        (tokens_in as f64 * self.input_per_1m + tokens_out as f64 * self.output_per_1m) / 1e6
    }
}

/// Requests and tokens per minute, and USD per day and month; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub budget_daily: Option<f64>,
    pub budget_monthly: Option<f64>,
}

/// The validated governance settings of one config version.
#[derive(Debug, Clone, Default)]
pub struct GovConfig {
    pub auth_required: bool,
    pub allow_unauthenticated: bool,
    pub reserve_tokens: u64,
    pub teams: HashMap<String, Limits>,
    /// backend → model (or `"*"`) → price: looked up by `&str` on every request, with no
    /// key to build.
    prices: HashMap<String, HashMap<String, Price>>,
    baselines: HashMap<String, Price>,
}

impl GovConfig {
    /// The price of `model` on `backend`: exact entry, else the backend's `"*"` entry.
    pub fn price(&self, backend: &str, model: &str) -> Option<Price> {
        let models = self.prices.get(backend)?;
        models.get(model).or_else(|| models.get("*")).copied()
    }

    /// One line for `switchyard check`.
    pub fn summary(&self) -> String {
        format!(
            "client auth {}, {} team(s) with limits, {} price(s), {} route baseline(s)",
            if self.auth_required {
                "required"
            } else {
                "on once a key exists"
            },
            self.teams.len(),
            self.prices.values().map(HashMap::len).sum::<usize>(),
            self.baselines.len(),
        )
    }

    /// Model names the `[[prices]]` entries name (not `"*"`).
    pub fn priced_models(&self) -> impl Iterator<Item = &str> {
        self.prices
            .values()
            .flat_map(HashMap::keys)
            .map(String::as_str)
            .filter(|m| *m != "*")
    }

    /// The route's baseline (premium) price, if configured.
    pub fn baseline(&self, route: &str) -> Option<Price> {
        self.baselines.get(route).copied()
    }
}

fn non_negative(v: Option<f64>, path: &str, problems: &mut Vec<Problem>) -> Option<f64> {
    match v {
        Some(x) if !(x.is_finite() && x >= 0.0) => {
            problems.push(Problem::new(
                path,
                format!("must be a non-negative number, got {x}"),
            ));
            None
        }
        other => other,
    }
}

fn price(
    input: Option<f64>,
    output: Option<f64>,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<Price> {
    let i = non_negative(input, &format!("{path}.input_per_1m"), problems);
    let o = non_negative(output, &format!("{path}.output_per_1m"), problems);
    if input.is_none() && output.is_none() {
        problems.push(Problem::new(
            path,
            "needs input_per_1m and/or output_per_1m (USD per million tokens)",
        ));
        return None;
    }
    Some(Price {
        input_per_1m: i.unwrap_or(0.0),
        output_per_1m: o.unwrap_or(0.0),
    })
}

/// Check the governance sections of `file`, recording every problem with its key path.
pub fn validate(file: &ConfigFile, problems: &mut Vec<Problem>) -> GovConfig {
    let auth = file.auth.clone().unwrap_or_default();
    let reserve_tokens = auth.reserve_tokens.unwrap_or(DEFAULT_RESERVE_TOKENS);

    let mut teams = HashMap::new();
    for (i, t) in file.teams.iter().enumerate() {
        let path = format!("teams[{i}]");
        let Some(name) = t.name.as_deref().filter(|n| !n.trim().is_empty()) else {
            problems.push(Problem::new(format!("{path}.name"), "is required"));
            continue;
        };
        let limits = Limits {
            rpm: t.rpm,
            tpm: t.tpm,
            budget_daily: non_negative(t.budget_daily, &format!("{path}.budget_daily"), problems),
            budget_monthly: non_negative(
                t.budget_monthly,
                &format!("{path}.budget_monthly"),
                problems,
            ),
        };
        if teams.insert(name.to_string(), limits).is_some() {
            problems.push(Problem::new(
                format!("{path}.name"),
                format!("duplicate team \"{name}\""),
            ));
        }
    }

    let backends: HashSet<&str> = file
        .backends
        .iter()
        .filter_map(|b| b.name.as_deref())
        .collect();
    let mut prices: HashMap<String, HashMap<String, Price>> = HashMap::new();
    for (i, p) in file.prices.iter().enumerate() {
        let path = format!("prices[{i}]");
        let backend = match p.backend.as_deref() {
            Some(b) if backends.contains(b) => b,
            Some(b) => {
                problems.push(Problem::new(
                    format!("{path}.backend"),
                    format!("no backend is named \"{b}\""),
                ));
                continue;
            }
            None => {
                problems.push(Problem::new(format!("{path}.backend"), "is required"));
                continue;
            }
        };
        let Some(model) = p.model.as_deref().filter(|m| !m.is_empty()) else {
            problems.push(Problem::new(
                format!("{path}.model"),
                "is required (\"*\" prices every model of the backend)",
            ));
            continue;
        };
        let Some(pr) = price(p.input_per_1m, p.output_per_1m, &path, problems) else {
            continue;
        };
        if prices
            .entry(backend.to_string())
            .or_default()
            .insert(model.to_string(), pr)
            .is_some()
        {
            problems.push(Problem::new(
                path,
                format!("backend \"{backend}\" model \"{model}\" is priced twice"),
            ));
        }
    }

    let mut baselines = HashMap::new();
    for (i, r) in file.routes.iter().enumerate() {
        if let (Some(b), Some(model)) = (&r.baseline, &r.model)
            && let Some(p) = price(
                b.input_per_1m,
                b.output_per_1m,
                &format!("routes[{i}].baseline"),
                problems,
            )
        {
            baselines.insert(model.clone(), p);
        }
    }

    GovConfig {
        auth_required: auth.required.unwrap_or(false),
        allow_unauthenticated: auth.allow_unauthenticated.unwrap_or(false),
        reserve_tokens,
        teams,
        prices,
        baselines,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigSource, load_str};

    #[test]
    fn the_governance_example_validates() {
        let text = include_str!("../../../examples/configs/governance.toml");
        let rt = load_str(text, ConfigSource::Embedded).unwrap();
        let g = &rt.governance;
        assert!(g.auth_required);
        assert_eq!(g.teams["search"].rpm, Some(600));
        let p = g.price("local", "llama-3.1-8b").unwrap();
        assert!((p.cost(1_000_000, 1_000_000) - 0.25).abs() < 1e-12);
        assert!(g.baseline("gpt-4o").is_some());
    }

    #[test]
    fn an_exact_price_wins_over_the_backend_wildcard() {
        let text = r#"
[[backends]]
name = "a"
url = "http://127.0.0.1:1/v1"

[[backends]]
name = "b"
url = "http://127.0.0.1:2/v1"

[[routes]]
model = "m"
targets = [{ backend = "a" }]

[[prices]]
backend = "a"
model = "*"
input_per_1m = 1.0
output_per_1m = 1.0

[[prices]]
backend = "a"
model = "big"
input_per_1m = 10.0
output_per_1m = 10.0
"#;
        let g = load_str(text, ConfigSource::Embedded).unwrap().governance;
        let cost = |b: &str, m: &str| g.price(b, m).map(|p| p.cost(1_000_000, 0));
        assert_eq!(cost("a", "big"), Some(10.0));
        assert_eq!(cost("a", "small"), Some(1.0));
        assert_eq!(cost("b", "big"), None);
        assert!(g.summary().contains("2 price(s)"), "{}", g.summary());

        let twice =
            format!("{text}\n[[prices]]\nbackend = \"a\"\nmodel = \"big\"\ninput_per_1m = 2.0\n");
        let err = load_str(&twice, ConfigSource::Embedded).unwrap_err();
        assert!(format!("{err:?}").contains("priced twice"), "{err:?}");
    }

    #[test]
    fn governance_problems_are_reported_with_their_paths() {
        let text = r#"
[[backends]]
name = "b"
url = "http://127.0.0.1:1/v1"

[[routes]]
model = "m"
targets = [{ backend = "b" }]
baseline = {}

[admin]
token_env = "SWITCHYARD_TEST_SURELY_UNSET_VAR"

[[teams]]
rpm = 5

[[prices]]
backend = "nope"
model = "*"
input_per_1m = 1.0
"#;
        let err = load_str(text, ConfigSource::Embedded).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "admin.token_env",
            "teams[0].name",
            "prices[0].backend",
            "routes[0].baseline",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
    }
}
