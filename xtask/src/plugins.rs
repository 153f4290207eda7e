//! `cargo xtask plugins`: build every Wasm component the repository ships or tests with.
//!
//! - `plugins/*` (Rust, wasm32-wasip2) → `plugins/<name>.wasm`
//! - `tests/fixtures/plugins/*` (hostile test plugins) → `target/plugin-fixtures/<name>.wasm`
//! - `examples/python-router` (componentize-py), `examples/js-router` (componentize-js,
//!   installed with jco by npm) and `examples/c-router` (clang + wasi-libc; see
//!   [`crate::c_example`]) → a `router.wasm`
//!   beside their sources, when those toolchains are installed (skipped with a message
//!   otherwise; `SWITCHYARD_CI=1` makes a missing toolchain an error). With a `weval` binary
//!   installed the JavaScript is compiled ahead of time (see [`weval`]).
//!
//! The Rust plugins share one target directory (`target/wasm`) so the SDK and wit-bindgen
//! are compiled once for all of them.

use std::path::Path;
use std::process::Command;

use crate::{cargo, root, run};

/// First-party plugins: crate name, output file stem.
const PLUGINS: &[&str] = &[
    "complexity-router",
    "prompt-adapter",
    "json-validator",
    "learned-router",
    "prompt-versions",
    "pii-mask",
];
const FIXTURES: &[&str] = &["hostile"];

pub fn build() -> Result<(), String> {
    crate::prereqs::wasm_target()?;
    let root = root();
    let target_dir = root.join("target").join("wasm");
    build_workspace(&root.join("plugins").join("Cargo.toml"), &target_dir)?;
    for name in PLUGINS {
        copy(
            &target_dir,
            name,
            &root.join("plugins").join(format!("{name}.wasm")),
        )?;
    }
    build_workspace(&root.join("tests/fixtures/plugins/Cargo.toml"), &target_dir)?;
    let fixtures = root.join("target").join("plugin-fixtures");
    std::fs::create_dir_all(&fixtures).map_err(|e| format!("{}: {e}", fixtures.display()))?;
    for name in FIXTURES {
        copy(&target_dir, name, &fixtures.join(format!("{name}.wasm")))?;
    }
    examples(&root)?;
    println!("plugins built: {}", PLUGINS.join(", "));
    Ok(())
}

fn build_workspace(manifest: &Path, target_dir: &Path) -> Result<(), String> {
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(manifest)
    .arg("--target-dir")
    .arg(target_dir);
    run(c, &format!("cargo build {}", manifest.display()))
}

fn copy(target_dir: &Path, name: &str, to: &Path) -> Result<(), String> {
    let from = target_dir
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    // Write then rename, so a running gateway watching plugins/ never sees half a file.
    let tmp = to.with_extension("wasm.tmp");
    std::fs::copy(&from, &tmp).map_err(|e| format!("copy {}: {e}", from.display()))?;
    std::fs::rename(&tmp, to).map_err(|e| format!("rename to {}: {e}", to.display()))
}

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The weval binary for componentize-js's `--aot`: `$SWITCHYARD_WEVAL`, else `weval` on the
/// PATH (`cargo install weval --version 0.5.0 --locked`, the version componentize-js 0.23
/// expects). `SWITCHYARD_WEVAL=off` builds for the interpreter even when one is installed.
fn weval() -> Option<std::path::PathBuf> {
    match std::env::var_os("SWITCHYARD_WEVAL") {
        Some(v) if v == "off" => None,
        Some(v) => Some(v.into()),
        // An absolute path: componentize-js ignores a `--weval-bin` it cannot find as a file
        // and downloads weval instead.
        None => std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join("weval"))
            .find(|p| p.is_file() && have(&p.to_string_lossy(), "--version")),
    }
}

fn ci() -> bool {
    std::env::var("SWITCHYARD_CI").is_ok_and(|v| v == "1")
}

fn missing(what: &str) -> Result<(), String> {
    if ci() {
        Err(format!("SWITCHYARD_CI=1 but {what} is not installed"))
    } else {
        println!("skipping: {what} is not installed");
        Ok(())
    }
}

/// The example policies in Python, JavaScript and C.
fn examples(root: &Path) -> Result<(), String> {
    let wit = root.join("wit");
    let py = root.join("examples").join("python-router");
    if py.exists() {
        match crate::prereqs::componentize_py()? {
            Ok(componentize_py) => {
                let mut c = Command::new(componentize_py);
                c.current_dir(&py).arg("-d").arg(&wit).args([
                    "-w",
                    "classifier",
                    "componentize",
                    "app",
                    "-o",
                    "router.wasm",
                ]);
                run(c, "componentize-py (examples/python-router)")?;
            }
            Err(what) => missing(&what)?,
        }
    }
    let js = root.join("examples").join("js-router");
    if js.exists() {
        match crate::prereqs::componentize_js(&js)? {
            Ok(_) => {
                // build.mjs runs componentize-js with the same options as its CLI, and makes
                // the generated argument-passing code faster (see the script's header).
                let mut c = Command::new("node");
                c.current_dir(&js)
                    .args(["build.mjs", "--wit"])
                    .arg(&wit)
                    .args(["-o", "router.wasm"]);
                // Ahead-of-time compilation of the JavaScript (weval) when a weval binary is at
                // hand: componentize-js would download one from GitHub, so we pass our own.
                if let Some(weval) = weval() {
                    c.arg("--aot").arg("--weval-bin").arg(&weval);
                    eprintln!(
                        "xtask: js-router built ahead of time with {}",
                        weval.display()
                    );
                }
                run(c, "componentize-js (examples/js-router/build.mjs)")?;
            }
            Err(what) => missing(&what)?,
        }
    }
    let c = root.join("examples").join("c-router");
    if c.exists() {
        match crate::c_example::clang() {
            Some(cc) => {
                crate::c_example::build(&cc, &wit, &c, &root.join("target").join("c-router"))?
            }
            None => missing(
                "clang for wasm32-wasi (apt install clang lld wasi-libc libclang-rt-14-dev-wasm32)",
            )?,
        }
    }
    Ok(())
}
