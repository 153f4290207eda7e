//! The admin endpoints the console reads besides the CLI's, all `GET`, behind the same
//! token check as every `/admin/*` endpoint:
//!
//! | request | answers |
//! | --- | --- |
//! | `GET /admin/routes` | every route's targets, weights, fallbacks and shadow, its rollout, the traffic share each backend took over the last minute and per step over the last hour |
//! | `GET /admin/series/backends` | per backend URL, the last hour of breaker state, error rate, latency, in-flight and health, one point per 10 s |
//! | `GET /admin/spend/series?by=team&since=24h&step=1h` | cost, baseline and requests per time bucket and group (`team`, `key`, `model`, `route`) |
//! | `GET /admin/spend?format=csv&by=…&since=…` | the `switchyard spend` report as a CSV attachment |
//! | `GET /admin/shadow?since=24h&step=1h` | agreement, similarity and judge score per bucket, route and shadow backend, and the worst disagreeing pairs with both answers |
//! | `GET /admin/config/versions/{id}` | a kept config version's file text (for the diff) |
//! | `GET /admin/config/history/{id}` | one change of the store's config history (every replica's with `[state] postgres`), with its file text |
//!
//! Each reads state the gateway keeps anyway (the console's sampled history, the ledger and
//! shadow tables); none adds work to the request path.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::app::cli::keys::parse_since;
use crate::app::gateway::Gateway;
use crate::base::GatewayError;
use crate::base::body::GatewayBody;
use crate::base::clock::now_ms;
use crate::base::respond;
use crate::config::state::StateSettings;
use crate::services::governance::ledger::{self, GroupBy, SpendLine};
use crate::services::governance::pg;
use crate::services::governance::store::Conn;
use crate::services::rollout::status;

fn ok(v: Value) -> Response<GatewayBody> {
    respond::json(StatusCode::OK, v.to_string())
}

fn bad(msg: String) -> Response<GatewayBody> {
    respond::json(
        StatusCode::BAD_REQUEST,
        json!({"error": {"message": msg, "type": "invalid_request_error", "param": null, "code": null}}).to_string(),
    )
}

/// The query's `key=value` pairs.
fn params(query: &str) -> Vec<(&str, &str)> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

/// `step` as `30s`, `5m`, `1h`, `1d`, or Unix milliseconds.
fn parse_step(s: &str) -> Result<i64, String> {
    let err = || format!("\"{s}\" is not a step: use 30s, 5m, 1h or 1d");
    let unit = s.chars().last().ok_or_else(err)?;
    let ms = match unit {
        's' => 1000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => 1,
    };
    let digits = if ms == 1 { s } else { &s[..s.len() - 1] };
    let n: i64 = digits.parse().map_err(|_| err())?;
    if n <= 0 {
        return Err(err());
    }
    Ok(n.saturating_mul(ms))
}

/// Most buckets one series answer holds: a wide range gets a coarser step.
const MAX_BUCKETS: i64 = 400;

/// `since` and `step` from the query, defaults 24 h and 1 h, the step widened so the range
/// holds at most [`MAX_BUCKETS`].
fn range(q: &[(&str, &str)]) -> Result<(i64, i64), String> {
    let now = now_ms();
    let mut since = now - 86_400_000;
    let mut step = 3_600_000;
    for (k, v) in q {
        match *k {
            "since" => since = parse_since(v, now).map_err(|m| format!("since: {m}"))?,
            "step" => step = parse_step(v).map_err(|m| format!("step: {m}"))?,
            _ => {}
        }
    }
    let span = (now - since).max(1);
    step = step.max(span / MAX_BUCKETS + 1).max(1000);
    Ok((since, step))
}

/// Answer a console endpoint, or `None` when `path` is not one (the caller goes on to the
/// other admin endpoints).
pub async fn handle(
    gw: &Arc<Gateway>,
    method: &Method,
    path: &str,
    query: &str,
) -> Option<Response<GatewayBody>> {
    if method != Method::GET {
        return None;
    }
    let q = params(query);
    Some(match path {
        "/admin/routes" => ok(routes_json(gw)),
        "/admin/series/backends" => ok(gw.console.backends_json()),
        "/admin/spend/series" => spend_series(gw, &q).await,
        "/admin/spend" if q.contains(&("format", "csv")) => spend_csv(gw, &q).await,
        "/admin/shadow" => shadow(gw, &q).await,
        p if p.starts_with("/admin/config/versions/") => {
            config_version(gw, &p["/admin/config/versions/".len()..])
        }
        p if p.starts_with("/admin/config/history/") => {
            config_history_entry(gw, &p["/admin/config/history/".len()..]).await
        }
        _ => return None,
    })
}

