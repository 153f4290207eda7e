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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

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
];

/// A write run inside the writer's current transaction.
pub type WriteFn = Box<dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send>;

/// One write for the writer thread.
pub enum Write {
    /// A ledger row (the common case, no boxing of a closure).
    Ledger(Box<super::ledger::Row>),
    /// Any other write, run inside the current batch's transaction.
    Other(WriteFn),
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
}

/// The store: the file's path and the queue to its writer thread.
pub struct Store {
    path: PathBuf,
    /// Read-locked by every submit (uncontended); write-locked once, by `close`.
    tx: RwLock<Option<SyncSender<Write>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    pub stats: Arc<StoreStats>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
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

impl Store {
    /// Open the file, apply migrations, start the writer thread.
    pub fn open(path: &Path, queue: usize) -> Result<Arc<Store>, StoreError> {
        let conn = open_and_migrate(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(queue.max(1));
        let stats = Arc::new(StoreStats::default());
        let st = stats.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx, st))
            .map_err(|e| StoreError {
                path: path.display().to_string(),
                detail: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Arc::new(Store {
            path: path.to_path_buf(),
            tx: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            stats,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new connection for reads (or rare synchronous writes such as admin key changes).
    pub fn connect(&self) -> Result<Connection, StoreError> {
        connect(&self.path)
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
        commit_batch(&mut conn, &mut batch, &stats);
    }
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
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
