//! Benchmarks of the worker's backends, each printed as JSON lines.
//!
//! `cargo run --release -p switchyard-worker --example bench -- [--threads N] [--model FILE]
//! [--device cpu|cuda:N] [--kv-mb N] [--kv-cache-type f16|q8_0] [--json] [WHAT...]`
//!
//! `--model` is any GGUF (default SmolLM2 from the model cache; `examples/gen_gguf.rs` writes
//! random-weight ones of a given shape and type); `--device` the backend (`cuda:N` needs the
//! `cuda` feature); `--json` prints only each benchmark's summary line.
//!
//! - `throughput` (the default): prefill and decode tokens/second of one sequence through the
//!   CPU backend, next to llama.cpp's (`scripts/reference.py bench`, same file, same threads,
//!   when llama-cpp-python is installed), in `--runs` (3) alternating runs, then the median of
//!   each side. `--prompt-tokens 128 --gen 64 --batch 1` (`--batch N`: N sequences decode
//!   together, `--batch 1,64` each in turn; llama.cpp's side is always one sequence; `--ours-only` skips llama.cpp, for
//!   profiling).
//! - `prefix`: time to first token of two requests through the engine that share a
//!   `--prefix-tokens` (1000) token prefix and differ in their last few tokens: the first
//!   computes the prefix, the second finds it in the prefix cache. Then the second again with
//!   prefix caching off, for comparison.
//! - `sampling`: the engine's sampling of `--seqs` (64) sequences at temperature 0.8, top_p 0.95,
//!   on real SmolLM2 logits, in parallel across sequences as the engine does it, per sequence.
//! - `bandwidth`: the memory-bandwidth roofline of the `--device`: on a GPU a device-to-device
//!   copy of 1 GiB (bytes read + written per second), on the CPU a parallel read of 1 GiB.
//! - `parity` (or `--parity`): the `--device` against the CPU backend on `--model`: the last
//!   logits of a `--prompt-tokens` prompt (largest difference against their spread) and
//!   `--gen` greedy tokens each; exits non-zero unless the tokens agree and the logits are
//!   within 2 % of their spread. pp512 is `throughput --prompt-tokens 512`.

use std::time::{Duration, Instant};

use rayon::prelude::*;
use switchyard_worker::backend::{BackendOptions, Device, Output, SampleArgs, Solo, Want};
use switchyard_worker::engine::{Engine, EngineOptions, Event, GenRequest};
use switchyard_worker::kv::BlockAllocator;
use switchyard_worker::models_dir::{SMOLLM2, models_dir};
use switchyard_worker::sampling::{Rng, SamplingParams, argmax, sample};

fn arg(name: &str, default: usize) -> usize {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wants(what: &str) -> bool {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let named: Vec<&String> = a
        .iter()
        .filter(|x| {
            ["throughput", "prefix", "sampling", "bandwidth", "parity"].contains(&x.as_str())
        })
        .collect();
    if what == "parity" && a.iter().any(|x| x == "--parity") {
        return true;
    }
    if named.is_empty() {
        what == "throughput" && !a.iter().any(|x| x == "--parity")
    } else {
        named.iter().any(|x| x.as_str() == what)
    }
}

/// 1 GiB of f16 KV cache on the CPU: room for every benchmark here. On a GPU the default is
/// the free memory (`--kv-mb` sets either).
const KV_BYTES: usize = 1 << 30;

fn text_arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .cloned()
}

fn device() -> Result<Device, String> {
    text_arg("--device")
        .unwrap_or_else(|| "cpu".into())
        .parse()
        .map_err(|e| format!("--device {e}"))
}

fn json_only() -> bool {
    std::env::args().any(|a| a == "--json")
}

fn model_path() -> std::path::PathBuf {
    text_arg("--model").map_or_else(|| models_dir().join(SMOLLM2), Into::into)
}

fn main() -> Result<(), String> {
    let threads = arg(
        "--threads",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| e.to_string())?;
    if wants("throughput") {
        throughput(threads)?;
    }
    if wants("prefix") {
        prefix()?;
    }
    if wants("sampling") {
        sampling()?;
    }
    if wants("bandwidth") {
        bandwidth(device()?)?;
    }
    if wants("parity") {
        parity()?;
    }
    Ok(())
}

fn load() -> Result<switchyard_worker::Loaded, String> {
    load_on(device()?)
}

