//! The `switchyard` command line: `serve`, `check`, and the commands that read the store or
//! call a running gateway (`keys`, `spend`, `shadow report`, `rollout`, `reload`, `rollback`).
//!
//! Every subcommand takes `--config PATH`; without it the config is `$SWITCHYARD_CONFIG`,
//! then `./switchyard.toml`, then the embedded default (which the first log line says).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub mod admin;
pub mod capture;
pub mod health;
pub mod keys;
pub mod rollout;
pub mod router;
pub mod shadow;
pub mod state;

use crate::config::{self, ConfigSource, LogFormat, Runtime};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An OpenAI-compatible gateway for moving traffic to your own models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Validate the config (and everything it would load), print what was found.
    Check(ConfigArg),
    /// Ask a running gateway for /healthz (or /readyz): exit 0 when it answers 200.
    Health(health::HealthArgs),
    /// Restore the previous config version on the running gateway (admin API).
    Rollback(AdminArgs),
    /// Make the running gateway reload its config file now (admin API).
    Reload(AdminArgs),
    /// Mirrored traffic: `shadow report`.
    #[command(subcommand)]
    Shadow(ShadowCommand),
    /// Manage virtual API keys (on the store file).
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Cost, tokens, requests and savings from the ledger.
    Spend(keys::SpendArgs),
    /// Captured traffic (`routes[].capture`): `capture export`.
    #[command(subcommand)]
    Capture(CaptureCommand),
    /// Score targets on a dataset against a baseline; gates for CI (exit 1 when one fails).
    Eval(crate::app::eval::EvalArgs),
    /// Staged rollouts: `status` (from the store), `pause|resume|promote|abort ROUTE`.
    #[command(subcommand)]
    Rollout(rollout::RolloutCmd),
    /// The learned router: `router train`.
    #[command(subcommand)]
    Router(router::RouterCmd),
    /// The store: `state migrate --to postgres://...` copies a SQLite store into PostgreSQL.
    #[command(subcommand)]
    State(state::StateCmd),
}

#[derive(Debug, Args)]
struct AdminArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The gateway's address [default: $SWITCHYARD_ADMIN_URL, then the config's listen]
    #[arg(long, value_name = "URL")]
    url: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ShadowCommand {
    /// Agreement, latency and cost deltas of mirrored traffic, per route.
    Report {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this route (the model name clients send).
        #[arg(long, value_name = "R")]
        route: Option<String>,
        /// Only pairs since T: 30m, 2h, 7d, unix seconds, or YYYY-MM-DD[THH:MM:SSZ].
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Model price for cost deltas, USD per million tokens (repeatable); overrides the
        /// config's `[[prices]]` for that model name.
        #[arg(long, value_name = "MODEL=IN,OUT")]
        price: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CaptureCommand {
    /// Captured pairs as `switchyard eval` dataset lines (expected = the served answer).
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this route (the model name clients send).
        #[arg(long, value_name = "R")]
        route: Option<String>,
        /// Only pairs since T: 30m, 2h, 7d, unix seconds, or YYYY-MM-DD[THH:MM:SSZ].
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// At most the N most recent pairs.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Config file [default: $SWITCHYARD_CONFIG, then ./switchyard.toml, then built in]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

/// Run the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => serve(a.config),
        Command::Check(a) => check(a.config),
        Command::Health(a) => health::health(a),
        Command::Rollback(a) => admin::call("rollback", a.config.config, a.url),
        Command::Reload(a) => admin::call("reload", a.config.config, a.url),
        Command::Shadow(ShadowCommand::Report {
            config,
            route,
            since,
            price,
            json,
        }) => shadow::report(config.config, route, since, price, json),
        Command::Keys(k) => keys::keys(k),
        Command::Spend(a) => keys::spend(a),
        Command::Eval(a) => crate::app::eval::main(a),
        Command::Capture(CaptureCommand::Export {
            config,
            route,
            since,
            limit,
        }) => capture::export(config.config, route, since, limit),
        Command::Rollout(r) => rollout::rollout(r),
        Command::Router(r) => router::router(r),
        Command::State(s) => state::state(s),
    }
}

/// Logs go to stderr: JSON or text per `[telemetry] log_format` (`$SWITCHYARD_LOG_FORMAT`
/// overrides it); one `access` line per request (see `telemetry::access_log`).
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SWITCHYARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = format.json();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    let source = config::locate(config.as_deref());
    // The config is read before logging starts because it chooses the log format; a config
    // that cannot be read is reported on stderr either way.
    let runtime = match config::load(&source) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(
        runtime
            .telemetry
            .as_ref()
            .map(|t| t.log_format)
            .unwrap_or_default(),
    );
    match &source {
        ConfigSource::Embedded => tracing::info!(
            "switchyard {}: no config file (--config, ${}, ./{}): running on the embedded default: {}",
            env!("CARGO_PKG_VERSION"),
            config::CONFIG_ENV,
            config::DEFAULT_CONFIG_FILE,
            config::describe_default()
        ),
        ConfigSource::File(p) => tracing::info!(
            "switchyard {}: config {}",
            env!("CARGO_PKG_VERSION"),
            p.display()
        ),
    }
    // With `[server] threads` client connections are served on runtimes of their own and
    // this one runs startup, the admin listener, reloads, health checks and shadow calls;
    // without it, this one serves everything on a worker thread per CPU.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if runtime.server.threads.is_some() {
        builder.worker_threads(1);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(crate::app::serve::run(runtime))
}

