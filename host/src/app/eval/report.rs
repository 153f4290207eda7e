//! What `switchyard eval` prints and writes: one summary per target (text or `--json`), and
//! with `--out DIR` every example's answers and scores (`examples.jsonl`) and a
//! self-contained HTML report (`report.html`, an inline SVG chart, no external assets).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

/// One example's result for one target.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub answer: Option<String>,
    /// The call failed (connection, status, unreadable answer).
    pub error: Option<String>,
    pub latency_ms: f64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
    /// 0.0 to 1.0; `None`: not scored (no reference, or the judge gave no score).
    pub score: Option<f64>,
    /// The judge's verdict (metric `judge`).
    pub judge_score: Option<f64>,
    pub judge_reason: Option<String>,
    pub judge_error: Option<String>,
}

/// One target's summary.
#[derive(Debug, Clone, Default)]
pub struct TargetReport {
    pub target: String,
    pub examples: usize,
    pub errors: usize,
    pub quality: Option<f64>,
    pub quality_vs_baseline: Option<f64>,
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_usd: f64,
    /// The cost is derived from `gpu_hour_usd` and the worker's measured throughput.
    pub cost_derived: bool,
    pub cost_vs_baseline: Option<f64>,
    /// Examples sent to the judge (metric `judge`), and those it gave no score.
    pub judged: Option<usize>,
    pub judge_errors: usize,
    pub gates: Vec<(String, bool)>,
}

impl TargetReport {
    pub fn error_rate(&self) -> f64 {
        if self.examples == 0 {
            0.0
        } else {
            self.errors as f64 / self.examples as f64
        }
    }

    pub fn json(&self) -> Value {
        let mut v = json!({
            "target": self.target,
            "examples": self.examples,
            "errors": self.errors,
            "error_rate": self.error_rate(),
            "quality": self.quality,
            "quality_vs_baseline": self.quality_vs_baseline,
            "latency_ms": {"p50": self.p50_ms, "p99": self.p99_ms},
            "tokens": {"input": self.tokens_in, "output": self.tokens_out},
            "cost_usd": self.cost_usd,
            "cost_derived": self.cost_derived,
            "cost_vs_baseline": self.cost_vs_baseline,
            "gates": self.gates.iter().map(|(e, p)| json!({"expr": e, "pass": p})).collect::<Vec<_>>(),
        });
        if let Some(a) = self.accuracy {
            v["accuracy"] = json!(a);
            v["macro_f1"] = json!(self.macro_f1);
        }
        if self.judged.is_some() {
            v["judge_errors"] = json!(self.judge_errors);
        }
        v
    }
}

/// The whole run's JSON document.
pub fn document(baseline: Option<&str>, targets: &[TargetReport]) -> Value {
    json!({
        "baseline": baseline,
        "targets": targets.iter().map(TargetReport::json).collect::<Vec<_>>(),
    })
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// The text summary.
pub fn text(baseline: Option<&str>, targets: &[TargetReport]) -> String {
    let mut out = String::new();
    for t in targets {
        let base = if Some(t.target.as_str()) == baseline {
            " (baseline)"
        } else {
            ""
        };
        let _ = writeln!(out, "{}{base}", t.target);
        let _ = writeln!(
            out,
            "  examples {}  errors {}  quality {}  vs baseline {}",
            t.examples,
            t.errors,
            opt(t.quality, 4),
            opt(t.quality_vs_baseline, 3)
        );
        if let Some(a) = t.accuracy {
            let _ = writeln!(out, "  accuracy {a:.4}  macro-F1 {}", opt(t.macro_f1, 4));
        }
        if let Some(n) = t.judged {
            let _ = writeln!(out, "  judged {n}  judge errors {}", t.judge_errors);
        }
        let _ = writeln!(
            out,
            "  latency p50 {:.0} ms  p99 {:.0} ms  tokens in {} out {}",
            t.p50_ms, t.p99_ms, t.tokens_in, t.tokens_out
        );
        let _ = writeln!(
            out,
            "  cost ${:.6}{}  vs baseline {}",
            t.cost_usd,
            if t.cost_derived {
                " (derived from gpu_hour_usd)"
            } else {
                ""
            },
            opt(t.cost_vs_baseline, 3)
        );
        for (e, pass) in &t.gates {
            let _ = writeln!(out, "  gate {e}: {}", if *pass { "pass" } else { "FAIL" });
        }
    }
    out
}

/// One JSONL line of `examples.jsonl`.
pub fn example_line(
    target: &str,
    id: &str,
    metric: &str,
    reference: Option<&str>,
    o: &Outcome,
) -> Value {
    let mut v = json!({
        "target": target,
        "id": id,
        "metric": metric,
        "reference": reference,
        "answer": o.answer,
        "score": o.score,
        "error": o.error,
        "latency_ms": o.latency_ms,
        "tokens": {"input": o.tokens_in, "output": o.tokens_out},
        "cost_usd": o.cost_usd,
    });
    if o.judge_score.is_some() || o.judge_error.is_some() {
        v["judge"] =
            json!({"score": o.judge_score, "reason": o.judge_reason, "error": o.judge_error});
    }
    v
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Two horizontal bar groups (quality, and cost relative to the most expensive target),
/// one bar per target, as inline SVG.
fn chart(targets: &[TargetReport]) -> String {
    let row = 26.0;
    let label_w = 260.0;
    let bar_w = 300.0;
    let max_cost = targets.iter().map(|t| t.cost_usd).fold(0.0f64, f64::max);
    let height = 40.0 + row * (targets.len() as f64);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"quality and cost per target\">",
        label_w + 2.0 * bar_w + 60.0
    );
    let _ = write!(
        s,
        "<text x=\"{label_w}\" y=\"16\" font-size=\"13\">quality (0–1)</text><text x=\"{}\" y=\"16\" font-size=\"13\">cost (share of the highest)</text>",
        label_w + bar_w + 30.0
    );
    for (i, t) in targets.iter().enumerate() {
        let y = 28.0 + row * i as f64;
        let q = t.quality.unwrap_or(0.0).clamp(0.0, 1.0);
        let c = if max_cost > 0.0 {
            t.cost_usd / max_cost
        } else {
            0.0
        };
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text>\
             <rect x=\"{label_w}\" y=\"{y}\" width=\"{}\" height=\"18\" fill=\"#3b7dd8\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text>\
             <rect x=\"{}\" y=\"{y}\" width=\"{}\" height=\"18\" fill=\"#d8893b\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\">${:.6}</text>",
            y + 13.0,
            esc(&t.target),
            (q * bar_w).max(1.0),
            label_w + q * bar_w + 4.0,
            y + 13.0,
            opt(t.quality, 3),
            label_w + bar_w + 30.0,
            (c * bar_w).max(1.0),
            label_w + bar_w + 34.0 + c * bar_w,
            y + 13.0,
            t.cost_usd
        );
    }
    s.push_str("</svg>");
    s
}

