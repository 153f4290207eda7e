//! The PostgreSQL backend of the store (`[state] postgres`): one database shared by every
//! replica, beside the embedded SQLite file that stays the default for one machine.
//!
//! The schema is the SQLite store's, migration by migration under the same names (kept in
//! the same `schema_migrations` table), written in PostgreSQL's dialect: integers are
//! `BIGINT`, reals `DOUBLE PRECISION`, ids `BIGSERIAL`, and the `keys_version` counter the
//! key caches poll is bumped by a statement-level trigger. Replicas starting together
//! migrate one at a time under an advisory lock.
//!
//! The sync `postgres` client is used: the store's writer, the key refresher and the CLI
//! are plain threads, and the admin API already runs its store calls on blocking threads.

use std::time::Duration;

use postgres::{Client, NoTls};

use super::keys::{KeyRecord, KeySnapshotParts, NewKey};
use super::ledger::{GroupBy, KeyTeamSpend, Row, SpendLine};
use super::store::StoreError;
use crate::base::clock::now_ms;
use crate::config::state::{PostgresSettings, SslMode, split_tls};

/// How long a connection attempt may take before the store reports the database down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The advisory lock key replicas migrate under (any constant; "sy-mig" in ASCII).
const MIGRATION_LOCK: i64 = 0x7379_2d6d_6967;

