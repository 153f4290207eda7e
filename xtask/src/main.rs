//! Repository automation: `cargo xtask <command>`.
//!
//! - `test [ARGS...]`: the test command the README and CI run. Prepares what the tests need
//!   (models, plugins), builds every target of the workspace with clippy's lints as errors
//!   (see [`lint`]), then runs `cargo test --workspace ARGS...`.
//! - `fetch-models`: downloads the worker's test models into the model cache (see `models`).
//! - `plugins`: builds the first-party plugins into `plugins/*.wasm`, the test fixtures into
//!   `target/plugin-fixtures/`, and the example policies beside their sources.
//! - `cuda-tools`, `cuda-check`, `cuda-test [--sanitize]`: the worker's CUDA kernels compiled,
//!   checked and run on their CPU twin without a GPU (see `cuda`).
//! - `fuzz [--seconds N] [TARGET...]`: the fuzz targets of `fuzz/` for a bounded time each.
//! - `docs`: build the book (`docs/`, mdBook) and check every link in it (see `docs`).

mod c_example;
mod cuda;
mod docs;
mod models;
mod prereqs;

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
        "cuda-tools" => cuda::tools(),
        "cuda-check" => cuda::check(),
        "cuda-test" => cuda::test(rest),
        "fuzz" => fuzz(rest),
        "docs" => docs::build_and_check(),
        "help" | "--help" | "-h" => {
            println!(
                "usage: cargo xtask <command>\n\ncommands:\n  test [ARGS...]   prepare prerequisites, build everything with clippy's lints, then cargo test --workspace ARGS...\n  fetch-models     download the worker test models (SmolLM2, llama.cpp vocab files)\n  plugins          build plugins/*.wasm, test fixtures and example policies\n  cuda-tools       venv with the pinned NVRTC/ptxas wheels (target/cuda-tools)\n  cuda-check       compile the CUDA kernels for sm_80/sm_90, fail on spills or over budget\n  cuda-test [--sanitize]  the CUDA kernels on the CPU twin (ASan/UBSan with --sanitize), linted\n  fuzz [--seconds N] [TARGET...]  mutate each fuzz target's corpus for N seconds (default 30; see fuzz/)\n  docs             mdbook build docs, then check every link of the book"
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
    // `cargo run` described xtask's own package to us in CARGO_PKG_*, CARGO_MANIFEST_* and
    // the like. Build scripts that read those (ring's) make cargo track their values, so
    // passing them on would make every dependency of ring stale for any build started
    // without them: a plain `cargo test`, and the tests' own `cargo build` of the binaries.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let ours = k.starts_with("CARGO_PKG_")
            || matches!(
                k.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            );
        if ours {
            c.env_remove(k.as_ref());
        }
    }
    // The lint wrapper below is for this workspace's own crates only; plugin workspaces
    // built from here (and a `cargo xtask` started by a test) must not inherit it.
    c.env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS");
    c
}

/// `clippy-driver` of the toolchain that runs us: beside `$CARGO`, where rustup and the
/// official toolchains put it (this is how `cargo clippy` finds it too).
fn clippy_driver() -> Option<PathBuf> {
    let cargo = PathBuf::from(std::env::var_os("CARGO")?);
    let driver = cargo.with_file_name(format!("clippy-driver{}", std::env::consts::EXE_SUFFIX));
    let works = Command::new(&driver)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    works.then_some(driver)
}

/// Make `c` compile this workspace's crates with clippy's lints on and warnings denied,
/// which is what `cargo clippy --workspace --all-targets -- -D warnings` checks.
///
/// Why not run `cargo clippy` first: it type-checks every dependency (about 400 crates)
/// in check mode, whose results the real build cannot reuse, so CI's 2 cores would spend
/// about 5 minutes on it. `clippy-driver` is a complete compiler with the lints added,
/// so used as the workspace's compiler wrapper (how `cargo clippy` uses it) the one build
/// the tests need also lints; dependencies are compiled once, without it.
fn lint(c: &mut Command, driver: &Path) {
    c.env("RUSTC_WORKSPACE_WRAPPER", driver).env(
        "CLIPPY_ARGS",
        "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
    );
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

    let mut unmet = prereqs::system_report();
    let venv_path = match prereqs::python_openai()? {
        Ok(bin) => bin,
        Err(what) if std::env::var("SWITCHYARD_CI").is_ok_and(|v| v == "1") => {
            return Err(format!("SWITCHYARD_CI=1 but {what} is not installed"));
        }
        Err(what) => {
            unmet.push(format!("{what}: the SDK round-trip tests skip"));
            None
        }
    };
    let say_unmet = || {
        for what in &unmet {
            eprintln!("xtask: not installed here, {what}");
        }
    };
    say_unmet();

    let driver = clippy_driver();
    if driver.is_none() {
        if std::env::var("SWITCHYARD_CI").is_ok_and(|v| v == "1") {
            return Err(
                "clippy-driver not found beside cargo (rustup component add clippy)".into(),
            );
        }
        eprintln!(
            "xtask: clippy is not installed, testing without lints (rustup component add clippy)"
        );
    }
    // Every target (tests, benches, the binaries the end-to-end tests start) in one build,
    // linted; `cargo test` then finds them all fresh.
    let mut build = cargo();
    build.args(["build", "--workspace", "--all-targets"]);
    let mut t = cargo();
    t.args(["test", "--workspace"]).args(extra);
    if let Some(bin) = venv_path {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let paths = std::iter::once(bin).chain(std::env::split_paths(&path));
        t.env(
            "PATH",
            std::env::join_paths(paths).map_err(|e| format!("PATH: {e}"))?,
        );
    }
    if let Some(d) = &driver {
        lint(&mut build, d);
        // The same wrapper for the test run, and so for the tests' own `cargo build` of the
        // binaries (which then finds them fresh instead of rebuilding without it).
        lint(&mut t, d);
    }
    run(
        build,
        "cargo build --workspace --all-targets (with clippy's lints)",
    )?;
    let result = run(t, "cargo test --workspace");
    // Again after the test output, where a reader looks for what did not run.
    say_unmet();
    result
}

/// The fuzz targets (`fuzz/`) for a bounded time each. Built like `test` builds (same
/// profile, clippy's wrapper when present), so after `cargo xtask test` nothing recompiles.
fn fuzz(extra: &[String]) -> Result<(), String> {
    models::fetch_models()?;
    let mut c = cargo();
    c.args(["run", "-p", "switchyard-fuzz", "--bin", "fuzz", "--"])
        .args(extra);
    if let Some(d) = clippy_driver() {
        lint(&mut c, &d);
    }
    run(c, "fuzz")
}
