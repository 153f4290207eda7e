//! The `shadow_pairs` table: one row per mirrored request, written in batches by one
//! thread, which also parses and compares each pair (`shadow::finish`) so that CPU work
//! stays off the serving threads.
//!
//! The writer owns its SQLite connection (WAL, so `switchyard shadow report` and the
//! governance ledger can read and write the same file meanwhile). It blocks for the first
//! pair, then takes whatever else arrived within `BATCH_WINDOW` (up to `BATCH_MAX`)
//! and writes them in one transaction: one fsync per batch instead of per pair.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use super::Stats;
use super::compare::Comparison;
use crate::services::governance::Governance;
use crate::services::governance::store::{Store, Write};

/// Pairs waiting for the writer; beyond this they are dropped and counted.
const CHANNEL: usize = 8192;
const BATCH_MAX: usize = 512;
const BATCH_WINDOW: Duration = Duration::from_millis(100);

/// One recorded pair.
#[derive(Debug, Clone, Default)]
pub struct Pair {
    pub ts_ms: i64,
    pub route: String,
    pub endpoint: String,
    pub stream: bool,
    pub primary_backend: String,
    pub primary_model: String,
    pub shadow_backend: String,
    pub shadow_model: String,
    pub primary_latency_ms: f64,
    pub shadow_latency_ms: Option<f64>,
    pub shadow_status: Option<u16>,
    pub primary_prompt_tokens: Option<u64>,
    pub primary_completion_tokens: Option<u64>,
    pub shadow_prompt_tokens: Option<u64>,
    pub shadow_completion_tokens: Option<u64>,
    pub primary_answer: Option<String>,
    pub shadow_answer: Option<String>,
    pub comparison: Option<Comparison>,
    pub validate_verdict: Option<String>,
    pub shadow_error: Option<String>,
    /// The shadow judge's score (1–10) of the shadow's answer against the served one.
    pub judge_score: Option<f64>,
    pub judge_reason: Option<String>,
    /// The pair was sent to the judge, which gave no score (failed call, unreadable reply).
    pub judge_error: Option<String>,
}

/// The table, created if missing.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS shadow_pairs (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    route TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    stream INTEGER NOT NULL,
    primary_backend TEXT NOT NULL,
    primary_model TEXT NOT NULL,
    shadow_backend TEXT NOT NULL,
    shadow_model TEXT NOT NULL,
    primary_latency_ms REAL NOT NULL,
    shadow_latency_ms REAL,
    shadow_status INTEGER,
    primary_prompt_tokens INTEGER,
    primary_completion_tokens INTEGER,
    shadow_prompt_tokens INTEGER,
    shadow_completion_tokens INTEGER,
    primary_answer TEXT,
    shadow_answer TEXT,
    exact_match INTEGER,
    json_equal INTEGER,
    similarity REAL,
    agree INTEGER,
    validate_verdict TEXT,
    shadow_error TEXT
);
CREATE INDEX IF NOT EXISTS shadow_pairs_route_ts ON shadow_pairs (route, ts_ms);
";

/// The judge's columns (`routes[].shadow.judge`), added to a table made before they
/// existed; plain columns so a rollout guard can query scores by route, backend and time.
const JUDGE_COLUMNS: &str = "
ALTER TABLE shadow_pairs ADD COLUMN judge_score REAL;
ALTER TABLE shadow_pairs ADD COLUMN judge_reason TEXT;
ALTER TABLE shadow_pairs ADD COLUMN judge_error TEXT;
";
const JUDGE_INDEX: &str = "CREATE INDEX IF NOT EXISTS shadow_pairs_judged ON shadow_pairs (route, shadow_backend, ts_ms) WHERE judge_score IS NOT NULL;";

/// Whether the table has the judge's columns (a store written by an older gateway has not).
pub fn has_judge_columns(conn: &Connection) -> bool {
    conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('shadow_pairs') WHERE name = 'judge_score'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .is_ok_and(|n| n > 0)
}

