//! Plugin benchmark: what each stage adds to a request, and how long startup takes.
//!
//! ```text
//! cargo xtask plugins        # builds plugins/*.wasm and the Python/JS/C examples
//! cargo bench -p switchyard --bench plugins [-- --iterations 20000] [--only js-router]
//! cargo bench -p switchyard --bench plugins -- --compare a.wasm b.wasm   # two classifiers
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
use switchyard::base::Endpoint;
use switchyard::base::openai::RequestBody;
use switchyard::config::{ConfigSource, Runtime, load_str};
use switchyard::services::observe::telemetry::SpanParent;
use switchyard::services::plugins::{CallerInfo, Pass, Plugins};

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
[plugins.config.learned-router]
model = {{ from_file = "{model}" }}
targets = {{ local = {{ backend = "local", model = "llama-3.1-8b" }}, premium = {{ backend = "openai", model = "gpt-4o" }} }}
[plugins.config.prompt-versions.prompts.support.versions.v1]
weight = 70
system = "You are Acme support. The customer is {{customer}}."
[plugins.config.prompt-versions.prompts.support.versions.v2]
weight = 30
system = "Acme support v2 for {{customer}}."
[plugins.config.pii-mask]
external_backends = ["openai"]
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
        model = root().join("examples/router/router.json").display(),
    );
    match load_str(&text, ConfigSource::Embedded) {
        Ok(rt) => rt,
        Err(e) => panic!("bench config: {e}"),
    }
}

/// The first-party plugins (`plugins/*.wasm`), benchmarked under their own names.
const FIRST_PARTY: &[&str] = &[
    "complexity-router",
    "prompt-adapter",
    "json-validator",
    "learned-router",
    "prompt-versions",
    "pii-mask",
];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

const REQUEST: &str = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"You are a helpful assistant. Be brief."},{"role":"user","content":"What is the capital of France? Answer in one word."}],"temperature":0.2,"response_format":{"type":"json_object"},"user":"bench","metadata":{"prompt":"support","customer":"Ann"}}"#;
const ANSWER: &[u8] = br#"{"id":"x","object":"chat.completion","model":"llama","choices":[{"index":0,"message":{"role":"assistant","content":"{\"capital\":\"Paris\"}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":5,"total_tokens":35}}"#;

/// A runtime with `file` as the only plugin, named `name`, loaded; `None` if it cannot be
/// copied. The folder must outlive the plugins.
fn load(
    label: &str,
    file: &Path,
    name: &str,
    cache: &Path,
    instances: &str,
) -> Option<(tempfile::TempDir, Runtime, Arc<Plugins>)> {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    if let Err(e) = std::fs::copy(file, dir.path().join(format!("{name}.wasm"))) {
        println!("{label:<22} skipped: {e}");
        return None;
    }
    let rt = runtime(dir.path(), cache, instances);
    let plugins = Arc::new(Plugins::default());
    let settings = rt.plugins.clone()?;
    match plugins.load_all(&settings) {
        Ok(r) if r.failed.is_empty() => {}
        Ok(r) => panic!("{label}: {:?}", r.failed),
        Err(e) => panic!("{label}: {e}"),
    }
    Some((dir, rt, plugins))
}

