//! `switchyard capture export`: captured request/answer pairs as `switchyard eval` dataset
//! lines (the served answer is `expected`), on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use crate::config;
use crate::config::state::DEFAULT_STORE;
use crate::services::capture::{ExportFilter, export as export_rows};
use crate::services::shadow::report::parse_since;

/// `switchyard capture export`.
pub fn export(
    config_path: Option<PathBuf>,
    route: Option<String>,
    since: Option<String>,
    limit: Option<u64>,
) -> ExitCode {
    let source = config::locate(config_path.as_deref());
    let path = match &source {
        config::ConfigSource::File(p) => {
            let text = match std::fs::read_to_string(p) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {}: cannot read the config file: {e}", p.display());
                    return ExitCode::from(2);
                }
            };
            match config::parse(&text) {
                Ok(f) => f
                    .state
                    .and_then(|s| s.path)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE)),
                Err(e) => {
                    eprintln!("error: {}: {}: {}", p.display(), e.path, e.message);
                    return ExitCode::from(2);
                }
            }
        }
        config::ConfigSource::Embedded => PathBuf::from(DEFAULT_STORE),
    };
    let since_ms = match since.as_deref().map(|s| parse_since(s, SystemTime::now())) {
        None => 0,
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            eprintln!("error: --since: {e}");
            return ExitCode::from(2);
        }
    };
    let conn = match super::open_report_store(
        &path,
        "captures",
        "nothing was captured",
        "nothing was captured (routes[].capture)",
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let filter = ExportFilter {
        route: route.as_deref(),
        since_ms,
        limit,
    };
    match export_rows(&conn, &filter) {
        Ok(lines) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for l in &lines {
                if writeln!(out, "{l}").is_err() {
                    return ExitCode::FAILURE;
                }
            }
            eprintln!("{} example(s) exported", lines.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
