//! `--gate EXPR`: a condition every target other than the baseline must meet, e.g.
//! `quality>=0.95*baseline`, `cost<=0.4*baseline`, `p99_ms<=3000`, `errors<=0.01`.
//!
//! Grammar: `MEASURE OP VALUE`, where OP is one of `>= <= > < ==` and VALUE is a number,
//! `baseline`, or `N*baseline` (`baseline*N`): the baseline target's own value of MEASURE.

use super::report::TargetReport;

/// What a gate compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Quality,
    Cost,
    P50,
    P99,
    /// The share of examples whose call failed (0.0 to 1.0).
    Errors,
    Accuracy,
    MacroF1,
    /// The share of judged examples the judge could not score.
    JudgeErrors,
}

const MEASURES: &str = "quality, cost, p50_ms, p99_ms, errors, accuracy, macro_f1, judge_errors";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Ge,
    Le,
    Gt,
    Lt,
    Eq,
}

/// A parsed gate.
#[derive(Debug, Clone)]
pub struct Gate {
    pub expr: String,
    measure: Measure,
    op: Op,
    value: f64,
    /// The value is a multiple of the baseline's.
    relative: bool,
}

impl Gate {
    pub fn parse(expr: &str) -> Result<Gate, String> {
        let bad = |why: &str| format!("--gate \"{expr}\": {why}");
        let compact: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
        let ops = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
        ];
        let (at, text, op) = ops
            .iter()
            .filter_map(|(t, o)| compact.find(t).map(|i| (i, *t, *o)))
            .min_by_key(|(i, t, _)| (*i, usize::MAX - t.len()))
            .ok_or_else(|| bad("no comparison (>=, <=, >, <, ==)"))?;
        let (lhs, rhs) = (&compact[..at], &compact[at + text.len()..]);
        let measure = match lhs {
            "quality" => Measure::Quality,
            "cost" => Measure::Cost,
            "p50_ms" => Measure::P50,
            "p99_ms" => Measure::P99,
            "errors" => Measure::Errors,
            "accuracy" => Measure::Accuracy,
            "macro_f1" => Measure::MacroF1,
            "judge_errors" => Measure::JudgeErrors,
            other => {
                return Err(bad(&format!(
                    "unknown measure \"{other}\" (known: {MEASURES})"
                )));
            }
        };
        let number = |s: &str| {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(&format!("\"{s}\" is not a number")))
        };
        let (value, relative) = if rhs == "baseline" {
            (1.0, true)
        } else if let Some(f) = rhs.strip_suffix("*baseline") {
            (number(f)?, true)
        } else if let Some(f) = rhs.strip_prefix("baseline*") {
            (number(f)?, true)
        } else {
            (number(rhs)?, false)
        };
        Ok(Gate {
            expr: expr.to_string(),
            measure,
            op,
            value,
            relative,
        })
    }

    /// The gate needs a baseline to compare with.
    pub fn relative(&self) -> bool {
        self.relative
    }

    /// Whether `t` passes; `None` when the measure does not apply (no label examples for
    /// `accuracy`, a baseline without a value): a gate that cannot be checked fails.
    pub fn check(&self, t: &TargetReport, baseline: Option<&TargetReport>) -> bool {
        let Some(v) = measure(t, self.measure) else {
            return false;
        };
        let limit = if self.relative {
            match baseline.and_then(|b| measure(b, self.measure)) {
                Some(b) => self.value * b,
                None => return false,
            }
        } else {
            self.value
        };
        // Products like 0.95 * 0.8 carry rounding error; a value equal to the limit up to
        // that error passes `>=`/`<=`.
        let eps = 1e-9 * limit.abs().max(1.0);
        match self.op {
            Op::Ge => v >= limit - eps,
            Op::Le => v <= limit + eps,
            Op::Gt => v > limit,
            Op::Lt => v < limit,
            Op::Eq => (v - limit).abs() <= eps,
        }
    }
}

fn measure(t: &TargetReport, m: Measure) -> Option<f64> {
    match m {
        Measure::Quality => t.quality,
        Measure::Cost => Some(t.cost_usd),
        Measure::P50 => Some(t.p50_ms),
        Measure::P99 => Some(t.p99_ms),
        Measure::Errors => Some(t.error_rate()),
        Measure::Accuracy => t.accuracy,
        Measure::MacroF1 => t.macro_f1,
        Measure::JudgeErrors => t
            .judged
            .filter(|n| *n > 0)
            .map(|n| t.judge_errors as f64 / n as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_parse_with_or_without_a_baseline() {
        let g = Gate::parse("quality >= 0.95*baseline").unwrap();
        assert!(g.relative && g.value == 0.95 && g.op == Op::Ge);
        let g = Gate::parse("p99_ms<=3000").unwrap();
        assert!(!g.relative && g.value == 3000.0 && g.op == Op::Le);
        assert!(Gate::parse("cost<=baseline*0.4").unwrap().relative);
        assert!(
            Gate::parse("speed>=1")
                .unwrap_err()
                .contains("unknown measure")
        );
        assert!(
            Gate::parse("quality 1")
                .unwrap_err()
                .contains("no comparison")
        );
        assert!(
            Gate::parse("quality>=lots")
                .unwrap_err()
                .contains("not a number")
        );
    }
}
