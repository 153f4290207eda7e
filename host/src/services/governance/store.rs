//! The embedded store: one SQLite file (`[state] path`) holding keys, the ledger and shadow
//! pairs, written off the request path.
//!
//! Requests never wait on SQLite. They hand a [`Write`] to a bounded channel; one writer
//! thread drains it and commits whatever has queued up in one transaction (a batch), so a
//! burst of thousands of ledger rows costs a handful of fsyncs. When the queue is full the
//! write is dropped and counted (`switchyard_store_dropped_total`) rather than stalling
//! traffic. [`Store::close`] (called by `serve` after the server has drained) writes every
//! queued item before it returns, so a clean shutdown loses nothing.
//!
//! The file is in WAL mode so the CLI (`switchyard keys`, `switchyard spend`) and the
//! gateway's own readers work while the writer commits. Each module owns its tables and
//! registers its migrations in [`MIGRATIONS`] under a unique name; applied names are kept in
//! `schema_migrations`, so migrations from different modules never collide on a number.
//!
//! With `[state] postgres` the same store runs on PostgreSQL ([`super::pg`]): the same
//! queue, the same counters, a writer that inserts a batch's ledger rows with multi-row
//! `INSERT`s. When the database is unreachable the writer holds its batch and reconnects
//! with backoff; meanwhile the queue fills and further writes are dropped and counted, so
//! requests never wait on the database. Whoever submits a write does not know which
//! backend takes it, except for the rare non-ledger writes, which come in both dialects.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::config::state::{PostgresSettings, StoreTarget};

/// Default capacity of the write queue (items, not bytes).
pub const DEFAULT_QUEUE: usize = 65_536;
/// Most items committed in one transaction.
const MAX_BATCH: usize = 4096;
/// How long the writer lets writes gather after the first one of a batch arrives.
const LINGER: Duration = Duration::from_millis(10);

/// A migration: a unique name and the SQL that applies it.
pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every module's migrations, applied in this order, each once.
pub const MIGRATIONS: &[&[Migration]] = &[
    super::keys::MIGRATIONS,
    super::ledger::MIGRATIONS,
    crate::services::capture::MIGRATIONS,
    super::feedback::MIGRATIONS,
    crate::services::rollout::state::MIGRATIONS,
    crate::services::config_history::MIGRATIONS,
];

/// A write run inside the writer's current transaction.
pub type WriteFn = Box<dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send>;
/// The same for the PostgreSQL writer. `Fn`, not `FnOnce`: a batch whose connection drops
/// under it is rolled back and run again on the next connection, so a write must not have
/// effects outside its transaction.
pub type PgWriteFn =
    Box<dyn Fn(&mut postgres::Transaction<'_>) -> Result<(), postgres::Error> + Send>;

/// One write for the writer thread.
pub enum Write {
    /// A ledger row (the common case, no boxing of a closure).
    Ledger(Box<super::ledger::Row>),
    /// Any other write, run inside the current batch's transaction (SQLite).
    Other(WriteFn),
    /// Any other write on PostgreSQL (see [`Store::is_postgres`]).
    Pg(PgWriteFn),
    /// Reply once everything queued before this is committed.
    Flush(std::sync::mpsc::Sender<()>),
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("state store {path}: {detail}")]
pub struct StoreError {
    pub path: String,
    pub detail: String,
}

/// Counters the metrics endpoint shows.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
    pub batches: AtomicU64,
    /// 1 while the writer reaches its database, 0 while it is reconnecting.
    pub up: AtomicU64,
}

/// The store: where it is and the queue to its writer thread.
pub struct Store {
    path: PathBuf,
    target: StoreTarget,
    /// Set by `close`: a writer retrying an unreachable database gives up after a deadline.
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// Read-locked by every submit (uncontended); write-locked once, by `close`.
    tx: RwLock<Option<SyncSender<Write>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    pub stats: Arc<StoreStats>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("target", &self.target.describe())
            .finish()
    }
}

/// Open a connection to the store file with the settings every user of it needs.
pub fn connect(path: &Path) -> Result<Connection, StoreError> {
    let err = |e: rusqlite::Error| StoreError {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    let conn = Connection::open(path).map_err(err)?;
    // Readers and the writer share the file; wait instead of failing on a busy lock.
    conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )
    .map_err(err)?;
    Ok(conn)
}