fn load_on(device: Device) -> Result<switchyard_worker::Loaded, String> {
    let kv_mb = text_arg("--kv-mb").and_then(|v| v.parse::<usize>().ok());
    let kv_type = text_arg("--kv-cache-type")
        .unwrap_or_else(|| "f16".into())
        .parse()
        .map_err(|e| format!("--kv-cache-type {e}"))?;
    let opts = BackendOptions {
        device,
        kv_type,
        kv_bytes: match (kv_mb, device) {
            (Some(mb), _) => Some(mb << 20),
            (None, Device::Cpu) => Some(KV_BYTES),
            (None, Device::Cuda(_)) => None,
        },
    };
    let path = model_path();
    let l = switchyard_worker::load_with(&path, &opts, |_| {}, |_, _| {})?;
    eprintln!("bench: {} on {}", path.display(), l.backend.describe());
    Ok(l)
}

/// The benchmark prompt: the sentence llama.cpp's side uses, cut to `n` tokens.
fn prompt(l: &switchyard_worker::Loaded, n: usize) -> Vec<u32> {
    let text = "the quick brown fox jumps over the lazy dog ".repeat(n / 4 + 50);
    let mut ids = l.tokenizer.encode(&text, true, false);
    ids.truncate(n);
    ids
}

const GREEDY: SamplingParams = SamplingParams {
    temperature: 0.0,
    top_p: 1.0,
    top_k: 0,
    min_p: 0.0,
    repetition_penalty: 1.0,
    frequency_penalty: 0.0,
    presence_penalty: 0.0,
    seed: None,
};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn throughput(threads: usize) -> Result<(), String> {
    let n_prompt = arg("--prompt-tokens", 128);
    let n_gen = arg("--gen", 64);
    // `--batch 1,64`: each batch size in turn on one loaded model.
    let batches: Vec<usize> = text_arg("--batch")
        .unwrap_or_else(|| "1".into())
        .split(',')
        .map(|b| b.trim().parse::<usize>().map(|b| b.max(1)))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--batch: {e}"))?;
    let runs = arg("--runs", 3).max(1);
    let dev = device()?;
    let mut l = load()?;
    let ids = prompt(&l, n_prompt);
    if ids.len() < n_prompt {
        return Err(format!(
            "the prompt has {} tokens, not {n_prompt}",
            ids.len()
        ));
    }
    // llama.cpp's side runs SmolLM2 on the CPU (scripts/reference.py); GPU figures come from
    // scripts/llama_cpp_gpu.sh.
    let reference_too = dev == Device::Cpu && text_arg("--model").is_none();
    for batch in batches {
        let (mut ours_p, mut ours_d, mut ref_p, mut ref_d) = (vec![], vec![], vec![], vec![]);
        for run in 0..runs {
            let (p, d) = ours(&mut l, &ids, n_gen, batch)?;
            if !json_only() {
                println!(
                    "{{\"run\": {run}, \"engine\": \"switchyard-worker ({dev})\", \"threads\": {threads}, \"simd\": {}, \"prompt_tokens\": {}, \"prefill_tok_s\": {p:.1}, \"gen_tokens\": {n_gen}, \"batch\": {batch}, \"decode_tok_s\": {d:.1}}}",
                    cfg!(target_arch = "x86_64") && switchyard_worker::quant::simd_available(),
                    ids.len()
                );
            }
            ours_p.push(p);
            ours_d.push(d);
            if std::env::args().any(|a| a == "--ours-only") || !reference_too {
                continue;
            }
            if let Some((p, d)) = reference(threads, n_prompt, n_gen) {
                ref_p.push(p);
                ref_d.push(d);
            }
        }
        let (op, od) = (median(&mut ours_p), median(&mut ours_d));
        print!(
            "{{\"median_of\": {runs}, \"device\": \"{dev}\", \"model\": {:?}, \"threads\": {threads}, \"prompt_tokens\": {n_prompt}, \"gen_tokens\": {n_gen}, \"batch\": {batch}, \"ours\": {{\"prefill_tok_s\": {op:.1}, \"decode_tok_s\": {od:.1}}}",
            model_path().display().to_string()
        );
        if ref_p.len() == runs {
            let (rp, rd) = (median(&mut ref_p), median(&mut ref_d));
            print!(
                ", \"llama_cpp\": {{\"prefill_tok_s\": {rp:.1}, \"decode_tok_s\": {rd:.1}}}, \"ratio\": {{\"prefill\": {:.2}, \"decode\": {:.2}}}",
                op / rp,
                od / rd
            );
        }
        println!("}}");
    }
    Ok(())
}

