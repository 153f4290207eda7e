//! `switchyard state migrate --to postgres://...`: copy a SQLite store (the config's
//! `[state] path`) into PostgreSQL, for a gateway moving from one machine to replicas.
//!
//! The target is migrated to the current schema first, then every table the PostgreSQL
//! store holds is copied in one transaction: all of it or nothing. A target that already
//! holds keys or ledger rows is refused (copying twice would double the spend).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use postgres::types::{ToSql, Type};

use super::keys::{ConfigOpt, store_file};
use crate::config::state::{PostgresSettings, check_postgres_url};
use crate::services::governance::{pg, store};

#[derive(Debug, Subcommand)]
pub enum StateCmd {
    /// Copy the SQLite store into PostgreSQL (keys, ledger, feedback, rollouts, captures,
    /// shadow pairs, config history).
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub cfg: ConfigOpt,
    /// The SQLite file [default: the config's `[state] path`]
    #[arg(long, value_name = "PATH")]
    pub from: Option<PathBuf>,
    /// The PostgreSQL database: `postgres://user@host:port/db` (no password inside).
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// The environment variable holding the database password.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
}

/// The tables copied, with their columns (ids of append-only tables are not copied: the
/// target numbers its rows, in the source's order).
const TABLES: &[(&str, &str)] = &[
    (
        "keys",
        "id, hash, prefix, team, tags, rpm, tpm, budget_daily, budget_monthly, created_ms, revoked_ms",
    ),
    (
        "ledger",
        "ts_ms, key_id, team, tags, route, backend, model, kind, stream, tokens_in, tokens_out, \
         cost_usd, baseline_usd, latency_ms, ttft_ms, status, outcome, estimated, usage_clamped, \
         cost_derived, request_id, saved_usd",
    ),
    (
        "feedback",
        "ts_ms, request_id, request_ts_ms, key_id, route, backend, model, score, comment",
    ),
    (
        "rollouts",
        "route, fingerprint, candidate, steps, state, step, weight, started_ms, step_started_ms, \
         updated_ms, \"window\", guards, reason",
    ),
    (
        "rollout_history",
        "route, fingerprint, at_ms, from_pos, to_pos, reason, weight, candidate_requests, \
         incumbent_requests",
    ),
    ("captures", "ts_ms, route, backend, model, request, answer"),
    (
        "shadow_pairs",
        "ts_ms, route, endpoint, stream, primary_backend, primary_model, shadow_backend, \
         shadow_model, primary_latency_ms, shadow_latency_ms, shadow_status, \
         primary_prompt_tokens, primary_completion_tokens, shadow_prompt_tokens, \
         shadow_completion_tokens, primary_answer, shadow_answer, exact_match, json_equal, \
         similarity, agree, validate_verdict, shadow_error, judge_score, judge_reason, judge_error",
    ),
    (
        "config_history",
        "at_ms, replica, version, origin, hash, text",
    ),
];

pub fn state(cmd: StateCmd) -> ExitCode {
    match cmd {
        StateCmd::Migrate(a) => match migrate(&a) {
            Ok(counts) => {
                for (table, n) in counts {
                    println!("{table}: {n} rows");
                }
                println!("copied into {}", a.to);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// One SQLite value as the PostgreSQL column of type `ty` takes it.
fn convert(v: rusqlite::types::Value, ty: &Type) -> Result<Box<dyn ToSql + Sync>, String> {
    use rusqlite::types::Value as V;
    Ok(match (v, ty) {
        (V::Null, t) if *t == Type::INT8 => Box::new(None::<i64>),
        (V::Null, t) if *t == Type::FLOAT8 => Box::new(None::<f64>),
        (V::Null, _) => Box::new(None::<String>),
        (V::Integer(i), t) if *t == Type::FLOAT8 => Box::new(i as f64),
        (V::Integer(i), t) if *t == Type::TEXT => Box::new(i.to_string()),
        (V::Integer(i), _) => Box::new(i),
        (V::Real(f), t) if *t == Type::INT8 => Box::new(f as i64),
        (V::Real(f), _) => Box::new(f),
        (V::Text(s), _) => Box::new(s),
        (V::Blob(_), _) => return Err("a BLOB value where the schema has none".into()),
    })
}

fn migrate(a: &MigrateArgs) -> Result<Vec<(&'static str, u64)>, String> {
    check_postgres_url(&a.to).map_err(|e| format!("--to: {e}"))?;
    let password = match &a.password_env {
        None => None,
        Some(var) => Some(
            std::env::var(var)
                .map_err(|_| format!("--password-env: environment variable {var} is not set"))?,
        ),
    };
    let target = PostgresSettings {
        url: a.to.clone(),
        password,
    };
    let from = match &a.from {
        Some(p) => p.clone(),
        None => store_file(a.cfg.config.as_deref())?,
    };
    if !from.exists() {
        return Err(format!("{}: no SQLite store there", from.display()));
    }
    // Brought up to date first, so every column the copy names exists.
    let src = store::open_and_migrate(&from).map_err(|e| e.to_string())?;
    // The shadow table is made by its writer on the first pair: made here if it never was.
    crate::services::shadow::store::open(&from)
        .map_err(|e| format!("{}: shadow_pairs: {e}", from.display()))?;
    let mut client = pg::open_and_migrate(&target).map_err(|e| e.to_string())?;
    let describe = |e: postgres::Error| pg::describe(&e);
    let mut tx = client.transaction().map_err(describe)?;
    for table in ["keys", "ledger"] {
        let n: i64 = tx
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .map_err(describe)?
            .get(0);
        if n > 0 {
            return Err(format!(
                "{}: the target already holds {n} {table} rows; migrate into an empty database",
                a.to
            ));
        }
    }
    let mut counts = Vec::new();
    for (table, cols) in TABLES {
        let ncols = cols.split(',').count();
        let placeholders: Vec<String> = (1..=ncols).map(|i| format!("${i}")).collect();
        let insert = tx
            .prepare(&format!(
                "INSERT INTO {table} ({cols}) VALUES ({})",
                placeholders.join(", ")
            ))
            .map_err(describe)?;
        let order = if *table == "keys" || *table == "rollouts" {
            "1"
        } else {
            "rowid"
        };
        let mut stmt = src
            .prepare(&format!("SELECT {cols} FROM {table} ORDER BY {order}"))
            .map_err(|e| format!("{}: {table}: {e}", from.display()))?;
        let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
        let mut n = 0u64;
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            let mut values = Vec::with_capacity(ncols);
            for (i, ty) in insert.params().iter().enumerate() {
                let v: rusqlite::types::Value = row.get(i).map_err(|e| e.to_string())?;
                values.push(convert(v, ty).map_err(|e| format!("{table}: {e}"))?);
            }
            let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|b| &**b).collect();
            tx.execute(&insert, &params)
                .map_err(|e| format!("{table}: {}", pg::describe(&e)))?;
            n += 1;
        }
        counts.push((*table, n));
    }
    // The record that client auth is on survives even a store whose keys were deleted.
    let auth_on: bool = src
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM governance_meta WHERE k = 'auth_on' AND v = 1)",
            [],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())?;
    if auth_on {
        tx.execute(
            "INSERT INTO governance_meta (k, v) VALUES ('auth_on', 1) ON CONFLICT DO NOTHING",
            &[],
        )
        .map_err(describe)?;
    }
    tx.commit().map_err(describe)?;
    Ok(counts)
}
