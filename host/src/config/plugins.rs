//! `[plugins]`, checked: where plugins live, how long and how much memory a call may
//! take, what a failing call does to its request, and each plugin's config values.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Problem;
use super::schema::{PluginOverrideSection, PluginsSection};

/// Default `[plugins] timeout_ms`: generous for a policy that runs in microseconds, short
/// enough that a runaway plugin costs a request little.
pub const DEFAULT_TIMEOUT_MS: u64 = 50;
/// Default `[plugins] memory_mb`: Python and JavaScript components need tens of MiB.
pub const DEFAULT_MEMORY_MB: u64 = 128;
/// Default `[plugins] cache_dir`: `$XDG_CACHE_HOME/switchyard/plugins`, else
/// `$HOME/.cache/switchyard/plugins`; with neither set the cache is off. Never relative to
/// the working directory: loading cached code runs it, so the folder must be one only the
/// gateway's user writes (the engine checks that before using it).
pub fn default_cache_dir() -> Option<PathBuf> {
    let from = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    from("XDG_CACHE_HOME")
        .or_else(|| from("HOME").map(|h| h.join(".cache")))
        .map(|base| base.join("switchyard").join("plugins"))
}

/// What happens to a request when a plugin call fails (trap, timeout, memory, bad return).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Carry on as if the plugin were not there (logged and counted).
    Continue,
    /// Fail the request with a `plugin_failed` error.
    Reject,
}

/// How long a call of one plugin may run, how much memory its instance may hold, what its
/// failure does, and whether it validates streams: `[plugins]` defaults, replaced key by key
/// by `[plugins.overrides.<name>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginOptions {
    pub timeout: Duration,
    pub memory_bytes: usize,
    pub on_error: OnError,
    /// `validate_streams = "buffer"`: streamed answers are held until complete so this
    /// plugin's `validate` sees them (only matters for plugins with that stage).
    pub hold_streams: bool,
    /// `validate_when`: which answers this plugin's `validate` is called for.
    pub validate_when: ValidateWhen,
}

/// Which answers a `validate` plugin is called for (`validate_when`). A validator that only
/// judges JSON answers says so here, and every other request skips the call: its request and
/// answer are not converted, copied into the plugin and read back for a verdict known in
/// advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidateWhen {
    /// Every answer (the default).
    Always,
    /// Only answers to requests with any of these.
    Only {
        /// The client asked for JSON (`response_format` `json_object` or `json_schema`).
        json: bool,
        /// The request offers tools.
        tools: bool,
    },
}

impl ValidateWhen {
    /// `validate_when` at `key`: `"json"`, `"tools"` or `"always"`, at least one.
    fn parse(key: &str, values: &[String], problems: &mut Vec<Problem>) -> Option<ValidateWhen> {
        if values.is_empty() {
            problems.push(Problem::new(
                key,
                "an empty list would never validate; leave the key out (or write [\"always\"]) \
                 to validate every answer",
            ));
            return None;
        }
        let (mut json, mut tools, mut always) = (false, false, false);
        for (i, v) in values.iter().enumerate() {
            match v.as_str() {
                "json" => json = true,
                "tools" => tools = true,
                "always" => always = true,
                other => problems.push(Problem::new(
                    format!("{key}[{i}]"),
                    format!("must be \"json\", \"tools\" or \"always\", got {other:?}"),
                )),
            }
        }
        Some(if always {
            ValidateWhen::Always
        } else {
            ValidateWhen::Only { json, tools }
        })
    }
}

/// `[plugins]`, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub dir: PathBuf,
    pub order: Vec<String>,
    /// The options of a plugin without overrides.
    pub defaults: PluginOptions,
    /// `[plugins.overrides.<name>]`, resolved against the defaults.
    pub overrides: HashMap<String, PluginOptions>,
    pub cache_dir: Option<PathBuf>,
    /// Lower-case header names plugins may see.
    pub headers: Vec<String>,
    pub watch: bool,
    /// `instances = "per-call"`: a fresh instance for every call instead of a warm pool.
    pub per_call_instances: bool,
    /// `[plugins.config.<name>]`, values rendered as text for `config-get`.
    pub config: HashMap<String, Arc<HashMap<String, String>>>,
}

