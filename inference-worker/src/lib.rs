//! Switchyard inference worker: one GGUF model served over the OpenAI API.
//!
//! Layers, bottom up: `gguf` (file reader) → `quant` (tensor formats, dot products) →
//! `model` (llama forward pass over a batch of sequences) and `tokenizer` / `chat` (text in
//! and out) → `sampling` → `engine` (request queue + scheduler thread) → `server` (HTTP).
//! `launch` starts a worker (listen, load while reporting progress, serve); `trace` is its
//! part of a request's trace. `main.rs` only parses flags and calls `launch::run`.

pub mod chat;
pub mod engine;
pub mod gguf;
pub mod hub;
pub mod kv;
pub mod launch;
pub mod model;
pub mod models_dir;
pub mod numerics;
pub mod quant;
pub mod sampling;
pub mod server;
pub mod tokenizer;
pub mod trace;

use std::path::Path;
use std::sync::Arc;

/// A loaded model with everything needed to serve it.
pub struct Loaded {
    pub model: Arc<model::Model>,
    pub tokenizer: Arc<tokenizer::Tokenizer>,
    pub template: chat::ChatTemplate,
}

/// Opens a GGUF file and builds model, tokenizer and chat template; reports progress lines
/// through `progress`.
pub fn load(path: &Path, progress: impl FnMut(&str)) -> Result<Loaded, String> {
    load_with(path, progress, |_, _| {})
}

/// [`load`], also reporting the weights read so far as (bytes done, bytes in all).
pub fn load_with(
    path: &Path,
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
    let model = model::Model::load(g).map_err(|e| format!("{}: {e}", path.display()))?;
    progress(&format!(
        "model: {} layers, {} embd, {} heads ({} kv), vocab {}, trained ctx {}",
        model.cfg.n_layer,
        model.cfg.n_embd,
        model.cfg.n_head,
        model.cfg.n_head_kv,
        model.cfg.n_vocab,
        model.cfg.n_ctx_train
    ));
    let mut last = usize::MAX;
    model.warm_up(|done, total| {
        read(done, total);
        let pct = done * 100 / total.max(1);
        if pct / 10 != last {
            last = pct / 10;
            progress(&format!("reading weights: {pct}%"));
        }
    });
    Ok(Loaded {
        model: Arc::new(model),
        tokenizer: Arc::new(tok),
        template,
    })
}
