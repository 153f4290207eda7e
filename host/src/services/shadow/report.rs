//! The shadow report (`switchyard shadow report`): agreement, latency and cost deltas per route, from the
//! recorded pairs, so a team can decide whether to canary.
//!
//! Every figure is computed from the stored columns (`agree`, `exact_match`, `json_equal`,
//! `similarity`, latencies, token counts), so anyone can reproduce it with SQL.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Per-route figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RouteReport {
    pub route: String,
    pub primary: String,
    pub shadow: String,
    pub pairs: u64,
    pub compared: u64,
    pub agreed: u64,
    pub exact: u64,
    pub json_pairs: u64,
    pub json_equal: u64,
    pub mean_similarity: Option<f64>,
    pub agreement_rate: Option<f64>,
    pub shadow_errors: u64,
    pub not_compared_streams: u64,
    pub validate_rejected: u64,
    pub primary_latency_p50_ms: Option<f64>,
    pub primary_latency_p99_ms: Option<f64>,
    pub shadow_latency_p50_ms: Option<f64>,
    pub shadow_latency_p99_ms: Option<f64>,
    pub primary_prompt_tokens: u64,
    pub primary_completion_tokens: u64,
    pub shadow_prompt_tokens: u64,
    pub shadow_completion_tokens: u64,
    pub primary_cost_usd: Option<f64>,
    pub shadow_cost_usd: Option<f64>,
    /// The cost is derived from `gpu_hour_usd` and measured throughput (the ledger's price).
    pub primary_cost_derived: bool,
    pub shadow_cost_derived: bool,
    /// Pairs the shadow judge scored, and those it was asked about but gave no score.
    pub judged: u64,
    pub judge_errors: u64,
    /// Mean judge score (1–10), its 10th percentile, and the share of scores ≥ 8.
    pub judge_mean: Option<f64>,
    pub judge_p10: Option<f64>,
    pub judge_share_at_least_8: Option<f64>,
}

/// Parse `--since`: `90s`, `30m`, `2h`, `7d`, unix seconds, `YYYY-MM-DD` or
/// `YYYY-MM-DDTHH:MM:SSZ`; the result in unix milliseconds.
pub fn parse_since(s: &str, now: SystemTime) -> Result<i64, String> {
    let s = s.trim();
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let bad =
        || format!("--since \"{s}\": expected 30m, 2h, 7d, unix seconds or YYYY-MM-DD[THH:MM:SSZ]");
    if let Some(unit) = s.chars().last().filter(|c| "smhd".contains(*c)) {
        let n: f64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
        let secs = n * match unit {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            _ => 86400.0,
        };
        return Ok(now_ms - (secs * 1000.0) as i64);
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().map(|v| v * 1000).map_err(|_| bad());
    }
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00Z"));
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let t: Vec<i64> = time
        .trim_end_matches('Z')
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if d.len() != 3 || t.len() != 3 {
        return Err(bad());
    }
    let days = days_from_civil(d[0], d[1], d[2]);
    Ok((days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1000)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn pct(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[((v.len() as f64 - 1.0) * p).round() as usize])
}

/// Prices in USD per million tokens, (input, output), for the report's cost lines: a
/// `--price MODEL=IN,OUT` for that model name wins, else the config's `[[prices]]` entry for
/// the backend and model (the one the ledger uses), so a configured gateway needs no flags.
#[derive(Debug, Default)]
pub struct Prices {
    by_model: HashMap<String, (f64, f64)>,
    config: Option<crate::config::governance::GovConfig>,
    /// (backend, model) → USD per million tokens, as the ledger derived it from
    /// `gpu_hour_usd` (its rows' cost over their tokens).
    derived: HashMap<(String, String), f64>,
}

impl Prices {
    /// Prices from the config's `[[prices]]`.
    pub fn from_config(config: crate::config::governance::GovConfig) -> Prices {
        Prices {
            config: Some(config),
            ..Prices::default()
        }
    }

    /// A `--price` for `model` on any backend.
    pub fn set_model(&mut self, model: impl Into<String>, input_per_1m: f64, output_per_1m: f64) {
        self.by_model
            .insert(model.into(), (input_per_1m, output_per_1m));
    }

    /// Load the derived prices of `gpu_hour_usd` backends from the ledger's rows since
    /// `since_ms` (a store without the ledger or the column has none).
    pub fn load_derived(&mut self, conn: &rusqlite::Connection, since_ms: i64) {
        let Ok(mut st) = conn.prepare(
            "SELECT backend, model, TOTAL(cost_usd), TOTAL(tokens_in + tokens_out) FROM ledger
             WHERE cost_derived = 1 AND ts_ms >= ?1 GROUP BY 1, 2",
        ) else {
            return;
        };
        let Ok(rows) = st.query_map([since_ms], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, f64>(2)?,
                r.get::<_, f64>(3)?,
            ))
        }) else {
            return;
        };
        for (b, m, cost, tokens) in rows.flatten() {
            if let (Some(b), Some(m)) = (b, m)
                && tokens > 0.0
            {
                self.derived.insert((b, m), cost / tokens * 1e6);
            }
        }
    }

    /// [`Prices::load_derived`] from a PostgreSQL store.
    pub fn load_derived_pg(&mut self, client: &mut postgres::Client, since_ms: i64) {
        let Ok(rows) = client.query(
            "SELECT backend, model, COALESCE(SUM(cost_usd), 0),
                    COALESCE(SUM((tokens_in + tokens_out)::DOUBLE PRECISION), 0)
             FROM ledger WHERE cost_derived = 1 AND ts_ms >= $1 GROUP BY 1, 2",
            &[&since_ms],
        ) else {
            return;
        };
        for r in rows {
            let (b, m): (Option<String>, Option<String>) = (r.get(0), r.get(1));
            let (cost, tokens): (f64, f64) = (r.get(2), r.get(3));
            if let (Some(b), Some(m)) = (b, m)
                && tokens > 0.0
            {
                self.derived.insert((b, m), cost / tokens * 1e6);
            }
        }
    }

    /// (input, output) per million tokens, and whether the price is derived.
    fn get(&self, backend: &str, model: &str) -> Option<(f64, f64, bool)> {
        if let Some((i, o)) = self.by_model.get(model) {
            return Some((*i, *o, false));
        }
        if let Some(p) = self.config.as_ref().and_then(|c| c.price(backend, model)) {
            return Some((p.input_per_1m, p.output_per_1m, false));
        }
        self.derived
            .get(&(backend.to_string(), model.to_string()))
            .map(|p| (*p, *p, true))
    }
}