/// Our prefill (best of three) and decode tokens/second.
fn ours(
    l: &mut switchyard_worker::Loaded,
    ids: &[u32],
    n_gen: usize,
    batch: usize,
) -> Result<(f64, f64), String> {
    let be = &mut *l.backend;
    let mut alloc = BlockAllocator::new(be.kv_blocks());
    let e = |e: switchyard_worker::backend::BackendError| e.to_string();
    let mut best_prefill = 0f64;
    for _ in 0..3 {
        let mut s = Solo::default();
        let t = Instant::now();
        s.feed(be, &mut alloc, ids, Want::Last).map_err(e)?;
        best_prefill = best_prefill.max(ids.len() as f64 / t.elapsed().as_secs_f64());
        s.release(&mut alloc);
    }
    // Decode: `batch` sequences stepping together (1 = single stream).
    let mut seqs: Vec<Solo> = (0..batch).map(|_| Solo::default()).collect();
    let mut last = Vec::new();
    for s in seqs.iter_mut() {
        last.push(argmax(&s.feed(be, &mut alloc, ids, Want::Last).map_err(e)?));
    }
    let t = Instant::now();
    for _ in 0..n_gen {
        let toks: Vec<[u32; 1]> = last.iter().map(|&x| [x]).collect();
        let mut step: Vec<(&mut Solo, &[u32])> = seqs
            .iter_mut()
            .zip(&toks)
            .map(|(s, t)| (s, &t[..]))
            .collect();
        // Greedy, sampled on the device where the backend can (only token ids come back).
        let args = SampleArgs {
            params: &GREEDY,
            history: &[],
            uniform: 0.0,
        };
        let out = Solo::step(be, &mut alloc, &mut step, Want::Token(args)).map_err(e)?;
        last = out
            .iter()
            .map(|o| match o {
                Output::Logits(l) => argmax(l),
                Output::Token(t) => *t,
                _ => 0,
            })
            .collect();
    }
    let decode = (n_gen * batch) as f64 / t.elapsed().as_secs_f64();
    for s in seqs.iter_mut() {
        s.release(&mut alloc);
    }
    Ok((best_prefill, decode))
}

/// llama.cpp's prefill and decode tokens/second, if llama-cpp-python is installed.
fn reference(threads: usize, n_prompt: usize, n_gen: usize) -> Option<(f64, f64)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/reference.py");
    let out = std::process::Command::new("python3")
        .args([
            script,
            "bench",
            "--threads",
            &threads.to_string(),
            "--prompt-tokens",
            &n_prompt.to_string(),
            "--gen",
            &n_gen.to_string(),
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            print!("{text}");
            let v: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
            Some((v["prefill_tok_s"].as_f64()?, v["decode_tok_s"].as_f64()?))
        }
        Ok(o) => {
            eprintln!(
                "llama.cpp reference not run (pip install llama-cpp-python): {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            None
        }
        Err(e) => {
            eprintln!("llama.cpp reference not run: {e}");
            None
        }
    }
}

/// Time to first token of `prompt` through `engine` (one generated token).
fn ttft(engine: &Engine, prompt: Vec<u32>) -> Result<Duration, String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let req = GenRequest {
        prompt,
        params: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        max_tokens: 1,
        stop: Vec::new(),
        logprobs: None,
        events: tx,
        arrived: Instant::now(),
        constraint: None,
        special_text: false,
    };
    if !engine.submit(req) {
        return Err("the engine stopped".into());
    }
    while let Some(ev) = rx.blocking_recv() {
        if let Event::Done { timings, .. } = ev {
            let first = timings.first_token.ok_or("no token generated")?;
            return Ok(first - timings.arrived);
        }
    }
    Err("the engine ended the request without an answer".into())
}