/// How far back the live share looks.
const LIVE_WINDOW: Duration = Duration::from_secs(60);

fn routes_json(gw: &Gateway) -> Value {
    let rt = gw.runtime();
    let traffic = gw.console.route_traffic(gw, LIVE_WINDOW);
    let rollouts = gw.services.rollouts.statuses();
    let target = |t: &crate::config::Target, total: u32| {
        json!({
            "backend": &*t.backend.name,
            "model": t.model.as_deref(),
            "weight": t.weight,
            "share": if total > 0 { t.weight as f64 / total as f64 } else { 0.0 },
        })
    };
    let routes: Vec<Value> = rt
        .routes
        .iter()
        .map(|r| {
            let name = r.name.to_string();
            let live: serde_json::Map<String, Value> = traffic
                .live
                .iter()
                .filter(|((route, _), _)| *route == name)
                .map(|((_, b), n)| (b.clone(), json!(n)))
                .collect();
            let mut backends: Vec<String> = Vec::new();
            for (_, step) in &traffic.steps {
                for (route, b) in step.keys() {
                    if *route == name && !backends.contains(b) {
                        backends.push(b.clone());
                    }
                }
            }
            let series: serde_json::Map<String, Value> = backends
                .iter()
                .map(|b| {
                    let points: Vec<u64> = traffic
                        .steps
                        .iter()
                        .map(|(_, s)| s.get(&(name.clone(), b.clone())).copied().unwrap_or(0))
                        .collect();
                    (b.clone(), json!(points))
                })
                .collect();
            let rollout = rollouts
                .iter()
                .find(|(rec, _)| *rec.route == *name)
                .map(|(rec, h)| status::to_json(rec, h));
            json!({
                "name": name,
                "targets": r.targets.iter().map(|t| target(t, r.total_weight)).collect::<Vec<_>>(),
                "fallback": r.fallback.iter().map(|t| target(t, 0)).collect::<Vec<_>>(),
                "shadow": r.shadow.as_ref().map(|s| json!({
                    "backend": &*s.target.backend.name,
                    "model": s.target.model.as_deref(),
                    "sample": s.sample,
                    "judge": s.judge.as_ref().map(|j| &*j.target.backend.name),
                })),
                "rollout": rollout,
                "live": {"window_secs": traffic.window_secs, "requests": live},
                "series": {"t": traffic.steps.iter().map(|(t, _)| *t).collect::<Vec<_>>(), "requests": series},
            })
        })
        .collect();
    json!({"routes": routes})
}

fn config_version(gw: &Gateway, id: &str) -> Response<GatewayBody> {
    let Ok(id) = id.parse::<u64>() else {
        return bad(format!("config version \"{id}\" is not a number"));
    };
    let (versions, current) = gw.control.versions();
    match versions.iter().find(|v| v.id == id) {
        Some(v) => ok(json!({
            "version": v.id,
            "origin": v.origin,
            "current": v.id == current,
            "text": v.text.as_deref(),
        })),
        None => respond::json(
            StatusCode::NOT_FOUND,
            json!({"error": {"message": format!("config version {id} is not kept"), "type": "invalid_request_error", "param": "version", "code": "version_not_found"}}).to_string(),
        ),
    }
}

/// One change of the shared config history, with its file text.
async fn config_history_entry(gw: &Gateway, id: &str) -> Response<GatewayBody> {
    let Ok(id) = id.parse::<i64>() else {
        return bad(format!("config history entry \"{id}\" is not a number"));
    };
    with_store(gw, move |mut conn| {
        Ok(
            match crate::services::config_history::get(&mut conn, id)? {
                Some(e) => ok(json!(e)),
                None => respond::json(
                    StatusCode::NOT_FOUND,
                    json!({"error": {"message": format!("config history entry {id} does not exist"), "type": "invalid_request_error", "param": "id", "code": "history_entry_not_found"}}).to_string(),
                ),
            },
        )
    })
    .await
}

