//! A rollout's guards: each compares the candidate with the incumbents over the step's
//! window, or holds the candidate to a floor (agreement, judge score, feedback).
//!
//! A guard without data (no candidate or no incumbent answers yet, no mirrored pairs, no
//! feedback) is "no data": `ok` is `None`. It neither passes (a step never advances past a
//! guard that has not seen the candidate) nor fails (only evidence rolls back).

use rusqlite::{Connection, OptionalExtension};

use crate::config::rollout::Guards;

/// One arm over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArmStats {
    pub requests: u64,
    pub errors: u64,
    pub rejects: u64,
    /// p99 of served latencies, in milliseconds.
    pub p99_ms: Option<f64>,
}

impl ArmStats {
    fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
    fn reject_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.rejects as f64 / self.requests as f64)
    }
}

/// A mean and how many values it is over.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Mean {
    pub mean: f64,
    pub n: u64,
}

/// Quality signals read from the store for the candidate over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quality {
    pub agreement: Option<Mean>,
    pub judge: Option<Mean>,
    pub feedback: Option<Mean>,
}

/// One guard's verdict.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GuardResult {
    pub name: String,
    /// The measured value (a delta for the comparative guards); `None`: no data.
    pub value: Option<f64>,
    pub limit: f64,
    /// `None`: no data.
    pub ok: Option<bool>,
    /// What was measured, for people.
    #[serde(default)]
    pub detail: String,
}

/// Every configured guard, evaluated.
pub fn evaluate(g: &Guards, cand: &ArmStats, inc: &ArmStats, q: &Quality) -> Vec<GuardResult> {
    let mut out = Vec::new();
    let pct = |x: f64| format!("{:.2}%", x * 100.0);
    if let Some(limit) = g.max_error_rate {
        let (value, detail) = match (cand.error_rate(), inc.error_rate()) {
            (Some(c), Some(i)) => (
                Some(c - i),
                format!("candidate {} vs incumbent {}", pct(c), pct(i)),
            ),
            _ => (None, "no answers from both sides yet".into()),
        };
        out.push(result("max_error_rate", value, limit, detail, |v| {
            v <= limit
        }));
    }
    if let Some(limit) = g.max_p99_increase_ms {
        let (value, detail) = match (cand.p99_ms, inc.p99_ms) {
            (Some(c), Some(i)) => (
                Some(c - i),
                format!("candidate p99 {c:.0} ms vs incumbent {i:.0} ms"),
            ),
            _ => (None, "no answers from both sides yet".into()),
        };
        out.push(result("max_p99_increase_ms", value, limit, detail, |v| {
            v <= limit
        }));
    }
    if let Some(limit) = g.max_reject_rate {
        let (value, detail) = match (cand.reject_rate(), inc.reject_rate()) {
            (Some(c), Some(i)) => (
                Some(c - i),
                format!("candidate {} vs incumbent {}", pct(c), pct(i)),
            ),
            _ => (None, "no answers from both sides yet".into()),
        };
        out.push(result("max_reject_rate", value, limit, detail, |v| {
            v <= limit
        }));
    }
    for (name, limit, m, what) in [
        (
            "min_agreement",
            g.min_agreement,
            q.agreement,
            "mirrored pairs",
        ),
        (
            "min_judge_score",
            g.min_judge_score,
            q.judge,
            "judged pairs",
        ),
        (
            "min_feedback",
            g.min_feedback,
            q.feedback,
            "feedback scores",
        ),
    ] {
        let Some(limit) = limit else { continue };
        let (value, detail) = match m {
            Some(m) if m.n > 0 => (Some(m.mean), format!("mean of {} {what}", m.n)),
            _ => (None, format!("no {what} yet")),
        };
        out.push(result(name, value, limit, detail, |v| v >= limit));
    }
    out
}

fn result(
    name: &str,
    value: Option<f64>,
    limit: f64,
    detail: String,
    holds: impl Fn(f64) -> bool,
) -> GuardResult {
    GuardResult {
        name: name.to_string(),
        value,
        limit,
        ok: value.map(holds),
        detail,
    }
}

/// Which rows of the store belong to the candidate over the window.
pub struct QualityQuery<'a> {
    pub route: &'a str,
    pub backend: &'a str,
    /// `None`: the candidate sends the client's model name, so any model.
    pub model: Option<&'a str>,
    pub since_ms: i64,
}

