//! Token estimates for answers whose upstream reported no usage.
//!
//! For OpenAI models (by the upstream model name: `gpt-4o…`, `gpt-4…`, `o1…`,
//! `text-embedding-3…`) the model's own tokenizer counts the text (tiktoken's `o200k_base`
//! or `cl100k_base`, embedded in the binary: nothing is downloaded). Loading a tokenizer
//! takes a fraction of a second and tens of MB, so it happens on a background thread at
//! start, and only for tokenizers the config's routes can reach; until it is loaded, and for
//! every other model, the estimate is byte based: `ceil(bytes / 4)`. Either way the ledger
//! row is marked `estimated`.
//!
//! A chat prompt is counted as OpenAI's cookbook does: each message's strings, plus 3
//! tokens per message and 3 to prime the reply.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

use crate::base::Endpoint;
use crate::config::Runtime;

static O200K: OnceLock<CoreBPE> = OnceLock::new();
static CL100K: OnceLock<CoreBPE> = OnceLock::new();

fn slot(t: Tokenizer) -> Option<&'static OnceLock<CoreBPE>> {
    match t {
        Tokenizer::O200kBase | Tokenizer::O200kHarmony => Some(&O200K),
        Tokenizer::Cl100kBase => Some(&CL100K),
        _ => None,
    }
}

/// Load, off the request path, the tokenizers of every OpenAI model the routes can send.
pub fn warm(rt: &Runtime) {
    let mut want = Vec::new();
    for r in &rt.routes {
        let names = r
            .targets
            .iter()
            .chain(&r.fallback)
            .filter_map(|t| t.model.as_deref())
            // A target without a model sends the client's: the route's name.
            .chain(
                r.targets
                    .iter()
                    .any(|t| t.model.is_none())
                    .then_some(&*r.name),
            );
        for m in names {
            if let Some(t) = get_tokenizer(m)
                && slot(t).is_some()
                && !want.contains(&t)
            {
                want.push(t);
            }
        }
    }
    if want.is_empty() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("tokenizers".into())
        .spawn(move || {
            for t in want {
                let (Some(s), loaded) = (
                    slot(t),
                    match t {
                        Tokenizer::Cl100kBase => tiktoken_rs::cl100k_base(),
                        _ => tiktoken_rs::o200k_base(),
                    },
                ) else {
                    continue;
                };
                if let Ok(bpe) = loaded {
                    let _ = s.set(bpe);
                }
            }
        });
}

/// The loaded tokenizer for `model`, if it is an OpenAI model and it is ready.
fn bpe(model: &str) -> Option<&'static CoreBPE> {
    slot(get_tokenizer(model)?)?.get()
}

/// Tokens of `text` for `model`: the model's tokenizer, else `ceil(bytes / 4)`.
pub fn count_text(model: &str, text: &str) -> u64 {
    match bpe(model) {
        Some(b) => b.encode_ordinary(text).len() as u64,
        None => super::estimate_tokens(text.len()),
    }
}

/// Prompt tokens of a request body, or `None` to fall back on the byte estimate of the body.
pub fn count_prompt(model: &str, endpoint: Endpoint, body: &[u8]) -> Option<u64> {
    let b = bpe(model)?;
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let count = |s: &str| b.encode_ordinary(s).len() as u64;
    let strings = |v: &serde_json::Value| -> u64 {
        match v {
            serde_json::Value::String(s) => count(s),
            serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).map(count).sum(),
            _ => 0,
        }
    };
    Some(match endpoint {
        Endpoint::ChatCompletions => {
            let msgs = v["messages"].as_array()?;
            let mut n = 3;
            for m in msgs {
                n += 3;
                for (_, val) in m.as_object()?.iter() {
                    n += match val {
                        serde_json::Value::String(s) => count(s),
                        // Multi-part content: count the text parts.
                        serde_json::Value::Array(parts) => parts
                            .iter()
                            .filter_map(|p| p["text"].as_str())
                            .map(count)
                            .sum(),
                        _ => 0,
                    };
                }
            }
            n
        }
        Endpoint::Completions => strings(&v["prompt"]),
        Endpoint::Embeddings => strings(&v["input"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_models_use_their_tokenizer_once_loaded_others_bytes() {
        assert_eq!(count_text("llama-3.1-8b", "hello world!"), 3);
        let _ = O200K.set(tiktoken_rs::o200k_base().unwrap());
        // "hello world" is two tokens in o200k_base.
        assert_eq!(count_text("gpt-4o", "hello world"), 2);
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hello world"}]}"#;
        // 3 (reply) + 3 (message) + "user" (1) + "hello world" (2).
        assert_eq!(
            count_prompt("gpt-4o", Endpoint::ChatCompletions, body),
            Some(9)
        );
        assert_eq!(count_prompt("llama", Endpoint::ChatCompletions, body), None);
    }
}
