//! A rollout's durable state in the store: one `rollouts` row per route (the rollout in
//! force: its fingerprint, state, step, times and the step's counts so far) and one
//! `rollout_history` row per transition. The controller writes them through the store's
//! writer thread; `switchyard rollout status` and a restarted gateway read them back.

use rusqlite::{Connection, OptionalExtension, params};

use super::Counts;
use super::guard::{ArmStats, GuardResult};
use crate::services::governance::store::Migration;

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "rollout-1",
    sql: "CREATE TABLE rollouts (
            route TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            candidate TEXT NOT NULL,
            steps TEXT NOT NULL,
            state TEXT NOT NULL,
            step INTEGER NOT NULL,
            weight REAL NOT NULL,
            started_ms INTEGER NOT NULL,
            step_started_ms INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL,
            window TEXT NOT NULL DEFAULT '{}',
            guards TEXT NOT NULL DEFAULT '[]',
            reason TEXT
          );
          CREATE TABLE rollout_history (
            id INTEGER PRIMARY KEY,
            route TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            at_ms INTEGER NOT NULL,
            from_pos TEXT NOT NULL,
            to_pos TEXT NOT NULL,
            reason TEXT NOT NULL,
            weight REAL NOT NULL,
            candidate_requests INTEGER NOT NULL,
            incumbent_requests INTEGER NOT NULL
          );
          CREATE INDEX rollout_history_route ON rollout_history (route, fingerprint, id);",
}];

/// A rollout's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Paused,
    Complete,
    RolledBack,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::Complete => "complete",
            State::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "running" => State::Running,
            "paused" => State::Paused,
            "complete" => State::Complete,
            "rolled_back" => State::RolledBack,
            _ => return None,
        })
    }

    /// Over: the weight no longer moves.
    pub fn is_final(self) -> bool {
        matches!(self, State::Complete | State::RolledBack)
    }
}

/// The step's window as last measured, and what a restart carries over.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowRecord {
    pub candidate: ArmStats,
    pub incumbent: ArmStats,
    /// The incumbents over the last step in which they had traffic: the reference for a step
    /// at 100 %, where they have none.
    #[serde(default)]
    pub reference: Option<ArmStats>,
}

impl WindowRecord {
    pub fn counts(s: &ArmStats) -> Counts {
        Counts {
            requests: s.requests,
            errors: s.errors,
            rejects: s.rejects,
        }
    }
}

/// One route's rollout row.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub route: String,
    pub fingerprint: String,
    /// `backend` or `backend/model`.
    pub candidate: String,
    pub steps: Vec<f64>,
    pub state: State,
    /// Index into `steps`.
    pub step: usize,
    /// Percent of traffic on the candidate now.
    pub weight: f64,
    pub started_ms: i64,
    pub step_started_ms: i64,
    pub updated_ms: i64,
    pub window: WindowRecord,
    pub guards: Vec<GuardResult>,
    /// Why the last transition happened, or what the step waits for.
    pub reason: Option<String>,
}

/// One transition.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    pub at_ms: i64,
    pub from: String,
    pub to: String,
    pub reason: String,
    /// Percent on the candidate after the transition.
    pub weight: f64,
    /// The requests each side saw in the step that ended (for a step's end).
    pub candidate_requests: u64,
    pub incumbent_requests: u64,
}

/// Write (insert or replace) a route's row.
pub fn save(conn: &Connection, r: &Record) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO rollouts (route, fingerprint, candidate, steps, state, step, weight,
            started_ms, step_started_ms, updated_ms, window, guards, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (route) DO UPDATE SET fingerprint = ?2, candidate = ?3, steps = ?4,
            state = ?5, step = ?6, weight = ?7, started_ms = ?8, step_started_ms = ?9,
            updated_ms = ?10, window = ?11, guards = ?12, reason = ?13",
    )?
    .execute(params![
        r.route,
        r.fingerprint,
        r.candidate,
        serde_json::to_string(&r.steps).unwrap_or_else(|_| "[]".into()),
        r.state.as_str(),
        r.step as i64,
        r.weight,
        r.started_ms,
        r.step_started_ms,
        r.updated_ms,
        serde_json::to_string(&r.window).unwrap_or_else(|_| "{}".into()),
        serde_json::to_string(&r.guards).unwrap_or_else(|_| "[]".into()),
        r.reason,
    ])?;
    Ok(())
}

/// Append one transition.
pub fn append(conn: &Connection, route: &str, fp: &str, h: &HistoryEntry) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO rollout_history (route, fingerprint, at_ms, from_pos, to_pos, reason, weight,
            candidate_requests, incumbent_requests)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        route,
        fp,
        h.at_ms,
        h.from,
        h.to,
        h.reason,
        h.weight,
        i64::try_from(h.candidate_requests).unwrap_or(i64::MAX),
        i64::try_from(h.incumbent_requests).unwrap_or(i64::MAX),
    ])?;
    Ok(())
}

const SELECT: &str = "SELECT route, fingerprint, candidate, steps, state, step, weight, started_ms,
    step_started_ms, updated_ms, window, guards, reason FROM rollouts";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let steps: String = r.get(3)?;
    let state: String = r.get(4)?;
    let window: String = r.get(10)?;
    let guards: String = r.get(11)?;
    Ok(Record {
        route: r.get(0)?,
        fingerprint: r.get(1)?,
        candidate: r.get(2)?,
        steps: serde_json::from_str(&steps).unwrap_or_default(),
        state: State::parse(&state).unwrap_or(State::Paused),
        step: r.get::<_, i64>(5)?.max(0) as usize,
        weight: r.get(6)?,
        started_ms: r.get(7)?,
        step_started_ms: r.get(8)?,
        updated_ms: r.get(9)?,
        window: serde_json::from_str(&window).unwrap_or_default(),
        guards: serde_json::from_str(&guards).unwrap_or_default(),
        reason: r.get(12)?,
    })
}

/// The row of `route`, if it has one.
pub fn load(conn: &Connection, route: &str) -> rusqlite::Result<Option<Record>> {
    conn.query_row(&format!("{SELECT} WHERE route = ?1"), [route], row)
        .optional()
}

/// Every route's row, by route.
pub fn all(conn: &Connection) -> rusqlite::Result<Vec<Record>> {
    let mut stmt = conn.prepare(&format!("{SELECT} ORDER BY route"))?;
    let rows = stmt.query_map([], row)?;
    rows.collect()
}

/// The transitions of one rollout, oldest first.
pub fn history(conn: &Connection, route: &str, fp: &str) -> rusqlite::Result<Vec<HistoryEntry>> {
    let mut stmt = conn.prepare(
        "SELECT at_ms, from_pos, to_pos, reason, weight, candidate_requests, incumbent_requests
         FROM rollout_history WHERE route = ?1 AND fingerprint = ?2 ORDER BY id",
    )?;
    let rows = stmt.query_map([route, fp], |r| {
        Ok(HistoryEntry {
            at_ms: r.get(0)?,
            from: r.get(1)?,
            to: r.get(2)?,
            reason: r.get(3)?,
            weight: r.get(4)?,
            candidate_requests: r.get::<_, i64>(5)?.max(0) as u64,
            incumbent_requests: r.get::<_, i64>(6)?.max(0) as u64,
        })
    })?;
    rows.collect()
}
