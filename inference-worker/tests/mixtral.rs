//! A Mixtral-shaped model (the llama architecture with 4 experts per layer, 2 used per token)
//! with random weights, written by our GGUF writer, against llama.cpp (llama-cpp-python): the
//! same greedy tokens and the same logits at every step, as the dense path. Skips when the
//! llama.cpp SPM vocabulary file (`cargo xtask fetch-models`) or llama-cpp-python is missing,
//! unless SWITCHYARD_CI=1.

// Test code: a failed unwrap is a test failure with its message.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

use half::f16;
use serde_json::Value as Json;
use switchyard_worker::backend::{BackendOptions, Solo, Want};
use switchyard_worker::gguf::{Gguf, Value, writer::Writer};
use switchyard_worker::kv::BlockAllocator;
use switchyard_worker::models_dir::test_model;
use switchyard_worker::quant::GgmlType;
use switchyard_worker::sampling::{Rng, argmax};

const EMBD: u64 = 64;
const FF: u64 = 96;
const HEADS: u64 = 4;
const KV_HEADS: u64 = 2;
const LAYERS: u64 = 2;
const EXPERTS: u64 = 4;
const USED: u64 = 2;
const STEPS: usize = 12;

/// Q8_0 rows of random values: small f16 scales, random 8-bit quants.
fn q8_0(rng: &mut Rng, elements: u64, scale: f32) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..elements / 32 {
        let s = f16::from_f32(scale * (0.5 + rng.next_f32()));
        out.extend_from_slice(&s.to_le_bytes());
        out.extend((0..32).map(|_| rng.next_u64() as u8));
    }
    out
}

fn f32s(rng: &mut Rng, n: u64, base: f32, spread: f32) -> Vec<u8> {
    (0..n)
        .flat_map(|_| (base + spread * (rng.next_f32() - 0.5)).to_le_bytes())
        .collect()
}

/// The model file: the vocabulary of llama.cpp's SPM test file, random weights.
fn mixtral(vocab: &Gguf) -> Vec<u8> {
    let mut rng = Rng::new(Some(7));
    let n_vocab = vocab
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .unwrap()
        .len() as u64;
    let mut w = Writer::default()
        .kv("general.architecture", Value::Str("llama".into()))
        .kv("general.name", Value::Str("mixtral-random".into()))
        .kv("llama.context_length", Value::U32(256))
        .kv("llama.embedding_length", Value::U32(EMBD as u32))
        .kv("llama.block_count", Value::U32(LAYERS as u32))
        .kv("llama.feed_forward_length", Value::U32(FF as u32))
        .kv("llama.attention.head_count", Value::U32(HEADS as u32))
        .kv("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32))
        .kv(
            "llama.rope.dimension_count",
            Value::U32((EMBD / HEADS) as u32),
        )
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("llama.rope.freq_base", Value::F32(1e6))
        .kv("llama.expert_count", Value::U32(EXPERTS as u32))
        .kv("llama.expert_used_count", Value::U32(USED as u32));
    let mut keys: Vec<&String> = vocab
        .metadata
        .keys()
        .filter(|k| k.starts_with("tokenizer."))
        .collect();
    keys.sort();
    for k in keys {
        w = w.kv(k, vocab.metadata[k].clone());
    }
    let q = GgmlType::Q8_0;
    let kv = EMBD / HEADS * KV_HEADS;
    w = w
        .tensor(
            "token_embd.weight",
            &[EMBD, n_vocab],
            q,
            q8_0(&mut rng, EMBD * n_vocab, 0.02),
        )
        .tensor(
            "output_norm.weight",
            &[EMBD],
            GgmlType::F32,
            f32s(&mut rng, EMBD, 1.0, 0.2),
        )
        .tensor(
            "output.weight",
            &[EMBD, n_vocab],
            q,
            q8_0(&mut rng, EMBD * n_vocab, 0.01),
        );
    for l in 0..LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        w = w
            .tensor(
                &n("attn_norm"),
                &[EMBD],
                GgmlType::F32,
                f32s(&mut rng, EMBD, 1.0, 0.2),
            )
            .tensor(
                &n("attn_q"),
                &[EMBD, EMBD],
                q,
                q8_0(&mut rng, EMBD * EMBD, 0.002),
            )
            .tensor(
                &n("attn_k"),
                &[EMBD, kv],
                q,
                q8_0(&mut rng, EMBD * kv, 0.002),
            )
            .tensor(
                &n("attn_v"),
                &[EMBD, kv],
                q,
                q8_0(&mut rng, EMBD * kv, 0.002),
            )
            .tensor(
                &n("attn_output"),
                &[EMBD, EMBD],
                q,
                q8_0(&mut rng, EMBD * EMBD, 0.002),
            )
            .tensor(
                &n("ffn_norm"),
                &[EMBD],
                GgmlType::F32,
                f32s(&mut rng, EMBD, 1.0, 0.2),
            )
            .tensor(
                &n("ffn_gate_inp"),
                &[EMBD, EXPERTS],
                q,
                q8_0(&mut rng, EMBD * EXPERTS, 0.01),
            )
            .tensor(
                &n("ffn_gate_exps"),
                &[EMBD, FF, EXPERTS],
                q,
                q8_0(&mut rng, EMBD * FF * EXPERTS, 0.002),
            )
            .tensor(
                &n("ffn_up_exps"),
                &[EMBD, FF, EXPERTS],
                q,
                q8_0(&mut rng, EMBD * FF * EXPERTS, 0.002),
            )
            .tensor(
                &n("ffn_down_exps"),
                &[FF, EMBD, EXPERTS],
                q,
                q8_0(&mut rng, FF * EMBD * EXPERTS, 0.002),
            );
    }
    w.finish()
}