/// Agreement, judge score and feedback means for the candidate; a missing table or column
/// (no shadow traffic yet, a store without judge scores) is no data.
pub fn read_quality(conn: &Connection, q: &QualityQuery<'_>, guards: &Guards) -> Quality {
    let mean = |sql: &str| -> Option<Mean> {
        conn.query_row(
            sql,
            rusqlite::params![q.route, q.since_ms, q.backend, q.model],
            |r| {
                Ok(Mean {
                    n: r.get::<_, i64>(0)?.max(0) as u64,
                    mean: r.get::<_, Option<f64>>(1)?.unwrap_or(0.0),
                })
            },
        )
        .optional()
        .ok()
        .flatten()
        .filter(|m| m.n > 0)
    };
    let pairs = |column: &str| {
        format!(
            "SELECT COUNT({column}), AVG({column}) FROM shadow_pairs
             WHERE route = ?1 AND ts_ms >= ?2 AND shadow_backend = ?3
               AND (?4 IS NULL OR shadow_model = ?4)"
        )
    };
    Quality {
        agreement: guards.min_agreement.and_then(|_| mean(&pairs("agree"))),
        judge: guards
            .min_judge_score
            .filter(|_| has_column(conn, "shadow_pairs", JUDGE_COLUMN))
            .and_then(|_| mean(&pairs(JUDGE_COLUMN))),
        feedback: guards.min_feedback.and_then(|_| {
            mean(
                "SELECT COUNT(score), AVG(score) FROM feedback
                 WHERE route = ?1 AND request_ts_ms >= ?2 AND backend = ?3
                   AND (?4 IS NULL OR model = ?4)",
            )
        }),
    }
}

/// The column of `shadow_pairs` holding a judge's score (0..1) for a pair, where the store
/// has one; until then the judge guard reports no data.
pub const JUDGE_COLUMN: &str = "judge_score";

/// [`read_quality`] on a PostgreSQL store: the pairs and feedback of every replica.
/// A failed query (the database is down) is no data: the guard waits.
pub fn read_quality_pg(c: &mut postgres::Client, q: &QualityQuery<'_>, guards: &Guards) -> Quality {
    let mut mean = |sql: &str| -> Option<Mean> {
        let r = c
            .query_one(sql, &[&q.route, &q.since_ms, &q.backend, &q.model])
            .ok()?;
        let m = Mean {
            n: r.get::<_, i64>(0).max(0) as u64,
            mean: r.get::<_, Option<f64>>(1).unwrap_or(0.0),
        };
        (m.n > 0).then_some(m)
    };
    let pairs = |column: &str| {
        format!(
            "SELECT COUNT({column}), AVG({column})::DOUBLE PRECISION FROM shadow_pairs
             WHERE route = $1 AND ts_ms >= $2 AND shadow_backend = $3
               AND ($4::TEXT IS NULL OR shadow_model = $4)"
        )
    };
    Quality {
        agreement: guards.min_agreement.and_then(|_| mean(&pairs("agree"))),
        judge: guards
            .min_judge_score
            .and_then(|_| mean(&pairs(JUDGE_COLUMN))),
        feedback: guards.min_feedback.and_then(|_| {
            mean(
                "SELECT COUNT(score), AVG(score) FROM feedback
                 WHERE route = $1 AND request_ts_ms >= $2 AND backend = $3
                   AND ($4::TEXT IS NULL OR model = $4)",
            )
        }),
    }
}

fn has_column(conn: &Connection, table: &str, column: &str) -> bool {
    conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_compare_and_report_no_data() {
        let g = Guards {
            max_error_rate: Some(0.005),
            max_p99_increase_ms: Some(200.0),
            min_feedback: Some(0.7),
            ..Guards::default()
        };
        let cand = ArmStats {
            requests: 100,
            errors: 30,
            rejects: 0,
            p99_ms: Some(320.0),
        };
        let inc = ArmStats {
            requests: 900,
            errors: 0,
            rejects: 0,
            p99_ms: Some(10.0),
        };
        let r = evaluate(&g, &cand, &inc, &Quality::default());
        assert_eq!(r[0].name, "max_error_rate");
        assert_eq!(r[0].ok, Some(false));
        assert!((r[0].value.unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(r[1].ok, Some(false));
        assert_eq!(r[2].name, "min_feedback");
        assert_eq!((r[2].value, r[2].ok), (None, None));
        let none = evaluate(&g, &ArmStats::default(), &inc, &Quality::default());
        assert!(none.iter().all(|r| r.ok.is_none()), "{none:?}");
    }

    #[test]
    fn judge_scores_are_read_only_where_the_column_exists() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::services::shadow::store::SCHEMA)
            .unwrap();
        conn.execute(
            "INSERT INTO shadow_pairs (ts_ms, route, endpoint, stream, primary_backend, primary_model,
               shadow_backend, shadow_model, primary_latency_ms, agree)
             VALUES (10, 'r', 'chat', 0, 'old', 'm', 'new', 'llama', 1.0, 1)",
            [],
        )
        .unwrap();
        let g = Guards {
            min_agreement: Some(0.9),
            min_judge_score: Some(0.8),
            ..Guards::default()
        };
        let q = QualityQuery {
            route: "r",
            backend: "new",
            model: Some("llama"),
            since_ms: 0,
        };
        let got = read_quality(&conn, &q, &g);
        assert_eq!(got.agreement, Some(Mean { mean: 1.0, n: 1 }));
        assert_eq!(got.judge, None);
        conn.execute_batch("ALTER TABLE shadow_pairs ADD COLUMN judge_score REAL; UPDATE shadow_pairs SET judge_score = 0.5")
            .unwrap();
        let got = read_quality(&conn, &q, &g);
        assert_eq!(got.judge, Some(Mean { mean: 0.5, n: 1 }));
    }
}
