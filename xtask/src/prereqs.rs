//! What the tests need beyond cargo, installed here where a user-level install can do it,
//! and named plainly where it takes the system's package manager.
//!
//! A fresh machine has the toolchain that `rust-toolchain.toml` pins and nothing else the
//! repository builds with. Without this, the first `cargo xtask test` failed deep inside the
//! plugin build ("can't find crate for `core`") because only `.ci/run` added the wasm target.
//!
//! - `wasm32-wasip2` (the plugins): `rustup target add`, for the pinned toolchain.
//! - componentize-py (the Python example): pip into a private venv under `target/xtask-tools`
//!   when it is not on the PATH, pinned to the version the example is written against; the
//!   `openai` SDK (the round-trip tests) into the same venv when python3 lacks it.
//! - componentize-js (the JavaScript example): `npm ci` from the committed lock file.
//! - clang + wasi-libc (the C example) and redis-server (the shared-limit tests) come from
//!   Debian's packages: those are reported with the command that installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{root, run};

pub const WASM_TARGET: &str = "wasm32-wasip2";
/// The componentize-py the Python example and its bindings are written against.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// The OpenAI SDK the round-trip tests drive the gateway and the worker with.
const OPENAI: &str = "openai==3.63.0";
/// The Anthropic SDK the Messages API round-trip test drives the gateway with.
const ANTHROPIC: &str = "anthropic==2.17.0";
/// What the SDK round-trip tests import.
const SDK_IMPORT: &str = "import openai, anthropic";

/// Install the wasm target if the active toolchain lacks it.
pub fn wasm_target() -> Result<(), String> {
    if has_wasm_target() {
        return Ok(());
    }
    if !works("rustup", &["--version"]) {
        return Err(format!(
            "the {WASM_TARGET} target is not installed for this toolchain and rustup is not on \
             the PATH to add it: install the target with the tool that installed rustc"
        ));
    }
    println!("xtask: installing the {WASM_TARGET} target (rustup target add {WASM_TARGET})");
    let mut c = Command::new("rustup");
    // Run from the root so rustup picks the toolchain that rust-toolchain.toml pins.
    c.current_dir(root()).args(["target", "add", WASM_TARGET]);
    run(c, &format!("rustup target add {WASM_TARGET}"))?;
    if has_wasm_target() {
        Ok(())
    } else {
        Err(format!(
            "rustup reported success but {WASM_TARGET}'s standard library is still missing \
             from the sysroot"
        ))
    }
}

/// The target's standard library in the sysroot of the rustc cargo uses: the same check the
/// compiler makes, so it holds whether or not rustup manages the toolchain.
fn has_wasm_target() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc)
        .current_dir(root())
        .args(["--print", "sysroot"])
        .output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .join("lib")
        .is_dir()
}

/// The componentize-py to run: the one on the PATH, else ours, installed on first use.
/// `Ok(Err(reason))` when neither is possible (no python3 with venv).
pub fn componentize_py() -> Result<Result<PathBuf, String>, String> {
    if works("componentize-py", &["--version"]) {
        return Ok(Ok("componentize-py".into()));
    }
    let bin = venv_bin().join("componentize-py");
    if works(&bin.to_string_lossy(), &["--version"]) {
        return Ok(Ok(bin));
    }
    match venv_install(COMPONENTIZE_PY)? {
        Ok(()) => Ok(Ok(bin)),
        Err(why) => Ok(Err(format!("componentize-py ({why})"))),
    }
}

/// The SDK round-trip tests run `python3 -c "import openai"` (and `anthropic`). When the
/// machine's python3 lacks a package, both go into our venv, whose `bin` the test run then puts first on the
/// PATH (returned here). `Ok(Err(reason))` when that is not possible.
pub fn python_openai() -> Result<Result<Option<PathBuf>, String>, String> {
    if works("python3", &["-c", SDK_IMPORT]) {
        return Ok(Ok(None));
    }
    let python = venv_bin().join("python3");
    if works(&python.to_string_lossy(), &["-c", SDK_IMPORT]) {
        return Ok(Ok(Some(venv_bin())));
    }
    for package in [OPENAI, ANTHROPIC] {
        if let Err(why) = venv_install(package)? {
            return Ok(Err(format!("the python `{package}` package ({why})")));
        }
    }
    Ok(Ok(Some(venv_bin())))
}

fn venv_bin() -> PathBuf {
    tools_dir().join("py").join("bin")
}

/// `pip install` one pinned package into our venv, made on first use. The venv sees the
/// machine's own site-packages, so python3 from it still finds what is installed there.
fn venv_install(package: &str) -> Result<Result<(), String>, String> {
    let venv = tools_dir().join("py");
    let python = venv_bin().join("python3");
    if !python.exists() {
        if !works("python3", &["-c", "import venv, ensurepip"]) {
            return Ok(Err(
                "needs python3 with venv and pip: apt install python3-venv".into(),
            ));
        }
        let mut c = Command::new("python3");
        c.args(["-m", "venv", "--system-site-packages"]).arg(&venv);
        run(c, "python3 -m venv")?;
    }
    println!("xtask: installing {package} into {}", venv.display());
    let mut c = Command::new(&python);
    c.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        package,
    ]);
    run(c, &format!("pip install {package}"))?;
    Ok(Ok(()))
}

/// componentize-js under `examples/js-router/node_modules`, from its lock file when npm is
/// here. `Err` names what is missing.
pub fn componentize_js(js: &Path) -> Result<Result<PathBuf, String>, String> {
    let cjs = js.join("node_modules").join(".bin").join("componentize-js");
    if cjs.exists() {
        return Ok(Ok(cjs));
    }
    if !works("npm", &["--version"]) {
        return Ok(Err(
            "componentize-js (needs Node.js and npm: apt install nodejs npm)".into(),
        ));
    }
    println!("xtask: installing componentize-js (npm ci in examples/js-router)");
    let mut c = Command::new("npm");
    c.current_dir(js)
        .args(["ci", "--no-audit", "--no-fund", "--silent"]);
    run(c, "npm ci (examples/js-router)")?;
    if cjs.exists() {
        Ok(Ok(cjs))
    } else {
        Err("npm ci succeeded but node_modules/.bin/componentize-js is missing".into())
    }
}

/// What the tests use from the system that this command does not install: printed before
/// and after the run, so a skip is never silent.
pub fn system_report() -> Vec<String> {
    let mut missing = Vec::new();
    if !works("redis-server", &["--version"]) {
        missing.push(
            "redis-server: the shared rate-limit and budget tests skip (apt install redis-server)"
                .to_string(),
        );
    }
    if crate::c_example::clang().is_none() {
        missing.push(
            "clang for wasm32-wasi: the C example policy is not built and its tests skip \
             (apt install clang lld wasi-libc libclang-rt-14-dev-wasm32)"
                .to_string(),
        );
    }
    missing
}

fn tools_dir() -> PathBuf {
    root().join("target").join("xtask-tools")
}

fn works(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}
