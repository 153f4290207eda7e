//! `switchyard keys …` and `switchyard spend …`: work on the store directly (the file, or
//! PostgreSQL with `[state] postgres`), so they run with or without a gateway up (WAL lets
//! them share the file with one).
//!
//! The store file is `[state] path` of the config (`--config`, `$SWITCHYARD_CONFIG`,
//! `./switchyard.toml`), else `switchyard.db` in the working folder. Only the file's shape
//! is read from the config: these commands need no backend keys in the environment.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config::governance::Limits;
use crate::config::state::{DEFAULT_STORE, PostgresSettings, StoreTarget, check_postgres_url};
use crate::config::{self, ConfigSource};
use crate::services::governance::keys::{self as auth, NewKey};
use crate::services::governance::ledger::{self, GroupBy, SpendLine};
use crate::services::governance::{limits, store};

/// `switchyard keys`
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a virtual key; the secret is printed once.
    Create(CreateArgs),
    /// List keys (never their secrets).
    List(ListArgs),
    /// Revoke a key by id (takes effect on running gateways within a second).
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct ConfigOpt {
    /// Config file [default: $SWITCHYARD_CONFIG, then ./switchyard.toml, then built in]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub cfg: ConfigOpt,
    /// The team the key belongs to (team limits and budgets apply).
    #[arg(long)]
    pub team: String,
    /// A tag recorded on every ledger row of this key (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Tokens per minute (prompt + completion).
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Spend per UTC day, USD.
    #[arg(long = "budget-daily", value_name = "USD")]
    pub budget_daily: Option<f64>,
    /// Spend per UTC month, USD.
    #[arg(long = "budget-monthly", value_name = "USD")]
    pub budget_monthly: Option<f64>,
    /// Print the key as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub cfg: ConfigOpt,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub cfg: ConfigOpt,
    /// The key's id (`key_…`, from `keys list`).
    pub id: String,
}

/// `switchyard spend`
#[derive(Debug, Args)]
pub struct SpendArgs {
    #[command(flatten)]
    pub cfg: ConfigOpt,
    /// Group by team, key, tag, model, target or route (savings are always per route);
    /// `target` adds the mean caller feedback (`POST /v1/feedback`) of each.
    #[arg(long, value_name = "team|key|tag|model|target|route")]
    pub by: Option<String>,
    /// Only rows since T: `24h`, `7d`, `30m`, a date `2026-11-30`, `2026-11-30T12:00:00Z`,
    /// or Unix milliseconds.
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// The store file named by the config at `cfg` (parsed only, not validated).
pub fn store_file(cfg: Option<&Path>) -> Result<PathBuf, String> {
    let source = config::locate(cfg);
    let text = match &source {
        ConfigSource::Embedded => return Ok(PathBuf::from(DEFAULT_STORE)),
        ConfigSource::File(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("{}: cannot read the config file: {e}", p.display()))?,
    };
    let file = config::parse(&text).map_err(|p| format!("{source}: {}: {}", p.path, p.message))?;
    Ok(file
        .state
        .and_then(|s| s.path)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE)))
}

/// The store named by the config at `cfg`: `[state] postgres` (with the password from
/// `postgres_password_env`) when set, else the file. Parsed only, like [`store_file`].
pub fn store_target(cfg: Option<&Path>) -> Result<StoreTarget, String> {
    let source = config::locate(cfg);
    let state = match &source {
        ConfigSource::Embedded => None,
        ConfigSource::File(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("{}: cannot read the config file: {e}", p.display()))?;
            config::parse(&text)
                .map_err(|p| format!("{source}: {}: {}", p.path, p.message))?
                .state
        }
    };
    let Some(url) = state.as_ref().and_then(|s| s.postgres.clone()) else {
        return Ok(StoreTarget::Sqlite(store_file(cfg)?));
    };
    check_postgres_url(&url).map_err(|e| format!("{source}: state.postgres: {e}"))?;
    let password = match state.and_then(|s| s.postgres_password_env) {
        None => None,
        Some(var) => Some(std::env::var(&var).map_err(|_| {
            format!("{source}: state.postgres_password_env: environment variable {var} is not set")
        })?),
    };
    Ok(StoreTarget::Postgres(PostgresSettings { url, password }))
}

