//! `switchyard eval --emit-labels FILE`: training labels for the learned router from an
//! eval run. Per example, the label is the cheapest target whose answer scored at least
//! `--label-threshold`; an example no target answered well enough gets no label. The file
//! is what `switchyard router train --data` reads: one JSON object a line,
//! `{"id": ..., "request": {...}, "label": ...}`.
//!
//! A label names the target's backend (what `learned-router` routes to when its `targets`
//! has no entry for the label), or `BACKEND:MODEL` when two evaluated targets share a
//! backend.

use std::io::Write as _;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::report::Outcome;

/// An evaluated target as labels see it.
pub struct Candidate<'a> {
    /// `BACKEND:MODEL`, as given.
    pub name: &'a str,
    pub backend: &'a str,
}

/// What was written.
#[derive(Debug, PartialEq)]
pub struct Written {
    pub labelled: usize,
    /// Examples no target answered at the threshold.
    pub unlabelled: usize,
    /// Examples per label, in the targets' order.
    pub per_label: Vec<(String, usize)>,
}

/// Each target's label: its backend, or its whole name when backends repeat.
pub fn label_names(targets: &[Candidate<'_>]) -> Vec<String> {
    targets
        .iter()
        .map(|t| {
            let shared = targets.iter().filter(|o| o.backend == t.backend).count() > 1;
            if shared {
                t.name.to_string()
            } else {
                t.backend.to_string()
            }
        })
        .collect()
}

/// The target each example is labelled with: the cheapest (its answer's cost; ties go to
/// the target listed first) whose score is at least `threshold`. `answers[t][i]` is target
/// `t`'s outcome on example `i`.
pub fn choose(answers: &[Vec<Outcome>], examples: usize, threshold: f64) -> Vec<Option<usize>> {
    (0..examples)
        .map(|i| {
            let good = answers
                .iter()
                .enumerate()
                .filter(|(_, per)| per[i].error.is_none() && per[i].score >= Some(threshold));
            good.min_by(|(a, x), (b, y)| x[i].cost_usd.total_cmp(&y[i].cost_usd).then(a.cmp(b)))
                .map(|(t, _)| t)
        })
        .collect()
}

/// What [`write`] writes.
pub struct EmitArgs<'a> {
    pub path: &'a Path,
    pub ids: &'a [&'a str],
    pub requests: &'a [&'a Map<String, Value>],
    pub labels: &'a [String],
    pub chosen: &'a [Option<usize>],
}

/// Write the labelled examples to `path` (replacing it).
pub fn write(a: EmitArgs<'_>) -> Result<Written, String> {
    let mut out = Vec::new();
    let mut counts = vec![0usize; a.labels.len()];
    let mut unlabelled = 0;
    for (i, chosen) in a.chosen.iter().enumerate() {
        let Some(t) = chosen else {
            unlabelled += 1;
            continue;
        };
        counts[*t] += 1;
        let mut request = a.requests[i].clone();
        // The model each target was sent is the eval's; the router reads the rest.
        request.remove("model");
        let line = json!({"id": a.ids[i], "request": request, "label": a.labels[*t]});
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    std::fs::File::create(a.path)
        .and_then(|mut f| f.write_all(&out))
        .map_err(|e| format!("--emit-labels {}: {e}", a.path.display()))?;
    Ok(Written {
        labelled: a.chosen.len() - unlabelled,
        unlabelled,
        per_label: a.labels.iter().cloned().zip(counts).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(score: Option<f64>, cost: f64, error: bool) -> Outcome {
        Outcome {
            score,
            cost_usd: cost,
            error: error.then(|| "failed".to_string()),
            ..Outcome::default()
        }
    }

    #[test]
    fn the_cheapest_target_at_the_threshold_wins() {
        // Target 0 is dear, target 1 cheap.
        let answers = vec![
            vec![
                o(Some(1.0), 0.01, false),
                o(Some(1.0), 0.01, false),
                o(Some(0.2), 0.01, false),
                o(Some(1.0), 0.0, true),
            ],
            vec![
                o(Some(0.9), 0.001, false),
                o(Some(0.5), 0.001, false),
                o(Some(0.1), 0.001, false),
                o(Some(1.0), 0.0, false),
            ],
        ];
        let chosen = choose(&answers, 4, 0.8);
        // 0: both good, 1 cheaper; 1: only 0 good; 2: none; 3: 0 failed (its cost 0 is no
        // bargain), 1 good.
        assert_eq!(chosen, [Some(1), Some(0), None, Some(1)]);
        // Equal costs: the target listed first.
        let tie = vec![
            vec![o(Some(1.0), 0.0, false)],
            vec![o(Some(1.0), 0.0, false)],
        ];
        assert_eq!(choose(&tie, 1, 0.8), [Some(0)]);
    }

    #[test]
    fn labels_are_backends_unless_two_targets_share_one() {
        let t = |name, backend| Candidate { name, backend };
        assert_eq!(
            label_names(&[t("openai:gpt-4o", "openai"), t("local:llama", "local")]),
            ["openai", "local"]
        );
        assert_eq!(
            label_names(&[t("m:good", "m"), t("m:bad", "m"), t("local:llama", "local")]),
            ["m:good", "m:bad", "local"]
        );
    }
}