/// `timeout_ms`, `memory_mb`, `on_error`, `validate_streams` and `validate_when` at `prefix`
/// (`plugins` or `plugins.overrides.<name>`), each falling back to `base`.
fn limits(
    prefix: &str,
    keys: &PluginOverrideSection,
    base: PluginOptions,
    problems: &mut Vec<Problem>,
) -> PluginOptions {
    let mut l = base;
    if let Some(ms) = keys.timeout_ms {
        if (1..=60_000).contains(&ms) {
            l.timeout = Duration::from_millis(ms);
        } else {
            problems.push(Problem::new(
                format!("{prefix}.timeout_ms"),
                format!("must be between 1 and 60000 milliseconds, got {ms}"),
            ));
        }
    }
    if let Some(mb) = keys.memory_mb {
        if (1..=4096).contains(&mb) {
            l.memory_bytes = usize::try_from(mb * 1024 * 1024).unwrap_or(usize::MAX);
        } else {
            problems.push(Problem::new(
                format!("{prefix}.memory_mb"),
                format!("must be between 1 and 4096 MiB, got {mb}"),
            ));
        }
    }
    match keys.on_error.as_deref() {
        None => {}
        Some("continue") => l.on_error = OnError::Continue,
        Some("reject") => l.on_error = OnError::Reject,
        Some(other) => problems.push(Problem::new(
            format!("{prefix}.on_error"),
            format!("must be \"continue\" or \"reject\", got {other:?}"),
        )),
    }
    match keys.validate_streams.as_deref() {
        None => {}
        Some("skip") => l.hold_streams = false,
        Some("buffer") => l.hold_streams = true,
        Some(other) => problems.push(Problem::new(
            format!("{prefix}.validate_streams"),
            format!("must be \"skip\" or \"buffer\", got {other:?}"),
        )),
    }
    if let Some(values) = &keys.validate_when
        && let Some(w) = ValidateWhen::parse(&format!("{prefix}.validate_when"), values, problems)
    {
        l.validate_when = w;
    }
    l
}

impl Settings {
    /// Check `[plugins]`; `None` when there is no `dir` (plugins off).
    pub fn validate(s: &PluginsSection, problems: &mut Vec<Problem>) -> Option<Settings> {
        let dir = s.dir.clone()?;
        let builtin = PluginOptions {
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            memory_bytes: usize::try_from(DEFAULT_MEMORY_MB * 1024 * 1024).unwrap_or(usize::MAX),
            on_error: OnError::Continue,
            hold_streams: false,
            validate_when: ValidateWhen::Always,
        };
        // The section's own keys are the defaults' overrides of the built-in values.
        let section = PluginOverrideSection {
            timeout_ms: s.timeout_ms,
            memory_mb: s.memory_mb,
            on_error: s.on_error.clone(),
            validate_streams: s.validate_streams.clone(),
            validate_when: s.validate_when.clone(),
        };
        let defaults = limits("plugins", &section, builtin, problems);
        let mut overrides = HashMap::new();
        for (name, o) in s.overrides.iter().flatten() {
            let prefix = format!("plugins.overrides.{name}");
            if name.is_empty() {
                problems.push(Problem::new(prefix.clone(), "a plugin name is required"));
            }
            let l = limits(&prefix, o, defaults, problems);
            overrides.insert(name.clone(), l);
        }
        let per_call_instances = match s.instances.as_deref() {
            None | Some("pooled") => false,
            Some("per-call") => true,
            Some(other) => {
                problems.push(Problem::new(
                    "plugins.instances",
                    format!("must be \"pooled\" or \"per-call\", got {other:?}"),
                ));
                false
            }
        };
        let order = s.order.clone().unwrap_or_default();
        for (i, name) in order.iter().enumerate() {
            if name.is_empty() || order[..i].contains(name) {
                problems.push(Problem::new(
                    format!("plugins.order[{i}]"),
                    format!("{name:?} is empty or listed twice"),
                ));
            }
        }
        let cache_dir = match &s.cache_dir {
            Some(d) if d.as_os_str().is_empty() => None,
            Some(d) => Some(d.clone()),
            None => default_cache_dir(),
        };
        let mut headers = Vec::new();
        for (i, h) in s.headers.iter().flatten().enumerate() {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                problems.push(Problem::new(
                    format!("plugins.headers[{i}]"),
                    format!("{h:?} is not a valid header name"),
                ));
            }
            headers.push(h.to_ascii_lowercase());
        }
        let mut config = HashMap::new();
        for (name, table) in s.config.iter().flatten() {
            let values = table
                .iter()
                .map(|(k, v)| {
                    let path = format!("plugins.config.{name}.{k}");
                    (k.clone(), config_value(&path, v, problems))
                })
                .collect();
            config.insert(name.clone(), Arc::new(values));
        }
        Some(Settings {
            dir,
            order,
            defaults,
            overrides,
            cache_dir,
            headers,
            watch: s.watch.unwrap_or(true),
            per_call_instances,
            config,
        })
    }

    /// The config values of plugin `name` (empty when it has none).
    pub fn config_for(&self, name: &str) -> Arc<HashMap<String, String>> {
        self.config.get(name).cloned().unwrap_or_default()
    }

    /// The options of plugin `name`.
    pub fn options_for(&self, name: &str) -> PluginOptions {
        self.overrides.get(name).copied().unwrap_or(self.defaults)
    }

    /// The most memory any plugin may have (what the engine reserves per instance).
    pub fn largest_memory(&self) -> usize {
        self.overrides
            .values()
            .map(|l| l.memory_bytes)
            .fold(self.defaults.memory_bytes, usize::max)
    }

    /// The shortest deadline of any plugin (what the engine's epoch ticks must resolve).
    pub fn shortest_timeout(&self) -> Duration {
        self.overrides
            .values()
            .map(|l| l.timeout)
            .fold(self.defaults.timeout, Duration::min)
    }
}

