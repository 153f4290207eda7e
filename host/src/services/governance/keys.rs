//! Virtual API keys: who is calling.
//!
//! A key is `sk-sy-` followed by 48 hex digits (192 random bits). Only its SHA-256 is stored
//! (table `keys`), with an id (`key_…`, safe to log and to pass to `keys revoke`), the team,
//! tags, and per-key limits and budgets. The secret is shown once, at creation.
//!
//! The request path never queries SQLite: [`KeyCache`] holds every key in memory, indexed by
//! hash, and a background thread reloads it when the `keys_version` counter (bumped by
//! triggers on every change to `keys`, whoever makes it: the CLI on the same file, the
//! admin API, another replica sharing the file) moves. A key revoked from the CLI stops
//! working within [`REFRESH`].
//!
//! Client auth is on once any key exists (or `[auth] required = true`); from then on a
//! request without a valid key gets 401 in OpenAI's error shape. The caller's key is never
//! forwarded upstream: the upstream client replaces `Authorization` with the backend's own key.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderMap;
use rusqlite::{Connection, OptionalExtension, params};

use super::store::{self, Migration};
use crate::base::GatewayError;
use crate::base::clock::now_ms;
use crate::base::digest::sha256;
use crate::config::governance::Limits;
use crate::config::state::{PostgresSettings, StoreTarget};

/// How often the key cache checks the store for changes.
pub const REFRESH: Duration = Duration::from_millis(500);
/// The same on PostgreSQL, where other replicas make the changes: a key created or
/// revoked anywhere is in force everywhere within a second (one indexed one-row read each).
pub const REFRESH_SHARED: Duration = Duration::from_millis(250);
/// Every virtual key starts with this.
pub const KEY_PREFIX: &str = "sk-sy-";
const KEY_HEX_LEN: usize = 48;

/// The `keys` table and the change counter the cache polls.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "keys-1",
        sql: "CREATE TABLE keys (
            id TEXT PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            team TEXT NOT NULL,
            tags TEXT NOT NULL DEFAULT '[]',
            rpm INTEGER,
            tpm INTEGER,
            budget_daily REAL,
            budget_monthly REAL,
            created_ms INTEGER NOT NULL,
            revoked_ms INTEGER
          );
          CREATE TABLE governance_meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
          INSERT INTO governance_meta (k, v) VALUES ('keys_version', 0);
          CREATE TRIGGER keys_ai AFTER INSERT ON keys BEGIN
            UPDATE governance_meta SET v = v + 1 WHERE k = 'keys_version'; END;
          CREATE TRIGGER keys_au AFTER UPDATE ON keys BEGIN
            UPDATE governance_meta SET v = v + 1 WHERE k = 'keys_version'; END;
          CREATE TRIGGER keys_ad AFTER DELETE ON keys BEGIN
            UPDATE governance_meta SET v = v + 1 WHERE k = 'keys_version'; END;",
    },
    // The decision that client auth is on, kept once the first key is created: deleting
    // the keys (or a store emptied by hand) must not silently open the gateway. Stores that
    // already hold keys get it at once.
    Migration {
        name: "keys-2-auth-on",
        sql: "INSERT OR IGNORE INTO governance_meta (k, v)
            SELECT 'auth_on', 1 WHERE EXISTS (SELECT 1 FROM keys);
          CREATE TRIGGER keys_auth_on AFTER INSERT ON keys BEGIN
            INSERT OR IGNORE INTO governance_meta (k, v) VALUES ('auth_on', 1); END;",
    },
];

/// A stored key (never the secret).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KeyRecord {
    pub id: String,
    /// The first characters of the secret, for recognising it in a list.
    pub prefix: String,
    pub team: String,
    pub tags: Vec<String>,
    #[serde(skip)]
    pub limits: Limits,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

impl KeyRecord {
    /// The limits as a JSON object, for listings.
    pub fn limits_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rpm": self.limits.rpm,
            "tpm": self.limits.tpm,
            "budget_daily": self.limits.budget_daily,
            "budget_monthly": self.limits.budget_monthly,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            for (k, l) in self.limits_json().as_object().cloned().unwrap_or_default() {
                o.insert(k, l);
            }
        }
        v
    }
}

fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

fn random_hex(n_bytes: usize) -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; n_bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| "the system random generator failed".to_string())?;
    Ok(hex(&buf))
}

/// A new key's settings.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub team: String,
    pub tags: Vec<String>,
    pub limits: Limits,
}