pub(super) fn open(cfg: &ConfigOpt) -> Result<store::Conn, String> {
    let target = store_target(cfg.config.as_deref())?;
    store::Conn::open(&target).map_err(|e| e.to_string())
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

/// Run `switchyard keys …`.
pub fn keys(cmd: KeysCmd) -> ExitCode {
    match cmd {
        KeysCmd::Create(a) => {
            for (name, v) in [
                ("--budget-daily", a.budget_daily),
                ("--budget-monthly", a.budget_monthly),
            ] {
                if let Some(x) = v
                    && !(x.is_finite() && x >= 0.0)
                {
                    return fail(format!("{name} must be a non-negative number of USD"));
                }
            }
            let mut conn = match open(&a.cfg) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let new = NewKey {
                team: a.team,
                tags: a.tags,
                limits: Limits {
                    rpm: a.rpm,
                    tpm: a.tpm,
                    budget_daily: a.budget_daily,
                    budget_monthly: a.budget_monthly,
                },
            };
            match auth::create(&mut conn, &new) {
                Ok((rec, secret)) => {
                    if a.json {
                        let mut v = rec.to_json();
                        v["key"] = serde_json::Value::String(secret);
                        println!("{v}");
                    } else {
                        println!("{secret}");
                        eprintln!(
                            "created {} for team {} (the key is shown only this once)",
                            rec.id, rec.team
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        KeysCmd::List(a) => {
            let mut conn = match open(&a.cfg) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let keys = match auth::list(&mut conn) {
                Ok(k) => k,
                Err(e) => return fail(e),
            };
            if a.json {
                let v: Vec<_> = keys.iter().map(|k| k.to_json()).collect();
                println!("{}", serde_json::Value::Array(v));
                return ExitCode::SUCCESS;
            }
            println!(
                "{:<18} {:<12} {:<16} {:<8} {:>8} {:>10} {:>10} {:>10}  tags",
                "id", "prefix", "team", "status", "rpm", "tpm", "usd/day", "usd/month"
            );
            let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            let usd = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            for k in keys {
                println!(
                    "{:<18} {:<12} {:<16} {:<8} {:>8} {:>10} {:>10} {:>10}  {}",
                    k.id,
                    format!("{}…", k.prefix),
                    k.team,
                    if k.revoked_ms.is_some() {
                        "revoked"
                    } else {
                        "active"
                    },
                    opt(k.limits.rpm),
                    opt(k.limits.tpm),
                    usd(k.limits.budget_daily),
                    usd(k.limits.budget_monthly),
                    k.tags.join(",")
                );
            }
            ExitCode::SUCCESS
        }
        KeysCmd::Revoke(a) => {
            let mut conn = match open(&a.cfg) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            match auth::revoke(&mut conn, &a.id) {
                Ok(Some(rec)) => {
                    println!("revoked {} (team {})", rec.id, rec.team);
                    ExitCode::SUCCESS
                }
                Ok(None) => fail(format!("no key with id {}", a.id)),
                Err(e) => fail(e),
            }
        }
    }
}

/// Parse `--since`: a duration back from `now_ms` (`90s`, `30m`, `24h`, `7d`), a UTC date
/// or date-time, or Unix milliseconds.
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    let err = || {
        format!(
            "\"{s}\" is not a time: use 30m, 24h, 7d, 2026-11-30, 2026-11-30T12:00:00Z or Unix ms"
        )
    };
    if let Some(unit) = s.chars().last()
        && unit.is_ascii_alphabetic()
        && let Some(n) = s[..s.len() - unit.len_utf8()].parse::<i64>().ok()
        && n >= 0
    {
        let ms = match unit {
            's' => 1000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(err()),
        };
        return Ok(now_ms - n.saturating_mul(ms));
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let (date, time) = s.split_once('T').unwrap_or((s, ""));
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (Some(Some(y)), Some(Some(m)), Some(Some(day))) = (d.next(), d.next(), d.next()) else {
        return Err(err());
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return Err(err());
    }
    let mut ms = limits::days_from_civil(y, m as u32, day as u32) * 86_400_000;
    if !time.is_empty() {
        let t = time.trim_end_matches('Z');
        let mut parts = t.splitn(3, ':').map(|p| p.parse::<f64>().ok());
        let h = parts.next().flatten().ok_or_else(err)?;
        let mi = parts.next().flatten().unwrap_or(0.0);
        let sec = parts.next().flatten().unwrap_or(0.0);
        ms += ((h * 3600.0 + mi * 60.0 + sec) * 1000.0) as i64;
    }
    Ok(ms)
}

/// The JSON form of a spend report.
pub fn report_json(by: Option<GroupBy>, since_ms: i64, lines: &[SpendLine]) -> serde_json::Value {
    let t = totals(lines);
    serde_json::json!({
        "by": by.map(GroupBy::as_str),
        "since_ms": since_ms,
        "lines": lines,
        "total": t,
    })
}

fn totals(lines: &[SpendLine]) -> SpendLine {
    let mut t = SpendLine {
        group: None,
        route: "*".into(),
        ..Default::default()
    };
    for l in lines {
        // Saturating: an upstream's absurd usage must not fail the report.
        t.requests = t.requests.saturating_add(l.requests);
        t.errors = t.errors.saturating_add(l.errors);
        t.tokens_in = t.tokens_in.saturating_add(l.tokens_in);
        t.tokens_out = t.tokens_out.saturating_add(l.tokens_out);
        t.estimated_rows = t.estimated_rows.saturating_add(l.estimated_rows);
        t.derived_rows = t.derived_rows.saturating_add(l.derived_rows);
        t.cost_usd += l.cost_usd;
        t.baseline_usd += l.baseline_usd;
        t.savings_usd += l.savings_usd;
    }
    t
}

/// Run `switchyard spend`.
pub fn spend(a: SpendArgs) -> ExitCode {
    let by = match a.by.as_deref() {
        None => None,
        Some(s) => match GroupBy::parse(s) {
            Some(b) => Some(b),
            None => {
                return fail(format!(
                    "--by: unknown grouping \"{s}\" (team, key, tag, model, target or route)"
                ));
            }
        },
    };
    let since = match a.since.as_deref() {
        None => 0,
        Some(s) => match parse_since(s, crate::base::clock::now_ms()) {
            Ok(t) => t,
            Err(e) => return fail(format!("--since: {e}")),
        },
    };
    let mut conn = match open(&a.cfg) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let lines = match ledger::spend_in(&mut conn, by, since) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    if a.json {
        println!("{}", report_json(by, since, &lines));
        return ExitCode::SUCCESS;
    }
    let head = by.map_or("", GroupBy::as_str);
    let show_group = by.is_some() && by != Some(GroupBy::Route);
    let show_feedback = by == Some(GroupBy::Target);
    let row = |group: &str, l: &SpendLine| {
        let pct = if l.baseline_usd > 0.0 {
            format!("{:.1}%", 100.0 * l.savings_usd / l.baseline_usd)
        } else {
            "-".into()
        };
        if show_group {
            print!("{group:<20} ");
        }
        print!(
            "{:<20} {:>9} {:>7} {:>12} {:>12} {:>12.4} {:>12.4} {:>12.4} {:>7}",
            l.route,
            l.requests,
            l.errors,
            l.tokens_in,
            l.tokens_out,
            l.cost_usd,
            l.baseline_usd,
            l.savings_usd,
            pct
        );
        if show_feedback {
            match (l.feedback_mean, l.feedback_count) {
                (Some(m), Some(n)) => print!(" {:>9}", format!("{m:.2} ({n})")),
                _ => print!(" {:>9}", "-"),
            }
        }
        println!();
    };
    if show_group {
        print!("{head:<20} ");
    }
    print!(
        "{:<20} {:>9} {:>7} {:>12} {:>12} {:>12} {:>12} {:>12} {:>7}",
        "route",
        "requests",
        "errors",
        "tokens_in",
        "tokens_out",
        "cost_usd",
        "baseline",
        "savings",
        "saved"
    );
    if show_feedback {
        print!(" {:>9}", "feedback");
    }
    println!();
    for l in &lines {
        row(l.group.as_deref().unwrap_or("-"), l);
    }
    row("total", &totals(&lines));
    let est: u64 = lines.iter().map(|l| l.estimated_rows).sum();
    if est > 0 {
        println!("({est} rows have estimated token counts: the upstream reported no usage)");
    }
    let derived: u64 = lines.iter().map(|l| l.derived_rows).sum();
    if derived > 0 {
        println!(
            "({derived} rows have derived costs: gpu_hour_usd spread over the workers' measured throughput)"
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_durations_dates_and_ms() {
        let now = 1_000_000_000_000;
        assert_eq!(parse_since("24h", now).unwrap(), now - 86_400_000);
        assert_eq!(parse_since("30m", now).unwrap(), now - 1_800_000);
        assert_eq!(parse_since("1970-01-02", now).unwrap(), 86_400_000);
        assert_eq!(parse_since("1970-01-01T01:00:00Z", now).unwrap(), 3_600_000);
        assert_eq!(parse_since("12345", now).unwrap(), 12345);
        assert!(parse_since("yesterday", now).is_err());
    }
}