/// A migration in PostgreSQL's dialect, named as its SQLite twin.
pub struct PgMigration {
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every table of the store, in the order and under the names of the SQLite migrations.
pub const MIGRATIONS: &[PgMigration] = &[
    PgMigration {
        name: "keys-1",
        sql: "CREATE TABLE keys (
            id TEXT PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            team TEXT NOT NULL,
            tags TEXT NOT NULL DEFAULT '[]',
            rpm BIGINT,
            tpm BIGINT,
            budget_daily DOUBLE PRECISION,
            budget_monthly DOUBLE PRECISION,
            created_ms BIGINT NOT NULL,
            revoked_ms BIGINT
          );
          CREATE TABLE governance_meta (k TEXT PRIMARY KEY, v BIGINT NOT NULL);
          INSERT INTO governance_meta (k, v) VALUES ('keys_version', 0);
          CREATE FUNCTION sy_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
            UPDATE governance_meta SET v = v + 1 WHERE k = 'keys_version';
            RETURN NULL;
          END $$;
          CREATE TRIGGER keys_changed AFTER INSERT OR UPDATE OR DELETE ON keys
            FOR EACH STATEMENT EXECUTE FUNCTION sy_keys_changed();",
    },
    PgMigration {
        name: "keys-2-auth-on",
        sql: "INSERT INTO governance_meta (k, v)
            SELECT 'auth_on', 1 WHERE EXISTS (SELECT 1 FROM keys) ON CONFLICT DO NOTHING;
          CREATE FUNCTION sy_keys_auth_on() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
            INSERT INTO governance_meta (k, v) VALUES ('auth_on', 1) ON CONFLICT DO NOTHING;
            RETURN NULL;
          END $$;
          CREATE TRIGGER keys_auth_on AFTER INSERT ON keys
            FOR EACH STATEMENT EXECUTE FUNCTION sy_keys_auth_on();",
    },
    // The SQLite history (ledger-1 .. ledger-6) folded into the first migration: a
    // PostgreSQL store starts at today's schema, and only `ledger_ts` is made (the reports
    // and the budgets' seeding scan a time range; see ledger-2 in the SQLite list).
    PgMigration {
        name: "ledger-1",
        sql: "CREATE TABLE ledger (
            id BIGSERIAL PRIMARY KEY,
            ts_ms BIGINT NOT NULL,
            key_id TEXT,
            team TEXT,
            tags TEXT NOT NULL DEFAULT '[]',
            route TEXT NOT NULL,
            backend TEXT,
            model TEXT,
            kind TEXT NOT NULL DEFAULT 'primary',
            stream BIGINT NOT NULL DEFAULT 0,
            tokens_in BIGINT NOT NULL DEFAULT 0,
            tokens_out BIGINT NOT NULL DEFAULT 0,
            cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
            baseline_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
            latency_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
            ttft_ms DOUBLE PRECISION,
            status BIGINT NOT NULL,
            outcome TEXT NOT NULL DEFAULT 'ok',
            estimated BIGINT NOT NULL DEFAULT 0,
            usage_clamped BIGINT NOT NULL DEFAULT 0,
            cost_derived BIGINT NOT NULL DEFAULT 0,
            request_id TEXT,
            saved_usd DOUBLE PRECISION NOT NULL DEFAULT 0
          );
          CREATE INDEX ledger_ts ON ledger (ts_ms);",
    },
    PgMigration {
        name: "ledger-2-drop-unused-indexes",
        sql: "",
    },
    PgMigration {
        name: "ledger-3-usage-clamped",
        sql: "",
    },
    PgMigration {
        name: "ledger-4-cost-derived",
        sql: "",
    },
    PgMigration {
        name: "ledger-5-request-id",
        sql: "",
    },
    PgMigration {
        name: "ledger-6-cache-saved",
        sql: "",
    },
    PgMigration {
        name: "capture-1",
        sql: "CREATE TABLE IF NOT EXISTS captures (
            id BIGSERIAL PRIMARY KEY,
            ts_ms BIGINT NOT NULL,
            route TEXT NOT NULL,
            backend TEXT NOT NULL,
            model TEXT NOT NULL,
            request TEXT NOT NULL,
            answer TEXT NOT NULL
          );
          CREATE INDEX IF NOT EXISTS captures_route_ts ON captures (route, ts_ms);",
    },
    PgMigration {
        name: "feedback-1",
        sql: "CREATE TABLE feedback (
            id BIGSERIAL PRIMARY KEY,
            ts_ms BIGINT NOT NULL,
            request_id TEXT NOT NULL,
            request_ts_ms BIGINT NOT NULL,
            key_id TEXT,
            route TEXT NOT NULL,
            backend TEXT,
            model TEXT,
            score DOUBLE PRECISION NOT NULL,
            comment TEXT
          );
          CREATE INDEX feedback_route_ts ON feedback (route, request_ts_ms);
          CREATE INDEX feedback_ts ON feedback (request_ts_ms);",
    },
    PgMigration {
        name: "rollout-1",
        sql: "CREATE TABLE rollouts (
            route TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            candidate TEXT NOT NULL,
            steps TEXT NOT NULL,
            state TEXT NOT NULL,
            step BIGINT NOT NULL,
            weight DOUBLE PRECISION NOT NULL,
            started_ms BIGINT NOT NULL,
            step_started_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL,
            \"window\" TEXT NOT NULL DEFAULT '{}',
            guards TEXT NOT NULL DEFAULT '[]',
            reason TEXT
          );
          CREATE TABLE rollout_history (
            id BIGSERIAL PRIMARY KEY,
            route TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            at_ms BIGINT NOT NULL,
            from_pos TEXT NOT NULL,
            to_pos TEXT NOT NULL,
            reason TEXT NOT NULL,
            weight DOUBLE PRECISION NOT NULL,
            candidate_requests BIGINT NOT NULL,
            incumbent_requests BIGINT NOT NULL
          );
          CREATE INDEX rollout_history_route ON rollout_history (route, fingerprint, id);",
    },
    // Decisions only one replica takes (PostgreSQL only: a SQLite store has one gateway).
    PgMigration {
        name: "lease-1",
        sql: crate::services::rollout::shared::LEASE_MIGRATION,
    },
    // Kept in the store beside the others when the store is shared (on SQLite the shadow
    // writer makes its table on the first pair).
    PgMigration {
        name: "shadow-1",
        sql: crate::services::shadow::store::PG_SCHEMA,
    },
    PgMigration {
        name: "config-history-1",
        sql: crate::services::config_history::PG_MIGRATION,
    },
];

fn err(pg: &PostgresSettings, detail: impl std::fmt::Display) -> StoreError {
    StoreError {
        path: pg.url.clone(),
        detail: detail.to_string(),
    }
}

/// The message of a PostgreSQL error with its cause (the client's `Display` alone says
/// only "db error" or "error connecting to server").
pub fn describe(e: &postgres::Error) -> String {
    use std::error::Error;
    match e.source() {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

/// Whether `e` means the connection is gone (the server went away, shut down or cannot be
/// reached) rather than a statement the server refused: the writer then reconnects and
/// tries its batch again.
pub fn connection_lost(client: &Client, e: &postgres::Error) -> bool {
    if client.is_closed() || e.is_closed() {
        return true;
    }
    match e.as_db_error() {
        // No server error: I/O, a dropped connection, a timeout.
        None => true,
        // Class 08 (connection exception), 57 (operator intervention: shutdown, restart).
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57")
        }
    }
}

/// Connect (no migration), over TLS when the URL's `sslmode` asks for it
/// ([`super::pg_tls`]).
pub fn connect(pg: &PostgresSettings) -> Result<Client, StoreError> {
    let (url, tls) = split_tls(&pg.url).map_err(|e| err(pg, format!("invalid URL: {e}")))?;
    let mut cfg: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| err(pg, format!("invalid URL: {}", describe(&e))))?;
    if let Some(p) = &pg.password {
        cfg.password(p);
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("switchyard");
    }
    let connected = match tls.mode {
        SslMode::Disable => {
            cfg.ssl_mode(postgres::config::SslMode::Disable);
            cfg.connect(NoTls)
        }
        mode => {
            let connector = super::pg_tls::connector(&tls).map_err(|e| err(pg, e))?;
            cfg.ssl_mode(if mode == SslMode::Prefer {
                postgres::config::SslMode::Prefer
            } else {
                postgres::config::SslMode::Require
            });
            cfg.connect(connector)
        }
    };
    connected.map_err(|e| err(pg, format!("cannot connect: {}", describe(&e))))
}

