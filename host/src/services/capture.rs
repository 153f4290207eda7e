//! Capture: a sample of a route's production requests and the answers served, stored as
//! golden-set material (`routes[].capture = { sample = 0.05 }`, exported by
//! `switchyard capture export` as `switchyard eval` dataset lines).
//!
//! ```text
//! request path:  served answer ─► sampled? ─► try_send(job) (full: dropped, counted) ─► done
//!                (a live stream: a task waits for its copy, then try_send)
//! writer thread: job ─► the route's adapt plugins mask the request ─► answer text
//!                ─► SQLite `captures`, one transaction per batch
//! ```
//!
//! The request path pays one random draw and one non-blocking send; parsing, the masking
//! plugins and SQLite run on the writer thread. Only chat completions are captured (the
//! dataset format is theirs).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rusqlite::{Connection, params};

use super::governance::store::{self, Migration, Store, Write};
use super::plugins::{CallerInfo, Pass, Plugins};
use super::shadow::{Served, compare};
use crate::base::Endpoint;
use crate::base::openai::RequestBody;
use crate::config::{Capture, Target};

/// Jobs waiting for the writer; beyond this they are dropped and counted.
const QUEUE: usize = 4096;
const BATCH_MAX: usize = 256;
const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// The captures table.
pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "capture-1",
    sql: "CREATE TABLE IF NOT EXISTS captures (
        id INTEGER PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        route TEXT NOT NULL,
        backend TEXT NOT NULL,
        model TEXT NOT NULL,
        request TEXT NOT NULL,
        answer TEXT NOT NULL
      );
      CREATE INDEX IF NOT EXISTS captures_route_ts ON captures (route, ts_ms);",
}];

/// Counters exported on /metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub stored: AtomicU64,
    pub dropped: AtomicU64,
    /// Sampled, but nothing to store (a failed stream, an answer without text).
    pub skipped: AtomicU64,
    pub failed: AtomicU64,
    /// Captures accepted and not yet handed to the store (or dropped): what a shutdown
    /// waits for before the store closes.
    pub pending: AtomicU64,
}

/// One sampled exchange, as the request path hands it over.
pub struct Job {
    pub route: Arc<str>,
    pub target: Target,
    /// The model name sent upstream.
    pub model: String,
    pub request: RequestBody,
    pub stream: bool,
    pub at: SystemTime,
}

struct Ready {
    job: Job,
    answer: Option<Bytes>,
}

/// The capture queue and its writer thread, owned by the gateway's services.
pub struct CaptureEngine {
    tx: SyncSender<Ready>,
    stats: Arc<Stats>,
}

