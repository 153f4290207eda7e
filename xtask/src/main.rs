//! Repository automation: `cargo xtask <command>`.
//!
//! - `test [ARGS...]`: the test command the README and CI run. Builds the binaries the
//!   end-to-end tests start, prepares what the tests need (the plugins), then runs
//!   `cargo test --workspace ARGS...`.
//! - `fetch-models`: downloads the worker's test models into the model cache (see `models`).
//! - `plugins`: builds the first-party plugins into `plugins/*.wasm`, the test fixtures into
//!   `target/plugin-fixtures/`, and the example policies beside their sources.

mod c_example;
mod models;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod plugins;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("help", &[][..]),
    };
    let result = match cmd {
        "test" => test(rest),
        "fetch-models" => models::fetch_models(),
        "plugins" => plugins::build(),
        "help" | "--help" | "-h" => {
            println!(
                "usage: cargo xtask <command>\n\ncommands:\n  test [ARGS...]   prepare prerequisites, then cargo test --workspace ARGS...\n  fetch-models     download the worker test models (SmolLM2, llama.cpp vocab files)\n  plugins          build plugins/*.wasm, test fixtures and example policies"
            );
            Ok(())
        }
        other => Err(format!(
            "unknown xtask command `{other}` (try `cargo xtask help`)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut c: Command, what: &str) -> Result<(), String> {
    let status = c.status().map_err(|e| format!("{what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn test(extra: &[String]) -> Result<(), String> {
    // The worker's tests run real models; fetching is idempotent (a cache hit is instant).
    models::fetch_models()?;

    plugins::build()?;
    // The end-to-end tests start these binaries; build them up front (the test harness
    // would otherwise build them from inside the test run).
    let mut build = cargo();
    build.args(["build", "--workspace", "--bins"]);
    run(build, "cargo build --workspace --bins")?;

    let mut t = cargo();
    t.args(["test", "--workspace"]).args(extra);
    run(t, "cargo test --workspace")
}
