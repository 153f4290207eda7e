//! `switchyard rollout status` reads the rollouts' durable state from the store (so it works
//! whether or not the gateway runs); `switchyard rollout pause|resume|promote|abort ROUTE`
//! asks the running gateway's admin API, whose controller owns the rollouts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::keys::{ConfigOpt, open};
use crate::services::governance::pg;
use crate::services::governance::store::Conn;
use crate::services::rollout::{shared, state, status};

#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Each rollout's state, step, weight, guards and history (from the store).
    Status(StatusArgs),
    /// Hold the rollout at its step (guards still roll it back).
    Pause(ActArgs),
    /// Resume a paused rollout; its step's window starts again.
    Resume(ActArgs),
    /// Send all of the route's traffic to the candidate now.
    Promote(ActArgs),
    /// Roll the candidate back to 0 % now.
    Abort(ActArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cfg: ConfigOpt,
    /// Only this route (the model name clients send).
    #[arg(long, value_name = "R")]
    pub route: Option<String>,
    /// Print JSON: {"rollouts": [{"route", "state", "step", "weight", "guards", "history"}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ActArgs {
    /// The route whose rollout to act on.
    pub route: String,
    /// Config file [default: $SWITCHYARD_CONFIG, then ./switchyard.toml, then built in]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The gateway's address [default: $SWITCHYARD_ADMIN_URL, then the config's listen]
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

pub fn rollout(cmd: RolloutCmd) -> ExitCode {
    let (action, a) = match cmd {
        RolloutCmd::Status(s) => return show(s),
        RolloutCmd::Pause(a) => ("pause", a),
        RolloutCmd::Resume(a) => ("resume", a),
        RolloutCmd::Promote(a) => ("promote", a),
        RolloutCmd::Abort(a) => ("abort", a),
    };
    let body = serde_json::json!({"route": a.route});
    match super::admin::post(&format!("rollouts/{action}"), Some(body), a.config, a.url) {
        Ok(v) => {
            println!(
                "route {}: {} at {}% ({})",
                a.route,
                v["state"].as_str().unwrap_or("?"),
                v["weight"],
                v["reason"].as_str().unwrap_or("")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn show(a: StatusArgs) -> ExitCode {
    let want = |r: &state::Record| a.route.as_ref().is_none_or(|want| *want == r.route);
    let listed = open(&a.cfg).and_then(|conn| match conn {
        Conn::Sqlite(conn) => state::all(&conn)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(want)
            .map(|r| {
                let h =
                    state::history(&conn, &r.route, &r.fingerprint).map_err(|e| e.to_string())?;
                Ok((r, h))
            })
            .collect::<Result<Vec<_>, String>>(),
        Conn::Postgres(mut c) => {
            let e = |e: postgres::Error| pg::describe(&e);
            shared::all(&mut c)
                .map_err(e)?
                .into_iter()
                .filter(want)
                .map(|r| {
                    let h = shared::history(&mut c, &r.route, &r.fingerprint).map_err(e)?;
                    Ok((r, h))
                })
                .collect::<Result<Vec<_>, String>>()
        }
    });
    let list = match listed {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(r) = &a.route
        && list.is_empty()
        && !a.json
    {
        eprintln!("error: route \"{r}\" has no rollout in the store");
        return ExitCode::FAILURE;
    }
    if a.json {
        println!("{}", status::list_json(&list));
    } else {
        print!("{}", status::list_text(&list));
    }
    ExitCode::SUCCESS
}
