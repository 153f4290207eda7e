//! The cost ledger: one row per upstream attempt and per request refused after
//! authentication (401s are only counted, in `switchyard_refused_total`), and the queries
//! behind `switchyard spend`.
//!
//! A row says who (key, team, tags), where (route, backend, model, kind: primary, fallback,
//! retry or shadow), how much (tokens in/out, cost at the backend model's price, and the
//! baseline cost: the same tokens at the route's premium price, from which savings follow),
//! how fast (latency, time to first token) and how it ended (HTTP status, outcome). Rows
//! whose token counts the upstream did not report are marked `estimated`.
//!
//! Rows reach SQLite through the store's writer thread ([`record`] never blocks). Costs are
//! computed when the row is made, with the prices in force then, so a report never depends
//! on today's config.

use rusqlite::{Connection, params};

use super::store::{Migration, Store, Write};
use crate::base::clock::now_ms;

/// The ledger's tables.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "ledger-1",
        sql: "CREATE TABLE ledger (
            id INTEGER PRIMARY KEY,
            ts_ms INTEGER NOT NULL,
            key_id TEXT,
            team TEXT,
            tags TEXT NOT NULL DEFAULT '[]',
            route TEXT NOT NULL,
            backend TEXT,
            model TEXT,
            kind TEXT NOT NULL DEFAULT 'primary',
            stream INTEGER NOT NULL DEFAULT 0,
            tokens_in INTEGER NOT NULL DEFAULT 0,
            tokens_out INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0,
            baseline_usd REAL NOT NULL DEFAULT 0,
            latency_ms REAL NOT NULL DEFAULT 0,
            ttft_ms REAL,
            status INTEGER NOT NULL,
            outcome TEXT NOT NULL DEFAULT 'ok',
            estimated INTEGER NOT NULL DEFAULT 0
          );
          CREATE INDEX ledger_ts ON ledger (ts_ms);
          CREATE INDEX ledger_team_ts ON ledger (team, ts_ms);
          CREATE INDEX ledger_key_ts ON ledger (key_id, ts_ms);",
    },
    // Every query the gateway makes of the ledger (`switchyard spend`, the budgets' seeding
    // at start) selects a time range and groups in the scan, so only `ledger_ts` is read.
    // The per-team and per-key indexes were never used, and every row paid for them on the
    // writer thread: with real keys and teams (rows spread over many index pages) the three
    // indexes made an insert ~3x as costly as with `ledger_ts` alone.
    Migration {
        name: "ledger-2-drop-unused-indexes",
        sql: "DROP INDEX IF EXISTS ledger_team_ts;
          DROP INDEX IF EXISTS ledger_key_ts;",
    },
    // Rows whose upstream reported more tokens than the request could have used, counted
    // at the most it could (an upstream's usage is not trusted blindly).
    Migration {
        name: "ledger-3-usage-clamped",
        sql: "ALTER TABLE ledger ADD COLUMN usage_clamped INTEGER NOT NULL DEFAULT 0;",
    },
    // Rows priced by a self-hosted backend's `gpu_hour_usd` and measured throughput rather
    // than a `[[prices]]` entry: reports mark their cost as derived.
    Migration {
        name: "ledger-4-cost-derived",
        sql: "ALTER TABLE ledger ADD COLUMN cost_derived INTEGER NOT NULL DEFAULT 0;",
    },
    // The request's `x-switchyard-request-id`, which feedback names (`feedback::find` reads
    // it through `ledger_ts`: the id carries the request's time).
    Migration {
        name: "ledger-5-request-id",
        sql: "ALTER TABLE ledger ADD COLUMN request_id TEXT;",
    },
    // Answers served from the response cache: `kind = 'cache'`, no cost, and what the
    // upstream would have charged as the saving.
    Migration {
        name: "ledger-6-cache-saved",
        sql: "ALTER TABLE ledger ADD COLUMN saved_usd REAL NOT NULL DEFAULT 0;",
    },
];

/// Which attempt of a request a row describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    #[default]
    Primary,
    Fallback,
    Retry,
    Shadow,
    /// An LLM judge's call scoring a shadow pair (`routes[].shadow.judge`).
    Judge,
    /// Answered from the response cache.
    Cache,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Primary => "primary",
            Kind::Fallback => "fallback",
            Kind::Retry => "retry",
            Kind::Shadow => "shadow",
            Kind::Judge => "judge",
            Kind::Cache => "cache",
        }
    }
}