impl CaptureEngine {
    /// Start the writer; rows go to the store file at `path` (created on the first
    /// capture), or, with `shared` (a PostgreSQL store), through that store's writer.
    pub fn start(
        path: PathBuf,
        shared: Option<Arc<Store>>,
        plugins: Arc<Plugins>,
    ) -> CaptureEngine {
        let stats = Arc::new(Stats::default());
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let st = stats.clone();
        let spawned = std::thread::Builder::new()
            .name("capture-store".into())
            .spawn(move || writer(path, shared, rx, st, plugins));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the capture thread; nothing will be captured");
        }
        CaptureEngine { tx, stats }
    }

    /// Is this request captured? One draw.
    pub fn sampled(&self, c: &Capture) -> bool {
        c.sample >= 1.0 || (c.sample > 0.0 && fastrand::f64() < c.sample)
    }

    /// Hand a sampled exchange over. Never waits: a full queue drops it (and counts it).
    pub fn capture(&self, job: Job, served: Served) {
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        match served {
            Served::Complete(answer) => self.send(Ready { job, answer }),
            Served::Stream(rx) => {
                let tx = self.tx.clone();
                let stats = self.stats.clone();
                tokio::spawn(async move {
                    let answer = match tokio::time::timeout(Duration::from_secs(3600), rx).await {
                        Ok(Ok(s)) => s.sse,
                        _ => None,
                    };
                    if tx.try_send(Ready { job, answer }).is_err() {
                        stats.pending.fetch_sub(1, Ordering::Relaxed);
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        }
    }

    fn send(&self, r: Ready) {
        if self.tx.try_send(r).is_err() {
            self.stats.pending.fetch_sub(1, Ordering::Relaxed);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Captures accepted that have not reached the store yet.
    pub fn pending(&self) -> u64 {
        self.stats.pending.load(Ordering::Relaxed)
    }

    /// Prometheus lines for the capture counters.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let s = &self.stats;
        let _ = write!(
            out,
            "# HELP switchyard_capture_total Sampled request/answer pairs (routes[].capture), by result: stored, dropped (queue full), skipped (no answer text), failed (store error).\n# TYPE switchyard_capture_total counter\n\
switchyard_capture_total{{result=\"stored\"}} {}\nswitchyard_capture_total{{result=\"dropped\"}} {}\nswitchyard_capture_total{{result=\"skipped\"}} {}\nswitchyard_capture_total{{result=\"failed\"}} {}\n",
            s.stored.load(Ordering::Relaxed),
            s.dropped.load(Ordering::Relaxed),
            s.skipped.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
        );
    }
}

/// Takes a batch's captures off `pending` once the batch is handled, however that ends.
struct DoneOnDrop<'a>(&'a AtomicU64, u64);

impl Drop for DoneOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// A row to insert.
struct Row {
    ts_ms: i64,
    route: String,
    backend: String,
    model: String,
    request: String,
    answer: String,
}

/// The request as stored: the route's `adapt` plugins' rewrite (masking) of the client's
/// request for the target that answered, else the request as sent.
fn masked_request(plugins: &Plugins, job: &Job) -> Result<Bytes, String> {
    let pass = Pass::new(
        plugins,
        &job.request,
        Endpoint::ChatCompletions,
        &http::HeaderMap::new(),
        CallerInfo::default(),
    );
    match pass.adapt(&job.target, &job.model) {
        Ok(Some(b)) => Ok(b.bytes().clone()),
        Ok(None) => Ok(job.request.bytes().clone()),
        Err(e) => Err(e.to_string()),
    }
}

fn row(plugins: &Plugins, r: Ready, stats: &Stats) -> Option<Row> {
    let Ready { job, answer } = r;
    let text = answer.as_deref().and_then(|b| {
        if job.stream {
            Some(compare::extract_stream(b))
        } else {
            compare::extract(b)
        }
    });
    let Some(answer) = text.map(|x| x.answer_text()).filter(|t| !t.is_empty()) else {
        stats.skipped.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let request = match masked_request(plugins, &job) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            // Unmasked content must not be stored when masking failed.
            tracing::warn!(route = %job.route, error = %e, "capture: the adapt plugins failed; not stored");
            stats.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    Some(Row {
        ts_ms: job
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        route: job.route.to_string(),
        backend: job.target.backend.name.to_string(),
        model: job.model,
        request,
        answer,
    })
}

fn writer(
    path: PathBuf,
    shared: Option<Arc<Store>>,
    rx: Receiver<Ready>,
    stats: Arc<Stats>,
    plugins: Arc<Plugins>,
) {
    // Opened on the first capture: a gateway that captures nothing never touches the file.
    let mut conn: Option<Connection> = None;
    let mut batch = Vec::with_capacity(BATCH_MAX);
    // Background priority, as the ledger's writer: the serving threads come first.
    let _ = switchyard_otlp::pipeline::lower_thread_priority();
    // A full batch last time: more are waiting, no need to let them gather.
    let mut behind = false;
    while let Ok(first) = rx.recv() {
        // Let the window's pairs gather before working on them: a pair handed over while this
        // thread waited would wake it, and at a few hundred captures a second those wake-ups
        // cost the serving threads more than the inserts do.
        if !behind {
            std::thread::sleep(BATCH_WINDOW);
        }
        batch.extend(row(&plugins, first, &stats));
        let mut taken = 1;
        while taken < BATCH_MAX {
            match rx.try_recv() {
                Ok(r) => {
                    taken += 1;
                    batch.extend(row(&plugins, r, &stats));
                }
                Err(_) => break,
            }
        }
        behind = taken == BATCH_MAX;
        let _done = DoneOnDrop(&stats.pending, taken as u64);
        if batch.is_empty() {
            continue;
        }
        if let Some(store) = &shared {
            // Batched, bounded and flushed by the store's writer; dropped and counted there
            // while PostgreSQL is down.
            // `stored` counts what the store's queue took; its own counters say the rest.
            let rows = std::mem::take(&mut batch);
            let n = rows.len() as u64;
            if store.submit(Write::Pg(Box::new(move |tx| insert_pg(tx, &rows)))) {
                stats.stored.fetch_add(n, Ordering::Relaxed);
            } else {
                stats.dropped.fetch_add(n, Ordering::Relaxed);
            }
            continue;
        }
        if conn.is_none() {
            match store::open_and_migrate(&path) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the capture store");
                    stats
                        .failed
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    batch.clear();
                    continue;
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            let n = batch.len() as u64;
            match insert(c, &batch) {
                Ok(()) => stats.stored.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    tracing::error!(error = %e, rows = n, "writing captures failed");
                    stats.failed.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
        batch.clear();
    }
}

fn insert(conn: &mut Connection, rows: &[Row]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO captures (ts_ms, route, backend, model, request, answer) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for r in rows {
            st.execute(params![
                r.ts_ms, r.route, r.backend, r.model, r.request, r.answer
            ])?;
        }
    }
    tx.commit()
}

/// [`insert`] on PostgreSQL, inside the store writer's transaction.
fn insert_pg(tx: &mut postgres::Transaction<'_>, rows: &[Row]) -> Result<(), postgres::Error> {
    let st = tx.prepare(
        "INSERT INTO captures (ts_ms, route, backend, model, request, answer) VALUES ($1, $2, $3, $4, $5, $6)",
    )?;
    for r in rows {
        tx.execute(
            &st,
            &[
                &r.ts_ms, &r.route, &r.backend, &r.model, &r.request, &r.answer,
            ],
        )?;
    }
    Ok(())
}

/// What `switchyard capture export` selects.
#[derive(Debug, Default)]
pub struct ExportFilter<'a> {
    pub route: Option<&'a str>,
    pub since_ms: i64,
    /// The most recent N.
    pub limit: Option<u64>,
}

/// Dataset lines (`switchyard eval`'s format) for the captures `f` selects, oldest first:
/// the stored request without `model` and the stream settings, `expected` = the served
/// answer, `id` = `<route>-<row id>`.
pub fn export(conn: &Connection, f: &ExportFilter<'_>) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(
        "SELECT id, route, request, answer FROM (
           SELECT id, route, request, answer, ts_ms FROM captures
           WHERE (?1 IS NULL OR route = ?1) AND ts_ms >= ?2
           ORDER BY ts_ms DESC, id DESC LIMIT ?3)
         ORDER BY ts_ms, id",
    )?;
    let limit = f.limit.map(|l| l as i64).unwrap_or(-1);
    let rows = st.query_map(params![f.route, f.since_ms, limit], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    Ok(lines(rows.collect::<rusqlite::Result<Vec<_>>>()?))
}

/// [`export`] from a PostgreSQL store: what every replica captured.
pub fn export_pg(
    client: &mut postgres::Client,
    f: &ExportFilter<'_>,
) -> Result<Vec<String>, postgres::Error> {
    let limit = f.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    let rows = client.query(
        "SELECT id, route, request, answer FROM (
           SELECT id, route, request, answer, ts_ms FROM captures
           WHERE ($1::TEXT IS NULL OR route = $1) AND ts_ms >= $2
           ORDER BY ts_ms DESC, id DESC LIMIT $3) c
         ORDER BY ts_ms, id",
        &[&f.route, &f.since_ms, &limit],
    )?;
    Ok(lines(
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect(),
    ))
}

/// Dataset lines from (id, route, request, answer) rows.
fn lines(rows: Vec<(i64, String, String, String)>) -> Vec<String> {
    let mut out = Vec::new();
    for (id, route, request, answer) in rows {
        let Ok(serde_json::Value::Object(mut m)) = serde_json::from_str(&request) else {
            continue;
        };
        for k in ["model", "stream", "stream_options"] {
            m.remove(k);
        }
        let mut line = serde_json::Map::new();
        line.insert("id".into(), format!("{route}-{id}").into());
        line.extend(m);
        line.insert("expected".into(), answer.into());
        out.push(serde_json::Value::Object(line).to_string());
    }
    out
}
