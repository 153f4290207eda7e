//! Switchyard inference worker: one GGUF model served over the OpenAI API.
//!
//! Layers, bottom up: `gguf` (file reader) → `quant` (tensor formats, dot products) and
//! `numerics` (llama.cpp's arithmetic) → `model` (llama hyper-parameters, weights, CPU
//! primitives) → `backend` (the seam: a device that runs forward steps over the paged KV
//! cache; `backend::cpu` here) and `tokenizer` / `chat` (text in and out) → `kv` (KV block
//! allocator, prefix cache) → `scheduler` (who runs each step) → `sampling` → `engine`
//! (request queue + engine thread) → `server` (HTTP). `launch` starts a worker (listen, load
//! while reporting progress, serve); `trace` is its part of a request's trace. `main.rs` only
//! parses flags and calls `launch`.

pub mod backend;
pub mod chat;
pub mod cuda;
pub mod engine;
pub mod gguf;
pub mod grammar;
pub mod hub;
pub mod kv;
pub mod launch;
pub mod model;
pub mod models_dir;
pub mod numerics;
pub mod quant;
pub mod sampling;
pub mod scheduler;
pub mod server;
pub mod synth;
pub mod tokenizer;
pub mod tools;
pub mod trace;

use std::path::Path;
use std::sync::Arc;

/// A loaded model with everything needed to serve it.
pub struct Loaded {
    pub backend: Box<dyn backend::Backend>,
    pub tokenizer: Arc<tokenizer::Tokenizer>,
    pub template: chat::ChatTemplate,
}

/// Opens a GGUF file and builds a CPU backend with the default KV cache, the tokenizer and
/// the chat template; reports progress lines through `progress`.
pub fn load(path: &Path, progress: impl FnMut(&str)) -> Result<Loaded, String> {
    load_with(
        path,
        &backend::BackendOptions::default(),
        progress,
        |_, _| {},
    )
}

/// [`load`] on the backend `opts` describe, also reporting the weights read so far as (bytes
/// done, bytes in all).
pub fn load_with(
    path: &Path,
    opts: &backend::BackendOptions,
    mut progress: impl FnMut(&str),
    mut read: impl FnMut(usize, usize),
) -> Result<Loaded, String> {
    let g = gguf::Gguf::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    progress(&format!(
        "loading {}: GGUF v{}, {} tensors, {:.1} MiB",
        path.display(),
        g.version,
        g.tensors.len(),
        g.bytes().len() as f64 / (1 << 20) as f64
    ));
    let tok =
        tokenizer::Tokenizer::from_gguf(&g).map_err(|e| format!("{}: {e}", path.display()))?;
    let tpl_src = g
        .get_str("tokenizer.chat_template")
        .unwrap_or(chat::CHATML)
        .to_string();
    let tok_text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
    let template = chat::ChatTemplate::new(&tpl_src, &tok_text(tok.bos), &tok_text(tok.eos))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let g = Arc::new(g);
    let mut last = usize::MAX;
    let backend = backend::load(g, opts, &mut |done, total| {
        read(done, total);
        let pct = done * 100 / total.max(1);
        if pct / 10 != last {
            last = pct / 10;
            progress(&format!("reading weights: {pct}%"));
        }
    })
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let c = backend.config();
    progress(&format!(
        "model: {} layers, {} embd, {} heads ({} kv), vocab {}, trained ctx {}",
        c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.n_vocab, c.n_ctx_train
    ));
    progress(&backend.describe());
    Ok(Loaded {
        backend,
        tokenizer: Arc::new(tok),
        template,
    })
}