/// One pair's columns as the report reads them.
#[derive(Debug, Default)]
pub struct PairRow {
    pub route: String,
    pub primary: String,
    pub shadow: String,
    pub primary_backend: String,
    pub primary_model: String,
    pub shadow_backend: String,
    pub shadow_model: String,
    pub stream: bool,
    pub agree: Option<bool>,
    pub exact: Option<bool>,
    pub json_equal: Option<bool>,
    pub similarity: Option<f64>,
    pub shadow_error: Option<String>,
    pub validate_verdict: Option<String>,
    pub primary_latency_ms: f64,
    pub shadow_latency_ms: Option<f64>,
    /// Prompt and completion tokens of the primary, then of the shadow.
    pub tokens: [u64; 4],
}

/// The report, built one row at a time from either backend.
#[derive(Default)]
pub struct Folder {
    by: Vec<RouteReport>,
    lat: HashMap<String, (Vec<f64>, Vec<f64>)>,
    sim: HashMap<String, (f64, u64)>,
    judged: HashMap<String, Vec<f64>>,
}

impl Folder {
    /// Add one pair.
    pub fn add(&mut self, r: PairRow, prices: &Prices) {
        let i = match self.by.iter().position(|x| x.route == r.route) {
            Some(i) => i,
            None => {
                self.by.push(RouteReport {
                    route: r.route.clone(),
                    ..RouteReport::default()
                });
                self.by.len() - 1
            }
        };
        let rep = &mut self.by[i];
        rep.primary = r.primary;
        rep.shadow = r.shadow;
        rep.pairs += 1;
        if r.shadow_error.is_some() {
            rep.shadow_errors += 1;
        }
        if let Some(a) = r.agree {
            rep.compared += 1;
            rep.agreed += u64::from(a);
            rep.exact += u64::from(r.exact == Some(true));
            if let Some(j) = r.json_equal {
                rep.json_pairs += 1;
                rep.json_equal += u64::from(j);
            }
            if let Some(s) = r.similarity {
                let e = self.sim.entry(r.route.clone()).or_default();
                e.0 += s;
                e.1 += 1;
            }
        } else if r.stream && r.shadow_error.is_none() {
            rep.not_compared_streams += 1;
        }
        if r.validate_verdict
            .as_deref()
            .is_some_and(|v| v.starts_with("reject"))
        {
            rep.validate_rejected += 1;
        }
        let l = self.lat.entry(r.route).or_default();
        l.0.push(r.primary_latency_ms);
        if let Some(s) = r.shadow_latency_ms {
            l.1.push(s);
        }
        let [pp, pc, sp, sc] = r.tokens;
        rep.primary_prompt_tokens += pp;
        rep.primary_completion_tokens += pc;
        rep.shadow_prompt_tokens += sp;
        rep.shadow_completion_tokens += sc;
        if let Some((i, o, d)) = prices.get(&r.primary_backend, &r.primary_model) {
            *rep.primary_cost_usd.get_or_insert(0.0) += (pp as f64 * i + pc as f64 * o) / 1e6;
            rep.primary_cost_derived |= d;
        }
        if let Some((i, o, d)) = prices.get(&r.shadow_backend, &r.shadow_model) {
            *rep.shadow_cost_usd.get_or_insert(0.0) += (sp as f64 * i + sc as f64 * o) / 1e6;
            rep.shadow_cost_derived |= d;
        }
    }

