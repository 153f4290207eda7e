//! Parity report against the llama.cpp fixtures: for each prompt and greedy step prints
//! `step:[X if our greedy choice differs]<llama.cpp top-2 gap>/<max top-20 logit difference>`.
//!
//! `cargo run --release -p switchyard-worker --example parity`

// A diagnostic tool over committed fixtures: a malformed fixture may just panic.
#![allow(clippy::unwrap_used)]
use switchyard_worker::backend::{BackendOptions, Solo, Want};
use switchyard_worker::kv::BlockAllocator;

fn main() {
    let path =
        switchyard_worker::models_dir::models_dir().join(switchyard_worker::models_dir::SMOLLM2);
    let opts = BackendOptions {
        kv_bytes: Some(64 << 20),
        ..Default::default()
    };
    let mut l = switchyard_worker::load_with(&path, &opts, |_| {}, |_, _| {}).unwrap();
    let backend = &mut *l.backend;
    let mut alloc = BlockAllocator::new(backend.kv_blocks());
    for i in 0..5 {
        let f = format!(
            "{}/tests/fixtures/smollm2_{i}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let ids: Vec<u32> = v["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let mut seq = Solo::default();
        let mut input = ids;
        let mut line = String::new();
        for (s, st) in v["steps"].as_array().unwrap().iter().enumerate() {
            let lg = seq.feed(backend, &mut alloc, &input, Want::Last).unwrap();
            let top = st["top"].as_array().unwrap();
            let gap = top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap();
            let want = st["id"].as_u64().unwrap() as u32;
            let ours = switchyard_worker::sampling::argmax(&lg);
            let md = top
                .iter()
                .map(|p| {
                    (lg[p[0].as_u64().unwrap() as usize] as f64 - p[1].as_f64().unwrap()).abs()
                })
                .fold(0.0, f64::max);
            line.push_str(&format!(
                " {s}:{}{:.2}/{:.2}",
                if ours == want { "" } else { "X" },
                gap,
                md
            ));
            input = vec![want];
        }
        println!("{i}:{line}");
        seq.release(&mut alloc);
    }
}