fn check(config: Option<PathBuf>) -> ExitCode {
    let source = config::locate(config.as_deref());
    if source == ConfigSource::Embedded {
        println!(
            "no config file found: checking the embedded default ({})",
            config::describe_default()
        );
    }
    match config::load(&source) {
        Ok(rt) => {
            print_summary(&rt);
            if let Err(e) = crate::services::plugins::check(&rt) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The per-token price a `gpu_hour_usd` backend's workers give now (their counters since
/// start), or why there is none yet. `check` never fails on it: a worker may be down.
fn derived_price(rt: &Runtime, b: &crate::config::Backend, gpu_hour_usd: f64) -> String {
    use crate::services::upstream::{Upstreams, throughput};
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return "unknown (no async runtime)".into();
    };
    runtime.block_on(async {
        let ups = match Upstreams::default().build(rt) {
            Ok(u) => u,
            Err(e) => return format!("unknown ({e})"),
        };
        match throughput::lifetime_price(&ups[b.index], gpu_hour_usd).await {
            Ok(Some((p, s))) => format!(
                "${:.4} per 1M tokens (derived: {} tokens in {:.1} s busy, {:.0} tokens/s)",
                p.input_per_1m,
                s.prompt_tokens + s.generated_tokens,
                s.busy_seconds,
                (s.prompt_tokens + s.generated_tokens) / s.busy_seconds.max(1e-9)
            ),
            Ok(None) => "not known yet (the workers report no work)".into(),
            Err(e) => format!("not known yet ({e})"),
        }
    })
}

fn print_summary(rt: &Runtime) {
    println!("config: {} is valid", rt.source);
    let tls = if rt.server.tls.is_some() {
        " (TLS)"
    } else {
        ""
    };
    println!("listen: {}{tls}", rt.server.listen);
    println!("backends:");
    for b in &rt.backends {
        let urls: Vec<&str> = b.urls.iter().map(|u| u.base.as_str()).collect();
        let key = if b.auth.is_some() {
            ", API key set"
        } else {
            ""
        };
        println!("  {}: {}{key}", b.name, urls.join(", "));
        if let Some(g) = b.gpu_hour_usd {
            println!(
                "    price: derived from gpu_hour_usd ${g}/h per worker: {}",
                derived_price(rt, b, g)
            );
        }
    }
    println!("routes:");
    for r in &rt.routes {
        println!("  {}:", r.name);
        for t in &r.targets {
            let share = 100.0 * f64::from(t.weight) / f64::from(r.total_weight.max(1));
            println!(
                "    → {} model {} (weight {}, {share:.1}%)",
                t.backend.name,
                t.model.as_deref().unwrap_or("<client's model>"),
                t.weight
            );
        }
        for (i, f) in r.fallback.iter().enumerate() {
            println!(
                "    fallback {}: {} model {}",
                i + 1,
                f.backend.name,
                f.model.as_deref().unwrap_or("<client's model>")
            );
        }
        if let Some(s) = &r.shadow {
            println!(
                "    shadow: {} model {} (sample {})",
                s.target.backend.name,
                s.target.model.as_deref().unwrap_or("<client's model>"),
                s.sample
            );
        }
    }
    if let Some(d) = &rt.plugins_dir {
        println!("plugins: {}", d.display());
    }
    if let Some(t) = &rt.telemetry {
        println!(
            "telemetry: OTLP {} → {} (sample ratio {}, content {})",
            t.otlp_protocol,
            t.otlp_endpoint.as_deref().unwrap_or("<none>"),
            t.sample_ratio,
            if t.capture_content {
                "captured"
            } else {
                "not captured"
            }
        );
    }
    println!(
        "governance: {}, admin API {}",
        rt.governance.summary(),
        if rt.admin.as_ref().and_then(|a| a.token_sha256()).is_some() {
            "on"
        } else {
            "off"
        }
    );
    if let Some(s) = &rt.state {
        let store = match &s.postgres {
            Some(pg) => pg.url.clone(),
            None => s.path.display().to_string(),
        };
        println!(
            "state: {store}{}",
            s.redis.as_ref().map(|_| " + redis").unwrap_or("")
        );
    }
}

/// The store opened read-only for a report over `table`, or the exit code after saying why
/// there is nothing to report: no store file yet (`no_file`), or no such table (`no_table`).
fn open_report_store(
    path: &std::path::Path,
    table: &str,
    no_file: &str,
    no_table: &str,
) -> Result<rusqlite::Connection, ExitCode> {
    use rusqlite::OptionalExtension;
    if !path.exists() {
        eprintln!(
            "error: {}: no store file yet ([state] path); {no_file}",
            path.display()
        );
        return Err(ExitCode::FAILURE);
    }
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| {
                eprintln!("error: {}: {e}", path.display());
                ExitCode::FAILURE
            })?;
    let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
    let has_table = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |_| Ok(()),
        )
        .optional();
    if !matches!(has_table, Ok(Some(()))) {
        eprintln!("error: {}: no {table} table: {no_table}", path.display());
        return Err(ExitCode::FAILURE);
    }
    Ok(conn)
}