/// Open (creating if needed) and migrate the store file.
pub fn open_and_migrate(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        return Err(StoreError {
            path: path.display().to_string(),
            detail: format!("the folder {} does not exist", dir.display()),
        });
    }
    let mut conn = connect(path)?;
    migrate(&mut conn).map_err(|e| StoreError {
        path: path.display().to_string(),
        detail: format!("migration failed: {e}"),
    })?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_ms INTEGER NOT NULL)",
    )?;
    // Immediate: the gateway's writers open the file on their own connections (ledger,
    // captures); one migrating at a time, the others wait on the busy timeout and then find
    // the work done, instead of racing to apply the same migration.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for group in MIGRATIONS {
        for m in *group {
            let done: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE name = ?1)",
                [m.name],
                |r| r.get(0),
            )?;
            if !done {
                tx.execute_batch(m.sql)?;
                tx.execute(
                    "INSERT INTO schema_migrations (name, applied_ms) VALUES (?1, ?2)",
                    rusqlite::params![m.name, crate::base::clock::now_ms()],
                )?;
            }
        }
    }
    tx.commit()
}

/// A connection to either backend, for the CLI and the admin API's synchronous calls.
pub enum Conn {
    Sqlite(Connection),
    Postgres(Box<postgres::Client>),
}

impl Conn {
    /// Open the store a config names and bring its schema up to date.
    pub fn open(target: &StoreTarget) -> Result<Conn, StoreError> {
        Ok(match target {
            StoreTarget::Sqlite(path) => Conn::Sqlite(open_and_migrate(path)?),
            StoreTarget::Postgres(pg) => Conn::Postgres(Box::new(super::pg::open_and_migrate(pg)?)),
        })
    }
}

impl Store {
    /// Open the file, apply migrations, start the writer thread.
    pub fn open(path: &Path, queue: usize) -> Result<Arc<Store>, StoreError> {
        Store::open_target(&StoreTarget::Sqlite(path.to_path_buf()), queue)
    }