/// Connect and apply every migration not yet applied.
pub fn open_and_migrate(pg: &PostgresSettings) -> Result<Client, StoreError> {
    let mut client = connect(pg)?;
    migrate(&mut client).map_err(|e| err(pg, format!("migration failed: {}", describe(&e))))?;
    Ok(client)
}

fn migrate(client: &mut Client) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    // Replicas starting together: one migrates, the others wait here and find it done.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
    )?;
    for m in MIGRATIONS {
        let done: bool = tx
            .query_one(
                "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE name = $1)",
                &[&m.name],
            )?
            .get(0);
        if !done {
            if !m.sql.is_empty() {
                tx.batch_execute(m.sql)?;
            }
            tx.execute(
                "INSERT INTO schema_migrations (name, applied_ms) VALUES ($1, $2)",
                &[&m.name, &now_ms()],
            )?;
        }
    }
    tx.commit()
}

// ---- keys ----

const KEY_SELECT: &str = "SELECT id, hash, prefix, team, tags, rpm, tpm, budget_daily, budget_monthly, created_ms, revoked_ms FROM keys";

fn key_of(r: &postgres::Row) -> (String, KeyRecord) {
    let tags: String = r.get(4);
    (
        r.get(1),
        KeyRecord {
            id: r.get(0),
            prefix: r.get(2),
            team: r.get(3),
            tags: serde_json::from_str(&tags).unwrap_or_default(),
            limits: crate::config::governance::Limits {
                rpm: r.get::<_, Option<i64>>(5).map(|v| v.max(0) as u64),
                tpm: r.get::<_, Option<i64>>(6).map(|v| v.max(0) as u64),
                budget_daily: r.get(7),
                budget_monthly: r.get(8),
            },
            created_ms: r.get(9),
            revoked_ms: r.get(10),
        },
    )
}

/// Insert a prepared key (the secret's hash beside its record).
pub fn insert_key(client: &mut Client, rec: &KeyRecord, hash: &str) -> Result<(), postgres::Error> {
    let tags = serde_json::to_string(&rec.tags).unwrap_or_else(|_| "[]".into());
    let rpm = rec.limits.rpm.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    let tpm = rec.limits.tpm.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    client.execute(
        "INSERT INTO keys (id, hash, prefix, team, tags, rpm, tpm, budget_daily, budget_monthly, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &rec.id,
            &hash,
            &rec.prefix,
            &rec.team,
            &tags,
            &rpm,
            &tpm,
            &rec.limits.budget_daily,
            &rec.limits.budget_monthly,
            &rec.created_ms,
        ],
    )?;
    Ok(())
}

pub fn list_keys(client: &mut Client) -> Result<Vec<KeyRecord>, postgres::Error> {
    Ok(client
        .query(&format!("{KEY_SELECT} ORDER BY created_ms, id"), &[])?
        .iter()
        .map(|r| key_of(r).1)
        .collect())
}

pub fn revoke_key(client: &mut Client, id: &str) -> Result<Option<KeyRecord>, postgres::Error> {
    client.execute(
        "UPDATE keys SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
        &[&id, &now_ms()],
    )?;
    Ok(client
        .query_opt(&format!("{KEY_SELECT} WHERE id = $1"), &[&id])?
        .map(|r| key_of(&r).1))
}

pub fn keys_version(client: &mut Client) -> Result<i64, postgres::Error> {
    Ok(client
        .query_one(
            "SELECT v FROM governance_meta WHERE k = 'keys_version'",
            &[],
        )?
        .get(0))
}