/// One ledger row.
#[derive(Debug, Clone)]
pub struct Row {
    /// Request start, Unix milliseconds.
    pub ts_ms: i64,
    pub key_id: Option<String>,
    pub team: Option<String>,
    pub tags: Vec<String>,
    pub route: String,
    pub backend: Option<String>,
    pub model: Option<String>,
    pub kind: Kind,
    pub stream: bool,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
    pub baseline_usd: f64,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub status: u16,
    /// `ok`, `cancelled` (client went away), `stream_failed`, or the error kind.
    pub outcome: String,
    /// Token counts are the gateway's estimate, not the upstream's report.
    pub estimated: bool,
    /// The upstream reported more tokens than the request could use: counted at the cap.
    pub usage_clamped: bool,
    /// The cost comes from `gpu_hour_usd` and the worker's measured throughput.
    pub cost_derived: bool,
    /// The request's `x-switchyard-request-id`.
    pub request_id: Option<String>,
    /// A cache hit: what the answer would have cost.
    pub saved_usd: f64,
}

impl Row {
    /// A row for `route` with `status`, timestamped now, everything else empty.
    pub fn new(route: &str, status: u16) -> Row {
        Row {
            ts_ms: now_ms(),
            key_id: None,
            team: None,
            tags: Vec::new(),
            route: route.to_string(),
            backend: None,
            model: None,
            kind: Kind::Primary,
            stream: false,
            tokens_in: 0,
            tokens_out: 0,
            cost_usd: 0.0,
            baseline_usd: 0.0,
            latency_ms: 0.0,
            ttft_ms: None,
            status,
            outcome: "ok".into(),
            estimated: false,
            usage_clamped: false,
            cost_derived: false,
            request_id: None,
            saved_usd: 0.0,
        }
    }
}

/// Write one row inside the writer's transaction.
pub(crate) fn insert(conn: &Connection, r: &Row) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO ledger (ts_ms, key_id, team, tags, route, backend, model, kind, stream,
            tokens_in, tokens_out, cost_usd, baseline_usd, latency_ms, ttft_ms, status, outcome, estimated,
            usage_clamped, cost_derived, request_id, saved_usd)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
    )?;
    let tags = serde_json::to_string(&r.tags).unwrap_or_else(|_| "[]".into());
    stmt.execute(params![
        r.ts_ms,
        r.key_id,
        r.team,
        tags,
        r.route,
        r.backend,
        r.model,
        r.kind.as_str(),
        r.stream,
        i64::try_from(r.tokens_in).unwrap_or(i64::MAX),
        i64::try_from(r.tokens_out).unwrap_or(i64::MAX),
        r.cost_usd,
        r.baseline_usd,
        r.latency_ms,
        r.ttft_ms,
        r.status,
        r.outcome,
        r.estimated,
        r.usage_clamped,
        r.cost_derived,
        r.request_id,
        r.saved_usd,
    ])?;
    Ok(())
}

/// Record a row: queued for the store's writer thread, never blocking; false if the row
/// could not be queued (the queue is full: counted in `switchyard_store_dropped_total`).
pub fn record(store: &Store, row: Row) -> bool {
    store.submit(Write::Ledger(Box::new(row)))
}

/// What `switchyard spend` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Team,
    Key,
    Tag,
    Model,
    Route,
    /// `backend/model`, like `Model`, with the mean caller feedback of each.
    Target,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "team" => GroupBy::Team,
            "key" => GroupBy::Key,
            "tag" => GroupBy::Tag,
            "model" => GroupBy::Model,
            "route" => GroupBy::Route,
            "target" => GroupBy::Target,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Team => "team",
            GroupBy::Key => "key",
            GroupBy::Tag => "tag",
            GroupBy::Model => "model",
            GroupBy::Route => "route",
            GroupBy::Target => "target",
        }
    }
}

/// One line of a spend report.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SpendLine {
    /// The group's value (`None`: rows without one, e.g. unauthenticated traffic).
    pub group: Option<String>,
    /// The route the savings are computed for.
    pub route: String,
    pub requests: u64,
    pub errors: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub estimated_rows: u64,
    /// Rows whose cost is derived from `gpu_hour_usd` and measured worker throughput.
    pub derived_rows: u64,
    pub cost_usd: f64,
    pub baseline_usd: f64,
    pub savings_usd: f64,
    /// Mean caller feedback (0..1) on this group's answers (`--by target` only; `None`
    /// without feedback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback_mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback_count: Option<u64>,
}

