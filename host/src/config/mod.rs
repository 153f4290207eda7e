//! Configuration: find the file, parse it strictly, validate it into a [`Runtime`].
//!
//! The request path only ever sees a validated `Runtime`: every backend exists, every URL
//! parses, every key is readable. Parsing (`schema`) and meaning (`validate`) are separate so
//! that a config with five mistakes reports all five, each with its key path, and so that a
//! live reload can validate a new file completely before it replaces the running one.

pub mod admin;
pub mod api;
pub mod backend;
pub mod cache;
mod default;
pub mod governance;
pub mod local_worker;
pub mod plugins;
#[cfg(test)]
mod reference_doc;
pub mod rollout;
pub mod route;
pub mod runtime;
pub mod schema;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod traffic;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use api::Api;
pub use backend::{Backend, BackendUrl, BreakerSettings, Peer, PoolSettings};
pub use default::{describe as describe_default, embedded_default_toml};
pub use route::{Capture, Route, Shadow, ShadowJudge, Target};
pub use runtime::Runtime;
pub use server::ServerSettings;
pub use state::StateSettings;
pub use telemetry::{LogFormat, TelemetrySettings};
pub use traffic::TrafficSettings;
pub use validate::validate;

/// Where the running configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file on disk.
    File(PathBuf),
    /// No file was found: the built-in default.
    Embedded,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Embedded => f.write_str("<embedded default>"),
        }
    }
}

/// The environment variable that names the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "SWITCHYARD_CONFIG";
/// The file used when neither `--config` nor `$SWITCHYARD_CONFIG` is given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "switchyard.toml";

/// Decide which config to use: `--config PATH`, then `$SWITCHYARD_CONFIG`, then
/// `./switchyard.toml` if it exists, else the embedded default. A path that was asked for
/// explicitly must exist; only the implicit `./switchyard.toml` falls back silently.
pub fn locate(cli: Option<&Path>) -> ConfigSource {
    if let Some(p) = cli {
        return ConfigSource::File(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
        return ConfigSource::File(PathBuf::from(p));
    }
    let local = PathBuf::from(DEFAULT_CONFIG_FILE);
    if local.exists() {
        return ConfigSource::File(local);
    }
    ConfigSource::Embedded
}

/// One thing wrong with a config, at a key path such as `routes[1].targets[0].backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Why a config could not be used: the file, and every problem found in it.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub source: ConfigSource,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {} problem{}",
            self.source,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            if p.path.is_empty() {
                write!(f, "\n  {}: {}", self.source, p.message)?;
            } else {
                write!(f, "\n  {}: {}: {}", self.source, p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A positive number of seconds (below a billion), or a problem at `path`.
fn positive_secs(v: f64, path: &str, problems: &mut Vec<Problem>) -> Option<Duration> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Some(Duration::from_secs_f64(v))
    } else {
        problems.push(Problem::new(
            path,
            format!("must be a positive number of seconds, got {v}"),
        ));
        None
    }
}

/// Read, parse and validate the config from `source`.
pub fn load(source: &ConfigSource) -> Result<Runtime, ConfigError> {
    let text = match source {
        ConfigSource::Embedded => embedded_default_toml(),
        ConfigSource::File(path) => std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: source.clone(),
            problems: vec![Problem::new(
                "",
                format!("cannot read the config file: {e}"),
            )],
        })?,
    };
    load_str(&text, source.clone())
}

/// Parse and validate config text; `source` names it in errors.
pub fn load_str(text: &str, source: ConfigSource) -> Result<Runtime, ConfigError> {
    let file = parse(text).map_err(|p| ConfigError {
        source: source.clone(),
        problems: vec![p],
    })?;
    validate(file, source.clone()).map_err(|problems| ConfigError { source, problems })
}

/// Parse TOML text into the schema, naming the key path and line of the first problem.
pub fn parse(text: &str) -> Result<schema::ConfigFile, Problem> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_problem(text, "", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        toml_problem(text, &path, e.inner())
    })
}

fn toml_problem(text: &str, path: &str, e: &toml::de::Error) -> Problem {
    let message = e.message().trim().to_string();
    let located = match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("line {line}, column {col}: {message}")
        }
        None => message,
    };
    Problem::new(path, located)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let text = r#"
[[backends]]
name = "a"
url = "http://127.0.0.1:1/v1"

[[routes]]
model = "m"
targets = [{ backend = "a", wieght = 3 }]
"#;
        let p = parse(text).unwrap_err();
        assert!(p.message.contains("wieght"), "{p:?}");
        assert!(p.path.starts_with("routes[0].targets[0]"), "{p:?}");
        assert!(p.message.contains("line 8"), "{p:?}");
    }

    #[test]
    fn unknown_table_is_an_error() {
        let p = parse("[serverr]\nlisten = \"x\"\n").unwrap_err();
        assert!(p.message.contains("serverr"), "{p:?}");
    }

    #[test]
    fn the_contract_example_parses_and_validates() {
        // SAFETY-free: tests set env for api_key_env in the example.
        let text = include_str!("../../../examples/configs/contract.toml");
        let file = parse(text).unwrap();
        assert_eq!(file.backends.len(), 2);
        assert_eq!(file.routes[0].targets.len(), 2);
    }
}