    /// Open the store a config names (reachable and migrated, else an error), start the
    /// writer thread.
    pub fn open_target(target: &StoreTarget, queue: usize) -> Result<Arc<Store>, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(queue.max(1));
        let stats = Arc::new(StoreStats::default());
        stats.up.store(1, Ordering::Relaxed);
        let st = stats.clone();
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spawned = match target {
            StoreTarget::Sqlite(path) => {
                let conn = open_and_migrate(path)?;
                std::thread::Builder::new()
                    .name("store-writer".into())
                    .spawn(move || writer_loop(conn, rx, st))
            }
            StoreTarget::Postgres(pg) => {
                let client = super::pg::open_and_migrate(pg)?;
                let (pg, closing) = (pg.clone(), closing.clone());
                std::thread::Builder::new()
                    .name("store-writer".into())
                    .spawn(move || {
                        pg_writer_loop(
                            PgWriter {
                                pg,
                                client: Some(client),
                                closing,
                            },
                            rx,
                            st,
                        )
                    })
            }
        };
        let writer = spawned.map_err(|e| StoreError {
            path: target.describe(),
            detail: format!("cannot start the writer thread: {e}"),
        })?;
        let path = match target {
            StoreTarget::Sqlite(p) => p.clone(),
            StoreTarget::Postgres(_) => PathBuf::new(),
        };
        Ok(Arc::new(Store {
            path,
            target: target.clone(),
            closing,
            tx: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            stats,
        }))
    }

    /// The SQLite file (empty with PostgreSQL).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn target(&self) -> &StoreTarget {
        &self.target
    }

    /// Whether the store is PostgreSQL: writers of non-ledger rows submit [`Write::Pg`].
    pub fn is_postgres(&self) -> bool {
        matches!(self.target, StoreTarget::Postgres(_))
    }

    /// A new SQLite connection for reads (or rare synchronous writes). On PostgreSQL an
    /// error: callers that serve both use [`Store::conn`].
    pub fn connect(&self) -> Result<Connection, StoreError> {
        match &self.target {
            StoreTarget::Sqlite(path) => connect(path),
            StoreTarget::Postgres(pg) => Err(StoreError {
                path: pg.url.clone(),
                detail: "this feature reads the SQLite store only".into(),
            }),
        }
    }

    /// A new connection to whichever backend the store is (no migration: done at open).
    pub fn conn(&self) -> Result<Conn, StoreError> {
        Ok(match &self.target {
            StoreTarget::Sqlite(path) => Conn::Sqlite(connect(path)?),
            StoreTarget::Postgres(pg) => Conn::Postgres(Box::new(super::pg::connect(pg)?)),
        })
    }

    /// Queue a write; never blocks. False (and counted) when the queue is full or closed.
    pub fn submit(&self, w: Write) -> bool {
        let guard = self.tx.read();
        let Some(tx) = guard.as_ref().ok().and_then(|g| g.as_ref()) else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        match tx.try_send(w) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Wait until everything queued so far is committed (or `timeout` passes).
    pub fn flush(&self, timeout: Duration) -> bool {
        let tx = self.tx.read().ok().and_then(|g| g.clone());
        let Some(tx) = tx else { return true };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        // A blocking send: a flush waits its turn behind a full queue.
        if tx.send(Write::Flush(done_tx)).is_err() {
            return false;
        }
        done_rx.recv_timeout(timeout).is_ok()
    }

    /// Stop accepting writes, commit everything queued, stop the writer. Idempotent.
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let tx = self.tx.write().ok().and_then(|mut g| g.take());
        drop(tx);
        let handle = self.writer.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer_loop(mut conn: Connection, rx: Receiver<Write>, stats: Arc<StoreStats>) {
    each_batch(&rx, |batch| commit_batch(&mut conn, batch, &stats));
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
}

/// The writer thread's loop over either backend: take the queue in batches and hand each to
/// `commit` (which empties it), until every sender is gone and the queue is empty.
fn each_batch(rx: &Receiver<Write>, mut commit: impl FnMut(&mut Vec<Write>)) {
    // Background priority: ledger commits then use the CPU requests leave idle instead of
    // preempting them (on a 2-core machine a batch committed at normal priority showed up in
    // the gateway's p99).
    if !switchyard_otlp::pipeline::lower_thread_priority() {
        tracing::debug!("store writer: could not lower its priority");
    }
    let mut batch: Vec<Write> = Vec::with_capacity(MAX_BATCH);
    // `recv` fails only when every sender is gone and the queue is empty: all written.
    while let Ok(first) = rx.recv() {
        // Group commit: let a busy gateway's rows gather for a moment instead of paying a
        // commit (and a writer wake-up per row) for each. At 20k requests/s this turns
        // thousands of tiny transactions a second into ~100 larger ones and cut the writer's
        // share of the gateway's CPU from about 30 % to about 6 %. A flush skips it.
        if !matches!(first, Write::Flush(_)) {
            std::thread::sleep(LINGER);
        }
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        commit(&mut batch);
    }
}

fn commit_batch(conn: &mut Connection, batch: &mut Vec<Write>, stats: &StoreStats) {
    let mut acks = Vec::new();
    let n = batch.len();
    let result = (|| -> rusqlite::Result<u64> {
        let tx = conn.transaction()?;
        let mut written = 0;
        for w in batch.drain(..) {
            match w {
                Write::Ledger(row) => {
                    super::ledger::insert(&tx, &row)?;
                    written += 1;
                }
                Write::Other(f) => {
                    f(&tx)?;
                    written += 1;
                }
                Write::Pg(_) => {
                    tracing::error!("state store: a PostgreSQL write reached the SQLite writer");
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                }
                Write::Flush(ack) => acks.push(ack),
            }
        }
        tx.commit()?;
        Ok(written)
    })();
    match result {
        Ok(written) => {
            stats.written.fetch_add(written, Ordering::Relaxed);
            stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.failed.fetch_add(n as u64, Ordering::Relaxed);
            tracing::error!(error = %e, items = n, "state store: a write batch failed and was rolled back");
        }
    }
    batch.clear();
    for a in acks {
        let _ = a.send(());
    }
}

/// The PostgreSQL writer's connection, reopened when lost.
struct PgWriter {
    pg: PostgresSettings,
    client: Option<postgres::Client>,
    closing: Arc<std::sync::atomic::AtomicBool>,
}

/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a closing store keeps trying to write its last batches to an unreachable
/// database before it drops (and counts) them.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

fn pg_writer_loop(mut w: PgWriter, rx: Receiver<Write>, stats: Arc<StoreStats>) {
    each_batch(&rx, |batch| pg_commit_batch(&mut w, batch, &stats));
}

/// Commit one batch, holding it across reconnections while the database is unreachable
/// (the queue behind it fills meanwhile, and `submit` drops and counts); a batch the
/// database refuses (not a connection problem) is counted as failed.
fn pg_commit_batch(w: &mut PgWriter, batch: &mut Vec<Write>, stats: &StoreStats) {
    let mut acks = Vec::new();
    let mut ledger: Vec<Box<super::ledger::Row>> = Vec::new();
    let mut others: Vec<PgWriteFn> = Vec::new();
    for item in batch.drain(..) {
        match item {
            Write::Ledger(r) => ledger.push(r),
            Write::Pg(f) => others.push(f),
            Write::Other(_) => {
                tracing::error!("state store: a SQLite write reached the PostgreSQL writer");
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            Write::Flush(ack) => acks.push(ack),
        }
    }
    let n = (ledger.len() + others.len()) as u64;
    let mut backoff = Duration::from_millis(100);
    let mut closing_since: Option<std::time::Instant> = None;
    if n == 0 {
        for a in acks {
            let _ = a.send(());
        }
        return;
    }
    loop {
        if w.client.as_ref().is_none_or(|c| c.is_closed()) {
            match super::pg::connect(&w.pg) {
                Ok(c) => {
                    tracing::info!(store = %w.pg.url, "state store: reconnected to PostgreSQL");
                    w.client = Some(c);
                }
                Err(e) => {
                    if stats.up.swap(0, Ordering::Relaxed) == 1 {
                        tracing::error!(error = %e, "state store: PostgreSQL unreachable; holding writes");
                    }
                    w.client = None;
                }
            }
        }
        if let Some(client) = w.client.as_mut() {
            let result = (|| -> Result<(), postgres::Error> {
                let mut tx = client.transaction()?;
                let rows: Vec<&super::ledger::Row> = ledger.iter().map(|r| &**r).collect();
                super::pg::insert_ledger(&mut tx, &rows)?;
                for f in &others {
                    f(&mut tx)?;
                }
                tx.commit()
            })();
            match result {
                Ok(()) => {
                    stats.up.store(1, Ordering::Relaxed);
                    stats.written.fetch_add(n, Ordering::Relaxed);
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) if super::pg::connection_lost(client, &e) => {
                    if stats.up.swap(0, Ordering::Relaxed) == 1 {
                        tracing::error!(error = %super::pg::describe(&e), "state store: lost PostgreSQL; holding writes");
                    }
                    w.client = None;
                }
                Err(e) => {
                    stats.failed.fetch_add(n, Ordering::Relaxed);
                    tracing::error!(error = %super::pg::describe(&e), items = n, "state store: a write batch failed and was rolled back");
                    if super::pg::connection_lost(client, &e) {
                        w.client = None;
                    }
                    break;
                }
            }
        }
        if w.closing.load(Ordering::Relaxed) {
            let since = *closing_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= CLOSE_DEADLINE {
                stats.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(
                    items = n,
                    "state store: PostgreSQL unreachable at shutdown; writes dropped"
                );
                break;
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    for a in acks {
        let _ = a.send(());
    }
}

/// Render the store's counters in Prometheus text format.
pub fn render_metrics(stats: &StoreStats, out: &mut String) {
    use crate::services::observe::metrics::single;
    for (name, help, v) in [
        (
            "switchyard_store_written_total",
            "Rows written to the state store.",
            &stats.written,
        ),
        (
            "switchyard_store_dropped_total",
            "Writes dropped because the store queue was full.",
            &stats.dropped,
        ),
        (
            "switchyard_store_failed_total",
            "Writes lost to a failed transaction.",
            &stats.failed,
        ),
    ] {
        single(out, name, "counter", help, v.load(Ordering::Relaxed));
    }
    single(
        out,
        "switchyard_store_up",
        "gauge",
        "1 while the store's writer reaches its database, 0 while it retries.",
        stats.up.load(Ordering::Relaxed),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_writes_survive_close_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::open(&path, 100_000).unwrap();
        for i in 0..5000 {
            let mut row = crate::services::governance::ledger::Row::new("r", 200);
            row.tokens_in = i;
            assert!(store.submit(Write::Ledger(Box::new(row))));
        }
        store.close();
        drop(store);
        // Reopen: migrations already applied, rows all there.
        let store = Store::open(&path, 10).unwrap();
        let conn = store.connect().unwrap();
        let (n, sum): (i64, i64) = conn
            .query_row("SELECT COUNT(*), SUM(tokens_in) FROM ledger", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(n, 5000);
        assert_eq!(sum, (0..5000).sum::<i64>());
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), 1).unwrap();
        let mut accepted = 0;
        for _ in 0..10_000 {
            if store.submit(Write::Ledger(Box::new(
                crate::services::governance::ledger::Row::new("r", 200),
            ))) {
                accepted += 1;
            }
        }
        let dropped = store.stats.dropped.load(Ordering::Relaxed);
        assert_eq!(accepted + dropped, 10_000);
        assert!(store.flush(Duration::from_secs(10)));
        assert_eq!(store.stats.written.load(Ordering::Relaxed), accepted);
    }
}