/// Everything a key snapshot holds, read in one transaction so the version matches the rows.
pub fn load_keys(client: &mut Client) -> Result<KeySnapshotParts, postgres::Error> {
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let version: i64 = tx
        .query_one(
            "SELECT v FROM governance_meta WHERE k = 'keys_version'",
            &[],
        )?
        .get(0);
    let auth_recorded: bool = tx
        .query_one(
            "SELECT EXISTS(SELECT 1 FROM governance_meta WHERE k = 'auth_on' AND v = 1)",
            &[],
        )?
        .get(0);
    let keys = tx.query(KEY_SELECT, &[])?.iter().map(key_of).collect();
    tx.commit()?;
    Ok(KeySnapshotParts {
        version,
        auth_recorded,
        keys,
    })
}

/// A key's record and secret, made and stored.
pub fn create_key(client: &mut Client, new: &NewKey) -> Result<(KeyRecord, String), String> {
    let (rec, secret, hash) = super::keys::prepare_key(new)?;
    insert_key(client, &rec, &hash)
        .map_err(|e| format!("cannot store the key: {}", describe(&e)))?;
    Ok((rec, secret))
}

// ---- ledger ----

/// Columns of one ledger row, in insert order.
const LEDGER_COLUMNS: usize = 22;

/// Write rows with one binary `COPY`: PostgreSQL neither parses nor plans a statement per
/// batch, and reads each row's values without text conversion. A multi-row `INSERT` of the
/// same rows (22 parameters a row, a new statement for every batch size) cost the server
/// about 30 µs of CPU a row, a third of what the gateway spends on the request itself.
pub fn insert_ledger(
    tx: &mut postgres::Transaction<'_>,
    rows: &[&Row],
) -> Result<(), postgres::Error> {
    use postgres::types::Type;
    if rows.is_empty() {
        return Ok(());
    }
    let (i, t, f) = (Type::INT8, Type::TEXT, Type::FLOAT8);
    let types: [Type; LEDGER_COLUMNS] = [
        i.clone(), // ts_ms
        t.clone(), // key_id
        t.clone(), // team
        t.clone(), // tags
        t.clone(), // route
        t.clone(), // backend
        t.clone(), // model
        t.clone(), // kind
        i.clone(), // stream
        i.clone(), // tokens_in
        i.clone(), // tokens_out
        f.clone(), // cost_usd
        f.clone(), // baseline_usd
        f.clone(), // latency_ms
        f.clone(), // ttft_ms
        i.clone(), // status
        t.clone(), // outcome
        i.clone(), // estimated
        i.clone(), // usage_clamped
        i.clone(), // cost_derived
        t,         // request_id
        f,         // saved_usd
    ];
    let sink = tx.copy_in(
        "COPY ledger (ts_ms, key_id, team, tags, route, backend, model, kind, stream,
            tokens_in, tokens_out, cost_usd, baseline_usd, latency_ms, ttft_ms, status, outcome, estimated,
            usage_clamped, cost_derived, request_id, saved_usd) FROM STDIN (FORMAT binary)",
    )?;
    let mut writer = postgres::binary_copy::BinaryCopyInWriter::new(sink, &types);
    for r in rows {
        let p = LedgerParams::of(r);
        let mut values: Vec<&(dyn postgres::types::ToSql + Sync)> =
            Vec::with_capacity(LEDGER_COLUMNS);
        p.push_into(&mut values);
        writer.write(&values)?;
    }
    writer.finish()?;
    Ok(())
}

/// A row's values as PostgreSQL takes them (integers as BIGINT).
struct LedgerParams<'a> {
    r: &'a Row,
    tags: String,
    kind: &'static str,
    stream: i64,
    tokens_in: i64,
    tokens_out: i64,
    status: i64,
    estimated: i64,
    usage_clamped: i64,
    cost_derived: i64,
}

impl<'a> LedgerParams<'a> {
    fn of(r: &'a Row) -> LedgerParams<'a> {
        LedgerParams {
            r,
            tags: serde_json::to_string(&r.tags).unwrap_or_else(|_| "[]".into()),
            kind: r.kind.as_str(),
            stream: i64::from(r.stream),
            tokens_in: i64::try_from(r.tokens_in).unwrap_or(i64::MAX),
            tokens_out: i64::try_from(r.tokens_out).unwrap_or(i64::MAX),
            status: i64::from(r.status),
            estimated: i64::from(r.estimated),
            usage_clamped: i64::from(r.usage_clamped),
            cost_derived: i64::from(r.cost_derived),
        }
    }

    fn push_into<'s>(&'s self, out: &mut Vec<&'s (dyn postgres::types::ToSql + Sync)>) {
        let r = self.r;
        out.extend_from_slice(&[
            &r.ts_ms,
            &r.key_id,
            &r.team,
            &self.tags,
            &r.route,
            &r.backend,
            &r.model,
            &self.kind,
            &self.stream,
            &self.tokens_in,
            &self.tokens_out,
            &r.cost_usd,
            &r.baseline_usd,
            &r.latency_ms,
            &r.ttft_ms,
            &self.status,
            &r.outcome,
            &self.estimated,
            &self.usage_clamped,
            &self.cost_derived,
            &r.request_id,
            &r.saved_usd,
        ]);
    }
}