/// The largest rate limit a key holds: what SQLite's INTEGER stores.
pub const MAX_LIMIT: u64 = i64::MAX as u64;
/// The longest team name and tag, in bytes.
const MAX_NAME_BYTES: usize = 128;

impl NewKey {
    /// Every setting within range: else the field at fault and why (the admin API answers
    /// 400 naming it, the CLI prints it).
    pub fn check(&self) -> Result<(), GatewayError> {
        let invalid =
            |param: &'static str, reason: String| Err(GatewayError::InvalidValue { param, reason });
        let team = self.team.trim();
        if team.is_empty() {
            return invalid("team", "a key needs a team: it must not be blank".into());
        }
        if team.len() > MAX_NAME_BYTES {
            return invalid("team", format!("at most {MAX_NAME_BYTES} bytes"));
        }
        if self
            .tags
            .iter()
            .any(|t| t.trim().is_empty() || t.len() > MAX_NAME_BYTES)
        {
            return invalid(
                "tags",
                format!("each tag must be non-blank and at most {MAX_NAME_BYTES} bytes"),
            );
        }
        for (param, v) in [("rpm", self.limits.rpm), ("tpm", self.limits.tpm)] {
            if let Some(v) = v
                && !(1..=MAX_LIMIT).contains(&v)
            {
                return invalid(
                    param,
                    format!(
                        "must be between 1 and {MAX_LIMIT} (leave it out for no limit), got {v}"
                    ),
                );
            }
        }
        for (param, v) in [
            ("budget_daily", self.limits.budget_daily),
            ("budget_monthly", self.limits.budget_monthly),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return invalid(
                    param,
                    format!("must be a non-negative number of USD, got {v}"),
                );
            }
        }
        Ok(())
    }
}

/// A new key's record, secret and the secret's hash (what the store keeps), not yet stored.
pub(crate) fn prepare_key(new: &NewKey) -> Result<(KeyRecord, String, String), String> {
    new.check().map_err(|e| e.to_string())?;
    let secret = format!("{KEY_PREFIX}{}", random_hex(KEY_HEX_LEN / 2)?);
    let id = format!("key_{}", random_hex(6)?);
    let rec = KeyRecord {
        id,
        prefix: secret[..KEY_PREFIX.len() + 4].to_string(),
        team: new.team.trim().to_string(),
        tags: new.tags.clone(),
        limits: new.limits,
        created_ms: now_ms(),
        revoked_ms: None,
    };
    let hash = hex(&sha256(secret.as_bytes()));
    Ok((rec, secret, hash))
}

/// Create a key; returns the record and the secret (shown once, never stored).
pub fn create_key(conn: &Connection, new: &NewKey) -> Result<(KeyRecord, String), String> {
    let (rec, secret, hash) = prepare_key(new)?;
    conn.execute(
        "INSERT INTO keys (id, hash, prefix, team, tags, rpm, tpm, budget_daily, budget_monthly, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            rec.id,
            hash,
            rec.prefix,
            rec.team,
            serde_json::to_string(&rec.tags).unwrap_or_else(|_| "[]".into()),
            // In range (`NewKey::check`); saturating all the same, never wrapping.
            rec.limits.rpm.map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
            rec.limits.tpm.map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
            rec.limits.budget_daily,
            rec.limits.budget_monthly,
            rec.created_ms,
        ],
    )
    .map_err(|e| format!("cannot store the key: {e}"))?;
    Ok((rec, secret))
}

/// [`create_key`] on whichever store `conn` is.
pub fn create(conn: &mut store::Conn, new: &NewKey) -> Result<(KeyRecord, String), String> {
    match conn {
        store::Conn::Sqlite(c) => create_key(c, new),
        store::Conn::Postgres(c) => super::pg::create_key(c, new),
    }
}

/// [`list_keys`] on whichever store `conn` is.
pub fn list(conn: &mut store::Conn) -> Result<Vec<KeyRecord>, String> {
    match conn {
        store::Conn::Sqlite(c) => list_keys(c).map_err(|e| e.to_string()),
        store::Conn::Postgres(c) => super::pg::list_keys(c).map_err(|e| super::pg::describe(&e)),
    }
}

/// [`revoke_key`] on whichever store `conn` is.
pub fn revoke(conn: &mut store::Conn, id: &str) -> Result<Option<KeyRecord>, String> {
    match conn {
        store::Conn::Sqlite(c) => revoke_key(c, id).map_err(|e| e.to_string()),
        store::Conn::Postgres(c) => {
            super::pg::revoke_key(c, id).map_err(|e| super::pg::describe(&e))
        }
    }
}

