//! `[telemetry]`, validated: where traces go, how they are sampled, whether content is
//! recorded, and how log lines are written.

use std::io::IsTerminal;

use super::Problem;
use super::schema;

/// `[telemetry]`, checked.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: String,
    pub sample_ratio: f64,
    pub capture_content: bool,
    pub log_format: LogFormat,
}

/// `[telemetry] log_format`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    #[default]
    Auto,
    Json,
    Text,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "auto" => Some(LogFormat::Auto),
            "json" => Some(LogFormat::Json),
            "text" => Some(LogFormat::Text),
            _ => None,
        }
    }

    /// Whether lines are JSON. `SWITCHYARD_LOG_FORMAT=json|text` overrides the config.
    pub fn json(self) -> bool {
        let chosen = match std::env::var("SWITCHYARD_LOG_FORMAT").as_deref() {
            Ok(v) => LogFormat::parse(v).unwrap_or(self),
            Err(_) => self,
        };
        match chosen {
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => !std::io::stderr().is_terminal(),
        }
    }
}

pub(super) fn validate_telemetry(
    t: &schema::TelemetrySection,
    problems: &mut Vec<Problem>,
) -> TelemetrySettings {
    let protocol = t.otlp_protocol.clone().unwrap_or_else(|| "grpc".into());
    if protocol != "grpc" && protocol != "http" {
        problems.push(Problem::new(
            "telemetry.otlp_protocol",
            format!("must be \"grpc\" or \"http\", got \"{protocol}\""),
        ));
    }
    if let Some(ep) = &t.otlp_endpoint
        && super::backend::backend_url(ep).is_err()
    {
        problems.push(Problem::new(
            "telemetry.otlp_endpoint",
            format!("\"{ep}\" is not an http(s) URL"),
        ));
    }
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        problems.push(Problem::new(
            "telemetry.sample_ratio",
            format!("must be between 0.0 and 1.0, got {sample_ratio}"),
        ));
    }
    let log_format = match t.log_format.as_deref() {
        None => LogFormat::Auto,
        Some(f) => LogFormat::parse(f).unwrap_or_else(|| {
            problems.push(Problem::new(
                "telemetry.log_format",
                format!("must be \"auto\", \"json\" or \"text\", got \"{f}\""),
            ));
            LogFormat::Auto
        }),
    };
    TelemetrySettings {
        otlp_endpoint: t.otlp_endpoint.clone(),
        otlp_protocol: protocol,
        sample_ratio,
        capture_content: t.capture_content.unwrap_or(false),
        log_format,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_keys_are_validated_with_their_paths() {
        let text = "[telemetry]\notlp_protocol = \"udp\"\nsample_ratio = 2.0\nlog_format = \"xml\"\ncapture_content = true\n";
        let err = super::super::load_str(text, super::super::ConfigSource::Embedded)
            .expect_err("three problems");
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"telemetry.otlp_protocol"), "{err}");
        assert!(paths.contains(&"telemetry.sample_ratio"), "{err}");
        assert!(paths.contains(&"telemetry.log_format"), "{err}");
        let ok = super::super::load_str(
            "[[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:1/v1\"\n[[routes]]\nmodel = \"m\"\ntargets = [{ backend = \"b\" }]\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\notlp_protocol = \"http\"\ncapture_content = true\nlog_format = \"json\"\n",
            super::super::ConfigSource::Embedded,
        )
        .expect("valid");
        let t = ok.telemetry.expect("telemetry");
        assert!(t.capture_content);
        assert_eq!(t.log_format, LogFormat::Json);
    }

    #[test]
    fn log_format_names() {
        assert_eq!(LogFormat::parse("json"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("yaml"), None);
    }
}