/// [`super::ledger::spend`] on PostgreSQL: the same groups and sums, one range scan of
/// `ledger_ts`.
pub fn spend(
    client: &mut Client,
    by: Option<GroupBy>,
    since_ms: i64,
) -> Result<Vec<SpendLine>, postgres::Error> {
    let group_expr = match by {
        None | Some(GroupBy::Route) => "NULL::TEXT",
        Some(GroupBy::Team) => "l.team",
        Some(GroupBy::Key) => "l.key_id",
        Some(GroupBy::Model) | Some(GroupBy::Target) => "l.backend || '/' || l.model",
        Some(GroupBy::Tag) => "t.value",
    };
    let from = if by == Some(GroupBy::Tag) {
        // One row per tag: a request tagged twice counts under both tags.
        "ledger l, json_array_elements_text(l.tags::json) t(value)"
    } else {
        "ledger l"
    };
    // Float sums like SQLite's TOTAL: a sum of BIGINTs is NUMERIC, which never overflows
    // but has no plain Rust type; the integer counts fit BIGINT.
    let sql = format!(
        "SELECT {group_expr}, l.route, COUNT(*), COUNT(*) FILTER (WHERE l.status >= 400),
                COALESCE(SUM(l.tokens_in::DOUBLE PRECISION), 0),
                COALESCE(SUM(l.tokens_out::DOUBLE PRECISION), 0), SUM(l.estimated)::BIGINT,
                COALESCE(SUM(l.cost_usd), 0), COALESCE(SUM(l.baseline_usd), 0),
                SUM(l.cost_derived)::BIGINT
         FROM {from} WHERE l.ts_ms >= $1
         GROUP BY 1, 2 ORDER BY SUM(l.cost_usd) DESC, 1, 2"
    );
    let mut lines: Vec<SpendLine> = client
        .query(sql.as_str(), &[&since_ms])?
        .iter()
        .map(|r| {
            let cost: f64 = r.get(7);
            let baseline: f64 = r.get(8);
            SpendLine {
                group: r.get(0),
                route: r.get(1),
                requests: r.get::<_, i64>(2).max(0) as u64,
                errors: r.get::<_, i64>(3).max(0) as u64,
                tokens_in: r.get::<_, f64>(4).max(0.0) as u64,
                tokens_out: r.get::<_, f64>(5).max(0.0) as u64,
                estimated_rows: r.get::<_, Option<i64>>(6).unwrap_or(0).max(0) as u64,
                derived_rows: r.get::<_, Option<i64>>(9).unwrap_or(0).max(0) as u64,
                cost_usd: cost,
                baseline_usd: baseline,
                savings_usd: baseline - cost,
                feedback_mean: None,
                feedback_count: None,
            }
        })
        .collect();
    if by == Some(GroupBy::Target) {
        let rows = client.query(
            "SELECT route, backend || '/' || model, AVG(score), COUNT(*) FROM feedback
             WHERE request_ts_ms >= $1 GROUP BY 1, 2",
            &[&since_ms],
        )?;
        for r in rows {
            let (route, target): (String, Option<String>) = (r.get(0), r.get(1));
            if let Some(l) = lines
                .iter_mut()
                .find(|l| l.group == target && l.route == route)
            {
                l.feedback_mean = r.get(2);
                l.feedback_count = Some(r.get::<_, i64>(3).max(0) as u64);
            }
        }
    }
    Ok(lines)
}

/// [`super::ledger::spend_by_key_and_team`] on PostgreSQL.
pub fn spend_by_key_and_team(
    client: &mut Client,
    since_ms: i64,
) -> Result<Vec<KeyTeamSpend>, postgres::Error> {
    Ok(client
        .query(
            "SELECT key_id, team, COALESCE(SUM(cost_usd), 0) FROM ledger WHERE ts_ms >= $1 GROUP BY 1, 2",
            &[&since_ms],
        )?
        .iter()
        .map(|r| {
            let cost: f64 = r.get(2);
            (r.get(0), r.get(1), (cost * 1e6).round() as i64)
        })
        .collect())
}