/// A rendered example row for the HTML report.
pub struct Row<'a> {
    pub target: &'a str,
    pub id: &'a str,
    pub reference: Option<&'a str>,
    pub outcome: &'a Outcome,
}

/// The self-contained HTML report.
pub fn html(baseline: Option<&str>, targets: &[TargetReport], rows: &[Row<'_>]) -> String {
    let mut s = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>switchyard eval</title><style>\
         body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}\
         td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:13px}th{background:#f3f3f3}\
         .fail{color:#b00;font-weight:bold}.pass{color:#080}.clip{max-width:40em;white-space:pre-wrap}\
         </style></head><body><h1>switchyard eval</h1>",
    );
    if let Some(b) = baseline {
        let _ = write!(s, "<p>Baseline: <b>{}</b></p>", esc(b));
    }
    s.push_str(&chart(targets));
    s.push_str("<table><tr><th>target</th><th>examples</th><th>errors</th><th>quality</th><th>vs baseline</th><th>accuracy</th><th>macro-F1</th><th>p50 ms</th><th>p99 ms</th><th>tokens in/out</th><th>cost USD</th><th>vs baseline</th><th>gates</th></tr>");
    for t in targets {
        let gates: Vec<String> = t
            .gates
            .iter()
            .map(|(e, p)| {
                format!(
                    "<span class=\"{}\">{} {}</span>",
                    if *p { "pass" } else { "fail" },
                    esc(e),
                    if *p { "pass" } else { "FAIL" }
                )
            })
            .collect();
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{}/{}</td><td>{:.6}{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.target),
            t.examples,
            t.errors,
            opt(t.quality, 4),
            opt(t.quality_vs_baseline, 3),
            opt(t.accuracy, 4),
            opt(t.macro_f1, 4),
            t.p50_ms,
            t.p99_ms,
            t.tokens_in,
            t.tokens_out,
            t.cost_usd,
            if t.cost_derived { " (derived)" } else { "" },
            opt(t.cost_vs_baseline, 3),
            gates.join("<br>")
        );
    }
    s.push_str("</table><h2>Examples</h2><table><tr><th>id</th><th>target</th><th>score</th><th>reference</th><th>answer</th><th>error / judge</th></tr>");
    for r in rows {
        let o = r.outcome;
        let note = o
            .error
            .clone()
            .or_else(|| o.judge_error.clone())
            .or_else(|| o.judge_reason.clone())
            .unwrap_or_default();
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"clip\">{}</td><td class=\"clip\">{}</td><td class=\"clip\">{}</td></tr>",
            esc(r.id),
            esc(r.target),
            opt(o.score, 3),
            esc(r.reference.unwrap_or("")),
            esc(o.answer.as_deref().unwrap_or("")),
            esc(&note)
        );
    }
    s.push_str("</table></body></html>\n");
    s
}

/// Write `examples.jsonl` and `report.html` into `dir` (created if missing).
pub fn write_out(dir: &Path, lines: &[Value], html: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut jsonl = String::new();
    for l in lines {
        jsonl.push_str(&l.to_string());
        jsonl.push('\n');
    }
    let p = dir.join("examples.jsonl");
    std::fs::write(&p, jsonl).map_err(|e| format!("{}: {e}", p.display()))?;
    let p = dir.join("report.html");
    std::fs::write(&p, html).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(())
}