const REFERENCE: &str = r#"
import json, sys
import numpy as np
import llama_cpp
model, steps = sys.argv[1], int(sys.argv[2])
prompt = json.loads(sys.stdin.read())
llm = llama_cpp.Llama(model_path=model, n_ctx=256, n_batch=256, flash_attn=False, verbose=False)
llm.eval(prompt)
out = []
for _ in range(steps):
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    logits = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32).copy()
    tid = int(np.argmax(logits))
    out.append({"id": tid, "logits": logits.tolist()})
    llm.eval([tid])
print(json.dumps(out))
"#;

#[test]
fn mixtral_greedy_tokens_and_logits_match_llama_cpp() {
    let Some(vocab_path) = test_model("ggml-vocab-llama-spm.gguf") else {
        return;
    };
    let has = Command::new("python3")
        .args(["-c", "import llama_cpp, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        let ci = std::env::var("SWITCHYARD_CI").is_ok_and(|v| v == "1");
        assert!(!ci, "SWITCHYARD_CI=1 but llama-cpp-python is missing");
        eprintln!("SKIPPED: llama-cpp-python is not installed");
        return;
    }
    let vocab = Gguf::open(&vocab_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixtral-random.gguf");
    std::fs::write(&path, mixtral(&vocab)).unwrap();

    let opts = BackendOptions {
        kv_bytes: Some(8 << 20),
        ..Default::default()
    };
    let mut loaded = switchyard_worker::load_with(&path, &opts, |_| {}, |_, _| {}).unwrap();
    assert_eq!(loaded.backend.config().n_expert, EXPERTS as usize);
    let prompt = loaded
        .tokenizer
        .encode("The experts of a mixture route every token", true, false);

    let mut child = Command::new("python3")
        .args(["-c", REFERENCE])
        .arg(&path)
        .arg(STEPS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&prompt).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<Json> = serde_json::from_slice(&out.stdout).unwrap();

    let backend = &mut *loaded.backend;
    let mut alloc = BlockAllocator::new(backend.kv_blocks());
    let mut seq = Solo::default();
    let mut logits = seq.feed(backend, &mut alloc, &prompt, Want::Last).unwrap();
    let mut worst = 0f32;
    for (step, r) in reference.iter().enumerate() {
        let want: Vec<f32> = r["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(want.len(), logits.len());
        let diff = want
            .iter()
            .zip(&logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(diff);
        let id = r["id"].as_u64().unwrap() as u32;
        assert_eq!(argmax(&logits), id, "step {step}: greedy token");
        assert!(diff <= 1e-3, "step {step}: logits differ by {diff}");
        logits = seq.feed(backend, &mut alloc, &[id], Want::Last).unwrap();
    }
    println!("{STEPS} steps, worst logit difference {worst}");
}
