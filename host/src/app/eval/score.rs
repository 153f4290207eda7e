//! The metrics of `switchyard eval`, each a pure function of an answer and its reference.
//!
//! `rouge_l` and `macro_f1` follow the reference implementations teams already trust (the
//! `rouge-score` package's ROUGE-L F1 with its default tokenizer; scikit-learn's
//! `f1_score(average="macro")`), so a score here means what it means in their notebooks.

use std::collections::BTreeMap;

use serde_json::Value;

/// How an example is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Exact,
    Json,
    Label,
    RougeL,
    Judge,
}

impl Metric {
    pub fn parse(s: &str) -> Result<Metric, String> {
        Ok(match s {
            "exact" => Metric::Exact,
            "json" => Metric::Json,
            "label" => Metric::Label,
            "rouge_l" => Metric::RougeL,
            "judge" => Metric::Judge,
            other => {
                return Err(format!(
                    "unknown metric \"{other}\" (known: exact, json, label, rouge_l, judge)"
                ));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::Exact => "exact",
            Metric::Json => "json",
            Metric::Label => "label",
            Metric::RougeL => "rouge_l",
            Metric::Judge => "judge",
        }
    }
}

/// `exact`: equal after trimming whitespace (and case-folding with `ignore_case`).
pub fn exact(answer: &str, expected: &str, ignore_case: bool) -> f64 {
    let (a, e) = (answer.trim(), expected.trim());
    let same = if ignore_case {
        a.to_lowercase() == e.to_lowercase()
    } else {
        a == e
    };
    if same { 1.0 } else { 0.0 }
}

/// `label`: the answer's label is its first line, trimmed and case-folded.
pub fn label_of(text: &str) -> String {
    text.trim_start()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_lowercase()
}

/// Parse a JSON answer; a Markdown code fence around it (```json ... ```) is taken off,
/// as models often add one.
pub fn parse_json(text: &str) -> Option<Value> {
    let t = text.trim();
    let t = match t.strip_prefix("```") {
        Some(rest) => {
            let body = rest.split_once('\n').map(|(_, b)| b).unwrap_or("");
            body.trim_end().strip_suffix("```").unwrap_or(body).trim()
        }
        None => t,
    };
    serde_json::from_str(t).ok()
}

/// `json`: the share of `expected`'s leaf values (scalars, empty arrays and objects) that
/// the answer has, equal, at the same path. An answer that is not JSON scores 0.
pub fn json(answer: &str, expected: &Value) -> f64 {
    let Some(a) = parse_json(answer) else {
        return 0.0;
    };
    let mut leaves = 0usize;
    let mut found = 0usize;
    walk(expected, Some(&a), &mut leaves, &mut found);
    if leaves == 0 {
        return 1.0;
    }
    found as f64 / leaves as f64
}

fn walk(e: &Value, a: Option<&Value>, leaves: &mut usize, found: &mut usize) {
    match e {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                walk(
                    v,
                    a.and_then(|a| a.as_object()).and_then(|o| o.get(k)),
                    leaves,
                    found,
                );
            }
        }
        Value::Array(xs) if !xs.is_empty() => {
            for (i, v) in xs.iter().enumerate() {
                walk(
                    v,
                    a.and_then(|a| a.as_array()).and_then(|l| l.get(i)),
                    leaves,
                    found,
                );
            }
        }
        leaf => {
            *leaves += 1;
            if a.is_some_and(|a| leaf_eq(leaf, a)) {
                *found += 1;
            }
        }
    }
}

/// Numbers compare by value (`1` equals `1.0`), everything else structurally.
fn leaf_eq(e: &Value, a: &Value) -> bool {
    match (e, a) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => e == a,
    }
}

/// The `rouge-score` package's default tokenizer: lowercase, every run of characters other
/// than `a-z0-9` becomes a space, split on whitespace (no stemming).
pub fn rouge_tokens(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let spaced: String = lower
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                ' '
            }
        })
        .collect();
    spaced.split_whitespace().map(str::to_string).collect()
}

/// ROUGE-L F1 of `answer` (the prediction) against `reference` (the target), as
/// `rouge_scorer.RougeScorer(["rougeL"]).score(reference, answer)["rougeL"].fmeasure`.
pub fn rouge_l(answer: &str, reference: &str) -> f64 {
    let (p, r) = (rouge_tokens(answer), rouge_tokens(reference));
    if p.is_empty() || r.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(&r, &p) as f64;
    let precision = lcs / p.len() as f64;
    let recall = lcs / r.len() as f64;
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Accuracy and macro-F1 of predicted labels against true ones, as scikit-learn's
/// `accuracy_score` and `f1_score(y_true, y_pred, average="macro")` compute them: the
/// labels are every label either side uses; a label's F1 is `2tp / (2tp + fp + fn)`.
pub fn accuracy_macro_f1(pairs: &[(String, String)]) -> (f64, f64) {
    if pairs.is_empty() {
        return (0.0, 0.0);
    }
    // label → (tp, fp, fn)
    let mut counts: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    let mut right = 0u64;
    for (truth, pred) in pairs {
        if truth == pred {
            right += 1;
            counts.entry(truth).or_default().0 += 1;
        } else {
            counts.entry(pred).or_default().1 += 1;
            counts.entry(truth).or_default().2 += 1;
        }
    }
    let f1_sum: f64 = counts
        .values()
        .map(|&(tp, fp, fnn)| {
            let d = 2 * tp + fp + fnn;
            if d == 0 {
                0.0
            } else {
                2.0 * tp as f64 / d as f64
            }
        })
        .sum();
    (
        right as f64 / pairs.len() as f64,
        f1_sum / counts.len() as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values: python3 -m venv /tmp/ref && /tmp/ref/bin/pip install rouge-score
    // scikit-learn, then /tmp/ref/bin/python tests/fixtures/eval/reference.py (it prints
    // each value below).

    #[test]
    fn rouge_l_equals_the_rouge_score_package() {
        for (pred, reference, want) in super::super::fixtures::ROUGE_L {
            let got = rouge_l(pred, reference);
            assert!(
                (got - want).abs() < 1e-12,
                "rouge_l({pred:?}, {reference:?}) = {got}, rouge-score says {want}"
            );
        }
    }

    #[test]
    fn macro_f1_equals_scikit_learn() {
        for (truth, pred, acc, f1) in super::super::fixtures::MACRO_F1 {
            let pairs: Vec<(String, String)> = truth
                .iter()
                .zip(pred.iter())
                .map(|(t, p)| (t.to_string(), p.to_string()))
                .collect();
            let (a, f) = accuracy_macro_f1(&pairs);
            assert!((a - acc).abs() < 1e-12, "accuracy {a} want {acc}");
            assert!((f - f1).abs() < 1e-12, "macro-F1 {f} want {f1}");
        }
    }

    #[test]
    fn json_scores_equal_the_reference_implementation() {
        for (answer, expected, want) in super::super::fixtures::JSON {
            let e: Value = serde_json::from_str(expected).unwrap();
            let got = json(answer, &e);
            assert!(
                (got - want).abs() < 1e-12,
                "json({answer:?}, {expected}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn exact_trims_and_folds_case_only_when_asked() {
        assert_eq!(exact("  Paris\n", "Paris", false), 1.0);
        assert_eq!(exact("paris", "Paris", false), 0.0);
        assert_eq!(exact("paris", "Paris", true), 1.0);
        assert_eq!(label_of("\n  Positive \nbecause"), "positive");
    }
}