    /// Add a pair the judge was asked about: its score, or `None` for a judge error.
    pub fn judge(&mut self, route: String, score: Option<f64>) {
        match score {
            Some(s) => self.judged.entry(route).or_default().push(s),
            None => {
                if let Some(rep) = self.by.iter_mut().find(|x| x.route == route) {
                    rep.judge_errors += 1;
                }
            }
        }
    }

    /// The per-route figures.
    pub fn finish(mut self) -> Vec<RouteReport> {
        for rep in &mut self.by {
            if let Some(scores) = self.judged.get_mut(&rep.route) {
                let n = scores.len();
                rep.judged = n as u64;
                rep.judge_mean = Some(scores.iter().sum::<f64>() / n as f64);
                rep.judge_share_at_least_8 =
                    Some(scores.iter().filter(|s| **s >= 8.0).count() as f64 / n as f64);
                rep.judge_p10 = pct(scores, 0.10);
            }
            if let Some((p, s)) = self.lat.get_mut(&rep.route) {
                rep.primary_latency_p50_ms = pct(p, 0.5);
                rep.primary_latency_p99_ms = pct(p, 0.99);
                rep.shadow_latency_p50_ms = pct(s, 0.5);
                rep.shadow_latency_p99_ms = pct(s, 0.99);
            }
            if let Some((sum, n)) = self.sim.get(&rep.route) {
                rep.mean_similarity = Some(sum / *n as f64);
            }
            if rep.compared > 0 {
                rep.agreement_rate = Some(rep.agreed as f64 / rep.compared as f64);
            }
        }
        self.by
    }
}

const PAIRS_SQL: &str = "SELECT route, primary_backend || '/' || primary_model,
        shadow_backend || '/' || shadow_model, primary_backend, primary_model, shadow_backend,
        shadow_model, stream, agree, exact_match, json_equal, similarity, shadow_error,
        validate_verdict, primary_latency_ms, shadow_latency_ms, primary_prompt_tokens,
        primary_completion_tokens, shadow_prompt_tokens, shadow_completion_tokens
     FROM shadow_pairs";

/// Compute the report from a store file.
pub fn compute(
    conn: &rusqlite::Connection,
    route: Option<&str>,
    since_ms: i64,
    prices: &Prices,
) -> rusqlite::Result<Vec<RouteReport>> {
    let mut st = conn.prepare(&format!(
        "{PAIRS_SQL} WHERE ts_ms >= ?1 AND (?2 IS NULL OR route = ?2) ORDER BY id"
    ))?;
    let mut folder = Folder::default();
    let mut rows = st.query(rusqlite::params![since_ms, route])?;
    while let Some(r) = rows.next()? {
        let tok = |k: usize| -> rusqlite::Result<u64> {
            Ok(r.get::<_, Option<i64>>(k)?.unwrap_or(0).max(0) as u64)
        };
        let row = PairRow {
            route: r.get(0)?,
            primary: r.get(1)?,
            shadow: r.get(2)?,
            primary_backend: r.get(3)?,
            primary_model: r.get(4)?,
            shadow_backend: r.get(5)?,
            shadow_model: r.get(6)?,
            stream: r.get(7)?,
            agree: r.get(8)?,
            exact: r.get(9)?,
            json_equal: r.get(10)?,
            similarity: r.get(11)?,
            shadow_error: r.get(12)?,
            validate_verdict: r.get(13)?,
            primary_latency_ms: r.get(14)?,
            shadow_latency_ms: r.get(15)?,
            tokens: [tok(16)?, tok(17)?, tok(18)?, tok(19)?],
        };
        folder.add(row, prices);
    }
    if super::store::has_judge_columns(conn) {
        let mut st = conn.prepare(
            "SELECT route, judge_score FROM shadow_pairs
             WHERE ts_ms >= ?1 AND (?2 IS NULL OR route = ?2)
               AND (judge_score IS NOT NULL OR judge_error IS NOT NULL)",
        )?;
        let mut rows = st.query(rusqlite::params![since_ms, route])?;
        while let Some(r) = rows.next()? {
            folder.judge(r.get(0)?, r.get(1)?);
        }
    }
    Ok(folder.finish())
}

