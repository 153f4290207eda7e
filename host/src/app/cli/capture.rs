//! `switchyard capture export`: captured request/answer pairs as `switchyard eval` dataset
//! lines (the served answer is `expected`), on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use crate::config;
use crate::config::state::DEFAULT_STORE;
use crate::config::state::StoreTarget;
use crate::services::capture::{ExportFilter, export as export_rows, export_pg};
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
    let filter = ExportFilter {
        route: route.as_deref(),
        since_ms,
        limit,
    };
    let target = match super::keys::store_target(config_path.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let exported = match &target {
        // What every replica sharing the database captured.
        StoreTarget::Postgres(pg) => crate::services::governance::pg::open_and_migrate(pg)
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                export_pg(&mut c, &filter)
                    .map_err(|e| crate::services::governance::pg::describe(&e))
            }),
        StoreTarget::Sqlite(_) => {
            let conn = match super::open_report_store(
                &path,
                "captures",
                "nothing was captured",
                "nothing was captured (routes[].capture)",
            ) {
                Ok(c) => c,
                Err(code) => return code,
            };
            export_rows(&conn, &filter).map_err(|e| e.to_string())
        }
    };
    match exported {
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
            eprintln!("error: {}: {e}", target.describe());
            ExitCode::FAILURE
        }
    }
}