/// Run `f` on a connection to the governance store (SQLite or PostgreSQL), on the blocking
/// pool.
async fn with_store<F>(gw: &Gateway, f: F) -> Response<GatewayBody>
where
    F: FnOnce(Conn) -> Result<Response<GatewayBody>, String> + Send + 'static,
{
    let Some(gov) = gw.services.governance.clone() else {
        return GatewayError::AdminDisabled.to_response();
    };
    let res = tokio::task::spawn_blocking(move || {
        let conn = gov.store.conn().map_err(|e| e.to_string())?;
        f(conn)
    })
    .await;
    match res {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => GatewayError::Internal(e).to_response(),
        Err(e) => GatewayError::Internal(e.to_string()).to_response(),
    }
}

async fn spend_series(gw: &Gateway, q: &[(&str, &str)]) -> Response<GatewayBody> {
    let (since, step) = match range(q) {
        Ok(r) => r,
        Err(m) => return bad(m),
    };
    let by = q
        .iter()
        .find(|(k, _)| *k == "by")
        .map_or("team", |(_, v)| *v);
    let group = match by {
        "team" => "team",
        "key" => "key_id",
        "model" => "backend || '/' || model",
        "route" => "route",
        _ => {
            return bad(format!(
                "by: unknown grouping \"{by}\" (team, key, model or route)"
            ));
        }
    };
    let by = by.to_string();
    with_store(gw, move |conn| {
        let rows = match conn {
            Conn::Sqlite(conn) => {
                let sql = format!(
                    "SELECT (ts_ms / ?2) * ?2, {group}, COUNT(*), TOTAL(cost_usd), TOTAL(baseline_usd)
                     FROM ledger WHERE ts_ms >= ?1 GROUP BY 1, 2 ORDER BY 1, 2"
                );
                let mut stmt = conn.prepare(&sql).map_err(|e| e.to_string())?;
                stmt.query_map([since, step], |r| {
                    Ok(json!({
                        "t": r.get::<_, i64>(0)?,
                        "group": r.get::<_, Option<String>>(1)?,
                        "requests": r.get::<_, i64>(2)?,
                        "cost_usd": r.get::<_, f64>(3)?,
                        "baseline_usd": r.get::<_, f64>(4)?,
                    }))
                })
                .map_err(|e| e.to_string())?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| e.to_string())?
            }
            Conn::Postgres(mut client) => {
                let sql = format!(
                    "SELECT (ts_ms / $2) * $2, {group}, COUNT(*), COALESCE(SUM(cost_usd), 0),
                            COALESCE(SUM(baseline_usd), 0)
                     FROM ledger WHERE ts_ms >= $1 GROUP BY 1, 2 ORDER BY 1, 2"
                );
                client
                    .query(sql.as_str(), &[&since, &step])
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(|r| {
                        json!({
                            "t": r.get::<_, i64>(0),
                            "group": r.get::<_, Option<String>>(1),
                            "requests": r.get::<_, i64>(2),
                            "cost_usd": r.get::<_, f64>(3),
                            "baseline_usd": r.get::<_, f64>(4),
                        })
                    })
                    .collect()
            }
        };
        Ok(ok(
            json!({"by": by, "since_ms": since, "step_ms": step, "points": rows}),
        ))
    })
    .await
}

/// A CSV field: quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The spend report as CSV, one line per group and route.
pub fn spend_csv_text(by: Option<GroupBy>, lines: &[SpendLine]) -> String {
    let mut out = String::from(
        "group,route,requests,errors,tokens_in,tokens_out,cost_usd,baseline_usd,savings_usd\n",
    );
    for l in lines {
        let group = match (by, &l.group) {
            (None, _) => String::new(),
            (_, Some(g)) => csv_field(g),
            (_, None) => "-".to_string(),
        };
        out.push_str(&format!(
            "{group},{},{},{},{},{},{:.6},{:.6},{:.6}\n",
            csv_field(&l.route),
            l.requests,
            l.errors,
            l.tokens_in,
            l.tokens_out,
            l.cost_usd,
            l.baseline_usd,
            l.savings_usd
        ));
    }
    out
}

