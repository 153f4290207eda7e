//! Forward-pass invariants on SmolLM2 that continuous batching relies on, and load errors.

// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used)]

use switchyard_worker::gguf::{Gguf, Value, writer::Writer};
use switchyard_worker::model::{KvCache, Model, SeqInput};
use switchyard_worker::models_dir::{SMOLLM2, test_model};

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn batched_prefill_decode_and_multi_sequence_agree() {
    let Some(path) = test_model(SMOLLM2) else {
        return;
    };
    let l = switchyard_worker::load(&path, |_| {}).unwrap();
    let m = &l.model;
    let a = l.tokenizer.encode("The sky is blue because", true, false);
    let b = l
        .tokenizer
        .encode("Rust is a programming language that", true, false);

    // Whole prompt at once vs token by token.
    let mut c1 = KvCache::new(&m.cfg);
    let at_once = m
        .forward(&mut [SeqInput {
            cache: &mut c1,
            tokens: &a,
            all_logits: true,
        }])
        .remove(0);
    let mut c2 = KvCache::new(&m.cfg);
    let mut last = Vec::new();
    for t in &a {
        last = m
            .forward(&mut [SeqInput {
                cache: &mut c2,
                tokens: &[*t],
                all_logits: false,
            }])
            .remove(0);
    }
    let v = m.cfg.n_vocab;
    assert_eq!(at_once.len(), a.len() * v);
    // Same maths, but (as in llama.cpp) a multi-token batch sums its f16 attention products in
    // another order than a single token does; the 8-bit activation quantizer amplifies such
    // last-bit differences to ~1 logit, so only the choice and the rough values must agree.
    let at_once_last = &at_once[(a.len() - 1) * v..];
    let argmax = switchyard_worker::sampling::argmax;
    assert_eq!(argmax(at_once_last), argmax(&last));
    assert!(max_diff(at_once_last, &last) < 3.0);
    assert_eq!(c1.len(), a.len());

    // Two sequences in one batch give what each gives alone.
    let mut ca = KvCache::new(&m.cfg);
    let mut cb = KvCache::new(&m.cfg);
    let both = m.forward(&mut [
        SeqInput {
            cache: &mut ca,
            tokens: &a,
            all_logits: false,
        },
        SeqInput {
            cache: &mut cb,
            tokens: &b,
            all_logits: false,
        },
    ]);
    let mut cb2 = KvCache::new(&m.cfg);
    let alone = m
        .forward(&mut [SeqInput {
            cache: &mut cb2,
            tokens: &b,
            all_logits: false,
        }])
        .remove(0);
    // Batching sequences together changes nothing, to the bit.
    assert_eq!(both[0], at_once_last);
    assert_eq!(both[1], alone);
    // And a decode step for both together continues each correctly.
    let step = m.forward(&mut [
        SeqInput {
            cache: &mut ca,
            tokens: &[13],
            all_logits: false,
        },
        SeqInput {
            cache: &mut cb,
            tokens: &[13],
            all_logits: false,
        },
    ]);
    let solo = m
        .forward(&mut [SeqInput {
            cache: &mut cb2,
            tokens: &[13],
            all_logits: false,
        }])
        .remove(0);
    assert_eq!(step[1], solo);
    assert_eq!(ca.len(), a.len() + 1);
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
