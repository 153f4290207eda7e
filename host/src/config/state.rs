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
    let (_, tls) = split_tls(url)?;
    if let Some(ca) = &tls.root_cert
        && let Err(e) = std::fs::metadata(ca)
    {
        return Err(format!("sslrootcert {}: {e}", ca.display()));
    }
    Ok(())
}

/// `sslmode` in a PostgreSQL URL, with libpq's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP (also what a URL without `sslmode` gets).
    Disable,
    /// TLS when the server offers it, else plain; the certificate is not checked.
    Prefer,
    /// TLS or no connection; the certificate is checked against `sslrootcert` when one is
    /// named (like libpq), else not at all (encryption only).
    Require,
    /// TLS, the certificate chain checked against `sslrootcert` (else the system's roots),
    /// the host name not.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

/// The TLS parameters of a PostgreSQL URL, split off it.
#[derive(Debug, Clone, PartialEq)]
pub struct PgTls {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of the certificates to trust.
    pub root_cert: Option<PathBuf>,
}

/// Split libpq's `sslmode` and `sslrootcert` off a PostgreSQL URL (the client library
/// takes neither of those values or names): the rest of the URL and the TLS settings.
pub fn split_tls(url: &str) -> Result<(String, PgTls), String> {
    let mut tls = PgTls {
        mode: SslMode::Disable,
        root_cert: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), tls));
    };
    let mut kept = Vec::new();
    let mut mode = None;
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "sslmode" => {
                mode = Some(match v {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
                        ));
                    }
                })
            }
            "sslrootcert" => {
                let path = percent_decode(v);
                if path.is_empty() {
                    return Err("sslrootcert is empty: name a PEM file of CA certificates".into());
                }
                tls.root_cert = Some(PathBuf::from(path));
            }
            "sslcert" | "sslkey" | "sslcrl" | "sslpassword" => {
                return Err(format!(
                    "{k}: client certificates are not supported; use a password (postgres_password_env)"
                ));
            }
            _ => kept.push(kv),
        }
    }
    if let Some(m) = mode {
        tls.mode = m;
    } else if tls.root_cert.is_some() {
        // libpq: a root certificate without a mode verifies the chain.
        tls.mode = SslMode::VerifyCa;
    }
    if tls.root_cert.is_some() && matches!(tls.mode, SslMode::Disable | SslMode::Prefer) {
        return Err("sslrootcert needs sslmode=require, verify-ca or verify-full".into());
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, tls))
}

/// `%XX` escapes in a URL parameter (a path with spaces, say).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn libpq_tls_parameters_are_split_off_and_checked() {
        let (rest, tls) = split_tls(
            "postgres://app@db/sy?connect_timeout=3&sslmode=verify-full&sslrootcert=/a%20b/ca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://app@db/sy?connect_timeout=3");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/a b/ca.pem")));
        let (rest, tls) = split_tls("postgres://app@db/sy?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), tls.mode),
            ("postgres://app@db/sy", SslMode::Require)
        );
        assert_eq!(
            split_tls("postgres://db/sy").unwrap().1.mode,
            SslMode::Disable
        );
        for (url, says) in [
            ("postgres://db/sy?sslmode=allow-ish", "sslmode=allow-ish"),
            (
                "postgres://db/sy?sslmode=disable&sslrootcert=/ca.pem",
                "sslrootcert needs",
            ),
            ("postgres://db/sy?sslcert=/c.pem", "client certificates"),
        ] {
            let err = split_tls(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
        let err =
            check_postgres_url("postgres://db/sy?sslmode=require&sslrootcert=/no/such/ca.pem")
                .unwrap_err();
        assert!(err.contains("/no/such/ca.pem"), "{err}");
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
