//! Structured outputs and tool calls through the official `openai` Python SDK against the
//! worker serving SmolLM2 (tests/structured_outputs.py): 20 JSON schemas whose answers must
//! validate with `jsonschema`, a forced tool call round trip, streamed tool calls, and the 400
//! for an unsupported schema keyword. Skips when Python's `openai` or `jsonschema` package is
//! missing, unless SWITCHYARD_CI=1.

// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::zombie_processes)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use switchyard_worker::models_dir::{SMOLLM2, test_model};

#[test]
fn structured_outputs_and_tool_calls_through_the_sdk() {
    let Some(model) = test_model(SMOLLM2) else {
        return;
    };
    let has_sdk = Command::new("python3")
        .args(["-c", "import openai, jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_sdk {
        let ci = std::env::var("SWITCHYARD_CI").is_ok_and(|v| v == "1");
        assert!(
            !ci,
            "SWITCHYARD_CI=1 but python3 -m pip install openai jsonschema is missing"
        );
        eprintln!(
            "SKIPPED: python openai/jsonschema packages are not installed (pip install openai jsonschema)"
        );
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
            "1024",
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
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/structured_outputs.py");
    let res = Command::new("python3")
        .arg(script)
        .arg(format!("{addr}/v1"))
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    println!("{}", String::from_utf8_lossy(&res.stdout));
    assert!(
        res.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
}