/// [`compute`] on a PostgreSQL store: the pairs every replica wrote.
pub fn compute_pg(
    client: &mut postgres::Client,
    route: Option<&str>,
    since_ms: i64,
    prices: &Prices,
) -> Result<Vec<RouteReport>, postgres::Error> {
    let mut folder = Folder::default();
    let flag = |v: Option<i64>| v.map(|v| v != 0);
    let sql =
        format!("{PAIRS_SQL} WHERE ts_ms >= $1 AND ($2::TEXT IS NULL OR route = $2) ORDER BY id");
    for r in client.query(sql.as_str(), &[&since_ms, &route])? {
        let tok = |k: usize| r.get::<_, Option<i64>>(k).unwrap_or(0).max(0) as u64;
        let row = PairRow {
            route: r.get(0),
            primary: r.get(1),
            shadow: r.get(2),
            primary_backend: r.get(3),
            primary_model: r.get(4),
            shadow_backend: r.get(5),
            shadow_model: r.get(6),
            stream: r.get::<_, i64>(7) != 0,
            agree: flag(r.get(8)),
            exact: flag(r.get(9)),
            json_equal: flag(r.get(10)),
            similarity: r.get(11),
            shadow_error: r.get(12),
            validate_verdict: r.get(13),
            primary_latency_ms: r.get(14),
            shadow_latency_ms: r.get(15),
            tokens: [tok(16), tok(17), tok(18), tok(19)],
        };
        folder.add(row, prices);
    }
    for r in client.query(
        "SELECT route, judge_score FROM shadow_pairs
         WHERE ts_ms >= $1 AND ($2::TEXT IS NULL OR route = $2)
           AND (judge_score IS NOT NULL OR judge_error IS NOT NULL)",
        &[&since_ms, &route],
    )? {
        folder.judge(r.get(0), r.get(1));
    }
    Ok(folder.finish())
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1} ms"))
}

fn delta(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:+.1} ms", b - a),
        _ => "-".into(),
    }
}

