//! `fuzz [--seconds N] [--seed S] [TARGET...]`: mutate each target's corpus for a bounded
//! time (CI runs it through `cargo xtask fuzz`). Exits non-zero on the first failing input,
//! after writing it to `target/fuzz/crashes/<target>/`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use switchyard_fuzz::{Budget, corpus, fuzz, targets};

#[derive(Parser)]
struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Seed of the mutations (a run with the same seed and corpus tries the same inputs,
    /// when it gets through the same number of them).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The corpus folder (one subfolder per target).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))]
    corpus: PathBuf,
    /// Targets to run (all when none is named).
    targets: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    for name in &args.targets {
        if !targets::ALL.iter().any(|t| t.name == name) {
            let names: Vec<_> = targets::ALL.iter().map(|t| t.name).collect();
            eprintln!("fuzz: no target `{name}` (targets: {})", names.join(", "));
            return ExitCode::from(2);
        }
    }
    let crash_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz/crashes");
    let mut failed = false;
    for t in targets::ALL {
        if !args.targets.is_empty() && !args.targets.iter().any(|n| n == t.name) {
            continue;
        }
        if t.name == "tokenizer" && !targets::tokenizer_ready() {
            eprintln!(
                "fuzz: tokenizer: NOT RUN, llama.cpp's vocab files are missing (cargo xtask fetch-models)"
            );
            failed = true;
            continue;
        }
        let seeds = match corpus(&args.corpus, t.name) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fuzz: {}: corpus {}: {e}", t.name, args.corpus.display());
                failed = true;
                continue;
            }
        };
        // The panic hook would print every caught panic; the report below says it once.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let (stats, crash) = fuzz(
            t,
            &seeds,
            args.seed,
            Budget {
                inputs: u64::MAX,
                time: Duration::from_secs_f64(args.seconds),
            },
            Some(&crash_dir),
        );
        std::panic::set_hook(hook);
        println!(
            "fuzz: {:<9} {:>9} inputs, {:>8} accepted, pool {:>3}, corpus {}",
            t.name,
            stats.inputs,
            stats.accepted,
            stats.pool,
            seeds.len()
        );
        if let Some(c) = crash {
            failed = true;
            println!(
                "fuzz: {}: FAILED: {}\n  input ({} bytes, saved to {}): {:?}",
                c.target,
                c.message,
                c.input.len(),
                c.saved
                    .as_ref()
                    .map_or("nowhere".into(), |p| p.display().to_string()),
                String::from_utf8_lossy(&c.input[..c.input.len().min(400)])
            );
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
