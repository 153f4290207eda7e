//! The embedded default, used when no config file exists.
//!
//! A newcomer runs `switchyard serve` with nothing else and gets a working gateway: with
//! `OPENAI_API_KEY` set, every model goes to OpenAI unchanged (and `local` to a worker on
//! 127.0.0.1:9001); without it, everything goes to the local worker. The default is TOML so
//! `switchyard check` can print it as a starting point for a real config file.

/// The environment variable the default reads OpenAI's key from.
pub const OPENAI_KEY_ENV: &str = "OPENAI_API_KEY";

/// The embedded default config, chosen by whether `OPENAI_API_KEY` is set.
pub fn embedded_default_toml() -> String {
    let has_key = std::env::var(OPENAI_KEY_ENV).is_ok_and(|v| !v.trim().is_empty());
    let mut s = String::from(
        r#"# Switchyard embedded default (no config file found).
[server]
listen = "127.0.0.1:8080"

# A local worker inside the gateway: SmolLM2-135M-Instruct, fetched on first use.
[local_worker]
model = "smollm2"
listen = "127.0.0.1:9001"

[[backends]]
name = "local"
url = "http://127.0.0.1:9001/v1"
"#,
    );
    if has_key {
        s.push_str(
            r#"
[[backends]]
name = "openai"
url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"

# `local` reaches the worker; every other model goes to OpenAI under its own name.
[[routes]]
model = "local"
targets = [{ backend = "local", model = "smollm2-135m-instruct" }]

[[routes]]
model = "*"
targets = [{ backend = "openai" }]
"#,
        );
    } else {
        s.push_str(
            r#"
# OPENAI_API_KEY is not set: every model goes to the local worker.
[[routes]]
model = "*"
targets = [{ backend = "local", model = "smollm2-135m-instruct" }]
"#,
        );
    }
    s
}

/// One line describing the default, for the first log line.
pub fn describe() -> &'static str {
    if std::env::var(OPENAI_KEY_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        "OPENAI_API_KEY is set: all models route to OpenAI, model `local` to a local SmolLM2 worker at 127.0.0.1:9001 (fetched on first use)"
    } else {
        "OPENAI_API_KEY is not set: all models route to a local SmolLM2 worker at 127.0.0.1:9001 (fetched on first use)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, load_str};

    #[test]
    fn the_default_validates() {
        let rt = load_str(&embedded_default_toml(), ConfigSource::Embedded).unwrap();
        assert!(rt.route_for("gpt-4o").is_some());
    }
}
