//! `switchyard router train`: fit the learned router's model (`plugins/learned-router`) to
//! labelled requests.
//!
//! The data is JSON Lines, one labelled request a line: an OpenAI request body with a
//! `label` member (`{"messages": [...], "label": "local"}`), or `{"request": {...},
//! "label": "..."}`. Labels are any target names; the model predicts one of them. The
//! held-out accuracy of k-fold cross-validation is printed, then the model is fitted to all
//! the data and written to `--out`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;
use switchyard_router_model::{self as model, Example, Input, TrainOptions};

#[derive(Debug, Subcommand)]
pub enum RouterCmd {
    /// Train the learned router's model on labelled requests (JSON Lines).
    Train(TrainArgs),
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Labelled requests, one JSON object a line with a `label`.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Where to write the model (JSON), for `[plugins.config.learned-router] model`.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Cross-validation folds (2 or more).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Hashed feature buckets.
    #[arg(long, default_value_t = 4096)]
    pub dim: u32,
    /// Passes over the data.
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Seed of the shuffles (same data and seed: same folds, same model).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub fn router(cmd: RouterCmd) -> ExitCode {
    match cmd {
        RouterCmd::Train(a) => match train(&a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The labelled examples of the data file, and the labels in order of first appearance.
fn read(a: &TrainArgs) -> Result<(Vec<Example>, Vec<String>), String> {
    let text = std::fs::read_to_string(&a.data)
        .map_err(|e| format!("--data {}: {e}", a.data.display()))?;
    let mut labels: Vec<String> = Vec::new();
    let mut examples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", a.data.display(), n + 1);
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{at}: not JSON: {e}"))?;
        let label = v
            .get("label")
            .and_then(Value::as_str)
            .filter(|l| !l.is_empty())
            .ok_or(format!("{at}: `label` must be a non-empty string"))?;
        let body = v.get("request").unwrap_or(&v);
        let input = Input::from_request(body);
        if input.texts.is_empty() {
            return Err(format!(
                "{at}: no text to learn from (`messages` with content, or `prompt`)"
            ));
        }
        let index = match labels.iter().position(|l| l == label) {
            Some(i) => i,
            None => {
                labels.push(label.to_string());
                labels.len() - 1
            }
        };
        examples.push(Example {
            features: model::features(&input, a.dim),
            label: index,
        });
    }
    if labels.len() < 2 {
        return Err(format!(
            "--data {}: the examples need at least two different labels, found {}",
            a.data.display(),
            labels.len()
        ));
    }
    if examples.len() < a.folds {
        return Err(format!(
            "--data {}: {} examples are too few for {} folds",
            a.data.display(),
            examples.len(),
            a.folds
        ));
    }
    Ok((examples, labels))
}

fn train(a: &TrainArgs) -> Result<(), String> {
    if a.folds < 2 {
        return Err(format!("--folds must be 2 or more, got {}", a.folds));
    }
    if !(1..=1 << 24).contains(&a.dim) {
        return Err(format!("--dim must be from 1 to 16777216, got {}", a.dim));
    }
    let (examples, labels) = read(a)?;
    let o = TrainOptions {
        dim: a.dim,
        epochs: a.epochs.max(1),
        folds: a.folds,
        seed: a.seed,
        ..TrainOptions::default()
    };
    let counts: Vec<String> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let n = examples.iter().filter(|e| e.label == i).count();
            format!("{l} {n}")
        })
        .collect();
    println!("examples: {} ({})", examples.len(), counts.join(", "));
    let folds = model::cross_validate(&examples, &labels, &o);
    for (i, acc) in folds.iter().enumerate() {
        println!("fold {}: accuracy {acc:.3}", i + 1);
    }
    let mean = folds.iter().sum::<f64>() / folds.len() as f64;
    println!(
        "held-out accuracy ({}-fold cross-validation): {mean:.3}",
        folds.len()
    );
    let all: Vec<&Example> = examples.iter().collect();
    let m = model::train(&all, &labels, &o);
    println!("training accuracy: {:.3}", model::accuracy(&m, &all));
    std::fs::write(&a.out, m.to_json()).map_err(|e| format!("--out {}: {e}", a.out.display()))?;
    println!("model written to {}", a.out.display());
    Ok(())
}
