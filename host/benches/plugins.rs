//! Plugin benchmark: what each stage adds to a request, and how long startup takes.
//!
//! ```text
//! cargo xtask plugins        # builds plugins/*.wasm and the Python/JS/C examples
//! cargo bench -p switchyard --bench plugins [-- --iterations 20000]
//! ```
//!
//! For each plugin it measures, in process, the request path's plugin work as the proxy
//! does it: building the typed view of the request (`Pass::new`) plus the stage call
//! (`classify`, `adapt` or `validate`), and reports the median and p99 per call. The Rust
//! plugins run both ways (`[plugins] instances = "pooled"`, the default, and `"per-call"`);
//! the Python, JavaScript and C examples from the warm pool. Startup: loading ten plugins with a warm compiled-code cache
//! (a new engine each time, as a restarted process would).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use switchyard::config::{ConfigSource, Endpoint, Runtime, load_str};
use switchyard::openai::RequestBody;
use switchyard::plugins::{CallerInfo, Pass, Plugins};
use switchyard::telemetry::SpanParent;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn runtime(dir: &Path, cache: &Path, instances: &str) -> Runtime {
    let text = format!(
        r#"
[plugins]
dir = "{}"
cache_dir = "{}"
watch = false
instances = "{instances}"
[plugins.config.complexity-router]
local_model = "llama-3.1-8b"
premium_model = "gpt-4o"
[[backends]]
name = "local"
url = "http://127.0.0.1:9/v1"
[[backends]]
name = "openai"
url = "http://127.0.0.1:9/v1"
[[routes]]
model = "*"
targets = [{{ backend = "openai" }}]
"#,
        dir.display(),
        cache.display(),
    );
    match load_str(&text, ConfigSource::Embedded) {
        Ok(rt) => rt,
        Err(e) => panic!("bench config: {e}"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

const REQUEST: &str = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"You are a helpful assistant. Be brief."},{"role":"user","content":"What is the capital of France? Answer in one word."}],"temperature":0.2,"response_format":{"type":"json_object"},"user":"bench"}"#;
const ANSWER: &[u8] = br#"{"id":"x","object":"chat.completion","model":"llama","choices":[{"index":0,"message":{"role":"assistant","content":"{\"capital\":\"Paris\"}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":5,"total_tokens":35}}"#;

fn bench_stage(
    label: &str,
    file: &Path,
    stage: &str,
    iterations: usize,
    cache: &Path,
    instances: &str,
) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let name = if stage == "classify" {
        "complexity-router"
    } else {
        label
    };
    if let Err(e) = std::fs::copy(file, dir.path().join(format!("{name}.wasm"))) {
        println!("{label:<22} skipped: {e}");
        return;
    }
    let rt = runtime(dir.path(), cache, instances);
    let plugins = Arc::new(Plugins::default());
    let Some(settings) = rt.plugins.clone() else {
        return;
    };
    match plugins.load_all(&settings) {
        Ok(r) if r.failed.is_empty() => {}
        Ok(r) => panic!("{label}: {:?}", r.failed),
        Err(e) => panic!("{label}: {e}"),
    }
    let body = match RequestBody::parse(
        Bytes::from_static(REQUEST.as_bytes()),
        Endpoint::ChatCompletions,
    ) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    let headers = HeaderMap::new();
    let target = rt.routes[0].targets[0].clone();
    let mut times = Vec::with_capacity(iterations);
    let run = |times: &mut Vec<Duration>| {
        let t = Instant::now();
        let mut pass = Pass::new(
            &plugins,
            &body,
            Endpoint::ChatCompletions,
            &headers,
            CallerInfo::default(),
        );
        let ok = match stage {
            "classify" => pass.classify(&rt, &plugins.stats).is_ok(),
            "adapt" => pass.adapt(&target, "llama-3.1-8b").is_ok(),
            _ => pass
                .validate(&SpanParent::default(), ANSWER, "local", "llama")
                .is_ok(),
        };
        times.push(t.elapsed());
        assert!(ok);
    };
    for _ in 0..(iterations / 10).max(50) {
        run(&mut Vec::new());
    }
    for _ in 0..iterations {
        run(&mut times);
    }
    times.sort();
    let errors = plugins.metrics.errors_of(name);
    if errors > 0 {
        // Say which kind (timeout, trap, instantiate, ...): a benchmark must not hide failures.
        let mut text = String::new();
        plugins.metrics.render(&mut text);
        for line in text.lines() {
            if line.starts_with("switchyard_plugin_errors_total{") {
                println!("    {line}");
            }
        }
    }
    println!(
        "{label:<18} {stage:<9} {instances:<8} median {:>7.1} µs   p99 {:>7.1} µs   ({iterations} calls, {errors} errors)",
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
    );
}

fn startup(cache: &Path) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let sources = ["complexity-router", "prompt-adapter", "json-validator"];
    for i in 0..10 {
        let src = root()
            .join("plugins")
            .join(format!("{}.wasm", sources[i % 3]));
        if let Err(e) = std::fs::copy(
            &src,
            dir.path().join(format!("p{i:02}-{}.wasm", sources[i % 3])),
        ) {
            println!("startup skipped: {}: {e}", src.display());
            return;
        }
    }
    let rt = runtime(dir.path(), cache, "pooled");
    let Some(settings) = rt.plugins.clone() else {
        return;
    };
    // Cold: fills the cache (the files share content, so this compiles three components).
    let t = Instant::now();
    let _ = Plugins::default().load_all(&settings);
    let cold = t.elapsed();
    let mut warm = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let p = Plugins::default();
        match p.load_all(&settings) {
            Ok(r) => assert_eq!(r.loaded.len(), 10),
            Err(e) => panic!("{e}"),
        }
        warm.push(t.elapsed());
    }
    warm.sort();
    println!(
        "startup, 10 plugins: first load {:.0} ms; warm cache (new engine) median {:.1} ms, max {:.1} ms",
        cold.as_secs_f64() * 1e3,
        warm[2].as_secs_f64() * 1e3,
        warm[4].as_secs_f64() * 1e3
    );
}

fn main() {
    let mut iterations = 20_000;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--iterations")
        && let Some(n) = args.get(i + 1).and_then(|v| v.parse().ok())
    {
        iterations = n;
    }
    let cache = root().join("target").join("plugin-cache");
    let p = |n: &str| root().join("plugins").join(format!("{n}.wasm"));
    let e = |d: &str| root().join("examples").join(d).join("router.wasm");
    let rust = [
        ("complexity-router", "classify"),
        ("prompt-adapter", "adapt"),
        ("json-validator", "validate"),
    ];
    for instances in ["pooled", "per-call"] {
        for (name, stage) in rust {
            bench_stage(name, &p(name), stage, iterations, &cache, instances);
        }
    }
    for name in ["python-router", "js-router", "c-router"] {
        if !e(name).exists() {
            println!("{name}: not built (cargo xtask plugins), skipped");
            continue;
        }
        bench_stage(name, &e(name), "classify", iterations, &cache, "pooled");
    }
    startup(&cache);
}
