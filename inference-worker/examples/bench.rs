//! CPU throughput on SmolLM2: prefill and decode tokens/second, next to llama.cpp's.
//!
//! `cargo run --release -p switchyard-worker --example bench -- [--threads N] [--prompt-tokens 128] [--gen 64]`
//!
//! Our numbers come from the same `Model::forward` the server uses (one sequence). llama.cpp's
//! come from `scripts/reference.py bench` with the same thread count, when llama-cpp-python is
//! installed; otherwise only ours are printed.

use std::time::Instant;

use switchyard_worker::model::{KvCache, SeqInput};
use switchyard_worker::models_dir::{SMOLLM2, models_dir};
use switchyard_worker::sampling::argmax;

fn arg(name: &str, default: usize) -> usize {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), String> {
    let threads = arg(
        "--threads",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let n_prompt = arg("--prompt-tokens", 128);
    let n_gen = arg("--gen", 64);
    let batch = arg("--batch", 1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| e.to_string())?;
    let path = models_dir().join(SMOLLM2);
    let loaded = switchyard_worker::load(&path, |l| eprintln!("{l}"))?;
    let (model, tok) = (&loaded.model, &loaded.tokenizer);
    let text = "the quick brown fox jumps over the lazy dog ".repeat(200);
    let mut ids = tok.encode(&text, true, false);
    ids.truncate(n_prompt);

    let mut best_prefill = 0f64;
    for _ in 0..3 {
        let mut cache = KvCache::new(&model.cfg);
        let t = Instant::now();
        model.forward(&mut [SeqInput {
            cache: &mut cache,
            tokens: &ids,
            all_logits: false,
        }]);
        best_prefill = best_prefill.max(ids.len() as f64 / t.elapsed().as_secs_f64());
    }
    // Decode: `batch` sequences stepping together (1 = single stream).
    let mut caches: Vec<KvCache> = (0..batch).map(|_| KvCache::new(&model.cfg)).collect();
    let mut last: Vec<u32> = Vec::new();
    for c in caches.iter_mut() {
        let l = model.forward(&mut [SeqInput {
            cache: c,
            tokens: &ids,
            all_logits: false,
        }]);
        last.push(argmax(&l[0]));
    }
    let t = Instant::now();
    for _ in 0..n_gen {
        let toks: Vec<[u32; 1]> = last.iter().map(|&x| [x]).collect();
        let mut inp: Vec<SeqInput<'_>> = caches
            .iter_mut()
            .zip(&toks)
            .map(|(c, t)| SeqInput {
                cache: c,
                tokens: t,
                all_logits: false,
            })
            .collect();
        let out = model.forward(&mut inp);
        last = out.iter().map(|l| argmax(l)).collect();
    }
    let decode = (n_gen * batch) as f64 / t.elapsed().as_secs_f64();
    println!(
        "{{\"engine\": \"switchyard-worker (cpu)\", \"threads\": {threads}, \"simd\": {}, \"prompt_tokens\": {}, \"prefill_tok_s\": {best_prefill:.1}, \"gen_tokens\": {n_gen}, \"batch\": {batch}, \"decode_tok_s\": {decode:.1}}}",
        cfg!(target_arch = "x86_64") && switchyard_worker::quant::simd_available(),
        ids.len()
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/reference.py");
    match std::process::Command::new("python3")
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
        .output()
    {
        Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
        Ok(o) => eprintln!(
            "llama.cpp reference not run (pip install llama-cpp-python): {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => eprintln!("llama.cpp reference not run: {e}"),
    }
    Ok(())
}