fn record_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, KeyRecord)> {
    let tags: String = r.get(4)?;
    Ok((
        r.get(1)?,
        KeyRecord {
            id: r.get(0)?,
            prefix: r.get(2)?,
            team: r.get(3)?,
            tags: serde_json::from_str(&tags).unwrap_or_default(),
            limits: Limits {
                rpm: r.get::<_, Option<i64>>(5)?.map(|v| v.max(0) as u64),
                tpm: r.get::<_, Option<i64>>(6)?.map(|v| v.max(0) as u64),
                budget_daily: r.get(7)?,
                budget_monthly: r.get(8)?,
            },
            created_ms: r.get(9)?,
            revoked_ms: r.get(10)?,
        },
    ))
}

const SELECT: &str = "SELECT id, hash, prefix, team, tags, rpm, tpm, budget_daily, budget_monthly, created_ms, revoked_ms FROM keys";

/// Every key, oldest first.
pub fn list_keys(conn: &Connection) -> rusqlite::Result<Vec<KeyRecord>> {
    let mut stmt = conn.prepare(&format!("{SELECT} ORDER BY created_ms, id"))?;
    let rows = stmt.query_map([], record_of)?;
    rows.map(|r| r.map(|(_, k)| k)).collect()
}

/// Revoke a key by id: `Ok(None)` if there is no such key, else the record after.
pub fn revoke_key(conn: &Connection, id: &str) -> rusqlite::Result<Option<KeyRecord>> {
    conn.execute(
        "UPDATE keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
        params![id, now_ms()],
    )?;
    conn.query_row(&format!("{SELECT} WHERE id = ?1"), [id], record_of)
        .optional()
        .map(|o| o.map(|(_, k)| k))
}

fn keys_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT v FROM governance_meta WHERE k = 'keys_version'",
        [],
        |r| r.get(0),
    )
}

/// Whether the store recorded that client auth is on (a key was created in it once).
fn auth_recorded(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM governance_meta WHERE k = 'auth_on' AND v = 1)",
        [],
        |r| r.get(0),
    )
}

/// Every key in memory, by the hash of its secret.
#[derive(Debug, Default)]
pub struct KeySnapshot {
    version: i64,
    by_hash: HashMap<[u8; 32], Arc<KeyRecord>>,
    /// The store recorded that client auth is on, whatever keys it holds now.
    auth_recorded: bool,
}

/// What a snapshot is built from, as a backend reads it: `(hash hex, record)` per key.
pub struct KeySnapshotParts {
    pub version: i64,
    pub auth_recorded: bool,
    pub keys: Vec<(String, KeyRecord)>,
}

impl KeySnapshot {
    fn from_parts(p: KeySnapshotParts) -> KeySnapshot {
        let by_hash = p
            .keys
            .into_iter()
            .filter_map(|(hash_hex, rec)| Some((unhex32(&hash_hex)?, Arc::new(rec))))
            .collect();
        KeySnapshot {
            version: p.version,
            by_hash,
            auth_recorded: p.auth_recorded,
        }
    }

    fn load(conn: &Connection) -> rusqlite::Result<KeySnapshot> {
        let version = keys_version(conn)?;
        let auth_recorded = auth_recorded(conn)?;
        let mut stmt = conn.prepare(SELECT)?;
        let mut by_hash = HashMap::new();
        for r in stmt.query_map([], record_of)? {
            let (hash_hex, rec) = r?;
            if let Some(h) = unhex32(&hash_hex) {
                by_hash.insert(h, Arc::new(rec));
            }
        }
        Ok(KeySnapshot {
            version,
            by_hash,
            auth_recorded,
        })
    }

    /// True once client auth is on: a key (even a revoked one) exists, or one did (the
    /// store keeps that decision).
    pub fn any(&self) -> bool {
        self.auth_recorded || !self.by_hash.is_empty()
    }

    /// How many keys the store holds (revoked ones included).
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether the store holds no key at all.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Whether the store recorded that client auth is on.
    pub fn auth_recorded(&self) -> bool {
        self.auth_recorded
    }
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        let d = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
        *o = (d(b[2 * i])? << 4) | d(b[2 * i + 1])?;
    }
    Some(out)
}

/// Where a key cache reads from.
enum Source {
    Sqlite(std::sync::Mutex<Connection>),
    /// The connection is dropped on an error and made again at the next refresh.
    Postgres {
        settings: Box<PostgresSettings>,
        client: std::sync::Mutex<Option<postgres::Client>>,
    },
}

