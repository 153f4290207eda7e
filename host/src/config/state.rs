//! `[state]`, validated: the store (an embedded SQLite file, or a PostgreSQL database shared
//! by replicas) and the optional Redis shared by replicas.

use std::path::PathBuf;

use super::Problem;
use super::schema;

/// Default `[state] path`.
pub const DEFAULT_STORE: &str = "switchyard.db";

/// `[state]`, checked.
#[derive(Debug, Clone)]
pub struct StateSettings {
    pub path: PathBuf,
    pub redis: Option<String>,
    /// `[state] postgres`: when set, every piece of durable state lives there instead of
    /// in `path`.
    pub postgres: Option<PostgresSettings>,
}

/// Where PostgreSQL is and the password read from `postgres_password_env`.
#[derive(Clone, PartialEq)]
pub struct PostgresSettings {
    /// The URL as written (it holds no password: validation refuses one).
    pub url: String,
    pub password: Option<String>,
}

// The password never reaches a log line or an error message.
impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Which store a config names.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreTarget {
    Sqlite(PathBuf),
    Postgres(PostgresSettings),
}

impl StoreTarget {
    /// For messages: the file, or the URL (never a password).
    pub fn describe(&self) -> String {
        match self {
            StoreTarget::Sqlite(p) => p.display().to_string(),
            StoreTarget::Postgres(pg) => pg.url.clone(),
        }
    }
}

impl StateSettings {
    /// The store file of a config: `[state] path`, else `switchyard.db` in the working folder.
    pub fn store_path(state: Option<&StateSettings>) -> PathBuf {
        state
            .map(|s| s.path.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE))
    }

    /// The store of a config: PostgreSQL when `[state] postgres` is set, else the file.
    pub fn store_target(state: Option<&StateSettings>) -> StoreTarget {
        match state.and_then(|s| s.postgres.clone()) {
            Some(pg) => StoreTarget::Postgres(pg),
            None => StoreTarget::Sqlite(StateSettings::store_path(state)),
        }
    }
}

/// Check a PostgreSQL URL: the scheme, and no password inside it (a URL is printed in
/// logs and errors and lands in config repositories; the password belongs in the
/// environment). `Err` says what is wrong.
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or("must be a postgres:// or postgresql:// URL")?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let password_in_url = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        || rest
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("password=")));
    if password_in_url {
        return Err(
            "must not hold a password: put it in an environment variable and name that \
             variable in [state] postgres_password_env"
                .into(),
        );
    }
    Ok(())
}

pub(super) fn validate_state(
    s: &schema::StateSection,
    problems: &mut Vec<Problem>,
) -> StateSettings {
    let path = s
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE));
    if path.as_os_str().is_empty() {
        problems.push(Problem::new("state.path", "must not be empty"));
    }
    if let Some(r) = &s.redis
        && !(r.starts_with("redis://") || r.starts_with("rediss://") || r.starts_with("unix://"))
    {
        problems.push(Problem::new(
            "state.redis",
            "must be a redis://, rediss:// or unix:// URL",
        ));
    }
    let password = s.postgres_password_env.as_deref().and_then(|var| {
        if s.postgres.is_none() {
            problems.push(Problem::new(
                "state.postgres_password_env",
                "is set without [state] postgres",
            ));
            return None;
        }
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                problems.push(Problem::new(
                    "state.postgres_password_env",
                    format!("environment variable {var} is not set"),
                ));
                None
            }
        }
    });
    let postgres = s
        .postgres
        .as_ref()
        .and_then(|url| match check_postgres_url(url) {
            Ok(()) => Some(PostgresSettings {
                url: url.clone(),
                password,
            }),
            Err(msg) => {
                problems.push(Problem::new("state.postgres", msg));
                None
            }
        });
    StateSettings {
        path,
        redis: s.redis.clone(),
        postgres,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_inside_the_postgres_url_is_refused_naming_the_env_key() {
        for url in [
            "postgres://app:secret@db:5432/sy",
            "postgresql://app:@db/sy",
            "postgres://app@db/sy?password=secret",
        ] {
            let err = check_postgres_url(url).unwrap_err();
            assert!(err.contains("postgres_password_env"), "{url}: {err}");
        }
        for url in [
            "postgres://app@db:5432/sy",
            "postgresql://db/sy?sslmode=disable",
            "postgres://app@[::1]:5432/sy",
        ] {
            assert_eq!(check_postgres_url(url), Ok(()), "{url}");
        }
        assert!(check_postgres_url("mysql://db/sy").is_err());
    }

    #[test]
    fn the_password_is_never_in_debug_output() {
        let pg = PostgresSettings {
            url: "postgres://app@db/sy".into(),
            password: Some("hunter2".into()),
        };
        assert!(!format!("{pg:?}").contains("hunter2"));
    }
}