fn prefix() -> Result<(), String> {
    let n = arg("--prefix-tokens", 1000);
    let engine_with = |caching: bool| -> Result<(Engine, Vec<u32>, Vec<u32>), String> {
        let l = load()?;
        let text = "In a distant valley, a river carved its way through ancient stone, \
                    and the people who lived along its banks told stories of the seasons. "
            .repeat(n / 20 + 10);
        let mut shared = l.tokenizer.encode(&text, true, false);
        shared.truncate(n);
        let tail = |q: &str| -> Vec<u32> {
            let mut p = shared.clone();
            p.extend(l.tokenizer.encode(q, false, false));
            p
        };
        let (a, b) = (
            tail(" Question: who lived there?"),
            tail(" Question: what did the river do?"),
        );
        let opts = EngineOptions {
            prefix_caching: caching,
            ..EngineOptions::new(4096, 8)
        };
        Ok((Engine::start(l.backend, l.tokenizer, opts), a, b))
    };
    let (engine, a, b) = engine_with(true)?;
    let first = ttft(&engine, a)?;
    let second = ttft(&engine, b.clone())?;
    let m = &engine.metrics;
    let hits = m.prefix_hits.load(std::sync::atomic::Ordering::Relaxed);
    let (engine_off, a_off, b_off) = engine_with(false)?;
    ttft(&engine_off, a_off)?;
    let uncached = ttft(&engine_off, b_off)?;
    println!(
        "{{\"prefix_tokens\": {n}, \"first_ttft_ms\": {:.1}, \"second_ttft_ms\": {:.1}, \"second_over_first\": {:.3}, \"prefix_cache_hit_tokens\": {hits}, \"second_ttft_without_prefix_cache_ms\": {:.1}, \"second_prompt_tokens\": {}}}",
        first.as_secs_f64() * 1e3,
        second.as_secs_f64() * 1e3,
        second.as_secs_f64() / first.as_secs_f64(),
        uncached.as_secs_f64() * 1e3,
        b.len(),
    );
    Ok(())
}

fn sampling() -> Result<(), String> {
    let n_seqs = arg("--seqs", 64);
    let rounds = arg("--rounds", 50);
    let mut l = load()?;
    // Real next-token distributions: the logits at each position of a text.
    let text = "Once upon a time, in a small village at the edge of a great forest, there lived \
                an old woman who knew the names of every tree and the songs of every bird. "
        .repeat(4);
    let mut ids = l.tokenizer.encode(&text, true, false);
    ids.truncate(n_seqs);
    let be = &mut *l.backend;
    let v = be.config().n_vocab;
    let mut alloc = BlockAllocator::new(be.kv_blocks());
    let all = Solo::default()
        .feed(be, &mut alloc, &ids, Want::All)
        .map_err(|e| e.to_string())?;
    let logits: Vec<&[f32]> = all.chunks_exact(v).collect();
    let p = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        ..Default::default()
    };
    let mut rngs: Vec<Rng> = (0..logits.len() as u64)
        .map(|i| Rng::new(Some(i)))
        .collect();
    let history: Vec<u32> = Vec::new();
    let t = Instant::now();
    let mut picked = 0u64;
    for _ in 0..rounds {
        let toks: Vec<u32> = logits
            .par_iter()
            .zip(rngs.par_iter_mut())
            .map(|(l, r)| sample(l, &p, &history, r.uniform_for(&p)))
            .collect();
        picked += toks.iter().map(|&t| u64::from(t)).sum::<u64>() % 2;
    }
    let parallel = t.elapsed().as_secs_f64() / (rounds * logits.len()) as f64;
    let t = Instant::now();
    let cpu = thread_cpu_ns();
    for _ in 0..rounds {
        for (l, r) in logits.iter().zip(rngs.iter_mut()) {
            picked += u64::from(sample(l, &p, &history, r.uniform_for(&p))) % 2;
        }
    }
    let serial = t.elapsed().as_secs_f64() / (rounds * logits.len()) as f64;
    let serial_cpu = cpu
        .zip(thread_cpu_ns())
        .map(|(a, b)| (b - a) as f64 / 1e9 / (rounds * logits.len()) as f64);
    std::hint::black_box(picked);
    println!(
        "{{\"sequences\": {}, \"vocab\": {v}, \"temperature\": 0.8, \"top_p\": 0.95, \"threads\": {}, \"ms_per_sequence\": {:.4}, \"ms_per_sequence_one_thread\": {:.4}, \"cpu_ms_per_sequence_one_thread\": {}}}",
        logits.len(),
        rayon::current_num_threads(),
        parallel * 1e3,
        serial * 1e3,
        serial_cpu.map_or("null".into(), |c| format!("{:.4}", c * 1e3)),
    );
    Ok(())
}