/// The in-memory key table, kept fresh by a background thread.
pub struct KeyCache {
    snapshot: ArcSwap<KeySnapshot>,
    source: Source,
    /// Whether the last refresh reached the store (to log a change of state once).
    reachable: std::sync::atomic::AtomicBool,
}

impl KeyCache {
    /// Load every key from the store file and start the refresher.
    pub fn open(path: &Path) -> Result<Arc<KeyCache>, store::StoreError> {
        KeyCache::open_target(&StoreTarget::Sqlite(path.to_path_buf()))
    }

    /// Load every key from the store a config names and start the refresher.
    pub fn open_target(target: &StoreTarget) -> Result<Arc<KeyCache>, store::StoreError> {
        let (snap, source, every) = match target {
            StoreTarget::Sqlite(path) => {
                let conn = store::connect(path)?;
                let snap = KeySnapshot::load(&conn).map_err(|e| store::StoreError {
                    path: path.display().to_string(),
                    detail: format!("cannot read keys: {e}"),
                })?;
                (snap, Source::Sqlite(std::sync::Mutex::new(conn)), REFRESH)
            }
            StoreTarget::Postgres(pg) => {
                let mut client = super::pg::connect(pg)?;
                let parts = super::pg::load_keys(&mut client).map_err(|e| store::StoreError {
                    path: pg.url.clone(),
                    detail: format!("cannot read keys: {}", super::pg::describe(&e)),
                })?;
                let source = Source::Postgres {
                    settings: Box::new(pg.clone()),
                    client: std::sync::Mutex::new(Some(client)),
                };
                (KeySnapshot::from_parts(parts), source, REFRESH_SHARED)
            }
        };
        let cache = Arc::new(KeyCache {
            snapshot: ArcSwap::from_pointee(snap),
            source,
            reachable: std::sync::atomic::AtomicBool::new(true),
        });
        let weak: Weak<KeyCache> = Arc::downgrade(&cache);
        let _ = std::thread::Builder::new()
            .name("key-cache".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(c) = weak.upgrade() else { return };
                    c.refresh();
                }
            });
        Ok(cache)
    }

    /// Reload if the keys changed since the last load. A store that cannot be read leaves
    /// the cached keys in force: authentication never waits on the store.
    pub fn refresh(&self) {
        let current = self.snapshot.load().version;
        let result = match &self.source {
            Source::Sqlite(conn) => {
                let Ok(conn) = conn.lock() else { return };
                match keys_version(&conn) {
                    Ok(v) if v == current => Ok(None),
                    Ok(_) => KeySnapshot::load(&conn)
                        .map(Some)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Source::Postgres { settings, client } => {
                let Ok(mut guard) = client.lock() else { return };
                let result = (|| {
                    if guard.as_ref().is_none_or(|c| c.is_closed()) {
                        *guard = Some(super::pg::connect(settings).map_err(|e| e.to_string())?);
                    }
                    let Some(c) = guard.as_mut() else {
                        return Ok(None);
                    };
                    let describe = |e: postgres::Error| super::pg::describe(&e);
                    if super::pg::keys_version(c).map_err(describe)? == current {
                        return Ok(None);
                    }
                    let parts = super::pg::load_keys(c).map_err(describe)?;
                    Ok(Some(KeySnapshot::from_parts(parts)))
                })();
                if result.is_err() {
                    *guard = None;
                }
                result
            }
        };
        use std::sync::atomic::Ordering::Relaxed;
        match result {
            Ok(fresh) => {
                if !self.reachable.swap(true, Relaxed) {
                    tracing::info!("key cache: the store is reachable again");
                }
                if let Some(s) = fresh {
                    self.snapshot.store(Arc::new(s));
                }
            }
            Err(e) => {
                if self.reachable.swap(false, Relaxed) {
                    tracing::warn!(error = %e, "key cache: cannot read the store; serving the cached keys");
                }
            }
        }
    }

    pub fn snapshot(&self) -> Arc<KeySnapshot> {
        self.snapshot.load_full()
    }
}

/// The bearer token of an `Authorization` header: `Ok(None)` when absent.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let Some(v) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| GatewayError::AuthMalformed)?;
    let (scheme, token) = v
        .trim()
        .split_once(' ')
        .ok_or(GatewayError::AuthMalformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(GatewayError::AuthMalformed);
    }
    Ok(Some(token.trim()))
}

