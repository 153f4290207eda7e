//! Rollouts on a PostgreSQL store shared by replicas: the same rows as [`super::state`],
//! and the lease that lets one replica decide.
//!
//! Every replica runs the controller thread, but only the holder of the `rollouts` lease
//! moves a rollout; the others read the stored rows each tick and apply the stored weight,
//! so all of them split traffic alike and report one history. The lease is a row renewed
//! on every tick and timed by the database's clock (replicas' clocks may disagree); when
//! its holder dies, another replica takes it once it expires ([`LEASE_TTL`]) and resumes
//! each rollout from the stored row. A holder that cannot renew (the database is down)
//! stops deciding at once: decisions pause until the database is back.

use postgres::{Client, GenericClient};

use super::state::{HistoryEntry, Record, State};

/// How long a lease lasts unless renewed.
pub const LEASE_TTL_MS: i64 = 5_000;
/// The lease's name.
pub const ROLLOUT_LEASE: &str = "rollouts";

/// The lease table (a PostgreSQL migration, applied with the store's others).
pub const LEASE_MIGRATION: &str = "CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
  );";

const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// Take or renew `name` for `holder`: true while `holder` holds it.
pub fn acquire(client: &mut Client, name: &str, holder: &str) -> Result<bool, postgres::Error> {
    let sql = format!(
        "INSERT INTO leases (name, holder, expires_ms) VALUES ($1, $2, {DB_NOW_MS} + $3)
         ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_ms = EXCLUDED.expires_ms
         WHERE leases.holder = EXCLUDED.holder OR leases.expires_ms < {DB_NOW_MS}
         RETURNING holder"
    );
    Ok(client
        .query_opt(sql.as_str(), &[&name, &holder, &LEASE_TTL_MS])?
        .is_some())
}

/// Give `name` up so another replica takes it at once (when the controller thread ends
/// before the process does).
pub fn release(client: &mut Client, name: &str, holder: &str) -> Result<(), postgres::Error> {
    client.execute(
        "DELETE FROM leases WHERE name = $1 AND holder = $2",
        &[&name, &holder],
    )?;
    Ok(())
}

/// Write (insert or replace) a route's row.
pub fn save(c: &mut impl GenericClient, r: &Record) -> Result<(), postgres::Error> {
    c.execute(
        "INSERT INTO rollouts (route, fingerprint, candidate, steps, state, step, weight,
            started_ms, step_started_ms, updated_ms, \"window\", guards, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (route) DO UPDATE SET fingerprint = $2, candidate = $3, steps = $4,
            state = $5, step = $6, weight = $7, started_ms = $8, step_started_ms = $9,
            updated_ms = $10, \"window\" = $11, guards = $12, reason = $13",
        &[
            &r.route,
            &r.fingerprint,
            &r.candidate,
            &serde_json::to_string(&r.steps).unwrap_or_else(|_| "[]".into()),
            &r.state.as_str(),
            &(r.step as i64),
            &r.weight,
            &r.started_ms,
            &r.step_started_ms,
            &r.updated_ms,
            &serde_json::to_string(&r.window).unwrap_or_else(|_| "{}".into()),
            &serde_json::to_string(&r.guards).unwrap_or_else(|_| "[]".into()),
            &r.reason,
        ],
    )?;
    Ok(())
}

/// Append one transition.
pub fn append(
    c: &mut impl GenericClient,
    route: &str,
    fp: &str,
    h: &HistoryEntry,
) -> Result<(), postgres::Error> {
    c.execute(
        "INSERT INTO rollout_history (route, fingerprint, at_ms, from_pos, to_pos, reason, weight,
            candidate_requests, incumbent_requests)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &route,
            &fp,
            &h.at_ms,
            &h.from,
            &h.to,
            &h.reason,
            &h.weight,
            &i64::try_from(h.candidate_requests).unwrap_or(i64::MAX),
            &i64::try_from(h.incumbent_requests).unwrap_or(i64::MAX),
        ],
    )?;
    Ok(())
}

const SELECT: &str = "SELECT route, fingerprint, candidate, steps, state, step, weight, started_ms,
    step_started_ms, updated_ms, \"window\", guards, reason FROM rollouts";

fn row(r: &postgres::Row) -> Record {
    let steps: String = r.get(3);
    let state: String = r.get(4);
    let window: String = r.get(10);
    let guards: String = r.get(11);
    Record {
        route: r.get(0),
        fingerprint: r.get(1),
        candidate: r.get(2),
        steps: serde_json::from_str(&steps).unwrap_or_default(),
        state: State::parse(&state).unwrap_or(State::Paused),
        step: r.get::<_, i64>(5).max(0) as usize,
        weight: r.get(6),
        started_ms: r.get(7),
        step_started_ms: r.get(8),
        updated_ms: r.get(9),
        window: serde_json::from_str(&window).unwrap_or_default(),
        guards: serde_json::from_str(&guards).unwrap_or_default(),
        reason: r.get(12),
    }
}

/// The row of `route`, if it has one.
pub fn load(c: &mut Client, route: &str) -> Result<Option<Record>, postgres::Error> {
    Ok(
        c.query_opt(&format!("{SELECT} WHERE route = $1"), &[&route])?
            .map(|r| row(&r)),
    )
}

/// Every route's row, by route.
pub fn all(c: &mut Client) -> Result<Vec<Record>, postgres::Error> {
    Ok(c.query(&format!("{SELECT} ORDER BY route"), &[])?
        .iter()
        .map(row)
        .collect())
}

/// The transitions of one rollout, oldest first.
pub fn history(
    c: &mut Client,
    route: &str,
    fp: &str,
) -> Result<Vec<HistoryEntry>, postgres::Error> {
    Ok(c.query(
        "SELECT at_ms, from_pos, to_pos, reason, weight, candidate_requests, incumbent_requests
             FROM rollout_history WHERE route = $1 AND fingerprint = $2 ORDER BY id",
        &[&route, &fp],
    )?
    .iter()
    .map(|r| HistoryEntry {
        at_ms: r.get(0),
        from: r.get(1),
        to: r.get(2),
        reason: r.get(3),
        weight: r.get(4),
        candidate_requests: r.get::<_, i64>(5).max(0) as u64,
        incumbent_requests: r.get::<_, i64>(6).max(0) as u64,
    })
    .collect())
}