/// A config value's text: `{ from_file = "PATH" }` is the file's content (read on every load
/// and reload, so a model or prompt file changes with the config; a relative path is
/// relative to the working directory, like `dir`), anything else as [`value_text`].
fn config_value(path: &str, v: &toml::Value, problems: &mut Vec<Problem>) -> String {
    let file = match v {
        toml::Value::Table(t) if t.len() == 1 => t.get("from_file"),
        _ => None,
    };
    match file {
        Some(toml::Value::String(file)) => match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                problems.push(Problem::new(
                    format!("{path}.from_file"),
                    format!("cannot read {file:?}: {e}"),
                ));
                String::new()
            }
        },
        Some(_) => {
            problems.push(Problem::new(
                format!("{path}.from_file"),
                "must be a file path (a string)",
            ));
            String::new()
        }
        None => value_text(v),
    }
}

/// A TOML value as the text `config-get` returns: strings bare, scalars in TOML spelling,
/// arrays and tables as JSON (which policies can parse with any JSON library).
fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigSource, load_str};

    #[test]
    fn every_plugins_problem_is_reported_with_its_key() {
        let text = r#"
[plugins]
dir = "p"
timeout_ms = 0
memory_mb = 100000
on_error = "explode"
instances = "sometimes"
order = ["a", "a"]
headers = ["bad header"]
"#;
        let problems = load_str(text, ConfigSource::Embedded).unwrap_err().problems;
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "plugins.timeout_ms",
            "plugins.memory_mb",
            "plugins.on_error",
            "plugins.instances",
            "plugins.order[1]",
            "plugins.headers[0]",
        ] {
            assert!(paths.contains(&want), "{want} missing from {problems:?}");
        }
    }

    #[test]
    fn overrides_replace_the_defaults_key_by_key_and_are_checked() {
        let text = r#"
[plugins]
dir = "p"
timeout_ms = 200
memory_mb = 64
on_error = "reject"
[plugins.overrides.slow]
timeout_ms = 2000
[plugins.overrides.hungry]
memory_mb = 512
on_error = "continue"
validate_streams = "buffer"
validate_when = ["json", "tools"]

[[backends]]
name = "b"
url = "http://127.0.0.1:9/v1"

[[routes]]
model = "*"
targets = [{ backend = "b" }]
"#;
        let rt = load_str(text, ConfigSource::Embedded).unwrap();
        let s = rt.plugins.as_ref().unwrap();
        let mib = 1024 * 1024;
        let slow = s.options_for("slow");
        assert_eq!(slow.timeout.as_millis(), 2000);
        assert_eq!(
            slow.memory_bytes,
            64 * mib,
            "unset keys keep the section's value"
        );
        assert_eq!(slow.on_error, super::OnError::Reject);
        let hungry = s.options_for("hungry");
        assert_eq!(hungry.timeout.as_millis(), 200);
        assert_eq!(hungry.memory_bytes, 512 * mib);
        assert_eq!(hungry.on_error, super::OnError::Continue);
        assert!(hungry.hold_streams && !slow.hold_streams);
        assert_eq!(
            hungry.validate_when,
            super::ValidateWhen::Only {
                json: true,
                tools: true
            }
        );
        assert_eq!(slow.validate_when, super::ValidateWhen::Always);
        assert_eq!(s.options_for("other"), s.defaults);
        assert_eq!(s.largest_memory(), 512 * mib);
        assert_eq!(s.shortest_timeout().as_millis(), 200);

        let bad = r#"
[plugins]
dir = "p"
[plugins.overrides.x]
timeout_ms = 0
memory_mb = 5000
on_error = "shrug"
validate_streams = "sometimes"
validate_when = ["json", "sometimes"]
[plugins.overrides.y]
validate_when = []
"#;
        let problems = load_str(bad, ConfigSource::Embedded).unwrap_err().problems;
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "plugins.overrides.x.timeout_ms",
            "plugins.overrides.x.memory_mb",
            "plugins.overrides.x.on_error",
            "plugins.overrides.x.validate_streams",
            "plugins.overrides.x.validate_when[1]",
            "plugins.overrides.y.validate_when",
        ] {
            assert!(paths.contains(&want), "{want} missing from {problems:?}");
        }
        let unknown = "[plugins]\ndir = \"p\"\n[plugins.overrides.x]\ndeadline = 5\n";
        let err = load_str(unknown, ConfigSource::Embedded).unwrap_err();
        assert!(format!("{err:?}").contains("deadline"), "{err:?}");
    }

    #[test]
    fn config_tables_become_text_values() {
        let text = r#"
[plugins]
dir = "p"
[plugins.config.router]
name = "local"
max = 400
ratio = 0.5
on = true
list = ["a", "b"]

[[backends]]
name = "b"
url = "http://127.0.0.1:9/v1"

[[routes]]
model = "*"
targets = [{ backend = "b" }]
"#;
        let rt = load_str(text, ConfigSource::Embedded).unwrap();
        let s = rt.plugins.as_ref().unwrap();
        let c = s.config_for("router");
        assert_eq!(c["name"], "local");
        assert_eq!(c["max"], "400");
        assert_eq!(c["ratio"], "0.5");
        assert_eq!(c["on"], "true");
        assert_eq!(c["list"], r#"["a","b"]"#);
        assert!(s.config_for("other").is_empty());
        assert_eq!(s.defaults.timeout.as_millis(), 50);
    }

    #[test]
    fn a_from_file_value_is_the_files_text_and_a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("router.json");
        std::fs::write(&model, r#"{"format":1}"#).unwrap();
        let text = |file: &std::path::Path| {
            format!(
                "[plugins]\ndir = \"p\"\n[plugins.config.learned-router]\nmodel = {{ from_file = {:?} }}\n\n[[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:9/v1\"\n\n[[routes]]\nmodel = \"*\"\ntargets = [{{ backend = \"b\" }}]\n",
                file.display().to_string()
            )
        };
        let rt = load_str(&text(&model), ConfigSource::Embedded).unwrap();
        let c = rt.plugins.as_ref().unwrap().config_for("learned-router");
        assert_eq!(c["model"], r#"{"format":1}"#);
        let err = load_str(&text(&dir.path().join("gone.json")), ConfigSource::Embedded)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("plugins.config.learned-router.model.from_file")
                && err.contains("gone.json"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod example {
    #[test]
    fn the_plugins_example_config_parses() {
        let text = include_str!("../../../examples/configs/plugins.toml");
        let file = crate::config::parse(text).unwrap();
        let mut problems = Vec::new();
        let s = super::Settings::validate(file.plugins.as_ref().unwrap(), &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.order.len(), 3);
        assert_eq!(s.config_for("complexity-router")["max_tokens"], "400");
        assert_eq!(
            s.options_for("json-validator").on_error,
            super::OnError::Reject
        );
    }
}
