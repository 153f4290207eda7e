//! Forward-pass invariants on SmolLM2 through the CPU backend and its paged KV cache, which
//! continuous batching and prefix caching rely on, and load errors.

// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used)]

use switchyard_worker::backend::{Backend, BackendOptions, KvCacheType, Output, Solo, Want};
use switchyard_worker::gguf::{Gguf, Value, writer::Writer};
use switchyard_worker::kv::BlockAllocator;
use switchyard_worker::model::Model;
use switchyard_worker::models_dir::{SMOLLM2, test_model};
use switchyard_worker::sampling::argmax;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn logits(o: &Output) -> &[f32] {
    match o {
        Output::Logits(l) => l,
        other => panic!("expected logits, got {other:?}"),
    }
}

fn load(kv_type: KvCacheType) -> Option<switchyard_worker::Loaded> {
    let path = test_model(SMOLLM2)?;
    let opts = BackendOptions {
        kv_bytes: Some(32 << 20),
        kv_type,
        ..Default::default()
    };
    Some(switchyard_worker::load_with(&path, &opts, |_| {}, |_, _| {}).unwrap())
}

#[test]
fn batched_prefill_decode_and_multi_sequence_agree() {
    let Some(mut l) = load(KvCacheType::F16) else {
        return;
    };
    let be: &mut dyn Backend = &mut *l.backend;
    let mut alloc = BlockAllocator::new(be.kv_blocks());
    let a = l.tokenizer.encode("The sky is blue because", true, false);
    let b = l
        .tokenizer
        .encode("Rust is a programming language that", true, false);
    let v = be.config().n_vocab;

    // Whole prompt at once vs token by token.
    let mut s1 = Solo::default();
    let at_once = s1.feed(be, &mut alloc, &a, Want::All).unwrap();
    let mut s2 = Solo::default();
    let mut last = Vec::new();
    for t in &a {
        last = s2.feed(be, &mut alloc, &[*t], Want::Last).unwrap();
    }
    assert_eq!(at_once.len(), a.len() * v);
    // Same maths, but (as in llama.cpp) a multi-token batch sums its f16 attention products in
    // another order than a single token does; the 8-bit activation quantizer amplifies such
    // last-bit differences to ~1 logit, so only the choice and the rough values must agree.
    let at_once_last = &at_once[(a.len() - 1) * v..];
    assert_eq!(argmax(at_once_last), argmax(&last));
    assert!(max_diff(at_once_last, &last) < 3.0);
    assert_eq!(s1.len, a.len());

    // Two sequences in one batch give what each gives alone.
    let (mut sa, mut sb, mut sb2) = (Solo::default(), Solo::default(), Solo::default());
    let both = Solo::step(
        be,
        &mut alloc,
        &mut [(&mut sa, &a), (&mut sb, &b)],
        Want::Last,
    )
    .unwrap();
    let alone = sb2.feed(be, &mut alloc, &b, Want::Last).unwrap();
    // Batching sequences together changes nothing, to the bit.
    assert_eq!(logits(&both[0]), at_once_last);
    assert_eq!(logits(&both[1]), &alone[..]);
    // And a decode step for both together continues each correctly.
    let step = Solo::step(
        be,
        &mut alloc,
        &mut [(&mut sa, &[13]), (&mut sb, &[13])],
        Want::Last,
    )
    .unwrap();
    let solo = sb2.feed(be, &mut alloc, &[13], Want::Last).unwrap();
    assert_eq!(logits(&step[1]), &solo[..]);
    assert_eq!(sa.len, a.len() + 1);
}

#[test]
fn a_prefix_shared_by_block_gives_the_logits_of_computing_it() {
    let Some(mut l) = load(KvCacheType::F16) else {
        return;
    };
    let be: &mut dyn Backend = &mut *l.backend;
    let mut alloc = BlockAllocator::new(be.kv_blocks());
    let text = "You are a helpful assistant. Answer briefly and politely, in plain English, \
                and never make anything up. If you do not know something, say so, and suggest \
                where the user could look it up instead.";
    let prefix = l.tokenizer.encode(text, true, false);
    assert!(prefix.len() >= 32, "{} tokens", prefix.len());
    let prefix = &prefix[..32];
    let (tail_a, tail_b) = (
        l.tokenizer.encode(" What is Rust?", false, false),
        l.tokenizer.encode(" Where is Paris?", false, false),
    );
    let mut first = Solo::default();
    let whole_a: Vec<u32> = prefix.iter().chain(&tail_a).copied().collect();
    first.feed(be, &mut alloc, &whole_a, Want::Last).unwrap();

    // The second request takes the first one's two full blocks and computes only its tail.
    let mut shared = Solo {
        blocks: first.blocks[..2].to_vec(),
        len: 32,
    };
    let reused = shared.feed(be, &mut alloc, &tail_b, Want::Last).unwrap();
    let mut fresh = Solo::default();
    let whole_b: Vec<u32> = prefix.iter().chain(&tail_b).copied().collect();
    let computed = fresh.feed(be, &mut alloc, &whole_b, Want::Last).unwrap();
    assert!(tail_b.len() > 1, "a one-token tail sums in another order");
    assert_eq!(
        reused, computed,
        "reused blocks must hold what computing them gives"
    );
}

#[test]
fn q8_0_cache_tracks_the_f16_cache() {
    let (Some(mut f16), Some(mut q8)) = (load(KvCacheType::F16), load(KvCacheType::Q8_0)) else {
        return;
    };
    assert!(
        q8.backend.describe().contains("q8_0"),
        "{}",
        q8.backend.describe()
    );
    assert!(q8.backend.kv_blocks() > f16.backend.kv_blocks() * 3 / 2);
    let prompts = [
        "The capital of France is",
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        "Once upon a time, in a small village at the edge of a great forest, there lived",
    ];
    let mut same = 0;
    let mut steps = 0;
    for p in prompts {
        let ids = f16.tokenizer.encode(p, true, false);
        let mut outs = Vec::new();
        for be in [&mut *f16.backend, &mut *q8.backend] {
            let mut alloc = BlockAllocator::new(be.kv_blocks());
            let mut s = Solo::default();
            let mut l = s.feed(be, &mut alloc, &ids, Want::Last).unwrap();
            let mut greedy = Vec::new();
            for _ in 0..8 {
                let t = argmax(&l);
                greedy.push(t);
                l = s.feed(be, &mut alloc, &[t], Want::Last).unwrap();
            }
            outs.push(greedy);
        }
        // Compare only up to the first divergence (after it the contexts differ).
        let n = outs[0]
            .iter()
            .zip(&outs[1])
            .take_while(|(a, b)| a == b)
            .count();
        same += n;
        steps += outs[0].len();
    }
    // 8-bit keys and values move SmolLM2's logits by about as much as llama.cpp's own f16
    // vs f32 cache does; greedy text mostly agrees, garbage would not.
    assert!(
        same * 2 >= steps,
        "q8_0 greedy agreed on {same} of {steps} steps"
    );
}

#[test]
fn unsupported_architecture_is_named() {
    let bytes = Writer::default()
        .kv("general.architecture", Value::Str("gpt2".into()))
        .finish();
    let g = Gguf::from_bytes(bytes).unwrap();
    let e = Model::load(std::sync::Arc::new(g))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("unsupported architecture `gpt2`"), "{e}");
}
