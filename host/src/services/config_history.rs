//! The config history in the store (`config_history`): one row per version a replica puts in
//! force (at start, on reload, on rollback), so that with `[state] postgres` every replica
//! sees which config each of them runs and when it changed.
//!
//! The history is shared, the config is not: each replica still reads, validates and
//! reloads its own file, and a rollback swaps that replica's own kept versions. Rows are
//! written through the store's writer (off the request path, dropped and counted while the
//! database is down) and never read by a request.

use std::sync::Arc;

use super::governance::store::{Conn, Migration, Store, Write};
use crate::base::clock::now_ms;

/// The table on SQLite.
pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "config-history-1",
    sql: "CREATE TABLE IF NOT EXISTS config_history (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        replica TEXT NOT NULL,
        version INTEGER NOT NULL,
        origin TEXT NOT NULL,
        hash TEXT NOT NULL,
        text TEXT
      );",
}];

/// The same table on PostgreSQL (migration `config-history-1`).
pub const PG_MIGRATION: &str = "CREATE TABLE config_history (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    replica TEXT NOT NULL,
    version BIGINT NOT NULL,
    origin TEXT NOT NULL,
    hash TEXT NOT NULL,
    text TEXT
  );";

/// One recorded change of the config in force.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Entry {
    /// The row's id (0 before it is stored).
    pub id: i64,
    pub at_ms: i64,
    /// Which gateway process ([`replica_name`]).
    pub replica: String,
    /// The replica's own version number.
    pub version: i64,
    /// `start`, `file change`, `SIGHUP`, `admin`, `rollback`.
    pub origin: String,
    /// SHA-256 of the file's text (hex, first 16 bytes): equal on two replicas running the
    /// same file.
    pub hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// This process's name in the history: the host name and the process id (two gateways on
/// one machine differ by the latter).
pub fn replica_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}:{}", std::process::id())
    })
    .clone()
}

/// The hash recorded for a file's text.
pub fn text_hash(text: Option<&str>) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.unwrap_or("").as_bytes());
    d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Record a version put in force: queued for the store's writer, never waited on.
pub fn record(store: &Arc<Store>, version: u64, origin: &str, text: Option<&str>) {
    let e = Entry {
        id: 0,
        at_ms: now_ms(),
        replica: replica_name(),
        version: i64::try_from(version).unwrap_or(i64::MAX),
        origin: origin.to_string(),
        hash: text_hash(text),
        text: text.map(str::to_string),
    };
    let write = if store.is_postgres() {
        Write::Pg(Box::new(move |tx| {
            tx.execute(
                "INSERT INTO config_history (at_ms, replica, version, origin, hash, text)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &e.at_ms, &e.replica, &e.version, &e.origin, &e.hash, &e.text,
                ],
            )?;
            Ok(())
        }))
    } else {
        Write::Other(Box::new(move |tx| {
            tx.execute(
                "INSERT INTO config_history (at_ms, replica, version, origin, hash, text)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![e.at_ms, e.replica, e.version, e.origin, e.hash, e.text],
            )?;
            Ok(())
        }))
    };
    if !store.submit(write) {
        tracing::warn!("config history: the store's queue is full; this change is not recorded");
    }
}

const COLUMNS: &str = "id, at_ms, replica, version, origin, hash";

/// The `limit` latest changes, newest first, without their text.
pub fn recent(conn: &mut Conn, limit: i64) -> Result<Vec<Entry>, String> {
    match conn {
        Conn::Sqlite(c) => {
            let mut st = c
                .prepare(&format!(
                    "SELECT {COLUMNS}, NULL FROM config_history ORDER BY id DESC LIMIT ?1"
                ))
                .map_err(|e| e.to_string())?;
            st.query_map([limit], sqlite_entry)
                .and_then(|r| r.collect())
                .map_err(|e| e.to_string())
        }
        Conn::Postgres(c) => c
            .query(
                &format!(
                    "SELECT {COLUMNS}, NULL::TEXT FROM config_history ORDER BY id DESC LIMIT $1"
                ),
                &[&limit],
            )
            .map(|rows| rows.iter().map(pg_entry).collect())
            .map_err(|e| super::governance::pg::describe(&e)),
    }
}

/// One change with its file text.
pub fn get(conn: &mut Conn, id: i64) -> Result<Option<Entry>, String> {
    use rusqlite::OptionalExtension;
    match conn {
        Conn::Sqlite(c) => c
            .query_row(
                &format!("SELECT {COLUMNS}, text FROM config_history WHERE id = ?1"),
                [id],
                sqlite_entry,
            )
            .optional()
            .map_err(|e| e.to_string()),
        Conn::Postgres(c) => c
            .query_opt(
                &format!("SELECT {COLUMNS}, text FROM config_history WHERE id = $1"),
                &[&id],
            )
            .map(|r| r.as_ref().map(pg_entry))
            .map_err(|e| super::governance::pg::describe(&e)),
    }
}

fn sqlite_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        replica: r.get(2)?,
        version: r.get(3)?,
        origin: r.get(4)?,
        hash: r.get(5)?,
        text: r.get(6)?,
    })
}

fn pg_entry(r: &postgres::Row) -> Entry {
    Entry {
        id: r.get(0),
        at_ms: r.get(1),
        replica: r.get(2),
        version: r.get(3),
        origin: r.get(4),
        hash: r.get(5),
        text: r.get(6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_recorded_and_read_back_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), 100).unwrap();
        record(&store, 1, "start", Some("a = 1"));
        record(&store, 2, "admin", Some("a = 2"));
        assert!(store.flush(std::time::Duration::from_secs(10)));
        let mut conn = store.conn().unwrap();
        let got = recent(&mut conn, 10).unwrap();
        assert_eq!(
            got.iter()
                .map(|e| (e.version, e.origin.as_str()))
                .collect::<Vec<_>>(),
            [(2, "admin"), (1, "start")]
        );
        assert_eq!(got[0].replica, replica_name());
        assert_ne!(got[0].hash, got[1].hash);
        let one = get(&mut conn, got[0].id).unwrap().unwrap();
        assert_eq!(one.text.as_deref(), Some("a = 2"));
    }
}
