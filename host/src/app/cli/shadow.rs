//! `switchyard shadow report`: the shadow report of the store the config names.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use crate::config;
use crate::config::state::{DEFAULT_STORE, StoreTarget};
use crate::services::shadow::report::{Prices, compute, compute_pg, parse_since, print};

/// `switchyard shadow report`.
pub fn report(
    config_path: Option<PathBuf>,
    route: Option<String>,
    since: Option<String>,
    prices: Vec<String>,
    json: bool,
) -> ExitCode {
    let source = config::locate(config_path.as_deref());
    let mut price_map = Prices::default();
    let path = match &source {
        config::ConfigSource::File(p) => {
            let text = match std::fs::read_to_string(p) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {}: cannot read the config file: {e}", p.display());
                    return ExitCode::FAILURE;
                }
            };
            match config::parse(&text) {
                Ok(f) => {
                    let mut problems = Vec::new();
                    let gov = crate::config::governance::validate(&f, &mut problems);
                    if let Some(bad) = problems.iter().find(|q| q.path.starts_with("prices")) {
                        eprintln!("error: {}: {}: {}", p.display(), bad.path, bad.message);
                        return ExitCode::FAILURE;
                    }
                    price_map = Prices::from_config(gov);
                    f.state
                        .and_then(|s| s.path)
                        .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE))
                }
                Err(e) => {
                    eprintln!("error: {}: {}: {}", p.display(), e.path, e.message);
                    return ExitCode::FAILURE;
                }
            }
        }
        config::ConfigSource::Embedded => PathBuf::from(DEFAULT_STORE),
    };
    let since_ms = match since.as_deref().map(|s| parse_since(s, SystemTime::now())) {
        None => 0,
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for p in &prices {
        let parsed = p.split_once('=').and_then(|(m, v)| {
            let (i, o) = v.split_once(',')?;
            Some((
                m.to_string(),
                (i.trim().parse().ok()?, o.trim().parse().ok()?),
            ))
        });
        match parsed {
            Some((m, (i, o))) => price_map.set_model(m, i, o),
            None => {
                eprintln!(
                    "error: --price \"{p}\": expected MODEL=INPUT,OUTPUT (USD per million tokens)"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let target = match super::keys::store_target(config_path.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let computed = match &target {
        StoreTarget::Postgres(pg) => {
            // The pairs of every replica that shares the database.
            let mut client = match crate::services::governance::pg::open_and_migrate(pg) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            price_map.load_derived_pg(&mut client, since_ms);
            compute_pg(&mut client, route.as_deref(), since_ms, &price_map)
                .map_err(|e| crate::services::governance::pg::describe(&e))
        }
        StoreTarget::Sqlite(_) => {
            let conn = match super::open_report_store(
                &path,
                "shadow_pairs",
                "no shadow pairs were recorded",
                "no shadow pairs were recorded",
            ) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // `gpu_hour_usd` backends: the prices the ledger derived for them.
            price_map.load_derived(&conn, since_ms);
            compute(&conn, route.as_deref(), since_ms, &price_map).map_err(|e| e.to_string())
        }
    };
    match computed {
        Ok(reports) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "routes": serde_json::to_value(&reports).unwrap_or_default() })
                );
            } else {
                print(&target.describe(), since.as_deref(), &reports);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", target.describe());
            ExitCode::FAILURE
        }
    }
}