fn request() -> RequestBody {
    match RequestBody::parse(
        Bytes::from_static(REQUEST.as_bytes()),
        Endpoint::ChatCompletions,
    ) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

/// `--compare A B`: two classify components side by side, in alternating rounds of 100
/// calls, so that a machine whose speed changes over seconds slows both alike. Prints each
/// one's median and B's median over A's (the median of the per-round ratios).
fn compare(a: &Path, b: &Path, iterations: usize, cache: &Path) {
    let name = "complexity-router";
    let (Some((_da, rt_a, pa)), Some((_db, rt_b, pb))) = (
        load("A", a, name, cache, "pooled"),
        load("B", b, name, cache, "pooled"),
    ) else {
        return;
    };
    let body = request();
    let headers = HeaderMap::new();
    let call =
        |rt: &Runtime, plugins: &Plugins| timed_call(rt, plugins, &body, &headers, "classify");
    const ROUND: usize = 100;
    let (mut all_a, mut all_b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..(iterations / ROUND).max(2) + 5 {
        let mut ta: Vec<Duration> = (0..ROUND).map(|_| call(&rt_a, &pa)).collect();
        let mut tb: Vec<Duration> = (0..ROUND).map(|_| call(&rt_b, &pb)).collect();
        if round < 5 {
            continue; // warm-up
        }
        ta.sort();
        tb.sort();
        ratios.push(percentile(&tb, 0.5).as_secs_f64() / percentile(&ta, 0.5).as_secs_f64());
        all_a.extend(ta);
        all_b.extend(tb);
    }
    all_a.sort();
    all_b.sort();
    ratios.sort_by(f64::total_cmp);
    println!(
        "A {}: median {:.1} µs ({} errors)\nB {}: median {:.1} µs ({} errors)\nB/A: {:.3} (median of {} rounds)",
        a.display(),
        percentile(&all_a, 0.5).as_secs_f64() * 1e6,
        pa.metrics.errors_of(name),
        b.display(),
        percentile(&all_b, 0.5).as_secs_f64() * 1e6,
        pb.metrics.errors_of(name),
        ratios[ratios.len() / 2],
        ratios.len(),
    );
}

/// One request's plugin work as the proxy does it, timed: building the typed view of the
/// request (`Pass::new`) plus the stage call.
fn timed_call(
    rt: &Runtime,
    plugins: &Plugins,
    body: &RequestBody,
    headers: &HeaderMap,
    stage: &str,
) -> Duration {
    let t = Instant::now();
    let mut pass = Pass::new(
        plugins,
        body,
        Endpoint::ChatCompletions,
        headers,
        CallerInfo::default(),
    );
    let ok = match stage {
        "classify" => pass.classify(rt, &plugins.stats).is_ok(),
        "adapt" => pass.adapt(&rt.routes[0].targets[0], "llama-3.1-8b").is_ok(),
        _ => pass
            .validate(&SpanParent::default(), ANSWER, "local", "llama")
            .is_ok(),
    };
    let took = t.elapsed();
    assert!(ok);
    took
}

fn bench_stage(
    label: &str,
    file: &Path,
    stage: &str,
    iterations: usize,
    cache: &Path,
    instances: &str,
) {
    // The example policies run as `complexity-router`, with its config.
    let name = if stage == "classify" && !FIRST_PARTY.contains(&label) {
        "complexity-router"
    } else {
        label
    };
    let Some((_dir, rt, plugins)) = load(label, file, name, cache, instances) else {
        return;
    };
    let body = request();
    let headers = HeaderMap::new();
    let mut times = Vec::with_capacity(iterations);
    // (call number, its time) of each call that failed, warm-up included.
    let mut failed: Vec<(usize, Duration)> = Vec::new();
    let mut seen_errors = 0;
    let mut check = |i: usize, took: Duration| {
        let now = plugins.metrics.errors_of(name);
        if now > seen_errors {
            failed.push((i, took));
            seen_errors = now;
        }
    };
    let run = || timed_call(&rt, &plugins, &body, &headers, stage);
    let warmup = (iterations / 10).max(50);
    for i in 0..warmup {
        check(i, run());
    }
    for i in 0..iterations {
        let took = run();
        times.push(took);
        check(warmup + i, took);
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
    for (i, took) in &failed {
        println!(
            "    call {i} failed after {:.1} µs (calls {warmup}.. are measured)",
            took.as_secs_f64() * 1e6
        );
    }
    println!(
        "{label:<18} {stage:<9} {instances:<8} median {:>7.1} µs   p99 {:>7.1} µs   max {:>8.1} µs   ({iterations} calls, {errors} errors)",
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
        percentile(&times, 1.0).as_secs_f64() * 1e6,
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
    // `--only NAME`: just the plugins whose name contains NAME (and no startup figure).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    let cache = root().join("target").join("plugin-cache");
    if let Some(i) = args.iter().position(|a| a == "--compare")
        && let (Some(a), Some(b)) = (args.get(i + 1), args.get(i + 2))
    {
        compare(Path::new(a), Path::new(b), iterations, &cache);
        return;
    }
    let p = |n: &str| root().join("plugins").join(format!("{n}.wasm"));
    let e = |d: &str| root().join("examples").join(d).join("router.wasm");
    let rust = [
        ("complexity-router", "classify"),
        ("prompt-adapter", "adapt"),
        ("json-validator", "validate"),
        ("learned-router", "classify"),
        ("prompt-versions", "classify"),
        ("prompt-versions", "adapt"),
        ("pii-mask", "adapt"),
        ("pii-mask", "validate"),
    ];
    for instances in ["pooled", "per-call"] {
        for (name, stage) in rust.into_iter().filter(|(n, _)| wanted(n)) {
            bench_stage(name, &p(name), stage, iterations, &cache, instances);
        }
    }
    for name in ["python-router", "js-router", "c-router"] {
        if !wanted(name) {
            continue;
        }
        if !e(name).exists() {
            println!("{name}: not built (cargo xtask plugins), skipped");
            continue;
        }
        bench_stage(name, &e(name), "classify", iterations, &cache, "pooled");
    }
    if only.is_none() {
        startup(&cache);
    }
}
