//! `POST /v1/embeddings` on SmolLM2 against llama.cpp's embeddings (llama-cpp-python with the
//! same pooling, normalised): cosine similarity at least 0.999 for each of 10 inputs, mean
//! and last-token pooling, batched in one request. Skips when the model or llama-cpp-python
//! is missing, unless SWITCHYARD_CI=1.

// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::zombie_processes)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use switchyard_worker::models_dir::{SMOLLM2, test_model};

const INPUTS: [&str; 10] = [
    "The capital of France is Paris.",
    "def add(a, b):\n    return a + b",
    "Cats sleep for most of the day.",
    "A quick brown fox jumps over the lazy dog.",
    "Photosynthesis turns light into chemical energy.",
    "I would like to book a table for two at seven.",
    "Rust has no garbage collector.",
    "¿Dónde está la biblioteca?",
    "The stock market fell sharply on Monday.",
    "hello",
];

const REFERENCE: &str = r#"
import json, sys
import llama_cpp
model, pooling = sys.argv[1], {"mean": 1, "last": 3}[sys.argv[2]]
llm = llama_cpp.Llama(model_path=model, embedding=True, pooling_type=pooling, n_ctx=512,
                      n_batch=512, flash_attn=False, verbose=False)
texts = json.loads(sys.stdin.read())
print(json.dumps(llm.embed(texts, normalize=True)))
"#;

fn has_llama_cpp() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import llama_cpp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let ci = std::env::var("SWITCHYARD_CI").is_ok_and(|v| v == "1");
        assert!(!ci, "SWITCHYARD_CI=1 but llama-cpp-python is missing");
        eprintln!("SKIPPED: llama-cpp-python is not installed");
    }
    ok
}

fn ours(model: &std::path::Path, pooling: &str) -> Vec<Vec<f32>> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-worker"))
        .arg("--model")
        .arg(model)
        .args(["--port", "0", "--ctx-size", "512", "--pooling", pooling])
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
    let post = |body: Value| -> Value {
        let text = ureq::post(&format!("{addr}/v1/embeddings"))
            .header("content-type", "application/json")
            .send(body.to_string())
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let res = post(json!({"model": "smol", "input": INPUTS}));
    // The SDK's default encoding: base64 of little-endian f32s, the same numbers.
    let b64 = post(json!({"input": INPUTS[0], "encoding_format": "base64"}));
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        res["usage"]["prompt_tokens"].as_u64().unwrap() > 10,
        "{res}"
    );
    let v: Vec<Vec<f32>> = res["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["index"], i);
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let first: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(first, v[0]);
    v
}

fn reference(model: &std::path::Path, pooling: &str) -> Vec<Vec<f32>> {
    let mut child = Command::new("python3")
        .args(["-c", REFERENCE])
        .arg(model)
        .arg(pooling)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&INPUTS).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn embeddings_match_llama_cpp() {
    let Some(model) = test_model(SMOLLM2) else {
        return;
    };
    if !has_llama_cpp() {
        return;
    }
    for pooling in ["mean", "last"] {
        let (a, b) = (ours(&model, pooling), reference(&model, pooling));
        assert_eq!(a.len(), INPUTS.len());
        assert_eq!(b.len(), INPUTS.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(x.len(), y.len());
            let norm: f64 = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "input {i}: norm {norm}");
            let c = cosine(x, y);
            println!("{pooling} input {i}: cosine {c:.6}");
            assert!(c >= 0.999, "{pooling} input {i}: cosine {c}");
        }
        // Different inputs are different vectors.
        assert!(cosine(&a[0], &a[1]) < 0.999);
    }
}