/// Open the store file with WAL and the table in place.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    if !has_judge_columns(&conn) {
        let tx =
            rusqlite::Transaction::new_unchecked(&conn, rusqlite::TransactionBehavior::Immediate)?;
        // Another writer may have added them meanwhile: check again under the lock.
        if !has_judge_columns(&tx) {
            tx.execute_batch(JUDGE_COLUMNS)?;
        }
        tx.commit()?;
    }
    conn.execute_batch(JUDGE_INDEX)?;
    Ok(conn)
}

/// Start the writer thread; pairs sent on the returned channel are stored.
pub fn spawn_writer(
    path: PathBuf,
    stats: Arc<Stats>,
    governance: Option<Arc<Governance>>,
) -> std::sync::mpsc::SyncSender<super::Finished> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<super::Finished>(CHANNEL);
    let spawned = std::thread::Builder::new()
        .name("shadow-store".into())
        .spawn(move || writer(path, rx, stats, governance));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the shadow store thread; shadow pairs will not be recorded");
    }
    tx
}

fn writer(
    path: PathBuf,
    rx: std::sync::mpsc::Receiver<super::Finished>,
    stats: Arc<Stats>,
    governance: Option<Arc<Governance>>,
) {
    // Background priority, as the ledger's writer: the serving threads come first.
    let _ = switchyard_otlp::pipeline::lower_thread_priority();
    // A PostgreSQL store takes the pairs through its own writer (batched, bounded, dropped
    // and counted while the database is down, flushed at shutdown), so every replica's
    // pairs land in the one database the reports read.
    let shared: Option<Arc<Store>> = governance
        .as_ref()
        .filter(|g| g.store.is_postgres())
        .map(|g| g.store.clone());
    // Opened on the first pair: a gateway without shadow traffic never creates the file.
    let mut conn: Option<Connection> = None;
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while let Ok(first) = rx.recv() {
        batch.push(super::finish(first, &stats, governance.as_deref()));
        let deadline = Instant::now() + BATCH_WINDOW;
        while batch.len() < BATCH_MAX {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(f) => batch.push(super::finish(f, &stats, governance.as_deref())),
                Err(_) => break,
            }
        }
        let taken = batch.len() as u64;
        if let Some(store) = &shared {
            submit_pg(store, std::mem::take(&mut batch), &stats);
            stats.pending.fetch_sub(taken, Ordering::Relaxed);
            continue;
        }
        if conn.is_none() {
            match open(&path) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot open the shadow store");
                    stats
                        .store_errors
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    batch.clear();
                    stats.pending.fetch_sub(taken, Ordering::Relaxed);
                    continue;
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            let n = batch.len() as u64;
            match insert(c, &batch) {
                Ok(()) => stats.recorded.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    tracing::error!(error = %e, pairs = n, "writing shadow pairs failed");
                    stats.store_errors.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
        batch.clear();
        stats.pending.fetch_sub(taken, Ordering::Relaxed);
    }
}

fn insert(conn: &mut Connection, pairs: &[Pair]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO shadow_pairs (ts_ms, route, endpoint, stream, primary_backend, primary_model,
             shadow_backend, shadow_model, primary_latency_ms, shadow_latency_ms, shadow_status,
             primary_prompt_tokens, primary_completion_tokens, shadow_prompt_tokens,
             shadow_completion_tokens, primary_answer, shadow_answer, exact_match, json_equal,
             similarity, agree, validate_verdict, shadow_error, judge_score, judge_reason,
             judge_error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)",
        )?;
        for p in pairs {
            let c = p.comparison;
            st.execute(params![
                p.ts_ms,
                p.route,
                p.endpoint,
                p.stream,
                p.primary_backend,
                p.primary_model,
                p.shadow_backend,
                p.shadow_model,
                p.primary_latency_ms,
                p.shadow_latency_ms,
                p.shadow_status,
                p.primary_prompt_tokens.map(|v| v as i64),
                p.primary_completion_tokens.map(|v| v as i64),
                p.shadow_prompt_tokens.map(|v| v as i64),
                p.shadow_completion_tokens.map(|v| v as i64),
                p.primary_answer,
                p.shadow_answer,
                c.map(|c| c.exact),
                c.and_then(|c| c.json_equal),
                c.map(|c| c.similarity),
                c.map(|c| c.agree),
                p.validate_verdict,
                p.shadow_error,
                p.judge_score,
                p.judge_reason,
                p.judge_error,
            ])?;
        }
    }
    tx.commit()
}