async fn spend_csv(gw: &Gateway, q: &[(&str, &str)]) -> Response<GatewayBody> {
    let mut by = None;
    let mut since = 0;
    for (k, v) in q {
        match *k {
            "by" => match GroupBy::parse(v) {
                Some(b) => by = Some(b),
                None => return bad(format!("by: unknown grouping \"{v}\"")),
            },
            "since" => match parse_since(v, now_ms()) {
                Ok(t) => since = t,
                Err(m) => return bad(format!("since: {m}")),
            },
            _ => {}
        }
    }
    with_store(gw, move |conn| {
        let lines = match conn {
            Conn::Sqlite(conn) => ledger::spend(&conn, by, since).map_err(|e| e.to_string())?,
            Conn::Postgres(mut client) => {
                pg::spend(&mut client, by, since).map_err(|e| e.to_string())?
            }
        };
        let mut r = Response::new(GatewayBody::from(spend_csv_text(by, &lines)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        r.headers_mut().insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"switchyard-spend.csv\""),
        );
        Ok(r)
    })
    .await
}

/// Longest answer text sent per side of a pair.
const ANSWER_CHARS: usize = 4000;

fn clip(s: Option<String>) -> Option<String> {
    s.map(|s| match s.char_indices().nth(ANSWER_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    })
}

async fn shadow(gw: &Gateway, q: &[(&str, &str)]) -> Response<GatewayBody> {
    let (since, step) = match range(q) {
        Ok(r) => r,
        Err(m) => return bad(m),
    };
    if let Some(g) = gw.services.governance.clone()
        && g.store.is_postgres()
    {
        // Every replica's pairs, from the database they share.
        return with_store(gw, move |conn| match conn {
            Conn::Postgres(mut c) => shadow_pg(&mut c, since, step)
                .map(ok)
                .map_err(|e| pg::describe(&e)),
            Conn::Sqlite(_) => Err("the store is not PostgreSQL".into()),
        })
        .await;
    }
    let path = StateSettings::store_path(gw.runtime().state.as_ref());
    let empty = json!({"since_ms": since, "step_ms": step, "points": [], "worst": []});
    let res = tokio::task::spawn_blocking(move || -> Result<Value, String> {
        if !path.exists() {
            return Ok(empty);
        }
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        let _ = conn.busy_timeout(Duration::from_secs(5));
        let has_table: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'shadow_pairs'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| e.to_string())?
            > 0;
        if !has_table {
            return Ok(empty);
        }
        let judged = crate::services::shadow::store::has_judge_columns(&conn);
        let (score, reason) = if judged {
            ("judge_score", "judge_reason")
        } else {
            ("NULL", "NULL")
        };
        let mut stmt = conn
            .prepare(&format!(
                "SELECT (ts_ms / ?2) * ?2, route, shadow_backend, COUNT(*), AVG(agree),
                        AVG(similarity), AVG({score}), COUNT({score})
                 FROM shadow_pairs WHERE ts_ms >= ?1 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            ))
            .map_err(|e| e.to_string())?;
        let points = stmt
            .query_map([since, step], |r| {
                Ok(json!({
                    "t": r.get::<_, i64>(0)?,
                    "route": r.get::<_, String>(1)?,
                    "shadow_backend": r.get::<_, String>(2)?,
                    "pairs": r.get::<_, i64>(3)?,
                    "agreement": r.get::<_, Option<f64>>(4)?,
                    "similarity": r.get::<_, Option<f64>>(5)?,
                    "judge_score": r.get::<_, Option<f64>>(6)?,
                    "judged": r.get::<_, i64>(7)?,
                }))
            })
            .map_err(|e| e.to_string())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        // Worst first: the judge's score where there is one, else the similarity.
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id, ts_ms, route, primary_backend, primary_model, shadow_backend,
                        shadow_model, similarity, agree, {score}, {reason}, primary_answer,
                        shadow_answer, shadow_error
                 FROM shadow_pairs
                 WHERE ts_ms >= ?1 AND (agree = 0 OR {score} IS NOT NULL OR shadow_error IS NOT NULL)
                 ORDER BY COALESCE({score} / 10.0, similarity, 0) ASC, ts_ms DESC LIMIT 6"
            ))
            .map_err(|e| e.to_string())?;
        let worst = stmt
            .query_map([since], |r| {
                Ok(json!({
                    "id": r.get::<_, i64>(0)?,
                    "t": r.get::<_, i64>(1)?,
                    "route": r.get::<_, String>(2)?,
                    "primary": format!("{}/{}", r.get::<_, String>(3)?, r.get::<_, String>(4)?),
                    "shadow": format!("{}/{}", r.get::<_, String>(5)?, r.get::<_, String>(6)?),
                    "similarity": r.get::<_, Option<f64>>(7)?,
                    "agree": r.get::<_, Option<i64>>(8)?.map(|a| a != 0),
                    "judge_score": r.get::<_, Option<f64>>(9)?,
                    "judge_reason": r.get::<_, Option<String>>(10)?,
                    "primary_answer": clip(r.get::<_, Option<String>>(11)?),
                    "shadow_answer": clip(r.get::<_, Option<String>>(12)?),
                    "shadow_error": r.get::<_, Option<String>>(13)?,
                }))
            })
            .map_err(|e| e.to_string())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        Ok(json!({"since_ms": since, "step_ms": step, "points": points, "worst": worst}))
    })
    .await;
    match res {
        Ok(Ok(v)) => ok(v),
        Ok(Err(e)) => GatewayError::Internal(e).to_response(),
        Err(e) => GatewayError::Internal(e.to_string()).to_response(),
    }
}

