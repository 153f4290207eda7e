//! Caller feedback on answers (`POST /v1/feedback`), joined to the request's ledger row.
//!
//! Every proxied response carries `x-switchyard-request-id`; the id is also on the
//! request's ledger rows. The id begins with the request's start time, so finding its row
//! is a range scan of the ledger's time index (no index of its own for every row to pay
//! for). A feedback row copies the route, backend and model of the row it rates, so
//! `switchyard spend --by target` and the rollout guard `min_feedback` read it without a
//! join.

use rusqlite::{Connection, OptionalExtension, params};

use super::store::Migration;

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "feedback-1",
    sql: "CREATE TABLE feedback (
            id INTEGER PRIMARY KEY,
            ts_ms INTEGER NOT NULL,
            request_id TEXT NOT NULL,
            request_ts_ms INTEGER NOT NULL,
            key_id TEXT,
            route TEXT NOT NULL,
            backend TEXT,
            model TEXT,
            score REAL NOT NULL,
            comment TEXT
          );
          CREATE INDEX feedback_route_ts ON feedback (route, request_ts_ms);
          CREATE INDEX feedback_ts ON feedback (request_ts_ms);",
}];

/// Response header naming the request (what `POST /v1/feedback` takes).
pub const HEADER_REQUEST_ID: http::HeaderName =
    http::HeaderName::from_static("x-switchyard-request-id");

const PREFIX: &str = "req_";

/// A new request id: `req_` + the start time (Unix ms, 12 hex digits) + 64 random bits.
pub fn new_request_id(start_ms: i64) -> String {
    format!(
        "{PREFIX}{:012x}{:016x}",
        start_ms.max(0) as u64 & 0xffff_ffff_ffff,
        fastrand::u64(..)
    )
}

/// The start time encoded in a request id; `None` for anything that is not one.
pub fn request_time(id: &str) -> Option<i64> {
    let hex = id.strip_prefix(PREFIX)?;
    if hex.len() != 28 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    i64::from_str_radix(&hex[..12], 16).ok()
}

/// The request a feedback rates, as its ledger row has it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rated {
    pub ts_ms: i64,
    pub key_id: Option<String>,
    pub route: String,
    pub backend: Option<String>,
    pub model: Option<String>,
}

/// How far a ledger row's time may be from the id's (both are the request's start).
const SLACK_MS: i64 = 5_000;

/// The ledger row of the request `id` (the row that settled it: its last), if any.
pub fn find(conn: &Connection, id: &str) -> rusqlite::Result<Option<Rated>> {
    let Some(ts) = request_time(id) else {
        return Ok(None);
    };
    conn.query_row(
        "SELECT ts_ms, key_id, route, backend, model FROM ledger
         WHERE ts_ms BETWEEN ?1 AND ?2 AND request_id = ?3 AND kind != 'shadow'
         ORDER BY id DESC LIMIT 1",
        params![ts - SLACK_MS, ts + SLACK_MS, id],
        |r| {
            Ok(Rated {
                ts_ms: r.get(0)?,
                key_id: r.get(1)?,
                route: r.get(2)?,
                backend: r.get(3)?,
                model: r.get(4)?,
            })
        },
    )
    .optional()
}

/// [`find`] on whichever store `conn` is.
pub fn find_in(conn: &mut super::store::Conn, id: &str) -> Result<Option<Rated>, String> {
    let c = match conn {
        super::store::Conn::Sqlite(c) => return find(c, id).map_err(|e| e.to_string()),
        super::store::Conn::Postgres(c) => c,
    };
    let Some(ts) = request_time(id) else {
        return Ok(None);
    };
    let row = c
        .query_opt(
            "SELECT ts_ms, key_id, route, backend, model FROM ledger
             WHERE ts_ms BETWEEN $1 AND $2 AND request_id = $3 AND kind != 'shadow'
             ORDER BY id DESC LIMIT 1",
            &[&(ts - SLACK_MS), &(ts + SLACK_MS), &id],
        )
        .map_err(|e| super::pg::describe(&e))?;
    Ok(row.map(|r| Rated {
        ts_ms: r.get(0),
        key_id: r.get(1),
        route: r.get(2),
        backend: r.get(3),
        model: r.get(4),
    }))
}

/// [`insert`] on PostgreSQL, inside the writer's transaction.
pub fn insert_pg(tx: &mut postgres::Transaction<'_>, f: &Feedback) -> Result<(), postgres::Error> {
    tx.execute(
        "INSERT INTO feedback (ts_ms, request_id, request_ts_ms, key_id, route, backend, model,
            score, comment) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &crate::base::clock::now_ms(),
            &f.request_id,
            &f.rated.ts_ms,
            &f.rated.key_id,
            &f.rated.route,
            &f.rated.backend,
            &f.rated.model,
            &f.score,
            &f.comment,
        ],
    )?;
    Ok(())
}

/// One feedback row.
#[derive(Debug, Clone)]
pub struct Feedback {
    pub request_id: String,
    pub rated: Rated,
    /// 0 (bad) to 1 (good); thumbs up is 1, down 0.
    pub score: f64,
    pub comment: Option<String>,
}

pub fn insert(conn: &Connection, f: &Feedback) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO feedback (ts_ms, request_id, request_ts_ms, key_id, route, backend, model,
            score, comment) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        crate::base::clock::now_ms(),
        f.request_id,
        f.rated.ts_ms,
        f.rated.key_id,
        f.rated.route,
        f.rated.backend,
        f.rated.model,
        f.score,
        f.comment,
    ])?;
    Ok(())
}

/// One target's mean feedback on one route.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetFeedback {
    /// `backend/model` (`None` for rows without both).
    pub target: Option<String>,
    pub route: String,
    pub mean: f64,
    pub count: u64,
}

/// Mean feedback per target (`backend/model`) and route, for requests since `since_ms`.
pub fn by_target(conn: &Connection, since_ms: i64) -> rusqlite::Result<Vec<TargetFeedback>> {
    let mut stmt = conn.prepare(
        "SELECT backend || '/' || model, route, AVG(score), COUNT(*) FROM feedback
         WHERE request_ts_ms >= ?1 GROUP BY 1, 2",
    )?;
    let rows = stmt.query_map([since_ms], |r| {
        Ok(TargetFeedback {
            target: r.get(0)?,
            route: r.get(1)?,
            mean: r.get::<_, Option<f64>>(2)?.unwrap_or(0.0),
            count: r.get::<_, i64>(3)?.max(0) as u64,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_carry_their_start_time() {
        let id = new_request_id(1_796_000_000_123);
        assert_eq!(id.len(), 32);
        assert_eq!(request_time(&id), Some(1_796_000_000_123));
        assert_ne!(id, new_request_id(1_796_000_000_123));
        for bad in [
            "",
            "req_",
            "req_zz",
            "x",
            "req_0123456789abcdef0123456789ab0",
        ] {
            assert_eq!(request_time(bad), None, "{bad}");
        }
    }
}