/// The query behind [`spend`]: a range scan of `ledger_ts`, grouped in the scan.
fn spend_sql(by: Option<GroupBy>) -> String {
    let group_expr = match by {
        None | Some(GroupBy::Route) => "NULL",
        Some(GroupBy::Team) => "l.team",
        Some(GroupBy::Key) => "l.key_id",
        Some(GroupBy::Model) | Some(GroupBy::Target) => "l.backend || '/' || l.model",
        Some(GroupBy::Tag) => "t.value",
    };
    let from = if by == Some(GroupBy::Tag) {
        // One row per tag: a request tagged twice counts under both tags.
        "ledger l, json_each(l.tags) t"
    } else {
        "ledger l"
    };
    format!(
        "SELECT {group_expr}, l.route, COUNT(*), SUM(l.status >= 400), TOTAL(l.tokens_in),
                TOTAL(l.tokens_out), SUM(l.estimated), TOTAL(l.cost_usd), TOTAL(l.baseline_usd),
                SUM(l.cost_derived)
         FROM {from} WHERE l.ts_ms >= ?1
         GROUP BY 1, 2 ORDER BY TOTAL(l.cost_usd) DESC, 1, 2"
    )
}

/// Spend since `since_ms`, grouped by `by` (or only by route), one line per group and route.
/// Every row counts as a request (shadow rows included: they cost money too); rows with a
/// status of 400 or more count as errors.
pub fn spend(
    conn: &Connection,
    by: Option<GroupBy>,
    since_ms: i64,
) -> rusqlite::Result<Vec<SpendLine>> {
    let mut stmt = conn.prepare(&spend_sql(by))?;
    let rows = stmt.query_map([since_ms], |r| {
        let cost: f64 = r.get(7)?;
        let baseline: f64 = r.get(8)?;
        Ok(SpendLine {
            group: r.get(0)?,
            route: r.get(1)?,
            requests: r.get::<_, i64>(2)?.max(0) as u64,
            errors: r.get::<_, Option<i64>>(3)?.unwrap_or(0).max(0) as u64,
            // TOTAL (a float) where SUM of integers would fail with "integer overflow";
            // `as` saturates.
            tokens_in: r.get::<_, f64>(4)?.max(0.0) as u64,
            tokens_out: r.get::<_, f64>(5)?.max(0.0) as u64,
            estimated_rows: r.get::<_, Option<i64>>(6)?.unwrap_or(0).max(0) as u64,
            derived_rows: r.get::<_, Option<i64>>(9)?.unwrap_or(0).max(0) as u64,
            cost_usd: cost,
            baseline_usd: baseline,
            savings_usd: baseline - cost,
            feedback_mean: None,
            feedback_count: None,
        })
    })?;
    let mut lines: Vec<SpendLine> = rows.collect::<rusqlite::Result<_>>()?;
    if by == Some(GroupBy::Target) {
        for f in super::feedback::by_target(conn, since_ms)? {
            if let Some(l) = lines
                .iter_mut()
                .find(|l| l.group == f.target && l.route == f.route)
            {
                l.feedback_mean = Some(f.mean);
                l.feedback_count = Some(f.count);
            }
        }
    }
    Ok(lines)
}

/// [`spend`] on whichever store `conn` is.
pub fn spend_in(
    conn: &mut super::store::Conn,
    by: Option<GroupBy>,
    since_ms: i64,
) -> Result<Vec<SpendLine>, String> {
    match conn {
        super::store::Conn::Sqlite(c) => spend(c, by, since_ms).map_err(|e| e.to_string()),
        super::store::Conn::Postgres(c) => {
            super::pg::spend(c, by, since_ms).map_err(|e| super::pg::describe(&e))
        }
    }
}

/// [`spend_by_key_and_team`] on whichever store `conn` is.
pub fn spend_by_key_and_team_in(
    conn: &mut super::store::Conn,
    since_ms: i64,
) -> Result<Vec<KeyTeamSpend>, String> {
    match conn {
        super::store::Conn::Sqlite(c) => {
            spend_by_key_and_team(c, since_ms).map_err(|e| e.to_string())
        }
        super::store::Conn::Postgres(c) => {
            super::pg::spend_by_key_and_team(c, since_ms).map_err(|e| super::pg::describe(&e))
        }
    }
}

/// The query behind [`spend_by_key_and_team`], a range scan of `ledger_ts` like [`spend_sql`].
const SPEND_BY_KEY_AND_TEAM: &str =
    "SELECT key_id, team, TOTAL(cost_usd) FROM ledger WHERE ts_ms >= ?1 GROUP BY 1, 2";

/// `(key id, team, spend in micro-dollars)`.
pub type KeyTeamSpend = (Option<String>, Option<String>, i64);