/// Print a report in the terminal format (`store`: the file or URL it was read from).
pub fn print(store: &str, since: Option<&str>, reports: &[RouteReport]) {
    println!(
        "shadow report: {}{}",
        store,
        since.map(|s| format!(" (since {s})")).unwrap_or_default()
    );
    if reports.is_empty() {
        println!("no shadow pairs recorded");
        return;
    }
    for r in reports {
        println!(
            "\nroute {}: served by {} → shadow {}",
            r.route, r.primary, r.shadow
        );
        println!(
            "  pairs {} (compared {}, shadow errors {}, streamed not compared {})",
            r.pairs, r.compared, r.shadow_errors, r.not_compared_streams
        );
        match r.agreement_rate {
            Some(a) => println!(
                "  agreement {:.1}% ({} of {}): exact {:.1}%, JSON-equal {}/{}, mean similarity {:.3}{}",
                a * 100.0,
                r.agreed,
                r.compared,
                100.0 * r.exact as f64 / r.compared as f64,
                r.json_equal,
                r.json_pairs,
                r.mean_similarity.unwrap_or(0.0),
                if r.validate_rejected > 0 {
                    format!(", validate rejected {}", r.validate_rejected)
                } else {
                    String::new()
                }
            ),
            None => println!("  agreement: no compared pairs"),
        }
        println!(
            "  latency p50 {} → {} ({}); p99 {} → {} ({})",
            ms(r.primary_latency_p50_ms),
            ms(r.shadow_latency_p50_ms),
            delta(r.primary_latency_p50_ms, r.shadow_latency_p50_ms),
            ms(r.primary_latency_p99_ms),
            ms(r.shadow_latency_p99_ms),
            delta(r.primary_latency_p99_ms, r.shadow_latency_p99_ms),
        );
        match (r.judge_mean, r.judge_p10, r.judge_share_at_least_8) {
            (Some(mean), Some(p10), Some(share)) => println!(
                "  judge: {} pair(s) scored, mean {mean:.2}/10, p10 {p10:.1}, {:.1}% at 8 or above{}",
                r.judged,
                share * 100.0,
                if r.judge_errors > 0 {
                    format!(", {} unscored (judge errors)", r.judge_errors)
                } else {
                    String::new()
                }
            ),
            _ if r.judge_errors > 0 => {
                println!("  judge: no scores ({} judge errors)", r.judge_errors)
            }
            _ => {}
        }
        println!(
            "  tokens in/out {}/{} → {}/{}",
            r.primary_prompt_tokens,
            r.primary_completion_tokens,
            r.shadow_prompt_tokens,
            r.shadow_completion_tokens
        );
        match (r.primary_cost_usd, r.shadow_cost_usd) {
            (Some(a), Some(b)) => println!(
                "  cost ${a:.4}{} → ${b:.4}{} ({:+.1}%)",
                if r.primary_cost_derived {
                    " (derived)"
                } else {
                    ""
                },
                if r.shadow_cost_derived {
                    " (derived)"
                } else {
                    ""
                },
                if a > 0.0 { 100.0 * (b - a) / a } else { 0.0 }
            ),
            _ => println!(
                "  cost: no price for {}: add it to the config's [[prices]] or pass --price MODEL=IN,OUT (USD per million tokens)",
                match (r.primary_cost_usd, r.shadow_cost_usd) {
                    (None, None) => format!("{} or {}", r.primary, r.shadow),
                    (None, _) => r.primary.clone(),
                    _ => r.shadow.clone(),
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::shadow::compare::Comparison;
    use crate::services::shadow::store::{Pair, open};
    use std::time::Duration;

    #[test]
    fn since_formats() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_since("1h", now).unwrap(), (1_000_000 - 3600) * 1000);
        assert_eq!(parse_since("1700000000", now).unwrap(), 1_700_000_000_000);
        assert_eq!(parse_since("1970-01-02", now).unwrap(), 86_400_000);
        assert_eq!(
            parse_since("2024-03-01T12:00:00Z", now).unwrap(),
            1_709_294_400_000
        );
        assert!(parse_since("yesterday", now).is_err());
    }

    #[test]
    fn report_counts_match_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut conn = open(&path).unwrap();
        let mk = |agree: bool, sim: f64, lat: f64| Pair {
            ts_ms: 5_000,
            route: "r".into(),
            endpoint: "chat".into(),
            primary_backend: "p".into(),
            primary_model: "big".into(),
            shadow_backend: "s".into(),
            shadow_model: "small".into(),
            primary_latency_ms: lat,
            shadow_latency_ms: Some(lat / 2.0),
            primary_prompt_tokens: Some(10),
            primary_completion_tokens: Some(20),
            shadow_prompt_tokens: Some(10),
            shadow_completion_tokens: Some(10),
            comparison: Some(Comparison {
                exact: agree,
                json_equal: None,
                similarity: sim,
                agree,
            }),
            ..Pair::default()
        };
        let pairs = vec![
            mk(true, 1.0, 100.0),
            mk(true, 1.0, 200.0),
            mk(false, 0.5, 300.0),
            Pair {
                shadow_error: Some("HTTP 500".into()),
                ..mk(false, 0.0, 1.0)
            },
        ];
        let mut pairs = pairs;
        pairs[3].comparison = None;
        super::super::store::insert_for_test(&mut conn, &pairs);
        let mut prices = Prices::default();
        prices.set_model("big", 1.0, 2.0);
        prices.set_model("small", 0.1, 0.2);
        let r = compute(&conn, None, 0, &prices).unwrap();
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(
            (r.pairs, r.compared, r.agreed, r.shadow_errors),
            (4, 3, 2, 1)
        );
        assert!((r.agreement_rate.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((r.mean_similarity.unwrap() - 2.5 / 3.0).abs() < 1e-9);
        assert_eq!(r.primary_latency_p50_ms, Some(200.0));
        assert!(r.primary_cost_usd.unwrap() > r.shadow_cost_usd.unwrap());
        assert!(compute(&conn, None, 6_000, &prices).unwrap().is_empty());
        assert!(
            compute(&conn, Some("other"), 0, &prices)
                .unwrap()
                .is_empty()
        );
    }
}