/// Who is calling: the key record, or `None` when client auth is off. Errors are 401s.
pub fn authenticate(
    headers: &HeaderMap,
    keys: &KeySnapshot,
    required: bool,
) -> Result<Option<Arc<KeyRecord>>, GatewayError> {
    if !required && !keys.any() {
        return Ok(None);
    }
    let token = bearer(headers)?.ok_or(GatewayError::AuthMissing)?;
    let well_formed = token
        .strip_prefix(KEY_PREFIX)
        .is_some_and(|h| h.len() == KEY_HEX_LEN && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !well_formed {
        return Err(GatewayError::AuthMalformed);
    }
    let rec = keys
        .by_hash
        .get(&sha256(token.to_ascii_lowercase().as_bytes()))
        .ok_or(GatewayError::AuthUnknown)?;
    if rec.revoked_ms.is_some() {
        return Err(GatewayError::AuthRevoked {
            key_id: rec.id.clone(),
        });
    }
    Ok(Some(rec.clone()))
}

/// Check the admin token (`[admin] token_env`) on an `/admin/*` request: the one check
/// for every admin endpoint (traffic and governance). `expected_sha256` is `None` when the
/// admin API is off.
pub fn authenticate_admin(
    headers: &HeaderMap,
    expected_sha256: Option<&[u8; 32]>,
) -> Result<(), GatewayError> {
    let Some(expected) = expected_sha256 else {
        return Err(GatewayError::AdminDisabled);
    };
    let token = match bearer(headers) {
        Ok(Some(t)) => t,
        Ok(None) | Err(_) => return Err(GatewayError::AdminTokenMissing),
    };
    // Comparing digests keeps the comparison's timing independent of the secret's bytes.
    if &sha256(token.as_bytes()) == expected {
        Ok(())
    } else {
        Err(GatewayError::AdminUnauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = store::open_and_migrate(&dir.path().join("k.db")).unwrap();
        (dir, conn)
    }

    fn auth_header(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn keys_are_stored_hashed_and_authenticate_until_revoked() {
        let (_d, conn) = setup();
        let (rec, secret) = create_key(
            &conn,
            &NewKey {
                team: "search".into(),
                tags: vec!["beta".into()],
                limits: Limits {
                    rpm: Some(10),
                    ..Default::default()
                },
            },
        )
        .unwrap();
        assert!(secret.starts_with("sk-sy-") && secret.len() == 6 + 48);
        let stored: String = conn
            .query_row(
                "SELECT group_concat(hash || prefix || id) FROM keys",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!stored.contains(&secret[6..]), "the secret is not stored");

        let snap = KeySnapshot::load(&conn).unwrap();
        let got = authenticate(&auth_header(&format!("Bearer {secret}")), &snap, false)
            .unwrap()
            .unwrap();
        assert_eq!(got.team, "search");
        assert_eq!(got.limits.rpm, Some(10));

        assert!(matches!(
            authenticate(&HeaderMap::new(), &snap, false),
            Err(GatewayError::AuthMissing)
        ));
        assert!(matches!(
            authenticate(&auth_header("Basic abc"), &snap, false),
            Err(GatewayError::AuthMalformed)
        ));
        assert!(matches!(
            authenticate(&auth_header("Bearer sk-sy-nothex"), &snap, false),
            Err(GatewayError::AuthMalformed)
        ));
        let unknown = format!("Bearer sk-sy-{}", "0".repeat(48));
        assert!(matches!(
            authenticate(&auth_header(&unknown), &snap, false),
            Err(GatewayError::AuthUnknown)
        ));

        let v0 = keys_version(&conn).unwrap();
        revoke_key(&conn, &rec.id).unwrap().unwrap();
        assert!(keys_version(&conn).unwrap() > v0);
        let snap = KeySnapshot::load(&conn).unwrap();
        assert!(matches!(
            authenticate(&auth_header(&format!("Bearer {secret}")), &snap, false),
            Err(GatewayError::AuthRevoked { .. })
        ));
        assert!(revoke_key(&conn, "key_nope").unwrap().is_none());
    }

    #[test]
    fn auth_is_off_without_keys_unless_required() {
        let (_d, conn) = setup();
        let snap = KeySnapshot::load(&conn).unwrap();
        assert!(
            authenticate(&HeaderMap::new(), &snap, false)
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            authenticate(&HeaderMap::new(), &snap, true),
            Err(GatewayError::AuthMissing)
        ));
    }
}
