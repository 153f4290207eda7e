//! End-to-end: the real `switchyard-worker` binary on SmolLM2, spoken to over HTTP.

// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::zombie_processes)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use switchyard_worker::models_dir::{SMOLLM2, test_model};

struct Worker {
    child: Child,
    addr: String,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Option<Worker> {
    let model = test_model(SMOLLM2)?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-worker"))
        .arg("--model")
        .arg(&model)
        .args(["--port", "0", "--served-model-name", "smol"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "worker exited before listening"
        );
        if let Some(a) = line
            .trim()
            .strip_prefix("switchyard-worker listening on http://")
        {
            let addr = a.to_string();
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
            return Some(Worker { child, addr });
        }
    }
}

/// Minimal HTTP/1.1 client: returns status and the (de-chunked) body.
fn http(w: &Worker, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(&w.addr).unwrap();
    let b = body.map(|v| v.to_string()).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut r = rest;
        loop {
            let (n, after) = r.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(n.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            r = &after[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (status, body)
}

fn post(w: &Worker, path: &str, body: Value) -> (u16, Value) {
    let (s, b) = http(w, "POST", path, Some(&body));
    (
        s,
        serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}")),
    )
}

/// SSE events of a streaming response (without `[DONE]`), and whether `[DONE]` came.
fn stream(w: &Worker, path: &str, body: Value) -> (Vec<Value>, bool) {
    let (s, b) = http(w, "POST", path, Some(&body));
    assert_eq!(s, 200, "{b}");
    let mut done = false;
    let mut evs = Vec::new();
    for l in b.lines() {
        if let Some(d) = l.strip_prefix("data: ") {
            if d == "[DONE]" {
                done = true;
            } else {
                evs.push(serde_json::from_str(d).unwrap());
            }
        }
    }
    (evs, done)
}

fn chat(content: &str) -> Value {
    json!([{"role": "user", "content": content}])
}

#[test]
fn chat_and_completions_stream_and_not_with_usage() {
    let Some(w) = start(&[]) else { return };
    // Non-streaming chat, greedy.
    let (s, v) = post(
        &w,
        "/v1/chat/completions",
        json!({"model": "smol", "messages": chat("What is the capital of France?"), "max_tokens": 24, "temperature": 0}),
    );
    assert_eq!(s, 200, "{v}");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!text.is_empty());
    assert_eq!(v["object"], "chat.completion");
    let u = &v["usage"];
    let (p, c) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 10 && (1..=24).contains(&c), "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + c);
    let fr = v["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(fr == "stop" || (fr == "length" && c == 24), "{fr} {c}");

    // Streaming chat gives the same greedy text, and usage in the include_usage chunk.
    let (evs, done) = stream(
        &w,
        "/v1/chat/completions",
        json!({"messages": chat("What is the capital of France?"), "max_tokens": 24, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert!(done);
    assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = evs
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let last = evs.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert_eq!(last["usage"]["completion_tokens"].as_u64().unwrap(), c);
    assert_eq!(last["usage"]["prompt_tokens"].as_u64().unwrap(), p);

    // Completions, both ways.
    let (s, v) = post(
        &w,
        "/v1/completions",
        json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}),
    );
    assert_eq!(s, 200, "{v}");
    let ctext = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let (evs, done) = stream(
        &w,
        "/v1/completions",
        json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "stream": true}),
    );
    assert!(done);
    let st: String = evs
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(st, ctext);
    // Usage is reported on the final chunk even without include_usage.
    assert_eq!(evs.last().unwrap()["usage"]["completion_tokens"], 12);

    // Logprobs.
    let (_, v) = post(
        &w,
        "/v1/chat/completions",
        json!({"messages": chat("Hi"), "max_tokens": 3, "temperature": 0, "logprobs": true, "top_logprobs": 2}),
    );
    let lp = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!lp.is_empty());
    assert_eq!(lp[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert!(lp[0]["logprob"].as_f64().unwrap() <= 0.0);
}

#[test]
fn seed_reproduces_and_stop_strings_cut() {
    let Some(w) = start(&[]) else { return };
    let req = json!({"prompt": "The best thing about summer is", "max_tokens": 20, "temperature": 1.0, "seed": 1234});
    let (_, a) = post(&w, "/v1/completions", req.clone());
    let (_, b) = post(&w, "/v1/completions", req);
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    let texts: std::collections::HashSet<String> = (0..4)
        .map(|i| post(&w, "/v1/completions", json!({"prompt": "The best thing about summer is", "max_tokens": 20, "temperature": 1.0, "seed": i})).1["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        texts.len() > 1,
        "different seeds should give different samples"
    );

    // Greedy text, then stop on a word from its middle.
    let (_, g) = post(
        &w,
        "/v1/completions",
        json!({"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0}),
    );
    let full = g["choices"][0]["text"].as_str().unwrap().to_string();
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(words.len() > 4, "{full}");
    let stop = words[3];
    let at = full.find(stop).unwrap();
    for streamed in [false, true] {
        let req = json!({"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0, "stop": [stop], "stream": streamed});
        let (text, finish) = if streamed {
            let (evs, _) = stream(&w, "/v1/completions", req);
            (
                evs.iter()
                    .filter_map(|e| e["choices"][0]["text"].as_str())
                    .collect::<String>(),
                evs.iter()
                    .rev()
                    .find_map(|e| {
                        e["choices"][0]["finish_reason"]
                            .as_str()
                            .map(str::to_string)
                    })
                    .unwrap(),
            )
        } else {
            let (_, v) = post(&w, "/v1/completions", req);
            (
                v["choices"][0]["text"].as_str().unwrap().to_string(),
                v["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        };
        assert_eq!(text, full[..at], "stream={streamed}");
        assert_eq!(finish, "stop");
    }
}

#[test]
fn errors_are_openai_shaped() {
    let Some(w) = start(&["--ctx-size", "64"]) else {
        return;
    };
    let long = "word ".repeat(200);
    let (s, v) = post(
        &w,
        "/v1/completions",
        json!({"prompt": long, "max_tokens": 5}),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 64")
    );
    let (s, v) = post(
        &w,
        "/v1/chat/completions",
        json!({"messages": chat("hi"), "max_tokens": 1000}),
    );
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let (s, v) = post(
        &w,
        "/v1/chat/completions",
        json!({"messages": chat("hi"), "temperature": 5}),
    );
    assert_eq!(s, 400);
    assert_eq!(v["error"]["param"], "temperature");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let (s, v) = post(&w, "/v1/chat/completions", json!({"max_tokens": 3}));
    assert_eq!(s, 400);
    assert_eq!(v["error"]["param"], "messages");
    let (s, b) = http(&w, "GET", "/v1/models", None);
    assert_eq!(s, 200);
    assert!(b.contains("\"id\":\"smol\""), "{b}");
    let (s, _) = http(&w, "GET", "/healthz", None);
    assert_eq!(s, 200);
    let (s, b) = http(&w, "GET", "/metrics", None);
    assert_eq!(s, 200);
    assert!(b.contains("switchyard_worker_requests_total"));
}

#[test]
fn busy_port_and_bad_model_fail_clearly() {
    let Some(model) = test_model(SMOLLM2) else {
        return;
    };
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard-worker"))
        .arg("--model")
        .arg(&model)
        .args(["--port", &port])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"not a model at all").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard-worker"))
        .arg("--model")
        .arg(&bad)
        .args(["--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a GGUF file"));
}

#[test]
fn device_and_kv_cache_flags_are_checked_before_loading() {
    let Some(model) = test_model(SMOLLM2) else {
        return;
    };
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard-worker"))
            .arg("--model")
            .arg(&model)
            .args(["--port", "0"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--device", "cuda:1"]);
    if cfg!(feature = "cuda") {
        assert!(e.contains("cuda:1"), "{e}");
    } else {
        assert!(e.contains("cuda:1") && e.contains("--features cuda"), "{e}");
    }
    assert!(!e.contains("loading"), "failed only after loading: {e}");
    let e = run(&["--device", "tpu"]);
    assert!(e.contains("expected `cpu` or `cuda:N`"), "{e}");
    let e = run(&["--kv-cache-type", "q4_0"]);
    assert!(e.contains("expected `f16` or `q8_0`"), "{e}");
}

#[test]
fn a_repeated_prompt_prefix_is_served_from_the_prefix_cache() {
    let Some(w) = start(&["--kv-cache-type", "q8_0"]) else {
        return;
    };
    let system = "You are a careful assistant. Answer in one short sentence, and say so when \
                  you do not know. Never invent sources, names or numbers. ";
    for q in ["What is the capital of France?", "What colour is the sky?"] {
        let (s, v) = post(
            &w,
            "/v1/chat/completions",
            json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": q}],
                   "max_tokens": 3, "temperature": 0}),
        );
        assert_eq!(s, 200, "{v}");
    }
    let (_, m) = http(&w, "GET", "/metrics", None);
    let queried = sample(&m, "switchyard_worker_prefix_cache_queries_total");
    let hits = sample(&m, "switchyard_worker_prefix_cache_hits_total");
    // The second request found the system prompt's full blocks (16 tokens each).
    assert!(
        hits >= 32.0 && hits % 16.0 == 0.0,
        "{hits} of {queried}\n{m}"
    );
    assert!(hits < queried, "{m}");
}

#[test]
fn client_disconnect_cancels_generation() {
    let Some(w) = start(&[]) else { return };
    let mut s = TcpStream::connect(&w.addr).unwrap();
    let b = json!({"prompt": "Count from one to a thousand:", "max_tokens": 4000, "temperature": 0, "stream": true}).to_string();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()).unwrap();
    // Wait until tokens flow, then hang up.
    let mut buf = [0u8; 4096];
    let mut got = 0;
    while got < 600 {
        got += s.read(&mut buf).unwrap();
    }
    drop(s);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, m) = http(&w, "GET", "/metrics", None);
        let cancelled = m
            .lines()
            .any(|l| l == "switchyard_worker_cancelled_total 1");
        let idle = m
            .lines()
            .any(|l| l == "switchyard_worker_active_sequences 0");
        if cancelled && idle {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "generation was not cancelled:\n{m}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The value of an unlabelled sample (or a sample with the exact labels given) in /metrics.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_report_ttft_queue_time_and_kv_cache() {
    let Some(w) = start(&[
        "--ctx-size",
        "256",
        "--max-batch",
        "2",
        "--kv-cache-mb",
        "16",
    ]) else {
        return;
    };
    for i in 0..3 {
        let (s, v) = post(
            &w,
            "/v1/completions",
            json!({"prompt": format!("Count to {i}:"), "max_tokens": 4, "temperature": 0}),
        );
        assert_eq!(s, 200, "{v}");
    }
    let (s, m) = http(&w, "GET", "/metrics", None);
    assert_eq!(s, 200);
    let ttft = "switchyard_worker_time_to_first_token_seconds";
    assert_eq!(sample(&m, &format!("{ttft}_count")), 3.0);
    assert_eq!(sample(&m, &format!("{ttft}_bucket{{le=\"+Inf\"}}")), 3.0);
    // Buckets are cumulative and the sum is a real duration.
    assert!(sample(&m, &format!("{ttft}_bucket{{le=\"0.001\"}}")) <= 3.0);
    assert!(sample(&m, &format!("{ttft}_sum")) > 0.0);
    assert_eq!(
        sample(&m, "switchyard_worker_queue_time_seconds_count"),
        3.0
    );
    // Busy time: what a gateway's `gpu_hour_usd` is spread over, with the token counters.
    let busy = sample(&m, "switchyard_worker_busy_seconds_total");
    assert!(busy > 0.0 && busy < 600.0, "busy {busy}");
    assert!(sample(&m, "switchyard_worker_generation_tokens_total") >= 3.0);
    // The model load is reported done, with how long it took.
    assert_eq!(sample(&m, "switchyard_worker_model_loaded"), 1.0);
    assert_eq!(
        sample(&m, "switchyard_worker_model_load_progress{stage=\"read\"}"),
        1.0
    );
    assert!(sample(&m, "switchyard_worker_model_load_seconds") > 0.0);
    // While a long generation runs, its tokens sit in the KV cache and the rate is measured.
    let mut s = TcpStream::connect(&w.addr).unwrap();
    let b = json!({"prompt": "Count from one to a thousand:", "max_tokens": 200, "temperature": 0, "stream": true}).to_string();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, m) = http(&w, "GET", "/metrics", None);
        let cached = sample(&m, "switchyard_worker_kv_cache_tokens");
        let ratio = sample(&m, "switchyard_worker_kv_cache_usage_ratio");
        let used = sample(&m, "switchyard_worker_kv_cache_blocks_used");
        let capacity = sample(&m, "switchyard_worker_kv_cache_blocks_capacity");
        if cached > 0.0 && sample(&m, "switchyard_worker_generation_tokens_per_second") > 0.0 {
            // 16 MiB of f16 cache: 45 blocks of 16 tokens for SmolLM2 (360 KiB each).
            assert_eq!(capacity, 45.0, "{m}");
            assert!(used >= (cached / 16.0).ceil(), "{m}");
            assert!((ratio - used / capacity).abs() < 1e-9, "{m}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no KV use or rate seen:\n{m}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(s);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let m = loop {
        let (_, m) = http(&w, "GET", "/metrics", None);
        if m.lines()
            .any(|l| l == "switchyard_worker_active_sequences 0")
        {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still generating:\n{m}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Idle again: no block held (the prompts' full blocks stay cached, free for reuse),
    // nothing generating.
    assert_eq!(sample(&m, "switchyard_worker_kv_cache_tokens"), 0.0);
    assert_eq!(sample(&m, "switchyard_worker_kv_cache_blocks_used"), 0.0);
    assert_eq!(sample(&m, "switchyard_worker_kv_cache_usage_ratio"), 0.0);
    assert!(sample(&m, "switchyard_worker_generation_tokens_per_second") >= 0.0);
}