/// [`shadow`]'s figures from a PostgreSQL store.
fn shadow_pg(c: &mut postgres::Client, since: i64, step: i64) -> Result<Value, postgres::Error> {
    let points: Vec<Value> = c
        .query(
            "SELECT (ts_ms / $2) * $2, route, shadow_backend, COUNT(*),
                    AVG(agree)::DOUBLE PRECISION, AVG(similarity), AVG(judge_score),
                    COUNT(judge_score)
             FROM shadow_pairs WHERE ts_ms >= $1 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            &[&since, &step],
        )?
        .iter()
        .map(|r| {
            json!({
                "t": r.get::<_, i64>(0),
                "route": r.get::<_, String>(1),
                "shadow_backend": r.get::<_, String>(2),
                "pairs": r.get::<_, i64>(3),
                "agreement": r.get::<_, Option<f64>>(4),
                "similarity": r.get::<_, Option<f64>>(5),
                "judge_score": r.get::<_, Option<f64>>(6),
                "judged": r.get::<_, i64>(7),
            })
        })
        .collect();
    let worst: Vec<Value> = c
        .query(
            "SELECT id, ts_ms, route, primary_backend, primary_model, shadow_backend,
                    shadow_model, similarity, agree, judge_score, judge_reason, primary_answer,
                    shadow_answer, shadow_error
             FROM shadow_pairs
             WHERE ts_ms >= $1 AND (agree = 0 OR judge_score IS NOT NULL OR shadow_error IS NOT NULL)
             ORDER BY COALESCE(judge_score / 10.0, similarity, 0) ASC, ts_ms DESC LIMIT 6",
            &[&since],
        )?
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, i64>(0),
                "t": r.get::<_, i64>(1),
                "route": r.get::<_, String>(2),
                "primary": format!("{}/{}", r.get::<_, String>(3), r.get::<_, String>(4)),
                "shadow": format!("{}/{}", r.get::<_, String>(5), r.get::<_, String>(6)),
                "similarity": r.get::<_, Option<f64>>(7),
                "agree": r.get::<_, Option<i64>>(8).map(|a| a != 0),
                "judge_score": r.get::<_, Option<f64>>(9),
                "judge_reason": r.get::<_, Option<String>>(10),
                "primary_answer": clip(r.get::<_, Option<String>>(11)),
                "shadow_answer": clip(r.get::<_, Option<String>>(12)),
                "shadow_error": r.get::<_, Option<String>>(13),
            })
        })
        .collect();
    Ok(json!({"since_ms": since, "step_ms": step, "points": points, "worst": worst}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_ranges_stay_bounded() {
        assert_eq!(parse_step("30s"), Ok(30_000));
        assert_eq!(parse_step("1h"), Ok(3_600_000));
        assert!(parse_step("0m").is_err());
        assert!(parse_step("fast").is_err());
        let (since, step) = range(&[("since", "30d"), ("step", "1s")]).unwrap();
        assert!((now_ms() - since) / step <= MAX_BUCKETS);
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let lines = vec![SpendLine {
            group: Some("team, \"a\"".into()),
            route: "gpt-4o".into(),
            requests: 2,
            cost_usd: 1.5,
            baseline_usd: 2.0,
            savings_usd: 0.5,
            ..Default::default()
        }];
        let csv = spend_csv_text(Some(GroupBy::Team), &lines);
        let row = csv.lines().nth(1).unwrap();
        assert_eq!(
            row,
            "\"team, \"\"a\"\"\",gpt-4o,2,0,0,0,1.500000,2.000000,0.500000"
        );
    }
}