/// Hand a batch to the PostgreSQL store's writer: `recorded` counts it once queued there
/// (the store's own counters say what became of its queue), `store_errors` when the queue
/// is full.
fn submit_pg(store: &Store, pairs: Vec<Pair>, stats: &Stats) {
    let n = pairs.len() as u64;
    if store.submit(Write::Pg(Box::new(move |tx| insert_pg(tx, &pairs)))) {
        stats.recorded.fetch_add(n, Ordering::Relaxed);
    } else {
        stats.store_errors.fetch_add(n, Ordering::Relaxed);
    }
}

/// The table on PostgreSQL (migration `shadow-1`): SQLite's columns with its booleans kept
/// as 0/1 integers, so both answer the same aggregate queries.
pub const PG_SCHEMA: &str = "CREATE TABLE shadow_pairs (
    id BIGSERIAL PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    route TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    stream BIGINT NOT NULL,
    primary_backend TEXT NOT NULL,
    primary_model TEXT NOT NULL,
    shadow_backend TEXT NOT NULL,
    shadow_model TEXT NOT NULL,
    primary_latency_ms DOUBLE PRECISION NOT NULL,
    shadow_latency_ms DOUBLE PRECISION,
    shadow_status BIGINT,
    primary_prompt_tokens BIGINT,
    primary_completion_tokens BIGINT,
    shadow_prompt_tokens BIGINT,
    shadow_completion_tokens BIGINT,
    primary_answer TEXT,
    shadow_answer TEXT,
    exact_match BIGINT,
    json_equal BIGINT,
    similarity DOUBLE PRECISION,
    agree BIGINT,
    validate_verdict TEXT,
    shadow_error TEXT,
    judge_score DOUBLE PRECISION,
    judge_reason TEXT,
    judge_error TEXT
  );
  CREATE INDEX shadow_pairs_route_ts ON shadow_pairs (route, ts_ms);
  CREATE INDEX shadow_pairs_judged ON shadow_pairs (route, shadow_backend, ts_ms)
    WHERE judge_score IS NOT NULL;";

/// [`insert`] on PostgreSQL, inside the store writer's transaction.
pub fn insert_pg(
    tx: &mut postgres::Transaction<'_>,
    pairs: &[Pair],
) -> Result<(), postgres::Error> {
    let st = tx.prepare(
        "INSERT INTO shadow_pairs (ts_ms, route, endpoint, stream, primary_backend, primary_model,
         shadow_backend, shadow_model, primary_latency_ms, shadow_latency_ms, shadow_status,
         primary_prompt_tokens, primary_completion_tokens, shadow_prompt_tokens,
         shadow_completion_tokens, primary_answer, shadow_answer, exact_match, json_equal,
         similarity, agree, validate_verdict, shadow_error, judge_score, judge_reason,
         judge_error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                 $19, $20, $21, $22, $23, $24, $25, $26)",
    )?;
    let int = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    let flag = |v: Option<bool>| v.map(i64::from);
    for p in pairs {
        let c = p.comparison;
        tx.execute(
            &st,
            &[
                &p.ts_ms,
                &p.route,
                &p.endpoint,
                &i64::from(p.stream),
                &p.primary_backend,
                &p.primary_model,
                &p.shadow_backend,
                &p.shadow_model,
                &p.primary_latency_ms,
                &p.shadow_latency_ms,
                &p.shadow_status.map(i64::from),
                &int(p.primary_prompt_tokens),
                &int(p.primary_completion_tokens),
                &int(p.shadow_prompt_tokens),
                &int(p.shadow_completion_tokens),
                &p.primary_answer,
                &p.shadow_answer,
                &flag(c.map(|c| c.exact)),
                &flag(c.and_then(|c| c.json_equal)),
                &c.map(|c| c.similarity),
                &flag(c.map(|c| c.agree)),
                &p.validate_verdict,
                &p.shadow_error,
                &p.judge_score,
                &p.judge_reason,
                &p.judge_error,
            ],
        )?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn insert_for_test(conn: &mut Connection, pairs: &[Pair]) {
    insert(conn, pairs).expect("insert");
}