/// Spend per (key, team) since `since_ms`, in micro-dollars: seeds the in-memory budget
/// counters at start so a restart does not reset a budget.
pub fn spend_by_key_and_team(
    conn: &Connection,
    since_ms: i64,
) -> rusqlite::Result<Vec<KeyTeamSpend>> {
    let mut stmt = conn.prepare(SPEND_BY_KEY_AND_TEAM)?;
    let rows = stmt.query_map([since_ms], |r| {
        let cost: f64 = r.get(2)?;
        Ok((r.get(0)?, r.get(1)?, (cost * 1e6).round() as i64))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_groups_and_computes_savings_per_route() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), 100).unwrap();
        let mk = |team: &str, route: &str, tags: &[&str], cost: f64, base: f64, status: u16| {
            let mut r = Row::new(route, status);
            r.team = Some(team.into());
            r.tags = tags.iter().map(|s| s.to_string()).collect();
            r.tokens_in = 10;
            r.tokens_out = 5;
            r.cost_usd = cost;
            r.baseline_usd = base;
            r
        };
        for r in [
            mk("a", "gpt-4o", &["x"], 1.0, 3.0, 200),
            mk("a", "gpt-4o", &["x", "y"], 2.0, 3.0, 200),
            mk("b", "mini", &[], 0.5, 0.5, 500),
        ] {
            assert!(store.submit(Write::Ledger(Box::new(r))));
        }
        assert!(store.flush(std::time::Duration::from_secs(5)));
        let conn = store.connect().unwrap();
        let by_team = spend(&conn, Some(GroupBy::Team), 0).unwrap();
        assert_eq!(by_team.len(), 2);
        let a = &by_team[0];
        assert_eq!(a.group.as_deref(), Some("a"));
        assert_eq!((a.requests, a.tokens_in, a.tokens_out), (2, 20, 10));
        assert!((a.savings_usd - 3.0).abs() < 1e-9);
        assert_eq!(by_team[1].errors, 1);
        let by_tag = spend(&conn, Some(GroupBy::Tag), 0).unwrap();
        let x = by_tag
            .iter()
            .find(|l| l.group.as_deref() == Some("x"))
            .unwrap();
        assert_eq!(x.requests, 2);
        assert_eq!(by_tag.len(), 2);
        let all = spend(&conn, None, 0).unwrap();
        let total: f64 = all.iter().map(|l| l.cost_usd).sum();
        assert!((total - 3.5).abs() < 1e-9);
        assert!(spend(&conn, None, now_ms() + 60_000).unwrap().is_empty());
    }

    #[test]
    fn sums_past_the_integer_range_do_not_fail_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), 100).unwrap();
        for _ in 0..3 {
            let mut r = Row::new("r", 200);
            r.team = Some("a".into());
            r.tokens_in = u64::MAX;
            r.tokens_out = 1 << 62;
            r.cost_usd = 1e300;
            assert!(store.submit(Write::Ledger(Box::new(r))));
        }
        assert!(store.flush(std::time::Duration::from_secs(5)));
        let conn = store.connect().unwrap();
        for by in [None, Some(GroupBy::Team), Some(GroupBy::Tag)] {
            let lines = spend(&conn, by, 0).unwrap();
            if by != Some(GroupBy::Tag) {
                assert_eq!(lines[0].tokens_in, u64::MAX);
                assert_eq!(lines[0].requests, 3);
            }
        }
        let by_key = spend_by_key_and_team(&conn, 0).unwrap();
        assert_eq!(by_key[0].2, i64::MAX);
    }

    /// Each index costs every row on the writer thread, so the ledger keeps only the one its
    /// queries read: each report (every grouping) and the budgets' seeding search `ledger_ts`.
    #[test]
    fn every_query_reads_the_time_index_and_no_other_index_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), 100).unwrap();
        let conn = store.connect().unwrap();
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexes, ["ledger_ts"]);
        let plan = |sql: &str| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt.query_map([0i64], |r| r.get::<_, String>(3)).unwrap();
            rows.collect::<Result<Vec<_>, _>>().unwrap().join("; ")
        };
        let mut queries = vec![SPEND_BY_KEY_AND_TEAM.to_string(), spend_sql(None)];
        for by in [
            GroupBy::Team,
            GroupBy::Key,
            GroupBy::Tag,
            GroupBy::Model,
            GroupBy::Route,
            GroupBy::Target,
        ] {
            queries.push(spend_sql(Some(by)));
        }
        for q in &queries {
            let p = plan(q);
            assert!(p.contains("USING INDEX ledger_ts"), "{q}: {p}");
        }
    }
}