/// This thread's CPU time in nanoseconds (Linux: the first field of its schedstat), so a
/// measurement on a busy machine can be told apart from the time the thread waited.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The memory-bandwidth roofline of `dev` (see the module docs).
fn bandwidth(dev: Device) -> Result<(), String> {
    const BYTES: usize = 1 << 30;
    let reps = arg("--reps", 20).max(1);
    let gbs = match dev {
        Device::Cpu => {
            let v: Vec<u64> = (0..BYTES / 8).map(|i| i as u64).collect();
            let mut best = 0f64;
            for _ in 0..reps.min(5) {
                let t = Instant::now();
                let s: u64 = v.par_chunks(1 << 16).map(|c| c.iter().sum::<u64>()).sum();
                std::hint::black_box(s);
                best = best.max(BYTES as f64 / t.elapsed().as_secs_f64() / 1e9);
            }
            best
        }
        Device::Cuda(n) => gpu_bandwidth(n, BYTES, reps)?,
    };
    println!(
        "{{\"bandwidth\": {{\"device\": \"{dev}\", \"bytes\": {BYTES}, \"gb_s\": {gbs:.1}}}}}"
    );
    Ok(())
}

#[cfg(feature = "cuda")]
fn gpu_bandwidth(ordinal: usize, bytes: usize, reps: usize) -> Result<f64, String> {
    use switchyard_worker::cuda::device::Gpu;
    use switchyard_worker::cuda::driver::CudaGpu;
    let e = |e: switchyard_worker::cuda::device::GpuError| e.to_string();
    let mut g = CudaGpu::new(ordinal).map_err(e)?;
    let a = g.alloc(bytes, "probe").map_err(e)?;
    let b = g.alloc(bytes, "probe").map_err(e)?;
    g.copy(b, a, bytes).map_err(e)?;
    let ((), ms) = g
        .time(|g| {
            for _ in 0..reps {
                g.copy(b, a, bytes)?;
            }
            Ok(())
        })
        .map_err(e)?;
    // Each copy reads and writes `bytes`.
    Ok(2.0 * (bytes * reps) as f64 / (f64::from(ms) / 1e3) / 1e9)
}

#[cfg(not(feature = "cuda"))]
fn gpu_bandwidth(ordinal: usize, _bytes: usize, _reps: usize) -> Result<f64, String> {
    Err(format!(
        "--device cuda:{ordinal}: this build has no CUDA backend (rebuild with `--features cuda`)"
    ))
}

/// `--device` against the CPU backend on `--model` (see the module docs).
fn parity() -> Result<(), String> {
    let dev = device()?;
    let n_prompt = arg("--prompt-tokens", 24);
    let n_gen = arg("--gen", 16);
    let mut cpu = load_on(Device::Cpu)?;
    let mut gpu = load_on(dev)?;
    let ids = prompt(&cpu, n_prompt);
    let e = |e: switchyard_worker::backend::BackendError| e.to_string();
    let run = |l: &mut switchyard_worker::Loaded| -> Result<(Vec<f32>, Vec<u32>), String> {
        let be = &mut *l.backend;
        let mut alloc = BlockAllocator::new(be.kv_blocks());
        let mut s = Solo::default();
        let first = s.feed(be, &mut alloc, &ids, Want::Last).map_err(e)?;
        let mut toks = vec![argmax(&first)];
        for _ in 1..n_gen {
            let last = [*toks.last().unwrap_or(&0)];
            let l = s.feed(be, &mut alloc, &last, Want::Last).map_err(e)?;
            toks.push(argmax(&l));
        }
        Ok((first, toks))
    };
    let (cl, ct) = run(&mut cpu)?;
    let (gl, gt) = run(&mut gpu)?;
    let spread =
        cl.iter().copied().fold(f32::MIN, f32::max) - cl.iter().copied().fold(f32::MAX, f32::min);
    let diff = cl
        .iter()
        .zip(&gl)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let same = ct.iter().zip(&gt).take_while(|(a, b)| a == b).count();
    let pass = same == ct.len() && diff <= 0.02 * spread && cl.len() == gl.len();
    println!(
        "{{\"parity\": {{\"device\": \"{dev}\", \"model\": {:?}, \"prompt_tokens\": {}, \"max_logit_diff\": {diff:.5}, \"logit_spread\": {spread:.3}, \"greedy_tokens_equal\": {same}, \"greedy_tokens\": {}, \"pass\": {pass}}}}}",
        model_path().display().to_string(),
        ids.len(),
        ct.len()
    );
    if pass {
        Ok(())
    } else {
        Err(format!("parity failed: cpu {ct:?} vs {dev} {gt:?}"))
    }
}
