//! The official `openai` Python SDK against the worker: chat and completions, streaming and
//! not, usage, seed reproducibility, stop strings, context overflow → 400 (tests/openai_sdk.py).
//! Skips when Python's `openai` package is missing, unless SWITCHYARD_CI=1.

// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::zombie_processes)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use switchyard_worker::models_dir::{SMOLLM2, test_model};

#[test]
fn openai_python_sdk_against_the_worker() {
    let Some(model) = test_model(SMOLLM2) else {
        return;
    };
    let has_sdk = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_sdk {
        let ci = std::env::var("SWITCHYARD_CI").is_ok_and(|v| v == "1");
        assert!(
            !ci,
            "SWITCHYARD_CI=1 but python3 -m pip install openai is missing"
        );
        eprintln!("SKIPPED: python openai package is not installed (pip install openai)");
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-worker"))
        .arg("--model")
        .arg(&model)
        .args([
            "--port",
            "0",
            "--served-model-name",
            "smol",
            "--ctx-size",
            "256",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "worker exited early");
        if let Some(a) = line.trim().strip_prefix("switchyard-worker listening on ") {
            break a.to_string();
        }
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_sdk.py");
    let res = Command::new("python3")
        .arg(script)
        .arg(format!("{addr}/v1"))
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        res.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
}
